// Request-body inspection: a simdjson pass that validates the body and picks out the few fields
// the relay needs (nlohmann SAX for errors and odd cases), and the include_usage rewrite.
#include "core/request_inspect.hpp"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <simdjson.h>

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
  max_completion_tokens,
  max_tokens,
  max_output_tokens,
  prompt_text,      // messages, system, instructions, tools: strings count
  prompt_or_ids,    // prompt, input: strings count, and so do token-id arrays ([1234, 5678])
};

member classify(std::string_view k) noexcept {
  if (k == "model") return member::model;
  if (k == "stream") return member::stream;
  if (k == "stream_options") return member::stream_options;
  if (k == "user") return member::user;
  if (k == "max_completion_tokens") return member::max_completion_tokens;
  if (k == "max_tokens") return member::max_tokens;
  if (k == "max_output_tokens") return member::max_output_tokens;
  if (k == "messages" || k == "system" || k == "instructions" || k == "tools") return member::prompt_text;
  if (k == "prompt" || k == "input") return member::prompt_or_ids;
  return member::other;
}

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
    }
    if (member_ == member::prompt_or_ids && depth_ > 1) ++token_ids_;
    return scalar(kind::number);
  }
  bool number_float(json::number_float_t, const json::string_t&) { return scalar(kind::number); }
  bool binary(json::binary_t&) { return scalar(kind::other); }  // not produced by the JSON reader

  bool string(json::string_t& s) {
    if (depth_ >= 1 && (member_ == member::prompt_text || member_ == member::prompt_or_ids)) text_.add(s);
    if (at_top_level()) {
      if (member_ == member::model) {
        f_.has_model = true;
        f_.model = s;
        model_bad_ = false;
      } else if (member_ == member::user) {
        f_.user = s;
      }
    }
    return scalar(kind::string);
  }

  bool key(json::string_t& k) {
    if (at_top_level()) {
      member_ = classify(k);
    } else if (depth_ == 2 && member_ == member::stream_options) {
      option_is_include_usage_ = k == "include_usage";
    }
    return true;
  }

  bool start_object(std::size_t) {
    if (depth_ == 0) root_object_ = true;
    return open(kind::container);
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
        default:
          break;
      }
    } else if (depth_ == 2 && member_ == member::stream_options && option_is_include_usage_) {
      f_.include_usage = k == kind::true_;
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

  bool close() {
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
  bool model_bad_ = false;
  bool stream_bad_ = false;
  std::optional<std::int64_t> max_completion_, max_tokens_, max_output_;
  text_tally text_;
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
// buffers per body byte, kept per thread for reuse, hence the size cap.
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
  text_tally text;
  std::int64_t token_ids = 0;
  bool ambiguous = false;  // the slow path must decide

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
        for (const dom::key_value_pair m : members) tally(m.value, ids, true);
        break;
      }
      default: break;
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
bool inspect_fast(std::string_view body, int max_depth, bool estimate_prompt, request_facts& f) {
  if (body.size() > fast_max_bytes || max_depth < 1 || max_depth > fast_max_depth) return false;
  try {
    thread_local dom::parser parser;
    if (parser.max_depth() != static_cast<std::size_t>(max_depth) &&
        parser.allocate(std::max(parser.capacity(), body.size()), static_cast<std::size_t>(max_depth)) != simdjson::SUCCESS)
      return false;
    dom::element root;
    // realloc_if_needed: copies into the parser's reused padded buffer (simdjson reads past the end).
    if (parser.parse(body.data(), body.size(), true).get(root) != simdjson::SUCCESS) return false;
    if (root.type() != element_type::OBJECT) {
      reject(f, request_problem::not_object, "request body must be a JSON object");
      return true;
    }
    fast_reader r;
    bool model_bad = false, stream_bad = false;
    std::optional<std::int64_t> max_completion, max_tokens, max_output;
    const dom::object members = root.get_object().value_unsafe();
    for (const dom::key_value_pair m : members) {  // in order, so a later duplicate wins
      const element_type type = m.value.type();
      switch (classify(m.key)) {
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
        case member::max_completion_tokens: r.limit(m.value, max_completion); break;
        case member::max_tokens: r.limit(m.value, max_tokens); break;
        case member::max_output_tokens: r.limit(m.value, max_output); break;
        case member::prompt_text:
          if (estimate_prompt) r.tally(m.value, false, false);
          break;
        case member::prompt_or_ids:
          if (estimate_prompt) r.tally(m.value, true, false);
          break;
        case member::other: break;
      }
    }
    if (r.ambiguous) return false;
    f.max_tokens = max_completion ? max_completion : max_tokens ? max_tokens : max_output;
    f.prompt_tokens_estimate = r.text.tokens() + r.token_ids;
    f.prompt_estimated = estimate_prompt;
    settle(f, model_bad ? request_problem::model_not_string
                        : stream_bad ? request_problem::stream_not_bool : request_problem::none);
    return true;
  } catch (const std::exception&) {  // only allocation failure; the slow path reports it
    return false;
  }
}

}  // namespace

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
    // Rare: the client sent stream_options without include_usage. ordered_json keeps the
    // members in the client's order.
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

std::string replace_model(std::string_view body, std::string_view model) {
  try {
    // Rare (a routing rewrite or a spend-guard reroute): ordered_json keeps the client's member
    // order; only `model` changes. A NUL byte would end nlohmann's input early: not JSON.
    if (body.find('\0') != std::string_view::npos) return std::string(body);
    auto doc = nlohmann::ordered_json::parse(body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) return std::string(body);
    doc["model"] = std::string(model);
    return doc.dump();
  } catch (...) {
    return std::string(body);
  }
}

}  // namespace tollgate
