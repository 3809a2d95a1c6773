// Unit tests of usage extraction (core/usage.hpp): non-stream bodies and SSE streams in the real
// wire shapes of the OpenAI and Anthropic APIs, and the token estimator.
#include <catch2/catch.hpp>
#include <algorithm>
#include <random>

#include <string>
#include <vector>

#include "core/usage.hpp"

using tollgate::estimate_tokens;
using tollgate::extract_response;
using tollgate::route_kind;
using tollgate::sse_event;
using tollgate::sse_parser;
using tollgate::stream_meter;
using tollgate::service_tier;
using tollgate::parse_service_tier;

namespace {

// Runs `stream` through a parser and the meter; returns the bytes forwarded to the client.
std::string relay(stream_meter& meter, std::string_view stream) {
  sse_parser parser;
  parser.append(stream);
  std::string forwarded;
  sse_event ev;
  while (parser.next(ev)) {
    if (meter.on_event(ev)) forwarded += ev.raw;
  }
  while (parser.finish(ev)) {
    if (meter.on_event(ev)) forwarded += ev.raw;
  }
  return forwarded;
}

std::string data_event(std::string_view json) { return "data: " + std::string(json) + "\n\n"; }

std::string typed_event(std::string_view type, std::string_view json) {
  return "event: " + std::string(type) + "\ndata: " + std::string(json) + "\n\n";
}

// --- OpenAI chat stream pieces (stream_options.include_usage: true) ---
const std::string chat_role_chunk = data_event(
    R"({"id":"chatcmpl-AyPvq","object":"chat.completion.chunk","created":1738960000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_72ed7ab54c","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null})");
const std::string chat_hello_chunk = data_event(
    R"({"id":"chatcmpl-AyPvq","object":"chat.completion.chunk","created":1738960000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"Hello there"},"logprobs":null,"finish_reason":null}],"usage":null})");
const std::string chat_stop_chunk = data_event(
    R"({"id":"chatcmpl-AyPvq","object":"chat.completion.chunk","created":1738960000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null})");
const std::string chat_usage_chunk = data_event(
    R"({"id":"chatcmpl-AyPvq","object":"chat.completion.chunk","created":1738960000,"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}})");
const std::string done_event = "data: [DONE]\n\n";

}  // namespace

TEST_CASE("usage: OpenAI chat body gives prompt, cached, completion and reasoning", "[usage]") {
  const auto f = extract_response(route_kind::chat_completions, R"({
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion", "created": 1741570283,
    "model": "o3-mini-2025-01-31",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 42.", "refusal": null,
                 "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1117, "completion_tokens": 1846, "total_tokens": 2963,
              "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 1792, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_fc9f1d7035"})");
  REQUIRE(f.has_usage);
  CHECK(f.usage.prompt == 1117);
  CHECK(f.usage.cached == 1024);
  CHECK(f.usage.completion == 1846);
  CHECK(f.usage.reasoning == 1792);
  CHECK(f.usage.cache_write == 0);
  CHECK(f.usage.total() == 2963);
  CHECK(f.model == "o3-mini-2025-01-31");
  CHECK(f.id == "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG");
}

TEST_CASE("usage: legacy completions body uses the chat usage fields", "[usage]") {
  const auto f = extract_response(route_kind::completions, R"({"id":"cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
    "object":"text_completion","created":1589478378,"model":"gpt-3.5-turbo-instruct",
    "choices":[{"text":"\n\nThis is indeed a test","index":0,"logprobs":null,"finish_reason":"length"}],
    "usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}})");
  REQUIRE(f.has_usage);
  CHECK(f.usage.prompt == 5);
  CHECK(f.usage.completion == 7);
  CHECK(f.usage.cached == 0);
}

TEST_CASE("usage: DeepSeek prompt_cache_hit_tokens counts as cached", "[usage]") {
  const auto f = extract_response(route_kind::chat_completions, R"({"id":"930c60df-bf64-41c9-a88e-3ec75f81e00e",
    "object":"chat.completion","created":1705651092,"model":"deepseek-reasoner",
    "choices":[{"index":0,"message":{"role":"assistant","content":"Hi","reasoning_content":"..."},"finish_reason":"stop"}],
    "usage":{"prompt_tokens":160,"completion_tokens":90,"total_tokens":250,"prompt_cache_hit_tokens":128,
             "prompt_cache_miss_tokens":32,"completion_tokens_details":{"reasoning_tokens":70}}})");
  REQUIRE(f.has_usage);
  CHECK(f.usage.prompt == 160);
  CHECK(f.usage.cached == 128);
  CHECK(f.usage.reasoning == 70);
}

// Claude served through a relay's OpenAI-compatible chat API: each relay names the cache writes
// its own way (shapes from OpenRouter, LiteLLM and new-api). prompt_tokens includes them.
TEST_CASE("usage: relayed Claude cache writes in an OpenAI-shaped usage", "[usage]") {
  const auto chat = [](std::string_view usage) {
    return extract_response(route_kind::chat_completions,
                            std::string(R"({"id":"gen-1","object":"chat.completion","model":"anthropic/claude-sonnet-4.5",)"
                                        R"("choices":[],"usage":)") + std::string(usage) + "}");
  };
  SECTION("OpenRouter: prompt_tokens_details.cache_write_tokens") {
    const auto f = chat(R"({"prompt_tokens":5000,"completion_tokens":10,"total_tokens":5010,
      "prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":4096,"audio_tokens":0}})");
    REQUIRE(f.has_usage);
    CHECK(f.usage.prompt == 5000);
    CHECK(f.usage.cached == 0);
    CHECK(f.usage.cache_write == 4096);
    CHECK(f.usage.cache_write_1h == 0);
  }
  SECTION("LiteLLM: cache_creation_tokens with its 5m/1h split and the top-level Anthropic names") {
    const auto f = chat(R"({"prompt_tokens":130,"completion_tokens":25,"total_tokens":155,
      "prompt_tokens_details":{"text_tokens":100,"cached_tokens":20,"cache_write_tokens":0,"cache_creation_tokens":10,
        "cache_creation_token_details":{"ephemeral_5m_input_tokens":7,"ephemeral_1h_input_tokens":3}},
      "cache_creation_input_tokens":10,"cache_read_input_tokens":20,"inference_geo":"not_available"})");
    REQUIRE(f.has_usage);
    CHECK(f.usage.prompt == 130);
    CHECK(f.usage.cached == 20);
    CHECK(f.usage.cache_write == 10);
    CHECK(f.usage.cache_write_1h == 3);
  }
  SECTION("LiteLLM: only the top-level Anthropic names") {
    const auto f = chat(R"({"prompt_tokens":1200,"completion_tokens":5,"cache_creation_input_tokens":1000,
      "cache_read_input_tokens":150})");
    CHECK(f.usage.cached == 150);
    CHECK(f.usage.cache_write == 1000);
  }
  SECTION("new-api: cached_creation_tokens and the claude_cache_creation split") {
    const auto f = chat(R"({"prompt_tokens":3619,"completion_tokens":36,"total_tokens":3655,
      "prompt_tokens_details":{"cached_tokens":2921,"cached_creation_tokens":600},
      "claude_cache_creation_5_m_tokens":200,"claude_cache_creation_1_h_tokens":400})");
    CHECK(f.usage.prompt == 3619);
    CHECK(f.usage.cached == 2921);
    CHECK(f.usage.cache_write == 600);
    CHECK(f.usage.cache_write_1h == 400);
  }
  SECTION("Anthropic's input_tokens under OpenAI's name: the prompt is the sum") {
    const auto f = chat(R"({"prompt_tokens":12,"completion_tokens":3,
      "prompt_tokens_details":{"cached_tokens":2000,"cached_creation_tokens":500}})");
    CHECK(f.usage.prompt == 2512);
    CHECK(f.usage.cached == 2000);
    CHECK(f.usage.cache_write == 500);
  }
  SECTION("OpenAI's own writes (GPT-5.6): cache_write_tokens, the 12-hour ones kept as long-lived") {
    const auto r = extract_response(route_kind::responses, R"({"id":"resp_2","object":"response","model":"gpt-5.6-terra",
      "output":[],"usage":{"input_tokens":20000,"output_tokens":40,"total_tokens":20040,
      "input_tokens_details":{"cached_tokens":0,"cache_write_tokens":18000,
        "cache_write_tokens_details":{"ttl_12h_tokens":6000,"ttl_30m_tokens":12000}},
      "output_tokens_details":{"reasoning_tokens":0}}})");
    CHECK(r.usage.prompt == 20000);
    CHECK(r.usage.cache_write == 18000);
    CHECK(r.usage.cache_write_1h == 6000);
  }
  SECTION("OpenAI's own usage reports no writes") {
    const auto f = chat(R"({"prompt_tokens":1117,"completion_tokens":46,
      "prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0}})");
    CHECK(f.usage.prompt == 1117);
    CHECK(f.usage.cached == 1024);
    CHECK(f.usage.cache_write == 0);
  }
  SECTION("a stream's usage chunk, and a relay's Responses usage") {
    stream_meter m(route_kind::chat_completions, false);
    relay(m, data_event(R"({"id":"gen-2","model":"claude-sonnet-4-5","choices":[],"usage":{"prompt_tokens":900,)"
                        R"("completion_tokens":4,"prompt_tokens_details":{"cached_tokens":100,"cache_write_tokens":700}}})") +
                 done_event);
    REQUIRE(m.has_usage());
    CHECK(m.usage().cache_write == 700);
    CHECK(m.usage().cached == 100);
    const auto r = extract_response(route_kind::responses, R"({"id":"resp_1","object":"response","model":"claude-sonnet-4-5",
      "output":[],"usage":{"input_tokens":3619,"output_tokens":36,"total_tokens":3655,
      "input_tokens_details":{"cached_tokens":2921,"cached_creation_tokens":120,"cache_write_tokens":120}}})");
    CHECK(r.usage.prompt == 3619);
    CHECK(r.usage.cached == 2921);
    CHECK(r.usage.cache_write == 120);
  }
}

// POST /v1/decisions (openai-node 7.x client.decisions.create) is route `other`: the Decision's
// usage is read by its shape (the Responses API's), with its model.
// Relays that bill their own prices say what a call cost in its usage: OpenRouter as a number of
// credits (USD), with the provider's part beside it on a BYOK call; Perplexity as an object.
TEST_CASE("usage: a cost the upstream reports in its usage is read, in USD", "[usage]") {
  const auto reported = [](route_kind route, const std::string& usage) {
    const auto r = extract_response(route, R"({"id":"gen-1","model":"qwen/qwen3-235b","usage":)" + usage + "}");
    REQUIRE(r.has_usage);
    return r.usage.reported_usd;
  };
  const std::string tokens = R"("prompt_tokens":1200,"completion_tokens":300,"total_tokens":1500)";
  // OpenRouter: usage.cost in credits; is_byok false.
  CHECK(reported(route_kind::chat_completions, "{" + tokens + R"(,"cost":0.000957,"is_byok":false,"cost_details":{"upstream_inference_cost":null}})") ==
        Approx(0.000957).epsilon(1e-12));
  // A BYOK call: OpenRouter's fee plus what the provider bills the key's owner.
  CHECK(reported(route_kind::chat_completions, "{" + tokens + R"(,"cost":0.00005,"is_byok":true,"cost_details":{"upstream_inference_cost":0.001}})") ==
        Approx(0.00105).epsilon(1e-12));
  // Perplexity: usage.cost.total_cost, beside its own token kinds.
  CHECK(reported(route_kind::chat_completions,
                 "{" + tokens + R"(,"search_context_size":"low","citation_tokens":0,"num_search_queries":1,"cost":{"input_tokens_cost":0.0012,"output_tokens_cost":0.0003,"request_cost":0.005,"total_cost":0.0065}})") ==
        Approx(0.0065).epsilon(1e-12));
  // OpenRouter's Responses API.
  CHECK(reported(route_kind::responses, R"({"input_tokens":10,"output_tokens":5,"total_tokens":15,"cost":0.00002})") ==
        Approx(0.00002).epsilon(1e-12));
  // A free model costs 0, which is a report; no cost, a negative one, a string or an object
  // without total_cost is none.
  CHECK(reported(route_kind::chat_completions, "{" + tokens + R"(,"cost":0})") == 0);
  for (const std::string bad : {"", R"(,"cost":-0.1)", R"(,"cost":"0.01")", R"(,"cost":{"request_cost":0.005})", R"(,"cost":null)"}) {
    INFO(bad);
    CHECK(reported(route_kind::chat_completions, "{" + tokens + bad + "}") == -1);
  }
  // In a stream: the usage chunk's cost.
  stream_meter m(route_kind::chat_completions, false);
  relay(m, data_event(R"({"id":"gen-2","object":"chat.completion.chunk","model":"qwen/qwen3-235b","choices":[{"index":0,"delta":{"content":"Hi"}}]})") +
               data_event(R"({"id":"gen-2","object":"chat.completion.chunk","model":"qwen/qwen3-235b","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14,"cost":0.0000071}})") +
               done_event);
  REQUIRE(m.has_usage());
  CHECK(m.usage().reported_usd == Approx(0.0000071).epsilon(1e-12));
}

// OpenRouter names the provider it routed a call to at the top level of the reply and of every
// chunk: a model's price differs between providers, so what a call cost is learned per provider.
TEST_CASE("usage: the relay's provider that served a call is read from the reply and the stream", "[usage]") {
  const auto f = extract_response(route_kind::chat_completions,
                                  R"({"id":"gen-1","provider":"DeepInfra","model":"qwen/qwen3-235b","object":"chat.completion",
    "choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,"cost":0.0000071}})");
  CHECK(f.provider == "DeepInfra");
  CHECK(extract_response(route_kind::chat_completions, R"({"id":"c","model":"gpt-4.1","usage":{"prompt_tokens":1}})").provider.empty());
  // A provider that is not a string is none.
  CHECK(extract_response(route_kind::chat_completions, R"({"provider":{"name":"x"},"usage":{"prompt_tokens":1}})").provider.empty());
  // A stream: the first chunk that names one (the content chunks after it go through the frame).
  stream_meter m(route_kind::chat_completions, false);
  std::string chunks;
  for (int i = 0; i < 4; ++i)
    chunks += data_event(R"({"id":"gen-2","provider":"Together","model":"qwen/qwen3-235b","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]})");
  relay(m, chunks + data_event(R"({"id":"gen-2","provider":"Together","model":"qwen/qwen3-235b","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":4,"cost":0.00001}})") +
               done_event);
  REQUIRE(m.has_usage());
  CHECK(m.provider() == "Together");
  stream_meter plain(route_kind::chat_completions, false);
  relay(plain, data_event(R"({"id":"c","model":"gpt-4.1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}})") + done_event);
  CHECK(plain.provider().empty());
  // A Responses stream: on the Responses object its end carries, as the non-stream reply does.
  const auto responses_stream = [](std::string_view provider) {
    return typed_event("response.created", R"({"type":"response.created","sequence_number":0,"response":{"id":"gen-3","model":"qwen/qwen3-235b","usage":null}})") +
           typed_event("response.completed", R"({"type":"response.completed","sequence_number":1,"response":{"id":"gen-3","object":"response",)" +
                                                std::string(provider) + R"("model":"qwen/qwen3-235b","usage":{"input_tokens":9,"output_tokens":3,"total_tokens":12}}})");
  };
  stream_meter r(route_kind::responses, true);
  relay(r, responses_stream(R"("provider":"Groq",)"));
  REQUIRE(r.has_usage());
  CHECK(r.provider() == "Groq");
  CHECK(extract_response(route_kind::responses, R"({"id":"gen-4","object":"response","provider":"Groq","model":"m","usage":{"input_tokens":1,"output_tokens":1,"total_tokens":2}})")
            .provider == "Groq");
  stream_meter r_plain(route_kind::responses, true);
  relay(r_plain, responses_stream(""));
  REQUIRE(r_plain.has_usage());
  CHECK(r_plain.provider().empty());
}

TEST_CASE("usage: a Decisions API reply is metered by the shape of its usage", "[usage]") {
  const auto f = extract_response(route_kind::other, R"({"answers":[{"type":"predicate","name":"spam","probability":0.02}],
    "model":"gpt-5.4-mini","usage":{"input_tokens":120,"input_tokens_details":{"cache_write_tokens":0,"cached_tokens":64},
    "output_tokens":3,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}})");
  REQUIRE(f.has_usage);
  CHECK(f.model == "gpt-5.4-mini");
  CHECK(f.usage.prompt == 120);
  CHECK(f.usage.cached == 64);
  CHECK(f.usage.completion == 3);
}

// openai-node 7.x: service_tier "fast" is OpenAI's fast mode, its priority processing (the API
// answers "priority"; a relay echoing the request's word must not bill it at standard prices).
TEST_CASE("usage: OpenAI's service_tier fast is its priority tier", "[usage]") {
  const auto f = extract_response(route_kind::chat_completions, R"({"id":"c1","object":"chat.completion","model":"gpt-5.5",
    "service_tier":"fast","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2}})");
  CHECK(f.usage.tier == service_tier::priority);
  const auto r = extract_response(route_kind::responses, R"({"id":"r1","object":"response","model":"gpt-5.5",
    "service_tier":"fast","output":[],"usage":{"input_tokens":10,"output_tokens":2}})");
  CHECK(r.usage.tier == service_tier::priority);
  // Anthropic's fast mode is usage.speed.
  const auto a = extract_response(route_kind::messages, R"({"type":"message","model":"claude-opus-4-6",
    "usage":{"input_tokens":10,"output_tokens":2,"speed":"fast"}})");
  CHECK(a.usage.tier == service_tier::fast);
}

TEST_CASE("usage: embeddings body has prompt tokens only", "[usage]") {
  const auto f = extract_response(route_kind::embeddings, R"({"object":"list",
    "data":[{"object":"embedding","embedding":[0.0023064255,-0.009327292,-0.0028842222],"index":0}],
    "model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}})");
  REQUIRE(f.has_usage);
  CHECK(f.usage.prompt == 8);
  CHECK(f.usage.completion == 0);
  CHECK(f.model == "text-embedding-3-small");
  CHECK(f.id.empty());
}

TEST_CASE("usage: a reply over 1 MiB (an embeddings batch) is read with the same answers", "[usage]") {
  // 300 vectors of 1,536 floats, ~5.5 MB: a parser of its own rather than nlohmann's DOM.
  std::string body = R"({"object":"list","data":[)";
  for (int i = 0; i < 300; ++i) {
    body += i ? "," : "";
    body += R"({"object":"embedding","index":)" + std::to_string(i) + R"(,"embedding":[)";
    for (int j = 0; j < 1536; ++j) body += (j ? ",-0.0" : "-0.0") + std::to_string(1000000 + (i * 7919 + j * 31) % 9000000);
    body += "]}";
  }
  body += R"(],"model":"text-embedding-3-small","usage":{"prompt_tokens":8123,"total_tokens":8123}})";
  REQUIRE(body.size() > 4'000'000);
  const auto f = extract_response(route_kind::embeddings, body);
  CHECK(f.has_usage);
  CHECK(f.usage.prompt == 8123);
  CHECK(f.usage.completion == 0);
  CHECK(f.model == "text-embedding-3-small");
  SECTION("what simdjson refuses (an integer beyond uint64) still goes to nlohmann") {
    std::string odd = body;
    odd.replace(odd.find(R"("index":0)"), 9, R"("index":18446744073709551616)");
    const auto g = extract_response(route_kind::embeddings, odd);
    CHECK(g.has_usage);
    CHECK(g.usage.prompt == 8123);
  }
  SECTION("cut short: no usage, no crash") {
    CHECK_FALSE(extract_response(route_kind::embeddings, body.substr(0, body.size() / 2)).has_usage);
  }
}

TEST_CASE("usage: Responses body uses input/output tokens and their details", "[usage]") {
  const auto f = extract_response(route_kind::responses, R"({
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41", "object": "response",
    "created_at": 1741476777, "status": "completed", "error": null, "incomplete_details": null,
    "model": "o4-mini-2025-04-16",
    "output": [{"type": "message", "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
                "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "In a peaceful grove...", "annotations": []}]}],
    "parallel_tool_calls": true, "reasoning": {"effort": "medium", "summary": null}, "store": true,
    "usage": {"input_tokens": 2328, "input_tokens_details": {"cached_tokens": 2048},
              "output_tokens": 552, "output_tokens_details": {"reasoning_tokens": 448}, "total_tokens": 2880},
    "user": null, "metadata": {}})");
  REQUIRE(f.has_usage);
  CHECK(f.usage.prompt == 2328);
  CHECK(f.usage.cached == 2048);
  CHECK(f.usage.completion == 552);
  CHECK(f.usage.reasoning == 448);
  CHECK(f.id == "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41");
}

TEST_CASE("usage: Anthropic body is converted to the OpenAI convention", "[usage]") {
  const std::string body = R"({"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant",
    "model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"Hi! My name is Claude."}],
    "stop_reason":"end_turn","stop_sequence":null,
    "usage":{"input_tokens":12,"cache_creation_input_tokens":2051,"cache_read_input_tokens":1800,
             "cache_creation":{"ephemeral_5m_input_tokens":51,"ephemeral_1h_input_tokens":2000},
             "output_tokens":503,"service_tier":"standard"}})";
  const auto f = extract_response(route_kind::messages, body);
  REQUIRE(f.has_usage);
  CHECK(f.usage.prompt == 12 + 1800 + 2051);  // input_tokens excludes the cache
  CHECK(f.usage.cached == 1800);
  CHECK(f.usage.cache_write == 2051);
  CHECK(f.usage.cache_write_1h == 2000);
  CHECK(f.usage.completion == 503);
  CHECK(f.model == "claude-sonnet-4-20250514");
  CHECK(f.id == "msg_013Zva2CMHLNnXjNJJKqJ2EF");

  SECTION("web searches of the server tool are counted (billed per request)") {
    const auto g = extract_response(route_kind::messages, R"({"type":"message","model":"claude-sonnet-4-5","usage":
      {"input_tokens":2103,"output_tokens":510,"server_tool_use":{"web_search_requests":3,"web_fetch_requests":1}}})");
    REQUIRE(g.has_usage);
    CHECK(g.usage.web_search == 3);
    CHECK(g.usage.prompt == 2103);
    CHECK(f.usage.web_search == 0);
  }
  SECTION("fast mode and US-only inference: the usage says what the call ran at") {
    const auto g = extract_response(route_kind::messages, R"({"type":"message","model":"claude-opus-4-6","usage":
      {"input_tokens":100,"output_tokens":50,"service_tier":"standard","inference_geo":"us","speed":"fast",
       "output_tokens_details":{"thinking_tokens":20}}})");
    REQUIRE(g.has_usage);
    CHECK(g.usage.tier == tollgate::service_tier::fast);
    CHECK(g.usage.geo_us);
    CHECK(g.usage.reasoning == 20);  // output_tokens_details.thinking_tokens, part of the 50 out
    CHECK(g.usage.completion == 50);
    const auto h = extract_response(route_kind::messages, R"({"type":"message","usage":
      {"input_tokens":100,"output_tokens":50,"service_tier":"priority","inference_geo":"global","speed":"standard"}})");
    CHECK(h.usage.tier == tollgate::service_tier::priority);
    CHECK_FALSE(h.usage.geo_us);
    CHECK_FALSE(f.usage.geo_us);
    CHECK(f.usage.tier == tollgate::service_tier::standard);
  }
  SECTION("cache fields null or missing count 0") {
    const auto g = extract_response(route_kind::messages, R"({"type":"message","usage":
      {"input_tokens":25,"cache_creation_input_tokens":null,"output_tokens":9}})");
    REQUIRE(g.has_usage);
    CHECK(g.usage.prompt == 25);
    CHECK(g.usage.cached == 0);
    CHECK(g.usage.cache_write == 0);
  }
}

TEST_CASE("usage: unknown routes detect the usage shape", "[usage]") {
  SECTION("OpenAI chat style") {
    const auto f = extract_response(route_kind::other, R"({"usage":{"prompt_tokens":3,"completion_tokens":4}})");
    REQUIRE(f.has_usage);
    CHECK(f.usage.prompt == 3);
    CHECK(f.usage.completion == 4);
  }
  SECTION("Anthropic style by type") {
    const auto f = extract_response(route_kind::other, R"({"type":"message","usage":{"input_tokens":3,"output_tokens":4}})");
    REQUIRE(f.has_usage);
    CHECK(f.usage.prompt == 3);
  }
  SECTION("Anthropic style by cache fields") {
    const auto f = extract_response(route_kind::other,
        R"({"usage":{"input_tokens":3,"cache_read_input_tokens":10,"output_tokens":4}})");
    REQUIRE(f.has_usage);
    CHECK(f.usage.prompt == 13);
    CHECK(f.usage.cached == 10);
  }
  SECTION("Responses style") {
    const auto f = extract_response(route_kind::other,
        R"({"usage":{"input_tokens":30,"input_tokens_details":{"cached_tokens":10},"output_tokens":4}})");
    REQUIRE(f.has_usage);
    CHECK(f.usage.prompt == 30);
    CHECK(f.usage.cached == 10);
  }
  SECTION("model listing has no usage") {
    const auto f = extract_response(route_kind::models,
        R"({"object":"list","data":[{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"}]})");
    CHECK_FALSE(f.has_usage);
  }
}

TEST_CASE("usage: malformed or usage-less bodies give no usage", "[usage]") {
  for (const char* body : {"", "{", "not json", "[]", "null", "42", R"({"usage":null})", R"({"usage":"12"})",
                           R"({"usage":{}})", R"({"usage":{"prompt_tokens":"12"}})",
                           R"({"error":{"message":"Invalid API key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}})",
                           R"({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})",
                           R"({"usage":{"prompt_tokens":1)"}) {
    INFO(body);
    for (auto route : {route_kind::chat_completions, route_kind::embeddings, route_kind::responses,
                       route_kind::messages, route_kind::other}) {
      CHECK_FALSE(extract_response(route, body).has_usage);
    }
  }
}

TEST_CASE("usage: counts clamp negatives to 0 and ignore non-integers", "[usage]") {
  SECTION("whole numbers written as floats (a relay that re-serializes usage) count") {
    const auto g = extract_response(route_kind::chat_completions,
        R"({"usage":{"prompt_tokens":1.2e3,"completion_tokens":7.0,"prompt_tokens_details":{"cached_tokens":200.0},
            "completion_tokens_details":{"reasoning_tokens":-0.0}}})");
    REQUIRE(g.has_usage);
    CHECK(g.usage.prompt == 1200);
    CHECK(g.usage.completion == 7);
    CHECK(g.usage.cached == 200);
    CHECK(g.usage.reasoning == 0);
    const auto m = extract_response(route_kind::messages, R"({"usage":{"input_tokens":25.0,"output_tokens":3.0}})");
    REQUIRE(m.has_usage);
    CHECK(m.usage.prompt == 25);
    CHECK(m.usage.completion == 3);
  }
  const auto f = extract_response(route_kind::chat_completions,
      R"({"usage":{"prompt_tokens":-5,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":2.5},
          "completion_tokens_details":{"reasoning_tokens":"3"}}})");
  REQUIRE(f.has_usage);
  CHECK(f.usage.prompt == 0);
  CHECK(f.usage.completion == 7);
  CHECK(f.usage.cached == 0);
  CHECK(f.usage.reasoning == 0);

  SECTION("a part never exceeds its whole; reasoning beyond the output is on top of it (xAI)") {
    const auto g = extract_response(route_kind::chat_completions,
        R"({"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":50},
            "completion_tokens_details":{"reasoning_tokens":9,"audio_tokens":70}}})");
    CHECK(g.usage.cached == 10);
    CHECK(g.usage.completion == 14);
    CHECK(g.usage.reasoning == 9);
    CHECK(g.usage.audio_out == 14);
  }
  SECTION("huge values do not overflow") {
    const auto g = extract_response(route_kind::messages,
        R"({"usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":9223372036854775807,"output_tokens":1}})");
    REQUIRE(g.has_usage);
    CHECK(g.usage.prompt > 0);
  }
}

TEST_CASE("usage: estimate_tokens heuristic", "[usage]") {
  CHECK(estimate_tokens("") == 0);
  CHECK(estimate_tokens("abcd") == 1);
  CHECK(estimate_tokens("abcde") == 2);  // rounded up
  CHECK(estimate_tokens("\xE4\xBD\xA0\xE5\xA5\xBD") == 2);  // 你好: 1 per CJK character
  CHECK(estimate_tokens("\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF") == 5);  // こんにちは
  CHECK(estimate_tokens("\xEC\x95\x88\xEB\x85\x95") == 2);  // 안녕
  CHECK(estimate_tokens("\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82") == 3);  // Привет: 1 per 2
  CHECK(estimate_tokens("h\xC3\xA9llo") == 2);  // 4 ASCII -> 1, é -> 1
  CHECK(estimate_tokens("\xF0\x9F\x98\x80") == 1);  // emoji, a 4-byte "other"
  CHECK(estimate_tokens("\xFF\xFE\x80") == 2);  // invalid bytes are "other" characters
  CHECK(estimate_tokens("\xE4\xBD") == 1);  // truncated sequence
  CHECK(estimate_tokens(std::string(4000, 'x')) == 1000);
}

TEST_CASE("stream_meter: OpenAI include_usage chunk is recorded and dropped only when stripping", "[usage][stream]") {
  const std::string stream =
      chat_role_chunk + ": keep-alive\n\n" + chat_hello_chunk + chat_stop_chunk + chat_usage_chunk + done_event;

  SECTION("client asked for usage: everything is forwarded") {
    stream_meter m(route_kind::chat_completions, false);
    CHECK(relay(m, stream) == stream);
    REQUIRE(m.has_usage());
    CHECK(m.usage().prompt == 1117);
    CHECK(m.usage().cached == 1024);
    CHECK(m.usage().completion == 46);
    CHECK(m.saw_done());
    CHECK_FALSE(m.saw_error());
    CHECK(m.model() == "gpt-4o-mini-2024-07-18");
    CHECK(m.id() == "chatcmpl-AyPvq");
  }
  SECTION("tollgate added include_usage: the usage chunk alone is dropped") {
    stream_meter m(route_kind::chat_completions, true);
    CHECK(relay(m, stream) == chat_role_chunk + ": keep-alive\n\n" + chat_hello_chunk + chat_stop_chunk + done_event);
    REQUIRE(m.has_usage());
    CHECK(m.usage().prompt == 1117);
    CHECK(m.saw_done());
  }
}

TEST_CASE("stream_meter: usage on the last content chunk is recorded and never dropped", "[usage][stream]") {
  const std::string last = data_event(
      R"({"id":"gen-1","model":"qwen-plus","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":8,"total_tokens":28}})");
  const std::string stream = chat_hello_chunk + last + done_event;
  stream_meter m(route_kind::chat_completions, true);
  CHECK(relay(m, stream) == stream);
  REQUIRE(m.has_usage());
  CHECK(m.usage().prompt == 20);
  CHECK(m.usage().completion == 8);
}

TEST_CASE("stream_meter: running-total usage on every chunk, the last value wins", "[usage][stream]") {
  std::string stream;
  for (int n = 1; n <= 3; ++n) {
    stream += data_event(R"({"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"tok"}}],"usage":{"prompt_tokens":50,"completion_tokens":)" +
                         std::to_string(n) + "}}");
  }
  stream += data_event(R"({"id":"c","model":"m","choices":[{"index":0,"delta":{}}],"usage":null})");
  stream += done_event;
  stream_meter m(route_kind::chat_completions, false);
  relay(m, stream);
  REQUIRE(m.has_usage());
  CHECK(m.usage().prompt == 50);
  CHECK(m.usage().completion == 3);  // a later null usage does not erase it
}

TEST_CASE("stream_meter: truncated stream has no usage but a positive estimate", "[usage][stream]") {
  const std::string stream = chat_role_chunk + chat_hello_chunk +
      data_event(R"({"id":"c","choices":[{"index":0,"delta":{"reasoning_content":"Let me think"}}]})") +
      data_event(R"({"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":"{\"city\":"}}]}}]})") +
      "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"cut he";
  stream_meter m(route_kind::chat_completions, true);
  CHECK(relay(m, stream) == stream);  // the malformed tail is still forwarded
  CHECK_FALSE(m.has_usage());
  CHECK_FALSE(m.saw_done());
  // "Hello there" + "Let me think" + "{\"city\":" = 11 + 12 + 8 ASCII bytes, estimated as one text.
  CHECK(m.estimated_completion_tokens() == (31 + 3) / 4);
}

TEST_CASE("stream_meter: legacy completions text is estimated", "[usage][stream]") {
  stream_meter m(route_kind::completions, false);
  relay(m, data_event(R"({"id":"cmpl-1","object":"text_completion","choices":[{"text":"\n\nThis is a test","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"})"));
  CHECK(m.estimated_completion_tokens() == 4);  // 16 bytes
  CHECK(m.model() == "gpt-3.5-turbo-instruct");
}

TEST_CASE("stream_meter: an error chunk mid-stream sets saw_error and is forwarded", "[usage][stream]") {
  const std::string error = data_event(R"({"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}})");
  stream_meter m(route_kind::chat_completions, true);
  CHECK(relay(m, chat_hello_chunk + error) == chat_hello_chunk + error);
  CHECK(m.saw_error());
  CHECK_FALSE(m.saw_done());
}

TEST_CASE("stream_meter: an error event is an error whatever its data, empty or a lone BOM", "[usage][stream]") {
  for (const std::string data : {"data:\n", "data: \xEF\xBB\xBF\n", "data: [1]\n"}) {
    for (auto route : {route_kind::chat_completions, route_kind::messages}) {
      stream_meter m(route, false);
      const std::string stream = "event: error\n" + data + "\n";
      CHECK(relay(m, stream) == stream);
      CHECK(m.saw_error());
    }
  }
}

TEST_CASE("stream_meter: comments and malformed events are forwarded and ignored", "[usage][stream]") {
  const std::string stream = ": ping\n\n" + data_event("{not json") + data_event("[1,2]") + "event: x\n\n" + done_event;
  for (auto route : {route_kind::chat_completions, route_kind::responses, route_kind::messages, route_kind::other}) {
    stream_meter m(route, true);
    CHECK(relay(m, stream) == stream);
    CHECK_FALSE(m.has_usage());
    CHECK_FALSE(m.saw_error());
    CHECK(m.estimated_completion_tokens() == 0);
  }
}

// usage.iterations (Anthropic beta): a compaction pass is billed at the call's model but is not in
// the top-level counts; an advisor sub-inference is billed at the advisor's model, also outside
// them (the top level covers the executor); `message` iterations are already in the top level.
TEST_CASE("usage: Anthropic compaction and advisor iterations are counted apart from the top level", "[usage]") {
  const std::string iterations = R"([
    {"type":"compaction","input_tokens":180000,"output_tokens":3500,"cache_read_input_tokens":0,
     "cache_creation_input_tokens":0,"cache_creation":null},
    {"type":"message","input_tokens":23000,"output_tokens":1000,"cache_read_input_tokens":0,"cache_creation_input_tokens":0},
    {"type":"advisor_message","model":"claude-opus-4-8","input_tokens":9000,"output_tokens":1500,
     "cache_read_input_tokens":4000,"cache_creation_input_tokens":500,
     "cache_creation":{"ephemeral_5m_input_tokens":500,"ephemeral_1h_input_tokens":0}},
    {"type":"advisor_message","model":"claude-opus-4-8","input_tokens":1000,"output_tokens":200,
     "cache_read_input_tokens":0,"cache_creation_input_tokens":0}])";
  const auto f = extract_response(route_kind::messages,
      R"({"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-6","content":[],
          "stop_reason":"end_turn","usage":{"input_tokens":23000,"output_tokens":1000,"cache_read_input_tokens":0,
          "cache_creation_input_tokens":0,"iterations":)" + iterations + "}}");
  REQUIRE(f.has_usage);
  CHECK(f.usage.prompt == 23000 + 180000);
  CHECK(f.usage.completion == 1000 + 3500);
  REQUIRE(f.other_models.size() == 1);
  CHECK(f.other_models[0].first == "claude-opus-4-8");
  CHECK(f.other_models[0].second.prompt == 9000 + 4000 + 500 + 1000);
  CHECK(f.other_models[0].second.cached == 4000);
  CHECK(f.other_models[0].second.cache_write == 500);
  CHECK(f.other_models[0].second.completion == 1700);

  SECTION("streamed: message_delta repeats the whole list; it is read anew, never added up") {
    std::string one_line = iterations;  // an SSE data line holds no newline
    std::replace(one_line.begin(), one_line.end(), '\n', ' ');
    const std::string start = typed_event("message_start",
        R"({"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-6","usage":{"input_tokens":23000,"output_tokens":1}}})");
    const std::string delta = typed_event("message_delta",
        R"({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1000,"iterations":)" + one_line + "}}");
    stream_meter m(route_kind::messages, false);
    relay(m, start + delta + delta + typed_event("message_stop", R"({"type":"message_stop"})"));
    REQUIRE(m.has_usage());
    CHECK(m.usage().prompt == 23000 + 180000);
    CHECK(m.usage().completion == 1000 + 3500);
    REQUIRE(m.other_models().size() == 1);
    CHECK(m.other_models()[0].second.completion == 1700);
  }
  SECTION("without iterations nothing changes") {
    const auto plain = extract_response(route_kind::messages,
        R"({"type":"message","model":"claude-sonnet-4-6","usage":{"input_tokens":10,"output_tokens":2}})");
    CHECK(plain.usage.prompt == 10);
    CHECK(plain.other_models.empty());
  }
}

TEST_CASE("usage: a turn served by a server-side fallback bills each hop at its own model", "[usage]") {
  // claude-opus-4-8 declined after reading the prompt; claude-sonnet-4-6 served the turn. The top
  // level holds both hops (only compaction and advisor entries are left out of it).
  const std::string iterations = R"([
    {"type":"message","model":"claude-opus-4-8","input_tokens":2000,"output_tokens":40,"cache_read_input_tokens":8000,
     "cache_creation_input_tokens":0,"cache_creation":null},
    {"type":"fallback_message","model":"claude-sonnet-4-6","input_tokens":2100,"output_tokens":900,
     "cache_read_input_tokens":0,"cache_creation_input_tokens":8000,
     "cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":8000}}])";
  const std::string usage = R"({"input_tokens":4100,"output_tokens":940,"cache_read_input_tokens":8000,)"
                            R"("cache_creation_input_tokens":8000,"cache_creation":{"ephemeral_5m_input_tokens":0,)"
                            R"("ephemeral_1h_input_tokens":8000},"iterations":)" + iterations + "}";
  auto check = [](const tollgate::token_usage& top, const std::vector<std::pair<std::string, tollgate::token_usage>>& others) {
    // Nothing is left at the response's own model; each hop at its model, the row's sums unchanged.
    CHECK(top.prompt == 0);
    CHECK(top.completion == 0);
    REQUIRE(others.size() == 2);
    CHECK(others[0].first == "claude-opus-4-8");
    CHECK(others[0].second.prompt == 10'000);
    CHECK(others[0].second.cached == 8000);
    CHECK(others[0].second.completion == 40);
    CHECK(others[1].first == "claude-sonnet-4-6");
    CHECK(others[1].second.prompt == 10'100);
    CHECK(others[1].second.cache_write == 8000);
    CHECK(others[1].second.cache_write_1h == 8000);
    CHECK(others[1].second.completion == 900);
  };
  const auto f = extract_response(route_kind::messages,
      R"({"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-6","content":[],"stop_reason":"end_turn","usage":)" +
          usage + "}");
  REQUIRE(f.has_usage);
  check(f.usage, f.other_models);

  SECTION("streamed: message_delta's list is read anew") {
    std::string one_line = usage;
    std::replace(one_line.begin(), one_line.end(), '\n', ' ');
    const std::string start = typed_event("message_start",
        R"({"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant","content":[],"model":"claude-opus-4-8","usage":{"input_tokens":4100,"cache_read_input_tokens":8000,"cache_creation_input_tokens":8000,"output_tokens":1}}})");
    const std::string delta = typed_event("message_delta",
        R"({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":)" + one_line + "}");
    stream_meter m(route_kind::messages, false);
    relay(m, start + delta + delta + typed_event("message_stop", R"({"type":"message_stop"})"));
    REQUIRE(m.has_usage());
    check(m.usage(), m.other_models());
  }
  SECTION("a top level that holds only the serving hop: the declined one is billed all the same") {
    const auto g = extract_response(route_kind::messages,
        R"({"type":"message","model":"claude-sonnet-4-6","usage":{"input_tokens":2100,"output_tokens":900,"cache_read_input_tokens":0,"cache_creation_input_tokens":8000,"iterations":)" +
            iterations + "}}");
    CHECK(g.usage.prompt == 0);
    REQUIRE(g.other_models.size() == 2);
    CHECK(g.other_models[0].second.prompt == 10'000);
  }
  SECTION("a chain that declined throughout (no fallback_message): each hop at its model all the same") {
    const auto r = extract_response(route_kind::messages,
        R"({"type":"message","model":"claude-opus-4-8","stop_reason":"refusal","usage":{"input_tokens":3000,"output_tokens":3,"iterations":[{"type":"message","model":"claude-fable-5","input_tokens":1000,"output_tokens":1},{"type":"message","model":"claude-opus-4-8","input_tokens":2000,"output_tokens":2}]}})");
    CHECK(r.usage.prompt == 0);
    REQUIRE(r.other_models.size() == 2);
    CHECK(r.other_models[0].first == "claude-fable-5");
    CHECK(r.other_models[0].second.prompt == 1000);
    CHECK(r.other_models[1].second.completion == 2);
  }
  SECTION("message entries of a turn no fallback served stay in the top level") {
    const auto h = extract_response(route_kind::messages,
        R"({"type":"message","model":"claude-sonnet-4-6","usage":{"input_tokens":30,"output_tokens":5,"iterations":[{"type":"message","model":"claude-sonnet-4-6","input_tokens":10,"output_tokens":2},{"type":"message","model":"claude-sonnet-4-6","input_tokens":20,"output_tokens":3}]}})");
    CHECK(h.usage.prompt == 30);
    CHECK(h.other_models.empty());
  }
}

TEST_CASE("usage: reasoning reported beside the output (xAI Grok) is billed as output", "[usage]") {
  // Grok reasoning models: completion_tokens is the answer alone, total_tokens counts the
  // reasoning on top (32 + 9 + 94 = 135).
  const auto x = extract_response(route_kind::chat_completions,
      R"({"model":"grok-3-mini","usage":{"prompt_tokens":32,"completion_tokens":9,"total_tokens":135,)"
      R"("prompt_tokens_details":{"text_tokens":32,"cached_tokens":6},"completion_tokens_details":{"reasoning_tokens":94}}})");
  CHECK(x.usage.prompt == 32);
  CHECK(x.usage.completion == 103);
  CHECK(x.usage.reasoning == 94);
  // Reasoning below the answer's length: the total tells (40 + 50 + 20 = 110).
  const auto y = extract_response(route_kind::chat_completions,
      R"({"usage":{"prompt_tokens":40,"completion_tokens":50,"total_tokens":110,"completion_tokens_details":{"reasoning_tokens":20}}})");
  CHECK(y.usage.completion == 70);
  // OpenAI's convention (and relays that restate Grok's that way): reasoning inside the output.
  const auto o = extract_response(route_kind::chat_completions,
      R"({"usage":{"prompt_tokens":686,"completion_tokens":123,"total_tokens":809,)"
      R"("completion_tokens_details":{"text_tokens":11,"reasoning_tokens":112}}})");
  CHECK(o.usage.completion == 123);
  CHECK(o.usage.reasoning == 112);
  const auto n = extract_response(route_kind::chat_completions,
      R"({"usage":{"prompt_tokens":40,"completion_tokens":50,"completion_tokens_details":{"reasoning_tokens":20}}})");
  CHECK(n.usage.completion == 50);
  // The Responses API alike.
  const auto r = extract_response(route_kind::responses,
      R"({"object":"response","model":"grok-4","usage":{"input_tokens":100,"output_tokens":30,"total_tokens":330,)"
      R"("output_tokens_details":{"reasoning_tokens":200}}})");
  CHECK(r.usage.completion == 230);
  const auto ro = extract_response(route_kind::responses,
      R"({"object":"response","usage":{"input_tokens":100,"output_tokens":230,"total_tokens":330,"output_tokens_details":{"reasoning_tokens":200}}})");
  CHECK(ro.usage.completion == 230);
  SECTION("Gemini through a converter that dropped its thoughts but kept them in the total") {
    // gemini-2.5-flash: 20 prompt, 198 answer, 405 thoughts, total 623.
    const auto g = extract_response(route_kind::chat_completions,
        R"({"model":"gemini-2.5-flash","usage":{"prompt_tokens":20,"completion_tokens":198,"total_tokens":623}})");
    CHECK(g.usage.completion == 603);
    CHECK(g.usage.reasoning == 405);
    // A usage with cache counts may leave them out of prompt_tokens (a relay's Claude usage):
    // there the total says nothing about hidden output.
    const auto c = extract_response(route_kind::chat_completions,
        R"({"usage":{"prompt_tokens":20,"completion_tokens":10,"total_tokens":1030,"prompt_tokens_details":{"cached_tokens":1000}}})");
    CHECK(c.usage.completion == 10);
    // A total that is the sum, or below it, changes nothing.
    const auto e = extract_response(route_kind::chat_completions,
        R"({"usage":{"prompt_tokens":20,"completion_tokens":10,"total_tokens":25}})");
    CHECK(e.usage.completion == 10);
    const auto em = extract_response(route_kind::embeddings, R"({"usage":{"prompt_tokens":8,"total_tokens":8}})");
    CHECK(em.usage.prompt == 8);
    CHECK(em.usage.completion == 0);
  }
  SECTION("streamed: the final chunk's usage") {
    stream_meter m(route_kind::chat_completions, false);
    relay(m, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"grok-3-mini\",\"choices\":[],"
             "\"usage\":{\"prompt_tokens\":32,\"completion_tokens\":9,\"total_tokens\":135,"
             "\"completion_tokens_details\":{\"reasoning_tokens\":94}}}\n\ndata: [DONE]\n\n");
    REQUIRE(m.has_usage());
    CHECK(m.usage().completion == 103);
  }
}

TEST_CASE("usage: Moonshot (Kimi) usage in the finish chunk's choice and its top-level cached_tokens", "[usage][stream]") {
  auto chunk = [](std::string_view choice_extra, std::string_view top_extra, std::string_view content) {
    return "data: {\"id\":\"chatcmpl-k\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"kimi-k2.6\","
           "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + std::string(content) + "\"}" + std::string(choice_extra) +
           "}]" + std::string(top_extra) + "}\n\n";
  };
  const std::string usage = R"({"prompt_tokens":1200,"completion_tokens":40,"total_tokens":1240,"cached_tokens":1024})";
  const std::string body = chunk("", "", "Hel") + chunk("", "", "lo") + chunk("", "", " there") +
                           chunk(R"(,"finish_reason":"stop","usage":)" + usage, "", "");
  SECTION("in the choice only (as Moonshot documents it)") {
    stream_meter m(route_kind::chat_completions, false);
    relay(m, body + "data: [DONE]\n\n");
    REQUIRE(m.has_usage());
    CHECK(m.usage().prompt == 1200);
    CHECK(m.usage().completion == 40);
    CHECK(m.usage().cached == 1024);
  }
  SECTION("repeated at the top level on a trailing chunk: taken once") {
    stream_meter m(route_kind::chat_completions, false);
    relay(m, body + "data: {\"id\":\"chatcmpl-k\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":" + usage +
                 "}\n\ndata: [DONE]\n\n");
    REQUIRE(m.has_usage());
    CHECK(m.usage().prompt == 1200);
    CHECK(m.usage().completion == 40);
  }
  SECTION("a chunk's top-level usage wins over its choice's") {
    stream_meter m(route_kind::chat_completions, false);
    relay(m, chunk(R"(,"usage":{"prompt_tokens":1,"completion_tokens":1})", R"(,"usage":{"prompt_tokens":7,"completion_tokens":3})", "x"));
    REQUIRE(m.has_usage());
    CHECK(m.usage().prompt == 7);
  }
  SECTION("not streamed: the top-level cached_tokens") {
    const auto f = extract_response(route_kind::chat_completions,
        R"({"id":"c","object":"chat.completion","model":"moonshot-v1-128k","choices":[],"usage":)" + usage + "}");
    CHECK(f.usage.cached == 1024);
    // The details win when both are given.
    const auto g = extract_response(route_kind::chat_completions,
        R"({"usage":{"prompt_tokens":100,"completion_tokens":1,"cached_tokens":5,"prompt_tokens_details":{"cached_tokens":64}}})");
    CHECK(g.usage.cached == 64);
  }
}

TEST_CASE("stream_meter: Anthropic message_delta usage is cumulative", "[usage][stream]") {
  const std::string start = typed_event("message_start",
      R"({"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-opus-4-20250514","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":2051,"cache_read_input_tokens":1800,"cache_creation":{"ephemeral_5m_input_tokens":51,"ephemeral_1h_input_tokens":2000},"output_tokens":1,"service_tier":"standard"}}})");
  const std::string body =
      typed_event("content_block_start", R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})") +
      typed_event("ping", R"({"type": "ping"})") +
      typed_event("content_block_delta", R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}})") +
      typed_event("message_delta", R"({"type":"message_delta","delta":{"stop_reason":null,"stop_sequence":null},"usage":{"output_tokens":10}})") +
      typed_event("content_block_delta", R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" world"}})") +
      typed_event("content_block_stop", R"({"type":"content_block_stop","index":0})") +
      typed_event("message_delta", R"({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":null,"output_tokens":25}})");
  const std::string stop = typed_event("message_stop", R"({"type":"message_stop"})");

  stream_meter m(route_kind::messages, true);
  CHECK(relay(m, start + body + stop) == start + body + stop);
  REQUIRE(m.has_usage());
  CHECK(m.usage().completion == 25);  // not 1 + 10 + 25
  CHECK(m.usage().prompt == 12 + 1800 + 2051);
  CHECK(m.usage().cached == 1800);
  CHECK(m.usage().cache_write == 2051);
  CHECK(m.usage().cache_write_1h == 2000);
  CHECK(m.usage().web_search == 0);
  CHECK(m.saw_done());
  CHECK(m.model() == "claude-opus-4-20250514");

  SECTION("web searches arrive in message_delta's cumulative usage") {
    const std::string searched = typed_event("message_delta",
        R"({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":40,"server_tool_use":{"web_search_requests":2}}})");
    stream_meter s(route_kind::messages, true);
    relay(s, start + searched + stop);
    REQUIRE(s.has_usage());
    CHECK(s.usage().web_search == 2);
    CHECK(s.usage().completion == 40);
  }
  CHECK(m.id() == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
  CHECK(m.estimated_completion_tokens() == 3);  // "Hello world"
  CHECK_FALSE(m.usage_provisional());

  SECTION("cut before any message_delta: the input side is real, the output count a placeholder") {
    stream_meter n(route_kind::messages, false);
    relay(n, start + typed_event("content_block_delta",
        R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello there, a longer answer"}})"));
    REQUIRE(n.has_usage());
    CHECK(n.usage_provisional());
    CHECK(n.usage().prompt == 12 + 1800 + 2051);
    CHECK(n.usage().cached == 1800);
    CHECK(n.usage().completion == 1);  // message_start's placeholder
    CHECK(n.estimated_completion_tokens() == 7);
  }

  SECTION("a fast-mode stream: message_start's usage names the speed and the geography") {
    const std::string fast_start = typed_event("message_start",
        R"({"type":"message_start","message":{"id":"msg_f","type":"message","role":"assistant","content":[],"model":"claude-opus-4-6","usage":{"input_tokens":12,"output_tokens":1,"service_tier":"standard","speed":"fast","inference_geo":"us"}}})");
    stream_meter n(route_kind::messages, true);
    relay(n, fast_start + typed_event("message_delta",
        R"({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":30}})") + stop);
    REQUIRE(n.has_usage());
    CHECK(n.usage().tier == tollgate::service_tier::fast);
    CHECK(n.usage().geo_us);
    CHECK(n.usage().completion == 30);
    CHECK(n.usage().reasoning == 0);
  }

  SECTION("message_delta may restate the input side") {
    stream_meter n(route_kind::messages, false);
    relay(n, start + typed_event("message_delta",
        R"({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":40,"cache_creation_input_tokens":0,"cache_read_input_tokens":1800,"output_tokens":7}})"));
    CHECK(n.usage().prompt == 40 + 1800);
    CHECK(n.usage().cache_write == 0);
    CHECK(n.usage().completion == 7);
    CHECK_FALSE(n.saw_done());
  }
}

TEST_CASE("stream_meter: Anthropic thinking and tool input are estimated", "[usage][stream]") {
  stream_meter m(route_kind::messages, false);
  relay(m, typed_event("content_block_delta", R"({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"abcdefgh"}})") +
           typed_event("content_block_delta", R"({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}})") +
           typed_event("content_block_delta", R"({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}})"));
  CHECK(m.estimated_completion_tokens() == (8 + 7 + 3) / 4);  // the signature is not text
  CHECK_FALSE(m.has_usage());
}

TEST_CASE("stream_meter: Anthropic error event sets saw_error", "[usage][stream]") {
  stream_meter m(route_kind::messages, false);
  const std::string error = typed_event("error", R"({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})");
  CHECK(relay(m, error) == error);
  CHECK(m.saw_error());
  CHECK_FALSE(m.saw_done());
}

TEST_CASE("stream_meter: an event over 1 MiB (a streamed partial image) is read and relayed whole", "[usage][stream]") {
  // The image generation tool streams base64 images of 1-3 MB as single events.
  const std::string image(2'000'000, 'A');
  const std::string stream =
      typed_event("response.image_generation_call.partial_image",
                  R"({"type":"response.image_generation_call.partial_image","sequence_number":1,"item_id":"ig_1",)"
                  R"("output_index":0,"partial_image_index":0,"partial_image_b64":")" + image + R"("})") +
      typed_event("response.completed", R"({"type":"response.completed","sequence_number":2,"response":{"id":"resp_9",)"
                                        R"("object":"response","status":"completed","model":"gpt-4.1","usage":{"input_tokens":70,)"
                                        R"("output_tokens":1500,"total_tokens":1570}}})");
  stream_meter m(route_kind::responses, false);
  CHECK(relay(m, stream) == stream);
  REQUIRE(m.has_usage());
  CHECK(m.usage().prompt == 70);
  CHECK(m.usage().completion == 1500);
  CHECK(m.model() == "gpt-4.1");
}

TEST_CASE("stream_meter: Responses stream takes usage from response.completed", "[usage][stream]") {
  const std::string stream =
      typed_event("response.created", R"({"type":"response.created","sequence_number":0,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"in_progress","error":null,"model":"gpt-4.1-2025-04-14","output":[],"usage":null}})") +
      typed_event("response.in_progress", R"({"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","status":"in_progress","model":"gpt-4.1-2025-04-14","usage":null}})") +
      typed_event("response.output_item.added", R"({"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"in_progress","role":"assistant","content":[]}})") +
      typed_event("response.output_text.delta", R"({"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"delta":"Hi there"})") +
      typed_event("response.function_call_arguments.delta", R"({"type":"response.function_call_arguments.delta","sequence_number":4,"item_id":"fc_1","output_index":1,"delta":"{\"x\":1}"})") +
      typed_event("response.output_text.done", R"({"type":"response.output_text.done","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"text":"Hi there"})") +
      typed_event("response.completed", R"({"type":"response.completed","sequence_number":6,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","status":"completed","model":"gpt-4.1-2025-04-14","usage":{"input_tokens":37,"input_tokens_details":{"cached_tokens":5},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":4},"total_tokens":48}}})");
  stream_meter m(route_kind::responses, true);
  CHECK(relay(m, stream) == stream);
  REQUIRE(m.has_usage());
  CHECK(m.usage().prompt == 37);
  CHECK(m.usage().cached == 5);
  CHECK(m.usage().completion == 11);
  CHECK(m.usage().reasoning == 4);
  CHECK(m.saw_done());
  CHECK_FALSE(m.saw_error());
  CHECK(m.model() == "gpt-4.1-2025-04-14");
  CHECK(m.id() == "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654");
  CHECK(m.estimated_completion_tokens() == (8 + 7 + 3) / 4);  // "Hi there" + {"x":1}

  SECTION("the JSON type is enough without an event field") {
    stream_meter n(route_kind::responses, false);
    relay(n, data_event(R"({"type":"response.incomplete","response":{"id":"resp_2","model":"o3","usage":{"input_tokens":9,"output_tokens":2}}})"));
    CHECK(n.has_usage());
    CHECK(n.saw_done());
  }
  SECTION("an error event sets saw_error") {
    stream_meter n(route_kind::responses, false);
    relay(n, typed_event("error", R"({"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null,"sequence_number":1})"));
    CHECK(n.saw_error());
    CHECK_FALSE(n.saw_done());
  }
}

TEST_CASE("stream_meter: the other route recognises typed streams", "[usage][stream]") {
  stream_meter m(route_kind::other, false);
  relay(m, typed_event("message_start", R"({"type":"message_start","message":{"id":"msg_1","model":"claude-3-5-haiku-latest","usage":{"input_tokens":7,"output_tokens":1}}})") +
           typed_event("message_stop", R"({"type":"message_stop"})"));
  REQUIRE(m.has_usage());
  CHECK(m.usage().prompt == 7);
  CHECK(m.saw_done());
}

TEST_CASE("stream_meter: a stream split at every byte meters the same", "[usage][stream]") {
  const std::string stream = chat_role_chunk + chat_hello_chunk + chat_usage_chunk + done_event;
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    stream_meter m(route_kind::chat_completions, true);
    sse_parser p;
    std::string forwarded;
    sse_event ev;
    for (auto piece : {std::string_view(stream).substr(0, cut), std::string_view(stream).substr(cut)}) {
      p.append(piece);
      while (p.next(ev)) {
        if (m.on_event(ev)) forwarded += ev.raw;
      }
    }
    INFO("split at byte " << cut);
    CHECK(forwarded == chat_role_chunk + chat_hello_chunk + done_event);
    CHECK(m.usage().prompt == 1117);
    CHECK(m.saw_done());
  }
}

TEST_CASE("append_without_null_usage: removes only the null usage member", "[usage]") {
  std::string out;
  CHECK(tollgate::append_without_null_usage(
      R"(data: {"id":"c","choices":[{"delta":{"content":"hi"}}],"usage":null})" "\n\n", out));
  CHECK(out == R"(data: {"id":"c","choices":[{"delta":{"content":"hi"}}]})" "\n\n");
  out.clear();
  CHECK(tollgate::append_without_null_usage(R"(data: {"usage": null, "id": "c"})", out));
  CHECK(out == R"(data: {"id": "c"})");
  out.clear();
  CHECK_FALSE(tollgate::append_without_null_usage(R"(data: {"usage":{"prompt_tokens":1}})", out));
  CHECK(out == R"(data: {"usage":{"prompt_tokens":1}})");
  out.clear();
  CHECK_FALSE(tollgate::append_without_null_usage(R"(data: {"c":"say \"usage\":null please"})", out));
  out.clear();
  // A key ending in an escaped quote is not the usage member (found by fuzz_usage).
  CHECK_FALSE(tollgate::append_without_null_usage(R"({"\"usage":null,"a":1})", out));
  CHECK(out == R"({"\"usage":null,"a":1})");
  // Every spelling, and several members in one event (each removed once, left to right).
  const std::pair<std::string_view, std::string_view> cases[] = {
      {R"({"a":1, "usage": null})", R"({"a":1})"},
      {R"({"a":1,"usage": null})", R"({"a":1})"},
      {R"({"usage": null, "a":1})", R"({"a":1})"},
      {R"({"usage": null,"a":1})", R"({"a":1})"},
      {R"({ "usage":null,"a":1})", R"({ "a":1})"},
      {R"({"usage":null})", R"({"usage":null})"},  // alone: no comma to take with it
      {R"({"x":{"usage":null,"b":2},"usage":null})", R"({"x":{"b":2}})"},
      {R"({"usage":{"a":1},"b":{"usage":null,"c":3}})", R"({"usage":{"a":1},"b":{"c":3}})"},
  };
  for (const auto& [in, expected] : cases) {
    INFO(in);
    out.clear();
    CHECK(tollgate::append_without_null_usage(in, out) == (in != expected));
    CHECK(out == expected);
  }
}

TEST_CASE("stream_meter: a data line with nothing in it is passed on and read as nothing", "[usage]") {
  stream_meter m(route_kind::chat_completions, false);
  CHECK(relay(m, "data: \n\n" + data_event(R"({"id":"c","model":"gpt-4.1","choices":[]})")) ==
        "data: \n\n" + data_event(R"({"id":"c","model":"gpt-4.1","choices":[]})"));
  CHECK(m.model() == "gpt-4.1");
}

// text_tally reads ASCII eight bytes at a time: its counts must equal a byte-at-a-time reading
// wherever the multi-byte characters fall, split across add() calls or not.
TEST_CASE("usage: text_tally counts alike whatever the alignment", "[usage]") {
  const std::string pieces[] = {"a", "\xE4\xBD\xA0", "\xD0\x9F", "\xF0\x9F\x98\x80", "\x80", "\xFF", "\xE4\xBD"};
  std::mt19937 rng(7);
  for (int round = 0; round < 500; ++round) {
    std::string text;
    const int len = static_cast<int>(rng() % 60);
    for (int k = 0; k < len; ++k) {
      const auto& p = pieces[rng() % 10 < 6 ? 0 : 1 + rng() % 6];  // mostly ASCII runs
      text += p;
    }
    tollgate::text_tally whole;
    whole.add(text);
    tollgate::text_tally bytewise;  // one add() per complete character, as the slow reference
    for (std::size_t i = 0; i < text.size();) {
      const auto c = static_cast<unsigned char>(text[i]);
      std::size_t len = c >= 0xF8 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      std::size_t j = 1;
      while (j < len && i + j < text.size() && (static_cast<unsigned char>(text[i + j]) & 0xC0) == 0x80) ++j;
      bytewise.add(std::string_view(text).substr(i, j));
      i += j;
    }
    INFO(text.size());
    CHECK(whole.ascii_bytes == bytewise.ascii_bytes);
    CHECK(whole.cjk_chars == bytewise.cjk_chars);
    CHECK(whole.other_chars == bytewise.other_chars);
  }
}

namespace {

// The same stream metered twice: as is, and with every JSON payload behind a UTF-8 BOM, which
// simdjson turns down, so the second meter reads every event with nlohmann and never through a
// chunk frame. Both must agree on everything, and on the bytes forwarded.
void check_framed_like_parsed(route_kind route, bool strip, const std::vector<std::string>& payloads,
                              std::size_t min_framed) {
  stream_meter framed(route, strip), parsed(route, strip);
  std::string out_framed, out_parsed;
  for (const auto& p : payloads) {
    out_framed += relay(framed, data_event(p));
    const std::string bom_payload = (p == "[DONE]" ? p : "\xEF\xBB\xBF" + p);
    if (!relay(parsed, data_event(bom_payload)).empty()) out_parsed += data_event(p);
  }
  CHECK(out_framed == out_parsed);
  CHECK(framed.estimated_completion_tokens() == parsed.estimated_completion_tokens());
  CHECK(framed.has_usage() == parsed.has_usage());
  CHECK(framed.usage().prompt == parsed.usage().prompt);
  CHECK(framed.usage().completion == parsed.usage().completion);
  CHECK(framed.model() == parsed.model());
  CHECK(framed.id() == parsed.id());
  CHECK(framed.saw_error() == parsed.saw_error());
  CHECK(framed.saw_done() == parsed.saw_done());
  CHECK(parsed.framed_events() == 0);
  CHECK(framed.framed_events() >= min_framed);
}

std::string content_chunk(std::string_view json_text, std::string_view key = "content") {
  return R"({"id":"chatcmpl-B9MBs","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4.1-mini-2025-04-14","service_tier":"default","system_fingerprint":"fp_b376dfbbd5","choices":[{"index":0,"delta":{")" +
         std::string(key) + R"(":")" + std::string(json_text) + R"("},"logprobs":null,"finish_reason":null}],"usage":null})";
}

// A typed stream (`event:` names) metered as is, on `route`, and its parsed twin (every JSON
// payload behind a BOM, so nlohmann reads it and no frame is used): they must agree.
void check_typed_framed_like_parsed(route_kind route, const std::string& stream, std::int64_t completion,
                                    std::size_t min_framed) {
  std::string twin;
  sse_parser parser;
  parser.append(stream);
  sse_event ev;
  while (parser.next(ev)) {
    twin += (ev.event.empty() ? "" : "event: " + std::string(ev.event) + "\n") + "data: \xEF\xBB\xBF" +
            std::string(ev.data) + "\n\n";
  }
  stream_meter framed(route, false), parsed(route, false);
  CHECK(relay(framed, stream) == stream);
  relay(parsed, twin);
  CHECK(framed.estimated_completion_tokens() == parsed.estimated_completion_tokens());
  CHECK(framed.estimated_completion_tokens() > 0);
  REQUIRE(framed.has_usage());
  CHECK(framed.usage().completion == completion);
  CHECK(framed.model() == parsed.model());
  CHECK_FALSE(framed.model().empty());
  CHECK(framed.saw_done());
  CHECK(parsed.framed_events() == 0);
  CHECK(framed.framed_events() >= min_framed);
}

}  // namespace

TEST_CASE("stream_meter: chunks read through a frame meter exactly as parsed ones", "[usage][stream]") {
  const std::string role = R"({"id":"chatcmpl-B9MBs","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4.1-mini-2025-04-14","service_tier":"default","system_fingerprint":"fp_b376dfbbd5","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null})";
  const std::string stop = R"({"id":"chatcmpl-B9MBs","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4.1-mini-2025-04-14","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null})";
  const std::string usage = R"({"id":"chatcmpl-B9MBs","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4.1-mini-2025-04-14","choices":[],"usage":{"prompt_tokens":31,"completion_tokens":57,"total_tokens":88}})";

  SECTION("a typical stream: nearly every content chunk goes through the frame") {
    std::vector<std::string> s = {role};
    for (std::string_view t : {"Hello", "!", " How", " can", " I", " help", " you", " today", "?", "", " 你好",
                               "世界", " café", " 🚀", " naïve", " 1+1=2", " <b>", " a/b"})
      s.push_back(content_chunk(t));
    s.push_back(content_chunk(R"(\n\n)"));  // escapes: parsed
    s.push_back(content_chunk(" back"));
    s.push_back(content_chunk(R"(\"quoted\")"));
    s.push_back(content_chunk(R"( \u00e9\ud83d\ude80)"));
    s.push_back(content_chunk(" to"));
    s.push_back(content_chunk(" reasoning", "reasoning_content"));  // another key: a new frame
    s.push_back(content_chunk(" more thought", "reasoning_content"));
    s.push_back(content_chunk(" answer"));
    s.push_back(content_chunk(" again"));
    s.insert(s.end(), {stop, usage, "[DONE]"});
    for (bool strip : {false, true}) check_framed_like_parsed(route_kind::chat_completions, strip, s, 18);
    check_framed_like_parsed(route_kind::other, false, s, 18);
  }

  SECTION("bytes that fit the frame but are not one text value take the parse") {
    std::vector<std::string> s = {content_chunk("first"), content_chunk("second")};
    s.push_back(content_chunk(R"(a","content":"b)"));                 // a duplicate key: the last wins
    s.push_back(content_chunk(R"(x"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":7,"completion_tokens":3}})" "\n"));  // not JSON
    s.push_back(content_chunk(R"(x"},"extra":{"y":")"));                // another member, still valid JSON
    s.push_back(content_chunk("bad \xC3\x28 utf8"));                    // invalid UTF-8: nothing is read
    s.push_back(content_chunk("overlong \xC0\xAF"));
    s.push_back(content_chunk("surrogate \xED\xA0\x80"));
    s.push_back(content_chunk("cut \xE4\xBD"));
    s.push_back(content_chunk("tab\there"));                            // a raw control character
    s.push_back(content_chunk("ok"));
    s.push_back(content_chunk("ok") + " ");                             // trailing space: trimmed, framed
    s.push_back(content_chunk("ok") + "x");                             // trailing garbage
    s.push_back(content_chunk(R"(lone \ud800)"));
    s.push_back(usage);
    check_framed_like_parsed(route_kind::chat_completions, true, s, 2);  // "second" and "ok " (the "extra" chunk makes a new frame)
  }

  SECTION("shapes that never make a frame") {
    // Two choices, usage on the chunk, a tool call, an escaped key, the key twice, an error.
    const std::vector<std::string> s = {
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"c"}}]})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"a"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"z"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}})",
        R"({"id":"c","choices":[{"index":0,"delta":{"cont\u0065nt":"a"}}],"x":{"content":"a"}})",
        R"({"id":"c","choices":[{"index":0,"delta":{"cont\u0065nt":"a"}}],"x":{"content":"b"}})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"a","content":"b"}}]})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"a","content":"c"}}]})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"a","tool_calls":[{"function":{"arguments":"{}"}}]}}]})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"b","tool_calls":[{"function":{"arguments":"{}"}}]}}]})",
        R"({"id":"c","error":{"message":"x"},"choices":[{"index":0,"delta":{"content":"a"}}]})",
        R"({"id":"c","error":{"message":"x"},"choices":[{"index":0,"delta":{"content":"b"}}]})",
    };
    check_framed_like_parsed(route_kind::chat_completions, true, s, 0);
    stream_meter m(route_kind::chat_completions, true);
    for (const auto& p : s) relay(m, data_event(p));
    CHECK(m.framed_events() == 0);
  }

  SECTION("OpenAI's obfuscation padding, which changes with every chunk, is a second hole") {
    auto padded = [](std::string_view text, std::string_view pad) {
      return R"({"id":"chatcmpl-C1","object":"chat.completion.chunk","created":1755000000,"model":"gpt-5-mini-2025-08-07","service_tier":"default","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":")" +
             std::string(text) + R"("},"finish_reason":null}],"usage":null,"obfuscation":")" + std::string(pad) + R"("})";
    };
    auto pad_first = [](std::string_view text, std::string_view pad) {
      return R"({"obfuscation":")" + std::string(pad) + R"(","id":"c","choices":[{"index":0,"delta":{"content":")" +
             std::string(text) + R"("}}]})";
    };
    std::vector<std::string> s;
    const char* pads[] = {"Qx3", "", "aZ09kLmN", "p", "7Hh2", "x\"y", "tab\t", "\u0041", "zz"};
    const char* texts[] = {"Hello", " there", "", " 你好", "\n", " friend", " a\"b", " ok", "!"};
    for (int i = 0; i < 9; ++i) s.push_back(padded(texts[i], pads[i]));
    for (int i = 0; i < 9; ++i) s.push_back(pad_first(texts[i], pads[(i + 3) % 9]));
    s.push_back(padded("x", "a") + R"(,"obfuscation":"b")");  // not JSON: the parse rejects it
    s.push_back(R"({"id":"c","choices":[{"index":0,"delta":{"content":"d"}}],"obfuscation":"a","obfuscation":"b"})");
    s.push_back(R"({"id":"c","choices":[{"index":0,"delta":{"content":"e"}}],"obfuscation":"a","obfuscation":"c"})");
    s.push_back(R"({"id":"c","choices":[{"index":0,"delta":{"content":"f"}}],"obfuscation":null})");
    s.push_back(R"({"id":"c","choices":[{"index":0,"delta":{"content":"g"}}],"obfuscation":null})");
    check_framed_like_parsed(route_kind::chat_completions, true, s, 7);
  }

  SECTION("Responses deltas: the sequence number and the padding are holes too") {
    auto delta = [](int seq, std::string_view text, std::string_view pad) {
      return typed_event("response.output_text.delta",
                         R"({"type":"response.output_text.delta","sequence_number":)" + std::to_string(seq) +
                             R"(,"item_id":"msg_68b1","output_index":0,"content_index":0,"delta":")" + std::string(text) +
                             R"(","logprobs":[],"obfuscation":")" + std::string(pad) + R"("})");
    };
    std::string stream = typed_event("response.created", R"({"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","model":"gpt-5-mini-2025-08-07","status":"in_progress","usage":null}})");
    const char* texts[] = {"Hi", " there", "", " 你好", R"(
)", " a", "b", " ok", "!", " end"};
    const char* pads[] = {"Qx3", "", "aZ09kLmN", "p", "7Hh2", "zz", "q", "Yy", "k", "mm"};
    for (int i = 0; i < 10; ++i) stream += delta(i + 1, texts[i], pads[i]);
    stream += delta(7, "x", "y");  // a number seen before: still framed
    std::string odd = delta(12, "lead", "zero");
    odd.replace(odd.find(":12,"), 4, ":012,");  // not JSON: a leading zero
    stream += odd;
    std::string fl = delta(13, "float", "n");
    fl.replace(fl.find(":13,"), 4, ":13.5,");  // a float: valid JSON, another shape
    stream += fl + delta(14, "after", "n");
    stream += typed_event("response.completed", R"({"type":"response.completed","sequence_number":15,"response":{"id":"resp_1","object":"response","model":"gpt-5-mini-2025-08-07","status":"completed","usage":{"input_tokens":12,"output_tokens":20,"total_tokens":32,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}}}})");
    for (auto route : {route_kind::responses, route_kind::other}) check_typed_framed_like_parsed(route, stream, 20, 8);
  }

  SECTION("Anthropic text and thinking deltas go through a frame of their event name") {
    auto delta = [](std::string_view type, std::string_view key, std::string_view text) {
      return typed_event("content_block_delta", R"({"type":"content_block_delta","index":0,"delta":{"type":")" +
                                                    std::string(type) + R"(",")" + std::string(key) + R"(":")" +
                                                    std::string(text) + R"("}})");
    };
    const std::string start = typed_event("message_start", R"({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":25,"output_tokens":1}}})");
    const std::string stop = typed_event("message_delta", R"({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}})") +
                             typed_event("message_stop", R"({"type":"message_stop"})");
    std::string stream = start;
    for (std::string_view t : {"Let", " me", " think", R"( \n)"}) stream += delta("thinking_delta", "thinking", t);
    for (std::string_view t : {"Hello", "!", " 你好", " there", R"(\"x\")", " again", "bad \xC3\x28"}) stream += delta("text_delta", "text", t);
    stream += typed_event("ping", R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"pong"}})");
    stream += stop;
    // " me", " think", "!", " 你好", " there", " again"
    for (auto route : {route_kind::messages, route_kind::other}) check_typed_framed_like_parsed(route, stream, 15, 6);
  }

  SECTION("an event name turns the frame off for that event") {
    stream_meter m(route_kind::chat_completions, false);
    relay(m, data_event(content_chunk("one")) + data_event(content_chunk("two")));
    CHECK(m.framed_events() == 1);
    relay(m, typed_event("error", content_chunk("three")));
    CHECK(m.framed_events() == 1);
    CHECK(m.saw_error());
  }
}

namespace {

// What the relay sends a client that did not ask for include_usage, event by event as
// client_session does (on_event, then append_stripped), beside the general edit of every raw
// event; `pieces` splits the stream as reads from the upstream would.
struct stripped_relay {
  std::string by_meter, by_search;
  std::size_t cut_by_frame = 0, framed = 0;
};
stripped_relay relay_stripped(route_kind route, std::string_view stream, std::size_t piece = 0) {
  stripped_relay r;
  stream_meter meter(route, true);
  sse_parser parser;
  sse_event ev;
  const auto take = [&](bool keep) {
    if (!keep) return;
    meter.append_stripped(ev, r.by_meter);
    tollgate::append_without_null_usage(ev.raw, r.by_search);
  };
  for (std::size_t at = 0; at < stream.size();) {
    const std::size_t n = piece == 0 ? stream.size() : std::min(piece, stream.size() - at);
    parser.append(stream.substr(at, n));
    at += n;
    while (parser.next(ev)) take(meter.on_event(ev));
  }
  while (parser.finish(ev)) take(meter.on_event(ev));
  r.cut_by_frame = meter.cut_by_frame();
  r.framed = meter.framed_events();
  return r;
}

}  // namespace

TEST_CASE("stream_meter: framed chunks lose their null usage where the frame says, as a search would cut them", "[usage][stream]") {
  auto chunk = [](std::string_view text, std::string_view pad) {
    return R"({"id":"chatcmpl-B9MBs","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4.1-mini-2025-04-14","service_tier":"default","system_fingerprint":"fp_b376dfbbd5","choices":[{"index":0,"delta":{"content":")" +
           std::string(text) + R"("},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":")" + std::string(pad) + R"("})";
  };
  const std::string usage_chunk = data_event(R"({"id":"chatcmpl-B9MBs","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":31,"completion_tokens":12,"total_tokens":43}})");
  const char* texts[] = {"Hello", " there", "", " 你好", " usage", R"( \"usage\":null,)", " friend", " ok", "!", " a,b"};
  const char* pads[] = {"Qx3", "", "aZ09kLmN", "p", "usage", "7Hh2", "zz", "q", "Yy", "k"};

  SECTION("OpenAI's chunks: every framed one is cut by the frame, the usage-only chunk is dropped") {
    std::string stream;
    for (int i = 0; i < 10; ++i) stream += data_event(chunk(texts[i], pads[i]));
    stream += usage_chunk + "data: [DONE]\n\n";
    for (std::size_t piece : {std::size_t{0}, std::size_t{7}, std::size_t{300}}) {
      const auto r = relay_stripped(route_kind::chat_completions, stream, piece);
      CHECK(r.by_meter == r.by_search);
      CHECK(r.by_meter.find("\"usage\":") == std::string::npos);  // neither the nulls nor the usage chunk
      CHECK(r.by_meter.find("\"obfuscation\":\"usage\"}") != std::string::npos);  // a hole that spells it stays
      CHECK(r.by_meter.find("\"content\":\" friend\"},\"logprobs\":null,\"finish_reason\":null}],\"obfuscation\":\"zz\"}") != std::string::npos);
      // The first chunk teaches the frame; the escaped text is parsed and read through the search.
      CHECK(r.framed == 8);
      CHECK(r.cut_by_frame == 8);
    }
  }

  SECTION("other spellings and places of the member, CRLF lines, comments and names around the data") {
    std::vector<std::string> shapes = {
        R"({"usage":null,"id":"c","choices":[{"index":0,"delta":{"content":"TEXT"}}]})",
        R"({"id":"c", "usage": null, "choices":[{"index":0,"delta":{"content":"TEXT"}}]})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"TEXT"}}] , "usage": null})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"TEXT"},"usage":null}],"usage":null})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"TEXT"}}],"x":{"usage":null},"usage":null})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"TEXT"}}],"usage":null,"u2":{"a":1,"usage":null},"usage3":null})",
        R"({"id":"c","choices":[{"index":0,"delta":{"content":"TEXT"}}]})",
    };
    for (const auto& shape : shapes) {
      for (std::string_view frame : {"data: %\n\n", "data:%\r\n\r\n", ": keep-alive\ndata: %\n\n", "id: 7\ndata:  %\n\n",
                                     "id: \"q\"\ndata: %\n\n", "data: %\ndata: \n\n"}) {
        std::string stream;
        for (int i = 0; i < 10; ++i) {
          std::string data = shape;
          data.replace(data.find("TEXT"), 4, texts[i]);
          std::string event(frame);
          event.replace(event.find('%'), 1, data);
          stream += event;
        }
        INFO(shape << " in " << frame);
        const auto r = relay_stripped(route_kind::chat_completions, stream);
        CHECK(r.by_meter == r.by_search);
        // A quote around the data (an `id:` in quotes) or two data lines: the search cuts them.
        const bool plain = frame.find('"') == std::string_view::npos && frame.find("data: \n") == std::string_view::npos;
        CHECK((r.cut_by_frame > 0) == plain);
      }
    }
  }
}

TEST_CASE("stream_meter: image, transcription and speech streams end with their usage event", "[usage][stream]") {
  // Shapes as in the OpenAI API reference (image_generation.completed, transcript.text.done,
  // speech.audio.done): usage on the last event, Responses-style.
  SECTION("image generation") {
    stream_meter m(route_kind::other, false);
    relay(m, typed_event("image_generation.partial_image",
                         R"({"type":"image_generation.partial_image","b64_json":"iVBORw0K","partial_image_index":0})") +
                 typed_event("image_generation.completed",
                             R"({"type":"image_generation.completed","b64_json":"iVBORw0K","usage":{"total_tokens":4172,"input_tokens":12,"output_tokens":4160,"input_tokens_details":{"text_tokens":12,"image_tokens":0}}})"));
    REQUIRE(m.has_usage());
    CHECK(m.usage().prompt == 12);
    CHECK(m.usage().completion == 4160);
    CHECK(m.saw_done());
    CHECK(m.knows_end());
  }
  SECTION("transcription: cut before transcript.text.done, it is a known stream without its end") {
    stream_meter m(route_kind::other, false);
    const std::string delta = typed_event("transcript.text.delta", R"({"type":"transcript.text.delta","delta":"Hello there"})");
    relay(m, delta);
    CHECK_FALSE(m.saw_done());
    CHECK(m.knows_end());
    CHECK(m.estimated_completion_tokens() == 3);
    relay(m, typed_event("transcript.text.done",
                         R"({"type":"transcript.text.done","text":"Hello there","usage":{"type":"tokens","input_tokens":14,"input_token_details":{"text_tokens":0,"audio_tokens":14},"output_tokens":45,"total_tokens":59}})"));
    CHECK(m.saw_done());
    CHECK(m.usage().prompt == 14);
    CHECK(m.usage().completion == 45);
  }
  SECTION("speech") {
    stream_meter m(route_kind::other, false);
    relay(m, typed_event("speech.audio.delta", R"({"type":"speech.audio.delta","audio":"UklGRg=="})") +
                 typed_event("speech.audio.done",
                             R"({"type":"speech.audio.done","usage":{"input_tokens":14,"output_tokens":101,"total_tokens":115}})"));
    CHECK(m.saw_done());
    CHECK(m.usage().completion == 101);
  }
  SECTION("a typed stream of an API tollgate does not know ends when its body does") {
    stream_meter m(route_kind::other, false);
    relay(m, typed_event("thing.progress", R"({"type":"thing.progress","pct":50})") +
                 typed_event("thing.done", R"({"type":"thing.done"})"));
    CHECK_FALSE(m.has_usage());
    CHECK_FALSE(m.saw_done());
    CHECK_FALSE(m.knows_end());
  }
  SECTION("chat chunks on a pass-through path still need their [DONE]") {
    stream_meter m(route_kind::other, false);
    relay(m, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n");
    CHECK(m.knows_end());
    CHECK_FALSE(m.saw_done());
  }
}

TEST_CASE("usage: the service tier a response names is read with its usage", "[usage]") {
  SECTION("chat body") {
    const auto f = extract_response(route_kind::chat_completions, R"({"id":"chatcmpl-1","object":"chat.completion",
      "model":"gpt-5-2025-08-07","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5},"service_tier":"flex"})");
    REQUIRE(f.has_usage);
    CHECK(f.usage.tier == service_tier::flex);
    CHECK(extract_response(route_kind::chat_completions,
                           R"({"usage":{"prompt_tokens":1,"completion_tokens":1},"service_tier":"default"})")
              .usage.tier == service_tier::standard);
    CHECK(extract_response(route_kind::chat_completions, R"({"usage":{"prompt_tokens":1,"completion_tokens":1}})")
              .usage.tier == service_tier::none);
    CHECK(extract_response(route_kind::chat_completions,
                           R"({"usage":{"prompt_tokens":1,"completion_tokens":1},"service_tier":null})")
              .usage.tier == service_tier::none);
  }
  SECTION("Responses body and Anthropic usage") {
    CHECK(extract_response(route_kind::responses, R"({"id":"resp_1","object":"response","status":"completed",
      "service_tier":"priority","usage":{"input_tokens":3,"output_tokens":4}})").usage.tier == service_tier::priority);
    CHECK(extract_response(route_kind::messages, R"({"type":"message","usage":{"input_tokens":3,"output_tokens":4,
      "service_tier":"priority"}})").usage.tier == service_tier::priority);
    CHECK(extract_response(route_kind::messages, R"({"type":"message","usage":{"input_tokens":3,"output_tokens":4,
      "service_tier":"standard"}})").usage.tier == service_tier::standard);
  }
  SECTION("names") {
    CHECK(parse_service_tier("auto") == service_tier::standard);
    CHECK(parse_service_tier("scale") == service_tier::scale);
    CHECK(parse_service_tier("ultrafast") == service_tier::other);
    CHECK(to_string(service_tier::standard) == "default");
    CHECK(to_string(service_tier::none).empty());
  }
}

TEST_CASE("stream_meter: the service tier of chat and Responses streams", "[usage][stream]") {
  SECTION("chat chunks name it on every chunk, the usage chunk included") {
    const std::string stream =
        data_event(R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-5","service_tier":"flex","choices":[{"index":0,"delta":{"content":"Hi"}}]})") +
        data_event(R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-5","service_tier":"flex","choices":[{"index":0,"delta":{"content":" there"}}]})") +
        data_event(R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-5","service_tier":"flex","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}})") +
        "data: [DONE]\n\n";
    stream_meter m(route_kind::chat_completions, false);
    relay(m, stream);
    REQUIRE(m.has_usage());
    CHECK(m.usage().tier == service_tier::flex);
    CHECK(m.usage().prompt == 9);
  }
  SECTION("Responses: response.completed's response") {
    const std::string stream = typed_event("response.completed",
        R"({"type":"response.completed","sequence_number":6,"response":{"id":"resp_1","object":"response","status":"completed","model":"o3","service_tier":"priority","usage":{"input_tokens":37,"output_tokens":11}}})");
    stream_meter m(route_kind::responses, true);
    relay(m, stream);
    REQUIRE(m.has_usage());
    CHECK(m.usage().tier == service_tier::priority);
  }
}

TEST_CASE("usage: a Responses reply's web_search_call items are counted as web searches", "[usage]") {
  const std::string output = R"("output":[{"type":"web_search_call","id":"ws_1","status":"completed","action":{"type":"search","query":"a"}},)"
                             R"({"type":"web_search_call","id":"ws_2","status":"completed","action":{"type":"search","query":"b"}},)"
                             R"({"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"x"}]}])";
  const auto f = extract_response(route_kind::responses,
      R"({"id":"resp_1","object":"response","status":"completed","model":"gpt-5",)" + output +
      R"(,"usage":{"input_tokens":30,"output_tokens":4}})");
  REQUIRE(f.has_usage);
  CHECK(f.usage.web_search == 2);
  // A retrieval of a background response (route other) is read by its object.
  CHECK(extract_response(route_kind::other, R"({"id":"resp_1","object":"response","status":"completed",)" + output +
                                                R"(,"usage":{"input_tokens":30,"output_tokens":4}})")
            .usage.web_search == 2);
  CHECK(extract_response(route_kind::chat_completions, R"({"object":"chat.completion",)" + output +
                                                          R"(,"usage":{"prompt_tokens":30,"completion_tokens":4}})")
            .usage.web_search == 0);
  SECTION("stream: response.completed's output") {
    stream_meter m(route_kind::responses, true);
    relay(m, typed_event("response.completed", R"({"type":"response.completed","sequence_number":3,"response":{"id":"resp_1","object":"response","status":"completed",)" +
                                                   output + R"(,"usage":{"input_tokens":30,"output_tokens":4}}})"));
    REQUIRE(m.has_usage());
    CHECK(m.usage().web_search == 2);
  }
}

TEST_CASE("usage: a Responses reply's file_search_call items are counted as file searches", "[usage]") {
  const std::string output = R"("output":[{"type":"file_search_call","id":"fs_1","status":"completed","queries":["a"],"results":null},)"
                             R"({"type":"web_search_call","id":"ws_1","status":"completed"},)"
                             R"({"type":"file_search_call","id":"fs_2","status":"completed","queries":["b"]},)"
                             R"({"type":"file_search_call","id":"fs_3","status":"completed","queries":["c"]},)"
                             R"({"type":"message","id":"msg_1","role":"assistant","content":[{"type":"output_text","text":"x"}]}])";
  const auto f = extract_response(route_kind::responses, R"({"id":"resp_1","object":"response","status":"completed","model":"gpt-4.1",)" +
                                                             output + R"(,"usage":{"input_tokens":3000,"output_tokens":40}})");
  REQUIRE(f.has_usage);
  CHECK(f.usage.file_search == 3);
  CHECK(f.usage.web_search == 1);
  stream_meter m(route_kind::responses, true);
  relay(m, typed_event("response.completed", R"({"type":"response.completed","response":{"id":"resp_1","object":"response","status":"completed",)" +
                                                 output + R"(,"usage":{"input_tokens":3000,"output_tokens":40}}})"));
  REQUIRE(m.has_usage());
  CHECK(m.usage().file_search == 3);
}

TEST_CASE("usage: gpt-image-1's image input tokens are read from input_tokens_details", "[usage]") {
  const auto f = extract_response(route_kind::other, R"({"created":1764460800,"data":[{"b64_json":"aGVsbG8="}],
    "usage":{"input_tokens":612,"output_tokens":4160,"total_tokens":4772,
             "input_tokens_details":{"text_tokens":12,"image_tokens":600}}})");
  REQUIRE(f.has_usage);
  CHECK(f.usage.prompt == 612);
  CHECK(f.usage.image_in == 600);
  CHECK(f.usage.completion == 4160);
  CHECK(f.usage.text_out == 0);
  // gpt-image-1.5 and 2 split their output into image and text tokens.
  const auto split = extract_response(route_kind::other, R"({"created":1764460800,"data":[{"b64_json":"aGVsbG8="}],
    "usage":{"input_tokens":12,"output_tokens":4260,"total_tokens":4272,
             "input_tokens_details":{"text_tokens":12,"image_tokens":0},
             "output_tokens_details":{"image_tokens":4160,"text_tokens":100}}})");
  REQUIRE(split.has_usage);
  CHECK(split.usage.completion == 4260);
  CHECK(split.usage.text_out == 100);
  const auto odd = extract_response(route_kind::other, R"({"usage":{"input_tokens":1,"output_tokens":50,
             "output_tokens_details":{"text_tokens":70}}})");
  CHECK(odd.usage.text_out == 50);
}

TEST_CASE("usage: audio tokens of chat and transcription replies", "[usage]") {
  const auto chat = extract_response(route_kind::chat_completions, R"({"object":"chat.completion","model":"gpt-4o-audio-preview",
    "usage":{"prompt_tokens":1000,"completion_tokens":500,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":700},
             "completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":400}}})");
  REQUIRE(chat.has_usage);
  CHECK(chat.usage.audio_in == 700);
  CHECK(chat.usage.audio_out == 400);
  const auto transcript = extract_response(route_kind::other, R"({"text":"Hello.","usage":{"type":"tokens",
    "input_tokens":1200,"input_token_details":{"text_tokens":50,"audio_tokens":1150},"output_tokens":80,"total_tokens":1280}})");
  REQUIRE(transcript.has_usage);
  CHECK(transcript.usage.prompt == 1200);
  CHECK(transcript.usage.audio_in == 1150);
  CHECK(transcript.usage.completion == 80);
  // Counts past their totals are clamped.
  const auto odd = extract_response(route_kind::chat_completions, R"({"usage":{"prompt_tokens":10,"completion_tokens":5,
    "prompt_tokens_details":{"audio_tokens":70},"completion_tokens_details":{"audio_tokens":40}}})");
  CHECK(odd.usage.audio_in == 10);
  CHECK(odd.usage.audio_out == 5);
  // whisper-1 reports the audio's length; nonsense lengths count nothing.
  const auto whisper = extract_response(route_kind::other, R"({"text":"Hi.","usage":{"type":"duration","seconds":12.25}})");
  REQUIRE(whisper.has_usage);
  CHECK(whisper.usage.audio_ms == 12'250);
  CHECK(whisper.usage.prompt == 0);
  const auto big = std::string(R"({"text":"Hi.","usage":{"type":"duration","seconds":7}})") + std::string(2 << 20, ' ');
  CHECK(extract_response(route_kind::other, big).usage.audio_ms == 7'000);  // the large-document reader
  CHECK(!extract_response(route_kind::other, R"({"usage":{"type":"duration","seconds":-1}})").has_usage);
  CHECK(!extract_response(route_kind::other, R"({"usage":{"type":"duration","seconds":"3"}})").has_usage);
}

TEST_CASE("usage: an Anthropic batch's results are summed per model, succeeded requests only", "[usage]") {
  const std::string jsonl =
      R"({"custom_id":"a","result":{"type":"succeeded","message":{"model":"claude-sonnet-4-5","usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":3}}}})" "\n"
      R"({"custom_id":"b","result":{"type":"errored","error":{"type":"invalid_request","message":"x"}}})" "\n"
      R"({"custom_id":"c","result":{"type":"succeeded","message":{"model":"claude-haiku-4-5","usage":{"input_tokens":7,"output_tokens":2}}}})" "\r\n"
      "not json\n\n"
      R"({"custom_id":"d","result":{"type":"succeeded","message":{"model":"claude-sonnet-4-5","usage":{"input_tokens":1,"output_tokens":1}}}})";
  const auto r = tollgate::extract_batch_results(jsonl);
  CHECK(r.succeeded == 3);
  REQUIRE(r.by_model.size() == 2);
  CHECK(r.by_model[0].first == "claude-sonnet-4-5");
  CHECK(r.by_model[0].second.prompt == 16);  // input + cache reads, as every Anthropic row
  CHECK(r.by_model[0].second.cached == 5);
  CHECK(r.by_model[0].second.completion == 4);
  CHECK(r.by_model[0].second.tier == service_tier::batch);
  CHECK(r.by_model[1].first == "claude-haiku-4-5");
  CHECK(r.by_model[1].second.prompt == 7);
  CHECK(tollgate::extract_batch_results("").succeeded == 0);
}

TEST_CASE("usage: DALL-E and Sora calls are billed per image and per second of video", "[usage][media]") {
  using tollgate::media_call;
  using tollgate::media_call_of;
  using tollgate::media_request;
  using tollgate::media_usage;
  CHECK(media_call_of("POST", "/v1/images/generations") == media_call::images);
  CHECK(media_call_of("POST", "/v1/images/edits/") == media_call::images);
  CHECK(media_call_of("POST", "/v1/images/variations") == media_call::images);
  CHECK(media_call_of("GET", "/v1/images/generations") == media_call::none);
  CHECK(media_call_of("POST", "/v1/videos") == media_call::video);
  CHECK(media_call_of("POST", "/v1/videos/video_123/remix") == media_call::video_remix);
  CHECK(media_call_of("GET", "/v1/videos/video_123") == media_call::none);  // a retrieval bills nothing
  CHECK(media_call_of("POST", "/v1/videos/video_123") == media_call::none);
  CHECK(media_call_of("POST", "/v1/videos//remix") == media_call::none);
  CHECK(media_call_of("POST", "/v1/videos/a/b/remix") == media_call::none);
  CHECK(media_call_of("DELETE", "/v1/videos/video_123") == media_call::none);
  CHECK(tollgate::remix_source_id("POST", "/v1/videos/video_123/remix") == "video_123");
  CHECK(tollgate::remix_source_id("POST", "/v1/videos/video_123/remix/") == "video_123");
  CHECK(tollgate::remix_source_id("GET", "/v1/videos/video_123/remix").empty());
  CHECK(tollgate::remix_source_id("POST", "/v1/videos//remix").empty());
  CHECK(tollgate::remix_source_id("POST", "/v1/videos/a/b/remix").empty());
  CHECK(tollgate::remix_source_id("POST", "/v1/videos").empty());
  CHECK(tollgate::extract_media(R"({"id":"video_9","object":"video","model":"sora-2"})").id == "video_9");
  CHECK(tollgate::extract_media(R"({"id":9,"object":"video"})").id.empty());

  const auto req = tollgate::media_request_of(R"({"model":"dall-e-3","prompt":"x","n":1,"size":"1792x1024","quality":"hd"})");
  CHECK(req.size == "1792x1024");
  CHECK(req.quality == "hd");
  CHECK(tollgate::media_request_of(R"({"seconds": 8})").seconds == "8");
  CHECK(tollgate::media_request_of("not json").size.empty());

  SECTION("images: the reply's data entries at the request's size and quality") {
    const auto reply = tollgate::extract_media(R"({"created":1,"data":[{"url":"u1","revised_prompt":"p"},{"url":"u2"}]})");
    CHECK(reply.images == 2);
    const auto u = media_usage(media_call::images, req, reply);
    REQUIRE(u);
    CHECK(u->images == 2);
    CHECK((u->media_w == 1792 && u->media_h == 1024 && u->media_hd));
    CHECK(u->prompt == 0);
    // No size asked: the API's default 1024x1024, standard quality.
    const auto d = media_usage(media_call::images, {}, reply);
    REQUIRE(d);
    CHECK((d->media_w == 1024 && d->media_h == 1024 && !d->media_hd));
    // The reply's own size and quality win (gpt-image-style replies state them).
    const auto stated = tollgate::extract_media(R"({"data":[{"b64_json":"x"}],"size":"1024x1536","quality":"standard"})");
    const auto s = media_usage(media_call::images, req, stated);
    REQUIRE(s);
    CHECK((s->media_w == 1024 && s->media_h == 1536 && !s->media_hd));
    // Token usage (gpt-image-1) is priced by its tokens, not here; an empty or missing data bills nothing.
    CHECK_FALSE(media_usage(media_call::images, req, tollgate::extract_media(R"({"data":[{}],"usage":{"input_tokens":1}})")));
    CHECK_FALSE(media_usage(media_call::images, req, tollgate::extract_media(R"({"data":[]})")));
    CHECK_FALSE(media_usage(media_call::images, req, tollgate::extract_media(R"({"error":{"message":"x"}})")));
    CHECK_FALSE(media_usage(media_call::images, req, tollgate::extract_media("<html>")));
  }
  SECTION("videos: the video object's seconds and size, else the request's, else the defaults") {
    const auto v = tollgate::extract_media(
        R"({"id":"video_1","object":"video","model":"sora-2-pro","status":"queued","size":"1792x1024","seconds":"12"})");
    CHECK(v.seconds == 12);
    CHECK(v.model == "sora-2-pro");
    const auto u = media_usage(media_call::video, {}, v);
    REQUIRE(u);
    CHECK(u->video_seconds == 12);
    CHECK((u->media_w == 1792 && u->media_h == 1024));
    const auto bare = tollgate::extract_media(R"({"id":"video_1","object":"video","status":"queued"})");
    const auto r = media_usage(media_call::video, media_request{"1280x720", "", "8", ""}, bare);
    REQUIRE(r);
    CHECK(r->video_seconds == 8);
    CHECK((r->media_w == 1280 && r->media_h == 720));
    const auto def = media_usage(media_call::video, {}, bare);
    REQUIRE(def);
    CHECK(def->video_seconds == 4);
    CHECK((def->media_w == 720 && def->media_h == 1280));
    CHECK(tollgate::extract_media(R"({"object":"video","seconds":8})").seconds == 8);
    CHECK(tollgate::extract_media(R"({"object":"video","seconds":"8.5"})").seconds == -1);
    // A video that failed at once, or a reply that is not a video object, bills nothing.
    CHECK_FALSE(media_usage(media_call::video, {}, tollgate::extract_media(R"({"object":"video","status":"failed","seconds":"4"})")));
    CHECK_FALSE(media_usage(media_call::video, {}, tollgate::extract_media(R"({"object":"list","data":[]})")));
  }
}
