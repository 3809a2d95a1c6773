// Tests of the run-time client key store (proxy/ledger/key_store.cpp) on real ledger files:
// generation and hashing, the budgets' JSON form, insert/list/revoke/load and their errors.
#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>

#include "ledger/key_store.hpp"
#include "ledger/ledger.hpp"

namespace {

using namespace tollgate;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("tollgate-keys-test-" + std::to_string(rd()) + "-" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// A ledger file with every migration applied, as the proxy leaves it.
struct ledger_file {
  temp_dir dir;
  std::string path = dir.file("tollgate.db");
  ledger_file() {
    ledger_options o;
    o.path = path;
    ledger l(o);
    l.start();
    l.stop();
  }
};

client_key_config sample_key(const std::string& name) {
  client_key_config k;
  k.name = name;
  k.team = "web";
  k.tags = {"prod", "eu"};
  k.limits = {600, 200000};
  budget_config day;
  day.scope = "key:" + name;
  day.period = calendar_period::day;
  day.limit_usd = 5.0;
  day.soft = {0.5, 0.8};
  day.hard = true;
  budget_config month;
  month.scope = "key:" + name;
  month.period = calendar_period::month;
  month.limit_usd = 120.25;
  k.budgets = {day, month};
  return k;
}

bool same_budgets(const std::vector<budget_config>& a, const std::vector<budget_config>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].scope != b[i].scope || a[i].period != b[i].period || a[i].limit_usd != b[i].limit_usd ||
        a[i].soft != b[i].soft || a[i].hard != b[i].hard)
      return false;
  return true;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("key_store: generated keys are tg- and 32 random bytes in base64url", "[key_store]") {
  std::set<std::string> seen;
  for (int i = 0; i < 50; ++i) {
    const auto k = generate_client_key();
    REQUIRE(k.size() == 46);
    CHECK(k.rfind("tg-", 0) == 0);
    CHECK(k.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 3) == std::string::npos);
    seen.insert(k);
  }
  CHECK(seen.size() == 50);
}

TEST_CASE("key_store: keys are hashed with SHA-256 and shown as lower-case hex", "[key_store]") {
  CHECK(to_hex(key_sha256("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("key_store: budgets round-trip through JSON and bad ones are refused", "[key_store]") {
  const auto key = sample_key("app");
  SECTION("round trip, with the key's scope restored") {
    const auto j = budgets_to_json(key.budgets);
    CHECK(j[0] == nlohmann::json::parse(R"({"period":"day","limit_usd":5.0,"soft":[0.5,0.8],"hard":true})"));
    CHECK(!j[0].contains("scope"));
    CHECK(same_budgets(budgets_from_json(j, "app"), key.budgets));
    CHECK(budgets_from_json(nullptr, "app").empty());
  }
  SECTION("soft thresholds are sorted and deduplicated") {
    const auto b = budgets_from_json(nlohmann::json::parse(R"([{"period":"week","limit_usd":10,"soft":[0.8,0.5,0.8]}])"), "x");
    REQUIRE(b.size() == 1);
    CHECK(b[0].soft == std::vector<double>{0.5, 0.8});
    CHECK(b[0].scope == "key:x");
    CHECK(!b[0].hard);
  }
  SECTION("each mistake is named") {
    const auto error = [](const char* text) {
      try {
        budgets_from_json(nlohmann::json::parse(text), "x");
      } catch (const std::invalid_argument& e) {
        return std::string(e.what());
      }
      return std::string("accepted");
    };
    CHECK_THAT(error(R"({"period":"day"})"), Contains("expected a list"));
    CHECK_THAT(error(R"([{"period":"hour","limit_usd":1}])"), Contains("budgets[0].period: expected day, week or month"));
    CHECK_THAT(error(R"([{"period":"day","limit_usd":0}])"), Contains("budgets[0].limit_usd"));
    CHECK_THAT(error(R"([{"period":"day","limit_usd":"5"}])"), Contains("budgets[0].limit_usd"));
    CHECK_THAT(error(R"([{"period":"day","limit_usd":1},{"limit_usd":1}])"), Contains("budgets[1]: period and limit_usd are required"));
    CHECK_THAT(error(R"([{"period":"day","limit_usd":1,"soft":[0]}])"), Contains("budgets[0].soft"));
    CHECK_THAT(error(R"([{"period":"day","limit_usd":1,"soft":[11]}])"), Contains("budgets[0].soft"));
    CHECK_THAT(error(R"([{"period":"day","limit_usd":1,"hard":"yes"}])"), Contains("budgets[0].hard"));
    CHECK_THAT(error(R"([{"period":"day","limit_usd":1,"scope":"global"}])"), Contains("unknown field 'scope'"));
  }
}

TEST_CASE("key_store: a created key is stored as its hash and loads back whole", "[key_store]") {
  ledger_file f;
  key_store store(f.path);
  const auto raw = store.create(sample_key("app-prod"), 1'700'000'000'000);

  SECTION("load_active returns the key with its hash, team, tags, limits and budgets") {
    const auto keys = store.load_active();
    REQUIRE(keys.size() == 1);
    const auto& k = keys[0];
    CHECK(k.name == "app-prod");
    CHECK(k.sha256 == key_sha256(raw));
    CHECK(k.team == "web");
    CHECK(k.tags == std::vector<std::string>{"prod", "eu"});
    CHECK(k.limits.rpm == 600);
    CHECK(k.limits.tpm == 200000);
    CHECK(same_budgets(k.budgets, sample_key("app-prod").budgets));
  }
  SECTION("the raw key is nowhere in the database file") {
    CHECK(file_bytes(f.path).find(raw) == std::string::npos);
    CHECK(file_bytes(f.path + "-wal").find(raw) == std::string::npos);
  }
  SECTION("list shows the creation time and no revocation; its JSON has neither key nor hash") {
    const auto all = store.list();
    REQUIRE(all.size() == 1);
    CHECK(all[0].created_ms == 1'700'000'000'000);
    CHECK(!all[0].revoked_ms);
    const auto j = to_json(all[0]);
    CHECK(j["name"] == "app-prod");
    CHECK(j["team"] == "web");
    CHECK(j["limits"]["rpm"] == 600);
    CHECK(j["revoked_ms"].is_null());
    CHECK(j["budgets"].size() == 2);
    CHECK(j.dump().find(to_hex(key_sha256(raw))) == std::string::npos);
  }
  SECTION("a key without team, tags, limits or budgets loads with empty ones") {
    client_key_config bare;
    bare.name = "bare";
    bare.sha256 = key_sha256("bare-key-123");
    store.insert(bare, 5);
    const auto keys = store.load_active();
    REQUIRE(keys.size() == 2);
    CHECK(keys[0].name == "app-prod");
    CHECK(keys[1].name == "bare");
    CHECK(keys[1].team.empty());
    CHECK(keys[1].tags.empty());
    CHECK(!keys[1].limits.any());
    CHECK(keys[1].budgets.empty());
    CHECK(to_json(store.list()[1])["team"].is_null());
  }
}

TEST_CASE("key_store: names and keys are unique, revoked ones included", "[key_store]") {
  ledger_file f;
  key_store store(f.path);
  auto first = sample_key("app");
  first.sha256 = key_sha256("first-key-secret");
  store.insert(first, 1);

  SECTION("the same name is refused") {
    auto again = sample_key("app");
    again.sha256 = key_sha256("another-secret");
    CHECK_THROWS_AS(store.insert(again, 2), key_exists);
    CHECK_THROWS_WITH(store.insert(again, 2), Contains("client key 'app' already exists"));
  }
  SECTION("the same key under another name is refused") {
    auto twin = sample_key("twin");
    twin.sha256 = first.sha256;
    CHECK_THROWS_WITH(store.insert(twin, 2), Contains("already stored as 'app'"));
  }
  SECTION("a revoked key's name may be given to a new key; its secret stays refused") {
    REQUIRE(store.revoke("app", 3) == revoke_result::revoked);
    auto again = sample_key("app");
    again.sha256 = key_sha256("another-secret");
    REQUIRE_NOTHROW(store.insert(again, 4));
    const auto listed = store.list();
    REQUIRE(listed.size() == 2);
    CHECK(listed[0].key.name == "app");
    CHECK(!listed[0].revoked_ms);
    CHECK(listed[1].key.name == "app@revoked-3");
    CHECK(listed[1].revoked_ms == 3);
    REQUIRE(store.load_active().size() == 1);
    CHECK(store.load_active()[0].sha256 == again.sha256);
    auto old_secret = sample_key("revived");
    old_secret.sha256 = first.sha256;
    CHECK_THROWS_WITH(store.insert(old_secret, 5), Contains("already stored as 'app@revoked-3'"));
    auto third = sample_key("app");
    third.sha256 = key_sha256("a-third-secret");
    CHECK_THROWS_WITH(store.insert(third, 5), Contains("client key 'app' already exists"));
  }
  SECTION("a refused insert leaves the store unchanged") {
    CHECK_THROWS(store.insert(first, 2));
    CHECK(store.list().size() == 1);
  }
}

TEST_CASE("key_store: revoked keys stop loading but stay listed", "[key_store]") {
  ledger_file f;
  key_store store(f.path);
  store.create(sample_key("a"), 1);
  store.create(sample_key("b"), 2);
  CHECK(store.revoke("a", 10) == revoke_result::revoked);
  const auto active = store.load_active();
  REQUIRE(active.size() == 1);
  CHECK(active[0].name == "b");
  const auto all = store.list();
  REQUIRE(all.size() == 2);
  CHECK(all[0].revoked_ms == 10);
  CHECK(to_json(all[0])["revoked_ms"] == 10);
  CHECK(store.revoke("a", 11) == revoke_result::already_revoked);
  CHECK(store.list()[0].revoked_ms == 10);
  CHECK(store.revoke("nobody", 11) == revoke_result::not_found);
}

TEST_CASE("key_store: invalid keys are refused before anything is stored", "[key_store]") {
  ledger_file f;
  key_store store(f.path);
  const auto refused = [&](client_key_config k) {
    try {
      store.create(std::move(k), 1);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  auto k = sample_key("ok");
  k.name = "has space";
  CHECK_THAT(refused(k), Contains("name: expected 1-64 letters"));
  k.name = std::string(65, 'a');
  CHECK_THAT(refused(k), Contains("name:"));
  k = sample_key("ok");
  k.team = "a/b";
  CHECK_THAT(refused(k), Contains("team:"));
  k.team = std::string("a\0b\r\n", 5);  // shown whole, its control bytes escaped
  CHECK_THAT(refused(k), Contains("got 'a\\x00b\\x0D\\x0A'"));
  k = sample_key("ok");
  k.tags = {""};
  CHECK_THAT(refused(k), Contains("tags:"));
  k = sample_key("ok");
  k.limits.rpm = -1;
  CHECK_THAT(refused(k), Contains("limits:"));
  k = sample_key("ok");
  k.budgets[1].limit_usd = -5;
  CHECK_THAT(refused(k), Contains("budgets[1].limit_usd"));
  k = sample_key("ok");
  k.budgets[0].period = calendar_period::hour;
  CHECK_THAT(refused(k), Contains("budgets[0].period"));
  CHECK(store.list().empty());
}

TEST_CASE("key_store: a missing ledger or one without the table is a clear error", "[key_store]") {
  temp_dir dir;
  CHECK_THROWS_WITH(key_store(dir.file("none.db")).list(), Contains("none.db") && Contains("no such file"));
  const auto old = dir.file("old.db");
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(old.c_str(), &db) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "CREATE TABLE calls(id INTEGER)", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
  CHECK_THROWS_WITH(key_store(old).load_active(), Contains("no such table: client_keys") && Contains("migrate"));
}

TEST_CASE("key_store: the ledger's migrations create the client_keys table", "[key_store]") {
  ledger_file f;
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(f.path.c_str(), &db) == SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM pragma_table_info('client_keys')", -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  CHECK(sqlite3_column_int(st, 0) == 9);
  sqlite3_finalize(st);
  sqlite3_close(db);
  CHECK(ledger_schema_version() == 5);
}

TEST_CASE("key_store: window alert marks round-trip, once per window", "[key_store]") {
  ledger_file f;
  CHECK(window_alerts_since(f.path, 0).empty());  // the table is made on first use
  record_window_alert(f.path, {"projected_overspend", "global", "month", 1000}, 5);
  record_window_alert(f.path, {"projected_overspend", "global", "month", 1000}, 6);  // the same: kept once
  record_window_alert(f.path, {"projected_overspend", "team:web", "day", 2000}, 7);
  CHECK(window_alerts_since(f.path, 0).size() == 2);
  const auto later = window_alerts_since(f.path, 1500);
  REQUIRE(later.size() == 1);
  CHECK(later[0].scope == "team:web");
  CHECK(later[0].period == "day");
  CHECK(later[0].window_start_s == 2000);
}

TEST_CASE("key_store: pending objects are saved, taken ones deleted, old ones dropped at load", "[key_store]") {
  using ids = std::vector<std::pair<std::string, std::int64_t>>;
  ledger_file f;
  record_pending_objects(f.path, "batch", {{"batch_1", true}, {"batch_2", true}, {"batch_3", true}}, 1'000);
  record_pending_objects(f.path, "batch", {{"batch_2", false}, {"batch_4", true}}, 5'000);
  record_pending_objects(f.path, "response", {{"resp_1", true}}, 5'000);
  // An id that knows its creating call's start keeps that, not the time it was saved.
  record_pending_objects(f.path, "response", {{"resp_2", true, 4'200}}, 6'000);
  CHECK(load_pending_objects(f.path, "batch", 0) == ids{{"batch_1", 1'000}, {"batch_3", 1'000}, {"batch_4", 5'000}});
  CHECK(load_pending_objects(f.path, "batch", 2'000) == ids{{"batch_4", 5'000}});
  CHECK(load_pending_objects(f.path, "batch", 0) == ids{{"batch_4", 5'000}});  // the old ones are gone
  CHECK(load_pending_objects(f.path, "response", 0) == ids{{"resp_2", 4'200}, {"resp_1", 5'000}});
}
