// tollgate's own error codes and the single place that maps them to an HTTP status and an
// OpenAI-style JSON error body. Internal error text never reaches a client.
#pragma once
#include <string>
#include <string_view>
#include <system_error>

namespace tollgate {

enum class errc {
  ok = 0,
  // Client side (4xx).
  bad_request,            // malformed HTTP framing
  invalid_json,           // body is not JSON / not one object / bad field types / too deep / bad UTF-8
  unsupported_media_type, // JSON route with a non-JSON Content-Type
  missing_host,           // HTTP/1.1 without Host
  duplicate_host,
  bad_target,             // request target with dot segments or outside /v1
  not_found,
  method_not_allowed,
  body_too_large,
  headers_too_large,
  uri_too_long,           // the request line alone is over the head limit
  request_timeout,        // request head/body did not arrive in time
  http_version,           // not HTTP/1.0 or 1.1
  unauthorized,           // missing or unknown client key (auth: required/optional)
  budget_exceeded,        // a hard budget would be overshot
  rate_limited,           // a key's RPM/TPM limit
  spend_guard,            // a tripped spend-rate guard with action: reject
  no_upstream,            // no configured upstream serves this model/API
  // Tollgate itself (5xx).
  upstream_key_missing,   // no upstream API key configured
  ledger_backpressure,    // ledger queue full: refuse rather than lose a row
  shutting_down,
  upload_spool_failed,    // a large upload's body could not be stored (server.spool_dir)
  // Upstream (5xx).
  upstream_connect,       // DNS failure, refused, unreachable
  upstream_tls,           // handshake or certificate verification failed
  upstream_reset,         // connection closed/reset before or during the response
  upstream_protocol,      // not a valid HTTP response
  upstream_connect_timeout,
  upstream_first_byte_timeout,
  upstream_idle_timeout,
  upstream_total_timeout,
  // Not sent to anyone: recorded in the ledger.
  client_aborted,
  upstream_stream_truncated,  // stream ended without its terminal event
};

const std::error_category& tollgate_category() noexcept;
inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), tollgate_category()}; }

std::string_view error_name(errc e) noexcept;  // stable snake_case name (ledger error_kind, metric label)
int http_status(errc e) noexcept;
std::string_view openai_type(errc e) noexcept;  // invalid_request_error, server_error, ...

// {"error":{"message":..., "type":..., "param":null, "code":...}}; message is tollgate's own text;
// type replaces openai_type(e) when given (a 429 on a token limit is of type "tokens", as OpenAI's).
std::string error_body(errc e, std::string_view message, std::string_view type = {});
// The same error in the Anthropic Messages API's shape (for /v1/messages* calls), with the
// call's id as Anthropic's errors carry theirs (`request_id` beside `error`) when given.
std::string anthropic_error_body(errc e, std::string_view message, std::string_view request_id = {});
// The `x-should-retry` value sent with an error ("false" or empty: none). The official SDKs
// retry 408, 409, 429 and 5xx unless this header says otherwise; "false" marks the refusals a
// retry within seconds cannot change (a spent budget, no upstream key), which the SDK would
// otherwise send two more times.
std::string_view should_retry(errc e) noexcept;
// The default human message of an error.
std::string_view default_message(errc e) noexcept;

// JSON string escaping (for the small JSON documents tollgate writes itself: errors, log lines).
void append_json_string(std::string& out, std::string_view s);

// A value a caller sent, quoted for an error message: 'value', its control bytes as \xNN and cut
// after `max` bytes with "...". Error texts travel as exceptions' what(), a C string, so a NUL
// in the value would end the message there; and a 100 KB model name makes no useful message.
std::string quote_value(std::string_view v, std::size_t max = 80);

}  // namespace tollgate

template <>
struct std::is_error_code_enum<tollgate::errc> : std::true_type {};
