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

}  // namespace tollgate
