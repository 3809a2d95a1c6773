// Builds the fake upstream's answers (chat, completions, embeddings, responses, messages and their
// token count, models, echo, errors) from a recorded request and its x-fake-* knobs;
// fake_upstream.cpp sends them.
#include "replies.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

namespace fake::detail {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;  // keeps keys in wire order, so "usage" comes last like OpenAI's
using std::chrono::milliseconds;

constexpr std::string_view reply_sentence = "Hello! This is the tollgate fake upstream speaking.";
constexpr std::string_view tool_arguments = R"({"location":"Paris"})";
constexpr std::size_t tool_piece_chars = 5;  // streamed arguments arrive split mid-token, as OpenAI does
constexpr std::string_view json_type = "application/json";
constexpr std::string_view sse_type = "text/event-stream; charset=utf-8";

enum class api { openai, anthropic };

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::optional<long long> header_number(const recorded_request& req, std::string_view name) {
  const std::string v = req.header(name);
  long long n = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (v.empty() || ec != std::errc{} || end != v.data() + v.size() || n < 0) return std::nullopt;
  return n;
}

fault parse_fault(std::string_view name) {
  static constexpr std::pair<std::string_view, fault> table[] = {
      {"reset-before-headers", fault::reset_before_headers},
      {"reset-mid-body", fault::reset_mid_body},
      {"reset-mid-stream", fault::reset_mid_stream},
      {"stall-before-headers", fault::stall_before_headers},
      {"stall-mid-stream", fault::stall_mid_stream},
      {"garbage", fault::garbage},
      {"not-json", fault::not_json},
      {"truncated-json", fault::truncated_json},
      {"wrong-content-length", fault::wrong_content_length},
      {"bad-chunked", fault::bad_chunked},
      {"cut-stream", fault::cut_stream},
      {"error-mid-stream", fault::error_mid_stream},
      {"close-after-response", fault::close_after_response},
  };
  for (const auto& [text, f] : table)
    if (text == name) return f;
  return fault::none;
}

// Faults that damage a whole body or its framing, so the reply is not streamed.
bool body_fault(fault f) {
  return f == fault::reset_mid_body || f == fault::not_json || f == fault::truncated_json ||
         f == fault::wrong_content_length || f == fault::bad_chunked;
}

const json& field(const json& obj, const char* name) {
  static const json null_value;
  const auto it = obj.find(name);
  return it == obj.end() ? null_value : *it;
}

std::string string_field(const json& obj, const char* name, std::string fallback) {
  const json& v = field(obj, name);
  return v.is_string() ? v.get<std::string>() : fallback;
}

// Characters of prompt text anywhere in a content value: a string, an array of parts, or objects
// whose "text"/"content" hold text (chat messages, Responses input items, Anthropic blocks).
// A number in a token array counts as one token's worth (4 characters).
std::size_t text_chars(const json& v) {
  if (v.is_string()) return v.get_ref<const std::string&>().size();
  if (v.is_number()) return 4;
  std::size_t n = 0;
  if (v.is_array())
    for (const auto& e : v) n += text_chars(e);
  if (v.is_object()) n += text_chars(field(v, "text")) + text_chars(field(v, "content"));
  return n;
}

struct token_counts {
  long long prompt = 0, completion = 0, cached = 0, reasoning = 0, cache_creation = 0, cache_creation_1h = 0;
  bool reasoning_beside = false;  // knobs::reasoning_beside
  const std::string* usage_extra = nullptr;  // knobs::usage_extra
};

// x-fake-usage-extra's members (a JSON object) added to an OpenAI-shaped usage, as a relay
// adds its own (OpenRouter's cost, is_byok, cost_details; Perplexity's cost object).
void add_usage_extra(ojson& usage, const std::string* members) {
  if (members == nullptr || members->empty()) return;
  const ojson extra = ojson::parse(*members, nullptr, false);
  if (!extra.is_object()) return;
  for (auto it = extra.begin(); it != extra.end(); ++it) usage[it.key()] = it.value();
}

// prompt = 10 + chars/4; completion = reply pieces + reasoning (reasoning is part of completion);
// cached is part of prompt, so prompt grows to hold it.
token_counts count_tokens(std::size_t prompt_chars, std::size_t reply_pieces, const knobs& k) {
  token_counts t;
  t.prompt = std::max<long long>(10 + static_cast<long long>(prompt_chars / 4), k.cached_tokens);
  t.completion = static_cast<long long>(reply_pieces) + k.reasoning_tokens;
  t.cached = k.cached_tokens;
  t.reasoning = k.reasoning_tokens;
  t.cache_creation = k.cache_creation_tokens;
  t.reasoning_beside = k.reasoning_beside;
  t.usage_extra = &k.usage_extra;
  return t;
}

// OpenAI never reports cache writes; a relay serving Claude through the chat API does, as
// OpenRouter does (prompt_tokens_details.cache_write_tokens, part of prompt_tokens): given when
// x-fake-cache-creation-tokens asks for writes.
ojson openai_usage(const token_counts& t) {
  const long long writes = t.cache_creation + t.cache_creation_1h;
  const long long prompt = writes > 0 ? t.prompt + writes : t.prompt;
  ojson details = {{"cached_tokens", t.cached}, {"audio_tokens", 0}};
  if (writes > 0) details["cache_write_tokens"] = writes;
  ojson u = {{"prompt_tokens", prompt},
             {"completion_tokens", t.reasoning_beside ? t.completion - t.reasoning : t.completion},
             {"total_tokens", prompt + t.completion},
             {"prompt_tokens_details", details},
             {"completion_tokens_details",
              {{"reasoning_tokens", t.reasoning},
               {"audio_tokens", 0},
               {"accepted_prediction_tokens", 0},
               {"rejected_prediction_tokens", 0}}}};
  add_usage_extra(u, t.usage_extra);
  return u;
}

ojson responses_usage(const token_counts& t) {
  ojson u = {{"input_tokens", t.prompt},
             {"input_tokens_details", {{"cached_tokens", t.cached}}},
             {"output_tokens", t.completion},
             {"output_tokens_details", {{"reasoning_tokens", t.reasoning}}},
             {"total_tokens", t.prompt + t.completion}};
  add_usage_extra(u, t.usage_extra);
  return u;
}

// Anthropic's input_tokens excludes cache reads and writes: t.prompt here is the uncached part.
// A message's usage splits the writes by cache lifetime in `cache_creation` (5-minute and 1-hour
// writes bill at different prices); cache_creation_input_tokens is their sum.
ojson anthropic_usage(const token_counts& t, long long output_tokens) {
  return {{"input_tokens", t.prompt},
          {"cache_creation_input_tokens", t.cache_creation + t.cache_creation_1h},
          {"cache_read_input_tokens", t.cached},
          {"cache_creation",
           {{"ephemeral_5m_input_tokens", t.cache_creation}, {"ephemeral_1h_input_tokens", t.cache_creation_1h}}},
          {"output_tokens", output_tokens},
          {"service_tier", "standard"}};
}

// message_delta's usage: the cumulative counts only, without the split or the service tier.
ojson anthropic_delta_usage(const token_counts& t) {
  return {{"input_tokens", t.prompt},
          {"cache_creation_input_tokens", t.cache_creation + t.cache_creation_1h},
          {"cache_read_input_tokens", t.cached},
          {"output_tokens", t.completion}};
}

// The reply text as stream pieces: one per word (joined they give the sentence), or N x "tok ".
std::vector<std::string> content_pieces(const knobs& k) {
  if (k.chunks) return std::vector<std::string>(static_cast<std::size_t>(*k.chunks), "tok ");
  std::vector<std::string> pieces;
  std::size_t pos = 0;
  while (pos < reply_sentence.size()) {
    const std::size_t space = std::min(reply_sentence.find(' ', pos + 1), reply_sentence.size());
    pieces.emplace_back(reply_sentence.substr(pos, space - pos));
    pos = space;
  }
  return pieces;
}

std::vector<std::string> tool_argument_pieces() {
  std::vector<std::string> pieces;
  for (std::size_t i = 0; i < tool_arguments.size(); i += tool_piece_chars)
    pieces.emplace_back(tool_arguments.substr(i, tool_piece_chars));
  return pieces;
}

std::string join(const std::vector<std::string>& pieces) {
  std::string out;
  for (const auto& p : pieces) out += p;
  return out;
}

std::string data_event(const ojson& j) { return "data: " + j.dump() + "\n\n"; }

std::string typed_event(std::string_view type, const ojson& j) {
  return "event: " + std::string(type) + "\ndata: " + j.dump() + "\n\n";
}

ojson headers_object(const recorded_request& req) {
  ojson out = ojson::object();
  for (const auto& [name, value] : req.headers) {
    const std::string key = lower(name);
    if (out.contains(key))
      out[key] = out[key].get<std::string>() + ", " + value;
    else
      out[key] = value;
  }
  return out;
}

reply json_reply(unsigned status, const ojson& body) {
  reply r;
  r.status = status;
  r.headers.emplace_back("Content-Type", json_type);
  // An echo may carry a binary upload (a file, audio): bytes that are not UTF-8 are replaced
  // (U+FFFD) instead of making dump() throw, which closed the connection without an answer.
  r.body = body.dump(-1, ' ', false, ojson::error_handler_t::replace);
  return r;
}

reply error_reply(api style, unsigned status, std::string_view message, const char* code = nullptr) {
  ojson body;
  if (style == api::anthropic) {
    const char* type = status == 400   ? "invalid_request_error"
                       : status == 401 ? "authentication_error"
                       : status == 403 ? "permission_error"
                       : status == 404 ? "not_found_error"
                       : status == 413 ? "request_too_large"
                       : status == 429 ? "rate_limit_error"
                       : status == 529 ? "overloaded_error"
                                       : "api_error";
    body = {{"type", "error"}, {"error", {{"type", type}, {"message", message}}}};
  } else {
    const char* type = status == 401   ? "authentication_error"
                       : status == 403 ? "permission_error"
                       : status == 404 ? "not_found_error"
                       : status == 429 ? "rate_limit_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    body = {{"error",
             {{"message", message},
              {"type", type},
              {"param", nullptr},
              {"code", code ? ojson(code) : ojson(nullptr)}}}};
  }
  reply r = json_reply(status, body);
  if (status == 429) {
    r.headers.insert(r.headers.end(), {{"Retry-After", "1"},
                                       {"x-ratelimit-limit-requests", "500"},
                                       {"x-ratelimit-remaining-requests", "0"},
                                       {"x-ratelimit-reset-requests", "1s"},
                                       {"x-ratelimit-limit-tokens", "30000"},
                                       {"x-ratelimit-remaining-tokens", "0"},
                                       {"x-ratelimit-reset-tokens", "6m0s"}});
  }
  return r;
}

reply stream_reply(std::vector<sse_event> events, std::string error_event) {
  reply r;
  r.headers.emplace_back("Content-Type", sse_type);
  r.stream = true;
  r.events = std::move(events);
  r.error_event = std::move(error_event);
  return r;
}

const std::string openai_stream_error =
    R"(data: {"error":{"message":"upstream overloaded","type":"server_error"}})"
    "\n\n";

// One step of an OpenAI-style stream: choices[0] of a chunk, and the completion tokens produced
// up to and including it (for x-fake-usage: every-chunk).
struct stream_step {
  ojson choice;
  long long tokens_after = 0;
  milliseconds delay_before{0};
};

// Wraps the steps into chunks and places usage where the knobs say (see WIRE.md, "Where usage lives").
std::vector<sse_event> openai_stream(const ojson& head, const std::vector<stream_step>& steps,
                                     const token_counts& t, const knobs& k, bool include_usage) {
  std::vector<sse_event> out;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    ojson chunk = head;
    chunk["choices"] = ojson::array({steps[i].choice});
    if (k.usage == usage_mode::normal && include_usage) chunk["usage"] = nullptr;
    if (k.usage == usage_mode::last_chunk && i + 1 == steps.size()) chunk["usage"] = openai_usage(t);
    if (k.usage == usage_mode::in_choice && i + 1 == steps.size()) chunk["choices"][0]["usage"] = openai_usage(t);
    if (k.usage == usage_mode::every_chunk) {
      token_counts running = t;
      running.completion = t.reasoning + steps[i].tokens_after;
      chunk["usage"] = openai_usage(running);
    }
    out.push_back({data_event(chunk), steps[i].delay_before});
  }
  if (k.usage == usage_mode::normal && include_usage) {
    ojson chunk = head;
    chunk["choices"] = ojson::array();
    chunk["usage"] = openai_usage(t);
    out.push_back({data_event(chunk)});
  }
  out.push_back({"data: [DONE]\n\n"});
  return out;
}

// Content steps: one per piece, the ones after the first spaced by x-fake-chunk-interval-ms.
template <class MakeChoice>
void add_piece_steps(std::vector<stream_step>& steps, const std::vector<std::string>& pieces,
                     const knobs& k, MakeChoice make_choice) {
  for (std::size_t i = 0; i < pieces.size(); ++i)
    steps.push_back({make_choice(pieces[i]), static_cast<long long>(i + 1),
                     i == 0 ? milliseconds{0} : k.chunk_interval});
}

bool wants_stream(const json& body, const knobs& k) {
  return field(body, "stream") == true && !body_fault(k.fault_kind);
}

bool wants_usage_chunk(const json& body) {
  return field(field(body, "stream_options"), "include_usage") == true;
}

// x-fake-body-bytes: the content ends in this marker (dumped as "\u0001pad\u0001"), which is then
// replaced by padding so the JSON is exactly the asked size, without dumping 16 MiB through nlohmann.
constexpr std::string_view pad_marker = "\x01pad\x01";
constexpr std::string_view pad_marker_dumped = "\\u0001pad\\u0001";

void splice_padding(std::string& dumped, std::size_t bytes) {
  const std::size_t at = dumped.find(pad_marker_dumped);
  if (at == std::string::npos) return;
  const std::size_t rest = dumped.size() - pad_marker_dumped.size();
  const std::size_t pad = bytes > rest ? bytes - rest : 0;
  std::string out;
  out.reserve(rest + pad);
  out.append(dumped, 0, at);
  static const std::string block = [] {
    std::string b;
    while (b.size() < 4096) b += "lorem ipsum ";
    return b;
  }();
  for (std::size_t left = pad; left > 0;) {
    const std::size_t n = std::min(left, block.size());
    out.append(block, 0, n);
    left -= n;
  }
  out.append(dumped, at + pad_marker_dumped.size());
  dumped = std::move(out);
}

// The tier OpenAI says served a call: the one asked for when it is flex or priority (as when the
// project has them), else default.
std::string served_tier(const json& body) {
  const std::string asked = string_field(body, "service_tier", "");
  return asked == "flex" || asked == "priority" ? asked : "default";
}

reply chat_reply(const json& body, const recorded_request& req, const knobs& k, std::uint64_t n) {
  const std::string model = string_field(body, "model", "fake-model");
  const std::string id = "chatcmpl-fake" + std::to_string(n);
  const std::string call_id = "call_fake" + std::to_string(n);
  const auto created = static_cast<long long>(std::time(nullptr));
  const json& tools = field(body, "tools");
  const bool tool_call = tools.is_array() && !tools.empty();
  std::string tool_name;
  if (tool_call) {
    const json& first = tools.front();
    tool_name = string_field(field(first, "function"), "name", string_field(first, "name", "tool"));
  }
  const auto pieces = tool_call ? tool_argument_pieces() : content_pieces(k);
  const token_counts t = count_tokens(text_chars(field(body, "messages")), pieces.size(), k);
  const char* finish = tool_call ? "tool_calls" : "stop";

  if (!wants_stream(body, k)) {
    ojson message = {{"role", "assistant"}};
    if (tool_call) {
      message["content"] = nullptr;
      message["tool_calls"] = ojson::array(
          {{{"id", call_id},
            {"type", "function"},
            {"function", {{"name", tool_name}, {"arguments", tool_arguments}}}}});
    } else {
      message["content"] = join(pieces) + (k.body_bytes ? std::string(pad_marker) : "");
    }
    message["refusal"] = nullptr;
    message["annotations"] = ojson::array();
    ojson j = {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", model}};
    j["choices"] = ojson::array(
        {{{"index", 0}, {"message", message}, {"logprobs", nullptr}, {"finish_reason", finish}}});
    if (k.echo_headers) j["received_headers"] = headers_object(req);
    j["service_tier"] = served_tier(body);
    j["system_fingerprint"] = "fp_fake";
    if (!k.provider.empty()) j["provider"] = k.provider;
    if (k.usage != usage_mode::none) j["usage"] = openai_usage(t);
    reply r = json_reply(200, j);
    if (k.body_bytes) splice_padding(r.body, *k.body_bytes);
    return r;
  }

  ojson head = {{"id", id},
                {"object", "chat.completion.chunk"},
                {"created", created},
                {"model", model},
                {"service_tier", served_tier(body)},
                {"system_fingerprint", "fp_fake"}};
  if (!k.provider.empty()) head["provider"] = k.provider;
  auto choice = [](ojson delta, ojson finish_reason) {
    return ojson{{"index", 0}, {"delta", std::move(delta)}, {"logprobs", nullptr},
                 {"finish_reason", std::move(finish_reason)}};
  };
  std::vector<stream_step> steps;
  if (tool_call) {
    steps.push_back({choice({{"role", "assistant"},
                             {"content", nullptr},
                             {"tool_calls", ojson::array({{{"index", 0},
                                                           {"id", call_id},
                                                           {"type", "function"},
                                                           {"function", {{"name", tool_name}, {"arguments", ""}}}}})}},
                            nullptr)});
    add_piece_steps(steps, pieces, k, [&](const std::string& p) {
      return choice(
          {{"tool_calls", ojson::array({{{"index", 0}, {"function", {{"arguments", p}}}}})}}, nullptr);
    });
  } else {
    steps.push_back({choice({{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}}, nullptr)});
    add_piece_steps(steps, pieces, k,
                    [&](const std::string& p) { return choice({{"content", p}}, nullptr); });
  }
  steps.push_back({choice(ojson::object(), finish), static_cast<long long>(pieces.size())});
  return stream_reply(openai_stream(head, steps, t, k, wants_usage_chunk(body)), openai_stream_error);
}

reply completions_reply(const json& body, const knobs& k, std::uint64_t n) {
  const std::string model = string_field(body, "model", "fake-model");
  const auto created = static_cast<long long>(std::time(nullptr));
  const auto pieces = content_pieces(k);
  const token_counts t = count_tokens(text_chars(field(body, "prompt")), pieces.size(), k);
  const ojson head = {{"id", "cmpl-fake" + std::to_string(n)},
                      {"object", "text_completion"},
                      {"created", created},
                      {"model", model}};
  auto choice = [](std::string text, ojson finish_reason) {
    return ojson{{"text", std::move(text)}, {"index", 0}, {"logprobs", nullptr},
                 {"finish_reason", std::move(finish_reason)}};
  };
  if (!wants_stream(body, k)) {
    ojson j = head;
    j["choices"] = ojson::array({choice(join(pieces), "stop")});
    if (k.usage != usage_mode::none) j["usage"] = openai_usage(t);
    return json_reply(200, j);
  }
  std::vector<stream_step> steps;
  add_piece_steps(steps, pieces, k, [&](const std::string& p) { return choice(p, nullptr); });
  steps.push_back({choice("", "stop"), static_cast<long long>(pieces.size())});
  return stream_reply(openai_stream(head, steps, t, k, wants_usage_chunk(body)), openai_stream_error);
}

// A unit-length 8-dim vector derived from the input text (FNV-1a), so equal inputs embed equally.
std::array<float, 8> embed(const json& input) {
  const std::string text = input.dump();
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  std::array<float, 8> v{};
  double norm = 0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    v[i] = static_cast<float>(std::sin(static_cast<double>((h >> (i * 8)) & 0xff) + static_cast<double>(i)));
    norm += static_cast<double>(v[i]) * v[i];
  }
  for (float& x : v) x = static_cast<float>(x / std::sqrt(norm));
  return v;
}

// The official Node SDK asks for encoding_format "base64" by default and decodes little-endian
// float32 itself, so both formats must be right.
reply embeddings_reply(const json& body, const knobs& k) {
  const json& input = field(body, "input");
  std::vector<json> inputs;
  const bool token_array = input.is_array() && !input.empty() &&
                           std::all_of(input.begin(), input.end(), [](const json& e) { return e.is_number(); });
  if (input.is_array() && !token_array)
    inputs.assign(input.begin(), input.end());
  else
    inputs.push_back(input);
  const bool as_base64 = string_field(body, "encoding_format", "float") == "base64";
  ojson data = ojson::array();
  long long prompt_tokens = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    prompt_tokens += std::max<long long>(1, static_cast<long long>(text_chars(inputs[i]) / 4));
    const auto v = embed(inputs[i]);
    ojson embedding;
    if (as_base64) {
      std::array<unsigned char, sizeof(v)> bytes;
      std::memcpy(bytes.data(), v.data(), sizeof(v));  // x86/ARM are little-endian, as the wire wants
      embedding = base64(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    } else {
      embedding = ojson(std::vector<float>(v.begin(), v.end()));
    }
    data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", std::move(embedding)}});
  }
  ojson j = {{"object", "list"}, {"data", std::move(data)}, {"model", string_field(body, "model", "fake-model")}};
  if (k.usage != usage_mode::none) {
    j["usage"] = {{"prompt_tokens", prompt_tokens}, {"total_tokens", prompt_tokens}};
    add_usage_extra(j["usage"], &k.usage_extra);  // OpenRouter's embeddings state their cost too
  }
  return json_reply(200, j);
}

reply responses_reply(const json& body, const knobs& k, std::uint64_t n) {
  const std::string model = string_field(body, "model", "fake-model");
  const bool background = field(body, "background").is_boolean() && field(body, "background").get<bool>();
  // A background response's id is one GET /responses/resp_bg_* answers later (streamed or not).
  const std::string resp_id = (background ? "resp_bg_" : "resp_fake") + std::to_string(n);
  const std::string msg_id = "msg_fake" + std::to_string(n);
  const auto pieces = content_pieces(k);
  const std::string text = join(pieces);
  const token_counts t =
      count_tokens(text_chars(field(body, "input")) + text_chars(field(body, "instructions")), pieces.size(), k);

  auto part = [](const std::string& s) {
    return ojson{{"type", "output_text"}, {"text", s}, {"annotations", ojson::array()}, {"logprobs", ojson::array()}};
  };
  auto item = [&](const char* status, ojson content) {
    return ojson{{"type", "message"}, {"id", msg_id}, {"status", status}, {"role", "assistant"},
                 {"content", std::move(content)}};
  };
  auto response = [&](const char* status, ojson output, bool with_usage) {
    ojson r = {{"id", resp_id},
               {"object", "response"},
               {"created_at", static_cast<long long>(std::time(nullptr))},
               {"status", status},
               {"error", nullptr},
               {"incomplete_details", nullptr},
               {"instructions", field(body, "instructions").is_string() ? ojson(field(body, "instructions"))
                                                                         : ojson(nullptr)},
               {"model", model},
               {"output", std::move(output)},
               {"parallel_tool_calls", true},
               {"service_tier", served_tier(body)},
               {"tool_choice", "auto"},
               {"tools", ojson::array()},
               {"text", {{"format", {{"type", "text"}}}}}};
    if (background) r["background"] = true;
    r["usage"] = with_usage && k.usage != usage_mode::none ? responses_usage(t) : ojson(nullptr);
    return r;
  };
  const ojson done_item = item("completed", ojson::array({part(text)}));
  // With the hosted web_search tool in the request, the model searched once before answering.
  ojson final_output = ojson::array();
  const json& tools = field(body, "tools");
  if (tools.is_array())
    for (const json& tool : tools)
      if (string_field(tool, "type", "").rfind("web_search", 0) == 0) {
        final_output.push_back({{"type", "web_search_call"},
                                {"id", "ws_fake"},
                                {"status", "completed"},
                                {"action", {{"type", "search"}, {"query", "fake query"}}}});
        break;
      }
  // With the hosted file_search tool, two searches of the vector stores.
  if (tools.is_array())
    for (const json& tool : tools)
      if (string_field(tool, "type", "") == "file_search") {
        for (const char* id : {"fs_fake_1", "fs_fake_2"})
          final_output.push_back({{"type", "file_search_call"}, {"id", id}, {"status", "completed"},
                                  {"queries", ojson::array({"fake query"})}, {"results", nullptr}});
        break;
      }
  final_output.push_back(done_item);

  if (background && !wants_stream(body, k))  // queued now, no usage; GET /responses/resp_bg_* later says completed
    return json_reply(200, response("queued", ojson::array(), false));
  if (!wants_stream(body, k)) return json_reply(200, response("completed", final_output, true));

  std::vector<sse_event> events;
  long long seq = 0;
  auto add = [&](std::string_view type, ojson fields, milliseconds delay = milliseconds{0}) {
    ojson e = {{"type", type}, {"sequence_number", seq++}};
    e.update(fields);
    events.push_back({typed_event(type, e), delay});
  };
  add("response.created", {{"response", response("in_progress", ojson::array(), false)}});
  add("response.in_progress", {{"response", response("in_progress", ojson::array(), false)}});
  add("response.output_item.added", {{"output_index", 0}, {"item", item("in_progress", ojson::array())}});
  add("response.content_part.added",
      {{"item_id", msg_id}, {"output_index", 0}, {"content_index", 0}, {"part", part("")}});
  for (std::size_t i = 0; i < pieces.size(); ++i)
    add("response.output_text.delta",
        {{"item_id", msg_id}, {"output_index", 0}, {"content_index", 0}, {"delta", pieces[i]},
         {"logprobs", ojson::array()}},
        i == 0 ? milliseconds{0} : k.chunk_interval);
  add("response.output_text.done",
      {{"item_id", msg_id}, {"output_index", 0}, {"content_index", 0}, {"text", text}, {"logprobs", ojson::array()}});
  add("response.content_part.done",
      {{"item_id", msg_id}, {"output_index", 0}, {"content_index", 0}, {"part", part(text)}});
  add("response.output_item.done", {{"output_index", 0}, {"item", done_item}});
  add("response.completed", {{"response", response("completed", final_output, true)}});
  return stream_reply(std::move(events),
                      typed_event("error", {{"type", "error"},
                                            {"code", "server_error"},
                                            {"message", "upstream overloaded"},
                                            {"param", nullptr},
                                            {"sequence_number", seq}}));
}

// Anthropic input tokens of a Messages request body, before any cache split.
token_counts anthropic_prompt(const json& body, std::size_t reply_pieces, knobs k) {
  k.cached_tokens = 0;  // cache reads come on top of input_tokens, not out of them
  return count_tokens(text_chars(field(body, "system")) + text_chars(field(body, "messages")), reply_pieces, k);
}

reply messages_reply(const json& body, const recorded_request& req, const knobs& k, std::uint64_t n) {
  const std::string model = string_field(body, "model", "fake-model");
  const std::string id = "msg_fake" + std::to_string(n);
  const auto pieces = content_pieces(k);
  token_counts t = anthropic_prompt(body, pieces.size(), k);
  t.cached = k.cached_tokens;
  t.cache_creation_1h = k.cache_creation_1h_tokens;
  const bool usage = k.usage != usage_mode::none;
  // usage.iterations as asked (compaction passes, advisor calls): on the whole message's usage
  // and on message_delta's, as the API repeats it.
  const ojson iterations = k.usage_iterations.empty() ? ojson() : ojson::parse(k.usage_iterations, nullptr, false);

  auto message = [&](ojson content, ojson stop_reason, long long output_tokens) {
    ojson m = {{"id", id},
               {"type", "message"},
               {"role", "assistant"},
               {"model", model},
               {"content", std::move(content)},
               {"stop_reason", std::move(stop_reason)},
               {"stop_sequence", nullptr}};
    if (k.echo_headers) m["received_headers"] = headers_object(req);  // streams: in message_start
    if (usage) {
      m["usage"] = anthropic_usage(t, output_tokens);
      // The API says what the call ran at when the request asks: speed (fast mode) and
      // inference_geo (US-only); x-fake-reasoning-tokens are the thinking part of the output.
      for (const char* name : {"speed", "inference_geo"})
        if (const json& v = field(body, name); v.is_string()) m["usage"][name] = v;
      if (k.reasoning_tokens > 0)
        m["usage"]["output_tokens_details"] = {{"thinking_tokens", std::min(k.reasoning_tokens, output_tokens)}};
      if (iterations.is_array() && !m["stop_reason"].is_null()) m["usage"]["iterations"] = iterations;
    }
    return m;
  };
  if (!wants_stream(body, k))
    return json_reply(200, message(ojson::array({{{"type", "text"}, {"text", join(pieces)}}}), "end_turn", t.completion));

  std::vector<sse_event> events;
  auto add = [&](std::string_view type, ojson fields, milliseconds delay = milliseconds{0}) {
    ojson e = {{"type", type}};
    e.update(fields);
    events.push_back({typed_event(type, e), delay});
  };
  add("message_start", {{"message", message(ojson::array(), nullptr, 1)}});
  add("content_block_start", {{"index", 0}, {"content_block", {{"type", "text"}, {"text", ""}}}});
  add("ping", ojson::object());
  for (std::size_t i = 0; i < pieces.size(); ++i)
    add("content_block_delta", {{"index", 0}, {"delta", {{"type", "text_delta"}, {"text", pieces[i]}}}},
        i == 0 ? milliseconds{0} : k.chunk_interval);
  add("content_block_stop", {{"index", 0}});
  ojson delta = {{"delta", {{"stop_reason", "end_turn"}, {"stop_sequence", nullptr}}}};
  if (usage) {
    delta["usage"] = anthropic_delta_usage(t);  // cumulative, as Anthropic sends it
    if (iterations.is_array()) delta["usage"]["iterations"] = iterations;
    if (k.reasoning_tokens > 0)
      delta["usage"]["output_tokens_details"] = {{"thinking_tokens", std::min(k.reasoning_tokens, t.completion)}};
  }
  add("message_delta", std::move(delta));
  add("message_stop", ojson::object());
  return stream_reply(std::move(events),
                      typed_event("error", {{"type", "error"},
                                            {"error", {{"type", "overloaded_error"}, {"message", "upstream overloaded"}}}}));
}

// POST /v1/messages/count_tokens: what /v1/messages would report as input_tokens for this body.
reply count_tokens_reply(const json& body, const recorded_request& req, const knobs& k) {
  ojson j = {{"input_tokens", anthropic_prompt(body, 0, k).prompt}};
  if (k.echo_headers) j["received_headers"] = headers_object(req);
  return json_reply(200, j);
}

struct model_entry {
  const char* id;
  const char* owner;
};
constexpr model_entry known_models[] = {
    {"gpt-4.1", "openai"},           {"gpt-4.1-mini", "openai"},           {"gpt-4o-mini", "openai"},
    {"o4-mini", "openai"},           {"text-embedding-3-small", "openai"}, {"claude-sonnet-4.5", "anthropic"},
};

ojson model_object(const model_entry& m) {
  return {{"id", m.id}, {"object", "model"}, {"created", 1700000000}, {"owned_by", m.owner}};
}

reply models_reply() {
  ojson data = ojson::array();
  for (const auto& m : known_models) data.push_back(model_object(m));
  return json_reply(200, {{"object", "list"}, {"data", std::move(data)}});
}

// A relay's provider-prefixed id ("openai/gpt-4.1", sent as openai%2Fgpt-4.1) is answered
// under that id, as OpenRouter-style relays do.
reply model_reply(std::string_view raw_id) {
  std::string id(raw_id);
  for (std::size_t i; (i = id.find("%2F")) != std::string::npos || (i = id.find("%2f")) != std::string::npos;)
    id.replace(i, 3, "/");
  const std::string_view base = std::string_view(id).substr(id.rfind('/') == std::string::npos ? 0 : id.rfind('/') + 1);
  for (const auto& m : known_models) {
    if (base != m.id) continue;
    ojson o = model_object(m);
    o["id"] = id;
    return json_reply(200, o);
  }
  return error_reply(api::openai, 404, "The model '" + id + "' does not exist", "model_not_found");
}

json stored_completion() {
  return {{"id", "chatcmpl-stored-1"},
          {"object", "chat.completion"},
          {"created", 1764460800},
          {"model", "gpt-4.1-2025-04-14"},
          {"choices", json::array({{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", "stored"}}},
                                    {"finish_reason", "stop"}}})},
          {"usage", {{"prompt_tokens", 5}, {"completion_tokens", 1}, {"total_tokens", 6}}},
          {"metadata", json::object()}};
}

reply stored_completions_reply() {
  return json_reply(200, {{"object", "list"},
                          {"data", json::array({stored_completion()})},
                          {"first_id", "chatcmpl-stored-1"},
                          {"last_id", "chatcmpl-stored-1"},
                          {"has_more", false}});
}

// The parts of a multipart/form-data body (RFC 7578), in order, split in one pass: field name,
// filename and bytes of each; empty when the body is not multipart. Enough for the SDKs'
// uploads, which quote the boundary or not and end each part's head with CRLF CRLF.
struct form_part {
  std::string_view name, filename, data;
};
std::vector<form_part> multipart_parts(const recorded_request& req) {
  std::vector<form_part> parts;
  const std::string type = req.header("content-type");
  const std::string lt = lower(type);
  const auto b = lt.find("boundary=");
  if (!lt.starts_with("multipart/form-data") || b == std::string::npos) return parts;
  std::string boundary = type.substr(b + 9);
  if (auto semi = boundary.find(';'); semi != std::string::npos) boundary.resize(semi);
  if (boundary.size() >= 2 && boundary.front() == '"' && boundary.back() == '"') boundary = boundary.substr(1, boundary.size() - 2);
  if (boundary.empty()) return parts;
  const std::string delim = "--" + boundary;
  const std::string_view body = req.body;
  // A quoted parameter of the part's head, e.g. name="x"; `name` must start a parameter, so it
  // is not found as the tail of filename="x".
  auto param = [](std::string_view raw_head, const std::string& lowered, std::string_view key) {
    const std::string wanted = std::string(key) + "=\"";
    for (auto n = lowered.find(wanted); n != std::string::npos; n = lowered.find(wanted, n + 1)) {
      if (n != 0 && lowered[n - 1] != ' ' && lowered[n - 1] != ';') continue;
      const auto open = n + wanted.size(), close = raw_head.find('"', open);
      if (close != std::string_view::npos) return raw_head.substr(open, close - open);
    }
    return std::string_view{};
  };
  for (std::size_t at = body.find(delim); at != std::string_view::npos;) {
    const std::size_t head = at + delim.size() + 2;  // past "--boundary\r\n"
    const std::size_t head_end = body.find("\r\n\r\n", head);
    if (head_end == std::string_view::npos) break;
    const std::size_t data = head_end + 4;
    const std::size_t next = body.find("\r\n" + delim, data);
    if (next == std::string_view::npos) break;
    const std::string_view raw_head = body.substr(head, head_end - head);
    const std::string lowered = lower(raw_head);
    parts.push_back({param(raw_head, lowered, "name"), param(raw_head, lowered, "filename"), body.substr(data, next - data)});
    at = next + 2;
  }
  return parts;
}

// Uploads (POST /files, /audio/transcriptions, /audio/translations) answer as OpenAI does (a
// /files call with anthropic-version as Anthropic does), with the size and, in an extra member
// `fake_sha256`, the SHA-256 of the bytes received in the `file` part, so a client can check
// that its upload went through the relay byte for byte.
std::optional<reply> upload_reply(const recorded_request& req, std::string_view route, std::uint64_t request_number) {
  const auto parts = multipart_parts(req);
  auto field = [&parts](std::string_view name) -> const form_part* {
    for (const auto& p : parts)
      if (p.name == name) return &p;
    return nullptr;
  };
  const form_part* file = field("file");
  if (!file) return std::nullopt;
  const std::string sha = sha256_hex(file->data);
  if (route == "/files" && !req.header("anthropic-version").empty())  // Anthropic's Files API
    return json_reply(200, {{"id", "file_fake" + std::to_string(request_number)},
                            {"type", "file"},
                            {"filename", file->filename},
                            {"mime_type", "application/octet-stream"},
                            {"size_bytes", file->data.size()},
                            {"created_at", "2025-11-30T00:00:00Z"},
                            {"downloadable", false},
                            {"fake_sha256", sha}});
  if (route == "/files") {
    const form_part* purpose = field("purpose");
    return json_reply(200, {{"id", "file-fake" + std::to_string(request_number)},
                            {"object", "file"},
                            {"bytes", file->data.size()},
                            {"created_at", 1764460800},
                            {"filename", file->filename},
                            {"purpose", purpose ? purpose->data : std::string_view("user_data")},
                            {"status", "processed"},
                            {"fake_sha256", sha}});
  }
  return json_reply(200, {{"text", "Fake transcription of " + std::to_string(file->data.size()) + " bytes."},
                          {"usage", {{"type", "duration"}, {"seconds", 3}}},
                          {"fake_sha256", sha}});
}

// The Uploads API (a large file in parts of up to 64 MB): POST /uploads (JSON) opens an upload,
// POST /uploads/{id}/parts (multipart, the bytes in `data`) adds a part, with `fake_sha256` and
// `fake_bytes` of what arrived, and POST /uploads/{id}/complete (JSON part_ids) closes it. The
// fake keeps no state: the completed upload reports the number of parts it was given.
std::optional<reply> uploads_api_reply(const recorded_request& req, std::string_view route, std::uint64_t request_number) {
  if (route == "/uploads") {
    const json body = json::parse(req.body, nullptr, false);
    if (!body.is_object()) return std::nullopt;
    return json_reply(200, {{"id", "upload_fake" + std::to_string(request_number)},
                            {"object", "upload"},
                            {"bytes", body.value("bytes", 0)},
                            {"created_at", 1764460800},
                            {"filename", body.value("filename", "")},
                            {"purpose", body.value("purpose", "")},
                            {"status", "pending"},
                            {"expires_at", 1764464400}});
  }
  constexpr std::string_view prefix = "/uploads/";
  const std::string_view rest = route.substr(prefix.size());
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  const std::string_view id = rest.substr(0, slash), action = rest.substr(slash);
  if (action == "/parts") {
    for (const auto& p : multipart_parts(req))
      if (p.name == "data")
        return json_reply(200, {{"id", "part_fake" + std::to_string(request_number)},
                                {"object", "upload.part"},
                                {"created_at", 1764460800},
                                {"upload_id", id},
                                {"fake_bytes", p.data.size()},
                                {"fake_sha256", sha256_hex(p.data)}});
    return std::nullopt;
  }
  if (action == "/complete") {
    const json body = json::parse(req.body, nullptr, false);
    if (!body.is_object() || !body.contains("part_ids") || !body["part_ids"].is_array()) return std::nullopt;
    return json_reply(200, {{"id", id},
                            {"object", "upload"},
                            {"created_at", 1764460800},
                            {"status", "completed"},
                            {"expires_at", 1764464400},
                            {"fake_parts", body["part_ids"].size()},
                            {"file", {{"id", "file-" + std::string(id)}, {"object", "file"}, {"status", "processed"}}}});
  }
  return std::nullopt;
}

reply echo_reply(const recorded_request& req, std::string_view path, std::string_view query) {
  return json_reply(200, {{"method", req.method},
                          {"path", path},
                          {"query", query},
                          {"body", req.body},
                          {"headers", headers_object(req)}});
}

reply route_reply(const recorded_request& req, const knobs& k, std::uint64_t request_number, std::string_view path,
                  std::string_view query, std::string_view route, api style) {
  if (k.status >= 400)
    return error_reply(style, k.status, "fake upstream error (x-fake-status: " + std::to_string(k.status) + ")",
                       k.status == 429 ? "rate_limit_exceeded" : nullptr);

  if (req.method == "POST" && (route == "/chat/completions" || route == "/completions" ||
                               route == "/embeddings" || route == "/responses" || route == "/messages" ||
                               route == "/messages/count_tokens")) {
    const json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object())
      return error_reply(style, 400,
                         "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                         "using your HTTP library correctly.)");
    if (route == "/chat/completions") return chat_reply(body, req, k, request_number);
    if (route == "/completions") return completions_reply(body, k, request_number);
    if (route == "/embeddings") return embeddings_reply(body, k);
    if (route == "/responses") return responses_reply(body, k, request_number);
    if (route == "/messages/count_tokens") return count_tokens_reply(body, req, k);
    return messages_reply(body, req, k, request_number);
  }
  if (req.method == "GET" && route == "/models") return models_reply();
  if (req.method == "GET" && route.starts_with("/models/")) return model_reply(route.substr(8));
  // Stored chat completions (GET /chat/completions) and fine-tuned model deletion, as the
  // OpenAI API answers them: calls on a metered path that are not metered.
  if (req.method == "GET" && route == "/chat/completions") return stored_completions_reply();
  // Objects that carry the usage of work billed earlier (a stored completion, a batch), and
  // new work on a path tollgate does not know (an image, with gpt-image-1's usage).
  if ((req.method == "GET" || req.method == "POST") && route.starts_with("/chat/completions/"))
    return json_reply(200, stored_completion());
  // A background response (see responses_reply): completed with its usage, or the status
  // x-fake-response-status names (then without usage).
  if (req.method == "GET" && route.starts_with("/responses/resp_bg_")) {
    const std::string status = req.header("x-fake-response-status");
    json r = {{"id", route.substr(11)},
              {"object", "response"},
              {"status", status.empty() ? "completed" : status},
              {"background", true},
              {"model", "gpt-4.1-2025-04-14"},
              {"output", json::array()},
              {"usage", nullptr}};
    if (status.empty())
      r["usage"] = {{"input_tokens", 1000}, {"input_tokens_details", {{"cached_tokens", 0}}}, {"output_tokens", 500},
                    {"output_tokens_details", {{"reasoning_tokens", 200}}}, {"total_tokens", 1500}};
    return json_reply(200, r);
  }
  // Anthropic's Message Batches: created in progress, ended at the first retrieval, with a
  // results_url on this server's own host (as Anthropic's names api.anthropic.com), and the
  // results as JSON lines: one succeeded message per request (a custom_id "fail-..." errs).
  if (route == "/messages/batches" || route.starts_with("/messages/batches/")) {
    const std::string host = req.header("host");
    auto batch = [&](std::string id, bool ended, std::size_t n) {
      ojson b = {{"id", id},
                 {"type", "message_batch"},
                 {"processing_status", ended ? "ended" : "in_progress"},
                 {"request_counts", {{"processing", ended ? 0 : n}, {"succeeded", ended ? n : 0}, {"errored", 0},
                                     {"canceled", 0}, {"expired", 0}}},
                 {"ended_at", ended ? ojson("2026-12-04T00:10:00Z") : ojson(nullptr)},
                 {"created_at", "2026-12-04T00:00:00Z"},
                 {"expires_at", "2026-12-05T00:00:00Z"},
                 {"archived_at", nullptr},
                 {"cancel_initiated_at", nullptr},
                 {"results_url", ended ? ojson("http://" + host + "/v1/messages/batches/" + id + "/results")
                                       : ojson(nullptr)}};
      return b;
    };
    if (req.method == "POST" && route == "/messages/batches") {
      const json body = json::parse(req.body, nullptr, false);
      const json& requests = field(body, "requests");
      return json_reply(200, batch("msgbatch_fake" + std::to_string(request_number), false,
                                   requests.is_array() ? requests.size() : 0));
    }
    if (req.method == "GET" && route == "/messages/batches")
      return json_reply(200, {{"data", ojson::array({batch("msgbatch_listed", true, 1)})}, {"has_more", false},
                              {"first_id", "msgbatch_listed"}, {"last_id", "msgbatch_listed"}});
    const std::string_view rest = route.size() > 18 ? route.substr(18) : std::string_view();
    const std::string id(rest.substr(0, rest.find('/')));
    if (req.method == "GET" && rest.ends_with("/results")) {
      std::string lines;
      for (const char* custom : {"first", "second"}) {
        ojson m = {{"custom_id", custom},
                   {"result", {{"type", "succeeded"},
                               {"message", {{"id", std::string("msg_batch_") + custom},
                                            {"type", "message"},
                                            {"role", "assistant"},
                                            {"model", "claude-sonnet-4-5-20250929"},
                                            {"content", ojson::array({{{"type", "text"}, {"text", "Hello from a batch."}}})},
                                            {"stop_reason", "end_turn"},
                                            {"stop_sequence", nullptr},
                                            {"usage", {{"input_tokens", 20}, {"output_tokens", 6}}}}}}}};
        lines += m.dump() + "\n";
      }
      reply r;
      r.headers.emplace_back("Content-Type", "application/binary");
      r.body = lines;
      return r;
    }
    if (req.method == "GET" && !id.empty() && rest.find('/') == std::string_view::npos)
      return json_reply(200, batch(id, true, 2));
  }
  // The Batch API: a new batch validates; a poll answers in_progress with its running usage, or
  // the status x-fake-batch-status names (completed, cancelled...) with the final usage.
  if (req.method == "POST" && route == "/batches") {
    const json body = json::parse(req.body, nullptr, false);
    return json_reply(200, {{"id", "batch_fake" + std::to_string(request_number)},
                            {"object", "batch"},
                            {"endpoint", body.is_object() ? body.value("endpoint", "") : ""},
                            {"input_file_id", body.is_object() ? body.value("input_file_id", "") : ""},
                            {"completion_window", "24h"},
                            {"status", "validating"},
                            {"created_at", 1764460800}});
  }
  if ((req.method == "GET" && route.starts_with("/batches/")) ||
      (req.method == "POST" && route.starts_with("/batches/") && route.ends_with("/cancel"))) {
    const std::string id(route.substr(9, route.find('/', 9) == std::string_view::npos ? std::string_view::npos
                                                                                      : route.find('/', 9) - 9));
    std::string status = req.header("x-fake-batch-status");
    if (req.method == "POST") status = "cancelling";
    const bool ended = status == "completed" || status == "cancelled";
    return json_reply(200, {{"id", id},
                            {"object", "batch"},
                            {"endpoint", "/v1/chat/completions"},
                            {"model", "gpt-4.1-mini-2025-04-14"},
                            {"status", status.empty() ? "in_progress" : status},
                            {"usage", {{"input_tokens", ended ? 100000 : 50000},
                                       {"input_tokens_details", {{"cached_tokens", ended ? 20000 : 0}}},
                                       {"output_tokens", ended ? 40000 : 20000},
                                       {"output_tokens_details", {{"reasoning_tokens", 0}}},
                                       {"total_tokens", ended ? 140000 : 70000}}}});
  }
  // DALL-E (a model named dall-e-*, or none: the API's default is dall-e-2) answers with `n`
  // images and no usage, as OpenAI does; so do edits and variations sent as forms.
  if (req.method == "POST" && (route == "/images/generations" || route == "/images/edits" || route == "/images/variations")) {
    std::string model;
    long long n = 1;
    if (const json body = json::parse(req.body, nullptr, false); body.is_object()) {
      model = string_field(body, "model", "");
      if (body.contains("n") && body["n"].is_number_integer()) n = body["n"].get<long long>();
    } else {
      for (const auto& part : multipart_parts(req)) {
        if (part.name == "model") model = std::string(part.data);
        if (part.name == "n") n = std::atoll(std::string(part.data).c_str());
      }
    }
    if (model.empty() || model.starts_with("dall-e")) {
      json data = json::array();
      for (long long i = 0; i < std::clamp(n, 1LL, 10LL); ++i)
        data.push_back(model == "dall-e-3" ? json{{"url", "https://images.example/" + std::to_string(i)}, {"revised_prompt", "a gate"}}
                                           : json{{"b64_json", "aGVsbG8="}});
      return json_reply(200, {{"created", 1764460800}, {"data", data}});
    }
  }
  // Sora: a create or remix answers with the queued video object (no usage), a retrieval with the
  // finished one; the length and size are the request's, else the API's defaults.
  if (route == "/videos" || route.starts_with("/videos/")) {
    std::string model = "sora-2", size = "720x1280", seconds = "4";
    if (const json body = json::parse(req.body, nullptr, false); body.is_object()) {
      model = string_field(body, "model", model), size = string_field(body, "size", size);
      seconds = string_field(body, "seconds", seconds);
    } else {
      for (const auto& part : multipart_parts(req)) {
        if (part.name == "model") model = std::string(part.data);
        if (part.name == "size") size = std::string(part.data);
        if (part.name == "seconds") seconds = std::string(part.data);
      }
    }
    const bool create = req.method == "POST";
    std::string id = "video_" + std::to_string(request_number);
    if (!create) id = std::string(route.substr(8, route.find('/', 8) == std::string_view::npos ? std::string_view::npos : route.find('/', 8) - 8));
    if (route.ends_with("/content")) {
      reply r;
      r.status = 200;
      r.headers.emplace_back("Content-Type", "video/mp4");
      r.body.assign(2048, '\x01');
      return r;
    }
    return json_reply(200, {{"id", id}, {"object", "video"}, {"model", model}, {"status", create ? "queued" : "completed"},
                            {"progress", create ? 0 : 100}, {"created_at", 1764460800}, {"size", size},
                            {"seconds", seconds}, {"quality", "standard"}});
  }
  if (req.method == "POST" && route == "/images/generations") {
    const json usage = {{"input_tokens", 12}, {"output_tokens", 4160}, {"total_tokens", 4172},
                        {"input_tokens_details", {{"text_tokens", 12}, {"image_tokens", 0}}}};
    const json body = json::parse(req.body, nullptr, false);
    if (!(body.is_object() && body.value("stream", false) == true))
      return json_reply(200, {{"created", 1764460800}, {"data", json::array({{{"b64_json", "aGVsbG8="}}})}, {"usage", usage}});
    // Streamed (`stream: true`): partial images, then image_generation.completed with the usage.
    std::vector<sse_event> events;
    for (int i = 0; i < 2; ++i)
      events.push_back({typed_event("image_generation.partial_image",
                                    ojson{{"type", "image_generation.partial_image"}, {"b64_json", "aGVsbG8="},
                                         {"partial_image_index", i}}),
                        i == 0 ? std::chrono::milliseconds{0} : k.chunk_interval});
    events.push_back({typed_event("image_generation.completed",
                                  ojson{{"type", "image_generation.completed"}, {"b64_json", "aGVsbG8="},
                                        {"usage", ojson::parse(usage.dump())}}),
                      k.chunk_interval});
    return stream_reply(std::move(events), {});
  }
  if (req.method == "POST" && route == "/audio/speech") {  // audio, and no usage (as OpenAI's)
    // 3 seconds of MP3: 125 MPEG-2 layer III frames (24 kHz, 64 kbit/s: 192 bytes, 576 samples).
    reply r;
    r.status = 200;
    r.headers.emplace_back("Content-Type", "audio/mpeg");
    for (int i = 0; i < 125; ++i) {
      std::string frame(192, '\0');
      frame[0] = '\xff', frame[1] = '\xf3', frame[2] = '\x84', frame[3] = '\xc4';
      r.body += frame;
    }
    return r;
  }
  if (req.method == "POST" && (route == "/files" || route == "/audio/transcriptions" || route == "/audio/translations"))
    if (auto r = upload_reply(req, route, request_number)) return std::move(*r);
  if (req.method == "POST" && (route == "/uploads" || route.starts_with("/uploads/")))
    if (auto r = uploads_api_reply(req, route, request_number)) return std::move(*r);
  if (req.method == "DELETE" && route.starts_with("/models/") && route.size() > 8)
    return json_reply(200, {{"id", route.substr(8)}, {"object", "model"}, {"deleted", true}});
  return echo_reply(req, path, query);
}

// x-fake-response-headers: a JSON object of header names and string values; anything else is
// ignored, and so is a pair that could split the response head (CR, LF, NUL).
header_list response_headers_knob(std::string_view text) {
  header_list out;
  const json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return out;
  auto clean = [](std::string_view s) { return s.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos; };
  for (const auto& [name, value] : j.items())
    if (!name.empty() && value.is_string() && clean(name) && clean(value.get_ref<const std::string&>()))
      out.emplace_back(name, value.get<std::string>());
  return out;
}

}  // namespace

knobs parse_knobs(const recorded_request& req) {
  knobs k;
  if (const auto s = header_number(req, "x-fake-status"); s && *s >= 100 && *s <= 599)
    k.status = static_cast<unsigned>(*s);
  k.delay = milliseconds{header_number(req, "x-fake-delay-ms").value_or(0)};
  k.chunks = header_number(req, "x-fake-chunks");
  k.chunk_interval = milliseconds{header_number(req, "x-fake-chunk-interval-ms").value_or(0)};
  k.cached_tokens = header_number(req, "x-fake-cached-tokens").value_or(0);
  k.reasoning_tokens = header_number(req, "x-fake-reasoning-tokens").value_or(0);
  k.reasoning_beside = req.header("x-fake-reasoning-beside") == "1";
  k.cache_creation_tokens = header_number(req, "x-fake-cache-creation-tokens").value_or(0);
  k.cache_creation_1h_tokens = header_number(req, "x-fake-cache-creation-1h-tokens").value_or(0);
  k.usage_iterations = std::string(req.header("x-fake-usage-iterations"));
  k.usage_extra = std::string(req.header("x-fake-usage-extra"));
  k.provider = std::string(req.header("x-fake-provider"));
  const std::string usage = lower(req.header("x-fake-usage"));
  k.usage = usage == "none"          ? usage_mode::none
            : usage == "last-chunk"  ? usage_mode::last_chunk
            : usage == "every-chunk" ? usage_mode::every_chunk
            : usage == "in-choice"   ? usage_mode::in_choice
                                     : usage_mode::normal;
  const std::string accept = lower(req.header("accept-encoding"));
  // `always`: gzip whatever Accept-Encoding says (a server that ignores it).
  if ((req.header("x-fake-gzip") == "1" && accept.find("gzip") != std::string::npos) ||
      req.header("x-fake-gzip") == "always")
    k.coding = content_coding::gzip;
  else if (req.header("x-fake-deflate") == "1" && accept.find("deflate") != std::string::npos)
    k.coding = content_coding::deflate;
  k.fault_kind = parse_fault(lower(req.header("x-fake-fault")));
  if (const auto b = header_number(req, "x-fake-body-bytes")) k.body_bytes = static_cast<std::size_t>(*b);
  k.echo_headers = req.header("x-fake-echo-headers") == "1";
  k.early_hints = req.header("x-fake-early-hints") == "1";
  k.response_headers = response_headers_knob(req.header("x-fake-response-headers"));
  return k;
}

reply make_reply(const recorded_request& req, const knobs& k, std::uint64_t request_number) {
  const std::string_view target = req.target;
  const std::size_t qmark = target.find('?');
  const std::string_view path = target.substr(0, qmark);
  const std::string_view query = qmark == std::string_view::npos ? std::string_view{} : target.substr(qmark + 1);
  std::string_view route = path;
  if (route == "/v1" || route.starts_with("/v1/")) route.remove_prefix(3);
  const api style = route == "/messages" || route.starts_with("/messages/") ? api::anthropic : api::openai;
  reply r = route_reply(req, k, request_number, path, query, route, style);
  // Anthropic names its request id header request-id (the SDKs read it as _request_id / requestID).
  if (style == api::anthropic) r.headers.emplace_back("request-id", "req_fake_" + std::to_string(request_number));
  r.headers.insert(r.headers.end(), k.response_headers.begin(), k.response_headers.end());
  return r;
}

}  // namespace fake::detail

namespace fake {

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

std::string base64(std::string_view bytes) {
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t size = bytes.size();
  std::string out;
  for (std::size_t i = 0; i < size; i += 3) {
    const unsigned v = (data[i] << 16) | (i + 1 < size ? data[i + 1] << 8 : 0) | (i + 2 < size ? data[i + 2] : 0);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += i + 1 < size ? alphabet[(v >> 6) & 63] : '=';
    out += i + 2 < size ? alphabet[v & 63] : '=';
  }
  return out;
}

}  // namespace fake
