// libFuzzer target: request-body inspection and the two body rewrites (core/request_inspect).
// The first byte picks the model replace_model() writes; the rest is a client's request body.
//
// Invariants: the facts are consistent with the problem (a rejected body carries no half-read
// field and says why; an accepted one says nothing); the simdjson fast path and the nlohmann SAX
// path agree field by field (a max_depth above the fast path's limit forces the slow one); the
// depth limit is exact; add_include_usage() on an accepted body gives JSON whose
// stream_options.include_usage is true and whose other facts are unchanged; replace_model() sets
// `model` and nothing else.
#include <nlohmann/json.hpp>

#include <string>

#include "core/error.hpp"
#include "core/request_inspect.hpp"
#include "fuzz_common.hpp"

namespace {

using tollgate::request_facts;
using tollgate::request_problem;

constexpr int proxy_depth = 128;     // what client_session uses (the default)
constexpr int slow_path_depth = 1025;  // above the fast path's limit (1024): nlohmann SAX only

bool same_fields(const request_facts& a, const request_facts& b) {
  return a.problem == b.problem && a.problem_detail == b.problem_detail && a.has_model == b.has_model &&
         a.model == b.model && a.stream == b.stream && a.has_stream_options == b.has_stream_options &&
         a.include_usage == b.include_usage && a.user == b.user && a.max_tokens == b.max_tokens &&
         a.prompt_tokens_estimate == b.prompt_tokens_estimate && a.fast == b.fast && a.priority == b.priority &&
         a.geo_us == b.geo_us && a.cache_control == b.cache_control && a.fallbacks == b.fallbacks &&
         a.default_fallbacks == b.default_fallbacks;
}

// The facts other than the stream options, which add_include_usage() is allowed to change. A
// rewrite through nlohmann's DOM (`dom`) keeps one of duplicate members and spells "-0" as "0", so
// the prompt estimate and max_tokens may move then; the rest may not.
bool same_call(const request_facts& a, const request_facts& b, bool dom) {
  return a.problem == b.problem && a.has_model == b.has_model && a.model == b.model && a.stream == b.stream &&
         a.user == b.user &&
         (dom || (a.max_tokens == b.max_tokens && a.prompt_tokens_estimate == b.prompt_tokens_estimate));
}

void check_consistent(const request_facts& f) {
  switch (f.problem) {
    case request_problem::none:
      FUZZ_CHECK(f.problem_detail.empty());
      FUZZ_CHECK(f.has_model || f.model.empty());
      break;
    case request_problem::model_not_string:
      FUZZ_CHECK(!f.has_model && f.model.empty());
      break;
    case request_problem::stream_not_bool:
      break;
    default:
      // A body that could not be read at all: no half-read field survives to be acted on.
      FUZZ_CHECK(!f.has_model && f.model.empty() && !f.stream && !f.has_stream_options && !f.include_usage &&
                 f.user.empty() && !f.max_tokens && f.prompt_tokens_estimate == 0);
  }
  if (f.problem != request_problem::none) {
    // The client is told why, in an error body that must stay valid JSON.
    FUZZ_CHECK(!f.problem_detail.empty());
    FUZZ_CHECK(nlohmann::json::accept(tollgate::error_body(tollgate::errc::invalid_json, f.problem_detail)));
  }
  FUZZ_CHECK(!f.include_usage || f.has_stream_options);
  FUZZ_CHECK(f.prompt_tokens_estimate >= 0);
  FUZZ_CHECK(!f.max_tokens || *f.max_tokens >= 0);
}

// Nesting depth of a well-formed body, or -1 when it is not JSON at all.
int depth_of(const request_facts& slow, std::string_view body) {
  if (slow.problem == request_problem::malformed_json || slow.problem == request_problem::invalid_utf8) return -1;
  return fuzz::json_depth(body);
}

void check_rewrites(std::string_view body, const request_facts& f, std::string_view model) {
  const std::string with_usage = tollgate::add_include_usage(body, f);
  if (f.problem != request_problem::none) {
    FUZZ_CHECK(with_usage == body);  // never edits a body it could not read
  } else {
    const auto again = tollgate::inspect_request(with_usage, slow_path_depth);
    FUZZ_CHECK(again.problem == request_problem::none);
    FUZZ_CHECK(again.has_stream_options && again.include_usage);
    FUZZ_CHECK(same_call(again, f, f.has_stream_options));
    if (f.include_usage) FUZZ_CHECK(with_usage == body);
    if (fuzz::json_depth(with_usage) <= 200) {  // nlohmann's DOM recurses on dump/compare
      const auto doc = nlohmann::json::parse(with_usage, nullptr, false);
      FUZZ_CHECK(doc.is_object());
      FUZZ_CHECK(doc["stream_options"]["include_usage"] == true);
    }
  }

  const std::string renamed = tollgate::replace_model(body, model, f);  // as the proxy calls it
  // Not JSON, not an object: nothing to rename (a too-deep object still is one; the proxy only
  // renames accepted bodies).
  if (f.problem == request_problem::malformed_json || f.problem == request_problem::not_object ||
      f.problem == request_problem::invalid_utf8) {
    FUZZ_CHECK(renamed == body);
    return;
  }
  if (f.problem != request_problem::none || renamed == body) return;  // e.g. a dump() that failed
  const auto after = tollgate::inspect_request(renamed, slow_path_depth);
  FUZZ_CHECK(after.problem == request_problem::none);
  FUZZ_CHECK(after.has_model && after.model == model);
  FUZZ_CHECK(after.stream == f.stream && after.include_usage == f.include_usage && after.user == f.user);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::input in(data, size);
  static constexpr std::string_view models[] = {"gpt-4.1-mini", "claude-sonnet-4-5", "", "m\"o\\d\u00e9l\n"};
  const std::string_view model = models[in.byte() % 4];
  const std::string_view body = in.rest();

  const request_facts fast = tollgate::inspect_request(body);  // as the proxy calls it
  const request_facts slow = tollgate::inspect_request(body, slow_path_depth);
  check_consistent(fast);
  check_consistent(slow);

  // Finding #6 (findings/README.md, fixed): nlohmann's lexer reads a NUL byte as the end of the
  // input, so `{"model":"a"}\0<anything>` was accepted as that object and forwarded whole. A raw
  // NUL is never valid JSON (not even inside a string): such a body is refused. The checks below
  // look at the body as the readers see it: up to the first NUL.
  const auto nul = body.find('\0');
  if (nul != std::string_view::npos) FUZZ_CHECK(fast.problem != request_problem::none);
  const std::string_view seen = body.substr(0, nul);

  // The depth limit is exact: deeper than 128 levels is too_deep, 128 is fine.
  const int depth = depth_of(slow, seen);
  if (depth >= 0 && slow.problem != request_problem::too_deep &&
      (fast.problem == request_problem::too_deep) != (depth > proxy_depth)) {
    std::fprintf(stderr, "depth %d: fast problem %d '%s', slow problem %d '%s'\n", depth,
                 static_cast<int>(fast.problem), fast.problem_detail.c_str(), static_cast<int>(slow.problem),
                 slow.problem_detail.c_str());
    FUZZ_CHECK((fast.problem == request_problem::too_deep) == (depth > proxy_depth));
  }
  // Both readers give one answer for whatever the proxy accepts.
  if (fast.problem != request_problem::too_deep && slow.problem != request_problem::too_deep) {
    FUZZ_CHECK(same_fields(fast, slow));
  }
  // As the proxy calls it when no admission control reads the prompt estimate: every other fact
  // is the same, and an estimate it did compute is the same too.
  request_facts untallied = tollgate::inspect_request(body, proxy_depth, false);
  if (fast.problem == request_problem::none) FUZZ_CHECK(fast.prompt_estimated);
  // (The prompt caching asked for is read with the tally: request_facts::cache_control.)
  if (!untallied.prompt_estimated) {
    untallied.prompt_tokens_estimate = fast.prompt_tokens_estimate;
    untallied.cache_control = fast.cache_control;
  }
  FUZZ_CHECK(same_fields(untallied, fast));
  check_rewrites(body, fast, model);

  // The same bytes as a multipart form (audio, image edits, videos) and as a speech request:
  // bounded fields, no crash, whatever the parts look like.
  const auto form = tollgate::inspect_form(body, "multipart/form-data; boundary=b");
  FUZZ_CHECK(form.model.size() <= 256);
  FUZZ_CHECK(form.has_model || form.model.empty());
  FUZZ_CHECK(form.size.size() <= 64 && form.quality.size() <= 64 && form.seconds.size() <= 64 && form.n.size() <= 64);
  // The value a rewrite replaces is the model's bytes in the body.
  FUZZ_CHECK(!form.has_model || body.substr(form.model_at, form.model_len) == form.model);
  // A stored form read from its two ends (a window of a third of the body each): a model found
  // lies at its offset in the whole body.
  if (body.size() >= 3) {
    const std::size_t w = body.size() / 3;
    const auto ends = tollgate::inspect_form_ends(body.substr(0, w), body.substr(body.size() - w), body.size(),
                                                  "multipart/form-data; boundary=b");
    FUZZ_CHECK(!ends.has_model || body.substr(ends.model_at, ends.model_len) == ends.model);
  }
  const auto speech = tollgate::speech_request_of(body);
  FUZZ_CHECK(speech.characters >= 0 && speech.text_tokens >= 0 && speech.format.size() <= 16);
  FUZZ_CHECK(speech.characters <= static_cast<std::int64_t>(body.size()));
  return 0;
}
