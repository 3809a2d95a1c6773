// tollgate's command line: parse flags, load and check the config, run the proxy until SIGINT or
// SIGTERM. Start-up errors print file:line and exit non-zero; nothing here runs per request.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>

#include <sqlite3.h>

#include "core/config.hpp"
#include "core/log.hpp"
#include "ledger/report_cli.hpp"
#include "net/server.hpp"

namespace {

constexpr const char* usage_text =
    R"(Usage: tollgate [--config FILE] [--check-config] [--version] [--help]
       tollgate report [--ledger FILE] [--month YYYY-MM | --from X --to Y] [--by model|team|key|user|tier|provider|day] [--csv]
                       (see 'tollgate report --help')

An LLM API relay: point your OpenAI/Anthropic base URL at it; every call is forwarded to the
configured upstream and recorded in the ledger, with Prometheus metrics on the admin port.

Options:
  -c, --config FILE   configuration file (default: $TOLLGATE_CONFIG, else config/tollgate.yaml)
      --check-config  load and validate the configuration and price tables, then exit
  -v, --version       print the version and exit
  -h, --help          print this help and exit

Environment overrides (for containers and tests):
  TOLLGATE_LISTEN, TOLLGATE_ADMIN_LISTEN   host:port of the client and admin listeners
  TOLLGATE_UPSTREAM_URL                    one upstream (origin or base URL) serving every model; replaces `upstreams`
  TOLLGATE_UPSTREAM_API_KEY                upstream API key (the single or first upstream)
  TOLLGATE_ADMIN_TOKEN                     admin API token (admin_token)
  TOLLGATE_LEDGER_PATH                     SQLite ledger file
  TOLLGATE_LEDGER_POSTGRES_URL             fleet ledger PostgreSQL (ledger.postgres.url)
  TOLLGATE_LOG_LEVEL                       trace|debug|info|warn|error
  TOLLGATE_WORKERS                         I/O threads (0 = CPUs available)
)";

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  // Until run_until_signal() catches it (and logs it), a SIGHUP during start-up must not end
  // the process either.
  std::signal(SIGHUP, SIG_IGN);
  // SQLite's allocation statistics take a global mutex around every malloc and free (~1k
  // instructions per ledger row); tollgate never reads them. Must precede sqlite3_initialize.
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  if (argc >= 2 && std::strcmp(argv[1], "report") == 0) return tollgate::report_main(argc - 2, argv + 2);
  std::string config_path;
  bool config_given = false;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage_text, stdout);
      return 0;
    } else if (a == "-v" || a == "--version") {
      std::printf("tollgate %s\n", TOLLGATE_VERSION);
      return 0;
    } else if (a == "--check-config") {
      check_only = true;
    } else if (a == "-c" || a == "--config") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "tollgate: %s needs a file name\n", a.c_str());
        return 2;
      }
      config_path = argv[++i];
      config_given = true;
    } else if (a.rfind("--config=", 0) == 0) {
      config_path = a.substr(9);
      config_given = true;
    } else {
      std::fprintf(stderr, "tollgate: unknown argument '%s' (see --help)\n", a.c_str());
      return 2;
    }
  }
  // Given empty (a script's unset variable), not the default file in its place.
  if (config_given && config_path.empty()) {
    std::fprintf(stderr, "tollgate: --config needs a file name, not an empty one\n");
    return 2;
  }
  if (config_path.empty()) config_path = tollgate::default_config_path();

  try {
    tollgate::config cfg = tollgate::load_config_file(config_path);
    tollgate::apply_env_overrides(cfg);
    tollgate::validate(cfg);
    tollgate::set_log_level(cfg.log);
    if (check_only) {
      // Prices are part of the configuration: load them too.
      tollgate::app probe(cfg);
      for (const auto& w : cfg.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
      std::printf("%s: configuration OK\n", config_path.c_str());
      return 0;
    }
    tollgate::app proxy(std::move(cfg));
    proxy.start();
    proxy.run_until_signal();
    return 0;
  } catch (const tollgate::config_error& e) {
    std::fprintf(stderr, "tollgate: configuration error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tollgate: %s\n", e.what());
    return 1;
  }
}
