// The fault catalogue (issue 6, item 1) beyond what relay_test and client_errors_test cover: each
// case injects one upstream or client fault and checks what the client gets, that tollgate still
// relays a normal call afterwards, and the exact ledger rows. tests/FAULTS.md lists every case.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cerrno>
#include <thread>
#include <utility>

#include "support.hpp"

using namespace std::chrono_literals;
using json = nlohmann::json;
using tt::harness;
using steady = std::chrono::steady_clock;

namespace {

using tt::status_of;

std::string body_of(const std::string& raw) {
  auto p = raw.find("\r\n\r\n");
  return p == std::string::npos ? "" : raw.substr(p + 4);
}

std::string error_code_of(const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  if (!j.is_object() || !j.contains("error") || !j["error"].contains("code") || !j["error"]["code"].is_string())
    return "<none>";
  return j["error"]["code"].get<std::string>();
}

// A loopback port nothing listens on (bound, then closed).
std::string post_head(std::size_t content_length, const std::string& content_type = "application/json") {
  return "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Type: " + content_type +
         "\r\nContent-Length: " + std::to_string(content_length) + "\r\n\r\n";
}

// A loopback TCP connection on plain POSIX calls, for byte-level client behaviour (trickled
// headers, half-sent bodies, thousands of idle sockets) that an HTTP client library would not do.
class raw_conn {
 public:
  explicit raw_conn(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) close();
  }
  raw_conn(raw_conn&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  raw_conn& operator=(raw_conn&&) = delete;
  ~raw_conn() { close(); }

  bool connected() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  // False once the peer has closed or reset the connection.
  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      auto n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  struct received {
    std::string bytes;
    bool closed = false;  // the peer closed (FIN or RST)
  };
  // Reads until `done(bytes)` holds, the peer closes, or `limit` passes.
  received read_for(std::chrono::milliseconds limit, const std::function<bool(const std::string&)>& done = {}) {
    received r;
    const auto end = steady::now() + limit;
    char buf[16384];
    for (;;) {
      if (done && done(r.bytes)) return r;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - steady::now()).count();
      if (left <= 0) return r;
      pollfd p{fd_, POLLIN, 0};
      int n = ::poll(&p, 1, static_cast<int>(left));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return r;
      auto got = ::recv(fd_, buf, sizeof buf, 0);
      if (got <= 0) {
        r.closed = true;
        return r;
      }
      r.bytes.append(buf, static_cast<std::size_t>(got));
    }
  }
  // True when the peer has not closed: nothing readable, or bytes still waiting.
  bool open_now() const {
    char ch;
    auto n = ::recv(fd_, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
  }
  void shutdown_write() { ::shutdown(fd_, SHUT_WR); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// Every ledger row, oldest first, with the columns a fault decides.
std::vector<std::map<std::string, std::string>> ledger(harness& h) {
  h.flush();
  return h.rows(
      "SELECT status, error_kind, aborted, usage_source, stream, attempts, upstream, prompt_tokens, "
      "completion_tokens, cost_usd FROM calls ORDER BY id");
}

struct row_expect {
  const char* status;
  const char* error_kind;  // "<null>" for none
  const char* aborted;
  const char* usage_source;
};

void check_row(const std::map<std::string, std::string>& row, const row_expect& e) {
  INFO("ledger row: status " << row.at("status") << ", error_kind " << row.at("error_kind") << ", aborted "
                             << row.at("aborted") << ", usage_source " << row.at("usage_source"));
  CHECK(row.at("status") == e.status);
  CHECK(row.at("error_kind") == e.error_kind);
  CHECK(row.at("aborted") == e.aborted);
  CHECK(row.at("usage_source") == e.usage_source);
}

// (b) of every case: a normal call right after the fault is relayed and metered.
void expect_normal_call(harness& h) {
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"));
  CHECK(r.status == 200);
  CHECK(json::parse(r.body)["usage"]["completion_tokens"].get<int>() > 0);
}

const row_expect normal_row{"200", "<null>", "0", "upstream"};

tt::harness_options with(std::function<void(tollgate::config&)> tweak) {
  tt::harness_options o;
  o.tweak = std::move(tweak);
  return o;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Upstream faults

TEST_CASE("faults: an upstream refusing connections is a 502 upstream_connect and a row without usage",
          "[faults][upstream]") {
  const tt::refused_port refused;
  const auto dead_port = refused.port();
  harness h(with([&](tollgate::config& c) {
    tollgate::upstream_config dead = c.upstream, live = c.upstream;
    dead.name = "dead";
    dead.url = "http://127.0.0.1:" + std::to_string(dead_port) + "/v1";
    live.name = "live";
    c.upstreams = {dead, live};
    c.routes = {{"gpt-4.1-mini", {"dead"}, ""}, {"*", {"live"}, ""}};
  }));
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1-mini"));
  CHECK(r.status == 502);
  CHECK(error_code_of(r.body) == "upstream_connect");
  CHECK(r.body.find("127.0.0.1") == std::string::npos);  // no internal detail for the client
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 2);
  check_row(rows[0], {"502", "upstream_connect", "0", "none"});
  CHECK(rows[0]["upstream"] == "dead");
  CHECK(rows[0]["attempts"] == "1");
  CHECK(rows[0]["cost_usd"] == "0.0");
  check_row(rows[1], normal_row);
  CHECK(rows[1]["upstream"] == "live");
  CHECK(h.metric_sum("tollgate_upstream_errors_total", "kind=\"upstream_connect\"") == 1);
}

TEST_CASE("faults: an upstream reset mid-body leaves a visibly short body and an estimated, aborted row",
          "[faults][upstream]") {
  harness h;
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-fault", "reset-mid-body"}});
  CHECK(s.status() == 200);
  const auto declared = std::stoull(s.header("content-length"));
  auto got = s.read_all();
  CHECK(got.size() < declared);  // the client can tell: fewer bytes than Content-Length
  CHECK_FALSE(s.ended_cleanly());
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 2);
  check_row(rows[0], {"200", "upstream_reset", "1", "estimated"});
  CHECK(std::stoll(rows[0]["prompt_tokens"]) > 0);
  check_row(rows[1], normal_row);
}

TEST_CASE("faults: a Content-Length larger than the body is relayed as sent and cut when the upstream closes",
          "[faults][upstream]") {
  harness h;
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-fault", "wrong-content-length"}});
  CHECK(s.status() == 200);
  const auto declared = std::stoull(s.header("content-length"));
  auto got = s.read_all();
  CHECK(got.size() + 100 == declared);  // every byte the upstream sent, and not one more
  CHECK_FALSE(s.ended_cleanly());
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 2);
  check_row(rows[0], {"200", "upstream_reset", "1", "estimated"});
  check_row(rows[1], normal_row);
}

TEST_CASE("faults: invalid chunked encoding from the upstream is an upstream_protocol error", "[faults][upstream]") {
  harness h;
  // The upstream's head (200, chunked) and its broken first chunk arrive in two writes: tollgate
  // either has already sent the head on (the client sees a 200 that is cut off) or has not (a 502).
  int client_status = 0;
  {
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-fault", "bad-chunked"}});
    client_status = s.status();
    auto got = s.read_all();
    if (client_status == 200) {
      CHECK_FALSE(s.ended_cleanly());
      CHECK(got.find("hello") == std::string::npos);  // nothing of the broken chunk is passed on
    } else {
      CHECK(client_status == 502);
      CHECK(error_code_of(got) == "upstream_protocol");
    }
  }
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0]["status"] == std::to_string(client_status));
  CHECK(rows[0]["error_kind"] == "upstream_protocol");
  CHECK(rows[0]["aborted"] == "1");
  check_row(rows[1], normal_row);
  CHECK(h.metric_sum("tollgate_upstream_errors_total", "kind=\"upstream_protocol\"") == 1);
}

TEST_CASE("faults: a 200 with truncated JSON or a non-JSON body is relayed unchanged and ledgered unmetered",
          "[faults][upstream]") {
  harness h;
  auto half = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-fault", "truncated-json"}});
  CHECK(half.status == 200);
  CHECK(json::parse(half.body, nullptr, false).is_discarded());
  CHECK(half.body.rfind(R"({"id":"chatcmpl-fake)", 0) == 0);
  auto html = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-fault", "not-json"}});
  CHECK(html.status == 200);
  CHECK(html.body == "<html>oops</html>");
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 3);
  // The upstream answered 200, so the call is not an error; its usage is unknown, and the row says
  // so (usage_source none, cost 0) rather than inventing numbers.
  check_row(rows[0], {"200", "<null>", "0", "none"});
  check_row(rows[1], {"200", "<null>", "0", "none"});
  CHECK(rows[0]["cost_usd"] == "0.0");
  check_row(rows[2], normal_row);
  // Counted where an alert can see them; the normal call is not.
  CHECK(h.metric_sum("tollgate_unmetered_requests_total", "route=\"chat_completions\"") == 2);
  CHECK(h.metric_sum("tollgate_unmetered_requests_total") == 2);
}

TEST_CASE("faults: a body larger than max_parse_bytes is relayed whole and ledgered as unmetered",
          "[faults][upstream]") {
  harness h;  // default max_parse_bytes: 64 MiB
  const std::size_t size = (64u << 20) + (1u << 20);
  REQUIRE(size > h.cfg.max_parse_bytes);
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-body-bytes", std::to_string(size)}});
  REQUIRE(r.status == 200);
  CHECK(r.body.size() == size);
  CHECK(r.body.find(R"("usage")") != std::string::npos);  // usage was there, past what tollgate reads
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 2);
  check_row(rows[0], {"200", "<null>", "0", "none"});
  CHECK(rows[0]["prompt_tokens"] == "0");
  check_row(rows[1], normal_row);
  CHECK(h.metric_sum("tollgate_unmetered_requests_total") == 1);
}

TEST_CASE("faults: stalls before the first byte, between chunks and past the total limit are named timeouts",
          "[faults][upstream][timeouts]") {
  harness h(with([](tollgate::config& c) {
    c.upstream.first_byte_timeout = 300ms;
    c.upstream.idle_timeout = 300ms;
    c.upstream.total_timeout = 1500ms;
  }));
  SECTION("a stream request whose upstream never answers: 504 upstream_first_byte_timeout") {
    auto t0 = steady::now();
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true),
                           {{"x-fake-fault", "stall-before-headers"}});
    CHECK(r.status == 504);
    CHECK(error_code_of(r.body) == "upstream_first_byte_timeout");
    CHECK(steady::now() - t0 < 1200ms);
    expect_normal_call(h);
    auto rows = ledger(h);
    REQUIRE(rows.size() == 2);
    check_row(rows[0], {"504", "upstream_first_byte_timeout", "0", "none"});
    CHECK(rows[0]["stream"] == "1");
    check_row(rows[1], normal_row);
  }
  SECTION("a stream that goes silent: truncated stream, upstream_idle_timeout, estimated usage") {
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true),
                        {{"x-fake-fault", "stall-mid-stream"}});
    CHECK(s.status() == 200);
    auto all = s.read_all();
    CHECK(all.find("data: ") != std::string::npos);
    CHECK(all.find("[DONE]") == std::string::npos);
    CHECK_FALSE(s.ended_cleanly());
    expect_normal_call(h);
    auto rows = ledger(h);
    REQUIRE(rows.size() == 2);
    check_row(rows[0], {"200", "upstream_idle_timeout", "1", "estimated"});
    CHECK(std::stoll(rows[0]["completion_tokens"]) > 0);  // the words that did arrive
    check_row(rows[1], normal_row);
    CHECK(h.metric_sum("tollgate_upstream_errors_total", "kind=\"upstream_idle_timeout\"") == 1);
  }
  SECTION("a non-stream body that goes silent halfway: short body, upstream_idle_timeout") {
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-fault", "stall-mid-stream"}});
    CHECK(s.status() == 200);
    const auto declared = std::stoull(s.header("content-length"));
    CHECK(s.read_all().size() < declared);
    CHECK_FALSE(s.ended_cleanly());
    expect_normal_call(h);
    auto rows = ledger(h);
    REQUIRE(rows.size() == 2);
    check_row(rows[0], {"200", "upstream_idle_timeout", "1", "estimated"});
    check_row(rows[1], normal_row);
  }
  SECTION("a stream that keeps trickling past total_timeout: cut, upstream_total_timeout") {
    auto t0 = steady::now();
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true),
                        {{"x-fake-chunks", "100"}, {"x-fake-chunk-interval-ms", "100"}});
    CHECK(s.status() == 200);
    auto all = s.read_all();
    CHECK(all.find("[DONE]") == std::string::npos);
    CHECK_FALSE(s.ended_cleanly());
    CHECK(steady::now() - t0 < 4s);  // not the 10 s the whole stream would take
    expect_normal_call(h);
    auto rows = ledger(h);
    REQUIRE(rows.size() == 2);
    check_row(rows[0], {"200", "upstream_total_timeout", "1", "estimated"});
    check_row(rows[1], normal_row);
  }
}

TEST_CASE("faults: an error event mid-stream is relayed, and the row is an aborted, estimated stream",
          "[faults][upstream]") {
  harness h;
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true),
                      {{"x-fake-fault", "error-mid-stream"}});
  CHECK(s.status() == 200);
  auto all = s.read_all();
  CHECK(all.find(R"("error")") != std::string::npos);  // the client sees why the stream stopped
  CHECK(all.find("[DONE]") == std::string::npos);
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 2);
  check_row(rows[0], {"200", "upstream_stream_truncated", "1", "estimated"});
  check_row(rows[1], normal_row);
}

TEST_CASE("faults: the rows of faults before the first response byte: status, named error, no usage",
          "[faults][upstream]") {
  harness h(with([](tollgate::config& c) {
    c.upstream.first_byte_timeout = 300ms;
    c.upstream.max_idle_connections = 0;  // every call on a fresh connection: no retry of a reused one
  }));
  struct fault_case {
    const char* header;
    const char* value;
    int status;
    const char* error_kind;
  };
  const std::vector<fault_case> cases = {
      {"x-fake-fault", "reset-before-headers", 502, "upstream_reset"},
      {"x-fake-fault", "garbage", 502, "upstream_protocol"},
      {"x-fake-fault", "stall-before-headers", 504, "upstream_first_byte_timeout"},
      {"x-fake-status", "429", 429, "<null>"},  // the upstream's own answers are not tollgate errors
      {"x-fake-status", "500", 500, "<null>"},
      {"x-fake-status", "529", 529, "<null>"},
  };
  for (const auto& fc : cases) {
    INFO(fc.header << ": " << fc.value);
    CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{fc.header, fc.value}}).status == fc.status);
  }
  expect_normal_call(h);
  CHECK(h.upstream->request_count() == cases.size() + 1);
  auto rows = ledger(h);
  REQUIRE(rows.size() == cases.size() + 1);
  for (std::size_t i = 0; i < cases.size(); ++i)
    check_row(rows[i], {std::to_string(cases[i].status).c_str(), cases[i].error_kind, "0", "none"});
  check_row(rows.back(), normal_row);
}

// ---------------------------------------------------------------------------------------------
// Client faults: framing

TEST_CASE("faults: malformed request lines are 400 and leave no ledger row", "[faults][client]") {
  harness h;
  const std::vector<std::string> lines = {
      "GET /healthz\r\nHost: a\r\n\r\n",                     // no HTTP version
      "GET  /healthz HTTP/1.1\r\nHost: a\r\n\r\n",           // two spaces
      "/healthz HTTP/1.1\r\nHost: a\r\n\r\n",                // no method
      "G(T /healthz HTTP/1.1\r\nHost: a\r\n\r\n",            // a method that is not a token
      "GET healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",  // not an absolute path
      std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 15),  // a TLS ClientHello on the plain port
  };
  for (const auto& line : lines) {
    INFO(line.substr(0, line.find('\r')));
    auto raw = tt::raw_exchange(h.port(), line);
    CHECK(status_of(raw) == 400);
  }
  CHECK(h.upstream->request_count() == 0);
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 1);
  check_row(rows[0], normal_row);
}

// 505 means "a version I do not support" (RFC 9110 15.6.6): a request line that is not
// "method SP target SP HTTP/x.y" at all is a 400, whichever part the parser trips on.
TEST_CASE("faults: a request line with a malformed version part is 400, not 505", "[faults][client]") {
  harness h;
  const std::vector<std::string> lines = {
      "GET /healthz HTTP/1.1 extra\r\nHost: a\r\n\r\n",  // a fourth element
      "GET /hea lthz HTTP/1.1\r\nHost: a\r\n\r\n",       // a space inside the target
      "GET /healthz HTTX/1.1\r\nHost: a\r\n\r\n",        // not HTTP
  };
  for (const auto& line : lines) {
    INFO(line.substr(0, line.find('\r')));
    CHECK(status_of(tt::raw_exchange(h.port(), line)) == 400);
  }
  // A well-formed version tollgate does not speak stays a 505.
  CHECK(status_of(tt::raw_exchange(h.port(), "GET /healthz HTTP/3.0\r\nHost: a\r\n\r\n")) == 505);
}

TEST_CASE("faults: malformed header fields are 400 and leave no ledger row", "[faults][client]") {
  harness h;
  const std::string start = "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n";
  const std::string body = tt::chat_body();
  const std::string rest = "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"a header without a colon", "X-No-Colon\r\n"},
      {"NUL in a header value", std::string("X-Nul: a\0b\r\n", 12)},
      {"NUL in a header name", std::string("X-N\0l: a\r\n", 10)},
      {"whitespace between name and colon (RFC 9112 5.1)", "X-Space : a\r\n"},
      {"a separator in the name", "X(Bad): a\r\n"},
      {"a bare CR in a value", "X-Cr: a\rb\r\n"},
      {"an empty name", ": a\r\n"},
  };
  for (const auto& [what, field] : cases) {
    INFO(what);
    auto raw = tt::raw_exchange(h.port(), start + field + rest);
    CHECK(status_of(raw) == 400);
  }
  CHECK(h.upstream->request_count() == 0);
  expect_normal_call(h);
  CHECK(ledger(h).size() == 1);
}

TEST_CASE("faults: an oversized request line is refused before it is read whole", "[faults][client]") {
  harness h;
  auto raw = tt::raw_exchange(h.port(), "GET /v1/models?q=" + std::string(100 * 1024, 'a') + " HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(status_of(raw) == 414);  // URI Too Long: the line alone is over max_header_bytes
  CHECK(error_code_of(body_of(raw)) == "uri_too_long");
  CHECK(h.upstream->request_count() == 0);
  expect_normal_call(h);
  CHECK(ledger(h).size() == 1);
}

TEST_CASE("faults: a head over max_header_bytes is refused however its lines are split into reads", "[faults][client]") {
  // Beast 1.81 counts its header limit per parse window: lines parsed before a read that ended
  // mid-head did not count, so a head sent a line at a time passed at up to ~2x the limit
  // (tests/fuzz/findings #5). The limit is the head's size, start line and final CRLF included.
  harness h(with([](tollgate::config& c) { c.max_header_bytes = 1024; }));
  // The lines of a head of exactly `size` bytes: `first`, then padding fields.
  const auto head_lines = [](std::size_t size, std::vector<std::string> lines) {
    std::size_t used = 2;  // the final CRLF
    for (const auto& l : lines) used += l.size();
    for (int i = 0; used < size; ++i) {
      const std::string name = "X-Pad-" + std::to_string(i) + ": ";
      const std::size_t left = size - used;
      const std::size_t value = left >= name.size() + 2 + 60 + name.size() + 3 ? 60 : left - name.size() - 2;
      lines.push_back(name + std::string(value, 'a') + "\r\n");
      used += lines.back().size();
    }
    lines.push_back("\r\n");
    return lines;
  };
  // A GET /healthz (200 under the limit), and a POST whose Content-Length is over the body limit
  // (413 under the limit: the parser checks it at the head's end, so over the limit the head's
  // size must still decide, whether Beast counted the head whole or not).
  const std::vector<std::string> get = {"GET /healthz HTTP/1.1\r\n", "Host: a\r\n", "Connection: close\r\n"};
  const std::vector<std::string> post = {"POST /v1/chat/completions HTTP/1.1\r\n", "Host: a\r\n",
                                         "Content-Type: application/json\r\n", "Content-Length: 1000000000000\r\n"};
  for (const auto& [first, under] : {std::pair{get, 200}, std::pair{post, 413}}) {
    for (const std::size_t size : {std::size_t{1000}, std::size_t{1024}, std::size_t{1025}, std::size_t{1100}, std::size_t{1900}}) {
      const auto lines = head_lines(size, first);
      std::string whole;
      for (const auto& l : lines) whole += l;
      REQUIRE(whole.size() == size);
      const int want = size <= 1024 ? under : 431;
      // Whole (one read), a line per read, or 64- and 300-byte pieces (lines cut anywhere).
      std::vector<std::vector<std::string>> splits = {{whole}, lines, {}, {}};
      for (std::size_t k = 0; k < 2; ++k)
        for (std::size_t at = 0, piece = k == 0 ? 64 : 300; at < size; at += piece) splits[2 + k].push_back(whole.substr(at, piece));
      for (const auto& pieces : splits) {
        INFO(first[0] << "head of " << size << " bytes in " << pieces.size() << " reads");
        raw_conn c(h.port());
        REQUIRE(c.connected());
        const int one = 1;
        ::setsockopt(c.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        for (const auto& piece : pieces) {
          c.send(piece);
          if (pieces.size() > 1) std::this_thread::sleep_for(5ms);  // each piece its own read
        }
        const auto got = c.read_for(5s);  // until tollgate closes (Connection: close, or a refusal)
        CHECK(got.closed);
        CHECK(status_of(got.bytes) == want);
        if (want == 431) CHECK(error_code_of(body_of(got.bytes)) == "headers_too_large");
      }
    }
  }
  CHECK(h.upstream->request_count() == 0);
  expect_normal_call(h);
}

TEST_CASE("faults: bad body framing is refused and nothing goes upstream", "[faults][client]") {
  harness h(with([](tollgate::config& c) { c.max_body_bytes = 1024; }));
  const std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n";
  SECTION("a Content-Length above max_body_bytes: 413 before the body is read") {
    auto raw = tt::raw_exchange(h.port(), head + "Content-Length: 1000000\r\n\r\n{");
    CHECK(status_of(raw) == 413);
    CHECK(error_code_of(body_of(raw)) == "body_too_large");
  }
  SECTION("a chunked upload growing past max_body_bytes: 413") {
    std::string chunks;
    for (int i = 0; i < 4; ++i) chunks += "200\r\n" + std::string(512, ' ') + "\r\n";
    auto raw = tt::raw_exchange(h.port(), head + "Transfer-Encoding: chunked\r\n\r\n" + chunks + "0\r\n\r\n");
    CHECK(status_of(raw) == 413);
  }
  SECTION("an invalid chunk-size line: 400") {
    auto raw = tt::raw_exchange(h.port(), head + "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n");
    CHECK(status_of(raw) == 400);
  }
  SECTION("Content-Length and Transfer-Encoding together (request smuggling): 400") {
    auto raw = tt::raw_exchange(h.port(), head + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
    CHECK(status_of(raw) == 400);
  }
  SECTION("two different Content-Length values: 400") {
    auto raw = tt::raw_exchange(h.port(), head + "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}");
    CHECK(status_of(raw) == 400);
  }
  SECTION("a Content-Length that is not a number, or overflows: 400") {
    CHECK(status_of(tt::raw_exchange(h.port(), head + "Content-Length: two\r\n\r\n{}")) == 400);
    CHECK(status_of(tt::raw_exchange(h.port(), head + "Content-Length: -2\r\n\r\n{}")) == 400);
    auto huge = tt::raw_exchange(h.port(), head + "Content-Length: 99999999999999999999999\r\n\r\n{}");
    CHECK(status_of(huge) == 400);
  }
  CHECK(h.upstream->request_count() == 0);
  expect_normal_call(h);
  CHECK(ledger(h).size() == 1);
}

TEST_CASE("faults: obs-fold in a request header is unfolded to spaces before forwarding (RFC 9112 5.2)",
          "[faults][client]") {
  harness h;
  const std::string body = tt::chat_body();
  auto raw = tt::raw_exchange(h.port(), "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                                        "Content-Type: application/json\r\nX-Folded: a\r\n b\r\nContent-Length: " +
                                            std::to_string(body.size()) + "\r\n\r\n" + body);
  CHECK(status_of(raw) == 200);
  auto reqs = h.upstream->requests();
  REQUIRE(reqs.size() == 1);
  auto folded = reqs[0].header("x-folded");
  CHECK(folded.find_first_of("\r\n") == std::string::npos);
  CHECK(folded.front() == 'a');
  CHECK(folded.back() == 'b');
  auto rows = ledger(h);
  REQUIRE(rows.size() == 1);
  check_row(rows[0], normal_row);
}

// RFC 9112 6.3: a request whose Transfer-Encoding does not end in chunked has no reliable length:
// 400 and close. Read as "no body", the bytes after the head become a second, smuggled request.
TEST_CASE("faults: a request with a transfer coding other than chunked is 400 and its body is not read as a "
          "request", "[faults][client]") {
  harness h;
  auto raw = tt::raw_exchange(h.port(), "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                                        "Transfer-Encoding: gzip\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  INFO("tollgate answered:\n" << raw);
  CHECK(status_of(raw) == 400);
  CHECK(error_code_of(body_of(raw)) == "bad_request");
  CHECK(raw.find("gpt-4.1") == std::string::npos);  // the smuggled GET /v1/models was not answered
  CHECK(h.upstream->request_count() == 0);
  CHECK(ledger(h).empty());
}

TEST_CASE("faults: refusals before a call is routed leave no row, refusals of a /v1 call leave one",
          "[faults][client]") {
  harness h(with([](tollgate::config& c) { c.max_body_bytes = 1024; }));
  auto raw = [&](const std::string& bytes) { return status_of(tt::raw_exchange(h.port(), bytes)); };
  // Not ledgered: the request never became a call.
  CHECK(raw("GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") == 404);
  CHECK(raw("GET /v1/../x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") == 400);
  CHECK(raw("GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400);
  CHECK(raw(post_head(2048) + std::string(2048, ' ')) == 413);
  CHECK(raw("GET /v1/models HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(70 * 1024, 'a') + "\r\n\r\n") == 431);
  CHECK(raw("DELETE /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") == 405);
  CHECK(ledger(h).empty());
  // Ledgered: a /v1 call tollgate refused itself, with the reason.
  const std::string put = tt::raw_exchange(h.port(), "PUT /v1/chat/completions HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  CHECK(status_of(put) == 405);
  CHECK(put.find("Allow: GET, HEAD, POST\r\n") != std::string::npos);
  CHECK(raw(post_head(2, "text/plain") + "{}") == 415);
  CHECK(raw(post_head(5) + "{nope") == 400);
  CHECK(h.upstream->request_count() == 0);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 3);
  check_row(rows[0], {"405", "method_not_allowed", "0", "none"});
  check_row(rows[1], {"415", "unsupported_media_type", "0", "none"});
  check_row(rows[2], {"400", "invalid_json", "0", "none"});
}

// ---------------------------------------------------------------------------------------------
// Client faults: bodies

TEST_CASE("faults: more invalid JSON bodies are 400 invalid_json, ledgered, never forwarded", "[faults][client]") {
  harness h;
  const std::vector<std::string> bodies = {
      "null",
      R"("a string")",
      "42",
      "true",
      R"({"model":"gpt-4.1","messages":[)",                  // unterminated
      R"({'model':'gpt-4.1'})",                              // single quotes
      R"({"model":"gpt-4.1",})",                             // trailing comma
      R"({"model":"gpt-4.1" /* comment */})",                // comments
      R"({"model":"gpt-4.1","temperature":NaN})",            // NaN
      "{\"model\":\"gpt-4.1\",\"x\":\"a\x01" "b\"}",         // raw control character in a string
      "{\"model\":\"gpt-4.1\",\"x\":\"\xc0\xaf\"}",          // overlong UTF-8
      "{\"model\":\"gpt-4.1\",\"x\":\"\xed\xa0\x80\"}",      // UTF-8-encoded surrogate
      R"({"model":"gpt-4.1","x":"\ud800"})",                 // lone surrogate escape
      R"({"model":["gpt-4.1"],"messages":[]})",              // model is an array
      R"({"model":"gpt-4.1","stream":1})",                   // stream is a number
      std::string(R"({"model":"gpt-4.1"})") + '\0',         // a NUL after the object
  };
  int n = 0;
  for (const auto& b : bodies) {
    INFO(b);
    auto raw = tt::raw_exchange(h.port(), post_head(b.size()) + b);
    CHECK(status_of(raw) == 400);
    CHECK(error_code_of(body_of(raw)) == "invalid_json");
    ++n;
  }
  CHECK(h.upstream->request_count() == 0);
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == static_cast<std::size_t>(n + 1));
  for (int i = 0; i < n; ++i) check_row(rows[static_cast<std::size_t>(i)], {"400", "invalid_json", "0", "none"});
  check_row(rows.back(), normal_row);
}

TEST_CASE("faults: wrong content types are 415 and ledgered, JSON variants are accepted", "[faults][client]") {
  harness h;
  const std::string body = tt::chat_body();
  for (std::string type : {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                           "application/xml", "application/jsonp", "application/octet-stream"}) {
    INFO(type);
    auto raw = tt::raw_exchange(h.port(), post_head(body.size(), type) + body);
    CHECK(status_of(raw) == 415);
    CHECK(error_code_of(body_of(raw)) == "unsupported_media_type");
  }
  CHECK(h.upstream->request_count() == 0);
  for (std::string type : {"application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"}) {
    INFO(type);
    CHECK(tt::request(h.port(), "POST", "/v1/chat/completions", body, {{"Content-Type", type}}).status == 200);
  }
  auto rows = ledger(h);
  REQUIRE(rows.size() == 9);
  for (std::size_t i = 0; i < 6; ++i) check_row(rows[i], {"415", "unsupported_media_type", "0", "none"});
  for (std::size_t i = 6; i < 9; ++i) check_row(rows[i], normal_row);
}

TEST_CASE("faults: a client that closes mid-upload causes no upstream call and no row", "[faults][client]") {
  harness h;
  const std::string body = tt::chat_body();
  SECTION("with Content-Length") {
    raw_conn c(h.port());
    REQUIRE(c.connected());
    REQUIRE(c.send(post_head(body.size()) + body.substr(0, body.size() / 2)));
    c.close();
  }
  SECTION("chunked") {
    raw_conn c(h.port());
    REQUIRE(c.connected());
    REQUIRE(c.send("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n10\r\n" + body.substr(0, 16) + "\r\n"));
    c.close();
  }
  expect_normal_call(h);
  CHECK(h.upstream->request_count() == 1);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 1);
  check_row(rows[0], normal_row);
}

TEST_CASE("faults: a body that stops arriving is cut off after body_timeout", "[faults][client][timeouts]") {
  harness h(with([](tollgate::config& c) { c.body_timeout = 500ms; }));
  const std::string body = tt::chat_body();
  raw_conn c(h.port());
  REQUIRE(c.send(post_head(body.size()) + body.substr(0, 10)));
  auto t0 = steady::now();
  auto got = c.read_for(5s);
  CHECK(got.closed);
  CHECK(steady::now() - t0 >= 400ms);
  CHECK(steady::now() - t0 < 3s);
  CHECK(h.upstream->request_count() == 0);
  expect_normal_call(h);
  CHECK(ledger(h).size() == 1);
}

// The head and body reads have their own deadline timer that cancels the read (beast::tcp_stream's
// would close the socket), so the 408 can still be written before the close.
TEST_CASE("faults: a request whose head or body times out is told so with a 408 before the close",
          "[faults][client][timeouts]") {
  harness h(with([](tollgate::config& c) {
    c.header_timeout = 500ms;
    c.body_timeout = 500ms;
  }));
  const std::string body = tt::chat_body();
  for (const std::string& partial : {std::string("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"),
                                     post_head(body.size()) + body.substr(0, 10)}) {
    raw_conn c(h.port());
    REQUIRE(c.send(partial));
    auto got = c.read_for(5s);
    CHECK(got.closed);
    CHECK(status_of(got.bytes) == 408);
    CHECK(error_code_of(body_of(got.bytes)) == "request_timeout");
  }
}

TEST_CASE("faults: a client that half-closes after its request is taken as gone: 499 in the ledger",
          "[faults][client]") {
  // Like nginx (499), tollgate reads a FIN while a call is in flight as the client giving up, and
  // cancels the upstream call rather than pay for an answer nobody may read.
  harness h;
  const std::string body = tt::chat_body();
  raw_conn c(h.port());
  REQUIRE(c.send("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                 "x-fake-delay-ms: 2000\r\nConnection: close\r\nContent-Length: " +
                 std::to_string(body.size()) + "\r\n\r\n" + body));
  c.shutdown_write();
  auto t0 = steady::now();
  auto got = c.read_for(5s);
  CHECK(got.closed);
  CHECK(steady::now() - t0 < 1500ms);  // cancelled, not the 2 s the upstream would take
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0]["status"] == "499");
  CHECK(rows[0]["error_kind"] == "client_aborted");
  CHECK(rows[0]["aborted"] == "1");
  CHECK(rows[0]["usage_source"] == "none");
  check_row(rows[1], normal_row);
}

// ---------------------------------------------------------------------------------------------
// Client faults: slow and idle connections, many connections

TEST_CASE("faults: slowloris headers are cut off by header_timeout while the only worker keeps serving",
          "[faults][client][timeouts]") {
  harness h(with([](tollgate::config& c) {
    c.workers = 1;
    c.header_timeout = 1s;
  }));
  raw_conn slow(h.port());
  REQUIRE(slow.connected());
  const auto t0 = steady::now();
  REQUIRE(slow.send("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"));
  raw_conn::received got;
  bool served_meanwhile = false;
  for (int i = 0; i < 50 && !got.closed; ++i) {
    // One more header line every 100 ms: never complete, never silent long enough for an idle timeout.
    if (!slow.send("X-Slow-" + std::to_string(i) + ": a\r\n")) break;
    if (i == 3) {
      auto t = steady::now();
      expect_normal_call(h);
      CHECK(steady::now() - t < 500ms);
      served_meanwhile = slow.open_now();
    }
    auto r = slow.read_for(100ms);
    got.bytes += r.bytes;
    got.closed = r.closed;
  }
  if (!got.closed) {
    auto r = slow.read_for(3s);
    got.bytes += r.bytes;
    got.closed = r.closed;
  }
  const auto elapsed = steady::now() - t0;
  CHECK(served_meanwhile);  // the normal call was served while the slow client was still connected
  CHECK(got.closed);
  CHECK(elapsed >= 900ms);
  CHECK(elapsed < 2500ms);
  CHECK(h.upstream->request_count() == 1);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 1);
  check_row(rows[0], normal_row);
}

// tollgate sends a reply with one non-blocking send, then an async write of what the socket did
// not take. A client that reads nothing for a while makes the rest wait: every byte must still
// arrive once and in order, and the next call on the connection must be framed right.
TEST_CASE("faults: a client that reads its replies late gets each one whole", "[faults][client]") {
  harness h;
  raw_conn c(h.port());
  REQUIRE(c.connected());
  const std::string body = tt::chat_body();
  for (std::size_t bytes : {std::size_t{6} << 20, std::size_t{1} << 20}) {
    const std::string request = "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                                "x-fake-body-bytes: " + std::to_string(bytes) + "\r\nContent-Length: " +
                                std::to_string(body.size()) + "\r\n\r\n" + body;
    REQUIRE(c.send(request));
    std::this_thread::sleep_for(300ms);  // the reply fills the socket buffers meanwhile
    auto got = c.read_for(20s, [](const std::string& b) {
      const auto end = b.find("\r\n\r\n");
      const auto cl = b.find("Content-Length: ");
      return end != std::string::npos && cl != std::string::npos && cl < end &&
             b.size() - end - 4 >= std::stoul(b.substr(cl + 16));
    });
    REQUIRE_FALSE(got.closed);
    REQUIRE(status_of(got.bytes) == 200);
    const std::string reply = body_of(got.bytes);
    CHECK(reply.size() == bytes);
    const auto j = json::parse(reply, nullptr, false);
    REQUIRE(j.is_object());
    CHECK(j["usage"]["prompt_tokens"].is_number());
  }
  const auto rows = ledger(h);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].at("status") == "200");
  CHECK(rows[1].at("status") == "200");
  CHECK(rows[1].at("usage_source") == "upstream");
}

TEST_CASE("faults: idle connections are closed: silent ones after header_timeout, kept-alive ones after "
          "keepalive_timeout", "[faults][client][timeouts]") {
  harness h(with([](tollgate::config& c) {
    c.header_timeout = 700ms;
    c.keepalive_timeout = 300ms;
  }));
  SECTION("a connection that never sends a byte") {
    raw_conn c(h.port());
    auto t0 = steady::now();
    auto got = c.read_for(5s);
    CHECK(got.closed);
    CHECK(got.bytes.empty());  // nothing was asked, so nothing is answered
    CHECK(steady::now() - t0 >= 600ms);
    CHECK(steady::now() - t0 < 2s);
  }
  SECTION("a kept-alive connection after its response") {
    raw_conn c(h.port());
    REQUIRE(c.send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"));
    auto first = c.read_for(5s, [](const std::string& b) { return b.find(R"({"status":"ok"})") != std::string::npos; });
    REQUIRE(status_of(first.bytes) == 200);
    REQUIRE_FALSE(first.closed);
    auto t0 = steady::now();
    auto got = c.read_for(5s);
    CHECK(got.closed);
    CHECK(got.bytes.empty());
    CHECK(steady::now() - t0 >= 250ms);
    CHECK(steady::now() - t0 < 1500ms);
  }
  SECTION("a kept-alive connection's next request is served at once, and after a pause") {
    // At once: read into the connection's buffer (hot). After 150 ms: past hot_idle (50 ms),
    // the connection has parked on a one-byte read and still answers, within keepalive_timeout.
    raw_conn c(h.port());
    const auto ok = [](const std::string& b) { return b.find(R"({"status":"ok"})") != std::string::npos; };
    for (auto pause : {0ms, 0ms, 150ms, 0ms, 200ms}) {
      std::this_thread::sleep_for(pause);
      REQUIRE(c.send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"));
      auto got = c.read_for(5s, ok);
      CHECK(status_of(got.bytes) == 200);
      REQUIRE_FALSE(got.closed);
    }
  }
  expect_normal_call(h);
  CHECK(ledger(h).size() == 1);
}

TEST_CASE("faults: parked connections: a request that trickles in is served and a client's close is seen "
          "and a shutdown closes the rest at once", "[faults][client][timeouts]") {
  // Past hot_idle (50 ms) an idle connection parks without a coroutine (client_session::park);
  // its next byte spawns a new one. Long timeouts here: nothing may close on its own.
  harness h(with([](tollgate::config& c) {
    c.header_timeout = 30s;
    c.keepalive_timeout = 30s;
  }));
  const auto ok = [](const std::string& b) { return b.find(R"({"status":"ok"})") != std::string::npos; };
  std::vector<raw_conn> conns;
  for (int i = 0; i < 40; ++i) {
    conns.emplace_back(h.port());
    REQUIRE(conns.back().send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"));
    REQUIRE(status_of(conns.back().read_for(5s, ok).bytes) == 200);
  }
  raw_conn fresh(h.port());  // never served: parked from its accept
  std::this_thread::sleep_for(150ms);
  const auto connections = [&](const char* state) {
    return h.metric_sum("tollgate_client_connections", std::string("state=\"") + state + "\"");
  };
  CHECK(harness::eventually([&] { return connections("idle") == 41 && connections("active") == 0; }));
  // One byte, then the rest a moment later (the byte alone wakes the connection; the rest is
  // read by the new run()), then a whole request again after it parked once more.
  REQUIRE(conns[0].send("G"));
  std::this_thread::sleep_for(100ms);
  REQUIRE(conns[0].send("ET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"));
  CHECK(status_of(conns[0].read_for(5s, ok).bytes) == 200);
  std::this_thread::sleep_for(100ms);
  REQUIRE(fresh.send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"));
  CHECK(status_of(fresh.read_for(5s, ok).bytes) == 200);
  // A client that half-closes its parked connection: tollgate closes its side too.
  ::shutdown(conns[1].fd(), SHUT_WR);
  auto gone = conns[1].read_for(5s);
  CHECK(gone.closed);
  CHECK(gone.bytes.empty());
  CHECK(harness::eventually([&] { return connections("idle") == 40 && connections("active") == 0; }));
  // A real call on a parked connection, ledgered as any other.
  std::this_thread::sleep_for(100ms);
  const std::string body = tt::chat_body();
  REQUIRE(conns[2].send("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                        "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body));
  auto called = conns[2].read_for(5s, [](const std::string& b) { return b.find("chat.completion") != std::string::npos; });
  CHECK(status_of(called.bytes) == 200);
  // Shutdown: every parked connection is closed at once, not after keepalive_timeout.
  const auto t0 = steady::now();
  h.proxy->shutdown();
  CHECK(steady::now() - t0 < 3s);
  for (std::size_t i = 3; i < conns.size(); ++i) CHECK(conns[i].read_for(2s).closed);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 1);
}

namespace {

bool write_all(int fd, const void* data, std::size_t n) {
  auto* p = static_cast<const char*>(data);
  while (n > 0) {
    auto w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_exact(int fd, void* data, std::size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    auto r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// The client ends of many connections live in a forked child, so that the two ends of 10k
// connections need not fit under one process's descriptor limit. The child reports how many
// connected; on each command byte, how many are still open and how many of a sample of ten get
// a 200 for /healthz; on EOF it closes everything, reports once more and exits. A child of
// fork() in a threaded process: no Catch, no stdio, only sockets, pipes and malloc.
[[noreturn]] void hold_connections(std::uint16_t port, std::size_t n, int cmd_fd, int report_fd) {
  std::vector<raw_conn> conns;
  conns.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    conns.emplace_back(port);
    if (!conns.back().connected()) {
      conns.pop_back();
      break;
    }
  }
  std::uint64_t connected = conns.size();
  write_all(report_fd, &connected, sizeof connected);
  char cmd;
  while (read_exact(cmd_fd, &cmd, 1)) {
    std::uint64_t counts[2] = {0, 0};  // open, served
    for (auto& c : conns) counts[0] += c.open_now() ? 1 : 0;
    for (std::size_t i = 0; !conns.empty() && i < conns.size(); i += std::max<std::size_t>(1, conns.size() / 10))
      if (conns[i].send("GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
        counts[1] += status_of(conns[i].read_for(5s).bytes) == 200 ? 1 : 0;
    write_all(report_fd, counts, sizeof counts);
  }
  conns.clear();
  write_all(report_fd, &connected, sizeof connected);
  ::_exit(0);
}

// Closes the pipes (so the child lets go of its connections) and reaps it, also when a
// REQUIRE throws half-way.
struct child_process {
  pid_t pid = -1;
  int cmd = -1, report = -1;
  void close_cmd() {
    if (cmd >= 0) ::close(cmd);
    cmd = -1;
  }
  int wait() {
    close_cmd();
    int status = -1;
    if (pid > 0) ::waitpid(pid, &status, 0);
    pid = -1;
    return status;
  }
  ~child_process() {
    wait();
    if (report >= 0) ::close(report);
  }
};

}  // namespace

TEST_CASE("faults: 10k concurrent client connections are held open and a normal call still succeeds",
          "[faults][client][load]") {
  constexpr std::size_t connections = 10'000;
  // tollgate's ends of the connections are in this process: raise the soft limit if needed.
  rlimit lim{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &lim) == 0);
  const rlim_t want = connections + 512;
  if (lim.rlim_cur < want) {
    INFO("RLIMIT_NOFILE hard limit " << lim.rlim_max << " is below " << want);
    REQUIRE(lim.rlim_max >= want);
    rlimit raised{want, lim.rlim_max};
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &raised) == 0);
  }
  harness h;
  int cmd[2], report[2];
  REQUIRE(::pipe2(cmd, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(report, O_CLOEXEC) == 0);
  child_process child;
  child.pid = ::fork();
  if (child.pid == 0) {
    ::close(cmd[1]);
    ::close(report[0]);
    hold_connections(h.port(), connections, cmd[0], report[1]);
  }
  ::close(cmd[0]);
  ::close(report[1]);
  child.cmd = cmd[1];
  child.report = report[0];
  REQUIRE(child.pid > 0);

  std::uint64_t connected = 0;
  REQUIRE(read_exact(child.report, &connected, sizeof connected));
  REQUIRE(connected == connections);
  expect_normal_call(h);
  // All of them still open, and a sample of them served on the spot.
  std::uint64_t counts[2] = {0, 0};
  REQUIRE(write_all(child.cmd, "c", 1));
  REQUIRE(read_exact(child.report, counts, sizeof counts));
  CHECK(counts[0] == connections);
  CHECK(counts[1] == 10);
  child.close_cmd();
  REQUIRE(read_exact(child.report, &connected, sizeof connected));  // closed them all
  const int status = child.wait();
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  expect_normal_call(h);
  auto rows = ledger(h);
  REQUIRE(rows.size() == 2);
  check_row(rows[0], normal_row);
  check_row(rows[1], normal_row);
}
