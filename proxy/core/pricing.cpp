// The price table: loading config/prices.yaml and LiteLLM's JSON catalogue at start-up, model-id
// resolution (on every call) and the cost formula. Money is USD as double, per 1M tokens.
#include "core/pricing.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/config.hpp"

namespace tollgate {
namespace {

constexpr double per_million = 1e6;

char lower_ascii(char c) noexcept { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }
bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
bool is_lower_alpha(char c) noexcept { return c >= 'a' && c <= 'z'; }

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower_ascii(c);
  return out;
}

// Number of decimal digits at the end of s.
std::size_t trailing_digits(std::string_view s) noexcept {
  std::size_t n = 0;
  while (n < s.size() && is_digit(s[s.size() - 1 - n])) ++n;
  return n;
}

// The other spelling of a trailing "-<d>.<d>" / "-<d>-<d>" version ("claude-sonnet-4.5" <->
// "claude-sonnet-4-5"), or "" when the id does not end that way. Only 1-2 digit parts, so
// "gpt-4-0613" is a date, not a version.
std::string version_twin(std::string_view s) {
  const std::size_t minor = trailing_digits(s);
  if (minor == 0 || minor > 2 || minor + 3 > s.size()) return {};
  const std::size_t sep = s.size() - minor - 1;
  if (s[sep] != '.' && s[sep] != '-') return {};
  const std::size_t major = trailing_digits(s.substr(0, sep));
  if (major == 0 || major > 2 || sep < major + 1 || s[sep - major - 1] != '-') return {};
  std::string twin(s);
  twin[sep] = s[sep] == '.' ? '-' : '.';
  return twin;
}

// One provider-prefix step: everything up to the last '/' ("openrouter/openai/gpt-4.1"), else
// one leading all-letter segment and a dot (Bedrock "us.anthropic.claude-..."; model names
// never start with a letters-only part followed by '.', "gpt-4.1" has a digit before its dot).
bool strip_provider_prefix(std::string_view& s) noexcept {
  if (const auto slash = s.rfind('/'); slash != std::string_view::npos) {
    s.remove_prefix(slash + 1);
    return true;
  }
  std::size_t i = 0;
  while (i < s.size() && is_lower_alpha(s[i])) ++i;
  if (i > 0 && i < s.size() && s[i] == '.') {
    s.remove_prefix(i + 1);
    return true;
  }
  return false;
}

// One date/version-suffix step. Only suffixes that name a snapshot of the same model are
// stripped, never a word ("-mini", "-pro"), so "gpt-4.1-mini" can never become "gpt-4.1".
bool strip_version_suffix(std::string_view& s) noexcept {
  // Vertex "claude-sonnet-4-5@20250929".
  if (const auto at = s.rfind('@'); at != std::string_view::npos && at > 0) {
    s = s.substr(0, at);
    return true;
  }
  // Bedrock "...-20250929-v1:0".
  if (const auto colon = s.rfind(':'); colon != std::string_view::npos) {
    const std::size_t after = s.size() - colon - 1;
    const std::size_t ver = trailing_digits(s.substr(0, colon));
    if (after > 0 && trailing_digits(s) == after && ver > 0 && colon >= ver + 2 &&
        s[colon - ver - 1] == 'v' && s[colon - ver - 2] == '-') {
      s = s.substr(0, colon - ver - 2);
      return true;
    }
    return false;
  }
  constexpr std::string_view latest = "-latest";
  if (s.ends_with(latest)) {
    s.remove_suffix(latest.size());
    return true;
  }
  // "-2025-04-14"
  if (s.size() > 11) {
    const std::string_view d = s.substr(s.size() - 11);
    if (d[0] == '-' && d[5] == '-' && d[8] == '-' && trailing_digits(d.substr(0, 5)) == 4 &&
        trailing_digits(d.substr(0, 8)) == 2 && trailing_digits(d) == 2) {
      s.remove_suffix(11);
      return true;
    }
  }
  // "-20250929" and "-0613" (gpt-4-0613, gpt-3.5-turbo-0125).
  const std::size_t n = trailing_digits(s);
  if ((n == 8 || n == 4) && s.size() > n + 1 && s[s.size() - n - 1] == '-') {
    s.remove_suffix(n + 1);
    return true;
  }
  return false;
}

int line_of(const YAML::Mark& m) noexcept { return m.is_null() ? 0 : m.line + 1; }

[[noreturn]] void fail(const std::string& file, const YAML::Node& at, const std::string& what) {
  throw config_error(file, line_of(at.Mark()), what);
}

constexpr double max_price_per_million = 1e6;

double yaml_price(const std::string& file, const YAML::Node& n, const std::string& what) {
  double v = 0;
  if (!n.IsScalar() || !YAML::convert<double>::decode(n, v) || !std::isfinite(v))
    fail(file, n, what + " must be a number (USD per 1M tokens)");
  if (v < 0) fail(file, n, what + " must not be negative");
  // Far above any real price, and low enough that every derived price (2 x input for 1-hour
  // cache writes) and every cost stays finite: a NaN cost would never trip a budget.
  if (v > max_price_per_million) fail(file, n, what + " is above 1000000 USD per 1M tokens");
  return v;
}

// `per_image` / `per_second`: a number (any output), or a map from an output to its price, the
// output named `default`, `standard`, `hd`, `WxH` or `standard WxH` / `hd WxH`
// (`{1024x1024: 0.04, hd 1024x1024: 0.08}`). USD per image or per second of video.
std::vector<unit_price> parse_unit_prices(const std::string& file, const std::string& model, const std::string& key,
                                          const YAML::Node& node) {
  const std::string what = "'" + model + "': " + key;
  const auto price = [&](const YAML::Node& n, const std::string& w) {
    double v = 0;
    if (!n.IsScalar() || !YAML::convert<double>::decode(n, v) || !std::isfinite(v))
      fail(file, n, w + " must be a number (USD per " + (key == "per_image" ? "image)" : "second of video)"));
    if (v < 0) fail(file, n, w + " must not be negative");
    if (v > max_price_per_million) fail(file, n, w + " is above 1000000 USD");
    return v;
  };
  std::vector<unit_price> out;
  if (node.IsScalar()) {
    out.push_back({0, 0, -1, price(node, what)});
    return out;
  }
  if (!node.IsMap() || node.size() == 0)
    fail(file, node, what + " must be a price or a map of prices by output ({1024x1024: 0.04, hd 1024x1024: 0.08})");
  for (const auto& kv : node) {
    const auto name = kv.first.as<std::string>();
    unit_price u;
    std::string_view rest = name;
    if (rest.starts_with("hd") || rest.starts_with("standard")) {
      u.hd = rest.starts_with("hd") ? 1 : 0;
      rest.remove_prefix(u.hd ? 2 : 8);
      if (!rest.empty() && rest.front() != ' ') rest = "?";  // "hdx", "standards"
      while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    }
    if (rest == "default" && u.hd < 0) {
      rest = {};
    } else if (!rest.empty()) {
      const auto size = parse_pixel_size(rest);
      if (!size)
        fail(file, kv.first, what + ": '" + name +
                                 "' is not an output (expected default, standard, hd, WIDTHxHEIGHT, standard WIDTHxHEIGHT "
                                 "or hd WIDTHxHEIGHT)");
      u.w = size->first, u.h = size->second;
    }
    u.usd = price(kv.second, what + "." + name);
    for (const auto& o : out)
      if (o.w == u.w && o.h == u.h && o.hd == u.hd) fail(file, kv.first, what + ": '" + name + "' is priced twice");
    out.push_back(u);
  }
  return out;
}

// The `long_context:` block of one entry. YAML maps are walked as `for (const auto& kv : node)`:
// yaml-cpp's `it->second` is a member of a temporary and dangles in a nested range-for.
void parse_long_context(const std::string& file, const std::string& model, const YAML::Node& node,
                        model_price& p) {
  if (!node.IsMap()) fail(file, node, "'" + model + "': long_context must be a map");
  bool has_input = false, has_output = false, has_threshold = false;
  std::optional<double> cached;
  for (const auto& kv : node) {
    const auto key = kv.first.as<std::string>();
    const auto what = "'" + model + "': long_context." + key;
    if (key == "threshold") {
      std::int64_t t = 0;
      if (!kv.second.IsScalar() || !YAML::convert<std::int64_t>::decode(kv.second, t) || t <= 0)
        fail(file, kv.second, what + " must be a positive whole number of prompt tokens");
      p.long_context_threshold = t;
      has_threshold = true;
    } else if (key == "input") {
      p.long_input = yaml_price(file, kv.second, what);
      has_input = true;
    } else if (key == "cached_input") {
      cached = yaml_price(file, kv.second, what);
    } else if (key == "output") {
      p.long_output = yaml_price(file, kv.second, what);
      has_output = true;
    } else if (key == "cache_write_5m") {
      p.long_cache_write_5m = yaml_price(file, kv.second, what);
    } else if (key == "cache_write_1h") {
      p.long_cache_write_1h = yaml_price(file, kv.second, what);
    } else {
      fail(file, kv.first, "'" + model + "': unknown key 'long_context." + key +
                                "' (expected threshold, input, cached_input, output, cache_write_5m, cache_write_1h)");
    }
  }
  if (!has_threshold || !has_input || !has_output)
    fail(file, node, "'" + model + "': long_context needs threshold, input and output");
  p.long_cached_input = cached.value_or(p.long_input);
}

// A service tier: either a number (a factor on every token price of the entry: `flex: 0.5`) or a
// map of its own prices (input and output required; cached_input defaults to the tier's input
// times the entry's cached/input ratio, cache writes as the entry's on the tier's input). Called
// once the entry's own prices are read.
tier_price parse_tier(const std::string& file, const std::string& model, const std::string& key,
                      const YAML::Node& node, const model_price& base) {
  const std::string what = "'" + model + "': " + key;
  tier_price t;
  if (node.IsScalar()) {
    const double f = yaml_price(file, node, what);
    if (f > 100) fail(file, node, what + " as a number is a factor on the entry's prices (0.5 = half), got a value above 100");
    return scaled_tier(base, f);
  }
  if (!node.IsMap()) fail(file, node, what + " must be a factor (0.5) or a map of prices {input, cached_input, output}");
  bool has_input = false, has_output = false;
  std::optional<double> tier_cached;
  for (const auto& kv : node) {
    const auto k = kv.first.as<std::string>();
    const auto w = what + "." + k;
    if (k == "input") t.input = yaml_price(file, kv.second, w), has_input = true;
    else if (k == "cached_input") tier_cached = yaml_price(file, kv.second, w);
    else if (k == "output") t.output = yaml_price(file, kv.second, w), has_output = true;
    else if (k == "cache_write_5m") t.cache_write_5m = yaml_price(file, kv.second, w);
    else if (k == "cache_write_1h") t.cache_write_1h = yaml_price(file, kv.second, w);
    else
      fail(file, kv.first, "'" + model + "': unknown key '" + key + "." + k +
                               "' (expected input, cached_input, output, cache_write_5m, cache_write_1h)");
  }
  if (!has_input || !has_output) fail(file, node, what + " needs input and output prices");
  t.cached_input = tier_cached.value_or(base.input > 0 ? t.input * (base.cached_input / base.input) : t.input);
  return t;
}

// Entry keys whose price has a default derived from others (see prices.yaml).
std::optional<double> model_price::*optional_price(std::string_view key) noexcept {
  static constexpr std::pair<std::string_view, std::optional<double> model_price::*> keys[] = {
      {"cache_write_5m", &model_price::cache_write_5m}, {"cache_write_1h", &model_price::cache_write_1h},
      {"image_input", &model_price::image_input},       {"audio_input", &model_price::audio_input},
      {"audio_output", &model_price::audio_output},     {"text_output", &model_price::text_output},
      {"cached_image_input", &model_price::cached_image_input},
      {"cached_audio_input", &model_price::cached_audio_input}};
  for (const auto& [name, slot] : keys)
    if (name == key) return slot;
  return nullptr;
}

struct yaml_entry {
  model_price price;
  std::vector<std::string> aliases;
};

// `peak_hours_utc`: a list of "HH:MM-HH:MM" ranges of the UTC day ("01:00-04:00"; "24:00" ends
// the day), each [from, to) with from < to, as minutes.
std::vector<std::pair<std::uint16_t, std::uint16_t>> parse_peak_hours(const std::string& file, const std::string& model,
                                                                      const YAML::Node& node) {
  const std::string what = "'" + model + "': peak_hours_utc";
  if (!node.IsSequence() || node.size() == 0)
    fail(file, node, what + " must be a list of UTC time ranges such as [\"01:00-04:00\", \"06:00-10:00\"]");
  std::vector<std::pair<std::uint16_t, std::uint16_t>> out;
  for (const auto& r : node) {
    const std::string s = r.IsScalar() ? r.Scalar() : std::string();
    const auto minute = [&](std::size_t at) -> int {
      const auto d = [&](std::size_t i) { return s[at + i] >= '0' && s[at + i] <= '9' ? s[at + i] - '0' : -100; };
      if (s[at + 2] != ':') return -1;
      const int h = d(0) * 10 + d(1), m = d(3) * 10 + d(4);
      if (h < 0 || m < 0 || m > 59 || h > 24 || (h == 24 && m != 0)) return -1;
      return h * 60 + m;
    };
    const int from = s.size() == 11 && s[5] == '-' ? minute(0) : -1;
    const int to = from >= 0 ? minute(6) : -1;
    if (from < 0 || to < 0 || from >= to)
      fail(file, r, what + ": '" + s + "' is not a range HH:MM-HH:MM of the UTC day with its start before its end");
    out.emplace_back(static_cast<std::uint16_t>(from), static_cast<std::uint16_t>(to));
  }
  return out;
}

// `peak_days_utc`: a list of UTC weekdays ("mon" .. "sun" or the full names, any case), as a
// bit set (bit 0 Sunday). Each day once.
std::uint8_t parse_peak_days(const std::string& file, const std::string& model, const YAML::Node& node) {
  const std::string what = "'" + model + "': peak_days_utc";
  if (!node.IsSequence() || node.size() == 0)
    fail(file, node, what + " must be a list of UTC weekdays such as [mon, tue, wed, thu, fri]");
  static constexpr std::array<std::string_view, 7> names = {"sunday", "monday", "tuesday", "wednesday",
                                                            "thursday", "friday", "saturday"};
  std::uint8_t days = 0;
  for (const auto& d : node) {
    const std::string s = lower(d.IsScalar() ? d.Scalar() : std::string());
    int day = -1;
    for (std::size_t i = 0; i < names.size(); ++i)
      if (s == names[i] || s == names[i].substr(0, 3)) day = static_cast<int>(i);
    if (day < 0) fail(file, d, what + ": '" + s + "' is not a weekday (mon, tue, wed, thu, fri, sat, sun)");
    if (days & (1u << day)) fail(file, d, what + ": '" + s + "' is listed twice");
    days = static_cast<std::uint8_t>(days | (1u << day));
  }
  return days;
}

// A change's `from`: "YYYY-MM-DD" (00:00 UTC) or "YYYY-MM-DDTHH:MM[:SS]Z", as unix ms; nullopt
// when it is neither or names no real day or time.
std::optional<std::int64_t> parse_utc_instant(std::string_view s) {
  const auto num = [&](std::size_t at, std::size_t n) -> int {
    if (at + n > s.size()) return -1;
    int v = 0;
    for (std::size_t i = at; i < at + n; ++i) {
      if (s[i] < '0' || s[i] > '9') return -1;
      v = v * 10 + (s[i] - '0');
    }
    return v;
  };
  if (s.size() < 10 || s[4] != '-' || s[7] != '-') return std::nullopt;
  const int y = num(0, 4), mo = num(5, 2), d = num(8, 2);
  if (y < 1970 || mo < 1 || d < 1) return std::nullopt;
  const std::chrono::year_month_day ymd{std::chrono::year{y}, std::chrono::month{static_cast<unsigned>(mo)},
                                        std::chrono::day{static_cast<unsigned>(d)}};
  if (!ymd.ok()) return std::nullopt;
  int hh = 0, mm = 0, ss = 0;
  if (s.size() > 10) {
    const bool with_seconds = s.size() == 20 && s[16] == ':';
    if (!(s.size() == 17 || with_seconds) || s[10] != 'T' || s[13] != ':' || s.back() != 'Z') return std::nullopt;
    hh = num(11, 2), mm = num(14, 2), ss = with_seconds ? num(17, 2) : 0;
    if (hh < 0 || hh > 23 || mm < 0 || mm > 59 || ss < 0 || ss > 59) return std::nullopt;
  }
  const auto days = std::chrono::sys_days{ymd}.time_since_epoch().count();
  return ((static_cast<std::int64_t>(days) * 24 + hh) * 60 + mm) * 60'000 + static_cast<std::int64_t>(ss) * 1000;
}

yaml_entry parse_entry(const std::string& file, const std::string& model, const YAML::Node& node);

// Every key of a prices.yaml entry (parse_entry() reads them).
constexpr std::string_view entry_keys =
    "input, cached_input, output, cache_write_5m, cache_write_1h, web_search, file_search, us_inference, "
    "image_input, audio_input, audio_output, text_output, cached_image_input, cached_audio_input, per_minute, "
    "per_million_characters, per_image, per_second, long_context, flex, priority, scale, batch, fast, off_peak, "
    "peak_hours_utc, peak_days_utc, changes, aliases";
bool known_entry_key(std::string_view key) {
  for (std::string_view rest = entry_keys; !rest.empty();) {
    const auto comma = rest.find(", ");
    if (rest.substr(0, comma) == key) return true;
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 2);
  }
  return false;
}

// `changes`: a list of maps, each a `from` instant and the entry keys that change then; each
// becomes a whole version of the entry (its other keys as the entry's), parsed and checked as
// an entry is. Instants must ascend.
void parse_changes(const std::string& file, const std::string& model, const YAML::Node& entry,
                   const YAML::Node& list, model_price& price) {
  const std::string what = "'" + model + "': changes";
  if (!list.IsSequence() || list.size() == 0)
    fail(file, list, what + " must be a list of {from: YYYY-MM-DD, <the prices that change>}");
  // Each version is the one before with the change's keys replaced: a new map whose values are
  // the document's own nodes, so an error in one still names its line.
  YAML::Node before(YAML::NodeType::Map);
  for (const auto& kv : entry) {
    const auto key = kv.first.as<std::string>();
    if (key != "changes" && key != "aliases") before[key] = kv.second;
  }
  for (const auto& change : list) {
    if (!change.IsMap()) fail(file, change, what + ": each change is a map {from: YYYY-MM-DD, <prices>}");
    std::optional<std::int64_t> from;
    YAML::Node version(YAML::NodeType::Map);
    for (const auto& kv : change) {
      const auto key = kv.first.as<std::string>();
      if (key == "from") {
        from = kv.second.IsScalar() ? parse_utc_instant(kv.second.Scalar()) : std::nullopt;
        if (!from)
          fail(file, kv.second, what + ".from must be a UTC date YYYY-MM-DD or time YYYY-MM-DDTHH:MMZ (as 2027-01-01)");
      } else if (key == "changes" || key == "aliases") {
        fail(file, kv.first, what + ": '" + key + "' belongs to the entry, not to one of its changes");
      } else if (!known_entry_key(key)) {
        fail(file, kv.first, "'" + model + "': unknown key '" + key + "' in a change (expected " +
                                 std::string(entry_keys) + ")");
      } else {
        version[key] = kv.second;
      }
    }
    if (!from) fail(file, change, what + ": each change needs 'from' (the UTC date its prices start)");
    if (!price.changes.empty() && *from <= price.changes.back().first)
      fail(file, change, what + ": changes must be listed in time order, each 'from' after the one before");
    if (version.size() == 0) fail(file, change, what + ": a change needs at least one price that changes");
    // A tier given as a factor (flex: 0.5) then scales the new prices, as it scales any.
    for (const auto& kv : before) {
      const auto key = kv.first.as<std::string>();
      if (!std::as_const(version)[key]) version[key] = kv.second;
    }
    price.changes.emplace_back(*from, std::make_shared<const model_price>(parse_entry(file, model, version).price));
    before = version;
  }
}

yaml_entry parse_entry(const std::string& file, const std::string& model, const YAML::Node& node) {
  if (!node.IsMap()) fail(file, node, "'" + model + "' must be a map of prices");
  yaml_entry e;
  e.price.name = model;
  bool has_input = false, has_output = false;
  std::optional<double> cached;
  std::vector<std::pair<std::string, YAML::Node>> tiers;
  std::optional<YAML::Node> changes;  // (a default YAML::Node counts as defined)
  for (const auto& kv : node) {
    const auto key = kv.first.as<std::string>();
    const auto what = "'" + model + "': " + key;
    if (key == "input") {
      e.price.input = yaml_price(file, kv.second, what);
      has_input = true;
    } else if (key == "cached_input") {
      cached = yaml_price(file, kv.second, what);
    } else if (key == "output") {
      e.price.output = yaml_price(file, kv.second, what);
      has_output = true;
    } else if (const auto slot = optional_price(key)) {
      e.price.*slot = yaml_price(file, kv.second, what);
    } else if (key == "web_search") {
      e.price.web_search = yaml_price(file, kv.second, what);
    } else if (key == "us_inference") {
      e.price.us_inference = yaml_price(file, kv.second, what);
      if (e.price.us_inference < 1 || e.price.us_inference > 10)
        fail(file, kv.second, what + " is a factor on the token prices (1.1 = 10 % more), between 1 and 10");
    } else if (key == "file_search") {
      e.price.file_search = yaml_price(file, kv.second, what);
    } else if (key == "per_minute") {
      e.price.per_minute = yaml_price(file, kv.second, what);
    } else if (key == "per_million_characters") {
      e.price.per_million_characters = yaml_price(file, kv.second, what);
    } else if (key == "per_image") {
      e.price.per_image = parse_unit_prices(file, model, key, kv.second);
    } else if (key == "per_second") {
      e.price.per_second = parse_unit_prices(file, model, key, kv.second);
    } else if (key == "long_context") {
      parse_long_context(file, model, kv.second, e.price);
    } else if (key == "flex" || key == "priority" || key == "scale" || key == "batch" || key == "fast" ||
               key == "off_peak") {
      tiers.emplace_back(key, kv.second);  // read once the entry's own prices are known
    } else if (key == "peak_hours_utc") {
      e.price.peak_utc = parse_peak_hours(file, model, kv.second);
    } else if (key == "peak_days_utc") {
      e.price.peak_days = parse_peak_days(file, model, kv.second);
    } else if (key == "changes") {
      changes = kv.second;
    } else if (key == "aliases") {
      if (!kv.second.IsSequence()) fail(file, kv.second, what + " must be a list of model ids");
      for (const auto& a : kv.second) {
        if (!a.IsScalar() || a.Scalar().empty()) fail(file, a, what + " must be a list of model ids");
        e.aliases.push_back(a.Scalar());
      }
    } else {
      fail(file, kv.first, "'" + model + "': unknown key '" + key + "' (expected " + std::string(entry_keys) + ")");
    }
  }
  // A model billed per minute, character, image or second of video only (whisper-1, tts-1,
  // dall-e-3, sora-2) needs no token prices.
  const bool per_unit = e.price.per_minute > 0 || e.price.per_million_characters > 0 || !e.price.per_image.empty() ||
                        !e.price.per_second.empty();
  if ((!has_input || !has_output) && !per_unit)
    fail(file, node, "'" + model +
                         "' needs both input and output prices (or per_minute / per_million_characters / per_image / "
                         "per_second)");
  e.price.cached_input = cached.value_or(e.price.input);
  for (const auto& [key, n] : tiers) e.price.tier_slot(parse_service_tier(key)) = parse_tier(file, model, key, n, e.price);
  // An off-peak tier and its schedule come together: one without the other prices nothing.
  if (e.price.tier(service_tier::off_peak) && e.price.peak_utc.empty())
    fail(file, node, "'" + model + "': off_peak needs peak_hours_utc (the UTC hours billed at the entry's prices)");
  if (!e.price.tier(service_tier::off_peak) && !e.price.peak_utc.empty())
    fail(file, node, "'" + model + "': peak_hours_utc needs an off_peak tier (a factor such as 0.5, or prices)");
  if (const auto days = node["peak_days_utc"]; days && e.price.peak_utc.empty())
    fail(file, days, "'" + model + "': peak_days_utc needs peak_hours_utc (the hours that are peak on those days)");
  apply_default_tiers(e.price);
  if (changes) parse_changes(file, model, node, *changes, e.price);
  return e;
}

// LiteLLM numbers are USD per token. Rounded to 1e-9 USD per 1M so 2e-6/token is exactly 2.0.
std::optional<double> litellm_cost(const nlohmann::json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end() || !it->is_number()) return std::nullopt;
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < 0 || v * per_million > max_price_per_million) return std::nullopt;
  return std::round(v * per_million * 1e9) / 1e9;
}

// The lowest N of a LiteLLM entry's `input_cost_per_token_above_<N>k_tokens` with a usable
// price, in tokens (0: none). Keys with a further suffix (`..._tokens_priority`) are other tiers.
std::int64_t litellm_long_band(const nlohmann::json& spec) {
  static constexpr std::string_view head = "input_cost_per_token_above_", tail = "k_tokens";
  std::int64_t best = 0;
  for (const auto& [key, value] : spec.items()) {
    const std::string_view k = key;
    if (k.size() <= head.size() + tail.size() || !k.starts_with(head) || !k.ends_with(tail)) continue;
    const auto digits = k.substr(head.size(), k.size() - head.size() - tail.size());
    std::int64_t n = 0;
    if (digits.size() > 6 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    for (char c : digits) n = n * 10 + (c - '0');
    if (n == 0 || !litellm_cost(spec, key.c_str())) continue;
    if (best == 0 || n * 1000 < best) best = n * 1000;
  }
  return best;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw config_error(path, 0, std::string("cannot read price file: ") + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

void price_table::load_yaml_file(const std::string& path) { load_yaml_string(read_file(path), path); }

void price_table::load_yaml_string(std::string_view text, const std::string& name) {
  std::vector<yaml_entry> parsed;
  try {
    const YAML::Node root = YAML::Load(std::string(text));
    if (!root.IsMap()) fail(name, root, "expected a map with a 'models' key");
    YAML::Node models;
    bool found = false;
    for (const auto& kv : root) {
      const auto key = kv.first.as<std::string>();
      if (key != "models") fail(name, kv.first, "unknown top-level key '" + key + "' (expected 'models')");
      models = kv.second;
      found = true;
    }
    if (!found) fail(name, root, "missing 'models'");
    if (!models.IsMap()) fail(name, models, "'models' must be a map of model name -> prices");

    // Spellings already taken by YAML entries of earlier loads, and those of this file (-> line).
    std::map<std::string, int, std::less<>> taken;
    for (const auto& [n, p] : entries_)
      if (!from_litellm_.contains(n)) taken.emplace(lower(n), 0);
    for (const auto& [a, n] : aliases_) taken.emplace(a, 0);
    auto claim = [&](const std::string& id, const YAML::Node& at) {
      const auto [it, fresh] = taken.emplace(lower(id), line_of(at.Mark()));
      if (!fresh)
        fail(name, at, "duplicate model name or alias '" + id + "'" +
                           (it->second > 0 ? " (first at line " + std::to_string(it->second) + ")"
                                           : std::string(" (already defined)")));
    };
    for (const auto& kv : models) {
      if (!kv.first.IsScalar() || kv.first.Scalar().empty()) fail(name, kv.first, "model name must be a string");
      const auto model = kv.first.Scalar();
      claim(model, kv.first);
      parsed.push_back(parse_entry(name, model, kv.second));
      const auto& aliases = kv.second["aliases"];
      for (std::size_t i = 0; i < parsed.back().aliases.size(); ++i) claim(parsed.back().aliases[i], aliases[i]);
    }
  } catch (const YAML::Exception& e) {
    throw config_error(name, line_of(e.mark), e.msg);
  }

  // YAML wins: a LiteLLM entry spelled like a new name or alias goes.
  std::set<std::string, std::less<>> spellings;
  for (const auto& e : parsed) {
    spellings.insert(lower(e.price.name));
    for (const auto& a : e.aliases) spellings.insert(lower(a));
  }
  for (auto it = from_litellm_.begin(); it != from_litellm_.end();) {
    if (spellings.contains(lower(*it))) {
      entries_.erase(*it);
      it = from_litellm_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& e : parsed) {
    for (const auto& a : e.aliases) aliases_[lower(a)] = e.price.name;
    auto key = e.price.name;
    entries_.insert_or_assign(std::move(key), std::move(e.price));
  }
  rebuild_index_();
}

void price_table::load_litellm_file(const std::string& path) { load_litellm_string(read_file(path), path); }

void price_table::load_configured(const config& cfg) {
  if (!cfg.prices_file.empty()) load_yaml_file(cfg.prices_file);
  if (!cfg.litellm_prices_file.empty()) load_litellm_file(cfg.litellm_prices_file);
}

void price_table::load_litellm_string(std::string_view text, const std::string& name) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    const auto upto = std::min<std::size_t>(e.byte > 0 ? e.byte - 1 : 0, text.size());
    const int line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + upto, '\n'));
    throw config_error(name, line, "not a valid LiteLLM price catalogue (JSON syntax error)");
  } catch (const nlohmann::json::exception& e) {  // e.g. a number beyond double (1e400)
    throw config_error(name, 0, std::string("not a valid LiteLLM price catalogue: ") + e.what());
  }
  if (!doc.is_object()) throw config_error(name, 0, "a LiteLLM price catalogue must be a JSON object");

  // A YAML entry (or an earlier LiteLLM one) answering to the same spelling wins; so does a YAML
  // entry for the id without its provider ("openrouter/openai/gpt-4.1" -> gpt-4.1).
  auto yaml_owns = [&](std::string_view spelling) {
    const auto it = index_.find(spelling);
    return it != index_.end() && !from_litellm_.contains(it->second->name);
  };
  std::set<std::string, std::less<>> added;
  for (const auto& [model, spec] : doc.items()) {
    if (model == "sample_spec" || model.empty() || !spec.is_object()) continue;
    auto input = litellm_cost(spec, "input_cost_per_token");
    auto output = litellm_cost(spec, "output_cost_per_token");
    // Audio billed per second of input (whisper-1) or speech per input character (tts-1), USD
    // per unit in the catalogue; litellm_cost's figures are per 1M units.
    const auto per_second = litellm_cost(spec, "input_cost_per_second");
    const auto per_character = litellm_cost(spec, "input_cost_per_character");
    // Images and videos billed per image or per second of video, at any size (USD per unit).
    const auto per_image = litellm_cost(spec, "output_cost_per_image");
    const auto per_video_second = litellm_cost(spec, "output_cost_per_video_per_second");
    if ((!input || !output) && (per_second || per_character || per_image || per_video_second)) input = output = 0.0;
    if (!input || !output) continue;  // per-pixel or per-request pricing: not ours to meter
    const auto key = lower(model);
    if (index_.contains(key) || added.contains(key)) continue;
    if (const auto slash = key.rfind('/'); slash != std::string::npos && yaml_owns(std::string_view(key).substr(slash + 1)))
      continue;

    model_price p;
    p.name = model;
    p.input = *input;
    p.output = *output;
    p.cached_input = litellm_cost(spec, "cache_read_input_token_cost").value_or(p.input);
    p.per_minute = per_second.value_or(0) * 60 / per_million;
    p.per_million_characters = per_character.value_or(0);
    if (per_image) p.per_image = {{0, 0, -1, *per_image / per_million}};
    if (per_video_second) p.per_second = {{0, 0, -1, *per_video_second / per_million}};
    p.cache_write_5m = litellm_cost(spec, "cache_creation_input_token_cost");
    p.cache_write_1h = litellm_cost(spec, "cache_creation_input_token_cost_above_1hr");
    // Media tokens (audio and realtime models, image models), per token like the text prices.
    p.image_input = litellm_cost(spec, "input_cost_per_image_token");
    p.cached_image_input = litellm_cost(spec, "cache_read_input_image_token_cost");
    p.audio_input = litellm_cost(spec, "input_cost_per_audio_token");
    p.cached_audio_input = litellm_cost(spec, "cache_read_input_audio_token_cost");
    p.audio_output = litellm_cost(spec, "output_cost_per_audio_token");
    // The long tier: `..._above_200k_tokens` (Claude Sonnet 4 / 4.5, Gemini 2.5 Pro),
    // `..._above_272k_tokens` (gpt-5.4 and later); an entry with several bands keeps its lowest
    // (one long tier per entry: a floor above the next band).
    if (const auto band = litellm_long_band(spec); band > 0) {
      const auto suffix = "_above_" + std::to_string(band / 1000) + "k_tokens";
      // (`entry`, not the structured binding: clang before 16 cannot capture one in a lambda)
      const auto cost = [&suffix, &entry = spec](const char* key) { return litellm_cost(entry, (key + suffix).c_str()); };
      p.long_context_threshold = band;
      p.long_input = *cost("input_cost_per_token");
      p.long_output = cost("output_cost_per_token").value_or(p.output);
      p.long_cached_input = cost("cache_read_input_token_cost").value_or(p.long_input);
      p.long_cache_write_5m = cost("cache_creation_input_token_cost");
    }
    // Service tiers: input_cost_per_token_flex, output_cost_per_token_priority, ...
    for (const auto& [suffix, tier] : {std::pair{"_flex", service_tier::flex}, std::pair{"_priority", service_tier::priority},
                                       std::pair{"_batches", service_tier::batch}}) {
      const auto in = litellm_cost(spec, ("input_cost_per_token" + std::string(suffix)).c_str());
      const auto out = litellm_cost(spec, ("output_cost_per_token" + std::string(suffix)).c_str());
      if (!in || !out) continue;
      tier_price t;
      t.input = *in, t.output = *out;
      t.cached_input = litellm_cost(spec, ("cache_read_input_token_cost" + std::string(suffix)).c_str()).value_or(*in);
      p.tier_slot(tier) = t;
    }
    apply_default_tiers(p);
    added.insert(key);
    from_litellm_.insert(model);
    entries_.insert_or_assign(model, std::move(p));
  }
  rebuild_index_();
}

void price_table::rebuild_index_() {
  priciest_tokens_ = {0, 0};
  for (const auto& [n, p] : entries_) {
    priciest_tokens_.first = std::max({priciest_tokens_.first, p.input, p.long_input});
    priciest_tokens_.second = std::max({priciest_tokens_.second, p.output, p.long_output});
  }
  index_.clear();
  std::vector<std::pair<std::string, const model_price*>> primary;  // in precedence order
  for (const auto& [n, p] : entries_)
    if (!from_litellm_.contains(n)) primary.emplace_back(lower(n), &p);
  for (const auto& [a, n] : aliases_)
    if (const auto it = entries_.find(n); it != entries_.end()) primary.emplace_back(a, &it->second);
  for (const auto& n : from_litellm_)
    if (const auto it = entries_.find(n); it != entries_.end()) primary.emplace_back(lower(n), &it->second);

  // Real spellings first, so a derived spelling never shadows one.
  for (const auto& [k, p] : primary) index_.emplace(k, p);
  for (const auto& [k, p] : primary)
    if (auto twin = version_twin(k); !twin.empty()) index_.emplace(std::move(twin), p);
  for (const auto& n : from_litellm_) {
    const auto key = lower(n);
    const auto slash = key.rfind('/');
    if (slash == std::string::npos) continue;
    const model_price* p = &entries_.find(n)->second;
    const auto bare = key.substr(slash + 1);
    index_.emplace(bare, p);
    if (auto twin = version_twin(bare); !twin.empty()) index_.emplace(std::move(twin), p);
  }
}

const model_price& price_at(const model_price& p, std::int64_t unix_ms) noexcept {
  for (auto it = p.changes.rbegin(); it != p.changes.rend(); ++it)
    if (it->first <= unix_ms) return *it->second;
  return p;
}

namespace {
std::int64_t wall_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

const model_price* price_table::resolve(std::string_view model) const {
  const model_price* p = find_entry_(model);
  // Most entries have no scheduled change: no clock read for them.
  return p == nullptr || p->changes.empty() ? p : &price_at(*p, wall_ms());
}

const model_price* price_table::resolve_at(std::string_view model, std::int64_t unix_ms) const {
  const model_price* p = find_entry_(model);
  return p == nullptr ? p : &price_at(*p, unix_ms);
}

const model_price* price_table::find_entry_(std::string_view model) const {
  if (const auto it = entries_.find(model); it != entries_.end()) return &it->second;
  if (model.empty()) return nullptr;
  // Lower-cased copy: on the stack for any realistic id.
  char small[192];
  std::string big;
  char* buf = small;
  if (model.size() > sizeof small) {
    big.resize(model.size());
    buf = big.data();
  }
  std::transform(model.begin(), model.end(), buf, lower_ascii);
  std::string_view id(buf, model.size());
  // Every step shortens `id`, so this ends.
  for (;;) {
    if (const auto it = index_.find(id); it != index_.end()) return it->second;
    if (!strip_provider_prefix(id) && !strip_version_suffix(id)) return nullptr;
  }
}

std::vector<std::string> price_table::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [n, p] : entries_) out.push_back(n);
  return out;
}

std::pair<const model_price*, unit_price> price_table::priciest_per_second() const {
  std::pair<const model_price*, unit_price> best{nullptr, {}};
  for (const auto& [n, p] : entries_)
    for (const unit_price& u : p.per_second)
      if (best.first == nullptr || u.usd > best.second.usd) best = {&p, u};
  return best;
}

tier_price scaled_tier(const model_price& base, double factor) {
  tier_price t;
  t.input = base.input * factor;
  t.cached_input = base.cached_input * factor;
  t.output = base.output * factor;
  if (base.cache_write_5m) t.cache_write_5m = *base.cache_write_5m * factor;
  if (base.cache_write_1h) t.cache_write_1h = *base.cache_write_1h * factor;
  t.factor = factor;
  return t;
}

// OpenAI, Anthropic and Google all sell their batch APIs at half the standard prices.
void apply_default_tiers(model_price& p) {
  if (auto& batch = p.tier_slot(service_tier::batch); !batch) batch = scaled_tier(p, 0.5);
  std::string lower = p.name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  p.write_surcharge = lower.find("claude") != std::string::npos;
}

billed_prices billed_prices_of(const model_price& p, service_tier t, bool long_context) noexcept {
  // Unpriced writes: Anthropic's 5-minute writes cost 1.25x and 1-hour writes 2x the (tier's)
  // input price; other vendors' writes cost their input price (model_price::write_surcharge).
  const double w5 = p.write_surcharge ? 1.25 : 1.0, w1 = p.write_surcharge ? 2.0 : 1.0;
  // OpenAI's Priority (Fast mode) excludes long context: a long call is billed at the standard
  // long prices whatever tier its reply names (a priority map or factor does not apply to it).
  const tier_price* tier = long_context && t == service_tier::priority ? nullptr : p.tier(t);
  // A tier with its own prices (a map) replaces the long tier; a factor tier (flex: 0.5, batch)
  // scales whichever of the entry's tiers the prompt falls in.
  if (tier != nullptr && !(long_context && tier->factor > 0))
    return {tier->input, tier->cached_input, tier->cache_write_5m.value_or(w5 * tier->input),
            tier->cache_write_1h.value_or(w1 * tier->input), tier->output};
  const double k = tier != nullptr ? tier->factor : 1.0;
  const double in = long_context ? p.long_input : p.input;
  return {k * in, k * (long_context ? p.long_cached_input : p.cached_input),
          k * (long_context ? p.long_cache_write_5m : p.cache_write_5m).value_or(w5 * in),
          k * (long_context ? p.long_cache_write_1h : p.cache_write_1h).value_or(w1 * in),
          k * (long_context ? p.long_output : p.output)};
}

bool off_peak_at(const model_price& p, std::int64_t unix_ms) noexcept {
  if (p.peak_utc.empty() || unix_ms <= 0 || !p.tier(service_tier::off_peak)) return false;
  const auto minute = static_cast<std::uint16_t>((unix_ms / 60'000) % 1440);
  const auto weekday = static_cast<unsigned>((unix_ms / 86'400'000 + 4) % 7);  // 1970-01-01 was a Thursday
  if ((p.peak_days & (1u << weekday)) == 0) return true;
  for (const auto& [from, to] : p.peak_utc)
    if (minute >= from && minute < to) return false;
  return true;
}

std::optional<std::pair<std::uint16_t, std::uint16_t>> parse_pixel_size(std::string_view s) noexcept {
  const auto x = s.find('x');
  if (x == std::string_view::npos) return std::nullopt;
  const auto number = [](std::string_view d) -> std::optional<std::uint16_t> {
    unsigned v = 0;
    if (d.empty() || d.size() > 5) return std::nullopt;
    for (char c : d) {
      if (c < '0' || c > '9') return std::nullopt;
      v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v == 0 || v > 65535) return std::nullopt;
    return static_cast<std::uint16_t>(v);
  };
  const auto w = number(s.substr(0, x)), h = number(s.substr(x + 1));
  if (!w || !h) return std::nullopt;
  return std::pair{*w, *h};
}

std::optional<double> unit_price_of(const std::vector<unit_price>& prices, std::uint16_t w, std::uint16_t h,
                                    bool hd) noexcept {
  const std::int8_t q = hd ? 1 : 0;
  const bool sized = w != 0 && h != 0;
  // Most specific first: size and quality, size, quality, anything.
  for (int pass = 0; pass < 4; ++pass)
    for (const auto& u : prices) {
      const bool any_size = u.w == 0 && u.h == 0;
      const bool size_ok = pass < 2 ? sized && u.w == w && u.h == h : any_size;
      const bool quality_ok = pass % 2 == 0 ? u.hd == q : u.hd < 0;
      if (size_ok && quality_ok) return u.usd;
    }
  return std::nullopt;
}

double reserve_cost(const model_price& price, const token_usage& worst, std::uint8_t cache_writes, double multiplier) {
  const double plain = compute_cost(price, worst, multiplier).usd;
  if (price.write_surcharge && cache_writes == 0) return plain;
  token_usage written = worst;
  written.cached = 0;
  written.cache_write = std::max<std::int64_t>(worst.prompt, 0);
  written.cache_write_1h = cache_writes >= 2 ? written.cache_write : 0;
  return std::max(plain, compute_cost(price, written, multiplier).usd);
}

cost_result compute_cost(const model_price& price, const token_usage& usage, double multiplier) {
  const auto clamp0 = [](std::int64_t v) { return static_cast<double>(std::max<std::int64_t>(v, 0)); };
  // Images and seconds of video at the price of their output; an output the entry has no price
  // for leaves the call unpriced (counted as such), never at $0.
  double per_unit = 0;
  if (usage.images > 0) {
    const auto each = unit_price_of(price.per_image, usage.media_w, usage.media_h, usage.media_hd);
    if (!each) return {};
    per_unit += clamp0(usage.images) * *each;
  }
  if (usage.video_seconds > 0) {
    const auto each = unit_price_of(price.per_second, usage.media_w, usage.media_h, usage.media_hd);
    if (!each) return {};
    per_unit += clamp0(usage.video_seconds) * *each;
  }
  const double cached = clamp0(usage.cached);
  const double write = clamp0(usage.cache_write);
  const double write_1h = std::min(clamp0(usage.cache_write_1h), write);
  const double write_5m = write - write_1h;
  // Counters that disagree (cached + writes > prompt) bill no uncached input rather than a negative.
  const double prompt = std::max(clamp0(usage.prompt), cached + write);
  const double uncached = prompt - cached - write;
  const double completion = clamp0(usage.completion);  // reasoning is part of it: billed once

  const bool long_context =
      price.long_context_threshold > 0 && prompt > static_cast<double>(price.long_context_threshold);
  const billed_prices b = billed_prices_of(price, usage.tier, long_context);
  const double in = b.input, cached_in = b.cached_input, out = b.output, w5 = b.write_5m, w1 = b.write_1h;

  // Image and audio input tokens are part of the uncached input, audio output tokens part of the
  // completion, each at its own price; in a tier (batch, flex) those prices move with the text
  // prices, by the tier's ratio.
  const auto media = [](const std::optional<double>& own, double text_now, double text_base) {
    if (!own) return text_now;
    return text_base > 0 ? *own * (text_now / text_base) : *own;
  };
  const double image = std::min(clamp0(usage.image_in), uncached);
  const double audio = std::min(clamp0(usage.audio_in), uncached - image);
  const double audio_out = std::min(clamp0(usage.audio_out), completion);
  const double text_out = std::min(clamp0(usage.text_out), completion - audio_out);
  // Cache reads of image and audio tokens (Realtime) likewise, parts of the cached input.
  const double image_hit = std::min(clamp0(usage.image_cached), cached);
  const double audio_hit = std::min(clamp0(usage.audio_cached), cached - image_hit);
  // Web searches are per request, the same in either tier; US-only inference scales the tokens.
  const double usd =
      ((uncached - image - audio) * in + image * media(price.image_input, in, price.input) +
       audio * media(price.audio_input, in, price.input) + (cached - image_hit - audio_hit) * cached_in +
       image_hit * media(price.cached_image_input, cached_in, price.cached_input) +
       audio_hit * media(price.cached_audio_input, cached_in, price.cached_input) + write_5m * w5 + write_1h * w1 +
       (completion - audio_out - text_out) * out + audio_out * media(price.audio_output, out, price.output) +
       text_out * media(price.text_output, out, price.output)) /
          per_million * (usage.geo_us ? price.us_inference : 1.0) +
      clamp0(usage.web_search) * price.web_search / 1000.0 + clamp0(usage.file_search) * price.file_search / 1000.0 +
      clamp0(usage.audio_ms) / 60'000.0 * price.per_minute +
      clamp0(usage.characters) * price.per_million_characters / per_million + per_unit;
  return {usd * multiplier, true, &price};
}

cost_result compute_cost(const price_table& table, const std::vector<std::pair<std::string, token_usage>>& by_model,
                         double multiplier, std::int64_t at_ms) {
  cost_result out{0, true, nullptr};
  for (const auto& [m, u] : by_model) {
    const model_price* p = at_ms < 0 ? table.resolve(m) : table.resolve_at(m, at_ms);
    const auto cost = p ? compute_cost(*p, u, multiplier) : cost_result{};
    out.priced = out.priced && cost.priced;
    out.usd += cost.usd;
    if (out.price == nullptr) out.price = cost.price;
  }
  return out;
}

cost_result compute_cost(const price_table& table, std::string_view model, const token_usage& usage,
                         double multiplier) {
  const model_price* p = table.resolve(model);
  if (p == nullptr) return {};
  return compute_cost(*p, usage, multiplier);
}

}  // namespace tollgate
