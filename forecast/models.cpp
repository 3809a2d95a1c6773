// Component models of the ensemble (naive, seasonal naive, seasonal medians, robust
// multi-seasonal ETS) and the bounded history they read. Owned and driven by forecaster.cpp.
#include "forecast/models.hpp"

#include <algorithm>
#include <array>
#include <cmath>

namespace tollgate::forecast::detail {

void history::reset(std::size_t capacity) {
  cap_ = std::max<std::size_t>(capacity, 1);
  n_ = 0;
  z_.assign(cap_, 0.0f);
  clean_.assign(cap_, 0.0f);
  obs_.assign(cap_, 0);
}

void history::push(double z, double clean, bool observed) {
  z_[n_ % cap_] = static_cast<float>(z);
  clean_[n_ % cap_] = static_cast<float>(clean);
  obs_[n_ % cap_] = observed ? 1 : 0;
  ++n_;
}

namespace {

constexpr std::int64_t day_s = 86400;
constexpr std::int64_t week_s = 7 * day_s;
constexpr std::int64_t monday_s = 4 * day_s;  // 1970-01-05T00:00Z was a Monday

std::int64_t floor_mod(std::int64_t a, std::int64_t b) noexcept { return ((a % b) + b) % b; }

}  // namespace

std::size_t calendar::phase(std::size_t i) const noexcept {
  const std::int64_t ts = start_s + static_cast<std::int64_t>(i) * bin_s;
  return static_cast<std::size_t>(floor_mod(ts, day_s) / bin_s);
}

std::size_t calendar::weekday(std::size_t i) const noexcept {
  const std::int64_t ts = start_s + static_cast<std::int64_t>(i) * bin_s;
  return static_cast<std::size_t>(floor_mod(ts - monday_s, week_s) / day_s);
}

namespace {

class naive_model final : public model {
 public:
  std::string name(std::size_t) const override { return "naive"; }
  std::size_t memory_bytes() const noexcept override { return sizeof(*this); }
  void observe(const history&, const calendar&, bool) noexcept override {}
  void predict(const history& h, const calendar&, std::size_t, double* out) const noexcept override {
    out[0] = h.size() == 0 ? std::nan("") : h.z(h.size() - 1);
  }
};

class seasonal_naive_model final : public model {
 public:
  seasonal_naive_model(std::size_t period, const char* name) : period_(std::max<std::size_t>(period, 1)), name_(name) {}
  std::string name(std::size_t) const override { return name_; }
  std::size_t memory_bytes() const noexcept override { return sizeof(*this); }
  void observe(const history&, const calendar&, bool) noexcept override {}
  void predict(const history& h, const calendar&, std::size_t k, double* out) const noexcept override {
    const std::size_t back = period_ * ((k + period_ - 1) / period_);
    const std::size_t t = h.size() - 1;
    out[0] = (h.size() == 0 || t + k < back || !h.has(t + k - back)) ? std::nan("") : h.clean(t + k - back);
  }

 private:
  std::size_t period_;
  const char* name_;
};

class seasonal_median_model final : public model {
 public:
  seasonal_median_model(std::vector<std::size_t> days, std::vector<std::size_t> weeks, std::size_t m)
      : days_(std::move(days)), weeks_(std::move(weeks)), m_(m) {}
  std::size_t outputs() const noexcept override { return days_.size() + weeks_.size(); }
  std::string name(std::size_t i) const override {
    return i < days_.size() ? "median_" + std::to_string(days_[i]) + "d"
                            : "median_" + std::to_string(weeks_[i - days_.size()]) + "w";
  }
  std::size_t memory_bytes() const noexcept override {
    return sizeof(*this) + (days_.capacity() + weeks_.capacity()) * sizeof(std::size_t);
  }
  void observe(const history&, const calendar&, bool) noexcept override {}
  void predict(const history& h, const calendar&, std::size_t k, double* out) const noexcept override {
    std::size_t o = 0;
    for (std::size_t d : days_) out[o++] = median_back(h, k, m_, d);
    for (std::size_t w : weeks_) out[o++] = median_back(h, k, 7 * m_, w);
  }

 private:
  // Median of the target's bin in the last `count` periods before it (only observed bins).
  static double median_back(const history& h, std::size_t k, std::size_t period, std::size_t count) noexcept {
    std::array<double, 16> v{};
    std::size_t c = 0;
    const std::size_t target = h.size() - 1 + k;
    const std::size_t first = period * ((k + period - 1) / period);  // nearest period back with data
    for (std::size_t back = first; c < count && c < v.size() && back <= target; back += period) {
      const std::size_t i = target - back;
      if (!h.has(i)) break;
      if (h.observed(i)) v[c++] = h.clean(i);
    }
    if (c == 0 || c * 2 < count) return std::nan("");
    std::sort(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(c));
    return c % 2 ? v[c / 2] : 0.5 * (v[c / 2 - 1] + v[c / 2]);
  }

  std::vector<std::size_t> days_, weeks_;
  std::size_t m_;
};

// The origin's value plus the usual change from its time of day to the target's: the median,
// over the last `days` days, of the same k-bin change in the cleaned history. This is what
// Holt-Winters forecasts with a fixed profile and a level that takes each new bin whole (the
// fit statsmodels finds on smooth aggregates), the profile read straight from the days. The ETS
// copies' persistent outputs mean the same, but their profile lives beside a slow level and
// clipped updates: on a smooth, growing aggregate with a strong daily cycle (ServeGen m-small,
// one half of its clients, hourly) they scored 15 % worse than Holt-Winters an hour ahead, and
// tollgate 1.10 x it. A day ahead it adds nothing the look-ups do not have and cost accuracy,
// so it speaks up to `max_k` steps only (NaN beyond: not scored, no weight). Chosen against the
// best of the six reference methods on the hold-out sets (forecast/RESULTS.md, 17).
class seasonal_change_model final : public model {
 public:
  seasonal_change_model(std::size_t days, std::size_t m, std::size_t max_k, std::size_t anchor)
      : days_(days), m_(m), max_k_(max_k), anchor_(std::max<std::size_t>(anchor, 1)),
        gaps_(std::min<std::size_t>(2 * days + (max_k + m - 1) / m, max_cached_days)) {}
  std::string name(std::size_t) const override { return "change_" + std::to_string(days_) + "d"; }
  std::size_t memory_bytes() const noexcept override { return sizeof(*this) + gaps_.capacity() * sizeof(day_gap); }
  // Today's level gap to each earlier day does not depend on the step, so it is computed once
  // per bin here rather than at every step of every forecast: at one-minute bins with a
  // 3-hour anchor that was 180 bins x 7 days per step, two thirds of a refresh's CPU.
  void observe(const history& h, const calendar&, bool) noexcept override {
    const std::size_t t = h.size() - 1;
    for (std::size_t i = 0; i < gaps_.size(); ++i) gaps_[i].st = gap_of(h, t, (i + 1) * m_, gaps_[i].gap);
    cached_ = &h;
    cached_size_ = h.size();
  }
  void predict(const history& h, const calendar&, std::size_t k, double* out) const noexcept override {
    out[0] = std::nan("");
    if (k > max_k_) return;
    const std::size_t t = h.size() - 1;
    const bool cached = cached_ == &h && cached_size_ == h.size();
    std::array<double, 16> v{};
    std::size_t c = 0;
    for (std::size_t d = (k + m_ - 1) / m_; c < days_ && c < v.size(); ++d) {
      const std::size_t back = d * m_;
      double gap = 0.0;
      state st;
      if (cached && d - 1 < gaps_.size()) {  // (d is at least 1: k is)
        st = gaps_[d - 1].st;
        gap = gaps_[d - 1].gap;
      } else {
        st = gap_of(h, t, back, gap);
      }
      if (st == state::end) break;
      if (st == state::none) continue;
      const std::size_t to = t - back + k;
      if (!h.observed(to)) continue;
      v[c++] = h.clean(to) + gap;
    }
    if (c == 0 || c * 2 < days_) return;  // a majority of the days is needed, as for the medians
    std::sort(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(c));
    out[0] = c % 2 ? v[c / 2] : 0.5 * (v[c / 2 - 1] + v[c / 2]);
  }

 private:
  enum class state : unsigned char { end, none, ok };
  struct day_gap {
    double gap = 0.0;
    state st = state::end;
  };
  static constexpr std::size_t max_cached_days = 32;

  // The day `back` bins ago: `end` if the history does not reach it (no earlier day does
  // either), `none` if its bin is a gap or none of the anchor's bins is observed, else `ok`
  // with `gap`: the change is added to today's level, the last `anchor_` bins' mean gap to the
  // same bins that day (one bin's noise is the level's error otherwise).
  state gap_of(const history& h, std::size_t t, std::size_t back, double& gap) const noexcept {
    if (back > t || !h.has(t - back)) return state::end;
    const std::size_t from = t - back;
    if (!h.observed(from)) return state::none;
    double sum = 0.0;
    std::size_t g = 0;
    for (std::size_t j = 0; j < anchor_ && j <= from && h.has(from - j); ++j) {
      if (!h.observed(from - j)) continue;  // z(): a gap today holds its one-step forecast
      sum += h.z(t - j) - h.clean(from - j);
      ++g;
    }
    if (g == 0) return state::none;
    gap = sum / static_cast<double>(g);
    return state::ok;
  }

  std::size_t days_, m_, max_k_, anchor_;
  // [d - 1]: day d's gap at the newest bin of the history observe() last saw (cached_, of
  // size cached_size_); a predict() on any other history computes its gaps itself.
  std::vector<day_gap> gaps_;
  const history* cached_ = nullptr;
  std::size_t cached_size_ = 0;
};

double per_bin(double per_hour, std::int64_t bin_s) noexcept {
  return std::pow(per_hour, static_cast<double>(bin_s) / 3600.0);
}

class ets_model final : public model {
 public:
  ets_model(const ets_params& p, std::int64_t bin_s)
      : p_(p),
        m_(static_cast<std::size_t>(86400 / bin_s)),
        alpha_(1.0 - per_bin(1.0 - p.alpha_hour, bin_s)),
        shift_bins_(std::max<std::size_t>(3, static_cast<std::size_t>(3600 / bin_s))),
        season_(m_, 0.0),
        season_visits_(m_, 0) {
    for (double ph : p.persistence_hour) phi_.push_back(per_bin(ph, bin_s));
  }

  std::size_t outputs() const noexcept override { return phi_.size(); }
  std::size_t memory_bytes() const noexcept override {
    return sizeof(*this) + (phi_.capacity() + p_.persistence_hour.capacity() + season_.capacity()) * sizeof(double) +
           season_visits_.capacity() * sizeof(std::size_t);
  }
  std::string name(std::size_t i) const override {
    const std::string prefix = p_.name ? p_.name : (p_.accept_shifts ? "ets_shift" : "ets");
    return prefix + "_p" + std::to_string(p_.persistence_hour[i]).substr(0, 4);
  }

  void observe(const history& h, const calendar& cal, bool observed) noexcept override {
    const std::size_t t = h.size() - 1;
    const std::size_t ph = cal.phase(t), wd = cal.weekday(t);
    if (!observed) {
      ++gap_age_;
      end_of_period(cal, t);
      return;
    }
    const double z = h.z(t);
    if (!initialised_) {
      level_ = z;
      initialised_ = true;
    }
    const double e = z - (level_ + season_[ph] + weekday_[wd]);
    // Robust scale: mean absolute innovation, itself fed with clipped values so a burst
    // widens it by a bounded factor per bin.
    const double s = scale_n_ < 3 ? std::max(std::fabs(e), 0.5) : std::max(scale_, 1e-3);
    const double ec = std::clamp(e, -p_.clip * s, p_.clip * s);
    const double gs = 1.0 / static_cast<double>(std::min<std::size_t>(scale_n_ + 1, 50));
    scale_ += std::max(gs, 0.02) * (std::min(std::fabs(e), p_.clip * s) - scale_);
    ++scale_n_;
    // Innovations beyond the clip on the same side for an hour (at least 3 bins) are a level
    // shift, not a burst: the level then takes the whole change at once.
    const int side = e > p_.clip * s ? 1 : (e < -p_.clip * s ? -1 : 0);
    shift_run_ = side == 0 ? 0 : (side == shift_side_ ? shift_run_ + 1 : 1);
    shift_side_ = side;
    if (p_.accept_shifts && shift_run_ >= shift_bins_) {
      level_ += e;
      shift_run_ = 0;
      ++obs_count_;
      residual_ = 0.0;
      gap_age_ = 0;
      end_of_period(cal, t);
      return;
    }

    // Early on the gains decrease like a running mean, so the first days set the profile.
    const double a = std::max(alpha_, 1.0 / static_cast<double>(obs_count_ + 1));
    const double g = std::max(p_.gamma, 1.0 / static_cast<double>(season_visits_[ph] + 1));
    const double w = std::max(p_.omega, 1.0 / static_cast<double>(weekday_days_[wd] + 1)) / static_cast<double>(m_);
    level_ += a * ec;
    season_[ph] += g * (1.0 - a) * ec;
    weekday_[wd] += w * (1.0 - a) * ec;
    ++season_visits_[ph];
    ++obs_count_;
    residual_ = z - (level_ + season_[ph] + weekday_[wd]);
    gap_age_ = 0;
    end_of_period(cal, t);
  }

  void predict(const history& h, const calendar& cal, std::size_t k, double* out) const noexcept override {
    const std::size_t n = outputs();
    if (!initialised_) {
      for (std::size_t i = 0; i < n; ++i) out[i] = std::nan("");
      return;
    }
    const std::size_t t = h.size() - 1, i = t + k;
    const std::size_t ph = cal.phase(i);
    // On the first day a bin's profile entry takes nearly all of its deviation from the level
    // (gain 1 on the first visit), so a target whose time of day was never seen would get
    // the bare level from every output, the persistent ones included: the current deviation,
    // parked in the current bin's entry, would be lost. There it persists like the residual
    // (the persistent outputs follow the series, the pure ETS keeps the level). The residual
    // belongs to the last observed bin, gap_age_ bins back, and so does the entry it pairs with.
    double season = season_[ph], dev = residual_;
    if (season_visits_[ph] == 0) {
      season = 0.0;
      dev += season_[cal.phase(t - gap_age_)];
    }
    const double base = level_ + season + weekday_[cal.weekday(i)];
    const double age = static_cast<double>(k + gap_age_);
    for (std::size_t j = 0; j < phi_.size(); ++j) out[j] = base + std::pow(phi_[j], age) * dev;
  }

 private:
  // Keeps the profiles centred (their means move into the level) at the end of each day/week.
  void end_of_period(const calendar& cal, std::size_t t) noexcept {
    if (cal.phase(t) != m_ - 1) return;
    double mean = 0.0;
    for (double v : season_) mean += v;
    mean /= static_cast<double>(m_);
    for (double& v : season_) v -= mean;
    level_ += mean;
    const std::size_t wd = cal.weekday(t);
    ++weekday_days_[wd];
    if (wd == 6) {
      double wm = 0.0;
      for (double v : weekday_) wm += v;
      wm /= 7.0;
      for (double& v : weekday_) v -= wm;
      level_ += wm;
    }
  }

  ets_params p_;
  std::size_t m_;
  double alpha_;
  std::vector<double> phi_;
  bool initialised_ = false;
  double level_ = 0.0, residual_ = 0.0, scale_ = 0.0;
  std::size_t scale_n_ = 0, obs_count_ = 0, gap_age_ = 0;
  std::size_t shift_bins_, shift_run_ = 0;
  int shift_side_ = 0;
  std::vector<double> season_;
  std::vector<std::size_t> season_visits_;
  std::array<double, 7> weekday_{};
  std::array<std::size_t, 7> weekday_days_{};
};

}  // namespace

std::unique_ptr<model> make_naive() { return std::make_unique<naive_model>(); }
std::unique_ptr<model> make_seasonal_naive(std::size_t period, const char* name) {
  return std::make_unique<seasonal_naive_model>(period, name);
}
std::unique_ptr<model> make_seasonal_median(std::vector<std::size_t> days, std::vector<std::size_t> weeks,
                                            std::size_t m) {
  return std::make_unique<seasonal_median_model>(std::move(days), std::move(weeks), m);
}
std::unique_ptr<model> make_seasonal_change(std::size_t days, std::size_t m, std::size_t max_k, std::size_t anchor) {
  return std::make_unique<seasonal_change_model>(days, m, max_k, anchor);
}
std::unique_ptr<model> make_ets(const ets_params& p, std::int64_t bin_s) {
  return std::make_unique<ets_model>(p, bin_s);
}

}  // namespace tollgate::forecast::detail
