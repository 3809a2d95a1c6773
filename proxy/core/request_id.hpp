// The ids tollgate gives calls that arrive without an `x-request-id` of their own.
//
// "tg-" + 12 hex digits of the call's start (unix ms) + 12 hex digits of randomness: 27
// characters, ordered by time like a UUIDv7. The time in front lets a lookup by id
// (`/admin/calls?request_id=`) read the ledger's `start_ms` index around that moment instead of
// every row of the range; the 48 random bits keep ids of the same millisecond apart.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tollgate {

std::string make_request_id(std::int64_t start_ms, std::uint64_t random);
// The start a generated id carries: nullopt unless `id` has the generated shape ("tg-" and 24
// lowercase hex digits). Ids generated before this format (24 random digits) and a client's own
// ids of that shape decode too, to a time that says nothing: a lookup must not trust it alone.
std::optional<std::int64_t> request_id_time(std::string_view id) noexcept;

}  // namespace tollgate
