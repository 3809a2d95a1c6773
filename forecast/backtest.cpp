// Rolling-origin backtest (PROTOCOL.md sections 2-8) and the spike-detection evaluation.
// Used by `tollgate-forecast backtest` and the backtest unit test.
#include "forecast/backtest.hpp"

#include <algorithm>
#include <array>
#include <cmath>

#include "forecast/quantile.hpp"

namespace tollgate::forecast {
namespace {

constexpr std::array<double, 3> pinball_levels{0.1, 0.5, 0.9};
constexpr std::array<std::size_t, 3> pinball_index{q10, q50, q90};

double rho(double a, double u) noexcept { return std::max(a * u, (a - 1.0) * u); }

// Sums behind the section 6 metrics of one (horizon, method).
struct accumulator {
  double abs_sum = 0.0, smape_sum = 0.0;
  std::size_t n = 0, n_prob = 0, covered = 0;
  std::array<double, 3> pin_sum{};

  void add(double y, double p, const std::array<double, 5>* q) noexcept {
    const double err = std::fabs(y - p);
    abs_sum += err;
    const double denom = std::fabs(y) + std::fabs(p);
    smape_sum += denom > 0.0 ? 200.0 * err / denom : 0.0;
    ++n;
    if (q == nullptr) return;
    ++n_prob;
    if ((*q)[q05] <= y && y <= (*q)[q95]) ++covered;
    for (std::size_t i = 0; i < 3; ++i) pin_sum[i] += rho(pinball_levels[i], y - (*q)[pinball_index[i]]);
  }

  method_metrics finish(std::string horizon, std::string method, std::size_t origins,
                        std::optional<double> scale) const {
    method_metrics r;
    r.horizon = std::move(horizon);
    r.method = std::move(method);
    r.n_origins = origins;
    r.n_points = n;
    r.n_points_prob = n_prob;
    const bool scaled = scale && *scale > 0.0 && std::isfinite(*scale);
    if (n > 0) {
      if (scaled) r.mase = abs_sum / static_cast<double>(n) / *scale;
      r.smape = smape_sum / static_cast<double>(n);
    }
    if (n_prob > 0) {
      r.coverage90 = static_cast<double>(covered) / static_cast<double>(n_prob);
      if (scaled) {
        double mean = 0.0;
        for (double s : pin_sum) mean += s / static_cast<double>(n_prob);
        r.pinball = mean / 3.0 / *scale;
      }
    }
    return r;
  }
};

struct horizon_spec {
  std::string label;
  std::size_t steps = 0;
};

double log1p_pos(double v) noexcept { return std::log1p(std::max(v, 0.0)); }

// Section 7-8 for one baseline: F(t,k) on the log scale of the filled series, quantiles from
// the per-step sliding pools of its own past log errors.
template <typename Fn>
void run_baseline(const std::vector<double>& y, std::size_t n_train, std::size_t t0, std::size_t pool,
                  const std::vector<horizon_spec>& hs, Fn&& f, std::vector<accumulator>& acc) {
  const std::size_t n = y.size();
  std::size_t h_max = 0;
  for (const auto& h : hs) h_max = std::max(h_max, h.steps);
  if (n < 2 || t0 > n - 2) return;
  auto error = [&](std::size_t s, std::size_t k) -> double {
    if (s + k > n - 1 || is_missing(y[s + k])) return std::nan("");
    const double fv = f(s, k);
    if (!std::isfinite(fv)) return std::nan("");
    return log1p_pos(y[s + k]) - fv;
  };
  for (std::size_t k = 1; k <= h_max; ++k) {
    sorted_window w;
    for (std::size_t t = t0; t + k <= n - 1; ++t) {
      if (t >= t0 + k) {  // s = t-k enters the pool
        const double e = error(t - k, k);
        if (!std::isnan(e)) w.insert(e);
      }
      if (t >= t0 + k + pool) {  // s = t-k-P leaves it
        const double e = error(t - k - pool, k);
        if (!std::isnan(e)) w.erase(e);
      }
      if (t + 1 < n_train || is_missing(y[t + k])) continue;
      const double fv = f(t, k);
      if (!std::isfinite(fv)) continue;
      const double point = std::expm1(fv);
      std::array<double, 5> q{};
      const bool has_q = t >= t0 + k && w.size() >= 10;
      if (has_q)
        for (std::size_t i = 0; i < 5; ++i) q[i] = std::expm1(fv + w.quantile(quantile_levels[i]));
      for (std::size_t hi = 0; hi < hs.size(); ++hi)
        if (k <= hs[hi].steps && t + hs[hi].steps <= n - 1)
          acc[hi].add(y[t + k], point, has_q ? &q : nullptr);
    }
  }
}

}  // namespace

backtest_outcome run_backtest(const series& s, const backtest_options& opt) {
  backtest_outcome out;
  const std::int64_t b = s.bin_s;
  if (b <= 0 || 86400 % b != 0) {
    out.error = "bin width must be positive and divide 86400";
    return out;
  }
  if (s.size() < 2 || s.missing_count() == s.size()) {
    out.error = "series needs at least two rows and one value";
    return out;
  }
  if (!(opt.train_fraction > 0.0 && opt.train_fraction < 1.0)) {
    out.error = "train fraction must lie in (0, 1)";
    return out;
  }
  std::vector<horizon_spec> hs;
  for (const auto& label : opt.horizons) {
    const auto secs = parse_duration(label);
    if (!secs || *secs % b != 0) {
      out.error = "horizon `" + label + "` is not a positive whole number of " + std::to_string(b) + " s bins";
      return out;
    }
    hs.push_back({label, static_cast<std::size_t>(*secs / b)});
  }
  if (hs.empty()) {
    out.error = "no horizon given";
    return out;
  }

  const std::vector<double>& y = s.values;
  backtest_report rep;
  rep.bin_seconds = b;
  rep.n = y.size();
  rep.m = static_cast<std::size_t>(86400 / b);
  rep.n_train = static_cast<std::size_t>(std::floor(opt.train_fraction * static_cast<double>(rep.n)));
  rep.n_missing = s.missing_count();
  const std::size_t n = rep.n, m = rep.m, n_train = rep.n_train;
  if (n_train < 1) {
    out.error = "training part is empty";
    return out;
  }
  rep.cal = static_cast<double>(n_train) / static_cast<double>(m) >= 28.0 ? 7 : 2;
  rep.t0 = std::max<std::ptrdiff_t>(static_cast<std::ptrdiff_t>(n_train) - static_cast<std::ptrdiff_t>(rep.cal * m),
                                    static_cast<std::ptrdiff_t>(3 * m + 1));
  double scale_sum = 0.0;
  std::size_t scale_n = 0;
  for (std::size_t i = m; i < n_train; ++i)
    if (!is_missing(y[i]) && !is_missing(y[i - m])) {
      scale_sum += std::fabs(y[i] - y[i - m]);
      ++scale_n;
    }
  if (scale_n > 0) rep.mase_scale = scale_sum / static_cast<double>(scale_n);

  std::size_t h_max = 0;
  for (const auto& h : hs) h_max = std::max(h_max, h.steps);
  auto origins = [&](const horizon_spec& h) -> std::size_t {
    return n >= h.steps + n_train ? n - h.steps - n_train + 1 : 0;
  };

  // tollgate: fed bin by bin from the start, forecasting every scored origin.
  std::vector<accumulator> acc_tg(hs.size());
  {
    forecaster_config cfg;
    cfg.bin_s = b;
    cfg.max_horizon = h_max;
    cfg.unit = suggest_unit(y, n_train);
    forecaster fc(cfg);
    fc.observe(s.start_s, y[0]);
    for (std::size_t t = 1; t < n_train; ++t) fc.update(y[t]);
    for (std::size_t t = n_train - 1; t + 1 < n; ++t) {
      if (t >= n_train) fc.update(y[t]);
      const forecast_result fr = fc.forecast(std::min(h_max, n - 1 - t));
      for (std::size_t k = 1; k <= fr.steps.size(); ++k) {
        if (is_missing(y[t + k])) continue;
        const step_forecast& sf = fr.steps[k - 1];
        if (!std::isfinite(sf.point)) continue;
        bool finite_q = true;
        for (double q : sf.quantiles) finite_q = finite_q && std::isfinite(q);
        for (std::size_t hi = 0; hi < hs.size(); ++hi)
          if (k <= hs[hi].steps && t + hs[hi].steps <= n - 1)
            acc_tg[hi].add(y[t + k], sf.point, finite_q ? &sf.quantiles : nullptr);
      }
      if (opt.progress && (t % 64 == 0)) opt.progress(0.8 * static_cast<double>(t + 1 - n_train) / static_cast<double>(n - n_train));
    }
  }

  // Baselines on the filled series (section 3, 7, 8).
  const std::vector<double> x = fill_missing(y, m);
  std::vector<double> z(n);
  for (std::size_t i = 0; i < n; ++i) z[i] = log1p_pos(x[i]);
  const std::size_t pool = 14 * m;
  auto naive = [&](std::size_t t, std::size_t) { return z[t]; };
  auto seasonal = [&](std::size_t period) {
    return [&z, period](std::size_t t, std::size_t k) {
      const std::size_t back = period * ((k + period - 1) / period);
      return t + k >= back ? z[t + k - back] : std::nan("");
    };
  };
  std::vector<accumulator> acc_naive(hs.size()), acc_sday(hs.size()), acc_sweek(hs.size());
  run_baseline(y, n_train, rep.t0, pool, hs, naive, acc_naive);
  if (opt.progress) opt.progress(0.87);
  run_baseline(y, n_train, rep.t0, pool, hs, seasonal(m), acc_sday);
  if (opt.progress) opt.progress(0.94);
  if (opt.extra_methods) run_baseline(y, n_train, rep.t0, pool, hs, seasonal(7 * m), acc_sweek);
  if (opt.progress) opt.progress(1.0);

  for (std::size_t hi = 0; hi < hs.size(); ++hi) {
    const std::size_t o = origins(hs[hi]);
    rep.results.push_back(acc_tg[hi].finish(hs[hi].label, "tollgate", o, rep.mase_scale));
    rep.results.push_back(acc_naive[hi].finish(hs[hi].label, "naive", o, rep.mase_scale));
    rep.results.push_back(acc_sday[hi].finish(hs[hi].label, "seasonal_naive_day", o, rep.mase_scale));
    if (opt.extra_methods)
      rep.results.push_back(acc_sweek[hi].finish(hs[hi].label, "seasonal_naive_week", o, rep.mase_scale));
  }
  out.report = std::move(rep);
  return out;
}

}  // namespace tollgate::forecast

namespace tollgate::forecast {

detection_report evaluate_detection(const series& s, const detection_options& opt) {
  detection_report rep;
  const std::size_t n = s.size();
  if (s.bin_s <= 0 || 86400 % s.bin_s != 0 || n < 2) return rep;
  const auto m = static_cast<std::size_t>(86400 / s.bin_s);
  const auto n_train = static_cast<std::size_t>(std::floor(opt.train_fraction * static_cast<double>(n)));
  if (n_train >= n) return rep;
  rep.test_bins = n - n_train;
  rep.test_days = static_cast<double>(rep.test_bins * static_cast<std::size_t>(s.bin_s)) / 86400.0;

  // Reference onsets: log jump over both the previous bin and the 7-day same-bin median.
  const std::vector<double> x = fill_missing(s.values, m);
  std::vector<double> jump(n, 0.0);
  for (std::size_t i = std::max<std::size_t>(n_train, 1); i < n; ++i) {
    if (is_missing(s.values[i])) continue;
    std::vector<double> same;
    for (std::size_t d = 1; d <= 7 && d * m <= i; ++d) same.push_back(log1p_pos(x[i - d * m]));
    double base = log1p_pos(x[i - 1]);
    if (!same.empty()) {
      std::sort(same.begin(), same.end());
      base = std::max(base, sorted_quantile(same, 0.5));
    }
    jump[i] = log1p_pos(s.values[i]) - base;
  }
  std::vector<std::size_t> order;
  for (std::size_t i = n_train; i < n; ++i)
    if (jump[i] >= opt.onset_log_jump) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return jump[a] > jump[b]; });
  std::vector<std::size_t> events;
  for (std::size_t i : order) {
    if (events.size() >= opt.top_bursts) break;
    const bool near = std::any_of(events.begin(), events.end(), [&](std::size_t e) { return (e > i ? e - i : i - e) < m; });
    if (!near) events.push_back(i);
  }
  std::sort(events.begin(), events.end());

  // Run the forecaster and collect upward flags.
  forecaster_config cfg = opt.forecaster;
  cfg.bin_s = s.bin_s;
  cfg.max_horizon = std::max<std::size_t>(cfg.max_horizon, 1);
  cfg.unit = suggest_unit(s.values, n_train);
  forecaster fc(cfg);
  std::vector<char> flag(n, 0);
  for (std::size_t i = 0; i < n; ++i) {
    fc.observe(s.timestamp(i), s.values[i]);
    if (i >= n_train) flag[i] = fc.anomaly().flag && fc.anomaly().score > 0.0;
  }
  for (std::size_t e : events) {
    long delay = -1;
    for (std::size_t j = e; j < n && j <= e + opt.episode_slack_bins; ++j)
      if (flag[j]) {
        delay = static_cast<long>(j - e);
        break;
      }
    rep.burst_timestamps.push_back(s.timestamp(e));
    rep.burst_delays_bins.push_back(delay);
    if (delay == 0) ++rep.bursts_in_first_bin;
  }
  for (std::size_t i = n_train; i < n; ++i) rep.onsets += jump[i] >= opt.onset_log_jump ? 1 : 0;
  auto starts_after = [&](std::size_t i, auto&& is_event) {
    for (std::size_t j = i + 1; j-- > n_train && j + opt.episode_slack_bins >= i;)
      if (is_event(j)) return true;
    return false;
  };
  for (std::size_t i = n_train; i < n; ++i) {
    if (!flag[i]) continue;
    ++rep.flagged_bins;
    if (i > n_train && flag[i - 1]) continue;  // inside an episode
    ++rep.alarm_episodes;
    if (!starts_after(i, [&](std::size_t j) { return jump[j] >= opt.onset_log_jump; })) ++rep.false_alarm_episodes;
    if (!starts_after(i, [&](std::size_t j) { return std::find(events.begin(), events.end(), j) != events.end(); }))
      ++rep.episodes_outside_top_bursts;
  }
  if (rep.test_days > 0.0) {
    rep.false_alarms_per_day = static_cast<double>(rep.false_alarm_episodes) / rep.test_days;
    rep.episodes_outside_top_bursts_per_day = static_cast<double>(rep.episodes_outside_top_bursts) / rep.test_days;
  }
  return rep;
}

}  // namespace tollgate::forecast
