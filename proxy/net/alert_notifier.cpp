// The webhook notifier (alert_notifier.hpp): the payload formats, one delivery thread per webhook
// with its due-time queue of attempts, and a blocking Beast client run on that thread's own
// io_context.
// The server owns one; the policy engine and the forecaster call notify().
#include "net/alert_notifier.hpp"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "core/http_rules.hpp"
#include "core/log.hpp"

namespace tollgate {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using steady = std::chrono::steady_clock;

namespace {

// Where one webhook's requests go.
struct webhook_target {
  bool tls = false;
  std::string host;         // without brackets for IPv6
  std::string port;         // resolver service string
  std::string host_header;  // host, [v6] and ":port" when not the scheme default
  std::string target;       // path[?query], at least "/"
  std::string origin;       // scheme://host_header, what logs may show
};

bool starts_with_nocase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

// http(s)://host[:port][/path][?query]; a fragment never goes on the wire and is dropped.
// Unlike an upstream base URL, a webhook keeps its query (some receivers carry a token there).
std::optional<webhook_target> parse_webhook_url(std::string_view url) {
  webhook_target t;
  if (starts_with_nocase(url, "https://")) {
    t.tls = true;
    url.remove_prefix(8);
  } else if (starts_with_nocase(url, "http://")) {
    url.remove_prefix(7);
  } else {
    return std::nullopt;
  }
  auto end = url.find_first_of("/?#");
  std::string_view authority = url.substr(0, end);
  std::string_view rest = end == std::string_view::npos ? std::string_view{} : url.substr(end);
  rest = rest.substr(0, rest.find('#'));
  if (authority.empty() || authority.find('@') != std::string_view::npos) return std::nullopt;

  std::string_view host = authority, port;
  bool v6 = authority.front() == '[';
  if (v6) {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = authority.substr(1, close - 1);
    auto after = authority.substr(close + 1);
    if (!after.empty() && (after.front() != ':' || after.size() == 1)) return std::nullopt;
    if (!after.empty()) port = after.substr(1);
  } else if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (port.empty()) return std::nullopt;
  }
  if (host.empty()) return std::nullopt;
  for (char c : host)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' || (v6 && c == ':')))
      return std::nullopt;
  unsigned port_no = t.tls ? 443 : 80;
  if (!port.empty()) {
    auto r = std::from_chars(port.data(), port.data() + port.size(), port_no);
    if (r.ec != std::errc{} || r.ptr != port.data() + port.size() || port_no == 0 || port_no > 65535)
      return std::nullopt;
  }
  for (char c : rest)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return std::nullopt;

  t.host = std::string(host);
  t.port = std::to_string(port_no);
  t.host_header = v6 ? "[" + t.host + "]" : t.host;
  if (port_no != (t.tls ? 443u : 80u)) t.host_header += ":" + t.port;
  t.target = rest.empty() ? "/" : rest.front() == '?' ? "/" + std::string(rest) : std::string(rest);
  t.origin = (t.tls ? "https://" : "http://") + t.host_header;
  return t;
}

std::string rfc3339_utc(std::int64_t ms) {
  std::int64_t s = ms / 1000 - (ms % 1000 < 0 ? 1 : 0);
  auto frac = static_cast<int>(ms - s * 1000);
  std::time_t tt = static_cast<std::time_t>(s);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
  return buf;
}

std::string fixed(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string_view emoji(alert_kind k) {
  switch (k) {
    case alert_kind::soft_threshold: return ":warning:";
    case alert_kind::projected_overspend: return ":chart_with_upwards_trend:";
    case alert_kind::spend_guard: return ":rotating_light:";
    case alert_kind::anomaly: return ":mag:";
  }
  return ":warning:";
}

// Slack reads &, < and > in text as markup (https://api.slack.com/reference/surfaces/formatting#escaping).
std::string slack_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else out += c;
  }
  return out;
}

// ":warning: tollgate soft_threshold — global/month: spent $1600.00 of $2000.00 (80%)", then the
// event's own sentence on a second line.
std::string slack_text(const alert_event& e) {
  std::string t(emoji(e.kind));
  t += " tollgate ";
  t += to_string(e.kind);
  t += " \u2014 " + e.scope;
  if (!e.period.empty()) t += "/" + e.period;
  t += ": spent " + fixed("$%.2f", e.spent_usd);
  if (e.limit_usd > 0) t += " of " + fixed("$%.2f", e.limit_usd) + " (" + fixed("%.0f", 100 * e.spent_usd / e.limit_usd) + "%)";
  if (e.kind == alert_kind::projected_overspend)
    t += (e.projection_quantile == 0.5 ? ", p50 projection " : ", p90 projection ") + fixed("$%.2f", e.threshold);
  if (e.kind == alert_kind::anomaly) t += ", score " + fixed("%.1f", e.threshold);
  if (!e.message.empty()) t += "\n" + e.message;
  return slack_escape(t);
}

struct attempt_result {
  int status = 0;  // 0: no HTTP answer
  std::string error;
  std::chrono::seconds retry_after{0};
  bool ok() const { return status >= 200 && status < 300; }
};

std::string describe(std::string_view stage, const beast::error_code& ec) {
  if (ec == beast::error::timeout) return std::string(stage) + " timeout";
  return std::string(stage) + ": " + ec.message();
}

// Retry-After in delta-seconds (RFC 9110 §10.2.3); the HTTP-date form is left to our own backoff.
std::chrono::seconds parse_retry_after(std::string_view v) {
  long s = 0;
  auto r = std::from_chars(v.data(), v.data() + v.size(), s);
  return r.ec == std::errc{} && r.ptr == v.data() + v.size() && s > 0 ? std::chrono::seconds(s) : std::chrono::seconds(0);
}

// Writes the POST and reads the answer's status; the body of a refusal says why (Slack:
// "invalid_payload") and goes into the error, truncated.
template <class Stream>
net::awaitable<void> http_exchange(Stream& s, const webhook_target& t, const std::string& body, attempt_result& out) {
  http::request<http::string_body> req{http::verb::post, t.target, 11};
  req.set(http::field::host, t.host_header);
  req.set(http::field::user_agent, "tollgate/" TOLLGATE_VERSION);
  req.set(http::field::content_type, "application/json");
  req.set(http::field::connection, "close");
  req.body() = body;
  req.prepare_payload();
  beast::error_code ec;
  co_await http::async_write(s, req, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    out.error = describe("write", ec);
    co_return;
  }
  beast::flat_buffer buf;
  http::response_parser<http::string_body> p;
  p.body_limit(16 * 1024);
  co_await http::async_read_header(s, buf, p, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    out.error = describe("read", ec);
    co_return;
  }
  out.status = p.get().result_int();
  if (out.ok()) co_return;
  out.retry_after = parse_retry_after(p.get()[http::field::retry_after]);
  co_await http::async_read(s, buf, p, net::redirect_error(net::use_awaitable, ec));
  out.error = "HTTP " + std::to_string(out.status);
  if (!p.get().body().empty()) out.error += ": " + p.get().body().substr(0, 200);
}

// One alert for one webhook, waiting for its next attempt.
struct delivery {
  std::size_t webhook = 0;
  int attempts = 0;  // made so far
  std::shared_ptr<const alert_event> event;
  std::string key;   // dedupe key
  std::shared_ptr<const std::string> body;
};

}  // namespace

std::string_view to_string(alert_outcome o) noexcept {
  switch (o) {
    case alert_outcome::sent: return "sent";
    case alert_outcome::retrying: return "retrying";
    case alert_outcome::failed: return "failed";
    case alert_outcome::suppressed: return "suppressed";
  }
  return "failed";
}

namespace {
// The generic payload's fields; a Slack payload puts `text` before them.
nlohmann::ordered_json payload(const alert_event& e, const std::string* text) {
  nlohmann::ordered_json j;
  if (text != nullptr) j["text"] = *text;
  j["kind"] = to_string(e.kind);
  j["scope"] = e.scope;
  j["period"] = e.period;
  j["limit_usd"] = e.limit_usd;
  j["spent_usd"] = e.spent_usd;
  j["threshold"] = e.threshold;
  j["time"] = rfc3339_utc(e.time_ms);
  j["message"] = e.message;
  j["source"] = "tollgate";
  if (e.kind == alert_kind::projected_overspend) j["quantile"] = e.projection_quantile;
  return j;
}
}  // namespace

std::string alert_notifier::json_payload(const alert_event& e) {
  return payload(e, nullptr).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Slack reads `text` and ignores the other top-level fields, which keep the payload
// machine-readable like the generic one.
std::string alert_notifier::slack_payload(const alert_event& e) {
  const std::string text = slack_text(e);
  return payload(e, &text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

struct alert_notifier::impl {
  // One webhook: its own thread, due-time queue of attempts and io_context, so a receiver that
  // hangs until its timeout (or is retried for minutes) delays no other webhook's alerts.
  struct lane {
    std::size_t index = 0;  // in the configured list
    webhook_config cfg;
    webhook_target target;
    std::deque<std::shared_ptr<const alert_event>> incoming;  // guarded by impl::mutex
    std::thread thread;

    // The lane thread's own state, never touched elsewhere while it runs.
    std::unordered_map<std::string, steady::time_point> last_sent;  // dedupe key -> when accepted
    net::io_context ioc{1};
    std::map<std::pair<steady::time_point, std::uint64_t>, delivery> pending;  // by due time, then FIFO
    std::uint64_t next_seq = 0;

    void schedule(delivery&& d, steady::time_point due) { pending.emplace(std::make_pair(due, next_seq++), std::move(d)); }
  };

  std::vector<std::unique_ptr<lane>> lanes;
  alert_hook hook;  // called from every lane's thread
  alert_notifier_options opts;
  std::unique_ptr<ssl::context> tls;  // only when some webhook is https; shared, never modified once built

  std::mutex mutex;
  std::condition_variable cv;
  bool stopping = false;             // guarded by mutex
  bool started = false;              // guarded by mutex
  steady::time_point stop_deadline;  // guarded by mutex; set by stop()

  std::atomic<std::uint64_t> sent{0}, failed{0}, retried{0}, suppressed{0}, dropped{0};
  std::atomic<std::uint64_t> drops_logged{0};

  void run(lane& l) noexcept;
  void admit(lane& l, std::shared_ptr<const alert_event>&& ev);
  void attempt_next(lane& l, std::optional<steady::time_point> stop_by);
  void abandon_all(lane& l);
  void report(alert_outcome o, const lane& l, const delivery& d, int status, std::string_view error) noexcept;
  std::chrono::milliseconds backoff(int attempts, std::chrono::seconds retry_after) const;
  attempt_result post(lane& l, steady::time_point deadline, const std::string& body);
  net::awaitable<void> exchange(const webhook_target& t, const std::string& body, steady::time_point deadline,
                                attempt_result& out);
};

alert_notifier::alert_notifier(std::vector<webhook_config> webhooks, alert_hook hook, alert_notifier_options opts)
    : impl_(std::make_unique<impl>()) {
  auto& s = *impl_;
  s.hook = std::move(hook);
  s.opts = std::move(opts);
  for (std::size_t i = 0; i < webhooks.size(); ++i) {
    auto t = parse_webhook_url(webhooks[i].url);
    // The URL itself stays out of the message: a Slack webhook URL is a credential.
    if (!t) throw std::invalid_argument("alerts.webhooks[" + std::to_string(i) + "].url is not an http(s)://host[:port][/path] URL");
    auto l = std::make_unique<impl::lane>();
    l->index = i;
    l->cfg = std::move(webhooks[i]);
    l->target = std::move(*t);
    s.lanes.push_back(std::move(l));
  }
  if (std::any_of(s.lanes.begin(), s.lanes.end(), [](const auto& l) { return l->target.tls; })) {
    s.tls = std::make_unique<ssl::context>(ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(s.tls->native_handle(), TLS1_2_VERSION);
    beast::error_code ec;
    s.tls->set_default_verify_paths(ec);
    if (!s.opts.ca_pem.empty()) {
      s.tls->add_certificate_authority(net::buffer(s.opts.ca_pem), ec);
      if (ec) throw std::runtime_error("alert notifier: extra CA certificates: " + ec.message());
    }
    s.tls->set_verify_mode(ssl::verify_peer);
  }
}

alert_notifier::~alert_notifier() { stop(); }

void alert_notifier::start() {
  auto& s = *impl_;
  std::lock_guard lk(s.mutex);
  if (s.started || s.stopping || s.lanes.empty()) return;
  s.started = true;
  for (auto& l : s.lanes) {
    l->thread = std::thread([&s, ln = l.get()] {
      name_this_thread("tg-alerts");
      s.run(*ln);
    });
  }
}

void alert_notifier::stop() {
  auto& s = *impl_;
  {
    std::lock_guard lk(s.mutex);
    if (!s.stopping) s.stop_deadline = steady::now() + s.opts.stop_timeout;
    s.stopping = true;
    // Never started: nobody will deliver what was queued.
    if (!s.started) {
      for (auto& l : s.lanes) {
        s.dropped += l->incoming.size();
        l->incoming.clear();
      }
    }
  }
  s.cv.notify_all();
  for (auto& l : s.lanes)
    if (l->thread.joinable()) l->thread.join();
}

void alert_notifier::notify(alert_event e) noexcept {
  auto& s = *impl_;
  if (s.lanes.empty()) return;
  if (e.time_ms == 0)
    e.time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  try {
    auto ev = std::make_shared<const alert_event>(std::move(e));
    std::lock_guard lk(s.mutex);
    for (auto& l : s.lanes) {
      if (s.stopping || l->incoming.size() >= s.opts.queue_capacity) {
        ++s.dropped;
        continue;
      }
      l->incoming.push_back(ev);
    }
  } catch (...) {  // bad_alloc, or a failing mutex
    ++s.dropped;
    return;
  }
  s.cv.notify_all();
}

alert_notifier_stats alert_notifier::stats() const noexcept {
  const auto& s = *impl_;
  return {s.sent.load(), s.failed.load(), s.retried.load(), s.suppressed.load(), s.dropped.load()};
}

void alert_notifier::log_delivery(const alert_delivery& d) {
  log_level l = d.outcome == alert_outcome::sent         ? log_level::info
                : d.outcome == alert_outcome::retrying   ? log_level::warn
                : d.outcome == alert_outcome::failed     ? log_level::error
                                                         : log_level::debug;
  if (!log_enabled(l)) return;
  log_line line(l, "alert delivery");
  line.str("outcome", to_string(d.outcome)).str("kind", to_string(d.event.kind)).str("scope", d.event.scope);
  line.str("period", d.event.period).str("webhook", d.origin).integer("attempt", d.attempt);
  if (d.http_status != 0) line.integer("status", d.http_status);
  if (!d.error.empty()) line.str("error", d.error);
}

void alert_notifier::impl::run(lane& l) noexcept {
  // Alerts can wait a few milliseconds; an I/O thread with a call to relay cannot.
  lower_thread_priority(5);
  std::optional<steady::time_point> stop_by;
  auto due = [&l] { return l.pending.begin()->first.first; };
  // Stopping and nothing left that can be tried before the deadline.
  auto done = [&](steady::time_point now) {
    return stop_by && (l.pending.empty() || now >= *stop_by || due() > *stop_by);
  };
  for (;;) {
    std::deque<std::shared_ptr<const alert_event>> fresh;
    {
      std::unique_lock lk(mutex);
      for (;;) {
        auto now = steady::now();
        if (!l.incoming.empty() || (stopping && !stop_by) || done(now)) break;
        if (!l.pending.empty() && due() <= now) break;
        if (l.pending.empty())
          cv.wait(lk);
        else
          cv.wait_until(lk, due());
      }
      fresh.swap(l.incoming);
      if (stopping && !stop_by) stop_by = stop_deadline;
    }
    for (auto& e : fresh) admit(l, std::move(e));
    if (auto d = dropped.load(), logged = drops_logged.load(); d != logged && drops_logged.compare_exchange_strong(logged, d))
      log_line(log_level::warn, "alert queue full, alerts dropped").integer("dropped_total", static_cast<std::int64_t>(d));
    if (done(steady::now())) {
      abandon_all(l);
      return;
    }
    if (!l.pending.empty() && due() <= steady::now()) attempt_next(l, stop_by);
  }
}

void alert_notifier::impl::admit(lane& l, std::shared_ptr<const alert_event>&& ev) {
  try {
    std::string key = ev->dedupe_key();
    auto now = steady::now();
    delivery d{l.index, 0, std::move(ev), key, nullptr};
    auto it = l.last_sent.find(key);
    if (it != l.last_sent.end() && now - it->second < l.cfg.cooldown) {
      ++suppressed;
      report(alert_outcome::suppressed, l, d, 0, {});
      return;
    }
    // Retries pile up only while the endpoint fails; bound them like the queue.
    if (l.pending.size() >= opts.queue_capacity) {
      ++dropped;
      return;
    }
    l.last_sent[key] = now;
    if (l.last_sent.size() > 4096)  // anomaly series names are many; expired marks go
      std::erase_if(l.last_sent, [&](const auto& kv) { return now - kv.second >= l.cfg.cooldown; });
    d.body = std::make_shared<const std::string>(l.cfg.format == webhook_format::slack ? alert_notifier::slack_payload(*d.event)
                                                                                      : alert_notifier::json_payload(*d.event));
    l.schedule(std::move(d), now);
  } catch (const std::exception& ex) {
    ++failed;
    log_line(log_level::error, "alert notifier: cannot queue alert").str("error", ex.what());
  }
}

void alert_notifier::impl::attempt_next(lane& l, std::optional<steady::time_point> stop_by) {
  auto node = l.pending.extract(l.pending.begin());
  delivery& d = node.mapped();
  try {
    auto deadline = steady::now() + l.cfg.timeout;
    if (stop_by) deadline = std::min(deadline, *stop_by);
    attempt_result r = post(l, deadline, *d.body);
    ++d.attempts;
    if (r.ok()) {
      ++sent;
      report(alert_outcome::sent, l, d, r.status, {});
      return;
    }
    if (d.attempts < std::max(l.cfg.max_attempts, 1)) {
      ++retried;
      report(alert_outcome::retrying, l, d, r.status, r.error);
      auto wait = backoff(d.attempts, r.retry_after);
      l.schedule(std::move(d), steady::now() + wait);
      return;
    }
    l.last_sent.erase(d.key);  // an alert that never arrived does not silence the next one
    ++failed;
    report(alert_outcome::failed, l, d, r.status, r.error);
  } catch (const std::exception& ex) {
    ++failed;
    log_line(log_level::error, "alert notifier: delivery error").str("webhook", l.target.origin).str("error", ex.what());
  }
}

void alert_notifier::impl::abandon_all(lane& l) {
  for (auto& [when, d] : l.pending) {
    ++failed;
    report(alert_outcome::failed, l, d, 0, "shut down before delivery");
  }
  l.pending.clear();
}

void alert_notifier::impl::report(alert_outcome o, const lane& l, const delivery& d, int status,
                                  std::string_view error) noexcept {
  try {
    alert_delivery info{o, *d.event, d.webhook, l.target.origin, d.attempts, status, error};
    if (hook)
      hook(info);
    else
      log_delivery(info);
  } catch (...) {
    // A throwing hook must not take the delivery thread down; the counters already moved.
  }
}

// base, 2*base, 4*base, ... capped; a longer Retry-After from the receiver wins, under the same cap.
std::chrono::milliseconds alert_notifier::impl::backoff(int attempts, std::chrono::seconds retry_after) const {
  auto wait = opts.base_backoff;
  for (int i = 1; i < attempts && wait < opts.max_backoff; ++i) wait *= 2;
  return std::min(std::max<std::chrono::milliseconds>(wait, retry_after), opts.max_backoff);
}

// Runs one attempt to completion on this thread's io_context: the async operations are there
// only so that tcp_stream's deadline applies (Beast's synchronous calls have no timeout).
attempt_result alert_notifier::impl::post(lane& l, steady::time_point deadline, const std::string& body) {
  attempt_result out;
  net::co_spawn(l.ioc, exchange(l.target, body, deadline, out), [&out](std::exception_ptr p) {
    if (!p) return;
    out.status = 0;
    try {
      std::rethrow_exception(p);
    } catch (const std::exception& ex) {
      out.error = std::string("internal error: ") + ex.what();
    } catch (...) {
      out.error = "internal error";
    }
  });
  l.ioc.restart();
  l.ioc.run();
  return out;
}

net::awaitable<void> alert_notifier::impl::exchange(const webhook_target& t, const std::string& body,
                                                    steady::time_point deadline, attempt_result& out) {
  auto ex = co_await net::this_coro::executor;
  beast::error_code ec;
  // getaddrinfo cannot be interrupted: a hanging resolver costs its own (resolv.conf) timeout,
  // after which the expired deadline fails the connect at once.
  tcp::resolver resolver(ex);
  auto endpoints = co_await resolver.async_resolve(t.host, t.port, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    out.error = describe("resolve", ec);
    co_return;
  }
  if (!t.tls) {
    beast::tcp_stream s(ex);
    s.expires_at(deadline);
    co_await s.async_connect(endpoints, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      out.error = describe("connect", ec);
      co_return;
    }
    co_await http_exchange(s, t, body, out);
    s.socket().shutdown(tcp::socket::shutdown_both, ec);
    co_return;
  }
  beast::ssl_stream<beast::tcp_stream> s(ex, *tls);
  beast::get_lowest_layer(s).expires_at(deadline);
  co_await beast::get_lowest_layer(s).async_connect(endpoints, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    out.error = describe("connect", ec);
    co_return;
  }
  beast::error_code ip_ec;
  net::ip::make_address(t.host, ip_ec);
  // SNI carries host names only (RFC 6066 §3).
  if (ip_ec && !SSL_set_tlsext_host_name(s.native_handle(), t.host.c_str())) {
    out.error = "TLS: cannot set SNI";
    co_return;
  }
  s.set_verify_callback(ssl::host_name_verification(t.host));
  co_await s.async_handshake(ssl::stream_base::client, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    out.error = describe("TLS handshake", ec);
    if (long vr = SSL_get_verify_result(s.native_handle()); vr != X509_V_OK)
      out.error += std::string(" (") + X509_verify_cert_error_string(vr) + ")";
    co_return;
  }
  // No close_notify exchange afterwards: the answer is complete (Connection: close) and many
  // receivers never answer one, which would only spend the deadline.
  co_await http_exchange(s, t, body, out);
}

}  // namespace tollgate
