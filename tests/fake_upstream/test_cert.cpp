// Makes throw-away CA and server certificates in memory for the TLS tests (OpenSSL 3 API);
// used by the fake upstream's tests and by tollgate's TLS integration tests.
#include "test_cert.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <memory>
#include <stdexcept>

namespace fake {
namespace {

template <class T, void (*Free)(T*)>
struct openssl_free {
  void operator()(T* p) const { Free(p); }
};
using key_ptr = std::unique_ptr<EVP_PKEY, openssl_free<EVP_PKEY, EVP_PKEY_free>>;
using cert_ptr = std::unique_ptr<X509, openssl_free<X509, X509_free>>;
using bio_ptr = std::unique_ptr<BIO, openssl_free<BIO, BIO_free_all>>;
using bignum_ptr = std::unique_ptr<BIGNUM, openssl_free<BIGNUM, BN_free>>;

constexpr long hour_s = 3600;
constexpr long day_s = 24 * hour_s;

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("make_test_certs: ") + what + " failed");
}

key_ptr make_key() {
  key_ptr key(EVP_EC_gen("P-256"));
  check(key != nullptr, "EVP_EC_gen");
  return key;
}

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  check(ext != nullptr, "X509V3_EXT_conf_nid");
  const int added = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  check(added == 1, "X509_add_ext");
}

struct cert_spec {
  const char* common_name;
  bool is_ca;
  const char* subject_alt_names;  // nullptr: none
  long not_before_s;              // relative to now
  long not_after_s;
};

// Signs with issuer_key as issuer; a null issuer makes the certificate sign itself.
cert_ptr make_cert(EVP_PKEY* key, const cert_spec& spec, X509* issuer, EVP_PKEY* issuer_key) {
  cert_ptr cert(X509_new());
  check(cert != nullptr, "X509_new");
  X509* self = cert.get();
  check(X509_set_version(self, X509_VERSION_3) == 1, "X509_set_version");

  unsigned char serial[16];
  check(RAND_bytes(serial, sizeof serial) == 1, "RAND_bytes");
  serial[0] &= 0x7f;  // serial numbers are positive
  bignum_ptr bn(BN_bin2bn(serial, sizeof serial, nullptr));
  check(bn && BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(self)), "serial number");

  check(X509_gmtime_adj(X509_getm_notBefore(self), spec.not_before_s) != nullptr, "notBefore");
  check(X509_gmtime_adj(X509_getm_notAfter(self), spec.not_after_s) != nullptr, "notAfter");
  check(X509_set_pubkey(self, key) == 1, "X509_set_pubkey");

  X509_NAME* name = X509_get_subject_name(self);
  check(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>("tollgate tests"), -1, -1, 0) == 1 &&
            X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                       reinterpret_cast<const unsigned char*>(spec.common_name), -1, -1, 0) == 1,
        "subject name");
  X509* signer = issuer ? issuer : self;
  check(X509_set_issuer_name(self, X509_get_subject_name(signer)) == 1, "issuer name");

  add_extension(self, signer, NID_basic_constraints, spec.is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  add_extension(self, signer, NID_key_usage,
                spec.is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature,keyEncipherment");
  add_extension(self, signer, NID_subject_key_identifier, "hash");
  add_extension(self, signer, NID_authority_key_identifier, "keyid:always");
  if (!spec.is_ca) add_extension(self, signer, NID_ext_key_usage, "serverAuth");
  if (spec.subject_alt_names) add_extension(self, signer, NID_subject_alt_name, spec.subject_alt_names);

  check(X509_sign(self, issuer_key ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
  return cert;
}

template <class Write>
std::string to_pem(Write write) {
  bio_ptr bio(BIO_new(BIO_s_mem()));
  check(bio != nullptr, "BIO_new");
  check(write(bio.get()) == 1, "PEM write");
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(size));
}

std::string cert_pem(X509* cert) {
  return to_pem([&](BIO* b) { return PEM_write_bio_X509(b, cert); });
}

std::string key_pem(EVP_PKEY* key) {
  return to_pem([&](BIO* b) { return PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr); });
}

}  // namespace

cert_bundle make_test_certs(cert_kind kind) {
  const key_ptr ca_key = make_key();
  const cert_ptr ca = make_cert(ca_key.get(), {"tollgate test CA", true, nullptr, -hour_s, 7 * day_s}, nullptr, nullptr);

  const key_ptr key = make_key();
  cert_spec spec{"localhost", false, "DNS:localhost,IP:127.0.0.1", -hour_s, day_s};
  if (kind == cert_kind::expired) {
    spec.not_before_s = -2 * day_s;
    spec.not_after_s = -day_s;
  }
  if (kind == cert_kind::wrong_host) {
    spec.common_name = "wrong.example";
    spec.subject_alt_names = "DNS:wrong.example";
  }
  const cert_ptr cert = kind == cert_kind::self_signed ? make_cert(key.get(), spec, nullptr, nullptr)
                                                       : make_cert(key.get(), spec, ca.get(), ca_key.get());
  return {cert_pem(ca.get()), cert_pem(cert.get()), key_pem(key.get())};
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) throw std::runtime_error("write_file: cannot write " + path);
}

}  // namespace fake
