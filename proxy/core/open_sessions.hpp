// Realtime (WebSocket) sessions in progress, each with its ledger row so far, so that a crash of
// tollgate loses none of them. A session's row is written when it ends, and a session may run
// for an hour: the tunnel puts its row here after every usage event (journal-encoded, priced
// so far, marked aborted), spend_control saves the set to the ledger database once a second
// when it changed (table open_sessions, key_store.hpp), and the next start ledgers the rows it
// finds there. Any thread.
#pragma once
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tollgate {

struct open_session_row {
  std::string request_id;
  std::int64_t start_ms = 0;
  std::string row;  // encode_usage_record (ledger/journal.hpp)
};

class open_sessions {
 public:
  void set(open_session_row r) {
    std::lock_guard lk(mu_);
    std::string id = r.request_id;
    rows_.insert_or_assign(std::move(id), std::move(r));
    changed_ = true;
  }
  void erase(const std::string& request_id) {
    std::lock_guard lk(mu_);
    if (rows_.erase(request_id) > 0) changed_ = true;
  }
  void touch() {
    std::lock_guard lk(mu_);
    changed_ = true;
  }
  // Every open session's row, when the set changed since the last call; else nothing.
  std::optional<std::vector<open_session_row>> take_if_changed() {
    std::lock_guard lk(mu_);
    if (!changed_) return std::nullopt;
    changed_ = false;
    std::vector<open_session_row> out;
    out.reserve(rows_.size());
    for (const auto& [id, r] : rows_) out.push_back(r);
    return out;
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, open_session_row> rows_;
  bool changed_ = false;
};

}  // namespace tollgate
