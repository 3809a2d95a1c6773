// The forecaster on synthetic series with known answers: seasonality, level steps, bursts,
// gaps, cold start, zeros, spike flags.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "forecast/forecaster.hpp"
#include "forecast/models.hpp"

using namespace tollgate::forecast;

namespace {

constexpr std::int64_t t0 = 1736121600;  // 2025-01-06T00:00Z, a Monday
constexpr double pi = 3.14159265358979323846;

// Hourly traffic with a daily cycle between 50 and 250 requests per hour.
double daily(std::size_t i) { return 150.0 + 100.0 * std::sin(2.0 * pi * static_cast<double>(i % 24) / 24.0); }

forecaster hourly(std::size_t horizon) {
  forecaster_config cfg;
  cfg.bin_s = 3600;
  cfg.max_horizon = horizon;
  return forecaster(cfg);
}

forecaster ten_minute(std::size_t horizon) {
  forecaster_config cfg;
  cfg.bin_s = 600;
  cfg.max_horizon = horizon;
  return forecaster(cfg);
}

double rel_err(double a, double b) { return std::fabs(a - b) / std::fabs(b); }

void check_well_formed(const forecast_result& r) {
  for (const auto& s : r.steps) {
    REQUIRE(std::isfinite(s.point));
    REQUIRE(s.point >= 0.0);
    for (std::size_t i = 0; i < 5; ++i) {
      REQUIRE(std::isfinite(s.quantiles[i]));
      REQUIRE(s.quantiles[i] >= 0.0);
      if (i > 0) REQUIRE(s.quantiles[i - 1] <= s.quantiles[i]);
    }
  }
}

}  // namespace

TEST_CASE("forecaster: a pure daily cycle is forecast almost exactly", "[forecast]") {
  forecaster f = hourly(48);
  for (std::size_t i = 0; i < 21 * 24; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, daily(i));
  const auto r = f.forecast(48);
  REQUIRE(r.steps.size() == 48);
  CHECK(r.warm);
  for (std::size_t k = 1; k <= 48; ++k) {
    const double truth = daily(21 * 24 - 1 + k);
    CHECK(rel_err(r.steps[k - 1].point, truth) < 0.01);
    CHECK(r.steps[k - 1].timestamp_s == t0 + static_cast<std::int64_t>(21 * 24 - 1 + k) * 3600);
  }
  // A noiseless past gives a narrow band around the truth.
  CHECK(r.steps[23].quantiles[q05] <= daily(21 * 24 + 23) * 1.001);
  CHECK(r.steps[23].quantiles[q95] >= daily(21 * 24 + 23) * 0.999);
  CHECK(r.steps[23].quantiles[q95] / r.steps[23].quantiles[q05] < 1.2);
}

TEST_CASE("forecaster: a month ahead of three weeks of history keeps the daily cycle", "[forecast]") {
  // No step beyond ~3 weeks has a track record yet; those steps take the weights of the longest
  // step that has one instead of the naive, whose flat path at the last hour's value made a
  // month projected at the daily peak twice one projected at the trough.
  const std::size_t h = 31 * 24;
  double truth = 0.0;
  for (std::size_t k = 1; k <= h; ++k) truth += daily(k);  // the same for any whole-day origin shift
  for (const std::size_t end_hour : {6u, 18u}) {
    forecaster f = hourly(h);
    const std::size_t n = 20 * 24 + end_hour;
    for (std::size_t i = 0; i < n; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, daily(i));
    const auto r = f.forecast(h);
    double sum = 0.0;
    for (std::size_t k = 1; k <= h; ++k) {
      sum += r.steps[k - 1].point;
      if (k > 600) CHECK(rel_err(r.steps[k - 1].point, daily(n - 1 + k)) < 0.05);
    }
    INFO("last hour " << end_hour);
    CHECK(rel_err(sum, truth) < 0.02);
    check_well_formed(r);
  }
}

TEST_CASE("forecaster: a level step is followed within a day", "[forecast]") {
  forecaster f = hourly(24);
  std::mt19937 rng(7);
  std::normal_distribution<double> noise(0.0, 0.05);
  const std::size_t step_at = 14 * 24;
  for (std::size_t i = 0; i < step_at + 24; ++i) {
    const double level = i < step_at ? 1.0 : 3.0;
    f.observe(t0 + static_cast<std::int64_t>(i) * 3600, level * daily(i) * std::exp(noise(rng)));
  }
  const auto r = f.forecast(6);
  for (std::size_t k = 1; k <= 6; ++k) {
    const double truth = 3.0 * daily(step_at + 23 + k);
    CHECK(rel_err(r.steps[k - 1].point, truth) < 0.25);
  }
}

TEST_CASE("forecaster: growing traffic is forecast with its growth a day ahead", "[forecast]") {
  // A product taking off: 10 % more traffic every day, on the daily cycle. Members without a
  // trend forecast the last day's level a day ahead (~10 % low at the far end); the trend
  // challenger (the usual change from now to the target over the last week) has it exactly,
  // and takes over once it beats every other member by its margin.
  std::mt19937 rng(5);
  std::normal_distribution<double> noise(0.0, 0.01);
  const auto growing = [](std::size_t i) { return daily(i) * std::exp(std::log(1.1) * static_cast<double>(i) / 24.0); };
  for (const std::size_t end_hour : {0u, 9u}) {
    forecaster f = hourly(24);
    const std::size_t n = 21 * 24 + end_hour;
    for (std::size_t i = 0; i < n; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, growing(i) * std::exp(noise(rng)));
    const auto r = f.forecast(24);
    check_well_formed(r);
    double sum = 0.0, truth = 0.0;
    for (std::size_t k = 1; k <= 24; ++k) {
      INFO("last hour " << end_hour << ", step " << k);
      CHECK(rel_err(r.steps[k - 1].point, growing(n - 1 + k)) < 0.04);
      sum += r.steps[k - 1].point;
      truth += growing(n - 1 + k);
    }
    INFO("last hour " << end_hour);
    CHECK(rel_err(sum, truth) < 0.02);
    CHECK(r.steps[23].quantiles[q05] <= growing(n + 23));
    CHECK(r.steps[23].quantiles[q95] >= growing(n + 23));
  }
}

TEST_CASE("forecaster: a burst does not corrupt the same hour of the next days", "[forecast]") {
  forecaster f = hourly(24);
  std::mt19937 rng(11);
  std::normal_distribution<double> noise(0.0, 0.05);
  const std::size_t burst_at = 14 * 24 + 10;  // one hour at 30x the usual traffic
  std::size_t i = 0;
  for (; i < 21 * 24; ++i) {
    const double v = daily(i) * std::exp(noise(rng)) * (i == burst_at ? 30.0 : 1.0);
    f.observe(t0 + static_cast<std::int64_t>(i) * 3600, v);
    if (i == burst_at + 14) {
      // The day after the burst: hour 10 tomorrow is forecast at its usual level.
      const auto r = f.forecast(24);
      CHECK(rel_err(r.steps[9].point, daily(burst_at + 24)) < 0.25);  // bin burst_at + 24
    }
  }
  // A week later the same hour is still normal, and its band does not carry the burst.
  const auto r = f.forecast(24);
  const std::size_t k = burst_at + 7 * 24 - (i - 1);
  CHECK(rel_err(r.steps[k - 1].point, daily(burst_at)) < 0.15);
  CHECK(r.steps[k - 1].quantiles[q95] < 3.0 * daily(burst_at));
}

TEST_CASE("forecaster: a one-off batch of several hours on an idle client is not forecast a week later", "[forecast]") {
  // As ServeGen's m-large client 67: idle for days, one evening of a batch (5 hours, up to 40k
  // requests), idle again. The look-ups a week back must not bring the batch back: the burst's
  // later hours sat close to the one-step forecast (which follows a burst), so only cleaning
  // the whole run once it has ended keeps it out of the weekly members.
  const std::size_t batch_at = 5 * 24 + 16;
  const std::array<double, 5> batch{6381, 5039, 2594, 41622, 1313};
  auto value = [&](std::size_t i) { return i >= batch_at && i < batch_at + 5 ? batch[i - batch_at] : 0.0; };
  forecaster f = hourly(24);
  const std::size_t origin = 12 * 24;  // day 12, 00:00: the batch's hours a week later are steps 16-20
  for (std::size_t i = 0; i <= origin; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, value(i));
  const auto r = f.forecast(24);
  check_well_formed(r);
  for (std::size_t k = 1; k <= 24; ++k) {
    INFO("step " << k);
    CHECK(r.steps[k - 1].point < 50.0);
  }

  // A weekly job at the same hours is traffic, not a burst: once it has repeated (days 5, 12
  // and 19) it is forecast for day 26, at its hour. (Damped: most members still say zero and
  // the combination keeps far-out members near the others.) The bin after its peak was once
  // "cleaned" up towards the peak, which forecast a second peak an hour late.
  forecaster g = hourly(24);
  auto weekly = [&](std::size_t i) {
    const std::size_t d = i / 24, h = i % 24;
    return d % 7 == 5 && h >= 16 && h < 21 ? batch[h - 16] : 0.0;
  };
  const std::size_t origin2 = 26 * 24;
  for (std::size_t i = 0; i <= origin2; ++i) g.observe(t0 + static_cast<std::int64_t>(i) * 3600, weekly(i));
  const auto w = g.forecast(24);
  check_well_formed(w);
  CHECK(w.steps[19 - 1].point > 1000.0);           // 19:00, the job's busiest hour
  CHECK(w.steps[20 - 1].point < 2.0 * batch[4]);   // 20:00, its last hour (1,313)
  for (std::size_t k = 1; k <= 15; ++k) CHECK(w.steps[k - 1].point < 50.0);
}

TEST_CASE("forecaster: a daily job on an idle client is forecast at its hour", "[forecast]") {
  // As ServeGen's m-large client 128: idle but for a job at 07:00-09:00 every day (2-6k
  // requests an hour). The cleaning at append time once clipped the job's first run as a
  // spike; the seasonal reference then read the clipped copy, and every later run was clipped
  // against it in turn, so the look-ups forecast ~100 for an hour that always holds thousands.
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> level(2500.0, 6000.0);
  auto value = [&](std::size_t i) { return i % 24 == 7 || i % 24 == 8 ? level(rng) : 0.0; };
  forecaster f = hourly(24);
  const std::size_t origin = 10 * 24 + 6;  // day 10, 06:00
  for (std::size_t i = 0; i <= origin; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, value(i));
  const auto r = f.forecast(24);
  check_well_formed(r);
  CHECK(r.steps[0].point > 1500.0);   // 07:00, the next bin
  CHECK(r.steps[1].point > 1500.0);   // 08:00
  CHECK(r.steps[0].quantiles[q95] > 2500.0);
  for (std::size_t k = 3; k <= 24; ++k) {
    INFO("step " << k);
    CHECK(r.steps[k - 1].point < 50.0);
  }

  // The mirror case, which the same rule covers: a busy series that stops every day at 03:00
  // for a maintenance hour (each zero far below its one-step forecast) forecasts the zero.
  forecaster g = hourly(24);
  auto busy = [&](std::size_t i) { return i % 24 == 3 ? 0.0 : daily(i) * (0.9 + 0.2 * level(rng) / 6000.0); };
  const std::size_t origin2 = 10 * 24 + 2;  // day 10, 02:00
  for (std::size_t i = 0; i <= origin2; ++i) g.observe(t0 + static_cast<std::int64_t>(i) * 3600, busy(i));
  const auto m = g.forecast(24);
  check_well_formed(m);
  CHECK(m.steps[0].point < 20.0);                                // 03:00, the next bin
  CHECK(rel_err(m.steps[1].point, daily(origin2 + 2)) < 0.25);   // 04:00, back to normal
}

TEST_CASE("forecaster: a member that starts late does not take over on a quiet day", "[forecast]") {
  // As a 10-day window of BurstGPT: on day 1 a burst of 60x the usual traffic lasts 30 hours
  // (too long to be cleaned as a spike: it could be a new client), then traffic is normal. The
  // week look-up starts on day 7. Scored on its first dozen errors alone, made on quiet days,
  // it beat every member whose week included the burst, took most of the weight, and on day 8
  // forecast the burst again from a week earlier. A late member's track now starts at its
  // peers' median, so it must earn its weight.
  std::mt19937 rng(11);
  std::normal_distribution<double> noise(0.0, 0.15);
  auto value = [&](std::size_t i) {
    const double usual = daily(i) * std::exp(noise(rng));
    return i >= 24 + 12 && i < 24 + 42 ? 60.0 * usual : usual;  // day 1 12:00 to day 2 18:00
  };
  forecaster f = hourly(24);
  const std::size_t origin = 8 * 24 + 6;  // day 8, 06:00: the next day's look-ups read the burst
  for (std::size_t i = 0; i <= origin; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, value(i));
  const auto r = f.forecast(24);
  check_well_formed(r);
  for (std::size_t k = 1; k <= 24; ++k) {
    INFO("step " << k);
    CHECK(r.steps[k - 1].point < 3.0 * daily(origin + k));
  }
}

TEST_CASE("forecaster: an outage hour does not drag the next day's forecast down", "[forecast]") {
  // Traffic in the hundreds of thousands an hour with one hour at zero (a collection outage,
  // as ServeGen's clients show): the hour after it is normal again. Neither that hour nor the
  // outage may come back in tomorrow's forecast, and the forecasts made right after the outage
  // stay at the usual level (members that forecast the zero are outliers, not voters).
  forecaster f = hourly(24);
  std::mt19937 rng(5);
  std::normal_distribution<double> noise(0.0, 0.05);
  const std::size_t outage_at = 14 * 24 + 6;
  auto traffic = [](std::size_t i) { return 2000.0 * daily(i); };
  for (std::size_t i = 0; i <= outage_at + 6; ++i) {
    const double v = i == outage_at ? 0.0 : traffic(i) * std::exp(noise(rng));
    f.observe(t0 + static_cast<std::int64_t>(i) * 3600, v);
    if (i > outage_at) {
      const auto r = f.forecast(24);
      for (std::size_t k = 1; k <= 24; ++k) {
        INFO("origin " << i - outage_at << " h after the outage, step " << k);
        CHECK(rel_err(r.steps[k - 1].point, traffic(i + k)) < 0.3);
      }
    }
  }
}

TEST_CASE("forecaster: hours of outage do not blow the upper band up", "[forecast]") {
  // 10-minute bins, ~50k a bin, with a whole day and then 11 hours at zero (as ServeGen's
  // clients have): the day-ahead error pools hold errors of e^11 both ways, and their 95th
  // percentile put p95 a day ahead at ~10^8 times the traffic. The upper quantiles stay
  // within twice the busiest bin seen, and the band still holds the usual traffic.
  forecaster f = ten_minute(144);
  std::mt19937 rng(9);
  std::normal_distribution<double> noise(0.0, 0.05);
  auto traffic = [](std::size_t i) {
    return 300.0 * (150.0 + 100.0 * std::sin(2.0 * pi * static_cast<double>(i % 144) / 144.0));
  };
  auto outage = [](std::size_t i) { return (i >= 144 && i < 2 * 144) || (i >= 4 * 144 + 6 && i < 4 * 144 + 72); };
  double busiest = 0.0;
  const std::size_t n = 10 * 144;
  for (std::size_t i = 0; i < n; ++i) {
    const double v = outage(i) ? 0.0 : traffic(i) * std::exp(noise(rng));
    busiest = std::max(busiest, v);
    f.observe(t0 + static_cast<std::int64_t>(i) * 600, v);
  }
  const auto r = f.forecast(144);
  check_well_formed(r);
  for (std::size_t k = 1; k <= 144; ++k) {
    INFO("step " << k);
    CHECK(r.steps[k - 1].quantiles[q95] <= 2.0 * busiest * (1.0 + 1e-4));  // float history
    // (within the 5 % noise: the truth here is the noise-free cycle)
    CHECK(r.steps[k - 1].quantiles[q95] >= traffic(n - 1 + k) / 1.1);
    CHECK(r.steps[k - 1].quantiles[q05] <= traffic(n - 1 + k) * 1.1);
  }
}

TEST_CASE("forecaster: with a matching unit, dollars are forecast like counts", "[forecast]") {
  // The same bursty daily traffic as requests per hour and as dollars per hour at $1e-6 a
  // request. In the caller's unit log1p would be near-linear for the dollars (an additive
  // model); with unit = 1e-6 every output is the count forecast times 1e-6.
  forecaster_config counts_cfg;
  counts_cfg.bin_s = 3600;
  counts_cfg.max_horizon = 24;
  forecaster_config usd_cfg = counts_cfg;
  usd_cfg.unit = 1e-6;
  forecaster counts(counts_cfg), usd(usd_cfg);
  std::mt19937 rng(3);
  std::normal_distribution<double> noise(0.0, 0.3);
  for (std::size_t i = 0; i < 21 * 24; ++i) {
    const double calls = std::round(daily(i) * std::exp(noise(rng)) * (i % 97 == 5 ? 8.0 : 1.0));
    counts.observe(t0 + static_cast<std::int64_t>(i) * 3600, calls);
    usd.observe(t0 + static_cast<std::int64_t>(i) * 3600, calls * 1e-6);
    CHECK(usd.anomaly().flag == counts.anomaly().flag);
  }
  const auto rc = counts.forecast(24), ru = usd.forecast(24);
  for (std::size_t k = 1; k <= 24; ++k) {
    CHECK(ru.steps[k - 1].point == Approx(rc.steps[k - 1].point * 1e-6).epsilon(1e-4));
    for (std::size_t q = 0; q < 5; ++q) CHECK(ru.steps[k - 1].quantiles[q] == Approx(rc.steps[k - 1].quantiles[q] * 1e-6).epsilon(1e-4));
  }
}

TEST_CASE("forecaster: suggest_unit leaves counts alone and scales small amounts", "[forecast]") {
  CHECK(suggest_unit({}) == 1.0);
  CHECK(suggest_unit({0.0, 0.0, std::nan("")}) == 1.0);
  CHECK(suggest_unit({0.0, 1.0, 3.0, 120.0}) == 1.0);
  // dollars per minute around $0.0003: unit 1e-7, the median is ~3,000 units
  CHECK(suggest_unit({0.0, 0.00031, 0.00027, 0.0009, 0.0}) == Approx(1e-7));
  CHECK(suggest_unit({0.5, 0.7, 0.2}) == Approx(1e-4));
}

TEST_CASE("forecaster: quantiles are ordered and finite on a noisy bursty series", "[forecast]") {
  forecaster f = ten_minute(144);
  std::mt19937 rng(3);
  std::lognormal_distribution<double> noise(0.0, 0.6);
  std::bernoulli_distribution burst(0.01);
  for (std::size_t i = 0; i < 10 * 144; ++i) {
    const double v = std::floor(40.0 * noise(rng) * (burst(rng) ? 50.0 : 1.0));
    f.observe(t0 + static_cast<std::int64_t>(i) * 600, v);
    if (i % 97 == 0) check_well_formed(f.forecast(144));
  }
  const auto r = f.forecast(144);
  REQUIRE(r.steps.size() == 144);
  check_well_formed(r);
}

TEST_CASE("forecaster: degenerate series of many shapes give finite, ordered forecasts at every origin", "[forecast]") {
  // Shapes a proxy meets: idle, constant, alternating, steps of many orders of magnitude,
  // spikes on zeros, mostly missing, amounts far below 1, huge token counts; young (cold)
  // and a few days old, at 1-minute, 10-minute and hourly bins.
  std::mt19937 rng(17);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const std::array<std::int64_t, 3> bins{60, 600, 3600};
  for (const std::int64_t bin_s : bins) {
    const std::size_t m = static_cast<std::size_t>(86400 / bin_s);
    for (int shape = 0; shape < 8; ++shape) {
      forecaster_config cfg;
      cfg.bin_s = bin_s;
      cfg.max_horizon = std::min<std::size_t>(m, 144);
      forecaster f(cfg);
      const std::size_t n = std::min<std::size_t>(3 * m + 7, 2000);
      for (std::size_t i = 0; i < n; ++i) {
        double v = 0.0;
        switch (shape) {
          case 0: v = 0.0; break;
          case 1: v = 42.0; break;
          case 2: v = (i % 2) * 1e6; break;
          case 3: v = i < n / 3 ? 10.0 : (i < 2 * n / 3 ? 1e6 : 0.0); break;
          case 4: v = u(rng) < 0.02 ? 1e7 : 0.0; break;
          case 5: v = u(rng) < 0.8 ? std::nan("") : 100.0 * u(rng); break;
          case 6: v = 1e-9 * u(rng); break;
          case 7: v = 1e15 * (1.0 + std::sin(2.0 * pi * static_cast<double>(i % m) / static_cast<double>(m))) + 1e14 * u(rng); break;
        }
        f.observe(t0 + static_cast<std::int64_t>(i) * bin_s, v);
        if (i < 60 || i % 53 == 0) {
          INFO("bin " << bin_s << " s, shape " << shape << ", after " << i + 1 << " bins");
          check_well_formed(f.forecast(cfg.max_horizon));
        }
      }
    }
  }
}

TEST_CASE("forecaster: gaps do not crash and are not read as zero traffic", "[forecast]") {
  forecaster f = hourly(24);
  SECTION("missing bins inside the series") {
    for (std::size_t i = 0; i < 10 * 24; ++i) {
      const bool gap = (i >= 100 && i < 130) || i % 37 == 0;
      f.observe(t0 + static_cast<std::int64_t>(i) * 3600, gap ? missing : daily(i));
    }
    const auto r = f.forecast(24);
    check_well_formed(r);
    for (std::size_t k = 1; k <= 24; ++k) CHECK(rel_err(r.steps[k - 1].point, daily(10 * 24 - 1 + k)) < 0.1);
  }
  SECTION("a series that starts with gaps") {
    for (std::size_t i = 0; i < 30; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, missing);
    check_well_formed(f.forecast(24));
    f.observe(t0 + 30 * 3600, 100.0);
    check_well_formed(f.forecast(24));
  }
  SECTION("timestamps that jump forward") {
    for (std::size_t i = 0; i < 5 * 24; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, daily(i));
    f.observe(t0 + (5 * 24 + 6) * 3600, daily(5 * 24 + 6));  // six hours skipped
    CHECK(f.bins_seen() == 5 * 24 + 7);
    f.observe(t0 + 3600, 1e9);  // in the past: ignored
    CHECK(f.bins_seen() == 5 * 24 + 7);
    // A silence of a year keeps memory bounded and the calendar right.
    const std::int64_t later = t0 + (365 * 24 + 5) * 3600;
    f.observe(later, daily(5));
    const auto r = f.forecast(24);
    check_well_formed(r);
    CHECK(r.origin_s == later);
    CHECK(f.bins_seen() < 60 * 24);
  }
}

TEST_CASE("forecaster: cold start gives finite, wide forecasts", "[forecast]") {
  forecaster f = hourly(24);
  SECTION("before any data") { CHECK(f.forecast(24).steps.empty()); }
  SECTION("after three bins") {
    for (std::size_t i = 0; i < 3; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, 100.0 + 10.0 * i);
    const auto r = f.forecast(24);
    REQUIRE(r.steps.size() == 24);
    CHECK_FALSE(r.warm);
    check_well_formed(r);
    CHECK(rel_err(r.steps[0].point, 120.0) < 0.01);
    CHECK(r.steps[23].quantiles[q95] / r.steps[23].quantiles[q05] > 2.0);
    // Wide, but still about this series: at most x10 the point at p95, widened (on the log
    // scale) by at most 25% a day ahead.
    for (const auto& s : r.steps) CHECK(s.quantiles[q95] <= (s.point + 1.0) * std::pow(10.0, 1.25));
  }
  SECTION("dollars per minute: the band is relative to the spend, not to one dollar") {
    // A new proxy's first minute: three calls worth $0.000288. The prior on the log1p scale
    // used to put p90 an hour ahead at ~$30,000 a minute, and a month's projection at $720k.
    forecaster_config cfg;
    cfg.bin_s = 60;
    cfg.max_horizon = 63;
    forecaster m(cfg);
    m.observe(t0, 0.000288);
    const auto r = m.forecast(63);
    REQUIRE(r.steps.size() == 63);
    CHECK_FALSE(r.warm);
    check_well_formed(r);
    for (const auto& s : r.steps) {
      CHECK(s.point == Approx(0.000288).epsilon(0.01));
      CHECK(s.quantiles[q95] <= 0.000288 * std::pow(10.0, 1.25));
      CHECK(s.quantiles[q95] > s.quantiles[q05]);
    }
  }
  SECTION("a mostly idle start: the band above a zero point still reaches the busy minutes") {
    // A new proxy tried with three bursts of calls in 20 minutes, idle since: the point is ~0,
    // but a band of [0, 0] for the next hour would say no call can come.
    forecaster_config cfg;
    cfg.bin_s = 60;
    cfg.max_horizon = 60;
    forecaster m(cfg);
    for (std::size_t i = 0; i < 20; ++i)
      m.observe(t0 + static_cast<std::int64_t>(i) * 60, (i == 2 || i == 5 || i == 9) ? 20000.0 : 0.0);
    const auto r = m.forecast(60);
    REQUIRE(r.steps.size() == 60);
    CHECK_FALSE(r.warm);
    check_well_formed(r);
    const double mean = 3 * 20000.0 / 20;
    for (const auto& s : r.steps) {
      CHECK(s.point < mean / 100);
      CHECK(s.quantiles[q05] <= s.point);
      CHECK(s.quantiles[q95] >= mean);
      CHECK(s.quantiles[q95] <= 20000.0 * 10.0);
    }
  }
  SECTION("a step of five orders of magnitude in the first hour: finite bands, capped") {
    // 25 minutes at 10 calls, then 25 at a million. Between the warm early steps and the cold
    // later ones the upper band was e^10000 (inf) and the median 3x anything seen. Warm steps
    // stop at twice the busiest minute, cold ones at the prior's x10 (widened a little).
    forecaster_config cfg;
    cfg.bin_s = 60;
    cfg.max_horizon = 60;
    forecaster m(cfg);
    for (std::size_t i = 0; i < 50; ++i) m.observe(t0 + static_cast<std::int64_t>(i) * 60, i < 25 ? 10.0 : 1e6);
    const auto r = m.forecast(60);
    REQUIRE(r.steps.size() == 60);
    check_well_formed(r);
    for (const auto& s : r.steps) {
      CHECK(s.quantiles[q95] <= 1e6 * std::pow(10.0, 1.25));
      CHECK(s.quantiles[q50] <= 2e6 * 1.001);
    }
    for (std::size_t k = 1; k <= 12; ++k) CHECK(r.steps[k - 1].quantiles[q95] <= 2e6 * 1.001);
  }
}

TEST_CASE("ets: on its first day the persistent outputs carry the current deviation", "[forecast]") {
  // Ten-minute bins from midnight: 8 hours around 100, then an hour around 150. No time of day
  // after the last bin has been seen yet. A first visit puts nearly all of a bin's deviation
  // into that bin's profile entry; a target whose entry was never visited used to get the bare
  // level from every output, so "today's level carried forward" (persistence 1) was the slow
  // running mean instead of the last value.
  detail::history h;
  h.reset(2000);
  const detail::calendar cal{144, 600, t0};
  auto ets = detail::make_ets(detail::ets_params{}, 600);
  REQUIRE(ets->outputs() == 5);  // persistence per hour 0, 0.5, 0.8, 0.95, 1
  for (std::size_t i = 0; i < 54; ++i) {
    const double y = (i < 48 ? 100.0 : 150.0) * (i % 2 == 0 ? 0.95 : 1.05);
    h.push(std::log1p(y), std::log1p(y), true);
    ets->observe(h, cal, true);
  }
  const double z_now = h.z(53);
  std::array<double, 5> out{};
  for (std::size_t k : {1u, 6u, 24u}) {
    ets->predict(h, cal, k, out.data());
    INFO("step " << k);
    CHECK(out[4] == Approx(z_now).margin(1e-6));          // persistence 1: the last value
    CHECK(out[0] < std::log1p(120.0));                    // persistence 0: the level, still near 100
    for (std::size_t j = 1; j < 5; ++j) CHECK(out[j - 1] <= out[j] + 1e-12);  // in between, ordered
  }
  // Two missing bins (the history holds the ensemble's fill-in there): the deviation carried is
  // still the last observed bin's.
  for (std::size_t i = 54; i < 56; ++i) {
    h.push(z_now, z_now, false);
    ets->observe(h, cal, false);
  }
  ets->predict(h, cal, 1, out.data());
  CHECK(out[4] == Approx(z_now).margin(1e-6));
  // A day later every time of day has been visited: the profile speaks again. The same hour
  // tomorrow (step 144 from the last bin) is forecast near its value today by every output.
  for (std::size_t i = 56; i < 144 + 56; ++i) {
    const double y = (i % 144 < 48 ? 100.0 : 150.0) * (i % 2 == 0 ? 0.95 : 1.05);
    h.push(std::log1p(y), std::log1p(y), true);
    ets->observe(h, cal, true);
  }
  ets->predict(h, cal, 144, out.data());
  for (double v : out) CHECK(std::expm1(v) == Approx(150.0).epsilon(0.15));
}

TEST_CASE("seasonal change: today's value plus the usual change to the target's time of day", "[forecast]") {
  // Ten-minute bins, a daily shape repeated for three days, then today at 1.5 x the usual
  // level: an hour ahead the forecast is today's last value moved by the shape's change over
  // that hour on the past days, not the past days' values (the look-ups) nor today's flat value.
  detail::history h;
  h.reset(2000);
  const detail::calendar cal{144, 600, t0};
  auto change = detail::make_seasonal_change(3, 144, 6);
  REQUIRE(change->outputs() == 1);
  auto shape = [](std::size_t i) { return 1000.0 * (1.5 + std::sin(2.0 * 3.14159265358979 * static_cast<double>(i % 144) / 144.0)); };
  std::array<double, 1> out{};
  for (std::size_t i = 0; i < 3 * 144 + 60; ++i) {
    const double y = shape(i) * (i >= 3 * 144 ? 1.5 : 1.0);
    h.push(std::log1p(y), std::log1p(y), true);
    change->observe(h, cal, true);
    if (i == 144 + 59) {  // one past day: not a majority of three
      change->predict(h, cal, 1, out.data());
      CHECK(std::isnan(out[0]));
    }
  }
  const std::size_t t = 3 * 144 + 59;
  for (std::size_t k : {1u, 3u, 6u}) {
    change->predict(h, cal, k, out.data());
    INFO("step " << k);
    const double usual = std::log1p(shape(t + k)) - std::log1p(shape(t));
    CHECK(out[0] == Approx(h.z(t) + usual).margin(1e-5));
    CHECK(std::expm1(out[0]) == Approx(1.5 * shape(t + k)).epsilon(0.001));
  }
  change->predict(h, cal, 7, out.data());  // beyond max_k: no say
  CHECK(std::isnan(out[0]));
  // A missing bin on one past day leaves two days' changes: still a forecast.
  detail::history g;
  g.reset(2000);
  for (std::size_t i = 0; i < 3 * 144 + 60; ++i) {
    const double y = shape(i);
    g.push(std::log1p(y), std::log1p(y), i != 2 * 144 + 60);
  }
  change->predict(g, cal, 1, out.data());
  CHECK(std::expm1(out[0]) == Approx(shape(3 * 144 + 60)).epsilon(0.001));
}

TEST_CASE("seasonal change: an anchor of several bins takes today's level from all of them", "[forecast]") {
  // Ten-minute bins, a daily shape for four days, then today at 1.2 x with its last bin a 3 x
  // spike. With one bin as the anchor the spike is the level; with 18 bins (3 hours: the trend
  // challenger's) the level is their mean gap to the same bins on the past days, 1.2 x nearly.
  const detail::calendar cal{144, 600, t0};
  auto shape = [](std::size_t i) { return 1000.0 * (1.5 + std::sin(2.0 * 3.14159265358979 * static_cast<double>(i % 144) / 144.0)); };
  detail::history h;
  h.reset(2000);
  const std::size_t t = 4 * 144 + 70;
  for (std::size_t i = 0; i <= t; ++i) {
    const double y = shape(i) * (i >= 4 * 144 ? 1.2 : 1.0) * (i == t ? 2.5 : 1.0);
    h.push(std::log1p(y), std::log1p(y), true);
  }
  auto one = detail::make_seasonal_change(3, 144, 144);
  auto several = detail::make_seasonal_change(3, 144, 144, 18);
  std::array<double, 1> out{};
  for (std::size_t k : {6u, 144u}) {
    INFO("step " << k);
    one->predict(h, cal, k, out.data());
    CHECK(std::expm1(out[0]) == Approx(3.0 * shape(t + k)).epsilon(0.01));
    several->predict(h, cal, k, out.data());
    // ln(2.5) / 18 of the spike is left in the mean: 1.2 x e^(0.051).
    CHECK(std::expm1(out[0]) == Approx(1.2 * std::exp(std::log(2.5) / 18.0) * shape(t + k)).epsilon(0.01));
  }
}

TEST_CASE("forecaster: an all-zero series forecasts zero", "[forecast]") {
  forecaster f = hourly(24);
  for (std::size_t i = 0; i < 10 * 24; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, 0.0);
  const auto r = f.forecast(24);
  check_well_formed(r);
  for (const auto& s : r.steps) {
    CHECK(s.point == Approx(0.0).margin(1e-9));
    CHECK(s.quantiles[q95] < 1.0);
  }
}

TEST_CASE("forecaster: a spike is flagged in its first bin, normal traffic is not", "[forecast]") {
  forecaster_config cfg;
  cfg.bin_s = 60;
  cfg.max_horizon = 60;
  forecaster f(cfg);
  std::mt19937 rng(5);
  std::poisson_distribution<int> arrivals(200);
  std::size_t flags = 0;
  const std::size_t n = 3 * 1440;
  for (std::size_t i = 0; i < n; ++i) {
    f.observe(t0 + static_cast<std::int64_t>(i) * 60, arrivals(rng));
    if (i > 1440) flags += f.anomaly().flag ? 1 : 0;
  }
  CHECK(flags <= 2);
  f.observe(t0 + static_cast<std::int64_t>(n) * 60, 1200.0);  // a viral minute: 6x
  CHECK(f.anomaly().flag);
  CHECK(f.anomaly().score > 10.0);
  CHECK(f.anomaly().expected == Approx(200.0).epsilon(0.1));
  CHECK(f.anomaly().upper < 1200.0);
}

TEST_CASE("forecaster: the spike detector's expected value is never negative on an idle series", "[forecast]") {
  // Found by fuzz_forecast: minutes that are nearly all zero put the detector's centre a hair
  // below log1p(0), and expm1 of it is -1e-6 requests. Every bin checked, at 1 minute and 1 hour.
  for (std::int64_t bin : {60, 3600}) {
    forecaster_config cfg;
    cfg.bin_s = bin;
    forecaster f(cfg);
    std::mt19937 rng(3);
    std::bernoulli_distribution call(0.02);
    std::size_t scored = 0;
    for (std::int64_t i = 0; i < 400; ++i) {
      f.observe(t0 + i * bin, call(rng) ? 1.0 : 0.0);
      const anomaly_state& a = f.anomaly();
      if (!a.scored) continue;
      ++scored;
      INFO("bin " << bin << " s, step " << i << ": expected " << a.expected);
      REQUIRE(a.expected >= 0.0);
      REQUIRE(a.upper >= a.expected);
    }
    CHECK(scored > 100);
  }
}

TEST_CASE("forecaster: a series that stops is not flagged as a spike for its zeros", "[forecast]") {
  // Found by fuzz_forecast: two bins of ~220 calls, then only zeros, with gaps (5-minute bins).
  // The detector's errors were mostly the drop to zero, its centre fell to log1p(-0.98), and
  // the next bin of 0 scored +32 and was flagged, "above" an upper bound of -0.76 calls.
  const int steps[] = {1, 1, 1, 2, 1, 1, -2, 7, 1, 50, 1, 1, 1, 50, 1, 1, 1, -2,
                       7, 1, 50, 1, -2, 7, 1, 1, 1, 1, 50, 1, 1, 1, -2, 7, 1, 50};
  forecaster_config cfg;
  cfg.bin_s = 300;
  forecaster f(cfg);
  std::int64_t t = t0;
  std::size_t i = 0, scored = 0;
  for (const int step : steps) {
    t += step * cfg.bin_s;
    f.observe(t, i == 0 ? 210.0 : i == 1 ? 229.0 : 0.0);
    ++i;
    const anomaly_state& a = f.anomaly();
    if (!a.scored) continue;
    ++scored;
    INFO("bin " << i << ": score " << a.score << ", expected " << a.expected << ", upper " << a.upper);
    CHECK_FALSE(a.flag);
    CHECK(a.score <= 0.0);  // 0 calls is at or below any centre
    CHECK(a.expected >= 0.0);
    CHECK(a.upper >= a.expected);
  }
  CHECK(scored > 0);
}

TEST_CASE("forecaster: fit equals feeding the bins one by one", "[forecast]") {
  series s;
  s.start_s = t0;
  s.bin_s = 3600;
  for (std::size_t i = 0; i < 8 * 24; ++i) s.values.push_back(i % 50 == 0 ? missing : daily(i) + (i % 7));
  forecaster a = hourly(24), b = hourly(24);
  a.fit(s);
  for (std::size_t i = 0; i < s.size(); ++i) b.observe(s.timestamp(i), s.values[i]);
  const auto ra = a.forecast(24), rb = b.forecast(24);
  REQUIRE(ra.steps.size() == rb.steps.size());
  for (std::size_t k = 0; k < ra.steps.size(); ++k) {
    CHECK(ra.steps[k].point == rb.steps[k].point);
    CHECK(ra.steps[k].quantiles == rb.steps[k].quantiles);
  }
}

TEST_CASE("forecaster: a constant series is forecast inside its band", "[forecast]") {
  // Every error is float rounding noise here; the band must still contain the value.
  for (double level : {7.0, 60.0, 12345.0, 0.0025}) {
    forecaster f = hourly(24);
    for (std::size_t i = 0; i < 21 * 24; ++i) f.observe(t0 + static_cast<std::int64_t>(i) * 3600, level);
    const auto r = f.forecast(24);
    check_well_formed(r);
    for (const auto& s : r.steps) {
      CHECK(s.point == Approx(level).epsilon(1e-6));
      CHECK(s.quantiles[q05] <= level);
      CHECK(s.quantiles[q10] <= level);
      CHECK(s.quantiles[q90] >= level);
      CHECK(s.quantiles[q95] >= level);
      CHECK(s.quantiles[q95] <= level * (1.0 + 1e-3));
    }
  }
}

namespace {

// The same traffic binned by the minute and by ten minutes, `days` days of it: a daily cycle
// whose level drifts from hour to hour (what a day ahead cannot know), counted with
// extra-Poisson noise, times ramp(minute).
template <class Ramp>
std::pair<forecaster, forecaster> minute_and_ten_minutes(std::size_t days, Ramp ramp) {
  constexpr std::size_t m = 1440;
  std::mt19937 rng(11);
  std::normal_distribution<double> drift(0.0, 0.08), burst(0.0, 0.1);
  std::vector<double> hour_level(days * 24 + 1);
  double lv = 0.0;
  for (auto& h : hour_level) h = (lv += drift(rng) - 0.02 * lv);
  forecaster_config c1, c10;
  c1.bin_s = 60;
  c1.max_horizon = m;
  c10.bin_s = 600;
  c10.max_horizon = m / 10;
  std::pair<forecaster, forecaster> f{forecaster(c1), forecaster(c10)};
  double ten = 0.0;
  for (std::size_t i = 0; i < days * m; ++i) {
    const double mean = 30.0 * ramp(i) * std::exp(hour_level[i / 60]) * (1.0 + 0.5 * std::sin(2.0 * pi * static_cast<double>(i % m) / m));
    std::poisson_distribution<int> count(mean * std::exp(burst(rng)));
    const double x = count(rng);
    f.first.observe(t0 + static_cast<std::int64_t>(i) * 60, x);
    ten += x;
    if (i % 10 == 9) {
      f.second.observe(t0 + static_cast<std::int64_t>(i - 9) * 60, ten);
      ten = 0.0;
    }
  }
  return f;
}

// Mean of `side` (a log width of a step) over the second half of the day ahead, at one minute
// (every 10th step) and at ten minutes.
template <class Side>
std::pair<double, double> day_ahead_mean(std::pair<forecaster, forecaster>& f, Side side) {
  constexpr std::size_t m = 1440;
  const auto r1 = f.first.forecast(m);
  const auto r10 = f.second.forecast(m / 10);
  check_well_formed(r1);
  check_well_formed(r10);
  double w1 = 0.0, w10 = 0.0;
  for (std::size_t k = m / 2; k < m; k += 10) w1 += side(r1.steps[k]);
  for (std::size_t k = m / 20; k < m / 10; ++k) w10 += side(r10.steps[k]);
  return {w1 / 72.0, w10 / 72.0};
}

}  // namespace

TEST_CASE("forecaster: at one-minute bins a day-ahead band is as wide as at ten minutes", "[forecast]") {
  // The level rises 2.5x over the last two days, as ServeGen m-large's last test day. A day
  // ahead the minute's band holds the same drift and more counting noise, so it must be no
  // narrower than the ten minutes'. (Steps of 10 minutes and more at one-minute bins are
  // scaled by the error 10 minutes ahead, not by the next bin's counting noise:
  // forecast/RESULTS.md, 20, measured on backtests; this synthetic passes either way and
  // guards the property.)
  constexpr std::size_t days = 12, m = 1440;
  auto f = minute_and_ten_minutes(days, [](std::size_t i) {
    return i >= (days - 2) * m ? std::exp(std::log(2.5) * static_cast<double>(i - (days - 2) * m) / (2.0 * m)) : 1.0;
  });
  const auto [w1, w10] = day_ahead_mean(f, [](const step_forecast& s) { return std::log1p(s.quantiles[q95]) - std::log1p(s.quantiles[q05]); });
  INFO("mean day-ahead log band, 1 minute " << w1 << ", 10 minutes " << w10);
  CHECK(w1 >= 0.95 * w10);
}

TEST_CASE("forecaster: calm days narrow a one-minute day-ahead upper tail no more than a ten-minute one", "[forecast]") {
  // The level falls to a third over the last three days: a day ahead, every forecast sits
  // high and the upper tail goes unmissed. Adaptive conformal narrows a tail a little for each
  // hit; counted per bin, one-minute bins took ten hits for each ten-minute one (on ServeGen
  // m-large the day-ahead upper tail ended 0.4 narrower in log than at ten minutes, and the
  // next day's 2.5x level missed it: forecast/RESULTS.md, 21). At one minute, steps of an hour
  // and more now count in 10-minute units.
  constexpr std::size_t days = 12, m = 1440;
  auto f = minute_and_ten_minutes(days, [](std::size_t i) {
    return i >= (days - 3) * m ? std::exp(std::log(1.0 / 3.0) * static_cast<double>(i - (days - 3) * m) / (3.0 * m)) : 1.0;
  });
  const auto [u1, u10] = day_ahead_mean(f, [](const step_forecast& s) { return std::log1p(s.quantiles[q95]) - std::log1p(s.quantiles[q50]); });
  INFO("mean day-ahead upper log half-band, 1 minute " << u1 << ", 10 minutes " << u10);
  CHECK(u1 >= 0.93 * u10);  // 0.87 x before (per-bin counting), 1.06 x after
}
