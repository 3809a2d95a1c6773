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
template <typename T>
double sorted_quantile(std::span<const T> v, double a) noexcept {
  if (v.empty()) return std::nan("");
  const double r = a * static_cast<double>(v.size() - 1);
  const double j = std::floor(r);
  const auto i = static_cast<std::size_t>(j);
  if (r == j || i + 1 >= v.size()) return v[i];
  return v[i] + (static_cast<double>(v[i + 1]) - v[i]) * (r - j);
}
inline double sorted_quantile(const std::vector<double>& v, double a) noexcept {
  return sorted_quantile(std::span<const double>(v), a);
}

// Quantile a of |v - center| over ascending values v, without building the deviations:
// the deviations are merged outward from `center` (linear interpolation as above).
template <typename T>
double sorted_abs_deviation_quantile(std::span<const T> v, double center, double a) noexcept {
  if (v.empty()) return std::nan("");
  const double r = a * static_cast<double>(v.size() - 1);
  const auto want = static_cast<std::size_t>(std::floor(r)) + 1;  // need order statistics want-1, want
  std::size_t right = static_cast<std::size_t>(
      std::lower_bound(v.begin(), v.end(), center, [](T x, double c) { return x < c; }) - v.begin());
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

// Inverse of the standard normal CDF (Acklam's rational approximation, relative error
// < 1.2e-9), for p in (0, 1).
inline double normal_quantile(double p) noexcept {
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01, -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  if (!(p > 0.0 && p < 1.0)) return p <= 0.0 ? -INFINITY : INFINITY;
  if (p < 0.02425) {
    const double q = std::sqrt(-2.0 * std::log(p));
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0);
  }
  if (p > 1.0 - 0.02425) return -normal_quantile(1.0 - p);
  const double q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
         (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0);
}

// A multiset kept sorted; insert and erase are O(size) moves, which at a few thousand
// elements is cheaper than a tree and keeps quantile lookups O(1). The forecaster's error
// pools use float (log errors need no more, and it halves their memory).
template <typename T>
class basic_sorted_window {
 public:
  void insert(T v) { values_.insert(std::upper_bound(values_.begin(), values_.end(), v), v); }
  void erase(T v) {
    const auto it = std::lower_bound(values_.begin(), values_.end(), v);
    if (it != values_.end() && *it == v) values_.erase(it);
  }
  void clear() noexcept { values_.clear(); }
  std::size_t size() const noexcept { return values_.size(); }
  double quantile(double a) const noexcept { return sorted_quantile(std::span<const T>(values_), a); }
  std::span<const T> values() const noexcept { return values_; }
  std::size_t capacity() const noexcept { return values_.capacity(); }

 private:
  std::vector<T> values_;
};
using sorted_window = basic_sorted_window<double>;

}  // namespace tollgate::forecast
