// Tests of the finance reports (proxy/ledger/report.cpp, report_cli.cpp) against real ledger
// files written by the ledger writer: time parsing, spend groups, local days across DST and
// month ends, exact sums, CSV/JSON output, what-if re-pricing, warm-start rows and the CLI.
#include <algorithm>
#include <cmath>
#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <set>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "core/calendar.hpp"
#include "core/error.hpp"
#include "core/pricing.hpp"
#include "core/request_id.hpp"
#include "core/utf8.hpp"
#include "ledger/ledger.hpp"
#include "ledger/report.hpp"
#include "ledger/report_cli.hpp"
#include "scoped_env.hpp"

namespace {

using namespace tollgate;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using Catch::Matchers::EndsWith;
namespace fs = std::filesystem;

const std::string source_dir = TOLLGATE_SOURCE_DIR;

std::int64_t utc_ms(int y, int mo, int d, int h = 0, int mi = 0, int s = 0, int ms = 0) {
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  return static_cast<std::int64_t>(timegm(&tm)) * 1000 + ms;
}

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("tollgate-report-test-" + std::to_string(rd()) + "-" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

usage_record call(std::int64_t start_ms, const std::string& price_model, double cost_usd) {
  static int next_id = 0;
  usage_record r;
  r.request_id = "req-" + std::to_string(++next_id);
  r.start_ms = start_ms;
  r.route = route_kind::chat_completions;
  r.method = "POST";
  r.requested_model = price_model;
  r.served_model = price_model;
  r.price_model = price_model;
  r.priced = !price_model.empty();
  r.status = 200;
  r.source = usage_source::upstream;
  r.cost_usd = cost_usd;
  r.latency_ms = 10;
  return r;
}

usage_record with(usage_record r, const std::string& key, const std::string& team) {
  r.client_key_id = key;
  r.team = team;
  return r;
}

// A ledger file written through the real writer (so the schema is the real one).
struct sample_ledger {
  temp_dir dir;
  std::string path = dir.file("tollgate.db");
  std::vector<std::string> indexes;  // ledger.indexes
  void write(const std::vector<usage_record>& rows) {
    ledger_options o;
    o.path = path;
    o.indexes = indexes;
    ledger l(o);
    l.start();
    for (const auto& r : rows) {
      REQUIRE(l.reserve());
      l.submit(r);
    }
    l.flush();
    l.stop();
  }
};

// One value of a query on a separate connection, parameters bound in order.
using param = std::variant<std::int64_t, std::string>;
double sql_real(const std::string& path, const std::string& sql, const std::vector<param>& params) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  INFO(sql);
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const int n = static_cast<int>(i + 1);
    if (const auto* v = std::get_if<std::int64_t>(&params[i]))
      sqlite3_bind_int64(st, n, *v);
    else
      sqlite3_bind_text(st, n, std::get<std::string>(params[i]).c_str(), -1, SQLITE_TRANSIENT);
  }
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  const double v = sqlite3_column_double(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

std::vector<std::optional<std::string>> keys(std::initializer_list<const char*> ks) {
  std::vector<std::optional<std::string>> out;
  for (const char* k : ks) out.push_back(k ? std::optional<std::string>(k) : std::nullopt);
  return out;
}

const spend_row& row_with(const spend_report& r, const std::vector<std::optional<std::string>>& k) {
  for (const auto& row : r.rows)
    if (row.keys == k) return row;
  FAIL("no row with the given keys");
  return r.rows.front();
}

}  // namespace

TEST_CASE("report: time bounds accept dates, months and RFC 3339", "[report]") {
  const calendar paris("Europe/Paris");
  const calendar utc("UTC");

  SECTION("a date is local midnight as from and the end of that local day as to") {
    CHECK(parse_time_bound("2026-11-01", range_end::from, paris) == utc_ms(2026, 10, 31, 23));
    CHECK(parse_time_bound("2026-11-30", range_end::to, paris) == utc_ms(2026, 11, 30, 23));
    CHECK(parse_time_bound("2026-11-01", range_end::from, utc) == utc_ms(2026, 11, 1));
    CHECK(parse_time_bound("2026-12-31", range_end::to, utc) == utc_ms(2027, 1, 1));
  }
  SECTION("a date on a DST change day spans 23 or 25 hours") {
    const auto spring_from = parse_time_bound("2026-03-29", range_end::from, paris);
    const auto spring_to = parse_time_bound("2026-03-29", range_end::to, paris);
    CHECK(spring_from == utc_ms(2026, 3, 28, 23));
    CHECK(spring_to - spring_from == 23 * 3'600'000);
    const auto fall_from = parse_time_bound("2026-10-25", range_end::from, paris);
    CHECK(parse_time_bound("2026-10-25", range_end::to, paris) - fall_from == 25 * 3'600'000);
  }
  SECTION("a month is its local first instant up to the next month's") {
    const auto r = parse_month("2026-11", paris);
    CHECK(r.from_ms == utc_ms(2026, 10, 31, 23));
    CHECK(r.to_ms == utc_ms(2026, 11, 30, 23));
    CHECK(parse_month("2026-12", utc).to_ms == utc_ms(2027, 1, 1));
    CHECK(parse_time_bound("2026-03", range_end::to, paris) == utc_ms(2026, 3, 31, 22));
  }
  SECTION("RFC 3339 times honour Z, offsets and fractions, whatever the timezone") {
    CHECK(parse_time_bound("2026-11-01T10:00:00Z", range_end::from, paris) == utc_ms(2026, 11, 1, 10));
    CHECK(parse_time_bound("2026-11-01t10:00:00z", range_end::to, paris) == utc_ms(2026, 11, 1, 10));
    CHECK(parse_time_bound("2026-11-01 10:00:00+01:00", range_end::from, utc) == utc_ms(2026, 11, 1, 9));
    // an unencoded '+' in a URL query arrives as a space
    CHECK(parse_time_bound("2026-11-01T10:00:00 01:00", range_end::from, utc) == utc_ms(2026, 11, 1, 9));
    CHECK(parse_time_bound("2026-11-01T10:00:00-05:30", range_end::from, utc) == utc_ms(2026, 11, 1, 15, 30));
    CHECK(parse_time_bound("2026-11-01T00:30:00+01:00", range_end::from, utc) == utc_ms(2026, 10, 31, 23, 30));
    CHECK(parse_time_bound("2026-11-01T10:00:00.5Z", range_end::from, utc) == utc_ms(2026, 11, 1, 10, 0, 0, 500));
    CHECK(parse_time_bound("2026-11-01T10:00:00.123000Z", range_end::from, utc) == utc_ms(2026, 11, 1, 10, 0, 0, 123));
    CHECK(parse_time_bound(" 2026-11-01T10:00:00Z ", range_end::from, utc) == utc_ms(2026, 11, 1, 10));
  }
  SECTION("a fraction below the millisecond rounds up, to select exactly the rows at or after it") {
    CHECK(parse_time_bound("2026-11-01T10:00:00.1231Z", range_end::from, utc) == utc_ms(2026, 11, 1, 10, 0, 0, 124));
    CHECK(parse_time_bound("2026-11-01T10:00:00.1230000Z", range_end::to, utc) == utc_ms(2026, 11, 1, 10, 0, 0, 123));
  }
  SECTION("a leap second is the next minute's first instant") {
    CHECK(parse_time_bound("2016-12-31T23:59:60Z", range_end::from, utc) == utc_ms(2017, 1, 1));
  }
  SECTION("bad values are refused with the bound's name, the value and the reason") {
    const auto error = [&](const std::string& text, range_end end = range_end::from) {
      try {
        parse_time_bound(text, end, paris);
      } catch (const std::invalid_argument& e) {
        return std::string(e.what());
      }
      return std::string("accepted");
    };
    CHECK_THAT(error(""), Contains("from: ''") && Contains("empty"));
    CHECK_THAT(error("2026-13-01"), Contains("'2026-13-01'") && Contains("month must be 1-12"));
    CHECK_THAT(error("2026-02-30", range_end::to), Contains("to: '2026-02-30'") && Contains("no such day"));
    CHECK_THAT(error("2026-11-01T25:00:00Z"), Contains("hour must be 0-23"));
    CHECK_THAT(error("2026-11-01T10:00Z"), Contains("needs seconds"));
    CHECK_THAT(error("2026-11-01T10:00:00"), Contains("expected 'Z' or an offset"));
    CHECK_THAT(error("2026-11-01T10:00:00 1:00"), Contains("the offset's hours"));
    CHECK_THAT(error("2026-11-01T10:00:00Zjunk"), Contains("unexpected text"));
    CHECK_THAT(error("yesterday"), Contains("year must have 4 digits") && Contains("RFC 3339"));
    CHECK_THAT(error("2026-11-01T10:00:00."), Contains("digits after '.'"));
    CHECK_THROWS_WITH(parse_month("2026-11-01", paris), Contains("expected YYYY-MM"));
    CHECK_THROWS_WITH(parse_month("2026-1", paris), Contains("expected YYYY-MM"));
    CHECK_THROWS_WITH(parse_month("2026-00", paris), Contains("'2026-00'"));
    // A value's control bytes are shown, not cut at (what() is a C string), and a long one is cut.
    using namespace std::string_literals;
    CHECK_THROWS_WITH(parse_month("2026-1\0"s, paris), EndsWith("got '2026-1\\x00'"));
    CHECK_THAT(error("2026-11-01\n\x7f"), StartsWith("from: '2026-11-01\\x0A\\x7F' is not a valid time"));
    CHECK_THAT(error(std::string(300, '9')), StartsWith("from: '" + std::string(80, '9') + "...' is not"));
    CHECK(quote_value("caf\xC3\xA9", 4) == "'caf...'");  // never half a UTF-8 character
    CHECK(quote_value("caf\xC3\xA9") == "'caf\xC3\xA9'");
    CHECK(quote_value("caf\xC3\xA9!", 5) == "'caf\xC3\xA9...'");  // a whole character at the limit stays
    // utf8_prefix, the bound of every text the ledger keeps: between characters of 2, 3 and 4 bytes.
    CHECK(utf8_prefix("abc", 3) == "abc");
    CHECK(utf8_prefix("ab\xC3\xA9", 3) == "ab");
    CHECK(utf8_prefix("ab\xC3\xA9", 4) == "ab\xC3\xA9");
    CHECK(utf8_prefix("a\xE2\x82\xAC", 2) == "a");
    CHECK(utf8_prefix("a\xE2\x82\xAC", 3) == "a");
    CHECK(utf8_prefix("a\xF0\x9F\x98\x80z", 4) == "a");
    CHECK(utf8_prefix("a\xF0\x9F\x98\x80z", 5) == "a\xF0\x9F\x98\x80");
    CHECK(utf8_prefix("a\x80\x80\x80\x80\x80", 5).size() == 2);  // not UTF-8: at most 3 bytes back
  }
  SECTION("format_rfc3339_utc prints UTC with milliseconds only when needed") {
    CHECK(format_rfc3339_utc(utc_ms(2026, 10, 31, 23)) == "2026-10-31T23:00:00Z");
    CHECK(format_rfc3339_utc(utc_ms(2026, 11, 1, 10, 0, 0, 5)) == "2026-11-01T10:00:00.005Z");
    CHECK(format_rfc3339_utc(-1) == "1969-12-31T23:59:59.999Z");
    CHECK(parse_time_bound(format_rfc3339_utc(1'790'000'123'456), range_end::from, utc) == 1'790'000'123'456);
  }
}

TEST_CASE("report: group_by names are parsed in order, unknown or repeated ones refused", "[report]") {
  CHECK(parse_group_by("model, day") == std::vector<spend_group>{spend_group::model, spend_group::day});
  CHECK(parse_group_by("key,team,day,model").size() == 4);
  CHECK(parse_group_by("").empty());
  CHECK_THROWS_WITH(parse_group_by("day,color"),
                    Contains("unknown column 'color'") && Contains("day, model, team, key, user, tier or provider"));
  CHECK_THROWS_WITH(parse_group_by("day,model,day"), Contains("'day' given twice"));
  // instance: a column of the fleet ledger only.
  CHECK_THROWS_WITH(parse_group_by("model,instance"), Contains("'instance' is a column of the fleet ledger"));
  CHECK(parse_group_by("instance,day", true) == std::vector<spend_group>{spend_group::instance, spend_group::day});
  CHECK_THROWS_WITH(parse_group_by("color", true), Contains("day, model, team, key, user, tier, provider or instance"));
  CHECK(parse_group_by("user,day") == std::vector<spend_group>{spend_group::user, spend_group::day});
}

TEST_CASE("report: a refused call without usage is a request, not an unpriced one", "[report]") {
  // Older ledgers wrote priced = 0 on every row without usage (a 429, a 5xx): only a call with
  // usage and no price is unpriced.
  sample_ledger s;
  const auto t = utc_ms(2026, 11, 10, 12);
  auto unpriced = call(t, "", 0);
  unpriced.requested_model = unpriced.served_model = "mystery-1";
  unpriced.tokens = {100, 10, 0, 0, 0, 0};
  auto refused = call(t + 1, "", 0);
  refused.requested_model = refused.served_model = "gpt-4.1";
  refused.source = usage_source::none;
  refused.status = 429;
  s.write({unpriced, refused});
  const auto r = query_spend(s.path, {{utc_ms(2026, 11, 1), utc_ms(2026, 12, 1)}, {}, "UTC"});
  CHECK(r.total.requests == 2);
  CHECK(r.total.unpriced_requests == 1);
}

TEST_CASE("report: spend groups by model, team and key in the order given", "[report]") {
  sample_ledger s;
  const auto t = utc_ms(2026, 11, 10, 12);
  auto unpriced = call(t + 5, "", 0);
  unpriced.requested_model = "mystery-1";
  unpriced.served_model = "mystery-1-2026";
  unpriced.tokens = {100, 10, 0, 0, 0, 0};
  auto a = with(call(t, "gpt-4.1", 0.25), "app-prod", "web");
  a.tokens = {1000, 200, 300, 0, 0, 50};
  auto b = with(call(t + 1, "gpt-4.1", 0.5), "batch", "data");
  b.tokens = {2000, 100, 0, 0, 0, 0};
  auto c = with(call(t + 2, "claude-sonnet-4.5", 1.5), "app-prod", "web");
  c.tokens = {4000, 300, 1000, 500, 100, 0};
  auto d = with(call(t + 3, "claude-sonnet-4.5", 0.75), "", "");
  d.tokens = {10, 1, 0, 0, 0, 0};
  s.write({a, b, c, d, unpriced, call(utc_ms(2026, 12, 1), "gpt-4.1", 100)});
  const time_range nov{utc_ms(2026, 11, 1), utc_ms(2026, 12, 1)};

  SECTION("by model: the price-table entry, an unpriced call under its served model") {
    const auto r = query_spend(s.path, {nov, {spend_group::model}, "UTC"});
    REQUIRE(r.rows.size() == 3);
    CHECK(r.rows[0].keys == keys({"claude-sonnet-4.5"}));
    CHECK(r.rows[1].keys == keys({"gpt-4.1"}));
    CHECK(r.rows[2].keys == keys({"mystery-1-2026"}));
    const auto& sonnet = r.rows[0].figures;
    CHECK(sonnet.requests == 2);
    CHECK(sonnet.prompt_tokens == 4010);
    CHECK(sonnet.completion_tokens == 301);
    CHECK(sonnet.cached_tokens == 1000);
    CHECK(sonnet.cache_write_tokens == 500);
    CHECK(sonnet.cost_usd == 2.25);
    CHECK(r.rows[1].figures.reasoning_tokens == 50);
    CHECK(r.rows[2].figures.unpriced_requests == 1);
    CHECK(r.rows[2].figures.cost_usd == 0);
    CHECK(r.total.requests == 5);
    CHECK(r.total.unpriced_requests == 1);
    CHECK(r.total.cost_usd == 3.0);
  }
  SECTION("by tier: calls whose reply named none form the null group") {
    sample_ledger tiers;
    auto flex = call(t, "gpt-5", 0.25);
    flex.tokens.tier = service_tier::flex;
    auto batch = call(t + 1, "gpt-5", 0.5);
    batch.tokens.tier = service_tier::batch;
    auto plain = call(t + 2, "gpt-5", 1.0);
    plain.tokens.tier = service_tier::standard;
    tiers.write({flex, batch, plain, call(t + 3, "gpt-5", 2.0)});
    const auto r = query_spend(tiers.path, {nov, {spend_group::tier, spend_group::model}, "UTC"});
    REQUIRE(r.rows.size() == 4);
    CHECK(r.rows[0].keys == std::vector<std::optional<std::string>>{std::nullopt, "gpt-5"});
    CHECK(r.rows[1].keys == keys({"batch", "gpt-5"}));
    CHECK(r.rows[2].keys == keys({"default", "gpt-5"}));
    CHECK(r.rows[3].keys == keys({"flex", "gpt-5"}));
    CHECK(r.rows[3].figures.cost_usd == 0.25);
    CHECK(parse_group_by("tier,day") == std::vector<spend_group>{spend_group::tier, spend_group::day});
  }
  SECTION("by provider: what each of a relay's providers served, calls naming none in the null group") {
    sample_ledger routes;
    auto cheap = call(t, "", 0.125);
    cheap.served_model = "qwen/qwen3-235b-a22b";
    cheap.provider = "DeepInfra";
    auto dear = call(t + 1, "", 4.0);
    dear.served_model = "qwen/qwen3-235b-a22b";
    dear.provider = "Together";
    auto again = call(t + 2, "", 0.25);
    again.served_model = "qwen/qwen3-235b-a22b";
    again.provider = "DeepInfra";
    routes.write({cheap, dear, again, call(t + 3, "gpt-5", 2.0)});
    const auto r = query_spend(routes.path, {nov, {spend_group::provider, spend_group::model}, "UTC"});
    REQUIRE(r.rows.size() == 3);
    CHECK(r.rows[0].keys == std::vector<std::optional<std::string>>{std::nullopt, "gpt-5"});
    CHECK(r.rows[1].keys == keys({"DeepInfra", "qwen/qwen3-235b-a22b"}));
    CHECK(r.rows[1].figures.requests == 2);
    CHECK(r.rows[1].figures.cost_usd == 0.375);
    CHECK(r.rows[2].keys == keys({"Together", "qwen/qwen3-235b-a22b"}));
    CHECK(r.rows[2].figures.cost_usd == 4.0);
    CHECK(parse_group_by("provider") == std::vector<spend_group>{spend_group::provider});
  }
  SECTION("by user: each end user a request named, calls naming none in the null group") {
    sample_ledger users;
    auto a = call(t, "gpt-5", 0.5);
    a.user = "end-user-1";
    auto b = call(t + 1, "gpt-5", 0.25);
    b.user = "end-user-2";
    auto c = call(t + 2, "gpt-5", 0.125);
    c.user = "end-user-1";
    users.write({a, b, c, call(t + 3, "gpt-5", 2.0)});
    const auto r = query_spend(users.path, {nov, {spend_group::user}, "UTC"});
    REQUIRE(r.rows.size() == 3);
    CHECK(r.rows[0].keys == keys({nullptr}));
    CHECK(r.rows[0].figures.cost_usd == 2.0);
    CHECK(r.rows[1].keys == keys({"end-user-1"}));
    CHECK(r.rows[1].figures.requests == 2);
    CHECK(r.rows[1].figures.cost_usd == 0.625);
    CHECK(r.rows[2].keys == keys({"end-user-2"}));
    CHECK(r.total.cost_usd == 2.875);
  }
  SECTION("by key and by team: calls without one form a null group, sorted first") {
    const auto by_key = query_spend(s.path, {nov, {spend_group::key}, "UTC"});
    REQUIRE(by_key.rows.size() == 3);
    CHECK(by_key.rows[0].keys == keys({nullptr}));
    CHECK(by_key.rows[0].figures.requests == 2);
    CHECK(by_key.rows[1].keys == keys({"app-prod"}));
    CHECK(by_key.rows[1].figures.cost_usd == 1.75);
    CHECK(by_key.rows[2].keys == keys({"batch"}));
    const auto by_team = query_spend(s.path, {nov, {spend_group::team}, "UTC"});
    REQUIRE(by_team.rows.size() == 3);
    CHECK(by_team.rows[0].keys == keys({nullptr}));
    CHECK(row_with(by_team, keys({"web"})).figures.prompt_tokens == 5000);
  }
  SECTION("two columns in either order: the columns and the sort follow the order given") {
    const auto team_model = query_spend(s.path, {nov, {spend_group::team, spend_group::model}, "UTC"});
    REQUIRE(team_model.rows.size() == 5);
    CHECK(team_model.rows[0].keys == keys({nullptr, "claude-sonnet-4.5"}));
    CHECK(team_model.rows[1].keys == keys({nullptr, "mystery-1-2026"}));
    CHECK(team_model.rows[2].keys == keys({"data", "gpt-4.1"}));
    CHECK(team_model.rows[3].keys == keys({"web", "claude-sonnet-4.5"}));
    CHECK(team_model.rows[4].keys == keys({"web", "gpt-4.1"}));
    const auto model_team = query_spend(s.path, {nov, {spend_group::model, spend_group::team}, "UTC"});
    REQUIRE(model_team.rows.size() == 5);
    CHECK(model_team.rows[0].keys == keys({"claude-sonnet-4.5", nullptr}));
    CHECK(model_team.rows[1].keys == keys({"claude-sonnet-4.5", "web"}));
    CHECK(model_team.rows[4].keys == keys({"mystery-1-2026", nullptr}));
  }
  SECTION("all four columns: every group once, integer figures adding up to the total") {
    const auto r = query_spend(
        s.path, {nov, {spend_group::key, spend_group::team, spend_group::model, spend_group::day}, "UTC"});
    REQUIRE(r.rows.size() == 5);
    std::int64_t requests = 0, prompt = 0;
    for (const auto& row : r.rows) {
      REQUIRE(row.keys.size() == 4);
      CHECK(row.keys[3] == "2026-11-10");
      requests += row.figures.requests;
      prompt += row.figures.prompt_tokens;
    }
    CHECK(requests == r.total.requests);
    CHECK(prompt == r.total.prompt_tokens);
  }
  SECTION("no columns: the total only; an empty range: zero") {
    const auto r = query_spend(s.path, {nov, {}, "UTC"});
    CHECK(r.rows.empty());
    CHECK(r.total.requests == 5);
    const auto none = query_spend(s.path, {{utc_ms(2025, 1, 1), utc_ms(2025, 2, 1)}, {spend_group::model}, "UTC"});
    CHECK(none.rows.empty());
    CHECK(none.total.requests == 0);
    CHECK(none.total.cost_usd == 0);
  }
  SECTION("an unbounded range covers the whole ledger") {
    CHECK(query_spend(s.path, {{}, {}, "UTC"}).total.requests == 6);
  }
  SECTION("a missing ledger or a bad timezone is an error naming it") {
    CHECK_THROWS_WITH(query_spend(s.dir.file("nope.db"), {nov, {}, "UTC"}), Contains("nope.db") && Contains("no such file"));
    CHECK_THROWS_AS(query_spend(s.path, {nov, {spend_group::day}, "Mars/Olympus"}), std::invalid_argument);
  }
}

TEST_CASE("report: every sum equals the ledger's SQL SUM bit for bit", "[report]") {
  // Summing doubles depends on the order: 1e16 + 1 + 1 is 1e16, 1 + 1 + 1e16 is not. The rows
  // are written (ids) in the opposite order of their start times, so a report that summed in id
  // or sorter order would differ from the plain query, which reads them by start time.
  sample_ledger s;
  const auto t = utc_ms(2026, 11, 10, 12);
  std::vector<usage_record> rows;
  for (int i = 20; i >= 1; --i) rows.push_back(with(call(t + i * 60'000, "gpt-4.1", 1.0), "k" + std::to_string(i % 3), "web"));
  rows.push_back(with(call(t, "gpt-4.1", 1e16), "k0", "web"));
  for (int i = 9; i >= 1; --i) rows.push_back(with(call(t + 86'400'000 + i, "o3", 0.1), "k1", "data"));
  rows.push_back(with(call(t + 86'400'000, "o3", 1e16), "k1", "data"));
  rows.push_back(call(utc_ms(2026, 12, 5), "gpt-4.1", 7.0));  // outside the range
  s.write(rows);
  const time_range nov{utc_ms(2026, 11, 1), utc_ms(2026, 12, 1)};
  const std::string range = "SELECT SUM(cost_usd) FROM calls WHERE start_ms >= ?1 AND start_ms < ?2";

  // The data is order-sensitive: where SQLite's SUM adds plainly (before 3.43), adding in the
  // writing order gives another figure; where it compensates (3.43 on), adding plainly in the
  // plain query's order (by start time) does.
  double written_order = 0, start_order = 0;
  for (const auto& r : rows)
    if (r.start_ms < nov.to_ms) written_order += r.cost_usd;
  auto by_start = rows;
  std::stable_sort(by_start.begin(), by_start.end(), [](const auto& a, const auto& b) { return a.start_ms < b.start_ms; });
  for (const auto& r : by_start)
    if (r.start_ms < nov.to_ms) start_order += r.cost_usd;
  const double plain = sql_real(s.path, range, {nov.from_ms, nov.to_ms});
  if (sqlite3_libversion_number() < 3043000) {
    REQUIRE(written_order != plain);
    REQUIRE(start_order == plain);
  } else {
    REQUIRE(start_order != plain);
  }

  SECTION("the total") {
    CHECK(query_spend(s.path, {nov, {spend_group::model}, "UTC"}).total.cost_usd == plain);
  }
  SECTION("each model, key and team") {
    const auto by_model = query_spend(s.path, {nov, {spend_group::model}, "UTC"});
    for (const char* m : {"gpt-4.1", "o3"})
      CHECK(row_with(by_model, keys({m})).figures.cost_usd ==
            sql_real(s.path, range + " AND price_model = ?3", {nov.from_ms, nov.to_ms, std::string(m)}));
    const auto by_key = query_spend(s.path, {nov, {spend_group::key}, "UTC"});
    for (const char* k : {"k0", "k1", "k2"})
      CHECK(row_with(by_key, keys({k})).figures.cost_usd ==
            sql_real(s.path, range + " AND client_key_id = ?3", {nov.from_ms, nov.to_ms, std::string(k)}));
    const auto by_team = query_spend(s.path, {nov, {spend_group::team}, "UTC"});
    for (const char* team : {"web", "data"})
      CHECK(row_with(by_team, keys({team})).figures.cost_usd ==
            sql_real(s.path, range + " AND team = ?3", {nov.from_ms, nov.to_ms, std::string(team)}));
  }
  SECTION("each local day, alone and with another column") {
    const auto by_day = query_spend(s.path, {nov, {spend_group::day}, "Europe/Paris"});
    REQUIRE(by_day.rows.size() == 2);
    const auto day10 = sql_real(s.path, range, {utc_ms(2026, 11, 9, 23), utc_ms(2026, 11, 10, 23)});
    const auto day11 = sql_real(s.path, range, {utc_ms(2026, 11, 10, 23), utc_ms(2026, 11, 11, 23)});
    CHECK(row_with(by_day, keys({"2026-11-10"})).figures.cost_usd == day10);
    CHECK(row_with(by_day, keys({"2026-11-11"})).figures.cost_usd == day11);
    const auto day_model = query_spend(s.path, {nov, {spend_group::day, spend_group::model}, "Europe/Paris"});
    CHECK(row_with(day_model, keys({"2026-11-10", "gpt-4.1"})).figures.cost_usd == day10);
  }
  SECTION("the what-if's actual side, per model and in total, is the spend query's") {
    price_table prices;
    prices.load_yaml_file(source_dir + "/config/prices.yaml");
    const auto spend = query_spend(s.path, {nov, {spend_group::model}, "UTC"});
    const auto w = query_whatif(s.path, {.range = nov, .model = "gpt-4.1-mini"}, prices);
    CHECK(w.actual_total.cost_usd == plain);
    REQUIRE(w.rows.size() == spend.rows.size());
    for (std::size_t i = 0; i < w.rows.size(); ++i) {
      CHECK(w.rows[i].model == spend.rows[i].keys[0]);
      CHECK(w.rows[i].actual.requests == spend.rows[i].figures.requests);
      CHECK(w.rows[i].actual.cost_usd == spend.rows[i].figures.cost_usd);
    }
    CHECK(w.rows[0].actual.cost_usd ==
          sql_real(s.path, range + " AND price_model = ?3", {nov.from_ms, nov.to_ms, std::string("gpt-4.1")}));
  }
}

TEST_CASE("report: random costs over nine orders of magnitude sum to SQL's SUM in every group", "[report]") {
  // Whichever way the linked SQLite's SUM adds reals (plainly before 3.43, compensated from then
  // on; this test also runs against 3.50), each group's cost and the total are what SUM gives
  // for the group's rows, bit for bit: both branches of the compensation, large after small and
  // small after large, in an order (start time) unrelated to the writing order.
  sample_ledger s;
  std::mt19937_64 rng(20261207);
  const auto t0 = utc_ms(2026, 11, 1);
  std::uniform_int_distribution<std::int64_t> when(0, 30LL * 86'400'000 - 1);
  std::uniform_real_distribution<double> exponent(-6, 3);
  const std::vector<std::string> models = {"gpt-4.1", "o3", "claude-sonnet-4.5", "deepseek-v3.2"};
  const std::vector<std::string> teams = {"web", "data", "ops"};
  std::vector<usage_record> rows;
  for (int i = 0; i < 3000; ++i)
    rows.push_back(with(call(t0 + when(rng), models[rng() % models.size()], std::pow(10.0, exponent(rng))),
                        "k" + std::to_string(rng() % 5), teams[rng() % teams.size()]));
  s.write(rows);
  const time_range nov{t0, utc_ms(2026, 12, 1)};
  const std::string range = "SELECT SUM(cost_usd) FROM calls WHERE start_ms >= ?1 AND start_ms < ?2";

  const auto by_model = query_spend(s.path, {nov, {spend_group::model}, "UTC"});
  CHECK(by_model.total.cost_usd == sql_real(s.path, range, {nov.from_ms, nov.to_ms}));
  REQUIRE(by_model.rows.size() == models.size());
  for (const auto& m : models)
    CHECK(row_with(by_model, {std::optional<std::string>(m)}).figures.cost_usd == sql_real(s.path, range + " AND price_model = ?3", {nov.from_ms, nov.to_ms, m}));
  const auto by_team = query_spend(s.path, {nov, {spend_group::team}, "UTC"});
  CHECK(by_team.total.cost_usd == by_model.total.cost_usd);
  for (const auto& t : teams)
    CHECK(row_with(by_team, {std::optional<std::string>(t)}).figures.cost_usd == sql_real(s.path, range + " AND team = ?3", {nov.from_ms, nov.to_ms, t}));
  const auto by_day = query_spend(s.path, {nov, {spend_group::day, spend_group::model}, "UTC"});
  CHECK(by_day.total.cost_usd == by_model.total.cost_usd);
  REQUIRE(by_day.rows.size() > 100);
  for (const auto& row : by_day.rows) {
    const auto day = parse_time_bound(*row.keys[0], range_end::from, calendar("UTC"));
    CHECK(row.figures.cost_usd ==
          sql_real(s.path, range + " AND price_model = ?3", {day, day + 86'400'000, *row.keys[1]}));
  }
  price_table prices;
  prices.load_yaml_file(source_dir + "/config/prices.yaml");
  const auto w = query_whatif(s.path, {.range = nov, .model = "gpt-4.1-mini"}, prices);
  CHECK(w.actual_total.cost_usd == by_model.total.cost_usd);
  for (const auto& r : w.rows) CHECK(r.actual.cost_usd == row_with(by_model, {r.model}).figures.cost_usd);

  // A sum past the largest double is infinite either way (SQLite 3.43+ then drops its
  // compensation, which is not a number).
  sample_ledger huge;
  huge.write({call(t0 + 1, "o3", 1e308), call(t0 + 2, "o3", 1e308), call(t0 + 3, "o3", 1.0)});
  const auto inf = query_spend(huge.path, {nov, {spend_group::model}, "UTC"});
  CHECK(std::isinf(sql_real(huge.path, range, {nov.from_ms, nov.to_ms})));
  CHECK(std::isinf(inf.total.cost_usd));
  CHECK(std::isinf(inf.rows.at(0).figures.cost_usd));
}

TEST_CASE("report: days are local days across DST changes and month ends", "[report]") {
  sample_ledger s;
  s.write({
      call(utc_ms(2026, 3, 28, 22, 30), "m", 1),           // Paris 03-28 23:30 CET
      call(utc_ms(2026, 3, 28, 23, 30), "m", 2),           // 03-29 00:30 CET
      call(utc_ms(2026, 3, 29, 21, 30), "m", 4),           // 03-29 23:30 CEST (a 23-hour day)
      call(utc_ms(2026, 3, 29, 22, 30), "m", 8),           // 03-30 00:30 CEST
      call(utc_ms(2026, 3, 31, 21, 59, 59, 999), "m", 16),  // 03-31 23:59:59.999 CEST
      call(utc_ms(2026, 3, 31, 22), "m", 32),              // 04-01 00:00 CEST: next month
      call(utc_ms(2026, 10, 24, 22), "m", 64),             // 10-25 00:00 CEST
      call(utc_ms(2026, 10, 25, 22, 59), "m", 128),        // 10-25 23:59 CET (a 25-hour day)
      call(utc_ms(2026, 10, 25, 23), "m", 256),            // 10-26 00:00 CET
  });
  const auto day_costs = [&](const spend_report& r) {
    std::vector<std::pair<std::string, double>> out;
    for (const auto& row : r.rows) out.emplace_back(*row.keys[0], row.figures.cost_usd);
    return out;
  };
  using v = std::vector<std::pair<std::string, double>>;

  SECTION("in Europe/Paris") {
    const auto r = query_spend(s.path, {{}, {spend_group::day}, "Europe/Paris"});
    CHECK(day_costs(r) == v{{"2026-03-28", 1},
                            {"2026-03-29", 6},
                            {"2026-03-30", 8},
                            {"2026-03-31", 16},
                            {"2026-04-01", 32},
                            {"2026-10-25", 192},
                            {"2026-10-26", 256}});
  }
  SECTION("in UTC the same calls fall on other days") {
    const auto r = query_spend(s.path, {{}, {spend_group::day}, "UTC"});
    CHECK(day_costs(r) == v{{"2026-03-28", 3},
                            {"2026-03-29", 12},
                            {"2026-03-31", 48},
                            {"2026-10-24", 64},
                            {"2026-10-25", 384}});
  }
  SECTION("a month in Paris ends at local midnight") {
    const calendar paris("Europe/Paris");
    const auto march = query_spend(s.path, {parse_month("2026-03", paris), {spend_group::day}, "Europe/Paris"});
    CHECK(march.total.cost_usd == 31);
    CHECK(march.rows.back().keys == keys({"2026-03-31"}));
    const auto october = query_spend(s.path, {parse_month("2026-10", paris), {}, "Europe/Paris"});
    CHECK(october.total.cost_usd == 448);
  }
  SECTION("a range starting inside a day reports that day's part under its date") {
    const auto r = query_spend(s.path, {{utc_ms(2026, 3, 29, 0), utc_ms(2026, 3, 29, 22)}, {spend_group::day},
                                        "Europe/Paris"});
    CHECK(day_costs(r) == v{{"2026-03-29", 4}});
  }
  SECTION("day in second place keeps the other column's order") {
    const auto r = query_spend(s.path, {{}, {spend_group::model, spend_group::day}, "Europe/Paris"});
    REQUIRE(r.rows.size() == 7);
    CHECK(r.rows.front().keys == keys({"m", "2026-03-28"}));
  }
}

TEST_CASE("report: CSV has a header, a row kind, escaped strings and unrounded amounts", "[report]") {
  sample_ledger s;
  const auto t = utc_ms(2026, 11, 2);
  auto odd = call(t, "", 0);
  odd.served_model = "odd,\"name\"";
  odd.tokens = {5, 1, 0, 0, 0, 0};
  auto a = with(call(t + 1, "gpt-4.1", 0.1), "app", "");
  a.tokens = {10, 2, 3, 4, 0, 1};
  auto b = with(call(t + 2, "gpt-4.1", 0.2), "app", "");
  s.write({odd, a, b});
  const auto r = query_spend(s.path, {{}, {spend_group::model, spend_group::team}, "UTC"});
  CHECK(to_csv(r) ==
        "row,model,team,requests,unpriced_requests,prompt_tokens,completion_tokens,cached_tokens,"
        "cache_write_tokens,reasoning_tokens,cost_usd\n"
        "group,gpt-4.1,,2,0,10,2,3,4,1,0.30000000000000004\n"
        "group,\"odd,\"\"name\"\"\",,1,1,5,1,0,0,0,0\n"
        "total,,,3,1,15,3,3,4,1,0.30000000000000004\n");
  SECTION("without columns, the header and the total line") {
    CHECK(to_csv(query_spend(s.path, {{}, {}, "UTC"})) ==
          "row,requests,unpriced_requests,prompt_tokens,completion_tokens,cached_tokens,cache_write_tokens,"
          "reasoning_tokens,cost_usd\n"
          "total,3,1,15,3,3,4,1,0.30000000000000004\n");
  }
}

TEST_CASE("report: JSON names the columns, null for absent values, amounts round-trip", "[report]") {
  sample_ledger s;
  s.write({with(call(utc_ms(2026, 11, 2), "gpt-4.1", 0.1), "app", ""),
           with(call(utc_ms(2026, 11, 2, 1), "gpt-4.1", 0.2), "app", "")});
  const calendar paris("Europe/Paris");
  const auto r = query_spend(s.path, {parse_month("2026-11", paris), {spend_group::day, spend_group::team}, "Europe/Paris"});
  const auto j = nlohmann::json::parse(to_json(r).dump());
  CHECK(j["from"] == "2026-10-31T23:00:00Z");
  CHECK(j["to"] == "2026-11-30T23:00:00Z");
  CHECK(j["from_ms"] == utc_ms(2026, 10, 31, 23));
  CHECK(j["timezone"] == "Europe/Paris");
  CHECK(j["group_by"] == nlohmann::json::array({"day", "team"}));
  REQUIRE(j["rows"].size() == 1);
  CHECK(j["rows"][0]["day"] == "2026-11-02");
  CHECK(j["rows"][0]["team"].is_null());
  CHECK(j["rows"][0]["requests"] == 2);
  CHECK(j["rows"][0]["cost_usd"].get<double>() == 0.1 + 0.2);
  CHECK(j["total"]["cost_usd"].get<double>() == r.total.cost_usd);
  CHECK_THAT(to_json(r).dump(), Contains("0.30000000000000004"));
  SECTION("an unbounded range has null bounds") {
    const auto all = to_json(query_spend(s.path, {{}, {}, "UTC"}));
    CHECK(all["from"].is_null());
    CHECK(all["to_ms"].is_null());
    CHECK(all["rows"].empty());
  }
}

TEST_CASE("report: what-if re-prices the tokens at another model's prices", "[report]") {
  price_table prices;
  prices.load_yaml_file(source_dir + "/config/prices.yaml");
  sample_ledger s;
  const auto t = utc_ms(2026, 11, 3);

  SECTION("10M output tokens: $150 on claude-sonnet-4.5, $4.20 on deepseek-v3.2") {
    auto sonnet = call(t, "claude-sonnet-4.5", 0);
    sonnet.tokens.completion = 10'000'000;
    sonnet.cost_usd = compute_cost(prices, "claude-sonnet-4.5", sonnet.tokens).usd;
    REQUIRE(sonnet.cost_usd == Approx(150.0));
    s.write({sonnet});
    const auto r = query_whatif(s.path, {.range = {}, .model = "deepseek-v3.2"}, prices);
    CHECK(r.model == "deepseek-v3.2");
    REQUIRE(r.rows.size() == 1);
    CHECK(r.rows[0].model == "claude-sonnet-4.5");
    CHECK(r.rows[0].actual.cost_usd == sonnet.cost_usd);
    CHECK(r.rows[0].actual.completion_tokens == 10'000'000);
    CHECK(r.rows[0].whatif_cost_usd == Approx(4.2).epsilon(1e-12));
    CHECK(r.actual_total.cost_usd == sonnet.cost_usd);
    CHECK(r.whatif_cost_usd == Approx(4.2).epsilon(1e-12));
    const auto back = query_whatif(s.path, {.range = {}, .model = "claude-sonnet-4-5-20250929"}, prices);
    CHECK(back.model == "claude-sonnet-4.5");
    CHECK(back.whatif_cost_usd == Approx(150.0).epsilon(1e-12));
  }
  SECTION("cache reads, 5-minute and 1-hour writes and the long-context tier as compute_cost bills them") {
    std::vector<usage_record> rows;
    std::vector<token_usage> usages = {
        {1'000, 500, 200, 300, 100, 50},         // Anthropic-style cache use
        {300'000, 2'000, 50'000, 10'000, 0, 0},  // above Sonnet's 200k: the long tier
        {200'000, 10, 0, 0, 0, 0},               // exactly at the threshold: not long
        {7, 3, 0, 0, 0, 0},
        {10, 5, 20, 0, 0, 0},                    // inconsistent counters: clamped, never negative
        {50, 5, 0, 10, 40, 0},                   // more 1-hour writes than writes: billed as 10
    };
    for (std::size_t i = 0; i < usages.size(); ++i) {
      auto r = call(t + static_cast<std::int64_t>(i), i % 2 ? "gpt-4.1" : "deepseek-v3.2", 0.01);
      r.tokens = usages[i];
      rows.push_back(r);
    }
    s.write(rows);
    const auto target = *prices.resolve("claude-sonnet-4.5");
    double expected = 0;
    for (const auto& u : usages) expected += compute_cost(target, u).usd;
    const auto r = query_whatif(s.path, {.range = {}, .model = "claude-sonnet-4.5"}, prices);
    CHECK(r.whatif_cost_usd == Approx(expected).epsilon(1e-12));
    REQUIRE(r.rows.size() == 2);
    CHECK(r.rows[1].model == "gpt-4.1");
    CHECK(r.rows[1].whatif_cost_usd ==
          Approx(compute_cost(target, usages[1]).usd + compute_cost(target, usages[3]).usd +
                 compute_cost(target, usages[5]).usd)
              .epsilon(1e-12));
    CHECK(r.rows[0].cache_write_1h_tokens == 100);
    CHECK(r.rows[1].cache_write_1h_tokens == 40);  // as the ledger holds it
    CHECK(r.cache_write_1h_tokens == 140);
    CHECK(r.actual_total.requests == 6);
  }
  SECTION("one call's what-if is compute_cost's figure exactly") {
    auto one = call(t, "gpt-4.1", 0.5);
    one.tokens = {123'456, 7'890, 23'456, 1'000, 400, 0};
    s.write({one});
    for (const char* m : {"claude-sonnet-4.5", "gpt-5", "deepseek-v3.2"})
      CHECK(query_whatif(s.path, {.range = {}, .model = m}, prices).whatif_cost_usd == compute_cost(*prices.resolve(m), one.tokens).usd);
  }
  SECTION("service tiers and web searches are re-priced as compute_cost bills them") {
    std::vector<usage_record> rows;
    std::vector<token_usage> usages = {
        {10'000, 2'000, 4'000, 0, 0, 0}, {10'000, 2'000, 4'000, 0, 0, 0}, {10'000, 2'000, 4'000, 0, 0, 0},
        {300'000, 1'000, 0, 0, 0, 0},  // long context unless its tier is priced
        {5'000, 100, 0, 0, 0, 0}, {8'000, 900, 1'000, 0, 0, 0},
        {300'000, 1'000, 20'000, 0, 0, 0}, {400'000, 1'000, 0, 0, 0, 0},  // long context in a factor tier
        {20'000, 2'000, 5'000, 0, 0, 0}};  // off-peak: the target's off_peak tier, else its standard prices
    usages[5].tier = service_tier::batch;  // half price on every target (its default batch tier)
    usages[6].tier = service_tier::flex;   // gpt-5.4: half its long prices; a target without flex: its long prices
    usages[7].tier = service_tier::batch;
    usages[8].tier = service_tier::off_peak;
    usages[0].tier = service_tier::flex;
    usages[1].tier = service_tier::priority;
    usages[2].tier = service_tier::standard;
    usages[3].tier = service_tier::priority;
    usages[4].web_search = 4;
    for (std::size_t i = 0; i < usages.size(); ++i) {
      auto r = call(t + static_cast<std::int64_t>(i), i % 2 ? "o3" : "gpt-5", 0.01);
      r.tokens = usages[i];
      rows.push_back(r);
    }
    s.write(rows);
    for (const char* m : {"gpt-5", "o4-mini", "claude-sonnet-4.5", "gpt-4.1", "gpt-5.4", "gpt-5.6-sol", "deepseek-flash"}) {
      const auto target = *prices.resolve(m);
      double expected = 0;
      for (const auto& u : usages) expected += compute_cost(target, u).usd;
      const auto r = query_whatif(s.path, {.range = {}, .model = m}, prices);
      CHECK(r.whatif_cost_usd == Approx(expected).epsilon(1e-12));
    }
    // Swapping to a model without a flex price bills the flex call at its standard prices.
    const auto r = query_whatif(s.path, {.range = {}, .model = "gpt-4.1"}, prices);
    auto standard = usages;
    for (auto& u : standard) u.tier = u.tier == service_tier::flex ? service_tier::none : u.tier;
    double expected = 0;
    for (const auto& u : standard) expected += compute_cost(*prices.resolve("gpt-4.1"), u).usd;
    CHECK(r.whatif_cost_usd == Approx(expected).epsilon(1e-12));
  }
  SECTION("calls priced in units the ledger does not split keep their cost unless swapped or re-priced") {
    auto realtime = call(t, "gpt-realtime", 0);
    realtime.tokens = {1'000, 300, 600, 0, 0, 0};
    realtime.tokens.audio_in = 300, realtime.tokens.audio_cached = 500, realtime.tokens.audio_out = 250;
    realtime.cost_usd = compute_cost(prices, "gpt-realtime", realtime.tokens).usd;
    auto whisper = call(t + 1, "whisper-1", 0);
    whisper.tokens.audio_ms = 60'000;
    whisper.cost_usd = compute_cost(prices, "whisper-1", whisper.tokens).usd;
    auto chat = call(t + 2, "gpt-4.1", 0);
    chat.tokens = {1'000, 100, 0, 0, 0, 0};
    chat.cost_usd = compute_cost(prices, "gpt-4.1", chat.tokens).usd;
    s.write({realtime, whisper, chat});
    const auto r = query_whatif(s.path, {.range = {}, .swap = {{"gpt-4.1", "gpt-4.1-mini"}}}, prices);
    REQUIRE(r.rows.size() == 3);
    for (const auto& row : r.rows) {
      INFO(row.model.value_or("?"));
      if (row.model == "gpt-4.1") {
        CHECK(row.target == "gpt-4.1-mini");
        CHECK(row.whatif_cost_usd == Approx(compute_cost(prices, "gpt-4.1-mini", chat.tokens).usd));
      } else {
        CHECK(!row.target);
        CHECK(row.whatif_cost_usd == row.actual.cost_usd);
        CHECK(row.actual.cost_usd > 0);
      }
    }
    // Prices given for the model itself re-price its columns (its media tokens as text).
    model_price own = *prices.resolve("gpt-realtime");
    own.output = 8;
    const auto p = query_whatif(s.path, {.range = {}, .prices = {own}}, prices);
    for (const auto& row : p.rows)
      if (row.model == "gpt-realtime") CHECK(row.target == "gpt-realtime");
  }
  SECTION("an unknown model is refused") {
    s.write({call(t, "gpt-4.1", 1)});
    CHECK_THROWS_WITH(query_whatif(s.path, {.range = {}, .model = "no-such-model"}, prices), Contains("'no-such-model' is not in the price table"));
  }
  SECTION("JSON and CSV carry both costs") {
    auto r1 = call(t, "gpt-4.1", 0.008);
    r1.tokens.completion = 1000;
    s.write({r1});
    const auto r = query_whatif(s.path, {.range = {}, .model = "gpt-4.1-mini"}, prices);
    const auto j = to_json(r);
    CHECK(j["model"] == "gpt-4.1-mini");
    CHECK(j["rows"][0]["actual_cost_usd"] == 0.008);
    CHECK(j["total"]["whatif_cost_usd"].get<double>() == r.whatif_cost_usd);
    CHECK_THAT(to_csv(r), Contains("row,model,requests,") && Contains("\ngroup,gpt-4.1,1,0,0,1000,0,0,0,0.008,0,"));
  }
}

TEST_CASE("report: spend_since sums per minute and key, oldest first, for warm starts", "[report]") {
  sample_ledger s;
  const auto m0 = utc_ms(2026, 11, 4, 10, 0);
  s.write({
      with(call(m0 + 1'000, "gpt-4.1", 1.0), "a", "web"),
      with(call(m0 + 59'000, "gpt-4.1", 2.0), "a", "web"),
      with(call(m0 + 30'000, "o3", 4.0), "a", "web"),
      with(call(m0 + 61'000, "gpt-4.1", 8.0), "b", ""),
      with(call(m0 + 62'000, "", 0.0), "b", ""),  // unpriced, no cost: nothing to seed
      with(call(m0 - 1, "gpt-4.1", 16.0), "a", "web"),
  });
  const auto rows = spend_since(s.path, m0);
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].ts_ms / 60'000 == m0 / 60'000);
  // Oldest first by each sample's last call, within a minute too (o3 at +30 s, gpt-4.1 at +59 s,
  // although gpt-4.1's first call came first).
  CHECK(rows[0].price_model == "o3");
  CHECK(rows[1].price_model == "gpt-4.1");
  CHECK(rows[2].client_key_id == "b");
  CHECK(rows[2].team.empty());
  CHECK(rows[2].cost_usd == 8.0);
  CHECK(rows[2].ts_ms == m0 + 61'000);
  double a_gpt = 0;
  for (const auto& r : rows) {
    if (r.client_key_id != "a" || r.price_model != "gpt-4.1") continue;
    a_gpt = r.cost_usd;
    CHECK(r.ts_ms == m0 + 59'000);
  }
  CHECK(a_gpt == 3.0);
  SECTION("a ledger that does not exist yet seeds nothing") { CHECK(spend_since(s.dir.file("new.db"), 0).empty()); }
  SECTION("rows at or after until_ms (dated in the future) seed nothing") {
    const auto until = spend_since(s.path, m0, std::numeric_limits<std::int64_t>::max(), m0 + 60'000);
    REQUIRE(until.size() == 2);
    for (const auto& r : until) CHECK(r.client_key_id == "a");
  }
  SECTION("from fine_since on, per second: a guard's short window keeps each call's time") {
    const auto fine = spend_since(s.path, m0, m0);
    double a_gpt = 0;
    std::vector<std::int64_t> times;
    for (const auto& r : fine) {
      if (r.client_key_id != "a" || r.price_model != "gpt-4.1") continue;
      a_gpt += r.cost_usd;
      times.push_back(r.ts_ms);
    }
    CHECK(a_gpt == 3.0);
    CHECK(times == std::vector<std::int64_t>{m0 + 1'000, m0 + 59'000});
  }
  SECTION("a refused call (cost 0) in the same minute does not date its spend later") {
    s.write({with(call(m0 + 119'000, "gpt-4.1", 0.0), "b", "")});
    for (const auto& r : spend_since(s.path, m0))
      if (r.client_key_id == "b") CHECK(r.ts_ms == m0 + 61'000);
  }
}

TEST_CASE("report: the report command prints the spend query's figures", "[report]") {
  sample_ledger s;
  s.write({with(call(utc_ms(2026, 11, 5, 9), "gpt-4.1", 0.1), "app", "web"),
           with(call(utc_ms(2026, 11, 6, 9), "gpt-4.1", 0.2), "app", "web"),
           with(call(utc_ms(2026, 11, 6, 10), "claude-sonnet-4.5", 1.5), "batch", "data"),
           call(utc_ms(2026, 10, 31, 22, 30), "gpt-4.1", 100)});  // 23:30 in Paris: October there
  const auto run = [](std::vector<std::string> args) {
    std::ostringstream out, err;
    const int rc = report_main(args, out, err);
    return std::tuple{rc, out.str(), err.str()};
  };

  SECTION("an aligned table per model with the total last") {
    const auto [rc, out, err] = run({"--ledger", s.path, "--month", "2026-11", "--by", "model", "--timezone", "Europe/Paris"});
    REQUIRE(rc == 0);
    CHECK(err.empty());
    CHECK_THAT(out, Contains("from 2026-10-31T23:00:00Z to 2026-11-30T23:00:00Z (timezone Europe/Paris)"));
    CHECK_THAT(out, Contains("model              requests  unpriced  prompt  completion  cached  cache_write  reasoning"
                             "             cost_usd\n"));
    CHECK_THAT(out, Contains("\nclaude-sonnet-4.5         1         0       0           0       0            0          0"
                             "                  1.5\n"));
    CHECK_THAT(out, Contains("\ngpt-4.1                   2         0       0           0       0            0          0"
                             "  0.30000000000000004\n"));
    CHECK_THAT(out, Contains("-\ntotal                     3"));
  }
  SECTION("--csv prints to_csv of the same query; --by accepts lists and repeats") {
    const auto [rc, out, err] = run({"--ledger=" + s.path, "--month=2026-11", "--by", "team,key", "--by=day", "--csv"});
    REQUIRE(rc == 0);
    const calendar utc("UTC");
    CHECK(out == to_csv(query_spend(s.path, {parse_month("2026-11", utc),
                                             {spend_group::team, spend_group::key, spend_group::day}, "UTC"})));
  }
  SECTION("--json, and --from/--to with an inclusive end date") {
    const auto [rc, out, err] = run({"--ledger", s.path, "--from", "2026-11-06", "--to", "2026-11-06", "--json"});
    REQUIRE(rc == 0);
    const auto j = nlohmann::json::parse(out);
    CHECK(j["total"]["requests"] == 2);
    CHECK(j["total"]["cost_usd"] == 1.7);
  }
  SECTION("--whatif prints actual and what-if cost per model") {
    const auto [rc, out, err] = run({"--ledger", s.path, "--whatif", "deepseek-v3.2", "--prices",
                                     source_dir + "/config/prices.yaml", "--month", "2026-11"});
    REQUIRE(rc == 0);
    CHECK_THAT(out, Contains("What-if at deepseek-v3.2 prices") && Contains("whatif_usd") && Contains("\ntotal "));
  }
  SECTION("--swap re-prices one model's calls, the others at their own prices, as POST /admin/whatif") {
    const auto [rc, out, err] = run({"--ledger", s.path, "--swap", "gpt-4.1=deepseek-v3.2", "--prices",
                                     source_dir + "/config/prices.yaml", "--json"});
    REQUIRE(rc == 0);
    const auto j = nlohmann::json::parse(out);
    CHECK(j["model"].is_null());
    for (const auto& row : j["rows"]) {
      INFO(row.dump());
      if (row["model"] == "gpt-4.1") CHECK(row["target"] == "deepseek-v3.2");
    }
  }
  SECTION("--help prints the usage") {
    const auto [rc, out, err] = run({"--help"});
    CHECK(rc == 0);
    CHECK_THAT(out, Contains("Usage: tollgate report [--ledger FILE | --fleet | --postgres URL") && Contains("--config FILE"));
  }
  SECTION("bad arguments and missing files exit 2 with a message") {
    // Where no configuration is found (no config/tollgate.yaml, no $TOLLGATE_CONFIG).
    const testing::scoped_cwd elsewhere(s.dir.path);
    const testing::scoped_env no_config("TOLLGATE_CONFIG", nullptr), no_ledger("TOLLGATE_LEDGER_PATH", nullptr),
        no_fleet("TOLLGATE_LEDGER_POSTGRES_URL", nullptr);
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{"--month", "2026-11"}, "no ledger: give --ledger FILE, set TOLLGATE_LEDGER_PATH, give the proxy's --config FILE, or read the fleet ledger with --fleet"},
        {{"--ledger", s.path, "--whatif", "gpt-4.1"}, "no price table: give --prices FILE, or the proxy's --config FILE"},
        {{"--config", s.dir.file("none.yaml")}, "configuration error: " + s.dir.file("none.yaml") + ": cannot open"},
        {{"--ledger", s.path, "--config"}, "--config needs a value"},
        {{"--ledger", s.dir.file("missing.db")}, "ledger file '" + s.dir.file("missing.db") + "' not found"},
        {{"--ledger", source_dir}, "ledger file '" + source_dir + "' is a directory"},
        {{"--ledger", s.path, "--month", "2026-13"}, "month: expected YYYY-MM"},
        {{"--ledger", s.path, "--month", "2026-11", "--from", "2026-11-01"}, "cannot be combined"},
        {{"--ledger", s.path, "--by", "color"}, "unknown column 'color'"},
        {{"--ledger", s.path, "--timezone", "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"},
        {{"--ledger", s.path, "--from", "2026-11-05", "--to", "2026-11-01"}, "--from must be before --to"},
        {{"--ledger", s.path, "--from", "soon"}, "from: 'soon'"},
        {{"--ledger", s.path, "--frobnicate"}, "unknown argument '--frobnicate'"},
        {{"--ledger"}, "--ledger needs a value"},
        {{"--postgres", ""}, "--postgres needs a value, not an empty one"},
        {{"--postgres", "host=127.0.0.1", "--instance="}, "--instance needs a value, not an empty one"},
        {{"--ledger", s.path, "--csv=yes"}, "--csv takes no value"},
        {{"--ledger", s.path, "--whatif", "nope", "--prices", source_dir + "/config/prices.yaml"}, "'nope' is not in the price table"},
        {{"--ledger", s.path, "--whatif", "gpt-4.1", "--prices", s.dir.file("none.yaml")}, "none.yaml"},
        {{"--ledger", s.path, "--swap", "gpt-4.1"}, "--swap takes FROM=TO"},
        {{"--ledger", s.path, "--swap", "gpt-4.1=x", "--by", "model"}, "drop --by"},
        {{"--ledger", s.path, "--by", "model,instance"}, "'instance' is a column of the fleet ledger"},
        {{"--ledger", s.path, "--instance", "edge-1"}, "--instance applies to the fleet ledger only"},
        {{"--ledger", s.path, "--fleet"}, "give one ledger: --ledger FILE, --fleet or --postgres URL"},
        {{"--fleet", "--postgres", "postgresql:///x"}, "give one ledger"},
        {{"--fleet=yes"}, "--fleet takes no value"},
        {{"--fleet", "--month", "2026-11"}, "--fleet: no fleet ledger configured: give the proxy's --config FILE"},
    };
    for (const auto& [args, message] : cases) {
      const auto [rc, out, err] = run(args);
      INFO(message);
      CHECK(rc == 2);
      CHECK(out.empty());
      CHECK_THAT(err, Contains("tollgate report: ") && Contains(message));
    }
  }
  SECTION("a fleet ledger that does not answer: exit 1, libpq's reason, never the url's password") {
    const testing::scoped_env no_config("TOLLGATE_CONFIG", nullptr);
    const std::string url = "postgresql://tollgate:s3cret@127.0.0.1:1/fleet?connect_timeout=2";
    for (const auto& args : {std::vector<std::string>{"--postgres", url, "--by", "instance"},
                             std::vector<std::string>{"--postgres", url, "--whatif", "gpt-4.1", "--prices",
                                                      source_dir + "/config/prices.yaml"}}) {
      const auto [rc, out, err] = run(args);
      CHECK(rc == 1);
      CHECK(out.empty());
      CHECK_THAT(err, StartsWith("tollgate report: PostgreSQL: connection to server at \"127.0.0.1\", port 1 failed"));
      CHECK(err.find("s3cret") == std::string::npos);
    }
    // --fleet: the url from $TOLLGATE_LEDGER_POSTGRES_URL, as the proxy takes it.
    const testing::scoped_env fleet("TOLLGATE_LEDGER_POSTGRES_URL", url.c_str());
    const auto [rc, out, err] = run({"--fleet", "--instance", "edge-1"});
    CHECK(rc == 1);
    CHECK_THAT(err, Contains("port 1 failed"));
    CHECK(err.find("s3cret") == std::string::npos);
  }
  SECTION("without --ledger or --prices, the configuration tollgate starts with names the ledger and price table") {
    // Its ledger.path, and its price table as the proxy loads it (the YAML table and the LiteLLM
    // catalogue: a model only the catalogue prices is a what-if target through it).
    const testing::scoped_env no_config("TOLLGATE_CONFIG", nullptr), no_ledger("TOLLGATE_LEDGER_PATH", nullptr);
    fs::create_directories(s.dir.path / "config");
    const auto config_file = s.dir.file("config/tollgate.yaml");
    {
      std::ofstream f(config_file);
      f << "ledger:\n  path: " << s.path << "\npricing:\n  file: " << source_dir << "/config/prices.yaml\n"
        << "  litellm_file: " << source_dir << "/tests/data/litellm_sample.json\n";
    }
    const std::string only_litellm = "openrouter/meta-llama/llama-3.3-70b-instruct";
    const auto [rc0, given, err0] = run({"--ledger", s.path, "--month", "2026-11", "--by", "model", "--json"});
    REQUIRE(rc0 == 0);
    const auto [rc1, by_option, err1] = run({"--config", config_file, "--month", "2026-11", "--by", "model", "--json"});
    CHECK(rc1 == 0);
    CHECK(by_option == given);
    {
      const testing::scoped_env env("TOLLGATE_CONFIG", config_file.c_str());
      const auto [rc, by_env, err] = run({"--month", "2026-11", "--by", "model", "--json"});
      CHECK(rc == 0);
      CHECK(by_env == given);
    }
    {
      const testing::scoped_cwd checkout(s.dir.path);  // config/tollgate.yaml under the working directory
      const auto [rc, in_cwd, err] = run({"--month", "2026-11", "--by", "model", "--json"});
      CHECK(rc == 0);
      CHECK(in_cwd == given);
      const auto [rc2, whatif, err2] = run({"--month", "2026-11", "--whatif", only_litellm, "--json"});
      INFO(err2);
      CHECK(rc2 == 0);
      CHECK(nlohmann::json::parse(whatif)["model"] == only_litellm);
      const auto [rc3, out3, err3] = run({"--month", "2026-11", "--whatif", only_litellm, "--prices", source_dir + "/config/prices.yaml"});
      CHECK(rc3 == 2);
      CHECK_THAT(err3, Contains("is not in the price table"));
      // $TOLLGATE_LEDGER_PATH comes before the configuration's ledger.path, as for the proxy.
      const testing::scoped_env ledger("TOLLGATE_LEDGER_PATH", s.dir.file("other.db").c_str());
      const auto [rc4, out4, err4] = run({"--month", "2026-11"});
      CHECK(rc4 == 2);
      CHECK_THAT(err4, Contains("ledger file '" + s.dir.file("other.db") + "' not found"));
    }
  }
  SECTION("a file that is not a ledger exits 1 naming it") {
    const auto bogus = s.dir.file("bogus.db");
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(bogus.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
    const auto [rc, out, err] = run({"--ledger", bogus});
    CHECK(rc == 1);
    CHECK_THAT(err, Contains(bogus) && Contains("not a tollgate ledger"));
  }
  SECTION("a ledger of an older schema grouped by a later column exits 1 saying how to migrate it") {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(s.path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "ALTER TABLE calls DROP COLUMN provider", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
    const auto [rc, out, err] = run({"--ledger", s.path, "--month", "2026-11", "--by", "provider"});
    CHECK(rc == 1);
    CHECK_THAT(err, Contains("no such column: provider") && Contains("start the proxy on it once to migrate it"));
  }
}

TEST_CASE("report: calls come newest first, filtered, in pages that resume where the last ended", "[report]") {
  sample_ledger s;
  const auto t = utc_ms(2026, 11, 10, 12);
  std::vector<usage_record> rows;
  for (int i = 0; i < 7; ++i) {
    auto r = with(call(t + i * 1000, i % 2 ? "gpt-4.1" : "claude-sonnet-4.5", 0.125 * i), i < 4 ? "app" : "batch", "web");
    r.request_id = "req-call-" + std::to_string(i);
    r.provider = i == 3 ? "DeepInfra" : "";
    r.user = i == 2 || i == 6 ? "end-user-7" : "";
    r.status = i == 5 ? 429 : 200;
    r.latency_ms = 100.0 * i;
    r.upstream_request_id = "chatcmpl-" + std::to_string(i);
    rows.push_back(r);
  }
  // A long call written last that started first: the order is by start, not by row id.
  auto late = call(t - 5000, "gpt-4.1", 1.5);
  late.request_id = "req-call-late";
  rows.push_back(late);
  s.write(rows);
  const auto ids = [](const nlohmann::json& page) {
    std::vector<std::string> out;
    for (const auto& c : page["calls"]) out.push_back(c["request_id"].get<std::string>());
    return out;
  };

  calls_query q;
  auto page = query_calls(s.path, q);
  CHECK(ids(page) == std::vector<std::string>{"req-call-6", "req-call-5", "req-call-4", "req-call-3", "req-call-2",
                                              "req-call-1", "req-call-0", "req-call-late"});
  CHECK(page["next_before"].is_null());
  // Every column under its name, as stored, and the start as RFC 3339.
  const auto& third = page["calls"][3];
  CHECK(third["provider"] == "DeepInfra");
  CHECK(third["client_key_id"] == "app");
  CHECK(third["cost_usd"].get<double>() == 0.375);
  CHECK(third["status"] == 200);
  CHECK(third["first_byte_ms"].is_null());
  CHECK(third["start"] == format_rfc3339_utc(t + 3000));
  CHECK(third["start_ms"] == t + 3000);
  CHECK(third.contains("web_search_requests"));
  CHECK(page["calls"][4]["provider"].is_null());

  SECTION("pages of three, each resuming after the last, until none is left") {
    q.limit = 3;
    std::vector<std::string> seen;
    for (int pages = 0; pages < 5; ++pages) {
      page = query_calls(s.path, q);
      for (const auto& id : ids(page)) seen.push_back(id);
      if (page["next_before"].is_null()) break;
      q.before = parse_calls_cursor(page["next_before"].get<std::string>());
    }
    CHECK(seen == ids(query_calls(s.path, calls_query{})));
  }
  SECTION("as CSV: the table's columns in order, the same rows and cursor as JSON, fields quoted") {
    rows[2].user = "Smith, \"J\"\nline two";
    sample_ledger quoted;
    quoted.write(rows);
    q.limit = 3;
    std::string next;
    const std::string csv = query_calls_csv(quoted.path, q, next);
    const auto json_page = query_calls(quoted.path, q);
    CHECK(next == json_page["next_before"].get<std::string>());
    // The header: every column of the table, in its order, then `start`.
    std::string header;
    {
      sqlite3* db = nullptr;
      REQUIRE(sqlite3_open(quoted.path.c_str(), &db) == SQLITE_OK);
      sqlite3_stmt* st = nullptr;
      REQUIRE(sqlite3_prepare_v2(db, "SELECT * FROM calls", -1, &st, nullptr) == SQLITE_OK);
      for (int c = 0; c < sqlite3_column_count(st); ++c) (header += sqlite3_column_name(st, c)) += ',';
      sqlite3_finalize(st);
      sqlite3_close(db);
    }
    header += "start";
    REQUIRE(csv.substr(0, csv.find('\n')) == header);
    CHECK(header.starts_with("id,request_id,start_ms,route,"));
    // A line per row (the quoted line break excepted), newest first, each the JSON row's values.
    CHECK(csv.find("req-call-6,") != std::string::npos);
    CHECK(csv.find("req-call-5,") > csv.find("req-call-6,"));
    CHECK(csv.find("req-call-4,") > csv.find("req-call-5,"));
    CHECK(csv.find("req-call-3,") == std::string::npos);  // the next page's
    std::size_t lines = 0;
    for (const char c : csv) lines += c == '\n';
    CHECK(lines == 4);
    // The fourth page row through JSON and CSV: null is empty, reals shortest, start last.
    q.before = parse_calls_cursor(next);
    q.limit = 1;
    const std::string one = query_calls_csv(quoted.path, q, next);
    const auto row = query_calls(quoted.path, q)["calls"][0];
    CHECK(row["request_id"] == "req-call-3");
    const std::string line = one.substr(one.find('\n') + 1);
    CHECK(line.starts_with(std::to_string(row["id"].get<std::int64_t>()) + ",req-call-3," + std::to_string(t + 3000) + ","));
    CHECK(line.find(",0.375,") != std::string::npos);                    // cost_usd
    CHECK(line.find(",DeepInfra,") != std::string::npos);                // provider
    CHECK(line.ends_with("," + format_rfc3339_utc(t + 3000) + "\n"));  // start
    // The user with a comma, quotes and a line break, as RFC 4180 quotes it.
    q = {};
    q.match = {{"request_id", "req-call-2"}};
    CHECK(query_calls_csv(quoted.path, q, next).find(",\"Smith, \"\"J\"\"\nline two\",") != std::string::npos);
    CHECK(next.empty());
  }
  SECTION("filters: exact matches, all of them at once") {
    q.match = {{"request_id", "req-call-2"}};
    CHECK(ids(query_calls(s.path, q)) == std::vector<std::string>{"req-call-2"});
    q.match = {{"upstream_request_id", "chatcmpl-4"}};  // the upstream's id, for a provider's ticket
    CHECK(ids(query_calls(s.path, q)) == std::vector<std::string>{"req-call-4"});
    q = {};
    q.match = {{"key", "batch"}, {"model", "gpt-4.1"}};  // model: requested, served or pricing model
    CHECK(ids(query_calls(s.path, q)) == std::vector<std::string>{"req-call-5"});
    q.status = 200;
    CHECK(ids(query_calls(s.path, q)).empty());
    q = {};
    q.match = {{"provider", "DeepInfra"}};
    CHECK(ids(query_calls(s.path, q)) == std::vector<std::string>{"req-call-3"});
    q = {};
    q.range = {t, t + 2000};
    CHECK(ids(query_calls(s.path, q)) == std::vector<std::string>{"req-call-1", "req-call-0"});
    q.match = {{"team", "nope"}};
    CHECK(ids(query_calls(s.path, q)).empty());
    q = {};
    q.match = {{"user", "end-user-7"}};  // the end user a request named
    CHECK(ids(query_calls(s.path, q)) == std::vector<std::string>{"req-call-6", "req-call-2"});
    q.match = {{"color", "x"}};
    CHECK_THROWS_WITH(query_calls(s.path, q), Contains("unknown calls filter 'color'"));
  }
  SECTION("ranges of cost and latency, bounds included") {
    q.min_cost_usd = 0.5;  // costs 0.125 * i, the late call's 1.5
    CHECK(ids(query_calls(s.path, q)) == std::vector<std::string>{"req-call-6", "req-call-5", "req-call-4", "req-call-late"});
    q.max_cost_usd = 0.625;
    CHECK(ids(query_calls(s.path, q)) == std::vector<std::string>{"req-call-5", "req-call-4"});
    q = {};
    q.min_latency_ms = 150;  // latencies 100 * i, the late call's 10
    q.max_latency_ms = 300;
    CHECK(ids(query_calls(s.path, q)) == std::vector<std::string>{"req-call-3", "req-call-2"});
    q.match = {{"provider", "DeepInfra"}};
    q.min_cost_usd = 0.375;
    CHECK(ids(query_calls(s.path, q)) == std::vector<std::string>{"req-call-3"});
    q.min_cost_usd = 0.376;
    CHECK(ids(query_calls(s.path, q)).empty());
  }
  SECTION("a cursor that is not one is refused") {
    CHECK(parse_calls_cursor("1733000000000:42") == calls_cursor{1733000000000, "", 42});
    CHECK(parse_calls_cursor("-5:1") == calls_cursor{-5, "", 1});
    for (const char* bad : {"", "12", "12:", ":3", "1:2:3", "a:b", "1 :2"})
      CHECK_THROWS_WITH(parse_calls_cursor(bad), Contains("next_before of an earlier page (<start_ms>:<id>)"));
    // The fleet's cursor names the row's ledger too (its ids are each instance ledger's own).
    CHECK(parse_calls_cursor("1733000000000:0a1b:42", true) == calls_cursor{1733000000000, "0a1b", 42});
    CHECK(parse_calls_cursor("7:a:b:8", true) == calls_cursor{7, "a:b", 8});
    CHECK(parse_calls_cursor("7::8", true) == calls_cursor{7, "", 8});
    for (const char* bad : {"", "12", "1:2", "12:ab:", ":ab:3", "x:ab:3", "1:ab:3x"})
      CHECK_THROWS_WITH(parse_calls_cursor(bad, true), Contains("next_before of an earlier page (<start_ms>:<ledger_uid>:<id>)"));
  }
}

TEST_CASE("report: with ledger.indexes every filter returns the same pages, and an index not listed is dropped", "[report]") {
  const auto t = utc_ms(2026, 11, 10, 12);
  std::vector<usage_record> rows;
  const char* models[][3] = {{"gpt-4.1", "gpt-4.1-2025-04-14", "gpt-4.1"},  // two of the three columns match
                             {"fast", "gpt-4.1", ""},                         // only the served model
                             {"x", "y", "gpt-4.1"},                           // only the pricing model
                             {"claude-sonnet-4.5", "claude-sonnet-4.5", "claude-sonnet-4.5"}};
  for (int i = 0; i < 40; ++i) {
    // 13 distinct starts: pages end inside a millisecond several rows share.
    auto r = with(call(t + (i % 13) * 1000, "", 0.125 * i), i % 3 ? "app" : "batch", i % 5 ? "web" : "rare");
    r.requested_model = models[i % 4][0];
    r.served_model = models[i % 4][1];
    r.price_model = models[i % 4][2];
    r.provider = i % 7 == 0 ? "DeepInfra" : "";
    r.route = i % 6 == 0 ? route_kind::responses : route_kind::chat_completions;
    r.request_id = "req-" + std::to_string(i % 10);  // reused ids
    r.upstream_request_id = "up-" + std::to_string(i % 4);
    r.status = i % 9 == 0 ? 429 : 200;
    r.user = i % 4 == 1 ? "end-user-" + std::to_string(i % 3) : "";
    rows.push_back(r);
  }
  sample_ledger plain, indexed;
  indexed.indexes = {"request_id", "upstream_request_id", "key", "team", "model", "provider", "route", "user"};
  plain.write(rows);
  indexed.write(rows);
  const auto index_names = [](const std::string& path) {
    std::vector<std::string> out;
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'calls' ORDER BY name",
                               -1, &st, nullptr) == SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) out.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
  };
  CHECK(index_names(plain.path) == std::vector<std::string>{"calls_start_ms"});
  CHECK(index_names(indexed.path) ==
        std::vector<std::string>{"calls_by_client_key_id", "calls_by_price_model", "calls_by_provider", "calls_by_request_id",
                                 "calls_by_requested_model", "calls_by_route", "calls_by_served_model", "calls_by_team",
                                 "calls_by_upstream_request_id", "calls_by_user", "calls_start_ms"});

  // Every page, walked to the end in pages of three, is the same with and without the indexes.
  const auto all_pages = [](const std::string& path, calls_query q) {
    q.limit = 3;
    nlohmann::json seen = nlohmann::json::array();
    for (int pages = 0; pages < 20; ++pages) {
      const auto page = query_calls(path, q);
      for (const auto& c : page["calls"]) seen.push_back(c);
      if (page["next_before"].is_null()) return seen;
      q.before = parse_calls_cursor(page["next_before"].get<std::string>());
    }
    FAIL("more pages than rows");
    return seen;
  };
  CHECK(all_pages(plain.path, calls_query{}).size() == rows.size());
  CHECK(all_pages(indexed.path, calls_query{}).size() == rows.size());
  const std::vector<std::map<std::string, std::string, std::less<>>> filters = {
      {}, {{"model", "gpt-4.1"}}, {{"model", "claude-sonnet-4.5"}}, {{"model", "y"}}, {{"model", "none"}},
      {{"team", "rare"}}, {{"key", "batch"}}, {{"provider", "DeepInfra"}}, {{"route", "responses"}},
      {{"request_id", "req-3"}}, {{"upstream_request_id", "up-1"}}, {{"user", "end-user-2"}},
      {{"model", "gpt-4.1"}, {"team", "web"}, {"key", "app"}}};
  for (const auto& f : filters)
    for (const std::optional<int> status : {std::optional<int>{}, std::optional<int>{200}}) {
      calls_query q;
      q.match = f;
      q.status = status;
      const auto want = all_pages(plain.path, q);
      INFO(want.size() << " rows, filter " << (f.empty() ? "none" : f.begin()->first + "=" + f.begin()->second));
      CHECK(all_pages(indexed.path, q) == want);
      q.min_cost_usd = 1;  // with a range too
      q.range = {t + 2000, t + 11'000};
      CHECK(all_pages(indexed.path, q) == all_pages(plain.path, q));
    }
  // The model filter matches a row once, whichever of its columns name the model.
  calls_query q;
  q.match = {{"model", "gpt-4.1"}};
  const auto matched = all_pages(indexed.path, q);
  CHECK(matched.size() == 30);
  std::set<std::int64_t> ids;
  for (const auto& c : matched) ids.insert(c["id"].get<std::int64_t>());
  CHECK(ids.size() == matched.size());

  // Taken out of the list, an index is dropped at the next start; the rows stay.
  indexed.indexes = {"team"};
  indexed.write({});
  CHECK(index_names(indexed.path) == std::vector<std::string>{"calls_by_team", "calls_start_ms"});
  CHECK(all_pages(indexed.path, q) == matched);
}

TEST_CASE("request ids: a generated id carries its start, a UUIDv7 its creation, nothing else decodes", "[report]") {
  const auto t = utc_ms(2026, 11, 10, 12, 0, 0, 345);
  const std::string id = make_request_id(t, 0xfedcba9876543210ULL);
  CHECK(id.size() == 27);
  CHECK(id == "tg-01a1c5545359ba9876543210");  // 48 bits of start in hex, then the low 48 random bits
  REQUIRE(request_id_time(id));
  CHECK(request_id_time(id)->ms == t);
  CHECK(request_id_time(id)->exact);
  CHECK(make_request_id(t + 1, 0) > make_request_id(t, ~0ULL));  // ordered by start
  CHECK(request_id_time(make_request_id(0, 0))->ms == 0);
  // A client's UUIDv7 (RFC 9562): its first 48 bits, either case; a time, but not the start's.
  for (const std::string v7 : {"01a1c554-5359-7cc3-98c4-dc0c0c07398f", "01A1C554-5359-7CC3-B8C4-DC0C0C07398F"}) {
    INFO(v7);
    REQUIRE(request_id_time(v7));
    CHECK(request_id_time(v7)->ms == t);
    CHECK_FALSE(request_id_time(v7)->exact);
  }
  for (const std::string bad : {"", "tg-", "tg-019a6dac39b9ba987654321", "tg-019a6dac39b9ba98765432100",
                                "TG-019a6dac39b9ba9876543210", "tg-019A6DAC39B9BA9876543210", "tg-019a6dac39b9ba987654321g",
                                "xx-019a6dac39b9ba9876543210", "req-call-1",
                                "01a1c554-5359-4cc3-98c4-dc0c0c07398f",    // a UUIDv4: random, no time
                                "01a1c554-5359-7cc3-c8c4-dc0c0c07398f",    // variant 110x
                                "01a1c554-5359-7cc3-98c4-dc0c0c07398",     // short
                                "01a1c554+5359-7cc3-98c4-dc0c0c07398f",    // not a dash
                                "01a1c554-5359-7cc3-98c4-dc0c0c07398g"}) {  // not hex
    INFO(bad);
    CHECK_FALSE(request_id_time(bad));
  }
}

TEST_CASE("report: a lookup by a generated request id reads the minutes around its start, else the whole range", "[report]") {
  sample_ledger s;
  const auto t = utc_ms(2026, 11, 10, 12);
  const std::string generated = make_request_id(t, 42);
  // An id generated before ids carried their start: 24 random digits, read as a time far away.
  const std::string old_style = "tg-7f3e9a01c4d2b85e6a0f1c39";
  REQUIRE(request_id_time(old_style));
  REQUIRE(request_id_time(old_style)->ms > utc_ms(2100, 1, 1));
  std::vector<usage_record> rows;
  auto first = call(t, "gpt-4.1", 0.5);
  first.request_id = generated;
  // The same id sent again by a client ten minutes later: another call under the same id.
  auto reused = call(t + 600'000, "gpt-4.1", 0.25);
  reused.request_id = generated;
  auto old = call(t + 1000, "gpt-4.1", 0.125);
  old.request_id = old_style;
  // A client's UUIDv7, made 1.5 s before the call reached tollgate (by the client's clock).
  auto uuid_call = call(t + 5000, "gpt-4.1", 0.03125);
  uuid_call.request_id = "01a1c554-5fac-7cc3-98c4-dc0c0c07398f";
  REQUIRE(request_id_time(uuid_call.request_id)->ms == t + 3500);
  // An id a tollgate in front generated and sent on: this call started 400 ms after the id's time.
  auto behind = call(t + 2400, "gpt-4.1", 0.0625);
  behind.request_id = make_request_id(t + 2000, 7);
  for (int i = 0; i < 50; ++i) rows.push_back(call(t - 3'600'000 + i * 60'000, "gpt-4.1", 0.01));
  rows.push_back(first);
  rows.push_back(reused);
  rows.push_back(old);
  rows.push_back(behind);
  rows.push_back(uuid_call);
  auto uuid_again = call(t + 605'000, "gpt-4.1", 0.015625);  // the client sent it again, later
  uuid_again.request_id = uuid_call.request_id;
  rows.push_back(uuid_again);
  s.write(rows);
  const auto costs = [](const nlohmann::json& page) {
    std::vector<double> out;
    for (const auto& c : page["calls"]) out.push_back(c["cost_usd"].get<double>());
    return out;
  };

  calls_query q;
  q.match = {{"request_id", generated}};
  // The call that got the id; the client's later call under it lies outside those minutes.
  CHECK(costs(query_calls(s.path, q)) == std::vector<double>{0.5});
  // A range that leaves those minutes out reads the range, and finds the later call.
  q.range = {t + 120'000, t + 3'600'000};
  CHECK(costs(query_calls(s.path, q)) == std::vector<double>{0.25});
  q = {};
  q.match = {{"request_id", behind.request_id}};
  CHECK(costs(query_calls(s.path, q)) == std::vector<double>{0.0625});
  q.match = {{"request_id", uuid_call.request_id}};
  CHECK(costs(query_calls(s.path, q)) == std::vector<double>{0.03125});  // the minutes of its time only
  // An id whose time finds nothing falls back to the whole range, with one CSV header.
  q = {};
  q.match = {{"request_id", old_style}};
  CHECK(costs(query_calls(s.path, q)) == std::vector<double>{0.125});
  std::string next;
  const std::string csv = query_calls_csv(s.path, q, next);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 2);
  CHECK(csv.starts_with("id,request_id,"));
  CHECK(csv.find(old_style) != std::string::npos);
  CHECK(next.empty());
  // Other filters still apply inside those minutes.
  q.match = {{"request_id", generated}, {"team", "nope"}};
  CHECK(query_calls(s.path, q)["calls"].empty());
}

TEST_CASE("json_text: amounts shortest round-trip, the rest as nlohmann prints it", "[report]") {
  nlohmann::json j = {{"cost_usd", 0.04489090291969575}, {"n", 3}, {"s", "a\"b"}, {"whole", 2.0},
                      {"none", nullptr}, {"list", {1, 0.1, "x"}}, {"empty", nlohmann::json::object()}};
  const std::string compact = json_text(j);
  CHECK(compact.find("\"cost_usd\":0.04489090291969575,") != std::string::npos);  // nlohmann: ...695747
  CHECK(compact.find("\"whole\":2.0") != std::string::npos);
  CHECK(nlohmann::json::parse(compact) == j);
  nlohmann::json no_floats = {{"a", {1, 2}}, {"b", {{"c", "d"}}}, {"e", nlohmann::json::array()}};
  CHECK(json_text(no_floats) == no_floats.dump());
  CHECK(json_text(no_floats, 2) == no_floats.dump(2));
  CHECK(json_text(nlohmann::json(std::nan(""))) == "null");
}
