// The per-call facts tollgate meters: token usage and the ledger row built from it.
// Shared by the relay (which fills it), the ledger writer and the metrics.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tollgate {

// Which API a call belongs to; the `route` column of the ledger and label of the metrics.
enum class route_kind : std::uint8_t {
  chat_completions,  // POST /v1/chat/completions
  completions,       // POST /v1/completions
  embeddings,        // POST /v1/embeddings
  responses,         // POST /v1/responses
  models,            // GET /v1/models, GET /v1/models/{id}
  messages,          // POST /v1/messages (Anthropic, issue 7)
  other,             // any other /v1/* passed through
};
std::string_view to_string(route_kind r) noexcept;

enum class usage_source : std::uint8_t { none, upstream, estimated };
std::string_view to_string(usage_source s) noexcept;

// The processing tier a response says served it (OpenAI `service_tier`: default, flex, priority,
// scale; Anthropic `usage.service_tier`: standard, priority, batch). Flex and priority are billed
// at other prices than the standard tier (prices.yaml `flex` / `priority` / `scale`).
// none: the response named no tier (billed as standard); other: a name tollgate does not know
// (billed as standard). The ledger's `service_tier` column holds to_string() (NULL for none).
// `fast` is Anthropic's fast mode (usage.speed "fast": the same model at a premium per token);
// `off_peak` a call made outside its entry's `peak_hours_utc` (DeepSeek bills those at half
// price; no response names it: tollgate sets it from the call's start time). Later tiers come
// last so the journal's stored numbers of the others keep their meaning.
enum class service_tier : std::uint8_t { none, standard, flex, priority, scale, batch, other, fast, off_peak };
inline constexpr std::size_t kServiceTiers = 9;
std::string_view to_string(service_tier t) noexcept;
// "default", "auto" and "standard" are the standard tier; "" is none; unknown names are other.
service_tier parse_service_tier(std::string_view name) noexcept;

// Token counts in the OpenAI convention: `prompt` INCLUDES cached (cache read) and cache-write
// tokens; `completion` INCLUDES reasoning tokens. Anthropic usage is converted into this
// convention when extracted (prompt = input + cache_read + cache_write, cached = cache_read).
struct token_usage {
  std::int64_t prompt = 0;
  std::int64_t completion = 0;
  std::int64_t cached = 0;          // cache reads, part of prompt
  std::int64_t cache_write = 0;     // cache creation (5 min + 1 h), part of prompt (Anthropic)
  std::int64_t cache_write_1h = 0;  // the 1-hour part of cache_write, when reported
  std::int64_t reasoning = 0;       // part of completion
  std::int64_t web_search = 0;      // server-side web searches billed per request (Anthropic
                                    // usage.server_tool_use.web_search_requests); not tokens
  std::int64_t file_search = 0;     // OpenAI hosted file_search tool calls (a Responses reply's
                                    // file_search_call items), billed per call; not a ledger column
  service_tier tier = service_tier::none;  // tier the response reports (prices flex/priority)
  // The size in pixels (0 x 0: not stated) and quality (DALL-E 3's "hd") of the images or video
  // counted below (`images`, `video_seconds`); beside `tier`, in its padding.
  bool media_hd = false;
  std::uint16_t media_w = 0, media_h = 0;
  // Anthropic usage.inference_geo "us": US-only inference, billed at the entry's us_inference
  // factor (1.1 on Opus 4.6 and later). Not a ledger column; the row's cost holds it.
  bool geo_us = false;
  // Media tokens priced apart (not ledger columns: a what-if prices them as text): image input
  // (gpt-image-1's input_tokens_details.image_tokens) and audio input (audio and transcription
  // models), uncached parts of prompt; audio output, part of completion; cache reads of image and
  // audio tokens (Realtime's cached_tokens_details), parts of `cached`; an image model's text
  // output (gpt-image-1.5 and 2's output_tokens_details.text_tokens), part of completion.
  std::int64_t image_in = 0, audio_in = 0, audio_out = 0, text_out = 0;
  std::int64_t image_cached = 0, audio_cached = 0;
  // Units billed other than tokens: audio input length (whisper-1's usage {"type": "duration",
  // "seconds"}) and input characters (tts-1 speech, from the request's `input`).
  std::int64_t audio_ms = 0, characters = 0;
  // Media billed per item (DALL-E images: the reply's `data` entries) or per second (Sora
  // videos: the video object's `seconds`), priced by the output's size and quality (media_w,
  // media_h, media_hd). Not ledger columns; the row's cost holds their price.
  std::int64_t images = 0, video_seconds = 0;
  // The call's cost as the upstream reports it, USD (-1: none): OpenRouter's usage.cost (plus
  // cost_details.upstream_inference_cost on a BYOK call, which the provider bills apart),
  // Perplexity's usage.cost.total_cost. Used as the upstream's `reported_cost` says (by default
  // for a call the price table does not price); not a ledger column, not summed by add().
  double reported_usd = -1;
  std::int64_t total() const noexcept { return prompt + completion; }
  // Adds every count of `o` (the tier is left as it is).
  void add(const token_usage& o) noexcept {
    prompt += o.prompt, completion += o.completion, cached += o.cached, cache_write += o.cache_write;
    cache_write_1h += o.cache_write_1h, reasoning += o.reasoning, web_search += o.web_search;
    file_search += o.file_search;
    image_in += o.image_in, audio_in += o.audio_in, audio_out += o.audio_out, text_out += o.text_out;
    image_cached += o.image_cached, audio_cached += o.audio_cached, audio_ms += o.audio_ms, characters += o.characters;
    images += o.images, video_seconds += o.video_seconds;
    if (media_w == 0 && media_h == 0) media_w = o.media_w, media_h = o.media_h, media_hd = o.media_hd;
  }
};

// One ledger row. No prompt or completion text, ever.
struct usage_record {
  std::string request_id;           // x-request-id (client's or generated)
  std::int64_t start_ms = 0;        // call start, Unix epoch milliseconds, UTC
  route_kind route = route_kind::other;
  std::string method;               // HTTP method
  std::string requested_model;      // `model` of the request body ("" when none)
  std::string served_model;         // `model` of the response ("" when unknown)
  std::string price_model;          // price-table entry that priced it ("" when unpriced)
  std::string upstream;             // name of the upstream that served it
  std::string provider;             // the relay's provider the reply names (OpenRouter's top-level
                                    // `provider`, e.g. "DeepInfra"); "" when it names none
  std::string client_key_id;        // client key name/id ("" when auth is off), never the key
  std::string team;
  std::string user;                 // the body's `user` field
  int status = 0;                   // HTTP status sent to the client (0: none was sent)
  bool stream = false;
  bool aborted = false;             // client went away or upstream cut the stream
  token_usage tokens;
  usage_source source = usage_source::none;
  bool priced = false;
  double cost_usd = 0.0;
  double latency_ms = 0.0;          // start until the last byte was sent to the client
  double first_byte_ms = -1.0;      // start until the upstream's first response byte (-1: none)
  std::string error_kind;           // "" on success; else an errc name such as "upstream_timeout"
  std::string upstream_request_id;  // upstream's x-request-id / request-id header or body id
  int attempts = 1;                 // upstream attempts made (retries on a fresh connection)
};

}  // namespace tollgate
