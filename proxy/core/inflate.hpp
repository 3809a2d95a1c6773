// Incremental gzip/zlib/raw-deflate decoding of upstream response bodies, for metering only:
// the client always gets the bytes the upstream sent. Pure (zlib).
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

struct z_stream_s;

namespace tollgate {

class inflater {
 public:
  inflater();
  ~inflater();
  inflater(const inflater&) = delete;
  inflater& operator=(const inflater&) = delete;

  // Decodes `in`, appending to `out` while out.size() < limit. Handles gzip and zlib
  // (auto-detected) and raw deflate (what some servers send as "deflate"). false once the
  // data is found corrupt; further calls do nothing.
  bool feed(std::string_view in, std::string& out, std::size_t limit);
  bool failed() const noexcept { return failed_; }
  bool ended() const noexcept { return ended_; }  // the compressed stream's end was decoded

 private:
  bool init(int window_bits);
  z_stream_s* z_ = nullptr;
  bool started_ = false;   // bytes were decoded (no more format fallback)
  bool raw_tried_ = false;
  bool failed_ = false;
  bool ended_ = false;
  std::string head_;       // bytes kept for a raw-deflate retry
  std::string after_end_;  // bytes after a gzip member's end, until 2 tell whether a member follows ("-": none)
};

}  // namespace tollgate
