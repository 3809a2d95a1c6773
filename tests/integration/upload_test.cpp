// Large uploads on pass-through routes (/v1/files, /v1/uploads/{id}/parts, /v1/audio/*): a body
// over server.max_body_bytes, or chunked, is stored in an unnamed file in server.spool_dir and
// sent upstream from there, byte for byte, as many times as failover needs. Real sockets, the
// fake upstream (which hashes the `file` part it receives) and a real ledger.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "support.hpp"

using nlohmann::json;
using tt::harness;

namespace {

// n bytes of every value, with no short period (a lost or repeated block changes the hash).
std::string file_bytes(std::size_t n) {
  std::string b(n, '\0');
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<char>((i * 7919 + (i >> 11)) & 0xff);
  return b;
}

constexpr std::string_view boundary = "tollgate-test-boundary-7f3a";
const std::string multipart_type = "multipart/form-data; boundary=" + std::string(boundary);

// A files.create body: purpose, then the file part.
std::string files_body(const std::string& file, const std::string& filename = "batch.jsonl") {
  std::string b;
  b += "--" + std::string(boundary) + "\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n";
  b += "--" + std::string(boundary) + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename +
       "\"\r\nContent-Type: application/octet-stream\r\n\r\n";
  b += file;
  b += "\r\n--" + std::string(boundary) + "--\r\n";
  return b;
}

// A form's text field, an audio file part, and the closing delimiter.
std::string form_field(std::string_view name, std::string_view value) {
  return "--" + std::string(boundary) + "\r\nContent-Disposition: form-data; name=\"" + std::string(name) + "\"\r\n\r\n" +
         std::string(value) + "\r\n";
}
std::string audio_part(const std::string& file) {
  return "--" + std::string(boundary) + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n"
         "Content-Type: audio/mpeg\r\n\r\n" + file + "\r\n";
}
const std::string form_end = "--" + std::string(boundary) + "--\r\n";

// `body` in chunked framing, `piece` bytes per chunk.
std::string chunked(const std::string& body, std::size_t piece) {
  std::string out;
  char size[32];
  for (std::size_t pos = 0; pos < body.size(); pos += piece) {
    const std::size_t n = std::min(piece, body.size() - pos);
    std::snprintf(size, sizeof size, "%zx\r\n", n);
    out += size;
    out.append(body, pos, n);
    out += "\r\n";
  }
  return out + "0\r\n\r\n";
}

using tt::status_of;

// tollgate with a small max_body_bytes (so a few MiB exercise the upload path) and its spool
// directory in the harness's temp dir.
tt::harness_options small_bodies(std::function<void(tollgate::config&)> more = {}) {
  return {.tweak = [more](tollgate::config& c) {
    c.max_body_bytes = 64 * 1024;
    c.spool_dir = std::filesystem::path(c.ledger_path).parent_path() / "spool";
    std::filesystem::create_directories(c.spool_dir);
    if (more) more(c);
  }};
}

}  // namespace

TEST_CASE("uploads: a pass-through body above max_body_bytes is stored and relayed byte for byte", "[uploads]") {
  harness h(small_bodies());
  const std::string file = file_bytes(3 * 1024 * 1024 + 17);
  auto r = tt::request(h.port(), "POST", "/v1/files", files_body(file), {{"Content-Type", multipart_type}});
  REQUIRE(r.status == 200);
  auto j = json::parse(r.body);
  CHECK(j["bytes"] == file.size());
  CHECK(j["purpose"] == "batch");
  CHECK(j["fake_sha256"] == fake::sha256_hex(file));
  REQUIRE(h.upstream->request_count() == 1);
  const auto got = h.upstream->requests()[0];
  CHECK(got.body == files_body(file));
  CHECK(got.header("content-length") == std::to_string(files_body(file).size()));
  CHECK(got.header("authorization") == "Bearer test-upstream-key");
  CHECK(tt::directory_entries(h.cfg.spool_dir) == 0);  // unnamed (O_TMPFILE), or unlinked at once
  h.flush();
  auto rows = h.rows("SELECT route, method, status, error_kind IS NULL AS ok FROM calls");
  REQUIRE(rows.size() == 1);
  CHECK(rows[0]["route"] == "other");
  CHECK(rows[0]["status"] == "200");
  CHECK(rows[0]["method"] == "POST");
  CHECK(rows[0]["ok"] == "1");

  SECTION("a JSON route keeps max_body_bytes: 413 before the body is read") {
    auto big = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1", false, ",\"user\":\"" + std::string(100 * 1024, 'u') + "\""));
    CHECK(big.status == 413);
    CHECK(json::parse(big.body)["error"]["code"] == "body_too_large");
    CHECK(h.upstream->request_count() == 1);
  }
}

TEST_CASE("uploads: a chunked upload is stored and sent with its Content-Length, the connection stays usable",
          "[uploads]") {
  harness h(small_bodies());
  const std::string file = file_bytes(700 * 1024 + 3);
  const std::string body = files_body(file, "speech.mp3");
  // Two requests on one connection: the chunked upload (with Expect: 100-continue, as curl sends
  // it), then a models list; both are answered in order.
  const std::string raw = tt::raw_exchange(
      h.port(),
      "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: a\r\nContent-Type: " + multipart_type +
          "\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, 4096 + 11) +
          "GET /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
      std::chrono::seconds(10));
  REQUIRE(raw.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "));
  CHECK(raw.find(fake::sha256_hex(file)) != std::string::npos);
  CHECK(raw.find("\"object\":\"list\"") != std::string::npos);
  REQUIRE(h.upstream->request_count() == 2);
  const auto got = h.upstream->requests()[0];
  CHECK(got.body == body);
  CHECK(got.header("content-length") == std::to_string(body.size()));
  CHECK(got.header("transfer-encoding").empty());
  CHECK(got.header("expect").empty());
}

TEST_CASE("uploads: a transcription's model is read from its form fields, before or after the file", "[uploads]") {
  harness h;
  const std::string file = file_bytes(300 * 1024 + 1);
  const std::string file_part = audio_part(file);
  for (const std::string& body : {form_field("model", "gpt-4o-transcribe") + file_part + form_end,     // the Python SDK's order
                                  file_part + form_field("model", "gpt-4o-transcribe") + form_end}) {  // the Node SDK's
    auto r = tt::request(h.port(), "POST", "/v1/audio/transcriptions", body, {{"Content-Type", multipart_type}});
    CHECK(r.status == 200);
  }
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls WHERE requested_model = 'gpt-4o-transcribe'") == 2);
}

TEST_CASE("uploads: a stored form (over the spool size) is routed, rewritten and priced by its model field",
          "[uploads][routing]") {
  // A 3 MiB transcription behind a 64 KiB max_body_bytes goes through a file, as a 10 MB one does
  // behind the default 8 MiB. A rule renames the alias `stt` to whisper-1.
  harness h(small_bodies([](tollgate::config& c) { c.routes = {{"stt", {}, "whisper-1"}, {"*", {}, ""}}; }));
  const std::string file = file_bytes(3 * 1024 * 1024 + 5);
  const std::string file_part = audio_part(file);
  for (const bool model_first : {true, false}) {  // the Python SDK's order, then the Node SDK's
    for (const std::string model : {"whisper-1", "stt"}) {
      INFO((model_first ? "fields first, " : "file first, ") << model);
      auto body = [&](std::string_view m) {
        return model_first ? form_field("model", m) + form_field("language", "en") + file_part + form_end
                           : file_part + form_field("model", m) + form_field("language", "en") + form_end;
      };
      const auto before = h.upstream->request_count();
      auto r = tt::request(h.port(), "POST", "/v1/audio/transcriptions", body(model), {{"Content-Type", multipart_type}});
      REQUIRE(r.status == 200);
      CHECK(json::parse(r.body)["fake_sha256"] == fake::sha256_hex(file));
      REQUIRE(h.upstream->request_count() == before + 1);
      const auto got = h.upstream->requests()[before];
      CHECK(got.body == body("whisper-1"));  // the alias replaced in place, every other byte as sent
      CHECK(got.header("content-length") == std::to_string(body("whisper-1").size()));
    }
  }
  CHECK(tt::directory_entries(h.cfg.spool_dir) == 0);
  h.flush();
  // Each call priced as whisper-1: 3 seconds at $0.006 a minute; the alias kept as asked.
  auto rows = h.rows("SELECT requested_model, price_model, priced, cost_usd FROM calls ORDER BY id");
  REQUIRE(rows.size() == 4);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    CHECK(rows[i]["requested_model"] == (i % 2 ? "stt" : "whisper-1"));
    CHECK(rows[i]["price_model"] == "whisper-1");
    CHECK(rows[i]["priced"] == "1");
    CHECK(std::stod(rows[i]["cost_usd"]) == Approx(3 * 0.006 / 60));
  }
}

TEST_CASE("uploads: a form in memory gets the rule's model too", "[uploads][routing]") {
  harness h({.tweak = [](tollgate::config& c) { c.routes = {{"stt", {}, "gpt-4o-transcribe"}, {"*", {}, ""}}; }});
  const std::string body = "--" + std::string(boundary) +
                           "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF....\r\n--" +
                           std::string(boundary) + "\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n";
  const std::string tail = "\r\n--" + std::string(boundary) + "--\r\n";
  auto r = tt::request(h.port(), "POST", "/v1/audio/transcriptions", body + "stt" + tail, {{"Content-Type", multipart_type}});
  REQUIRE(r.status == 200);
  REQUIRE(h.upstream->request_count() == 1);
  CHECK(h.upstream->requests()[0].body == body + "gpt-4o-transcribe" + tail);
  CHECK(h.upstream->requests()[0].header("content-length") == std::to_string((body + "gpt-4o-transcribe" + tail).size()));
}

TEST_CASE("uploads: whisper-1 is metered by the seconds its usage reports, tts-1 by its input's characters",
          "[uploads]") {
  harness h;
  const std::string file = file_bytes(50 * 1024);
  auto r = tt::request(h.port(), "POST", "/v1/audio/transcriptions", form_field("model", "whisper-1") + audio_part(file) + form_end,
                       {{"Content-Type", multipart_type}});
  REQUIRE(r.status == 200);
  // 12 characters, two of them outside ASCII: characters, not bytes.
  auto s = tt::post_json(h.port(), "/v1/audio/speech", R"({"model":"tts-1-hd","input":"Héllo wörld!","voice":"alloy"})");
  REQUIRE(s.status == 200);
  CHECK(s.body.size() == 125 * 192);  // the audio (3 s of MP3), untouched
  auto t = tt::post_json(h.port(), "/v1/audio/speech", R"({"model":"gpt-4o-mini-tts","input":"Hello","voice":"alloy"})");
  REQUIRE(t.status == 200);
  h.flush();
  // whisper-1: 3 seconds at $0.006 per minute.
  CHECK(h.query_text("SELECT price_model || ' ' || usage_source || ' ' || priced FROM calls WHERE requested_model = 'whisper-1'") ==
        "whisper-1 upstream 1");
  CHECK(h.query_double("SELECT cost_usd FROM calls WHERE requested_model = 'whisper-1'") == Approx(3 * 0.006 / 60));
  CHECK(h.query_text("SELECT price_model || ' ' || usage_source FROM calls WHERE requested_model = 'tts-1-hd'") ==
        "tts-1-hd upstream");
  CHECK(h.query_double("SELECT cost_usd FROM calls WHERE requested_model = 'tts-1-hd'") == Approx(12 * 30.0 / 1e6));
  // A token-billed speech model answers without usage: estimated from its input's text tokens
  // ("Hello": 2) and the audio's length (3 s at 20 audio tokens a second), never priced by characters.
  CHECK(h.query_text("SELECT usage_source || ' ' || prompt_tokens || ' ' || completion_tokens FROM calls "
                     "WHERE requested_model = 'gpt-4o-mini-tts'") == "estimated 2 60");
  CHECK(h.query_double("SELECT cost_usd FROM calls WHERE requested_model = 'gpt-4o-mini-tts'") ==
        Approx((2 * 0.60 + 60 * 12.0) / 1e6));
}

TEST_CASE("uploads: a body above max_upload_bytes is refused with 413 and nothing goes upstream", "[uploads]") {
  harness h(small_bodies([](tollgate::config& c) { c.max_upload_bytes = 1024 * 1024; }));
  const std::string head = "POST /v1/files HTTP/1.1\r\nHost: a\r\nContent-Type: " + multipart_type + "\r\n";
  SECTION("a Content-Length above it: refused with the head") {
    const std::string raw = tt::raw_exchange(h.port(), head + "Content-Length: 2000000\r\n\r\n--");
    CHECK(status_of(raw) == 413);
    CHECK(raw.find("server.max_upload_bytes") != std::string::npos);
    CHECK(raw.find("\"code\":\"body_too_large\"") != std::string::npos);
  }
  SECTION("a chunked body growing past it") {
    const std::string raw = tt::raw_exchange(
        h.port(), head + "Transfer-Encoding: chunked\r\n\r\n" + chunked(std::string(1024 * 1024 + 1, 'x'), 65536),
        std::chrono::seconds(10));
    CHECK(status_of(raw) == 413);
    CHECK(raw.find("server.max_upload_bytes") != std::string::npos);
  }
  SECTION("with max_upload_bytes 0 there is no upload path: max_body_bytes for every route") {
    harness off(small_bodies([](tollgate::config& c) { c.max_upload_bytes = 0; }));
    auto r = tt::request(off.port(), "POST", "/v1/files", files_body(file_bytes(100 * 1024)), {{"Content-Type", multipart_type}});
    CHECK(r.status == 413);
    CHECK(off.upstream->request_count() == 0);
  }
  CHECK(h.upstream->request_count() == 0);
  // Still serving.
  CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body()).status == 200);
}

TEST_CASE("uploads: failover sends the stored body again, whole, to the next upstream", "[uploads][failover]") {
  fake::options o;
  o.default_headers = {{"x-fake-status", "503"}};
  fake::server bad(o);
  harness h(small_bodies([&](tollgate::config& c) {
    tollgate::upstream_config first, second;
    first.name = "primary";
    first.url = bad.base_url();
    first.api_key = "key-primary";
    second.name = "backup";
    second.url = c.upstream.url;
    second.api_key = "key-backup";
    second.weight = 0;
    c.upstreams = {first, second};
  }));
  const std::string file = file_bytes(1024 * 1024 + 5);
  auto r = tt::request(h.port(), "POST", "/v1/files", files_body(file), {{"Content-Type", multipart_type}});
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body)["fake_sha256"] == fake::sha256_hex(file));
  REQUIRE(bad.request_count() == 1);
  CHECK(bad.requests()[0].body == files_body(file));
  REQUIRE(h.upstream->request_count() == 1);
  CHECK(h.upstream->requests()[0].body == files_body(file));
  h.flush();
  CHECK(h.query_text("SELECT upstream FROM calls") == "backup");
  CHECK(h.query_int("SELECT attempts FROM calls") == 2);
}

TEST_CASE("uploads: a spool_dir that cannot be written gives 507 upload_spool_failed, tollgate keeps serving",
          "[uploads]") {
  harness h(small_bodies([](tollgate::config& c) { c.spool_dir = "/nonexistent/tollgate-spool"; }));
  auto r = tt::request(h.port(), "POST", "/v1/files", files_body(file_bytes(200 * 1024)), {{"Content-Type", multipart_type}});
  CHECK(r.status == 507);
  auto err = json::parse(r.body)["error"];
  CHECK(err["code"] == "upload_spool_failed");
  CHECK(err["type"] == "server_error");
  CHECK(h.upstream->request_count() == 0);
  // Small pass-through bodies never touch the spool: a chunked one stays in memory while it is
  // within max_body_bytes, and only one that grows past it needs the file (507 here).
  auto small = tt::request(h.port(), "POST", "/v1/files", files_body("tiny"), {{"Content-Type", multipart_type}});
  CHECK(small.status == 200);
  const std::string chunked_small = tt::raw_exchange(
      h.port(), "POST /v1/files HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Type: " + multipart_type +
                    "\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(files_body("tiny"), 7));
  CHECK(status_of(chunked_small) == 200);
  CHECK(chunked_small.find(fake::sha256_hex("tiny")) != std::string::npos);
  const std::string chunked_big = tt::raw_exchange(
      h.port(), "POST /v1/files HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Type: " + multipart_type +
                    "\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(files_body(file_bytes(100 * 1024)), 4096),
      std::chrono::seconds(10));
  CHECK(status_of(chunked_big) == 507);
  CHECK(chunked_big.find("upload_spool_failed") != std::string::npos);
  CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body()).status == 200);
}

TEST_CASE("uploads: above 8 MiB a body is stored even within max_body_bytes, or held in memory when no file can be made",
          "[uploads]") {
  // max_body_bytes is sized for JSON with inline images (64 MiB by default); a pass-through body
  // over 8 MiB goes to the spool file all the same, and when no file can be made a body within
  // max_body_bytes is held in memory (as before spooling existed) rather than refused.
  const std::string nine_mib = file_bytes(9 << 20);
  auto spool_files = [](const harness& h) { return tt::directory_entries(h.cfg.spool_dir); };
  SECTION("a writable spool_dir: stored, relayed byte for byte, no file left") {
    harness h(small_bodies([](tollgate::config& c) { c.max_body_bytes = 16 << 20; }));
    auto r = tt::request(h.port(), "POST", "/v1/files", files_body(nine_mib), {{"Content-Type", multipart_type}});
    REQUIRE(r.status == 200);
    CHECK(json::parse(r.body)["fake_sha256"] == fake::sha256_hex(nine_mib));
    CHECK(spool_files(h) == 0);
  }
  SECTION("an unwritable one: within max_body_bytes 200 from memory, above it 507") {
    harness h(small_bodies([](tollgate::config& c) {
      c.max_body_bytes = 16 << 20;
      c.spool_dir = "/nonexistent/tollgate-spool";
    }));
    auto r = tt::request(h.port(), "POST", "/v1/files", files_body(nine_mib), {{"Content-Type", multipart_type}});
    REQUIRE(r.status == 200);
    CHECK(json::parse(r.body)["fake_sha256"] == fake::sha256_hex(nine_mib));
    const std::string chunked_nine = tt::raw_exchange(
        h.port(), "POST /v1/files HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Type: " + multipart_type +
                      "\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(files_body(nine_mib), 256 * 1024),
        std::chrono::seconds(20));
    CHECK(status_of(chunked_nine) == 200);
    CHECK(chunked_nine.find(fake::sha256_hex(nine_mib)) != std::string::npos);
    // Over max_body_bytes it needs the file: 507 with the head, before any 100 Continue.
    const std::string big = tt::raw_exchange(
        h.port(), "POST /v1/files HTTP/1.1\r\nHost: a\r\nContent-Type: " + multipart_type +
                      "\r\nExpect: 100-continue\r\nContent-Length: " + std::to_string(17 << 20) + "\r\n\r\n");
    CHECK(status_of(big) == 507);
    CHECK(h.upstream->request_count() == 2);
  }
}

TEST_CASE("uploads: a client that stops or leaves mid-upload gets 408 or nothing, and nothing goes upstream",
          "[uploads][timeouts]") {
  using namespace std::chrono_literals;
  harness h(small_bodies([](tollgate::config& c) { c.body_timeout = 500ms; }));
  const std::string body = files_body(file_bytes(300 * 1024));
  const std::string head = "POST /v1/files HTTP/1.1\r\nHost: a\r\nContent-Type: " + multipart_type +
                           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  SECTION("the rest of the body never comes: 408 after body_timeout") {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string raw = tt::raw_exchange(h.port(), head + body.substr(0, body.size() / 2), 5s);
    CHECK(status_of(raw) == 408);
    CHECK(std::chrono::steady_clock::now() - t0 < 3s);
  }
  SECTION("the client closes half way") {
    boost::asio::io_context ioc;
    boost::asio::ip::tcp::socket s(ioc);
    s.connect({boost::asio::ip::make_address("127.0.0.1"), h.port()});
    boost::asio::write(s, boost::asio::buffer(head + body.substr(0, body.size() / 2)));
    std::this_thread::sleep_for(100ms);
    s.close();
    std::this_thread::sleep_for(100ms);
  }
  CHECK(h.upstream->request_count() == 0);
  CHECK(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body()).status == 200);
  h.flush();
  CHECK(h.query_int("SELECT COUNT(*) FROM calls") == 1);
}

// An upstream that refuses a body after its head (as a size limit in front of an API does) and
// closes without reading the rest: tollgate's write fails, and the answer is relayed rather
// than replaced by a 502.
TEST_CASE("uploads: an upstream that answers before reading the body is relayed, not a 502", "[uploads]") {
  boost::asio::io_context ioc;
  boost::asio::ip::tcp::acceptor acceptor(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
  const auto upstream_port = acceptor.local_endpoint().port();
  const std::string refusal = R"({"error":{"message":"File too large.","type":"invalid_request_error","code":"file_too_large"}})";
  std::atomic<int> answered{0};
  std::thread upstream([&] {  // one connection: it is a fresh one, so no stale-connection retry
    boost::system::error_code ec;
    boost::asio::ip::tcp::socket s(ioc);
    acceptor.accept(s, ec);
    if (ec) return;
    std::string head;
    char ch;
    while (head.find("\r\n\r\n") == std::string::npos && boost::asio::read(s, boost::asio::buffer(&ch, 1), ec) == 1) head += ch;
    if (ec) return;
    boost::asio::write(s, boost::asio::buffer("HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                                              "Content-Length: " + std::to_string(refusal.size()) +
                                              "\r\nConnection: close\r\n\r\n" + refusal), ec);
    ++answered;
    s.close(ec);  // with the body unread: a reset
  });
  harness h(small_bodies([&](tollgate::config& c) { c.upstream.url = "http://127.0.0.1:" + std::to_string(upstream_port) + "/v1"; }));
  const std::string body = files_body(file_bytes(24 * 1024 * 1024));
  auto r = tt::request(h.port(), "POST", "/v1/files", body, {{"Content-Type", multipart_type}});
  upstream.join();
  CHECK(answered == 1);
  CHECK(r.status == 413);
  CHECK(r.body == refusal);
  h.flush();
  CHECK(h.query_int("SELECT status FROM calls") == 413);
}

TEST_CASE("media: DALL-E images are billed per image and Sora videos per second at their size", "[uploads][media]") {
  harness h;
  const std::string b = "--" + std::string(boundary);
  auto field = [&](const std::string& name, const std::string& value) {
    return b + "\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\n" + value + "\r\n";
  };
  auto file = [&](const std::string& name, std::size_t n) {
    return b + "\r\nContent-Disposition: form-data; name=\"" + name + "\"; filename=\"in.png\"\r\nContent-Type: image/png\r\n\r\n" +
           file_bytes(n) + "\r\n";
  };
  const std::string end = b + "--\r\n";
  auto cost_of = [&](const std::string& request_id) {
    return h.query_text("SELECT ifnull(requested_model, '') || '|' || ifnull(served_model, '') || '|' || ifnull(price_model, '') || "
                        "'|' || usage_source || '|' || priced || '|' || printf('%.4f', cost_usd) FROM calls WHERE request_id = '" +
                        request_id + "'");
  };
  auto post = [&](const std::string& path, const std::string& body, const std::string& id, bool form = false) {
    auto r = tt::request(h.port(), "POST", path, body,
                         {{"Content-Type", form ? multipart_type : std::string("application/json")}, {"x-request-id", id}});
    CHECK(r.status == 200);
    return r;
  };
  // DALL-E 3 HD landscape: $0.12 an image.
  post("/v1/images/generations", R"({"model":"dall-e-3","prompt":"a gate","size":"1792x1024","quality":"hd"})", "img-1");
  // DALL-E 2, three 512x512 images: 3 x $0.018.
  post("/v1/images/generations", R"({"model":"dall-e-2","prompt":"a gate","n":3,"size":"512x512"})", "img-2");
  // A variation (a form naming no model: the API's default, dall-e-2), two 256x256 images.
  post("/v1/images/variations", file("image", 300'000) + field("n", "2") + field("size", "256x256") + end, "img-3", true);
  // No size: DALL-E's default 1024x1024 ($0.04).
  post("/v1/images/generations", R"({"model":"dall-e-3","prompt":"a gate"})", "img-4");
  // A size the table has no price for: unpriced, not $0 as if free.
  post("/v1/images/generations", R"({"model":"dall-e-3","prompt":"a gate","size":"512x512"})", "img-5");
  // Sora 2 Pro, 8 seconds at 1792x1024: 8 x $0.50.
  auto created = post("/v1/videos", R"({"model":"sora-2-pro","prompt":"a gate","size":"1792x1024","seconds":"8"})", "vid-1");
  const std::string video_id = json::parse(created.body)["id"];
  // Retrievals and the download bill nothing; a remix is a new video (the fake's: sora-2, 4 s, $0.40).
  CHECK(tt::request(h.port(), "GET", "/v1/videos/" + video_id, "", {{"x-request-id", "vid-2"}}).status == 200);
  CHECK(tt::request(h.port(), "GET", "/v1/videos/" + video_id + "/content", "", {{"x-request-id", "vid-3"}}).status == 200);
  post("/v1/videos/" + video_id + "/remix", R"({"prompt":"at night"})", "vid-4");
  // A form with an input reference image: sora-2, 12 seconds.
  post("/v1/videos", field("model", "sora-2") + field("prompt", "a gate") + field("seconds", "12") + file("input_reference", 2000) + end,
       "vid-5", true);
  h.flush();
  CHECK(cost_of("img-1") == "dall-e-3||dall-e-3|upstream|1|0.1200");
  CHECK(cost_of("img-2") == "dall-e-2||dall-e-2|upstream|1|0.0540");
  CHECK(cost_of("img-3") == "dall-e-2||dall-e-2|upstream|1|0.0320");
  CHECK(cost_of("img-4") == "dall-e-3||dall-e-3|upstream|1|0.0400");
  CHECK(cost_of("img-5") == "dall-e-3|||upstream|0|0.0000");
  CHECK(cost_of("vid-1") == "sora-2-pro|sora-2-pro|sora-2-pro|upstream|1|4.0000");
  CHECK(cost_of("vid-2") == "|||none|0|0.0000");
  CHECK(cost_of("vid-3") == "|||none|0|0.0000");
  CHECK(cost_of("vid-4") == "|sora-2|sora-2|upstream|1|0.4000");  // a remix names no model: the reply does
  CHECK(cost_of("vid-5") == "sora-2|sora-2|sora-2|upstream|1|1.2000");
  // The spend counter holds them too; the unpriced image is counted as unpriced.
  const std::string metrics = h.metrics_text();
  CHECK(metrics.find("tollgate_spend_usd_total{model=\"sora-2-pro\"} 4") != std::string::npos);
  CHECK(metrics.find("tollgate_spend_usd_total{model=\"dall-e-3\"} 0.16") != std::string::npos);
  CHECK(metrics.find("tollgate_unpriced_requests_total 1") != std::string::npos);
}

TEST_CASE("media: a hard budget reserves an image's or a video's price before it goes upstream", "[uploads][media][budgets]") {
  harness h({.tweak = [](tollgate::config& c) { c.policy.budgets = {tt::hard_daily_budget(5.0)}; }});
  const std::string pro = R"({"model":"sora-2-pro","prompt":"a gate","size":"1792x1024","seconds":"8"})";  // $4.00
  auto first = tt::post_json(h.port(), "/v1/videos", pro);
  REQUIRE(first.status == 200);
  const std::string pro_id = json::parse(first.body)["id"];
  // $4 spent, $4 more asked: refused before the upstream bills it (the reply says nothing
  // about usage, so only the reservation can stop it).
  auto second = tt::post_json(h.port(), "/v1/videos", pro);
  CHECK(second.status == 429);
  CHECK(json::parse(second.body)["error"]["code"] == "budget_exceeded");
  // A remix names no model, size or length: it reserves its original's ($4 more: refused), and
  // the remix of a video tollgate has not seen the priciest per-second output for 12 s ($6).
  auto remix_pro = tt::post_json(h.port(), "/v1/videos/" + pro_id + "/remix", R"({"prompt":"at night"})");
  CHECK(remix_pro.status == 429);
  CHECK(json::parse(remix_pro.body)["error"]["code"] == "budget_exceeded");
  CHECK(tt::post_json(h.port(), "/v1/videos/video_elsewhere/remix", R"({"prompt":"at night"})").status == 429);
  // Asking for fewer seconds fits: 4 s of sora-2 is $0.40; its remix reserves as much and fits.
  auto small = tt::post_json(h.port(), "/v1/videos", R"({"prompt":"a gate","seconds":"4"})");
  REQUIRE(small.status == 200);
  const std::string small_id = json::parse(small.body)["id"];
  CHECK(tt::post_json(h.port(), "/v1/videos/" + small_id + "/remix", R"({"prompt":"at night"})").status == 200);
  // Five DALL-E 2 images ($0.10) fit; a size the table does not price cannot be counted: refused.
  CHECK(tt::post_json(h.port(), "/v1/images/generations", R"({"model":"dall-e-2","prompt":"x","n":5})").status == 200);
  auto unpriced = tt::post_json(h.port(), "/v1/images/generations", R"({"model":"dall-e-3","prompt":"x","size":"640x480"})");
  CHECK(unpriced.status == 429);
  CHECK_THAT(json::parse(unpriced.body)["error"]["message"].get<std::string>(),
             Catch::StartsWith("Model 'dall-e-3' has no price for this size or quality"));
  // gpt-image-1 is priced by the tokens its reply reports, not per image: admitted.
  CHECK(tt::post_json(h.port(), "/v1/images/generations", R"({"model":"gpt-image-1","prompt":"x"})").status == 200);
  CHECK(h.upstream->request_count() == 5);
  h.flush();
  CHECK(h.query_double("SELECT SUM(cost_usd) FROM calls") == Approx(4.0 + 0.4 + 0.4 + 0.1 + (12 * 5.0 + 4160 * 40.0) / 1e6));
}
