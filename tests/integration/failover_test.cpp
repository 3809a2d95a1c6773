// Several upstreams (issue 7): routing rules, model rewrite, protocol fit and credentials,
// failover before the first byte only, and the per-upstream circuit breaker, against real fake
// upstreams on 127.0.0.1 and a real ledger.
#include <catch2/catch.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

tollgate::upstream_config node(const std::string& name, const std::string& url, unsigned weight = 1) {
  tollgate::upstream_config u;
  u.name = name;
  u.url = url;
  u.api_key = "key-" + name;
  u.weight = weight;
  u.connect_timeout = 2s;
  return u;
}

std::unique_ptr<fake::server> failing_upstream(const std::string& knob, const std::string& value) {
  fake::options o;
  o.default_headers = {{knob, value}};
  return std::make_unique<fake::server>(o);
}

// A loopback port nothing listens on (bound, then closed).
}  // namespace

TEST_CASE("failover: a 503 from the first upstream is retried on the next, the ledger names who served",
          "[failover]") {
  auto bad = failing_upstream("x-fake-status", "503");
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.upstreams = {node("primary", bad->base_url(), 1), node("backup", c.upstream.url, 0)};
  }});
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body());
  REQUIRE(r.status == 200);
  CHECK(bad->request_count() == 1);
  CHECK(h.upstream->request_count() == 1);
  // Each upstream got its own key, never another's.
  CHECK(bad->requests()[0].header("authorization") == "Bearer key-primary");
  CHECK(h.upstream->requests()[0].header("authorization") == "Bearer key-backup");
  h.flush();
  auto rows = h.rows("SELECT upstream, attempts, status FROM calls");
  REQUIRE(rows.size() == 1);
  CHECK(rows[0]["upstream"] == "backup");
  CHECK(rows[0]["attempts"] == "2");
  CHECK(rows[0]["status"] == "200");
  CHECK(h.metric_sum("tollgate_upstream_retries_total") == 1);
}

TEST_CASE("failover: connection refused moves on to the next upstream", "[failover]") {
  const tt::refused_port dead;
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.upstreams = {node("dead", "http://127.0.0.1:" + std::to_string(dead.port()) + "/v1", 1),
                   node("live", c.upstream.url, 0)};
  }});
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true));
  REQUIRE(r.status == 200);
  CHECK(r.body.find("[DONE]") != std::string::npos);
  h.flush();
  CHECK(h.query_text("SELECT upstream FROM calls") == "live");
  CHECK(h.query_int("SELECT attempts FROM calls") == 2);
}

TEST_CASE("failover: never after a streamed byte (no double billing)", "[failover]") {
  auto cutting = failing_upstream("x-fake-fault", "cut-stream");
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.upstreams = {node("first", cutting->base_url(), 1), node("second", c.upstream.url, 0)};
  }});
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true),
                      {{"Content-Type", "application/json"}, {"x-fake-chunks", "5"}});
  CHECK(s.status() == 200);
  CHECK(s.read_all().find("[DONE]") == std::string::npos);  // truncated, not completed elsewhere
  CHECK(h.upstream->request_count() == 0);
  h.flush();
  auto rows = h.rows("SELECT upstream, attempts, aborted FROM calls");
  REQUIRE(rows.size() == 1);
  CHECK(rows[0]["upstream"] == "first");
  CHECK(rows[0]["attempts"] == "1");
  CHECK(rows[0]["aborted"] == "1");
}

TEST_CASE("failover: the last upstream's 429 reaches the client unchanged, 429 never opens a breaker",
          "[failover][breaker]") {
  auto limited = failing_upstream("x-fake-status", "429");
  tt::harness h({.tweak = [&](tollgate::config& c) {
    auto only = node("limited", limited->base_url());
    only.breaker_failures = 1;
    c.upstreams = {only};
  }});
  for (int i = 0; i < 3; ++i) {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body());
    CHECK(r.status == 429);
    CHECK(r.header("retry-after") == "1");
  }
  CHECK(limited->request_count() == 3);
  CHECK(h.metric_sum("tollgate_circuit_state", "upstream=\"limited\"") == 0);
  CHECK(h.metric_sum("tollgate_upstream_up", "upstream=\"limited\"") == 1);
}

TEST_CASE("breaker: opens after N consecutive 5xx, calls skip the open upstream", "[breaker]") {
  auto bad = failing_upstream("x-fake-status", "500");
  tt::harness h({.tweak = [&](tollgate::config& c) {
    auto primary = node("primary", bad->base_url(), 1);
    primary.breaker_failures = 2;
    primary.breaker_open_for = 1h;
    c.upstreams = {primary, node("backup", c.upstream.url, 0)};
  }});
  for (int i = 0; i < 4; ++i) CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body()).status == 200);
  CHECK(bad->request_count() == 2);  // then the breaker opened
  CHECK(h.upstream->request_count() == 4);
  CHECK(h.metric_sum("tollgate_circuit_state", "upstream=\"primary\"") == 1);
  CHECK(h.metric_sum("tollgate_upstream_up", "upstream=\"primary\"") == 0);
  CHECK(h.metric_sum("tollgate_upstream_up", "upstream=\"backup\"") == 1);
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE attempts = 2") == 2);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE attempts = 1 AND upstream = 'backup'") == 2);
}

TEST_CASE("breaker: never refuses a call no other upstream could serve", "[breaker]") {
  auto bad = failing_upstream("x-fake-status", "502");
  tt::harness h({.tweak = [&](tollgate::config& c) {
    auto only = node("only", bad->base_url());
    only.breaker_failures = 1;
    only.breaker_open_for = 1h;
    c.upstreams = {only};
  }});
  for (int i = 0; i < 3; ++i) CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body()).status == 502);
  CHECK(bad->request_count() == 3);
  CHECK(h.metric_sum("tollgate_circuit_state", "upstream=\"only\"") == 1);
}

TEST_CASE("routing: model globs pick upstreams, rewrite the model, and respect the protocol", "[routing]") {
  auto claude = std::make_unique<fake::server>(fake::options{});
  tt::harness h({.tweak = [&](tollgate::config& c) {
    auto anth = node("anthropic", claude->base_url());
    anth.protocol = tollgate::upstream_protocol::anthropic;
    c.upstreams = {node("relay", c.upstream.url), anth};
    c.routes = {{"claude-*", {"anthropic"}, ""}, {"cheap", {"relay"}, "gpt-4.1-mini"}};
  }});
  SECTION("a claude model goes to the anthropic upstream with x-api-key and anthropic-version") {
    auto r = tt::post_json(h.port(), "/v1/messages",
                           R"({"model":"claude-sonnet-4.5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]})",
                           {{"x-api-key", "client-secret"}, {"anthropic-version", "2023-06-01"}});
    REQUIRE(r.status == 200);
    REQUIRE(claude->request_count() == 1);
    auto got = claude->requests()[0];
    CHECK(got.header("x-api-key") == "key-anthropic");
    CHECK(got.header("authorization").empty());
    CHECK(got.header("anthropic-version") == "2023-06-01");
    CHECK(h.upstream->request_count() == 0);
  }
  SECTION("a Bearer-style Anthropic client is converted to the anthropic upstream's x-api-key") {
    auto r = tt::post_json(h.port(), "/v1/messages",
                           R"({"model":"claude-sonnet-4.5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]})",
                           {{"Authorization", "Bearer client-secret"}});
    REQUIRE(r.status == 200);
    auto got = claude->requests()[0];
    CHECK(got.header("x-api-key") == "key-anthropic");
    CHECK(got.header("authorization").empty());
    CHECK(got.header("anthropic-version") == "2023-06-01");  // added: the native API requires it
  }
  SECTION("an Anthropic client's other calls (models.list) go to the anthropic upstream, an OpenAI client's to the relay") {
    auto r = tt::request(h.port(), "GET", "/v1/models?limit=20", {},
                         {{"x-api-key", "client-secret"}, {"anthropic-version", "2023-06-01"}});
    CHECK(r.status == 200);
    REQUIRE(claude->request_count() == 1);
    auto got = claude->requests()[0];
    CHECK(got.target == "/v1/models?limit=20");
    CHECK(got.header("x-api-key") == "key-anthropic");
    CHECK(h.upstream->request_count() == 0);
    CHECK(tt::request(h.port(), "GET", "/v1/models").status == 200);
    CHECK(h.upstream->request_count() == 1);
    CHECK(claude->request_count() == 1);
  }
  SECTION("an OpenAI route is never sent to an anthropic-protocol upstream") {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("claude-sonnet-4.5"));
    CHECK(r.status == 404);
    CHECK(r.body.find("model_not_found") != std::string::npos);
    CHECK(claude->request_count() == 0);
    h.flush();
    CHECK(h.query_int("SELECT status FROM calls") == 404);  // refused calls are ledgered too
  }
  SECTION("a rewrite rule changes the model sent upstream; the ledger keeps what the client asked") {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("cheap"));
    REQUIRE(r.status == 200);
    REQUIRE(h.upstream->request_count() == 1);
    CHECK(h.upstream->requests()[0].body.find(R"("model":"gpt-4.1-mini")") != std::string::npos);
    h.flush();
    CHECK(h.query_text("SELECT requested_model FROM calls") == "cheap");
    CHECK(h.query_text("SELECT price_model FROM calls") == "gpt-4.1-mini");
  }
  SECTION("models without a rule may go to any upstream that fits the API") {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"));
    CHECK(r.status == 200);
    CHECK(h.upstream->request_count() == 1);
  }
}

TEST_CASE("routing: weights balance calls between upstreams serving the same model", "[routing]") {
  auto second = std::make_unique<fake::server>(fake::options{});
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.upstreams = {node("a", c.upstream.url, 3), node("b", second->base_url(), 1)};
  }});
  for (int i = 0; i < 80; ++i) REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body()).status == 200);
  auto a = h.upstream->request_count(), b = second->request_count();
  CHECK(a + b == 80);
  CHECK(a > 40);  // expected 60; a 3:1 split lands far from 40:40
  CHECK(b > 5);
}

TEST_CASE("failover: time spent on the failed upstream is upstream time, not tollgate's overhead", "[failover][metrics]") {
  fake::options o;
  o.default_headers = {{"x-fake-status", "503"}, {"x-fake-delay-ms", "300"}};
  auto slow_fail = std::make_unique<fake::server>(o);
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.upstreams = {node("primary", slow_fail->base_url(), 1), node("backup", c.upstream.url, 0)};
  }});
  REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body()).status == 200);
  REQUIRE(slow_fail->request_count() == 1);
  // The one call's overhead lies in a bucket at or below 0.1 s, though the call took over 0.3 s.
  CHECK(h.metric_sum("tollgate_overhead_seconds_bucket", "le=\"0.1\"") == 1);
  CHECK(h.metric_sum("tollgate_request_duration_seconds_sum") >= 0.3);
}

TEST_CASE("routing: pass-through calls follow the rules of the model they name, rewrite included", "[routing]") {
  auto claude = std::make_unique<fake::server>(fake::options{});
  tt::harness h({.tweak = [&](tollgate::config& c) {
    // Two OpenAI-protocol relays (as a HolySheep-style relay serves Claude's native API too).
    c.upstreams = {node("relay", c.upstream.url), node("claude-relay", claude->base_url())};
    c.routes = {{"claude-*", {"claude-relay"}, ""},
                {"sonnet", {"claude-relay"}, "claude-sonnet-4-5"},
                {"*", {"relay"}, ""}};
  }});
  const tt::headers anthropic = {{"x-api-key", "client-secret"}, {"anthropic-version", "2023-06-01"}};
  SECTION("count_tokens for a claude model goes where claude calls go") {
    for (int i = 0; i < 6; ++i) {
      auto r = tt::post_json(h.port(), "/v1/messages/count_tokens",
                             R"({"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]})", anthropic);
      REQUIRE(r.status == 200);
      CHECK(r.body.find("input_tokens") != std::string::npos);
    }
    CHECK(claude->request_count() == 6);
    CHECK(h.upstream->request_count() == 0);
  }
  SECTION("an alias in a pass-through JSON body is rewritten as on the metered routes") {
    auto r = tt::post_json(h.port(), "/v1/messages/count_tokens",
                           R"({"model":"sonnet","messages":[{"role":"user","content":"hi"}]})", anthropic);
    REQUIRE(r.status == 200);
    REQUIRE(claude->request_count() == 1);
    CHECK(claude->requests()[0].body ==
          R"({"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]})");
  }
  SECTION("GET /v1/models/{id} is routed by the id, percent-encoded ids too") {
    CHECK(tt::request(h.port(), "GET", "/v1/models/claude-sonnet-4.5").status == 200);
    CHECK(claude->request_count() == 1);
    CHECK(h.upstream->request_count() == 0);
    CHECK(tt::request(h.port(), "GET", "/v1/models/gpt-4.1").status == 200);
    CHECK(tt::request(h.port(), "GET", "/v1/models/openai%2Fgpt-4.1").status != 0);
    CHECK(h.upstream->request_count() == 2);
    CHECK(claude->request_count() == 1);
  }
  SECTION("a pass-through call without a model takes the catch-all rule") {
    CHECK(tt::request(h.port(), "GET", "/v1/files").status == 200);
    CHECK(h.upstream->request_count() == 1);
    CHECK(claude->request_count() == 0);
  }
  SECTION("a Realtime handshake's ?model= takes the rule's model") {
    auto r = tt::request(h.port(), "GET", "/v1/realtime?model=sonnet&x=1", {},
                         {{"Connection", "Upgrade"}, {"Upgrade", "websocket"}, {"Sec-WebSocket-Version", "13"},
                          {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}});
    REQUIRE(claude->request_count() == 1);
    CHECK(claude->requests()[0].target == "/v1/realtime?model=claude-sonnet-4-5&x=1");
    CHECK(h.upstream->request_count() == 0);
  }
  SECTION("a metered pass-through with a rewritten model is priced by the model sent") {
    auto r = tt::post_json(h.port(), "/v1/images/generations", R"({"model":"sonnet","prompt":"a cat"})");
    REQUIRE(r.status == 200);
    REQUIRE(claude->request_count() == 1);
    CHECK(claude->requests()[0].body == R"({"model":"claude-sonnet-4-5","prompt":"a cat"})");
    h.flush();
    CHECK(h.query_text("SELECT requested_model FROM calls") == "sonnet");
    CHECK(h.query_text("SELECT price_model FROM calls") == "claude-sonnet-4.5");
    CHECK(h.query_double("SELECT cost_usd FROM calls") > 0);
  }
}
