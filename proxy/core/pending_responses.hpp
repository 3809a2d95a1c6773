// Background responses (Responses API, `background: true`) created through tollgate and not yet
// finished. Their creating call answers `queued` without usage; the usage arrives with a later
// retrieval, which is metered once: by the first retrieval that sees the response finished
// (take() is true once per id). Each id keeps the start of the call that created it (Unix ms), so
// the usage is priced at the version in effect then (pricing's scheduled changes), as any call
// is priced at its start, not at the retrieval's. Any thread; bounded: past `capacity` ids the
// oldest is forgotten, and its usage goes unmetered as if it had not been registered.
#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/string_hash.hpp"

namespace tollgate {

class pending_responses {
 public:
  explicit pending_responses(std::size_t capacity = 100'000) : cap_(capacity < 1 ? 1 : capacity) {}
  // created_ms < 0: unknown (its usage is priced at the retrieval's start).
  void add(std::string_view id, std::int64_t created_ms = -1);
  bool contains(std::string_view id) const;
  // True once per id; *created_ms (when given) gets the id's creation time, or -1.
  bool take(std::string_view id, std::int64_t* created_ms = nullptr);
  std::size_t size() const;

  // Persistence (the ledger database keeps the set across restarts): once track_changes() is
  // called, every id added, taken or aged out is logged, and take_changes() hands the log over.
  struct change {
    std::string id;
    bool added;
    std::int64_t created_ms = -1;  // of an id added
  };
  void track_changes();
  std::vector<change> take_changes();

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::int64_t, string_hash, std::equal_to<>> ids_;  // id -> created_ms
  std::deque<std::string> order_;  // insertion order, for the bound (taken ids age out too)
  std::size_t cap_;
  bool tracking_ = false;
  std::vector<change> changes_;
};

// A Responses API status after which a response does not change: its usage is final.
bool is_finished_response(std::string_view status) noexcept;
// A Batch API status after which a batch does not change (completed, failed, expired, cancelled).
bool is_finished_batch(std::string_view status) noexcept;

}  // namespace tollgate
