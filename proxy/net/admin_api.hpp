// The admin API on the admin port (issue 4): finance figures (/admin/spend, /admin/whatif),
// budget state (/admin/budgets) and client keys (/admin/keys), behind the admin token. Runs on
// the admin thread (its SQLite reads never touch an I/O thread). No Beast here: the admin
// listener (server.cpp) hands over a parsed request and writes the answer.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "core/price_reload.hpp"

namespace tollgate {

struct config;
class price_table;
class policy_engine;
class stated_rates;

struct admin_request {
  std::string method;         // "GET", "POST", "DELETE", "HEAD"
  std::string target;         // path and query
  std::string authorization;  // the Authorization header
  std::string body;
};

struct admin_response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::string allow;  // for 405
  std::string next_before;  // GET /admin/calls: the next page's cursor, sent as x-next-before
};

struct admin_context {
  const config& cfg;
  const price_table& prices;
  policy_engine& policy;
  std::string ledger_path;
  std::function<std::int64_t()> now_ms;
  // Called after a key with a hard budget is added (may be empty): hard budgets reserve the
  // models the table lacks at what their relays charged, learned from the ledger once.
  std::function<void()> hard_budget_added;
  // What relays stating their costs charged for the models the table lacks (may be null): shown
  // by /admin/budgets, as what a hard budget reserves those models at.
  const stated_rates* stated = nullptr;
  // POST /admin/prices/reload (may be empty: the endpoint then answers 404).
  std::function<price_reload()> reload_prices;
  // GET /admin/prices: the table in force's load time and reload count (may be empty).
  std::function<price_reload()> price_status;
  // POST /admin/config/reload (may be empty: the endpoint then answers 404).
  std::function<config_reload()> reload_config;
  // The admin token in force (a configuration reload may rotate it); unset: cfg.policy.admin_token.
  std::optional<std::string> admin_token;
  // GET /admin/config (may be empty: the endpoint then answers 404): the configuration file, when
  // it was last read, and the last reload's outcome.
  std::function<config_reload()> config_status;
};

// True for paths this API answers ("/admin/..."); everything else is the listener's.
bool is_admin_path(std::string_view path) noexcept;

// Answers one /admin request. Never throws: bad input is a 400 with an OpenAI-style error, a
// missing or wrong admin token 401, a database problem 500 naming it.
admin_response handle_admin(const admin_context& ctx, const admin_request& req);

}  // namespace tollgate
