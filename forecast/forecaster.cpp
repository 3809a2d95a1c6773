// The forecaster: drives the component models bin by bin, scores every member at a few
// representative horizon steps, combines them by recent out-of-sample error, calibrates
// intervals from the ensemble's own recent errors (conformal, volatility-normalised, with an
// adaptive tail scale), and scores each new bin for spikes. See forecast/README.md.
#include "forecast/forecaster.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "forecast/models.hpp"
#include "forecast/quantile.hpp"

namespace tollgate::forecast {
namespace {

// Ensemble and calibration constants. Chosen on the public traces for robustness (each is a
// broad optimum, see forecast/RESULTS.md), not tuned per series.
constexpr std::size_t min_pool = 30;        // errors before a step's pool replaces the prior
constexpr std::size_t min_track = 12;       // errors before a member gets a say at a step
constexpr std::size_t max_pool = 1440;      // bounds memory at short bins (a day of 1-minute bins)
constexpr double pool_days = 7.0;           // conformal pool length
constexpr double track_days = 7.0;          // memory of the members' error averages...
constexpr double short_hours = 6.0;         // ...and of their recent errors (level shifts)
constexpr double seed_days = 0.5;           // a late member's track starts as its peers' median, worth this much
constexpr double recent_weight = 0.5;       // score = week^0.5 x recent^0.5 (mean absolute errors)
constexpr double weight_power = 4.0;        // weight = mae^-4: close to picking the best, not quite
constexpr double family_share_power = 0.5;  // ...divided by sqrt(outputs of the member's model)
constexpr double fast_shift_clip = 1.2;     // clip (and shift threshold) of the fast-shift ETS copy
constexpr double min_half_width = 1e-5;   // narrowest band half-width, relative to the log1p median
constexpr double mae_floor_log = 1e-3;      // member scores below these floors tie (log scale...
constexpr double mae_floor_count = 1e-9;    // ...count scale: tiny, so dollar-per-bin series work)
constexpr std::int64_t trend_anchor_s = 10800;        // the trend member's level: the last 3 hours' gap to their days
constexpr double trend_gate_log = 0.09531017980432493;  // ln 1.1: the trend member's margin (combine())
constexpr double clip_members = 0.5;        // combine(): members clipped to the weighted median
constexpr double clip_next_bin = 2.0;       // +- this x the 90 % half-width (next bin: +- this x)
constexpr double clip_floor = 0.05;         // ...but never closer than 5 % (log 0.05)
constexpr std::size_t clip_min_pool = 60;   // ...and only once 3 errors per 5 % tail give that width
constexpr std::size_t max_members = 32;     // combine() scores members on the stack (25 today)
constexpr double vol_days = 3.0;            // volatility used to normalise errors
constexpr double vol_long_days = 14.0;      // ...floored at 0.3 x its long-run value
constexpr std::int64_t slow_vol_s = 600;    // steps from this far ahead: the volatility this far ahead
constexpr double aci_rate = 0.1;            // adaptive tail scale: log step per miss, / sqrt(step)
constexpr double aci_log_min = -1.5, aci_log_max = 2.5;
constexpr double aci_leak_days = 2.0;       // tail scales relax towards 1 with this time constant
constexpr std::int64_t aci_coarse_s = 3600;  // bins < 10 min: steps this far count in 10-minute units
constexpr double level_shift_widening = 0.25;  // extra band width a day ahead (level shifts)
constexpr double upper_cap_factor = 2.0;    // p90/p95 at most this x the busiest bin kept
constexpr double detector_days = 14.0;      // spike detector's memory of one-step errors
constexpr double clean_threshold = 4.0;     // robust z beyond which seasonal look-ups see a clipped value
constexpr double burst_threshold = 4.0;     // bins this many seasonal scales above the usual level...
constexpr double burst_max_days = 0.25;     // ...for at most 6 hours form a burst, cleaned when it ends
constexpr double cold_sd_max = 1.4;         // cold-start band at most x/÷10 at p95/p05 (1.645 x 1.4 = ln 10)

// Standard normal quantiles at quantile_levels (for the cold-start prior).
constexpr std::array<double, 5> normal_z{-1.6448536269514722, -1.2815515655446004, 0.0,
                                         1.2815515655446004, 1.6448536269514722};

// Steps at which members are scored and errors pooled: 1, 2, 3, 4, 6, 8, 12, ... and the
// horizon itself; other steps interpolate between the two around them (on log k).
std::vector<std::size_t> representative_steps(std::size_t h_max) {
  std::vector<std::size_t> reps;
  for (std::size_t base = 1; base <= h_max; base *= 2) {
    reps.push_back(base);
    if (base >= 2 && base + base / 2 <= h_max) reps.push_back(base + base / 2);
  }
  std::sort(reps.begin(), reps.end());
  reps.erase(std::unique(reps.begin(), reps.end()), reps.end());
  if (reps.back() != h_max) reps.push_back(h_max);
  return reps;
}

std::size_t days_to_bins(double days, std::size_t m, std::size_t cap) {
  return std::clamp<std::size_t>(static_cast<std::size_t>(days * static_cast<double>(m)), min_pool, cap);
}

// A bounded FIFO of values with a sorted copy for quantiles (float: see basic_sorted_window).
struct sorted_fifo {
  std::vector<float> fifo;
  std::size_t head = 0;
  basic_sorted_window<float> sorted;

  void reset(std::size_t cap) {
    fifo.assign(std::max<std::size_t>(cap, 1), std::nanf(""));
    head = 0;
    sorted.clear();
  }
  void push(double value) {
    const auto v = static_cast<float>(value);
    float& slot = fifo[head];
    if (!std::isnan(slot)) sorted.erase(slot);
    slot = v;
    sorted.insert(v);
    head = (head + 1) % fifo.size();
  }
  std::size_t memory_bytes() const noexcept { return (fifo.capacity() + sorted.capacity()) * sizeof(float); }
};

}  // namespace

struct forecaster::impl {
  // Recent out-of-sample accuracy of one member at one representative step.
  // Errors are absolute errors on the count scale (what the point forecast is judged by).
  struct track {
    std::vector<double> pending;  // predictions awaiting their target, ring of size `step`
    double mae = 0.0;             // exponentially weighted mean |error| (count scale)
    double mae_short = 0.0;       // the same over the last few hours (reacts to level shifts)
    // log of the member's score, (1 - recent_weight) ln mae + recent_weight ln mae_short, kept
    // up to date here because combine() runs for every member at every step of every forecast:
    // there a weight is then one exp instead of a sqrt and a pow (which pays for the 5 members
    // of the fast-shift ETS copy).
    double log_score = 0.0;
    std::size_t n = 0;    // errors averaged in (a seeded track starts above 0: seed_track)
    std::size_t own = 0;  // errors of its own; a member has a say from min_track of them
  };
  // The same at the next bin but on the log scale, for the spike detector's reference.
  struct log_track {
    double mae = 0.0, mae_short = 0.0;
  };
  // The ensemble's own recent errors at one representative step (divided by the volatility
  // at their origin), and the adaptive scale of each tail (adaptive conformal inference).
  struct pool {
    std::vector<double> pending;      // combined forecasts awaiting their target
    std::vector<double> pending_vol;  // volatility factor at their origin
    sorted_fifo errors;
    std::size_t stride = 1, seen = 0;  // once full, keep every stride-th error (see reset())
    double log_up = 0.0, log_lo = 0.0;
  };

  forecaster_config cfg;
  detail::calendar cal;
  detail::history hist;
  std::vector<std::unique_ptr<detail::model>> models;
  std::vector<std::size_t> member_offset;  // first member index of each model
  // [member] ln of its weight's share, -family_share_power x ln(outputs of its model): the five
  // persistence outputs of one ETS are one model's opinion, not five votes (see combine()).
  std::vector<double> member_log_share;
  std::size_t members = 0;
  std::size_t change_member = 0;  // the seasonal-change member: point forecasts only (reset())
  std::size_t trend_member = 0;   // the same over 7 days at every step: a challenger (combine())
  std::vector<std::size_t> reps;
  std::vector<std::vector<track>> tracks;  // [member][rep]
  std::vector<log_track> onestep_log;      // [member], step 1 only
  std::vector<pool> pools;                 // [rep]
  std::size_t track_window = 0;
  std::size_t short_window = 3;
  bool started = false;
  // Volatility: mean |error| of the combined forecast over a few days (and its long-run value
  // as a floor), at the next bin. Bins shorter than 10 minutes: steps from 10 minutes on use
  // slow_vol, the same at the first representative step of at least 10 minutes (slow_rep),
  // not the next bin's. A one-minute bin's next-bin error is mostly counting noise, which
  // shrinks relative to the level as traffic grows, so a day-ahead band scaled by it narrowed
  // just when the level moved (forecast/RESULTS.md, 20). slow_rep 0 = not used (10-minute
  // bins and up).
  struct volatility {
    double v = 0.0, v_long = 0.0;
    std::size_t n = 0;
  };
  volatility next_vol, slow_vol;
  std::size_t slow_rep = 0;
  double diff_mae = 0.0;  // mean |one-bin log change|, for the cold-start prior
  std::size_t diff_n = 0;
  double level_mean = 0.0;  // mean observed count (last ~500 bins), the cold band's upper scale
  double last_observed_z = std::nan("");
  // The one-step forecasts made at the last origin (log scale): next_f is combined by log
  // accuracy (the spike detector's reference, gap filling, cleaning), next_point by count
  // accuracy (the point forecast, the centre of the band).
  double next_f = std::nan("");
  double next_point = std::nan("");
  std::array<double, 5> next_q{};
  bool next_warm = false;
  // Spike detector: raw one-step log errors (not volatility-normalised, so a bursty day does
  // not hide the next burst), their median, robust scale and rare-tail quantiles.
  sorted_fifo detector;
  double det_center = 0.0, det_scale = 1.0, det_tail_hi = 0.0, det_tail_lo = 0.0, det_threshold = 3.0;
  anomaly_state anomaly;
  bool spike_scored = false;  // the newest bin was scored (detector warm)
  std::vector<double> scratch;
  // A burst in progress: the bins since burst_start sit above the seasonal reference by more
  // than burst_edge() allows (see track_burst). seas_scale: mean |z - seasonal reference|, clipped.
  std::size_t burst_start = 0, burst_len = 0;
  double seas_scale = 0.0;
  std::size_t seas_n = 0;
  // Busiest observed bin (log1p) of each day in the kept history, a ring by day index: the
  // upper cap of the bands (forecast()) without a scan of the whole history per forecast.
  std::vector<float> day_max;

  explicit impl(const forecaster_config& c) : cfg(c) { reset(0); }

  void reset(std::int64_t start_s) {
    if (cfg.bin_s <= 0 || 86400 % cfg.bin_s != 0) cfg.bin_s = 60;
    if (!(cfg.unit > 0.0) || !std::isfinite(cfg.unit)) cfg.unit = 1.0;
    cfg.max_horizon = std::max<std::size_t>(cfg.max_horizon, 1);
    cal.bin_s = cfg.bin_s;
    cal.m = static_cast<std::size_t>(86400 / cfg.bin_s);
    cal.start_s = start_s;
    const std::size_t m = cal.m;
    const std::size_t history_bins =
        std::min(std::max<std::size_t>(cfg.history_days, 1) * m, std::max(cfg.max_history_bins, m));
    hist.reset(history_bins + cfg.max_horizon + 1);
    day_max.assign((history_bins + m - 1) / m + 1, -std::numeric_limits<float>::infinity());

    models.clear();
    models.push_back(detail::make_naive());
    models.push_back(detail::make_seasonal_naive(m, "seasonal_naive_day"));
    if (history_bins >= 7 * m) models.push_back(detail::make_seasonal_naive(7 * m, "seasonal_naive_week"));
    models.push_back(detail::make_seasonal_median({3, 7}, {2, 3, 4}, m));
    // Up to an hour ahead: the day-ahead pairs lost with it (forecast/RESULTS.md, 17). A step
    // between two representative steps is weighted only if both are within that (1-minute bins:
    // up to 48 steps, the representative step after it being 64; 10-minute and hourly: the hour).
    // It takes no part in the log-scale one-step combination (the detector's reference, the gap
    // fill and the cleaning): there it lowered the score of BurstGPT's 02-18 10:00 burst below
    // the threshold (4 of 5 flagged), and that combination was chosen for the detector.
    const std::size_t change_model = models.size();
    models.push_back(detail::make_seasonal_change(3, m, std::max<std::size_t>(1, static_cast<std::size_t>(3600 / cfg.bin_s))));
    // The trend challenger: the same look-up over 7 days at every step, the one member that
    // carries a trend (today's value plus the usual change to the target). As an ordinary member
    // it lost a day ahead on every real set, so combine() weighs it only where it beats every
    // other member by trend_gate_log (forecast/RESULTS.md, 19).
    const std::size_t trend_model = models.size();
    models.push_back(detail::make_seasonal_change(7, m, cfg.max_horizon, std::max<std::size_t>(1, static_cast<std::size_t>(trend_anchor_s / cfg.bin_s))));
    models.push_back(detail::make_ets(detail::ets_params{}, cfg.bin_s));
    detail::ets_params shifting;  // same, but a sustained change moves the level at once
    shifting.accept_shifts = true;
    models.push_back(detail::make_ets(shifting, cfg.bin_s));
    // A third copy with a tight clip: its level moves little on single spikes but takes a shift
    // as soon as an hour of bins sits beyond 1.2 typical innovations (the copy above waits
    // for 2), so it follows clients that stop, start or step within the hour.
    detail::ets_params fast = shifting;
    fast.clip = fast_shift_clip;
    fast.name = "ets_fast";
    models.push_back(detail::make_ets(fast, cfg.bin_s));
    member_offset.clear();
    member_log_share.clear();
    members = 0;
    for (const auto& md : models) {
      member_offset.push_back(members);
      members += md->outputs();
      member_log_share.insert(member_log_share.end(), md->outputs(),
                              -family_share_power * std::log(static_cast<double>(md->outputs())));
    }
    change_member = member_offset[change_model];
    trend_member = member_offset[trend_model];
    scratch.assign(members, 0.0);

    reps = representative_steps(cfg.max_horizon);
    tracks.assign(members, {});
    onestep_log.assign(members, {});
    for (auto& per_member : tracks) {
      per_member.resize(reps.size());
      for (std::size_t r = 0; r < reps.size(); ++r) per_member[r].pending.assign(reps[r], std::nan(""));
    }
    track_window = days_to_bins(track_days, m, max_pool);
    short_window = std::max<std::size_t>(3, static_cast<std::size_t>(short_hours * 3600.0 / static_cast<double>(cfg.bin_s)));
    pools.assign(reps.size(), {});
    for (std::size_t r = 0; r < reps.size(); ++r) {
      pools[r].pending.assign(reps[r], std::nan(""));
      pools[r].pending_vol.assign(reps[r], 1.0);
      pools[r].errors.reset(days_to_bins(pool_days, m, max_pool));
      pools[r].stride = (static_cast<std::size_t>(pool_days * static_cast<double>(m)) + max_pool - 1) / max_pool;
      pools[r].seen = 0;
    }
    detector.reset(days_to_bins(detector_days, m, 2 * max_pool));
    // The z threshold also covers the Gaussian tail of the target rate, which matters where
    // the pool is too short to resolve it (one-minute bins).
    det_threshold = std::max(cfg.anomaly_threshold,
                             normal_quantile(1.0 - cfg.anomaly_rate_per_day / static_cast<double>(m)));
    det_center = 0.0;
    det_scale = 1.0;
    det_tail_hi = det_tail_lo = 0.0;
    next_vol = slow_vol = {};
    slow_rep = 0;
    while (slow_rep + 1 < reps.size() && static_cast<std::int64_t>(reps[slow_rep]) * cfg.bin_s < slow_vol_s) ++slow_rep;
    diff_mae = 0.0;
    diff_n = 0;
    level_mean = 0.0;
    last_observed_z = std::nan("");
    next_f = next_point = std::nan("");
    next_warm = false;
    anomaly = {};
    burst_start = burst_len = 0;
    seas_scale = 0.0;
    seas_n = 0;
    started = false;
  }

  void predict_all(std::size_t k, std::vector<double>& f) const {
    for (std::size_t i = 0; i < models.size(); ++i) models[i]->predict(hist, cal, k, f.data() + member_offset[i]);
  }

  // Where step k falls between representative steps: reps[lo] <= k <= reps[hi], and the
  // weight of reps[hi] when interpolating on log k.
  void bracket(std::size_t k, std::size_t& lo, std::size_t& hi, double& frac) const {
    hi = 0;
    while (hi + 1 < reps.size() && reps[hi] < k) ++hi;
    lo = (hi > 0 && reps[hi] > k) ? hi - 1 : hi;
    frac = lo == hi ? 0.0
                    : (std::log(static_cast<double>(k)) - std::log(static_cast<double>(reps[lo]))) /
                          (std::log(static_cast<double>(reps[hi])) - std::log(static_cast<double>(reps[lo])));
  }

  // Combined log forecast at step k: members weighted by mae^-weight_power of their recent
  // errors at the steps around k, where mae is the geometric mean of a week's and the last
  // hours' mean absolute error on the count scale (a member that was best all week but is
  // wrong since a level shift loses its weight within hours). A model with several outputs
  // (the ETS copies' five persistences, the five seasonal medians) has each output's weight
  // divided by the square root of their number: its outputs are nearly the same forecast, and
  // where they tied with a one-output model (the daily seasonal naive) on a week's errors,
  // fifteen ETS outputs that missed a client's daily job outvoted the look-ups that had it
  // (RESULTS.md section 15). Before any member has a track record, the naive; beyond the longest
  // step with one, that step's weights. `log_scale`
  // (step 1 only): weights from log errors instead.
  double combine(std::size_t k, const std::vector<double>& f, bool log_scale = false) const {
    std::size_t lo = 0, hi = 0;
    double frac = 0.0;
    bracket(k, lo, hi, frac);
    log_scale = log_scale && hi == 0;
    // A step beyond every scored one (a month ahead on three weeks of hourly history: no
    // forecast that far has met its target yet) takes the weights of the longest step that has
    // a track record. Falling back to the naive there flattened the month's hourly path at the
    // last hour's value: a month projection made at the daily peak was twice one made at the
    // trough.
    const auto recorded = [&](std::size_t r) {
      for (std::size_t j = 0; j < members; ++j)
        if (tracks[j][r].own >= min_track) return true;
      return false;
    };
    if (!log_scale && !recorded(hi)) {
      std::size_t r = hi;
      while (r > 0 && !recorded(r)) --r;
      lo = hi = r;
      frac = 0.0;
    }
    // Weights relative to the best member's score, so they neither overflow nor underflow
    // whatever the count scale (tokens, dollars). Scores are on the log scale: the weight
    // (best / score)^weight_power is then one exp.
    std::array<double, max_members> log_score;
    std::array<bool, max_members> scored;
    const std::size_t nm = std::min(members, max_members);
    double best = std::numeric_limits<double>::infinity();
    for (std::size_t j = 0; j < nm; ++j) {
      const track& a = tracks[j][lo];
      const track& b = tracks[j][hi];
      scored[j] = a.own >= min_track && b.own >= min_track && std::isfinite(f[j]) &&
                  !(log_scale && (j == change_member || j == trend_member));
      if (!scored[j]) continue;
      double ls = 0.0;
      if (log_scale) {
        const log_track& lt = onestep_log[j];
        ls = std::max(0.5 * (std::log(std::max(lt.mae, 1e-300)) + std::log(std::max(lt.mae_short, 1e-300))),
                      std::log(mae_floor_log));
      } else {
        // Interpolated on log k between the representative steps (geometrically).
        ls = std::max(a.log_score + (b.log_score - a.log_score) * frac, std::log(mae_floor_count));
      }
      log_score[j] = ls;
      if (j != trend_member) best = std::min(best, ls);
    }
    // The trend challenger has a say only where it is clearly the best; then the others are
    // weighed against it.
    if (trend_member < nm && scored[trend_member]) {
      if (log_score[trend_member] < best - trend_gate_log) best = log_score[trend_member];
      else scored[trend_member] = false;
    }
    // (forecast, weight) of the scored members.
    std::array<std::pair<double, double>, max_members> fw;
    std::size_t ns = 0;
    double num = 0.0, den = 0.0, f_min = std::numeric_limits<double>::infinity(), f_max = -f_min;
    for (std::size_t j = 0; j < nm; ++j) {
      if (!scored[j]) continue;
      const double w = std::exp(weight_power * (best - log_score[j]) + member_log_share[j]);
      fw[ns++] = {f[j], w};
      num += w * f[j];
      den += w;
      f_min = std::min(f_min, f[j]);
      f_max = std::max(f_max, f[j]);
    }
    if (den <= 0.0) return f[0];
    // A weighted mean of log forecasts is at the mercy of one member that is far out: after an
    // outage hour the naive, the persistent ETS outputs and a look-up of last week's outage
    // forecast ~0 while the rest say 300k, and a fifth of the weight on log 0 takes the
    // combination down 10x. So each member is first clipped to within half the ensemble's
    // 90 % half-width at this step (on the long-run volatility, so an outage's own errors do
    // not widen it) of the members' weighted median. At the next bin the clip is 4 times
    // wider: there the member far from the others is the naive during a burst, and it is right.
    const double clip = clip_width(lo, hi == 0);
    if (f_max - f_min <= clip) return num / den;  // nobody can be clipped
    std::sort(fw.begin(), fw.begin() + static_cast<std::ptrdiff_t>(ns));
    double acc = 0.0, med = fw[ns - 1].first;
    for (std::size_t i = 0; i < ns; ++i) {
      acc += fw[i].second;
      if (acc >= 0.5 * den) {
        med = fw[i].first;
        break;
      }
    }
    num = 0.0;
    for (std::size_t i = 0; i < ns; ++i) num += fw[i].second * std::clamp(fw[i].first, med - clip, med + clip);
    return num / den;
  }

  // How far (log) a member may sit from the members' weighted median in combine(): a multiple
  // of the pool's 90 % half-width (volatility-normalised) times the long-run volatility;
  // infinite until the pool holds 60 errors (with 30, the intervals' minimum, each 5 % tail is
  // one or two errors: on the 1-minute files, 40 training bins, the clip then cost 1.5 %).
  double clip_width(std::size_t r, bool next_bin) const noexcept {
    const pool& p = pools[r];
    if (p.errors.sorted.size() < clip_min_pool) return std::numeric_limits<double>::infinity();
    const double half = 0.5 * (p.errors.sorted.quantile(0.95) - p.errors.sorted.quantile(0.05));
    return (next_bin ? clip_next_bin : clip_members) * std::max(half * std::max(vol_at(r).v_long, 1e-3), clip_floor);
  }

  const volatility& vol_at(std::size_t r) const noexcept {
    return slow_rep > 0 && r >= slow_rep ? slow_vol : next_vol;
  }

  // One more |error| into a volatility's 3-day and 14-day means.
  void add_volatility(volatility& vo, double err) const noexcept {
    vo.v += (err - vo.v) / static_cast<double>(std::min(vo.n + 1, days_to_bins(vol_days, cal.m, 1u << 20)));
    vo.v_long += (err - vo.v_long) / static_cast<double>(std::min(vo.n + 1, days_to_bins(vol_long_days, cal.m, 1u << 20)));
    ++vo.n;
  }

  // What the errors at representative step r are divided by (pools) and multiplied by (bands).
  double vol_factor(std::size_t r) const noexcept {
    const volatility& vo = vol_at(r);
    return vo.n < 5 ? 1.0 : std::max({vo.v, 0.3 * vo.v_long, 1e-3});
  }

  // Log-scale error quantiles at one representative step: the pool's quantiles times the
  // current volatility, each tail stretched by its adaptive scale; or the cold-start prior.
  std::array<double, 5> rep_quantiles(std::size_t r, bool& warm) const {
    std::array<double, 5> q{};
    const pool& p = pools[r];
    if (p.errors.sorted.size() >= min_pool) {
      const double vf = vol_factor(r);
      for (std::size_t i = 0; i < 5; ++i) q[i] = vf * p.errors.sorted.quantile(quantile_levels[i]);
      const double up = std::exp(p.log_up), lo = std::exp(p.log_lo);
      for (std::size_t i : {q05, q10}) q[i] = q[q50] + lo * (q[i] - q[q50]);
      for (std::size_t i : {q90, q95}) q[i] = q[q50] + up * (q[i] - q[q50]);
      return q;
    }
    warm = false;
    // Cold start: a wide normal whose spread grows with the step like a random walk, from the
    // one-bin log changes seen so far (or a factor of ~2 when there are none), up to a cap: an
    // uncapped walk of factor-2 steps puts p90 an hour ahead at e^10 times the level, which is
    // no information at all. These are relative (log-ratio) offsets; forecast() applies them
    // around the point with cold_offsets().
    const double sd1 = diff_n >= 3 ? 1.2533 * diff_mae : 0.7;
    const double steps = static_cast<double>(std::min(reps[r], cal.m));
    const double sd = std::clamp(1.5 * sd1 * std::sqrt(steps), 0.35, cold_sd_max);
    for (std::size_t i = 0; i < 5; ++i) q[i] = normal_z[i] * sd;
    return q;
  }

  // How far one miss moves a tail scale at step reps[r]: aci_rate / sqrt(step). At bins
  // under 10 minutes, steps of an hour or more count in 10-minute units, b = bins per 10 minutes:
  // the step is k / b and each miss 1 / b of one, aci_rate / sqrt(k / b) / b = aci_rate /
  // sqrt(k b). A day-ahead error of a one-minute bin is not news its neighbours lack: a level shift
  // misses ten one-minute bins for each 10-minute one. Counted per bin, the tails moved sqrt(10)
  // times as far in a day as at 10-minute bins, so after three calm days the day-ahead upper tail
  // was 0.4 narrower in log and the next day's 2.5x level missed it (forecast/RESULTS.md, 21).
  // Shorter steps keep the per-bin gain: their errors arrive within the hour, and on short
  // one-minute traces the quick correction is what holds their coverage.
  double aci_gain(std::size_t r) const noexcept {
    const double k = static_cast<double>(reps[r]);
    if (cfg.bin_s >= slow_vol_s || static_cast<std::int64_t>(reps[r]) * cfg.bin_s < aci_coarse_s)
      return aci_rate / std::sqrt(k);
    const double b = static_cast<double>(slow_vol_s) / static_cast<double>(cfg.bin_s);  // bins per 10 minutes
    return aci_rate / std::sqrt(k * b);
  }

  // Records the ensemble's error at step reps[r]; first moves the tail scales (a miss widens
  // that tail by aci_gain(r), a hit narrows it by 1/19 of that, so each tail settles where 5%
  // of errors fall outside; / sqrt(step) because a step-k error arrives k bins late).
  void score_pool(std::size_t r, double e, double vf_origin) {
    pool& p = pools[r];
    if (p.errors.sorted.size() >= min_pool) {
      bool warm = true;
      const auto q = rep_quantiles(r, warm);
      const double vf = vol_factor(r);
      const double g = aci_gain(r);
      // The leak forgets old misses: plain ACI would over-cover for ~19 bins per past miss to
      // make up for a volatile hour, which on a short horizon of evaluation is just too wide.
      const double keep = 1.0 - 1.0 / (aci_leak_days * static_cast<double>(cal.m));
      p.log_up *= keep;
      p.log_lo *= keep;
      p.log_up = std::clamp(p.log_up + g * ((e * vf > q[q95] * vf_origin ? 1.0 : 0.0) - 0.05), aci_log_min, aci_log_max);
      p.log_lo = std::clamp(p.log_lo + g * ((e * vf < q[q05] * vf_origin ? 1.0 : 0.0) - 0.05), aci_log_min, aci_log_max);
    }
    // Full pools keep every stride-th error: at 1-minute bins the cap holds one day of
    // origins, all from the same day of the week; the stride makes it span pool_days.
    const bool full = p.errors.sorted.size() >= p.errors.fifo.size();
    if (!full || p.seen++ % p.stride == 0) p.errors.push(e / vf_origin);
  }

  void score_spike(double z) {
    anomaly = {};
    if (!std::isfinite(next_f) || !next_warm || detector.sorted.size() < min_pool) return;
    spike_scored = true;
    anomaly.scored = true;
    // A count is never below 0, and neither is the centre a bin is compared with. An idle
    // series' centre falls a hair below log1p(0); one whose recent one-step errors are mostly
    // a drop to zero (a client sending ~200 a bin stops) falls far below it, and every later
    // bin of 0 then scored +30 and was flagged as a spike, "above" an upper bound below zero
    // (found by fuzz_forecast).
    const double center = std::max(0.0, next_f + det_center);
    const double e = z - next_f;
    anomaly.expected = cfg.unit * std::expm1(center);
    anomaly.upper = cfg.unit * std::expm1(std::max({center + det_threshold * det_scale, next_point + next_q[q95],
                                         next_f + det_tail_hi}));
    anomaly.score = (z - center) / det_scale;
    const bool outside = z - next_point > next_q[q95] || z - next_point < next_q[q05];
    const bool rare = e >= det_tail_hi || e <= det_tail_lo;
    anomaly.flag = outside && rare && std::fabs(anomaly.score) >= det_threshold;
  }

  // Median of the cleaned history at this bin's time of day over the last 7 days (NaN with
  // fewer than 2 of them).
  double seasonal_reference(std::size_t t) const noexcept {
    std::array<double, 7> v{};
    std::size_t c = 0;
    for (std::size_t d = 1; d <= 7 && d * cal.m <= t; ++d)
      if (hist.has(t - d * cal.m)) v[c++] = hist.clean(t - d * cal.m);
    if (c < 2) return std::nan("");
    for (std::size_t i = 1; i < c; ++i)  // insertion sort (std::sort on 7 trips -Warray-bounds)
      for (std::size_t j = i; j > 0 && v[j] < v[j - 1]; --j) std::swap(v[j], v[j - 1]);
    return c % 2 ? v[c / 2] : 0.5 * (v[c / 2 - 1] + v[c / 2]);
  }

  // How far above the seasonal reference a bin may sit and still be usual traffic: the larger
  // of the cleaning band and burst_threshold seasonal scales (the day-to-day spread of a time
  // of day, which on smooth aggregates is several times the one-step error).
  double burst_edge() const noexcept {
    return std::max(clean_threshold * det_scale, burst_threshold * std::max(seas_scale, 0.05));
  }

  // Whether bin t's raw value z repeats the raw value the same time a day or a week earlier: a
  // daily or weekly job rather than a one-off burst. Repeats = within the larger of `edge` (the
  // usual band) and half the bin's distance from `ref`, the reference it would be cleaned
  // against (NaN: the band alone): a job's runs differ by more than the noise of an idle
  // client's zeros (2.5k one day, 6k the next) but far less than from the idle hours around them.
  bool repeats_earlier(std::size_t t, double z, double ref, double edge) const noexcept {
    const double tol = std::isfinite(ref) ? std::max(edge, 0.5 * std::fabs(z - ref)) : edge;
    for (const std::size_t back : {cal.m, 7 * cal.m})
      if (t >= back && hist.has(t - back) && hist.observed(t - back) && std::fabs(z - hist.z(t - back)) <= tol)
        return true;
    return false;
  }

  // Bursts leave the cleaned history once they have ended. The cleaning at append time clips
  // a bin only against the one-step forecast, which follows a burst after its first bin (the
  // naive and the persistent members carry it), so a burst of several bins stayed in the copy
  // the seasonal look-ups read: a one-off batch of 40k requests on an otherwise idle client
  // came back as next week's forecast, with a band as narrow as the idle week's errors. Here a
  // run of bins above the seasonal reference (median of the last 7 days at that time of day)
  // by more than burst_edge() that ends within burst_max_days is clipped to that edge in the
  // cleaned copy, except bins that repeat the same time a day or a week earlier (a daily or
  // weekly job is traffic to forecast, not a burst). A longer run is a level shift and is kept.
  // ref: seasonal_reference(t), NaN when unknown or the bin was not scored.
  void track_burst(std::size_t t, double z, double ref) noexcept {
    if (!std::isfinite(ref)) {
      burst_len = 0;
      return;
    }
    const double edge = burst_edge();
    const double d = z - ref;
    const double g = 1.0 / static_cast<double>(std::min(seas_n + 1, 7 * cal.m));
    seas_scale += g * (std::min(std::fabs(d), 3.0 * std::max(seas_scale, 0.05)) - seas_scale);
    ++seas_n;
    if (d > edge) {
      if (burst_len == 0) burst_start = t;
      ++burst_len;
      return;
    }
    if (burst_len == 0) return;
    const std::size_t max_len = std::max<std::size_t>(1, static_cast<std::size_t>(burst_max_days * static_cast<double>(cal.m)));
    if (burst_len <= max_len) {
      for (std::size_t i = burst_start; i < burst_start + burst_len; ++i) {
        const double ri = seasonal_reference(i);
        if (repeats_earlier(i, hist.z(i), ri, edge)) continue;
        if (std::isfinite(ri)) hist.clip_clean(i, ri + edge);
      }
    }
    burst_len = 0;
  }

  // A member that starts late (the day look-up after a day, the medians after days, the week
  // look-up after a week) would otherwise be scored on its first errors alone, against peers
  // scored over the whole past week. After a quiet day its dozen small errors beat peers that
  // lived through a burst, and it takes over: in a 10-day window of BurstGPT whose second day
  // held a 30-hour burst, the week look-up got 69 % of the weight on day 8 and then forecast
  // that burst again (MASE 2.4 x the naive's). So its track starts at the median of its
  // established peers' (long and recent errors), counted as seed_days of errors: it has its
  // say after min_track errors of its own, as before, and its own errors outweigh the seed
  // within a day. Chosen on 5/7/10-day windows and the hold-out (forecast/RESULTS.md, 16).
  void seed_track(std::size_t j, std::size_t r) noexcept {
    std::array<double, max_members> mae, mae_short, log_mae, log_short;
    std::size_t c = 0, n = 0;
    for (std::size_t i = 0; i < members && c < max_members; ++i) {
      const track& o = tracks[i][r];
      if (i == j || o.own < min_track) continue;
      mae[c] = o.mae;
      mae_short[c] = o.mae_short;
      log_mae[c] = onestep_log[i].mae;
      log_short[c] = onestep_log[i].mae_short;
      n = std::max(n, o.n);
      ++c;
    }
    if (c == 0) return;  // the first members of a series: nothing to compare with
    auto median = [c](std::array<double, max_members>& v) {
      std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(c / 2), v.begin() + static_cast<std::ptrdiff_t>(c));
      return v[c / 2];
    };
    track& tr = tracks[j][r];
    tr.mae = median(mae);
    tr.mae_short = median(mae_short);
    tr.n = std::min(n, static_cast<std::size_t>(seed_days * static_cast<double>(cal.m)));
    if (r == 0) {
      onestep_log[j].mae = median(log_mae);
      onestep_log[j].mae_short = median(log_short);
    }
  }

  void update(double value) noexcept {
    const std::size_t t = hist.size();  // index of the new bin
    const bool obs = std::isfinite(value);
    const double y = obs ? std::max(value, 0.0) / cfg.unit : std::nan("");
    const double z = obs ? std::log1p(y) : std::nan("");
    spike_scored = false;
    if (obs) score_spike(z);
    else anomaly = {};

    // Score the predictions whose target is this bin.
    if (obs) {
      for (std::size_t r = 0; r < reps.size(); ++r) {
        if (t < reps[r]) continue;
        const std::size_t slot = t % reps[r];
        for (std::size_t j = 0; j < members; ++j) {
          track& tr = tracks[j][r];
          const double f = tr.pending[slot];
          if (!std::isfinite(f)) continue;
          if (tr.own == 0) seed_track(j, r);
          const double g = 1.0 / static_cast<double>(std::min(tr.n + 1, track_window));
          const double gs = 1.0 / static_cast<double>(std::min(tr.n + 1, short_window));
          const double err = std::fabs(y - std::max(0.0, std::expm1(f)));
          tr.mae += g * (err - tr.mae);
          tr.mae_short += gs * (err - tr.mae_short);
          tr.log_score = (1.0 - recent_weight) * std::log(std::max(tr.mae, mae_floor_count)) +
                         recent_weight * std::log(std::max(tr.mae_short, mae_floor_count));
          if (r == 0) {
            log_track& lt = onestep_log[j];
            lt.mae += g * (std::fabs(z - f) - lt.mae);
            lt.mae_short += gs * (std::fabs(z - f) - lt.mae_short);
          }
          ++tr.n;
          ++tr.own;
        }
        const double f = pools[r].pending[slot];
        if (!std::isfinite(f)) continue;
        score_pool(r, z - f, pools[r].pending_vol[slot]);
        if (r == 0) {
          if (std::isfinite(next_f)) detector.push(z - next_f);
          add_volatility(next_vol, std::fabs(z - f));
        }
        if (slow_rep > 0 && r == slow_rep) add_volatility(slow_vol, std::fabs(z - f));
      }
      if (std::isfinite(last_observed_z)) {
        diff_mae += (std::fabs(z - last_observed_z) - diff_mae) / static_cast<double>(std::min<std::size_t>(diff_n + 1, 500));
        ++diff_n;
      }
      level_mean += (std::expm1(z) - level_mean) / static_cast<double>(std::min<std::size_t>(diff_n + 1, 500));
      last_observed_z = z;
    }

    // Append: a gap takes the ensemble's one-step forecast, never zero; the cleaned copy clips
    // an extreme spike to the edge of normal.
    double z_fill = z, z_clean = z;
    double seasonal = std::nan("");  // the seasonal reference of a scored bin
    if (!obs) {
      z_fill = z_clean = std::isfinite(next_f) ? next_f : (t > 0 ? hist.z(t - 1) : 0.0);
    } else if (spike_scored) {
      const double center = next_f + det_center;
      const double half = clean_threshold * det_scale;
      z_clean = std::clamp(z, center - half, center + half);
      // The one-step reference follows an outage down (the naive and the persistent members
      // forecast the zero that just came), so the bin that ends it would be "cleaned" to
      // near zero and come back in tomorrow's seasonal look-ups. A bin within the same band
      // around the seasonal reference (median of this bin over the last days, cleaned) is
      // normal and kept; otherwise it goes to whichever band's edge is nearer.
      seasonal = seasonal_reference(t);
      // Cleaning never moves a bin away from the seasonal reference either: the bin after a
      // burst's peak sits below the one-step band (which followed the peak) but is usual
      // traffic, and raising it would plant a copy of the peak, an hour late, in the look-ups.
      if (z_clean != z && std::isfinite(seasonal)) {
        const double alt = std::clamp(z, seasonal - half, seasonal + half);
        const bool away = (z_clean - z) * (seasonal - z) < 0.0;
        if (away || std::fabs(alt - z) < std::fabs(z_clean - z)) z_clean = alt;
      }
      // Nor is a bin cleaned that repeats the same time a day or a week earlier (raw): a daily
      // job is traffic. Without this a job was clipped on its first run, the seasonal reference
      // read the clipped copy, and every later run was clipped against it in turn: on a client
      // whose only traffic is an hour's job at 07:00 the look-ups forecast ~100 requests for
      // that hour instead of ~4,000 (RESULTS.md section 14).
      if (z_clean != z && repeats_earlier(t, z, center, burst_edge())) z_clean = z;
    }
    hist.push(z_fill, z_clean, obs);
    if (obs) track_burst(t, z, seasonal);
    float& today_max = day_max[(t / cal.m) % day_max.size()];
    if (t % cal.m == 0 || t == 0) today_max = -std::numeric_limits<float>::infinity();
    if (obs) today_max = std::max(today_max, static_cast<float>(z));
    for (auto& md : models) md->observe(hist, cal, obs);

    // New predictions from this origin at every representative step.
    for (std::size_t r = 0; r < reps.size(); ++r) {
      const double vf = vol_factor(r);
      const std::size_t k = reps[r];
      predict_all(k, scratch);
      for (std::size_t j = 0; j < members; ++j) tracks[j][r].pending[t % k] = scratch[j];
      const double fc = combine(k, scratch);
      pools[r].pending[t % k] = fc;
      pools[r].pending_vol[t % k] = vf;
      if (r == 0) {
        next_point = fc;
        next_f = combine(k, scratch, true);
        next_warm = true;
        next_q = rep_quantiles(0, next_warm);
      }
    }
    if (detector.sorted.size() >= min_pool) {
      const auto v = detector.sorted.values();
      det_center = sorted_quantile(v, 0.5);
      det_scale = std::max(1.4826 * sorted_abs_deviation_quantile(v, det_center, 0.5), 0.05);
      const double p = cfg.anomaly_rate_per_day / static_cast<double>(cal.m);
      det_tail_hi = sorted_quantile(v, 1.0 - p);
      det_tail_lo = sorted_quantile(v, p);
    }
  }

  // The cold-start prior's log-ratio offsets `q` around the point expm1(fc), as offsets on the
  // log1p scale the bands are built on. Applied on log1p directly they would be additive for a
  // series whose bins are much below 1 (dollars per minute): e^q - 1 dollars, whatever the
  // spend. Scaling the point instead keeps the prior relative at every magnitude; for bins far
  // above 1 the two agree. The upper side scales max(point, level) instead: a mostly idle new
  // proxy (point 0) whose few busy minutes carried thousands of calls must not publish a band
  // of [0, 0]; for a point at or above the mean level seen so far this is the same ratio.
  static std::array<double, 5> cold_offsets(double fc, double level, const std::array<double, 5>& q) {
    const double point = std::max(0.0, std::expm1(fc));
    const double scale = std::max(point, std::isfinite(level) ? level : 0.0);
    std::array<double, 5> out{};
    for (std::size_t i = 0; i < 5; ++i)
      out[i] = q[i] > 0.0 ? std::log1p(point + scale * std::expm1(q[i])) - std::log1p(point)
                          : std::log1p(point * std::exp(q[i])) - std::log1p(point);
    return out;
  }

  forecast_result forecast(std::size_t horizon) const {
    forecast_result out;
    if (hist.size() == 0) return out;
    const std::size_t t = hist.size() - 1;
    out.origin_s = cal.start_s + static_cast<std::int64_t>(t) * cal.bin_s;
    horizon = std::min(horizon, cfg.max_horizon);
    struct rep_band {
      std::array<double, 5> q{};
      bool warm = true;  // false: q is the cold-start prior (log ratios, see cold_offsets)
    };
    std::vector<rep_band> rq(reps.size());
    for (std::size_t r = 0; r < reps.size(); ++r)
      if (r == 0 || reps[r - 1] < horizon) rq[r].q = rep_quantiles(r, rq[r].warm);
    out.warm = std::all_of(rq.begin(), rq.end(), [](const rep_band& b) { return b.warm; });
    out.steps.resize(horizon);
    std::vector<double> f(members);
    // The busiest bin of the kept days (log1p), for the upper cap below.
    const double z_max = *std::max_element(day_max.begin(), day_max.end());
    for (std::size_t k = 1; k <= horizon; ++k) {
      predict_all(k, f);
      double fc = combine(k, f);
      if (!std::isfinite(fc)) fc = hist.z(t);
      std::size_t lo = 0, hi = 0;
      double frac = 0.0;
      bracket(k, lo, hi, frac);
      // Beyond the recent errors, leave room for level shifts: up to +25% width a day ahead.
      const double widen = 1.0 + level_shift_widening * std::min(1.0, static_cast<double>(k) / static_cast<double>(cal.m));
      const std::array<double, 5> q_lo = rq[lo].warm ? rq[lo].q : cold_offsets(fc, level_mean, rq[lo].q);
      const std::array<double, 5> q_hi = rq[hi].warm ? rq[hi].q : cold_offsets(fc, level_mean, rq[hi].q);
      std::array<double, 5> qe{};
      for (std::size_t i = 0; i < 5; ++i) qe[i] = q_lo[i] + (q_hi[i] - q_lo[i]) * frac;
      for (std::size_t i : {q05, q10, q90, q95}) qe[i] = qe[q50] + widen * (qe[i] - qe[q50]);
      // The history and the error pools are floats (~1e-7 relative): on a series that never
      // varies (a cron job's exact 60 calls an hour) every error is rounding noise and the band
      // would collapse onto a value a few ulps off the truth, covering none of it. So a band is
      // never narrower than that precision, taken relative to the median's log1p as float
      // precision is: ~1e-5 of the value for bins far below 1 (dollars per minute), ~2e-4 at 1e9.
      const double min_half = min_half_width * std::fabs(fc + qe[q50]);
      qe[q05] = std::min(qe[q05], qe[q50] - min_half);
      qe[q10] = std::min(qe[q10], qe[q50] - min_half);
      qe[q90] = std::max(qe[q90], qe[q50] + min_half);
      qe[q95] = std::max(qe[q95], qe[q50] + min_half);
      // The upper tail stops at twice the busiest bin of the kept history. Outages poison the
      // error pools from both sides (a day-ahead forecast of 300k that met a zero, then one of
      // ~0 made during the outage that met 300k), and hours of them put the pool's 95th
      // percentile at e^12: p95 a day ahead at 10^8 times the traffic. Twice anything seen in
      // four weeks is no 1-in-20 event; on the public traces the cap changes no coverage and
      // halves the hold-out's pinball loss (RESULTS.md section 9).
      // Applied as soon as either side is warm: between a warm step and a cold one (a young
      // series) the warm side alone can carry such a tail (a step from 10 to 1e6 in a pool
      // normalised by the flat series' volatility put p95 at e^10000, printed as inf); the
      // cold prior alone is bounded (cold_sd_max).
      if ((rq[lo].warm || rq[hi].warm) && std::isfinite(z_max)) {
        // On the count scale (a log1p offset would be additive for dollar-per-bin series).
        // The median too: a pool filled by one step change (ten minutes of 10 calls, then a
        // million a minute) is all underforecasts, and its median offset put q50 at 3x anything
        // ever seen.
        const double top = std::log1p(upper_cap_factor * std::expm1(z_max)) - fc;
        qe[q50] = std::min(qe[q50], std::max(top - min_half, 0.0));
        const double cap = std::max(top, qe[q50] + min_half);
        qe[q90] = std::min(qe[q90], cap);
        qe[q95] = std::min(qe[q95], cap);
      }
      step_forecast& sf = out.steps[k - 1];
      sf.timestamp_s = out.origin_s + static_cast<std::int64_t>(k) * cal.bin_s;
      sf.point = cfg.unit * std::max(0.0, std::expm1(fc));
      for (std::size_t i = 0; i < 5; ++i) {
        sf.quantiles[i] = cfg.unit * std::max(0.0, std::expm1(fc + qe[i]));
        if (i > 0) sf.quantiles[i] = std::max(sf.quantiles[i], sf.quantiles[i - 1]);
      }
    }
    return out;
  }
};

forecaster::forecaster(const forecaster_config& cfg) : impl_(std::make_unique<impl>(cfg)) {}
forecaster::~forecaster() = default;
forecaster::forecaster(forecaster&&) noexcept = default;
forecaster& forecaster::operator=(forecaster&&) noexcept = default;

double suggest_unit(const std::vector<double>& values, std::size_t count) {
  std::vector<double> pos;
  for (std::size_t i = 0; i < std::min(count, values.size()); ++i)
    if (std::isfinite(values[i]) && values[i] > 0.0) pos.push_back(values[i]);
  if (pos.empty()) return 1.0;
  const auto mid = pos.begin() + static_cast<std::ptrdiff_t>(pos.size() / 2);
  std::nth_element(pos.begin(), mid, pos.end());
  if (*mid >= 1.0) return 1.0;
  return std::pow(10.0, std::floor(std::log10(*mid)) - 3.0);
}

void forecaster::fit(const series& s) {
  impl_->cfg.bin_s = s.bin_s;
  impl_->reset(s.start_s);
  impl_->started = true;
  for (double v : s.values) impl_->update(v);
}

void forecaster::observe(std::int64_t timestamp_s, double value) noexcept {
  impl& d = *impl_;
  if (!d.started) {
    d.reset(timestamp_s - ((timestamp_s % d.cal.bin_s) + d.cal.bin_s) % d.cal.bin_s);
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

std::size_t forecaster::memory_bytes() const noexcept {
  const impl& d = *impl_;
  std::size_t b = sizeof(forecaster) + sizeof(impl) + d.hist.memory_bytes();
  for (const auto& md : d.models) b += md->memory_bytes();
  for (const auto& per_member : d.tracks)
    for (const auto& tr : per_member) b += sizeof(tr) + tr.pending.capacity() * sizeof(double);
  auto fifo_bytes = [](const sorted_fifo& f) { return f.memory_bytes(); };
  for (const auto& p : d.pools)
    b += sizeof(p) + (p.pending.capacity() + p.pending_vol.capacity()) * sizeof(double) + fifo_bytes(p.errors);
  b += d.onestep_log.capacity() * sizeof(impl::log_track);
  b += fifo_bytes(d.detector) + (d.reps.capacity() + d.member_offset.capacity()) * sizeof(std::size_t) +
       d.scratch.capacity() * sizeof(double) + d.day_max.capacity() * sizeof(float);
  return b;
}

}  // namespace tollgate::forecast
