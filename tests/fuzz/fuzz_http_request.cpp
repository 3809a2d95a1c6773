// libFuzzer target: the client request path of client_session::handle_one() without sockets. The
// input is what a client sends on one connection (pipelined requests allowed); the first byte
// sets how many bytes each read returns, the second the parser limits. Beast's request parser
// reads it from a beast::test::stream, then the same checks as the proxy run: version, Host,
// split_target, classify, Content-Type, inspect_request, the include_usage rewrite and the head
// rewrite for the upstream (hop-by-hop headers out, the client's credentials out, Host and target
// set). The checks of handle_one()/proxy() are replicated here (proxy/net is not a library the
// fuzzer can link without an io_context, a ledger and a pool); the upstream head itself comes
// from the same pure append_upstream_head() the proxy calls.
//
// Invariants: the outcome does not depend on how the bytes were split into reads; a routed path
// starts with /v1 and has no dot segment, even percent-encoded; the upstream target stays under
// the upstream's base path; the rewritten request serializes to exactly one well-formed message
// with the body, target, Host and credentials the proxy meant, and no hop-by-hop header.
#include <boost/beast/_experimental/test/stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/http_rules.hpp"
#include "core/request_inspect.hpp"
#include "fuzz_common.hpp"

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using namespace tollgate;

constexpr std::string_view upstream_key = "sk-upstream-secret";

// What one handle_one() call decided, compared across read splits.
struct outcome {
  beast::error_code framing;  // Beast's error while reading head or body
  int status = 0;             // the answer tollgate gives locally (0: forwarded upstream)
  std::string method, target, body, upstream_request;
  bool keep = false;
  bool operator==(const outcome&) const = default;
};

const upstream_url& upstream() {
  static const upstream_url u = *parse_upstream_url("https://api.example.com/openai/v1");
  return u;
}

// RFC 3986 dot segments, raw or percent-encoded, in a path (no query).
bool has_dot_segment(std::string_view path) {
  std::string decoded;
  for (std::size_t i = 0; i < path.size(); ++i) {
    if (path[i] == '%' && i + 2 < path.size() && path[i + 1] == '2' && (path[i + 2] | 0x20) == 'e') {
      decoded += '.';
      i += 2;
    } else {
      decoded += path[i];
    }
  }
  std::string_view p = decoded;
  while (!p.empty()) {
    p.remove_prefix(1);  // the '/'
    const auto seg = p.substr(0, p.find('/'));
    if (seg == "." || seg == "..") return true;
    p.remove_prefix(seg.size());
  }
  return false;
}

void check_target(std::string_view target, const target_parts& tp, const route_decision& rd) {
  FUZZ_CHECK(tp.path.starts_with("/"));
  FUZZ_CHECK(!has_dot_segment(tp.path));
  FUZZ_CHECK(tp.path.find("//") == std::string_view::npos);
  FUZZ_CHECK(target.find(tp.path) != std::string_view::npos);
  for (char c : tp.path) FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f && c != '\\');
  if (rd.local || rd.error == errc::not_found) return;
  // Everything tollgate forwards is under /v1.
  FUZZ_CHECK(tp.path == "/v1" || tp.path.starts_with("/v1/"));

  const std::string up = upstream_target(upstream(), tp.path, tp.query);
  const std::string_view up_path = std::string_view(up).substr(0, up.find('?'));
  FUZZ_CHECK(up_path.starts_with(upstream().base_path));
  const auto rest = up_path.substr(upstream().base_path.size());
  FUZZ_CHECK(rest.empty() || rest.front() == '/');
  FUZZ_CHECK(!has_dot_segment(up_path));
  FUZZ_CHECK(up_path.find("//") == std::string_view::npos);
}

// The proxy's upstream request for an OpenAI-protocol upstream: append_upstream_head() over the
// client's headers (as proxy() calls it), then the body.
std::string upstream_bytes(const http::request<http::string_body>& req, const std::string& target) {
  std::vector<header_view> headers;
  for (const auto& f : req) headers.push_back({f.name_string(), f.value()});
  static const std::string bearer = "Bearer " + std::string(upstream_key);
  upstream_head h;
  h.method = req.method_string();
  h.target = target;
  h.host = upstream().host_header;
  h.credential_name = "Authorization";
  h.credential_value = bearer;
  h.request_id = "tg-fuzz";
  h.body_size = req.body().size();
  std::string wire;
  append_upstream_head(headers, h, wire);
  wire += req.body();
  return wire;
}

// The upstream sees one well-formed request: what the proxy meant, and nothing else.
void check_upstream_bytes(const std::string& wire, const http::request<http::string_body>& sent,
                          const std::string& target) {
  http::request_parser<http::string_body> p;
  p.eager(true);
  p.body_limit(boost::none);
  beast::error_code ec;
  const std::size_t used = p.put(net::buffer(wire), ec);
  FUZZ_CHECK(!ec);
  FUZZ_CHECK(p.is_done());
  FUZZ_CHECK(used == wire.size());  // no second request smuggled behind the first
  const auto& r = p.get();
  FUZZ_CHECK(r.method_string() == sent.method_string());
  FUZZ_CHECK(r.target() == target);
  FUZZ_CHECK(r.body() == sent.body());
  FUZZ_CHECK(r.count(http::field::host) == 1 && r[http::field::host] == upstream().host_header);
  FUZZ_CHECK(r.count(http::field::authorization) == 1 &&
             r[http::field::authorization] == "Bearer " + std::string(upstream_key));
  FUZZ_CHECK(r.count("x-api-key") == 0);
  FUZZ_CHECK(r.count("x-request-id") == 1 && r["x-request-id"] == "tg-fuzz");
  for (const auto& f : r) FUZZ_CHECK(!is_hop_by_hop(f.name_string()));
  FUZZ_CHECK(!r.chunked());
  FUZZ_CHECK(r.payload_size() && *r.payload_size() == r.body().size());
}

// One handle_one(): returns false when the connection would close.
bool handle_one(beast::test::stream& stream, beast::flat_buffer& buffer, std::size_t header_limit,
                std::size_t body_limit, outcome& out) {
  beast::error_code ec;
  http::request_parser<http::string_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(header_limit));
  parser.body_limit(body_limit);
  const std::size_t head_bytes = http::read_header(stream, buffer, parser, ec);
  // As handle_one: the head's own size decides, not Beast's per-window count (findings #5).
  if ((!ec || ec == http::error::body_limit) && head_bytes > header_limit) ec = http::error::header_limit;
  if (ec) {
    out.framing = ec;
    return false;
  }
  auto& req = parser.get();
  out.method = std::string(req.method_string());
  out.target = std::string(req.target());
  if (req.version() != 10 && req.version() != 11) {
    out.status = http_status(errc::http_version);
    return false;
  }
  const auto hosts = req.count(http::field::host);
  if (hosts > 1 || (hosts == 0 && req.version() == 11)) {
    out.status = http_status(hosts > 1 ? errc::duplicate_host : errc::missing_host);
    return false;
  }
  const auto tp = split_target(req.target());
  route_decision rd;
  if (tp) rd = classify(req.method_string(), tp->path);

  if (!parser.is_done()) {
    http::read(stream, buffer, parser, ec);
    if (ec) {
      out.framing = ec;
      return false;
    }
  }
  out.body = req.body();
  out.keep = req.keep_alive();
  if (!tp) {
    out.status = http_status(errc::bad_target);
    return out.keep;
  }
  check_target(req.target(), *tp, rd);
  if (rd.local || rd.error != errc::ok) {
    out.status = rd.local && rd.error == errc::ok ? 200 : http_status(rd.error);
    return out.keep;
  }

  request_facts facts;
  if (rd.json_body) {
    if (!is_json_content_type(req[http::field::content_type])) {
      out.status = http_status(errc::unsupported_media_type);
      return out.keep;
    }
    facts = inspect_request(req.body());
    if (facts.problem != request_problem::none) {
      out.status = http_status(errc::invalid_json);
      return out.keep;
    }
  }
  if (facts.stream && !facts.include_usage &&
      (rd.route == route_kind::chat_completions || rd.route == route_kind::completions)) {
    req.body() = add_include_usage(req.body(), facts);
    const auto again = inspect_request(req.body());
    FUZZ_CHECK(again.problem == request_problem::none && again.include_usage && again.model == facts.model);
  }

  const std::string target = upstream_target(upstream(), tp->path, tp->query);
  out.upstream_request = upstream_bytes(req, target);
  check_upstream_bytes(out.upstream_request, req, target);
  return out.keep;
}

// What client_session::run() does with one connection's bytes.
std::vector<outcome> serve(std::string_view bytes, std::size_t read_size, std::size_t header_limit,
                           std::size_t body_limit) {
  static net::io_context ioc;
  beast::test::stream stream(ioc);
  stream.read_size(read_size);
  stream.append(bytes);
  stream.close_remote();
  beast::flat_buffer buffer;
  std::vector<outcome> outcomes;
  for (int n = 0; n < 32; ++n) {
    if (buffer.size() == 0) {
      beast::error_code ec;
      const auto got = stream.read_some(buffer.prepare(8192), ec);
      if (ec) break;
      buffer.commit(got);
    }
    const bool keep = handle_one(stream, buffer, header_limit, body_limit, outcomes.emplace_back());
    if (!keep) break;
  }
  return outcomes;
}

// For a finding: what each run decided.
void print(const std::vector<outcome>& outcomes, const char* label) {
  for (const auto& o : outcomes)
    std::fprintf(stderr, "%s: error='%s' status=%d method='%s' target='%s' body=%zu bytes keep=%d upstream=%zu bytes\n",
                 label, o.framing.message().c_str(), o.status, o.method.c_str(), o.target.c_str(), o.body.size(), o.keep,
                 o.upstream_request.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::input in(data, size);
  const std::size_t read_size = 1 + in.byte() % 64;
  // The proxy's defaults (64 KiB head, 32 MiB body), or small ones so the limit paths are hit.
  const bool small = in.byte() & 1;
  const std::size_t header_limit = small ? 256 : 64u << 10;
  const std::size_t body_limit = small ? 64 : 32u << 20;
  const std::string_view bytes = in.rest();

  auto whole = serve(bytes, bytes.size() + 1, header_limit, body_limit);
  auto split = serve(bytes, read_size, header_limit, body_limit);
  // A head or body cut short by the end of the connection: whole reads may let Beast reach a
  // syntax error before the end, split reads only the end (it waits for the whole head once it
  // had to wait at all). Either way the connection closes without a forwarded request.
  if (!whole.empty() && whole.size() == split.size()) {
    auto& a = whole.back().framing;
    auto& b = split.back().framing;
    if (a && b && (a == http::error::partial_message || b == http::error::partial_message)) a = b;
    // A head over the limit that is also malformed: Beast reports whichever it meets first, and
    // once it had to wait it waits for the head's end before parsing on, so which one depends on
    // the reads. Either way the connection closes with nothing forwarded (431 or 400). (A body
    // over its limit is no such excuse: the head was read whole, and its size decides.)
    const auto malformed = [](const beast::error_code& e) { return e && e != http::error::body_limit; };
    if (malformed(a) && malformed(b) && (a == http::error::header_limit || b == http::error::header_limit)) a = b;
  }
  if (whole != split) {
    std::fprintf(stderr, "reads of %zu bytes:\n", read_size);
    print(whole, "whole");
    print(split, "split");
  }
  FUZZ_CHECK(whole == split);
  return 0;
}
