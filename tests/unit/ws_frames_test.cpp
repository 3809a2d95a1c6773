// Unit tests of the WebSocket message reader (core/ws_frames.hpp) and the Realtime API meter
// (core/usage.hpp realtime_meter): frames as RFC 6455 writes them, split anywhere.
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "core/pricing.hpp"
#include "core/usage.hpp"
#include "core/ws_frames.hpp"

using tollgate::realtime_meter;
using tollgate::token_usage;
using tollgate::top_level_string;
using tollgate::ws_message_reader;

namespace {

// One frame: FIN, opcode, payload; masked with `mask` when given (as a client sends).
std::string frame(unsigned opcode, std::string_view payload, bool fin = true, const char* mask = nullptr,
                  bool rsv1 = false) {
  std::string f;
  f += static_cast<char>((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode);
  const unsigned char m = mask ? 0x80 : 0;
  if (payload.size() < 126) {
    f += static_cast<char>(m | payload.size());
  } else if (payload.size() < 65536) {
    f += static_cast<char>(m | 126);
    f += static_cast<char>(payload.size() >> 8);
    f += static_cast<char>(payload.size() & 0xff);
  } else {
    f += static_cast<char>(m | 127);
    for (int i = 7; i >= 0; --i) f += static_cast<char>((static_cast<std::uint64_t>(payload.size()) >> (8 * i)) & 0xff);
  }
  if (mask) f.append(mask, 4);
  for (std::size_t i = 0; i < payload.size(); ++i) f += mask ? static_cast<char>(payload[i] ^ mask[i & 3]) : payload[i];
  return f;
}

bool want_all(std::string_view) { return true; }
bool want_keep(std::string_view head) { return head.starts_with("keep"); }

// Feeds `bytes` in pieces of `step` bytes (0: whole).
std::vector<std::string> read_all(ws_message_reader& r, std::string_view bytes, std::size_t step = 0) {
  std::vector<std::string> out;
  if (step == 0) step = bytes.size();
  for (std::size_t i = 0; i < bytes.size(); i += step) r.feed(bytes.substr(i, step), out);
  return out;
}

}  // namespace

TEST_CASE("ws frames: text messages come out whole, in any split, control frames between fragments") {
  const std::string big(70'000, 'x');  // a 64-bit length
  const std::string mid(300, 'y');     // a 16-bit length
  std::string wire = frame(1, "hello") + frame(9, "ping") + frame(1, mid) + frame(1, "frag", false) +
                     frame(10, "pong") + frame(0, "men", false) + frame(0, "ted") + frame(2, "binary") +
                     frame(1, big) + frame(1, "") + frame(8, "\x03\xe8");
  for (std::size_t step : {0, 1, 2, 3, 7, 126, 4096}) {
    ws_message_reader r(want_all, 1 << 20);
    const auto out = read_all(r, wire, step);
    INFO("step " << step);
    REQUIRE(out.size() == 5);  // the binary message is not text
    CHECK(out[0] == "hello");
    CHECK(out[1] == mid);
    CHECK(out[2] == "fragmented");
    CHECK(out[3] == big);
    CHECK(out[4].empty());
    CHECK(r.messages() == 6);
    CHECK(!r.failed());
  }
}

TEST_CASE("ws frames: tollgate's own server frames read back, and the reader knows message boundaries") {
  const std::string event = R"({"type":"error","error":{"code":"budget_exceeded"}})";
  for (std::size_t size : {std::size_t{5}, std::size_t{300}, std::size_t{70'000}}) {
    ws_message_reader r(want_all, 1 << 20);
    std::vector<std::string> out;
    const std::string text(size, 't');
    const std::string wire = tollgate::ws_server_frame(1, text);
    r.feed(wire.substr(0, 3), out);
    CHECK(!r.between_messages());
    r.feed(wire.substr(3), out);
    CHECK(r.between_messages());
    REQUIRE(out.size() == 1);
    CHECK(out[0] == text);
  }
  ws_message_reader r(want_all, 1 << 20);
  std::vector<std::string> out;
  r.feed(frame(1, "part", false), out);
  CHECK(!r.between_messages());  // inside a fragmented message
  r.feed(frame(0, "end"), out);
  const std::string close = tollgate::ws_close_frame(1008, "budget exceeded");
  CHECK(close == std::string("\x88\x11\x03\xf0" "budget exceeded", 19));
  r.feed(tollgate::ws_server_frame(1, event) + close, out);
  CHECK(r.between_messages());
  REQUIRE(out.size() == 2);
  CHECK(out[1] == event);
  CHECK(tollgate::ws_close_frame(1000, std::string(200, 'r')).size() == 2 + 2 + 123);
}

TEST_CASE("ws frames: masked frames are unmasked across pieces") {
  const char mask[4] = {'\x12', '\x34', '\x56', '\x78'};
  const std::string text = R"({"type":"response.create","response":{"modalities":["text"]}})";
  const std::string wire = frame(1, text.substr(0, 10), false, mask) + frame(0, text.substr(10), true, mask);
  for (std::size_t step : {0, 1, 5}) {
    ws_message_reader r(want_all, 1 << 20);
    const auto out = read_all(r, wire, step);
    REQUIRE(out.size() == 1);
    CHECK(out[0] == text);
  }
}

TEST_CASE("realtime: a Responses WebSocket's requested model is the first response.create's") {
  const char mask[4] = {'\x01', '\x02', '\x03', '\x04'};
  const std::string audio = R"({"type":"input_audio_buffer.append","audio":")" + std::string(5000, 'A') + "\"}";
  const std::string create = R"({"type":"response.create","input":[{"role":"user","content":"hi"}],"model":"gpt-5.5","store":false})";
  const std::string wire = frame(1, audio, true, mask) + frame(1, create, true, mask);
  ws_message_reader r(&realtime_meter::wanted_request, 1 << 20);
  const auto out = read_all(r, wire, 7);
  REQUIRE(out.size() == 1);  // the audio append is skipped by its head
  CHECK(realtime_meter::requested_model(out[0]) == "gpt-5.5");
  CHECK(realtime_meter::requested_model(R"({"type":"response.create","response":{"model":"gpt-4o"}})") == "gpt-4o");
  CHECK(realtime_meter::requested_model(R"({"type":"response.create"})").empty());
  CHECK(realtime_meter::requested_model(R"({"type":"session.update","model":"x"})").empty());
  CHECK(realtime_meter::requested_model("{not json").empty());
}

TEST_CASE("ws frames: unwanted messages are skipped by their head, oversized and compressed ones dropped") {
  const std::string keep_long = "keep" + std::string(1'000, 'k');
  const std::string skip_long = "skip" + std::string(100'000, 's');
  std::string wire = frame(1, skip_long) + frame(1, keep_long) + frame(1, "keep short") + frame(1, "nope") +
                     frame(1, "keep" + std::string(5'000, 'o')) + frame(1, "keep compressed", true, nullptr, true);
  ws_message_reader r(want_keep, 4'096);
  const auto out = read_all(r, wire, 100);
  REQUIRE(out.size() == 2);
  CHECK(out[0] == keep_long);
  CHECK(out[1] == "keep short");
  CHECK(r.oversized() == 1);
  CHECK(r.compressed() == 1);
  CHECK(r.messages() == 6);
}

TEST_CASE("ws frames: protocol errors stop the reader, never crash it") {
  auto fails = [](std::string wire) {
    ws_message_reader r(want_all, 1 << 20);
    std::vector<std::string> out;
    r.feed(wire, out);
    return r.failed();
  };
  CHECK(fails(frame(0, "orphan continuation")));
  CHECK(fails(frame(1, "a", false) + frame(1, "b")));  // a new message inside one
  CHECK(fails(frame(3, "reserved")));
  CHECK(fails(frame(11, "reserved control")));
  CHECK(fails(frame(9, "fragmented ping", false)));
  CHECK(fails(frame(9, std::string(126, 'p'))));
  CHECK(fails(std::string("\x81\x7f\x80\0\0\0\0\0\0\0", 10)));  // top bit of a 64-bit length
  CHECK(!fails(frame(1, "fine") + frame(8, "")));
  // Random bytes: whatever they are, no crash and no output beyond the cap.
  std::mt19937 rng(7);
  for (int k = 0; k < 2'000; ++k) {
    std::string junk(static_cast<std::size_t>(rng() % 300), '\0');
    for (auto& c : junk) c = static_cast<char>(rng());
    ws_message_reader r(want_all, 1'000);
    std::vector<std::string> out;
    r.feed(junk, out);
    for (const auto& m : out) CHECK(m.size() <= 1'000);
  }
}

TEST_CASE("realtime: top-level type is found in a message head, not nested or cut") {
  CHECK(top_level_string(R"({"type":"response.done","event_id":"e"})", "type") == "response.done");
  CHECK(top_level_string(R"({ "event_id" : "e1", "type" : "session.created" })", "type") == "session.created");
  CHECK(top_level_string(R"({"response":{"type":"nested"},"type":"outer"})", "type") == "outer");
  CHECK(top_level_string(R"({"note":"\"type\":\"fake\"","type":"real"})", "type") == "real");
  CHECK(!top_level_string(R"({"event_id":"e","type":"response.out)", "type"));  // cut
  CHECK(!top_level_string(R"({"type":3})", "type"));
  CHECK(!top_level_string("not json", "type"));
  CHECK(realtime_meter::wanted(R"({"type":"response.done")"));
  CHECK(realtime_meter::wanted(R"({"type":"session.updated")"));
  CHECK(realtime_meter::wanted(R"({"type":"conversation.item.input_audio_transcription.completed")"));
  CHECK(!realtime_meter::wanted(R"({"type":"response.output_audio.delta","delta":"AAAA)"));
  CHECK(realtime_meter::wanted(R"({"event_id":"e","delta":"AAAA)"));  // type not seen yet: read it
}

TEST_CASE("realtime: response.done usage summed per session, transcriptions at their own model") {
  realtime_meter m("gpt-realtime");
  m.on_message(R"({"type":"session.created","event_id":"e0","session":{"object":"realtime.session",
    "model":"gpt-realtime-2025-08-28","audio":{"input":{"transcription":{"model":"gpt-4o-transcribe"}}}}})");
  CHECK(m.model() == "gpt-realtime-2025-08-28");
  m.on_message(R"({"type":"response.done","event_id":"e1","response":{"object":"realtime.response","status":"completed",
    "usage":{"total_tokens":253,"input_tokens":132,"output_tokens":121,
      "input_token_details":{"text_tokens":119,"audio_tokens":13,"image_tokens":0,"cached_tokens":64,
        "cached_tokens_details":{"text_tokens":64,"audio_tokens":0,"image_tokens":0}},
      "output_token_details":{"text_tokens":30,"audio_tokens":91}}}})");
  m.on_message(R"({"type":"response.done","event_id":"e2","response":{"status":"cancelled",
    "usage":{"input_tokens":1000,"output_tokens":10,"input_token_details":{"text_tokens":200,"audio_tokens":800,
      "cached_tokens":900,"cached_tokens_details":{"text_tokens":150,"audio_tokens":750}},
      "output_token_details":{"text_tokens":0,"audio_tokens":10}}}})");
  m.on_message(R"({"type":"response.done","response":{"status":"failed","usage":null}})");  // nothing to add
  m.on_message(R"({"type":"conversation.item.input_audio_transcription.completed","item_id":"i","transcript":"hi",
    "usage":{"type":"tokens","total_tokens":27,"input_tokens":14,"input_token_details":{"text_tokens":0,"audio_tokens":14},
    "output_tokens":13}})");
  m.on_message(R"({"type":"response.output_audio.delta","delta":"AAAA"})");
  m.on_message("not json");
  CHECK(m.responses() == 2);
  CHECK(m.transcriptions() == 1);
  const auto by = m.by_model();
  REQUIRE(by.size() == 2);
  CHECK(by[0].first == "gpt-realtime-2025-08-28");
  const token_usage& u = by[0].second;
  CHECK(u.prompt == 1132);
  CHECK(u.completion == 131);
  CHECK(u.cached == 964);
  CHECK(u.audio_cached == 750);
  CHECK(u.audio_in == 13 + 50);
  CHECK(u.audio_out == 101);
  CHECK(by[1].first == "gpt-4o-transcribe");
  CHECK(by[1].second.prompt == 14);
  CHECK(by[1].second.audio_in == 14);
  CHECK(by[1].second.completion == 13);

  // Priced as the ledger will: text 1132-964-63 = 105 in, 214 cached text, 750 cached audio.
  tollgate::price_table t;
  t.load_yaml_file(TOLLGATE_SOURCE_DIR "/config/prices.yaml");
  const double usd = tollgate::compute_cost(t, by[0].first, u).usd;
  CHECK(usd == Approx((105 * 4.0 + 63 * 32.0 + 214 * 0.40 + 750 * 0.40 + 30 * 16.0 + 101 * 64.0) / 1e6));
}

TEST_CASE("realtime: beta event names, a transcription session, whisper's seconds") {
  realtime_meter m("gpt-4o-mini-realtime-preview");
  m.on_message(R"({"type":"response.done","response":{"usage":{"input_tokens":10,"output_tokens":5}}})");
  m.on_message(R"({"type":"session.updated","session":{"model":"gpt-4o-mini-realtime-preview-2024-12-17",
    "input_audio_transcription":{"model":"whisper-1"}}})");
  m.on_message(R"({"type":"conversation.item.input_audio_transcription.completed","usage":{"type":"duration","seconds":3.5}})");
  CHECK(m.transcriptions() == 1);
  const auto by = m.by_model();
  REQUIRE(by.size() == 2);
  CHECK(by[1].first == "whisper-1");
  CHECK(by[1].second.audio_ms == 3'500);
  CHECK(by[0].first == "gpt-4o-mini-realtime-preview-2024-12-17");  // the session's model when it ends
  CHECK(by[0].second.prompt == 10);

  realtime_meter tr("");
  tr.on_message(R"({"type":"transcription_session.created","session":{"input_audio_transcription":{"model":"gpt-4o-mini-transcribe"}}})");
  tr.on_message(R"({"type":"conversation.item.input_audio_transcription.completed","usage":{"type":"tokens",
    "input_tokens":20,"input_token_details":{"audio_tokens":20},"output_tokens":7}})");
  const auto tb = tr.by_model();
  REQUIRE(tb.size() == 1);
  CHECK(tb[0].first == "gpt-4o-mini-transcribe");
  CHECK(tb[0].second.audio_in == 20);
  CHECK(!realtime_meter("x").has_usage());
}

TEST_CASE("realtime: the Responses API over WebSocket is metered per response at its own model and tier") {
  // GET /v1/responses (the SDKs' responses.connect()): no session event names a model; each
  // response.create may name another, and the terminal event carries the whole response.
  CHECK(realtime_meter::wanted(R"({"type":"response.completed","response":{)"));
  CHECK(realtime_meter::wanted(R"({"type":"response.incomplete")"));
  CHECK(realtime_meter::wanted(R"({"type":"response.failed")"));
  CHECK(!realtime_meter::wanted(R"({"type":"response.output_text.delta","delta":"hi)"));
  realtime_meter m("");
  CHECK(m.model().empty());
  m.on_message(R"({"type":"response.created","response":{"model":"gpt-5-2025-08-07","usage":null}})");
  m.on_message(R"({"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","model":"gpt-5-2025-08-07",
    "service_tier":"default","output":[{"type":"web_search_call","id":"ws_1","status":"completed"},
      {"type":"message","content":[{"type":"output_text","text":"hi"}]}],
    "usage":{"input_tokens":1000,"input_tokens_details":{"cached_tokens":400},"output_tokens":500,
      "output_tokens_details":{"reasoning_tokens":200},"total_tokens":1500}}})");
  m.on_message(R"({"type":"response.completed","stream_id":"lane-2","response":{"model":"gpt-5-mini","service_tier":"priority",
    "output":[],"usage":{"input_tokens":100,"output_tokens":50}}})");
  m.on_message(R"({"type":"response.incomplete","response":{"model":"gpt-5-2025-08-07","service_tier":"default",
    "incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":200,"output_tokens":100}}})");
  m.on_message(R"({"type":"response.failed","response":{"model":"gpt-5-2025-08-07","usage":null}})");  // nothing billed
  m.on_message(R"({"type":"error","status":400,"error":{"code":"x","message":"y"}})");
  CHECK(m.responses() == 3);
  CHECK(m.has_usage());
  CHECK(m.model() == "gpt-5-2025-08-07");  // the first response's
  const auto by = m.by_model();
  REQUIRE(by.size() == 2);
  CHECK(by[0].first == "gpt-5-2025-08-07");
  CHECK(by[0].second.prompt == 1200);
  CHECK(by[0].second.cached == 400);
  CHECK(by[0].second.completion == 600);
  CHECK(by[0].second.reasoning == 200);
  CHECK(by[0].second.web_search == 1);
  CHECK(by[1].first == "gpt-5-mini");
  CHECK(by[1].second.tier == tollgate::service_tier::priority);
  CHECK(by[1].second.prompt == 100);

  tollgate::price_table t;
  t.load_yaml_file(TOLLGATE_SOURCE_DIR "/config/prices.yaml");
  const double usd = tollgate::compute_cost(t, by).usd;
  CHECK(usd == Approx((800 * 1.25 + 400 * 0.125 + 600 * 10.0) / 1e6 + 10.0 / 1e3 + (100 * 0.45 + 50 * 3.60) / 1e6));

  // A handshake that names a model (?model=) prices a response whose object names none.
  realtime_meter q("gpt-4.1");
  q.on_message(R"({"type":"response.completed","response":{"usage":{"input_tokens":10,"output_tokens":5}}})");
  REQUIRE(q.by_model().size() == 1);
  CHECK(q.by_model()[0].first == "gpt-4.1");
}

TEST_CASE("realtime: responses in flight are counted from response.created to their end, for both APIs") {
  realtime_meter m("gpt-realtime");
  CHECK(realtime_meter::wanted(R"({"type":"response.created","response":{)"));
  CHECK(m.in_flight() == 0);
  m.on_message(R"({"type":"response.created","event_id":"e1","response":{"id":"r1","status":"in_progress"}})");
  m.on_message(R"({"type":"response.created","response":{"id":"r2"}})");
  CHECK(m.in_flight() == 2);
  m.on_message(R"({"type":"response.done","response":{"id":"r1","status":"cancelled","usage":null}})");  // ends, bills nothing
  CHECK(m.in_flight() == 1);
  CHECK(m.responses() == 0);
  m.on_message(R"({"type":"response.completed","response":{"model":"gpt-4.1","usage":{"input_tokens":3,"output_tokens":2}}})");
  CHECK(m.in_flight() == 0);
  m.on_message(R"({"type":"response.failed","response":{"usage":null}})");  // an end without a start stays at 0
  CHECK(m.in_flight() == 0);
}

TEST_CASE("realtime: a Live session's audio seconds and its delegated responses are metered") {
  // GET /v1/live/sessions (openai-node 7.x LiveWS): session.started names the model; the audio
  // seconds are cumulative totals; the Responses backend's events arrive nested in response.event.
  CHECK(realtime_meter::wanted(R"({"type":"session.started","session":{"id":"ls_1","model":"gpt-live-1"}})"));
  CHECK(realtime_meter::wanted(R"({"type":"session.usage.updated","usage":{"seconds":1.5}})"));
  CHECK(realtime_meter::wanted(R"({"type":"session.closed","reason":"close_requested")"));
  CHECK(realtime_meter::wanted(R"({"type":"response.event","event":{"type":"response.completed","response":{)"));
  CHECK(realtime_meter::wanted(R"({"type":"response.event","delegation_id":"d1","event":{"type":"response.created")"));
  CHECK(!realtime_meter::wanted(R"({"type":"response.event","event":{"type":"response.output_text.delta","delta":"hi)"));
  CHECK(realtime_meter::wanted(R"({"event":{"type":"response.incomplete","response":{}},"type":"response.event"})"));
  CHECK(realtime_meter::wanted(R"({"type":"response.event","event":{"type":"response.compl)"));  // cut: read it whole
  CHECK(!realtime_meter::wanted(R"({"type":"session.output_audio.delta","audio":"AAAA)"));
  CHECK(!realtime_meter::wanted_none(R"({"type":"session.usage.updated","usage":{"seconds":1.5}})"));

  realtime_meter m("");
  m.on_message(R"({"type":"session.started","event_id":"e0","session":{"id":"ls_1","model":"gpt-live-1","status":"active"}})");
  CHECK(m.model() == "gpt-live-1");
  CHECK(m.live_session_id() == "ls_1");
  CHECK_FALSE(m.has_usage());
  m.on_message(R"({"type":"session.usage.updated","event_id":"e1","usage":{"seconds":2.5}})");
  CHECK(m.events() == 1);
  m.on_message(R"({"type":"session.usage.updated","usage":{"seconds":2.0}})");  // never backwards
  CHECK(m.events() == 1);
  m.on_message(R"({"type":"response.event","delegation_id":"d1","event":{"type":"response.created","response":{"id":"r1"}}})");
  CHECK(m.in_flight() == 1);
  m.on_message(R"({"type":"response.event","delegation_id":"d1","event":{"type":"response.completed","sequence_number":7,
    "response":{"id":"r1","model":"gpt-4.1","status":"completed","output":[],
      "usage":{"input_tokens":300,"input_tokens_details":{"cached_tokens":0},"output_tokens":20,"total_tokens":320}}}})");
  CHECK(m.in_flight() == 0);
  CHECK(realtime_meter::wanted(R"({"type":"decision.event","delegation_id":null,"event":{"type":"decision.completed")"));
  m.on_message(R"({"type":"decision.event","delegation_id":null,"event_id":"e5","trigger_id":"t1","event":{
    "type":"decision.completed","decision":{"model":"gpt-4.1","answers":[],"usage":{"input_tokens":50,
    "input_tokens_details":{"cache_write_tokens":0,"cached_tokens":0},"output_tokens":2,"total_tokens":52}}}})");
  CHECK(m.in_flight() == 0);
  m.on_message(R"({"type":"session.closed","reason":"close_requested","session":{"id":"ls_1","model":"gpt-live-1"},
    "usage":{"seconds":61.25}})");
  CHECK(m.events() == 4);
  CHECK(m.live_seconds() == 61.25);
  const auto by = m.by_model();
  REQUIRE(by.size() == 2);
  CHECK(by[0].first == "gpt-live-1");
  CHECK(by[0].second.audio_ms == 61'250);
  CHECK(by[0].second.prompt == 0);
  CHECK(by[1].first == "gpt-4.1");
  CHECK(by[1].second.prompt == 350);

  // The audio is billed at the model's per_minute price once the table has one; until then the
  // session is unpriced, its delegated responses still counted.
  tollgate::price_table t;
  t.load_yaml_string("models:\n  gpt-4.1: { input: 2, output: 8 }\n");
  auto cost = tollgate::compute_cost(t, by);
  CHECK_FALSE(cost.priced);
  CHECK(cost.usd == Approx((350 * 2.0 + 22 * 8.0) / 1e6));
  tollgate::price_table live;
  live.load_yaml_string("models:\n  gpt-4.1: { input: 2, output: 8 }\n  gpt-live-1: { per_minute: 0.06 }\n");
  cost = tollgate::compute_cost(live, by);
  CHECK(cost.priced);
  CHECK(cost.usd == Approx(61.25 / 60 * 0.06 + (350 * 2.0 + 22 * 8.0) / 1e6));
}
