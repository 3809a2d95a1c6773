// Regular time series (fixed bin width, gaps allowed) and the series CSV reader of
// shared/data/series (PROTOCOL.md section 1). Pure: no I/O beyond std::istream.
#pragma once
#include <cmath>
#include <cstdint>
#include <istream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate::forecast {

inline constexpr double missing = std::numeric_limits<double>::quiet_NaN();
inline bool is_missing(double v) noexcept { return std::isnan(v); }

// One value per bin; bin i covers [start_s + i*bin_s, start_s + (i+1)*bin_s). NaN marks a
// missing bin (a collection gap), which is not the same as a real zero.
struct series {
  std::int64_t start_s = 0;  // unix seconds (UTC) of the start of bin 0
  std::int64_t bin_s = 60;   // bin width in seconds
  std::vector<double> values;

  std::size_t size() const noexcept { return values.size(); }
  std::int64_t timestamp(std::size_t i) const noexcept {
    return start_s + static_cast<std::int64_t>(i) * bin_s;
  }
  std::size_t missing_count() const noexcept;
};

// Result of parsing: the series or a message saying what is wrong (file:line style).
struct series_read {
  std::optional<series> data;
  std::string error;
};

// "2026-01-01", "2026-01-01T10:00:00Z", "2026-01-01 10:00:00.250+01:00" (ISO 8601 / RFC 3339;
// no offset = UTC) -> unix milliseconds; nullopt otherwise.
std::optional<std::int64_t> parse_iso_ms(std::string_view s) noexcept;

// Reads the CSV format of shared/data/series/README.md: header line, column 0 `timestamp`
// (unix seconds; an RFC 3339 time of a whole second is read too), the value column selected by name, empty cell = missing bin. Enforces the
// PROTOCOL.md rules: constant positive step, 86400 % step == 0, at least one value.
series_read read_series_csv(std::istream& in, std::string_view column);

// Skips a UTF-8 byte-order mark (Excel and PowerShell start files with one) at the stream's
// start. Called by the readers here and by the request-log reader.
void skip_bom(std::istream& in);

// A cell as quoted in a message: at most 40 characters, control characters as '?'.
std::string printable(std::string_view cell);

// `s` without the spaces and tabs around it and a trailing CR.
std::string_view trim_blanks(std::string_view s) noexcept;

// One CSV line split as RFC 4180 reads it: a field in double quotes may hold commas and doubled
// quotes (`""` is one `"`); spaces and tabs around a field, and a trailing CR, are not part of
// it. Used by every CSV reader of the tool (series files and request logs).
std::vector<std::string> split_csv(std::string_view line);

// Column names of the header line (for error messages).
std::vector<std::string> csv_header(std::istream& in);

// Parses a horizon label: integer followed by s, m, h or d ("10m", "1h", "24h"). Seconds.
std::optional<std::int64_t> parse_duration(std::string_view text) noexcept;

// The filled series of PROTOCOL.md section 3: a missing bin takes the value of the same bin
// one day (m bins) earlier, else the previous bin; a leading gap takes the first value.
std::vector<double> fill_missing(const std::vector<double>& y, std::size_t m);

}  // namespace tollgate::forecast
