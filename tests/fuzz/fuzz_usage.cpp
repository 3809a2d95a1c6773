// libFuzzer target: usage extraction (core/usage): extract_response on whole bodies, stream_meter on
// SSE streams, estimate_tokens and the `"usage":null` byte edit. The first byte picks the route,
// body or stream, and strip_usage_chunk; the rest is the upstream's bytes.
//
// Invariants: counts never negative and parts never above their whole; the simdjson reader and
// the nlohmann fallback give one answer (a leading UTF-8 BOM sends the same JSON to nlohmann,
// since simdjson rejects it); a meter that is not stripping never drops an event; the byte edit
// removes exactly the `"usage":null` members and keeps the JSON valid.
#include <nlohmann/json.hpp>

#include <cmath>
#include <deque>
#include <string>
#include <vector>

#include "core/audio_length.hpp"
#include "core/sse_parser.hpp"
#include "core/usage.hpp"
#include "fuzz_common.hpp"

namespace {

using tollgate::route_kind;
using ojson = nlohmann::ordered_json;

constexpr std::string_view bom = "\xEF\xBB\xBF";

std::string_view trim(std::string_view s) {
  constexpr std::string_view space = " \t\r\n";
  const auto first = s.find_first_not_of(space);
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(space) - first + 1);
}

void check_body(route_kind route, std::string_view body) {
  const auto f = tollgate::extract_response(route, body);
  if (f.has_usage) {
    fuzz::check_usage(f.usage);
  } else {
    FUZZ_CHECK(fuzz::is_zero(f.usage));
  }
  if (route == route_kind::embeddings) FUZZ_CHECK(f.usage.completion == 0 && f.usage.reasoning == 0);

  if (body.starts_with(bom)) return;  // a second BOM is an error for nlohmann
  std::string with_bom(bom);
  with_bom += body;
  const auto g = tollgate::extract_response(route, with_bom);
  FUZZ_CHECK(g.has_usage == f.has_usage);
  FUZZ_CHECK(fuzz::same_usage(g.usage, f.usage));
  FUZZ_CHECK(g.model == f.model);
  FUZZ_CHECK(g.id == f.id);
  // Audio files (a speech reply's length): any bytes give a positive finite length or none.
  for (std::string_view format : {"mp3", "pcm"})
    if (const auto seconds = tollgate::audio_seconds(body, format)) FUZZ_CHECK(std::isfinite(*seconds) && *seconds > 0);
  // Media replies (DALL-E, Sora): counts never negative, one answer from either reader.
  const auto m = tollgate::extract_media(body), n = tollgate::extract_media(with_bom);
  FUZZ_CHECK(m.images == n.images && m.seconds == n.seconds && m.size == n.size && m.model == n.model &&
             m.has_usage == n.has_usage && m.id == n.id && m.id.size() <= 256);
  FUZZ_CHECK(m.images >= -1 && m.seconds >= -1);
  for (auto kind : {tollgate::media_call::images, tollgate::media_call::video, tollgate::media_call::video_remix}) {
    const auto u = tollgate::media_usage(kind, tollgate::media_request{m.size, m.quality, m.status, m.object}, m);
    if (!u) continue;
    FUZZ_CHECK(u->images >= 0 && u->video_seconds >= 0 && u->prompt == 0 && u->completion == 0);
    FUZZ_CHECK((kind == tollgate::media_call::images) == (u->images > 0));
  }
}

// The members append_without_null_usage must remove: `"usage": null` in objects that have another
// member (a lone member has no comma to take with it and is left alone).
void strip_null_usage(ojson& j) {
  if (j.is_object()) {
    if (j.size() > 1 && j.contains("usage") && j["usage"].is_null()) j.erase("usage");
    for (auto& [k, v] : j.items()) strip_null_usage(v);
  } else if (j.is_array()) {
    for (auto& v : j) strip_null_usage(v);
  }
}

// The first implementation (a search per spelling), kept as the reference the one-scan version
// must agree with byte for byte.
bool reference_without_null_usage(std::string_view raw, std::string& out) {
  bool removed = false;
  for (;;) {
    std::size_t at = std::string_view::npos, len = 0;
    for (std::string_view pat : {std::string_view(",\"usage\":null"), std::string_view(", \"usage\": null"),
                                 std::string_view(",\"usage\": null"), std::string_view("\"usage\":null,"),
                                 std::string_view("\"usage\": null,"), std::string_view("\"usage\": null, ")}) {
      // The member must start where a member can: after `{` or `,` (the ",usage" forms carry
      // their comma). A key ending in an escaped quote (`"\"usage":null,`) is not the member.
      for (auto p = raw.find(pat); p != std::string_view::npos; p = raw.find(pat, p + 1)) {
        if (pat.front() == '"') {
          std::size_t b = p;
          while (b > 0 && (raw[b - 1] == ' ' || raw[b - 1] == '\t' || raw[b - 1] == '\n' || raw[b - 1] == '\r')) --b;
          if (b == 0 || (raw[b - 1] != '{' && raw[b - 1] != ',')) continue;
        }
        if (p < at || (p == at && pat.size() > len)) {
          at = p;
          len = pat.size();
        }
        break;
      }
    }
    if (at == std::string_view::npos) break;
    out.append(raw.substr(0, at));
    raw.remove_prefix(at + len);
    removed = true;
  }
  out.append(raw);
  return removed;
}

void check_null_usage_edit(std::string_view raw) {
  std::string out;
  const bool removed = tollgate::append_without_null_usage(raw, out);
  {
    std::string expected;
    const bool expected_removed = reference_without_null_usage(raw, expected);
    FUZZ_CHECK(removed == expected_removed && out == expected);
  }
  FUZZ_CHECK(out.size() <= raw.size());
  FUZZ_CHECK(removed == (out.size() < raw.size()));
  if (!removed) FUZZ_CHECK(out == raw);
  // Appends: what is already in `out` stays.
  std::string prefixed = "x";
  tollgate::append_without_null_usage(raw, prefixed);
  FUZZ_CHECK(prefixed == "x" + out);
  if (raw.find("\"usage\"") == std::string_view::npos) {
    FUZZ_CHECK(!removed);  // every pattern names the member
    return;
  }

  // On compact JSON (what OpenAI sends: `{"id":...,"usage":null}`) the edit must be exact.
  // nlohmann's dump() and operator== recurse: bound the depth.
  if (raw.size() > 64 * 1024 || fuzz::json_depth(raw) > 200) return;
  auto j = ojson::parse(raw, nullptr, false);
  if (j.is_discarded()) return;
  std::string canonical;
  try {
    canonical = j.dump();
  } catch (const nlohmann::json::exception&) {
    return;  // invalid UTF-8 inside a string
  }
  if (canonical != raw) return;  // not compact, or duplicate keys
  strip_null_usage(j);
  auto edited = ojson::parse(out, nullptr, false);
  FUZZ_CHECK(!edited.is_discarded());
  FUZZ_CHECK(edited == j);
}

void check_meters(const tollgate::stream_meter& a, const tollgate::stream_meter& b) {
  FUZZ_CHECK(a.has_usage() == b.has_usage());
  FUZZ_CHECK(fuzz::same_usage(a.usage(), b.usage()));
  FUZZ_CHECK(a.model() == b.model());
  FUZZ_CHECK(a.id() == b.id());
  FUZZ_CHECK(a.saw_done() == b.saw_done());
  FUZZ_CHECK(a.saw_error() == b.saw_error());
  FUZZ_CHECK(a.estimated_completion_tokens() == b.estimated_completion_tokens());
}

void check_stream(route_kind route, bool strip, std::string_view stream) {
  tollgate::sse_parser parser;
  parser.append(stream);
  // A multi-line data view points into the parser's scratch buffer, which the next call reuses:
  // keep copies (a deque, so they never move).
  std::vector<tollgate::sse_event> events;
  std::deque<std::string> owned;
  tollgate::sse_event ev;
  while (parser.next(ev)) {
    events.push_back(ev);
    events.back().data = owned.emplace_back(ev.data);
  }
  while (parser.finish(ev)) {
    events.push_back(ev);
    events.back().data = owned.emplace_back(ev.data);
  }

  tollgate::stream_meter meter(route, strip);
  tollgate::stream_meter slow(route, strip);  // fed the same JSON behind a BOM: the nlohmann path
  for (const auto& e : events) {
    const bool forward = meter.on_event(e);
    if (!strip) FUZZ_CHECK(forward);
    if (e.has_data && !e.data.empty()) check_null_usage_edit(e.data);

    tollgate::sse_event twin = e;
    std::string data;
    const std::string_view t = trim(e.data);
    if (e.has_data && t != "[DONE]" && !t.starts_with(bom)) {
      data.assign(bom);
      data += t;
      twin.data = data;
    }
    FUZZ_CHECK(slow.on_event(twin) == forward);
    FUZZ_CHECK(meter.estimated_completion_tokens() >= 0);
  }
  check_meters(meter, slow);
  if (meter.has_usage()) fuzz::check_usage(meter.usage());

  // What the relay forwards to a client that did not ask for include_usage, event by event as
  // client_session does: the frame's cuts (append_stripped) must be the search's, byte for byte.
  if (strip) {
    tollgate::stream_meter relay(route, true);
    tollgate::sse_parser events;
    events.append(stream);
    std::string by_meter, by_search;
    const auto take = [&](const tollgate::sse_event& e) {
      if (!relay.on_event(e)) return;
      by_meter.clear();
      by_search.clear();
      relay.append_stripped(e, by_meter);
      tollgate::append_without_null_usage(e.raw, by_search);
      FUZZ_CHECK(by_meter == by_search);
    };
    while (events.next(ev)) take(ev);
    while (events.finish(ev)) take(ev);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::input in(data, size);
  const std::uint8_t choice = in.byte();
  const auto route = static_cast<route_kind>(choice % 7);
  const bool stream = choice & 0x08;
  const bool strip = choice & 0x10;
  const std::string_view payload = in.rest();

  if (stream) {
    check_stream(route, strip, payload);
  } else {
    check_body(route, payload);
  }

  // The fallback estimator: never negative, never more tokens than bytes.
  const auto estimate = tollgate::estimate_tokens(payload);
  FUZZ_CHECK(estimate >= 0);
  FUZZ_CHECK(estimate <= static_cast<std::int64_t>(payload.size()));
  return 0;
}
