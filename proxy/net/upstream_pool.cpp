// Per-worker keep-alive pool of upstream connections (see worker.hpp). Only the owning worker
// thread touches a pool, so there are no locks.
#include <sys/socket.h>

#include <cerrno>

#include "net/worker.hpp"

namespace tollgate {

bool upstream_conn::looks_alive() noexcept {
  auto& sock = tcp().socket();
  if (!sock.is_open()) return false;
  char c;
  ssize_t n = ::recv(sock.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) return false;                        // peer closed
  if (n > 0) return false;                         // unsolicited bytes: the stream is out of sync
  return errno == EAGAIN || errno == EWOULDBLOCK;  // nothing to read: still open
}

void upstream_conn::close() noexcept {
  beast::error_code ec;
  auto& sock = tcp().socket();
  sock.shutdown(tcp::socket::shutdown_both, ec);
  sock.close(ec);
}

std::unique_ptr<upstream_conn> upstream_pool::take_idle() {
  auto now = steady::now();
  while (!idle_.empty()) {
    auto c = std::move(idle_.back());
    idle_.pop_back();
    auto idle = now - c->idle_since;
    // A connection idle for under a second is taken as is (no peek syscall on the hot path): an
    // upstream that closed it anyway costs one retry on a fresh connection, never an error.
    if (idle < target_.cfg.pool_idle_timeout && c->buffer.size() == 0 &&
        (idle < std::chrono::seconds(1) || c->looks_alive()))
      return c;
    c->close();
  }
  return nullptr;
}

void upstream_pool::give_back(std::unique_ptr<upstream_conn> c) {
  if (st_.draining.load(std::memory_order_relaxed) || target_.cfg.max_idle_connections == 0) {
    c->close();
    return;
  }
  c->idle_since = steady::now();
  c->tcp().expires_never();
  if (idle_.size() >= target_.cfg.max_idle_connections) {
    // Drop the oldest: LIFO reuse keeps the warm ones, the cold ones would time out anyway.
    idle_.front()->close();
    idle_.erase(idle_.begin());
  }
  idle_.push_back(std::move(c));
}

void upstream_pool::close_all() {
  for (auto& c : idle_) c->close();
  idle_.clear();
}

}  // namespace tollgate
