// Routing, target sanitising, upstream URL parsing and hop-by-hop header rules (pure; see
// http_rules.hpp). Called by client_session for every request.
#include "core/http_rules.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstring>

namespace tollgate {

using namespace std::string_view_literals;

namespace {
// ASCII case folding: header names and tokens are ASCII (RFC 9110 §5.1), and std::tolower is a
// locale-aware libc call per character (1.5 % of a proxied call's instructions).
constexpr unsigned char ascii_lower(unsigned char c) noexcept { return c >= 'A' && c <= 'Z' ? c | 0x20 : c; }
}  // namespace

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(static_cast<unsigned char>(a[i])) != ascii_lower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

namespace {
bool istarts_with(std::string_view s, std::string_view prefix) noexcept {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}
}  // namespace

std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_decodable_coding(std::string_view coding) noexcept {
  coding = trim_ows(coding);
  return iequals(coding, "gzip") || iequals(coding, "x-gzip") || iequals(coding, "deflate");
}

std::string upstream_url::origin() const {
  std::string o = tls ? "https://" : "http://";
  bool v6 = host.find(':') != std::string::npos;
  if (v6) o += '[';
  o += host;
  if (v6) o += ']';
  if (port != (tls ? 443 : 80)) o += ":" + std::to_string(port);
  return o;
}

std::optional<upstream_url> parse_upstream_url(std::string_view url) {
  upstream_url u;
  if (istarts_with(url, "https://")) {
    u.tls = true;
    u.port = 443;
    url.remove_prefix(8);
  } else if (istarts_with(url, "http://")) {
    u.tls = false;
    u.port = 80;
    url.remove_prefix(7);
  } else {
    return std::nullopt;
  }
  auto slash = url.find('/');
  std::string_view authority = url.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view{} : url.substr(slash);
  if (authority.empty() || authority.find('@') != std::string_view::npos) return std::nullopt;
  if (path.find_first_of("?#") != std::string_view::npos) return std::nullopt;
  std::string_view host = authority, port_str;
  if (authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = authority.substr(1, close - 1);
    auto rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return std::nullopt;
      port_str = rest.substr(1);
    }
  } else if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port_str = authority.substr(colon + 1);
  }
  if (host.empty()) return std::nullopt;
  for (char c : host)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' || c == '_'))
      return std::nullopt;
  if (!port_str.empty() || authority.back() == ':') {
    unsigned p = 0;
    auto r = std::from_chars(port_str.data(), port_str.data() + port_str.size(), p);
    if (r.ec != std::errc{} || r.ptr != port_str.data() + port_str.size() || p == 0 || p > 65535)
      return std::nullopt;
    u.port = static_cast<std::uint16_t>(p);
  }
  u.host = std::string(host);
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  u.base_path = (path.empty() || path == "/") ? "/v1" : std::string(path);
  bool v6 = u.host.find(':') != std::string::npos;
  u.host_header = v6 ? "[" + u.host + "]" : u.host;
  if (u.port != (u.tls ? 443 : 80)) u.host_header += ":" + std::to_string(u.port);
  return u;
}

bool is_hop_by_hop(std::string_view name) noexcept {
  // Dispatch on the length first: every request and response header passes through here or
  // through is_safe_response_header, and a scan of the whole list with a compare per entry was
  // ~1.5 % of a proxied call's instructions.
  switch (name.size()) {
    case 2: return iequals(name, "te");
    case 6: return iequals(name, "expect");
    case 7: return iequals(name, "trailer") || iequals(name, "upgrade");
    case 8: return iequals(name, "trailers");
    case 10: return iequals(name, "connection") || iequals(name, "keep-alive");
    case 16: return iequals(name, "proxy-connection");
    case 17: return iequals(name, "transfer-encoding");
    case 18: return iequals(name, "proxy-authenticate");
    case 19: return iequals(name, "proxy-authorization");
    default: return false;
  }
}

bool is_safe_response_header(std::string_view name) noexcept {
  // What an SDK or a browser-less client needs from an LLM API answer: the body's framing and
  // type, caching validators, and the provider's rate-limit / request-id / processing / retry
  // headers (the SDKs obey x-should-retry over their own status rules).
  // Everything else the upstream (or a CDN in front of it) says about itself stays behind:
  // cookies, Server, X-Powered-By, Via, Alt-Svc, HSTS, CORS, Location (it would name the
  // upstream's host), WWW-Authenticate (about tollgate's key, not the client's).
  // Prefixes first, then the exact names by length (see is_hop_by_hop).
  if (name.empty()) return false;
  if (const auto first = ascii_lower(static_cast<unsigned char>(name[0])); first == 'o' || first == 'a' || first == 'x')
    if (istarts_with(name, "openai-") || istarts_with(name, "anthropic-") || istarts_with(name, "x-ratelimit-"))
      return true;
  switch (name.size()) {
    case 4: return iequals(name, "date") || iequals(name, "etag") || iequals(name, "vary");
    case 7: return iequals(name, "expires");
    case 10: return iequals(name, "request-id");
    case 11: return iequals(name, "retry-after");
    case 12: return iequals(name, "content-type") || iequals(name, "x-request-id");
    case 13: return iequals(name, "cache-control") || iequals(name, "last-modified");
    case 14: return iequals(name, "retry-after-ms") || iequals(name, "x-should-retry");
    case 16: return iequals(name, "content-encoding") || iequals(name, "content-language");
    case 19: return iequals(name, "content-disposition");
    default: return false;
  }
}

bool connection_lists(std::string_view value, std::string_view name) noexcept {
  while (!value.empty()) {
    auto comma = value.find(',');
    auto token = trim_ows(value.substr(0, comma));
    if (iequals(token, name)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

bool is_valid_host_value(std::string_view h) noexcept {
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  std::string_view port;
  if (!h.empty() && h.front() == '[') {  // IP-literal
    const auto close = h.find(']');
    if (close == std::string_view::npos) return false;
    for (char c : h.substr(1, close - 1))  // IPv6 (a zone id after %25, RFC 6874) or IPvFuture
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
            std::string_view(":.%-_~").find(c) != std::string_view::npos))
        return false;
    port = h.substr(close + 1);
    if (!port.empty() && port.front() != ':') return false;
  } else {
    const auto colon = h.find(':');
    for (char c : h.substr(0, colon)) {
      // reg-name: unreserved, pct-encoded, sub-delims
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
                      std::string_view("-._~%!$&'()*+,;=").find(c) != std::string_view::npos;
      if (!ok) return false;
    }
    if (colon != std::string_view::npos) port = h.substr(colon);
  }
  if (!port.empty()) {
    port.remove_prefix(1);  // ':'
    if (port.size() > 5) return false;
    for (char c : port)
      if (!is_digit(c)) return false;
  }
  return true;
}

bool only_chunked_coding(std::string_view value) noexcept {
  bool any = false;
  while (true) {
    const auto comma = value.find(',');
    const auto token = trim_ows(value.substr(0, comma));
    if (!token.empty()) {  // empty list elements are allowed (RFC 9110 §5.6.1)
      if (!iequals(token, "chunked")) return false;
      any = true;
    }
    if (comma == std::string_view::npos) return any;
    value.remove_prefix(comma + 1);
  }
}

std::string_view http_date(std::int64_t t, char (&out)[29]) noexcept {
  static constexpr const char* days[] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};  // 1970-01-01: Thu
  static constexpr const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  if (t < 0) t = 0;
  std::int64_t days_since = t / 86400, sec = t % 86400;
  // Civil date from days since the epoch (H. Hinnant's algorithm).
  std::int64_t z = days_since + 719468;
  const std::int64_t era = z / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const std::int64_t day = doy - (153 * mp + 2) / 5 + 1;
  const std::int64_t month = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  auto two = [&](char* p, std::int64_t v) {
    p[0] = static_cast<char>('0' + v / 10 % 10);
    p[1] = static_cast<char>('0' + v % 10);
  };
  std::memcpy(out, days[days_since % 7], 3);
  out[3] = ',';
  out[4] = ' ';
  two(out + 5, day);
  out[7] = ' ';
  std::memcpy(out + 8, months[month - 1], 3);
  out[11] = ' ';
  two(out + 12, year / 100);
  two(out + 14, year % 100);
  out[16] = ' ';
  two(out + 17, sec / 3600);
  out[19] = ':';
  two(out + 20, sec / 60 % 60);
  out[22] = ':';
  two(out + 23, sec % 60);
  std::memcpy(out + 25, " GMT", 4);
  return {out, 29};
}

bool usage_is_new_spend(route_kind route, std::string_view method, std::string_view path) noexcept {
  if (route != route_kind::other) return true;
  if (method != "POST") return false;
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (path.starts_with("/v1/chat/completions/")) return false;
  if (path.starts_with("/v1/responses/")) return path == "/v1/responses/compact";
  return true;
}

namespace {
// The {id} of `GET <prefix>{id}` and `POST <prefix>{id}/cancel` (a trailing slash allowed); "" for
// any other call.
std::string_view stored_object_id(std::string_view method, std::string_view path, std::string_view prefix) noexcept {
  if (!path.starts_with(prefix)) return {};
  path.remove_prefix(prefix.size());
  if (path.ends_with('/')) path.remove_suffix(1);
  const auto slash = path.find('/');
  const std::string_view id = path.substr(0, slash), rest = slash == std::string_view::npos ? "" : path.substr(slash);
  if (id.empty()) return {};
  if (method == "GET" && rest.empty()) return id;
  if (method == "POST" && rest == "/cancel") return id;
  return {};
}
}  // namespace

std::string_view stored_response_id(std::string_view method, std::string_view path) noexcept {
  const std::string_view id = stored_object_id(method, path, "/v1/responses/");
  return id == "compact" || id == "input_tokens" ? std::string_view() : id;
}

std::string_view batch_id_of(std::string_view method, std::string_view path) noexcept {
  return stored_object_id(method, path, "/v1/batches/");
}

bool creates_batch(std::string_view method, std::string_view path) noexcept {
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  return method == "POST" && (path == "/v1/batches" || path == "/v1/messages/batches");
}

std::string_view message_batch_results_id(std::string_view method, std::string_view path) noexcept {
  constexpr std::string_view prefix = "/v1/messages/batches/", suffix = "/results";
  if (method != "GET" || !path.starts_with(prefix)) return {};
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (!path.ends_with(suffix) || path.size() <= prefix.size() + suffix.size()) return {};
  const std::string_view id = path.substr(prefix.size(), path.size() - prefix.size() - suffix.size());
  return id.find('/') == std::string_view::npos ? id : std::string_view();
}

bool holds_message_batches(std::string_view path) noexcept {
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  return (path == "/v1/messages/batches" || path.starts_with("/v1/messages/batches/")) && !path.ends_with("/results");
}

std::size_t relativize_results_urls(char* body, std::size_t size) noexcept {
  constexpr std::string_view key = "\"results_url\"";
  constexpr std::string_view path = "/v1/messages/batches/";
  std::string_view all(body, size);
  std::size_t done = 0;
  for (std::size_t at = all.find(key); at != std::string_view::npos; at = all.find(key, at + key.size())) {
    std::size_t i = at + key.size();
    while (i < size && (all[i] == ' ' || all[i] == '\t' || all[i] == '\n' || all[i] == '\r')) ++i;
    if (i >= size || all[i] != ':') continue;
    ++i;
    while (i < size && (all[i] == ' ' || all[i] == '\t' || all[i] == '\n' || all[i] == '\r')) ++i;
    if (i >= size || all[i] != '"') continue;
    const std::size_t open = i;
    const std::size_t close = all.find('"', open + 1);
    if (close == std::string_view::npos) break;  // cut by the end of this piece
    const std::string_view value = all.substr(open + 1, close - open - 1);
    if (value.find('\\') != std::string_view::npos || value.starts_with('/')) continue;
    const std::size_t p = value.find(path);
    if (p == std::string_view::npos || p == 0) continue;
    // "<origin and prefix>/v1/messages/batches/..." -> "/v1/messages/batches/...", then spaces.
    const std::size_t keep = value.size() - p;
    std::memmove(body + open + 1, body + open + 1 + p, keep);
    body[open + 1 + keep] = '"';
    std::memset(body + open + 2 + keep, ' ', close - (open + 1 + keep));
    ++done;
  }
  return done;
}

bool is_websocket_upgrade(std::string_view method, unsigned version, std::string_view connection,
                          std::string_view upgrade) noexcept {
  // Upgrade is a comma-separated list like Connection's; RFC 6455's keyword has no version.
  return method == "GET" && version == 11 && connection_lists(connection, "upgrade") &&
         connection_lists(upgrade, "websocket");
}

route_decision classify(std::string_view method, std::string_view path) noexcept {
  route_decision d;
  // One trailing slash is tolerated, as the OpenAI API does.
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (path == "/healthz" || path == "/readyz") {
    d.local = true;
    if (method != "GET" && method != "HEAD") {
      d.error = errc::method_not_allowed;
      d.allow = "GET, HEAD";
    }
    return d;
  }
  // The metered routes take POST and the models routes GET. A few other methods on the same
  // paths are other API calls, relayed unmetered as route `other`: GET /v1/chat/completions
  // lists stored completions, DELETE /v1/models/{id} deletes a fine-tuned model (both in the
  // OpenAI SDK), a GET of /v1/responses opens the Responses API's WebSocket mode (the SDKs'
  // `responses.connect()`: a tunnel, metered per response), and OPTIONS is a browser's CORS
  // preflight. HEAD goes wherever GET does (RFC 9110 §9.1), relayed as a HEAD. Any other method
  // is a 405.
  auto only = [&](std::string_view m, route_kind r, bool json, std::string_view also, std::string_view allow) {
    d.route = r;
    const bool head_of = method == "HEAD";
    if (method == m || (head_of && m == "GET")) {
      d.json_body = json && !head_of;
    } else if (method == "OPTIONS" || (!also.empty() && (method == also || (head_of && also == "GET")))) {
      d.route = route_kind::other;
    } else {
      d.error = errc::method_not_allowed;
      d.allow = allow;
    }
    return d;
  };
  if (path == "/v1/chat/completions") return only("POST", route_kind::chat_completions, true, "GET", "GET, HEAD, POST");
  if (path == "/v1/completions") return only("POST", route_kind::completions, true, {}, "POST");
  if (path == "/v1/embeddings") return only("POST", route_kind::embeddings, true, {}, "POST");
  if (path == "/v1/responses") return only("POST", route_kind::responses, true, "GET", "GET, HEAD, POST");
  if (path == "/v1/messages") return only("POST", route_kind::messages, true, {}, "POST");
  if (path == "/v1/models") return only("GET", route_kind::models, false, {}, "GET, HEAD");
  if (path.starts_with("/v1/models/") && path.size() > 11)
    return only("GET", route_kind::models, false, "DELETE", "GET, HEAD, DELETE");
  if (path == "/v1" || path.starts_with("/v1/")) {
    d.route = route_kind::other;  // transparent pass-through, any method
    return d;
  }
  d.error = errc::not_found;
  return d;
}

namespace {

// No dot segment, raw or percent-encoded ("%2e", "%2E"), and no empty segment ("//") in a path
// without its leading '/' (a trailing '/' is fine); with decode_slash, "%2F" separates segments
// too, as an upstream that decodes it would read the path.
bool clean_segments(std::string_view p, bool decode_slash) noexcept {
  std::size_t i = 0;
  for (;;) {
    // One segment: [i, end); `next` is where the following one starts, npos after the last.
    std::size_t end = i, next = std::string_view::npos;
    while (end < p.size()) {
      if (p[end] == '/') {
        next = end + 1;
        break;
      }
      if (decode_slash && end + 2 < p.size() && p[end] == '%' && p[end + 1] == '2' && (p[end + 2] == 'f' || p[end + 2] == 'F')) {
        next = end + 3;
        break;
      }
      ++end;
    }
    const std::string_view seg = p.substr(i, end - i);
    // A dot segment once "%2e"/"%2E" are decoded: one or two dots and nothing else.
    std::size_t dots = 0;
    bool other = false;
    for (std::size_t k = 0; k < seg.size() && !other && dots <= 2; ++k) {
      if (seg[k] == '.') {
        ++dots;
      } else if (seg[k] == '%' && k + 2 < seg.size() && seg[k + 1] == '2' && (seg[k + 2] == 'e' || seg[k + 2] == 'E')) {
        ++dots;
        k += 2;
      } else {
        other = true;
      }
    }
    if (!other && (dots == 1 || dots == 2)) return false;
    if (seg.empty() && next != std::string_view::npos) return false;
    if (next == std::string_view::npos) return true;
    i = next;
  }
}

}  // namespace

std::optional<target_parts> split_target(std::string_view target) noexcept {
  if (target.empty()) return std::nullopt;
  if (target.front() != '/') {
    // absolute-form (RFC 9112 §3.2.2): keep only path and query; the authority is ignored.
    auto scheme_end = target.find("://");
    if (scheme_end == std::string_view::npos) return std::nullopt;
    // The authority ends at the first '/', '?' or '#': a '/' inside the query or fragment
    // ("http://h?x=/v1/models") must not be taken for the path.
    auto path_start = target.find_first_of("/?#", scheme_end + 3);
    if (path_start == std::string_view::npos || target[path_start] != '/') return std::nullopt;
    target = target.substr(path_start);
  }
  auto frag = target.find('#');
  if (frag != std::string_view::npos) target = target.substr(0, frag);
  target_parts t;
  auto q = target.find('?');
  t.path = target.substr(0, q);
  t.query = q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
  for (char c : target)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\') return std::nullopt;
  // Path parameters: some upstream stacks (Tomcat, Spring) read "..;" as "..". No LLM API path
  // uses ';', so none is let through.
  if (t.path.find(';') != std::string_view::npos) return std::nullopt;
  // An encoded slash is part of a segment: a model id with a provider prefix, as the OpenAI SDK
  // sends `models.retrieve("openai/gpt-4.1")` (/v1/models/openai%2Fgpt-4.1). Some upstreams
  // decode it into a separator, so the path must be clean read either way, and it is let through
  // in model ids only: /v1/chat%2Fcompletions would be route `other` here and a chat upstream.
  const std::string_view rest = t.path.substr(1);
  if (!clean_segments(rest, false) || !clean_segments(rest, true)) return std::nullopt;
  if (!t.path.starts_with("/v1/models/"))
    for (std::size_t i = 0; i + 2 < t.path.size(); ++i)
      if (t.path[i] == '%' && t.path[i + 1] == '2' && (t.path[i + 2] == 'f' || t.path[i + 2] == 'F')) return std::nullopt;
  // Encoded backslashes could be read as separators by some upstreams; no API id holds one.
  for (std::size_t i = 0; i + 2 < t.path.size(); ++i)
    if (t.path[i] == '%' && t.path[i + 1] == '5' && (t.path[i + 2] == 'c' || t.path[i + 2] == 'C'))
      return std::nullopt;
  return t;
}

std::string upstream_target(const upstream_url& u, std::string_view path, std::string_view query) {
  std::string t;
  t.reserve(u.base_path.size() + path.size() + query.size() + 2);
  t += u.base_path;
  if (path.starts_with("/v1")) path.remove_prefix(3);
  t += path;
  if (!query.empty()) {
    t += '?';
    t += query;
  }
  return t;
}

std::string model_id_of_path(std::string_view id) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(id.size());
  for (std::size_t i = 0; i < id.size(); ++i) {
    char c = id[i];
    if (c == '%') {
      if (i + 2 >= id.size() || hex(id[i + 1]) < 0 || hex(id[i + 2]) < 0) return {};
      c = static_cast<char>(hex(id[i + 1]) * 16 + hex(id[i + 2]));
      i += 2;
    }
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return {};
    out += c;
  }
  return out;
}

std::string_view query_param(std::string_view query, std::string_view name) noexcept {
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view part = query.substr(0, amp);
    query.remove_prefix(amp == std::string_view::npos ? query.size() : amp + 1);
    if (part.size() > name.size() && part.starts_with(name) && part[name.size()] == '=') return part.substr(name.size() + 1);
  }
  return {};
}

std::string with_query_param(std::string_view query, std::string_view name, std::string_view value) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string encoded;
  for (unsigned char ch : value) {
    if (std::isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
      encoded += static_cast<char>(ch);
    } else {
      encoded += '%';
      encoded += hex[ch >> 4];
      encoded += hex[ch & 15];
    }
  }
  std::string out;
  bool done = false;
  std::size_t pos = 0;
  while (pos < query.size()) {
    const std::size_t amp = std::min(query.find('&', pos), query.size());
    const std::string_view part = query.substr(pos, amp - pos);
    if (!out.empty() || pos > 0) out += '&';
    if (!done && part.size() > name.size() && part.starts_with(name) && part[name.size()] == '=') {
      out.append(name).append("=").append(encoded);
      done = true;
    } else {
      out.append(part);
    }
    pos = amp + 1;
  }
  if (!done) {
    if (!out.empty()) out += '&';
    out.append(name).append("=").append(encoded);
  }
  return out;
}

bool is_json_content_type(std::string_view ct) noexcept {
  ct = trim_ows(ct);
  if (ct.empty()) return true;
  auto semi = ct.find(';');
  auto media = trim_ows(ct.substr(0, semi));
  if (iequals(media, "application/json")) return true;
  return media.size() > 5 && iequals(media.substr(media.size() - 5), "+json");
}

bool is_event_stream(std::string_view ct) noexcept {
  return iequals(trim_ows(ct.substr(0, ct.find(';'))), "text/event-stream");
}

std::string meterable_accept_encoding(std::string_view value) {
  std::string out;
  bool compressed = false;
  std::size_t pos = 0;
  while (pos <= value.size()) {
    const std::size_t comma = std::min(value.find(',', pos), value.size());
    const std::string_view entry = trim_ows(value.substr(pos, comma - pos));
    const std::string_view coding = trim_ows(entry.substr(0, entry.find(';')));
    const bool decodable = is_decodable_coding(coding);
    if (decodable || iequals(coding, "identity")) {
      if (!out.empty()) out.append(", "sv);
      out.append(entry);
      compressed = compressed || decodable;
    }
    pos = comma + 1;
  }
  if (!compressed) out.clear();
  return out;
}

void append_upstream_head(std::span<const header_view> client_headers, const upstream_head& h, std::string& out) {
  std::string_view connection_value;
  bool client_anthropic_version = false;
  // One allocation: the client's fields plus tollgate's (an upper bound, dropped fields included).
  std::size_t size = h.method.size() + h.target.size() + h.host.size() + h.credential_name.size() +
                     h.credential_value.size() + h.anthropic_version.size() + h.request_id.size() + 160;
  for (const auto& f : client_headers) {
    size += f.name.size() + f.value.size() + 4;
    if (connection_value.empty() && iequals(f.name, "connection")) connection_value = f.value;
    if (iequals(f.name, "anthropic-version")) client_anthropic_version = true;
  }
  out.reserve(out.size() + size);
  auto field = [&out](std::string_view name, std::string_view value) {
    out.append(name).append(": "sv).append(value).append("\r\n"sv);
  };
  out.append(h.method).append(" "sv).append(h.target).append(" HTTP/1.1\r\n"sv);
  for (const auto& f : client_headers) {
    const auto n = f.name;
    if (is_hop_by_hop(n) || iequals(n, "host") || iequals(n, "content-length") || iequals(n, "authorization") ||
        iequals(n, "x-api-key") || iequals(n, "x-request-id") ||
        ((h.drop_accept_encoding || h.meterable_encodings_only) && iequals(n, "accept-encoding")) ||
        (h.drop_content_encoding && iequals(n, "content-encoding")) ||
        // No permessage-deflate: the Realtime meter reads the upstream's frames, and a compressed
        // one needs the session's inflate context (RFC 7692), so the session runs uncompressed.
        (h.websocket && iequals(n, "sec-websocket-extensions")) ||
        (!h.drop_header.empty() && iequals(n, h.drop_header)) ||
        (!connection_value.empty() && connection_lists(connection_value, n)))
      continue;
    field(n, f.value);
  }
  if (h.meterable_encodings_only && !h.drop_accept_encoding) {
    std::string offered;  // repeated fields are one list (RFC 9110 §5.3)
    for (const auto& f : client_headers)
      if (iequals(f.name, "accept-encoding")) offered.append(offered.empty() ? ""sv : ", "sv).append(f.value);
    if (const std::string v = meterable_accept_encoding(offered); !v.empty()) field("Accept-Encoding", v);
  }
  field("Host", h.host);
  if (!h.credential_name.empty()) field(h.credential_name, h.credential_value);
  if (!h.anthropic_version.empty() && !client_anthropic_version) field("anthropic-version", h.anthropic_version);
  field("x-request-id", h.request_id);
  if (h.websocket) {
    field("Connection", "Upgrade");
    field("Upgrade", "websocket");
  }
  if (h.body_size > 0 || h.method == "POST" || h.method == "PUT" || h.method == "OPTIONS") {
    char num[24];
    auto [end, ec] = std::to_chars(num, num + sizeof num, h.body_size);
    field("Content-Length", std::string_view(num, static_cast<std::size_t>(end - num)));
  }
  out.append("\r\n"sv);
}

}  // namespace tollgate
