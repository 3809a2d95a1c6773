// A transparent hash for unordered containers keyed by std::string: lookups by string_view
// without building a std::string (with std::equal_to<>).
#pragma once
#include <cstddef>
#include <functional>
#include <string_view>

namespace tollgate {

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

}  // namespace tollgate
