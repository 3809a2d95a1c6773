// Structured logging: one JSON object per line on stderr, with a process-wide level.
// Lines are built by the caller (log_line) and written with a single write(2), so lines from
// different threads never interleave. Never log keys or prompt text.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include "core/config.hpp"  // log_level

namespace tollgate {

void set_log_level(log_level l) noexcept;
log_level current_log_level() noexcept;
inline bool log_enabled(log_level l) noexcept { return static_cast<int>(l) >= static_cast<int>(current_log_level()); }
std::string_view to_string(log_level l) noexcept;

// Builds {"ts":"...","level":"...","msg":"...", ...fields} and writes it.
class log_line {
 public:
  log_line(log_level l, std::string_view msg);
  log_line& str(std::string_view key, std::string_view value);
  log_line& num(std::string_view key, double value);
  log_line& integer(std::string_view key, std::int64_t value);
  log_line& boolean(std::string_view key, bool value);
  void write();  // also called by the destructor if not yet written
  ~log_line();
  log_line(const log_line&) = delete;
  log_line& operator=(const log_line&) = delete;

 private:
  void key(std::string_view k);
  std::string buf_;
  bool done_ = false;
};

// Shorthands for start-up / rare messages.
void log_msg(log_level l, std::string_view msg);

// Lowers the calling thread's scheduling priority (nice +n, Linux per-thread). Background threads
// (ledger writer, forecaster) use it so that, on a busy or CPU-pinned host, an I/O thread with a
// call to relay always runs first: their work is batched and can wait a few milliseconds.
void lower_thread_priority(int n) noexcept;

// Names the calling thread (Linux keeps 15 bytes), so `top -H`, `ps -L`, perf and gdb tell the
// I/O threads ("tg-io-0"...) from the ledger writer ("tg-ledger") and the other helpers.
void name_this_thread(const char* name) noexcept;

// Shortest round-trip decimal form of a double (money is printed unrounded).
void append_double(std::string& out, double v);

}  // namespace tollgate
