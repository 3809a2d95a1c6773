// The relay's Prometheus families (see README "Metrics") and the cached children updated per
// call. Called by client_session on completion and by the admin listener on scrape.
#include "net/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "core/pricing.hpp"
#include "ledger/ledger.hpp"

namespace tollgate {

namespace pm = prometheus;

struct metrics::impl {
  std::shared_ptr<pm::Registry> registry = std::make_shared<pm::Registry>();
  pm::Family<pm::Counter>& requests = pm::BuildCounter()
      .Name("tollgate_requests_total")
      .Help("Calls answered, by route, priced model (or 'other') and HTTP status code.")
      .Register(*registry);
  pm::Family<pm::Histogram>& duration = pm::BuildHistogram()
      .Name("tollgate_request_duration_seconds")
      .Help("Call duration from request received to last byte sent, by route.")
      .Register(*registry);
  pm::Family<pm::Histogram>& first_byte = pm::BuildHistogram()
      .Name("tollgate_upstream_first_byte_seconds")
      .Help("Time from request received to the upstream's response head, by route.")
      .Register(*registry);
  pm::Family<pm::Histogram>& overhead_f = pm::BuildHistogram()
      .Name("tollgate_overhead_seconds")
      .Help("Time tollgate itself added to a call (before the upstream request and after its last byte).")
      .Register(*registry);
  pm::Family<pm::Counter>& tokens = pm::BuildCounter()
      .Name("tollgate_tokens_total")
      .Help("Tokens metered, by model and kind (prompt includes cached; completion includes reasoning).")
      .Register(*registry);
  pm::Family<pm::Counter>& spend = pm::BuildCounter()
      .Name("tollgate_spend_usd_total")
      .Help("Spend in USD, by model.")
      .Register(*registry);
  pm::Family<pm::Gauge>& inflight_f = pm::BuildGauge()
      .Name("tollgate_inflight_requests")
      .Help("Calls in progress.")
      .Register(*registry);
  pm::Family<pm::Counter>& upstream_errors = pm::BuildCounter()
      .Name("tollgate_upstream_errors_total")
      .Help("Upstream failures, by kind.")
      .Register(*registry);
  pm::Family<pm::Gauge>& queue_depth_f = pm::BuildGauge()
      .Name("tollgate_ledger_queue_depth")
      .Help("Ledger rows waiting to be written.")
      .Register(*registry);
  pm::Family<pm::Counter>& ledger_rows_f = pm::BuildCounter()
      .Name("tollgate_ledger_rows_total")
      .Help("Ledger rows committed.")
      .Register(*registry);
  pm::Family<pm::Counter>& ledger_errors_f = pm::BuildCounter()
      .Name("tollgate_ledger_write_errors_total")
      .Help("Failed ledger transactions (rows are kept and retried).")
      .Register(*registry);
  pm::Family<pm::Counter>& unmetered_f = pm::BuildCounter()
      .Name("tollgate_unmetered_requests_total")
      .Help("Calls on a metered route answered 2xx whose usage could not be read (ledgered with "
            "usage_source none and cost 0), by route.")
      .Register(*registry);
  pm::Family<pm::Counter>& unpriced_f = pm::BuildCounter()
      .Name("tollgate_unpriced_requests_total")
      .Help("Calls whose model has no price (ledgered with cost 0 and priced = false).")
      .Register(*registry);

  pm::Gauge& inflight = inflight_f.Add({});
  pm::Gauge& queue_depth = queue_depth_f.Add({});
  pm::Counter& ledger_rows = ledger_rows_f.Add({});
  pm::Counter& ledger_errors = ledger_errors_f.Add({});
  pm::Counter& unpriced = unpriced_f.Add({});
  std::vector<std::function<void()>> scrape_hooks;  // guarded by mu

  // Per-route histograms (route is a small fixed set).
  struct route_children {
    pm::Histogram* duration;
    pm::Histogram* first_byte;
    pm::Histogram* overhead;
    pm::Counter* unmetered;  // nullptr on routes that are not metered (models, other)
  };
  route_children routes[7];

  // Per-model children, created for every price-table entry plus "other" at start-up.
  struct model_children {
    std::uint64_t index;  // 0, 1, ...: part of the request counters' per-thread cache key
    pm::Counter* prompt;
    pm::Counter* completion;
    pm::Counter* cached;
    pm::Counter* reasoning;
    pm::Counter* spend;
  };
  // The `model` label's children per price-table entry (and "other"). A price reload adds the
  // new entries' children to a copy and publishes it (add_models); a published map is never
  // changed, and every map stays until the end (a call may still read an older one; one map per
  // reload that added a model), so record_call reads the current one with one load, no lock.
  using model_map = std::unordered_map<std::string, model_children>;
  std::atomic<const model_map*> models{nullptr};
  std::vector<std::unique_ptr<const model_map>> model_maps;  // every map published (under mu)

  // Lazily created (route, model, code) and upstream error children.
  const std::uint64_t id = next_id.fetch_add(1, std::memory_order_relaxed);  // for the thread caches
  static inline std::atomic<std::uint64_t> next_id{1};
  std::mutex mu;
  std::unordered_map<std::string, pm::Counter*> request_children;
  std::unordered_map<std::string, pm::Counter*> error_children;
};

namespace {
pm::Histogram::BucketBoundaries latency_buckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}
pm::Histogram::BucketBoundaries overhead_buckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1};
}
}  // namespace

metrics::metrics(const price_table& prices) : impl_(std::make_unique<impl>()) {
  auto& m = *impl_;
  for (int r = 0; r < 7; ++r) {
    std::string route(to_string(static_cast<route_kind>(r)));
    const auto kind = static_cast<route_kind>(r);
    const bool metered = kind != route_kind::models && kind != route_kind::other;
    m.routes[r] = {&m.duration.Add({{"route", route}}, latency_buckets()),
                   &m.first_byte.Add({{"route", route}}, latency_buckets()),
                   &m.overhead_f.Add({{"route", route}}, overhead_buckets()),
                   metered ? &m.unmetered_f.Add({{"route", route}}) : nullptr};
  }
  auto names = prices.names();
  names.emplace_back("other");
  add_models(names);
}

void metrics::add_models(const std::vector<std::string>& names) {
  auto& m = *impl_;
  std::lock_guard lock(m.mu);
  const impl::model_map* now = m.models.load(std::memory_order_relaxed);
  auto next = now ? std::make_unique<impl::model_map>(*now) : std::make_unique<impl::model_map>();
  const std::size_t before = next->size();
  for (const auto& name : names) {
    if (next->contains(name)) continue;
    next->emplace(name, impl::model_children{
                            next->size(),
                            &m.tokens.Add({{"model", name}, {"kind", "prompt"}}),
                            &m.tokens.Add({{"model", name}, {"kind", "completion"}}),
                            &m.tokens.Add({{"model", name}, {"kind", "cached"}}),
                            &m.tokens.Add({{"model", name}, {"kind", "reasoning"}}),
                            &m.spend.Add({{"model", name}}),
                        });
  }
  if (now && next->size() == before) return;  // nothing new: the published map stays
  m.models.store(next.get(), std::memory_order_release);
  m.model_maps.push_back(std::move(next));
}

metrics::~metrics() = default;

prometheus::Registry& metrics::registry() noexcept { return *impl_->registry; }

void metrics::record_call(const usage_record& rec, double overhead_s) {
  auto& m = *impl_;
  // The `model` label: the call's price-table entry, or "other" (a bounded set).
  const impl::model_map& models = *m.models.load(std::memory_order_acquire);
  auto mit = rec.price_model.empty() ? models.end() : models.find(rec.price_model);
  if (mit == models.end()) mit = models.find("other");
  const std::string_view model = mit->first;
  const impl::model_children& mc = mit->second;
  const auto route = static_cast<int>(rec.route);
  // The (route, model, code) child: found in this thread's cache by an integer key, so a call
  // takes no lock and builds no string; only a combination the thread has not seen yet goes to
  // the shared map under the mutex. The cache belongs to one metrics object (id), and holds at
  // most the family's own (bounded) children.
  struct request_cache {
    std::uint64_t owner = 0;
    std::unordered_map<std::uint64_t, pm::Counter*> children;
  };
  thread_local request_cache cache;
  if (cache.owner != m.id) {
    cache.children.clear();
    cache.owner = m.id;
  }
  pm::Counter* uncached = nullptr;  // a status outside 0-999 has no cache key
  const bool cacheable = rec.status >= 0 && rec.status < 1000;
  const std::uint64_t cache_key =
      (mc.index << 16) | (static_cast<std::uint64_t>(route) << 10) | static_cast<std::uint64_t>(cacheable ? rec.status : 0);
  pm::Counter*& req = cacheable ? cache.children[cache_key] : uncached;
  if (!req) {
    std::string key;
    key.append(to_string(rec.route)).push_back('|');
    key.append(model).push_back('|');
    key += std::to_string(rec.status);
    std::lock_guard lock(m.mu);
    auto it = m.request_children.find(key);
    if (it == m.request_children.end()) {
      req = &m.requests.Add({{"route", std::string(to_string(rec.route))},
                             {"model", std::string(model)},
                             {"code", std::to_string(rec.status)}});
      m.request_children.emplace(std::move(key), req);
    } else {
      req = it->second;
    }
  }
  req->Increment();
  m.routes[route].duration->Observe(rec.latency_ms / 1000.0);
  if (rec.first_byte_ms >= 0) m.routes[route].first_byte->Observe(rec.first_byte_ms / 1000.0);
  if (overhead_s >= 0) m.routes[route].overhead->Observe(overhead_s);
  // An answer the meter could not read (not JSON, cut, beyond max_parse_bytes, no usage) or whose
  // usage tollgate estimated though it was not cut (a whole stream without usage): the provider
  // may bill otherwise, so it is counted where an alert can see it.
  const bool unreported = rec.source == usage_source::none || (rec.source == usage_source::estimated && !rec.aborted);
  if (unreported && rec.status >= 200 && rec.status < 300 && m.routes[route].unmetered)
    m.routes[route].unmetered->Increment();
  if (rec.tokens.prompt) mc.prompt->Increment(static_cast<double>(rec.tokens.prompt));
  if (rec.tokens.completion) mc.completion->Increment(static_cast<double>(rec.tokens.completion));
  if (rec.tokens.cached) mc.cached->Increment(static_cast<double>(rec.tokens.cached));
  if (rec.tokens.reasoning) mc.reasoning->Increment(static_cast<double>(rec.tokens.reasoning));
  if (rec.cost_usd > 0) mc.spend->Increment(rec.cost_usd);
}

void metrics::upstream_error(std::string_view kind) {
  auto& m = *impl_;
  std::lock_guard lock(m.mu);
  auto it = m.error_children.find(std::string(kind));
  if (it == m.error_children.end())
    it = m.error_children.emplace(std::string(kind), &m.upstream_errors.Add({{"kind", std::string(kind)}})).first;
  it->second->Increment();
}

void metrics::ledger_committed(std::size_t rows) { impl_->ledger_rows.Increment(static_cast<double>(rows)); }

void metrics::unpriced_call() { impl_->unpriced.Increment(); }

void set_counter_total(pm::Counter& c, double total) {
  const double now = c.Value();
  if (total > now) c.Increment(total - now);
}

void metrics::add_scrape_hook(std::function<void()> hook) {
  std::lock_guard lock(impl_->mu);
  impl_->scrape_hooks.push_back(std::move(hook));
}

std::string metrics::serialize(const ledger_stats& ls) {
  auto& m = *impl_;
  m.inflight.Set(static_cast<double>(inflight.load(std::memory_order_relaxed)));
  m.queue_depth.Set(static_cast<double>(ls.queue_depth));
  {
    std::lock_guard lock(m.mu);
    set_counter_total(m.ledger_errors, static_cast<double>(ls.write_errors));
    for (auto& hook : m.scrape_hooks) hook();
  }
  auto families = m.registry->Collect();
  // Forecast and budget gauges carry a `quantile` label (their names are part of the product's
  // contract), which promtool's lint reserves for summaries. Exposed as `untyped` they pass
  // `promtool check metrics`, and Prometheus and Grafana treat them exactly like gauges.
  for (auto& fam : families) {
    if (fam.type != pm::MetricType::Gauge) continue;
    bool has_quantile = false;
    for (const auto& metric : fam.metric)
      for (const auto& label : metric.label) has_quantile = has_quantile || label.name == "quantile";
    if (!has_quantile) continue;
    fam.type = pm::MetricType::Untyped;
    for (auto& metric : fam.metric) metric.untyped.value = metric.gauge.value;
  }
  pm::TextSerializer s;
  return s.Serialize(families);
}

}  // namespace tollgate
