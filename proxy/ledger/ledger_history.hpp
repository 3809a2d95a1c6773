// Reading the ledger back at start-up: per-minute sums of recent calls, so the forecaster's
// aggregator is warm after a restart. A separate read-only SQLite connection; core stays
// SQLite-free.
#pragma once
#include <cstdint>
#include <limits>
#include <string>

namespace tollgate {

class aggregator;

struct history_load {
  std::size_t minutes = 0;  // distinct minutes with at least one call
  std::size_t rows = 0;     // (minute, price_model) groups read
  std::uint64_t calls = 0;  // calls they sum
  std::uint64_t future_rows = 0;        // rows at or after until_ms, left out
  std::int64_t latest_future_ms = 0;    // the latest of them
};

// Adds every call of the ledger at `path` with start_ms >= since_ms to `agg`, grouped by minute
// and price_model. A missing file or an empty ledger loads nothing. Throws std::runtime_error
// naming the file on a SQLite error (corrupt file, not a tollgate ledger).
// Rows at or after until_ms (dated in the future) are left out and counted: one row a month
// ahead would otherwise make the aggregator's "now" that month and drop every real minute.
history_load load_ledger_history(const std::string& path, std::int64_t since_ms, aggregator& agg,
                                 std::int64_t until_ms = std::numeric_limits<std::int64_t>::max());

}  // namespace tollgate
