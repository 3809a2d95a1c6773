// JSON-lines logger on stderr (see log.hpp). Timestamps are UTC, millisecond precision.
#include "core/log.hpp"

#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <ctime>

#include "core/error.hpp"  // append_json_string

namespace tollgate {
namespace {
std::atomic<int> g_level{static_cast<int>(log_level::info)};
}

void set_log_level(log_level l) noexcept { g_level.store(static_cast<int>(l), std::memory_order_relaxed); }
log_level current_log_level() noexcept { return static_cast<log_level>(g_level.load(std::memory_order_relaxed)); }

std::string_view to_string(log_level l) noexcept {
  switch (l) {
    case log_level::trace: return "trace";
    case log_level::debug: return "debug";
    case log_level::info: return "info";
    case log_level::warn: return "warn";
    case log_level::error: return "error";
  }
  return "info";
}

void append_double(std::string& out, double v) {
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

log_line::log_line(log_level l, std::string_view msg) {
  if (!log_enabled(l)) {
    done_ = true;
    return;
  }
  buf_.reserve(256);
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[64];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  buf_ += "{\"ts\":\"";
  buf_ += ts;
  buf_ += "\",\"level\":\"";
  buf_ += to_string(l);
  buf_ += "\",\"msg\":";
  append_json_string(buf_, msg);
}

void log_line::key(std::string_view k) {
  buf_.push_back(',');
  append_json_string(buf_, k);
  buf_.push_back(':');
}

log_line& log_line::str(std::string_view k, std::string_view v) {
  if (!done_) {
    key(k);
    append_json_string(buf_, v);
  }
  return *this;
}
log_line& log_line::num(std::string_view k, double v) {
  if (!done_) {
    key(k);
    append_double(buf_, v);
  }
  return *this;
}
log_line& log_line::integer(std::string_view k, std::int64_t v) {
  if (!done_) {
    key(k);
    char b[24];
    auto r = std::to_chars(b, b + sizeof b, v);
    buf_.append(b, r.ptr);
  }
  return *this;
}
log_line& log_line::boolean(std::string_view k, bool v) {
  if (!done_) {
    key(k);
    buf_ += v ? "true" : "false";
  }
  return *this;
}

void log_line::write() {
  if (done_) return;
  done_ = true;
  buf_ += "}\n";
  const char* p = buf_.data();
  std::size_t left = buf_.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n <= 0) break;  // nowhere to report a failing stderr
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

log_line::~log_line() { write(); }

void lower_thread_priority(int n) noexcept {
  // On Linux, PRIO_PROCESS with a thread id applies to that thread alone.
  auto tid = static_cast<id_t>(::syscall(SYS_gettid));
  errno = 0;
  int current = ::getpriority(PRIO_PROCESS, tid);
  if (errno == 0) ::setpriority(PRIO_PROCESS, tid, current + n);
}

void name_this_thread(const char* name) noexcept { ::pthread_setname_np(::pthread_self(), name); }

void log_msg(log_level l, std::string_view msg) { log_line(l, msg).write(); }

}  // namespace tollgate
