// Tests of the ledger under storage failures: the spill journal on its own (format, torn tails,
// size cap), then the ledger with a full, read-only, locked, vanished or deleted database, journal
// replay (at recovery and at start-up, exactly once), drops and fail-closed admission. Failures
// are made for real where root cannot bypass them (max_page_count, query_only, a file where a
// directory should be, another connection's lock), so the tests also hold when run as root.
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <zlib.h>

#include "core/usage_record.hpp"
#include "ledger/journal.hpp"
#include "ledger/ledger.hpp"

namespace tollgate {

// The test-only knobs declared a friend in ledger.hpp.
struct ledger_test_access {
  static void set_busy_timeout(ledger& l, std::chrono::milliseconds t) { l.busy_timeout_ = t; }
  // SQL on the writer's connection (now and after every reopen).
  static void connection_sql(ledger& l, std::string sql) {
    l.set_test_connection_sql(std::move(sql));
  }
};

}  // namespace tollgate

namespace {

using namespace tollgate;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using access = ledger_test_access;

// The writer's own connection fails these ways; root cannot bypass either.
constexpr const char* kReadOnly = "PRAGMA query_only=1";  // writes fail: SQLITE_READONLY
constexpr const char* kWritable = "PRAGMA query_only=0";
constexpr const char* kFull = "PRAGMA max_page_count=1";  // clamped to the size: SQLITE_FULL
constexpr const char* kRoomy = "PRAGMA max_page_count=1073741823";

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("tollgate-durability-test-" + std::to_string(rd()) + "-" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
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
  std::int64_t integer(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    INFO(sql);
    REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    const auto v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
  }
  std::vector<std::string> texts(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    INFO(sql);
    REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
    std::vector<std::string> out;
    while (sqlite3_step(st) == SQLITE_ROW)
      out.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)));
    sqlite3_finalize(st);
    return out;
  }
};

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
  r.cost_usd = (i % 7) * 0.25;
  r.latency_ms = 12.5;
  return r;
}

std::vector<usage_record> make_rows(int from, int to) {
  std::vector<usage_record> out;
  for (int i = from; i < to; ++i) out.push_back(make_row(i));
  return out;
}

std::vector<const usage_record*> pointers(const std::vector<usage_record>& rows) {
  std::vector<const usage_record*> out;
  for (const auto& r : rows) out.push_back(&r);
  return out;
}

void submit_rows(ledger& l, int from, int to) {
  for (int i = from; i < to; ++i) {
    REQUIRE(l.reserve());
    l.submit(make_row(i));
  }
}

// Request ids of the calls table in insertion order.
std::vector<std::string> ids_in(const std::string& db_path) {
  db_conn db(db_path);
  return db.texts("SELECT request_id FROM calls ORDER BY id");
}

std::vector<std::string> expected_ids(int from, int to) {
  std::vector<std::string> out;
  for (int i = from; i < to; ++i) out.push_back("req-" + std::to_string(i));
  return out;
}

ledger_options options_for(const temp_dir& dir) {
  ledger_options o;
  o.path = dir.file("tollgate.db");
  o.batch_rows = 10;
  o.flush_interval = 1h;  // rows move only on flush()/stop(): no timing in these tests
  return o;
}

std::string journal_of(const ledger_options& o) { return o.path + ".journal"; }

// Leaves `rows` rows in the journal of a database at opts.path, as a run that stopped (or
// crashed) while its database refused writes would.
void leave_journal(const ledger_options& opts, int from, int to) {
  ledger l(opts);
  access::connection_sql(l, kReadOnly);
  l.start();
  submit_rows(l, from, to);
  l.stop();
  REQUIRE(l.stats().journaled_rows == static_cast<std::uint64_t>(to - from));
  REQUIRE(fs::exists(journal_of(opts)));
}

bool running_as_root() { return ::geteuid() == 0; }

}  // namespace

// ---------------------------------------------------------------- the journal on its own

TEST_CASE("ledger_journal: appended rows read back in order with every field, across a reopen",
          "[ledger][journal]") {
  temp_dir dir;
  const auto path = dir.file("j");
  usage_record full;
  full.request_id = std::string("req\0nul", 7);
  full.start_ms = -5;
  full.route = route_kind::messages;
  full.method = "POST";
  full.requested_model = "claude-sonnet-4-5";
  full.served_model = "claude-sonnet-4-5-20250929";
  full.price_model = "claude-sonnet-4-5";
  full.upstream = "anthropic";
  full.client_key_id = "key-7";
  full.team = "search";
  full.user = "u-42";
  full.status = 529;
  full.stream = true;
  full.aborted = true;
  full.tokens = {1200, 340, 800, 300, 100, 40};
  full.tokens.web_search = 7;
  full.tokens.tier = service_tier::off_peak;  // the newest tier: the journal reads back every one
  full.source = usage_source::estimated;
  full.priced = true;
  full.cost_usd = 0.1 + 0.2;  // not a short decimal: must come back bit for bit
  full.latency_ms = 1532.25;
  full.first_byte_ms = -1;
  full.error_kind = "upstream_reset";
  full.upstream_request_id = "msg_01ABC";
  full.attempts = 3;
  full.provider = "DeepInfra";
  auto rows = make_rows(0, 5);
  rows.push_back(full);
  {
    ledger_journal j(path, 1 << 20, false);
    REQUIRE(j.open().error.empty());
    std::string err;
    CHECK(j.append(pointers(rows), err) == rows.size());
    CHECK(err.empty());
    CHECK(j.pending() == rows.size());
    CHECK(j.id().size() == 16);
    j.close();
  }
  ledger_journal j(path, 1 << 20, false);
  const auto opened = j.open();
  CHECK(opened.error.empty());
  CHECK(opened.records == rows.size());
  CHECK(opened.cut_bytes == 0);
  std::vector<journal_entry> out;
  REQUIRE_FALSE(j.read(100, out));
  REQUIRE(out.size() == rows.size());
  for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i].seq == i + 1);
  const auto& back = out.back().row;
  CHECK(back.request_id == full.request_id);
  CHECK(back.start_ms == full.start_ms);
  CHECK(back.route == full.route);
  CHECK(back.method == full.method);
  CHECK(back.requested_model == full.requested_model);
  CHECK(back.served_model == full.served_model);
  CHECK(back.price_model == full.price_model);
  CHECK(back.upstream == full.upstream);
  CHECK(back.client_key_id == full.client_key_id);
  CHECK(back.team == full.team);
  CHECK(back.user == full.user);
  CHECK(back.status == full.status);
  CHECK(back.stream);
  CHECK(back.aborted);
  CHECK(back.tokens.prompt == 1200);
  CHECK(back.tokens.completion == 340);
  CHECK(back.tokens.cached == 800);
  CHECK(back.tokens.cache_write == 300);
  CHECK(back.tokens.cache_write_1h == 100);
  CHECK(back.tokens.reasoning == 40);
  CHECK(back.tokens.web_search == 7);
  CHECK(back.tokens.tier == service_tier::off_peak);
  CHECK(back.source == full.source);
  CHECK(back.priced);
  CHECK(back.cost_usd == full.cost_usd);
  CHECK(back.latency_ms == full.latency_ms);
  CHECK(back.first_byte_ms == -1);
  CHECK(back.error_kind == full.error_kind);
  CHECK(back.upstream_request_id == full.upstream_request_id);
  CHECK(back.attempts == 3);
  CHECK(back.provider == "DeepInfra");
  CHECK(out[2].row.request_id == "req-2");

  SECTION("reading in batches and consuming moves the cursor") {
    REQUIRE_FALSE(j.read(4, out));
    CHECK(out.size() == 4);
    j.consume();
    CHECK(j.pending() == 2);
    REQUIRE_FALSE(j.read(4, out));
    REQUIRE(out.size() == 2);
    CHECK(out[0].seq == 5);
    j.consume();
    CHECK(j.pending() == 0);
    REQUIRE_FALSE(j.remove());
    CHECK_FALSE(fs::exists(path));
  }
  SECTION("records already replayed are skipped by sequence number") {
    REQUIRE_FALSE(j.skip_through(4));
    CHECK(j.pending() == 2);
    REQUIRE_FALSE(j.read(10, out));
    REQUIRE(out.size() == 2);
    CHECK(out[0].row.request_id == "req-4");
  }
}

TEST_CASE("encode_usage_record: one row on its own round-trips, damaged or partial bytes give nothing",
          "[ledger][journal]") {
  usage_record r = make_row(7);
  r.route = route_kind::other;
  r.status = 101;
  r.aborted = true;
  r.error_kind = "tollgate_restart";
  r.cost_usd = 0.1 + 0.2;
  const std::string bytes = encode_usage_record(r);
  const auto back = decode_usage_record(bytes);
  REQUIRE(back);
  CHECK(back->request_id == r.request_id);
  CHECK(back->status == 101);
  CHECK(back->aborted);
  CHECK(back->error_kind == "tollgate_restart");
  CHECK(back->cost_usd == r.cost_usd);
  CHECK(back->tokens.prompt == r.tokens.prompt);
  CHECK_FALSE(decode_usage_record(bytes.substr(0, bytes.size() - 1)));
  CHECK_FALSE(decode_usage_record(bytes + "x"));
  CHECK_FALSE(decode_usage_record(""));
  for (std::size_t i = 0; i < bytes.size(); i += 7) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x20);
    CHECK_FALSE(decode_usage_record(bad));
  }
}

TEST_CASE("ledger_journal: records of the earlier formats (without provider, web searches and tier) still read",
          "[ledger][journal]") {
  temp_dir dir;
  const auto path = dir.file("j");
  auto rows = make_rows(0, 1);
  rows[0].tokens.web_search = 2;
  rows[0].tokens.tier = service_tier::flex;
  rows[0].provider = "Groq";
  {
    ledger_journal j(path, 1 << 20, false);
    REQUIRE(j.open().error.empty());
    std::string err;
    REQUIRE(j.append(pointers(rows), err) == 1);
    j.close();
  }
  // Rewrite the one record as an earlier format wrote it: its body without the fields added
  // since (provider: u32 length + 4 bytes; web searches i64, tier u8), with its length and
  // CRC-32 made again.
  const std::size_t provider_bytes = 4 + 4;
  const bool second = GENERATE(true, false);  // schema-4 format (tier, no provider), or the first
  const std::size_t drop = provider_bytes + (second ? 0 : 9);
  std::string file;
  {
    std::ifstream in(path, std::ios::binary);
    file.assign(std::istreambuf_iterator<char>(in), {});
  }
  constexpr std::size_t header = 8 + 16, head = 12;
  REQUIRE(file.size() > header + head + drop);
  std::string body = file.substr(header + head, file.size() - header - head - drop);
  const auto put32 = [](std::string& b, std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b[at + i] = static_cast<char>(v >> (8 * i));
  };
  std::string old = file.substr(0, header + head) + body;
  put32(old, header + 4, static_cast<std::uint32_t>(body.size()));
  put32(old, header + 8, static_cast<std::uint32_t>(
      crc32(0L, reinterpret_cast<const unsigned char*>(body.data()), static_cast<unsigned>(body.size()))));
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << old;
  }
  ledger_journal j(path, 1 << 20, false);
  const auto opened = j.open();
  CHECK(opened.records == 1);
  CHECK(opened.cut_bytes == 0);
  std::vector<journal_entry> out;
  REQUIRE_FALSE(j.read(10, out));
  REQUIRE(out.size() == 1);
  CHECK(out[0].row.request_id == rows[0].request_id);
  CHECK(out[0].row.attempts == rows[0].attempts);
  CHECK(out[0].row.provider.empty());
  CHECK(out[0].row.tokens.web_search == (second ? 2 : 0));
  CHECK(out[0].row.tokens.tier == (second ? service_tier::flex : service_tier::none));
}

TEST_CASE("ledger_journal: a torn last record is cut off, the records before it kept",
          "[ledger][journal]") {
  temp_dir dir;
  const auto path = dir.file("j");
  const auto rows = make_rows(0, 10);
  {
    ledger_journal j(path, 1 << 20, false);
    j.open();
    std::string err;
    REQUIRE(j.append(pointers(rows), err) == 10);
  }
  const auto whole = fs::file_size(path);

  SECTION("cut inside the last record") {
    fs::resize_file(path, whole - 7);
    ledger_journal j(path, 1 << 20, false);
    const auto r = j.open();
    CHECK(r.error.empty());
    CHECK(r.records == 9);
    CHECK(r.cut_bytes > 0);
    CHECK(j.pending() == 9);
    std::vector<journal_entry> out;
    REQUIRE_FALSE(j.read(100, out));
    REQUIRE(out.size() == 9);
    CHECK(out.back().row.request_id == "req-8");

    // The next append follows the last good record and continues its sequence.
    std::string err;
    const auto more = make_rows(100, 101);
    REQUIRE(j.append(pointers(more), err) == 1);
    ledger_journal again(path, 1 << 20, false);
    CHECK(again.open().records == 10);
    REQUIRE_FALSE(again.read(100, out));
    CHECK(out.back().seq == 10);
    CHECK(out.back().row.request_id == "req-100");
  }
  SECTION("garbage after the last record") {
    const std::string garbage("TGJR\x10\x00\x00\x00garbage", 15);  // a record head, no body
    std::ofstream(path, std::ios::app | std::ios::binary).write(garbage.data(), 15);
    ledger_journal j(path, 1 << 20, false);
    const auto r = j.open();
    CHECK(r.records == 10);
    CHECK(r.cut_bytes == 15);
    CHECK(fs::file_size(path) == whole);
  }
  SECTION("cut inside the header: an empty journal") {
    fs::resize_file(path, 5);
    ledger_journal j(path, 1 << 20, false);
    const auto r = j.open();
    CHECK(r.error.empty());
    CHECK(j.pending() == 0);
    CHECK_FALSE(fs::exists(path));
  }
}

TEST_CASE("ledger_journal: a damaged record in the middle is skipped, the ones after it kept",
          "[ledger][journal]") {
  temp_dir dir;
  const auto path = dir.file("j");
  const auto rows = make_rows(0, 10);
  {
    ledger_journal j(path, 1 << 20, false);
    j.open();
    std::string err;
    REQUIRE(j.append(pointers(rows), err) == 10);
  }
  // Flip one byte of the 4th record's body (records of make_row(0..9) have equal sizes).
  const auto size = fs::file_size(path);
  const std::uint64_t record = (size - 24) / 10;
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(24 + 3 * record + 20));
    f.put('X');
  }
  ledger_journal j(path, 1 << 20, false);
  const auto r = j.open();
  CHECK(r.records == 9);
  CHECK(r.skipped_bytes == record);
  CHECK(r.cut_bytes == 0);
  std::vector<journal_entry> out;
  REQUIRE_FALSE(j.read(100, out));
  REQUIRE(out.size() == 9);
  CHECK(out[2].row.request_id == "req-2");
  CHECK(out[3].row.request_id == "req-4");
  CHECK(out[3].seq == 5);
}

TEST_CASE("ledger_journal: appends stop at max_bytes", "[ledger][journal]") {
  temp_dir dir;
  const auto path = dir.file("j");
  const auto rows = make_rows(0, 100);
  std::string err;

  SECTION("the prefix that fits is written, then nothing more") {
    ledger_journal j(path, 2000, false);
    j.open();
    const auto n = j.append(pointers(rows), err);
    CHECK(err.empty());
    CHECK(n > 0);
    CHECK(n < rows.size());
    CHECK(j.bytes() <= 2000);
    CHECK(fs::file_size(path) == j.bytes());
    CHECK(j.append(pointers(rows), err) == 0);
    CHECK(err.empty());
    CHECK(j.pending() == n);
  }
  SECTION("0 bytes: no journal file at all") {
    ledger_journal j(path, 0, false);
    j.open();
    CHECK(j.append(pointers(rows), err) == 0);
    CHECK_FALSE(fs::exists(path));
  }
}

TEST_CASE("ledger_journal: a file that is not a journal is never written", "[ledger][journal]") {
  temp_dir dir;
  const auto path = dir.file("j");
  std::ofstream(path) << "precious data that is not a journal\n";
  ledger_journal j(path, 1 << 20, false);
  CHECK_THAT(j.open().error, Catch::Contains("not a tollgate ledger journal"));
  std::string err;
  const auto rows = make_rows(0, 3);
  CHECK(j.append(pointers(rows), err) == 0);
  CHECK_FALSE(err.empty());
  CHECK(fs::file_size(path) == 36);
}

TEST_CASE("ledger_journal: a journal that cannot be created reports the error",
          "[ledger][journal]") {
  temp_dir dir;
  std::ofstream(dir.file("plain")) << "x";
  ledger_journal j(dir.file("plain/j"), 1 << 20, true);
  CHECK(j.open().error.empty());  // nothing there: an empty journal
  std::string err;
  const auto rows = make_rows(0, 3);
  CHECK(j.append(pointers(rows), err) == 0);
  CHECK_THAT(err, Catch::Contains("cannot create"));
}

// ---------------------------------------------------------------- the ledger under failures

TEST_CASE("ledger: a full disk (SQLITE_FULL) sends rows to the journal, they are replayed once "
          "when there is room", "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.batch_rows = 500;  // one transaction for the 200 rows: more than the free space in a page
  ledger l(opts);
  std::size_t reported = 0;  // on_committed runs on the writer; read after flush()
  l.on_committed = [&](const std::vector<usage_record>& rows) { reported += rows.size(); };
  l.start();
  submit_rows(l, 0, 20);
  l.flush();
  REQUIRE(l.stats().rows_written == 20);

  access::connection_sql(l, kFull);
  submit_rows(l, 20, 220);
  l.flush();
  auto s = l.stats();
  CHECK_FALSE(l.writable());
  CHECK_FALSE(s.healthy);
  CHECK(s.write_errors >= 1);
  CHECK(s.rows_written == 20);
  CHECK(s.journaled_rows == 200);
  CHECK(s.journal_bytes == fs::file_size(journal_of(opts)));
  CHECK(s.queue_depth == 200);
  CHECK(s.dropped_rows == 0);
  CHECK(ids_in(opts.path).size() == 20);

  access::connection_sql(l, kRoomy);
  l.flush();
  s = l.stats();
  CHECK(l.writable());
  CHECK(s.rows_written == 220);
  CHECK(s.replayed_rows == 200);
  CHECK(s.journaled_rows == 0);
  CHECK(s.journal_bytes == 0);
  CHECK(s.queue_depth == 0);
  CHECK(reported == 220);
  CHECK_FALSE(fs::exists(journal_of(opts)));
  CHECK(ids_in(opts.path) == expected_ids(0, 220));  // each once, in submission order
}

TEST_CASE("ledger: a read-only database (SQLITE_READONLY) sends rows to the journal until it is "
          "writable again", "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  ledger l(opts);
  l.start();
  submit_rows(l, 0, 5);
  l.flush();
  int end = 5;

  SECTION("read-only connection (PRAGMA query_only; holds for root too)") {
    access::connection_sql(l, kReadOnly);
    submit_rows(l, 5, 30);
    l.flush();
    CHECK_FALSE(l.writable());
    CHECK(l.stats().journaled_rows == 25);
    access::connection_sql(l, kWritable);
    end = 30;
  }
  SECTION("the file replaced by a read-only copy (chmod; not for root, whom chmod does not stop)") {
    if (running_as_root()) {
      WARN("running as root: chmod cannot make the file read-only; covered by query_only");
      return;
    }
    {
      db_conn db(opts.path);
      db.exec("VACUUM INTO '" + dir.file("copy.db") + "'");
    }
    fs::permissions(dir.file("copy.db"), fs::perms::owner_read | fs::perms::group_read);
    fs::rename(dir.file("copy.db"), opts.path);
    submit_rows(l, 5, 30);
    l.flush();
    CHECK_FALSE(l.writable());
    CHECK(l.stats().journaled_rows == 25);
    // SQLite gave the -wal and -shm files it made the database file's (read-only) mode.
    for (const char* suffix : {"", "-wal", "-shm"})
      if (fs::exists(opts.path + suffix))
        fs::permissions(opts.path + suffix, fs::perms::owner_read | fs::perms::owner_write);
    end = 30;
  }
  l.flush();
  CHECK(l.writable());
  CHECK(l.stats().journaled_rows == 0);
  CHECK(ids_in(opts.path) == expected_ids(0, end));
}

TEST_CASE("ledger: a database locked by another connection beyond busy_timeout sends rows to "
          "the journal, they are written once the lock is gone", "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  ledger l(opts);
  access::set_busy_timeout(l, 20ms);
  l.start();

  db_conn locker(opts.path);
  locker.exec("BEGIN EXCLUSIVE");
  submit_rows(l, 0, 25);
  l.flush();
  auto s = l.stats();
  CHECK_FALSE(l.writable());
  CHECK(s.write_errors >= 1);
  CHECK(s.rows_written == 0);
  CHECK(s.journaled_rows == 25);
  CHECK(s.queue_depth == 25);

  locker.exec("ROLLBACK");
  l.flush();
  s = l.stats();
  CHECK(l.writable());
  CHECK(s.rows_written == 25);
  CHECK(s.replayed_rows == 25);
  CHECK(s.queue_depth == 0);
  CHECK(ids_in(opts.path) == expected_ids(0, 25));
}

TEST_CASE("ledger: the database directory gone (SQLITE_CANTOPEN) sends rows to the journal, "
          "they are written when it is back", "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.path = dir.file("data/tollgate.db");
  opts.journal_path = dir.file("tollgate.journal");  // elsewhere, as advised for real setups
  ledger l(opts);
  l.start();
  submit_rows(l, 0, 5);
  l.flush();

  // A plain file where the directory was: no one, not even root, can open the database.
  fs::rename(dir.file("data"), dir.file("data.moved"));
  std::ofstream(dir.file("data")) << "x";
  submit_rows(l, 5, 40);
  l.flush();
  CHECK_FALSE(l.writable());
  CHECK(l.stats().journaled_rows == 35);
  CHECK(fs::exists(opts.journal_path));

  fs::remove(dir.file("data"));
  fs::rename(dir.file("data.moved"), dir.file("data"));
  l.flush();
  CHECK(l.writable());
  CHECK(l.stats().rows_written == 40);
  CHECK_FALSE(fs::exists(opts.journal_path));
  CHECK(ids_in(opts.path) == expected_ids(0, 40));
}

TEST_CASE("ledger: a database file deleted while running is created again and written",
          "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  ledger l(opts);
  l.start();
  submit_rows(l, 0, 10);
  l.flush();
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(opts.path + suffix);

  submit_rows(l, 10, 15);
  l.flush();
  CHECK(l.writable());
  db_conn db(opts.path);
  CHECK(db.integer("SELECT MAX(version) FROM schema_version") == ledger_schema_version());
  CHECK(ids_in(opts.path) == expected_ids(10, 15));
}

TEST_CASE("ledger: a journal left by an earlier run is replayed at start-up, before new rows, "
          "exactly once", "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  leave_journal(opts, 0, 45);
  const auto saved = dir.file("saved.journal");
  fs::copy_file(journal_of(opts), saved);

  SECTION("replayed during start(), not reported to on_committed") {
    ledger l(opts);
    std::size_t reported = 0;
    l.on_committed = [&](const std::vector<usage_record>& rows) { reported += rows.size(); };
    l.start();
    // Already in the database when start() returns: start-up readers see the rows.
    CHECK(ids_in(opts.path) == expected_ids(0, 45));
    CHECK_FALSE(fs::exists(journal_of(opts)));
    auto s = l.stats();
    CHECK(s.rows_written == 45);
    CHECK(s.replayed_rows == 45);
    CHECK(s.queue_depth == 0);
    submit_rows(l, 45, 50);
    l.flush();
    CHECK(reported == 5);
    l.stop();
    CHECK(ids_in(opts.path) == expected_ids(0, 50));
  }
  SECTION("a crash after the replay but before the journal was removed replays nothing twice") {
    { ledger(opts).start(); }
    REQUIRE(ids_in(opts.path).size() == 45);
    fs::copy_file(saved, journal_of(opts));  // as if the removal never happened
    ledger l(opts);
    l.start();
    CHECK(l.stats().replayed_rows == 0);
    CHECK_FALSE(fs::exists(journal_of(opts)));
    l.stop();
    CHECK(ids_in(opts.path) == expected_ids(0, 45));
  }
  SECTION("a crash in the middle of the replay: only the rest is replayed") {
    // The replay mark as a crash after the first 20 rows' transaction leaves it.
    std::string id(16, '\0');
    std::ifstream(saved, std::ios::binary).seekg(8).read(id.data(), 16);
    {
      db_conn db(opts.path);
      db.exec("CREATE TABLE journal_replay (id INTEGER PRIMARY KEY CHECK (id = 1),"
              " journal_id TEXT NOT NULL, last_seq INTEGER NOT NULL)");
      db.exec("INSERT INTO journal_replay VALUES (1, '" + id + "', 20)");
    }
    ledger l(opts);
    l.start();
    CHECK(l.stats().replayed_rows == 25);
    l.stop();
    CHECK(ids_in(opts.path) == expected_ids(20, 45));
  }
}

TEST_CASE("ledger: a journal whose last record a crash cut is replayed without that record",
          "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  leave_journal(opts, 0, 12);
  fs::resize_file(journal_of(opts), fs::file_size(journal_of(opts)) - 3);
  ledger l(opts);
  l.start();
  CHECK(l.stats().replayed_rows == 11);
  l.stop();
  CHECK(ids_in(opts.path) == expected_ids(0, 11));
}

TEST_CASE("ledger: stop with a failing database leaves every row in the journal for the next "
          "start", "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.batch_rows = 500;  // one transaction: more than the free space in a page
  {
    ledger l(opts);
    l.start();
    submit_rows(l, 0, 3);
    l.flush();
    access::connection_sql(l, kFull);
    submit_rows(l, 3, 303);
    l.stop();  // no flush: stop alone must keep them
    const auto s = l.stats();
    CHECK(s.journaled_rows == 300);
    CHECK(s.dropped_rows == 0);
  }
  CHECK(ids_in(opts.path).size() == 3);
  ledger l(opts);
  l.start();
  l.stop();
  CHECK(ids_in(opts.path) == expected_ids(0, 303));
}

TEST_CASE("ledger: rows neither the journal nor memory_rows can take are dropped and counted",
          "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.journal_max_bytes = 2000;
  opts.memory_rows = 5;
  ledger l(opts);
  l.start();
  access::connection_sql(l, kReadOnly);
  submit_rows(l, 0, 50);
  l.flush();
  auto s = l.stats();
  INFO("journaled " << s.journaled_rows << ", in memory " << s.memory_rows);
  CHECK(s.journaled_rows > 0);
  CHECK(s.journal_bytes <= 2000);
  CHECK(s.memory_rows == 5);
  CHECK(s.dropped_rows == 50 - s.journaled_rows - 5);
  CHECK(s.queue_depth == 50 - s.dropped_rows);
  const auto kept = static_cast<std::size_t>(s.journaled_rows + s.memory_rows);

  access::connection_sql(l, kWritable);
  l.flush();
  s = l.stats();
  CHECK(s.rows_written == kept);
  CHECK(s.dropped_rows == 50 - kept);
  CHECK(s.queue_depth == 0);
  CHECK(s.memory_rows == 0);
  const auto ids = ids_in(opts.path);
  CHECK(ids.size() == kept);
  CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == kept);
  // The oldest rows went to the journal, the newest stayed in memory: the dropped ones are
  // those in between.
  CHECK(ids.front() == "req-0");
  CHECK(ids.back() == "req-49");
}

TEST_CASE("ledger: rows the journal cannot take wait in memory and are written when the "
          "database recovers", "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  std::ofstream(dir.file("plain")) << "x";
  opts.journal_path = dir.file("plain/tollgate.journal");  // cannot be created, even by root
  ledger l(opts);
  l.start();
  access::connection_sql(l, kReadOnly);
  submit_rows(l, 0, 20);
  l.flush();
  auto s = l.stats();
  CHECK(s.memory_rows == 20);
  CHECK(s.journaled_rows == 0);
  CHECK(s.journal_errors >= 1);
  CHECK(s.dropped_rows == 0);

  access::connection_sql(l, kWritable);
  l.flush();
  s = l.stats();
  CHECK(s.memory_rows == 0);
  CHECK(s.rows_written == 20);
  CHECK(ids_in(opts.path) == expected_ids(0, 20));
}

TEST_CASE("ledger: on_failure closed refuses reserve() while the database fails, open keeps "
          "admitting", "[ledger][durability]") {
  temp_dir dir;
  auto opts = options_for(dir);
  opts.queue_capacity = 10;

  SECTION("closed") {
    opts.fail_closed = true;
    ledger l(opts);
    l.start();
    CHECK(l.reserve());
    l.release();
    access::connection_sql(l, kReadOnly);
    submit_rows(l, 0, 3);
    l.flush();
    CHECK_FALSE(l.writable());
    CHECK_FALSE(l.reserve());
    access::connection_sql(l, kWritable);
    l.flush();
    CHECK(l.writable());
    CHECK(l.reserve());
    l.release();
    CHECK(ids_in(opts.path) == expected_ids(0, 3));
  }
  SECTION("open: journaled rows give their slots back, so admission stays open") {
    ledger l(opts);
    l.start();
    access::connection_sql(l, kReadOnly);
    for (int i = 0; i < 100; ++i) {
      if (!l.reserve()) {
        l.flush();  // the writer moves the queued rows to the journal
        REQUIRE(l.reserve());
      }
      l.submit(make_row(i));
    }
    l.flush();
    CHECK_FALSE(l.writable());
    CHECK(l.stats().journaled_rows == 100);
    access::connection_sql(l, kWritable);
    l.flush();
    CHECK(ids_in(opts.path) == expected_ids(0, 100));
  }
}
