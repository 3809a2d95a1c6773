// Bad client input gets a clear OpenAI-style error (never a crash) and nothing goes upstream.
// Raw bytes on real sockets, so malformed framing can be sent.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <sstream>

#include "support.hpp"

using nlohmann::json;
using tt::harness;

namespace {
using tt::status_of;
bool iequal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}
std::string body_of(const std::string& raw) {
  auto p = raw.find("\r\n\r\n");
  return p == std::string::npos ? "" : raw.substr(p + 4);
}
std::string post_raw(const std::string& body, const std::string& content_type = "application/json") {
  return "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type +
         "\r\nConnection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}
}  // namespace

TEST_CASE("client errors: invalid JSON bodies are 400 with an OpenAI error and never forwarded", "[errors]") {
  harness h;
  struct bad { std::string body; std::string needle; };
  std::string deep(129, '[');
  std::vector<bad> cases = {
      {"{not json", "JSON"},
      {"", "empty"},
      {"[1,2]", "object"},
      {R"({"model": 42, "messages": []})", "model"},
      {R"({"model": "gpt-4.1", "stream": "yes"})", "stream"},
      {R"({"model":"gpt-4.1","x":)" + deep + "}", "deep"},
      {"{\"model\":\"gpt-4.1\",\"x\":\"\xff\xfe\"}", "UTF-8"},
      {R"({"model":"gpt-4.1"} trailing)", "JSON"},
  };
  for (auto& c : cases) {
    INFO(c.body.substr(0, 60));
    auto raw = tt::raw_exchange(h.port(), post_raw(c.body));
    REQUIRE(status_of(raw) == 400);
    auto err = json::parse(body_of(raw))["error"];
    CHECK(err["type"] == "invalid_request_error");
    CHECK(err["message"].get<std::string>().find(c.needle) != std::string::npos);
  }
  CHECK(h.upstream->request_count() == 0);
}

TEST_CASE("client errors: framing problems get their statuses", "[errors]") {
  harness h([] {
    tt::harness_options o;
    o.tweak = [](tollgate::config& c) { c.max_body_bytes = 1024; };
    return o;
  }());
  CHECK(status_of(tt::raw_exchange(h.port(), "GET /healthz HTTP/1.1\r\n\r\n")) == 400);                 // no Host
  CHECK(status_of(tt::raw_exchange(h.port(), "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")) == 400);
  CHECK(status_of(tt::raw_exchange(h.port(), "GET /healthz HTTP/1.1\r\nHost: a b/c\r\n\r\n")) == 400);  // RFC 9112 §3.2
  CHECK(status_of(tt::raw_exchange(h.port(), "GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n")) == 505);
  CHECK(status_of(tt::raw_exchange(h.port(), "GARBAGE\r\n\r\n")) == 400);
  CHECK(status_of(tt::raw_exchange(h.port(), "GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) == 404);
  CHECK(status_of(tt::raw_exchange(h.port(), "DELETE /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) == 405);
  CHECK(status_of(tt::raw_exchange(h.port(), "GET /v1/embeddings HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) == 405);
  CHECK(status_of(tt::raw_exchange(h.port(), post_raw(std::string(2048, ' ')))) == 413);
  CHECK(status_of(tt::raw_exchange(h.port(), post_raw("{}", "text/plain"))) == 415);
  CHECK(status_of(tt::raw_exchange(h.port(), "GET /v1/../admin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) == 400);
  CHECK(status_of(tt::raw_exchange(h.port(), "GET /v1/%2e%2e/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) == 400);
  std::string big_header = "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(100 * 1024, 'a') + "\r\n\r\n";
  CHECK(status_of(tt::raw_exchange(h.port(), big_header)) == 431);
  CHECK(h.upstream->request_count() == 0);
  // Still serving.
  CHECK(tt::request(h.port(), "GET", "/healthz").status == 200);
}

TEST_CASE("client errors: absolute-form targets cannot steer the upstream host", "[errors][security]") {
  harness h;
  auto raw = tt::raw_exchange(h.port(),
                              "GET http://evil.example/v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n");
  CHECK(status_of(raw) == 200);
  auto reqs = h.upstream->requests();
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0].target == "/v1/models");
  CHECK(reqs[0].header("host") == "127.0.0.1:" + std::to_string(h.upstream->port()));
}

TEST_CASE("client errors: pipelined requests are answered in order", "[errors]") {
  harness h;
  std::string two = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
  auto raw = tt::raw_exchange(h.port(), two);
  auto first = raw.find("HTTP/1.1 200");
  auto second = raw.find("HTTP/1.1 200", first + 1);
  CHECK(first != std::string::npos);
  CHECK(second != std::string::npos);
  CHECK(raw.find("gpt-4.1", second) != std::string::npos);
}

TEST_CASE("client errors: a keep-alive client that half-closes after its last request is answered and closed at once",
          "[errors]") {
  // The second request and the client's FIN arrive together and are taken by one drained read
  // (net/drained_read.hpp). The answer goes out; the connection must then close on that end of
  // stream, not sit until the keep-alive timeout (120 s).
  harness h;
  namespace asio = boost::asio;
  asio::io_context ioc;
  asio::ip::tcp::socket s(ioc);
  s.connect({asio::ip::make_address("127.0.0.1"), h.port()});
  const std::string call = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Content-Length: " + std::to_string(tt::chat_body().size()) + "\r\n\r\n" + tt::chat_body();
  std::string got;
  char buf[8192];
  auto read_one = [&] {  // one whole response (Content-Length framed)
    for (;;) {
      const auto head_end = got.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        const auto cl = got.find("Content-Length: ");
        REQUIRE(cl != std::string::npos);
        if (got.size() >= head_end + 4 + std::stoul(got.substr(cl + 16))) return;
      }
      boost::system::error_code ec;
      const std::size_t n = s.read_some(asio::buffer(buf), ec);
      got.append(buf, n);
      REQUIRE(!ec);
    }
  };
  asio::write(s, asio::buffer(call));
  read_one();
  REQUIRE(status_of(got) == 200);
  got.clear();
  const auto t0 = std::chrono::steady_clock::now();
  asio::write(s, asio::buffer(call));
  s.shutdown(asio::ip::tcp::socket::shutdown_send);
  boost::system::error_code ec;
  while (!ec) {
    const std::size_t n = s.read_some(asio::buffer(buf), ec);
    got.append(buf, n);
  }
  const auto waited = std::chrono::steady_clock::now() - t0;
  CHECK(ec == asio::error::eof);
  CHECK(status_of(got) == 200);
  CHECK(got.find("chat.completion") != std::string::npos);
  CHECK(waited < std::chrono::seconds(3));
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE status = 200") == 2);
}

TEST_CASE("client errors: Expect 100-continue is answered before the body is read", "[errors]") {
  harness h;
  std::string body = tt::chat_body();
  auto raw = tt::raw_exchange(h.port(), "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                                        "Expect: 100-continue\r\nConnection: close\r\nContent-Length: " +
                                            std::to_string(body.size()) + "\r\n\r\n" + body);
  CHECK(raw.rfind("HTTP/1.1 100 Continue\r\n\r\n", 0) == 0);
  CHECK(raw.find("HTTP/1.1 200 OK") != std::string::npos);
  CHECK(h.upstream->requests()[0].header("expect").empty());
}

TEST_CASE("client errors: trailer fields of a chunked request are dropped, not merged into its headers",
          "[errors][security]") {
  // RFC 9110 §6.5.1. Beast's parser inserts trailers among the head's fields: a trailer could
  // then reach the upstream as a header, or pass for one checked with the head.
  harness h;
  const std::string trailers = "x-fake-status: 500\r\nContent-Type: text/evil\r\nAuthorization: Bearer zz\r\nX-Trail: 1\r\n\r\n";
  SECTION("a pass-through call (its chunked body is spooled)") {
    auto raw = tt::raw_exchange(h.port(), "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                          "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n" + trailers);
    CHECK(status_of(raw) == 200);
  }
  SECTION("a metered call (its chunked body is read into memory)") {
    const std::string body = tt::chat_body();
    std::ostringstream chunk;
    chunk << std::hex << body.size();
    auto raw = tt::raw_exchange(h.port(), "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                          "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunk.str() + "\r\n" +
                                          body + "\r\n0\r\n" + trailers);
    CHECK(status_of(raw) == 200);
    h.flush();
    CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE status = 200") == 1);
  }
  auto reqs = h.upstream->requests();
  REQUIRE(reqs.size() == 1);
  std::size_t content_types = 0;
  for (const auto& [name, value] : reqs[0].headers) {
    INFO(name << ": " << value);
    CHECK_FALSE(iequal(name, "x-trail"));
    CHECK_FALSE(iequal(name, "x-fake-status"));
    if (iequal(name, "content-type")) ++content_types;
  }
  CHECK(content_types == 1);
  CHECK(reqs[0].header("content-type") == "application/json");
  CHECK(reqs[0].header("authorization") != "Bearer zz");
}

TEST_CASE("client errors: transfer codings other than chunked are refused, and HTTP/1.0 with one closes",
          "[errors][security]") {
  harness h;
  // "gzip, chunked" would be relayed still gzipped, unlabelled.
  auto raw = tt::raw_exchange(h.port(), "POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                                        "7\r\n{\"a\":1}\r\n0\r\n\r\n");
  CHECK(status_of(raw) == 400);
  CHECK(raw.find("chunked transfer coding") != std::string::npos);
  CHECK(h.upstream->request_count() == 0);
  // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request is faulty framing; answered, then
  // closed (a request pipelined behind it is not read).
  raw = tt::raw_exchange(h.port(), "POST /v1/echo HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n"
                                   "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  CHECK(status_of(raw) == 200);
  CHECK(raw.find("HTTP/1.", 5) == std::string::npos);  // one answer only
}

TEST_CASE("client errors: empty lines before a request line are ignored", "[errors]") {
  harness h;  // RFC 9112 §2.2: some clients send a CRLF after a POST body
  auto raw = tt::raw_exchange(h.port(), "\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  CHECK(status_of(raw) == 200);
  const std::string body = tt::chat_body();
  raw = tt::raw_exchange(h.port(), "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body +
                                   "\r\nGET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  CHECK(status_of(raw) == 200);
  CHECK(raw.find("HTTP/1.1 200", 5) != std::string::npos);
  CHECK(raw.find("HTTP/1.1 400") == std::string::npos);  // not "400" alone: request ids and dates may hold it
}

TEST_CASE("client errors: tollgate's own answers speak the client's HTTP version and carry a Date", "[errors]") {
  harness h;
  // An HTTP/1.0 keep-alive client (ab -k) reuses a connection only if the answer says keep-alive.
  auto raw = tt::raw_exchange(h.port(), "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                                        "GET /nope HTTP/1.0\r\n\r\n");
  CHECK(raw.starts_with("HTTP/1.0 200"));
  const auto first_end = raw.find("\r\n\r\n");
  REQUIRE(first_end != std::string::npos);
  const std::string first_head = raw.substr(0, first_end);
  CHECK(first_head.find("Connection: keep-alive") != std::string::npos);
  CHECK(first_head.find("\r\nDate: ") != std::string::npos);
  CHECK(raw.find("HTTP/1.0 404") != std::string::npos);
  // A relayed answer without a Date (the fake upstream sends none) gets one (RFC 9110 §6.6.1).
  raw = tt::raw_exchange(h.port(), "GET /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  CHECK(status_of(raw) == 200);
  CHECK(raw.substr(0, raw.find("\r\n\r\n")).find("\r\nDate: ") != std::string::npos);
}

TEST_CASE("client errors: HEAD goes wherever GET does and is relayed as a HEAD", "[errors]") {
  harness h;
  auto raw = tt::raw_exchange(h.port(), "HEAD /v1/models HTTP/1.1\r\nHost: a\r\n\r\n"
                                        "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  CHECK(status_of(raw) == 200);
  const auto head_end = raw.find("\r\n\r\n");
  REQUIRE(head_end != std::string::npos);
  CHECK(status_of(raw.substr(head_end + 4)) == 200);  // no body between the two answers
  auto reqs = h.upstream->requests();
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0].method == "HEAD");
  CHECK(reqs[0].target == "/v1/models");
  raw = tt::raw_exchange(h.port(), "PUT /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  CHECK(status_of(raw) == 405);
  CHECK(raw.find("Allow: GET, HEAD\r\n") != std::string::npos);
}
