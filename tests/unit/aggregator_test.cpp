// Tests of the traffic aggregator (proxy/core/aggregator.cpp): minute buckets by start_ms, the
// per-model split, bounded rings with the coarse fallback, window sums, one writer + one reader,
// and the warm start from a real ledger file (proxy/ledger/ledger_history.cpp).
#include <catch2/catch.hpp>

#include <filesystem>
#include <random>
#include <thread>

#include "core/aggregator.hpp"
#include "ledger/ledger.hpp"
#include "ledger/ledger_history.hpp"

using namespace tollgate;
namespace fs = std::filesystem;

namespace {

constexpr std::int64_t kDay0 = 1'736'121'600;  // 2025-01-06T00:00:00Z, a Monday

usage_record call(std::int64_t start_ms, std::string price_model = "gpt-4.1", std::int64_t prompt = 100,
                  std::int64_t completion = 10, double cost = 0.25) {
  usage_record r;
  r.request_id = "req";
  r.start_ms = start_ms;
  r.method = "POST";
  r.status = 200;
  r.price_model = std::move(price_model);
  r.priced = !r.price_model.empty();
  r.tokens.prompt = prompt;
  r.tokens.completion = completion;
  r.cost_usd = cost;
  return r;
}

// One call per minute in [first, first + n) minutes.
void one_per_minute(aggregator& a, std::int64_t first_minute, std::int64_t n) {
  for (std::int64_t m = first_minute; m < first_minute + n; ++m) a.add(call(m * 60'000 + 1'000));
}

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("tollgate-aggregator-test-" + std::to_string(rd()) + "-" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("aggregator: a call counts in the UTC minute of its start_ms", "[aggregator]") {
  aggregator a({"gpt-4.1"});
  const std::int64_t t = kDay0 * 1000;
  a.add(call(t + 59'999));
  a.add(call(t + 60'000, "gpt-4.1", 7, 3, 0.5));
  auto first = a.sum(kDay0, kDay0 + 60);
  auto second = a.sum(kDay0 + 60, kDay0 + 120);
  CHECK(first.requests == 1);
  CHECK(first.prompt_tokens == 100);
  CHECK(first.completion_tokens == 10);
  CHECK(first.cost_usd == 0.25);
  CHECK(second.requests == 1);
  CHECK(second.prompt_tokens == 7);
  CHECK(second.cost_usd == 0.5);
  CHECK(a.first_minute() == kDay0 / 60);
  CHECK(a.newest_minute() == kDay0 / 60 + 1);
}

TEST_CASE("aggregator: per priced model, with unpriced and unknown models as other", "[aggregator]") {
  aggregator a({"gpt-4.1", "claude-sonnet-4.5"});
  const std::int64_t t = kDay0 * 1000;
  a.add(std::vector<usage_record>{call(t, "gpt-4.1"), call(t, "claude-sonnet-4.5"), call(t, ""),
                                  call(t, "not-in-the-table")});
  CHECK(a.sum(kDay0, kDay0 + 60).requests == 4);
  CHECK(a.sum(kDay0, kDay0 + 60, "gpt-4.1").requests == 1);
  CHECK(a.sum(kDay0, kDay0 + 60, "claude-sonnet-4.5").requests == 1);
  CHECK(a.sum(kDay0, kDay0 + 60, "other").requests == 2);
  CHECK(a.sum(kDay0, kDay0 + 60, "not-in-the-table").requests == 0);
  CHECK(a.sum(kDay0, kDay0 + 60).cost_usd == 1.0);
}

TEST_CASE("aggregator: memory is bounded, old minutes fall back to coarse buckets, then out", "[aggregator]") {
  aggregator_options o;
  o.total_minutes = 60;      // one hour of minutes
  o.total_coarse_days = 1;   // one day of 5-minute buckets
  aggregator a({"gpt-4.1"}, o);
  const std::int64_t m0 = kDay0 / 60;
  a.add(call(m0 * 60'000));
  const std::size_t bytes = a.memory_bytes();

  SECTION("a minute older than the minute ring is still summed from its coarse bucket") {
    one_per_minute(a, m0 + 120, 1);
    CHECK(a.first_fine_minute() == m0 + 120 - 59);
    CHECK(a.sum(kDay0, kDay0 + 300).requests == 1);
    CHECK(a.first_minute() == m0);
  }
  SECTION("older than every ring: out of the sums, and a late record is dropped") {
    one_per_minute(a, m0 + 2 * 1440, 1);
    CHECK(a.sum(kDay0, kDay0 + 86400).requests == 0);
    a.add(call(m0 * 60'000));
    CHECK(a.dropped() == 1);
    CHECK(a.sum(kDay0 - 60, kDay0 + 3 * 86400).requests == 1);
  }
  SECTION("a year of traffic does not grow it") {
    for (std::int64_t d = 1; d <= 365; ++d) one_per_minute(a, m0 + d * 1440, 3);
    CHECK(a.memory_bytes() == bytes);
  }
}

TEST_CASE("aggregator: window sums join coarse and minute buckets without double counting", "[aggregator]") {
  aggregator_options o;
  o.total_minutes = 60;
  aggregator a({"gpt-4.1"}, o);
  const std::int64_t m0 = kDay0 / 60;
  one_per_minute(a, m0, 180);  // 3 hours; the last hour is still in minutes
  REQUIRE(a.first_fine_minute() == m0 + 120);

  SECTION("whole span") { CHECK(a.sum(kDay0, kDay0 + 180 * 60).requests == 180); }
  SECTION("edges off the coarse grid are prorated (exact on uniform traffic)") {
    CHECK(a.sum(kDay0 + 7 * 60, kDay0 + 13 * 60).requests == Approx(6));
    CHECK(a.sum(kDay0 + 117 * 60, kDay0 + 125 * 60).requests == Approx(8));
  }
  SECTION("bins() gives consecutive sums") {
    auto b = a.bins(kDay0, 600, 18);
    REQUIRE(b.size() == 18);
    for (const auto& x : b) CHECK(x.requests == Approx(10));
  }
  SECTION("the future and the unknown past are zero") {
    CHECK(a.sum(kDay0 + 180 * 60, kDay0 + 86400).requests == 0);
    CHECK(a.sum(kDay0 - 86400, kDay0).requests == 0);
  }
  SECTION("a model's rings are separate and bounded too") {
    CHECK(a.sum(kDay0, kDay0 + 180 * 60, "gpt-4.1").requests == 180);
    CHECK(a.sum(kDay0, kDay0 + 180 * 60, "other").requests == 0);
  }
}

TEST_CASE("aggregator: one writer and one reader at the same time see consistent sums", "[aggregator]") {
  aggregator a({"gpt-4.1"});
  const std::int64_t n = 20'000;
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (std::int64_t i = 0; i < n; ++i) a.add(call(kDay0 * 1000 + (i % 600) * 1000 + i / 600 * 60'000, "gpt-4.1", 1, 1, 0.5));
    done = true;
  });
  double last = 0;
  bool monotonic = true;
  while (!done) {
    auto s = a.sum(kDay0, kDay0 + 86400);
    monotonic = monotonic && s.requests >= last && s.prompt_tokens == s.requests && s.cost_usd == 0.5 * s.requests;
    last = s.requests;
  }
  writer.join();
  CHECK(monotonic);
  CHECK(a.sum(kDay0, kDay0 + 86400).requests == n);
}

TEST_CASE("ledger history: the warm start loads the ledger's per-minute sums", "[aggregator][ledger]") {
  temp_dir dir;
  const std::string path = (dir.path / "ledger.db").string();
  const std::int64_t t = kDay0 * 1000;
  {
    ledger_options lo;
    lo.path = path;
    ledger l(lo);
    l.start();
    std::vector<usage_record> rows = {call(t - 3'600'000, "gpt-4.1"),  // before `since`
                                      call(t + 1'000, "gpt-4.1", 10, 1, 0.125),
                                      call(t + 2'000, "gpt-4.1", 20, 2, 0.25),
                                      call(t + 3'000, "", 5, 5, 0),
                                      call(t + 61'000, "claude-sonnet-4.5", 1, 1, 0.5)};
    for (auto& r : rows) {
      REQUIRE(l.reserve());
      l.submit(r);
    }
    l.flush();
    l.stop();
  }
  aggregator a({"gpt-4.1", "claude-sonnet-4.5"});
  history_load h = load_ledger_history(path, t, a);
  CHECK(h.minutes == 2);
  CHECK(h.rows == 3);
  CHECK(h.calls == 4);
  auto total = a.sum(kDay0 - 7200, kDay0 + 7200);
  CHECK(total.requests == 4);
  CHECK(total.prompt_tokens == 36);
  CHECK(total.completion_tokens == 9);
  CHECK(total.cost_usd == 0.875);
  CHECK(a.sum(kDay0, kDay0 + 60, "gpt-4.1").requests == 2);
  CHECK(a.sum(kDay0, kDay0 + 60, "other").requests == 1);
  CHECK(a.sum(kDay0 + 60, kDay0 + 120, "claude-sonnet-4.5").cost_usd == 0.5);

  SECTION("rows dated at or after until_ms (a wrong clock) are left out and counted") {
    aggregator until({"gpt-4.1", "claude-sonnet-4.5"});
    const history_load u = load_ledger_history(path, t, until, kDay0 * 1000 + 60'000);
    CHECK(u.calls == 3);  // the second minute's call is "in the future" here
    CHECK(u.future_rows == 1);
    CHECK(u.latest_future_ms >= kDay0 * 1000 + 60'000);
    CHECK(until.sum(kDay0 + 60, kDay0 + 120).requests == 0);
  }
  SECTION("a missing ledger file loads nothing") {
    aggregator empty({});
    CHECK(load_ledger_history((dir.path / "absent.db").string(), 0, empty).minutes == 0);
    CHECK(empty.first_minute() == aggregator::no_data);
  }
  SECTION("a file that is not a ledger is an error naming it") {
    const std::string junk = (dir.path / "junk.db").string();
    { std::FILE* f = std::fopen(junk.c_str(), "wb"); std::fputs("not a database", f); std::fclose(f); }
    aggregator other({});
    CHECK_THROWS_WITH(load_ledger_history(junk, 0, other), Catch::Matchers::Contains(junk));
  }
}
