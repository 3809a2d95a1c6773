// Reading usage out of upstream responses: whole JSON bodies and SSE streams, for the OpenAI
// routes (chat/completions/embeddings/responses) and Anthropic messages. Also the token
// estimator used when a stream ends without usage. Pure; see shared/WIRE.md for the traps.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/sse_parser.hpp"
#include "core/usage_record.hpp"

namespace tollgate {

// What a (non-stream) response body tells about the call.
struct response_facts {
  bool has_usage = false;
  token_usage usage;        // converted to the OpenAI convention (see token_usage)
  std::string model;        // response `model` ("" when absent)
  std::string id;           // response `id` ("" when absent)
  std::string status;       // response `status` (Responses API: queued, in_progress, completed...)
  std::string object;       // response `object` (chat.completion, response, batch...)
  // The relay's provider that served the call (OpenRouter's top-level `provider`: "DeepInfra",
  // "Together"...; "" when absent): a model's price can differ between them.
  std::string provider;
  bool background = false;  // response `background` is true (Responses API)
  // Usage billed at other models than the response's (an Anthropic message's advisor
  // sub-inferences, usage.iterations): not part of `usage`.
  std::vector<std::pair<std::string, token_usage>> other_models;
};

// Parses a complete JSON response body of `route`. Never throws; malformed JSON gives
// has_usage = false.
response_facts extract_response(route_kind route, std::string_view body);

// An Anthropic message batch's results file (JSON lines: {"custom_id", "result": {"type":
// "succeeded", "message": {"model", "usage"}}}): the usage of its succeeded requests, summed per
// model in the order models first appear (converted to the OpenAI convention, tier `batch`).
// Lines that are not such results (errored, canceled, expired, malformed) count nothing.
struct batch_results {
  std::vector<std::pair<std::string, token_usage>> by_model;
  std::size_t succeeded = 0;
};
batch_results extract_batch_results(std::string_view jsonl);

// Image and video generation (OpenAI): DALL-E replies carry no usage and Sora's video objects
// none either; they are billed per image and per second of video, at the output's size and
// quality (prices.yaml per_image / per_second). gpt-image-1 replies carry token usage and are
// priced by it (extract_response), not here.
enum class media_call : std::uint8_t {
  none,
  images,  // POST /v1/images/generations, /v1/images/edits, /v1/images/variations
  video,        // POST /v1/videos
  video_remix,  // POST /v1/videos/{id}/remix (a new video of the original's length and size)
};
// Which media call a request is (a trailing slash allowed); none for anything else, GETs of
// video objects and content included.
media_call media_call_of(std::string_view method, std::string_view path) noexcept;
// The {id} of the video a remix call (POST /v1/videos/{id}/remix) remixes; "" for other calls.
std::string_view remix_source_id(std::string_view method, std::string_view path) noexcept;
// What the request asks for: the output's size, quality and length, as sent (JSON members or
// form fields; "" when absent).
struct media_request {
  std::string size, quality, seconds, n;
};
// The JSON request body's top-level `size`, `quality`, `seconds` and `n` (strings or numbers).
media_request media_request_of(std::string_view json_body);
// A media reply: `data` entries (images), `seconds` (a video object's length), `size`,
// `quality`, `model`, `status`, `object`, and whether it carries a `usage` object.
struct media_reply {
  std::int64_t images = -1;   // -1: no `data` array
  std::int64_t seconds = -1;  // -1: absent or not a whole number of seconds
  std::string size, quality, model, status, object, id;
  bool has_usage = false;
};
media_reply extract_media(std::string_view body);
// The usage a media call bills: images (the reply's `data` entries) or seconds of video (the
// video object's, else the request's), with the output's size (the reply's, else the request's,
// else the API's default: 1024x1024 for images, 720x1280 for videos) and quality ("hd").
// nullopt when the reply bills nothing here: it carries token usage (gpt-image-1), holds no
// image, is not a video object, or reports a failed video.
std::optional<token_usage> media_usage(media_call kind, const media_request& req, const media_reply& reply);
// What a media call may bill at most, for budget reservations: `n` images (1 when not asked, at
// most 10) or the asked seconds (the API's default 4 s; a remix, which asks none, 12 s), at the
// asked size and quality (or the API's default size).
token_usage media_worst(media_call kind, const media_request& req);

// A WebSocket session's server events (OpenAI), as they pass.
// - The Realtime API (GET /v1/realtime): the session's model (session.created / session.updated
//   `session.model`), every response.done's usage summed, and the input audio transcriptions'
//   usage (conversation.item.input_audio_transcription.completed), which is billed at the
//   transcription model the session names, not the session's.
// - The Responses API's WebSocket mode (GET /v1/responses, the SDKs' `responses.connect()`): each
//   response.completed / .incomplete / .failed carries a whole Responses object, its usage priced
//   at its own `model` and `service_tier` (every response.create may name another model), its
//   hosted tool calls (web and file searches) counted as on POST /v1/responses.
// - The Live API (GET /v1/live/sessions and a fork's socket, openai-node 7.x `LiveWS`): the
//   session's model (session.started), its cumulative audio seconds (session.usage.updated,
//   session.closed: totals, never summed), billed at the model's per_minute price, and the
//   delegated Responses backend's responses, nested in response.event events, each priced at its
//   own model as in WebSocket mode, and its Decisions (decision.event's decision.completed).
class realtime_meter {
 public:
  // `requested_model`: the handshake's ?model=, used until the session names its own.
  explicit realtime_meter(std::string requested_model) : model_(std::move(requested_model)) {}
  // Whether a text message whose first bytes are `head` may be one of the events read here (its
  // top-level `type` is one of them, or is not within the head): ws_message_reader's filter.
  static bool wanted(std::string_view head) noexcept;
  // One whole server event (JSON text). Anything else is ignored.
  void on_message(std::string_view text);

  // A message filter that keeps nothing: a sideband socket (a Live session's /attach) sees the
  // events of a session metered on its own socket, which would be counted twice.
  static bool wanted_none(std::string_view) noexcept { return false; }
  // The client's side of a Responses WebSocket: its response.create messages (a filter for
  // ws_message_reader, as wanted()), and the `model` one names ("" if none): the row's
  // requested_model, which the handshake does not name.
  static bool wanted_request(std::string_view head) noexcept;
  static std::string requested_model(std::string_view text);

  bool has_usage() const noexcept { return responses_ + transcriptions_ > 0 || live_seconds_ > 0; }
  // Usage events read so far (a budget charges the session's cost again when this grows).
  std::size_t events() const noexcept { return responses_ + transcriptions_ + live_updates_; }
  double live_seconds() const noexcept { return live_seconds_; }
  // The session's model; in WebSocket mode, where no session names one, the first response's.
  const std::string& model() const noexcept {
    return model_.empty() && !api_responses_.empty() ? api_responses_.front().first : model_;
  }
  std::size_t responses() const noexcept { return responses_; }
  // The id of a Live session (session.started's session.id); "" until one is seen.
  const std::string& live_session_id() const noexcept { return live_session_id_; }
  std::size_t transcriptions() const noexcept { return transcriptions_; }
  // Responses the upstream has started (response.created) and not yet ended (response.done, or
  // response.completed / .incomplete / .failed): a draining tollgate closes the socket only when
  // none is in flight, so no client loses a response it is being sent.
  std::size_t in_flight() const noexcept { return created_ > finished_ ? created_ - finished_ : 0; }
  // Usage per model, the session's model first (its responses), then each Responses API model
  // (one entry per model and service tier), then each transcription model.
  std::vector<std::pair<std::string, token_usage>> by_model() const;

 private:
  std::string model_;
  std::string transcription_model_;
  token_usage responses_usage_;
  std::vector<std::pair<std::string, token_usage>> api_responses_;  // WebSocket mode, per model and tier
  std::size_t realtime_responses_ = 0;
  std::vector<std::pair<std::string, token_usage>> transcription_usage_;
  std::size_t responses_ = 0, transcriptions_ = 0;
  std::size_t created_ = 0, finished_ = 0;
  std::string live_session_id_;
  double live_seconds_ = 0;      // the Live session's cumulative audio seconds
  std::size_t live_updates_ = 0;  // times they grew
  template <class Node>
  void add_api_response(const Node& response);
};

// The top-level string member `key` of the JSON object text starts with, when `head` (maybe only
// the text's first bytes) holds it whole; nullopt otherwise. Escapes are not decoded.
std::optional<std::string_view> top_level_string(std::string_view head, std::string_view key) noexcept;

// Rough token count of text (~4 bytes per token for ASCII, 1 token per CJK character...).
// Used only when usage is missing; rows carry usage_source = estimated.
std::int64_t estimate_tokens(std::string_view text) noexcept;

// True when `text` is well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
bool valid_utf8(std::string_view text) noexcept;

// Running character counts behind estimate_tokens(), for text that arrives in pieces.
struct text_tally {
  std::int64_t ascii_bytes = 0;
  std::int64_t cjk_chars = 0;    // CJK ideographs, kana, Hangul, full-width forms
  std::int64_t other_chars = 0;  // any other non-ASCII code point
  void add(std::string_view text) noexcept;
  std::int64_t tokens() const noexcept;
};

// Anthropic usage fields as reported, before conversion to the OpenAI convention.
struct anthropic_usage {
  std::int64_t input = 0;         // excludes cache reads and writes
  std::int64_t output = 0;
  std::int64_t cache_read = 0;
  std::int64_t cache_write = -1;  // cache_creation_input_tokens (-1: sum the ephemeral parts)
  std::int64_t cache_5m = 0;      // cache_creation.ephemeral_5m_input_tokens
  std::int64_t cache_1h = 0;      // cache_creation.ephemeral_1h_input_tokens
  std::int64_t web_search = 0;    // server_tool_use.web_search_requests
  std::int64_t thinking = 0;      // output_tokens_details.thinking_tokens (part of output)
  service_tier tier = service_tier::none;  // usage.service_tier (standard, priority, batch)
  bool fast = false;                       // usage.speed "fast": billed at the entry's `fast` tier
  bool geo_us = false;                     // usage.inference_geo "us": the entry's us_inference factor
  // usage.iterations (beta): a `compaction` pass is billed at the call's model but left out of
  // the top-level counts (its tokens are added by to_openai()); an `advisor_message` is an
  // advisor sub-inference billed at the advisor's own model, also outside the top-level counts
  // (which cover the executor only): `advisors`, one entry per model.
  // A turn served by a server-side fallback (a `fallback_message` entry), or whose whole chain
  // declined (`message` entries naming different models), ran more than one model:
  // each `message` / `fallback_message` entry naming its model (the hop that declined, the one
  // that served) is billed at that model, in `advisors` too, and taken out of the top-level
  // counts (`hop_*`, which to_openai() subtracts; whatever the top level holds beyond them stays
  // at the call's model, and hops it does not hold are billed all the same).
  std::int64_t compaction_input = 0, compaction_output = 0, compaction_read = 0, compaction_write = 0,
               compaction_write_1h = 0;
  std::int64_t hop_input = 0, hop_output = 0, hop_read = 0, hop_write = 0, hop_write_1h = 0;
  std::vector<std::pair<std::string, token_usage>> advisors;
  token_usage to_openai() const noexcept;
};

// Watches a stream's SSE events as they pass.
class stream_meter {
 public:
  // strip_usage_chunk: the client did not ask for include_usage but tollgate did; the OpenAI
  // usage-only chunk (choices == [] and usage != null) must not reach the client, and `usage`
  // members in other chunks are left alone.
  stream_meter(route_kind route, bool strip_usage_chunk);

  // Returns true when the event must be forwarded to the client, false to drop it.
  bool on_event(const sse_event& ev);
  // Appends `ev`, the event on_event was just given, as a client that did not ask for
  // include_usage gets it: without the `"usage": null` members tollgate's include_usage added
  // (append_without_null_usage, byte for byte). An event read through the chunk frame is cut
  // where the frame says, without a search.
  void append_stripped(const sse_event& ev, std::string& out);

  bool has_usage() const noexcept { return has_usage_; }
  // The usage seen is provisional: Anthropic's message_start reports the input side for good but
  // `output_tokens` as a placeholder (1-2) until message_delta gives the count. A stream cut
  // before that has real input counts and an output count to take from the streamed text.
  bool usage_provisional() const noexcept { return provisional_; }
  const token_usage& usage() const noexcept { return usage_; }
  // Usage billed at other models than model()'s (Anthropic advisor sub-inferences), not in usage().
  const std::vector<std::pair<std::string, token_usage>>& other_models() const noexcept { return anthropic_.advisors; }
  const std::string& model() const noexcept { return model_; }
  const std::string& id() const noexcept { return id_; }
  // The relay's provider serving the stream (a chat chunk's top-level `provider`, as OpenRouter
  // names it on every chunk, or the `provider` of a Responses stream's final response object;
  // "" when none does).
  const std::string& provider() const noexcept { return provider_; }
  bool saw_done() const noexcept { return saw_done_; }   // `data: [DONE]`, response.completed or message_stop
  // Whether the stream is of a kind whose end tollgate knows (a chat, Responses, Anthropic or
  // media stream; every stream of a metered route), so that an end without it is a truncation.
  // A stream of an API tollgate does not know, on a pass-through path, ends when its body does.
  bool knows_end() const noexcept { return route_ != route_kind::other || known_kind_; }
  bool saw_error() const noexcept { return saw_error_; } // an `error` event / data: {"error":...}
  // A Responses stream whose response.created says `background: true`: cut before it completes,
  // the response goes on upstream and its usage comes with a later retrieval.
  bool background() const noexcept { return background_; }
  // Completion tokens estimated from the streamed text (content, reasoning, tool-call arguments).
  std::int64_t estimated_completion_tokens() const noexcept;
  // Events read through a chunk frame instead of a parse (usage.cpp), for tests and benchmarks.
  std::size_t framed_events() const noexcept { return framed_; }
  // Events append_stripped cut where the frame said, without a search; for tests and benchmarks.
  std::size_t cut_by_frame() const noexcept { return cut_by_frame_; }

 private:
  // Node: a parsed JSON value, from simdjson (the fast path) or nlohmann (bodies simdjson turns
  // down); defined and instantiated in usage.cpp only.
  template <class Node> bool on_document(const Node& j, const sse_event& ev);
  template <class Node> bool on_chat(const Node& j, const sse_event& ev);
  template <class Node> void on_responses(const Node& j, std::string_view type);
  template <class Node> void on_messages(const Node& j, std::string_view type);
  template <class Node> void on_media(const Node& j, std::string_view type);
  template <class Node> void note_model_id(const Node& obj);
  template <class Node> void note_model_id(const Node& model, const Node& id);
  // Chunk frames (usage.cpp): the bytes around the one text value (and the `obfuscation` and
  // `sequence_number` values) of the last fully read chunk.
  void learn_frame(std::string_view data, std::string_view event);
  bool through_frame(std::string_view data);
  void plan_stripping(std::string_view data);
  void append_cut(std::string_view raw, std::size_t base, std::string& out) const;

  route_kind route_;
  bool strip_;
  bool has_usage_ = false;
  bool provisional_ = false;
  token_usage usage_;
  std::string model_;
  std::string id_;
  std::string provider_;
  bool saw_done_ = false;
  bool saw_error_ = false;
  bool background_ = false;
  bool known_kind_ = false;  // route other: an event of a stream kind tollgate knows was seen
  // Character classes of all streamed text, so the estimate is taken over the whole text
  // rather than rounded up once per delta (a delta is often a single short token).
  text_tally streamed_text_;
  anthropic_usage anthropic_;  // message_start sets it; message_delta replaces fields
  std::string_view frame_key_, frame_text_;  // proposed by text_members::offer for learn_frame, then cleared
  // The frame: fixed bytes seg[0] hole seg[1] ... hole seg[n]. A string hole is a string value's
  // inside (it ends at the next `"`): the text, or OpenAI's padding; an integer hole is a
  // Responses `sequence_number`.
  enum class frame_hole : std::uint8_t { text, padding, integer };
  static constexpr std::size_t kMaxFrameHoles = 3;
  std::string frame_seg_[kMaxFrameHoles + 1], frame_event_;
  frame_hole frame_kind_[kMaxFrameHoles] = {};
  std::size_t frame_holes_ = 0;
  bool has_frame_ = false;
  // Strip mode: the frame's `"usage": null` members, each inside one segment, at an offset into
  // it; a framed event is forwarded without them (plan_stripping, append_stripped).
  struct cut {
    std::size_t seg, offset, len;
  };
  static constexpr std::size_t kMaxCuts = 4;
  std::array<cut, kMaxCuts> cuts_{};
  std::size_t n_cuts_ = 0;
  bool frame_strips_ = false;  // the cuts are checked and apply to framed events
  std::size_t cut_by_frame_ = 0;
  // The data of the event on_event just read through the frame (empty otherwise), and its holes.
  std::string_view framed_data_;
  std::size_t hole_start_[kMaxFrameHoles] = {}, hole_end_[kMaxFrameHoles] = {};
  std::size_t framed_ = 0;
};

}  // namespace tollgate

namespace tollgate {

// When tollgate itself asked for include_usage, every chunk carries `"usage":null`, which the
// client did not ask for. Appends `raw` to `out` without that member (with its comma; also the
// `"usage": null` spelling). A raw `"usage":null` cannot occur inside a JSON string (its quotes
// would be escaped), so a byte-level edit is exact. Returns true if something was removed.
bool append_without_null_usage(std::string_view raw, std::string& out);

}  // namespace tollgate
