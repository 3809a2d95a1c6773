// The ledger: one row per call, written by one writer thread in batched SQLite transactions
// (WAL mode), fed by a bounded queue. I/O threads only ever call reserve()/submit()/release(),
// which never block on SQLite or the disk. While the database fails, the writer spills rows to
// an append-only journal (journal.hpp) and replays it, exactly once, when the database recovers.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/usage_record.hpp"

namespace tollgate {

struct ledger_options {
  std::string path = "./data/tollgate.db";  // parent directory is created if missing
  std::size_t batch_rows = 500;             // commit after this many rows...
  std::chrono::milliseconds flush_interval{100};  // ...or this long after the first queued row
  std::size_t queue_capacity = 100'000;     // reserved + queued rows never exceed this

  // When the database fails (full, locked beyond busy_timeout, read-only, I/O error, file
  // deleted or replaced), rows go to the journal and are replayed once it recovers; rows the
  // journal cannot take wait in memory; beyond memory_rows the oldest are dropped (counted).
  // false (ledger.on_failure: open): calls keep being proxied; true (closed): reserve() refuses
  // (503) while the database is failing.
  bool fail_closed = false;
  std::size_t memory_rows = 100'000;        // rows held in memory when the journal refuses them
  std::string journal_path;                 // "" : path + ".journal"
  std::uint64_t journal_max_bytes = 1ull << 30;  // 0: no journal
  // SQLite synchronous=FULL and an fdatasync per journal append: survives a power cut too.
  // Default NORMAL: in WAL mode a process crash (SIGKILL) loses no commit, a power cut may.
  bool synchronous_full = false;
  // Retention: rows whose call started more than `retention` ago are deleted by the writer, a
  // few thousand at a time when no batch is due (0: every row is kept). prunable_through_id,
  // when set, bounds them: rows above that id stay (the fleet ledger's rows not yet in
  // PostgreSQL); it is called on the writer thread.
  std::chrono::milliseconds retention{0};
  std::function<std::int64_t()> prunable_through_id;
  // How soon the writer looks again after a look that found less than a full batch to delete
  // (a full one: after a second).
  std::chrono::milliseconds prune_interval{60'000};
  // Optional indexes, by /admin/calls filter (core/ledger_indexes.hpp): made when the database is
  // opened (a ledger of millions of rows takes seconds, logged), and those not listed dropped.
  std::vector<std::string> indexes;
};

struct ledger_stats {
  std::uint64_t rows_written = 0;     // rows committed (journal replays included)
  std::uint64_t write_errors = 0;     // failed transactions (rows go to the journal)
  std::size_t queue_depth = 0;        // rows submitted, not yet committed nor dropped (in memory
                                      // or in the journal; after stop(), the journal's are the
                                      // next start's)
  std::uint64_t dropped_rows = 0;     // rows lost: neither database, journal nor memory took them
  std::uint64_t journaled_rows = 0;   // rows in the journal waiting for replay (gauge)
  std::uint64_t journal_bytes = 0;    // size of the journal file (gauge)
  std::size_t memory_rows = 0;        // rows the journal refused, held in memory (gauge)
  std::uint64_t replayed_rows = 0;    // rows committed from the journal (counter)
  std::uint64_t journal_errors = 0;   // failed journal writes or reads (counter)
  bool healthy = false;               // the database took the last write or probe
  int writer_mode = 0;                // writer_mode: 0 idle, 1 paced, 2 full
  std::uint64_t pruned_rows = 0;      // rows deleted past the retention (counter)
};

// How hard the writer thread competes with the I/O threads for a CPU. A batch of inserts is
// milliseconds of CPU; run in one go on a CPU an I/O thread shares, it stalls every call in
// flight there for that long (the p99 of bench/relay_bench.sh). So:
//   idle  : SCHED_IDLE: the writer runs on CPU time no one else wants, and a waking I/O thread
//           preempts it at once. Only while few rows wait (and only where the thread may leave
//           SCHED_IDLE again: CAP_SYS_NICE or RLIMIT_NICE).
//   paced : nice +5, and after every 150 µs slice of rows it sleeps three times as long as
//           the slice took: at most a quarter of a CPU, in slices short enough that a call in
//           flight waits at most one.
//   full  : nice +5, no pauses: a backlog, a flush or shutdown.
enum class writer_mode { idle, paced, full };

struct writer_load {
  std::size_t waiting = 0;  // rows queued, in the journal or held in memory
  std::chrono::steady_clock::duration oldest_age{};  // of the oldest queued row (0: none)
  bool flushing = false;    // flush() or stop() waits
  bool idle_allowed = true;  // SCHED_IDLE can be left again on this system
};

// The writer's next mode (pure). Thresholds follow the configuration: idle gives way to paced
// at 4 batches waiting (at most 1/8 of the queue) or when the oldest row has waited 4 flush
// intervals; paced gives way to full at 1/4 of the queue; each way back needs half (idle: a
// quarter) of the threshold that was crossed, so modes do not flap.
writer_mode next_writer_mode(writer_mode current, const writer_load& load, const ledger_options& o);

// The writer's queue: rows in chunks of up to `chunk` rows each, so the writer takes the oldest
// batch with one swap while it holds the lock, instead of moving hundreds of rows (each ~30
// fields and eleven strings) while an I/O thread's submit() waits on that lock. The writer's
// spent batch vector comes back as the next chunk: no allocation per batch in steady state.
class row_chunks {
 public:
  void set_chunk(std::size_t rows) noexcept { chunk_ = rows == 0 ? 1 : rows; }
  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  void push_back(usage_record&& r) {
    if (chunks_.empty() || chunks_.back().size() >= chunk_) {
      chunks_.emplace_back();
      if (spare_.capacity() > 0) {
        chunks_.back().swap(spare_);
      } else {
        // A large batch_rows grows its chunk as rows come instead of reserving it whole.
        chunks_.back().reserve(std::min<std::size_t>(chunk_, kMaxReserve));
      }
    }
    chunks_.back().push_back(std::move(r));
    ++size_;
  }
  // The oldest min(chunk, size()) rows into `out`, in order (out's own rows are discarded: the
  // writer hands in its settled, empty batch; its storage becomes the spare chunk).
  void take_front(std::vector<usage_record>& out) {
    out.clear();
    out.swap(chunks_.front());
    if (spare_.capacity() == 0) spare_.swap(chunks_.front());
    chunks_.pop_front();
    size_ -= out.size();
  }
  void clear() noexcept {
    chunks_.clear();
    size_ = 0;
  }

 private:
  static constexpr std::size_t kMaxReserve = 4096;
  std::deque<std::vector<usage_record>> chunks_;  // each full (chunk_ rows) but the last
  std::vector<usage_record> spare_;               // empty, with capacity
  std::size_t chunk_ = 1;
  std::size_t size_ = 0;
};

class ledger {
 public:
  explicit ledger(ledger_options opts);
  ~ledger();  // stop()
  ledger(const ledger&) = delete;
  ledger& operator=(const ledger&) = delete;

  // Opens/creates the database, applies migrations (schema_version table), sets WAL, prepares
  // the insert, replays a journal left by an earlier run (those rows are in the database when
  // start() returns, so start-up readers see them; on_committed is not called for them), starts
  // the writer thread. Throws std::runtime_error with a clear message when the database cannot
  // be opened; later failures are survived (journal).
  void start();
  // Writes everything queued (to the journal when the database fails; the journal waits for the
  // next start), joins the writer thread, closes the database. Idempotent.
  void stop();

  // Admission: reserve one row slot before a call is forwarded. false when reserved + queued
  // rows reached queue_capacity, or with fail_closed while the database is failing (the caller
  // answers 503 instead of accepting the call), so an accepted call always has room in the
  // queue. Lock-free.
  bool reserve() noexcept;
  // Hands the row of a reserved call to the writer (consumes the reservation). Never blocks
  // beyond a short mutex hold; never fails. Taken by rvalue: a row is ~30 fields and eleven
  // strings, and a by-value parameter would move it once more on every call.
  void submit(usage_record&& rec);
  void submit(const usage_record& rec) { submit(usage_record(rec)); }
  // Gives a reservation back without a row (call never accepted).
  void release() noexcept;

  // Called on the writer thread after each committed batch, journal replays included (for
  // metrics); set before start().
  std::function<void(const std::vector<usage_record>&)> on_committed;

  // Blocks until everything submitted so far has been handled: committed, or journaled (or held
  // in memory, or dropped) when the database fails. A flush tries the database at once, ignoring
  // the retry backoff, and replays the journal when it works. Tests, shutdown; not I/O threads.
  void flush();

  // True when the database accepted the last write (or the last health probe): /readyz.
  bool writable() const noexcept { return writable_.load(std::memory_order_relaxed); }
  ledger_stats stats() const;
  const ledger_options& options() const noexcept { return opts_; }

 private:
  void run();
  // ledger_test_access: SQL run on the writer's connection before its next use and after every
  // (re)open, e.g. PRAGMA query_only or max_page_count to make the database read-only or full.
  void set_test_connection_sql(std::string sql);
  struct impl;
  ledger_options opts_;
  impl* impl_ = nullptr;  // SQLite handles, journal, writer state (kept out of this header)
  std::atomic<std::size_t> reserved_{0};
  std::atomic<bool> writable_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable flushed_cv_;
  row_chunks queue_;
  bool stopping_ = false;
  std::uint64_t submitted_ = 0;  // guarded by mu_
  // The writer's mode (writer_mode) and thread id: submit() and flush() promote an idle writer
  // from their own thread (sched_setscheduler on its tid), since a starved SCHED_IDLE thread
  // could not notice its backlog itself.
  std::atomic<int> mode_{static_cast<int>(writer_mode::full)};
  std::atomic<int> writer_tid_{0};
  void promote(writer_mode to) noexcept;
  std::thread thread_;
  // SQLite busy_timeout of the writer's connection. Tests shorten it (through
  // ledger_test_access) to see a locked database fail in milliseconds instead of 5 s.
  std::chrono::milliseconds busy_timeout_{5000};
  friend struct ledger_test_access;
};

// Schema helpers shared with tools (forecaster warm start, tests).
int ledger_schema_version();          // current version this build writes
const char* ledger_schema_sql();      // CREATE TABLE statements of the current schema

}  // namespace tollgate
