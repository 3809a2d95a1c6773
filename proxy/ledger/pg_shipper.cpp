// The fleet ledger's shipping thread (pg_shipper.hpp): reads committed rows from the local SQLite
// ledger in id order and copies them into PostgreSQL in one transaction per batch.
#include "ledger/pg_shipper.hpp"

#include <libpq-fe.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <optional>
#include <vector>

#include "core/log.hpp"
#include "ledger/postgres.hpp"

namespace tollgate {

using namespace std::chrono_literals;

namespace {

// The local ledger's columns, in `calls` order; PostgreSQL's table puts instance and ledger_uid
// first. Column names are the SQLite ledger's, so a query runs on either (quote "user" in
// PostgreSQL, where it is a reserved word).
constexpr const char* kSelect =
    "SELECT id, request_id, start_ms, route, method, requested_model, served_model, price_model,"
    " upstream, client_key_id, team, user, status, stream, aborted, prompt_tokens,"
    " completion_tokens, cached_tokens, cache_write_tokens, cache_write_1h_tokens,"
    " reasoning_tokens, total_tokens, usage_source, priced, cost_usd, latency_ms, first_byte_ms,"
    " error_kind, upstream_request_id, attempts, service_tier, web_search_requests, provider"
    " FROM calls WHERE id > ?1 ORDER BY id LIMIT ?2";
constexpr int kColumns = 33;
// Columns added by ledger schemas 4 and 5, last in kSelect: a fleet table created by an older
// tollgate gets them with ALTER TABLE; a role that may not alter it ships the rows without them.
constexpr int kLaterColumns = 3;
constexpr const char* kLaterNames = ", service_tier, web_search_requests, provider";
constexpr const char* kAddLater =
    "BEGIN; SELECT pg_advisory_xact_lock(7411962201); ALTER TABLE tollgate_calls"
    " ADD COLUMN IF NOT EXISTS service_tier TEXT,"
    " ADD COLUMN IF NOT EXISTS web_search_requests BIGINT NOT NULL DEFAULT 0,"
    " ADD COLUMN IF NOT EXISTS provider TEXT; COMMIT;";
constexpr const char* kHasLater =
    "SELECT count(*) FROM pg_attribute WHERE attrelid = 'tollgate_calls'::regclass"
    " AND attname IN ('service_tier', 'web_search_requests', 'provider') AND NOT attisdropped";

// The PostgreSQL columns tollgate writes, named: a table an administrator extended with columns
// of their own (inserted_at DEFAULT now(), say) keeps working.
#define TOLLGATE_PG_COLUMNS                                                                          \
  "instance, ledger_uid, id, request_id, start_ms, route, method, requested_model, served_model, " \
  "price_model, upstream, client_key_id, team, \"user\", status, stream, aborted, prompt_tokens, "  \
  "completion_tokens, cached_tokens, cache_write_tokens, cache_write_1h_tokens, reasoning_tokens, " \
  "total_tokens, usage_source, priced, cost_usd, latency_ms, first_byte_ms, error_kind, "          \
  "upstream_request_id, attempts"
// The statements of one connection; `later`: the table has the schema-4 and -5 columns.
struct pg_statements {
  std::string create_stage, copy_stage, insert;
  explicit pg_statements(bool later) {
    const std::string cols = std::string(TOLLGATE_PG_COLUMNS) + (later ? kLaterNames : "");
    create_stage = "CREATE TEMP TABLE tollgate_stage ON COMMIT DELETE ROWS AS SELECT " + cols +
                   " FROM tollgate_calls WITH NO DATA";
    copy_stage = "COPY tollgate_stage (" + cols + ") FROM STDIN";
    insert = "INSERT INTO tollgate_calls (" + cols + ") SELECT " + cols + " FROM tollgate_stage ON CONFLICT DO NOTHING";
  }
};
#undef TOLLGATE_PG_COLUMNS

constexpr const char* kSchema = R"sql(CREATE TABLE IF NOT EXISTS tollgate_calls (
  instance TEXT NOT NULL,
  ledger_uid TEXT NOT NULL,
  id BIGINT NOT NULL,
  request_id TEXT NOT NULL,
  start_ms BIGINT NOT NULL,
  route TEXT NOT NULL,
  method TEXT NOT NULL,
  requested_model TEXT,
  served_model TEXT,
  price_model TEXT,
  upstream TEXT,
  client_key_id TEXT,
  team TEXT,
  "user" TEXT,
  status INTEGER NOT NULL,
  stream INTEGER NOT NULL,
  aborted INTEGER NOT NULL,
  prompt_tokens BIGINT NOT NULL,
  completion_tokens BIGINT NOT NULL,
  cached_tokens BIGINT NOT NULL,
  cache_write_tokens BIGINT NOT NULL,
  cache_write_1h_tokens BIGINT NOT NULL,
  reasoning_tokens BIGINT NOT NULL,
  total_tokens BIGINT NOT NULL,
  usage_source TEXT NOT NULL,
  priced INTEGER NOT NULL,
  cost_usd DOUBLE PRECISION NOT NULL,
  latency_ms DOUBLE PRECISION NOT NULL,
  first_byte_ms DOUBLE PRECISION,
  error_kind TEXT,
  upstream_request_id TEXT,
  attempts INTEGER NOT NULL,
  service_tier TEXT,
  web_search_requests BIGINT NOT NULL DEFAULT 0,
  provider TEXT,
  PRIMARY KEY (ledger_uid, id)
);
CREATE INDEX IF NOT EXISTS tollgate_calls_start_ms ON tollgate_calls (start_ms);
CREATE INDEX IF NOT EXISTS tollgate_calls_instance_start_ms ON tollgate_calls (instance, start_ms);
)sql";

// How far each ledger of the fleet has shipped: updated in the transaction of each batch, so a
// reader that sees last_id sees every row up to it. Instances read the others' rows from here on
// (fleet budgets) with a primary-key range scan instead of a scan of the whole table.
constexpr const char* kLedgersSchema =
    "BEGIN; SELECT pg_advisory_xact_lock(7411962201); CREATE TABLE IF NOT EXISTS tollgate_ledgers ("
    " ledger_uid TEXT PRIMARY KEY, instance TEXT NOT NULL, last_id BIGINT NOT NULL, updated_ms BIGINT NOT NULL);"
    " COMMIT;";
constexpr const char* kLedgerUpsert =
    "INSERT INTO tollgate_ledgers (ledger_uid, instance, last_id, updated_ms) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (ledger_uid) DO UPDATE SET last_id = GREATEST(tollgate_ledgers.last_id, EXCLUDED.last_id),"
    " instance = EXCLUDED.instance, updated_ms = EXCLUDED.updated_ms";
// Another ledger's priced rows in (after, upto], from since_ms on, per key, team, model and minute,
// and per end user when $5 is true (budgets scoped by end user).
constexpr const char* kRemoteSpend =
    "SELECT COALESCE(client_key_id, ''), COALESCE(team, ''), COALESCE(price_model, ''), MAX(start_ms), SUM(cost_usd),"
    " CASE WHEN $5 THEN COALESCE(\"user\", '') ELSE '' END"
    " FROM tollgate_calls WHERE ledger_uid = $1 AND id > $2 AND id <= $3 AND start_ms >= $4 AND cost_usd > 0"
    " GROUP BY 1, 2, 3, 6, start_ms / 60000";

// The calls that count against a key's rate limits: those that went upstream (as key_calls_since,
// the local warm start).
// With $6 true (end users have limits) also every end user's calls: grouped per (limited key or
// '', end user or '') and second.
constexpr const char* kRemoteCalls =
    "SELECT CASE WHEN client_key_id = ANY($5::text[]) THEN client_key_id ELSE '' END, MAX(start_ms), COUNT(*),"
    " COALESCE(SUM(total_tokens), 0), CASE WHEN $6 THEN COALESCE(\"user\", '') ELSE '' END"
    " FROM tollgate_calls WHERE ledger_uid = $1 AND id > $2 AND id <= $3 AND start_ms >= $4"
    " AND (client_key_id = ANY($5::text[]) OR ($6 AND \"user\" IS NOT NULL AND \"user\" <> ''))"
    " AND (error_kind IS NULL OR error_kind = 'client_aborted'"
    " OR (error_kind LIKE 'upstream_%' AND error_kind <> 'upstream_key_missing'))"
    " GROUP BY 1, 5, start_ms / 1000";

// A text[] literal: {"a","b"} with backslash and double quote escaped.
std::string text_array(const std::vector<std::string>& items) {
  std::string out = "{";
  for (const auto& x : items) {
    if (out.size() > 1) out += ',';
    out += '"';
    for (char c : x) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629), 0 when it is not one.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c >= 0x01 && c < 0x80) return 1;
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
  else return 0;
  if (i + n > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  return n;
}

}  // namespace

void append_copy_text(std::string& out, std::string_view field) {
  // PostgreSQL text takes neither NUL nor malformed UTF-8 (the connection's encoding is UTF8): a
  // header value with such bytes would fail its batch on every retry, so they become U+FFFD.
  for (std::size_t i = 0; i < field.size();) {
    const char c = field[i];
    switch (c) {
      case '\\': out += "\\\\"; ++i; continue;
      case '\t': out += "\\t"; ++i; continue;
      case '\n': out += "\\n"; ++i; continue;
      case '\r': out += "\\r"; ++i; continue;
      default: break;
    }
    const std::size_t n = utf8_sequence(field, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(field.substr(i, n));
      i += n;
    }
  }
}

// `text` with every copy of `url` replaced by "<url>": libpq's parse errors quote the whole
// url, password included.
std::string redact_url(std::string text, const std::string& url) {
  if (url.empty()) return text;
  for (std::size_t at; (at = text.find(url)) != std::string::npos;) text.replace(at, url.size(), "<url>");
  return text;
}

void check_postgres_url(const std::string& url) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(url.c_str(), &err);
  if (opts == nullptr) {
    std::string why = err ? trim_message(err) : "out of memory";
    if (err) PQfreemem(err);
    // libpq quotes the url; a password in it must not reach the terminal or the logs.
    throw std::invalid_argument(redact_url(why, url));
  }
  PQconninfoFree(opts);
}

struct pg_shipper::impl {
  sqlite3* db = nullptr;
  sqlite3_stmt* select = nullptr;
  sqlite3_stmt* max_id = nullptr;
  PGconn* conn = nullptr;
  int sock = -1;  // conn's socket, guarded by the shipper's mu_: stop() shuts it down
  std::int64_t watermark = 0;  // the largest id of this ledger in PostgreSQL
  std::string buf;
  pg_statements stmts{true};
  int columns = kColumns;
  bool ledgers = false;  // tollgate_ledgers is there and this role may write it
  std::map<std::string, std::int64_t, std::less<>> cursors;  // other ledger -> last id read

  ~impl() {
    disconnect();
    sqlite3_finalize(select);
    sqlite3_finalize(max_id);
    sqlite3_close(db);
  }
  void disconnect() {
    sock = -1;
    if (conn) PQfinish(conn);
    conn = nullptr;
  }
};

namespace {

// Runs a command expecting `want`; fills `err` (with the SQLSTATE) and returns false otherwise.
bool exec(PGconn* c, const char* sql, ExecStatusType want, std::string& err) {
  PGresult* r = PQexec(c, sql);
  const bool ok = r != nullptr && PQresultStatus(r) == want;
  if (!ok) {
    const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
    err = trim_message(r ? PQresultErrorMessage(r) : PQerrorMessage(c));
    if (err.empty()) err = trim_message(PQerrorMessage(c));
    if (state) err += std::string(" (SQLSTATE ") + state + ")";
  }
  PQclear(r);
  return ok;
}

std::string sqlite_error(sqlite3* db, const char* what) {
  return std::string("ledger ") + what + ": " + (db ? sqlite3_errmsg(db) : "not open");
}


// Runs a parameterized statement expecting `want`; the result, nullptr on failure (err filled).
PGresult* exec_params(PGconn* c, const char* sql, std::initializer_list<std::string> params, ExecStatusType want,
                      std::string& err) {
  std::vector<const char*> values;
  for (const auto& p : params) values.push_back(p.c_str());
  PGresult* r = PQexecParams(c, sql, static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr, 0);
  if (r != nullptr && PQresultStatus(r) == want) return r;
  err = trim_message(r ? PQresultErrorMessage(r) : PQerrorMessage(c));
  PQclear(r);
  return nullptr;
}

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Whether table `name` is missing (to_regclass); nullopt when the question failed (err filled).
std::optional<bool> table_missing(PGconn* c, const std::string& name, std::string& err) {
  PGresult* r = exec_params(c, "SELECT to_regclass($1) IS NULL", {name}, PGRES_TUPLES_OK, err);
  if (!r) return std::nullopt;
  const bool missing = PQntuples(r) == 1 && std::string_view(PQgetvalue(r, 0, 0)) == "t";
  PQclear(r);
  return missing;
}

// Ends a transaction a failed statement left open (a no-op warning outside one).
void rollback(PGconn* c) { PQclear(PQexec(c, "ROLLBACK")); }

// This ledger's entry in tollgate_ledgers: shipped up to `last_id`.
bool record_ledger(PGconn* c, const std::string& uid, const std::string& instance, std::int64_t last_id,
                   std::string& err) {
  PGresult* r = exec_params(c, kLedgerUpsert, {uid, instance, std::to_string(last_id), std::to_string(unix_ms_now())},
                            PGRES_COMMAND_OK, err);
  const bool ok = r != nullptr;
  PQclear(r);
  return ok;
}

}  // namespace

pg_shipper::pg_shipper(pg_ship_options o) : opts_(std::move(o)) {
  opts_.batch_rows = std::max<std::size_t>(opts_.batch_rows, 1);
}

pg_shipper::~pg_shipper() {
  stop();
  delete impl_;
}

void pg_shipper::start() {
  if (impl_) return;
  auto I = std::make_unique<impl>();
  auto fail = [&](const std::string& why) {
    return std::runtime_error("ledger.postgres: cannot read the ledger '" + opts_.ledger_path + "': " + why);
  };
  int rc = sqlite3_open_v2(opts_.ledger_path.c_str(), &I->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) throw fail(I->db ? sqlite3_errmsg(I->db) : sqlite3_errstr(rc));
  sqlite3_busy_timeout(I->db, 5000);
  // The ledger file's identity, outside the versioned schema (as journal_replay): created once,
  // kept with the file, so a copy of the file ships as the same ledger and a new file as another.
  unsigned char raw[16];
  if (RAND_bytes(raw, sizeof raw) != 1) throw fail("no random bytes for its ledger_uid");
  char hex[33];
  for (int i = 0; i < 16; ++i) std::snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  const std::string create =
      "CREATE TABLE IF NOT EXISTS ledger_identity (id INTEGER PRIMARY KEY CHECK (id = 1), uid TEXT NOT NULL);"
      "INSERT OR IGNORE INTO ledger_identity (id, uid) VALUES (1, '" + std::string(hex) + "');";
  char* err = nullptr;
  if (sqlite3_exec(I->db, create.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string why = err ? err : sqlite3_errmsg(I->db);
    sqlite3_free(err);
    throw fail(why);
  }
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(I->db, "SELECT uid FROM ledger_identity WHERE id = 1", -1, &st, nullptr) != SQLITE_OK ||
      sqlite3_step(st) != SQLITE_ROW) {
    sqlite3_finalize(st);
    throw fail(sqlite3_errmsg(I->db));
  }
  uid_ = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  if (sqlite3_prepare_v2(I->db, kSelect, -1, &I->select, nullptr) != SQLITE_OK ||
      sqlite3_prepare_v2(I->db, "SELECT COALESCE(MAX(id), 0) FROM calls", -1, &I->max_id, nullptr) != SQLITE_OK)
    throw fail(sqlite3_errmsg(I->db));
  impl_ = I.release();
  thread_ = std::thread([this] { run(); });
}

void pg_shipper::stop() {
  if (!thread_.joinable()) return;
  // A last pass while PostgreSQL answers; while it is down, shutdown does not wait for it.
  if (stats().connected) (void)sync(opts_.stop_budget);
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    // A statement still running past the budget (a server that stopped answering, a table lock)
    // must not hold up shutdown: its socket is shut down under it, so libpq's wait ends with an
    // error at once; the open transaction rolls back on the server and the batch ships at the
    // next start. (Not PQcancel: it opens a connection of its own and can hang just the same.)
    // A connection attempt in progress ends within its connect_timeout.
    if (impl_ && impl_->sock >= 0) ::shutdown(impl_->sock, SHUT_RDWR);
  }
  cv_.notify_all();
  thread_.join();
  if (impl_) impl_->disconnect();
}

bool pg_shipper::sync(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  if (!thread_.joinable() || stopping_) return false;
  const std::uint64_t ticket = ++requested_;
  cv_.notify_all();
  return done_cv_.wait_for(lock, timeout, [&] { return served_ >= ticket || stopping_; }) && served_ >= ticket;
}

bool pg_shipper::pull_remote(std::string& err) {
  auto& I = *impl_;
  PGresult* r = exec_params(I.conn, "SELECT ledger_uid, last_id FROM tollgate_ledgers WHERE ledger_uid <> $1", {uid_},
                            PGRES_TUPLES_OK, err);
  if (!r) return false;
  std::vector<std::pair<std::string, std::int64_t>> ledgers;
  for (int i = 0; i < PQntuples(r); ++i) ledgers.emplace_back(PQgetvalue(r, i, 0), std::strtoll(PQgetvalue(r, i, 1), nullptr, 10));
  PQclear(r);
  double usd = 0;
  for (const auto& [uid, last] : ledgers) {
    const auto it = I.cursors.find(uid);
    const std::int64_t after = it == I.cursors.end() ? -1 : it->second;
    if (after >= last) continue;
    const std::int64_t now = unix_ms_now();
    const std::int64_t since = opts_.remote_since_ms ? opts_.remote_since_ms() : now;
    std::vector<remote_spend> rows;
    if (since < now) {
      PGresult* s = exec_params(I.conn, kRemoteSpend,
                                {uid, std::to_string(after), std::to_string(last), std::to_string(since),
                                 opts_.remote_by_user && opts_.remote_by_user() ? "true" : "false"},
                                PGRES_TUPLES_OK, err);
      if (!s) return false;
      rows.reserve(static_cast<std::size_t>(PQntuples(s)));
      for (int i = 0; i < PQntuples(s); ++i) {
        remote_spend& x = rows.emplace_back();
        x.client_key_id = PQgetvalue(s, i, 0);
        x.team = PQgetvalue(s, i, 1);
        x.price_model = PQgetvalue(s, i, 2);
        x.ts_ms = std::strtoll(PQgetvalue(s, i, 3), nullptr, 10);
        x.cost_usd = std::strtod(PQgetvalue(s, i, 4), nullptr);
        x.user = PQgetvalue(s, i, 5);
        usd += x.cost_usd;
      }
      PQclear(s);
    }
    if (!rows.empty()) opts_.on_remote_spend(rows);
    // Rate limits: the last minute of calls of the keys that have limits here.
    const auto keys = opts_.remote_rate_keys && opts_.on_remote_calls ? opts_.remote_rate_keys() : std::vector<std::string>{};
    const bool users = opts_.on_remote_calls && opts_.remote_rate_users && opts_.remote_rate_users();
    if (!keys.empty() || users) {
      PGresult* s = exec_params(I.conn, kRemoteCalls,
                                {uid, std::to_string(after), std::to_string(last), std::to_string(now - 60'000), text_array(keys),
                                 users ? "true" : "false"},
                                PGRES_TUPLES_OK, err);
      if (!s) return false;
      std::vector<remote_calls> calls;
      calls.reserve(static_cast<std::size_t>(PQntuples(s)));
      for (int i = 0; i < PQntuples(s); ++i) {
        remote_calls& x = calls.emplace_back();
        x.client_key_id = PQgetvalue(s, i, 0);
        x.ts_ms = std::strtoll(PQgetvalue(s, i, 1), nullptr, 10);
        x.calls = std::strtoll(PQgetvalue(s, i, 2), nullptr, 10);
        x.tokens = std::strtoll(PQgetvalue(s, i, 3), nullptr, 10);
        x.user = PQgetvalue(s, i, 4);
      }
      PQclear(s);
      if (!calls.empty()) opts_.on_remote_calls(calls);
    }
    I.cursors[uid] = last;
  }
  std::lock_guard lock(mu_);
  stats_.remote_spend_usd += usd;
  stats_.remote_ledgers = ledgers.size();
  return true;
}

pg_ship_stats pg_shipper::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void pg_shipper::run() {

  auto& I = *impl_;
  name_this_thread("tg-pg-ship");
  // Behind the I/O threads and the ledger writer when the CPUs are busy (Linux: per thread): a
  // saturated proxy lets the fleet table lag (tollgate_ledger_postgres_lag_rows) and it catches
  // up when load eases, rather than taking CPU from calls.
  ::setpriority(PRIO_PROCESS, 0, 10);
  auto backoff = std::chrono::milliseconds(500);
  bool was_failing = false;
  std::int64_t failures_logged = 0;
  auto last_failure_log = std::chrono::steady_clock::time_point{};

  auto note_error = [&](const std::string& err, bool connection) {
    {
      std::lock_guard lock(mu_);
      ++stats_.errors;
      stats_.last_error = err;
      if (connection) stats_.connected = false;
    }
    // The first failure, then at most one line a minute while it lasts.
    const auto now = std::chrono::steady_clock::now();
    if (!was_failing || now - last_failure_log >= 60s) {
      log_line(log_level::warn, "postgres fleet ledger: shipping failed; rows wait in the local ledger")
          .str("error", err)
          .integer("failures", failures_logged + 1);
      last_failure_log = now;
    }
    ++failures_logged;
    was_failing = true;
  };
  auto wait = [&](std::chrono::milliseconds d, std::uint64_t serving) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, d, [&] { return stopping_ || requested_ != serving; });
  };

  for (;;) {
    std::uint64_t serving = 0;
    {
      std::lock_guard lock(mu_);
      if (stopping_) break;
      serving = requested_;
    }
    // Rows of the local ledger past the last id known to be in PostgreSQL (all of them before the
    // first connection: what would be shipped).
    auto local_lag = [&]() -> std::int64_t {
      std::int64_t local_max = I.watermark;
      sqlite3_reset(I.max_id);
      if (sqlite3_step(I.max_id) == SQLITE_ROW) local_max = sqlite3_column_int64(I.max_id, 0);
      sqlite3_reset(I.max_id);
      return std::max<std::int64_t>(0, local_max - I.watermark);
    };
    // PostgreSQL refused or went away: count it, show what waits, back off.
    auto postgres_failed = [&](const std::string& why) {
      note_error(why, true);
      const std::int64_t lag = local_lag();
      {
        std::lock_guard lock(mu_);
        stats_.lag_rows = lag;
      }
      wait(backoff, serving);
      backoff = std::min(backoff * 2, opts_.max_backoff);
    };
    std::string err;
    if (!I.conn) {
      PGconn* c = connect_postgres(opts_.url, opts_.connect_timeout, "tollgate", "30000", err);
      bool ok = c != nullptr;
      if (ok) {
        // Create the table unless it exists (a role may use it without the right to create it);
        // the advisory lock keeps instances starting together from racing on CREATE.
        const auto missing = table_missing(c, "tollgate_calls", err);
        ok = missing.has_value();
        if (ok && *missing) {
          const std::string ddl = std::string("BEGIN; SELECT pg_advisory_xact_lock(7411962201); ") + kSchema + " COMMIT;";
          ok = exec(c, ddl.c_str(), PGRES_COMMAND_OK, err);
        }
      }
      // A table made by an older tollgate lacks the later columns: add them if this role may.
      bool later = false;
      if (ok) {
        PGresult* r = PQexec(c, kHasLater);
        ok = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
        if (ok) later = std::string_view(PQgetvalue(r, 0, 0)) == std::to_string(kLaterColumns);
        else err = trim_message(r ? PQresultErrorMessage(r) : PQerrorMessage(c));
        PQclear(r);
        if (ok && !later) {
          std::string why;
          later = exec(c, kAddLater, PGRES_COMMAND_OK, why);
          if (!later) {
            rollback(c);
            log_line(log_level::warn, "postgres fleet ledger: tollgate_calls lacks service_tier, "
                                      "web_search_requests or provider and they could not be added; rows are shipped without them")
                .str("error", why);
          }
        }
      }
      I.stmts = pg_statements(later);
      I.columns = later ? kColumns : kColumns - kLaterColumns;
      if (ok) ok = exec(c, I.stmts.create_stage.c_str(), PGRES_COMMAND_OK, err);
      std::int64_t resume = 0;
      if (ok) {
        PGresult* r = exec_params(c, "SELECT COALESCE(MAX(id), 0) FROM tollgate_calls WHERE ledger_uid = $1", {uid_},
                                  PGRES_TUPLES_OK, err);
        ok = r && PQntuples(r) == 1;
        if (ok) resume = std::strtoll(PQgetvalue(r, 0, 0), nullptr, 10);
        PQclear(r);
      }
      if (!ok) {
        if (c) PQfinish(c);
        postgres_failed("connect: " + err);
        continue;
      }
      // The ledgers table (fleet budgets): made if missing, this ledger's entry brought up to
      // date. A role that may not create or write it ships all the same, without fleet budgets.
      {
        std::string why;
        const auto missing = table_missing(c, "tollgate_ledgers", why);
        bool usable = missing.has_value();
        if (usable && *missing) usable = exec(c, kLedgersSchema, PGRES_COMMAND_OK, why);
        if (usable) usable = record_ledger(c, uid_, opts_.instance, resume, why);
        if (!usable) {
          rollback(c);
          log_line(log_level::warn, "postgres fleet ledger: table tollgate_ledgers cannot be created or written; "
                                    "rows are shipped, but budgets count this instance's spend only")
              .str("error", why);
        }
        I.ledgers = usable;
      }
      I.conn = c;
      I.watermark = resume;
      shipped_through_.store(resume, std::memory_order_relaxed);
      {
        std::lock_guard lock(mu_);
        I.sock = PQsocket(c);
        stats_.connected = true;
      }
      backoff = std::chrono::milliseconds(500);
      log_line(log_level::info, "postgres fleet ledger connected")
          .str("instance", opts_.instance)
          .str("ledger_uid", uid_)
          .integer("resume_after_id", resume);
    }

    // One pass: batches until the local ledger's end (or a failure).
    bool reached_end = false, pg_failed = false, local_failed = false;
    for (;;) {
      {
        std::lock_guard lock(mu_);
        if (stopping_) break;
      }
      sqlite3_reset(I.select);
      sqlite3_bind_int64(I.select, 1, I.watermark);
      sqlite3_bind_int64(I.select, 2, static_cast<sqlite3_int64>(opts_.batch_rows));
      I.buf.clear();
      std::size_t n = 0;
      std::int64_t last = I.watermark;
      int rc;
      while ((rc = sqlite3_step(I.select)) == SQLITE_ROW) {
        append_copy_text(I.buf, opts_.instance);
        I.buf += '\t';
        I.buf += uid_;
        for (int col = 0; col < I.columns; ++col) {
          I.buf += '\t';
          char num[32];
          switch (sqlite3_column_type(I.select, col)) {
            case SQLITE_NULL: I.buf += "\\N"; break;
            case SQLITE_INTEGER:
              std::snprintf(num, sizeof num, "%lld", static_cast<long long>(sqlite3_column_int64(I.select, col)));
              I.buf += num;
              break;
            case SQLITE_FLOAT:
              std::snprintf(num, sizeof num, "%.17g", sqlite3_column_double(I.select, col));
              I.buf += num;
              break;
            default:
              append_copy_text(I.buf, std::string_view(reinterpret_cast<const char*>(sqlite3_column_text(I.select, col)),
                                                       static_cast<std::size_t>(sqlite3_column_bytes(I.select, col))));
          }
        }
        I.buf += '\n';
        last = sqlite3_column_int64(I.select, 0);
        ++n;
      }
      sqlite3_reset(I.select);
      if (rc != SQLITE_DONE) {
        err = sqlite_error(I.db, "read");
        local_failed = true;
        break;
      }
      if (n == 0) {
        reached_end = true;
        break;
      }
      std::int64_t inserted = 0;
      bool ok = exec(I.conn, "BEGIN", PGRES_COMMAND_OK, err) &&
                exec(I.conn, I.stmts.copy_stage.c_str(), PGRES_COPY_IN, err);
      if (ok) {
        ok = PQputCopyData(I.conn, I.buf.data(), static_cast<int>(I.buf.size())) == 1 &&
             PQputCopyEnd(I.conn, nullptr) == 1;
        if (!ok) err = trim_message(PQerrorMessage(I.conn));
        // The COPY's own result, then the end of results.
        while (PGresult* r = PQgetResult(I.conn)) {
          if (ok && PQresultStatus(r) != PGRES_COMMAND_OK) {
            ok = false;
            err = trim_message(PQresultErrorMessage(r));
          }
          PQclear(r);
        }
      }
      if (ok) {
        PGresult* r = PQexec(I.conn, I.stmts.insert.c_str());
        ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
        if (ok) inserted = std::strtoll(PQcmdTuples(r), nullptr, 10);
        else err = trim_message(r ? PQresultErrorMessage(r) : PQerrorMessage(I.conn));
        PQclear(r);
      }
      if (ok && I.ledgers) ok = record_ledger(I.conn, uid_, opts_.instance, last, err);
      if (ok) ok = exec(I.conn, "COMMIT", PGRES_COMMAND_OK, err);
      if (!ok) {
        pg_failed = true;
        break;
      }
      I.watermark = last;
      shipped_through_.store(last, std::memory_order_relaxed);
      const std::int64_t lag = n < opts_.batch_rows ? -1 : local_lag();  // a catch-up shows its backlog
      {
        std::lock_guard lock(mu_);
        stats_.shipped_rows += static_cast<std::uint64_t>(inserted);
        stats_.connected = true;
        if (lag >= 0) stats_.lag_rows = lag;
      }
      if (n < opts_.batch_rows) {
        reached_end = true;
        break;
      }
    }

    if (pg_failed) {
      {
        std::lock_guard lock(mu_);
        I.sock = -1;
      }
      if (I.conn) PQfinish(I.conn);
      I.conn = nullptr;  // reconnects and re-reads the watermark: the failed batch ships again
      postgres_failed(err);
      continue;
    }
    if (local_failed) {
      note_error(err, false);
      wait(opts_.interval, serving);
      continue;
    }
    // Fleet budgets: the spend other ledgers shipped since the last look. A failure is counted
    // and retried at the next pass (the cursors move only past what was handed over). A pass with
    // no new local rows says nothing to PostgreSQL but this, so a connection the server dropped
    // (a restart) is found here: it is made again, with backoff, as for a failed batch; otherwise
    // an idle instance would never read the fleet's spend again.
    bool remote_failed = false;
    if (reached_end && I.ledgers && opts_.on_remote_spend && !pull_remote(err)) {
      if (PQstatus(I.conn) != CONNECTION_OK) {
        {
          std::lock_guard lock(mu_);
          I.sock = -1;
        }
        PQfinish(I.conn);
        I.conn = nullptr;
        postgres_failed("fleet spend: " + err);
        continue;
      }
      note_error("fleet spend: " + err, false);
      remote_failed = true;
    }
    if (reached_end) {
      const std::int64_t lag = local_lag();
      if (was_failing && !remote_failed)
        log_line(log_level::info, "postgres fleet ledger: shipping again").integer("resume_after_id", I.watermark);
      was_failing = remote_failed;  // a lasting failure logs once a minute
      {
        std::lock_guard lock(mu_);
        served_ = std::max(served_, serving);
        stats_.lag_rows = lag;
        stats_.last_success_unix = unix_now();
        stats_.last_error.clear();
      }
      done_cv_.notify_all();
      wait(opts_.interval, serving);
    }
  }
}

// ---- fleet alerts (pg_alert_claims) ----

namespace {

// Under the advisory lock the other fleet tables are made under: CREATE TABLE IF NOT EXISTS is
// not safe against itself (two instances starting together: one fails on pg_type's unique index,
// and an instance that cannot claim sends the fleet's alerts itself, so they went out twice).
constexpr const char* kAlertsSchema =
    "BEGIN; SELECT pg_advisory_xact_lock(7411962201); CREATE TABLE IF NOT EXISTS tollgate_alerts ("
    " dedupe_key TEXT PRIMARY KEY, instance TEXT NOT NULL, sent_ms BIGINT NOT NULL,"
    " delivered BOOLEAN NOT NULL DEFAULT TRUE); COMMIT;";
// A table made before leases lacks `delivered` (its rows count as delivered).
constexpr const char* kHasDelivered =
    "SELECT count(*) FROM pg_attribute WHERE attrelid = 'tollgate_alerts'::regclass"
    " AND attname = 'delivered' AND NOT attisdropped";
constexpr const char* kAddDelivered =
    "BEGIN; SELECT pg_advisory_xact_lock(7411962201); ALTER TABLE tollgate_alerts"
    " ADD COLUMN IF NOT EXISTS delivered BOOLEAN NOT NULL DEFAULT TRUE; COMMIT;";
// Takes the key when it is new, or when its last send is at least $4 ms old ($4 < 0: never), or
// when its claim was never confirmed and is at least $5 ms old (its sender stopped first).
// Concurrent claims of one key queue on its row lock; the second re-reads the row the first one
// wrote, finds it too recent, and returns no row.
constexpr const char* kAlertClaim =
    "INSERT INTO tollgate_alerts (dedupe_key, instance, sent_ms, delivered) VALUES ($1, $2, $3, false)"
    " ON CONFLICT (dedupe_key) DO UPDATE SET instance = EXCLUDED.instance, sent_ms = EXCLUDED.sent_ms,"
    " delivered = false"
    " WHERE ($4::bigint >= 0 AND tollgate_alerts.sent_ms <= EXCLUDED.sent_ms - $4::bigint)"
    " OR (NOT tollgate_alerts.delivered AND tollgate_alerts.sent_ms <= EXCLUDED.sent_ms - $5::bigint) RETURNING 1";
// The same without leases (a table this role may not add `delivered` to).
constexpr const char* kAlertClaimFinal =
    "INSERT INTO tollgate_alerts (dedupe_key, instance, sent_ms) VALUES ($1, $2, $3)"
    " ON CONFLICT (dedupe_key) DO UPDATE SET instance = EXCLUDED.instance, sent_ms = EXCLUDED.sent_ms"
    " WHERE $4::bigint >= 0 AND tollgate_alerts.sent_ms <= EXCLUDED.sent_ms - $4::bigint RETURNING 1";
constexpr const char* kAlertConfirm =
    "UPDATE tollgate_alerts SET delivered = true WHERE dedupe_key = $1 AND instance = $2";
constexpr const char* kAlertSteal =
    "UPDATE tollgate_alerts SET instance = $2, sent_ms = $3 WHERE dedupe_key = $1 AND NOT delivered"
    " AND sent_ms <= $3::bigint - $4::bigint RETURNING 1";
constexpr const char* kAlertState = "SELECT delivered FROM tollgate_alerts WHERE dedupe_key = $1";
// Claims older than the longest budget window (a month) are of windows that are over.
constexpr std::int64_t kAlertKeepMs = std::int64_t{40} * 86'400'000;

}  // namespace

std::string_view to_string(alert_claim c) noexcept {
  switch (c) {
    case alert_claim::claimed: return "claimed";
    case alert_claim::taken: return "taken";
    case alert_claim::unavailable: return "unavailable";
  }
  return "unavailable";
}

struct pg_alert_claims::impl {
  PGconn* conn = nullptr;
  std::chrono::steady_clock::time_point next_try{};
  bool failing = false;
  bool leases = false;  // the table has `delivered`
  ~impl() {
    if (conn) PQfinish(conn);
  }
};

pg_alert_claims::pg_alert_claims(pg_alert_claim_options o) : opts_(std::move(o)), impl_(new impl) {}
pg_alert_claims::~pg_alert_claims() { delete impl_; }

namespace {

// Runs `statement(conn, err)` (a PGresult* or null on failure) on the alert connection, made
// first if needed, again once on a fresh connection if the server had dropped the old one. null:
// PostgreSQL did not answer (the connection is dropped and not tried again for retry_after).
template <class Impl, class Statement>
PGresult* run_alert_statement(Impl& I, const pg_alert_claim_options& opts, std::int64_t now_ms, Statement statement) {
  auto failed = [&](const std::string& why) -> PGresult* {
    if (I.conn) PQfinish(I.conn);
    I.conn = nullptr;
    I.next_try = std::chrono::steady_clock::now() + opts.retry_after;
    if (!I.failing)
      log_line(log_level::warn, "postgres fleet alerts: cannot claim alerts; this instance sends the fleet's alerts it sees")
          .str("error", why);
    I.failing = true;
    return nullptr;
  };
  try {
    // Twice at most: a connection the server dropped since the last alert is made again at once.
    for (int attempt = 0; attempt < 2; ++attempt) {
      std::string err;
      const bool fresh = I.conn == nullptr;
      if (fresh) {
        if (std::chrono::steady_clock::now() < I.next_try) return nullptr;
        PGconn* c = connect_postgres(opts.url, opts.connect_timeout, "tollgate-alerts", "10000", err);
        bool ok = c != nullptr;
        // Statements end within 5 s: an alert thread held by a locked row would hold up budgets' alerts.
        if (ok) ok = exec(c, "SET statement_timeout = 5000", PGRES_COMMAND_OK, err);
        if (ok) {
          const auto missing = table_missing(c, "tollgate_alerts", err);
          ok = missing.has_value() && (!*missing || exec(c, kAlertsSchema, PGRES_COMMAND_OK, err));
        }
        if (ok) {  // a table made before leases: add `delivered` if this role may
          PGresult* r = PQexec(c, kHasDelivered);
          ok = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
          I.leases = ok && std::string_view(PQgetvalue(r, 0, 0)) == "1";
          if (!ok) err = trim_message(r ? PQresultErrorMessage(r) : PQerrorMessage(c));
          PQclear(r);
          if (ok && !I.leases) {
            std::string why;
            I.leases = exec(c, kAddDelivered, PGRES_COMMAND_OK, why);
            if (!I.leases) {
              rollback(c);
              log_line(log_level::warn, "postgres fleet alerts: tollgate_alerts lacks `delivered` and it could not be "
                                        "added; a claim is final even if its instance stops before sending")
                  .str("error", why);
            }
          }
        }
        if (ok) {
          PGresult* r = exec_params(c, "DELETE FROM tollgate_alerts WHERE sent_ms < $1",
                                    {std::to_string(now_ms - kAlertKeepMs)}, PGRES_COMMAND_OK, err);
          ok = r != nullptr;
          PQclear(r);
        }
        if (!ok) {
          if (c) PQfinish(c);
          return failed("connect: " + err);
        }
        I.conn = c;
        if (I.failing) log_line(log_level::info, "postgres fleet alerts: claiming alerts again");
        I.failing = false;
      }
      if (PGresult* r = statement(I.conn, err)) return r;
      const bool dropped = PQstatus(I.conn) != CONNECTION_OK;
      if (!dropped || fresh) return failed(err);
      PQfinish(I.conn);
      I.conn = nullptr;
    }
    return failed("connection lost");
  } catch (const std::exception& e) {
    return failed(e.what());
  }
}

}  // namespace

alert_claim pg_alert_claims::claim(const std::string& key, std::int64_t now_ms, std::int64_t cooldown_ms) noexcept {
  auto& I = *impl_;
  PGresult* r = run_alert_statement(I, opts_, now_ms, [&](PGconn* c, std::string& err) {
    return I.leases ? exec_params(c, kAlertClaim,
                                  {key, opts_.instance, std::to_string(now_ms), std::to_string(cooldown_ms),
                                   std::to_string(opts_.lease.count())},
                                  PGRES_TUPLES_OK, err)
                    : exec_params(c, kAlertClaimFinal,
                                  {key, opts_.instance, std::to_string(now_ms), std::to_string(cooldown_ms)},
                                  PGRES_TUPLES_OK, err);
  });
  if (r == nullptr) return alert_claim::unavailable;
  const bool won = PQntuples(r) == 1;
  PQclear(r);
  return won ? alert_claim::claimed : alert_claim::taken;
}

void pg_alert_claims::confirm(const std::string& key) noexcept {
  auto& I = *impl_;
  if (I.conn != nullptr && !I.leases) return;
  PQclear(run_alert_statement(I, opts_, 0, [&](PGconn* c, std::string& err) {
    return I.leases ? exec_params(c, kAlertConfirm, {key, opts_.instance}, PGRES_COMMAND_OK, err) : PQmakeEmptyPGresult(c, PGRES_COMMAND_OK);
  }));
}

alert_steal pg_alert_claims::steal(const std::string& key, std::int64_t now_ms) noexcept {
  auto& I = *impl_;
  bool stolen = false, leases = false;
  PGresult* r = run_alert_statement(I, opts_, now_ms, [&](PGconn* c, std::string& err) -> PGresult* {
    leases = I.leases;
    if (!leases) return PQmakeEmptyPGresult(c, PGRES_TUPLES_OK);
    PGresult* taken = exec_params(c, kAlertSteal, {key, opts_.instance, std::to_string(now_ms), std::to_string(opts_.lease.count())},
                                  PGRES_TUPLES_OK, err);
    if (taken == nullptr) return nullptr;
    stolen = PQntuples(taken) == 1;
    if (stolen) return taken;
    PQclear(taken);
    return exec_params(c, kAlertState, {key}, PGRES_TUPLES_OK, err);
  });
  if (r == nullptr || !leases) {
    PQclear(r);
    return alert_steal::unavailable;
  }
  // Not stolen: pending while the row is there and unconfirmed.
  const bool pending = !stolen && PQntuples(r) == 1 && std::string_view(PQgetvalue(r, 0, 0)) == "f";
  PQclear(r);
  return stolen ? alert_steal::stolen : pending ? alert_steal::pending : alert_steal::done;
}

}  // namespace tollgate
