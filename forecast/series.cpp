// The series CSV reader, horizon parsing and the PROTOCOL.md gap filling. Called by the
// backtest tool and the tests; the proxy builds series from its own buckets instead.
#include "forecast/series.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

namespace tollgate::forecast {
namespace {

template <typename T>
bool parse_number(std::string_view s, T& out) noexcept {
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

bool read_int(std::string_view s, std::size_t& pos, std::size_t digits, int& out) noexcept {
  if (pos + digits > s.size()) return false;
  const auto [p, ec] = std::from_chars(s.data() + pos, s.data() + pos + digits, out);
  if (ec != std::errc() || p != s.data() + pos + digits) return false;
  pos += digits;
  return true;
}

}  // namespace

std::optional<std::int64_t> parse_iso_ms(std::string_view s) noexcept {
  std::size_t pos = 0;
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, se = 0;
  if (!read_int(s, pos, 4, y) || pos >= s.size() || s[pos++] != '-' || !read_int(s, pos, 2, mo) ||
      pos >= s.size() || s[pos++] != '-' || !read_int(s, pos, 2, d))
    return std::nullopt;
  if (mo < 1 || mo > 12 || d < 1 || d > 31) return std::nullopt;
  double frac = 0.0;
  std::int64_t offset_s = 0;
  if (pos < s.size() && (s[pos] == 'T' || s[pos] == 't' || s[pos] == ' ')) {
    ++pos;
    if (!read_int(s, pos, 2, h) || pos >= s.size() || s[pos++] != ':' || !read_int(s, pos, 2, mi))
      return std::nullopt;
    if (pos < s.size() && s[pos] == ':') {
      ++pos;
      if (!read_int(s, pos, 2, se)) return std::nullopt;
    }
    if (pos < s.size() && (s[pos] == '.' || s[pos] == ',')) {
      double scale = 0.1;
      for (++pos; pos < s.size() && s[pos] >= '0' && s[pos] <= '9'; ++pos, scale /= 10) frac += (s[pos] - '0') * scale;
    }
    if (pos < s.size() && (s[pos] == 'Z' || s[pos] == 'z')) {
      ++pos;
    } else if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
      const int sign = s[pos++] == '-' ? -1 : 1;
      int oh = 0, om = 0;
      if (!read_int(s, pos, 2, oh)) return std::nullopt;
      if (pos < s.size() && s[pos] == ':') ++pos;
      if (pos < s.size() && !read_int(s, pos, 2, om)) return std::nullopt;
      offset_s = sign * (oh * 3600 + om * 60);
    }
  }
  if (pos != s.size()) return std::nullopt;
  const std::int64_t secs = days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) * 86400 +
                            h * 3600 + mi * 60 + se - offset_s;
  return secs * 1000 + static_cast<std::int64_t>(std::floor(frac * 1000.0));
}

namespace {

// Unix seconds; "1736121600.0" too (pandas writes a float column so), if it is a whole second;
// or an ISO 8601 / RFC 3339 time of a whole second (a spreadsheet's export).
bool parse_timestamp(std::string_view s, std::int64_t& out) noexcept {
  if (parse_number(s, out)) return true;
  double d = 0.0;
  if (parse_number(s, d)) {
    if (!(std::fabs(d) < 1e15) || d != std::floor(d)) return false;
    out = static_cast<std::int64_t>(d);
    return true;
  }
  const auto ms = parse_iso_ms(s);
  if (!ms || *ms % 1000 != 0) return false;
  out = *ms / 1000;
  return true;
}

}  // namespace

std::vector<std::string> split_csv(std::string_view line) {
  std::vector<std::string> out;
  std::size_t i = 0;
  for (;;) {
    std::string field;
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    if (i < line.size() && line[i] == '"') {
      for (++i; i < line.size(); ++i) {
        if (line[i] != '"') {
          field += line[i];
        } else if (i + 1 < line.size() && line[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          ++i;
          break;
        }
      }
      // Anything between the closing quote and the next comma (not RFC 4180) is kept.
      while (i < line.size() && line[i] != ',') field += line[i++];
    } else {
      const std::size_t comma = std::min(line.find(',', i), line.size());
      field.assign(line.substr(i, comma - i));
      i = comma;
    }
    out.emplace_back(trim_blanks(field));
    if (i >= line.size()) return out;
    ++i;  // the comma
  }
}

std::string_view trim_blanks(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

std::string printable(std::string_view cell) {
  std::string out;
  for (const char c : cell.substr(0, 40)) out += static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? '?' : c;
  if (cell.size() > 40) out += "...";
  return out;
}

std::size_t series::missing_count() const noexcept {
  return static_cast<std::size_t>(std::count_if(values.begin(), values.end(), is_missing));
}

void skip_bom(std::istream& in) {
  if (in.peek() != 0xEF) return;
  char b[3] = {};
  in.read(b, 3);
  if (in.gcount() == 3 && b[1] == '\xBB' && b[2] == '\xBF') return;
  in.clear();
  in.seekg(0);
}

std::vector<std::string> csv_header(std::istream& in) {
  std::string line;
  std::vector<std::string> names;
  skip_bom(in);
  if (std::getline(in, line))
    names = split_csv(line);
  return names;
}

series_read read_series_csv(std::istream& in, std::string_view column) {
  series_read r;
  std::string line;
  skip_bom(in);
  if (!std::getline(in, line)) {
    r.error = "empty file (no header line)";
    return r;
  }
  const auto header = split_csv(line);
  if (header.empty() || header[0] != "timestamp") {
    r.error = "line 1: column 0 must be `timestamp`";
    return r;
  }
  const auto col_it = std::find(header.begin(), header.end(), column);
  if (col_it == header.end() || col_it == header.begin()) {
    r.error = "line 1: no value column `" + std::string(column) + "`";
    return r;
  }
  const std::size_t col = static_cast<std::size_t>(col_it - header.begin());

  series s;
  std::vector<std::int64_t> ts;
  std::vector<std::size_t> row_line;  // file line of each row, for messages (blank lines skipped)
  std::size_t line_no = 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (trim_blanks(line).empty()) continue;
    const auto fields = split_csv(line);
    std::int64_t t = 0;
    if (!parse_timestamp(fields[0], t)) {
      r.error = "line " + std::to_string(line_no) + ": bad timestamp `" + printable(fields[0]) +
                "` (expected unix seconds or an RFC 3339 time of a whole second, such as 2026-01-01T00:00:00Z)";
      return r;
    }
    double v = missing;
    if (col < fields.size() && !fields[col].empty()) {
      if (!parse_number(fields[col], v) || !std::isfinite(v)) {
        r.error = "line " + std::to_string(line_no) + ": bad value `" + printable(fields[col]) + "`";
        return r;
      }
    }
    ts.push_back(t);
    row_line.push_back(line_no);
    s.values.push_back(v);
  }
  if (ts.size() < 2) {
    r.error = "need at least two data rows";
    return r;
  }
  const std::int64_t b = ts[1] - ts[0];
  if (b <= 0 || 86400 % b != 0) {
    r.error = "line " + std::to_string(row_line[1]) + ": bin width " + std::to_string(b) +
              " s (from the first two rows) must be positive and divide 86400" +
              (b <= 0 ? ": rows must be in ascending time order"
                      : b % 1000 == 0 && 86400 % (b / 1000) == 0
                            ? ": timestamps are Unix seconds, these look like milliseconds"
                            : "");
    return r;
  }
  for (std::size_t i = 1; i < ts.size(); ++i) {
    if (ts[i] - ts[i - 1] != b) {
      r.error = "line " + std::to_string(row_line[i]) + ": timestamp step differs from " +
                std::to_string(b) + " s (rows must be contiguous)";
      return r;
    }
  }
  if (s.missing_count() == s.values.size()) {
    r.error = "column `" + std::string(column) + "` has no value";
    return r;
  }
  s.start_s = ts[0];
  s.bin_s = b;
  r.data = std::move(s);
  return r;
}

std::optional<std::int64_t> parse_duration(std::string_view text) noexcept {
  text = trim_blanks(text);
  if (text.size() < 2) return std::nullopt;
  std::int64_t unit = 0;
  switch (text.back()) {
    case 's': unit = 1; break;
    case 'm': unit = 60; break;
    case 'h': unit = 3600; break;
    case 'd': unit = 86400; break;
    default: return std::nullopt;
  }
  std::int64_t count = 0;
  if (!parse_number(text.substr(0, text.size() - 1), count) || count <= 0) return std::nullopt;
  if (count > std::numeric_limits<std::int64_t>::max() / unit) return std::nullopt;  // would overflow
  return count * unit;
}

std::vector<double> fill_missing(const std::vector<double>& y, std::size_t m) {
  std::vector<double> x(y.size(), 0.0);
  double first = 0.0;
  for (double v : y)
    if (!is_missing(v)) {
      first = v;
      break;
    }
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (!is_missing(y[i])) x[i] = y[i];
    else if (i >= m) x[i] = x[i - m];
    else if (i > 0) x[i] = x[i - 1];
    else x[i] = first;
  }
  return x;
}

}  // namespace tollgate::forecast
