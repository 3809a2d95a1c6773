// stated_rates: per-token bounds learned from the costs relays state (no sockets).
#include <catch2/catch.hpp>

#include <limits>
#include <string>

#include "core/stated_rates.hpp"

using tollgate::stated_rates;

TEST_CASE("stated rates: each bound is the smallest cost per token, and holds the true price", "[stated]") {
  // A relay billing $1 / 1M input and $4 / 1M output.
  const auto bill = [](std::int64_t in, std::int64_t out) { return (in * 1.0 + out * 4.0) / 1e6; };
  stated_rates s;
  CHECK_FALSE(s.bound("qwen/qwen3").has_value());
  s.observe("openrouter", true, "qwen/qwen3", 20, 200, bill(20, 200));
  auto b = s.bound("Qwen/Qwen3");  // names compare without case
  REQUIRE(b.has_value());
  // One call: input <= cost / 20, output <= cost / 200; both above the true prices.
  CHECK(b->input == Approx(bill(20, 200) / 20));
  CHECK(b->output == Approx(bill(20, 200) / 200));
  CHECK(b->output >= 4.0 / 1e6);
  // A long prompt with a short answer pins the input price, a long answer the output price.
  s.observe("openrouter", true, "qwen/qwen3", 100'000, 1, bill(100'000, 1));
  s.observe("openrouter", true, "qwen/qwen3", 10, 50'000, bill(10, 50'000));
  b = s.bound("qwen/qwen3");
  REQUIRE(b.has_value());
  CHECK(b->input >= 1.0 / 1e6);
  CHECK(b->input <= 1.0001 / 1e6);
  CHECK(b->output >= 4.0 / 1e6);
  CHECK(b->output <= 4.001 / 1e6);
}

TEST_CASE("stated rates: a side nothing pinned has no bound, and old generations are forgotten", "[stated]") {
  stated_rates s;
  CHECK_FALSE(s.bound("m").has_value());
  s.observe("u", true, "m", 0, 100, 0.001);  // an answer without a prompt bounds only the output
  REQUIRE(s.bound("m").has_value());
  CHECK(s.bound("m")->input == std::numeric_limits<double>::infinity());
  CHECK(s.bound("m")->output == Approx(1e-5));
  // A cost needs a rate for each side it uses.
  CHECK_FALSE(s.bound("m")->cost(10, 10).has_value());
  CHECK(s.bound("m")->cost(0, 10) == Approx(1e-4));
  // An embedding model's calls pin the input alone; a cost without completion tokens needs no output rate.
  s.observe("u", true, "embed", 1000, 0, 0.00002);
  CHECK(s.bound("embed")->output == std::numeric_limits<double>::infinity());
  CHECK(s.bound("embed")->cost(500, 0) == Approx(0.00001));
  CHECK(s.bound("embed")->cost(0, 0) == 0);
  s.observe("u", true, "m", 100, 0, 0.0001);
  REQUIRE(s.bound("m").has_value());
  CHECK(s.bound("m")->input == Approx(1e-6));
  CHECK(s.bound("m")->output == Approx(1e-5));
  // Bad figures are no observation.
  s.observe("u", true, "m", 100, 100, -1);
  s.observe("u", true, "m", 100, 100, std::numeric_limits<double>::quiet_NaN());
  CHECK(s.bound("m")->input == Approx(1e-6));
  // The relay doubles its prices: within two generations the old, lower bounds are gone.
  for (std::uint32_t i = 0; i < 2 * stated_rates::kGeneration; ++i) s.observe("u", true, "m", 100, 100, 0.004);
  CHECK(s.bound("m")->input == Approx(4e-5));
  CHECK(s.bound("m")->output == Approx(4e-5));
  CHECK(s.models() == 2);
}

// OpenRouter serves a model from several providers at different prices: the reservation must
// hold the dearest route seen, not the cheapest.
TEST_CASE("stated rates: a model served by several providers is bounded by the dearest one", "[stated]") {
  stated_rates s;
  // "Cheap" bills $1 / $4 per 1M, "Dear" $3 / $12.
  const auto bill = [](double in_price, double out_price, std::int64_t in, std::int64_t out) {
    return (static_cast<double>(in) * in_price + static_cast<double>(out) * out_price) / 1e6;
  };
  s.observe("openrouter", true, "m", 100'000, 1, bill(1, 4, 100'000, 1), "Cheap");
  s.observe("openrouter", true, "m", 1, 100'000, bill(1, 4, 1, 100'000), "Cheap");
  REQUIRE(s.bound("m").has_value());
  CHECK(s.bound("m")->input == Approx(1e-6).epsilon(1e-3));
  CHECK(s.bound("m")->output == Approx(4e-6).epsilon(1e-3));
  // One call through the dear provider: its ratios are above its prices, and above the cheap
  // provider's bounds, so they bound the model (the smallest ratio over both would not hold it).
  s.observe("openrouter", true, "m", 1000, 1000, bill(3, 12, 1000, 1000), "Dear");
  CHECK(s.bound("m")->input == Approx(bill(3, 12, 1000, 1000) / 1000));
  CHECK(s.bound("m")->output == Approx(bill(3, 12, 1000, 1000) / 1000));
  // More calls pin the dear provider's prices; names compare without case.
  s.observe("openrouter", true, "m", 100'000, 1, bill(3, 12, 100'000, 1), "dear");
  s.observe("openrouter", true, "m", 1, 100'000, bill(3, 12, 1, 100'000), "DEAR");
  CHECK(s.bound("m")->input == Approx(3e-6).epsilon(1e-3));
  CHECK(s.bound("m")->output == Approx(12e-6).epsilon(1e-3));
  // A side that only one provider pinned is bounded by that one.
  stated_rates half;
  half.observe("u", true, "m", 100, 100, 0.0002, "A");  // input <= 2e-6, output <= 2e-6
  half.observe("u", true, "m", 0, 100, 0.01, "B");       // B pins only its output: <= 1e-4
  REQUIRE(half.bound("m").has_value());
  CHECK(half.bound("m")->input == Approx(2e-6));
  CHECK(half.bound("m")->output == Approx(1e-4));
  // The relay stops routing to the dear provider: after 512 calls of the model without it, the
  // cheap provider's bounds alone hold the model. Routed there again, it starts afresh.
  for (std::uint32_t i = 0; i < 2 * stated_rates::kGeneration; ++i) {
    const std::int64_t in = i % 2 == 0 ? 100'000 : 1, out = i % 2 == 0 ? 1 : 100'000;
    s.observe("openrouter", true, "m", in, out, bill(1, 4, in, out), "Cheap");
  }
  CHECK(s.bound("m")->input == Approx(1e-6).epsilon(1e-3));
  CHECK(s.bound("m")->output == Approx(4e-6).epsilon(1e-3));
  s.observe("openrouter", true, "m", 1000, 1000, bill(3, 12, 1000, 1000), "Dear");
  CHECK(s.bound("m")->output == Approx(bill(3, 12, 1000, 1000) / 1000));
  // At most kMaxProviders providers per model are learned.
  stated_rates many;
  for (std::size_t i = 0; i < stated_rates::kMaxProviders + 4; ++i)
    many.observe("u", true, "m", 100, 100, 0.0001 * static_cast<double>(i + 1), "p" + std::to_string(i));
  CHECK(many.bound("m")->output == Approx(0.0001 * stated_rates::kMaxProviders / 100));
}

// The ledger keeps no provider: rows read back count as provider "", and reading a day of them
// while calls are served must not age out the providers those calls named.
TEST_CASE("stated rates: history read back from the ledger never ages out the providers seen live", "[stated]") {
  stated_rates s;
  s.observe("openrouter", true, "m", 100, 100, 0.003, "Dear");  // each side <= 3e-5 per token
  for (int i = 0; i < 3000; ++i) s.replay("openrouter", true, "m", 100, 100, 0.0001);
  REQUIRE(s.bound("m").has_value());
  CHECK(s.bound("m")->input == Approx(3e-5));
  // Replayed history alone bounds a model until live calls name their providers; it ages out
  // like any provider once 512 live calls have passed without it.
  stated_rates fresh;
  for (int i = 0; i < 3000; ++i) fresh.replay("openrouter", true, "m", 100, 100, 0.003);
  CHECK(fresh.bound("m")->input == Approx(3e-5));
  for (std::uint32_t i = 0; i < 2 * stated_rates::kGeneration; ++i) fresh.observe("openrouter", true, "m", 100, 100, 0.0001, "Cheap");
  CHECK(fresh.bound("m")->input == Approx(1e-6));
  CHECK(fresh.learned().front().providers == 1);
  // Rows that name their provider (ledger schema 5) are replayed under it: a dear route read back
  // holds the bound above a cheap one read after it, and ages out once 512 live calls pass it by.
  stated_rates named;
  named.replay("openrouter", true, "m", 100, 100, 0.003, "Dear");
  for (int i = 0; i < 3000; ++i) named.replay("openrouter", true, "m", 100, 100, 0.0001, "Cheap");
  CHECK(named.bound("m")->input == Approx(3e-5));
  CHECK(named.learned().front().providers == 2);
  for (std::uint32_t i = 0; i < 2 * stated_rates::kGeneration; ++i) named.observe("openrouter", true, "m", 100, 100, 0.0001, "cheap");
  CHECK(named.bound("m")->input == Approx(1e-6));
  CHECK(named.learned().front().providers == 1);
}

TEST_CASE("stated rates: what a hard budget reserves at, and what is shown of it", "[stated]") {
  constexpr double inf = std::numeric_limits<double>::infinity();
  // Nothing learned: the table's dearest prices (per 1M) as per-token rates; no table, no rate.
  auto r = stated_rates::reserve_rates(std::nullopt, 150, 600);
  CHECK(r.input == Approx(150e-6));
  CHECK(r.output == Approx(600e-6));
  CHECK(stated_rates::reserve_rates(std::nullopt, 0, 0).input == inf);
  // Learned bounds below the cap stand; above it, or unpinned, the cap does.
  r = stated_rates::reserve_rates(stated_rates::rates{1e-6, 1e-3}, 150, 600);
  CHECK(r.input == Approx(1e-6));
  CHECK(r.output == Approx(600e-6));
  r = stated_rates::reserve_rates(stated_rates::rates{1e-6, inf}, 0, 0);
  CHECK(r.input == Approx(1e-6));
  CHECK(r.output == inf);
  stated_rates s;
  s.observe("openrouter", true, "Zeta/Model", 100, 100, 0.0002, "A");
  s.observe("openrouter", true, "zeta/model", 100, 100, 0.0004, "B");
  s.observe("litellm", false, "alpha", 100, 0, 0.0001);
  const auto models = s.learned();
  REQUIRE(models.size() == 2);
  CHECK(models[0].model == "alpha");
  CHECK(models[0].providers == 1);
  CHECK(models[0].bound.output == inf);
  CHECK(models[1].model == "zeta/model");
  CHECK(models[1].providers == 2);
  CHECK(models[1].bound.input == Approx(4e-6));
  const auto ups = s.stating_upstreams();
  REQUIRE(ups.size() == 2);
  CHECK(ups[0].name == "litellm");
  CHECK_FALSE(ups[0].streams);
  CHECK(ups[1].name == "openrouter");
  CHECK(ups[1].streams);
}

TEST_CASE("stated rates: which upstreams state costs, and where", "[stated]") {
  stated_rates s;
  CHECK_FALSE(s.states_costs("litellm", false));
  s.observe("litellm", false, "m", 10, 10, 0.001);  // a header on a whole reply: not for streams
  CHECK(s.states_costs("litellm", false));
  CHECK_FALSE(s.states_costs("litellm", true));
  // A call whose usage carries no cost (Anthropic's Messages API): a header, whole replies only.
  CHECK(s.states_costs("litellm", false, true));
  CHECK_FALSE(s.states_costs("litellm", true, true));
  s.mark_upstream("openrouter-only-usage", true);
  CHECK(s.states_costs("openrouter-only-usage", false));
  CHECK_FALSE(s.states_costs("openrouter-only-usage", false, true));
  s.mark_upstream("litellm", true);
  CHECK(s.states_costs("litellm", true));
  s.mark_upstream("openrouter", true);
  CHECK(s.states_costs("openrouter", true));
  CHECK(s.states_costs("openrouter", false));
  CHECK(stated_rates::known_relay("openrouter.ai"));
  CHECK(stated_rates::known_relay("api.perplexity.ai"));
  CHECK_FALSE(stated_rates::known_relay("notopenrouter.ai"));
  CHECK_FALSE(stated_rates::known_relay("openrouter.ai.evil.example"));
  CHECK_FALSE(stated_rates::known_relay("api.holysheep.ai"));
}
