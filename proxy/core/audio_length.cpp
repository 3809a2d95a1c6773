// Container headers only: no decoding. Every read is bounds-checked; a header that does not add
// up ends the walk with what the whole frames before it hold.
#include "core/audio_length.hpp"

#include <array>
#include <cstdint>

namespace tollgate {
namespace {

std::uint8_t at(std::string_view b, std::size_t i) noexcept { return static_cast<std::uint8_t>(b[i]); }
std::uint32_t le32(std::string_view b, std::size_t i) noexcept {
  return at(b, i) | (std::uint32_t{at(b, i + 1)} << 8) | (std::uint32_t{at(b, i + 2)} << 16) |
         (std::uint32_t{at(b, i + 3)} << 24);
}
std::uint64_t le64(std::string_view b, std::size_t i) noexcept {
  return le32(b, i) | (std::uint64_t{le32(b, i + 4)} << 32);
}

std::optional<double> positive(double s) noexcept {
  if (!(s > 0)) return std::nullopt;
  return s;
}

// RIFF/WAVE: the data chunk's length over the fmt chunk's byte rate. A streamed WAV states an
// unknown length (0 or 0xFFFFFFFF): the bytes that follow the data chunk's head count then.
std::optional<double> wav_seconds(std::string_view b) noexcept {
  std::uint32_t byte_rate = 0;
  for (std::size_t i = 12; i + 8 <= b.size();) {
    const std::string_view id = b.substr(i, 4);
    const std::uint32_t size = le32(b, i + 4);
    const std::size_t body = i + 8;
    if (id == "fmt " && body + 12 <= b.size()) byte_rate = le32(b, body + 8);
    if (id == "data") {
      if (byte_rate == 0) return std::nullopt;
      const std::size_t have = b.size() - body;
      const std::size_t data = size == 0 || size == 0xFFFFFFFFu || size > have ? have : size;
      return positive(static_cast<double>(data) / byte_rate);
    }
    i = body + size + (size & 1);
    if (i < body) break;  // overflow
  }
  return std::nullopt;
}

// FLAC: STREAMINFO (the first metadata block) holds the sample rate and the total samples.
std::optional<double> flac_seconds(std::string_view b) noexcept {
  if (b.size() < 8 + 18 || (at(b, 4) & 0x7F) != 0) return std::nullopt;
  const std::size_t d = 8;
  const std::uint32_t rate = (std::uint32_t{at(b, d + 10)} << 12) | (std::uint32_t{at(b, d + 11)} << 4) | (at(b, d + 12) >> 4);
  const std::uint64_t total = (std::uint64_t{at(b, d + 13) & 0x0Fu} << 32) | (std::uint64_t{at(b, d + 14)} << 24) |
                              (std::uint64_t{at(b, d + 15)} << 16) | (std::uint64_t{at(b, d + 16)} << 8) | at(b, d + 17);
  if (rate == 0) return std::nullopt;
  return positive(static_cast<double>(total) / rate);
}

// Ogg (Opus or Vorbis): the granule position of the last whole page; Opus counts at 48 kHz from
// its pre-skip, Vorbis at the rate its identification header gives.
std::optional<double> ogg_seconds(std::string_view b) noexcept {
  double rate = 0, skip = 0;
  std::int64_t last = -1;
  for (std::size_t i = 0; i + 27 <= b.size() && b.substr(i, 4) == "OggS";) {
    const std::size_t segments = at(b, i + 26);
    if (i + 27 + segments > b.size()) break;
    std::size_t length = 0;
    for (std::size_t s = 0; s < segments; ++s) length += at(b, i + 27 + s);
    const std::size_t data = i + 27 + segments;
    if (data + length > b.size()) break;
    const std::string_view packet = b.substr(data, length);
    if (rate == 0 && packet.size() >= 12 && packet.starts_with("OpusHead")) {
      rate = 48000;
      skip = at(packet, 10) | (at(packet, 11) << 8);
    } else if (rate == 0 && packet.size() >= 16 && packet.starts_with("\x01vorbis")) {
      rate = le32(packet, 12);
    }
    const auto granule = static_cast<std::int64_t>(le64(b, i + 6));
    if (granule >= 0) last = granule;
    i = data + length;
  }
  if (rate <= 0 || last < 0) return std::nullopt;
  return positive((static_cast<double>(last) - skip) / rate);
}

// MPEG audio layer III frames (MPEG 1, 2 and 2.5), after an ID3v2 tag.
std::optional<double> mp3_seconds(std::string_view b) noexcept {
  std::size_t i = 0;
  if (b.size() >= 10 && b.starts_with("ID3")) {
    const std::size_t tag = (std::size_t{at(b, 6) & 0x7Fu} << 21) | (std::size_t{at(b, 7) & 0x7Fu} << 14) |
                            (std::size_t{at(b, 8) & 0x7Fu} << 7) | (at(b, 9) & 0x7Fu);
    i = 10 + tag + ((at(b, 5) & 0x10) ? 10 : 0);  // a footer
  }
  static constexpr std::array<int, 16> mpeg1 = {0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0};
  static constexpr std::array<int, 16> mpeg2 = {0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0};
  static constexpr std::array<int, 4> rates1 = {44100, 48000, 32000, 0};
  double seconds = 0;
  while (i + 4 <= b.size()) {
    const std::uint8_t b1 = at(b, i + 1), b2 = at(b, i + 2);
    if (at(b, i) != 0xFF || (b1 & 0xE0) != 0xE0) break;
    const int version = (b1 >> 3) & 3;  // 0: 2.5, 2: 2, 3: 1
    if (version == 1 || ((b1 >> 1) & 3) != 1) break;  // reserved, or not layer III
    const int kbps = (version == 3 ? mpeg1 : mpeg2)[b2 >> 4];
    const int base = rates1[(b2 >> 2) & 3];
    if (kbps == 0 || base == 0) break;  // free format or reserved
    const int rate = version == 3 ? base : version == 2 ? base / 2 : base / 4;
    const int samples = version == 3 ? 1152 : 576;
    const std::size_t length = static_cast<std::size_t>(samples / 8 * kbps * 1000 / rate) + ((b2 >> 1) & 1);
    if (length < 4 || i + length > b.size()) break;  // a cut last frame is not counted
    seconds += static_cast<double>(samples) / rate;
    i += length;
  }
  return positive(seconds);
}

// AAC in ADTS frames: each holds (number_of_raw_data_blocks + 1) x 1,024 samples.
std::optional<double> adts_seconds(std::string_view b) noexcept {
  static constexpr std::array<int, 16> rates = {96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050,
                                                16000, 12000, 11025, 8000,  7350,  0,     0,     0};
  double seconds = 0;
  for (std::size_t i = 0; i + 7 <= b.size();) {
    if (at(b, i) != 0xFF || (at(b, i + 1) & 0xF6) != 0xF0) break;
    const int rate = rates[(at(b, i + 2) >> 2) & 0x0F];
    const std::size_t length =
        (std::size_t{at(b, i + 3) & 0x03u} << 11) | (std::size_t{at(b, i + 4)} << 3) | (at(b, i + 5) >> 5);
    if (rate == 0 || length < 7 || i + length > b.size()) break;
    seconds += 1024.0 * ((at(b, i + 6) & 0x03) + 1) / rate;
    i += length;
  }
  return positive(seconds);
}

}  // namespace

std::optional<double> audio_seconds(std::string_view bytes, std::string_view format) noexcept {
  if (format == "pcm") return positive(static_cast<double>(bytes.size() / 2) / 24000.0);
  if (bytes.size() >= 12 && bytes.starts_with("RIFF") && bytes.substr(8, 4) == "WAVE") return wav_seconds(bytes);
  if (bytes.starts_with("fLaC")) return flac_seconds(bytes);
  if (bytes.starts_with("OggS")) return ogg_seconds(bytes);
  if (bytes.starts_with("ID3")) return mp3_seconds(bytes);
  if (bytes.size() >= 2 && at(bytes, 0) == 0xFF) {
    if ((at(bytes, 1) & 0xF6) == 0xF0) return adts_seconds(bytes);
    return mp3_seconds(bytes);
  }
  return std::nullopt;
}

}  // namespace tollgate
