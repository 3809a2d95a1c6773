// The forecaster: one regular series in (bin by bin), probabilistic forecasts out, plus a
// spike score for the newest bin. Pure and single-threaded; memory is fixed at construction
// (bounded history), so a long-running proxy can keep one per series forever.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "forecast/series.hpp"

namespace tollgate::forecast {

// The quantile levels every forecast carries, in this order.
inline constexpr std::array<double, 5> quantile_levels{0.05, 0.1, 0.5, 0.9, 0.95};
inline constexpr std::size_t q05 = 0, q10 = 1, q50 = 2, q90 = 3, q95 = 4;

struct forecaster_config {
  std::int64_t bin_s = 60;          // bin width in seconds; must divide 86400
  std::size_t max_horizon = 60;     // most steps forecast() will be asked for
  // Raw history kept: min(history_days days, max_history_bins bins) + max_horizon. 29 days
  // feed the 4-week seasonal median; at 1-minute bins the cap keeps 6 days (~80 KB).
  std::size_t history_days = 29;
  std::size_t max_history_bins = 8640;
  // Spike flag: the newest bin left the 90% band, its robust z-score (log scale, against the
  // one-step median and MAD of recent one-step errors) reaches anomaly_threshold, and its error
  // is beyond the empirical quantile that recent errors exceed anomaly_rate_per_day times a day
  // (0 disables the flag; the score is still computed).
  double anomaly_threshold = 3.0;
  double anomaly_rate_per_day = 0.2;
  // Values are modelled in multiples of `unit`: log1p(y / unit), so one unit weighs like one
  // request. 1 for counts (requests, tokens). A series of small amounts needs a small unit:
  // on log1p, dollars per minute ($0.0003) are on the near-linear part of the curve, where a
  // "x2" is an offset of 0.0003 and the model turns additive (backtests lose 5-13 % MASE and
  // coverage falls to 0.80 at such scales). The proxy forecasts spend in micro-dollars (1e-6);
  // suggest_unit() picks one from data. Inputs and outputs stay in the caller's scale.
  double unit = 1.0;
};

// A unit for forecaster_config::unit from the first `count` values (a training part): 1 when
// the median of the positive finite ones is at least 1 (counts), else the power of ten that
// puts that median in [1,000, 10,000) units.
double suggest_unit(const std::vector<double>& values, std::size_t count = static_cast<std::size_t>(-1));

struct step_forecast {
  std::int64_t timestamp_s = 0;      // start of the target bin (unix seconds)
  double point = 0.0;                // point forecast (median-like, minimises absolute error)
  std::array<double, 5> quantiles{}; // at quantile_levels, non-decreasing, >= 0
};

struct forecast_result {
  std::int64_t origin_s = 0;         // start of the last bin seen
  bool warm = false;                 // false while intervals come from the cold-start prior
  std::vector<step_forecast> steps;  // steps[k-1] is k bins ahead
};

// How surprising the newest bin was against the one-step forecast made before it arrived.
struct anomaly_state {
  double score = 0.0;     // robust z-score on the log scale: (log1p(y) - median) / (1.4826 MAD)
  bool flag = false;      // see forecaster_config::anomaly_threshold (both directions)
  double expected = 0.0;  // the median forecast the bin was compared with (count scale)
  double upper = 0.0;     // the value above which the bin would have been flagged
  bool scored = false;    // false while the detector is still learning: score and flag say nothing
};

class forecaster {
 public:
  explicit forecaster(const forecaster_config& cfg);
  ~forecaster();
  forecaster(forecaster&&) noexcept;
  forecaster& operator=(forecaster&&) noexcept;

  // Clears all state and consumes the whole series (cfg.bin_s must equal s.bin_s).
  void fit(const series& s);

  // Appends the bin starting at timestamp_s (NaN = missing). Bins skipped since the last
  // call are treated as missing; a timestamp at or before the last bin is ignored. The first
  // call sets the calendar phase. Never throws.
  void observe(std::int64_t timestamp_s, double value) noexcept;

  // Appends the next bin after the last one. Requires a previous observe() or fit().
  void update(double value) noexcept;

  // Forecast of the next `horizon` bins (capped at cfg.max_horizon). Empty before any data.
  forecast_result forecast(std::size_t horizon) const;

  const anomaly_state& anomaly() const noexcept;
  std::size_t bins_seen() const noexcept;
  // Heap and object bytes held; fixed once the pools are full (independent of uptime).
  std::size_t memory_bytes() const noexcept;
  const forecaster_config& config() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace tollgate::forecast
