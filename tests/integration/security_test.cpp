// Security properties of issue 6, item 5, end to end: secrets (the upstream key, client keys, the
// admin token) never reach a response, a log line, a metric or the ledger; request targets cannot
// leave the configured upstream host and base path; health checks on both ports; the admin API
// behind its token; upstream response headers filtered; TLS verification off only with a warning.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/policy.hpp"
#include "support.hpp"
#include "test_cert.hpp"

using namespace std::chrono_literals;
using json = nlohmann::json;
using tt::harness;

namespace {

// Sends everything written to fd 2 (tollgate's log sink: one write(2) per JSON line) to a file
// while it lives.
class stderr_capture {
 public:
  explicit stderr_capture(std::string path) : path_(std::move(path)) {
    std::fflush(stderr);
    saved_ = ::dup(STDERR_FILENO);
    int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (saved_ < 0 || fd < 0 || ::dup2(fd, STDERR_FILENO) < 0) throw std::runtime_error("cannot capture stderr");
    ::close(fd);
  }
  ~stderr_capture() { restore(); }
  stderr_capture(const stderr_capture&) = delete;
  stderr_capture& operator=(const stderr_capture&) = delete;
  // Puts stderr back and returns what was written.
  std::string restore() {
    if (saved_ >= 0) {
      std::fflush(stderr);
      ::dup2(saved_, STDERR_FILENO);
      ::close(saved_);
      saved_ = -1;
    }
    std::ifstream in(path_, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  std::string path_;
  int saved_ = -1;
};

using tt::status_of;

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

tollgate::client_key_config key(const std::string& name, const std::string& secret, const std::string& team = {}) {
  tollgate::client_key_config k;
  k.name = name;
  k.sha256 = tollgate::policy_engine::sha256(secret);
  k.team = team;
  return k;
}

tt::harness_options with(std::function<void(tollgate::config&)> tweak) {
  tt::harness_options o;
  o.tweak = std::move(tweak);
  return o;
}

std::string flatten(const tt::response& r) {
  std::string s = std::to_string(r.status) + "\n";
  for (const auto& [k, v] : r.hdrs) s += k + ": " + v + "\n";
  return s + "\n" + r.body;
}

// Every column of every row of every table, as text.
std::string dump_database(harness& h) {
  std::string out;
  for (const auto& t : h.rows("SELECT name FROM sqlite_master WHERE type = 'table'"))
    for (const auto& row : h.rows("SELECT * FROM \"" + t.at("name") + "\""))
      for (const auto& [col, val] : row) out += t.at("name") + "." + col + "=" + val + "\n";
  return out;
}

}  // namespace

TEST_CASE("security: upstream key, client keys and admin token never appear in a response, log line, metric "
          "or ledger row", "[security][secrets]") {
  const std::string upstream_key = "sk-upstream-SECRET-7f3a9c2e";
  const std::string client_key = "sk-client-SECRET-4d1b8a";
  const std::string wrong_key = "sk-client-WRONG-SECRET-90e1";
  const std::string admin_token = "adm-SECRET-token-55c0";
  const std::vector<std::string> secrets = {upstream_key, client_key, wrong_key, admin_token};

  tt::temp_dir logs;
  stderr_capture capture(logs.path + "/stderr.log");
  std::vector<std::string> responses, ledger_bytes;
  std::string metrics, database, minted;
  std::size_t upstream_saw_key = 0, upstream_saw_client_key = 0;
  {
    tt::harness_options o;
    o.api_key = upstream_key;
    o.tweak = [&](tollgate::config& c) {
      c.log = tollgate::log_level::trace;
      c.upstream.first_byte_timeout = 300ms;
      c.policy.auth = tollgate::auth_mode::required;
      c.policy.admin_token = admin_token;
      c.policy.keys = {key("app-prod", client_key, "web")};
    };
    harness h(o);
    const tt::headers bearer = {{"Authorization", "Bearer " + client_key}};
    auto call = [&](const std::string& method, const std::string& target, const std::string& body,
                    tt::headers hs) {
      if (!body.empty()) hs.emplace_back("Content-Type", "application/json");
      auto r = tt::request(h.port(), method, target, body, hs);
      responses.push_back(flatten(r));
      return r.status;
    };
    auto with = [&](tt::headers extra) {
      tt::headers hs = bearer;
      hs.insert(hs.end(), extra.begin(), extra.end());
      return hs;
    };
    // Successes, streams, both APIs and both key styles.
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), bearer) == 200);
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body("gpt-4.1", true), bearer) == 200);
    CHECK(call("POST", "/v1/chat/completions",
               tt::chat_body("gpt-4.1", true, R"(,"stream_options":{"include_usage":true})"), bearer) == 200);
    CHECK(call("POST", "/v1/embeddings", R"({"model":"text-embedding-3-small","input":"a"})", bearer) == 200);
    CHECK(call("POST", "/v1/messages",
               R"({"model":"claude-sonnet-4.5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]})",
               {{"x-api-key", client_key}, {"anthropic-version", "2023-06-01"}}) == 200);
    CHECK(call("GET", "/v1/models", "", bearer) == 200);
    // Upstream errors and faults.
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), with({{"x-fake-status", "401"}})) == 401);
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), with({{"x-fake-status", "429"}})) == 429);
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), with({{"x-fake-status", "500"}})) == 500);
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), with({{"x-fake-fault", "reset-before-headers"}})) == 502);
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), with({{"x-fake-fault", "garbage"}})) == 502);
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), with({{"x-fake-fault", "stall-before-headers"}})) == 504);
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body("gpt-4.1", true), with({{"x-fake-fault", "cut-stream"}})) == 200);
    // Client errors, some of them carrying a key.
    CHECK(call("POST", "/v1/chat/completions", "{not json", bearer) == 400);
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), {}) == 401);
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), {{"Authorization", "Bearer " + wrong_key}}) == 401);
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), {{"x-api-key", wrong_key}}) == 401);
    CHECK(call("GET", "/v1/../admin", "", bearer) == 400);
    CHECK(call("GET", "/nope", "", bearer) == 404);
    // A key minted through the admin API: its secret is shown once (that response is the one
    // place it may appear), then used for a call.
    {
      auto r = tt::request(h.admin_port(), "POST", "/admin/keys", R"({"name":"minted","team":"ops"})",
                           {{"Authorization", "Bearer " + admin_token}, {"Content-Type", "application/json"}});
      REQUIRE(r.status == 201);
      minted = json::parse(r.body)["key"].get<std::string>();
      REQUIRE(minted.size() >= 20);
    }
    CHECK(call("POST", "/v1/chat/completions", tt::chat_body(), {{"Authorization", "Bearer " + minted}}) == 200);
    for (const auto& target : {"/admin/spend", "/admin/keys", "/admin/budgets"}) {
      auto r = tt::request(h.admin_port(), "GET", target, "", {{"Authorization", "Bearer " + admin_token}});
      CHECK(r.status == 200);
      responses.push_back(flatten(r));
    }
    responses.push_back(flatten(tt::request(h.admin_port(), "GET", "/admin/spend", "",
                                            {{"Authorization", "Bearer " + wrong_key}})));
    responses.push_back(flatten(tt::request(h.port(), "GET", "/readyz")));
    responses.push_back(flatten(tt::request(h.admin_port(), "GET", "/readyz")));

    for (const auto& req : h.upstream->requests()) {
      for (const auto& [name, value] : req.headers) {
        upstream_saw_key += value.find(upstream_key) != std::string::npos;
        upstream_saw_client_key += value.find(client_key) != std::string::npos || value.find(minted) != std::string::npos;
      }
    }
    h.flush();
    metrics = h.metrics_text();
    database = dump_database(h);
    CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 18);  // every relayed or refused /v1 call
    CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE client_key_id = 'app-prod'") == 14);
    CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE client_key_id = 'minted'") == 1);
    CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE status = 401 AND error_kind = 'invalid_api_key'") == 3);
    for (const auto& entry : std::filesystem::directory_iterator(h.dir.path))
      if (entry.is_regular_file()) ledger_bytes.push_back(read_file(entry.path()));  // db, -wal, -shm
  }  // tollgate shuts down here: its shutdown lines are captured too
  const std::string log = capture.restore();

  // The scans below would find a secret if it were there: the upstream did receive its key, and
  // the log did record the calls.
  CHECK(upstream_saw_key >= 14);
  CHECK(upstream_saw_client_key == 0);
  CHECK(log.find("\"msg\":\"call\"") != std::string::npos);
  CHECK(database.find("calls.request_id=") != std::string::npos);
  CHECK(metrics.find("tollgate_requests_total") != std::string::npos);
  CHECK(ledger_bytes.size() >= 1);

  std::vector<std::string> all_secrets = secrets;
  all_secrets.push_back(minted);
  for (const auto& secret : all_secrets) {
    INFO("secret: " << secret);
    for (std::size_t i = 0; i < responses.size(); ++i) {
      INFO("response #" << i << ": " << responses[i].substr(0, 300));
      CHECK(responses[i].find(secret) == std::string::npos);
    }
    CHECK(log.find(secret) == std::string::npos);
    CHECK(metrics.find(secret) == std::string::npos);
    CHECK(database.find(secret) == std::string::npos);
    for (const auto& bytes : ledger_bytes) CHECK(bytes.find(secret) == std::string::npos);
  }
}

TEST_CASE("security: dot segments and absolute-form targets cannot leave the upstream host or base path",
          "[security][ssrf]") {
  harness h(with([](tollgate::config& c) {
    c.upstream.url = c.upstream.url.substr(0, c.upstream.url.size() - 3) + "/api/v1";  // ".../v1" -> ".../api/v1"
  }));
  const std::string upstream_host = "127.0.0.1:" + std::to_string(h.upstream->port());
  auto send = [&](const std::string& method, const std::string& target) {
    return tt::raw_exchange(h.port(), method + " " + target + " HTTP/1.1\r\nHost: evil.example\r\n"
                                      "X-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n");
  };
  SECTION("refused") {
    for (std::string target :
         {"/v1/../admin", "/v1/%2e%2e/admin", "/v1/%2E%2e/admin", "/v1/.%2e/admin", "/v1/%2e./admin",
          "/v1/models/../../../etc/passwd", "/v1/./models", "/v1/models/..", "/v1/models/%2e", "/v1\\..\\admin",
          "/v1/%2e%2e%2fadmin", "/v1/models%2f..%2f..%2fadmin", "/v1/models%5c..%5cadmin", "//evil.example/v1/models",
          "/v1//models", "http://evil.example/v1/../admin", "http://evil.example", "evil.example:443", "*", "/admin/spend", "/metrics", "/v1evil"}) {
      INFO(target);
      int s = status_of(send("GET", target));
      CHECK((s == 400 || s == 404));
    }
    auto connect = tt::raw_exchange(h.port(), "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n");
    CHECK((status_of(connect) == 400 || status_of(connect) == 405));
    CHECK(h.upstream->request_count() == 0);
  }
  SECTION("forwarded, always to the configured host under the base path") {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"http://evil.example/v1/models", "/api/v1/models"},
        {"https://evil.example:8443/v1/models?x=1", "/api/v1/models?x=1"},
        {"http://127.0.0.1:1/v1/models", "/api/v1/models"},
        {"http://user:pw@evil.example/v1/models", "/api/v1/models"},
        {"/v1/models?url=http://evil.example/", "/api/v1/models?url=http://evil.example/"},
        {"/v1/models#http://evil.example", "/api/v1/models"},
        {"/v1/files/%252e%252e", "/api/v1/files/%252e%252e"},  // stays one literal segment
    };
    for (const auto& [target, forwarded] : cases) {
      INFO(target);
      CHECK(status_of(send("GET", target)) == 200);
    }
    auto reqs = h.upstream->requests();
    REQUIRE(reqs.size() == cases.size());
    for (std::size_t i = 0; i < cases.size(); ++i) {
      CHECK(reqs[i].target == cases[i].second);
      CHECK(reqs[i].header("host") == upstream_host);
    }
  }
}

// split_target() takes the first '/' after "://" as the path's start, even inside the query or
// the fragment: "http://h?x=/v1/models" becomes GET /v1/models.
TEST_CASE("security: an absolute-form target's query or fragment is never read as its path",
          "[security][ssrf]") {
  harness h;
  for (std::string target : {"http://evil.example?x=/v1/models", "http://evil.example#/v1/models"}) {
    INFO(target);
    auto raw = tt::raw_exchange(h.port(), "GET " + target + " HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    CHECK(status_of(raw) != 200);
  }
  CHECK(h.upstream->request_count() == 0);
}

// Tomcat and Spring strip a path parameter before resolving dot segments, so "/..;/" climbs.
TEST_CASE("security: dot-dot segments with a path parameter are refused, since Tomcat-style upstreams read them "
          "as dot segments", "[security][ssrf]") {
  harness h;
  for (std::string target : {"/v1/..;/admin", "/v1/models/..;x=1/..;/admin", "/v1/%2e%2e;/admin"}) {
    INFO(target);
    auto raw = tt::raw_exchange(h.port(), "GET " + target + " HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    CHECK(status_of(raw) == 400);
  }
  CHECK(h.upstream->request_count() == 0);
}

TEST_CASE("security: /healthz and /readyz answer on both the client and the admin port", "[security][health]") {
  harness h;
  for (auto port : {h.port(), h.admin_port()}) {
    INFO("port " << port);
    auto health = tt::request(port, "GET", "/healthz");
    CHECK(health.status == 200);
    CHECK(json::parse(health.body)["status"] == "ok");
    auto ready = tt::request(port, "GET", "/readyz");
    CHECK(ready.status == 200);
    CHECK(json::parse(ready.body)["status"] == "ready");
    CHECK(tt::request(port, "HEAD", "/healthz").status == 200);
  }
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 0);  // health checks are not calls
}

TEST_CASE("security: answers tollgate gives a HEAD itself carry no content, so a kept-alive "
          "connection stays in step", "[security][health]") {
  harness h;
  // Each HEAD, then a GET /healthz on the same connection, which closes it. Before, a 404, 405 or
  // /healthz answer to HEAD carried its JSON body, which the client read as the next response.
  for (std::string target : {"/healthz", "/readyz", "/v1/models/gpt-4.1/x/y", "/nope", "/v1/embeddings"}) {
    INFO(target);
    const auto raw = tt::raw_exchange(h.port(), "HEAD " + target + " HTTP/1.1\r\nHost: a\r\n\r\n" +
                                                    "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    const auto end_of_head = raw.find("\r\n\r\n");
    REQUIRE(end_of_head != std::string::npos);
    CHECK(raw.find("Content-Length: ") < end_of_head);  // the GET answer's length, as RFC 9110 allows
    const auto second = raw.substr(end_of_head + 4);
    CHECK(status_of(second) == 200);
    CHECK(second.ends_with(R"({"status":"ok"})"));
  }
}

TEST_CASE("security: the admin API needs the admin token, /metrics and health checks do not", "[security][admin]") {
  const std::string token = "adm-token-for-test";
  harness h(with([&](tollgate::config& c) { c.policy.admin_token = token; }));
  const tt::headers good = {{"Authorization", "Bearer " + token}};
  SECTION("no token, a wrong token or another scheme: 401 on every admin endpoint and method") {
    for (const auto& hs : std::vector<tt::headers>{{},
                                                   {{"Authorization", "Bearer wrong"}},
                                                   {{"Authorization", "Bearer " + token + "x"}},
                                                   {{"Authorization", "Basic " + token}},
                                                   {{"Authorization", token}},
                                                   {{"x-api-key", token}}}) {
      for (const auto& [method, target] : std::vector<std::pair<std::string, std::string>>{
               {"GET", "/admin/spend"}, {"GET", "/admin/whatif?model=gpt-4.1"}, {"GET", "/admin/budgets"},
               {"GET", "/admin/keys"}, {"POST", "/admin/keys"}, {"DELETE", "/admin/keys/x"}, {"GET", "/admin/nope"},
               {"GET", "/admin"}}) {
        INFO(method << " " << target);
        auto r = tt::request(h.admin_port(), method, target, method == "POST" ? R"({"name":"x"})" : "", hs);
        CHECK(r.status == 401);
        CHECK(r.body.find("admin") != std::string::npos);
        CHECK(r.header("www-authenticate").find("Bearer") == 0);
        // A bad query is told apart only for a caller with the token.
        CHECK(tt::request(h.admin_port(), "GET", "/admin/spend?a=1&a=2", "", hs).status == 401);
      }
    }
    h.flush();
    CHECK(h.query_int("SELECT COUNT(*) FROM client_keys") == 0);  // the refused POST created nothing
  }
  SECTION("the right token: 200, whatever the case of the scheme (RFC 9110)") {
    CHECK(tt::request(h.admin_port(), "GET", "/admin/spend", "", good).status == 200);
    CHECK(tt::request(h.admin_port(), "GET", "/admin/spend", "", {{"Authorization", "BEARER " + token}}).status == 200);
    CHECK(tt::request(h.admin_port(), "GET", "/admin/spend?a=1&a=2", "", good).status == 400);
    CHECK(tt::request(h.admin_port(), "GET", "/admin/spend?month=2026-11&from=2026-11-02", "", good).status == 400);
    CHECK(tt::request(h.admin_port(), "GET", "/admin/spend?from=2026-11-01T10:00:00+05:30", "", good).status == 200);
    CHECK(tt::request(h.admin_port(), "GET", "/admin/keys", "", good).status == 200);
  }
  SECTION("no token needed for /metrics, /healthz, /readyz; other paths are 404 whatever the method") {
    CHECK(tt::request(h.admin_port(), "POST", "/nope", "{}").status == 404);
    CHECK(tt::request(h.admin_port(), "POST", "/metrics", "{}").status == 405);
    CHECK(tt::request(h.admin_port(), "GET", "/metrics").status == 200);
    CHECK(tt::request(h.admin_port(), "GET", "/healthz").status == 200);
    CHECK(tt::request(h.admin_port(), "GET", "/readyz").status == 200);
  }
  SECTION("the admin API is not served on the client port, token or not") {
    CHECK(tt::request(h.port(), "GET", "/admin/spend", "", good).status == 404);
    CHECK(tt::request(h.port(), "GET", "/metrics").status == 404);
    CHECK(h.upstream->request_count() == 0);
  }
}

TEST_CASE("security: the admin port answers requests it cannot serve with a JSON error, never a dropped connection",
          "[security][admin]") {
  const std::string token = "adm-token-for-test";
  harness h(with([&](tollgate::config& c) { c.policy.admin_token = token; }));
  const tt::headers good = {{"Authorization", "Bearer " + token}};
  SECTION("bytes that are not UTF-8, and control characters, in a value the error message quotes") {
    for (const char* target : {"/admin/spend?from=%FF", "/admin/spend?month=%FE%FF", "/admin/whatif?model=%FF",
                               "/admin/spend?group_by=%C3"}) {
      INFO(target);
      auto r = tt::request(h.admin_port(), "GET", target, "", good);
      CHECK(r.status == 400);
      CHECK(r.body.find("\"error\"") != std::string::npos);
    }
    auto nul = tt::request(h.admin_port(), "GET", "/admin/spend?from=2026-01-01%00x", "", good);
    CHECK(nul.status == 400);
    CHECK(nul.body.find("control character") != std::string::npos);
    CHECK(tt::request(h.admin_port(), "DELETE", "/admin/keys/%FF", "", good).status == 404);
  }
  SECTION("a parameter given twice is refused, not half-read") {
    auto r = tt::request(h.admin_port(), "GET", "/admin/spend?group_by=model&group_by=team", "", good);
    CHECK(r.status == 400);
    CHECK(r.body.find("given twice") != std::string::npos);
  }
  SECTION("framing errors: 413, 431, 400, like the client port") {
    auto big = tt::request(h.admin_port(), "POST", "/admin/keys", std::string(70'000, ' '), good);
    CHECK(big.status == 413);
    CHECK(big.body.find("body_too_large") != std::string::npos);
    CHECK(tt::request(h.admin_port(), "GET", "/metrics?x=" + std::string(20'000, 'a')).status == 431);
    CHECK(tt::status_of(tt::raw_exchange(h.admin_port(), "GARBAGE\r\n\r\n")) == 400);
    CHECK(tt::status_of(tt::raw_exchange(h.admin_port(), "POST /admin/keys HTTP/1.1\r\nHost: x\r\n"
                                                          "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n")) == 400);
  }
  // The admin port still serves after all of these.
  CHECK(tt::request(h.admin_port(), "GET", "/admin/spend", "", good).status == 200);
}

TEST_CASE("security: a second tollgate cannot bind a client port another one listens on", "[security]") {
  // Workers share their port through SO_REUSEPORT, which alone would let a second instance in
  // and split the calls between two ledgers.
  harness h(with([](tollgate::config& c) { c.workers = 2; }));
  tollgate::config second = h.cfg;
  second.listen.port = h.port();
  second.admin_listen.port = 0;
  second.ledger_path = h.dir.path + "/second.db";
  std::string error;
  try {
    tollgate::app other(second);
    other.start();
  } catch (const std::exception& e) {
    error = e.what();
  }
  CHECK(error.find("Address already in use") != std::string::npos);
  CHECK(tt::request(h.port(), "GET", "/healthz").status == 200);
}

TEST_CASE("security: without an admin token the admin API is disabled, and both ports default to loopback",
          "[security][admin]") {
  tollgate::config defaults;
  CHECK(defaults.admin_listen.host == "127.0.0.1");
  CHECK(defaults.listen.host == "127.0.0.1");
  CHECK(defaults.policy.admin_token.empty());
  harness h;
  for (std::string auth : {"", "Bearer ", "Bearer anything"}) {
    INFO("Authorization: " << auth);
    tt::headers hs;
    if (!auth.empty()) hs.emplace_back("Authorization", auth);
    auto r = tt::request(h.admin_port(), "GET", "/admin/spend", "", hs);
    CHECK(r.status == 401);
    CHECK(json::parse(r.body)["error"]["code"] == "admin_disabled");
  }
}

namespace {
// What an upstream (or a CDN in front of it) may add about itself or its connection.
const std::vector<std::pair<std::string, std::string>> upstream_only_headers = {
    {"Set-Cookie", "__cf_bm=upstream-session; Path=/; HttpOnly; Secure"},
    {"Server", "cloudflare"},
    {"X-Powered-By", "Express"},
    {"Via", "1.1 internal-lb"},
    {"Alt-Svc", "h3=\":443\"; ma=86400"},
    {"Strict-Transport-Security", "max-age=31536000; includeSubDomains"},
    {"Access-Control-Allow-Origin", "*"},
    {"Location", "https://internal.example/v1/x"},
    {"WWW-Authenticate", "Bearer realm=\"upstream\""},
    {"CF-Ray", "8c1f-SJC"},
    {"X-Backend-Host", "10.0.3.7"},
    {"Keep-Alive", "timeout=5, max=100"},
    {"Proxy-Authenticate", "Basic"},
    {"Connection", "x-hop-secret"},
    {"X-Hop-Secret", "1"},
};
std::string as_knob(const std::vector<std::pair<std::string, std::string>>& hs) {
  json j = json::object();
  for (const auto& [k, v] : hs) j[k] = v;
  return j.dump();
}
}  // namespace

TEST_CASE("security: upstream response headers about the upstream itself are not relayed", "[security][headers]") {
  harness h;
  const tt::headers knob = {{"x-fake-response-headers", as_knob(upstream_only_headers)}};
  auto plain = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), knob);
  auto stream = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true), knob);
  auto error = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(),
                             {knob[0], {"x-fake-status", "503"}});
  REQUIRE(h.upstream->requests().size() == 3);
  for (const auto* r : {&plain, &stream, &error}) {
    INFO("status " << r->status);
    CHECK(r->status != 0);
    for (const auto& [name, value] : upstream_only_headers) {
      INFO(name);
      if (name == "Server" || name == "Connection")  // tollgate may send its own
        CHECK(r->header(name).find(value) == std::string::npos);
      else
        CHECK_FALSE(r->has_header(name));
    }
    CHECK(r->header("server") != "tollgate-fake-upstream");
  }
}

TEST_CASE("security: the headers SDKs read are relayed: content type, openai and anthropic headers, rate limits, "
          "retry hints, request ids", "[security][headers]") {
  harness h;
  const std::vector<std::pair<std::string, std::string>> api_headers = {
      {"openai-organization", "org-test"},
      {"openai-version", "2020-10-01"},
      {"anthropic-ratelimit-requests-remaining", "99"},
      {"x-ratelimit-limit-requests", "10000"},
      {"x-ratelimit-remaining-tokens", "149984"},
      {"x-ratelimit-reset-requests", "6m0s"},
  };
  const tt::headers knob = {{"x-fake-response-headers", as_knob(api_headers)}};
  auto ok = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), knob);
  REQUIRE(ok.status == 200);
  CHECK(ok.header("content-type") == "application/json");
  CHECK_FALSE(ok.header("openai-processing-ms").empty());
  for (const auto& [name, value] : api_headers) {
    INFO(name);
    CHECK(ok.header(name) == value);
  }
  CHECK(ok.header("x-upstream-request-id").rfind("req_fake_", 0) == 0);
  CHECK(ok.header("x-request-id").rfind("tg-", 0) == 0);  // tollgate's own id for the call

  auto limited = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {knob[0], {"x-fake-status", "429"}});
  REQUIRE(limited.status == 429);
  CHECK(limited.header("retry-after") == "1");
  CHECK_FALSE(limited.header("x-ratelimit-limit-requests").empty());

  auto anthropic = tt::post_json(
      h.port(), "/v1/messages",
      R"({"model":"claude-sonnet-4.5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]})",
      {{"anthropic-version", "2023-06-01"}});
  REQUIRE(anthropic.status == 200);
  CHECK(anthropic.header("request-id").rfind("req_fake_", 0) == 0);

  auto stream = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true), knob);
  REQUIRE(stream.status == 200);
  CHECK(stream.header("content-type").find("text/event-stream") == 0);
  CHECK(stream.header("openai-organization") == "org-test");
}

// The official SDKs honour retry-after-ms before Retry-After (WIRE.md, "Errors"), and
// x-should-retry (Anthropic's API sends it) over their own status rules.
TEST_CASE("security: retry-after-ms and x-should-retry from the upstream reach the client", "[security][headers]") {
  harness h;
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(),
                         {{"x-fake-status", "429"}, {"x-fake-response-headers", R"({"retry-after-ms":"1500"})"}});
  REQUIRE(r.status == 429);
  CHECK(r.header("retry-after") == "1");
  CHECK(r.header("retry-after-ms") == "1500");
  auto overloaded = tt::post_json(h.port(), "/v1/messages",
                                  R"({"model":"claude-sonnet-4.5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]})",
                                  {{"anthropic-version", "2023-06-01"}, {"x-fake-status", "529"},
                                   {"x-fake-response-headers", R"({"x-should-retry":"true"})"}});
  REQUIRE(overloaded.status == 529);
  CHECK(overloaded.header("x-should-retry") == "true");
}

TEST_CASE("security: TLS verification is off only by explicit option, with a warning at every start",
          "[security][tls]") {
  auto certs = fake::make_test_certs(fake::cert_kind::wrong_host);
  fake::options fo;
  fo.tls = fake::tls_files{certs.cert_pem, certs.key_pem};
  fake::server up(fo);
  tt::temp_dir d;
  auto start = [&](bool verify) {
    tollgate::config c;
    c.listen = {"127.0.0.1", 0};
    c.admin_listen = {"127.0.0.1", 0};
    c.workers = 1;
    c.upstream.url = "https://localhost:" + std::to_string(up.port()) + "/v1";
    c.upstream.api_key = "k";
    c.upstream.tls_verify = verify;
    c.ledger_path = d.path + "/l.db";
    c.prices_file = std::string(TOLLGATE_SOURCE_DIR) + "/config/prices.yaml";
    c.log = tollgate::log_level::warn;
    tollgate::app a(c);
    a.start();
    int status = tt::post_json(a.port(), "/v1/chat/completions", tt::chat_body()).status;
    a.shutdown();
    return status;
  };
  CHECK(tollgate::upstream_config{}.tls_verify);  // on unless a config says otherwise
  stderr_capture capture(d.path + "/stderr.log");
  const int verified = start(true);
  const int unverified_1 = start(false);
  const int unverified_2 = start(false);
  const std::string log = capture.restore();
  CHECK(verified == 502);
  CHECK(unverified_1 == 200);
  CHECK(unverified_2 == 200);
  std::size_t warnings = 0;
  for (std::size_t p = 0; (p = log.find("verification is DISABLED", p)) != std::string::npos; ++p) ++warnings;
  CHECK(warnings == 2);  // once per unverified start, none for the verified one
}
