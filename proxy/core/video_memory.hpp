// Videos created through tollgate (Sora: POST /v1/videos and remixes), remembered by id with the
// model, size and length they were billed at. A remix (POST /v1/videos/{id}/remix) names none of
// these, and a hard budget must reserve what it will bill before it goes upstream: the remix of
// a remembered video reserves its original's price. Any thread; bounded: past `capacity` ids the
// oldest is forgotten (its remixes then reserve at the priciest per-second output, see
// client_session.cpp). In memory only: after a restart a remix reserves at that worst price.
#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/string_hash.hpp"

namespace tollgate {

struct video_fact {
  std::string model;           // the video object's model (e.g. "sora-2-pro")
  std::uint16_t w = 0, h = 0;  // its size in pixels (0 x 0: not stated)
  std::int64_t seconds = 0;    // its length
};

class video_memory {
 public:
  explicit video_memory(std::size_t capacity = 50'000) : cap_(capacity < 1 ? 1 : capacity) {}
  // Remembers (or updates) `id`; ids longer than 256 bytes or empty are ignored.
  void remember(std::string_view id, video_fact fact);
  std::optional<video_fact> find(std::string_view id) const;
  std::size_t size() const;

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, video_fact, string_hash, std::equal_to<>> facts_;
  std::deque<std::string> order_;  // insertion order, for the bound
  std::size_t cap_;
};

}  // namespace tollgate
