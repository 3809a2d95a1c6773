// Internal to the net layer: the state shared by all workers, one worker (io_context + thread +
// acceptor + upstream pool), and the upstream connection pool. Beast lives here; include only
// from net/*.cpp.
#pragma once
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <atomic>
#include <chrono>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/http_rules.hpp"
#include "core/open_sessions.hpp"
#include "core/pending_responses.hpp"
#include "core/pricing.hpp"
#include "core/stated_rates.hpp"
#include "core/video_memory.hpp"
#include "core/upstream_router.hpp"

namespace tollgate {

class ledger;
class metrics;

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;

// One configured upstream (a node of the upstream set), shared by all workers (each worker has its own pool for it).
struct upstream_node {
  upstream_node(upstream_config c, upstream_url u, std::size_t i)
      : cfg(std::move(c)), url(std::move(u)), index(i), breaker(cfg.breaker_failures, cfg.breaker_open_for) {}
  upstream_config cfg;
  upstream_url url;
  std::size_t index;
  std::string bearer = "Bearer " + cfg.api_key;  // the Authorization value, built once
  std::unique_ptr<asio::ssl::context> ssl_ctx;   // null for a plain-HTTP upstream
  circuit_breaker breaker;
  std::atomic<std::size_t> inflight{0};
};

class policy_engine;
class alert_notifier;

// The live price table. A reload (SIGHUP, POST /admin/prices/reload) builds a whole new table and
// publishes it here; nothing edits a published table. Each call takes the table current at its
// start and holds it to its end (client_session::prices_), so one table prices a call's
// reservation and its settlement, and a table a call still holds outlives the reload. Workers
// cache the current table and look again only when the generation moves: a call costs one
// atomic load and one reference count, no lock.
class price_book {
 public:
  price_book() : cur_(std::make_shared<const price_table>()) {}
  std::shared_ptr<const price_table> current() const {
    std::lock_guard lock(mu_);
    return cur_;
  }
  std::uint64_t generation() const noexcept { return gen_.load(std::memory_order_acquire); }
  void publish(std::shared_ptr<const price_table> t) {
    {
      std::lock_guard lock(mu_);
      cur_ = std::move(t);
    }
    gen_.fetch_add(1, std::memory_order_acq_rel);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const price_table> cur_;
  std::atomic<std::uint64_t> gen_{0};
};

// Read-mostly state every worker sees. Only atomics change after start().
struct shared_state {
  config cfg;
  std::vector<std::unique_ptr<upstream_node>> upstreams;
  std::unique_ptr<upstream_router> router;
  price_book prices;
  ledger* ledger_ = nullptr;
  metrics* metrics_ = nullptr;
  policy_engine* policy = nullptr;
  std::atomic<bool> draining{false};
  std::atomic<std::int64_t> inflight{0};
  std::atomic<std::uint64_t> upstream_retries{0};
  // Client connections open, and of those parked (client_session::park): written once per
  // connection and per park, read by the scrape (tollgate_client_connections).
  std::atomic<std::int64_t> client_connections{0};
  std::atomic<std::int64_t> parked_connections{0};
  pending_responses background_responses;  // metered once, when a retrieval sees them finished
  pending_responses pending_batches;       // batches created through tollgate, metered the same way
  video_memory videos;                     // videos created through tollgate: what their remixes reserve
  stated_rates stated;                     // what relays stating their costs charged for unpriced models
  // Live API sessions metered on their own socket through this tollgate (session.started's id):
  // a sideband socket (/v1/live/sessions/{id}/attach) on one of them mirrors what is metered
  // already; on any other (a WebRTC or SIP session, whose media never passes here) the sideband
  // is the only place its usage is seen, and is metered.
  pending_responses live_sessions{10'000};
  open_sessions realtime_rows;  // Realtime sessions' rows so far, saved for a crash (spend_control)
  bool upstream_key_missing() const noexcept {
    for (const auto& u : upstreams)
      if (u->cfg.api_key.empty()) return true;
    return false;
  }
};

// One keep-alive connection to the upstream, plain or TLS.
struct upstream_conn {
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;      // bytes read past the last response (normally none)
  steady::time_point idle_since{};
  int uses = 0;
  beast::tcp_stream& tcp() noexcept { return tls ? beast::get_lowest_layer(*tls) : *plain; }
  // Non-blocking check that the peer has not closed an idle connection.
  bool looks_alive() noexcept;
  void close() noexcept;
};

// Per-worker pool of one upstream's connections (no locks: only its worker thread touches it).
class upstream_pool {
 public:
  upstream_pool(asio::any_io_executor ex, shared_state& st, upstream_node& t)
      : ex_(std::move(ex)), st_(st), target_(t) {}
  // An idle pooled connection that still looks alive, or nullptr.
  std::unique_ptr<upstream_conn> take_idle();
  void give_back(std::unique_ptr<upstream_conn> c);
  void close_all();
  asio::any_io_executor executor() const { return ex_; }
  shared_state& state() noexcept { return st_; }
  upstream_node& target() noexcept { return target_; }
  // Cached resolution of the upstream host (refreshed every 60 s).
  std::vector<tcp::endpoint> endpoints_;
  steady::time_point resolved_at_{};

 private:
  asio::any_io_executor ex_;
  shared_state& st_;
  upstream_node& target_;
  std::vector<std::unique_ptr<upstream_conn>> idle_;
};

class client_session;

// A free list of equal-sized blocks (one worker's thread only; at most max_spare kept).
class block_cache {
 public:
  block_cache(std::size_t block, std::size_t max_spare) : block_(block), max_(max_spare) { spare_.reserve(max_spare); }
  block_cache(const block_cache&) = delete;
  block_cache& operator=(const block_cache&) = delete;
  ~block_cache() {
    for (char* p : spare_) ::operator delete(p);
  }
  std::size_t block() const noexcept { return block_; }
  char* take() {
    if (spare_.empty()) return static_cast<char*>(::operator new(block_));
    char* p = spare_.back();
    spare_.pop_back();
    return p;
  }
  void give(char* p) noexcept {
    if (spare_.size() < max_)
      spare_.push_back(p);  // never reallocates: reserved up to max_
    else
      ::operator delete(p);
  }

 private:
  std::size_t block_, max_;
  std::vector<char*> spare_;
};

struct worker {
  explicit worker(shared_state& st) : ioc(1), state(st) {
    for (auto& t : st.upstreams) pools.push_back(std::make_unique<upstream_pool>(ioc.get_executor(), st, *t));
  }
  // Buffers lent to sessions: a call borrows a relay buffer while it relays a response body, and
  // a connection's read buffer is given back whenever it goes idle, so an idle keep-alive
  // connection holds neither. Declared before ioc: coroutine frames destroyed with the
  // io_context give their buffers back here.
  block_cache relay_blocks{16 * 1024, 256};  // also the read reserve of upstream connections
  block_cache read_blocks{8 * 1024, 256};    // a request usually fits in one block
  // Sessions with a call in flight, swept for client aborts (client_session.cpp). Before ioc
  // too: a session destroyed with the io_context takes itself off.
  std::vector<client_session*> watched;
  asio::io_context ioc;
  // Keeps run() going when there is momentarily nothing to do (e.g. during shutdown, between
  // closing the acceptor and cancelling the last calls).
  asio::executor_work_guard<asio::io_context::executor_type> keep_running{ioc.get_executor()};
  asio::steady_timer sweep_timer{ioc};
  bool sweep_armed = false;
  std::optional<tcp::acceptor> acceptor;
  std::vector<std::unique_ptr<upstream_pool>> pools;  // one per upstream, same order
  shared_state& state;
  std::thread thread;
  std::list<std::weak_ptr<client_session>> sessions;  // for shutdown (worker thread only)
  std::size_t session_count = 0;
  // The price table for a call starting now (price_book): this worker's copy, taken again from
  // the book only after a reload.
  const std::shared_ptr<const price_table>& price_snapshot() {
    const std::uint64_t g = state.prices.generation();
    if (g != prices_gen_ || !prices_) {
      prices_ = state.prices.current();
      prices_gen_ = g;
    }
    return prices_;
  }

 private:
  std::shared_ptr<const price_table> prices_;
  std::uint64_t prices_gen_ = 0;
};

// /readyz on both ports: 200 when the ledger is writable, an upstream key is configured and the
// process is not draining; else 503. Body names each check (server.cpp).
struct readiness {
  int status;
  std::string body;
};
readiness check_readiness(const shared_state& st);

// Starts serving one accepted connection on its worker (client_session.cpp).
void start_client_session(worker& w, tcp::socket socket);
// Shutdown helpers, run on the worker thread (client_session.cpp).
void close_idle_sessions(worker& w);
void abort_all_sessions(worker& w);

}  // namespace tollgate
