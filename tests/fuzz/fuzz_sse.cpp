// libFuzzer target: SSE framing (core/sse_parser). The input is an upstream byte stream; the
// first four bytes seed how it is cut into reads. Invariants: the events a client acts on (those
// with a field) do not depend on how the stream was cut (a cut right after a blank line's CR ends
// that event at once, and an LF that follows is an empty event of its own); the raw bytes of
// every run's events plus its pending tail are the stream, byte for byte (the relay forwards
// exactly those); field values never carry line terminators.
#include <string>
#include <vector>

#include "core/sse_parser.hpp"
#include "fuzz_common.hpp"

namespace {

struct event_copy {
  std::string raw, event, data;
  bool has_data = false;
  bool at_eof = false;  // returned by finish(), not next()
  bool operator==(const event_copy&) const = default;
};

struct run_result {
  std::vector<event_copy> events;
  std::string pending;  // pending() once the stream has ended, before finish()
};

event_copy copy(const tollgate::sse_event& ev, bool at_eof) {
  return {std::string(ev.raw), std::string(ev.event), std::string(ev.data), ev.has_data, at_eof};
}

// What the relay does: append each read, drain next(); at end of stream, pending() then finish().
run_result run(tollgate::sse_parser& p, std::string_view stream, fuzz::splitter* cuts) {
  run_result r;
  tollgate::sse_event ev;
  std::size_t at = 0;
  do {
    const std::size_t n = cuts ? std::min(cuts->next(), stream.size() - at) : stream.size() - at;
    p.append(stream.substr(at, n));
    at += n;
    while (p.next(ev)) r.events.push_back(copy(ev, false));
  } while (at < stream.size());
  r.pending = std::string(p.pending());
  while (p.finish(ev)) r.events.push_back(copy(ev, true));
  return r;
}

void check_events(const run_result& r, std::string_view stream) {
  std::string all, from_finish;
  for (const auto& e : r.events) {
    all += e.raw;
    if (e.at_eof) from_finish += e.raw;
    FUZZ_CHECK(!e.raw.empty());
    FUZZ_CHECK(e.event.find_first_of("\r\n") == std::string::npos);
    FUZZ_CHECK(e.data.find('\r') == std::string::npos);
    FUZZ_CHECK(e.has_data || e.data.empty());
    // Values are cut out of the event's own bytes.
    FUZZ_CHECK(e.raw.find(e.event) != std::string::npos);
    if (e.data.find('\n') == std::string::npos) FUZZ_CHECK(e.raw.find(e.data) != std::string::npos);
  }
  // Byte-exact forwarding: events from next() then the tail, or the tail split by finish().
  FUZZ_CHECK(all == stream);
  FUZZ_CHECK(from_finish == r.pending);
  // finish() only ever adds events after those of next().
  bool seen_eof = false;
  for (const auto& e : r.events) {
    if (seen_eof) FUZZ_CHECK(e.at_eof);
    seen_eof = seen_eof || e.at_eof;
  }
}

// The events with a field, without their raw bytes (see the invariants above).
std::vector<event_copy> dispatched(const run_result& r) {
  std::vector<event_copy> out;
  for (auto e : r.events) {
    if (!e.has_data && e.event.empty()) continue;
    e.raw.clear();
    e.at_eof = false;
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::input in(data, size);
  std::uint32_t seed = 0;
  for (int i = 0; i < 4; ++i) seed = seed << 8 | in.byte();
  const std::string_view stream = in.rest();

  tollgate::sse_parser whole;
  const run_result expected = run(whole, stream, nullptr);
  check_events(expected, stream);

  tollgate::sse_parser split;
  fuzz::splitter cuts(seed, 1 + (seed >> 24) % 64);
  const run_result cut = run(split, stream, &cuts);
  check_events(cut, stream);
  FUZZ_CHECK(dispatched(cut) == dispatched(expected));

  // One byte per read: every CR/LF, BOM and UTF-8 boundary split (short streams: it is slow).
  if (stream.size() <= 2048) {
    tollgate::sse_parser bytes;
    fuzz::splitter ones(1, 1);
    const run_result one = run(bytes, stream, &ones);
    check_events(one, stream);
    FUZZ_CHECK(dispatched(one) == dispatched(expected));
  }

  // reset() gives a parser as good as new (the relay reuses one per connection).
  whole.reset();
  FUZZ_CHECK(run(whole, stream, nullptr).events == expected.events);
  return 0;
}
