// Request-log binning, timestamp formats, and the SVG plot.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>

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

TEST_CASE("aggregate: event_bins folds records in any order into the same bins, holding bins, not records", "[forecast]") {
  // Three days of records at irregular times, with integer amounts (their sums are exact in
  // any order), two models.
  std::vector<request_event> ev;
  std::uint64_t state = 12345;
  auto next = [&state] { return (state = state * 6364136223846793005ULL + 1442695040888963407ULL) >> 33; };
  for (int i = 0; i < 30'000; ++i)
    ev.push_back({1736121600000 + static_cast<std::int64_t>(next() % 259'200'000), static_cast<double>(next() % 1000),
                  static_cast<double>(next() % 100), static_cast<double>(next() % 7), i % 3 ? "a" : "b"});
  const series expected = aggregate_events(ev, 60, quantity::total_tokens);
  REQUIRE(expected.values.size() > 4000);
  auto fold = [](auto first, auto last, std::int64_t bin_s, quantity q) {
    event_bins b(bin_s, q);
    for (; first != last; ++first) b.add(*first);
    return b;
  };
  SECTION("newest first, sorted, and shuffled") {
    const event_bins backwards = fold(ev.rbegin(), ev.rend(), 60, quantity::total_tokens);
    CHECK(backwards.result().values == expected.values);
    CHECK(backwards.result().start_s == expected.start_s);
    CHECK(backwards.records() == ev.size());
    auto sorted = ev;
    std::sort(sorted.begin(), sorted.end(), [](const auto& x, const auto& y) { return x.timestamp_ms < y.timestamp_ms; });
    CHECK(fold(sorted.rbegin(), sorted.rend(), 60, quantity::total_tokens).result().values == expected.values);
    CHECK(fold(sorted.begin(), sorted.end(), 60, quantity::total_tokens).result().values == expected.values);
    std::shuffle(sorted.begin(), sorted.end(), std::mt19937(7));
    CHECK(fold(sorted.begin(), sorted.end(), 60, quantity::total_tokens).result().values == expected.values);
  }
  SECTION("every quantity and width, and the edges, as aggregate_events and partial_edge_bins say") {
    for (const quantity q : {quantity::requests, quantity::prompt_tokens, quantity::completion_tokens,
                             quantity::cost_usd})
      for (const std::int64_t w : {60, 600, 3600}) {
        const event_bins b = fold(ev.rbegin(), ev.rend(), w, q);
        CHECK(b.result().values == aggregate_events(ev, w, q).values);
        CHECK(b.bins_spanned() == b.result().values.size());
        CHECK(b.edges().first_covered == partial_edge_bins(ev, w).first_covered);
        CHECK(b.edges().last_covered == partial_edge_bins(ev, w).last_covered);
      }
  }
  SECTION("a record decades away ends the binning, however many come after; the span is still told") {
    event_bins b(60, quantity::requests);
    b.add(ev[0]);
    b.add({1000, 1, 1, 0, "a"});  // a stray timestamp near 1970
    for (const auto& e : ev) b.add(e);
    CHECK(b.result().values.empty());
    CHECK(b.bins_spanned() > max_series_bins);
    CHECK(b.records() == ev.size() + 2);
    // Just within the limit, newest first: the headroom before the first bin never reaches
    // past max_series_bins before the last record.
    event_bins edge(60, quantity::requests);
    const std::int64_t last = 1736121600000;
    edge.add({last, 1, 1, 0, ""});
    edge.add({last - 60'000, 1, 1, 0, ""});
    edge.add({last - static_cast<std::int64_t>(max_series_bins - 1) * 60'000, 1, 1, 0, ""});
    REQUIRE(edge.bins_spanned() == max_series_bins);
    const series s = edge.result();
    REQUIRE(s.values.size() == max_series_bins);
    CHECK(s.values.front() == 1);
    CHECK(s.values[max_series_bins - 2] == 1);
    CHECK(s.values.back() == 1);
  }
  CHECK(event_bins(60, quantity::requests).result().values.empty());
  CHECK(event_bins(60, quantity::requests).bins_spanned() == 0);
}

TEST_CASE("aggregate: edge bins the records cover only in part are found", "[forecast]") {
  const std::int64_t t0 = 1700158500000;  // 2023-11-16T18:15:00Z, a minute boundary
  auto every = [](std::int64_t from, std::int64_t to, std::int64_t step, const char* model = "m") {
    std::vector<request_event> ev;
    for (std::int64_t t = from; t <= to; t += step) ev.push_back({t, 1, 1, 0, model});
    return ev;
  };
  SECTION("a trace cut mid-minute at both ends, as Azure's conversation trace (18:15:47 to 19:14:08)") {
    const auto e = partial_edge_bins(every(t0 + 47'000, t0 + 59 * 60'000 + 8'000, 250), 60);
    CHECK(e.first_partial);
    CHECK(e.last_partial);
    CHECK(e.first_covered == Approx(13.0 / 60.0).margin(0.01));
    CHECK(e.last_covered == Approx(8.25 / 60.0).margin(0.01));
  }
  SECTION("a log cut on minute boundaries keeps both bins") {
    const auto e = partial_edge_bins(every(t0 + 100, t0 + 45 * 60'000 - 150, 250), 60);
    CHECK_FALSE(e.first_partial);
    CHECK_FALSE(e.last_partial);
  }
  SECTION("up to 10 % uncovered is kept (Mooncake's hour ends 57 s into its last minute)") {
    const auto e = partial_edge_bins(every(t0, t0 + 58 * 60'000 + 57'000, 300), 60);
    CHECK_FALSE(e.last_partial);
    CHECK(partial_edge_bins(every(t0, t0 + 58 * 60'000 + 50'000, 300), 60).last_partial);
  }
  SECTION("a sparse log (a call every 10 minutes) has mostly empty bins anyway: nothing is partial") {
    const auto e = partial_edge_bins(every(t0 + 30'000, t0 + 600 * 60'000 + 30'000, 600'000), 60);
    CHECK_FALSE(e.first_partial);
    CHECK_FALSE(e.last_partial);
  }
  SECTION("one bin, one record, or none: nothing to compare") {
    CHECK_FALSE(partial_edge_bins(every(t0 + 10'000, t0 + 20'000, 1'000), 60).last_partial);
    CHECK_FALSE(partial_edge_bins(every(t0 + 10'000, t0 + 10'000, 1), 60).first_partial);
    CHECK_FALSE(partial_edge_bins({}, 60).first_partial);
  }
  SECTION("only the chosen model's records count") {
    auto ev = every(t0, t0 + 10 * 60'000 - 100, 250, "a");
    const auto b = every(t0 + 30'000, t0 + 5 * 60'000 + 30'000, 250, "b");
    ev.insert(ev.end(), b.begin(), b.end());
    CHECK_FALSE(partial_edge_bins(ev, 60, "a").first_partial);
    CHECK(partial_edge_bins(ev, 60, "b").first_partial);
    CHECK(partial_edge_bins(ev, 60, "b").last_partial);
  }
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
