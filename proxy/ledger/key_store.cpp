// Run-time client keys in the ledger database (key_store.hpp): generation, hashing, the
// budgets' JSON form and the client_keys table. Called by the admin API and at start-up.
#include "ledger/key_store.hpp"

#include "core/error.hpp"
#include "core/policy.hpp"

#include <openssl/rand.h>
#include <sqlite3.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <utility>

namespace tollgate {

namespace {

bool valid_name(std::string_view n) {
  return !n.empty() && n.size() <= 64 && std::all_of(n.begin(), n.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
         });
}

std::optional<calendar_period> budget_period(std::string_view s) {
  if (s == "day") return calendar_period::day;
  if (s == "week") return calendar_period::week;
  if (s == "month") return calendar_period::month;
  return std::nullopt;
}

std::string base64url(const unsigned char* p, std::size_t n) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  out.reserve((n * 4 + 2) / 3);
  for (std::size_t i = 0; i < n; i += 3) {
    const std::uint32_t v = (std::uint32_t{p[i]} << 16) | (i + 1 < n ? std::uint32_t{p[i + 1]} << 8 : 0) |
                            (i + 2 < n ? std::uint32_t{p[i + 2]} : 0);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    if (i + 1 < n) out += kAlphabet[(v >> 6) & 63];
    if (i + 2 < n) out += kAlphabet[v & 63];
  }
  return out;
}

std::optional<std::array<unsigned char, 32>> from_hex(std::string_view s) {
  const auto digit = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (s.size() != 64) return std::nullopt;
  std::array<unsigned char, 32> out{};
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = digit(s[2 * i]), lo = digit(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<unsigned char>(hi * 16 + lo);
  }
  return out;
}

void check_budget(const budget_config& b, const std::string& where) {
  if (b.period != calendar_period::day && b.period != calendar_period::week && b.period != calendar_period::month)
    throw std::invalid_argument(where + ".period: expected day, week or month");
  if (!std::isfinite(b.limit_usd) || !(b.limit_usd > 0))
    throw std::invalid_argument(where + ".limit_usd: expected a number greater than 0");
  for (const double f : b.soft)
    if (!std::isfinite(f) || !(f > 0) || f > 10)
      throw std::invalid_argument(where + ".soft: expected fractions of the limit in (0, 10], such as 0.8");
}

// One read-write connection to an existing ledger, closed (and any open transaction rolled back)
// on scope exit.
class connection {
 public:
  explicit connection(const std::string& path) : path_(path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
      throw std::runtime_error("ledger " + path + ": no such file (the proxy creates it at start-up)");
    const int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
      const std::string why = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
      sqlite3_close(db_);
      throw std::runtime_error("ledger " + path + ": " + why);
    }
    // The ledger's writer thread commits a batch at a time; wait for it rather than fail.
    sqlite3_busy_timeout(db_, 5000);
  }
  ~connection() {
    if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(db_);
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  [[noreturn]] void fail() const {
    std::string why = sqlite3_errmsg(db_);
    if (why.rfind("no such table", 0) == 0) why += " (a ledger from an older tollgate: start the proxy once to migrate it)";
    throw std::runtime_error("ledger " + path_ + ": " + why);
  }
  void exec(const char* sql) {
    if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail();
  }
  sqlite3* db() const noexcept { return db_; }
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  sqlite3* db_ = nullptr;
};

class statement {
 public:
  statement(const connection& c, const char* sql) : c_(c) {
    if (sqlite3_prepare_v2(c.db(), sql, -1, &st_, nullptr) != SQLITE_OK) c.fail();
  }
  ~statement() { sqlite3_finalize(st_); }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;

  // SQLITE_TRANSIENT: the arguments may be temporaries.
  void bind(int i, std::string_view s) {
    sqlite3_bind_text64(st_, i, s.data(), s.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  }
  void bind_nullable(int i, std::string_view s) { s.empty() ? (void)sqlite3_bind_null(st_, i) : bind(i, s); }
  void bind(int i, std::int64_t v) { sqlite3_bind_int64(st_, i, v); }
  void bind_blob(int i, std::string_view s) { sqlite3_bind_blob64(st_, i, s.data(), s.size(), SQLITE_TRANSIENT); }
  void reset() noexcept {
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
  }
  bool step() {
    const int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    c_.fail();
  }
  std::string text(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st_, c));
    return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(st_, c))) : std::string();
  }
  std::int64_t i64(int c) const noexcept { return sqlite3_column_int64(st_, c); }
  std::string blob(int c) const {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(st_, c));
    return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(st_, c))) : std::string();
  }
  bool is_null(int c) const noexcept { return sqlite3_column_type(st_, c) == SQLITE_NULL; }

 private:
  const connection& c_;
  sqlite3_stmt* st_ = nullptr;
};

constexpr const char* kSelectKeys =
    "SELECT name, key_sha256, team, tags, rpm, tpm, budgets, created_ms, revoked_ms FROM client_keys";

stored_key read_key(const statement& st, const std::string& path) {
  stored_key k;
  k.key.name = st.text(0);
  const auto bad = [&](const std::string& why) {
    return std::runtime_error("ledger " + path + ": client key '" + k.key.name + "': " + why);
  };
  const auto digest = from_hex(st.text(1));
  if (!digest) throw bad("key_sha256 is not 64 hex digits");
  k.key.sha256 = *digest;
  k.key.team = st.text(2);
  try {
    if (!st.is_null(3)) k.key.tags = nlohmann::json::parse(st.text(3)).get<std::vector<std::string>>();
    if (!st.is_null(6)) k.key.budgets = budgets_from_json(nlohmann::json::parse(st.text(6)), k.key.name);
  } catch (const std::exception& e) {
    throw bad(e.what());
  }
  k.key.limits.rpm = st.i64(4);
  k.key.limits.tpm = st.i64(5);
  k.created_ms = st.i64(7);
  if (!st.is_null(8)) k.revoked_ms = st.i64(8);
  return k;
}

}  // namespace

std::string generate_client_key() {
  std::array<unsigned char, 32> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1)
    throw std::runtime_error("cannot generate a client key: the OpenSSL random generator failed");
  return "tg-" + base64url(bytes.data(), bytes.size());
}

std::array<unsigned char, 32> key_sha256(std::string_view key) { return policy_engine::sha256(key); }

std::string to_hex(const std::array<unsigned char, 32>& digest) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(64);
  for (const unsigned char b : digest) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

nlohmann::json budgets_to_json(const std::vector<budget_config>& budgets) {
  auto out = nlohmann::json::array();
  for (const auto& b : budgets)
    out.push_back({{"period", std::string(to_string(b.period))}, {"limit_usd", b.limit_usd}, {"soft", b.soft},
                   {"hard", b.hard}});
  return out;
}

std::vector<budget_config> budgets_from_json(const nlohmann::json& j, std::string_view key_name) {
  std::vector<budget_config> out;
  if (j.is_null()) return out;
  if (!j.is_array()) throw std::invalid_argument("budgets: expected a list");
  for (std::size_t i = 0; i < j.size(); ++i) {
    const auto where = "budgets[" + std::to_string(i) + "]";
    const auto& item = j[i];
    if (!item.is_object()) throw std::invalid_argument(where + ": expected an object with period and limit_usd");
    budget_config b;
    b.scope = "key:" + std::string(key_name);
    bool has_period = false, has_limit = false;
    for (const auto& [field, v] : item.items()) {
      if (field == "period") {
        const auto p = v.is_string() ? budget_period(v.get_ref<const std::string&>()) : std::nullopt;
        if (!p) throw std::invalid_argument(where + ".period: expected day, week or month");
        b.period = *p;
        has_period = true;
      } else if (field == "limit_usd") {
        if (!v.is_number()) throw std::invalid_argument(where + ".limit_usd: expected a number greater than 0");
        b.limit_usd = v.get<double>();
        has_limit = true;
      } else if (field == "soft") {
        if (!v.is_array()) throw std::invalid_argument(where + ".soft: expected a list of fractions such as [0.5, 0.8]");
        for (const auto& f : v) {
          if (!f.is_number()) throw std::invalid_argument(where + ".soft: expected a list of fractions such as [0.5, 0.8]");
          b.soft.push_back(f.get<double>());
        }
        std::sort(b.soft.begin(), b.soft.end());
        b.soft.erase(std::unique(b.soft.begin(), b.soft.end()), b.soft.end());
      } else if (field == "hard") {
        if (!v.is_boolean()) throw std::invalid_argument(where + ".hard: expected true or false");
        b.hard = v.get<bool>();
      } else {
        throw std::invalid_argument(where + ": unknown field " + quote_value(field) +
                                    " (expected period, limit_usd, soft, hard; a key's budgets are scoped to the key)");
      }
    }
    if (!has_period || !has_limit) throw std::invalid_argument(where + ": period and limit_usd are required");
    check_budget(b, where);
    out.push_back(std::move(b));
  }
  return out;
}

void validate_client_key(const client_key_config& key) {
  if (!valid_name(key.name))
    throw std::invalid_argument("name: expected 1-64 letters, digits, '-', '_' or '.', got " + quote_value(key.name));
  if (!key.team.empty() && !valid_name(key.team))
    throw std::invalid_argument("team: expected 1-64 letters, digits, '-', '_' or '.', got " + quote_value(key.team));
  for (const auto& t : key.tags)
    if (t.empty() || t.size() > 128) throw std::invalid_argument("tags: expected non-empty strings of up to 128 bytes");
  if (key.limits.rpm < 0 || key.limits.tpm < 0)
    throw std::invalid_argument("limits: rpm and tpm must be >= 0 (0 = unlimited)");
  for (std::size_t i = 0; i < key.budgets.size(); ++i) check_budget(key.budgets[i], "budgets[" + std::to_string(i) + "]");
}

key_store::key_store(std::string ledger_path) : path_(std::move(ledger_path)) {}

std::vector<stored_key> key_store::list() const {
  connection c(path_);
  statement st(c, (std::string(kSelectKeys) + " ORDER BY name").c_str());
  std::vector<stored_key> out;
  while (st.step()) out.push_back(read_key(st, path_));
  return out;
}

std::vector<client_key_config> key_store::load_active() const {
  connection c(path_);
  statement st(c, (std::string(kSelectKeys) + " WHERE revoked_ms IS NULL ORDER BY name").c_str());
  std::vector<client_key_config> out;
  while (st.step()) out.push_back(read_key(st, path_).key);
  return out;
}

void key_store::insert(const client_key_config& key, std::int64_t now_ms) {
  validate_client_key(key);
  const std::string hash = to_hex(key.sha256);
  connection c(path_);
  // IMMEDIATE: the check and the insert see the same table, whoever else writes meanwhile.
  c.exec("BEGIN IMMEDIATE");
  {
    // A secret once stored never comes back, even revoked (a leaked key stays dead); a revoked
    // key's name may be given to a new key, so a rotated service keeps its name and history.
    statement taken(c, "SELECT name, key_sha256 = ?2, revoked_ms IS NULL FROM client_keys WHERE name = ?1 OR key_sha256 = ?2");
    taken.bind(1, key.name);
    taken.bind(2, hash);
    while (taken.step()) {
      const auto other = taken.text(0);
      if (taken.i64(1) != 0) throw key_exists("that key is already stored as '" + other + "'");
      if (taken.i64(2) != 0) throw key_exists("client key '" + key.name + "' already exists");
    }
  }
  {
    // A revoked key of that name keeps its row (its hash still refuses the old secret) under the
    // name "<name>@revoked-<revoked_ms>", which no valid key name can take.
    statement keep(c, "UPDATE client_keys SET name = name || '@revoked-' || revoked_ms WHERE name = ?1 AND revoked_ms IS NOT NULL");
    keep.bind(1, key.name);
    keep.step();
  }
  {
    statement ins(c,
                  "INSERT INTO client_keys (name, key_sha256, team, tags, rpm, tpm, budgets, created_ms, revoked_ms)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)");
    ins.bind(1, key.name);
    ins.bind(2, hash);
    ins.bind_nullable(3, key.team);
    ins.bind(4, nlohmann::json(key.tags).dump());
    ins.bind(5, key.limits.rpm);
    ins.bind(6, key.limits.tpm);
    ins.bind(7, budgets_to_json(key.budgets).dump());
    ins.bind(8, now_ms);
    ins.step();
  }
  c.exec("COMMIT");
}

constexpr const char* kWindowAlertsSql =
    "CREATE TABLE IF NOT EXISTS window_alerts (kind TEXT NOT NULL, scope TEXT NOT NULL, period TEXT NOT NULL,"
    " window_start_s INTEGER NOT NULL, sent_ms INTEGER NOT NULL, PRIMARY KEY (kind, scope, period, window_start_s))";

void record_window_alert(const std::string& ledger_path, const window_alert_mark& m, std::int64_t now_ms) {
  connection c(ledger_path);
  c.exec(kWindowAlertsSql);
  statement ins(c, "INSERT OR IGNORE INTO window_alerts (kind, scope, period, window_start_s, sent_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
  ins.bind(1, m.kind);
  ins.bind(2, m.scope);
  ins.bind(3, m.period);
  ins.bind(4, m.window_start_s);
  ins.bind(5, now_ms);
  ins.step();
}

constexpr const char* kPendingObjectsSql =
    "CREATE TABLE IF NOT EXISTS pending_objects (kind TEXT NOT NULL, id TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL, PRIMARY KEY (kind, id))";

void record_pending_objects(const std::string& ledger_path, std::string_view kind,
                            const std::vector<pending_responses::change>& changes, std::int64_t now_ms) {
  if (changes.empty()) return;
  connection c(ledger_path);
  c.exec(kPendingObjectsSql);
  c.exec("BEGIN IMMEDIATE");
  try {
    statement ins(c, "INSERT OR IGNORE INTO pending_objects (kind, id, created_ms) VALUES (?1, ?2, ?3)");
    statement del(c, "DELETE FROM pending_objects WHERE kind = ?1 AND id = ?2");
    for (const auto& ch : changes) {
      statement& st = ch.added ? ins : del;
      st.reset();
      st.bind(1, kind);
      st.bind(2, ch.id);
      if (ch.added) st.bind(3, ch.created_ms >= 0 ? ch.created_ms : now_ms);
      st.step();
    }
    c.exec("COMMIT");
  } catch (...) {
    try { c.exec("ROLLBACK"); } catch (...) {}
    throw;
  }
}

std::vector<std::pair<std::string, std::int64_t>> load_pending_objects(const std::string& ledger_path,
                                                                       std::string_view kind, std::int64_t since_ms) {
  connection c(ledger_path);
  c.exec(kPendingObjectsSql);
  {
    statement old(c, "DELETE FROM pending_objects WHERE kind = ?1 AND created_ms < ?2");
    old.bind(1, kind);
    old.bind(2, since_ms);
    old.step();
  }
  statement st(c, "SELECT id, created_ms FROM pending_objects WHERE kind = ?1 ORDER BY created_ms, rowid");
  st.bind(1, kind);
  std::vector<std::pair<std::string, std::int64_t>> out;
  while (st.step()) out.emplace_back(st.text(0), st.i64(1));
  return out;
}

constexpr const char* kOpenSessionsSql =
    "CREATE TABLE IF NOT EXISTS open_sessions (request_id TEXT PRIMARY KEY, start_ms INTEGER NOT NULL,"
    " row BLOB NOT NULL)";

void save_open_sessions(const std::string& ledger_path, const std::vector<open_session_row>& rows) {
  connection c(ledger_path);
  c.exec(kOpenSessionsSql);
  c.exec("BEGIN IMMEDIATE");
  try {
    c.exec("DELETE FROM open_sessions");
    statement ins(c, "INSERT OR REPLACE INTO open_sessions (request_id, start_ms, row) VALUES (?1, ?2, ?3)");
    for (const auto& r : rows) {
      ins.reset();
      ins.bind(1, r.request_id);
      ins.bind(2, r.start_ms);
      ins.bind_blob(3, r.row);
      ins.step();
    }
    c.exec("COMMIT");
  } catch (...) {
    try { c.exec("ROLLBACK"); } catch (...) {}
    throw;
  }
}

std::vector<std::string> load_open_sessions(const std::string& ledger_path) {
  connection c(ledger_path);
  c.exec(kOpenSessionsSql);
  std::vector<std::string> out;
  {
    // A session whose row was committed just before the stop is there already: once is enough.
    // (calls' start_ms index finds it; the ledger's writer made the table before this runs.)
    statement st(c, "SELECT o.row FROM open_sessions o WHERE NOT EXISTS (SELECT 1 FROM calls k "
                    "WHERE k.start_ms = o.start_ms AND k.request_id = o.request_id)");
    while (st.step()) out.push_back(st.blob(0));
  }
  return out;
}

std::vector<window_alert_mark> window_alerts_since(const std::string& ledger_path, std::int64_t since_s) {
  connection c(ledger_path);
  c.exec(kWindowAlertsSql);
  statement st(c, "SELECT kind, scope, period, window_start_s FROM window_alerts WHERE window_start_s >= ?1");
  st.bind(1, since_s);
  std::vector<window_alert_mark> out;
  while (st.step()) out.push_back({st.text(0), st.text(1), st.text(2), st.i64(3)});
  return out;
}

std::string key_store::create(client_key_config key, std::int64_t now_ms) {
  std::string raw = generate_client_key();
  key.sha256 = key_sha256(raw);
  insert(key, now_ms);
  return raw;
}

revoke_result key_store::revoke(std::string_view name, std::int64_t now_ms) {
  connection c(path_);
  statement upd(c, "UPDATE client_keys SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL");
  upd.bind(1, name);
  upd.bind(2, now_ms);
  upd.step();
  if (sqlite3_changes(c.db()) == 1) return revoke_result::revoked;
  statement exists(c, "SELECT 1 FROM client_keys WHERE name = ?1");
  exists.bind(1, name);
  return exists.step() ? revoke_result::already_revoked : revoke_result::not_found;
}

nlohmann::json to_json(const stored_key& k) {
  nlohmann::json j;
  j["name"] = k.key.name;
  j["team"] = k.key.team.empty() ? nlohmann::json(nullptr) : nlohmann::json(k.key.team);
  j["tags"] = k.key.tags;
  j["limits"] = {{"rpm", k.key.limits.rpm}, {"tpm", k.key.limits.tpm}};
  j["budgets"] = budgets_to_json(k.key.budgets);
  j["created_ms"] = k.created_ms;
  j["revoked_ms"] = k.revoked_ms ? nlohmann::json(*k.revoked_ms) : nlohmann::json(nullptr);
  return j;
}

}  // namespace tollgate
