// The fleet ledger: every row committed to this instance's SQLite ledger is copied, exactly once,
// into one PostgreSQL table that all instances of a fleet share (`tollgate_calls`), so finance
// and SRE query one place for the whole fleet.
//
// Why a shipper rather than a PostgreSQL writer on the hot path: the SQLite file on local disk
// stays the ledger of record (the I/O threads never wait on the network, a PostgreSQL outage
// costs no call and no row, budgets and reports keep working), and shipping in large COPY
// batches costs the database a fraction of one INSERT per call. The price is a lag of about
// `interval` behind the local ledger (tollgate_ledger_postgres_lag_rows).
//
// Exactly once: PostgreSQL's rows are keyed (ledger_uid, id), where ledger_uid is a random id the
// local ledger file keeps (table `ledger_identity`) and id is the row's id in `calls`. The shipper
// resumes after MAX(id) of its ledger_uid in PostgreSQL, so nothing is kept outside the two
// databases; a batch is one transaction, inserted ON CONFLICT DO NOTHING. A ledger file replaced
// by a new one gets a new ledger_uid and never collides with the old file's rows.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <functional>
#include <map>
#include <vector>

namespace tollgate {

// Spend of other instances of the fleet, read from the fleet table: one (key, team, price model,
// minute) group of their priced rows; ts_ms is the group's latest call start.
struct remote_spend {
  std::string client_key_id, team, price_model;
  double cost_usd = 0;
  std::int64_t ts_ms = 0;
  std::string user;  // the end user, when remote_by_user() ("" none)
};

// Calls of a rate-limited key (or end user) that other instances of the fleet made: one (key,
// user, second) group of their rows that count against RPM/TPM (as at warm start); ts_ms is the
// group's latest call start.
struct remote_calls {
  std::string client_key_id;  // "" when the key has no limits here
  std::int64_t calls = 0, tokens = 0;
  std::int64_t ts_ms = 0;
  std::string user;  // the end user, when remote_rate_users() ("" none)
};

struct pg_ship_options {
  std::string url;          // libpq URI (postgresql://user:pass@host:5432/db) or key=value conninfo
  std::string instance;     // this fleet member's name (column `instance`)
  std::string ledger_path;  // the SQLite ledger to read
  std::size_t batch_rows = 5000;
  std::chrono::milliseconds interval{1000};       // looks for new rows this often
  std::chrono::seconds connect_timeout{5};        // unless the url sets connect_timeout
  std::chrono::milliseconds stop_budget{5000};    // the last pass at stop() gets this long
  std::chrono::milliseconds max_backoff{30'000};  // between reconnection attempts
  // Fleet budgets: after each pass, the rows other ledgers shipped since the last look (found
  // through table tollgate_ledgers, where every shipper records how far it has shipped), summed
  // per key, team, price model and minute, go to on_remote_spend (the shipping thread calls it).
  // A ledger seen for the first time is read from remote_since_ms() on (the oldest budget or
  // guard window; nothing is read when it returns a time not in the past). Unset: no remote pass.
  std::function<void(const std::vector<remote_spend>&)> on_remote_spend;
  std::function<std::int64_t()> remote_since_ms;
  // True: the rows are summed per end user too (budgets and guards scoped by end user).
  std::function<bool()> remote_by_user;
  // Fleet rate limits: in the same pass, the other ledgers' calls of the keys remote_rate_keys()
  // names (those with limits; none: no query), of the last minute, summed per key and second.
  std::function<void(const std::vector<remote_calls>&)> on_remote_calls;
  std::function<std::vector<std::string>()> remote_rate_keys;
  // True: end users have rate limits here, so every end user's calls are read too, per user.
  std::function<bool()> remote_rate_users;
};

struct pg_ship_stats {
  std::uint64_t shipped_rows = 0;  // rows this process inserted into PostgreSQL
  std::uint64_t errors = 0;        // failed connections, transactions or ledger reads
  std::int64_t lag_rows = -1;      // local rows past the last id known in PostgreSQL (-1: not looked yet)
  bool connected = false;          // the last PostgreSQL exchange worked
  double last_success_unix = 0;    // end of the last pass that reached the local ledger's end
  std::string last_error;          // "" after a success
  double remote_spend_usd = 0;     // other instances' spend handed to on_remote_spend
  std::size_t remote_ledgers = 0;  // other ledgers in tollgate_ledgers at the last look
};

// Throws std::invalid_argument with libpq's reason when `url` is not a connection string libpq
// accepts (a config error at start-up rather than a retry loop).
void check_postgres_url(const std::string& url);

// One field in PostgreSQL's COPY text format: backslash, tab, newline and carriage return
// escaped (pure; exposed for tests).
void append_copy_text(std::string& out, std::string_view field);

class pg_shipper {
 public:
  explicit pg_shipper(pg_ship_options o);
  ~pg_shipper();  // stop()
  pg_shipper(const pg_shipper&) = delete;
  pg_shipper& operator=(const pg_shipper&) = delete;

  // Reads (or creates) the local ledger's ledger_uid and starts the shipping thread. Throws
  // std::runtime_error when the ledger file cannot be opened; PostgreSQL being down is not an
  // error here: the thread retries with backoff, and rows wait in the local ledger.
  void start();
  // Ships what the local ledger holds, for at most stop_budget (the rest goes at the next
  // start), then ends the thread. Idempotent.
  void stop();
  // Wakes the thread and waits until every row committed to the local ledger before this call
  // is in PostgreSQL. false on timeout (PostgreSQL down). Tests and admin; never I/O threads.
  bool sync(std::chrono::milliseconds timeout);

  pg_ship_stats stats() const;
  // The largest id of the local ledger known to be in PostgreSQL (0 before the first
  // connection): the ledger's retention deletes no row above it. Any thread.
  std::int64_t shipped_through() const noexcept { return shipped_through_.load(std::memory_order_relaxed); }

 private:
  struct impl;
  void run();
  bool pull_remote(std::string& err);  // the shipping thread's remote pass (on_remote_spend)
  pg_ship_options opts_;
  std::string uid_;
  impl* impl_ = nullptr;  // libpq and SQLite handles (kept out of this header)
  mutable std::mutex mu_;
  std::condition_variable cv_;       // wakes the thread (sync, stop)
  std::condition_variable done_cv_;  // a pass reached the end of the local ledger
  bool stopping_ = false;
  std::uint64_t requested_ = 0;  // sync() calls so far
  std::uint64_t served_ = 0;     // requests covered by a pass that reached the ledger's end
  pg_ship_stats stats_;
  std::atomic<std::int64_t> shipped_through_{0};
  std::thread thread_;
};


// Fleet alerts: one instance of a fleet sends an alert that every instance sees (a soft threshold
// or a guard trip raised by the fleet's shared spend), not N. Before an instance hands such an
// alert to its webhooks it claims the alert's dedupe key in the shared table `tollgate_alerts`
// (dedupe_key primary key, instance, sent_ms), in one statement: an INSERT ... ON CONFLICT DO
// UPDATE that only takes the row when its last send is older than the cooldown. PostgreSQL
// serialises concurrent claims of one key (the second waits on the row lock, then sees the first
// one's sent_ms), so exactly one instance wins. When PostgreSQL cannot answer, the alert is sent
// anyway: a duplicate alert beats a fleet that stays silent.
// A claim is a lease until its sender confirms the delivery (column `delivered`): an instance that
// claimed an alert and stopped before a webhook took it (a restart, a crash, a webhook being
// retried) would otherwise have silenced it for the whole fleet. A claim left unconfirmed for
// `lease` is taken over by an instance that saw the alert (steal()), which sends it.
enum class alert_claim : std::uint8_t {
  claimed,      // this instance sends it
  taken,        // another instance (or this one) sent it within the cooldown: not sent again
  unavailable,  // PostgreSQL did not answer (or is being waited out): sent locally
};
std::string_view to_string(alert_claim c) noexcept;

struct pg_alert_claim_options {
  std::string url;       // as pg_ship_options::url
  std::string instance;  // recorded with the claim
  std::chrono::seconds connect_timeout{2};      // unless the url sets connect_timeout
  std::chrono::milliseconds retry_after{30'000};  // no new connection attempt sooner after a failure
  std::chrono::milliseconds lease{120'000};       // an unconfirmed claim older than this is taken over
};

enum class alert_steal : std::uint8_t {
  stolen,       // the claim was left unconfirmed past its lease: this instance sends the alert now
  done,         // delivered (or no longer held): nothing to do
  pending,      // claimed and not confirmed yet, within its lease: ask again later
  unavailable,  // PostgreSQL did not answer, or the table has no `delivered` column (a role that
                // may not add it: claims are then final, as before leases)
};

// One libpq connection, used by one thread (the alert thread); made on first use.
class pg_alert_claims {
 public:
  explicit pg_alert_claims(pg_alert_claim_options o);
  ~pg_alert_claims();
  pg_alert_claims(const pg_alert_claims&) = delete;
  pg_alert_claims& operator=(const pg_alert_claims&) = delete;
  // Claims `key` at now_ms: claimed when no instance sent it within cooldown_ms (cooldown_ms < 0:
  // ever, for alerts that belong to one budget window and carry it in their key). Never throws.
  alert_claim claim(const std::string& key, std::int64_t now_ms, std::int64_t cooldown_ms) noexcept;
  // This instance's claim of `key` was delivered (a webhook took it). Best effort; never throws.
  void confirm(const std::string& key) noexcept;
  // Takes over the claim of `key` if it is unconfirmed and older than the lease (its sender
  // stopped); else says whether it is done or still pending. Never throws.
  alert_steal steal(const std::string& key, std::int64_t now_ms) noexcept;

 private:
  struct impl;
  pg_alert_claim_options opts_;
  impl* impl_;
};

}  // namespace tollgate
