// Audio files <-> mono float32 waveforms on the CPU (ARCHITECTURE §2: the audio payload before it
// becomes speech units).
//
// Reading: WAV/FLAC/OGG (and anything else libsndfile knows) through libsndfile when the build has it
// (TESSERA_WITH_SNDFILE); everything else (MP3, M4A/AAC, Opus, a video's audio track) through
// libavformat/libavcodec (TESSERA_WITH_FFMPEG), which is also the fallback for files libsndfile
// rejects. Channels are mixed down to mono by averaging; the result is resampled to the requested rate
// with libswresample (both paths). Writing WAV (PCM16 or float32 RIFF) is done here and needs no
// library, so it works on the GPU machine, where reading and resampling are errors naming the library.
//
//   Audio a = read_audio("clip.mp3");              // 16 kHz mono float32 [T] in [-1, 1]
//   write_wav("out.wav", a.samples, a.sample_rate);
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>

namespace tessera::audio {

inline constexpr int64_t kDefaultSampleRate = 16000;

// Whether this build reads audio files with libsndfile / decodes with FFmpeg (and resamples).
bool has_sndfile();
bool has_ffmpeg();

struct Audio {
  at::Tensor samples;               // float32 [T], mono, contiguous CPU, nominally in [-1, 1]
  int64_t sample_rate = 0;          // rate of `samples` (the requested target rate)
  int64_t original_sample_rate = 0; // the file's rate
  int64_t original_channels = 0;    // the file's channel count before the mixdown
};

// Which decoder read_audio uses: kAuto tries libsndfile first (when built with it and the file is a
// format it knows), then FFmpeg; the others force one (an error if this build lacks it).
enum class Decoder { kAuto, kSndfile, kFfmpeg };

// Reads `path`, mixes down to mono and resamples to `sample_rate` (<= 0 keeps the file's rate). A
// missing, empty, truncated or undecodable file, one with no audio stream or no samples, or an
// unsupported channel layout is a tessera::Error naming the file.
Audio read_audio(const std::filesystem::path& path, int64_t sample_rate = kDefaultSampleRate,
                 Decoder decoder = Decoder::kAuto);

// Resamples a mono float32 waveform [T] from `from_rate` to `to_rate` with libswresample (a copy when
// the rates are equal). Needs FFmpeg.
at::Tensor resample(const at::Tensor& samples, int64_t from_rate, int64_t to_rate);

// Averages the channels of interleaved-by-row audio [C, T] (or returns [T] unchanged) to mono [T].
at::Tensor mix_down(const at::Tensor& channels_by_time);

enum class WavFormat { kPcm16, kFloat32 };

// WAV bytes of `samples`: float [T] (mono) or [C, T]; PCM16 values are round(x * 32767) after clamping
// to [-1, 1]; float32 stores the values as they are. No library needed.
std::string encode_wav(const at::Tensor& samples, int64_t sample_rate, WavFormat format = WavFormat::kPcm16);
// Writes a WAV file atomically (temporary file, fsync, rename); creates missing folders.
void write_wav(const std::filesystem::path& path, const at::Tensor& samples, int64_t sample_rate,
               WavFormat format = WavFormat::kPcm16);

// FLAC (16-bit) or Ogg Vorbis through libsndfile, atomically; the container follows `path`'s
// extension (.flac, .ogg). Needs libsndfile: used by tests and by corpus tools.
void write_sndfile(const std::filesystem::path& path, const at::Tensor& samples, int64_t sample_rate);

}  // namespace tessera::audio
