// Per-minute traffic buckets (requests, prompt and completion tokens, USD) kept in memory from
// usage records, for the forecaster and for calendar-window spend. Fixed-size rings: memory is
// bounded and independent of uptime. One writer (the ledger thread, after each committed batch)
// and any number of readers (the forecaster thread); every call holds one mutex briefly.
#pragma once
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/usage_record.hpp"

namespace tollgate {

// Sums over one bucket. Counts are doubles (exact up to 2^53) so prorated sums need no casts.
struct traffic_bucket {
  double requests = 0;
  double prompt_tokens = 0;      // includes cached and cache-write tokens
  double completion_tokens = 0;  // includes reasoning tokens
  double cost_usd = 0;
  traffic_bucket& operator+=(const traffic_bucket& o) noexcept;
  traffic_bucket scaled(double f) const noexcept;
  bool empty() const noexcept { return requests == 0 && prompt_tokens == 0 && completion_tokens == 0 && cost_usd == 0; }
};

struct aggregator_options {
  // History of the total: one-minute buckets for `total_minutes` (default 14 days, 20,160
  // buckets, 630 KiB) and five-minute buckets for `total_coarse_days` (35 days: any calendar
  // month plus a margin, 10,080 buckets, 315 KiB).
  std::size_t total_minutes = 14 * 1440;
  std::size_t total_coarse_days = 35;
  // History per priced model (and "other"): one-minute buckets for 25 hours (the longest
  // local day) and fifteen-minute buckets for 35 days: 150 KiB per model, allocated when the
  // model is first seen. 15 minutes still aligns with every current UTC offset.
  std::size_t model_minutes = 25 * 60;
  std::size_t model_coarse_days = 35;
};

class aggregator {
 public:
  static constexpr std::int64_t no_data = std::numeric_limits<std::int64_t>::min();

  // `models`: the priced model names (the price table's entries); any other price_model, and
  // an unpriced call, counts as "other", so the per-model set is bounded.
  explicit aggregator(const std::vector<std::string>& models, aggregator_options opts = {});
  ~aggregator();
  // Allows these model names too (a price reload's new entries): their calls from now on get
  // their own series instead of "other". Names already allowed are skipped; none is removed.
  void add_models(const std::vector<std::string>& models);
  aggregator(const aggregator&) = delete;
  aggregator& operator=(const aggregator&) = delete;

  // A call, in the bucket of its start_ms minute (UTC). Never throws.
  void add(const usage_record& rec) noexcept;
  void add(const std::vector<usage_record>& recs) noexcept;
  // Pre-aggregated sums of one minute (Unix minute = seconds / 60), e.g. from the ledger.
  void add(std::int64_t minute, std::string_view price_model, const traffic_bucket& b) noexcept;

  // Sum over [from_s, to_s) of the total, or of one model ("other" included). Uses minute
  // buckets where they are still held, the coarse ones before (prorated at a window edge that
  // is not on a coarse boundary); what is older than both is zero.
  traffic_bucket sum(std::int64_t from_s, std::int64_t to_s, std::string_view model = {}) const;
  // `count` consecutive bins of `bin_s` seconds from `from_s`, with one lock.
  std::vector<traffic_bucket> bins(std::int64_t from_s, std::int64_t bin_s, std::size_t count,
                                   std::string_view model = {}) const;

  // Oldest minute whose data is still held (minute or coarse ring) and newest minute with data;
  // no_data before the first record.
  std::int64_t first_minute() const;
  std::int64_t newest_minute() const;
  // Oldest minute the one-minute ring of the total still holds (no_data before any record).
  std::int64_t first_fine_minute() const;
  // Records older than every ring (dropped). Counted, not an error.
  std::uint64_t dropped() const;
  std::size_t memory_bytes() const;

  const aggregator_options& options() const noexcept { return opts_; }

 private:
  struct series_rings;
  series_rings& rings_for(std::string_view model);          // mu_ held
  const series_rings* find(std::string_view model) const;   // mu_ held
  void add_locked(std::int64_t minute, std::string_view model, const traffic_bucket& b);

  aggregator_options opts_;
  mutable std::mutex mu_;
  std::unique_ptr<series_rings> total_;
  std::unordered_map<std::string, std::unique_ptr<series_rings>> models_;  // created when first seen
  std::vector<std::string> names_;  // allowed model labels, sorted
  std::uint64_t dropped_ = 0;
};

}  // namespace tollgate
