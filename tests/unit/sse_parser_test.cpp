// Unit tests of the incremental SSE framer (core/sse_parser.hpp): framing rules of the WHATWG
// spec, byte-exact raw events, and identical results for every way the bytes can be split.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "core/sse_parser.hpp"

using tollgate::sse_event;
using tollgate::sse_parser;

namespace {

struct owned_event {
  std::string raw, event, data;
  bool has_data = false;
  bool operator==(const owned_event&) const = default;
};

std::ostream& operator<<(std::ostream& os, const owned_event& e) {
  return os << "{raw=" << Catch::Detail::stringify(e.raw) << " event=" << e.event
            << " data=" << Catch::Detail::stringify(e.data) << " has_data=" << e.has_data << "}";
}

owned_event own(const sse_event& e) {
  return {std::string(e.raw), std::string(e.event), std::string(e.data), e.has_data};
}

void drain(sse_parser& p, std::vector<owned_event>& out) {
  sse_event ev;
  while (p.next(ev)) out.push_back(own(ev));
}

// Feeds `pieces` in order, then ends the stream with finish().
std::vector<owned_event> parse_pieces(const std::vector<std::string_view>& pieces) {
  sse_parser p;
  std::vector<owned_event> out;
  for (auto piece : pieces) {
    p.append(piece);
    drain(p, out);
  }
  sse_event ev;
  while (p.finish(ev)) out.push_back(own(ev));
  return out;
}

std::vector<owned_event> parse_all(std::string_view s) { return parse_pieces({s}); }

// What a client acts on: the events with a field, without their raw bytes. A split right after a
// blank line's CR ends that event at once (CRLF or CR alone?) and the LF that may follow is an
// empty event of its own; the bytes and the events a client sees are the same.
std::vector<owned_event> dispatched(std::vector<owned_event> events) {
  std::vector<owned_event> out;
  for (auto& e : events) {
    if (!e.has_data && e.event.empty()) continue;
    e.raw.clear();
    out.push_back(std::move(e));
  }
  return out;
}

std::string concat_raw(const std::vector<owned_event>& events) {
  std::string s;
  for (const auto& e : events) s += e.raw;
  return s;
}

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  for (std::size_t i = s.find(from); i != std::string::npos; i = s.find(from, i + to.size())) {
    s.replace(i, from.size(), to);
  }
  return s;
}

// A realistic OpenAI chat stream with a keep-alive, a typed event, multi-line data, UTF-8 text,
// an error-shaped chunk, the usage chunk and [DONE].
const std::string openai_stream =
    ": OPENROUTER PROCESSING\n\n"
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\","
    "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-9x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"H\xC3\xA9llo \xE4\xBD\xA0\"}}],"
    "\"usage\":null}\n\n"
    "event: message_delta\n"
    "id: 7\n"
    "retry: 1000\n"
    "data: {\"type\":\"message_delta\",\n"
    "data:\"usage\":{\"output_tokens\":15}}\n\n"
    ": ping\n"
    "data: {\"error\":{\"message\":\"x\"}}\n\n"
    "data: {\"id\":\"chatcmpl-9x\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n"
    "data: [DONE]\n\n";

}  // namespace

TEST_CASE("sse_parser: splits a stream into events with their exact raw bytes", "[sse]") {
  const auto events = parse_all(openai_stream);
  REQUIRE(events.size() == 7);
  CHECK(events[0] == owned_event{": OPENROUTER PROCESSING\n\n", "", "", false});
  CHECK(events[2].data == "{\"id\":\"chatcmpl-9x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
                          "\"H\xC3\xA9llo \xE4\xBD\xA0\"}}],\"usage\":null}");
  CHECK(events[3].event == "message_delta");
  CHECK(events[3].data == "{\"type\":\"message_delta\",\n\"usage\":{\"output_tokens\":15}}");
  CHECK(events[4].data == "{\"error\":{\"message\":\"x\"}}");
  CHECK(events[4].raw == ": ping\ndata: {\"error\":{\"message\":\"x\"}}\n\n");
  CHECK(events[6] == owned_event{"data: [DONE]\n\n", "", "[DONE]", true});
  CHECK(concat_raw(events) == openai_stream);
}

TEST_CASE("sse_parser: every split of the input gives the same events", "[sse]") {
  std::string input = openai_stream;
  SECTION("LF") {}
  SECTION("CRLF") { input = replace_all(input, "\n", "\r\n"); }
  SECTION("CR only") { input = replace_all(input, "\n", "\r"); }
  SECTION("mixed LF, CRLF and CR") {
    std::string mixed;
    int line = 0;
    for (char c : input) {
      if (c != '\n') {
        mixed += c;
        continue;
      }
      static constexpr const char* endings[] = {"\n", "\r", "\r\n"};  // CR never before LF
      mixed += endings[line++ % 3];
    }
    input = mixed;
  }
  SECTION("LF, then CR from the fourth event on (the first CR arrives in a later read)") {
    std::size_t at = 0;
    for (int i = 0; i < 3; ++i) at = input.find("\n\n", at) + 2;
    input = input.substr(0, at) + replace_all(input.substr(at), "\n", "\r");
  }
  SECTION("leading BOM") { input = "\xEF\xBB\xBF" + input; }

  const auto whole = parse_all(input);
  REQUIRE(whole.size() == 7);
  REQUIRE(concat_raw(whole) == input);
  CHECK(whole[6].data == "[DONE]");

  const std::string_view in(input);
  for (std::size_t cut = 0; cut <= in.size(); ++cut) {
    INFO("split at byte " << cut);
    const auto split = parse_pieces({in.substr(0, cut), in.substr(cut)});
    REQUIRE(dispatched(split) == dispatched(whole));
    REQUIRE(concat_raw(split) == input);
    if (input.find('\r') == std::string::npos) REQUIRE(split == whole);  // LF only: the very same events
  }
  std::vector<std::string_view> bytes;
  for (std::size_t i = 0; i < in.size(); ++i) bytes.push_back(in.substr(i, 1));
  const auto one_by_one = parse_pieces(bytes);
  CHECK(dispatched(one_by_one) == dispatched(whole));
  CHECK(concat_raw(one_by_one) == input);
}

TEST_CASE("sse_parser: data strips exactly one leading space", "[sse]") {
  SECTION("no space") { CHECK(parse_all("data:{\"a\":1}\n\n").at(0).data == "{\"a\":1}"); }
  SECTION("one space") { CHECK(parse_all("data: {\"a\":1}\n\n").at(0).data == "{\"a\":1}"); }
  SECTION("two spaces keep one") { CHECK(parse_all("data:  x\n\n").at(0).data == " x"); }
  SECTION("field without colon is a data line with an empty value") {
    const auto events = parse_all("data\n\n");
    CHECK(events.at(0).has_data);
    CHECK(events.at(0).data.empty());
  }
  SECTION("empty data value") {
    const auto events = parse_all("data:\n\n");
    CHECK(events.at(0).has_data);
    CHECK(events.at(0).data.empty());
  }
}

TEST_CASE("sse_parser: several data lines are joined with LF", "[sse]") {
  const auto events = parse_all("data: a\ndata:b\ndata\ndata:  c\n\n");
  REQUIRE(events.size() == 1);
  CHECK(events[0].data == "a\nb\n\n c");
}

TEST_CASE("sse_parser: a comment-only event is emitted without data", "[sse]") {
  const auto events = parse_all(": keep-alive\n\n:\r\n\r\n");
  REQUIRE(events.size() == 2);
  CHECK(events[0] == owned_event{": keep-alive\n\n", "", "", false});
  CHECK(events[1] == owned_event{":\r\n\r\n", "", "", false});
}

TEST_CASE("sse_parser: the event field is read and unknown fields are ignored", "[sse]") {
  const auto events =
      parse_all("event: ping\nfoo: bar\nid: 3\ndata: {\"type\": \"ping\"}\n\nevent:response.completed\ndata: {}\n\n");
  REQUIRE(events.size() == 2);
  CHECK(events[0].event == "ping");
  CHECK(events[0].data == "{\"type\": \"ping\"}");
  CHECK(events[1].event == "response.completed");
}

TEST_CASE("sse_parser: [DONE] split across reads is one event", "[sse]") {
  const auto events = parse_pieces({"data: [DO", "NE]\n", "\n"});
  REQUIRE(events.size() == 1);
  CHECK(events[0].data == "[DONE]");
}

TEST_CASE("sse_parser: a lone CR at the end of the buffer", "[sse]") {
  sse_parser p;
  sse_event ev;
  SECTION("ending a data line, it waits for the next byte (CR or CRLF?)") {
    p.append("data: a\r");
    CHECK_FALSE(p.next(ev));
    p.append("\n\r\n");
    REQUIRE(p.next(ev));
    CHECK(ev.raw == "data: a\r\n\r\n");
    CHECK(ev.data == "a");
  }
  SECTION("ending a blank line, it ends the event at once: the first event is not held for the next write") {
    p.append("data: a\r\r");
    REQUIRE(p.next(ev));
    CHECK(ev.raw == "data: a\r\r");
    CHECK(ev.data == "a");
    CHECK_FALSE(p.next(ev));
    SECTION("an LF that follows is an empty event, its bytes relayed") {
      p.append("\ndata: b\n\n");
      REQUIRE(p.next(ev));
      CHECK(ev.raw == "\n");
      CHECK_FALSE(ev.has_data);
      REQUIRE(p.next(ev));
      CHECK(ev.raw == "data: b\n\n");
    }
    SECTION("another event follows") {
      p.append("data: b\r\r");
      REQUIRE(p.next(ev));
      CHECK(ev.raw == "data: b\r\r");
      CHECK(ev.data == "b");
      CHECK_FALSE(p.finish(ev));
    }
  }
}

TEST_CASE("sse_parser: pending and finish expose an unterminated tail", "[sse]") {
  sse_parser p;
  sse_event ev;
  p.append("data: one\n\nevent: x\ndata: {\"partial\":");
  REQUIRE(p.next(ev));
  CHECK(ev.data == "one");
  CHECK_FALSE(p.next(ev));
  CHECK(p.pending() == "event: x\ndata: {\"partial\":");

  REQUIRE(p.finish(ev));
  CHECK(ev.raw == "event: x\ndata: {\"partial\":");
  CHECK(ev.event == "x");
  CHECK(ev.data == "{\"partial\":");
  CHECK(p.pending().empty());
  CHECK_FALSE(p.finish(ev));

  SECTION("a tail of complete lines without the blank line") {
    sse_parser q;
    q.append("data: a\ndata: b\n");
    CHECK_FALSE(q.next(ev));
    REQUIRE(q.finish(ev));
    CHECK(ev.data == "a\nb");
    CHECK(ev.raw == "data: a\ndata: b\n");
  }
  SECTION("nothing pending") {
    sse_parser q;
    q.append("data: a\n\n");
    REQUIRE(q.next(ev));
    CHECK(q.pending().empty());
    CHECK_FALSE(q.finish(ev));
  }
}

TEST_CASE("sse_parser: stray blank lines become empty events so no byte is lost", "[sse]") {
  const std::string input = "\ndata: x\n\n\r\n";
  const auto events = parse_all(input);
  REQUIRE(events.size() == 3);
  CHECK(events[0] == owned_event{"\n", "", "", false});
  CHECK(events[1].data == "x");
  CHECK(events[2] == owned_event{"\r\n", "", "", false});
  CHECK(concat_raw(events) == input);
}

TEST_CASE("sse_parser: one leading UTF-8 BOM is ignored but kept in raw", "[sse]") {
  SECTION("whole") {
    const auto events = parse_all("\xEF\xBB\xBF" "data: x\n\n");
    REQUIRE(events.size() == 1);
    CHECK(events[0].data == "x");
    CHECK(events[0].raw == "\xEF\xBB\xBF" "data: x\n\n");
  }
  SECTION("split inside the BOM") {
    const auto events = parse_pieces({"\xEF", "\xBB", "\xBF" "data: x\n", "\n"});
    REQUIRE(events.size() == 1);
    CHECK(events[0].data == "x");
  }
  SECTION("BOM followed by a blank line") {
    const auto events = parse_all("\xEF\xBB\xBF\ndata: x\n\n");
    REQUIRE(events.size() == 2);
    CHECK(events[0] == owned_event{"\xEF\xBB\xBF\n", "", "", false});
    CHECK(events[1].data == "x");
  }
  SECTION("only at stream start") {
    const auto events = parse_all("data: a\n\n\xEF\xBB\xBF" "data: b\n\n");
    REQUIRE(events.size() == 2);
    CHECK_FALSE(events[1].has_data);  // field name "\xEF\xBB\xBF" "data" is unknown
  }
  SECTION("not a BOM") {
    const auto events = parse_pieces({"\xEF", "data: x\n\n"});
    REQUIRE(events.size() == 1);
    CHECK_FALSE(events[0].has_data);
  }
}

TEST_CASE("sse_parser: views stay valid until the next append or next", "[sse]") {
  sse_parser p;
  sse_event a;
  p.append("data: first\ndata: line\n\ndata: second\n\n");
  REQUIRE(p.next(a));
  const std::string raw(a.raw), data(a.data);
  CHECK(data == "first\nline");
  sse_event b;
  REQUIRE(p.next(b));
  CHECK(b.data == "second");
  CHECK(a.raw == raw);  // buf_ is only compacted by append()
}

TEST_CASE("sse_parser: reset starts a new stream", "[sse]") {
  sse_parser p;
  sse_event ev;
  p.append("data: half");
  p.reset();
  CHECK(p.pending().empty());
  p.append("\xEF\xBB\xBF" "data: new\n\n");
  REQUIRE(p.next(ev));
  CHECK(ev.data == "new");
}
