// An SVG chart of actual vs forecast with the 90% band, for `tollgate-forecast plot`. Pure
// string building; no fonts or libraries beyond what any browser has.
#pragma once
#include <cstdint>
#include <span>
#include <string>

namespace tollgate::forecast {

struct plot_point {
  std::int64_t timestamp_s = 0;
  double actual;    // NaN: no actual (future or gap)
  double forecast;  // NaN: no forecast for this bin
  double lower;     // 5% quantile (NaN: none)
  double upper;     // 95% quantile (NaN: none)
};

struct plot_options {
  std::string title;
  std::string subtitle;
  int width = 1100;
  int height = 420;
  std::int64_t marker_s = 0;  // a dashed vertical line here (forecast origin); 0 = none
  bool log_scale = false;     // log1p y axis (bursty series)...
  double log_unit = 1.0;      // ...of y / log_unit: amounts far below 1 (dollars per minute) need
                              // a small unit, as the forecaster does (suggest_unit)
};

std::string render_svg(std::span<const plot_point> points, const plot_options& opt);

}  // namespace tollgate::forecast
