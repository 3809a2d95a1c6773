// Pure HTTP decisions: routing, target sanitising (no SSRF), upstream URLs, hop-by-hop headers,
// error mapping and the gzip/deflate decoder used for metering.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/http_rules.hpp"
#include "core/inflate.hpp"

using namespace tollgate;

TEST_CASE("http_rules: routes and methods", "[http_rules]") {
  CHECK(classify("POST", "/v1/chat/completions").route == route_kind::chat_completions);
  CHECK(classify("POST", "/v1/chat/completions").json_body);
  CHECK(classify("POST", "/v1/chat/completions/").route == route_kind::chat_completions);
  CHECK(classify("POST", "/v1/completions").route == route_kind::completions);
  CHECK(classify("POST", "/v1/embeddings").route == route_kind::embeddings);
  CHECK(classify("POST", "/v1/responses").route == route_kind::responses);
  CHECK(classify("POST", "/v1/messages").route == route_kind::messages);
  CHECK(classify("GET", "/v1/models").route == route_kind::models);
  CHECK(classify("GET", "/v1/models/gpt-4.1").route == route_kind::models);
  CHECK_FALSE(classify("GET", "/v1/models").json_body);
  // HEAD goes wherever GET does (RFC 9110 §9.1), and reads no body.
  CHECK(classify("HEAD", "/v1/models").route == route_kind::models);
  CHECK(classify("HEAD", "/v1/models/gpt-4.1").error == errc::ok);
  CHECK(classify("HEAD", "/v1/chat/completions").route == route_kind::other);
  CHECK_FALSE(classify("HEAD", "/v1/chat/completions").json_body);
  CHECK(classify("HEAD", "/v1/embeddings").error == errc::method_not_allowed);
  SECTION("the other API calls on a metered or models path pass through, other methods are 405") {
    // GET /v1/chat/completions lists stored completions, DELETE /v1/models/{id} deletes a
    // fine-tuned model (both OpenAI SDK calls), GET /v1/responses opens the Responses API's
    // WebSocket mode; OPTIONS is a browser's CORS preflight.
    for (const auto& [method, path] : std::vector<std::pair<std::string_view, std::string_view>>{
             {"GET", "/v1/chat/completions"}, {"GET", "/v1/chat/completions/"}, {"DELETE", "/v1/models/ft:gpt-4.1:acme::x"},
             {"GET", "/v1/responses"}, {"GET", "/v1/responses/"}, {"HEAD", "/v1/responses"},
             {"OPTIONS", "/v1/chat/completions"}, {"OPTIONS", "/v1/messages"}, {"OPTIONS", "/v1/models"}}) {
      CAPTURE(method, path);
      const auto d = classify(method, path);
      CHECK(d.error == errc::ok);
      CHECK(d.route == route_kind::other);
      CHECK_FALSE(d.json_body);
    }
    for (const auto& [method, path, allow] : std::vector<std::tuple<std::string_view, std::string_view, std::string_view>>{
             {"PUT", "/v1/chat/completions", "GET, HEAD, POST"}, {"DELETE", "/v1/chat/completions", "GET, HEAD, POST"},
             {"GET", "/v1/completions", "POST"}, {"GET", "/v1/embeddings", "POST"}, {"PUT", "/v1/responses", "GET, HEAD, POST"},
             {"GET", "/v1/messages", "POST"}, {"POST", "/v1/models", "GET, HEAD"}, {"DELETE", "/v1/models", "GET, HEAD"},
             {"HEAD", "/v1/embeddings", "POST"}, {"POST", "/v1/models/gpt-4.1", "GET, HEAD, DELETE"}}) {
      CAPTURE(method, path);
      const auto d = classify(method, path);
      CHECK(d.error == errc::method_not_allowed);
      CHECK(d.allow == allow);
    }
  }
  SECTION("other /v1 paths pass through with any method") {
    CHECK(classify("DELETE", "/v1/files/abc").route == route_kind::other);
    CHECK(classify("POST", "/v1/audio/speech").error == errc::ok);
  }
  SECTION("health endpoints are local") {
    CHECK(classify("GET", "/healthz").local);
    CHECK(classify("GET", "/readyz").local);
    CHECK(classify("POST", "/healthz").error == errc::method_not_allowed);
  }
  SECTION("anything else is 404") {
    CHECK(classify("GET", "/").error == errc::not_found);
    CHECK(classify("GET", "/v2/models").error == errc::not_found);
    CHECK(classify("GET", "/v1x").error == errc::not_found);
  }
}

TEST_CASE("http_rules: request targets cannot escape the base path", "[http_rules][security]") {
  auto t = split_target("/v1/models?limit=2");
  REQUIRE(t);
  CHECK(t->path == "/v1/models");
  CHECK(t->query == "limit=2");
  SECTION("absolute-form keeps only path and query") {
    auto a = split_target("http://evil.example:9999/v1/models?x=1");
    REQUIRE(a);
    CHECK(a->path == "/v1/models");
    CHECK(a->query == "x=1");
  }
  SECTION("dot segments, encoded or not, are refused") {
    for (auto bad : {"/v1/../admin", "/v1/./x", "/v1/%2e%2e/x", "/v1/%2E%2e/x", "/v1/.%2e/x", "/v1/..", "/v1//x",
                     "/v1/a%2fb", "/v1/a\\b", "*", "", "v1/models", "/v1/\x01"})
      CHECK_FALSE(split_target(bad));
  }
  SECTION("an encoded slash is let through in a model id only, and only if the path is clean decoded") {
    // The OpenAI SDK's models.retrieve("openai/gpt-4.1") and models.delete() send this.
    auto m = split_target("/v1/models/openai%2Fgpt-4.1");
    REQUIRE(m);
    CHECK(m->path == "/v1/models/openai%2Fgpt-4.1");  // relayed as sent
    CHECK(split_target("/v1/models/openrouter%2fanthropic%2Fclaude-sonnet-4.5"));
    for (auto bad : {"/v1/models/%2F..%2Fadmin", "/v1/models/a%2F%2Fb", "/v1/models/..%2Fx", "/v1/models/a%2F.",
                     "/v1/models%2F..%2Fadmin", "/v1/chat%2Fcompletions", "/v1/files/a%2Fb", "/v1/models/a%5Cb"})
      CHECK_FALSE(split_target(bad));
  }
  SECTION("dots inside names are fine") {
    CHECK(split_target("/v1/models/gpt-4.1"));
    CHECK(split_target("/v1/models/ft:gpt-4.1:org..x"));
    CHECK(split_target("/v1/models/..."));      // three dots are a name, not a dot segment
    CHECK(split_target("/v1/%2e%2e%2e/x"));
    CHECK(split_target("/v1/%2e1/x"));
    CHECK(split_target("/v1/a%2"));             // a truncated escape is not a dot
    CHECK_FALSE(split_target("/v1/%2E"));
  }
}

TEST_CASE("http_rules: upstream URLs", "[http_rules]") {
  auto u = parse_upstream_url("https://api.holysheep.ai/v1");
  REQUIRE(u);
  CHECK(u->tls);
  CHECK(u->port == 443);
  CHECK(u->host_header == "api.holysheep.ai");
  CHECK(u->base_path == "/v1");
  CHECK(upstream_target(*u, "/v1/chat/completions", "") == "/v1/chat/completions");
  auto origin = parse_upstream_url("http://127.0.0.1:9000");
  REQUIRE(origin);
  CHECK_FALSE(origin->tls);
  CHECK(origin->base_path == "/v1");
  CHECK(origin->host_header == "127.0.0.1:9000");
  auto nested = parse_upstream_url("https://openrouter.ai/api/v1/");
  REQUIRE(nested);
  CHECK(upstream_target(*nested, "/v1/models", "a=1") == "/api/v1/models?a=1");
  auto v6 = parse_upstream_url("http://[::1]:8000/v1");
  REQUIRE(v6);
  CHECK(v6->host == "::1");
  CHECK(v6->host_header == "[::1]:8000");
  for (auto bad : {"ftp://x", "https://", "https://user:pw@host/v1", "https://host:99999", "https://host/v1?x=1", "host:80"})
    CHECK_FALSE(parse_upstream_url(bad));
}

TEST_CASE("http_rules: hop-by-hop headers", "[http_rules]") {
  for (auto h : {"Connection", "keep-alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Authorization",
                 "proxy-connection", "Expect"})
    CHECK(is_hop_by_hop(h));
  for (auto h : {"Authorization", "Content-Type", "x-request-id", "x-stainless-os", "OpenAI-Organization", "anthropic-beta"})
    CHECK_FALSE(is_hop_by_hop(h));
  CHECK(connection_lists("keep-alive, X-Secret-Hop", "x-secret-hop"));
  CHECK_FALSE(connection_lists("keep-alive", "x-secret-hop"));
  CHECK(is_json_content_type("application/json; charset=utf-8"));
  CHECK(is_json_content_type(""));
  CHECK(is_json_content_type("application/vnd.api+json"));
  CHECK_FALSE(is_json_content_type("text/plain"));
  CHECK_FALSE(is_json_content_type("multipart/form-data; boundary=x"));
}

TEST_CASE("http_rules: the upstream request head", "[http_rules][security]") {
  const std::vector<header_view> client = {
      {"Host", "127.0.0.1:8080"},
      {"User-Agent", "OpenAI/Python 1.99.0"},
      {"Authorization", "Bearer sk-client-secret"},
      {"x-api-key", "sk-client-other"},
      {"Connection", "keep-alive, X-Drop-Me"},
      {"X-Drop-Me", "1"},
      {"Keep-Alive", "timeout=5"},
      {"Transfer-Encoding", "chunked"},
      {"Content-Length", "999"},
      {"Expect", "100-continue"},
      {"Accept-Encoding", "gzip"},
      {"x-request-id", "client-chosen"},
      {"X-Stainless-Retry-Count", "0"},
      {"Content-Type", "application/json"},
  };
  upstream_head h;
  h.method = "POST";
  h.target = "/openai/v1/chat/completions?x=1";
  h.host = "api.example.com";
  h.credential_name = "Authorization";
  h.credential_value = "Bearer sk-upstream";
  h.request_id = "tg-123";
  h.body_size = 42;
  std::string out = "leading";  // appends
  append_upstream_head(client, h, out);
  CHECK(out ==
        "leadingPOST /openai/v1/chat/completions?x=1 HTTP/1.1\r\n"
        "User-Agent: OpenAI/Python 1.99.0\r\n"
        "Accept-Encoding: gzip\r\n"
        "X-Stainless-Retry-Count: 0\r\n"
        "Content-Type: application/json\r\n"
        "Host: api.example.com\r\n"
        "Authorization: Bearer sk-upstream\r\n"
        "x-request-id: tg-123\r\n"
        "Content-Length: 42\r\n"
        "\r\n");
  CHECK(out.find("sk-client") == std::string::npos);

  SECTION("an Anthropic upstream: x-api-key, anthropic-version unless the client sent one, no gzip") {
    h.credential_name = "x-api-key";
    h.credential_value = "sk-ant-upstream";
    h.anthropic_version = "2023-06-01";
    h.drop_accept_encoding = true;
    std::string a;
    append_upstream_head(client, h, a);
    CHECK(a.find("x-api-key: sk-ant-upstream\r\n") != std::string::npos);
    CHECK(a.find("anthropic-version: 2023-06-01\r\n") != std::string::npos);
    CHECK(a.find("Accept-Encoding") == std::string::npos);
    CHECK(a.find("Authorization") == std::string::npos);
    auto with_version = client;
    with_version.push_back({"anthropic-version", "2024-01-01"});
    std::string b;
    append_upstream_head(with_version, h, b);
    CHECK(b.find("anthropic-version: 2024-01-01\r\n") != std::string::npos);
    CHECK(b.find("2023-06-01") == std::string::npos);
  }
  SECTION("Content-Length only for a body or a method that expects one") {
    h.method = "GET";
    h.body_size = 0;
    std::string g;
    append_upstream_head({}, h, g);
    CHECK(g == "GET /openai/v1/chat/completions?x=1 HTTP/1.1\r\nHost: api.example.com\r\n"
               "Authorization: Bearer sk-upstream\r\nx-request-id: tg-123\r\n\r\n");
    h.method = "POST";
    std::string p;
    append_upstream_head({}, h, p);
    CHECK(p.find("Content-Length: 0\r\n") != std::string::npos);
  }
}

TEST_CASE("http_rules: only new work is metered, never a stored object's usage", "[http_rules]") {
  for (auto r : {route_kind::chat_completions, route_kind::completions, route_kind::embeddings, route_kind::responses,
                 route_kind::messages})
    CHECK(usage_is_new_spend(r, "POST", "/v1/x"));
  // New work on paths tollgate does not know.
  CHECK(usage_is_new_spend(route_kind::other, "POST", "/v1/images/generations"));
  CHECK(usage_is_new_spend(route_kind::other, "POST", "/v1/audio/transcriptions"));
  CHECK(usage_is_new_spend(route_kind::other, "POST", "/v1/responses/compact"));
  CHECK(usage_is_new_spend(route_kind::other, "POST", "/v1/responses/compact/"));
  // Retrievals, updates and cancellations of stored objects, billed when they were made.
  CHECK_FALSE(usage_is_new_spend(route_kind::other, "GET", "/v1/responses/resp_1"));
  CHECK_FALSE(usage_is_new_spend(route_kind::other, "GET", "/v1/chat/completions/chatcmpl-1"));
  CHECK_FALSE(usage_is_new_spend(route_kind::other, "POST", "/v1/chat/completions/chatcmpl-1"));
  CHECK_FALSE(usage_is_new_spend(route_kind::other, "POST", "/v1/responses/resp_1/cancel"));
  CHECK_FALSE(usage_is_new_spend(route_kind::other, "GET", "/v1/batches/batch_1"));
  CHECK_FALSE(usage_is_new_spend(route_kind::other, "GET", "/v1/chat/completions"));
  CHECK_FALSE(usage_is_new_spend(route_kind::other, "DELETE", "/v1/responses/resp_1"));
}

TEST_CASE("http_rules: calls that read or end a stored response name it", "[http_rules]") {
  CHECK(stored_response_id("GET", "/v1/responses/resp_1") == "resp_1");
  CHECK(stored_response_id("GET", "/v1/responses/resp_1/") == "resp_1");
  CHECK(stored_response_id("POST", "/v1/responses/resp_1/cancel") == "resp_1");
  CHECK(stored_response_id("GET", "/v1/responses/resp_1/input_items").empty());
  CHECK(stored_response_id("DELETE", "/v1/responses/resp_1").empty());
  CHECK(stored_response_id("POST", "/v1/responses/compact").empty());
  CHECK(stored_response_id("POST", "/v1/responses/input_tokens").empty());
  CHECK(stored_response_id("GET", "/v1/responses").empty());
  CHECK(stored_response_id("GET", "/v1/chat/completions/resp_1").empty());
}

TEST_CASE("http_rules: Batch API calls that create, read or cancel a batch", "[http_rules]") {
  CHECK(creates_batch("POST", "/v1/batches"));
  CHECK(creates_batch("POST", "/v1/batches/"));
  CHECK_FALSE(creates_batch("GET", "/v1/batches"));
  CHECK_FALSE(creates_batch("POST", "/v1/batches/batch_1/cancel"));
  CHECK(batch_id_of("GET", "/v1/batches/batch_1") == "batch_1");
  CHECK(batch_id_of("GET", "/v1/batches/batch_1/") == "batch_1");
  CHECK(batch_id_of("POST", "/v1/batches/batch_1/cancel") == "batch_1");
  CHECK(batch_id_of("GET", "/v1/batches").empty());
  CHECK(batch_id_of("DELETE", "/v1/batches/batch_1").empty());
  CHECK(batch_id_of("GET", "/v1/batches/batch_1/other").empty());
  CHECK(batch_id_of("GET", "/v1/files/batch_1").empty());
}

TEST_CASE("http_rules: message batch results_url values lead back through the relay, at the same length",
          "[http_rules]") {
  const auto run = [](std::string body) {
    const std::size_t size = body.size();
    const std::size_t n = relativize_results_urls(body.data(), body.size());
    CHECK(body.size() == size);
    return std::pair{n, body};
  };
  const std::string one =
      R"({"id":"msgbatch_1","type":"message_batch","results_url":"https://api.anthropic.com/v1/messages/batches/msgbatch_1/results","x":1})";
  auto [n, out] = run(one);
  CHECK(n == 1);
  const auto j = nlohmann::json::parse(out);
  CHECK(j["results_url"] == "/v1/messages/batches/msgbatch_1/results");
  CHECK(j["x"] == 1);
  // Spaced JSON, a relay's path prefix, two objects (a list), a null one, one already relative.
  const std::string list = R"({"data":[{"results_url" : "https://relay.example/anthropic/v1/messages/batches/b1/results"},)"
                           R"({"results_url":null},{"results_url":"/v1/messages/batches/b2/results"},)"
                           R"({"results_url":"https://api.anthropic.com/v1/messages/batches/b3/results"}]})";
  auto [m, out2] = run(list);
  CHECK(m == 2);
  const auto l = nlohmann::json::parse(out2);
  CHECK(l["data"][0]["results_url"] == "/v1/messages/batches/b1/results");
  CHECK(l["data"][1]["results_url"].is_null());
  CHECK(l["data"][2]["results_url"] == "/v1/messages/batches/b2/results");
  CHECK(l["data"][3]["results_url"] == "/v1/messages/batches/b3/results");
  // Left alone: a value cut by the end of the piece, another URL, a key in a string.
  CHECK(run(R"({"results_url":"https://api.anthropic.com/v1/messages/batc)").first == 0);
  CHECK(run(R"({"results_url":"https://files.example/x"})").first == 0);
  CHECK(message_batch_results_id("GET", "/v1/messages/batches/mb_1/results") == "mb_1");
  CHECK(message_batch_results_id("GET", "/v1/messages/batches/mb_1/results/") == "mb_1");
  CHECK(message_batch_results_id("POST", "/v1/messages/batches/mb_1/results").empty());
  CHECK(message_batch_results_id("GET", "/v1/messages/batches//results").empty());
  CHECK(message_batch_results_id("GET", "/v1/messages/batches/mb_1").empty());
  CHECK(creates_batch("POST", "/v1/messages/batches"));
  CHECK_FALSE(creates_batch("GET", "/v1/messages/batches"));
  CHECK(holds_message_batches("/v1/messages/batches"));
  CHECK(holds_message_batches("/v1/messages/batches/b1"));
  CHECK(holds_message_batches("/v1/messages/batches/b1/cancel"));
  CHECK_FALSE(holds_message_batches("/v1/messages/batches/b1/results"));
  CHECK_FALSE(holds_message_batches("/v1/messages"));
}

TEST_CASE("http_rules: a WebSocket handshake is recognised and goes upstream as one", "[http_rules]") {
  CHECK(is_websocket_upgrade("GET", 11, "Upgrade", "websocket"));
  CHECK(is_websocket_upgrade("GET", 11, "keep-alive, Upgrade", "WebSocket"));  // Firefox; any case
  CHECK(is_websocket_upgrade("GET", 11, "upgrade", "h2c, websocket"));
  CHECK_FALSE(is_websocket_upgrade("GET", 11, "keep-alive", "websocket"));  // Connection must list it
  CHECK_FALSE(is_websocket_upgrade("GET", 11, "Upgrade", "h2c"));
  CHECK_FALSE(is_websocket_upgrade("GET", 11, "Upgrade", {}));
  CHECK_FALSE(is_websocket_upgrade("POST", 11, "Upgrade", "websocket"));
  CHECK_FALSE(is_websocket_upgrade("GET", 10, "Upgrade", "websocket"));  // HTTP/1.0 cannot upgrade

  const std::vector<header_view> client = {
      {"Host", "tollgate:8080"},
      {"Connection", "Upgrade"},
      {"Upgrade", "websocket"},
      {"Sec-WebSocket-Version", "13"},
      {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
      {"Authorization", "Bearer sk-client"},
  };
  upstream_head h;
  h.method = "GET";
  h.target = "/v1/realtime?model=gpt-realtime";
  h.host = "api.example.com";
  h.credential_name = "Authorization";
  h.credential_value = "Bearer sk-upstream";
  h.request_id = "tg-1";
  h.websocket = true;
  std::string out;
  append_upstream_head(client, h, out);
  CHECK(out ==
        "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Host: api.example.com\r\n"
        "Authorization: Bearer sk-upstream\r\n"
        "x-request-id: tg-1\r\n"
        "Connection: Upgrade\r\n"
        "Upgrade: websocket\r\n"
        "\r\n");
}

TEST_CASE("http_rules: a metered call offers the upstream only codings the meter decodes", "[http_rules]") {
  CHECK(meterable_accept_encoding("gzip, deflate") == "gzip, deflate");
  CHECK(meterable_accept_encoding("gzip, deflate, br, zstd") == "gzip, deflate");  // httpx with brotli + zstandard
  CHECK(meterable_accept_encoding("br;q=1.0, gzip;q=0.8, *;q=0.1") == "gzip;q=0.8");
  CHECK(meterable_accept_encoding(" GZIP ,identity;q=0.5") == "GZIP, identity;q=0.5");
  CHECK(meterable_accept_encoding("br") == "");        // nothing decodable: send none, get identity
  CHECK(meterable_accept_encoding("identity") == "");
  CHECK(meterable_accept_encoding("*") == "");
  CHECK(meterable_accept_encoding("") == "");
  CHECK(meterable_accept_encoding("x-gzip,,") == "x-gzip");

  upstream_head h;
  h.method = "POST";
  h.target = "/v1/chat/completions";
  h.host = "api.example.com";
  h.request_id = "tg-1";
  h.body_size = 2;
  h.meterable_encodings_only = true;
  std::string out;
  const std::vector<header_view> two{{"Accept-Encoding", "gzip, br"}, {"accept-encoding", "zstd, deflate"}};
  append_upstream_head(two, h, out);
  CHECK(out.find("Accept-Encoding: gzip, deflate\r\n") != std::string::npos);  // both fields, one list
  CHECK(out.find("br") == std::string::npos);
  CHECK(out.find("zstd") == std::string::npos);
  std::string only_br;
  const std::vector<header_view> br{{"Accept-Encoding", "br"}};
  append_upstream_head(br, h, only_br);
  CHECK(only_br.find("ccept-") == std::string::npos);
  h.drop_accept_encoding = true;  // a stream to edit: no coding at all
  std::string edited;
  const std::vector<header_view> gz{{"Accept-Encoding", "gzip"}};
  append_upstream_head(gz, h, edited);
  CHECK(edited.find("ccept-") == std::string::npos);
}

TEST_CASE("http_rules: upstream response headers are relayed from an allow-list", "[http_rules][security]") {
  for (auto kept : {"Content-Type", "content-encoding", "Retry-After", "retry-after-ms", "x-request-id", "request-id",
                    "openai-processing-ms", "OpenAI-Version", "anthropic-ratelimit-requests-remaining",
                    "x-ratelimit-remaining-tokens", "cache-control", "etag", "date", "content-disposition",
                    "x-should-retry"})
    CHECK(is_safe_response_header(kept));
  for (auto dropped : {"Set-Cookie", "Server", "X-Powered-By", "Via", "Alt-Svc", "Strict-Transport-Security",
                       "Access-Control-Allow-Origin", "Location", "WWW-Authenticate", "Connection",
                       "Transfer-Encoding", "cf-ray", "x-envoy-upstream-service-time", "openai", "anthropic"})
    CHECK_FALSE(is_safe_response_header(dropped));
}

// The header-name checks dispatch on length; a plain scan of the lists is the reference, on
// every listed name in three casings and on near misses (one byte more, less or changed).
TEST_CASE("http_rules: header-name checks agree with a scan of their lists", "[http_rules]") {
  const std::vector<std::string> hop = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
                                        "transfer-encoding", "upgrade", "proxy-authorization",
                                        "proxy-authenticate", "expect", "trailers"};
  const std::vector<std::string> safe = {"content-type", "content-encoding", "content-language", "content-disposition",
                                         "cache-control", "expires", "etag", "last-modified", "date", "vary",
                                         "retry-after", "retry-after-ms", "request-id", "x-request-id",
                                         "x-should-retry"};
  const std::vector<std::string> prefixes = {"openai-", "anthropic-", "x-ratelimit-"};
  auto lower = [](std::string s) {
    for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  };
  auto in = [&](const std::vector<std::string>& list, const std::string& n) {
    return std::find(list.begin(), list.end(), lower(n)) != list.end();
  };
  auto safe_ref = [&](const std::string& n) {
    for (const auto& p : prefixes)
      if (lower(n).starts_with(p)) return true;
    return in(safe, n);
  };
  std::vector<std::string> names;
  for (const auto* list : {&hop, &safe, &prefixes}) {
    for (const auto& n : *list) {
      std::string upper = n, mixed = n;
      for (std::size_t i = 0; i < n.size(); ++i) {
        upper[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(n[i])));
        if (i % 2 == 0) mixed[i] = upper[i];
      }
      names.insert(names.end(), {n, upper, mixed, n + "x", n + "-", n.substr(0, n.size() - 1), "x" + n});
      for (std::size_t i = 0; i < n.size(); ++i) {
        std::string changed = n;
        changed[i] = changed[i] == 'z' ? 'y' : 'z';
        names.push_back(changed);
      }
    }
  }
  names.insert(names.end(), {"", "a", "x-", "openai", "OPENAI-ORGANIZATION", "X-RateLimit-Limit-Requests"});
  for (const auto& n : names) {
    INFO(n);
    CHECK(is_hop_by_hop(n) == in(hop, n));
    CHECK(is_safe_response_header(n) == safe_ref(n));
  }
}

TEST_CASE("http_rules: a request may use the chunked transfer coding only", "[http_rules]") {
  for (std::string_view ok : {"chunked", "Chunked", " chunked ", "chunked,", ", chunked"}) {
    CAPTURE(ok);
    CHECK(only_chunked_coding(ok));
  }
  for (std::string_view bad : {"", "gzip, chunked", "chunked, gzip", "identity", "x-chunked", ",", "deflate"}) {
    CAPTURE(bad);
    CHECK_FALSE(only_chunked_coding(bad));
  }
}

TEST_CASE("http_rules: an SSE Content-Type in any case", "[http_rules]") {
  for (std::string_view ok : {"text/event-stream", "Text/Event-Stream", "text/event-stream; charset=utf-8", " TEXT/EVENT-STREAM ;x=y"})
    CHECK(is_event_stream(ok));
  for (std::string_view bad : {"", "text/plain", "application/json", "text/event-streams", "x-text/event-stream"})
    CHECK_FALSE(is_event_stream(bad));
}

TEST_CASE("http_rules: Host values", "[http_rules]") {
  for (std::string_view ok : {"", "a", "api.example.com", "api.example.com:8080", "127.0.0.1:9000", "[::1]",
                              "[::1]:443", "[fe80::1%25eth0]", "my_host-1.local", "localhost:"}) {
    CAPTURE(ok);
    CHECK(is_valid_host_value(ok));
  }
  for (std::string_view bad : {"a b", "a/b", "user@host", "host:80:81", "host:http", "[::1", "[::1]x", "host:123456",
                               "a\tb", "evil.com/x?y", "h\"x"}) {
    CAPTURE(bad);
    CHECK_FALSE(is_valid_host_value(bad));
  }
}

TEST_CASE("http_rules: http_date writes IMF-fixdate", "[http_rules]") {
  char buf[29];
  CHECK(http_date(784111777, buf) == "Sun, 06 Nov 1994 08:49:37 GMT");  // RFC 9110's example
  CHECK(http_date(0, buf) == "Thu, 01 Jan 1970 00:00:00 GMT");
  CHECK(http_date(951782400, buf) == "Tue, 29 Feb 2000 00:00:00 GMT");
  CHECK(http_date(1798761599, buf) == "Thu, 31 Dec 2026 23:59:59 GMT");
  CHECK(http_date(4102444800, buf) == "Fri, 01 Jan 2100 00:00:00 GMT");
}

TEST_CASE("error: every code maps to a status and an OpenAI-shaped body", "[error]") {
  for (int i = 1; i <= static_cast<int>(errc::upstream_stream_truncated); ++i) {
    auto e = static_cast<errc>(i);
    INFO(error_name(e));
    int s = http_status(e);
    CHECK(s >= 400);
    CHECK(s < 600);
    auto j = nlohmann::json::parse(error_body(e, {}));
    CHECK(j["error"]["message"].get<std::string>() == default_message(e));
    CHECK(j["error"]["code"].get<std::string>() == error_name(e));
    CHECK(j["error"]["param"].is_null());
    CHECK(!j["error"]["type"].get<std::string>().empty());
  }
  CHECK(http_status(errc::invalid_json) == 400);
  CHECK(http_status(errc::body_too_large) == 413);
  CHECK(http_status(errc::http_version) == 505);
  CHECK(http_status(errc::upstream_connect) == 502);
  CHECK(http_status(errc::upstream_tls) == 502);
  CHECK(http_status(errc::upstream_first_byte_timeout) == 504);
  CHECK(openai_type(errc::invalid_json) == "invalid_request_error");
  CHECK(openai_type(errc::upstream_reset) == "server_error");
  SECTION("messages are escaped") {
    auto j = nlohmann::json::parse(error_body(errc::invalid_json, "a \"quoted\"\nline\x01"));
    CHECK(j["error"]["message"] == "a \"quoted\"\nline\x01");
  }
  CHECK(std::error_code(errc::upstream_tls).message() == "upstream_tls");
}

namespace {
std::string compress(const std::string& in, int window_bits) {
  z_stream z{};
  deflateInit2(&z, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY);
  std::string out(compressBound(in.size()) + 64, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = in.size();
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = out.size();
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}
}  // namespace

TEST_CASE("inflate: gzip, zlib and raw deflate decode in pieces", "[inflate]") {
  std::string text;
  for (int i = 0; i < 500; ++i) text += R"({"usage":{"prompt_tokens":12,"completion_tokens":3}} )";
  for (int bits : {15 + 16, 15, -15}) {
    INFO(bits);
    auto packed = compress(text, bits);
    inflater inf;
    std::string out;
    for (std::size_t i = 0; i < packed.size(); i += 7) CHECK(inf.feed(std::string_view(packed).substr(i, 7), out, 1 << 20));
    CHECK(out == text);
  }
  SECTION("output is capped at the limit") {
    inflater inf;
    std::string out;
    inf.feed(compress(text, 31), out, 100);
    CHECK(out.size() == 100);
  }
  SECTION("a gzip body of several members (a stream compressed event by event) decodes whole") {
    const std::string a = "data: {\"x\":1}\n\n", b = "data: {\"usage\":{\"prompt_tokens\":10}}\n\n";
    const std::string packed = compress(a, 31) + compress(b, 31) + compress(a, 31);
    for (std::size_t step : {std::size_t{1}, std::size_t{2}, std::size_t{5}, std::size_t{7}, packed.size()}) {
      INFO(step);
      inflater inf;
      std::string out;
      for (std::size_t i = 0; i < packed.size(); i += step) CHECK(inf.feed(std::string_view(packed).substr(i, step), out, 1 << 20));
      CHECK(out == a + b + a);
    }
  }
  SECTION("garbage fails without crashing") {
    inflater inf;
    std::string out;
    CHECK_FALSE(inf.feed("this is not compressed at all, not even a little", out, 1000));
    CHECK(inf.failed());
  }
}

TEST_CASE("http_rules: the model id of GET /v1/models/{id} is percent-decoded for routing", "[http_rules]") {
  CHECK(model_id_of_path("gpt-4.1") == "gpt-4.1");
  CHECK(model_id_of_path("openai%2Fgpt-4.1") == "openai/gpt-4.1");
  CHECK(model_id_of_path("openai%2fgpt-4.1") == "openai/gpt-4.1");
  CHECK(model_id_of_path("claude-sonnet-4-5%40latest") == "claude-sonnet-4-5@latest");
  CHECK(model_id_of_path("bad%2") == "");
  CHECK(model_id_of_path("bad%zz") == "");
  CHECK(model_id_of_path("nul%00") == "");
  CHECK(model_id_of_path("") == "");
}

TEST_CASE("http_rules: a query parameter is read, replaced in place or appended", "[http_rules]") {
  CHECK(query_param("model=gpt-realtime", "model") == "gpt-realtime");
  CHECK(query_param("a=1&model=x&model=y", "model") == "x");
  CHECK(query_param("models=x", "model") == "");
  CHECK(with_query_param("model=gpt-realtime", "model", "gpt-realtime-mini") == "model=gpt-realtime-mini");
  CHECK(with_query_param("a=1&model=x&b=2&model=y", "model", "z") == "a=1&model=z&b=2&model=y");
  CHECK(with_query_param("models=x", "model", "z") == "models=x&model=z");
  CHECK(with_query_param("", "model", "z") == "model=z");
  CHECK(with_query_param("model=x", "model", "openai/gpt realtime&x=1") == "model=openai%2Fgpt%20realtime%26x%3D1");
  CHECK(with_query_param("&a=1", "model", "z") == "&a=1&model=z");
}
