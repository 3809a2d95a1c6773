// Usage extraction from upstream JSON bodies and SSE events (OpenAI and Anthropic shapes, see
// shared/WIRE.md) and the fallback token estimator. Called by the relay per response / event.
// Reads with simdjson; what simdjson turns down goes through nlohmann, so both give one answer.
#include "core/usage.hpp"
#include "core/utf8.hpp"

#include "core/pricing.hpp"

#include <algorithm>
#include <functional>
#include <cmath>
#include <array>
#include <cstring>
#include <utility>

#include <nlohmann/json.hpp>
#include <simdjson.h>

namespace tollgate {

namespace {

using json = nlohmann::json;

// Counts above this are nonsense; capping keeps the sums below far from int64 overflow.
constexpr std::int64_t max_count = std::int64_t{1} << 53;

json parse(std::string_view text) {
  return json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
}

// The fast reader: simdjson's DOM. A simdjson value, or a missing member; a missing member reads
// as null, as nlohmann's lookups below do.
namespace dom = simdjson::dom;
using dom_type = dom::element_type;
struct fast_node {
  dom::element value;
  bool present = false;
  dom_type type() const noexcept { return present ? value.type() : dom_type::NULL_VALUE; }
};

// `needle` in `hay` from `from` on, or npos: memmem, since string_view::find stops at every byte
// equal to the needle's first one (a quote, a comma: in JSON, at every member) to compare the
// rest, ~30 library calls for one search of a 300-byte chunk.
std::size_t find_bytes(std::string_view hay, std::string_view needle, std::size_t from = 0) noexcept {
  if (from > hay.size() || needle.size() > hay.size() - from) return std::string_view::npos;
  const void* p = ::memmem(hay.data() + from, hay.size() - from, needle.data(), needle.size());
  return p == nullptr ? std::string_view::npos : static_cast<std::size_t>(static_cast<const char*>(p) - hay.data());
}

// Bodies above this get a parser of their own (extract_response): the DOM keeps ~14 bytes of
// buffers per input byte, and the per-thread parser keeps them for reuse.
constexpr std::size_t fast_max_bytes = std::size_t{1} << 20;

// False on any simdjson error (a BOM, a number beyond double or uint64, nesting past 1024...):
// nlohmann accepts some of those, so it gets the text then. The root stays valid until the
// thread's next parse_fast().
bool parse_fast(std::string_view text, fast_node& root) noexcept {
  // Empty: nothing to parse, and simdjson must not be given a null pointer (UB even for size 0).
  if (text.empty() || text.size() > fast_max_bytes) return false;
  thread_local dom::parser parser;
  // realloc_if_needed: copies into the parser's reused padded buffer (simdjson reads past the end).
  root.present = parser.parse(text.data(), text.size(), true).get(root.value) == simdjson::SUCCESS;
  return root.present;
}

// A document over fast_max_bytes (an embeddings batch: 2,048 vectors of floats are ~38 MB; base64
// images or audio, whole or as stream events), parsed with `big`, a parser the caller frees when
// done. nlohmann's DOM took ~0.65 s of the I/O thread for those 38 MB and ~0.1 s for a 300-input
// batch (5.5 MB); this takes a quarter of that. False when simdjson refuses it (nlohmann then).
bool parse_large(std::string_view text, dom::parser& big, fast_node& root) noexcept {
  root.present = big.parse(text.data(), text.size(), true).get(root.value) == simdjson::SUCCESS;
  return root.present;
}

// The same questions asked of either reader, so the walks below are written once.
bool is_object(const json& v) noexcept { return v.is_object(); }
bool is_object(const fast_node& v) noexcept { return v.type() == dom_type::OBJECT; }
bool is_array(const json& v) noexcept { return v.is_array(); }
bool is_array(const fast_node& v) noexcept { return v.type() == dom_type::ARRAY; }
bool is_null(const json& v) noexcept { return v.is_null(); }
bool is_null(const fast_node& v) noexcept { return v.type() == dom_type::NULL_VALUE; }
bool is_string(const json& v) noexcept { return v.is_string(); }
bool is_string(const fast_node& v) noexcept { return v.type() == dom_type::STRING; }

const json& member(const json& obj, std::string_view key) {
  static const json absent;
  if (!obj.is_object()) return absent;
  const auto it = obj.find(key);
  return it == obj.end() ? absent : *it;
}


// Several members of one object, handed to `f` in the order of `keys`. On the DOM this is one
// pass over the object instead of one per key (a chat chunk's lookups were ~40 % of its cost
// beyond the parse); the last duplicate still wins, as in member().
template <class F, std::size_t... I>
decltype(auto) apply_members(const json& obj, const std::array<std::string_view, sizeof...(I)>& keys, F&& f,
                             std::index_sequence<I...>) {
  return f(member(obj, keys[I])...);
}
template <class F, std::size_t... I>
decltype(auto) apply_members(const fast_node& obj, const std::array<std::string_view, sizeof...(I)>& keys, F&& f,
                             std::index_sequence<I...>) {
  std::array<fast_node, sizeof...(I)> found{};
  if (is_object(obj)) {
    // Keys' lengths as a bit set: most members that match no key are passed over by one test.
    std::uint64_t lengths = 0;
    for (const auto k : keys) lengths |= std::uint64_t{1} << std::min<std::size_t>(k.size(), 63);
    const dom::object members = obj.value.get_object().value_unsafe();
    for (const dom::key_value_pair m : members) {
      if ((lengths >> std::min<std::size_t>(m.key.size(), 63) & 1) == 0) continue;
      for (std::size_t i = 0; i < keys.size(); ++i) {
        if (m.key.size() == keys[i].size() && std::memcmp(m.key.data(), keys[i].data(), keys[i].size()) == 0) {
          found[i] = {m.value, true};
          break;
        }
      }
    }
  }
  return f(std::as_const(found[I])...);
}
template <std::size_t N, class Node, class F>
decltype(auto) with_members(const Node& obj, const std::array<std::string_view, N>& keys, F&& f) {
  return apply_members(obj, keys, std::forward<F>(f), std::make_index_sequence<N>{});
}

// The last duplicate wins, as in nlohmann's DOM.
fast_node member(const fast_node& obj, std::string_view key) noexcept {
  return with_members<1>(obj, {key}, [](const fast_node& v) { return v; });
}

bool has_member(const json& obj, std::string_view key) { return obj.is_object() && obj.contains(key); }
bool has_member(const fast_node& obj, std::string_view key) noexcept {
  if (!is_object(obj)) return false;
  const dom::object members = obj.value.get_object().value_unsafe();
  return std::any_of(members.begin(), members.end(), [key](const dom::key_value_pair& m) { return m.key == key; });
}

bool is_true(const json& v) noexcept { return v.is_boolean() && v.get<bool>(); }
bool is_true(const fast_node& v) noexcept {
  return v.type() == dom_type::BOOL && v.value.get_bool().value_unsafe();
}

std::string_view as_string(const json& v) noexcept {
  return v.is_string() ? std::string_view(v.get_ref<const std::string&>()) : std::string_view();
}
std::string_view as_string(const fast_node& v) noexcept {
  return v.type() == dom_type::STRING ? v.value.get_string().value_unsafe() : std::string_view();
}

// A token count: an integer, or a number with no fractional part as some relays re-serialize
// them (12.0, 1.2e3); null, missing, strings and fractions give nullopt. Clamped to
// [0, max_count].
std::optional<std::int64_t> whole_count(double d) noexcept {
  if (!std::isfinite(d) || d != std::floor(d)) return std::nullopt;
  if (d <= 0) return 0;
  return d >= static_cast<double>(max_count) ? max_count : static_cast<std::int64_t>(d);
}
std::optional<std::int64_t> as_count(const json& v) {
  if (v.is_number_unsigned()) {
    return static_cast<std::int64_t>(std::min<std::uint64_t>(v.get<std::uint64_t>(), max_count));
  }
  if (v.is_number_integer()) return std::clamp<std::int64_t>(v.get<std::int64_t>(), 0, max_count);
  if (v.is_number_float()) return whole_count(v.get<double>());
  return std::nullopt;
}
std::optional<std::int64_t> as_count(const fast_node& v) noexcept {
  switch (v.type()) {
    case dom_type::UINT64:  // only values above INT64_MAX
      return static_cast<std::int64_t>(std::min<std::uint64_t>(v.value.get_uint64().value_unsafe(), max_count));
    case dom_type::INT64: return std::clamp<std::int64_t>(v.value.get_int64().value_unsafe(), 0, max_count);
    case dom_type::DOUBLE: return whole_count(v.value.get_double().value_unsafe());
    default: return std::nullopt;
  }
}

// Any JSON number as a double (a duration in seconds); nullopt for anything else.
std::optional<double> as_number(const json& v) {
  return v.is_number() ? std::optional<double>(v.get<double>()) : std::nullopt;
}
std::optional<double> as_number(const fast_node& v) noexcept {
  switch (v.type()) {
    case dom_type::UINT64: return static_cast<double>(v.value.get_uint64().value_unsafe());
    case dom_type::INT64: return static_cast<double>(v.value.get_int64().value_unsafe());
    case dom_type::DOUBLE: return v.value.get_double().value_unsafe();
    default: return std::nullopt;
  }
}

template <class F>
void for_items(const json& arr, F&& f) {
  if (!arr.is_array()) return;
  for (const json& item : arr) f(item);
}
template <class F>
void for_items(const fast_node& arr, F&& f) {
  if (!is_array(arr)) return;
  const dom::array items = arr.value.get_array().value_unsafe();
  for (const dom::element item : items) f(fast_node{item, true});
}

// The text members of one event, tallied as they are found; the last one found is kept for a
// chunk frame (stream_meter::learn_frame), which needs exactly one.
struct text_members {
  explicit text_members(text_tally& t) noexcept : tally(t) {}
  text_tally& tally;
  std::size_t count = 0;
  std::string_view key, value;
  template <class Node>
  void add(std::string_view k, const Node& v) {
    if (!is_string(v)) return;
    ++count;
    key = k;
    value = as_string(v);
    tally.add(value);
  }
  // Proposes the one text member for a chunk frame (stream_meter::learn_frame).
  void offer(std::string_view& frame_key, std::string_view& frame_text) const {
    if (count != 1) return;
    frame_key = key;
    frame_text = value;
  }
};

template <class Node>
std::string_view string_member(const Node& obj, std::string_view key) {
  return as_string(member(obj, key));
}

template <class Node>
std::optional<std::int64_t> count_field(const Node& obj, std::string_view key) {
  return as_count(member(obj, key));
}

template <class Node>
std::int64_t count(const Node& obj, std::string_view key) {
  return count_field(obj, key).value_or(0);
}

// The service tier an OpenAI reply names at its top level (chat, Responses). OpenAI's "fast"
// (fast mode, openai-node 7.x) is its priority processing, billed at the priority prices; the
// API answers "priority" for it, but a relay may echo the request's word. Anthropic's fast mode
// is told by usage.speed, never by this field.
service_tier openai_service_tier(std::string_view name) noexcept {
  return name == "fast" ? service_tier::priority : parse_service_tier(name);
}

// The "part of" counts can never exceed their whole; a provider that says otherwise would
// otherwise produce negative costs downstream.
token_usage clamp_parts(token_usage t) noexcept {
  t.cached = std::min(t.cached, t.prompt);
  t.reasoning = std::min(t.reasoning, t.completion);
  t.image_in = std::min(t.image_in, t.prompt);
  t.audio_in = std::min(t.audio_in, t.prompt - t.image_in);
  t.audio_out = std::min(t.audio_out, t.completion);
  t.text_out = std::min(t.text_out, t.completion - t.audio_out);
  t.image_cached = std::min(t.image_cached, t.cached);
  t.audio_cached = std::min(t.audio_cached, t.cached - t.image_cached);
  t.cache_write_1h = std::min(t.cache_write_1h, t.cache_write);
  return t;
}

// Cache writes in an OpenAI-shaped usage. OpenAI reports them as `cache_write_tokens` (billed at
// 1.25x input from GPT-5.6 on, with `cache_write_tokens_details.ttl_12h_tokens` the 12-hour
// writes, kept as the long-lived writes; free before), and relays that serve Claude through the
// chat API do too, each under its own name:
// OpenRouter `prompt_tokens_details.cache_write_tokens`, LiteLLM `cache_creation_tokens` there
// (with `cache_creation_token_details` splitting off the 1-hour writes) and a top-level
// `cache_creation_input_tokens`, new-api (one-api's successor, which many relays run)
// `cached_creation_tokens` there and top-level `claude_cache_creation_5_m_tokens` /
// `_1_h_tokens`. Read as the largest count given, since a relay may fill one name and leave
// another at 0. Left unread, these writes were billed at the plain input price: 1.25x or 2x of
// that short on every Claude call that writes the cache.
struct openai_cache_writes {
  std::int64_t write = 0, write_1h = 0;
  template <class Node>
  void details(const Node& d) {
    with_members<5>(d, {"cache_write_tokens", "cache_creation_tokens", "cached_creation_tokens",
                        "cache_creation_token_details", "cache_write_tokens_details"},
                    [&](const Node& a, const Node& b, const Node& c, const Node& split, const Node& ttl) {
      for (const Node* n : {&a, &b, &c}) take(write, *n);
      take(write_1h, member(split, "ephemeral_1h_input_tokens"));
      take(write_1h, member(ttl, "ttl_12h_tokens"));
    });
  }
  template <class Node>
  void top(const Node& creation_input, const Node& claude_5m, const Node& claude_1h) {
    take(write, creation_input);
    if (as_count(claude_5m) || as_count(claude_1h))
      write = std::max(write, as_count(claude_5m).value_or(0) + as_count(claude_1h).value_or(0));
    take(write_1h, claude_1h);
  }
  template <class Node>
  static void take(std::int64_t& into, const Node& v) {
    if (const auto n = as_count(v)) into = std::max(into, *n);
  }
};

// Reasoning tokens are part of the output in OpenAI's convention. xAI's API reports them beside
// it instead (Grok reasoning models: completion_tokens holds the answer alone, total_tokens =
// prompt + completion + reasoning), and bills them as output: a usage whose reasoning exceeds
// its output, or whose total counts the reasoning on top, has them added to the output.
// Gemini through a converter that maps its candidates alone to completion_tokens and reports no
// reasoning at all (thoughtsTokenCount dropped, but kept in total_tokens) is the same mistake
// unreported: a total above prompt + completion, on a usage with no cache counts (a relay's
// Claude usage may leave cache reads out of prompt_tokens), is that hidden reasoning.
// `prompt`: the input as reported (before any correction of a relay's cache counts); `t.cached`
// and `t.cache_write` already read.
void add_exclusive_reasoning(token_usage& t, std::optional<std::int64_t> total, std::int64_t prompt) noexcept {
  if (t.reasoning > 0) {
    if (t.reasoning > t.completion || (total && *total == prompt + t.completion + t.reasoning)) t.completion += t.reasoning;
  } else if (total && t.cached == 0 && t.cache_write == 0 && *total > prompt + t.completion) {
    t.reasoning = *total - prompt - t.completion;
    t.completion += t.reasoning;
  }
}

// The cost an upstream reports in an OpenAI-shaped usage, USD; -1 when none. OpenRouter's
// `cost` is a number of credits (1 credit = 1 USD): what the call cost the account; on a BYOK
// call (`is_byok`) that is OpenRouter's fee alone, and the provider bills the key's owner
// `cost_details.upstream_inference_cost` apart, so the two are added. Perplexity's `cost` is an
// object whose `total_cost` is the call's (tokens, searches and request fee). A negative or
// non-finite figure is no report.
template <class Node>
double reported_cost(const Node& cost, const Node& byok, const Node& details) {
  std::optional<double> usd = as_number(cost);
  if (!usd && is_object(cost)) usd = as_number(member(cost, "total_cost"));
  if (!usd || !std::isfinite(*usd) || *usd < 0) return -1;
  if (is_true(byok))
    if (const auto provider = as_number(member(details, "upstream_inference_cost")); provider && std::isfinite(*provider) && *provider > 0)
      *usd += *provider;
  return *usd;
}

// OpenAI chat/completions/embeddings `usage`; nullopt unless it carries a token count.
template <class Node>
std::optional<token_usage> chat_usage(const Node& u) {
  if (!is_object(u)) return std::nullopt;
  return with_members<14>(
      u, {"prompt_tokens", "completion_tokens", "prompt_tokens_details", "prompt_cache_hit_tokens",
          "completion_tokens_details", "cache_creation_input_tokens", "cache_read_input_tokens",
          "claude_cache_creation_5_m_tokens", "claude_cache_creation_1_h_tokens", "total_tokens", "cached_tokens",
          "cost", "is_byok", "cost_details"},
      [](const Node& p, const Node& c, const Node& details, const Node& hits, const Node& completion_details,
         const Node& creation_input, const Node& cache_read, const Node& claude_5m, const Node& claude_1h,
         const Node& total, const Node& top_cached, const Node& cost, const Node& byok,
         const Node& cost_details) -> std::optional<token_usage> {
        const auto prompt = as_count(p);
        const auto completion = as_count(c);
        if (!prompt && !completion) return std::nullopt;
        token_usage t;
        t.prompt = prompt.value_or(0);
        t.completion = completion.value_or(0);
        // DeepSeek reports cache hits as a top-level prompt_cache_hit_tokens instead of the
        // details, LiteLLM's Claude usage also as a top-level cache_read_input_tokens, Moonshot's
        // (moonshot-v1 context caching) as a top-level cached_tokens.
        t.cached = count_field(details, "cached_tokens")
                       .value_or(as_count(hits).value_or(as_count(cache_read).value_or(as_count(top_cached).value_or(0))));
        t.reasoning = count(completion_details, "reasoning_tokens");
        // Audio models (gpt-4o-audio-preview): audio tokens in and out at their own prices.
        t.audio_in = count(details, "audio_tokens");
        t.audio_out = count(completion_details, "audio_tokens");
        openai_cache_writes w;
        w.details(details);
        w.top(creation_input, claude_5m, claude_1h);
        t.cache_write = w.write;
        t.cache_write_1h = w.write_1h;
        add_exclusive_reasoning(t, as_count(total), t.prompt);
        // prompt_tokens includes the cache reads and writes (OpenAI's convention, which these
        // relays follow). One that cannot (reads + writes above it) reported Anthropic's
        // input_tokens under OpenAI's name: the prompt is then the sum.
        if (t.cache_write > 0 && t.cached + t.cache_write > t.prompt) t.prompt += t.cached + t.cache_write;
        t.reported_usd = reported_cost(cost, byok, cost_details);
        return clamp_parts(t);
      });
}

// OpenAI Responses `usage`.
template <class Node>
std::optional<token_usage> responses_usage(const Node& u) {
  const auto input = count_field(u, "input_tokens");
  const auto output = count_field(u, "output_tokens");
  if (!input && !output) return std::nullopt;
  token_usage t;
  t.prompt = input.value_or(0);
  t.completion = output.value_or(0);
  // Transcriptions spell it input_token_details.
  const auto& plural = member(u, "input_tokens_details");
  const auto& input_details = is_object(plural) ? plural : member(u, "input_token_details");
  t.cached = count(input_details, "cached_tokens");
  // Claude through a relay's Responses API (new-api, LiteLLM): its cache writes, as in chat.
  openai_cache_writes w;
  w.details(input_details);
  t.cache_write = w.write;
  t.cache_write_1h = w.write_1h;
  if (t.cache_write > 0 && t.cached + t.cache_write > t.prompt) t.prompt += t.cached + t.cache_write;
  t.image_in = count(input_details, "image_tokens");
  t.audio_in = count(input_details, "audio_tokens");
  const auto& output_details = member(u, "output_tokens_details");
  t.reasoning = count(output_details, "reasoning_tokens");
  // An image model's output splits into image and text tokens, priced apart (gpt-image-1.5, 2).
  t.text_out = count(output_details, "text_tokens");
  add_exclusive_reasoning(t, count_field(u, "total_tokens"), input.value_or(0));
  // OpenRouter's Responses API reports its cost as its chat API does.
  t.reported_usd = with_members<3>(u, {"cost", "is_byok", "cost_details"}, [](const Node& cost, const Node& byok, const Node& d) {
    return reported_cost(cost, byok, d);
  });
  return clamp_parts(t);
}

// Audio billed by its length (whisper-1 transcriptions and translations: usage {"type":
// "duration", "seconds": 3.2}), in milliseconds; nullopt without a usable `seconds`.
template <class Node>
std::optional<token_usage> duration_usage(const Node& u) {
  const double seconds = as_number(member(u, "seconds")).value_or(-1);
  if (!(seconds >= 0 && seconds < 1e9)) return std::nullopt;
  token_usage t;
  t.audio_ms = static_cast<std::int64_t>(std::llround(seconds * 1000));
  return t;
}

// OpenAI Realtime `usage` (response.done): input_token_details splits the input into text, audio
// and image tokens, cached_tokens_details the cache reads the same way; output_token_details the
// output into text and audio. Each kind has its own price, cache reads included.
template <class Node>
std::optional<token_usage> realtime_usage(const Node& u) {
  auto t = responses_usage(u);  // input_token_details: the cached, image and audio counts
  if (!t) return t;
  const auto& hit = member(member(u, "input_token_details"), "cached_tokens_details");
  t->image_cached = count(hit, "image_tokens");
  t->audio_cached = count(hit, "audio_tokens");
  // The image and audio counts include their cache reads; image_in and audio_in are the rest.
  t->image_in = std::max<std::int64_t>(t->image_in - t->image_cached, 0);
  t->audio_in = std::max<std::int64_t>(t->audio_in - t->audio_cached, 0);
  t->audio_out = count(member(u, "output_token_details"), "audio_tokens");
  return clamp_parts(*t);
}

// The token counts of an Anthropic usage (or of one of its iterations), each field `u` reports
// replacing the one held.
template <class Node>
void apply_counts(anthropic_usage& a, const Node& u) {
  if (const auto v = count_field(u, "input_tokens")) a.input = *v;
  if (const auto v = count_field(u, "output_tokens")) a.output = *v;
  if (const auto v = count_field(u, "cache_read_input_tokens")) a.cache_read = *v;
  if (const auto v = count_field(u, "cache_creation_input_tokens")) a.cache_write = *v;
  const auto& creation = member(u, "cache_creation");
  if (const auto v = count_field(creation, "ephemeral_5m_input_tokens")) a.cache_5m = *v;
  if (const auto v = count_field(creation, "ephemeral_1h_input_tokens")) a.cache_1h = *v;
}

// Replaces each field `u` reports: message_delta counts are cumulative, never increments.
template <class Node>
void apply(anthropic_usage& a, const Node& u) {
  apply_counts(a, u);
  // Server tools billed per use: web search ($10 per 1,000 at Anthropic); web fetch is free.
  if (const auto v = count_field(member(u, "server_tool_use"), "web_search_requests")) a.web_search = *v;
  if (const auto v = count_field(member(u, "output_tokens_details"), "thinking_tokens")) a.thinking = *v;
  if (const auto tier = string_member(u, "service_tier"); !tier.empty()) a.tier = parse_service_tier(tier);
  // Fast mode and US-only inference are priced apart (platform.claude.com/docs: fast-mode, data
  // residency); the usage says which the call ran at.
  if (const auto speed = string_member(u, "speed"); !speed.empty()) a.fast = speed == "fast";
  if (const auto geo = string_member(u, "inference_geo"); !geo.empty()) a.geo_us = geo == "us";
  // usage.iterations, whole in each usage that carries it (message_delta repeats it): read anew.
  const auto& iterations = member(u, "iterations");
  if (!is_array(iterations)) return;
  a.compaction_input = a.compaction_output = a.compaction_read = a.compaction_write = a.compaction_write_1h = 0;
  a.hop_input = a.hop_output = a.hop_read = a.hop_write = a.hop_write_1h = 0;
  a.advisors.clear();
  // A turn more than one model ran: a fallback served it (a fallback_message entry), or the
  // whole chain declined (message entries naming different models, no fallback_message).
  bool fallback = false;
  std::string_view first_model;
  for_items(iterations, [&fallback, &first_model](const Node& it) {
    const std::string_view type = string_member(it, "type");
    if (type == "fallback_message") fallback = true;
    if (type != "message") return;
    const std::string_view m = string_member(it, "model");
    if (m.empty()) return;
    if (first_model.empty()) first_model = m;
    else if (m != first_model) fallback = true;
  });
  for_items(iterations, [&a, fallback](const Node& it) {
    const std::string_view type = string_member(it, "type");
    const bool hop = fallback && (type == "message" || type == "fallback_message");
    // `message` entries are in the top level, and all at the call's model but in a fallback turn.
    if (type != "compaction" && type != "advisor_message" && !hop) return;
    anthropic_usage part;
    apply_counts(part, it);
    const std::int64_t write = part.cache_write >= 0 ? part.cache_write : part.cache_5m + part.cache_1h;
    if (type == "compaction") {
      a.compaction_input += part.input, a.compaction_output += part.output, a.compaction_read += part.cache_read;
      a.compaction_write += write, a.compaction_write_1h += part.cache_1h;
      return;
    }
    std::string_view model = string_member(it, "model");
    if (model.size() > 256) model = {};
    if (hop && model.empty()) return;  // a hop that names no model stays in the top level, at the call's
    auto at = std::find_if(a.advisors.begin(), a.advisors.end(), [&](const auto& e) { return e.first == model; });
    if (at == a.advisors.end() && a.advisors.size() >= 16) return;
    if (hop) {
      a.hop_input += part.input, a.hop_output += part.output, a.hop_read += part.cache_read;
      a.hop_write += write, a.hop_write_1h += part.cache_1h;
    }
    const token_usage t = part.to_openai();
    if (at == a.advisors.end()) a.advisors.emplace_back(std::string(model), t);
    else at->second.add(t);
  });
}

// Web searches of a Responses reply: its `web_search_call` output items (the hosted web_search
// tool, billed per call on top of the tokens). A reply shows the calls it made; OpenAI may bill
// internal sub-searches it does not show, so this is a floor.
// File searches likewise: `file_search_call` items (the hosted file_search tool, $2.50 per
// 1,000 calls). Both counted in one pass over the output items into `t`.
template <class Node>
void count_tool_calls(const Node& output, token_usage& t) {
  t.web_search = t.file_search = 0;
  if (!is_array(output)) return;
  for_items(output, [&](const Node& item) {
    const std::string_view type = string_member(item, "type");
    if (type == "web_search_call") ++t.web_search;
    else if (type == "file_search_call") ++t.file_search;
  });
}

// Anthropic `usage` of a whole message.
template <class Node>
std::optional<token_usage> messages_usage(const Node& u,
                                          std::vector<std::pair<std::string, token_usage>>* advisors = nullptr) {
  if (!count_field(u, "input_tokens") && !count_field(u, "output_tokens")) return std::nullopt;
  anthropic_usage a;
  apply(a, u);
  if (advisors != nullptr) *advisors = std::move(a.advisors);
  return a.to_openai();
}

// Routes tollgate does not know: the usage object's fields tell which API answered.
template <class Node>
std::optional<token_usage> usage_by_shape(const Node& body, const Node& u,
                                          std::vector<std::pair<std::string, token_usage>>* advisors = nullptr) {
  if (!is_object(u)) return std::nullopt;
  if (string_member(u, "type") == "duration") return duration_usage(u);
  if (has_member(u, "prompt_tokens") || has_member(u, "completion_tokens")) return chat_usage(u);
  const bool anthropic = string_member(body, "type") == "message" ||
                         has_member(u, "cache_read_input_tokens") ||
                         has_member(u, "cache_creation_input_tokens");
  return anthropic ? messages_usage(u, advisors) : responses_usage(u);
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

template <class Node>
response_facts read_response(route_kind route, const Node& j) {
  if (!is_object(j)) return {};
  return with_members<9>(j, {"model", "id", "usage", "status", "background", "service_tier", "object", "output", "provider"},
                         [&](const Node& model, const Node& id, const Node& u, const Node& status, const Node& bg,
                             const Node& tier, const Node& object, const Node& output, const Node& provider) {
    response_facts f;
    // A reply's text is kept to what the ledger holds of a client's (256 bytes, as requested_model).
    f.model = utf8_prefix(as_string(model), 256);
    f.id = utf8_prefix(as_string(id), 256);
    f.status = as_string(status);
    f.object = as_string(object);
    f.provider = utf8_prefix(as_string(provider), 64);
    f.background = is_true(bg);
    std::optional<token_usage> t;
    switch (route) {
      case route_kind::chat_completions:
      case route_kind::completions: t = chat_usage(u); break;
      case route_kind::embeddings:
        t = chat_usage(u);
        if (t) t->completion = t->reasoning = 0;
        break;
      case route_kind::responses: t = responses_usage(u); break;
      case route_kind::messages: t = messages_usage(u, &f.other_models); break;
      case route_kind::models:
      case route_kind::other: t = usage_by_shape(j, u, &f.other_models); break;
    }
    if (t) {
      f.has_usage = true;
      f.usage = *t;
      // OpenAI names the tier that served the call at the top level (chat, Responses);
      // Anthropic inside `usage` (read with it).
      if (const auto name = as_string(tier); !name.empty()) f.usage.tier = openai_service_tier(name);
      // A Responses object (a create, or a retrieval of a background response).
      if (as_string(object) == "response") count_tool_calls(output, f.usage);
    }
    return f;
  });
}

}  // namespace

token_usage anthropic_usage::to_openai() const noexcept {
  // Anthropic's input_tokens excludes the cache; the OpenAI convention counts it in prompt.
  // Compaction passes are billed at the same model, outside the top-level counts: added here.
  // A fallback turn's hops are billed at their own models (`advisors`): out of the top level.
  const auto less = [](std::int64_t v, std::int64_t hop) { return std::max<std::int64_t>(v - hop, 0); };
  const std::int64_t top_write = less(cache_write >= 0 ? cache_write : cache_5m + cache_1h, hop_write);
  const std::int64_t top_1h = std::min(less(cache_1h, hop_write_1h), top_write);
  const std::int64_t top_read = less(cache_read, hop_read);
  const std::int64_t write = top_write + compaction_write;
  token_usage t;
  t.prompt = less(input, hop_input) + top_read + write + compaction_input + compaction_read;
  t.completion = less(output, hop_output) + compaction_output;
  t.cached = top_read + compaction_read;
  t.cache_write = write;
  t.cache_write_1h = top_1h + compaction_write_1h;
  t.web_search = web_search;
  t.reasoning = thinking;  // the ledger's reasoning column: part of completion, not billed twice
  t.tier = fast ? service_tier::fast : tier;
  t.geo_us = geo_us;
  return clamp_parts(t);
}

template <class Node>
void add_batch_line(const Node& line, batch_results& out) {
  const auto& result = member(line, "result");
  if (string_member(result, "type") != "succeeded") return;
  const auto& message = member(result, "message");
  const auto t = messages_usage(member(message, "usage"));
  if (!t) return;
  ++out.succeeded;
  const std::string_view model = string_member(message, "model");
  auto it = std::find_if(out.by_model.begin(), out.by_model.end(), [&](const auto& m) { return m.first == model; });
  if (it == out.by_model.end()) {
    out.by_model.emplace_back(std::string(model), token_usage{});
    it = std::prev(out.by_model.end());
    it->second.tier = service_tier::batch;
  }
  it->second.add(*t);
}

batch_results extract_batch_results(std::string_view jsonl) {
  batch_results out;
  try {
    while (!jsonl.empty()) {
      const std::size_t eol = jsonl.find('\n');
      const std::string_view line = trim(jsonl.substr(0, eol));
      jsonl.remove_prefix(eol == std::string_view::npos ? jsonl.size() : eol + 1);
      if (line.empty()) continue;
      if (fast_node root; parse_fast(line, root)) add_batch_line(root, out);
      else if (const json j = parse(line); j.is_object()) add_batch_line(j, out);
    }
  } catch (...) {  // only allocation failure can get here: what was summed stays
  }
  return out;
}

std::optional<std::string_view> top_level_string(std::string_view head, std::string_view key) noexcept {
  int depth = 0;
  std::size_t i = 0;
  // The string that opens at head[i] ('"'), without its quotes; i moves past it. nullopt when it
  // does not end within the head.
  auto string_at = [&head, &i]() -> std::optional<std::string_view> {
    const std::size_t start = ++i;
    for (; i < head.size(); ++i) {
      if (head[i] == '\\') {
        ++i;
      } else if (head[i] == '"') {
        return head.substr(start, i++ - start);
      }
    }
    return std::nullopt;
  };
  auto skip_space = [&head, &i] {
    while (i < head.size() && (head[i] == ' ' || head[i] == '\t' || head[i] == '\n' || head[i] == '\r')) ++i;
  };
  while (i < head.size()) {
    const char c = head[i];
    if (c == '"') {
      const auto s = string_at();
      if (!s) return std::nullopt;
      if (depth != 1) continue;
      skip_space();
      if (i >= head.size() || head[i] != ':') continue;  // a value, not a key
      ++i;
      if (*s != key) continue;
      skip_space();
      if (i >= head.size() || head[i] != '"') return std::nullopt;
      return string_at();
    }
    if (c == '{' || c == '[') ++depth;
    if (c == '}' || c == ']') --depth;
    ++i;
  }
  return std::nullopt;
}

namespace {

bool is_response_end(std::string_view type) noexcept {
  return type == "response.completed" || type == "response.incomplete" || type == "response.failed";
}

// A Live response.event wraps one Responses streaming event: only its response.created and ends
// are read, not the deltas in between. Its type is the first "response.…" string after the
// outer one (`"type":"response.event","event":{"type":"response.output_text.delta"`); when the
// head shows none, the whole message is read to know.
bool wanted_live_response_event(std::string_view head) noexcept {
  constexpr std::string_view outer = "\"response.event\"";
  constexpr std::string_view inner = "\"response.";
  const std::size_t skip = find_bytes(head, outer);
  for (std::size_t at = find_bytes(head, inner); at != std::string_view::npos; at = find_bytes(head, inner, at + 1)) {
    if (at == skip) continue;
    const std::size_t end = head.find('"', at + 1);
    if (end == std::string_view::npos) return true;  // cut by the head
    const std::string_view type = head.substr(at + 1, end - at - 1);
    return type == "response.created" || is_response_end(type);
  }
  return true;
}

}  // namespace

bool realtime_meter::wanted(std::string_view head) noexcept {
  const auto type = top_level_string(head, "type");
  if (!type) return true;  // not within the head: read the whole message to know
  if (*type == "response.event") return wanted_live_response_event(head);
  return *type == "response.done" || is_response_end(*type) || *type == "response.created" ||
         *type == "session.created" || *type == "session.updated" || *type == "session.started" ||
         *type == "session.usage.updated" || *type == "session.closed" || *type == "decision.event" ||
         *type == "transcription_session.created" || *type == "transcription_session.updated" ||
         *type == "conversation.item.input_audio_transcription.completed";
}

bool realtime_meter::wanted_request(std::string_view head) noexcept {
  const auto type = top_level_string(head, "type");
  return !type || *type == "response.create";
}

std::string realtime_meter::requested_model(std::string_view text) {
  try {
    const json j = parse(text);
    if (string_member(j, "type") != "response.create") return {};
    // The SDKs send the Responses body's fields beside `type`; an older shape nests them in `response`.
    std::string_view m = string_member(j, "model");
    if (m.empty()) m = string_member(member(j, "response"), "model");
    return std::string(utf8_prefix(m, 256));
  } catch (...) {
    return {};
  }
}

// A whole Responses object that ended (WebSocket mode's response.completed / .incomplete /
// .failed, or one a Live session's Responses backend delegated), or a Live session's Decision:
// its usage at its own model and service tier, its hosted tool calls counted.
template <class Node>
void realtime_meter::add_api_response(const Node& response) {
  auto t = responses_usage(member(response, "usage"));
  if (!t) return;
  if (const auto tier = string_member(response, "service_tier"); !tier.empty()) t->tier = openai_service_tier(tier);
  count_tool_calls(member(response, "output"), *t);
  std::string_view m = string_member(response, "model");
  if (m.size() > 256) m = {};
  if (m.empty()) m = model_;  // the handshake's ?model=, if any
  ++responses_;
  auto it = std::find_if(api_responses_.begin(), api_responses_.end(),
                         [&](const auto& e) { return e.first == m && e.second.tier == t->tier; });
  if (it == api_responses_.end()) {
    api_responses_.emplace_back(std::string(m), *t);
  } else {
    it->second.add(*t);
  }
}

void realtime_meter::on_message(std::string_view text) {
  // A response.created is only counted: its type leads the event, no parse needed.
  if (top_level_string(text, "type") == "response.created") {
    ++created_;
    return;
  }
  try {
    const json j = parse(text);
    if (!j.is_object()) return;
    const std::string_view type = string_member(j, "type");
    if (type == "response.done") {
      ++finished_;
      if (const auto t = realtime_usage(member(member(j, "response"), "usage"))) {
        ++responses_;
        ++realtime_responses_;
        responses_usage_.add(*t);
      }
    } else if (is_response_end(type)) {
      // The Responses API over WebSocket: a whole Responses object, as its SSE stream ends.
      ++finished_;
      add_api_response(member(j, "response"));
    } else if (type == "response.event") {
      // A Live session's delegated Responses backend: the nested event is read as WebSocket
      // mode's own.
      const auto& inner = member(j, "event");
      const std::string_view inner_type = string_member(inner, "type");
      if (inner_type == "response.created") {
        ++created_;
      } else if (is_response_end(inner_type)) {
        ++finished_;
        add_api_response(member(inner, "response"));
      }
    } else if (type == "decision.event") {
      // A Live session delegating to the Decisions API: the whole Decision (model, usage shaped
      // as the Responses API's) in its decision.completed.
      const auto& inner = member(j, "event");
      if (string_member(inner, "type") == "decision.completed") add_api_response(member(inner, "decision"));
    } else if (type == "session.usage.updated" || type == "session.closed") {
      // Live audio: cumulative seconds; a smaller total (a replayed event) changes nothing.
      const auto seconds = as_number(member(member(j, "usage"), "seconds"));
      if (seconds && std::isfinite(*seconds) && *seconds > live_seconds_ && *seconds < 1e9) {
        live_seconds_ = *seconds;
        ++live_updates_;
      }
      if (type == "session.closed") {
        const auto& session = member(j, "session");
        if (const auto m = string_member(session, "model"); !m.empty() && m.size() <= 256 && model_.empty())
          model_ = std::string(m);
      }
    } else if (type == "conversation.item.input_audio_transcription.completed") {
      // Token usage (gpt-4o-transcribe and its kin); whisper-1 reports seconds, which no entry prices.
      const auto& u = member(j, "usage");
      if (transcription_model_.empty()) return;
      const auto t = string_member(u, "type") == "duration" ? duration_usage(u) : responses_usage(u);
      if (!t) return;
      ++transcriptions_;
      auto it = std::find_if(transcription_usage_.begin(), transcription_usage_.end(),
                             [this](const auto& m) { return m.first == transcription_model_; });
      if (it == transcription_usage_.end()) it = transcription_usage_.insert(it, {transcription_model_, token_usage{}});
      it->second.add(*t);
    } else if (type.ends_with("session.created") || type.ends_with("session.updated") || type == "session.started") {
      const auto& session = member(j, "session");
      if (type == "session.started" && live_session_id_.empty())
        if (const auto id = string_member(session, "id"); !id.empty() && id.size() <= 256) live_session_id_ = std::string(id);
      if (const auto m = string_member(session, "model"); !m.empty() && m.size() <= 256) model_ = std::string(m);
      // GA: session.audio.input.transcription; beta: session.input_audio_transcription. A
      // transcription session (intent=transcription) names only that model.
      const auto& ga = member(member(member(session, "audio"), "input"), "transcription");
      const auto& beta = member(session, "input_audio_transcription");
      const auto m = string_member(is_object(ga) ? ga : beta, "model");
      if (!m.empty() && m.size() <= 256) transcription_model_ = std::string(m);
    }
  } catch (...) {  // only allocation failure can get here: what was summed stays
  }
}

std::vector<std::pair<std::string, token_usage>> realtime_meter::by_model() const {
  std::vector<std::pair<std::string, token_usage>> out;
  if (realtime_responses_ > 0) out.emplace_back(model_, responses_usage_);
  if (live_seconds_ > 0) {  // a Live session's audio, at its model's per_minute price
    token_usage audio;
    audio.audio_ms = static_cast<std::int64_t>(std::llround(live_seconds_ * 1000));
    out.emplace_back(model_, audio);
  }
  for (const auto& m : api_responses_) out.push_back(m);
  for (const auto& m : transcription_usage_) out.push_back(m);
  return out;
}

response_facts extract_response(route_kind route, std::string_view body) {
  try {
    if (fast_node root; parse_fast(body, root)) return read_response(route, root);
    if (body.size() > fast_max_bytes) {
      dom::parser big;
      if (fast_node root; parse_large(body, big, root)) return read_response(route, root);
    }
    return read_response(route, parse(body));
  } catch (...) {  // only allocation failure can get here
    return {};
  }
}

namespace {

// A whole number of up to 6 digits, else -1.
std::int64_t small_count(std::string_view s) noexcept {
  if (s.empty() || s.size() > 6 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return -1;
  std::int64_t v = 0;
  for (char c : s) v = v * 10 + (c - '0');
  return v;
}

// A size, quality or length as sent: a string, or a whole number written out ("seconds": 8).
template <class Node>
std::string text_or_count(const Node& v) {
  if (is_string(v)) return std::string(utf8_prefix(as_string(v), 64));
  if (const auto n = as_count(v)) return std::to_string(*n);
  return {};
}

template <class Node>
media_request read_media_request(const Node& j) {
  return with_members<4>(j, {"size", "quality", "seconds", "n"},
                         [](const Node& size, const Node& quality, const Node& seconds, const Node& n) {
    return media_request{text_or_count(size), text_or_count(quality), text_or_count(seconds), text_or_count(n)};
  });
}

template <class Node>
media_reply read_media_reply(const Node& j) {
  media_reply r;
  if (!is_object(j)) return r;
  with_members<9>(j, {"data", "seconds", "size", "quality", "model", "status", "object", "usage", "id"},
                  [&](const Node& data, const Node& seconds, const Node& size, const Node& quality, const Node& model,
                      const Node& status, const Node& object, const Node& usage, const Node& id) {
    if (is_array(data)) {
      r.images = 0;
      for_items(data, [&](const Node&) { ++r.images; });
    }
    // Sora's `seconds` is a string ("8"); a number is taken too. Fractions are not whole seconds.
    r.seconds = small_count(text_or_count(seconds));
    r.size = text_or_count(size);
    r.quality = text_or_count(quality);
    r.model = std::string(utf8_prefix(as_string(model), 256));
    r.status = std::string(utf8_prefix(as_string(status), 64));
    r.object = std::string(utf8_prefix(as_string(object), 64));
    r.has_usage = is_object(usage);
    r.id = std::string(utf8_prefix(as_string(id), 256));
  });
  return r;
}

// Parses `body` with simdjson (a parser of its own above fast_max_bytes), else nlohmann, and
// hands the root to f.
template <class R, class F>
R read_json(std::string_view body, F&& f) {
  try {
    if (fast_node root; parse_fast(body, root)) return f(root);
    if (body.size() > fast_max_bytes) {
      dom::parser big;
      if (fast_node root; parse_large(body, big, root)) return f(root);
    }
    return f(parse(body));
  } catch (...) {  // only allocation failure can get here
    return R{};
  }
}

}  // namespace

std::string_view remix_source_id(std::string_view method, std::string_view path) noexcept {
  if (method != "POST") return {};
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  constexpr std::string_view videos = "/v1/videos/", remix = "/remix";
  if (!path.starts_with(videos) || !path.ends_with(remix) || path.size() <= videos.size() + remix.size()) return {};
  const std::string_view id = path.substr(videos.size(), path.size() - videos.size() - remix.size());
  return id.find('/') == std::string_view::npos ? id : std::string_view();
}

media_call media_call_of(std::string_view method, std::string_view path) noexcept {
  if (method != "POST") return media_call::none;
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (path == "/v1/images/generations" || path == "/v1/images/edits" || path == "/v1/images/variations")
    return media_call::images;
  if (path == "/v1/videos") return media_call::video;
  if (!remix_source_id(method, path).empty()) return media_call::video_remix;
  return media_call::none;
}

media_request media_request_of(std::string_view json_body) {
  return read_json<media_request>(json_body, [](const auto& root) {
    return is_object(root) ? read_media_request(root) : media_request{};
  });
}

media_reply extract_media(std::string_view body) {
  return read_json<media_reply>(body, [](const auto& root) { return read_media_reply(root); });
}

token_usage media_worst(media_call kind, const media_request& req) {
  token_usage t;
  if (kind == media_call::none) return t;
  std::string_view size = req.size;
  if (kind == media_call::images) {
    const std::int64_t n = small_count(req.n);
    t.images = n < 1 ? 1 : std::min<std::int64_t>(n, 10);
    if (size.empty()) size = "1024x1024";
  } else {
    const std::int64_t s = small_count(req.seconds);
    // A remix asks nothing: its original's length is not known here, so the longest (12 s).
    t.video_seconds = s > 0 ? s : kind == media_call::video_remix ? 12 : 4;
    if (size.empty()) size = "720x1280";
  }
  if (const auto wh = parse_pixel_size(size)) t.media_w = wh->first, t.media_h = wh->second;
  t.media_hd = req.quality == "hd";
  return t;
}

std::optional<token_usage> media_usage(media_call kind, const media_request& req, const media_reply& reply) {
  if (kind == media_call::none || reply.has_usage) return std::nullopt;
  token_usage t;
  const auto pick = [](const std::string& a, const std::string& b) -> const std::string& { return a.empty() ? b : a; };
  const std::string& quality = pick(reply.quality, req.quality);
  std::string_view size = pick(reply.size, req.size);
  if (kind == media_call::images) {
    if (reply.images <= 0) return std::nullopt;
    t.images = reply.images;
    if (size.empty()) size = "1024x1024";  // DALL-E 2 and 3's default
  } else {
    // A create or remix answers with the queued video object; one that failed at once bills nothing.
    if (reply.object != "video" || reply.status == "failed") return std::nullopt;
    std::int64_t seconds = reply.seconds;
    if (seconds < 0) seconds = small_count(req.seconds);
    if (seconds < 0) seconds = 4;  // the API's default length
    if (seconds == 0) return std::nullopt;
    t.video_seconds = seconds;
    if (size.empty()) size = "720x1280";  // the API's default
  }
  if (const auto wh = parse_pixel_size(size)) t.media_w = wh->first, t.media_h = wh->second;
  t.media_hd = quality == "hd";
  return t;
}

// True when s is well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
bool valid_utf8(std::string_view text) noexcept {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return false;  // continuation byte as lead, C0/C1 overlongs, F5..FF
    }
    if (i + len > n || s[i + 1] < lo || s[i + 1] > hi) return false;
    for (std::size_t j = 2; j < len; ++j)
      if ((s[i + j] & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
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
    // Prompts are mostly ASCII: eight bytes at a time while no byte has its high bit set
    // (this loop ran ~7 instructions per byte, 6 % of a proxied call's user-space work).
    while (i + 8 <= n) {
      std::uint64_t w;
      std::memcpy(&w, s + i, 8);
      if (w & 0x8080808080808080ull) break;
      ascii_bytes += 8;
      i += 8;
    }
    if (i >= n) break;
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

template <class Node>
void stream_meter::note_model_id(const Node& obj) {
  if (!model_.empty() && !id_.empty()) return;
  with_members<2>(obj, {"model", "id"}, [this](const Node& model, const Node& id) { note_model_id(model, id); });
}

template <class Node>
void stream_meter::note_model_id(const Node& model, const Node& id) {
  if (model_.empty()) model_ = utf8_prefix(as_string(model), 256);
  if (id_.empty()) id_ = utf8_prefix(as_string(id), 256);
}

// A chat / completions chunk. Its members are read in one pass, `type` included (chat chunks
// carry none; an `error` event type or a typed error document is an error).
template <class Node>
bool stream_meter::on_chat(const Node& j, const sse_event& ev) {
  return with_members<8>(j, {"type", "error", "model", "id", "usage", "choices", "service_tier", "provider"},
                         [&](const Node& type_node, const Node& error, const Node& model, const Node& id,
                             const Node& usage, const Node& choices, const Node& tier, const Node& provider) {
    std::string_view type = as_string(type_node);
    if (type.empty()) type = ev.event;
    if (type == "error" || !is_null(error)) {  // mid-stream `data: {"error": {...}}`
      saw_error_ = true;
      return true;
    }
    note_model_id(model, id);
    if (provider_.empty()) provider_ = utf8_prefix(as_string(provider), 64);
    // Every chunk names the tier serving the call; the usage chunk is always parsed.
    if (const auto name = as_string(tier); !name.empty()) usage_.tier = openai_service_tier(name);
    // The last non-null usage wins: relays send it on the usage-only chunk, on the last content
    // chunk, or as a running total on every chunk.
    // The tier comes from the chunks' service_tier, not from the usage.
    auto take_usage = [this](const token_usage& t) {
      const service_tier seen = usage_.tier;
      usage_ = t;
      usage_.tier = seen;
      has_usage_ = true;
    };
    if (const auto t = chat_usage(usage)) take_usage(*t);
    if (!is_array(choices)) return true;
    known_kind_ = true;
    std::size_t n_choices = 0;
    bool tools = false, choice_usage = false;
    text_members texts(streamed_text_);
    for_items(choices, [&](const Node& choice) {
      ++n_choices;
      with_members<3>(choice, {"text", "delta", "usage"}, [&](const Node& text, const Node& delta, const Node& u) {
        // Moonshot (Kimi) puts the usage in the finish chunk's choice (and may repeat it at the
        // top level on a later chunk): taken when the chunk has none at the top, never summed.
        if (!is_null(u)) {
          choice_usage = true;
          if (const auto t = chat_usage(u); t && is_null(usage)) take_usage(*t);
        }
        texts.add("text", text);  // legacy completions
        if (!is_object(delta)) return;
        with_members<4>(delta, {"content", "reasoning_content", "reasoning", "tool_calls"},
                        [&](const Node& content, const Node& reasoning_content, const Node& reasoning,
                            const Node& tool_calls) {
          texts.add("content", content);
          texts.add("reasoning_content", reasoning_content);
          texts.add("reasoning", reasoning);
          tools = !is_null(tool_calls);
          for_items(tool_calls, [&](const Node& call) {
            streamed_text_.add(string_member(member(call, "function"), "arguments"));
          });
        });
      });
    });
    // One choice with one text member, no usage and no tool calls: the shape of nearly every
    // chunk of a stream, whose next chunks can be read through a frame (on_event).
    if (n_choices == 1 && !tools && !choice_usage && is_null(usage)) texts.offer(frame_key_, frame_text_);
    // Only the include_usage chunk tollgate asked for on the client's behalf is dropped.
    return !(strip_ && n_choices == 0 && !is_null(usage));
  });
}

namespace {

// Whether `s` can stand as the inside of a JSON string literal exactly as written: no quote,
// backslash or control character, and well-formed UTF-8, as simdjson and nlohmann both require.
bool plain_json_text(std::string_view s) noexcept {
  bool ascii = true;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == '"' || c == '\\') return false;
    ascii = ascii && c < 0x80;
  }
  return ascii || valid_utf8(s);
}

}  // namespace

namespace {

// The `"usage": null` members append_without_null_usage removes from `raw`: calls
// removed(at, len) for each, in order, with offsets into `raw`.
// One scan for the member's name (find_bytes: a search per spelling stopped at every quote or
// comma, ~0.9 µs per 300-byte chunk), then the spellings are matched around each occurrence.
// Those that carry their leading comma start before it, so they win over those that carry the
// trailing one (the longest first), which must start where a member can: after `{` or `,` (a
// key ending in an escaped quote, `"\"usage":null,`, is not the member).
template <class F>
void for_each_null_usage(std::string_view raw, F&& removed) {
  struct spelling {
    std::size_t back;  // bytes before the name's opening quote
    std::string_view form;
  };
  static constexpr spelling leading[] = {{2, ", \"usage\": null"}, {1, ",\"usage\":null"}, {1, ",\"usage\": null"}};
  static constexpr std::string_view trailing[] = {"\"usage\": null, ", "\"usage\": null,", "\"usage\":null,"};
  constexpr std::string_view name = "\"usage\"";
  std::size_t base = 0;  // offset of `raw` in the caller's bytes
  std::size_t from = 0;
  for (;;) {
    const std::size_t q = find_bytes(raw, name, from);
    if (q == std::string_view::npos) break;
    const auto spelled = [&](std::size_t start, std::string_view form) { return raw.substr(start, form.size()) == form; };
    std::size_t at = std::string_view::npos, len = 0;
    for (const spelling& s : leading)
      if (q >= s.back && spelled(q - s.back, s.form)) {
        at = q - s.back, len = s.form.size();
        break;
      }
    if (at == std::string_view::npos) {
      std::size_t b = q;
      while (b > 0 && (raw[b - 1] == ' ' || raw[b - 1] == '\t' || raw[b - 1] == '\n' || raw[b - 1] == '\r')) --b;
      if (b > 0 && (raw[b - 1] == '{' || raw[b - 1] == ','))
        for (std::string_view form : trailing)
          if (spelled(q, form)) {
            at = q, len = form.size();
            break;
          }
    }
    if (at == std::string_view::npos) {
      from = q + 1;
      continue;
    }
    removed(base + at, len);
    raw.remove_prefix(at + len);
    base += at + len;
    from = 0;
  }
}

}  // namespace

// Chunk frames. A stream's chunks are nearly always the same bytes but for one text value (and,
// from OpenAI, an `obfuscation` string of random padding, and on Responses events a
// `sequence_number`, neither of which the meter reads):
//   {"id":"chatcmpl-1",...,"choices":[{"index":0,"delta":{"content":"<text>"},...}],"usage":null,"obfuscation":"<pad>"}
// (Anthropic and Responses text deltas likewise). After a chunk read by the full parser had one text member
// (one choice, and no usage, tool call or error), the bytes around those values are kept, with
// the event's `event:` name. A later event of the same name whose data is exactly those bytes
// with other string insides in the holes, each valid as written (no quote, backslash or control
// byte, well-formed UTF-8), is that same document with other strings there: the text is tallied
// without a parse, with the result the parse would give. Why the holes are located exactly: in
// JSON text without a backslash every `"` delimits a string, so `"content":"` can only be that
// key followed by a string value, and the value ends at the next `"`; when the key occurs once,
// it is the member the parse read (a duplicate key would occur twice). Anything else (an escape
// in the text, another shape, another event name) takes the full parse.
namespace {

// The inside of the string value of the one `"key":"` in `data`, or npos when the key is absent
// or not unique. `data` has no backslash, so the value ends at the next quote.
std::pair<std::size_t, std::size_t> unique_string_value(std::string_view data, std::string_view key) {
  constexpr auto none = std::pair{std::string_view::npos, std::string_view::npos};
  char pattern[24];  // `"reasoning_content":"` is the longest
  const std::size_t plen = key.size() + 4;
  if (plen > sizeof pattern) return none;
  pattern[0] = '"';
  std::memcpy(pattern + 1, key.data(), key.size());
  std::memcpy(pattern + 1 + key.size(), "\":\"", 3);
  const std::string_view pat(pattern, plen);
  const std::size_t at = find_bytes(data, pat);
  if (at == std::string_view::npos || find_bytes(data, pat, at + 1) != std::string_view::npos) return none;
  const std::size_t start = at + plen, end = data.find('"', start);
  if (end == std::string_view::npos) return none;
  return {start, end};
}

}  // namespace

void stream_meter::learn_frame(std::string_view data, std::string_view event) {
  const std::string_view key = frame_key_, text = frame_text_;
  frame_key_ = {};
  frame_text_ = {};
  if (data.find('\\') != std::string_view::npos) return;
  const auto [ts, te] = unique_string_value(data, key);
  if (ts == std::string_view::npos || data.substr(ts, te - ts) != text) return;
  struct hole {
    std::size_t start, end;
    frame_hole kind;
  };
  std::array<hole, kMaxFrameHoles> holes{};
  std::size_t n = 0;
  holes[n++] = {ts, te, frame_hole::text};
  if (find_bytes(data, "\"obfuscation\":") != std::string_view::npos) {
    const auto [ps, pe] = unique_string_value(data, "obfuscation");
    if (ps == std::string_view::npos) return;  // twice, or not a string: no frame
    holes[n++] = {ps, pe, frame_hole::padding};
  }
  // Responses events count themselves: `"sequence_number":<integer>`, never read by the meter.
  constexpr std::string_view seq = "\"sequence_number\":";
  if (const std::size_t at = find_bytes(data, seq); at != std::string_view::npos) {
    const std::size_t start = at + seq.size();
    std::size_t end = start;
    while (end < data.size() && data[end] >= '0' && data[end] <= '9') ++end;
    if (find_bytes(data, seq, at + 1) != std::string_view::npos || end == start || end == data.size() ||
        data[end] == '.' || data[end] == 'e' || data[end] == 'E')
      return;
    holes[n++] = {start, end, frame_hole::integer};
  }
  // At most three holes: an insertion sort (std::sort's introsort, inlined under a profile,
  // makes g++ 12 warn of out-of-bounds subscripts it cannot reach).
  for (std::size_t i = 1; i < n; ++i)
    for (std::size_t j = i; j > 0 && holes[j].start < holes[j - 1].start; --j) std::swap(holes[j], holes[j - 1]);
  std::size_t from = 0;
  for (std::size_t i = 0; i < n; ++i) {
    frame_seg_[i].assign(data.substr(from, holes[i].start - from));
    frame_kind_[i] = holes[i].kind;
    from = holes[i].end;
  }
  frame_seg_[n].assign(data.substr(from));
  frame_holes_ = n;
  frame_event_.assign(event);
  has_frame_ = true;
  frame_strips_ = false;
  if (strip_) {
    for (std::size_t i = 0; i < n; ++i) hole_start_[i] = holes[i].start, hole_end_[i] = holes[i].end;
    plan_stripping(data);
  }
}

// Strip mode: where the frame's `"usage": null` members are, so that append_stripped cuts a framed
// event without a search. Each member found in the learned data must lie inside one segment.
// Then every framed event has it at the same place: the event differs only inside the holes,
// which hold no quote, so no other `"usage"` can appear, and the bytes a match is decided on
// (the comma before, the spelling after, the `{` or `,` before the name) are the segment's. The
// plan is checked against append_without_null_usage on the learned data before it is used.
// hole_start_ / hole_end_ hold the learned data's holes.
void stream_meter::plan_stripping(std::string_view data) {
  const std::size_t n = frame_holes_;
  const auto seg_begin = [&](std::size_t i) { return i == 0 ? std::size_t{0} : hole_end_[i - 1]; };
  const auto seg_end = [&](std::size_t i) { return i == n ? data.size() : hole_start_[i]; };
  n_cuts_ = 0;
  bool fits = true;
  std::size_t seg = 0;
  for_each_null_usage(data, [&](std::size_t at, std::size_t len) {
    if (!fits) return;
    while (seg <= n && at + len > seg_end(seg)) ++seg;
    if (seg > n || at < seg_begin(seg) || n_cuts_ == kMaxCuts) {
      fits = false;  // across a hole, or too many
      return;
    }
    cuts_[n_cuts_++] = {seg, at - seg_begin(seg), len};
  });
  if (!fits) return;
  std::string planned, expected;
  append_cut(data, 0, planned);
  append_without_null_usage(data, expected);
  frame_strips_ = planned == expected;
}

// `raw` without the plan's cuts; the framed data, whose holes are hole_start_ / hole_end_, starts
// at raw[base].
void stream_meter::append_cut(std::string_view raw, std::size_t base, std::string& out) const {
  std::size_t kept = 0;
  for (std::size_t k = 0; k < n_cuts_; ++k) {
    const cut& c = cuts_[k];
    const std::size_t at = base + (c.seg == 0 ? 0 : hole_end_[c.seg - 1]) + c.offset;
    out.append(raw.data() + kept, at - kept);
    kept = at + c.len;
  }
  out.append(raw.data() + kept, raw.size() - kept);
}

void stream_meter::append_stripped(const sse_event& ev, std::string& out) {
  const std::string_view raw = ev.raw, d = framed_data_;
  // The plan covers the data; the bytes around it (`data: `, the blank line) are kept as they
  // are when they hold no quote, so no member can start or end there.
  const auto no_quote = [](const char* p, const char* end) { return std::find(p, end, '"') == end; };
  if (frame_strips_ && !d.empty() && std::less_equal<>{}(raw.data(), d.data()) &&
      std::less_equal<>{}(d.data() + d.size(), raw.data() + raw.size()) && no_quote(raw.data(), d.data()) &&
      no_quote(d.data() + d.size(), raw.data() + raw.size())) {
    append_cut(raw, static_cast<std::size_t>(d.data() - raw.data()), out);
    ++cut_by_frame_;
    return;
  }
  append_without_null_usage(raw, out);
}

bool stream_meter::through_frame(std::string_view data) {
  if (!data.starts_with(frame_seg_[0])) return false;
  std::size_t at = frame_seg_[0].size();
  std::string_view text;
  for (std::size_t i = 0; i < frame_holes_; ++i) {
    std::size_t end = at;
    if (frame_kind_[i] == frame_hole::integer) {
      // A JSON integer as written: 0, or digits without a leading zero. The segment after it
      // starts with what followed the learned number (`,` or `}`), never a digit, `.` or `e`.
      while (end < data.size() && data[end] >= '0' && data[end] <= '9') ++end;
      if (end == at || (data[at] == '0' && end - at > 1)) return false;
    } else {
      end = data.find('"', at);
      if (end == std::string_view::npos) return false;
      const std::string_view inside = data.substr(at, end - at);
      if (!plain_json_text(inside)) return false;
      if (frame_kind_[i] == frame_hole::text) text = inside;
    }
    const std::string_view seg = frame_seg_[i + 1];
    if (data.substr(end, seg.size()) != seg) return false;
    hole_start_[i] = at;
    hole_end_[i] = end;
    at = end + seg.size();
  }
  if (at != data.size()) return false;
  streamed_text_.add(text);
  ++framed_;
  framed_data_ = data;
  return true;
}

template <class Node>
void stream_meter::on_responses(const Node& j, std::string_view type) {
  if (type == "response.created" || type == "response.in_progress") {
    const auto& response = member(j, "response");
    note_model_id(response);
    if (is_true(member(response, "background"))) background_ = true;
  } else if (type == "response.output_text.delta" || type == "response.reasoning_summary_text.delta" ||
             type == "response.reasoning_text.delta" || type == "response.refusal.delta" ||
             type == "response.function_call_arguments.delta") {
    text_members texts(streamed_text_);
    texts.add("delta", member(j, "delta"));
    texts.offer(frame_key_, frame_text_);  // the next deltas read through a frame
  } else if (type == "response.completed" || type == "response.incomplete" ||
             type == "response.failed") {
    const auto& response = member(j, "response");
    note_model_id(response);
    // The relay's provider, as the non-stream reply names it: on the Responses object.
    if (provider_.empty()) provider_ = utf8_prefix(string_member(response, "provider"), 64);
    if (const auto t = responses_usage(member(response, "usage"))) {
      usage_ = *t;
      if (const auto name = string_member(response, "service_tier"); !name.empty())
        usage_.tier = openai_service_tier(name);
      count_tool_calls(member(response, "output"), usage_);
      has_usage_ = true;
    }
    saw_done_ = true;
    if (type == "response.failed") saw_error_ = true;
  }
}

template <class Node>
void stream_meter::on_messages(const Node& j, std::string_view type) {
  if (type == "message_start") {
    const auto& message = member(j, "message");
    note_model_id(message);
    const auto& u = member(message, "usage");
    if (is_object(u)) {
      anthropic_ = {};
      apply(anthropic_, u);
      usage_ = anthropic_.to_openai();
      has_usage_ = true;
      provisional_ = true;
    }
  } else if (type == "message_delta") {
    const auto& u = member(j, "usage");
    if (is_object(u)) {
      apply(anthropic_, u);
      usage_ = anthropic_.to_openai();
      has_usage_ = true;
      provisional_ = false;
    }
  } else if (type == "content_block_delta") {
    text_members texts(streamed_text_);
    with_members<3>(member(j, "delta"), {"text", "thinking", "partial_json"},
                    [&](const Node& text, const Node& thinking, const Node& partial_json) {
      texts.add("text", text);
      texts.add("thinking", thinking);
      texts.add("partial_json", partial_json);
    });
    texts.offer(frame_key_, frame_text_);  // every text delta after the first reads through a frame
  } else if (type == "message_stop") {
    saw_done_ = true;
  }
}

// Typed events of other streams: image generation and edits (`image_generation.partial_image`
// ... `image_generation.completed`), transcriptions (`transcript.text.delta` ...
// `transcript.text.done`) and speech (`speech.audio.delta` ... `speech.audio.done`). Their last
// event carries the call's usage, shaped like the Responses API's (input_tokens, output_tokens).
template <class Node>
void stream_meter::on_media(const Node& j, std::string_view type) {
  const bool last = type.ends_with(".completed") || type.ends_with(".done");
  if (type.starts_with("image_generation.") || type.starts_with("image_edit.") ||
      type.starts_with("transcript.text.") || type.starts_with("speech.audio."))
    known_kind_ = true;
  if (type == "transcript.text.delta") {
    text_members texts(streamed_text_);
    texts.add("delta", member(j, "delta"));
  }
  if (!last) return;
  if (const auto t = usage_by_shape(j, member(j, "usage"))) {
    usage_ = *t;
    has_usage_ = true;
    known_kind_ = true;
    saw_done_ = true;
  } else if (known_kind_) {
    saw_done_ = true;
  }
}

template <class Node>
bool stream_meter::on_document(const Node& j, const sse_event& ev) {
  if (!is_object(j)) {
    if (ev.event == "error") saw_error_ = true;
    return true;
  }
  if (route_ != route_kind::responses && route_ != route_kind::messages && route_ != route_kind::other)
    return on_chat(j, ev);  // reads `type` in its own pass
  std::string_view type = string_member(j, "type");
  if (type.empty()) type = ev.event;
  if (type == "error") {  // Responses and Anthropic error events
    saw_error_ = true;
    return true;
  }
  switch (route_) {
    case route_kind::responses: on_responses(j, type); return true;
    case route_kind::messages: on_messages(j, type); return true;
    default:
      // An unknown route may still be a typed stream; chat chunks carry no `type`.
      if (type.starts_with("response.")) {
        known_kind_ = true;
        on_responses(j, type);
        return true;
      }
      if (type.starts_with("message_") || type.starts_with("content_block_")) {
        known_kind_ = true;
        on_messages(j, type);
        return true;
      }
      if (!type.empty()) {
        on_media(j, type);
        return true;
      }
      return on_chat(j, ev);
  }
}

bool stream_meter::on_event(const sse_event& ev) {
  framed_data_ = {};
  if (!ev.has_data) return true;  // comments / keep-alives
  try {
    const std::string_view data = trim(ev.data);
    if (data.empty()) {  // `data:` with nothing in it: no document to read
      if (ev.event == "error") saw_error_ = true;  // as an `error` event whose data is no object
      return true;
    }
    if (data == "[DONE]") {  // the most frequent non-JSON payload: no parse
      saw_done_ = true;
      return true;
    }
    if (has_frame_ && ev.event == frame_event_ && through_frame(data)) return true;
    frame_key_ = frame_text_ = {};
    if (fast_node root; parse_fast(data, root)) {
      const bool keep = on_document(root, ev);
      if (!frame_key_.empty()) learn_frame(data, ev.event);  // views into the parser: used before the next parse
      return keep;
    }
    if (data.size() > fast_max_bytes) {
      dom::parser big;
      if (fast_node root; parse_large(data, big, root)) {
        const bool keep = on_document(root, ev);
        frame_key_ = frame_text_ = {};  // views into `big`, freed on return: no frame from so large an event
        return keep;
      }
    }
    const bool keep = on_document(parse(data), ev);
    frame_key_ = frame_text_ = {};  // they pointed into the document just freed; frames come from the fast path only
    return keep;
  } catch (...) {  // only allocation failure can get here; never lose the client's bytes
    return true;
  }
}

}  // namespace tollgate

namespace tollgate {

bool append_without_null_usage(std::string_view raw, std::string& out) {
  std::size_t kept = 0;
  bool removed = false;
  for_each_null_usage(raw, [&](std::size_t at, std::size_t len) {
    out.append(raw.substr(kept, at - kept));
    kept = at + len;
    removed = true;
  });
  out.append(raw.substr(kept));
  return removed;
}

}  // namespace tollgate
