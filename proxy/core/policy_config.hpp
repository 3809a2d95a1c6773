// The configuration of tollgate's spend controls (issue 4): client keys, budgets, spend-rate
// guards, rate limits and alert webhooks. Plain data, filled by the config loader (config.cpp)
// and by the admin API (keys added at run time); read by the policy engine and the notifier.
#pragma once
#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "core/calendar.hpp"

namespace tollgate {

// auth: required (every call needs a known key), optional (a known key is attributed, no key is
// let through anonymously, a wrong key is refused), off (keys ignored). Default: off when the
// client listener is on loopback, required otherwise.
enum class auth_mode : std::uint8_t { off, optional, required };

// Requests and tokens per minute; 0 = unlimited.
struct rate_limits {
  std::int64_t rpm = 0;
  std::int64_t tpm = 0;
  bool any() const noexcept { return rpm > 0 || tpm > 0; }
};

// One budget. scope: "global", "team:<name>", "key:<name>", "model:<price-table id>",
// "user:<end user>" or "user:*" (each end user on their own budget).
struct budget_config {
  std::string scope = "global";
  calendar_period period = calendar_period::month;  // day, week or month
  double limit_usd = 0;
  std::vector<double> soft;  // fractions of the limit that raise a soft_threshold alert (0.5, 0.8, 1.0)
  bool hard = false;         // true: a call that could overshoot is refused with 429 budget_exceeded
};

struct client_key_config {
  std::string name;                      // id in the ledger, metrics and logs
  std::array<unsigned char, 32> sha256{};  // of the key (config `key:` is hashed at load)
  std::string team;
  std::vector<std::string> tags;
  std::vector<budget_config> budgets;    // scope "key:<name>" (set by the loader)
  rate_limits limits;
};

// Spend-rate guard: more than max_usd settled within the rolling `window` in `scope` trips it;
// it resets (hysteresis) once the window's spend falls below reset_fraction * max_usd.
enum class guard_action : std::uint8_t { reject, reroute };
struct spend_guard_config {
  std::string scope = "global";          // same scope syntax as budgets
  std::chrono::milliseconds window{3'600'000};
  double max_usd = 0;
  guard_action action = guard_action::reject;
  std::string fallback_model;            // required for reroute: the model sent upstream instead
  double reset_fraction = 0.8;
};

enum class webhook_format : std::uint8_t { json, slack };
struct webhook_config {
  std::string url;                       // http:// or https://
  webhook_format format = webhook_format::json;
  std::chrono::milliseconds cooldown{900'000};  // the same alert (kind+scope+period) at most once per cooldown
  std::chrono::milliseconds timeout{5'000};
  int max_attempts = 5;                  // retries with exponential backoff (1 s, 2 s, 4 s, ...)
};

struct policy_config {
  auth_mode auth = auth_mode::off;
  bool auth_set = false;                 // false: `auth` not in the file; default decided by validate()
  std::string admin_token;               // "" = admin API disabled (401 for all but /metrics, health)
  std::vector<client_key_config> keys;
  std::vector<budget_config> budgets;
  std::vector<spend_guard_config> spend_guards;
  std::vector<webhook_config> webhooks;
  std::int64_t default_max_tokens = 4096;  // reservation when a request sets no max_tokens
  // Requests and tokens per minute of each end user (a call's `user`, `safety_identifier` or
  // `metadata.user_id`), on top of the key's own; calls that name no end user are not held.
  rate_limits user_limits;
  // A request header naming the call's end user (lower case; "": none). When a call carries it,
  // its value is the end user, whatever the body says, and it is not sent upstream.
  std::string user_header;
};

}  // namespace tollgate
