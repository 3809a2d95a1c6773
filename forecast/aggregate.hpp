// Per-request records (from a request log or the ledger) binned into regular series of
// requests, tokens or spend. Pure; the tool parses the files, this file does the arithmetic.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "forecast/series.hpp"

namespace tollgate::forecast {

struct request_event {
  std::int64_t timestamp_ms = 0;  // arrival, unix milliseconds (or ms since trace start)
  double prompt_tokens = 0.0;
  double completion_tokens = 0.0;
  double cost_usd = 0.0;
  std::string model;
};

enum class quantity { requests, prompt_tokens, completion_tokens, total_tokens, cost_usd };

// "requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd".
std::optional<quantity> parse_quantity(std::string_view name) noexcept;
const char* quantity_name(quantity q) noexcept;

// Bins a series may span: 1.9 years of minutes, 19 years of 10-minute bins. The forecaster
// reads ~30,000 bins a second, so this is about half a minute of fitting. Two stray timestamps
// decades apart (a zero, a wrong unit, seconds mixed with milliseconds) would otherwise ask for
// millions of bins and minutes of work on a two-line file.
inline constexpr std::uint64_t max_series_bins = 1'000'000;

// The first and last bins of aggregate_events() hold only part of their width's traffic when
// the records start after the first bin's start or end before the last bin's end: Azure's
// conversation trace ends at 19:14:08, so its 19:14 minute holds 8 seconds of calls, 7 instead
// of ~240, and reads as a 97 % drop that the next bins' forecast follows. An edge bin is
// partial when the records leave more of it uncovered than max(10 % of the bin, 3 mean gaps
// between records): a log cut on a bin boundary keeps both (its gap to the boundary is one
// inter-arrival time), and so does a sparse log, whose bins are mostly empty anyway.
struct edge_bins {
  bool first_partial = false;
  bool last_partial = false;
  double first_covered = 1.0, last_covered = 1.0;  // share of each bin the records cover
};

// Per-request records folded into per-bin sums of one quantity, one record at a time and in
// any order. Memory follows the bins the records span (at most max_series_bins), not their
// number: a year of a busy proxy's ledger, tens of millions of rows, is binned in a few MB
// instead of being held as records. aggregate_events(), bins_spanned() and partial_edge_bins()
// below are this over a span of records; `tollgate-forecast --ledger` feeds it row by row.
// Each bin adds its records in the order they are added, so the sums are aggregate_events()'s
// bit for bit.
class event_bins {
 public:
  event_bins(std::int64_t bin_s, quantity q) noexcept : bin_s_(bin_s), q_(q) {}
  void add(const request_event& e);

  std::int64_t bin_s() const noexcept { return bin_s_; }
  std::uint64_t records() const noexcept { return records_; }
  // Bins from the first to the last record's bin; 0 without records.
  std::uint64_t bins_spanned() const noexcept;
  // From the first to the last record's bin, bins aligned to multiples of bin_s since the
  // epoch, a bin without records a real zero. Without records, or over max_series_bins: an
  // empty series (bins_spanned() tells the two apart).
  series result() const;
  edge_bins edges() const noexcept;

 private:
  std::int64_t bin_s_;
  quantity q_;
  std::int64_t first_ms_ = 0, last_ms_ = 0;  // the earliest and latest record
  std::uint64_t records_ = 0;
  // Sums of bins base_, base_ + 1, ...: a superset of the records' bins. Bins before the first
  // are added with headroom (as a vector's capacity after its end), so records read newest
  // first cost amortised O(1) each, not a shift of every bin. Emptied for good once the span
  // passes max_series_bins.
  std::int64_t base_ = 0;
  std::vector<double> sums_;
  bool too_long_ = false;
};

// Number of `bin_s` bins from the first to the last event's bin (of `model` when not empty);
// 0 without events.
std::uint64_t bins_spanned(std::span<const request_event> events, std::int64_t bin_s, std::string_view model = {});

// Sums `q` per bin of `bin_s` seconds, bins aligned to multiples of bin_s since the epoch,
// from the first event's bin to the last event's bin. A bin without events is a real zero.
// Events of other models are skipped when `model` is not empty. Empty events, or a span of
// more than max_series_bins: empty series (check bins_spanned() first to tell them apart).
series aggregate_events(std::span<const request_event> events, std::int64_t bin_s, quantity q,
                        std::string_view model = {});

// The edge bins of aggregate_events() over the same events (see edge_bins).
edge_bins partial_edge_bins(std::span<const request_event> events, std::int64_t bin_s, std::string_view model = {});

// Parses a timestamp cell of a request log: a number (unit `unit_ms` milliseconds; 0 = guess:
// values above 1e11 are milliseconds, else seconds), or an ISO 8601 / RFC 3339 date-time
// ("2023-11-16 18:17:03.97996", "2025-01-06T00:00:00Z", "...+02:00"; no zone = UTC).
// Numbers beyond ±1e15 ms (year ~33,000) are not timestamps: nullopt.
std::optional<std::int64_t> parse_timestamp_ms(std::string_view cell, double unit_ms = 0.0) noexcept;
// The number a timestamp cell holds (spaces and quotes trimmed), or nullopt for a date or junk.
std::optional<double> parse_timestamp_number(std::string_view cell) noexcept;

}  // namespace tollgate::forecast
