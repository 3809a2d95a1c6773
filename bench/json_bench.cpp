// json_bench: nanoseconds per call of the relay's hot-path JSON readers (inspect_request on a
// ~1 KB chat body, extract_response on a chat completion, stream_meter on one SSE chunk, the
// null-usage edit of a chunk, a whole 4-event stream through a new meter).
// Not a test; run by hand: build-<dir>/json_bench [iterations]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/request_inspect.hpp"
#include "core/sse_parser.hpp"
#include "core/usage.hpp"

namespace {

using namespace tollgate;

// A typical chat request: a system prompt, a short multi-turn history, one tool and options.
constexpr std::string_view chat_body =
    R"({"model":"gpt-4.1-mini","stream":false,"user":"team-search/u-1842","max_completion_tokens":512,)"
    R"("temperature":0.2,"messages":[)"
    R"({"role":"system","content":"You are a concise assistant for an internal search tool. Answer from the )"
    R"(provided documents only; say so when they do not contain the answer. Cite document ids in brackets."},)"
    R"({"role":"user","content":"Which regions does the billing service run in, and where is its failover?"},)"
    R"({"role":"assistant","content":"The billing service runs in eu-west-1 and us-east-2 [doc-311]. Failover )"
    R"(for eu-west-1 is eu-central-1; us-east-2 fails over to us-west-2 [doc-312]."},)"
    R"({"role":"user","content":"And how long does a failover take, end to end, including DNS?"}],)"
    R"("tools":[{"type":"function","function":{"name":"search_docs","description":"Full-text search )"
    R"(over the internal documentation; returns the top matching passages with their ids.",)"
    R"("parameters":{"type":"object","properties":{"query":{"type":"string"},)"
    R"("top_k":{"type":"integer","minimum":1,"maximum":20}},"required":["query"]}}}],)"
    R"("tool_choice":"auto","response_format":{"type":"text"}})";

// A typical non-stream chat completion.
constexpr std::string_view completion_body =
    R"({"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,)"
    R"("model":"gpt-4.1-mini-2025-04-14","choices":[{"index":0,"message":{"role":"assistant","content":)"
    R"("A regional failover takes about four minutes end to end: health checks need 90 seconds to mark )"
    R"(the region down, the database promotion takes about a minute, and DNS records carry a 60 second )"
    R"(TTL [doc-312].","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],)"
    R"("usage":{"prompt_tokens":241,"completion_tokens":58,"total_tokens":299,)"
    R"("prompt_tokens_details":{"cached_tokens":128,"audio_tokens":0},)"
    R"("completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,)"
    R"("rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_b376dfbbd5"})";

// One streamed content chunk (what every token of a stream costs).
constexpr std::string_view chunk_data =
    R"({"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,)"
    R"("model":"gpt-4.1-mini-2025-04-14","service_tier":"default","system_fingerprint":"fp_b376dfbbd5",)"
    R"("choices":[{"index":0,"delta":{"content":" failover"},"logprobs":null,"finish_reason":null}],"usage":null})";

// A whole short stream (the bench harness's 4-event SSE): what a short streamed call costs the
// meter, its parser and their set-up.
constexpr std::string_view short_stream =
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4.1\",\"choices\":[],\"usage\":{\"prompt_tokens\":231,\"completion_tokens\":2,\"total_tokens\":233}}\n\n"
    "data: [DONE]\n\n";

// Sinks the results so the calls cannot be optimised away.
volatile std::int64_t sink = 0;

template <class F>
double ns_per_call(long iterations, F&& call) {
  for (long i = 0; i < iterations / 10 + 1; ++i) call();  // warm-up: thread_local buffers, caches
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < iterations; ++i) call();
  const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
  return took.count() / static_cast<double>(iterations);
}

}  // namespace

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::atol(argv[1]) : 200000;
  if (iterations <= 0) {
    std::fprintf(stderr, "usage: json_bench [iterations > 0]\n");
    return 2;
  }
  const request_facts check = inspect_request(chat_body);
  const response_facts checked = extract_response(route_kind::chat_completions, completion_body);
  if (check.problem != request_problem::none || !checked.has_usage) {
    std::fprintf(stderr, "json_bench: the sample bodies no longer parse\n");
    return 1;
  }

  sse_event ev;
  ev.has_data = true;
  ev.data = chunk_data;
  stream_meter meter(route_kind::chat_completions, false);

  std::printf("inspect_request   (%4zu B chat body):       %8.0f ns/call\n", chat_body.size(),
              ns_per_call(iterations, [] { sink = sink + inspect_request(chat_body).prompt_tokens_estimate; }));
  std::printf("extract_response  (%4zu B chat completion): %8.0f ns/call\n", completion_body.size(),
              ns_per_call(iterations, [] {
                sink = sink + extract_response(route_kind::chat_completions, completion_body).usage.prompt;
              }));
  std::printf("stream_meter      (%4zu B chat chunk):      %8.0f ns/call\n", chunk_data.size(),
              ns_per_call(iterations, [&] { sink = sink + meter.on_event(ev); }));
  // A chunk of a stream whose usage tollgate asked for: its "usage":null member removed.
  const std::string chunk_event = "data: " + std::string(chunk_data) + "\n\n";
  std::string edited;
  std::printf("null usage edit   (%4zu B chat chunk):      %8.0f ns/call\n", chunk_event.size(),
              ns_per_call(iterations, [&] {
                edited.clear();
                sink = sink + append_without_null_usage(chunk_event, edited);
              }));
  // The same chunk as the relay forwards it when it recurs (every chunk of a stream but the
  // first): read through the chunk frame, and cut where the frame's plan says, no search.
  sse_event framed_ev;
  framed_ev.raw = chunk_event;
  framed_ev.has_data = true;
  framed_ev.data = std::string_view(chunk_event).substr(6, chunk_data.size());
  stream_meter stripping(route_kind::chat_completions, true);
  std::printf("framed, stripped  (%4zu B chat chunk):      %8.0f ns/call\n", chunk_event.size(),
              ns_per_call(iterations, [&] {
                edited.clear();
                sink = sink + stripping.on_event(framed_ev);
                stripping.append_stripped(framed_ev, edited);
              }));
  if (stripping.cut_by_frame() == 0 || edited.size() >= chunk_event.size()) {
    std::fprintf(stderr, "json_bench: the chunk was not cut by its frame\n");
    return 1;
  }
  std::printf("short stream      (%4zu B, 4 events, new meter): %3.0f ns/call\n", short_stream.size(),
              ns_per_call(iterations, [] {
                stream_meter m(route_kind::other, false);
                sse_parser events;
                events.append(short_stream);
                sse_event e;
                while (events.next(e)) m.on_event(e);
                while (events.finish(e)) m.on_event(e);
                sink = sink + m.usage().prompt;
              }));
  return 0;
}
