// Tests for the configuration loader (proxy/core/config.cpp): the shipped config/tollgate.yaml,
// file:line errors, ${VAR} substitution, TOLLGATE_* overrides, validate() and the value parsers.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "core/config.hpp"
#include "scoped_env.hpp"

using namespace tollgate;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

std::string fixture(const std::string& name) { return std::string(TOLLGATE_SOURCE_DIR) + "/tests/data/config/" + name; }

using tollgate::testing::scoped_env;

// Clears every TOLLGATE_* override so the developer's shell cannot change a test's outcome.
struct clean_overrides {
  scoped_env listen{"TOLLGATE_LISTEN", nullptr}, admin{"TOLLGATE_ADMIN_LISTEN", nullptr},
      url{"TOLLGATE_UPSTREAM_URL", nullptr}, key{"TOLLGATE_UPSTREAM_API_KEY", nullptr},
      ledger{"TOLLGATE_LEDGER_PATH", nullptr}, log{"TOLLGATE_LOG_LEVEL", nullptr}, workers{"TOLLGATE_WORKERS", nullptr},
      pg{"TOLLGATE_LEDGER_POSTGRES_URL", nullptr};
};

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const config_error& e) {
    return e.what();
  }
  return "<no error>";
}

std::string load_error(const std::string& yaml) {
  return error_of([&] { load_config_string(yaml, "test.yaml"); });
}

}  // namespace

TEST_CASE("config: the shipped tollgate.yaml loads with the built-in defaults", "[config]") {
  clean_overrides clean;
  const std::string path = std::string(TOLLGATE_SOURCE_DIR) + "/config/tollgate.yaml";
  const config d;  // the struct defaults the file documents

  SECTION("without HOLYSHEEP_API_KEY it starts with an empty key and one warning") {
    scoped_env key("HOLYSHEEP_API_KEY", nullptr);
    config cfg = load_config_file(path);
    CHECK(cfg.source_file == path);
    CHECK(cfg.listen.host == "127.0.0.1");
    CHECK(cfg.listen.port == 8080);
    CHECK(cfg.admin_listen.host == "127.0.0.1");
    CHECK(cfg.admin_listen.port == 9464);
    CHECK(cfg.workers == d.workers);
    CHECK(cfg.log == log_level::info);
    CHECK_FALSE(cfg.allow_public_without_auth);
    CHECK(cfg.upstream.name == "holysheep");
    CHECK(cfg.upstream.url == d.upstream.url);
    CHECK(cfg.upstream.api_key.empty());
    CHECK(cfg.upstream.ca_file.empty());
    CHECK(cfg.upstream.tls_verify);
    CHECK(cfg.upstream.price_multiplier == d.upstream.price_multiplier);
    CHECK(cfg.upstream.connect_timeout == d.upstream.connect_timeout);
    CHECK(cfg.upstream.first_byte_timeout == d.upstream.first_byte_timeout);
    CHECK(cfg.upstream.idle_timeout == d.upstream.idle_timeout);
    CHECK(cfg.upstream.total_timeout == d.upstream.total_timeout);
    CHECK(cfg.upstream.max_idle_connections == d.upstream.max_idle_connections);
    CHECK(cfg.upstream.pool_idle_timeout == d.upstream.pool_idle_timeout);
    CHECK(cfg.max_body_bytes == d.max_body_bytes);
    CHECK(cfg.max_header_bytes == d.max_header_bytes);
    CHECK(cfg.header_timeout == d.header_timeout);
    CHECK(cfg.body_timeout == d.body_timeout);
    CHECK(cfg.keepalive_timeout == d.keepalive_timeout);
    CHECK(cfg.max_parse_bytes == d.max_parse_bytes);
    CHECK(cfg.drain_timeout == d.drain_timeout);
    CHECK(cfg.ledger_path == d.ledger_path);
    CHECK(cfg.ledger_batch_rows == d.ledger_batch_rows);
    CHECK(cfg.ledger_flush_interval == d.ledger_flush_interval);
    CHECK(cfg.ledger_queue_capacity == d.ledger_queue_capacity);
    CHECK(cfg.ledger_postgres.url.empty());
    CHECK(cfg.ledger_postgres.instance == d.ledger_postgres.instance);
    CHECK(cfg.ledger_postgres.batch_rows == d.ledger_postgres.batch_rows);
    CHECK(cfg.ledger_postgres.interval == d.ledger_postgres.interval);
    CHECK_THAT(cfg.prices_file, Contains("prices.yaml"));
    CHECK(cfg.litellm_prices_file.empty());
    CHECK(cfg.prices_watch == d.prices_watch);
    CHECK(cfg.config_watch == d.config_watch);
    REQUIRE(cfg.warnings.size() == 1);
    CHECK_THAT(cfg.warnings[0], StartsWith(path + ":"));
    CHECK_THAT(cfg.warnings[0], Contains("environment variable HOLYSHEEP_API_KEY is not set; using an empty value"));
    CHECK_NOTHROW(validate(cfg));
  }
  SECTION("with HOLYSHEEP_API_KEY set the key is taken from the environment without warnings") {
    scoped_env key("HOLYSHEEP_API_KEY", "sk-test-123");
    config cfg = load_config_file(path);
    CHECK(cfg.upstream.api_key == "sk-test-123");
    CHECK(cfg.warnings.empty());
  }
  SECTION("pricing.file resolves next to the config file when config/prices.yaml exists") {
    scoped_env key("HOLYSHEEP_API_KEY", "k");
    config cfg = load_config_file(path);
    std::FILE* f = std::fopen((std::string(TOLLGATE_SOURCE_DIR) + "/config/prices.yaml").c_str(), "r");
    if (f != nullptr) {
      std::fclose(f);
      CHECK(cfg.prices_file == std::string(TOLLGATE_SOURCE_DIR) + "/config/prices.yaml");
    } else {
      CHECK(cfg.prices_file == "prices.yaml");
    }
  }
}

TEST_CASE("config: an empty file keeps every default", "[config]") {
  const config d;
  for (const config& cfg : {load_config_file(fixture("empty.yaml")), load_config_string("", "empty")}) {
    CHECK(cfg.listen.port == d.listen.port);
    CHECK(cfg.upstream.name == d.upstream.name);
    CHECK(cfg.upstream.url == d.upstream.url);
    // config/prices.yaml under the CWD, or the checkout's when the CWD has none (a test's CWD)
    const std::string source_prices = std::string(TOLLGATE_SOURCE_DIR) + "/config/prices.yaml";
    CHECK((cfg.prices_file == d.prices_file || cfg.prices_file == source_prices));
    CHECK(cfg.ledger_path == d.ledger_path);
    CHECK(cfg.warnings.empty());
  }
}

TEST_CASE("config: every key maps to its config field", "[config]") {
  config cfg = load_config_string(R"(
listen: "[::1]:18080"
admin_listen: localhost:0
workers: 4
log_level: warning
watch_config: true
allow_public_without_auth: true
upstream:
  name: relay
  url: http://127.0.0.1:9000
  api_key: sk-abc
  ca_file: /etc/ssl/private-ca.pem
  tls_verify: true
  price_multiplier: 1.25
  reported_cost: Prefer
  timeouts: { connect: 2s, first_byte: 90s, idle: 30s, total: 2h }
  pool: { max_idle: 0, idle_timeout: 15s }
server:
  max_body_bytes: 1MB
  max_header_bytes: 16KiB
  header_timeout: 5s
  body_timeout: 1m
  keepalive_timeout: 1.5s
  max_parse_bytes: 1GiB
  drain_timeout: 1d
ledger:
  path: /var/lib/tollgate/ledger.db
  batch_rows: 1
  flush_interval: 250ms
  queue_capacity: 10
pricing:
  file: /etc/tollgate/prices.yaml
  litellm_file: litellm.json
  watch: true
)",
                                  "full.yaml");
  CHECK(cfg.listen.host == "::1");
  CHECK(cfg.listen.port == 18080);
  CHECK(cfg.admin_listen.host == "localhost");
  CHECK(cfg.admin_listen.port == 0);
  CHECK(cfg.workers == 4);
  CHECK(cfg.log == log_level::warn);
  CHECK(cfg.allow_public_without_auth);
  CHECK(cfg.upstream.name == "relay");
  CHECK(cfg.upstream.url == "http://127.0.0.1:9000");
  CHECK(cfg.upstream.api_key == "sk-abc");
  CHECK(cfg.upstream.ca_file == "/etc/ssl/private-ca.pem");
  CHECK(cfg.upstream.price_multiplier == 1.25);
  CHECK(cfg.upstream.reported_cost == tollgate::reported_cost_use::prefer);
  CHECK(cfg.upstream.connect_timeout == 2s);
  CHECK(cfg.upstream.first_byte_timeout == 90s);
  CHECK(cfg.upstream.idle_timeout == 30s);
  CHECK(cfg.upstream.total_timeout == 2h);
  CHECK(cfg.upstream.max_idle_connections == 0);
  CHECK(cfg.upstream.pool_idle_timeout == 15s);
  CHECK(cfg.max_body_bytes == 1'000'000);
  CHECK(cfg.max_header_bytes == 16 * 1024);
  CHECK(cfg.header_timeout == 5s);
  CHECK(cfg.body_timeout == 1min);
  CHECK(cfg.keepalive_timeout == 1500ms);
  CHECK(cfg.max_parse_bytes == (std::size_t{1} << 30));
  CHECK(cfg.drain_timeout == 24h);
  CHECK(cfg.ledger_path == "/var/lib/tollgate/ledger.db");
  CHECK(cfg.ledger_batch_rows == 1);
  CHECK(cfg.ledger_flush_interval == 250ms);
  CHECK(cfg.ledger_queue_capacity == 10);
  CHECK(cfg.prices_file == "/etc/tollgate/prices.yaml");
  CHECK(cfg.litellm_prices_file == "litellm.json");  // no config directory for a string: as given
  CHECK(cfg.prices_watch);
  CHECK(cfg.config_watch);
  CHECK(cfg.warnings.empty());
}

TEST_CASE("config: relative pricing paths resolve next to the config file, else stay relative to the CWD", "[config]") {
  config cfg = load_config_file(fixture("beside/tollgate.yaml"));
  CHECK(cfg.prices_file == fixture("beside/my_prices.yaml"));
  CHECK(cfg.litellm_prices_file == "not_here.json");
}

TEST_CASE("config: without pricing.file the price table is prices.yaml beside the config file", "[config]") {
  // As the README's key table says; config/prices.yaml under the CWD is the fallback.
  const auto dir = std::filesystem::temp_directory_path() / ("tollgate_cfg_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  { std::ofstream(dir / "tollgate.yaml") << "workers: 1\n"; }
  const std::string fallback = load_config_file((dir / "tollgate.yaml").string()).prices_file;
  const bool in_cwd = std::filesystem::is_regular_file(config{}.prices_file);
  CHECK(fallback == (in_cwd ? config{}.prices_file : std::string(TOLLGATE_SOURCE_DIR) + "/config/prices.yaml"));
  { std::ofstream(dir / "prices.yaml") << "models: {}\n"; }
  CHECK(load_config_file((dir / "tollgate.yaml").string()).prices_file == (dir / "prices.yaml").string());
  { std::ofstream(dir / "tollgate.yaml") << "pricing:\n  file: /elsewhere/p.yaml\n"; }
  CHECK(load_config_file((dir / "tollgate.yaml").string()).prices_file == "/elsewhere/p.yaml");
  std::filesystem::remove_all(dir);
}

TEST_CASE("config: ledger.postgres, the fleet ledger", "[config]") {
  clean_overrides clean;
  const config d;
  CHECK(d.ledger_postgres.url.empty());  // off unless configured
  config cfg = load_config_string(R"(
ledger:
  postgres:
    url: postgresql://tollgate@db.internal:5432/fleet?sslmode=require
    instance: edge-1
    batch_rows: 200
    interval: 250ms
    fleet_budgets: false
    fleet_alerts: false
    alert_lease: 30s
)", "t.yaml");
  CHECK(d.ledger_postgres.alert_lease == 2min);
  CHECK(cfg.ledger_postgres.alert_lease == 30s);
  CHECK_THAT(load_error("ledger:\n  postgres:\n    alert_lease: 10ms\n"),
             StartsWith("test.yaml:3: ledger.postgres.alert_lease: must be at least 1s"));
  CHECK(d.ledger_postgres.fleet_budgets);
  CHECK(!cfg.ledger_postgres.fleet_budgets);
  CHECK(d.ledger_postgres.fleet_alerts);
  CHECK(!cfg.ledger_postgres.fleet_alerts);
  CHECK(cfg.ledger_postgres.url == "postgresql://tollgate@db.internal:5432/fleet?sslmode=require");
  CHECK(cfg.ledger_postgres.url_line == 4);
  CHECK(cfg.ledger_postgres.instance == "edge-1");
  CHECK(cfg.ledger_postgres.batch_rows == 200);
  CHECK(cfg.ledger_postgres.interval == 250ms);

  CHECK(load_error("ledger:\n  postgres:\n    batch_rows: 0\n") ==
        "test.yaml:3: ledger.postgres.batch_rows: expected a whole number >= 1, got '0'");
  CHECK(load_error("ledger:\n  postgres:\n    batch_rows: 100001\n") ==
        "test.yaml:3: ledger.postgres.batch_rows: too large: at most 100000, got '100001'");
  CHECK_THAT(load_error("ledger:\n  postgres:\n    interval: 1ms\n"),
             StartsWith("test.yaml:3: ledger.postgres.interval: must be at least 10ms"));
  CHECK_THAT(load_error("ledger:\n  postgres:\n    instance: edge 1\n"),
             StartsWith("test.yaml:3: ledger.postgres.instance: must match [A-Za-z0-9._-]{1,64}"));
  CHECK_THAT(load_error("ledger:\n  postgres:\n    urll: x\n"), Contains("test.yaml:3:") && Contains("url"));

  scoped_env env("TOLLGATE_LEDGER_POSTGRES_URL", "host=10.0.0.5 dbname=fleet");
  config over = load_config_string("ledger:\n  postgres:\n    url: postgresql://x/y\n", "t.yaml");
  apply_env_overrides(over);
  CHECK(over.ledger_postgres.url == "host=10.0.0.5 dbname=fleet");
  CHECK(over.ledger_postgres.url_line == 0);
}

TEST_CASE("config: ledger.indexes names /admin/calls filters, each once", "[config]") {
  CHECK(config{}.ledger_indexes.empty());
  CHECK(load_config_string("ledger:\n  indexes: [team, model, team]\n", "t.yaml").ledger_indexes ==
        std::vector<std::string>{"team", "model"});
  CHECK(load_config_string("ledger:\n  indexes:\n    - request_id\n    - key\n", "t.yaml").ledger_indexes ==
        std::vector<std::string>{"request_id", "key"});
  CHECK(load_config_string("ledger:\n  indexes: []\n", "t.yaml").ledger_indexes.empty());
  CHECK_THAT(load_error("ledger:\n  indexes:\n    - team\n    - color\n"),
             StartsWith("test.yaml:4: ledger.indexes[1]: unknown index 'color'; use one of request_id, upstream_request_id, "
                        "key, team, model, provider, route, user"));
  CHECK(load_config_string("ledger:\n  indexes: [user]\n", "t.yaml").ledger_indexes == std::vector<std::string>{"user"});
  CHECK_THAT(load_error("ledger:\n  indexes: team\n"), StartsWith("test.yaml:2: ledger.indexes: expected a list"));
}

TEST_CASE("config: ledger.retention keeps every row by default, or at least 32 days", "[config]") {
  CHECK(config{}.ledger_retention.count() == 0);
  CHECK(load_config_string("ledger:\n  retention: 400d\n", "t.yaml").ledger_retention == std::chrono::hours(24 * 400));
  CHECK(load_config_string("ledger:\n  retention: 0\n", "t.yaml").ledger_retention.count() == 0);
  CHECK_THAT(load_error("ledger:\n  retention: 7d\n"),
             StartsWith("test.yaml:2: ledger.retention: must be 0 (keep every row) or at least 32d"));
  CHECK_THAT(load_error("ledger:\n  retention: forever\n"), StartsWith("test.yaml:2: ledger.retention: invalid duration"));
}

TEST_CASE("config: a second YAML document is an error, not dropped", "[config]") {
  CHECK(load_error("listen: 127.0.0.1:1\n---\nworkers: 3\n") ==
        "test.yaml:2: a second YAML document: tollgate reads one document per file (remove the '---')");
  CHECK(load_error("# c\nworkers: 1\n--- # next\n\n# only a comment\n---\nworkers: 2\n") ==
        "test.yaml:3: a second YAML document: tollgate reads one document per file (remove the '---')");
  CHECK_NOTHROW(load_config_string("---\nworkers: 1\n", "t"));
  CHECK_NOTHROW(load_config_string("# head\n---\nworkers: 1\n---\n# nothing after\n", "t"));
  CHECK_NOTHROW(load_config_string("workers: 1\nupstream:\n  name: ---x\n", "t"));
}

TEST_CASE("config: listen addresses are IP addresses, said with their line", "[config]") {
  CHECK(load_error("workers: 1\nadmin_listen: nonexistent.invalid:9464\n") ==
        "test.yaml:2: admin_listen: 'nonexistent.invalid' is not an IP address (use 127.0.0.1, 0.0.0.0, ::1, :: or localhost)");
  CHECK_NOTHROW(load_config_string("listen: localhost:8080\nadmin_listen: '[::1]:9464'\n", "t"));
}

TEST_CASE("config: unknown keys name file:line and suggest the closest key", "[config]") {
  SECTION("top level") {
    CHECK_THAT(error_of([] { load_config_file(fixture("unknown_key.yaml")); }),
               Contains("unknown_key.yaml:2: unknown key 'listne' (did you mean 'listen'?)"));
  }
  SECTION("inside a section") {
    CHECK_THAT(error_of([] { load_config_file(fixture("unknown_nested_key.yaml")); }),
               Contains("unknown_nested_key.yaml:4: unknown key 'timeout' in 'upstream' (did you mean 'timeouts'?)"));
  }
  SECTION("nested two deep") {
    CHECK(load_error("upstream:\n  timeouts:\n    conect: 1s\n") ==
          "test.yaml:3: unknown key 'conect' in 'upstream.timeouts' (did you mean 'connect'?)");
  }
  SECTION("no suggestion when nothing is close") {
    CHECK(load_error("listen: 127.0.0.1:1\nbananas: 3\n") == "test.yaml:2: unknown key 'bananas'");
  }
  SECTION("the error carries file and line") {
    try {
      load_config_file(fixture("unknown_key.yaml"));
      FAIL("expected config_error");
    } catch (const config_error& e) {
      CHECK(e.file_ == fixture("unknown_key.yaml"));
      CHECK(e.line_ == 2);
    }
  }
}

TEST_CASE("config: a duplicate key is an error naming both lines", "[config]") {
  CHECK(load_error("workers: 1\nlog_level: info\nworkers: 2\n") ==
        "test.yaml:3: duplicate key 'workers' (first set on line 1)");
}

TEST_CASE("config: values of the wrong type name file:line and the problem", "[config]") {
  SECTION("text where an integer is expected") {
    CHECK_THAT(error_of([] { load_config_file(fixture("wrong_type.yaml")); }),
               Contains("wrong_type.yaml:2: workers: expected an integer 0..1024"));
  }
  SECTION("a list where a single value is expected") {
    CHECK_THAT(error_of([] { load_config_file(fixture("list_value.yaml")); }),
               Contains("list_value.yaml:2: listen: expected a single value, not a list"));
  }
  SECTION("a mapping where a single value is expected") {
    CHECK(load_error("upstream:\n  url: {a: 1}\n") == "test.yaml:2: upstream.url: expected a single value, not a mapping");
  }
  SECTION("a value where a section is expected") {
    CHECK(load_error("server: 10\n") == "test.yaml:1: 'server' must be a mapping of keys");
  }
  SECTION("a document that is not a mapping") {
    CHECK_THAT(load_error("- listen\n"), Contains("test.yaml:1: the document must be a mapping"));
  }
  SECTION("workers out of range") {
    CHECK_THAT(load_error("workers: 2000\n"), StartsWith("test.yaml:1: workers: expected an integer 0..1024"));
    CHECK_THAT(load_error("workers: -1\n"), StartsWith("test.yaml:1: workers:"));
  }
  SECTION("an unknown reported_cost") {
    CHECK(load_error("upstream:\n  reported_cost: always\n") ==
          "test.yaml:2: upstream.reported_cost: expected fallback | prefer | ignore, got 'always'");
  }
  SECTION("not a boolean") {
    CHECK(load_error("allow_public_without_auth: maybe\n") ==
          "test.yaml:1: allow_public_without_auth: expected true or false, got 'maybe'");
  }
  SECTION("negative or garbage sizes") {
    CHECK_THAT(load_error("server:\n  max_body_bytes: -5MiB\n"),
               StartsWith("test.yaml:2: server.max_body_bytes: invalid size '-5MiB': must not be negative"));
    CHECK_THAT(load_error("server:\n  max_header_bytes: lots\n"), StartsWith("test.yaml:2: server.max_header_bytes: invalid size"));
    CHECK(load_error("server:\n  max_parse_bytes: 0\n") == "test.yaml:2: server.max_parse_bytes: must be greater than 0");
  }
  SECTION("counts below their minimum") {
    CHECK_THAT(load_error("ledger:\n  batch_rows: 0\n"), StartsWith("test.yaml:2: ledger.batch_rows: expected a whole number >= 1"));
    CHECK_THAT(load_error("ledger:\n  queue_capacity: 0\n"), StartsWith("test.yaml:2: ledger.queue_capacity:"));
  }
  SECTION("price_multiplier must be positive") {
    CHECK_THAT(load_error("upstream:\n  price_multiplier: 0\n"), StartsWith("test.yaml:2: upstream.price_multiplier: expected a number greater than 0"));
    CHECK_THAT(load_error("upstream:\n  price_multiplier: nan\n"), StartsWith("test.yaml:2: upstream.price_multiplier:"));
  }
  SECTION("bad log level") {
    CHECK_THAT(load_error("log_level: loud\n"), StartsWith("test.yaml:1: log_level: invalid log level 'loud'"));
  }
  SECTION("a key with no value") {
    CHECK(load_error("listen:\nworkers: 1\n") == "test.yaml:1: listen: missing value");
  }
}

TEST_CASE("config: a bad duration names file:line and the value", "[config]") {
  SECTION("garbage") {
    CHECK_THAT(error_of([] { load_config_file(fixture("bad_duration.yaml")); }),
               Contains("bad_duration.yaml:4: upstream.timeouts.first_byte: invalid duration 'ten minutes'"));
  }
  SECTION("a timeout of 0 is refused") {
    CHECK_THAT(load_error("server:\n  header_timeout: 0s\n"), StartsWith("test.yaml:2: server.header_timeout: must be greater than 0"));
  }
  SECTION("negative") {
    CHECK_THAT(load_error("ledger:\n  flush_interval: -1s\n"), Contains("must not be negative"));
  }
}

TEST_CASE("config: a bad upstream url names file:line", "[config]") {
  CHECK(error_of([] { load_config_file(fixture("bad_url.yaml")); }) ==
        fixture("bad_url.yaml") + ":3: upstream.url: URL must start with http:// or https://");
  CHECK(load_error("upstream:\n  url: https:///v1\n") == "test.yaml:2: upstream.url: URL has no host");
  CHECK(load_error("upstream:\n  url: https://u:secret@api.example.com\n") ==
        "test.yaml:2: upstream.url: URL must not contain credentials (user@host); set upstream.api_key instead");
  CHECK(load_error("upstream:\n  url: http://h:99999\n") == "test.yaml:2: upstream.url: URL has an invalid port (1..65535)");
  CHECK(load_error("upstream:\n  url: https://h/v1?x=1\n") == "test.yaml:2: upstream.url: URL must not contain a query or fragment");
}

TEST_CASE("config: a bad port names file:line", "[config]") {
  CHECK_THAT(error_of([] { load_config_file(fixture("bad_port.yaml")); }),
             Contains("bad_port.yaml:2: admin_listen: invalid port in '127.0.0.1:70000'"));
  CHECK_THAT(load_error("listen: 127.0.0.1\n"), StartsWith("test.yaml:1: listen: missing port in '127.0.0.1'"));
  // A control byte in a value is shown escaped: as a raw NUL it ended the message (what() is a C string).
  CHECK_THAT(load_error("listen: \"a\\0b\\tc\"\n"), StartsWith("test.yaml:1: listen: missing port in 'a\\x00b\\x09c': "));
  CHECK_THAT(load_error("ledger:\n  flush_interval: \"5\\0ms\"\n"), Contains("invalid duration '5\\x00ms'"));
}

TEST_CASE("config: a YAML syntax error names file:line", "[config]") {
  std::string msg = error_of([] { load_config_file(fixture("syntax_error.yaml")); });
  CHECK_THAT(msg, StartsWith(fixture("syntax_error.yaml") + ":"));
  CHECK_THAT(msg, Contains("YAML syntax error: end of map flow not found"));
  CHECK_THAT(load_error("a: 1\n  b: 2\n"), StartsWith("test.yaml:2: YAML syntax error"));
}

TEST_CASE("config: a missing file is an error naming the path", "[config]") {
  CHECK(error_of([] { load_config_file("/nonexistent/tollgate.yaml"); }) ==
        "/nonexistent/tollgate.yaml: cannot open: No such file or directory");
}

TEST_CASE("config: ${VAR} substitution in scalar values", "[config]") {
  scoped_env set("TG_TEST_KEY", "sk-live");
  scoped_env empty("TG_TEST_EMPTY", "");
  scoped_env unset("TG_TEST_UNSET", nullptr);
  scoped_env port("TG_TEST_PORT", "18081");

  SECTION("a set variable is replaced") {
    CHECK(load_config_string("upstream:\n  api_key: ${TG_TEST_KEY}\n").upstream.api_key == "sk-live");
  }
  SECTION("several references and surrounding text in one value") {
    config cfg = load_config_string("upstream:\n  api_key: a-${TG_TEST_KEY}-${TG_TEST_KEY}-z\n");
    CHECK(cfg.upstream.api_key == "a-sk-live-sk-live-z");
  }
  SECTION("${VAR:-default} uses the default when VAR is unset or empty") {
    CHECK(load_config_string("upstream:\n  name: ${TG_TEST_UNSET:-backup}\n").upstream.name == "backup");
    CHECK(load_config_string("upstream:\n  name: ${TG_TEST_EMPTY:-backup}\n").upstream.name == "backup");
    CHECK(load_config_string("upstream:\n  name: ${TG_TEST_KEY:-backup}\n").upstream.name == "sk-live");
  }
  SECTION("typed values are substituted before they are parsed") {
    config cfg = load_config_string("listen: 127.0.0.1:${TG_TEST_PORT}\nworkers: ${TG_TEST_UNSET:-3}\n");
    CHECK(cfg.listen.port == 18081);
    CHECK(cfg.workers == 3);
  }
  SECTION("an unset variable without default becomes empty and warns with file:line") {
    config cfg = load_config_string("listen: 127.0.0.1:1\nupstream:\n  api_key: ${TG_TEST_UNSET}\n", "sub.yaml");
    CHECK(cfg.upstream.api_key.empty());
    REQUIRE(cfg.warnings.size() == 1);
    CHECK(cfg.warnings[0] == "sub.yaml:3: environment variable TG_TEST_UNSET is not set; using an empty value");
  }
  SECTION("a set but empty variable is not warned about") {
    config cfg = load_config_string("upstream:\n  api_key: ${TG_TEST_EMPTY}\n");
    CHECK(cfg.upstream.api_key.empty());
    CHECK(cfg.warnings.empty());
  }
  SECTION("$${ is a literal ${") {
    CHECK(load_config_string("upstream:\n  api_key: \"$${TG_TEST_KEY}\"\n").upstream.api_key == "${TG_TEST_KEY}");
  }
  SECTION("malformed references are errors with file:line") {
    CHECK_THAT(load_error("upstream:\n  api_key: ${TG_TEST_KEY\n"), StartsWith("test.yaml:2: unterminated ${"));
    CHECK_THAT(load_error("upstream:\n  api_key: ${1BAD}\n"), StartsWith("test.yaml:2: invalid environment variable reference"));
  }
}

TEST_CASE("config: tls_verify false adds a warning naming the upstream", "[config]") {
  config cfg = load_config_string("upstream:\n  url: https://relay.example.com/v1\n  tls_verify: false\n");
  CHECK_FALSE(cfg.upstream.tls_verify);
  REQUIRE(cfg.warnings.size() == 1);
  CHECK(cfg.warnings[0] ==
        "upstream TLS certificate verification is DISABLED (upstream.tls_verify: false); traffic to "
        "https://relay.example.com/v1 can be intercepted");
}

TEST_CASE("config: TOLLGATE_* environment overrides", "[config]") {
  clean_overrides clean;

  SECTION("every override replaces the file's value") {
    scoped_env a("TOLLGATE_LISTEN", "0.0.0.0:9000"), b("TOLLGATE_ADMIN_LISTEN", "[::1]:9001"),
        c("TOLLGATE_UPSTREAM_URL", "http://127.0.0.1:7000"), d("TOLLGATE_UPSTREAM_API_KEY", "sk-env"),
        e("TOLLGATE_LEDGER_PATH", "/tmp/l.db"), f("TOLLGATE_LOG_LEVEL", "debug"), g("TOLLGATE_WORKERS", "2");
    config cfg = load_config_string("upstream:\n  api_key: from-file\n");
    apply_env_overrides(cfg);
    CHECK(cfg.listen.host == "0.0.0.0");
    CHECK(cfg.listen.port == 9000);
    CHECK(cfg.admin_listen.host == "::1");
    CHECK(cfg.admin_listen.port == 9001);
    CHECK(cfg.upstream.url == "http://127.0.0.1:7000");
    CHECK(cfg.upstream.api_key == "sk-env");
    CHECK(cfg.ledger_path == "/tmp/l.db");
    CHECK(cfg.log == log_level::debug);
    CHECK(cfg.workers == 2);
  }
  SECTION("a base URL with a path is kept as given") {
    scoped_env u("TOLLGATE_UPSTREAM_URL", "https://relay.example.com/openai/v1");
    config cfg;
    apply_env_overrides(cfg);
    CHECK(cfg.upstream.url == "https://relay.example.com/openai/v1");
  }
  SECTION("empty variables count as unset") {
    scoped_env a("TOLLGATE_LISTEN", ""), k("TOLLGATE_UPSTREAM_API_KEY", "");
    config cfg = load_config_string("upstream:\n  api_key: from-file\n");
    apply_env_overrides(cfg);
    CHECK(cfg.listen.port == 8080);
    CHECK(cfg.upstream.api_key == "from-file");
  }
  SECTION("malformed values name the variable") {
    config cfg;
    {
      scoped_env a("TOLLGATE_LISTEN", "nope");
      CHECK_THAT(error_of([&] { apply_env_overrides(cfg); }), StartsWith("environment: TOLLGATE_LISTEN: missing port"));
    }
    {
      scoped_env a("TOLLGATE_ADMIN_LISTEN", "127.0.0.1:65536");
      CHECK_THAT(error_of([&] { apply_env_overrides(cfg); }), StartsWith("environment: TOLLGATE_ADMIN_LISTEN: invalid port"));
    }
    {
      scoped_env a("TOLLGATE_UPSTREAM_URL", "127.0.0.1:9000");
      CHECK(error_of([&] { apply_env_overrides(cfg); }) ==
            "environment: TOLLGATE_UPSTREAM_URL: URL must start with http:// or https://");
    }
    {
      scoped_env a("TOLLGATE_LOG_LEVEL", "chatty");
      CHECK_THAT(error_of([&] { apply_env_overrides(cfg); }), StartsWith("environment: TOLLGATE_LOG_LEVEL: invalid log level"));
    }
    {
      scoped_env a("TOLLGATE_WORKERS", "many");
      CHECK_THAT(error_of([&] { apply_env_overrides(cfg); }), StartsWith("environment: TOLLGATE_WORKERS: expected an integer"));
    }
  }
}

TEST_CASE("config: validate refuses a public listen address without client auth", "[config]") {
  config cfg = load_config_string("listen: 0.0.0.0:8080\nauth: off\n", "pub.yaml");
  SECTION("auth defaults to required on a public address, off on loopback") {
    config pub = load_config_string("listen: 0.0.0.0:8080\n", "pub.yaml");
    CHECK_NOTHROW(validate(pub));
    CHECK(pub.policy.auth == auth_mode::required);
    config local = load_config_string("listen: 127.0.0.1:8080\n", "local.yaml");
    validate(local);
    CHECK(local.policy.auth == auth_mode::off);
  }
  SECTION("refused without allow_public_without_auth") {
    CHECK(error_of([&] { validate(cfg); }) ==
          "pub.yaml: refusing to listen on 0.0.0.0:8080 without client authentication; set "
          "allow_public_without_auth: true to allow it");
  }
  SECTION("IPv6 wildcard is refused too") {
    cfg.listen = {"::", 8080};
    CHECK_THAT(error_of([&] { validate(cfg); }), Contains("refusing to listen on [::]:8080"));
  }
  SECTION("accepted with allow_public_without_auth") {
    cfg.allow_public_without_auth = true;
    CHECK_NOTHROW(validate(cfg));
  }
  SECTION("loopback addresses need no flag") {
    for (const char* host : {"127.0.0.1", "127.1.2.3", "::1", "localhost"}) {
      cfg.listen = {host, 8080};
      CHECK_NOTHROW(validate(cfg));
    }
  }
}

TEST_CASE("config: validate refuses listen and admin_listen on the same port", "[config]") {
  config cfg;
  cfg.listen = {"127.0.0.1", 9000};
  cfg.admin_listen = {"127.0.0.1", 9000};
  CHECK_THAT(error_of([&] { validate(cfg); }), Contains("listen (127.0.0.1:9000) and admin_listen (127.0.0.1:9000) use the same port"));
  cfg.admin_listen = {"0.0.0.0", 9000};  // the wildcard covers loopback
  CHECK_THAT(error_of([&] { validate(cfg); }), Contains("use the same port"));
  cfg.admin_listen = {"127.0.0.1", 9001};
  CHECK_NOTHROW(validate(cfg));
  cfg.listen.port = cfg.admin_listen.port = 0;  // two ephemeral ports never clash
  CHECK_NOTHROW(validate(cfg));
}

TEST_CASE("config: parse_duration", "[config]") {
  SECTION("accepted forms") {
    CHECK(parse_duration("250ms") == 250ms);
    CHECK(parse_duration("10s") == 10s);
    CHECK(parse_duration("5m") == 5min);
    CHECK(parse_duration("1h") == 1h);
    CHECK(parse_duration("1d") == 24h);
    CHECK(parse_duration("1.5s") == 1500ms);
    CHECK(parse_duration("0.25m") == 15s);
    CHECK(parse_duration("30") == 30s);
    CHECK(parse_duration("0") == 0ms);
    CHECK(parse_duration(" 10 s ") == 10s);
  }
  SECTION("rejected forms") {
    for (const char* bad : {"", "-1s", "abc", "10x", "s", "1.s", ".5s", "10sec", "1e3", "10s5", "99999999999999999999d",
                            "9999999999999999s"}) {
      INFO(bad);
      CHECK_THROWS_AS(parse_duration(bad), std::invalid_argument);
    }
  }
}

TEST_CASE("config: parse_size", "[config]") {
  SECTION("accepted forms") {
    CHECK(parse_size("32MiB") == 32u << 20);
    CHECK(parse_size("64KiB") == 64u << 10);
    CHECK(parse_size("1GiB") == std::size_t{1} << 30);
    CHECK(parse_size("10MB") == 10'000'000);
    CHECK(parse_size("10KB") == 10'000);
    CHECK(parse_size("10kB") == 10'000);
    CHECK(parse_size("1000") == 1000);
    CHECK(parse_size("1000B") == 1000);
    CHECK(parse_size("1.5KiB") == 1536);
    CHECK(parse_size("0") == 0);
  }
  SECTION("rejected forms") {
    for (const char* bad : {"", "-1", "-5MiB", "abc", "10M", "10XB", "1.5", "MiB", "99999999999999999999",
                            "20000000TiB"}) {
      INFO(bad);
      CHECK_THROWS_AS(parse_size(bad), std::invalid_argument);
    }
  }
}

TEST_CASE("config: parse_host_port", "[config]") {
  SECTION("accepted forms") {
    struct row {
      const char* in;
      const char* host;
      std::uint16_t port;
    };
    for (const row& r : {row{"127.0.0.1:8080", "127.0.0.1", 8080}, row{"[::1]:8080", "::1", 8080},
                         row{"localhost:0", "localhost", 0}, row{":8080", "127.0.0.1", 8080},
                         row{"0.0.0.0:65535", "0.0.0.0", 65535}, row{"[::]:1", "::", 1},
                         row{"proxy.internal:443", "proxy.internal", 443}}) {
      INFO(r.in);
      host_port hp = parse_host_port(r.in);
      CHECK(hp.host == r.host);
      CHECK(hp.port == r.port);
    }
  }
  SECTION("rejected forms") {
    for (const char* bad : {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:http",
                            "::1:8080", "[::1]", "[::1]8080", "[nothost]:80", "bad host:80", "300.1.1.1:80", ":"}) {
      INFO(bad);
      CHECK_THROWS_AS(parse_host_port(bad), std::invalid_argument);
    }
  }
}

TEST_CASE("config: parse_log_level and is_loopback", "[config]") {
  CHECK(parse_log_level("trace") == log_level::trace);
  CHECK(parse_log_level("debug") == log_level::debug);
  CHECK(parse_log_level("info") == log_level::info);
  CHECK(parse_log_level("warn") == log_level::warn);
  CHECK(parse_log_level("warning") == log_level::warn);
  CHECK(parse_log_level("ERROR") == log_level::error);
  CHECK_THROWS_AS(parse_log_level("verbose"), std::invalid_argument);

  for (const char* host : {"127.0.0.1", "127.255.0.9", "::1", "localhost", "LOCALHOST", "::ffff:127.0.0.1"}) {
    INFO(host);
    CHECK(is_loopback(host));
  }
  for (const char* host : {"0.0.0.0", "::", "10.0.0.1", "128.0.0.1", "example.com", "", "localhost.example.com"}) {
    INFO(host);
    CHECK_FALSE(is_loopback(host));
  }
}

TEST_CASE("config: a file without an upstream section keeps the documented upstream and its key", "[config]") {
  clean_overrides clean;
  scoped_env key("HOLYSHEEP_API_KEY", "sk-holysheep");
  for (const char* yaml : {"timezone: UTC\n", "upstream:\n  url: https://api.holysheep.ai/v1\n"}) {
    INFO(yaml);
    const config cfg = load_config_string(yaml, "t.yaml");
    CHECK(cfg.upstream.name == "holysheep");
    CHECK(cfg.upstream.api_key == "sk-holysheep");
  }
  CHECK(load_config_string("upstream:\n  api_key: mine\n", "t.yaml").upstream.api_key == "mine");
  CHECK(load_config_string("upstream:\n  api_key: \"\"\n", "t.yaml").upstream.api_key.empty());  // said empty: empty
}

TEST_CASE("config: values that would overflow or swallow lines are refused with file:line", "[config]") {
  CHECK_THAT(load_error("ledger:\n  batch_rows: 18446744073709551615\n"), StartsWith("test.yaml:2: ledger.batch_rows: too large"));
  CHECK_THAT(load_error("reserve_max_tokens: 9223372036854775808\n"), StartsWith("test.yaml:1: reserve_max_tokens: too large"));
  CHECK_THAT(load_error("upstream:\n  timeouts:\n    total: 106752d\n"), StartsWith("test.yaml:3: upstream.timeouts.total: too large"));
  CHECK_NOTHROW(load_config_string("upstream:\n  timeouts:\n    total: 3650d\n"));
  // An unterminated quote: YAML would fold the lines below into the value, budget and all.
  CHECK_THAT(load_error("upstream:\n  name: \"relay\nbudgets:\n  - { scope: global, period: day, limit_usd: 1, hard: true }\n"),
             StartsWith("test.yaml:2: upstream.name: the quoted value opened here does not close on this line"));
  CHECK_THAT(load_error("admin_token: 'abc\ntimezone: UTC\n"), Contains("does not close on this line"));
  const config quoted = load_config_string("admin_token: \"a \\\" b\"\nledger:\n  path: 'it''s.db'\n", "t.yaml");
  CHECK(quoted.policy.admin_token == "a \" b");
  CHECK(quoted.ledger_path == "it's.db");
  CHECK_THAT(load_error("upstream:\n  name: \"my relay\"\n"), Contains("upstream.name: expected 1-64 letters"));
}

TEST_CASE("config: a webhook URL may carry a query", "[config]") {
  const config cfg = load_config_string(
      "alerts:\n  webhooks:\n    - { url: \"https://chat.googleapis.com/v1/spaces/X/messages?key=a&token=b\" }\n", "t.yaml");
  REQUIRE(cfg.policy.webhooks.size() == 1);
  CHECK(cfg.policy.webhooks[0].url == "https://chat.googleapis.com/v1/spaces/X/messages?key=a&token=b");
  CHECK_THAT(load_error("alerts:\n  webhooks:\n    - { url: \"https://x/y?a b\" }\n"), Contains("spaces or control characters"));
}

TEST_CASE("config: listen addresses from the environment are checked like the file's", "[config]") {
  clean_overrides clean;
  scoped_env listen("TOLLGATE_LISTEN", "example.com:8085");
  config cfg = load_config_string("", "t.yaml");
  CHECK_THAT(error_of([&] { apply_env_overrides(cfg); }), Contains("TOLLGATE_LISTEN: 'example.com' is not an IP address"));
  config same;
  same.listen = {"localhost", 9000};
  same.admin_listen = {"127.0.0.1", 9000};
  CHECK_THAT(error_of([&] { validate(same); }), Contains("use the same port"));
}

TEST_CASE("config: budgets may be per end user (user:<id>, user:*), spend guards of one end user only", "[config]") {
  clean_overrides clean;
  const config c = load_config_string(
      "budgets:\n"
      "  - { scope: 'user:*', period: day, limit_usd: 5, hard: true, soft: [0.8] }\n"
      "  - { scope: 'user:acme-42', period: month, limit_usd: 300 }\n"
      "spend_guard:\n"
      "  - { scope: 'user:bot-7', window: 10m, max_usd: 2 }\n",
      "test.yaml");
  REQUIRE(c.policy.budgets.size() == 2);
  CHECK(c.policy.budgets[0].scope == "user:*");
  CHECK(c.policy.budgets[0].hard);
  CHECK(c.policy.budgets[1].scope == "user:acme-42");
  REQUIRE(c.policy.spend_guards.size() == 1);
  CHECK(c.policy.spend_guards[0].scope == "user:bot-7");
  CHECK_THAT(load_error("spend_guard:\n  - { scope: 'user:*', window: 1h, max_usd: 2 }\n"),
             StartsWith("test.yaml:2: ") && Contains("name one end user, user:<id>"));
  CHECK_THAT(load_error("budgets:\n  - { scope: 'user:', limit_usd: 2 }\n"),
             StartsWith("test.yaml:2: ") && Contains("user:<id> or user:*"));
}

TEST_CASE("config: user_header names a header of its own, lower-cased", "[config]") {
  clean_overrides clean;
  CHECK(load_config_string("user_header: X-End-User\n", "test.yaml").policy.user_header == "x-end-user");
  CHECK(config{}.policy.user_header.empty());
  CHECK_THAT(load_error("auth: off\nuser_header: \"x end user\"\n"), StartsWith("test.yaml:2: ") && Contains("not a header name"));
  CHECK_THAT(load_error("user_header: Authorization\n"), StartsWith("test.yaml:1: ") && Contains("x-end-user"));
  CHECK_THAT(load_error("user_header: x-api-key\n"), StartsWith("test.yaml:1: "));
}

TEST_CASE("config: user_limits gives every end user RPM and TPM limits", "[config]") {
  clean_overrides clean;
  const config c = load_config_string("user_limits: { rpm: 20, tpm: 40000 }\n", "test.yaml");
  CHECK(c.policy.user_limits.rpm == 20);
  CHECK(c.policy.user_limits.tpm == 40000);
  CHECK_FALSE(config{}.policy.user_limits.any());
  CHECK_THAT(load_error("user_limits:\n  rpn: 5\n"), StartsWith("test.yaml:2: "));
  CHECK_THAT(load_error("user_limits:\n  rpm: -1\n"), StartsWith("test.yaml:2: "));
}

TEST_CASE("config: each top-level section's text is kept, so a reload can name the sections that changed", "[config]") {
  const char* a = "log_level: warn\nbudgets:\n  - { scope: global, limit_usd: 10 }\nserver:\n  max_body_bytes: 1MiB\n";
  const char* b = "log_level: warn\nbudgets:\n  - { scope: global, limit_usd: 20 }\nserver:\n  max_body_bytes: 1MiB\n";
  const char* c = "log_level: warn\nbudgets:\n  - { scope: global, limit_usd: 10 }\nserver: { max_body_bytes: 2MiB }\n";
  const auto x = tollgate::load_config_string(a), y = tollgate::load_config_string(b), z = tollgate::load_config_string(c);
  CHECK(x.sections.size() == 3);
  CHECK(x.sections.at("log_level") == y.sections.at("log_level"));
  CHECK(x.sections.at("server") == y.sections.at("server"));
  CHECK(x.sections.at("budgets") != y.sections.at("budgets"));
  CHECK(x.sections.at("server") != z.sections.at("server"));
  CHECK(x.sections.at("budgets") == z.sections.at("budgets"));
  // Layout and comments are not changes: the same values written another way.
  const auto w = tollgate::load_config_string("log_level: warn  # quiet\nbudgets: [{ scope: global, limit_usd: 10 }]\nserver: { max_body_bytes: 1MiB }\n");
  CHECK(w.sections == x.sections);
  CHECK(tollgate::load_config_string("").sections.empty());
}
