// The relay end to end: tollgate in-process on 127.0.0.1:0 in front of the fake upstream, with a
// real SQLite ledger. Each case states one behaviour of the relay-core issue.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sqlite3.h>
#include <zlib.h>

#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <thread>

#include "core/request_inspect.hpp"
#include "ledger/journal.hpp"
#include "support.hpp"
#include "test_cert.hpp"

using nlohmann::json;
using tt::harness;
namespace beast = boost::beast;
namespace websocket = boost::beast::websocket;
namespace net = boost::asio;

namespace {
// gzip (window_bits 31) or zlib (15) or raw deflate (-15) of `in`, as HTTP clients compress bodies.
std::string deflate_bytes(const std::string& in, int window_bits) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::string out(deflateBound(&z, in.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::vector<json> sse_data(const std::string& body) {
  std::vector<json> out;
  std::size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    auto end = body.find('\n', pos);
    auto payload = body.substr(pos + 6, end - pos - 6);
    if (payload != "[DONE]") out.push_back(json::parse(payload));
    pos = end;
  }
  return out;
}

// The one ledger row of a call that ended after its client left (written within 5 s).
std::map<std::string, std::string> only_row(harness& h) {
  REQUIRE(harness::eventually([&] {
    h.flush();
    return h.query_int("SELECT COUNT(*) FROM calls") == 1;
  }, std::chrono::seconds(5)));
  return h.rows("SELECT * FROM calls")[0];
}
}  // namespace

TEST_CASE("relay: non-stream chat is forwarded, metered, priced and ledgered", "[relay]") {
  harness h;
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"),
                         {{"Authorization", "Bearer client-key"}, {"x-custom-thing", "kept"}, {"Connection", "keep-alive, x-hop"}, {"x-hop", "dropped"}});
  REQUIRE(r.status == 200);
  auto body = json::parse(r.body);
  auto usage = body["usage"];
  CHECK(usage["prompt_tokens"].get<int>() > 0);
  auto rid = r.header("x-request-id");
  CHECK(rid.rfind("tg-", 0) == 0);

  auto reqs = h.upstream->requests();
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0].target == "/v1/chat/completions");
  CHECK(reqs[0].header("authorization") == "Bearer test-upstream-key");
  CHECK(reqs[0].header("x-custom-thing") == "kept");
  CHECK(reqs[0].header("x-hop").empty());
  CHECK(reqs[0].header("host") == "127.0.0.1:" + std::to_string(h.upstream->port()));
  CHECK(reqs[0].header("x-request-id") == rid);
  CHECK(reqs[0].body == tt::chat_body("gpt-4.1"));  // body forwarded byte for byte

  h.flush();
  auto rows = h.rows("SELECT * FROM calls");
  REQUIRE(rows.size() == 1);
  auto& row = rows[0];
  CHECK(row["request_id"] == rid);
  CHECK(row["route"] == "chat_completions");
  CHECK(row["requested_model"] == "gpt-4.1");
  CHECK(row["status"] == "200");
  CHECK(row["stream"] == "0");
  CHECK(row["usage_source"] == "upstream");
  CHECK(row["priced"] == "1");
  CHECK(row["price_model"] == "gpt-4.1");
  CHECK(std::stoll(row["prompt_tokens"]) == usage["prompt_tokens"].get<long long>());
  CHECK(std::stoll(row["completion_tokens"]) == usage["completion_tokens"].get<long long>());
  double expected = (usage["prompt_tokens"].get<double>() * 2.0 + usage["completion_tokens"].get<double>() * 8.0) / 1e6;
  CHECK(std::stod(row["cost_usd"]) == Approx(expected).epsilon(1e-12));
  CHECK(row["upstream_request_id"].rfind("req_fake_", 0) == 0);
  CHECK(r.header("x-upstream-request-id") == row["upstream_request_id"]);
}

TEST_CASE("relay: the ledger keeps a client's model, user and request id bounded, the user from user, "
          "safety_identifier or metadata.user_id",
          "[relay]") {
  harness h;
  const std::string model = "m" + std::string(100'000, 'x');
  const std::string user = std::string(1'000, 'u');
  for (const bool stream : {false, true}) {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model, stream, R"(,"user":")" + user + "\""),
                           {{"x-request-id", std::string(201, 'r')}});
    REQUIRE(r.status == 200);
    CHECK(r.header("x-request-id").rfind("tg-", 0) == 0);  // over 200 bytes: tollgate's own id
  }
  REQUIRE(h.upstream->requests().size() == 2);
  CHECK(h.upstream->requests()[0].body.find(model) != std::string::npos);  // sent whole
  h.flush();
  const auto rows = h.rows("SELECT * FROM calls ORDER BY id");
  REQUIRE(rows.size() == 2);
  for (const auto& row : rows) {
    CHECK(row.at("requested_model") == model.substr(0, 256));
    CHECK(row.at("served_model") == model.substr(0, 256));
    CHECK(row.at("user") == user.substr(0, 256));
    CHECK(row.at("request_id").rfind("tg-", 0) == 0);
  }
  // Cut between characters: byte 256 of these is inside a 2-byte character, so 255 are kept.
  std::string wide = "x";
  for (int i = 0; i < 200; ++i) wide += "\xC3\xA9";
  REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(wide, false, R"(,"user":")" + wide + "\""))
              .status == 200);
  h.flush();
  const auto cut = h.rows("SELECT requested_model, served_model, user FROM calls ORDER BY id DESC LIMIT 1");
  REQUIRE(cut.size() == 1);
  for (const char* column : {"requested_model", "served_model", "user"}) CHECK(cut[0].at(column) == wide.substr(0, 255));
  // Without `user`: OpenAI's safety_identifier, or Anthropic's metadata.user_id.
  REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", false, R"(,"safety_identifier":"sid-7")"))
              .status == 200);
  REQUIRE(tt::post_json(h.port(), "/v1/messages",
                        R"({"model":"claude-sonnet-4.5","max_tokens":16,"metadata":{"user_id":"u-9"},"messages":[{"role":"user","content":"hi"}]})")
              .status == 200);
  h.flush();
  CHECK(h.query_text("SELECT group_concat(user, ',') FROM (SELECT user FROM calls WHERE id > 3 ORDER BY id)") == "sid-7,u-9");
}

TEST_CASE("relay: cached and reasoning tokens are priced once each", "[relay]") {
  harness h;
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"),
                         {{"x-fake-cached-tokens", "8"}, {"x-fake-reasoning-tokens", "3"}});
  REQUIRE(r.status == 200);
  auto u = json::parse(r.body)["usage"];
  h.flush();
  auto row = h.rows("SELECT * FROM calls")[0];
  CHECK(row["cached_tokens"] == "8");
  CHECK(row["reasoning_tokens"] == "3");
  double p = u["prompt_tokens"].get<double>(), c = u["completion_tokens"].get<double>();
  CHECK(std::stod(row["cost_usd"]) == Approx(((p - 8) * 2.0 + 8 * 0.5 + c * 8.0) / 1e6).epsilon(1e-12));
}

// Claude through a relay's OpenAI-compatible API reports its cache writes in the usage
// (OpenRouter's prompt_tokens_details.cache_write_tokens here); they bill at 1.25x input.
TEST_CASE("relay: a relayed Claude chat call's cache writes are billed at the write price", "[relay]") {
  harness h;
  const tt::headers knobs = {{"x-fake-cached-tokens", "200"}, {"x-fake-cache-creation-tokens", "1000"}};
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("claude-sonnet-4-5"), knobs);
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body)["usage"]["prompt_tokens_details"]["cache_write_tokens"] == 1000);
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("claude-sonnet-4-5", true), knobs);
  REQUIRE(s.status() == 200);
  s.read_all();
  CHECK(s.ended_cleanly());
  h.flush();
  auto rows = h.rows("SELECT * FROM calls ORDER BY id");
  REQUIRE(rows.size() == 2);
  for (auto& row : rows) {
    CHECK(row["cached_tokens"] == "200");
    CHECK(row["cache_write_tokens"] == "1000");
    const double p = std::stod(row["prompt_tokens"]), c = std::stod(row["completion_tokens"]);
    CHECK(p >= 1200);
    CHECK(std::stod(row["cost_usd"]) ==
          Approx(((p - 1200) * 3.0 + 200 * 0.30 + 1000 * 3.75 + c * 15.0) / 1e6).epsilon(1e-12));
  }
}

namespace {
// One chat call of each model, non-stream then streamed, all answered; the rows flushed.
void chat_each_both_ways(harness& h, std::initializer_list<const char*> models) {
  for (const char* model : models) {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model));
    REQUIRE(r.status == 200);
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body(model, true));
    REQUIRE(s.status() == 200);
    s.read_all();
    CHECK(s.ended_cleanly());
  }
  h.flush();
}
}  // namespace

// DeepSeek-style time-of-day prices: a call made outside the entry's peak hours is billed at its
// off_peak tier and ledgered with service_tier "off_peak"; one inside them at the entry's prices.
TEST_CASE("relay: a call outside its entry's peak hours is billed at the off-peak tier", "[relay]") {
  tt::temp_dir prices;
  {
    // "peak-all" is in its peak hours all day; "peak-other" in two hours at least eight away from now.
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    const auto hour = std::chrono::duration_cast<std::chrono::hours>(now).count() % 24;
    const auto start = (hour + 10) % 22;
    char other[16];
    std::snprintf(other, sizeof other, "%02d:00-%02d:00", static_cast<int>(start), static_cast<int>(start + 2));
    std::ofstream f(prices.path + "/prices.yaml");
    f << "models:\n"
         "  peak-all: { input: 2.00, output: 8.00, off_peak: 0.5, peak_hours_utc: [\"00:00-24:00\"] }\n"
         "  peak-other: { input: 2.00, output: 8.00, off_peak: 0.5, peak_hours_utc: [\""
      << other << "\"] }\n";
  }
  harness h({.tweak = [&](tollgate::config& c) { c.prices_file = prices.path + "/prices.yaml"; }});
  chat_each_both_ways(h, {"peak-all", "peak-other"});
  auto rows = h.rows("SELECT * FROM calls ORDER BY start_ms, id");
  REQUIRE(rows.size() == 4);
  for (auto& row : rows) {
    INFO(row["price_model"]);
    const bool off = row["price_model"] == "peak-other";
    CHECK(row["service_tier"] == (off ? "off_peak" : "default"));  // the fake upstream names "default"
    const double p = std::stod(row["prompt_tokens"]), c = std::stod(row["completion_tokens"]);
    CHECK(p > 0);
    CHECK(std::stod(row["cost_usd"]) == Approx((off ? 0.5 : 1.0) * (p * 2.0 + c * 8.0) / 1e6).epsilon(1e-12));
  }
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE price_model = 'peak-other'") == 2);
}

// Scheduled price changes (prices.yaml `changes`): a call is billed at the version in effect
// when it started; a change not yet due prices nothing.
TEST_CASE("relay: a call is billed at the prices in effect when it started (scheduled changes)", "[relay]") {
  tt::temp_dir prices;
  {
    std::ofstream f(prices.path + "/prices.yaml");
    f << "models:\n"
         "  changed: { input: 2.00, output: 8.00, changes: [ { from: 2020-01-01, input: 1.00, output: 4.00 } ] }\n"
         "  not-yet:\n"
         "    input: 2.00\n"
         "    output: 8.00\n"
         "    changes:\n"
         "      - { from: 2020-01-01, output: 6.00 }\n"
         "      - { from: 2100-01-01, input: 20.00, output: 80.00 }\n";
  }
  harness h({.tweak = [&](tollgate::config& c) { c.prices_file = prices.path + "/prices.yaml"; }});
  chat_each_both_ways(h, {"changed", "not-yet"});
  auto rows = h.rows("SELECT * FROM calls ORDER BY start_ms, id");
  REQUIRE(rows.size() == 4);
  for (auto& row : rows) {
    INFO(row["price_model"]);
    const bool changed = row["price_model"] == "changed";
    const double p = std::stod(row["prompt_tokens"]), c = std::stod(row["completion_tokens"]);
    CHECK(p > 0);
    CHECK(row["priced"] == "1");
    CHECK(std::stod(row["cost_usd"]) == Approx((changed ? p * 1.0 + c * 4.0 : p * 2.0 + c * 6.0) / 1e6).epsilon(1e-12));
  }
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE price_model = 'not-yet'") == 2);
}

// A relay that bills its own prices (OpenRouter, Perplexity) states each call's cost in its usage.
// By default (reported_cost: fallback) that figure prices a call the table cannot, which would
// otherwise be ledgered at $0; `prefer` takes it for every call; `ignore` never.
TEST_CASE("relay: a cost the upstream reports prices what the table does not, or everything with prefer",
          "[relay]") {
  const tt::headers cost_42 = {{"x-fake-usage-extra", R"({"cost":0.0042,"is_byok":false})"}};
  const auto calls = [&](tt::harness& h) {
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("qwen/qwen3-235b-a22b"), cost_42).status == 200);
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("qwen/qwen3-235b-a22b", true), cost_42);
    REQUIRE(s.status() == 200);
    s.read_all();
    CHECK(s.ended_cleanly());
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"), cost_42).status == 200);
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("qwen/qwen3-235b-a22b")).status == 200);  // no report
    h.flush();
    return h.rows("SELECT requested_model, stream, priced, COALESCE(price_model, '') AS price_model, cost_usd, "
                  "prompt_tokens, completion_tokens FROM calls ORDER BY id");
  };
  const auto table_cost = [](std::map<std::string, std::string>& r) {  // gpt-4.1 at $2 / $8
    return (std::stod(r["prompt_tokens"]) * 2.0 + std::stod(r["completion_tokens"]) * 8.0) / 1e6;
  };
  SECTION("fallback (the default)") {
    tt::harness h;
    auto rows = calls(h);
    REQUIRE(rows.size() == 4);
    for (int i : {0, 1}) {
      INFO("row " << i);
      CHECK(rows[i]["priced"] == "1");
      CHECK(rows[i]["price_model"] == "");  // no entry priced it
      CHECK(std::stod(rows[i]["cost_usd"]) == Approx(0.0042).epsilon(1e-12));
    }
    CHECK(rows[1]["stream"] == "1");
    CHECK(rows[2]["price_model"] == "gpt-4.1");  // the table prices it: the report is not used
    CHECK(std::stod(rows[2]["cost_usd"]) == Approx(table_cost(rows[2])).epsilon(1e-12));
    CHECK(rows[3]["priced"] == "0");
    CHECK(std::stod(rows[3]["cost_usd"]) == 0);
    CHECK(h.metric_sum("tollgate_unpriced_requests_total") == 1);
    CHECK(h.metric_sum("tollgate_spend_usd_total") == Approx(2 * 0.0042 + table_cost(rows[2])).epsilon(1e-9));
  }
  SECTION("a LiteLLM proxy's x-litellm-response-cost header, on whole replies") {
    tt::harness h;
    const auto header = [](const std::string& v) {
      return tt::headers{{"x-fake-response-headers", R"({"x-litellm-response-cost": ")" + v + R"("})"}};
    };
    const std::string model = "qwen/qwen3-235b-a22b";
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model), header("0.0031")).status == 200);
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model), header("0")).status == 200);  // not priced there either
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model), header("n/a")).status == 200);
    tt::headers both = header("0.0031");
    both.emplace_back("x-fake-usage-extra", R"({"cost":0.0042})");
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model), both).status == 200);  // the usage's comes first
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body(model, true), header("0.0031"));
    REQUIRE(s.status() == 200);
    s.read_all();  // sent before the tokens: not the stream's cost
    h.flush();
    auto rows = h.rows("SELECT priced, cost_usd FROM calls ORDER BY id");
    REQUIRE(rows.size() == 5);
    CHECK(std::stod(rows[0]["cost_usd"]) == Approx(0.0031).epsilon(1e-12));
    CHECK(rows[0]["priced"] == "1");
    for (int i : {1, 2, 4}) {
      INFO("row " << i);
      CHECK(rows[i]["priced"] == "0");
      CHECK(std::stod(rows[i]["cost_usd"]) == 0);
    }
    CHECK(std::stod(rows[3]["cost_usd"]) == Approx(0.0042).epsilon(1e-12));
  }
  SECTION("prefer") {
    tt::harness h({.tweak = [](tollgate::config& c) { c.upstream.reported_cost = tollgate::reported_cost_use::prefer; }});
    auto rows = calls(h);
    REQUIRE(rows.size() == 4);
    CHECK(rows[2]["price_model"] == "gpt-4.1");
    CHECK(std::stod(rows[2]["cost_usd"]) == Approx(0.0042).epsilon(1e-12));
    CHECK(std::stod(rows[0]["cost_usd"]) == Approx(0.0042).epsilon(1e-12));
  }
  SECTION("ignore") {
    tt::harness h({.tweak = [](tollgate::config& c) { c.upstream.reported_cost = tollgate::reported_cost_use::ignore; }});
    auto rows = calls(h);
    REQUIRE(rows.size() == 4);
    for (int i : {0, 1, 3}) {
      INFO("row " << i);
      CHECK(rows[i]["priced"] == "0");
      CHECK(std::stod(rows[i]["cost_usd"]) == 0);
    }
    CHECK(std::stod(rows[2]["cost_usd"]) == Approx(table_cost(rows[2])).epsilon(1e-12));
  }
}

TEST_CASE("relay: flex and priority calls are billed at their tier's prices and ledgered with it", "[relay]") {
  harness h;
  auto flex = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-5", false, R"(,"service_tier":"flex")"));
  REQUIRE(flex.status == 200);
  CHECK(json::parse(flex.body)["service_tier"] == "flex");
  auto plain = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-5"));
  REQUIRE(plain.status == 200);
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-5", true, R"(,"service_tier":"flex")"));
  REQUIRE(s.status() == 200);
  s.read_all();
  CHECK(s.ended_cleanly());
  auto prio = tt::post_json(h.port(), "/v1/responses", R"({"model":"o3","input":"hi","service_tier":"priority"})");
  REQUIRE(prio.status == 200);
  h.flush();
  auto rows = h.rows("SELECT * FROM calls ORDER BY id");
  REQUIRE(rows.size() == 4);
  const auto cost = [](std::map<std::string, std::string>& r, double in, double out) {
    return (std::stod(r["prompt_tokens"]) * in + std::stod(r["completion_tokens"]) * out) / 1e6;
  };
  CHECK(rows[0]["service_tier"] == "flex");
  CHECK(std::stod(rows[0]["cost_usd"]) == Approx(cost(rows[0], 0.625, 5.00)).epsilon(1e-12));
  CHECK(rows[1]["service_tier"] == "default");
  CHECK(std::stod(rows[1]["cost_usd"]) == Approx(cost(rows[1], 1.25, 10.00)).epsilon(1e-12));
  CHECK(rows[2]["stream"] == "1");
  CHECK(rows[2]["service_tier"] == "flex");
  CHECK(std::stod(rows[2]["cost_usd"]) == Approx(cost(rows[2], 0.625, 5.00)).epsilon(1e-12));
  CHECK(rows[3]["route"] == "responses");
  CHECK(rows[3]["service_tier"] == "priority");
  CHECK(std::stod(rows[3]["cost_usd"]) == Approx(cost(rows[3], 3.50, 14.00)).epsilon(1e-12));
}

TEST_CASE("relay: a Responses call's hosted web and file searches are billed per call, stream and not", "[relay]") {
  struct tool_case {
    std::string tool, item;
    int item_index;
    std::string web_searches;
    double usd;  // the fake's calls: one web search at $10 per 1,000, two file searches at $2.50 per 1,000
  };
  for (const tool_case& c : {tool_case{R"({"type":"web_search"})", "web_search_call", 0, "1", 0.01},
                             tool_case{R"({"type":"file_search","vector_store_ids":["vs_1"]})", "file_search_call", 1, "0", 0.005}}) {
    INFO(c.item);
    harness h;
    const std::string body = R"({"model":"gpt-4.1","input":"news?","tools":[)" + c.tool + "]";
    auto r = tt::post_json(h.port(), "/v1/responses", body + "}");
    REQUIRE(r.status == 200);
    CHECK(json::parse(r.body)["output"][c.item_index]["type"] == c.item);
    tt::stream_client s(h.port(), "/v1/responses", body + R"(,"stream":true})");
    REQUIRE(s.status() == 200);
    s.read_all();
    CHECK(s.ended_cleanly());
    h.flush();
    auto rows = h.rows("SELECT * FROM calls ORDER BY id");
    REQUIRE(rows.size() == 2);
    for (auto& row : rows) {
      CHECK(row["web_search_requests"] == c.web_searches);
      const double tokens = (std::stod(row["prompt_tokens"]) * 2.0 + std::stod(row["completion_tokens"]) * 8.0) / 1e6;
      CHECK(std::stod(row["cost_usd"]) == Approx(tokens + c.usd).epsilon(1e-12));
    }
  }
}

TEST_CASE("relay: a batch created through tollgate is metered once, at batch prices, when a poll sees it ended",
          "[relay]") {
  harness h;
  auto created = tt::post_json(h.port(), "/v1/batches",
                               R"({"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h"})");
  REQUIRE(created.status == 200);
  const std::string id = json::parse(created.body)["id"];
  CHECK(tt::request(h.port(), "GET", "/v1/batches/" + id).status == 200);            // in progress
  CHECK(tt::request(h.port(), "POST", "/v1/batches/" + id + "/cancel").status == 200);  // cancelling
  auto done = tt::request(h.port(), "GET", "/v1/batches/" + id, "", {{"x-fake-batch-status", "completed"}});
  REQUIRE(done.status == 200);
  CHECK(json::parse(done.body)["usage"]["input_tokens"] == 100000);
  CHECK(tt::request(h.port(), "GET", "/v1/batches/" + id, "", {{"x-fake-batch-status", "completed"}}).status == 200);
  // A batch created elsewhere: its usage was never this tollgate's to meter.
  CHECK(tt::request(h.port(), "GET", "/v1/batches/batch_other", "", {{"x-fake-batch-status", "completed"}}).status == 200);
  h.flush();
  auto rows = h.rows("SELECT * FROM calls ORDER BY id");
  REQUIRE(rows.size() == 6);
  for (std::size_t i : {0, 1, 2, 4, 5}) {
    INFO("row " << i);
    CHECK(rows[i]["usage_source"] == "none");
    CHECK(std::stod(rows[i]["cost_usd"]) == 0);
  }
  auto& m = rows[3];
  CHECK(m["usage_source"] == "upstream");
  CHECK(m["service_tier"] == "batch");
  CHECK(m["served_model"] == "gpt-4.1-mini-2025-04-14");
  CHECK(m["price_model"] == "gpt-4.1-mini");
  CHECK(m["prompt_tokens"] == "100000");
  CHECK(m["cached_tokens"] == "20000");
  CHECK(m["completion_tokens"] == "40000");
  // gpt-4.1-mini at half price: 80k uncached x $0.20, 20k cached x $0.05, 40k out x $0.80 per 1M.
  CHECK(std::stod(m["cost_usd"]) == Approx((80'000 * 0.20 + 20'000 * 0.05 + 40'000 * 0.80) / 1e6).epsilon(1e-12));
}

TEST_CASE("relay: a batch and a background response created before a restart are still metered once after it",
          "[relay]") {
  tt::temp_dir shared;
  auto tweak = [&](tollgate::config& c) { c.ledger_path = shared.path + "/ledger.db"; };
  std::string batch_id, response_id;
  {
    tt::harness h({.tweak = tweak});
    auto created = tt::post_json(h.port(), "/v1/batches", R"({"input_file_id":"file-abc","endpoint":"/v1/chat/completions"})");
    REQUIRE(created.status == 200);
    batch_id = json::parse(created.body)["id"];
    auto queued = tt::post_json(h.port(), "/v1/responses", R"({"model":"gpt-4.1","input":"hi","background":true})");
    REQUIRE(queued.status == 200);
    response_id = json::parse(queued.body)["id"];
    REQUIRE(!response_id.empty());
  }  // a clean stop: the pending ids are saved
  tt::harness h({.tweak = tweak});
  CHECK(tt::request(h.port(), "GET", "/v1/batches/" + batch_id, "", {{"x-fake-batch-status", "completed"}}).status == 200);
  CHECK(tt::request(h.port(), "GET", "/v1/batches/" + batch_id, "", {{"x-fake-batch-status", "completed"}}).status == 200);
  CHECK(tt::request(h.port(), "GET", "/v1/responses/" + response_id).status == 200);
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE service_tier = 'batch' AND usage_source = 'upstream'") == 1);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE method = 'GET' AND route = 'other' AND usage_source = 'upstream'") == 2);
}

// A batch or background response is metered by a later retrieval, maybe hours later and past a
// scheduled price change: billed at the prices in effect when its creating call started, as any
// call is. The pending id keeps that time, across a restart too.
TEST_CASE("relay: a batch and a background response are billed at the prices of their creation, not of the poll",
          "[relay]") {
  using namespace std::chrono;
  const std::int64_t now_ms = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  // A change a day ago (prices.yaml takes minutes); the objects are made to look two days old.
  const std::time_t change_s = static_cast<std::time_t>(now_ms / 1000 - 86'400);
  std::tm tm{};
  gmtime_r(&change_s, &tm);
  char from[32];
  std::strftime(from, sizeof from, "%Y-%m-%dT%H:%MZ", &tm);
  tt::temp_dir shared;
  {
    std::ofstream f(shared.path + "/prices.yaml");
    f << "models:\n"
         "  gpt-4.1-mini: { input: 0.40, cached_input: 0.10, output: 1.60, aliases: [gpt-4.1-mini-2025-04-14],\n"
         "                  changes: [ { from: " << from << ", input: 4.00, cached_input: 1.00, output: 16.00 } ] }\n"
         "  gpt-4.1: { input: 2.00, cached_input: 0.50, output: 8.00, aliases: [gpt-4.1-2025-04-14],\n"
         "             changes: [ { from: " << from << ", input: 20.00, cached_input: 5.00, output: 80.00 } ] }\n";
  }
  auto tweak = [&](tollgate::config& c) {
    c.ledger_path = shared.path + "/ledger.db";
    c.prices_file = shared.path + "/prices.yaml";
  };
  // gpt-4.1-mini's batch (the fake's usage: 100k in, 20k of them cached, 40k out) at half price,
  // and gpt-4.1's background response (1,000 in, 500 out).
  const auto batch_usd = [](double in, double cached, double out) { return (80'000 * in + 20'000 * cached + 40'000 * out) / 2e6; };
  const auto response_usd = [](double in, double out) { return (1'000 * in + 500 * out) / 1e6; };
  const auto create = [](tt::harness& h) {
    auto batch = tt::post_json(h.port(), "/v1/batches", R"({"input_file_id":"file-abc","endpoint":"/v1/chat/completions"})");
    auto queued = tt::post_json(h.port(), "/v1/responses", R"({"model":"gpt-4.1","input":"hi","background":true})");
    REQUIRE(batch.status == 200);
    REQUIRE(queued.status == 200);
    return std::pair<std::string, std::string>{json::parse(batch.body)["id"], json::parse(queued.body)["id"]};
  };
  const auto poll = [](tt::harness& h, const std::pair<std::string, std::string>& ids) {
    CHECK(tt::request(h.port(), "GET", "/v1/batches/" + ids.first, "", {{"x-fake-batch-status", "completed"}}).status == 200);
    CHECK(tt::request(h.port(), "GET", "/v1/responses/" + ids.second).status == 200);
    h.flush();
  };
  // Both retrievals are route other; their price entries tell them apart.
  const std::string metered = "SELECT cost_usd FROM calls WHERE method = 'GET' AND usage_source = 'upstream' AND price_model = ";
  std::pair<std::string, std::string> old_ids;
  {
    tt::harness h({.tweak = tweak});
    // Created and polled now: today's prices.
    poll(h, create(h));
    CHECK(h.query_double(metered + "'gpt-4.1-mini'") == Approx(batch_usd(4.00, 1.00, 16.00)).epsilon(1e-12));
    CHECK(h.query_double(metered + "'gpt-4.1'") == Approx(response_usd(20.00, 80.00)).epsilon(1e-12));
    old_ids = create(h);
  }  // a clean stop: the pending ids are saved, each with its creating call's start
  {
    tt::harness h({.tweak = tweak});
    CHECK(h.query_int("SELECT COUNT(*) FROM pending_objects p JOIN calls c ON c.start_ms = p.created_ms AND "
                      "c.method = 'POST' AND c.route = CASE p.kind WHEN 'batch' THEN 'other' ELSE 'responses' END") == 2);
  }
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open((shared.path + "/ledger.db").c_str(), &db) == SQLITE_OK);
    const std::string sql = "UPDATE pending_objects SET created_ms = " + std::to_string(now_ms - 2 * 86'400'000);
    CHECK(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  // Polled after the change: the prices of two days ago, once each.
  tt::harness h({.tweak = tweak});
  poll(h, old_ids);
  poll(h, old_ids);
  REQUIRE(h.query_int("SELECT COUNT(*) FROM calls WHERE method = 'GET' AND usage_source = 'upstream'") == 4);
  CHECK(h.query_double(metered + "'gpt-4.1-mini' ORDER BY id DESC LIMIT 1") == Approx(batch_usd(0.40, 0.10, 1.60)).epsilon(1e-12));
  CHECK(h.query_double(metered + "'gpt-4.1' ORDER BY id DESC LIMIT 1") == Approx(response_usd(2.00, 8.00)).epsilon(1e-12));
}

TEST_CASE("relay: an Anthropic message batch is metered once, from its results, at batch prices", "[relay]") {
  harness h;
  const tt::headers anthropic = {{"anthropic-version", "2023-06-01"}};
  auto created = tt::request(h.port(), "POST", "/v1/messages/batches",
                             R"({"requests":[{"custom_id":"first","params":{"model":"claude-sonnet-4-5","max_tokens":9,)"
                             R"("messages":[{"role":"user","content":"hi"}]}}]})",
                             {{"anthropic-version", "2023-06-01"}, {"content-type", "application/json"}});
  REQUIRE(created.status == 200);
  const std::string id = json::parse(created.body)["id"];
  auto batch = tt::request(h.port(), "GET", "/v1/messages/batches/" + id, "", anthropic);
  REQUIRE(batch.status == 200);
  CHECK(json::parse(batch.body)["results_url"] == "/v1/messages/batches/" + id + "/results");
  for (int i = 0; i < 2; ++i) {  // downloaded twice: metered once
    auto results = tt::request(h.port(), "GET", "/v1/messages/batches/" + id + "/results", "", anthropic);
    REQUIRE(results.status == 200);
    CHECK(results.body.find(R"("custom_id":"second")") != std::string::npos);
  }
  // The results of a batch created elsewhere are not this tollgate's to meter.
  REQUIRE(tt::request(h.port(), "GET", "/v1/messages/batches/msgbatch_other/results", "", anthropic).status == 200);
  h.flush();
  auto rows = h.rows("SELECT * FROM calls ORDER BY id");
  REQUIRE(rows.size() == 5);
  auto& m = rows[2];
  CHECK(m["usage_source"] == "upstream");
  CHECK(m["service_tier"] == "batch");
  CHECK(m["price_model"] == "claude-sonnet-4.5");
  CHECK(m["prompt_tokens"] == "40");  // two results of 20 input and 6 output tokens
  CHECK(m["completion_tokens"] == "12");
  CHECK(std::stod(m["cost_usd"]) == Approx((40 * 1.50 + 12 * 7.50) / 1e6).epsilon(1e-12));
  for (std::size_t i : {0, 1, 3, 4}) {
    INFO("row " << i);
    CHECK(rows[i]["usage_source"] == "none");
  }
}

TEST_CASE("relay: a stream without include_usage is metered but the client sees no usage chunk", "[relay][stream]") {
  harness h;
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4o-mini", true));
  REQUIRE(s.status() == 200);
  CHECK(s.header("content-type").find("text/event-stream") != std::string::npos);
  auto all = s.read_all();
  CHECK(s.ended_cleanly());
  CHECK(all.find("data: [DONE]") != std::string::npos);
  for (auto& chunk : sse_data(all)) {
    CHECK(!chunk.contains("usage"));
    CHECK(!chunk["choices"].empty());
  }
  auto up = h.upstream->requests();
  REQUIRE(up.size() == 1);
  auto sent = json::parse(up[0].body);
  CHECK(sent["stream_options"]["include_usage"] == true);
  h.flush();
  auto row = h.rows("SELECT * FROM calls")[0];
  CHECK(row["stream"] == "1");
  CHECK(row["usage_source"] == "upstream");
  CHECK(std::stoll(row["completion_tokens"]) > 0);
  CHECK(std::stod(row["cost_usd"]) > 0);
  CHECK(row["aborted"] == "0");
  CHECK(row["first_byte_ms"] != "<null>");
}

TEST_CASE("relay: a stream with include_usage keeps its usage chunk", "[relay][stream]") {
  harness h;
  tt::stream_client s(h.port(), "/v1/chat/completions",
                      tt::chat_body("gpt-4o-mini", true, R"(,"stream_options":{"include_usage":true})"));
  auto all = s.read_all();
  auto chunks = sse_data(all);
  REQUIRE(!chunks.empty());
  CHECK(chunks.back()["choices"].empty());
  CHECK(chunks.back()["usage"]["completion_tokens"].get<int>() > 0);
  CHECK(h.upstream->requests()[0].body == tt::chat_body("gpt-4o-mini", true, R"(,"stream_options":{"include_usage":true})"));
  h.flush();
  CHECK(h.query_int("SELECT completion_tokens FROM calls") == chunks.back()["usage"]["completion_tokens"].get<int>());
}

TEST_CASE("relay: usage on the last content chunk or on every chunk is taken once", "[relay][stream]") {
  harness h;
  for (std::string mode : {"last-chunk", "every-chunk"}) {
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4o-mini", true), {{"x-fake-usage", mode}, {"x-fake-chunks", "5"}});
    s.read_all();
  }
  h.flush();
  auto rows = h.rows("SELECT completion_tokens, usage_source FROM calls ORDER BY id");
  REQUIRE(rows.size() == 2);
  CHECK(rows[0]["usage_source"] == "upstream");
  CHECK(rows[1]["usage_source"] == "upstream");
  CHECK(rows[0]["completion_tokens"] == rows[1]["completion_tokens"]);
}

TEST_CASE("relay: tool calls pass through, stream and not", "[relay]") {
  harness h;
  std::string tools = R"(,"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}])";
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", false, tools));
  REQUIRE(r.status == 200);
  auto msg = json::parse(r.body)["choices"][0]["message"];
  CHECK(msg["tool_calls"][0]["function"]["name"] == "get_weather");
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true, tools));
  std::string args;
  for (auto& c : sse_data(s.read_all()))
    if (!c["choices"].empty() && c["choices"][0]["delta"].contains("tool_calls"))
      args += c["choices"][0]["delta"]["tool_calls"][0]["function"].value("arguments", "");
  CHECK(json::parse(args)["location"] == "Paris");
}

TEST_CASE("relay: gzip responses reach the client compressed and are still metered", "[relay]") {
  harness h;
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"),
                         {{"Accept-Encoding", "gzip"}, {"x-fake-gzip", "1"}});
  REQUIRE(r.status == 200);
  CHECK(r.header("content-encoding") == "gzip");
  CHECK(static_cast<unsigned char>(r.body[0]) == 0x1f);
  h.flush();
  CHECK(h.query_text("SELECT usage_source FROM calls") == "upstream");
  CHECK(h.query_int("SELECT prompt_tokens FROM calls") > 0);
}

TEST_CASE("relay: a metered call never lets the upstream pick br or zstd, pass-through keeps the client's list", "[relay]") {
  harness h;
  // What the OpenAI Python SDK sends when brotli and zstandard are installed (httpx).
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"),
                         {{"Accept-Encoding", "gzip, deflate, br, zstd"}, {"x-fake-gzip", "1"}});
  REQUIRE(r.status == 200);
  CHECK(r.header("content-encoding") == "gzip");
  auto only_br = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"), {{"Accept-Encoding", "br"}});
  REQUIRE(only_br.status == 200);
  auto other = tt::request(h.port(), "PUT", "/v1/files/abc", "payload",
                           {{"Content-Type", "text/plain"}, {"Accept-Encoding", "gzip, br"}});
  REQUIRE(other.status == 200);
  auto up = h.upstream->requests();
  REQUIRE(up.size() == 3);
  CHECK(up[0].header("accept-encoding") == "gzip, deflate");
  CHECK(up[1].header("accept-encoding").empty());  // nothing decodable offered: the answer comes plain
  CHECK(up[2].header("accept-encoding") == "gzip, br");  // not metered: untouched
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE route = 'chat_completions' AND usage_source = 'upstream'") == 2);
}

TEST_CASE("relay: a gzip or deflate request body is decoded, checked and forwarded decoded", "[relay]") {
  harness h({.tweak = [](tollgate::config& c) { c.max_body_bytes = 64 * 1024; }});
  const std::string body = tt::chat_body("gpt-4.1");
  int n = 0;
  for (auto [coding, bits] : {std::pair{"gzip", 31}, {"deflate", 15}, {"deflate", -15}, {"x-gzip", 31}}) {
    INFO(coding << " " << bits);
    auto r = tt::post_json(h.port(), "/v1/chat/completions", deflate_bytes(body, bits), {{"Content-Encoding", coding}});
    REQUIRE(r.status == 200);
    auto reqs = h.upstream->requests();
    REQUIRE(reqs.size() == static_cast<std::size_t>(++n));
    CHECK(reqs.back().body == body);  // the upstream gets JSON it can read...
    CHECK(reqs.back().header("content-encoding").empty());  // ...and is not told it is compressed
    CHECK(reqs.back().header("content-length") == std::to_string(body.size()));
  }
  // Not a coding tollgate decodes: named, not reported as malformed JSON.
  auto br = tt::post_json(h.port(), "/v1/chat/completions", body, {{"Content-Encoding", "br"}});
  CHECK(br.status == 415);
  CHECK(json::parse(br.body)["error"]["message"].get<std::string>().find("'br'") != std::string::npos);
  // Not gzip at all, and cut short.
  CHECK(tt::post_json(h.port(), "/v1/chat/completions", body, {{"Content-Encoding", "gzip"}}).status == 400);
  const std::string gz = deflate_bytes(body, 31);
  auto cut = tt::post_json(h.port(), "/v1/chat/completions", gz.substr(0, gz.size() / 2), {{"Content-Encoding", "gzip"}});
  CHECK(cut.status == 400);
  CHECK(cut.body.find("truncated") != std::string::npos);
  // 40 MB of JSON in ~40 KB of gzip: bounded by max_body_bytes decoded, not expanded whole.
  const std::string bomb = deflate_bytes(R"({"model":"gpt-4.1","messages":[{"role":"user","content":")" +
                                             std::string(40u << 20, 'a') + R"("}]})", 31);
  CHECK(bomb.size() < 64 * 1024);
  CHECK(tt::post_json(h.port(), "/v1/chat/completions", bomb, {{"Content-Encoding", "gzip"}}).status == 413);
  CHECK(h.upstream->requests().size() == 4);
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 8);  // refused calls are ledgered too
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE status = 200 AND usage_source = 'upstream'") == 4);
}

TEST_CASE("relay: completions, embeddings, responses and models routes", "[relay]") {
  harness h;
  CHECK(tt::post_json(h.port(), "/v1/completions", R"({"model":"gpt-4.1","prompt":"hi"})").status == 200);
  auto e = tt::post_json(h.port(), "/v1/embeddings", R"({"model":"text-embedding-3-small","input":["a","b"]})");
  CHECK(e.status == 200);
  auto resp = tt::post_json(h.port(), "/v1/responses", R"({"model":"gpt-4.1","input":"hi"})");
  CHECK(resp.status == 200);
  auto m = tt::request(h.port(), "GET", "/v1/models");
  CHECK(m.status == 200);
  CHECK(m.body.find("gpt-4.1") != std::string::npos);
  CHECK(tt::request(h.port(), "GET", "/v1/models/gpt-4.1").status == 200);
  CHECK(tt::request(h.port(), "GET", "/v1/models/nope").status == 404);
  tt::stream_client rs(h.port(), "/v1/responses", R"({"model":"gpt-4.1","input":"hi","stream":true})");
  auto all = rs.read_all();
  CHECK(all.find("response.completed") != std::string::npos);
  h.flush();
  // Rows are committed in completion order, which two workers may interleave: count, not index.
  CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 7);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE route = 'completions' AND usage_source = 'upstream'") == 1);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE route = 'embeddings' AND usage_source = 'upstream'") == 1);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE route = 'responses' AND usage_source = 'upstream'") == 2);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE route = 'responses' AND stream = 1") == 1);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE route = 'models' AND status = 200") == 2);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE route = 'models' AND status = 404") == 1);
}

TEST_CASE("relay: other /v1 paths pass through with method, query and body", "[relay]") {
  harness h;
  auto r = tt::request(h.port(), "PUT", "/v1/files/abc?purpose=x&y=1", "payload", {{"Content-Type", "text/plain"}});
  REQUIRE(r.status == 200);
  auto echo = json::parse(r.body);
  CHECK(echo["method"] == "PUT");
  CHECK(echo["body"] == "payload");
  auto up = h.upstream->requests();
  CHECK(up[0].target == "/v1/files/abc?purpose=x&y=1");
  h.flush();
  CHECK(h.query_text("SELECT route FROM calls") == "other");
}

TEST_CASE("relay: another method on a metered or models path is relayed unmetered, not refused", "[relay]") {
  harness h;
  // The OpenAI SDK's chat.completions.list() and models.delete(): same paths as metered calls.
  auto list = tt::request(h.port(), "GET", "/v1/chat/completions?limit=2&order=asc");
  REQUIRE(list.status == 200);
  auto page = json::parse(list.body);
  CHECK(page["object"] == "list");
  CHECK(page["data"][0]["id"] == "chatcmpl-stored-1");
  auto del = tt::request(h.port(), "DELETE", "/v1/models/ft:gpt-4.1:acme::x1");
  REQUIRE(del.status == 200);
  CHECK(json::parse(del.body)["deleted"] == true);
  auto up = h.upstream->requests();
  REQUIRE(up.size() == 2);
  CHECK(up[0].method == "GET");
  CHECK(up[0].target == "/v1/chat/completions?limit=2&order=asc");
  CHECK(up[1].method == "DELETE");
  CHECK(up[1].target == "/v1/models/ft:gpt-4.1:acme::x1");
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE route = 'other' AND status = 200 AND cost_usd = 0") == 2);
  // The stored completion's usage in the list is not a new call: nothing is metered, and a
  // pass-through call is not an unmetered one.
  CHECK(h.query_int("SELECT COALESCE(SUM(prompt_tokens), 0) FROM calls") == 0);
  CHECK(h.metric_sum("tollgate_unmetered_requests_total") == 0);
}

TEST_CASE("relay: usage in a retrieved or updated stored object is not metered again, new work is", "[relay]") {
  harness h;
  // A stored completion retrieved twice and updated, a batch polled twice: billed once, long ago.
  for (int i = 0; i < 2; ++i) {
    auto got = tt::request(h.port(), "GET", "/v1/chat/completions/chatcmpl-stored-1");
    REQUIRE(got.status == 200);
    CHECK(json::parse(got.body)["usage"]["prompt_tokens"] == 5);  // relayed untouched
    CHECK(tt::request(h.port(), "GET", "/v1/batches/batch_1").status == 200);
  }
  CHECK(tt::post_json(h.port(), "/v1/chat/completions/chatcmpl-stored-1", R"({"metadata":{"k":"v"}})").status == 200);
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE usage_source = 'none' AND prompt_tokens = 0") == 5);
  // An image made through a path tollgate does not know: its usage is new spend, metered.
  auto image = tt::post_json(h.port(), "/v1/images/generations", R"({"model":"gpt-image-1","prompt":"a gate"})");
  REQUIRE(image.status == 200);
  h.flush();
  CHECK(h.query_text("SELECT usage_source || ' ' || prompt_tokens || ' ' || completion_tokens FROM calls "
                     "ORDER BY id DESC LIMIT 1") == "upstream 12 4160");
  // Its model is read from the request (the reply names none), so a price can apply.
  CHECK(h.query_text("SELECT requested_model || ' ' || stream FROM calls ORDER BY id DESC LIMIT 1") == "gpt-image-1 0");
  // Streamed, the usage comes on image_generation.completed, and the stream is complete.
  tt::stream_client s(h.port(), "/v1/images/generations", R"({"model":"gpt-image-1","prompt":"a gate","stream":true})");
  const auto events = s.read_all();
  CHECK(events.find("image_generation.completed") != std::string::npos);
  CHECK(s.ended_cleanly());
  h.flush();
  CHECK(h.query_text("SELECT requested_model || ' ' || stream || ' ' || aborted || ' ' || COALESCE(error_kind, '-') || ' ' || "
                     "usage_source || ' ' || prompt_tokens || ' ' || completion_tokens FROM calls ORDER BY id DESC LIMIT 1") ==
        "gpt-image-1 1 0 - upstream 12 4160");
  // gpt-image-1 prices: 12 text input tokens at $5, 4,160 image output tokens at $40 per 1M.
  CHECK(h.query_double("SELECT cost_usd FROM calls ORDER BY id DESC LIMIT 1") ==
        Approx((12 * 5.0 + 4160 * 40.0) / 1e6).epsilon(1e-12));
}

TEST_CASE("relay: a background response streamed at its creation and cut is metered by its retrieval, once",
          "[relay]") {
  // OpenAI's resume pattern: responses.create({background: true, stream: true}), the connection
  // drops, the response runs on upstream; a retrieval (a resumed stream or a poll) sees it done.
  harness h;
  std::string id;
  {
    tt::stream_client s(h.port(), "/v1/responses", R"({"model":"gpt-4.1","input":"hi","background":true,"stream":true})",
                        {{"x-fake-chunks", "200"}, {"x-fake-chunk-interval-ms", "20"}});
    REQUIRE(s.status() == 200);
    std::string seen;
    while (seen.find("output_text.delta") == std::string::npos) {
      auto piece = s.next();
      REQUIRE(piece.has_value());
      seen += *piece;
    }
    const auto at = seen.find("\"id\":\"resp_bg_");
    REQUIRE(at != std::string::npos);
    id = seen.substr(at + 6, seen.find('"', at + 6) - at - 6);
    s.close();
  }
  only_row(h);
  // The cut create is not estimated: the response goes on, and its retrieval brings the usage.
  CHECK(h.query_text("SELECT aborted || ' ' || usage_source || ' ' || prompt_tokens FROM calls") == "1 none 0");
  for (int i = 0; i < 2; ++i) CHECK(tt::request(h.port(), "GET", "/v1/responses/" + id).status == 200);
  h.flush();
  CHECK(h.query_int("SELECT SUM(prompt_tokens) FROM calls") == 1000);  // the first retrieval only
  CHECK(h.query_int("SELECT SUM(completion_tokens) FROM calls") == 500);
}

TEST_CASE("relay: a background response is metered once, by the first retrieval that sees it finished",
          "[relay]") {
  harness h;
  auto created = tt::post_json(h.port(), "/v1/responses", R"({"model":"gpt-4.1","input":"hi","background":true})");
  REQUIRE(created.status == 200);
  const auto body = json::parse(created.body);
  CHECK(body["status"] == "queued");
  const std::string id = body["id"];
  const std::string path = "/v1/responses/" + id;
  // Still running: no usage yet. Finished: metered. Looked at again: not again.
  CHECK(tt::request(h.port(), "GET", path, {}, {{"x-fake-response-status", "in_progress"}}).status == 200);
  auto done = tt::request(h.port(), "GET", path);
  REQUIRE(done.status == 200);
  CHECK(json::parse(done.body)["usage"]["input_tokens"] == 1000);
  CHECK(tt::request(h.port(), "GET", path).status == 200);
  // A response tollgate did not see created is not metered (its creator's proxy metered it).
  CHECK(tt::request(h.port(), "GET", "/v1/responses/resp_bg_elsewhere").status == 200);
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 5);
  CHECK(h.query_text("SELECT route || ' ' || method || ' ' || prompt_tokens || ' ' || completion_tokens || ' ' || "
                     "reasoning_tokens || ' ' || price_model FROM calls WHERE usage_source = 'upstream'") ==
        "other GET 1000 500 200 gpt-4.1");
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE cost_usd > 0") == 1);
  CHECK(h.query_int("SELECT SUM(prompt_tokens) FROM calls") == 1000);
  CHECK(h.metric_sum("tollgate_unmetered_requests_total", "route=\"responses\"") == 1);  // the creation
}

namespace {
using ws_client = boost::beast::websocket::stream<boost::beast::tcp_stream>;
json next_event(ws_client& ws) {
  boost::beast::flat_buffer b;
  ws.read(b);
  return json::parse(boost::beast::buffers_to_string(b.data()));
}
// One response.create and what the fake upstream answers: the echo, three audio deltas, a
// transcript delta and response.done with usage.
void realtime_response(ws_client& ws) {
  ws.write(boost::asio::buffer(std::string(R"({"type":"response.create"})")));
  auto echo = next_event(ws);
  CHECK(echo["type"] == "echo");
  CHECK(echo["data"] == R"({"type":"response.create"})");
  for (int k = 0; k < 3; ++k) CHECK(next_event(ws)["type"] == "response.output_audio.delta");
  CHECK(next_event(ws)["type"] == "response.output_audio_transcript.delta");
  CHECK(next_event(ws)["type"] == "response.done");
}
}  // namespace

TEST_CASE("relay: a WebSocket session (Realtime API) is tunnelled with the upstream's key and ledgered once, metered",
          "[relay][websocket]") {
  harness h;
  net::io_context ioc;
  websocket::stream<beast::tcp_stream> ws(ioc);
  ws.next_layer().connect({net::ip::make_address("127.0.0.1"), h.port()});
  ws.set_option(websocket::stream_base::decorator([](websocket::request_type& r) {
    r.set(beast::http::field::authorization, "Bearer sk-client-key");
    r.set("OpenAI-Beta", "realtime=v1");
    // Node's ws offers compression; tollgate keeps the session uncompressed so it can read it.
    r.set(beast::http::field::sec_websocket_extensions, "permessage-deflate; client_max_window_bits");
  }));
  websocket::response_type res;
  ws.handshake(res, "127.0.0.1", "/v1/realtime?model=gpt-realtime");
  CHECK(res.result_int() == 101);
  CHECK(res[beast::http::field::sec_websocket_extensions].empty());
  CHECK(res["x-request-id"].starts_with("tg-"));
  CHECK(res["x-upstream-request-id"].starts_with("req_fake_"));
  auto next = [&ws] { return next_event(ws); };
  CHECK(next()["type"] == "session.created");
  ws.text(true);
  // Two responses, each answered by audio deltas (skipped by the meter), a transcript delta and
  // response.done with usage: metered, both summed in the session's one row.
  for (int r = 0; r < 2; ++r) realtime_response(ws);
  const std::string big(300 * 1024, 'a');  // many reads and writes each way
  ws.write(net::buffer(big));
  CHECK(next()["data"] == big);
  SECTION("the client closes") {
    ws.close(websocket::close_code::normal);
  }
  SECTION("the upstream closes") {
    ws.write(net::buffer(std::string("close")));
    beast::flat_buffer b;
    beast::error_code ec;
    ws.read(b, ec);
    CHECK(ec == websocket::error::closed);
    CHECK(ws.reason().code == websocket::close_code::normal);
  }
  SECTION("the client goes away without a close frame") {
    ws.next_layer().socket().close();
  }
  h.flush();
  auto rows = h.query_text(
      "SELECT route || ' ' || method || ' ' || status || ' ' || usage_source || ' ' || requested_model || ' ' || "
      "served_model || ' ' || price_model || ' ' || prompt_tokens || ' ' || completion_tokens || ' ' || cached_tokens "
      "FROM calls");
  CHECK(rows == "other GET 101 upstream gpt-realtime gpt-realtime gpt-realtime 2000 600 1200");
  // gpt-realtime, per response: text 100 in at $4, audio 300 at $32, cached 100 text + 500 audio at
  // $0.40, text 50 out at $16, audio 250 out at $64 (per 1M).
  const double per_response = (100 * 4.0 + 300 * 32.0 + 600 * 0.40 + 50 * 16.0 + 250 * 64.0) / 1e6;
  CHECK(h.query_double("SELECT cost_usd FROM calls") == Approx(2 * per_response));
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE latency_ms >= first_byte_ms AND first_byte_ms >= 0") == 1);
  auto up = h.upstream->requests();
  REQUIRE(up.size() == 1);
  CHECK(up[0].method == "GET");
  CHECK(up[0].target == "/v1/realtime?model=gpt-realtime");
  CHECK(up[0].header("authorization") == "Bearer test-upstream-key");  // never the client's
  CHECK(beast::iequals(up[0].header("upgrade"), "websocket"));
  CHECK(!up[0].header("sec-websocket-key").empty());
  CHECK(up[0].header("openai-beta") == "realtime=v1");
  CHECK(up[0].header("sec-websocket-extensions").empty());
}

TEST_CASE("relay: a Realtime session's row so far is kept while it runs, so a crash loses none of it",
          "[relay][websocket][durability]") {
  // The ledger file as a crash would leave it mid-session: a consistent copy (VACUUM INTO) taken
  // while the session runs; a tollgate started on the copy ledgers the session as it stood.
  harness h;
  const std::string crashed = h.dir.path + "/crashed.db";
  net::io_context ioc;
  websocket::stream<beast::tcp_stream> ws(ioc);
  ws.next_layer().connect({net::ip::make_address("127.0.0.1"), h.port()});
  ws.handshake("127.0.0.1", "/v1/realtime?model=gpt-realtime");
  CHECK(next_event(ws)["type"] == "session.created");
  ws.text(true);
  for (int r = 0; r < 2; ++r) realtime_response(ws);
  const double per_response = (100 * 4.0 + 300 * 32.0 + 600 * 0.40 + 50 * 16.0 + 250 * 64.0) / 1e6;
  // Saved within a second of each usage event (by the alert thread's pump): the saved row has
  // both responses.
  auto saved_cost = [&h]() -> double {
    if (h.query_int("SELECT COUNT(*) FROM sqlite_master WHERE name = 'open_sessions'") == 0) return -1;
    const std::string hex = h.query_text("SELECT COALESCE((SELECT hex(row) FROM open_sessions), '')");
    std::string bytes;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2) bytes += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    const auto row = tollgate::decode_usage_record(bytes);
    return row ? row->cost_usd : -1;
  };
  REQUIRE(harness::eventually([&] { return saved_cost() == Approx(2 * per_response); }));
  CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 0);
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(h.cfg.ledger_path.c_str(), &db) == SQLITE_OK);
    const std::string sql = "VACUUM INTO '" + crashed + "'";
    CHECK(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  ws.close(websocket::close_code::normal);
  h.flush();
  // The session ended: its own row is in the ledger, and the saved one goes at the next save.
  CHECK(h.query_text("SELECT COALESCE(error_kind, 'none') FROM calls") == "none");
  CHECK(harness::eventually([&] { return h.query_int("SELECT COUNT(*) FROM open_sessions") == 0; }));

  // A start on the file as the crash left it: the session's row, priced as it stood, once.
  harness after({.tweak = [&](tollgate::config& c) { c.ledger_path = crashed; }});
  after.flush();
  auto rows = after.rows("SELECT route, status, aborted, error_kind, usage_source, price_model, prompt_tokens, "
                         "completion_tokens, cost_usd FROM calls");
  REQUIRE(rows.size() == 1);
  CHECK(rows[0]["route"] == "other");
  CHECK(rows[0]["status"] == "101");
  CHECK(rows[0]["aborted"] == "1");
  CHECK(rows[0]["error_kind"] == "tollgate_restart");
  CHECK(rows[0]["usage_source"] == "upstream");
  CHECK(rows[0]["price_model"] == "gpt-realtime");
  CHECK(rows[0]["prompt_tokens"] == "2000");
  CHECK(rows[0]["completion_tokens"] == "600");
  CHECK(std::stod(rows[0]["cost_usd"]) == Approx(2 * per_response));
  CHECK(after.query_int("SELECT COUNT(*) FROM open_sessions") == 0);
  // Budgets warm-start from the ledger after the recovery: the session's spend counts.
  CHECK(after.metric_sum("tollgate_spend_usd_total") == Approx(2 * per_response));
}

TEST_CASE("relay: a Realtime session is charged as its responses complete and closed when a hard budget is spent",
          "[relay][websocket][budgets]") {
  const double per_response = (100 * 4.0 + 300 * 32.0 + 600 * 0.40 + 50 * 16.0 + 250 * 64.0) / 1e6;  // $0.02704
  harness h({.tweak = [&](tollgate::config& c) {
    c.policy.budgets = {tt::hard_daily_budget(0.04)};  // the second response spends it
  }});
  net::io_context ioc;
  websocket::stream<beast::tcp_stream> ws(ioc);
  ws.next_layer().connect({net::ip::make_address("127.0.0.1"), h.port()});
  ws.handshake("127.0.0.1", "/v1/realtime?model=gpt-realtime");
  auto next = [&ws] { return next_event(ws); };
  CHECK(next()["type"] == "session.created");
  ws.text(true);
  realtime_response(ws);
  // The first response is in the budget already, while the session runs.
  REQUIRE(tt::harness::eventually([&] {
    return h.metric_sum("tollgate_budget_spent_usd", "scope=\"global\"") == Approx(per_response);
  }));
  realtime_response(ws);
  // The second spent the budget: an error event, then a close frame (1008).
  const auto error = next();
  CHECK(error["type"] == "error");
  CHECK(error["error"]["code"] == "budget_exceeded");
  beast::flat_buffer b;
  beast::error_code ec;
  ws.read(b, ec);
  CHECK(ec == websocket::error::closed);
  CHECK(ws.reason().code == websocket::close_code::policy_error);
  h.flush();
  CHECK(h.query_text("SELECT status || ' ' || error_kind FROM calls") == "101 budget_exceeded");
  CHECK(h.query_double("SELECT cost_usd FROM calls") == Approx(2 * per_response));
  // Counted once: charged as it ran, settled for the rest (nothing).
  CHECK(h.metric_sum("tollgate_budget_spent_usd", "scope=\"global\"") == Approx(2 * per_response));
  // A new session is refused at its handshake.
  websocket::stream<beast::tcp_stream> again(ioc);
  again.next_layer().connect({net::ip::make_address("127.0.0.1"), h.port()});
  websocket::response_type refused;
  again.handshake(refused, "127.0.0.1", "/v1/realtime?model=gpt-realtime", ec);
  CHECK(ec);
  CHECK(refused.result_int() == 429);
}

namespace {
// One response.create over a Responses API WebSocket (GET /v1/responses) and the events the fake
// upstream answers with, up to the terminal one, which is returned.
json ws_response(ws_client& ws, const json& create) {
  ws.write(boost::asio::buffer(create.dump()));
  for (;;) {
    json e = next_event(ws);
    if (create.contains("stream_id")) CHECK(e["stream_id"] == create["stream_id"]);
    if (e["type"] == "response.completed" || e["type"] == "error") return e;
  }
}
// A text-mode WebSocket client on tollgate's `/v1/responses` (the Responses API's WebSocket mode),
// its handshake carrying `headers`; the handshake's answer in `res`.
std::unique_ptr<ws_client> open_responses_ws(boost::asio::io_context& ioc, std::uint16_t port,
                                             std::vector<std::pair<std::string, std::string>> headers,
                                             boost::beast::websocket::response_type& res,
                                             const std::string& target = "/v1/responses") {
  auto ws = std::make_unique<ws_client>(ioc);
  ws->next_layer().connect({boost::asio::ip::make_address("127.0.0.1"), port});
  ws->set_option(websocket::stream_base::decorator([headers](websocket::request_type& r) {
    for (const auto& [name, value] : headers) r.set(name, value);
  }));
  ws->handshake(res, "127.0.0.1", target);
  ws->text(true);
  return ws;
}
double gpt41_cost(const json& usage, double in, double cached, double out) {
  const double c = usage["input_tokens_details"]["cached_tokens"].get<double>();
  return ((usage["input_tokens"].get<double>() - c) * in + c * cached + usage["output_tokens"].get<double>() * out) / 1e6;
}
}  // namespace

TEST_CASE("relay: the Responses API over WebSocket (responses.connect) is tunnelled and its responses metered",
          "[relay][websocket]") {
  harness h;
  net::io_context ioc;
  websocket::response_type res;
  auto client = open_responses_ws(ioc, h.port(), {{"Authorization", "Bearer sk-client-key"}, {"x-fake-cached-tokens", "4"}}, res);
  ws_client& ws = *client;
  CHECK(res.result_int() == 101);
  CHECK(res["x-request-id"].starts_with("tg-"));
  // Two responses at two models, one on a lane (stream_id), each priced at its own model.
  const json first = ws_response(ws, {{"type", "response.create"}, {"model", "gpt-4.1"}, {"input", "Say hello."}});
  REQUIRE(first["type"] == "response.completed");
  CHECK(first["response"]["model"] == "gpt-4.1");
  const json second = ws_response(ws, {{"type", "response.create"}, {"model", "gpt-4.1-mini"}, {"input", "Now goodbye."},
                                       {"stream_id", "lane-1"}, {"previous_response_id", first["response"]["id"]}});
  REQUIRE(second["type"] == "response.completed");
  CHECK(ws_response(ws, {{"type", "response.steer"}})["type"] == "error");  // the upstream's answer, relayed
  ws.close(websocket::close_code::normal);
  h.flush();
  CHECK(h.query_text("SELECT route || ' ' || method || ' ' || status || ' ' || usage_source || ' ' || served_model || ' ' || "
                     "price_model FROM calls") == "responses GET 101 upstream gpt-4.1 gpt-4.1");
  // The handshake names no model: the first response.create's, read from the client's (masked) frames.
  CHECK(h.query_text("SELECT requested_model FROM calls") == "gpt-4.1");
  const json& u1 = first["response"]["usage"];
  const json& u2 = second["response"]["usage"];
  CHECK(h.query_int("SELECT prompt_tokens FROM calls") == u1["input_tokens"].get<int>() + u2["input_tokens"].get<int>());
  CHECK(h.query_int("SELECT cached_tokens FROM calls") == 8);
  CHECK(h.query_int("SELECT completion_tokens FROM calls") == u1["output_tokens"].get<int>() + u2["output_tokens"].get<int>());
  // gpt-4.1 $2 / $0.50 cached / $8 per 1M, gpt-4.1-mini $0.40 / $0.10 / $1.60.
  CHECK(h.query_double("SELECT cost_usd FROM calls") == Approx(gpt41_cost(u1, 2.0, 0.5, 8.0) + gpt41_cost(u2, 0.4, 0.1, 1.6)));
  auto up = h.upstream->requests();
  REQUIRE(up.size() == 1);
  CHECK(up[0].method == "GET");
  CHECK(up[0].target == "/v1/responses");
  CHECK(up[0].header("authorization") == "Bearer test-upstream-key");
  CHECK(beast::iequals(up[0].header("upgrade"), "websocket"));
}

// The Live API (openai-node 7.x LiveWS): the session's audio seconds at its model's per_minute
// price, its delegated responses at their own model; a sideband socket (/attach) on a session
// metered here is relayed without usage (nothing counted twice), one on another session
// (WebRTC: its media never passes here) is metered.
TEST_CASE("relay: a Live API session is tunnelled and metered, a sideband on it relayed unmetered", "[relay][websocket]") {
  tt::temp_dir prices;
  {
    std::ofstream f(prices.path + "/prices.yaml");
    f << "models:\n  gpt-4.1: { input: 2.00, cached_input: 0.50, output: 8.00 }\n  gpt-live-1: { per_minute: 0.06 }\n";
  }
  harness h({.tweak = [&](tollgate::config& c) { c.prices_file = prices.path + "/prices.yaml"; }});
  net::io_context ioc;
  websocket::response_type res;
  auto client = open_responses_ws(ioc, h.port(), {}, res, "/v1/live/sessions");
  ws_client& ws = *client;
  CHECK(res.result_int() == 101);
  ws.write(net::buffer(json{{"type", "session.start"},
                            {"session", {{"model", "gpt-live-1"},
                                         {"delegation", {{"type", "responses"}, {"responses", {{"model", "gpt-4.1"}}}}}}}}
                           .dump()));
  const json started = next_event(ws);
  REQUIRE(started["type"] == "session.started");
  const std::string session_id = started["session"]["id"];
  // 2 x 1.5 s of PCM16 at 24 kHz (72,000 bytes: 96,000 base64 characters).
  for (int i = 0; i < 2; ++i) {
    ws.write(net::buffer(json{{"type", "session.input_audio.append"}, {"audio", std::string(96'000, 'A')}}.dump()));
    CHECK(next_event(ws)["type"] == "session.usage.updated");
  }
  ws.write(net::buffer(json{{"type", "response.create"}}.dump()));
  json completed;
  for (;;) {
    const json e = next_event(ws);
    REQUIRE(e["type"] == "response.event");
    if (e["event"]["type"] == "response.completed") {
      completed = e["event"]["response"];
      break;
    }
  }
  ws.write(net::buffer(json{{"type", "session.close"}}.dump()));
  const json closed = next_event(ws);
  CHECK(closed["type"] == "session.closed");
  CHECK(closed["usage"]["seconds"] == 3.0);
  beast::flat_buffer b;
  beast::error_code ec;
  ws.read(b, ec);
  CHECK(ec == websocket::error::closed);
  // A sideband on the same session: what it mirrors is not billed again. One on a session whose
  // media never passed here (WebRTC): the only place its usage is seen, metered.
  json mirrored;
  for (const std::string& id : {session_id, std::string("ls_webrtc_1")}) {
    auto side = open_responses_ws(ioc, h.port(), {}, res, "/v1/live/sessions/" + id + "/attach");
    for (int i = 0; i < 20; ++i) {
      const json e = next_event(*side);
      if (e.contains("event") && e["event"]["type"] == "response.completed") {
        mirrored = e["event"]["response"];
        break;
      }
    }
    side->close(websocket::close_code::normal);
  }
  h.flush();
  // Rows are written as sessions end, and the session's own teardown may end after the client
  // has read its close and opened the first sideband: order by start, the sidebands by kind.
  auto rows = h.rows("SELECT * FROM calls ORDER BY start_ms, id");
  REQUIRE(rows.size() == 3);
  if (rows[1]["usage_source"] != "none") std::swap(rows[1], rows[2]);
  CHECK(rows[0]["route"] == "other");
  CHECK(rows[0]["status"] == "101");
  CHECK(rows[0]["served_model"] == "gpt-live-1");
  CHECK(rows[0]["usage_source"] == "upstream");
  CHECK(rows[0]["priced"] == "1");
  CHECK(std::stoll(rows[0]["prompt_tokens"]) == completed["usage"]["input_tokens"].get<long long>());
  CHECK(std::stod(rows[0]["cost_usd"]) == Approx(3.0 / 60 * 0.06 + gpt41_cost(completed["usage"], 2.0, 0.5, 8.0)));
  CHECK(rows[1]["status"] == "101");
  CHECK(rows[1]["usage_source"] == "none");
  CHECK(std::stod(rows[1]["cost_usd"]) == 0);
  CHECK(rows[2]["usage_source"] == "upstream");
  CHECK(rows[2]["served_model"] == "gpt-live-1");
  CHECK(std::stod(rows[2]["cost_usd"]) == Approx(30.0 / 60 * 0.06 + gpt41_cost(mirrored["usage"], 2.0, 0.5, 8.0)));
}

TEST_CASE("relay: a Responses WebSocket is closed with a Responses error event when a hard budget is spent",
          "[relay][websocket][budgets]") {
  harness h({.tweak = [&](tollgate::config& c) { c.policy.budgets = {tt::hard_daily_budget(1e-9)}; }});
  net::io_context ioc;
  websocket::response_type res;
  auto client = open_responses_ws(ioc, h.port(), {}, res);
  ws_client& ws = *client;
  CHECK(ws_response(ws, {{"type", "response.create"}, {"model", "gpt-4.1"}, {"input", "hi"}})["type"] == "response.completed");
  const json error = next_event(ws);
  CHECK(error["type"] == "error");
  CHECK(error["status"] == 429);
  CHECK(error["error"]["code"] == "budget_exceeded");
  beast::flat_buffer b;
  beast::error_code ec;
  ws.read(b, ec);
  CHECK(ec == websocket::error::closed);
  CHECK(ws.reason().code == websocket::close_code::policy_error);
  h.flush();
  CHECK(h.query_text("SELECT route || ' ' || status || ' ' || error_kind FROM calls") == "responses 101 budget_exceeded");
  CHECK(h.query_double("SELECT cost_usd FROM calls") > 0);
}

TEST_CASE("relay: a WebSocket handshake the upstream refuses comes back as its answer", "[relay][websocket]") {
  harness h;
  const std::string handshake =
      "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-fake-status: 401\r\n\r\n";
  const std::string answer = tt::raw_exchange(h.port(), handshake);
  CHECK(answer.starts_with("HTTP/1.1 401 "));
  CHECK(answer.find("fake upstream error") != std::string::npos);
  h.flush();
  CHECK(h.query_text("SELECT route || ' ' || status FROM calls") == "other 401");
}

TEST_CASE("relay: upstream errors reach the client unchanged", "[relay][errors]") {
  harness h;
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-status", "429"}});
  CHECK(r.status == 429);
  CHECK(r.header("retry-after") == "1");
  CHECK(json::parse(r.body)["error"].contains("message"));
  auto r5 = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-status", "500"}});
  CHECK(r5.status == 500);
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE status IN (429, 500)") == 2);
}

TEST_CASE("relay: upstream faults become named errors and the proxy keeps serving", "[relay][errors]") {
  harness h([] {
    tt::harness_options o;
    o.tweak = [](tollgate::config& c) {
      c.upstream.first_byte_timeout = std::chrono::milliseconds(300);
      c.upstream.idle_timeout = std::chrono::milliseconds(300);
    };
    return o;
  }());
  struct fault_case { const char* fault; int status; const char* kind; };
  for (auto fc : {fault_case{"reset-before-headers", 502, "upstream_reset"},
                  fault_case{"garbage", 502, "upstream_protocol"},
                  fault_case{"stall-before-headers", 504, "upstream_first_byte_timeout"}}) {
    INFO(fc.fault);
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-fault", fc.fault}});
    CHECK(r.status == fc.status);
    CHECK(json::parse(r.body)["error"]["code"] == fc.kind);
  }
  auto ok = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body());
  CHECK(ok.status == 200);
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 4);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE error_kind = 'upstream_first_byte_timeout' AND status = 504") == 1);
  CHECK(h.metric_sum("tollgate_upstream_errors_total") == 3);
}

TEST_CASE("relay: an upstream that cuts a stream leaves a visibly truncated stream and says so", "[relay][stream]") {
  harness h;
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true), {{"x-fake-fault", "reset-mid-stream"}});
  auto all = s.read_all();
  CHECK(all.find("[DONE]") == std::string::npos);
  CHECK(!s.ended_cleanly());
  tt::stream_client s2(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true), {{"x-fake-fault", "cut-stream"}});
  auto all2 = s2.read_all();
  CHECK(all2.find("[DONE]") == std::string::npos);
  h.flush();
  auto rows = h.rows("SELECT aborted, usage_source, error_kind, completion_tokens FROM calls ORDER BY error_kind");
  REQUIRE(rows.size() == 2);
  CHECK(rows[0]["aborted"] == "1");
  CHECK(rows[0]["usage_source"] == "estimated");
  CHECK(rows[0]["error_kind"] == "upstream_reset");
  CHECK(rows[1]["aborted"] == "1");
  CHECK(rows[1]["error_kind"] == "upstream_stream_truncated");
  CHECK(std::stoll(rows[1]["completion_tokens"]) > 0);
}

TEST_CASE("relay: a stream gzipped by an upstream asked for no coding is edited decoded: the client never sees "
          "the usage chunk it did not ask for", "[relay][stream]") {
  harness h;
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true),
                      {{"x-fake-gzip", "always"}, {"Accept-Encoding", "gzip"}});
  CHECK(s.header("content-encoding").empty());  // sent on decoded
  const auto all = s.read_all();
  CHECK(s.ended_cleanly());
  CHECK(all.find("[DONE]") != std::string::npos);
  CHECK(all.find("\"choices\":[]") == std::string::npos);
  CHECK(all.find("\"usage\"") == std::string::npos);
  CHECK(all.find("Hello!") != std::string::npos);
  h.flush();
  CHECK(h.query_text("SELECT usage_source || ' ' || aborted FROM calls") == "upstream 0");
  CHECK(h.query_int("SELECT prompt_tokens FROM calls") > 0);
}

TEST_CASE("relay: a whole stream without usage (a provider that ignores include_usage) is estimated, not $0",
          "[relay][stream]") {
  harness h;
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true), {{"x-fake-usage", "none"}});
  const auto all = s.read_all();
  CHECK(all.find("[DONE]") != std::string::npos);
  CHECK(s.ended_cleanly());
  h.flush();
  auto row = h.rows("SELECT * FROM calls")[0];
  CHECK(row["aborted"] == "0");
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE error_kind IS NULL") == 1);
  CHECK(row["usage_source"] == "estimated");
  CHECK(std::stoll(row["prompt_tokens"]) > 0);
  CHECK(std::stoll(row["completion_tokens"]) > 0);
  CHECK(row["priced"] == "1");
  CHECK(std::stod(row["cost_usd"]) > 0);
  // Still counted: the upstream did not report this call's usage.
  CHECK(h.metric_sum("tollgate_unmetered_requests_total") == 1);
}

TEST_CASE("relay: a client that disconnects mid-stream cancels the upstream call and is ledgered as aborted", "[relay][stream]") {
  harness h;
  {
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true),
                        {{"x-fake-chunks", "200"}, {"x-fake-chunk-interval-ms", "50"}});
    REQUIRE(s.next().has_value());
    REQUIRE(s.next().has_value());
    s.close();
  }
  auto row = only_row(h);
  CHECK(row["aborted"] == "1");
  CHECK(row["error_kind"] == "client_aborted");
  CHECK(row["usage_source"] == "estimated");
  CHECK(std::stoll(row["prompt_tokens"]) > 0);
  // Tallied after the fact (no admission control read it up front), from the body as sent
  // upstream (include_usage added): the client's prompt estimate all the same.
  CHECK(std::stoll(row["prompt_tokens"]) ==
        tollgate::inspect_request(tt::chat_body("gpt-4.1", true)).prompt_tokens_estimate);
  CHECK(std::stod(row["latency_ms"]) < 5000);  // not the 10 s the whole stream would take
}

TEST_CASE("relay: a Claude stream cut before message_delta keeps message_start's input counts and "
          "estimates the output from the text streamed, not message_start's placeholder", "[relay][stream]") {
  harness h;
  const std::string body =
      R"({"model":"claude-sonnet-4.5","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"Hi there"}]})";
  std::string seen;
  {
    tt::stream_client s(h.port(), "/v1/messages", body,
                        {{"anthropic-version", "2023-06-01"}, {"x-fake-chunks", "200"}, {"x-fake-chunk-interval-ms", "20"}});
    REQUIRE(s.status() == 200);
    while (std::count(seen.begin(), seen.end(), '\n') < 80) {  // ~25 text deltas of "tok "
      auto piece = s.next();
      REQUIRE(piece.has_value());
      seen += *piece;
    }
    s.close();
  }
  REQUIRE(seen.find("message_start") != std::string::npos);
  REQUIRE(seen.find("message_delta") == std::string::npos);
  auto row = only_row(h);
  CHECK(row["aborted"] == "1");
  CHECK(row["error_kind"] == "client_aborted");
  CHECK(row["usage_source"] == "estimated");
  CHECK(row["prompt_tokens"] == "12");  // the fake's input_tokens (10 + 8 characters / 4), as message_start said
  CHECK(std::stoll(row["completion_tokens"]) >= 15);  // message_start said 1
  CHECK(std::stod(row["cost_usd"]) > 0);
}

TEST_CASE("relay: 200 concurrent calls give exactly 200 ledger rows whose sums equal the metrics", "[relay][load]") {
  harness h;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 20; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        bool stream = (i % 2) == 1;
        if (stream) {
          tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body(t % 2 ? "gpt-4.1" : "deepseek-chat", true));
          s.read_all();
          if (s.status() == 200) ++ok;
        } else {
          auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(t % 2 ? "gpt-4.1" : "deepseek-chat"));
          if (r.status == 200) ++ok;
        }
      }
    });
  for (auto& th : threads) th.join();
  CHECK(ok == 200);
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 200);
  CHECK(h.query_int("SELECT COUNT(DISTINCT request_id) FROM calls") == 200);
  double prompt = h.query_double("SELECT SUM(prompt_tokens) FROM calls");
  double completion = h.query_double("SELECT SUM(completion_tokens) FROM calls");
  double cost = h.query_double("SELECT SUM(cost_usd) FROM calls");
  CHECK(h.metric_sum("tollgate_tokens_total", "kind=\"prompt\"") == Approx(prompt));
  CHECK(h.metric_sum("tollgate_tokens_total", "kind=\"completion\"") == Approx(completion));
  CHECK(h.metric_sum("tollgate_spend_usd_total") == Approx(cost).epsilon(1e-9));
  CHECK(h.metric_sum("tollgate_requests_total") == 200);
  CHECK(h.metric_sum("tollgate_ledger_rows_total") == 200);
}

TEST_CASE("relay: a 16 MiB non-stream reply passes whole", "[relay]") {
  harness h;
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-body-bytes", std::to_string(16 << 20)}});
  REQUIRE(r.status == 200);
  CHECK(r.body.size() == (16u << 20));
  h.flush();
  CHECK(h.query_text("SELECT usage_source FROM calls") == "upstream");
}

TEST_CASE("relay: a pooled connection closed by the upstream is retried on a fresh one", "[relay]") {
  harness h([] {
    tt::harness_options o;
    o.tweak = [](tollgate::config& c) { c.workers = 1; };
    return o;
  }());
  for (int i = 0; i < 3; ++i) {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(), {{"x-fake-fault", "close-after-response"}});
    CHECK(r.status == 200);
  }
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE status = 200") == 3);
}

TEST_CASE("relay: HTTPS upstream with a private CA file is verified and used", "[relay][tls]") {
  harness h([] {
    tt::harness_options o;
    o.tls = true;
    return o;
  }());
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body());
  CHECK(r.status == 200);
  tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true));
  CHECK(s.read_all().find("[DONE]") != std::string::npos);
}

TEST_CASE("relay: an interim 103 head from the upstream is skipped, plain and TLS, alone or with the answer",
          "[relay]") {
  for (bool tls : {false, true}) {
    harness h([tls] {
      tt::harness_options o;
      o.tls = tls;
      return o;
    }());
    // 20 ms apart: the 103 is read alone, then the answer by the wait after it; 0: often one read.
    for (const char* delay : {"20", "0"}) {
      INFO("tls " << tls << ", delay " << delay);
      auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(),
                             {{"x-fake-early-hints", "1"}, {"x-fake-delay-ms", delay}});
      CHECK(r.status == 200);
      CHECK(r.body.find("chat.completion") != std::string::npos);
      tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true),
                          {{"x-fake-early-hints", "1"}, {"x-fake-delay-ms", delay}});
      CHECK(s.status() == 200);
      CHECK(s.read_all().find("[DONE]") != std::string::npos);
    }
    h.flush();
    CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE status = 200 AND usage_source = 'upstream'") == 4);
  }
}

TEST_CASE("relay: an untrusted upstream certificate is a 502, never a silent downgrade", "[relay][tls]") {
  for (auto kind : {fake::cert_kind::wrong_host, fake::cert_kind::expired, fake::cert_kind::self_signed}) {
    tt::temp_dir d;
    auto certs = fake::make_test_certs(kind);
    fake::options fo;
    fo.tls = fake::tls_files{certs.cert_pem, certs.key_pem};
    fake::server up(fo);
    fake::write_file(d.path + "/ca.pem", certs.ca_pem);
    tollgate::config c;
    c.listen = {"127.0.0.1", 0};
    c.admin_listen = {"127.0.0.1", 0};
    c.workers = 1;
    c.upstream.url = "https://localhost:" + std::to_string(up.port()) + "/v1";
    c.upstream.ca_file = d.path + "/ca.pem";
    c.upstream.api_key = "k";
    c.ledger_path = d.path + "/l.db";
    c.prices_file = std::string(TOLLGATE_SOURCE_DIR) + "/config/prices.yaml";
    c.log = tollgate::log_level::error;
    tollgate::app a(c);
    a.start();
    auto r = tt::post_json(a.port(), "/v1/chat/completions", tt::chat_body());
    CHECK(r.status == 502);
    CHECK(json::parse(r.body)["error"]["code"] == "upstream_tls");
    CHECK(up.request_count() == 0);
    a.shutdown();
  }
}

TEST_CASE("relay: without an upstream key calls and /readyz say so", "[relay]") {
  harness h([] {
    tt::harness_options o;
    o.api_key = "";
    return o;
  }());
  CHECK(tt::request(h.port(), "GET", "/healthz").status == 200);
  auto ready = tt::request(h.port(), "GET", "/readyz");
  CHECK(ready.status == 503);
  CHECK(ready.body.find("missing") != std::string::npos);
  auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body());
  CHECK(r.status == 503);
  CHECK(json::parse(r.body)["error"]["code"] == "upstream_key_missing");
  CHECK(r.header("x-should-retry") == "false");  // the SDKs would otherwise retry a 503 twice
  CHECK(h.upstream->request_count() == 0);
  CHECK(tt::request(h.admin_port(), "GET", "/readyz").status == 503);
}

TEST_CASE("relay: graceful shutdown lets an in-flight stream finish and ledgers it", "[relay][shutdown]") {
  harness h;
  std::string got;
  std::thread client([&] {
    tt::stream_client s(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", true),
                        {{"x-fake-chunks", "10"}, {"x-fake-chunk-interval-ms", "50"}});
    got = s.read_all();
  });
  REQUIRE(harness::eventually([&] { return h.upstream->request_count() == 1; }));
  h.proxy->shutdown();
  client.join();
  CHECK(got.find("[DONE]") != std::string::npos);
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE aborted = 0") == 1);
}

TEST_CASE("relay: metrics pass the exposition format and carry bounded labels", "[relay][metrics]") {
  harness h;
  tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("some-unknown-model"));
  tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1-2025-04-14"));
  h.flush();  // a call is counted just after its last byte is sent
  auto text = h.metrics_text();
  CHECK(text.find("tollgate_requests_total{code=\"200\",model=\"other\",route=\"chat_completions\"} 1") != std::string::npos);
  CHECK(text.find("model=\"gpt-4.1\"") != std::string::npos);
  CHECK(text.find("some-unknown-model") == std::string::npos);
  CHECK(h.metric_sum("tollgate_unpriced_requests_total") == 1);
  h.flush();
  CHECK(h.query_int("SELECT priced FROM calls WHERE requested_model = 'some-unknown-model'") == 0);
}

// usage.iterations: a compaction pass (same model, outside the top-level counts) and advisor
// calls (the advisor's model) are billed too; the row's tokens are the sums.
TEST_CASE("relay: a Claude call's compaction and advisor iterations are billed, streamed or not", "[relay][pricing]") {
  harness h;
  const tt::headers anthropic{
      {"anthropic-version", "2023-06-01"},
      {"x-fake-usage-iterations",
       R"([{"type":"compaction","input_tokens":180000,"output_tokens":3500,"cache_read_input_tokens":0,"cache_creation_input_tokens":0},)"
       R"({"type":"message","input_tokens":50,"output_tokens":9},)"
       R"({"type":"advisor_message","model":"claude-opus-4-8","input_tokens":9000,"output_tokens":1500,"cache_read_input_tokens":4000,"cache_creation_input_tokens":0}])"}};
  const std::string body = R"({"model":"claude-sonnet-4-6","max_tokens":100,"messages":[{"role":"user","content":"Hi there"}]})";
  auto r = tt::post_json(h.port(), "/v1/messages", body, anthropic);
  REQUIRE(r.status == 200);
  const auto usage = json::parse(r.body)["usage"];
  REQUIRE(usage["iterations"].size() == 3);
  {
    std::string streamed = body;
    streamed.insert(1, R"("stream":true,)");
    tt::stream_client s(h.port(), "/v1/messages", streamed, anthropic);
    s.read_all();
    REQUIRE(s.status() == 200);
  }
  h.flush();
  const auto rows = h.rows("SELECT stream, prompt_tokens, completion_tokens, cached_tokens, price_model, priced, cost_usd "
                           "FROM calls ORDER BY id");
  REQUIRE(rows.size() == 2);
  for (const auto& row : rows) {
    INFO(row.at("stream"));
    // The executor's own tokens (top level + compaction) at claude-sonnet-4.6 ($3 / $15), the
    // advisor's at claude-opus-4.8 ($5 in, $0.50 cached, $25 out).
    const double prompt = std::stod(row.at("prompt_tokens")), completion = std::stod(row.at("completion_tokens"));
    const double own_prompt = prompt - 13000, own_completion = completion - 1500;
    CHECK(own_prompt > 180000);
    CHECK(row.at("cached_tokens") == "4000");
    CHECK(row.at("priced") == "1");
    CHECK(row.at("price_model") == "claude-sonnet-4.6");
    CHECK(std::stod(row.at("cost_usd")) ==
          Approx((own_prompt * 3.0 + own_completion * 15.0) / 1e6 + (9000 * 5.0 + 4000 * 0.5 + 1500 * 25.0) / 1e6));
  }
  CHECK(std::stod(rows[0].at("completion_tokens")) == usage["output_tokens"].get<double>() + 3500 + 1500);
}

TEST_CASE("relay: a Claude turn served by a server-side fallback bills each hop at its model, streamed or not",
          "[relay][pricing]") {
  harness h;
  // claude-opus-4-8 ($5 / $25) declined; claude-sonnet-4-6 ($3 / $15) served. The iterations
  // hold more than the fake's top level: all of it is in the hops, each billed at its model.
  const tt::headers anthropic{
      {"anthropic-version", "2023-06-01"},
      {"anthropic-beta", "server-side-fallback-2026-07-01"},
      {"x-fake-usage-iterations",
       R"([{"type":"message","model":"claude-opus-4-8","input_tokens":1000,"output_tokens":20,"cache_read_input_tokens":0,"cache_creation_input_tokens":0},)"
       R"({"type":"fallback_message","model":"claude-sonnet-4-6","input_tokens":1000,"output_tokens":300,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}])"}};
  const std::string body =
      R"({"model":"claude-opus-4-8","fallbacks":[{"model":"claude-sonnet-4-6"}],"max_tokens":100,"messages":[{"role":"user","content":"Hi there"}]})";
  REQUIRE(tt::post_json(h.port(), "/v1/messages", body, anthropic).status == 200);
  {
    std::string streamed = body;
    streamed.insert(1, R"("stream":true,)");
    tt::stream_client s(h.port(), "/v1/messages", streamed, anthropic);
    s.read_all();
    REQUIRE(s.status() == 200);
  }
  h.flush();
  const auto rows = h.rows("SELECT stream, prompt_tokens, completion_tokens, priced, cost_usd FROM calls ORDER BY id");
  REQUIRE(rows.size() == 2);
  for (const auto& row : rows) {
    INFO(row.at("stream"));
    CHECK(row.at("prompt_tokens") == "2000");
    CHECK(row.at("completion_tokens") == "320");
    CHECK(row.at("priced") == "1");
    CHECK(std::stod(row.at("cost_usd")) == Approx((1000 * 5.0 + 20 * 25.0) / 1e6 + (1000 * 3.0 + 300 * 15.0) / 1e6));
  }
}

TEST_CASE("relay: usage where other vendors put it (xAI's reasoning beside the output, Kimi's in the choice) is billed exactly",
          "[relay][pricing]") {
  harness h;
  const std::string body = R"({"model":"gpt-4.1","messages":[{"role":"user","content":"Hi there"}]})";
  std::string streamed = body;
  streamed.insert(1, R"("stream":true,)");
  // xAI: completion_tokens without the 50 reasoning tokens, total_tokens with them.
  const tt::headers beside{{"x-fake-reasoning-tokens", "50"}, {"x-fake-reasoning-beside", "1"}};
  const auto r = tt::post_json(h.port(), "/v1/chat/completions", body, beside);
  REQUIRE(r.status == 200);
  const auto u = json::parse(r.body)["usage"];
  REQUIRE(u["total_tokens"].get<int>() == u["prompt_tokens"].get<int>() + u["completion_tokens"].get<int>() + 50);
  {
    tt::stream_client s(h.port(), "/v1/chat/completions", streamed, beside);
    s.read_all();
    REQUIRE(s.status() == 200);
  }
  // Moonshot: the stream's usage in the finish chunk's choice.
  {
    tt::stream_client s(h.port(), "/v1/chat/completions", streamed, {{"x-fake-usage", "in-choice"}});
    const std::string sse = s.read_all();
    REQUIRE(s.status() == 200);
    CHECK(sse.find(R"("usage":{)") != std::string::npos);  // in a choice: the fake sends no usage chunk then
    CHECK(sse.find(R"("choices":[])") == std::string::npos);
  }
  h.flush();
  const auto rows = h.rows("SELECT stream, prompt_tokens, completion_tokens, reasoning_tokens, usage_source, cost_usd FROM calls ORDER BY id");
  REQUIRE(rows.size() == 3);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    INFO(i);
    const auto& row = rows[i];
    CHECK(row.at("usage_source") == "upstream");
    CHECK(row.at("reasoning_tokens") == (i < 2 ? "50" : "0"));
    const double prompt = std::stod(row.at("prompt_tokens")), completion = std::stod(row.at("completion_tokens"));
    CHECK(std::stod(row.at("cost_usd")) == Approx((prompt * 2.0 + completion * 8.0) / 1e6));  // gpt-4.1
  }
  CHECK(std::stod(rows[0].at("completion_tokens")) == u["completion_tokens"].get<double>() + 50);
}

TEST_CASE("relay: a Claude call in fast mode and US-only is priced as its usage reports, streamed or not",
          "[relay][pricing]") {
  harness h;
  // The fake echoes the request's speed and inference_geo into usage, as the API does, and
  // reports 6 of the output tokens as thinking.
  const tt::headers anthropic{{"anthropic-version", "2023-06-01"}, {"x-fake-reasoning-tokens", "6"}};
  const std::string fast =
      R"({"model":"claude-opus-4-6","speed":"fast","inference_geo":"us","max_tokens":100,"messages":[{"role":"user","content":"Hi there"}]})";
  auto r = tt::post_json(h.port(), "/v1/messages", fast, anthropic);
  REQUIRE(r.status == 200);
  const auto usage = json::parse(r.body)["usage"];
  CHECK(usage["speed"] == "fast");
  {
    std::string body = fast;
    body.insert(1, R"("stream":true,)");
    tt::stream_client s(h.port(), "/v1/messages", body, anthropic);
    s.read_all();
    REQUIRE(s.status() == 200);
  }
  REQUIRE(tt::post_json(h.port(), "/v1/messages",
                        R"({"model":"claude-opus-4-6","max_tokens":100,"messages":[{"role":"user","content":"Hi there"}]})",
                        anthropic)
              .status == 200);
  h.flush();
  const auto rows = h.rows("SELECT stream, service_tier, prompt_tokens, completion_tokens, reasoning_tokens, cost_usd "
                           "FROM calls ORDER BY id");
  REQUIRE(rows.size() == 3);
  // claude-opus-4.6: $5 in, $25 out per 1M; fast 6x, US-only 1.1x.
  const auto standard = [](const std::map<std::string, std::string>& row) {
    return (std::stod(row.at("prompt_tokens")) * 5.0 + std::stod(row.at("completion_tokens")) * 25.0) / 1e6;
  };
  for (int i = 0; i < 2; ++i) {
    INFO(i);
    CHECK(rows[i].at("service_tier") == "fast");
    CHECK(rows[i].at("reasoning_tokens") == "6");
    CHECK(std::stod(rows[i].at("cost_usd")) == Approx(6 * 1.1 * standard(rows[i])));
  }
  CHECK(rows[0].at("stream") == "0");
  CHECK(rows[1].at("stream") == "1");
  CHECK(rows[2].at("service_tier") == "default");
  CHECK(std::stod(rows[2].at("cost_usd")) == Approx(standard(rows[2])));
}

TEST_CASE("relay: a graceful shutdown lets a WebSocket's response in flight finish, then closes it with 1001",
          "[relay][websocket][shutdown]") {
  harness h;
  net::io_context ioc;
  websocket::response_type res;  // each response streams 10 deltas 100 ms apart
  auto client = open_responses_ws(ioc, h.port(), {{"x-fake-chunks", "10"}, {"x-fake-chunk-interval-ms", "100"}}, res);
  ws_client& ws = *client;
  ws.write(net::buffer(json{{"type", "response.create"}, {"model", "gpt-4.1"}, {"input", "hi"}}.dump()));
  // The response is under way when the drain starts.
  for (json e = next_event(ws); e["type"] != "response.output_text.delta"; e = next_event(ws)) {
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::thread stopper([&] { h.proxy->shutdown(); });
  std::vector<std::string> types;
  beast::error_code ec;
  for (;;) {
    beast::flat_buffer b;
    ws.read(b, ec);
    if (ec) break;
    types.push_back(json::parse(beast::buffers_to_string(b.data()))["type"]);
  }
  stopper.join();
  const double stop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // The response came whole, then a close frame saying why (not a vanished connection at the
  // drain deadline, 30 s later).
  REQUIRE(!types.empty());
  CHECK(types.back() == "response.completed");
  CHECK(ec == websocket::error::closed);
  CHECK(ws.reason().code == websocket::close_code::going_away);
  CHECK(stop_s < 10);
  CHECK(h.query_text("SELECT route || ' ' || status || ' ' || aborted || ' ' || usage_source FROM calls") ==
        "responses 101 0 upstream");
  CHECK(h.query_double("SELECT cost_usd FROM calls") > 0);
}
