// The playing time of an audio file, read from its container's headers: what a speech reply
// without usage (gpt-4o-mini-tts, non-stream) is estimated by. Pure: bytes in, seconds out.
#pragma once
#include <optional>
#include <string_view>

namespace tollgate {

// Seconds of audio in `bytes`, a whole file in one of the formats OpenAI's speech endpoint
// answers with (`response_format`): mp3 (MPEG audio frames, after an ID3v2 tag), wav (RIFF: the
// data chunk over the byte rate), flac (STREAMINFO's sample count), opus (Ogg: the last page's
// granule position at 48 kHz, less the pre-skip), aac (ADTS frames of 1,024 samples) and pcm
// (raw 24 kHz 16-bit mono, told by `format` == "pcm" since it has no header). nullopt when the
// bytes are none of these or say nothing usable (a cut or corrupt file gives what its whole
// frames hold).
std::optional<double> audio_seconds(std::string_view bytes, std::string_view format = {}) noexcept;

}  // namespace tollgate
