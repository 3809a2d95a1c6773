#include "core/stated_rates.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <limits>

namespace tollgate {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

}  // namespace

std::optional<double> stated_rates::rates::cost(std::int64_t uncached_prompt, std::int64_t completion) const noexcept {
  double usd = 0;
  if (uncached_prompt > 0) {
    if (!std::isfinite(input)) return std::nullopt;
    usd += input * static_cast<double>(uncached_prompt);
  }
  if (completion > 0) {
    if (!std::isfinite(output)) return std::nullopt;
    usd += output * static_cast<double>(completion);
  }
  return usd;
}

stated_rates::rates stated_rates::reserve_rates(const std::optional<rates>& learned, double top_input,
                                               double top_output) noexcept {
  rates r{top_input > 0 ? top_input / 1e6 : kInf, top_output > 0 ? top_output / 1e6 : kInf};
  if (learned) {
    r.input = std::min(r.input, learned->input);
    r.output = std::min(r.output, learned->output);
  }
  return r;
}

bool stated_rates::known_relay(std::string_view host) noexcept {
  auto is = [&](std::string_view domain) {
    return host == domain || (host.size() > domain.size() && host.ends_with(domain) &&
                              host[host.size() - domain.size() - 1] == '.');
  };
  return is("openrouter.ai") || is("perplexity.ai");
}

void stated_rates::mark_upstream(std::string_view upstream, bool in_usage) {
  const std::uint8_t flag = in_usage ? 1 : 2;
  std::lock_guard lock(mu_);
  if (auto it = upstreams_.find(upstream); it != upstreams_.end())
    it->second |= flag;
  else if (upstreams_.size() < kMaxUpstreams)
    upstreams_.emplace(upstream, flag);
}

void stated_rates::learn(std::string_view upstream, bool in_usage, std::string_view model,
                         std::int64_t uncached_prompt, std::int64_t completion, double usd,
                         std::string_view provider, bool live) {
  if (!std::isfinite(usd) || usd < 0) return;
  mark_upstream(upstream, in_usage);
  if (model.empty() || model.size() > 256 || (uncached_prompt <= 0 && completion <= 0)) return;
  const std::string key = lower(model);
  const std::size_t who = std::hash<std::string>{}(lower(provider.substr(0, 256)));
  std::lock_guard lock(mu_);
  auto it = models_.find(key);
  if (it == models_.end()) {
    if (models_.size() >= kMaxModels) return;
    it = models_.emplace(key, model_bounds{}).first;
  }
  model_bounds& m = it->second;
  if (live) {
    ++m.calls;
    // Routes the relay no longer takes are forgotten, so they hold no reservation high.
    std::erase_if(m.providers, [&](const provider_bounds& p) { return !recent(m, p) && p.provider != who; });
  }
  auto p = std::find_if(m.providers.begin(), m.providers.end(), [&](const provider_bounds& b) { return b.provider == who; });
  if (p == m.providers.end()) {
    if (m.providers.size() >= kMaxProviders) return;
    p = m.providers.insert(m.providers.end(), provider_bounds{who, {kInf, kInf}, {kInf, kInf}, 0, 0});
  }
  provider_bounds& b = *p;
  // A new generation: the one before it is forgotten (both, when the provider comes back after
  // an absence: its old figures are of a route the relay had stopped taking).
  if (const bool stale = !recent(m, b); b.seen == kGeneration || stale) {
    b.input[1] = stale ? kInf : b.input[0];
    b.output[1] = stale ? kInf : b.output[0];
    b.input[0] = b.output[0] = kInf;
    b.seen = 0;
  }
  b.last = m.calls;
  ++b.seen;
  if (uncached_prompt > 0) b.input[0] = std::min(b.input[0], usd / static_cast<double>(uncached_prompt));
  if (completion > 0) b.output[0] = std::min(b.output[0], usd / static_cast<double>(completion));
}

bool stated_rates::states_costs(std::string_view upstream, bool stream, bool header_only) const {
  const std::uint8_t where = header_only ? (stream ? 0 : 2) : (stream ? 1 : 3);
  std::lock_guard lock(mu_);
  const auto it = upstreams_.find(upstream);
  return it != upstreams_.end() && (it->second & where) != 0;
}

std::optional<stated_rates::rates> stated_rates::bound_of(const model_bounds& m) noexcept {
  // Each side: the largest of the recent providers' bounds that are pinned (-inf: none is).
  rates r{-kInf, -kInf};
  for (const provider_bounds& b : m.providers) {
    if (!recent(m, b)) continue;
    if (const double in = std::min(b.input[0], b.input[1]); std::isfinite(in)) r.input = std::max(r.input, in);
    if (const double out = std::min(b.output[0], b.output[1]); std::isfinite(out)) r.output = std::max(r.output, out);
  }
  if (!std::isfinite(r.input) && !std::isfinite(r.output)) return std::nullopt;
  if (!std::isfinite(r.input)) r.input = kInf;
  if (!std::isfinite(r.output)) r.output = kInf;
  return r;
}

std::optional<stated_rates::rates> stated_rates::bound(std::string_view model) const {
  const std::string key = lower(model);
  std::lock_guard lock(mu_);
  const auto it = models_.find(key);
  if (it == models_.end()) return std::nullopt;
  return bound_of(it->second);
}

std::vector<stated_rates::model_view> stated_rates::learned() const {
  std::vector<model_view> out;
  {
    std::lock_guard lock(mu_);
    out.reserve(models_.size());
    // Not a structured binding: clang before 16 (the fuzz build) rejects one captured by a lambda.
    for (const auto& entry : models_) {
      const model_bounds& m = entry.second;
      const auto b = bound_of(m);
      if (!b) continue;
      const auto n = static_cast<std::size_t>(
          std::count_if(m.providers.begin(), m.providers.end(), [&](const provider_bounds& p) { return recent(m, p); }));
      out.push_back({entry.first, *b, n});
    }
  }
  std::sort(out.begin(), out.end(), [](const model_view& a, const model_view& b) { return a.model < b.model; });
  return out;
}

std::vector<stated_rates::upstream_view> stated_rates::stating_upstreams() const {
  std::lock_guard lock(mu_);
  std::vector<upstream_view> out;
  for (const auto& [name, flags] : upstreams_) out.push_back({name, (flags & 1) != 0});
  return out;
}

std::size_t stated_rates::models() const {
  std::lock_guard lock(mu_);
  return models_.size();
}

}  // namespace tollgate
