// tollgate-forecast: backtest (shared/data/series/PROTOCOL.md), forecast, plot and detect on a
// series CSV, a per-request log (CSV/JSONL), the tollgate ledger or the fleet ledger in PostgreSQL.
// See forecast/README.md.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/calendar.hpp"
#include "core/config.hpp"
#include "forecast/aggregate.hpp"
#include "forecast/backtest.hpp"
#include "forecast/forecaster.hpp"
#include "forecast/svg_plot.hpp"
#include "forecast/tool/inputs.hpp"
#include "ledger/report.hpp"

namespace fc = tollgate::forecast;
using json = nlohmann::ordered_json;

namespace {

constexpr const char* usage_text = R"(usage: tollgate-forecast <command> [options]
       tollgate-forecast --version

commands:
  backtest   rolling-origin backtest per shared/data/series/PROTOCOL.md
  forecast   fit on the whole input and print the next horizon
  plot       SVG of actual vs forecast (rolling, fixed lead time) with the 90% band
  detect     spike detection on the test part: detection delay and false alarms
  bench      CPU time of one refresh (one new bin + a forecast) of many synthetic series

input (one of):
  --input FILE --column COL      series CSV (timestamp + value columns, empty cell = gap)
  --requests FILE                per-request log, CSV with header or JSON Lines
  --ledger FILE                  tollgate ledger (SQLite, table calls), opened read-only
  --config FILE                  the ledger of this tollgate configuration (its ledger.path)
  --postgres URL                 the fleet ledger: every instance's calls (ledger.postgres,
                                 table tollgate_calls), a libpq URI or conninfo
  --fleet                        the fleet ledger of the configuration (--config FILE, else as
                                 below): $TOLLGATE_LEDGER_POSTGRES_URL, else ledger.postgres.url
  none of these: the ledger of $TOLLGATE_LEDGER_PATH, else of the configuration tollgate
                 starts with ($TOLLGATE_CONFIG, else config/tollgate.yaml when it is there)
  with --requests, a ledger or the fleet's:
    --value Q      requests | prompt_tokens | completion_tokens | total_tokens | cost_usd
                   (default requests)
    --bin D        bin width, e.g. 1m, 10m, 1h (default 10m; 1m when the records
                   span less than two days)
    --model NAME   only this model (request log `model`, ledger `price_model`)
    --time-unit U  numeric request-log timestamps in s or ms (default: guess)
  with a ledger or the fleet's:
    --team NAME    only this team's calls (column `team`)
    --key ID       only this client key's calls (column `client_key_id`)
    --instance N   the fleet's only: this instance's calls (ledger.postgres.instance)
  with any input:
    --from WHEN    only records (bins of a series CSV) from WHEN, inclusive: YYYY-MM-DD,
                   YYYY-MM (UTC) or RFC 3339 (2026-11-01T10:00:00Z)
    --to WHEN      only those before WHEN: a date or month is inclusive (to its end), an
                   RFC 3339 time exclusive
    --last D       only the last D before now (e.g. 30d, 12h); instead of --from

options:
  --horizons LIST        backtest horizons (default 1h,24h)
  --train-fraction F     backtest/detect/plot split (default 0.7)
  --json                 machine-readable output on stdout
  --all-methods          backtest: also seasonal_naive_week
  --horizon D            forecast: how far ahead (default 24h); plot: lead time shown (default 1 bin);
                         bench: steps forecast per refresh (default 1h)
  --ahead D              plot: forecast appended after the last bin (default 24h)
  --output FILE, -o FILE plot: SVG file (default stdout)
  --log                  plot: logarithmic y axis
  --threshold X          detect: spike threshold, robust z-score on the log scale (default 3)
  --series N             bench: number of series (default 200)
  --bin D                bench: bin width of the synthetic series (default 1m)
  --days D               bench: history fed before timing (default 14)
)";

struct args {
  std::string command;
  std::map<std::string, std::string> opts;
  bool has(const std::string& k) const { return opts.count(k) != 0; }
  std::string get(const std::string& k, const std::string& def = "") const {
    const auto it = opts.find(k);
    return it == opts.end() ? def : it->second;
  }
};

[[noreturn]] void die(const std::string& msg) {
  std::cerr << "tollgate-forecast: " << msg << "\n";
  std::exit(2);
}

args parse_args(int argc, char** argv) {
  args a;
  if (argc < 2) {
    std::cerr << usage_text;
    std::exit(2);
  }
  a.command = argv[1];
  if (a.command == "-h" || a.command == "--help" || a.command == "help") {
    std::cout << usage_text;
    std::exit(0);
  }
  if (a.command == "--version") {
    std::cout << "tollgate-forecast " << TOLLGATE_VERSION << "\n";
    std::exit(0);
  }
  static const char* flags[] = {"--json", "--all-methods", "--help", "--log", "--fleet"};
  // The options each command reads: a misspelt or misplaced one is an error, not ignored
  // (`backtest --horizon 5h` would otherwise run the default horizons without a word).
  static const std::map<std::string, std::vector<std::string>> known = {
      {"backtest", {"horizons", "train-fraction", "all-methods", "json"}},
      {"forecast", {"horizon", "json"}},
      {"plot", {"horizon", "ahead", "output", "log", "train-fraction"}},
      {"detect", {"threshold", "train-fraction", "json"}},
      {"bench", {"series", "days", "bin", "horizon", "json"}},
  };
  static const std::vector<std::string> input_opts = {"input", "column", "requests", "ledger", "config", "postgres", "fleet", "value",
                                                      "bin", "model", "time-unit", "team", "key", "instance", "from", "to", "last"};
  const auto cmd = known.find(a.command);
  if (cmd == known.end()) die("unknown command `" + a.command + "` (see --help)");
  auto accepted = [&](const std::string& name) {
    if (name == "help") return true;
    const auto& own = cmd->second;
    if (std::find(own.begin(), own.end(), name) != own.end()) return true;
    return a.command != "bench" && std::find(input_opts.begin(), input_opts.end(), name) != input_opts.end();
  };
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "-o") k = "--output";  // as most tools that write a file spell it
    if (k == "-h") k = "--help";
    if (k.rfind("--", 0) != 0) die("unexpected argument `" + k + "` (see --help)");
    if (!accepted(k.substr(2))) {
      std::string users;
      for (const auto& [c, opts] : known)
        if (std::find(opts.begin(), opts.end(), k.substr(2)) != opts.end()) users += (users.empty() ? "" : ", ") + c;
      die(users.empty() ? "unknown option " + k + " (see --help)"
                        : "option " + k + " does not apply to " + a.command + " (it is for " + users + ")");
    }
    // Given twice is a mistake (which one was meant?), not "the last one wins".
    if (a.has(k.substr(2))) die("option " + k + " is given twice");
    bool is_flag = false;
    for (const char* f : flags) is_flag = is_flag || k == f;
    if (is_flag) {
      a.opts[k.substr(2)] = "1";
      continue;
    }
    if (i + 1 >= argc) die("option " + k + " needs a value");
    // Never meant (`--team ""` read every team's calls): refused as a missing value.
    if (argv[i + 1][0] == '\0') die("option " + k + " needs a value, not an empty one");
    a.opts[k.substr(2)] = argv[++i];
  }
  if (a.has("help")) {
    std::cout << usage_text;
    std::exit(0);
  }
  return a;
}

// A simple stderr progress bar, drawn only on a terminal.
class progress_bar {
 public:
  explicit progress_bar(const char* label) : label_(label), tty_(::isatty(2) == 1) {}
  ~progress_bar() { done(); }
  void operator()(double frac) {
    if (!tty_) return;
    const int pct = static_cast<int>(std::clamp(frac, 0.0, 1.0) * 100.0);
    if (pct == last_) return;
    last_ = pct;
    const int width = 30, filled = pct * width / 100;
    std::fprintf(stderr, "\r%s [%.*s%*s] %3d%%", label_, filled, "##############################", width - filled, "", pct);
    std::fflush(stderr);
    shown_ = true;
  }
  // Clears the bar's line: the table or JSON that follows starts on a clean line.
  void done() {
    if (shown_) std::fprintf(stderr, "\r%*s\r", 45 + static_cast<int>(std::strlen(label_)), "");
    shown_ = false;
  }

 private:
  const char* label_;
  bool tty_;
  int last_ = -1;
  bool shown_ = false;
};

std::string stem(const std::string& path) {
  std::string s = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
  if (const auto dot = s.rfind('.'); dot != std::string::npos && dot > 0) s.erase(dot);
  return s;
}

struct loaded {
  fc::series data;
  std::string label;   // <file stem>:<column or value>
  std::string input;   // path as given
  std::string column;  // column or value
};

void check_options(const args& a);
std::int64_t duration_option(const std::string& label);

// The records (or bins) forecast: [from_ms, to_ms) of --from, --to and --last, in `tollgate
// report`'s range type (unbounded ends are its defaults).
using time_range = tollgate::time_range;

bool contains(const time_range& r, std::int64_t ms) { return ms >= r.from_ms && ms < r.to_ms; }

// For messages: "" or " from 2026-11-01T00:00:00Z to ...".
std::string range_text(const time_range& r) {
  std::string t;
  if (r.from_ms != time_range{}.from_ms) t += " from " + tollgate::format_rfc3339_utc(r.from_ms);
  if (r.to_ms != time_range{}.to_ms) t += " to " + tollgate::format_rfc3339_utc(r.to_ms);
  return t;
}

// --from and --to as `tollgate report` reads them (dates and months in UTC here, as the tool's
// tables are), or --last D back from now. Checked before the input is read.
time_range window_of(const args& a) {
  time_range w;
  if (a.has("last") && a.has("from")) die("--last and --from both set where the records start; give one");
  const tollgate::calendar utc("UTC");
  try {
    if (a.has("from")) w.from_ms = tollgate::parse_time_bound(a.get("from"), tollgate::range_end::from, utc);
    if (a.has("to")) w.to_ms = tollgate::parse_time_bound(a.get("to"), tollgate::range_end::to, utc);
  } catch (const std::invalid_argument& e) {
    die(std::string("--") + e.what());  // "from: '2026-13-01' is not a valid time: ..."
  }
  if (a.has("last")) {
    const std::int64_t now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    w.from_ms = now_ms - duration_option(a.get("last")) * 1000;
  }
  if (w.from_ms >= w.to_ms) die("--" + std::string(a.has("last") ? "last" : "from") + " must start before --to");
  return w;
}

// Where per-request records come from.
struct record_source {
  enum class kind { request_log, ledger, fleet } is;
  std::string where;  // the file, or the fleet ledger's url (never shown: it may hold a password)
};

// Per-request records of `src` within `window`, binned into the series forecast: l.data,
// l.input and l.column.
void load_records(const args& a, loaded& l, const record_source& src, const time_range& window) {
  using kind = record_source::kind;
  const bool ledger = src.is != kind::request_log;  // the proxy's rows: a ledger's checks and filters
  l.input = src.is == kind::fleet ? "tollgate_calls" : src.where;
  const fc::tool::ledger_filter filter{
      .model = a.get("model"),
      .team = a.get("team"),
      .key = a.get("key"),
      .instance = a.get("instance"),
      .from_ms = window.from_ms,
      .to_ms = window.to_ms};
  // Which records are forecast, for messages: "" or " for model m, team t from ...".
  std::string selection;
  for (const char* o : {"model", "team", "key", "instance"})
    if (a.has(o)) selection += (selection.empty() ? " for " : ", ") + std::string(o) + " " + a.get(o);
  selection += range_text(window);
  const auto q = fc::parse_quantity(a.get("value", "requests"));
  if (!q) die("--value must be requests, prompt_tokens, completion_tokens, total_tokens or cost_usd");
  std::optional<std::int64_t> bin;
  if (a.has("bin")) {
    bin = fc::parse_duration(a.get("bin"));
    if (!bin || 86400 % *bin != 0) die("--bin must divide a day (e.g. 1m, 5m, 10m, 1h)");
  }
  double unit_ms = 0.0;
  if (a.has("time-unit")) {
    const std::string u = a.get("time-unit");
    if (u == "s") unit_ms = 1000.0;
    else if (u == "ms") unit_ms = 1.0;
    else die("--time-unit must be s or ms");
  }
  // The records are folded into bins as they come (row by row or line by line, never held): at
  // the width asked for, or at 1m and 10m until the span picks one.
  const std::string model = a.get("model");
  std::vector<fc::event_bins> widths;
  if (bin) widths.emplace_back(*bin, *q);
  else for (const std::int64_t w : {60, 600}) widths.emplace_back(w, *q);
  bool any_model = false;
  // A request log is filtered here; the databases' queries have already selected these rows
  // (the check passes them all).
  auto fold = [&](const fc::request_event& e) {
    any_model = any_model || !e.model.empty();
    if ((!model.empty() && e.model != model) || !contains(window, e.timestamp_ms)) return;
    for (auto& w : widths) w.add(e);
  };
  const fc::tool::events_read ev = src.is == kind::ledger ? fc::tool::load_ledger(src.where, fold, filter)
                                   : src.is == kind::fleet ? fc::tool::load_fleet(src.where, fold, filter)
                                                           : fc::tool::load_request_log(src.where, unit_ms, fold);
  if (!ev.error.empty()) die(ev.error);
  if (!ev.note.empty()) std::cerr << "note: " << ev.note << "\n";
  // The amount fields, checked only for the quantity summed.
  auto check = [&](const fc::tool::field_check& c, const char* what, const char* names, const char* limit) {
    if (!c.present) die(l.input + ": no " + what + " field to sum (" + names + ")");
    if (c.bad_line)
      die(l.input + (src.is == kind::ledger ? ": calls row " : src.is == kind::fleet ? " id " : ":") + std::to_string(c.bad_line) +
          ": " + what + " `" + c.bad_text + "` is not a number from 0 to " + limit);
    if (c.empty)
      std::cerr << "note: " << l.input << ": " << c.empty << " of " << ev.records << " records have no " << what
                << ", read as 0\n";
  };
  constexpr const char* prompt_names = "prompt_tokens, input_tokens, input_length, ContextTokens or Request tokens";
  constexpr const char* completion_names =
      "completion_tokens, output_tokens, output_length, GeneratedTokens or Response tokens";
  if (*q == fc::quantity::prompt_tokens || *q == fc::quantity::total_tokens)
    check(ev.prompt, "prompt tokens", prompt_names, "1e12");
  if (*q == fc::quantity::completion_tokens || *q == fc::quantity::total_tokens)
    check(ev.completion, "completion tokens", completion_names, "1e12");
  if (*q == fc::quantity::cost_usd) check(ev.cost, "cost", "cost_usd or cost", "1e9");
  if (!ledger && a.has("model") && !any_model) die(l.input + ": --model " + model + ": no record names a model (field `model`)");
  // Default bin: 10 minutes, or 1 minute for records spanning less than two days (Azure's and
  // Mooncake's one-hour traces would otherwise be six bins).
  const fc::event_bins& binned = bin || widths[0].bins_spanned() < 2 * 1440 ? widths[0] : widths[1];
  bin = binned.bin_s();
  const std::string bin_label = a.has("bin") ? a.get("bin") : std::to_string(*bin / 60) + "m";
  if (binned.records() == 0) die(l.input + ": no records" + selection);
  l.data = binned.result();
  // An empty result is no records or too long a span.
  if (l.data.values.empty() && binned.bins_spanned() > fc::max_series_bins)
    die(l.input + ": the records span " + std::to_string(binned.bins_spanned()) + " bins of " + bin_label +
        ", more than " + std::to_string(fc::max_series_bins) +
        ": check for stray timestamps (a zero, a wrong --time-unit) or use a wider --bin");
  // A live proxy's ledger ends in the bin now in progress: its count is partial and would read
  // as a drop in traffic, so it is left out. So are edge bins the records cover only in part
  // (a trace cut mid-minute, a proxy started or stopped mid-minute: fc::edge_bins), as
  // long as a few bins remain.
  bool last_dropped = false;
  if (ledger && !l.data.values.empty() &&
      l.data.timestamp(l.data.values.size() - 1) + l.data.bin_s > static_cast<std::int64_t>(std::time(nullptr))) {
    l.data.values.pop_back();
    last_dropped = true;
    std::cerr << "note: " << l.input << ": the last " << bin_label << " bin is still in progress and is left out\n";
  }
  const auto edges = binned.edges();
  auto covered = [](double share) { return std::to_string(static_cast<int>(std::lround(100.0 * share))) + " %"; };
  if (edges.last_partial && !last_dropped && l.data.values.size() > 3) {
    l.data.values.pop_back();
    std::cerr << "note: " << l.input << ": the records end " << covered(edges.last_covered) << " into the last "
              << bin_label << " bin, which is left out (its count would read as a drop)\n";
  }
  if (edges.first_partial && l.data.values.size() > 3) {
    l.data.values.erase(l.data.values.begin());
    l.data.start_s += l.data.bin_s;
    std::cerr << "note: " << l.input << ": the records start " << covered(1.0 - edges.first_covered)
              << " into the first " << bin_label << " bin, which is left out\n";
  }
  // A new proxy's ledger, or a short log at a wide bin: say what there is and what would do.
  if (l.data.values.size() < 2)
    die(l.input + ": fewer than two bins of data" + selection + " (" + std::to_string(l.data.values.size()) +
        " complete " + bin_label + " bin" + (l.data.values.size() == 1 ? "" : "s") +
        "); a forecast needs two: " + (*bin > 60 ? "give a smaller --bin, or " : "") + "wait for more history");
  l.column = fc::quantity_name(*q);
}

// A series CSV (--input, --column), the bins of `window`: l.data, l.input and l.column.
void load_series(const args& a, loaded& l, const time_range& window) {
  if (!a.has("column")) die("--input needs --column");
  auto r = fc::tool::load_series_file(a.get("input"), a.get("column"));
  if (!r.data) die(r.error);
  // A series CSV has its bins and its value column: --bin may only confirm the file's width
  // (other bins would need the raw records); the record filters do not apply.
  if (a.has("bin") && fc::parse_duration(a.get("bin")) != r.data->bin_s)
    die("--bin " + a.get("bin") + ": " + a.get("input") + " has bins of " + std::to_string(r.data->bin_s) +
        " s; re-binning needs the per-request records (--requests or --ledger)");
  for (const char* o : {"value", "model", "time-unit"})
    if (a.has(o))
      std::cerr << "note: --" << o << " applies to --requests and --ledger; ignored for a series CSV (--column picks the value)\n";
  // The window keeps the bins that start in it.
  auto& values = r.data->values;
  std::size_t first = 0, end = values.size();
  while (first < end && !contains(window, r.data->timestamp(first) * 1000)) ++first;
  while (end > first && !contains(window, r.data->timestamp(end - 1) * 1000)) --end;
  if (end - first < 2)
    die(a.get("input") + ": fewer than two bins" + range_text(window) + " (" + std::to_string(end - first) +
        "); a forecast needs two");
  r.data->start_s = r.data->timestamp(first);
  values.erase(values.begin() + static_cast<std::ptrdiff_t>(end), values.end());
  values.erase(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(first));
  // Counts and amounts per bin: a negative one reads as 0 (PROTOCOL.md: log1p(max(x, 0))), a
  // huge one is not a count (and would overflow the forecast's sums).
  std::size_t negative = 0, first_negative = 0;
  for (std::size_t i = 0; i < r.data->values.size(); ++i) {
    const double v = r.data->values[i];
    if (v > 1e15)
      die(a.get("input") + ": the value at timestamp " + std::to_string(r.data->timestamp(i)) + " is " +
          json(v).dump() + ", above 1e15: not a count or amount per bin");
    if (v < 0 && negative++ == 0) first_negative = i;
  }
  if (negative > 0)
    std::cerr << "note: " << a.get("input") << ": " << negative << " negative values (the first at timestamp "
              << r.data->timestamp(first_negative) << ") are read as 0\n";
  l.data = std::move(*r.data);
  l.input = a.get("input");
  l.column = a.get("column");
}

// The configuration tollgate starts with, as `tollgate report` finds it: --config FILE, else
// $TOLLGATE_CONFIG, else config/tollgate.yaml when it is there (`path` names it); none when no
// file is named and that one is not there. One that does not load is a file:line error.
std::optional<tollgate::config> proxy_config(const args& a, std::string& path) {
  const char* env_config = std::getenv("TOLLGATE_CONFIG");
  path = a.has("config") ? a.get("config") : tollgate::default_config_path();
  std::error_code ec;
  if (!a.has("config") && !(env_config && *env_config) && !std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  try {
    return tollgate::load_config_file(path);
  } catch (const std::exception& e) {
    die(std::string("configuration error: ") + e.what());
  }
}

// A setting of the proxy's as the proxy itself would take it: the variable `env` wins over the
// configuration's `key`. Says on stderr which was read (`show`: with the value; a url may hold a
// password). None when neither is there.
std::optional<std::string> proxy_setting(const args& a, const char* env, const char* key,
                                         std::string (*get)(const tollgate::config&), const char* what, bool show) {
  std::string path;
  const auto cfg = proxy_config(a, path);
  if (const char* v = std::getenv(env); v && *v) {
    std::cerr << "note: reading " << what << (show ? " " + std::string(v) : "") << " ($" << env
              << (cfg ? ", which overrides " + path + "'s " + key : std::string()) << ")\n";
    return std::string(v);
  }
  if (!cfg) return std::nullopt;
  std::string value = get(*cfg);
  if (value.empty()) die(path + ": no " + key);
  std::cerr << "note: reading " << what << (show ? " " + value : "") << " (" << key << " of " << path << ")\n";
  return value;
}

// The ledger read when the command line names no input: $TOLLGATE_LEDGER_PATH, else the
// configuration's ledger.path: the ledger the proxy started with that configuration writes.
std::optional<std::string> configured_ledger(const args& a) {
  return proxy_setting(a, "TOLLGATE_LEDGER_PATH", "ledger.path", [](const tollgate::config& c) { return c.ledger_path; },
                       "the ledger", true);
}

// --fleet: the fleet ledger the proxy ships to, $TOLLGATE_LEDGER_POSTGRES_URL, else the
// configuration's ledger.postgres.url; the url stays off the command line (and out of `ps`).
std::string configured_fleet(const args& a) {
  const auto url = proxy_setting(
      a, "TOLLGATE_LEDGER_POSTGRES_URL", "ledger.postgres.url",
      [](const tollgate::config& c) { return c.ledger_postgres.url; }, "the fleet ledger", false);
  if (!url)
    die("--fleet: no configuration names a fleet ledger: give the proxy's --config FILE (its ledger.postgres.url), set "
        "TOLLGATE_LEDGER_POSTGRES_URL, or give --postgres URL");
  return *url;
}

loaded load_input(const args& a) {
  check_options(a);
  const time_range window = window_of(a);
  loaded l;
  // --config names an input by itself (its ledger), or the configuration --fleet reads.
  if (a.has("input") + a.has("requests") + a.has("ledger") + a.has("postgres") + a.has("fleet") +
          (a.has("config") && !a.has("fleet")) > 1)
    die("give one input: --input FILE --column COL, --requests FILE, --ledger FILE, --config FILE (its ledger), "
        "--postgres URL or --fleet");
  std::optional<std::string> ledger, fleet;
  if (a.has("ledger")) ledger = a.get("ledger");
  else if (a.has("postgres")) fleet = a.get("postgres");
  else if (a.has("fleet")) fleet = configured_fleet(a);
  else if (!a.has("input") && !a.has("requests")) ledger = configured_ledger(a);
  // Not ignored with a note as the other record options are for a series CSV: a forecast of
  // all traffic taken for one team's would be wrong without a word on stdout.
  for (const auto& [o, column] : {std::pair{"team", "team"}, std::pair{"key", "client_key_id"}})
    if (a.has(o) && !ledger && !fleet)
      die(std::string("--") + o + " applies to the ledger only (the ledger's " + column + " column)");
  // One instance's calls: a column of the fleet table only (a ledger file is one instance's).
  if (a.has("instance") && !fleet) die("--instance applies to the fleet ledger only (--postgres URL or --fleet)");
  if (a.has("input")) {
    load_series(a, l, window);
  } else if (a.has("requests") || ledger || fleet) {
    using kind = record_source::kind;
    const record_source src = ledger  ? record_source{kind::ledger, *ledger}
                              : fleet ? record_source{kind::fleet, *fleet}
                                      : record_source{kind::request_log, a.get("requests")};
    load_records(a, l, src, window);
  } else {
    die("no input: give --input FILE --column COL, --requests FILE, --ledger FILE, the proxy's --config FILE, --postgres URL "
        "(or set TOLLGATE_LEDGER_PATH)");
  }
  l.label = stem(l.input) + ":" + l.column;
  return l;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const std::size_t c = s.find(',', pos);
    const std::string item = s.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
    if (!item.empty()) out.push_back(item);
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  return out;
}

double train_fraction(const args& a) {
  const std::string s = a.get("train-fraction", "0.7");
  char* end = nullptr;
  const double f = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || *end != '\0' || !(f > 0.0 && f < 1.0)) die("--train-fraction must be a number in (0, 1)");
  return f;
}

// JSON text; strings that are not valid UTF-8 (a Latin-1 column or file name) get U+FFFD
// instead of aborting the output.
std::string dump(const json& j, int indent = -1) { return j.dump(indent, ' ', false, json::error_handler_t::replace); }

json opt_number(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

std::string utc_iso(std::int64_t ts) {
  const std::int64_t days = (ts >= 0 ? ts : ts - 86399) / 86400, secs = ts - days * 86400;
  const std::int64_t zd = days + 719468, era = (zd >= 0 ? zd : zd - 146096) / 146097;
  const auto doe = static_cast<unsigned>(zd - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
  const long long y = static_cast<long long>(yoe) + era * 400 + (m <= 2);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04lld-%02u-%02uT%02d:%02d:%02dZ", y, m, d, static_cast<int>(secs / 3600),
                static_cast<int>(secs % 3600 / 60), static_cast<int>(secs % 60));
  return buf;
}

// Steps a horizon may have: 69 days of minutes, 1.9 years of 10-minute bins. A forecast holds
// every member's path over the horizon, so `--horizon 2147483648h` must be refused, not tried.
constexpr std::size_t max_steps = 100'000;

std::int64_t duration_option(const std::string& label) {
  const auto secs = fc::parse_duration(label);
  if (!secs) die("duration `" + label + "` must be a positive whole number and a unit: s, m, h or d (e.g. 90m, 24h)");
  return *secs;
}

std::size_t steps_of(const std::string& label, std::int64_t bin_s) {
  const std::int64_t secs = duration_option(label);
  if (secs % bin_s != 0) {
    // Name the bin as a duration the options take, so the fix is in the message (a daily series
    // with backtest's default horizons, 1h and 24h: "give a multiple of 1d").
    const std::int64_t units[] = {86'400, 3'600, 60, 1};
    const char* names[] = {"d", "h", "m", "s"};
    std::size_t u = 0;
    while (bin_s % units[u] != 0) ++u;
    die("duration `" + label + "` is not a whole number of " + std::to_string(bin_s) + " s bins (the input's bin): give a multiple of " +
        std::to_string(bin_s / units[u]) + names[u]);
  }
  const auto steps = static_cast<std::size_t>(secs / bin_s);
  if (steps > max_steps)
    die("duration `" + label + "` is " + std::to_string(steps) + " bins of " + std::to_string(bin_s) + " s; at most " +
        std::to_string(max_steps) + " are forecast");
  return steps;
}

// A strict number for an option: the whole text, finite.
double number_option(const args& a, const std::string& name, const std::string& def) {
  const std::string s = a.get(name, def);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v)) die("--" + name + " must be a number, not `" + s + "`");
  return v;
}

// The options whose check needs no input, checked before the input is read: a misspelt
// duration should not wait for a month of ledger to be read first. (Whether a duration is a
// whole number of bins is known only once the input's bin is.)
void check_options(const args& a) {
  for (const auto& h : split_list(a.get("horizons"))) (void)duration_option(h);
  for (const char* o : {"horizon", "ahead"})
    if (a.has(o)) (void)duration_option(a.get(o));
  if (a.has("train-fraction")) (void)train_fraction(a);
  if (a.has("threshold")) (void)number_option(a, "threshold", "3");
}

int cmd_backtest(const args& a) {
  const loaded in = load_input(a);
  fc::backtest_options opt;
  opt.horizons = split_list(a.get("horizons", "1h,24h"));
  if (opt.horizons.empty()) die("--horizons must list at least one horizon, e.g. 1h,24h");
  for (const auto& h : opt.horizons) (void)steps_of(h, in.data.bin_s);
  opt.train_fraction = train_fraction(a);
  opt.extra_methods = a.has("all-methods");
  progress_bar bar("backtest");
  opt.progress = [&bar](double f) { bar(f); };
  const fc::backtest_outcome out = fc::run_backtest(in.data, opt);
  bar.done();
  if (!out.report) die(in.input + ": " + out.error);
  const fc::backtest_report& r = *out.report;
  // All dashes say nothing to someone backtesting a one-hour trace: say why.
  const std::size_t per_day = static_cast<std::size_t>(86400 / r.bin_seconds);
  if (!r.mase_scale)
    std::cerr << "note: no MASE or pinball loss: their scale is the daily seasonal naive's error on the training "
              << "part, which " << (r.n_train <= per_day ? "needs more than a day of training bins (here " +
                                                                std::to_string(r.n_train) + " of " + std::to_string(per_day) + ")"
                                                          : std::string("has no observed pair of bins a day apart"))
              << "; sMAPE and coverage are still scored\n";
  for (const auto& m : r.results)
    if (m.method == "tollgate" && m.n_origins == 0)
      std::cerr << "note: horizon " << m.horizon << " has no origin: the test part (" << r.n - r.n_train
                << " bins) is shorter than the horizon; give shorter --horizons or more data\n";
  if (a.has("json")) {
    json j;
    j["series"] = in.label;
    j["input"] = in.input;
    j["column"] = in.column;
    j["bin_seconds"] = r.bin_seconds;
    j["n"] = r.n;
    j["n_train"] = r.n_train;
    j["n_missing"] = r.n_missing;
    j["mase_scale"] = opt_number(r.mase_scale);
    j["results"] = json::array();
    for (const auto& m : r.results)
      j["results"].push_back({{"horizon", m.horizon}, {"method", m.method}, {"mase", opt_number(m.mase)},
                              {"smape", opt_number(m.smape)}, {"coverage90", opt_number(m.coverage90)},
                              {"pinball", opt_number(m.pinball)}, {"n_origins", m.n_origins},
                              {"n_points", m.n_points}, {"n_points_prob", m.n_points_prob}});
    std::cout << dump(j) << "\n";
    return 0;
  }
  auto num = [](const std::optional<double>& v, const char* f) {
    char buf[32];
    if (!v || !std::isfinite(*v)) return std::string("-");
    std::snprintf(buf, sizeof buf, f, *v);
    return std::string(buf);
  };
  std::printf("%s  bin %llds  n %zu  train %zu  missing %zu  scale %s\n", in.label.c_str(),
              static_cast<long long>(r.bin_seconds), r.n, r.n_train, r.n_missing, num(r.mase_scale, "%.6g").c_str());
  std::printf("%-8s %-20s %9s %9s %9s %9s %8s %8s\n", "horizon", "method", "MASE", "sMAPE%", "cover90", "pinball",
              "origins", "points");
  for (const auto& m : r.results)
    std::printf("%-8s %-20s %9s %9s %9s %9s %8zu %8zu\n", m.horizon.c_str(), m.method.c_str(), num(m.mase, "%.4f").c_str(),
                num(m.smape, "%.2f").c_str(), num(m.coverage90, "%.4f").c_str(), num(m.pinball, "%.4f").c_str(),
                m.n_origins, m.n_points);
  return 0;
}

// Feeds the whole series into a forecaster (with a progress bar on long inputs).
fc::forecaster fit_all(const fc::series& s, std::size_t horizon) {
  fc::forecaster_config cfg;
  cfg.bin_s = s.bin_s;
  cfg.max_horizon = std::max<std::size_t>(horizon, 1);
  cfg.unit = fc::suggest_unit(s.values);
  fc::forecaster f(cfg);
  progress_bar bar("fitting");
  for (std::size_t i = 0; i < s.size(); ++i) {
    f.observe(s.timestamp(i), s.values[i]);
    if (s.size() > 20000 && i % 2048 == 0) bar(static_cast<double>(i) / static_cast<double>(s.size()));
  }
  return f;
}

int cmd_forecast(const args& a) {
  const loaded in = load_input(a);
  const std::size_t h = steps_of(a.get("horizon", "24h"), in.data.bin_s);
  const fc::forecaster f = fit_all(in.data, h);
  const fc::forecast_result r = f.forecast(h);
  if (a.has("json")) {
    json j;
    j["series"] = in.label;
    j["bin_seconds"] = in.data.bin_s;
    j["origin"] = r.origin_s;
    j["warm"] = r.warm;
    j["quantile_levels"] = fc::quantile_levels;
    j["steps"] = json::array();
    for (const auto& s : r.steps)
      j["steps"].push_back({{"timestamp", s.timestamp_s}, {"point", s.point}, {"quantiles", s.quantiles}});
    std::cout << dump(j) << "\n";
    return 0;
  }
  std::printf("%s  bin %llds  last bin %s%s\n", in.label.c_str(), static_cast<long long>(in.data.bin_s),
              utc_iso(r.origin_s).c_str(), r.warm ? "" : "  (cold start: wide prior intervals)");
  std::printf("%5s  %-20s %12s %12s %12s %12s %12s %12s\n", "step", "bin start (UTC)", "point", "q05", "q10", "q50",
              "q90", "q95");
  double total = 0.0;
  for (std::size_t k = 0; k < r.steps.size(); ++k) {
    const auto& s = r.steps[k];
    total += s.point;
    std::printf("%5zu  %-20s %12.6g %12.6g %12.6g %12.6g %12.6g %12.6g\n", k + 1, utc_iso(s.timestamp_s).c_str(),
                s.point, s.quantiles[0], s.quantiles[1], s.quantiles[2], s.quantiles[3], s.quantiles[4]);
  }
  std::printf("sum of point forecasts over the horizon: %.6g\n", total);
  return 0;
}

int cmd_plot(const args& a) {
  const loaded in = load_input(a);
  const fc::series& s = in.data;
  const std::size_t lead = a.has("horizon") ? steps_of(a.get("horizon"), s.bin_s) : 1;
  const std::size_t ahead = steps_of(a.get("ahead", "24h"), s.bin_s);
  const std::size_t from = static_cast<std::size_t>(std::floor(train_fraction(a) * static_cast<double>(s.size())));
  // The rolling forecast for bin i is made at bin i - lead: none exists for bins before `lead`.
  if (lead >= s.size())
    die("--horizon " + a.get("horizon") + " is " + std::to_string(lead) + " bins, as long as the whole series (" +
        std::to_string(s.size()) + "): no rolling forecast to draw");
  if (lead > from)
    std::cerr << "note: --horizon " << a.get("horizon") << " is " << lead << " bins: the rolling forecast starts "
              << lead - from << " bins into the " << s.size() - from << " shown\n";
  fc::forecaster_config cfg;
  cfg.bin_s = s.bin_s;
  cfg.max_horizon = std::max(lead, ahead);
  cfg.unit = fc::suggest_unit(s.values, from);
  fc::forecaster f(cfg);
  std::vector<fc::plot_point> pts;
  for (std::size_t i = from; i < s.size() + ahead; ++i) {
    const double nan = std::nan("");
    pts.push_back({s.timestamp(i), i < s.size() ? s.values[i] : nan, nan, nan, nan});
  }
  progress_bar bar("plot");
  for (std::size_t i = 0; i < s.size(); ++i) {
    f.observe(s.timestamp(i), s.values[i]);
    const std::size_t target = i + lead;
    if (target >= from && target < s.size()) {
      const auto r = f.forecast(lead);
      auto& p = pts[target - from];
      p.forecast = r.steps.back().point;
      p.lower = r.steps.back().quantiles[fc::q05];
      p.upper = r.steps.back().quantiles[fc::q95];
    }
    if (s.size() > 5000 && i % 1024 == 0) bar(static_cast<double>(i) / static_cast<double>(s.size()));
  }
  bar.done();
  const auto r = f.forecast(ahead);
  for (std::size_t k = 0; k < r.steps.size(); ++k) {
    auto& p = pts[s.size() - from + k];
    p.forecast = r.steps[k].point;
    p.lower = r.steps[k].quantiles[fc::q05];
    p.upper = r.steps[k].quantiles[fc::q95];
  }
  fc::plot_options po;
  po.title = in.label;
  po.subtitle = "rolling " + std::to_string(lead) + "-bin-ahead forecast over the last " +
                std::to_string(s.size() - from) + " bins, then the next " + std::to_string(ahead) + " bins (" +
                std::to_string(s.bin_s) + " s bins); band = 5%..95%";
  po.marker_s = s.timestamp(s.size() - 1) + s.bin_s;
  po.log_scale = a.has("log");
  po.log_unit = cfg.unit;
  const std::string svg = fc::render_svg(pts, po);
  if (!a.has("output") || a.get("output") == "-") {
    std::cout << svg;
  } else {
    std::ofstream out(a.get("output"));
    if (!out || !(out << svg)) die(a.get("output") + ": cannot write");
    std::cerr << "wrote " << a.get("output") << "\n";
  }
  return 0;
}

int cmd_detect(const args& a) {
  const loaded in = load_input(a);
  fc::detection_options opt;
  opt.train_fraction = train_fraction(a);
  if (a.has("threshold")) {
    opt.forecaster.anomaly_threshold = number_option(a, "threshold", "3");
    if (!(opt.forecaster.anomaly_threshold > 0.0)) die("--threshold must be above 0 (a robust z-score; default 3)");
  }
  const fc::detection_report r = fc::evaluate_detection(in.data, opt);
  json j;
  j["series"] = in.label;
  j["test_bins"] = r.test_bins;
  j["test_days"] = r.test_days;
  j["bursts"] = json::array();
  for (std::size_t i = 0; i < r.burst_timestamps.size(); ++i)
    j["bursts"].push_back({{"timestamp", r.burst_timestamps[i]}, {"utc", utc_iso(r.burst_timestamps[i])},
                           {"delay_bins", r.burst_delays_bins[i] < 0 ? json(nullptr) : json(r.burst_delays_bins[i])}});
  j["bursts_flagged_in_first_bin"] = r.bursts_in_first_bin;
  j["onsets"] = r.onsets;
  j["flagged_bins"] = r.flagged_bins;
  j["alarm_episodes"] = r.alarm_episodes;
  j["false_alarm_episodes"] = r.false_alarm_episodes;
  j["false_alarms_per_day"] = r.false_alarms_per_day;
  j["episodes_outside_top_bursts"] = r.episodes_outside_top_bursts;
  j["episodes_outside_top_bursts_per_day"] = r.episodes_outside_top_bursts_per_day;
  std::cout << dump(j, a.has("json") ? -1 : 2) << "\n";
  return 0;
}

// Synthetic traffic for the bench: daily cycle, weekly dip, noise and rare bursts.
double synthetic(std::size_t series, std::size_t i, std::size_t m, std::uint64_t& rng) {
  rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
  const double u = static_cast<double>(rng >> 11) * (1.0 / 9007199254740992.0);
  const double phase = 2.0 * 3.14159265358979 * static_cast<double>(i % m) / static_cast<double>(m);
  const double weekly = (i / m) % 7 >= 5 ? 0.6 : 1.0;
  const double base = (50.0 + static_cast<double>(series % 17) * 20.0) * weekly * (1.5 + std::sin(phase));
  return std::floor(base * (0.8 + 0.4 * u) * (u > 0.999 ? 20.0 : 1.0));
}

int cmd_bench(const args& a) {
  const auto bin = fc::parse_duration(a.get("bin", "1m"));
  if (!bin || 86400 % *bin != 0) die("--bin must divide a day");
  const std::size_t horizon = steps_of(a.get("horizon", "1h"), *bin);
  const double series_opt = number_option(a, "series", "200");
  if (series_opt < 1 || series_opt > 100000 || series_opt != std::floor(series_opt))
    die("--series must be a whole number from 1 to 100000");
  const auto n_series = static_cast<std::size_t>(series_opt);
  const double days = number_option(a, "days", "14");
  if (!(days > 0.0 && days <= 366.0)) die("--days must be a number of days above 0 and at most 366");
  const std::size_t m = static_cast<std::size_t>(86400 / *bin);
  const std::size_t warm = static_cast<std::size_t>(days * static_cast<double>(m));
  fc::forecaster_config cfg;
  cfg.bin_s = *bin;
  cfg.max_horizon = horizon;
  std::vector<fc::forecaster> fs;
  std::uint64_t rng = 42;
  progress_bar bar("warming");
  for (std::size_t s = 0; s < n_series; ++s) {
    fs.emplace_back(cfg);
    for (std::size_t i = 0; i < warm; ++i) fs.back().observe(1736121600 + static_cast<std::int64_t>(i) * *bin, synthetic(s, i, m, rng));
    bar(static_cast<double>(s + 1) / static_cast<double>(n_series));
  }
  bar.done();
  const std::size_t rounds = 20;
  double sink = 0.0;
  const std::clock_t c0 = std::clock();
  for (std::size_t r = 0; r < rounds; ++r)
    for (std::size_t s = 0; s < n_series; ++s) {
      const std::size_t i = warm + r;
      fs[s].observe(1736121600 + static_cast<std::int64_t>(i) * *bin, synthetic(s, i, m, rng));
      sink += fs[s].forecast(horizon).steps.back().point;
    }
  const double cpu_ms = 1000.0 * static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC / static_cast<double>(rounds);
  std::size_t bytes = 0;
  for (const auto& f : fs) bytes += f.memory_bytes();
  json j;
  j["series"] = n_series;
  j["bin_seconds"] = *bin;
  j["horizon_steps"] = horizon;
  j["history_bins"] = warm;
  j["refresh_cpu_ms"] = cpu_ms;
  j["per_series_cpu_us"] = 1000.0 * cpu_ms / static_cast<double>(n_series);
  j["memory_bytes_per_series"] = bytes / std::max<std::size_t>(n_series, 1);
  j["checksum"] = sink;
  std::cout << dump(j, a.has("json") ? -1 : 2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const args a = parse_args(argc, argv);
  try {
    if (a.command == "backtest") return cmd_backtest(a);
    if (a.command == "forecast") return cmd_forecast(a);
    if (a.command == "plot") return cmd_plot(a);
    if (a.command == "detect") return cmd_detect(a);
    if (a.command == "bench") return cmd_bench(a);
  } catch (const std::exception& e) {
    die(e.what());
  }
  die("unknown command `" + a.command + "` (see --help)");
}
