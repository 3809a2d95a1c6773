// Spend controls in the running proxy: engine + notifier wiring, warm start, alert thread,
// projections and metrics (see spend_control.hpp).
#include "net/spend_control.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <set>

#include "core/calendar.hpp"
#include "core/config.hpp"
#include "core/log.hpp"
#include "core/policy.hpp"
#include "core/stated_rates.hpp"
#include "ledger/key_store.hpp"
#include "ledger/pg_shipper.hpp"
#include "ledger/report.hpp"
#include "net/alert_notifier.hpp"
#include "net/forecast_service.hpp"
#include "net/metrics.hpp"

namespace tollgate {
namespace {

namespace pm = prometheus;
using namespace std::chrono_literals;

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The series one scrape sets; those the previous scrape set and this one did not are removed.
class scrape_series {
 public:
  void begin() { now_.clear(); }
  pm::Gauge& gauge(pm::Family<pm::Gauge>& f, const pm::Labels& l) { return note(f, l, gauges_); }
  pm::Counter& counter(pm::Family<pm::Counter>& f, const pm::Labels& l) { return note(f, l, counters_); }
  void end() {
    sweep(gauges_);
    sweep(counters_);
  }

 private:
  template <class T>
  using seen = std::map<std::pair<pm::Family<T>*, pm::Labels>, T*>;
  template <class T>
  T& note(pm::Family<T>& f, const pm::Labels& l, seen<T>& all) {
    T& m = f.Add(l);
    all[{&f, l}] = &m;
    now_.insert(&m);
    return m;
  }
  template <class T>
  void sweep(seen<T>& all) {
    for (auto it = all.begin(); it != all.end();) {
      if (now_.count(it->second) == 0) {
        it->first.first->Remove(it->second);
        it = all.erase(it);
      } else {
        ++it;
      }
    }
  }
  seen<pm::Gauge> gauges_;
  seen<pm::Counter> counters_;
  std::set<const void*> now_;
};

// The budget/guard/rate-limit families, refreshed from the engine's snapshots at each scrape.
// Scopes come from the configured budgets, guards and keys only, so the label sets are bounded.
void register_metrics(metrics& m, policy_engine& engine, alert_notifier* notifier) {
  auto& reg = m.registry();
  auto& limit = pm::BuildGauge().Name("tollgate_budget_limit_usd").Help("Budget limit in USD, by scope and period.").Register(reg);
  auto& spent = pm::BuildGauge()
                    .Name("tollgate_budget_spent_usd")
                    .Help("Settled spend in the current calendar period, by scope and period.")
                    .Register(reg);
  auto& projected = pm::BuildGauge()
                        .Name("tollgate_budget_projected_usd")
                        .Help("Projected spend by the end of the period (spent + forecast), by scope, period and quantile.")
                        .Register(reg);
  auto& exhaustion = pm::BuildGauge()
                         .Name("tollgate_budget_exhaustion_timestamp_seconds")
                         .Help("When the projection reaches the limit (Unix seconds; NaN: not within the period).")
                         .Register(reg);
  auto& tripped = pm::BuildGauge()
                      .Name("tollgate_spend_guard_tripped")
                      .Help("1 while the spend-rate guard of the scope is tripped, else 0.")
                      .Register(reg);
  auto& rate_limited = pm::BuildCounter()
                           .Name("tollgate_rate_limited_total")
                           .Help("Calls refused by a key's rate limit, by scope and kind (requests, tokens).")
                           .Register(reg);
  auto& rejections = pm::BuildCounter()
                         .Name("tollgate_budget_rejections_total")
                         .Help("Calls refused because a hard budget would be exceeded, by scope.")
                         .Register(reg);
  auto& guard_actions = pm::BuildCounter()
                            .Name("tollgate_spend_guard_actions_total")
                            .Help("Calls a tripped spend guard rejected or rerouted, by scope and action.")
                            .Register(reg);
  auto& end_users = pm::BuildGauge()
                        .Name("tollgate_end_users_tracked")
                        .Help("End users whose state spend control holds in memory, by kind (budget: of user:* budgets' "
                              "current periods; retired: of ended periods, being freed; rate: user_limits buckets).")
                        .Register(reg);
  auto& alerts = pm::BuildCounter()
                     .Name("tollgate_alerts_total")
                     .Help("Alert deliveries to webhooks, by outcome (sent, failed, retried, suppressed, dropped).")
                     .Register(reg);
  // Series of a key that was revoked (or of anything no longer configured) go at the next scrape,
  // so key rotation does not grow the exposition.
  auto live = std::make_shared<scrape_series>();
  m.add_scrape_hook([&, notifier, live, &engine = engine] {
    const std::int64_t now = unix_ms();
    live->begin();
    // Several budgets of one scope and period (a key's own day budget and a `key:<name>` one) share
    // their series: it shows the binding one, the smallest limit (their spend is the same).
    std::map<std::pair<std::string, std::string>, policy_engine::budget_status> binding;
    for (auto& b : engine.budgets(now)) {
      auto [it, fresh] = binding.try_emplace({b.scope, std::string(to_string(b.period))}, b);
      if (!fresh && b.limit_usd < it->second.limit_usd) it->second = std::move(b);
    }
    for (const auto& [key, b] : binding) {
      const auto& [scope, period] = key;
      live->gauge(limit, {{"scope", scope}, {"period", period}}).Set(b.limit_usd);
      live->gauge(spent, {{"scope", scope}, {"period", period}}).Set(b.spent_usd);
      live->gauge(projected, {{"scope", scope}, {"period", period}, {"quantile", "0.5"}}).Set(b.projected_p50);
      live->gauge(projected, {{"scope", scope}, {"period", period}, {"quantile", "0.9"}}).Set(b.projected_p90);
      live->gauge(exhaustion, {{"scope", scope}, {"period", period}, {"quantile", "0.5"}}).Set(b.exhaustion_p50_s);
      live->gauge(exhaustion, {{"scope", scope}, {"period", period}, {"quantile", "0.9"}}).Set(b.exhaustion_p90_s);
    }
    // Several guards of one scope (a 5-minute and a 1-hour one): tripped while any of them is.
    std::map<std::string, bool> any_tripped;
    for (const auto& g : engine.guards(now)) any_tripped[g.scope] = any_tripped[g.scope] || g.tripped;
    for (const auto& [scope, on] : any_tripped) live->gauge(tripped, {{"scope", scope}}).Set(on ? 1 : 0);
    // Counts of several guards or budgets under one label set add up.
    const auto totals = [&](pm::Family<pm::Counter>& family, const auto& entries, const char* second) {
      std::map<std::pair<std::string, std::string>, double> sum;
      for (const auto& c : entries) sum[{c.scope, second ? c.kind : std::string()}] += static_cast<double>(c.value);
      for (const auto& [k, v] : sum) {
        pm::Labels labels{{"scope", k.first}};
        if (second) labels.emplace(second, k.second);
        set_counter_total(live->counter(family, labels), v);
      }
    };
    // Memory the end users' states take grows with them (about 350 bytes each): one series a kind.
    if (engine.counts_users() || engine.limits_users()) {
      const auto held = engine.users_held();
      live->gauge(end_users, {{"kind", "budget"}}).Set(static_cast<double>(held.budget));
      live->gauge(end_users, {{"kind", "retired"}}).Set(static_cast<double>(held.retired));
      live->gauge(end_users, {{"kind", "rate"}}).Set(static_cast<double>(held.rate));
    }
    auto counts = engine.counters();
    totals(rate_limited, counts.rate_limited, "kind");
    totals(rejections, counts.budget_rejections, nullptr);
    totals(guard_actions, counts.guard_actions, "action");
    live->end();
    if (notifier) {
      auto s = notifier->stats();
      set_counter_total(alerts.Add({{"outcome", "sent"}}), static_cast<double>(s.sent));
      set_counter_total(alerts.Add({{"outcome", "failed"}}), static_cast<double>(s.failed));
      set_counter_total(alerts.Add({{"outcome", "retried"}}), static_cast<double>(s.retried));
      set_counter_total(alerts.Add({{"outcome", "suppressed"}}), static_cast<double>(s.suppressed));
      set_counter_total(alerts.Add({{"outcome", "dropped"}}), static_cast<double>(s.dropped + counts.alerts_dropped));
    }
  });
}

}  // namespace

spend_control::spend_control(const config& cfg, metrics& m, const std::string& fleet_instance) : cfg_(cfg) {
  try {
    engine_ = std::make_unique<policy_engine>(cfg.policy, cfg.timezone);
  } catch (const std::invalid_argument& e) {
    throw config_error(cfg.source_file, 0, e.what());
  }
  if (!cfg.policy.webhooks.empty()) {
    try {
      // A delivery of a claimed alert is confirmed in the fleet table (a claim is a lease until then).
      notifier_ = std::make_unique<alert_notifier>(cfg.policy.webhooks, [this](const alert_delivery& d) {
        alert_notifier::log_delivery(d);
        if (claims_ && d.event.kind != alert_kind::anomaly &&
            (d.outcome == alert_outcome::sent || d.outcome == alert_outcome::suppressed)) {
          std::lock_guard lock(confirm_mu_);
          confirmed_.push_back(d.event.dedupe_key());
        }
      });
    } catch (const std::exception& e) {
      throw config_error(cfg.source_file, 0, std::string("alerts.webhooks: ") + e.what());
    }
  }
  register_metrics(m, *engine_, notifier_.get());
  if (notifier_ && !fleet_instance.empty() && !cfg.ledger_postgres.url.empty() && cfg.ledger_postgres.fleet_alerts) {
    pg_alert_claim_options o;
    o.url = cfg.ledger_postgres.url;
    o.instance = fleet_instance;
    o.lease = cfg.ledger_postgres.alert_lease;
    claims_ = std::make_unique<pg_alert_claims>(std::move(o));
    claim_cooldown_ms_ = std::numeric_limits<std::int64_t>::max();
    for (const auto& w : cfg.policy.webhooks) claim_cooldown_ms_ = std::min<std::int64_t>(claim_cooldown_ms_, w.cooldown.count());
    auto& family = pm::BuildCounter()
                       .Name("tollgate_alerts_fleet_claims_total")
                       .Help("Budget and guard alerts claimed in the fleet ledger before sending, by outcome (claimed: "
                             "sent by this instance; taken: another instance sent it; unavailable: PostgreSQL did not "
                             "answer, sent by this instance).")
                       .Register(m.registry());
    auto* claimed = &family.Add({{"outcome", "claimed"}});
    auto* taken = &family.Add({{"outcome", "taken"}});
    auto* unavailable = &family.Add({{"outcome", "unavailable"}});
    count_claim_ = [=](std::string_view outcome) {
      (outcome == "claimed" ? claimed : outcome == "taken" ? taken : unavailable)->Increment();
    };
  }
}

spend_control::~spend_control() { stop(); }

std::int64_t spend_control::spend_horizon_ms(std::int64_t now) const {
  std::int64_t since = now;
  calendar cal(cfg_.timezone);
  auto consider = [&](const budget_config& b) { since = std::min(since, cal.window(b.period, now / 1000).start_s * 1000); };
  for (const auto& b : cfg_.policy.budgets) consider(b);
  for (const auto& k : engine_->keys())
    for (const auto& b : k->budgets) consider(b);
  for (const auto& g : cfg_.policy.spend_guards) since = std::min(since, now - g.window.count());
  return since;
}

void spend_control::add_remote(const std::vector<remote_spend>& rows) {
  const std::int64_t now = unix_ms();
  for (const auto& r : rows) engine_->add_remote(r.client_key_id, r.team, r.price_model, r.cost_usd, r.ts_ms, now, r.user);
}

std::vector<std::string> spend_control::rate_limited_keys() const {
  std::vector<std::string> out;
  for (const auto& k : engine_->keys())
    if (k->limits.rpm > 0 || k->limits.tpm > 0) out.push_back(k->name);
  return out;
}

void spend_control::add_remote_calls(const std::vector<remote_calls>& rows) {
  const std::int64_t now = unix_ms();
  for (const auto& r : rows) engine_->add_remote_calls(r.client_key_id, r.calls, r.tokens, r.ts_ms, now, r.user);
}

// The last day's calls priced at a stated cost teach stated_rates again what relays charged for
// the models the table lacks (a model not seen in that day is reserved at the table's dearest
// prices until its first call ends). Once: at start when a hard budget exists, or when the first
// is added later (a key's, through the admin API); without one nothing reserves at them. Only the
// calls before this run's start are read: the run's own were learned as they ended.
void spend_control::learn_stated_costs() {
  if (stated_ == nullptr || ledger_path_.empty() || stated_learned_.exchange(true)) return;
  try {
    const std::size_t n = for_each_stated_cost(
        ledger_path_, started_ms_ - 86'400'000, started_ms_,
        // A stream's stated cost came in its usage; a whole reply's may have come in a header.
        [this](const stated_cost_row& r) {
          stated_->replay(r.upstream, r.stream, sent_model_ ? sent_model_(r.model) : std::string(r.model),
                          r.uncached_prompt, r.completion, r.usd, r.provider);
        });
    if (n > 0)
      log_line(log_level::info, "stated costs of unpriced models read from the ledger")
          .integer("calls", static_cast<std::int64_t>(n))
          .integer("models", static_cast<std::int64_t>(stated_->models()));
  } catch (const std::exception& e) {
    log_line(log_level::warn, "stated costs not read from the ledger: unpriced models reserve at the dearest prices")
        .str("error", e.what());
  }
}

void spend_control::start(const std::string& ledger_path) {
  const std::int64_t now = unix_ms();
  // Keys added through the admin API live in the ledger database.
  try {
    key_store store(ledger_path);
    for (auto& k : store.load_active()) {
      std::string name = k.name;
      if (!engine_->add_key(std::move(k)))
        log_line(log_level::warn, "stored client key skipped: a configured key has the same name or secret")
            .str("name", name);
    }
  } catch (const std::exception& e) {
    log_line(log_level::warn, "stored client keys not loaded").str("error", e.what());
  }
  // Budgets and guards resume from the ledger: spend of the current periods counts at once.
  const std::int64_t since = spend_horizon_ms(now);
  std::int64_t fine_since = std::numeric_limits<std::int64_t>::max();  // guards' windows: per second
  for (const auto& g : cfg_.policy.spend_guards) fine_since = std::min(fine_since, now - g.window.count());
  if (since < now) {
    try {
      auto t0 = std::chrono::steady_clock::now();
      std::int64_t samples = 0;
      for_each_spend_sample(ledger_path, since, fine_since, now + 60'000,  // not rows dated in the future
                            engine_->counts_users(), [&](spend_sample&& s) {
                              engine_->seed(s.client_key_id, s.team, s.price_model, s.cost_usd, s.ts_ms, s.user);
                              ++samples;
                            });
      log_line(log_level::info, "budgets warm-started from the ledger")
          .integer("minutes", samples)
          .num("duration_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    } catch (const std::exception& e) {
      log_line(log_level::warn, "budget warm start failed: budgets start from zero").str("error", e.what());
    }
  }
  // Rate limits resume too: the last minute's calls of limited keys (and end users) replay their buckets.
  const auto keys = engine_->keys();
  if (engine_->limits_users() ||
      std::any_of(keys.begin(), keys.end(), [](const auto& k) { return k->limits.rpm > 0 || k->limits.tpm > 0; })) {
    try {
      const auto calls = key_calls_since(ledger_path, now - 60'000, now + 60'000, engine_->limits_users());
      for (const auto& c : calls) engine_->seed_rate(c.client_key_id, c.tokens, c.start_ms, c.user);
      log_line(log_level::info, "rate limits warm-started from the ledger").integer("calls", static_cast<std::int64_t>(calls.size()));
    } catch (const std::exception& e) {
      log_line(log_level::warn, "rate limit warm start failed: buckets start full").str("error", e.what());
    }
  }
  // A hard budget reserves a model the table lacks at what its relay charged for it.
  ledger_path_ = ledger_path;
  started_ms_ = now;
  const auto statuses = engine_->budgets(now);
  if (std::any_of(statuses.begin(), statuses.end(), [](const auto& b) { return b.hard; })) learn_stated_costs();
  // A projected_overspend alert already sent in a budget's current window is not sent again.
  try {
    for (const auto& m : window_alerts_since(ledger_path, since / 1000)) {
      if (m.kind != to_string(alert_kind::projected_overspend)) continue;
      for (calendar_period p : {calendar_period::day, calendar_period::week, calendar_period::month})
        if (m.period == to_string(p)) engine_->mark_projected_alerted(m.scope, p, m.window_start_s, now);
    }
  } catch (const std::exception& e) {
    log_line(log_level::warn, "sent alerts not read back: a projection may alert again").str("error", e.what());
  }
  // Background responses and batches created before a restart are still metered once.
  for (auto& [kind, set] : pending_) {
    try {
      for (const auto& [id, created_ms] : load_pending_objects(ledger_path, kind, now - std::int64_t{30} * 86'400'000))
        set->add(id, created_ms);
    } catch (const std::exception& e) {
      log_line(log_level::warn, "pending objects not read back: their usage may go unmetered")
          .str("kind", kind)
          .str("error", e.what());
    }
    set->track_changes();
  }
  if (notifier_) notifier_->start();
  started_ = true;
  thread_ = std::thread([this] {
    name_this_thread("tg-spend");
    run();
  });
}

void spend_control::run() {
  lower_thread_priority(5);
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, 1s, [this] { return stopping_; });
    lock.unlock();
    pump();
    lock.lock();
  }
}

void spend_control::track_pending(std::vector<std::pair<std::string, pending_responses*>> sets) {
  pending_ = std::move(sets);
}

void spend_control::save_pending() {
  if (ledger_path_.empty()) return;
  if (open_sessions_ != nullptr) {
    if (auto rows = open_sessions_->take_if_changed()) {
      try {
        save_open_sessions(ledger_path_, *rows);
      } catch (const std::exception& e) {
        log_line(log_level::warn, "open Realtime sessions not saved: a crash now would lose their rows")
            .str("error", e.what());
        open_sessions_->touch();  // tried again at the next pump
      }
    }
  }
  for (auto& [kind, set] : pending_) {
    auto changes = set->take_changes();
    if (changes.empty()) continue;
    try {
      record_pending_objects(ledger_path_, kind, changes, unix_ms());
    } catch (const std::exception& e) {
      log_line(log_level::warn, "pending objects not saved: a restart may leave their usage unmetered")
          .str("kind", kind)
          .str("error", e.what());
    }
  }
}

// Confirms the claims whose alert a webhook took (this instance's claims: a lease until then).
void spend_control::confirm_claims() {
  if (!claims_) return;
  std::vector<std::string> keys;
  {
    std::lock_guard lock(confirm_mu_);
    keys.swap(confirmed_);
  }
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  for (const auto& k : keys) claims_->confirm(k);
}

// Alerts another instance claimed, once their lease is over: sent here when that claim was never
// confirmed (its instance stopped before a webhook took the alert), else forgotten once delivered.
void spend_control::settle_claims(std::int64_t now_ms) {
  confirm_claims();
  for (auto it = claimed_elsewhere_.begin(); it != claimed_elsewhere_.end();) {
    if (it->recheck_ms > now_ms) {
      ++it;
      continue;
    }
    const auto s = claims_->steal(it->event.dedupe_key(), now_ms);
    if (s == alert_steal::stolen) {
      log_line(log_level::warn, "alert sent here: the instance that claimed it never confirmed its delivery")
          .str("kind", to_string(it->event.kind))
          .str("scope", it->event.scope);
      count_claim_("claimed");
      if (notifier_) notifier_->notify(std::move(it->event));
    }
    if (s == alert_steal::stolen || s == alert_steal::done || it->give_up_ms <= now_ms) {
      it = claimed_elsewhere_.erase(it);
    } else {
      it->recheck_ms = now_ms + cfg_.ledger_postgres.alert_lease.count();
      ++it;
    }
  }
}

void spend_control::pump() {
  engine_->maintain(unix_ms());  // end users' states freed in slices, off the I/O threads
  if (tick_) tick_();
  save_pending();
  if (claims_) settle_claims(unix_ms());
  for (auto& a : engine_->take_alerts()) {
    log_line(log_level::warn, "alert")
        .str("kind", to_string(a.kind))
        .str("scope", a.scope)
        .str("period", a.period)
        .num("limit_usd", a.limit_usd)
        .num("spent_usd", a.spent_usd)
        .str("message", a.message);
    if (a.kind == alert_kind::projected_overspend && a.window_start_s != 0 && !ledger_path_.empty()) {
      try {
        record_window_alert(ledger_path_, {std::string(to_string(a.kind)), a.scope, a.period, a.window_start_s}, a.time_ms);
      } catch (const std::exception& e) {
        log_line(log_level::warn, "alert not remembered: it may be sent again after a restart").str("error", e.what());
      }
    }
    if (notifier_ && claims_ && a.kind != alert_kind::anomaly) {
      // Raised from the fleet's shared spend, so maybe by every instance at once: one sends it.
      // An alert of one budget window carries the window in its key and goes once per window;
      // a guard trip once per (shortest) cooldown.
      const auto now = unix_ms();
      const auto c = claims_->claim(a.dedupe_key(), now, a.window_start_s != 0 ? -1 : claim_cooldown_ms_);
      count_claim_(to_string(c));
      if (c == alert_claim::taken) {
        log_line(log_level::info, "alert sent by another instance of the fleet").str("kind", to_string(a.kind)).str("scope", a.scope);
        if (claimed_elsewhere_.size() >= 1000) claimed_elsewhere_.erase(claimed_elsewhere_.begin());
        claimed_elsewhere_.push_back({std::move(a), now + cfg_.ledger_postgres.alert_lease.count(), now + 86'400'000});
        continue;
      }
    }
    if (notifier_) notifier_->notify(std::move(a));
  }
}

void spend_control::on_forecast(const forecast_snapshot& snap) {
  if (snap.remaining_spend) {
    engine_->update_projections(snap.now_s * 1000, [&](calendar_period, const time_window& w) {
      policy_engine::spend_forecast f;
      const auto ahead = snap.remaining_spend(w.end_s);
      f.p50_usd = ahead.p50_usd;
      f.p90_usd = ahead.p90_usd;
      f.learned = ahead.learned;
      f.extrapolated = ahead.extrapolated;
      return f;
    });
  }
  anomaly_was_.resize(snap.anomaly.size(), false);
  for (std::size_t s = 0; s < snap.anomaly.size(); ++s) {
    if (snap.anomaly[s] && !anomaly_was_[s] && snap.series[s] != nullptr) {
      alert_event e;
      e.kind = alert_kind::anomaly;
      e.scope = snap.series[s];
      e.threshold = snap.anomaly_score[s];
      e.time_ms = snap.now_s * 1000;
      e.message = std::string("Traffic anomaly on ") + snap.series[s] + ": the last minute left the forecast band (score " +
                  std::to_string(snap.anomaly_score[s]) + ")";
      log_line(log_level::warn, "alert").str("kind", "anomaly").str("scope", e.scope).str("message", e.message);
      if (notifier_) notifier_->notify(std::move(e));
    }
    anomaly_was_[s] = snap.anomaly[s];
  }
}

void spend_control::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (started_) pump();
  if (notifier_) notifier_->stop();
  confirm_claims();  // what the webhooks took while stopping
}

}  // namespace tollgate
