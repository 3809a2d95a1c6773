// The process object (server.hpp): start-up (prices, TLS context, ledger, listeners), the worker
// threads with their SO_REUSEPORT acceptors, the admin listener (/metrics, /healthz, /readyz) on
// its own thread, and graceful shutdown. Called by main.cpp and the integration tests.
#include "net/server.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <optional>
#include <set>
#include <cctype>
#include <csignal>
#include <functional>
#include <future>
#include <thread>

#include "core/aggregator.hpp"
#include "core/log.hpp"
#include "ledger/journal.hpp"
#include "ledger/key_store.hpp"
#include "ledger/ledger.hpp"
#include "ledger/ledger_history.hpp"
#include "ledger/pg_shipper.hpp"
#include "core/policy.hpp"
#include "net/admin_api.hpp"
#include "net/forecast_service.hpp"
#include "net/metrics.hpp"
#include "net/spend_control.hpp"
#include "net/spool_body.hpp"
#include "net/worker.hpp"

namespace tollgate {

namespace http = beast::http;
using asio::awaitable;
using asio::redirect_error;
using asio::use_awaitable;
using namespace std::literals;

// What a watched file is on disk (pricing.watch, watch_config): an edit changes its size or
// modification time, a swapped file (an editor's rename, a Kubernetes ConfigMap's symlink) its
// inode. stat() follows symlinks, so a ConfigMap's swapped target is seen.
struct file_identity {
  bool exists = false;
  std::uint64_t dev = 0, ino = 0, size = 0;
  std::int64_t mtime_ns = 0;
  bool operator==(const file_identity&) const = default;
};

static file_identity identity_of(const std::string& path) {
  file_identity f;
  struct stat st {};
  if (!path.empty() && ::stat(path.c_str(), &st) == 0) {
    f.exists = true;
    f.dev = st.st_dev;
    f.ino = st.st_ino;
    f.size = static_cast<std::uint64_t>(st.st_size);
    f.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  }
  return f;
}

static std::vector<file_identity> price_files_now(const config& c) {
  return {identity_of(c.prices_file), identity_of(c.litellm_prices_file)};
}

// A watched file that changed since it was last read, once it has stayed as it is for a tick (a
// second: an editor or a copy may write it in several steps). `loaded` is what the last read
// found (guarded by `mu`, the reload lock), `seen` a change seen at the last tick, not yet settled.
template <class Identity>
static bool settled_change(std::mutex& mu, const Identity& now, const Identity& loaded, std::optional<Identity>& seen) {
  std::lock_guard lock(mu);
  if (now == loaded) {
    seen.reset();
    return false;
  }
  if (!seen || *seen != now) {
    seen = now;
    return false;
  }
  seen.reset();
  return true;
}

struct app::impl {
  shared_state st;
  std::unique_ptr<ledger> ledger_;
  // The fleet ledger (ledger.postgres.url): committed rows copied to PostgreSQL.
  std::unique_ptr<pg_shipper> shipper_;
  std::unique_ptr<metrics> metrics_;
  // The forecaster (forecast.enabled): buckets fed by the ledger thread, gauges by its thread.
  std::unique_ptr<aggregator> aggregator_;
  std::unique_ptr<forecast_service> forecast_;
  // Keys, budgets, spend guards, rate limits and alerts.
  std::unique_ptr<spend_control> spend_;
  std::vector<std::unique_ptr<worker>> workers;
  std::uint16_t port = 0;
  std::uint16_t admin_port = 0;

  asio::io_context admin_ioc{1};
  std::optional<tcp::acceptor> admin_acceptor;
  std::thread admin_thread;
  // Admin API requests run here, off the admin thread: a report over months of ledger takes
  // seconds, and /metrics, /healthz and /readyz must answer meanwhile (a scrape timeout marks
  // the target down; a liveness probe would restart the process).
  asio::thread_pool admin_queries{1};

  bool started = false;
  bool stopped = false;
  std::mutex stop_mu;

  // Price reloads, one at a time; and what the last one left in force.
  std::mutex reload_mu;
  std::vector<file_identity> loaded_files;  // the price files as the last load found them (reload_mu)
  std::optional<std::vector<file_identity>> changed_files;  // pricing.watch: a change seen once, not yet settled
  file_identity loaded_config;                // the configuration file as the last read found it (reload_mu)
  std::optional<file_identity> changed_config;  // watch_config: likewise
  std::int64_t prices_loaded_ms = 0;
  std::uint64_t price_reloads = 0;
  prometheus::Counter* reloads_ok = nullptr;
  prometheus::Counter* reloads_failed = nullptr;
  prometheus::Gauge* prices_loaded = nullptr;
  prometheus::Gauge* price_models = nullptr;

  // Configuration reloads (reload_mu held): when the controls in force were read, and how often.
  std::int64_t config_loaded_ms = 0;
  // The admin token in force: the configuration's at start, then a reload's (rotated without a
  // restart). Read by each admin request.
  mutable std::mutex admin_token_mu;
  std::string admin_token;
  std::string admin_token_now() const {
    std::lock_guard lock(admin_token_mu);
    return admin_token;
  }
  std::uint64_t config_reloads = 0;
  prometheus::Counter* config_reloads_ok = nullptr;
  prometheus::Counter* config_reloads_failed = nullptr;
  prometheus::Gauge* config_restart_pending = nullptr;

  void start_admin();
  awaitable<void> admin_session(tcp::socket s);
  price_reload reload_prices();
  config_reload reload_config();
  void watch_config();
  // GET /admin/config: the last reload's outcome (reload_mu): its changes and what waits for a
  // restart from the last one that loaded, and the error of the last attempt if it failed.
  config_reload last_config_reload;
  config_reload config_status() {
    std::lock_guard lock(reload_mu);
    config_reload r = last_config_reload;
    r.file = st.cfg.source_file;
    r.loaded_ms = config_loaded_ms;
    r.reloads = config_reloads;
    return r;
  }
  void watch_prices();
  // The table in force: its entries, load time and reload count (reload_mu held).
  price_reload price_status_locked() const {
    price_reload r;
    r.ok = true;
    r.models = st.prices.current()->size();
    r.loaded_ms = prices_loaded_ms;
    r.reloads = price_reloads;
    return r;
  }
};

namespace {

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// tollgate_upstream_up, tollgate_circuit_state and tollgate_upstream_retries_total, refreshed from
// the breakers at each scrape (the upstream set is configured, so the labels are bounded).
void register_upstream_metrics(shared_state& st, metrics& m) {
  namespace pm = prometheus;
  auto& reg = m.registry();
  auto& up = pm::BuildGauge()
                 .Name("tollgate_upstream_up")
                 .Help("1 when the upstream's circuit breaker lets calls through (closed or half-open), else 0.")
                 .Register(reg);
  auto& state = pm::BuildGauge()
                    .Name("tollgate_circuit_state")
                    .Help("Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open.")
                    .Register(reg);
  auto& retries = pm::BuildCounter()
                      .Name("tollgate_upstream_retries_total")
                      .Help("Calls retried on another upstream after a connect error, a timeout before the first byte, a 429 or a 5xx.")
                      .Register(reg);
  struct child {
    upstream_node* node;
    pm::Gauge* up;
    pm::Gauge* state;
  };
  auto children = std::make_shared<std::vector<child>>();
  for (auto& n : st.upstreams)
    children->push_back({n.get(), &up.Add({{"upstream", n->cfg.name}}), &state.Add({{"upstream", n->cfg.name}})});
  auto* total = &retries.Add({});
  m.add_scrape_hook([children, total, &st] {
    auto now = steady::now();
    for (auto& c : *children) {
      auto s = c.node->breaker.current(now);
      c.up->Set(s == circuit_breaker::state::open ? 0 : 1);
      c.state->Set(static_cast<int>(s));
    }
    set_counter_total(*total, static_cast<double>(st.upstream_retries.load(std::memory_order_relaxed)));
  });
}

// Client connections by state, read at each scrape.
void register_connection_metrics(shared_state& st, metrics& m) {
  namespace pm = prometheus;
  auto& f = pm::BuildGauge()
                .Name("tollgate_client_connections")
                .Help("Open client connections: idle = parked, waiting for a request (keep-alive past 50 ms, or new and silent); active = the rest.")
                .Register(m.registry());
  auto* active = &f.Add({{"state", "active"}});
  auto* idle = &f.Add({{"state", "idle"}});
  m.add_scrape_hook([active, idle, &st] {
    const auto open = st.client_connections.load(std::memory_order_relaxed);
    const auto parked = st.parked_connections.load(std::memory_order_relaxed);
    idle->Set(static_cast<double>(parked));
    active->Set(static_cast<double>(std::max<std::int64_t>(0, open - parked)));
  });
}

// The ledger's durability figures (journal, memory hold, drops, health), read at each scrape.
void register_ledger_metrics(ledger& l, metrics& m) {
  namespace pm = prometheus;
  auto& reg = m.registry();
  auto& dropped = pm::BuildCounter()
                      .Name("tollgate_ledger_dropped_rows_total")
                      .Help("Ledger rows lost: neither the database, the journal nor the memory hold took them.")
                      .Register(reg)
                      .Add({});
  auto& pruned = pm::BuildCounter()
                     .Name("tollgate_ledger_pruned_rows_total")
                     .Help("Ledger rows deleted because their call is older than ledger.retention.")
                     .Register(reg)
                     .Add({});
  auto& replayed = pm::BuildCounter()
                       .Name("tollgate_ledger_replayed_rows_total")
                       .Help("Rows committed from the journal after the database recovered.")
                       .Register(reg)
                       .Add({});
  auto& journal_errors = pm::BuildCounter()
                             .Name("tollgate_ledger_journal_errors_total")
                             .Help("Failed journal writes or reads.")
                             .Register(reg)
                             .Add({});
  auto& journal_rows = pm::BuildGauge()
                           .Name("tollgate_ledger_journal_rows")
                           .Help("Rows in the journal waiting for the database.")
                           .Register(reg)
                           .Add({});
  auto& journal_bytes = pm::BuildGauge()
                            .Name("tollgate_ledger_journal_bytes")
                            .Help("Size of the journal file.")
                            .Register(reg)
                            .Add({});
  auto& memory_rows = pm::BuildGauge()
                          .Name("tollgate_ledger_memory_rows")
                          .Help("Rows the journal refused, held in memory.")
                          .Register(reg)
                          .Add({});
  auto& healthy = pm::BuildGauge()
                      .Name("tollgate_ledger_healthy")
                      .Help("1 when the database took the last write or probe, else 0 (rows go to the journal).")
                      .Register(reg)
                      .Add({});
  auto& writer_mode = pm::BuildGauge()
                          .Name("tollgate_ledger_writer_mode")
                          .Help("How the ledger writer shares its CPU: 0 idle (SCHED_IDLE), 1 paced (a backlog: at "
                                "most a quarter of a CPU), 2 full (a large backlog, a flush or shutdown).")
                          .Register(reg)
                          .Add({});
  m.add_scrape_hook([&, &l = l] {
    auto s = l.stats();
    writer_mode.Set(static_cast<double>(s.writer_mode));
    set_counter_total(dropped, static_cast<double>(s.dropped_rows));
    set_counter_total(replayed, static_cast<double>(s.replayed_rows));
    set_counter_total(pruned, static_cast<double>(s.pruned_rows));
    set_counter_total(journal_errors, static_cast<double>(s.journal_errors));
    journal_rows.Set(static_cast<double>(s.journaled_rows));
    journal_bytes.Set(static_cast<double>(s.journal_bytes));
    memory_rows.Set(static_cast<double>(s.memory_rows));
    healthy.Set(s.healthy ? 1 : 0);
  });
}

// The fleet member's name when ledger.postgres.instance is unset: the host name (a container's
// id under Docker), kept to the characters an instance name allows.
std::string default_instance_name() {
  char host[256] = {};
  std::string name;
  if (::gethostname(host, sizeof host - 1) == 0)
    for (const char* p = host; *p && name.size() < 64; ++p)
      name += std::isalnum(static_cast<unsigned char>(*p)) || *p == '-' || *p == '_' || *p == '.' ? *p : '_';
  return name.empty() ? "tollgate" : name;
}

void register_postgres_metrics(pg_shipper& p, metrics& m) {
  namespace pm = prometheus;
  auto& reg = m.registry();
  auto& shipped = pm::BuildCounter()
                      .Name("tollgate_ledger_postgres_shipped_rows_total")
                      .Help("Ledger rows this process copied into the fleet's PostgreSQL table.")
                      .Register(reg)
                      .Add({});
  auto& errors = pm::BuildCounter()
                     .Name("tollgate_ledger_postgres_errors_total")
                     .Help("Failed PostgreSQL connections or shipping transactions (rows wait in the local ledger).")
                     .Register(reg)
                     .Add({});
  auto& lag = pm::BuildGauge()
                  .Name("tollgate_ledger_postgres_lag_rows")
                  .Help("Rows of the local ledger past the last one known to be in PostgreSQL (while it is unreachable: rows waiting).")
                  .Register(reg)
                  .Add({});
  auto& up = pm::BuildGauge()
                 .Name("tollgate_ledger_postgres_up")
                 .Help("1 when the last exchange with the fleet's PostgreSQL worked, else 0.")
                 .Register(reg)
                 .Add({});
  auto& last = pm::BuildGauge()
                   .Name("tollgate_ledger_postgres_last_success_timestamp_seconds")
                   .Help("When a shipping pass last reached the end of the local ledger (0: never).")
                   .Register(reg)
                   .Add({});
  auto& remote = pm::BuildCounter()
                     .Name("tollgate_ledger_postgres_remote_spend_usd_total")
                     .Help("Spend of the fleet's other instances read from PostgreSQL into this instance's budgets and guards.")
                     .Register(reg)
                     .Add({});
  auto& ledgers = pm::BuildGauge()
                      .Name("tollgate_ledger_postgres_remote_ledgers")
                      .Help("Other ledgers (instances) of the fleet at the last look.")
                      .Register(reg)
                      .Add({});
  m.add_scrape_hook([&, &p = p] {
    auto s = p.stats();
    set_counter_total(remote, s.remote_spend_usd);
    ledgers.Set(static_cast<double>(s.remote_ledgers));
    set_counter_total(shipped, static_cast<double>(s.shipped_rows));
    set_counter_total(errors, static_cast<double>(s.errors));
    if (s.lag_rows >= 0) lag.Set(static_cast<double>(s.lag_rows));
    up.Set(s.connected ? 1 : 0);
    last.Set(s.last_success_unix);
  });
}

int default_workers() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

asio::ip::address resolve_listen_host(const std::string& host) {
  if (host == "localhost") return asio::ip::make_address("127.0.0.1");
  beast::error_code ec;
  auto a = asio::ip::make_address(host, ec);
  if (ec) throw std::runtime_error("cannot listen on '" + host + "': not an IP address (use 127.0.0.1, 0.0.0.0, ::1, ::)");
  return a;
}

tcp::acceptor make_acceptor(asio::io_context& ioc, const tcp::endpoint& ep, bool reuse_port, const std::string& what) {
  tcp::acceptor a(ioc);
  beast::error_code ec;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec && reuse_port) {
    int one = 1;
    if (::setsockopt(a.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
      ec = beast::error_code(errno, boost::system::system_category());
  }
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error("cannot listen on " + what + ": " + ec.message());
  return a;
}

// Realtime sessions that a crash (or a kill) cut while they ran: their rows as saved at the last
// second (open_sessions.hpp) go to the ledger and the metrics now, aborted, error_kind
// `tollgate_restart`, committed before the budgets warm-start from the ledger so their spend
// counts; then the table is emptied (a crash in between is harmless: a row already in calls is
// not read again).
void recover_open_sessions(app::impl& I) {
  const std::string& path = I.st.cfg.ledger_path;
  try {
    std::size_t n = 0;
    for (const auto& bytes : load_open_sessions(path)) {
      auto r = decode_usage_record(bytes);
      if (!r || !I.ledger_->reserve()) continue;
      I.metrics_->record_call(*r, -1);  // the crashed process never counted it (rows count when they end)
      I.ledger_->submit(std::move(*r));
      ++n;
    }
    if (n > 0) I.ledger_->flush();
    save_open_sessions(path, {});  // rows whose session reached calls before the stop go too
    if (n == 0) return;
    log_line(log_level::warn, "Realtime sessions cut by an unclean stop: ledgered as they stood at its last second")
        .integer("sessions", static_cast<std::int64_t>(n));
  } catch (const std::exception& e) {
    log_line(log_level::warn, "open Realtime sessions not read back: a crash may have lost their rows").str("error", e.what());
  }
}

// Reads the ledger's recent calls back into the aggregator (before the listeners open, so no
// new row can be counted twice). A failure only costs history: warn and go on.
void warm_start(app::impl& I) {
  const auto& c = I.st.cfg;
  const auto t0 = steady::now();
  const std::int64_t now_ms = unix_ms_now();
  const auto& o = I.aggregator_->options();
  const std::int64_t days = static_cast<std::int64_t>(std::max(o.total_coarse_days, c.forecast.history_days));
  try {
    // A minute of slack for clocks of a fleet sharing the ledger; later rows are a wrong clock.
    history_load h = load_ledger_history(c.ledger_path, now_ms - days * 86'400'000, *I.aggregator_, now_ms + 60'000);
    if (h.future_rows > 0)
      log_line(log_level::warn, "ledger rows dated in the future are left out of the history and the budgets")
          .integer("rows", static_cast<std::int64_t>(h.future_rows))
          .integer("latest_start_ms", h.latest_future_ms);
    // From the newest minute with calls to now this proxy relayed nothing: unknown, not quiet
    // (forecast_service::set_offline). A fleet's shared ledger has calls up to now, so its span
    // is short; an idle spell just before a stop is lost as history, which costs little.
    const std::int64_t newest = I.aggregator_->newest_minute();
    std::int64_t gap_minutes = 0;
    if (newest != aggregator::no_data && I.forecast_) {
      I.forecast_->set_offline((newest + 1) * 60, now_ms / 1000 + 1);
      gap_minutes = std::max<std::int64_t>(0, now_ms / 60'000 - newest);
    }
    log_line(log_level::info, "forecaster warm start from the ledger")
        .integer("minutes_loaded", static_cast<std::int64_t>(h.minutes))
        .integer("gap_minutes", gap_minutes)
        .integer("calls", static_cast<std::int64_t>(h.calls))
        .integer("days", days)
        .num("duration_s", std::chrono::duration<double>(steady::now() - t0).count());
  } catch (const std::exception& e) {
    log_line(log_level::warn, "forecaster warm start failed: starting without history").str("error", e.what());
  }
}

awaitable<void> accept_loop(worker& w) {
  for (;;) {
    beast::error_code ec;
    tcp::socket s = co_await w.acceptor->async_accept(redirect_error(use_awaitable, ec));
    if (ec) {
      if (ec == asio::error::operation_aborted || !w.acceptor->is_open()) co_return;
      // EMFILE and friends: back off briefly instead of spinning.
      log_line(log_level::warn, "accept failed").str("error", ec.message());
      asio::steady_timer t(w.ioc, 50ms);
      co_await t.async_wait(redirect_error(use_awaitable, ec));
      continue;
    }
    start_client_session(w, std::move(s));
  }
}

// A model budget or guard names its model as clients do ("claude-sonnet-4-5", "GPT-4.1"), while
// calls are counted under their price-table entry: the scope takes the entry's name, or it would
// never match a call (and a hard budget never hold). At start and for each configuration reload.
void canonical_scopes(const price_table& table, policy_config& p, std::vector<std::string>& warnings) {
  const auto canonical = [&](std::string& scope, std::string_view what) {
    if (!scope.starts_with("model:")) return;
    if (const model_price* m = table.resolve(std::string_view(scope).substr(6))) {
      scope = "model:" + m->name;
    } else {
      warnings.push_back(std::string(what) + " scope '" + scope +
                         "' names no model of the price table: calls of an unpriced model cost nothing, so it counts none");
    }
  };
  for (auto& b : p.budgets) canonical(b.scope, "budget");
  for (auto& g : p.spend_guards) canonical(g.scope, "spend guard");
}

// A rerouting spend guard whose fallback_model `table` does not price (at start and at each
// price reload): its rerouted calls would be unpriced.
void unpriced_fallbacks(const price_table& table, const policy_config& p, std::vector<std::string>& warnings) {
  for (const auto& g : p.spend_guards)
    if (g.action == guard_action::reroute && !g.fallback_model.empty() && table.resolve(g.fallback_model) == nullptr)
      warnings.push_back("spend guard " + g.scope + ": fallback_model '" + g.fallback_model +
                         "' is not in the price table: rerouted calls will be unpriced");
}

// tollgate_price_reloads_total, tollgate_price_table_models and
// tollgate_price_table_loaded_timestamp_seconds: set at start and by each reload.
void register_price_metrics(app::impl& I, metrics& m, std::size_t models) {
  namespace pm = prometheus;
  auto& reg = m.registry();
  auto& reloads = pm::BuildCounter()
                      .Name("tollgate_price_reloads_total")
                      .Help("Reloads of the price files (SIGHUP, POST /admin/prices/reload), by result: ok, failed (the table in force stayed).")
                      .Register(reg);
  I.reloads_ok = &reloads.Add({{"result", "ok"}});
  I.reloads_failed = &reloads.Add({{"result", "failed"}});
  I.price_models = &pm::BuildGauge()
                        .Name("tollgate_price_table_models")
                        .Help("Entries of the price table in force.")
                        .Register(reg)
                        .Add({});
  I.prices_loaded = &pm::BuildGauge()
                         .Name("tollgate_price_table_loaded_timestamp_seconds")
                         .Help("When the price table in force was loaded (start or the last successful reload), Unix seconds.")
                         .Register(reg)
                         .Add({});
  auto& config_reloads = pm::BuildCounter()
                             .Name("tollgate_config_reloads_total")
                             .Help("Reloads of the configuration file's spend controls (SIGHUP, POST /admin/config/reload), by "
                                   "result: ok, failed (the file did not load; nothing changed).")
                             .Register(reg);
  I.config_reloads_ok = &config_reloads.Add({{"result", "ok"}});
  I.config_reloads_failed = &config_reloads.Add({{"result", "failed"}});
  I.config_restart_pending = &pm::BuildGauge()
                                  .Name("tollgate_config_restart_pending")
                                  .Help("Changes the last configuration reload found that take effect only at a restart (0: the "
                                        "file and the process agree).")
                                  .Register(reg)
                                  .Add({});
  I.price_models->Set(static_cast<double>(models));
  I.prices_loaded->Set(static_cast<double>(I.prices_loaded_ms) / 1000.0);
}
}  // namespace

app::app(config cfg) : impl_(std::make_unique<impl>()) {
  auto& st = impl_->st;
  st.cfg = std::move(cfg);
  auto& c = st.cfg;
  set_log_level(c.log);
  auto table = std::make_shared<price_table>();
  impl_->loaded_files = price_files_now(c);  // before reading: a change meanwhile is seen later
  table->load_configured(c);
  st.prices.publish(table);
  impl_->prices_loaded_ms = unix_ms_now();
  impl_->config_loaded_ms = impl_->prices_loaded_ms;
  impl_->admin_token = c.policy.admin_token;
  impl_->loaded_config = identity_of(c.source_file);
  canonical_scopes(*table, c.policy, c.warnings);
  unpriced_fallbacks(*table, c.policy, c.warnings);

  auto ups = effective_upstreams(c);
  for (std::size_t i = 0; i < ups.size(); ++i) {
    const auto& uc = ups[i];
    const std::string where = c.upstreams.empty() ? "upstream" : "upstreams[" + std::to_string(i) + "] (" + uc.name + ")";
    auto u = parse_upstream_url(uc.url);
    if (!u) throw config_error(c.source_file, 0, where + ".url '" + uc.url + "' is not an http(s)://host[:port][/path] URL");
    auto t = std::make_unique<upstream_node>(uc, *u, i);
    if (t->url.tls) {
      t->ssl_ctx = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
      SSL_CTX_set_min_proto_version(t->ssl_ctx->native_handle(), TLS1_2_VERSION);
      beast::error_code ec;
      t->ssl_ctx->set_default_verify_paths(ec);
      if (!uc.ca_file.empty()) {
        t->ssl_ctx->load_verify_file(uc.ca_file, ec);
        if (ec) throw config_error(c.source_file, 0, where + ".ca_file '" + uc.ca_file + "': " + ec.message());
      }
      t->ssl_ctx->set_verify_mode(uc.tls_verify ? asio::ssl::verify_peer : asio::ssl::verify_none);
    }
    st.upstreams.push_back(std::move(t));
  }
  st.router = std::make_unique<upstream_router>(ups, c.routes);

  ledger_options lo;
  lo.path = c.ledger_path;
  lo.batch_rows = c.ledger_batch_rows;
  lo.flush_interval = c.ledger_flush_interval;
  lo.queue_capacity = c.ledger_queue_capacity;
  lo.fail_closed = c.ledger_fail_closed;
  lo.memory_rows = c.ledger_memory_rows;
  lo.journal_path = c.ledger_journal_path;
  lo.journal_max_bytes = c.ledger_journal_max_bytes;
  lo.synchronous_full = c.ledger_synchronous_full;
  lo.retention = c.ledger_retention;
  lo.indexes = c.ledger_indexes;
  if (!c.ledger_postgres.url.empty()) {
    // With a fleet ledger, retention deletes only rows PostgreSQL has (the shipper is made below,
    // before the ledger starts).
    lo.prunable_through_id = [I = impl_.get()] { return I->shipper_ ? I->shipper_->shipped_through() : 0; };
  }
  impl_->ledger_ = std::make_unique<ledger>(lo);
  impl_->metrics_ = std::make_unique<metrics>(*table);
  st.ledger_ = impl_->ledger_.get();
  st.metrics_ = impl_->metrics_.get();
  register_upstream_metrics(st, *impl_->metrics_);
  register_connection_metrics(st, *impl_->metrics_);
  register_ledger_metrics(*impl_->ledger_, *impl_->metrics_);
  register_price_metrics(*impl_, *impl_->metrics_, table->size());
  const std::string fleet_instance =
      c.ledger_postgres.url.empty() ? std::string()
      : c.ledger_postgres.instance.empty() ? default_instance_name() : c.ledger_postgres.instance;
  impl_->spend_ = std::make_unique<spend_control>(st.cfg, *impl_->metrics_, fleet_instance);
  if (c.prices_watch || c.config_watch)
    impl_->spend_->on_tick([I = impl_.get()] {
      if (I->st.cfg.prices_watch) I->watch_prices();
      if (I->st.cfg.config_watch) I->watch_config();
    });
  st.policy = &impl_->spend_->engine();
  if (!c.ledger_postgres.url.empty()) {
    try {
      check_postgres_url(c.ledger_postgres.url);
    } catch (const std::invalid_argument& ex) {
      throw config_error(c.ledger_postgres.url_line > 0 ? c.source_file : "TOLLGATE_LEDGER_POSTGRES_URL",
                         c.ledger_postgres.url_line, std::string("ledger.postgres.url: ") + ex.what());
    }
    pg_ship_options po;
    po.url = c.ledger_postgres.url;
    po.instance = fleet_instance;
    po.ledger_path = c.ledger_path;
    po.batch_rows = c.ledger_postgres.batch_rows;
    po.interval = c.ledger_postgres.interval;
    if (c.ledger_postgres.fleet_budgets) {
      // The other instances' spend counts in this instance's budgets and guards.
      po.on_remote_spend = [sc = impl_->spend_.get()](const std::vector<remote_spend>& rows) { sc->add_remote(rows); };
      po.remote_by_user = [sc = impl_->spend_.get()] { return sc->engine().counts_users(); };
      po.remote_since_ms = [sc = impl_->spend_.get()] {
        const auto now = std::chrono::system_clock::now().time_since_epoch();
        return sc->spend_horizon_ms(std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
      };
      // Key rate limits hold across the fleet too.
      po.on_remote_calls = [sc = impl_->spend_.get()](const std::vector<remote_calls>& rows) { sc->add_remote_calls(rows); };
      po.remote_rate_keys = [sc = impl_->spend_.get()] { return sc->rate_limited_keys(); };
      po.remote_rate_users = [sc = impl_->spend_.get()] { return sc->engine().limits_users(); };
    }
    impl_->shipper_ = std::make_unique<pg_shipper>(po);
    register_postgres_metrics(*impl_->shipper_, *impl_->metrics_);
  }
  if (c.forecast.enabled) {
    aggregator_options ao;
    ao.total_minutes = c.forecast.history_days * 1440;
    impl_->aggregator_ = std::make_unique<aggregator>(table->names(), ao);
    forecast_service_options fo;
    fo.refresh_interval = c.forecast.refresh_interval;
    fo.timezone = c.timezone;
    fo.on_refresh = [sc = impl_->spend_.get()](const forecast_snapshot& snap) { sc->on_forecast(snap); };
    impl_->forecast_ = std::make_unique<forecast_service>(*impl_->aggregator_, *impl_->metrics_, fo);
  }
  // Committed rows only: the aggregator never sees a call the ledger does not have.
  impl_->ledger_->on_committed = [m = impl_->metrics_.get(), agg = impl_->aggregator_.get()](
                                     const std::vector<usage_record>& rows) {
    m->ledger_committed(rows.size());
    if (agg) agg->add(rows);
  };
}

app::~app() {
  try {
    shutdown();
  } catch (...) {
  }
}

void app::start() {
  auto& I = *impl_;
  auto& c = I.st.cfg;
  I.ledger_->start();
  if (I.shipper_) I.shipper_->start();
  if (I.aggregator_) warm_start(I);
  recover_open_sessions(I);  // after the aggregator's warm start: on_committed counts these once
  I.spend_->track_pending({{"response", &I.st.background_responses}, {"batch", &I.st.pending_batches}});
  I.spend_->track_open_sessions(&I.st.realtime_rows);
  // A row's requested model goes upstream as a routing rule's rewrite says, and the bounds are
  // kept under the model sent.
  I.spend_->track_stated_rates(&I.st.stated, [router = I.st.router.get()](std::string_view model) {
    const route_rule* rule = router->rule_for(model);
    return rule == nullptr || rule->rewrite.empty() ? std::string(model) : rule->rewrite;
  });
  for (const auto& u : I.st.upstreams)
    if (stated_rates::known_relay(u->url.host)) I.st.stated.mark_upstream(u->cfg.name, true);
  I.spend_->start(c.ledger_path);

  int n = c.workers > 0 ? c.workers : default_workers();
  auto addr = resolve_listen_host(c.listen.host);
  std::string listen_str = c.listen.host + ":" + std::to_string(c.listen.port);
  // SO_REUSEPORT lets the workers share the port, but it would as well let a second tollgate
  // (same user) bind it and take half the calls into its own ledger and budgets. A plain bind
  // first fails while anyone listens there, as a one-worker start would.
  if (n > 1 && c.listen.port != 0) (void)make_acceptor(I.admin_ioc, tcp::endpoint(addr, c.listen.port), false, listen_str);
  for (int i = 0; i < n; ++i) {
    auto w = std::make_unique<worker>(I.st);
    tcp::endpoint ep(addr, i == 0 ? c.listen.port : I.port);
    w->acceptor.emplace(make_acceptor(w->ioc, ep, n > 1, listen_str));
    if (i == 0) I.port = w->acceptor->local_endpoint().port();
    I.workers.push_back(std::move(w));
  }
  auto admin_addr = resolve_listen_host(c.admin_listen.host);
  I.admin_acceptor.emplace(make_acceptor(I.admin_ioc, tcp::endpoint(admin_addr, c.admin_listen.port), false,
                                         c.admin_listen.host + ":" + std::to_string(c.admin_listen.port)));
  I.admin_port = I.admin_acceptor->local_endpoint().port();

  for (std::size_t i = 0; i < I.workers.size(); ++i) {
    worker& w = *I.workers[i];
    asio::co_spawn(w.ioc, accept_loop(w), asio::detached);
    w.thread = std::thread([&w, i] {
      name_this_thread(("tg-io-" + std::to_string(i)).c_str());
      for (;;) {
        try {
          w.ioc.run();
          return;
        } catch (const std::exception& e) {
          log_line(log_level::error, "worker error").str("error", e.what());
        }
      }
    });
  }
  I.start_admin();
  if (I.forecast_) I.forecast_->start();
  I.started = true;

  for (const auto& warning : c.warnings) log_msg(log_level::warn, warning);
  if (c.max_upload_bytes > c.max_body_bytes) {
    // Said now rather than at the first large upload (which would get 507).
    spool_body::value_type probe;
    std::string why;
    if (!probe.open(c.spool_dir, why)) {
      const std::string msg = "cannot store uploads in server.spool_dir: those over " +
                              std::to_string(spool_above_bytes >> 20) +
                              " MiB are held in memory, and those over server.max_body_bytes fail with 507";
      log_line(log_level::warn, msg).str("error", why);
    }
  }
  std::string upstream_list;
  for (const auto& t : I.st.upstreams) {
    if (t->url.tls && !t->cfg.tls_verify)
      log_line(log_level::warn, "upstream TLS certificate verification is DISABLED (tls_verify: false)")
          .str("upstream", t->cfg.name)
          .str("url", t->url.origin());
    if (t->cfg.api_key.empty())
      log_line(log_level::warn, "no upstream API key configured: its calls will be refused with 503 until one is set")
          .str("upstream", t->cfg.name)
          .str("hint", "set TOLLGATE_UPSTREAM_API_KEY or the upstream's api_key");
    if (!upstream_list.empty()) upstream_list += ", ";
    upstream_list += t->url.origin() + t->url.base_path;
  }
  log_line(log_level::info, "tollgate started")
      .str("version", TOLLGATE_VERSION)
      .str("listen", c.listen.host + ":" + std::to_string(I.port))
      .str("admin_listen", c.admin_listen.host + ":" + std::to_string(I.admin_port))
      .str("upstream", upstream_list)
      .integer("workers", n)
      .str("ledger", c.ledger_path)
      .integer("priced_models", static_cast<std::int64_t>(I.st.prices.current()->size()));
}

std::uint16_t app::port() const noexcept { return impl_->port; }
std::uint16_t app::admin_port() const noexcept { return impl_->admin_port; }
const config& app::cfg() const noexcept { return impl_->st.cfg; }
ledger& app::get_ledger() noexcept { return *impl_->ledger_; }
metrics& app::get_metrics() noexcept { return *impl_->metrics_; }
const aggregator* app::get_aggregator() const noexcept { return impl_->aggregator_.get(); }
std::shared_ptr<const price_table> app::prices() const { return impl_->st.prices.current(); }

price_reload app::reload_prices() { return impl_->reload_prices(); }
config_reload app::reload_config() { return impl_->reload_config(); }

// pricing.watch, every second on the spend-control thread: a price file that changed since it
// was loaded, and has stayed as it is for a second (an editor or a copy may write it in several
// steps), is loaded again.
void app::impl::watch_prices() {
  if (!settled_change(reload_mu, price_files_now(st.cfg), loaded_files, changed_files)) return;
  log_line(log_level::info, "the price files changed: reloading them (pricing.watch)");
  reload_prices();
}

// watch_config, likewise: the configuration file changed and has settled: its spend controls are
// read again (reload_config), as SIGHUP would (after the prices, when both are watched).
void app::impl::watch_config() {
  if (!settled_change(reload_mu, identity_of(st.cfg.source_file), loaded_config, changed_config)) return;
  log_line(log_level::info, "the configuration file changed: reloading its spend controls (watch_config)");
  reload_config();
}

price_reload app::impl::reload_prices() {
  std::lock_guard lock(reload_mu);
  const config& c = st.cfg;
  price_reload r;
  auto next = std::make_shared<price_table>();
  // Noted whatever comes of it: pricing.watch tries a file that does not load again only once
  // it changes.
  loaded_files = price_files_now(c);
  try {
    next->load_configured(c);
  } catch (const std::exception& e) {
    r = price_status_locked();
    r.ok = false;
    r.error = e.what();
    if (reloads_failed) reloads_failed->Increment();
    log_line(log_level::error, "price reload failed: the price table in force is unchanged").str("error", r.error);
    return r;
  }
  const auto old = st.prices.current();
  const auto old_names = old->names(), new_names = next->names();  // both sorted (the table is a map)
  std::set_difference(new_names.begin(), new_names.end(), old_names.begin(), old_names.end(), std::back_inserter(r.added));
  std::set_difference(old_names.begin(), old_names.end(), new_names.begin(), new_names.end(), std::back_inserter(r.removed));
  // Budget and guard scopes were set to their entry's name at start (canonical_scope): one the
  // new table resolves to no entry, or to another, counts no call from now on.
  const auto check_scope = [&](const std::string& scope, std::string_view what) {
    if (!scope.starts_with("model:")) return;
    const std::string_view model = std::string_view(scope).substr(6);
    const model_price* p = next->resolve(model);
    if (p == nullptr || p->name != model)
      r.warnings.push_back(std::string(what) + " scope '" + scope +
                           (p ? "' now resolves to the entry '" + p->name + "': it counts no call until a restart"
                              : "' names no entry of the new table: it counts no call"));
  };
  for (const auto& b : c.policy.budgets) check_scope(b.scope, "budget");
  for (const auto& g : c.policy.spend_guards) check_scope(g.scope, "spend guard");
  unpriced_fallbacks(*next, c.policy, r.warnings);
  // The new entries' own `model` series (metrics, forecaster) before any call can carry them.
  if (metrics_) metrics_->add_models(r.added);
  if (aggregator_) aggregator_->add_models(r.added);
  r.models = next->size();
  st.prices.publish(std::move(next));
  prices_loaded_ms = unix_ms_now();
  r.loaded_ms = prices_loaded_ms;
  r.reloads = ++price_reloads;
  r.ok = true;
  if (reloads_ok) reloads_ok->Increment();
  if (prices_loaded) prices_loaded->Set(static_cast<double>(r.loaded_ms) / 1000.0);
  if (price_models) price_models->Set(static_cast<double>(r.models));
  log_line(log_level::info, "prices reloaded: calls from now on are priced at the new table")
      .integer("priced_models", static_cast<std::int64_t>(r.models))
      .integer("added", static_cast<std::int64_t>(r.added.size()))
      .integer("removed", static_cast<std::int64_t>(r.removed.size()));
  for (const auto& w : r.warnings) log_line(log_level::warn, "price reload").str("warning", w);
  return r;
}

// The configuration file read again (SIGHUP, POST /admin/config/reload): what can change under
// running calls (budget limits, thresholds and hardness, guard maxima, rate limits) is put in
// force by the policy engine (retune), and everything else that differs is reported for a
// restart. Read, substituted and validated as at start: a file that does not load changes nothing.
config_reload app::impl::reload_config() {
  std::lock_guard lock(reload_mu);
  const config& c = st.cfg;
  config_reload r;
  r.file = c.source_file;
  const auto status = [&] {
    r.loaded_ms = config_loaded_ms;
    r.reloads = config_reloads;
  };
  // Noted whatever comes of it: watch_config tries a file that does not load again only once it
  // changes.
  loaded_config = identity_of(c.source_file);
  config next;
  try {
    if (c.source_file.empty())
      throw config_error("configuration", 0, "tollgate was not started from a configuration file: there is none to read again");
    next = load_config_file(c.source_file);
    apply_env_overrides(next);
    validate(next);
  } catch (const std::exception& e) {
    r.error = e.what();
    status();
    if (config_reloads_failed) config_reloads_failed->Increment();
    log_line(log_level::error, "configuration reload failed: the controls in force are unchanged").str("error", r.error);
    last_config_reload.error = r.error;  // what the last reload that loaded found stays
    return r;
  }
  canonical_scopes(*st.prices.current(), next.policy, next.warnings);
  // Sections the policy engine does not look at: a change there waits for a restart. (Its own
  // keys it compares field by field, below.)
  static constexpr std::string_view policy_keys[] = {"keys", "budgets", "spend_guard", "user_limits", "auth",
                                                     "admin_token", "alerts", "user_header", "reserve_max_tokens"};
  std::set<std::string> names;
  for (const auto& [k, v] : c.sections) names.insert(k);
  for (const auto& [k, v] : next.sections) names.insert(k);
  std::vector<std::string> sections_changed;
  for (const auto& k : names) {
    if (std::find(std::begin(policy_keys), std::end(policy_keys), k) != std::end(policy_keys)) continue;
    const auto a = c.sections.find(k);
    const auto b = next.sections.find(k);
    if (a == c.sections.end() || b == next.sections.end() || a->second != b->second)
      sections_changed.push_back(k + " changed: takes effect at a restart" +
                                 (k == "pricing" ? " (the price files' contents reload on their own: POST /admin/prices/reload)" : ""));
  }
  std::set<std::string> had;
  for (const auto& k : st.policy->configured_keys()) had.insert(k->name);
  auto t = st.policy->retune(next.policy, c.policy, unix_ms_now());
  // A key the file adds with a hard budget: unpriced models reserve at what relays charged,
  // learned from the ledger once (as for a key the admin API adds).
  for (const auto& k : next.policy.keys)
    if (!had.contains(k.name) && std::any_of(k.budgets.begin(), k.budgets.end(), [](const auto& b) { return b.hard; })) {
      spend_->learn_stated_costs();
      break;
    }
  r.ok = true;
  r.applied = std::move(t.applied);
  {
    std::lock_guard token_lock(admin_token_mu);
    if (next.policy.admin_token != admin_token) {
      r.applied.push_back(next.policy.admin_token.empty() ? "admin_token removed: the admin API is disabled"
                          : admin_token.empty()           ? "admin_token set: the admin API is enabled"
                                                          : "admin_token rotated: the old one is refused from now on");
      admin_token = next.policy.admin_token;
    }
  }
  r.restart_required = std::move(t.restart_required);
  r.restart_required.insert(r.restart_required.end(), sections_changed.begin(), sections_changed.end());
  r.warnings = std::move(next.warnings);
  r.warnings.insert(r.warnings.end(), t.warnings.begin(), t.warnings.end());
  config_loaded_ms = unix_ms_now();
  ++config_reloads;
  status();
  if (config_reloads_ok) config_reloads_ok->Increment();
  if (config_restart_pending) config_restart_pending->Set(static_cast<double>(r.restart_required.size()));
  last_config_reload = r;
  log_line(log_level::info, "configuration reloaded: spend controls in force are the file's")
      .str("file", r.file)
      .integer("applied", static_cast<std::int64_t>(r.applied.size()))
      .integer("restart_required", static_cast<std::int64_t>(r.restart_required.size()));
  for (const auto& a : r.applied) log_line(log_level::info, "configuration reload").str("applied", a);
  for (const auto& a : r.restart_required) log_line(log_level::warn, "configuration reload").str("restart_required", a);
  for (const auto& w : r.warnings) log_line(log_level::warn, "configuration reload").str("warning", w);
  return r;
}

void app::shutdown() {
  auto& I = *impl_;
  std::lock_guard lock(I.stop_mu);
  if (I.stopped) return;
  I.stopped = true;
  // First, so a forecaster still learning its history cannot delay the drain.
  if (I.forecast_) I.forecast_->stop();
  if (!I.started) {
    I.ledger_->stop();
    if (I.shipper_) I.shipper_->stop();
  I.spend_->stop();  // every settled call has raised its alerts: deliver them
    return;
  }
  auto t0 = steady::now();
  log_line(log_level::info, "shutting down: draining in-flight calls")
      .integer("inflight", I.st.inflight.load())
      .num("drain_timeout_s", std::chrono::duration<double>(I.st.cfg.drain_timeout).count());
  I.st.draining = true;
  auto on_all = [&](auto fn) {
    std::vector<std::future<void>> done;
    for (auto& wp : I.workers) {
      auto task = std::make_shared<std::packaged_task<void()>>([&w = *wp, fn] { fn(w); });
      done.push_back(task->get_future());
      asio::post(wp->ioc, [task] { (*task)(); });
    }
    for (auto& f : done) f.wait_for(5s);
  };
  on_all([](worker& w) {
    beast::error_code ec;
    w.acceptor->close(ec);
    close_idle_sessions(w);
    for (auto& p : w.pools) p->close_all();
  });
  auto deadline = t0 + I.st.cfg.drain_timeout;
  while (I.st.inflight.load() > 0 && steady::now() < deadline) std::this_thread::sleep_for(5ms);
  if (I.st.inflight.load() > 0) {
    log_line(log_level::warn, "drain timeout: cancelling the remaining calls (ledgered as aborted)")
        .integer("inflight", I.st.inflight.load());
  }
  // Close every connection; cancelled calls complete (and are ledgered) on their workers.
  on_all([](worker& w) { abort_all_sessions(w); });
  auto hard = steady::now() + 5s;
  while (I.st.inflight.load() > 0 && steady::now() < hard) std::this_thread::sleep_for(5ms);
  for (auto& wp : I.workers) {
    wp->ioc.stop();
    if (wp->thread.joinable()) wp->thread.join();
  }
  I.ledger_->stop();
  if (I.shipper_) I.shipper_->stop();  // after the ledger: its last rows ship too
  I.spend_->stop();  // every settled call has raised its alerts: deliver them
  I.admin_ioc.stop();
  if (I.admin_thread.joinable()) I.admin_thread.join();
  I.admin_queries.join();  // a report still running finishes before what it reads goes
  auto st = I.ledger_->stats();
  log_line(log_level::info, "tollgate stopped")
      .integer("ledger_rows_written", static_cast<std::int64_t>(st.rows_written))
      .integer("ledger_rows_pending", static_cast<std::int64_t>(st.queue_depth));
}

void app::run_until_signal() {
  asio::io_context ioc(1);
  // SIGHUP reloads the price files (reload_prices), then the configuration file's spend controls
  // (reload_config: model scopes resolve against the new table); its default action would end
  // the process at once, losing the calls in flight and the ledger rows still queued. The rest of
  // the configuration is read at start only: a restart (SIGTERM, which drains) applies it.
  asio::signal_set signals(ioc, SIGINT, SIGTERM, SIGHUP);
  int got = 0;
  std::function<void(const beast::error_code&, int)> on_signal = [&](const beast::error_code& ec, int sig) {
    if (ec) return;
    if (sig == SIGHUP) {
      // Here, on the thread that only waits for signals: calls go on on their workers meanwhile.
      log_line(log_level::info, "SIGHUP: reloading the price files and the spend controls; other configuration "
                                "changes need a restart (SIGTERM drains calls in flight)");
      reload_prices();
      reload_config();
      signals.async_wait(on_signal);
      return;
    }
    got = sig;
  };
  signals.async_wait(on_signal);
  ioc.run();
  log_line(log_level::info, "signal received").integer("signal", got);
  shutdown();
}

readiness check_readiness(const shared_state& st) {
  // Fail-open (ledger.on_failure: open): a failing database sends rows to the journal and the
  // proxy keeps serving, so it stays ready; fail-closed makes it unready, as calls are refused.
  const bool db_ok = st.ledger_->writable();
  bool ledger_ok = db_ok || !st.ledger_->options().fail_closed;
  bool key_ok = !st.upstream_key_missing();
  bool draining = st.draining.load(std::memory_order_relaxed);
  bool ready = ledger_ok && key_ok && !draining;
  std::string body = R"({"status":")";
  body += ready ? "ready" : "not_ready";
  body += R"(","checks":{"ledger":")";
  body += db_ok ? "ok" : ledger_ok ? "degraded: database failing, rows journaled" : "not_writable";
  body += R"(","upstream_key":")";
  body += key_ok ? "ok" : "missing: set TOLLGATE_UPSTREAM_API_KEY or upstream.api_key";
  body += R"(","draining":)";
  body += draining ? "true" : "false";
  body += "}}";
  return {ready ? 200 : 503, std::move(body)};
}

// ---------------------------------------------------------------------------------------------
// Admin listener: /metrics (Prometheus text format), /healthz, /readyz. Runs on its own thread so
// a scrape never delays a call.

void app::impl::start_admin() {
  asio::co_spawn(
      admin_ioc,
      [this]() -> awaitable<void> {
        for (;;) {
          beast::error_code ec;
          tcp::socket s = co_await admin_acceptor->async_accept(redirect_error(use_awaitable, ec));
          if (ec) {
            if (!admin_acceptor->is_open() || ec == asio::error::operation_aborted) co_return;
            continue;
          }
          asio::co_spawn(admin_ioc, admin_session(std::move(s)), asio::detached);
        }
      },
      asio::detached);
  admin_thread = std::thread([this] {
    name_this_thread("tg-admin");
    for (;;) {
      try {
        admin_ioc.run();
        return;
      } catch (const std::exception& e) {
        log_line(log_level::error, "admin error").str("error", e.what());
      }
    }
  });
}

awaitable<void> app::impl::admin_session(tcp::socket s) {
  beast::tcp_stream stream(std::move(s));
  beast::flat_buffer buf;
  for (;;) {
    beast::error_code ec;
    http::request_parser<http::string_body> parser;
    parser.header_limit(16 * 1024);
    parser.body_limit(64 * 1024);
    stream.expires_after(30s);
    co_await http::async_read(stream, buf, parser, redirect_error(use_awaitable, ec));
    if (ec) {
      // A client that went away or idled out gets nothing; one whose request cannot be read
      // gets the same JSON error as on the client port, then the connection closes (the rest
      // of the stream cannot be framed).
      if (ec == http::error::end_of_stream || ec == http::error::partial_message || ec == beast::error::timeout ||
          ec.category() != beast::error_code(http::error::bad_version).category())
        break;
      errc e = errc::bad_request;
      if (ec == http::error::header_limit) e = errc::headers_too_large;
      else if (ec == http::error::body_limit) e = errc::body_too_large;
      http::response<http::string_body> bad{static_cast<http::status>(http_status(e)), 11};
      bad.set(http::field::server, "tollgate");
      bad.set(http::field::content_type, "application/json");
      bad.body() = error_body(e, e == errc::body_too_large ? "Admin request bodies are limited to 64 KiB." : "");
      bad.keep_alive(false);
      bad.prepare_payload();
      co_await http::async_write(stream, bad, redirect_error(use_awaitable, ec));
      break;
    }
    auto& req = parser.get();
    http::response<http::string_body> res{http::status::ok, req.version()};
    res.set(http::field::server, "tollgate");
    std::string_view target = req.target();
    target = target.substr(0, target.find('?'));
    bool get = req.method() == http::verb::get || req.method() == http::verb::head;
    if (is_admin_path(target)) {
      const auto table = st.prices.current();  // held while the request runs
      admin_context ctx{st.cfg, *table, *st.policy, st.cfg.ledger_path,
                        unix_ms_now,
                        [this] { spend_->learn_stated_costs(); }, &st.stated, [this] { return reload_prices(); },
                        [this] {
                          std::lock_guard lock(reload_mu);
                          return price_status_locked();
                        },
                        [this] { return reload_config(); },
                        admin_token_now(),
                        [this] { return config_status(); }};
      admin_request ar{std::string(req.method_string()), std::string(req.target()),
                       std::string(req[http::field::authorization]), std::move(req.body())};
      admin_response r = co_await asio::co_spawn(
          admin_queries,
          [&]() -> awaitable<admin_response> {
            try {
              co_return handle_admin(ctx, ar);
            } catch (const std::exception& e) {
              // A handler's bug must still answer (and say so in the log), not drop the connection.
              log_line(log_level::error, "admin request failed").str("method", ar.method).str("error", e.what());
              admin_response fail;
              fail.status = 500;
              fail.body = R"({"error":{"message":"The admin request failed; see tollgate's log.","type":"server_error",)"
                          R"("param":null,"code":"internal_error"}})";
              co_return fail;
            }
          },
          use_awaitable);
      res.result(static_cast<http::status>(r.status));
      res.set(http::field::content_type, r.content_type);
      if (!r.allow.empty()) res.set(http::field::allow, r.allow);
      // Only as a plain token: a fleet cursor names a row's ledger_uid, which a row an
      // administrator wrote by hand could spell with any bytes (a line break would split the
      // head). The body's next_before carries it whatever it holds.
      if (!r.next_before.empty() &&
          std::all_of(r.next_before.begin(), r.next_before.end(), [](unsigned char c) { return c > 0x20 && c < 0x7f; }))
        res.set("x-next-before", r.next_before);
      if (r.status == 401) res.set(http::field::www_authenticate, "Bearer realm=\"tollgate-admin\"");
      res.body() = std::move(r.body);
    } else if (target != "/metrics" && target != "/healthz" && target != "/readyz") {
      res.result(http::status::not_found);
      res.set(http::field::content_type, "application/json");
      res.body() = error_body(errc::not_found, {});
    } else if (!get) {
      res.result(http::status::method_not_allowed);
      res.set(http::field::allow, "GET, HEAD");
      res.set(http::field::content_type, "application/json");
      res.body() = error_body(errc::method_not_allowed, {});
    } else if (target == "/metrics") {
      res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      res.body() = metrics_->serialize(ledger_->stats());
    } else if (target == "/healthz") {
      res.set(http::field::content_type, "application/json");
      res.body() = R"({"status":"ok"})";
    } else if (target == "/readyz") {
      auto r = check_readiness(st);
      res.result(static_cast<http::status>(r.status));
      res.set(http::field::content_type, "application/json");
      res.body() = std::move(r.body);
    }
    res.keep_alive(req.keep_alive());
    res.prepare_payload();
    if (req.method() == http::verb::head) res.body().clear();
    co_await http::async_write(stream, res, redirect_error(use_awaitable, ec));
    if (ec || !req.keep_alive()) break;
  }
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
}

}  // namespace tollgate
