// Pure HTTP decisions of the relay: which route a request is, where it goes upstream, which
// headers are hop-by-hop. No Beast here, so all of it is unit-tested without sockets.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/usage_record.hpp"

namespace tollgate {

// Parsed upstream base URL: scheme://host[:port][/base/path].
struct upstream_url {
  bool tls = true;
  std::string host;          // without brackets for IPv6
  std::uint16_t port = 443;
  std::string base_path;     // "/v1", "/api/v1"; an origin without path means "/v1"
  std::string host_header;   // Host header value: host, plus ":port" when not the scheme default
  std::string origin() const;  // "https://host[:port]"
};
// nullopt on anything but http(s)://host[:port][/path] (no userinfo, query or fragment).
std::optional<upstream_url> parse_upstream_url(std::string_view url);

// Headers that never cross the proxy (RFC 9110 §7.6.1), plus Expect (tollgate answers
// 100-continue itself) and Proxy-* credentials.
bool is_hop_by_hop(std::string_view name) noexcept;
// Upstream response headers relayed to the client (an allow-list; see http_rules.cpp).
bool is_safe_response_header(std::string_view name) noexcept;
// True if `name` is one of the comma-separated tokens of a Connection header value.
bool connection_lists(std::string_view connection_value, std::string_view name) noexcept;

bool iequals(std::string_view a, std::string_view b) noexcept;

struct route_decision {
  errc error = errc::ok;          // not_found / method_not_allowed / bad_target
  route_kind route = route_kind::other;
  bool json_body = false;         // the body is inspected (model, stream, ...) and validated
  bool local = false;             // answered by tollgate itself (/healthz, /readyz)
  std::string_view allow;         // Allow header value for 405
};

// Classifies a request. `path` is the request target's path (no query).
route_decision classify(std::string_view method, std::string_view path) noexcept;

// Splits a request target into path and query. Accepts origin-form and absolute-form (whose
// scheme and authority are IGNORED, so they cannot steer the upstream host). Rejects targets
// that are not absolute paths, contain dot segments (also percent-encoded: %2e), backslashes,
// NUL or control characters. nullopt means 400 bad_target.
struct target_parts {
  std::string_view path;
  std::string_view query;  // without '?', "" when none
};
std::optional<target_parts> split_target(std::string_view target) noexcept;

// The upstream request target: base path + the client path after its "/v1" prefix + query.
std::string upstream_target(const upstream_url& u, std::string_view path, std::string_view query);

// One header of a client request, as the parser saw it.
struct header_view {
  std::string_view name, value;
};

// What replaces the client's own request line and routing headers on the way upstream.
struct upstream_head {
  std::string_view method;             // the client's
  std::string_view target;             // upstream_target()
  std::string_view host;               // the upstream's Host header value
  std::string_view credential_name;    // "Authorization" or "x-api-key"
  std::string_view credential_value;   // "Bearer <key>" or the key
  std::string_view request_id;         // sent as x-request-id
  std::string_view anthropic_version;  // added when not empty and the client sent none
  bool drop_accept_encoding = false;   // the response must come back readable (stream editing)
  bool drop_content_encoding = false;  // the client's compressed body was decoded (sent as is)
  // The response is metered: the client's Accept-Encoding is cut to the codings tollgate can
  // decode (meterable_accept_encoding), so an upstream never answers in br or zstd.
  bool meterable_encodings_only = false;
  // A WebSocket opening handshake: Connection: Upgrade and Upgrade: websocket are sent (the
  // client's own are hop-by-hop and dropped like any other); Sec-WebSocket-Extensions is not
  // (no permessage-deflate: the Realtime meter reads the frames).
  bool websocket = false;
  std::size_t body_size = 0;
  std::string_view drop_header;  // a header for tollgate alone (user_header), not sent on ("": none)
};

// Appends the HTTP/1.1 request head (request line, headers, empty line) tollgate sends upstream:
// the client's headers minus hop-by-hop ones, those its Connection header lists, Host,
// Content-Length, credentials (Authorization, x-api-key) and x-request-id, then tollgate's Host,
// credential, x-request-id and Content-Length (when there is a body or the method expects one,
// as Beast's prepare_payload does). The client's key never leaves tollgate.
void append_upstream_head(std::span<const header_view> client_headers, const upstream_head& h, std::string& out);

// Whether a 2xx answer's usage is new spend, to be metered. Always on the metered routes; on
// other paths only for a POST that makes something (an image, a transcription, a compaction):
// a retrieval or an update of a stored object (GET /v1/responses/{id}, GET or POST
// /v1/chat/completions/{id}, GET /v1/batches/{id}, POST /v1/responses/{id}/cancel) carries
// usage that was billed once already, and a batch polled every minute would be counted every
// minute.
bool usage_is_new_spend(route_kind route, std::string_view method, std::string_view path) noexcept;

// The response id of a Responses API call that reads or ends a stored response (GET
// /v1/responses/{id}, streamed or not, and POST /v1/responses/{id}/cancel); "" otherwise.
std::string_view stored_response_id(std::string_view method, std::string_view path) noexcept;

// Batch API calls (OpenAI's /v1/batches): the id of a batch a call reads or cancels (GET
// /v1/batches/{id}, POST /v1/batches/{id}/cancel), "" otherwise; and whether a call creates a
// batch of either API (POST /v1/batches, POST /v1/messages/batches). A batch created through tollgate is metered once, by the first retrieval
// that sees it ended with its usage (the batch object's `usage`, at the model's batch prices).
std::string_view batch_id_of(std::string_view method, std::string_view path) noexcept;
bool creates_batch(std::string_view method, std::string_view path) noexcept;

// Anthropic's message batch objects name their results as an absolute URL on the upstream's host
// (`"results_url": "https://api.anthropic.com/v1/messages/batches/{id}/results"`), which the
// Anthropic SDKs fetch as is: past tollgate, with the client's tollgate key, to a 401. Rewrites
// every such value in `body` to its path (`/v1/messages/batches/{id}/results`), which the SDKs
// resolve against their base URL (tollgate), padding with spaces after the string so the body
// keeps its length (and its Content-Length). In place; returns how many values were rewritten.
// A value not whole in `body`, or without that path, is left alone.
std::size_t relativize_results_urls(char* body, std::size_t size) noexcept;
// Whether a call's answer may hold message batch objects (Anthropic's /v1/messages/batches, its
// `/results` JSONL download aside).
bool holds_message_batches(std::string_view path) noexcept;
// Anthropic message batches are metered by their results file: the id of a batch whose results
// a call downloads (GET /v1/messages/batches/{id}/results), "" otherwise.
std::string_view message_batch_results_id(std::string_view method, std::string_view path) noexcept;

// A WebSocket opening handshake (RFC 6455 §4.1): GET over HTTP/1.1 (version 11) whose
// Connection lists "upgrade" and whose Upgrade lists "websocket" (both case-insensitive).
bool is_websocket_upgrade(std::string_view method, unsigned version, std::string_view connection,
                          std::string_view upgrade) noexcept;

// Optional whitespace (spaces, tabs) around a header value or list entry removed.
std::string_view trim_ows(std::string_view s) noexcept;

// A Host header value as RFC 9110 §7.2 / RFC 3986 allow it: reg-name, IPv4 or [IPv6] with an
// optional :port (a request with any other value gets a 400, RFC 9112 §3.2). May be empty.
bool is_valid_host_value(std::string_view host) noexcept;

// A request Transfer-Encoding value that lists only `chunked` (RFC 9112 §6.1: tollgate decodes
// no other transfer coding; a body in one, e.g. "gzip, chunked", is refused, not relayed raw).
bool only_chunked_coding(std::string_view transfer_encoding) noexcept;

// An IMF-fixdate (RFC 9110 §5.6.7) for a Date header: "Sun, 06 Nov 1994 08:49:37 GMT", written
// into `out` (29 characters).
std::string_view http_date(std::int64_t unix_seconds, char (&out)[29]) noexcept;

// A content coding tollgate's inflater reads (inflate.hpp): gzip, x-gzip or deflate. The one
// list for metered responses, decoded request bodies and the Accept-Encoding offered upstream.
bool is_decodable_coding(std::string_view coding) noexcept;

// The entries of an Accept-Encoding value that tollgate's meter can decode (gzip, x-gzip,
// deflate, with their parameters, as written); "" when none but identity is left (the header is
// then not sent, and the upstream answers uncompressed). "*" is dropped: it would allow br.
std::string meterable_accept_encoding(std::string_view value);

// Content-Type acceptable for a JSON route: absent, application/json or any */*+json.
bool is_json_content_type(std::string_view content_type) noexcept;

// The model id of a GET /v1/models/{id} path's last part (after "/v1/models/"), percent-decoded
// ("openai%2Fgpt-4.1" is "openai/gpt-4.1"), for routing rules; "" when a %XX is malformed or
// decodes to a control character.
std::string model_id_of_path(std::string_view id);

// The raw value of the first `name=value` parameter of a query string (no '?'), not decoded;
// "" when absent. (The Realtime API's handshake names its model so: /v1/realtime?model=…)
std::string_view query_param(std::string_view query, std::string_view name) noexcept;

// `query` with the first `name=` parameter's value replaced by `value`, percent-encoded (RFC 3986
// unreserved characters kept), or the parameter appended when absent; the other parameters and
// their order are kept. (A routing rule's rewrite of a Realtime handshake's ?model=.)
std::string with_query_param(std::string_view query, std::string_view name, std::string_view value);

// A response Content-Type of an SSE stream: text/event-stream, in any case, with any parameters.
bool is_event_stream(std::string_view content_type) noexcept;

}  // namespace tollgate
