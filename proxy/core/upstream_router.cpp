// Upstream selection (rules, protocol fit, weighted order) and the circuit breaker.
#include "core/upstream_router.hpp"

#include <algorithm>
#include <cctype>

namespace tollgate {

bool glob_match(std::string_view p, std::string_view s) noexcept {
  // Iterative matcher with one backtrack point: linear for the patterns people write.
  std::size_t pi = 0, si = 0, star = std::string_view::npos, mark = 0;
  auto eq = [](char a, char b) {
    return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
  };
  while (si < s.size()) {
    if (pi < p.size() && (p[pi] == '?' || (p[pi] != '*' && eq(p[pi], s[si])))) {
      ++pi, ++si;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

upstream_router::upstream_router(std::vector<upstream_config> upstreams, std::vector<route_rule> rules)
    : upstreams_(std::move(upstreams)), rules_(std::move(rules)) {}

const route_rule* upstream_router::rule_for(std::string_view model) const noexcept {
  for (const auto& r : rules_)
    if (glob_match(r.model, model)) return &r;
  return nullptr;
}

route_plan upstream_router::plan(std::string_view path, std::string_view model, std::uint64_t random,
                                 bool anthropic_client) const {
  route_plan out;
  const bool anthropic_api = path.starts_with("/v1/messages");
  const route_rule* rule = rule_for(model);
  std::vector<std::uint16_t> candidates;
  auto gather = [&](auto fits) {
    if (rule && !rule->upstreams.empty()) {
      for (const auto& name : rule->upstreams)
        for (std::size_t i = 0; i < upstreams_.size(); ++i)
          if (upstreams_[i].name == name && fits(upstreams_[i])) candidates.push_back(static_cast<std::uint16_t>(i));
    } else {
      for (std::size_t i = 0; i < upstreams_.size(); ++i)
        if (fits(upstreams_[i])) candidates.push_back(static_cast<std::uint16_t>(i));
    }
  };
  if (anthropic_client && !anthropic_api)
    gather([](const upstream_config& u) { return u.protocol == upstream_protocol::anthropic; });
  if (candidates.empty())
    gather([&](const upstream_config& u) { return u.protocol == upstream_protocol::openai || anthropic_api; });
  if (rule) out.rewrite = rule->rewrite;

  // Weighted draw without replacement among positive weights (a small splitmix64 stream from
  // `random`), then the zero-weight backups in their listed order.
  std::uint64_t x = random;
  auto next = [&x] {
    std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  std::vector<std::uint16_t> weighted, backups;
  for (auto i : candidates) (upstreams_[i].weight > 0 ? weighted : backups).push_back(i);
  while (!weighted.empty()) {
    std::uint64_t total = 0;
    for (auto i : weighted) total += upstreams_[i].weight;
    std::uint64_t pick = next() % total;
    std::size_t k = 0;
    for (; k + 1 < weighted.size(); ++k) {
      if (pick < upstreams_[weighted[k]].weight) break;
      pick -= upstreams_[weighted[k]].weight;
    }
    out.order.push_back(weighted[k]);
    weighted.erase(weighted.begin() + static_cast<std::ptrdiff_t>(k));
  }
  out.order.insert(out.order.end(), backups.begin(), backups.end());
  return out;
}

// ---------------------------------------------------------------------------------------------

bool circuit_breaker::allow(clock::time_point now, bool& probe) noexcept {
  probe = false;
  if (state_.load(std::memory_order_acquire) == static_cast<int>(state::closed)) return true;
  std::lock_guard lock(mu_);
  auto s = static_cast<state>(state_.load(std::memory_order_relaxed));
  if (s == state::closed) return true;
  if (s == state::open) {
    if (now < opened_at_ + open_for_) return false;
    state_.store(static_cast<int>(state::half_open), std::memory_order_release);
    probe_out_ = false;
  }
  if (probe_out_) return false;
  probe_out_ = true;
  probe = true;
  return true;
}

void circuit_breaker::on_success(bool probe) noexcept {
  if (failures_.load(std::memory_order_relaxed) != 0) failures_.store(0, std::memory_order_relaxed);
  if (!probe && state_.load(std::memory_order_acquire) == static_cast<int>(state::closed)) return;
  std::lock_guard lock(mu_);
  if (probe) probe_out_ = false;
  // A success closes the breaker from half-open (the probe, or a call admitted before it opened).
  if (state_.load(std::memory_order_relaxed) == static_cast<int>(state::half_open) || probe)
    state_.store(static_cast<int>(state::closed), std::memory_order_release);
}

void circuit_breaker::on_failure(clock::time_point now, bool probe) noexcept {
  int n = failures_.fetch_add(1, std::memory_order_relaxed) + 1;
  auto s = static_cast<state>(state_.load(std::memory_order_acquire));
  if (!probe && s == state::closed && n < threshold_) return;
  std::lock_guard lock(mu_);
  if (probe) probe_out_ = false;
  s = static_cast<state>(state_.load(std::memory_order_relaxed));
  if (probe || s == state::half_open || (s == state::closed && n >= threshold_)) {
    state_.store(static_cast<int>(state::open), std::memory_order_release);
    opened_at_ = now;
  }
}

void circuit_breaker::on_abandon(bool probe) noexcept {
  if (!probe) return;
  std::lock_guard lock(mu_);
  probe_out_ = false;
}

circuit_breaker::state circuit_breaker::current(clock::time_point now) const noexcept {
  auto s = static_cast<state>(state_.load(std::memory_order_acquire));
  if (s != state::open) return s;
  std::lock_guard lock(mu_);
  return now >= opened_at_ + open_for_ ? state::half_open : state::open;
}

}  // namespace tollgate
