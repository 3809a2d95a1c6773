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

namespace {
// The start of another gzip member (RFC 1952 §2.2: a gzip body may be several members in a
// row, e.g. a stream compressed event by event).
bool gzip_magic(const unsigned char* p, std::size_t n) noexcept { return n >= 2 && p[0] == 0x1f && p[1] == 0x8b; }
}  // namespace

bool inflater::feed(std::string_view in, std::string& out, std::size_t limit) {
  if (failed_) return false;
  if (ended_) {
    if (raw_tried_ || after_end_ == "-") return true;  // not gzip, or not a member that followed
    if (after_end_.size() + in.size() < 2) {            // the next member's magic split: wait
      after_end_.append(in);
      return true;
    }
    std::string next = std::move(after_end_);
    next.append(in);
    after_end_ = "-";
    if (!gzip_magic(reinterpret_cast<const unsigned char*>(next.data()), next.size())) return true;
    after_end_.clear();
    inflateReset(z_);
    ended_ = false;
    return feed(next, out, limit);
  }
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
      if (!raw_tried_ && gzip_magic(z_->next_in, z_->avail_in)) {
        inflateReset(z_);
        ended_ = false;
      } else if (z_->avail_in == 1) {
        after_end_.assign(reinterpret_cast<const char*>(z_->next_in), 1);  // decided by the next byte
      } else if (z_->avail_in > 1) {
        after_end_ = "-";
      }
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
