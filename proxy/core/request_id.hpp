// The ids tollgate gives calls that arrive without an `x-request-id` of their own, and the time
// an id carries.
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

// The unix ms an id carries, or nullopt:
//  - generated: "tg-" and 24 lowercase hex digits, the first 12 the call's start (exactly its
//    row's start_ms). Ids generated before this format (24 random digits) decode too, to a time
//    that says nothing;
//  - a client's UUIDv7 (RFC 9562: version 7, the first 48 bits its creation's unix ms, either
//    case), made by the client just before the call, by its own clock.
// A lookup must not trust the time alone: `exact` says whether it is the row's start_ms.
struct id_time {
  std::int64_t ms = 0;
  bool exact = false;
};
std::optional<id_time> request_id_time(std::string_view id) noexcept;

}  // namespace tollgate
