// gzip/deflate decoding of a copy of the response body (see inflate.hpp). Used by the relay
// to read usage from compressed upstream replies.
#include "core/inflate.hpp"

#include <zlib.h>

namespace tollgate {

inflater::inflater() = default;

inflater::~inflater() {
  if (z_) {
    inflateEnd(z_);
    delete z_;
  }
}

bool inflater::init(int window_bits) {
  if (z_) {
    inflateEnd(z_);
  } else {
    z_ = new z_stream{};
  }
  *z_ = z_stream{};
  return inflateInit2(z_, window_bits) == Z_OK;
}

bool inflater::feed(std::string_view in, std::string& out, std::size_t limit) {
  if (failed_ || ended_) return !failed_;
  if (!z_ && !init(15 + 32)) {  // 15 + 32: zlib or gzip header, auto-detected
    failed_ = true;
    return false;
  }
  if (!started_ && !raw_tried_) head_.append(in);
  z_->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z_->avail_in = static_cast<uInt>(in.size());
  char buf[16384];
  while (z_->avail_in > 0 && !ended_) {
    z_->next_out = reinterpret_cast<Bytef*>(buf);
    z_->avail_out = sizeof buf;
    int rc = inflate(z_, Z_NO_FLUSH);
    std::size_t produced = sizeof buf - z_->avail_out;
    if (produced > 0) {
      started_ = true;
      head_.clear();
      head_.shrink_to_fit();
      if (out.size() < limit) out.append(buf, std::min(produced, limit - out.size()));
    }
    if (rc == Z_STREAM_END) {
      ended_ = true;
    } else if (rc == Z_DATA_ERROR && !started_ && !raw_tried_) {
      // "deflate" sent as raw deflate without the zlib wrapper: retry on the bytes seen so far.
      raw_tried_ = true;
      std::string replay;
      replay.swap(head_);
      if (!init(-15)) {
        failed_ = true;
        return false;
      }
      return feed(replay, out, limit);
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      failed_ = true;
      return false;
    } else if (rc == Z_BUF_ERROR && produced == 0) {
      break;
    }
  }
  return true;
}

}  // namespace tollgate
