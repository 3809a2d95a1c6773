// Warm start of the traffic aggregator from the ledger (ledger_history.hpp): one grouped query
// on a read-only connection, run by the server before the listeners open.
#include "ledger/ledger_history.hpp"

#include <sqlite3.h>

#include <filesystem>
#include <stdexcept>

#include "core/aggregator.hpp"

namespace tollgate {

history_load load_ledger_history(const std::string& path, std::int64_t since_ms, aggregator& agg, std::int64_t until_ms) {
  history_load out;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return out;
  sqlite3* db = nullptr;
  auto fail = [&](const std::string& what) {
    std::string msg = "ledger " + path + ": cannot read history: " + what;
    sqlite3_close(db);
    return std::runtime_error(msg);
  };
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) throw fail(db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  sqlite3_busy_timeout(db, 5000);
  // Integer division keeps the minute in SQLite; start_ms is indexed (calls_start_ms).
  static const char* kSql =
      "SELECT start_ms / 60000, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd), price_model "
      "FROM calls WHERE start_ms >= ?1 AND start_ms < ?2 GROUP BY 1, price_model ORDER BY 1";
  sqlite3_stmt* stmt = nullptr;
  rc = sqlite3_prepare_v2(db, kSql, -1, &stmt, nullptr);
  if (rc != SQLITE_OK) throw fail(sqlite3_errmsg(db));
  sqlite3_bind_int64(stmt, 1, since_ms);
  sqlite3_bind_int64(stmt, 2, until_ms);
  std::int64_t last_minute = aggregator::no_data;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    std::int64_t minute = sqlite3_column_int64(stmt, 0);
    traffic_bucket b{static_cast<double>(sqlite3_column_int64(stmt, 1)), sqlite3_column_double(stmt, 2),
                     sqlite3_column_double(stmt, 3), sqlite3_column_double(stmt, 4)};
    const unsigned char* model = sqlite3_column_text(stmt, 5);
    agg.add(minute, model ? reinterpret_cast<const char*>(model) : "", b);
    out.rows += 1;
    out.calls += static_cast<std::uint64_t>(b.requests);
    if (minute != last_minute) out.minutes += 1, last_minute = minute;
  }
  std::string err = rc == SQLITE_DONE ? std::string() : sqlite3_errmsg(db);
  sqlite3_finalize(stmt);
  if (!err.empty()) throw fail(err);
  if (until_ms != std::numeric_limits<std::int64_t>::max()) {
    rc = sqlite3_prepare_v2(db, "SELECT COUNT(*), MAX(start_ms) FROM calls WHERE start_ms >= ?", -1, &stmt, nullptr);
    if (rc != SQLITE_OK) throw fail(sqlite3_errmsg(db));
    sqlite3_bind_int64(stmt, 1, until_ms);
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      out.future_rows = static_cast<std::uint64_t>(sqlite3_column_int64(stmt, 0));
      out.latest_future_ms = sqlite3_column_int64(stmt, 1);
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db);
  return out;
}

}  // namespace tollgate
