// Throw-away certificates for TLS tests, made in memory with OpenSSL (no openssl CLI, no files
// unless you write them with write_file).
#pragma once

#include <string>

namespace fake {

struct cert_bundle {
  std::string ca_pem;    // the CA a client should trust
  std::string cert_pem;  // the server certificate
  std::string key_pem;   // the server key (PKCS#8 PEM)
};

enum class cert_kind {
  good,         // CA-signed, SAN DNS:localhost + IP:127.0.0.1, valid now-1h .. now+1d
  expired,      // as good, but valid now-2d .. now-1d
  wrong_host,   // as good, but SAN DNS:wrong.example only
  self_signed,  // the server cert signs itself; ca_pem is an unrelated fresh CA, so verification fails
};

// Fresh EC P-256 keys every call; throws std::runtime_error if OpenSSL fails.
cert_bundle make_test_certs(cert_kind kind = cert_kind::good);

// Writes text to path (replacing it); throws std::runtime_error on failure.
void write_file(const std::string& path, const std::string& text);

}  // namespace fake
