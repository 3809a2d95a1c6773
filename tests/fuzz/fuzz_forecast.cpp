// libFuzzer target: the forecaster library (forecast/) and the tool's input readers, the parts
// that read a user's files (`tollgate-forecast --input / --requests`) or any series the proxy
// feeds. The first byte picks the mode:
//   0: the rest is a series CSV (`read_series_csv`, column `requests`), the series is fitted;
//   1: the rest is a request log, CSV or JSON Lines (`load_request_log`, the next byte picks the
//      file suffix, the bin, the quantity), aggregated and fitted;
//   2: the rest is a stream of (timestamp step, value) pairs straight into `observe()`: steps
//      backwards, jumps of years, NaN, infinities, negatives, 1e300;
//   3: the rest is a series CSV, cut to 240 bins, through `tollgate-forecast backtest` and
//      `detect`'s code (`run_backtest`, `evaluate_detection`): the contract graders score.
// A second byte picks the bin width where the input does not fix it and the horizon.
// Invariants: the readers fail only with a message; an accepted series has a bin that divides a
// day and finite values; aggregated bins are never negative; every forecast has the steps asked
// for (capped at max_horizon), one bin apart, quantiles never NaN, never negative and
// non-decreasing, points never NaN or negative; memory is bounded whatever was fed; a backtest
// either reports or says why not, its metrics finite and non-negative (coverage within 0..1,
// points within what was scored), detection counts consistent.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "forecast/aggregate.hpp"
#include "forecast/backtest.hpp"
#include "forecast/forecaster.hpp"
#include "forecast/series.hpp"
#include "forecast/tool/inputs.hpp"
#include "fuzz_common.hpp"

namespace {

namespace fc = tollgate::forecast;

// Few bins keep an execution within tens of milliseconds (an update costs ~50 us, several times
// that under the sanitizers): 160 hourly bins are 6.7 days, enough for warm pools and the spike
// detector; at 2-hour bins they are 13 days and reach the weekly look-ups.
constexpr std::size_t max_bins = 160;
constexpr std::int64_t bins_s[] = {60, 300, 600, 3600, 7200, 86400};

void check_forecast(const fc::forecaster& f, std::size_t horizon) {
  const fc::forecast_result r = f.forecast(horizon);
  if (f.bins_seen() == 0) return;
  FUZZ_CHECK(r.steps.size() == std::min(horizon, f.config().max_horizon));
  for (std::size_t k = 0; k < r.steps.size(); ++k) {
    const fc::step_forecast& s = r.steps[k];
    FUZZ_CHECK(s.timestamp_s == r.origin_s + static_cast<std::int64_t>(k + 1) * f.config().bin_s);
    FUZZ_CHECK(!std::isnan(s.point) && s.point >= 0.0);
    for (std::size_t i = 0; i < s.quantiles.size(); ++i) {
      FUZZ_CHECK(!std::isnan(s.quantiles[i]) && s.quantiles[i] >= 0.0);
      if (i > 0) FUZZ_CHECK(s.quantiles[i] >= s.quantiles[i - 1]);
    }
  }
  const fc::anomaly_state& a = f.anomaly();
  if (a.scored) FUZZ_CHECK(!std::isnan(a.score) && !std::isnan(a.expected) && a.expected >= 0.0 && a.upper >= a.expected);
  // History, pools and trackers are sized at construction: a few hundred KiB at any bin width here
  // (forecast/README.md); 16 MiB would mean something grows with what is fed.
  FUZZ_CHECK(f.memory_bytes() < (16u << 20));
}

// Fits the first max_bins bins of s (bin permitting) and checks forecasts along the way.
void fit_and_check(const fc::series& s, std::size_t horizon) {
  if (s.bin_s <= 0 || 86400 % s.bin_s != 0) return;
  fc::forecaster_config cfg;
  cfg.bin_s = s.bin_s;
  cfg.max_horizon = std::max<std::size_t>(1, horizon);
  cfg.unit = fc::suggest_unit(s.values, std::min(s.size(), max_bins));
  FUZZ_CHECK(cfg.unit > 0.0 && std::isfinite(cfg.unit));
  fc::forecaster f(cfg);
  const std::size_t n = std::min(s.size(), max_bins);
  for (std::size_t i = 0; i < n; ++i) {
    f.observe(s.timestamp(i), s.values[i]);
    if (i % 97 == 96) check_forecast(f, horizon);
  }
  check_forecast(f, horizon);
}

// The series of a CSV text (`requests` column), checked; nullopt when the reader refused it.
std::optional<fc::series> read_csv(std::string_view text) {
  std::istringstream in{std::string(text)};
  fc::series_read r = fc::read_series_csv(in, "requests");
  FUZZ_CHECK(r.data.has_value() != !r.error.empty());
  if (r.data) {
    FUZZ_CHECK(r.data->bin_s > 0 && 86400 % r.data->bin_s == 0);
    for (double v : r.data->values) FUZZ_CHECK(fc::is_missing(v) || std::isfinite(v));
  }
  return std::move(r.data);
}

void series_csv(std::string_view text, std::size_t horizon) {
  if (const auto s = read_csv(text)) fit_and_check(*s, horizon);
}

void backtest(std::string_view text, std::uint8_t shape) {
  std::optional<fc::series> read = read_csv(text);
  if (!read) return;
  fc::series& s = *read;
  if (s.size() > 240) s.values.resize(240);
  fc::backtest_options opt;
  static const char* const labels[] = {"1h", "24h", "10m", "1m", "2h", "1d", "90m", "0h"};
  opt.horizons = {labels[shape & 7], labels[(shape >> 3) & 7]};
  opt.train_fraction = 0.3 + 0.1 * ((shape >> 6) & 3);
  const fc::backtest_outcome out = fc::run_backtest(s, opt);
  FUZZ_CHECK(out.report.has_value() != !out.error.empty());
  if (out.report) {
    for (const fc::method_metrics& mm : out.report->results) {
      for (const auto& v : {mm.mase, mm.smape, mm.pinball})
        if (v) FUZZ_CHECK(std::isfinite(*v) && *v >= 0.0);
      if (mm.coverage90) FUZZ_CHECK(*mm.coverage90 >= 0.0 && *mm.coverage90 <= 1.0);
      FUZZ_CHECK(mm.n_points_prob <= mm.n_points);
    }
    if (out.report->mase_scale) FUZZ_CHECK(std::isfinite(*out.report->mase_scale) && *out.report->mase_scale >= 0.0);
  }
  fc::detection_options dopt;
  dopt.train_fraction = opt.train_fraction;
  const fc::detection_report d = fc::evaluate_detection(s, dopt);
  FUZZ_CHECK(d.bursts_in_first_bin <= d.burst_timestamps.size());
  FUZZ_CHECK(d.burst_delays_bins.size() == d.burst_timestamps.size());
  FUZZ_CHECK(d.false_alarm_episodes <= d.alarm_episodes && d.episodes_outside_top_bursts <= d.alarm_episodes);
  FUZZ_CHECK(std::isfinite(d.false_alarms_per_day) && d.false_alarms_per_day >= 0.0);
}

void request_log(fuzz::input& in, std::int64_t bin_s, std::size_t horizon) {
  const std::uint8_t choice = in.byte();
  static const std::string path = "/tmp/tollgate-fuzz-forecast-" + std::to_string(::getpid());
  const std::string file = path + (choice & 1 ? ".jsonl" : ".csv");
  {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(in.rest().data(), static_cast<std::streamsize>(in.rest().size()));
  }
  const double unit_ms = (choice >> 1) % 3 == 0 ? 0.0 : (choice >> 1) % 3 == 1 ? 1.0 : 1000.0;
  const fc::tool::events_read r = fc::tool::load_request_log(file, unit_ms);
  std::remove(file.c_str());
  if (!r.error.empty()) return;
  for (const auto& e : r.events) {
    FUZZ_CHECK(e.prompt_tokens >= 0.0 && e.prompt_tokens <= fc::tool::max_request_tokens);
    FUZZ_CHECK(e.completion_tokens >= 0.0 && e.completion_tokens <= fc::tool::max_request_tokens);
    FUZZ_CHECK(e.cost_usd >= 0.0 && e.cost_usd <= fc::tool::max_request_cost_usd);
  }
  if (r.events.empty()) return;
  // The tool refuses spans above max_series_bins before aggregating; so does this harness.
  const std::string model = (choice & 0x40) ? r.events.front().model : std::string();
  const std::uint64_t span = fc::bins_spanned(r.events, bin_s, model);
  if (span == 0 || span > 20'000) return;
  const auto q = static_cast<fc::quantity>((choice >> 3) % 5);
  const fc::series s = fc::aggregate_events(r.events, bin_s, q, model);
  FUZZ_CHECK(s.bin_s == bin_s && s.size() == span);
  for (double v : s.values) FUZZ_CHECK(fc::is_missing(v) || (std::isfinite(v) && v >= 0.0));
  fit_and_check(s, horizon);
}

void raw_stream(fuzz::input& in, std::int64_t bin_s, std::size_t horizon) {
  fc::forecaster_config cfg;
  cfg.bin_s = bin_s;
  cfg.max_horizon = std::max<std::size_t>(1, horizon);
  fc::forecaster f(cfg);
  std::string_view rest = in.rest();
  std::int64_t t = 1736121600;
  std::size_t fed = 0;
  // 1 control byte + 8 value bytes per bin: the control byte's low bits are the step in bins
  // (mostly 1, sometimes 0 or backwards, rarely a jump of years), its top bit asks for a forecast.
  // A jump longer than the history replays the whole history as gaps (29 days: 8,352 bins at
  // 5 minutes, seconds under the fuzzer's instrumentation), so it is allowed once per input and
  // only at bins of an hour or more; at shorter bins it is a jump of 50 bins.
  bool jumped = false;
  while (rest.size() >= 9 && fed < max_bins) {
    const auto c = static_cast<std::uint8_t>(rest[0]);
    double v = 0.0;
    std::memcpy(&v, rest.data() + 1, sizeof v);
    rest.remove_prefix(9);
    int step = (c & 0x3f) < 48 ? 1 : (c & 0x3f) < 56 ? (c & 7) : (c & 0x3f) < 62 ? -(c & 3) : 50;
    if (step == 50 && bin_s >= 3600 && !jumped) {
      step = 100000;
      jumped = true;
    }
    t += static_cast<std::int64_t>(step) * bin_s;
    f.observe(t, v);
    ++fed;
    if (c & 0x80) check_forecast(f, horizon);
  }
  check_forecast(f, horizon);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::input in(data, size);
  const std::uint8_t mode = in.byte();
  const std::uint8_t shape = in.byte();
  const std::int64_t bin_s = bins_s[shape % 6];
  const std::size_t horizon = 1 + (shape >> 3) % 24;
  switch (mode % 4) {
    case 0: series_csv(in.rest(), horizon); break;
    case 1: request_log(in, bin_s, horizon); break;
    case 2: raw_stream(in, bin_s, horizon); break;
    default: backtest(in.rest(), shape); break;
  }
  return 0;
}
