// The webhook notifier (issue 4, item 6): alert events from any thread go into a bounded queue
// per webhook; one background thread per webhook deduplicates them, posts them as generic JSON
// or Slack-compatible payloads, and retries failures with exponential backoff. Webhooks are
// independent: one that hangs until its timeout, or is being retried, delays no other.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/alert.hpp"
#include "core/policy_config.hpp"

namespace tollgate {

struct alert_notifier_options {
  std::size_t queue_capacity = 1000;               // events waiting per webhook (and retries); more are dropped
  std::chrono::milliseconds base_backoff{1'000};   // wait before the first retry; doubles per retry
  std::chrono::milliseconds max_backoff{60'000};   // cap of the retry wait (and of a Retry-After)
  std::chrono::milliseconds stop_timeout{5'000};   // stop() delivers what is queued for this long
  std::string ca_pem;  // extra trusted CA certificates (PEM) besides the system store; tests, private CAs
};

enum class alert_outcome : std::uint8_t {
  sent,        // a 2xx answer
  retrying,    // this attempt failed; another one is scheduled
  failed,      // the last attempt failed (or stop() ran out of time): given up
  suppressed,  // the same dedupe key went to this webhook less than `cooldown` ago
};
std::string_view to_string(alert_outcome o) noexcept;

// What happened to one alert at one webhook; valid for the duration of the hook call.
struct alert_delivery {
  alert_outcome outcome;
  const alert_event& event;
  std::size_t webhook;       // index in the configured list
  std::string_view origin;   // "https://hooks.slack.com": never the path, which for Slack is the secret
  int attempt;               // attempts made so far (0 when suppressed)
  int http_status;           // 0: no HTTP answer
  std::string_view error;    // why the attempt failed; "" when sent or suppressed
};
using alert_hook = std::function<void(const alert_delivery&)>;

// Counters since construction; a delivery is one alert at one webhook.
struct alert_notifier_stats {
  std::uint64_t sent = 0;        // deliveries answered 2xx
  std::uint64_t failed = 0;      // deliveries given up after max_attempts (or at stop)
  std::uint64_t retried = 0;     // retry attempts scheduled
  std::uint64_t suppressed = 0;  // deliveries skipped by the cooldown
  std::uint64_t dropped = 0;     // deliveries refused by notify() (that webhook's queue full, after stop())
                                 // or while queue_capacity of that webhook's already wait for a retry
};

class alert_notifier {
 public:
  // Throws std::invalid_argument when a URL is not http(s)://host[:port][/path][?query], and
  // std::runtime_error when ca_pem does not load. `hook` runs for every outcome on the thread of
  // the delivery's webhook, so concurrently for two webhooks; empty: log_delivery.
  alert_notifier(std::vector<webhook_config> webhooks, alert_hook hook = {}, alert_notifier_options opts = {});
  ~alert_notifier();  // stop()
  alert_notifier(const alert_notifier&) = delete;
  alert_notifier& operator=(const alert_notifier&) = delete;

  // Starts one delivery thread per webhook (at lowered priority). Events queued before start()
  // wait for it. No thread when no webhook is configured.
  void start();
  // Stops taking events, delivers the queued ones and the retries due until stop_timeout from
  // now, counts the rest as failed, joins. An attempt already in flight keeps its own webhook
  // timeout, so stop() returns within max(stop_timeout, timeout). Without start(), the queue is
  // discarded (counted as dropped). Idempotent.
  void stop();

  // Queues e for every webhook. Any thread, never blocks beyond a short mutex hold, never
  // throws; a webhook whose queue is full misses e (counted as dropped). time_ms == 0 is stamped with the current time.
  void notify(alert_event e) noexcept;

  alert_notifier_stats stats() const noexcept;

  // The default hook: one log line per outcome (warn on retrying, error on failed).
  static void log_delivery(const alert_delivery& d);

  // The request bodies, exposed for tests and documentation.
  static std::string json_payload(const alert_event& e);
  static std::string slack_payload(const alert_event& e);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace tollgate
