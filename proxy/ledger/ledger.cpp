// The SQLite ledger: schema migrations, the bounded row queue fed by I/O threads and the one
// writer thread that commits it in batches. Owned by the server; read by /readyz and /metrics.
#include "ledger/ledger.hpp"

#include "core/log.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <system_error>

namespace tollgate {

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto kFirstBackoff = 100ms;
constexpr auto kMaxBackoff = 5s;
// With an empty queue, the database is probed this often so /readyz notices it went read-only
// or locked even when no call is being written.
constexpr auto kProbeInterval = 5s;
// At shutdown, failed writes are retried this long. Waiting forever would hang SIGTERM on a
// dead disk; giving up at once would lose rows over a brief lock held by a backup tool.
constexpr auto kStopRetryBudget = 10s;

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
// the key's SHA-256 (hex) is stored; tags and budgets are JSON; revoked keys stay, so a name (the
// ledger's client_key_id) is never reused. One key under two names would make attribution
// ambiguous, hence the unique hash.
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
};

constexpr const char* kInsertSql =
    "INSERT INTO calls (request_id, start_ms, route, method, requested_model, served_model,"
    " price_model, upstream, client_key_id, team, user, status, stream, aborted, prompt_tokens,"
    " completion_tokens, cached_tokens, cache_write_tokens, cache_write_1h_tokens,"
    " reasoning_tokens, total_tokens, usage_source, priced, cost_usd, latency_ms, first_byte_ms,"
    " error_kind, upstream_request_id, attempts)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

// Gives back reservation slots, saturating at zero: a submit() without reserve() (a caller
// bug) must not wrap the counter and turn every later call away.
void release_slots(std::atomic<std::size_t>& reserved, std::size_t n) noexcept {
  auto cur = reserved.load(std::memory_order_relaxed);
  while (!reserved.compare_exchange_weak(cur, cur - std::min(cur, n), std::memory_order_relaxed)) {
  }
}

// Runs SQL without results; on failure returns SQLite's message.
std::optional<std::string> exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) == SQLITE_OK) return std::nullopt;
  std::string msg = err ? err : sqlite3_errmsg(db);
  sqlite3_free(err);
  return msg;
}

// Ends a failed transaction. SQLite rolls back by itself on some errors (SQLITE_FULL,
// SQLITE_IOERR, ...), after which an explicit ROLLBACK would only report "no transaction".
void rollback(sqlite3* db) {
  if (!sqlite3_get_autocommit(db)) exec(db, "ROLLBACK");
}

// Text bound with an explicit length (so embedded NULs survive) and SQLITE_STATIC: the record
// outlives the step.
int bind_text(sqlite3_stmt* st, int i, std::string_view s) {
  return sqlite3_bind_text64(st, i, s.data(), s.size(), SQLITE_STATIC, SQLITE_UTF8);
}
int bind_nullable_text(sqlite3_stmt* st, int i, const std::string& s) {
  return s.empty() ? sqlite3_bind_null(st, i) : bind_text(st, i, s);
}
// SQLite stores a NaN as NULL, which a NOT NULL column rejects; one such row would fail its
// batch forever. Non-finite amounts are stored as 0.
double finite_or_zero(double v) { return std::isfinite(v) ? v : 0.0; }

}  // namespace

int ledger_schema_version() { return kMigrations.back().version; }
const char* ledger_schema_sql() { return kSchemaV1; }

struct ledger::impl {
  sqlite3* db = nullptr;
  sqlite3_stmt* insert = nullptr;
  // Guarded by mu_:
  bool running = false;                // the writer thread is live
  clock_type::time_point oldest{};     // when the oldest queued row arrived
  std::uint64_t flush_target = 0;      // flush() waits for this many commits: write now

  void close() noexcept {
    sqlite3_finalize(insert);
    insert = nullptr;
    sqlite3_close(db);
    db = nullptr;
  }

  // Binds one record and steps the insert; the statement is reset either way. Returns
  // SQLite's message on failure.
  std::optional<std::string> insert_row(const usage_record& r) {
    sqlite3_stmt* st = insert;
    int i = 0;
    bind_text(st, ++i, r.request_id);
    sqlite3_bind_int64(st, ++i, r.start_ms);
    bind_text(st, ++i, to_string(r.route));
    bind_text(st, ++i, r.method);
    bind_nullable_text(st, ++i, r.requested_model);
    bind_nullable_text(st, ++i, r.served_model);
    bind_nullable_text(st, ++i, r.price_model);
    bind_nullable_text(st, ++i, r.upstream);
    bind_nullable_text(st, ++i, r.client_key_id);
    bind_nullable_text(st, ++i, r.team);
    bind_nullable_text(st, ++i, r.user);
    sqlite3_bind_int(st, ++i, r.status);
    sqlite3_bind_int(st, ++i, r.stream ? 1 : 0);
    sqlite3_bind_int(st, ++i, r.aborted ? 1 : 0);
    sqlite3_bind_int64(st, ++i, r.tokens.prompt);
    sqlite3_bind_int64(st, ++i, r.tokens.completion);
    sqlite3_bind_int64(st, ++i, r.tokens.cached);
    sqlite3_bind_int64(st, ++i, r.tokens.cache_write);
    sqlite3_bind_int64(st, ++i, r.tokens.cache_write_1h);
    sqlite3_bind_int64(st, ++i, r.tokens.reasoning);
    sqlite3_bind_int64(st, ++i, r.tokens.total());
    bind_text(st, ++i, to_string(r.source));
    sqlite3_bind_int(st, ++i, r.priced ? 1 : 0);
    sqlite3_bind_double(st, ++i, finite_or_zero(r.cost_usd));
    sqlite3_bind_double(st, ++i, finite_or_zero(r.latency_ms));
    if (r.first_byte_ms >= 0 && std::isfinite(r.first_byte_ms))
      sqlite3_bind_double(st, ++i, r.first_byte_ms);
    else
      sqlite3_bind_null(st, ++i);
    bind_nullable_text(st, ++i, r.error_kind);
    bind_nullable_text(st, ++i, r.upstream_request_id);
    sqlite3_bind_int(st, ++i, r.attempts);
    std::optional<std::string> err;
    if (sqlite3_step(st) != SQLITE_DONE) err = sqlite3_errmsg(db);
    sqlite3_reset(st);
    return err;
  }

  // One transaction for the whole batch: all rows or none. Every column is bound so that no
  // row can violate a constraint, so a failure is the database's (locked, full, read-only, I/O)
  // and retrying the same rows later is right.
  std::optional<std::string> write(const std::vector<usage_record>& batch) {
    if (auto err = exec(db, "BEGIN IMMEDIATE")) return err;
    for (const auto& r : batch) {
      if (auto err = insert_row(r)) {
        rollback(db);
        return err;
      }
    }
    if (auto err = exec(db, "COMMIT")) {
      rollback(db);
      return err;
    }
    return std::nullopt;
  }

  // Cheap writability check: takes and drops the write lock without touching a page.
  bool probe() noexcept {
    if (sqlite3_db_readonly(db, "main") == 1) return false;
    if (exec(db, "BEGIN IMMEDIATE")) return false;
    return !exec(db, "ROLLBACK");
  }
};

namespace {

// Applies the pending migrations in one transaction, so a crash leaves the old version whole.
// Throws the bare reason; start() prefixes the path.
void migrate(sqlite3* db) {
  if (auto err = exec(db, "BEGIN IMMEDIATE")) throw std::runtime_error(*err);
  try {
    if (auto err = exec(db, "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)"))
      throw std::runtime_error(*err);
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version", -1, &st,
                           nullptr) != SQLITE_OK)
      throw std::runtime_error(sqlite3_errmsg(db));
    const int rc = sqlite3_step(st);
    const int current = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    if (current < 0) throw std::runtime_error(sqlite3_errmsg(db));
    if (current > ledger_schema_version())
      throw std::runtime_error("database schema version " + std::to_string(current) +
                               " is newer than this build supports (" +
                               std::to_string(ledger_schema_version()) +
                               "); run a newer tollgate or use another ledger file");
    for (const auto& m : kMigrations) {
      if (m.version <= current) continue;
      if (auto err = exec(db, m.sql))
        throw std::runtime_error("migration " + std::to_string(m.version) + ": " + *err);
      const std::string record =
          "INSERT INTO schema_version(version) VALUES (" + std::to_string(m.version) + ")";
      if (auto err = exec(db, record.c_str())) throw std::runtime_error(*err);
    }
    if (auto err = exec(db, "COMMIT")) throw std::runtime_error(*err);
  } catch (...) {
    rollback(db);
    throw;
  }
}

}  // namespace

ledger::ledger(ledger_options opts) : opts_(std::move(opts)), impl_(new impl{}) {
  // A zero batch would make the writer spin on empty transactions.
  opts_.batch_rows = std::max<std::size_t>(opts_.batch_rows, 1);
}

ledger::~ledger() {
  stop();
  delete impl_;
}

void ledger::start() {
  if (thread_.joinable()) return;
  const auto fail = [&](const std::string& why) {
    return std::runtime_error("ledger: cannot open " + opts_.path + ": " + why);
  };
  const std::filesystem::path path(opts_.path);
  if (path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec) throw fail(ec.message());
  }
  sqlite3* db = nullptr;
  // NOMUTEX: after start() only the writer thread touches the connection.
  const int rc = sqlite3_open_v2(opts_.path.c_str(), &db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    std::string why = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    throw fail(why);
  }
  impl_->db = db;
  try {
    sqlite3_busy_timeout(db, static_cast<int>(busy_timeout_.count()));
    // journal_mode answers with the mode in effect; a file system without shared memory
    // support keeps the old one, which would silently make readers block the writer.
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, nullptr) != SQLITE_OK)
      throw fail(sqlite3_errmsg(db));
    std::string mode;
    if (sqlite3_step(st) == SQLITE_ROW)
      if (const auto* text = sqlite3_column_text(st, 0)) mode = reinterpret_cast<const char*>(text);
    sqlite3_finalize(st);
    if (mode.empty()) throw fail(sqlite3_errmsg(db));
    if (mode != "wal") throw fail("WAL mode unavailable (journal_mode is " + mode + ")");
    // NORMAL in WAL mode: a power cut may lose the last commits but never corrupts the file.
    if (auto err = exec(db, "PRAGMA synchronous=NORMAL")) throw fail(*err);
    try {
      migrate(db);
    } catch (const std::runtime_error& e) {
      throw fail(e.what());
    }
    if (sqlite3_prepare_v3(db, kInsertSql, -1, SQLITE_PREPARE_PERSISTENT, &impl_->insert,
                           nullptr) != SQLITE_OK)
      throw fail(sqlite3_errmsg(db));
  } catch (...) {
    impl_->close();
    throw;
  }
  {
    std::lock_guard lk(mu_);
    stopping_ = false;
    impl_->running = true;
    if (!queue_.empty()) impl_->oldest = clock_type::now();
  }
  writable_.store(true, std::memory_order_relaxed);
  thread_ = std::thread([this] { run(); });
}

void ledger::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  impl_->close();
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
  auto cur = reserved_.load(std::memory_order_relaxed);
  do {
    if (cur >= opts_.queue_capacity) return false;
  } while (!reserved_.compare_exchange_weak(cur, cur + 1, std::memory_order_relaxed));
  return true;
}

void ledger::release() noexcept { release_slots(reserved_, 1); }

void ledger::submit(usage_record rec) {
  std::unique_lock lk(mu_);
  if (queue_.empty()) impl_->oldest = clock_type::now();
  queue_.push_back(std::move(rec));
  ++submitted_;
  // The first row starts the flush_interval clock; a full batch is due at once. Rows in
  // between need no wake-up.
  const bool wake = queue_.size() == 1 || queue_.size() == opts_.batch_rows;
  lk.unlock();
  if (wake) cv_.notify_one();
}

void ledger::flush() {
  std::unique_lock lk(mu_);
  if (!impl_->running) return;
  const auto target = submitted_;
  impl_->flush_target = std::max(impl_->flush_target, target);
  cv_.notify_one();
  flushed_cv_.wait(lk, [&] { return committed_ >= target || !impl_->running; });
}

ledger_stats ledger::stats() const {
  std::lock_guard lk(mu_);
  return {committed_, write_errors_, static_cast<std::size_t>(submitted_ - committed_)};
}

void ledger::run() {
  lower_thread_priority(5);
  std::vector<usage_record> batch;
  batch.reserve(opts_.batch_rows);
  auto backoff = std::chrono::milliseconds(kFirstBackoff);
  clock_type::time_point retry_at{};  // after a failed write, no attempt before this
  auto idle_since = clock_type::now();  // last commit or probe
  std::optional<clock_type::time_point> give_up_at;
  std::string last_error;

  std::unique_lock lk(mu_);
  for (;;) {
    const auto now = clock_type::now();
    if (stopping_ && !give_up_at) {
      give_up_at = now + kStopRetryBudget;
      retry_at = std::min(retry_at, *give_up_at);
    }
    if (queue_.empty()) {
      if (stopping_) break;
      const auto probe_at = idle_since + kProbeInterval;
      if (now < probe_at) {
        cv_.wait_until(lk, probe_at);
        continue;
      }
      lk.unlock();
      writable_.store(impl_->probe(), std::memory_order_relaxed);
      lk.lock();
      idle_since = clock_type::now();
      continue;
    }
    if (now < retry_at) {
      cv_.wait_until(lk, retry_at);
      continue;
    }
    const auto due_at = impl_->oldest + opts_.flush_interval;
    const bool due = stopping_ || queue_.size() >= opts_.batch_rows ||
                     impl_->flush_target > committed_ || now >= due_at;
    if (!due) {
      cv_.wait_until(lk, due_at);
      continue;
    }

    // The rows leave the queue so submit() never waits on SQLite. `oldest` stays as is: any row
    // left behind arrived later, so it is written no later than its own interval.
    const std::size_t n = std::min(opts_.batch_rows, queue_.size());
    const auto split = queue_.begin() + static_cast<std::ptrdiff_t>(n);
    batch.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(split));
    queue_.erase(queue_.begin(), split);
    lk.unlock();

    // Only std::bad_alloc can escape write(); treat it as a failed transaction, not a crash.
    std::optional<std::string> error;
    try {
      error = impl_->write(batch);
    } catch (const std::exception& e) {
      rollback(impl_->db);
      error = e.what();
    }
    const bool ok = !error;
    if (ok && on_committed) {
      // Before committed_ moves, so a flush() that returns has seen its rows reported.
      try {
        on_committed(batch);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "ledger: on_committed threw: %s\n", e.what());
      } catch (...) {
        std::fprintf(stderr, "ledger: on_committed threw\n");
      }
    }
    if (!ok) last_error = std::move(*error);

    lk.lock();
    if (ok) {
      committed_ += n;
      release_slots(reserved_, n);
      writable_.store(true, std::memory_order_relaxed);
      backoff = kFirstBackoff;
      retry_at = {};
      idle_since = clock_type::now();
      batch.clear();
      flushed_cv_.notify_all();
      continue;
    }
    ++write_errors_;
    writable_.store(false, std::memory_order_relaxed);
    // Back to the front, in order: rows are never dropped while the process keeps running.
    queue_.insert(queue_.begin(), std::make_move_iterator(batch.begin()),
                  std::make_move_iterator(batch.end()));
    batch.clear();
    const auto failed_at = clock_type::now();
    if (give_up_at && failed_at >= *give_up_at) {
      std::fprintf(stderr,
                   "ledger: shutting down with %zu rows not written to %s after %lld s of "
                   "failed writes: %s\n",
                   queue_.size(), opts_.path.c_str(),
                   static_cast<long long>(
                       std::chrono::duration_cast<std::chrono::seconds>(kStopRetryBudget).count()),
                   last_error.c_str());
      release_slots(reserved_, queue_.size());
      queue_.clear();
      break;
    }
    retry_at = failed_at + backoff;
    if (give_up_at) retry_at = std::min(retry_at, *give_up_at);
    backoff = std::min<std::chrono::milliseconds>(backoff * 2, kMaxBackoff);
  }
  impl_->running = false;
  flushed_cv_.notify_all();
}

}  // namespace tollgate
