// Spend controls in the running proxy (issue 4): owns the policy engine and the webhook
// notifier, loads stored keys and warm-starts budgets from the ledger, moves alerts from the
// engine to the notifier once a second, feeds forecasts into budget projections, and publishes
// the budget, guard and rate-limit metrics.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "core/alert.hpp"
#include "core/open_sessions.hpp"
#include "core/pending_responses.hpp"

namespace tollgate {

struct config;
class metrics;
class policy_engine;
class stated_rates;
class alert_notifier;
class pg_alert_claims;
struct forecast_snapshot;
struct remote_spend;
struct remote_calls;

class spend_control {
 public:
  // Throws std::invalid_argument / config_error on a bad policy (scopes, webhook URLs).
  // fleet_instance: this instance's name in the fleet ledger ("" without ledger.postgres); with
  // ledger.postgres.fleet_alerts and webhooks, budget and guard alerts are claimed in PostgreSQL
  // first, so a fleet sends each once.
  spend_control(const config& cfg, metrics& m, const std::string& fleet_instance = {});
  ~spend_control();  // stop()
  spend_control(const spend_control&) = delete;
  spend_control& operator=(const spend_control&) = delete;

  // After the ledger has started (its migrations applied): stored keys, budget warm start,
  // notifier and alert thread.
  void start(const std::string& ledger_path);
  // Delivers the alerts raised so far (bounded by the notifier's stop timeout) and joins.
  void stop();

  policy_engine& engine() noexcept { return *engine_; }
  // On the forecast thread after each refresh: budget projections and anomaly alerts.
  void on_forecast(const forecast_snapshot& snap);
  // Engine housekeeping (policy_engine::maintain), pending objects and alerts now (tests; the
  // thread does it every second).
  void pump();
  // Before start(): sets of pending objects (background responses, batches) kept in the ledger
  // database under `kind`: start() loads them (30 days at most), pump() writes their changes.
  void track_pending(std::vector<std::pair<std::string, pending_responses*>> sets);
  // Before start(): called by pump() every second (pricing.watch's look at the price files).
  void on_tick(std::function<void()> f) { tick_ = std::move(f); }
  // Before start(): Realtime sessions' rows so far, saved by pump() when they changed (table
  // open_sessions), so a crash loses none (app::start ledgers what a crash left there).
  void track_open_sessions(open_sessions* sessions) { open_sessions_ = sessions; }
  // Before start(): what relays charged for models the price table lacks, learned again from the
  // last day's ledger rows priced at a stated cost by learn_stated_costs(). `sent_model` maps a
  // row's requested model to the model a routing rule sends upstream (what the bounds are kept
  // and looked up under); empty: as requested.
  void track_stated_rates(stated_rates* rates, std::function<std::string(std::string_view)> sent_model = {}) {
    stated_ = rates;
    sent_model_ = std::move(sent_model);
  }
  // After start(), once per process (later calls do nothing): start() calls it when a hard
  // budget exists, the admin API when it adds one. Reads the ledger on the caller's thread.
  void learn_stated_costs();
  // Fleet budgets (ledger.postgres.fleet_budgets), on the fleet ledger's thread: the start of the
  // oldest window a budget or spend guard counts (now_ms when there is none), and the spend of
  // the fleet's other instances, counted as this instance's calls are.
  std::int64_t spend_horizon_ms(std::int64_t now_ms) const;
  void add_remote(const std::vector<remote_spend>& rows);
  // Fleet rate limits, on the same thread: the keys with RPM/TPM limits here, and the other
  // instances' calls of them, taken from their buckets.
  std::vector<std::string> rate_limited_keys() const;
  void add_remote_calls(const std::vector<remote_calls>& rows);

 private:
  void run();
  const config& cfg_;
  std::unique_ptr<policy_engine> engine_;
  std::unique_ptr<alert_notifier> notifier_;
  std::unique_ptr<pg_alert_claims> claims_;  // fleet alerts; null: every alert raised here is sent
  std::int64_t claim_cooldown_ms_ = 0;        // the shortest webhook cooldown
  std::function<void(std::string_view)> count_claim_;  // tollgate_alerts_fleet_claims_total{outcome}
  // Claims made here whose alert a webhook took: confirmed in PostgreSQL by the spend thread
  // (the hook runs on the webhooks' threads; the claims connection is the spend thread's).
  std::mutex confirm_mu_;
  std::vector<std::string> confirmed_;
  // Alerts another instance claimed: checked again after the lease, sent here if that claim was
  // never confirmed (its instance stopped first). At most 1,000, the oldest dropped.
  struct claimed_elsewhere {
    alert_event event;
    std::int64_t recheck_ms;
    std::int64_t give_up_ms;  // a day after it was raised
  };
  std::vector<claimed_elsewhere> claimed_elsewhere_;
  void settle_claims(std::int64_t now_ms);
  void confirm_claims();
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool started_ = false;
  std::string ledger_path_;  // where projected_overspend alerts are remembered (window_alerts)
  std::vector<bool> anomaly_was_;  // per forecast series, to alert on a rising edge only
  std::vector<std::pair<std::string, pending_responses*>> pending_;  // kind -> set (track_pending)
  open_sessions* open_sessions_ = nullptr;                          // track_open_sessions
  stated_rates* stated_ = nullptr;                                  // track_stated_rates
  std::function<std::string(std::string_view)> sent_model_;         // track_stated_rates
  std::function<void()> tick_;                                      // on_tick
  std::atomic<bool> stated_learned_{false};                         // learn_stated_costs ran
  std::int64_t started_ms_ = 0;                                     // start()'s time: rows before it are read back
  void save_pending();
};

}  // namespace tollgate
