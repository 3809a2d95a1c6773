// Renders actual vs forecast with the 90% band as a self-contained SVG (axes, UTC time ticks,
// legend). Used by `tollgate-forecast plot`.
#include "forecast/svg_plot.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

namespace tollgate::forecast {
namespace {

// Text for an SVG (XML 1.0) element: markup characters escaped, control characters as '?', and
// bytes that are not valid UTF-8 (a column name in Latin-1) as U+FFFD, so the file still parses.
std::string escape(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '&': out += "&amp;"; break;
        case '"': out += "&quot;"; break;
        default: out += c < 0x20 && c != '\t' ? '?' : static_cast<char>(c);
      }
      ++i;
      continue;
    }
    // Length of a well-formed sequence starting here (no overlongs, surrogates or > U+10FFFF).
    std::size_t len = 0;
    const auto at = [&](std::size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u; };
    const auto cont = [&](std::size_t k, unsigned lo, unsigned hi) { return at(k) >= lo && at(k) <= hi; };
    if (c >= 0xC2 && c <= 0xDF && cont(1, 0x80, 0xBF)) len = 2;
    else if (c == 0xE0 && cont(1, 0xA0, 0xBF) && cont(2, 0x80, 0xBF)) len = 3;
    else if (((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) && cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF)) len = 3;
    else if (c == 0xED && cont(1, 0x80, 0x9F) && cont(2, 0x80, 0xBF)) len = 3;
    else if (c == 0xF0 && cont(1, 0x90, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF)) len = 4;
    else if (c >= 0xF1 && c <= 0xF3 && cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF)) len = 4;
    else if (c == 0xF4 && cont(1, 0x80, 0x8F) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF)) len = 4;
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(s, i, len);
      i += len;
    }
  }
  return out;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `target` ticks over span.
double nice_step(double span, int target) {
  const double raw = span / std::max(target, 1);
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double f : {1.0, 2.0, 5.0, 10.0})
    if (f * p >= raw) return f * p;
  return 10.0 * p;
}

std::string short_number(double v) {
  const double a = std::fabs(v);
  if (a >= 1e12) return fmt("%.3gT", v / 1e12);
  if (a >= 1e9) return fmt("%.3gG", v / 1e9);
  if (a >= 1e6) return fmt("%.3gM", v / 1e6);
  if (a >= 1e4) return fmt("%.3gk", v / 1e3);
  return fmt("%.4g", v);
}

std::string utc_label(std::int64_t ts, bool with_time) {
  const std::int64_t days = (ts >= 0 ? ts : ts - 86399) / 86400;
  const std::int64_t secs = ts - days * 86400;
  // civil_from_days (Howard Hinnant)
  const std::int64_t zd = days + 719468;
  const std::int64_t era = (zd >= 0 ? zd : zd - 146096) / 146097;
  const auto doe = static_cast<unsigned>(zd - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  char buf[32];
  if (with_time)
    std::snprintf(buf, sizeof buf, "%02u-%02u %02d:%02d", m, d, static_cast<int>(secs / 3600),
                  static_cast<int>(secs % 3600 / 60));
  else
    std::snprintf(buf, sizeof buf, "%02u-%02u", m, d);
  return buf;
}

}  // namespace

std::string render_svg(std::span<const plot_point> pts, const plot_options& opt) {
  const double W = opt.width, H = opt.height;
  const double left = 70, right = 20, top = opt.subtitle.empty() ? 40 : 56, bottom = 60;
  const double pw = W - left - right, ph = H - top - bottom;
  std::string svg;
  svg += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fmt("%.0f", W) + "\" height=\"" + fmt("%.0f", H) +
         "\" viewBox=\"0 0 " + fmt("%.0f", W) + " " + fmt("%.0f", H) +
         "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  svg += "<text x=\"" + fmt("%.0f", left) + "\" y=\"22\" font-size=\"16\" font-weight=\"bold\">" + escape(opt.title) + "</text>\n";
  if (!opt.subtitle.empty())
    svg += "<text x=\"" + fmt("%.0f", left) + "\" y=\"40\" fill=\"#555\">" + escape(opt.subtitle) + "</text>\n";
  if (pts.empty()) return svg + "</svg>\n";

  const std::int64_t t_min = pts.front().timestamp_s, t_max = std::max(pts.back().timestamp_s, t_min + 1);
  // The y range follows the actual and forecast lines; a band that shoots beyond them (a
  // volatile hour) is clipped at the top rather than flattening everything else.
  double y_max = 0.0, band_max = 0.0;
  for (const auto& p : pts) {
    for (double v : {p.actual, p.forecast})
      if (std::isfinite(v)) y_max = std::max(y_max, v);
    if (std::isfinite(p.upper)) band_max = std::max(band_max, p.upper);
  }
  y_max = std::max(y_max, std::min(band_max, 1.25 * y_max));
  if (y_max <= 0.0) y_max = std::max(band_max, 1.0);
  // Linear axis with "nice" steps, or log1p axis with ticks at 0, 1, 10, 100, ...
  std::vector<double> ticks;
  const double unit = opt.log_unit > 0.0 && std::isfinite(opt.log_unit) ? opt.log_unit : 1.0;
  if (opt.log_scale) {
    y_max = unit * std::pow(10.0, std::ceil(std::log10(std::max(y_max / unit, 1.0))));
    ticks.push_back(0.0);
    for (double v = unit; v <= y_max * 1.0001; v *= 10.0) ticks.push_back(v);
  } else {
    const double step = nice_step(y_max, 6);
    y_max = std::ceil(y_max / step) * step;
    for (double v = 0.0; v <= y_max + step / 2; v += step) ticks.push_back(v);
  }
  auto X = [&](std::int64_t t) { return left + pw * static_cast<double>(t - t_min) / static_cast<double>(t_max - t_min); };
  auto Y = [&](double v) {
    const double c = std::clamp(v, 0.0, y_max);
    const double frac = opt.log_scale ? std::log1p(c / unit) / std::log1p(y_max / unit) : c / y_max;
    return top + ph * (1.0 - frac);
  };

  // Grid and y labels.
  for (double v : ticks) {
    const std::string y = fmt("%.1f", Y(v));
    svg += "<line x1=\"" + fmt("%.1f", left) + "\" x2=\"" + fmt("%.1f", left + pw) + "\" y1=\"" + y + "\" y2=\"" + y +
           "\" stroke=\"#e5e5e5\"/>\n<text x=\"" + fmt("%.1f", left - 6) + "\" y=\"" + y +
           "\" text-anchor=\"end\" dominant-baseline=\"middle\">" + short_number(v) + "</text>\n";
  }
  // Time ticks: whole hours or days, about eight of them.
  const std::int64_t span = t_max - t_min;
  std::int64_t tick = 3600;
  for (std::int64_t c : {600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400})
    if (span / c <= 10) {
      tick = c;
      break;
    }
  for (std::int64_t t = (t_min + tick - 1) / tick * tick; t <= t_max; t += tick) {
    const std::string x = fmt("%.1f", X(t));
    svg += "<line x1=\"" + x + "\" x2=\"" + x + "\" y1=\"" + fmt("%.1f", top) + "\" y2=\"" + fmt("%.1f", top + ph) +
           "\" stroke=\"#f0f0f0\"/>\n<text x=\"" + x + "\" y=\"" + fmt("%.1f", top + ph + 16) +
           "\" text-anchor=\"middle\">" + utc_label(t, tick < 86400) + "</text>\n";
  }
  svg += "<text x=\"" + fmt("%.1f", left + pw / 2) + "\" y=\"" + fmt("%.1f", H - 28) +
         "\" text-anchor=\"middle\" fill=\"#555\">time (UTC)</text>\n";

  // The 90% band: one polygon per run of bins that have both bounds.
  for (std::size_t i = 0; i < pts.size();) {
    if (!std::isfinite(pts[i].lower) || !std::isfinite(pts[i].upper)) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < pts.size() && std::isfinite(pts[j].lower) && std::isfinite(pts[j].upper)) ++j;
    std::string poly;
    for (std::size_t a = i; a < j; ++a) poly += fmt("%.1f,", X(pts[a].timestamp_s)) + fmt("%.1f ", Y(pts[a].upper));
    for (std::size_t a = j; a-- > i;) poly += fmt("%.1f,", X(pts[a].timestamp_s)) + fmt("%.1f ", Y(pts[a].lower));
    svg += "<polygon points=\"" + poly + "\" fill=\"#9ecae1\" fill-opacity=\"0.55\" stroke=\"none\"/>\n";
    i = j;
  }
  auto polyline = [&](auto value, const char* colour, double width) {
    std::string path;
    bool pen = false;
    for (const auto& p : pts) {
      const double v = value(p);
      if (!std::isfinite(v)) {
        pen = false;
        continue;
      }
      path += pen ? 'L' : 'M';
      path += fmt("%.1f ", X(p.timestamp_s));
      path += fmt("%.1f ", Y(v));
      pen = true;
    }
    if (!path.empty())
      svg += "<path d=\"" + path + "\" fill=\"none\" stroke=\"" + colour + "\" stroke-width=\"" + fmt("%.1f", width) +
             "\"/>\n";
  };
  polyline([](const plot_point& p) { return p.forecast; }, "#2171b5", 1.5);
  polyline([](const plot_point& p) { return p.actual; }, "#222222", 1.2);
  if (opt.marker_s > t_min && opt.marker_s <= t_max) {
    const std::string x = fmt("%.1f", X(opt.marker_s));
    svg += "<line x1=\"" + x + "\" x2=\"" + x + "\" y1=\"" + fmt("%.1f", top) + "\" y2=\"" + fmt("%.1f", top + ph) +
           "\" stroke=\"#d62728\" stroke-dasharray=\"5,4\"/>\n";
  }
  svg += "<rect x=\"" + fmt("%.1f", left) + "\" y=\"" + fmt("%.1f", top) + "\" width=\"" + fmt("%.1f", pw) +
         "\" height=\"" + fmt("%.1f", ph) + "\" fill=\"none\" stroke=\"#999\"/>\n";
  // Legend.
  const double ly = H - 10, lx = left;
  svg += "<line x1=\"" + fmt("%.0f", lx) + "\" x2=\"" + fmt("%.0f", lx + 24) + "\" y1=\"" + fmt("%.0f", ly - 4) + "\" y2=\"" +
         fmt("%.0f", ly - 4) + "\" stroke=\"#222\" stroke-width=\"1.5\"/><text x=\"" + fmt("%.0f", lx + 30) + "\" y=\"" +
         fmt("%.0f", ly) + "\">actual</text>\n";
  svg += "<line x1=\"" + fmt("%.0f", lx + 100) + "\" x2=\"" + fmt("%.0f", lx + 124) + "\" y1=\"" + fmt("%.0f", ly - 4) +
         "\" y2=\"" + fmt("%.0f", ly - 4) + "\" stroke=\"#2171b5\" stroke-width=\"1.5\"/><text x=\"" +
         fmt("%.0f", lx + 130) + "\" y=\"" + fmt("%.0f", ly) + "\">forecast</text>\n";
  svg += "<rect x=\"" + fmt("%.0f", lx + 210) + "\" y=\"" + fmt("%.0f", ly - 10) +
         "\" width=\"24\" height=\"10\" fill=\"#9ecae1\" fill-opacity=\"0.55\"/><text x=\"" + fmt("%.0f", lx + 240) +
         "\" y=\"" + fmt("%.0f", ly) + "\">90% band</text>\n";
  if (opt.marker_s > t_min && opt.marker_s <= t_max)
    svg += "<line x1=\"" + fmt("%.0f", lx + 330) + "\" x2=\"" + fmt("%.0f", lx + 354) + "\" y1=\"" + fmt("%.0f", ly - 4) +
           "\" y2=\"" + fmt("%.0f", ly - 4) + "\" stroke=\"#d62728\" stroke-dasharray=\"5,4\"/><text x=\"" +
           fmt("%.0f", lx + 360) + "\" y=\"" + fmt("%.0f", ly) + "\">forecast origin</text>\n";
  return svg + "</svg>\n";
}

}  // namespace tollgate::forecast
