#include "core/pending_responses.hpp"

namespace tollgate {

void pending_responses::add(std::string_view id, std::int64_t created_ms) {
  if (id.empty()) return;
  std::lock_guard lock(mu_);
  if (!ids_.emplace(id, created_ms).second) return;
  order_.emplace_back(id);
  if (tracking_) changes_.push_back({std::string(id), true, created_ms});
  while (order_.size() > cap_) {
    if (ids_.erase(order_.front()) > 0 && tracking_) changes_.push_back({order_.front(), false});
    order_.pop_front();
  }
}

void pending_responses::track_changes() {
  std::lock_guard lock(mu_);
  tracking_ = true;
}

std::vector<pending_responses::change> pending_responses::take_changes() {
  std::lock_guard lock(mu_);
  std::vector<change> out;
  out.swap(changes_);
  return out;
}

bool pending_responses::contains(std::string_view id) const {
  std::lock_guard lock(mu_);
  return ids_.find(id) != ids_.end();
}

bool pending_responses::take(std::string_view id, std::int64_t* created_ms) {
  std::lock_guard lock(mu_);
  const auto it = ids_.find(id);
  if (it == ids_.end()) return false;
  if (created_ms != nullptr) *created_ms = it->second;
  if (tracking_) changes_.push_back({it->first, false});
  ids_.erase(it);
  return true;
}

std::size_t pending_responses::size() const {
  std::lock_guard lock(mu_);
  return ids_.size();
}

bool is_finished_batch(std::string_view status) noexcept {
  return status == "completed" || status == "failed" || status == "expired" || status == "cancelled";
}

bool is_finished_response(std::string_view status) noexcept {
  return status == "completed" || status == "failed" || status == "incomplete" || status == "cancelled";
}

}  // namespace tollgate
