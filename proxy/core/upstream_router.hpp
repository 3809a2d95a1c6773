// Which upstream serves a call: model-glob routing rules, weighted balancing, protocol fit, and
// the per-upstream circuit breaker. Pure (no sockets); the session asks for a plan per call and
// reports each attempt's outcome to the breaker.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"

namespace tollgate {

// Shell-style glob: `*` any run, `?` one character; case-insensitive (model ids are).
bool glob_match(std::string_view pattern, std::string_view s) noexcept;

struct route_plan {
  std::vector<std::uint16_t> order;  // upstream indices in the order to try (first = balanced pick)
  std::string rewrite;               // model to send upstream instead of the client's ("" = keep)
};

class upstream_router {
 public:
  upstream_router(std::vector<upstream_config> upstreams, std::vector<route_rule> rules);

  // Upstreams able to serve `path` (e.g. "/v1/messages") for `model`, first matching rule wins
  // (no rule matches: every upstream). Anthropic-protocol upstreams serve /v1/messages*, and an
  // Anthropic client's other calls (`anthropic_client`: it sent anthropic-version, as the
  // Anthropic SDKs do on every call: models, files, batches); those go to them alone when there
  // are any, else where OpenAI-protocol calls go.
  // Among the candidates, positive weights are balanced with `random` (any uniform 64-bit value):
  // the order is a weighted draw without replacement, zero-weight upstreams last (backups).
  route_plan plan(std::string_view path, std::string_view model, std::uint64_t random,
                  bool anthropic_client = false) const;

  // The first rule whose model glob matches `model` (nullptr: none). Rules match the model alone,
  // so a rule's rewrite is known without planning a call.
  const route_rule* rule_for(std::string_view model) const noexcept;

  const std::vector<upstream_config>& upstreams() const noexcept { return upstreams_; }

 private:
  std::vector<upstream_config> upstreams_;
  std::vector<route_rule> rules_;
};

// Closed -> (N consecutive failures) -> open -> (open_for elapsed) -> half-open: one probe call
// at a time; its success closes the breaker, its failure opens it again. Thread-safe; the
// closed, healthy path is lock-free.
class circuit_breaker {
 public:
  enum class state : int { closed = 0, open = 1, half_open = 2 };
  using clock = std::chrono::steady_clock;

  circuit_breaker(int failure_threshold, std::chrono::milliseconds open_for)
      : threshold_(failure_threshold < 1 ? 1 : failure_threshold), open_for_(open_for) {}

  // May a call go to this upstream now? In half-open, true for one caller (the probe) until it
  // reports. `probe` tells the caller it holds the probe and must report (success/failure/abandon).
  bool allow(clock::time_point now, bool& probe) noexcept;
  void on_success(bool probe) noexcept;
  void on_failure(clock::time_point now, bool probe) noexcept;
  void on_abandon(bool probe) noexcept;  // the call ended with no verdict (client went away)

  state current(clock::time_point now) const noexcept;
  int consecutive_failures() const noexcept { return failures_.load(std::memory_order_relaxed); }

 private:
  const int threshold_;
  const std::chrono::milliseconds open_for_;
  std::atomic<int> state_{0};
  std::atomic<int> failures_{0};
  mutable std::mutex mu_;
  clock::time_point opened_at_{};
  bool probe_out_ = false;
};

}  // namespace tollgate
