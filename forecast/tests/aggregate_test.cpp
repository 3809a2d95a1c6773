// Request-log binning, timestamp formats, and the SVG plot.
#include <catch2/catch.hpp>

#include <cmath>

#include "forecast/aggregate.hpp"
#include "forecast/svg_plot.hpp"

using namespace tollgate::forecast;

TEST_CASE("aggregate: timestamps in seconds, milliseconds and ISO 8601", "[forecast]") {
  CHECK(parse_timestamp_ms("1736121600") == 1736121600000);
  CHECK(parse_timestamp_ms("1736121600.5") == 1736121600500);
  CHECK(parse_timestamp_ms("1736121600123") == 1736121600123);
  CHECK(parse_timestamp_ms("42", 1.0) == 42);  // ms since trace start, unit given
  CHECK(parse_timestamp_ms("2025-01-06T00:00:00Z") == 1736121600000);
  CHECK(parse_timestamp_ms("2025-01-06 00:00:00") == 1736121600000);
  CHECK(parse_timestamp_ms("2023-11-16 18:17:03.9799600") == 1700158623979);
  CHECK(parse_timestamp_ms("2025-01-06T02:00:00+02:00") == 1736121600000);
  CHECK(parse_timestamp_ms("\"2025-01-06\"") == 1736121600000);
  CHECK_FALSE(parse_timestamp_ms("yesterday"));
  CHECK_FALSE(parse_timestamp_ms(""));
  CHECK_FALSE(parse_timestamp_ms("1e30"));  // not a time, and no undefined cast to int64
  CHECK_FALSE(parse_timestamp_ms("-1e20"));
}

TEST_CASE("aggregate: a span beyond max_series_bins is reported, not allocated", "[forecast]") {
  // A stray zero timestamp in a 2025 log: 29 million one-minute bins.
  const std::vector<request_event> ev{{0, 1, 1, 0, "m"}, {1736121600000, 1, 1, 0, "m"}, {1736121660000, 1, 1, 0, "x"}};
  CHECK(bins_spanned(ev, 60) == 1736121660000 / 60000 + 1);
  CHECK(bins_spanned(ev, 60) > max_series_bins);
  CHECK(aggregate_events(ev, 60, quantity::requests).values.empty());
  CHECK(bins_spanned(std::span(ev).subspan(1), 60) == 2);
  CHECK(bins_spanned(ev, 60, "x") == 1);
  CHECK(bins_spanned({}, 60) == 0);
}

TEST_CASE("aggregate: requests and tokens per bin, empty bins are zeros", "[forecast]") {
  const std::vector<request_event> ev{
      {1736121600000, 100, 10, 0.01, "gpt-4o"},
      {1736121659999, 200, 20, 0.02, "gpt-4o-mini"},
      {1736121780000, 300, 30, 0.03, "gpt-4o"},
  };
  const auto req = aggregate_events(ev, 60, quantity::requests);
  CHECK(req.start_s == 1736121600);
  CHECK(req.bin_s == 60);
  CHECK(req.values == std::vector<double>{2, 0, 0, 1});
  CHECK(aggregate_events(ev, 60, quantity::total_tokens).values == std::vector<double>{330, 0, 0, 330});
  CHECK(aggregate_events(ev, 60, quantity::completion_tokens, "gpt-4o").values == std::vector<double>{10, 0, 0, 30});
  const auto cost = aggregate_events(ev, 3600, quantity::cost_usd);
  REQUIRE(cost.values.size() == 1);
  CHECK(cost.values[0] == Approx(0.06));
  CHECK(aggregate_events(ev, 60, quantity::requests, "other").values.empty());
  CHECK(parse_quantity("prompt_tokens") == quantity::prompt_tokens);
  CHECK_FALSE(parse_quantity("tokens"));
}

TEST_CASE("plot: the SVG has the band, both lines and an escaped title", "[forecast]") {
  std::vector<plot_point> pts;
  const double nan = std::nan("");
  for (int i = 0; i < 48; ++i)
    pts.push_back({1736121600 + i * 3600, i < 40 ? 100.0 + i : nan, 100.0 + i, 80.0 + i, 130.0 + i});
  plot_options opt;
  opt.title = "a<b & c";
  opt.marker_s = 1736121600 + 40 * 3600;
  const std::string svg = render_svg(pts, opt);
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(svg.find("<polygon") != std::string::npos);
  CHECK(svg.find("a&lt;b &amp; c") != std::string::npos);
  CHECK(svg.find("stroke=\"#2171b5\"") != std::string::npos);
  CHECK(svg.find("stroke-dasharray") != std::string::npos);
  CHECK(render_svg({}, opt).find("</svg>") != std::string::npos);
}
