// Tests for request-body inspection (one SAX pass) and the include_usage rewrite.
#include <catch2/catch.hpp>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include <openssl/evp.h>

#include "core/request_inspect.hpp"
#include "core/usage.hpp"

using namespace tollgate;
using namespace std::string_literals;

namespace {

request_problem problem_of(std::string_view body) { return inspect_request(body).problem; }

// `{"a":` + n nested arrays: the top-level object plus n levels.
std::string nested(int arrays) {
  return R"({"a":)" + std::string(static_cast<std::size_t>(arrays), '[') +
         std::string(static_cast<std::size_t>(arrays), ']') + "}";
}

}  // namespace

TEST_CASE("request_inspect: a chat body yields its fields", "[request_inspect]") {
  const auto f = inspect_request(
      R"({"model":"gpt-4.1","stream":true,"user":"u-42","max_tokens":256,)"
      R"("messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello there, how are you?"}]})");
  CHECK(f.problem == request_problem::none);
  CHECK(f.problem_detail.empty());
  CHECK(f.has_model);
  CHECK(f.model == "gpt-4.1");
  CHECK(f.stream);
  CHECK_FALSE(f.has_stream_options);
  CHECK_FALSE(f.include_usage);
  CHECK(f.user == "u-42");
  CHECK(f.max_tokens == 256);
  text_tally expected;
  for (const char* s : {"system", "Be brief.", "user", "Hello there, how are you?"}) expected.add(s);
  CHECK(f.prompt_tokens_estimate == expected.tokens());
  CHECK(f.prompt_tokens_estimate > 0);
}

TEST_CASE("request_inspect: a NUL byte makes a body malformed, even after a complete object", "[request_inspect]") {
  // nlohmann's lexer would stop at the NUL and read only the first object (found by fuzzing).
  const std::string body = std::string(R"({"model":"gpt-4o-mini"})") + '\0' + R"({"model":"gpt-5"})";
  const auto f = inspect_request(body);
  CHECK(f.problem == request_problem::malformed_json);
  CHECK_FALSE(f.problem_detail.empty());
}

TEST_CASE("request_inspect: absent fields keep their defaults", "[request_inspect]") {
  const auto f = inspect_request(R"( {"input":"embed me"} )");
  CHECK(f.problem == request_problem::none);
  CHECK_FALSE(f.has_model);
  CHECK(f.model.empty());
  CHECK_FALSE(f.stream);
  CHECK(f.user.empty());
  CHECK_FALSE(f.max_tokens.has_value());
  CHECK(f.prompt_tokens_estimate == estimate_tokens("embed me"));
}

TEST_CASE("request_inspect: stream and stream_options", "[request_inspect]") {
  SECTION("include_usage true") {
    const auto f = inspect_request(R"({"model":"m","stream":true,"stream_options":{"include_usage":true}})");
    CHECK(f.stream);
    CHECK(f.has_stream_options);
    CHECK(f.include_usage);
  }
  SECTION("include_usage false") {
    const auto f = inspect_request(R"({"stream_options":{"include_usage":false},"stream":true})");
    CHECK(f.has_stream_options);
    CHECK_FALSE(f.include_usage);
  }
  SECTION("stream_options without include_usage, or not an object") {
    for (const char* body : {R"({"stream_options":{"other":1}})", R"({"stream_options":null})",
                             R"({"stream_options":[{"include_usage":true}]})",
                             R"({"stream_options":{"x":{"include_usage":true}}})",
                             R"({"stream_options":{"include_usage":"true"}})"}) {
      INFO(body);
      const auto f = inspect_request(body);
      CHECK(f.problem == request_problem::none);
      CHECK(f.has_stream_options);
      CHECK_FALSE(f.include_usage);
    }
  }
  SECTION("stream false and stream null both mean not streaming") {
    CHECK_FALSE(inspect_request(R"({"stream":false})").stream);
    const auto f = inspect_request(R"({"stream":null})");
    CHECK(f.problem == request_problem::none);
    CHECK_FALSE(f.stream);
  }
}

TEST_CASE("request_inspect: only top-level keys count", "[request_inspect]") {
  SECTION("a nested model is not the model") {
    const auto f = inspect_request(
        R"({"messages":[{"role":"user","content":"hi","model":5}],"metadata":{"model":"x","stream":"yes"}})");
    CHECK(f.problem == request_problem::none);
    CHECK_FALSE(f.has_model);
    CHECK_FALSE(f.stream);
  }
  SECTION("nested stream_options, user and max_tokens are ignored") {
    const auto f = inspect_request(
        R"({"model":"m","metadata":{"stream_options":{"include_usage":true},"user":"u","max_tokens":9}})");
    CHECK_FALSE(f.has_stream_options);
    CHECK(f.user.empty());
    CHECK_FALSE(f.max_tokens.has_value());
  }
  SECTION("the top-level model after a nested one") {
    const auto f = inspect_request(R"({"messages":[{"model":"inner"}],"model":"outer"})");
    CHECK(f.model == "outer");
  }
  SECTION("strings outside the prompt keys are not estimated") {
    const auto f = inspect_request(R"({"model":"a-very-long-model-name","metadata":{"note":"not prompt text"}})");
    CHECK(f.prompt_tokens_estimate == 0);
  }
}

TEST_CASE("request_inspect: prompt estimate covers the prompt-bearing keys", "[request_inspect]") {
  const auto f = inspect_request(
      R"({"system":"sys text","instructions":"do it","prompt":"complete this","input":["a","b"],)"
      R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],)"
      R"("messages":[{"role":"user","content":[{"type":"text","text":"日本語のテキスト"}]}]})");
  text_tally expected;
  for (const char* s : {"sys text", "do it", "complete this", "a", "b", "function", "get_weather", "object", "user",
                        "text", "日本語のテキスト"})
    expected.add(s);
  CHECK(f.prompt_tokens_estimate == expected.tokens());

  SECTION("token-id prompts count one token per id") {
    CHECK(inspect_request(R"({"prompt":[1212, 318, 257, 1332]})").prompt_tokens_estimate == 4);
    CHECK(inspect_request(R"({"input":[[1, 2], [3]]})").prompt_tokens_estimate == 3);
  }
}

TEST_CASE("request_inspect: the prompt tally can be left for later", "[request_inspect]") {
  for (const std::string& body :
       {R"({"model":"gpt-4.1","messages":[{"role":"user","content":"Hello there"}],"max_tokens":5,"user":"u"})"s,
        R"({"model":"m","prompt":[0, 1, 2],"stream":true,"stream_options":{"include_usage":false}})"s,
        R"({"model":"m","input":[[-0, 3]]})"s, R"({"model":7,"messages":[]})"s, R"({"model":"m")"s}) {
    INFO(body);
    const auto full = inspect_request(body);
    const auto quick = inspect_request(body, 128, false);
    CHECK(quick.problem == full.problem);
    CHECK(quick.problem_detail == full.problem_detail);
    CHECK(quick.model == full.model);
    CHECK(quick.stream == full.stream);
    CHECK(quick.include_usage == full.include_usage);
    CHECK(quick.user == full.user);
    CHECK(quick.max_tokens == full.max_tokens);
    if (full.problem == request_problem::none) {
      CHECK(full.prompt_estimated);
      // Either computed (the slow path always tallies) and then equal, or left for later.
      CHECK((!quick.prompt_estimated || quick.prompt_tokens_estimate == full.prompt_tokens_estimate));
    }
  }
  CHECK_FALSE(inspect_request(R"({"model":"m","messages":[{"role":"user","content":"hi"}]})", 128, false).prompt_estimated);
}

TEST_CASE("request_inspect: max tokens", "[request_inspect]") {
  CHECK(inspect_request(R"({"max_tokens":100})").max_tokens == 100);
  CHECK(inspect_request(R"({"max_output_tokens":300})").max_tokens == 300);
  CHECK(inspect_request(R"({"max_tokens":0})").max_tokens == 0);
  SECTION("max_completion_tokens wins, then max_tokens, then max_output_tokens") {
    CHECK(inspect_request(R"({"max_tokens":100,"max_completion_tokens":200,"max_output_tokens":300})").max_tokens ==
          200);
    CHECK(inspect_request(R"({"max_output_tokens":300,"max_tokens":100})").max_tokens == 100);
  }
  SECTION("negative, fractional, huge and non-numeric values are ignored") {
    for (const char* body : {R"({"max_tokens":-1})", R"({"max_tokens":10.5})", R"({"max_tokens":"10"})",
                             R"({"max_tokens":null})", R"({"max_tokens":18446744073709551615})"}) {
      INFO(body);
      const auto f = inspect_request(body);
      CHECK(f.problem == request_problem::none);
      CHECK_FALSE(f.max_tokens.has_value());
    }
  }
}

TEST_CASE("request_inspect: user must be a string to count", "[request_inspect]") {
  CHECK(inspect_request(R"({"user":"alice"})").user == "alice");
  CHECK(inspect_request(R"({"user":42})").user.empty());
  CHECK(inspect_request(R"({"user":{"id":"alice"}})").user.empty());
}

TEST_CASE("request_inspect: the user is user, else safety_identifier, else metadata.user_id, by both readers",
          "[request_inspect]") {
  // max_depth 1025 is past the fast reader's limit: nlohmann's SAX reader alone.
  for (const int depth : {128, 1025}) {
    INFO(depth);
    const auto user = [&](const char* body) { return inspect_request(body, depth).user; };
    CHECK(user(R"({"model":"gpt-5","safety_identifier":"sid-1"})") == "sid-1");
    CHECK(user(R"({"safety_identifier":"sid-1","user":"alice"})") == "alice");  // user first, wherever it is
    CHECK(user(R"({"user":"alice","metadata":{"user_id":"u-9"}})") == "alice");
    CHECK(user(R"({"model":"claude-sonnet-4-5","metadata":{"user_id":"u-9"},"max_tokens":5})") == "u-9");
    CHECK(user(R"({"metadata":{"user_id":"u-9"},"safety_identifier":"sid-1"})") == "sid-1");
    CHECK(user(R"({"metadata":{"tag":{"user_id":"deep"},"user_id":"u-9","x":[1]}})") == "u-9");
    // Not a string, nested deeper, or replaced by a later duplicate: none.
    CHECK(user(R"({"safety_identifier":7,"metadata":{"user_id":5}})").empty());
    CHECK(user(R"({"metadata":{"user_id":{"id":"u-9"}}})").empty());
    CHECK(user(R"({"metadata":{"tag":{"user_id":"deep"}}})").empty());
    CHECK(user(R"({"messages":[{"metadata":{"user_id":"x"}}]})").empty());
    CHECK(user(R"({"metadata":{"user_id":"u-9"},"metadata":{}})").empty());
    CHECK(user(R"({"metadata":{"user_id":"u-9"},"metadata":null})").empty());
    CHECK(user(R"({"safety_identifier":"sid-1","safety_identifier":null})").empty());
    CHECK(user(R"({"metadata":{"user_id":"a","user_id":"b"}})") == "b");
  }
}

TEST_CASE("request_inspect: model and stream types are checked", "[request_inspect]") {
  for (const char* body : {R"({"model":5})", R"({"model":null})", R"({"model":["gpt-4.1"]})",
                           R"({"model":{"id":"x"}})", R"({"model":true})"}) {
    INFO(body);
    const auto f = inspect_request(body);
    CHECK(f.problem == request_problem::model_not_string);
    CHECK(f.problem_detail == "'model' must be a string");
    CHECK_FALSE(f.has_model);
  }
  for (const char* body : {R"({"stream":"true"})", R"({"stream":1})", R"({"stream":{}})", R"({"stream":[true]})"}) {
    INFO(body);
    const auto f = inspect_request(body);
    CHECK(f.problem == request_problem::stream_not_bool);
    CHECK(f.problem_detail == "'stream' must be a boolean");
  }
}

TEST_CASE("request_inspect: the body must be one JSON object", "[request_inspect]") {
  for (const char* body : {"[]", "[{\"model\":\"m\"}]", "123", "\"text\"", "null", "true"}) {
    INFO(body);
    const auto f = inspect_request(body);
    CHECK(f.problem == request_problem::not_object);
    CHECK(f.problem_detail == "request body must be a JSON object");
  }
}

TEST_CASE("request_inspect: malformed JSON", "[request_inspect]") {
  SECTION("empty body") {
    const auto f = inspect_request("");
    CHECK(f.problem == request_problem::malformed_json);
    CHECK(f.problem_detail == "request body is empty");
  }
  SECTION("syntax errors and trailing garbage") {
    for (const char* body : {"   ", "{", R"({"a":1,})", R"({"a":1} x)", R"({} {})", R"({'a':1})", R"({"a":tru})",
                             "{\"a\":\"x\ny\"}", R"({"a":01})"}) {
      INFO(body);
      CHECK(problem_of(body) == request_problem::malformed_json);
    }
  }
  SECTION("the detail gives a position, never body text") {
    const auto f = inspect_request(R"({"model":"sk-secret-key" oops})");
    CHECK(f.problem == request_problem::malformed_json);
    CHECK(f.problem_detail == "request body is not valid JSON: syntax error at byte 25");
    CHECK(f.problem_detail.find("sk-secret") == std::string::npos);
    CHECK(inspect_request(R"({"model":"m")").problem_detail ==
          "request body is not valid JSON: unexpected end of input");
  }
  SECTION("fields read before the error are dropped") {
    const auto f = inspect_request(R"({"model":"gpt-4.1","stream":true,)");
    CHECK_FALSE(f.has_model);
    CHECK(f.model.empty());
    CHECK_FALSE(f.stream);
  }
}

TEST_CASE("request_inspect: nesting depth is limited", "[request_inspect]") {
  SECTION("128 levels pass, 129 do not") {
    CHECK(problem_of(nested(127)) == request_problem::none);
    const auto f = inspect_request(nested(128));
    CHECK(f.problem == request_problem::too_deep);
    CHECK(f.problem_detail == "request body nests deeper than 128 levels");
  }
  SECTION("objects count like arrays") {
    std::string deep = "{";
    for (int i = 0; i < 128; ++i) deep += R"("k":{)";
    deep += std::string(129, '}');
    CHECK(problem_of(deep) == request_problem::too_deep);
  }
  SECTION("a custom limit") {
    CHECK(inspect_request(nested(3), 4).problem == request_problem::none);
    CHECK(inspect_request(nested(4), 4).problem == request_problem::too_deep);
  }
  SECTION("an unclosed bomb stops at the limit, quickly") {
    const auto start = std::chrono::steady_clock::now();
    CHECK(problem_of(R"({"a":)" + std::string(100000, '[')) == request_problem::too_deep);
    CHECK(problem_of(std::string(1 << 20, '[')) == request_problem::too_deep);
    // A generous bound: the parse stops after ~130 bytes of each body.
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
  }
}

TEST_CASE("request_inspect: invalid UTF-8 is its own problem", "[request_inspect]") {
  SECTION("bad bytes in a string value, in a key, and outside strings") {
    for (const auto& body : {"{\"model\":\"gpt\xff\"}"s, "{\"mod\xc3\":\"m\"}"s, "{\"a\":\"\xc0\xaf\"}"s,
                             "{\"a\":\"\xe0\x80\xaf\"}"s, "{\"a\":\"\xed\xa0\x80\"}"s, "{\"a\":\"\xf4\x90\x80\x80\"}"s,
                             "{\"a\":\"\xe2\x82\"}"s, "{\"a\":\"\x80\"}"s, "{\"a\":1}\xff"s, "\xfe{}"s}) {
      INFO(body);
      const auto f = inspect_request(body);
      CHECK(f.problem == request_problem::invalid_utf8);
      CHECK(f.problem_detail == "request body is not valid UTF-8");
    }
  }
  SECTION("valid multi-byte text passes") {
    CHECK(problem_of("{\"messages\":[{\"content\":\"caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x98\x80\"}]}") ==
          request_problem::none);
    CHECK(problem_of(R"({"a":"\ud83d\ude00 \u00e9"})") == request_problem::none);
  }
  SECTION("a lone surrogate escape is rejected as not UTF-8-representable") {
    // Decision: "\ud800" is legal JSON grammar but names no character; nlohmann refuses it and
    // so do the upstream APIs, so the client gets a clear invalid_utf8 rather than a 502 later.
    for (const char* body : {R"({"a":"\ud800"})", R"({"a":"\udc00x"})", R"({"a":"\ud800\u0041"})"}) {
      INFO(body);
      const auto f = inspect_request(body);
      CHECK(f.problem == request_problem::invalid_utf8);
      CHECK_THAT(f.problem_detail, Catch::Contains("surrogate"));
    }
  }
}

namespace {

// Standard base64 (OpenSSL's encoder); with `line`, a line break after every `line` characters.
std::string base64(std::string_view bytes, std::size_t line = 0) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  out.resize(static_cast<std::size_t>(
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(bytes.data()),
                      static_cast<int>(bytes.size()))));
  if (line == 0) return out;
  std::string lines;
  for (std::size_t at = 0; at < out.size(); at += line) lines.append(out, at, line).append(at + line < out.size() ? "\n" : "");
  return lines;
}

// A file of n bytes that starts with magic and continues with noise.
std::string file_bytes(std::string_view magic, std::size_t n) {
  std::string f(magic);
  while (f.size() < n) f += static_cast<char>((f.size() * 7919 + (f.size() >> 5)) & 0xff);
  f.resize(n);
  return f;
}

const std::string png = file_bytes("\x89PNG\r\n\x1a\n\0\0\0\rIHDR"s, 300'000);
const std::string pdf = file_bytes("%PDF-1.7\n", 160'000);
const std::string wav = file_bytes("RIFF\x24\x10\0\0WAVEfmt "s, 320'000);

}  // namespace

TEST_CASE("request_inspect: images, PDFs and audio sent as base64 are not counted as text", "[request_inspect]") {
  SECTION("the rates: an image of unknown size 2,500, PDF by size, audio by size, base64 text as its text") {
    CHECK(binary_payload_tokens("data:image/png;base64," + base64(png)) == 2500);
    CHECK(binary_payload_tokens("data:image/jpeg;base64,/9j/4AAQ") == 2500);  // small images too
    CHECK(binary_payload_tokens("DATA:Image/WebP;base64," + base64(png)) == 2500);  // the mime decides
    CHECK(binary_payload_tokens("data:application/pdf;base64," + base64(pdf)) == 10'000);  // 160,000 / 16
    CHECK(binary_payload_tokens("data:audio/wav;base64," + base64(wav)) == 200);         // 320,000 / 1,600
    CHECK(binary_payload_tokens("data:text/plain;base64," + base64(std::string(4000, 'x'))) == 1000);
    CHECK(binary_payload_tokens("data:;base64," + base64(pdf)) == 10'000);  // no mime: the magic bytes
    CHECK(binary_payload_tokens("data:application/octet-stream;base64," + base64(std::string(16'000, 'z'))) == 10);
  }
  SECTION("bare base64 (Anthropic's source.data, input_audio.data) by its magic bytes") {
    CHECK(binary_payload_tokens(base64(png)) == 2500);
    CHECK(binary_payload_tokens(base64(file_bytes("\xFF\xD8\xFF\xE0", 5000))) == 2500);
    CHECK(binary_payload_tokens(base64(file_bytes("GIF89a\x0a\0\x0a\0"s, 5000))) == 255);  // 10 x 10
    CHECK(binary_payload_tokens(base64(file_bytes("RIFF\0\0\0\0WEBPVP8 "s, 5000))) == 2500);
    CHECK(binary_payload_tokens(base64(pdf)) == 10'000);
    const std::int64_t lines = binary_payload_tokens(base64(pdf, 76));  // MIME-style, a line break every 76
    CHECK(lines >= 10'000);
    CHECK(lines <= 10'200);  // the line breaks count as data: 1.3 % more
    CHECK(binary_payload_tokens(base64(wav)) == 200);
    CHECK(binary_payload_tokens(base64(file_bytes("ID3\x04", 16'000))) == 10);
  }
  SECTION("an image whose header gives its size: the most a common model bills for that size") {
    auto png_of = [](std::uint32_t w, std::uint32_t h) {
      std::string b = "\x89PNG\r\n\x1a\n\0\0\0\rIHDR"s;
      for (const std::uint32_t v : {w, h})
        for (int shift = 24; shift >= 0; shift -= 8) b += static_cast<char>((v >> shift) & 0xff);
      return file_bytes(b, 20'000);
    };
    // 200 x 200: one GPT-4o tile (85 + 170); 1024 x 1024: 1,024 GPT-4.1-mini patches x 1.62;
    // 4000 x 3000: its 1,536 patches at most, x 1.62 (Anthropic: 1.15 MP / 750 = 1,533).
    CHECK(binary_payload_tokens("data:image/png;base64," + base64(png_of(200, 200))) == 255);
    CHECK(binary_payload_tokens(base64(png_of(1024, 1024))) == 1659);
    CHECK(binary_payload_tokens(base64(png_of(4000, 3000))) == 2489);
    CHECK(binary_payload_tokens(base64(png_of(1, 1))) == 255);
    CHECK(binary_payload_tokens(base64(png_of(0, 500))) == 2500);        // implausible: unknown size
    CHECK(binary_payload_tokens(base64(png_of(500'000, 500))) == 2500);
    // A JPEG from a camera: its size comes after a 30 KB EXIF block. 800 x 600: 475 patches.
    std::string jpeg = "\xFF\xD8\xFF\xE0\x00\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0"s;
    jpeg += "\xFF\xE1\x75\x30" "Exif\0\0"s + std::string(30'000 - 8, 'e');
    jpeg += "\xFF\xC0\x00\x11\x08\x02\x58\x03\x20\x03"s;
    jpeg = file_bytes(jpeg, 60'000);
    CHECK(binary_payload_tokens("data:image/jpeg;base64," + base64(jpeg)) == 770);
    CHECK(binary_payload_tokens(base64(jpeg, 76)) == 770);  // MIME line breaks are skipped
    CHECK(binary_payload_tokens(base64(jpeg.substr(0, 20'000))) == 2500);  // cut before its size
    // WebP (extended): 300 x 150 is one tile.
    std::string webp = "RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0"s;
    webp += "\x2b\x01\0\x95\0\0"s;  // width - 1 = 299, height - 1 = 149 (24-bit little-endian)
    CHECK(binary_payload_tokens(base64(file_bytes(webp, 5000))) == 255);
  }
  SECTION("text stays text") {
    CHECK(binary_payload_tokens("Describe this picture in two sentences, please.") == -1);
    CHECK(binary_payload_tokens(std::string(5000, 'a') + " and a space") == -1);
    CHECK(binary_payload_tokens(base64(png).substr(0, 200)) == -1);  // short: text
    std::string dna;
    for (int i = 0; i < 3000; ++i) dna += "ACGT"[(i * 7) % 4];
    CHECK(binary_payload_tokens(dna) == -1);  // letters only, but no known file: text
    CHECK(binary_payload_tokens(std::string(300, 'f') + std::string(300, '0')) == -1);  // a hex run
    CHECK(binary_payload_tokens("data:text/plain,hello%20world") == -1);  // not base64
    CHECK(binary_payload_tokens("https://example.com/cat.png") == -1);
  }
  SECTION("in a body: the OpenAI and Anthropic image and file shapes") {
    const std::string openai =
        R"({"model":"gpt-4.1","messages":[{"role":"user","content":[{"type":"text","text":"What is in this image?"},)"
        R"({"type":"image_url","image_url":{"url":"data:image/png;base64,)" + base64(png) + R"("}},)"
        R"({"type":"file","file":{"filename":"a.pdf","file_data":"data:application/pdf;base64,)" + base64(pdf) + R"("}},)"
        R"({"type":"input_audio","input_audio":{"data":")" + base64(wav) + R"(","format":"wav"}}]}]})";
    text_tally text;
    for (const char* s : {"user", "text", "What is in this image?", "image_url", "file", "a.pdf", "input_audio", "wav"})
      text.add(s);
    CHECK(inspect_request(openai).prompt_tokens_estimate == text.tokens() + 2500 + 10'000 + 200);
    const std::string anthropic =
        R"({"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":[)"
        R"({"type":"image","source":{"type":"base64","media_type":"image/png","data":")" + base64(png) + R"("}},)"
        R"({"type":"document","source":{"type":"base64","media_type":"application/pdf","data":")" + base64(pdf) + R"("}},)"
        R"({"type":"text","text":"Compare them."}]}]})";
    text_tally text2;
    for (const char* s : {"user", "image", "base64", "image/png", "document", "base64", "application/pdf", "text",
                          "Compare them."})
      text2.add(s);
    CHECK(inspect_request(anthropic).prompt_tokens_estimate == text2.tokens() + 2500 + 10'000);
  }
}

TEST_CASE("request_inspect: a body over 1 MiB is read by the fast path with the same answers", "[request_inspect]") {
  // Bodies above the per-thread parser's size get a parser of their own (nlohmann's SAX reader
  // took ~13 ns a byte: half a second of the I/O thread for 40 MB).
  const std::string image = base64(file_bytes("\x89PNG\r\n\x1a\n", 3'000'000));
  const std::string body = R"({"model":"gpt-4.1","stream":true,"user":"u-7","max_tokens":9,"messages":[{"role":"user","content":[)"
                           R"({"type":"image_url","image_url":{"url":"data:image/png;base64,)" + image + R"("}}]}]})";
  REQUIRE(body.size() > 4'000'000);
  const auto t0 = std::chrono::steady_clock::now();
  const auto f = inspect_request(body);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  INFO("took " << ms << " ms");
  CHECK(f.problem == request_problem::none);
  CHECK(f.model == "gpt-4.1");
  CHECK(f.stream);
  CHECK(f.user == "u-7");
  CHECK(f.max_tokens == 9);
  text_tally text;
  for (const char* s : {"user", "image_url"}) text.add(s);
  CHECK(f.prompt_tokens_estimate == text.tokens() + 2500);
  SECTION("its problems are still named exactly (the slow path takes a body the fast one refuses)") {
    CHECK(inspect_request(body.substr(0, body.size() - 1)).problem_detail ==
          "request body is not valid JSON: unexpected end of input");
    std::string bad = body;
    bad.replace(bad.find(R"("gpt-4.1")"), 9, "41       ");
    CHECK(inspect_request(bad).problem == request_problem::model_not_string);
    std::string broken = body;
    broken[broken.size() / 2] = '\xff';
    CHECK(inspect_request(broken).problem == request_problem::invalid_utf8);
  }
}

TEST_CASE("add_include_usage: splices the member in byte-exactly", "[request_inspect]") {
  SECTION("after the opening brace, everything else unchanged") {
    const std::string body = R"({"model":"gpt-4.1", "stream":true,"temperature":1.0e0,"messages":[{"role":"user","content":"hi"}]})";
    const auto out = add_include_usage(body, inspect_request(body));
    CHECK(out == R"({"stream_options":{"include_usage":true},)" + body.substr(1));
    const auto doc = nlohmann::ordered_json::parse(out);
    CHECK(doc["stream_options"]["include_usage"] == true);
    std::vector<std::string> keys;
    for (const auto& [k, v] : doc.items()) keys.push_back(k);
    CHECK(keys == std::vector<std::string>{"stream_options", "model", "stream", "temperature", "messages"});
    CHECK(inspect_request(out).include_usage);
  }
  SECTION("leading whitespace is kept") {
    const std::string body = " \r\n\t{ \"model\": \"m\" }\n";
    CHECK(add_include_usage(body, inspect_request(body)) ==
          " \r\n\t{\"stream_options\":{\"include_usage\":true}, \"model\": \"m\" }\n");
  }
  SECTION("an empty object gets no trailing comma") {
    CHECK(add_include_usage("{}", inspect_request("{}")) == R"({"stream_options":{"include_usage":true}})");
    CHECK(add_include_usage("{ \n}", inspect_request("{ \n}")) == "{\"stream_options\":{\"include_usage\":true} \n}");
  }
}

TEST_CASE("add_include_usage: an existing stream_options is rewritten", "[request_inspect]") {
  SECTION("include_usage false becomes true, member order kept") {
    const std::string body = R"({"model":"m","stream_options":{"include_usage":false},"stream":true})";
    CHECK(add_include_usage(body, inspect_request(body)) ==
          R"({"model":"m","stream_options":{"include_usage":true},"stream":true})");
  }
  SECTION("other options are kept") {
    const std::string body = R"({"stream_options":{"other":1},"model":"m"})";
    CHECK(add_include_usage(body, inspect_request(body)) ==
          R"({"stream_options":{"other":1,"include_usage":true},"model":"m"})");
  }
  SECTION("a non-object stream_options is replaced") {
    for (const char* body : {R"({"model":"m","stream_options":null})", R"({"model":"m","stream_options":[1]})"}) {
      INFO(body);
      CHECK(add_include_usage(body, inspect_request(body)) == R"({"model":"m","stream_options":{"include_usage":true}})");
    }
  }
  SECTION("include_usage already true: untouched") {
    const std::string body = R"({ "stream_options" : { "include_usage" : true } })";
    CHECK(add_include_usage(body, inspect_request(body)) == body);
  }
}

TEST_CASE("add_include_usage: never breaks a body it cannot handle", "[request_inspect]") {
  SECTION("bodies with a problem come back unchanged") {
    for (const char* body : {"[1]", "{", "", R"({"model":5})"}) {
      INFO(body);
      CHECK(add_include_usage(body, inspect_request(body)) == body);
    }
  }
  SECTION("facts that do not match the body") {
    request_facts facts;
    facts.has_stream_options = true;
    CHECK(add_include_usage("not json", facts) == "not json");
  }
}

namespace {

// As the proxy calls it: with the facts of the same body.
std::string renamed(std::string_view body, std::string_view model) {
  return replace_model(body, model, inspect_request(body));
}

}  // namespace

TEST_CASE("the rewrites edit one value in place and keep every other byte", "[request_inspect]") {
  // Numbers, escapes and spacing the DOM would have respelled ("1.0e2" as 100.0, "\u00e9" as é).
  const std::string rest = R"("temperature":1.0e2,"n":-0,"messages":[{"role":"user","content":"caf\u00e9 \"quoted\" \\ \/ }{]["}])";
  SECTION("replace_model") {
    CHECK(renamed(R"({"model":"gpt-4.1", )" + rest + "}", "gpt-4.1-mini") ==
          R"({"model":"gpt-4.1-mini", )" + rest + "}");
    CHECK(renamed(R"({ )" + rest + R"( , "model" :  "a"  })", "b") == R"({ )" + rest + R"( , "model" :  "b"  })");
    CHECK(renamed("\xEF\xBB\xBF" R"( {"model":"a"} )", "b") == "\xEF\xBB\xBF" R"( {"model":"b"} )");
    CHECK(renamed(R"({"model":"a","x":1,"model":"c"})", "b") == R"({"model":"b","x":1,"model":"b"})");  // each one
    CHECK(renamed(R"({"x":{"model":"inner"}})", "b") == R"({"model":"b","x":{"model":"inner"}})");
    CHECK(renamed(R"({})", "b") == R"({"model":"b"})");
    CHECK(renamed(R"({"model":"a"})", "quote\"d") == R"({"model":"quote\"d"})");
    SECTION("what the walk does not take goes through the DOM, as before") {
      CHECK(renamed(R"({"mod\u0065l":"a"})", "b") == R"({"model":"b"})");
      CHECK(renamed(R"([1,2])", "b") == R"([1,2])");
      CHECK(renamed(R"({"model":"a")", "b") == R"({"model":"a")");
      CHECK(renamed(R"({"model":"a"} x)", "b") == R"({"model":"a"} x)");
    }
  }
  SECTION("add_include_usage with a stream_options the client sent") {
    const std::string body = R"({"model":"m","stream":true,"stream_options":{"x":[1,{"include_usage":0}]},)" + rest + "}";
    CHECK(add_include_usage(body, inspect_request(body)) ==
          R"({"model":"m","stream":true,"stream_options":{"x":[1,{"include_usage":0}],"include_usage":true},)" + rest + "}");
    const std::string twice = R"({"stream_options":{"include_usage":false, "include_usage":null},"stream":true})";
    CHECK(add_include_usage(twice, inspect_request(twice)) ==
          R"({"stream_options":{"include_usage":true, "include_usage":true},"stream":true})");
    const std::string empty = R"({"stream_options":{ },"stream":true})";
    CHECK(add_include_usage(empty, inspect_request(empty)) == R"({"stream_options":{ "include_usage":true},"stream":true})");
  }
  SECTION("a 40 MB body of inline images is rewritten in milliseconds, not the DOM's ~0.7 s") {
    const std::string big = R"({"model":"gpt-4.1","stream":true,"stream_options":{},"messages":[{"role":"user","content":[)"
                            R"({"type":"image_url","image_url":{"url":"data:image/png;base64,)" +
                            std::string(40'000'000, 'Q') + R"("}}]}]})";
    const auto t0 = std::chrono::steady_clock::now();
    const std::string with_model = renamed(big, "gpt-4.1-mini");
    const std::string with_usage = add_include_usage(big, inspect_request(big));
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    INFO("took " << ms << " ms");
    CHECK(with_model.size() == big.size() + 5);
    CHECK(with_model.compare(0, 24, R"({"model":"gpt-4.1-mini",)") == 0);
    CHECK(with_model.compare(24, std::string::npos, big, 19) == 0);
    CHECK(inspect_request(with_usage).include_usage);
    CHECK(with_usage.size() == big.size() + 20);
  }
}

TEST_CASE("inspect_form: model and stream of a multipart body, before or after a large file", "[inspect][form]") {
  const std::string ct = "multipart/form-data; boundary=----formdata-undici-0123";
  auto part = [](std::string_view name, std::string_view value, bool file = false) {
    std::string p = "------formdata-undici-0123\r\nContent-Disposition: form-data; name=\"" + std::string(name) + "\"";
    if (file) p += "; filename=\"a;b.wav\"\r\nContent-Type: audio/wav";
    return p + "\r\n\r\n" + std::string(value) + "\r\n";
  };
  const std::string end = "------formdata-undici-0123--\r\n";
  SECTION("fields first (the Python SDK)") {
    const auto f = inspect_form(part("model", "gpt-4o-transcribe") + part("stream", "true") +
                                    part("file", std::string(3'000'000, 'x'), true) + end, ct);
    CHECK(f.has_model);
    CHECK(f.model == "gpt-4o-transcribe");
    CHECK(f.stream);
  }
  SECTION("a large file first (the Node SDK: object key order); the fields are at the end") {
    std::string file(3'000'000, 'x');
    file[1'000'000] = '\r';  // a stray CRLF-- inside the file is not a boundary
    const auto f = inspect_form(part("file", file, true) + part("model", "whisper-1") + part("response_format", "json") + end, ct);
    CHECK(f.model == "whisper-1");
    CHECK_FALSE(f.stream);
  }
  SECTION("an image edit's or a video's size, quality and seconds (what their price depends on)") {
    const auto f = inspect_form(part("image", std::string(400'000, 'p'), true) + part("model", "dall-e-2") +
                                    part("size", "512x512") + part("n", "3") + end, ct);
    CHECK(f.model == "dall-e-2");
    CHECK(f.size == "512x512");
    CHECK(f.quality.empty());
    const auto v = inspect_form(part("prompt", "a gate") + part("seconds", "8") + part("size", "1280x720") +
                                    part("quality", "hd") + part("input_reference", std::string(1000, 'j'), true) + end, ct);
    CHECK_FALSE(v.has_model);
    CHECK(v.seconds == "8");
    CHECK(v.size == "1280x720");
    CHECK(v.quality == "hd");
    CHECK(inspect_form(part("size", std::string(65, '1')) + end, ct).size.empty());  // not a size
  }
  SECTION("quoted boundary, unquoted name, LF-only bodies and other types give what they can") {
    const auto f = inspect_form("--b\r\nContent-Disposition: form-data; name=model\r\n\r\ngpt-image-1\r\n--b--\r\n",
                                "multipart/form-data; boundary=\"b\"");
    CHECK(f.model == "gpt-image-1");
    CHECK_FALSE(inspect_form("--b\nContent-Disposition: form-data; name=model\n\nx\n--b--", "multipart/form-data; boundary=b").has_model);
    CHECK_FALSE(inspect_form(part("model", "x") + end, "application/json").has_model);
    CHECK_FALSE(inspect_form(part("model", "x") + end, "multipart/form-data").has_model);
    CHECK_FALSE(inspect_form("", ct).has_model);
    CHECK_FALSE(inspect_form("------formdata-undici-0123\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nunterminated", ct).has_model);
  }
  SECTION("the model value's bytes, where a rewrite replaces them") {
    const std::string body = part("file", std::string(300'000, 'x'), true) + part("model", "whisper-1") + end;
    const auto f = inspect_form(body, ct);
    REQUIRE(f.has_model);
    CHECK(body.substr(f.model_at, f.model_len) == "whisper-1");
  }
}

TEST_CASE("inspect_form_ends: a stored form's fields from its first and last bytes", "[inspect][form]") {
  const std::string ct = "multipart/form-data; boundary=tg";
  auto part = [](std::string_view name, std::string_view value, bool file = false) {
    return "--tg\r\nContent-Disposition: form-data; name=\"" + std::string(name) + "\"" +
           (file ? "; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg" : "") + "\r\n\r\n" + std::string(value) + "\r\n";
  };
  const std::string end = "--tg--\r\n";
  const std::size_t w = 64 * 1024;
  std::string file(10'000'000, 'a');
  for (std::size_t i = 0; i < file.size(); ++i) file[i] = static_cast<char>((i * 7919) >> 3);
  auto ends = [&](const std::string& body) {
    return inspect_form_ends(std::string_view(body).substr(0, w), std::string_view(body).substr(body.size() - w), body.size(), ct);
  };
  SECTION("fields before the file (the Python SDK) and after it (the Node SDK), offsets in the whole body") {
    for (const std::string& body : {part("model", "whisper-1") + part("language", "en") + part("file", file, true) + end,
                                    part("file", file, true) + part("model", "whisper-1") + part("size", "1024x1024") + end}) {
      const auto f = ends(body);
      REQUIRE(f.has_model);
      CHECK(f.model == "whisper-1");
      CHECK(body.substr(f.model_at, f.model_len) == "whisper-1");
    }
    CHECK(ends(part("file", file, true) + part("model", "gpt-image-1") + part("size", "1024x1024") + end).size == "1024x1024");
  }
  SECTION("a value cut by the seam is not read; a body within both windows is read whole") {
    // The model's value starts 3 bytes before the head window ends.
    const std::string model_head = "--tg\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n";
    std::string body = part("prompt", std::string(w - 3 - model_head.size() - part("prompt", "").size(), 'p')) + model_head;
    REQUIRE(body.size() == w - 3);
    body += "whisper-1\r\n" + part("file", file, true) + end;
    CHECK_FALSE(ends(body).has_model);
    const std::string small = part("model", "whisper-1") + part("file", std::string(100, 'f'), true) + end;
    CHECK(inspect_form_ends(small, "", small.size(), ct).model == "whisper-1");
  }
}

TEST_CASE("inspect_request: n, the completions per call a reservation multiplies", "[inspect]") {
  CHECK(inspect_request(R"({"model":"m","messages":[]})").choices == 1);
  CHECK(inspect_request(R"({"model":"m","n":8,"messages":[]})").choices == 8);
  CHECK(inspect_request(R"({"model":"m","n":0})").choices == 1);
  CHECK(inspect_request(R"({"model":"m","n":100000})").choices == 128);
  CHECK(inspect_request(R"({"model":"m","n":"3"})").choices == 1);
  CHECK(inspect_request(R"({"model":"m","extra":{"n":5}})").choices == 1);  // top level only
  // The slow path (which a 0 among the integers read sends the body to) reads it too.
  CHECK(inspect_request(R"({"model":"m","n":4,"max_tokens":0})").choices == 4);
}

TEST_CASE("request_inspect: the prices a call asks for (fast mode, priority, US-only) are read by both readers",
          "[request_inspect]") {
  // max_depth 1025 is past the fast reader's limit: nlohmann's SAX reader alone.
  for (const int depth : {128, 1025}) {
    INFO(depth);
    const auto a = inspect_request(
        R"({"model":"claude-opus-4-6","speed":"fast","inference_geo":"us","messages":[{"role":"user","content":"hi"}],"max_tokens":9})",
        depth);
    CHECK(a.fast);
    CHECK(a.geo_us);
    CHECK_FALSE(a.priority);
    CHECK(inspect_request(R"({"model":"gpt-5","service_tier":"priority"})", depth).priority);
    CHECK(inspect_request(R"({"model":"gpt-5","service_tier":"fast"})", depth).priority);  // OpenAI's alias
    const auto b = inspect_request(R"({"model":"gpt-5","service_tier":"flex","speed":"standard","inference_geo":"global"})", depth);
    CHECK_FALSE((b.fast || b.priority || b.geo_us));
    // Only top-level members count; a later duplicate wins, a non-string reads as not asked.
    CHECK_FALSE(inspect_request(R"({"metadata":{"speed":"fast"}})", depth).fast);
    CHECK_FALSE(inspect_request(R"({"speed":"fast","speed":null})", depth).fast);
    CHECK(inspect_request(R"({"speed":1,"speed":"fast"})", depth).fast);
  }
}

TEST_CASE("request_inspect: prompt caching asked for (cache_control and its ttl) is read by both readers",
          "[request_inspect]") {
  for (const int depth : {128, 1025}) {
    INFO(depth);
    CHECK(inspect_request(R"({"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]})", depth)
              .cache_control == 0);
    // On a content block, a system block or a tool: 5 minutes unless a ttl says "1h".
    CHECK(inspect_request(
              R"({"model":"c","messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}]})",
              depth)
              .cache_control == 1);
    CHECK(inspect_request(R"({"model":"c","system":[{"type":"text","text":"s","cache_control":{"type":"ephemeral","ttl":"5m"}}]})",
                          depth)
              .cache_control == 1);
    CHECK(inspect_request(
              R"({"model":"c","tools":[{"name":"t","input_schema":{},"cache_control":{"type":"ephemeral","ttl":"1h"}}],"messages":[]})",
              depth)
              .cache_control == 2);
    // Top level: Anthropic's automatic caching.
    CHECK(inspect_request(R"({"model":"c","cache_control":{"type":"ephemeral"},"messages":[]})", depth).cache_control == 1);
    CHECK(inspect_request(R"({"model":"c","cache_control":{"type":"ephemeral","ttl":"1h"},"messages":[]})", depth)
              .cache_control == 2);
    // Text that mentions it is not a request for it.
    CHECK(inspect_request(R"({"model":"c","messages":[{"role":"user","content":"cache_control ttl 1h"}]})", depth)
              .cache_control == 0);
    // Only a cache_control's own ttl counts; a "ttl" elsewhere (a tool's schema) is not it.
    CHECK(inspect_request(
              R"({"model":"c","tools":[{"name":"t","input_schema":{"ttl":"1h"},"cache_control":{"type":"ephemeral"}}]})", depth)
              .cache_control == 1);
    CHECK(inspect_request(
              R"({"model":"c","tools":[{"cache_control":{"type":"ephemeral","x":{"ttl":"1h"}},"ttl":"1h"}]})", depth)
              .cache_control == 1);
    CHECK(inspect_request(R"({"model":"c","metadata":{"cache_control":{"ttl":"1h"}}})", depth).cache_control == 0);
  }
}

TEST_CASE("request_inspect: Anthropic's server-side fallbacks are read by both readers", "[request_inspect]") {
  using hop = tollgate::request_facts::fallback_hop;
  for (const int depth : {128, 1025}) {
    INFO(depth);
    const auto a = inspect_request(
        R"({"model":"claude-fable-5","max_tokens":1000,"speed":"fast","fallbacks":[{"model":"claude-opus-4-8","max_tokens":4000,)"
        R"("thinking":{"type":"adaptive","model":"x"}},{"model":"claude-sonnet-4-6","speed":null},{"max_tokens":5},)"
        R"("claude-haiku-4-5",{"model":"claude-opus-4-6","speed":"fast","max_tokens":-1}],"messages":[]})",
        depth);
    REQUIRE(a.fallbacks.size() == 3);  // an entry without a model (or not an object) is skipped
    CHECK(a.fallbacks[0] == hop{"claude-opus-4-8", 4000, std::nullopt});
    CHECK(a.fallbacks[1] == hop{"claude-sonnet-4-6", std::nullopt, false});
    CHECK(a.fallbacks[2] == hop{"claude-opus-4-6", std::nullopt, true});
    CHECK_FALSE(a.default_fallbacks);
    const auto d = inspect_request(R"({"model":"claude-fable-5","fallbacks":"default"})", depth);
    CHECK(d.default_fallbacks);
    CHECK(d.fallbacks.empty());
    // A later duplicate replaces the earlier one; a nested "fallbacks" is not it.
    const auto e = inspect_request(R"({"fallbacks":"default","fallbacks":[{"model":"m"}],"metadata":{"fallbacks":"default"}})", depth);
    CHECK_FALSE(e.default_fallbacks);
    REQUIRE(e.fallbacks.size() == 1);
    CHECK(e.fallbacks[0].model == "m");
    std::string many = R"({"fallbacks":[)";
    for (int i = 0; i < 12; ++i) many += std::string(i ? "," : "") + R"({"model":"m)" + std::to_string(i) + "\"}";
    CHECK(inspect_request(many + "]}", depth).fallbacks.size() == 8);
    CHECK(inspect_request(R"({"model":"claude-opus-4-8","messages":[]})", depth).fallbacks.empty());
  }
}
