// The rolling-origin backtest of shared/data/series/PROTOCOL.md: the two reference baselines
// with their error-pool intervals, the tollgate forecaster, the shared metrics, and the spike
// detector's delay / false-alarm evaluation. Pure; the CLI only formats the report.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "forecast/forecaster.hpp"
#include "forecast/series.hpp"

namespace tollgate::forecast {

struct backtest_options {
  std::vector<std::string> horizons{"1h", "24h"};  // labels as given; each a whole number of bins
  double train_fraction = 0.7;
  bool extra_methods = false;  // also report seasonal_naive_week
  std::function<void(double)> progress;  // fraction done (0..1), for a progress bar; may be empty
};

struct method_metrics {
  std::string horizon;  // label as given
  std::string method;   // tollgate, naive, seasonal_naive_day, seasonal_naive_week
  std::optional<double> mase, smape, coverage90, pinball;  // nullopt = over an empty set
  std::size_t n_origins = 0, n_points = 0, n_points_prob = 0;
};

struct backtest_report {
  std::int64_t bin_seconds = 0;
  std::size_t n = 0, n_train = 0, n_missing = 0;
  std::size_t m = 0, cal = 0, t0 = 0;
  std::optional<double> mase_scale;
  std::vector<method_metrics> results;
};

struct backtest_outcome {
  std::optional<backtest_report> report;
  std::string error;  // set when the series, options or a horizon are invalid
};

backtest_outcome run_backtest(const series& s, const backtest_options& opt);

// Spike detection on the test part (rows from floor(f*n)): the forecaster runs bin by bin and
// flags bins whose value leaves its band (forecaster_config::anomaly_threshold). A burst onset
// is a bin whose log1p value exceeds both the previous bin and the median of the same bin over
// the previous 7 days by at least `onset_log_jump`; the `top_bursts` largest onsets (by that
// excess, at least a day apart) are the reference events. Detected in the first bin = flagged
// at the onset bin itself. An alarm episode is a maximal run of upward-flagged bins; it is a
// false alarm when it does not start within `episode_slack_bins` after an onset, and it is
// "outside the top bursts" when it does not start within that slack after a reference event.
struct detection_options {
  double train_fraction = 0.7;
  std::size_t top_bursts = 5;
  double onset_log_jump = 1.0;  // log1p units: e^1 ~ 2.7x both the last bin and the usual level
  std::size_t episode_slack_bins = 3;
  forecaster_config forecaster;  // bin_s is taken from the series
};

struct detection_report {
  std::size_t test_bins = 0;
  double test_days = 0.0;
  std::vector<std::int64_t> burst_timestamps;  // the reference events
  std::vector<long> burst_delays_bins;         // -1 = missed within the episode slack
  std::size_t bursts_in_first_bin = 0;
  std::size_t onsets = 0;                      // bins meeting the onset definition
  std::size_t flagged_bins = 0;                // upward flags
  std::size_t alarm_episodes = 0;
  std::size_t false_alarm_episodes = 0;        // not after any onset
  std::size_t episodes_outside_top_bursts = 0; // not after one of the reference events
  double false_alarms_per_day = 0.0;
  double episodes_outside_top_bursts_per_day = 0.0;
};

detection_report evaluate_detection(const series& s, const detection_options& opt);

}  // namespace tollgate::forecast
