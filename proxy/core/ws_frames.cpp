#include "core/ws_frames.hpp"

#include <algorithm>

namespace tollgate {

std::string ws_server_frame(unsigned opcode, std::string_view payload) {
  std::string f;
  f.reserve(payload.size() + 10);
  f += static_cast<char>(0x80 | (opcode & 0x0f));
  if (payload.size() < 126) {
    f += static_cast<char>(payload.size());
  } else if (payload.size() < 65536) {
    f += static_cast<char>(126);
    f += static_cast<char>((payload.size() >> 8) & 0xff);
    f += static_cast<char>(payload.size() & 0xff);
  } else {
    f += static_cast<char>(127);
    for (int i = 7; i >= 0; --i) f += static_cast<char>((static_cast<std::uint64_t>(payload.size()) >> (8 * i)) & 0xff);
  }
  f.append(payload);
  return f;
}

std::string ws_close_frame(unsigned code, std::string_view reason) {
  std::string body;
  body += static_cast<char>((code >> 8) & 0xff);
  body += static_cast<char>(code & 0xff);
  body.append(reason.substr(0, 123));
  return ws_server_frame(8, body);
}

// A frame (RFC 6455 §5.2): FIN, RSV1-3 and the opcode; MASK and a 7-bit length, then 16 or 64
// bits of length when it says 126 or 127; the 4-byte mask key when MASK is set; the payload.
void ws_message_reader::feed(std::string_view bytes, std::vector<std::string>& out) {
  while (!failed_ && !bytes.empty()) {
    if (!in_payload_) {
      hdr_[hdr_have_++] = static_cast<unsigned char>(bytes.front());
      bytes.remove_prefix(1);
      if (hdr_have_ < 2) continue;
      const unsigned len7 = hdr_[1] & 0x7f;
      const std::size_t need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((hdr_[1] & 0x80) ? 4 : 0);
      if (hdr_have_ < need) continue;
      // The whole header is here.
      fin_ = (hdr_[0] & 0x80) != 0;
      const bool rsv1 = (hdr_[0] & 0x40) != 0;
      opcode_ = hdr_[0] & 0x0f;
      masked_ = (hdr_[1] & 0x80) != 0;
      std::uint64_t len = len7;
      std::size_t at = 2;
      if (len7 == 126) {
        len = (std::uint64_t{hdr_[2]} << 8) | hdr_[3];
        at = 4;
      } else if (len7 == 127) {
        len = 0;
        for (std::size_t i = 0; i < 8; ++i) len = (len << 8) | hdr_[2 + i];
        at = 10;
        if (len >> 63) return void(failed_ = true);
      }
      if (masked_) std::copy_n(hdr_ + at, 4, mask_);
      hdr_have_ = 0;
      left_ = len;
      mask_pos_ = 0;
      control_ = opcode_ >= 8;
      if (control_) {
        // Close, ping, pong (8-10) may come between a message's frames; 11-15 are reserved.
        if (opcode_ > 10 || !fin_ || len > 125) return void(failed_ = true);
      } else if (opcode_ == 0) {
        if (!in_message_) return void(failed_ = true);
      } else if (opcode_ <= 2) {
        if (in_message_) return void(failed_ = true);
        in_message_ = true;
        text_ = opcode_ == 1;
        buf_.clear();
        verdict_ = text_ ? verdict::undecided : verdict::skip;
        if (rsv1) {  // compressed with the connection's deflate context, which is not ours to keep
          ++compressed_;
          verdict_ = verdict::skip;
        }
      } else {
        return void(failed_ = true);  // 3-7: reserved data opcodes
      }
      in_payload_ = true;
      if (left_ == 0) end_of_frame(out);
      continue;
    }
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left_, bytes.size()));
    if (!control_) payload(bytes.substr(0, n));
    bytes.remove_prefix(n);
    left_ -= n;
    mask_pos_ += n;
    if (left_ == 0) end_of_frame(out);
  }
}

void ws_message_reader::payload(std::string_view bytes) {
  std::uint64_t pos = mask_pos_;  // the frame's payload offset of bytes[0], for the mask
  while (!bytes.empty() && verdict_ != verdict::skip) {
    // Undecided, only what the head needs is held; once kept, everything.
    std::size_t take = bytes.size();
    if (verdict_ == verdict::undecided) take = std::min(take, head_bytes - std::min(head_bytes, buf_.size()));
    if (buf_.size() + take > max_) {
      ++oversized_;
      verdict_ = verdict::skip;
      buf_ = std::string();
      return;
    }
    const std::size_t before = buf_.size();
    buf_.append(bytes.data(), take);
    if (masked_)
      for (std::size_t i = 0; i < take; ++i) buf_[before + i] ^= static_cast<char>(mask_[(pos + i) & 3]);
    bytes.remove_prefix(take);
    pos += take;
    if (verdict_ == verdict::undecided && buf_.size() >= head_bytes) decide();
  }
}

void ws_message_reader::decide() {
  verdict_ = wanted_(buf_) ? verdict::keep : verdict::skip;
  if (verdict_ == verdict::skip) buf_.clear();
}

void ws_message_reader::end_of_frame(std::vector<std::string>& out) {
  in_payload_ = false;
  if (control_ || !fin_) return;
  // The message's last frame.
  in_message_ = false;
  ++messages_;
  if (verdict_ == verdict::undecided) decide();
  if (verdict_ == verdict::keep) out.push_back(std::move(buf_));
  buf_.clear();
}

}  // namespace tollgate
