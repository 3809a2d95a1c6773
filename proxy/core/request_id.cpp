#include "core/request_id.hpp"

namespace tollgate {

namespace {
constexpr char kHex[] = "0123456789abcdef";
constexpr std::string_view kPrefix = "tg-";
constexpr int kDigits = 12;  // per half: 48 bits of time (ms until the year 10889), 48 random
}  // namespace

std::string make_request_id(std::int64_t start_ms, std::uint64_t random) {
  std::string id(kPrefix.size() + 2 * kDigits, '0');
  kPrefix.copy(id.data(), kPrefix.size());
  auto put = [&](std::size_t at, std::uint64_t v) {
    for (int i = kDigits - 1; i >= 0; --i, v >>= 4) id[at + static_cast<std::size_t>(i)] = kHex[v & 15];
  };
  put(kPrefix.size(), static_cast<std::uint64_t>(start_ms < 0 ? 0 : start_ms));
  put(kPrefix.size() + kDigits, random);
  return id;
}

std::optional<std::int64_t> request_id_time(std::string_view id) noexcept {
  if (id.size() != kPrefix.size() + 2 * kDigits || !id.starts_with(kPrefix)) return std::nullopt;
  std::int64_t ms = 0;
  for (std::size_t i = kPrefix.size(); i < id.size(); ++i) {
    const char c = id[i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return std::nullopt;
    if (i < kPrefix.size() + kDigits) ms = ms * 16 + d;
  }
  return ms;
}

}  // namespace tollgate
