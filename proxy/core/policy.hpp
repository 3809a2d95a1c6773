// The spend-control engine (issue 4): client-key lookup, budgets with worst-case reservations,
// spend-rate guards, per-key rate limits, alert events and budget projections. Pure (no I/O, an
// injected clock: every call takes now_ms) and thread-safe; called from the I/O threads
// (admit/settle/release), the admin API (keys, snapshots) and the forecaster thread (projections).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/alert.hpp"
#include "core/calendar.hpp"
#include "core/policy_config.hpp"

namespace tollgate {

class policy_engine {
 public:
  static constexpr double nan = std::numeric_limits<double>::quiet_NaN();

  // Startup: throws std::invalid_argument saying why on an unknown time zone, a scope that is not
  // global / team:<t> / key:<name> / model:<id> / user:<id> / user:* (budgets only), a guard
  // without a window or (reroute) without a fallback model, or two keys with the same name or the
  // same secret.
  //
  // Scopes `user:<id>` and `user:*` are of the call's end user (call_facts::user). `user:*` is a
  // budget every end user has on their own: each is charged, reserved, refused and alerted on
  // (scope `user:<id>`) separately. At most 250,000 end users are tracked per such budget and
  // period; calls of further users share one bucket, the budget's own (budget_status::shared_usd).
  policy_engine(const policy_config& cfg, const std::string& timezone);
  ~policy_engine();
  policy_engine(const policy_engine&) = delete;
  policy_engine& operator=(const policy_engine&) = delete;

  // ---- Client keys ----
  // The key whose SHA-256 equals that of `presented`, compared in constant time against every
  // key (no early exit); nullptr when unknown. The pointer stays valid after remove_key().
  std::shared_ptr<const client_key_config> find_key(std::string_view presented) const noexcept;
  // Adds a key at run time (admin API). Its budgets get scope "key:<name>". False when the name is
  // empty or a key with the same name or the same secret exists.
  bool add_key(client_key_config k);
  // Revokes a key: find_key() no longer returns it; its outstanding reservations still settle.
  bool remove_key(std::string_view name);
  std::vector<std::shared_ptr<const client_key_config>> keys() const;
  // The keys the configuration file gives, as in force (a reload may have added, removed or
  // changed them), in the file's order as first loaded, keys added by a reload last.
  std::vector<std::shared_ptr<const client_key_config>> configured_keys() const;
  static std::array<unsigned char, 32> sha256(std::string_view s) noexcept;

  // ---- Admission and settlement (I/O threads; never throw) ----
  struct call_facts {
    const client_key_config* key = nullptr;  // from find_key(); nullptr: anonymous
    std::string_view team;                   // the key's team ("" none)
    std::string_view price_model;            // price-table id of the requested model ("" unpriced)
    std::string_view model;                  // model id as requested (a reroute is skipped when
                                             // either id already is the guard's fallback)
    std::string_view user;                   // the end user the body names ("" none)
    double reserve_usd = 0;                  // worst-case cost computed by the caller
    // The same worst case at another model's prices (a reroute guard's fallback), when the caller
    // can price it: reserve_at(reserve_ctx, model). Called only for a reroute, under the lock.
    double (*reserve_at)(const void* ctx, std::string_view model) = nullptr;
    const void* reserve_ctx = nullptr;
    std::int64_t reserve_tokens = 0;         // prompt estimate + max_tokens (the TPM charge)
    std::int64_t now_ms = 0;
    // The model has no price, but the upstream states each call's cost and reserve_usd is bounded
    // from what it charged (stated_rates): a hard budget admits it like a priced call.
    bool stated = false;
  };

  struct decision {
    enum verdict { admit, budget_exceeded, rate_limited, guard_rejected } outcome = admit;
    bool unpriced = false;      // budget_exceeded: the model has no price, and a hard budget applies
    std::string scope;          // the scope that refused ("key:app-prod", "team:web", "global")
    std::string period;         // budget period ("day") or guard window ("1h")
    double limit_usd = 0;       // budget limit / guard max_usd
    double spent_usd = 0;       // settled spend in the period / guard window
    std::string reroute_model;  // non-empty: a tripped reroute guard; send this model instead
    std::string reroute_scope;  // the guard's scope
    // OpenAI-style x-ratelimit-* headers, set when the key has limits. A limit of 0 means that
    // kind is unlimited: leave its three headers out. Resets are the time until the bucket is
    // full again (format with format_reset()).
    bool rate_headers = false;
    std::int64_t limit_requests = 0, remaining_requests = 0, limit_tokens = 0, remaining_tokens = 0;
    std::int64_t reset_requests_ms = 0, reset_tokens_ms = 0;
    std::int64_t retry_after_s = 0;  // refusals: Retry-After seconds (>= 1)
    std::string rate_kind;           // "requests" | "tokens" when rate_limited
    std::uint64_t ticket = 0;        // admitted: pass to settle() or release(); 0: nothing held
  };

  // Checks the key's rate limits and the end user's (user_limits: scope "user:<id>" when they
  // refuse; at most 250,000 end users are held, until idle a minute with full buckets (maintain),
  // further ones pass unlimited), then spend guards, then budgets; an admitted call reserves reserve_usd on
  // every matching budget and charges the RPM/TPM buckets; a refused call holds nothing. After a reroute, the model budgets are those of the fallback model. No lock is taken
  // when no budget and no guard is configured and the key has no limits (ticket 0 then).
  decision admit(const call_facts& f) noexcept;
  // False when admit() would admit without looking (no budget, no guard, key without limits):
  // the caller can skip computing the reservation. Lock-free.
  bool needs_admission(const client_key_config* key) const noexcept;
  // Replaces the ticket's reservation by the real cost, corrects the TPM charge by
  // tokens - reserve_tokens, adds the spend to every matching budget and guard (the model scope
  // is the SERVED price model, so a rerouted call counts on the fallback), and raises soft-threshold
  // and guard-trip alerts at once. Spend counts in the window containing now_ms (or the current
  // window if now_ms lags behind it), unless the call started (start_ms) before that window: a
  // call that crosses midnight is the day it started in, as the ledger (by start_ms), reports and
  // a warm start count it, so a restart enforces what ran before it. Unknown, settled or
  // released tickets are ignored.
  void settle(std::uint64_t ticket, double cost_usd, std::int64_t tokens, std::string_view price_model,
              std::int64_t now_ms, std::int64_t start_ms = std::numeric_limits<std::int64_t>::max()) noexcept;
  // Spend of a call still running (a Realtime session's responses as each completes): counted
  // now in every matching budget and guard, alerts included, as settle() counts; settle() then
  // adds only the rest of the final cost. Returns true when a hard budget the call counts in is
  // spent (the caller ends the call rather than let it run on past the limit).
  bool charge(std::uint64_t ticket, double usd, std::string_view price_model, std::int64_t now_ms) noexcept;
  // The call never went upstream: the budget reservation and the TPM charge go back, the RPM
  // charge stays.
  void release(std::uint64_t ticket) noexcept;
  // Warm start from ledger rows (any order): adds spend to the budgets whose current window
  // contains ts_ms and to the guards' rolling windows, without alerts; thresholds already crossed
  // are marked crossed (no re-alert after a restart) and guards already over max are tripped.
  void seed(std::string_view key, std::string_view team, std::string_view price_model, double cost_usd,
            std::int64_t ts_ms, std::string_view user = {}) noexcept;

  // Spend of another instance of the fleet (its rows in the fleet table): counted as a call of
  // this instance that started at ts_ms and settled now (budgets, guards, alerts as settle()).
  void add_remote(std::string_view key, std::string_view team, std::string_view price_model, double cost_usd,
                  std::int64_t ts_ms, std::int64_t now_ms, std::string_view user = {}) noexcept;
  // True when a budget or guard is scoped by end user: seed() and add_remote() must then be given
  // each row's user (the warm start and the fleet's rows are summed per user too).
  bool counts_users() const noexcept;
  // True when end users have rate limits (user_limits): seed_rate() and add_remote_calls() must
  // then be given the calls of every end user, with their user.
  bool limits_users() const noexcept;

  // Calls another instance of the fleet made with a rate-limited key (its rows in the fleet
  // table): `calls` requests and `tokens` settled tokens that started at ts_ms, taken from the
  // key's RPM and TPM buckets now, so a fleet holds a key to one limit, not one per instance
  // (about two shipping intervals late). Calls older than a minute, or of keys without limits
  // here, change nothing.
  // `user`: the end user of those calls, taken from their user_limits buckets likewise.
  void add_remote_calls(std::string_view key, std::int64_t calls, std::int64_t tokens, std::int64_t ts_ms,
                        std::int64_t now_ms, std::string_view user = {}) noexcept;

  // Warm start of a key's rate limits: one call it made at ts_ms that went upstream, `tokens`
  // its settled TPM charge. Calls of the last minute, oldest first, replay the buckets as they
  // stood (full a minute before the first), so a restart is no way around an RPM or TPM limit.
  // Keys without limits, and names no longer configured, are ignored.
  // `user`: the call's end user, replayed into their user_limits buckets likewise.
  void seed_rate(std::string_view key, std::int64_t tokens, std::int64_t ts_ms, std::string_view user = {}) noexcept;

  // Housekeeping, about once a second (spend_control's thread): `user:*` budgets whose period
  // ended retire their users (the period's roll itself is O(1) whoever does it) and the retired
  // are freed; end users idle for a minute whose user_limits buckets are full again are dropped
  // (only those idle are looked at). The work goes in slices of `slice` users, each under the
  // engine's lock on its own (under a millisecond) and freed after it, so admissions never wait
  // on a sweep of every user. Without it (an engine used alone), user_limits stops holding new
  // users once 250,000 are held, and a `user:*` budget's last period's users are freed only
  // when the next period rolls.
  void maintain(std::int64_t now_ms, std::size_t slice = 2048) noexcept;
  // End users' states held now: of `user:*` budgets' current periods, of ended periods not yet
  // freed by maintain() (calls in flight included), and user_limits buckets.
  struct held_users {
    std::size_t budget = 0, retired = 0, rate = 0;
  };
  held_users users_held() const;

  // Alerts raised since the last call (soft_threshold, spend_guard, projected_overspend), oldest
  // first. At most 1024 are held between calls; more are counted in counters().alerts_dropped.
  std::vector<alert_event> take_alerts();
  // A projected_overspend alert of this budget was already sent in the window starting at
  // window_start_s (before a restart): not again in that window.
  void mark_projected_alerted(const std::string& scope, calendar_period period, std::int64_t window_start_s,
                              std::int64_t now_ms);

  // ---- Live reconfiguration (SIGHUP, POST /admin/config/reload) ----
  // What retune() changed, and what it left for a restart, one line each, for people to read
  // ("budget global/month: limit $100.00 -> $150.00").
  struct retune_result {
    std::vector<std::string> applied;
    std::vector<std::string> restart_required;
    std::vector<std::string> warnings;  // a key the file adds that clashes with one in force
  };
  // Brings the controls in force to `next`, the configuration file read again, where that can be
  // done without losing what they count: a budget's limit, soft thresholds and hardness (global
  // and configured keys' budgets, matched by scope and period), a spend guard's max_usd and
  // reset_fraction (matched by scope and window), user_limits' rpm/tpm while they stay on, and
  // the configured keys: added (budgets from zero), removed (refused at once; calls in flight
  // finish), or changed in place keeping their buckets and spend (secret rotated, team, tags,
  // rpm/tpm). Spend, reservations, windows and rate buckets are kept. A threshold the new limit
  // puts at or below the spend alerts at once unless it had already alerted this window; a guard
  // the new max_usd puts over is tripped (and alerts), one it puts below its reset level resets.
  // Anything else that differs is named in restart_required and left as it is: a budget or guard
  // added or removed (a key's budgets added or removed too), a guard's action or fallback, auth,
  // webhooks, user_header, reserve_max_tokens, user_limits turned on or off.
  // `current` is the configuration the engine was built from (for those last fields); numbers
  // and keys are compared with those in force, so a second reload of the same file changes
  // nothing. Scopes must be canonical, as the constructor's (model: scopes naming their entry).
  retune_result retune(const policy_config& next, const policy_config& current, std::int64_t now_ms);

  // ---- Snapshots (gauges, GET /admin/budgets) ----
  struct budget_status {
    std::string scope;
    calendar_period period = calendar_period::month;
    double limit_usd = 0, spent_usd = 0, reserved_usd = 0;
    bool hard = false;
    time_window window;  // the current calendar window
    // From update_projections(); NaN until then or when no forecast. Exhaustion: Unix seconds at
    // which the projection crosses the limit (now when already spent); NaN if not expected.
    double projected_p50 = nan, projected_p90 = nan;
    double exhaustion_p50_s = nan, exhaustion_p90_s = nan;
    // user:*: the end users with spend (or a call in flight) this window; spent, reserved and
    // exhaustion are those of top_user, the one who has spent most (or the one asked for);
    // shared_usd the spend of the users beyond the tracked 250,000 (one bucket). Their projections
    // are their spend plus their share (recent spend over everyone's) of the forecast rest.
    std::size_t users = 0;
    std::string top_user;
    double shared_usd = 0;
  };
  // Configured budgets in config order, then key budgets by key name; windows rolled to now_ms.
  // With `user`, a user:* budget shows that end user's own figures (top_user = user; zero when
  // they have spent nothing this window) instead of the top spender's.
  std::vector<budget_status> budgets(std::int64_t now_ms, std::string_view user = {}) const;

  struct guard_status {
    std::string scope;
    std::string window;  // "1h", "5m"
    guard_action action = guard_action::reject;
    bool tripped = false;  // with hysteresis as of now_ms
    double window_spent_usd = 0, max_usd = 0;
  };
  std::vector<guard_status> guards(std::int64_t now_ms) const;

  // Cumulative counts for tollgate_rate_limited_total{scope,kind},
  // tollgate_budget_rejections_total{scope} and guard actions. Scopes come only from configured
  // budgets, guards and keys (bounded); a removed key's counts leave the snapshot.
  struct count {
    std::string scope;
    std::string kind;  // rate_limited: "requests" | "tokens"; guard_actions: "reject" | "reroute"; else ""
    std::uint64_t value = 0;
  };
  struct counter_snapshot {
    std::vector<count> rate_limited;
    std::vector<count> budget_rejections;  // summed over the scope's periods
    std::vector<count> guard_actions;
    std::uint64_t alerts_dropped = 0;
  };
  counter_snapshot counters() const;

  // ---- Projections (forecaster thread) ----
  // Forecast of GLOBAL spend (all traffic) from now to the end of the window, USD; NaN: unknown.
  struct spend_forecast {
    double p50_usd = nan;
    double p90_usd = nan;
    // False while the band behind p90 is the forecaster's cold-start prior (a fresh ledger: up
    // to a month for the hourly steps). Alerts then compare the median: a prior's p90 is ~6x
    // the point and would call every budget on a sixth of its pace overspent.
    bool learned = true;
    // True while part of the window is carried at the rate of the first minutes' forecast (a
    // fresh ledger's first hour has no hourly forecast yet): the projection is published but
    // raises no projected_overspend (one busy first minute projected a month of it).
    bool extrapolated = false;
  };
  // `global_remaining(period, window)` is called (without the engine's lock held) once per
  // period some budget uses. Each budget's projection is spent + share * remaining, where share
  // is the scope's share of recent spend (exponentially decayed, one-day time constant; 1 for
  // global). With other instances' spend counted (add_remote), `remaining` (this instance's
  // forecast) is scaled by the fleet's recent spend over this instance's own (at most 100x).
  // A p90 projection above the limit raises projected_overspend once per window (the
  // p50 one while the forecast is not `learned`).
  using remaining_spend_fn = std::function<spend_forecast(calendar_period, const time_window&)>;
  void update_projections(std::int64_t now_ms, const remaining_spend_fn& global_remaining);

 private:
  // seed() and add_remote(): spend of a key known by name only (maybe not configured here).
  void add_named(std::string_view key, std::string_view team, std::string_view user, std::string_view price_model,
                 double cost_usd, std::int64_t t_ms, bool alert, std::int64_t start_ms, bool remote) noexcept;
  struct impl;
  std::unique_ptr<impl> impl_;
};

// OpenAI-style (Go) durations for x-ratelimit-reset-*: "20ms", "1s", "1.5s", "6m0s", "1h2m3s";
// "0s" for zero or less.
std::string format_reset(std::int64_t ms);
// USD for messages people read: cents ("$12.50"), or below a cent two significant digits
// ("$0.000096"), so a small test budget does not read "$0.00 of $0.00".
std::string format_usd(double v);

}  // namespace tollgate
