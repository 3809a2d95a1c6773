// Finance reports read back from the SQLite ledger: spend grouped by local day, model, team and
// key; what-if re-pricing at another model's prices; per-minute spend for warm-starting budgets.
// The spend and what-if reports also read the fleet ledger in PostgreSQL (query_fleet_*).
// Synchronous, on a read-only connection of their own: for the admin thread, the `tollgate
// report` command and start-up, never for an I/O thread.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/calendar.hpp"
#include "core/pricing.hpp"

namespace tollgate {

class price_table;

// ---- Time parsing ------------------------------------------------------------------------------

// [from_ms, to_ms) in Unix milliseconds (UTC). The defaults mean "no bound".
struct time_range {
  std::int64_t from_ms = std::numeric_limits<std::int64_t>::min();
  std::int64_t to_ms = std::numeric_limits<std::int64_t>::max();
};

// Which end of a range a text names; decides what a bare date or month means.
enum class range_end : std::uint8_t { from, to };

// Parses one end of a time range. Accepted forms:
//   2026-11-01                  a local calendar day in `cal`'s zone. As `from` it is the day's
//                               local midnight; as `to` it is INCLUSIVE: the end of that local
//                               day (next local midnight), so from=2026-11-01&to=2026-11-30 is
//                               all of November, as a person reading it expects.
//   2026-11                     a local calendar month: its first instant as `from`, its end
//                               (the next month's first instant) as `to`.
//   2026-11-01T10:00:00Z        RFC 3339: 'T' or 't' or one space between date and time, 'Z'/'z'
//   2026-11-01T10:00:00.5+01:00 or a numeric offset, optional fraction of any length. An instant
//                               is used as is: `to` stays exclusive. Sub-millisecond fractions
//                               round up, which selects exactly the rows whose millisecond
//                               start_ms lies in [from, to).
// Throws std::invalid_argument with a message naming the value and the expected forms.
std::int64_t parse_time_bound(std::string_view text, range_end end, const calendar& cal);

// "2026-11" -> [local month start, next local month start). Throws std::invalid_argument.
time_range parse_month(std::string_view spec, const calendar& cal);

// Unix ms as RFC 3339 in UTC ("2026-10-31T23:00:00Z", ".123" only when needed).
std::string format_rfc3339_utc(std::int64_t ms);

// ---- Spend -----------------------------------------------------------------------------------

// Group columns. day: the local calendar date (YYYY-MM-DD) of the call's start in the query's
// timezone. model: the price-table entry that priced the call (price_model); for an unpriced
// call, the served model, else the requested model, so unknown models show under their own
// name (with unpriced_requests counting them) instead of disappearing. key: the client key's
// name (client_key_id). team: the key's team. Absent values (auth off, no team) are null in
// JSON and an empty field in CSV. tier: the service tier (service_tier). provider: the provider
// a relay named as having served the call (OpenRouter's), null for a reply that names none.
// user: the end user the request named (the `user` column: user, safety_identifier or
// metadata.user_id), null for calls that named none. instance: the fleet ledger's `instance`
// column (ledger.postgres.instance), for query_fleet_spend only.
enum class spend_group : std::uint8_t { day, model, team, key, tier, provider, instance, user };
std::string_view to_string(spend_group g) noexcept;
// "day,model" -> {day, model}, order kept. Throws std::invalid_argument on an unknown or
// repeated name, and on `instance` unless `fleet` (a ledger file is one instance's).
std::vector<spend_group> parse_group_by(std::string_view list, bool fleet = false);

struct spend_query {
  time_range range;                    // on start_ms
  std::vector<spend_group> group_by;   // output columns and sort order, as given
  std::string timezone = "UTC";        // IANA zone of the `day` column
};

// Sums over a set of calls. Every figure is a SQLite SUM() (see query_spend), never a sum of
// doubles made in C++.
struct spend_figures {
  std::int64_t requests = 0;
  std::int64_t unpriced_requests = 0;  // calls whose model had no price (cost 0, counted)
  std::int64_t prompt_tokens = 0;      // includes cached and cache-write tokens
  std::int64_t completion_tokens = 0;  // includes reasoning tokens
  std::int64_t cached_tokens = 0;
  std::int64_t cache_write_tokens = 0;
  std::int64_t reasoning_tokens = 0;
  double cost_usd = 0;
};

struct spend_row {
  std::vector<std::optional<std::string>> keys;  // one per query.group_by entry; nullopt: absent
  spend_figures figures;
};

struct spend_report {
  spend_query query;
  std::vector<spend_row> rows;  // groups with at least one call, sorted by the keys (null first)
  spend_figures total;          // all calls of the range
};

// Runs the spend query on the ledger file at `ledger_path` (read-only).
//
// Exactness: SQLite 3.40's SUM() adds doubles in the order it reads rows, so a sum depends on
// that order. The total is the plain range query
//   SELECT SUM(cost_usd) FROM calls WHERE start_ms >= :from AND start_ms < :to
// (which reads the start_ms index), so it is bit-identical to that query. With groups, one pass
// over the range in (start_ms, id) order adds each row to its group and to the total as SQLite's
// SUM adds (report.cpp, sql_real_sum), so a group equals the same query narrowed to the group
// (`AND price_model = 'x'`, one local day's bounds, ...) bit for bit, and the total equals the
// plain query. The total is never the sum of the groups, which may differ in the last bit.
// About 2 s per month of 3.5M calls, grouped or not. All queries of one report read one
// snapshot, so its rows and total agree.
// Throws std::invalid_argument for a bad timezone, std::runtime_error naming the file for a
// missing or unreadable ledger.
spend_report query_spend(const std::string& ledger_path, const spend_query& q);

// The same report over the fleet ledger in PostgreSQL (table tollgate_calls, which every
// instance's shipper fills; `url` as ledger.postgres.url takes it), or over one instance's rows
// of it. One query reads the range in (start_ms, ledger_uid, id) order, in one snapshot, and
// every figure is summed here as query_spend sums a group's, so a fleet of one instance reports
// exactly what `query_spend` reports on the ledger file that shipped its rows. Days are split by
// the calendar here too (PostgreSQL's zone database need not be this machine's). Throws
// std::invalid_argument for a bad timezone, std::runtime_error for a connection or query error
// (which never repeats the url: it may hold a password).
spend_report query_fleet_spend(const std::string& url, const spend_query& q,
                               const std::optional<std::string>& instance = std::nullopt);

// {"from": RFC 3339|null, "to": ..., "from_ms", "to_ms", "timezone", "group_by": [...],
//  "rows": [{<group>: value|null, ..., "requests", ..., "cost_usd"}], "total": {...}}.
// Amounts are unrounded (shortest round-trip).
nlohmann::json to_json(const spend_report& r);
// Header line, one line per group, then one total line. The first column, `row`, says which
// ("group" / "total"), so a group named "total" cannot be mistaken for the total. Amounts are
// shortest round-trip (std::to_chars), strings quoted as RFC 4180 says, absent values empty;
// lines end in "\n" (what Unix tools expect; spreadsheets and CSV libraries accept it).
std::string to_csv(const spend_report& r);

// JSON text of a report: like nlohmann's dump() (indent < 0: compact; else that many spaces
// per level; bytes that are not UTF-8 become U+FFFD), except that every amount is printed
// shortest round-trip (std::to_chars): nlohmann's Grisu2 sometimes prints 17 digits where 16
// read back the same double, and then JSON and CSV would show the same amount differently.
// Non-finite numbers print as null.
std::string json_text(const nlohmann::json& j, int indent = -1);

// ---- What-if -----------------------------------------------------------------------------------

// What would the period have cost: every call at one model (`model`), some models swapped for
// others (`swap`), and/or other prices (`prices`). A call's target is its swap entry, else
// `model`, else its own model; its price is the target's entry in `prices`, else the table's.
struct whatif_query {
  time_range range;
  std::string model{};  // price-table id (aliases and snapshot ids resolve); empty: no blanket swap
  // original model -> model its calls are re-priced at (both resolve as ids do; a key matches a
  // ledger model exactly or through the same price-table entry)
  std::map<std::string, std::string> swap{};
  // Price entries for this question only: replace the table's entry of that name (or alias), or
  // add a model the table lacks.
  std::vector<model_price> prices{};
};

struct whatif_row {
  std::optional<std::string> model;  // the original model (spend_group::model's rule)
  spend_figures actual;              // as query_spend grouped by model: exact ledger sums
  std::int64_t cache_write_1h_tokens = 0;
  double whatif_cost_usd = 0;        // the same tokens at the target's prices
  // The price entry the row was re-priced at; empty when it was not (nothing swapped it and its
  // own model has no price, or prices units the ledger does not split: audio or image tokens,
  // minutes, characters): its what-if cost is then its actual cost.
  std::optional<std::string> target;
};

struct whatif_report {
  std::string model;  // the blanket target's canonical price-table name; empty without one
  time_range range;
  std::vector<whatif_row> rows;  // sorted by original model
  spend_figures actual_total;    // exact ledger sums of the range
  std::int64_t cache_write_1h_tokens = 0;
  double whatif_cost_usd = 0;
};

// Re-prices each call's tokens (uncached prompt, cache reads, 5-minute and 1-hour cache writes,
// completion) at its target's prices with compute_cost()'s formula, its long-context tier
// decided per call, and without the upstream's price multiplier (list prices). Token counts are
// summed per (original model, tier) in SQL as integers, so the what-if cost is exact up to one
// multiplication per price. Throws std::invalid_argument when `q.model` or a swap target has no
// price (in `q.prices` or the table), or when the query asks for no change at all.
whatif_report query_whatif(const std::string& ledger_path, const whatif_query& q, const price_table& prices);
// The same question over the fleet ledger (all of it, or one instance's rows), as
// query_fleet_spend reads it.
whatif_report query_fleet_whatif(const std::string& url, const whatif_query& q, const price_table& prices,
                                 const std::optional<std::string>& instance = std::nullopt);

// {"model" (null without a blanket target), "from", "to", "from_ms", "to_ms", "rows": [{"model",
//  <token sums>, "actual_cost_usd", "whatif_cost_usd", "target"}], "total": {...}}.
nlohmann::json to_json(const whatif_report& r);
// CSV as for spend: row,model,<figures>,actual_cost_usd,cache_write_1h_tokens,whatif_cost_usd,target.
std::string to_csv(const whatif_report& r);

// ---- Calls -------------------------------------------------------------------------------------

// One page of the ledger's rows for GET /admin/calls: what one call cost, and why, without a
// shell on the machine that holds the file. Rows whose start_ms lies in `range` and that match
// every filter given, newest first (start_ms, then id, descending: the start_ms index serves the
// order, so a page costs its rows, not the ledger's). A row is there once the writer has
// committed it (ledger.flush_interval after the call ends).
// The row a page ended at: "<start_ms>:<id>" in a ledger file, "<start_ms>:<ledger_uid>:<id>" in
// the fleet ledger, whose ids are each instance ledger's own.
struct calls_cursor {
  std::int64_t start_ms = 0;
  std::string ledger_uid;  // the fleet ledger's pages only
  std::int64_t id = 0;
  bool operator==(const calls_cursor&) const = default;
};
struct calls_query {
  time_range range;
  // Exact matches by filter name (calls_filters()): request_id, upstream_request_id, key
  // (client_key_id), team, model (the requested, served or pricing model), provider, route, user.
  std::map<std::string, std::string, std::less<>> match;
  std::optional<int> status;
  // Ranges, bounds included: the expensive or slow calls (cost_usd in USD, latency_ms in ms).
  std::optional<double> min_cost_usd, max_cost_usd, min_latency_ms, max_latency_ms;
  // The page after the one that ended at this row (next_before of that page), else the newest.
  std::optional<calls_cursor> before;
  std::size_t limit = 100;
};
// {"calls": [row, ...], "next_before": "<start_ms>:<id>" or null}. Each row has every column of
// the ledger's `calls` table under its name (integers, reals, text or null, as stored) and
// `start`, start_ms as RFC 3339 UTC. Throws std::runtime_error naming the file.
nlohmann::json query_calls(const std::string& ledger_path, const calls_query& q);
// The same page as CSV: a header of the table's columns in their order and `start`, then one line
// per row (integers and reals as stored, reals in their shortest round-trip form; NULL is an
// empty field; text quoted when it holds a comma, quote or line break). `next_before` is set to
// the next page's cursor, "" when this page is the last.
std::string query_calls_csv(const std::string& ledger_path, const calls_query& q, std::string& next_before);
// The same pages of the fleet ledger (the PostgreSQL table of ledger.postgres; all instances' rows,
// or `instance`'s), newest first by (start_ms, ledger_uid, id). Each row has every column of the
// fleet table (instance and ledger_uid first, then the ledger's) and `start`; next_before is
// "<start_ms>:<ledger_uid>:<id>". Throws std::runtime_error ("PostgreSQL: ...", never the url)
// when the database cannot be reached or read.
nlohmann::json query_fleet_calls(const std::string& url, const calls_query& q, const std::optional<std::string>& instance);
std::string query_fleet_calls_csv(const std::string& url, const calls_query& q, const std::optional<std::string>& instance,
                                  std::string& next_before);
// The names calls_query::match takes, in order; another throws std::invalid_argument.
const std::vector<std::string_view>& calls_filters();
// A page's next_before -> the cursor: "<start_ms>:<id>", or with `fleet` "<start_ms>:<ledger_uid>:<id>";
// std::invalid_argument otherwise.
calls_cursor parse_calls_cursor(std::string_view text, bool fleet = false);

// ---- Warm start --------------------------------------------------------------------------------

// Spend of one (key, team, price model) within one UTC minute (or second, see spend_since).
struct spend_sample {
  std::string client_key_id;  // "" when none
  std::string team;
  std::string price_model;    // "" when unpriced
  double cost_usd = 0;        // SQLite SUM of the minute's calls
  std::int64_t ts_ms = 0;     // start_ms of the minute's last costed call: inside the same minute, so in
                              // the same calendar period as every call it sums (zone offsets are
                              // whole minutes), and never older than any of them
  std::string user;           // the end user, when asked for by_user ("" none)
};

// Calls with start_ms >= since_ms and a non-zero cost, summed per minute and (key, team, price
// model), oldest first: the rows budgets and spend guards are seeded from at boot. From
// fine_since_ms on they are summed per second instead: a spend guard's window (a minute, say)
// must not see a minute's spend dated at its last call. A missing ledger file yields nothing
// (first start). Rows at or after until_ms (dated in the future: a clock set wrong, a hand
// edit) are left out: one would move every period's window to its date and hide today's spend.
// Throws std::runtime_error naming the file otherwise.
std::vector<spend_sample> spend_since(const std::string& ledger_path, std::int64_t since_ms,
                                      std::int64_t fine_since_ms = std::numeric_limits<std::int64_t>::max(),
                                      std::int64_t until_ms = std::numeric_limits<std::int64_t>::max());
// The same samples handed to `fn` as they are made, each bucket's in order of its groups' last
// calls; by_user sums per (key, team, price model, end user) instead (budgets scoped by end user:
// a sample per user and minute, too many to hold for a month of a busy app).
void for_each_spend_sample(const std::string& ledger_path, std::int64_t since_ms, std::int64_t fine_since_ms,
                           std::int64_t until_ms, bool by_user, const std::function<void(spend_sample&&)>& fn);

// One call of a client key (or, with_users, of an end user) that went upstream (charged to the
// key's and the user's rate limits).
struct key_call {
  std::string client_key_id;  // "" none
  std::int64_t start_ms = 0;
  std::int64_t tokens = 0;  // total_tokens: the TPM charge once a call is settled
  std::string user;         // with_users: the end user ("" none)
};

// Calls with a client key (with_users: or an end user) and start_ms in [since_ms, until_ms) that
// were admitted and went upstream (no error_kind, an upstream_* one or client_aborted; not
// tollgate's own refusals), oldest first: the rate limits' buckets are replayed from them at
// boot. A missing ledger file yields nothing. Throws std::runtime_error naming the file otherwise.
std::vector<key_call> key_calls_since(const std::string& ledger_path, std::int64_t since_ms, std::int64_t until_ms,
                                      bool with_users = false);

// Calls priced at the cost their upstream stated for a model the price table lacks (priced = 1,
// price_model NULL, usage from the upstream) with start_ms in [since_ms, until_ms), oldest first,
// each passed to `fn` (so a long window holds no list in memory): upstream, whether the call was a
// stream, requested model, prompt tokens not read from a cache, completion tokens, cost, and the
// provider the relay named ("" for none, and for rows of ledgers before schema 5).
// stated_rates is warm-started from them. A missing ledger file yields nothing; returns the rows
// read. Throws std::runtime_error naming the file otherwise.
struct stated_cost_row {
  std::string_view upstream;
  bool stream = false;
  std::string_view model;
  std::int64_t uncached_prompt = 0, completion = 0;
  double usd = 0;
  std::string_view provider;
};
std::size_t for_each_stated_cost(const std::string& ledger_path, std::int64_t since_ms, std::int64_t until_ms,
                                 const std::function<void(const stated_cost_row&)>& fn);

}  // namespace tollgate
