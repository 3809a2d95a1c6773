// Upstream routing (globs, rules, protocol fit, weighted order) and the circuit breaker's states.
#include <catch2/catch.hpp>

#include <map>

#include "core/upstream_router.hpp"

using namespace tollgate;
using namespace std::chrono_literals;

namespace {

upstream_config up(const std::string& name, unsigned weight = 1,
                   upstream_protocol p = upstream_protocol::openai) {
  upstream_config u;
  u.name = name;
  u.weight = weight;
  u.protocol = p;
  return u;
}

std::vector<std::string> names(const upstream_router& r, const route_plan& p) {
  std::vector<std::string> out;
  for (auto i : p.order) out.push_back(r.upstreams()[i].name);
  return out;
}

}  // namespace

TEST_CASE("glob_match: * and ? with case-insensitive ids", "[router]") {
  CHECK(glob_match("*", ""));
  CHECK(glob_match("*", "gpt-4.1"));
  CHECK(glob_match("claude-*", "claude-sonnet-4.5"));
  CHECK(glob_match("claude-*", "Claude-Opus-4"));
  CHECK_FALSE(glob_match("claude-*", "gpt-4.1"));
  CHECK(glob_match("gpt-4.?", "gpt-4.1"));
  CHECK_FALSE(glob_match("gpt-4.?", "gpt-4.10"));
  CHECK(glob_match("*sonnet*", "anthropic/claude-sonnet-4.5"));
  CHECK(glob_match("a*b*c", "a-xx-b-yy-c"));
  CHECK_FALSE(glob_match("a*b*c", "a-xx-c-yy-b"));
  CHECK(glob_match("deepseek-v3.2", "DeepSeek-V3.2"));
}

TEST_CASE("upstream_router: the first matching rule picks upstreams and the rewrite", "[router]") {
  upstream_router r({up("relay"), up("anthropic", 1, upstream_protocol::anthropic), up("deepseek")},
                    {{"claude-*", {"anthropic", "relay"}, ""}, {"cheap-*", {"deepseek"}, "deepseek-v3.2"}});
  SECTION("listed order is the failover order when weights are equal and one fits") {
    auto p = r.plan("/v1/chat/completions", "claude-sonnet-4.5", 1);
    CHECK(names(r, p) == std::vector<std::string>{"relay"});  // anthropic upstream cannot serve chat completions
  }
  SECTION("the anthropic upstream serves /v1/messages") {
    auto p = r.plan("/v1/messages", "claude-sonnet-4.5", 7);
    CHECK(p.order.size() == 2);
  }
  SECTION("rewrite is returned with the rule") {
    auto p = r.plan("/v1/chat/completions", "cheap-anything", 3);
    CHECK(names(r, p) == std::vector<std::string>{"deepseek"});
    CHECK(p.rewrite == "deepseek-v3.2");
  }
  SECTION("no rule: every upstream that fits the API") {
    auto p = r.plan("/v1/embeddings", "text-embedding-3-small", 5);
    CHECK(p.order.size() == 2);
    CHECK(p.rewrite.empty());
  }
  SECTION("count_tokens is part of the Messages API") {
    CHECK(r.plan("/v1/messages/count_tokens", "x", 1).order.size() == 3);
  }
  SECTION("an Anthropic client's other calls (models, files) go to the Anthropic upstreams alone") {
    CHECK(names(r, r.plan("/v1/models", "", 1, true)) == std::vector<std::string>{"anthropic"});
    CHECK(r.plan("/v1/models", "", 1, false).order.size() == 2);  // an OpenAI client's: the others
    CHECK(r.plan("/v1/messages", "m", 1, true).order.size() == 3);
    upstream_router openai_only({up("relay")}, {});
    CHECK(names(openai_only, openai_only.plan("/v1/models", "", 1, true)) == std::vector<std::string>{"relay"});
  }
}

TEST_CASE("upstream_router: weights balance the first pick, zero weight is a backup", "[router]") {
  upstream_router r({up("a", 3), up("b", 1), up("spare", 0)}, {});
  std::map<std::string, int> first;
  for (std::uint64_t i = 0; i < 4000; ++i) {
    auto n = names(r, r.plan("/v1/chat/completions", "m", i * 0x9e3779b97f4a7c15ULL + 17));
    REQUIRE(n.size() == 3);
    CHECK(n.back() == "spare");
    ++first[n.front()];
  }
  CHECK(first["spare"] == 0);
  CHECK(first["a"] == Approx(3000).margin(150));
  CHECK(first["b"] == Approx(1000).margin(150));
}

TEST_CASE("circuit_breaker: closed -> open -> half-open probe -> closed or open again", "[breaker]") {
  circuit_breaker b(3, 10s);
  auto t0 = circuit_breaker::clock::now();
  bool probe = false;
  SECTION("opens after N consecutive failures; a success in between resets the count") {
    b.on_failure(t0, false);
    b.on_failure(t0, false);
    b.on_success(false);
    b.on_failure(t0, false);
    b.on_failure(t0, false);
    CHECK(b.current(t0) == circuit_breaker::state::closed);
    b.on_failure(t0, false);
    CHECK(b.current(t0) == circuit_breaker::state::open);
    CHECK_FALSE(b.allow(t0 + 5s, probe));
  }
  SECTION("after open_for one probe goes through; its success closes the breaker") {
    for (int i = 0; i < 3; ++i) b.on_failure(t0, false);
    CHECK(b.current(t0 + 11s) == circuit_breaker::state::half_open);
    REQUIRE(b.allow(t0 + 11s, probe));
    CHECK(probe);
    bool other = false;
    CHECK_FALSE(b.allow(t0 + 11s, other));  // one probe at a time
    b.on_success(true);
    CHECK(b.current(t0 + 11s) == circuit_breaker::state::closed);
    CHECK(b.allow(t0 + 11s, other));
    CHECK_FALSE(other);
  }
  SECTION("a failed probe opens it again for another open_for") {
    for (int i = 0; i < 3; ++i) b.on_failure(t0, false);
    REQUIRE(b.allow(t0 + 11s, probe));
    b.on_failure(t0 + 11s, true);
    CHECK(b.current(t0 + 12s) == circuit_breaker::state::open);
    CHECK(b.allow(t0 + 22s, probe));
  }
  SECTION("an abandoned probe frees the slot for the next caller") {
    for (int i = 0; i < 3; ++i) b.on_failure(t0, false);
    REQUIRE(b.allow(t0 + 11s, probe));
    b.on_abandon(true);
    CHECK(b.allow(t0 + 11s, probe));
    CHECK(probe);
  }
}
