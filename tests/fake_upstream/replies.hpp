// What the fake upstream answers, decided without sockets: the x-fake-* knobs and the reply
// (a whole body, or a list of SSE events) for each endpoint. The socket layer only carries it out.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fake_upstream.hpp"

namespace fake::detail {

using header_list = std::vector<std::pair<std::string, std::string>>;

// in_choice: Moonshot's (Kimi) stream, the usage in the last chunk's choice (x-fake-usage: in-choice).
enum class usage_mode { normal, none, last_chunk, every_chunk, in_choice };
enum class content_coding { identity, gzip, deflate };
enum class fault {
  none,
  reset_before_headers,
  reset_mid_body,
  reset_mid_stream,
  stall_before_headers,
  stall_mid_stream,
  garbage,
  not_json,
  truncated_json,
  wrong_content_length,
  bad_chunked,
  cut_stream,
  error_mid_stream,
  close_after_response,
};

// The behaviour a request asks for through its x-fake-* headers.
struct knobs {
  unsigned status = 0;  // x-fake-status; 0: answer normally
  std::chrono::milliseconds delay{0};
  std::optional<long long> chunks;  // x-fake-chunks: that many "tok " content pieces
  std::chrono::milliseconds chunk_interval{0};
  long long cached_tokens = 0;
  long long reasoning_tokens = 0;
  // x-fake-reasoning-beside: 1 — xAI's convention: completion_tokens the answer alone, the
  // reasoning beside it, total_tokens counting both.
  bool reasoning_beside = false;
  long long cache_creation_tokens = 0;     // Anthropic 5-minute cache writes (x-fake-cache-creation-tokens)
  long long cache_creation_1h_tokens = 0;  // Anthropic 1-hour cache writes (x-fake-cache-creation-1h-tokens)
  std::string usage_iterations;  // a JSON array put in an Anthropic message's usage.iterations (x-fake-usage-iterations)
  std::string usage_extra;       // a JSON object whose members join an OpenAI-shaped usage (x-fake-usage-extra)
  // x-fake-provider: a chat reply's and every chat chunk's top-level `provider`, as OpenRouter
  // names the provider it routed the call to.
  std::string provider;
  usage_mode usage = usage_mode::normal;
  content_coding coding = content_coding::identity;  // only when Accept-Encoding allows it
  fault fault_kind = fault::none;
  std::optional<std::size_t> body_bytes;
  bool echo_headers = false;
  bool early_hints = false;  // x-fake-early-hints: 1 — an interim 103 head before the answer
  // x-fake-response-headers: {"Name": "value", ...}, added to the reply (a name the fake sets
  // itself, Server say, is replaced). Names or values with CR, LF or NUL are ignored.
  header_list response_headers;
};

knobs parse_knobs(const recorded_request& req);

struct sse_event {
  std::string text;  // one complete event, ending in "\n\n"
  std::chrono::milliseconds delay_before{0};
};

struct reply {
  unsigned status = 200;
  header_list headers;  // Content-Type and any extra (Retry-After, x-ratelimit-*)
  std::string body;     // when !stream
  bool stream = false;
  std::vector<sse_event> events;  // when stream, in order, [DONE] included
  std::string error_event;        // what error-mid-stream injects for this API
};

// request_number feeds ids such as chatcmpl-fake<n>, so replies are deterministic per request.
reply make_reply(const recorded_request& req, const knobs& k, std::uint64_t request_number);

}  // namespace fake::detail
