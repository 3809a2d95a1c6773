// Finance reports from the ledger (report.hpp): time-range parsing, the spend query grouped by
// local day/model/team/key, what-if re-pricing and the per-minute spend budgets warm-start from.
// Called by the admin API, `tollgate report` and start-up, each call on its own read-only connection.
#include "ledger/report.hpp"

#include <libpq-fe.h>
#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <variant>

#include "core/error.hpp"
#include "core/ledger_indexes.hpp"
#include "core/pricing.hpp"
#include "core/request_id.hpp"
#include "core/string_hash.hpp"
#include "ledger/postgres.hpp"

namespace tollgate {

namespace {

constexpr std::int64_t kMinuteMs = 60'000;
constexpr const char* kTimeForms =
    "expected YYYY-MM-DD, YYYY-MM or an RFC 3339 time such as 2026-11-01T10:00:00Z or "
    "2026-11-01T10:00:00+01:00";

std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept {
  const std::int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

// ---- Parsing ---------------------------------------------------------------------------------

struct civil {
  int year = 0;
  unsigned month = 0, day = 0;
};

civil add_days(civil c, int n) {
  const std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::year{c.year} / std::chrono::month{c.month} /
                                                              std::chrono::day{c.day}} +
                                        std::chrono::days{n}};
  return {static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day())};
}

civil next_month(civil c) { return c.month == 12 ? civil{c.year + 1, 1, 1} : civil{c.year, c.month + 1, 1}; }

// A left-to-right reader over one time text; every failure names the value and the forms.
class time_reader {
 public:
  time_reader(std::string_view text, std::string_view what) : s_(text), what_(what) {}

  [[noreturn]] void fail(const std::string& why) const {
    throw std::invalid_argument(std::string(what_) + ": " + quote_value(s_) + " is not a valid time: " + why +
                                "; " + kTimeForms);
  }
  bool done() const noexcept { return i_ == s_.size(); }
  char peek() const noexcept { return done() ? '\0' : s_[i_]; }
  bool accept(char c) noexcept {
    if (peek() != c) return false;
    ++i_;
    return true;
  }
  void expect(char c, const char* where) {
    if (!accept(c)) fail(std::string("expected '") + c + "' " + where);
  }
  // Exactly n digits.
  int digits(int n, const char* name) {
    int v = 0;
    for (int k = 0; k < n; ++k) {
      const char c = peek();
      if (c < '0' || c > '9') fail(std::string(name) + " must have " + std::to_string(n) + " digits");
      v = v * 10 + (c - '0');
      ++i_;
    }
    return v;
  }
  int ranged(int n, const char* name, int lo, int hi) {
    const int v = digits(n, name);
    if (v < lo || v > hi) fail(std::string(name) + " must be " + std::to_string(lo) + "-" + std::to_string(hi));
    return v;
  }

 private:
  std::string_view s_;
  std::string_view what_;
  std::size_t i_ = 0;
};

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::int64_t local_day_ms(const calendar& cal, civil c) { return cal.day_start(c.year, c.month, c.day) * 1000; }

// ---- SQLite ----------------------------------------------------------------------------------

std::runtime_error ledger_error(const std::string& path, const std::string& what) {
  return std::runtime_error("ledger " + path + ": " + what);
}

// A read-only connection to an existing ledger file.
class reader {
 public:
  explicit reader(const std::string& path) : path_(path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) throw ledger_error(path, "no such file");
    const int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
      const std::string why = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
      sqlite3_close(db_);
      throw ledger_error(path, why);
    }
    // The writer thread holds the write lock only while committing a batch; WAL readers do not
    // wait for it, but a checkpoint or recovery can briefly need a shared lock.
    sqlite3_busy_timeout(db_, 5000);
  }
  ~reader() {
    // Ends the read transaction of consistent(), if any: nothing was written.
    if (db_ != nullptr && !sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(db_);
  }
  reader(const reader&) = delete;
  reader& operator=(const reader&) = delete;

  // Every later query of this connection reads the same snapshot (one WAL read transaction), so
  // a report's totals and groups agree while the writer keeps committing.
  void consistent() {
    if (sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK) fail();
  }
  sqlite3* db() const noexcept { return db_; }
  const std::string& path() const noexcept { return path_; }
  [[noreturn]] void fail() const {
    std::string why = sqlite3_errmsg(db_);
    if (why.rfind("no such table", 0) == 0) why += " (not a tollgate ledger?)";
    // A column a later schema added (service_tier, provider) in a file no newer tollgate opened.
    if (why.rfind("no such column", 0) == 0) why += " (a ledger from an older tollgate: start the proxy on it once to migrate it)";
    throw ledger_error(path_, why);
  }

 private:
  std::string path_;
  sqlite3* db_ = nullptr;
};

class statement {
 public:
  statement(const reader& r, const std::string& sql) : r_(r) {
    if (sqlite3_prepare_v2(r.db(), sql.c_str(), static_cast<int>(sql.size()), &st_, nullptr) != SQLITE_OK) r.fail();
  }
  ~statement() { sqlite3_finalize(st_); }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;

  // Rebinds for another run.
  void bind(int i, std::int64_t v) {
    rebinding();
    sqlite3_bind_int64(st_, i, v);
  }
  void bind_real(int i, double v) {
    rebinding();
    sqlite3_bind_double(st_, i, v);
  }
  void bind_text(int i, const std::string& v) {
    rebinding();
    sqlite3_bind_text64(st_, i, v.data(), v.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  }
  // true: a row is ready; false: done. Throws on a SQLite error.
  bool step() {
    bound_ = false;
    const int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    r_.fail();
  }
  std::int64_t i64(int c) const noexcept { return sqlite3_column_int64(st_, c); }
  double real(int c) const noexcept { return sqlite3_column_double(st_, c); }
  bool is_null(int c) const noexcept { return sqlite3_column_type(st_, c) == SQLITE_NULL; }
  int columns() const noexcept { return sqlite3_column_count(st_); }
  const char* name(int c) const noexcept { return sqlite3_column_name(st_, c); }
  int type(int c) const noexcept { return sqlite3_column_type(st_, c); }
  // Valid until the next step(); no copy.
  std::optional<std::string_view> text_view(int c) const {
    if (is_null(c)) return std::nullopt;
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st_, c));
    return std::string_view(p, static_cast<std::size_t>(sqlite3_column_bytes(st_, c)));
  }
  std::optional<std::string> text(int c) const {
    if (is_null(c)) return std::nullopt;
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st_, c));
    return std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(st_, c)));
  }

 private:
  // The first bind after a run resets the statement (bindings themselves survive a reset).
  void rebinding() {
    if (!bound_) sqlite3_reset(st_);
    bound_ = true;
  }
  const reader& r_;
  sqlite3_stmt* st_ = nullptr;
  bool bound_ = false;
};

// ---- PostgreSQL (the fleet ledger) -------------------------------------------------------------

// How fleet_rows receives its values.
enum class pg_values {
  // Binary: integers and doubles exactly as stored, no text round trip; the query casts every
  // column to a type fleet_rows decodes (int2/4/8, float8, text).
  binary,
  // Text, for `SELECT *` of a table whose columns a person may have added to: every type arrives
  // readable. Integers and doubles still exactly (extra_float_digits = 3: shortest round-trip
  // text from PostgreSQL 12 on, 17 digits before); type() sorts the columns as SQLite's types.
  text,
};

// One query's rows from the fleet ledger, streamed (libpq's single-row mode: one row in memory
// however long the range). The same row interface as `statement`, so one pass serves both
// databases.
class fleet_rows {
 public:
  fleet_rows(const std::string& url, const std::string& sql, const std::vector<std::string>& params,
             pg_values format = pg_values::binary)
      : binary_(format == pg_values::binary) {
    std::string err;
    conn_ = connect_postgres(url, std::chrono::seconds(10), "tollgate-report", "60000", err);
    if (conn_ == nullptr) throw std::runtime_error("PostgreSQL: " + err);
    std::vector<const char*> values;
    for (const auto& p : params) values.push_back(p.c_str());
    bool sent = true;
    if (!binary_) {
      PGresult* r = PQexec(conn_, "SET extra_float_digits = 3");
      sent = PQresultStatus(r) == PGRES_COMMAND_OK;
      PQclear(r);
    }
    if (!sent ||
        !PQsendQueryParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr,
                           binary_ ? 1 : 0) ||
        !PQsetSingleRowMode(conn_)) {
      const std::string why = trim_message(PQerrorMessage(conn_));
      PQfinish(conn_);
      throw std::runtime_error("PostgreSQL: " + why);
    }
  }
  ~fleet_rows() {
    PQclear(row_);
    // Stopped early (an exception mid-pass): the rest of the result is not read.
    if (conn_ != nullptr) PQfinish(conn_);
  }
  fleet_rows(const fleet_rows&) = delete;
  fleet_rows& operator=(const fleet_rows&) = delete;

  // true: a row is ready; false: done. Throws on a query error (a database without the fleet
  // table says so).
  bool step() {
    PQclear(row_);
    row_ = PQgetResult(conn_);
    if (row_ != nullptr && PQresultStatus(row_) == PGRES_SINGLE_TUPLE) return true;
    std::string error;
    PGresult* end = nullptr;  // kept: it names the columns of a query without rows
    for (; row_ != nullptr; row_ = PQgetResult(conn_)) {  // the end (TUPLES_OK) or an error, then nullptr
      if (PQresultStatus(row_) == PGRES_TUPLES_OK && end == nullptr) {
        end = row_;
        continue;
      }
      if (error.empty()) error = fleet_query_error(row_);
      PQclear(row_);
    }
    row_ = end;
    if (!error.empty()) throw std::runtime_error(error);
    return false;
  }
  bool is_null(int c) const noexcept { return PQgetisnull(row_, 0, c) != 0; }
  int columns() const noexcept { return PQnfields(row_); }
  const char* name(int c) const noexcept { return PQfname(row_, c); }
  // The column's kind as SQLite names it: SQLITE_NULL, SQLITE_INTEGER (integers and booleans, which
  // the ledger file keeps as 0/1), SQLITE_FLOAT, else SQLITE_TEXT (numeric too: its digits exactly).
  int type(int c) const noexcept {
    if (is_null(c)) return SQLITE_NULL;
    switch (PQftype(row_, c)) {
      case kInt8: case kInt2: case kInt4: case kBool: return SQLITE_INTEGER;
      case kFloat4: case kFloat8: return SQLITE_FLOAT;
      default: return SQLITE_TEXT;
    }
  }
  // Integers of 2, 4 or 8 bytes (network order); 0 for NULL, as SQLite reads it.
  std::int64_t i64(int c) const noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(PQgetvalue(row_, 0, c));
    const int n = PQgetlength(row_, 0, c);
    if (!binary_) {
      std::int64_t v = 0;
      if (is_null(c)) return 0;
      if (PQftype(row_, c) == kBool) return p[0] == 't' ? 1 : 0;
      std::from_chars(PQgetvalue(row_, 0, c), PQgetvalue(row_, 0, c) + n, v);
      return v;
    }
    if (is_null(c) || (n != 2 && n != 4 && n != 8)) return 0;
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v = v << 8 | p[i];
    if (n < 8 && (p[0] & 0x80)) v |= ~std::uint64_t{0} << (8 * n);  // sign-extend
    return static_cast<std::int64_t>(v);
  }
  // A float8 (the SQL casts reals to it); 0 for NULL.
  double real(int c) const noexcept {
    if (!binary_) {
      double v = 0;
      if (!is_null(c)) std::from_chars(PQgetvalue(row_, 0, c), PQgetvalue(row_, 0, c) + PQgetlength(row_, 0, c), v);
      return v;
    }
    if (is_null(c) || PQgetlength(row_, 0, c) != 8) return 0;
    const auto bits = static_cast<std::uint64_t>(i64(c));
    double v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
  std::optional<std::string_view> text_view(int c) const {
    if (is_null(c)) return std::nullopt;
    return std::string_view(PQgetvalue(row_, 0, c), static_cast<std::size_t>(PQgetlength(row_, 0, c)));
  }
  std::optional<std::string> text(int c) const {
    const auto v = text_view(c);
    return v ? std::optional<std::string>(*v) : std::nullopt;
  }

 private:
  // Type oids (PostgreSQL's catalog/pg_type.dat; libpq has no header of them for clients).
  static constexpr Oid kBool = 16, kInt8 = 20, kInt2 = 21, kInt4 = 23, kFloat4 = 700, kFloat8 = 701;
  bool binary_ = true;
  PGconn* conn_ = nullptr;
  PGresult* row_ = nullptr;
};

spend_figures read_figures(const statement& st, int first) {
  spend_figures f;
  f.requests = st.i64(first);
  f.unpriced_requests = st.i64(first + 1);
  f.prompt_tokens = st.i64(first + 2);
  f.completion_tokens = st.i64(first + 3);
  f.cached_tokens = st.i64(first + 4);
  f.cache_write_tokens = st.i64(first + 5);
  f.reasoning_tokens = st.i64(first + 6);
  f.cost_usd = st.real(first + 7);
  return f;
}

// The plain range aggregate: the query a person checks the report against.
const std::string& range_sql() {
  static const std::string sql =
      "SELECT COUNT(*), SUM(priced = 0 AND usage_source <> 'none'), SUM(prompt_tokens), SUM(completion_tokens), "
      "SUM(cached_tokens), SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(cost_usd) "
      "FROM calls WHERE start_ms >= ?1 AND start_ms < ?2";
  return sql;
}

const char* group_expr(spend_group g) noexcept {
  switch (g) {
    case spend_group::model: return "COALESCE(price_model, served_model, requested_model)";
    case spend_group::team: return "team";
    case spend_group::key: return "client_key_id";
    case spend_group::tier: return "service_tier";
    case spend_group::provider: return "provider";
    case spend_group::instance: return "instance";
    case spend_group::user: return "\"user\"";  // a reserved word in PostgreSQL
    case spend_group::day: break;
  }
  return "NULL";
}

// Where group_rows_sql reads: the local ledger file, or the fleet ledger (all of it, or one
// instance's rows).
struct rows_from {
  bool fleet = false;
  bool instance = false;  // fleet only: `AND instance = $3`
};

// The rows of [?1, ?2) with their group keys, the figures' terms and then `extra` columns (", a, b"),
// in the order the plain range query reads them (the start_ms index: start_ms, then id; the
// ORDER BY costs no sort). The fleet's rows come in (start_ms, ledger_uid, id) order, its terms
// cast to the types fleet_rows reads.
std::string group_rows_sql(const std::vector<spend_group>& cols, std::string_view extra = {}, rows_from from = {}) {
  std::string keys;
  for (const auto g : cols) (keys += group_expr(g)) += ", ";
  if (from.fleet)
    return "SELECT " + keys +
           "(priced = 0 AND usage_source <> 'none')::int, prompt_tokens, completion_tokens, cached_tokens, "
           "cache_write_tokens, reasoning_tokens, cost_usd::float8" + std::string(extra) + " FROM " + kFleetTable +
           " WHERE start_ms >= $1 AND start_ms < $2" + (from.instance ? " AND instance = $3" : "") +
           " ORDER BY start_ms, ledger_uid, id";
  return "SELECT " + keys +
         "priced = 0 AND usage_source <> 'none', prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, "
         "reasoning_tokens, cost_usd" + std::string(extra) +
         " FROM calls WHERE start_ms >= ?1 AND start_ms < ?2 ORDER BY start_ms, id";
}

// The fleet's group_rows_sql(cols, extra) rows of `range`: all instances', or one's.
fleet_rows fleet_query(const std::string& url, const std::vector<spend_group>& cols, std::string_view extra,
                       const time_range& range, const std::optional<std::string>& instance) {
  std::vector<std::string> params = {std::to_string(range.from_ms), std::to_string(range.to_ms)};
  if (instance) params.push_back(*instance);
  return fleet_rows(url, group_rows_sql(cols, extra, {true, instance.has_value()}), params);
}

// SQLite's SUM() of reals, bit for bit, when given the same values in the same order. Before
// 3.43 SUM adds them one at a time in double precision. From 3.43 on it adds them with
// Kahan-Babuska-Neumaier compensation and returns the sum plus the compensation, or the sum alone
// when the compensation is not finite (func.c, sumStep and sumFinalize). The running sum of that
// algorithm is the plain one, so both are kept and the linked SQLite's version picks the result.
class sql_real_sum {
 public:
  void add(double r) noexcept {
    const double s = sum_, t = s + r;
    err_ += std::fabs(s) > std::fabs(r) ? (s - t) + r : (r - t) + s;
    sum_ = t;
  }
  double value() const noexcept {
    static const bool compensated = sqlite3_libversion_number() >= 3043000;
    return compensated && std::isfinite(err_) ? sum_ + err_ : sum_;
  }

 private:
  double sum_ = 0, err_ = 0;
};

// Figures being summed row by row, the cost as SQLite's SUM sums it.
struct figure_sums {
  spend_figures figures;  // cost_usd set by value()
  sql_real_sum cost;
  spend_figures value() const {
    spend_figures f = figures;
    f.cost_usd = cost.value();
    return f;
  }
};

// The group of a statement's current row, by its first `ncols` columns (text or NULL): one hash
// lookup per row, no allocation once the group is known. Row holds a group's `keys` and what is
// summed for it; groups are kept in order of first sight. A GROUP BY sorts every row of the
// range first instead (a month of 3.5M rows grouped by team: 14-16 s, against ~2 s this way).
template <class Row>
class group_index {
 public:
  explicit group_index(std::size_t ncols) : ncols_(static_cast<int>(ncols)) {}
  template <class Rows>  // statement or fleet_rows
  Row& at(const Rows& st) {
    // The keys as one string: per column, NULL or its length and bytes.
    key_.clear();
    for (int c = 0; c < ncols_; ++c) {
      const auto v = st.text_view(c);
      if (!v) {
        key_ += '\0';
        continue;
      }
      key_ += '\1';
      const auto n = static_cast<std::uint32_t>(v->size());
      key_.append(reinterpret_cast<const char*>(&n), sizeof n);
      key_ += *v;
    }
    auto it = index_.find(std::string_view(key_));
    if (it == index_.end()) {
      Row row;
      for (int c = 0; c < ncols_; ++c) row.keys.push_back(st.text(c));
      it = index_.emplace(key_, rows_.size()).first;
      rows_.push_back(std::move(row));
    }
    return rows_[it->second];
  }
  // The groups so far, in order of first sight; the index starts empty again.
  std::vector<Row> take() {
    index_.clear();
    return std::exchange(rows_, {});
  }

 private:
  int ncols_;
  std::string key_;
  std::unordered_map<std::string, std::size_t, string_hash, std::equal_to<>> index_;
  std::vector<Row> rows_;
};

// `sum += v`, refusing what SQLite's SUM refuses.
void add_checked(std::int64_t& sum, std::int64_t v) {
  if (__builtin_add_overflow(sum, v, &sum)) throw std::runtime_error("ledger: integer overflow in a token sum");
}

// Per-group figures summed in one pass over group_rows_sql's rows, in their order: the group's
// rows are added in the order the plain range query narrowed to that group would read them, so
// each group's sums are that query's (sql_real_sum).
class group_sums {
 public:
  // `total` gets every row's terms too, in the same order. The groups are by the first `ncols`
  // columns; the figures' terms start at column `first` (by default right after them).
  group_sums(std::size_t ncols, figure_sums& total, int first = -1)
      : first_(first < 0 ? static_cast<int>(ncols) : first), groups_(ncols), total_(total) {}
  // Returns the row's terms (unpriced flag, prompt, completion, cached, writes, reasoning), each
  // read from the statement once.
  template <class Rows>  // statement or fleet_rows
  std::array<std::int64_t, 6> add(const Rows& st) {
    std::array<std::int64_t, 6> terms;
    for (int i = 0; i < 6; ++i) terms[static_cast<std::size_t>(i)] = st.i64(first_ + i);
    const double cost = st.real(first_ + 6);
    add_to(groups_.at(st).sums, terms, cost);
    add_to(total_, terms, cost);
    return terms;
  }
  // The groups so far, in order of first sight.
  std::vector<spend_row> take() {
    std::vector<spend_row> out;
    for (auto& g : groups_.take()) out.push_back({std::move(g.keys), g.sums.value()});
    return out;
  }

 private:
  struct group {
    std::vector<std::optional<std::string>> keys;
    figure_sums sums;
  };
  static void add_to(figure_sums& s, const std::array<std::int64_t, 6>& terms, double cost) {
    auto& f = s.figures;
    ++f.requests;
    std::size_t i = 0;
    for (auto* sum : {&f.unpriced_requests, &f.prompt_tokens, &f.completion_tokens, &f.cached_tokens,
                      &f.cache_write_tokens, &f.reasoning_tokens})
      add_checked(*sum, terms[i++]);
    s.cost.add(cost);
  }
  int first_;
  group_index<group> groups_;
  figure_sums& total_;
};

// Null sorts first, then byte order (SQLite's BINARY collation).
bool keys_less(const spend_row& a, const spend_row& b) { return a.keys < b.keys; }

std::string format_double(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

void put_json(std::string& out, const nlohmann::json& j, int indent, int depth) {
  using value_t = nlohmann::json::value_t;
  const auto newline = [&](int level) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<std::size_t>(indent) * static_cast<std::size_t>(level), ' ');
  };
  switch (j.type()) {
    case value_t::object:
    case value_t::array: {
      const bool object = j.is_object();
      out += object ? '{' : '[';
      if (j.empty()) {
        out += object ? '}' : ']';
        return;
      }
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!first) out += ',';
        first = false;
        newline(depth + 1);
        if (object) {
          out += nlohmann::json(it.key()).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
          out += indent < 0 ? ":" : ": ";
        }
        put_json(out, *it, indent, depth + 1);
      }
      newline(depth);
      out += object ? '}' : ']';
      return;
    }
    case value_t::number_float: {
      const double v = j.get<double>();
      if (!std::isfinite(v)) {
        out += "null";
        return;
      }
      const std::string t = format_double(v);
      out += t;
      if (t.find_first_of(".eEn") == std::string::npos) out += ".0";  // still reads as a float
      return;
    }
    default:
      out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
}

std::string csv_field(std::string_view s) {
  if (s.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(s);
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

nlohmann::json bound_json(std::int64_t ms, std::int64_t unbounded) {
  return ms == unbounded ? nlohmann::json(nullptr) : nlohmann::json(format_rfc3339_utc(ms));
}

void put_range(nlohmann::json& j, const time_range& r) {
  constexpr auto lo = std::numeric_limits<std::int64_t>::min();
  constexpr auto hi = std::numeric_limits<std::int64_t>::max();
  j["from"] = bound_json(r.from_ms, lo);
  j["to"] = bound_json(r.to_ms, hi);
  j["from_ms"] = r.from_ms == lo ? nlohmann::json(nullptr) : nlohmann::json(r.from_ms);
  j["to_ms"] = r.to_ms == hi ? nlohmann::json(nullptr) : nlohmann::json(r.to_ms);
}

void put_figures(nlohmann::json& j, const spend_figures& f, const char* cost_name = "cost_usd") {
  j["requests"] = f.requests;
  j["unpriced_requests"] = f.unpriced_requests;
  j["prompt_tokens"] = f.prompt_tokens;
  j["completion_tokens"] = f.completion_tokens;
  j["cached_tokens"] = f.cached_tokens;
  j["cache_write_tokens"] = f.cache_write_tokens;
  j["reasoning_tokens"] = f.reasoning_tokens;
  j[cost_name] = f.cost_usd;
}

constexpr const char* kFigureHeader =
    "requests,unpriced_requests,prompt_tokens,completion_tokens,cached_tokens,cache_write_tokens,"
    "reasoning_tokens";

void put_csv_figures(std::string& out, const spend_figures& f) {
  for (const auto v : {f.requests, f.unpriced_requests, f.prompt_tokens, f.completion_tokens, f.cached_tokens,
                       f.cache_write_tokens, f.reasoning_tokens}) {
    out += std::to_string(v);
    out += ',';
  }
  out += format_double(f.cost_usd);
}

// The price classes of a what-if: standard, long context, then one per service tier (a call
// served at flex or batch is re-priced at the target's prices of that tier when it has them),
// then one per service tier for long-context calls (a factor tier scales the long tier).
// Prices come from billed_prices_of(), as compute_cost()'s, so a one-call what-if equals
// compute_cost() bit for bit.
constexpr std::size_t pc_standard = 0, pc_long = 1, pc_long_tiers = 2 + kServiceTiers,
                      pc_count = 2 + 2 * kServiceTiers;
std::size_t class_of(service_tier t) noexcept { return 2 + static_cast<std::size_t>(t); }
billed_prices class_prices(const model_price& p, std::size_t c) noexcept {
  if (c >= pc_long_tiers) return billed_prices_of(p, static_cast<service_tier>(c - pc_long_tiers), true);
  return billed_prices_of(p, c >= 2 ? static_cast<service_tier>(c - 2) : service_tier::none, c == pc_long);
}

// Billable token sums of one tier, clamped per call as compute_cost() clamps them.
struct tier_tokens {
  std::int64_t uncached = 0, cached = 0, write_5m = 0, write_1h = 0, completion = 0;
  void add(const tier_tokens& o) noexcept {
    uncached += o.uncached, cached += o.cached, write_5m += o.write_5m, write_1h += o.write_1h,
        completion += o.completion;
  }
  double cost(const billed_prices& r) const noexcept {
    const auto d = [](std::int64_t v) { return static_cast<double>(v); };
    return (d(uncached) * r.input + d(cached) * r.cached_input + d(write_5m) * r.write_5m +
            d(write_1h) * r.write_1h + d(completion) * r.output) /
           1e6;
  }
};

}  // namespace

std::string json_text(const nlohmann::json& j, int indent) {
  std::string out;
  put_json(out, j, indent, 0);
  return out;
}

// ---- Time ----------------------------------------------------------------------------------------

std::int64_t parse_time_bound(std::string_view text, range_end end, const calendar& cal) {
  const bool is_to = end == range_end::to;
  const std::string_view value = trim(text);
  time_reader in(value, is_to ? "to" : "from");
  if (value.empty()) in.fail("it is empty");
  civil c;
  c.year = in.digits(4, "the year");
  in.expect('-', "after the year");
  c.month = static_cast<unsigned>(in.ranged(2, "the month", 1, 12));
  c.day = 1;
  if (in.done()) return local_day_ms(cal, is_to ? next_month(c) : c);
  in.expect('-', "after the month");
  c.day = static_cast<unsigned>(in.digits(2, "the day"));
  if (!std::chrono::year_month_day(std::chrono::year{c.year}, std::chrono::month{c.month}, std::chrono::day{c.day}).ok())
    in.fail("no such day in that month");
  if (in.done()) return local_day_ms(cal, is_to ? add_days(c, 1) : c);

  if (!in.accept('T') && !in.accept('t') && !in.accept(' ')) in.fail("expected 'T' between the date and the time");
  const int hour = in.ranged(2, "the hour", 0, 23);
  in.expect(':', "after the hour");
  const int minute = in.ranged(2, "the minute", 0, 59);
  in.expect(':', "after the minute (RFC 3339 needs seconds)");
  const int second = in.ranged(2, "the second", 0, 60);  // 60: a leap second, the next minute's start
  std::int64_t frac_ms = 0;
  if (in.accept('.')) {
    int n = 0;
    bool rest = false;  // a non-zero digit below the millisecond
    while (in.peek() >= '0' && in.peek() <= '9') {
      const int d = in.peek() - '0';
      if (n < 3)
        frac_ms = frac_ms * 10 + d;
      else
        rest = rest || d != 0;
      ++n;
      in.accept(in.peek());
    }
    if (n == 0) in.fail("expected digits after '.'");
    for (; n < 3; ++n) frac_ms *= 10;
    if (rest) ++frac_ms;  // round up: start_ms >= t and start_ms < t both mean >= / < ceil(t)
  }
  std::int64_t offset_s = 0;
  if (in.accept('Z') || in.accept('z')) {
  } else if (in.peek() == '+' || in.peek() == '-' || in.peek() == ' ') {
    // A space is a '+' a URL query turned into one (from=...T10:00:00+05:30 unencoded).
    const int sign = in.peek() == '-' ? -1 : 1;
    in.accept(in.peek());
    const int oh = in.ranged(2, "the offset's hours", 0, 23);
    in.expect(':', "in the offset (+HH:MM)");
    const int om = in.ranged(2, "the offset's minutes", 0, 59);
    offset_s = sign * (oh * 3600 + om * 60);
  } else {
    in.fail("expected 'Z' or an offset such as +01:00 after the time");
  }
  if (!in.done()) in.fail("unexpected text after the offset");
  const auto days = std::chrono::sys_days{std::chrono::year{c.year} / std::chrono::month{c.month} /
                                          std::chrono::day{c.day}}.time_since_epoch().count();
  const std::int64_t secs = std::int64_t{days} * 86400 + hour * 3600 + minute * 60 + second - offset_s;
  return secs * 1000 + frac_ms;
}

time_range parse_month(std::string_view spec, const calendar& cal) {
  const std::string_view value = trim(spec);
  const auto bad = [&] {
    return std::invalid_argument("month: expected YYYY-MM such as 2026-11, got " + quote_value(value));
  };
  if (value.size() != 7) throw bad();
  try {
    return {parse_time_bound(value, range_end::from, cal), parse_time_bound(value, range_end::to, cal)};
  } catch (const std::invalid_argument&) {
    throw bad();
  }
}

std::string format_rfc3339_utc(std::int64_t ms) {
  const std::int64_t secs = floor_div(ms, 1000);
  const std::int64_t days = floor_div(secs, 86400);
  const std::int64_t sod = secs - days * 86400;
  const std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::days{days}}};
  char buf[64];
  int n = std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d", static_cast<int>(ymd.year()),
                        static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                        static_cast<int>(sod / 3600), static_cast<int>(sod / 60 % 60), static_cast<int>(sod % 60));
  if (const std::int64_t frac = ms - secs * 1000; frac != 0)
    n += std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), ".%03d", static_cast<int>(frac));
  std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), "Z");
  return buf;
}

// ---- Spend -----------------------------------------------------------------------------------------

std::string_view to_string(spend_group g) noexcept {
  switch (g) {
    case spend_group::day: return "day";
    case spend_group::model: return "model";
    case spend_group::team: return "team";
    case spend_group::key: return "key";
    case spend_group::tier: return "tier";
    case spend_group::provider: return "provider";
    case spend_group::instance: return "instance";
    case spend_group::user: return "user";
  }
  return "day";
}

std::vector<spend_group> parse_group_by(std::string_view list, bool fleet) {
  std::vector<spend_group> out;
  std::size_t pos = 0;
  while (pos <= list.size()) {
    const auto comma = std::min(list.find(',', pos), list.size());
    const auto name = trim(list.substr(pos, comma - pos));
    pos = comma + 1;
    if (name.empty()) continue;
    std::optional<spend_group> g;
    for (const auto c : {spend_group::day, spend_group::model, spend_group::team, spend_group::key, spend_group::user,
                         spend_group::tier, spend_group::provider, spend_group::instance})
      if (name == to_string(c)) g = c;
    if (!g)
      throw std::invalid_argument("group_by: unknown column " + quote_value(name) +
                                  " (expected day, model, team, key, user, tier" +
                                  (fleet ? ", provider or instance)" : " or provider)"));
    if (*g == spend_group::instance && !fleet)
      throw std::invalid_argument(
          "group_by: 'instance' is a column of the fleet ledger (tollgate report --fleet); a ledger file holds one "
          "instance's calls");
    if (std::find(out.begin(), out.end(), *g) != out.end())
      throw std::invalid_argument("group_by: " + quote_value(name) + " given twice");
    out.push_back(*g);
  }
  return out;
}

namespace {

// The group columns of `q` but day, in the given order: group_rows_sql's key columns.
std::vector<spend_group> key_columns(const spend_query& q) {
  std::vector<spend_group> cols;
  for (const auto g : q.group_by)
    if (g != spend_group::day) cols.push_back(g);
  return cols;
}

// The report's groups and total from group_rows_sql(key_columns(q), ", start_ms") rows, one pass
// in their order: the sums of [from, to) per group, with `day` (when grouped by day) at its place
// among the keys, and the total in the same pass. A GROUP BY, or a window partitioned by the
// groups, sorts every row of the range first (14-16 s for a month of 3.5M rows by team; this way
// ~2 s). SQL cannot evaluate IANA zones (and PostgreSQL's zone database need not be this
// machine's), so a new local day starts at the calendar's bound (23- and 25-hour days across DST
// changes): the groups so far are the previous day's.
template <class Rows>
void spend_pass(Rows& rows, const calendar& cal, const spend_query& q, spend_report& out) {
  const std::size_t ncols = key_columns(q).size();
  const auto day_at = std::find(q.group_by.begin(), q.group_by.end(), spend_group::day);
  const bool by_day = day_at != q.group_by.end();
  const auto day_pos = day_at - q.group_by.begin();
  const int start_col = static_cast<int>(ncols) + 7;
  figure_sums total;
  group_sums sums(ncols, total);
  std::optional<std::string> day;
  std::int64_t day_end_ms = std::numeric_limits<std::int64_t>::min();
  const auto end_day = [&] {
    for (auto& row : sums.take()) {
      if (by_day) row.keys.insert(row.keys.begin() + day_pos, day);
      out.rows.push_back(std::move(row));
    }
  };
  while (rows.step()) {
    if (by_day && rows.i64(start_col) >= day_end_ms) {
      end_day();
      const time_window w = cal.window(calendar_period::day, floor_div(rows.i64(start_col), 1000));
      day_end_ms = w.end_s * 1000;
      day = cal.local_date(w.start_s);
    }
    sums.add(rows);
  }
  end_day();
  out.total = total.value();
  if (q.group_by.empty()) out.rows.clear();  // the one group of no keys is the total
  std::sort(out.rows.begin(), out.rows.end(), keys_less);
}

spend_report spend_on(const reader& db, const calendar& cal, const spend_query& q) {
  spend_report out;
  out.query = q;
  // Without groups, the plain range query is the report.
  if (q.group_by.empty()) {
    statement total(db, range_sql());
    total.bind(1, q.range.from_ms);
    total.bind(2, q.range.to_ms);
    if (total.step()) out.total = read_figures(total, 0);
    return out;
  }
  statement rows(db, group_rows_sql(key_columns(q), ", start_ms"));
  rows.bind(1, q.range.from_ms);
  rows.bind(2, q.range.to_ms);
  spend_pass(rows, cal, q, out);
  return out;
}

}  // namespace

spend_report query_spend(const std::string& ledger_path, const spend_query& q) {
  const calendar cal(q.timezone);  // before opening: a bad zone is the caller's error, not the file's
  reader db(ledger_path);
  db.consistent();
  return spend_on(db, cal, q);
}

spend_report query_fleet_spend(const std::string& url, const spend_query& q, const std::optional<std::string>& instance) {
  const calendar cal(q.timezone);
  spend_report out;
  out.query = q;
  // Every figure is summed here, the total included: PostgreSQL's SUM of doubles adds them in
  // whatever order its (parallel) plan reads them, so it need not equal a sum in start_ms order.
  auto rows = fleet_query(url, key_columns(q), ", start_ms", q.range, instance);
  spend_pass(rows, cal, q, out);
  return out;
}

nlohmann::json to_json(const spend_report& r) {
  nlohmann::json j;
  put_range(j, r.query.range);
  j["timezone"] = r.query.timezone;
  auto& groups = j["group_by"] = nlohmann::json::array();
  for (const auto g : r.query.group_by) groups.push_back(std::string(to_string(g)));
  auto& rows = j["rows"] = nlohmann::json::array();
  for (const auto& row : r.rows) {
    nlohmann::json o;
    for (std::size_t i = 0; i < r.query.group_by.size() && i < row.keys.size(); ++i)
      o[std::string(to_string(r.query.group_by[i]))] =
          row.keys[i] ? nlohmann::json(*row.keys[i]) : nlohmann::json(nullptr);
    put_figures(o, row.figures);
    rows.push_back(std::move(o));
  }
  put_figures(j["total"], r.total);
  return j;
}

std::string to_csv(const spend_report& r) {
  std::string out = "row";
  for (const auto g : r.query.group_by) (out += ',') += to_string(g);
  out += ',';
  out += kFigureHeader;
  out += ",cost_usd\n";
  for (const auto& row : r.rows) {
    out += "group";
    for (const auto& k : row.keys) (out += ',') += k ? csv_field(*k) : std::string();
    out += ',';
    put_csv_figures(out, row.figures);
    out += '\n';
  }
  out += "total";
  out.append(r.query.group_by.size(), ',');
  out += ',';
  put_csv_figures(out, r.total);
  out += '\n';
  return out;
}

// ---- Calls ---------------------------------------------------------------------------------------

calls_cursor parse_calls_cursor(std::string_view text, bool fleet) {
  // The fleet's ledger_uid lies between the first colon and the last (tollgate makes 32 hex
  // digits; a uid of other text, a colon included, still pages); a local cursor has none.
  const auto first = text.find(':'), last = text.rfind(':');
  calls_cursor out;
  const auto number = [](std::string_view t, std::int64_t& v) {
    const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    return ec == std::errc{} && end == t.data() + t.size() && !t.empty();
  };
  const bool ok = first != std::string_view::npos && (first != last) == fleet &&
                  number(text.substr(0, first), out.start_ms) && number(text.substr(last + 1), out.id);
  if (ok && fleet) out.ledger_uid = std::string(text.substr(first + 1, last - first - 1));
  if (!ok)
    throw std::invalid_argument(std::string("before must be the next_before of an earlier page (") +
                                (fleet ? "<start_ms>:<ledger_uid>:<id>" : "<start_ms>:<id>") + "), got " +
                                quote_value(text, 60));
  return out;
}

namespace {
// Each filter's name and its term; `?` is its value's parameter.
constexpr std::pair<std::string_view, std::string_view> kCallFilters[] = {
    {"request_id", "request_id = ?"},
    // The upstream's id (its x-request-id, else the reply's `id`): a provider's support ticket.
    {"upstream_request_id", "upstream_request_id = ?"},
    {"key", "client_key_id = ?"},
    {"team", "team = ?"},
    {"model", "(requested_model = ? OR served_model = ? OR price_model = ?)"},
    {"provider", "provider = ?"},
    {"route", "route = ?"},
    {"user", "\"user\" = ?"},  // the end user a request named (user, safety_identifier, metadata.user_id)
};
}  // namespace

const std::vector<std::string_view>& calls_filters() {
  static const std::vector<std::string_view> names = [] {
    std::vector<std::string_view> out;
    for (const auto& f : kCallFilters) out.push_back(f.first);
    return out;
  }();
  return names;
}

namespace {

// True when every optional index of `filter` (core/ledger_indexes.hpp, ledger.indexes) exists.
bool has_indexes(reader& db, std::string_view filter) {
  int want = 0, found = 0;
  for (const auto& ix : kLedgerIndexes) {
    if (ix.filter != filter) continue;
    ++want;
    statement st(db, "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1");
    st.bind_text(1, std::string(ix.name));
    found += st.step() ? 1 : 0;
  }
  return want > 0 && found == want;
}

// A calls page's parameters, numbered from 3 (1 and 2 are its range): text (an exact match) or a
// real (a bound: bound as a real in SQLite, sent as its shortest round-trip text to PostgreSQL,
// never rounded on the way).
class calls_params {
 public:
  explicit calls_params(char mark) : mark_(mark) {}  // '?' SQLite, '$' PostgreSQL
  // Adds a parameter; returns its placeholder ("?3", "$3").
  std::string add(std::variant<std::string, double> v) {
    values_.push_back(std::move(v));
    return mark_ + std::to_string(values_.size() + 2);
  }
  const std::vector<std::variant<std::string, double>>& values() const noexcept { return values_; }

 private:
  char mark_;
  std::vector<std::variant<std::string, double>> values_;
};

// " AND <term>" for each filter and range of `q` but the filter `skip` (one the caller places
// itself), its parameters added to `params`.
std::string calls_terms(const calls_query& q, calls_params& params, std::string_view skip = {}) {
  std::string where;
  for (const auto& [name, value] : q.match) {
    const auto* f = std::find_if(std::begin(kCallFilters), std::end(kCallFilters), [&](const auto& e) { return e.first == name; });
    if (f == std::end(kCallFilters)) throw std::invalid_argument("unknown calls filter '" + name + "'");
    if (name == skip) continue;
    const std::string p = params.add(value);
    where += " AND ";
    for (const char c : f->second) c == '?' ? where += p : where += c;
  }
  if (q.status) where += " AND status = " + std::to_string(*q.status);
  for (const auto& [bound, term] : {std::pair{&q.min_cost_usd, "cost_usd >= "}, std::pair{&q.max_cost_usd, "cost_usd <= "},
                                    std::pair{&q.min_latency_ms, "latency_ms >= "}, std::pair{&q.max_latency_ms, "latency_ms <= "}})
    if (*bound) ((where += " AND ") += term) += params.add(**bound);  // "cost_usd >= ?3"
  return where;
}

// Where a page's walk down the start_ms index starts: a later page's rows all start at or before
// its cursor's row. That bound, not the row value comparison (which neither database seeks an
// index by), is what skips the pages before: bound with the range's end, page N of a month read
// every row of the N-1 pages before it again (0.4 s a page 3M rows deep).
std::int64_t page_end_ms(const calls_query& q) {
  return q.before && q.before->start_ms < q.range.to_ms ? q.before->start_ms + 1 : q.range.to_ms;
}

// Rows a page holds: 1 to 1,000.
std::size_t page_size(const calls_query& q) { return std::clamp<std::size_t>(q.limit, 1, 1000); }

// " ORDER BY <order> LIMIT <page + 1>": the one more row says whether a next page follows.
std::string page_order(const calls_query& q, const char* order) {
  return std::string(" ORDER BY ") + order + " LIMIT " + std::to_string(page_size(q) + 1);
}

// Reads one page of a calls query's rows (a SQLite statement or fleet_rows): header(rows) once,
// when the columns are known, then row(rows, start_ms) for each row of the page. Returns the next
// page's cursor, that of the page's last row ("<start_ms>:<id>", the fleet's with its ledger_uid),
// or "" when this page is the last. `fail(why)` throws for a table without start_ms or id.
template <class Rows, class Fail, class Header, class Row>
std::string read_page(Rows& rows, const calls_query& q, bool fleet, Fail&& fail, Header&& header, Row&& row) {
  const std::size_t limit = page_size(q);
  bool more = rows.step();  // first: the fleet's columns are known once a result arrives
  int start_col = -1, uid_col = -1, id_col = -1;
  for (int c = 0; c < rows.columns(); ++c) {
    const std::string_view name = rows.name(c);
    if (name == "start_ms") start_col = c;
    if (name == "ledger_uid") uid_col = c;
    if (name == "id") id_col = c;
  }
  if (start_col < 0 || id_col < 0 || (fleet && uid_col < 0))
    fail(fleet ? "the fleet table has no start_ms, ledger_uid or id column" : "the calls table has no start_ms or id column");
  header(rows);
  std::size_t n = 0;
  std::int64_t start_ms = 0, id = 0;  // of the page's last row so far
  std::string uid;
  for (; more; more = rows.step()) {
    if (n == limit) return std::to_string(start_ms) + ":" + (fleet ? uid + ":" : "") + std::to_string(id);  // the extra row
    start_ms = rows.i64(start_col);
    id = rows.i64(id_col);
    if (fleet) uid = rows.text(uid_col).value_or("");
    row(rows, start_ms);
    ++n;
  }
  return {};
}

// One page of a ledger file's rows, newest first (read_page).
template <class Header, class Row>
std::string walk_range(const std::string& ledger_path, const calls_query& q, Header&& header, Row&& row) {
  reader db(ledger_path);
  // `model` matches any of three columns. An OR of them is read through the start_ms index (one
  // walk, stopping when the page is full) unless the three `model` indexes exist: then the
  // planner would collect every match of all three and sort them (7 s for a model most rows
  // name, 3.5M rows), so the query is a UNION of one ordered walk per column instead, which
  // SQLite merges and stops at the page's end (milliseconds, whether the model is rare or not).
  const auto model = q.match.find("model");
  const bool model_union = model != q.match.end() && has_indexes(db, "model");
  calls_params params('?');
  std::string where = "start_ms >= ?1 AND start_ms < ?2" + calls_terms(q, params, model_union ? "model" : "");
  if (q.before) where += " AND (start_ms, id) < (" + std::to_string(q.before->start_ms) + ", " + std::to_string(q.before->id) + ")";
  std::string sql;
  if (model_union) {
    const std::string p = params.add(model->second);
    for (const auto& ix : kLedgerIndexes)
      if (ix.filter == "model") {
        if (!sql.empty()) sql += " UNION ";
        sql += "SELECT * FROM calls WHERE " + where + " AND " + std::string(ix.column) + " = " + p;
      }
  } else {
    sql = "SELECT * FROM calls WHERE " + where;
  }
  statement st(db, sql + page_order(q, "start_ms DESC, id DESC"));
  st.bind(1, q.range.from_ms);
  st.bind(2, page_end_ms(q));
  int i = 2;
  for (const auto& v : params.values()) {
    if (const auto* text = std::get_if<std::string>(&v)) st.bind_text(++i, *text);
    else st.bind_real(++i, std::get<double>(v));
  }
  return read_page(st, q, false, [&](const std::string& why) { throw ledger_error(ledger_path, why); }, header, row);
}

// The same page of the fleet ledger's rows (all instances', or `instance`'s), newest first by
// (start_ms, ledger_uid, id): PostgreSQL walks its start_ms index (or (instance, start_ms)) back
// from the page's end and sorts only the rows of one millisecond. Values arrive as text, so a
// column an administrator added, of any type, reads too.
template <class Header, class Row>
std::string walk_fleet_range(const std::string& url, const std::optional<std::string>& instance, const calls_query& q,
                             Header&& header, Row&& row) {
  calls_params params('$');
  std::string sql = std::string("SELECT * FROM ") + kFleetTable + " WHERE start_ms >= $1 AND start_ms < $2" + calls_terms(q, params);
  if (instance) sql += " AND instance = " + params.add(*instance);
  if (q.before)
    sql += " AND (start_ms, ledger_uid, id) < (" + params.add(std::to_string(q.before->start_ms)) + "::bigint, " +
           params.add(q.before->ledger_uid) + "::text, " + params.add(std::to_string(q.before->id)) + "::bigint)";
  std::vector<std::string> values = {std::to_string(q.range.from_ms), std::to_string(page_end_ms(q))};
  for (const auto& v : params.values())
    values.push_back(std::holds_alternative<std::string>(v) ? std::get<std::string>(v) : format_double(std::get<double>(v)));
  fleet_rows rows(url, sql + page_order(q, "start_ms DESC, ledger_uid DESC, id DESC"), values, pg_values::text);
  return read_page(rows, q, true, [](const std::string& why) -> void { throw std::runtime_error("PostgreSQL: " + why); },
                   header, row);
}

// Where a lookup by an id that carries a time (core/request_id.hpp) looks first, around that
// time: the millisecond itself when it is the row's start_ms (tollgate's own ids), then a minute
// either side: for a client's UUIDv7, made by the client's clock a moment before the call, and
// for a tollgate behind another one, which takes the front's id as the client's and starts the
// call a little later (or, on another machine, by a clock a little off).
constexpr std::int64_t kExactWindowMs[2] = {0, 1};
constexpr std::int64_t kNearWindowMs[2] = {-60'000, 60'000};

// A page by walk(query, header, row) (walk_range or walk_fleet_range), but a lookup by a request
// id that carries a time first reads the millisecond (a generated id), then the two minutes,
// around it: the `start_ms` index finds them at once, where a scan of the range reads every row
// (half a second a million rows). When nothing there matches (an id generated before ids carried
// their start, a client's id of the same shape, a client clock far off), the whole range is read.
// An id a client reused for later calls is found only near its first call's start.
template <class Walk, class Header, class Row>
std::string walk_calls(Walk&& walk, const calls_query& q, Header&& header, Row&& row) {
  bool headed = false;
  const auto header_once = [&](const auto& st) {
    if (!std::exchange(headed, true)) header(st);
  };
  if (const auto it = q.match.find("request_id"); it != q.match.end())
    if (const auto t = request_id_time(it->second))
      for (const auto* window : {kExactWindowMs, kNearWindowMs}) {
        if (window == kExactWindowMs && !t->exact) continue;
        calls_query near = q;
        near.range.from_ms = std::max(q.range.from_ms, t->ms + window[0]);
        near.range.to_ms = std::min(q.range.to_ms, t->ms + window[1]);
        if (near.range.from_ms >= near.range.to_ms) continue;
        std::size_t rows = 0;
        std::string next = walk(near, header_once, [&](const auto& st, std::int64_t start_ms) {
          ++rows;
          row(st, start_ms);
        });
        if (rows > 0) return next;
      }
  return walk(q, header_once, row);
}

// A page as JSON: {"calls": [...], "next_before": ...}, each row every column as stored.
template <class Walk>
nlohmann::json calls_json(Walk&& walk, const calls_query& q) {
  nlohmann::json out;
  auto& calls = out["calls"] = nlohmann::json::array();
  const std::string next = walk_calls(walk, q, [](const auto&) {}, [&](const auto& st, std::int64_t start_ms) {
    nlohmann::json row = nlohmann::json::object();
    for (int c = 0; c < st.columns(); ++c) {
      const std::string col = st.name(c);
      switch (st.type(c)) {
        case SQLITE_INTEGER: row[col] = st.i64(c); break;
        case SQLITE_FLOAT: row[col] = st.real(c); break;
        case SQLITE_NULL: row[col] = nullptr; break;
        default: row[col] = *st.text(c); break;
      }
    }
    row["start"] = format_rfc3339_utc(start_ms);
    calls.push_back(std::move(row));
  });
  out["next_before"] = next.empty() ? nlohmann::json(nullptr) : nlohmann::json(next);
  return out;
}

// A page as CSV; `next_before` gets its cursor ("" on the last page).
template <class Walk>
std::string calls_csv(Walk&& walk, const calls_query& q, std::string& next_before) {
  std::string out;
  next_before = walk_calls(
      walk, q,
      [&](const auto& st) {
        for (int c = 0; c < st.columns(); ++c) (out += csv_field(st.name(c))) += ',';
        out += "start\n";
      },
      [&](const auto& st, std::int64_t start_ms) {
        for (int c = 0; c < st.columns(); ++c) {
          switch (st.type(c)) {
            case SQLITE_INTEGER: out += std::to_string(st.i64(c)); break;
            case SQLITE_FLOAT: out += format_double(st.real(c)); break;
            case SQLITE_NULL: break;
            default: out += csv_field(*st.text(c)); break;
          }
          out += ',';
        }
        out += format_rfc3339_utc(start_ms);
        out += '\n';
      });
  return out;
}

// walk(query, header, row) of one ledger file, or of the fleet ledger.
auto file_walk(const std::string& ledger_path) {
  return [&ledger_path](const calls_query& q, auto&& header, auto&& row) { return walk_range(ledger_path, q, header, row); };
}
auto fleet_walk(const std::string& url, const std::optional<std::string>& instance) {
  return [&url, &instance](const calls_query& q, auto&& header, auto&& row) {
    return walk_fleet_range(url, instance, q, header, row);
  };
}

}  // namespace

nlohmann::json query_calls(const std::string& ledger_path, const calls_query& q) { return calls_json(file_walk(ledger_path), q); }

std::string query_calls_csv(const std::string& ledger_path, const calls_query& q, std::string& next_before) {
  return calls_csv(file_walk(ledger_path), q, next_before);
}

nlohmann::json query_fleet_calls(const std::string& url, const calls_query& q, const std::optional<std::string>& instance) {
  return calls_json(fleet_walk(url, instance), q);
}

std::string query_fleet_calls_csv(const std::string& url, const calls_query& q, const std::optional<std::string>& instance,
                                  std::string& next_before) {
  return calls_csv(fleet_walk(url, instance), q, next_before);
}

// ---- What-if -------------------------------------------------------------------------------------

namespace {

// Where one what-if question finds a model's price: its own entries first (under the name given,
// or under the table entry that name resolves to), then the table.
class whatif_prices {
 public:
  whatif_prices(const price_table& table, const std::vector<model_price>& own) : table_(table) {
    for (const auto& p : own) {
      const model_price* base = table.resolve(p.name);
      own_[base ? base->name : p.name] = p;
      own_[base ? base->name : p.name].name = base ? base->name : p.name;
    }
  }
  const model_price* find(std::string_view model) const {
    if (const auto it = own_.find(std::string(model)); it != own_.end()) return &it->second;
    const model_price* p = table_.resolve(model);
    if (p == nullptr) return nullptr;
    if (const auto it = own_.find(p->name); it != own_.end()) return &it->second;
    return p;
  }
  // Whether the question gives `model` prices of its own (`prices`).
  bool overridden(std::string_view model) const {
    if (own_.contains(std::string(model))) return true;
    const model_price* p = table_.resolve(model);
    return p != nullptr && own_.contains(p->name);
  }
  // Whether two model ids are the same model: equal, or resolving to the same table entry.
  bool same(std::string_view a, std::string_view b) const {
    if (a == b) return true;
    const model_price *pa = table_.resolve(a), *pb = table_.resolve(b);
    return pa != nullptr && pa == pb;
  }

 private:
  const price_table& table_;
  std::map<std::string, model_price> own_;
};

bool bills_beyond_columns(const model_price& p) {
  return p.image_input || p.audio_input || p.audio_output || p.text_output || p.cached_image_input || p.cached_audio_input ||
         p.per_minute > 0 || p.per_million_characters > 0 || !p.per_image.empty() || !p.per_second.empty();
}

// The question's blanket target (nullptr without one), after checking that it asks for a change
// and that every target has a price. Throws std::invalid_argument otherwise.
const model_price* whatif_blanket(const whatif_query& q, const whatif_prices& book) {
  if (q.model.empty() && q.swap.empty() && q.prices.empty())
    throw std::invalid_argument("say what to change: model, swap or prices");
  const model_price* blanket = nullptr;
  if (!q.model.empty() && (blanket = book.find(q.model)) == nullptr)
    throw std::invalid_argument("model: " + quote_value(q.model) + " is not in the price table");
  for (const auto& [from, to] : q.swap)
    if (book.find(to) == nullptr)
      throw std::invalid_argument("swap: " + quote_value(to) + " (for " + quote_value(from) + ") is not in the price table");
  return blanket;
}

// The columns whatif_pass reads: group_rows_sql's with these keys and extra columns.
const std::vector<spend_group> kWhatifKeys = {spend_group::model, spend_group::tier};
constexpr std::string_view kWhatifExtra = ", cache_write_1h_tokens, web_search_requests";

// The what-if report of the kWhatifKeys/kWhatifExtra rows of q.range (statement or fleet_rows).
template <class Rows>
whatif_report whatif_pass(Rows& st, const whatif_query& q, const whatif_prices& book, const model_price* blanket) {
  // Each original model's price: its swap entry, else the blanket model, else its own.
  const auto target_of = [&](const std::optional<std::string>& model) -> const model_price* {
    const model_price* t = blanket;
    for (const auto& [from, to] : q.swap)
      if (model && book.same(*model, from)) t = book.find(to);
    if (t == blanket && blanket == nullptr && model) {
      t = book.find(*model);
      // Its own model, at its own prices, when they are in units the ledger does not split (audio
      // and image tokens, minutes, characters): re-pricing its token columns would bill it as
      // text (a Realtime session's audio at the text price, whisper-1 at $0), so it keeps what it
      // cost, as a model without a price does.
      if (t && !book.overridden(*model) && bills_beyond_columns(*t)) t = nullptr;
    }
    return t;
  };

  // One ordered pass over the range's rows (the start_ms index, no sort) sums two things:
  // - the actual side per model and in total, as the spend query sums them (group_sums), so both
  //   reports show the same figures bit for bit;
  // - the billable tokens per call clamped as compute_cost() clamps them, per (model, tier, long
  //   context); a call is long-context by its target's threshold. Integer sums: their order does
  //   not matter. The same clamps as SQL expressions and a GROUP BY took SQLite 7-8 s for a month
  //   of 3.5M rows (evaluating them, not the sort); this pass, the actual side included, ~3.5 s.
  // Columns: 0 model, 1 service tier, 2-8 the figures' terms (group_sums reads them), 9 1-hour
  // writes, 10 web searches.
  struct token_group {
    std::vector<std::optional<std::string>> keys;  // model, service tier
    std::int64_t threshold = -1;                    // its model's target's; -1 until looked up
    // [long context]: rows; uncached, cached, 5-minute and 1-hour writes, completion; the
    // 1-hour writes as stored (unclamped, for the report's own column), web searches.
    std::array<std::array<std::int64_t, 8>, 2> sums{};
  };
  group_index<token_group> groups(2);
  figure_sums actual_total;
  group_sums by_model(1, actual_total, 2);
  while (st.step()) {
    const auto f = by_model.add(st);  // [1] prompt, [2] completion, [3] cached, [4] writes
    auto& g = groups.at(st);
    if (g.threshold < 0) {
      const model_price* t = target_of(g.keys[0]);
      g.threshold = t ? t->long_context_threshold : 0;
    }
    const std::int64_t w1_stored = st.i64(9);
    const std::int64_t c = std::max<std::int64_t>(f[3], 0), w = std::max<std::int64_t>(f[4], 0);
    const std::int64_t w1 = std::min(std::max<std::int64_t>(w1_stored, 0), w);
    std::int64_t cw = 0;
    if (__builtin_add_overflow(c, w, &cw)) throw std::runtime_error("ledger: integer overflow in a token sum");
    const std::int64_t p = std::max({f[1], std::int64_t{0}, cw});
    auto& v = g.sums[g.threshold > 0 && p > g.threshold ? 1 : 0];
    ++v[0];
    const std::int64_t terms[7] = {p - cw, c, w - w1, w1, std::max<std::int64_t>(f[2], 0), w1_stored,
                                   std::max<std::int64_t>(st.i64(10), 0)};
    for (std::size_t k = 0; k < 7; ++k) add_checked(v[k + 1], terms[k]);
  }
  auto actual = by_model.take();
  std::sort(actual.begin(), actual.end(), keys_less);

  whatif_report out;
  out.model = blanket ? blanket->name : std::string();
  out.range = q.range;
  out.actual_total = actual_total.value();
  std::vector<const model_price*> target;
  for (const auto& row : actual) {
    target.push_back(target_of(row.keys[0]));
    out.rows.push_back({row.keys[0], row.figures, 0, 0, target.back() ? std::optional<std::string>(target.back()->name) : std::nullopt});
  }

  // Per model: token sums per price class (the class a call falls in depends on its target:
  // a flex call is re-priced at the target's flex prices if it has them, else as any call), and
  // the web searches, billed per request at the target's `web_search` price.
  struct tier_row {
    bool long_tier;
    std::size_t tier;  // class_of(its service tier), pc_standard when it names none
    tier_tokens t;
  };
  std::map<std::optional<std::string>, std::vector<tier_row>> rows_by_model;
  std::map<std::optional<std::string>, std::int64_t> write_1h_by_model, searches_by_model;
  for (const auto& g : groups.take()) {
    const auto& model = g.keys[0];
    const std::size_t c = g.keys[1] ? class_of(parse_service_tier(*g.keys[1])) : pc_standard;
    for (const bool long_tier : {false, true}) {
      const auto& v = g.sums[long_tier ? 1 : 0];
      if (v[0] == 0) continue;  // no call of this group on this side of the threshold
      rows_by_model[model].push_back({long_tier, c, {v[1], v[2], v[3], v[4], v[5]}});
      write_1h_by_model[model] += v[6];
      out.cache_write_1h_tokens += v[6];
      searches_by_model[model] += v[7];
    }
  }
  // The class of each group for the target `p`: its service tier's if `p` prices that tier.
  const auto classify = [](const model_price& p, const tier_row& r) {
    if (r.tier >= 2 && p.tier(static_cast<service_tier>(r.tier - 2))) return r.long_tier ? r.tier + kServiceTiers : r.tier;
    return r.long_tier ? std::size_t{pc_long} : std::size_t{pc_standard};
  };
  const auto sums_for = [&](const model_price& p, const std::vector<tier_row>& rows) {
    std::array<tier_tokens, pc_count> by{};
    for (const auto& r : rows) by[classify(p, r)].add(r.t);
    return by;
  };
  const auto cost_of = [](const model_price& p, const std::array<tier_tokens, pc_count>& by, std::int64_t searches) {
    double usd = 0;
    for (std::size_t c = 0; c < pc_count; ++c) usd += by[c].cost(class_prices(p, c));
    return usd + static_cast<double>(searches) * p.web_search / 1000.0;
  };
  // The total sums tokens per target before pricing them, so a question with one target costs
  // each price once (as one call's what-if is compute_cost's figure exactly).
  std::map<const model_price*, std::pair<std::array<tier_tokens, pc_count>, std::int64_t>> by_target;
  out.whatif_cost_usd = 0;
  for (std::size_t i = 0; i < out.rows.size(); ++i) {
    auto& row = out.rows[i];
    row.cache_write_1h_tokens = write_1h_by_model[row.model];
    const auto it = rows_by_model.find(row.model);
    if (target[i] == nullptr) {  // not re-priced: what it cost
      row.whatif_cost_usd = row.actual.cost_usd;
      out.whatif_cost_usd += row.actual.cost_usd;
      continue;
    }
    if (it == rows_by_model.end()) continue;
    const auto by = sums_for(*target[i], it->second);
    const std::int64_t searches = searches_by_model[row.model];
    row.whatif_cost_usd = cost_of(*target[i], by, searches);
    auto& acc = by_target[target[i]];
    for (std::size_t c = 0; c < pc_count; ++c) acc.first[c].add(by[c]);
    acc.second += searches;
  }
  for (const auto& [t, acc] : by_target) out.whatif_cost_usd += cost_of(*t, acc.first, acc.second);
  return out;
}

}  // namespace

whatif_report query_whatif(const std::string& ledger_path, const whatif_query& q, const price_table& prices) {
  const whatif_prices book(prices, q.prices);
  const model_price* blanket = whatif_blanket(q, book);
  reader db(ledger_path);
  db.consistent();
  statement st(db, group_rows_sql(kWhatifKeys, kWhatifExtra));
  st.bind(1, q.range.from_ms);
  st.bind(2, q.range.to_ms);
  return whatif_pass(st, q, book, blanket);
}

whatif_report query_fleet_whatif(const std::string& url, const whatif_query& q, const price_table& prices,
                                 const std::optional<std::string>& instance) {
  const whatif_prices book(prices, q.prices);
  const model_price* blanket = whatif_blanket(q, book);
  auto rows = fleet_query(url, kWhatifKeys, kWhatifExtra, q.range, instance);
  return whatif_pass(rows, q, book, blanket);
}

nlohmann::json to_json(const whatif_report& r) {
  nlohmann::json j;
  j["model"] = r.model.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.model);
  put_range(j, r.range);
  auto& rows = j["rows"] = nlohmann::json::array();
  for (const auto& row : r.rows) {
    nlohmann::json o;
    o["model"] = row.model ? nlohmann::json(*row.model) : nlohmann::json(nullptr);
    put_figures(o, row.actual, "actual_cost_usd");
    o["cache_write_1h_tokens"] = row.cache_write_1h_tokens;
    o["whatif_cost_usd"] = row.whatif_cost_usd;
    o["target"] = row.target ? nlohmann::json(*row.target) : nlohmann::json(nullptr);
    rows.push_back(std::move(o));
  }
  auto& total = j["total"];
  put_figures(total, r.actual_total, "actual_cost_usd");
  total["cache_write_1h_tokens"] = r.cache_write_1h_tokens;
  total["whatif_cost_usd"] = r.whatif_cost_usd;
  return j;
}

std::string to_csv(const whatif_report& r) {
  std::string out = "row,model,";
  out += kFigureHeader;
  out += ",actual_cost_usd,cache_write_1h_tokens,whatif_cost_usd,target\n";
  const auto line = [&](std::string_view kind, const std::string& model, const spend_figures& f, std::int64_t w1h,
                        double whatif, const std::string& target) {
    out += kind;
    (out += ',') += csv_field(model);
    out += ',';
    put_csv_figures(out, f);
    (out += ',') += std::to_string(w1h);
    (out += ',') += format_double(whatif);
    (out += ',') += csv_field(target);
    out += '\n';
  };
  for (const auto& row : r.rows)
    line("group", row.model.value_or(""), row.actual, row.cache_write_1h_tokens, row.whatif_cost_usd,
         row.target.value_or(""));
  line("total", "", r.actual_total, r.cache_write_1h_tokens, r.whatif_cost_usd, "");
  return out;
}

// ---- Warm start --------------------------------------------------------------------------------

std::vector<spend_sample> spend_since(const std::string& ledger_path, std::int64_t since_ms, std::int64_t fine_since_ms,
                                      std::int64_t until_ms) {
  std::vector<spend_sample> out;
  for_each_spend_sample(ledger_path, since_ms, fine_since_ms, until_ms, false,
                        [&](spend_sample&& s) { out.push_back(std::move(s)); });
  return out;
}

void for_each_spend_sample(const std::string& ledger_path, std::int64_t since_ms, std::int64_t fine_since_ms,
                           std::int64_t until_ms, bool by_user, const std::function<void(spend_sample&&)>& fn) {
  std::error_code ec;
  if (!std::filesystem::exists(ledger_path, ec)) return;
  reader db(ledger_path);
  // Buckets in seconds: the minute's first second before fine_since_ms, each second after it.
  // Refused and failed calls (cost 0) do not date a bucket. The rows come in start_ms order (the
  // index, no sort), so a bucket's rows are contiguous: each bucket's groups are summed as they
  // come and handed on by their last call, as the query's ORDER BY MAX(start_ms) had them. A
  // GROUP BY of the bucket, key, team and model sorted every row first (2.2 s for a month of
  // 3.5M rows).
  // by_user: the end user is a fourth key (NULL, 4th column, when not asked: one group as before).
  statement st(db,
               "SELECT client_key_id, team, price_model, CASE WHEN ?3 THEN \"user\" END, cost_usd, start_ms FROM calls "
               "WHERE start_ms >= ?1 AND start_ms < ?2 AND cost_usd <> 0 ORDER BY start_ms");
  st.bind(1, since_ms);
  st.bind(2, until_ms);
  st.bind(3, static_cast<std::int64_t>(by_user ? 1 : 0));
  struct sample_group {
    std::vector<std::optional<std::string>> keys;  // key, team, price model, user
    double cost_usd = 0;
    std::int64_t last_ms = 0;
  };
  group_index<sample_group> groups(4);
  std::int64_t bucket = std::numeric_limits<std::int64_t>::min();
  const auto flush = [&] {
    auto done = groups.take();
    std::stable_sort(done.begin(), done.end(), [](const sample_group& a, const sample_group& b) { return a.last_ms < b.last_ms; });
    for (auto& g : done)
      fn({g.keys[0].value_or(""), g.keys[1].value_or(""), g.keys[2].value_or(""), g.cost_usd, g.last_ms,
          g.keys[3].value_or("")});
  };
  while (st.step()) {
    const std::int64_t start_ms = st.i64(5);
    // As SQLite's integer division truncates.
    const std::int64_t b = start_ms >= fine_since_ms ? start_ms / 1000 : start_ms / kMinuteMs * 60;
    if (b != bucket) {
      flush();
      bucket = b;
    }
    auto& g = groups.at(st);
    g.cost_usd += st.real(4);
    g.last_ms = std::max(g.last_ms, start_ms);
  }
  flush();
}

std::vector<key_call> key_calls_since(const std::string& ledger_path, std::int64_t since_ms, std::int64_t until_ms,
                                     bool with_users) {
  std::error_code ec;
  if (!std::filesystem::exists(ledger_path, ec)) return {};
  reader db(ledger_path);
  statement st(db,
               "SELECT client_key_id, start_ms, total_tokens, CASE WHEN ?3 THEN \"user\" END FROM calls "
               "WHERE start_ms >= ?1 AND start_ms < ?2 AND ((client_key_id IS NOT NULL AND client_key_id <> '') OR "
               "(?3 AND \"user\" IS NOT NULL AND \"user\" <> '')) AND (error_kind IS NULL OR error_kind = "
               "'client_aborted' OR (error_kind LIKE 'upstream_%' AND error_kind <> 'upstream_key_missing')) "
               "ORDER BY start_ms");
  st.bind(1, since_ms);
  st.bind(2, until_ms);
  st.bind(3, static_cast<std::int64_t>(with_users ? 1 : 0));
  std::vector<key_call> out;
  while (st.step()) out.push_back({st.text(0).value_or(""), st.i64(1), st.i64(2), st.text(3).value_or("")});
  return out;
}

std::size_t for_each_stated_cost(const std::string& ledger_path, std::int64_t since_ms, std::int64_t until_ms,
                                 const std::function<void(const stated_cost_row&)>& fn) {
  std::error_code ec;
  if (!std::filesystem::exists(ledger_path, ec)) return 0;
  reader db(ledger_path);
  statement st(db,
               "SELECT upstream, stream, requested_model, prompt_tokens - cached_tokens, completion_tokens, cost_usd, "
               "provider FROM calls WHERE start_ms >= ?1 AND start_ms < ?2 AND priced = 1 AND price_model IS NULL "
               "AND usage_source = 'upstream' AND upstream IS NOT NULL ORDER BY start_ms");
  st.bind(1, since_ms);
  st.bind(2, until_ms);
  std::size_t n = 0;
  for (; st.step(); ++n) {
    const std::string upstream = st.text(0).value_or(""), model = st.text(2).value_or(""),
                      provider = st.text(6).value_or("");
    fn({upstream, st.i64(1) != 0, model, st.i64(3), st.i64(4), st.real(5), provider});
  }
  return n;
}

}  // namespace tollgate
