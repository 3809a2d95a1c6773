// ledger_bench: the ledger writer's CPU per row, with the optional indexes given (ledger.indexes),
// through the real writer (batches of 500 rows, WAL, synchronous NORMAL) into a new SQLite file.
// Rows look like the relay's: time-ordered generated ids, one of 37 keys and 9 teams, random
// upstream ids. The writer's CPU is the process's minus the submitting thread's.
// Not a test; run by hand: build-<dir>/ledger_bench [rows] [index,index,...] [file]
//   e.g. ledger_bench 1000000 team,model /tmp/lb.db
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/request_id.hpp"
#include "core/usage_record.hpp"
#include "ledger/ledger.hpp"

namespace {

using namespace tollgate;

double process_cpu_s() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

std::vector<usage_record> make_rows(std::size_t n) {
  std::mt19937_64 rng(42);
  std::vector<usage_record> rows(n);
  const std::int64_t t0 = 1'764'547'200'000;  // 2025-12-01
  const char* models[] = {"gpt-4.1", "gpt-4.1-mini", "claude-sonnet-4.5", "deepseek-v3.2"};
  char hex[25];
  for (std::size_t i = 0; i < n; ++i) {
    auto& r = rows[i];
    r.start_ms = t0 + static_cast<std::int64_t>(i) * 20;  // 50 calls a second
    r.request_id = make_request_id(r.start_ms, rng());
    r.route = i % 50 == 0 ? route_kind::responses : route_kind::chat_completions;
    r.method = "POST";
    r.requested_model = models[i % 4];
    r.served_model = r.requested_model + "-2025";
    r.price_model = r.requested_model;
    r.upstream = "default";
    r.client_key_id = "key-" + std::to_string(i % 37);
    r.team = "team-" + std::to_string(i % 9);
    r.status = 200;
    r.stream = i % 3 == 0;
    r.tokens.prompt = 1000 + static_cast<std::int64_t>(i % 500);
    r.tokens.completion = 200;
    r.source = usage_source::upstream;
    r.priced = true;
    r.cost_usd = 0.0036;
    r.latency_ms = 120.5;
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(rng()));
    r.upstream_request_id = std::string("chatcmpl-") + hex;
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1'000'000;
  std::vector<std::string> indexes;
  if (argc > 2) {
    const std::string list = argv[2];
    for (std::size_t at = 0; at <= list.size();) {
      const std::size_t comma = std::min(list.find(',', at), list.size());
      if (comma > at) indexes.push_back(list.substr(at, comma - at));
      at = comma + 1;
    }
  }
  const std::string path = argc > 3 ? argv[3] : "/tmp/tollgate-ledger-bench.db";
  for (const char* suffix : {"", "-wal", "-shm", ".journal"}) std::filesystem::remove(path + suffix);

  auto rows = make_rows(n);
  ledger_options o;
  o.path = path;
  o.indexes = indexes;
  ledger l(o);
  l.start();
  const double cpu0 = process_cpu_s(), self0 = thread_cpu_s();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& r : rows) {
    while (!l.reserve()) std::this_thread::sleep_for(std::chrono::microseconds(200));  // queue full
    l.submit(std::move(r));
  }
  l.flush();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double writer = (process_cpu_s() - cpu0) - (thread_cpu_s() - self0);
  l.stop();
  std::string names;
  for (const auto& i : indexes) (names += names.empty() ? "" : ",") += i;
  std::printf("| %s | %zu | %.2f | %.0f | %.1f |\n", names.empty() ? "(none)" : names.c_str(), n, writer / static_cast<double>(n) * 1e6,
              static_cast<double>(n) / wall, static_cast<double>(std::filesystem::file_size(path)) / (1 << 20));
  std::printf("(columns: indexes | rows | writer CPU µs/row | rows/s | file MiB)\n");
  for (const char* suffix : {"", "-wal", "-shm", ".journal"}) std::filesystem::remove(path + suffix);
  return 0;
}
