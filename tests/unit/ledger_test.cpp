// Tests of the SQLite ledger against real database files in a temporary directory: batching
// from many threads, column mapping, schema and migrations, admission, shutdown and failures.
#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/usage_record.hpp"
#include "ledger/pg_shipper.hpp"
#include "ledger/ledger.hpp"

namespace tollgate {

// The test-only knob declared a friend in ledger.hpp.
struct ledger_test_access {
  static void set_busy_timeout(ledger& l, std::chrono::milliseconds t) { l.busy_timeout_ = t; }
};

}  // namespace tollgate

namespace {

using namespace tollgate;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed with everything in it.
struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("tollgate-ledger-test-" + std::to_string(rd()) + "-" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// A second, independent connection to inspect (or lock) the ledger's file.
struct db_conn {
  sqlite3* db = nullptr;
  explicit db_conn(const std::string& path) {
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    sqlite3_busy_timeout(db, 2000);
  }
  ~db_conn() { sqlite3_close(db); }
  db_conn(const db_conn&) = delete;
  db_conn& operator=(const db_conn&) = delete;

  void exec(const std::string& sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    INFO(sql << ": " << (err ? err : ""));
    sqlite3_free(err);
    REQUIRE(rc == SQLITE_OK);
  }
  // Rows of a query, each column as text (nullopt for NULL).
  std::vector<std::vector<std::optional<std::string>>> rows(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    INFO(sql);
    REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
    std::vector<std::vector<std::optional<std::string>>> out;
    while (sqlite3_step(st) == SQLITE_ROW) {
      auto& row = out.emplace_back();
      for (int i = 0; i < sqlite3_column_count(st); ++i) {
        if (sqlite3_column_type(st, i) == SQLITE_NULL)
          row.emplace_back(std::nullopt);
        else
          row.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(st, i)));
      }
    }
    sqlite3_finalize(st);
    return out;
  }
  std::int64_t integer(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    INFO(sql);
    REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    const auto v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
  }
  double real(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    INFO(sql);
    REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    const auto v = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    return v;
  }
};

// Waits for a condition the ledger only exposes by polling (write errors); bounded.
template <class F>
bool eventually(F done, std::chrono::milliseconds limit = 5s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

usage_record make_row(int i) {
  usage_record r;
  r.request_id = "req-" + std::to_string(i);
  r.start_ms = 1'700'000'000'000 + i;
  r.route = route_kind::chat_completions;
  r.method = "POST";
  r.requested_model = "gpt-4o-mini";
  r.status = 200;
  r.tokens.prompt = i % 97;
  r.tokens.completion = i % 13;
  r.source = usage_source::upstream;
  r.cost_usd = (i % 7) * 0.25;  // exact in binary, so sums compare exactly
  r.latency_ms = 12.5;
  return r;
}

// Rows from..to-1 through admission, as an I/O thread hands them over.
void submit_rows(ledger& l, int from, int to) {
  for (int i = from; i < to; ++i) {
    REQUIRE(l.reserve());
    l.submit(make_row(i));
  }
}

ledger_options options_for(const temp_dir& dir) {
  ledger_options o;
  o.path = dir.file("tollgate.db");
  return o;
}

}  // namespace

TEST_CASE("ledger: rows submitted from 4 threads are all written once", "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.batch_rows = 250;
  ledger l(opts);
  l.start();

  constexpr int kThreads = 4, kPerThread = 2500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&l, t] {
      for (int i = t * kPerThread; i < (t + 1) * kPerThread; ++i) {
        if (l.reserve()) l.submit(make_row(i));
      }
    });
  }
  for (auto& th : threads) th.join();
  l.flush();

  std::int64_t prompt = 0, completion = 0;
  double cost = 0;
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    const auto r = make_row(i);
    prompt += r.tokens.prompt;
    completion += r.tokens.completion;
    cost += r.cost_usd;
  }
  db_conn db(opts.path);
  CHECK(db.integer("SELECT COUNT(*) FROM calls") == 10'000);
  CHECK(db.integer("SELECT COUNT(DISTINCT request_id) FROM calls") == 10'000);
  CHECK(db.integer("SELECT SUM(prompt_tokens) FROM calls") == prompt);
  CHECK(db.integer("SELECT SUM(completion_tokens) FROM calls") == completion);
  CHECK(db.integer("SELECT SUM(total_tokens) FROM calls") == prompt + completion);
  CHECK(db.real("SELECT SUM(cost_usd) FROM calls") == cost);
  const auto s = l.stats();
  CHECK(s.rows_written == 10'000);
  CHECK(s.write_errors == 0);
  CHECK(s.queue_depth == 0);
  CHECK(l.writable());
}

// The writer inserts 8, 4, 2 or 1 rows per statement: batches of every size up to 19 put a row
// at every place of every statement; each must land once, with its own values.
TEST_CASE("ledger: batches of any size write each row once with its own values", "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  ledger l(opts);
  l.start();
  int next = 0;
  for (int n = 1; n <= 19; ++n) {
    for (int k = 0; k < n; ++k) {
      REQUIRE(l.reserve());
      l.submit(make_row(next++));
    }
    l.flush();
  }
  db_conn db(opts.path);
  CHECK(db.integer("SELECT COUNT(*) FROM calls") == next);
  CHECK(db.integer("SELECT COUNT(DISTINCT request_id) FROM calls") == next);
  CHECK(db.integer("SELECT COUNT(*) FROM calls WHERE request_id != 'req-' || (start_ms - "
                   "1700000000000) OR prompt_tokens != (start_ms - 1700000000000) % 97 OR "
                   "completion_tokens != (start_ms - 1700000000000) % 13") == 0);
  CHECK(l.stats().rows_written == static_cast<std::uint64_t>(next));
}

// The writer binds only the parameters whose value differs from the row bound at the same place
// before (bound_params in ledger.cpp). Rows whose columns repeat and change in turn, between
// NULL, empty, short and long texts, integers and reals, in batches of every remainder (8-, 4-,
// 2- and 1-row statements), must each read back with exactly their own values.
TEST_CASE("ledger: rows that repeat and change columns in turn each keep their own values", "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  ledger l(opts);
  l.start();
  std::mt19937 rng(12345);
  auto pick = [&](auto const& choices) { return choices[rng() % choices.size()]; };
  const std::vector<std::string> texts = {"", "", "a", "gpt-4.1", "gpt-4.1", "gpt-4.1-mini",
                                          "a model name longer than a short string holds", "ü"};
  const std::vector<std::int64_t> ints = {0, 0, 1, 200, 200, -3, 1'000'000'000'000};
  const std::vector<double> reals = {0.0, 0.0, -0.0, 0.25, 0.25, 1e-9, 1532.125, -1.0};
  const std::vector<route_kind> routes = {route_kind::chat_completions, route_kind::chat_completions,
                                          route_kind::messages, route_kind::embeddings};
  std::vector<usage_record> rows;
  for (int i = 0; i < 600; ++i) {
    usage_record r;
    r.request_id = i % 3 == 0 ? "req-" + std::to_string(i) : "a long request id, past any short string " + std::to_string(i);
    r.start_ms = i % 5 == 0 ? 1'700'000'000'000 : 1'700'000'000'000 + i;
    r.route = pick(routes);
    r.method = rng() % 4 ? "POST" : "GET";
    r.requested_model = pick(texts);
    r.served_model = pick(texts);
    r.price_model = pick(texts);
    r.upstream = pick(texts);
    r.client_key_id = pick(texts);
    r.team = pick(texts);
    r.user = pick(texts);
    r.status = static_cast<int>(pick(ints) % 1000);
    r.stream = rng() % 2;
    r.aborted = rng() % 5 == 0;
    r.tokens.prompt = pick(ints);
    r.tokens.completion = pick(ints);
    r.tokens.cached = pick(ints);
    r.tokens.cache_write = pick(ints);
    r.tokens.cache_write_1h = pick(ints);
    r.tokens.reasoning = pick(ints);
    r.tokens.web_search = pick(ints);
    r.tokens.tier = rng() % 3 ? service_tier::none : service_tier::flex;
    r.source = rng() % 2 ? usage_source::upstream : usage_source::estimated;
    r.priced = rng() % 2;
    r.cost_usd = pick(reals);
    r.latency_ms = pick(reals);
    r.first_byte_ms = rng() % 3 ? pick(reals) : -1;
    r.error_kind = pick(texts);
    r.upstream_request_id = pick(texts);
    r.attempts = static_cast<int>(pick(ints) % 7);
    r.provider = pick(texts);
    rows.push_back(r);
  }
  for (std::size_t i = 0; i < rows.size();) {
    const std::size_t n = std::min<std::size_t>(rows.size() - i, 1 + rng() % 23);
    for (std::size_t k = 0; k < n; ++k, ++i) {
      REQUIRE(l.reserve());
      l.submit(usage_record(rows[i]));
    }
    l.flush();
  }

  db_conn db(opts.path);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db.db,
                             "SELECT request_id, start_ms, route, method, requested_model, served_model,"
                             " price_model, upstream, client_key_id, team, user, status, stream, aborted,"
                             " prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens,"
                             " cache_write_1h_tokens, reasoning_tokens, total_tokens, usage_source, priced,"
                             " cost_usd, latency_ms, first_byte_ms, error_kind, upstream_request_id, attempts,"
                             " service_tier, web_search_requests, provider FROM calls ORDER BY id",
                             -1, &st, nullptr) == SQLITE_OK);
  std::size_t n = 0;
  for (; sqlite3_step(st) == SQLITE_ROW; ++n) {
    REQUIRE(n < rows.size());
    const usage_record& r = rows[n];
    INFO("row " << n);
    int c = 0;
    auto text = [&](std::string_view want, bool nullable) {
      const int col = c++;
      INFO("column " << sqlite3_column_name(st, col));
      if (nullable && want.empty()) {
        CHECK(sqlite3_column_type(st, col) == SQLITE_NULL);
        return;
      }
      REQUIRE(sqlite3_column_type(st, col) == SQLITE_TEXT);
      CHECK(std::string_view(reinterpret_cast<const char*>(sqlite3_column_text(st, col)),
                             static_cast<std::size_t>(sqlite3_column_bytes(st, col))) == want);
    };
    auto integer = [&](std::int64_t want) {
      const int col = c++;
      INFO("column " << sqlite3_column_name(st, col));
      REQUIRE(sqlite3_column_type(st, col) == SQLITE_INTEGER);
      CHECK(sqlite3_column_int64(st, col) == want);
    };
    auto real = [&](std::optional<double> want) {
      const int col = c++;
      INFO("column " << sqlite3_column_name(st, col));
      if (!want) {
        CHECK(sqlite3_column_type(st, col) == SQLITE_NULL);
        return;
      }
      REQUIRE(sqlite3_column_type(st, col) == SQLITE_FLOAT);
      CHECK(sqlite3_column_double(st, col) == *want);
    };
    text(r.request_id, false);
    integer(r.start_ms);
    text(to_string(r.route), false);
    text(r.method, false);
    for (const std::string* t : {&r.requested_model, &r.served_model, &r.price_model, &r.upstream,
                                 &r.client_key_id, &r.team, &r.user})
      text(*t, true);
    integer(r.status);
    integer(r.stream);
    integer(r.aborted);
    for (std::int64_t v : {r.tokens.prompt, r.tokens.completion, r.tokens.cached, r.tokens.cache_write,
                           r.tokens.cache_write_1h, r.tokens.reasoning, r.tokens.total()})
      integer(v);
    text(to_string(r.source), false);
    integer(r.priced);
    real(r.cost_usd);
    real(r.latency_ms);
    real(r.first_byte_ms >= 0 ? std::optional<double>(r.first_byte_ms) : std::nullopt);
    text(r.error_kind, true);
    text(r.upstream_request_id, true);
    integer(r.attempts);
    text(to_string(r.tokens.tier), true);
    integer(std::max<std::int64_t>(r.tokens.web_search, 0));
    text(r.provider, true);
  }
  sqlite3_finalize(st);
  CHECK(n == rows.size());
}

// The writer's queue hands out the oldest rows first, at most one batch at a time.
TEST_CASE("ledger: the row queue keeps order and hands out whole batches", "[ledger]") {
  row_chunks q;
  q.set_chunk(3);
  CHECK(q.empty());
  for (int i = 0; i < 8; ++i) q.push_back(make_row(i));
  CHECK(q.size() == 8);
  std::vector<usage_record> out;
  std::vector<std::size_t> sizes;
  int expect = 0;
  while (!q.empty()) {
    q.take_front(out);
    sizes.push_back(out.size());
    for (const auto& r : out) CHECK(r.request_id == make_row(expect++).request_id);
    if (q.size() == 5) {  // rows pushed meanwhile go behind the ones still queued
      for (int i = 8; i < 10; ++i) q.push_back(make_row(i));
    }
  }
  CHECK(expect == 10);
  CHECK(sizes == std::vector<std::size_t>{3, 3, 3, 1});
  q.push_back(make_row(10));
  q.take_front(out);  // out's earlier rows are dropped, not handed out again
  REQUIRE(out.size() == 1);
  CHECK(out[0].request_id == make_row(10).request_id);
  q.push_back(make_row(11));
  q.clear();
  CHECK(q.empty());
  CHECK(q.size() == 0);
}

// Batches much smaller than the rows waiting: every row once, in submission order.
TEST_CASE("ledger: small batches keep submission order", "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.batch_rows = 7;
  ledger l(opts);
  l.start();
  submit_rows(l, 0, 500);
  l.flush();
  db_conn db(opts.path);
  CHECK(db.integer("SELECT COUNT(*) FROM calls") == 500);
  // ids follow commit order: start_ms (the row's number) must rise with them.
  CHECK(db.integer("SELECT COUNT(*) FROM calls a JOIN calls b ON b.id = a.id + 1 "
                   "WHERE b.start_ms <= a.start_ms") == 0);
}

TEST_CASE("ledger: every record field lands in its column", "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  ledger l(opts);
  l.start();
  const std::string columns =
      "request_id, start_ms, route, method, requested_model, served_model, price_model, upstream,"
      " client_key_id, team, user, status, stream, aborted, prompt_tokens, completion_tokens,"
      " cached_tokens, cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, total_tokens,"
      " usage_source, priced, cost_usd, latency_ms, first_byte_ms, error_kind,"
      " upstream_request_id, attempts, provider";

  SECTION("a fully populated record") {
    usage_record r;
    r.request_id = "req-full";
    r.start_ms = 1'733'000'000'123;
    r.route = route_kind::messages;
    r.method = "POST";
    r.requested_model = "claude-sonnet-4-5";
    r.served_model = "claude-sonnet-4-5-20250929";
    r.price_model = "claude-sonnet-4-5";
    r.upstream = "anthropic";
    r.client_key_id = "key-7";
    r.team = "search";
    r.user = "u-42";
    r.status = 502;
    r.stream = true;
    r.aborted = true;
    r.tokens = {1200, 340, 800, 300, 100, 40};
    r.source = usage_source::estimated;
    r.priced = true;
    r.cost_usd = 0.0123;
    r.latency_ms = 1532.25;
    r.first_byte_ms = 210.5;
    r.error_kind = "upstream_reset";
    r.upstream_request_id = "msg_01ABC";
    r.attempts = 2;
    r.provider = "Google Vertex";
    REQUIRE(l.reserve());
    l.submit(r);
    l.flush();

    db_conn db(opts.path);
    const auto rows = db.rows("SELECT " + columns + " FROM calls");
    REQUIRE(rows.size() == 1);
    const std::vector<std::optional<std::string>> expected = {
        "req-full", "1733000000123", "messages", "POST", "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "anthropic", "key-7", "search", "u-42",
        "502", "1", "1", "1200", "340", "800", "300", "100", "40", "1540", "estimated", "1",
        "0.0123", "1532.25", "210.5", "upstream_reset", "msg_01ABC", "2", "Google Vertex"};
    CHECK(rows[0] == expected);
    CHECK(db.real("SELECT cost_usd FROM calls") == 0.0123);
  }

  SECTION("empty strings and a missing first byte are NULL") {
    usage_record r;
    r.request_id = "req-empty";
    r.method = "GET";
    r.route = route_kind::models;
    r.first_byte_ms = -1;
    REQUIRE(l.reserve());
    l.submit(r);
    l.flush();

    db_conn db(opts.path);
    const auto rows = db.rows("SELECT " + columns + " FROM calls");
    REQUIRE(rows.size() == 1);
    const std::optional<std::string> null;
    const std::vector<std::optional<std::string>> expected = {
        "req-empty", "0", "models", "GET", null, null, null, null, null, null, null,
        "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "none", "0",
        "0.0", "0.0", null, null, null, "1", null};
    CHECK(rows[0] == expected);
  }
}

TEST_CASE("ledger: schema, WAL mode and migrations", "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);

  SECTION("a new database in a missing directory is created in WAL mode at the current version") {
    opts.path = dir.file("nested/deeper/tollgate.db");
    ledger l(opts);
    l.start();
    db_conn db(opts.path);
    CHECK(db.rows("PRAGMA journal_mode")[0][0] == "wal");
    CHECK(db.integer("SELECT MAX(version) FROM schema_version") == ledger_schema_version());
    // 1: calls; 2: client_keys; 3: start_ms the only index; 4: service_tier, web_search_requests;
    // 5: provider
    CHECK(ledger_schema_version() == 5);
    CHECK(db.integer("SELECT COUNT(*) FROM sqlite_master WHERE name = 'client_keys'") == 1);
    CHECK(db.rows("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'calls_%'") ==
          std::vector<std::vector<std::optional<std::string>>>{{"calls_start_ms"}});
  }

  SECTION("a version-2 database loses its two composite indexes, gains the later columns and keeps its rows") {
    {
      db_conn db(opts.path);
      db.exec(ledger_schema_sql());
      db.exec("ALTER TABLE calls DROP COLUMN service_tier; ALTER TABLE calls DROP COLUMN web_search_requests;"
              "ALTER TABLE calls DROP COLUMN provider;");
      db.exec("CREATE INDEX calls_price_model_start_ms ON calls(price_model, start_ms);"
              "CREATE INDEX calls_client_key_id_start_ms ON calls(client_key_id, start_ms);"
              "CREATE TABLE schema_version(version INTEGER NOT NULL);"
              "INSERT INTO schema_version VALUES (1), (2);"
              "INSERT INTO calls (request_id, start_ms, route, method, status, stream, aborted,"
              " prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens,"
              " cache_write_1h_tokens, reasoning_tokens, total_tokens, usage_source, priced,"
              " cost_usd, latency_ms, attempts)"
              " VALUES ('old', 1, 'chat_completions', 'POST', 200, 0, 0, 1, 2, 0, 0, 0, 0, 3,"
              " 'upstream', 1, 0.5, 10, 1)");
      CHECK(db.integer("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index'") == 3);
    }
    ledger l(opts);
    l.start();
    REQUIRE(l.reserve());
    l.submit(make_row(1));
    l.stop();
    db_conn db(opts.path);
    CHECK(db.integer("SELECT MAX(version) FROM schema_version") == 5);
    CHECK(db.rows("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'calls_%'") ==
          std::vector<std::vector<std::optional<std::string>>>{{"calls_start_ms"}});
    CHECK(db.integer("SELECT COUNT(*) FROM calls") == 2);
    // The old row reads no tier, no searches and no provider; the new one was written with them.
    CHECK(db.rows("SELECT service_tier, web_search_requests, provider FROM calls WHERE request_id = 'old'") ==
          std::vector<std::vector<std::optional<std::string>>>{{std::nullopt, "0", std::nullopt}});
  }

  SECTION("a version-4 database gains the provider column and keeps its rows") {
    {
      db_conn db(opts.path);
      db.exec(ledger_schema_sql());
      db.exec("ALTER TABLE calls DROP COLUMN provider;"
              "CREATE TABLE schema_version(version INTEGER NOT NULL);"
              "INSERT INTO schema_version VALUES (1), (2), (3), (4);"
              "INSERT INTO calls (request_id, start_ms, route, method, status, stream, aborted,"
              " prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens,"
              " cache_write_1h_tokens, reasoning_tokens, total_tokens, usage_source, priced,"
              " cost_usd, latency_ms, attempts, service_tier)"
              " VALUES ('old', 1, 'chat_completions', 'POST', 200, 0, 0, 1, 2, 0, 0, 0, 0, 3,"
              " 'upstream', 1, 0.5, 10, 1, 'flex')");
    }
    ledger l(opts);
    l.start();
    auto row = make_row(1);
    row.provider = "DeepInfra";
    REQUIRE(l.reserve());
    l.submit(row);
    l.stop();
    db_conn db(opts.path);
    CHECK(db.integer("SELECT MAX(version) FROM schema_version") == 5);
    CHECK(db.rows("SELECT request_id, service_tier, provider FROM calls ORDER BY id") ==
          std::vector<std::vector<std::optional<std::string>>>{{"old", "flex", std::nullopt},
                                                              {row.request_id, std::nullopt, "DeepInfra"}});
  }

  SECTION("reopening an existing database keeps its rows and applies no migration twice") {
    for (int run = 0; run < 2; ++run) {
      ledger l(opts);
      l.start();
      REQUIRE(l.reserve());
      l.submit(make_row(run));
      l.stop();
    }
    db_conn db(opts.path);
    CHECK(db.integer("SELECT COUNT(*) FROM schema_version") == ledger_schema_version());
    CHECK(db.integer("SELECT COUNT(*) FROM calls") == 2);
  }

  SECTION("a database from a newer build is refused") {
    {
      db_conn db(opts.path);
      db.exec("CREATE TABLE schema_version(version INTEGER NOT NULL);"
              "INSERT INTO schema_version VALUES (1), (2), (3), (4), (5), (6)");
    }
    ledger l(opts);
    CHECK_THROWS_WITH(l.start(), Catch::StartsWith("ledger: cannot open " + opts.path) &&
                                     Catch::Contains("schema version 6 is newer"));
  }

  SECTION("a path that cannot be a database is refused with the path in the message") {
    std::ofstream(dir.file("plain-file")) << "x";
    opts.path = dir.file("plain-file/tollgate.db");
    ledger l(opts);
    CHECK_THROWS_WITH(l.start(), Catch::StartsWith("ledger: cannot open " + opts.path + ": "));
  }

  SECTION("ledger_schema_sql creates the table the writer inserts into") {
    db_conn db(dir.file("tool.db"));
    db.exec(ledger_schema_sql());
    CHECK(db.integer("SELECT COUNT(*) FROM pragma_table_info('calls')") == 33);
  }
}

TEST_CASE("ledger: the service tier and web searches are written to their columns", "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  {
    ledger l(opts);
    l.start();
    auto a = make_row(1), b = make_row(2);
    a.tokens.tier = service_tier::flex;
    a.tokens.web_search = 3;
    b.tokens.tier = service_tier::none;
    REQUIRE(l.reserve());
    l.submit(a);
    REQUIRE(l.reserve());
    l.submit(b);
    l.stop();
  }
  db_conn db(opts.path);
  CHECK(db.rows("SELECT service_tier, web_search_requests FROM calls ORDER BY id") ==
        std::vector<std::vector<std::optional<std::string>>>{{"flex", "3"}, {std::nullopt, "0"}});
}

TEST_CASE("ledger: reserve refuses at capacity until a slot is released or committed",
          "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.queue_capacity = 3;
  ledger l(opts);
  l.start();

  REQUIRE(l.reserve());
  REQUIRE(l.reserve());
  REQUIRE(l.reserve());
  CHECK_FALSE(l.reserve());

  SECTION("release frees one slot") {
    l.release();
    CHECK(l.reserve());
    CHECK_FALSE(l.reserve());
  }
  SECTION("a submitted row holds its slot until committed") {
    l.submit(make_row(1));
    CHECK_FALSE(l.reserve());
    l.flush();
    CHECK(l.reserve());
    CHECK_FALSE(l.reserve());
  }
}

TEST_CASE("ledger: a batch is written after flush_interval without a flush", "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.batch_rows = 500;
  opts.flush_interval = 20ms;
  ledger l(opts);
  std::promise<std::size_t> written;
  l.on_committed = [&](const std::vector<usage_record>& rows) { written.set_value(rows.size()); };
  l.start();

  REQUIRE(l.reserve());
  l.submit(make_row(1));
  auto f = written.get_future();
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  CHECK(f.get() == 1);
}

TEST_CASE("ledger: retention deletes rows past it in batches, keeps recent ones and rows not yet shipped",
          "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.batch_rows = 1000;
  opts.flush_interval = 5ms;
  opts.retention = std::chrono::hours(24 * 40);
  opts.prune_interval = 50ms;  // the writer's first look may come before the rows
  const auto now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  auto recent_rows = [&](ledger& l) {
    for (int i = 0; i < 10; ++i) {
      auto r = make_row(100'000 + i);
      r.start_ms = now_ms - std::int64_t{39} * 86'400'000;  // 39 days old: kept
      REQUIRE(l.reserve());
      l.submit(std::move(r));
    }
  };
  SECTION("every old row goes, a full batch a second") {
    ledger l(opts);
    l.start();
    submit_rows(l, 0, 5'000);  // 2023: long past the retention
    recent_rows(l);
    l.flush();
    REQUIRE(eventually([&] { return l.stats().pruned_rows == 5'000; }, 20s));
    l.stop();
    db_conn db(opts.path);
    CHECK(db.integer("SELECT COUNT(*) FROM calls") == 10);
    CHECK(db.integer("SELECT MIN(id) FROM calls") == 5'001);
    // The freed pages went back: a new ledger is incremental-vacuum, and no free page is left.
    CHECK(db.integer("PRAGMA auto_vacuum") == 2);
    CHECK(db.integer("PRAGMA freelist_count") == 0);
    INFO("pages left " << db.integer("PRAGMA page_count"));
    CHECK(db.integer("PRAGMA page_count") < 40);
  }
  SECTION("rows above prunable_through_id stay (a fleet ledger's rows not yet in PostgreSQL)") {
    opts.prunable_through_id = [] { return std::int64_t{2'500}; };
    ledger l(opts);
    l.start();
    submit_rows(l, 0, 5'000);
    recent_rows(l);
    l.flush();
    REQUIRE(eventually([&] { return l.stats().pruned_rows == 2'500; }, 20s));
    std::this_thread::sleep_for(300ms);
    CHECK(l.stats().pruned_rows == 2'500);
    l.stop();
    db_conn db(opts.path);
    CHECK(db.integer("SELECT COUNT(*) FROM calls") == 2'510);
    CHECK(db.integer("SELECT MIN(id) FROM calls") == 2'501);
  }
}

TEST_CASE("ledger: stop writes every queued row", "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.batch_rows = 300;
  opts.flush_interval = 1h;  // nothing would be written on time alone
  {
    ledger l(opts);
    l.start();
    submit_rows(l, 0, 1000);
    l.stop();
    CHECK(l.stats().rows_written == 1000);
    l.stop();  // idempotent
  }
  db_conn db(opts.path);
  CHECK(db.integer("SELECT COUNT(*) FROM calls") == 1000);
}

TEST_CASE("ledger: a locked database keeps the rows and writes them once it is free",
          "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.batch_rows = 10;
  opts.flush_interval = 1ms;
  ledger l(opts);
  ledger_test_access::set_busy_timeout(l, 20ms);
  l.start();

  db_conn locker(opts.path);
  locker.exec("BEGIN EXCLUSIVE");
  submit_rows(l, 0, 25);
  REQUIRE(eventually([&] { return l.stats().write_errors >= 1; }));
  // (No check of writable() here: the writer's health probe only reads, which a WAL database
  // allows under another connection's write lock, so it may report writable again at any time.)
  CHECK(l.stats().rows_written == 0);
  CHECK(l.stats().queue_depth == 25);

  locker.exec("ROLLBACK");
  l.flush();
  CHECK(l.writable());
  CHECK(l.stats().rows_written == 25);
  CHECK(l.stats().queue_depth == 0);

  // Retried rows keep their submission order.
  const auto ids = locker.rows("SELECT request_id FROM calls ORDER BY id");
  REQUIRE(ids.size() == 25);
  for (int i = 0; i < 25; ++i) CHECK(ids[i][0] == "req-" + std::to_string(i));
}

TEST_CASE("ledger: on_committed sees every committed row once", "[ledger]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.batch_rows = 64;
  ledger l(opts);
  std::vector<std::string> seen;  // only the writer thread appends
  l.on_committed = [&](const std::vector<usage_record>& rows) {
    for (const auto& r : rows) seen.push_back(r.request_id);
  };
  l.start();
  submit_rows(l, 0, 1000);
  l.flush();
  REQUIRE(seen.size() == 1000);
  CHECK(std::set<std::string>(seen.begin(), seen.end()).size() == 1000);
  l.stop();
}

TEST_CASE("ledger: the writer's mode follows its backlog", "[ledger]") {
  ledger_options o;  // batch_rows 500, flush_interval 100 ms, queue_capacity 100,000
  auto next = [&](writer_mode m, std::size_t waiting, std::chrono::milliseconds age = 0ms,
                  bool flushing = false, bool idle_allowed = true) {
    writer_load l;
    l.waiting = waiting;
    l.oldest_age = age;
    l.flushing = flushing;
    l.idle_allowed = idle_allowed;
    return next_writer_mode(m, l, o);
  };
  // idle -> paced at 4 batches (2,000 rows) or a row waiting 4 flush intervals (400 ms)
  CHECK(next(writer_mode::idle, 0) == writer_mode::idle);
  CHECK(next(writer_mode::idle, 1999, 399ms) == writer_mode::idle);
  CHECK(next(writer_mode::idle, 2000) == writer_mode::paced);
  CHECK(next(writer_mode::idle, 1, 400ms) == writer_mode::paced);
  // paced -> full at a quarter of the queue; back at half that
  CHECK(next(writer_mode::paced, 24'999) == writer_mode::paced);
  CHECK(next(writer_mode::paced, 25'000) == writer_mode::full);
  CHECK(next(writer_mode::idle, 30'000) == writer_mode::full);
  CHECK(next(writer_mode::full, 12'500) == writer_mode::full);
  CHECK(next(writer_mode::full, 12'499) == writer_mode::paced);
  // paced -> idle below a quarter of the idle threshold, with no old row; one step at a time
  CHECK(next(writer_mode::paced, 500) == writer_mode::paced);
  CHECK(next(writer_mode::paced, 499) == writer_mode::idle);
  CHECK(next(writer_mode::paced, 10, 250ms) == writer_mode::paced);
  CHECK(next(writer_mode::full, 0) == writer_mode::paced);
  // a flush or shutdown goes full; without SCHED_IDLE the floor is paced
  CHECK(next(writer_mode::idle, 0, 0ms, true) == writer_mode::full);
  CHECK(next(writer_mode::paced, 0, 0ms, false, false) == writer_mode::paced);
  CHECK(next(writer_mode::idle, 0, 0ms, false, false) == writer_mode::paced);
  // thresholds stay ordered on a tiny queue
  o.queue_capacity = 10;
  CHECK(next(writer_mode::idle, 0) == writer_mode::idle);
  CHECK(next(writer_mode::idle, 1) == writer_mode::paced);
  CHECK(next(writer_mode::paced, 2) == writer_mode::full);
}

// The writer waits as SCHED_IDLE while few rows wait; CPU-bound threads on its CPU must not
// starve it: a backlog or an old row promotes it from submit().
TEST_CASE("ledger: busy threads on the writer's CPU do not starve it", "[ledger]") {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(0, &one);
  cpu_set_t saved;
  REQUIRE(pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) == 0);
  REQUIRE(pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0);  // the writer inherits it
  temp_dir dir;
  auto opts = options_for(dir);
  ledger l(opts);
  std::atomic<std::size_t> written{0};
  l.on_committed = [&](const std::vector<usage_record>& rows) { written += rows.size(); };
  l.start();
  std::atomic<bool> stop{false};
  std::vector<std::thread> hogs;
  for (int i = 0; i < 2; ++i)
    hogs.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  // A few rows: promoted by their age (4 flush intervals) on the next submit.
  submit_rows(l, 0, 3);
  std::this_thread::sleep_for(500ms);
  REQUIRE(l.reserve());
  l.submit(make_row(3));
  const bool few = eventually([&] { return written.load() == 4; }, 10s);
  // A backlog: 4 batches promote it at once.
  for (int i = 4; i < 3004; ++i) {
    REQUIRE(l.reserve());
    l.submit(make_row(i));
  }
  const bool many = eventually([&] { return written.load() == 3004; }, 20s);
  stop = true;
  for (auto& t : hogs) t.join();
  pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
  CHECK(few);
  CHECK(many);
  // With the backlog gone the writer steps back down (idle where SCHED_IDLE may be left again,
  // else paced); stats() reports it for tollgate_ledger_writer_mode.
  CHECK(eventually([&] { return l.stats().writer_mode <= static_cast<int>(writer_mode::paced); }, 5s));
  l.stop();
  db_conn c(opts.path);
  CHECK(c.integer("SELECT COUNT(*) FROM calls") == 3004);
}

TEST_CASE("fleet ledger: COPY text escapes what COPY would misread and keeps UTF-8 valid", "[ledger][postgres]") {
  auto copy = [](std::string_view in) {
    std::string out;
    tollgate::append_copy_text(out, in);
    return out;
  };
  CHECK(copy("plain ascii 123") == "plain ascii 123");
  CHECK(copy("") == "");
  CHECK(copy("a\tb\nc\rd") == "a\\tb\\nc\\rd");
  CHECK(copy("back\\slash") == "back\\\\slash");
  CHECK(copy("\\N") == "\\\\N");  // the literal text \N, not NULL
  CHECK(copy("\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80") == "\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80");
  // NUL and broken UTF-8 (PostgreSQL rejects the whole batch for either) become U+FFFD.
  CHECK(copy(std::string_view("a\0b", 3)) == "a\xef\xbf\xbd" "b");
  CHECK(copy("x\xff\xfey") == "x\xef\xbf\xbd\xef\xbf\xbdy");
  CHECK(copy("cut \xe2\x9c") == "cut \xef\xbf\xbd\xef\xbf\xbd");
  CHECK(copy("\xed\xa0\x80") != "\xed\xa0\x80");  // a UTF-16 surrogate is not UTF-8
  CHECK(copy("\xc0\xaf").find("\xc0") == std::string::npos);  // overlong
}
