// Reading the few fields tollgate needs from a JSON request body, in one validating pass
// (simdjson; nlohmann SAX names a bad body's problem): model, stream, stream_options.include_usage,
// user, max tokens and a prompt-size estimate. Also the one body rewrite tollgate ever does:
// adding include_usage. Pure.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>
#include <string_view>

namespace tollgate {

enum class request_problem {
  none,
  malformed_json,     // not JSON (syntax error, trailing garbage, empty body)
  not_object,         // valid JSON, but not one object
  model_not_string,   // `model` present with a non-string value
  stream_not_bool,    // `stream` present with a non-boolean value
  too_deep,           // nesting deeper than max_depth
  invalid_utf8,       // a string (or the body) is not valid UTF-8
};

struct request_facts {
  request_problem problem = request_problem::none;
  std::string problem_detail;            // short text for the client error message (no body text)
  bool has_model = false;
  std::string model;
  bool stream = false;
  bool has_stream_options = false;       // `stream_options` present (any value)
  bool include_usage = false;            // stream_options.include_usage == true
  std::string user;                      // top-level `user` (string), else `safety_identifier`
                                         // (OpenAI's successor to it), else Anthropic's
                                         // `metadata.user_id`; "" when none is a string
  std::optional<std::int64_t> max_tokens;  // max_tokens / max_completion_tokens / max_output_tokens
  std::int64_t choices = 1;              // `n` (1-128): each choice may use max_tokens
  std::int64_t prompt_tokens_estimate = 0; // estimate_tokens() over the prompt-ish strings (binary
                                         // payloads at their media's rate: binary_payload_tokens)
  bool prompt_estimated = false;         // prompt_tokens_estimate was computed (see below)
  // What the call asks to be billed at, for the worst-case reservation: `speed` "fast"
  // (Anthropic's fast mode, up to 6x), `service_tier` "priority" or "fast" (OpenAI priority
  // processing), `inference_geo` "us" (Anthropic's US-only inference, 1.1x).
  bool fast = false, priority = false, geo_us = false;
  // Prompt caching the call asks for (Anthropic `cache_control`, on a content block, a tool, a
  // system block or top-level): 0 none, 1 writes at the 5-minute price, 2 a `ttl` of "1h"
  // (writes at 2x input). Read only with the prompt tally (estimate_prompt): the reservation
  // prices the prompt as written to the cache when the call may write it.
  std::uint8_t cache_control = 0;
  // Anthropic's server-side fallbacks (`fallbacks`, beta): the models tried in turn when the
  // requested one declines, each billed for the prompt again and up to its own `max_tokens`
  // (the request's when not set), at its `speed` (the request's fast mode when not set, standard
  // when null). "default" (the model's server-defined chain, models not named) sets
  // default_fallbacks. At most 8 entries are kept; an entry without a string model is skipped.
  struct fallback_hop {
    std::string model;
    std::optional<std::int64_t> max_tokens;
    std::optional<bool> fast;  // unset: as the request
    bool operator==(const fallback_hop&) const = default;
  };
  std::vector<fallback_hop> fallbacks;
  bool default_fallbacks = false;
};

// max_depth: 128 per the relay-core issue (an object or array opening counts one level).
inline constexpr int default_max_depth = 128;
// estimate_prompt = false may skip the prompt tally (prompt_estimated then stays false): the
// relay needs the estimate only for admission control and for calls the upstream never reported
// usage for, and walking every message is ~4 % of a proxied call's instructions.
request_facts inspect_request(std::string_view body, int max_depth = default_max_depth, bool estimate_prompt = true);

// A prompt string that carries binary data rather than text: an image, PDF or audio clip sent
// inline as base64, bare (Anthropic's `source.data`, OpenAI's `input_audio.data`) or in a
// `data:` URL (`image_url.url`, `file_data`). Its tokens depend on the medium, not on its
// length: a 1 MB PNG read as text would be ~350,000 tokens; the APIs bill it ~1,000-2,500.
// Returns the tokens to count for s (see request_inspect.cpp for the rates), or -1 when s is
// text. A base64 data: URL is always a payload; bare base64 only when it is 256 bytes or more
// and decodes to a known file type (PNG, JPEG, GIF, WebP, HEIC/AVIF, PDF, WAV, MP3, Ogg, FLAC,
// MP4, WebM).
std::int64_t binary_payload_tokens(std::string_view s) noexcept;

// The `model` and `stream` fields of a multipart/form-data body (audio transcriptions and
// translations, image edits): what the ledger needs of a pass-through call it may still price.
// Bounded work on large bodies: a part over 256 KiB (the file) is skipped by looking for the next
// boundary in its first 64 KiB, then in the body's last 64 KiB, so fields sent after a large file
// are found when they lie at the end (the OpenAI SDKs send them before or right after it).
// Also an image edit's or video's `size`, `quality`, `seconds` and `n` (what its price depends on).
struct form_facts {
  bool has_model = false;
  std::string model;
  std::size_t model_at = 0;  // the model value's bytes in the body (a rewrite replaces them)
  std::size_t model_len = 0;
  bool stream = false;
  std::string size, quality, seconds, n;  // "" when absent (or over 64 bytes)
};
form_facts inspect_form(std::string_view body, std::string_view content_type);
// The content type is multipart/form-data (parameters aside).
bool is_form_data(std::string_view content_type) noexcept;
// The same facts of a form stored in a file (over the spool size), from its first bytes `head`
// and its last bytes `tail` (empty when `head` is the whole body): the SDKs send the fields
// before the file (Python) or after it (Node). `size` is the whole body's; model_at is an offset
// in it. A value cut by the seam between the two is not read.
form_facts inspect_form_ends(std::string_view head, std::string_view tail, std::uint64_t size,
                             std::string_view content_type);

// A speech request (POST /v1/audio/speech): the characters (Unicode code points) of its top-level
// `input` string (what tts-1 bills; 0 when the body is not JSON or has no such string), the
// estimated text tokens of `input` and `instructions` (what gpt-4o-mini-tts bills as input), and
// its `response_format` ("mp3" when absent).
struct speech_facts {
  std::int64_t characters = 0;
  std::int64_t text_tokens = 0;
  std::string format = "mp3";
};
speech_facts speech_request_of(std::string_view body);

// Returns the body with stream_options.include_usage = true, everything else unchanged (byte-exact).
// When there is no stream_options, inserts `"stream_options":{"include_usage":true},` right
// after the opening brace; when stream_options exists, sets include_usage in it (a non-object
// stream_options becomes {"include_usage":true}).
std::string add_include_usage(std::string_view body, const request_facts& facts);

// Returns the body with the top-level `model` set to `model`: the value edited in place, every
// other byte as it was; the body unchanged when facts (inspect_request of this body) name a
// problem.
std::string replace_model(std::string_view body, std::string_view model, const request_facts& facts);

}  // namespace tollgate
