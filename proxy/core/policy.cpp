// The spend-control engine (policy.hpp): key hashing, budget reservations and calendar windows,
// rolling spend guards, per-key token buckets, alerts and projections, all under one mutex.
#include "core/policy.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <unordered_map>

#include "core/string_hash.hpp"

namespace tollgate {

namespace {

constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();
constexpr int guard_buckets = 60;                  // a guard's window in 60 buckets
constexpr double share_tau_ms = 24.0 * 3'600'000;  // time constant of "recent spend" (shares)
constexpr double max_fleet_scale = 100;              // projections: the fleet's rest at most 100x this instance's
constexpr std::size_t max_pending_alerts = 1024;
// End users a `user:*` budget tracks in one period; more share one bucket (policy.hpp).
constexpr std::size_t max_users_per_budget = 250'000;
// End users with user_limits buckets not yet full again (about a minute of activity); more are
// let through unlimited (policy.hpp).
constexpr std::size_t max_rate_users = 250'000;

std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
std::int64_t ceil_div_pos(double x) { return x <= 0 ? 0 : static_cast<std::int64_t>(std::ceil(x)); }
double clean_usd(double v) { return std::isfinite(v) && v > 0 ? v : 0.0; }

// each_user: `user:*`, a budget every end user has on their own (per-user state in user_budgets).
enum class scope_kind : std::uint8_t { global, team, key, model, user, each_user };
struct parsed_scope {
  scope_kind kind = scope_kind::global;
  std::string name;
};

parsed_scope parse_scope(const std::string& s) {
  if (s == "global") return {};
  if (s == "user:*") return {scope_kind::each_user, {}};
  for (auto [prefix, kind] : {std::pair{std::string_view("team:"), scope_kind::team},
                              std::pair{std::string_view("key:"), scope_kind::key},
                              std::pair{std::string_view("model:"), scope_kind::model},
                              std::pair{std::string_view("user:"), scope_kind::user}}) {
    if (s.size() > prefix.size() && std::string_view(s).substr(0, prefix.size()) == prefix)
      return {kind, s.substr(prefix.size())};
  }
  throw std::invalid_argument("scope '" + s +
                              "': use global, team:<name>, key:<name>, model:<price-table id>, user:<id> or user:*");
}

// The call's end user (request_inspect: `user`, else `safety_identifier`, else
// `metadata.user_id`) is what user scopes match; a call that names none is in no user scope.
struct call_scope {
  std::string_view team, key, model, user;
};

bool matches(const parsed_scope& p, const call_scope& c) {
  switch (p.kind) {
    case scope_kind::global: return true;
    case scope_kind::team: return !c.team.empty() && p.name == c.team;
    case scope_kind::key: return !c.key.empty() && p.name == c.key;
    case scope_kind::model: return !c.model.empty() && p.name == c.model;
    case scope_kind::user: return !c.user.empty() && p.name == c.user;
    case scope_kind::each_user: return !c.user.empty();
  }
  return false;
}

// A guard window as configured: "1h", "5m", "30s", "250ms".
std::string format_window(std::int64_t ms) {
  if (ms > 0 && ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms > 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms > 0 && ms % 1'000 == 0) return std::to_string(ms / 1'000) + "s";
  return std::to_string(ms) + "ms";
}

// Exponentially decayed spend: the "recent spend" whose ratio gives a scope's share of traffic.
// Rows may arrive out of order (seeding), so an older amount is added already decayed.
struct decayed_sum {
  double value = 0;
  std::int64_t at_ms = 0;
  bool started = false;
  void add(double usd, std::int64_t t) {
    if (!started) {
      value = usd, at_ms = t, started = true;
    } else if (t >= at_ms) {
      value = value * std::exp(-static_cast<double>(t - at_ms) / share_tau_ms) + usd;
      at_ms = t;
    } else {
      value += usd * std::exp(-static_cast<double>(at_ms - t) / share_tau_ms);
    }
  }
  double at(std::int64_t t) const {
    if (!started) return 0;
    return t <= at_ms ? value : value * std::exp(-static_cast<double>(t - at_ms) / share_tau_ms);
  }
};

// Refills continuously at capacity per minute; the level may go negative when a completion used
// more tokens than reserved, which delays the next calls (the debt is real usage).
struct token_bucket {
  double capacity = 0;  // 0: unlimited
  double level = 0;
  std::int64_t at_ms = 0;
  bool started = false;
  void refill(std::int64_t now) {
    if (!started) {
      level = capacity, at_ms = now, started = true;
    } else if (now > at_ms) {
      level = std::min(capacity, level + static_cast<double>(now - at_ms) * capacity / 60'000.0);
      at_ms = now;
    }
  }
  std::int64_t ms_until(double target) const {
    return level >= target ? 0 : ceil_div_pos((target - level) * 60'000.0 / capacity);
  }
};

struct user_budgets;

struct budget_state {
  budget_config cfg;
  parsed_scope scope;
  // A `user:*` budget: its end users' own states (its own spent and reserved are the shared
  // bucket of users beyond max_users_per_budget). An end user's state points to it as `parent`.
  std::unique_ptr<user_budgets> each;
  budget_state* parent = nullptr;
  time_window window{};  // end_s == 0: not started
  double spent = 0, reserved = 0;
  std::int64_t outstanding = 0;  // tickets holding a reservation here
  std::vector<char> crossed;     // per soft fraction, this window
  bool projected_alerted = false;
  // The forecaster's spend for the rest of the window, this scope's share (NaN: no forecast yet).
  // Projections add it to the spend of the moment they are read, so they never fall below it.
  double rest50 = nan_v, rest90 = nan_v;
  decayed_sum recent;
  std::uint64_t rejections = 0;

  budget_state(budget_config c, parsed_scope s) : cfg(std::move(c)), scope(std::move(s)), crossed(cfg.soft.size(), 0) {}

  // Moves to the window containing now_s if the current one has ended.
  void roll(const calendar& cal, std::int64_t now_s) {
    if (window.end_s != 0 && now_s < window.end_s) return;
    window = cal.window(cfg.period, now_s);
    spent = 0;
    std::fill(crossed.begin(), crossed.end(), 0);
    projected_alerted = false;
    rest50 = rest90 = nan_v;
  }
  std::string name() const { return cfg.scope + "/" + std::string(to_string(cfg.period)); }
  double projected(double rest) const { return std::isfinite(rest) ? spent + rest : nan_v; }
  // When the projection reaches the limit, spend accruing linearly from now to the window's end
  // (Unix seconds): now once the limit is reached; NaN when the projection stays within it.
  double exhaustion(double projection, double now_f) const {
    if (spent >= cfg.limit_usd) return now_f;
    if (!(projection > cfg.limit_usd)) return nan_v;
    const double end_f = static_cast<double>(window.end_s);
    return now_f + (cfg.limit_usd - spent) / (projection - spent) * std::max(0.0, end_f - now_f);
  }
};

// The end users of a `user:*` budget in its current window. When the window rolls, the map is
// retired whole (O(1), under the engine's lock on whatever thread rolled it) and a new one starts
// empty; maintain() frees the retired users a slice a second, after the lock, on the
// spend-control thread. So memory follows the users of one period, not uptime, and no admission
// waits for 250,000 users to be freed (65 ms when it was one sweep under the lock).
using user_budget_map = std::unordered_map<std::string, std::unique_ptr<budget_state>, string_hash, std::equal_to<>>;
struct user_budgets {
  user_budget_map users;
  const budget_state* top = nullptr;  // the user who has spent most this window
  // The budget's window these users are of (whoever rolled the budget, the next look retires).
  std::int64_t window_start_s = std::numeric_limits<std::int64_t>::min();
  // Last windows' users, being freed by maintain(). Those with a call in flight then move to
  // `in_flight` (its ticket still points to them) until it settles: their spend counts in the
  // window the call started in, so the new window holds nothing of theirs.
  user_budget_map retired;
  std::vector<std::unique_ptr<budget_state>> in_flight;
};

struct guard_state {
  spend_guard_config cfg;
  parsed_scope scope;
  std::string window_name;
  std::int64_t width_ms;
  struct bucket {
    std::int64_t index = std::numeric_limits<std::int64_t>::min();
    double usd = 0;
  };
  std::array<bucket, guard_buckets> ring{};
  bool tripped = false;
  std::uint64_t rejected = 0, rerouted = 0;

  guard_state(spend_guard_config c, parsed_scope s)
      : cfg(std::move(c)), scope(std::move(s)), window_name(format_window(cfg.window.count())),
        width_ms(std::max<std::int64_t>(1, cfg.window.count() / guard_buckets)) {}

  bucket& slot(std::int64_t index) { return ring[static_cast<std::size_t>((index % guard_buckets + guard_buckets) % guard_buckets)]; }
  const bucket& slot(std::int64_t index) const { return const_cast<guard_state*>(this)->slot(index); }

  void add(std::int64_t t, double usd) {
    const std::int64_t i = floor_div(t, width_ms);
    bucket& b = slot(i);
    if (b.index == i) {
      b.usd += usd;
    } else if (b.index < i) {
      b = {i, usd};
    }  // else: older than the window of the newest data
  }
  double sum(std::int64_t now) const {
    const std::int64_t oldest = floor_div(now, width_ms) - guard_buckets + 1;
    double s = 0;
    for (const auto& b : ring)
      if (b.index >= oldest) s += b.usd;
    return s;
  }
  double reset_below() const { return cfg.reset_fraction * cfg.max_usd; }
  // With no new spend, the time until enough buckets leave the window for the guard to reset.
  std::int64_t ms_until_reset(std::int64_t now) const {
    const std::int64_t cur = floor_div(now, width_ms);
    double s = sum(now);
    if (s < reset_below()) return 0;
    for (std::int64_t i = cur - guard_buckets + 1; i <= cur; ++i) {
      if (const bucket& b = slot(i); b.index == i) s -= b.usd;
      if (s < reset_below()) return std::max<std::int64_t>(1, (i + guard_buckets) * width_ms - now);
    }
    return cfg.window.count();
  }
};

// One end user's user_limits buckets. Dropped once idle a minute with both full again and no call
// holding them (a new pair starts full: the same state), so memory follows the last minute's users.
// Users are kept in the order they were last seen (an intrusive list), so maintain() looks only
// at those idle for a minute, never at the active ones.
struct user_rate {
  token_bucket rpm, tpm;
  std::int64_t outstanding = 0;  // admitted calls not yet settled or released
  std::int64_t seen_ms = 0;      // last admission (or replayed call)
  user_rate *prev = nullptr, *next = nullptr;
  std::string_view key;  // the map's key (stable: a node-based map)
  bool full(std::int64_t now) {
    for (token_bucket* b : {&rpm, &tpm})
      if (b->capacity > 0) {
        b->refill(now);
        if (b->level < b->capacity) return false;
      }
    return true;
  }
};

using user_rate_map = std::unordered_map<std::string, std::unique_ptr<user_rate>, string_hash, std::equal_to<>>;

struct key_state {
  std::string name, scope, team;
  token_bucket rpm, tpm;
  std::vector<budget_state> budgets;  // sized once: reservations point into it
  std::uint64_t limited_requests = 0, limited_tokens = 0;
  bool limited() const { return rpm.capacity > 0 || tpm.capacity > 0; }
};

std::shared_ptr<key_state> make_key_state(const client_key_config& k) {
  auto ks = std::make_shared<key_state>();
  ks->name = k.name;
  ks->scope = "key:" + k.name;
  ks->team = k.team;
  ks->rpm.capacity = static_cast<double>(std::max<std::int64_t>(0, k.limits.rpm));
  ks->tpm.capacity = static_cast<double>(std::max<std::int64_t>(0, k.limits.tpm));
  ks->budgets.reserve(k.budgets.size());
  for (const auto& b : k.budgets) ks->budgets.emplace_back(b, parsed_scope{scope_kind::key, k.name});
  return ks;
}

// An outstanding admission. Slots are reused (their vectors keep their capacity), so admitting
// allocates nothing once the number of concurrent calls has peaked.
struct ticket_slot {
  std::uint32_t generation = 0;
  bool live = false;
  std::shared_ptr<key_state> key;  // keeps a removed key's buckets and budgets alive
  std::vector<budget_state*> reserved;
  double reserve_usd = 0;
  std::int64_t reserve_tokens = 0;
  double charged = 0;  // spend already counted by charge()
  user_rate* urate = nullptr;  // the end user's buckets charged at admission (user_limits)
  std::string team;
  std::string user;  // kept only when some scope names end users
};

using key_list = std::vector<std::shared_ptr<const client_key_config>>;

}  // namespace

struct policy_engine::impl {
  calendar cal;

  // Keys: a copy-on-write list. Readers copy the pointer under keys_mu (held for nanoseconds,
  // never while hashing or comparing); writers serialize on keys_write_mu. A plain mutex rather
  // than libstdc++ 12's atomic<shared_ptr>, whose internal spin lock ThreadSanitizer reports as
  // a race.
  std::mutex keys_write_mu;
  mutable std::mutex keys_mu;
  std::shared_ptr<const key_list> keys_ = std::make_shared<const key_list>();
  std::shared_ptr<const key_list> keys() const {
    std::lock_guard lock(keys_mu);
    return keys_;
  }
  void publish(std::shared_ptr<const key_list> next) {
    std::lock_guard lock(keys_mu);
    keys_.swap(next);  // the old list is freed after the lock, by `next`'s destructor
  }
  std::atomic<int> keys_with_budgets{0};
  // Names of the keys the configuration file gave (at start, then by each reload); keys_write_mu.
  std::set<std::string, std::less<>> configured;
  bool has_controls = false;  // configured budgets or guards (fixed after construction)
  bool has_user_scopes = false;  // a budget or guard scoped user:<id> or user:* (fixed)

  // Everything below is guarded by mu.
  mutable std::mutex mu;
  std::vector<budget_state> budgets;  // sized once at construction
  std::vector<guard_state> guards;
  std::map<std::string, std::shared_ptr<key_state>, std::less<>> key_states;
  std::vector<ticket_slot> slots;
  std::vector<std::uint32_t> free_slots;
  decayed_sum global_recent;  // every call counted: this instance's and the fleet's others'
  decayed_sum local_recent;   // this instance's own calls (settled, charged, warm-started)
  std::vector<alert_event> alerts;
  std::uint64_t alerts_dropped = 0;
  // user_limits: each end user's buckets (by user), swept of full ones by maintain().
  rate_limits user_limits;
  user_rate_map user_rates;
  user_rate *seen_first = nullptr, *seen_last = nullptr;  // user_rates by seen_ms, oldest first
  std::uint64_t user_limited_requests = 0, user_limited_tokens = 0;

  void unlink_seen(user_rate* u) {
    (u->prev ? u->prev->next : seen_first) = u->next;
    (u->next ? u->next->prev : seen_last) = u->prev;
    u->prev = u->next = nullptr;
  }
  void push_seen(user_rate* u, std::int64_t now) {
    u->seen_ms = now;
    u->prev = seen_last;
    (seen_last ? seen_last->next : seen_first) = u;
    seen_last = u;
  }

  // The end user's buckets as of now (created full); nullptr for a call naming no end user, or
  // when max_rate_users are held (then the call is not held: it is a rate, not money, and a
  // flood of made-up ids must not lock out real users; maintain() makes room as users idle).
  user_rate* user_rate_of(std::string_view user, std::int64_t now) {
    if (user.empty() || !user_limits.any()) return nullptr;
    if (auto it = user_rates.find(user); it != user_rates.end()) {
      user_rate* u = it->second.get();
      if (u != seen_last) {
        unlink_seen(u);
        push_seen(u, now);
      } else {
        u->seen_ms = now;
      }
      return u;
    }
    if (user_rates.size() >= max_rate_users) return nullptr;
    auto u = std::make_unique<user_rate>();
    u->rpm.capacity = static_cast<double>(std::max<std::int64_t>(0, user_limits.rpm));
    u->tpm.capacity = static_cast<double>(std::max<std::int64_t>(0, user_limits.tpm));
    const auto it = user_rates.emplace(std::string(user), std::move(u)).first;
    it->second->key = it->first;
    push_seen(it->second.get(), now);
    return it->second.get();
  }

  // The named key's buckets when it has limits here, then the end user's (user_limits): each
  // (rpm, tpm) pair to f. Names not configured are skipped.
  template <class F>
  void each_rate_pair(std::string_view key, std::string_view user, std::int64_t now, F&& f) {
    if (const auto it = key_states.find(key); it != key_states.end() && it->second->limited())
      f(it->second->rpm, it->second->tpm);
    if (user_rate* ur = user_rate_of(user, now)) f(ur->rpm, ur->tpm);
  }

  explicit impl(const std::string& tz) : cal(tz) {}

  bool any_controls() const { return has_controls || keys_with_budgets.load(std::memory_order_relaxed) > 0; }

  void raise(alert_event a) {
    if (alerts.size() >= max_pending_alerts) {
      ++alerts_dropped;
      return;
    }
    alerts.push_back(std::move(a));
  }

  ticket_slot* find_slot(std::uint64_t ticket) {
    const auto index = static_cast<std::uint32_t>(ticket & 0xffffffffu);
    if (index == 0 || index > slots.size()) return nullptr;
    ticket_slot& s = slots[index - 1];
    if (!s.live || s.generation != static_cast<std::uint32_t>(ticket >> 32)) return nullptr;
    return &s;
  }

  std::uint32_t acquire_slot() {
    if (!free_slots.empty()) {
      auto i = free_slots.back();
      free_slots.pop_back();
      return i;
    }
    slots.emplace_back();
    return static_cast<std::uint32_t>(slots.size() - 1);
  }

  // Returns the slot to the free list; its key reference moves to `out` so that a removed key's
  // state is freed after the lock is released.
  void free_slot(ticket_slot& s, std::shared_ptr<key_state>& out) {
    s.live = false;
    ++s.generation;
    s.reserved.clear();
    if (s.urate != nullptr) --s.urate->outstanding;
    s.urate = nullptr;
    out = std::move(s.key);
    free_slots.push_back(static_cast<std::uint32_t>(&s - slots.data()));
  }

  void unreserve(ticket_slot& s) {
    for (budget_state* b : s.reserved) {
      b->reserved -= s.reserve_usd;
      // Exactly zero when nothing is outstanding: no floating-point residue accumulates.
      if (--b->outstanding <= 0) {
        b->outstanding = 0;
        b->reserved = 0;
      } else if (b->reserved < 0) {
        b->reserved = 0;
      }
    }
  }

  // The state a `user:*` budget keeps for `user` in the window containing t_s (created when
  // missing; beyond max_users_per_budget users, the budget's own shared bucket). A window that
  // has ended drops the users with no call in flight; those left start the new window at zero.
  budget_state& user_state(budget_state& b, std::string_view user, std::int64_t t_s) {
    user_budgets& each = *b.each;
    b.roll(cal, t_s);
    retire_users(b);
    if (auto it = each.users.find(user); it != each.users.end()) return *it->second;
    if (each.users.size() >= max_users_per_budget) return b;
    budget_config c = b.cfg;
    c.scope = "user:" + std::string(user);
    auto st = std::make_unique<budget_state>(std::move(c), parsed_scope{scope_kind::user, std::string(user)});
    st->parent = &b;
    return *each.users.emplace(std::string(user), std::move(st)).first->second;
  }

  // maintain()'s slice of user_limits: up to `n` users idle for a minute (the oldest seen) leave
  // as nodes in `out` (freed by the caller after the lock) when their buckets are full again and
  // hold no call; the others (a call in flight, tokens still owed) are looked at again a minute on.
  // Returns true when more idle users wait.
  bool sweep_user_rates(std::size_t n, std::int64_t now, std::vector<user_rate_map::node_type>& out) {
    const std::int64_t idle = now - 60'000;
    for (; n > 0 && seen_first != nullptr && seen_first->seen_ms <= idle; --n) {
      user_rate* u = seen_first;
      unlink_seen(u);
      if (u->outstanding == 0 && u->full(now))
        out.push_back(user_rates.extract(user_rates.find(u->key)));
      else
        push_seen(u, now);
    }
    return seen_first != nullptr && seen_first->seen_ms <= idle;
  }

  // A `user:*` budget whose window has rolled retires its users (O(1) but for a second roll
  // before maintain() has freed the last retired ones: then those are freed here, in one go).
  void retire_users(budget_state& b) {
    user_budgets& each = *b.each;
    if (b.window.start_s == each.window_start_s) return;
    each.window_start_s = b.window.start_s;
    each.top = nullptr;
    if (each.users.empty()) return;
    if (!each.retired.empty()) {
      for (auto& [name, u] : each.retired)
        if (u->outstanding > 0) each.in_flight.push_back(std::move(u));
      each.retired = user_budget_map{};
    }
    each.retired.swap(each.users);
  }

  // maintain()'s slice: up to `n` retired users of `each` leave the engine as nodes in `out`
  // (freed by the caller after the lock); those with a call in flight wait in `in_flight`.
  // Returns true when more retired users wait.
  static bool drain_retired(user_budgets& each, std::size_t n, std::vector<user_budget_map::node_type>& out) {
    for (auto it = each.retired.begin(); n > 0 && it != each.retired.end(); --n) {
      auto node = each.retired.extract(it++);
      if (node.mapped()->outstanding > 0)
        each.in_flight.push_back(std::move(node.mapped()));
      else
        out.push_back(std::move(node));
    }
    if (each.retired.empty() && each.retired.bucket_count() > 1) each.retired = user_budget_map{};  // one free
    std::erase_if(each.in_flight, [](const auto& u) { return u->outstanding == 0; });
    return !each.retired.empty();
  }

  void apply_spend(budget_state& b, double usd, std::int64_t t, bool alert) {
    b.roll(cal, floor_div(t, 1000));
    b.spent += usd;
    b.recent.add(usd, t);
    soft_check(b, t, alert);
  }

  void soft_check(budget_state& b, std::int64_t now_ms, bool alert) {
    for (std::size_t i = 0; i < b.cfg.soft.size(); ++i) {
      const double f = b.cfg.soft[i];
      if (b.crossed[i] || b.spent < f * b.cfg.limit_usd) continue;
      b.crossed[i] = 1;
      if (!alert) continue;
      char pct[32];
      std::snprintf(pct, sizeof pct, "%g%%", f * 100);
      alert_event e{alert_kind::soft_threshold, b.cfg.scope, std::string(to_string(b.cfg.period)), b.cfg.limit_usd,
                    b.spent, f, now_ms,
                    "Budget " + b.name() + " reached " + pct + " (" + format_usd(b.spent) + " of " + format_usd(b.cfg.limit_usd) + ")"};
      e.window_start_s = b.window.start_s;  // a new period alerts again, whatever the cooldown
      raise(std::move(e));
    }
  }

  // Adds settled (alert = true) or seeded (alert = false) spend to every matching budget and
  // guard. A budget counts a call in the window it started in (started_ms; a seeded row's time is
  // its start): a call or row of an earlier window is skipped there. Settled spend without a start
  // (max) lagging behind a window counts in the current window.
  void add_spend(key_state* ks, std::string_view team, std::string_view user, std::string_view model, double usd,
                 std::int64_t t, bool alert, std::int64_t started_ms = std::numeric_limits<std::int64_t>::max(),
                 bool remote = false) {
    const std::int64_t t_s = floor_div(t, 1000);
    const std::int64_t started_s = floor_div(std::min(t, started_ms), 1000);
    const call_scope c{team, ks ? std::string_view(ks->name) : std::string_view(), model, user};
    global_recent.add(usd, t);
    if (!remote) local_recent.add(usd, t);
    auto apply = [&](budget_state& b) {
      b.roll(cal, t_s);
      if ((!alert || started_ms != std::numeric_limits<std::int64_t>::max()) && started_s < b.window.start_s) return;
      if (b.each) {  // user:*: the call's end user's own budget (a row of an earlier window made none)
        budget_state& u = user_state(b, user, t_s);
        if (&u != &b) {
          apply_spend(u, usd, t, alert);
          if (u.spent > 0 && (b.each->top == nullptr || u.spent > b.each->top->spent)) b.each->top = &u;
          return;
        }
      }
      apply_spend(b, usd, t, alert);
    };
    for (auto& b : budgets)
      if (matches(b.scope, c)) apply(b);
    if (ks)
      for (auto& b : ks->budgets) apply(b);
    for (auto& g : guards) {
      if (!matches(g.scope, c)) continue;
      g.add(t, usd);
      const double s = g.sum(t);
      if (!g.tripped && s > g.cfg.max_usd) trip(g, s, t, alert);
    }
  }

  // A guard's window spend `s` is over its max: it trips, and alerts unless warm-starting.
  void trip(guard_state& g, double s, std::int64_t t, bool alert) {
    g.tripped = true;
    if (!alert) return;
    std::string what = g.cfg.action == guard_action::reroute ? "rerouting to " + g.cfg.fallback_model : "rejecting calls";
    raise({alert_kind::spend_guard, g.cfg.scope, g.window_name, g.cfg.max_usd, s, 0, t,
           "Spend guard " + g.cfg.scope + " tripped: " + format_usd(s) + " spent in the last " + g.window_name + " (max " +
               format_usd(g.cfg.max_usd) + "); " + what});
  }

  // A key's state joins the engine (add_key, a reload's new key); keys_write_mu held.
  void insert_key_state(const client_key_config& k) {
    auto state = make_key_state(k);
    const bool has_budgets = !state->budgets.empty();
    {
      std::lock_guard lock(mu);
      key_states[state->name] = std::move(state);
    }
    if (has_budgets) keys_with_budgets.fetch_add(1, std::memory_order_relaxed);
  }
  // A key's state leaves (remove_key, a reload's removed key), after the key left the published
  // list: a call that found the key just before still finds its buckets; tickets keep theirs.
  // keys_write_mu held.
  void erase_key_state(std::string_view name) {
    if (auto c = configured.find(name); c != configured.end()) configured.erase(c);
    std::shared_ptr<key_state> gone;  // freed after the lock, unless tickets still hold it
    {
      std::lock_guard lock(mu);
      if (auto it = key_states.find(name); it != key_states.end()) {
        gone = std::move(it->second);
        key_states.erase(it);
      }
    }
    if (gone && !gone->budgets.empty()) keys_with_budgets.fetch_sub(1, std::memory_order_relaxed);
  }
};

policy_engine::policy_engine(const policy_config& cfg, const std::string& timezone)
    : impl_(std::make_unique<impl>(timezone)) {
  impl_->budgets.reserve(cfg.budgets.size());
  for (const auto& b : cfg.budgets) {
    budget_state& st = impl_->budgets.emplace_back(b, parse_scope(b.scope));
    if (st.scope.kind == scope_kind::each_user) st.each = std::make_unique<user_budgets>();
    impl_->has_user_scopes |= st.scope.kind == scope_kind::user || st.scope.kind == scope_kind::each_user;
  }
  for (const auto& g : cfg.spend_guards) {
    if (g.window.count() <= 0) throw std::invalid_argument("spend guard " + g.scope + ": window must be positive");
    if (g.action == guard_action::reroute && g.fallback_model.empty())
      throw std::invalid_argument("spend guard " + g.scope + ": action reroute needs fallback_model");
    auto& st = impl_->guards.emplace_back(g, parse_scope(g.scope));
    if (st.scope.kind == scope_kind::each_user)
      throw std::invalid_argument("spend guard user:*: a guard is for one scope; name the end user (user:<id>)");
    impl_->has_user_scopes |= st.scope.kind == scope_kind::user;
  }
  impl_->user_limits = cfg.user_limits;
  impl_->has_controls = !impl_->budgets.empty() || !impl_->guards.empty() || cfg.user_limits.any();
  for (const auto& k : cfg.keys) {
    if (!add_key(k)) throw std::invalid_argument("key '" + k.name + "': empty or duplicate name, or duplicate key");
    impl_->configured.insert(k.name);
  }
}

policy_engine::~policy_engine() = default;

// ---- Keys ----

std::array<unsigned char, 32> policy_engine::sha256(std::string_view s) noexcept {
  std::array<unsigned char, 32> out{};
  unsigned int n = 0;
  if (EVP_Digest(s.data(), s.size(), out.data(), &n, EVP_sha256(), nullptr) != 1) out.fill(0);
  return out;
}

std::shared_ptr<const client_key_config> policy_engine::find_key(std::string_view presented) const noexcept {
  const auto digest = sha256(presented);
  const auto list = impl_->keys();
  // Every key is compared, so the time taken says nothing about which key (or how much of one)
  // matched.
  std::size_t found = list->size();
  for (std::size_t i = 0; i < list->size(); ++i) {
    const bool eq = CRYPTO_memcmp(digest.data(), (*list)[i]->sha256.data(), digest.size()) == 0;
    found = eq ? i : found;
  }
  return found < list->size() ? (*list)[found] : nullptr;
}

bool policy_engine::add_key(client_key_config k) {
  if (k.name.empty()) return false;
  for (auto& b : k.budgets) b.scope = "key:" + k.name;
  std::lock_guard write(impl_->keys_write_mu);
  const auto old = impl_->keys();
  for (const auto& e : *old)
    if (e->name == k.name || CRYPTO_memcmp(e->sha256.data(), k.sha256.data(), k.sha256.size()) == 0) return false;
  impl_->insert_key_state(k);
  auto next = std::make_shared<key_list>(*old);
  next->push_back(std::make_shared<const client_key_config>(std::move(k)));
  impl_->publish(std::move(next));
  return true;
}

void policy_engine::mark_projected_alerted(const std::string& scope, calendar_period period, std::int64_t window_start_s,
                                           std::int64_t now_ms) {
  const std::int64_t now_s = floor_div(now_ms, 1000);
  std::lock_guard lock(impl_->mu);
  auto mark = [&](budget_state& b) {
    if (b.cfg.scope != scope || b.cfg.period != period) return;
    b.roll(impl_->cal, now_s);
    if (b.window.start_s == window_start_s) b.projected_alerted = true;
  };
  for (auto& b : impl_->budgets) mark(b);
  for (auto& [name, ks] : impl_->key_states)
    for (auto& b : ks->budgets) mark(b);
}

bool policy_engine::remove_key(std::string_view name) {
  std::lock_guard write(impl_->keys_write_mu);
  const auto old = impl_->keys();
  auto next = std::make_shared<key_list>();
  next->reserve(old->size());
  for (const auto& e : *old)
    if (e->name != name) next->push_back(e);
  if (next->size() == old->size()) return false;
  impl_->publish(std::move(next));
  impl_->erase_key_state(name);
  return true;
}

std::vector<std::shared_ptr<const client_key_config>> policy_engine::keys() const { return *impl_->keys(); }

std::vector<std::shared_ptr<const client_key_config>> policy_engine::configured_keys() const {
  std::lock_guard write(impl_->keys_write_mu);
  std::vector<std::shared_ptr<const client_key_config>> out;
  for (const auto& k : *impl_->keys())
    if (impl_->configured.contains(k->name)) out.push_back(k);
  return out;
}

// ---- Live reconfiguration ----

namespace {

std::string plain_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string fractions(const std::vector<double>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + plain_number(v[i]);
  return out + "]";
}

// A bucket's per-minute capacity changed: one that was unlimited starts full at the new rate;
// otherwise its level stays (above the new capacity: cut to it), so a lowered limit does not
// hand out a fresh minute.
void set_capacity(token_bucket& b, std::int64_t per_minute, std::int64_t now) {
  const double cap = static_cast<double>(std::max<std::int64_t>(0, per_minute));
  if (b.capacity == cap) return;
  if (b.capacity > 0 && b.started) {
    b.refill(now);
    b.level = std::min(b.level, cap);
  } else {
    b.started = false;  // the next refill fills it
  }
  b.capacity = cap;
}

// The same budget, read again: its numbers are taken, its spend and window kept. `crossed` is
// rebuilt for the new thresholds: one counts as crossed only if it had alerted this window (the
// same fraction) and the spend is still at or over it under the new limit, so soft_check() alerts
// at once on a threshold a lowered limit has put behind the spend, and again later on one a
// raised limit has put ahead of it.
void retune_numbers(budget_state& b, const budget_config& n) {
  std::vector<char> crossed(n.soft.size(), 0);
  for (std::size_t i = 0; i < n.soft.size(); ++i)
    for (std::size_t j = 0; j < b.cfg.soft.size(); ++j)
      if (b.cfg.soft[j] == n.soft[i] && b.crossed[j] != 0 && b.spent >= n.soft[i] * n.limit_usd) crossed[i] = 1;
  if (b.cfg.limit_usd != n.limit_usd) b.projected_alerted = false;  // a new limit: a new question
  b.cfg.limit_usd = n.limit_usd;
  b.cfg.soft = n.soft;
  b.cfg.hard = n.hard;
  b.crossed = std::move(crossed);
}

std::string budget_changes(const budget_config& o, const budget_config& n) {
  std::string what;
  auto add = [&](const std::string& s) { what += (what.empty() ? "" : ", ") + s; };
  if (o.limit_usd != n.limit_usd) add("limit " + format_usd(o.limit_usd) + " -> " + format_usd(n.limit_usd));
  if (o.soft != n.soft) add("soft " + fractions(o.soft) + " -> " + fractions(n.soft));
  if (o.hard != n.hard) add(std::string("hard ") + (o.hard ? "true" : "false") + " -> " + (n.hard ? "true" : "false"));
  return what;
}

}  // namespace

policy_engine::retune_result policy_engine::retune(const policy_config& next, const policy_config& current,
                                                   std::int64_t now_ms) {
  retune_result r;
  impl& m = *impl_;
  const std::int64_t now_s = floor_div(now_ms, 1000);
  auto restart = [&](std::string s) { r.restart_required.push_back(std::move(s) + ": takes effect at a restart"); };
  auto budget_name = [](const budget_config& b) { return b.scope + "/" + std::string(to_string(b.period)); };

  std::lock_guard write(m.keys_write_mu);  // no key is added or revoked meanwhile
  const auto old_list = m.keys();
  std::vector<std::pair<std::string, std::shared_ptr<const client_key_config>>> republish;
  std::vector<const client_key_config*> added;
  std::vector<std::string> removed;
  {
    std::lock_guard lock(m.mu);
    // A budget's new numbers; its user:* end users' own states (copies of its config) with it.
    auto retune_budget = [&](budget_state& b, const budget_config& n) {
      const std::string what = budget_changes(b.cfg, n);
      if (what.empty()) return;
      b.roll(m.cal, now_s);
      retune_numbers(b, n);
      if (b.each) {
        for (auto* users : {&b.each->users, &b.each->retired})
          for (auto& [name, u] : *users) retune_numbers(*u, n);
        for (auto& u : b.each->in_flight) retune_numbers(*u, n);
        for (auto& [name, u] : b.each->users) m.soft_check(*u, now_ms, true);
      }
      m.soft_check(b, now_ms, true);
      r.applied.push_back("budget " + b.name() + ": " + what);
    };
    // Budgets are matched by scope and period, in order (two of the same pair pair up in turn).
    auto match_budgets = [&](std::vector<budget_state>& running, const std::vector<budget_config>& wanted) {
      std::vector<char> taken(wanted.size(), 0);
      for (auto& b : running) {
        bool found = false;
        for (std::size_t i = 0; i < wanted.size() && !found; ++i)
          if (!taken[i] && wanted[i].scope == b.cfg.scope && wanted[i].period == b.cfg.period) {
            taken[i] = found = true;
            retune_budget(b, wanted[i]);
          }
        if (!found) restart("budget " + b.name() + " removed");
      }
      for (std::size_t i = 0; i < wanted.size(); ++i)
        if (!taken[i]) restart("budget " + budget_name(wanted[i]) + " added");
    };
    match_budgets(m.budgets, next.budgets);

    std::vector<char> guard_taken(next.spend_guards.size(), 0);
    for (auto& g : m.guards) {
      const spend_guard_config* n = nullptr;
      for (std::size_t i = 0; i < next.spend_guards.size() && n == nullptr; ++i)
        if (!guard_taken[i] && next.spend_guards[i].scope == g.cfg.scope && next.spend_guards[i].window == g.cfg.window) {
          guard_taken[i] = 1;
          n = &next.spend_guards[i];
        }
      const std::string name = "spend guard " + g.cfg.scope + "/" + g.window_name;
      if (n == nullptr) {
        restart(name + " removed");
        continue;
      }
      // The action and fallback stay: admit() reads the fallback's name after the lock.
      if (n->action != g.cfg.action || n->fallback_model != g.cfg.fallback_model) restart(name + ": action or fallback_model changed");
      std::string what;
      if (n->max_usd != g.cfg.max_usd) what = "max " + format_usd(g.cfg.max_usd) + " -> " + format_usd(n->max_usd);
      if (n->reset_fraction != g.cfg.reset_fraction)
        what += (what.empty() ? "" : ", ") + std::string("reset_fraction ") + plain_number(g.cfg.reset_fraction) + " -> " +
                plain_number(n->reset_fraction);
      if (what.empty()) continue;
      g.cfg.max_usd = n->max_usd;
      g.cfg.reset_fraction = n->reset_fraction;
      const double s = g.sum(now_ms);
      if (g.tripped && s < g.reset_below()) {
        g.tripped = false;
      } else if (!g.tripped && s > g.cfg.max_usd) {
        m.trip(g, s, now_ms, true);
      }
      r.applied.push_back(name + ": " + what);
    }
    for (std::size_t i = 0; i < next.spend_guards.size(); ++i)
      if (!guard_taken[i]) {
        const auto& g = next.spend_guards[i];
        restart("spend guard " + g.scope + "/" + format_window(g.window.count()) + " added");
      }

    // Configured keys, by name, against those in force (keys added by the admin API are not the
    // file's to change). A key in the file and in force keeps its state (buckets, budgets' spend)
    // whatever changes: its secret (rotated: the old one is refused from now on), team, tags,
    // limits, its budgets' numbers. Keys are added and removed after this lock (below).
    for (const auto& n : next.keys) {
      if (!m.configured.contains(n.name)) {
        added.push_back(&n);
        continue;
      }
      const auto it = m.key_states.find(n.name);
      const auto live = std::find_if(old_list->begin(), old_list->end(), [&](const auto& k) { return k->name == n.name; });
      if (it == m.key_states.end() || live == old_list->end()) continue;  // not in force (cannot happen: not revocable)
      key_state& ks = *it->second;
      const client_key_config& o = **live;
      const std::size_t before = r.applied.size();
      if (o.sha256 != n.sha256) r.applied.push_back("key " + n.name + ": secret rotated (the old one is refused from now on)");
      if (o.team != n.team) r.applied.push_back("key " + n.name + ": team '" + o.team + "' -> '" + n.team + "'");
      if (o.tags != n.tags) r.applied.push_back("key " + n.name + ": tags changed");
      std::vector<budget_config> wanted = n.budgets;
      for (auto& bc : wanted) bc.scope = "key:" + n.name;
      if (wanted.empty() != ks.budgets.empty()) {
        restart("key " + n.name + ": budgets " + (wanted.empty() ? "removed" : "added"));
      } else {
        match_budgets(ks.budgets, wanted);
      }
      // Against the buckets in force (an earlier reload may have changed them).
      const auto rpm = static_cast<std::int64_t>(ks.rpm.capacity), tpm = static_cast<std::int64_t>(ks.tpm.capacity);
      const std::int64_t new_rpm = std::max<std::int64_t>(0, n.limits.rpm), new_tpm = std::max<std::int64_t>(0, n.limits.tpm);
      std::string what;
      if (rpm != new_rpm) what = "rpm " + std::to_string(rpm) + " -> " + std::to_string(new_rpm);
      if (tpm != new_tpm)
        what += (what.empty() ? "" : ", ") + std::string("tpm ") + std::to_string(tpm) + " -> " + std::to_string(new_tpm);
      if (!what.empty()) {
        set_capacity(ks.rpm, n.limits.rpm, now_ms);
        set_capacity(ks.tpm, n.limits.tpm, now_ms);
        r.applied.push_back("key " + n.name + ": " + what);
      }
      if (r.applied.size() == before) continue;
      // Sessions read the key (its secret, team, limits) from the published list: a copy with the
      // new values replaces it. Budgets keep their number and order (matched above).
      auto copy = std::make_shared<client_key_config>(o);
      copy->sha256 = n.sha256;
      copy->team = n.team;
      copy->tags = n.tags;
      copy->limits = n.limits;
      ks.team = n.team;
      for (std::size_t i = 0; i < copy->budgets.size() && i < ks.budgets.size(); ++i) copy->budgets[i] = ks.budgets[i].cfg;
      republish.emplace_back(n.name, std::move(copy));
    }
    for (const auto& name : m.configured)
      if (std::none_of(next.keys.begin(), next.keys.end(), [&](const auto& k) { return k.name == name; })) {
        removed.push_back(name);
      }

    const rate_limits& ul = next.user_limits;
    if (ul.any() != m.user_limits.any()) {
      restart(std::string("user_limits turned ") + (ul.any() ? "on" : "off"));
    } else if (ul.rpm != m.user_limits.rpm || ul.tpm != m.user_limits.tpm) {
      r.applied.push_back("user_limits: rpm " + std::to_string(m.user_limits.rpm) + " -> " + std::to_string(ul.rpm) + ", tpm " +
                          std::to_string(m.user_limits.tpm) + " -> " + std::to_string(ul.tpm));
      m.user_limits = ul;
      for (auto& [name, u] : m.user_rates) {
        set_capacity(u->rpm, ul.rpm, now_ms);
        set_capacity(u->tpm, ul.tpm, now_ms);
      }
    }
  }
  // The key list: removed keys out, changed ones replaced, new ones in (a new key whose name or
  // secret another key in force has, one added by the admin API say, is not added: said).
  if (!republish.empty() || !added.empty() || !removed.empty()) {
    auto list = std::make_shared<key_list>();
    list->reserve(old_list->size() + added.size());
    for (const auto& k : *old_list) {
      if (std::find(removed.begin(), removed.end(), k->name) != removed.end()) continue;
      const auto re = std::find_if(republish.begin(), republish.end(), [&](const auto& p) { return p.first == k->name; });
      list->push_back(re != republish.end() ? re->second : k);
    }
    for (const auto* n : added) {
      const bool clash = std::any_of(list->begin(), list->end(), [&](const auto& k) {
        return k->name == n->name || CRYPTO_memcmp(k->sha256.data(), n->sha256.data(), n->sha256.size()) == 0;
      });
      if (clash) {
        r.warnings.push_back("key " + n->name + " not added: a key in force (added by the admin API?) has its name or secret");
        continue;
      }
      client_key_config k = *n;
      for (auto& bc : k.budgets) bc.scope = "key:" + k.name;
      m.insert_key_state(k);
      m.configured.insert(k.name);
      r.applied.push_back("key " + k.name + " added" + (k.budgets.empty() ? "" : " (its budgets start at this period's zero)"));
      list->push_back(std::make_shared<const client_key_config>(std::move(k)));
    }
    m.publish(std::move(list));
    for (const auto& name : removed) {  // as remove_key(): out of the list first, then its state
      m.erase_key_state(name);
      r.applied.push_back("key " + name + " removed (refused from now on; its calls in flight finish)");
    }
  }

  if (next.auth != current.auth || next.auth_set != current.auth_set) restart("auth changed");
  if (next.user_header != current.user_header) restart("user_header changed");
  if (next.default_max_tokens != current.default_max_tokens) restart("reserve_max_tokens changed");
  const auto same_hooks = [](const webhook_config& a, const webhook_config& b) {
    return a.url == b.url && a.format == b.format && a.cooldown == b.cooldown && a.timeout == b.timeout &&
           a.max_attempts == b.max_attempts;
  };
  if (!std::equal(next.webhooks.begin(), next.webhooks.end(), current.webhooks.begin(), current.webhooks.end(), same_hooks))
    restart("alerts.webhooks changed");
  return r;
}

// ---- Admission ----

namespace {

std::int64_t retry_seconds(std::int64_t ms) { return std::max<std::int64_t>(1, (ms + 999) / 1000); }

void fill_rate_headers(policy_engine::decision& d, const token_bucket& rpm, const token_bucket& tpm) {
  d.rate_headers = true;
  if (rpm.capacity > 0) {
    d.limit_requests = static_cast<std::int64_t>(rpm.capacity);
    d.remaining_requests = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::floor(rpm.level)));
    d.reset_requests_ms = rpm.ms_until(rpm.capacity);
  }
  if (tpm.capacity > 0) {
    d.limit_tokens = static_cast<std::int64_t>(tpm.capacity);
    d.remaining_tokens = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::floor(tpm.level)));
    d.reset_tokens_ms = tpm.ms_until(tpm.capacity);
  }
}

// A call against one pair of buckets (a key's or an end user's): refused (rate_limited, its kind
// and Retry-After set, true returned) when a request or the tokens it reserves are not there.
bool rate_refused(policy_engine::decision& d, token_bucket& rpm, token_bucket& tpm, std::int64_t reserve_tokens,
                  std::int64_t now, std::uint64_t& limited_requests, std::uint64_t& limited_tokens) {
  rpm.refill(now);
  tpm.refill(now);
  // A call larger than the whole TPM capacity waits for a full bucket instead of never
  // passing; the level then goes negative and later calls wait for the debt.
  const double need_tokens = std::min(static_cast<double>(reserve_tokens), tpm.capacity);
  const bool req_ok = rpm.capacity <= 0 || rpm.level >= 1;
  const bool tok_ok = tpm.capacity <= 0 || tpm.level >= need_tokens;
  if (req_ok && tok_ok) return false;
  d.outcome = policy_engine::decision::rate_limited;
  d.rate_kind = req_ok ? "tokens" : "requests";
  // Both exhausted: the later of the two waits, so a client that honours Retry-After passes.
  std::int64_t wait = req_ok ? 0 : rpm.ms_until(1);
  if (!tok_ok) wait = std::max(wait, tpm.ms_until(need_tokens));
  d.retry_after_s = retry_seconds(wait);
  ++(req_ok ? limited_tokens : limited_requests);
  return true;
}

}  // namespace

bool policy_engine::needs_admission(const client_key_config* key) const noexcept {
  return (key != nullptr && key->limits.any()) || impl_->any_controls();
}

policy_engine::decision policy_engine::admit(const call_facts& f) noexcept {
  decision d;
  try {
    if (!needs_admission(f.key)) return d;

    impl& m = *impl_;
    double reserve = clean_usd(f.reserve_usd);
    const std::int64_t reserve_tokens = std::max<std::int64_t>(0, f.reserve_tokens);
    const std::int64_t now = f.now_ms, now_s = floor_div(now, 1000);
    // Strings are copied into `d` after the lock is released; these point into state that
    // outlives the copy (configured budgets and guards are never freed, `ks` pins a key's).
    std::shared_ptr<key_state> ks;
    const std::string* scope = nullptr;
    const std::string* reroute_model = nullptr;
    const std::string* reroute_scope = nullptr;
    std::string user_scope;   // "user:<id>" when the end user's rate limit refuses
    std::string_view period;  // budget period or guard window
    {
      std::lock_guard lock(m.mu);
      if (f.key != nullptr)
        if (auto it = m.key_states.find(f.key->name); it != m.key_states.end()) ks = it->second;
      const call_scope cs{f.team, ks ? std::string_view(ks->name) : std::string_view(), f.price_model, f.user};

      // 1. Rate limits, the key's then the end user's (nothing is charged until every check has
      // passed). The x-ratelimit-* headers are the key's when it has limits, else the user's.
      if (ks && ks->limited()) {
        if (rate_refused(d, ks->rpm, ks->tpm, reserve_tokens, now, ks->limited_requests, ks->limited_tokens))
          scope = &ks->scope;
        fill_rate_headers(d, ks->rpm, ks->tpm);
      }
      user_rate* ur = d.outcome == decision::admit ? m.user_rate_of(f.user, now) : nullptr;
      if (ur != nullptr) {
        if (rate_refused(d, ur->rpm, ur->tpm, reserve_tokens, now, m.user_limited_requests, m.user_limited_tokens)) {
          user_scope = "user:" + std::string(f.user);
          scope = &user_scope;
        }
        if (!d.rate_headers) fill_rate_headers(d, ur->rpm, ur->tpm);
      }

      // 2. Spend guards: a tripped reject guard refuses; a tripped reroute guard swaps the model.
      std::string_view model = f.price_model;
      guard_state* reroute = nullptr;
      if (d.outcome == decision::admit) {
        for (auto& g : m.guards) {
          if (!matches(g.scope, cs)) continue;
          if (g.tripped && g.sum(now) < g.reset_below()) g.tripped = false;  // hysteresis
          if (!g.tripped) continue;
          if (g.cfg.action == guard_action::reject) {
            ++g.rejected;
            d.outcome = decision::guard_rejected;
            d.limit_usd = g.cfg.max_usd;
            d.spent_usd = g.sum(now);
            d.retry_after_s = retry_seconds(g.ms_until_reset(now));
            scope = &g.cfg.scope;
            period = g.window_name;
            break;
          }
          const std::string& fb = g.cfg.fallback_model;
          if (reroute == nullptr && fb != f.price_model && fb != f.model) reroute = &g;
        }
        if (d.outcome == decision::admit && reroute != nullptr) {
          model = reroute->cfg.fallback_model;
          // The call will run at the fallback's prices: reserve those (a cheap fallback must not
          // be refused for the expensive model's worst case).
          if (f.reserve_at != nullptr) reserve = clean_usd(f.reserve_at(f.reserve_ctx, model));
        }
      }

      // 3. Budgets: the call must fit, with every outstanding reservation, under each hard limit.
      if (d.outcome == decision::admit) {
        const std::uint32_t index = m.acquire_slot();
        ticket_slot& s = m.slots[index];
        s.reserved.clear();
        budget_state* refused = nullptr;
        // A model without a price would be ledgered at cost 0 (priced = false): a hard budget
        // could never count it, so such a call is refused wherever a hard budget applies, unless
        // its upstream states the cost (then settled at that cost, reserved from stated_rates).
        const bool unpriced = !f.model.empty() && f.price_model.empty() && !f.stated;
        auto check = [&](budget_state& b) {
          b.roll(m.cal, now_s);
          s.reserved.push_back(&b);
          if (refused == nullptr && b.cfg.hard &&
              (unpriced || b.spent >= b.cfg.limit_usd || b.spent + b.reserved + reserve > b.cfg.limit_usd))
            refused = &b;
        };
        call_scope served = cs;
        served.model = model;
        for (auto& b : m.budgets)
          if (matches(b.scope, served)) check(b.each ? m.user_state(b, f.user, now_s) : b);
        if (ks)
          for (auto& b : ks->budgets) check(b);
        if (refused != nullptr) {
          s.reserved.clear();
          m.free_slots.push_back(index);
          ++(refused->parent ? refused->parent : refused)->rejections;
          d.outcome = decision::budget_exceeded;
          d.unpriced = unpriced;
          d.limit_usd = refused->cfg.limit_usd;
          d.spent_usd = refused->spent;
          // Blocked only by calls in flight: worth retrying soon; otherwise when the window ends.
          const bool in_flight_only =
              refused->spent < refused->cfg.limit_usd && refused->spent + reserve <= refused->cfg.limit_usd;
          d.retry_after_s = in_flight_only ? 1 : retry_seconds((refused->window.end_s - now_s) * 1000);
          scope = &refused->cfg.scope;
          period = to_string(refused->cfg.period);
        } else {
          for (budget_state* b : s.reserved) {
            b->reserved += reserve;
            ++b->outstanding;
          }
          if (ks && ks->limited()) {
            ks->rpm.level -= 1;
            ks->tpm.level -= static_cast<double>(reserve_tokens);
            fill_rate_headers(d, ks->rpm, ks->tpm);
          }
          if (ur != nullptr) {
            ur->rpm.level -= 1;
            ur->tpm.level -= static_cast<double>(reserve_tokens);
            ++ur->outstanding;
            if (!(ks && ks->limited())) fill_rate_headers(d, ur->rpm, ur->tpm);
          }
          s.urate = ur;
          if (reroute != nullptr) {
            ++reroute->rerouted;
            reroute_model = &reroute->cfg.fallback_model;
            reroute_scope = &reroute->cfg.scope;
          }
          s.live = true;
          s.key = ks;
          s.team.assign(f.team);
          s.user.assign(m.has_user_scopes ? f.user : std::string_view());
          s.reserve_usd = reserve;
          s.reserve_tokens = reserve_tokens;
          s.charged = 0;
          d.ticket = (static_cast<std::uint64_t>(s.generation) << 32) | (index + 1u);
        }
      }
    }
    if (scope != nullptr) d.scope = *scope;
    d.period = period;
    if (reroute_model != nullptr) {
      d.reroute_model = *reroute_model;
      d.reroute_scope = *reroute_scope;
    }
  } catch (...) {
    // Only allocation can fail here. Failing open keeps traffic flowing on an engine fault; the
    // call is then neither reserved nor attributed (ticket 0).
    return decision{};
  }
  return d;
}

void policy_engine::settle(std::uint64_t ticket, double cost_usd, std::int64_t tokens, std::string_view price_model,
                           std::int64_t now_ms, std::int64_t start_ms) noexcept {
  if (ticket == 0) return;
  std::shared_ptr<key_state> key;  // declared before the lock: released after it
  try {
    std::lock_guard lock(impl_->mu);
    ticket_slot* s = impl_->find_slot(ticket);
    if (s == nullptr) return;
    impl_->unreserve(*s);
    for (token_bucket* b : {s->key ? &s->key->tpm : nullptr, s->urate ? &s->urate->tpm : nullptr}) {
      if (b == nullptr || b->capacity <= 0) continue;
      b->refill(now_ms);
      b->level = std::min(b->capacity, b->level - static_cast<double>(std::max<std::int64_t>(0, tokens) - s->reserve_tokens));
    }
    impl_->add_spend(s->key.get(), s->team, s->user, price_model, std::max(0.0, clean_usd(cost_usd) - s->charged), now_ms,
                     true, start_ms);
    impl_->free_slot(*s, key);
  } catch (...) {
    // Only allocation can fail (an alert, the free list); the spend counted so far stays.
  }
}

bool policy_engine::charge(std::uint64_t ticket, double usd, std::string_view price_model, std::int64_t now_ms) noexcept {
  if (ticket == 0) return false;
  try {
    std::lock_guard lock(impl_->mu);
    ticket_slot* s = impl_->find_slot(ticket);
    if (s == nullptr) return false;
    const double add = clean_usd(usd);
    impl_->add_spend(s->key.get(), s->team, s->user, price_model, add, now_ms, true);
    s->charged += add;
    // The budgets the call was admitted under (its requested model's scopes).
    for (const budget_state* b : s->reserved)
      if (b->cfg.hard && b->spent >= b->cfg.limit_usd) return true;
  } catch (...) {
  }
  return false;
}

void policy_engine::release(std::uint64_t ticket) noexcept {
  if (ticket == 0) return;
  std::shared_ptr<key_state> key;
  try {
    std::lock_guard lock(impl_->mu);
    ticket_slot* s = impl_->find_slot(ticket);
    if (s == nullptr) return;
    impl_->unreserve(*s);
    for (token_bucket* b : {s->key ? &s->key->tpm : nullptr, s->urate ? &s->urate->tpm : nullptr})
      if (b != nullptr && b->capacity > 0) b->level = std::min(b->capacity, b->level + static_cast<double>(s->reserve_tokens));
    impl_->free_slot(*s, key);
  } catch (...) {
    // The free list could not grow: the slot is not reused, nothing else is lost.
  }
}

void policy_engine::seed(std::string_view key, std::string_view team, std::string_view price_model, double cost_usd,
                         std::int64_t ts_ms, std::string_view user) noexcept {
  add_named(key, team, user, price_model, cost_usd, ts_ms, false, std::numeric_limits<std::int64_t>::max(), false);
}

void policy_engine::add_remote(std::string_view key, std::string_view team, std::string_view price_model,
                               double cost_usd, std::int64_t ts_ms, std::int64_t now_ms, std::string_view user) noexcept {
  add_named(key, team, user, price_model, cost_usd, std::max(now_ms, ts_ms), true, ts_ms, true);
}

bool policy_engine::counts_users() const noexcept { return impl_->has_user_scopes; }
bool policy_engine::limits_users() const noexcept { return impl_->user_limits.any(); }

void policy_engine::add_named(std::string_view key, std::string_view team, std::string_view user,
                              std::string_view price_model, double cost_usd, std::int64_t t_ms, bool alert,
                              std::int64_t start_ms, bool remote) noexcept {
  try {
    std::lock_guard lock(impl_->mu);
    key_state* ks = nullptr;
    key_state anonymous;  // a key not configured here still counts for key: scopes by name
    if (!key.empty()) {
      if (auto it = impl_->key_states.find(key); it != impl_->key_states.end()) {
        ks = it->second.get();
      } else {
        anonymous.name = key;
        ks = &anonymous;
      }
    }
    impl_->add_spend(ks, team, user, price_model, clean_usd(cost_usd), t_ms, alert, start_ms, remote);
  } catch (...) {
  }
}

void policy_engine::seed_rate(std::string_view key, std::int64_t tokens, std::int64_t ts_ms, std::string_view user) noexcept {
  auto replay = [&](token_bucket& rpm, token_bucket& tpm) {
    for (token_bucket* b : {&rpm, &tpm}) {
      if (b->capacity <= 0) continue;
      if (!b->started) b->level = b->capacity, b->at_ms = ts_ms, b->started = true;
      b->refill(ts_ms);
    }
    if (rpm.capacity > 0) rpm.level -= 1;
    if (tpm.capacity > 0) tpm.level -= static_cast<double>(std::max<std::int64_t>(0, tokens));
  };
  try {
    std::lock_guard lock(impl_->mu);
    impl_->each_rate_pair(key, user, ts_ms, replay);
  } catch (...) {
  }
}

void policy_engine::add_remote_calls(std::string_view key, std::int64_t calls, std::int64_t tokens, std::int64_t ts_ms,
                                     std::int64_t now_ms, std::string_view user) noexcept {
  if (calls <= 0 || now_ms - ts_ms >= 60'000) return;
  // The debt is bounded by one minute of the limit: calls the other instances let through before
  // they saw this one's (the lag) do not lock the key or user out here for minutes.
  auto take = [&](token_bucket& b, double amount) {
    if (b.capacity <= 0) return;
    b.refill(now_ms);
    b.level = std::min(b.level, std::max(-b.capacity, b.level - amount));
  };
  auto take_both = [&](token_bucket& rpm, token_bucket& tpm) {
    take(rpm, static_cast<double>(calls));
    take(tpm, static_cast<double>(std::max<std::int64_t>(0, tokens)));
  };
  try {
    std::lock_guard lock(impl_->mu);
    impl_->each_rate_pair(key, user, now_ms, take_both);
  } catch (...) {
  }
}

// Slices, each under the lock on its own and its nodes freed after it: freeing is most of the
// cost (250,000 users: about 200 ms of this thread once a period), the lock is held about a
// millisecond a slice (a one-sweep roll held it 65 ms), and admissions take turns in between.
void policy_engine::maintain(std::int64_t now_ms, std::size_t slice) noexcept {
  std::vector<user_budget_map::node_type> users;
  std::vector<user_rate_map::node_type> rates;
  impl& m = *impl_;
  const std::int64_t now_s = floor_div(now_ms, 1000);
  for (bool more = true; more;) {
    more = false;
    try {
      std::lock_guard lock(m.mu);
      for (auto& b : m.budgets) {
        if (!b.each) continue;
        b.roll(m.cal, now_s);
        m.retire_users(b);
        more = impl::drain_retired(*b.each, slice, users) || more;
      }
      if (!m.user_rates.empty()) more = m.sweep_user_rates(slice, now_ms, rates) || more;
    } catch (...) {
      more = false;  // bad_alloc of the scratch vectors: the next call goes on
    }
    users.clear();  // after the lock
    rates.clear();
  }
}

policy_engine::held_users policy_engine::users_held() const {
  std::lock_guard lock(impl_->mu);
  held_users h;
  for (const auto& b : impl_->budgets)
    if (b.each) {
      h.budget += b.each->users.size();
      h.retired += b.each->retired.size() + b.each->in_flight.size();
    }
  h.rate = impl_->user_rates.size();
  return h;
}

std::vector<alert_event> policy_engine::take_alerts() {
  std::vector<alert_event> out;
  std::lock_guard lock(impl_->mu);
  out.swap(impl_->alerts);
  return out;
}

// ---- Snapshots ----

std::vector<policy_engine::budget_status> policy_engine::budgets(std::int64_t now_ms, std::string_view user) const {
  const std::int64_t now_s = floor_div(now_ms, 1000);
  std::vector<budget_status> out;
  auto add = [&](const budget_state& b) {
    budget_status st;
    st.scope = b.cfg.scope;
    st.period = b.cfg.period;
    st.limit_usd = b.cfg.limit_usd;
    st.hard = b.cfg.hard;
    st.reserved_usd = b.reserved;
    if (b.window.end_s != 0 && now_s < b.window.end_s) {
      st.spent_usd = b.spent;
      st.window = b.window;
      const double now_f = static_cast<double>(now_ms) / 1000.0;
      st.projected_p50 = b.projected(b.rest50), st.projected_p90 = b.projected(b.rest90);
      st.exhaustion_p50_s = b.exhaustion(st.projected_p50, now_f);
      st.exhaustion_p90_s = b.exhaustion(st.projected_p90, now_f);
    } else {
      st.window = impl_->cal.window(b.cfg.period, now_s);  // rolled over: nothing spent yet
    }
    if (b.each) {  // user:*: its end users' count, and the figures of the one asked for or who spent most
      st.spent_usd = st.reserved_usd = 0;
      st.projected_p50 = st.projected_p90 = st.exhaustion_p50_s = st.exhaustion_p90_s = nan;
      if (b.window.end_s != 0 && now_s < b.window.end_s && b.each->window_start_s == b.window.start_s) {
        st.users = b.each->users.size();
        st.shared_usd = b.spent;
        const budget_state* shown = b.each->top;
        if (!user.empty()) {
          // Not tracked: nothing spent yet, or (all places taken) in the shared bucket.
          const auto it = b.each->users.find(user);
          shown = it != b.each->users.end() ? it->second.get()
                  : b.each->users.size() >= max_users_per_budget ? &b
                                                                 : nullptr;
        }
        if (shown != nullptr) {
          st.top_user = shown == &b ? std::string(user) : shown->scope.name;
          st.spent_usd = shown->spent;
          st.reserved_usd = shown->reserved;
          // The user's share of the rest of the period's spend: their recent spend over everyone's
          // (as a team's is). The users held are all of this window (each->window_start_s).
          const double everyone = impl_->global_recent.at(now_ms);
          const double share = everyone > 0 ? std::clamp(shown->recent.at(now_ms) / everyone, 0.0, 1.0) : 0.0;
          const auto rest = [&](double r) { return std::isfinite(r) ? share * r : nan; };
          const double now_f = static_cast<double>(now_ms) / 1000.0;
          st.projected_p50 = shown->projected(rest(b.rest50));
          st.projected_p90 = shown->projected(rest(b.rest90));
          st.exhaustion_p50_s = shown->exhaustion(st.projected_p50, now_f);
          st.exhaustion_p90_s = shown->exhaustion(st.projected_p90, now_f);
        }
      }
    }
    out.push_back(std::move(st));
  };
  std::lock_guard lock(impl_->mu);
  for (const auto& b : impl_->budgets) add(b);
  for (const auto& [name, ks] : impl_->key_states)
    for (const auto& b : ks->budgets) add(b);
  return out;
}

std::vector<policy_engine::guard_status> policy_engine::guards(std::int64_t now_ms) const {
  std::vector<guard_status> out;
  std::lock_guard lock(impl_->mu);
  for (const auto& g : impl_->guards) {
    const double s = g.sum(now_ms);
    out.push_back({g.cfg.scope, g.window_name, g.cfg.action, g.tripped && s >= g.reset_below(), s, g.cfg.max_usd});
  }
  return out;
}

policy_engine::counter_snapshot policy_engine::counters() const {
  counter_snapshot out;
  std::lock_guard lock(impl_->mu);
  for (const auto& [name, ks] : impl_->key_states) {
    if (!ks->limited()) continue;
    out.rate_limited.push_back({ks->scope, "requests", ks->limited_requests});
    out.rate_limited.push_back({ks->scope, "tokens", ks->limited_tokens});
  }
  if (impl_->user_limits.any()) {  // every end user's refusals under one scope: no series per user
    out.rate_limited.push_back({"user:*", "requests", impl_->user_limited_requests});
    out.rate_limited.push_back({"user:*", "tokens", impl_->user_limited_tokens});
  }
  std::map<std::string_view, std::uint64_t> rejections;
  for (const auto& b : impl_->budgets)
    if (b.cfg.hard) rejections[b.cfg.scope] += b.rejections;
  for (const auto& [name, ks] : impl_->key_states)
    for (const auto& b : ks->budgets)
      if (b.cfg.hard) rejections[b.cfg.scope] += b.rejections;
  for (const auto& [scope, n] : rejections) out.budget_rejections.push_back({std::string(scope), "", n});
  for (const auto& g : impl_->guards)
    out.guard_actions.push_back(
        {g.cfg.scope, g.cfg.action == guard_action::reroute ? "reroute" : "reject", g.cfg.action == guard_action::reroute ? g.rerouted : g.rejected});
  out.alerts_dropped = impl_->alerts_dropped;
  return out;
}

// ---- Projections ----

void policy_engine::update_projections(std::int64_t now_ms, const remaining_spend_fn& global_remaining) {
  impl& m = *impl_;
  const std::int64_t now_s = floor_div(now_ms, 1000);
  constexpr std::size_t n_periods = 4;
  std::array<bool, n_periods> used{};
  {
    std::lock_guard lock(m.mu);
    for (const auto& b : m.budgets) used[static_cast<std::size_t>(b.cfg.period)] = true;
    for (const auto& [name, ks] : m.key_states)
      for (const auto& b : ks->budgets) used[static_cast<std::size_t>(b.cfg.period)] = true;
  }
  // The forecaster's work happens outside the lock.
  std::array<spend_forecast, n_periods> fc{};
  for (std::size_t p = 0; p < n_periods; ++p) {
    if (!used[p]) continue;
    const auto period = static_cast<calendar_period>(p);
    fc[p] = global_remaining(period, m.cal.window(period, now_s));
  }

  std::lock_guard lock(m.mu);
  const double global_recent = m.global_recent.at(now_ms);
  // The forecast is of this instance's own spend. In a fleet (other instances' spend counted,
  // ledger.postgres.fleet_budgets) the rest of the period is the fleet's: this instance's forecast
  // scaled by the fleet's recent spend over its own, i.e. its share behind the load balancer is
  // taken to hold. Capped: an instance that serves almost nothing cannot speak for the fleet.
  const double local_recent = m.local_recent.at(now_ms);
  const double fleet = local_recent > 0 && global_recent > local_recent
                           ? std::min(global_recent / local_recent, max_fleet_scale)
                           : 1.0;
  auto project = [&](budget_state& b) {
    b.roll(m.cal, now_s);
    const spend_forecast& f = fc[static_cast<std::size_t>(b.cfg.period)];
    double share = 1;
    if (b.scope.kind != scope_kind::global && !b.each)
      share = global_recent > 0 ? std::clamp(b.recent.at(now_ms) / global_recent, 0.0, 1.0) : 0.0;
    auto rest = [&](double remaining) {
      return std::isfinite(remaining) ? share * fleet * std::max(0.0, remaining) : nan_v;
    };
    b.rest50 = rest(f.p50_usd);
    b.rest90 = rest(f.p90_usd);
    // user:*: the rest of the whole spend; each end user's share of it is taken when their
    // figures are read (budgets()), from their own recent spend: O(1) here, whatever the users.
    // No projection alert per end user (250,000 of them could each raise one).
    if (b.each) return;
    const double basis = b.projected(f.learned ? b.rest90 : b.rest50);
    if (b.projected_alerted || f.extrapolated || !(basis > b.cfg.limit_usd)) return;
    b.projected_alerted = true;
    alert_event e{alert_kind::projected_overspend, b.cfg.scope, std::string(to_string(b.cfg.period)), b.cfg.limit_usd,
                  b.spent, basis, now_ms,
                  "Budget " + b.name() + " is projected to overspend: " + (f.learned ? "p90 " : "p50 ") + format_usd(basis) +
                      " of " + format_usd(b.cfg.limit_usd) + " by the end of the " + std::string(to_string(b.cfg.period)) +
                      " (" + format_usd(b.spent) + " spent so far" +
                      (f.learned ? ")" : "; the median, while the forecast band is still being learned)")};
    e.projection_quantile = f.learned ? 0.9 : 0.5;
    e.window_start_s = b.window.start_s;
    m.raise(std::move(e));
  };
  for (auto& b : m.budgets) project(b);
  for (auto& [name, ks] : m.key_states)
    for (auto& b : ks->budgets) project(b);
}

// ---- Formatting ----

// Cents for amounts a person reads as money; below a cent, enough digits that a tiny test budget
// does not read "$0.00 of $0.00" ($0.000096, not $0.00).
std::string format_usd(double v) {
  char b[64];
  if (!(std::fabs(v) < 0.01) || v == 0) std::snprintf(b, sizeof b, "$%.2f", v);
  else std::snprintf(b, sizeof b, "$%.2g", v);
  std::string out = b;
  if (out.find('e') != std::string::npos) {  // %g chose an exponent: write it out in full
    std::snprintf(b, sizeof b, "$%.12f", v);
    out = b;
    while (out.back() == '0') out.pop_back();
  }
  return out;
}

std::string format_reset(std::int64_t ms) {
  if (ms <= 0) return "0s";
  if (ms < 1000) return std::to_string(ms) + "ms";
  std::string out;
  const std::int64_t h = ms / 3'600'000, mnt = ms / 60'000 % 60, s = ms / 1000 % 60, frac = ms % 1000;
  if (h > 0) out += std::to_string(h) + "h";
  if (h > 0 || mnt > 0) out += std::to_string(mnt) + "m";
  out += std::to_string(s);
  if (frac > 0) {
    char b[8];
    std::snprintf(b, sizeof b, ".%03d", static_cast<int>(frac));
    std::string f(b);
    while (f.back() == '0') f.pop_back();
    out += f;
  }
  return out + "s";
}

}  // namespace tollgate
