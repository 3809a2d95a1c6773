// The admin API's routes: token check, query parsing, and the finance/budget/key handlers, each
// mapping its errors to an HTTP status in one place (see admin_api.hpp).
#include "net/admin_api.hpp"

#include <openssl/crypto.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "core/calendar.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "core/http_rules.hpp"
#include "core/log.hpp"
#include "core/policy.hpp"
#include "core/pricing.hpp"
#include "core/stated_rates.hpp"
#include "core/usage.hpp"
#include "ledger/key_store.hpp"
#include "ledger/report.hpp"

namespace tollgate {
namespace {

using json = nlohmann::json;

struct http_problem : std::runtime_error {
  http_problem(int s, std::string code, const std::string& msg) : std::runtime_error(msg), status(s), code(std::move(code)) {}
  int status;
  std::string code;
};

// Compact JSON text; bytes that are not UTF-8 (a quoted query value, a hand-edited ledger's model
// name) become U+FFFD instead of throwing out of the handler; amounts shortest round-trip.
std::string text_of(const json& j) { return json_text(j); }

std::string problem_body(std::string_view message, std::string_view type, std::string_view code) {
  json j = {{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", code}}}};
  return text_of(j);
}

admin_response fail(int status, std::string_view code, std::string_view message) {
  admin_response r;
  r.status = status;
  std::string_view type = status == 401 ? "invalid_request_error" : status >= 500 ? "server_error" : "invalid_request_error";
  r.body = problem_body(message, type, code);
  return r;
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string url_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::map<std::string, std::string> parse_query(std::string_view q) {
  std::map<std::string, std::string> out;
  while (!q.empty()) {
    auto amp = q.find('&');
    std::string_view part = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view{} : q.substr(amp + 1);
    if (part.empty()) continue;
    auto eq = part.find('=');
    std::string key = url_decode(part.substr(0, eq));
    std::string value = eq == std::string_view::npos ? std::string() : url_decode(part.substr(eq + 1));
    // A control character (%00 above all) in a date or a model name is never meant, and would
    // cut the message that quotes it short.
    for (const std::string* t : {&key, &value})
      if (std::any_of(t->begin(), t->end(), [](unsigned char c) { return c < 0x20 || c == 0x7f; }))
        throw http_problem(400, "invalid_query", "Query parameter " + quote_value(key, 40) + " contains a control character.");
    // Last-one-wins would drop the first silently (group_by=model&group_by=team grouped by team).
    if (out.count(key))
      throw http_problem(400, "invalid_query",
                         "Query parameter " + quote_value(key, 40) + " is given twice; give it once (group_by takes a list: model,team).");
    out[key] = value;
  }
  return out;
}

bool token_ok(const std::string& want, std::string_view authorization) {
  if (want.empty()) return false;
  // The scheme is case-insensitive (RFC 9110 section 11.1), as on the client port.
  if (authorization.size() < 7 || !iequals(authorization.substr(0, 7), "bearer ")) return false;
  std::string_view got = trim_ows(authorization.substr(7));
  // Compare digests so the comparison takes the same time whatever the lengths.
  auto a = policy_engine::sha256(got), b = policy_engine::sha256(want);
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

time_range range_of(const std::map<std::string, std::string>& q, const calendar& cal) {
  time_range r;
  const auto given = [&](const char* k) { return q.count(k) != 0 && !q.at(k).empty(); };
  if (given("month") && (given("from") || given("to")))
    throw http_problem(400, "invalid_parameter", "give either month or from/to, not both");
  try {
    if (auto it = q.find("month"); it != q.end() && !it->second.empty()) r = parse_month(it->second, cal);
    if (auto it = q.find("from"); it != q.end() && !it->second.empty())
      r.from_ms = parse_time_bound(it->second, range_end::from, cal);
    if (auto it = q.find("to"); it != q.end() && !it->second.empty())
      r.to_ms = parse_time_bound(it->second, range_end::to, cal);
  } catch (const std::invalid_argument& e) {
    throw http_problem(400, "invalid_parameter", e.what());
  }
  if (r.from_ms >= r.to_ms) throw http_problem(400, "invalid_parameter", "'from' must be before 'to'");
  return r;
}

bool want_csv(const std::map<std::string, std::string>& q) {
  auto it = q.find("format");
  if (it == q.end() || it->second.empty() || it->second == "json") return false;
  if (it->second == "csv") return true;
  throw http_problem(400, "invalid_parameter", "format must be json or csv, got " + quote_value(it->second));
}

json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }
json time_or_null(double unix_s) {
  return std::isfinite(unix_s) ? json(format_rfc3339_utc(static_cast<std::int64_t>(unix_s) * 1000)) : json(nullptr);
}

// A spend or what-if report as CSV or JSON.
template <class Report>
admin_response report_response(const Report& report, bool csv) {
  admin_response r;
  if (csv) {
    r.content_type = "text/csv; charset=utf-8";
    r.body = to_csv(report);
  } else {
    r.body = text_of(to_json(report));
  }
  return r;
}

// Which ledger a report reads: this instance's file, or with `scope=fleet` the fleet ledger in
// PostgreSQL (ledger.postgres), all of it or, with `instance=`, one instance's rows.
struct report_scope {
  const std::string* fleet_url = nullptr;  // set: the fleet ledger
  std::optional<std::string> instance;
};

// A value the fleet ledger's query matches as text: PostgreSQL refuses bytes that are not UTF-8
// (its database encoding) with an error, which would read as the fleet ledger being unavailable;
// a ledger file's query just matches nothing. A 400 naming the parameter instead.
void fleet_text(const report_scope& s, std::string_view param, const std::string& value) {
  if (s.fleet_url && !valid_utf8(value))
    throw http_problem(400, "invalid_parameter",
                       std::string(param) + " is not UTF-8 text: the fleet ledger in PostgreSQL holds UTF-8 only");
}

report_scope scope_of(const admin_context& ctx, const std::map<std::string, std::string>& q) {
  report_scope s;
  const auto it = q.find("scope");
  const std::string scope = it == q.end() ? "" : it->second;
  if (scope == "fleet") {
    if (ctx.cfg.ledger_postgres.url.empty())
      throw http_problem(400, "fleet_ledger_not_configured",
                         "scope=fleet reads the fleet ledger in PostgreSQL: this instance has no ledger.postgres.url");
    s.fleet_url = &ctx.cfg.ledger_postgres.url;
  } else if (!scope.empty() && scope != "local") {
    throw http_problem(400, "invalid_parameter", "scope must be local or fleet, got " + quote_value(scope, 40));
  }
  if (const auto i = q.find("instance"); i != q.end() && !i->second.empty()) {
    if (!s.fleet_url)
      throw http_problem(400, "invalid_parameter", "instance applies to scope=fleet only: this instance's ledger is its own");
    fleet_text(s, "instance", i->second);
    s.instance = i->second;
  }
  return s;
}

// A report of the fleet ledger; PostgreSQL down or refusing is a 503 (its message never holds the
// url, which may hold a password). A bad question (std::invalid_argument, a logic_error) passes.
template <class Query>
auto fleet_report(Query&& query) {
  try {
    return query();
  } catch (const std::runtime_error& e) {
    throw http_problem(503, "fleet_ledger_unavailable", e.what());
  }
}

admin_response spend(const admin_context& ctx, const std::map<std::string, std::string>& q) {
  calendar cal(ctx.cfg.timezone);
  const report_scope scope = scope_of(ctx, q);
  spend_query sq;
  sq.range = range_of(q, cal);
  sq.timezone = ctx.cfg.timezone;
  if (auto it = q.find("group_by"); it != q.end() && !it->second.empty()) {
    try {
      sq.group_by = parse_group_by(it->second, scope.fleet_url != nullptr);
    } catch (const std::invalid_argument& e) {
      throw http_problem(400, "invalid_parameter", e.what());
    }
  }
  bool csv = want_csv(q);
  if (scope.fleet_url)
    return report_response(fleet_report([&] { return query_fleet_spend(*scope.fleet_url, sq, scope.instance); }), csv);
  return report_response(query_spend(ctx.ledger_path, sq), csv);
}

// Query parameter `k` as a number, nullopt when absent or empty; a 400 saying it must be `what`
// when it is not a number `ok` takes.
template <class T, class Ok>
std::optional<T> number_param(const std::map<std::string, std::string>& q, const char* k, Ok ok, const std::string& what) {
  auto it = q.find(k);
  if (it == q.end() || it->second.empty()) return std::nullopt;
  T v{};
  const auto& t = it->second;
  const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (ec != std::errc{} || end != t.data() + t.size() || !ok(v))
    throw http_problem(400, "invalid_parameter", std::string(k) + " must be " + what + ", got " + quote_value(t, 40));
  return v;
}

// The query parameters of GET /admin/calls besides its exact-match filters.
constexpr std::string_view kCallsOptions[] = {"from", "to", "month", "status", "min_cost_usd", "max_cost_usd",
                                              "min_latency_ms", "max_latency_ms", "before", "limit", "format",
                                              "scope", "instance"};

// GET /admin/calls: one page of ledger rows, newest first (report.hpp, query_calls).
admin_response calls(const admin_context& ctx, const std::map<std::string, std::string>& q) {
  calls_query cq;
  const auto& filters = calls_filters();
  for (const auto& [k, v] : q) {
    if (std::find(filters.begin(), filters.end(), k) != filters.end()) {
      if (!v.empty()) cq.match.emplace(k, v);
    } else if (std::find(std::begin(kCallsOptions), std::end(kCallsOptions), k) == std::end(kCallsOptions)) {
      std::string expected;
      for (const auto name : filters) (expected += name) += ", ";
      for (const auto name : kCallsOptions) (expected += name) += ", ";
      expected.resize(expected.size() - 2);
      throw http_problem(400, "invalid_parameter", "Unknown query parameter " + quote_value(k, 40) + " (expected " + expected + ").");
    }
  }
  const report_scope scope = scope_of(ctx, q);
  for (const auto& [k, v] : cq.match) fleet_text(scope, k, v);
  cq.range = range_of(q, calendar(ctx.cfg.timezone));
  const auto whole = [&](const char* k, long lo, long hi) {
    return number_param<long>(q, k, [&](long v) { return v >= lo && v <= hi; },
                              "a whole number from " + std::to_string(lo) + " to " + std::to_string(hi));
  };
  if (const auto s = whole("status", 0, 999)) cq.status = static_cast<int>(*s);
  // The bounds of the ranges: finite, non-negative numbers.
  for (const auto& [k, out] : {std::pair{"min_cost_usd", &cq.min_cost_usd}, std::pair{"max_cost_usd", &cq.max_cost_usd},
                               std::pair{"min_latency_ms", &cq.min_latency_ms}, std::pair{"max_latency_ms", &cq.max_latency_ms}})
    *out = number_param<double>(q, k, [](double v) { return std::isfinite(v) && v >= 0; }, "a number of 0 or more");
  if (const auto l = whole("limit", 1, 1000)) cq.limit = static_cast<std::size_t>(*l);
  if (auto it = q.find("before"); it != q.end() && !it->second.empty()) {
    try {
      fleet_text(scope, "before", it->second);
      cq.before = parse_calls_cursor(it->second, scope.fleet_url != nullptr);
    } catch (const std::invalid_argument& e) {
      throw http_problem(400, "invalid_parameter", e.what());
    }
  }
  admin_response r;
  if (want_csv(q)) {
    r.content_type = "text/csv; charset=utf-8";
    r.body = scope.fleet_url
                 ? fleet_report([&] { return query_fleet_calls_csv(*scope.fleet_url, cq, scope.instance, r.next_before); })
                 : query_calls_csv(ctx.ledger_path, cq, r.next_before);
  } else {
    const auto page = scope.fleet_url ? fleet_report([&] { return query_fleet_calls(*scope.fleet_url, cq, scope.instance); })
                                      : query_calls(ctx.ledger_path, cq);
    if (page["next_before"].is_string()) r.next_before = page["next_before"].get<std::string>();
    r.body = text_of(page);
  }
  return r;
}

// A field of the key body that must have one JSON type: a 400 naming it otherwise (nlohmann's own
// message names neither the field nor the request).
[[noreturn]] void bad_field(const std::string& field, const std::string& why) {
  throw http_problem(400, "invalid_parameter", field + " " + why);
}

// A price a what-if body gives: a number >= 0.
double price_field(const json& entry, const std::string& where, const char* field) {
  const auto& v = entry.at(field);
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0)
    throw http_problem(400, "invalid_parameter", where + "." + field + " must be a number >= 0 (USD per 1M tokens)");
  return v.get<double>();
}

// One entry of a what-if body's "prices", with prices.yaml's keys: it starts from the table's
// entry of that model (when there is one), so `{"output": 6}` changes only the output price.
model_price price_override(const price_table& table, const std::string& model, const json& entry) {
  const std::string where = "prices." + model.substr(0, 60);
  if (!entry.is_object()) throw http_problem(400, "invalid_parameter", where + " must be an object of prices");
  model_price p;
  const model_price* base = table.resolve(model);
  if (base != nullptr) p = *base;  // the prices in effect now (a version has no changes)
  else if (!entry.contains("input") || !entry.contains("output"))
    throw http_problem(400, "invalid_parameter", where + ": a model the price table lacks needs input and output");
  p.name = model;
  p.changes.clear();  // the override is the price, whatever the date
  for (const auto& [field, v] : entry.items()) {
    if (field == "input") p.input = price_field(entry, where, "input");
    else if (field == "output") p.output = price_field(entry, where, "output");
    else if (field == "cached_input") p.cached_input = price_field(entry, where, "cached_input");
    else if (field == "cache_write_5m") p.cache_write_5m = price_field(entry, where, "cache_write_5m");
    else if (field == "cache_write_1h") p.cache_write_1h = price_field(entry, where, "cache_write_1h");
    else if (field == "web_search") p.web_search = price_field(entry, where, "web_search");
    else if (field == "long_context") {
      const std::string lw = where + ".long_context";
      if (!v.is_object()) throw http_problem(400, "invalid_parameter", lw + " must be an object");
      for (const auto& [lf, lv] : v.items()) {
        if (lf == "threshold") {
          if (!lv.is_number_unsigned() || lv.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
            throw http_problem(400, "invalid_parameter", lw + ".threshold must be a whole number of tokens");
          p.long_context_threshold = static_cast<std::int64_t>(lv.get<std::uint64_t>());
        } else if (lf == "input") p.long_input = price_field(v, lw, "input");
        else if (lf == "output") p.long_output = price_field(v, lw, "output");
        else if (lf == "cached_input") p.long_cached_input = price_field(v, lw, "cached_input");
        else if (lf == "cache_write_5m") p.long_cache_write_5m = price_field(v, lw, "cache_write_5m");
        else if (lf == "cache_write_1h") p.long_cache_write_1h = price_field(v, lw, "cache_write_1h");
        else throw http_problem(400, "invalid_parameter", lw + "." + lf.substr(0, 40) + " is not a price key");
      }
    } else {
      throw http_problem(400, "invalid_parameter",
                         where + "." + field.substr(0, 40) +
                             " is not a price key (input, cached_input, output, cache_write_5m, cache_write_1h, web_search, long_context)");
    }
  }
  // A new model's cached price defaults to its input price, as in prices.yaml.
  if (base == nullptr && !entry.contains("cached_input")) p.cached_input = p.input;
  if (base == nullptr) apply_default_tiers(p);
  return p;
}

// GET /admin/whatif?model=X&from=&to= re-prices every call at X. POST takes a JSON body for the
// other questions: {"from", "to", "month", "format", "model", "swap": {"claude-sonnet-4.5":
// "deepseek-v3.2"}, "prices": {"gpt-4o": {"output": 6}}} (query parameters work too).
admin_response whatif(const admin_context& ctx, std::map<std::string, std::string> q, const std::string* body) {
  whatif_query wq;
  if (body != nullptr) {
    json j;
    try {
      j = json::parse(*body);
    } catch (const json::exception& e) {
      throw http_problem(400, "invalid_json", std::string("body is not valid JSON: ") + e.what());
    }
    if (!j.is_object()) throw http_problem(400, "invalid_json", "body must be a JSON object");
    for (const auto& [field, v] : j.items()) {
      if (field == "from" || field == "to" || field == "month" || field == "format" || field == "model" ||
          field == "scope" || field == "instance") {
        if (!v.is_string()) bad_field(field, "must be a string");
        if (q.count(field)) bad_field(field, "is given both in the query and in the body");
        q[field] = v.get<std::string>();
      } else if (field == "swap") {
        if (!v.is_object()) bad_field("swap", "must be an object {\"original model\": \"model to price it at\"}");
        for (const auto& [from, to] : v.items()) {
          if (!to.is_string()) bad_field("swap." + from.substr(0, 60), "must be a model id (a string)");
          wq.swap[from] = to.get<std::string>();
        }
      } else if (field == "prices") {
        if (!v.is_object()) bad_field("prices", "must be an object {\"model\": {\"input\": n, \"output\": n}}");
        for (const auto& [model, entry] : v.items()) wq.prices.push_back(price_override(ctx.prices, model, entry));
      } else {
        bad_field(quote_value(field, 40),
                  "is not a what-if field (from, to, month, format, model, swap, prices, scope, instance)");
      }
    }
  }
  calendar cal(ctx.cfg.timezone);
  const report_scope scope = scope_of(ctx, q);
  wq.range = range_of(q, cal);
  if (auto it = q.find("model"); it != q.end()) wq.model = it->second;
  if (wq.model.empty() && wq.swap.empty() && wq.prices.empty())
    throw http_problem(400, "missing_parameter",
                       body ? "say what to change: model, swap or prices" : "model is required (POST a JSON body for swaps and price changes)");
  bool csv = want_csv(q);
  whatif_report report;
  try {
    report = scope.fleet_url
                 ? fleet_report([&] { return query_fleet_whatif(*scope.fleet_url, wq, ctx.prices, scope.instance); })
                 : query_whatif(ctx.ledger_path, wq, ctx.prices);
  } catch (const std::invalid_argument& e) {
    throw http_problem(400, "model_not_found", e.what());
  }
  return report_response(report, csv);
}

admin_response budgets(const admin_context& ctx, const std::map<std::string, std::string>& q) {
  const std::int64_t now = ctx.now_ms();
  // ?user=<id>: each user:* budget shows that end user's own figures (what an app shows its user).
  std::string user;
  if (auto it = q.find("user"); it != q.end()) user = it->second;
  json out = {{"timezone", ctx.cfg.timezone}, {"budgets", json::array()}, {"spend_guards", json::array()}};
  for (const auto& b : ctx.policy.budgets(now, user)) {
    out["budgets"].push_back({{"scope", b.scope},
                              {"period", std::string(to_string(b.period))},
                              {"limit_usd", b.limit_usd},
                              {"spent_usd", b.spent_usd},
                              {"remaining_usd", std::max(0.0, b.limit_usd - b.spent_usd)},
                              {"reserved_usd", b.reserved_usd},
                              {"hard", b.hard},
                              {"window_start", format_rfc3339_utc(b.window.start_s * 1000)},
                              {"window_end", format_rfc3339_utc(b.window.end_s * 1000)},
                              {"projected_p50_usd", number_or_null(b.projected_p50)},
                              {"projected_p90_usd", number_or_null(b.projected_p90)},
                              {"exhaustion_p50", time_or_null(b.exhaustion_p50_s)},
                              {"exhaustion_p90", time_or_null(b.exhaustion_p90_s)}});
    if (b.scope == "user:*") {  // each end user's own budget: figures of the one who spent most, or asked for
      auto& o = out["budgets"].back();
      o["users"] = b.users;
      if (user.empty()) o["top_user"] = b.top_user.empty() ? json(nullptr) : json(b.top_user);
      else o["user"] = user;
      o["shared_usd"] = b.shared_usd;
    }
  }
  for (const auto& g : ctx.policy.guards(now)) {
    out["spend_guards"].push_back({{"scope", g.scope},
                                   {"window", g.window},
                                   {"action", g.action == guard_action::reroute ? "reroute" : "reject"},
                                   {"tripped", g.tripped},
                                   {"window_spent_usd", g.window_spent_usd},
                                   {"max_usd", g.max_usd}});
  }
  // What a hard budget reserves the models the table lacks at, when their upstream states each
  // call's cost: the learned bounds, each capped by the table's dearest price (as the relay
  // path does), USD per 1M tokens; null: nothing to reserve that side at.
  json stated = {{"upstreams", json::array()}, {"models", json::array()}};
  if (ctx.stated != nullptr) {
    for (const auto& u : ctx.stated->stating_upstreams())
      stated["upstreams"].push_back({{"name", u.name}, {"streams", u.streams}});
    const auto [top_in, top_out] = ctx.prices.priciest_tokens();
    for (const auto& m : ctx.stated->learned()) {
      const auto r = stated_rates::reserve_rates(m.bound, top_in, top_out);
      stated["models"].push_back({{"model", m.model},
                                  {"reserve_input_usd_per_1m", number_or_null(r.input * 1e6)},
                                  {"reserve_output_usd_per_1m", number_or_null(r.output * 1e6)},
                                  {"providers", m.providers}});
    }
  }
  out["stated_costs"] = std::move(stated);
  admin_response r;
  r.body = text_of(out);
  return r;
}

json key_view(const client_key_config& k, std::string_view source) {
  json budgets = budgets_to_json(k.budgets);
  return {{"name", k.name},
          {"team", k.team.empty() ? json(nullptr) : json(k.team)},
          {"tags", k.tags},
          {"limits", {{"rpm", k.limits.rpm}, {"tpm", k.limits.tpm}}},
          {"budgets", budgets},
          {"source", source}};
}

// POST /admin/prices/reload: the price files read again (app::reload_prices). 200 with what
// changed when they loaded; 422 naming the file and line when not (the table in force stays).
admin_response prices_reload(const admin_context& ctx) {
  const price_reload r = ctx.reload_prices();
  if (!r.ok)
    return fail(422, "invalid_price_table", "The price files did not load; the price table in force is unchanged: " + r.error);
  admin_response out;
  out.body = text_of(json{{"reloaded", true},
                          {"models", r.models},
                          {"added", r.added},
                          {"removed", r.removed},
                          {"warnings", r.warnings},
                          {"loaded_at", format_rfc3339_utc(r.loaded_ms)},
                          {"reloads", r.reloads}});
  return out;
}

// A configuration reload's outcome as the admin API shows it (POST /admin/config/reload, GET
// /admin/config).
json config_reload_json(const config_reload& r) {
  return {{"file", r.file},
          {"applied", r.applied},
          {"restart_required", r.restart_required},
          {"warnings", r.warnings},
          {"loaded_at", format_rfc3339_utc(r.loaded_ms)},
          {"reloads", r.reloads}};
}

// POST /admin/config/reload: the configuration file read again (app::reload_config). 200 with
// what was put in force and what waits for a restart; 422 naming the file and line when it does
// not load (nothing changes).
admin_response config_reload_post(const admin_context& ctx) {
  const config_reload r = ctx.reload_config();
  if (!r.ok)
    return fail(422, "invalid_config", "The configuration file did not load; the spend controls in force are unchanged: " + r.error);
  json out = config_reload_json(r);
  out["reloaded"] = true;
  admin_response res;
  res.body = text_of(out);
  return res;
}

// GET /admin/config: where the configuration came from, when its spend controls were last read,
// what the last reload that loaded changed and left for a restart (what
// tollgate_config_restart_pending counts), and the last attempt's error if it did not load.
admin_response config_get(const admin_context& ctx) {
  const config_reload st = ctx.config_status();
  json out = config_reload_json(st);
  out["last_error"] = st.error.empty() ? json(nullptr) : json(st.error);
  admin_response res;
  res.body = text_of(out);
  return res;
}

json billed_json(const billed_prices& b) {
  return {{"input", b.input}, {"cached_input", b.cached_input}, {"cache_write_5m", b.write_5m},
          {"cache_write_1h", b.write_1h}, {"output", b.output}};
}

// GET /admin/prices: the table in force, its entry names; ?model=: what a call of that model is
// billed at (the entry it resolves to, as a call's model is resolved, and its prices in USD per
// 1M tokens as billed: default cache-write prices filled in, each tier and the long-context
// tier); &at=: at a date's prices (the entry's scheduled changes), else now's.
admin_response prices_get(const admin_context& ctx, const std::map<std::string, std::string>& q) {
  for (const auto& [k, v] : q)
    if (k != "model" && k != "at")
      throw http_problem(400, "invalid_parameter", "Unknown query parameter " + quote_value(k, 40) + " (expected model, at).");
  const auto model_it = q.find("model");
  const auto at_it = q.find("at");
  if (model_it == q.end() || model_it->second.empty()) {
    if (at_it != q.end()) throw http_problem(400, "invalid_parameter", "at needs model");
    json out = {{"models", ctx.prices.size()}, {"entries", ctx.prices.names()}};
    if (ctx.price_status) {
      const price_reload st = ctx.price_status();
      out["loaded_at"] = format_rfc3339_utc(st.loaded_ms);
      out["reloads"] = st.reloads;
    }
    out["files"] = json::array();
    if (!ctx.cfg.prices_file.empty()) out["files"].push_back(ctx.cfg.prices_file);
    if (!ctx.cfg.litellm_prices_file.empty()) out["files"].push_back(ctx.cfg.litellm_prices_file);
    admin_response r;
    r.body = text_of(out);
    return r;
  }
  const std::string& model = model_it->second;
  std::int64_t at_ms = ctx.now_ms();
  if (at_it != q.end() && !at_it->second.empty()) {
    try {
      at_ms = parse_time_bound(at_it->second, range_end::from, calendar(ctx.cfg.timezone));
    } catch (const std::invalid_argument& e) {
      throw http_problem(400, "invalid_parameter", std::string("at: ") + e.what());
    }
  }
  const model_price* p = ctx.prices.resolve_at(model, at_ms);
  if (p == nullptr)
    return fail(404, "model_not_found",
                "No entry of the price table answers to " + quote_value(model, 80) + ": its calls are ledgered unpriced (cost 0).");
  json out = {{"model", model},
              {"entry", p->name},
              {"at", format_rfc3339_utc(at_ms)},
              {"usd_per_1m", billed_json(billed_prices_of(*p, service_tier::standard, false))}};
  out["long_context"] = p->long_context_threshold > 0
                            ? json{{"above_prompt_tokens", p->long_context_threshold},
                                   {"usd_per_1m", billed_json(billed_prices_of(*p, service_tier::standard, true))}}
                            : json(nullptr);
  json tiers = json::object();
  for (std::size_t t = 0; t < kServiceTiers; ++t)
    if (p->tiers[t]) tiers[std::string(to_string(static_cast<service_tier>(t)))] =
                         billed_json(billed_prices_of(*p, static_cast<service_tier>(t), false));
  out["tiers"] = std::move(tiers);
  out["web_search_usd_per_1k"] = p->web_search;
  out["file_search_usd_per_1k"] = p->file_search;
  if (p->per_minute > 0) out["usd_per_minute"] = p->per_minute;
  if (p->per_million_characters > 0) out["usd_per_1m_characters"] = p->per_million_characters;
  if (!p->per_image.empty()) out["images_priced"] = p->per_image.size();
  if (!p->per_second.empty()) out["video_seconds_priced"] = p->per_second.size();
  admin_response r;
  r.body = text_of(out);
  return r;
}

admin_response keys_list(const admin_context& ctx) {
  json out = json::array();
  // The configured keys as in force: a configuration reload may have added, removed or changed them.
  for (const auto& k : ctx.policy.configured_keys()) out.push_back(key_view(*k, "config"));
  key_store store(ctx.ledger_path);
  for (const auto& sk : store.list()) {
    json v = to_json(sk);
    v["source"] = "admin";
    out.push_back(std::move(v));
  }
  admin_response r;
  r.body = text_of(json{{"keys", out}});
  return r;
}

std::string string_field(const json& j, const char* field) {
  const auto& v = j.at(field);
  if (!v.is_string()) bad_field(field, "must be a string");
  return v.get<std::string>();
}

// rpm / tpm: a whole number from 0 (0 or absent: no limit).
std::int64_t limit_field(const json& limits, const char* field) {
  const std::string name = std::string("limits.") + field;
  if (!limits.contains(field) || limits.at(field).is_null()) return 0;
  const auto& v = limits.at(field);
  if (v.is_number_unsigned()) {
    if (v.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      bad_field(name, "is too large");
    return static_cast<std::int64_t>(v.get<std::uint64_t>());
  }
  if (v.is_number_integer()) {
    if (v.get<std::int64_t>() < 0) bad_field(name, "must be >= 0");
    return v.get<std::int64_t>();
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d < 0) bad_field(name, "must be >= 0");
    if (d != std::floor(d)) bad_field(name, "must be a whole number");
    if (d >= 9.2e18) bad_field(name, "is too large");
    return static_cast<std::int64_t>(d);
  }
  bad_field(name, "must be a number");
}

admin_response keys_create(const admin_context& ctx, const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
    // nlohmann's message says where ("at line 1, column 27") and why (a number out of range).
    throw http_problem(400, "invalid_json", std::string("body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw http_problem(400, "invalid_json", "body must be a JSON object");
  // A field this API does not know is refused, as inside budgets[]: `{"key": "..."}` would
  // otherwise look accepted while a generated key is returned.
  for (const auto& [field, v] : j.items())
    if (field != "name" && field != "team" && field != "tags" && field != "limits" && field != "budgets" &&
        field != "key" && field != "key_sha256")
      bad_field(quote_value(field, 40),
                "is not a field of a key (name, team, tags, limits, budgets, key, key_sha256)");
  client_key_config k;
  // As in the config file, the caller may bring the key (`key`, echoed back once) or only its
  // hash (`key_sha256`: the key never reaches tollgate); else one is generated.
  std::optional<std::string> own_key;
  bool own_hash = false;
  try {
    if (j.contains("key") && j.contains("key_sha256")) bad_field("key", "and key_sha256 exclude each other");
    if (j.contains("key")) {
      own_key = string_field(j, "key");
      if (own_key->size() < 8) bad_field("key", "must be at least 8 characters");
      k.sha256 = key_sha256(*own_key);
    }
    if (j.contains("key_sha256")) {
      const std::string digits = string_field(j, "key_sha256");
      if (digits.size() != 2 * k.sha256.size()) bad_field("key_sha256", "must be 64 hex digits");
      for (std::size_t i = 0; i < k.sha256.size(); ++i) {
        const int hi = hex(digits[2 * i]), lo = hex(digits[2 * i + 1]);
        if (hi < 0 || lo < 0) bad_field("key_sha256", "must be 64 hex digits");
        k.sha256[i] = static_cast<unsigned char>(hi * 16 + lo);
      }
      own_hash = true;
    }
    if (j.contains("name")) k.name = string_field(j, "name");
    if (j.contains("team") && !j["team"].is_null()) k.team = string_field(j, "team");
    if (j.contains("tags") && !j["tags"].is_null()) {
      const auto& t = j.at("tags");
      if (!t.is_array() || !std::all_of(t.begin(), t.end(), [](const json& x) { return x.is_string(); }))
        bad_field("tags", "must be a list of strings");
      k.tags = t.get<std::vector<std::string>>();
    }
    if (j.contains("limits") && !j["limits"].is_null()) {
      const auto& l = j.at("limits");
      if (!l.is_object()) bad_field("limits", "must be an object {\"rpm\": n, \"tpm\": n}");
      for (const auto& [field, v] : l.items())
        if (field != "rpm" && field != "tpm") bad_field("limits." + field.substr(0, 40), "is not a limit (rpm, tpm)");
      k.limits.rpm = limit_field(l, "rpm");
      k.limits.tpm = limit_field(l, "tpm");
    }
    if (j.contains("budgets")) k.budgets = budgets_from_json(j.at("budgets"), k.name);
    validate_client_key(k);
  } catch (const json::exception& e) {
    throw http_problem(400, "invalid_parameter", std::string("bad field type: ") + e.what());
  } catch (const std::invalid_argument& e) {
    throw http_problem(400, "invalid_parameter", e.what());
  }
  for (const auto& c : ctx.policy.configured_keys()) {
    if (c->name == k.name) throw http_problem(409, "key_exists", "a configured key is named '" + k.name + "'");
    if ((own_key || own_hash) && c->sha256 == k.sha256)
      throw http_problem(409, "key_exists", "that key is already configured (as '" + c->name + "')");
  }
  key_store store(ctx.ledger_path);
  std::string secret;
  try {
    if (own_key || own_hash) {
      store.insert(k, ctx.now_ms());
      if (own_key) secret = *own_key;
    } else {
      secret = store.create(k, ctx.now_ms());
      k.sha256 = key_sha256(secret);
    }
  } catch (const key_exists& e) {
    throw http_problem(409, "key_exists", e.what());
  }
  for (auto& b : k.budgets) b.scope = "key:" + k.name;
  ctx.policy.add_key(k);
  log_line(log_level::info, "client key created").str("name", k.name).str("team", k.team);
  if (ctx.hard_budget_added && std::any_of(k.budgets.begin(), k.budgets.end(), [](const budget_config& b) { return b.hard; }))
    ctx.hard_budget_added();
  json v = key_view(k, "admin");
  if (!own_hash) v["key"] = secret;  // shown once, never again
  admin_response r;
  r.status = 201;
  r.body = text_of(v);
  return r;
}

admin_response keys_revoke(const admin_context& ctx, std::string_view name) {
  for (const auto& c : ctx.policy.configured_keys())
    if (c->name == name)
      throw http_problem(409, "key_in_config", "key '" + std::string(name) +
                                                   "' is defined in the config file; remove it there, then reload "
                                                   "(SIGHUP or POST /admin/config/reload)");
  key_store store(ctx.ledger_path);
  switch (store.revoke(name, ctx.now_ms())) {
    case revoke_result::not_found: throw http_problem(404, "key_not_found", "no key named " + quote_value(name));
    case revoke_result::already_revoked:
    case revoke_result::revoked: break;
  }
  ctx.policy.remove_key(name);
  log_line(log_level::info, "client key revoked").str("name", name);
  admin_response r;
  r.body = text_of(json{{"name", name}, {"revoked", true}});
  return r;
}

}  // namespace

bool is_admin_path(std::string_view path) noexcept { return path == "/admin" || path.starts_with("/admin/"); }

admin_response handle_admin(const admin_context& ctx, const admin_request& req) {
  try {
    std::string_view target = req.target;
    std::string_view path = target.substr(0, target.find('?'));
    const std::string& token = ctx.admin_token ? *ctx.admin_token : ctx.cfg.policy.admin_token;
    if (token.empty())
      return fail(401, "admin_disabled", "The admin API is disabled: set admin_token (or TOLLGATE_ADMIN_TOKEN).");
    if (!token_ok(token, req.authorization))
      return fail(401, "invalid_admin_token", "Missing or wrong admin token (Authorization: Bearer <admin_token>).");
    // Only a caller with the token learns what is wrong with its query.
    auto query = parse_query(path.size() < target.size() ? target.substr(path.size() + 1) : std::string_view{});
    const bool get = req.method == "GET" || req.method == "HEAD";
    auto not_allowed = [](std::string allow) {
      auto r = fail(405, "method_not_allowed", "Method not allowed on this endpoint.");
      r.allow = std::move(allow);
      return r;
    };
    if (path == "/admin/spend") return get ? spend(ctx, query) : not_allowed("GET, HEAD");
    if (path == "/admin/whatif") {
      if (get) return whatif(ctx, std::move(query), nullptr);
      if (req.method == "POST") return whatif(ctx, std::move(query), &req.body);
      return not_allowed("GET, HEAD, POST");
    }
    if (path == "/admin/budgets") return get ? budgets(ctx, query) : not_allowed("GET, HEAD");
    if (path == "/admin/calls") return get ? calls(ctx, query) : not_allowed("GET, HEAD");
    if (path == "/admin/keys") {
      if (get) return keys_list(ctx);
      if (req.method == "POST") return keys_create(ctx, req.body);
      return not_allowed("GET, HEAD, POST");
    }
    if (path == "/admin/prices") return get ? prices_get(ctx, query) : not_allowed("GET, HEAD");
    if (path == "/admin/prices/reload" && ctx.reload_prices) {
      if (req.method != "POST") return not_allowed("POST");
      return prices_reload(ctx);
    }
    if (path == "/admin/config" && ctx.config_status) return get ? config_get(ctx) : not_allowed("GET, HEAD");
    if (path == "/admin/config/reload" && ctx.reload_config) {
      if (req.method != "POST") return not_allowed("POST");
      return config_reload_post(ctx);
    }
    if (path.starts_with("/admin/keys/")) {
      std::string name = url_decode(path.substr(12));
      if (req.method != "DELETE") return not_allowed("DELETE");
      if (std::any_of(name.begin(), name.end(), [](unsigned char c) { return c < 0x20 || c == 0x7f; }))
        return fail(404, "not_found", "No stored key has a name with a control character.");
      return keys_revoke(ctx, name);
    }
    return fail(404, "not_found", "Unknown admin endpoint.");
  } catch (const http_problem& p) {
    return fail(p.status, p.code, p.what());
  } catch (const std::exception& e) {
    log_line(log_level::error, "admin API error").str("target", req.target).str("error", e.what());
    return fail(500, "internal_error", e.what());
  }
}

}  // namespace tollgate
