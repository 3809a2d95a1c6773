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
// price. Recent: two generations of 256 calls, so a relay's price rise is learned within 512
// calls.
//
// A relay may serve one model from several providers at different prices (OpenRouter routes
// each call to one of them and names it in the reply's top-level `provider`). A smallest ratio
// over all of them would bound the cheapest route only, and a call routed to a dearer one could
// cost several times what was reserved. So the bounds are kept per provider (a call that names
// none counts under ""), and a model's bound on each side is the largest of its providers'
// bounds: it holds every route seen. A provider not seen in the model's last 512 calls is
// dropped (a route the relay no longer takes keeps no reservation high). Still a reservation,
// not a guarantee: a route never seen before can be dearer, and its call is settled at its
// stated cost all the same.
//
// Also remembered: which upstreams state costs at all, and where: in the usage (OpenRouter,
// Perplexity: whole replies and streams) or only in a header of whole replies (LiteLLM: a
// stream's header goes out before its tokens). Only through such an upstream is a model not
// learned yet reserved at the table's dearest token prices instead of being refused. OpenRouter
// and Perplexity are known from their hosts.
//
// Thread-safe (one mutex, taken on every call whose cost the upstream stated, to mark the
// upstream, and on admissions of models the table lacks). Bounded: 10,000 models, 16 providers
// each, 256 upstreams; past that, new names are not learned.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/string_hash.hpp"

namespace tollgate {

class stated_rates {
 public:
  // USD per token.
  struct rates {
    double input = 0, output = 0;
    // What `uncached_prompt` and `completion` tokens cost at these rates; nullopt when a side
    // they need has no rate (+inf).
    std::optional<double> cost(std::int64_t uncached_prompt, std::int64_t completion) const noexcept;
  };
  // One call `upstream` billed at `usd` (>= 0) for `model`: its prompt tokens not read from a
  // cache, and its completion tokens (reasoning included). Model names are compared without case.
  // in_usage: the cost came in the usage (every reply and stream states it), else in a header.
  // provider: the relay's provider that served the call ("" when the reply names none); compared
  // without case.
  void observe(std::string_view upstream, bool in_usage, std::string_view model, std::int64_t uncached_prompt,
               std::int64_t completion, double usd, std::string_view provider = {}) {
    learn(upstream, in_usage, model, uncached_prompt, completion, usd, provider, true);
  }
  // A call of an earlier run, read back from the ledger (its `provider` column; "" in rows written
  // before ledger schema 5): learned under its provider without counting towards the model's
  // recent calls, so that history read while calls are being served never ages out the
  // providers those calls named. A route history names stays in the bound until the model's
  // next 512 live calls pass it by: after a restart the bound holds every route of the day read.
  void replay(std::string_view upstream, bool in_usage, std::string_view model, std::int64_t uncached_prompt,
              std::int64_t completion, double usd, std::string_view provider = {}) {
    learn(upstream, in_usage, model, uncached_prompt, completion, usd, provider, false);
  }
  // Marks `upstream` as one that states its costs (a call of a priced model, a known host).
  void mark_upstream(std::string_view upstream, bool in_usage);
  // Whether `upstream` states the cost of a call: a stream's only in its usage. header_only: a
  // call whose usage carries no cost (Anthropic's Messages API), so only a header states it, and
  // only on a whole reply.
  bool states_costs(std::string_view upstream, bool stream, bool header_only = false) const;
  // What a hard budget reserves a model the table lacks at: each side the learned bound capped
  // by the table's dearest price (`top_*`, USD per 1M tokens; 0: none), or that price while
  // nothing is learned; +inf when neither exists.
  static rates reserve_rates(const std::optional<rates>& learned, double top_input, double top_output) noexcept;
  // Relays known to state every call's cost in its usage, by host: OpenRouter (usage.cost),
  // Perplexity (usage.cost.total_cost).
  static bool known_relay(std::string_view host) noexcept;
  // Both bounds for `model`, each the largest over its providers that pinned it, +inf for a side
  // none pinned (an embedding model's output); nullopt until a side is pinned.
  std::optional<rates> bound(std::string_view model) const;
  std::size_t models() const;
  // What is learned, for the admin API: each model (lower-cased, sorted) with bound() and the
  // count of its recent providers; each upstream known to state costs, and whether it does so
  // for streams too (in its usage) or for whole replies only (a header).
  struct model_view {
    std::string model;
    rates bound;
    std::size_t providers = 0;
  };
  struct upstream_view {
    std::string name;
    bool streams = false;
  };
  std::vector<model_view> learned() const;
  std::vector<upstream_view> stating_upstreams() const;

  static constexpr std::uint32_t kGeneration = 256;
  static constexpr std::size_t kMaxModels = 10'000;
  static constexpr std::size_t kMaxProviders = 16;  // per model
  static constexpr std::size_t kMaxUpstreams = 256;

 private:
  struct provider_bounds {
    std::size_t provider;  // hash of the lower-cased name
    // [0]: the current generation, [1]: the previous one; +inf when nothing pinned it.
    double input[2], output[2];
    std::uint32_t seen = 0;   // calls in the current generation
    std::uint64_t last = 0;   // the model's call count at this provider's last call
  };
  struct model_bounds {
    std::uint64_t calls = 0;  // calls observed, every provider
    std::vector<provider_bounds> providers;
  };
  static std::optional<rates> bound_of(const model_bounds& m) noexcept;
  // live: a call served now (counts towards the model's recent calls), else replayed history.
  void learn(std::string_view upstream, bool in_usage, std::string_view model, std::int64_t uncached_prompt,
             std::int64_t completion, double usd, std::string_view provider, bool live);
  // Whether `p` served one of the model's last 2 * kGeneration calls.
  static bool recent(const model_bounds& m, const provider_bounds& p) noexcept {
    return m.calls - p.last < 2 * kGeneration;
  }
  mutable std::mutex mu_;
  std::unordered_map<std::string, model_bounds, string_hash, std::equal_to<>> models_;
  std::map<std::string, std::uint8_t, std::less<>> upstreams_;  // 1: in the usage, 2: in a header
};

}  // namespace tollgate
