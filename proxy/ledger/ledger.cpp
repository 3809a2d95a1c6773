// The SQLite ledger: schema migrations, the bounded row queue fed by I/O threads and the one
// writer thread that commits it in batches, spilling to the journal (journal.hpp) while the
// database fails and replaying it once it recovers. Owned by the server; read by /readyz and
// /metrics.
#include "ledger/ledger.hpp"

#include "core/ledger_indexes.hpp"
#include "core/log.hpp"
#include "ledger/journal.hpp"

#include <sched.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>

namespace tollgate {

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

// After a failed write, the database is tried again after this long, doubling up to the max.
constexpr auto kFirstBackoff = 100ms;
// Paced and idle modes (writer_mode): a slice of inserts lasts about this long (the clock is
// read after the insert that reaches kPaceCheckRows rows since the last read), and a pause
// after one at most kMaxPause.
constexpr auto kPaceSlice = 150us;
constexpr std::size_t kPaceCheckRows = 4;
constexpr auto kMaxPause = 2ms;
constexpr auto kMaxBackoff = 5s;
// With an empty queue, the database is probed this often so /readyz notices it went read-only,
// locked or deleted even when no call is being written.
constexpr auto kProbeInterval = 5s;
// Retention: rows deleted per statement (a few milliseconds of the writer), and how soon the
// next batch follows one that found a full batch (a backlog: up to kPruneRows a second).
constexpr std::int64_t kPruneRows = 2000;
// After each delete the file gives back up to 1,000 free pages (4 MiB at 4 KiB pages): more than
// a batch of rows frees, so the file shrinks as fast as rows go, and one step stays short.
constexpr const char* kVacuumSql = "PRAGMA incremental_vacuum(1000)";
constexpr auto kPruneBacklogPause = 1s;
// At shutdown, rows that neither the database nor the journal takes are retried this long.
// Waiting forever would hang SIGTERM on a dead disk; giving up at once would lose rows over a
// brief lock held by a backup tool.
constexpr auto kStopRetryBudget = 10s;
// Rows per journal append when moving held rows.
constexpr std::size_t kJournalChunk = 1000;

// Schema version 1. Nullable text columns are NULL when the record's string is empty;
// first_byte_ms is NULL when no upstream byte arrived; error_kind is NULL on success.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE calls (
  id INTEGER PRIMARY KEY,
  request_id TEXT NOT NULL,
  start_ms INTEGER NOT NULL,
  route TEXT NOT NULL,
  method TEXT NOT NULL,
  requested_model TEXT,
  served_model TEXT,
  price_model TEXT,
  upstream TEXT,
  client_key_id TEXT,
  team TEXT,
  user TEXT,
  status INTEGER NOT NULL,
  stream INTEGER NOT NULL,
  aborted INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cached_tokens INTEGER NOT NULL,
  cache_write_tokens INTEGER NOT NULL,
  cache_write_1h_tokens INTEGER NOT NULL,
  reasoning_tokens INTEGER NOT NULL,
  total_tokens INTEGER NOT NULL,
  usage_source TEXT NOT NULL,
  priced INTEGER NOT NULL,
  cost_usd REAL NOT NULL,
  latency_ms REAL NOT NULL,
  first_byte_ms REAL,
  error_kind TEXT,
  upstream_request_id TEXT,
  attempts INTEGER NOT NULL
);
CREATE INDEX calls_start_ms ON calls(start_ms);
CREATE INDEX calls_price_model_start_ms ON calls(price_model, start_ms);
CREATE INDEX calls_client_key_id_start_ms ON calls(client_key_id, start_ms);
)sql";

// Schema version 2: client keys added at run time through the admin API (key_store.hpp). Only
// the key's SHA-256 (hex) is stored; tags and budgets are JSON; revoked keys stay (a new key may
// take a revoked one's name, which key_store then renames "<name>@revoked-<ms>"). One key under
// two names would make attribution ambiguous, hence the unique hash.
constexpr const char* kSchemaV2 = R"sql(
CREATE TABLE client_keys (
  name TEXT PRIMARY KEY,
  key_sha256 TEXT NOT NULL UNIQUE,
  team TEXT,
  tags TEXT,
  rpm INTEGER,
  tpm INTEGER,
  budgets TEXT,
  created_ms INTEGER NOT NULL,
  revoked_ms INTEGER
);
)sql";

// Schema version 3: only start_ms stays indexed. Every query tollgate runs (reports,
// /admin/spend, budgets' and the forecaster's warm start) is a start_ms range, and the planner
// never chose the two composite indexes for them; keeping them up to date was a quarter of the
// writer's instructions per row (20k -> 15k). A filter on key or model reads the period's rows.
constexpr const char* kSchemaV3 = R"sql(
DROP INDEX IF EXISTS calls_price_model_start_ms;
DROP INDEX IF EXISTS calls_client_key_id_start_ms;
)sql";

// Schema version 4: the processing tier a call was served at (flex and priority calls are billed
// at other prices), and the web searches billed per request, so a what-if re-prices them too.
// ADD COLUMN rewrites nothing: old rows read service_tier NULL and web_search_requests 0.
constexpr const char* kSchemaV4 = R"sql(
ALTER TABLE calls ADD COLUMN service_tier TEXT;
ALTER TABLE calls ADD COLUMN web_search_requests INTEGER NOT NULL DEFAULT 0;
)sql";

// Schema version 5: the provider a relay names as having served the call (OpenRouter routes one
// model to several providers at different prices and names the one in each reply), so the
// bounds a hard budget reserves unpriced models at keep each route's prices across a restart,
// and spend can be read per provider. NULL when the reply names none.
constexpr const char* kSchemaV5 = R"sql(
ALTER TABLE calls ADD COLUMN provider TEXT;
)sql";

// Migration N takes a database at version N-1 to version N. Append only; never edit a step
// that has shipped. The applied versions are rows of `schema_version` (one per step, so the
// table is also the history); the database's version is MAX(version), 0 when empty.
struct migration {
  int version;
  const char* sql;
};
const std::vector<migration> kMigrations = {
    {1, kSchemaV1},
    {2, kSchemaV2},
    {3, kSchemaV3},
    {4, kSchemaV4},
    {5, kSchemaV5},
};

// The insert, for 8, 4, 2 and 1 rows at once (inserts[k] takes 8 >> k): a batch is written 8
// rows per statement, and its remainder in at most three more. SQLite's per-statement work
// (opening the cursors, VdbeHalt: ~6k of the ~27k instructions a one-row insert cost with
// schema 2's three indexes) is then paid once per 8 rows. `OR FAIL`: a statement of several rows
// under the default ABORT opens a statement journal, to undo its own earlier rows should a later
// one fail; write() rolls the whole transaction back on any failure, so that undo is never
// needed, and FAIL skips it (~5 % of SQLite's time per row).
constexpr int kInsertColumns = 32;
constexpr std::size_t kInsertSizes = 4;
constexpr std::size_t kMaxInsertRows = std::size_t{1} << (kInsertSizes - 1);
std::string insert_sql(std::size_t rows) {
  std::string sql =
      "INSERT OR FAIL INTO calls (request_id, start_ms, route, method, requested_model, served_model,"
      " price_model, upstream, client_key_id, team, user, status, stream, aborted, prompt_tokens,"
      " completion_tokens, cached_tokens, cache_write_tokens, cache_write_1h_tokens,"
      " reasoning_tokens, total_tokens, usage_source, priced, cost_usd, latency_ms, first_byte_ms,"
      " error_kind, upstream_request_id, attempts, service_tier, web_search_requests, provider) VALUES ";
  for (std::size_t r = 0; r < rows; ++r) {
    sql += r == 0 ? "(" : ",(";
    for (int c = 0; c < kInsertColumns; ++c) sql += c == 0 ? "?" : ",?";
    sql += ')';
  }
  return sql;
}

// Replay bookkeeping, outside the versioned schema (a migration would move every database's
// version for a table most never need): created by the first journal replay, in its
// transaction. One row: the journal file being replayed and its last sequence number already
// in `calls`, written in the same transaction as those rows. A crash between that commit and
// the journal's removal therefore replays nothing twice: the next start skips up to last_seq.
constexpr const char* kReplayTableSql =
    "CREATE TABLE IF NOT EXISTS journal_replay (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " journal_id TEXT NOT NULL, last_seq INTEGER NOT NULL)";
constexpr const char* kReplayMarkSql =
    "INSERT INTO journal_replay (id, journal_id, last_seq) VALUES (1, ?, ?)"
    " ON CONFLICT(id) DO UPDATE SET journal_id = excluded.journal_id, last_seq = excluded.last_seq";

// Gives back reservation slots, saturating at zero: a submit() without reserve() (a caller
// bug) must not wrap the counter and turn every later call away.
void release_slots(std::atomic<std::size_t>& reserved, std::size_t n) noexcept {
  auto cur = reserved.load(std::memory_order_relaxed);
  while (!reserved.compare_exchange_weak(cur, cur - std::min(cur, n), std::memory_order_relaxed)) {
  }
}

// A failed SQLite call: extended result code and message.
struct db_error {
  int code = SQLITE_ERROR;
  std::string message;
};
using db_result = std::optional<db_error>;

db_error error_of(sqlite3* db) { return {sqlite3_extended_errcode(db), sqlite3_errmsg(db)}; }

// Runs SQL without results.
db_result exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) == SQLITE_OK) return std::nullopt;
  db_error e{sqlite3_extended_errcode(db), err ? err : sqlite3_errmsg(db)};
  sqlite3_free(err);
  return e;
}

// Ends a failed transaction. SQLite rolls back by itself on some errors (SQLITE_FULL,
// SQLITE_IOERR, ...), after which an explicit ROLLBACK would only report "no transaction".
void rollback(sqlite3* db) {
  if (db && !sqlite3_get_autocommit(db)) exec(db, "ROLLBACK");
}

// Errors after which the connection itself is suspect (file gone, moved, damaged, unreadable):
// the next attempt opens the path afresh. Locked, busy, full and read-only keep the connection.
bool needs_reopen(int code) {
  switch (code & 0xFF) {
    case SQLITE_IOERR:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_CANTOPEN:
      return true;
    default:
      return code == SQLITE_READONLY_DBMOVED;
  }
}

// Text bound with an explicit length (so embedded NULs survive) and SQLITE_STATIC: the record
// outlives the step.
int bind_text(sqlite3_stmt* st, int i, std::string_view s) {
  return sqlite3_bind_text64(st, i, s.data(), s.size(), SQLITE_STATIC, SQLITE_UTF8);
}
// SQLite stores a NaN as NULL, which a NOT NULL column rejects; one such row would fail its
// batch forever. Non-finite amounts are stored as 0.
double finite_or_zero(double v) { return std::isfinite(v) ? v : 0.0; }

// What each parameter of one prepared insert holds, so that a row binds only the values that
// differ from those bound at the same place for the row before it. A statement keeps its
// bindings across sqlite3_reset, and rows in a row mostly repeat each other: route, method,
// models, upstream, key, team, user, status, flags, source, tier and the token kinds a workload
// does not use are ~23 of the 32 columns. A bind call costs ~20 ns, a third of the ~2.2 µs SQLite
// spends per row (bench/RESULTS.md, thirty-second session); a comparison costs a few.
// Texts are bound from the cache's own copies (SQLITE_STATIC), which stay unchanged until the
// parameter is bound again, so the rows' strings may go with their batch. The slots live in a
// fixed array: a short string's bytes are inside its slot, and SQLite keeps their address.
class bound_params {
 public:
  // After the statement was prepared: nothing is known to be bound.
  void forget(int n) {
    slots_ = std::make_unique<slot[]>(static_cast<std::size_t>(n));
    n_ = n;
  }
  void null(sqlite3_stmt* st, int i) {
    slot& s = at(i);
    if (s.k == kind::null) return;
    s.k = sqlite3_bind_null(st, i) == SQLITE_OK ? kind::null : kind::unknown;
  }
  void integer(sqlite3_stmt* st, int i, std::int64_t v) {
    slot& s = at(i);
    if (s.k == kind::integer && s.i == v) return;
    s.i = v;
    s.k = sqlite3_bind_int64(st, i, v) == SQLITE_OK ? kind::integer : kind::unknown;
  }
  // Compared bit for bit: 0.0 and -0.0 are different values to bind.
  void real(sqlite3_stmt* st, int i, double v) {
    slot& s = at(i);
    std::int64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    if (s.k == kind::real && s.i == bits) return;
    s.i = bits;
    s.k = sqlite3_bind_double(st, i, v) == SQLITE_OK ? kind::real : kind::unknown;
  }
  void text(sqlite3_stmt* st, int i, std::string_view v) {
    slot& s = at(i);
    if (s.k == kind::text && s.s == v) return;
    s.s.assign(v);
    s.k = bind_text(st, i, s.s) == SQLITE_OK ? kind::text : kind::unknown;
  }
  // Empty text is stored as NULL.
  void nullable_text(sqlite3_stmt* st, int i, std::string_view v) {
    if (v.empty())
      null(st, i);
    else
      text(st, i, v);
  }

 private:
  enum class kind : std::uint8_t { unknown, null, integer, real, text };
  struct slot {
    kind k = kind::unknown;
    std::int64_t i = 0;  // the integer, or the double's bits
    std::string s;
  };
  slot& at(int i) {
    if (i < 1 || i > n_) throw std::out_of_range("ledger: insert parameter out of range");
    return slots_[static_cast<std::size_t>(i - 1)];
  }
  std::unique_ptr<slot[]> slots_;
  int n_ = 0;
};

// Applies the pending migrations in one transaction, so a crash leaves the old version whole.
db_result migrate(sqlite3* db) {
  if (auto e = exec(db, "BEGIN IMMEDIATE")) return e;
  const auto fail = [db](db_error e) {
    rollback(db);
    return e;
  };
  if (auto e = exec(db, "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)"))
    return fail(*e);
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version", -1, &st,
                         nullptr) != SQLITE_OK)
    return fail(error_of(db));
  const int rc = sqlite3_step(st);
  const int current = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
  const db_error step_error = error_of(db);
  sqlite3_finalize(st);
  if (current < 0) return fail(step_error);
  if (current > ledger_schema_version())
    return fail({SQLITE_ERROR, "database schema version " + std::to_string(current) +
                                   " is newer than this build supports (" +
                                   std::to_string(ledger_schema_version()) +
                                   "); run a newer tollgate or use another ledger file"});
  for (const auto& m : kMigrations) {
    if (m.version <= current) continue;
    if (auto e = exec(db, m.sql))
      return fail({e->code, "migration " + std::to_string(m.version) + ": " + e->message});
    const std::string record =
        "INSERT INTO schema_version(version) VALUES (" + std::to_string(m.version) + ")";
    if (auto e = exec(db, record.c_str())) return fail(*e);
  }
  if (auto e = exec(db, "COMMIT")) return fail(*e);
  return std::nullopt;
}

// Makes the optional indexes `wanted` names (by filter) and drops the others, so an index taken
// out of the config stops costing the writer. CREATE/DROP ... IF EXISTS: a no-op when the file
// already matches, which is every reopen after the first. Building one over an existing ledger
// reads every row (about a second a million rows on the benchmark VM) and start() waits for it,
// so it is logged.
db_result sync_indexes(sqlite3* db, const std::vector<std::string>& wanted, const std::string& path) {
  for (const auto& ix : kLedgerIndexes) {
    const bool want = std::find(wanted.begin(), wanted.end(), ix.filter) != wanted.end();
    if (!want) {
      if (auto e = exec(db, ("DROP INDEX IF EXISTS " + std::string(ix.name)).c_str())) return e;
      continue;
    }
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1", -1, &st, nullptr) != SQLITE_OK)
      return error_of(db);
    sqlite3_bind_text(st, 1, ix.name.data(), static_cast<int>(ix.name.size()), SQLITE_STATIC);
    const bool exists = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    if (exists) continue;
    if (sqlite3_prepare_v2(db, "SELECT EXISTS (SELECT 1 FROM calls)", -1, &st, nullptr) != SQLITE_OK) return error_of(db);
    const bool rows = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 1;
    sqlite3_finalize(st);
    if (rows)  // the start waits for it: say why
      log_line(log_level::info, "ledger index: building it over the existing rows (ledger.indexes), about a second a million rows")
          .str("path", path)
          .str("index", ix.name);
    const auto t0 = std::chrono::steady_clock::now();
    const std::string sql = "CREATE INDEX IF NOT EXISTS " + std::string(ix.name) + " ON calls(" + std::string(ix.column) + ", start_ms)";
    if (auto e = exec(db, sql.c_str())) return db_error{e->code, "index " + std::string(ix.name) + ": " + e->message};
    if (rows)
      log_line(log_level::info, "ledger index built (ledger.indexes)")
          .str("path", path)
          .str("index", ix.name)
          .num("seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return std::nullopt;
}

// The journal replay a transaction also records.
struct replay_mark {
  std::string_view journal_id;
  std::uint64_t last_seq;
};

}  // namespace

int ledger_schema_version() { return kMigrations.back().version; }

const char* ledger_schema_sql() {
  static const std::string sql = std::string(kSchemaV1) + kSchemaV3 + kSchemaV4 + kSchemaV5;  // calls, as it is now
  return sql.c_str();
}

writer_mode next_writer_mode(writer_mode current, const writer_load& load, const ledger_options& o) {
  if (load.flushing) return writer_mode::full;
  const std::size_t cap = std::max<std::size_t>(o.queue_capacity, 1);
  const std::size_t to_paced = std::max<std::size_t>(1, std::min(4 * o.batch_rows, cap / 8));
  const std::size_t to_full = std::max(to_paced + 1, cap / 4);
  const auto too_old = 4 * std::chrono::steady_clock::duration(o.flush_interval);
  writer_mode m = current;
  if (m == writer_mode::idle && (load.waiting >= to_paced || load.oldest_age >= too_old))
    m = writer_mode::paced;
  if (m == writer_mode::paced && load.waiting >= to_full) m = writer_mode::full;
  if (m == current) {  // ways back, one step at a time
    if (m == writer_mode::full && load.waiting < to_full / 2) m = writer_mode::paced;
    else if (m == writer_mode::paced && load.waiting < std::max<std::size_t>(1, to_paced / 4) &&
             load.oldest_age < too_old / 2)
      m = writer_mode::idle;
  }
  if (m == writer_mode::idle && !load.idle_allowed) m = writer_mode::paced;
  return m;
}

namespace {

// Moves thread `tid` (0: the caller) into or out of SCHED_IDLE; nice is kept.
bool set_idle_policy(int tid, bool idle) noexcept {
  sched_param sp{};
  return ::sched_setscheduler(tid, idle ? SCHED_IDLE : SCHED_OTHER, &sp) == 0;
}

// Whether a thread at the caller's nice value may leave SCHED_IDLE again (an unprivileged
// thread may enter it but not leave it without RLIMIT_NICE room or CAP_SYS_NICE). Tried on a
// throwaway thread, which inherits the caller's nice value.
bool can_leave_sched_idle() {
  bool ok = false;
  try {
    std::thread([&ok] { ok = set_idle_policy(0, true) && set_idle_policy(0, false); }).join();
  } catch (const std::exception&) {
    return false;
  }
  return ok;
}

}  // namespace

struct ledger::impl {
  impl(ledger& owner, const ledger_options& o)
      : self(owner),
        journal(o.journal_path.empty() ? o.path + ".journal" : o.journal_path, o.journal_max_bytes,
                o.synchronous_full) {}

  ledger& self;

  // --- The connection: start(), then the writer thread only.
  sqlite3* db = nullptr;
  std::array<sqlite3_stmt*, kInsertSizes> inserts{};  // [k]: kMaxInsertRows >> k rows
  std::array<bound_params, kInsertSizes> bound;       // what inserts[k]'s parameters hold
  sqlite3_stmt* begin = nullptr;        // BEGIN IMMEDIATE
  sqlite3_stmt* commit = nullptr;
  sqlite3_stmt* mark = nullptr;  // kReplayMarkSql, prepared by the first replay
  dev_t dev = 0;                 // identity of the file opened, to notice it deleted/replaced
  ino_t ino = 0;
  std::chrono::milliseconds busy_timeout{};
  std::string conn_sql;          // test hook (set_test_connection_sql), writer's copy
  bool conn_sql_dirty = false;

  // --- Writer thread state.
  bool idle_allowed = false;  // can_leave_sched_idle(), at start
  ledger_journal journal;
  std::deque<usage_record> held;  // rows the journal refused, oldest first, <= memory_rows
  std::uint64_t leftover = 0;     // journal rows from an earlier run still to replay
  bool healthy = true;
  std::chrono::milliseconds backoff = kFirstBackoff;
  clock_type::time_point retry_at{};   // unhealthy: no database attempt before this
  clock_type::time_point idle_since{};  // last commit or probe
  clock_type::time_point prune_at{};    // retention: the next delete of old rows
  bool vacuum_checked = false;          // a file without auto_vacuum was warned about
  bool journal_failing = false, journal_full = false, dropping = false;  // logged once each
  std::string last_error;               // of the database, as last logged
  std::vector<journal_entry> entries;   // replay buffers, reused
  std::vector<usage_record> rows;

  // --- Guarded by the ledger's mu_.
  bool running = false;                 // the writer thread is live
  clock_type::time_point oldest{};      // when the oldest queued row arrived
  std::uint64_t flush_requested = 0, flush_seen = 0, flush_done = 0;  // flush() tickets
  std::string test_sql;
  std::uint64_t test_sql_gen = 0, test_sql_seen = 0;

  // --- Counters, read by stats() without the writer's cooperation.
  // committed_own: rows submitted to this ledger object and committed; handed_over: its rows
  // left in the journal at stop(), for the next start() to replay.
  std::atomic<std::uint64_t> written{0}, committed_own{0}, handed_over{0}, replayed{0},
      dropped{0}, write_errors{0}, journal_errors{0}, journal_rows{0}, journal_bytes{0},
      held_rows{0}, pruned{0};

  const std::string& path() const { return self.opts_.path; }

  void close() noexcept {
    for (sqlite3_stmt*& st : inserts) {
      sqlite3_finalize(st);
      st = nullptr;
    }
    for (sqlite3_stmt** st : {&begin, &commit, &mark}) {
      sqlite3_finalize(*st);
      *st = nullptr;
    }
    sqlite3_close(db);
    db = nullptr;
  }

  // Opens the database at the configured path: WAL, synchronous, migrations, the insert, the
  // test hook. On failure the connection is closed and the reason returned.
  db_result open() {
    const std::filesystem::path p(path());
    if (p.has_parent_path()) {
      std::error_code ec;
      std::filesystem::create_directories(p.parent_path(), ec);
      if (ec) return db_error{SQLITE_CANTOPEN, ec.message()};
    }
    // NOMUTEX: after start() only the writer thread touches the connection.
    const int rc = sqlite3_open_v2(path().c_str(), &db,
                                   SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                   nullptr);
    if (rc != SQLITE_OK) {
      db_error e = db ? error_of(db) : db_error{rc, sqlite3_errstr(rc)};
      close();
      return e;
    }
    const auto fail = [this](db_error e) {
      close();
      return e;
    };
    // SQLite falls back to read-only when the file is not writable for us; such a connection
    // would stay read-only after the file is fixed, so it is refused and tried again later.
    if (sqlite3_db_readonly(db, "main") == 1)
      return fail({SQLITE_READONLY, "the database file is read-only for this process"});
    sqlite3_busy_timeout(db, static_cast<int>(busy_timeout.count()));
    // A new file keeps its free pages in a list it can give back (retention's deletes shrink it,
    // see prune_step). Only a file without tables takes this; an older ledger keeps its mode
    // (the README says how to convert one).
    if (auto e = exec(db, "PRAGMA auto_vacuum=INCREMENTAL")) return fail(*e);
    // journal_mode answers with the mode in effect; a file system without shared memory
    // support keeps the old one, which would silently make readers block the writer.
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, nullptr) != SQLITE_OK)
      return fail(error_of(db));
    std::string mode;
    if (sqlite3_step(st) == SQLITE_ROW)
      if (const auto* text = sqlite3_column_text(st, 0)) mode = reinterpret_cast<const char*>(text);
    const db_error mode_error = error_of(db);
    sqlite3_finalize(st);
    if (mode.empty()) return fail(mode_error);
    if (mode != "wal")
      return fail({SQLITE_ERROR, "WAL mode unavailable (journal_mode is " + mode + ")"});
    // NORMAL in WAL mode: a commit is in the WAL file when COMMIT returns, so a process crash
    // (SIGKILL) loses none and never corrupts the file; a power cut may lose the last commits.
    // FULL also fsyncs the WAL at every commit (one per batch) for power-loss durability.
    // A checkpoint copies the WAL into the database and syncs it, all in the kernel: 200 pages
    // (800 KiB) instead of SQLite's 1,000 keeps one to ~1 ms instead of a 4 ms tick (README).
    if (auto e = exec(db, "PRAGMA wal_autocheckpoint=200")) return fail(*e);
    if (auto e = exec(db, self.opts_.synchronous_full ? "PRAGMA synchronous=FULL"
                                                      : "PRAGMA synchronous=NORMAL"))
      return fail(*e);
    if (auto e = migrate(db)) return fail(*e);
    if (auto e = sync_indexes(db, self.opts_.indexes, path())) return fail(*e);
    if (self.opts_.retention.count() > 0 && !vacuum_checked) {
      vacuum_checked = true;
      sqlite3_stmt* q = nullptr;
      if (sqlite3_prepare_v2(db, "PRAGMA auto_vacuum", -1, &q, nullptr) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW &&
          sqlite3_column_int(q, 0) == 0)
        log_line(log_level::warn, "ledger.retention deletes rows, but this ledger file was made without auto_vacuum: "
                                  "it reuses the freed pages and does not shrink until converted (README, ledger.retention)")
            .str("path", path());
      sqlite3_finalize(q);
    }
    std::vector<std::pair<std::string, sqlite3_stmt**>> statements = {
        {"BEGIN IMMEDIATE", &begin},
        {"COMMIT", &commit},
    };
    for (std::size_t k = 0; k < kInsertSizes; ++k)
      statements.emplace_back(insert_sql(kMaxInsertRows >> k), &inserts[k]);
    for (const auto& [sql, st] : statements)
      if (sqlite3_prepare_v3(db, sql.c_str(), static_cast<int>(sql.size()),
                             SQLITE_PREPARE_PERSISTENT, st, nullptr) != SQLITE_OK)
        return fail(error_of(db));
    for (std::size_t k = 0; k < kInsertSizes; ++k)
      bound[k].forget(static_cast<int>(kMaxInsertRows >> k) * kInsertColumns);
    struct stat sb {};
    if (::stat(path().c_str(), &sb) != 0) return fail({SQLITE_CANTOPEN, "stat failed"});
    dev = sb.st_dev;
    ino = sb.st_ino;
    conn_sql_dirty = false;
    if (!conn_sql.empty())
      if (auto e = exec(db, conn_sql.c_str())) return fail(*e);
    return std::nullopt;
  }

  // The path still names the file we have open (not deleted, renamed away or replaced).
  bool same_file() const {
    struct stat sb {};
    return ::stat(path().c_str(), &sb) == 0 && sb.st_dev == dev && sb.st_ino == ino;
  }

  // A connection to the file at the path, reopened when it went away or failed for good.
  db_result ensure() {
    if (db && !same_file()) {
      log_line(log_level::warn, "ledger database file deleted or replaced: reopening")
          .str("path", path());
      close();
    }
    if (!db) return open();
    if (conn_sql_dirty) {
      conn_sql_dirty = false;
      if (!conn_sql.empty()) return exec(db, conn_sql.c_str());
    }
    return std::nullopt;
  }

  // Binds one record to the 32 parameters after index `i`, those it repeats from the row bound
  // there before excepted.
  static void bind_row(bound_params& p, sqlite3_stmt* st, int i, const usage_record& r) {
    p.text(st, ++i, r.request_id);
    p.integer(st, ++i, r.start_ms);
    p.text(st, ++i, to_string(r.route));
    p.text(st, ++i, r.method);
    p.nullable_text(st, ++i, r.requested_model);
    p.nullable_text(st, ++i, r.served_model);
    p.nullable_text(st, ++i, r.price_model);
    p.nullable_text(st, ++i, r.upstream);
    p.nullable_text(st, ++i, r.client_key_id);
    p.nullable_text(st, ++i, r.team);
    p.nullable_text(st, ++i, r.user);
    p.integer(st, ++i, r.status);
    p.integer(st, ++i, r.stream ? 1 : 0);
    p.integer(st, ++i, r.aborted ? 1 : 0);
    p.integer(st, ++i, r.tokens.prompt);
    p.integer(st, ++i, r.tokens.completion);
    p.integer(st, ++i, r.tokens.cached);
    p.integer(st, ++i, r.tokens.cache_write);
    p.integer(st, ++i, r.tokens.cache_write_1h);
    p.integer(st, ++i, r.tokens.reasoning);
    p.integer(st, ++i, r.tokens.total());
    p.text(st, ++i, to_string(r.source));
    p.integer(st, ++i, r.priced ? 1 : 0);
    p.real(st, ++i, finite_or_zero(r.cost_usd));
    p.real(st, ++i, finite_or_zero(r.latency_ms));
    if (r.first_byte_ms >= 0 && std::isfinite(r.first_byte_ms))
      p.real(st, ++i, r.first_byte_ms);
    else
      p.null(st, ++i);
    p.nullable_text(st, ++i, r.error_kind);
    p.nullable_text(st, ++i, r.upstream_request_id);
    p.integer(st, ++i, r.attempts);
    p.nullable_text(st, ++i, to_string(r.tokens.tier));
    p.integer(st, ++i, std::max<std::int64_t>(r.tokens.web_search, 0));
    p.nullable_text(st, ++i, r.provider);
  }

  // Steps a bound statement and resets it either way.
  db_result step(sqlite3_stmt* st) {
    db_result err;
    if (sqlite3_step(st) != SQLITE_DONE) err = error_of(db);
    sqlite3_reset(st);
    return err;
  }

  // Inserts rows [i, i + n) with one statement; n is kMaxInsertRows >> k.
  db_result insert_rows(const std::vector<usage_record>& batch, std::size_t i, std::size_t k) {
    sqlite3_stmt* st = inserts[k];
    const std::size_t n = kMaxInsertRows >> k;
    for (std::size_t r = 0; r < n; ++r)
      bind_row(bound[k], st, static_cast<int>(r) * kInsertColumns, batch[i + r]);
    return step(st);
  }

  db_result set_mark(const replay_mark& m) {
    if (!mark) {
      if (auto e = exec(db, kReplayTableSql)) return e;
      if (sqlite3_prepare_v3(db, kReplayMarkSql, -1, SQLITE_PREPARE_PERSISTENT, &mark, nullptr) !=
          SQLITE_OK) {
        mark = nullptr;
        return error_of(db);
      }
    }
    bind_text(mark, 1, m.journal_id);
    sqlite3_bind_int64(mark, 2, static_cast<sqlite3_int64>(m.last_seq));
    return step(mark);
  }

  // One transaction for the whole batch (and its replay mark): all rows or none. Every column
  // is bound so that no row can violate a constraint, so a failure is the database's (locked,
  // full, read-only, I/O) and writing the same rows later is right.
  db_result write(const std::vector<usage_record>& batch, const replay_mark* m) {
    if (auto e = ensure()) return e;
    if (auto e = step(begin)) return check(std::move(e));
    db_result err;
    auto slice_start = clock_type::now();
    for (std::size_t i = 0, since_pace = 0; i < batch.size();) {
      std::size_t k = 0;  // the largest statement that fits what is left
      while ((kMaxInsertRows >> k) > batch.size() - i) ++k;
      if ((err = insert_rows(batch, i, k))) break;
      const std::size_t n = kMaxInsertRows >> k;
      i += n;
      since_pace += n;
      if (since_pace >= kPaceCheckRows) {
        since_pace = 0;
        pace(slice_start);
      }
    }
    if (!err && m) err = set_mark(*m);
    if (!err) err = step(commit);
    if (err) {
      rollback(db);
      // The mark's table may have been created by this very transaction: prepare it again.
      if (m && mark) {
        sqlite3_finalize(mark);
        mark = nullptr;
      }
    }
    return check(std::move(err));
  }

  // After each ~150 µs slice of inserts: idle mode yields, paced mode pauses three times as
  // long as the slice took, full mode goes on.
  void pace(clock_type::time_point& slice_start) {
    const auto mode = static_cast<writer_mode>(self.mode_.load(std::memory_order_relaxed));
    if (mode == writer_mode::full) return;
    const auto worked = clock_type::now() - slice_start;
    if (worked < kPaceSlice) return;
    if (mode == writer_mode::idle) {
      // The scheduler may still run an idle thread for a whole tick (4 ms at HZ=250) while an
      // I/O thread is runnable; a yield after each slice hands the CPU back at once.
      ::sched_yield();
      slice_start = clock_type::now();
      return;
    }
    std::this_thread::sleep_for(std::min<clock_type::duration>(3 * worked, kMaxPause));
    slice_start = clock_type::now();
  }

  // Applies the mode next_writer_mode() chose (writer thread; mu_ not held).
  void set_mode(writer_mode to) noexcept {
    const auto from = static_cast<writer_mode>(self.mode_.load(std::memory_order_relaxed));
    if (from == to) return;
    if (to == writer_mode::idle && !set_idle_policy(0, true)) {
      idle_allowed = false;  // next_writer_mode() will not ask again
      return;
    }
    if (from == writer_mode::idle && !set_idle_policy(0, false))  // cannot happen: probed at start
      log_line(log_level::error, "ledger writer: cannot leave SCHED_IDLE").str("error", std::strerror(errno));
    self.mode_.store(static_cast<int>(to), std::memory_order_relaxed);
  }

  db_result check(db_result e) {
    if (e && needs_reopen(e->code)) close();
    return e;
  }

  // Cheap writability check: takes and drops the write lock without touching a page (so it
  // cannot see a full disk; the next write will).
  db_result probe() {
    if (auto e = ensure()) return e;
    if (auto e = check(exec(db, "BEGIN IMMEDIATE"))) return e;
    return exec(db, "ROLLBACK");
  }

  // The last sequence number of journal `id` already in the database (0: none). The table only
  // exists in databases that replayed a journal before.
  std::uint64_t replayed_through(const std::string& id) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT last_seq FROM journal_replay WHERE journal_id = ?", -1,
                           &st, nullptr) != SQLITE_OK)
      return 0;
    bind_text(st, 1, id);
    std::uint64_t v = 0;
    if (sqlite3_step(st) == SQLITE_ROW) v = static_cast<std::uint64_t>(sqlite3_column_int64(st, 0));
    sqlite3_finalize(st);
    return v;
  }

  // --- Writer steps (no lock held).

  void report(const std::vector<usage_record>& batch, std::size_t own, bool call_back) {
    // Before the counters move, so a flush() that returns has seen its rows reported.
    if (call_back && self.on_committed) {
      try {
        self.on_committed(batch);
      } catch (const std::exception& e) {
        log_line(log_level::error, "ledger: on_committed threw").str("error", e.what());
      } catch (...) {
        log_line(log_level::error, "ledger: on_committed threw");
      }
    }
    written += batch.size();
    committed_own += own;
  }

  void publish() noexcept {
    journal_rows = journal.pending();
    journal_bytes = journal.bytes();
    held_rows = held.size();
  }

  void db_ok() {
    if (!healthy)
      log_line(log_level::info, "ledger database writable again")
          .str("path", path())
          .integer("journal_rows", static_cast<std::int64_t>(journal.pending()))
          .integer("dropped_rows", static_cast<std::int64_t>(dropped.load()));
    healthy = true;
    last_error.clear();
    self.writable_.store(true, std::memory_order_relaxed);
    backoff = kFirstBackoff;
    retry_at = {};
    idle_since = clock_type::now();
    dropping = false;
  }

  void db_failed(const db_error& e, bool count) {
    if (count) ++write_errors;
    // Once per outage, and again when the reason changes (an operator fixing one cause sees
    // the next).
    if (healthy || e.message != last_error)
      log_line(log_level::warn,
               "ledger database not writable: rows go to the journal until it recovers")
          .str("path", path())
          .str("error", e.message)
          .integer("sqlite_code", e.code)
          .str("on_failure", self.opts_.fail_closed ? "closed" : "open");
    last_error = e.message;
    healthy = false;
    self.writable_.store(false, std::memory_order_relaxed);
    const auto now = clock_type::now();
    retry_at = now + backoff;
    idle_since = now;
    backoff = std::min<std::chrono::milliseconds>(backoff * 2, kMaxBackoff);
  }

  // Moves held rows, oldest first, into the journal as far as it takes them, then drops the
  // oldest beyond memory_rows. Journal rows are always older than held rows, which are older
  // than queued ones, so a replay keeps the order rows were submitted in.
  void spill_held() {
    std::vector<const usage_record*> chunk;
    std::size_t moved = 0;
    std::string err;
    while (moved < held.size()) {
      const std::size_t n = std::min(held.size() - moved, kJournalChunk);
      chunk.clear();
      for (std::size_t i = 0; i < n; ++i) chunk.push_back(&held[moved + i]);
      const std::size_t k = journal.append(chunk, err);
      moved += k;
      if (!err.empty()) {
        ++journal_errors;
        if (!journal_failing)
          log_line(log_level::error, "ledger journal write failed: rows are held in memory")
              .str("path", journal.path())
              .str("error", err)
              .integer("memory_rows", static_cast<std::int64_t>(self.opts_.memory_rows));
        journal_failing = true;
        break;
      }
      if (k < n) {
        if (!journal_full)
          log_line(log_level::error, "ledger journal full: rows are held in memory")
              .str("path", journal.path())
              .integer("journal_max_bytes", static_cast<std::int64_t>(journal.max_bytes()))
              .integer("memory_rows", static_cast<std::int64_t>(self.opts_.memory_rows));
        journal_full = true;
        break;
      }
      journal_failing = journal_full = false;
    }
    held.erase(held.begin(), held.begin() + static_cast<std::ptrdiff_t>(moved));
    if (held.size() > self.opts_.memory_rows) {
      const std::size_t n = held.size() - self.opts_.memory_rows;
      held.erase(held.begin(), held.begin() + static_cast<std::ptrdiff_t>(n));
      dropped += n;
      if (!dropping)
        log_line(log_level::error,
                 "ledger dropping rows: database, journal and memory all refuse them")
            .str("path", path())
            .integer("memory_rows", static_cast<std::int64_t>(self.opts_.memory_rows));
      dropping = true;
    }
  }

  // A batch from the queue: into the database when it may be tried, else (or when it fails)
  // to the journal / memory.
  void settle(std::vector<usage_record>& batch, bool try_db) {
    if (try_db) {
      db_result e = write(batch, nullptr);
      if (!e) {
        report(batch, batch.size(), true);
        db_ok();
        batch.clear();
        publish();
        return;
      }
      db_failed(*e, true);
    }
    held.insert(held.end(), std::make_move_iterator(batch.begin()),
                std::make_move_iterator(batch.end()));
    batch.clear();
    spill_held();
    publish();
  }

  // One batch of the journal into the database, with its replay mark. call_back: report the
  // rows to on_committed (not during start()).
  db_result replay(bool call_back) {
    if (auto err = journal.read(self.opts_.batch_rows, entries)) {
      ++journal_errors;
      log_line(log_level::error, "ledger journal read failed")
          .str("path", journal.path())
          .str("error", *err);
      return db_error{SQLITE_ERROR, "journal: " + *err};
    }
    if (entries.empty()) return std::nullopt;
    rows.clear();
    for (auto& e : entries) rows.push_back(std::move(e.row));
    const replay_mark m{journal.id(), entries.back().seq};
    if (auto e = write(rows, &m)) return e;
    journal.consume();
    const std::uint64_t earlier = std::min<std::uint64_t>(leftover, rows.size());
    leftover -= earlier;
    replayed += rows.size();
    report(rows, rows.size() - earlier, call_back);
    if (journal.pending() == 0)
      if (auto err = journal.remove()) {
        ++journal_errors;
        log_line(log_level::warn, "ledger journal replayed but not removed; it is reused")
            .str("path", journal.path())
            .str("error", *err);
      }
    return std::nullopt;
  }

  // One batch of the backlog (journal first, then rows held in memory) into the database.
  // At shutdown the journal is left for the next start; held rows still get their tries.
  void backlog_step(bool stopping) {
    db_result e;
    if (!stopping && journal.pending() > 0) {
      e = replay(true);
    } else if (!held.empty()) {
      // Moved out in place and moved back on failure: held keeps its order either way.
      const std::size_t n = std::min(self.opts_.batch_rows, held.size());
      const auto end = held.begin() + static_cast<std::ptrdiff_t>(n);
      rows.assign(std::make_move_iterator(held.begin()), std::make_move_iterator(end));
      e = write(rows, nullptr);
      if (e) {
        std::move(rows.begin(), rows.end(), held.begin());
      } else {
        held.erase(held.begin(), end);
        report(rows, n, true);
      }
    }
    if (!e) {
      db_ok();
    } else {
      db_failed(*e, true);
      spill_held();  // the journal may take them now
    }
    publish();
  }

  void probe_step() {
    if (auto e = probe())
      db_failed(*e, false);
    else
      db_ok();
  }

  // Retention: deletes up to kPruneRows rows that started before now - retention (and, with a
  // fleet ledger, are in PostgreSQL already). Through the start_ms index; one statement, its own
  // transaction. Returns whether a full batch went (more may wait).
  bool prune_step() {
    if (auto e = ensure()) {
      db_failed(*e, false);
      return false;
    }
    const std::int64_t cutoff =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count() -
        self.opts_.retention.count();
    const std::int64_t through =
        self.opts_.prunable_through_id ? self.opts_.prunable_through_id() : std::numeric_limits<std::int64_t>::max();
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, "DELETE FROM calls WHERE id IN (SELECT id FROM calls WHERE start_ms < ?1 AND id <= ?2 LIMIT ?3)",
                           -1, &st, nullptr) != SQLITE_OK) {
      db_failed(error_of(db), false);
      return false;
    }
    sqlite3_bind_int64(st, 1, cutoff);
    sqlite3_bind_int64(st, 2, through);
    sqlite3_bind_int64(st, 3, kPruneRows);
    const int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
      db_failed(error_of(db), false);
      return false;
    }
    const auto n = sqlite3_changes64(db);
    pruned += static_cast<std::uint64_t>(n);
    // The freed pages go back to the file system (the file is cut at the next checkpoint); a
    // file created without auto_vacuum ignores this and reuses them instead.
    if (n > 0)
      if (auto e = exec(db, kVacuumSql)) {
        db_failed(*e, false);
        return false;
      }
    return n >= kPruneRows;
  }
};

ledger::ledger(ledger_options opts) : opts_(std::move(opts)), impl_(nullptr) {
  // A zero batch would make the writer spin on empty transactions.
  opts_.batch_rows = std::max<std::size_t>(opts_.batch_rows, 1);
  queue_.set_chunk(opts_.batch_rows);
  impl_ = new impl(*this, opts_);
}

ledger::~ledger() {
  stop();
  delete impl_;
}

void ledger::start() {
  if (thread_.joinable()) return;
  impl& I = *impl_;
  I.busy_timeout = busy_timeout_;
  {
    std::lock_guard lk(mu_);
    I.conn_sql = I.test_sql;
    I.test_sql_seen = I.test_sql_gen;
  }
  if (auto e = I.open())
    throw std::runtime_error("ledger: cannot open " + opts_.path + ": " + e->message);
  I.healthy = true;
  I.backoff = kFirstBackoff;
  I.retry_at = {};
  I.idle_since = clock_type::now();

  // A journal left by an earlier run (the database failed, then tollgate stopped or crashed)
  // goes in before any new row, and before start-up readers (forecaster, budgets) look.
  const auto j = I.journal.open();
  if (!j.error.empty())
    log_line(log_level::error,
             "ledger journal unusable: rows the database refuses are held in memory")
        .str("error", j.error);
  if (j.cut_bytes > 0 || j.skipped_bytes > 0)
    log_line(log_level::warn, "ledger journal: damaged bytes skipped (a crash cut the last record)")
        .str("path", I.journal.path())
        .integer("cut_bytes", static_cast<std::int64_t>(j.cut_bytes))
        .integer("skipped_bytes", static_cast<std::int64_t>(j.skipped_bytes));
  if (I.journal.pending() > 0) {
    if (auto err = I.journal.skip_through(I.replayed_through(I.journal.id())))
      log_line(log_level::error, "ledger journal read failed").str("error", *err);
    I.leftover = I.journal.pending();
    log_line(log_level::info, "ledger: replaying the journal of an earlier run")
        .str("path", I.journal.path())
        .integer("rows", static_cast<std::int64_t>(I.leftover));
    while (I.journal.pending() > 0) {
      if (auto e = I.replay(false)) {
        I.db_failed(*e, true);  // the writer thread goes on with it
        break;
      }
    }
  }
  if (I.journal.pending() == 0) {
    I.leftover = 0;
    if (auto err = I.journal.remove())  // every record was in the database already
      log_line(log_level::warn, "ledger journal replayed but not removed; it is reused")
          .str("error", *err);
  }
  I.publish();
  {
    std::lock_guard lk(mu_);
    stopping_ = false;
    I.running = true;
    if (!queue_.empty()) I.oldest = clock_type::now();
  }
  writable_.store(I.healthy, std::memory_order_relaxed);
  thread_ = std::thread([this] { run(); });
}

void ledger::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  promote(writer_mode::full);
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  impl_->close();
  // Journal rows after the earlier run's are this run's: the next start() replays them.
  const auto in_journal = impl_->journal.pending();
  impl_->handed_over += in_journal - std::min(in_journal, impl_->leftover);
  impl_->leftover = 0;
  impl_->journal.close();
  writable_.store(false, std::memory_order_relaxed);
  // Rows submitted after the writer left (or with no writer ever started) can no longer be
  // written; say so rather than lose them quietly.
  std::lock_guard lk(mu_);
  if (!queue_.empty()) {
    std::fprintf(stderr, "ledger: %zu rows submitted without a running writer were not written\n",
                 queue_.size());
    queue_.clear();
  }
}

bool ledger::reserve() noexcept {
  if (opts_.fail_closed && !writable_.load(std::memory_order_relaxed)) return false;
  auto cur = reserved_.load(std::memory_order_relaxed);
  do {
    if (cur >= opts_.queue_capacity) return false;
  } while (!reserved_.compare_exchange_weak(cur, cur + 1, std::memory_order_relaxed));
  return true;
}

void ledger::release() noexcept { release_slots(reserved_, 1); }

void ledger::submit(usage_record&& rec) {
  std::unique_lock lk(mu_);
  if (queue_.empty()) impl_->oldest = clock_type::now();
  queue_.push_back(std::move(rec));
  ++submitted_;
  // The first row starts the flush_interval clock; a full batch is due at once. Rows in
  // between need no wake-up.
  const bool wake = queue_.size() == 1 || queue_.size() == opts_.batch_rows;
  // An idle (SCHED_IDLE) writer may be starved by busy I/O threads: a backlog promotes it from
  // here. The age test costs a clock read only while the writer is idle.
  bool backlog = false;
  if (mode_.load(std::memory_order_relaxed) == static_cast<int>(writer_mode::idle)) {
    writer_load load;
    load.waiting = queue_.size();
    load.oldest_age = clock_type::now() - impl_->oldest;
    backlog = next_writer_mode(writer_mode::idle, load, opts_) != writer_mode::idle;
  }
  lk.unlock();
  if (backlog) promote(writer_mode::paced);
  if (wake) cv_.notify_one();
}

void ledger::flush() {
  std::unique_lock lk(mu_);
  if (!impl_->running) return;
  const auto ticket = ++impl_->flush_requested;
  promote(writer_mode::full);
  cv_.notify_one();
  flushed_cv_.wait(lk, [&] { return impl_->flush_done >= ticket || !impl_->running; });
}

void ledger::set_test_connection_sql(std::string sql) {
  {
    std::lock_guard lk(mu_);
    impl_->test_sql = std::move(sql);
    ++impl_->test_sql_gen;
  }
  cv_.notify_one();
}

ledger_stats ledger::stats() const {
  const impl& I = *impl_;
  ledger_stats s;
  std::lock_guard lk(mu_);
  s.rows_written = I.written;
  s.write_errors = I.write_errors;
  const std::uint64_t settled = I.committed_own + I.dropped + I.handed_over;
  s.queue_depth = static_cast<std::size_t>(submitted_ > settled ? submitted_ - settled : 0);
  s.dropped_rows = I.dropped;
  s.journaled_rows = I.journal_rows;
  s.journal_bytes = I.journal_bytes;
  s.memory_rows = static_cast<std::size_t>(I.held_rows.load());
  s.replayed_rows = I.replayed;
  s.journal_errors = I.journal_errors;
  s.healthy = writable_.load(std::memory_order_relaxed);
  s.writer_mode = mode_.load(std::memory_order_relaxed);
  s.pruned_rows = I.pruned;
  return s;
}

void ledger::promote(writer_mode to) noexcept {
  int cur = mode_.load(std::memory_order_relaxed);
  while (cur < static_cast<int>(to)) {
    if (cur == static_cast<int>(writer_mode::idle)) {
      // Only one thread moves the writer out of SCHED_IDLE: the one that wins the exchange.
      if (!mode_.compare_exchange_weak(cur, static_cast<int>(to), std::memory_order_relaxed)) continue;
      if (const int tid = writer_tid_.load(std::memory_order_relaxed)) set_idle_policy(tid, false);
      return;
    }
    if (mode_.compare_exchange_weak(cur, static_cast<int>(to), std::memory_order_relaxed)) return;
  }
}

void ledger::run() {
  name_this_thread("tg-ledger");
  lower_thread_priority(5);
  impl& I = *impl_;
  I.idle_allowed = can_leave_sched_idle();
  writer_tid_.store(static_cast<int>(::syscall(SYS_gettid)), std::memory_order_relaxed);
  std::vector<usage_record> batch;
  batch.reserve(opts_.batch_rows);
  std::optional<clock_type::time_point> give_up_at;
  bool after_backlog = false;  // the last step wrote a backlog batch

  std::unique_lock lk(mu_);
  for (;;) {
    const auto now = clock_type::now();
    if (I.test_sql_seen != I.test_sql_gen) {
      I.test_sql_seen = I.test_sql_gen;
      I.conn_sql = I.test_sql;
      I.conn_sql_dirty = true;
    }
    // At shutdown a failing database is not waited for: its rows go to the journal at once and
    // the next start replays them.
    if (stopping_ && !give_up_at) give_up_at = now + kStopRetryBudget;
    if (I.flush_seen < I.flush_requested) {
      I.flush_seen = I.flush_requested;
      I.retry_at = std::min(I.retry_at, now);
    }
    const bool flushing = I.flush_done < I.flush_seen;
    const bool db_due = I.healthy || now >= I.retry_at;
    const bool backlog = I.journal.pending() > 0 || !I.held.empty();
    const bool backlog_ready = db_due && (stopping_ ? !I.held.empty() : backlog);
    const auto due_at = I.oldest + opts_.flush_interval;
    const bool queue_due = !queue_.empty() && (stopping_ || flushing || now >= due_at ||
                                               queue_.size() >= opts_.batch_rows);
    // The backlog goes first, so rows keep their order; once a full batch of new rows waits,
    // the two take turns, so a long replay never holds up admission.
    const bool queue_first =
        !backlog_ready || stopping_ || (after_backlog && queue_.size() >= opts_.batch_rows);

    {
      writer_load load;
      load.waiting = queue_.size() + I.journal.pending() + I.held.size();
      load.oldest_age = queue_.empty() ? clock_type::duration{} : now - I.oldest;
      load.flushing = flushing || stopping_;
      load.idle_allowed = I.idle_allowed;
      const auto next = next_writer_mode(static_cast<writer_mode>(mode_.load(std::memory_order_relaxed)), load, opts_);
      if (next != static_cast<writer_mode>(mode_.load(std::memory_order_relaxed))) {
        lk.unlock();
        I.set_mode(next);
        lk.lock();
        continue;
      }
    }
    if (queue_due && queue_first) {
      // The rows leave the queue so submit() never waits on SQLite. `oldest` stays as is: any
      // row left behind arrived later, so it is written no later than its own interval.
      queue_.take_front(batch);  // min(batch_rows, queued) rows, one swap
      const std::size_t n = batch.size();
      lk.unlock();
      try {
        I.settle(batch, db_due);
      } catch (const std::exception& e) {  // std::bad_alloc: the batch is lost, say so
        log_line(log_level::error, "ledger writer failed").str("error", e.what());
        I.dropped += batch.size();
        batch.clear();
      }
      // The rows are committed, journaled or held (memory_rows bounds those): their slots
      // are free again, so a failing database does not close admission.
      release_slots(reserved_, n);
      after_backlog = false;
      lk.lock();
      continue;
    }
    if (backlog_ready) {
      const bool stopping = stopping_;
      lk.unlock();
      try {
        I.backlog_step(stopping);
      } catch (const std::exception& e) {  // std::bad_alloc: rows stay in the journal/memory
        log_line(log_level::error, "ledger writer failed").str("error", e.what());
        I.db_failed({SQLITE_NOMEM, e.what()}, true);
      }
      after_backlog = true;
      lk.lock();
      continue;
    }
    if (flushing) {  // queue empty, backlog written or the database refused it just now
      I.flush_done = I.flush_seen;
      flushed_cv_.notify_all();
      continue;
    }
    if (stopping_ && queue_.empty()) {
      if (I.held.empty()) break;
      if (now >= *give_up_at) {
        log_line(log_level::error,
                 "ledger: shutting down with rows neither the database nor the journal took")
            .str("path", opts_.path)
            .integer("rows", static_cast<std::int64_t>(I.held.size()))
            .integer("retried_s",
                     std::chrono::duration_cast<std::chrono::seconds>(kStopRetryBudget).count());
        I.dropped += I.held.size();
        I.held.clear();
        I.publish();
        break;
      }
    }
    // Nothing is due: old rows past the retention go now, a batch at a time (a backlog of them,
    // such as the first start with a retention, at most kPruneRows a second).
    const bool pruning = opts_.retention.count() > 0 && I.healthy && !stopping_ && !flushing;
    if (pruning && now >= I.prune_at) {
      lk.unlock();
      const bool more = I.prune_step();
      I.prune_at = clock_type::now() + (more ? clock_type::duration(kPruneBacklogPause) : clock_type::duration(opts_.prune_interval));
      lk.lock();
      continue;
    }
    auto wake = clock_type::time_point::max();
    if (pruning) wake = I.prune_at;
    if (!queue_.empty()) wake = std::min(wake, due_at);
    if (backlog) wake = std::min(wake, I.retry_at);
    if (give_up_at) wake = std::min(wake, *give_up_at);
    if (!backlog && queue_.empty() && !stopping_) {
      const auto probe_at = I.healthy ? I.idle_since + kProbeInterval : I.retry_at;
      if (now >= probe_at) {
        lk.unlock();
        I.probe_step();
        lk.lock();
        continue;
      }
      wake = std::min(wake, probe_at);
    }
    cv_.wait_until(lk, wake);
  }
  I.running = false;
  flushed_cv_.notify_all();
}

}  // namespace tollgate
