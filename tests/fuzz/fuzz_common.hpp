// Shared helpers of the libFuzzer targets: an invariant check that crashes loudly (libFuzzer keeps
// the input), a byte reader that lets the fuzzer steer choices, and token-count invariants.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/usage_record.hpp"

// A broken invariant is a finding like a crash: print what failed and abort, so libFuzzer saves
// the input as crash-<sha1>. Kept on in every build type (no NDEBUG dependence).
#define FUZZ_CHECK(cond)                                                                          \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      std::fprintf(stderr, "\n*** fuzz invariant failed: %s\n    at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                               \
    }                                                                                             \
  } while (0)

namespace fuzz {

// Takes leading bytes of the input as choices (route, split sizes...); the rest is the payload.
class input {
 public:
  input(const std::uint8_t* data, std::size_t size) : s_(reinterpret_cast<const char*>(data), size) {}
  std::uint8_t byte() {
    if (s_.empty()) return 0;
    auto b = static_cast<std::uint8_t>(s_.front());
    s_.remove_prefix(1);
    return b;
  }
  std::string_view rest() const { return s_; }

 private:
  std::string_view s_;
};

// Deterministic chunk sizes from a seed (xorshift), so a crashing split is reproducible from the
// input alone.
class splitter {
 public:
  explicit splitter(std::uint32_t seed, std::size_t max_chunk) : x_(seed | 1u), max_(max_chunk ? max_chunk : 1) {}
  std::size_t next() {
    x_ ^= x_ << 13;
    x_ ^= x_ >> 17;
    x_ ^= x_ << 5;
    return 1 + x_ % max_;
  }

 private:
  std::uint32_t x_;
  std::size_t max_;
};

// The token-count invariants every extracted usage must hold: nothing negative, parts never
// above their whole (cost formulas subtract them), and far from int64 overflow.
inline void check_usage(const tollgate::token_usage& u) {
  constexpr std::int64_t bound = std::int64_t{1} << 56;
  FUZZ_CHECK(u.prompt >= 0 && u.completion >= 0 && u.cached >= 0 && u.cache_write >= 0 &&
             u.cache_write_1h >= 0 && u.reasoning >= 0);
  FUZZ_CHECK(u.prompt < bound && u.completion < bound);
  FUZZ_CHECK(u.cached <= u.prompt);
  FUZZ_CHECK(u.cache_write <= u.prompt);
  FUZZ_CHECK(u.cached + u.cache_write <= u.prompt);
  FUZZ_CHECK(u.cache_write_1h <= u.cache_write);
  FUZZ_CHECK(u.reasoning <= u.completion);
  FUZZ_CHECK(u.total() >= 0);
}

// Nesting depth of JSON text (brackets outside strings); for bounding recursive checks.
inline int json_depth(std::string_view text) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return max_depth;
}

inline bool same_usage(const tollgate::token_usage& a, const tollgate::token_usage& b) {
  return a.prompt == b.prompt && a.completion == b.completion && a.cached == b.cached &&
         a.cache_write == b.cache_write && a.cache_write_1h == b.cache_write_1h && a.reasoning == b.reasoning;
}

inline bool is_zero(const tollgate::token_usage& u) { return same_usage(u, tollgate::token_usage{}); }

}  // namespace fuzz
