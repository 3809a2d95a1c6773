// The drained-socket rule of net/drained_read.hpp: a read through drained_buffer that returned less
// than it asked for marks the socket drained, so the next read waits for epoll without a recv()
// that fails with EAGAIN, and no read is left waiting for data that is already there.
//
// recv() and recvmsg() are interposed in this executable (Asio is header-only, so its calls bind
// to these definitions) to count the reads that found nothing.
#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <string>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/version.hpp>

#include "net/drained_read.hpp"

namespace {
std::atomic<int> g_watch_fd{-1};
std::atomic<long> g_eagain{0};
std::atomic<long> g_reads{0};

void count(int fd, long r) {
  if (fd != g_watch_fd.load()) return;
  ++g_reads;
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) ++g_eagain;
}
}  // namespace

extern "C" ssize_t recv(int fd, void* buf, size_t len, int flags) {
  const long r = syscall(SYS_recvfrom, fd, buf, len, flags, nullptr, nullptr);
  count(fd, r);
  return r;
}

extern "C" ssize_t recvmsg(int fd, struct msghdr* msg, int flags) {
  const long r = syscall(SYS_recvmsg, fd, msg, flags);
  count(fd, r);
  return r;
}

namespace {
namespace asio = boost::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;

struct pair_fixture {
  asio::io_context io;
  tcp::acceptor acceptor{io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
  tcp::socket server{io};
  tcp::socket client{io};
  pair_fixture() {
    client.connect(acceptor.local_endpoint());
    acceptor.accept(server);
    client.set_option(tcp::no_delay(true));
    server.set_option(tcp::no_delay(true));
    g_watch_fd = server.native_handle();
    g_eagain = 0;
    g_reads = 0;
  }
  ~pair_fixture() { g_watch_fd = -1; }

  // Starts a read on the server socket and runs the loop until it completes or `limit` passes;
  // returns the bytes read, -1 if still pending, -2 on an error. The result is a member, so a
  // read left pending can still complete (cancelled) later.
  template <class Buffers>
  long read(const Buffers& buffers, std::chrono::milliseconds limit = 1s) {
    got = -1;
    server.async_read_some(buffers, [this](const boost::system::error_code& ec, std::size_t n) {
      got = ec ? -2 : static_cast<long>(n);
    });
    io.restart();
    const auto until = std::chrono::steady_clock::now() + limit;
    while (got == -1 && std::chrono::steady_clock::now() < until) io.run_for(10ms);
    return got;
  }
  // A drained read (the type under test).
  long read_some(char* buf, std::size_t size) { return read(tollgate::drained_buffer{asio::buffer(buf, size)}); }

  long got = -1;
};
}  // namespace

TEST_CASE("a read that drained the socket still completes when data arrives later") {
  pair_fixture f;
  char buf[16384];
  asio::write(f.client, asio::buffer(std::string("hello")));
  REQUIRE(f.read_some(buf, sizeof buf) == 5);  // short: the socket is now marked drained
  std::thread later([&] {
    std::this_thread::sleep_for(50ms);
    asio::write(f.client, asio::buffer(std::string("world!")));
  });
  CHECK(f.read_some(buf, sizeof buf) == 6);
  later.join();
  CHECK(std::string(buf, 6) == "world!");
}

TEST_CASE("data that arrived between two reads, its epoll event already taken, is still read") {
  pair_fixture f;
  char buf[16384];
  asio::write(f.client, asio::buffer(std::string("one")));
  REQUIRE(f.read_some(buf, sizeof buf) == 3);
  // The next bytes arrive while no read is pending, and the reactor takes their event
  // (io.poll() runs epoll_wait) before the next read starts.
  asio::write(f.client, asio::buffer(std::string("two")));
  std::this_thread::sleep_for(20ms);
  for (int i = 0; i < 5; ++i) {
    f.io.restart();
    f.io.poll();
  }
  CHECK(f.read_some(buf, sizeof buf) == 3);
  CHECK(std::string(buf, 3) == "two");
}

TEST_CASE("a read that filled its buffer leaves the rest to the next read at once") {
  pair_fixture f;
  char buf[16];
  asio::write(f.client, asio::buffer(std::string(40, 'x')));
  std::this_thread::sleep_for(20ms);
  CHECK(f.read_some(buf, 16) == 16);
  CHECK(f.read_some(buf, 16) == 16);
  CHECK(f.read_some(buf, 16) == 8);
  CHECK(f.read_some(buf, 16) == -1);  // nothing more: the read waits (and the test gives up)
}

TEST_CASE("a peek does not mark the socket drained") {
  pair_fixture f;
  char buf[64];
  asio::write(f.client, asio::buffer(std::string("peek")));
  std::this_thread::sleep_for(20ms);
  f.server.async_receive(asio::buffer(buf, sizeof buf), tcp::socket::message_peek,
                         [&f](const boost::system::error_code& ec, std::size_t n) { f.got = ec ? -2 : long(n); });
  f.io.restart();
  f.io.run_for(200ms);
  REQUIRE(f.got == 4);
  CHECK(f.read_some(buf, sizeof buf) == 4);  // the peeked bytes are still there
}

TEST_CASE("an end of stream queued behind the last bytes is seen by a read that does not wait") {
  // The one thing a drained mark can hide: a FIN that came with the data, its event consumed.
  // client_session checks with a non-blocking read before it parks a connection.
  pair_fixture f;
  char buf[64];
  asio::write(f.client, asio::buffer(std::string("last")));
  f.client.shutdown(tcp::socket::shutdown_send);
  std::this_thread::sleep_for(20ms);
  REQUIRE(f.read_some(buf, sizeof buf) == 4);
  f.server.non_blocking(true);
  boost::system::error_code ec;
  CHECK(f.server.read_some(asio::buffer(buf, sizeof buf), ec) == 0);
  CHECK(ec == asio::error::eof);
}

TEST_CASE("a plain read keeps Asio's rule: the next read tries recv first") {
  pair_fixture f;
  char buf[64];
  asio::write(f.client, asio::buffer(std::string("abc")));
  REQUIRE(f.read(asio::buffer(buf, sizeof buf)) == 3);
  const long before = g_eagain.load();
  CHECK(f.read(asio::buffer(buf, sizeof buf), 50ms) == -1);
  CHECK(g_eagain.load() == before + 1);  // the speculative try
  f.server.cancel();
  f.io.restart();
  f.io.run_for(50ms);
}

TEST_CASE("request-reply on a keep-alive connection: reads wait without a failing recv") {
  pair_fixture f;
  constexpr int rounds = 200;
  std::thread peer([&] {
    char reply[64];
    const std::string request(300, 'r');
    for (int i = 0; i < rounds; ++i) {
      boost::system::error_code ec;
      asio::write(f.client, asio::buffer(request), ec);
      if (!ec) asio::read(f.client, asio::buffer(reply, 2), ec);
      if (ec) return;  // the server side was closed: the test below gave up
    }
  });
  // A failed REQUIRE below unwinds through here: close the server side so the peer stops, and
  // join it, since a joinable std::thread destroyed during unwinding would end the process
  // instead of reporting the failure.
  struct join_on_exit {
    std::thread& t;
    tcp::socket& s;
    ~join_on_exit() {
      if (!t.joinable()) return;
      boost::system::error_code ignored;
      s.close(ignored);
      t.join();
    }
  } join_peer{peer, f.server};
  char buf[16384];
  int served = 0;
  std::size_t pending = 0;
  while (served < rounds) {
    const long n = f.read_some(buf, sizeof buf);
    REQUIRE(n > 0);
    pending += static_cast<std::size_t>(n);
    while (pending >= 300) {
      pending -= 300;
      asio::write(f.server, asio::buffer("ok", 2));
      ++served;
    }
  }
  peer.join();
  INFO("reads " << g_reads.load() << ", of which EAGAIN " << g_eagain.load());
#if BOOST_VERSION == 108100
  // Each read but the first starts right after the reply, before the next request can have
  // arrived: Asio's own rule tries recv() first every time (about one EAGAIN per round); a
  // drained read only the first time (the socket is not known to be drained yet).
  CHECK(g_eagain.load() <= 2);
#endif
  CHECK(g_reads.load() - g_eagain.load() >= rounds / 2);
}
