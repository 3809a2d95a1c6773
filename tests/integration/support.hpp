// Test support for the integration tests: a small blocking HTTP/1.1 client (whole responses,
// streamed responses read piece by piece, raw bytes), an in-process tollgate + fake upstream
// harness with its own temporary ledger file, and SQLite/metrics helpers. Beast stays in support.cpp.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.hpp"
#include "fake_upstream.hpp"
#include "net/server.hpp"

namespace tt {

using headers = std::vector<std::pair<std::string, std::string>>;

struct response {
  int status = 0;
  std::string body;
  headers hdrs;
  std::string header(std::string_view name) const;  // case-insensitive, "" if absent
  bool has_header(std::string_view name) const;
};

// One request on a fresh connection; the whole (de-chunked) body is read.
response request(std::uint16_t port, const std::string& method, const std::string& target,
                 const std::string& body = {}, const headers& h = {},
                 std::chrono::milliseconds timeout = std::chrono::seconds(30));
inline response post_json(std::uint16_t port, const std::string& target, const std::string& body,
                          const headers& h = {}) {
  headers all = h;
  all.emplace_back("Content-Type", "application/json");
  return request(port, "POST", target, body, all);
}

// Sends raw bytes and reads until the server closes or `timeout` passes.
std::string raw_exchange(std::uint16_t port, const std::string& bytes,
                         std::chrono::milliseconds timeout = std::chrono::seconds(5));

// The status code of a raw response (raw_exchange), 0 when it does not start with a status line.
int status_of(const std::string& raw);

// The number of entries in a directory.
std::size_t directory_entries(const std::string& dir);

// A loopback port that refuses connections for the object's lifetime: a socket bound to it that
// never listens. A port bound and then closed could be taken meanwhile by a server of a test
// running in parallel (ctest -j), which then answered the "dead" upstream with a 404.
class refused_port {
 public:
  refused_port();
  ~refused_port();
  refused_port(const refused_port&) = delete;
  refused_port& operator=(const refused_port&) = delete;
  std::uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  std::uint16_t port_ = 0;
};

// A streamed response read incrementally (for SSE and abort tests).
class stream_client {
 public:
  stream_client(std::uint16_t port, const std::string& target, const std::string& body, const headers& h = {});
  ~stream_client();
  int status() const;
  std::string header(std::string_view name) const;
  // Next piece of de-chunked body; nullopt at the end of the body (or on error).
  std::optional<std::string> next();
  std::string read_all();  // rest of the body
  bool ended_cleanly() const;  // the terminating chunk arrived
  void close();          // abort: close the socket now

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// A unique temporary directory, removed on destruction.
struct temp_dir {
  temp_dir();
  ~temp_dir();
  std::string path;
};

// A hard budget on all spend, per UTC day, of `limit_usd`.
inline tollgate::budget_config hard_daily_budget(double limit_usd) {
  tollgate::budget_config b;
  b.scope = "global";
  b.period = tollgate::calendar_period::day;
  b.limit_usd = limit_usd;
  b.hard = true;
  return b;
}

// A global monthly budget that alerts at half of limit_usd (the default: two gpt-4.1 calls of
// the fake upstream cross it).
inline tollgate::budget_config soft_monthly_budget(double limit_usd = 0.0001) {
  tollgate::budget_config b;
  b.scope = "global";
  b.period = tollgate::calendar_period::month;
  b.limit_usd = limit_usd;
  b.soft = {0.5};
  return b;
}

// A global one-hour spend guard that reroutes to deepseek-v3.2 once max_usd is spent (the
// default: one gpt-4.1 call trips it).
inline tollgate::spend_guard_config reroute_guard(double max_usd = 0.00001) {
  tollgate::spend_guard_config g;
  g.scope = "global";
  g.window = std::chrono::hours(1);
  g.max_usd = max_usd;
  g.action = tollgate::guard_action::reroute;
  g.fallback_model = "deepseek-v3.2";
  return g;
}

// Alerts to one webhook at url.
inline std::vector<tollgate::webhook_config> webhook_to(const std::string& url) {
  tollgate::webhook_config w;
  w.url = url;
  return {w};
}

struct harness_options {
  bool tls = false;
  std::string api_key = "test-upstream-key";
  std::function<void(tollgate::config&)> tweak;
};

// tollgate on 127.0.0.1:0 with a ledger in a temp dir, in front of an in-process fake upstream.
struct harness {
  explicit harness(harness_options o = {});
  ~harness();
  std::uint16_t port() const { return proxy->port(); }
  std::uint16_t admin_port() const { return proxy->admin_port(); }
  void flush();  // ledger committed
  // Runs a query returning one integer / double / text (first column of the first row).
  std::int64_t query_int(const std::string& sql);
  double query_double(const std::string& sql);
  std::string query_text(const std::string& sql);
  std::vector<std::map<std::string, std::string>> rows(const std::string& sql);
  std::string metrics_text();
  // Sum of all samples of a metric family (exact name match on the sample name).
  double metric_sum(const std::string& sample_name, const std::string& label_filter = {});
  // Waits (polling, bounded) until `pred` holds; false on timeout.
  static bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = std::chrono::seconds(10));

  temp_dir dir;
  std::unique_ptr<fake::server> upstream;
  tollgate::config cfg;
  std::unique_ptr<tollgate::app> proxy;
  std::string ca_file;
};

std::string chat_body(const std::string& model = "gpt-4.1", bool stream = false, const std::string& extra = {});

// Records webhook POSTs (alert deliveries) and answers 200, on its own thread.
class webhook_receiver {
 public:
  webhook_receiver();
  ~webhook_receiver();
  webhook_receiver(const webhook_receiver&) = delete;
  webhook_receiver& operator=(const webhook_receiver&) = delete;
  std::string url() const;
  std::vector<nlohmann::json> received() const;  // the bodies so far, parsed (discarded when not JSON)

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace tt
