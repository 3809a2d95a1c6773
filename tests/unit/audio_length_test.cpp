// Tests for audio_seconds: the playing time of the audio files OpenAI's speech endpoint answers
// with, built here byte by byte from each container's specification.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>

#include "core/audio_length.hpp"

using tollgate::audio_seconds;

namespace {

void put_le(std::string& s, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
}

// MPEG audio layer III frames: MPEG-1 128 kbit/s at 44.1 kHz (417 bytes, 418 with padding, 1,152
// samples) or MPEG-2 64 kbit/s at 24 kHz (192 bytes, 576 samples).
std::string mp3_frames(int n, bool mpeg1, bool padded = false) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    std::string f(mpeg1 ? 417 + padded : 192, '\0');
    f[0] = '\xff';
    f[1] = mpeg1 ? '\xfb' : '\xf3';
    f[2] = static_cast<char>((mpeg1 ? 0x90 : 0x84) | (padded ? 0x02 : 0));
    f[3] = '\xc4';
    out += f;
  }
  return out;
}

std::string wav(std::uint32_t byte_rate, std::size_t data_bytes, std::uint32_t stated_size) {
  std::string w = "RIFF";
  put_le(w, 36 + data_bytes, 4);
  w += "WAVE";
  w += "LIST";  // a chunk before fmt, as some encoders write
  put_le(w, 3, 4);
  w += "abc";
  w += '\0';  // padding to an even size
  w += "fmt ";
  put_le(w, 16, 4);
  put_le(w, 1, 2);              // PCM
  put_le(w, 1, 2);              // mono
  put_le(w, byte_rate / 2, 4);  // sample rate
  put_le(w, byte_rate, 4);
  put_le(w, 2, 2);
  put_le(w, 16, 2);
  w += "data";
  put_le(w, stated_size, 4);
  w += std::string(data_bytes, '\x01');
  return w;
}

// One Ogg page holding one packet of up to 255 bytes.
std::string ogg_page(std::int64_t granule, const std::string& packet) {
  std::string p = "OggS";
  p += '\0';
  p += '\0';
  put_le(p, static_cast<std::uint64_t>(granule), 8);
  put_le(p, 1, 4);  // serial
  put_le(p, 0, 4);  // sequence
  put_le(p, 0, 4);  // CRC (not checked)
  p += '\x01';
  p += static_cast<char>(packet.size());
  return p + packet;
}

std::string adts_frames(int n, int rate_index, int blocks = 1) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    const std::size_t length = 100;
    std::string f(length, '\0');
    f[0] = '\xff';
    f[1] = '\xf1';                                                 // MPEG-4, layer 0, no CRC
    f[2] = static_cast<char>((1 << 6) | (rate_index << 2));      // AAC LC, rate, channel high bit 0
    f[3] = static_cast<char>((1 << 6) | ((length >> 11) & 0x03));  // mono
    f[4] = static_cast<char>((length >> 3) & 0xFF);
    f[5] = static_cast<char>(((length & 0x07) << 5) | 0x1F);
    f[6] = static_cast<char>(0xFC | (blocks - 1));
    out += f;
  }
  return out;
}

}  // namespace

TEST_CASE("audio_seconds: MP3 frames, with or without an ID3 tag", "[audio]") {
  CHECK(*audio_seconds(mp3_frames(125, false)) == Approx(3.0));
  CHECK(*audio_seconds(mp3_frames(100, true)) == Approx(100 * 1152 / 44100.0));
  CHECK(*audio_seconds(mp3_frames(10, true, true)) == Approx(10 * 1152 / 44100.0));  // padded frames
  std::string id3 = "ID3\x04";
  id3 += '\0';
  id3 += '\0';
  id3 += std::string("\x00\x00\x01\x00", 4);  // 128 bytes, syncsafe
  id3 += std::string(128, 'T');
  CHECK(*audio_seconds(id3 + mp3_frames(125, false)) == Approx(3.0));
  // A cut last frame is not counted; trailing junk ends the walk.
  const std::string frames = mp3_frames(125, false);
  CHECK(*audio_seconds(frames.substr(0, frames.size() - 10)) == Approx(124 * 0.024));
  CHECK(*audio_seconds(frames + "junk") == Approx(3.0));
}

TEST_CASE("audio_seconds: WAV, FLAC, Ogg Opus and Vorbis, ADTS AAC and raw PCM", "[audio]") {
  CHECK(*audio_seconds(wav(48000, 96000, 96000)) == Approx(2.0));
  CHECK(*audio_seconds(wav(48000, 72000, 0xFFFFFFFFu)) == Approx(1.5));  // streamed: length unknown
  CHECK(*audio_seconds(wav(48000, 24000, 0)) == Approx(0.5));
  CHECK_FALSE(audio_seconds(wav(0, 100, 100)));

  std::string flac = "fLaC";
  flac += '\x80';  // last block, STREAMINFO
  flac += std::string("\x00\x00\x22", 3);
  std::string info(34, '\0');
  const std::uint32_t rate = 24000;
  const std::uint64_t total = 60000;
  info[10] = static_cast<char>(rate >> 12);
  info[11] = static_cast<char>((rate >> 4) & 0xFF);
  info[12] = static_cast<char>(((rate & 0x0F) << 4) | 0x01);
  info[13] = static_cast<char>(0xF0 | ((total >> 32) & 0x0F));
  info[14] = static_cast<char>((total >> 24) & 0xFF);
  info[15] = static_cast<char>((total >> 16) & 0xFF);
  info[16] = static_cast<char>((total >> 8) & 0xFF);
  info[17] = static_cast<char>(total & 0xFF);
  CHECK(*audio_seconds(flac + info) == Approx(2.5));

  std::string head = "OpusHead";
  head += '\x01';
  head += '\x01';
  put_le(head, 312, 2);  // pre-skip
  put_le(head, 24000, 4);
  head += std::string(3, '\0');
  const std::string opus = ogg_page(0, head) + ogg_page(-1, "OpusTags") + ogg_page(48000, std::string(200, 'a')) +
                           ogg_page(48000 * 3 + 312, std::string(100, 'b'));
  CHECK(*audio_seconds(opus) == Approx(3.0));
  CHECK(*audio_seconds(opus.substr(0, opus.size() - 50)) == Approx((48000 - 312) / 48000.0));  // last page cut

  std::string vorbis = "\x01vorbis";
  put_le(vorbis, 0, 4);
  vorbis += '\x01';
  put_le(vorbis, 22050, 4);
  vorbis += std::string(16, '\0');
  CHECK(*audio_seconds(ogg_page(0, vorbis) + ogg_page(44100, "x")) == Approx(2.0));

  CHECK(*audio_seconds(adts_frames(24, 6)) == Approx(24 * 1024 / 24000.0));
  CHECK(*audio_seconds(adts_frames(10, 3, 2)) == Approx(10 * 2048 / 48000.0));

  CHECK(*audio_seconds(std::string(48000 * 2, '\0'), "pcm") == Approx(2.0));  // 24 kHz, 16-bit mono
}

TEST_CASE("audio_seconds: anything else says nothing", "[audio]") {
  CHECK_FALSE(audio_seconds(""));
  CHECK_FALSE(audio_seconds(std::string(4096, '\xff')));
  CHECK_FALSE(audio_seconds("{\"error\":{\"message\":\"x\"}}"));
  CHECK_FALSE(audio_seconds("RIFF"));
  CHECK_FALSE(audio_seconds("fLaC"));
  CHECK_FALSE(audio_seconds("OggS"));
  CHECK_FALSE(audio_seconds("ID3\x04\x00\x00\x7f\x7f\x7f\x7f"));
  CHECK_FALSE(audio_seconds("", "pcm"));
}
