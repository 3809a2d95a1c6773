#include "core/request_id.hpp"

namespace tollgate {

namespace {
constexpr char kHex[] = "0123456789abcdef";
constexpr std::string_view kPrefix = "tg-";
constexpr int kDigits = 12;  // per half: 48 bits of time (ms until the year 10889), 48 random

int hex_digit(char c, bool upper_too) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (upper_too && c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The ms of "tg-" + 24 lowercase hex digits.
std::optional<std::int64_t> generated_time(std::string_view id) noexcept {
  if (id.size() != kPrefix.size() + 2 * kDigits || !id.starts_with(kPrefix)) return std::nullopt;
  std::int64_t ms = 0;
  for (std::size_t i = kPrefix.size(); i < id.size(); ++i) {
    const int d = hex_digit(id[i], false);
    if (d < 0) return std::nullopt;
    if (i < kPrefix.size() + kDigits) ms = ms * 16 + d;
  }
  return ms;
}

// The ms of a UUIDv7 in its 8-4-4-4-12 form: the first 12 hex digits (dash excluded), version
// digit 7, variant 10xx.
std::optional<std::int64_t> uuid_v7_time(std::string_view id) noexcept {
  if (id.size() != 36) return std::nullopt;
  std::int64_t ms = 0;
  int digits = 0;
  for (std::size_t i = 0; i < id.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (id[i] != '-') return std::nullopt;
      continue;
    }
    const int d = hex_digit(id[i], true);
    if (d < 0) return std::nullopt;
    if (digits++ < 12) ms = ms * 16 + d;
  }
  if (id[14] != '7' || (hex_digit(id[19], true) & 0xC) != 0x8) return std::nullopt;
  return ms;
}
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

std::optional<id_time> request_id_time(std::string_view id) noexcept {
  if (const auto ms = generated_time(id)) return id_time{*ms, true};
  if (const auto ms = uuid_v7_time(id)) return id_time{*ms, false};
  return std::nullopt;
}

}  // namespace tollgate
