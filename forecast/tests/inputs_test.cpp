// The tool's input readers: request logs (CSV with the Azure trace's columns, JSON Lines with
// Mooncake's) and the SQLite ledger, read back into events.
#include <catch2/catch.hpp>

#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include "forecast/tool/inputs.hpp"

using namespace tollgate::forecast;
namespace fs = std::filesystem;

namespace {

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / ("tollgate_forecast_test_" + std::to_string(::getpid()) + "_" + name);
}

void write(const fs::path& p, const std::string& text) {
  std::ofstream out(p);
  out << text;
}

// A request log with this text, read and removed (the name's suffix picks CSV or JSON Lines).
tool::events_read load_log(const std::string& name, const std::string& text, double unit_ms = 0.0) {
  const auto p = temp_file(name);
  write(p, text);
  auto r = tool::load_request_log(p.string(), unit_ms);
  fs::remove(p);
  return r;
}

}  // namespace

TEST_CASE("inputs: a request-log CSV with the Azure trace's columns", "[forecast]") {
  const auto r = load_log("azure.csv",
                           "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\n"
                           "2023-11-16 18:17:04.0319600,3180,8\n");
  REQUIRE(r.error.empty());
  REQUIRE(r.events.size() == 2);
  CHECK(r.events[0].timestamp_ms == 1700158623979);
  CHECK(r.events[0].prompt_tokens == 4808);
  CHECK(r.events[1].completion_tokens == 8);
}

TEST_CASE("inputs: a byte-order mark before a CSV header or a JSON line", "[forecast]") {
  const auto a = load_log("bom.csv",
                           "\xEF\xBB\xBFTIMESTAMP,ContextTokens,GeneratedTokens\n"
                           "2023-11-16 18:17:03.9799600,4808,10\n");
  REQUIRE(a.error.empty());
  REQUIRE(a.events.size() == 1);
  CHECK(a.events[0].prompt_tokens == 4808);
  // No .jsonl suffix: recognised by its first '{'.
  const auto b =
      load_log("bom.txt", "\xEF\xBB\xBF{\"timestamp\": 1000, \"input_length\": 7, \"output_length\": 5}\n", 1.0);
  REQUIRE(b.error.empty());
  REQUIRE(b.events.size() == 1);
  CHECK(b.events[0].timestamp_ms == 1000);
  CHECK(b.events[0].completion_tokens == 5);
}

TEST_CASE("inputs: JSON Lines with Mooncake's fields and a bad line", "[forecast]") {
  const auto p = temp_file("mooncake.jsonl");
  SECTION("good file") {
    write(p, "{\"timestamp\": 0, \"input_length\": 6758, \"output_length\": 500, \"hash_ids\": [0, 1]}\n"
             "{\"timestamp\": 61000, \"input_length\": 7322, \"output_length\": 490, \"model\": \"kimi\"}\n");
    const auto r = tool::load_request_log(p.string(), 1.0);
    REQUIRE(r.error.empty());
    REQUIRE(r.events.size() == 2);
    CHECK(r.events[1].timestamp_ms == 61000);
    CHECK(r.events[1].model == "kimi");
    CHECK(r.events[0].prompt_tokens == 6758);
  }
  SECTION("a line that is not JSON is reported with its number") {
    write(p, "{\"timestamp\": 0}\nnot json\n");
    const auto r = tool::load_request_log(p.string(), 1.0);
    CHECK(r.error.find(":2:") != std::string::npos);
  }
  fs::remove(p);
}

TEST_CASE("inputs: relative timestamps, their unit guessed per file", "[forecast]") {
  SECTION("Mooncake: milliseconds since the trace start, said in a note") {
    const auto r = load_log("mooncake_guess.jsonl",
                            "{\"timestamp\": 0, \"input_length\": 6758, \"output_length\": 500, \"hash_ids\": [0, 1]}\n"
                            "{\"timestamp\": 3536999, \"input_length\": 7322, \"output_length\": 490, "
                            "\"hash_ids\": [0]}\n");
    REQUIRE(r.error.empty());
    REQUIRE(r.events.size() == 2);
    CHECK(r.events[1].timestamp_ms == 3536999);  // 59 minutes, not 41 days
    CHECK(r.note.find("milliseconds") != std::string::npos);
    CHECK(r.note.find("--time-unit s") != std::string::npos);
  }
  SECTION("BurstGPT's raw trace: seconds since its start, its token columns") {
    const auto r = load_log("burstgpt_raw.csv",
                            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                            "5,ChatGPT,472,18,490,Conversation log\n"
                            "5183999.5,GPT-4,1087,0,1087,API log\n");
    REQUIRE(r.error.empty());
    REQUIRE(r.events.size() == 2);
    CHECK(r.events[0].timestamp_ms == 5000);
    CHECK(r.events[1].timestamp_ms == 5183999500);
    CHECK(r.events[0].prompt_tokens == 472);
    CHECK(r.events[0].completion_tokens == 18);
    CHECK(r.events[1].model == "GPT-4");
    CHECK(r.note.find("seconds since the trace start") != std::string::npos);
  }
  SECTION("epoch seconds and epoch milliseconds need no note; --time-unit wins") {
    const auto p = temp_file("epoch.csv");
    write(p, "timestamp,prompt_tokens\n1736121600,1\n1736121660.25,2\n");
    auto r = tool::load_request_log(p.string(), 0.0);
    REQUIRE(r.error.empty());
    CHECK(r.events[1].timestamp_ms == 1736121660250);
    CHECK(r.note.empty());
    write(p, "timestamp,prompt_tokens\n1736121600000,1\n");
    r = tool::load_request_log(p.string(), 0.0);
    CHECK(r.events[0].timestamp_ms == 1736121600000);
    write(p, "timestamp,prompt_tokens\n120,1\n");
    r = tool::load_request_log(p.string(), 1.0);
    CHECK(r.events[0].timestamp_ms == 120);
    CHECK(r.note.empty());
    write(p, "timestamp,prompt_tokens\n1e30,1\n");
    CHECK(tool::load_request_log(p.string(), 0.0).error.find(":2:") != std::string::npos);
    fs::remove(p);
  }
}

TEST_CASE("inputs: amounts that are not numbers are kept for the caller's error, empty ones counted", "[forecast]") {
  SECTION("CSV: the first bad line of each field, empty cells and short rows") {
    const auto r = load_log("amounts.csv",
                            "timestamp,prompt_tokens,completion_tokens\n"
                            "1736121600,10,1\n"
                            "1736121660,abc,-3\n"
                            "1736121720,,2\n"
                            "1736121780,1e308,x\n"
                            "1736121840,5\n");
    REQUIRE(r.error.empty());  // a field nobody sums must not reject the file
    REQUIRE(r.events.size() == 5);
    CHECK(r.prompt.present);
    CHECK(r.prompt.bad_line == 3);
    CHECK(r.prompt.bad_text == "abc");
    CHECK(r.prompt.empty == 1);
    CHECK(r.completion.bad_line == 3);
    CHECK(r.completion.bad_text == "-3");
    CHECK(r.completion.empty == 1);  // the short last row
    CHECK_FALSE(r.cost.present);
    CHECK(r.events[0].prompt_tokens == 10);
    CHECK(r.events[1].prompt_tokens == 0);
  }
  SECTION("JSON Lines: numbers as strings are read, null and absent keys are empty, other types bad") {
    const auto r = load_log("amounts.jsonl",
                            "{\"timestamp\": 1736121600, \"prompt_tokens\": \"12\", \"cost_usd\": 0.5}\n"
                            "{\"timestamp\": 1736121660, \"prompt_tokens\": null}\n"
                            "\t\n"
                            "{\"timestamp\": 1736121720, \"prompt_tokens\": [1], \"cost_usd\": 1e10}\n");
    REQUIRE(r.error.empty());
    REQUIRE(r.events.size() == 3);
    CHECK(r.events[0].prompt_tokens == 12);
    CHECK(r.events[0].cost_usd == 0.5);
    CHECK(r.prompt.empty == 1);
    CHECK(r.prompt.bad_line == 4);
    CHECK(r.prompt.bad_text == "[1]");
    CHECK(r.cost.empty == 1);
    CHECK(r.cost.bad_line == 4);  // above max_request_cost_usd
    CHECK_FALSE(r.completion.present);
    CHECK(r.completion.empty == 3);
  }
}

TEST_CASE("inputs: epoch seconds mixed with epoch milliseconds are refused with both lines", "[forecast]") {
  const auto r = load_log("mixed.csv", "timestamp\n1736121600\n1736121660\n1736121720000\n");
  CHECK(r.error.find("mixed.csv:2: timestamp 1736121600 reads as epoch seconds") != std::string::npos);
  CHECK(r.error.find("line 4") != std::string::npos);
  CHECK(load_log("mixed_given.csv", "timestamp\n1736121600\n1736121720000\n", 1.0).error.empty());
  // The file's first numeric timestamp sets its clock; the line with the smaller clock is named
  // first. A stray 0 in an epoch log, first or later:
  CHECK(load_log("stray_first.csv", "timestamp\n0\n1736121600\n").error ==
        temp_file("stray_first.csv").string() +
            ":2: timestamp 0 reads as time since the trace start, but line 3's 1736121600 reads as epoch seconds: "
            "one unit per file (or give --time-unit)");
  CHECK(load_log("stray_later.jsonl", "{\"ts\": 1736121600000}\n{\"ts\": 1736121660000}\n{\"ts\": 0}\n").error.find(
            "stray_later.jsonl:3: timestamp 0 reads as time since the trace start, but line 1's 1736121600000 reads "
            "as epoch milliseconds") != std::string::npos);
  // Relative milliseconds past 1e8 (27.8 hours) read as epoch seconds when guessed: refused,
  // and --time-unit ms reads them.
  const std::string long_trace = "timestamp,input_length,output_length\n0,1,1\n99999999,1,1\n100000000,1,1\n";
  CHECK(load_log("long_trace.csv", long_trace).error.find(":2: timestamp 0 reads as time since the trace start, but "
                                                          "line 4's 100000000 reads as epoch seconds") != std::string::npos);
  const auto given = load_log("long_trace.csv", long_trace, 1.0);
  REQUIRE(given.error.empty());
  CHECK(given.events.back().timestamp_ms == 100000000);
  // A date among numbers has no unit to guess and is read as the date.
  const auto dated = load_log("dated.csv", "timestamp\n1736121600\n2025-01-06T00:01:00Z\n1736121720\n");
  REQUIRE(dated.error.empty());
  CHECK(dated.events[1].timestamp_ms == 1736121660000);
  CHECK(dated.events[2].timestamp_ms == 1736121720000);
}

TEST_CASE("inputs: a request log is handed on line by line, none kept", "[forecast]") {
  const auto p = temp_file("streamed.csv");
  write(p, "timestamp,model,prompt_tokens\n1736121600,a,5\n1736121660,,7\n1736121720,b\n");  // a short last row
  std::vector<std::string> seen;
  const auto r = tool::load_request_log(p.string(), 0.0, [&](const request_event& e) {
    seen.push_back(e.model + "@" + std::to_string(e.timestamp_ms) + "=" + std::to_string(static_cast<int>(e.prompt_tokens)));
  });
  fs::remove(p);
  REQUIRE(r.error.empty());
  CHECK(r.events.empty());
  CHECK(r.records == 3);
  CHECK(r.prompt.empty == 1);
  // Each record is its own line's: no model or amount carried over from the line before.
  CHECK(seen == std::vector<std::string>{"a@1736121600000=5", "@1736121660000=7", "b@1736121720000=0"});
  // JSON Lines, relative milliseconds (Mooncake's fields): converted as they are read, the note at the end.
  const auto q = temp_file("streamed.jsonl");
  write(q, "{\"timestamp\": 0, \"hash_ids\": [1], \"model\": \"m\", \"input_length\": 3}\n{\"timestamp\": 60000}\n");
  seen.clear();
  const auto j = tool::load_request_log(q.string(), 0.0, [&](const request_event& e) {
    seen.push_back(e.model + "@" + std::to_string(e.timestamp_ms) + "=" + std::to_string(static_cast<int>(e.prompt_tokens)));
  });
  fs::remove(q);
  REQUIRE(j.error.empty());
  CHECK(j.records == 2);
  CHECK(seen == std::vector<std::string>{"m@0=3", "@60000=0"});
  CHECK(j.note.find("the largest is 60000); read as milliseconds") != std::string::npos);
}

// A ledger file at `path` made by `sql` (any previous file removed first).
void write_ledger(const fs::path& path, const char* sql) {
  fs::remove(path);
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.string().c_str(), &db) == SQLITE_OK);
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_OK);
}

TEST_CASE("inputs: the ledger's calls table, opened read-only", "[forecast]") {
  const auto p = temp_file("ledger.db");
  write_ledger(p,
               "CREATE TABLE calls (id INTEGER PRIMARY KEY, start_ms INTEGER NOT NULL, price_model TEXT,"
               " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost_usd REAL NOT NULL);"
               "INSERT INTO calls VALUES (1, 1736121600000, 'gpt-4o', 100, 10, 0.5);"
               "INSERT INTO calls VALUES (2, 1736121660000, NULL, 200, 20, 0.25);");
  const auto r = tool::load_ledger(p.string());
  REQUIRE(r.error.empty());
  REQUIRE(r.events.size() == 2);
  CHECK(r.events[0].model == "gpt-4o");
  CHECK(r.events[1].model.empty());
  CHECK(r.events[1].cost_usd == 0.25);
  CHECK(r.events[1].timestamp_ms == 1736121660000);
  CHECK(r.records == 2);
  // Row by row: each handed over as read, none kept.
  std::vector<std::string> models;
  const auto streamed = tool::load_ledger(p.string(), [&](const request_event& e) { models.push_back(e.model + "@" + std::to_string(e.timestamp_ms)); });
  CHECK(streamed.error.empty());
  CHECK(streamed.events.empty());
  CHECK(streamed.records == 2);
  CHECK(models == std::vector<std::string>{"gpt-4o@1736121600000", "@1736121660000"});
  fs::remove(p);

  // One model's, team's or key's calls in a time window, selected by the query: the others are
  // not read at all (a broken amount in another team's row is not this forecast's problem).
  write_ledger(p,
               "CREATE TABLE calls (id INTEGER PRIMARY KEY, start_ms INTEGER NOT NULL, price_model TEXT,"
               " client_key_id TEXT, team TEXT, prompt_tokens, completion_tokens, cost_usd);"
               "INSERT INTO calls VALUES (1, 1736121600000, 'm', 'k1', 'red', 1, 1, 0.1);"
               "INSERT INTO calls VALUES (2, 1736121660000, 'm', 'k2', 'red', 2, 1, 0.2);"
               "INSERT INTO calls VALUES (3, 1736121720000, 'm', 'k3', 'blue', 'x', 1, 0.3);"
               "INSERT INTO calls VALUES (4, 1736121780000, 'n', 'k2', NULL, 4, 1, 0.4);");
  // A filter (designated initializers that leave members out warn with g++ 12's -Wextra).
  auto where = [](const char* model, const char* team, const char* key,
                  std::int64_t from_ms = std::numeric_limits<std::int64_t>::min(),
                  std::int64_t to_ms = std::numeric_limits<std::int64_t>::max()) {
    tool::ledger_filter f;
    f.model = model;
    f.team = team;
    f.key = key;
    f.from_ms = from_ms;
    f.to_ms = to_ms;
    return f;
  };
  auto costs = [&](const tool::ledger_filter& f) {
    const auto r = tool::load_ledger(p.string(), f);
    CHECK(r.error.empty());
    CHECK(r.records == r.events.size());
    std::vector<double> c;
    for (const auto& e : r.events) c.push_back(e.cost_usd);
    return c;
  };
  CHECK(costs(where("", "red", "")) == std::vector<double>{0.1, 0.2});
  CHECK(costs(where("", "", "k2")) == std::vector<double>{0.2, 0.4});
  CHECK(costs(where("", "red", "k2")) == std::vector<double>{0.2});
  CHECK(costs(where("", "green", "")).empty());
  CHECK(costs({}).size() == 4);
  CHECK(costs(where("n", "", "")) == std::vector<double>{0.4});
  CHECK(costs(where("m", "", "k2")) == std::vector<double>{0.2});
  // [from, to): the row at `from` is in, the one at `to` out.
  CHECK(costs(where("", "", "", 1736121660000, 1736121780000)) == std::vector<double>{0.2, 0.3});
  CHECK(costs(where("", "", "", 1736121660001)) == std::vector<double>{0.3, 0.4});
  CHECK(costs(where("", "", "", std::numeric_limits<std::int64_t>::min(), 1736121660000)) == std::vector<double>{0.1});
  CHECK(costs(where("", "", "k2", 1736121700000)) == std::vector<double>{0.4});
  CHECK(tool::load_ledger(p.string(), where("", "red", "")).prompt.bad_line == 0);
  CHECK(tool::load_ledger(p.string(), where("", "blue", "")).prompt.bad_line == 3);
  fs::remove(p);

  CHECK_FALSE(tool::load_ledger(temp_file("missing.db").string()).error.empty());

  // A row without a usable start_ms (NULL, text, 0) would stretch the series back to 1970.
  write_ledger(p,
               "CREATE TABLE calls (id INTEGER PRIMARY KEY, start_ms, price_model TEXT, prompt_tokens,"
               " completion_tokens, cost_usd);"
               "INSERT INTO calls VALUES (1, 1736121600000, 'm', 1, 1, 0.1);"
               "INSERT INTO calls VALUES (2, NULL, 'm', 1, 1, 0.1);"
               "INSERT INTO calls VALUES (3, 0, 'm', 1, 1, 0.1);"
               "INSERT INTO calls VALUES (4, '2025-01-06', 'm', 1, 1, 0.1);"
               "INSERT INTO calls VALUES (5, 1736121660000, 'm', NULL, 1, 0.1);");
  const auto skipped = tool::load_ledger(p.string());
  REQUIRE(skipped.error.empty());
  REQUIRE(skipped.events.size() == 2);
  CHECK(skipped.events[1].prompt_tokens == 0);  // NULL usage: unknown, read as 0
  CHECK(skipped.note.find("3 rows without a positive integer start_ms") != std::string::npos);
  fs::remove(p);

  // Amounts are checked as a request log's: the first bad one is named by its rowid.
  write_ledger(p,
               "CREATE TABLE calls (id INTEGER PRIMARY KEY, start_ms, price_model TEXT, prompt_tokens,"
               " completion_tokens, cost_usd);"
               "INSERT INTO calls VALUES (1, 1736121600000, 'm', 1, 1, 0.1);"
               "INSERT INTO calls VALUES (7, 1736121660000, 'm', 'x', -5, 1e10);"
               "INSERT INTO calls VALUES (8, 1736121720000, 'm', '12', 1, NULL);");
  const auto bad = tool::load_ledger(p.string());
  REQUIRE(bad.error.empty());
  CHECK(bad.prompt.bad_line == 7);
  CHECK(bad.prompt.bad_text == "x");
  CHECK(bad.completion.bad_line == 7);
  CHECK(bad.cost.bad_line == 7);
  CHECK(bad.cost.empty == 1);
  CHECK(bad.events[2].prompt_tokens == 12);  // a number stored as text is still a number
  fs::remove(p);
}
