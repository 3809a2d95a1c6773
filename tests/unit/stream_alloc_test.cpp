// Issue 5: "no locks or allocations per chunk on the streaming path". Once warmed up, relaying
// an SSE event (tollgate's per-chunk work: split the events, meter each one, drop the `"usage":
// null` member tollgate caused) allocates nothing. Counted with a replaced global operator new,
// which is why this file is its own executable; under ASan/TSan the sanitizer owns operator new
// and the count is skipped.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <string_view>

#include "core/sse_parser.hpp"
#include "core/usage.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TOLLGATE_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define TOLLGATE_SANITIZED 1
#endif
#endif
#ifndef TOLLGATE_SANITIZED
#define TOLLGATE_COUNT_ALLOCATIONS 1
namespace {
std::atomic<long> g_allocations{0};
void* counted(std::size_t n, std::size_t align) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  void* p = align <= alignof(std::max_align_t) ? std::malloc(n) : std::aligned_alloc(align, (n + align - 1) / align * align);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace
void* operator new(std::size_t n) { return counted(n, alignof(std::max_align_t)); }
void* operator new(std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
#endif

using namespace tollgate;

namespace {

// The relay loop's work for one piece read from the upstream (client_session::exchange): with
// `edit`, the events are metered and rewritten into `out`; without, metered on the side.
void relay_piece(std::string_view piece, sse_parser& events, stream_meter& meter, std::string& out, bool edit) {
  out.clear();
  events.append(piece);
  sse_event ev;
  while (events.next(ev)) {
    const bool forward = meter.on_event(ev);
    if (edit && forward) meter.append_stripped(ev, out);
  }
}

// Allocations while relaying `chunks` pieces made by make(i), after `warm` pieces of warm-up.
template <class Make>
long allocations_per_stream(route_kind route, bool edit, Make make, int warm, int chunks) {
  sse_parser events;
  stream_meter meter(route, edit);
  std::string out, piece;
  for (int i = 0; i < warm; ++i) {
    make(i, piece);
    relay_piece(piece, events, meter, out, edit);
  }
#ifdef TOLLGATE_COUNT_ALLOCATIONS
  const long before = g_allocations.load();
#endif
  for (int i = warm; i < warm + chunks; ++i) {
    make(i, piece);
    relay_piece(piece, events, meter, out, edit);
  }
#ifdef TOLLGATE_COUNT_ALLOCATIONS
  const long n = g_allocations.load() - before;
#else
  const long n = 0;
#endif
  CHECK(meter.estimated_completion_tokens() > 0);  // the events were really read
  return n;
}

}  // namespace

TEST_CASE("streaming path: the allocation counter sees an allocation", "[usage][stream][alloc]") {
#ifdef TOLLGATE_COUNT_ALLOCATIONS
  const long before = g_allocations.load();
  std::string s(100, 'x');  // past the small-string buffer
  CHECK(g_allocations.load() - before == 1);
  CHECK(s.size() == 100);
#endif
}

TEST_CASE("streaming path: relaying a chat chunk allocates nothing once warmed up", "[usage][stream][alloc]") {
#ifndef TOLLGATE_COUNT_ALLOCATIONS
  WARN("sanitizer build: operator new belongs to the sanitizer, allocations not counted");
#endif
  // Pieces reserved up front, so the test's own string building does not count.
  auto chunk = [](int i, std::string& piece) {
    piece.clear();
    piece.reserve(512);
    piece.append(R"(data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764460800,)"
                 R"("model":"gpt-4.1-2025-04-14","choices":[{"index":0,"delta":{"content":")");
    piece.append(i % 2 ? "token " : "word, ");
    piece.append(R"("},"finish_reason":null}],"usage":null})"
                 "\n\n");
  };
  SECTION("tollgate asked for include_usage: events edited into the client's bytes") {
    CHECK(allocations_per_stream(route_kind::chat_completions, true, chunk, 64, 2000) == 0);
  }
  SECTION("the client asked for it: events metered on the side") {
    CHECK(allocations_per_stream(route_kind::chat_completions, false, chunk, 64, 2000) == 0);
  }
  SECTION("an event split across two reads") {
    auto halves = [&chunk](int i, std::string& piece) {
      thread_local std::string whole;
      if (i % 2 == 0) {
        chunk(i, whole);
        piece.assign(whole, 0, 40);
      } else {
        piece.assign(whole, 40, std::string::npos);
      }
    };
    CHECK(allocations_per_stream(route_kind::chat_completions, true, halves, 64, 2000) == 0);
  }
}

TEST_CASE("streaming path: relaying an Anthropic text delta allocates nothing once warmed up",
          "[usage][stream][alloc]") {
  auto delta = [](int i, std::string& piece) {
    piece.clear();
    piece.reserve(256);
    if (i == 0) {
      piece.append("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\","
                   "\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n");
      return;
    }
    piece.append("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
                 "\"delta\":{\"type\":\"text_delta\",\"text\":\"");
    piece.append(i % 2 ? "token " : "word, ");
    piece.append("\"}}\n\n");
  };
  CHECK(allocations_per_stream(route_kind::messages, false, delta, 64, 2000) == 0);
}
