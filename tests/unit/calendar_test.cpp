// Tests of the calendar windows (proxy/core/calendar.cpp) in UTC and in zones with DST and odd
// offsets, and of the config keys that choose them (timezone, forecast.*).
#include <catch2/catch.hpp>

#include <ctime>

#include "core/calendar.hpp"
#include "core/config.hpp"

using namespace tollgate;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

std::int64_t utc(int y, int mo, int d, int h = 0, int mi = 0) {
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  return static_cast<std::int64_t>(timegm(&tm));
}

struct span {
  std::int64_t start, end;
  bool operator==(const span& o) const { return start == o.start && end == o.end; }
};
std::ostream& operator<<(std::ostream& os, const span& s) { return os << "[" << s.start << ", " << s.end << ")"; }

span window(const calendar& c, calendar_period p, std::int64_t now) {
  auto w = c.window(p, now);
  return {w.start_s, w.end_s};
}

std::string load_error(const std::string& yaml) {
  try {
    load_config_string(yaml, "test.yaml");
  } catch (const config_error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("calendar: windows in UTC", "[calendar]") {
  calendar c("UTC");
  const std::int64_t now = utc(2024, 2, 29, 13, 45);  // a Thursday in a leap February
  CHECK(window(c, calendar_period::hour, now) == span{utc(2024, 2, 29, 13), utc(2024, 2, 29, 14)});
  CHECK(window(c, calendar_period::day, now) == span{utc(2024, 2, 29), utc(2024, 3, 1)});
  CHECK(window(c, calendar_period::week, now) == span{utc(2024, 2, 26), utc(2024, 3, 4)});
  CHECK(window(c, calendar_period::month, now) == span{utc(2024, 2, 1), utc(2024, 3, 1)});

  SECTION("the last second of a year belongs to it; the next one starts the next month") {
    const std::int64_t last = utc(2025, 1, 1) - 1;
    CHECK(window(c, calendar_period::month, last) == span{utc(2024, 12, 1), utc(2025, 1, 1)});
    CHECK(window(c, calendar_period::month, last + 1) == span{utc(2025, 1, 1), utc(2025, 2, 1)});
    CHECK(window(c, calendar_period::hour, last) == span{utc(2024, 12, 31, 23), utc(2025, 1, 1)});
  }
}

TEST_CASE("calendar: America/New_York across the spring-forward day", "[calendar]") {
  calendar c("America/New_York");
  // 2025-03-09: 02:00 EST jumps to 03:00 EDT (07:00Z). Local midnights: 05:00Z, then 04:00Z.
  const std::int64_t morning = utc(2025, 3, 9, 12);
  CHECK(window(c, calendar_period::day, morning) == span{utc(2025, 3, 9, 5), utc(2025, 3, 10, 4)});
  CHECK(window(c, calendar_period::day, morning).end - window(c, calendar_period::day, morning).start == 23 * 3600);
  CHECK(window(c, calendar_period::hour, utc(2025, 3, 9, 6, 30)) == span{utc(2025, 3, 9, 6), utc(2025, 3, 9, 7)});
  CHECK(window(c, calendar_period::hour, utc(2025, 3, 9, 7, 30)) == span{utc(2025, 3, 9, 7), utc(2025, 3, 9, 8)});
  CHECK(window(c, calendar_period::month, morning) == span{utc(2025, 3, 1, 5), utc(2025, 4, 1, 4)});
  CHECK(window(c, calendar_period::week, morning) == span{utc(2025, 3, 3, 5), utc(2025, 3, 10, 4)});
}

TEST_CASE("calendar: America/New_York across the fall-back day", "[calendar]") {
  calendar c("America/New_York");
  // 2025-11-02: 02:00 EDT falls back to 01:00 EST (06:00Z); local 01:xx happens twice.
  CHECK(window(c, calendar_period::day, utc(2025, 11, 2, 12)) == span{utc(2025, 11, 2, 4), utc(2025, 11, 3, 5)});
  SECTION("the repeated local hour is two windows") {
    CHECK(window(c, calendar_period::hour, utc(2025, 11, 2, 5, 30)) == span{utc(2025, 11, 2, 5), utc(2025, 11, 2, 6)});
    CHECK(window(c, calendar_period::hour, utc(2025, 11, 2, 6, 30)) == span{utc(2025, 11, 2, 6), utc(2025, 11, 2, 7)});
  }
  SECTION("the month ends at local midnight in EST") {
    CHECK(window(c, calendar_period::month, utc(2025, 11, 30, 23)) == span{utc(2025, 11, 1, 4), utc(2025, 12, 1, 5)});
    CHECK(window(c, calendar_period::month, utc(2025, 12, 1, 4, 59)).start == utc(2025, 11, 1, 4));
    CHECK(window(c, calendar_period::month, utc(2025, 12, 1, 5)).start == utc(2025, 12, 1, 5));
  }
}

TEST_CASE("calendar: zones with quarter-hour offsets and half-hour DST", "[calendar]") {
  SECTION("Asia/Kathmandu (+05:45): local hours start at :15 UTC") {
    calendar c("Asia/Kathmandu");
    CHECK(window(c, calendar_period::hour, utc(2025, 1, 6, 0, 20)) == span{utc(2025, 1, 6, 0, 15), utc(2025, 1, 6, 1, 15)});
    CHECK(window(c, calendar_period::day, utc(2025, 1, 6, 0, 20)) == span{utc(2025, 1, 5, 18, 15), utc(2025, 1, 6, 18, 15)});
  }
  SECTION("Australia/Lord_Howe: a 30-minute fall-back cuts the local hour") {
    calendar c("Australia/Lord_Howe");
    // 2025-04-06 02:00 +11:00 becomes 01:30 +10:30, at 2025-04-05T15:00Z.
    CHECK(window(c, calendar_period::hour, utc(2025, 4, 5, 14, 45)) == span{utc(2025, 4, 5, 14), utc(2025, 4, 5, 15)});
    CHECK(window(c, calendar_period::hour, utc(2025, 4, 5, 15, 10)) == span{utc(2025, 4, 5, 15), utc(2025, 4, 5, 15, 30)});
  }
}

TEST_CASE("calendar: an unknown zone is refused with the reason", "[calendar]") {
  CHECK_THROWS_WITH(calendar("Mars/Olympus_Mons"), Contains("unknown timezone 'Mars/Olympus_Mons'"));
  CHECK(timezone_problem("Europe/Paris").empty());
  CHECK(timezone_problem("UTC").empty());
  CHECK_FALSE(timezone_problem("").empty());
  CHECK(to_string(calendar_period::month) == "month");
}

TEST_CASE("config: timezone and the forecast section", "[config][calendar]") {
  SECTION("defaults") {
    config c = load_config_string("");
    CHECK(c.timezone == "UTC");
    CHECK(c.forecast.enabled);
    CHECK(c.forecast.refresh_interval == std::chrono::seconds(60));
    CHECK(c.forecast.history_days == 14);
  }
  SECTION("every key maps to its field") {
    config c = load_config_string(
        "timezone: America/New_York\nforecast:\n  enabled: false\n  refresh_interval: 30s\n  history_days: 3\n");
    CHECK(c.timezone == "America/New_York");
    CHECK_FALSE(c.forecast.enabled);
    CHECK(c.forecast.refresh_interval == std::chrono::seconds(30));
    CHECK(c.forecast.history_days == 3);
  }
  SECTION("an unknown timezone names file:line") {
    CHECK_THAT(load_error("listen: 127.0.0.1:8080\ntimezone: Europe/Pariss\n"),
               StartsWith("test.yaml:2: timezone: unknown timezone 'Europe/Pariss'"));
  }
  SECTION("bad forecast values name file:line") {
    CHECK_THAT(load_error("forecast:\n  history_days: 0\n"), StartsWith("test.yaml:2: forecast.history_days:"));
    CHECK_THAT(load_error("forecast:\n  history_days: 61\n"), StartsWith("test.yaml:2: forecast.history_days:"));
    CHECK_THAT(load_error("forecast:\n  refresh_interval: 2h\n"), StartsWith("test.yaml:2: forecast.refresh_interval:"));
    CHECK_THAT(load_error("forecast:\n  enable: true\n"), Contains("did you mean 'enabled'"));
  }
}
