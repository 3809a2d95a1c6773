// Client keys added at run time through the admin API, kept in the ledger database (table
// client_keys, migration 2) so they survive restarts. Only a key's SHA-256 is stored, never the
// key. Synchronous SQLite on a connection of its own: admin thread and start-up only.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/open_sessions.hpp"
#include "core/pending_responses.hpp"
#include "core/policy_config.hpp"

namespace tollgate {

// insert()/create() of a name (or a key) the store already holds, revoked or not: names are the
// ids of the ledger, so a name is never reused. The admin API answers 409.
struct key_exists : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct stored_key {
  client_key_config key;               // budgets carry scope "key:<name>"
  std::int64_t created_ms = 0;         // Unix ms
  std::optional<std::int64_t> revoked_ms;
};

enum class revoke_result : std::uint8_t { revoked, not_found, already_revoked };

// A new client key: "tg-" + 32 random bytes (OpenSSL RAND_bytes) in unpadded base64url, 46
// characters. Throws std::runtime_error when the random generator fails.
std::string generate_client_key();
std::array<unsigned char, 32> key_sha256(std::string_view key);
std::string to_hex(const std::array<unsigned char, 32>& digest);

// A key's budgets as stored: [{"period": "day", "limit_usd": 5, "soft": [0.5, 0.8], "hard": true}]
// (no scope: it is always the key's). budgets_from_json sets scope "key:<key_name>" and throws
// std::invalid_argument saying what is wrong (the admin API's 400), with the same rules as the
// config file: period day|week|month, limit_usd > 0, soft fractions in (0, 10], sorted, unique.
nlohmann::json budgets_to_json(const std::vector<budget_config>& budgets);
std::vector<budget_config> budgets_from_json(const nlohmann::json& j, std::string_view key_name);

// Checks a key before it is stored: name 1-64 of [A-Za-z0-9._-], team empty or the same, tags
// non-empty strings, limits >= 0, budgets as above. Throws std::invalid_argument.
void validate_client_key(const client_key_config& key);

class key_store {
 public:
  // The ledger file; it must exist with its migrations applied (ledger::start() does both).
  explicit key_store(std::string ledger_path);

  // Every stored key, revoked ones included, by name.
  std::vector<stored_key> list() const;
  // Keys not revoked, by name: merged with the configured keys at start-up and after changes.
  std::vector<client_key_config> load_active() const;

  // Stores a key whose sha256 is already set. Throws std::invalid_argument (validate_client_key),
  // key_exists when the name (of a key not revoked) or the key (of any) is taken,
  // std::runtime_error on a database error.
  void insert(const client_key_config& key, std::int64_t now_ms);
  // Generates a key, stores its hash under key.name and returns the key: the only time it is
  // ever visible. Throws as insert().
  std::string create(client_key_config key, std::int64_t now_ms);
  // Marks a key revoked at now_ms; it stays listed, and its hash taken. A new key may take its
  // name: the revoked one is then listed as "<name>@revoked-<revoked_ms>".
  revoke_result revoke(std::string_view name, std::int64_t now_ms);

  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
};

// Alerts sent once per budget window (projected_overspend), remembered in the ledger database
// beside the stored keys, so a restart inside the window does not send them again. The table
// (window_alerts) is made on first use, outside the versioned schema like journal_replay.
struct window_alert_mark {
  std::string kind, scope, period;
  std::int64_t window_start_s = 0;
};
// Throws std::runtime_error on a database error.
void record_window_alert(const std::string& ledger_path, const window_alert_mark& m, std::int64_t now_ms);
// Marks of windows starting at or after since_s; none when the table does not exist yet.
std::vector<window_alert_mark> window_alerts_since(const std::string& ledger_path, std::int64_t since_s);

// Objects created through tollgate whose usage a later call meters once (background responses,
// batches: pending_responses), remembered in the ledger database so a restart in between keeps
// them: table pending_objects (kind, id, created_ms), made on first use like window_alerts.
// Ids added are inserted (created_ms: their creating call's start, now_ms when unknown), ids taken
// deleted, in one transaction. Throw std::runtime_error.
void record_pending_objects(const std::string& ledger_path, std::string_view kind,
                            const std::vector<pending_responses::change>& changes, std::int64_t now_ms);
// The ids of `kind` created at or after since_ms with their created_ms, oldest first (older ones
// are deleted).
std::vector<std::pair<std::string, std::int64_t>> load_pending_objects(const std::string& ledger_path,
                                                                       std::string_view kind, std::int64_t since_ms);

// Realtime sessions in progress and their rows so far (journal-encoded usage_record), kept so a
// crash loses none of them: table open_sessions (request_id, start_ms, row), replaced whole by
// save_open_sessions (an empty list empties it). load_open_sessions, at a start, returns the
// rows whose session never reached the ledger (no calls row with its start_ms and request_id).
// Both throw std::runtime_error on a database error.
void save_open_sessions(const std::string& ledger_path, const std::vector<open_session_row>& rows);
std::vector<std::string> load_open_sessions(const std::string& ledger_path);

// {"name", "team" (null when none), "tags", "limits": {"rpm", "tpm"}, "budgets", "created_ms",
//  "revoked_ms" (null when active)}: the admin API's view. Neither the key nor its hash.
nlohmann::json to_json(const stored_key& k);

}  // namespace tollgate
