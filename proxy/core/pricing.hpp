// Price table: USD per 1M tokens per model, loaded from config/prices.yaml (and optionally a
// LiteLLM model_prices_and_context_window.json), model-id resolution and per-call cost.
// Pure: no I/O beyond reading the files at start-up.
#pragma once
#include <cstdint>
#include <array>
#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "core/usage_record.hpp"

namespace tollgate {

struct config;

// A start-up error that names the file and line (line 0 when unknown).
struct config_error : std::runtime_error {
  config_error(std::string file, int line, const std::string& what)
      : std::runtime_error(file + (line > 0 ? ":" + std::to_string(line) : std::string()) + ": " + what),
        file_(std::move(file)), line_(line) {}
  std::string file_;
  int line_;
};

// Prices of one processing tier (OpenAI flex / priority / scale), USD per 1M tokens. A call
// served at that tier is billed at these instead of the entry's (long-context tier included),
// except `priority` on a long call: OpenAI's Priority excludes long context, so such a call is
// billed at the standard long prices (billed_prices_of()).
struct tier_price {
  double input = 0, cached_input = 0, output = 0;
  std::optional<double> cache_write_5m, cache_write_1h;  // default as the entry's, on this input
  // A tier given as a factor (`flex: 0.5`, the default batch half price): the factor, so that a
  // long-context call is billed at the long tier times it (OpenAI bills a prompt over 272k at the
  // long prices on standard, batch and flex alike; Anthropic's and Google's batches halve their
  // long tiers too). 0 for a tier with its own prices, which replace the long tier.
  double factor = 0;
};

// The price of one image or one second of video of a given output: `w` x `h` pixels (0 x 0: any
// size) and quality (`hd`: -1 any, 0 standard, 1 hd). prices.yaml `per_image` / `per_second`.
struct unit_price {
  std::uint16_t w = 0, h = 0;
  std::int8_t hd = -1;
  double usd = 0;
};
// The price of an output of `w` x `h` pixels (0 x 0: not stated) and quality `hd` among
// `prices`: the entry naming both, else the size at any quality, else the quality at any size,
// else the one for any output; nullopt when none applies (the call is then unpriced).
std::optional<double> unit_price_of(const std::vector<unit_price>& prices, std::uint16_t w, std::uint16_t h,
                                    bool hd) noexcept;
// "1024x1792" -> {1024, 1792}; nullopt for anything else ("auto", "", "0x5", "99999x1").
std::optional<std::pair<std::uint16_t, std::uint16_t>> parse_pixel_size(std::string_view s) noexcept;

struct model_price {
  std::string name;                    // canonical entry name (the metrics `model` label)
  double input = 0;                    // USD per 1M uncached prompt tokens
  double cached_input = 0;             // USD per 1M cache-read tokens
  double output = 0;                   // USD per 1M completion tokens (reasoning included)
  std::optional<double> cache_write_5m;  // USD per 1M; default 1.25 x input (Claude), else input
  std::optional<double> cache_write_1h;  // USD per 1M; default 2 x input (Claude), else input
  // Whether cache writes the entry does not price cost more than input: Anthropic's 1.25x / 2x
  // for a Claude entry (its name holds "claude"). Elsewhere a write is plain input: OpenAI wrote
  // its cache for free before GPT-5.6 (whose entries price writes), as do Gemini and DeepSeek, so
  // a reported write count must not raise their cost. Set by apply_default_tiers().
  bool write_surcharge = true;
  double web_search = 0;               // USD per 1,000 server-side web search requests
  double us_inference = 1;             // factor on the token prices of a call that ran US-only
                                       // (Anthropic usage.inference_geo "us": 1.1 on Opus 4.6+)
  double file_search = 2.5;            // USD per 1,000 hosted file_search tool calls (OpenAI's price
                                       // for every model; only Responses replies carry such calls)
  std::optional<double> image_input;   // USD per 1M uncached image input tokens; default input
  std::optional<double> audio_input;   // USD per 1M uncached audio input tokens; default input
  std::optional<double> audio_output;  // USD per 1M audio output tokens; default output
  std::optional<double> text_output;   // USD per 1M text output tokens of an image model; default output
  std::optional<double> cached_image_input;  // USD per 1M image cache-read tokens; default cached_input
  std::optional<double> cached_audio_input;  // USD per 1M audio cache-read tokens; default cached_input
  double per_minute = 0;              // USD per minute of audio input (whisper-1), billed per second
  double per_million_characters = 0;  // USD per 1M input characters (tts-1 speech)
  std::vector<unit_price> per_image;   // USD per generated image (DALL-E), by size and quality
  std::vector<unit_price> per_second;  // USD per second of generated video (Sora), by size
  // Long-context tier (e.g. Claude Sonnet 4.5 above 200k prompt tokens): when the prompt
  // (input + cache read + cache write) exceeds `long_context_threshold`, these prices apply.
  std::int64_t long_context_threshold = 0;  // 0: no tier
  double long_input = 0, long_cached_input = 0, long_output = 0;
  std::optional<double> long_cache_write_5m;  // USD per 1M in the long tier; default as cache_write_5m
  std::optional<double> long_cache_write_1h;  // USD per 1M in the long tier; default as cache_write_1h
  // Service tiers' prices, by service_tier (flex, priority, scale, batch; absent: billed as
  // standard). Every loader sets `batch`: half the standard prices unless the entry (or
  // LiteLLM's *_batches keys) says otherwise.
  std::array<std::optional<tier_price>, kServiceTiers> tiers;
  // Peak hours (prices.yaml `peak_hours_utc`, with an `off_peak` tier): [from, to) minutes of the
  // UTC day. A call that starts outside them is billed at the `off_peak` tier (DeepSeek's
  // off-peak half price). Empty: no schedule.
  std::vector<std::pair<std::uint16_t, std::uint16_t>> peak_utc;
  // The UTC weekdays those hours are peak on (prices.yaml `peak_days_utc`), bit d for day d
  // (0 Sunday .. 6 Saturday); every day by default. Any time of another day is off-peak
  // (DeepSeek: its peak hours are Monday to Friday's).
  std::uint8_t peak_days = 0x7F;
  // Scheduled price changes (prices.yaml `changes`): from each instant (unix ms, ascending) the
  // entry is billed as the version given, a whole entry with the change's keys replacing the
  // entry's own. A version has no changes of its own. price_table::resolve() gives the version
  // in effect now, resolve_at() the one in effect when a call started.
  std::vector<std::pair<std::int64_t, std::shared_ptr<const model_price>>> changes;
  std::optional<tier_price>& tier_slot(service_tier t) noexcept { return tiers[static_cast<std::size_t>(t)]; }
  // The prices of tier `t`, nullptr when the entry has none for it (standard prices apply).
  const tier_price* tier(service_tier t) const noexcept {
    const auto& s = tiers[static_cast<std::size_t>(t)];
    return s ? &*s : nullptr;
  }
};

// The prices a call is billed at: its service tier's when the entry has them, else the
// long-context tier's when `long_context`, else the entry's own; unpriced cache writes at 1.25x
// and 2x the input price on a Claude entry, at the input price on others (write_surcharge).
// compute_cost() and the what-if reports both price through this.
struct billed_prices {
  double input, cached_input, write_5m, write_1h, output;
};
billed_prices billed_prices_of(const model_price& p, service_tier t, bool long_context) noexcept;

// Whether a call of entry `p` that started at `unix_ms` falls outside the entry's peak hours and
// is billed at its `off_peak` tier (false for an entry without a schedule).
bool off_peak_at(const model_price& p, std::int64_t unix_ms) noexcept;

// The version of entry `p` in effect at `unix_ms`: the last of its `changes` from at or before
// it, else `p` itself.
const model_price& price_at(const model_price& p, std::int64_t unix_ms) noexcept;

// A tier at `factor` times every token price of `base` (cache writes included; the long-context
// tier is not scaled: tier prices replace it).
tier_price scaled_tier(const model_price& base, double factor);
// Sets the tiers an entry gets when it names none: `batch` at half price.
void apply_default_tiers(model_price& p);

struct cost_result {
  double usd = 0;
  bool priced = false;
  const model_price* price = nullptr;  // entry used, nullptr when unpriced
};

class price_table {
 public:
  // Loads the tollgate YAML format (see config/prices.yaml). Throws config_error(file:line).
  void load_yaml_file(const std::string& path);
  void load_yaml_string(std::string_view text, const std::string& name = "<string>");
  // Loads LiteLLM's JSON catalogue (input_cost_per_token etc., USD per token). Entries already
  // defined by the YAML table win. Throws config_error on unreadable or malformed files.
  void load_litellm_file(const std::string& path);
  void load_litellm_string(std::string_view text, const std::string& name = "<string>");
  // The table a configuration names: its pricing.file, then its LiteLLM catalogue (if any).
  void load_configured(const config& cfg);

  // Resolves a model id as sent by a client or returned by an upstream:
  // exact name, alias, case-insensitive, provider prefix stripped ("openai/gpt-4.1"),
  // date/version suffix stripped ("gpt-4.1-2025-04-14", "claude-sonnet-4-5-20250929",
  // "gpt-4o-2024-08-06", "...@20250929", "-latest"). nullptr when unknown.
  // The entry's version in effect now (its scheduled `changes`), as resolve_at(model, now).
  const model_price* resolve(std::string_view model) const;
  // The version in effect at `unix_ms` (a call's start: what the call is billed at).
  const model_price* resolve_at(std::string_view model, std::int64_t unix_ms) const;

  // Names of all canonical entries (bounded label set for metrics).
  std::vector<std::string> names() const;
  // The entry and output with the highest price per second of video ({nullptr, {}} when no
  // entry prices seconds): what a remix of a video tollgate does not know may cost per second.
  std::pair<const model_price*, unit_price> priciest_per_second() const;
  // The highest input and output prices per 1M tokens of any entry (long-context tiers
  // included), each on its own: what a call of a model the table lacks may cost at most, as far
  // as the table knows ({0, 0} for an empty table). Kept by each load (rebuild_index_): an
  // admission of such a model reads it.
  std::pair<double, double> priciest_tokens() const noexcept { return priciest_tokens_; }
  std::size_t size() const noexcept { return entries_.size(); }

 private:
  std::map<std::string, model_price, std::less<>> entries_;   // canonical name -> price
  std::map<std::string, std::string, std::less<>> aliases_;   // lower-case alias -> canonical name

  std::pair<double, double> priciest_tokens_{0, 0};
  void rebuild_index_();
  // The entry a model id names (resolve()'s look-up), before its scheduled changes.
  const model_price* find_entry_(std::string_view model) const;
  // Every lower-case spelling resolve() may look up -> entry: names, aliases, then their
  // "4.5"/"4-5" twins and (LiteLLM) provider-less forms. Rebuilt after each load.
  std::map<std::string, const model_price*, std::less<>> index_;
  std::set<std::string, std::less<>> from_litellm_;           // canonical names loaded from LiteLLM
};

// cost = (prompt - cached - cache_write) * input + cached * cached_input
//        + cache_write_5m_part * cw5m + cache_write_1h * cw1h + completion * output, per 1M,
// times `multiplier` (the upstream's price_multiplier). Reasoning is inside completion and never
// billed twice. Unknown model: {0, false, nullptr}.
cost_result compute_cost(const price_table& table, std::string_view model, const token_usage& usage,
                         double multiplier = 1.0);
cost_result compute_cost(const model_price& price, const token_usage& usage, double multiplier = 1.0);
// The worst-case cost of a call not yet made (budget reservations): `worst` priced as is, or
// with its whole prompt written to the prompt cache when the call may write it, whichever costs
// more. A Claude entry writes only when the request asks (`cache_writes`: 1 cache_control, 2 with
// a ttl of "1h", billed at cache_write_1h); other entries may write on their own (OpenAI caches
// automatically; GPT-5.6 bills writes at 1.25x input, older models at input, so no more).
double reserve_cost(const model_price& price, const token_usage& worst, std::uint8_t cache_writes,
                    double multiplier = 1.0);
// A call that bills several models (a message batch's results, a Realtime session and its
// transcriptions): the sum of each model's cost; priced only when every model is, `price` the
// first priced entry. Each model at its version in effect at `at_ms` (Unix ms: when the call
// started, as a one-model call is billed), or now when at_ms is negative.
cost_result compute_cost(const price_table& table, const std::vector<std::pair<std::string, token_usage>>& by_model,
                         double multiplier = 1.0, std::int64_t at_ms = -1);

}  // namespace tollgate
