// WebSocket messages read as the bytes of one direction of a tunnel pass by (RFC 6455 §5), so a
// meter can see the few it wants (the Realtime API's response.done) without holding the rest
// (audio deltas: base64, most of a session's bytes). Pure and incremental: bytes in any split,
// never altered (the tunnel relays them as they came).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate {

// A server's frame (unmasked, FIN set) of `opcode` (1 text, 8 close) around `payload`.
std::string ws_server_frame(unsigned opcode, std::string_view payload);
// A close frame with a status code (RFC 6455 §7.4; 1008: policy violation) and a short reason
// (cut to the 123 bytes a control frame allows).
std::string ws_close_frame(unsigned code, std::string_view reason);

class ws_message_reader {
 public:
  // How many leading bytes of a message `wanted` sees (fewer when the message is shorter).
  static constexpr std::size_t head_bytes = 256;
  // `wanted(head)` decides from a text message's first bytes whether it is kept whole; a message
  // longer than `max_message` is dropped (counted in oversized()).
  using want_fn = bool (*)(std::string_view head);
  ws_message_reader(want_fn wanted, std::size_t max_message) noexcept : wanted_(wanted), max_(max_message) {}

  // Reads the next bytes of the stream; each wanted text message completed by them is appended
  // to `out`, unmasked. After a protocol error (a reserved opcode, a 64-bit length with its top
  // bit set, a continuation outside a message, a fragmented or oversized control frame) it reads
  // nothing more: failed().
  void feed(std::string_view bytes, std::vector<std::string>& out);

  bool failed() const noexcept { return failed_; }
  std::size_t oversized() const noexcept { return oversized_; }    // wanted messages over the cap
  std::size_t compressed() const noexcept { return compressed_; }  // RSV1 (permessage-deflate): unread
  std::uint64_t messages() const noexcept { return messages_; }    // data messages completed
  // Between messages: the bytes read so far end a whole message (or control frame), so a frame
  // of one's own may follow them on the same stream.
  bool between_messages() const noexcept { return !failed_ && !in_payload_ && hdr_have_ == 0 && !in_message_; }

 private:
  void payload(std::string_view bytes);
  void end_of_frame(std::vector<std::string>& out);
  void decide();

  want_fn wanted_;
  std::size_t max_;
  // The frame header being read (at most 14 bytes) and the frame it describes.
  unsigned char hdr_[14] = {};
  std::size_t hdr_have_ = 0;
  bool in_payload_ = false;
  std::uint64_t left_ = 0;        // payload bytes of the current frame still to come
  bool fin_ = false;
  unsigned opcode_ = 0;
  bool masked_ = false;
  unsigned char mask_[4] = {};
  std::uint64_t mask_pos_ = 0;    // payload offset, for the mask's rotation
  bool control_ = false;          // a control frame (close, ping, pong): read past
  // The data message the frames belong to.
  bool in_message_ = false;
  bool text_ = false;
  enum class verdict : std::uint8_t { undecided, keep, skip } verdict_ = verdict::undecided;
  std::string buf_;
  bool failed_ = false;
  std::size_t oversized_ = 0, compressed_ = 0;
  std::uint64_t messages_ = 0;
};

}  // namespace tollgate
