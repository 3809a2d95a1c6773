// The configuration loader: YAML file -> `config`, ${VAR} substitution, TOLLGATE_* overrides and
// the value parsers (durations, sizes, host:port). Called once by main() before anything starts.
#include "core/config.hpp"
#include "core/error.hpp"
#include "core/ledger_indexes.hpp"

#include <arpa/inet.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "core/calendar.hpp"
#include "core/policy.hpp"

namespace tollgate {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Splits "12.5ms" into the number ("12.5") and the unit ("ms"), spaces between allowed.
// Returns false when there is no leading number of the form digits[.digits].
bool split_number(std::string_view s, std::string_view& integer, std::string_view& fraction, std::string_view& unit) {
  std::size_t i = 0;
  while (i < s.size() && is_digit(s[i])) ++i;
  if (i == 0) return false;
  integer = s.substr(0, i);
  fraction = {};
  if (i < s.size() && s[i] == '.') {
    std::size_t j = i + 1;
    while (j < s.size() && is_digit(s[j])) ++j;
    if (j == i + 1) return false;
    fraction = s.substr(i + 1, j - i - 1);
    i = j;
  }
  unit = trim(s.substr(i));
  return true;
}

// integer * multiplier + round(0.fraction * multiplier), with overflow detection.
bool scale(std::string_view integer, std::string_view fraction, std::uint64_t multiplier, std::uint64_t limit,
           std::uint64_t& out) {
  std::uint64_t whole = 0;
  auto [p, ec] = std::from_chars(integer.data(), integer.data() + integer.size(), whole);
  if (ec != std::errc() || p != integer.data() + integer.size()) return false;
  if (whole > limit / multiplier) return false;
  out = whole * multiplier;
  if (!fraction.empty()) {
    long double frac = 0, digit_weight = 0.1L;
    for (char c : fraction) {
      frac += (c - '0') * digit_weight;
      digit_weight /= 10;
    }
    auto extra = static_cast<std::uint64_t>(std::llround(frac * static_cast<long double>(multiplier)));
    if (extra > limit - out) return false;
    out += extra;
  }
  return true;
}

bool valid_hostname(std::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  return std::all_of(h.begin(), h.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
  });
}

bool looks_like_ipv4(std::string_view h) {
  return !h.empty() && std::all_of(h.begin(), h.end(), [](char c) { return is_digit(c) || c == '.'; });
}

// Host part of a URL authority or a listen address, without brackets. "" when invalid.
std::string check_host(std::string_view host, bool bracketed) {
  std::string h(host);
  if (bracketed) {
    in6_addr a6{};
    return inet_pton(AF_INET6, h.c_str(), &a6) == 1 ? h : std::string();
  }
  if (looks_like_ipv4(h)) {
    in_addr a4{};
    return inet_pton(AF_INET, h.c_str(), &a4) == 1 ? h : std::string();
  }
  return valid_hostname(h) ? h : std::string();
}

bool parse_port(std::string_view s, unsigned min, std::uint16_t& port) {
  if (s.empty() || s.size() > 5 || !std::all_of(s.begin(), s.end(), is_digit)) return false;
  unsigned v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  if (v < min || v > 65535) return false;
  port = static_cast<std::uint16_t>(v);
  return true;
}

// Checks an upstream base URL: http(s)://host[:port][/path]. Returns "" when fine, else the
// reason. The URL itself is not echoed: it may carry credentials.
std::string url_problem(std::string_view url) {
  std::string_view rest;
  if (url.starts_with("http://")) rest = url.substr(7);
  else if (url.starts_with("https://")) rest = url.substr(8);
  else return "must start with http:// or https://";
  if (rest.find_first_of("?#") != std::string_view::npos) return "must not contain a query or fragment";
  if (std::any_of(rest.begin(), rest.end(), [](unsigned char c) { return c <= ' ' || c == 0x7f; }))
    return "must not contain spaces or control characters";
  std::string_view authority = rest.substr(0, rest.find('/'));
  if (authority.find('@') != std::string_view::npos)
    return "must not contain credentials (user@host); set upstream.api_key instead";
  std::string_view host = authority, port;
  bool bracketed = false;
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return "has an unterminated [IPv6] host";
    host = authority.substr(1, close - 1);
    bracketed = true;
    std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after.front() != ':') return "has garbage after the [IPv6] host";
    if (!after.empty()) port = after.substr(1);
    if (after == ":") return "has an empty port";
  } else if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (port.empty()) return "has an empty port";
  }
  if (host.empty()) return "has no host";
  if (check_host(host, bracketed).empty()) return "has an invalid host";
  std::uint16_t p = 0;
  if (!port.empty() && !parse_port(port, 1, p)) return "has an invalid port (1..65535)";
  return {};
}

// Optimal-string-alignment distance: a swapped pair of letters ("listne") counts as one edit.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

std::string format_host_port(const host_port& hp) {
  bool v6 = hp.host.find(':') != std::string::npos;
  return (v6 ? "[" + hp.host + "]" : hp.host) + ":" + std::to_string(hp.port);
}

bool is_wildcard(const std::string& host) { return host == "0.0.0.0" || host == "::"; }

// Upstream names label metrics and log lines and are matched by routes: no spaces, quotes or
// line breaks (an unterminated quote in YAML would otherwise swallow the lines after it).
bool valid_upstream_name(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '_' || c == '.';
  });
}

// A socket binds to an address, not a name: an IPv4 or IPv6 address, or localhost.
bool is_listen_host(const std::string& host) {
  in6_addr buf{};
  return host == "localhost" || ::inet_pton(AF_INET, host.c_str(), &buf) == 1 || ::inet_pton(AF_INET6, host.c_str(), &buf) == 1;
}
std::string not_listen_host(const std::string& host) {
  return "'" + host + "' is not an IP address (use 127.0.0.1, 0.0.0.0, ::1, :: or localhost)";
}

const char* env_value(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

int parse_workers(std::string_view s) {
  int v = -1;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v < 0 || v > 1024)
    throw std::invalid_argument("expected an integer 0..1024 (0 = one per available CPU)");
  return v;
}

// One value in the YAML tree: the node, its dotted key path and the line to blame.
struct entry {
  const YAML::Node& node;
  std::string path;
  int line;
};

// Reads one YAML document into a config. Each section is a table of known keys -> reader, so an
// unknown key is found (with a suggestion) in one place.
class loader {
 public:
  loader(config& cfg, std::string file, std::filesystem::path dir, std::string_view text)
      : cfg_(cfg), file_(std::move(file)), dir_(std::move(dir)) {
    for (std::size_t at = 0; at <= text.size();) {
      const std::size_t nl = std::min(text.find('\n', at), text.size());
      lines_.push_back(text.substr(at, nl - at));
      at = nl + 1;
    }
  }

  void load(const YAML::Node& root) {
    if (!root.IsNull()) read_section(root, "", 1, top_level_fields());  // null: empty file, all defaults
    // Without pricing.file, the price table is `prices.yaml` next to the config file (as the
    // README says), else `config/prices.yaml` under the working directory (a checkout's root).
    // A config elsewhere, started from elsewhere (`tollgate --config /tmp/t.yaml` run from /),
    // still finds the table this binary was built with: the checkout's config/prices.yaml.
    if (!prices_file_given_ && !dir_.empty()) {
      std::error_code ec;
      const auto beside = (dir_ / "prices.yaml").lexically_normal();
      if (std::filesystem::is_regular_file(beside, ec)) {
        cfg_.prices_file = beside.string();
      } else if (!std::filesystem::is_regular_file(cfg_.prices_file, ec)) {
#ifdef TOLLGATE_SOURCE_DIR
        const std::filesystem::path built_with = std::filesystem::path(TOLLGATE_SOURCE_DIR) / "config" / "prices.yaml";
        if (std::filesystem::is_regular_file(built_with, ec)) cfg_.prices_file = built_with.string();
#endif
      }
    }
  }

 private:
  using reader = std::function<void(const entry&)>;
  using fields = std::vector<std::pair<std::string_view, reader>>;

  [[noreturn]] void fail(int line, const std::string& msg) const { throw config_error(file_, line, msg); }
  [[noreturn]] void fail(const entry& e, const std::string& msg) const { fail(e.line, e.path + ": " + msg); }

  static int line_of(const YAML::Node& n, int fallback) {
    return n.Mark().is_null() ? fallback : n.Mark().line + 1;
  }

  void read_section(const YAML::Node& map, const std::string& path, int line, const fields& known) {
    if (map.IsNull()) return;  // "upstream:" with every key commented out
    if (!map.IsMap()) fail(line_of(map, line), (path.empty() ? "the document" : "'" + path + "'") + " must be a mapping of keys");
    std::map<std::string, int, std::less<>> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      int key_line = line_of(it->first, line);
      if (!it->first.IsScalar()) fail(key_line, "keys must be plain names");
      std::string key = it->first.Scalar();
      auto field = std::find_if(known.begin(), known.end(), [&](const auto& f) { return f.first == key; });
      if (field == known.end()) fail(key_line, unknown_key_message(key, path, known));
      if (auto [prev, fresh] = seen.emplace(key, key_line); !fresh)
        fail(key_line, "duplicate key '" + key + "' (first set on line " + std::to_string(prev->second) + ")");
      // An implicit null ("key:" with nothing after it) is marked on the next line; blame the key.
      int value_line = it->second.IsNull() ? key_line : line_of(it->second, key_line);
      field->second(entry{it->second, path.empty() ? key : path + "." + key, value_line});
    }
  }

  static std::string unknown_key_message(const std::string& key, const std::string& path, const fields& known) {
    std::string msg = "unknown key '" + key + "'";
    if (!path.empty()) msg += " in '" + path + "'";
    std::string_view best;
    std::size_t best_distance = 3;
    for (const auto& f : known) {
      std::size_t d = edit_distance(lower(key), f.first);
      if (d < best_distance && d < key.size()) best_distance = d, best = f.first;
    }
    if (!best.empty()) msg += " (did you mean '" + std::string(best) + "'?)";
    return msg;
  }

  // ${VAR}, ${VAR:-default} (default also when VAR is empty, as in sh), $${ -> literal ${.
  std::string substitute(const std::string& in, int line) {
    std::string out;
    for (std::size_t i = 0; i < in.size();) {
      if (in.compare(i, 3, "$${") == 0) {
        out += "${";
        i += 3;
        continue;
      }
      if (in.compare(i, 2, "${") != 0) {
        out += in[i++];
        continue;
      }
      std::size_t close = in.find('}', i + 2);
      if (close == std::string::npos) fail(line, "unterminated ${ in value (write $${ for a literal ${)");
      std::string_view body = std::string_view(in).substr(i + 2, close - i - 2);
      std::string_view name = body, fallback;
      bool has_default = false;
      if (auto sep = body.find(":-"); sep != std::string_view::npos) {
        name = body.substr(0, sep);
        fallback = body.substr(sep + 2);
        has_default = true;
      }
      bool valid = !name.empty() && !is_digit(name.front()) && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
      });
      if (!valid) fail(line, "invalid environment variable reference ${" + std::string(body) + "}");
      std::string var(name);
      const char* value = std::getenv(var.c_str());
      if (value != nullptr && (*value != '\0' || !has_default)) {
        out += value;
      } else if (has_default) {
        out += fallback;
      } else {
        cfg_.warnings.push_back(file_ + ":" + std::to_string(line) + ": environment variable " + var +
                                " is not set; using an empty value");
      }
      i = close + 1;
    }
    return out;
  }

  // A scalar value after substitution; `allow_null` maps "key:" / "key: ~" to "".
  std::string text(const entry& e, bool allow_null = false) {
    if (e.node.IsNull()) {
      if (allow_null) return {};
      fail(e, "missing value");
    }
    if (e.node.IsSequence()) fail(e, "expected a single value, not a list");
    if (e.node.IsMap()) fail(e, "expected a single value, not a mapping");
    ends_on_its_line(e);
    return substitute(e.node.Scalar(), e.line);
  }

  // YAML lets a quoted value run on over the next lines, so a missing closing quote silently
  // takes the keys below it into the value (`name: "relay` swallowing a hard budget). No value
  // of this file spans lines: a quoted one must close on the line it opens.
  void ends_on_its_line(const entry& e) const {
    const YAML::Mark m = e.node.Mark();
    if (m.is_null() || m.line < 0 || static_cast<std::size_t>(m.line) >= lines_.size()) return;
    const std::string_view l = lines_[static_cast<std::size_t>(m.line)];
    const auto start = static_cast<std::size_t>(std::max(m.column, 0));
    if (start >= l.size() || (l[start] != '"' && l[start] != '\'')) return;
    const char q = l[start];
    for (std::size_t i = start + 1; i < l.size(); ++i) {
      if (q == '"' && l[i] == '\\') {
        ++i;
      } else if (l[i] == q) {
        if (q == '\'' && i + 1 < l.size() && l[i + 1] == '\'') {
          ++i;  // '' is a quote inside a single-quoted value
          continue;
        }
        return;
      }
    }
    fail(e, std::string("the quoted value opened here does not close on this line (a missing ") + q + "?)");
  }

  std::string str(const entry& e) { return text(e, true); }

  bool boolean(const entry& e) {
    std::string v = lower(text(e));
    if (v == "true" || v == "yes" || v == "on") return true;
    if (v == "false" || v == "no" || v == "off") return false;
    fail(e, "expected true or false, got " + quote_value(v));
  }

  // A whole number from `min` to `max` (10^15 unless said: every count of this file fits a signed
  // 64-bit integer then, and none means anything larger).
  std::size_t count(const entry& e, std::size_t min, std::size_t max = 1'000'000'000'000'000) {
    std::string v = text(e);
    std::size_t out = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || p != v.data() + v.size() || out < min)
      fail(e, "expected a whole number >= " + std::to_string(min) + ", got " + quote_value(v));
    if (out > max) fail(e, "too large: at most " + std::to_string(max) + ", got " + quote_value(v));
    return out;
  }

  std::size_t size(const entry& e) {
    std::string v = text(e);
    try {
      std::size_t out = parse_size(v);
      if (out == 0) fail(e, "must be greater than 0");
      return out;
    } catch (const std::invalid_argument& ex) {
      fail(e, ex.what());
    }
  }

  millis duration(const entry& e) {
    std::string v = text(e);
    try {
      millis out = parse_duration(v);
      if (out.count() == 0) fail(e, "must be greater than 0 (got " + quote_value(v) + ")");
      // Deadlines are now + duration on clocks counting nanoseconds: ~292 years overflow them.
      if (out > std::chrono::hours(24 * 3650)) fail(e, "too large: at most 3650d (got " + quote_value(v) + ")");
      return out;
    } catch (const std::invalid_argument& ex) {
      fail(e, ex.what());
    }
  }

  host_port address(const entry& e) {
    std::string v = text(e);
    try {
      return parse_host_port(v);
    } catch (const std::invalid_argument& ex) {
      fail(e, ex.what());
    }
  }

  // A socket binds to an address, not a name: refused here with its line, not at start-up.
  host_port listen_address(const entry& e) {
    host_port hp = address(e);
    if (!is_listen_host(hp.host)) fail(e, not_listen_host(hp.host));
    return hp;
  }

  std::string url(const entry& e) {
    std::string v = text(e);
    if (std::string why = url_problem(v); !why.empty()) fail(e, "URL " + why);
    return v;
  }

  double multiplier(const entry& e) {
    std::string v = text(e);
    double out = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || p != v.data() + v.size() || !std::isfinite(out) || out <= 0)
      fail(e, "expected a number greater than 0, got " + quote_value(v));
    return out;
  }

  // Non-negative amount in USD (or any plain number >= min).
  double number(const entry& e, double min, bool min_inclusive) {
    std::string v = text(e);
    double out = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || p != v.data() + v.size() || !std::isfinite(out) || out < min || (!min_inclusive && out == min))
      fail(e, std::string("expected a number ") + (min_inclusive ? ">= " : "greater than ") + format_number(min) +
                  ", got " + quote_value(v));
    return out;
  }
  static std::string format_number(double d) {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, d);
    return std::string(buf, r.ptr);
  }

  // A YAML list: calls `item` for each element with the path "name[i]".
  void list(const entry& e, const std::function<void(const entry&)>& item) {
    if (e.node.IsNull()) return;
    if (!e.node.IsSequence()) fail(e, "expected a list");
    for (std::size_t i = 0; i < e.node.size(); ++i) {
      const YAML::Node n = e.node[i];
      item(entry{n, e.path + "[" + std::to_string(i) + "]", line_of(n, e.line)});
    }
  }
  // A list of plain strings ("tags: [prod, eu]").
  std::vector<std::string> strings(const entry& e) {
    std::vector<std::string> out;
    list(e, [&](const entry& it) { out.push_back(text(it)); });
    return out;
  }
  // A list item that must be a mapping; `known` reads its keys.
  void item_section(const entry& e, const fields& known) {
    if (!e.node.IsMap()) fail(e, "expected a mapping of keys");
    read_section(e.node, e.path, e.line, known);
  }

  template <class Enum>
  Enum choice(const entry& e, std::initializer_list<std::pair<std::string_view, Enum>> options) {
    std::string v = lower(text(e));
    std::string names;
    for (const auto& [name, value] : options) {
      if (v == name) return value;
      names += names.empty() ? "" : " | ";
      names += name;
    }
    fail(e, "expected " + names + ", got " + quote_value(v));
  }

  static bool valid_name(std::string_view n) {
    return !n.empty() && n.size() <= 64 && std::all_of(n.begin(), n.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    });
  }

  // "global", "team:<name>", "key:<name>", "model:<id>", "user:<id>"; a budget's also "user:*"
  // (every end user on their own).
  std::string scope(const entry& e, bool budget) {
    std::string v = text(e);
    if (v == "global") return v;
    if (v == "user:*" && !budget)
      fail(e, "a spend guard cannot be per end user (user:*): name one end user, user:<id>");
    auto colon = v.find(':');
    std::string kind = v.substr(0, colon == std::string::npos ? v.size() : colon);
    if (colon == std::string::npos || (kind != "team" && kind != "key" && kind != "model" && kind != "user") ||
        colon + 1 == v.size() || v.size() > 300)
      fail(e, std::string("expected global, team:<name>, key:<name>, model:<id>, user:<id>") +
                  (budget ? " or user:*" : "") + ", got " + quote_value(v));
    return v;
  }

  calendar_period budget_period(const entry& e) {
    return choice<calendar_period>(e, {{"day", calendar_period::day}, {"week", calendar_period::week},
                                       {"month", calendar_period::month}});
  }

  // One budget; `with_scope` false for a key's own budgets (their scope is the key).
  budget_config budget(const entry& e, bool with_scope) {
    budget_config b;
    bool has_limit = false;
    fields known = {
        {"period", [&](const entry& x) { b.period = budget_period(x); }},
        {"limit_usd", [&](const entry& x) { b.limit_usd = number(x, 0, false), has_limit = true; }},
        {"soft", [&](const entry& x) {
           list(x, [&](const entry& f) {
             std::string v = text(f);
             double frac = 0;
             bool percent = !v.empty() && v.back() == '%';
             if (percent) v.pop_back();
             auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), frac);
             if (percent) frac /= 100;
             if (ec != std::errc() || p != v.data() + v.size() || !(frac > 0) || frac > 10)
               fail(f, "expected a fraction of the limit such as 0.8 (or 80%), got " + quote_value(text(f)));
             b.soft.push_back(frac);
           });
           std::sort(b.soft.begin(), b.soft.end());
           b.soft.erase(std::unique(b.soft.begin(), b.soft.end()), b.soft.end());
         }},
        {"hard", [&](const entry& x) { b.hard = boolean(x); }},
    };
    if (with_scope) known.emplace_back("scope", [&](const entry& x) { b.scope = scope(x, true); });
    item_section(e, known);
    if (!has_limit) fail(e, "limit_usd is required");
    return b;
  }

  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  client_key_config client_key(const entry& e) {
    client_key_config k;
    bool has_key = false;
    item_section(e, {
        {"name", [&](const entry& x) {
           k.name = text(x);
           if (!valid_name(k.name)) fail(x, "expected 1-64 letters, digits, '-', '_' or '.', got '" + k.name + "'");
         }},
        {"key", [&](const entry& x) {
           std::string v = str(x);
           if (v.size() < 8) fail(x, "the key is empty or shorter than 8 characters (is its environment variable set?)");
           k.sha256 = policy_engine::sha256(v);
           has_key = true;
         }},
        {"key_sha256", [&](const entry& x) {
           std::string v = text(x);
           if (v.size() != 64) fail(x, "expected 64 hex digits");
           for (std::size_t i = 0; i < 32; ++i) {
             int hi = hex_digit(v[2 * i]), lo = hex_digit(v[2 * i + 1]);
             if (hi < 0 || lo < 0) fail(x, "expected 64 hex digits");
             k.sha256[i] = static_cast<unsigned char>(hi * 16 + lo);
           }
           has_key = true;
         }},
        {"team", [&](const entry& x) {
           k.team = str(x);
           if (!k.team.empty() && !valid_name(k.team)) fail(x, "expected 1-64 letters, digits, '-', '_' or '.'");
         }},
        {"tags", [&](const entry& x) { k.tags = strings(x); }},
        {"budgets", [&](const entry& x) { list(x, [&](const entry& b) { k.budgets.push_back(budget(b, false)); }); }},
        {"limits", [&](const entry& x) { k.limits = limits(x); }},
    });
    if (k.name.empty()) fail(e, "name is required");
    if (!has_key) fail(e, "key or key_sha256 is required");
    for (auto& b : k.budgets) b.scope = "key:" + k.name;
    return k;
  }

  // A header name (RFC 9110 token), lower-cased; not one tollgate or HTTP framing reads itself.
  std::string user_header(const entry& e) {
    std::string name = text(e);
    if (name.empty()) return name;
    for (char& ch : name) {
      const auto u = static_cast<unsigned char>(ch);
      if (!(std::isalnum(u) || std::string_view("!#$%&'*+-.^_`|~").find(ch) != std::string_view::npos) || u >= 0x80)
        fail(e, "'" + name + "' is not a header name (letters, digits and !#$%&'*+-.^_`|~)");
      ch = static_cast<char>(std::tolower(u));
    }
    for (std::string_view taken : {"authorization", "x-api-key", "host", "content-length", "content-type",
                                   "content-encoding", "transfer-encoding", "connection", "upgrade", "keep-alive",
                                   "te", "trailer", "expect", "proxy-authorization", "x-request-id",
                                   "anthropic-version", "user-agent", "accept", "accept-encoding"})
      if (name == taken)
        fail(e, "'" + name + "' is a header HTTP or the APIs use for something else; name your own (e.g. x-end-user)");
    return name;
  }

  // {rpm, tpm}: per minute, 0 = unlimited (a key's `limits`, `user_limits`).
  rate_limits limits(const entry& e) {
    rate_limits l;
    read_section(e.node, e.path, e.line,
                 {{"rpm", [&](const entry& r) { l.rpm = static_cast<std::int64_t>(count(r, 0)); }},
                  {"tpm", [&](const entry& r) { l.tpm = static_cast<std::int64_t>(count(r, 0)); }}});
    return l;
  }

  spend_guard_config guard(const entry& e) {
    spend_guard_config g;
    bool has_max = false;
    item_section(e, {
        {"scope", [&](const entry& x) { g.scope = scope(x, false); }},
        {"window", [&](const entry& x) {
           g.window = duration(x);
           if (g.window < std::chrono::minutes(1) || g.window > std::chrono::hours(24 * 7))
             fail(x, "expected a window from 1m to 7d");
         }},
        {"max_usd", [&](const entry& x) { g.max_usd = number(x, 0, false), has_max = true; }},
        {"action", [&](const entry& x) {
           g.action = choice<guard_action>(x, {{"reject", guard_action::reject}, {"reroute", guard_action::reroute}});
         }},
        {"fallback_model", [&](const entry& x) { g.fallback_model = str(x); }},
        {"reset_fraction", [&](const entry& x) {
           g.reset_fraction = number(x, 0, false);
           if (g.reset_fraction > 1) fail(x, "expected a fraction from 0 to 1");
         }},
    });
    if (!has_max) fail(e, "max_usd is required");
    if (g.action == guard_action::reroute && g.fallback_model.empty())
      fail(e, "action reroute needs fallback_model");
    return g;
  }

  webhook_config webhook(const entry& e) {
    webhook_config w;
    item_section(e, {
        {"url", [&](const entry& x) {
           // Unlike an upstream's base URL, a webhook's may carry a query (Google Chat's key and
           // token, Teams' api-version and sig): the part before it is checked.
           w.url = text(x);
           const std::string_view base = std::string_view(w.url).substr(0, w.url.find_first_of("?#"));
           if (std::string why = url_problem(base); !why.empty()) fail(x, "URL " + why);
           if (std::any_of(w.url.begin(), w.url.end(), [](unsigned char c) { return c <= ' ' || c == 0x7f; }))
             fail(x, "URL must not contain spaces or control characters");
         }},
        {"format", [&](const entry& x) {
           w.format = choice<webhook_format>(x, {{"json", webhook_format::json}, {"slack", webhook_format::slack}});
         }},
        {"cooldown", [&](const entry& x) { w.cooldown = duration(x); }},
        {"timeout", [&](const entry& x) { w.timeout = duration(x); }},
        {"max_attempts", [&](const entry& x) { w.max_attempts = static_cast<int>(std::min<std::size_t>(count(x, 1), 20)); }},
    });
    if (w.url.empty()) fail(e, "url is required");
    return w;
  }

  route_rule route(const entry& e) {
    route_rule r;
    item_section(e, {
        {"model", [&](const entry& x) {
           r.model = text(x);
           if (r.model.empty()) fail(x, "must not be empty (use \"*\" for every model)");
         }},
        {"upstreams", [&](const entry& x) { r.upstreams = strings(x); }},
        {"upstream", [&](const entry& x) { r.upstreams = {text(x)}; }},
        {"rewrite", [&](const entry& x) { r.rewrite = str(x); }},
    });
    route_lines_.push_back(e.line);
    return r;
  }

  // pricing.file and pricing.litellm_file: a relative path is looked up next to the config
  // file first (so `prices.yaml` travels with it), then left relative to the working directory.
  std::string pricing_path(const entry& e) {
    std::string v = str(e);
    std::filesystem::path p(v);
    if (v.empty() || p.is_absolute() || dir_.empty()) return v;
    std::filesystem::path beside = (dir_ / p).lexically_normal();
    std::error_code ec;
    return std::filesystem::exists(beside, ec) ? beside.string() : v;
  }

  fields top_level_fields() {
    return {
        {"listen", [this](const entry& e) { cfg_.listen = listen_address(e); }},
        {"admin_listen", [this](const entry& e) { cfg_.admin_listen = listen_address(e); }},
        {"workers", [this](const entry& e) {
           std::string v = text(e);
           try {
             cfg_.workers = parse_workers(v);
           } catch (const std::invalid_argument& ex) {
             fail(e, std::string(ex.what()) + ", got " + quote_value(v));
           }
         }},
        {"log_level", [this](const entry& e) {
           std::string v = text(e);
           try {
             cfg_.log = parse_log_level(v);
           } catch (const std::invalid_argument& ex) {
             fail(e, ex.what());
           }
         }},
        {"allow_public_without_auth", [this](const entry& e) { cfg_.allow_public_without_auth = boolean(e); }},
        {"watch_config", [this](const entry& e) { cfg_.config_watch = boolean(e); }},
        {"timezone", [this](const entry& e) {
           cfg_.timezone = text(e);
           if (std::string why = timezone_problem(cfg_.timezone); !why.empty()) fail(e, why);
         }},
        {"upstream", [this](const entry& e) {
           read_section(e.node, e.path, e.line, upstream_fields(cfg_.upstream));
           upstream_line_ = e.line;
         }},
        {"upstreams", [this](const entry& e) {
           list(e, [&](const entry& x) {
             upstream_config u;
             u.name.clear();
             item_section(x, upstream_fields(u));
             if (u.name.empty()) fail(x, "name is required");
             for (const auto& other : cfg_.upstreams)
               if (other.name == u.name) fail(x, "duplicate upstream name '" + u.name + "'");
             cfg_.upstreams.push_back(std::move(u));
           });
           if (cfg_.upstreams.empty()) fail(e, "must list at least one upstream");
           upstreams_line_ = e.line;
         }},
        {"routes", [this](const entry& e) { list(e, [&](const entry& x) { cfg_.routes.push_back(route(x)); }); }},
        {"auth", [this](const entry& e) {
           cfg_.policy.auth = choice<auth_mode>(
               e, {{"off", auth_mode::off}, {"optional", auth_mode::optional}, {"required", auth_mode::required}});
           cfg_.policy.auth_set = true;
         }},
        {"admin_token", [this](const entry& e) { cfg_.policy.admin_token = str(e); }},
        {"keys", [this](const entry& e) {
           list(e, [&](const entry& x) {
             auto k = client_key(x);
             for (const auto& other : cfg_.policy.keys) {
               if (other.name == k.name) fail(x, "duplicate key name '" + k.name + "'");
               if (other.sha256 == k.sha256) fail(x, "key '" + k.name + "' is the same key as '" + other.name + "'");
             }
             cfg_.policy.keys.push_back(std::move(k));
           });
         }},
        {"budgets", [this](const entry& e) {
           list(e, [&](const entry& x) { cfg_.policy.budgets.push_back(budget(x, true)); });
         }},
        {"spend_guard", [this](const entry& e) {
           list(e, [&](const entry& x) { cfg_.policy.spend_guards.push_back(guard(x)); });
         }},
        {"alerts", [this](const entry& e) {
           read_section(e.node, e.path, e.line,
                        {{"webhooks", [this](const entry& w) {
                           list(w, [&](const entry& x) { cfg_.policy.webhooks.push_back(webhook(x)); });
                         }}});
         }},
        {"user_limits", [this](const entry& e) { cfg_.policy.user_limits = limits(e); }},
        {"user_header", [this](const entry& e) { cfg_.policy.user_header = user_header(e); }},
        {"reserve_max_tokens", [this](const entry& e) {
           cfg_.policy.default_max_tokens = static_cast<std::int64_t>(count(e, 1));
         }},
        {"server", [this](const entry& e) { read_section(e.node, e.path, e.line, server_fields()); }},
        {"ledger", [this](const entry& e) { read_section(e.node, e.path, e.line, ledger_fields()); }},
        {"pricing", [this](const entry& e) { read_section(e.node, e.path, e.line, pricing_fields()); }},
        {"forecast", [this](const entry& e) { read_section(e.node, e.path, e.line, forecast_fields()); }},
    };
  }

  fields upstream_fields(upstream_config& u) {
    return {
        {"protocol", [this, &u](const entry& e) {
           u.protocol = choice<upstream_protocol>(
               e, {{"openai", upstream_protocol::openai}, {"anthropic", upstream_protocol::anthropic}});
         }},
        {"auth_header", [this, &u](const entry& e) {
           u.auth_header = choice<upstream_auth>(e, {{"auto", upstream_auth::automatic},
                                                     {"bearer", upstream_auth::bearer},
                                                     {"x-api-key", upstream_auth::x_api_key}});
         }},
        {"weight", [this, &u](const entry& e) {
           u.weight = static_cast<unsigned>(std::min<std::size_t>(count(e, 0), 1'000'000));
         }},
        {"max_inflight", [this, &u](const entry& e) { u.max_inflight = count(e, 0); }},
        {"breaker", [this, &u](const entry& e) {
           read_section(e.node, e.path, e.line,
                        {{"failures", [this, &u](const entry& b) {
                            u.breaker_failures = static_cast<int>(std::min<std::size_t>(count(b, 1), 1000));
                          }},
                         {"open_for", [this, &u](const entry& b) { u.breaker_open_for = duration(b); }}});
         }},
        {"name", [this, &u](const entry& e) {
           u.name = text(e);
           if (u.name.empty()) fail(e, "must not be empty");
           if (!valid_upstream_name(u.name))
             fail(e, "expected 1-64 letters, digits, '-', '_' or '.' (it names the upstream in logs, metrics and routes)");
         }},
        {"url", [this, &u](const entry& e) { u.url = url(e); }},
        {"api_key", [this, &u](const entry& e) {
           u.api_key = str(e);
           if (&u == &cfg_.upstream) upstream_key_given_ = true;
         }},
        {"ca_file", [this, &u](const entry& e) { u.ca_file = str(e); }},
        {"tls_verify", [this, &u](const entry& e) { u.tls_verify = boolean(e); }},
        {"price_multiplier", [this, &u](const entry& e) { u.price_multiplier = multiplier(e); }},
        {"reported_cost", [this, &u](const entry& e) {
           u.reported_cost = choice<reported_cost_use>(e, {{"fallback", reported_cost_use::fallback},
                                                           {"prefer", reported_cost_use::prefer},
                                                           {"ignore", reported_cost_use::ignore}});
         }},
        {"timeouts", [this, &u](const entry& e) {
           read_section(e.node, e.path, e.line,
                        {{"connect", [this, &u](const entry& t) { u.connect_timeout = duration(t); }},
                         {"first_byte", [this, &u](const entry& t) { u.first_byte_timeout = duration(t); }},
                         {"idle", [this, &u](const entry& t) { u.idle_timeout = duration(t); }},
                         {"total", [this, &u](const entry& t) { u.total_timeout = duration(t); }}});
         }},
        {"pool", [this, &u](const entry& e) {
           read_section(e.node, e.path, e.line,
                        {{"max_idle", [this, &u](const entry& p) { u.max_idle_connections = count(p, 0); }},
                         {"idle_timeout", [this, &u](const entry& p) { u.pool_idle_timeout = duration(p); }}});
         }},
    };
  }

  fields server_fields() {
    return {
        {"max_body_bytes", [this](const entry& e) { cfg_.max_body_bytes = size(e); }},
        {"max_upload_bytes", [this](const entry& e) {
           // 0 turns spooling off: every body is bounded by max_body_bytes.
           cfg_.max_upload_bytes = trim(text(e)) == "0" ? 0 : size(e);
         }},
        {"spool_dir", [this](const entry& e) { cfg_.spool_dir = text(e); }},
        {"max_header_bytes", [this](const entry& e) { cfg_.max_header_bytes = size(e); }},
        {"header_timeout", [this](const entry& e) { cfg_.header_timeout = duration(e); }},
        {"body_timeout", [this](const entry& e) { cfg_.body_timeout = duration(e); }},
        {"keepalive_timeout", [this](const entry& e) { cfg_.keepalive_timeout = duration(e); }},
        {"max_parse_bytes", [this](const entry& e) { cfg_.max_parse_bytes = size(e); }},
        {"drain_timeout", [this](const entry& e) { cfg_.drain_timeout = duration(e); }},
    };
  }

  fields ledger_fields() {
    return {
        {"path", [this](const entry& e) {
           cfg_.ledger_path = text(e);
           if (cfg_.ledger_path.empty()) fail(e, "must not be empty");
         }},
        {"batch_rows", [this](const entry& e) { cfg_.ledger_batch_rows = count(e, 1, 1'000'000); }},
        {"flush_interval", [this](const entry& e) { cfg_.ledger_flush_interval = duration(e); }},
        {"queue_capacity", [this](const entry& e) { cfg_.ledger_queue_capacity = count(e, 1); }},
        {"on_failure", [this](const entry& e) {
           cfg_.ledger_fail_closed = choice<bool>(e, {{"open", false}, {"closed", true}});
         }},
        {"memory_rows", [this](const entry& e) { cfg_.ledger_memory_rows = count(e, 0); }},
        {"journal_path", [this](const entry& e) { cfg_.ledger_journal_path = str(e); }},
        {"journal_max_bytes", [this](const entry& e) {
           // 0 turns the journal off (rows the database refuses then wait in memory only).
           cfg_.ledger_journal_max_bytes = trim(text(e)) == "0" ? 0 : size(e);
         }},
        {"synchronous", [this](const entry& e) {
           cfg_.ledger_synchronous_full = choice<bool>(e, {{"normal", false}, {"full", true}});
         }},
        {"retention", [this](const entry& e) {
           // 0 keeps every row. Budgets warm-start from the current month's rows, and reports
           // and the what-if read whole months: a shorter retention would lose what they count.
           if (trim(text(e)) == "0") return void(cfg_.ledger_retention = millis(0));
           cfg_.ledger_retention = duration(e);
           if (cfg_.ledger_retention < std::chrono::hours(24 * 32))
             fail(e, "must be 0 (keep every row) or at least 32d, so a month's budgets and reports keep their rows (got '" +
                         text(e) + "')");
         }},
        {"indexes", [this](const entry& e) {
           cfg_.ledger_indexes.clear();
           list(e, [&](const entry& it) {
             const std::string name = text(it);
             const bool known = std::any_of(std::begin(kLedgerIndexes), std::end(kLedgerIndexes),
                                            [&](const ledger_index& x) { return x.filter == name; });
             if (!known) {
               std::string names;  // each filter once (model's three indexes are adjacent)
               for (std::size_t i = 0; i < std::size(kLedgerIndexes); ++i)
                 if (i == 0 || kLedgerIndexes[i - 1].filter != kLedgerIndexes[i].filter)
                   (names += names.empty() ? "" : ", ") += kLedgerIndexes[i].filter;
               fail(it, "unknown index '" + name + "'; use one of " + names);
             }
             if (std::find(cfg_.ledger_indexes.begin(), cfg_.ledger_indexes.end(), name) == cfg_.ledger_indexes.end())
               cfg_.ledger_indexes.push_back(name);
           });
         }},
        {"postgres", [this](const entry& e) { read_section(e.node, e.path, e.line, postgres_fields()); }},
    };
  }

  fields postgres_fields() {
    auto& pg = cfg_.ledger_postgres;
    return {
        {"url", [this, &pg](const entry& e) {
           pg.url = str(e);
           pg.url_line = e.line;
         }},
        {"instance", [this, &pg](const entry& e) {
           pg.instance = str(e);
           if (!pg.instance.empty() && !valid_name(pg.instance))
             fail(e, "must match [A-Za-z0-9._-]{1,64} (or be empty: the host name)");
         }},
        {"batch_rows", [this, &pg](const entry& e) { pg.batch_rows = count(e, 1, 100'000); }},
        {"interval", [this, &pg](const entry& e) {
           pg.interval = duration(e);
           if (pg.interval.count() < 10) fail(e, "must be at least 10ms");
         }},
        {"fleet_budgets", [this, &pg](const entry& e) { pg.fleet_budgets = boolean(e); }},
        {"fleet_alerts", [this, &pg](const entry& e) { pg.fleet_alerts = boolean(e); }},
        {"alert_lease", [this, &pg](const entry& e) {
           pg.alert_lease = duration(e);
           if (pg.alert_lease.count() < 1000) fail(e, "must be at least 1s");
         }},
    };
  }

  fields pricing_fields() {
    return {
        {"file", [this](const entry& e) {
           cfg_.prices_file = pricing_path(e);
           prices_file_given_ = true;
         }},
        {"litellm_file", [this](const entry& e) { cfg_.litellm_prices_file = pricing_path(e); }},
        {"watch", [this](const entry& e) { cfg_.prices_watch = boolean(e); }},
    };
  }

  fields forecast_fields() {
    forecast_config& f = cfg_.forecast;
    return {
        {"enabled", [this, &f](const entry& e) { f.enabled = boolean(e); }},
        {"refresh_interval", [this, &f](const entry& e) {
           f.refresh_interval = duration(e);
           if (f.refresh_interval > std::chrono::hours(1)) fail(e, "must be at most 1h");
         }},
        {"history_days", [this, &f](const entry& e) {
           f.history_days = count(e, 1);
           if (f.history_days > 60) fail(e, "expected a whole number of days from 1 to 60, got " + quote_value(text(e)));
         }},
    };
  }

  config& cfg_;
  std::vector<int> route_lines_;  // line of each routes[] item, for cross-checks after loading
  int upstreams_line_ = 0;
  int upstream_line_ = 0;
  bool upstream_key_given_ = false;

 public:
  // Cross-references inside the file, checked once everything is read.
  void check_references() {
    if (upstream_line_ != 0 && upstreams_line_ != 0)
      fail(std::max(upstream_line_, upstreams_line_), "set either 'upstream' (one) or 'upstreams' (a list), not both");
    // The single upstream's documented key, also when the file has no `upstream:` section at
    // all (the issue's own example config has none): HOLYSHEEP_API_KEY.
    if (!upstream_key_given_)
      if (const char* v = env_value("HOLYSHEEP_API_KEY")) cfg_.upstream.api_key = v;
    for (std::size_t i = 0; i < cfg_.routes.size(); ++i) {
      for (const auto& name : cfg_.routes[i].upstreams) {
        auto names = effective_upstreams(cfg_);
        bool found = std::any_of(names.begin(), names.end(), [&](const upstream_config& u) { return u.name == name; });
        if (!found)
          fail(route_lines_[i], "routes[" + std::to_string(i) + "]: no upstream named '" + name + "'");
      }
    }
    if (!cfg_.upstreams.empty()) {
      bool weighted = std::any_of(cfg_.upstreams.begin(), cfg_.upstreams.end(),
                                  [](const upstream_config& u) { return u.weight > 0; });
      if (!weighted) fail(upstreams_line_, "upstreams: at least one upstream needs a weight above 0");
    }
  }

 private:
  std::string file_;
  std::filesystem::path dir_;  // directory of the config file; empty for strings
  std::vector<std::string_view> lines_;  // the file's text by line (it outlives the loader)
  bool prices_file_given_ = false;
};

// The line of a `---` that starts a second document with content, else 0. YAML::Load reads the
// first document only, so the keys after such a marker would be dropped unread. (Not
// YAML::LoadAll: yaml-cpp 0.7 loops forever on some malformed input there, which fuzz_config
// found.) A `---` in column 0 is always a document marker: block scalars are indented.
int second_document_line(std::string_view text) {
  bool content = false, marker = false;
  int line_no = 0, marker_line = 0;
  for (std::size_t pos = 0; pos <= text.size();) {
    const std::size_t eol = std::min(text.find('\n', pos), text.size());
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    const bool is_marker = line.starts_with("---") && (line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '\r');
    std::string_view rest = is_marker ? line.substr(3) : line;
    const auto first = rest.find_first_not_of(" \t\r");
    const bool has_content = first != std::string_view::npos && rest[first] != '#';
    if (is_marker && content && !marker) {
      marker = true;
      marker_line = line_no;
    }
    if (has_content && marker) return marker_line;
    content = content || has_content;
    if (eol == text.size()) break;
  }
  return 0;
}

// A node's values in one form whatever their layout (block or flow, comments, quoting), so two
// versions of a section compare equal exactly when they say the same. Scalars are
// length-prefixed: no value can look like structure.
std::string canonical_yaml(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Scalar:
      return std::to_string(n.Scalar().size()) + ":" + n.Scalar();
    case YAML::NodeType::Sequence: {
      std::string out = "[";
      for (const auto& item : n) out += canonical_yaml(item) + ",";
      return out + "]";
    }
    case YAML::NodeType::Map: {
      std::string out = "{";
      for (const auto& kv : n) out += canonical_yaml(kv.first) + "=" + canonical_yaml(kv.second) + ",";
      return out + "}";
    }
    default:
      return "~";
  }
}

config load(const std::string& text, const std::string& name, const std::filesystem::path& dir) {
  config cfg;
  cfg.source_file = name;
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& ex) {
    throw config_error(name, ex.mark.is_null() ? 0 : ex.mark.line + 1, "YAML syntax error: " + ex.msg);
  }
  if (const int line = second_document_line(text); line > 0)
    throw config_error(name, line, "a second YAML document: tollgate reads one document per file (remove the '---')");
  if (root.IsMap())
    for (const auto& kv : root) cfg.sections[kv.first.Scalar()] = canonical_yaml(kv.second);
  loader l(cfg, name, dir, text);
  l.load(root);
  l.check_references();
  if (!cfg.upstream.tls_verify)
    cfg.warnings.push_back("upstream TLS certificate verification is DISABLED (upstream.tls_verify: false); traffic to " +
                           cfg.upstream.url + " can be intercepted");
  return cfg;
}

}  // namespace

config load_config_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw config_error(path, 0, std::string("cannot open: ") + std::strerror(errno));
  std::string text;
  char buf[8192];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  int read_errno = std::ferror(f) ? errno : 0;
  std::fclose(f);
  if (read_errno != 0) throw config_error(path, 0, std::string("cannot read: ") + std::strerror(read_errno));
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  return load(text, path, dir.empty() ? std::filesystem::path(".") : dir);
}

config load_config_string(const std::string& text, const std::string& name) { return load(text, name, {}); }

void apply_env_overrides(config& cfg) {
  auto fail = [](const char* var, const std::string& msg) -> void { throw config_error("environment", 0, std::string(var) + ": " + msg); };
  auto address = [&](const char* var, host_port& out) {
    if (const char* v = env_value(var)) {
      try {
        out = parse_host_port(v);
      } catch (const std::invalid_argument& ex) {
        fail(var, ex.what());
      }
      if (!is_listen_host(out.host)) fail(var, not_listen_host(out.host));  // as the file's listen keys
    }
  };
  address("TOLLGATE_LISTEN", cfg.listen);
  address("TOLLGATE_ADMIN_LISTEN", cfg.admin_listen);
  if (const char* v = env_value("TOLLGATE_UPSTREAM_URL")) {
    if (std::string why = url_problem(v); !why.empty()) fail("TOLLGATE_UPSTREAM_URL", "URL " + why);
    // One upstream serving every model and both APIs replaces the list (and its routes). It
    // keeps the first listed upstream's name, key, timeouts and pool settings.
    if (!cfg.upstreams.empty()) cfg.upstream = cfg.upstreams.front();
    cfg.upstreams.clear();
    cfg.routes.clear();
    cfg.upstream.url = v;
    cfg.upstream.protocol = upstream_protocol::openai;
    cfg.upstream.weight = 1;
  }
  if (const char* v = env_value("TOLLGATE_UPSTREAM_API_KEY")) {
    (cfg.upstreams.empty() ? cfg.upstream : cfg.upstreams.front()).api_key = v;
    // The shipped config's `api_key: ${HOLYSHEEP_API_KEY}` is replaced: its unset variable is moot.
    if (cfg.upstreams.empty())
      std::erase_if(cfg.warnings, [](const std::string& w) {
        return w.find("environment variable HOLYSHEEP_API_KEY is not set") != std::string::npos;
      });
  }
  if (const char* v = env_value("TOLLGATE_ADMIN_TOKEN")) cfg.policy.admin_token = v;
  if (const char* v = env_value("TOLLGATE_LEDGER_PATH")) cfg.ledger_path = v;
  if (const char* v = env_value("TOLLGATE_LEDGER_POSTGRES_URL")) {
    cfg.ledger_postgres.url = v;
    cfg.ledger_postgres.url_line = 0;
  }
  if (const char* v = env_value("TOLLGATE_LOG_LEVEL")) {
    try {
      cfg.log = parse_log_level(v);
    } catch (const std::invalid_argument& ex) {
      fail("TOLLGATE_LOG_LEVEL", ex.what());
    }
  }
  if (const char* v = env_value("TOLLGATE_WORKERS")) {
    try {
      cfg.workers = parse_workers(v);
    } catch (const std::invalid_argument& ex) {
      fail("TOLLGATE_WORKERS", std::string(ex.what()) + ", got " + quote_value(v));
    }
  }
}

std::string default_config_path() {
  const char* env = std::getenv("TOLLGATE_CONFIG");
  return env && *env ? env : "config/tollgate.yaml";
}

std::vector<upstream_config> effective_upstreams(const config& cfg) {
  if (!cfg.upstreams.empty()) return cfg.upstreams;
  return {cfg.upstream};
}

void validate(config& cfg) {
  const std::string file = cfg.source_file.empty() ? "<config>" : cfg.source_file;
  // auth defaults to off only on loopback; anywhere else a key is required unless said otherwise.
  if (!cfg.policy.auth_set) cfg.policy.auth = is_loopback(cfg.listen.host) ? auth_mode::off : auth_mode::required;
  if (!is_loopback(cfg.listen.host) && cfg.policy.auth == auth_mode::off && !cfg.allow_public_without_auth)
    throw config_error(file, 0, "refusing to listen on " + format_host_port(cfg.listen) +
                                    " without client authentication; set allow_public_without_auth: true to allow it");
  const host_port &a = cfg.listen, &b = cfg.admin_listen;
  const auto same_host = [](std::string x, std::string y) {  // localhost binds 127.0.0.1 (server.cpp)
    x = lower(x) == "localhost" ? "127.0.0.1" : lower(x);
    y = lower(y) == "localhost" ? "127.0.0.1" : lower(y);
    return x == y;
  };
  if (a.port != 0 && a.port == b.port && (same_host(a.host, b.host) || is_wildcard(a.host) || is_wildcard(b.host)))
    throw config_error(file, 0, "listen (" + format_host_port(a) + ") and admin_listen (" + format_host_port(b) +
                                    ") use the same port");
}

host_port parse_host_port(const std::string& s) {
  static const char* usage = "expected host:port, e.g. 127.0.0.1:8080, [::1]:8080 or :8080";
  std::string_view v = trim(s);
  std::string_view host, port;
  bool bracketed = false;
  if (!v.empty() && v.front() == '[') {
    auto close = v.find(']');
    if (close == std::string_view::npos || close + 1 >= v.size() || v[close + 1] != ':')
      throw std::invalid_argument("invalid address " + quote_value(s) + ": " + usage);
    host = v.substr(1, close - 1);
    port = v.substr(close + 2);
    bracketed = true;
  } else {
    auto colon = v.find(':');
    if (colon == std::string_view::npos) throw std::invalid_argument("missing port in " + quote_value(s) + ": " + usage);
    if (v.find(':', colon + 1) != std::string_view::npos)
      throw std::invalid_argument("invalid address " + quote_value(s) + ": IPv6 addresses need brackets, e.g. [::1]:8080");
    host = v.substr(0, colon);
    port = v.substr(colon + 1);
  }
  host_port out;
  if (!parse_port(port, 0, out.port))
    throw std::invalid_argument("invalid port in " + quote_value(s) + ": expected 0..65535");
  // ":8080" binds loopback, not every interface: exposing the proxy must be a deliberate choice.
  if (host.empty() && !bracketed) {
    out.host = "127.0.0.1";
    return out;
  }
  out.host = check_host(host, bracketed);
  if (out.host.empty()) throw std::invalid_argument("invalid host in " + quote_value(s) + ": " + usage);
  return out;
}

millis parse_duration(const std::string& s) {
  std::string_view v = trim(s);
  auto bad = [&](const char* why) { return std::invalid_argument("invalid duration " + quote_value(s) + ": " + why); };
  if (!v.empty() && v.front() == '-') throw bad("must not be negative");
  std::string_view integer, fraction, unit;
  if (!split_number(v, integer, fraction, unit)) throw bad("expected a number with a unit: ms, s, m, h or d (e.g. 250ms, 10s, 5m)");
  static const std::pair<std::string_view, std::uint64_t> units[] = {
      {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}, {"d", 86'400'000}};
  auto u = std::find_if(std::begin(units), std::end(units), [&](const auto& p) { return p.first == unit; });
  if (u == std::end(units)) throw bad("unknown unit; use ms, s, m, h or d");
  std::uint64_t ms = 0;
  if (!scale(integer, fraction, u->second, static_cast<std::uint64_t>(std::numeric_limits<millis::rep>::max()), ms))
    throw bad("too large");
  return millis(static_cast<millis::rep>(ms));
}

std::size_t parse_size(const std::string& s) {
  std::string_view v = trim(s);
  auto bad = [&](const char* why) { return std::invalid_argument("invalid size " + quote_value(s) + ": " + why); };
  if (!v.empty() && v.front() == '-') throw bad("must not be negative");
  std::string_view integer, fraction, unit;
  if (!split_number(v, integer, fraction, unit)) throw bad("expected a number of bytes, optionally with a unit (e.g. 64KiB, 32MiB, 10MB)");
  // KiB/MiB/GiB are powers of 1024, kB/MB/GB powers of 1000 (IEC 80000-13). Bare "K"/"M" are
  // rejected: they mean 1000 to some readers and 1024 to others.
  static const std::pair<std::string_view, std::uint64_t> units[] = {
      {"", 1},           {"b", 1},           {"kb", 1'000},       {"mb", 1'000'000},   {"gb", 1'000'000'000},
      {"tb", 1'000'000'000'000}, {"kib", 1ull << 10}, {"mib", 1ull << 20}, {"gib", 1ull << 30}, {"tib", 1ull << 40}};
  std::string unit_lower = lower(unit);
  auto u = std::find_if(std::begin(units), std::end(units), [&](const auto& p) { return p.first == unit_lower; });
  if (u == std::end(units)) throw bad("unknown unit; use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB");
  if (!fraction.empty() && u->second == 1) throw bad("a byte count must be a whole number");
  std::uint64_t bytes = 0;
  if (!scale(integer, fraction, u->second, std::numeric_limits<std::size_t>::max(), bytes)) throw bad("too large");
  return static_cast<std::size_t>(bytes);
}

log_level parse_log_level(const std::string& s) {
  std::string v = lower(trim(s));
  if (v == "trace") return log_level::trace;
  if (v == "debug") return log_level::debug;
  if (v == "info") return log_level::info;
  if (v == "warn" || v == "warning") return log_level::warn;
  if (v == "error") return log_level::error;
  throw std::invalid_argument("invalid log level " + quote_value(s) + ": use trace, debug, info, warn or error");
}

bool is_loopback(const std::string& host) {
  std::string h = lower(host);
  if (h == "localhost" || h == "localhost.") return true;
  in_addr a4{};
  if (inet_pton(AF_INET, h.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  in6_addr a6{};
  if (inet_pton(AF_INET6, h.c_str(), &a6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
    // ::ffff:127.x.x.x is the IPv4 loopback seen through a dual-stack socket.
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
  }
  return false;
}

}  // namespace tollgate
