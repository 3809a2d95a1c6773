// tollgate's configuration: the typed struct, the YAML loader (with ${VAR} substitution and
// file:line errors) and the TOLLGATE_* environment overrides. Read once at start-up.
#pragma once
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/policy_config.hpp"
#include "core/pricing.hpp"  // config_error

namespace tollgate {

using millis = std::chrono::milliseconds;

enum class log_level { trace, debug, info, warn, error };

struct host_port {
  std::string host;  // "127.0.0.1", "0.0.0.0", "::1", "localhost"
  std::uint16_t port = 0;
};

// openai: serves every OpenAI route and also /v1/messages (a relay speaking both APIs);
// anthropic: serves /v1/messages*, and an Anthropic client's other calls (a request carrying
// anthropic-version: models.list, files, batches).
enum class upstream_protocol : std::uint8_t { openai, anthropic };
// How the upstream key is sent. auto: x-api-key for anthropic upstreams; Bearer for openai ones,
// except that a /v1/messages call keeps the client's style (x-api-key or Bearer).
enum class upstream_auth : std::uint8_t { automatic, bearer, x_api_key };
// What a cost the upstream states does (in its usage: OpenRouter, Perplexity, token_usage::
// reported_usd; in a header: a LiteLLM proxy's x-litellm-response-cost). fallback: it prices a call the price table does not (instead of cost 0, unpriced);
// prefer: it prices every call it comes with (the relay's own bill, whatever the table says);
// ignore: the table alone prices.
enum class reported_cost_use : std::uint8_t { fallback, prefer, ignore };

struct upstream_config {
  std::string name = "holysheep";  // the default upstream: the HolySheep relay
  upstream_protocol protocol = upstream_protocol::openai;
  upstream_auth auth_header = upstream_auth::automatic;
  unsigned weight = 1;                               // share of calls among upstreams serving a model
  std::size_t max_inflight = 0;                      // concurrent calls (0: unlimited); over it -> next upstream
  int breaker_failures = 5;                          // consecutive connect errors/timeouts/5xx that open the breaker
  millis breaker_open_for{30'000};                   // open this long, then one half-open probe
  std::string url = "https://api.holysheep.ai/v1";  // base URL: scheme://host[:port][/base/path]
  std::string api_key;                               // sent as Authorization: Bearer <key>
  std::string ca_file;                               // extra CA bundle for private relays ("" = system CAs)
  bool tls_verify = true;                            // false only by explicit option; warns at each start
  double price_multiplier = 1.0;                     // relay bills at a markup / other currency
  reported_cost_use reported_cost = reported_cost_use::fallback;  // the usage's own cost, if any
  millis connect_timeout{10'000};
  millis first_byte_timeout{600'000};   // reasoning models may think for minutes
  millis idle_timeout{300'000};         // between two body chunks
  millis total_timeout{3'600'000};      // whole call
  std::size_t max_idle_connections = 64;  // per worker
  millis pool_idle_timeout{60'000};     // a pooled connection unused this long is closed
};

// routes: the first rule whose glob matches the requested model picks the upstreams (in failover
// order; weights balance among them) and may rewrite the model sent upstream.
struct route_rule {
  std::string model = "*";               // glob: * and ? ("claude-*", "gpt-4.1*")
  std::vector<std::string> upstreams;    // names; empty: every upstream able to serve the call
  std::string rewrite;                   // "" = keep the client's model
};

// The embedded forecaster (forecast_service): load and spend forecasts published as gauges.
struct forecast_config {
  bool enabled = true;
  millis refresh_interval{60'000};  // how often completed minutes are folded in and gauges refreshed
  std::size_t history_days = 14;    // per-minute history kept in memory and read back from the ledger at boot (1..60)
};

struct config {
  std::string source_file;  // the file it was read from ("" when built in code)
  // Each top-level key's values as written (before ${VAR} substitution; layout and comments
  // aside): a reload of the file names the sections that changed and take effect only at a restart.
  std::map<std::string, std::string> sections;

  host_port listen{"127.0.0.1", 8080};
  host_port admin_listen{"127.0.0.1", 9464};
  int workers = 0;                          // 0: the CPUs this process may run on (affinity)
  log_level log = log_level::info;
  bool allow_public_without_auth = false;   // bind a non-loopback listen address without client auth
  std::string timezone = "UTC";             // IANA name; calendar windows (hour, day, month) are local to it

  upstream_config upstream;                 // the single `upstream:` section (used when `upstreams` is empty)
  std::vector<upstream_config> upstreams;   // `upstreams:` list; TOLLGATE_UPSTREAM_URL replaces it by `upstream`
  std::vector<route_rule> routes;

  policy_config policy;                     // auth, keys, budgets, spend_guard, alerts (issue 4)

  // Client side.
  std::size_t max_body_bytes = 64u << 20;   // 413 above
  // A pass-through call's body over 8 MiB (or max_body_bytes, if smaller) is stored in an
  // unnamed file in spool_dir (a chunked one once it grows past that) and sent from there, up to
  // this size (413 above); 0 or <= max_body_bytes: off. Without a file, within max_body_bytes
  // it is held in memory.
  std::uint64_t max_upload_bytes = 1ull << 30;
  std::string spool_dir;                    // "": $TMPDIR, else /var/tmp
  std::size_t max_header_bytes = 64u << 10; // 431 above
  millis header_timeout{30'000};            // whole request head must arrive within this (slowloris)
  millis body_timeout{300'000};             // request body must arrive within this
  millis keepalive_timeout{120'000};        // idle client connection closed after this
  std::size_t max_parse_bytes = 64u << 20;  // response bytes tollgate decodes for metering

  // Ledger.
  std::string ledger_path = "./data/tollgate.db";
  std::size_t ledger_batch_rows = 500;
  millis ledger_flush_interval{100};
  std::size_t ledger_queue_capacity = 100'000;  // admission refuses (503) rather than dropping rows
  bool ledger_fail_closed = false;              // on_failure: open (keep proxying) | closed (503 while the DB fails)
  std::size_t ledger_memory_rows = 100'000;     // rows held in memory when the journal refuses them
  std::string ledger_journal_path;              // "" : ledger_path + ".journal"
  std::uint64_t ledger_journal_max_bytes = 1ull << 30;  // 0: no journal
  bool ledger_synchronous_full = false;         // synchronous: normal | full (fsync every commit)
  millis ledger_retention{0};                   // rows older than this are deleted (0: kept forever)
  // Optional indexes by /admin/calls filter (core/ledger_indexes.hpp); each listed once, in the
  // order given. Those not listed are dropped at start.
  std::vector<std::string> ledger_indexes;
  // Fleet ledger (ledger.postgres): committed rows copied to one PostgreSQL table shared by every
  // instance. "" url: off. The SQLite file stays the ledger of record (pg_shipper.hpp).
  struct postgres_ship {
    std::string url;               // libpq URI or key=value conninfo
    int url_line = 0;              // config line of `url` (errors name it)
    std::string instance;          // fleet member name ("" : the host name)
    std::size_t batch_rows = 5000; // rows per PostgreSQL transaction
    millis interval{1000};         // how often new rows are looked for
    // Budgets and spend guards count the other instances' spend, read from the fleet table
    // (pg_shipper's remote pass), so a fleet enforces one budget rather than one per instance.
    bool fleet_budgets = true;
    // A budget or guard alert that several instances raise goes out once for the fleet: each
    // claims it in PostgreSQL (table tollgate_alerts) before its webhooks get it.
    bool fleet_alerts = true;
    // A claim not confirmed delivered within this long (its instance stopped first) is taken
    // over by another instance that saw the alert, which sends it.
    millis alert_lease{120'000};
  } ledger_postgres;

  // Pricing.
  std::string prices_file = "config/prices.yaml";  // unset: prices.yaml beside the config file if there, else this (CWD)
  std::string litellm_prices_file;                 // optional LiteLLM JSON catalogue
  bool prices_watch = false;  // reload the price files when they change (checked every second)
  bool config_watch = false;  // watch_config: reload this file's spend controls when it changes (likewise)

  millis drain_timeout{30'000};             // SIGTERM: in-flight calls get this long

  forecast_config forecast;

  std::vector<std::string> warnings;        // non-fatal findings (unset ${VAR}, tls_verify off...)
};

// The upstreams calls may go to: `upstreams` when given, else the single `upstream`.
std::vector<upstream_config> effective_upstreams(const config& cfg);

// The configuration file `tollgate` starts with when --config is not given: $TOLLGATE_CONFIG,
// else config/tollgate.yaml.
std::string default_config_path();

// Loads `path`: YAML, ${VAR} / ${VAR:-default} substitution in scalar values (an unset VAR
// without default becomes "" and adds a warning), unknown keys rejected, values validated.
// Throws config_error naming file, line and problem.
config load_config_file(const std::string& path);
config load_config_string(const std::string& text, const std::string& name = "<string>");

// Applies TOLLGATE_LISTEN, TOLLGATE_ADMIN_LISTEN, TOLLGATE_UPSTREAM_URL (replaces the upstream list
// by one upstream serving everything), TOLLGATE_UPSTREAM_API_KEY (the single or first upstream),
// TOLLGATE_ADMIN_TOKEN, TOLLGATE_LEDGER_PATH, TOLLGATE_LEDGER_POSTGRES_URL, TOLLGATE_LOG_LEVEL
// (and TOLLGATE_WORKERS). Throws config_error("env", 0, ...)
// on a malformed value.
void apply_env_overrides(config& cfg);

// Cross-field checks done after overrides (e.g. non-loopback bind without auth) and defaults that
// depend on them (auth: off on loopback, required elsewhere, unless set). Throws config_error.
void validate(config& cfg);

host_port parse_host_port(const std::string& s);  // "host:port", "[::1]:8080", ":8080"; throws std::invalid_argument
millis parse_duration(const std::string& s);      // "250ms", "10s", "5m", "1h", "1d", plain number = seconds
std::size_t parse_size(const std::string& s);     // "32MiB", "64KiB", "1GiB", "1000", "10MB"
log_level parse_log_level(const std::string& s);  // trace|debug|info|warn|error
bool is_loopback(const std::string& host);

}  // namespace tollgate
