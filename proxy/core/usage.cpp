// Usage extraction from upstream JSON bodies and SSE events (OpenAI and Anthropic shapes, see
// shared/WIRE.md) and the fallback token estimator. Called by the relay per response / event.
#include "core/usage.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace tollgate {

namespace {

using json = nlohmann::json;

// Counts above this are nonsense; capping keeps the sums below far from int64 overflow.
constexpr std::int64_t max_count = std::int64_t{1} << 53;

json parse(std::string_view text) {
  return json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
}

const json& member(const json& obj, std::string_view key) {
  static const json absent;
  if (!obj.is_object()) return absent;
  const auto it = obj.find(key);
  return it == obj.end() ? absent : *it;
}

std::string_view string_member(const json& obj, std::string_view key) {
  const json& v = member(obj, key);
  return v.is_string() ? std::string_view(v.get_ref<const std::string&>()) : std::string_view();
}

// A token count: integers only (null, missing, strings and floats give nullopt), clamped to
// [0, max_count].
std::optional<std::int64_t> count_field(const json& obj, std::string_view key) {
  const json& v = member(obj, key);
  if (v.is_number_unsigned()) {
    return static_cast<std::int64_t>(std::min<std::uint64_t>(v.get<std::uint64_t>(), max_count));
  }
  if (v.is_number_integer()) return std::clamp<std::int64_t>(v.get<std::int64_t>(), 0, max_count);
  return std::nullopt;
}

std::int64_t count(const json& obj, std::string_view key) {
  return count_field(obj, key).value_or(0);
}

// The "part of" counts can never exceed their whole; a provider that says otherwise would
// otherwise produce negative costs downstream.
token_usage clamp_parts(token_usage t) noexcept {
  t.cached = std::min(t.cached, t.prompt);
  t.reasoning = std::min(t.reasoning, t.completion);
  t.cache_write_1h = std::min(t.cache_write_1h, t.cache_write);
  return t;
}

// OpenAI chat/completions/embeddings `usage`; nullopt unless it carries a token count.
std::optional<token_usage> chat_usage(const json& u) {
  const auto prompt = count_field(u, "prompt_tokens");
  const auto completion = count_field(u, "completion_tokens");
  if (!prompt && !completion) return std::nullopt;
  token_usage t;
  t.prompt = prompt.value_or(0);
  t.completion = completion.value_or(0);
  // DeepSeek reports cache hits as a top-level prompt_cache_hit_tokens instead of the details.
  t.cached = count_field(member(u, "prompt_tokens_details"), "cached_tokens")
                 .value_or(count(u, "prompt_cache_hit_tokens"));
  t.reasoning = count(member(u, "completion_tokens_details"), "reasoning_tokens");
  return clamp_parts(t);
}

// OpenAI Responses `usage`.
std::optional<token_usage> responses_usage(const json& u) {
  const auto input = count_field(u, "input_tokens");
  const auto output = count_field(u, "output_tokens");
  if (!input && !output) return std::nullopt;
  token_usage t;
  t.prompt = input.value_or(0);
  t.completion = output.value_or(0);
  t.cached = count(member(u, "input_tokens_details"), "cached_tokens");
  t.reasoning = count(member(u, "output_tokens_details"), "reasoning_tokens");
  return clamp_parts(t);
}

// Replaces each field `u` reports: message_delta counts are cumulative, never increments.
void apply(anthropic_usage& a, const json& u) {
  if (const auto v = count_field(u, "input_tokens")) a.input = *v;
  if (const auto v = count_field(u, "output_tokens")) a.output = *v;
  if (const auto v = count_field(u, "cache_read_input_tokens")) a.cache_read = *v;
  if (const auto v = count_field(u, "cache_creation_input_tokens")) a.cache_write = *v;
  const json& creation = member(u, "cache_creation");
  if (const auto v = count_field(creation, "ephemeral_5m_input_tokens")) a.cache_5m = *v;
  if (const auto v = count_field(creation, "ephemeral_1h_input_tokens")) a.cache_1h = *v;
}

// Anthropic `usage` of a whole message.
std::optional<token_usage> messages_usage(const json& u) {
  if (!count_field(u, "input_tokens") && !count_field(u, "output_tokens")) return std::nullopt;
  anthropic_usage a;
  apply(a, u);
  return a.to_openai();
}

// Routes tollgate does not know: the usage object's fields tell which API answered.
std::optional<token_usage> usage_by_shape(const json& body, const json& u) {
  if (!u.is_object()) return std::nullopt;
  if (u.contains("prompt_tokens") || u.contains("completion_tokens")) return chat_usage(u);
  const bool anthropic = string_member(body, "type") == "message" ||
                         u.contains("cache_read_input_tokens") ||
                         u.contains("cache_creation_input_tokens");
  return anthropic ? messages_usage(u) : responses_usage(u);
}

std::string_view trim(std::string_view s) noexcept {
  constexpr std::string_view space = " \t\r\n";
  const auto first = s.find_first_not_of(space);
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(space) - first + 1);
}

// Scripts where one character is about one token: CJK ideographs and their extensions,
// radicals, CJK punctuation, kana, Bopomofo, Hangul, full-width forms.
constexpr bool is_cjk(char32_t cp) noexcept {
  return (cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0x2E80 && cp <= 0x9FFF) ||
         (cp >= 0xAC00 && cp <= 0xD7AF) || (cp >= 0xF900 && cp <= 0xFAFF) ||
         (cp >= 0xFF00 && cp <= 0xFFEF) || (cp >= 0x20000 && cp <= 0x3FFFF);
}

}  // namespace

token_usage anthropic_usage::to_openai() const noexcept {
  // Anthropic's input_tokens excludes the cache; the OpenAI convention counts it in prompt.
  const std::int64_t write = cache_write >= 0 ? cache_write : cache_5m + cache_1h;
  token_usage t;
  t.prompt = input + cache_read + write;
  t.completion = output;
  t.cached = cache_read;
  t.cache_write = write;
  t.cache_write_1h = cache_1h;
  return clamp_parts(t);
}

response_facts extract_response(route_kind route, std::string_view body) {
  try {
    const json j = parse(body);
    if (!j.is_object()) return {};
    response_facts f;
    f.model = string_member(j, "model");
    f.id = string_member(j, "id");
    const json& u = member(j, "usage");
    std::optional<token_usage> t;
    switch (route) {
      case route_kind::chat_completions:
      case route_kind::completions: t = chat_usage(u); break;
      case route_kind::embeddings:
        t = chat_usage(u);
        if (t) t->completion = t->reasoning = 0;
        break;
      case route_kind::responses: t = responses_usage(u); break;
      case route_kind::messages: t = messages_usage(u); break;
      case route_kind::models:
      case route_kind::other: t = usage_by_shape(j, u); break;
    }
    if (t) {
      f.has_usage = true;
      f.usage = *t;
    }
    return f;
  } catch (...) {  // only allocation failure can get here
    return {};
  }
}

// The heuristic, for when an upstream gives no usage (the row is marked estimated):
//  - ASCII: 4 bytes per token, rounded up (the usual rule of thumb for English and code with
//    BPE tokenizers such as cl100k / o200k);
//  - CJK ideographs, kana, Hangul, full-width forms: 1 token per character;
//  - any other non-ASCII code point (accented Latin, Cyrillic, Greek, Arabic, emoji...):
//    1 token per 2 code points, rounded up.
// Invalid UTF-8 bytes count as "other" characters. It errs high rather than low for
// non-English text, which is the safer side for budgets.
std::int64_t estimate_tokens(std::string_view text) noexcept {
  text_tally t;
  t.add(text);
  return t.tokens();
}

void text_tally::add(std::string_view text) noexcept {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++ascii_bytes;
      ++i;
      continue;
    }
    // A lead byte gives the sequence length; stray continuation or 0xF8+ bytes stand alone.
    const std::size_t len = c >= 0xF8 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    char32_t cp = len == 4 ? c & 0x07u : len == 3 ? c & 0x0Fu : c & 0x1Fu;
    std::size_t j = 1;
    for (; j < len && i + j < n && (s[i + j] & 0xC0) == 0x80; ++j) cp = (cp << 6) | (s[i + j] & 0x3Fu);
    if (j == len && len > 1 && is_cjk(cp)) {
      ++cjk_chars;
    } else {
      ++other_chars;
    }
    i += j;
  }
}

std::int64_t text_tally::tokens() const noexcept {
  return (ascii_bytes + 3) / 4 + cjk_chars + (other_chars + 1) / 2;
}

stream_meter::stream_meter(route_kind route, bool strip_usage_chunk)
    : route_(route), strip_(strip_usage_chunk) {}

std::int64_t stream_meter::estimated_completion_tokens() const noexcept {
  return streamed_text_.tokens();
}

bool stream_meter::on_event(const sse_event& ev) {
  if (!ev.has_data) return true;  // comments / keep-alives
  try {
    const std::string_view data = trim(ev.data);
    if (data == "[DONE]") {  // the most frequent non-JSON payload: no parse
      saw_done_ = true;
      return true;
    }
    const json j = parse(data);
    if (!j.is_object()) {
      if (ev.event == "error") saw_error_ = true;
      return true;
    }
    std::string_view type = string_member(j, "type");
    if (type.empty()) type = ev.event;
    if (type == "error") {  // Responses and Anthropic error events
      saw_error_ = true;
      return true;
    }
    switch (route_) {
      case route_kind::responses: on_responses(j, type); return true;
      case route_kind::messages: on_messages(j, type); return true;
      case route_kind::other:
        // An unknown route may still be a typed stream; chat chunks carry no `type`.
        if (type.starts_with("response.")) {
          on_responses(j, type);
          return true;
        }
        if (type.starts_with("message_") || type.starts_with("content_block_")) {
          on_messages(j, type);
          return true;
        }
        return on_chat(j);
      default: return on_chat(j);
    }
  } catch (...) {  // only allocation failure can get here; never lose the client's bytes
    return true;
  }
}

void stream_meter::note_model_id(const json& obj) {
  if (model_.empty()) model_ = string_member(obj, "model");
  if (id_.empty()) id_ = string_member(obj, "id");
}

bool stream_meter::on_chat(const json& j) {
  if (!member(j, "error").is_null()) {  // mid-stream `data: {"error": {...}}`
    saw_error_ = true;
    return true;
  }
  note_model_id(j);
  // The last non-null usage wins: relays send it on the usage-only chunk, on the last content
  // chunk, or as a running total on every chunk.
  const json& usage = member(j, "usage");
  if (const auto t = chat_usage(usage)) {
    usage_ = *t;
    has_usage_ = true;
  }
  const json& choices = member(j, "choices");
  if (!choices.is_array()) return true;
  for (const json& choice : choices) {
    streamed_text_.add(string_member(choice, "text"));  // legacy completions
    const json& delta = member(choice, "delta");
    if (!delta.is_object()) continue;
    streamed_text_.add(string_member(delta, "content"));
    streamed_text_.add(string_member(delta, "reasoning_content"));
    streamed_text_.add(string_member(delta, "reasoning"));
    const json& calls = member(delta, "tool_calls");
    if (!calls.is_array()) continue;
    for (const json& call : calls) streamed_text_.add(string_member(member(call, "function"), "arguments"));
  }
  // Only the include_usage chunk tollgate asked for on the client's behalf is dropped.
  return !(strip_ && choices.empty() && !usage.is_null());
}

void stream_meter::on_responses(const json& j, std::string_view type) {
  if (type == "response.created" || type == "response.in_progress") {
    note_model_id(member(j, "response"));
  } else if (type == "response.output_text.delta" || type == "response.reasoning_summary_text.delta" ||
             type == "response.reasoning_text.delta" || type == "response.refusal.delta" ||
             type == "response.function_call_arguments.delta") {
    streamed_text_.add(string_member(j, "delta"));
  } else if (type == "response.completed" || type == "response.incomplete" ||
             type == "response.failed") {
    const json& response = member(j, "response");
    note_model_id(response);
    if (const auto t = responses_usage(member(response, "usage"))) {
      usage_ = *t;
      has_usage_ = true;
    }
    saw_done_ = true;
    if (type == "response.failed") saw_error_ = true;
  }
}

void stream_meter::on_messages(const json& j, std::string_view type) {
  if (type == "message_start") {
    const json& message = member(j, "message");
    note_model_id(message);
    const json& u = member(message, "usage");
    if (u.is_object()) {
      anthropic_ = {};
      apply(anthropic_, u);
      usage_ = anthropic_.to_openai();
      has_usage_ = true;
    }
  } else if (type == "message_delta") {
    const json& u = member(j, "usage");
    if (u.is_object()) {
      apply(anthropic_, u);
      usage_ = anthropic_.to_openai();
    }
  } else if (type == "content_block_delta") {
    const json& delta = member(j, "delta");
    streamed_text_.add(string_member(delta, "text"));
    streamed_text_.add(string_member(delta, "thinking"));
    streamed_text_.add(string_member(delta, "partial_json"));
  } else if (type == "message_stop") {
    saw_done_ = true;
  }
}

}  // namespace tollgate

namespace tollgate {

bool append_without_null_usage(std::string_view raw, std::string& out) {
  bool removed = false;
  for (;;) {
    std::size_t at = std::string_view::npos, len = 0;
    for (std::string_view pat : {std::string_view(",\"usage\":null"), std::string_view(", \"usage\": null"),
                                 std::string_view(",\"usage\": null"), std::string_view("\"usage\":null,"),
                                 std::string_view("\"usage\": null,"), std::string_view("\"usage\": null, ")}) {
      auto p = raw.find(pat);
      if (p != std::string_view::npos && (p < at || (p == at && pat.size() > len))) {
        at = p;
        len = pat.size();
      }
    }
    if (at == std::string_view::npos) break;
    out.append(raw.substr(0, at));
    raw.remove_prefix(at + len);
    removed = true;
  }
  out.append(raw);
  return removed;
}

}  // namespace tollgate
