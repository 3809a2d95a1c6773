// File readers for `tollgate-forecast`: series CSV, request logs (CSV/JSONL), the SQLite ledger
// and the fleet ledger in PostgreSQL. Only the tool links SQLite, libpq and nlohmann-json; the
// library stays pure.
#include "forecast/tool/inputs.hpp"

#include <libpq-fe.h>
#include <sqlite3.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>
#include <utility>

#include "ledger/postgres.hpp"

namespace tollgate::forecast::tool {
namespace {

enum class field { none, timestamp, prompt, completion, model, cost };

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

field classify(std::string_view name) {
  const std::string n = lower(name);
  for (const char* k : {"timestamp", "time", "ts", "created", "start_ms", "arrival_time"})
    if (n == k) return field::timestamp;
  for (const char* k : {"prompt_tokens", "input_tokens", "input_length", "contexttokens", "request tokens"})
    if (n == k) return field::prompt;
  for (const char* k : {"completion_tokens", "output_tokens", "output_length", "generatedtokens", "response tokens"})
    if (n == k) return field::completion;
  if (n == "model" || n == "price_model") return field::model;
  if (n == "cost_usd" || n == "cost") return field::cost;
  return field::none;
}

bool blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c) != 0; });
}

// One amount (tokens or USD) of a request: a number in [0, limit], else 0 and the first such
// line is kept for the caller's error. Empty counts as absent.
double amount(std::string_view cell, field_check& c, std::size_t line, double limit) {
  cell = trim_blanks(cell);  // split_csv trimmed CSV cells; JSON strings may carry spaces
  if (cell.empty()) {
    ++c.empty;
    return 0.0;
  }
  double v = 0.0;
  const auto [p, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), v);
  if (ec == std::errc() && p == cell.data() + cell.size() && std::isfinite(v) && v >= 0.0 && v <= limit) return v;
  if (c.bad_line == 0) {
    c.bad_line = line;
    c.bad_text = printable(cell);
  }
  return 0.0;
}

double amount(const nlohmann::json& v, field_check& c, std::size_t line, double limit) {
  if (v.is_null()) {
    ++c.empty;
    return 0.0;
  }
  if (v.is_string()) return amount(std::string_view(v.get_ref<const std::string&>()), c, line, limit);
  if (v.is_number()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d >= 0.0 && d <= limit) return d;
  }
  if (c.bad_line == 0) {
    c.bad_line = line;
    c.bad_text = printable(v.dump());
  }
  return 0.0;
}

// Numeric timestamps without --time-unit: the first one read decides the clock of the whole
// file by its magnitude (above 1e11 epoch milliseconds, from 1e8 epoch seconds, below that time
// since the trace's start), and a later one of another magnitude is an error naming both lines.
// A guess per value could not tell relative seconds from relative milliseconds (BurstGPT's raw
// trace counts seconds since its start, Mooncake's milliseconds, both up to a few million):
// relative ones are milliseconds when the rows carry Mooncake's fields, else seconds, with a
// note. One clock per file lets each record be handed on as it is read, never held.
struct timestamp_reader {
  enum class clock { unknown, relative, epoch_s, epoch_ms };  // ordered: see mismatch()
  std::string path;
  bool unit_given = false;         // --time-unit: every number in unit_ms, no guess
  double unit_ms = 0.0;            // given, or set by the first numeric timestamp
  clock kind = clock::unknown;     // the file's clock, from its first numeric timestamp
  double first = 0.0;              // that timestamp and its line, for the error
  std::size_t first_line = 0;
  double largest = 0.0;            // largest magnitude read, for the note
  std::size_t line = 0;            // the line being read
  bool mooncake_fields = false;    // hash_ids, or input_length with output_length, were seen
  std::string error;               // a second clock in the file (read() then returns false)

  static clock clock_of(double v) {
    const double m = std::fabs(v);
    return m > 1e11 ? clock::epoch_ms : m >= 1e8 ? clock::epoch_s : clock::relative;  // 1e11 s: year 5138
  }
  static const char* name(clock c) {
    return c == clock::epoch_ms ? "epoch milliseconds" : c == clock::epoch_s ? "epoch seconds" : "time since the trace start";
  }

  // Reads one cell into e.timestamp_ms; false when unreadable or of a second clock (error).
  bool read(std::string_view cell, request_event& e) {
    if (unit_given) {
      const auto ms = parse_timestamp_ms(cell, unit_ms);
      if (ms) e.timestamp_ms = *ms;
      return ms.has_value();
    }
    if (const auto v = parse_timestamp_number(cell)) {
      if (std::fabs(*v) > 1e15) return false;
      const clock c = clock_of(*v);
      if (kind == clock::unknown) {
        kind = c;
        first = *v;
        first_line = line;
        unit_ms = c == clock::epoch_ms ? 1.0 : c == clock::epoch_s ? 1000.0 : mooncake_fields ? 1.0 : 1000.0;
      } else if (c != kind) {
        mismatch(*v, c);
        return false;
      }
      largest = std::max(largest, std::fabs(*v));
      e.timestamp_ms = static_cast<std::int64_t>(std::floor(*v * unit_ms));
      return true;
    }
    const auto ms = parse_timestamp_ms(cell);  // a date: no unit to guess
    if (ms) e.timestamp_ms = *ms;
    return ms.has_value();
  }

  // Two clocks in one file: epoch seconds appended to a log of epoch milliseconds (a second
  // source), a stray 0 in an epoch log, relative milliseconds past 1e8 (27 hours). Read in one
  // unit they would stretch the series back to 1970. The line with the smaller clock is named
  // first (the seconds among milliseconds, the relative one among epoch times).
  void mismatch(double v, clock c) {
    const bool current_first = c < kind;
    const auto [la, va, ca] = current_first ? std::tuple{line, v, c} : std::tuple{first_line, first, kind};
    const auto [lb, vb, cb] = current_first ? std::tuple{first_line, first, kind} : std::tuple{line, v, c};
    error = path + ":" + std::to_string(la) + ": timestamp " + std::to_string(static_cast<long long>(va)) + " reads as " +
            name(ca) + ", but line " + std::to_string(lb) + "'s " + std::to_string(static_cast<long long>(vb)) +
            " reads as " + name(cb) + ": one unit per file (or give --time-unit)";
  }

  // After the file: how relative timestamps were read, for stderr ("" otherwise).
  std::string note() const {
    if (kind != clock::relative) return "";
    const bool ms = unit_ms == 1.0;
    return path + ": timestamps are relative (the largest is " + std::to_string(static_cast<long long>(largest)) +
           "); read as " +
           (ms ? "milliseconds since the trace start (Mooncake's fields); --time-unit s reads them as seconds"
               : "seconds since the trace start; --time-unit ms reads them as milliseconds");
  }
};

// The query of a ledger's rows (SQLite's `calls`, PostgreSQL's `tollgate_calls`: the same
// columns) under a filter: the text conditions' values in `texts`, then the bounds, in that
// order; `placeholder(n)` writes the n-th parameter (1-based) as the database spells it.
struct selection {
  std::string sql;
  std::vector<const std::string*> texts;
  bool from = false, to = false;
  selection(const ledger_filter& f, const char* table, const char* id, const std::function<std::string(int)>& placeholder) {
    sql = std::string("SELECT ") + id + ", start_ms, prompt_tokens, completion_tokens, cost_usd, COALESCE(price_model, '') FROM " +
          table;
    int n = 0;
    auto where = [&](const char* column) {
      sql += n == 0 ? " WHERE " : " AND ";
      sql += column + placeholder(++n);
    };
    for (const auto& [column, value] : {std::pair{"price_model = ", &f.model}, std::pair{"team = ", &f.team},
                                        std::pair{"client_key_id = ", &f.key}, std::pair{"instance = ", &f.instance}})
      if (!value->empty()) {
        where(column);
        texts.push_back(value);
      }
    from = f.from_ms != std::numeric_limits<std::int64_t>::min();
    to = f.to_ms != std::numeric_limits<std::int64_t>::max();
    if (from) where("start_ms >= ");
    if (to) where("start_ms < ");
  }
};

bool ends_with(const std::string& s, const char* suffix) {
  const std::string_view sv(suffix);
  return s.size() >= sv.size() && s.compare(s.size() - sv.size(), sv.size(), sv) == 0;
}

}  // namespace

series_read load_series_file(const std::string& path, const std::string& column) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return {std::nullopt, path + ": is a directory"};
  std::ifstream in(path);
  if (!in) return {std::nullopt, path + ": cannot open"};
  series_read r = read_series_csv(in, column);
  if (!r.data) r.error = path + ": " + r.error;
  return r;
}

events_read load_request_log(const std::string& path, double unit_ms) {
  std::vector<request_event> events;
  events_read out = load_request_log(path, unit_ms, [&events](const request_event& e) { events.push_back(e); });
  out.events = std::move(events);
  return out;
}

events_read load_request_log(const std::string& path, double unit_ms,
                             const std::function<void(const request_event&)>& each) {
  events_read out;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    out.error = path + ": is a directory";
    return out;
  }
  std::ifstream in(path);
  if (!in) {
    out.error = path + ": cannot open";
    return out;
  }
  skip_bom(in);
  if (in.peek() == '[') {
    out.error = path + ": a JSON array; give JSON Lines (one object per line) or a CSV with a header";
    return out;
  }
  std::string line;
  const bool jsonl = ends_with(path, ".jsonl") || ends_with(path, ".ndjson") || in.peek() == '{';
  std::size_t line_no = 0;
  timestamp_reader ts;
  ts.path = path;
  ts.unit_given = unit_ms > 0.0;
  ts.unit_ms = unit_ms;
  // The record handed on, one per line: its model string keeps its buffer from line to line.
  request_event e;
  auto clear = [](request_event& r) {
    r.timestamp_ms = 0;
    r.prompt_tokens = r.completion_tokens = r.cost_usd = 0.0;
    r.model.clear();
  };
  auto hand_on = [&] {
    ++out.records;
    each(e);
  };
  if (jsonl) {
    while (std::getline(in, line)) {
      ++line_no;
      if (blank(line)) continue;
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object()) {
        out.error = path + ":" + std::to_string(line_no) + ": not a JSON object";
        return out;
      }
      clear(e);
      bool has_ts = false, has_prompt = false, has_completion = false, has_cost = false;
      ts.line = line_no;
      if (j.contains("hash_ids") || (j.contains("input_length") && j.contains("output_length"))) ts.mooncake_fields = true;
      for (const auto& [key, v] : j.items()) {
        switch (classify(key)) {
          case field::timestamp: {
            const std::string cell = v.is_string() ? v.get<std::string>() : v.dump();
            has_ts = ts.read(cell, e) || has_ts;
            break;
          }
          case field::prompt:
            e.prompt_tokens = amount(v, out.prompt, line_no, max_request_tokens);
            has_prompt = out.prompt.present = true;
            break;
          case field::completion:
            e.completion_tokens = amount(v, out.completion, line_no, max_request_tokens);
            has_completion = out.completion.present = true;
            break;
          case field::cost:
            e.cost_usd = amount(v, out.cost, line_no, max_request_cost_usd);
            has_cost = out.cost.present = true;
            break;
          case field::model:
            if (v.is_string()) e.model = v.get_ref<const std::string&>();
            else e.model.clear();
            break;
          case field::none: break;
        }
      }
      if (!ts.error.empty() || !has_ts) {
        out.error = !ts.error.empty() ? ts.error : path + ":" + std::to_string(line_no) + ": no readable timestamp";
        return out;
      }
      out.prompt.empty += has_prompt ? 0 : 1;
      out.completion.empty += has_completion ? 0 : 1;
      out.cost.empty += has_cost ? 0 : 1;
      hand_on();
    }
  } else {
    if (!std::getline(in, line)) {
      out.error = path + ": empty file";
      return out;
    }
    line_no = 1;
    std::vector<field> cols;
    bool input_length = false, output_length = false;
    for (const auto& name : split_csv(line)) {
      cols.push_back(classify(trim_blanks(name)));
      out.prompt.present = out.prompt.present || cols.back() == field::prompt;
      out.completion.present = out.completion.present || cols.back() == field::completion;
      out.cost.present = out.cost.present || cols.back() == field::cost;
      const std::string n = lower(trim_blanks(name));
      input_length = input_length || n == "input_length";
      output_length = output_length || n == "output_length";
      ts.mooncake_fields = ts.mooncake_fields || n == "hash_ids";
    }
    ts.mooncake_fields = ts.mooncake_fields || (input_length && output_length);
    if (std::find(cols.begin(), cols.end(), field::timestamp) == cols.end()) {
      out.error = path + ":1: no timestamp column in the header";
      return out;
    }
    while (std::getline(in, line)) {
      ++line_no;
      if (blank(trim_blanks(line))) continue;
      const auto cells = split_csv(line);
      clear(e);
      bool has_ts = false;
      ts.line = line_no;
      for (std::size_t i = 0; i < cells.size() && i < cols.size(); ++i) {
        switch (cols[i]) {
          case field::timestamp:
            has_ts = ts.read(cells[i], e) || has_ts;
            break;
          case field::prompt: e.prompt_tokens = amount(std::string_view(cells[i]), out.prompt, line_no, max_request_tokens); break;
          case field::completion:
            e.completion_tokens = amount(std::string_view(cells[i]), out.completion, line_no, max_request_tokens);
            break;
          case field::cost: e.cost_usd = amount(std::string_view(cells[i]), out.cost, line_no, max_request_cost_usd); break;
          case field::model: e.model.assign(trim_blanks(cells[i])); break;
          case field::none: break;
        }
      }
      // A short row (fewer cells than the header) lacks the fields past its end.
      for (std::size_t i = cells.size(); i < cols.size(); ++i) {
        if (cols[i] == field::prompt) ++out.prompt.empty;
        if (cols[i] == field::completion) ++out.completion.empty;
        if (cols[i] == field::cost) ++out.cost.empty;
      }
      if (!ts.error.empty() || !has_ts) {
        out.error = !ts.error.empty() ? ts.error : path + ":" + std::to_string(line_no) + ": unreadable timestamp";
        return out;
      }
      hand_on();
    }
  }
  out.note = ts.note();
  return out;
}

events_read load_ledger(const std::string& path, const ledger_filter& filter) {
  std::vector<request_event> events;
  events_read out = load_ledger(path, [&events](const request_event& e) { events.push_back(e); }, filter);
  out.events = std::move(events);
  return out;
}

events_read load_ledger(const std::string& path, const std::function<void(const request_event&)>& each,
                        const ledger_filter& filter) {
  events_read out;
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    out.error = path + ": " + (db ? sqlite3_errmsg(db) : "cannot open");
    sqlite3_close(db);
    return out;
  }
  sqlite3_busy_timeout(db, 5000);
  sqlite3_stmt* st = nullptr;
  const selection sel(filter, "calls", "rowid", [](int) { return std::string("?"); });
  const std::string& sql = sel.sql;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
    // Only a missing table or column says "not a ledger"; a lock or an unreadable file says so itself.
    const bool schema = sqlite3_errcode(db) == SQLITE_ERROR;
    out.error = path + ": " + sqlite3_errmsg(db) + (schema ? " (not a tollgate ledger?)" : "");
    sqlite3_close(db);
    return out;
  }
  int n = 0;
  for (const std::string* p : sel.texts) sqlite3_bind_text(st, ++n, p->data(), static_cast<int>(p->size()), SQLITE_STATIC);
  if (sel.from) sqlite3_bind_int64(st, ++n, filter.from_ms);
  if (sel.to) sqlite3_bind_int64(st, ++n, filter.to_ms);
  out.prompt.present = out.completion.present = out.cost.present = true;
  // One amount of a row, checked as a request log's: NULL reads as 0 (counted), text must be a
  // number, and the value must lie in [0, limit].
  auto read_amount = [&](int col, field_check& c, std::size_t rowid, double limit) {
    switch (sqlite3_column_type(st, col)) {
      case SQLITE_NULL: ++c.empty; return 0.0;
      case SQLITE_TEXT:
        return amount(std::string_view(reinterpret_cast<const char*>(sqlite3_column_text(st, col)),
                                       static_cast<std::size_t>(sqlite3_column_bytes(st, col))),
                      c, rowid, limit);
      case SQLITE_INTEGER:
      case SQLITE_FLOAT: {
        const double v = sqlite3_column_double(st, col);
        if (std::isfinite(v) && v >= 0.0 && v <= limit) return v;
        if (c.bad_line == 0) {
          c.bad_line = rowid;
          c.bad_text = printable(nlohmann::json(v).dump());
        }
        return 0.0;
      }
      default:
        if (c.bad_line == 0) {
          c.bad_line = rowid;
          c.bad_text = "(blob)";
        }
        return 0.0;
    }
  };
  int rc = SQLITE_OK;
  std::int64_t skipped = 0;
  request_event e;  // one record, reused: its model string keeps its buffer from row to row
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (sqlite3_column_type(st, 1) != SQLITE_INTEGER || sqlite3_column_int64(st, 1) <= 0) {
      ++skipped;
      continue;
    }
    const auto rowid = static_cast<std::size_t>(std::max<sqlite3_int64>(sqlite3_column_int64(st, 0), 1));
    e.timestamp_ms = sqlite3_column_int64(st, 1);
    e.prompt_tokens = read_amount(2, out.prompt, rowid, max_request_tokens);
    e.completion_tokens = read_amount(3, out.completion, rowid, max_request_tokens);
    e.cost_usd = read_amount(4, out.cost, rowid, max_request_cost_usd);
    const auto* m = sqlite3_column_text(st, 5);  // COALESCE: never NULL but on out of memory
    e.model.assign(m ? reinterpret_cast<const char*>(m) : "",
                   m ? static_cast<std::size_t>(sqlite3_column_bytes(st, 5)) : 0);
    ++out.records;
    each(e);
  }
  if (rc != SQLITE_DONE) out.error = path + ": " + sqlite3_errmsg(db);
  sqlite3_finalize(st);
  if (skipped > 0)
    out.note = path + ": " + std::to_string(skipped) + " rows without a positive integer start_ms are left out";
  sqlite3_close(db);
  return out;
}

events_read load_fleet(const std::string& url, const std::function<void(const request_event&)>& each,
                       const ledger_filter& filter) {
  events_read out;
  std::string err;
  PGconn* c = tollgate::connect_postgres(url, std::chrono::seconds(10), "tollgate-forecast", "60000", err);
  if (c == nullptr) {
    out.error = "PostgreSQL: " + err;
    return out;
  }
  const selection sel(filter, "tollgate_calls", "id", [](int n) { return "$" + std::to_string(n); });
  std::vector<std::string> bounds;
  std::vector<const char*> params;
  for (const std::string* t : sel.texts) params.push_back(t->c_str());
  if (sel.from) bounds.push_back(std::to_string(filter.from_ms));
  if (sel.to) bounds.push_back(std::to_string(filter.to_ms));
  for (const auto& b : bounds) params.push_back(b.c_str());
  if (!PQsendQueryParams(c, sel.sql.c_str(), static_cast<int>(params.size()), nullptr, params.data(), nullptr, nullptr, 0) ||
      !PQsetSingleRowMode(c)) {
    out.error = "PostgreSQL: " + tollgate::trim_message(PQerrorMessage(c));
    PQfinish(c);
    return out;
  }
  out.prompt.present = out.completion.present = out.cost.present = true;
  auto read_amount = [&](PGresult* r, int col, field_check& ch, std::size_t id, double limit) {
    if (PQgetisnull(r, 0, col)) {
      ++ch.empty;
      return 0.0;
    }
    return amount(std::string_view(PQgetvalue(r, 0, col), static_cast<std::size_t>(PQgetlength(r, 0, col))), ch, id, limit);
  };
  std::int64_t skipped = 0;
  request_event e;  // one record, reused: its model string keeps its buffer from row to row
  while (PGresult* r = PQgetResult(c)) {
    const ExecStatusType status = PQresultStatus(r);
    if (status == PGRES_SINGLE_TUPLE) {
      std::int64_t start_ms = 0;
      const char* ts = PQgetvalue(r, 0, 1);
      const auto [p, ec] = std::from_chars(ts, ts + PQgetlength(r, 0, 1), start_ms);
      if (PQgetisnull(r, 0, 1) || ec != std::errc() || start_ms <= 0) {
        ++skipped;
      } else {
        std::size_t id = 1;
        std::from_chars(PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 0) + PQgetlength(r, 0, 0), id);
        e.timestamp_ms = start_ms;
        e.prompt_tokens = read_amount(r, 2, out.prompt, id, max_request_tokens);
        e.completion_tokens = read_amount(r, 3, out.completion, id, max_request_tokens);
        e.cost_usd = read_amount(r, 4, out.cost, id, max_request_cost_usd);
        e.model.assign(PQgetvalue(r, 0, 5), static_cast<std::size_t>(PQgetlength(r, 0, 5)));
        ++out.records;
        each(e);
      }
    } else if (status != PGRES_TUPLES_OK && out.error.empty()) {
      out.error = tollgate::fleet_query_error(r);
    }
    PQclear(r);
  }
  PQfinish(c);
  if (skipped > 0)
    out.note = "tollgate_calls: " + std::to_string(skipped) + " rows without a positive start_ms are left out";
  return out;
}

}  // namespace tollgate::forecast::tool
