// UTF-8 text bounds: where a client's or an upstream's text is kept to a number of bytes (ledger
// columns, messages), the cut falls between characters, so what is stored stays valid UTF-8
// (a cut inside a character would read back as U+FFFD, and differ between the SQLite ledger and
// PostgreSQL, which cleans it).
#pragma once
#include <cstddef>
#include <string_view>

namespace tollgate {

// The longest prefix of `s` of at most `max` bytes that does not end inside a UTF-8 sequence
// (s itself when it fits). Text that is not UTF-8 is cut at most 3 bytes short of max.
inline std::string_view utf8_prefix(std::string_view s, std::size_t max) noexcept {
  if (s.size() <= max) return s;
  std::size_t n = max;
  // s[n] is the first byte left out: while it continues a sequence, that sequence started before n.
  for (int back = 0; n > 0 && back < 3 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80; ++back) --n;
  return s.substr(0, n);
}

}  // namespace tollgate
