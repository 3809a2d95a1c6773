// Error codes, their category, and the mapping to HTTP statuses and OpenAI-style bodies.
// Every error a client can see is produced by error_body(), nowhere else.
#include "core/error.hpp"

#include <cstdio>

#include "core/utf8.hpp"

namespace tollgate {
namespace {

struct category final : std::error_category {
  const char* name() const noexcept override { return "tollgate"; }
  std::string message(int ev) const override { return std::string(error_name(static_cast<errc>(ev))); }
};

}  // namespace

const std::error_category& tollgate_category() noexcept {
  static const category c;
  return c;
}

std::string_view error_name(errc e) noexcept {
  switch (e) {
    case errc::ok: return "ok";
    case errc::bad_request: return "bad_request";
    case errc::invalid_json: return "invalid_json";
    case errc::unsupported_media_type: return "unsupported_media_type";
    case errc::missing_host: return "missing_host";
    case errc::duplicate_host: return "duplicate_host";
    case errc::bad_target: return "bad_target";
    case errc::not_found: return "not_found";
    case errc::method_not_allowed: return "method_not_allowed";
    case errc::body_too_large: return "body_too_large";
    case errc::headers_too_large: return "headers_too_large";
    case errc::uri_too_long: return "uri_too_long";
    case errc::request_timeout: return "request_timeout";
    case errc::http_version: return "http_version_not_supported";
    case errc::unauthorized: return "invalid_api_key";
    case errc::budget_exceeded: return "budget_exceeded";
    case errc::rate_limited: return "rate_limit_exceeded";
    case errc::spend_guard: return "spend_guard_tripped";
    case errc::no_upstream: return "model_not_found";
    case errc::upstream_key_missing: return "upstream_key_missing";
    case errc::ledger_backpressure: return "ledger_backpressure";
    case errc::shutting_down: return "shutting_down";
    case errc::upload_spool_failed: return "upload_spool_failed";
    case errc::upstream_connect: return "upstream_connect";
    case errc::upstream_tls: return "upstream_tls";
    case errc::upstream_reset: return "upstream_reset";
    case errc::upstream_protocol: return "upstream_protocol";
    case errc::upstream_connect_timeout: return "upstream_connect_timeout";
    case errc::upstream_first_byte_timeout: return "upstream_first_byte_timeout";
    case errc::upstream_idle_timeout: return "upstream_idle_timeout";
    case errc::upstream_total_timeout: return "upstream_total_timeout";
    case errc::client_aborted: return "client_aborted";
    case errc::upstream_stream_truncated: return "upstream_stream_truncated";
  }
  return "unknown";
}

int http_status(errc e) noexcept {
  switch (e) {
    case errc::ok: return 200;
    case errc::bad_request:
    case errc::invalid_json:
    case errc::missing_host:
    case errc::duplicate_host:
    case errc::bad_target: return 400;
    case errc::not_found:
    case errc::no_upstream: return 404;
    case errc::unauthorized: return 401;
    case errc::budget_exceeded:
    case errc::rate_limited:
    case errc::spend_guard: return 429;
    case errc::method_not_allowed: return 405;
    case errc::request_timeout: return 408;
    case errc::body_too_large: return 413;
    case errc::unsupported_media_type: return 415;
    case errc::headers_too_large: return 431;
    case errc::uri_too_long: return 414;
    case errc::client_aborted: return 499;  // nginx's convention; only ever in the ledger
    case errc::http_version: return 505;
    case errc::upstream_key_missing:
    case errc::ledger_backpressure:
    case errc::shutting_down: return 503;
    case errc::upload_spool_failed: return 507;  // Insufficient Storage (RFC 4918 §11.5)
    case errc::upstream_connect:
    case errc::upstream_tls:
    case errc::upstream_reset:
    case errc::upstream_protocol:
    case errc::upstream_stream_truncated: return 502;
    case errc::upstream_connect_timeout:
    case errc::upstream_first_byte_timeout:
    case errc::upstream_idle_timeout:
    case errc::upstream_total_timeout: return 504;
  }
  return 500;
}

std::string_view openai_type(errc e) noexcept {
  switch (e) {
    case errc::budget_exceeded: return "budget_exceeded";
    case errc::rate_limited: return "requests";
    case errc::spend_guard: return "spend_guard";
    case errc::unauthorized:
    case errc::no_upstream: return "invalid_request_error";
    default: break;
  }
  switch (http_status(e)) {
    case 404: return "not_found_error";
    case 400: case 405: case 408: case 413: case 414: case 415: case 431: case 505: return "invalid_request_error";
    default: return "server_error";
  }
}

std::string_view should_retry(errc e) noexcept {
  switch (e) {
    case errc::budget_exceeded:
    case errc::upstream_key_missing: return "false";
    default: return {};
  }
}

std::string_view default_message(errc e) noexcept {
  switch (e) {
    case errc::ok: return "ok";
    case errc::bad_request: return "Malformed HTTP request.";
    case errc::invalid_json: return "Request body is not valid JSON.";
    case errc::unsupported_media_type: return "Content-Type must be application/json for this endpoint.";
    case errc::missing_host: return "HTTP/1.1 requests must carry a Host header.";
    case errc::duplicate_host: return "Request carries more than one Host header.";
    case errc::bad_target: return "Invalid request target.";
    case errc::not_found: return "Unknown endpoint.";
    case errc::method_not_allowed: return "Method not allowed on this endpoint.";
    case errc::body_too_large: return "Request body exceeds the configured limit (server.max_body_bytes).";
    case errc::headers_too_large: return "Request headers exceed the configured limit (server.max_header_bytes).";
    case errc::uri_too_long: return "Request line exceeds the configured limit (server.max_header_bytes).";
    case errc::request_timeout: return "Request was not received in time.";
    case errc::http_version: return "Only HTTP/1.0 and HTTP/1.1 are supported.";
    case errc::unauthorized: return "Missing or invalid API key for this tollgate.";
    case errc::budget_exceeded: return "A hard budget would be exceeded by this call.";
    case errc::rate_limited: return "Rate limit reached; retry after the time in the Retry-After header.";
    case errc::spend_guard: return "Spending rate limit tripped; calls are refused until the rate falls.";
    case errc::no_upstream: return "No configured upstream serves this model on this endpoint.";
    case errc::upstream_key_missing:
      return "tollgate has no upstream API key configured: set TOLLGATE_UPSTREAM_API_KEY (or upstream.api_key).";
    case errc::ledger_backpressure: return "tollgate's ledger queue is full; retry shortly.";
    case errc::shutting_down: return "tollgate is shutting down; retry on another instance.";
    case errc::upload_spool_failed: return "tollgate could not store the request body (server.spool_dir).";
    case errc::upstream_connect: return "Could not connect to the upstream.";
    case errc::upstream_tls: return "TLS handshake with the upstream failed (certificate not trusted or host name mismatch).";
    case errc::upstream_reset: return "The upstream closed the connection before completing its response.";
    case errc::upstream_protocol: return "The upstream sent an invalid HTTP response.";
    case errc::upstream_connect_timeout: return "Timed out connecting to the upstream.";
    case errc::upstream_first_byte_timeout: return "Timed out waiting for the upstream's response.";
    case errc::upstream_idle_timeout: return "The upstream stopped sending data.";
    case errc::upstream_total_timeout: return "The upstream call exceeded the total time limit.";
    case errc::client_aborted: return "Client closed the connection.";
    case errc::upstream_stream_truncated: return "The upstream ended the stream early.";
  }
  return "Error.";
}

std::string quote_value(std::string_view v, std::size_t max) {
  std::string out = "'";
  const bool cut = v.size() > max;
  if (cut) v = utf8_prefix(v, max);
  for (const char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7F) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02X", u);
      out += hex;
    } else {
      out += c;
    }
  }
  return out + (cut ? "...'" : "'");
}

void append_json_string(std::string& out, std::string_view s) {
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
}

std::string error_body(errc e, std::string_view message, std::string_view type) {
  std::string out;
  out.reserve(160 + message.size());
  out += "{\"error\":{\"message\":";
  append_json_string(out, message.empty() ? default_message(e) : message);
  out += ",\"type\":";
  append_json_string(out, type.empty() ? openai_type(e) : type);
  out += ",\"param\":null,\"code\":";
  append_json_string(out, error_name(e));
  out += "}}";
  return out;
}

}  // namespace tollgate

namespace tollgate {

std::string anthropic_error_body(errc e, std::string_view message, std::string_view request_id) {
  // Anthropic's shape, so its SDKs show tollgate's message: {"type":"error","error":{"type",
  // "message"}}; the OpenAI-style code goes along as an extra member.
  std::string_view type;
  switch (http_status(e)) {
    case 401: type = "authentication_error"; break;
    case 404: type = "not_found_error"; break;
    case 413: type = "request_too_large"; break;
    case 429: type = "rate_limit_error"; break;
    case 502: case 503: case 504: type = "api_error"; break;
    default: type = http_status(e) < 500 ? "invalid_request_error" : "api_error";
  }
  std::string out;
  out.reserve(128 + message.size());
  out += "{\"type\":\"error\",\"error\":{\"type\":";
  append_json_string(out, type);
  out += ",\"message\":";
  append_json_string(out, message.empty() ? default_message(e) : message);
  out += ",\"code\":";
  append_json_string(out, error_name(e));
  out += '}';
  if (!request_id.empty()) {
    out += ",\"request_id\":";
    append_json_string(out, request_id);
  }
  out += '}';
  return out;
}

}  // namespace tollgate
