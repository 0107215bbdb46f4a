#include "modalities/audio/audio_io.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

#if TESSERA_WITH_SNDFILE
#include <sndfile.h>
#endif
#if TESSERA_WITH_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/channel_layout.h>
#include <libavutil/error.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libswresample/swresample.h>
}
#endif

#include "core/error.h"
#include "core/io/files.h"
#include "core/io/durable.h"

namespace tessera::audio {
namespace fs = std::filesystem;

namespace {

constexpr int64_t kMaxChannels = 64;

uint32_t le32(const unsigned char* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

// Decoders read a cut-off WAV as a shorter one; a RIFF/WAVE file whose data chunk declares more bytes
// than the file holds is rejected here instead.
void check_wav_complete(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<unsigned char> head(12);
  if (!in.read(reinterpret_cast<char*>(head.data()), 12)) return;
  if (std::memcmp(head.data(), "RIFF", 4) != 0 || std::memcmp(head.data() + 8, "WAVE", 4) != 0) return;
  const uint64_t size = fs::file_size(path);
  uint64_t pos = 12;
  unsigned char chunk[8];
  while (pos + 8 <= size) {
    in.seekg(static_cast<std::streamoff>(pos));
    if (!in.read(reinterpret_cast<char*>(chunk), 8)) break;
    const uint64_t length = le32(chunk + 4);
    if (std::memcmp(chunk, "data", 4) == 0) {
      // 0 and 0xFFFFFFFF mean "unknown length" (streamed WAV): nothing to compare against.
      if (length != 0 && length != 0xFFFFFFFFu && pos + 8 + length > size)
        fail("audio file '", path.string(), "' is truncated: its data chunk declares ", length, " bytes but only ",
             size - pos - 8, " are present; re-export or re-download the file");
      return;
    }
    pos += 8 + length + (length & 1);
  }
  fail("audio file '", path.string(), "' is a WAV file without a data chunk (truncated or corrupt)");
}

void check_readable(const fs::path& path) {
  std::error_code ec;
  check(fs::exists(path, ec), "audio file '", path.string(), "' does not exist");
  check(fs::is_regular_file(path, ec), "audio file '", path.string(), "' is not a regular file");
  check(fs::file_size(path, ec) > 0, "audio file '", path.string(), "' is empty (0 bytes)");
}

// Interleaved float samples -> [C, T].
[[maybe_unused]] at::Tensor deinterleave(std::vector<float>& interleaved, int64_t channels) {
  const int64_t frames = static_cast<int64_t>(interleaved.size()) / channels;
  at::Tensor t = at::from_blob(interleaved.data(), {frames, channels}, at::kFloat).clone();
  return t.t().contiguous();
}

struct [[maybe_unused]] Decoded {
  at::Tensor channels_by_time;  // float32 [C, T]
  int64_t rate = 0;
};

#if TESSERA_WITH_SNDFILE
bool read_with_sndfile(const fs::path& path, Decoded& out, std::string& error) {
  SF_INFO info{};
  SNDFILE* f = sf_open(path.c_str(), SFM_READ, &info);
  if (!f) {
    error = sf_strerror(nullptr);
    return false;
  }
  std::unique_ptr<SNDFILE, int (*)(SNDFILE*)> guard(f, sf_close);
  if (info.channels < 1 || info.channels > kMaxChannels)
    fail("audio file '", path.string(), "' has an unsupported channel layout (", info.channels,
         " channels; 1..", kMaxChannels, " are supported)");
  check(info.samplerate > 0, "audio file '", path.string(), "' declares an invalid sample rate ", info.samplerate);
  std::vector<float> buf;
  std::vector<float> block(static_cast<size_t>(4096) * info.channels);
  while (true) {
    const sf_count_t n = sf_readf_float(f, block.data(), 4096);
    if (n <= 0) break;
    buf.insert(buf.end(), block.begin(), block.begin() + n * info.channels);
  }
  if (sf_error(f) != SF_ERR_NO_ERROR)
    fail("cannot decode audio file '", path.string(), "': ", sf_strerror(f));
  check(!buf.empty(), "audio file '", path.string(), "' contains no audio samples (zero length)");
  out.channels_by_time = deinterleave(buf, info.channels);
  out.rate = info.samplerate;
  return true;
}
#endif

#if TESSERA_WITH_FFMPEG
std::string av_error(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, buf, sizeof buf);
  return buf;
}

struct FormatCloser {
  void operator()(AVFormatContext* c) const { avformat_close_input(&c); }
};
struct CodecCloser {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct SwrCloser {
  void operator()(SwrContext* c) const { swr_free(&c); }
};
struct PacketCloser {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct FrameCloser {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};

void read_with_ffmpeg(const fs::path& path, Decoded& out) {
  av_log_set_level(AV_LOG_QUIET);
  const std::string name = path.string();
  AVFormatContext* raw = nullptr;
  int rc = avformat_open_input(&raw, name.c_str(), nullptr, nullptr);
  if (rc < 0) fail("cannot decode audio file '", name, "': FFmpeg cannot open it (", av_error(rc), ")");
  std::unique_ptr<AVFormatContext, FormatCloser> fmt(raw);
  rc = avformat_find_stream_info(fmt.get(), nullptr);
  if (rc < 0) fail("cannot decode audio file '", name, "': no stream information (", av_error(rc), ")");
  const AVCodec* codec = nullptr;
  const int stream = av_find_best_stream(fmt.get(), AVMEDIA_TYPE_AUDIO, -1, -1, &codec, 0);
  if (stream < 0 || !codec) fail("cannot decode audio file '", name, "': it has no decodable audio stream");
  std::unique_ptr<AVCodecContext, CodecCloser> ctx(avcodec_alloc_context3(codec));
  check(ctx != nullptr, "cannot decode audio file '", name, "': out of memory");
  rc = avcodec_parameters_to_context(ctx.get(), fmt->streams[stream]->codecpar);
  if (rc >= 0) rc = avcodec_open2(ctx.get(), codec, nullptr);
  if (rc < 0) fail("cannot decode audio file '", name, "': cannot open the ", codec->name, " decoder (", av_error(rc), ")");
  const int channels = ctx->ch_layout.nb_channels;
  if (channels < 1 || channels > kMaxChannels)
    fail("audio file '", name, "' has an unsupported channel layout (", channels, " channels; 1..", kMaxChannels,
         " are supported)");
  check(ctx->sample_rate > 0, "audio file '", name, "' declares an invalid sample rate ", ctx->sample_rate);
  AVChannelLayout layout;
  if (ctx->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC)
    av_channel_layout_default(&layout, channels);
  else
    av_channel_layout_copy(&layout, &ctx->ch_layout);
  // Format conversion only (same layout and rate): interleaved float. The mixdown (a plain average)
  // and resampling happen afterwards, the same for both decoders.
  SwrContext* swr_raw = nullptr;
  rc = swr_alloc_set_opts2(&swr_raw, &layout, AV_SAMPLE_FMT_FLT, ctx->sample_rate, &layout, ctx->sample_fmt,
                           ctx->sample_rate, 0, nullptr);
  std::unique_ptr<SwrContext, SwrCloser> swr(swr_raw);
  av_channel_layout_uninit(&layout);
  if (rc < 0 || (rc = swr_init(swr.get())) < 0)
    fail("audio file '", name, "' has an unsupported sample layout (", channels, " channels, format ",
         ctx->sample_fmt, "): ", av_error(rc));

  std::unique_ptr<AVPacket, PacketCloser> pkt(av_packet_alloc());
  std::unique_ptr<AVFrame, FrameCloser> frame(av_frame_alloc());
  std::vector<float> buf;
  std::string last_error;
  auto drain = [&]() {
    while (true) {
      const int r = avcodec_receive_frame(ctx.get(), frame.get());
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return;
      if (r < 0) {
        last_error = av_error(r);
        return;
      }
      if (frame->format != ctx->sample_fmt || frame->ch_layout.nb_channels != channels ||
          frame->sample_rate != ctx->sample_rate)
        fail("audio file '", name, "' changes its sample format, channel count or rate mid-stream; convert it "
             "to a constant layout first");
      const size_t at = buf.size();
      buf.resize(at + static_cast<size_t>(frame->nb_samples) * channels);
      uint8_t* dst = reinterpret_cast<uint8_t*>(buf.data() + at);
      const int got = swr_convert(swr.get(), &dst, frame->nb_samples,
                                  const_cast<const uint8_t**>(frame->extended_data), frame->nb_samples);
      if (got < 0) fail("cannot convert the samples of audio file '", name, "': ", av_error(got));
      buf.resize(at + static_cast<size_t>(got) * channels);
      av_frame_unref(frame.get());
    }
  };
  while ((rc = av_read_frame(fmt.get(), pkt.get())) >= 0) {
    if (pkt->stream_index == stream) {
      const int r = avcodec_send_packet(ctx.get(), pkt.get());
      if (r < 0 && r != AVERROR(EAGAIN)) last_error = av_error(r);
      drain();
    }
    av_packet_unref(pkt.get());
  }
  if (rc != AVERROR_EOF) last_error = av_error(rc);
  avcodec_send_packet(ctx.get(), nullptr);
  drain();
  if (buf.empty())
    fail("audio file '", name, "' contains no audio samples",
         last_error.empty() ? std::string(" (zero length)") : " that decode (" + last_error + ")");
  out.channels_by_time = deinterleave(buf, channels);
  out.rate = ctx->sample_rate;
}
#endif

[[maybe_unused]] bool sndfile_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* e : {".wav", ".wave", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".caf", ".w64", ".rf64"})
    if (ext == e) return true;
  return false;
}

}  // namespace

bool has_sndfile() {
#if TESSERA_WITH_SNDFILE
  return true;
#else
  return false;
#endif
}

bool has_ffmpeg() {
#if TESSERA_WITH_FFMPEG
  return true;
#else
  return false;
#endif
}

at::Tensor mix_down(const at::Tensor& x) {
  check(x.dim() == 1 || x.dim() == 2, "mix_down: expected audio [T] or [C, T], got ", x.sizes());
  if (x.dim() == 1) return x.to(at::kFloat).contiguous();
  check(x.size(0) >= 1, "mix_down: audio has no channels");
  return x.to(at::kFloat).mean(0).contiguous();
}

at::Tensor resample(const at::Tensor& samples, int64_t from_rate, int64_t to_rate) {
  check(samples.dim() == 1, "resample: expected mono audio [T], got ", samples.sizes());
  check(from_rate > 0 && to_rate > 0, "resample: sample rates must be positive (got ", from_rate, " -> ", to_rate, ")");
  at::Tensor x = samples.to(at::kCPU, at::kFloat).contiguous();
  if (from_rate == to_rate || x.numel() == 0) return x.clone();
#if !TESSERA_WITH_FFMPEG
  fail("resample: this build of Tessera has no FFmpeg (TESSERA_WITH_FFMPEG is OFF), so it cannot resample audio "
       "from ", from_rate, " Hz to ", to_rate, " Hz; install libswresample-dev (scripts/setup.sh does) and rebuild, "
       "or provide audio at ", to_rate, " Hz");
#else
  check(from_rate <= INT32_MAX && to_rate <= INT32_MAX, "resample: sample rate too large");
  AVChannelLayout mono;
  av_channel_layout_default(&mono, 1);
  SwrContext* raw = nullptr;
  int rc = swr_alloc_set_opts2(&raw, &mono, AV_SAMPLE_FMT_FLT, static_cast<int>(to_rate), &mono, AV_SAMPLE_FMT_FLT,
                               static_cast<int>(from_rate), 0, nullptr);
  std::unique_ptr<SwrContext, SwrCloser> swr(raw);
  if (rc < 0 || (rc = swr_init(swr.get())) < 0) fail("resample: libswresample failed to initialise: ", av_error(rc));
  const int64_t n = x.numel();
  const int64_t expected = (n * to_rate + from_rate - 1) / from_rate;
  std::vector<float> out(static_cast<size_t>(expected + 256));
  check(n <= INT32_MAX, "resample: audio too long for one call (", n, " samples)");
  const uint8_t* in = reinterpret_cast<const uint8_t*>(x.data_ptr<float>());
  int64_t have = 0;
  auto convert = [&](const uint8_t** src, int count) {
    while (true) {
      const int64_t room = static_cast<int64_t>(out.size()) - have;
      uint8_t* dst = reinterpret_cast<uint8_t*>(out.data() + have);
      const int got = swr_convert(swr.get(), &dst, static_cast<int>(room), src, count);
      if (got < 0) fail("resample: libswresample failed: ", av_error(got));
      have += got;
      if (got < room) return;  // all output produced
      out.resize(out.size() * 2);
      src = nullptr;  // input consumed by the first call; keep draining
      count = 0;
    }
  };
  convert(&in, static_cast<int>(n));
  convert(nullptr, 0);  // flush the filter's delay line
  const int64_t keep = std::min(have, expected);
  return at::from_blob(out.data(), {keep}, at::kFloat).clone();
#endif
}

Audio read_audio(const fs::path& path, int64_t sample_rate, Decoder decoder) {
  check_readable(path);
  check_wav_complete(path);
  Decoded d;
  bool done = false;
  std::string sndfile_error;
  if (decoder == Decoder::kSndfile || (decoder == Decoder::kAuto && sndfile_extension(path))) {
#if TESSERA_WITH_SNDFILE
    done = read_with_sndfile(path, d, sndfile_error);
    if (!done && decoder == Decoder::kSndfile)
      fail("cannot decode audio file '", path.string(), "' with libsndfile: ", sndfile_error);
#else
    if (decoder == Decoder::kSndfile)
      fail("cannot read audio file '", path.string(), "': this build of Tessera has no libsndfile "
           "(TESSERA_WITH_SNDFILE is OFF); install libsndfile1-dev (scripts/setup.sh does) and rebuild");
#endif
  }
  if (!done) {
#if TESSERA_WITH_FFMPEG
    try {
      read_with_ffmpeg(path, d);
    } catch (const Error& e) {
      if (sndfile_error.empty()) throw;
      fail(e.what(), "; libsndfile could not read it either (", sndfile_error, ")");
    }
#else
    fail("cannot read audio file '", path.string(), "': ",
         sndfile_error.empty() ? std::string() : "libsndfile could not read it (" + sndfile_error + ") and ",
         "this build of Tessera has no FFmpeg (TESSERA_WITH_FFMPEG is OFF)",
         has_sndfile() ? "" : " and no libsndfile (TESSERA_WITH_SNDFILE is OFF)",
         "; install libsndfile1-dev and libavformat-dev libavcodec-dev libswresample-dev libavutil-dev "
         "(scripts/setup.sh does) and rebuild");
#endif
  }
  Audio a;
  a.original_sample_rate = d.rate;
  a.original_channels = d.channels_by_time.size(0);
  at::Tensor mono = mix_down(d.channels_by_time);
  a.sample_rate = sample_rate > 0 ? sample_rate : d.rate;
  a.samples = resample(mono, d.rate, a.sample_rate);
  check(a.samples.numel() > 0, "audio file '", path.string(), "' is too short to resample to ", a.sample_rate, " Hz");
  return a;
}

std::string encode_wav(const at::Tensor& samples, int64_t sample_rate, WavFormat format) {
  check(samples.dim() == 1 || samples.dim() == 2, "encode_wav: expected audio [T] or [C, T], got ", samples.sizes());
  check(samples.is_floating_point(), "encode_wav: expected float samples, got ", samples.scalar_type());
  check(sample_rate > 0 && sample_rate <= INT32_MAX, "encode_wav: invalid sample rate ", sample_rate);
  at::Tensor x = samples.dim() == 1 ? samples.unsqueeze(0) : samples;
  const int64_t channels = x.size(0);
  check(channels >= 1 && channels <= kMaxChannels, "encode_wav: unsupported channel count ", channels);
  // [C, T] -> interleaved [T, C]
  x = x.to(at::kCPU, at::kFloat).t().contiguous();
  const bool pcm = format == WavFormat::kPcm16;
  const uint32_t bytes_per_sample = pcm ? 2 : 4;
  const uint64_t data_bytes = static_cast<uint64_t>(x.numel()) * bytes_per_sample;
  check(data_bytes < 0xFFFFFFFFull - 64, "encode_wav: audio too long for a WAV file (", data_bytes, " bytes)");
  std::string out;
  auto u16 = [&](uint32_t v) { out.push_back(char(v & 0xFF)); out.push_back(char((v >> 8) & 0xFF)); };
  auto u32 = [&](uint32_t v) { u16(v & 0xFFFF); u16(v >> 16); };
  const uint32_t fmt_size = pcm ? 16 : 18;
  const uint32_t fact_size = pcm ? 0 : 12;
  out += "RIFF";
  u32(static_cast<uint32_t>(4 + 8 + fmt_size + fact_size + 8 + data_bytes));
  out += "WAVEfmt ";
  u32(fmt_size);
  u16(pcm ? 1 : 3);  // WAVE_FORMAT_PCM / WAVE_FORMAT_IEEE_FLOAT
  u16(static_cast<uint32_t>(channels));
  u32(static_cast<uint32_t>(sample_rate));
  u32(static_cast<uint32_t>(sample_rate * channels * bytes_per_sample));
  u16(static_cast<uint32_t>(channels * bytes_per_sample));
  u16(bytes_per_sample * 8);
  if (!pcm) {
    u16(0);  // cbSize
    out += "fact";
    u32(4);
    u32(static_cast<uint32_t>(x.size(0)));
  }
  out += "data";
  u32(static_cast<uint32_t>(data_bytes));
  const float* p = x.data_ptr<float>();
  const int64_t n = x.numel();
  const size_t at = out.size();
  out.resize(at + data_bytes);
  unsigned char* dst = reinterpret_cast<unsigned char*>(&out[at]);
  for (int64_t i = 0; i < n; ++i) {
    if (pcm) {
      const float v = std::isnan(p[i]) ? 0.0f : std::clamp(p[i], -1.0f, 1.0f);
      const int16_t s = static_cast<int16_t>(std::lrint(v * 32767.0f));
      const uint16_t u = static_cast<uint16_t>(s);
      dst[2 * i] = u & 0xFF;
      dst[2 * i + 1] = u >> 8;
    } else {
      uint32_t u;
      std::memcpy(&u, &p[i], 4);
      for (int b = 0; b < 4; ++b) dst[4 * i + b] = (u >> (8 * b)) & 0xFF;
    }
  }
  return out;
}

void write_wav(const fs::path& path, const at::Tensor& samples, int64_t sample_rate, WavFormat format) {
  const std::string bytes = encode_wav(samples, sample_rate, format);
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  write_bytes_atomic(path, bytes.data(), bytes.size());
}

void write_sndfile(const fs::path& path, const at::Tensor& samples, int64_t sample_rate) {
#if !TESSERA_WITH_SNDFILE
  fail("cannot write '", path.string(), "': this build of Tessera has no libsndfile (TESSERA_WITH_SNDFILE is OFF); "
       "install libsndfile1-dev (scripts/setup.sh does) and rebuild, or write WAV with write_wav");
#else
  check(samples.dim() == 1 || samples.dim() == 2, "write_sndfile: expected audio [T] or [C, T], got ", samples.sizes());
  check(sample_rate > 0 && sample_rate <= INT32_MAX, "write_sndfile: invalid sample rate ", sample_rate);
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  int format = 0;
  if (ext == ".flac")
    format = SF_FORMAT_FLAC | SF_FORMAT_PCM_16;
  else if (ext == ".ogg" || ext == ".oga")
    format = SF_FORMAT_OGG | SF_FORMAT_VORBIS;
  else
    fail("write_sndfile: '", path.string(), "' has extension '", ext, "'; use .flac or .ogg (write_wav writes WAV)");
  at::Tensor x = (samples.dim() == 1 ? samples.unsqueeze(0) : samples).to(at::kCPU, at::kFloat);
  const int64_t channels = x.size(0);
  check(channels >= 1 && channels <= kMaxChannels, "write_sndfile: unsupported channel count ", channels);
  x = x.clamp(-1.0, 1.0).t().contiguous();
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  const fs::path tmp = path.string() + io::detail::tmp_suffix();
  SF_INFO info{};
  info.samplerate = static_cast<int>(sample_rate);
  info.channels = static_cast<int>(channels);
  info.format = format;
  SNDFILE* f = sf_open(tmp.c_str(), SFM_WRITE, &info);
  if (!f) fail("cannot write '", path.string(), "': ", sf_strerror(nullptr));
  const sf_count_t frames = x.size(0);
  const sf_count_t wrote = sf_writef_float(f, x.data_ptr<float>(), frames);
  const std::string err = wrote == frames ? "" : sf_strerror(f);
  sf_write_sync(f);
  sf_close(f);
  if (!err.empty()) {
    std::error_code ec;
    fs::remove(tmp, ec);
    fail("cannot write '", path.string(), "': ", err);
  }
  io::detail::rename_or_fail(tmp, path);
  io::detail::fsync_dir(path.has_parent_path() ? path.parent_path() : fs::path("."));
#endif
}

}  // namespace tessera::audio
