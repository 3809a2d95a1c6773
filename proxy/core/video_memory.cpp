#include "core/video_memory.hpp"

namespace tollgate {

void video_memory::remember(std::string_view id, video_fact fact) {
  if (id.empty() || id.size() > 256) return;
  std::lock_guard lk(mu_);
  if (auto it = facts_.find(id); it != facts_.end()) {
    it->second = std::move(fact);
    return;
  }
  while (facts_.size() >= cap_ && !order_.empty()) {
    facts_.erase(order_.front());
    order_.pop_front();
  }
  facts_.emplace(std::string(id), std::move(fact));
  order_.emplace_back(id);
}

std::optional<video_fact> video_memory::find(std::string_view id) const {
  std::lock_guard lk(mu_);
  if (auto it = facts_.find(id); it != facts_.end()) return it->second;
  return std::nullopt;
}

std::size_t video_memory::size() const {
  std::lock_guard lk(mu_);
  return facts_.size();
}

}  // namespace tollgate
