// The registry of background responses awaiting their metered retrieval (core/pending_responses).
#include <catch2/catch.hpp>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "core/pending_responses.hpp"
#include "core/video_memory.hpp"

using tollgate::is_finished_response;
using tollgate::pending_responses;

TEST_CASE("pending_responses: an id is taken once, and only if it was added", "[pending_responses]") {
  pending_responses p;
  CHECK_FALSE(p.take("resp_1"));
  p.add("resp_1");
  p.add("resp_1");  // a repeat is one entry
  p.add("");        // no id, nothing to remember
  CHECK(p.size() == 1);
  CHECK(p.contains("resp_1"));
  CHECK(p.take("resp_1"));
  CHECK_FALSE(p.take("resp_1"));
  CHECK_FALSE(p.contains("resp_1"));
}

TEST_CASE("pending_responses: an id keeps its creating call's start, for the prices of then",
          "[pending_responses]") {
  pending_responses p;
  p.track_changes();
  p.add("batch_1", 1'700'000'000'000);
  p.add("batch_2");  // unknown
  std::int64_t created = 0;
  CHECK(p.take("batch_1", &created));
  CHECK(created == 1'700'000'000'000);
  CHECK(p.take("batch_2", &created));
  CHECK(created == -1);
  CHECK_FALSE(p.take("batch_1", &created));
  const auto changes = p.take_changes();
  REQUIRE(changes.size() == 4);
  CHECK((changes[0].id == "batch_1" && changes[0].added && changes[0].created_ms == 1'700'000'000'000));
  CHECK((changes[2].id == "batch_1" && !changes[2].added));
}

TEST_CASE("pending_responses: memory is bounded, the oldest ids go first", "[pending_responses]") {
  pending_responses p(3);
  for (int i = 0; i < 10; ++i) p.add("resp_" + std::to_string(i));
  CHECK(p.size() == 3);
  CHECK_FALSE(p.contains("resp_6"));
  for (int i = 7; i < 10; ++i) CHECK(p.contains("resp_" + std::to_string(i)));
  // Taken ids age out of the order too: adding and taking forever stays bounded.
  for (int i = 0; i < 1000; ++i) {
    p.add("x" + std::to_string(i));
    CHECK(p.take("x" + std::to_string(i)));
  }
  CHECK(p.size() <= 3);
}

TEST_CASE("pending_responses: concurrent retrievals of one finished response meter it once",
          "[pending_responses]") {
  pending_responses p;
  p.add("resp_race");
  std::atomic<int> wins{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) threads.emplace_back([&] { wins += p.take("resp_race") ? 1 : 0; });
  for (auto& t : threads) t.join();
  CHECK(wins == 1);
}

TEST_CASE("pending_responses: finished statuses", "[pending_responses]") {
  for (const char* s : {"completed", "failed", "incomplete", "cancelled"}) CHECK(is_finished_response(s));
  for (const char* s : {"queued", "in_progress", "", "COMPLETED"}) CHECK_FALSE(is_finished_response(s));
}

TEST_CASE("pending_responses: changes are logged once tracked, aged-out ids as removed", "[pending_responses]") {
  pending_responses p(2);
  p.add("before");  // not tracked yet: loaded from the database, say
  p.track_changes();
  p.add("a");
  p.add("b");       // three ids for two places: "before" ages out
  CHECK(p.take("b"));
  CHECK_FALSE(p.take("zzz"));
  const auto ch = p.take_changes();
  REQUIRE(ch.size() == 4);
  CHECK((ch[0].id == "a" && ch[0].added));
  CHECK((ch[1].id == "b" && ch[1].added));
  CHECK((ch[2].id == "before" && !ch[2].added));
  CHECK((ch[3].id == "b" && !ch[3].added));
  CHECK(p.take_changes().empty());
  CHECK(tollgate::is_finished_batch("expired"));
  CHECK_FALSE(tollgate::is_finished_batch("finalizing"));
}

TEST_CASE("video_memory: a video's model, size and length are found by id, and the oldest go past the bound",
          "[pending_responses][media]") {
  tollgate::video_memory v(3);
  CHECK_FALSE(v.find("video_1"));
  v.remember("video_1", {"sora-2-pro", 1792, 1024, 8});
  v.remember("", {"sora-2", 0, 0, 4});                      // no id: nothing to remember
  v.remember(std::string(300, 'x'), {"sora-2", 0, 0, 4});  // not an id anyone will send
  CHECK(v.size() == 1);
  auto f = v.find("video_1");
  REQUIRE(f);
  CHECK(f->model == "sora-2-pro");
  CHECK((f->w == 1792 && f->h == 1024 && f->seconds == 8));
  v.remember("video_1", {"sora-2-pro", 1792, 1024, 12});  // an update, not a second entry
  CHECK(v.find("video_1")->seconds == 12);
  v.remember("video_2", {"sora-2", 720, 1280, 4});
  v.remember("video_3", {"sora-2", 720, 1280, 4});
  v.remember("video_4", {"sora-2", 720, 1280, 4});
  CHECK(v.size() == 3);
  CHECK_FALSE(v.find("video_1"));
  CHECK(v.find("video_4"));
}
