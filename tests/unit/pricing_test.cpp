// Tests for the price table: YAML and LiteLLM loading, model-id resolution and the cost formula.
#include <catch2/catch.hpp>

#include <string>

#include "core/pricing.hpp"

using namespace tollgate;

namespace {

const std::string source_dir = TOLLGATE_SOURCE_DIR;

price_table shipped_table() {
  price_table t;
  t.load_yaml_file(source_dir + "/config/prices.yaml");
  return t;
}

token_usage usage(std::int64_t prompt, std::int64_t completion, std::int64_t cached = 0,
                  std::int64_t cache_write = 0, std::int64_t cache_write_1h = 0, std::int64_t reasoning = 0) {
  token_usage u;
  u.prompt = prompt;
  u.completion = completion;
  u.cached = cached;
  u.cache_write = cache_write;
  u.cache_write_1h = cache_write_1h;
  u.reasoning = reasoning;
  return u;
}

// The config_error text for a bad YAML document.
std::string yaml_error(const std::string& text) {
  price_table t;
  try {
    t.load_yaml_string(text, "bad.yaml");
  } catch (const config_error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("pricing: the shipped prices.yaml loads with every entry", "[pricing]") {
  const auto t = shipped_table();
  const char* expected[] = {"gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini", "gpt-5",
                            "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini", "gpt-3.5-turbo", "gpt-3.5-turbo-1106",
                            "gpt-3.5-turbo-instruct", "claude-sonnet-4.5", "claude-sonnet-4",
                            "claude-haiku-4.5", "claude-opus-4.1", "claude-opus-4.6", "claude-opus-4.7", "claude-opus-4.8",
                            "claude-opus-5", "claude-opus-5.5", "claude-sonnet-4.6", "claude-sonnet-5", "claude-fable-5",
                            "claude-sonnet-5.5", "claude-haiku-5.5", "claude-fable-5.1", "claude-fable-5.2",
                            "gpt-5.5", "gpt-5.5-pro", "gpt-5.4", "gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.4-pro", "gpt-5.6-sol", "gpt-5.6-terra", "gpt-5.6-luna",
                            "gpt-5.2", "gpt-5.2-pro", "gpt-5.2-codex", "gpt-5.3-codex", "gpt-5.1-codex-max",
                            "gemini-3-flash-preview", "gemini-3.1-flash-lite", "gemini-3.5-flash", "gemini-3.7-flash", "gemini-3.8-flash", "gemini-3.1-pro-preview", "grok-4", "grok-4-fast", "grok-4.1-fast",
                            "grok-code-fast-1", "grok-4.20", "grok-4.3", "grok-4.5", "grok-4.6", "grok-4.7", "deepseek-flash", "deepseek-v4-pro", "deepseek-v3.2", "deepseek-chat",
                            "deepseek-reasoner", "gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite",
                            "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
                            "gpt-5.1", "gpt-5.1-codex", "gpt-5.1-codex-mini", "gpt-5-codex", "gpt-5-chat-latest",
                            "gpt-5-pro", "o3-pro", "o3-mini", "o1", "o1-pro", "o1-mini", "codex-mini-latest",
                            "gpt-4o-2024-05-13", "gpt-4-turbo", "gpt-4", "claude-opus-4.5", "claude-opus-4",
                            "claude-3-7-sonnet", "claude-3-5-haiku", "claude-3-haiku", "gemini-2.0-flash",
                            "gemini-2.0-flash-lite", "gemini-3-pro-preview", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2",
                            "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-mini-tts", "gpt-4o-audio-preview",
                            "gpt-4o-mini-audio-preview", "gpt-audio", "gpt-audio-mini", "gpt-realtime",
                            "gpt-realtime-mini", "gpt-realtime-2", "gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview",
                            "whisper-1", "tts-1", "tts-1-hd", "dall-e-3", "dall-e-2", "sora-2", "sora-2-pro",
                            "minimax-m2.7", "kimi-k3", "kimi-k2.6", "kimi-k2.5", "kimi-k2", "kimi-k2-thinking", "glm-5.3", "glm-5.2", "glm-5.1",
                            "glm-5", "glm-5-turbo", "glm-5v-turbo", "glm-5-code", "glm-4.7", "glm-4.7-flashx",
                            "glm-4.7-flash", "glm-4.6", "glm-4.5", "glm-4.5-x", "glm-4.5-air", "glm-4.5-airx",
                            "glm-4.5-flash", "glm-4-32b-0414-128k", "gpt-5.6-cyber", "gpt-6-astra", "gpt-6-sol",
                            "gpt-6-luna", "gpt-6.1-sol"};
  CHECK(t.size() == std::size(expected));
  for (const char* name : expected) {
    INFO(name);
    const auto* p = t.resolve(name);
    REQUIRE(p != nullptr);
    CHECK(p->name == name);
    CHECK(p->input >= 0);
  }
  CHECK(t.names().size() == t.size());

  SECTION("figures") {
    const auto* sonnet = t.resolve("claude-sonnet-4.5");
    CHECK(sonnet->input == 3.00);
    CHECK(sonnet->cached_input == Approx(0.30));
    CHECK(sonnet->cache_write_5m == 3.75);
    CHECK(sonnet->cache_write_1h == 6.00);
    CHECK(sonnet->long_context_threshold == 200000);
    CHECK(sonnet->long_input == 6.00);
    CHECK(sonnet->long_output == 22.50);
    const auto* gemini = t.resolve("gemini-2.5-pro");
    CHECK(gemini->long_context_threshold == 200000);
    CHECK(gemini->long_cached_input == Approx(0.25));
    CHECK(t.resolve("gpt-4.1-nano")->cached_input == Approx(0.025));
  }
  SECTION("snapshots priced apart from their alias, and ids that resolve to the newer entries") {
    CHECK(t.resolve("gpt-4o-2024-05-13")->name == "gpt-4o-2024-05-13");
    CHECK(t.resolve("gpt-4o-2024-08-06")->name == "gpt-4o");
    CHECK(t.resolve("claude-opus-4-5-20251101")->name == "claude-opus-4.5");
    CHECK(t.resolve("claude-opus-4-20250514")->name == "claude-opus-4");
    CHECK(t.resolve("claude-opus-4-1-20250805")->name == "claude-opus-4.1");
    CHECK(t.resolve("claude-3-7-sonnet-latest")->name == "claude-3-7-sonnet");
    CHECK(t.resolve("gpt-4-turbo-2024-04-09")->name == "gpt-4-turbo");
    CHECK(t.resolve("gpt-4-0613")->name == "gpt-4");
    CHECK(t.resolve("o3-mini-2025-01-31")->name == "o3-mini");
    CHECK(t.resolve("gpt-5.1-2025-11-13")->name == "gpt-5.1");
    CHECK(t.resolve("openai/gpt-5.1-codex")->name == "gpt-5.1-codex");
    CHECK(t.resolve("gemini-3-pro-preview")->long_context_threshold == 200000);
    CHECK(t.resolve("claude-opus-4.5")->output == 25.00);
  }
  SECTION("cached_input defaults to input") {
    CHECK(t.resolve("text-embedding-3-large")->cached_input == Approx(0.13));
    CHECK(t.resolve("text-embedding-3-large")->output == 0);
  }
}

// Kimi and GLM ids as Moonshot, Z.ai and the routers spell them (OpenRouter "moonshotai/kimi-k2",
// "z-ai/glm-4.6", Hugging Face "zai-org/GLM-4.6", dashes for dots), and their cache reads.
TEST_CASE("pricing: Kimi, GLM and Grok ids resolve and bill cache hits at their cached price", "[pricing]") {
  const auto t = shipped_table();
  const std::pair<const char*, const char*> ids[] = {
      {"kimi-k2.6", "kimi-k2.6"},          {"moonshotai/kimi-k2.6", "kimi-k2.6"}, {"kimi-k2-6", "kimi-k2.6"},
      {"kimi-k2-0905-preview", "kimi-k2"}, {"moonshotai/kimi-k2", "kimi-k2"},     {"kimi-k2-instruct-0905", "kimi-k2"},
      {"kimi-k2-thinking", "kimi-k2-thinking"}, {"z-ai/glm-4.6", "glm-4.6"},      {"zai-org/GLM-4.6", "glm-4.6"},
      {"glm-5-1", "glm-5.1"},              {"GLM-4.7-Flash", "glm-4.7-flash"},   {"glm-4.7-flashx", "glm-4.7-flashx"},
      {"glm-4.5-air", "glm-4.5-air"},       {"moonshotai/kimi-k3", "kimi-k3"},    {"xai/grok-4-20", "grok-4.20"},
      {"grok-4.20-0309-reasoning", "grok-4.20"}, {"grok-4.5-latest", "grok-4.5"},   {"MiniMax-M2.7", "minimax-m2.7"},
      {"google/gemini-3.1-pro", "gemini-3.1-pro-preview"}, {"gpt-realtime-2.1", "gpt-realtime-2"},
      {"gpt-realtime-2.1-mini", "gpt-realtime-mini"}, {"gpt-realtime-1.5", "gpt-realtime"}, {"gpt-audio-1.5", "gpt-audio"}};
  for (const auto& [id, entry] : ids) {
    INFO(id);
    const auto* p = t.resolve(id);
    REQUIRE(p != nullptr);
    CHECK(p->name == entry);
  }
  CHECK(t.resolve("kimi-k2.7-code") == nullptr);  // not priced: never guessed from a sibling
  CHECK(t.resolve("glm-4.7-flashy") == nullptr);
  CHECK(t.resolve("MiniMax-M3") == nullptr);

  // 100k prompt tokens of which 80k cache hits, 2k out.
  const auto k26 = compute_cost(t, "kimi-k2.6", usage(100'000, 2'000, 80'000));
  CHECK(k26.priced);
  CHECK(k26.usd == Approx((20'000 * 0.95 + 80'000 * 0.16 + 2'000 * 4.00) / 1e6));
  const auto glm = compute_cost(t, "glm-4.6", usage(100'000, 2'000, 80'000));
  CHECK(glm.usd == Approx((20'000 * 0.60 + 80'000 * 0.11 + 2'000 * 2.20) / 1e6));
  const auto glm53 = compute_cost(t, "glm-5.3", usage(1'000'000, 1'000'000));
  CHECK(glm53.usd == Approx(1.40 + 4.40));
  // Grok 4.5 doubles every rate from 200k prompt tokens.
  CHECK(compute_cost(t, "grok-4.5", usage(199'999, 1'000)).usd == Approx((199'999 * 2.00 + 1'000 * 6.00) / 1e6));
  CHECK(compute_cost(t, "grok-4.5", usage(200'000, 1'000)).usd == Approx((200'000 * 4.00 + 1'000 * 12.00) / 1e6));
  // A free model is priced at $0, not unpriced.
  const auto free = compute_cost(t, "glm-4.7-flash", usage(5'000, 500));
  CHECK(free.priced);
  CHECK(free.usd == 0);
}

// Gemini bills audio input above text (2.5 Flash $1.00 against $0.30); a usage that reports its
// audio tokens (prompt_tokens_details.audio_tokens) is billed so.
TEST_CASE("pricing: Gemini audio input at its own price, 3.1 Flash-Lite priced, 3.8 Flash's intro price ends", "[pricing]") {
  const auto t = shipped_table();
  auto u = usage(100'000, 10'000);
  u.audio_in = 40'000;
  CHECK(compute_cost(t, "gemini-2.5-flash", u).usd == Approx((60'000 * 0.30 + 40'000 * 1.00 + 10'000 * 2.50) / 1e6));
  CHECK(compute_cost(t, "google/gemini-3.1-flash-lite-preview", u).usd ==
        Approx((60'000 * 0.25 + 40'000 * 0.50 + 10'000 * 1.50) / 1e6));
  // Gemini 3.7 and 3.8 Flash leave their introductory prices on 2027-01-01 (00:00 UTC).
  constexpr std::int64_t jan1_2027 = 1798761600000;
  const auto flash38 = [&](std::int64_t ms) { return compute_cost(*t.resolve_at("gemini-3.8-flash", ms), usage(1'000'000, 1'000'000, 500'000)).usd; };
  CHECK(flash38(jan1_2027 - 1) == Approx(0.5 * 0.75 + 0.5 * 0.075 + 3.75));
  CHECK(flash38(jan1_2027) == Approx(0.5 * 1.50 + 0.5 * 0.15 + 7.50));
  // Without an audio count the whole prompt is text, as before.
  CHECK(compute_cost(t, "gemini-2.5-flash", usage(100'000, 10'000)).usd == Approx((100'000 * 0.30 + 10'000 * 2.50) / 1e6));
}

TEST_CASE("pricing: model ids resolve to their base entry", "[pricing]") {
  const auto t = shipped_table();
  auto name_of = [&](std::string_view id) -> std::string {
    const auto* p = t.resolve(id);
    return p ? p->name : "<none>";
  };

  SECTION("alias and date suffixes") {
    CHECK(name_of("gpt-4.1-2025-04-14") == "gpt-4.1");
    CHECK(name_of("gpt-4o-mini-2024-07-18") == "gpt-4o-mini");
    CHECK(name_of("gpt-4o-2024-08-06") == "gpt-4o");
    CHECK(name_of("claude-sonnet-4-5-20250929") == "claude-sonnet-4.5");
    CHECK(name_of("claude-sonnet-4-20250514") == "claude-sonnet-4");
    CHECK(name_of("claude-sonnet-4-5@20250929") == "claude-sonnet-4.5");
    CHECK(name_of("claude-opus-4-1-latest") == "claude-opus-4.1");
    CHECK(name_of("gpt-4o-0613") == "gpt-4o");
    CHECK(name_of("claude-haiku-4-5-20251001") == "claude-haiku-4.5");
  }
  SECTION("provider prefixes and case") {
    CHECK(name_of("openai/gpt-4.1") == "gpt-4.1");
    CHECK(name_of("OpenAI/GPT-4.1") == "gpt-4.1");
    CHECK(name_of("anthropic/claude-haiku-4-5") == "claude-haiku-4.5");
    CHECK(name_of("openrouter/anthropic/claude-sonnet-4.5") == "claude-sonnet-4.5");
    CHECK(name_of("deepseek/deepseek-chat") == "deepseek-chat");
    CHECK(name_of("us.anthropic.claude-sonnet-4-5-20250929-v1:0") == "claude-sonnet-4.5");
    CHECK(name_of("anthropic.claude-opus-4-1-20250805-v1:0") == "claude-opus-4.1");
  }
  SECTION("dash and dot versions are the same model without an alias") {
    price_table small;
    small.load_yaml_string("models:\n  claude-opus-4.5: { input: 5, output: 25 }\n  grok-4-1: { input: 1, output: 2 }\n");
    CHECK(small.resolve("claude-opus-4-5-20251101") != nullptr);
    CHECK(small.resolve("grok-4.1") != nullptr);
  }
  SECTION("a longer name never falls back to a shorter model") {
    CHECK(name_of("gpt-4.1-mini") == "gpt-4.1-mini");
    CHECK(name_of("gpt-4.1-mini-2025-04-14") == "gpt-4.1-mini");
    CHECK(name_of("gpt-4o-mini") == "gpt-4o-mini");
    CHECK(name_of("gpt-5-nano") == "gpt-5-nano");
    CHECK(name_of("gemini-2.5-flash-lite") == "gemini-2.5-flash-lite");
    CHECK(name_of("gpt-4.1-turbo") == "<none>");
    CHECK(name_of("chatgpt-4o-latest") == "<none>");
    CHECK(name_of("ft:gpt-4o-mini-2024-07-18:acme::abc123") == "<none>");
  }
  SECTION("unknown ids are unpriced") {
    CHECK(t.resolve("llama-3-70b") == nullptr);
    CHECK(t.resolve("") == nullptr);
    CHECK(t.resolve("/") == nullptr);
    CHECK(t.resolve("-20250101") == nullptr);
    CHECK(t.resolve(std::string(1000, 'x') + "/gpt-4.1") != nullptr);  // long ids take the heap path
  }
}

TEST_CASE("pricing: cost follows the formula", "[pricing]") {
  const auto t = shipped_table();

  SECTION("gpt-4.1: 1M prompt with 200k cached plus 100k completion is 2.5 USD") {
    const auto r = compute_cost(t, "gpt-4.1", usage(1'000'000, 100'000, 200'000));
    CHECK(r.priced);
    REQUIRE(r.price != nullptr);
    CHECK(r.price->name == "gpt-4.1");
    CHECK(r.usd == Approx(0.8 * 2.00 + 0.2 * 0.50 + 0.1 * 8.00));
    CHECK(r.usd == Approx(2.5));
  }
  SECTION("reasoning tokens are inside completion and billed once") {
    const auto plain = compute_cost(t, "o3", usage(1000, 5000));
    const auto reasoning = compute_cost(t, "o3", usage(1000, 5000, 0, 0, 0, 4000));
    CHECK(reasoning.usd == Approx(plain.usd));
    CHECK(reasoning.usd == Approx((1000 * 2.00 + 5000 * 8.00) / 1e6));
  }
  SECTION("claude-sonnet-4.5 cache reads and 5m/1h writes") {
    // 10k uncached + 50k read + 20k written (15k for 5 min, 5k for 1 h), 2k out.
    const auto r = compute_cost(t, "claude-sonnet-4-5-20250929", usage(80'000, 2'000, 50'000, 20'000, 5'000));
    const double expected = (10'000 * 3.00 + 50'000 * 0.30 + 15'000 * 3.75 + 5'000 * 6.00 + 2'000 * 15.00) / 1e6;
    CHECK(r.usd == Approx(expected));
    CHECK(r.usd == Approx(0.16125));
  }
  SECTION("claude web searches cost $10 per 1,000 on top of the tokens, times the multiplier") {
    auto u = usage(10'000, 1'000);
    const auto plain = compute_cost(t, "claude-sonnet-4.5", u);
    u.web_search = 3;
    const auto searched = compute_cost(t, "claude-sonnet-4.5", u);
    CHECK(searched.usd - plain.usd == Approx(0.03));
    CHECK(compute_cost(t, "claude-haiku-4-5", u, 1.5).usd ==
          Approx(((10'000 * 1.00 + 1'000 * 5.00) / 1e6 + 0.03) * 1.5));
    // OpenAI's hosted web_search tool: $10 per 1,000 calls too; DeepSeek has no such fee.
    CHECK(compute_cost(t, "gpt-4.1", u).usd - compute_cost(t, "gpt-4.1", usage(10'000, 1'000)).usd == Approx(0.03));
    CHECK(compute_cost(t, "deepseek-v3.2", u).usd == Approx(compute_cost(t, "deepseek-v3.2", usage(10'000, 1'000)).usd));
  }
  SECTION("claude-sonnet-4.5 long-context tier above 200k prompt tokens") {
    // 250k prompt: 150k uncached, 80k read, 20k written (all 5 min), 1k out, all at long prices.
    const auto r = compute_cost(t, "claude-sonnet-4.5", usage(250'000, 1'000, 80'000, 20'000));
    const double expected = (150'000 * 6.00 + 80'000 * 0.60 + 20'000 * 6.00 * 1.25 + 1'000 * 22.50) / 1e6;
    CHECK(r.usd == Approx(expected));
    SECTION("exactly at the threshold is still the base tier") {
      const auto base = compute_cost(t, "claude-sonnet-4.5", usage(200'000, 0));
      CHECK(base.usd == Approx(200'000 * 3.00 / 1e6));
    }
    SECTION("1h writes in the long tier cost 2x the long input") {
      const auto w = compute_cost(t, "claude-sonnet-4.5", usage(210'000, 0, 0, 210'000, 210'000));
      CHECK(w.usd == Approx(210'000 * 12.00 / 1e6));
    }
  }
  SECTION("gemini-2.5-pro long tier") {
    const auto r = compute_cost(t, "gemini-2.5-pro", usage(300'000, 10'000, 100'000));
    CHECK(r.usd == Approx((200'000 * 2.50 + 100'000 * 0.25 + 10'000 * 15.00) / 1e6));
  }
  SECTION("deepseek cache hits") {
    const auto r = compute_cost(t, "deepseek-v3.2", usage(100'000, 10'000, 60'000));
    CHECK(r.usd == Approx((40'000 * 0.28 + 60'000 * 0.028 + 10'000 * 0.42) / 1e6));
  }
  SECTION("cache writes default to 1.25x and 2x input on a Claude entry and to input elsewhere") {
    price_table small;
    small.load_yaml_string("models:\n  my-claude: { input: 4, output: 0 }\n  m: { input: 4, output: 0 }\n");
    const auto r = compute_cost(small, "my-claude", usage(3'000'000, 0, 0, 3'000'000, 1'000'000));
    CHECK(r.usd == Approx(2 * 5.0 + 1 * 8.0));
    // OpenAI before GPT-5.6 (and Gemini, DeepSeek) write the cache for free: plain input.
    CHECK(compute_cost(small, "m", usage(3'000'000, 0, 0, 3'000'000, 1'000'000)).usd == Approx(3 * 4.0));
    CHECK(compute_cost(t, "gpt-5.5", usage(10'000, 0, 0, 8'000)).usd == Approx(10'000 * 5.00 / 1e6));
    // GPT-5.6 prices its writes: 1.25x input, reads 0.1x (Terra since 2026-07-30: $2 / $12).
    CHECK(compute_cost(t, "gpt-5.6-terra", usage(10'000, 1'000, 2'000, 8'000)).usd ==
          Approx((8'000 * 2.50 + 2'000 * 0.20 + 1'000 * 12.00) / 1e6));
  }
  SECTION("counters that disagree never bill negative input") {
    const auto r = compute_cost(t, "gpt-4.1", usage(100, 0, 300));
    CHECK(r.usd == Approx(300 * 0.50 / 1e6));
    CHECK(compute_cost(t, "gpt-4.1", usage(-5, -5)).usd == 0);
  }
  SECTION("the upstream multiplier scales the cost") {
    const auto r = compute_cost(t, "gpt-4.1", usage(1'000'000, 100'000, 200'000), 1.5);
    CHECK(r.usd == Approx(3.75));
  }
  SECTION("an unknown model is unpriced, not free") {
    const auto r = compute_cost(t, "llama-3-70b", usage(1000, 1000));
    CHECK_FALSE(r.priced);
    CHECK(r.usd == 0);
    CHECK(r.price == nullptr);
  }
  SECTION("the entry overload") {
    const auto r = compute_cost(*t.resolve("gpt-4o-mini"), usage(1'000'000, 1'000'000));
    CHECK(r.priced);
    CHECK(r.usd == Approx(0.75));
  }
}

TEST_CASE("pricing: absurd prices are refused, so a cost can never be NaN or infinite", "[pricing]") {
  CHECK_THAT(yaml_error("models:\n  m: { input: 1.5e308, output: 1 }\n"), Catch::Contains("bad.yaml:2"));
  price_table t;
  CHECK_THROWS_AS(t.load_litellm_string(R"({"m": {"input_cost_per_token": 1e400, "output_cost_per_token": 1}})", "l.json"),
                  config_error);
  t.load_litellm_string(R"({"huge": {"input_cost_per_token": 1e300, "output_cost_per_token": 1e300}})", "l.json");
  CHECK(t.resolve("huge") == nullptr);  // skipped like an entry without token prices
}

TEST_CASE("pricing: bad YAML is a config_error with file and line", "[pricing]") {
  SECTION("unknown key in an entry") {
    const auto e = yaml_error("models:\n  gpt-4.1:\n    input: 2\n    ouput: 8\n");
    CHECK_THAT(e, Catch::Contains("bad.yaml:4:") && Catch::Contains("ouput"));
  }
  SECTION("unknown key in a flow entry") {
    CHECK_THAT(yaml_error("models:\n  a: { input: 1, output: 2 }\n  b: { input: 1, output: 2, color: red }\n"),
               Catch::Contains("bad.yaml:3:") && Catch::Contains("color"));
  }
  SECTION("unknown key in long_context") {
    CHECK_THAT(yaml_error("models:\n  a:\n    input: 1\n    output: 2\n    long_context:\n      threshold: 10\n"
                          "      input: 2\n      output: 4\n      ceiling: 9\n"),
               Catch::Contains("bad.yaml:9:"));
  }
  SECTION("negative price") {
    CHECK_THAT(yaml_error("models:\n  a: { input: 1, output: 2 }\n  b:\n    input: -1\n    output: 2\n"),
               Catch::Contains("bad.yaml:4:") && Catch::Contains("negative"));
  }
  SECTION("non-numeric price") {
    CHECK_THAT(yaml_error("models:\n  a:\n    input: cheap\n    output: 2\n"), Catch::Contains("bad.yaml:3:"));
    CHECK_THAT(yaml_error("models:\n  a:\n    input: .nan\n    output: 2\n"), Catch::Contains("bad.yaml:3:"));
    CHECK_THAT(yaml_error("models:\n  a:\n    input: [1]\n    output: 2\n"), Catch::Contains("bad.yaml:3:"));
  }
  SECTION("missing price") {
    CHECK_THAT(yaml_error("models:\n  a:\n    input: 1\n"), Catch::Contains("bad.yaml:3:"));
  }
  SECTION("duplicate name") {
    CHECK_THAT(yaml_error("models:\n  a: { input: 1, output: 2 }\n  a: { input: 1, output: 2 }\n"),
               Catch::Contains("bad.yaml:3:") && Catch::Contains("duplicate"));
  }
  SECTION("alias that repeats another name, case-insensitively") {
    CHECK_THAT(yaml_error("models:\n  a: { input: 1, output: 2 }\n  b: { input: 1, output: 2, aliases: [x, A] }\n"),
               Catch::Contains("bad.yaml:3:") && Catch::Contains("duplicate"));
  }
  SECTION("YAML syntax error") {
    CHECK_THAT(yaml_error("models:\n  a: { input: 1, output: 2\n  b: [\n"), Catch::Matches(".*bad\\.yaml:[0-9]+:.*"));
    CHECK_THAT(yaml_error("models:\n  a:\n    input: 1\n   output: 2\n"), Catch::Contains("bad.yaml:4:"));
  }
  SECTION("structure") {
    CHECK_THAT(yaml_error("prices:\n  a: { input: 1, output: 2 }\n"), Catch::Contains("bad.yaml:1:"));
    CHECK_THAT(yaml_error("models: [a, b]\n"), Catch::Contains("bad.yaml:1:"));
    CHECK_THAT(yaml_error("models:\n  a: 1\n"), Catch::Contains("bad.yaml:2:"));
    CHECK_THAT(yaml_error("models:\n  a: { input: 1, output: 2, aliases: b }\n"), Catch::Contains("bad.yaml:2:"));
    CHECK_THAT(yaml_error("models:\n  a:\n    input: 1\n    output: 2\n    long_context: { input: 2, output: 4 }\n"),
               Catch::Contains("bad.yaml:5:"));
    CHECK_THAT(yaml_error("{}"), Catch::Contains("missing 'models'"));
    CHECK(yaml_error("") != "<no error>");
    price_table empty;
    empty.load_yaml_string("models: {}\n");
    CHECK(empty.size() == 0);
  }
  SECTION("a missing file names the file") {
    price_table t;
    CHECK_THROWS_WITH(t.load_yaml_file("/nonexistent/prices.yaml"), Catch::Contains("/nonexistent/prices.yaml"));
  }
  SECTION("a later file may not redefine a name") {
    price_table t;
    t.load_yaml_string("models:\n  a: { input: 1, output: 2 }\n", "one.yaml");
    CHECK_THROWS_AS(t.load_yaml_string("models:\n  A: { input: 1, output: 2 }\n", "two.yaml"), config_error);
  }
}

TEST_CASE("pricing: LiteLLM catalogue fills gaps and YAML wins", "[pricing]") {
  // A YAML table without claude-3-5-haiku (the shipped one has it), so LiteLLM's fills the gap.
  price_table t;
  t.load_yaml_string("models:\n  gpt-4.1: { input: 2.00, cached_input: 0.50, output: 8.00 }\n"
                     "  deepseek-chat: { input: 0.28, cached_input: 0.028, output: 0.42 }\n");
  const auto yaml_size = t.size();
  t.load_litellm_file(source_dir + "/tests/data/litellm_sample.json");

  SECTION("only per-token entries are added") {
    // claude-3-5-haiku, openrouter llama, xai grok-4; not sample_spec, dall-e-3 (per pixel),
    // gpt-4.1 (in YAML) or deepseek/deepseek-chat (YAML has deepseek-chat).
    CHECK(t.size() == yaml_size + 3);
    CHECK(t.resolve("sample_spec") == nullptr);
    CHECK(t.resolve("dall-e-3") == nullptr);
  }
  SECTION("YAML prices win over LiteLLM's") {
    CHECK(t.resolve("gpt-4.1")->input == 2.00);
    CHECK(t.resolve("deepseek/deepseek-chat")->name == "deepseek-chat");
    CHECK(t.resolve("deepseek/deepseek-chat")->input == Approx(0.28));
  }
  SECTION("USD per token becomes USD per 1M") {
    const auto* haiku = t.resolve("claude-3-5-haiku-20241022");
    REQUIRE(haiku != nullptr);
    CHECK(haiku->input == 0.80);
    CHECK(haiku->output == 4.00);
    CHECK(haiku->cached_input == 0.08);
    CHECK(haiku->cache_write_5m == 1.00);
    CHECK(compute_cost(t, "claude-3-5-haiku-20241022", usage(1'000'000, 0)).usd == Approx(0.80));
  }
  SECTION("cached_input defaults to input and the 200k tier is read") {
    const auto* grok = t.resolve("xai/grok-4");
    REQUIRE(grok != nullptr);
    CHECK(grok->cached_input == 0.75);
    CHECK(grok->long_context_threshold == 200000);
    CHECK(grok->long_input == 6.00);
    CHECK(grok->long_output == 30.00);
    const auto* llama = t.resolve("openrouter/meta-llama/llama-3.3-70b-instruct");
    REQUIRE(llama != nullptr);
    CHECK(llama->cached_input == 0.13);
  }
  SECTION("provider-prefixed entries resolve case-insensitively and without the prefix") {
    CHECK(t.resolve("OpenRouter/Meta-Llama/Llama-3.3-70B-Instruct")->name ==
          "openrouter/meta-llama/llama-3.3-70b-instruct");
    CHECK(t.resolve("llama-3.3-70b-instruct")->name == "openrouter/meta-llama/llama-3.3-70b-instruct");
    CHECK(t.resolve("grok-4")->name == "xai/grok-4");
    CHECK(t.resolve("anthropic/Claude-3-5-Haiku-20241022")->name == "claude-3-5-haiku-20241022");
  }
  SECTION("YAML loaded after LiteLLM replaces the LiteLLM entry") {
    t.load_yaml_string("models:\n  grok-4: { input: 2, output: 10 }\n  xai/GROK-4: { input: 2, output: 10 }\n");
    CHECK(t.resolve("xai/grok-4")->name == "xai/GROK-4");
    CHECK(t.resolve("xai/grok-4")->input == 2);
  }
  SECTION("malformed JSON is a config_error with its line") {
    price_table bad;
    CHECK_THROWS_WITH(bad.load_litellm_string("{\n  \"a\": {\n    \"input_cost_per_token\": ,\n", "cat.json"),
                      Catch::Contains("cat.json:3:"));
    CHECK_THROWS_AS(bad.load_litellm_string("[1, 2]", "cat.json"), config_error);
    CHECK_THROWS_AS(bad.load_litellm_file("/nonexistent/litellm.json"), config_error);
  }
}

TEST_CASE("pricing: service tiers (flex, priority) are billed at their own prices", "[pricing]") {
  const auto t = shipped_table();
  auto u = usage(10'000, 2'000, 4'000);  // 6k uncached + 4k cache reads, 2k out
  const auto at = [&](service_tier tier, std::string_view model) {
    auto v = u;
    v.tier = tier;
    return compute_cost(t, model, v).usd;
  };
  const double standard = (6'000 * 1.25 + 4'000 * 0.125 + 2'000 * 10.00) / 1e6;
  SECTION("gpt-5: flex is half, priority has its published prices") {
    CHECK(at(service_tier::none, "gpt-5") == Approx(standard));
    CHECK(at(service_tier::standard, "gpt-5") == Approx(standard));
    CHECK(at(service_tier::flex, "gpt-5-2025-08-07") == Approx(standard / 2));
    CHECK(at(service_tier::priority, "gpt-5") == Approx((6'000 * 2.50 + 4'000 * 0.25 + 2'000 * 20.00) / 1e6));
  }
  SECTION("a tier the entry does not price, or one tollgate does not know, is billed as standard") {
    CHECK(at(service_tier::flex, "gpt-4.1") == Approx(at(service_tier::none, "gpt-4.1")));
    CHECK(at(service_tier::scale, "gpt-5") == Approx(standard));
    CHECK(at(service_tier::other, "gpt-5") == Approx(standard));
    CHECK(at(service_tier::priority, "claude-sonnet-4.5") == Approx(at(service_tier::none, "claude-sonnet-4.5")));
  }
  SECTION("gpt-4.1 priority, with the upstream's multiplier") {
    auto v = u;
    v.tier = service_tier::priority;
    CHECK(compute_cost(t, "gpt-4.1", v, 2.0).usd == Approx(2.0 * (6'000 * 3.50 + 4'000 * 0.875 + 2'000 * 14.00) / 1e6));
  }
  SECTION("a factor scales every token price; a map's cached_input defaults to the entry's ratio") {
    // A Claude entry: unpriced writes default to 1.25x the tier's input.
    price_table p;
    p.load_yaml_string(R"(models:
  claude-m: { input: 4.0, cached_input: 1.0, output: 8.0, cache_write_5m: 5.0, flex: 0.25,
              priority: { input: 6.0, output: 12.0 }, scale: { input: 1.0, cached_input: 0.5, output: 2.0 },
              long_context: { threshold: 100, input: 40, output: 80 } }
)");
    auto v = usage(1'000, 100, 400, 100);  // 500 uncached, 400 read, 100 written (5 min), 100 out
    v.tier = service_tier::flex;  // 1,000 prompt tokens > 100: the factor scales the long tier
    CHECK(compute_cost(p, "claude-m", v).usd == Approx(0.25 * (500 * 40.0 + 400 * 40.0 + 100 * 50.0 + 100 * 80.0) / 1e6));
    v.tier = service_tier::batch;  // the default batch tier is a factor too
    CHECK(compute_cost(p, "claude-m", v).usd == Approx(0.5 * (500 * 40.0 + 400 * 40.0 + 100 * 50.0 + 100 * 80.0) / 1e6));
    auto short_call = usage(90, 10, 40);
    short_call.tier = service_tier::flex;
    CHECK(compute_cost(p, "claude-m", short_call).usd == Approx(0.25 * (50 * 4.0 + 40 * 1.0 + 10 * 8.0) / 1e6));
    short_call.tier = service_tier::priority;  // its own prices; cached 6.0 * 1/4 (the entry's ratio)
    CHECK(compute_cost(p, "claude-m", short_call).usd == Approx((50 * 6.0 + 40 * 1.5 + 10 * 12.0) / 1e6));
    v.tier = service_tier::priority;  // Priority excludes long context: the standard long tier
    CHECK(compute_cost(p, "claude-m", v).usd == Approx((500 * 40.0 + 400 * 40.0 + 100 * 50.0 + 100 * 80.0) / 1e6));
    v.tier = service_tier::scale;  // a map's own prices replace the long tier; writes 1.25x the tier's input
    CHECK(compute_cost(p, "claude-m", v).usd == Approx((500 * 1.0 + 400 * 0.5 + 100 * 1.25 + 100 * 2.0) / 1e6));
    v.tier = service_tier::none;  // 1,000 prompt tokens > 100: the long tier
    CHECK(compute_cost(p, "claude-m", v).usd == Approx((500 * 40.0 + 400 * 40.0 + 100 * 50.0 + 100 * 80.0) / 1e6));
  }
  SECTION("batch: half price unless the entry says otherwise") {
    CHECK(at(service_tier::batch, "gpt-5") == Approx(standard / 2));
    CHECK(at(service_tier::batch, "claude-sonnet-4.5") == Approx(at(service_tier::none, "claude-sonnet-4.5") / 2));
    price_table p;
    p.load_yaml_string("models:\n  m: { input: 4.0, output: 8.0, batch: 0.4 }\n  n: { input: 4.0, output: 8.0 }\n");
    auto v = usage(1'000'000, 1'000'000);
    v.tier = service_tier::batch;
    CHECK(compute_cost(p, "m", v).usd == Approx(0.4 * 12.0));
    CHECK(compute_cost(p, "n", v).usd == Approx(0.5 * 12.0));
    price_table l;
    l.load_litellm_string(R"({"x": {"input_cost_per_token": 4e-6, "output_cost_per_token": 8e-6,
      "input_cost_per_token_batches": 1e-6, "output_cost_per_token_batches": 2e-6}, "y": {"input_cost_per_token": 4e-6,
      "output_cost_per_token": 8e-6}})", "l.json");
    CHECK(compute_cost(l, "x", v).usd == Approx(3.0));
    CHECK(compute_cost(l, "y", v).usd == Approx(6.0));
  }
  SECTION("gpt-image-1: image input tokens at the image price, text at the text price, in any tier") {
    auto v = usage(1'000, 4'160);
    v.image_in = 600;  // an edit: 400 text + 600 image tokens in
    CHECK(compute_cost(t, "gpt-image-1", v).usd == Approx((400 * 5.0 + 600 * 10.0 + 4'160 * 40.0) / 1e6));
    v.tier = service_tier::batch;
    CHECK(compute_cost(t, "gpt-image-1", v).usd == Approx(0.5 * (400 * 5.0 + 600 * 10.0 + 4'160 * 40.0) / 1e6));
    v.tier = service_tier::none;
    CHECK(compute_cost(t, "gpt-4.1", v).usd == Approx((1'000 * 2.0 + 4'160 * 8.0) / 1e6));  // no image price: input
  }
  SECTION("gpt-image-2: image input tokens, their cache reads and image output at its own prices") {
    auto v = usage(1'500, 4'160, 500);
    v.image_in = 600;      // 400 text + 600 image tokens uncached
    v.image_cached = 300;  // of the 500 read from the cache, 300 image tokens
    CHECK(compute_cost(t, "gpt-image-2", v).usd ==
          Approx((400 * 5.0 + 600 * 8.0 + 200 * 1.25 + 300 * 2.0 + 4'160 * 30.0) / 1e6));
  }
  SECTION("gpt-image-1.5 and 2: text output tokens at the text price, the rest at the image price") {
    auto v = usage(1'000, 4'260);
    v.text_out = 100;  // output_tokens_details: 4,160 image + 100 text tokens
    CHECK(compute_cost(t, "gpt-image-2", v).usd == Approx((1'000 * 5.0 + 4'160 * 30.0 + 100 * 10.0) / 1e6));
    CHECK(compute_cost(t, "gpt-image-1.5-2025-12-16", v).usd == Approx((1'000 * 5.0 + 4'160 * 32.0 + 100 * 10.0) / 1e6));
    CHECK(compute_cost(t, "chatgpt-image-latest", v).price == t.resolve("gpt-image-1.5"));
    v.tier = service_tier::batch;  // half price, text and image alike
    CHECK(compute_cost(t, "gpt-image-2", v).usd == Approx(0.5 * (1'000 * 5.0 + 4'160 * 30.0 + 100 * 10.0) / 1e6));
    v.tier = service_tier::none;
    // A model without a text output price bills every output token at `output`; counts past
    // the output are clamped.
    CHECK(compute_cost(t, "gpt-image-1", v).usd == Approx((1'000 * 5.0 + 4'260 * 40.0) / 1e6));
    v.text_out = 99'999;
    CHECK(compute_cost(t, "gpt-image-2", v).usd == Approx((1'000 * 5.0 + 4'260 * 10.0) / 1e6));
  }
  SECTION("audio tokens in and out at the audio prices") {
    auto v = usage(1'000, 500);
    v.audio_in = 700;
    v.audio_out = 400;
    CHECK(compute_cost(t, "gpt-4o-audio-preview", v).usd ==
          Approx((300 * 2.50 + 700 * 40.0 + 100 * 10.0 + 400 * 80.0) / 1e6));
    auto w = usage(1'200, 80);
    w.audio_in = 1'150;  // a transcription: 50 text (prompt) tokens, 1,150 audio tokens
    CHECK(compute_cost(t, "gpt-4o-transcribe", w).usd == Approx((50 * 2.50 + 1'150 * 6.0 + 80 * 10.0) / 1e6));
  }
  SECTION("realtime: text, audio and image tokens and their cache reads each at their own price") {
    // gpt-realtime-mini: text 0.60 / cached 0.06 / out 2.40, audio 10 / cached 0.30 / out 20,
    // image 0.80 / cached 0.08.
    auto v = usage(10'000, 1'000, 6'000);  // 6,000 cache reads of 10,000 tokens in
    v.audio_cached = 5'000;
    v.image_cached = 200;
    v.audio_in = 2'500;  // uncached audio
    v.image_in = 300;    // uncached image
    v.audio_out = 800;
    const double text_in = 10'000 - 6'000 - 2'500 - 300, text_hit = 6'000 - 5'000 - 200;
    CHECK(compute_cost(t, "gpt-realtime-mini", v).usd ==
          Approx((text_in * 0.60 + 2'500 * 10.0 + 300 * 0.80 + text_hit * 0.06 + 5'000 * 0.30 + 200 * 0.08 +
                  200 * 2.40 + 800 * 20.0) / 1e6));
    CHECK(compute_cost(t, "gpt-realtime-2025-08-28", v).usd ==
          Approx((text_in * 4.0 + 2'500 * 32.0 + 300 * 5.0 + text_hit * 0.40 + 5'000 * 0.40 + 200 * 0.50 +
                  200 * 16.0 + 800 * 64.0) / 1e6));
    CHECK(compute_cost(t, "gpt-4o-realtime-preview-2024-12-17", v).price->name == "gpt-4o-realtime-preview");
    // No cached media prices: their cache reads at the text cache-read price.
    CHECK(compute_cost(t, "gpt-4.1", v).usd == Approx((4'000 * 2.0 + 6'000 * 0.50 + 1'000 * 8.0) / 1e6));
    // LiteLLM's audio keys.
    price_table l;
    l.load_litellm_string(R"({"rt": {"input_cost_per_token": 4e-6, "output_cost_per_token": 1.6e-5,
      "cache_read_input_token_cost": 4e-7, "input_cost_per_audio_token": 3.2e-5, "output_cost_per_audio_token": 6.4e-5,
      "cache_read_input_audio_token_cost": 3e-7}})", "l.json");
    auto a = usage(1'000, 100, 600);
    a.audio_cached = 500;
    a.audio_in = 300;
    a.audio_out = 100;
    CHECK(compute_cost(l, "rt", a).usd == Approx((100 * 4.0 + 300 * 32.0 + 100 * 0.4 + 500 * 0.3 + 100 * 64.0) / 1e6));
  }
  SECTION("whisper-1 per minute of audio, tts-1 per character, from the table and from LiteLLM") {
    token_usage a;
    a.audio_ms = 90'500;  // 90.5 s
    CHECK(compute_cost(t, "whisper-1", a).usd == Approx(90.5 / 60 * 0.006));
    token_usage c;
    c.characters = 2'000;
    CHECK(compute_cost(t, "tts-1", c).usd == Approx(2'000 * 15.0 / 1e6));
    CHECK(compute_cost(t, "tts-1-hd", c).usd == Approx(2'000 * 30.0 / 1e6));
    CHECK(compute_cost(t, "gpt-4.1", c).usd == 0);  // no per-character price
    price_table l;
    l.load_litellm_string(R"({"whisper-1": {"mode": "audio_transcription", "input_cost_per_second": 0.0001,
      "output_cost_per_second": 0.0001}, "tts-1": {"mode": "audio_speech", "input_cost_per_character": 1.5e-05}})", "l.json");
    CHECK(compute_cost(l, "whisper-1", a).usd == Approx(90.5 / 60 * 0.006));
    CHECK(compute_cost(l, "tts-1", c).usd == Approx(2'000 * 15.0 / 1e6));
    CHECK_THAT(yaml_error("models:\n  m: { input: 1 }\n"), Catch::StartsWith("bad.yaml:2") && Catch::Contains("per_minute"));
  }
  SECTION("bad tier entries are reported with file:line") {
    CHECK_THAT(yaml_error("models:\n  m: { input: 1, output: 2, flex: { input: 1 } }\n"),
               Catch::StartsWith("bad.yaml:2") && Catch::Contains("flex needs input and output"));
    CHECK_THAT(yaml_error("models:\n  m: { input: 1, output: 2, priority: { input: 1, output: 2, speed: 3 } }\n"),
               Catch::StartsWith("bad.yaml:2") && Catch::Contains("unknown key 'priority.speed'"));
    CHECK_THAT(yaml_error("models:\n  m: { input: 1, output: 2, flex: [1] }\n"),
               Catch::StartsWith("bad.yaml:2") && Catch::Contains("must be a factor"));
    CHECK_THAT(yaml_error("models:\n  m: { input: 1, output: 2, flex: -1 }\n"), Catch::StartsWith("bad.yaml:2"));
    CHECK_THAT(yaml_error("models:\n  m: { input: 1, output: 2, turbo: 2 }\n"),
               Catch::Contains("flex, priority, scale"));
  }
  SECTION("LiteLLM's _flex and _priority prices are read") {
    price_table p;
    p.load_litellm_string(R"({"gpt-x": {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6,
      "cache_read_input_token_cost": 1e-7, "input_cost_per_token_flex": 5e-7, "output_cost_per_token_flex": 2e-6,
      "cache_read_input_token_cost_flex": 5e-8, "input_cost_per_token_priority": 2e-6,
      "output_cost_per_token_priority": 8e-6}})", "l.json");
    auto v = usage(1'000'000, 1'000'000, 500'000);
    v.tier = service_tier::flex;
    CHECK(compute_cost(p, "gpt-x", v).usd == Approx(0.5 * 0.5 + 0.5 * 0.05 + 2.0));
    v.tier = service_tier::priority;  // no priority cache price: the tier's input
    CHECK(compute_cost(p, "gpt-x", v).usd == Approx(0.5 * 2.0 + 0.5 * 2.0 + 8.0));
  }
}

TEST_CASE("pricing: DALL-E images per image and Sora videos per second by size and quality", "[pricing]") {
  const auto t = shipped_table();
  const auto media = [](std::int64_t images, std::int64_t seconds, std::uint16_t w, std::uint16_t h, bool hd = false) {
    token_usage u;
    u.images = images, u.video_seconds = seconds, u.media_w = w, u.media_h = h, u.media_hd = hd;
    return u;
  };
  CHECK(compute_cost(t, "dall-e-3", media(1, 0, 1024, 1024)).usd == Approx(0.04));
  CHECK(compute_cost(t, "dall-e-3", media(2, 0, 1792, 1024, true)).usd == Approx(0.24));
  CHECK(compute_cost(t, "dall-e-3", media(1, 0, 1024, 1792)).usd == Approx(0.08));
  CHECK(compute_cost(t, "dall-e-2", media(3, 0, 512, 512)).usd == Approx(0.054));
  CHECK(compute_cost(t, "dall-e-2", media(1, 0, 256, 256, true)).usd == Approx(0.016));  // no hd price: any quality
  CHECK(compute_cost(t, "sora-2", media(0, 8, 1280, 720)).usd == Approx(0.8));
  CHECK(compute_cost(t, "sora-2", media(0, 4, 0, 0)).usd == Approx(0.4));  // one price for every size
  CHECK(compute_cost(t, "sora-2-pro", media(0, 12, 1792, 1024)).usd == Approx(6.0));
  CHECK(compute_cost(t, "sora-2-pro", media(0, 4, 720, 1280)).usd == Approx(1.2));
  // An output the entry has no price for is unpriced, never $0; so is a model without per-unit prices.
  CHECK_FALSE(compute_cost(t, "dall-e-3", media(1, 0, 512, 512)).priced);
  CHECK_FALSE(compute_cost(t, "dall-e-3", media(1, 0, 0, 0)).priced);
  CHECK_FALSE(compute_cost(t, "sora-2-pro", media(0, 4, 1024, 1024)).priced);
  CHECK_FALSE(compute_cost(t, "gpt-4.1", media(1, 0, 1024, 1024)).priced);
  CHECK_FALSE(compute_cost(t, "dall-e-3", media(0, 4, 1024, 1024)).priced);
  // The upstream's price multiplier applies as to tokens.
  CHECK(compute_cost(t, "dall-e-3", media(1, 0, 1024, 1024), 1.5).usd == Approx(0.06));
  // What a remix of an unknown video reserves per second: sora-2-pro at 1792x1024 ($0.50).
  const auto [priciest, unit] = t.priciest_per_second();
  REQUIRE(priciest != nullptr);
  CHECK(priciest->name == "sora-2-pro");
  CHECK(unit.usd == Approx(0.5));
  CHECK(((unit.w == 1792 && unit.h == 1024) || (unit.w == 1024 && unit.h == 1792)));
  CHECK(price_table().priciest_per_second().first == nullptr);

  SECTION("the most specific price wins") {
    price_table m;
    m.load_yaml_string("models:\n  img: { per_image: { default: 1, hd: 2, 64x64: 3, hd 64x64: 4, standard 32x32: 5 } }\n");
    const auto cost = [&](std::uint16_t w, std::uint16_t h, bool hd) { return compute_cost(m, "img", media(1, 0, w, h, hd)).usd; };
    CHECK(cost(64, 64, true) == 4);
    CHECK(cost(64, 64, false) == 3);
    CHECK(cost(32, 32, false) == 5);
    CHECK(cost(32, 32, true) == 2);
    CHECK(cost(16, 16, false) == 1);
    CHECK(cost(0, 0, true) == 2);
  }
  SECTION("bad per-unit prices are reported with file:line") {
    CHECK_THAT(yaml_error("models:\n  a: { per_image: { 1024x1024: 0.04 } }\n  b: { per_image: { big: 1 } }\n"),
               Catch::StartsWith("bad.yaml:3") && Catch::Contains("'big' is not an output"));
    CHECK_THAT(yaml_error("models:\n  b: { per_image: { hd1024x1024: 1 } }\n"), Catch::StartsWith("bad.yaml:2"));
    CHECK_THAT(yaml_error("models:\n  b: { per_image: { 0x10: 1 } }\n"), Catch::StartsWith("bad.yaml:2"));
    CHECK_THAT(yaml_error("models:\n  b: { per_second: { 8x8: -1 } }\n"),
               Catch::StartsWith("bad.yaml:2") && Catch::Contains("negative"));
    CHECK_THAT(yaml_error("models:\n  b: { per_second: cheap }\n"),
               Catch::StartsWith("bad.yaml:2") && Catch::Contains("USD per second of video"));
    CHECK_THAT(yaml_error("models:\n  b: { per_image: [1] }\n"), Catch::StartsWith("bad.yaml:2"));
    CHECK_THAT(yaml_error("models:\n  b: { per_image: { 8x8: 1, standard 8x8: 2, 8x8: 3 } }\n"),
               Catch::StartsWith("bad.yaml:2"));
  }
  SECTION("from a LiteLLM catalogue: output_cost_per_image and output_cost_per_video_per_second, any size") {
    price_table l;
    l.load_litellm_string(R"({"openai/sora-2": {"mode": "video_generation", "output_cost_per_video_per_second": 0.1},
      "img-model": {"mode": "image_generation", "output_cost_per_image": 0.039},
      "standard/1024-x-1024/dall-e-3": {"mode": "image_generation", "input_cost_per_pixel": 4.0054321e-08, "output_cost_per_pixel": 0.0}})",
                          "l.json");
    CHECK(compute_cost(l, "sora-2", media(0, 8, 1280, 720)).usd == Approx(0.8));
    CHECK(compute_cost(l, "img-model", media(2, 0, 1024, 1024)).usd == Approx(0.078));
    CHECK(l.resolve("standard/1024-x-1024/dall-e-3") == nullptr);  // per pixel: not read
  }
  SECTION("sizes") {
    CHECK(parse_pixel_size("1024x1792") == std::pair<std::uint16_t, std::uint16_t>{1024, 1792});
    CHECK_FALSE(parse_pixel_size("auto"));
    CHECK_FALSE(parse_pixel_size("1024x"));
    CHECK_FALSE(parse_pixel_size("x1024"));
    CHECK_FALSE(parse_pixel_size("70000x1"));
    CHECK_FALSE(parse_pixel_size("10 x 10"));
  }
}

TEST_CASE("pricing: hosted file_search calls cost 2.50 USD per 1000 unless an entry says otherwise", "[pricing]") {
  const auto t = shipped_table();
  token_usage u = usage(3'000, 40);
  u.file_search = 3;
  u.web_search = 1;
  CHECK(compute_cost(t, "gpt-4.1", u).usd == Approx((3'000 * 2.0 + 40 * 8.0) / 1e6 + 1 * 10.0 / 1e3 + 3 * 2.5 / 1e3));
  price_table own;
  own.load_yaml_string("models:\n  m: { input: 1, output: 2, file_search: 0 }\n");
  CHECK(compute_cost(own, "m", u).usd == Approx((3'000 * 1.0 + 40 * 2.0) / 1e6));
  CHECK_THAT(yaml_error("models:\n  m: { input: 1, output: 2, file_search: -1 }\n"), Catch::StartsWith("bad.yaml:2"));
}

TEST_CASE("pricing: Anthropic fast mode and US-only inference are priced by what the usage reports", "[pricing]") {
  const auto t = shipped_table();
  // 600k prompt (no long tier on the 2026 models: 1M context at standard prices): 500k uncached,
  // 80k cache reads, 20k 5-minute writes; 10k out.
  auto u = usage(600'000, 10'000, 80'000, 20'000);
  const double standard = (500'000 * 5.00 + 80'000 * 0.50 + 20'000 * 6.25 + 10'000 * 25.00) / 1e6;
  CHECK(compute_cost(t, "claude-opus-4-6", u).usd == Approx(standard));
  CHECK(compute_cost(t, "claude-opus-5", u).usd == Approx(standard));
  auto fast = u;
  fast.tier = service_tier::fast;
  CHECK(compute_cost(t, "claude-opus-4-6", fast).usd == Approx(6 * standard));  // $30 / $150
  CHECK(compute_cost(t, "claude-opus-4-7", fast).usd == Approx(6 * standard));
  CHECK(compute_cost(t, "claude-opus-4-8", fast).usd == Approx(2 * standard));  // $10 / $50
  CHECK(compute_cost(t, "claude-opus-5", fast).usd == Approx(2 * standard));
  // An entry without a fast tier bills a fast call at its standard prices (a floor).
  CHECK(compute_cost(t, "claude-sonnet-4.5", fast).usd == Approx(compute_cost(t, "claude-sonnet-4.5", u).usd));
  auto us = u;
  us.geo_us = true;
  CHECK(compute_cost(t, "claude-opus-4-6", us).usd == Approx(1.1 * standard));
  us.tier = service_tier::fast;
  CHECK(compute_cost(t, "claude-opus-4-6", us).usd == Approx(1.1 * 6 * standard));
  // Per-request fees are not tokens: a web search costs the same wherever inference ran.
  auto search = usage(0, 0);
  search.web_search = 2;
  search.geo_us = true;
  CHECK(compute_cost(t, "claude-opus-4-6", search).usd == Approx(0.02));
  // Entries without us_inference (older models, which refuse inference_geo) ignore the flag.
  auto old = usage(100'000, 0);
  old.geo_us = true;
  CHECK(compute_cost(t, "claude-sonnet-4.5", old).usd == Approx(0.30));
  // The 2026 ids resolve by their dash spellings and dated snapshots.
  CHECK(t.resolve("claude-opus-5-5")->name == "claude-opus-5.5");
  CHECK(t.resolve("claude-opus-5-20260724")->name == "claude-opus-5");
  CHECK(t.resolve("claude-sonnet-4-6")->name == "claude-sonnet-4.6");
  CHECK(t.resolve("claude-fable-5")->name == "claude-fable-5");
  CHECK(t.resolve("claude-opus-5-5")->cached_input == Approx(0.20));  // 0.05x input on Opus 5.5
  CHECK_THAT(yaml_error("models:\n  m: { input: 1, output: 2, us_inference: 0.5 }\n"),
             Catch::StartsWith("bad.yaml:2") && Catch::Contains("between 1 and 10"));
  price_table p;
  p.load_yaml_string("models:\n  m: { input: 4.0, output: 8.0, fast: { input: 24, output: 48 } }\n");
  auto v = usage(1'000'000, 1'000'000);
  v.tier = service_tier::fast;
  CHECK(compute_cost(p, "m", v).usd == Approx(72.0));
}

TEST_CASE("pricing: the 2026 OpenAI models resolve by snapshot and are priced per tier", "[pricing]") {
  const auto t = shipped_table();
  // Dated snapshots find their entry; gpt-5.4-mini is not gpt-5.4.
  CHECK(t.resolve("gpt-5.5-2026-04-23")->name == "gpt-5.5");
  CHECK(t.resolve("gpt-5.4-mini-2026-03-17")->name == "gpt-5.4-mini");
  // GPT-5.2 and the Codex models of the 2026 rate card; gpt-5.2-codex is not gpt-5.2.
  CHECK(t.resolve("gpt-5.2-2025-12-11")->name == "gpt-5.2");
  CHECK(t.resolve("gpt-5.2-chat-latest")->name == "gpt-5.2");
  CHECK(t.resolve("openai/gpt-5.3-codex")->name == "gpt-5.3-codex");
  CHECK(t.resolve("gpt-5.1-codex-max")->name == "gpt-5.1-codex-max");
  CHECK(t.resolve("gemini-3.1-pro-preview")->long_context_threshold == 200000);
  CHECK(t.resolve("google/gemini-3.5-flash-preview")->name == "gemini-3.5-flash");
  // xAI: dated and reasoning / non-reasoning ids; 200k prompt tokens and above at the long prices.
  CHECK(t.resolve("grok-4-0709")->name == "grok-4");
  CHECK(t.resolve("xai/grok-4-1-fast-non-reasoning")->name == "grok-4.1-fast");
  CHECK(t.resolve("grok-4-fast-reasoning")->name == "grok-4-fast");
  CHECK(compute_cost(t, "grok-4.7", usage(199'999, 1'000)).usd == Approx((199'999 * 2.00 + 1'000 * 6.00) / 1e6));
  CHECK(compute_cost(t, "grok-4.7", usage(200'000, 1'000)).usd == Approx((200'000 * 4.00 + 1'000 * 12.00) / 1e6));
  auto p52 = usage(100'000, 10'000, 40'000);
  CHECK(compute_cost(t, "gpt-5.2", p52).usd == Approx((60'000 * 1.75 + 40'000 * 0.175 + 10'000 * 14.00) / 1e6));
  p52.tier = service_tier::flex;
  CHECK(compute_cost(t, "gpt-5.2", p52).usd == Approx(0.5 * (60'000 * 1.75 + 40'000 * 0.175 + 10'000 * 14.00) / 1e6));
  CHECK(compute_cost(t, "gpt-5.2-pro", usage(1'000'000, 1'000'000)).usd == Approx(21.00 + 168.00));
  auto p55 = usage(100'000, 10'000, 40'000);
  CHECK(compute_cost(t, "gpt-5.5", p55).usd == Approx((60'000 * 5.00 + 40'000 * 0.50 + 10'000 * 30.00) / 1e6));
  p55.tier = service_tier::priority;
  CHECK(compute_cost(t, "gpt-5.5", p55).usd == Approx((60'000 * 12.50 + 40'000 * 1.25 + 10'000 * 75.00) / 1e6));
  p55.tier = service_tier::flex;
  CHECK(compute_cost(t, "gpt-5.5", p55).usd == Approx(0.5 * (60'000 * 5.00 + 40'000 * 0.50 + 10'000 * 30.00) / 1e6));
}

TEST_CASE("pricing: gpt-5.4 and later bill a prompt over 272k tokens at 2x input and 1.5x output on standard batch and flex", "[pricing]") {
  const auto t = shipped_table();
  const auto cost = [&](std::string_view model, std::int64_t prompt, std::int64_t cached, service_tier tier) {
    auto u = usage(prompt, 10'000, cached);
    u.tier = tier;
    return compute_cost(t, model, u).usd;
  };
  // 272,000 prompt tokens: standard; one more: the whole call at the long prices.
  CHECK(cost("gpt-5.4", 272'000, 0, service_tier::none) == Approx((272'000 * 2.50 + 10'000 * 15.00) / 1e6));
  CHECK(cost("gpt-5.4", 272'001, 0, service_tier::none) == Approx((272'001 * 5.00 + 10'000 * 22.50) / 1e6));
  const double long54 = (200'000 * 5.00 + 100'000 * 0.50 + 10'000 * 22.50) / 1e6;
  CHECK(cost("gpt-5.4-2026-03-05", 300'000, 100'000, service_tier::standard) == Approx(long54));
  CHECK(cost("gpt-5.4", 300'000, 100'000, service_tier::flex) == Approx(long54 / 2));
  CHECK(cost("gpt-5.4", 300'000, 100'000, service_tier::batch) == Approx(long54 / 2));
  // Priority excludes long context: a long call is billed at the standard long prices.
  CHECK(cost("gpt-5.4", 300'000, 100'000, service_tier::priority) == Approx(long54));
  CHECK(cost("gpt-5.4", 200'000, 100'000, service_tier::priority) ==
        Approx((100'000 * 5.00 + 100'000 * 0.50 + 10'000 * 30.00) / 1e6));  // not long: Priority's own
  CHECK(cost("gpt-5.5", 400'000, 0, service_tier::none) == Approx((400'000 * 10.00 + 10'000 * 45.00) / 1e6));
  CHECK(cost("gpt-5.5-pro", 400'000, 0, service_tier::batch) == Approx(0.5 * (400'000 * 60.00 + 10'000 * 270.00) / 1e6));
  CHECK(cost("gpt-5.4-pro", 100'000, 0, service_tier::none) == Approx((100'000 * 30.00 + 10'000 * 180.00) / 1e6));
  // GPT-5.6 doubles its cache writes too; the 400k-context gpt-5.4-mini has no long tier.
  auto written = usage(300'000, 10'000, 50'000, 150'000);
  CHECK(compute_cost(t, "gpt-5.6-terra", written).usd ==
        Approx((100'000 * 4.00 + 50'000 * 0.40 + 150'000 * 5.00 + 10'000 * 18.00) / 1e6));
  CHECK(cost("gpt-5.4-mini", 300'000, 0, service_tier::none) == Approx((300'000 * 0.75 + 10'000 * 4.50) / 1e6));
  // A hard budget reserves a long prompt at the long prices.
  auto worst = usage(300'000, 10'000);
  CHECK(reserve_cost(*t.resolve("gpt-5.5"), worst, 0, 1.0) == Approx((300'000 * 10.00 + 10'000 * 45.00) / 1e6));
}

TEST_CASE("pricing: a LiteLLM entry's lowest above_Nk_tokens band is its long tier", "[pricing]") {
  price_table l;
  l.load_litellm_string(R"({
    "gpt-x": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1.5e-5, "cache_read_input_token_cost": 2.5e-7,
              "input_cost_per_token_above_272k_tokens": 5e-6, "output_cost_per_token_above_272k_tokens": 2.25e-5,
              "cache_read_input_token_cost_above_272k_tokens": 5e-7, "input_cost_per_token_above_272k_tokens_priority": 1e-5},
    "qwen-x": {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6,
               "input_cost_per_token_above_256k_tokens": 3e-6, "output_cost_per_token_above_256k_tokens": 9e-6,
               "input_cost_per_token_above_128k_tokens": 2e-6, "output_cost_per_token_above_128k_tokens": 6e-6},
    "bad-x": {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6, "input_cost_per_token_above_k_tokens": 3e-6,
              "input_cost_per_token_above_0k_tokens": 3e-6, "input_cost_per_token_above_64k_tokens": "free"}})",
                        "l.json");
  const auto* g = l.resolve("gpt-x");
  REQUIRE(g != nullptr);
  CHECK(g->long_context_threshold == 272000);
  CHECK(g->long_input == 5.0);
  CHECK(g->long_cached_input == 0.5);
  CHECK(g->long_output == 22.5);
  const auto* q = l.resolve("qwen-x");
  REQUIRE(q != nullptr);
  CHECK(q->long_context_threshold == 128000);
  CHECK(q->long_input == 2.0);
  CHECK(q->long_output == 6.0);
  CHECK(l.resolve("bad-x")->long_context_threshold == 0);
}

TEST_CASE("pricing: the Claude models of late 2026 resolve and Haiku 5.5 bills a prompt over 100k at its long tier", "[pricing]") {
  const auto t = shipped_table();
  CHECK(t.resolve("claude-sonnet-5-5-20261001")->name == "claude-sonnet-5.5");
  CHECK(t.resolve("anthropic/claude-mythos-5-1")->name == "claude-fable-5.1");
  CHECK(t.resolve("claude-mythos-5-20260701")->name == "claude-fable-5");
  CHECK(t.resolve("claude-mythos-5.2")->name == "claude-fable-5.2");
  // Haiku 5.5: 10k read, 20k written for 5 minutes, 70k uncached (100k: the short band), 1k out.
  auto h = usage(100'000, 1'000, 10'000, 20'000);
  CHECK(compute_cost(t, "claude-haiku-5-5", h).usd ==
        Approx((70'000 * 0.10 + 10'000 * 0.01 + 20'000 * 0.125 + 1'000 * 0.50) / 1e6));
  h.prompt = 100'001;  // one token more: every token at the long prices
  CHECK(compute_cost(t, "claude-haiku-5-5", h).usd ==
        Approx((70'001 * 0.50 + 10'000 * 0.05 + 20'000 * 0.625 + 1'000 * 2.50) / 1e6));
  h.tier = service_tier::batch;  // the batch half of the long band
  CHECK(compute_cost(t, "claude-haiku-5-5", h).usd ==
        Approx(0.5 * (70'001 * 0.50 + 10'000 * 0.05 + 20'000 * 0.625 + 1'000 * 2.50) / 1e6));
  // Fable 5.1 reads its cache at 0.025x; Opus 5.5 fast mode at 2x.
  CHECK(compute_cost(t, "claude-fable-5.1", usage(1'000'000, 0, 1'000'000)).usd == Approx(0.25));
  auto fast = usage(1'000'000, 1'000'000);
  fast.tier = service_tier::fast;
  CHECK(compute_cost(t, "claude-opus-5.5", fast).usd == Approx(2 * (4.00 + 20.00)));
}

TEST_CASE("pricing: DeepSeek's off-peak hours are billed at the off_peak tier", "[pricing]") {
  const auto t = shipped_table();
  const auto* flash = t.resolve("deepseek-v4-flash");
  REQUIRE(flash != nullptr);
  CHECK(flash->name == "deepseek-flash");
  // 2026-12-07 (a Monday) at a given UTC time, in Unix ms.
  const auto at = [](int h, int m) { return (std::int64_t{1796601600} + h * 3600 + m * 60) * 1000; };
  CHECK_FALSE(off_peak_at(*flash, at(1, 0)));   // peak starts at 01:00
  CHECK_FALSE(off_peak_at(*flash, at(3, 59)));
  CHECK(off_peak_at(*flash, at(4, 0)));          // and ends at 04:00
  CHECK(off_peak_at(*flash, at(5, 30)));
  CHECK_FALSE(off_peak_at(*flash, at(9, 59)));
  CHECK(off_peak_at(*flash, at(10, 0)));
  CHECK(off_peak_at(*flash, at(0, 59)));
  CHECK(off_peak_at(*flash, at(23, 0)));
  CHECK_FALSE(off_peak_at(*flash, 0));           // no start time: the entry's prices
  // Peak hours are Monday to Friday's: Saturday and Sunday are off-peak all day, Friday is not.
  constexpr std::int64_t day = 86'400'000;
  CHECK(off_peak_at(*flash, at(2, 0) - 2 * day));        // Saturday 2026-12-05 02:00
  CHECK(off_peak_at(*flash, at(7, 0) - day));            // Sunday 07:00
  CHECK_FALSE(off_peak_at(*flash, at(2, 0) - 3 * day));  // Friday 02:00
  CHECK_FALSE(off_peak_at(*flash, at(9, 0) + 4 * day));  // Friday 2026-12-11 09:00
  CHECK(off_peak_at(*flash, at(9, 0) + 5 * day));        // Saturday 09:00
  CHECK(off_peak_at(*t.resolve("deepseek-v4-pro"), at(2, 0) - day));
  // The staged history: deepseek-chat on V3.2 prices until 2026-07-24, then V4 Flash's launch
  // prices (no schedule), peak hours every day from 2026-08-16, weekdays only from 2026-08-24,
  // V4.1 Flash's prices from 2026-09-10; deepseek-flash the same from V4 Flash's launch.
  const auto chat = [&](std::int64_t ms) { return t.resolve_at("deepseek-chat", ms); };
  constexpr std::int64_t jul24 = 1784851200000, aug16 = 1786838400000, aug24 = 1787529600000, sep10 = 1788998400000;
  CHECK(chat(jul24 - 1)->input == Approx(0.28));
  CHECK(chat(jul24)->input == Approx(0.14));
  CHECK_FALSE(off_peak_at(*chat(jul24), jul24 + 12 * 3'600'000));  // no schedule yet
  CHECK(chat(aug16)->output == Approx(1.32));
  CHECK_FALSE(off_peak_at(*chat(aug16), aug16 + 2 * 3'600'000));  // Sunday 02:00: peak every day then
  CHECK(off_peak_at(*chat(aug24), aug24 + 5 * day + 2 * 3'600'000));  // Saturday 08-29 02:00
  CHECK(chat(sep10)->input == Approx(0.30));
  CHECK(chat(at(2, 0))->output == Approx(1.20));
  CHECK(t.resolve_at("deepseek-reasoner", sep10)->input == Approx(0.30));
  CHECK(t.resolve_at("deepseek-v4-flash", aug16 - 1)->output == Approx(0.28));
  CHECK_FALSE(off_peak_at(*t.resolve("gpt-4.1"), at(5, 0)));  // no schedule
  auto u = usage(100'000, 10'000, 40'000);
  const double peak = (60'000 * 0.30 + 40'000 * 0.006 + 10'000 * 1.20) / 1e6;
  CHECK(compute_cost(t, "deepseek-flash", u).usd == Approx(peak));
  u.tier = service_tier::off_peak;
  CHECK(compute_cost(t, "deepseek-flash", u).usd == Approx(peak / 2));
  CHECK(compute_cost(t, "deepseek-v4-pro", u).usd == Approx((60'000 * 0.66 + 40'000 * 0.022 + 10'000 * 1.98) / 1e6));
  CHECK(compute_cost(t, "gpt-4.1", u).usd == Approx(compute_cost(t, "gpt-4.1", usage(100'000, 10'000, 40'000)).usd));
  CHECK(to_string(service_tier::off_peak) == "off_peak");
  CHECK(parse_service_tier("off_peak") == service_tier::off_peak);

  SECTION("a schedule and its tier come together, and ranges are checked with their line") {
    price_table p;
    p.load_yaml_string("models:\n  m: { input: 1, output: 2, off_peak: { input: 0.25, output: 1 },\n"
                       "       peak_hours_utc: [\"00:00-08:30\", \"20:00-24:00\"] }\n");
    const auto* m = p.resolve("m");
    CHECK(off_peak_at(*m, at(8, 30)));
    CHECK_FALSE(off_peak_at(*m, at(23, 59)));
    auto v = usage(1'000'000, 1'000'000);
    v.tier = service_tier::off_peak;
    CHECK(compute_cost(p, "m", v).usd == Approx(1.25));
    const auto error = [](const std::string& yaml) {
      price_table bad;
      try {
        bad.load_yaml_string(yaml, "p.yaml");
      } catch (const config_error& e) {
        return std::string(e.what());
      }
      return std::string("no error");
    };
    CHECK_THAT(error("models:\n  m: { input: 1, output: 2, off_peak: 0.5 }\n"), Catch::Contains("needs peak_hours_utc"));
    CHECK_THAT(error("models:\n  m: { input: 1, output: 2, peak_hours_utc: [\"01:00-02:00\"] }\n"),
               Catch::Contains("needs an off_peak tier"));
    for (const char* range : {"04:00-01:00", "1:00-4:00", "01:00-25:00", "01:60-02:00", "01:00-01:00", "abc"})
      CHECK_THAT(error(std::string("models:\n  m: { input: 1, output: 2, off_peak: 0.5,\n  peak_hours_utc: [\"") +
                       range + "\"] }\n"),
                 Catch::Contains("p.yaml:3:") && Catch::Contains("is not a range HH:MM-HH:MM"));
    CHECK_THAT(error("models:\n  m: { input: 1, output: 2, off_peak: 0.5, peak_hours_utc: \"01:00-02:00\" }\n"),
               Catch::Contains("must be a list"));
    // Peak days: names or their first three letters, any case, each once; they need the hours.
    price_table d;
    d.load_yaml_string("models:\n  m: { input: 1, output: 2, off_peak: 0.5, peak_hours_utc: [\"00:00-24:00\"],\n"
                       "       peak_days_utc: [Sunday, WED] }\n");
    const auto* dm = d.resolve("m");
    constexpr std::int64_t day = 86'400'000;
    CHECK_FALSE(off_peak_at(*dm, at(12, 0) - day));     // Sunday
    CHECK(off_peak_at(*dm, at(12, 0)));                 // Monday
    CHECK(off_peak_at(*dm, at(12, 0) + day));           // Tuesday
    CHECK_FALSE(off_peak_at(*dm, at(0, 0) + 2 * day));  // Wednesday 00:00
    CHECK(off_peak_at(*dm, at(0, 0) + 3 * day));        // Thursday 00:00
    CHECK_THAT(error("models:\n  m: { input: 1, output: 2, off_peak: 0.5, peak_hours_utc: [\"01:00-02:00\"],\n"
                     "  peak_days_utc: [mon, funday] }\n"),
               Catch::Contains("p.yaml:3:") && Catch::Contains("'funday' is not a weekday"));
    CHECK_THAT(error("models:\n  m: { input: 1, output: 2, off_peak: 0.5, peak_hours_utc: [\"01:00-02:00\"],\n"
                     "  peak_days_utc: [mon, Monday] }\n"),
               Catch::Contains("'monday' is listed twice"));
    CHECK_THAT(error("models:\n  m: { input: 1, output: 2, off_peak: 0.5, peak_hours_utc: [\"01:00-02:00\"],\n"
                     "  peak_days_utc: [] }\n"),
               Catch::Contains("must be a list of UTC weekdays"));
    CHECK_THAT(error("models:\n  m: { input: 1, output: 2,\n  peak_days_utc: [mon] }\n"),
               Catch::Contains("p.yaml:3:") && Catch::Contains("peak_days_utc needs peak_hours_utc"));
  }
}

// OpenAI repriced GPT-5.6 twice (Terra and Luna on 2026-07-30, Sol's promotion on 2026-08-21): the
// shipped table stages both as `changes`, so a call is billed at the prices of the day it started.
TEST_CASE("pricing: the shipped GPT-5.6 repricings and GPT-6 prices", "[pricing]") {
  constexpr std::int64_t jul30 = 1785369600000;  // 2026-07-30T00:00:00Z
  constexpr std::int64_t aug21 = 1787270400000;  // 2026-08-21T00:00:00Z
  const auto t = shipped_table();
  const auto u = usage(100'000, 10'000, 20'000, 30'000);  // 50k uncached, 20k read, 30k written
  const auto at = [&](std::string_view model, std::int64_t ms, service_tier tier = service_tier::none) {
    auto v = u;
    v.tier = tier;
    const model_price* p = t.resolve_at(model, ms);
    REQUIRE(p != nullptr);
    return compute_cost(*p, v).usd;
  };
  const auto bill = [](double in, double hit, double write, double out) {
    return (50'000 * in + 20'000 * hit + 30'000 * write + 10'000 * out) / 1e6;
  };
  CHECK(at("gpt-5.6-luna", jul30 - 1) == Approx(bill(1.00, 0.10, 1.25, 6.00)));
  CHECK(at("gpt-5.6-luna", jul30) == Approx(bill(0.20, 0.02, 0.25, 1.20)));
  CHECK(at("gpt-5.6-terra", jul30 - 1) == Approx(bill(2.50, 0.25, 3.125, 15.00)));
  CHECK(at("gpt-5.6-terra", jul30) == Approx(bill(2.00, 0.20, 2.50, 12.00)));
  CHECK(at("gpt-5.6-sol", aug21 - 1) == Approx(bill(5.00, 0.50, 6.25, 30.00)));
  CHECK(at("gpt-5.6", aug21) == Approx(bill(4.00, 0.40, 5.00, 20.00)));  // the alias routes to Sol
  // Priority (Fast mode) a flat 2x, Flex half, on the version in effect.
  CHECK(at("gpt-5.6-sol", aug21, service_tier::priority) == Approx(2 * bill(4.00, 0.40, 5.00, 20.00)));
  CHECK(at("gpt-5.6-terra", jul30, service_tier::flex) == Approx(0.5 * bill(2.00, 0.20, 2.50, 12.00)));
  // A long prompt at the version's long tier; Priority excludes long context (standard long prices).
  auto big = usage(300'000, 10'000);
  auto big_priority = big;
  big_priority.tier = service_tier::priority;
  CHECK(compute_cost(*t.resolve_at("gpt-5.6-sol", aug21), big_priority).usd ==
        Approx((300'000 * 8.00 + 10'000 * 30.00) / 1e6));
  auto big_flex = big;
  big_flex.tier = service_tier::flex;
  CHECK(compute_cost(*t.resolve_at("gpt-5.6-sol", aug21), big_flex).usd ==
        Approx(0.5 * (300'000 * 8.00 + 10'000 * 30.00) / 1e6));
  CHECK(compute_cost(*t.resolve_at("gpt-5.6-sol", aug21), big).usd == Approx((300'000 * 8.00 + 10'000 * 30.00) / 1e6));
  CHECK(compute_cost(*t.resolve_at("gpt-5.6-sol", aug21 - 1), big).usd == Approx((300'000 * 10.00 + 10'000 * 45.00) / 1e6));
  // GPT-6.
  CHECK(at("gpt-6-astra", aug21) == Approx(bill(10.00, 1.00, 12.50, 50.00)));
  CHECK(at("openai/gpt-6-sol", aug21) == Approx(bill(2.00, 0.20, 2.50, 10.00)));
  CHECK(at("gpt-6-luna", aug21) == Approx(bill(0.10, 0.01, 0.125, 0.50)));
  CHECK(at("gpt-6.1-sol", aug21) == Approx(bill(2.00, 0.10, 2.50, 10.00)));
  CHECK(compute_cost(t, "gpt-6-astra", big).usd == Approx((300'000 * 20.00 + 10'000 * 75.00) / 1e6));
  CHECK(t.resolve("gpt-6") == nullptr);  // the bare id's target is not published: never guessed
}

TEST_CASE("pricing: scheduled price changes bill each call at the prices in effect when it started", "[pricing]") {
  constexpr std::int64_t jan1_2027 = 1798761600000;  // 2027-01-01T00:00:00Z
  price_table t;
  t.load_yaml_string("models:\n"
                     "  m:\n"
                     "    input: 0.50\n"
                     "    output: 3.00\n"
                     "    flex: 0.5\n"
                     "    priority: { input: 0.90, output: 5.40 }\n"
                     "    long_context: { threshold: 200000, input: 1.00, output: 4.50 }\n"
                     "    aliases: [m-latest]\n"
                     "    changes:\n"
                     "      - { from: 2027-01-01, input: 1.00, output: 6.00 }\n"
                     "      - { from: \"2027-03-01T12:30Z\", cached_input: 0.05 }\n"
                     "  plain: { input: 1, output: 2 }\n");
  const model_price* base = t.resolve_at("m", jan1_2027 - 1);
  const model_price* jan = t.resolve_at("m-latest", jan1_2027);
  const model_price* mar = t.resolve_at("M", jan1_2027 + 59LL * 86'400'000 + 45'000'000);  // 03-01 12:30
  REQUIRE(base != nullptr);
  REQUIRE(jan != nullptr);
  REQUIRE(mar != nullptr);
  CHECK(base->input == 0.50);
  CHECK(base->output == 3.00);
  CHECK(jan->input == 1.00);
  CHECK(jan->output == 6.00);
  CHECK(jan->name == "m");  // one entry, one metrics label
  CHECK(jan->cached_input == 1.00);  // the default follows the new input price
  CHECK(mar->input == 1.00);         // a later change keeps the earlier one's prices
  CHECK(mar->cached_input == 0.05);
  CHECK(t.resolve_at("m", jan1_2027 + 59LL * 86'400'000 + 45'000'000 - 1)->cached_input == 1.00);
  // A tier given as a factor scales the new prices; one given as prices and the long tier stay.
  CHECK(jan->tier(service_tier::flex)->input == 0.50);
  CHECK(base->tier(service_tier::flex)->input == 0.25);
  CHECK(jan->tier(service_tier::priority)->output == 5.40);
  CHECK(jan->tier(service_tier::batch)->output == 3.00);  // the default batch half price, of the new prices
  CHECK(jan->long_context_threshold == 200000);
  CHECK(jan->long_output == 4.50);
  CHECK(jan->changes.empty());
  // resolve() is the version in effect now; an entry without changes is itself at any time.
  CHECK(t.resolve("plain") == t.resolve_at("plain", 0));
  const auto u = usage(100'000, 10'000);
  CHECK(compute_cost(*base, u).usd == Approx(0.05 + 0.03));
  CHECK(compute_cost(*jan, u).usd == Approx(0.10 + 0.06));
  CHECK(&price_at(*t.resolve_at("m", 0), jan1_2027) == jan);
  // A call that bills several models (a Realtime session, a message batch's results) prices each
  // at its version in effect when the call started too.
  const std::vector<std::pair<std::string, token_usage>> by_model = {{"m", u}, {"plain", u}};
  CHECK(compute_cost(t, by_model, 1.0, jan1_2027 - 1).usd == Approx(0.05 + 0.03 + 0.10 + 0.02));
  CHECK(compute_cost(t, by_model, 1.0, jan1_2027).usd == Approx(0.10 + 0.06 + 0.10 + 0.02));
  CHECK(compute_cost(t, by_model, 1.0, jan1_2027).price == jan);

  const auto entry = [](const std::string& changes) {
    return "models:\n  m:\n    input: 1\n    output: 2\n    changes:\n" + changes;
  };
  for (const char* from : {"2027-13-01", "2027-02-30", "27-01-01", "2027-01-01T25:00Z", "2027-01-01T10:00",
                           "2027-01-01 10:00Z", "tomorrow", "1969-12-31"})
    CHECK_THAT(yaml_error(entry(std::string("      - { from: \"") + from + "\", input: 2 }\n")),
               Catch::Contains("bad.yaml:6:") && Catch::Contains("from must be a UTC date"));
  CHECK_THAT(yaml_error(entry("      - { from: 2027-02-01, input: 2 }\n      - { from: 2027-01-01, input: 3 }\n")),
             Catch::Contains("bad.yaml:7:") && Catch::Contains("in time order"));
  CHECK_THAT(yaml_error(entry("      - { input: 2 }\n")), Catch::Contains("bad.yaml:6:") && Catch::Contains("needs 'from'"));
  CHECK_THAT(yaml_error(entry("      - { from: 2027-01-01 }\n")), Catch::Contains("at least one price"));
  CHECK_THAT(yaml_error(entry("      - { from: 2027-01-01, aliases: [x] }\n")), Catch::Contains("belongs to the entry"));
  CHECK_THAT(yaml_error(entry("      - { from: 2027-01-01,\n          inptu: 2 }\n")),
             Catch::Contains("bad.yaml:7:") && Catch::Contains("unknown key 'inptu' in a change"));
  CHECK_THAT(yaml_error(entry("      - { from: 2027-01-01, input: -2 }\n")), Catch::Contains("bad.yaml:6:"));
  CHECK_THAT(yaml_error(entry("      from: 2027-01-01\n")), Catch::Contains("must be a list"));
  // A change may bring in what the entry did not have, and is checked as an entry is.
  CHECK_THAT(yaml_error(entry("      - { from: 2027-01-01, off_peak: 0.5 }\n")), Catch::Contains("needs peak_hours_utc"));
  price_table ok;
  ok.load_yaml_string(entry("      - { from: \"2027-01-01T08:00:30Z\", off_peak: 0.5, peak_hours_utc: [\"01:00-02:00\"] }\n"));
  CHECK(ok.resolve_at("m", jan1_2027 + 8 * 3'600'000 + 30'000)->tier(service_tier::off_peak) != nullptr);
  CHECK(ok.resolve_at("m", jan1_2027 + 8 * 3'600'000 + 29'999)->tier(service_tier::off_peak) == nullptr);
}

TEST_CASE("pricing: a reservation prices the prompt as written to the cache when the call may write it", "[pricing]") {
  const auto t = shipped_table();
  token_usage w;
  w.prompt = 100'000;
  w.completion = 1'000;
  // Claude writes only when asked: $3 input, $3.75 5-minute writes, $6 1-hour writes, $15 out.
  const model_price& sonnet = *t.resolve("claude-sonnet-4-5");
  CHECK(reserve_cost(sonnet, w, 0) == Approx((100'000 * 3.00 + 1'000 * 15.0) / 1e6));
  CHECK(reserve_cost(sonnet, w, 1) == Approx((100'000 * 3.75 + 1'000 * 15.0) / 1e6));
  CHECK(reserve_cost(sonnet, w, 2) == Approx((100'000 * 6.00 + 1'000 * 15.0) / 1e6));
  CHECK(reserve_cost(sonnet, w, 2, 1.5) == Approx(1.5 * (100'000 * 6.00 + 1'000 * 15.0) / 1e6));
  // GPT-5.6 caches on its own and bills writes at 1.25x input; GPT-5.5 writes at input (no more).
  const model_price& terra = *t.resolve("gpt-5.6-terra");
  CHECK(reserve_cost(terra, w, 0) == Approx((100'000 * 2.00 * 1.25 + 1'000 * 12.0) / 1e6));
  const model_price& g55 = *t.resolve("gpt-5.5");
  CHECK(reserve_cost(g55, w, 1) == Approx(compute_cost(g55, w).usd));
  // The tier the call asks for still applies (fast mode: 6x on Opus 4.6, writes included).
  auto fast = w;
  fast.tier = service_tier::fast;
  const model_price& opus = *t.resolve("claude-opus-4-6");
  CHECK(reserve_cost(opus, fast, 2) == Approx(6 * (100'000 * 10.0 + 1'000 * 25.0) / 1e6));
}
