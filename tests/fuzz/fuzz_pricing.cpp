// libFuzzer target: the price table (core/pricing). The first byte picks the mode:
//   0: the rest is a model id, resolved against the shipped config/prices.yaml (on every call);
//   1: the rest is a prices.yaml text (scheduled changes included);   2: the rest is a LiteLLM JSON catalogue.
// Invariants: loaders fail only with config_error; resolve() ends, is case-insensitive, finds
// every canonical name as itself and returns entries of the table; a provider prefix changes
// nothing; costs are never negative or NaN, whatever the (even nonsensical) token counts.
#include <cmath>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "core/pricing.hpp"
#include "fuzz_common.hpp"

namespace {

using tollgate::compute_cost;
using tollgate::model_price;
using tollgate::price_table;
using tollgate::token_usage;

const price_table* shipped = nullptr;

std::string ascii_case(std::string_view s, bool upper) {
  std::string out(s);
  for (char& c : out) {
    if (upper && c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (!upper && c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

bool in_table(const price_table& t, const model_price* p) {
  for (const auto& n : t.names())
    if (t.resolve(n) == p) return true;
  return false;
}

void check_cost(const model_price& p, const token_usage& u) {
  for (double multiplier : {1.0, 0.5, 3.0}) {
    const auto c = compute_cost(p, u, multiplier);
    FUZZ_CHECK(c.priced && c.price == &p);
    FUZZ_CHECK(!std::isnan(c.usd));
    FUZZ_CHECK(c.usd >= 0);
  }
}

// Token counts from the input bytes: realistic ones and the ones a broken upstream could report
// (negative, parts above their whole, huge).
token_usage usage_from(std::string_view s) {
  std::uint64_t v[6] = {};
  for (std::size_t i = 0; i < s.size(); ++i) v[i % 6] = v[i % 6] * 31 + static_cast<unsigned char>(s[i]);
  const auto count = [&](int i) { return static_cast<std::int64_t>(v[i]); };  // any sign, any size
  return {count(0), count(1), count(2), count(3), count(4), count(5)};
}

void check_resolve(const price_table& t, std::string_view model, bool shipped_table) {
  const model_price* p = t.resolve(model);
  if (p != nullptr) FUZZ_CHECK(in_table(t, p));
  // Case never matters... except that an exact canonical name wins first; names differing only
  // in case are refused by the loader, so the answer is the same.
  FUZZ_CHECK(t.resolve(ascii_case(model, false)) == p);
  FUZZ_CHECK(t.resolve(ascii_case(model, true)) == p);
  // A provider prefix is dropped ("openai/gpt-4.1"), unless the id has a slash of its own (or,
  // in a LiteLLM table, an entry is spelled with that prefix).
  if (shipped_table && p != nullptr && model.find('/') == std::string_view::npos)
    FUZZ_CHECK(t.resolve("openrouter/" + std::string(model)) == p);

  const auto c = compute_cost(t, model, usage_from(model));
  FUZZ_CHECK(c.priced == (p != nullptr));
  FUZZ_CHECK(c.price == p);
  if (p) check_cost(*p, usage_from(model));
  else FUZZ_CHECK(c.usd == 0);
}

// A table that loaded: each entry is found under its own name and prices any usage.
void check_table(const price_table& t, std::string_view seed) {
  const auto names = t.names();
  FUZZ_CHECK(names.size() == t.size());
  for (const auto& n : names) {
    const model_price* p = t.resolve(n);
    FUZZ_CHECK(p != nullptr && p->name == n);
    FUZZ_CHECK(p->input >= 0 && p->output >= 0 && p->cached_input >= 0);
    check_cost(*p, usage_from(seed));
    check_cost(*p, token_usage{1'000'000, 1'000'000, 0, 0, 0, 0});
    check_cost(*p, token_usage{-5, std::numeric_limits<std::int64_t>::max(), 7, 9, 11, -3});
    // Scheduled changes: versions of the same entry in time order, each in effect from its
    // instant, none with changes of its own, each pricing any usage.
    const model_price* base = t.resolve_at(n, std::numeric_limits<std::int64_t>::min());
    FUZZ_CHECK(base != nullptr && base->name == n);
    for (std::size_t i = 0; i < base->changes.size(); ++i) {
      const auto& [from, v] = base->changes[i];
      FUZZ_CHECK(v != nullptr && v->name == n && v->changes.empty());
      if (i > 0) FUZZ_CHECK(from > base->changes[i - 1].first);
      FUZZ_CHECK(t.resolve_at(n, from) == v.get());
      check_cost(*v, usage_from(seed));
    }
    // Peak schedule: an entry without one is never off-peak; any instant answers (none crashes).
    for (std::int64_t ms : {std::int64_t{1}, std::int64_t{1796601600000}, std::numeric_limits<std::int64_t>::max(),
                            std::numeric_limits<std::int64_t>::min()}) {
      const bool off = off_peak_at(*p, ms);
      if (p->peak_utc.empty()) FUZZ_CHECK(!off);
    }
    // Dated snapshot of a name resolves to an entry of the table (not necessarily this one: a
    // separate entry may be spelled that way).
    if (const auto* q = t.resolve(n + "-2025-04-14")) FUZZ_CHECK(in_table(t, q));
  }
  for (std::string_view probe : {"gpt-4.1", "claude-sonnet-4-5-20250929", "openai/gpt-4o-mini", "", "-", "@"})
    check_resolve(t, probe, false);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  static price_table table;
  table.load_yaml_file(TOLLGATE_SOURCE_DIR "/config/prices.yaml");
  shipped = &table;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::input in(data, size);
  const std::uint8_t mode = in.byte() % 3;
  const std::string_view text = in.rest();

  if (mode == 0) {
    check_resolve(*shipped, text, true);
    return 0;
  }
  price_table t;
  try {
    if (mode == 1) {
      t.load_yaml_string(text, "fuzz.yaml");
    } else {
      t.load_litellm_string(text, "fuzz.json");
    }
  } catch (const tollgate::config_error& e) {
    FUZZ_CHECK(std::string_view(e.what()).starts_with(mode == 1 ? "fuzz.yaml" : "fuzz.json"));
    return 0;
  }
  check_table(t, text);
  // A YAML table with a LiteLLM catalogue on top (or the reverse) still holds together.
  try {
    if (mode == 1) {
      t.load_litellm_string(R"({"gpt-4.1":{"input_cost_per_token":3e-6,"output_cost_per_token":1e-5},
        "openrouter/openai/gpt-4.1":{"input_cost_per_token":3e-6,"output_cost_per_token":1e-5}})");
    } else {
      t.load_yaml_file(TOLLGATE_SOURCE_DIR "/config/prices.yaml");
    }
  } catch (const tollgate::config_error&) {
    return 0;  // e.g. an alias in the fuzzed YAML clashing with a shipped name
  }
  check_table(t, text);
  return 0;
}
