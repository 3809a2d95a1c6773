// The tollgate process as an object: loads prices, opens the ledger, binds the client and admin
// listeners, runs N worker threads, and shuts down gracefully. Used by main.cpp and by the
// integration tests (which run it in-process on 127.0.0.1:0). No Beast in this header.
#pragma once
#include <cstdint>
#include <memory>

#include "core/config.hpp"
#include "core/price_reload.hpp"

namespace tollgate {

class aggregator;
class ledger;
class metrics;
class price_table;

class app {
 public:
  // Loads the price tables and prepares everything; throws config_error / std::runtime_error
  // with a clear message on bad start-up input.
  explicit app(config cfg);
  ~app();  // shutdown()
  app(const app&) = delete;
  app& operator=(const app&) = delete;

  // Opens the ledger, binds both listeners and starts the worker and admin threads. Throws on
  // bind failures ("cannot listen on 127.0.0.1:8080: Address already in use").
  void start();
  std::uint16_t port() const noexcept;        // actual client port (after binding port 0)
  std::uint16_t admin_port() const noexcept;

  // Graceful stop: stop accepting, close idle connections, let in-flight calls finish up to
  // drain_timeout, then cancel the rest (they are ledgered as aborted), flush the ledger.
  // Idempotent; blocks until done.
  void shutdown();
  // Blocks until SIGINT or SIGTERM, then shutdown(); SIGHUP reloads the prices and the spend
  // controls meanwhile.
  void run_until_signal();

  const config& cfg() const noexcept;
  ledger& get_ledger() noexcept;
  metrics& get_metrics() noexcept;
  // The traffic aggregator behind the forecaster; nullptr when forecast.enabled is false.
  const aggregator* get_aggregator() const noexcept;
  // The price table in force (a reload replaces it; the one returned stays valid while held).
  std::shared_ptr<const price_table> prices() const;
  // Reads the price files again (prices_file, litellm_prices_file) and, when they load, puts
  // the new table in force for calls that start from now on; calls in flight finish at the
  // table they started with. A file that does not load leaves the table as it was and says why
  // (file:line). Called on SIGHUP and by POST /admin/prices/reload; thread-safe.
  price_reload reload_prices();
  // Reads the configuration file again and puts its spend controls' numbers in force (budget
  // limits, soft thresholds and hardness, spend guards' max_usd and reset_fraction, keys' and end
  // users' rpm/tpm), keeping what they have counted; what else differs is reported as taking
  // effect at a restart (policy_engine::retune). A file that does not load (file:line) changes
  // nothing. Called on SIGHUP and by POST /admin/config/reload; thread-safe.
  config_reload reload_config();

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace tollgate
