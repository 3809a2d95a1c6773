// Calendar windows in an IANA time zone (calendar.hpp): local-clock hour, day, week and month
// boundaries converted to UTC, with the DST gaps and overlaps resolved explicitly.
#include "core/calendar.hpp"

#include <date/tz.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace tollgate {

namespace {

using std::chrono::seconds;
using sys_s = date::sys_seconds;
using local_s = date::local_seconds;

bool is_utc_name(std::string_view n) { return n == "UTC" || n == "Etc/UTC"; }

// A local wall-clock instant as UTC. A local time skipped by a spring-forward gap maps to the
// transition (the first instant that exists after it); one repeated by a fall-back maps to its
// first occurrence, so a day starts at its first local midnight.
std::int64_t to_utc(const date::time_zone& z, local_s t) {
  auto info = z.get_info(t);
  if (info.result == date::local_info::nonexistent) return info.first.end.time_since_epoch().count();
  return (t.time_since_epoch() - info.first.offset).count();
}

// Start of the local day / ISO week / month containing local day `d`, and of the next one.
std::pair<date::local_days, date::local_days> local_span(calendar_period p, date::local_days d) {
  switch (p) {
    case calendar_period::week: {
      auto monday = d - date::days((date::weekday(d).iso_encoding() - 1));
      return {monday, monday + date::days(7)};
    }
    case calendar_period::month: {
      date::year_month_day ymd(d);
      auto ym = ymd.year() / ymd.month();
      auto next = ym + date::months(1);
      return {date::local_days(ym / 1), date::local_days(next / 1)};
    }
    default:
      return {d, d + date::days(1)};
  }
}

}  // namespace

std::string_view to_string(calendar_period p) noexcept {
  switch (p) {
    case calendar_period::hour: return "hour";
    case calendar_period::day: return "day";
    case calendar_period::week: return "week";
    case calendar_period::month: return "month";
  }
  return "day";
}

calendar::calendar(std::string_view timezone) : name_(timezone) {
  if (is_utc_name(timezone)) return;
  if (std::string why = timezone_problem(timezone); !why.empty()) throw std::invalid_argument(why);
  zone_ = date::locate_zone(timezone);
}

time_window calendar::window(calendar_period p, std::int64_t now_s) const noexcept {
  const sys_s now{seconds(now_s)};
  seconds offset{0};
  sys_s offset_begin = sys_s::min(), offset_end = sys_s::max();
  if (zone_ != nullptr) {
    try {
      auto info = zone_->get_info(now);
      offset = info.offset;
      offset_begin = info.begin;
      offset_end = info.end;
    } catch (...) {
      // Outside the range the tz database covers: fall back to UTC arithmetic below.
    }
  }
  const local_s local{now.time_since_epoch() + offset};
  if (p == calendar_period::hour) {
    // A local hour ends early or starts late when the offset changes inside it (Lord Howe's
    // 30-minute shifts); clipping to the offset's own validity interval handles every case.
    auto h = date::floor<std::chrono::hours>(local);
    sys_s start{h.time_since_epoch() - offset}, end{(h + std::chrono::hours(1)).time_since_epoch() - offset};
    start = std::max(start, offset_begin);
    end = std::min(end, offset_end);
    return {start.time_since_epoch().count(), end.time_since_epoch().count()};
  }
  auto [first, next] = local_span(p, date::floor<date::days>(local));
  if (zone_ == nullptr) {
    return {local_s(first).time_since_epoch().count(), local_s(next).time_since_epoch().count()};
  }
  try {
    return {to_utc(*zone_, local_s(first)), to_utc(*zone_, local_s(next))};
  } catch (...) {
    return {local_s(first).time_since_epoch().count() - offset.count(),
            local_s(next).time_since_epoch().count() - offset.count()};
  }
}

std::int64_t calendar::day_start(int year, unsigned month, unsigned day) const {
  const date::year_month_day ymd{date::year{year}, date::month{month}, date::day{day}};
  if (!ymd.ok())
    throw std::invalid_argument("no such date: " + std::to_string(year) + "-" + std::to_string(month) + "-" +
                                std::to_string(day));
  const local_s midnight{date::local_days(ymd)};
  if (zone_ == nullptr) return midnight.time_since_epoch().count();
  return to_utc(*zone_, midnight);
}

std::string calendar::local_date(std::int64_t t_s) const {
  const sys_s t{seconds(t_s)};
  seconds offset{0};
  if (zone_ != nullptr) {
    try {
      offset = zone_->get_info(t).offset;
    } catch (...) {
      // Outside the range the tz database covers: the UTC date.
    }
  }
  const date::year_month_day ymd{date::floor<date::days>(local_s{t.time_since_epoch() + offset})};
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02u", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()));
  return buf;
}

std::string timezone_problem(std::string_view name) {
  if (is_utc_name(name)) return {};
  if (name.empty()) return "timezone must not be empty (use an IANA name such as UTC or Europe/Paris)";
  try {
    date::locate_zone(name);
    return {};
  } catch (const std::exception&) {
    return "unknown timezone '" + std::string(name) +
           "': use an IANA name from the tz database, such as UTC, Europe/Paris or America/New_York";
  }
}

}  // namespace tollgate
