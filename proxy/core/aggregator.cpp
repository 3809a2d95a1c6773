// The in-memory traffic aggregator (aggregator.hpp): fixed rings of one-minute and coarse
// buckets for the total and per priced model. Fed by the ledger thread; read by the forecaster.
#include "core/aggregator.hpp"

#include <algorithm>

namespace tollgate {

traffic_bucket& traffic_bucket::operator+=(const traffic_bucket& o) noexcept {
  requests += o.requests;
  prompt_tokens += o.prompt_tokens;
  completion_tokens += o.completion_tokens;
  cost_usd += o.cost_usd;
  return *this;
}

traffic_bucket traffic_bucket::scaled(double f) const noexcept {
  return {requests * f, prompt_tokens * f, completion_tokens * f, cost_usd * f};
}

namespace {

constexpr std::int64_t kCoarseTotalS = 300;   // five minutes
constexpr std::int64_t kCoarseModelS = 900;   // fifteen minutes
constexpr std::string_view kOther = "other";

std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

// Buckets of `width_s` seconds, indexed by floor(t / width_s); the newest `capacity` indices
// are held. Moving the newest index forward clears the slots it passes, so a slot never mixes
// two periods and no per-slot key is needed.
class bucket_ring {
 public:
  bucket_ring(std::int64_t width_s, std::size_t capacity)
      : width_s_(width_s), cap_(static_cast<std::int64_t>(std::max<std::size_t>(capacity, 1))), slots_(cap_) {}

  bool add(std::int64_t idx, const traffic_bucket& b) {
    if (newest_ == aggregator::no_data) {
      newest_ = idx;
    } else if (idx > newest_) {
      if (idx - newest_ >= cap_) {
        std::fill(slots_.begin(), slots_.end(), traffic_bucket{});
      } else {
        for (std::int64_t i = newest_ + 1; i <= idx; ++i) slots_[slot(i)] = {};
      }
      newest_ = idx;
    } else if (idx <= newest_ - cap_) {
      return false;
    }
    slots_[slot(idx)] += b;
    return true;
  }
  bool holds(std::int64_t idx) const noexcept { return newest_ != aggregator::no_data && idx <= newest_ && idx > newest_ - cap_; }
  const traffic_bucket& at(std::int64_t idx) const noexcept { return slots_[slot(idx)]; }
  std::int64_t newest() const noexcept { return newest_; }
  std::int64_t oldest() const noexcept { return newest_ == aggregator::no_data ? newest_ : newest_ - cap_ + 1; }
  std::int64_t width_s() const noexcept { return width_s_; }
  std::size_t bytes() const noexcept { return slots_.size() * sizeof(traffic_bucket); }

  // Sum over [from_s, to_s); buckets cut by an edge count in proportion to the overlap.
  void accumulate(std::int64_t from_s, std::int64_t to_s, traffic_bucket& out) const {
    if (to_s <= from_s || newest_ == aggregator::no_data) return;
    std::int64_t first = std::max(floor_div(from_s, width_s_), oldest());
    std::int64_t last = std::min(floor_div(to_s - 1, width_s_), newest_);
    for (std::int64_t i = first; i <= last; ++i) {
      std::int64_t bs = i * width_s_, be = bs + width_s_;
      std::int64_t overlap = std::min(be, to_s) - std::max(bs, from_s);
      const traffic_bucket& b = at(i);
      if (overlap == width_s_) out += b;
      else if (overlap > 0) out += b.scaled(static_cast<double>(overlap) / static_cast<double>(width_s_));
    }
  }

 private:
  std::size_t slot(std::int64_t idx) const noexcept {
    return static_cast<std::size_t>(((idx % cap_) + cap_) % cap_);
  }
  std::int64_t width_s_;
  std::int64_t cap_;
  std::int64_t newest_ = aggregator::no_data;
  std::vector<traffic_bucket> slots_;
};

}  // namespace

struct aggregator::series_rings {
  series_rings(std::size_t minutes, std::int64_t coarse_s, std::size_t coarse_days)
      : fine(60, minutes),
        coarse(coarse_s, std::max<std::size_t>(coarse_days * 86400 / static_cast<std::size_t>(coarse_s),
                                               minutes * 60 / static_cast<std::size_t>(coarse_s) + 1)) {}

  void add(std::int64_t minute, const traffic_bucket& b, std::uint64_t& dropped) {
    bool kept_fine = fine.add(minute, b);
    bool kept_coarse = coarse.add(floor_div(minute * 60, coarse.width_s()), b);
    if (!kept_fine && !kept_coarse) {
      ++dropped;
      return;
    }
    if (first_minute == no_data || minute < first_minute) first_minute = minute;
    if (newest_minute == no_data || minute > newest_minute) newest_minute = minute;
  }

  // Minute buckets where held, coarse buckets before them. The switch happens on a coarse
  // boundary at or after the oldest held minute, so no period is counted twice.
  traffic_bucket sum(std::int64_t from_s, std::int64_t to_s) const {
    traffic_bucket out;
    if (to_s <= from_s || newest_minute == no_data) return out;
    const std::int64_t cw = coarse.width_s();
    const std::int64_t fine_start = fine.oldest() * 60;
    const std::int64_t split = floor_div(fine_start + cw - 1, cw) * cw;
    if (from_s < split) coarse.accumulate(from_s, std::min(to_s, split), out);
    if (to_s > split) fine.accumulate(std::max(from_s, split), to_s, out);
    return out;
  }

  std::int64_t held_first_minute() const {
    if (first_minute == no_data) return no_data;
    return std::max(first_minute, floor_div(coarse.oldest() * coarse.width_s(), 60));
  }

  bucket_ring fine;
  bucket_ring coarse;
  std::int64_t first_minute = no_data;
  std::int64_t newest_minute = no_data;
};

aggregator::aggregator(const std::vector<std::string>& models, aggregator_options opts)
    : opts_(opts),
      total_(std::make_unique<series_rings>(opts.total_minutes, kCoarseTotalS, opts.total_coarse_days)),
      names_(models) {
  names_.emplace_back(kOther);
  std::sort(names_.begin(), names_.end());
  names_.erase(std::unique(names_.begin(), names_.end()), names_.end());
}

aggregator::~aggregator() = default;

void aggregator::add_models(const std::vector<std::string>& models) {
  std::lock_guard lock(mu_);
  names_.insert(names_.end(), models.begin(), models.end());
  std::sort(names_.begin(), names_.end());
  names_.erase(std::unique(names_.begin(), names_.end()), names_.end());
}

aggregator::series_rings& aggregator::rings_for(std::string_view model) {
  std::string_view label = std::binary_search(names_.begin(), names_.end(), model) ? model : kOther;
  auto it = models_.find(std::string(label));
  if (it == models_.end()) {
    it = models_.emplace(std::string(label), std::make_unique<series_rings>(opts_.model_minutes, kCoarseModelS,
                                                                          opts_.model_coarse_days)).first;
  }
  return *it->second;
}

const aggregator::series_rings* aggregator::find(std::string_view model) const {
  if (model.empty()) return total_.get();
  auto it = models_.find(std::string(model));
  return it == models_.end() ? nullptr : it->second.get();
}

void aggregator::add_locked(std::int64_t minute, std::string_view model, const traffic_bucket& b) {
  total_->add(minute, b, dropped_);
  std::uint64_t ignored = 0;  // a call is counted once in dropped_, by the total
  rings_for(model).add(minute, b, ignored);
}

void aggregator::add(const usage_record& rec) noexcept {
  try {
    traffic_bucket b{1, static_cast<double>(rec.tokens.prompt), static_cast<double>(rec.tokens.completion), rec.cost_usd};
    std::lock_guard lock(mu_);
    add_locked(floor_div(rec.start_ms, 60'000), rec.price_model, b);
  } catch (...) {
    // Only a failed allocation of a new model's rings can land here; the call is then missing
    // from the forecast, never from the ledger.
  }
}

void aggregator::add(const std::vector<usage_record>& recs) noexcept {
  try {
    std::lock_guard lock(mu_);
    for (const auto& rec : recs) {
      traffic_bucket b{1, static_cast<double>(rec.tokens.prompt), static_cast<double>(rec.tokens.completion), rec.cost_usd};
      add_locked(floor_div(rec.start_ms, 60'000), rec.price_model, b);
    }
  } catch (...) {
  }
}

void aggregator::add(std::int64_t minute, std::string_view price_model, const traffic_bucket& b) noexcept {
  try {
    std::lock_guard lock(mu_);
    add_locked(minute, price_model, b);
  } catch (...) {
  }
}

traffic_bucket aggregator::sum(std::int64_t from_s, std::int64_t to_s, std::string_view model) const {
  std::lock_guard lock(mu_);
  const series_rings* r = find(model);
  return r ? r->sum(from_s, to_s) : traffic_bucket{};
}

std::vector<traffic_bucket> aggregator::bins(std::int64_t from_s, std::int64_t bin_s, std::size_t count,
                                             std::string_view model) const {
  std::vector<traffic_bucket> out(count);
  std::lock_guard lock(mu_);
  const series_rings* r = find(model);
  if (r == nullptr) return out;
  for (std::size_t i = 0; i < count; ++i) {
    std::int64_t s = from_s + static_cast<std::int64_t>(i) * bin_s;
    out[i] = r->sum(s, s + bin_s);
  }
  return out;
}

std::int64_t aggregator::first_minute() const {
  std::lock_guard lock(mu_);
  return total_->held_first_minute();
}

std::int64_t aggregator::newest_minute() const {
  std::lock_guard lock(mu_);
  return total_->newest_minute;
}

std::int64_t aggregator::first_fine_minute() const {
  std::lock_guard lock(mu_);
  if (total_->first_minute == no_data) return no_data;
  return std::max(total_->first_minute, total_->fine.oldest());
}

std::uint64_t aggregator::dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

std::size_t aggregator::memory_bytes() const {
  std::lock_guard lock(mu_);
  std::size_t n = sizeof(*this) + total_->fine.bytes() + total_->coarse.bytes();
  for (const auto& [name, r] : models_) n += name.size() + sizeof(series_rings) + r->fine.bytes() + r->coarse.bytes();
  return n;
}

}  // namespace tollgate
