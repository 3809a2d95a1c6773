// `tollgate report` (report_cli.hpp): argument parsing and the aligned-table printer over the
// spend and what-if queries of report.hpp, so the offline figures are the admin API's figures.
#include "ledger/report_cli.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>

#include "core/config.hpp"
#include "core/pricing.hpp"
#include "ledger/report.hpp"

namespace tollgate {

namespace {

constexpr const char* kUsage =
    R"(Usage: tollgate report [--ledger FILE | --fleet | --postgres URL [--instance NAME]]
                       [--month YYYY-MM | --from WHEN [--to WHEN]]
                       [--by day,model,team,key,user,tier,provider,instance] [--timezone ZONE]
                       [--csv | --json] [[--whatif MODEL] [--swap FROM=TO ...] [--prices FILE]]
                       [--config FILE]

Prints the spend recorded in a ledger file: the figures of the admin API's /admin/spend (and,
with --whatif, /admin/whatif), as an aligned table, CSV or JSON. Amounts are unrounded. With
--fleet or --postgres, the same report over the fleet ledger in PostgreSQL: every instance's
calls (ledger.postgres).

Options:
  --ledger FILE      the SQLite ledger (default: $TOLLGATE_LEDGER_PATH, else the
                     configuration's ledger.path)
  --fleet            the fleet ledger the proxy ships to: $TOLLGATE_LEDGER_POSTGRES_URL, else
                     the configuration's ledger.postgres.url (kept off the command line, where
                     other users can read it)
  --postgres URL     the fleet ledger at this libpq URI or conninfo (table tollgate_calls)
  --instance NAME    with --fleet or --postgres: one instance's calls (its
                     ledger.postgres.instance)
  --month YYYY-MM    one calendar month in --timezone
  --from WHEN        start, inclusive: YYYY-MM-DD (local midnight), YYYY-MM, or RFC 3339
                     (2026-11-01T10:00:00Z, 2026-11-01T10:00:00+01:00)
  --to WHEN          end: a date or month is inclusive (up to the end of that local day or
                     month), an RFC 3339 time is exclusive
                     Without --month, --from or --to: every call in the ledger.
  --by LIST          group by day, model, team, key, user (the end user a request named),
                     tier (the processing tier), provider and/or (fleet only) instance,
                     in the order given as columns
                     (comma-separated or repeated); without it, the total only
  --timezone ZONE    IANA zone of dates, months and the day column (default: UTC)
  --csv, --json      machine-readable output instead of the table
  --whatif MODEL     re-price the period's tokens at MODEL's prices, per original model
  --swap FROM=TO     re-price the calls of model FROM at model TO's prices (repeatable; with
                     --whatif, the other models go to MODEL, else they keep their own)
  --prices FILE      price table for --whatif and --swap (default: the configuration's, as
                     the proxy loads it: pricing.file and the LiteLLM catalogue); an edited
                     copy answers "what if prices changed"
  --config FILE      the configuration whose ledger and price table are the defaults: the
                     one tollgate starts with (default: $TOLLGATE_CONFIG, else
                     config/tollgate.yaml when it is there)
  -h, --help         print this help
)";

struct usage_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

enum class output_format { table, csv, json };

struct options {
  std::string ledger;
  bool ledger_given = false;  // --ledger (else ledger is $TOLLGATE_LEDGER_PATH or empty)
  bool fleet = false;         // --fleet
  std::optional<std::string> postgres, instance;
  std::optional<std::string> month, from, to, whatif;
  std::map<std::string, std::string> swap;  // --swap FROM=TO
  std::optional<std::string> prices, config;
  std::string timezone = "UTC";
  std::vector<spend_group> group_by;
  output_format format = output_format::table;
  bool help = false;
};

options parse_args(const std::vector<std::string>& args) {
  options o;
  if (const char* env = std::getenv("TOLLGATE_LEDGER_PATH"); env != nullptr) o.ledger = env;
  std::string by;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string name = args[i];
    std::optional<std::string> inline_value;
    if (const auto eq = name.find('='); name.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name.resize(eq);
    }
    // An empty value is never meant (`--instance ""` reported an instance of no name; `--postgres
    // ""` connected to libpq's defaults): refused as a missing one.
    const auto value = [&]() -> std::string {
      if (!inline_value && i + 1 >= args.size()) throw usage_error(name + " needs a value");
      std::string v = inline_value ? *inline_value : args[++i];
      if (v.empty()) throw usage_error(name + " needs a value, not an empty one");
      return v;
    };
    const auto flag = [&] {
      if (inline_value) throw usage_error(name + " takes no value");
    };
    if (name == "-h" || name == "--help") {
      flag();
      o.help = true;
    } else if (name == "--ledger") {
      o.ledger = value();
      o.ledger_given = true;
    } else if (name == "--fleet") {
      flag();
      o.fleet = true;
    } else if (name == "--postgres") {
      o.postgres = value();
    } else if (name == "--instance") {
      o.instance = value();
    } else if (name == "--month") {
      o.month = value();
    } else if (name == "--from") {
      o.from = value();
    } else if (name == "--to") {
      o.to = value();
    } else if (name == "--by" || name == "--group-by") {
      (by += ',') += value();
    } else if (name == "--timezone") {
      o.timezone = value();
    } else if (name == "--csv") {
      flag();
      o.format = output_format::csv;
    } else if (name == "--json") {
      flag();
      o.format = output_format::json;
    } else if (name == "--whatif") {
      o.whatif = value();
    } else if (name == "--swap") {
      const std::string v = value();
      const auto eq = v.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == v.size())
        throw usage_error("--swap takes FROM=TO (two model ids), got '" + v + "'");
      o.swap[v.substr(0, eq)] = v.substr(eq + 1);
    } else if (name == "--prices") {
      o.prices = value();
    } else if (name == "--config") {
      o.config = value();
    } else {
      throw usage_error("unknown argument '" + args[i] + "'");
    }
  }
  if (o.help) return o;
  if (o.month && (o.from || o.to)) throw usage_error("--month cannot be combined with --from/--to");
  if (o.ledger_given + o.fleet + o.postgres.has_value() > 1)
    throw usage_error("give one ledger: --ledger FILE, --fleet or --postgres URL");
  const bool fleet = o.fleet || o.postgres;
  if (o.instance && !fleet)
    throw usage_error("--instance applies to the fleet ledger only (--fleet or --postgres URL): a ledger file is one "
                      "instance's");
  o.group_by = parse_group_by(by, fleet);
  if ((o.whatif || !o.swap.empty()) && !o.group_by.empty())
    throw usage_error("--whatif and --swap report per original model; drop --by");
  return o;
}

time_range range_of(const options& o, const calendar& cal) {
  if (o.month) return parse_month(*o.month, cal);
  time_range r;
  if (o.from) r.from_ms = parse_time_bound(*o.from, range_end::from, cal);
  if (o.to) r.to_ms = parse_time_bound(*o.to, range_end::to, cal);
  if (r.from_ms >= r.to_ms) throw usage_error("--from must be before --to");
  return r;
}

std::string shortest(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::string period_text(const time_range& r) {
  const std::string from = r.from_ms == std::numeric_limits<std::int64_t>::min() ? "the first call"
                                                                                 : format_rfc3339_utc(r.from_ms);
  const std::string to = r.to_ms == std::numeric_limits<std::int64_t>::max() ? "the last call"
                                                                             : format_rfc3339_utc(r.to_ms);
  return "from " + from + " to " + to;
}

// Left-aligned text columns first, right-aligned numbers after; a rule above the last row.
void print_table(std::ostream& out, const std::vector<std::string>& header, std::size_t text_columns,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(header.size());
  for (std::size_t c = 0; c < header.size(); ++c) width[c] = header[c].size();
  for (const auto& row : rows)
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  const auto line = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (std::size_t c = 0; c < cells.size(); ++c) {
      if (c > 0) s += "  ";
      const std::string pad(width[c] - cells[c].size(), ' ');
      s += c < text_columns ? cells[c] + pad : pad + cells[c];
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    out << s << '\n';
  };
  line(header);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    if (r + 1 == rows.size()) {
      std::size_t total = 0;
      for (const auto w : width) total += w;
      out << std::string(total + 2 * (width.size() - 1), '-') << '\n';
    }
    line(rows[r]);
  }
}

std::vector<std::string> figure_cells(const spend_figures& f) {
  return {std::to_string(f.requests),      std::to_string(f.unpriced_requests), std::to_string(f.prompt_tokens),
          std::to_string(f.completion_tokens), std::to_string(f.cached_tokens),  std::to_string(f.cache_write_tokens),
          std::to_string(f.reasoning_tokens), shortest(f.cost_usd)};
}

// `of`: "" for a ledger file, else which part of the fleet ledger (" of the fleet", ...).
void print_spend(std::ostream& out, const spend_report& r, const std::string& of) {
  out << "Spend" << of << ' ' << period_text(r.query.range) << " (timezone " << r.query.timezone
      << "); tokens, cost in USD\n\n";
  std::vector<std::string> header;
  for (const auto g : r.query.group_by) header.emplace_back(to_string(g));
  if (header.empty()) header.emplace_back("");
  const std::size_t text_columns = header.size();
  for (const char* h : {"requests", "unpriced", "prompt", "completion", "cached", "cache_write", "reasoning", "cost_usd"})
    header.emplace_back(h);
  std::vector<std::vector<std::string>> rows;
  for (const auto& row : r.rows) {
    std::vector<std::string> cells;
    for (const auto& k : row.keys) cells.push_back(k ? *k : "(none)");
    for (auto& c : figure_cells(row.figures)) cells.push_back(std::move(c));
    rows.push_back(std::move(cells));
  }
  std::vector<std::string> total(text_columns);
  total[0] = "total";
  for (auto& c : figure_cells(r.total)) total.push_back(std::move(c));
  rows.push_back(std::move(total));
  print_table(out, header, text_columns, rows);
}

void print_whatif(std::ostream& out, const whatif_report& r, const std::string& of) {
  out << "What-if at " << (r.model.empty() ? std::string("swapped") : r.model) << " prices" << of << ", "
      << period_text(r.range)
      << "; tokens, cost in USD\n\n";
  const std::vector<std::string> header = {"model",      "requests",   "prompt",     "cached",    "cache_write",
                                           "completion", "actual_usd", "whatif_usd", "priced_as"};
  std::vector<std::vector<std::string>> rows;
  const auto cells = [](const std::string& label, const spend_figures& f, double whatif, const std::string& target) {
    return std::vector<std::string>{label,
                                    std::to_string(f.requests),
                                    std::to_string(f.prompt_tokens),
                                    std::to_string(f.cached_tokens),
                                    std::to_string(f.cache_write_tokens),
                                    std::to_string(f.completion_tokens),
                                    shortest(f.cost_usd),
                                    shortest(whatif),
                                    target};
  };
  for (const auto& row : r.rows)
    rows.push_back(cells(row.model.value_or("(none)"), row.actual, row.whatif_cost_usd, row.target.value_or("(as ledgered)")));
  rows.push_back(cells("total", r.actual_total, r.whatif_cost_usd, ""));
  print_table(out, header, 1, rows);
}

// Indented JSON; a model name that is not UTF-8 (a hand-edited ledger) shows as U+FFFD instead
// of stopping the report.
std::string pretty(const nlohmann::json& j) { return json_text(j, 2); }

// What the command line leaves out comes from the configuration tollgate itself starts with
// (--config, else $TOLLGATE_CONFIG, else config/tollgate.yaml): the ledger (its ledger.path,
// after $TOLLGATE_LEDGER_PATH, which overrides it for the proxy too) and a what-if's price table
// (as the proxy loads it). None when no file is named and config/tollgate.yaml is not there.
std::optional<config> configuration(const options& o) {
  const char* env = std::getenv("TOLLGATE_CONFIG");
  const std::string path = o.config.value_or(default_config_path());
  std::error_code ec;
  if (!o.config && !(env && *env) && !std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  return load_config_file(path);
}

// The fleet ledger's url: --postgres, else (--fleet) $TOLLGATE_LEDGER_POSTGRES_URL, which
// overrides the key for the proxy too, else the configuration's ledger.postgres.url. Never
// printed: it may hold a password.
// The first two; nullopt when the configuration is needed.
std::optional<std::string> given_fleet_url(const options& o) {
  if (o.postgres) return *o.postgres;
  if (const char* env = std::getenv("TOLLGATE_LEDGER_POSTGRES_URL"); env && *env) return env;
  return std::nullopt;
}
std::string fleet_url(const options& o, const std::optional<config>& cfg) {
  if (auto url = given_fleet_url(o)) return *url;
  if (cfg && !cfg->ledger_postgres.url.empty()) return cfg->ledger_postgres.url;
  throw usage_error(
      "--fleet: no fleet ledger configured: give the proxy's --config FILE (its ledger.postgres.url), set "
      "TOLLGATE_LEDGER_POSTGRES_URL, or give --postgres URL");
}

int run(options o, std::ostream& out, std::ostream& err) {
  const bool whatif = o.whatif || !o.swap.empty();
  const bool fleet = o.fleet || o.postgres;
  std::optional<config> cfg;
  if ((fleet ? !given_fleet_url(o) : o.ledger.empty()) || (whatif && !o.prices)) {
    try {
      cfg = configuration(o);
    } catch (const config_error& e) {
      err << "tollgate report: configuration error: " << e.what() << '\n';
      return 2;
    }
  }
  std::string url;
  if (fleet) {
    url = fleet_url(o, cfg);
  } else {
    if (o.ledger.empty() && cfg) o.ledger = cfg->ledger_path;
    if (o.ledger.empty())
      throw usage_error(
          "no ledger: give --ledger FILE, set TOLLGATE_LEDGER_PATH, give the proxy's --config FILE, or read the fleet "
          "ledger with --fleet");
    std::error_code ec;
    if (!std::filesystem::is_regular_file(o.ledger, ec)) {
      const bool exists = std::filesystem::exists(o.ledger, ec);
      err << "tollgate report: ledger file '" << o.ledger << "' "
          << (!exists ? "not found" : std::filesystem::is_directory(o.ledger, ec) ? "is a directory" : "is not a regular file")
          << "\n";
      return 2;
    }
  }
  const std::string of = !fleet ? "" : o.instance ? " of instance " + *o.instance + " (fleet ledger)" : " of the fleet";
  const calendar cal(o.timezone);
  const time_range range = range_of(o, cal);
  if (whatif) {
    if (!o.prices && !cfg)
      throw usage_error("no price table: give --prices FILE, or the proxy's --config FILE (its price table)");
    price_table prices;
    try {
      if (o.prices) prices.load_yaml_file(*o.prices);
      else prices.load_configured(*cfg);
    } catch (const config_error& e) {
      err << "tollgate report: " << e.what() << (o.prices ? "" : " (the configuration's price table; or use --prices FILE)")
          << '\n';
      return 2;
    }
    const whatif_query q{.range = range, .model = o.whatif.value_or(""), .swap = o.swap};
    const auto report = fleet ? query_fleet_whatif(url, q, prices, o.instance) : query_whatif(o.ledger, q, prices);
    if (o.format == output_format::csv) out << to_csv(report);
    else if (o.format == output_format::json) out << pretty(to_json(report)) << '\n';
    else print_whatif(out, report, of);
    return 0;
  }
  const spend_query q{range, o.group_by, o.timezone};
  const auto report = fleet ? query_fleet_spend(url, q, o.instance) : query_spend(o.ledger, q);
  if (o.format == output_format::csv) out << to_csv(report);
  else if (o.format == output_format::json) out << pretty(to_json(report)) << '\n';
  else print_spend(out, report, of);
  return 0;
}

}  // namespace

int report_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  try {
    const options o = parse_args(args);
    if (o.help) {
      out << kUsage;
      return 0;
    }
    return run(o, out, err);
  } catch (const std::invalid_argument& e) {
    // Bad arguments, dates, zones, group names or what-if models.
    err << "tollgate report: " << e.what() << "\n(see 'tollgate report --help')\n";
    return 2;
  } catch (const std::exception& e) {
    err << "tollgate report: " << e.what() << '\n';
    return 1;
  }
}

int report_main(int argc, char** argv) {
  return report_main(std::vector<std::string>(argv, argv + std::max(argc, 0)), std::cout, std::cerr);
}

}  // namespace tollgate
