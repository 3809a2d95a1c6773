// What a reload did: of the price table (app::reload_prices: SIGHUP, POST /admin/prices/reload)
// and of the configuration file's spend controls (app::reload_config: SIGHUP, POST /admin/config/reload).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tollgate {

struct price_reload {
  bool ok = false;
  std::string error;               // why the files did not load ("prices.yaml:12: ..."); the old table stays
  std::size_t models = 0;          // entries of the table now in force
  std::vector<std::string> added;  // entries the new table has and the old did not
  std::vector<std::string> removed;
  std::vector<std::string> warnings;  // budgets and guards naming models the new table does not
  std::int64_t loaded_ms = 0;         // when the table in force was loaded (Unix ms)
  std::uint64_t reloads = 0;          // tables published since start (successful reloads)
};

struct config_reload {
  bool ok = false;
  std::string error;  // why the file did not load ("tollgate.yaml:12: ..."); nothing changed
  std::string file;   // the configuration file read
  // What changed in force ("budget global/month: limit $100.00 -> $150.00"), and what differs
  // from the running configuration but takes effect only at a restart ("server changed: ...").
  std::vector<std::string> applied;
  std::vector<std::string> restart_required;
  std::vector<std::string> warnings;  // the file's own (an unset ${VAR}, ...)
  std::int64_t loaded_ms = 0;         // when the controls in force were read (start or last reload; Unix ms)
  std::uint64_t reloads = 0;          // successful reloads since start
};

}  // namespace tollgate
