// Calendar windows (the current hour, day, ISO week or month) in a configured IANA time zone,
// as Unix-second intervals. Used by the forecaster's spend gauges and by budgets. The zone
// rules come from the OS tz database (/usr/share/zoneinfo) through Howard Hinnant's date/tz.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace date {
class time_zone;
}

namespace tollgate {

enum class calendar_period : std::uint8_t { hour, day, week, month };
std::string_view to_string(calendar_period p) noexcept;

// [start_s, end_s) in Unix seconds (UTC).
struct time_window {
  std::int64_t start_s = 0;
  std::int64_t end_s = 0;
  std::int64_t length_s() const noexcept { return end_s - start_s; }
};

class calendar {
 public:
  // `timezone` is an IANA name ("UTC", "Europe/Paris"). Throws std::invalid_argument saying why
  // when the name is not in the tz database. "UTC" (and "Etc/UTC") need no tz database at all.
  explicit calendar(std::string_view timezone = "UTC");

  // The window of period `p` that contains `now_s`. Hours follow the local clock: across a
  // fall-back the repeated local hour is two separate windows; days and months are local
  // midnight to local midnight, so they last 23 or 25 hours across a DST change; weeks start on
  // Monday (ISO 8601).
  time_window window(calendar_period p, std::int64_t now_s) const noexcept;

  const std::string& timezone() const noexcept { return name_; }

  // Start of the local calendar day year-month-day as Unix seconds (UTC): local midnight, or the
  // first instant after it when a spring-forward skips midnight. Throws std::invalid_argument
  // when the date does not exist (2026-02-30, month 13).
  std::int64_t day_start(int year, unsigned month, unsigned day) const;
  // The local calendar date containing `t_s` (Unix seconds), as "YYYY-MM-DD".
  std::string local_date(std::int64_t t_s) const;

 private:
  const date::time_zone* zone_ = nullptr;  // nullptr: UTC
  std::string name_;
};

// "" when `name` names a zone of the tz database, else the reason (for a file:line error).
std::string timezone_problem(std::string_view name);

}  // namespace tollgate
