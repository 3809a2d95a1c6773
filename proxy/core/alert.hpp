// One alert: raised by the policy engine (soft thresholds, projected overspend, spend-guard
// trips) or the forecaster (traffic anomalies), delivered by the webhook notifier.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace tollgate {

enum class alert_kind : std::uint8_t { soft_threshold, projected_overspend, spend_guard, anomaly };

inline std::string_view to_string(alert_kind k) noexcept {
  switch (k) {
    case alert_kind::soft_threshold: return "soft_threshold";
    case alert_kind::projected_overspend: return "projected_overspend";
    case alert_kind::spend_guard: return "spend_guard";
    case alert_kind::anomaly: return "anomaly";
  }
  return "anomaly";
}

struct alert_event {
  alert_kind kind = alert_kind::soft_threshold;
  std::string scope;        // "global", "team:web", "key:app-prod", "model:gpt-4.1"; anomaly: the series
  std::string period;       // "day", "week", "month"; spend_guard: the window ("1h"); anomaly: ""
  double limit_usd = 0;     // budget limit, guard max_usd; anomaly: 0
  double spent_usd = 0;     // spent in the period / window when raised
  double threshold = 0;     // soft: the crossed fraction (0.8); projected: the projection (USD) at
                            // projection_quantile; anomaly: the anomaly score
  std::int64_t time_ms = 0; // when raised, Unix ms
  std::string message;      // one human sentence (the Slack text)
  // projected: 0.9, or 0.5 while the forecast band is still the cold-start prior
  double projection_quantile = 0.9;
  // soft and projected: the budget window's start (Unix s), part of the dedupe key; projected
  // alerts are also remembered in the ledger database so a restart inside the window does not
  // send them again (key_store.hpp, window alerts)
  std::int64_t window_start_s = 0;
  // Dedupe key: the same kind+scope+period(+threshold for soft, +window for budget alerts) is sent
  // once per cooldown.
  std::string dedupe_key() const {
    std::string k(to_string(kind));
    k += '|' + scope + '|' + period;
    if (kind == alert_kind::soft_threshold) k += '|' + std::to_string(static_cast<int>(threshold * 1000 + 0.5));
    // A budget alert belongs to its window: the next day's 50 % is news, even within the cooldown.
    if (window_start_s != 0) k += '|' + std::to_string(window_start_s);
    return k;
  }
};

}  // namespace tollgate
