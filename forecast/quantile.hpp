// Empirical quantiles: the numpy-default interpolated quantile and a sliding sorted window,
// used by the PROTOCOL.md interval recipe and by the forecaster's conformal error pools.
#pragma once
#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

namespace tollgate::forecast {

// Quantile a of ascending values (linear interpolation between order statistics,
// r = a*(c-1)). NaN for an empty span.
inline double sorted_quantile(std::span<const double> v, double a) noexcept {
  if (v.empty()) return std::nan("");
  const double r = a * static_cast<double>(v.size() - 1);
  const double j = std::floor(r);
  const auto i = static_cast<std::size_t>(j);
  if (r == j || i + 1 >= v.size()) return v[i];
  return v[i] + (v[i + 1] - v[i]) * (r - j);
}

// Quantile a of |v - center| over ascending values v, without building the deviations:
// the deviations are merged outward from `center` (linear interpolation as above).
inline double sorted_abs_deviation_quantile(std::span<const double> v, double center, double a) noexcept {
  if (v.empty()) return std::nan("");
  const double r = a * static_cast<double>(v.size() - 1);
  const auto want = static_cast<std::size_t>(std::floor(r)) + 1;  // need order statistics want-1, want
  std::size_t right = static_cast<std::size_t>(std::lower_bound(v.begin(), v.end(), center) - v.begin());
  std::size_t left = right;  // next candidates: v[left-1] (below) and v[right] (at or above)
  double prev = 0.0, cur = 0.0;
  for (std::size_t taken = 0; taken <= want && taken < v.size(); ++taken) {
    const double below = left > 0 ? center - v[left - 1] : INFINITY;
    const double above = right < v.size() ? v[right] - center : INFINITY;
    prev = cur;
    if (below <= above) {
      cur = below;
      --left;
    } else {
      cur = above;
      ++right;
    }
  }
  if (want >= v.size()) return cur;
  // cur is order statistic `want`, prev is `want - 1`.
  return prev + (cur - prev) * (r - std::floor(r));
}

// A multiset kept sorted; insert and erase are O(size) moves, which at a few thousand
// elements is cheaper than a tree and keeps quantile lookups O(1).
class sorted_window {
 public:
  void insert(double v) { values_.insert(std::upper_bound(values_.begin(), values_.end(), v), v); }
  void erase(double v) {
    const auto it = std::lower_bound(values_.begin(), values_.end(), v);
    if (it != values_.end() && *it == v) values_.erase(it);
  }
  void clear() noexcept { values_.clear(); }
  std::size_t size() const noexcept { return values_.size(); }
  double quantile(double a) const noexcept { return sorted_quantile(values_, a); }
  const std::vector<double>& values() const noexcept { return values_; }

 private:
  std::vector<double> values_;
};

}  // namespace tollgate::forecast
