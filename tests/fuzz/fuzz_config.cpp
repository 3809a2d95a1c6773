// libFuzzer target: the configuration loader (core/config: load_config_string, validate) and the
// router built from what it accepts (core/upstream_router). The input is a tollgate.yaml text.
// Invariants: a bad file fails only with config_error naming the file (anything else escaping is
// a crash at start-up instead of a file:line message); an accepted file holds the values the
// proxy relies on without re-checking: every upstream URL parses as the relay parses it, routes
// name existing upstreams, limits and timeouts are positive, and a routing plan only lists
// upstreams that exist, fit the API and appear once.
#include <cmath>
#include <set>
#include <string>

#include "core/config.hpp"
#include "core/http_rules.hpp"
#include "core/upstream_router.hpp"
#include "fuzz_common.hpp"

namespace {

using namespace tollgate;

void check_upstream(const upstream_config& u) {
  const auto url = parse_upstream_url(u.url);
  FUZZ_CHECK(url.has_value());
  FUZZ_CHECK(!url->host.empty() && url->port != 0);
  FUZZ_CHECK(url->base_path.starts_with("/"));
  FUZZ_CHECK(!u.name.empty());
  FUZZ_CHECK(std::isfinite(u.price_multiplier) && u.price_multiplier > 0);
  FUZZ_CHECK(u.connect_timeout.count() > 0 && u.first_byte_timeout.count() > 0 && u.idle_timeout.count() > 0 &&
             u.total_timeout.count() > 0 && u.pool_idle_timeout.count() > 0);
  FUZZ_CHECK(u.breaker_failures >= 1);
}

void check_plans(const config& cfg, std::string_view seed) {
  const auto ups = effective_upstreams(cfg);
  FUZZ_CHECK(!ups.empty());
  const upstream_router router(ups, cfg.routes);
  // Models from the routes themselves (glob patterns are ids too), plus a few real ones.
  std::vector<std::string> models = {"gpt-4.1", "claude-sonnet-4-5", "", std::string(seed.substr(0, 64))};
  for (const auto& r : cfg.routes) models.push_back(r.model);
  std::uint64_t random = 0x9e3779b97f4a7c15ULL;
  for (const auto& m : models) {
    for (std::string_view path : {"/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"}) {
      random = random * 6364136223846793005ULL + 1442695040888963407ULL;
      const auto plan = router.plan(path, m, random);
      std::set<std::uint16_t> seen;
      for (auto i : plan.order) {
        FUZZ_CHECK(i < ups.size());
        FUZZ_CHECK(seen.insert(i).second);  // never the same upstream twice in one plan
        FUZZ_CHECK(ups[i].protocol == upstream_protocol::openai || path.starts_with("/v1/messages"));
      }
    }
  }
}

void check_config(const config& cfg, std::string_view text) {
  FUZZ_CHECK(cfg.source_file == "fuzz.yaml");
  FUZZ_CHECK(cfg.workers >= 0 && cfg.workers <= 1024);
  FUZZ_CHECK(cfg.max_body_bytes > 0 && cfg.max_header_bytes > 0 && cfg.max_parse_bytes > 0);
  FUZZ_CHECK(cfg.header_timeout.count() > 0 && cfg.body_timeout.count() > 0 && cfg.keepalive_timeout.count() > 0 &&
             cfg.drain_timeout.count() > 0 && cfg.ledger_flush_interval.count() > 0);
  FUZZ_CHECK(cfg.ledger_batch_rows > 0 && cfg.ledger_queue_capacity > 0);
  FUZZ_CHECK(cfg.forecast.history_days >= 1 && cfg.forecast.history_days <= 60);

  std::set<std::string> names;
  for (const auto& u : effective_upstreams(cfg)) {
    check_upstream(u);
    FUZZ_CHECK(names.insert(u.name).second);
  }
  for (const auto& r : cfg.routes)
    for (const auto& name : r.upstreams) FUZZ_CHECK(names.contains(name));
  check_plans(cfg, text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  config cfg;
  try {
    cfg = load_config_string(text, "fuzz.yaml");
  } catch (const config_error& e) {
    FUZZ_CHECK(std::string_view(e.what()).starts_with("fuzz.yaml"));
    return 0;
  }
  check_config(cfg, text);
  try {
    validate(cfg);
  } catch (const config_error& e) {
    FUZZ_CHECK(std::string_view(e.what()).starts_with("fuzz.yaml"));
    return 0;
  }
  check_config(cfg, text);
  return 0;
}
