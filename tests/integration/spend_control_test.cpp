// Spend controls end to end (issue 4): client keys, hard budgets under concurrency, rate-limit
// headers, the spend guard's reroute, webhook alerts against a local receiver, the admin API and
// the budget gauges; real sockets, a real ledger and the fake upstream.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/policy.hpp"
#include "core/request_id.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

tollgate::client_key_config key(const std::string& name, const std::string& secret, const std::string& team = {}) {
  tollgate::client_key_config k;
  k.name = name;
  k.sha256 = tollgate::policy_engine::sha256(secret);
  k.team = team;
  return k;
}

tt::headers bearer(const std::string& secret) { return {{"Authorization", "Bearer " + secret}}; }

}  // namespace

TEST_CASE("keys: auth required, the key is attributed, hashed, and never forwarded", "[keys]") {
  tt::harness h({.tweak = [](tollgate::config& c) {
    c.policy.auth = tollgate::auth_mode::required;
    c.policy.keys = {key("app-prod", "sk-client-secret-1", "web")};
  }});
  SECTION("no key: 401 with an OpenAI-style error") {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body());
    CHECK(r.status == 401);
    auto j = json::parse(r.body);
    CHECK(j["error"]["code"] == "invalid_api_key");
    CHECK(h.upstream->request_count() == 0);
  }
  SECTION("a wrong key: 401") {
    CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer("sk-wrong-secret")).status == 401);
  }
  SECTION("the right key: relayed with the upstream's key; ledger names the key and team") {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer("sk-client-secret-1"));
    REQUIRE(r.status == 200);
    auto got = h.upstream->requests()[0];
    CHECK(got.header("authorization") == "Bearer test-upstream-key");
    for (const auto& [name, value] : got.headers) CHECK(value.find("sk-client-secret-1") == std::string::npos);
    h.flush();
    auto rows = h.rows("SELECT client_key_id, team FROM calls");
    REQUIRE(rows.size() == 1);
    CHECK(rows[0]["client_key_id"] == "app-prod");
    CHECK(rows[0]["team"] == "web");
  }
  SECTION("Anthropic SDKs send the key as x-api-key") {
    auto r = tt::post_json(h.port(), "/v1/messages",
                           R"({"model":"claude-sonnet-4.5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]})",
                           {{"x-api-key", "sk-client-secret-1"}, {"anthropic-version", "2023-06-01"}});
    CHECK(r.status == 200);
    CHECK(h.upstream->requests()[0].header("x-api-key") == "test-upstream-key");
  }
  SECTION("on the Messages API tollgate's own errors take Anthropic's shape") {
    auto r = tt::post_json(h.port(), "/v1/messages",
                           R"({"model":"claude-sonnet-4.5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]})",
                           {{"x-api-key", "sk-not-a-key"}, {"anthropic-version", "2023-06-01"}});
    CHECK(r.status == 401);
    auto j = json::parse(r.body);
    CHECK(j["type"] == "error");
    CHECK(j["error"]["type"] == "authentication_error");
    CHECK_FALSE(j["error"]["message"].get<std::string>().empty());
    // The call's id where Anthropic puts its own: a body member and the request-id header,
    // which the SDKs read into APIError.requestID.
    CHECK(j["request_id"] == r.header("x-request-id"));
    CHECK(r.header("request-id") == r.header("x-request-id"));
    CHECK(r.header("x-request-id").rfind("tg-", 0) == 0);
  }
  SECTION("the OpenAI shape has no request_id member") {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{"Authorization", "Bearer sk-not-a-key"}});
    CHECK(r.status == 401);
    CHECK_FALSE(json::parse(r.body).contains("request_id"));
    CHECK_FALSE(r.has_header("request-id"));
  }
}

TEST_CASE("budgets: 200 concurrent calls against a nearly spent hard budget overshoot by at most one reservation",
          "[budgets]") {
  constexpr double limit = 0.002;
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.policy.budgets = {tt::hard_daily_budget(limit)};
  }});
  // One reservation: the prompt estimate plus max_tokens at gpt-4.1's prices ($2 in, $8 out).
  const std::string body = tt::chat_body("gpt-4.1", false, R"(,"max_tokens":100)");
  std::atomic<int> ok{0}, refused{0}, other{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 200; ++i)
    threads.emplace_back([&] {
      auto r = tt::post_json(h.port(), "/v1/chat/completions", body);
      if (r.status == 200)
        ++ok;
      // x-should-retry: false, or the SDKs would send a refused call twice more.
      else if (r.status == 429 && r.body.find("budget_exceeded") != std::string::npos && r.header("x-should-retry") == "false")
        ++refused;
      else
        ++other;
    });
  for (auto& t : threads) t.join();
  CHECK(other == 0);
  CHECK(ok > 0);
  CHECK(refused > 0);
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 200);
  const double spent = h.query_double("SELECT SUM(cost_usd) FROM calls");
  const double one_reservation = (20 * 2.0 + 100 * 8.0) / 1e6;  // a generous bound on one call's reservation
  CHECK(spent <= limit + one_reservation);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE status = 429 AND error_kind = 'budget_exceeded'") == refused);
  CHECK(h.metric_sum("tollgate_budget_rejections_total", "scope=\"global\"") == refused);
  CHECK(h.metric_sum("tollgate_budget_limit_usd", "scope=\"global\"") == limit);
  CHECK(h.metric_sum("tollgate_budget_spent_usd", "scope=\"global\"") == Approx(spent).epsilon(1e-9));
}

namespace {

// A PNG-looking file of n bytes, base64-encoded (what the SDKs put in a data: URL or `source.data`).
std::string png_base64(std::size_t n) {
  std::string bytes = "\x89PNG\r\n\x1a\n";
  while (bytes.size() < n) bytes += static_cast<char>((bytes.size() * 7919) & 0xff);
  return fake::base64(bytes);
}

}  // namespace

TEST_CASE("budgets and rate limits: an image sent inline is reserved as an image, not as its base64 text",
          "[budgets][ratelimit]") {
  // A 1 MB image is ~1.4 MB of base64. Read as text it was ~350,000 prompt tokens: $1.05 reserved
  // at Claude Sonnet's $3/MTok, so a $0.05 hard budget refused every image call, and a 100k TPM
  // key was drained by one. Counted as an image (2,500 tokens), both admit it.
  tt::harness h({.tweak = [](tollgate::config& c) {
    c.policy.auth = tollgate::auth_mode::required;
    auto k = key("vision", "sk-vision-secret-1");
    k.limits.tpm = 100000;
    c.policy.keys = {k};
    c.policy.budgets = {tt::hard_daily_budget(0.05)};
  }});
  const std::string image = png_base64(1'000'000);
  tt::headers anthropic = bearer("sk-vision-secret-1");
  anthropic.emplace_back("anthropic-version", "2023-06-01");
  auto r = tt::post_json(h.port(), "/v1/messages",
                         R"({"model":"claude-sonnet-4.5","max_tokens":16,"messages":[{"role":"user","content":[)"
                         R"({"type":"image","source":{"type":"base64","media_type":"image/png","data":")" + image +
                             R"("}},{"type":"text","text":"What is in this image?"}]}]})",
                         anthropic);
  CHECK(r.status == 200);
  // Charged at admission: the image's 2,500 tokens, a few of text and max_tokens, not 350,000.
  const long remaining = std::stol(r.header("x-ratelimit-remaining-tokens"));
  CHECK(remaining >= 100000 - 2500 - 100);
  CHECK(remaining < 100000 - 2500);

  SECTION("OpenAI's data: URL, and a stream cut short is ledgered with the estimate") {
    tt::stream_client s(h.port(), "/v1/chat/completions",
                        R"({"model":"gpt-4.1","stream":true,"max_tokens":16,"messages":[{"role":"user","content":[)"
                        R"({"type":"text","text":"Describe it."},{"type":"image_url","image_url":{"url":"data:image/png;base64,)" +
                            image + R"("}}]}]})",
                        {{"Authorization", "Bearer sk-vision-secret-1"}, {"x-fake-fault", "reset-mid-stream"}});
    CHECK(s.status() == 200);
    s.read_all();
    h.flush();
    auto rows = h.rows("SELECT prompt_tokens, usage_source FROM calls WHERE route = 'chat_completions'");
    REQUIRE(rows.size() == 1);
    CHECK(rows[0]["usage_source"] == "estimated");
    const long prompt = std::stol(rows[0]["prompt_tokens"]);
    CHECK(prompt >= 2500);
    CHECK(prompt < 2600);
  }
}

TEST_CASE("rate limits: RPM per key with OpenAI's headers and Retry-After", "[ratelimit]") {
  tt::harness h({.tweak = [](tollgate::config& c) {
    c.policy.auth = tollgate::auth_mode::required;
    auto k = key("batch", "sk-batch-secret-1");
    k.limits.rpm = 2;
    k.limits.tpm = 100000;
    c.policy.keys = {k};
  }});
  auto r1 = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer("sk-batch-secret-1"));
  REQUIRE(r1.status == 200);
  CHECK(r1.header("x-ratelimit-limit-requests") == "2");
  CHECK(r1.header("x-ratelimit-remaining-requests") == "1");
  CHECK_FALSE(r1.header("x-ratelimit-reset-requests").empty());
  CHECK(r1.header("x-ratelimit-limit-tokens") == "100000");
  CHECK_FALSE(r1.header("x-ratelimit-remaining-tokens").empty());
  CHECK_FALSE(r1.header("x-ratelimit-reset-tokens").empty());
  CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer("sk-batch-secret-1")).status == 200);
  auto r3 = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer("sk-batch-secret-1"));
  CHECK(r3.status == 429);
  CHECK(std::stoi(r3.header("retry-after")) >= 1);
  CHECK(r3.header("x-ratelimit-remaining-requests") == "0");
  CHECK(json::parse(r3.body)["error"]["code"] == "rate_limit_exceeded");
  CHECK(r3.header("x-should-retry").empty());  // a rate limit passes: the SDK's retry (after Retry-After) is right
  CHECK(h.upstream->request_count() == 2);
  CHECK(h.metric_sum("tollgate_rate_limited_total", "kind=\"requests\"") == 1);

  // On one keep-alive connection, a refused call then local answers: the refusal's Retry-After
  // and x-ratelimit-* are its own, never carried into the next answer.
  const std::string raw = tt::raw_exchange(
      h.port(), "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer sk-batch-secret-1\r\n"
                "Content-Type: application/json\r\nContent-Length: " + std::to_string(tt::chat_body().size()) +
                "\r\n\r\n" + tt::chat_body() +
                "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /nothing-here HTTP/1.1\r\nHost: a\r\n\r\n"
                "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  auto count = [&raw](std::string_view needle) {
    std::size_t n = 0;
    for (auto at = raw.find(needle); at != std::string::npos; at = raw.find(needle, at + 1)) ++n;
    return n;
  };
  REQUIRE(count("HTTP/1.1 ") == 4);
  CHECK(raw.starts_with("HTTP/1.1 429 "));
  CHECK(count("HTTP/1.1 404 ") == 1);
  CHECK(count("retry-after: ") + count("Retry-After: ") == 1);
  CHECK(count("x-ratelimit-limit-requests: ") == 1);
}

TEST_CASE("rate limits and budgets: embeddings reserve no completion, n multiplies it, a token limit says "
          "'tokens', a model without a price meets a hard budget with a clear refusal", "[ratelimit][budgets]") {
  tt::harness h({.tweak = [](tollgate::config& c) {
    c.policy.auth = tollgate::auth_mode::required;
    auto k = key("emb", "sk-emb-secret-1");
    k.limits.tpm = 20000;
    tollgate::budget_config b;
    b.scope = "key:emb";
    b.period = tollgate::calendar_period::day;
    b.limit_usd = 5;
    b.hard = true;
    k.budgets = {b};
    c.policy.keys = {k};
  }});
  // Embeddings produce no completion: before, each reserved reserve_max_tokens (4,096) of TPM.
  auto e = tt::post_json(h.port(), "/v1/embeddings", R"({"model":"text-embedding-3-small","input":"hello world"})",
                         bearer("sk-emb-secret-1"));
  REQUIRE(e.status == 200);
  CHECK(std::stol(e.header("x-ratelimit-remaining-tokens")) >= 20000 - 10);
  // n = 8 choices of up to 2,000 tokens: 16,000 reserved at admission; of 3,000: 24,000, over the limit.
  auto first = tt::post_json(h.port(), "/v1/chat/completions",
                             R"({"model":"gpt-4.1","n":8,"max_tokens":2000,"messages":[{"role":"user","content":"Hi"}]})",
                             bearer("sk-emb-secret-1"));
  REQUIRE(first.status == 200);
  CHECK(std::stol(first.header("x-ratelimit-remaining-tokens")) < 20000 - 16000);
  auto second = tt::post_json(h.port(), "/v1/chat/completions",
                              R"({"model":"gpt-4.1","n":8,"max_tokens":3000,"messages":[{"role":"user","content":"Hi"}]})",
                              bearer("sk-emb-secret-1"));
  REQUIRE(second.status == 429);
  CHECK(json::parse(second.body)["error"]["type"] == "tokens");  // as OpenAI's token-limit 429
  // A model the price table does not know would be ledgered at $0: a hard budget cannot hold it.
  auto unpriced = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("o3-pro-unknown"), bearer("sk-emb-secret-1"));
  CHECK(unpriced.status == 429);
  const auto err = json::parse(unpriced.body)["error"];
  CHECK(err["type"] == "budget_exceeded");
  CHECK(err["message"].get<std::string>().find("has no price") != std::string::npos);
  CHECK(unpriced.header("x-should-retry") == "false");
  CHECK(std::stol(unpriced.header("retry-after")) >= 1);  // when the budget's period ends
}

TEST_CASE("spend guard: a tripped guard reroutes the next call to the fallback model and alerts", "[guard][alerts]") {
  tt::webhook_receiver hook;
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.policy.spend_guards = {tt::reroute_guard()};  // one gpt-4.1 call trips it
    c.policy.webhooks = tt::webhook_to(hook.url());
  }});
  REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1")).status == 200);
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"));
  REQUIRE(r.status == 200);
  REQUIRE(h.upstream->request_count() == 2);
  CHECK(h.upstream->requests()[1].body.find(R"("model":"deepseek-v3.2")") != std::string::npos);
  h.flush();
  auto rows = h.rows("SELECT requested_model, served_model, price_model FROM calls ORDER BY id");
  REQUIRE(rows.size() == 2);
  CHECK(rows[1]["requested_model"] == "gpt-4.1");
  CHECK(rows[1]["served_model"] == "deepseek-v3.2");
  CHECK(rows[1]["price_model"] == "deepseek-v3.2");
  CHECK(h.metric_sum("tollgate_spend_guard_tripped", "scope=\"global\"") == 1);
  CHECK(h.metric_sum("tollgate_spend_guard_actions_total", "action=\"reroute\"") == 1);
  // The trip alert leaves within seconds (the alert thread runs every second).
  REQUIRE(tt::harness::eventually([&] { return !hook.received().empty(); }, 15s));
  auto a = hook.received()[0];
  CHECK(a["kind"] == "spend_guard");
  CHECK(a["scope"] == "global");
  CHECK(a.contains("limit_usd"));
  CHECK(a.contains("spent_usd"));
}

TEST_CASE("alerts: a soft threshold alerts once per period (deduplicated)", "[alerts]") {
  tt::webhook_receiver hook;
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.policy.budgets = {tt::soft_monthly_budget()};
    tollgate::webhook_config w;
    w.url = hook.url();
    w.format = tollgate::webhook_format::slack;
    c.policy.webhooks = {w};
  }});
  for (int i = 0; i < 3; ++i) REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body()).status == 200);
  // Only the soft threshold's alerts count here: the three calls spend 2.9x the limit, so if the
  // forecaster refreshes during the test (a minute boundary) a projected_overspend alert is
  // right to leave too.
  auto soft = [&] {
    std::vector<json> out;
    for (auto& a : hook.received())
      if (a["kind"] == "soft_threshold") out.push_back(a);
    return out;
  };
  REQUIRE(tt::harness::eventually([&] { return !soft().empty(); }, 15s));
  std::this_thread::sleep_for(1500ms);  // a second alert, if any, would have left by now
  auto got = soft();
  REQUIRE(got.size() == 1);
  CHECK(got[0]["kind"] == "soft_threshold");
  CHECK(got[0]["period"] == "month");
  CHECK(got[0]["text"].get<std::string>().find("soft_threshold") != std::string::npos);
}

TEST_CASE("admin API: token required, spend equals the ledger, keys created at run time work at once",
          "[admin]") {
  tt::harness h({.tweak = [](tollgate::config& c) {
    c.policy.admin_token = "admin-secret";
    c.policy.auth = tollgate::auth_mode::optional;
  }});
  const tt::headers admin = {{"Authorization", "Bearer admin-secret"}};
  SECTION("missing or wrong token: 401 JSON; /metrics and health need none") {
    CHECK(tt::request(h.admin_port(), "GET", "/admin/spend").status == 401);
    CHECK(tt::request(h.admin_port(), "GET", "/admin/spend", {}, {{"Authorization", "Bearer nope"}}).status == 401);
    CHECK(tt::request(h.admin_port(), "GET", "/metrics").status == 200);
    CHECK(tt::request(h.admin_port(), "GET", "/healthz").status == 200);
  }
  SECTION("calls: one call's row found by its request id, the newest first, bad parameters a 400") {
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"), {{"x-request-id", "find-me-1"}}).status == 200);
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("deepseek-v3.2"),
                          {{"x-request-id", "find-me-2"}, {"x-fake-provider", "DeepInfra"}}).status == 200);
    h.flush();
    auto r = tt::request(h.admin_port(), "GET", "/admin/calls?request_id=find-me-2", {}, admin);
    REQUIRE(r.status == 200);
    CHECK(r.header("content-type").find("application/json") == 0);
    auto j = json::parse(r.body);
    REQUIRE(j["calls"].size() == 1);
    const auto& row = j["calls"][0];
    CHECK(row["requested_model"] == "deepseek-v3.2");
    CHECK(row["provider"] == "DeepInfra");
    CHECK(row["cost_usd"].get<double>() == h.query_double("SELECT cost_usd FROM calls WHERE request_id = 'find-me-2'"));
    CHECK(row["prompt_tokens"] == h.query_int("SELECT prompt_tokens FROM calls WHERE request_id = 'find-me-2'"));
    CHECK(j["next_before"].is_null());
    // By the upstream's id, as a provider's support ticket names the call.
    const std::string upstream_id = row["upstream_request_id"].get<std::string>();
    REQUIRE(!upstream_id.empty());
    j = json::parse(tt::request(h.admin_port(), "GET", "/admin/calls?upstream_request_id=" + upstream_id, {}, admin).body);
    REQUIRE(j["calls"].size() == 1);
    CHECK(j["calls"][0]["request_id"] == "find-me-2");
    // The newest call first, one a page, the next page after it.
    j = json::parse(tt::request(h.admin_port(), "GET", "/admin/calls?limit=1", {}, admin).body);
    REQUIRE(j["calls"].size() == 1);
    CHECK(j["calls"][0]["request_id"] == "find-me-2");
    REQUIRE(j["next_before"].is_string());
    const std::string cursor = j["next_before"].get<std::string>();
    j = json::parse(tt::request(h.admin_port(), "GET", "/admin/calls?limit=1&before=" + cursor, {}, admin).body);
    CHECK(j["calls"][0]["request_id"] == "find-me-1");
    // The same page as CSV, its cursor in x-next-before (the JSON page sends it there too).
    r = tt::request(h.admin_port(), "GET", "/admin/calls?limit=1&format=csv", {}, admin);
    REQUIRE(r.status == 200);
    CHECK(r.header("content-type").find("text/csv") == 0);
    CHECK(r.header("x-next-before") == cursor);
    CHECK(tt::request(h.admin_port(), "GET", "/admin/calls?limit=1", {}, admin).header("x-next-before") == cursor);
    REQUIRE(std::count(r.body.begin(), r.body.end(), '\n') == 2);
    const std::string head = r.body.substr(0, r.body.find('\n'));
    const std::string line = r.body.substr(head.size() + 1);
    CHECK(head.starts_with("id,request_id,start_ms,route,"));
    CHECK(head.ends_with(",provider,start"));
    CHECK(std::count(head.begin(), head.end(), ',') == std::count(line.begin(), line.end(), ','));
    CHECK(line.find(",find-me-2,") != std::string::npos);
    CHECK(line.find(",DeepInfra,") != std::string::npos);
    CHECK(tt::request(h.admin_port(), "GET", "/admin/calls?limit=1&before=" + cursor + "&format=csv", {}, admin).header("x-next-before").empty());
    // Ranges of cost and latency: the gpt-4.1 call costs more than the deepseek one.
    const double cost1 = h.query_double("SELECT cost_usd FROM calls WHERE request_id = 'find-me-1'");
    const double cost2 = h.query_double("SELECT cost_usd FROM calls WHERE request_id = 'find-me-2'");
    REQUIRE(cost1 > cost2);
    j = json::parse(tt::request(h.admin_port(), "GET", "/admin/calls?min_cost_usd=" + std::to_string(cost2 * 1.5), {}, admin).body);
    REQUIRE(j["calls"].size() == 1);
    CHECK(j["calls"][0]["request_id"] == "find-me-1");
    j = json::parse(tt::request(h.admin_port(), "GET", "/admin/calls?max_cost_usd=" + std::to_string(cost2 * 1.5) + "&min_latency_ms=0", {}, admin).body);
    REQUIRE(j["calls"].size() == 1);
    CHECK(j["calls"][0]["request_id"] == "find-me-2");
    CHECK(json::parse(tt::request(h.admin_port(), "GET", "/admin/calls?min_latency_ms=3600000", {}, admin).body)["calls"].empty());
    for (const char* bad : {"/admin/calls?limit=0", "/admin/calls?limit=5000", "/admin/calls?status=abc", "/admin/calls?before=xyz",
                            "/admin/calls?request-id=find-me-1", "/admin/calls?from=2026-13-01", "/admin/calls?format=xml",
                            "/admin/calls?min_cost_usd=-1", "/admin/calls?max_latency_ms=abc", "/admin/calls?min_cost_usd=inf"}) {
      INFO(bad);
      r = tt::request(h.admin_port(), "GET", bad, {}, admin);
      CHECK(r.status == 400);
      CHECK(json::parse(r.body)["error"]["code"] == "invalid_parameter");
    }
    CHECK(tt::request(h.admin_port(), "GET", "/admin/calls").status == 401);
    CHECK(tt::request(h.admin_port(), "POST", "/admin/calls", "{}", admin).status == 405);
    // A call without an id of its own gets tollgate's, which carries its start: found by it.
    const auto own = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"));
    REQUIRE(own.status == 200);
    const std::string generated = own.header("x-request-id");
    REQUIRE(tollgate::request_id_time(generated));
    h.flush();
    CHECK(tollgate::request_id_time(generated)->ms ==
          h.query_int("SELECT start_ms FROM calls WHERE request_id = '" + generated + "'"));
    j = json::parse(tt::request(h.admin_port(), "GET", "/admin/calls?request_id=" + generated, {}, admin).body);
    REQUIRE(j["calls"].size() == 1);
    CHECK(j["calls"][0]["request_id"] == generated);
    CHECK(j["calls"][0]["requested_model"] == "gpt-4.1");
  }
  SECTION("spend grouped by model: totals are the ledger's sums; CSV too") {
    for (auto m : {"gpt-4.1", "gpt-4.1", "deepseek-v3.2"})
      REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(m)).status == 200);
    h.flush();
    auto r = tt::request(h.admin_port(), "GET", "/admin/spend?group_by=model&from=2020-01-01", {}, admin);
    REQUIRE(r.status == 200);
    auto j = json::parse(r.body);
    CHECK(j["total"]["requests"] == 3);
    CHECK(j["total"]["cost_usd"].get<double>() == h.query_double("SELECT SUM(cost_usd) FROM calls"));
    CHECK(j["rows"].size() == 2);
    auto csv = tt::request(h.admin_port(), "GET", "/admin/spend?group_by=model&format=csv", {}, admin);
    CHECK(csv.status == 200);
    CHECK(csv.header("content-type").find("text/csv") == 0);
    auto bad = tt::request(h.admin_port(), "GET", "/admin/spend?from=yesterday", {}, admin);
    CHECK(bad.status == 400);
    // scope=local is the default; the fleet ledger's scope and columns need ledger.postgres.
    CHECK(tt::request(h.admin_port(), "GET", "/admin/spend?group_by=model&from=2020-01-01&scope=local", {}, admin).body == r.body);
    const std::vector<std::pair<std::string, std::string>> refused = {
        {"/admin/spend?scope=fleet", "fleet_ledger_not_configured"},
        {"/admin/whatif?model=deepseek-v3.2&scope=fleet", "fleet_ledger_not_configured"},
        {"/admin/calls?scope=fleet&team=red", "fleet_ledger_not_configured"},
        {"/admin/calls?instance=edge-1", "instance applies to scope=fleet only"},
        {"/admin/spend?scope=everywhere", "scope must be local or fleet"},
        {"/admin/spend?instance=edge-1", "instance applies to scope=fleet only"},
        {"/admin/spend?group_by=instance", "'instance' is a column of the fleet ledger"}};
    for (const auto& [target, why] : refused) {
      INFO(target);
      const auto no = tt::request(h.admin_port(), "GET", target, {}, admin);
      CHECK(no.status == 400);
      CHECK(no.body.find(why) != std::string::npos);
    }
  }
  SECTION("whatif re-prices the period's tokens at another model") {
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("claude-sonnet-4.5")).status == 200);
    h.flush();
    auto r = tt::request(h.admin_port(), "GET", "/admin/whatif?model=deepseek-v3.2", {}, admin);
    REQUIRE(r.status == 200);
    auto j = json::parse(r.body);
    CHECK(j["model"] == "deepseek-v3.2");
    CHECK(tt::request(h.admin_port(), "GET", "/admin/whatif?model=no-such-model", {}, admin).status == 400);
  }
  SECTION("POST /admin/whatif swaps some models and changes prices; unchanged models keep list prices") {
    tt::headers hs = admin;
    hs.emplace_back("Content-Type", "application/json");
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("claude-sonnet-4.5")).status == 200);
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1")).status == 200);
    h.flush();
    const auto tokens = [&](const char* model, const char* column) {
      return h.query_double(std::string("SELECT SUM(") + column + ") FROM calls WHERE price_model = '" + model + "'");
    };
    const double sonnet_in = tokens("claude-sonnet-4.5", "prompt_tokens"), sonnet_out = tokens("claude-sonnet-4.5", "completion_tokens");
    const double gpt_in = tokens("gpt-4.1", "prompt_tokens"), gpt_out = tokens("gpt-4.1", "completion_tokens");
    REQUIRE(sonnet_out > 0);
    REQUIRE(h.query_double("SELECT SUM(cached_tokens + cache_write_tokens) FROM calls") == 0);
    // Sonnet swapped for DeepSeek (0.28 / 0.42 per 1M in prices.yaml), gpt-4.1's output price cut to 6.
    auto r = tt::request(h.admin_port(), "POST", "/admin/whatif",
                         R"({"swap":{"claude-sonnet-4-5":"deepseek-v3.2"},"prices":{"gpt-4.1":{"output":6}},"from":"2020-01-01"})", hs);
    REQUIRE(r.status == 200);
    auto j = json::parse(r.body);
    CHECK(j["model"].is_null());
    REQUIRE(j["rows"].size() == 2);
    const double deepseek_in = 0.28, deepseek_out = 0.42;  // config/prices.yaml
    for (const auto& row : j["rows"]) {
      INFO(row.dump());
      if (row["model"] == "claude-sonnet-4.5") {
        CHECK(row["target"] == "deepseek-v3.2");
        CHECK(row["whatif_cost_usd"].get<double>() ==
              Approx((sonnet_in * deepseek_in + sonnet_out * deepseek_out) / 1e6).epsilon(1e-12));
      } else {
        CHECK(row["target"] == "gpt-4.1");
        CHECK(row["whatif_cost_usd"].get<double>() == Approx((gpt_in * 2.00 + gpt_out * 6.0) / 1e6).epsilon(1e-12));
      }
    }
    CHECK(j["total"]["whatif_cost_usd"].get<double>() ==
          Approx(j["rows"][0]["whatif_cost_usd"].get<double>() + j["rows"][1]["whatif_cost_usd"].get<double>()).epsilon(1e-12));
    for (const auto& [body, says] : std::vector<std::pair<std::string, std::string>>{
             {R"({})", "say what to change"},
             {R"({"swap":{"gpt-4.1":"no-such-model"}})", "'no-such-model' (for 'gpt-4.1') is not in the price table"},
             {R"({"prices":{"new-model":{"output":1}}})", "needs input and output"},
             {R"({"prices":{"gpt-4.1":{"output":-1}}})", "prices.gpt-4.1.output must be a number >= 0"},
             {R"({"prices":{"gpt-4.1":{"outptu":1}}})", "outptu is not a price key"},
             {R"({"model":"gpt-4o","moddel":"x"})", "'moddel' is not a what-if field"},
             {R"([1])", "body must be a JSON object"}}) {
      INFO(body);
      auto bad = tt::request(h.admin_port(), "POST", "/admin/whatif", body, hs);
      CHECK(bad.status == 400);
      CHECK(bad.body.find(says) != std::string::npos);
    }
    // A model the table lacks, priced by the question itself.
    auto added = tt::request(h.admin_port(), "POST", "/admin/whatif",
                             R"({"model":"my-model","prices":{"my-model":{"input":1,"output":2}}})", hs);
    REQUIRE(added.status == 200);
    CHECK(json::parse(added.body)["total"]["whatif_cost_usd"].get<double>() ==
          Approx(((sonnet_in + gpt_in) * 1 + (sonnet_out + gpt_out) * 2) / 1e6).epsilon(1e-12));
  }
  SECTION("POST /admin/keys names the field that is wrong, and refuses fields it does not know") {
    const tt::headers hs = {{"Authorization", "Bearer admin-secret"}, {"Content-Type", "application/json"}};
    for (const auto& [body, says] : std::vector<std::pair<std::string, std::string>>{
             {R"({"name":123})", "name must be a string"},
             {R"({"name":"k","team":["a"]})", "team must be a string"},
             {R"({"name":"k","tags":"a"})", "tags must be a list of strings"},
             {R"({"name":"k","limits":[]})", "limits must be an object"},
             {R"({"name":"k","limits":{"rpm":1.5}})", "limits.rpm must be a whole number"},
             {R"({"name":"k","limits":{"rpm":-1}})", "limits.rpm must be >= 0"},
             {R"({"name":"k","limits":{"tpm":1e30}})", "limits.tpm is too large"},
             {R"({"name":"k","limits":{"rpn":5}})", "limits.rpn is not a limit"},
             {R"({"name":"k","secret":"my-own-secret"})", "'secret' is not a field of a key"},
             {R"({"name":"k","key":"short"})", "key must be at least 8 characters"},
             {R"({"name":"k","key_sha256":"abc"})", "key_sha256 must be 64 hex digits"},
             {R"({"name":"k","budgets":[{"limit_usd":1e400}]})", "body is not valid JSON"}}) {
      INFO(body);
      auto r = tt::request(h.admin_port(), "POST", "/admin/keys", body, hs);
      CHECK(r.status == 400);
      CHECK(r.body.find(says) != std::string::npos);
    }
    h.flush();
    CHECK(h.query_int("SELECT COUNT(*) FROM client_keys") == 0);
  }
  SECTION("POST /admin/keys returns the key once; it authenticates at once; DELETE revokes it") {
    auto created = tt::request(h.admin_port(), "POST", "/admin/keys", R"({"name":"ci","team":"qa","limits":{"rpm":100}})",
                               {{"Authorization", "Bearer admin-secret"}, {"Content-Type", "application/json"}});
    REQUIRE(created.status == 201);
    std::string secret = json::parse(created.body)["key"];
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer(secret));
    CHECK(r.status == 200);
    CHECK(r.header("x-ratelimit-limit-requests") == "100");
    auto list = json::parse(tt::request(h.admin_port(), "GET", "/admin/keys", {}, admin).body);
    CHECK(list["keys"].size() == 1);
    CHECK(list.dump().find(secret) == std::string::npos);
    CHECK(tt::request(h.admin_port(), "DELETE", "/admin/keys/ci", {}, admin).status == 200);
    auto refused = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer(secret));
    CHECK(refused.status == 401);
    CHECK(refused.header("www-authenticate").find("Bearer") == 0);
    h.flush();
    CHECK(h.query_text("SELECT client_key_id FROM calls WHERE status = 200") == "ci");
    // The name of a revoked key may be given to a new key (rotation); the revoked secret stays dead.
    const tt::headers hs = {{"Authorization", "Bearer admin-secret"}, {"Content-Type", "application/json"}};
    auto again = tt::request(h.admin_port(), "POST", "/admin/keys", R"({"name":"ci","team":"qa"})", hs);
    REQUIRE(again.status == 201);
    std::string rotated = json::parse(again.body)["key"];
    CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer(rotated)).status == 200);
    CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer(secret)).status == 401);
    CHECK(tt::request(h.admin_port(), "POST", "/admin/keys", R"({"name":"ci"})", hs).status == 409);  // live again
    auto reuse = tt::request(h.admin_port(), "POST", "/admin/keys", R"({"name":"other","key":")" + secret + R"("})", hs);
    CHECK(reuse.status == 409);
  }
  SECTION("POST /admin/keys takes the caller's own key, or only its SHA-256, as the config file does") {
    const tt::headers hs = {{"Authorization", "Bearer admin-secret"}, {"Content-Type", "application/json"}};
    auto own = tt::request(h.admin_port(), "POST", "/admin/keys", R"({"name":"own","key":"sk-own-key-123456"})", hs);
    REQUIRE(own.status == 201);
    CHECK(json::parse(own.body)["key"] == "sk-own-key-123456");
    CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer("sk-own-key-123456")).status == 200);
    std::string hex;
    for (unsigned char b : tollgate::policy_engine::sha256("sk-hashed-only-key-1")) {
      static const char* digits = "0123456789abcdef";
      hex += digits[b >> 4];
      hex += digits[b & 15];
    }
    auto hashed = tt::request(h.admin_port(), "POST", "/admin/keys", R"({"name":"hashed","key_sha256":")" + hex + "\"}", hs);
    REQUIRE(hashed.status == 201);
    CHECK_FALSE(json::parse(hashed.body).contains("key"));
    CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer("sk-hashed-only-key-1")).status == 200);
    // The same key twice: 409, whoever holds it.
    CHECK(tt::request(h.admin_port(), "POST", "/admin/keys", R"({"name":"again","key":"sk-own-key-123456"})", hs).status ==
          409);
    h.flush();
    CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE client_key_id IN ('own', 'hashed')") == 2);
  }
  SECTION("budgets endpoint lists budgets and guards") {
    auto r = tt::request(h.admin_port(), "GET", "/admin/budgets", {}, admin);
    REQUIRE(r.status == 200);
    auto j = json::parse(r.body);
    CHECK(j.contains("budgets"));
    CHECK(j.contains("spend_guards"));
  }
}

TEST_CASE("budgets: spend of the current period survives a restart (rebuilt from the ledger)", "[budgets]") {
  tt::temp_dir shared;
  auto tweak = [&](tollgate::config& c) {
    c.ledger_path = shared.path + "/ledger.db";
    tollgate::budget_config b;
    b.scope = "model:gpt-4.1";
    b.period = tollgate::calendar_period::month;
    b.limit_usd = 100;
    c.policy.budgets = {b};
  };
  double spent = 0;
  {
    tt::harness h({.tweak = tweak});
    for (int i = 0; i < 3; ++i) REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body()).status == 200);
    h.flush();
    spent = h.query_double("SELECT SUM(cost_usd) FROM calls");
    REQUIRE(spent > 0);
  }
  tt::harness again({.tweak = tweak});
  CHECK(again.metric_sum("tollgate_budget_spent_usd", "scope=\"model:gpt-4.1\"") == Approx(spent).epsilon(1e-12));
}

TEST_CASE("rate limits: a restart is no way around a key's RPM (the last minute is replayed from the ledger)",
          "[ratelimit]") {
  tt::temp_dir shared;
  auto tweak = [&](tollgate::config& c) {
    c.ledger_path = shared.path + "/ledger.db";
    c.policy.auth = tollgate::auth_mode::required;
    auto k = key("batch", "sk-batch-secret-1");
    k.limits.rpm = 2;
    c.policy.keys = {k};
  };
  {
    tt::harness h({.tweak = tweak});
    for (int i = 0; i < 2; ++i)
      REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer("sk-batch-secret-1")).status == 200);
    // Refused calls were never charged: they do not count after the restart either.
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), bearer("sk-batch-secret-1")).status == 429);
    h.flush();
  }
  tt::harness again({.tweak = tweak});
  auto r = tt::post_json(again.port(), "/v1/chat/completions", tt::chat_body(), bearer("sk-batch-secret-1"));
  CHECK(r.status == 429);
  CHECK(r.header("x-ratelimit-remaining-requests") == "0");
  CHECK(std::stoi(r.header("retry-after")) >= 20);  // one request back 30 s after the first call
  CHECK(again.upstream->request_count() == 0);
}

TEST_CASE("budgets: a model scope spelled as clients spell the model counts that model's calls", "[budgets]") {
  auto tweak = [](tollgate::config& c) {
    tollgate::budget_config b;
    b.scope = "model:GPT-4.1-2025-04-14";  // an alias, in another case
    b.period = tollgate::calendar_period::day;
    b.limit_usd = 100;
    c.policy.budgets = {b};
  };
  tt::harness h({.tweak = tweak});
  REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1")).status == 200);
  h.flush();
  const double spent = h.query_double("SELECT SUM(cost_usd) FROM calls");
  REQUIRE(spent > 0);
  CHECK(h.metric_sum("tollgate_budget_spent_usd", "scope=\"model:gpt-4.1\"") == Approx(spent).epsilon(1e-12));
}

TEST_CASE("metrics: budgets and guards sharing a scope share one series, and a revoked key's series go", "[budgets][metrics]") {
  tt::harness h({.tweak = [](tollgate::config& c) {
    c.policy.admin_token = "admin-secret";
    tollgate::budget_config loose, tight;
    loose.scope = tight.scope = "global";
    loose.period = tight.period = tollgate::calendar_period::month;
    loose.limit_usd = 200;
    tight.limit_usd = 100;
    c.policy.budgets = {loose, tight};
    tollgate::spend_guard_config fast, slow;
    fast.scope = slow.scope = "global";
    fast.window = 1min;
    fast.max_usd = 0.00001;  // one gpt-4.1 call trips it
    slow.window = 1h;
    slow.max_usd = 1000;
    c.policy.spend_guards = {fast, slow};
  }});
  REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1")).status == 200);
  h.flush();
  // the binding (smallest) limit, once
  CHECK(h.metric_sum("tollgate_budget_limit_usd", "scope=\"global\"") == 100);
  CHECK(h.eventually([&] { return h.metric_sum("tollgate_spend_guard_tripped", "scope=\"global\"") == 1; }));
  CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1")).status == 429);
  CHECK(h.metric_sum("tollgate_spend_guard_actions_total", "scope=\"global\"") == 1);

  const tt::headers admin = {{"Authorization", "Bearer admin-secret"}, {"Content-Type", "application/json"}};
  auto created = tt::request(h.admin_port(), "POST", "/admin/keys",
                             R"({"name":"temp1","budgets":[{"period":"day","limit_usd":1.5}]})", admin);
  REQUIRE(created.status == 201);
  CHECK(h.metric_sum("tollgate_budget_limit_usd", "scope=\"key:temp1\"") == 1.5);
  REQUIRE(tt::request(h.admin_port(), "DELETE", "/admin/keys/temp1", {}, admin).status == 200);
  CHECK(h.metrics_text().find("key:temp1") == std::string::npos);
  CHECK(h.metric_sum("tollgate_budget_limit_usd", "scope=\"global\"") == 100);
}

TEST_CASE("budgets: a call that asks for fast mode or priority is reserved at those prices", "[budgets]") {
  tt::harness h({.tweak = [](tollgate::config& c) { c.policy.budgets = {tt::hard_daily_budget(1.0)}; }});
  // claude-opus-4-6, 20,000 tokens out at most: $0.50 at standard prices, $3.00 in fast mode (6x).
  const std::string standard =
      R"({"model":"claude-opus-4-6","max_tokens":20000,"messages":[{"role":"user","content":"Hi"}]})";
  const std::string fast =
      R"({"model":"claude-opus-4-6","speed":"fast","max_tokens":20000,"messages":[{"role":"user","content":"Hi"}]})";
  const tt::headers anthropic{{"anthropic-version", "2023-06-01"}};
  CHECK(tt::post_json(h.port(), "/v1/messages", standard, anthropic).status == 200);
  const auto refused = tt::post_json(h.port(), "/v1/messages", fast, anthropic);
  CHECK(refused.status == 429);
  CHECK(json::parse(refused.body)["error"]["code"] == "budget_exceeded");  // Anthropic-shaped: type rate_limit_error
  // gpt-5 priority: $20 per 1M out instead of $10; 60,000 tokens fit the budget only at standard.
  CHECK(tt::post_json(h.port(), "/v1/chat/completions",
                      R"({"model":"gpt-5","max_completion_tokens":60000,"messages":[{"role":"user","content":"Hi"}]})")
            .status == 200);
  CHECK(tt::post_json(h.port(), "/v1/chat/completions",
                      R"({"model":"gpt-5","service_tier":"priority","max_completion_tokens":60000,"messages":[{"role":"user","content":"Hi"}]})")
            .status == 429);
}

TEST_CASE("budgets: a Claude call that asks for prompt caching is reserved at the cache-write price", "[budgets]") {
  tt::harness h({.tweak = [](tollgate::config& c) { c.policy.budgets = {tt::hard_daily_budget(0.20)}; }});
  // ~45,000 prompt tokens (4 bytes each) on claude-sonnet-4-5: $0.135 at $3 input, $0.17 written for 5 minutes
  // ($3.75), $0.27 written for an hour ($6): only the hour's writes leave the $0.20 budget.
  std::string text;
  for (int i = 0; i < 30'000; ++i) text += "hello ";
  auto body = [&](std::string_view cache_control) {
    const std::string block = R"({"type":"text","text":")" + text + R"(","cache_control":)" + std::string(cache_control);
    return R"({"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":[)" + block + "}]}]}";
  };
  const tt::headers anthropic{{"anthropic-version", "2023-06-01"}};
  const auto hour = tt::post_json(h.port(), "/v1/messages", body(R"({"type":"ephemeral","ttl":"1h"})"), anthropic);
  CHECK(hour.status == 429);
  CHECK(json::parse(hour.body)["error"]["code"] == "budget_exceeded");
  // (The call's actual cost, here the fake upstream's usage, then leaves too little for another.)
  CHECK(tt::post_json(h.port(), "/v1/messages", body(R"({"type":"ephemeral"})"), anthropic).status == 200);
}

TEST_CASE("budgets: a call with server-side fallbacks is reserved for every model that may run", "[budgets]") {
  tt::harness h({.tweak = [](tollgate::config& c) { c.policy.budgets = {tt::hard_daily_budget(1.0)}; }});
  // claude-opus-4-6, 20,000 tokens out at most: $0.50; a fallback to claude-opus-4-6 with 30,000
  // more ($0.75) may run after it declines, a fallback to claude-sonnet-4-5 with 20,000 ($0.30).
  const tt::headers anthropic{{"anthropic-version", "2023-06-01"}, {"anthropic-beta", "server-side-fallback-2026-07-01"}};
  auto body = [](std::string_view fallbacks) {
    return R"({"model":"claude-opus-4-6","max_tokens":20000,"fallbacks":)" + std::string(fallbacks) +
           R"(,"messages":[{"role":"user","content":"Hi"}]})";
  };
  const auto refused = tt::post_json(h.port(), "/v1/messages", body(R"([{"model":"claude-opus-4-6","max_tokens":30000}])"), anthropic);
  CHECK(refused.status == 429);
  CHECK(json::parse(refused.body)["error"]["code"] == "budget_exceeded");
  // "default" (a chain the server picks) counts as one more hop at the requested model: $1.00 + prompt.
  CHECK(tt::post_json(h.port(), "/v1/messages", body(R"("default")"), anthropic).status == 429);
  CHECK(tt::post_json(h.port(), "/v1/messages", body(R"([{"model":"claude-sonnet-4-5"}])"), anthropic).status == 200);
}

// A relay that bills its own prices (OpenRouter) states each call's cost in its usage. A model the
// price table lacks is then ledgered at that cost, and a hard budget can hold it: once the upstream
// is known to state costs, a call reserves at the table's dearest prices until calls of the model
// have taught what the relay charges per token, then at those bounds; a stream the client leaves
// before its usage is priced at them. Refused, as before, while nothing says the cost will come.
TEST_CASE("budgets: a hard budget holds a model the table lacks when its upstream states each call's cost",
          "[budgets]") {
  tt::temp_dir shared;
  tollgate::reported_cost_use use = tollgate::reported_cost_use::fallback;
  auto tweak = [&](tollgate::config& c) {
    c.ledger_path = shared.path + "/ledger.db";
    c.upstream.reported_cost = use;
    c.policy.budgets = {tt::hard_daily_budget(1)};
  };
  const std::string model = "qwen/qwen3-235b-a22b";
  const auto stated = [](const std::string& usd) { return tt::headers{{"x-fake-usage-extra", R"({"cost":)" + usd + "}"}}; };
  const auto ask = [&](tt::harness& h, int max_tokens) {
    return tt::post_json(h.port(), "/v1/chat/completions",
                         tt::chat_body(model, false, ",\"max_tokens\":" + std::to_string(max_tokens)), stated("0.00042"));
  };
  const auto refused_as_unpriced = [](const tt::response& r) {
    CHECK(r.status == 429);
    const auto err = json::parse(r.body)["error"];
    CHECK(err["type"] == "budget_exceeded");
    CHECK(err["message"].get<std::string>().find("has no price") != std::string::npos);
  };
  {
    tt::harness h({.tweak = tweak});
    // Nothing says this upstream states costs yet.
    refused_as_unpriced(ask(h, 50));
    // A call of a priced model states its cost: the upstream does.
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"), stated("0.01")).status == 200);
    // Nothing learned about the model: 5,000 tokens at the table's dearest output price (o1-pro's
    // $600 / 1M) would be $3, over the $1 budget.
    auto big = ask(h, 5000);
    CHECK(big.status == 429);
    CHECK(json::parse(big.body)["error"]["message"].get<std::string>().find("would be exceeded") != std::string::npos);
    // A short call fits; it teaches output <= $0.00042 / its completion tokens.
    REQUIRE(ask(h, 50).status == 200);
    REQUIRE(ask(h, 5000).status == 200);
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body(model, true), stated("0.00042"));
    REQUIRE(s.status() == 200);
    s.read_all();
    // A stream left before its usage chunk: no stated cost, priced at the reserved rates.
    tt::stream_client cut(h.port(), "/v1/chat/completions", tt::chat_body(model, true),
                          {{"x-fake-chunks", "40"}, {"x-fake-chunk-interval-ms", "50"}, stated("0.00042")[0]});
    REQUIRE(cut.status() == 200);
    REQUIRE(cut.next().has_value());
    cut.close();
    REQUIRE(tt::harness::eventually([&] {
      h.flush();
      return h.query_int("SELECT COUNT(*) FROM calls") == 7;
    }));
    auto rows = h.rows("SELECT stream, aborted, priced, COALESCE(price_model, '') AS price_model, cost_usd, usage_source, "
                       "prompt_tokens, completion_tokens FROM calls WHERE requested_model = '" + model + "' AND status = 200 ORDER BY id");
    REQUIRE(rows.size() == 4);
    for (int i : {0, 1, 2}) {
      INFO("row " << i);
      CHECK(rows[i]["priced"] == "1");
      CHECK(rows[i]["price_model"] == "");
      CHECK(std::stod(rows[i]["cost_usd"]) == Approx(0.00042).epsilon(1e-12));
    }
    auto& left = rows[3];
    CHECK(left["aborted"] == "1");
    CHECK(left["usage_source"] == "estimated");
    CHECK(left["priced"] == "1");
    // The bounds: input <= 0.00042 / the first call's prompt tokens, output <= 0.00042 / its completion.
    const double p0 = std::stod(rows[0]["prompt_tokens"]), c0 = std::stod(rows[0]["completion_tokens"]);
    const double bound = 0.00042 / p0 * std::stod(left["prompt_tokens"]) + 0.00042 / c0 * std::stod(left["completion_tokens"]);
    CHECK(std::stod(left["cost_usd"]) == Approx(bound).epsilon(1e-9));
    CHECK(std::stod(left["cost_usd"]) > 0);
    // The budget counted every call at its ledgered cost.
    const double total = h.query_double("SELECT SUM(cost_usd) FROM calls");
    CHECK(h.metric_sum("tollgate_budget_spent_usd") == Approx(total).epsilon(1e-9));
  }
  {
    // After a restart the last day's rows teach it all again: 5,000 tokens fit at once.
    tt::harness h({.tweak = tweak});
    REQUIRE(ask(h, 5000).status == 200);
  }
  {
    // Embeddings through a relay that states their cost (OpenRouter's usage.cost): the first call
    // is reserved at the table's dearest input price, and teaches the model's input bound.
    tt::harness h({.tweak = tweak});
    const std::string embed = "qwen/qwen3-embedding-8b";
    const auto embeddings = [&] {
      return tt::post_json(h.port(), "/v1/embeddings", R"({"model":")" + embed + R"(","input":"the quick brown fox"})",
                           stated("0.00000004"));
    };
    REQUIRE(embeddings().status == 200);
    REQUIRE(embeddings().status == 200);
    h.flush();
    CHECK(h.query_double("SELECT SUM(cost_usd) FROM calls WHERE requested_model = '" + embed + "'") ==
          Approx(0.00000008).epsilon(1e-12));
    CHECK(h.query_int("SELECT SUM(priced) FROM calls WHERE requested_model = '" + embed + "'") == 2);
  }
  {
    use = tollgate::reported_cost_use::ignore;  // the stated cost would not price the call
    tt::harness h({.tweak = tweak});
    refused_as_unpriced(ask(h, 50));
  }
}

// A routing rule sends an alias upstream as the model it names: what the relay charged is kept
// under the model sent, at run time and when read back from the ledger (whose rows name the
// model the client asked for), so a restart keeps the alias's calls at their learned bounds.
TEST_CASE("budgets: stated costs read back after a restart are kept under the model a routing rule sends", "[budgets]") {
  tt::temp_dir shared;
  auto tweak = [&](tollgate::config& c) {
    c.ledger_path = shared.path + "/ledger.db";
    c.policy.budgets = {tt::hard_daily_budget(1)};
    c.routes = {tollgate::route_rule{"cheap-alias", {}, "qwen/qwen3-235b-a22b"}};
  };
  const tt::headers stated = {{"x-fake-usage-extra", R"({"cost":0.00042})"}};
  const auto ask = [&](tt::harness& h, int max_tokens) {
    return tt::post_json(h.port(), "/v1/chat/completions",
                         tt::chat_body("cheap-alias", false, ",\"max_tokens\":" + std::to_string(max_tokens)), stated);
  };
  {
    tt::harness h({.tweak = tweak});
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"), stated).status == 200);
    REQUIRE(ask(h, 50).status == 200);
    REQUIRE(ask(h, 5000).status == 200);  // learned under the model sent
    h.flush();
    CHECK(h.query_text("SELECT requested_model FROM calls ORDER BY id DESC LIMIT 1") == "cheap-alias");
  }
  // After a restart: 5,000 tokens at the table's dearest output price would be $3.
  tt::harness h({.tweak = tweak});
  CHECK(ask(h, 5000).status == 200);
}

// An instance that started without a hard budget did not read what relays charged from the
// ledger. The first hard budget added at run time (a key's, through the admin API) reads it then,
// so the key's unpriced calls are held at the learned bounds at once instead of being refused.
TEST_CASE("budgets: a key's hard budget added at run time learns from the ledger what relays charged", "[budgets]") {
  tt::temp_dir shared;
  auto tweak = [&](tollgate::config& c) {
    c.ledger_path = shared.path + "/ledger.db";
    c.policy.admin_token = "admin-secret";
    c.policy.auth = tollgate::auth_mode::optional;
  };
  const std::string model = "qwen/qwen3-235b-a22b";
  const tt::headers stated = {{"x-fake-usage-extra", R"({"cost":0.00042})"}};
  {
    tt::harness h({.tweak = tweak});
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model, false, ",\"max_tokens\":50"), stated).status == 200);
  }
  tt::harness h({.tweak = tweak});
  const tt::headers admin = {{"Authorization", "Bearer admin-secret"}, {"Content-Type", "application/json"}};
  const auto key_with = [&](const std::string& name, const std::string& budgets) {
    auto created = tt::request(h.admin_port(), "POST", "/admin/keys", R"({"name":")" + name + R"(","budgets":)" + budgets + "}", admin);
    REQUIRE(created.status == 201);
    return tt::headers{{"Authorization", "Bearer " + json::parse(created.body)["key"].get<std::string>()}, stated[0]};
  };
  const auto ask = [&](const tt::headers& key) {
    return tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model, false, ",\"max_tokens\":5000"), key);
  };
  // A soft budget reserves nothing, and the ledger is not read for it.
  key_with("soft", R"([{"period":"day","limit_usd":1}])");
  // A hard one: 5,000 tokens fit at the bounds the ledger's row teaches (at the table's dearest
  // output price they would be $3, and before the ledger is read the upstream is not known to
  // state costs: refused as unpriced).
  const auto hard = key_with("hard", R"([{"period":"day","limit_usd":1,"hard":true}])");
  CHECK(ask(hard).status == 200);
  h.flush();
  CHECK(h.query_double("SELECT cost_usd FROM calls WHERE client_key_id = 'hard'") == Approx(0.00042).epsilon(1e-12));
}

// OpenRouter routes a model's calls to several providers at different prices and names the one
// it chose in each reply: a hard budget reserves at the dearest provider seen, so a call routed
// to it cannot cost many times what was held.
TEST_CASE("budgets: a model served by several providers is reserved at the dearest one seen", "[budgets]") {
  tt::temp_dir shared;
  const auto tweak = [&](tollgate::config& c) {
    c.ledger_path = shared.path + "/ledger.db";
    c.policy.budgets = {tt::hard_daily_budget(1)};
    c.policy.admin_token = "admin-secret";
  };
  // What /admin/budgets says a hard budget reserves the model at.
  const auto reserved = [&](tt::harness& h) {
    const auto r = tt::request(h.admin_port(), "GET", "/admin/budgets", {}, {{"Authorization", "Bearer admin-secret"}});
    REQUIRE(r.status == 200);
    return json::parse(r.body)["stated_costs"];
  };
  const std::string model = "qwen/qwen3-235b-a22b";
  const auto ask = [&](tt::harness& h, int max_tokens, const std::string& provider, const std::string& usd) {
    return tt::post_json(h.port(), "/v1/chat/completions",
                         tt::chat_body(model, false, ",\"max_tokens\":" + std::to_string(max_tokens)),
                         {{"x-fake-usage-extra", R"({"cost":)" + usd + "}"}, {"x-fake-provider", provider}});
  };
  {
    tt::harness h({.tweak = tweak});
    // A priced call states its cost: the upstream does. Then the cheap provider's price is learned.
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"),
                          {{"x-fake-usage-extra", R"({"cost":0.01})"}}).status == 200);
    REQUIRE(ask(h, 50, "Cheap", "0.00042").status == 200);
    // 2,000 tokens at the cheap provider's bounds fit in the $1 budget.
    REQUIRE(ask(h, 2000, "Cheap", "0.00042").status == 200);
    h.flush();
    const double completion = h.query_double("SELECT MIN(completion_tokens) FROM calls WHERE requested_model = '" + model + "'");
    auto stated = reserved(h);
    REQUIRE(stated["models"].size() == 1);
    CHECK(stated["models"][0]["model"] == model);
    CHECK(stated["models"][0]["providers"] == 1);
    CHECK(stated["models"][0]["reserve_output_usd_per_1m"].get<double>() == Approx(0.00042 / completion * 1e6));
    REQUIRE(stated["upstreams"].size() == 1);
    CHECK(stated["upstreams"][0]["name"] == h.query_text("SELECT upstream FROM calls LIMIT 1"));
    CHECK(stated["upstreams"][0]["streams"] == true);
    // One call routed to a provider a hundred times dearer: 2,000 tokens at its bounds (capped at
    // the table's dearest output price, o1-pro's $600 / 1M: $1.20) would not fit.
    REQUIRE(ask(h, 50, "Dear", "0.042").status == 200);
    const auto big = ask(h, 2000, "Cheap", "0.00042");
    CHECK(big.status == 429);
    CHECK(json::parse(big.body)["error"]["message"].get<std::string>().find("would be exceeded") != std::string::npos);
    // Two providers now; the dear one's output bound is above the table's dearest price, which caps it.
    stated = reserved(h);
    CHECK(stated["models"][0]["providers"] == 2);
    CHECK(stated["models"][0]["reserve_output_usd_per_1m"].get<double>() == Approx(600));
    // Each call is settled at the cost its provider stated, and its row names the provider.
    h.flush();
    CHECK(h.query_double("SELECT SUM(cost_usd) FROM calls WHERE requested_model = '" + model + "' AND status = 200") ==
          Approx(0.00042 * 2 + 0.042).epsilon(1e-12));
    CHECK(h.query_text("SELECT group_concat(provider, ',') FROM (SELECT provider FROM calls WHERE requested_model = '" +
                       model + "' AND status = 200 ORDER BY id)") == "Cheap,Cheap,Dear");
  }
  // After a restart the ledger's provider column brings both routes back: the dear one still
  // holds the reservation, and the same 2,000-token call is refused again.
  tt::harness h({.tweak = tweak});
  const auto stated = reserved(h);
  REQUIRE(stated["models"].size() == 1);
  CHECK(stated["models"][0]["providers"] == 2);
  CHECK(stated["models"][0]["reserve_output_usd_per_1m"].get<double>() == Approx(600));
  CHECK(ask(h, 2000, "Cheap", "0.00042").status == 429);
  CHECK(ask(h, 50, "Cheap", "0.00042").status == 200);
}

// A LiteLLM proxy states a whole reply's cost in a header, which a stream's head carries before
// its tokens exist: such an upstream is trusted with a hard budget's unpriced models only for
// whole replies. A stream of the model is refused as unpriced, as it would be ledgered at $0.
TEST_CASE("budgets: an upstream that states costs only in a header holds unpriced models for whole replies only",
          "[budgets]") {
  tt::harness h({.tweak = [](tollgate::config& c) { c.policy.budgets = {tt::hard_daily_budget(1)}; }});
  const tt::headers header = {{"x-fake-response-headers", R"({"x-litellm-response-cost": "0.0031"})"}};
  const std::string model = "qwen/qwen3-235b-a22b";
  const std::string small = ",\"max_tokens\":50";
  // A priced call whose reply states its cost in the header: the upstream does, for whole replies.
  REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"), header).status == 200);
  REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model, false, small), header).status == 200);
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body(model, true, small), header);
  CHECK(s.status() == 429);
  CHECK(json::parse(s.read_all())["error"]["message"].get<std::string>().find("has no price") != std::string::npos);
  h.flush();
  CHECK(h.query_double("SELECT cost_usd FROM calls WHERE requested_model = '" + model + "' AND status = 200") ==
        Approx(0.0031).epsilon(1e-12));
  CHECK(h.query_int("SELECT priced FROM calls WHERE requested_model = '" + model + "' AND status = 200") == 1);
  // Anthropic's Messages API (a LiteLLM proxy serves /v1/messages too): its usage carries no
  // cost, so only the header can state it, on a whole reply; a stream is refused as unpriced.
  const std::string claude = "claude-unlisted-9";
  tt::headers anthropic = header;
  anthropic.emplace_back("anthropic-version", "2023-06-01");
  const auto message = [&](bool stream) {
    return std::string(R"({"model":")") + claude + R"(","max_tokens":50,"stream":)" + (stream ? "true" : "false") +
           R"(,"messages":[{"role":"user","content":"Hi"}]})";
  };
  REQUIRE(tt::post_json(h.port(), "/v1/messages", message(false), anthropic).status == 200);
  tt::stream_client ms(h.port(), "/v1/messages", message(true), anthropic);
  CHECK(ms.status() == 429);
  h.flush();
  CHECK(h.query_double("SELECT cost_usd FROM calls WHERE requested_model = '" + claude + "' AND status = 200") ==
        Approx(0.0031).epsilon(1e-12));
}

TEST_CASE("budgets: user:* holds each end user to their own budget, named in either API, across a restart",
          "[budgets]") {
  constexpr double limit = 0.002;
  tt::temp_dir shared;
  auto tweak = [&](tollgate::config& c) {
    c.ledger_path = shared.path + "/ledger.db";
    c.policy.admin_token = "admin-secret";
    auto b = tt::hard_daily_budget(limit);
    b.scope = "user:*";
    c.policy.budgets = {b};
  };
  const tt::headers admin = {{"Authorization", "Bearer admin-secret"}};
  // OpenAI's end-user field now (safety_identifier), and Anthropic's (metadata.user_id).
  const auto chat = [](const std::string& user) {
    return tt::chat_body("gpt-4.1", false, R"(,"max_tokens":100,"safety_identifier":")" + user + "\"");
  };
  const auto messages = [](const std::string& user, int max_tokens) {
    return R"({"model":"claude-sonnet-4.5","max_tokens":)" + std::to_string(max_tokens) + R"(,"metadata":{"user_id":")" +
           user + R"("},"messages":[{"role":"user","content":"hi"}]})";
  };
  int admitted = 0;
  {
    tt::harness h({.tweak = tweak});
    tt::response r;
    for (int i = 0; i < 200; ++i) {
      r = tt::post_json(h.port(), "/v1/chat/completions", chat("alice"));
      if (r.status != 200) break;
      ++admitted;
    }
    REQUIRE(admitted > 1);
    CHECK(r.status == 429);
    CHECK_THAT(r.body, Catch::Matchers::Contains("budget_exceeded") && Catch::Matchers::Contains("user:alice"));
    // Her calls through the Messages API are hers too (100 tokens of Sonnet, $0.0015, exceed what
    // she has left); nobody else is held by her spend.
    auto m = tt::post_json(h.port(), "/v1/messages", messages("alice", 100), {{"anthropic-version", "2023-06-01"}});
    CHECK(m.status == 429);
    CHECK(json::parse(m.body)["error"]["type"] == "rate_limit_error");
    CHECK(tt::post_json(h.port(), "/v1/messages", messages("bob", 100), {{"anthropic-version", "2023-06-01"}}).status == 200);
    CHECK(tt::post_json(h.port(), "/v1/chat/completions", chat("carol")).status == 200);
    CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", false, R"(,"max_tokens":100)")).status ==
          200);  // no end user named: in no user budget
    h.flush();
    const double alice = h.query_double("SELECT SUM(cost_usd) FROM calls WHERE \"user\" = 'alice'");
    CHECK(alice <= limit);
    CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE \"user\" = 'alice' AND error_kind = 'budget_exceeded'") == 2);
    CHECK(h.metric_sum("tollgate_budget_rejections_total", "scope=\"user:*\"") == 2);
    CHECK(h.metric_sum("tollgate_budget_limit_usd", "scope=\"user:*\"") == limit);
    CHECK(h.metric_sum("tollgate_budget_spent_usd", "scope=\"user:*\"") == Approx(alice).epsilon(1e-9));
    CHECK(h.metric_sum("tollgate_end_users_tracked", "kind=\"budget\"") == 3);
    CHECK(h.metric_sum("tollgate_end_users_tracked", "kind=\"retired\"") == 0);
    auto b = tt::request(h.admin_port(), "GET", "/admin/budgets", {}, admin);
    REQUIRE(b.status == 200);
    const auto each = json::parse(b.body)["budgets"][0];
    CHECK(each["scope"] == "user:*");
    CHECK(each["users"] == 3);
    CHECK(each["top_user"] == "alice");
    CHECK(each["spent_usd"].get<double>() == Approx(alice).epsilon(1e-9));
    CHECK(each["shared_usd"] == 0);
    // One end user's own: what an app shows its user of their day.
    b = tt::request(h.admin_port(), "GET", "/admin/budgets?user=carol", {}, admin);
    REQUIRE(b.status == 200);
    const auto carol = json::parse(b.body)["budgets"][0];
    CHECK(carol["user"] == "carol");
    CHECK_FALSE(carol.contains("top_user"));
    CHECK(carol["spent_usd"].get<double>() ==
          Approx(h.query_double("SELECT SUM(cost_usd) FROM calls WHERE \"user\" = 'carol'")).epsilon(1e-9));
    CHECK(carol["remaining_usd"].get<double>() == Approx(limit - carol["spent_usd"].get<double>()));
  }
  // A restart reads each user's spend back from the ledger.
  tt::harness again({.tweak = tweak});
  CHECK(tt::post_json(again.port(), "/v1/chat/completions", chat("alice")).status == 429);
  CHECK(tt::post_json(again.port(), "/v1/chat/completions", chat("bob")).status == 200);
}

TEST_CASE("rate limits: user_limits hold each end user to their own RPM, named in either API, across a restart",
          "[ratelimit]") {
  tt::temp_dir shared;
  auto tweak = [&](tollgate::config& c) {
    c.ledger_path = shared.path + "/ledger.db";
    c.policy.user_limits.rpm = 2;
  };
  const auto chat = [](const std::string& user) {
    return tt::chat_body("gpt-4.1", false, R"(,"user":")" + user + "\"");
  };
  const std::string claude_of_alice =
      R"({"model":"claude-sonnet-4.5","max_tokens":16,"metadata":{"user_id":"alice"},"messages":[{"role":"user","content":"hi"}]})";
  {
    tt::harness h({.tweak = tweak});
    auto first = tt::post_json(h.port(), "/v1/chat/completions", chat("alice"));
    REQUIRE(first.status == 200);
    CHECK(first.header("x-ratelimit-limit-requests") == "2");
    CHECK(first.header("x-ratelimit-remaining-requests") == "1");
    REQUIRE(tt::post_json(h.port(), "/v1/messages", claude_of_alice, {{"anthropic-version", "2023-06-01"}}).status == 200);
    auto r = tt::post_json(h.port(), "/v1/chat/completions", chat("alice"));
    CHECK(r.status == 429);
    CHECK_THAT(r.body, Catch::Matchers::Contains("rate_limit_exceeded") && Catch::Matchers::Contains("user:alice"));
    CHECK(std::stoi(r.header("retry-after")) >= 20);
    auto m = tt::post_json(h.port(), "/v1/messages", claude_of_alice, {{"anthropic-version", "2023-06-01"}});
    CHECK(m.status == 429);
    CHECK(json::parse(m.body)["error"]["type"] == "rate_limit_error");
    // Others are not held by her calls, nor is a call that names no end user.
    CHECK(tt::post_json(h.port(), "/v1/chat/completions", chat("bob")).status == 200);
    for (int i = 0; i < 3; ++i) CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body()).status == 200);
    CHECK(h.metric_sum("tollgate_rate_limited_total", "kind=\"requests\",scope=\"user:*\"") == 2);
    CHECK(h.metric_sum("tollgate_end_users_tracked", "kind=\"rate\"") == 2);  // alice and bob, seen this minute
    CHECK(h.upstream->request_count() == 6);
    h.flush();
  }
  tt::harness again({.tweak = tweak});
  CHECK(tt::post_json(again.port(), "/v1/chat/completions", chat("alice")).status == 429);
  CHECK(tt::post_json(again.port(), "/v1/chat/completions", chat("bob")).status == 200);
  CHECK(tt::post_json(again.port(), "/v1/chat/completions", chat("bob")).status == 429);
}

TEST_CASE("rate limits: user_header names the end user over the body, on every route, and is not sent upstream",
          "[ratelimit]") {
  tt::harness h({.tweak = [](tollgate::config& c) {
    c.policy.user_limits.rpm = 2;
    c.policy.user_header = "x-end-user";
  }});
  const std::string mallory = tt::chat_body("gpt-4.1", false, R"(,"user":"mallory")");
  // The app's backend names alice; the body (what her client wrote) says mallory.
  auto r = tt::post_json(h.port(), "/v1/chat/completions", mallory, {{"X-End-User", "alice"}});
  REQUIRE(r.status == 200);
  CHECK(r.header("x-ratelimit-remaining-requests") == "1");
  const auto sent = h.upstream->requests().back();
  CHECK(sent.header("x-end-user").empty());
  CHECK(sent.body.find(R"("user":"mallory")") != std::string::npos);  // the body goes as it came
  CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-end-user", "alice"}}).status == 200);
  r = tt::post_json(h.port(), "/v1/chat/completions", mallory, {{"x-end-user", "alice"}});
  CHECK(r.status == 429);
  CHECK_THAT(r.body, Catch::Matchers::Contains("user:alice"));
  // mallory, named by the body alone (no header, or an empty one), is someone else.
  CHECK(tt::post_json(h.port(), "/v1/chat/completions", mallory).status == 200);
  CHECK(tt::post_json(h.port(), "/v1/chat/completions", mallory, {{"x-end-user", ""}}).status == 200);
  // A call that is not metered is hers too (the ledger's user column), and an id that is not
  // UTF-8 is refused, saying which header.
  CHECK(tt::request(h.port(), "GET", "/v1/models", {}, {{"x-end-user", "carol"}}).status == 200);
  const std::string raw = tt::raw_exchange(
      h.port(), "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-end-user: \xff\xfe\r\n"
                "Connection: close\r\nContent-Length: " + std::to_string(mallory.size()) + "\r\n\r\n" + mallory);
  CHECK(tt::status_of(raw) == 400);
  CHECK_THAT(raw, Catch::Matchers::Contains("x-end-user header must be UTF-8"));
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE \"user\" = 'alice'") == 3);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE \"user\" = 'mallory'") == 2);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE \"user\" = 'carol' ") == 1);
}

TEST_CASE("prices: a reload puts the new table in force for calls that start after it - a call in flight keeps "
          "its own and a file that does not load changes nothing",
          "[prices]") {
  tt::temp_dir files;
  const std::string path = files.path + "/prices.yaml";
  const auto write = [&](const std::string& text) { std::ofstream(path, std::ios::trunc) << text; };
  write("models:\n  m-one: { input: 1.0, output: 2.0 }\n");
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.prices_file = path;
    c.policy.admin_token = "admin-secret";
  }});
  const tt::headers admin{{"Authorization", "Bearer admin-secret"}};
  // The row's cost, and what its tokens cost at (input, output) USD per 1M.
  const auto row = [&](const std::string& id) {
    h.flush();
    return h.rows("SELECT cost_usd, prompt_tokens, completion_tokens, priced, price_model FROM calls WHERE request_id = '" + id + "'").at(0);
  };
  const auto at = [](const std::map<std::string, std::string>& r, double in, double out) {
    return (std::stod(r.at("prompt_tokens")) * in + std::stod(r.at("completion_tokens")) * out) / 1e6;
  };
  const auto call = [&](const std::string& model, const std::string& id, const tt::headers& extra = {}) {
    tt::headers hs = extra;
    hs.emplace_back("x-request-id", id);
    return tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model), hs).status;
  };
  const auto reload = [&] { return tt::request(h.admin_port(), "POST", "/admin/prices/reload", {}, admin); };

  REQUIRE(call("m-one", "before") == 200);
  CHECK(std::stod(row("before").at("cost_usd")) == Approx(at(row("before"), 1.0, 2.0)).epsilon(1e-12));
  CHECK(h.metric_sum("tollgate_price_table_models") == 1);

  // A call admitted before the reload, answered after it.
  std::atomic<int> slow_status{0};
  std::thread slow([&] { slow_status = call("m-one", "in-flight", {{"x-fake-delay-ms", "800"}}); });
  REQUIRE(tt::harness::eventually([&] { return h.metric_sum("tollgate_inflight_requests") == 1; }));

  write("models:\n  m-one: { input: 1.0, output: 20.0 }\n  m-two: { input: 3.0, output: 4.0 }\n");
  auto r = reload();
  REQUIRE(r.status == 200);
  auto j = json::parse(r.body);
  CHECK(j["reloaded"] == true);
  CHECK(j["models"] == 2);
  CHECK(j["added"] == json::array({"m-two"}));
  CHECK(j["removed"].empty());
  CHECK(j["reloads"] == 1);
  slow.join();
  REQUIRE(slow_status == 200);
  CHECK(std::stod(row("in-flight").at("cost_usd")) == Approx(at(row("in-flight"), 1.0, 2.0)).epsilon(1e-12));

  REQUIRE(call("m-one", "after") == 200);
  CHECK(std::stod(row("after").at("cost_usd")) == Approx(at(row("after"), 1.0, 20.0)).epsilon(1e-12));
  REQUIRE(call("m-two", "new-model") == 200);
  const auto added = row("new-model");
  CHECK(added.at("priced") == "1");
  CHECK(added.at("price_model") == "m-two");
  CHECK(std::stod(added.at("cost_usd")) == Approx(at(added, 3.0, 4.0)).epsilon(1e-12));
  // The new entry has its own `model` series at once (not "other").
  CHECK(h.metric_sum("tollgate_spend_usd_total", "model=\"m-two\"") == Approx(std::stod(added.at("cost_usd"))).epsilon(1e-12));
  CHECK(h.metric_sum("tollgate_requests_total", "model=\"other\"") == 0);
  CHECK(h.metric_sum("tollgate_price_table_models") == 2);

  // A file that does not load: 422 naming its line; the table in force stays.
  write("models:\n  m-one: { input: 1.0, output: 20.0 }\n  m-two: { input: 3.0, output: [4] }\n");
  r = reload();
  CHECK(r.status == 422);
  CHECK(json::parse(r.body)["error"]["code"] == "invalid_price_table");
  CHECK(r.body.find(path + ":3") != std::string::npos);
  REQUIRE(call("m-two", "after-failure") == 200);
  CHECK(std::stod(row("after-failure").at("cost_usd")) == Approx(at(row("after-failure"), 3.0, 4.0)).epsilon(1e-12));
  CHECK(h.metric_sum("tollgate_price_reloads_total", "result=\"ok\"") == 1);
  CHECK(h.metric_sum("tollgate_price_reloads_total", "result=\"failed\"") == 1);

  // An entry removed: its calls are unpriced from now on.
  write("models:\n  m-two: { input: 3.0, output: 4.0 }\n");
  r = reload();
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body)["removed"] == json::array({"m-one"}));
  REQUIRE(call("m-one", "removed") == 200);
  CHECK(row("removed").at("priced") == "0");

  // What the table in force says.
  j = json::parse(tt::request(h.admin_port(), "GET", "/admin/prices", {}, admin).body);
  CHECK(j["models"] == 1);
  CHECK(j["entries"] == json::array({"m-two"}));
  CHECK(j["reloads"] == 2);
  CHECK(j["files"] == json::array({path}));
  j = json::parse(tt::request(h.admin_port(), "GET", "/admin/prices?model=M-TWO", {}, admin).body);
  CHECK(j["entry"] == "m-two");
  CHECK(j["usd_per_1m"]["output"] == 4.0);
  CHECK(tt::request(h.admin_port(), "GET", "/admin/prices?model=m-one", {}, admin).status == 404);

  CHECK(tt::request(h.admin_port(), "GET", "/admin/prices/reload", {}, admin).status == 405);
  CHECK(tt::request(h.admin_port(), "POST", "/admin/prices/reload").status == 401);
}

TEST_CASE("prices: reloads while calls run on two workers - every call is priced at one table or the other",
          "[prices]") {
  tt::temp_dir files;
  const std::string path = files.path + "/prices.yaml";
  const auto write = [&](double output) {
    std::ofstream(path, std::ios::trunc) << "models:\n  m-one: { input: 1.0, output: " << output << " }\n";
  };
  write(2.0);
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.prices_file = path;
    c.policy.admin_token = "admin-secret";
    c.workers = 2;
  }});
  const tt::headers admin{{"Authorization", "Bearer admin-secret"}};
  std::atomic<bool> done{false};
  std::atomic<int> answered{0}, failed{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t)
    clients.emplace_back([&] {
      while (!done) {
        if (tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("m-one")).status == 200)
          ++answered;
        else
          ++failed;
      }
    });
  int reloads = 0;
  for (int i = 0; i < 40; ++i) {
    write(i % 2 == 0 ? 20.0 : 2.0);
    if (tt::request(h.admin_port(), "POST", "/admin/prices/reload", {}, admin).status == 200) ++reloads;
    std::this_thread::sleep_for(5ms);
  }
  done = true;
  for (auto& c : clients) c.join();
  CHECK(failed == 0);
  CHECK(reloads == 40);
  CHECK(h.metric_sum("tollgate_price_reloads_total", "result=\"ok\"") == 40);
  h.flush();
  int at_old = 0, at_new = 0;
  for (const auto& r : h.rows("SELECT cost_usd, prompt_tokens, completion_tokens FROM calls")) {
    const double cost = std::stod(r.at("cost_usd")), p = std::stod(r.at("prompt_tokens")), c = std::stod(r.at("completion_tokens"));
    if (cost == Approx((p + 2.0 * c) / 1e6).epsilon(1e-12)) ++at_old;
    else if (cost == Approx((p + 20.0 * c) / 1e6).epsilon(1e-12)) ++at_new;
    else FAIL("a call priced at neither table: " << cost);
  }
  CHECK(at_old + at_new == answered);
  CHECK(at_old > 0);
  CHECK(at_new > 0);
}

TEST_CASE("prices: GET /admin/prices says which entry a model resolves to and what its calls are billed at",
          "[prices]") {
  tt::harness h({.tweak = [](tollgate::config& c) { c.policy.admin_token = "admin-secret"; }});
  const tt::headers admin{{"Authorization", "Bearer admin-secret"}};
  const auto get = [&](const std::string& target) { return tt::request(h.admin_port(), "GET", target, {}, admin); };
  auto r = get("/admin/prices?model=claude-sonnet-4-5-20250929");
  REQUIRE(r.status == 200);
  auto j = json::parse(r.body);
  CHECK(j["entry"] == "claude-sonnet-4.5");
  CHECK(j["usd_per_1m"]["input"] == 3.0);
  CHECK(j["usd_per_1m"]["cache_write_5m"] == 3.75);
  CHECK(j["usd_per_1m"]["cache_write_1h"] == 6.0);  // Anthropic's default: 2x input
  CHECK(j["usd_per_1m"]["output"] == 15.0);
  CHECK(j["long_context"]["above_prompt_tokens"] == 200000);
  CHECK(j["tiers"]["batch"]["output"] == 7.5);  // half price by default
  // A table that names no price for the model: 404, as its calls are unpriced.
  r = get("/admin/prices?model=no-such-model");
  CHECK(r.status == 404);
  CHECK(json::parse(r.body)["error"]["code"] == "model_not_found");
  CHECK(get("/admin/prices?modle=gpt-4.1").status == 400);
  CHECK(get("/admin/prices?model=gpt-4.1&at=yesterday").status == 400);
  CHECK(get("/admin/prices?model=gpt-4.1&at=2026-01-01").status == 200);
  j = json::parse(get("/admin/prices").body);
  CHECK(j["models"].get<int>() > 50);
  CHECK(j["reloads"] == 0);
  CHECK(tt::request(h.admin_port(), "POST", "/admin/prices", {}, admin).status == 405);
}

TEST_CASE("prices: pricing.watch reloads the price files once they change and have settled", "[prices]") {
  tt::temp_dir files;
  const std::string path = files.path + "/prices.yaml";
  std::ofstream(path, std::ios::trunc) << "models:\n  m-one: { input: 1.0, output: 2.0 }\n";
  tt::harness h({.tweak = [&](tollgate::config& c) {
    c.prices_file = path;
    c.prices_watch = true;
  }});
  // Files as they were loaded: nothing to do.
  std::this_thread::sleep_for(2500ms);
  CHECK(h.metric_sum("tollgate_price_reloads_total") == 0);
  {
    std::ofstream f(path + ".new", std::ios::trunc);
    f << "models:\n  m-one: { input: 1.0, output: 20.0 }\n";
  }
  std::filesystem::rename(path + ".new", path);  // as an editor or a ConfigMap swaps it
  REQUIRE(tt::harness::eventually([&] { return h.metric_sum("tollgate_price_reloads_total", "result=\"ok\"") == 1; }));
  REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("m-one"), {{"x-request-id", "watched"}}).status == 200);
  h.flush();
  const auto r = h.rows("SELECT cost_usd, prompt_tokens, completion_tokens FROM calls WHERE request_id = 'watched'").at(0);
  CHECK(std::stod(r.at("cost_usd")) ==
        Approx((std::stod(r.at("prompt_tokens")) * 1.0 + std::stod(r.at("completion_tokens")) * 20.0) / 1e6).epsilon(1e-12));
  // A change that does not load is tried once, not every second.
  std::ofstream(path, std::ios::app) << "  broken: { input: [1] }\n";
  REQUIRE(tt::harness::eventually([&] { return h.metric_sum("tollgate_price_reloads_total", "result=\"failed\"") == 1; }));
  std::this_thread::sleep_for(2500ms);
  CHECK(h.metric_sum("tollgate_price_reloads_total", "result=\"failed\"") == 1);
  CHECK(h.metric_sum("tollgate_price_reloads_total", "result=\"ok\"") == 1);
}

// A harness tweak: the spend controls of the configuration file at `path` (which a reload reads
// again), with the harness's listeners, upstream and ledger.
std::function<void(tollgate::config&)> spend_controls_of(const std::string& path) {
  return [path](tollgate::config& c) {
    const tollgate::config file = tollgate::load_config_file(path);
    c.policy = file.policy;
    c.source_file = file.source_file;
    c.sections = file.sections;
    c.config_watch = file.config_watch;
  };
}

TEST_CASE("config reload: a budget's new limit and a key's new rate limit are in force at once, the spend so far "
          "kept - a budget added waits for a restart and a file that does not load changes nothing",
          "[config_reload]") {
  tt::temp_dir files;
  const std::string path = files.path + "/tollgate.yaml";
  const auto write = [&](const std::string& budgets, const std::string& extra = {}) {
    std::ofstream(path, std::ios::trunc) << "admin_token: admin-secret\n"
                                            "auth: required\n"
                                            "keys:\n"
                                            "  - { name: app, key: sk-app-secret-1, team: web, limits: { rpm: 2 } }\n"
                                            "budgets:\n"
                                         << budgets << extra;
  };
  write("  - { scope: global, period: month, limit_usd: 0.000001, hard: true }\n");
  tt::harness h({.tweak = spend_controls_of(path)});
  const tt::headers admin{{"Authorization", "Bearer admin-secret"}};
  const tt::headers app{{"Authorization", "Bearer sk-app-secret-1"}};
  const auto reload = [&] { return tt::request(h.admin_port(), "POST", "/admin/config/reload", {}, admin); };
  const auto call = [&] { return tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"), app); };

  auto c = call();
  CHECK(c.status == 429);
  CHECK_THAT(c.body, Catch::Matchers::Contains("budget_exceeded"));

  // Finance raises the month's budget: no restart.
  write("  - { scope: global, period: month, limit_usd: 100, soft: [0.5], hard: true }\n");
  auto r = reload();
  REQUIRE(r.status == 200);
  auto j = json::parse(r.body);
  CHECK(j["reloaded"] == true);
  CHECK(j["file"] == path);
  REQUIRE(j["applied"].size() == 1);
  CHECK_THAT(j["applied"][0].get<std::string>(), Catch::Matchers::Contains("budget global/month: limit $0.0000") &&
                                                        Catch::Matchers::Contains(" -> $100.00"));
  CHECK(j["restart_required"].empty());
  CHECK(j["reloads"] == 1);
  REQUIRE(call().status == 200);
  REQUIRE(call().status == 200);
  j = json::parse(tt::request(h.admin_port(), "GET", "/admin/budgets", {}, admin).body);
  CHECK(j["budgets"][0]["limit_usd"] == 100.0);
  h.flush();
  const double cost = h.query_double("SELECT SUM(cost_usd) FROM calls");
  CHECK(cost > 0);
  CHECK(j["budgets"][0]["spent_usd"].get<double>() == Approx(cost).epsilon(1e-9));
  CHECK(h.metric_sum("tollgate_budget_limit_usd", "period=\"month\",scope=\"global\"") == 100);

  // The key's rpm of 2 is spent by the two calls; raised to 6000 (100 a second) it admits again.
  c = call();
  CHECK(c.status == 429);
  CHECK_THAT(c.body, Catch::Matchers::Contains("rate_limit_exceeded"));
  {
    std::ofstream(path, std::ios::trunc) << "admin_token: admin-secret\n"
                                            "auth: required\n"
                                            "keys:\n"
                                            "  - { name: app, key: sk-app-secret-1, team: web, limits: { rpm: 6000 } }\n"
                                            "budgets:\n"
                                            "  - { scope: global, period: month, limit_usd: 100, soft: [0.5], hard: true }\n"
                                            "  - { scope: \"team:web\", period: day, limit_usd: 1, hard: true }\n"
                                            "timezone: Europe/Paris\n";
  }
  r = reload();
  REQUIRE(r.status == 200);
  j = json::parse(r.body);
  REQUIRE(j["applied"].size() == 1);
  CHECK_THAT(j["applied"][0].get<std::string>(), Catch::Matchers::Contains("key app: rpm 2 -> 6000"));
  const std::string pending = j["restart_required"].dump();
  CHECK_THAT(pending, Catch::Matchers::Contains("budget team:web/day added: takes effect at a restart"));
  CHECK_THAT(pending, Catch::Matchers::Contains("timezone changed: takes effect at a restart"));
  CHECK(j["restart_required"].size() == 2);
  CHECK(h.metric_sum("tollgate_config_restart_pending") == 2);
  REQUIRE(tt::harness::eventually([&] { return call().status == 200; }, 2s));
  j = json::parse(tt::request(h.admin_port(), "GET", "/admin/keys", {}, admin).body);
  CHECK(j["keys"][0]["name"] == "app");
  CHECK(j["keys"][0]["limits"]["rpm"] == 6000);
  // The budget added is not in force: one budget, as at start.
  CHECK(json::parse(tt::request(h.admin_port(), "GET", "/admin/budgets", {}, admin).body)["budgets"].size() == 1);

  // A file that does not load: 422 naming its line; the limits in force stay.
  std::ofstream(path, std::ios::trunc) << "admin_token: admin-secret\nbudgets:\n  - { scope: global, limit_usd: -5 }\n";
  r = reload();
  CHECK(r.status == 422);
  CHECK(json::parse(r.body)["error"]["code"] == "invalid_config");
  CHECK(r.body.find(path + ":3") != std::string::npos);
  CHECK(json::parse(tt::request(h.admin_port(), "GET", "/admin/budgets", {}, admin).body)["budgets"][0]["limit_usd"] == 100.0);
  CHECK(h.metric_sum("tollgate_config_reloads_total", "result=\"ok\"") == 2);
  CHECK(h.metric_sum("tollgate_config_reloads_total", "result=\"failed\"") == 1);
  // What an SRE paged by TollgateConfigRestartPending reads: the pending changes, the last error.
  j = json::parse(tt::request(h.admin_port(), "GET", "/admin/config", {}, admin).body);
  CHECK(j["file"] == path);
  CHECK(j["reloads"] == 2);
  CHECK(j["restart_required"].size() == 2);
  CHECK(j["applied"] == json::array({"key app: rpm 2 -> 6000"}));
  CHECK_THAT(j["last_error"].get<std::string>(), Catch::Matchers::Contains(path + ":3"));
  CHECK(tt::request(h.admin_port(), "POST", "/admin/config", {}, admin).status == 405);

  CHECK(tt::request(h.admin_port(), "GET", "/admin/config/reload", {}, admin).status == 405);
  CHECK(tt::request(h.admin_port(), "POST", "/admin/config/reload").status == 401);
}

TEST_CASE("config reload: a leaked key removed from the file is refused at once, a rotated key keeps its budget's "
          "spend, and a key added serves",
          "[config_reload]") {
  tt::temp_dir files;
  const std::string path = files.path + "/tollgate.yaml";
  const auto write = [&](const std::string& keys) {
    std::ofstream(path, std::ios::trunc) << "admin_token: admin-secret\nauth: required\nkeys:\n" << keys;
  };
  write("  - { name: app, key: sk-app-secret-1, budgets: [{ period: day, limit_usd: 50 }] }\n"
        "  - { name: leaked, key: sk-leaked-secret }\n");
  tt::harness h({.tweak = spend_controls_of(path)});
  const tt::headers admin{{"Authorization", "Bearer admin-secret"}};
  const auto call = [&](const std::string& secret) {
    return tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"), {{"Authorization", "Bearer " + secret}}).status;
  };
  const auto key_spend = [&] {
    const json all = json::parse(tt::request(h.admin_port(), "GET", "/admin/budgets", {}, admin).body);
    for (const auto& b : all["budgets"])
      if (b["scope"] == "key:app") return b["spent_usd"].get<double>();
    return -1.0;
  };
  REQUIRE(call("sk-app-secret-1") == 200);
  REQUIRE(call("sk-leaked-secret") == 200);
  const double spent = key_spend();
  CHECK(spent > 0);

  // A stored key cannot be revoked by DELETE when the file has it: the answer says how.
  auto del = tt::request(h.admin_port(), "DELETE", "/admin/keys/leaked", {}, admin);
  CHECK(del.status == 409);
  CHECK_THAT(del.body, Catch::Matchers::Contains("POST /admin/config/reload"));

  write("  - { name: app, key: sk-app-secret-2, budgets: [{ period: day, limit_usd: 50 }] }\n"
        "  - { name: ops, key: sk-ops-secret-1, team: sre }\n");
  auto r = tt::request(h.admin_port(), "POST", "/admin/config/reload", {}, admin);
  REQUIRE(r.status == 200);
  const std::string applied = json::parse(r.body)["applied"].dump();
  CHECK_THAT(applied, Catch::Matchers::Contains("key app: secret rotated"));
  CHECK_THAT(applied, Catch::Matchers::Contains("key leaked removed"));
  CHECK_THAT(applied, Catch::Matchers::Contains("key ops added"));
  CHECK(json::parse(r.body)["restart_required"].empty());

  CHECK(call("sk-leaked-secret") == 401);
  CHECK(call("sk-app-secret-1") == 401);
  REQUIRE(call("sk-app-secret-2") == 200);
  CHECK(key_spend() > spent);  // the day's spend under the old secret still counts
  REQUIRE(call("sk-ops-secret-1") == 200);
  h.flush();
  CHECK(h.query_text("SELECT team FROM calls WHERE client_key_id = 'ops'") == "sre");
  auto keys = json::parse(tt::request(h.admin_port(), "GET", "/admin/keys", {}, admin).body)["keys"];
  std::vector<std::string> names;
  for (const auto& k : keys) names.push_back(k["name"].get<std::string>() + "/" + k["source"].get<std::string>());
  CHECK(names == std::vector<std::string>{"app/config", "ops/config"});
  // The name a removed configured key leaves is free for the admin API.
  CHECK(tt::request(h.admin_port(), "POST", "/admin/keys", R"({"name": "leaked"})", admin).status == 201);

  // The admin token rotated: the old one is refused from the next request on.
  std::ofstream(path, std::ios::trunc) << "admin_token: admin-secret-2\nauth: required\nkeys:\n"
                                          "  - { name: app, key: sk-app-secret-2, budgets: [{ period: day, limit_usd: 50 }] }\n"
                                          "  - { name: ops, key: sk-ops-secret-1, team: sre }\n";
  r = tt::request(h.admin_port(), "POST", "/admin/config/reload", {}, admin);
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body)["applied"] == json::array({"admin_token rotated: the old one is refused from now on"}));
  CHECK(tt::request(h.admin_port(), "GET", "/admin/keys", {}, admin).status == 401);
  CHECK(tt::request(h.admin_port(), "GET", "/admin/keys", {}, {{"Authorization", "Bearer admin-secret-2"}}).status == 200);
}

TEST_CASE("config reload: watch_config reads the file again once it changes and has settled", "[config_reload]") {
  tt::temp_dir files;
  const std::string path = files.path + "/tollgate.yaml";
  const auto text = [](const std::string& limit) {
    return "watch_config: true\nadmin_token: admin-secret\nbudgets:\n  - { scope: global, limit_usd: " + limit + ", hard: true }\n";
  };
  std::ofstream(path, std::ios::trunc) << text("0.000001");
  tt::harness h({.tweak = spend_controls_of(path)});
  const auto call = [&] { return tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1")).status; };
  // The file as it was read: nothing to do.
  std::this_thread::sleep_for(2500ms);
  CHECK(h.metric_sum("tollgate_config_reloads_total") == 0);
  CHECK(call() == 429);
  {
    std::ofstream f(path + ".new", std::ios::trunc);
    f << text("100");
  }
  std::filesystem::rename(path + ".new", path);  // as an editor or a ConfigMap swaps it
  REQUIRE(tt::harness::eventually([&] { return h.metric_sum("tollgate_config_reloads_total", "result=\"ok\"") == 1; }));
  CHECK(call() == 200);
  CHECK(h.metric_sum("tollgate_budget_limit_usd", "scope=\"global\"") == 100);
  // A change that does not load is tried once, not every second; the limit in force stays.
  std::ofstream(path, std::ios::app) << "  - { scope: global, limit_usd: [1] }\n";
  REQUIRE(tt::harness::eventually([&] { return h.metric_sum("tollgate_config_reloads_total", "result=\"failed\"") == 1; }));
  std::this_thread::sleep_for(2500ms);
  CHECK(h.metric_sum("tollgate_config_reloads_total", "result=\"failed\"") == 1);
  CHECK(h.metric_sum("tollgate_config_reloads_total", "result=\"ok\"") == 1);
  CHECK(call() == 200);
}
