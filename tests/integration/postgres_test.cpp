// The fleet ledger (ledger.postgres) against a real PostgreSQL server that the test starts itself
// (initdb + pg_ctl into a temp dir, 127.0.0.1 on a free port): every ledgered call lands in
// tollgate_calls exactly once with the same figures, through PostgreSQL being down at start,
// restarted mid-run and tollgate itself restarting; two instances share one table.
#include <catch2/catch.hpp>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>

#include "core/policy.hpp"
#include "ledger/postgres.hpp"
#include "ledger/report_cli.hpp"
#include "support.hpp"

namespace {

// A port free now, for a server started later. Not the kernel's next ephemeral port (bind to 0):
// tests run in parallel (ctest -j2) get the same few ports back from it, so a server whose URL
// was configured before it started could find its port taken by another test's server, and its
// tollgate talking to that one. A random port below the ephemeral range makes that unlikely.
std::uint16_t free_port() {
  static std::mt19937 rng{std::random_device{}()};
  for (int attempt = 0; attempt < 64; ++attempt) {
    const auto port = static_cast<std::uint16_t>(std::uniform_int_distribution<int>(20000, 32000)(rng));
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    if (ok) return port;
  }
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A throwaway PostgreSQL cluster. PostgreSQL refuses to run as root, so under root (CI) the
// server runs as the `postgres` account the Debian package creates.
class pg_server {
 public:
  pg_server() {
    as_ = ::geteuid() == 0 ? "runuser -u postgres -- " : "";
    if (::geteuid() == 0) {
      passwd* pw = ::getpwnam("postgres");
      REQUIRE(pw != nullptr);
      REQUIRE(::chown(dir_.path.c_str(), pw->pw_uid, pw->pw_gid) == 0);
    }
    run(std::string(TOLLGATE_PG_BINDIR) + "/initdb -D " + shell_quote(data()) +
        " -U tollgate --auth=trust -E UTF8 --no-sync --no-instructions");
    port_ = free_port();
  }
  ~pg_server() { stop(); }

  // Starts on port() (a new free port when it was taken meanwhile by a parallel test).
  void start() {
    for (int attempt = 0; attempt < 5; ++attempt) {
      const std::string opts = "-k " + dir_.path + " -h 127.0.0.1 -p " + std::to_string(port_) + " -F";
      if (run_status(std::string(TOLLGATE_PG_BINDIR) + "/pg_ctl -D " + shell_quote(data()) + " -o " +
                     shell_quote(opts) + " -l " + shell_quote(dir_.path + "/server.log") + " -t 30 -w start") == 0) {
        running_ = true;
        return;
      }
      port_ = free_port();
    }
    FAIL("PostgreSQL did not start: " << read_file(dir_.path + "/server.log"));
  }
  void stop() {
    if (!running_) return;
    run_status(std::string(TOLLGATE_PG_BINDIR) + "/pg_ctl -D " + shell_quote(data()) + " -m fast -t 30 -w stop");
    running_ = false;
  }
  std::uint16_t port() const { return port_; }
  std::string url() const { return "postgresql://tollgate@127.0.0.1:" + std::to_string(port_) + "/postgres"; }

  // Rows of a query as tab-joined lines (NULL as \N), in the query's order.
  std::vector<std::string> query(const std::string& sql) const {
    PGconn* c = PQconnectdb(url().c_str());
    std::vector<std::string> out;
    if (PQstatus(c) != CONNECTION_OK) {
      const std::string err = PQerrorMessage(c);
      PQfinish(c);
      FAIL("connect: " << err);
    }
    PGresult* r = PQexec(c, sql.c_str());
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
      const std::string err = PQresultErrorMessage(r);
      PQclear(r);
      PQfinish(c);
      FAIL(sql << ": " << err);
    }
    for (int i = 0; i < PQntuples(r); ++i) {
      std::string line;
      for (int j = 0; j < PQnfields(r); ++j) {
        if (j) line += '\t';
        line += PQgetisnull(r, i, j) ? std::string("\\N") : std::string(PQgetvalue(r, i, j));
      }
      out.push_back(line);
    }
    PQclear(r);
    PQfinish(c);
    return out;
  }
  std::int64_t count(const std::string& where = "true") const {
    // The table appears at tollgate's first connection.
    auto exists = query("SELECT to_regclass('tollgate_calls') IS NOT NULL");
    if (exists.at(0) != "t") return 0;
    return std::stoll(query("SELECT count(*) FROM tollgate_calls WHERE " + where).at(0));
  }

 private:
  std::string data() const { return dir_.path + "/data"; }
  int run_status(const std::string& cmd) const {
    return std::system((as_ + cmd + " >>" + shell_quote(dir_.path + "/commands.log") + " 2>&1").c_str());
  }
  void run(const std::string& cmd) const {
    if (run_status(cmd) != 0) FAIL(cmd << " failed: " << read_file(dir_.path + "/commands.log"));
  }

  tt::temp_dir dir_;
  std::string as_;
  std::uint16_t port_ = 0;
  bool running_ = false;
};

std::function<void(tollgate::config&)> fleet(const pg_server& pg, const std::string& instance,
                                             const std::string& ledger = {}) {
  return [url = pg.url(), instance, ledger](tollgate::config& c) {
    c.ledger_postgres.url = url;
    c.ledger_postgres.instance = instance;
    c.ledger_postgres.interval = std::chrono::milliseconds(20);
    if (!ledger.empty()) c.ledger_path = ledger;
  };
}

// fleet(pg, instance) with the admin API on, answering `token`.
std::function<void(tollgate::config&)> fleet_admin(const pg_server& pg, const std::string& instance, const std::string& token) {
  return [edge = fleet(pg, instance), token](tollgate::config& c) {
    edge(c);
    c.policy.admin_token = token;
  };
}

// A history row's cost, varied by row: sums of such costs depend on the order of adding.
constexpr const char* kVariedCost = "c.cost_usd * (1 + (n.i % 13) / 7.0) + 1e-7 * (n.i % 5)";

void calls(tt::harness& h, int n, const std::string& model = "gpt-4.1") {
  for (int i = 0; i < n; ++i) {
    auto r = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body(model, i % 2 == 1));
    REQUIRE(r.status == 200);
  }
  h.flush();
}

}  // namespace

TEST_CASE("every ledgered call reaches the fleet table once, with the local ledger's figures") {
  pg_server pg;
  pg.start();
  tt::harness h({.tweak = fleet(pg, "edge-1")});
  calls(h, 6, "gpt-4.1");
  calls(h, 4, "claude-sonnet-4-5");
  // Awkward text survives COPY: tab, newline, backslash, quotes and non-ASCII in the user id.
  auto r = tt::post_json(h.port(), "/v1/chat/completions",
                         tt::chat_body("gpt-4.1-mini", false, R"(,"user":"tab\there\nnew \\ \"q\" é✓")"));
  REQUIRE(r.status == 200);
  // An upstream error is a ledger row too.
  auto bad = tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1"), {{"x-fake-status", "500"}});
  REQUIRE(bad.status == 500);
  h.flush();
  const auto local = h.query_int("SELECT count(*) FROM calls");
  REQUIRE(local == 12);
  REQUIRE(tt::harness::eventually([&] { return pg.count() == local; }));

  // Row by row, the columns finance and SRE query are the local ledger's.
  const auto pg_rows = pg.query(
      "SELECT request_id, instance, route, requested_model, price_model, status, stream, prompt_tokens, "
      "completion_tokens, cached_tokens, reasoning_tokens, priced, cost_usd, \"user\", start_ms "
      "FROM tollgate_calls ORDER BY id");
  const auto sqlite_rows = h.rows(
      "SELECT request_id, route, requested_model, price_model, status, stream, prompt_tokens, completion_tokens, "
      "cached_tokens, reasoning_tokens, priced, cost_usd, user, start_ms FROM calls ORDER BY id");
  REQUIRE(pg_rows.size() == sqlite_rows.size());
  for (std::size_t i = 0; i < pg_rows.size(); ++i) {
    const auto& s = sqlite_rows[i];
    auto nul = [&](const char* k) { return s.at(k) == "<null>" ? std::string("\\N") : s.at(k); };
    const std::string expect = s.at("request_id") + "\tedge-1\t" + s.at("route") + "\t" + nul("requested_model") +
                               "\t" + nul("price_model") + "\t" + s.at("status") + "\t" + s.at("stream") + "\t" +
                               s.at("prompt_tokens") + "\t" + s.at("completion_tokens") + "\t" +
                               s.at("cached_tokens") + "\t" + s.at("reasoning_tokens") + "\t" + s.at("priced");
    INFO("row " << i << ": " << pg_rows[i]);
    CHECK(pg_rows[i].rfind(expect + "\t", 0) == 0);
  }
  // Cost and user compared as values (PostgreSQL prints doubles its own way).
  CHECK(std::stod(pg.query("SELECT sum(cost_usd) FROM tollgate_calls").at(0)) ==
        Approx(h.query_double("SELECT sum(cost_usd) FROM calls")).epsilon(1e-12));
  CHECK(std::stod(pg.query("SELECT sum(cost_usd) FROM tollgate_calls").at(0)) > 0);
  CHECK(pg.query("SELECT \"user\" FROM tollgate_calls WHERE requested_model = 'gpt-4.1-mini'").at(0) ==
        "tab\there\nnew \\ \"q\" é✓");
  CHECK(pg.count("status = 500") == 1);
  CHECK(pg.count("start_ms = 0") == 0);
  CHECK(pg.query("SELECT count(DISTINCT ledger_uid) FROM tollgate_calls").at(0) == "1");

  REQUIRE(tt::harness::eventually([&] {
    return h.metric_sum("tollgate_ledger_postgres_shipped_rows_total") == 12 &&
           h.metric_sum("tollgate_ledger_postgres_lag_rows") == 0;
  }));
  CHECK(h.metric_sum("tollgate_ledger_postgres_up") == 1);
  CHECK(h.metric_sum("tollgate_ledger_postgres_errors_total") == 0);
  CHECK(h.metric_sum("tollgate_ledger_postgres_last_success_timestamp_seconds") > 1.7e9);
}

TEST_CASE("PostgreSQL down at start, restarted mid-run, and tollgate restarted: every row once") {
  pg_server pg;  // not started yet
  tt::temp_dir keep;
  const std::string ledger = keep.path + "/ledger.db";
  {
    tt::harness h({.tweak = fleet(pg, "edge-2", ledger)});
    calls(h, 5);  // served while PostgreSQL is down
    REQUIRE(tt::harness::eventually([&] {
      return h.metric_sum("tollgate_ledger_postgres_errors_total") >= 1 &&
             h.metric_sum("tollgate_ledger_postgres_lag_rows") == 5;
    }));
    CHECK(h.metric_sum("tollgate_ledger_postgres_up") == 0);

    pg.start();  // the shipper's backoff starts at 500 ms
    REQUIRE(tt::harness::eventually([&] { return pg.count() == 5; }, std::chrono::seconds(20)));
    REQUIRE(tt::harness::eventually([&] { return h.metric_sum("tollgate_ledger_postgres_up") == 1; }));

    pg.stop();
    calls(h, 3);
    pg.start();
    REQUIRE(tt::harness::eventually([&] { return pg.count() == 8; }, std::chrono::seconds(40)));
    calls(h, 2);
    REQUIRE(tt::harness::eventually([&] { return pg.count() == 10; }));
  }
  // tollgate restarts on the same ledger: it resumes after the last id in PostgreSQL.
  {
    tt::harness h({.tweak = fleet(pg, "edge-2", ledger)});
    calls(h, 4);
    REQUIRE(h.query_int("SELECT count(*) FROM calls") == 14);
    REQUIRE(tt::harness::eventually([&] { return pg.count() == 14; }));
    REQUIRE(tt::harness::eventually([&] { return h.metric_sum("tollgate_ledger_postgres_lag_rows") == 0; }));
    CHECK(h.metric_sum("tollgate_ledger_postgres_shipped_rows_total") == 4);
  }
  CHECK(pg.query("SELECT count(DISTINCT id), min(id), max(id) FROM tollgate_calls").at(0) == "14\t1\t14");
}

TEST_CASE("a fleet: two instances, one table, each row under its instance") {
  pg_server pg;
  pg.start();
  tt::harness a({.tweak = fleet(pg, "edge-a")});
  tt::harness b({.tweak = fleet(pg, "edge-b")});
  calls(a, 3);
  calls(b, 5);
  calls(a, 1);
  REQUIRE(tt::harness::eventually([&] { return pg.count() == 9; }));
  CHECK(pg.query("SELECT instance, count(*) FROM tollgate_calls GROUP BY 1 ORDER BY 1") ==
        std::vector<std::string>{"edge-a\t4", "edge-b\t5"});
  // Ids repeat across instances; (ledger_uid, id) tells the rows apart.
  CHECK(pg.query("SELECT count(DISTINCT ledger_uid) FROM tollgate_calls").at(0) == "2");
  CHECK(pg.count("id = 1") == 2);
}

TEST_CASE("fleet budgets: the other instances' spend counts, at start and as it ships") {
  pg_server pg;
  pg.start();
  constexpr double limit = 0.002;
  auto budgeted = [&](const std::string& instance, bool fleet_budgets) {
    return [=, base = fleet(pg, instance)](tollgate::config& c) {
      base(c);
      c.ledger_postgres.fleet_budgets = fleet_budgets;
      c.policy.budgets = {tt::hard_daily_budget(limit)};
    };
  };
  const std::string body = tt::chat_body("gpt-4.1", false, R"(,"max_tokens":100)");
  tt::harness a({.tweak = budgeted("edge-a", true)});
  // B starts before A spends: it reads A's rows as A ships them.
  tt::harness b({.tweak = budgeted("edge-b", true)});
  int accepted = 0;
  for (int i = 0; i < 100; ++i) {
    auto r = tt::post_json(a.port(), "/v1/chat/completions", body);
    if (r.status != 200) {
      CHECK(r.status == 429);
      break;
    }
    ++accepted;
  }
  REQUIRE(accepted > 1);
  a.flush();
  const double spent = a.query_double("SELECT sum(cost_usd) FROM calls");
  // A's rows reach PostgreSQL and B's budget: B refuses a call it alone never paid for.
  REQUIRE(tt::harness::eventually([&] {
    return b.metric_sum("tollgate_budget_spent_usd", "scope=\"global\"") == Approx(spent).epsilon(1e-9);
  }));
  auto refused = tt::post_json(b.port(), "/v1/chat/completions", body);
  CHECK(refused.status == 429);
  CHECK(refused.body.find("budget_exceeded") != std::string::npos);
  CHECK(b.metric_sum("tollgate_ledger_postgres_remote_spend_usd_total") == Approx(spent).epsilon(1e-9));
  CHECK(b.metric_sum("tollgate_ledger_postgres_remote_ledgers") == 1);
  // C starts after: its first look reads A's rows of the budget's day (B's refusal cost nothing).
  tt::harness c({.tweak = budgeted("edge-c", true)});
  REQUIRE(tt::harness::eventually([&] {
    return c.metric_sum("tollgate_budget_spent_usd", "scope=\"global\"") == Approx(spent).epsilon(1e-9);
  }));
  CHECK(tt::post_json(c.port(), "/v1/chat/completions", body).status == 429);
  // An instance with fleet_budgets off counts its own calls only.
  tt::harness d({.tweak = budgeted("edge-d", false)});
  CHECK(tt::post_json(d.port(), "/v1/chat/completions", body).status == 200);
  // Each ledger records how far it has shipped.
  b.flush();
  REQUIRE(tt::harness::eventually([&] { return pg.count("instance = 'edge-b'") == 1; }));
  const auto ledgers = pg.query("SELECT instance, last_id FROM tollgate_ledgers ORDER BY instance");
  REQUIRE(ledgers.size() >= 3);
  CHECK(ledgers[0] == "edge-a\t" + std::to_string(accepted + 1));
  CHECK(ledgers[1] == "edge-b\t1");
}

TEST_CASE("fleet budgets: an end user's spend on one instance holds their user:* budget on the others") {
  pg_server pg;
  pg.start();
  constexpr double limit = 0.002;
  auto budgeted = [&](const std::string& instance) {
    return [=, base = fleet(pg, instance)](tollgate::config& c) {
      base(c);
      auto b = tt::hard_daily_budget(limit);
      b.scope = "user:*";
      c.policy.budgets = {b};
    };
  };
  const auto body = [](const std::string& user) {
    return tt::chat_body("gpt-4.1", false, R"(,"max_tokens":100,"user":")" + user + "\"");
  };
  tt::harness a({.tweak = budgeted("edge-a")});
  tt::harness b({.tweak = budgeted("edge-b")});
  int accepted = 0;
  for (int i = 0; i < 100 && tt::post_json(a.port(), "/v1/chat/completions", body("alice")).status == 200; ++i) ++accepted;
  REQUIRE(accepted > 1);
  a.flush();
  const double spent = a.query_double("SELECT sum(cost_usd) FROM calls");
  // A's rows reach B per end user: B holds alice to what she spent on A, and nobody else.
  REQUIRE(tt::harness::eventually([&] {
    return b.metric_sum("tollgate_budget_spent_usd", "scope=\"user:*\"") == Approx(spent).epsilon(1e-9);
  }));
  auto refused = tt::post_json(b.port(), "/v1/chat/completions", body("alice"));
  CHECK(refused.status == 429);
  CHECK(refused.body.find("user:alice") != std::string::npos);
  CHECK(tt::post_json(b.port(), "/v1/chat/completions", body("bob")).status == 200);
  // An instance started later reads her spend of the day at its first look.
  tt::harness c({.tweak = budgeted("edge-c")});
  REQUIRE(tt::harness::eventually([&] {
    return c.metric_sum("tollgate_budget_spent_usd", "scope=\"user:*\"") == Approx(spent).epsilon(1e-9);
  }));
  CHECK(tt::post_json(c.port(), "/v1/chat/completions", body("alice")).status == 429);
  CHECK(tt::post_json(c.port(), "/v1/chat/completions", body("carol")).status == 200);
}

TEST_CASE("fleet budgets: an idle instance reads the fleet's spend again after PostgreSQL restarts") {
  pg_server pg;
  pg.start();
  auto budgeted = [&](const std::string& instance) {
    return [=, base = fleet(pg, instance)](tollgate::config& c) {
      base(c);
      c.policy.budgets = {tt::hard_daily_budget(1.0)};
    };
  };
  tt::harness a({.tweak = budgeted("edge-a")});
  tt::harness b({.tweak = budgeted("edge-b")});  // serves no call: its only PostgreSQL traffic is the fleet look
  calls(a, 2);
  const double first = a.query_double("SELECT sum(cost_usd) FROM calls");
  REQUIRE(tt::harness::eventually([&] {
    return b.metric_sum("tollgate_budget_spent_usd", "scope=\"global\"") == Approx(first).epsilon(1e-9);
  }));
  pg.stop();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // B's look fails on its dropped connection
  pg.start();
  calls(a, 3);
  const double all = a.query_double("SELECT sum(cost_usd) FROM calls");
  REQUIRE(tt::harness::eventually([&] {
    return b.metric_sum("tollgate_budget_spent_usd", "scope=\"global\"") == Approx(all).epsilon(1e-9);
  }, std::chrono::seconds(20)));
}

TEST_CASE("fleet rate limits: a key's calls through one instance count at the others") {
  pg_server pg;
  pg.start();
  auto limited = [&](const std::string& instance) {
    return [=, base = fleet(pg, instance)](tollgate::config& c) {
      base(c);
      c.policy.auth = tollgate::auth_mode::required;
      tollgate::client_key_config k;
      k.name = "batch";
      k.sha256 = tollgate::policy_engine::sha256("sk-batch-secret-1");
      k.limits.rpm = 4;
      c.policy.keys = {k};
    };
  };
  const tt::headers auth = {{"Authorization", "Bearer sk-batch-secret-1"}};
  tt::harness a({.tweak = limited("edge-a")});
  tt::harness b({.tweak = limited("edge-b")});
  for (int i = 0; i < 3; ++i)
    REQUIRE(tt::post_json(a.port(), "/v1/chat/completions", tt::chat_body(), auth).status == 200);
  a.flush();
  // B never served the key: once A's three calls ship, B has one request of the minute left.
  REQUIRE(tt::harness::eventually([&] { return pg.count("instance = 'edge-a'") == 3; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // B's next look (every 20 ms here)
  auto r = tt::post_json(b.port(), "/v1/chat/completions", tt::chat_body(), auth);
  REQUIRE(r.status == 200);
  CHECK(r.header("x-ratelimit-remaining-requests") == "0");
  auto refused = tt::post_json(b.port(), "/v1/chat/completions", tt::chat_body(), auth);
  CHECK(refused.status == 429);
  CHECK(refused.body.find("rate_limit_exceeded") != std::string::npos);
}

TEST_CASE("fleet rate limits: an end user's calls through one instance count at the others, with a limited key's") {
  pg_server pg;
  pg.start();
  auto limited = [&](const std::string& instance) {
    return [=, base = fleet(pg, instance)](tollgate::config& c) {
      base(c);
      c.policy.user_limits.rpm = 4;
      tollgate::client_key_config k;
      k.name = "batch";
      k.sha256 = tollgate::policy_engine::sha256("sk-batch-secret-1");
      k.limits.rpm = 5;
      c.policy.keys = {k};
    };
  };
  const auto chat = [](const std::string& user) {
    return tt::chat_body("gpt-4.1", false, R"(,"user":")" + user + "\"");
  };
  const tt::headers auth = {{"Authorization", "Bearer sk-batch-secret-1"}};
  tt::harness a({.tweak = limited("edge-a")});
  tt::harness b({.tweak = limited("edge-b")});
  for (int i = 0; i < 3; ++i) REQUIRE(tt::post_json(a.port(), "/v1/chat/completions", chat("alice")).status == 200);
  REQUIRE(tt::post_json(a.port(), "/v1/chat/completions", chat("bob"), auth).status == 200);  // a key's and a user's
  a.flush();
  // B never served alice: once A's calls ship, she has one request of the minute left there; the
  // key has four, bob three.
  REQUIRE(tt::harness::eventually([&] { return pg.count("instance = 'edge-a'") == 4; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // B's next look (every 20 ms here)
  auto r = tt::post_json(b.port(), "/v1/chat/completions", chat("alice"));
  REQUIRE(r.status == 200);
  CHECK(r.header("x-ratelimit-remaining-requests") == "0");
  auto refused = tt::post_json(b.port(), "/v1/chat/completions", chat("alice"));
  CHECK(refused.status == 429);
  CHECK(refused.body.find("user:alice") != std::string::npos);
  auto keyed = tt::post_json(b.port(), "/v1/chat/completions", chat("carol"), auth);
  REQUIRE(keyed.status == 200);
  CHECK(keyed.header("x-ratelimit-remaining-requests") == "3");  // the key's headers: A's call counted
  for (int i = 0; i < 3; ++i) CHECK(tt::post_json(b.port(), "/v1/chat/completions", chat("bob")).status == 200);
  CHECK(tt::post_json(b.port(), "/v1/chat/completions", chat("bob")).status == 429);
}

TEST_CASE("fleet alerts: a threshold and a guard trip the whole fleet sees are sent once, and without PostgreSQL by each") {
  using namespace std::chrono_literals;
  pg_server pg;
  pg.start();
  tt::webhook_receiver hook;  // the fleet's one alert channel
  auto alerting = [&](const std::string& instance, bool fleet_alerts) {
    return [=, base = fleet(pg, instance), url = hook.url()](tollgate::config& c) {
      base(c);
      c.ledger_postgres.fleet_alerts = fleet_alerts;
      c.forecast.enabled = false;  // no projected_overspend alert from a forecast refresh
      c.policy.budgets = {tt::soft_monthly_budget()};
      c.policy.spend_guards = {tt::reroute_guard()};  // one gpt-4.1 call trips it
      c.policy.webhooks = tt::webhook_to(url);
    };
  };
  auto of_kind = [&](const std::string& kind) {
    std::size_t n = 0;
    for (const auto& a : hook.received()) n += a.value("kind", "") == kind;
    return n;
  };
  tt::harness a({.tweak = alerting("edge-a", true)});
  tt::harness b({.tweak = alerting("edge-b", true)});
  for (int i = 0; i < 3; ++i) REQUIRE(tt::post_json(a.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1")).status == 200);
  a.flush();
  const double spent = a.query_double("SELECT sum(cost_usd) FROM calls");
  REQUIRE(spent > 0.00005);
  // Both instances see the threshold crossed and the guard tripped: A by its calls, B by A's rows.
  REQUIRE(tt::harness::eventually([&] {
    return b.metric_sum("tollgate_spend_guard_tripped", "scope=\"global\"") == 1 &&
           b.metric_sum("tollgate_budget_spent_usd", "scope=\"global\"") == Approx(spent).epsilon(1e-9);
  }));
  // B's alert thread claims within a second or two of B counting the spend.
  REQUIRE(tt::harness::eventually([&] {
    return a.metric_sum("tollgate_alerts_fleet_claims_total") + b.metric_sum("tollgate_alerts_fleet_claims_total") >= 4;
  }, 15s));
  std::this_thread::sleep_for(1500ms);  // a duplicate, if any, would have left by now
  CHECK(of_kind("soft_threshold") == 1);
  CHECK(of_kind("spend_guard") == 1);
  // Whichever instance's alert thread comes first claims an alert (usually A, which saw the
  // calls first; B, which saw them through PostgreSQL, when A's thread was slower); the other
  // finds it taken and sends nothing.
  const auto both = [&](const std::string& name, const std::string& filter) {
    return a.metric_sum(name, filter) + b.metric_sum(name, filter);
  };
  CHECK(both("tollgate_alerts_fleet_claims_total", "outcome=\"claimed\"") == 2);
  CHECK(both("tollgate_alerts_fleet_claims_total", "outcome=\"taken\"") == 2);
  CHECK(both("tollgate_alerts_total", "outcome=\"sent\"") == 2);
  for (auto* h : {&a, &b})
    CHECK(h->metric_sum("tollgate_alerts_fleet_claims_total", "outcome=\"claimed\"") ==
          h->metric_sum("tollgate_alerts_total", "outcome=\"sent\""));
  const auto claims = pg.query("SELECT dedupe_key, instance FROM tollgate_alerts ORDER BY dedupe_key");
  REQUIRE(claims.size() == 2);
  CHECK(claims[0].rfind("soft_threshold|global|month|500|", 0) == 0);
  CHECK(claims[1].rfind("spend_guard|global|1h\t", 0) == 0);
  for (const auto& row : claims) {
    const std::string instance = row.substr(row.find('\t') + 1);
    CHECK((instance == "edge-a" || instance == "edge-b"));
  }
  // Each claim is confirmed once its webhook took the alert (a claim is a lease until then).
  CHECK(tt::harness::eventually([&] { return pg.query("SELECT count(*) FROM tollgate_alerts WHERE delivered") == std::vector<std::string>{"2"}; }));

  SECTION("with fleet_alerts off, an instance sends what it sees") {
    tt::harness d({.tweak = alerting("edge-d", false)});
    REQUIRE(tt::harness::eventually([&] { return of_kind("soft_threshold") == 2 && of_kind("spend_guard") == 2; }, 15s));
    CHECK(d.metric_sum("tollgate_alerts_fleet_claims_total") == 0);
  }
  SECTION("PostgreSQL down: an instance that cannot claim sends the alert itself") {
    pg.stop();
    // A fresh ledger: a new instance whose own calls cross the threshold while PostgreSQL is down.
    tt::harness e({.tweak = alerting("edge-e", true)});
    for (int i = 0; i < 3; ++i) REQUIRE(tt::post_json(e.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1")).status == 200);
    REQUIRE(tt::harness::eventually([&] { return of_kind("soft_threshold") == 2 && of_kind("spend_guard") == 2; }, 15s));
    CHECK(e.metric_sum("tollgate_alerts_fleet_claims_total", "outcome=\"unavailable\"") == 2);
  }
}

TEST_CASE("fleet alerts: an alert whose claimer never confirmed its delivery is sent by another instance after the lease") {
  using namespace std::chrono_literals;
  pg_server pg;
  pg.start();
  tt::webhook_receiver hook;
  // A's only webhook never answers (nothing listens there): A claims the alerts, its deliveries
  // fail, it never confirms, as if it had stopped before sending. B's webhook works.
  auto alerting = [&](const std::string& instance, const std::string& url) {
    return [=, base = fleet(pg, instance)](tollgate::config& c) {
      base(c);
      c.ledger_postgres.alert_lease = 1s;
      c.forecast.enabled = false;
      c.policy.budgets = {tt::soft_monthly_budget()};
      c.policy.spend_guards = {tt::reroute_guard()};
      c.policy.webhooks = tt::webhook_to(url);
    };
  };
  auto of_kind = [&](const std::string& kind) {
    std::size_t n = 0;
    for (const auto& a : hook.received()) n += a.value("kind", "") == kind;
    return n;
  };
  std::string dead_url;
  {
    tt::webhook_receiver gone;  // a port that was just freed: connections to it are refused
    dead_url = gone.url();
  }
  // The table as a tollgate before leases made it: the first instance adds `delivered`.
  pg.query("CREATE TABLE tollgate_alerts (dedupe_key TEXT PRIMARY KEY, instance TEXT NOT NULL, sent_ms BIGINT NOT NULL); SELECT 1");
  tt::harness a({.tweak = alerting("edge-a", dead_url)});
  for (int i = 0; i < 3; ++i) REQUIRE(tt::post_json(a.port(), "/v1/chat/completions", tt::chat_body("gpt-4.1")).status == 200);
  a.flush();
  REQUIRE(tt::harness::eventually([&] { return a.metric_sum("tollgate_alerts_fleet_claims_total", "outcome=\"claimed\"") == 2; }, 15s));
  CHECK(pg.query("SELECT count(*) FROM tollgate_alerts WHERE NOT delivered AND instance = 'edge-a'") == std::vector<std::string>{"2"});
  // B sees the same alerts through PostgreSQL; A's unconfirmed claims pass to B after the lease.
  tt::harness b({.tweak = alerting("edge-b", hook.url())});
  REQUIRE(tt::harness::eventually([&] { return of_kind("soft_threshold") == 1 && of_kind("spend_guard") == 1; }, 20s));
  REQUIRE(tt::harness::eventually([&] {
    return pg.query("SELECT count(*) FROM tollgate_alerts WHERE delivered AND instance = 'edge-b'") == std::vector<std::string>{"2"};
  }));
  std::this_thread::sleep_for(1500ms);  // once each: a delivered claim is never taken over
  CHECK(of_kind("soft_threshold") == 1);
  CHECK(of_kind("spend_guard") == 1);
}

TEST_CASE("a PostgreSQL url libpq cannot parse is a config error naming the key") {
  tollgate::config c;
  c.listen = {"127.0.0.1", 0};
  c.admin_listen = {"127.0.0.1", 0};
  tt::temp_dir d;
  c.ledger_path = d.path + "/l.db";
  c.upstream.url = "http://127.0.0.1:9/v1";
  c.prices_file = std::string(TOLLGATE_SOURCE_DIR) + "/config/prices.yaml";
  c.ledger_postgres.url = "postgresql://bob:S3CRETpw@host/x?bogus_option=1";
  try {
    tollgate::app app(c);
    app.start();
    FAIL("accepted a bad url");
  } catch (const std::exception& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("ledger.postgres.url") != std::string::npos);
    CHECK(std::string(e.what()).find("S3CRETpw") == std::string::npos);  // never echoed
  }
}

TEST_CASE("an administrator's extra column is left to its default, and a locked table does not hold up shutdown") {
  pg_server pg;
  pg.start();
  {
    tt::harness h({.tweak = fleet(pg, "edge-x")});
    calls(h, 2);
    REQUIRE(tt::harness::eventually([&] { return pg.count() == 2; }));
  }
  // The DBA adds a column of their own; shipping goes on.
  pg.query("ALTER TABLE tollgate_calls ADD COLUMN inserted_at timestamptz NOT NULL DEFAULT now(); SELECT 1");
  tt::harness h({.tweak = fleet(pg, "edge-x")});
  calls(h, 3);
  REQUIRE(tt::harness::eventually([&] { return pg.count("inserted_at IS NOT NULL") == 5; }));

  // A session holds the table: tollgate's shutdown waits a bounded time, not for the lock.
  PGconn* locker = PQconnectdb(pg.url().c_str());
  REQUIRE(PQstatus(locker) == CONNECTION_OK);
  PQclear(PQexec(locker, "BEGIN; LOCK TABLE tollgate_calls IN ACCESS EXCLUSIVE MODE"));
  calls(h, 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the shipper is now waiting on the lock
  const auto t0 = std::chrono::steady_clock::now();
  h.proxy->shutdown();
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took < std::chrono::seconds(12));
  PQclear(PQexec(locker, "ROLLBACK"));
  PQfinish(locker);
}

TEST_CASE("the service tier, web searches and provider ship, and an older fleet table gains their columns or ships without them") {
  pg_server pg;
  pg.start();
  {
    tt::harness h({.tweak = fleet(pg, "edge-t")});
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-5", false, R"(,"service_tier":"flex")"),
                          {{"x-fake-provider", "DeepInfra"}})
                .status == 200);
    h.flush();
    REQUIRE(tt::harness::eventually([&] { return pg.count() == 1; }));
    CHECK(pg.query("SELECT service_tier, web_search_requests, provider FROM tollgate_calls").at(0) == "flex\t0\tDeepInfra");
  }
  // The table as the tollgate before ledger schema 5 made it: only the provider is added.
  pg.query("ALTER TABLE tollgate_calls DROP COLUMN provider; SELECT 1");
  {
    tt::harness h({.tweak = fleet(pg, "edge-t")});
    REQUIRE(tt::post_json(h.port(), "/v1/chat/completions", tt::chat_body("gpt-5", false), {{"x-fake-provider", "Groq"}})
                .status == 200);
    h.flush();
    REQUIRE(tt::harness::eventually([&] { return pg.count() == 2; }));
    CHECK(pg.query("SELECT count(*) FROM tollgate_calls WHERE provider = 'Groq'").at(0) == "1");
  }
  // The table as an older tollgate made it.
  pg.query("ALTER TABLE tollgate_calls DROP COLUMN service_tier, DROP COLUMN web_search_requests, DROP COLUMN provider; SELECT 1");
  {
    tt::harness h({.tweak = fleet(pg, "edge-t")});
    calls(h, 1, "gpt-5");
    REQUIRE(tt::harness::eventually([&] { return pg.count() == 3; }));
    CHECK(pg.query("SELECT count(*) FROM tollgate_calls WHERE service_tier = 'default'").at(0) == "1");
  }
  // Again, now for a role that may write the table but not alter it: rows ship without them.
  pg.query("ALTER TABLE tollgate_calls DROP COLUMN service_tier, DROP COLUMN web_search_requests, DROP COLUMN provider; "
           "CREATE ROLE writer LOGIN; GRANT SELECT, INSERT ON tollgate_calls TO writer; "
           "GRANT CREATE, USAGE ON SCHEMA public TO writer; SELECT 1");
  std::string url = pg.url();
  url.replace(url.find("tollgate@"), 9, "writer@");
  tt::harness h({.tweak = [url](tollgate::config& c) {
    c.ledger_postgres.url = url;
    c.ledger_postgres.instance = "edge-w";
    c.ledger_postgres.interval = std::chrono::milliseconds(20);
  }});
  calls(h, 2, "gpt-5");
  REQUIRE(tt::harness::eventually([&] { return pg.count("instance = 'edge-w'") == 2; }));
  CHECK(pg.query("SELECT count(*) FROM pg_attribute WHERE attrelid = 'tollgate_calls'::regclass "
                 "AND attname = 'service_tier' AND NOT attisdropped").at(0) == "0");
  CHECK(h.metric_sum("tollgate_ledger_postgres_up") == 1);
}

namespace {

// Runs tollgate-forecast with `args` (shell words): its exit status and stdout; stderr in `err`.
int forecast_tool(const std::string& args, std::string& out, std::string& err) {
  const tt::temp_dir dir;
  const int status = std::system((std::string(TOLLGATE_FORECAST_BIN) + " " + args + " >" + shell_quote(dir.path + "/out") +
                                  " 2>" + shell_quote(dir.path + "/err"))
                                     .c_str());
  out = read_file(dir.path + "/out");
  err = read_file(dir.path + "/err");
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A table without its first word (the input's name: the ledger file's stem, or tollgate_calls).
std::string without_label(const std::string& table) { return table.substr(std::min(table.find(' '), table.size())); }

// Adds `rows` copies of the ledger's first four rows to its calls table (n.i = 0 .. rows-1 is
// the copy's number: `start_ms` is an SQL expression of it), in two teams (red, blue), with
// varied prompt tokens and `more` columns made by their own expressions. The shipper ships them
// as any committed row.
void add_history(tt::harness& h, int rows, const std::string& start_ms, const std::map<std::string, std::string>& more = {}) {
  std::string columns, values;
  for (const auto& row : h.rows("SELECT name FROM pragma_table_info('calls') WHERE name <> 'id'")) {
    const std::string name = row.at("name");
    std::map<std::string, std::string> made = {{"request_id", "c.request_id || '-h' || n.i"},
                                               {"start_ms", start_ms},
                                               {"team", "CASE n.i % 3 WHEN 0 THEN 'red' ELSE 'blue' END"},
                                               {"prompt_tokens", "100 + n.i % 37"}};
    made.insert(more.begin(), more.end());
    columns += (columns.empty() ? "\"" : ", \"") + name + "\"";
    values += (values.empty() ? "" : ", ") + (made.count(name) ? made.at(name) : "c.\"" + name + "\"");
  }
  const std::string insert = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < " +
                             std::to_string(rows - 1) + ") INSERT INTO calls (" + columns + ") SELECT " + values +
                             " FROM n JOIN calls c ON c.id = (SELECT min(id) FROM calls) + n.i % 4";
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(h.cfg.ledger_path.c_str(), &db) == SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, insert.c_str(), nullptr, nullptr, &error);
  const std::string message = error ? error : "";
  sqlite3_free(error);
  sqlite3_close(db);
  INFO(message);
  REQUIRE(rc == SQLITE_OK);
}

}  // namespace

TEST_CASE("tollgate-forecast --postgres forecasts the fleet table as --ledger forecasts the ledger that shipped it") {
  pg_server pg;
  pg.start();
  tt::harness h({.tweak = fleet(pg, "edge-f")});
  calls(h, 2, "gpt-4.1");
  calls(h, 2, "claude-sonnet-4-5");
  // Three hours of history ending ten minutes ago on a minute boundary, one row every 5 s.
  const std::int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::int64_t end_ms = (now_ms / 60000 - 10) * 60000, begin_ms = end_ms - 3 * 3600 * 1000;
  add_history(h, 2160, std::to_string(begin_ms) + " + n.i * 5000 + (n.i % 7) * 311");
  const auto local = h.query_int("SELECT count(*) FROM calls");
  REQUIRE(local == 2164);
  REQUIRE(tt::harness::eventually([&] { return pg.count() == local; }, std::chrono::seconds(30)));

  // The window ends where the history does: the live calls' minute, still in progress, stays out.
  const std::time_t end_s = end_ms / 1000;
  char to[32];
  std::strftime(to, sizeof to, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&end_s));
  const std::string price_model = h.query_text("SELECT price_model FROM calls WHERE requested_model = 'gpt-4.1' LIMIT 1");
  std::string whole;  // the whole ledger's forecast
  for (const std::string& opts : {std::string(""), std::string("--value prompt_tokens --team red"),
                                 "--value total_tokens --model " + price_model, std::string("--key nobody")}) {
    INFO(opts);
    std::string from_ledger, from_fleet, err;
    const std::string common = " --bin 1m --horizon 10m --to " + std::string(to) + " " + opts;
    const int ledger_status = forecast_tool("forecast --ledger " + shell_quote(h.cfg.ledger_path) + common, from_ledger, err);
    const int fleet_status = forecast_tool("forecast --postgres " + shell_quote(pg.url()) + common, from_fleet, err);
    CHECK(fleet_status == ledger_status);
    if (opts == "--key nobody") {
      CHECK(fleet_status == 2);
      CHECK(err == "tollgate-forecast: tollgate_calls: no records for key nobody to " + std::string(to) + "\n");
      continue;
    }
    REQUIRE(ledger_status == 0);
    CHECK(from_fleet.rfind("tollgate_calls:", 0) == 0);
    CHECK(std::count(from_fleet.begin(), from_fleet.end(), '\n') == 13);  // header, columns, 10 steps, sum
    CHECK(without_label(from_fleet) == without_label(from_ledger));
    if (opts.empty()) whole = from_ledger;
  }

  // --fleet: the url from the proxy's configuration (ledger.postgres.url), off the command line.
  const tt::temp_dir conf;
  std::ofstream(conf.path + "/tollgate.yaml") << "ledger:\n  postgres:\n    url: " << pg.url() << "\n";
  std::string from_config, err;
  REQUIRE(forecast_tool("forecast --fleet --config " + shell_quote(conf.path + "/tollgate.yaml") +
                            " --bin 1m --horizon 10m --to " + std::string(to),
                        from_config, err) == 0);
  CHECK(without_label(from_config) == without_label(whole));
  CHECK(err == "note: reading the fleet ledger (ledger.postgres.url of " + conf.path + "/tollgate.yaml)\n");
  // One instance's calls: all of them are edge-f's here.
  std::string one_instance;
  REQUIRE(forecast_tool("forecast --postgres " + shell_quote(pg.url()) + " --instance edge-f --bin 1m --horizon 10m --to " +
                            std::string(to),
                        one_instance, err) == 0);
  CHECK(without_label(one_instance) == without_label(whole));
  CHECK(forecast_tool("forecast --postgres " + shell_quote(pg.url()) + " --instance edge-9 --to " + std::string(to),
                      one_instance, err) == 2);
  CHECK(err == "tollgate-forecast: tollgate_calls: no records for instance edge-9 to " + std::string(to) + "\n");

  // No fleet table in that database: said so, and the url (with its password) is not repeated.
  std::string url = pg.url();
  url.replace(url.find("tollgate@"), 9, "tollgate:s3cret@");
  url.replace(url.rfind("/postgres"), 9, "/template1");
  std::string out;
  CHECK(forecast_tool("forecast --postgres " + shell_quote(url), out, err) == 2);
  CHECK(err.find("no tollgate fleet ledger here") != std::string::npos);
  CHECK(err.find("s3cret") == std::string::npos);
}

namespace {

// `tollgate report ARGS`: exit status, stdout and stderr.
std::tuple<int, std::string, std::string> report(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  const int rc = tollgate::report_main(args, out, err);
  return {rc, out.str(), err.str()};
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("tollgate report --fleet prints what tollgate report prints on the ledgers that shipped the rows") {
  pg_server pg;
  pg.start();
  const std::string admin_token = "adm-fleet-7";
  tt::harness f({.tweak = fleet_admin(pg, "edge-f", admin_token)});
  tt::harness g({.tweak = fleet(pg, "edge-g")});
  calls(f, 2, "gpt-4.1");
  calls(f, 2, "claude-sonnet-4-5");
  calls(g, 4, "gpt-4.1");
  // Three days from 2026-10-31T00:00Z, across the end of US daylight time (2026-11-01 has 25
  // hours in New York): one row every 2 minutes at edge-f, one every 10 at edge-g, so the two
  // instances' rows interleave. Costs vary by row (their sum depends on the order of adding),
  // some calls are flex-tier, some name a provider, some an end user.
  const std::map<std::string, std::string> varied = {
      {"cost_usd", kVariedCost},
      {"service_tier", "CASE n.i % 5 WHEN 0 THEN 'flex' ELSE c.service_tier END"},
      {"provider", "CASE n.i % 4 WHEN 1 THEN 'Groq' ELSE NULL END"},
      {"user", "CASE n.i % 3 WHEN 2 THEN NULL ELSE 'end-user-' || (n.i % 5) END"}};
  add_history(f, 2160, "1793404800000 + n.i * 120000 + (n.i % 7) * 311", varied);
  add_history(g, 432, "1793404800000 + n.i * 600000 + (n.i % 3) * 977", varied);
  const auto rows_f = f.query_int("SELECT count(*) FROM calls"), rows_g = g.query_int("SELECT count(*) FROM calls");
  REQUIRE(rows_f == 2164);
  REQUIRE(rows_g == 436);
  REQUIRE(tt::harness::eventually([&] { return pg.count() == rows_f + rows_g; }, std::chrono::seconds(30)));

  const std::string url = pg.url(), prices = std::string(TOLLGATE_SOURCE_DIR) + "/config/prices.yaml";
  // One instance's rows of the fleet ledger report exactly what its ledger file reports: every
  // sum, cost included, bit for bit (printed shortest round-trip).
  const std::vector<std::vector<std::string>> questions = {
      {"--json"},
      {"--json", "--by", "day,model,team", "--timezone", "America/New_York"},
      {"--csv", "--by", "tier,provider,key", "--from", "2026-11-01", "--to", "2026-11-02"},
      {"--json", "--by", "user,day", "--timezone", "Asia/Kathmandu"},
      {"--json", "--by", "day", "--month", "2026-11", "--timezone", "Asia/Kolkata"},
      {"--json", "--whatif", "gpt-4.1-mini", "--prices", prices},
      {"--csv", "--swap", "claude-sonnet-4-5=gpt-4.1", "--prices", prices, "--from", "2026-11-01T12:00:00Z"},
  };
  for (const auto& [instance, h] : {std::pair<std::string, tt::harness*>{"edge-f", &f}, {"edge-g", &g}}) {
    for (const auto& q : questions) {
      INFO(instance << " " << q.at(0) << " " << (q.size() > 2 ? q.at(2) : ""));
      const auto [rc_file, from_file, err_file] = report(with({"--ledger", h->cfg.ledger_path}, q));
      const auto [rc_fleet, from_fleet, err_fleet] = report(with({"--postgres", url, "--instance", instance}, q));
      INFO(err_file << err_fleet);
      REQUIRE(rc_file == 0);
      CHECK(rc_fleet == 0);
      CHECK(from_fleet == from_file);
      CHECK(from_file.size() > 100);
    }
  }
  // The table names what it reports on.
  const auto [rc_t, table, err_t] = report({"--postgres", url, "--instance", "edge-g", "--by", "model"});
  const auto [rc_l, local_table, err_l] = report({"--ledger", g.cfg.ledger_path, "--by", "model"});
  CHECK(table.rfind("Spend of instance edge-g (fleet ledger) from the first call to the last call", 0) == 0);
  CHECK(table.substr(table.find('\n')) == local_table.substr(local_table.find('\n')));

  // The whole fleet: per instance, each ledger's figures; in total, both (the total's cost is
  // summed in the fleet's order, so it is compared to the ledgers' sum within rounding).
  const auto [rc, by_instance, err] = report({"--postgres", url, "--by", "instance", "--json"});
  REQUIRE(rc == 0);
  const auto fleet_report = nlohmann::json::parse(by_instance);
  const auto file_total = [&](tt::harness& h) {
    return nlohmann::json::parse(std::get<1>(report({"--ledger", h.cfg.ledger_path, "--json"})))["total"];
  };
  const auto total_f = file_total(f), total_g = file_total(g);
  REQUIRE(fleet_report["rows"].size() == 2);
  for (const auto& [row, total] : {std::pair{fleet_report["rows"][0], total_f}, {fleet_report["rows"][1], total_g}}) {
    auto figures = row;
    figures.erase("instance");
    CHECK(figures == total);
  }
  CHECK(fleet_report["rows"][0]["instance"] == "edge-f");
  CHECK(fleet_report["rows"][1]["instance"] == "edge-g");
  for (const char* k : {"requests", "unpriced_requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"})
    CHECK(fleet_report["total"][k].get<std::int64_t>() == total_f[k].get<std::int64_t>() + total_g[k].get<std::int64_t>());
  CHECK(fleet_report["total"]["requests"] == rows_f + rows_g);
  CHECK(fleet_report["total"]["cost_usd"].get<double>() ==
        Approx(total_f["cost_usd"].get<double>() + total_g["cost_usd"].get<double>()).epsilon(1e-12));

  // --fleet: the url from the proxy's configuration, off the command line; the same report.
  const tt::temp_dir conf;
  std::ofstream(conf.path + "/tollgate.yaml") << "ledger:\n  postgres:\n    url: " << url << "\n";
  const auto [rc_c, from_config, err_c] =
      report({"--fleet", "--config", conf.path + "/tollgate.yaml", "--by", "instance", "--json"});
  CHECK(rc_c == 0);
  CHECK(from_config == by_instance);
  // The admin API of any instance answers the same with scope=fleet, from the proxy's own url:
  // /admin/spend as the command prints it, /admin/whatif of an instance's rows as that instance's
  // own /admin/whatif.
  const tt::headers admin = {{"Authorization", "Bearer " + admin_token}};
  const auto spend_fleet = tt::request(f.admin_port(), "GET", "/admin/spend?scope=fleet&group_by=instance", {}, admin);
  CHECK(spend_fleet.status == 200);
  CHECK(nlohmann::json::parse(spend_fleet.body) == fleet_report);
  const auto csv_g = tt::request(f.admin_port(), "GET", "/admin/spend?scope=fleet&instance=edge-g&group_by=day,model&format=csv", {}, admin);
  CHECK(csv_g.body == std::get<1>(report({"--ledger", g.cfg.ledger_path, "--by", "day,model", "--csv"})));
  const auto whatif_local = tt::request(f.admin_port(), "GET", "/admin/whatif?model=gpt-4.1-mini&month=2026-11", {}, admin);
  const auto whatif_fleet =
      tt::request(f.admin_port(), "GET", "/admin/whatif?model=gpt-4.1-mini&month=2026-11&scope=fleet&instance=edge-f", {}, admin);
  CHECK(whatif_local.status == 200);
  CHECK(whatif_fleet.body == whatif_local.body);
  // An instance without rows: an empty report, not an error.
  const auto [rc_none, none, err_none] = report({"--postgres", url, "--instance", "edge-9", "--json"});
  CHECK(rc_none == 0);
  CHECK(nlohmann::json::parse(none)["total"]["requests"] == 0);

  // A database without the fleet table says so, and the url's password is not repeated.
  std::string other = url;
  other.replace(other.find("tollgate@"), 9, "tollgate:s3cret@");
  other.replace(other.rfind("/postgres"), 9, "/template1");
  const auto [rc_x, out_x, err_x] = report({"--postgres", other, "--by", "day"});
  CHECK(rc_x == 1);
  CHECK_THAT(err_x.c_str(), Catch::Matchers::Contains("no tollgate fleet ledger here"));
  CHECK(err_x.find("s3cret") == std::string::npos);
  // PostgreSQL gone: the admin API says so with a 503; the instance's own reports still answer.
  pg.stop();
  const auto down = tt::request(f.admin_port(), "GET", "/admin/spend?scope=fleet", {}, admin);
  CHECK(down.status == 503);
  CHECK(down.body.find("fleet_ledger_unavailable") != std::string::npos);
  CHECK(tt::request(f.admin_port(), "GET", "/admin/spend", {}, admin).status == 200);
  pg.start();
  // A fleet table without a column a later tollgate added (here in a schema of its own, read
  // through the url's search_path): the column is named, without the query's text.
  pg.query("CREATE SCHEMA old; CREATE TABLE old.tollgate_calls AS SELECT * FROM public.tollgate_calls LIMIT 0; "
           "ALTER TABLE old.tollgate_calls DROP COLUMN provider; SELECT 1");
  const auto [rc_o, out_o, err_o] = report({"--postgres", url + "?options=-csearch_path%3Dold", "--by", "provider"});
  CHECK(rc_o == 1);
  CHECK(err_o == "tollgate report: PostgreSQL: column \"provider\" does not exist (a fleet table made by an older "
                 "tollgate: a tollgate that owns it adds the column at its next connection)\n");
  // Reports that do not read it still work there.
  const auto [rc_team, by_team, err_team] = report({"--postgres", url + "?options=-csearch_path%3Dold", "--by", "team", "--json"});
  CHECK(rc_team == 0);
  CHECK(nlohmann::json::parse(by_team)["total"]["requests"] == 0);
}

TEST_CASE("/admin/calls?scope=fleet pages the fleet's rows as each instance's /admin/calls pages its own") {
  pg_server pg;
  pg.start();
  const std::string token = "adm-calls-3";
  tt::harness f({.tweak = fleet_admin(pg, "edge-f", token)});
  tt::harness g({.tweak = fleet_admin(pg, "edge-g", token)});
  calls(f, 3, "gpt-4.1");
  calls(g, 2, "claude-sonnet-4-5");
  // History on 2026-11-02: a row every 2 minutes at edge-f, every 10 at edge-g, on the same
  // milliseconds (each of edge-g's starts is one of edge-f's too): pages must break those ties
  // by ledger, never lose or repeat a row at a page's edge.
  const std::map<std::string, std::string> varied = {
      {"cost_usd", kVariedCost},
      {"status", "CASE n.i % 9 WHEN 4 THEN 429 ELSE c.status END"},
      {"latency_ms", "c.latency_ms + n.i % 50 + 0.125"},
      {"user", "CASE n.i % 6 WHEN 1 THEN 'end-user-3' ELSE NULL END"}};
  add_history(f, 300, "1793577600000 + n.i * 120000", varied);
  add_history(g, 60, "1793577600000 + n.i * 600000", varied);
  const auto rows_f = f.query_int("SELECT count(*) FROM calls"), rows_g = g.query_int("SELECT count(*) FROM calls");
  REQUIRE(tt::harness::eventually([&] { return pg.count() == rows_f + rows_g; }, std::chrono::seconds(30)));

  const tt::headers admin = {{"Authorization", "Bearer " + token}};
  // Every row a query pages through, following x-next-before.
  const auto pages = [&](tt::harness& h, const std::string& query, std::size_t* count = nullptr) {
    nlohmann::json rows = nlohmann::json::array();
    std::string before;
    std::size_t n = 0;
    do {
      const auto r = tt::request(h.admin_port(), "GET", "/admin/calls?" + query + (before.empty() ? "" : "&before=" + before), {}, admin);
      INFO(query << " " << r.body.substr(0, 300));
      REQUIRE(r.status == 200);
      const auto page = nlohmann::json::parse(r.body);
      for (const auto& row : page["calls"]) rows.push_back(row);
      before = r.header("x-next-before");
      CHECK(page["next_before"] == (before.empty() ? nlohmann::json(nullptr) : nlohmann::json(before)));
      ++n;
    } while (!before.empty());
    if (count) *count = n;
    return rows;
  };
  // One instance's rows of the fleet, page by page, are its own ledger's rows as stored (costs
  // bit for bit), with the instance and its ledger's uid beside them.
  for (auto* h : {&f, &g}) {
    const std::string name = h == &f ? "edge-f" : "edge-g";
    for (const std::string filter : {"limit=37", "team=red&limit=11", "status=429&min_latency_ms=120", "model=claude-sonnet-4-5",
                                     "min_cost_usd=0.00001&max_cost_usd=0.01&from=2026-11-02T03:00:00Z&to=2026-11-02T09:00:00Z",
                                     "user=end-user-3&limit=9"}) {
      INFO(name << " " << filter);
      const auto local = pages(*h, filter);
      if (filter.starts_with("user=")) CHECK(local.size() == (h == &f ? 25u : 5u));  // "user", quoted in PostgreSQL
      auto fleet_rows = pages(f, filter + "&scope=fleet&instance=" + name);
      REQUIRE(fleet_rows.size() == local.size());
      for (auto& row : fleet_rows) {
        CHECK(row["instance"] == name);
        CHECK(row["ledger_uid"].get<std::string>().size() == 32);
        row.erase("instance");
        row.erase("ledger_uid");
      }
      CHECK(fleet_rows == local);
    }
  }
  CHECK(pages(f, "scope=fleet&instance=edge-f").size() == static_cast<std::size_t>(rows_f));
  // The whole fleet: every row once, newest first, ties in start_ms by ledger then id, across
  // pages of 7 that split the ties.
  std::size_t n_pages = 0;
  const auto all = pages(g, "scope=fleet&limit=7", &n_pages);
  CHECK(all.size() == static_cast<std::size_t>(rows_f + rows_g));
  CHECK(n_pages == (all.size() + 6) / 7);
  std::set<std::pair<std::string, std::int64_t>> seen;
  for (std::size_t i = 0; i < all.size(); ++i) {
    seen.emplace(all[i]["ledger_uid"], all[i]["id"]);
    if (i == 0) continue;
    const auto key = [](const nlohmann::json& r) {
      return std::make_tuple(r["start_ms"].get<std::int64_t>(), r["ledger_uid"].get<std::string>(), r["id"].get<std::int64_t>());
    };
    CHECK(key(all[i]) < key(all[i - 1]));
  }
  CHECK(seen.size() == all.size());
  // A live call, found by its tollgate id from any instance (the id carries its start).
  const std::string live = g.rows("SELECT request_id FROM calls ORDER BY id LIMIT 1").at(0).at("request_id");
  const auto found = pages(f, "scope=fleet&request_id=" + live);
  REQUIRE(found.size() == 1);
  CHECK(found[0]["instance"] == "edge-g");
  CHECK(found[0]["requested_model"] == "claude-sonnet-4-5");
  // CSV: the fleet table's columns, instance and ledger_uid first; the same cursor.
  const auto csv = tt::request(f.admin_port(), "GET", "/admin/calls?scope=fleet&instance=edge-g&limit=5&format=csv", {}, admin);
  CHECK(csv.body.rfind("instance,ledger_uid,id,request_id,start_ms,", 0) == 0);
  CHECK(std::count(csv.body.begin(), csv.body.end(), '\n') == 6);
  const auto json5 = tt::request(f.admin_port(), "GET", "/admin/calls?scope=fleet&instance=edge-g&limit=5", {}, admin);
  CHECK(csv.header("x-next-before") == json5.header("x-next-before"));
  CHECK(csv.header("x-next-before").find(':') != csv.header("x-next-before").rfind(':'));
  // A local page's cursor is not the fleet's, and the other way round.
  const auto local_page = tt::request(f.admin_port(), "GET", "/admin/calls?limit=1", {}, admin);
  const auto mixed = tt::request(f.admin_port(), "GET", "/admin/calls?scope=fleet&before=" + local_page.header("x-next-before"), {}, admin);
  CHECK(mixed.status == 400);
  CHECK(mixed.body.find("<start_ms>:<ledger_uid>:<id>") != std::string::npos);
  CHECK(tt::request(f.admin_port(), "GET", "/admin/calls?before=" + json5.header("x-next-before"), {}, admin).status == 400);
  // Bytes that are not UTF-8 match no row of the fleet table (PostgreSQL would refuse the query,
  // which is not the fleet ledger being unavailable): a 400 naming the parameter.
  for (const std::string target : {"/admin/calls?scope=fleet&team=%ff", "/admin/calls?scope=fleet&instance=a%c3",
                                   "/admin/spend?scope=fleet&instance=%ff", "/admin/calls?scope=fleet&before=1:%ff:2"}) {
    INFO(target);
    const auto r = tt::request(f.admin_port(), "GET", target, {}, admin);
    CHECK(r.status == 400);
    CHECK(r.body.find("is not UTF-8 text") != std::string::npos);
  }
  CHECK(tt::request(f.admin_port(), "GET", "/admin/calls?team=%ff", {}, admin).status == 200);
  // Rows an administrator wrote by hand, under a ledger_uid holding a line break: the cursor is
  // in the body only, never a header that would split the head.
  pg.query("CREATE TEMP TABLE hand AS SELECT * FROM tollgate_calls WHERE instance = 'edge-f' AND id <= 2; "
           "UPDATE hand SET instance = 'hand', ledger_uid = E'evil\r\nx-evil: 1'; "
           "INSERT INTO tollgate_calls SELECT * FROM hand; SELECT 1");
  const auto hand = tt::request(f.admin_port(), "GET", "/admin/calls?scope=fleet&instance=hand&limit=1", {}, admin);
  CHECK(hand.status == 200);
  CHECK_FALSE(hand.has_header("x-evil"));
  CHECK_FALSE(hand.has_header("x-next-before"));
  CHECK(nlohmann::json::parse(hand.body)["next_before"].get<std::string>().find("evil\r\nx-evil: 1:") != std::string::npos);
  // PostgreSQL gone: 503; the local rows still answer.
  pg.stop();
  const auto down = tt::request(f.admin_port(), "GET", "/admin/calls?scope=fleet", {}, admin);
  CHECK(down.status == 503);
  CHECK(down.body.find("fleet_ledger_unavailable") != std::string::npos);
  CHECK(tt::request(f.admin_port(), "GET", "/admin/calls?limit=1", {}, admin).status == 200);
}

TEST_CASE("connect_postgres: TCP keepalives find a vanished server in about 30 s, and a url may set its own") {
  pg_server pg;
  pg.start();
  const auto option = [](PGconn* c, std::string_view key) {
    std::string value;
    PQconninfoOption* opts = PQconninfo(c);
    for (auto* o = opts; o != nullptr && o->keyword != nullptr; ++o)
      if (key == o->keyword && o->val != nullptr) value = o->val;
    PQconninfoFree(opts);
    return value;
  };
  std::string err;
  PGconn* c = tollgate::connect_postgres(pg.url(), std::chrono::seconds(5), "tollgate-test", "1000", err);
  REQUIRE(c != nullptr);
  CHECK(option(c, "keepalives") == "1");
  CHECK(option(c, "keepalives_idle") == "15");
  CHECK(option(c, "keepalives_interval") == "5");
  CHECK(option(c, "keepalives_count") == "3");
  CHECK(option(c, "application_name") == "tollgate-test");
  PQfinish(c);
  PGconn* own = tollgate::connect_postgres(pg.url() + "?keepalives_idle=120", std::chrono::seconds(5), "tollgate-test", "1000", err);
  REQUIRE(own != nullptr);
  CHECK(option(own, "keepalives_idle") == "120");
  CHECK(option(own, "keepalives_count") == "3");
  PQfinish(own);
}
