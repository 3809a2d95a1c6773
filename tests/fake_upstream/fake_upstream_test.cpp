// Checks the fake upstream itself (the test tool, not the product): reply shapes, where stream
// usage goes, TLS with the generated certificates, and a few faults.
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "fake_upstream.hpp"
#include "test_cert.hpp"

namespace {

namespace net = boost::asio;
namespace http = boost::beast::http;
namespace beast = boost::beast;
namespace ssl = boost::asio::ssl;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using header_list = std::vector<std::pair<std::string, std::string>>;

constexpr std::string_view sentence = "Hello! This is the tollgate fake upstream speaking.";

struct result {
  beast::error_code ec;
  http::response<http::string_body> res;
};

template <class Stream>
result exchange(Stream& stream, http::verb verb, const std::string& target, const std::string& body,
                const header_list& headers) {
  http::request<http::string_body> req{verb, target, 11};
  req.set(http::field::host, "localhost");
  req.set(http::field::content_type, "application/json");
  for (const auto& [name, value] : headers) req.set(name, value);
  req.body() = body;
  req.prepare_payload();
  result out;
  http::write(stream, req, out.ec);
  beast::flat_buffer buffer;
  if (!out.ec) http::read(stream, buffer, out.res, out.ec);
  return out;
}

tcp::endpoint local(uint16_t port) { return {net::ip::make_address("127.0.0.1"), port}; }

result post(const fake::server& server, const std::string& target, const json& body, const header_list& headers = {}) {
  net::io_context ioc;
  tcp::socket socket(ioc);
  socket.connect(local(server.port()));
  return exchange(socket, http::verb::post, target, body.dump(), headers);
}

result tls_get(uint16_t port, const std::string& ca_pem) {
  net::io_context ioc;
  ssl::context ctx(ssl::context::tls_client);
  ctx.add_certificate_authority(net::buffer(ca_pem));
  ctx.set_verify_mode(ssl::verify_peer);
  ssl::stream<tcp::socket> stream(ioc, ctx);
  SSL_set_tlsext_host_name(stream.native_handle(), "localhost");
  stream.set_verify_callback(ssl::host_name_verification("localhost"));
  stream.next_layer().connect(local(port));
  result out;
  stream.handshake(ssl::stream_base::client, out.ec);
  if (out.ec) return out;
  return exchange(stream, http::verb::get, "/v1/models", "", {});
}

// The data: payloads of an SSE body, in order.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const std::size_t end = body.find('\n', pos);
    out.push_back(body.substr(pos + 6, end - pos - 6));
    pos = end;
  }
  return out;
}

const json chat_request = {{"model", "gpt-4.1"},
                           {"messages", {{{"role", "user"}, {"content", "Say hello to the test suite"}}}}};

}  // namespace

TEST_CASE("fake_upstream: chat completion has the OpenAI shape and deterministic usage", "[fake_upstream]") {
  fake::server server({});
  SECTION("plain reply") {
    const result r = post(server, "/v1/chat/completions", chat_request);
    REQUIRE(!r.ec);
    REQUIRE(r.res.result_int() == 200);
    CHECK(std::string(r.res["x-request-id"]).starts_with("req_fake_"));
    const json j = json::parse(r.res.body());
    CHECK(j["object"] == "chat.completion");
    CHECK(j["id"].get<std::string>().starts_with("chatcmpl-"));
    CHECK(j["model"] == "gpt-4.1");
    CHECK(j["choices"][0]["message"]["role"] == "assistant");
    CHECK(j["choices"][0]["message"]["content"] == sentence);
    CHECK(j["choices"][0]["finish_reason"] == "stop");
    CHECK(j["usage"]["prompt_tokens"] == 10 + 27 / 4);
    CHECK(j["usage"]["completion_tokens"] == 8);
    CHECK(j["usage"]["total_tokens"] == 10 + 27 / 4 + 8);
    CHECK(j["usage"]["prompt_tokens_details"]["cached_tokens"] == 0);
    REQUIRE(server.request_count() == 1);
    CHECK(server.requests()[0].header("CONTENT-TYPE") == "application/json");
  }
  SECTION("cached and reasoning tokens come from the knobs, cached raising the prompt") {
    const json j = json::parse(
        post(server, "/v1/chat/completions", chat_request,
             {{"x-fake-cached-tokens", "100"}, {"x-fake-reasoning-tokens", "5"}})
            .res.body());
    CHECK(j["usage"]["prompt_tokens"] == 100);
    CHECK(j["usage"]["prompt_tokens_details"]["cached_tokens"] == 100);
    CHECK(j["usage"]["completion_tokens"] == 13);
    CHECK(j["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5);
  }
  SECTION("body padded to exactly x-fake-body-bytes with usage last") {
    const result r = post(server, "/v1/chat/completions", chat_request, {{"x-fake-body-bytes", "1048576"}});
    CHECK(r.res.body().size() == 1048576);
    CHECK(json::parse(r.res.body())["usage"]["completion_tokens"] == 8);
    CHECK(r.res.body().ends_with("}}}"));
  }
  SECTION("malformed JSON is a 400 in OpenAI error style") {
    net::io_context ioc;
    tcp::socket socket(ioc);
    socket.connect(local(server.port()));
    const result r = exchange(socket, http::verb::post, "/v1/chat/completions", "{nope", {});
    CHECK(r.res.result_int() == 400);
    CHECK(json::parse(r.res.body())["error"]["type"] == "invalid_request_error");
  }
}

TEST_CASE("fake_upstream: stream has a usage chunk only with include_usage", "[fake_upstream]") {
  fake::server server({});
  json request = chat_request;
  request["stream"] = true;
  SECTION("with include_usage: usage null on chunks, then a choices-less usage chunk") {
    request["stream_options"] = {{"include_usage", true}};
    const result r = post(server, "/v1/chat/completions", request);
    REQUIRE(r.res[http::field::content_type].starts_with("text/event-stream"));
    const auto data = sse_data(r.res.body());
    REQUIRE(data.size() == 12);  // role, 8 words, finish, usage, [DONE]
    CHECK(data.back() == "[DONE]");
    const json usage_chunk = json::parse(data[data.size() - 2]);
    CHECK(usage_chunk["choices"].empty());
    CHECK(usage_chunk["usage"]["completion_tokens"] == 8);
    CHECK(json::parse(data[0])["usage"].is_null());
    CHECK(json::parse(data[9])["choices"][0]["finish_reason"] == "stop");
  }
  SECTION("without include_usage: no chunk carries usage, and the words add up") {
    const auto data = sse_data(post(server, "/v1/chat/completions", request).res.body());
    REQUIRE(data.size() == 11);
    std::string text;
    for (std::size_t i = 0; i + 1 < data.size(); ++i) {
      const json chunk = json::parse(data[i]);
      CHECK_FALSE(chunk.contains("usage"));
      CHECK(chunk["choices"].size() == 1);
      text += chunk["choices"][0]["delta"].value("content", "");
    }
    CHECK(text == sentence);
  }
  SECTION("x-fake-chunks sets the number of content chunks") {
    const auto data = sse_data(post(server, "/v1/chat/completions", request, {{"x-fake-chunks", "3"}}).res.body());
    CHECK(data.size() == 6);  // role, 3 x "tok ", finish, [DONE]
  }
}

TEST_CASE("fake_upstream: TLS verifies only with the good generated certificate", "[fake_upstream]") {
  const auto check_kind = [](fake::cert_kind kind) {
    const fake::cert_bundle certs = fake::make_test_certs(kind);
    fake::server server({.tls = fake::tls_files{certs.cert_pem, certs.key_pem}});
    CHECK(server.base_url().starts_with("https://127.0.0.1:"));
    return tls_get(server.port(), certs.ca_pem);
  };
  SECTION("good") {
    const result r = check_kind(fake::cert_kind::good);
    REQUIRE_FALSE(r.ec);
    CHECK(r.res.result_int() == 200);
    CHECK(r.res.body().find("claude-sonnet-4.5") != std::string::npos);
  }
  SECTION("expired") { CHECK(check_kind(fake::cert_kind::expired).ec); }
  SECTION("wrong host") { CHECK(check_kind(fake::cert_kind::wrong_host).ec); }
  SECTION("self-signed") { CHECK(check_kind(fake::cert_kind::self_signed).ec); }
}

TEST_CASE("fake_upstream: faults break the response as asked and are still recorded", "[fake_upstream]") {
  fake::server server({});
  SECTION("reset-before-headers: no response at all") {
    const result r = post(server, "/v1/chat/completions", chat_request, {{"x-fake-fault", "reset-before-headers"}});
    CHECK(r.ec);
    CHECK(server.request_count() == 1);
  }
  SECTION("truncated-json: a 200 whose exact-length body is half a JSON document") {
    const result r = post(server, "/v1/chat/completions", chat_request, {{"x-fake-fault", "truncated-json"}});
    REQUIRE_FALSE(r.ec);
    CHECK(r.res.result_int() == 200);
    CHECK(json::parse(r.res.body(), nullptr, false).is_discarded());
  }
  SECTION("429 carries Retry-After and an OpenAI rate_limit_error") {
    const result r = post(server, "/v1/chat/completions", chat_request, {{"x-fake-status", "429"}});
    CHECK(r.res.result_int() == 429);
    CHECK(r.res["retry-after"] == "1");
    CHECK(json::parse(r.res.body())["error"]["type"] == "rate_limit_error");
  }
  SECTION("cut-stream: a cleanly ended stream without [DONE]") {
    json request = chat_request;
    request["stream"] = true;
    const result r = post(server, "/v1/chat/completions", request, {{"x-fake-fault", "cut-stream"}});
    REQUIRE_FALSE(r.ec);
    const auto data = sse_data(r.res.body());
    CHECK(data.size() == 3);
    CHECK(data.back() != "[DONE]");
  }
}

TEST_CASE("fake_upstream: x-fake-response-headers adds headers and ignores ones that would split the head",
          "[fake_upstream]") {
  fake::server server({});
  const result r = post(server, "/v1/chat/completions", chat_request,
                        {{"x-fake-response-headers",
                          R"({"Set-Cookie":"session=abc","Server":"nginx","X-Evil":"a\r\nInjected: 1","N":1})"}});
  REQUIRE_FALSE(r.ec);
  CHECK(r.res.result_int() == 200);
  CHECK(r.res["set-cookie"] == "session=abc");
  CHECK(r.res["server"] == "nginx");
  CHECK(r.res.count("x-evil") == 0);
  CHECK(r.res.count("injected") == 0);
  CHECK(r.res.count("n") == 0);
  CHECK(json::parse(r.res.body())["object"] == "chat.completion");
}
