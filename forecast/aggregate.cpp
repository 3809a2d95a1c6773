// Binning per-request records into series, and the timestamp formats request logs use.
// Called by `tollgate-forecast` for --requests and --ledger inputs.
#include "forecast/aggregate.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace tollgate::forecast {
namespace {

std::string_view trim_cell(std::string_view cell) noexcept {
  while (!cell.empty() && (cell.front() == ' ' || cell.front() == '"')) cell.remove_prefix(1);
  while (!cell.empty() && (cell.back() == ' ' || cell.back() == '"' || cell.back() == '\r')) cell.remove_suffix(1);
  return cell;
}

}  // namespace

std::optional<quantity> parse_quantity(std::string_view name) noexcept {
  if (name == "requests") return quantity::requests;
  if (name == "prompt_tokens") return quantity::prompt_tokens;
  if (name == "completion_tokens") return quantity::completion_tokens;
  if (name == "total_tokens") return quantity::total_tokens;
  if (name == "cost_usd") return quantity::cost_usd;
  return std::nullopt;
}

const char* quantity_name(quantity q) noexcept {
  switch (q) {
    case quantity::requests: return "requests";
    case quantity::prompt_tokens: return "prompt_tokens";
    case quantity::completion_tokens: return "completion_tokens";
    case quantity::total_tokens: return "total_tokens";
    case quantity::cost_usd: return "cost_usd";
  }
  return "requests";
}

namespace {

std::int64_t bin_of(std::int64_t ms, std::int64_t bin_ms) noexcept {
  return ms >= 0 ? ms / bin_ms : -((-ms + bin_ms - 1) / bin_ms);
}

double value_of(const request_event& e, quantity q) noexcept {
  switch (q) {
    case quantity::requests: return 1.0;
    case quantity::prompt_tokens: return e.prompt_tokens;
    case quantity::completion_tokens: return e.completion_tokens;
    case quantity::total_tokens: return e.prompt_tokens + e.completion_tokens;
    case quantity::cost_usd: return e.cost_usd;
  }
  return 1.0;
}

event_bins fold(std::span<const request_event> events, std::int64_t bin_s, quantity q, std::string_view model) {
  event_bins bins(bin_s, q);
  for (const auto& e : events)
    if (model.empty() || e.model == model) bins.add(e);
  return bins;
}

}  // namespace

void event_bins::add(const request_event& e) {
  const std::int64_t bin_ms = bin_s_ * 1000;
  first_ms_ = records_ ? std::min(first_ms_, e.timestamp_ms) : e.timestamp_ms;
  last_ms_ = records_ ? std::max(last_ms_, e.timestamp_ms) : e.timestamp_ms;
  ++records_;
  if (too_long_) return;
  if (bins_spanned() > max_series_bins) {
    too_long_ = true;
    std::vector<double>().swap(sums_);
    return;
  }
  const std::int64_t b = bin_of(e.timestamp_ms, bin_ms);
  const auto size = static_cast<std::int64_t>(sums_.size());
  if (sums_.empty()) {
    base_ = b;
    sums_.assign(1, 0.0);
  } else if (b < base_) {
    // Headroom as large as what is held, but never a bin more than max_series_bins before the
    // last record's (the span is within that, so b is too).
    const std::int64_t last = bin_of(last_ms_, bin_ms);
    const std::int64_t lowest = last - static_cast<std::int64_t>(max_series_bins) + 1;
    const std::int64_t new_base = std::max(std::min(b, base_ - size), lowest);
    sums_.insert(sums_.begin(), static_cast<std::size_t>(base_ - new_base), 0.0);
    base_ = new_base;
  } else if (b - base_ >= size) {
    sums_.resize(static_cast<std::size_t>(b - base_ + 1), 0.0);
  }
  sums_[static_cast<std::size_t>(b - base_)] += value_of(e, q_);
}

std::uint64_t event_bins::bins_spanned() const noexcept {
  if (records_ == 0) return 0;
  const std::int64_t bin_ms = bin_s_ * 1000;
  // Unsigned: the difference of two extreme int64 bins does not fit an int64.
  return static_cast<std::uint64_t>(bin_of(last_ms_, bin_ms)) - static_cast<std::uint64_t>(bin_of(first_ms_, bin_ms)) + 1;
}

series event_bins::result() const {
  series s;
  s.bin_s = bin_s_;
  if (records_ == 0 || too_long_) return s;
  const std::int64_t bin_ms = bin_s_ * 1000;
  const std::int64_t first = bin_of(first_ms_, bin_ms), last = bin_of(last_ms_, bin_ms);
  s.start_s = first * bin_s_;
  s.values.assign(sums_.begin() + (first - base_), sums_.begin() + (last - base_ + 1));
  return s;
}

edge_bins event_bins::edges() const noexcept {
  edge_bins out;
  const std::int64_t bin_ms = bin_s_ * 1000;
  if (records_ < 2 || bin_ms <= 0) return out;
  const std::int64_t first_bin = bin_of(first_ms_, bin_ms), last_bin = bin_of(last_ms_, bin_ms);
  if (first_bin == last_bin) return out;  // one bin: nothing to compare
  const double mean_gap = static_cast<double>(last_ms_ - first_ms_) / static_cast<double>(records_ - 1);
  const double tolerance = std::max(0.1 * static_cast<double>(bin_ms), 3.0 * mean_gap);
  const double before = static_cast<double>(first_ms_ - first_bin * bin_ms);     // uncovered at the start
  const double after = static_cast<double>((last_bin + 1) * bin_ms - last_ms_);  // ...and at the end
  out.first_covered = 1.0 - before / static_cast<double>(bin_ms);
  out.last_covered = 1.0 - after / static_cast<double>(bin_ms);
  out.first_partial = before > tolerance;
  out.last_partial = after > tolerance;
  return out;
}

std::uint64_t bins_spanned(std::span<const request_event> events, std::int64_t bin_s, std::string_view model) {
  return fold(events, bin_s, quantity::requests, model).bins_spanned();
}

edge_bins partial_edge_bins(std::span<const request_event> events, std::int64_t bin_s, std::string_view model) {
  return fold(events, bin_s, quantity::requests, model).edges();
}

series aggregate_events(std::span<const request_event> events, std::int64_t bin_s, quantity q,
                        std::string_view model) {
  return fold(events, bin_s, q, model).result();
}

std::optional<double> parse_timestamp_number(std::string_view cell) noexcept {
  cell = trim_cell(cell);
  double v = 0.0;
  const auto [p, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), v);
  if (cell.empty() || ec != std::errc() || p != cell.data() + cell.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<std::int64_t> parse_timestamp_ms(std::string_view cell, double unit_ms) noexcept {
  if (const auto v = parse_timestamp_number(cell)) {
    const double unit = unit_ms > 0.0 ? unit_ms : (std::fabs(*v) > 1e11 ? 1.0 : 1000.0);
    const double ms = std::floor(*v * unit);
    if (std::fabs(ms) > 1e15) return std::nullopt;  // also keeps the cast below defined
    return static_cast<std::int64_t>(ms);
  }
  cell = trim_cell(cell);
  if (cell.empty()) return std::nullopt;
  return parse_iso_ms(cell);
}

}  // namespace tollgate::forecast
