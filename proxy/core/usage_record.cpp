// String forms of the usage enums (ledger values and metric labels).
#include "core/usage_record.hpp"

namespace tollgate {

std::string_view to_string(route_kind r) noexcept {
  switch (r) {
    case route_kind::chat_completions: return "chat_completions";
    case route_kind::completions: return "completions";
    case route_kind::embeddings: return "embeddings";
    case route_kind::responses: return "responses";
    case route_kind::models: return "models";
    case route_kind::messages: return "messages";
    case route_kind::other: return "other";
  }
  return "other";
}

std::string_view to_string(usage_source s) noexcept {
  switch (s) {
    case usage_source::none: return "none";
    case usage_source::upstream: return "upstream";
    case usage_source::estimated: return "estimated";
  }
  return "none";
}

std::string_view to_string(service_tier t) noexcept {
  switch (t) {
    case service_tier::none: return "";
    case service_tier::standard: return "default";
    case service_tier::flex: return "flex";
    case service_tier::priority: return "priority";
    case service_tier::scale: return "scale";
    case service_tier::batch: return "batch";
    case service_tier::other: return "other";
    case service_tier::fast: return "fast";
    case service_tier::off_peak: return "off_peak";
  }
  return "";
}

service_tier parse_service_tier(std::string_view name) noexcept {
  if (name.empty()) return service_tier::none;
  if (name == "default" || name == "auto" || name == "standard") return service_tier::standard;
  if (name == "flex") return service_tier::flex;
  if (name == "priority") return service_tier::priority;
  if (name == "scale") return service_tier::scale;
  if (name == "batch") return service_tier::batch;
  if (name == "fast") return service_tier::fast;
  if (name == "off_peak") return service_tier::off_peak;
  return service_tier::other;
}

}  // namespace tollgate
