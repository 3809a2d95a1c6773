// libFuzzer target: the Realtime tunnel's frame reader (core/ws_frames) and meter (core/usage's
// realtime_meter). The input is one direction of a WebSocket stream; the first four bytes seed
// how it is cut into reads. Invariants: the messages kept, the failure and the counters do not
// depend on how the stream was cut; no kept message exceeds the cap; after a failure nothing more
// is read; metering any messages never crashes and never yields negative or non-finite usage.
#include <cmath>
#include <string>
#include <vector>

#include "core/usage.hpp"
#include "core/ws_frames.hpp"
#include "fuzz_common.hpp"

namespace {

constexpr std::size_t cap = 4096;  // small, so the oversized path is reached

struct run_result {
  std::vector<std::string> messages;
  bool failed = false;
  std::size_t oversized = 0, compressed = 0;
  std::uint64_t count = 0;
  bool operator==(const run_result&) const = default;
};

run_result run(std::string_view stream, fuzz::splitter* cuts) {
  tollgate::ws_message_reader reader(&tollgate::realtime_meter::wanted, cap);
  run_result r;
  std::size_t at = 0;
  do {
    const std::size_t n = cuts ? std::min(cuts->next(), stream.size() - at) : stream.size() - at;
    const bool was_failed = reader.failed();
    const std::size_t before = r.messages.size();
    reader.feed(stream.substr(at, n), r.messages);
    if (was_failed) FUZZ_CHECK(r.messages.size() == before);  // nothing after a protocol error
    at += n;
  } while (at < stream.size());
  r.failed = reader.failed();
  r.oversized = reader.oversized();
  r.compressed = reader.compressed();
  r.count = reader.messages();
  for (const auto& m : r.messages) FUZZ_CHECK(m.size() <= cap);
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::input in(data, size);
  std::uint32_t seed = 0;
  for (int i = 0; i < 4; ++i) seed = seed << 8 | in.byte();
  const std::string_view stream = in.rest();

  const run_result whole = run(stream, nullptr);
  fuzz::splitter cuts(seed, 1 + (seed >> 24) % 64);
  FUZZ_CHECK(run(stream, &cuts) == whole);
  if (stream.size() <= 2048) {
    fuzz::splitter ones(1, 1);
    FUZZ_CHECK(run(stream, &ones) == whole);
  }

  // The meter takes what the reader kept, and the raw stream as one message too (any text).
  tollgate::realtime_meter meter("gpt-realtime");
  for (const auto& m : whole.messages) meter.on_message(m);
  meter.on_message(stream);
  for (const auto& [model, u] : meter.by_model()) {
    FUZZ_CHECK(u.prompt >= 0 && u.completion >= 0 && u.cached >= 0);
    FUZZ_CHECK(std::isfinite(static_cast<double>(u.prompt)));
  }
  return 0;
}
