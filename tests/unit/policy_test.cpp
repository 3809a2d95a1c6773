// Tests of the spend-control engine (proxy/core/policy.cpp): key lookup, budget reservations
// under concurrency, calendar windows across month ends and DST, soft-threshold and projection
// alerts, spend guards, rate-limit buckets and headers. Time is always passed explicitly.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <ctime>
#include <latch>
#include <thread>

#include "core/policy.hpp"

using namespace tollgate;
using Catch::Matchers::Contains;
using decision = policy_engine::decision;

namespace {

std::int64_t utc_ms(int y, int mo, int d, int h = 0, int mi = 0, int s = 0) {
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  return static_cast<std::int64_t>(timegm(&tm)) * 1000;
}

constexpr std::int64_t minute_ms = 60'000;
const std::int64_t t0 = utc_ms(2026, 11, 10, 12);

client_key_config key(const std::string& name, const std::string& secret, rate_limits limits = {},
                      std::vector<budget_config> budgets = {}, const std::string& team = "") {
  client_key_config k;
  k.name = name;
  k.sha256 = policy_engine::sha256(secret);
  k.team = team;
  k.limits = limits;
  k.budgets = std::move(budgets);
  return k;
}

budget_config budget(const std::string& scope, calendar_period p, double limit, bool hard,
                     std::vector<double> soft = {}) {
  budget_config b;
  b.scope = scope;
  b.period = p;
  b.limit_usd = limit;
  b.hard = hard;
  b.soft = std::move(soft);
  return b;
}

policy_engine::call_facts call(double usd, std::int64_t now_ms, std::string_view price_model = "gpt-4.1",
                               const client_key_config* k = nullptr, std::int64_t tokens = 0) {
  policy_engine::call_facts f;
  f.key = k;
  f.team = k ? std::string_view(k->team) : std::string_view();
  f.price_model = price_model;
  f.model = price_model;
  f.reserve_usd = usd;
  f.reserve_tokens = tokens;
  f.now_ms = now_ms;
  return f;
}

const policy_engine::budget_status* find_budget(const std::vector<policy_engine::budget_status>& all,
                                                const std::string& scope) {
  for (const auto& b : all)
    if (b.scope == scope) return &b;
  return nullptr;
}

double spent(const policy_engine& e, const std::string& scope, std::int64_t now_ms) {
  auto all = e.budgets(now_ms);
  auto* b = find_budget(all, scope);
  REQUIRE(b != nullptr);
  return b->spent_usd;
}

// Admits and settles one call at its reserved cost; returns the verdict.
decision::verdict spend(policy_engine& e, double usd, std::int64_t now_ms, std::string_view model = "gpt-4.1",
                        const client_key_config* k = nullptr) {
  auto d = e.admit(call(usd, now_ms, model, k));
  if (d.outcome == decision::admit) e.settle(d.ticket, usd, 0, d.reroute_model.empty() ? model : d.reroute_model, now_ms);
  return d.outcome;
}

}  // namespace

TEST_CASE("policy keys: lookup by SHA-256, unknown keys, run-time add and remove", "[policy]") {
  policy_config cfg;
  cfg.keys.push_back(key("app-prod", "sk-prod-secret", {}, {}, "web"));
  policy_engine e(cfg, "UTC");

  SECTION("a configured key is found by its secret, an unknown one is not") {
    auto k = e.find_key("sk-prod-secret");
    REQUIRE(k != nullptr);
    CHECK(k->name == "app-prod");
    CHECK(k->team == "web");
    CHECK(e.find_key("sk-prod-secreT") == nullptr);
    CHECK(e.find_key("") == nullptr);
  }
  SECTION("sha256 is the standard digest") {
    auto h = policy_engine::sha256("abc");
    CHECK(h[0] == 0xba);
    CHECK(h[1] == 0x78);
    CHECK(h[31] == 0xad);
  }
  SECTION("added keys are found; duplicate names and secrets are refused") {
    CHECK(e.add_key(key("batch", "sk-batch")));
    CHECK(e.find_key("sk-batch")->name == "batch");
    CHECK_FALSE(e.add_key(key("batch", "sk-other")));
    CHECK_FALSE(e.add_key(key("other", "sk-prod-secret")));
    CHECK_FALSE(e.add_key(key("", "sk-nameless")));
    CHECK(e.keys().size() == 2);
  }
  SECTION("a removed key is no longer found, but a held pointer stays valid") {
    auto held = e.find_key("sk-prod-secret");
    CHECK(e.remove_key("app-prod"));
    CHECK(e.find_key("sk-prod-secret") == nullptr);
    CHECK_FALSE(e.remove_key("app-prod"));
    CHECK(held->name == "app-prod");
  }
  SECTION("duplicate keys in the configuration are a startup error") {
    cfg.keys.push_back(key("app-prod", "sk-else"));
    CHECK_THROWS_AS(policy_engine(cfg, "UTC"), std::invalid_argument);
  }
  SECTION("bad scopes and time zones are startup errors") {
    policy_config bad;
    bad.budgets.push_back(budget("tenant:x", calendar_period::day, 1, true));
    CHECK_THROWS_WITH(policy_engine(bad, "UTC"), Contains("tenant:x"));
    CHECK_THROWS_AS(policy_engine(policy_config{}, "Mars/Olympus"), std::invalid_argument);
  }
}

TEST_CASE("policy keys: a removed key's outstanding reservation still settles", "[policy]") {
  policy_config cfg;
  cfg.keys.push_back(key("app-prod", "sk-p", {60, 10'000}, {budget("", calendar_period::day, 5, true)}));
  policy_engine e(cfg, "UTC");
  auto k = e.find_key("sk-p");
  auto d = e.admit(call(1, t0, "gpt-4.1", k.get(), 500));
  REQUIRE(d.outcome == decision::admit);
  REQUIRE(find_budget(e.budgets(t0), "key:app-prod")->reserved_usd == 1);
  CHECK(e.remove_key("app-prod"));
  e.settle(d.ticket, 0.5, 300, "gpt-4.1", t0 + 1000);
  CHECK(find_budget(e.budgets(t0), "key:app-prod") == nullptr);
  e.settle(d.ticket, 0.5, 300, "gpt-4.1", t0 + 1000);  // a second settle is ignored
}

TEST_CASE("policy keys: keys added and removed while calls run stay consistent", "[policy]") {
  policy_config cfg;
  cfg.keys.push_back(key("app", "sk-app", {1'000'000, 0}, {budget("", calendar_period::day, 1e9, true)}));
  policy_engine e(cfg, "UTC");
  constexpr int workers = 4, rounds = 500;
  std::latch start(workers + 1);
  std::atomic<int> missing{0}, refused{0};
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    start.arrive_and_wait();
    for (int i = 0; i < rounds; ++i) {
      e.add_key(key("tmp", "sk-tmp", {1'000'000, 0}, {budget("", calendar_period::day, 1e9, true)}));
      e.remove_key("tmp");
    }
  });
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      start.arrive_and_wait();
      for (int i = 0; i < rounds; ++i) {
        const bool tmp = i % 2 == 1;
        auto k = e.find_key(tmp ? "sk-tmp" : "sk-app");
        if (!k) {
          missing += tmp ? 0 : 1;
          continue;
        }
        auto d = e.admit(call(0.01, t0 + i, "gpt-4.1", k.get(), 10));
        if (d.outcome != decision::admit) ++refused;
        if (w % 2) {
          e.settle(d.ticket, 0.01, 10, "gpt-4.1", t0 + i);
        } else {
          e.release(d.ticket);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(missing == 0);
  CHECK(refused == 0);
  CHECK(e.keys().size() == 1);
  auto all = e.budgets(t0 + rounds);
  REQUIRE(all.size() == 1);
  CHECK(all[0].reserved_usd == 0);
  CHECK(all[0].spent_usd == Approx(0.01 * rounds / 2 * workers / 2));
}

TEST_CASE("policy fast path: no budgets, no guards and no limits hold nothing", "[policy]") {
  policy_config cfg;
  cfg.keys.push_back(key("free", "sk-free"));
  policy_engine e(cfg, "UTC");
  auto k = e.find_key("sk-free");
  auto d = e.admit(call(100, t0, "gpt-4.1", k.get(), 100'000));
  CHECK(d.outcome == decision::admit);
  CHECK(d.ticket == 0);
  CHECK_FALSE(d.rate_headers);
  e.settle(d.ticket, 1, 10, "gpt-4.1", t0);
  e.release(d.ticket);
  CHECK(e.budgets(t0).empty());
}

TEST_CASE("policy budgets: 200 concurrent calls overshoot a nearly spent hard budget by at most one reservation",
          "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::day, 10, true));
  cfg.budgets.push_back(budget("team:web", calendar_period::month, 1000, true));
  policy_engine e(cfg, "UTC");
  e.seed("", "web", "gpt-4.1", 9.3, t0 - minute_ms);
  constexpr int n = 200;
  constexpr double reserve = 0.25;
  std::latch start(n);
  std::atomic<int> admitted{0}, refused{0}, refused_elsewhere{0};  // Catch2 v2 assertions are not thread-safe
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      auto f = call(reserve, t0 + i, "gpt-4.1");
      f.team = "web";
      auto d = e.admit(f);
      if (d.outcome == decision::admit) {
        ++admitted;
        // Half the calls cost what they reserved, half less; a few never reach the upstream.
        if (i % 10 == 0) {
          e.release(d.ticket);
        } else {
          e.settle(d.ticket, i % 2 ? reserve : reserve / 2, 10, "gpt-4.1", t0 + n + i);
        }
      } else if (d.outcome == decision::budget_exceeded && d.scope == "global") {
        ++refused;
      } else {
        ++refused_elsewhere;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(refused_elsewhere == 0);
  CHECK(admitted + refused == n);
  CHECK(admitted >= 2);
  const auto all = e.budgets(t0 + 2 * n);
  const auto* g = find_budget(all, "global");
  CHECK(g->spent_usd <= 10 + reserve);
  CHECK(g->reserved_usd == 0);
  CHECK(find_budget(all, "team:web")->spent_usd == Approx(g->spent_usd));
  auto c = e.counters();
  REQUIRE(c.budget_rejections.size() == 2);
  CHECK(c.budget_rejections[0].scope == "global");
  CHECK(c.budget_rejections[0].value == static_cast<std::uint64_t>(refused.load()));
}

TEST_CASE("policy budgets: hard limits count reservations, soft budgets never refuse", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 100, false));
  cfg.budgets.push_back(budget("model:claude-sonnet-4.5", calendar_period::day, 10, true));
  policy_engine e(cfg, "UTC");

  SECTION("an in-flight reservation blocks a call that could overshoot, and release gives it back") {
    auto a = e.admit(call(6, t0, "claude-sonnet-4.5"));
    REQUIRE(a.outcome == decision::admit);
    auto b = e.admit(call(6, t0, "claude-sonnet-4.5"));
    CHECK(b.outcome == decision::budget_exceeded);
    CHECK(b.scope == "model:claude-sonnet-4.5");
    CHECK(b.period == "day");
    CHECK(b.limit_usd == 10);
    CHECK(b.retry_after_s == 1);  // only a call in flight stands in the way
    CHECK(b.ticket == 0);
    CHECK(e.admit(call(6, t0, "gpt-4.1")).outcome == decision::admit);  // other models are not limited
    e.release(a.ticket);
    CHECK(e.admit(call(6, t0, "claude-sonnet-4.5")).outcome == decision::admit);
  }
  SECTION("a spent hard budget refuses until its window ends") {
    CHECK(spend(e, 10, t0, "claude-sonnet-4.5") == decision::admit);
    auto d = e.admit(call(0, t0, "claude-sonnet-4.5"));
    CHECK(d.outcome == decision::budget_exceeded);
    CHECK(d.spent_usd == 10);
    CHECK(d.retry_after_s == 12 * 3600);  // t0 is noon UTC
    CHECK(e.admit(call(1, utc_ms(2026, 11, 11), "claude-sonnet-4.5")).outcome == decision::admit);
  }
  SECTION("spend counts on the served model's budget after a reroute") {
    auto d = e.admit(call(1, t0, "gpt-4.1"));
    e.settle(d.ticket, 4, 0, "claude-sonnet-4.5", t0);
    CHECK(spent(e, "model:claude-sonnet-4.5", t0) == 4);
    CHECK(spent(e, "global", t0) == 4);
  }
  SECTION("a soft budget over its limit still admits") {
    CHECK(spend(e, 150, t0, "gpt-4.1") == decision::admit);
    CHECK(spend(e, 1, t0, "gpt-4.1") == decision::admit);
    CHECK(spent(e, "global", t0) == 151);
  }
}

TEST_CASE("policy budgets: a model without a price is refused wherever a hard budget applies", "[policy]") {
  // Its calls are ledgered at cost 0 (priced = false): a hard budget could never count them.
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 100, false));
  cfg.keys.push_back(key("capped", "sk-capped", {}, {budget("key:capped", calendar_period::day, 1, true)}));
  policy_engine e(cfg, "UTC");
  auto capped = e.find_key("sk-capped");
  auto unpriced = call(0, t0, "", capped.get());
  unpriced.model = "o3-pro";
  const auto d = e.admit(unpriced);
  CHECK(d.outcome == decision::budget_exceeded);
  CHECK(d.unpriced);
  CHECK(d.scope == "key:capped");
  // Without a hard budget (only the soft global one) it goes through, as before.
  unpriced.key = nullptr;
  CHECK(e.admit(unpriced).outcome == decision::admit);
  // A call without a model (a pass-through path: files, models) is not refused.
  auto no_model = call(0, t0, "", capped.get());
  no_model.model = "";
  CHECK(e.admit(no_model).outcome == decision::admit);
}

TEST_CASE("policy budgets: a call that crosses midnight counts in the day it started, as the ledger does",
          "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::day, 10, true));
  policy_engine e(cfg, "UTC");
  const std::int64_t before = utc_ms(2026, 11, 30, 23, 59, 37), after = utc_ms(2026, 12, 1, 0, 0, 6);
  auto d = e.admit(call(1, before));
  REQUIRE(d.outcome == decision::admit);
  e.settle(d.ticket, 4, 0, "gpt-4.1", after, before);
  CHECK(spent(e, "global", after) == 0);  // Nov 30's spend, not Dec 1's (a warm start reads it so too)
  auto d2 = e.admit(call(1, after));
  e.settle(d2.ticket, 3, 0, "gpt-4.1", after + 1000, after);
  CHECK(spent(e, "global", after + 1000) == 3);
}

TEST_CASE("policy budgets: windows roll over at local calendar boundaries", "[policy]") {
  SECTION("a month budget in Europe/Paris resets at local midnight on the 1st") {
    policy_config cfg;
    cfg.budgets.push_back(budget("global", calendar_period::month, 100, true));
    policy_engine e(cfg, "Europe/Paris");
    const auto last_hour = utc_ms(2026, 3, 31, 21, 30);   // 23:30 local, still March
    const auto april = utc_ms(2026, 3, 31, 22, 0);        // 00:00 local, April 1st (CEST)
    CHECK(spend(e, 60, last_hour) == decision::admit);
    CHECK(spent(e, "global", april - 1000) == 60);
    CHECK(spend(e, 60, april - 1000) == decision::budget_exceeded);
    CHECK(spend(e, 60, april) == decision::admit);
    auto b = e.budgets(april);
    CHECK(b[0].spent_usd == 60);
    CHECK(b[0].window.start_s * 1000 == april);
    CHECK(b[0].window.end_s * 1000 == utc_ms(2026, 4, 30, 22));
  }
  SECTION("a day budget in America/New_York resets at local midnight across both DST changes") {
    policy_config cfg;
    cfg.budgets.push_back(budget("global", calendar_period::day, 5, true));
    policy_engine e(cfg, "America/New_York");
    // 2026-03-08 (spring forward) lasts 23 h: 05:00 UTC to 04:00 UTC the next day.
    CHECK(spend(e, 5, utc_ms(2026, 3, 8, 5, 0)) == decision::admit);
    CHECK(e.admit(call(1, utc_ms(2026, 3, 9, 3, 59, 59))).outcome == decision::budget_exceeded);
    CHECK(e.budgets(utc_ms(2026, 3, 9, 3, 59, 59))[0].window.length_s() == 23 * 3600);
    CHECK(spend(e, 5, utc_ms(2026, 3, 9, 4, 0)) == decision::admit);
    // 2026-11-01 (fall back) lasts 25 h: 04:00 UTC to 05:00 UTC the next day.
    CHECK(spend(e, 5, utc_ms(2026, 11, 1, 4, 0)) == decision::admit);
    CHECK(e.admit(call(1, utc_ms(2026, 11, 2, 4, 59, 59))).outcome == decision::budget_exceeded);
    CHECK(e.budgets(utc_ms(2026, 11, 2, 4, 0))[0].window.length_s() == 25 * 3600);
    CHECK(e.admit(call(1, utc_ms(2026, 11, 2, 5, 0))).outcome == decision::admit);
  }
  SECTION("reservations in flight across a rollover are released from the new window") {
    policy_config cfg;
    cfg.budgets.push_back(budget("global", calendar_period::day, 5, true));
    policy_engine e(cfg, "UTC");
    auto d = e.admit(call(4, utc_ms(2026, 11, 10, 23, 59)));
    REQUIRE(d.outcome == decision::admit);
    e.settle(d.ticket, 3, 0, "gpt-4.1", utc_ms(2026, 11, 11, 0, 1));
    auto b = e.budgets(utc_ms(2026, 11, 11, 0, 1));
    CHECK(b[0].spent_usd == 3);
    CHECK(b[0].reserved_usd == 0);
  }
}

TEST_CASE("policy alerts: each soft threshold is raised once per window", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 2000, false, {0.5, 0.8, 1.0}));
  policy_engine e(cfg, "UTC");
  spend(e, 900, t0);
  CHECK(e.take_alerts().empty());
  spend(e, 700, t0 + 1000);  // 1600: crosses 50 % and 80 % at once
  auto a = e.take_alerts();
  REQUIRE(a.size() == 2);
  CHECK(a[0].kind == alert_kind::soft_threshold);
  CHECK(a[0].threshold == 0.5);
  CHECK(a[1].threshold == 0.8);
  CHECK(a[1].scope == "global");
  CHECK(a[1].period == "month");
  CHECK(a[1].limit_usd == 2000);
  CHECK(a[1].spent_usd == 1600);
  CHECK(a[1].time_ms == t0 + 1000);
  CHECK(a[1].message == "Budget global/month reached 80% ($1600.00 of $2000.00)");
  spend(e, 100, t0 + 2000);
  CHECK(e.take_alerts().empty());
  spend(e, 300, t0 + 3000);
  a = e.take_alerts();
  REQUIRE(a.size() == 1);
  CHECK(a[0].threshold == 1.0);
  // A new month crosses them afresh.
  spend(e, 1100, utc_ms(2026, 12, 1, 0, 0, 1));
  CHECK(e.take_alerts().size() == 1);
}

TEST_CASE("policy seed: warm start restores spend and crossed thresholds without alerts", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::day, 100, true, {0.5, 0.8, 1.0}));
  cfg.budgets.push_back(budget("key:gone", calendar_period::month, 500, false));
  cfg.keys.push_back(key("app", "sk-app", {}, {budget("", calendar_period::month, 50, false, {0.5})}));
  policy_engine e(cfg, "UTC");
  e.seed("app", "", "gpt-4.1", 30, t0 - 60 * minute_ms);
  e.seed("gone", "", "gpt-4.1", 55, t0 - 30 * minute_ms);
  e.seed("", "", "gpt-4.1", 99, t0 - 24 * 60 * minute_ms);  // yesterday: not in today's window
  CHECK(e.take_alerts().empty());
  CHECK(spent(e, "global", t0) == 85);
  CHECK(spent(e, "key:app", t0) == 30);
  CHECK(spent(e, "key:gone", t0) == 55);
  CHECK(spent(e, "key:gone", t0) == 55);
  spend(e, 10, t0);  // 95: 50 % and 80 % were crossed before the restart
  CHECK(e.take_alerts().empty());
  spend(e, 5, t0);
  auto a = e.take_alerts();
  REQUIRE(a.size() == 1);
  CHECK(a[0].threshold == 1.0);
}

TEST_CASE("policy fleet: another instance's spend counts as a settled call, alerts included", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::day, 100, true, {0.5}));
  cfg.budgets.push_back(budget("key:elsewhere", calendar_period::day, 40, true));
  policy_engine e(cfg, "UTC");
  e.add_remote("", "", "gpt-4.1", 99, t0 - 24 * 60 * minute_ms, t0);  // yesterday's call: not today's
  CHECK(spent(e, "global", t0) == 0);
  e.add_remote("elsewhere", "web", "gpt-4.1", 45, t0 - minute_ms, t0);  // a key this instance does not have
  CHECK(spent(e, "global", t0) == 45);
  CHECK(spent(e, "key:elsewhere", t0) == 45);
  CHECK(e.take_alerts().empty());
  e.add_remote("", "", "gpt-4.1", 10, t0 - 2000, t0);  // 55: the 50 % threshold, alerted here too
  auto a = e.take_alerts();
  REQUIRE(a.size() == 1);
  CHECK(a[0].threshold == 0.5);
  e.add_remote("", "", "gpt-4.1", 50, t0 - 1000, t0);  // 105: the hard budget refuses this instance's calls
  policy_engine::call_facts f;
  f.price_model = "gpt-4.1";
  f.model = "gpt-4.1";
  f.reserve_usd = 0.01;
  f.now_ms = t0;
  CHECK(e.admit(f).outcome == decision::budget_exceeded);
}

TEST_CASE("policy charge: a running call's spend counts at once, its settle adds only the rest", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::day, 10, true, {0.5}));
  policy_engine e(cfg, "UTC");
  policy_engine::call_facts f;
  f.price_model = "gpt-realtime";
  f.model = "gpt-realtime";
  f.now_ms = t0;
  const auto d = e.admit(f);
  REQUIRE(d.outcome == decision::admit);
  CHECK(!e.charge(d.ticket, 3, "gpt-realtime", t0 + 1000));
  CHECK(spent(e, "global", t0 + 1000) == 3);
  CHECK(!e.charge(d.ticket, 2.5, "gpt-realtime", t0 + 2000));  // 5.5: the 50 % alert, mid-call
  CHECK(e.take_alerts().size() == 1);
  CHECK(e.charge(d.ticket, 4.5, "gpt-realtime", t0 + 3000));   // 10: spent, the call should end
  e.settle(d.ticket, 10.25, 0, "gpt-realtime", t0 + 4000, t0);  // the final cost: 0.25 more
  CHECK(spent(e, "global", t0 + 4000) == 10.25);
  CHECK(!e.charge(d.ticket, 1, "gpt-realtime", t0 + 5000));  // a settled ticket: ignored
  CHECK(spent(e, "global", t0 + 5000) == 10.25);
  CHECK(!e.charge(0, 1, "gpt-realtime", t0));
}

// A global reroute guard over one hour, falling back to deepseek-v3.2.
spend_guard_config reroute_guard(double max_usd) {
  spend_guard_config g;
  g.scope = "global";
  g.window = std::chrono::hours(1);
  g.max_usd = max_usd;
  g.action = guard_action::reroute;
  g.fallback_model = "deepseek-v3.2";
  return g;
}

TEST_CASE("policy spend guard: trips, reroutes, rejects and resets with hysteresis", "[policy]") {
  policy_config cfg;
  spend_guard_config g = reroute_guard(50);
  cfg.spend_guards.push_back(g);
  cfg.budgets.push_back(budget("model:deepseek-v3.2", calendar_period::day, 1000, false));

  SECTION("a trip alerts once and reroutes the very next call, except calls to the fallback") {
    policy_engine e(cfg, "UTC");
    spend(e, 30, t0, "claude-sonnet-4.5");
    CHECK(e.admit(call(1, t0 + 1, "claude-sonnet-4.5")).reroute_model.empty());
    spend(e, 21, t0 + 2, "claude-sonnet-4.5");  // 51 in the hour
    auto a = e.take_alerts();
    REQUIRE(a.size() == 1);
    CHECK(a[0].kind == alert_kind::spend_guard);
    CHECK(a[0].scope == "global");
    CHECK(a[0].period == "1h");
    CHECK(a[0].limit_usd == 50);
    CHECK(a[0].spent_usd == 51);
    CHECK_THAT(a[0].message, Contains("rerouting to deepseek-v3.2"));
    auto d = e.admit(call(1, t0 + 3, "claude-sonnet-4.5"));
    CHECK(d.outcome == decision::admit);
    CHECK(d.reroute_model == "deepseek-v3.2");
    CHECK(d.reroute_scope == "global");
    e.settle(d.ticket, 0.5, 0, "deepseek-v3.2", t0 + 4);
    CHECK(spent(e, "model:deepseek-v3.2", t0 + 4) == 0.5);
    CHECK(e.admit(call(1, t0 + 5, "deepseek-v3.2")).reroute_model.empty());
    spend(e, 10, t0 + 6, "deepseek-v3.2");
    CHECK(e.take_alerts().empty());  // still the same trip
    CHECK(e.guards(t0 + 6)[0].tripped);
    CHECK(e.guards(t0 + 6)[0].window_spent_usd == 61.5);
    auto c = e.counters();
    REQUIRE(c.guard_actions.size() == 1);
    CHECK(c.guard_actions[0].kind == "reroute");
    CHECK(c.guard_actions[0].value == 1);
  }
  SECTION("the guard stays tripped until the window's spend falls below reset_fraction * max") {
    policy_engine e(cfg, "UTC");
    spend(e, 10, t0, "claude-sonnet-4.5");
    spend(e, 41, t0 + 30 * minute_ms, "claude-sonnet-4.5");  // 51: tripped
    CHECK(e.take_alerts().size() == 1);
    // An hour on, the first 10 have left the window: 41 is under max but above 0.8 * 50.
    CHECK(e.admit(call(1, t0 + 61 * minute_ms, "claude-sonnet-4.5")).reroute_model == "deepseek-v3.2");
    CHECK(e.guards(t0 + 61 * minute_ms)[0].tripped);
    CHECK_FALSE(e.guards(t0 + 91 * minute_ms)[0].tripped);
    CHECK(e.admit(call(1, t0 + 91 * minute_ms, "claude-sonnet-4.5")).reroute_model.empty());
    spend(e, 51, t0 + 92 * minute_ms, "claude-sonnet-4.5");
    CHECK(e.take_alerts().size() == 1);  // a new trip alerts again
  }
  SECTION("a reject guard on a model refuses that model only, with Retry-After until its reset") {
    cfg.spend_guards[0].scope = "model:claude-sonnet-4.5";
    cfg.spend_guards[0].window = std::chrono::minutes(5);
    cfg.spend_guards[0].action = guard_action::reject;
    policy_engine e(cfg, "UTC");
    spend(e, 60, t0, "claude-sonnet-4.5");
    auto d = e.admit(call(1, t0 + 1000, "claude-sonnet-4.5"));
    CHECK(d.outcome == decision::guard_rejected);
    CHECK(d.scope == "model:claude-sonnet-4.5");
    CHECK(d.period == "5m");
    CHECK(d.limit_usd == 50);
    CHECK(d.spent_usd == 60);
    CHECK(d.retry_after_s == 299);  // the 60 leave the window 5 minutes after t0
    CHECK(d.ticket == 0);
    CHECK(e.admit(call(1, t0 + 1000, "gpt-4.1")).outcome == decision::admit);
    CHECK(e.admit(call(1, t0 + 5 * minute_ms, "claude-sonnet-4.5")).outcome == decision::admit);
  }
  SECTION("seeded spend over max trips the guard silently") {
    policy_engine e(cfg, "UTC");
    e.seed("", "", "claude-sonnet-4.5", 55, t0 - 10 * minute_ms);
    CHECK(e.take_alerts().empty());
    CHECK(e.admit(call(1, t0, "claude-sonnet-4.5")).reroute_model == "deepseek-v3.2");
  }
}

TEST_CASE("policy rate limits: the last minute's calls from the ledger replay the buckets", "[policy]") {
  policy_config cfg;
  cfg.keys.push_back(key("app", "sk-app", {2, 1000}));
  cfg.keys.push_back(key("free", "sk-free"));
  policy_engine e(cfg, "UTC");
  auto k = e.find_key("sk-app");
  SECTION("two calls 10 and 5 s before a restart: the RPM is spent, the TPM holds what they left") {
    e.seed_rate("app", 300, t0 - 10'000);
    e.seed_rate("app", 200, t0 - 5'000);
    e.seed_rate("free", 10'000, t0 - 5'000);  // no limits: ignored
    e.seed_rate("gone", 10'000, t0 - 5'000);  // not configured any more: ignored
    auto r = e.admit(call(0, t0, "gpt-4.1", k.get(), 100));
    CHECK(r.outcome == decision::rate_limited);
    CHECK(r.rate_kind == "requests");
    // 2 per minute, one back every 30 s: 1/3 of a request is back by now, the rest in 20 s.
    CHECK(r.remaining_requests == 0);
    CHECK(r.retry_after_s == 20);
  }
  SECTION("a call 50 s before is mostly refilled") {
    e.seed_rate("app", 900, t0 - 50'000);
    auto d = e.admit(call(0, t0, "gpt-4.1", k.get(), 100));
    CHECK(d.outcome == decision::admit);
    CHECK(d.remaining_tokens == 833);  // 1000 - 900, + 50 s x 1000/60 back, - the 100 reserved
  }
}

TEST_CASE("policy rate limits: other instances' calls of a key take from its buckets", "[policy]") {
  policy_config cfg;
  cfg.keys.push_back(key("app", "sk-app", {5, 1000}));
  cfg.keys.push_back(key("free", "sk-free"));
  policy_engine e(cfg, "UTC");
  auto k = e.find_key("sk-app");
  e.add_remote_calls("app", 4, 300, t0 - 1000, t0);      // four calls elsewhere, a second ago
  e.add_remote_calls("app", 9, 9000, t0 - 61'000, t0);   // a minute old: changes nothing
  e.add_remote_calls("free", 50, 10'000, t0 - 1000, t0);  // no limits here: ignored
  e.add_remote_calls("gone", 50, 10'000, t0 - 1000, t0);  // not configured: ignored
  auto d = e.admit(call(0, t0, "gpt-4.1", k.get(), 100));
  REQUIRE(d.outcome == decision::admit);
  CHECK(d.remaining_requests == 0);
  CHECK(d.remaining_tokens == 600);  // 1000 - 300 elsewhere - 100 reserved here
  CHECK(e.admit(call(0, t0, "gpt-4.1", k.get(), 100)).outcome == decision::rate_limited);
  // A fleet that let a burst through before it saw this instance's calls owes at most a minute.
  e.add_remote_calls("app", 1000, 0, t0 - 500, t0);
  auto r = e.admit(call(0, t0, "gpt-4.1", k.get(), 100));
  CHECK(r.outcome == decision::rate_limited);
  CHECK(r.retry_after_s <= 72);  // from -5 back to 1 at 5 a minute
}

TEST_CASE("policy rate limits: rpm and tpm buckets refill and report OpenAI headers", "[policy]") {
  policy_config cfg;
  cfg.keys.push_back(key("app", "sk-app", {2, 1000}));
  policy_engine e(cfg, "UTC");
  auto k = e.find_key("sk-app");

  SECTION("each admission takes a request and its reserved tokens") {
    auto d = e.admit(call(0, t0, "gpt-4.1", k.get(), 400));
    CHECK(d.outcome == decision::admit);
    CHECK(d.ticket != 0);
    CHECK(d.rate_headers);
    CHECK(d.limit_requests == 2);
    CHECK(d.remaining_requests == 1);
    CHECK(d.reset_requests_ms == 30'000);  // 2 per minute: one comes back every 30 s
    CHECK(d.limit_tokens == 1000);
    CHECK(d.remaining_tokens == 600);
    CHECK(d.reset_tokens_ms == 24'000);
    CHECK(e.admit(call(0, t0, "gpt-4.1", k.get(), 100)).remaining_requests == 0);
    auto r = e.admit(call(0, t0 + 1000, "gpt-4.1", k.get(), 100));
    CHECK(r.outcome == decision::rate_limited);
    CHECK(r.rate_kind == "requests");
    CHECK(r.scope == "key:app");
    CHECK(r.retry_after_s == 29);
    CHECK(r.remaining_requests == 0);
    CHECK(r.ticket == 0);
    CHECK(e.admit(call(0, t0 + 30'000, "gpt-4.1", k.get(), 100)).outcome == decision::admit);
    auto c = e.counters();
    REQUIRE(c.rate_limited.size() == 2);
    CHECK(c.rate_limited[0].kind == "requests");
    CHECK(c.rate_limited[0].value == 1);
  }
  SECTION("tokens: an estimate too large waits, settle corrects the charge") {
    auto a = e.admit(call(0, t0, "gpt-4.1", k.get(), 900));
    REQUIRE(a.outcome == decision::admit);
    auto r = e.admit(call(0, t0, "gpt-4.1", k.get(), 200));
    CHECK(r.outcome == decision::rate_limited);
    CHECK(r.rate_kind == "tokens");
    CHECK(r.remaining_tokens == 100);
    CHECK(r.retry_after_s == 6);  // 100 more tokens at 1000 per minute
    e.settle(a.ticket, 0, 300, "gpt-4.1", t0);  // used 300 of the 900 reserved
    auto d = e.admit(call(0, t0, "gpt-4.1", k.get(), 200));
    CHECK(d.outcome == decision::admit);
    CHECK(d.remaining_tokens == 500);
  }
  SECTION("a call larger than the whole TPM capacity passes on a full bucket and leaves a debt") {
    auto d = e.admit(call(0, t0, "gpt-4.1", k.get(), 1500));
    CHECK(d.outcome == decision::admit);
    CHECK(d.remaining_tokens == 0);
    CHECK(d.reset_tokens_ms == 90'000);
    auto r = e.admit(call(0, t0 + 1000, "gpt-4.1", k.get(), 0));
    CHECK(r.outcome == decision::rate_limited);
    CHECK(r.rate_kind == "tokens");
  }
  SECTION("release returns the tokens but not the request") {
    auto d = e.admit(call(0, t0, "gpt-4.1", k.get(), 800));
    e.release(d.ticket);
    auto n = e.admit(call(0, t0, "gpt-4.1", k.get(), 800));
    CHECK(n.outcome == decision::admit);
    CHECK(n.remaining_requests == 0);
    CHECK(n.remaining_tokens == 200);
  }
  SECTION("a call refused by a budget charges no request") {
    policy_config c2;
    c2.keys.push_back(key("app", "sk-app", {2, 0}, {budget("", calendar_period::day, 1, true)}));
    policy_engine e2(c2, "UTC");
    auto k2 = e2.find_key("sk-app");
    auto d = e2.admit(call(5, t0, "gpt-4.1", k2.get()));
    CHECK(d.outcome == decision::budget_exceeded);
    CHECK(d.scope == "key:app");
    CHECK(d.rate_headers);
    CHECK(d.remaining_requests == 2);
    CHECK(d.limit_tokens == 0);  // unlimited kind: no -tokens headers
  }
}

TEST_CASE("policy format_reset: OpenAI (Go) style durations", "[policy]") {
  CHECK(format_reset(0) == "0s");
  CHECK(format_reset(20) == "20ms");
  CHECK(format_reset(1000) == "1s");
  CHECK(format_reset(1500) == "1.5s");
  CHECK(format_reset(1020) == "1.02s");
  CHECK(format_reset(360'000) == "6m0s");
  CHECK(format_reset(3'723'000) == "1h2m3s");
  CHECK(format_reset(3'600'000) == "1h0m0s");
}

TEST_CASE("policy projections: scope shares of the global forecast and one overspend alert", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 2000, false));
  cfg.budgets.push_back(budget("team:web", calendar_period::month, 100, true));
  policy_engine e(cfg, "UTC");
  auto f = call(30, t0);
  f.team = "web";
  auto d = e.admit(f);
  e.settle(d.ticket, 30, 0, "gpt-4.1", t0);
  spend(e, 90, t0);  // anonymous: global only; web's share of recent spend is 30 / 120

  int calls = 0;
  time_window asked{};
  auto forecast = [&](calendar_period p, const time_window& w) {
    ++calls;
    CHECK(p == calendar_period::month);
    asked = w;
    return policy_engine::spend_forecast{400, 1000};
  };
  e.update_projections(t0, forecast);
  CHECK(calls == 1);
  CHECK(asked.end_s * 1000 == utc_ms(2026, 12, 1));
  auto b = e.budgets(t0);
  CHECK(b[0].projected_p50 == Approx(520));
  CHECK(b[0].projected_p90 == Approx(1120));
  CHECK(std::isnan(b[0].exhaustion_p90_s));
  CHECK(b[1].projected_p50 == Approx(130));
  CHECK(b[1].projected_p90 == Approx(280));
  const double now_s = t0 / 1000.0, end_s = utc_ms(2026, 12, 1) / 1000.0;
  CHECK(b[1].exhaustion_p50_s == Approx(now_s + 0.7 * (end_s - now_s)));
  CHECK(b[1].exhaustion_p90_s == Approx(now_s + 70.0 / 250.0 * (end_s - now_s)));

  auto a = e.take_alerts();
  REQUIRE(a.size() == 1);
  CHECK(a[0].kind == alert_kind::projected_overspend);
  CHECK(a[0].scope == "team:web");
  CHECK(a[0].threshold == Approx(280));
  CHECK(a[0].spent_usd == 30);
  CHECK_THAT(a[0].message, Contains("team:web/month"));

  // Spend settled after the refresh moves the projection with it: never below what is spent.
  spend(e, 50, t0 + 1000);
  b = e.budgets(t0 + 1000);
  CHECK(b[0].spent_usd == Approx(170));
  CHECK(b[0].projected_p50 == Approx(570));
  CHECK(b[0].projected_p50 >= b[0].spent_usd);

  e.update_projections(t0 + minute_ms, forecast);
  CHECK(e.take_alerts().empty());
  // Unknown forecasts clear the projections.
  e.update_projections(t0 + 2 * minute_ms, [](calendar_period, const time_window&) {
    return policy_engine::spend_forecast{};
  });
  CHECK(std::isnan(e.budgets(t0)[1].projected_p90));
  CHECK(std::isnan(e.budgets(t0)[1].exhaustion_p90_s));
  // The next month may alert again.
  spend(e, 1, utc_ms(2026, 12, 2));
  f.now_ms = utc_ms(2026, 12, 2);
  e.settle(e.admit(f).ticket, 20, 0, "gpt-4.1", f.now_ms);
  e.update_projections(utc_ms(2026, 12, 2), forecast);
  CHECK(e.take_alerts().size() == 1);
}

TEST_CASE("policy projections: in a fleet, this instance's forecast is scaled to the fleet's spend", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 2000, false));
  policy_engine e(cfg, "UTC");
  const auto forecast = [](calendar_period, const time_window&) { return policy_engine::spend_forecast{400, 1000}; };
  // Alone: spent + this instance's forecast.
  spend(e, 30, t0);
  e.update_projections(t0, forecast);
  CHECK(e.budgets(t0)[0].projected_p50 == Approx(30 + 400));
  // Three more instances spend 90 in the same hours: this one serves a quarter of the fleet, so
  // the fleet's rest of the month is four times this instance's forecast.
  e.add_remote("", "", "gpt-4.1", 90, t0 - 1000, t0);
  e.update_projections(t0, forecast);
  auto b = e.budgets(t0)[0];
  CHECK(b.spent_usd == Approx(120));
  CHECK(b.projected_p50 == Approx(120 + 4 * 400));
  CHECK(b.projected_p90 == Approx(120 + 4 * 1000));
  auto a = e.take_alerts();
  REQUIRE(a.size() == 1);  // p90 4,120 > 2,000 (alone it was 1,030: no alert)
  CHECK(a[0].kind == alert_kind::projected_overspend);
  // An instance that has served nothing cannot speak for the fleet: its forecast is not scaled.
  policy_engine idle(cfg, "UTC");
  idle.add_remote("", "", "gpt-4.1", 90, t0 - 1000, t0);
  idle.update_projections(t0, forecast);
  CHECK(idle.budgets(t0)[0].projected_p50 == Approx(90 + 400));
  // One that served a sliver: at most 100x.
  policy_engine sliver(cfg, "UTC");
  spend(sliver, 0.001, t0);
  sliver.add_remote("", "", "gpt-4.1", 90, t0 - 1000, t0);
  sliver.update_projections(t0, forecast);
  CHECK(sliver.budgets(t0)[0].projected_p50 == Approx(90.001 + 100 * 400));
}

TEST_CASE("policy projections: while the band is the cold-start prior, the median decides the alert", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 1000, false));
  policy_engine e(cfg, "UTC");
  spend(e, 100, t0);
  // p90 past the limit, p50 not: a learned band alerts, a prior does not.
  policy_engine::spend_forecast cold{500, 3000};
  cold.learned = false;
  e.update_projections(t0, [&](calendar_period, const time_window&) { return cold; });
  CHECK(e.budgets(t0)[0].projected_p90 == Approx(3100));  // the gauges still show the band
  CHECK(e.take_alerts().empty());
  // The median itself past the limit: alerted, on the median, and said so.
  cold.p50_usd = 1200;
  e.update_projections(t0 + minute_ms, [&](calendar_period, const time_window&) { return cold; });
  auto a = e.take_alerts();
  REQUIRE(a.size() == 1);
  CHECK(a[0].kind == alert_kind::projected_overspend);
  CHECK(a[0].threshold == Approx(1300));
  CHECK(a[0].projection_quantile == 0.5);
  CHECK_THAT(a[0].message, Contains("p50 $1300.00"));
  CHECK_THAT(a[0].message, Contains("still being learned"));

  policy_engine learned(cfg, "UTC");
  spend(learned, 100, t0);
  learned.update_projections(t0, [](calendar_period, const time_window&) {
    return policy_engine::spend_forecast{500, 3000};
  });
  a = learned.take_alerts();
  REQUIRE(a.size() == 1);
  CHECK(a[0].threshold == Approx(3100));
  CHECK(a[0].projection_quantile == 0.9);
  CHECK_THAT(a[0].message, Contains("p90 $3100.00"));
}

TEST_CASE("policy projections: a month carried at a fresh ledger's first-minutes rate alerts nobody", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 100, false));
  policy_engine e(cfg, "UTC");
  spend(e, 1, t0);
  // One busy first minute, carried over the month: far past the limit, but no hourly forecast
  // exists yet. The gauges show it; no projected_overspend is sent.
  policy_engine::spend_forecast first_hour{380, 3800};
  first_hour.learned = false;
  first_hour.extrapolated = true;
  e.update_projections(t0, [&](calendar_period, const time_window&) { return first_hour; });
  CHECK(e.budgets(t0)[0].projected_p50 == Approx(381));
  CHECK(e.take_alerts().empty());
  // An hour later the hourly tier forecasts the month: the same median now alerts.
  first_hour.extrapolated = false;
  e.update_projections(t0 + 60 * minute_ms, [&](calendar_period, const time_window&) { return first_hour; });
  CHECK(e.take_alerts().size() == 1);
}

TEST_CASE("policy projections: a budget already spent is exhausted now, forecast or not", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::day, 10, false));
  policy_engine e(cfg, "UTC");
  spend(e, 12, t0);
  const auto b = e.budgets(t0 + 5000);
  CHECK(std::isnan(b[0].projected_p50));  // no forecast: no projection
  CHECK(b[0].exhaustion_p50_s == Approx((t0 + 5000) / 1000.0));
  CHECK(b[0].exhaustion_p90_s == Approx((t0 + 5000) / 1000.0));
}

TEST_CASE("policy projections: an overspend alert sent before a restart is not sent again in its window", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 100, false));
  auto over = [](calendar_period, const time_window&) { return policy_engine::spend_forecast{400, 1000}; };
  policy_engine first(cfg, "UTC");
  spend(first, 10, t0);
  first.update_projections(t0, over);
  auto sent = first.take_alerts();
  REQUIRE(sent.size() == 1);
  CHECK(sent[0].window_start_s * 1000 == utc_ms(2026, 11, 1));

  policy_engine restarted(cfg, "UTC");
  restarted.mark_projected_alerted("global", calendar_period::month, sent[0].window_start_s, t0 + minute_ms);
  restarted.update_projections(t0 + minute_ms, over);
  CHECK(restarted.take_alerts().empty());
  // A mark of another window (last month's) does not silence this one.
  policy_engine other(cfg, "UTC");
  other.mark_projected_alerted("global", calendar_period::month, utc_ms(2026, 10, 1) / 1000, t0 + minute_ms);
  other.update_projections(t0 + minute_ms, over);
  CHECK(other.take_alerts().size() == 1);
}

TEST_CASE("policy rate limits: with both limits spent, Retry-After covers the later one", "[policy]") {
  policy_config cfg;
  cfg.keys.push_back(key("app", "sk-app", {2, 1000}));
  policy_engine e(cfg, "UTC");
  auto k = e.find_key("sk-app");
  REQUIRE(e.admit(call(0, t0, "gpt-4.1", k.get(), 100)).outcome == decision::admit);
  auto d = e.admit(call(0, t0, "gpt-4.1", k.get(), 900));  // the token bucket is empty
  REQUIRE(d.outcome == decision::admit);
  auto r = e.admit(call(0, t0, "gpt-4.1", k.get(), 500));
  REQUIRE(r.outcome == decision::rate_limited);
  CHECK(r.retry_after_s == 30);  // a request and 500 tokens both come back in 30 s
  auto both = e.admit(call(0, t0, "gpt-4.1", k.get(), 1000));
  REQUIRE(both.outcome == decision::rate_limited);
  CHECK(both.retry_after_s == 60);  // a full token bucket takes a minute; a request only 30 s
}

TEST_CASE("policy spend guard: a rerouted call reserves the fallback's worst case", "[policy]") {
  policy_config cfg;
  cfg.spend_guards.push_back(reroute_guard(1));
  cfg.budgets.push_back(budget("global", calendar_period::day, 2, true));
  policy_engine e(cfg, "UTC");
  spend(e, 1.5, t0, "gpt-4.1");  // trips the guard; 0.5 left in the day
  auto f = call(0.8, t0 + 1, "gpt-4.1");  // at gpt-4.1 prices it would not fit
  CHECK(e.admit(f).outcome == decision::budget_exceeded);
  f.reserve_at = [](const void*, std::string_view model) { return model == "deepseek-v3.2" ? 0.05 : 0.8; };
  auto d = e.admit(f);
  CHECK(d.outcome == decision::admit);
  CHECK(d.reroute_model == "deepseek-v3.2");
  CHECK(e.budgets(t0 + 1)[0].reserved_usd == Approx(0.05));
}

TEST_CASE("policy: format_usd keeps sub-cent amounts readable", "[policy]") {
  CHECK(format_usd(12.5) == "$12.50");
  CHECK(format_usd(0) == "$0.00");
  CHECK(format_usd(0.01) == "$0.01");
  CHECK(format_usd(0.005) == "$0.005");
  CHECK(format_usd(9.6e-05) == "$0.000096");
}

namespace {

policy_engine::call_facts user_call(double usd, std::int64_t now_ms, std::string_view user) {
  auto f = call(usd, now_ms);
  f.user = user;
  return f;
}

decision user_spend(policy_engine& e, double usd, std::int64_t now_ms, std::string_view user) {
  auto d = e.admit(user_call(usd, now_ms, user));
  if (d.outcome == decision::admit) e.settle(d.ticket, usd, 0, "gpt-4.1", now_ms);
  return d;
}

}  // namespace

TEST_CASE("policy user budgets: an end user's projection is their share of the forecast rest of the period", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("user:*", calendar_period::day, 10, true));
  policy_engine e(cfg, "UTC");
  CHECK(user_spend(e, 6, t0, "alice").outcome == decision::admit);
  CHECK(user_spend(e, 2, t0, "bob").outcome == decision::admit);
  CHECK(user_spend(e, 2, t0, "").outcome == decision::admit);  // in no user budget, in everyone's spend
  int calls = 0;
  e.update_projections(t0, [&](calendar_period p, const time_window&) {
    ++calls;
    CHECK(p == calendar_period::day);
    return policy_engine::spend_forecast{20, 40};
  });
  CHECK(calls == 1);
  const double now_s = t0 / 1000.0, end_s = utc_ms(2026, 11, 11) / 1000.0;
  // Alice, who spent most: 6 of the 10 spent recently, so 60 % of the rest.
  const auto all = e.budgets(t0);  // held: find_budget points into it
  auto* top = find_budget(all, "user:*");
  REQUIRE(top != nullptr);
  CHECK(top->top_user == "alice");
  CHECK(top->projected_p50 == Approx(6 + 0.6 * 20));
  CHECK(top->projected_p90 == Approx(6 + 0.6 * 40));
  CHECK(top->exhaustion_p50_s == Approx(now_s + 4.0 / 12.0 * (end_s - now_s)));
  // Bob's own: 20 % of the rest, p90 exactly at his limit (not over it: no exhaustion).
  auto bob = e.budgets(t0, "bob");
  auto* own = find_budget(bob, "user:*");
  CHECK(own->projected_p50 == Approx(2 + 0.2 * 20));
  CHECK(own->projected_p90 == Approx(2 + 0.2 * 40));
  CHECK(std::isnan(own->exhaustion_p90_s));
  // Nobody who has spent nothing this period has a figure to show.
  auto none = e.budgets(t0, "carol");
  CHECK(std::isnan(find_budget(none, "user:*")->projected_p50));
  // No projection alert per end user.
  for (const auto& a : e.take_alerts()) CHECK(a.kind != alert_kind::projected_overspend);
}

TEST_CASE("policy user budgets: user:* gives every end user a budget of their own, user:<id> names one", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("user:*", calendar_period::day, 10, true, {0.5}));
  cfg.budgets.push_back(budget("user:vip", calendar_period::day, 4, true));
  policy_engine e(cfg, "UTC");
  CHECK(e.counts_users());

  // Alice's own budget: her 50 % alert names her, and her next call is refused in her name.
  CHECK(user_spend(e, 6, t0, "alice").outcome == decision::admit);
  auto a = e.take_alerts();
  REQUIRE(a.size() == 1);
  CHECK(a[0].scope == "user:alice");
  CHECK(a[0].period == "day");
  auto d = user_spend(e, 5, t0 + 1000, "alice");
  CHECK(d.outcome == decision::budget_exceeded);
  CHECK(d.scope == "user:alice");
  CHECK(d.limit_usd == 10);
  CHECK(d.spent_usd == 6);
  // Others are not held by her spend; a call that names no end user is in no user budget.
  CHECK(user_spend(e, 9, t0 + 2000, "bob").outcome == decision::admit);
  CHECK(user_spend(e, 50, t0 + 3000, "").outcome == decision::admit);
  // A named user has the user:* budget too: the smaller limit binds.
  CHECK(user_spend(e, 3, t0 + 4000, "vip").outcome == decision::admit);
  d = user_spend(e, 2, t0 + 5000, "vip");
  CHECK(d.outcome == decision::budget_exceeded);
  CHECK(d.scope == "user:vip");

  auto all = e.budgets(t0 + 6000);
  auto* each = find_budget(all, "user:*");
  REQUIRE(each != nullptr);
  CHECK(each->users == 3);
  CHECK(each->top_user == "bob");
  CHECK(each->spent_usd == 9);
  CHECK(each->shared_usd == 0);
  CHECK(std::isnan(each->projected_p90));
  CHECK(spent(e, "user:vip", t0 + 6000) == 3);
  // One end user's own figures, as an app would show them.
  all = e.budgets(t0 + 6000, "alice");
  each = find_budget(all, "user:*");
  CHECK(each->top_user == "alice");
  CHECK(each->spent_usd == 6);
  CHECK(std::isnan(each->exhaustion_p50_s));
  all = e.budgets(t0 + 6000, "nobody");
  each = find_budget(all, "user:*");
  CHECK(each->spent_usd == 0);
  CHECK(each->top_user.empty());
  CHECK(each->users == 3);
  // Refusals count under the budget's scope, not one series per end user.
  auto counts = e.counters();
  REQUIRE(counts.budget_rejections.size() == 2);
  for (const auto& c : counts.budget_rejections) {
    CHECK((c.scope == "user:*" || c.scope == "user:vip"));
    CHECK(c.value == 1);
  }

  SECTION("calls in flight hold one user's budget against concurrent calls of the same user") {
    auto first = e.admit(user_call(6, t0 + 7000, "carol"));
    REQUIRE(first.outcome == decision::admit);
    CHECK(e.admit(user_call(6, t0 + 7000, "carol")).outcome == decision::budget_exceeded);
    CHECK(e.admit(user_call(6, t0 + 7000, "dave")).outcome == decision::admit);
    e.release(first.ticket);
    CHECK(e.admit(user_call(6, t0 + 7000, "carol")).outcome == decision::admit);
  }
  SECTION("a new day starts every end user afresh, and forgets the users of the last one") {
    const std::int64_t tomorrow = t0 + 24 * 60 * minute_ms;
    CHECK(user_spend(e, 5, tomorrow, "alice").outcome == decision::admit);
    all = e.budgets(tomorrow);
    each = find_budget(all, "user:*");
    REQUIRE(each != nullptr);
    CHECK(each->users == 1);
    CHECK(each->top_user == "alice");
    CHECK(each->spent_usd == 5);
  }
}

TEST_CASE("policy user budgets: warm start and the fleet count per end user", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("user:*", calendar_period::month, 10, true));
  policy_engine e(cfg, "UTC");
  e.seed("", "", "gpt-4.1", 9, t0 - 60 * minute_ms, "alice");
  e.seed("", "", "gpt-4.1", 9, utc_ms(2026, 10, 31, 23, 59), "bob");  // last month's: not counted
  e.add_remote("", "", "gpt-4.1", 8, t0 - 1000, t0, "carol");
  CHECK(user_spend(e, 2, t0, "alice").outcome == decision::budget_exceeded);
  CHECK(user_spend(e, 9, t0, "bob").outcome == decision::admit);
  CHECK(user_spend(e, 3, t0, "carol").outcome == decision::budget_exceeded);
  auto all = e.budgets(t0);
  CHECK(find_budget(all, "user:*")->users == 3);
}

TEST_CASE("policy user budgets: a new window forgets the last one's users, however it was reached", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("user:*", calendar_period::day, 10, true));
  policy_engine e(cfg, "UTC");
  const std::int64_t yesterday = t0 - 24 * 60 * minute_ms;
  e.seed("", "", "gpt-4.1", 9, yesterday, "alice");  // a warm start's rows of two days, in order
  e.seed("", "", "gpt-4.1", 1, t0 - minute_ms, "bob");
  auto all = e.budgets(t0);
  auto* each = find_budget(all, "user:*");
  CHECK(each->users == 1);
  CHECK(each->top_user == "bob");
  CHECK(each->spent_usd == 1);
  // A call that started today and settles tomorrow counts in today's window: tomorrow's budget
  // holds nobody yet.
  auto d = e.admit(user_call(1, t0, "carol"));
  REQUIRE(d.outcome == decision::admit);
  e.settle(d.ticket, 1, 0, "gpt-4.1", t0 + 24 * 60 * minute_ms, t0);
  all = e.budgets(t0 + 24 * 60 * minute_ms);
  each = find_budget(all, "user:*");
  CHECK(each->users == 0);
  CHECK(each->top_user.empty());
  CHECK(each->spent_usd == 0);
}

TEST_CASE("policy user budgets: a new period retires the last one's users at once and maintain() frees them", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("user:*", calendar_period::day, 10, true));
  policy_engine e(cfg, "UTC");
  for (int i = 0; i < 5000; ++i) CHECK(user_spend(e, 1, t0, "u" + std::to_string(i)).outcome == decision::admit);
  auto late = e.admit(user_call(2, t0, "u7"));  // settles tomorrow
  REQUIRE(late.outcome == decision::admit);
  e.maintain(t0, 1000);  // the same day: nothing to free
  CHECK(e.users_held().budget == 5000);
  CHECK(e.users_held().retired == 0);

  // The day rolls with the first call of the next: the users retire (not swept there), and the
  // new day's budget holds only the new caller. u7 starts afresh: yesterday's call in flight
  // is yesterday's.
  const std::int64_t tomorrow = t0 + 24 * 60 * minute_ms;
  auto today = e.admit(user_call(10, tomorrow, "u7"));
  CHECK(today.outcome == decision::admit);
  e.release(today.ticket);
  auto h = e.users_held();
  CHECK(h.budget == 1);
  CHECK(h.retired == 5000);
  auto all = e.budgets(tomorrow);
  CHECK(find_budget(all, "user:*")->users == 1);
  // maintain() frees them, in slices of 1000 here, but for the state yesterday's call holds.
  e.maintain(tomorrow, 1000);
  h = e.users_held();
  CHECK(h.retired == 1);
  CHECK(h.budget == 1);
  // That call settles: its spend is yesterday's, and its state goes at the next maintain().
  e.settle(late.ticket, 2, 0, "gpt-4.1", tomorrow, t0);
  CHECK(e.budgets(tomorrow, "u7")[0].spent_usd == 0);
  e.maintain(tomorrow, 1000);
  CHECK(e.users_held().retired == 0);
  // A period maintain() sees end first is rolled there.
  const std::int64_t after = tomorrow + 24 * 60 * minute_ms;
  e.maintain(after);
  CHECK(e.users_held().budget == 0);
  CHECK(e.users_held().retired == 0);
  // Without maintain(), a second roll frees the first's retired users itself.
  for (int i = 0; i < 100; ++i) user_spend(e, 1, after, "v" + std::to_string(i));
  CHECK(user_spend(e, 1, after + 24 * 60 * minute_ms, "w").outcome == decision::admit);
  CHECK(e.users_held().retired == 100);
  CHECK(user_spend(e, 1, after + 48 * 60 * minute_ms, "w").outcome == decision::admit);
  h = e.users_held();
  CHECK(h.retired == 1);
  CHECK(h.budget == 1);
}

TEST_CASE("policy user budgets: users beyond the tracked number share one bucket", "[policy]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("user:*", calendar_period::day, 10, true));
  policy_engine e(cfg, "UTC");
  for (int i = 0; i < 250'000; ++i) e.seed("", "", "gpt-4.1", 0.01, t0 - minute_ms, "u" + std::to_string(i));
  CHECK(user_spend(e, 6, t0, "late-1").outcome == decision::admit);
  CHECK(user_spend(e, 6, t0, "late-2").outcome == decision::budget_exceeded);  // the shared bucket
  CHECK(user_spend(e, 6, t0, "u7").outcome == decision::admit);                 // a tracked user's own
  auto all = e.budgets(t0);
  auto* each = find_budget(all, "user:*");
  CHECK(each->users == 250'000);
  CHECK(each->shared_usd == 6);
  CHECK(each->top_user == "u7");
  all = e.budgets(t0, "late-2");  // a user with no place of their own: the shared bucket's figures
  each = find_budget(all, "user:*");
  CHECK(each->top_user == "late-2");
  CHECK(each->spent_usd == 6);
}

TEST_CASE("policy user budgets: a guard may name one end user, not every one", "[policy]") {
  policy_config cfg;
  spend_guard_config g;
  g.scope = "user:*";
  g.max_usd = 5;
  cfg.spend_guards.push_back(g);
  CHECK_THROWS_WITH(policy_engine(cfg, "UTC"), Contains("user:<id>"));
  cfg.spend_guards[0].scope = "user:bot-7";
  policy_engine e(cfg, "UTC");
  CHECK(user_spend(e, 6, t0, "bot-7").outcome == decision::admit);  // trips it
  CHECK(user_spend(e, 1, t0 + 1000, "bot-8").outcome == decision::admit);
  CHECK(user_spend(e, 1, t0 + 1000, "bot-7").outcome == decision::guard_rejected);
}

TEST_CASE("policy user limits: each end user has their own RPM and TPM buckets, on top of the key's", "[policy]") {
  policy_config cfg;
  cfg.user_limits = {2, 1000};
  cfg.keys.push_back(key("app", "sk-app", {100, 0}));
  policy_engine e(cfg, "UTC");
  CHECK(e.limits_users());
  CHECK(e.needs_admission(nullptr));
  const auto app = e.find_key("sk-app");
  auto facts = [&](std::string_view user, std::int64_t tokens, std::int64_t now, const client_key_config* k = nullptr) {
    auto f = call(0, now, "gpt-4.1", k, tokens);
    f.user = user;
    return f;
  };
  // Alice's two requests a minute; bob's are his own; a call naming nobody is not held.
  for (int i = 0; i < 2; ++i) {
    auto d = e.admit(facts("alice", 10, t0));
    REQUIRE(d.outcome == decision::admit);
    CHECK(d.rate_headers);  // no key limits: the headers are the user's
    CHECK(d.limit_requests == 2);
    CHECK(d.remaining_requests == 1 - i);
    e.settle(d.ticket, 0, 10, "gpt-4.1", t0);
  }
  auto d = e.admit(facts("alice", 10, t0));
  CHECK(d.outcome == decision::rate_limited);
  CHECK(d.scope == "user:alice");
  CHECK(d.rate_kind == "requests");
  CHECK(d.retry_after_s == 30);  // one request back every 30 s
  CHECK(e.admit(facts("bob", 10, t0)).outcome == decision::admit);
  for (int i = 0; i < 5; ++i) CHECK(e.admit(facts("", 10, t0)).outcome == decision::admit);
  // With a limited key the headers are the key's, and the user's limit still holds.
  d = e.admit(facts("alice", 10, t0, app.get()));
  CHECK(d.outcome == decision::rate_limited);
  CHECK(d.scope == "user:alice");
  CHECK(d.limit_requests == 100);
  // Tokens: carol's 900-token call leaves 100; a 200-token one waits, and a call that used fewer
  // tokens than it reserved gives them back at settle.
  auto big = e.admit(facts("carol", 900, t0));
  REQUIRE(big.outcome == decision::admit);
  d = e.admit(facts("carol", 200, t0));
  CHECK(d.outcome == decision::rate_limited);
  CHECK(d.rate_kind == "tokens");
  e.settle(big.ticket, 0, 100, "gpt-4.1", t0);
  CHECK(e.admit(facts("carol", 200, t0)).outcome == decision::admit);
  // Refusals count under one scope, not one series per user.
  auto counts = e.counters();
  std::uint64_t user_requests = 0, user_tokens = 0;
  for (const auto& c : counts.rate_limited) {
    if (c.scope != "user:*") continue;
    (c.kind == "requests" ? user_requests : user_tokens) = c.value;
  }
  CHECK(user_requests == 2);
  CHECK(user_tokens == 1);
  // A minute later alice has her two requests again.
  CHECK(e.admit(facts("alice", 10, t0 + 60'000)).outcome == decision::admit);
}

TEST_CASE("policy user limits: a restart and the fleet's calls take from an end user's buckets", "[policy]") {
  policy_config cfg;
  cfg.user_limits = {3, 0};
  policy_engine e(cfg, "UTC");
  e.seed_rate("", 10, t0 - 2000, "alice");
  e.seed_rate("", 10, t0 - 1000, "alice");
  e.add_remote_calls("", 1, 10, t0 - 500, t0, "alice");
  e.add_remote_calls("", 2, 10, t0 - 1000, t0, "bob");
  auto f = call(0, t0);
  f.user = "alice";
  CHECK(e.admit(f).outcome == decision::rate_limited);  // 3 calls in the last 2 s
  f.user = "bob";
  CHECK(e.admit(f).outcome == decision::admit);
  CHECK(e.admit(f).outcome == decision::rate_limited);
}

TEST_CASE("policy user limits: maintain() drops idle users' buckets, so memory follows the last minute", "[policy]") {
  policy_config cfg;
  cfg.user_limits = {10, 0};
  policy_engine e(cfg, "UTC");
  // 300,000 users in one minute: beyond 250,000 held at once, the rest are not held.
  for (int i = 0; i < 300'000; ++i) {
    auto f = call(0, t0);
    const std::string u = "u" + std::to_string(i);
    f.user = u;
    auto d = e.admit(f);
    REQUIRE(d.outcome == decision::admit);
    e.settle(d.ticket, 0, 0, "gpt-4.1", t0);
  }
  auto f = call(0, t0);
  f.user = "u7";  // held: its bucket is charged
  for (int i = 0; i < 9; ++i) {
    auto d = e.admit(f);
    REQUIRE(d.outcome == decision::admit);
    e.settle(d.ticket, 0, 0, "gpt-4.1", t0);
  }
  CHECK(e.admit(f).outcome == decision::rate_limited);
  CHECK(e.users_held().rate == 250'000);
  // Users seen within the minute stay. A minute on, maintain() drops the idle users whose
  // buckets are full again, and limits hold for new users again; u7, seen again, stays.
  e.maintain(t0 + 59'000);
  CHECK(e.users_held().rate == 250'000);
  f.now_ms = t0 + 50'000;
  auto busy = e.admit(f);
  REQUIRE(busy.outcome == decision::admit);
  e.maintain(t0 + 75'000);
  CHECK(e.users_held().rate == 1);
  // u7 idles a minute too, but holds a call: it stays until the call is over, and its bucket full.
  e.maintain(t0 + 115'000);
  CHECK(e.users_held().rate == 1);
  e.release(busy.ticket);
  e.maintain(t0 + 175'000);
  CHECK(e.users_held().rate == 0);
  for (int i = 0; i < 2000; ++i) {
    auto g = call(0, t0 + 175'000);
    const std::string u = "late" + std::to_string(i);
    g.user = u;
    e.admit(g);
  }
  f.now_ms = t0 + 175'000;
  f.user = "late5";
  for (int i = 0; i < 9; ++i) CHECK(e.admit(f).outcome == decision::admit);
  CHECK(e.admit(f).outcome == decision::rate_limited);
}

// ---- Live reconfiguration (retune: SIGHUP, POST /admin/config/reload) ----

// A retune's messages, one per line (to look for one among them).
std::string lines(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += s + "\n";
  return out;
}

TEST_CASE("policy retune: a budget's new limit is in force at once and its spend is kept", "[policy][retune]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 10, true, {0.5, 0.8}));
  policy_engine e(cfg, "UTC");
  auto d = e.admit(call(6, t0));
  REQUIRE(d.outcome == decision::admit);
  e.settle(d.ticket, 6, 0, "gpt-4.1", t0);
  auto a = e.take_alerts();
  REQUIRE(a.size() == 1);  // 50% of $10
  CHECK(e.admit(call(5, t0 + 1000)).outcome == decision::budget_exceeded);

  // Raised to $20: the $5 call fits now; the $6 spent is kept; 80% of $20 is ahead.
  policy_config raised = cfg;
  raised.budgets[0].limit_usd = 20;
  auto r = e.retune(raised, cfg, t0 + 2000);
  REQUIRE(r.applied.size() == 1);
  CHECK_THAT(r.applied[0], Contains("budget global/month") && Contains("limit $10.00 -> $20.00"));
  CHECK(r.restart_required.empty());
  CHECK(spent(e, "global", t0 + 2000) == Approx(6));
  auto all = e.budgets(t0 + 2000);
  CHECK(find_budget(all, "global")->limit_usd == 20);
  CHECK(e.take_alerts().empty());  // 0.5 of $20 is $10: not reached, no alert
  d = e.admit(call(5, t0 + 3000));
  REQUIRE(d.outcome == decision::admit);
  e.settle(d.ticket, 5, 0, "gpt-4.1", t0 + 3000);
  a = e.take_alerts();
  REQUIRE(a.size() == 1);  // $11 of $20: 50% again, under the new limit
  CHECK(a[0].threshold == 0.5);
  CHECK(a[0].limit_usd == 20);

  // The same file again changes nothing.
  CHECK(e.retune(raised, cfg, t0 + 4000).applied.empty());

  // Lowered to $12: 80% ($9.60) is behind the $11 spent: it alerts at once, and $2 no longer fits.
  policy_config lowered = cfg;
  lowered.budgets[0].limit_usd = 12;
  r = e.retune(lowered, cfg, t0 + 5000);
  REQUIRE(r.applied.size() == 1);
  a = e.take_alerts();
  REQUIRE(a.size() == 1);
  CHECK(a[0].threshold == 0.8);
  CHECK(a[0].limit_usd == 12);
  CHECK(e.admit(call(2, t0 + 6000)).outcome == decision::budget_exceeded);

  // Soft (not hard): the call goes through.
  policy_config soft = lowered;
  soft.budgets[0].hard = false;
  r = e.retune(soft, cfg, t0 + 7000);
  REQUIRE(r.applied.size() == 1);
  CHECK_THAT(r.applied[0], Contains("hard true -> false"));
  CHECK(e.admit(call(2, t0 + 8000)).outcome == decision::admit);
}

TEST_CASE("policy retune: a reservation in flight settles under the new limit", "[policy][retune]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("team:web", calendar_period::day, 10, true));
  auto k = key("web-app", "sk-web-app-secret", {}, {}, "web");
  cfg.keys.push_back(k);
  policy_engine e(cfg, "UTC");
  const auto kp = e.find_key("sk-web-app-secret");
  auto d = e.admit(call(8, t0, "gpt-4.1", kp.get()));
  REQUIRE(d.outcome == decision::admit);
  policy_config next = cfg;
  next.budgets[0].limit_usd = 9;
  e.retune(next, cfg, t0 + 1);
  auto all = e.budgets(t0 + 2);
  CHECK(find_budget(all, "team:web")->reserved_usd == Approx(8));
  CHECK(e.admit(call(2, t0 + 3, "gpt-4.1", kp.get())).outcome == decision::budget_exceeded);  // 8 + 2 > 9
  e.settle(d.ticket, 1, 0, "gpt-4.1", t0 + 4);
  CHECK(e.admit(call(2, t0 + 5, "gpt-4.1", kp.get())).outcome == decision::admit);  // 1 + 2 <= 9
}

TEST_CASE("policy retune: guards, key and end-user rate limits take their new numbers", "[policy][retune]") {
  policy_config cfg;
  spend_guard_config g;
  g.scope = "global";
  g.window = std::chrono::minutes(60);
  g.max_usd = 10;
  cfg.spend_guards.push_back(g);
  cfg.keys.push_back(key("batch", "sk-batch-secret-1", {2, 0}));
  cfg.user_limits = {1, 0};
  policy_engine e(cfg, "UTC");
  const auto kp = e.find_key("sk-batch-secret-1");
  auto d = e.admit(call(5, t0, "gpt-4.1", kp.get()));
  REQUIRE(d.outcome == decision::admit);
  e.settle(d.ticket, 5, 0, "gpt-4.1", t0);
  d = e.admit(call(0, t0 + 1, "gpt-4.1", kp.get()));
  REQUIRE(d.outcome == decision::admit);
  e.release(d.ticket);
  CHECK(e.admit(call(0, t0 + 2, "gpt-4.1", kp.get())).outcome == decision::rate_limited);  // 2 rpm spent

  policy_config next = cfg;
  next.spend_guards[0].max_usd = 4;   // $5 spent in the hour: trips now
  next.keys[0].limits.rpm = 120;      // the bucket keeps its level, refills at 2/s
  next.user_limits = {30, 0};
  auto r = e.retune(next, cfg, t0 + 3);
  CHECK(r.applied.size() == 3);
  CHECK(r.restart_required.empty());
  auto a = e.take_alerts();
  REQUIRE(a.size() == 1);
  CHECK(a[0].kind == alert_kind::spend_guard);
  CHECK(e.admit(call(0, t0 + 4, "gpt-4.1")).outcome == decision::guard_rejected);
  // Sessions find the key's new limits on the key they look up.
  CHECK(e.find_key("sk-batch-secret-1")->limits.rpm == 120);

  next.spend_guards[0].max_usd = 100;  // far above the hour's $5: resets
  e.retune(next, cfg, t0 + 5);
  d = e.admit(call(0, t0 + 1000, "gpt-4.1", kp.get()));
  CHECK(d.outcome == decision::admit);
  CHECK(d.limit_requests == 120);
  e.release(d.ticket);

  // The end user's bucket: 30 a minute now.
  auto u = call(0, t0 + 2000);
  u.user = "alice";
  for (int i = 0; i < 30; ++i) {
    auto du = e.admit(u);
    REQUIRE(du.outcome == decision::admit);
    e.release(du.ticket);
  }
  CHECK(e.admit(u).outcome == decision::rate_limited);
}

TEST_CASE("policy retune: what cannot change under running calls is named and left as it is", "[policy][retune]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 10, true));
  cfg.keys.push_back(key("app", "sk-app-secret-1", {}, {budget("key:app", calendar_period::day, 5, true)}));
  policy_engine e(cfg, "UTC");
  policy_config next = cfg;
  next.budgets.push_back(budget("team:web", calendar_period::day, 1, true));
  next.budgets[0].period = calendar_period::week;  // global/month removed, global/week added
  next.keys[0].team = "web";
  next.keys[0].budgets[0].limit_usd = 7;  // applied: same key, same period
  next.keys.push_back(key("new", "sk-new-secret-12"));
  next.user_limits = {10, 0};
  next.admin_token = "changed-token";
  next.keys[1].budgets.push_back(budget("key:other", calendar_period::day, 1, true));  // an added key's budgets
  auto r = e.retune(next, cfg, t0);
  const std::string applied = lines(r.applied);
  CHECK_THAT(applied, Contains("budget key:app/day: limit $5.00 -> $7.00"));
  CHECK_THAT(applied, Contains("key app: team '' -> 'web'"));
  CHECK_THAT(applied, Contains("key new added"));
  CHECK(r.applied.size() == 3);
  const std::string all = lines(r.restart_required);
  CHECK_THAT(all, Contains("budget global/month removed"));
  CHECK_THAT(all, Contains("budget global/week added"));
  CHECK_THAT(all, Contains("budget team:web/day added"));
  CHECK_THAT(all, Contains("user_limits turned on"));
  CHECK(r.restart_required.size() == 4);  // admin_token is the application's (server.cpp), not the engine's
  // Left as they were: the month budget holds, no team budget (but for the new key's own).
  auto budgets_now = e.budgets(t0);
  CHECK(budgets_now.size() == 3);
  CHECK(find_budget(budgets_now, "key:new") != nullptr);
  CHECK(e.admit(call(11, t0)).outcome == decision::budget_exceeded);
  const auto added = e.find_key("sk-new-secret-12");
  REQUIRE(added != nullptr);
  CHECK(e.admit(call(2, t0, "gpt-4.1", added.get())).outcome == decision::budget_exceeded);  // its own $1 a day
  CHECK(e.find_key("sk-app-secret-1")->team == "web");
}

TEST_CASE("policy retune: configured keys are added, removed and rotated - a rotated key keeps its buckets and spend",
          "[policy][retune]") {
  policy_config cfg;
  cfg.keys.push_back(key("app", "sk-app-secret-1", {2, 0}, {budget("key:app", calendar_period::day, 10, true)}));
  cfg.keys.push_back(key("old", "sk-old-secret-1"));
  policy_engine e(cfg, "UTC");
  // A key the admin API added: the file cannot take its name, nor remove it.
  REQUIRE(e.add_key(key("stored", "sk-stored-secret")));
  auto k = e.find_key("sk-app-secret-1");
  for (int i = 0; i < 2; ++i) {
    auto d = e.admit(call(3, t0 + i, "gpt-4.1", k.get()));
    REQUIRE(d.outcome == decision::admit);
    e.settle(d.ticket, 3, 0, "gpt-4.1", t0 + i);
  }

  policy_config next = cfg;
  next.keys[0].sha256 = policy_engine::sha256("sk-app-secret-2");  // rotated
  next.keys.erase(next.keys.begin() + 1);                           // "old" removed
  next.keys.push_back(key("stored", "sk-another-secret"));          // clashes with the stored key
  next.keys.push_back(key("fresh", "sk-fresh-secret-1"));
  auto r = e.retune(next, cfg, t0 + 10);
  const std::string applied = lines(r.applied);
  CHECK_THAT(applied, Contains("key app: secret rotated"));
  CHECK_THAT(applied, Contains("key old removed"));
  CHECK_THAT(applied, Contains("key fresh added"));
  REQUIRE(r.warnings.size() == 1);
  CHECK_THAT(r.warnings[0], Contains("key stored not added"));
  CHECK(r.restart_required.empty());

  CHECK(e.find_key("sk-app-secret-1") == nullptr);
  CHECK(e.find_key("sk-old-secret-1") == nullptr);
  CHECK(e.find_key("sk-fresh-secret-1") != nullptr);
  CHECK(e.find_key("sk-stored-secret") != nullptr);
  k = e.find_key("sk-app-secret-2");
  REQUIRE(k != nullptr);
  // The rotated key's minute is still spent (2 rpm), and its day's $6 still counts.
  CHECK(e.admit(call(0, t0 + 20, "gpt-4.1", k.get())).outcome == decision::rate_limited);
  CHECK(spent(e, "key:app", t0 + 20) == Approx(6));
  std::vector<std::string> names;
  for (const auto& c : e.configured_keys()) names.push_back(c->name);
  CHECK(names == std::vector<std::string>{"app", "fresh"});
  // The same file again: nothing more.
  r = e.retune(next, cfg, t0 + 30);
  CHECK(r.applied.empty());
  CHECK(r.warnings.size() == 1);  // the clash is said each time
}

TEST_CASE("policy retune: reloads while calls are admitted and settled on other threads", "[policy][retune]") {
  policy_config cfg;
  cfg.budgets.push_back(budget("global", calendar_period::month, 1e9, true, {0.5}));
  cfg.keys.push_back(key("k", "sk-concurrent-1", {100000, 0}, {budget("key:k", calendar_period::day, 1e9, true)}));
  spend_guard_config g;
  g.window = std::chrono::minutes(5);
  g.max_usd = 1e9;
  cfg.spend_guards.push_back(g);
  cfg.user_limits = {100000, 0};
  policy_engine e(cfg, "UTC");
  std::atomic<bool> stop{false};
  std::atomic<int> admitted{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t)
    callers.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        const auto k = e.find_key("sk-concurrent-1");
        auto c = call(0.01, t0 + i, "gpt-4.1", k.get());
        c.user = t == 0 ? "alice" : "bob";
        if (e.needs_admission(k.get())) {
          auto d = e.admit(c);
          if (d.outcome == decision::admit) {
            ++admitted;
            e.settle(d.ticket, 0.01, 10, "gpt-4.1", t0 + i);
          }
        }
      }
    });
  // The callers are under way before the first reload (a busy machine may start them late).
  while (admitted.load() < 10) std::this_thread::yield();
  for (int i = 0; i < 200; ++i) {
    policy_config next = cfg;
    next.budgets[0].limit_usd = i % 2 ? 1e9 : 2e9;
    next.budgets[0].soft = i % 3 ? std::vector<double>{0.5} : std::vector<double>{0.25, 0.75};
    next.keys[0].limits.rpm = 100000 + i;
    next.keys[0].budgets[0].limit_usd = 1e9 + i;
    next.spend_guards[0].max_usd = 1e9 + i;
    next.user_limits.rpm = 100000 + i;
    auto r = e.retune(next, cfg, t0 + i);
    CHECK(r.restart_required.empty());
    (void)e.budgets(t0 + i);
  }
  const int before_last = admitted.load();
  while (admitted.load() < before_last + 10) std::this_thread::yield();  // some calls under the last limits
  stop = true;
  for (auto& t : callers) t.join();
  CHECK(e.find_key("sk-concurrent-1")->limits.rpm == 100199);
}
