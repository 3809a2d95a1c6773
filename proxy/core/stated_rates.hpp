// What relays that bill their own prices charged per token, learned from the costs they state
// (OpenRouter's usage.cost, Perplexity's, a LiteLLM proxy's header), for the models the price
// table lacks. A hard budget must reserve a call's worst case before it goes upstream; for such
// a model the table has nothing to reserve, so these bounds stand in for its prices.
//
// The bounds come from the bill alone, without assuming how the relay prices: every call costs
// at least its uncached prompt tokens at the input price (cached, written and completion tokens
// cost nothing less than zero), so input <= cost / uncached prompt, and likewise output <= cost /
// completion. The smallest ratio over recent calls is the tightest such upper bound; a call with
// a large prompt and a short answer pins the input price, one with a long answer the output
// price. Recent: two generations of 256 calls per model, so a relay's price rise is learned
// within 512 calls. A model served by several providers at different prices (OpenRouter's
// routing) is bounded by the cheapest route seen: a reservation, not a guarantee.
//
// Also remembered: which upstreams state costs at all, and where: in the usage (OpenRouter,
// Perplexity: whole replies and streams) or only in a header of whole replies (LiteLLM: a
// stream's header goes out before its tokens). Only through such an upstream is a model not
// learned yet reserved at the table's dearest token prices instead of being refused. OpenRouter
// and Perplexity are known from their hosts.
//
// Thread-safe (one mutex, taken only on calls whose cost the upstream stated and on admissions
// of models the table lacks). Bounded: 10,000 models, 256 upstreams; past that, new names are
// not learned.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/string_hash.hpp"

namespace tollgate {

class stated_rates {
 public:
  // USD per token.
  struct rates {
    double input = 0, output = 0;
  };
  // One call `upstream` billed at `usd` (>= 0) for `model`: its prompt tokens not read from a
  // cache, and its completion tokens (reasoning included). Model names are compared without case.
  // in_usage: the cost came in the usage (every reply and stream states it), else in a header.
  void observe(std::string_view upstream, bool in_usage, std::string_view model, std::int64_t uncached_prompt,
               std::int64_t completion, double usd);
  // Marks `upstream` as one that states its costs (a call of a priced model, a known host).
  void mark_upstream(std::string_view upstream, bool in_usage);
  // Whether `upstream` states the cost of a call: a stream's only in its usage.
  bool states_costs(std::string_view upstream, bool stream) const;
  // Relays known to state every call's cost in its usage, by host: OpenRouter (usage.cost),
  // Perplexity (usage.cost.total_cost).
  static bool known_relay(std::string_view host) noexcept;
  // Both bounds for `model`, once calls have pinned each; nullopt before.
  std::optional<rates> bound(std::string_view model) const;
  std::size_t models() const;

  static constexpr std::uint32_t kGeneration = 256;
  static constexpr std::size_t kMaxModels = 10'000;
  static constexpr std::size_t kMaxUpstreams = 256;

 private:
  struct model_bounds {
    // [0]: the current generation, [1]: the previous one; +inf when nothing pinned it.
    double input[2], output[2];
    std::uint32_t seen = 0;  // calls in the current generation
  };
  mutable std::mutex mu_;
  std::unordered_map<std::string, model_bounds, string_hash, std::equal_to<>> models_;
  std::map<std::string, std::uint8_t, std::less<>> upstreams_;  // 1: in the usage, 2: in a header
};

}  // namespace tollgate
