// Series CSV reading, horizon parsing and the PROTOCOL.md gap filling.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>

#include "forecast/series.hpp"

using namespace tollgate::forecast;

TEST_CASE("series: reads the selected column, empty cells as missing", "[forecast]") {
  std::istringstream in("timestamp,a,b\n3600,1,10\n7200,,20\n10800,3, 30\n");
  const auto r = read_series_csv(in, "b");
  REQUIRE(r.data);
  CHECK(r.data->start_s == 3600);
  CHECK(r.data->bin_s == 3600);
  CHECK(r.data->values == std::vector<double>{10, 20, 30});

  std::istringstream in2("timestamp,a,b\n3600,1,10\n7200,,20\n10800,3, 30\n");
  const auto a = read_series_csv(in2, "a");
  REQUIRE(a.data);
  CHECK(a.data->missing_count() == 1);
  CHECK(std::isnan(a.data->values[1]));
  CHECK(a.data->values[2] == 3);
}

TEST_CASE("series: spreadsheet and pandas spellings of the same file", "[forecast]") {
  const std::vector<double> want{10, 20, 30};
  for (const char* text : {
           "\xEF\xBB\xBFtimestamp,a\n3600,10\n7200,20\n10800,30\n",                  // UTF-8 BOM (Excel)
           "\"timestamp\",\"a\"\n\"3600\",\"10\"\n\"7200\",\"20\"\n\"10800\",\"30\"\n",  // quoted
           "timestamp,a\r\n3600.0,10.0\r\n7200.0,20.0\r\n10800.0,30.0\r\n",          // CRLF, float seconds
           "timestamp,a\n3600,10\n\n7200,20\n10800,30",                                  // blank line, no final newline
           "timestamp,a\n1970-01-01T01:00:00Z,10\n1970-01-01 02:00:00,20\n1970-01-01T04:00:00+01:00,30\n",  // RFC 3339
       }) {
    std::istringstream in(text);
    const auto r = read_series_csv(in, "a");
    INFO(text);
    REQUIRE(r.data);
    CHECK(r.data->start_s == 3600);
    CHECK(r.data->values == want);
  }
  std::istringstream bom("\xEF\xBB\xBFtimestamp,a\n");
  CHECK(csv_header(bom) == std::vector<std::string>{"timestamp", "a"});
  std::istringstream half("timestamp,a\n3600.5,1\n7200,2\n");
  CHECK(read_series_csv(half, "a").error.find("line 2: bad timestamp `3600.5`") != std::string::npos);
  std::istringstream half_iso("timestamp,a\n1970-01-01T01:00:00.5Z,1\n1970-01-01T02:00:00Z,2\n");
  CHECK(read_series_csv(half_iso, "a").error.find("line 2: bad timestamp `1970-01-01T01:00:00.5Z` (expected unix seconds or an RFC 3339") !=
        std::string::npos);
  // Messages say what is wrong in a way one can act on, and quote a cell only in part.
  std::istringstream ms("timestamp,a\n1736121600000,1\n1736125200000,2\n");
  CHECK(read_series_csv(ms, "a").error.find("these look like milliseconds") != std::string::npos);
  std::istringstream down("timestamp,a\n7200,1\n3600,2\n");
  CHECK(read_series_csv(down, "a").error.find("ascending time order") != std::string::npos);
  std::istringstream junk("timestamp,a\n0,1\n3600," + std::string(100, 'x') + "\n");
  const auto long_cell = read_series_csv(junk, "a").error;
  CHECK(long_cell.find("line 3: bad value `" + std::string(40, 'x') + "...`") != std::string::npos);
}

TEST_CASE("series: CSV fields as RFC 4180 quotes them", "[forecast]") {
  using v = std::vector<std::string>;
  CHECK(split_csv("a,b,c") == v{"a", "b", "c"});
  CHECK(split_csv("1,\"retry, 5\",7\r") == v{"1", "retry, 5", "7"});    // a comma inside quotes
  CHECK(split_csv("\"a \"\"b\"\"\", c ,") == v{"a \"b\"", "c", ""});  // doubled quotes, spaces, trailing comma
  CHECK(split_csv("") == v{""});
  CHECK(split_csv("\"open, never closed") == v{"open, never closed"});
  // A series file whose other column holds a quoted comma: the value column is still found.
  std::istringstream in("timestamp,comment,\"a,b\"\n3600,\"ok, 7\",10\n7200,\"\",20\n");
  const auto r = read_series_csv(in, "a,b");
  REQUIRE(r.data);
  CHECK(r.data->values == std::vector<double>{10, 20});
}

TEST_CASE("series: rejects files that break the protocol", "[forecast]") {
  SECTION("unknown column") {
    std::istringstream in("timestamp,a\n0,1\n60,2\n");
    CHECK_FALSE(read_series_csv(in, "b").data);
  }
  SECTION("skipped row") {
    std::istringstream in("timestamp,a\n0,1\n\n60,2\n180,3\n");
    const auto r = read_series_csv(in, "a");
    CHECK_FALSE(r.data);
    CHECK(r.error.find("contiguous") != std::string::npos);
    CHECK(r.error.find("line 5:") == 0);  // the file's line, blank lines counted
  }
  SECTION("bin width not dividing a day") {
    std::istringstream in("timestamp,a\n0,1\n7,2\n");
    CHECK_FALSE(read_series_csv(in, "a").data);
  }
  SECTION("no value at all") {
    std::istringstream in("timestamp,a\n0,\n60,\n");
    CHECK_FALSE(read_series_csv(in, "a").data);
  }
  SECTION("not a number") {
    std::istringstream in("timestamp,a\n0,1\n60,x\n");
    CHECK_FALSE(read_series_csv(in, "a").data);
  }
}

TEST_CASE("series: horizon labels", "[forecast]") {
  CHECK(parse_duration("1h") == 3600);
  CHECK(parse_duration("24h") == 86400);
  CHECK(parse_duration("10m") == 600);
  CHECK(parse_duration("2d") == 172800);
  CHECK(parse_duration("90s") == 90);
  CHECK_FALSE(parse_duration("h"));
  CHECK_FALSE(parse_duration("0h"));
  CHECK_FALSE(parse_duration("1w"));
  CHECK_FALSE(parse_duration("-1h"));
  CHECK_FALSE(parse_duration("9223372036854775807h"));  // would overflow the seconds
  CHECK(parse_duration("9223372036854775807s") == 9223372036854775807);
}

TEST_CASE("series: gaps are filled from a day earlier, then the previous bin", "[forecast]") {
  const double x = missing;
  // m = 3 bins per day.
  const std::vector<double> y{x, 2, 3, 4, x, 6, x, x, 9};
  const auto f = fill_missing(y, 3);
  CHECK(f == std::vector<double>{2, 2, 3, 4, 2, 6, 4, 2, 9});
}
