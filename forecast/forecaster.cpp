// The forecaster: drives the component models bin by bin, scores each at a few representative
// horizon steps, combines them by recent out-of-sample error, and calibrates intervals from
// the empirical distribution of the ensemble's own recent errors (split-conformal style).
#include "forecast/forecaster.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "forecast/models.hpp"
#include "forecast/quantile.hpp"

namespace tollgate::forecast {
namespace {

struct tuning {
  double weight_power = 4.0;
  double aci_rate = 0.1;
  double bias = 0.0;
  double pool_days = 7.0;
  double track_days = 7.0;
  double alpha_hour = 0.05;
  double smooth_hour = 0.0;
  double only = -1;
  double count_scale = 0;
  double eg = 0;
  double sym = 0;
  double widen = 0.2;
  double aci_pow = 0.5;
  double det_days = 7;
  double fa_rate = 0;
  double norm = 1, vol_days = 3;
  double medians = 1, alpha2 = 0, gamma = 0.05, omega = 0.1, clip = 2.0;
  double share = 0.01;
  tuning() {
    auto envi = [](const char* k, double& v) { if (const char* e = std::getenv(k)) v = std::atof(e); };
    envi("TG_ONLY", only); envi("TG_COUNT", count_scale); envi("TG_EG", eg); envi("TG_SHARE", share); envi("TG_SYM", sym); envi("TG_WIDEN", widen); envi("TG_ACIPOW", aci_pow); envi("TG_DET", det_days); envi("TG_FA", fa_rate); envi("TG_NORM", norm); envi("TG_VOLD", vol_days);
    envi("TG_MED", medians); envi("TG_ALPHA2", alpha2); envi("TG_GAMMA", gamma); envi("TG_OMEGA", omega); envi("TG_CLIP", clip);
    auto env = [](const char* k, double& v) { if (const char* e = std::getenv(k)) v = std::atof(e); };
    env("TG_WP", weight_power); env("TG_ACI", aci_rate); env("TG_BIAS", bias); env("TG_POOL", pool_days);
    env("TG_TRACK", track_days); env("TG_ALPHA", alpha_hour); env("TG_SMOOTH", smooth_hour);
  }
};
const tuning tune;

constexpr std::size_t min_pool = 30;       // errors before a step's pool replaces the prior
constexpr std::size_t min_track = 12;      // errors before a model gets a say at a step
constexpr double mae_floor = 1e-3;

// Standard normal quantiles at quantile_levels (for the cold-start prior).
constexpr std::array<double, 5> normal_z{-1.6448536269514722, -1.2815515655446004, 0.0,
                                         1.2815515655446004, 1.6448536269514722};

std::vector<std::size_t> representative_steps(std::size_t h_max) {
  std::vector<std::size_t> reps;
  for (std::size_t base = 1; base <= h_max; base *= 2) {
    reps.push_back(base);
    if (base >= 2 && base + base / 2 <= h_max && base + base / 2 > base) reps.push_back(base + base / 2);
  }
  std::sort(reps.begin(), reps.end());
  reps.erase(std::unique(reps.begin(), reps.end()), reps.end());
  if (reps.empty() || reps.back() != h_max) reps.push_back(h_max);
  return reps;
}

}  // namespace

struct forecaster::impl {
  // Recent out-of-sample accuracy of one member at one representative step.
  struct track {
    std::vector<double> pending;  // predictions awaiting their target, ring of size `step`
    double mae = 0.0;             // exponentially weighted mean |log error|
    std::size_t n = 0;
  };
  // The ensemble's own recent errors at one representative step: a FIFO and its sorted copy,
  // plus the adaptive widening of each tail (adaptive conformal inference on a scale).
  struct pool {
    std::vector<double> pending;
    std::vector<double> pending_vol;
    std::vector<double> fifo;
    std::size_t head = 0;
    sorted_window sorted;
    double log_up = 0.0, log_lo = 0.0;
    std::vector<double> weight;  // exponentiated-gradient combination weights
    double abs_err = 0.0;        // mean |log error| of the ensemble (gradient scale)
    std::size_t n = 0;
  };

  forecaster_config cfg;
  detail::calendar cal;
  detail::history hist;
  std::vector<std::unique_ptr<detail::model>> models;
  std::vector<std::size_t> member_offset;  // first member index of each model
  std::size_t members = 0;
  std::vector<std::size_t> reps;
  std::vector<std::vector<track>> tracks;  // [member][rep]
  std::vector<pool> pools;                 // [rep]
  std::size_t pool_cap = 0;
  std::size_t track_window = 0;
  bool started = false;
  double vol = 0.0, vol_long = 0.0;
  std::size_t vol_n = 0;
  double diff_mae = 0.0;  // mean |one-bin log change|, for the cold-start prior
  std::size_t diff_n = 0;
  double last_observed_z = std::nan("");
  anomaly_state anomaly;
  // The one-step forecast made at the last origin (log scale), for gap filling and anomalies.
  double next_f = std::nan("");
  std::array<double, 5> next_q{};
  bool next_q_warm = false;
  double next_scale = 1.0;   // robust scale (1.4826 MAD) of one-step log errors
  double next_center = 0.0;  // their median
  double next_tail_hi = 0.0, next_tail_lo = 0.0;
  // Raw one-step log errors of the last pool_cap bins (not volatility-normalised: a spike is
  // judged against the long-run typical error, so a bursty day does not hide the next burst).
  std::vector<double> detector_fifo;
  std::size_t detector_head = 0;
  sorted_window detector_sorted;
  mutable std::vector<double> scratch_f, scratch_w;

  explicit impl(const forecaster_config& c) : cfg(c) { reset(0); }

  void reset(std::int64_t start_s) {
    if (cfg.bin_s <= 0 || 86400 % cfg.bin_s != 0) cfg.bin_s = 60;
    cfg.max_horizon = std::max<std::size_t>(cfg.max_horizon, 1);
    cal.bin_s = cfg.bin_s;
    cal.m = static_cast<std::size_t>(86400 / cfg.bin_s);
    cal.start_s = start_s;
    const std::size_t m = cal.m;
    hist.reset(std::max<std::size_t>(cfg.history_days, 1) * m + cfg.max_horizon + 1);
    models.clear();
    models.push_back(detail::make_naive());
    models.push_back(detail::make_seasonal_naive(m, "seasonal_naive_day"));
    if (cfg.history_days >= 7) models.push_back(detail::make_seasonal_naive(7 * m, "seasonal_naive_week"));
    if (tune.medians > 0) models.push_back(detail::make_seasonal_median({3, 7}, {2, 3, 4}, m));
    for (double a : {tune.alpha_hour, tune.alpha2}) {
      if (a <= 0) continue;
      detail::ets_params ep;
      ep.alpha_hour = a;
      ep.gamma = tune.gamma;
      ep.omega = tune.omega;
      ep.clip = tune.clip;
      ep.persistence_hour = {0.0, 0.5, 0.8, 0.95, 1.0};
      ep.smooth_hour = tune.smooth_hour;
      if (ep.smooth_hour > 0) ep.smooth_persistence_hour = {0.9, 1.0};
      models.push_back(detail::make_ets(ep, cfg.bin_s));
    }
    member_offset.clear();
    members = 0;
    for (const auto& md : models) {
      member_offset.push_back(members);
      members += md->outputs();
    }
    scratch_f.assign(members, 0.0);
    reps = representative_steps(cfg.max_horizon);
    tracks.assign(members, {});
    for (auto& per_member : tracks) {
      per_member.resize(reps.size());
      for (std::size_t r = 0; r < reps.size(); ++r) per_member[r].pending.assign(reps[r], std::nan(""));
    }
    pool_cap = std::max<std::size_t>(static_cast<std::size_t>(tune.pool_days * static_cast<double>(m)), min_pool);
    pool_cap = std::min<std::size_t>(pool_cap, 2016);
    track_window = std::min<std::size_t>(static_cast<std::size_t>(tune.track_days * static_cast<double>(m)), 2016);
    pools.assign(reps.size(), {});
    for (std::size_t r = 0; r < reps.size(); ++r) {
      pools[r].pending.assign(reps[r], std::nan(""));
      pools[r].pending_vol.assign(reps[r], 1.0);
      pools[r].fifo.assign(pool_cap, std::nan(""));
      pools[r].weight.assign(members, 1.0 / static_cast<double>(members));
    }
    detector_fifo.assign(std::min<std::size_t>(static_cast<std::size_t>(tune.det_days * static_cast<double>(m)), 4032), std::nan(""));
    detector_head = 0;
    detector_sorted.clear();
    next_scale = 1.0;
    next_center = 0.0;
    started = false;
    diff_mae = 0.0;
    vol = vol_long = 0.0;
    vol_n = 0;
    diff_n = 0;
    last_observed_z = std::nan("");
    anomaly = {};
    next_f = std::nan("");
    next_q_warm = false;
  }

  void predict_all(std::size_t k, std::vector<double>& f) const {
    for (std::size_t i = 0; i < models.size(); ++i) models[i]->predict(hist, cal, k, f.data() + member_offset[i]);
  }

  // Where step k falls between representative steps: reps[lo] <= k <= reps[hi], and the
  // log-linear interpolation weight of reps[hi].
  void bracket(std::size_t k, std::size_t& lo, std::size_t& hi, double& frac) const {
    hi = 0;
    while (hi + 1 < reps.size() && reps[hi] < k) ++hi;
    lo = (hi > 0 && reps[hi] > k) ? hi - 1 : hi;
    frac = lo == hi ? 0.0
                    : (std::log(static_cast<double>(k)) - std::log(static_cast<double>(reps[lo]))) /
                          (std::log(static_cast<double>(reps[hi])) - std::log(static_cast<double>(reps[lo])));
  }

  // Combined log forecast at step k from the members' predictions `f`, weighted by the inverse
  // of their recent mean absolute error (a power of it) at the steps around k.
  double combine(std::size_t k, const std::vector<double>& f) const {
    std::size_t lo = 0, hi = 0;
    double frac = 0.0;
    bracket(k, lo, hi, frac);
    double num = 0.0, den = 0.0;
    if (tune.eg > 0) {
      for (std::size_t j = 0; j < members; ++j) {
        if (!std::isfinite(f[j])) continue;
        const double w = pools[lo].weight[j] + (pools[hi].weight[j] - pools[lo].weight[j]) * frac;
        num += w * f[j];
        den += w;
      }
      return den > 0.0 ? num / den : f[0];
    }
    for (std::size_t j = 0; j < members; ++j) {
      const track& a = tracks[j][lo];
      const track& b = tracks[j][hi];
      if (a.n < min_track || b.n < min_track || !std::isfinite(f[j])) continue;
      if (tune.only >= 0 && j != static_cast<std::size_t>(tune.only)) continue;
      const double mae = std::max(a.mae + (b.mae - a.mae) * frac, mae_floor);
      const double w = std::pow(mae, -tune.weight_power);
      num += w * f[j];
      den += w;
    }
    if (den > 0.0) return num / den;
    // Cold: no member has a track record at this step yet; naive is the safest bet.
    return f[0];
  }

  double vol_factor() const {
    if (tune.norm <= 0 || vol_n < 10) return 1.0;
    return std::pow(std::max({vol, 0.3 * vol_long, 1e-3}), tune.norm);
  }

  // Log-scale error quantiles at one representative step: its pool widened by the adaptive
  // tail scales, or the cold-start prior.
  std::array<double, 5> rep_quantiles(std::size_t r, bool& warm) const {
    std::array<double, 5> q{};
    const pool& p = pools[r];
    if (p.sorted.size() >= min_pool) {
      for (std::size_t i = 0; i < 5; ++i) q[i] = p.sorted.quantile(quantile_levels[i]);
      const double vf = vol_factor();
      for (double& v : q) v *= vf;
      if (tune.sym > 0) {
        const double d90 = sorted_abs_deviation_quantile(p.sorted.values(), q[q50], 0.9);
        const double d80 = sorted_abs_deviation_quantile(p.sorted.values(), q[q50], 0.8);
        q[q05] = (1 - tune.sym) * q[q05] + tune.sym * (q[q50] - d90);
        q[q95] = (1 - tune.sym) * q[q95] + tune.sym * (q[q50] + d90);
        q[q10] = (1 - tune.sym) * q[q10] + tune.sym * (q[q50] - d80);
        q[q90] = (1 - tune.sym) * q[q90] + tune.sym * (q[q50] + d80);
      }
      const double up = std::exp(p.log_up), lo = std::exp(p.log_lo);
      for (std::size_t i : {q05, q10}) q[i] = q[q50] + lo * (q[i] - q[q50]);
      for (std::size_t i : {q90, q95}) q[i] = q[q50] + up * (q[i] - q[q50]);
      return q;
    }
    warm = false;
    // Cold start: a wide normal whose spread grows with the step like a random walk, from the
    // one-bin log changes seen so far (or a factor of ~2 when there are none).
    const double sd1 = diff_n >= 3 ? 1.2533 * diff_mae : 0.7;
    const double steps = static_cast<double>(std::min(reps[r], cal.m));
    const double sd = std::max(0.35, 1.5 * sd1 * std::sqrt(steps));
    for (std::size_t i = 0; i < 5; ++i) q[i] = normal_z[i] * sd;
    return q;
  }

  void eg_update(pool& p, std::size_t r, std::size_t slot, double z, double fc) {
    const double e = z - fc;
    const double g0 = 1.0 / static_cast<double>(std::min<std::size_t>(p.n + 1, track_window));
    p.abs_err += g0 * (std::fabs(e) - p.abs_err);
    ++p.n;
    const double scale = std::max(p.abs_err, 1e-3);
    const double sgn = e > 0 ? 1.0 : (e < 0 ? -1.0 : 0.0);
    double tot = 0.0;
    for (std::size_t j = 0; j < members; ++j) {
      const double fj = tracks[j][r].pending[slot];
      if (std::isfinite(fj)) p.weight[j] *= std::exp(std::clamp(tune.eg * sgn * (fj - fc) / scale, -5.0, 5.0));
      tot += p.weight[j];
    }
    for (double& w : p.weight) w = (1.0 - tune.share) * w / tot + tune.share / static_cast<double>(members);
  }

  void score_pool(pool& p, std::size_t r, double e_raw, double vf_origin) {
    const double e = e_raw / vf_origin;
    if (tune.aci_rate > 0.0 && p.sorted.size() >= min_pool) {
      bool warm = true;
      auto q = rep_quantiles(r, warm);
      for (double& v : q) v /= vol_factor();
      const double g = tune.aci_rate / std::pow(static_cast<double>(reps[r]), tune.aci_pow);
      p.log_up += g * ((e > q[q95] ? 1.0 : 0.0) - 0.05);
      p.log_lo += g * ((e < q[q05] ? 1.0 : 0.0) - 0.05);
      p.log_up = std::clamp(p.log_up, -1.5, 2.5);
      p.log_lo = std::clamp(p.log_lo, -1.5, 2.5);
    }
    double& old = p.fifo[p.head];
    if (!std::isnan(old)) p.sorted.erase(old);
    old = e;
    p.sorted.insert(e);
    p.head = (p.head + 1) % pool_cap;
  }

  void update(double value) noexcept {
    const std::size_t t = hist.size();  // index of the new bin
    const bool obs = !is_missing(value) && std::isfinite(value);
    const double z = obs ? std::log1p(std::max(value, 0.0)) : std::nan("");

    // Spike score: a robust z-score of this bin against the one-step forecast made before it
    // arrived (median and MAD of recent one-step errors, so the burst-heavy tail that widens
    // the 90% band does not mute it). Flagged when it also leaves the band.
    anomaly = {};
    if (obs && std::isfinite(next_f) && next_q_warm) {
      const double center = next_f + next_center;
      anomaly.expected = std::expm1(center);
      anomaly.upper = std::expm1(std::max(center + cfg.anomaly_threshold * next_scale, next_f + next_q[q95]));
      anomaly.score = (z - center) / next_scale;
      const bool outside = z > next_f + next_q[q95] || z < next_f + next_q[q05];
      const bool rare = z - next_f >= next_tail_hi || z - next_f <= next_tail_lo;
      anomaly.flag = outside && (tune.fa_rate <= 0 || rare) && std::fabs(anomaly.score) >= cfg.anomaly_threshold;
    }

    // Score the predictions whose target is this bin.
    if (obs) {
      for (std::size_t r = 0; r < reps.size(); ++r) {
        if (t < reps[r]) continue;
        const std::size_t slot = t % reps[r];
        for (std::size_t j = 0; j < members; ++j) {
          track& tr = tracks[j][r];
          const double f = tr.pending[slot];
          if (!std::isfinite(f)) continue;
          const double g = 1.0 / static_cast<double>(std::min(tr.n + 1, track_window));
          const double err = tune.count_scale > 0 ? std::fabs(std::expm1(z) - std::expm1(f)) : std::fabs(z - f);
          tr.mae += g * (err - tr.mae);
          ++tr.n;
        }
        const double f = pools[r].pending[slot];
        if (std::isfinite(f)) {
          if (tune.eg > 0) eg_update(pools[r], r, slot, z, f);
          score_pool(pools[r], r, z - f, pools[r].pending_vol[slot]);
          if (r == 0) {
            double& old = detector_fifo[detector_head];
            if (!std::isnan(old)) detector_sorted.erase(old);
            old = z - f;
            detector_sorted.insert(old);
            detector_head = (detector_head + 1) % detector_fifo.size();
            const double g = 1.0 / static_cast<double>(std::min<std::size_t>(vol_n + 1, static_cast<std::size_t>(tune.vol_days * cal.m) + 1));
            const double gl = 1.0 / static_cast<double>(std::min<std::size_t>(vol_n + 1, 14 * cal.m));
            vol += g * (std::fabs(z - f) - vol);
            vol_long += gl * (std::fabs(z - f) - vol_long);
            ++vol_n;
          }
        }
      }
      if (std::isfinite(last_observed_z)) {
        const double d = std::fabs(z - last_observed_z);
        diff_mae += (d - diff_mae) / static_cast<double>(std::min<std::size_t>(diff_n + 1, 500));
        ++diff_n;
      }
      last_observed_z = z;
    }

    // Append: a gap takes the ensemble's one-step forecast, never zero.
    double z_fill = z;
    if (!obs) z_fill = std::isfinite(next_f) ? next_f : (t > 0 ? hist.z(t - 1) : 0.0);
    hist.push(z_fill, obs);
    for (auto& md : models) md->observe(hist, cal, obs);

    // New predictions from this origin at every representative step.
    for (std::size_t r = 0; r < reps.size(); ++r) {
      const std::size_t k = reps[r];
      predict_all(k, scratch_f);
      for (std::size_t j = 0; j < members; ++j) tracks[j][r].pending[t % k] = scratch_f[j];
      const double fc = combine(k, scratch_f);
      pools[r].pending[t % k] = fc;
      pools[r].pending_vol[t % k] = vol_factor();
      if (k == 1) {
        next_f = fc;
        bool warm = true;
        next_q = rep_quantiles(0, warm);
        next_q_warm = warm;
        if (detector_sorted.size() >= min_pool) {
          const auto& v = detector_sorted.values();
          next_center = sorted_quantile(v, 0.5);
          next_scale = std::max(1.4826 * sorted_abs_deviation_quantile(v, next_center, 0.5), 0.05);
          const double p = tune.fa_rate / static_cast<double>(cal.m);
          next_tail_hi = sorted_quantile(v, 1.0 - p);
          next_tail_lo = sorted_quantile(v, p);
        }
      }
    }
  }

  forecast_result forecast(std::size_t horizon) const {
    forecast_result out;
    if (hist.size() == 0) return out;
    const std::size_t t = hist.size() - 1;
    out.origin_s = cal.start_s + static_cast<std::int64_t>(t) * cal.bin_s;
    horizon = std::min(horizon, cfg.max_horizon);
    bool warm = true;
    std::vector<std::array<double, 5>> rq(reps.size());
    for (std::size_t r = 0; r < reps.size(); ++r)
      if (r == 0 || reps[r - 1] < horizon) rq[r] = rep_quantiles(r, warm);
    out.warm = warm;
    out.steps.resize(horizon);
    for (std::size_t k = 1; k <= horizon; ++k) {
      predict_all(k, scratch_f);
      double fc = combine(k, scratch_f);
      if (!std::isfinite(fc)) fc = hist.z(t);
      std::size_t lo = 0, hi = 0;
      double frac = 0.0;
      bracket(k, lo, hi, frac);
      std::array<double, 5> qe{};
      for (std::size_t i = 0; i < 5; ++i) qe[i] = rq[lo][i] + (rq[hi][i] - rq[lo][i]) * frac;
      if (tune.widen > 0) {
        const double mult = 1.0 + tune.widen * std::min(1.0, static_cast<double>(k) / static_cast<double>(cal.m));
        for (std::size_t i : {q05, q10, q90, q95}) qe[i] = qe[q50] + mult * (qe[i] - qe[q50]);
      }
      step_forecast& sf = out.steps[k - 1];
      sf.timestamp_s = out.origin_s + static_cast<std::int64_t>(k) * cal.bin_s;
      for (std::size_t i = 0; i < 5; ++i) {
        sf.quantiles[i] = std::max(0.0, std::expm1(fc + qe[i]));
        if (i > 0) sf.quantiles[i] = std::max(sf.quantiles[i], sf.quantiles[i - 1]);
      }
      sf.point = std::max(0.0, std::expm1(fc + tune.bias * qe[q50]));
    }
    return out;
  }
};

forecaster::forecaster(const forecaster_config& cfg) : impl_(std::make_unique<impl>(cfg)) {}
forecaster::~forecaster() = default;
forecaster::forecaster(forecaster&&) noexcept = default;
forecaster& forecaster::operator=(forecaster&&) noexcept = default;

void forecaster::fit(const series& s) {
  impl_->cfg.bin_s = s.bin_s;
  impl_->reset(s.start_s);
  impl_->started = true;
  for (double v : s.values) impl_->update(v);
}

void forecaster::observe(std::int64_t timestamp_s, double value) noexcept {
  impl& d = *impl_;
  if (!d.started) {
    d.reset(timestamp_s);
    d.started = true;
    d.update(value);
    return;
  }
  const std::int64_t next = d.cal.start_s + static_cast<std::int64_t>(d.hist.size()) * d.cal.bin_s;
  if (timestamp_s < next) return;
  // A silence longer than the history is shortened by whole weeks: those bins would only be
  // gaps, and skipping whole weeks keeps every bin's time of day and weekday.
  std::int64_t skipped = (timestamp_s - next) / d.cal.bin_s;
  const auto week = static_cast<std::int64_t>(7 * d.cal.m);
  const auto cap = static_cast<std::int64_t>(d.hist.capacity());
  if (skipped > cap) {
    const std::int64_t drop = (skipped - cap) / week * week;
    d.cal.start_s += drop * d.cal.bin_s;
    skipped -= drop;
  }
  for (std::int64_t i = 0; i < skipped; ++i) d.update(std::nan(""));
  d.update(value);
}

void forecaster::update(double value) noexcept {
  if (!impl_->started) {
    impl_->reset(0);
    impl_->started = true;
  }
  impl_->update(value);
}

forecast_result forecaster::forecast(std::size_t horizon) const { return impl_->forecast(horizon); }
const anomaly_state& forecaster::anomaly() const noexcept { return impl_->anomaly; }
std::size_t forecaster::bins_seen() const noexcept { return impl_->hist.size(); }
const forecaster_config& forecaster::config() const noexcept { return impl_->cfg; }

}  // namespace tollgate::forecast
