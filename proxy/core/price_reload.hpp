// What a reload of the price table did (app::reload_prices: SIGHUP, POST /admin/prices/reload).
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

}  // namespace tollgate
