// Audio I/O: WAV writing (no library), reading through libsndfile and FFmpeg, FLAC/OGG round trips,
// resampling against sines of known frequency, stereo mixdown and bad-input errors. Cases that need a
// library the build lacks are skipped, except the ones checking the "no library" error itself.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>

#include "modalities/audio/audio_io.h"
#include "modalities_test_util.h"

#if TESSERA_WITH_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/channel_layout.h>
}
#endif

namespace tessera::audio {
namespace {
namespace fs = std::filesystem;
using tessera::testing::contains;
using tessera::testing::read_bytes;
using tessera::testing::TempDir;
using tessera::testing::what_of;
using tessera::testing::write_bytes;

bool can_read() { return has_sndfile() || has_ffmpeg(); }

at::Tensor sine(double freq, double rate, int64_t n, double amplitude = 0.5, double phase = 0.0) {
  const at::Tensor t = at::arange(n, at::kDouble) / rate;
  return (amplitude * at::sin(2 * M_PI * freq * t + phase)).to(at::kFloat);
}

// Frequency (Hz) of the largest rfft bin of `x` (Hann-windowed) and the RMS of `x`.
double peak_hz(const at::Tensor& x, double rate) {
  const at::Tensor w = at::hann_window(x.size(0), true, at::kDouble);
  const at::Tensor mag = at::abs(at::fft_rfft(x.to(at::kDouble) * w));
  return mag.argmax().item<int64_t>() * rate / x.size(0);
}
double rms(const at::Tensor& x) { return std::sqrt(x.to(at::kDouble).pow(2).mean().item<double>()); }

#if TESSERA_WITH_FFMPEG
// Encodes float [C, T] as AAC in an M4A (MP4) container with the FFmpeg libraries (the native AAC
// encoder every FFmpeg build has). Returns false where the encoder or muxer is missing.
bool write_m4a(const fs::path& path, const at::Tensor& audio, int rate) {
  const at::Tensor x = audio.contiguous();
  const int channels = static_cast<int>(x.size(0));
  const int64_t total = x.size(1);
  AVFormatContext* oc = nullptr;
  if (avformat_alloc_output_context2(&oc, nullptr, nullptr, path.c_str()) < 0 || !oc) return false;
  const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_AAC);
  if (!codec) {
    avformat_free_context(oc);
    return false;
  }
  AVStream* st = avformat_new_stream(oc, nullptr);
  AVCodecContext* c = avcodec_alloc_context3(codec);
  c->sample_fmt = AV_SAMPLE_FMT_FLTP;
  c->sample_rate = rate;
  av_channel_layout_default(&c->ch_layout, channels);
  c->bit_rate = 128000;
  c->time_base = AVRational{1, rate};
  if (oc->oformat->flags & AVFMT_GLOBALHEADER) c->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  bool ok = avcodec_open2(c, codec, nullptr) >= 0 && avcodec_parameters_from_context(st->codecpar, c) >= 0;
  st->time_base = c->time_base;
  ok = ok && avio_open(&oc->pb, path.c_str(), AVIO_FLAG_WRITE) >= 0 && avformat_write_header(oc, nullptr) >= 0;
  AVFrame* frame = av_frame_alloc();
  AVPacket* pkt = av_packet_alloc();
  auto drain = [&] {
    while (ok && avcodec_receive_packet(c, pkt) >= 0) {
      av_packet_rescale_ts(pkt, c->time_base, st->time_base);
      pkt->stream_index = st->index;
      ok = av_interleaved_write_frame(oc, pkt) >= 0;
    }
  };
  for (int64_t pos = 0; ok && pos < total; pos += c->frame_size) {
    av_frame_unref(frame);
    frame->nb_samples = static_cast<int>(std::min<int64_t>(c->frame_size, total - pos));
    frame->format = AV_SAMPLE_FMT_FLTP;
    frame->sample_rate = rate;
    av_channel_layout_copy(&frame->ch_layout, &c->ch_layout);
    ok = av_frame_get_buffer(frame, 0) >= 0;
    for (int ch = 0; ok && ch < channels; ++ch)
      std::memcpy(frame->data[ch], x[ch].data_ptr<float>() + pos, sizeof(float) * frame->nb_samples);
    frame->pts = pos;
    ok = ok && avcodec_send_frame(c, frame) >= 0;
    drain();
  }
  if (ok) avcodec_send_frame(c, nullptr);
  drain();
  if (ok) ok = av_write_trailer(oc) >= 0;
  av_packet_free(&pkt);
  av_frame_free(&frame);
  avcodec_free_context(&c);
  if (oc->pb) avio_closep(&oc->pb);
  avformat_free_context(oc);
  return ok;
}
#endif

TEST(AudioWav, EncodesAStandardHeader) {
  const std::string pcm = encode_wav(sine(440, 16000, 100), 16000);
  ASSERT_EQ(pcm.size(), 44u + 200u);
  EXPECT_EQ(pcm.substr(0, 4), "RIFF");
  EXPECT_EQ(pcm.substr(8, 8), "WAVEfmt ");
  EXPECT_EQ(pcm[20], 1);                 // PCM
  EXPECT_EQ(pcm[22], 1);                 // mono
  EXPECT_EQ(pcm.substr(36, 4), "data");
  const std::string f32 = encode_wav(at::zeros({2, 10}), 8000, WavFormat::kFloat32);
  EXPECT_EQ(f32[20], 3);                 // IEEE float
  EXPECT_EQ(f32[22], 2);                 // stereo
  EXPECT_EQ(f32.size(), 58u + 80u);      // RIFF/fmt(18)/fact headers + 2 * 10 * 4 bytes
  EXPECT_TRUE(contains(what_of([] { encode_wav(at::zeros({2, 2, 2}), 16000); }), "[T] or [C, T]"));
  EXPECT_TRUE(contains(what_of([] { encode_wav(at::zeros({4}), 0); }), "sample rate"));
}

TEST(AudioWav, WriteIsAtomicAndCreatesFolders) {
  TempDir dir;
  const fs::path p = dir / "a/b/clip.wav";
  write_wav(p, sine(440, 16000, 1600), 16000);
  EXPECT_EQ(read_bytes(p), encode_wav(sine(440, 16000, 1600), 16000));
  for (const auto& e : fs::directory_iterator(p.parent_path()))
    EXPECT_EQ(e.path().filename(), "clip.wav") << "left behind: " << e.path();
}

TEST(AudioWav, Pcm16AndFloatRoundTrip) {
  if (!can_read()) GTEST_SKIP() << "no audio decoder in this build";
  TempDir dir;
  const at::Tensor x = sine(523.25, 16000, 8000, 0.9) + 0.05 * sine(3000, 16000, 8000, 1.0);
  write_wav(dir / "pcm.wav", x, 16000);
  const Audio a = read_audio(dir / "pcm.wav");
  EXPECT_EQ(a.sample_rate, 16000);
  EXPECT_EQ(a.original_sample_rate, 16000);
  EXPECT_EQ(a.original_channels, 1);
  ASSERT_EQ(a.samples.sizes(), x.sizes());
  EXPECT_EQ(a.samples.scalar_type(), at::kFloat);
  // PCM16: round(x * 32767) read back as s / 32768 by the decoders.
  EXPECT_LE((a.samples - x).abs().max().item<double>(), 1.5 / 32767 + x.abs().max().item<double>() / 32767);
  write_wav(dir / "float.wav", x, 16000, WavFormat::kFloat32);
  EXPECT_TRUE(at::equal(read_audio(dir / "float.wav").samples, x));
  if (has_ffmpeg()) {
    const Audio f = read_audio(dir / "float.wav", 16000, Decoder::kFfmpeg);
    EXPECT_TRUE(at::equal(f.samples, x));
  }
}

TEST(AudioWav, StereoIsMixedDownByAveraging) {
  const at::Tensor left = sine(440, 16000, 4000, 0.6), right = sine(880, 16000, 4000, 0.2);
  EXPECT_TRUE(at::allclose(mix_down(at::stack({left, right})), (left + right) / 2));
  EXPECT_TRUE(at::equal(mix_down(left), left));
  if (!can_read()) GTEST_SKIP() << "no audio decoder in this build";
  TempDir dir;
  write_wav(dir / "stereo.wav", at::stack({left, right}), 16000, WavFormat::kFloat32);
  for (Decoder d : {Decoder::kAuto, Decoder::kFfmpeg}) {
    if (d == Decoder::kFfmpeg && !has_ffmpeg()) continue;
    const Audio a = read_audio(dir / "stereo.wav", 16000, d);
    EXPECT_EQ(a.original_channels, 2);
    EXPECT_TRUE(at::allclose(a.samples, (left + right) / 2, 0, 1e-7));
  }
}

TEST(AudioSndfile, FlacAndOggRoundTrip) {
  if (!has_sndfile()) {
    EXPECT_TRUE(contains(what_of([] { write_sndfile("/tmp/x.flac", at::zeros({10}), 16000); }), "libsndfile"));
    GTEST_SKIP() << "no libsndfile in this build";
  }
  TempDir dir;
  const at::Tensor x = sine(440, 16000, 16000, 0.5);
  write_sndfile(dir / "clip.flac", x, 16000);
  const Audio flac = read_audio(dir / "clip.flac");
  ASSERT_EQ(flac.samples.sizes(), x.sizes());
  EXPECT_LE((flac.samples - x).abs().max().item<double>(), 1.5 / 32767);
  if (has_ffmpeg()) {  // the same file through the other decoder
    EXPECT_LE((read_audio(dir / "clip.flac", 16000, Decoder::kFfmpeg).samples - x).abs().max().item<double>(),
              1.5 / 32767);
  }
  // Ogg Vorbis is lossy: same length, same pitch, same loudness.
  write_sndfile(dir / "clip.ogg", x, 16000);
  const Audio ogg = read_audio(dir / "clip.ogg");
  EXPECT_EQ(ogg.samples.size(0), x.size(0));
  EXPECT_NEAR(peak_hz(ogg.samples, 16000), 440.0, 1.0);
  EXPECT_NEAR(rms(ogg.samples), rms(x), 0.05 * rms(x));
  EXPECT_TRUE(contains(what_of([&] { write_sndfile(dir / "clip.mp3", x, 16000); }), ".flac or .ogg"));
}

TEST(AudioFfmpeg, DecodesAnM4aWrittenByTheFfmpegLibraries) {
#if !TESSERA_WITH_FFMPEG
  GTEST_SKIP() << "no FFmpeg in this build";
#else
  TempDir dir;
  const at::Tensor stereo = at::stack({sine(440, 44100, 44100, 0.5), sine(440, 44100, 44100, 0.5, 0.2)});
  if (!write_m4a(dir / "clip.m4a", stereo, 44100)) GTEST_SKIP() << "this FFmpeg has no AAC encoder or MP4 muxer";
  const Audio a = read_audio(dir / "clip.m4a");
  EXPECT_EQ(a.original_sample_rate, 44100);
  EXPECT_EQ(a.original_channels, 2);
  EXPECT_EQ(a.sample_rate, 16000);
  EXPECT_NEAR(static_cast<double>(a.samples.size(0)), 16000.0, 800.0);  // AAC frames of 1024 samples, priming
  const at::Tensor mid = a.samples.slice(0, 4000, 12000);
  EXPECT_NEAR(peak_hz(mid, 16000), 440.0, 2.0);
  EXPECT_NEAR(rms(mid), rms(mix_down(stereo)), 0.1 * rms(mix_down(stereo)));
  // The same file cut in half still decodes what is there or fails naming the file; it never crashes.
  const std::string bytes = read_bytes(dir / "clip.m4a");
  write_bytes(dir / "cut.m4a", bytes.substr(0, bytes.size() / 2));
  try {
    EXPECT_GT(read_audio(dir / "cut.m4a").samples.size(0), 0);
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "cut.m4a")) << e.what();
  }
#endif
}

TEST(AudioResample, SineKeepsItsFrequencyAndAmplitude) {
  if (!has_ffmpeg()) {
    EXPECT_TRUE(contains(what_of([] { resample(at::zeros({441}), 44100, 16000); }), "FFmpeg"));
    GTEST_SKIP() << "no FFmpeg in this build";
  }
  for (double freq : {1000.0, 6000.0}) {
    const at::Tensor x = sine(freq, 44100, 44100, 0.8);
    const at::Tensor y = resample(x, 44100, 16000);
    ASSERT_EQ(y.size(0), 16000) << freq;
    const at::Tensor mid = y.slice(0, 4000, 12000);  // 0.5 s away from the edges: 2 Hz bins
    EXPECT_NEAR(peak_hz(mid, 16000), freq, 2.0) << freq;
    EXPECT_NEAR(rms(mid), 0.8 / std::sqrt(2.0), 0.01) << freq;
    EXPECT_NEAR(mid.abs().max().item<double>(), 0.8, 0.02) << freq;
  }
  // Above the new Nyquist frequency (8 kHz): filtered out, not aliased to 16 - 10 = 6 kHz.
  const at::Tensor high = resample(sine(10000, 44100, 44100, 0.8), 44100, 16000);
  EXPECT_LT(rms(high.slice(0, 4000, 12000)), 0.01);
  // Upsampling back keeps the tone too; equal rates copy.
  EXPECT_NEAR(peak_hz(resample(sine(440, 16000, 16000), 16000, 48000).slice(0, 12000, 36000), 48000), 440, 2.0);
  EXPECT_TRUE(at::equal(resample(sine(440, 16000, 100), 16000, 16000), sine(440, 16000, 100)));
  EXPECT_TRUE(contains(what_of([] { resample(at::zeros({2, 4}), 16000, 8000); }), "mono"));
}

TEST(AudioResample, ReadAudioResamplesAndKeepsTheOriginalRate) {
  if (!has_sndfile() || !has_ffmpeg()) GTEST_SKIP() << "needs libsndfile and FFmpeg";
  TempDir dir;
  write_wav(dir / "cd.wav", at::stack({sine(1000, 44100, 22050, 0.5), sine(1000, 44100, 22050, 0.5)}), 44100);
  for (Decoder d : {Decoder::kSndfile, Decoder::kFfmpeg}) {
    const Audio a = read_audio(dir / "cd.wav", 16000, d);
    EXPECT_EQ(a.sample_rate, 16000);
    EXPECT_EQ(a.original_sample_rate, 44100);
    EXPECT_EQ(a.original_channels, 2);
    ASSERT_EQ(a.samples.size(0), 8000);
    EXPECT_NEAR(peak_hz(a.samples.slice(0, 2000, 6000), 16000), 1000, 4.0);
    EXPECT_NEAR(rms(a.samples.slice(0, 2000, 6000)), 0.5 / std::sqrt(2.0), 0.01);
  }
  EXPECT_EQ(read_audio(dir / "cd.wav", 0).sample_rate, 44100);  // 0 keeps the file's rate
}

TEST(AudioErrors, BadInputsNameTheFile) {
  TempDir dir;
  const fs::path missing = dir / "missing.wav";
  EXPECT_TRUE(contains(what_of([&] { read_audio(missing); }), "missing.wav' does not exist"));
  write_bytes(dir / "empty.flac", "");
  EXPECT_TRUE(contains(what_of([&] { read_audio(dir / "empty.flac"); }), "empty.flac' is empty"));
  // A WAV cut in the middle of its data.
  const std::string wav = encode_wav(sine(440, 16000, 1000), 16000);
  write_bytes(dir / "cut.wav", wav.substr(0, wav.size() / 2));
  const std::string cut = what_of([&] { read_audio(dir / "cut.wav"); });
  EXPECT_TRUE(contains(cut, "cut.wav' is truncated")) << cut;
  // Only the first bytes of the header.
  write_bytes(dir / "head.wav", wav.substr(0, 20));
  const std::string head = what_of([&] { read_audio(dir / "head.wav"); });
  EXPECT_TRUE(contains(head, "head.wav")) << head;
  EXPECT_FALSE(contains(head, "(no error)"));
  // A complete header declaring no samples.
  std::string zero = wav.substr(0, 44);
  zero[40] = zero[41] = zero[42] = zero[43] = 0;
  write_bytes(dir / "zero.wav", zero);
  const std::string z = what_of([&] { read_audio(dir / "zero.wav"); });
  EXPECT_TRUE(contains(z, "zero.wav")) << z;
  if (can_read()) {
    EXPECT_TRUE(contains(z, "no audio samples")) << z;
  }
  // Garbage bytes, with an audio extension and without.
  std::string junk;
  for (int i = 0; i < 400; ++i) junk += "this is not audio, just a text file. ";
  for (const char* name : {"junk.wav", "junk.mp3", "junk.ogg", "junk.m4a"}) {
    write_bytes(dir / name, junk);
    const std::string e = what_of([&] { read_audio(dir / name); });
    EXPECT_TRUE(contains(e, name)) << e;
    EXPECT_FALSE(contains(e, "(no error)")) << name;
  }
  if (!can_read()) {
    write_wav(dir / "ok.wav", sine(440, 16000, 100), 16000);
    const std::string e = what_of([&] { read_audio(dir / "ok.wav"); });
    EXPECT_TRUE(contains(e, "TESSERA_WITH_FFMPEG is OFF")) << e;
    EXPECT_TRUE(contains(e, "libsndfile")) << e;
  }
}

}  // namespace
}  // namespace tessera::audio
