// Request-body inspection: a simdjson pass that validates the body and picks out the few fields
// the relay needs (nlohmann SAX for errors and odd cases), and the include_usage rewrite.
#include "core/request_inspect.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <vector>
#include <nlohmann/json.hpp>
#include <simdjson.h>

#include "core/http_rules.hpp"
#include "core/usage.hpp"

namespace tollgate {
namespace {

using json = nlohmann::json;

// The top-level members that matter; everything else is only validated.
enum class member : std::uint8_t {
  other,
  model,
  stream,
  stream_options,
  user,
  safety_identifier,  // OpenAI's successor to `user`: the user column when `user` is absent
  metadata,           // Anthropic's metadata.user_id: the user column when neither is given
  max_completion_tokens,
  max_tokens,
  max_output_tokens,
  choices,          // n: completions per call (chat, legacy completions)
  prompt_text,      // messages, system, instructions, tools: strings count
  prompt_or_ids,    // prompt, input: strings count, and so do token-id arrays ([1234, 5678])
  speed,            // pricing hints (request_facts::fast, priority, geo_us)
  service_tier,
  inference_geo,
  cache_control,    // Anthropic's top-level (automatic) prompt caching
  fallbacks,        // Anthropic's server-side fallbacks (request_facts::fallbacks)
};

// A `fallbacks` entry's members that matter.
enum class hop_member : std::uint8_t { other, model, max_tokens, speed };
hop_member classify_hop(std::string_view k) noexcept {
  return k == "model" ? hop_member::model : k == "max_tokens" ? hop_member::max_tokens : k == "speed" ? hop_member::speed : hop_member::other;
}
constexpr std::size_t max_fallbacks = 8;

// A pricing hint's string value ("" for any other type: a later duplicate wins, as for model).
void pricing_hint(member m, std::string_view s, request_facts& f) noexcept {
  if (m == member::speed) f.fast = s == "fast";
  if (m == member::service_tier) f.priority = s == "priority" || s == "fast";
  if (m == member::inference_geo) f.geo_us = s == "us";
}
bool is_pricing_hint(member m) noexcept {
  return m == member::speed || m == member::service_tier || m == member::inference_geo;
}

// `n` as the reservation reads it: 1 when absent or 0, at most 128 (the API's own limit).
std::int64_t choices_count(const std::optional<std::int64_t>& n) noexcept {
  return n && *n > 1 ? std::min<std::int64_t>(*n, 128) : 1;
}

member classify(std::string_view k) noexcept {
  if (k == "model") return member::model;
  if (k == "stream") return member::stream;
  if (k == "stream_options") return member::stream_options;
  if (k == "user") return member::user;
  if (k == "safety_identifier") return member::safety_identifier;
  if (k == "metadata") return member::metadata;
  if (k == "max_completion_tokens") return member::max_completion_tokens;
  if (k == "max_tokens") return member::max_tokens;
  if (k == "max_output_tokens") return member::max_output_tokens;
  if (k == "n") return member::choices;
  if (k == "messages" || k == "system" || k == "instructions" || k == "tools") return member::prompt_text;
  if (k == "prompt" || k == "input") return member::prompt_or_ids;
  if (k == "speed") return member::speed;
  if (k == "service_tier") return member::service_tier;
  if (k == "inference_geo") return member::inference_geo;
  if (k == "cache_control") return member::cache_control;
  if (k == "fallbacks") return member::fallbacks;
  return member::other;
}

// ---- Binary payloads in prompts (binary_payload_tokens) ----

// The base64 alphabets (standard and URL-safe), padding and the line breaks of MIME-style base64.
constexpr auto base64_table = [] {
  std::array<std::int8_t, 256> t{};
  t.fill(-1);
  for (int i = 0; i < 26; ++i) t['A' + i] = static_cast<std::int8_t>(i), t['a' + i] = static_cast<std::int8_t>(26 + i);
  for (int i = 0; i < 10; ++i) t['0' + i] = static_cast<std::int8_t>(52 + i);
  t['+'] = t['-'] = 62;
  t['/'] = t['_'] = 63;
  t['='] = t['\r'] = t['\n'] = 64;  // allowed, no value
  return t;
}();

// In blocks of 64 without a branch per byte (~0.6 ns a byte); text fails in its first block.
bool all_base64(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size(); i += 64) {
    bool ok = true;
    for (const char c : s.substr(i, 64)) ok &= base64_table[static_cast<unsigned char>(c)] >= 0;
    if (!ok) return false;
  }
  return true;
}

// Decodes up to out.size() bytes from the start of base64 text, skipping MIME line breaks (a
// JPEG's size can sit tens of kilobytes in, after its EXIF block); stops at padding or a
// character outside the alphabets.
std::size_t base64_prefix(std::string_view s, std::span<unsigned char> out) noexcept {
  std::size_t n = 0;
  std::uint32_t acc = 0;
  int bits = 0;
  for (const char c : s) {
    if (n == out.size()) break;
    if (c == '\r' || c == '\n') continue;
    const int v = base64_table[static_cast<unsigned char>(c)];
    if (v < 0 || v == 64) break;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = static_cast<unsigned char>(acc >> bits);
    }
  }
  return n;
}

// The bytes `magic` at offset `off` of b.
bool bytes_at(std::span<const unsigned char> b, std::size_t off, std::string_view magic) noexcept {
  return b.size() >= off + magic.size() && std::memcmp(b.data() + off, magic.data(), magic.size()) == 0;
}

struct pixel_size {
  std::uint32_t width = 0, height = 0;
};

// Width and height from a PNG, GIF, WebP or JPEG header; nothing for other formats (HEIC,
// AVIF), a truncated header or implausible sizes.
std::optional<pixel_size> image_size(std::span<const unsigned char> b) noexcept {
  auto be16 = [&](std::size_t i) { return static_cast<std::uint32_t>(b[i] << 8 | b[i + 1]); };
  auto le16 = [&](std::size_t i) { return static_cast<std::uint32_t>(b[i] | b[i + 1] << 8); };
  auto le24 = [&](std::size_t i) { return static_cast<std::uint32_t>(b[i] | b[i + 1] << 8 | b[i + 2] << 16); };
  auto be32 = [&](std::size_t i) { return be16(i) << 16 | be16(i + 2); };
  auto at = [&](std::size_t off, std::string_view magic) { return bytes_at(b, off, magic); };
  pixel_size p;
  if (at(0, "\x89PNG") && at(12, "IHDR") && b.size() >= 24) {
    p = {be32(16), be32(20)};
  } else if (at(0, "GIF8") && b.size() >= 10) {
    p = {le16(6), le16(8)};
  } else if (at(0, "RIFF") && at(8, "WEBP")) {
    if (at(12, "VP8 ") && b.size() >= 30 && at(23, "\x9d\x01\x2a"))
      p = {le16(26) & 0x3fff, le16(28) & 0x3fff};
    else if (at(12, "VP8L") && b.size() >= 25 && b[20] == 0x2f) {
      const std::uint32_t v = static_cast<std::uint32_t>(b[21] | b[22] << 8 | b[23] << 16 | static_cast<std::uint32_t>(b[24]) << 24);
      p = {(v & 0x3fff) + 1, ((v >> 14) & 0x3fff) + 1};
    } else if (at(12, "VP8X") && b.size() >= 30)
      p = {le24(24) + 1, le24(27) + 1};
  } else if (b.size() >= 4 && b[0] == 0xFF && b[1] == 0xD8) {
    // JPEG: segments from offset 2 until a start-of-frame (SOF0-SOF15 but DHT, JPG and DAC).
    for (std::size_t i = 2; i + 9 < b.size();) {
      if (b[i] != 0xFF) return std::nullopt;
      const unsigned char marker = b[i + 1];
      if (marker == 0xFF) {  // fill byte
        ++i;
        continue;
      }
      if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
        p = {be16(i + 7), be16(i + 5)};
        break;
      }
      if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no length
        i += 2;
        continue;
      }
      if (marker == 0xD9 || marker == 0xDA) return std::nullopt;  // image data before a frame
      i += 2 + be16(i + 2);
    }
  }
  if (p.width == 0 || p.height == 0 || p.width > 100'000 || p.height > 100'000) return std::nullopt;
  return p;
}

// Tokens an image of this size is billed as by the common vision models, at most 2,500 (the
// estimate for an image of unknown size): the largest of
// - OpenAI's 512-px tiles (GPT-4o family, high detail): fitted within 2048 x 2048, then the
//   shorter side down to 768; 85 + 170 per tile;
// - OpenAI's 32-px patches (GPT-4.1-mini, o4-mini): at most 1,536, x 1.62;
// - Anthropic: width x height / 750 after scaling to a long edge of 1,568 and ~1.15 megapixels.
// No model bills fewer than 85 for an image (GPT-4o at low detail), none of these more than 2,500.
std::int64_t image_tokens(pixel_size p) noexcept {
  const double w = p.width, h = p.height;
  double tw = w, th = h;
  if (const double s = 2048.0 / std::max(tw, th); s < 1.0) tw *= s, th *= s;
  if (const double s = 768.0 / std::min(tw, th); s < 1.0) tw *= s, th *= s;
  const double tiles = 85.0 + 170.0 * std::ceil(tw / 512.0) * std::ceil(th / 512.0);
  const double patches = 1.62 * std::min(1536.0, std::ceil(w / 32.0) * std::ceil(h / 32.0));
  double aw = w, ah = h;
  if (const double s = 1568.0 / std::max(aw, ah); s < 1.0) aw *= s, ah *= s;
  if (const double s = std::sqrt(1.15e6 / (aw * ah)); s < 1.0) aw *= s, ah *= s;
  const double anthropic = aw * ah / 750.0;
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(std::ceil(std::max({tiles, patches, anthropic}))), 85, 2500);
}

enum class medium : std::uint8_t { image, pdf, audio_video, text, other };

medium medium_of_mime(std::string_view mime) noexcept {
  auto starts = [&](std::string_view p) {
    return mime.size() >= p.size() && std::equal(p.begin(), p.end(), mime.begin(), [](char a, char b) {
             return a == (b >= 'A' && b <= 'Z' ? static_cast<char>(b - 'A' + 'a') : b);
           });
  };
  if (starts("image/")) return medium::image;
  if (starts("application/pdf")) return medium::pdf;
  if (starts("audio/") || starts("video/")) return medium::audio_video;
  if (starts("text/") || starts("application/json")) return medium::text;
  return medium::other;
}

// By the file's magic bytes.
medium medium_of_bytes(std::span<const unsigned char> b) noexcept {
  auto at = [&](std::size_t off, std::string_view magic) { return bytes_at(b, off, magic); };
  if (at(0, "\x89PNG") || at(0, "\xFF\xD8\xFF") || at(0, "GIF8") || (at(0, "RIFF") && at(8, "WEBP")) ||
      at(4, "ftypavif") || at(4, "ftypheic") || at(4, "ftypheix") || at(4, "ftypmif1"))
    return medium::image;
  if (at(0, "%PDF")) return medium::pdf;
  if ((at(0, "RIFF") && at(8, "WAVE")) || at(0, "ID3") || at(0, "OggS") || at(0, "fLaC") || at(4, "ftyp") ||
      at(0, "\x1A\x45\xDF\xA3") || (b.size() >= 2 && b[0] == 0xFF && (b[1] & 0xE0) == 0xE0))  // MPEG audio frame
    return medium::audio_video;
  return medium::other;
}

// A prompt string's tally: text, or a binary payload at its medium's rate.
struct prompt_tally {
  text_tally text;
  std::int64_t media = 0;
  void add(std::string_view s) noexcept {
    // Inline, the test that rules out most strings (short, and not "data:…"): the hot path's
    // chat bodies are dozens of short strings.
    const bool maybe = s.size() >= 256 || (s.size() >= 13 && (s[0] | 0x20) == 'd' && s[4] == ':');
    if (const std::int64_t t = maybe ? binary_payload_tokens(s) : -1; t >= 0)
      media += t;
    else
      text.add(s);
  }
  std::int64_t tokens() const noexcept { return text.tokens() + media; }
};

// The SAX handler. nlohmann's SAX parser is iterative, so depth costs no stack; returning false
// from a callback stops the parse at once (used for too_deep).
class inspector {
 public:
  inspector(request_facts& facts, int max_depth) : f_(facts), max_depth_(max_depth) {}

  bool null() { return scalar(kind::null); }
  bool boolean(bool b) { return scalar(b ? kind::true_ : kind::false_); }
  bool number_integer(json::number_integer_t) { return scalar(kind::number); }  // negative only
  bool number_unsigned(json::number_unsigned_t v) {
    if (at_top_level() && v <= static_cast<json::number_unsigned_t>(std::numeric_limits<std::int64_t>::max())) {
      const auto n = static_cast<std::int64_t>(v);
      if (member_ == member::max_completion_tokens) max_completion_ = n;
      if (member_ == member::max_tokens) max_tokens_ = n;
      if (member_ == member::max_output_tokens) max_output_ = n;
      if (member_ == member::choices) choices_ = n;
    }
    if (in_hop() && hop_key_ == hop_member::max_tokens &&
        v <= static_cast<json::number_unsigned_t>(std::numeric_limits<std::int64_t>::max()))
      hop_.max_tokens = static_cast<std::int64_t>(v);
    if (member_ == member::prompt_or_ids && depth_ > 1) ++token_ids_;
    return scalar(kind::number);
  }
  bool number_float(json::number_float_t, const json::string_t&) { return scalar(kind::number); }
  bool binary(json::binary_t&) { return scalar(kind::other); }  // not produced by the JSON reader

  bool string(json::string_t& s) {
    if (depth_ >= 1 && (member_ == member::prompt_text || member_ == member::prompt_or_ids)) text_.add(s);
    if (ttl_key_ && s == "1h") f_.cache_control = 2;
    if (in_hop() && hop_key_ == hop_member::model) hop_.model = s;
    if (in_hop() && hop_key_ == hop_member::speed) hop_.fast = s == "fast";
    if (at_top_level()) {
      if (member_ == member::model) {
        f_.has_model = true;
        f_.model = s;
        model_bad_ = false;
      } else if (member_ == member::user) {
        f_.user = s;
      } else if (member_ == member::safety_identifier) {
        safety_id_ = s;
      } else if (is_pricing_hint(member_)) {
        pricing_hint(member_, s, f_);
      }
    }
    if (depth_ == 2 && member_ == member::metadata && metadata_user_key_) metadata_user_ = s;
    const bool ok = scalar(kind::string);  // (a top-level fallbacks value resets them first)
    if (at_top_level() && member_ == member::fallbacks) f_.default_fallbacks = s == "default";
    return ok;
  }

  bool key(json::string_t& k) {
    ttl_key_ = !cache_objects_.empty() && cache_objects_.back() == depth_ && k == "ttl";
    if (in_hop()) hop_key_ = classify_hop(k);
    if (at_top_level()) {
      member_ = classify(k);
      cache_key_ = member_ == member::cache_control;
    } else if (member_ == member::prompt_text || member_ == member::prompt_or_ids) {
      cache_key_ = k == "cache_control";
    } else if (depth_ == 2 && member_ == member::stream_options) {
      option_is_include_usage_ = k == "include_usage";
    } else if (depth_ == 2 && member_ == member::metadata) {
      metadata_user_key_ = k == "user_id";
    }
    return true;
  }

  bool start_object(std::size_t) {
    if (depth_ == 0) root_object_ = true;
    object_opening_ = true;
    const bool ok = open(kind::container);
    object_opening_ = false;
    return ok;
  }
  bool start_array(std::size_t) { return open(kind::container); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool parse_error(std::size_t position, const std::string&, const json::exception& ex) {
    error_position_ = position;
    // The lexer rejects "\ud800" not followed by a low surrogate (and a stray low one); its
    // message is the only place that says so.
    surrogate_error_ = std::string_view(ex.what()).find("surrogate U+") != std::string_view::npos;
    return false;
  }

  bool too_deep() const noexcept { return too_deep_; }
  bool root_object() const noexcept { return root_object_; }
  bool surrogate_error() const noexcept { return surrogate_error_; }
  std::size_t error_position() const noexcept { return error_position_; }

  // Fills what is known only at the end; a later duplicate member wins, as in most parsers.
  request_problem finish() {
    f_.max_tokens = max_completion_ ? max_completion_ : max_tokens_ ? max_tokens_ : max_output_;
    f_.choices = choices_count(choices_);
    if (f_.user.empty()) f_.user = !safety_id_.empty() ? std::move(safety_id_) : std::move(metadata_user_);
    f_.prompt_tokens_estimate = text_.tokens() + token_ids_;
    if (model_bad_) return request_problem::model_not_string;
    if (stream_bad_) return request_problem::stream_not_bool;
    return request_problem::none;
  }

 private:
  enum class kind : std::uint8_t { null, true_, false_, number, string, container, other };

  // A key, or a value directly under the root object.
  bool at_top_level() const noexcept { return root_object_ && depth_ == 1; }

  // A value (scalar or container) starts at the current position.
  void on_value(kind k) {
    // A cache_control's value: an object's "ttl" members are read (the fast path's caching()).
    if (cache_key_) {
      f_.cache_control = std::max<std::uint8_t>(f_.cache_control, 1);
      if (k == kind::container && object_opening_) cache_objects_.push_back(depth_ + 1);
      cache_key_ = false;
    }
    ttl_key_ = ttl_key_ && k == kind::string;
    if (root_object_ && member_ == member::fallbacks) fallbacks_value(k);
    if (at_top_level()) {
      switch (member_) {
        case member::model:
          if (k != kind::string) {
            f_.has_model = false;
            f_.model.clear();
            model_bad_ = true;
          }
          break;
        case member::stream:
          // null reads as "not streaming", as the OpenAI API itself accepts it.
          f_.stream = k == kind::true_;
          stream_bad_ = k != kind::true_ && k != kind::false_ && k != kind::null;
          break;
        case member::stream_options:
          f_.has_stream_options = true;
          f_.include_usage = false;
          option_is_include_usage_ = false;
          break;
        case member::user:
          if (k != kind::string) f_.user.clear();
          break;
        case member::safety_identifier:
          if (k != kind::string) safety_id_.clear();
          break;
        case member::metadata:  // a later duplicate replaces an earlier one
          metadata_user_.clear();
          metadata_user_key_ = false;
          break;
        case member::speed:
        case member::service_tier:
        case member::inference_geo:
          if (k != kind::string) pricing_hint(member_, {}, f_);
          break;
        default:
          break;
      }
    } else if (depth_ == 2 && member_ == member::stream_options && option_is_include_usage_) {
      f_.include_usage = k == kind::true_;
    } else if (depth_ == 2 && member_ == member::metadata && metadata_user_key_ && k != kind::string) {
      metadata_user_.clear();
    }
  }

  bool scalar(kind k) {
    on_value(k);
    return true;
  }

  bool open(kind k) {
    on_value(k);
    if (++depth_ > max_depth_) {
      too_deep_ = true;
      return false;
    }
    return true;
  }

  // A value under the top-level `fallbacks` (at the depth it starts at): the member itself, an
  // entry of its array, or an entry's member (strings and numbers: string(), number_unsigned()).
  void fallbacks_value(kind k) {
    if (depth_ == 1) {
      f_.fallbacks.clear();
      f_.default_fallbacks = false;
      fallbacks_array_ = k == kind::container && !object_opening_;
      hop_open_ = false;
    } else if (depth_ == 2 && fallbacks_array_ && k == kind::container && object_opening_) {
      hop_ = {};
      hop_open_ = true;
      hop_key_ = hop_member::other;
    } else if (in_hop()) {
      if (hop_key_ == hop_member::model && k != kind::string) hop_.model.clear();
      if (hop_key_ == hop_member::speed && k == kind::null) hop_.fast = false;
    }
  }
  // Inside a `fallbacks` entry's object (its keys and values).
  bool in_hop() const noexcept { return hop_open_ && depth_ == 3 && member_ == member::fallbacks; }

  bool close() {
    if (in_hop()) {
      if (!hop_.model.empty() && f_.fallbacks.size() < max_fallbacks) f_.fallbacks.push_back(std::move(hop_));
      hop_open_ = false;
    }
    if (depth_ == 2 && member_ == member::fallbacks) fallbacks_array_ = false;
    if (!cache_objects_.empty() && cache_objects_.back() == depth_) cache_objects_.pop_back();
    --depth_;
    return true;
  }

  request_facts& f_;
  const int max_depth_;
  int depth_ = 0;
  bool root_object_ = false;
  bool too_deep_ = false;
  bool surrogate_error_ = false;
  std::size_t error_position_ = 0;
  member member_ = member::other;
  bool option_is_include_usage_ = false;
  bool metadata_user_key_ = false;          // the value next read is metadata.user_id
  std::string safety_id_, metadata_user_;   // the user column's fallbacks (finish())
  bool cache_key_ = false;      // the value being read is a cache_control's
  bool ttl_key_ = false;        // the value being read is a "ttl" of a cache_control object
  bool object_opening_ = false;
  std::vector<int> cache_objects_;  // depths of the cache_control objects open
  bool fallbacks_array_ = false;    // the top-level fallbacks value being read is an array
  bool hop_open_ = false;           // one of its entries (an object) is being read: hop_
  hop_member hop_key_ = hop_member::other;
  request_facts::fallback_hop hop_;
  bool model_bad_ = false;
  bool stream_bad_ = false;
  std::optional<std::int64_t> max_completion_, max_tokens_, max_output_, choices_;
  prompt_tally text_;
  std::int64_t token_ids_ = 0;
};

// A body that is not a usable JSON object: no half-read field survives to be acted on.
void reject(request_facts& f, request_problem p, std::string detail) {
  f = request_facts{};
  f.problem = p;
  f.problem_detail = std::move(detail);
}

// The detail text of a problem found in an otherwise well-formed object.
void settle(request_facts& f, request_problem p) {
  f.problem = p;
  if (p == request_problem::model_not_string) f.problem_detail = "'model' must be a string";
  if (p == request_problem::stream_not_bool) f.problem_detail = "'stream' must be a boolean";
}

// The exact path: nlohmann's SAX parser, whose errors say which problem a bad body has. Used
// for every body the fast path turns down.
request_facts inspect_slow(std::string_view body, int max_depth) {
  request_facts f;
  inspector sax(f, max_depth);
  bool ok = false;
  try {
    ok = json::sax_parse(body.data(), body.data() + body.size(), &sax);
  } catch (const std::exception&) {
    // sax_parse reports errors through parse_error(); only bad_alloc could get here.
    reject(f, request_problem::malformed_json, "request body could not be parsed");
    return f;
  }

  if (sax.too_deep()) {
    reject(f, request_problem::too_deep,
           "request body nests deeper than " + std::to_string(max_depth) + " levels");
  } else if (!ok) {
    // A string with bad UTF-8 fails in the lexer; bytes >= 0x80 outside strings are a syntax
    // error first. Either way the body as a whole decides, so the client hears the real cause.
    if (!valid_utf8(body)) {
      reject(f, request_problem::invalid_utf8, "request body is not valid UTF-8");
    } else if (sax.surrogate_error()) {
      // "\ud800" alone is valid JSON syntax but names no character, so the string cannot be
      // represented in UTF-8; upstreams reject it too. Reported with the UTF-8 kind.
      reject(f, request_problem::invalid_utf8,
             "request body has an unpaired UTF-16 surrogate escape (\\uD800-\\uDFFF)");
    } else if (sax.error_position() > body.size()) {
      reject(f, request_problem::malformed_json, "request body is not valid JSON: unexpected end of input");
    } else {
      // nlohmann counts the offending byte 1-based; clients get its 0-based offset.
      reject(f, request_problem::malformed_json,
             "request body is not valid JSON: syntax error at byte " + std::to_string(std::max<std::size_t>(sax.error_position(), 1) - 1));
    }
  } else if (!sax.root_object()) {
    reject(f, request_problem::not_object, "request body must be a JSON object");
  } else {
    settle(f, sax.finish());
    f.prompt_estimated = true;
  }
  return f;
}

// The fast path: simdjson validates structure, UTF-8 (also in keys), escapes (a lone surrogate
// is an error) and depth in one pass, then only the top-level members that matter are read.
// Any parse error goes to the slow path, which names the problem. The DOM costs ~14 bytes of
// buffers per body byte; up to this size a parser is kept per thread for reuse.
constexpr std::size_t fast_max_bytes = std::size_t{1} << 20;
constexpr int fast_max_depth = 1024;

namespace dom = simdjson::dom;
using element_type = dom::element_type;

// nlohmann's number_unsigned: a non-negative integer literal. The DOM reads "-0" as the integer
// 0 as well (the SAX path counts it as negative), so a 0 sets `ambiguous`.
bool unsigned_integer(dom::element v, std::uint64_t& out, bool& ambiguous) noexcept {
  if (v.type() == element_type::UINT64) {  // above INT64_MAX
    out = v.get_uint64().value_unsafe();
    return true;
  }
  if (v.type() != element_type::INT64) return false;
  const std::int64_t n = v.get_int64().value_unsafe();
  if (n == 0) ambiguous = true;
  out = static_cast<std::uint64_t>(n);
  return n > 0;
}

struct fast_reader {
  prompt_tally text;
  std::int64_t token_ids = 0;
  bool ambiguous = false;  // the slow path must decide
  std::uint8_t cache_control = 0;  // request_facts::cache_control

  // A cache_control value: {"type": "ephemeral"} caches for 5 minutes, with "ttl": "1h" for an hour.
  void caching(dom::element v) noexcept {
    cache_control = std::max<std::uint8_t>(cache_control, 1);
    if (v.type() != element_type::OBJECT) return;
    const dom::object members = v.get_object().value_unsafe();
    for (const dom::key_value_pair m : members)
      if (m.key == "ttl" && m.value.type() == element_type::STRING && m.value.get_string().value_unsafe() == "1h")
        cache_control = 2;
  }

  // Every string value under a prompt-ish member counts; with `ids`, so does every nested
  // non-negative integer (token-id arrays). simdjson already bounded the depth.
  void tally(dom::element v, bool ids, bool nested) {
    switch (v.type()) {
      case element_type::STRING: text.add(v.get_string().value_unsafe()); break;
      case element_type::INT64:
      case element_type::UINT64: {
        std::uint64_t n = 0;
        if (ids && nested && unsigned_integer(v, n, ambiguous)) ++token_ids;
        break;
      }
      case element_type::ARRAY: {
        const dom::array items = v.get_array().value_unsafe();
        for (const dom::element item : items) tally(item, ids, true);
        break;
      }
      case element_type::OBJECT: {
        const dom::object members = v.get_object().value_unsafe();
        for (const dom::key_value_pair m : members) {
          if (m.key == "cache_control") caching(m.value);
          tally(m.value, ids, true);
        }
        break;
      }
      default: break;
    }
  }

  // The top-level `fallbacks` (a later duplicate replaces an earlier one): request_facts::fallbacks.
  void fallbacks(dom::element v, request_facts& f) {
    f.fallbacks.clear();
    f.default_fallbacks = v.type() == element_type::STRING && v.get_string().value_unsafe() == "default";
    if (v.type() != element_type::ARRAY) return;
    const dom::array entries = v.get_array().value_unsafe();
    for (const dom::element entry : entries) {
      if (entry.type() != element_type::OBJECT) continue;
      request_facts::fallback_hop hop;
      const dom::object members = entry.get_object().value_unsafe();
      for (const dom::key_value_pair m : members) {
        const element_type type = m.value.type();
        switch (classify_hop(m.key)) {
          case hop_member::model:
            hop.model = type == element_type::STRING ? std::string(m.value.get_string().value_unsafe()) : std::string();
            break;
          case hop_member::max_tokens: limit(m.value, hop.max_tokens); break;
          case hop_member::speed:
            if (type == element_type::STRING) hop.fast = m.value.get_string().value_unsafe() == "fast";
            if (type == element_type::NULL_VALUE) hop.fast = false;
            break;
          case hop_member::other: break;
        }
      }
      if (!hop.model.empty() && f.fallbacks.size() < max_fallbacks) f.fallbacks.push_back(std::move(hop));
    }
  }

  // A max-tokens member: set when the value is a non-negative integer that fits int64 (a
  // later duplicate of another type leaves it, as on the SAX path).
  void limit(dom::element v, std::optional<std::int64_t>& out) {
    std::uint64_t n = 0;
    if (unsigned_integer(v, n, ambiguous) && n <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      out = static_cast<std::int64_t>(n);
  }
};

// Fills f and returns true, or returns false when the slow path must take the body.
bool read_fast(dom::parser& parser, std::string_view body, bool estimate_prompt, request_facts& f);

bool inspect_fast(std::string_view body, int max_depth, bool estimate_prompt, request_facts& f) {
  if (max_depth < 1 || max_depth > fast_max_depth) return false;
  try {
    if (body.size() <= fast_max_bytes) {
      thread_local dom::parser parser;
      if (parser.max_depth() != static_cast<std::size_t>(max_depth) &&
          parser.allocate(std::max(parser.capacity(), body.size()), static_cast<std::size_t>(max_depth)) != simdjson::SUCCESS)
        return false;
      return read_fast(parser, body, estimate_prompt, f);
    }
    // A large body (images or files inline as base64): a parser of its own, freed when done, so
    // the thread does not keep ~14 bytes of buffers per byte of its largest body (mostly address
    // space: the pages the parse never touches are never backed). nlohmann's SAX path would read
    // it at ~13 ns a byte, 0.5 s of the I/O thread for 40 MB; this takes a twentieth of that.
    // Allocation failure: the slow path, as before.
    dom::parser big(body.size());
    if (big.allocate(body.size(), static_cast<std::size_t>(max_depth)) != simdjson::SUCCESS) return false;
    return read_fast(big, body, estimate_prompt, f);
  } catch (const std::exception&) {  // only allocation failure; the slow path reports it
    return false;
  }
}

bool read_fast(dom::parser& parser, std::string_view body, bool estimate_prompt, request_facts& f) {
  try {
    dom::element root;
    // realloc_if_needed: copies into the parser's reused padded buffer (simdjson reads past the end).
    if (parser.parse(body.data(), body.size(), true).get(root) != simdjson::SUCCESS) return false;
    if (root.type() != element_type::OBJECT) {
      reject(f, request_problem::not_object, "request body must be a JSON object");
      return true;
    }
    fast_reader r;
    bool model_bad = false, stream_bad = false;
    std::optional<std::int64_t> max_completion, max_tokens, max_output, choices;
    std::string_view safety_id, metadata_user;  // the user column's fallbacks
    const dom::object members = root.get_object().value_unsafe();
    for (const dom::key_value_pair m : members) {  // in order, so a later duplicate wins
      const element_type type = m.value.type();
      const member which = classify(m.key);
      switch (which) {
        case member::model:
          model_bad = type != element_type::STRING;
          f.has_model = !model_bad;
          f.model = model_bad ? std::string_view() : m.value.get_string().value_unsafe();
          break;
        case member::stream:
          // null reads as "not streaming", as the OpenAI API itself accepts it.
          f.stream = type == element_type::BOOL && m.value.get_bool().value_unsafe();
          stream_bad = type != element_type::BOOL && type != element_type::NULL_VALUE;
          break;
        case member::stream_options:
          f.has_stream_options = true;
          f.include_usage = false;
          if (type == element_type::OBJECT) {
            const dom::object options = m.value.get_object().value_unsafe();
            for (const dom::key_value_pair o : options) {
              if (o.key == "include_usage")
                f.include_usage = o.value.type() == element_type::BOOL && o.value.get_bool().value_unsafe();
            }
          }
          break;
        case member::user:
          f.user = type == element_type::STRING ? m.value.get_string().value_unsafe() : std::string_view();
          break;
        case member::safety_identifier:
          safety_id = type == element_type::STRING ? m.value.get_string().value_unsafe() : std::string_view();
          break;
        case member::metadata:
          metadata_user = {};
          if (type == element_type::OBJECT) {
            const dom::object metadata = m.value.get_object().value_unsafe();
            for (const dom::key_value_pair o : metadata)
              if (o.key == "user_id")
                metadata_user = o.value.type() == element_type::STRING ? o.value.get_string().value_unsafe() : std::string_view();
          }
          break;
        case member::speed:
        case member::service_tier:
        case member::inference_geo:
          pricing_hint(which, type == element_type::STRING ? m.value.get_string().value_unsafe() : std::string_view(), f);
          break;
        case member::max_completion_tokens: r.limit(m.value, max_completion); break;
        case member::max_tokens: r.limit(m.value, max_tokens); break;
        case member::max_output_tokens: r.limit(m.value, max_output); break;
        case member::choices: r.limit(m.value, choices); break;
        case member::prompt_text:
          if (estimate_prompt) r.tally(m.value, false, false);
          break;
        case member::prompt_or_ids:
          if (estimate_prompt) r.tally(m.value, true, false);
          break;
        case member::cache_control: r.caching(m.value); break;
        case member::fallbacks: r.fallbacks(m.value, f); break;
        case member::other: break;
      }
    }
    if (r.ambiguous) return false;
    f.max_tokens = max_completion ? max_completion : max_tokens ? max_tokens : max_output;
    f.choices = choices_count(choices);
    if (f.user.empty()) f.user = !safety_id.empty() ? safety_id : metadata_user;
    f.prompt_tokens_estimate = r.text.tokens() + r.token_ids;
    f.prompt_estimated = estimate_prompt;
    f.cache_control = r.cache_control;
    settle(f, model_bad ? request_problem::model_not_string
                        : stream_bad ? request_problem::stream_not_bool : request_problem::none);
    return true;
  } catch (const std::exception&) {  // only allocation failure; the slow path reports it
    return false;
  }
}

}  // namespace

// Rates, per payload (decoded bytes = 3/4 of the base64 text): an estimate for admission
// control and for calls the upstream reports no usage for, never a bill.
// - image: by its size in pixels when the header gives it (PNG, GIF, WebP, JPEG; image_tokens:
//   the most that GPT-4o's tiles, GPT-4.1-mini's patches or Anthropic's formula bill for it,
//   85-2,500), else 2,500, about the most the common vision models bill for one image at their
//   default detail (Anthropic ~width*height/750 after scaling to ~1.15 megapixels: <= ~1,600;
//   GPT-4.1-mini and o4-mini <= 1,536 patches x 1.62 = 2,488; GPT-4o high detail <= ~1,450).
//   A 200 x 200 thumbnail is 255 (GPT-4o's one tile), not 2,500: ten of them no longer reserve
//   25,000 tokens. `detail: "low"` is not read (85 at GPT-4o, so the estimate errs high).
//   GPT-4o-mini multiplies its image tokens (~25,000 for 1024x1024) so that the price matches
//   GPT-4o's; the estimate's cost is then low by that factor, its tokens are not.
// - PDF: one token per 16 bytes. Anthropic bills a page as its text (1,500-3,000 tokens) plus an
//   image of it, and a page is typically 20-100 KB of PDF.
// - audio and video: one token per 1,600 bytes (GPT-4o's ~10 audio tokens a second, at 128 kbit/s).
// - base64 text (a text/* or application/json data: URL): as the text it decodes to, 1 per 4 bytes.
// - anything else in a base64 data: URL: as audio. Bare base64 of no known type is text.
std::int64_t binary_payload_tokens(std::string_view s) noexcept {
  std::string_view payload;
  medium m = medium::other;
  if (s.size() > 5 && (s[0] | 0x20) == 'd' && (s[1] | 0x20) == 'a' && (s[2] | 0x20) == 't' && (s[3] | 0x20) == 'a' &&
      s[4] == ':') {
    // data:[<mime>][;param=value]*;base64,<data>. Without ";base64," the data is URL-encoded text.
    const std::size_t comma = s.substr(0, 256).find(',');
    if (comma == std::string_view::npos) return -1;
    const std::string_view meta = s.substr(5, comma - 5);
    if (meta.size() < 7 || meta.substr(meta.size() - 7) != ";base64") return -1;
    payload = s.substr(comma + 1);
    m = medium_of_mime(meta.substr(0, meta.find(';')));
  } else {
    if (s.size() < 256 || !all_base64(s)) return -1;
    payload = s;
  }
  // The first bytes: the file type, and an image's size (except a JPEG's, further in).
  std::array<unsigned char, 32> head_bytes{};
  const std::span<const unsigned char> head(head_bytes.data(), base64_prefix(payload, head_bytes));
  if (m == medium::other) {
    m = medium_of_bytes(head);
    // Bare base64 counts only as a known file type: a long run of letters and digits may be
    // text (a DNA sequence, a hex digest) and is tallied as such.
    if (m == medium::other && payload.data() == s.data()) return -1;
  }
  std::size_t chars = payload.size();
  while (chars > 0 && payload[chars - 1] == '=') --chars;
  const auto bytes = static_cast<std::int64_t>(chars / 4 * 3 + chars % 4 * 3 / 4);
  switch (m) {
    case medium::image: {
      // A JPEG's size can sit after its EXIF and ICC blocks (up to ~64 KB each): there 96 KiB
      // are decoded at most (~0.1 ms); without the memory, the size stays unknown.
      std::span<const unsigned char> header = head;
      std::vector<unsigned char> jpeg;
      if (bytes_at(head, 0, "\xFF\xD8")) {
        try {
          jpeg.resize(std::min<std::size_t>(static_cast<std::size_t>(bytes), 96 * 1024));
          header = std::span<const unsigned char>(jpeg.data(), base64_prefix(payload, jpeg));
        } catch (const std::bad_alloc&) {
          header = {};
        }
      }
      const auto size = image_size(header);
      return size ? image_tokens(*size) : 2500;
    }
    case medium::pdf: return std::max<std::int64_t>(1, bytes / 16);
    case medium::text: return (bytes + 3) / 4;
    case medium::audio_video:
    case medium::other: return std::max<std::int64_t>(1, bytes / 1600);
  }
  return -1;
}

request_facts inspect_request(std::string_view body, int max_depth, bool estimate_prompt) {
  if (body.empty()) {
    request_facts f;
    reject(f, request_problem::malformed_json, "request body is empty");
    return f;
  }
  if (request_facts f; inspect_fast(body, max_depth, estimate_prompt, f)) return f;
  // nlohmann's lexer stops at a NUL byte as if the input ended there: a body like
  // `{"model":"a"}\0{"model":"b"}` would be read as model a and forwarded whole. A raw NUL is
  // never valid JSON.
  if (body.find('\0') != std::string_view::npos) {
    request_facts f;
    reject(f, request_problem::malformed_json, "request body contains a NUL byte");
    return f;
  }
  return inspect_slow(body, max_depth);
}

namespace {

// ---- Byte-exact edits of top-level members (the two rewrites) ----
//
// A walk over an object's members that skips their values without parsing them: strings by
// memchr for the closing quote, containers by counting brackets outside strings. A 40 MB body of
// inline images is walked in a few milliseconds, and everything but the edited value is sent as
// the client wrote it (nlohmann's DOM took ~0.7 s for the same body and respelled numbers and
// escapes). Anything the walk does not expect returns nullopt: the caller falls back to the DOM.

constexpr std::string_view json_ws = " \t\r\n";

std::size_t skip_ws(std::string_view s, std::size_t i) noexcept {
  while (i < s.size() && json_ws.find(s[i]) != std::string_view::npos) ++i;
  return i;
}

// s[i] is '"': the index just past the closing quote, or npos.
std::size_t skip_string(std::string_view s, std::size_t i) noexcept {
  for (std::size_t from = i + 1;;) {
    const void* q = from < s.size() ? std::memchr(s.data() + from, '"', s.size() - from) : nullptr;
    if (!q) return std::string_view::npos;
    const std::size_t at = static_cast<std::size_t>(static_cast<const char*>(q) - s.data());
    std::size_t slashes = 0;
    while (at - slashes > i + 1 && s[at - slashes - 1] == '\\') ++slashes;
    if (slashes % 2 == 0) return at + 1;
    from = at + 1;
  }
}

// s[i] starts a value: the index just past it, or npos.
std::size_t skip_value(std::string_view s, std::size_t i) noexcept {
  if (i >= s.size()) return std::string_view::npos;
  if (s[i] == '"') return skip_string(s, i);
  if (s[i] == '{' || s[i] == '[') {
    std::size_t depth = 0;
    while (i < s.size()) {
      const char c = s[i];
      if (c == '"') {
        i = skip_string(s, i);
        if (i == std::string_view::npos) return i;
        continue;
      }
      if (c == '{' || c == '[') ++depth;
      if (c == '}' || c == ']') {
        if (--depth == 0) return i + 1;
      }
      ++i;
    }
    return std::string_view::npos;
  }
  while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']' && json_ws.find(s[i]) == std::string_view::npos) ++i;
  return i;
}

struct member_span {
  std::string_view key;     // as written, without its quotes
  std::size_t value_begin;  // offsets into the walked text
  std::size_t value_end;
};

struct object_walk {
  std::size_t open = 0;   // offset of '{'
  std::size_t close = 0;  // offset of '}'
  std::vector<member_span> members;
};

// The members of the object at s[i] (after whitespace); with `whole`, nothing but whitespace may
// follow it. nullopt when the text is not an object the walk understands.
std::optional<object_walk> walk_object(std::string_view s, std::size_t i, bool whole) {
  object_walk w;
  i = skip_ws(s, i);
  if (i >= s.size() || s[i] != '{') return std::nullopt;
  w.open = i;
  i = skip_ws(s, i + 1);
  if (i < s.size() && s[i] == '}') {
    w.close = i;
  } else {
    for (;;) {
      if (i >= s.size() || s[i] != '"') return std::nullopt;
      const std::size_t key_end = skip_string(s, i);
      if (key_end == std::string_view::npos) return std::nullopt;
      member_span m{s.substr(i + 1, key_end - i - 2), 0, 0};
      i = skip_ws(s, key_end);
      if (i >= s.size() || s[i] != ':') return std::nullopt;
      m.value_begin = skip_ws(s, i + 1);
      m.value_end = skip_value(s, m.value_begin);
      if (m.value_end == std::string_view::npos || m.value_end == m.value_begin) return std::nullopt;
      w.members.push_back(m);
      i = skip_ws(s, m.value_end);
      if (i < s.size() && s[i] == ',') {
        i = skip_ws(s, i + 1);
        continue;
      }
      if (i < s.size() && s[i] == '}') {
        w.close = i;
        break;
      }
      return std::nullopt;
    }
  }
  if (whole && skip_ws(s, w.close + 1) != s.size()) return std::nullopt;
  return w;
}

// A key written with an escape ("mod\u0065l") is compared by the DOM path instead.
bool has_escape(const object_walk& w) {
  return std::any_of(w.members.begin(), w.members.end(),
                     [](const member_span& m) { return m.key.find('\\') != std::string_view::npos; });
}

// Copies s with the given [begin, end) ranges replaced (ranges in order, not overlapping).
struct splice {
  std::size_t begin, end;
  std::string text;
};
std::string with_edits(std::string_view s, const std::vector<splice>& edits) {
  std::size_t size = s.size();
  for (const auto& e : edits) size = size - (e.end - e.begin) + e.text.size();
  std::string out;
  out.reserve(size);
  std::size_t at = 0;
  for (const auto& e : edits) {
    out.append(s.substr(at, e.begin - at)).append(e.text);
    at = e.end;
  }
  out.append(s.substr(at));
  return out;
}

// The body (a BOM skipped, as the parser allows) as a walked top-level object without escaped keys.
std::optional<object_walk> walk_body(std::string_view body) {
  const std::size_t start = body.starts_with("\xEF\xBB\xBF") ? 3 : 0;
  auto w = walk_object(body, start, true);
  if (!w || has_escape(*w)) return std::nullopt;
  return w;
}

// stream_options.include_usage = true on every top-level stream_options member.
std::optional<std::string> set_include_usage(std::string_view body) {
  auto w = walk_body(body);
  if (!w) return std::nullopt;
  std::vector<splice> edits;
  for (const member_span& m : w->members) {
    if (m.key != "stream_options") continue;
    const std::string_view value = body.substr(m.value_begin, m.value_end - m.value_begin);
    if (value.front() != '{') {  // null or not an object: an object with the one option
      edits.push_back({m.value_begin, m.value_end, R"({"include_usage":true})"});
      continue;
    }
    auto options = walk_object(value, 0, true);
    if (!options || has_escape(*options)) return std::nullopt;
    bool found = false;
    for (const member_span& o : options->members) {
      if (o.key != "include_usage") continue;
      edits.push_back({m.value_begin + o.value_begin, m.value_begin + o.value_end, "true"});
      found = true;
    }
    if (!found) {  // last, as the DOM appended it
      const std::size_t before = m.value_begin + options->close;
      edits.push_back({before, before, options->members.empty() ? R"("include_usage":true)" : R"(,"include_usage":true)"});
    }
  }
  if (edits.empty()) return std::nullopt;
  std::sort(edits.begin(), edits.end(), [](const splice& a, const splice& b) { return a.begin < b.begin; });
  return with_edits(body, edits);
}

// Every top-level `model` set to model (a JSON string); added first when there is none.
std::optional<std::string> set_model(std::string_view body, const std::string& model_json) {
  auto w = walk_body(body);
  if (!w) return std::nullopt;
  std::vector<splice> edits;
  for (const member_span& m : w->members)
    if (m.key == "model") edits.push_back({m.value_begin, m.value_end, model_json});
  if (edits.empty())
    edits.push_back({w->open + 1, w->open + 1, "\"model\":" + model_json + (w->members.empty() ? "" : ",")});
  return with_edits(body, edits);
}

}  // namespace

std::string add_include_usage(std::string_view body, const request_facts& facts) {
  try {
    if (facts.problem != request_problem::none) return std::string(body);
    if (!facts.has_stream_options) {
      // Byte-exact splice after the opening brace: signatures, key order and number spelling of
      // everything the client sent stay as they were.
      constexpr std::string_view ws = " \t\r\n";
      const std::size_t start = body.starts_with("\xEF\xBB\xBF") ? 3 : 0;  // a BOM, as the parser allows
      const auto open = body.find_first_not_of(ws, start);
      if (open == std::string_view::npos || body[open] != '{') return std::string(body);
      const auto next = body.find_first_not_of(ws, open + 1);
      const bool empty = next != std::string_view::npos && body[next] == '}';
      constexpr std::string_view member = R"("stream_options":{"include_usage":true})";
      std::string out;
      out.reserve(body.size() + member.size() + 1);
      out.append(body.substr(0, open + 1)).append(member);
      if (!empty) out.push_back(',');
      out.append(body.substr(open + 1));
      return out;
    }
    if (facts.include_usage) return std::string(body);
    // The client sent stream_options without include_usage: set it in place, byte-exact.
    if (auto edited = set_include_usage(body)) return std::move(*edited);
    // What the walk does not take (an escaped key): ordered_json keeps the members in order.
    auto doc = nlohmann::ordered_json::parse(body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) return std::string(body);
    auto& options = doc["stream_options"];
    if (!options.is_object()) options = nlohmann::ordered_json::object();
    options["include_usage"] = true;
    return doc.dump();
  } catch (...) {
    return std::string(body);
  }
}

}  // namespace tollgate

namespace tollgate {

std::string replace_model(std::string_view body, std::string_view model, const request_facts& facts) {
  try {
    // A routing rewrite or a spend-guard reroute: only the value of `model` changes, in place.
    // The walk trusts the body to be JSON: the facts say it was read without a problem.
    if (facts.problem != request_problem::none) return std::string(body);
    if (auto edited = set_model(body, nlohmann::json(std::string(model)).dump())) return std::move(*edited);
    // What the walk does not take (not an object, an escaped key): ordered_json keeps the order.
    auto doc = nlohmann::ordered_json::parse(body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) return std::string(body);
    doc["model"] = std::string(model);
    return doc.dump();
  } catch (...) {
    return std::string(body);
  }
}

}  // namespace tollgate

namespace tollgate {

namespace {

// The value of parameter `name` in a header value `type; a=b; name="v"` ("" when absent).
std::string_view header_param(std::string_view value, std::string_view name) noexcept {
  std::size_t i = value.find(';');
  while (i != std::string_view::npos) {
    const std::size_t eq = value.find('=', i + 1);
    if (eq == std::string_view::npos) return {};
    const std::string_view key = trim_ows(value.substr(i + 1, eq - i - 1));
    std::size_t v = eq + 1;
    while (v < value.size() && (value[v] == ' ' || value[v] == '\t')) ++v;
    std::string_view found;
    std::size_t next;
    if (v < value.size() && value[v] == '"') {  // a quoted value may hold ';'
      const std::size_t close = value.find('"', v + 1);
      if (close == std::string_view::npos) return {};
      found = value.substr(v + 1, close - v - 1);
      next = value.find(';', close);
    } else {
      next = value.find(';', v);
      found = trim_ows(value.substr(v, next == std::string_view::npos ? std::string_view::npos : next - v));
    }
    if (iequals(key, name)) return found;
    i = next;
  }
  return {};
}

}  // namespace

speech_facts speech_request_of(std::string_view body) {
  speech_facts f;
  const auto j = nlohmann::json::parse(body.begin(), body.end(), nullptr, false);
  if (!j.is_object()) return f;
  if (const auto it = j.find("input"); it != j.end() && it->is_string()) {
    const std::string& input = it->get_ref<const std::string&>();
    for (const char c : input) f.characters += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    f.text_tokens += estimate_tokens(input);
  }
  if (const auto it = j.find("instructions"); it != j.end() && it->is_string())
    f.text_tokens += estimate_tokens(it->get_ref<const std::string&>());
  if (const auto it = j.find("response_format"); it != j.end() && it->is_string() && it->get_ref<const std::string&>().size() <= 16)
    f.format = it->get<std::string>();
  return f;
}

bool is_form_data(std::string_view content_type) noexcept {
  return iequals(trim_ows(content_type.substr(0, content_type.find(';'))), "multipart/form-data");
}

form_facts inspect_form(std::string_view body, std::string_view content_type) {
  form_facts f;
  if (!is_form_data(content_type)) return f;
  const std::string_view boundary = header_param(content_type, "boundary");
  if (boundary.empty() || boundary.size() > 200) return f;
  const std::string delim = "--" + std::string(boundary);
  const std::string next_delim = "\r\n" + delim;
  constexpr std::size_t big_part = 256 * 1024, window = 64 * 1024, max_head = 4096;
  std::size_t pos = body.starts_with(delim) ? 0 : body.find(next_delim);
  if (pos == std::string_view::npos) return f;
  if (pos != 0) pos += 2;
  // Every part is looked at (a form has a handful; large ones are skipped as said above).
  for (;;) {
    pos += delim.size();
    if (body.substr(pos, 2) == "--") break;  // the closing delimiter
    const std::size_t head_start = body.find("\r\n", pos);
    if (head_start == std::string_view::npos) break;
    const std::size_t head_end = body.substr(0, std::min(body.size(), head_start + max_head)).find("\r\n\r\n", head_start);
    if (head_end == std::string_view::npos) break;
    // The part's name, from its Content-Disposition.
    std::string_view name;
    for (std::string_view head = body.substr(head_start + 2, head_end - head_start - 2); !head.empty();) {
      const std::size_t eol = head.find("\r\n");
      const std::string_view line = head.substr(0, eol);
      const std::size_t colon = line.find(':');
      if (colon != std::string_view::npos && iequals(trim_ows(line.substr(0, colon)), "content-disposition"))
        name = header_param(line.substr(colon + 1), "name");
      if (eol == std::string_view::npos) break;
      head.remove_prefix(eol + 2);
    }
    const std::size_t content = head_end + 4;
    const bool media_field = name == "size" || name == "quality" || name == "seconds" || name == "n";
    const bool wanted = name == "model" || name == "stream" || media_field;
    std::size_t end;
    if (wanted || body.size() - content <= big_part) {
      end = body.find(next_delim, content);
    } else {
      end = body.substr(0, content + window).find(next_delim, content);
      if (end == std::string_view::npos) end = body.find(next_delim, std::max(content, body.size() - window));
    }
    if (end == std::string_view::npos) break;
    const std::string_view value = body.substr(content, end - content);
    if (name == "model" && !f.has_model && value.size() <= 256) {
      f.has_model = true;
      f.model = std::string(value);
      f.model_at = content;
      f.model_len = value.size();
    } else if (name == "stream") {
      f.stream = iequals(trim_ows(value), "true");
    } else if (media_field && value.size() <= 64) {
      (name == "size" ? f.size : name == "quality" ? f.quality : name == "seconds" ? f.seconds : f.n) =
          std::string(trim_ows(value));
    }
    pos = end + 2;
  }
  return f;
}

form_facts inspect_form_ends(std::string_view head, std::string_view tail, std::uint64_t size,
                             std::string_view content_type) {
  if (tail.empty()) return inspect_form(head, content_type);
  // The joined bytes are a form whose one large part (the file) lost its middle: the boundary
  // never occurs inside a part, so every part on either side is found as in the whole body.
  std::string joined;
  joined.reserve(head.size() + tail.size());
  joined.append(head).append(tail);
  form_facts f = inspect_form(joined, content_type);
  if (f.has_model && f.model_at >= head.size()) {
    f.model_at += static_cast<std::size_t>(size - joined.size());
  } else if (f.has_model && f.model_at + f.model_len > head.size()) {
    f.has_model = false;  // across the seam: not a value of the body
    f.model.clear();
  }
  return f;
}

}  // namespace tollgate
