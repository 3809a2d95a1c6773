// The webhook notifier against real sockets on 127.0.0.1: a small blocking receiver (plain or
// TLS) that records each request and answers with scripted statuses; unreachable, hanging and
// untrusted endpoints for the failure paths.
#include <catch2/catch.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "net/alert_notifier.hpp"
#include "support.hpp"
#include "test_cert.hpp"

using namespace tollgate;
using namespace std::chrono_literals;
namespace net = boost::asio;
namespace ssl = net::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using steady = std::chrono::steady_clock;

namespace {

struct received {
  std::string method, target, content_type, body;
  steady::time_point at;
};

// Answers one request per connection: the scripted statuses in order, then 200.
class receiver {
 public:
  explicit receiver(std::deque<int> statuses = {}, const fake::cert_bundle* certs = nullptr)
      : statuses_(std::move(statuses)), acceptor_(ioc_, {net::ip::make_address("127.0.0.1"), 0}) {
    if (certs) {
      tls_.emplace(ssl::context::tls_server);
      tls_->use_certificate_chain(net::buffer(certs->cert_pem));
      tls_->use_private_key(net::buffer(certs->key_pem), ssl::context::pem);
    }
    thread_ = std::thread([this] { serve(); });
  }
  ~receiver() {
    stopping_ = true;
    boost::system::error_code ec;
    tcp::socket wake(ioc_);
    wake.connect(acceptor_.local_endpoint(), ec);  // unblocks accept()
    thread_.join();
  }

  std::string url(const std::string& path = "/hook", const std::string& host = "127.0.0.1") const {
    return (tls_ ? "https://" : "http://") + host + ":" + std::to_string(acceptor_.local_endpoint().port()) + path;
  }
  std::vector<received> requests() const {
    std::lock_guard lk(mutex_);
    return requests_;
  }

 private:
  void serve() {
    while (!stopping_) {
      tcp::socket sock(ioc_);
      boost::system::error_code ec;
      acceptor_.accept(sock, ec);
      if (stopping_ || ec) continue;
      if (tls_) {
        ssl::stream<tcp::socket&> s(sock, *tls_);
        s.handshake(ssl::stream_base::server, ec);
        if (!ec) answer(s);  // a client refusing our certificate ends here
      } else {
        answer(sock);
      }
    }
  }

  template <class Stream>
  void answer(Stream& s) {
    beast::flat_buffer buf;
    http::request<http::string_body> req;
    boost::system::error_code ec;
    http::read(s, buf, req, ec);
    if (ec) return;
    int status = 200;
    {
      std::lock_guard lk(mutex_);
      requests_.push_back({std::string(req.method_string()), std::string(req.target()),
                           std::string(req[http::field::content_type]), req.body(), steady::now()});
      if (!statuses_.empty()) {
        status = statuses_.front();
        statuses_.pop_front();
      }
    }
    http::response<http::string_body> res{static_cast<http::status>(status), 11};
    res.body() = status == 200 ? "ok" : "no_service";
    res.prepare_payload();
    http::write(s, res, ec);
  }

  std::deque<int> statuses_;
  net::io_context ioc_;
  tcp::acceptor acceptor_;
  std::optional<ssl::context> tls_;
  mutable std::mutex mutex_;
  std::vector<received> requests_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

struct outcome {
  alert_outcome kind;
  std::string scope;
  int attempt, status;
  std::string error;
  steady::time_point at;
};

// The notifier's hook: records every outcome and lets the test wait for one.
class outcomes {
 public:
  alert_hook hook() {
    return [this](const alert_delivery& d) {
      std::lock_guard lk(mutex_);
      list_.push_back({d.outcome, d.event.scope, d.attempt, d.http_status, std::string(d.error), steady::now()});
      cv_.notify_all();
    };
  }
  // Waits until n outcomes of this kind were reported; true if they were.
  bool wait(alert_outcome k, std::size_t n, std::chrono::milliseconds timeout = 15s) {
    std::unique_lock lk(mutex_);
    return cv_.wait_for(lk, timeout, [&] { return count_locked(k) >= n; });
  }
  std::vector<outcome> of(alert_outcome k) const {
    std::lock_guard lk(mutex_);
    std::vector<outcome> out;
    for (const auto& o : list_)
      if (o.kind == k) out.push_back(o);
    return out;
  }

 private:
  std::size_t count_locked(alert_outcome k) const {
    return static_cast<std::size_t>(std::count_if(list_.begin(), list_.end(), [&](const auto& o) { return o.kind == k; }));
  }
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<outcome> list_;
};

alert_event soft_alert(std::string scope = "global") {
  alert_event e;
  e.kind = alert_kind::soft_threshold;
  e.scope = std::move(scope);
  e.period = "month";
  e.limit_usd = 2000;
  e.spent_usd = 1600;
  e.threshold = 0.8;
  e.time_ms = 1'700'000'000'123;  // 2023-11-14T22:13:20.123Z
  e.message = "Monthly budget: 80% spent.";
  return e;
}

webhook_config hook_to(std::string url, webhook_format f = webhook_format::json) {
  webhook_config w;
  w.url = std::move(url);
  w.format = f;
  w.timeout = 5s;
  return w;
}

// A webhook that listens but never accepts: the kernel completes the handshake, nobody answers.
struct silent_webhook {
  net::io_context ioc;
  tcp::acceptor acceptor{ioc, {net::ip::make_address("127.0.0.1"), 0}};
  webhook_config hook(std::chrono::milliseconds timeout, int max_attempts = webhook_config{}.max_attempts) const {
    auto w = hook_to("http://127.0.0.1:" + std::to_string(acceptor.local_endpoint().port()) + "/hook");
    w.timeout = timeout;
    w.max_attempts = max_attempts;
    return w;
  }
};

alert_notifier_options fast_retries() {
  alert_notifier_options o;
  o.base_backoff = 20ms;
  return o;
}

}  // namespace

TEST_CASE("alert_notifier: generic JSON payload carries the alert's fields", "[alerts]") {
  receiver rx;
  outcomes seen;
  alert_notifier n({hook_to(rx.url("/hooks/tollgate?team=web"))}, seen.hook());
  n.start();
  n.notify(soft_alert());
  REQUIRE(seen.wait(alert_outcome::sent, 1));

  auto reqs = rx.requests();
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0].method == "POST");
  CHECK(reqs[0].target == "/hooks/tollgate?team=web");
  CHECK(reqs[0].content_type == "application/json");
  auto j = nlohmann::json::parse(reqs[0].body);
  CHECK(j["kind"] == "soft_threshold");
  CHECK(j["scope"] == "global");
  CHECK(j["period"] == "month");
  CHECK(j["limit_usd"] == 2000.0);
  CHECK(j["spent_usd"] == 1600.0);
  // the generic payload's other fields too, as the README says
  CHECK(j["threshold"] == 0.8);
  CHECK(j["message"] == "Monthly budget: 80% spent.");
  CHECK(j["source"] == "tollgate");
  CHECK(j.contains("time"));
  CHECK(j["threshold"] == 0.8);
  CHECK(j["time"] == "2023-11-14T22:13:20.123Z");
  CHECK(j["message"] == "Monthly budget: 80% spent.");
  CHECK(j["source"] == "tollgate");
  CHECK(n.stats().sent == 1);
}

TEST_CASE("alert_notifier: Slack payload has the text and the alert's fields", "[alerts]") {
  receiver rx;
  outcomes seen;
  alert_notifier n({hook_to(rx.url(), webhook_format::slack)}, seen.hook());
  n.start();
  n.notify(soft_alert());
  REQUIRE(seen.wait(alert_outcome::sent, 1));

  auto j = nlohmann::json::parse(rx.requests().at(0).body);
  CHECK(j["text"] ==
        ":warning: tollgate soft_threshold \u2014 global/month: spent $1600.00 of $2000.00 (80%)\n"
        "Monthly budget: 80% spent.");
  CHECK(j["kind"] == "soft_threshold");
  CHECK(j["scope"] == "global");
  CHECK(j["period"] == "month");
  CHECK(j["limit_usd"] == 2000.0);
  CHECK(j["spent_usd"] == 1600.0);
}

TEST_CASE("alert_notifier: Slack text escapes markup and names the projection and the score", "[alerts]") {
  SECTION("&, < and > are escaped") {
    auto e = soft_alert("team:r&d");
    e.message = "<!channel> look";
    auto text = nlohmann::json::parse(alert_notifier::slack_payload(e))["text"].get<std::string>();
    CHECK(text.find("team:r&amp;d/month") != std::string::npos);
    CHECK(text.find("&lt;!channel&gt; look") != std::string::npos);
  }
  SECTION("projected overspend shows the p90 projection") {
    auto e = soft_alert();
    e.kind = alert_kind::projected_overspend;
    e.threshold = 2412.5;
    auto text = nlohmann::json::parse(alert_notifier::slack_payload(e))["text"].get<std::string>();
    CHECK(text.find("projected_overspend") != std::string::npos);
    CHECK(text.find("p90 projection $2412.50") != std::string::npos);
    CHECK(nlohmann::json::parse(alert_notifier::json_payload(e))["quantile"] == 0.9);
    e.projection_quantile = 0.5;  // the band is still the cold-start prior: the median decided
    text = nlohmann::json::parse(alert_notifier::slack_payload(e))["text"].get<std::string>();
    CHECK(text.find("p50 projection $2412.50") != std::string::npos);
    CHECK(nlohmann::json::parse(alert_notifier::json_payload(e))["quantile"] == 0.5);
  }
  SECTION("an anomaly has no limit, only spend and score") {
    alert_event e;
    e.kind = alert_kind::anomaly;
    e.scope = "spend_usd";
    e.spent_usd = 12.5;
    e.threshold = 4.25;
    auto text = nlohmann::json::parse(alert_notifier::slack_payload(e))["text"].get<std::string>();
    CHECK(text == ":mag: tollgate anomaly \u2014 spend_usd: spent $12.50, score 4.2");
  }
}

TEST_CASE("alert_notifier: the same alert is sent once per cooldown", "[alerts]") {
  receiver rx;
  outcomes seen;
  auto w = hook_to(rx.url());
  w.cooldown = 200ms;
  alert_notifier n({w}, seen.hook());
  n.notify(soft_alert());
  n.notify(soft_alert());  // same kind, scope, period and fraction: suppressed
  auto other = soft_alert();
  other.threshold = 1.0;   // another soft threshold of the same budget is another alert
  n.notify(other);
  auto next_period = soft_alert();
  next_period.window_start_s = 1'701'388'800;  // the same threshold in the next month is news
  n.notify(next_period);
  n.start();
  REQUIRE(seen.wait(alert_outcome::sent, 3));
  REQUIRE(seen.wait(alert_outcome::suppressed, 1));
  CHECK(rx.requests().size() == 3);

  // Waiting for the cooldown to pass is the behaviour under test, not synchronisation.
  std::this_thread::sleep_until(seen.of(alert_outcome::sent).front().at + w.cooldown);
  n.notify(soft_alert());
  REQUIRE(seen.wait(alert_outcome::sent, 4));
  auto s = n.stats();
  CHECK(s.sent == 4);
  CHECK(s.suppressed == 1);
  CHECK(rx.requests().size() == 4);
}

TEST_CASE("alert_notifier: failed attempts are retried with exponential backoff until one succeeds", "[alerts]") {
  receiver rx({500, 503});
  outcomes seen;
  alert_notifier n({hook_to(rx.url())}, seen.hook(), fast_retries());
  n.start();
  n.notify(soft_alert());
  REQUIRE(seen.wait(alert_outcome::sent, 1));

  auto sent = seen.of(alert_outcome::sent);
  CHECK(sent.at(0).attempt == 3);
  CHECK(sent.at(0).status == 200);
  auto retrying = seen.of(alert_outcome::retrying);
  REQUIRE(retrying.size() == 2);
  CHECK(retrying[0].status == 500);
  CHECK(retrying[0].error == "HTTP 500: no_service");
  auto reqs = rx.requests();
  REQUIRE(reqs.size() == 3);
  CHECK(reqs[1].at - reqs[0].at >= 20ms);  // base_backoff
  CHECK(reqs[2].at - reqs[1].at >= 40ms);  // doubled
  auto s = n.stats();
  CHECK(s.sent == 1);
  CHECK(s.retried == 2);
  CHECK(s.failed == 0);
}

TEST_CASE("alert_notifier: a delivery is given up and counted after max_attempts", "[alerts]") {
  receiver rx({500, 500, 500, 500});
  outcomes seen;
  auto w = hook_to(rx.url());
  w.max_attempts = 3;
  alert_notifier n({w}, seen.hook(), fast_retries());
  n.start();
  n.notify(soft_alert());
  REQUIRE(seen.wait(alert_outcome::failed, 1));

  auto failed = seen.of(alert_outcome::failed);
  CHECK(failed.at(0).attempt == 3);
  CHECK(failed.at(0).status == 500);
  CHECK(rx.requests().size() == 3);
  auto s = n.stats();
  CHECK(s.failed == 1);
  CHECK(s.retried == 2);
  CHECK(s.sent == 0);
}

TEST_CASE("alert_notifier: a retry waiting for its backoff does not hold up a later alert", "[alerts]") {
  receiver rx({500});
  outcomes seen;
  auto opts = fast_retries();
  opts.base_backoff = 300ms;
  alert_notifier n({hook_to(rx.url())}, seen.hook(), opts);
  n.notify(soft_alert("team:a"));
  n.notify(soft_alert("team:b"));
  n.start();
  REQUIRE(seen.wait(alert_outcome::sent, 2));

  auto reqs = rx.requests();
  REQUIRE(reqs.size() == 3);
  CHECK(nlohmann::json::parse(reqs[0].body)["scope"] == "team:a");  // answered 500
  CHECK(nlohmann::json::parse(reqs[1].body)["scope"] == "team:b");  // before a's retry
  CHECK(nlohmann::json::parse(reqs[2].body)["scope"] == "team:a");
}

TEST_CASE("alert_notifier: an unreachable webhook counts as failed", "[alerts]") {
  outcomes seen;
  SECTION("connection refused") {
    const tt::refused_port refused;
    auto w = hook_to("http://127.0.0.1:" + std::to_string(refused.port()) + "/hook");
    w.max_attempts = 2;
    alert_notifier n({w}, seen.hook(), fast_retries());
    n.start();
    n.notify(soft_alert());
    REQUIRE(seen.wait(alert_outcome::failed, 1));
    CHECK(seen.of(alert_outcome::failed).at(0).error.rfind("connect: ", 0) == 0);
    CHECK(seen.of(alert_outcome::failed).at(0).status == 0);
    CHECK(n.stats().retried == 1);
    CHECK(n.stats().failed == 1);
  }
  SECTION("no answer within the webhook's timeout") {
    silent_webhook silent;
    auto w = silent.hook(200ms, 1);
    alert_notifier n({w}, seen.hook());
    auto t0 = steady::now();
    n.start();
    n.notify(soft_alert());
    REQUIRE(seen.wait(alert_outcome::failed, 1));
    CHECK(seen.of(alert_outcome::failed).at(0).at - t0 >= 200ms);
    CHECK(seen.of(alert_outcome::failed).at(0).error == "read timeout");
    CHECK(n.stats().failed == 1);
  }
}

TEST_CASE("alert_notifier: a webhook that hangs delays no other webhook", "[alerts]") {
  // The first webhook accepts (the kernel completes the handshake) and never answers. With one
  // delivery thread for all webhooks, each alert to the second one waited out that timeout.
  silent_webhook silent;
  auto hang = silent.hook(2s, 1);
  receiver rx;
  outcomes seen;
  alert_notifier_options opts;
  opts.stop_timeout = 100ms;
  alert_notifier n({hang, hook_to(rx.url())}, seen.hook(), opts);
  const auto t0 = steady::now();
  n.start();
  n.notify(soft_alert("global"));
  n.notify(soft_alert("key:web"));
  REQUIRE(seen.wait(alert_outcome::sent, 2));
  CHECK(seen.of(alert_outcome::sent).at(1).at - t0 < 1s);
  CHECK(seen.of(alert_outcome::failed).empty());  // the first webhook's attempt is still waiting
  CHECK(rx.requests().size() == 2);
  n.stop();  // returns when the attempt in flight times out; the queued one is given up
  CHECK(n.stats().failed == 2);
  CHECK(n.stats().sent == 2);
}

TEST_CASE("alert_notifier: notify() never blocks and drops past the queue capacity", "[alerts]") {
  silent_webhook silent;
  auto w = silent.hook(300ms, 1);
  alert_notifier_options opts;
  opts.stop_timeout = 100ms;
  outcomes seen;
  alert_notifier n({w}, seen.hook(), opts);

  auto t0 = steady::now();
  for (int i = 0; i < 1500; ++i) n.notify(soft_alert("key:k" + std::to_string(i)));
  CHECK(steady::now() - t0 < 1s);
  CHECK(n.stats().dropped == 500);

  // The thread stuck on a silent endpoint does not slow notify() down either.
  n.start();
  REQUIRE(seen.wait(alert_outcome::failed, 1));
  t0 = steady::now();
  for (int i = 0; i < 1000; ++i) n.notify(soft_alert("team:t" + std::to_string(i)));
  CHECK(steady::now() - t0 < 1s);
}

TEST_CASE("alert_notifier: stop() delivers what is queued", "[alerts]") {
  receiver rx;
  alert_notifier n({hook_to(rx.url())}, [](const alert_delivery&) {});
  for (int i = 0; i < 50; ++i) n.notify(soft_alert("key:k" + std::to_string(i)));
  n.start();
  n.stop();
  CHECK(rx.requests().size() == 50);
  CHECK(n.stats().sent == 50);
  n.notify(soft_alert());  // after stop: refused
  CHECK(n.stats().dropped == 1);
}

TEST_CASE("alert_notifier: stop() gives up what it cannot deliver by stop_timeout", "[alerts]") {
  silent_webhook silent;
  auto w = silent.hook(100ms);
  alert_notifier_options opts;
  opts.stop_timeout = 300ms;
  opts.base_backoff = 10s;  // a retry due after the deadline is not waited for
  alert_notifier n({w}, [](const alert_delivery&) {}, opts);
  for (int i = 0; i < 20; ++i) n.notify(soft_alert("key:k" + std::to_string(i)));
  n.start();
  auto t0 = steady::now();
  n.stop();
  CHECK(steady::now() - t0 < 2s);
  auto s = n.stats();
  CHECK(s.failed == 20);
  CHECK(s.sent == 0);
}

TEST_CASE("alert_notifier: https webhooks verify the receiver's certificate", "[alerts]") {
  auto certs = fake::make_test_certs();
  receiver rx({}, &certs);
  outcomes seen;
  SECTION("a certificate from a trusted CA, host name checked via SNI") {
    alert_notifier_options opts;
    opts.ca_pem = certs.ca_pem;
    alert_notifier n({hook_to(rx.url("/hook", "localhost"))}, seen.hook(), opts);
    n.start();
    n.notify(soft_alert());
    REQUIRE(seen.wait(alert_outcome::sent, 1));
    CHECK(rx.requests().size() == 1);
  }
  SECTION("an untrusted certificate is refused") {
    auto w = hook_to(rx.url("/hook", "localhost"));
    w.max_attempts = 1;
    alert_notifier n({w}, seen.hook());
    n.start();
    n.notify(soft_alert());
    REQUIRE(seen.wait(alert_outcome::failed, 1));
    CHECK(seen.of(alert_outcome::failed).at(0).error.find("TLS handshake") == 0);
    CHECK(rx.requests().empty());
  }
}

TEST_CASE("alert_notifier: a malformed webhook URL is refused without echoing it", "[alerts]") {
  for (std::string url : {"ftp://h/x", "http://", "http://user:secret@h/x", "http://h:99999/x", "https://h/a b"}) {
    try {
      alert_notifier n({hook_to(url)});
      FAIL("accepted " << url);
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find(url) == std::string::npos);
    }
  }
}
