// Integration-test support (see support.hpp): blocking Beast HTTP client, raw sockets, the
// tollgate + fake upstream harness and SQLite/metrics helpers.
#include "support.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/optional.hpp>

#include <atomic>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "core/http_rules.hpp"
#include "ledger/ledger.hpp"
#include "net/metrics.hpp"
#include "test_cert.hpp"

namespace tt {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string response::header(std::string_view name) const {
  for (const auto& [k, v] : hdrs)
    if (tollgate::iequals(k, name)) return v;
  return {};
}
bool response::has_header(std::string_view name) const {
  for (const auto& [k, v] : hdrs)
    if (tollgate::iequals(k, name)) return true;
  return false;
}

namespace {

// The harnesses alive, by client port. tollgate ledgers a call just after its last byte is sent,
// so with two workers the next call of a test, on the other thread, could be ledgered first; the
// tests read rows by id. request() therefore returns only once the proxy has ledgered what it
// answered: in-flight calls at most the helper's requests still waiting (bounded: a raw socket
// a test holds open keeps a call in flight).
struct live_proxy {
  std::uint16_t port = 0;
  tollgate::app* app = nullptr;
  std::atomic<std::int64_t> outstanding{0};
};
std::mutex live_mu;
std::vector<std::shared_ptr<live_proxy>> live;

std::shared_ptr<live_proxy> find_live(std::uint16_t port) {
  std::lock_guard lock(live_mu);
  for (const auto& l : live)
    if (l->port == port) return l;
  return nullptr;
}

// Counts a helper request to a harness for its lifetime; settle() waits until the proxy has
// ledgered every call no helper is still waiting for.
struct outstanding_call {
  explicit outstanding_call(std::uint16_t port) : p(find_live(port)) {
    if (p) p->outstanding.fetch_add(1);
  }
  ~outstanding_call() { done(); }
  void done() {
    if (p && !finished) p->outstanding.fetch_sub(1);
    finished = true;
  }
  void settle() {
    done();
    if (!p) return;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
    while (p->app->get_metrics().inflight.load() > p->outstanding.load() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  std::shared_ptr<live_proxy> p;
  bool finished = false;
};

void connect(beast::tcp_stream& s, std::uint16_t port) {
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
}

http::request<http::string_body> make_request(const std::string& method, const std::string& target,
                                              const std::string& body, const headers& h, std::uint16_t port) {
  http::request<http::string_body> req;
  req.method_string(method);
  req.target(target);
  req.version(11);
  req.set(http::field::host, "127.0.0.1:" + std::to_string(port));
  for (const auto& [k, v] : h) req.insert(k, v);
  req.body() = body;
  if (!body.empty() || method == "POST" || method == "PUT" || method == "PATCH") req.prepare_payload();
  return req;
}

}  // namespace

response request(std::uint16_t port, const std::string& method, const std::string& target, const std::string& body,
                 const headers& h, std::chrono::milliseconds timeout) {
  outstanding_call pending(port);
  asio::io_context ioc;
  beast::tcp_stream s(ioc);
  s.expires_after(timeout);
  connect(s, port);
  auto req = make_request(method, target, body, h, port);
  s.expires_after(timeout);
  http::write(s, req);
  beast::flat_buffer buf;
  http::response_parser<http::string_body> p;
  p.body_limit(boost::none);
  if (method == "HEAD") p.skip(true);
  s.expires_after(timeout);
  http::read(s, buf, p);
  response r;
  r.status = p.get().result_int();
  r.body = std::move(p.get().body());
  for (const auto& f : p.get()) r.hdrs.emplace_back(std::string(f.name_string()), std::string(f.value()));
  beast::error_code ec;
  s.socket().shutdown(tcp::socket::shutdown_both, ec);
  pending.settle();
  return r;
}

std::string raw_exchange(std::uint16_t port, const std::string& bytes, std::chrono::milliseconds timeout) {
  asio::io_context ioc;
  beast::tcp_stream s(ioc);
  connect(s, port);
  s.expires_after(timeout);
  asio::write(s, asio::buffer(bytes));
  std::string out;
  char buf[4096];
  for (;;) {
    beast::error_code ec;
    s.expires_after(timeout);
    auto n = s.read_some(asio::buffer(buf), ec);
    out.append(buf, n);
    if (ec) break;
  }
  return out;
}

int status_of(const std::string& raw) {
  if (raw.size() < 12 || raw.rfind("HTTP/1.", 0) != 0) return 0;
  return std::stoi(raw.substr(9, 3));
}

refused_port::refused_port() {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  // No SO_REUSEADDR: nobody else can bind the port while it is held.
  if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw std::runtime_error("refused_port: cannot bind a loopback port");
  port_ = ntohs(a.sin_port);
}

refused_port::~refused_port() {
  if (fd_ >= 0) ::close(fd_);
}

std::size_t directory_entries(const std::string& dir) {
  std::size_t n = 0;
  for (auto it = std::filesystem::directory_iterator(dir); it != std::filesystem::directory_iterator(); ++it) ++n;
  return n;
}

struct stream_client::impl {
  explicit impl(std::uint16_t port) : pending(port) {}
  outstanding_call pending;
  asio::io_context ioc;
  beast::tcp_stream s{ioc};
  beast::flat_buffer buf;
  http::response_parser<http::buffer_body> p;
  std::vector<char> chunk = std::vector<char>(64 * 1024);
  bool failed = false;
};

stream_client::stream_client(std::uint16_t port, const std::string& target, const std::string& body, const headers& h)
    : impl_(std::make_unique<impl>(port)) {
  auto& I = *impl_;
  connect(I.s, port);
  headers all = h;
  all.emplace_back("Content-Type", "application/json");
  auto req = make_request("POST", target, body, all, port);
  I.s.expires_after(std::chrono::seconds(30));
  http::write(I.s, req);
  I.p.body_limit(boost::none);
  http::read_header(I.s, I.buf, I.p);
}

stream_client::~stream_client() = default;

int stream_client::status() const { return impl_->p.get().result_int(); }
std::string stream_client::header(std::string_view name) const { return std::string(impl_->p.get()[name]); }

std::optional<std::string> stream_client::next() {
  auto& I = *impl_;
  while (!I.p.is_done() && !I.failed) {
    I.p.get().body().data = I.chunk.data();
    I.p.get().body().size = I.chunk.size();
    beast::error_code ec;
    I.s.expires_after(std::chrono::seconds(30));
    http::read_some(I.s, I.buf, I.p, ec);
    if (ec == http::error::need_buffer) ec = {};
    std::size_t n = I.chunk.size() - I.p.get().body().size;
    if (ec) I.failed = true;
    if (n > 0) return std::string(I.chunk.data(), n);
  }
  if (I.p.is_done() && !I.failed) I.pending.settle();
  return std::nullopt;
}

std::string stream_client::read_all() {
  std::string all;
  while (auto piece = next()) all += *piece;
  return all;
}

bool stream_client::ended_cleanly() const { return impl_->p.is_done() && !impl_->failed; }

void stream_client::close() {
  beast::error_code ec;
  impl_->s.socket().shutdown(tcp::socket::shutdown_both, ec);
  impl_->s.socket().close(ec);
}

temp_dir::temp_dir() {
  std::random_device rd;
  auto base = std::filesystem::temp_directory_path() / ("tollgate-test-" + std::to_string(rd()) + std::to_string(rd()));
  std::filesystem::create_directories(base);
  path = base.string();
}
temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

harness::harness(harness_options o) {
  fake::options fo;
  if (o.tls) {
    auto certs = fake::make_test_certs(fake::cert_kind::good);
    fo.tls = fake::tls_files{certs.cert_pem, certs.key_pem};
    ca_file = dir.path + "/ca.pem";
    fake::write_file(ca_file, certs.ca_pem);
  }
  upstream = std::make_unique<fake::server>(fo);
  cfg.listen = {"127.0.0.1", 0};
  cfg.admin_listen = {"127.0.0.1", 0};
  cfg.workers = 2;
  cfg.upstream.url = upstream->base_url();
  if (o.tls) {
    cfg.upstream.url = "https://localhost:" + std::to_string(upstream->port()) + "/v1";
    cfg.upstream.ca_file = ca_file;
  }
  cfg.upstream.api_key = o.api_key;
  cfg.ledger_path = dir.path + "/ledger.db";
  cfg.ledger_flush_interval = std::chrono::milliseconds(20);
  cfg.prices_file = std::string(TOLLGATE_SOURCE_DIR) + "/config/prices.yaml";
  cfg.drain_timeout = std::chrono::seconds(5);
  cfg.log = tollgate::log_level::warn;
  if (const char* lvl = std::getenv("TOLLGATE_TEST_LOG_LEVEL")) cfg.log = tollgate::parse_log_level(lvl);
  if (o.tweak) o.tweak(cfg);
  proxy = std::make_unique<tollgate::app>(cfg);
  proxy->start();
  auto l = std::make_shared<live_proxy>();
  l->port = proxy->port();
  l->app = proxy.get();
  std::lock_guard lock(live_mu);
  live.push_back(std::move(l));
}

harness::~harness() {
  {
    std::lock_guard lock(live_mu);
    std::erase_if(live, [&](const auto& l) { return l->app == proxy.get(); });
  }
  proxy->shutdown();
  proxy.reset();
  upstream.reset();
}

void harness::flush() {
  // A call is ledgered just after its last byte is sent: wait for in-flight calls first.
  eventually([&] { return proxy->get_metrics().inflight.load() == 0; });
  proxy->get_ledger().flush();
}

namespace {
struct db {
  explicit db(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &h, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK)
      throw std::runtime_error("cannot open ledger " + path);
    sqlite3_busy_timeout(h, 5000);
  }
  ~db() { sqlite3_close(h); }
  sqlite3* h = nullptr;
};
struct stmt {
  stmt(sqlite3* h, const std::string& sql) {
    if (sqlite3_prepare_v2(h, sql.c_str(), -1, &s, nullptr) != SQLITE_OK)
      throw std::runtime_error(std::string("bad SQL: ") + sqlite3_errmsg(h) + ": " + sql);
  }
  ~stmt() { sqlite3_finalize(s); }
  sqlite3_stmt* s = nullptr;
};
}  // namespace

std::int64_t harness::query_int(const std::string& sql) {
  db d(cfg.ledger_path);
  stmt st(d.h, sql);
  if (sqlite3_step(st.s) != SQLITE_ROW) return -1;
  return sqlite3_column_int64(st.s, 0);
}
double harness::query_double(const std::string& sql) {
  db d(cfg.ledger_path);
  stmt st(d.h, sql);
  if (sqlite3_step(st.s) != SQLITE_ROW) return -1;
  return sqlite3_column_double(st.s, 0);
}
std::string harness::query_text(const std::string& sql) {
  db d(cfg.ledger_path);
  stmt st(d.h, sql);
  if (sqlite3_step(st.s) != SQLITE_ROW) return "<no row>";
  auto* t = sqlite3_column_text(st.s, 0);
  return t ? reinterpret_cast<const char*>(t) : "<null>";
}
std::vector<std::map<std::string, std::string>> harness::rows(const std::string& sql) {
  db d(cfg.ledger_path);
  stmt st(d.h, sql);
  std::vector<std::map<std::string, std::string>> out;
  while (sqlite3_step(st.s) == SQLITE_ROW) {
    std::map<std::string, std::string> row;
    for (int i = 0; i < sqlite3_column_count(st.s); ++i) {
      auto* t = sqlite3_column_text(st.s, i);
      row[sqlite3_column_name(st.s, i)] = t ? reinterpret_cast<const char*>(t) : "<null>";
    }
    out.push_back(std::move(row));
  }
  return out;
}

std::string harness::metrics_text() { return request(admin_port(), "GET", "/metrics").body; }

double harness::metric_sum(const std::string& sample_name, const std::string& label_filter) {
  std::istringstream in(metrics_text());
  std::string line;
  double sum = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    auto name_end = line.find_first_of("{ ");
    if (line.substr(0, name_end) != sample_name) continue;
    if (!label_filter.empty() && line.find(label_filter) == std::string::npos) continue;
    auto sp = line.rfind(' ');
    sum += std::stod(line.substr(sp + 1));
  }
  return sum;
}

bool harness::eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

std::string chat_body(const std::string& model, bool stream, const std::string& extra) {
  std::string b = R"({"model":")" + model + R"(","messages":[{"role":"user","content":"Say hello to the ledger."}])";
  if (stream) b += R"(,"stream":true)";
  b += extra;
  b += "}";
  return b;
}

struct webhook_receiver::impl {
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc, {asio::ip::make_address("127.0.0.1"), 0}};
  std::thread thread;
  std::atomic<bool> stopping{false};
  mutable std::mutex mu;
  std::vector<std::string> bodies;
};

webhook_receiver::webhook_receiver() : impl_(std::make_unique<impl>()) {
  impl_->thread = std::thread([I = impl_.get()] {
    for (;;) {
      tcp::socket s(I->ioc);
      boost::system::error_code ec;
      I->acceptor.accept(s, ec);
      if (ec || I->stopping) return;
      beast::flat_buffer buf;
      http::request<http::string_body> req;
      http::read(s, buf, req, ec);
      if (ec) continue;
      {
        std::lock_guard lock(I->mu);
        I->bodies.push_back(req.body());
      }
      http::response<http::string_body> res{http::status::ok, 11};
      res.body() = "ok";
      res.prepare_payload();
      http::write(s, res, ec);
    }
  });
}

webhook_receiver::~webhook_receiver() {
  impl_->stopping = true;
  tcp::socket wake(impl_->ioc);
  boost::system::error_code ec;
  wake.connect(impl_->acceptor.local_endpoint(), ec);
  impl_->thread.join();
}

std::string webhook_receiver::url() const {
  return "http://127.0.0.1:" + std::to_string(impl_->acceptor.local_endpoint().port()) + "/hook";
}

std::vector<nlohmann::json> webhook_receiver::received() const {
  std::lock_guard lock(impl_->mu);
  std::vector<nlohmann::json> out;
  for (const auto& b : impl_->bodies) out.push_back(nlohmann::json::parse(b, nullptr, false));
  return out;
}

}  // namespace tt
