// The ledger: one row per call, written by one writer thread in batched SQLite transactions
// (WAL mode), fed by a bounded queue. I/O threads only ever call reserve()/submit()/release(),
// which never block on SQLite or the disk.
#pragma once
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
};

struct ledger_stats {
  std::uint64_t rows_written = 0;     // rows committed
  std::uint64_t write_errors = 0;     // failed transactions (rows are kept and retried)
  std::size_t queue_depth = 0;        // rows submitted, not yet committed
};

class ledger {
 public:
  explicit ledger(ledger_options opts);
  ~ledger();  // stop()
  ledger(const ledger&) = delete;
  ledger& operator=(const ledger&) = delete;

  // Opens/creates the database, applies migrations (schema_version table), sets WAL, prepares
  // the insert, starts the writer thread. Throws std::runtime_error with a clear message.
  void start();
  // Flushes everything queued, joins the writer thread, closes the database. Idempotent.
  void stop();

  // Admission: reserve one row slot before a call is forwarded. false when reserved + queued
  // rows reached queue_capacity (the caller answers 503 instead of accepting the call), so an
  // accepted call always has room in the queue. Lock-free.
  bool reserve() noexcept;
  // Hands the row of a reserved call to the writer (consumes the reservation). Never blocks
  // beyond a short mutex hold; never fails.
  void submit(usage_record rec);
  // Gives a reservation back without a row (call never accepted).
  void release() noexcept;

  // Called on the writer thread after each committed batch (for metrics); set before start().
  std::function<void(const std::vector<usage_record>&)> on_committed;

  // Blocks until everything submitted so far is committed (tests, shutdown). Not for I/O threads.
  void flush();

  // True when the database accepted the last write (or the last health probe): /readyz.
  bool writable() const noexcept { return writable_.load(std::memory_order_relaxed); }
  ledger_stats stats() const;
  const ledger_options& options() const noexcept { return opts_; }

 private:
  void run();
  struct impl;
  ledger_options opts_;
  impl* impl_ = nullptr;  // SQLite handles (kept out of this header)
  std::atomic<std::size_t> reserved_{0};
  std::atomic<bool> writable_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable flushed_cv_;
  std::deque<usage_record> queue_;
  bool stopping_ = false;
  std::uint64_t submitted_ = 0, committed_ = 0;  // guarded by mu_
  std::uint64_t write_errors_ = 0;               // guarded by mu_
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
