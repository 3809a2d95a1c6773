// Component models of the forecaster ensemble. Each works on the log1p scale of one series,
// sees it bin by bin through a bounded history, and predicts k bins ahead. Internal to the
// forecaster (exposed for tests).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tollgate::forecast::detail {

// The last `capacity` bins of the log1p series by absolute bin index. z(): the observed values,
// gaps filled with the ensemble's one-step forecast (so no look-up reads a gap as zero
// traffic). clean(): the same with extreme spikes clipped to the edge of normal, for the
// seasonal look-ups (a burst today must not come back as tomorrow's or next week's forecast).
class history {
 public:
  void reset(std::size_t capacity);
  void push(double z, double clean, bool observed);
  // Lowers the cleaned copy of a kept bin (a burst recognised once it has ended).
  void clip_clean(std::size_t i, double at_most) noexcept {
    if (has(i) && clean_[i % cap_] > at_most) clean_[i % cap_] = static_cast<float>(at_most);
  }
  std::size_t size() const noexcept { return n_; }  // bins seen since reset
  std::size_t capacity() const noexcept { return cap_; }
  bool has(std::size_t i) const noexcept { return i < n_ && i + cap_ >= n_; }
  double z(std::size_t i) const noexcept { return z_[i % cap_]; }
  double clean(std::size_t i) const noexcept { return clean_[i % cap_]; }
  bool observed(std::size_t i) const noexcept { return obs_[i % cap_] != 0; }
  std::size_t memory_bytes() const noexcept {
    return sizeof(*this) + (z_.capacity() + clean_.capacity()) * sizeof(float) + obs_.capacity();
  }

 private:
  std::size_t cap_ = 1, n_ = 0;
  std::vector<float> z_, clean_;  // log1p values need no double precision; halves the memory
  std::vector<unsigned char> obs_;
};

// Calendar of the series: bins per day, and the time-of-day / day-of-week of a bin index.
struct calendar {
  std::size_t m = 24;                // bins per day
  std::int64_t bin_s = 3600;
  std::int64_t start_s = 0;          // timestamp of bin 0
  std::size_t phase(std::size_t i) const noexcept;    // 0..m-1, time of day (UTC)
  std::size_t weekday(std::size_t i) const noexcept;  // 0 = Monday
};

// A model may give several forecasts (members of the ensemble) from one shared state, e.g.
// ETS with different persistence of the current deviation.
class model {
 public:
  virtual ~model() = default;
  virtual std::size_t outputs() const noexcept { return 1; }
  virtual std::string name(std::size_t output) const = 0;
  // Bin t = h.size()-1 has just been appended; `observed` says whether h.z(t) is real.
  virtual void observe(const history& h, const calendar& cal, bool observed) noexcept = 0;
  // Forecasts of log1p(y[t+k]) from origin t = h.size()-1 into out[0..outputs()); NaN when
  // the model cannot tell yet.
  virtual void predict(const history& h, const calendar& cal, std::size_t k, double* out) const noexcept = 0;
  virtual std::size_t memory_bytes() const noexcept = 0;
};

std::unique_ptr<model> make_naive();
// Same bin `period` bins (a day, a week) before the target, repeated over the horizon (from
// the cleaned history).
std::unique_ptr<model> make_seasonal_naive(std::size_t period, const char* name);

// Robust seasonal profiles straight from the history: the median of the same bin over the
// last `days` days (one output per entry), and over the last `weeks` weeks. Medians ignore
// a burst on a minority of the days. NaN until enough history exists.
std::unique_ptr<model> make_seasonal_median(std::vector<std::size_t> days, std::vector<std::size_t> weeks,
                                            std::size_t m);
// The origin's value plus the median change over the same k bins on each of the last `days`
// days (the seasonally adjusted naive with an empirical profile); NaN beyond `max_k` steps.
// With `anchor` > 1, today's level is the mean gap of the last `anchor` bins to the same bins
// on each past day, added to that day's value at the target's time.
std::unique_ptr<model> make_seasonal_change(std::size_t days, std::size_t m, std::size_t max_k, std::size_t anchor = 1);

// Robust multi-seasonal exponential smoothing on the log scale: level + time-of-day profile +
// day-of-week offset, updated with innovations clipped at `clip` robust scales so a burst
// moves the state by a bounded amount. Its outputs carry the current deviation from that
// state forward, decaying by persistence^hours: 0 = pure ETS (the typical day), 1 = the
// seasonally adjusted naive (today's level, tomorrow's shape).
struct ets_params {
  double alpha_hour = 0.05;  // level gain per hour of data (converted per bin)
  double gamma = 0.05;       // time-of-day profile gain per visit (once a day)
  double omega = 0.1;        // day-of-week gain per day
  double clip = 2.0;         // innovations clipped at clip x mean |innovation|
  std::vector<double> persistence_hour{0.0, 0.5, 0.8, 0.95, 1.0};
  // Innovations beyond the clip on the same side for an hour (at least 3 bins) are taken as a
  // level shift and moved into the level at once (else they stay clipped: a long burst).
  bool accept_shifts = false;
  const char* name = nullptr;  // member name prefix; default "ets" / "ets_shift"
};
std::unique_ptr<model> make_ets(const ets_params& p, std::int64_t bin_s);

}  // namespace tollgate::forecast::detail
