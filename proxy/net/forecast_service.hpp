// The forecaster inside the proxy: a thread that folds completed minutes of the traffic
// aggregator into tollgate::forecast forecasters and publishes load, spend, anomaly and
// live-accuracy gauges in the metrics registry (README "Metrics", "Design notes").
#pragma once
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace tollgate {

class aggregator;
class metrics;

// What the budget projections and anomaly alerts need after each refresh (forecast thread).
struct forecast_snapshot {
  std::int64_t now_s = 0;
  // Forecast spend (USD) over [now_s, end_s) at the 0.5 and 0.9 quantiles, and whether every
  // forecaster behind it has learned its band (false while some step's quantiles still come
  // from the cold-start prior).
  struct spend_ahead {
    double p50_usd = 0, p90_usd = 0;
    bool learned = true;
    // Part of the window lies beyond every tier's steps (a fresh ledger's first hour) and is
    // carried at the finest tier's mean rate: a gauge, not a basis for alerts.
    bool extrapolated = false;
  };
  std::function<spend_ahead(std::int64_t end_s)> remaining_spend;
  // Per series (requests, prompt_tokens, completion_tokens, spend_usd): flag and score.
  std::array<const char*, 4> series{};
  std::array<bool, 4> anomaly{};
  std::array<double, 4> anomaly_score{};
};

struct forecast_service_options {
  std::chrono::milliseconds refresh_interval{60'000};  // thread period (wakes just after a boundary)
  std::string timezone = "UTC";                        // calendar windows of the spend gauges
  // Unix milliseconds. Empty: the system clock. Tests inject a simulated clock and call
  // refresh() themselves instead of start().
  std::function<std::int64_t()> now_ms;
  // Days of one-minute history the minute forecasters learn from at the first refresh (they
  // keep 6 days themselves; more only costs start-up CPU).
  std::size_t minute_fit_days = 7;
  // Called on the forecast thread at the end of each refresh (budget projections, alerts).
  std::function<void(const forecast_snapshot&)> on_refresh;
};

class forecast_service {
 public:
  // A minute is folded this long after it ends, so the calls that started in it have (nearly
  // all) completed and been committed; a later row still counts in spent-so-far.
  static constexpr std::chrono::seconds settle{60};

  // Registers the gauge families in m.registry(). Throws std::invalid_argument on an unknown
  // time zone (already checked by the config loader).
  forecast_service(const aggregator& agg, metrics& m, forecast_service_options opts);
  ~forecast_service();  // stop()
  forecast_service(const forecast_service&) = delete;
  forecast_service& operator=(const forecast_service&) = delete;

  // Starts the thread: one refresh at once (the first one learns the warm-started history),
  // then one per refresh_interval.
  void start();
  // Wakes the thread and joins it; a first fit in progress is abandoned between two bins, so
  // shutdown stays prompt. Idempotent.
  void stop();

  // One refresh at now_ms(): folds every complete bin, forecasts, publishes the gauges. Never
  // concurrently with the thread: tests call it without start(). Never throws.
  void refresh() noexcept;

  // Marks [from_s, to_s) as time this proxy was not running (the warm start passes the span
  // from the newest minute of the ledger's history to its own start). A bin more than a tenth
  // inside it is folded as a gap, not as a bin without calls: read as zeros, hours of downtime
  // pulled the forecasters' level down and the first live minute at the usual rate was flagged
  // as a burst after every restart. Before start() or the first refresh().
  void set_offline(std::int64_t from_s, std::int64_t to_s);

  // Forecaster state held (fixed once the histories are full). Not while the thread runs.
  std::size_t memory_bytes() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace tollgate
