// Input readers of `tollgate-forecast`: the series CSV, per-request logs (CSV or JSONL), the
// tollgate ledger (SQLite, opened read-only) and the fleet ledger (PostgreSQL). Each returns the
// data or a message for stderr.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "forecast/aggregate.hpp"
#include "forecast/series.hpp"

namespace tollgate::forecast::tool {

series_read load_series_file(const std::string& path, const std::string& column);

// What a request log said about one numeric field (prompt tokens, completion tokens, cost).
struct field_check {
  bool present = false;      // a column of the header, or a key of at least one line
  std::size_t empty = 0;     // records where it is an empty cell, null or absent: read as 0
  std::size_t bad_line = 0;  // first line (ledger: rowid) whose value is not a number in [0, limit] (0: none)
  std::string bad_text;      // that value, as written (shortened)
};

struct events_read {
  std::vector<request_event> events;
  std::size_t records = 0;  // records read (when streamed they are counted here, not kept)
  std::string error;  // empty on success
  std::string note;   // for stderr: how an ambiguous input was read (relative timestamps)
  // Request logs only (a ledger's columns are the proxy's own): checked by the caller against
  // the --value asked for, so a broken column nobody sums does not reject the file.
  field_check prompt, completion, cost;
};

// Largest prompt or completion tokens of one request, and USD of one request, read as
// plausible; larger ones are a unit or parsing error upstream of us.
inline constexpr double max_request_tokens = 1e12;
inline constexpr double max_request_cost_usd = 1e9;

// Per-request log: CSV with a header, or JSON Lines (one object per line; chosen by the .jsonl
// / .ndjson extension or a first character `{`). Recognised fields, case-insensitive:
// timestamp (timestamp, time, ts, created, start_ms, arrival_time), prompt tokens
// (prompt_tokens, input_tokens, input_length, contexttokens, "request tokens"), completion
// tokens (completion_tokens, output_tokens, output_length, generatedtokens, "response tokens"),
// model, cost_usd.
// `unit_ms` = milliseconds per numeric timestamp unit, or 0 to guess it for the whole file from
// its first numeric timestamp: above 1e11 epoch milliseconds, from 1e8 epoch seconds, below that
// relative to the trace's start: milliseconds with Mooncake's fields (hash_ids, input_length +
// output_length), else seconds (BurstGPT's raw trace), with a note saying which. A later
// timestamp of another magnitude is an error naming both lines (one unit per file).
// Each record is handed to `each` as it is read, and `events` stays empty: memory does not grow
// with the log (a record seen before an error has been handed on; the caller stops on the error).
events_read load_request_log(const std::string& path, double unit_ms,
                             const std::function<void(const request_event&)>& each);
// The same, collecting the records into `events`.
events_read load_request_log(const std::string& path, double unit_ms);

// The ledger's `calls` table (start_ms, prompt_tokens, completion_tokens, cost_usd, price_model).
// Rows whose start_ms is not a positive integer (a hand-edited or foreign table) are skipped,
// with a note: one would otherwise stretch the series back to 1970. The amounts are checked as a
// request log's are (bad_line is then the row's rowid). A ledger a writer holds locked is
// waited for (5 s), as the proxy's own readers do.
// Each row is handed to `each` as it is read, and `events` stays empty: a ledger may hold tens of
// millions of rows, which the caller folds into bins (event_bins) rather than holds.
// `filter` keeps only one model's, team's or client key's calls (columns `price_model`, `team`,
// `client_key_id`; empty: any) started in [from_ms, to_ms), selected by the query (the ledger's
// indexes on start_ms and on price_model or client_key_id with start_ms serve it), so the other
// rows are neither checked nor counted.
struct ledger_filter {
  std::string model;
  std::string team;
  std::string key;
  std::string instance;  // the fleet ledger's `instance` (load_fleet only)
  std::int64_t from_ms = std::numeric_limits<std::int64_t>::min();
  std::int64_t to_ms = std::numeric_limits<std::int64_t>::max();
};
events_read load_ledger(const std::string& path, const std::function<void(const request_event&)>& each,
                        const ledger_filter& filter = {});
// The same, collecting the rows into `events`.
events_read load_ledger(const std::string& path, const ledger_filter& filter = {});

// The fleet ledger: table `tollgate_calls` in PostgreSQL (ledger.postgres), every instance's
// calls, read as the SQLite ledger's `calls` (same columns, same filter, same checks; a bad
// amount's bad_line is the row's `id`). `url` is a libpq URI or conninfo (connect_timeout 10 s
// unless it says otherwise). The rows are streamed (libpq's single-row mode), never held.
// Messages never repeat the url (it may hold a password).
events_read load_fleet(const std::string& url, const std::function<void(const request_event&)>& each,
                       const ledger_filter& filter = {});

}  // namespace tollgate::forecast::tool
