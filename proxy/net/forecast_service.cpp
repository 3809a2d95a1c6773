// The forecast service (forecast_service.hpp): three tiers of forecasters (1-minute, 10-minute,
// hourly bins) fed from the aggregator, the spend-by-window arithmetic, live MASE scoring and
// the gauges. Its thread is started and stopped by the server (server.cpp).
#include "net/forecast_service.hpp"

#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>

#include "core/aggregator.hpp"
#include "core/calendar.hpp"
#include "core/log.hpp"
#include "forecast/forecaster.hpp"
#include "net/metrics.hpp"

namespace tollgate {

namespace pm = prometheus;
namespace fc = tollgate::forecast;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr std::int64_t kNone = aggregator::no_data;

enum series_id : std::size_t { s_requests, s_prompt, s_completion, s_spend, n_series };
constexpr std::array<const char*, n_series> kSeriesNames{"requests", "prompt_tokens", "completion_tokens", "spend_usd"};

double value_of(const traffic_bucket& b, std::size_t s) {
  switch (s) {
    case s_requests: return b.requests;
    case s_prompt: return b.prompt_tokens;
    case s_completion: return b.completion_tokens;
    default: return b.cost_usd;
  }
}

std::int64_t floor_to(std::int64_t t, std::int64_t w) { return (t / w - ((t % w != 0) && (t < 0))) * w; }

// Live accuracy of one (series, horizon): the forecasts published, scored when their target
// bin arrives, as MASE against the seasonal naive (same bin one day earlier) on the same
// targets, over the last `window` scored targets.
class live_mase {
 public:
  explicit live_mase(std::size_t window) : window_(window) {}

  void forecast_made(std::int64_t target_s, double point) {
    if (!pending_.empty() && pending_.back().first >= target_s) {
      // Same target again (no new bin since): keep the newest forecast.
      if (pending_.back().first == target_s) pending_.back().second = point;
      return;
    }
    pending_.emplace_back(target_s, point);
    if (pending_.size() > 4096) pending_.pop_front();  // bound, whatever the horizon
  }

  void actual(std::int64_t t, double y, double y_season_ago) {
    while (!pending_.empty() && pending_.front().first < t) pending_.pop_front();
    if (pending_.empty() || pending_.front().first != t) return;
    double point = pending_.front().second;
    pending_.pop_front();
    if (std::isnan(y) || std::isnan(y_season_ago)) return;  // a gap scores nothing
    scored_.emplace_back(std::fabs(y - point), std::fabs(y - y_season_ago));
    if (scored_.size() > window_) scored_.pop_front();
  }

  double value() const {
    if (scored_.size() < kMinScored) return kNaN;
    double err = 0, scale = 0;
    for (const auto& [e, s] : scored_) err += e, scale += s;
    return scale > 0 ? err / scale : kNaN;
  }

  std::size_t bytes() const { return (pending_.size() + scored_.size()) * 16 + sizeof(*this); }

 private:
  static constexpr std::size_t kMinScored = 30;
  std::size_t window_;
  std::deque<std::pair<std::int64_t, double>> pending_;  // (target bin start, point), by target
  std::deque<std::pair<double, double>> scored_;         // (|error|, |seasonal naive error|)
};

// One bin width: its forecasters, the newest forecast of each, and the last day of values
// (the seasonal-naive scale of MASE).
struct tier {
  std::int64_t bin_s;
  std::size_t max_horizon;
  std::array<std::optional<fc::forecaster>, n_series> f;
  std::array<fc::forecast_result, n_series> result;
  std::int64_t next_bin = kNone;  // start of the next bin to fold (= end of the last folded one)
  std::int64_t first_bin = kNone;
  std::size_t season;             // bins in a day
  std::array<std::vector<double>, n_series> day;  // value of bin i at i % season

  tier(std::int64_t bin, std::size_t horizon, std::initializer_list<std::size_t> series)
      : bin_s(bin), max_horizon(horizon), season(static_cast<std::size_t>(86400 / bin)) {
    fc::forecaster_config cfg;
    cfg.bin_s = bin;
    cfg.max_horizon = horizon;
    for (auto s : series) {
      // Spend is modelled in micro-dollars: a minute's $0.0003 is 300 units, so "twice the
      // spend" is a ratio on log1p as "twice the calls" is (forecaster_config::unit).
      cfg.unit = s == s_spend ? 1e-6 : 1.0;
      f[s].emplace(cfg);
      day[s].assign(season, kNaN);
    }
  }

  std::size_t slot(std::int64_t t) const { return static_cast<std::size_t>((t / bin_s) % static_cast<std::int64_t>(season)); }
  double season_ago(std::size_t s, std::int64_t t) const {
    if (first_bin == kNone || t - static_cast<std::int64_t>(season) * bin_s < first_bin) return kNaN;
    return day[s][slot(t)];  // still holds t - one day: it is overwritten only when t is folded
  }
};

// The step of `r` whose bin contains `t` (clamped to the horizon); nullptr before any forecast.
const fc::step_forecast* step_at(const fc::forecast_result& r, std::int64_t bin_s, std::int64_t t) {
  if (r.steps.empty()) return nullptr;
  std::int64_t k = (t - r.steps.front().timestamp_s) / bin_s;
  k = std::clamp<std::int64_t>(k, 0, static_cast<std::int64_t>(r.steps.size()) - 1);
  return &r.steps[static_cast<std::size_t>(k)];
}

struct horizon_def {
  const char* label;
  std::int64_t seconds;
  std::size_t tier;  // 0: 1-minute, 1: 10-minute
};
constexpr std::array<horizon_def, 3> kHorizons{{{"5m", 300, 0}, {"1h", 3600, 0}, {"24h", 86400, 1}}};

struct window_def {
  const char* label;
  calendar_period period;
};
constexpr std::array<window_def, 3> kWindows{{{"hour", calendar_period::hour},
                                              {"day", calendar_period::day},
                                              {"month", calendar_period::month}}};

std::string quantile_label(double q) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%g", q);
  return buf;
}

}  // namespace

struct forecast_service::impl {
  const aggregator& agg;
  forecast_service_options opts;
  calendar cal;

  // Tiers, finest first. 1-minute bins for 5m and 1h (and the rest of the current hour);
  // 10-minute bins for 24h and the rest of the day; hourly bins of spend for the rest of the
  // month. Horizons leave room for the settle delay and one refresh period of lag.
  std::array<tier, 3> tiers;

  // Gauges (children cached at construction; labels from fixed sets only).
  using qgauges = std::array<pm::Gauge*, fc::quantile_levels.size()>;
  std::array<qgauges, kHorizons.size()> rps{};
  std::array<std::array<qgauges, kHorizons.size()>, 2> tpm{};  // [prompt|completion][horizon]
  std::array<qgauges, kWindows.size()> spend{};
  std::array<pm::Gauge*, n_series> anomaly{}, anomaly_score{};
  std::array<std::array<pm::Gauge*, kHorizons.size()>, n_series> mase_g{};
  pm::Gauge* last_refresh = nullptr;

  std::vector<std::array<std::optional<live_mase>, kHorizons.size()>> mase;  // [series][horizon]

  std::atomic<bool> stopping{false};
  std::mutex mu;
  std::condition_variable cv;
  std::thread thread;
  bool first_done = false;
  std::int64_t offline_from = 0, offline_to = 0;  // [from, to) seconds: set_offline()

  // A bin more than a tenth of whose width the proxy was down is unknown, not quiet.
  bool offline(std::int64_t bin_start, std::int64_t bin_s) const {
    const std::int64_t overlap = std::min(bin_start + bin_s, offline_to) - std::max(bin_start, offline_from);
    return overlap * 10 > bin_s;
  }

  impl(const aggregator& a, metrics& m, forecast_service_options o)
      : agg(a),
        opts(std::move(o)),
        cal(opts.timezone),
        tiers{tier(60, 60 + 3 + minutes_of_lag(60), {s_requests, s_prompt, s_completion, s_spend}),
              tier(600, 26 * 6 + 2 + minutes_of_lag(600), {s_requests, s_prompt, s_completion, s_spend}),
              tier(3600, 31 * 24 + 3 + minutes_of_lag(3600), {s_spend})},
        mase(n_series) {
    if (!opts.now_ms) {
      opts.now_ms = [] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
      };
    }
    register_gauges(m.registry());
    for (std::size_t s = 0; s < n_series; ++s)
      for (std::size_t h = 0; h < kHorizons.size(); ++h) mase[s][h].emplace(h < 2 ? 1440 : 1008);  // a day / a week of targets
  }

  std::size_t minutes_of_lag(std::int64_t bin_s) const {
    auto lag_s = std::chrono::duration_cast<std::chrono::seconds>(opts.refresh_interval).count() + settle.count();
    return static_cast<std::size_t>(lag_s / bin_s + 1);
  }

  void register_gauges(pm::Registry& r) {
    auto& rps_f = pm::BuildGauge()
                      .Name("tollgate_forecast_requests_per_second")
                      .Help("Forecast request rate in the bin `horizon` from now (1-minute bins for 5m and 1h, "
                            "10-minute bins for 24h), at each quantile.")
                      .Register(r);
    auto& tpm_f = pm::BuildGauge()
                      .Name("tollgate_forecast_tokens_per_minute")
                      .Help("Forecast tokens per minute (kind prompt or completion) in the bin `horizon` from now, "
                            "at each quantile.")
                      .Register(r);
    auto& spend_f = pm::BuildGauge()
                        .Name("tollgate_forecast_spend_usd")
                        .Help("Forecast spend in USD by the end of the current calendar window (hour, day, month in "
                              "the configured timezone), spent-so-far included, at each quantile.")
                        .Register(r);
    auto& an_f = pm::BuildGauge()
                     .Name("tollgate_traffic_anomaly")
                     .Help("1 when the newest complete minute of the series left its forecast band (spike or drop).")
                     .Register(r);
    auto& score_f = pm::BuildGauge()
                        .Name("tollgate_traffic_anomaly_score")
                        .Help("Robust z-score of the newest complete minute against its one-step forecast (log scale).")
                        .Register(r);
    auto& mase_f = pm::BuildGauge()
                       .Name("tollgate_forecast_mase")
                       .Help("Live accuracy: mean absolute error of the published forecasts over recent targets, "
                             "scaled by the seasonal naive (one day earlier) on the same targets (< 1 beats it).")
                       .Register(r);
    auto& last_f = pm::BuildGauge()
                       .Name("tollgate_forecast_last_refresh_timestamp_seconds")
                       .Help("Unix time of the last forecast refresh.")
                       .Register(r);
    for (std::size_t h = 0; h < kHorizons.size(); ++h) {
      for (std::size_t q = 0; q < fc::quantile_levels.size(); ++q) {
        std::string ql = quantile_label(fc::quantile_levels[q]);
        rps[h][q] = &rps_f.Add({{"horizon", kHorizons[h].label}, {"quantile", ql}});
        tpm[0][h][q] = &tpm_f.Add({{"kind", "prompt"}, {"horizon", kHorizons[h].label}, {"quantile", ql}});
        tpm[1][h][q] = &tpm_f.Add({{"kind", "completion"}, {"horizon", kHorizons[h].label}, {"quantile", ql}});
      }
    }
    for (std::size_t w = 0; w < kWindows.size(); ++w)
      for (std::size_t q = 0; q < fc::quantile_levels.size(); ++q)
        spend[w][q] = &spend_f.Add({{"window", kWindows[w].label}, {"quantile", quantile_label(fc::quantile_levels[q])}});
    for (std::size_t s = 0; s < n_series; ++s) {
      anomaly[s] = &an_f.Add({{"series", kSeriesNames[s]}});
      anomaly_score[s] = &score_f.Add({{"series", kSeriesNames[s]}});
      for (std::size_t h = 0; h < kHorizons.size(); ++h)
        mase_g[s][h] = &mase_f.Add({{"series", kSeriesNames[s]}, {"horizon", kHorizons[h].label}});
    }
    last_refresh = &last_f.Add({});
    // Nothing is known before the first refresh: say so rather than publish zeros.
    for (auto& hq : rps) for (auto* g : hq) g->Set(kNaN);
    for (auto& k : tpm) for (auto& hq : k) for (auto* g : hq) g->Set(kNaN);
    for (auto& wq : spend) for (auto* g : wq) g->Set(kNaN);
    for (auto* g : anomaly_score) g->Set(kNaN);
    for (auto& sh : mase_g) for (auto* g : sh) g->Set(kNaN);
  }

  // Folds the complete bins of `t` (up to ready_end_s, exclusive) and re-forecasts when any
  // arrived. Returns the number of bins folded.
  std::size_t fold(tier& t, std::size_t tier_index, std::int64_t ready_end_s) {
    if (t.next_bin == kNone) {
      // First refresh: start at the oldest history held (bounded), else at the present.
      std::int64_t start = ready_end_s;
      std::int64_t first = tier_index == 0 ? agg.first_fine_minute() : agg.first_minute();
      if (first != kNone) {
        std::int64_t cap_days = tier_index == 0 ? static_cast<std::int64_t>(opts.minute_fit_days)
                                                : static_cast<std::int64_t>(agg.options().total_coarse_days);
        start = std::max(first * 60, ready_end_s - cap_days * 86400);
      }
      t.next_bin = floor_to(std::min(start, ready_end_s), t.bin_s);
      t.first_bin = t.next_bin;
    }
    std::size_t folded = 0;
    while (t.next_bin + t.bin_s <= ready_end_s && !stopping.load(std::memory_order_relaxed)) {
      std::size_t n = static_cast<std::size_t>(std::min<std::int64_t>((ready_end_s - t.next_bin) / t.bin_s, 1440));
      auto values = agg.bins(t.next_bin, t.bin_s, n);
      for (std::size_t i = 0; i < n && !stopping.load(std::memory_order_relaxed); ++i) {
        const std::int64_t ts = t.next_bin;
        for (std::size_t s = 0; s < n_series; ++s) {
          if (!t.f[s]) continue;
          const double y = offline(ts, t.bin_s) ? kNaN : value_of(values[i], s);
          double ago = t.season_ago(s, ts);
          for (std::size_t h = 0; h < kHorizons.size(); ++h)
            if (kHorizons[h].tier == tier_index) mase[s][h]->actual(ts, y, ago);
          t.day[s][t.slot(ts)] = y;
          t.f[s]->observe(ts, y);
        }
        t.next_bin += t.bin_s;
        ++folded;
      }
    }
    if (folded > 0) {
      for (std::size_t s = 0; s < n_series; ++s)
        if (t.f[s]) t.result[s] = t.f[s]->forecast(t.max_horizon);
    }
    return folded;
  }

  // Forecast sum of series s over [from_s, to_s) at quantile q: each tier's steps cover what the
  // finer tiers do not reach, a bin cut by an edge counts in proportion. Per-step quantiles are
  // added (comonotonic sum, see README "Design notes").
  // A fresh ledger has no hourly steps for an hour and no 10-minute ones for ten minutes: the
  // part of the window beyond the last tier with steps is then carried at that tier's mean
  // forecast rate, and the sum is not `learned` and is `extrapolated` (a day and a month would
  // otherwise be forecast as the next hour). No tier with steps at all: NaN.
  double forecast_sum(std::size_t s, std::int64_t from_s, std::int64_t to_s, std::size_t q, bool* learned = nullptr,
                      bool* extrapolated = nullptr) const {
    double total = 0;
    if (learned != nullptr) *learned = true;
    if (extrapolated != nullptr) *extrapolated = false;
    std::int64_t cursor = from_s;
    const tier* last = nullptr;  // the last tier with steps
    for (const tier& t : tiers) {
      if (cursor >= to_s) break;
      if (!t.f[s] || t.result[s].steps.empty()) continue;
      last = &t;
      const auto& steps = t.result[s].steps;
      const std::int64_t reach = steps.back().timestamp_s + t.bin_s;
      const std::int64_t seg_end = std::min(to_s, reach);
      for (const auto& st : steps) {
        const std::int64_t bs = st.timestamp_s, be = bs + t.bin_s;
        if (be <= cursor) continue;
        if (bs >= seg_end) break;
        const std::int64_t overlap = std::min(be, seg_end) - std::max(bs, cursor);
        if (overlap <= 0) continue;
        total += st.quantiles[q] * static_cast<double>(overlap) / static_cast<double>(t.bin_s);
        if (learned != nullptr && !t.result[s].warm) *learned = false;
      }
      cursor = std::max(cursor, seg_end);
    }
    if (cursor < to_s) {
      if (last == nullptr) return kNaN;
      const auto& steps = last->result[s].steps;
      double mean = 0;
      for (const auto& st : steps) mean += st.quantiles[q];
      mean /= static_cast<double>(steps.size());
      total += mean * static_cast<double>(to_s - cursor) / static_cast<double>(last->bin_s);
      if (learned != nullptr) *learned = false;
      if (extrapolated != nullptr) *extrapolated = true;
    }
    return total;
  }

  void publish(std::int64_t now_s, const std::array<bool, 3>& fresh) {
    for (std::size_t h = 0; h < kHorizons.size(); ++h) {
      const tier& t = tiers[kHorizons[h].tier];
      const std::int64_t target = floor_to(now_s + kHorizons[h].seconds, t.bin_s);
      const double per_s = 1.0 / static_cast<double>(t.bin_s), per_min = 60.0 / static_cast<double>(t.bin_s);
      for (std::size_t s = 0; s < n_series; ++s) {
        const fc::step_forecast* st = step_at(t.result[s], t.bin_s, target);
        if (st == nullptr) continue;
        if (fresh[kHorizons[h].tier]) mase[s][h]->forecast_made(st->timestamp_s, st->point);
        for (std::size_t q = 0; q < fc::quantile_levels.size(); ++q) {
          if (s == s_requests) rps[h][q]->Set(st->quantiles[q] * per_s);
          if (s == s_prompt) tpm[0][h][q]->Set(st->quantiles[q] * per_min);
          if (s == s_completion) tpm[1][h][q]->Set(st->quantiles[q] * per_min);
        }
      }
    }
    for (std::size_t w = 0; w < kWindows.size(); ++w) {
      const time_window win = cal.window(kWindows[w].period, now_s);
      // Through the end of the current minute: its bucket holds only calls started so far.
      const double spent = agg.sum(win.start_s, std::min(win.end_s, floor_to(now_s, 60) + 60)).cost_usd;
      for (std::size_t q = 0; q < fc::quantile_levels.size(); ++q)
        spend[w][q]->Set(spent + forecast_sum(s_spend, now_s, win.end_s, q));
    }
    for (std::size_t s = 0; s < n_series; ++s) {
      const auto& a = tiers[0].f[s]->anomaly();
      anomaly[s]->Set(a.flag ? 1 : 0);
      anomaly_score[s]->Set(a.scored ? a.score : kNaN);
      for (std::size_t h = 0; h < kHorizons.size(); ++h) mase_g[s][h]->Set(mase[s][h]->value());
    }
    last_refresh->Set(static_cast<double>(now_s));
    if (opts.on_refresh) {
      forecast_snapshot snap;
      snap.now_s = now_s;
      const std::size_t q50 = quantile_index(0.5), q90 = quantile_index(0.9);
      snap.remaining_spend = [this, now_s, q50, q90](std::int64_t end_s) {
        forecast_snapshot::spend_ahead r;
        r.p50_usd = forecast_sum(s_spend, now_s, end_s, q50, &r.learned, &r.extrapolated);
        r.p90_usd = forecast_sum(s_spend, now_s, end_s, q90);
        return r;
      };
      for (std::size_t s = 0; s < n_series; ++s) {
        const auto& a = tiers[0].f[s]->anomaly();
        snap.series[s] = kSeriesNames[s];
        snap.anomaly[s] = a.flag;
        snap.anomaly_score[s] = a.scored ? a.score : kNaN;
      }
      try {
        opts.on_refresh(snap);
      } catch (...) {
      }
    }
  }

  static std::size_t quantile_index(double level) {
    std::size_t best = 0;
    for (std::size_t q = 0; q < fc::quantile_levels.size(); ++q)
      if (std::abs(fc::quantile_levels[q] - level) < std::abs(fc::quantile_levels[best] - level)) best = q;
    return best;
  }

  void refresh() {
    const auto t0 = std::chrono::steady_clock::now();
    const std::int64_t now_ms = opts.now_ms();
    const std::int64_t now_s = floor_to(now_ms, 1000) / 1000;
    const std::int64_t ready_end = floor_to(now_s - settle.count(), 60);
    std::array<bool, 3> fresh{};
    std::size_t folded = 0;
    for (std::size_t i = 0; i < tiers.size(); ++i) {
      std::size_t n = fold(tiers[i], i, ready_end);
      fresh[i] = n > 0;
      folded += n;
    }
    if (stopping.load(std::memory_order_relaxed)) return;
    publish(now_s, fresh);
    if (!first_done) {
      first_done = true;
      log_line(log_level::info, "forecaster ready")
          .integer("bins_learned", static_cast<std::int64_t>(folded))
          .num("fit_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count())
          .integer("memory_bytes", static_cast<std::int64_t>(memory_bytes()))
          .str("timezone", cal.timezone());
    }
  }

  std::size_t memory_bytes() const {
    std::size_t n = sizeof(*this);
    for (const tier& t : tiers)
      for (std::size_t s = 0; s < n_series; ++s) {
        if (!t.f[s]) continue;
        n += t.f[s]->memory_bytes() + t.day[s].size() * sizeof(double) +
             t.result[s].steps.size() * sizeof(fc::step_forecast);
      }
    for (const auto& sh : mase)
      for (const auto& m : sh) n += m->bytes();
    return n;
  }

  void run() {
    std::unique_lock lock(mu);
    while (!stopping.load()) {
      lock.unlock();
      refresh_guarded();
      lock.lock();
      // Wake just after the next multiple of the interval: with the default 60 s that is the
      // moment the next minute becomes complete (minute boundary + settle).
      const std::int64_t interval = std::max<std::int64_t>(opts.refresh_interval.count(), 1);
      const std::int64_t now = opts.now_ms();
      const std::int64_t wait = interval - (now % interval + interval) % interval + std::min<std::int64_t>(1000, interval / 10);
      cv.wait_for(lock, std::chrono::milliseconds(wait), [&] { return stopping.load(); });
    }
  }

  void refresh_guarded() noexcept {
    try {
      refresh();
    } catch (const std::exception& e) {
      log_line(log_level::warn, "forecast refresh failed").str("error", e.what());
    } catch (...) {
      log_line(log_level::warn, "forecast refresh failed");
    }
  }
};

forecast_service::forecast_service(const aggregator& agg, metrics& m, forecast_service_options opts)
    : impl_(std::make_unique<impl>(agg, m, std::move(opts))) {}

forecast_service::~forecast_service() { stop(); }

void forecast_service::start() {
  if (impl_->thread.joinable()) return;
  impl_->stopping = false;
  impl_->thread = std::thread([this] {
    name_this_thread("tg-forecast");
    lower_thread_priority(10);
    impl_->run();
  });
}

void forecast_service::stop() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

void forecast_service::refresh() noexcept { impl_->refresh_guarded(); }

void forecast_service::set_offline(std::int64_t from_s, std::int64_t to_s) {
  impl_->offline_from = from_s;
  impl_->offline_to = to_s;
}

std::size_t forecast_service::memory_bytes() const { return impl_->memory_bytes(); }

}  // namespace tollgate
