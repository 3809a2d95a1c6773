// Prometheus metrics of the relay (prometheus-cpp registry, served by the admin listener).
// Families are registered once; hot-path children are cached so a call costs a few atomic adds.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/usage_record.hpp"

namespace prometheus {
class Registry;
class Counter;
}

namespace tollgate {

class price_table;
struct ledger_stats;

// A counter mirroring a cumulative count kept elsewhere (ledger, breakers, policy engine),
// brought up to `total` at scrape time; a count never goes down, so a lower total is ignored.
void set_counter_total(prometheus::Counter& c, double total);

class metrics {
 public:
  explicit metrics(const price_table& prices);
  ~metrics();
  // Gives the `model` label these entry names too (a price reload's new entries); names it
  // has already are skipped. A removed entry's series stay: counters do not go back.
  void add_models(const std::vector<std::string>& names);
  metrics(const metrics&) = delete;
  metrics& operator=(const metrics&) = delete;

  // One completed (or refused) call. `overhead_s`: time tollgate itself added.
  void record_call(const usage_record& rec, double overhead_s);
  void upstream_error(std::string_view kind);
  void ledger_committed(std::size_t rows);
  void unpriced_call();

  std::atomic<std::int64_t> inflight{0};

  // Text exposition (format 0.0.4) of everything, with the ledger gauges refreshed from `ls`.
  std::string serialize(const ledger_stats& ls);

  // The registry /metrics serializes, for components that register their own families once at
  // start-up (the forecast service's gauges).
  prometheus::Registry& registry() noexcept;
  // Runs before every scrape (under the scrape lock): components refresh their gauges from
  // their own state (upstream breakers, budgets). Register at start-up only.
  void add_scrape_hook(std::function<void()> hook);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace tollgate
