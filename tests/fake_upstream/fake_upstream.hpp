// A fake OpenAI/Anthropic-compatible upstream for tests, benchmarks and the demo.
// Behaviour knobs come from x-fake-* request headers; see tests/fake_upstream/README.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fake {

// PEM text, not paths.
struct tls_files {
  std::string cert_pem, key_pem;
};

struct options {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: the kernel picks a free port; read it back with server::port()
  std::optional<tls_files> tls;
  // Keep every request in memory for requests(); the binary turns this off so a long benchmark
  // does not grow without bound (request_count() still counts).
  bool record_requests = true;
  // Print one line per answered request to stderr.
  bool verbose = false;
  // x-fake-* knobs applied to every request that does not carry them itself (a server that
  // always answers 503, say, for failover tests).
  std::vector<std::pair<std::string, std::string>> default_headers{};
};

struct recorded_request {
  std::string method, target, body;
  std::vector<std::pair<std::string, std::string>> headers;
  // Case-insensitive; "" if absent. The first value wins when a header repeats.
  std::string header(std::string_view name) const;
};

// Lower-case hex SHA-256 of `data`: what the upload replies report as `fake_sha256` (OpenSSL;
// no code shared with tollgate, so a test's check of a relayed upload is independent of it).
std::string sha256_hex(std::string_view data);
// Standard base64 with padding (the embeddings replies' encoding_format "base64"; tests encode
// inline images with it).
std::string base64(std::string_view bytes);

class server {
 public:
  explicit server(options o);  // binds and starts serving in background threads; throws if it cannot bind
  ~server();                   // stops, joins all threads, closes sockets
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  uint16_t port() const;
  std::string base_url() const;  // "http://127.0.0.1:<port>/v1" (https when tls)
  std::vector<recorded_request> requests() const;  // everything received so far (thread-safe copy)
  std::size_t request_count() const;
  void clear();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace fake
