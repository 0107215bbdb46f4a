// The unit vocoder: Griffin-Lim against known signals, mel-cepstral distortion against a float64 loop,
// an overfit run of the units -> log-mel network, save/load, and the speech_units adapter through
// make_adapter (round trip, lengths, bad inputs, mismatching artifacts).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <string>

#include "core/train/runtime.h"
#include "modalities/audio/audio_io.h"
#include "core/io/files.h"
#include "modalities/registry.h"
#include "modalities/speech_units/speech_units_adapter.h"
#include "modalities/speech_units/units.h"
#include "modalities/speech_units/vocoder.h"
#include "modalities_test_util.h"

namespace tessera::speech {
namespace {
namespace fs = std::filesystem;
using tessera::testing::contains;
using tessera::testing::TempDir;
using tessera::testing::what_of;

at::Tensor sine(double hz, int64_t n, double amp = 0.5, int64_t rate = 16000) {
  return amp * at::sin(at::arange(n, at::kDouble) * (2 * M_PI * hz / rate)).to(at::kFloat);
}

// A speech-like test signal: a few harmonics with a moving pitch and a syllable-rate envelope.
at::Tensor harmonic_signal(int64_t n, uint64_t seed = 0) {
  at::manual_seed(seed);
  const at::Tensor t = at::arange(n, at::kDouble) / 16000.0;
  const at::Tensor f0 = 140.0 + 30.0 * at::sin(2 * M_PI * 1.5 * t);
  const at::Tensor phase = at::cumsum(f0 / 16000.0, 0) * (2 * M_PI);
  at::Tensor x = at::zeros({n}, at::kDouble);
  for (int h = 1; h <= 8; ++h) x = x + at::sin(phase * h) / h;
  const at::Tensor env = 0.5 + 0.5 * at::sin(2 * M_PI * 4.0 * t);
  return (0.2 * x * env + 0.005 * at::randn({n}, at::kDouble)).to(at::kFloat);
}

// Magnitude of the mel spectrum (sqrt of mel power) from a log-mel.
at::Tensor mel_magnitude(const at::Tensor& log_mel) { return at::exp(0.5 * log_mel.to(at::kDouble)); }

TEST(GriffinLim, ResynthesisedMelIsCloseToTheOriginal) {
  const FeatureConfig fc;
  const at::Tensor x = harmonic_signal(16000);
  const at::Tensor mel = log_mel(x, fc);
  GriffinLimConfig gl;
  gl.iterations = 32;
  const at::Tensor y = mel_to_waveform(mel, fc, gl);
  EXPECT_EQ(y.numel(), mel.size(0) * fc.hop_length - fc.hop_length / 2);
  const at::Tensor mel2 = log_mel(y, fc);
  ASSERT_EQ(mel2.sizes(), mel.sizes());  // F frames -> (F - 0.5) hop samples -> F frames again
  const double sc = spectral_convergence(mel_magnitude(mel), mel_magnitude(mel2));
  EXPECT_LT(sc, 0.25) << "spectral convergence of the mel magnitude";
  // More iterations do not make it worse, and both beat random phases (zero iterations).
  gl.iterations = 0;
  const double sc0 = spectral_convergence(mel_magnitude(mel), mel_magnitude(log_mel(mel_to_waveform(mel, fc, gl), fc)));
  EXPECT_LT(sc, sc0);
  EXPECT_LT(mel_cepstral_distortion(mel, mel2), 3.0);
}

TEST(GriffinLim, ExactMagnitudeConvergesAndPlainAndFastBothWork) {
  const FeatureConfig fc;
  const at::Tensor x = harmonic_signal(8000, 1);
  const at::Tensor window = at::hann_window(fc.win_length, true, at::kFloat);
  const auto magnitude_of = [&](const at::Tensor& w) {
    return at::stft(w, fc.n_fft, 80, fc.win_length, window, true, "reflect", false, true, true).abs().t();
  };
  const at::Tensor mag = magnitude_of(x);
  double previous = 1e9;
  for (const double momentum : {0.0, 0.99}) {
    GriffinLimConfig gl;
    gl.momentum = momentum;
    gl.iterations = 40;
    const at::Tensor y = griffin_lim(mag, fc, 80, x.numel(), gl);
    ASSERT_EQ(y.numel(), x.numel());
    const double sc = spectral_convergence(mag, magnitude_of(y));
    EXPECT_LT(sc, 0.2) << "momentum " << momentum;
    if (momentum > 0) {
      EXPECT_LT(sc, previous * 1.05) << "fast Griffin-Lim should not be worse than plain";
    }
    previous = sc;
  }
}

TEST(GriffinLim, PureSineKeepsItsFrequency) {
  const FeatureConfig fc;
  for (const double hz : {440.0, 1000.0, 2500.0}) {
    const at::Tensor mel = log_mel(sine(hz, 12000), fc);
    GriffinLimConfig gl;
    gl.iterations = 32;
    const at::Tensor y = mel_to_waveform(mel, fc, gl);
    // Dominant FFT bin of the resynthesis, away from the edges.
    const at::Tensor spectrum = at::fft_rfft(y.slice(0, 2000, 10000).to(at::kDouble) *
                                             at::hann_window(8000, true, at::kDouble)).abs();
    const double peak_hz = static_cast<double>(spectrum.argmax().item<int64_t>()) * 16000.0 / 8000.0;
    // The mel filters around `hz` are ~40-150 Hz apart: the inverse can only place energy that finely.
    EXPECT_NEAR(peak_hz, hz, 0.06 * hz + 20) << hz << " Hz";
  }
}

TEST(MelCepstralDistortion, ZeroForIdenticalAndMatchesAFloat64Loop) {
  at::manual_seed(5);
  const at::Tensor a = at::randn({7, 20}, at::kDouble) * 2 - 3;
  const at::Tensor b = a + at::randn({7, 20}, at::kDouble) * 0.3;
  EXPECT_EQ(mel_cepstral_distortion(a, a), 0.0);
  for (const double top_db : {0.0, 20.0}) {
    // Direct: clip, c_m = (2/N) sum_n L_n cos(pi m (n + 0.5) / N) on L = log-mel / 2, m = 1..12.
    const double floor = top_db > 0 ? a.max().item<double>() - top_db * std::log(10.0) / 10.0 : -1e300;
    const auto* pa = a.data_ptr<double>();
    const auto* pb = b.data_ptr<double>();
    const int n = 20;
    double total = 0;
    for (int f = 0; f < 7; ++f) {
      double sum = 0;
      for (int m = 1; m < 13; ++m) {
        double ca = 0, cb = 0;
        for (int k = 0; k < n; ++k) {
          const double w = 2.0 / n * std::cos(M_PI * m * (k + 0.5) / n);
          ca += w * 0.5 * std::max(pa[f * n + k], floor);
          cb += w * 0.5 * std::max(pb[f * n + k], floor);
        }
        sum += (ca - cb) * (ca - cb);
      }
      total += 10.0 * std::sqrt(2.0) / std::log(10.0) * std::sqrt(sum);
    }
    EXPECT_NEAR(mel_cepstral_distortion(a, b, 13, top_db), total / 7, 1e-9) << "top_db " << top_db;
  }
  // A constant offset (gain) changes only c_0: no distortion.
  EXPECT_NEAR(mel_cepstral_distortion(a, a + 1.7, 13, 0.0), 0.0, 1e-9);
  EXPECT_TRUE(contains(what_of([&] { mel_cepstral_distortion(a, a.slice(0, 1)); }), "same shape"));
}

// Units -> mel pairs where each unit has its own fixed spectrum: an exactly learnable mapping.
std::vector<UnitMelPair> toy_pairs(int64_t k, int64_t n_mels, int64_t utterances, int64_t frames) {
  at::manual_seed(11);
  const at::Tensor table = at::randn({k, n_mels}) * 2.0 - 5.0;
  std::vector<UnitMelPair> out;
  for (int64_t u = 0; u < utterances; ++u) {
    // Runs of 1..4 frames, like deduplicated units with durations.
    const at::Tensor runs = at::randint(0, k, {frames}, at::kLong);
    const at::Tensor reps = at::randint(1, 5, {frames}, at::kLong);
    const at::Tensor units = at::repeat_interleave(runs, reps).slice(0, 0, frames).contiguous();
    out.push_back({units, table.index_select(0, units)});
  }
  return out;
}

TEST(Vocoder, OverfitsAFixedTinyBatchQuickly) {
  const auto start = std::chrono::steady_clock::now();
  seed_everything(0);
  VocoderModelConfig model;
  model.channels = 48;
  model.blocks = 2;
  model.kernel_size = 3;
  const auto data = toy_pairs(12, 16, 3, 64);
  VocoderNet net(model, 12, 16);
  VocoderTrainConfig train;
  train.steps = 150;
  train.batch_size = 4;
  train.crop_frames = 64;
  train.lr = 1e-2;
  train.warmup_steps = 10;
  train.log_every = 10;
  const auto records = train_vocoder(net, data, train, at::kCPU);
  ASSERT_EQ(records.size(), 15u);
  EXPECT_EQ(records.back().step, 150);
  EXPECT_LT(records.back().loss, 0.2 * records.front().loss)
      << "first " << records.front().loss << " last " << records.back().loss;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 20.0);
}

// A unit model (k-means on MFCC of tones) and a vocoder for it, saved in `dir`.
struct Artifacts {
  fs::path kmeans, vocoder;
  int64_t k = 0;
};

Artifacts make_artifacts(const fs::path& dir, bool train_vocoder_briefly = false, int64_t k = 16) {
  UnitFeatureConfig features;
  std::vector<at::Tensor> feats;
  for (const double hz : {200.0, 500.0, 900.0, 1500.0, 3000.0}) feats.push_back(unit_features(sine(hz, 8000), features));
  feats.push_back(unit_features(harmonic_signal(16000, 2), features));
  const at::Tensor all = at::cat(feats);
  auto [mean, std] = feature_statistics(all);
  KMeansConfig kc;
  kc.k = k;
  kc.steps = 20;
  kc.batch_size = 256;
  const SpeechUnitModel units(features, fit_kmeans((all - mean) / std, kc).model, mean, std);
  Artifacts a{dir / "units" / "kmeans.safetensors", dir / "voc" / "vocoder.safetensors", k};
  units.save(a.kmeans);
  VocoderModelConfig vm;
  vm.channels = 16;
  vm.blocks = 1;
  GriffinLimConfig gl;
  gl.iterations = 4;
  Vocoder voc(vm, features.stft, gl, units.k(), file_crc32(a.kmeans));
  if (train_vocoder_briefly) {
    const at::Tensor x = harmonic_signal(16000, 2);
    VocoderTrainConfig tc;
    tc.steps = 5;
    train_vocoder(voc.net(), {{units.units(x), log_mel(x, features.stft)}}, tc, at::kCPU);
  }
  voc.save(a.vocoder);
  return a;
}

TEST(Vocoder, SaveLoadGivesTheSameMelAndChecksIds) {
  TempDir dir;
  const Artifacts a = make_artifacts(dir.path(), true);
  const Vocoder v = Vocoder::load(a.vocoder);
  EXPECT_EQ(v.num_units(), a.k);
  EXPECT_EQ(v.kmeans_crc32(), file_crc32(a.kmeans));
  const std::vector<int64_t> ids = {0, 3, 3, 7, 15, 15, 2};
  const at::Tensor mel = v.predict_mel(ids);
  EXPECT_EQ(mel.sizes(), (at::IntArrayRef{7, 80}));
  EXPECT_TRUE(at::equal(mel, Vocoder::load(a.vocoder).predict_mel(ids)));
  EXPECT_TRUE(contains(what_of([&] { v.predict_mel({0, 16}); }), "outside the codebook"));
  EXPECT_TRUE(contains(what_of([&] { Vocoder::load(a.kmeans); }), "not a Tessera vocoder"));
}

TEST(SpeechUnitsAdapter, RoundTripThroughMakeAdapterAndBadInputs) {
  TempDir dir;
  const Artifacts a = make_artifacts(dir.path());
  nlohmann::json d = {{"type", "speech_units"}, {"kmeans", "units"}, {"vocoder", "voc/vocoder.safetensors"}};
  const auto adapter = make_adapter(d, dir.path());
  EXPECT_EQ(adapter->name(), "speech_units");
  EXPECT_EQ(adapter->modality(), "audio");
  EXPECT_EQ(adapter->vocab_size(), a.k);

  Segment seg;
  seg.modality = modality::kAudio;
  seg.tensor = harmonic_signal(16000, 3);
  seg.sample_rate = 16000;
  const Span span = adapter->encode(seg);
  EXPECT_EQ(span.ids.size(), 51u);  // 1 + 16000 / 320 frames
  for (const int64_t id : span.ids) EXPECT_TRUE(id >= 0 && id < a.k);

  // The description rebuilds an identical adapter (relative paths against the same base dir).
  const nlohmann::json described = adapter->describe();
  EXPECT_EQ(described["kmeans"], "units");
  EXPECT_TRUE(described.contains("crc32") && described.contains("vocoder_crc32") && described.contains("features"));
  const auto rebuilt = make_adapter(described, dir.path());
  EXPECT_EQ(rebuilt->encode(seg).ids, span.ids);

  // decode: one frame per unit -> (frames - 0.5) * 320 samples at 16 kHz.
  const Segment out = rebuilt->decode(span);
  EXPECT_EQ(out.modality, "audio");
  EXPECT_EQ(out.sample_rate, 16000);
  EXPECT_EQ(out.tensor.numel(), static_cast<int64_t>(51 * 320 - 160));

  // Another sample rate is resampled (libswresample: FFmpeg builds only): 24 kHz audio of the same
  // length in seconds gives as many units.
  if (audio::has_ffmpeg()) {
    Segment seg24 = seg;
    seg24.tensor = audio::resample(seg.tensor, 16000, 24000);
    seg24.sample_rate = 24000;
    EXPECT_EQ(adapter->encode(seg24).ids.size(), span.ids.size());
  }

  // Deduplicated ids: no repeats; decoding gives dedup_duration frames per id.
  nlohmann::json dd = described;
  dd["dedup"] = true;
  dd["dedup_duration"] = 3;
  const auto dedup = make_adapter(dd, dir.path());
  const Span short_span = dedup->encode(seg);
  EXPECT_LE(short_span.ids.size(), span.ids.size());
  for (size_t i = 1; i < short_span.ids.size(); ++i) EXPECT_NE(short_span.ids[i], short_span.ids[i - 1]);
  EXPECT_EQ(short_span.ids, deduplicate(span.ids).units);
  EXPECT_EQ(dedup->decode(short_span).tensor.numel(), static_cast<int64_t>(short_span.ids.size() * 3 * 320 - 160));

  // Bad inputs.
  Segment empty = seg;
  empty.tensor = at::zeros({0});
  EXPECT_TRUE(contains(what_of([&] { adapter->encode(empty); }), "no samples"));
  Segment no_rate = seg;
  no_rate.sample_rate = 0;
  EXPECT_TRUE(contains(what_of([&] { adapter->encode(no_rate); }), "sample rate"));
  Segment text = Segment::of_text("hello");
  EXPECT_TRUE(contains(what_of([&] { adapter->encode(text); }), "expected an audio segment"));
  Span bad = span;
  bad.ids[4] = a.k;
  EXPECT_TRUE(contains(what_of([&] { adapter->decode(bad); }), "outside the vocabulary"));
  const auto encode_only = make_adapter({{"type", "speech_units"}, {"kmeans", a.kmeans.string()}}, {});
  EXPECT_EQ(encode_only->encode(seg).ids, span.ids);
  const std::string no_vocoder = what_of([&] { encode_only->decode(span); });
  EXPECT_TRUE(contains(no_vocoder, "needs a vocoder")) << no_vocoder;

  // Mismatching artifacts.
  nlohmann::json wrong = described;
  wrong["crc32"] = described["crc32"].get<uint32_t>() + 1;
  EXPECT_TRUE(contains(what_of([&] { make_adapter(wrong, dir.path()); }), "changed since"));
  wrong = described;
  wrong["vocab_size"] = a.k + 1;
  EXPECT_TRUE(contains(what_of([&] { make_adapter(wrong, dir.path()); }), "units but"));
  wrong = described;
  wrong["features"]["kind"] = "log_mel";
  EXPECT_TRUE(contains(what_of([&] { make_adapter(wrong, dir.path()); }), "feature config"));
  // A vocoder trained for another k-means is refused.
  const Artifacts other = make_artifacts(dir.path() / "other", false, 12);
  const nlohmann::json mixed = {{"type", "speech_units"}, {"kmeans", a.kmeans.string()}, {"vocoder", other.vocoder.string()}};
  EXPECT_TRUE(contains(what_of([&] { make_adapter(mixed, {}); }), "trained on another unit model"));
  // A plain k-means file (no feature config) is refused with the fix.
  KMeansModel(at::randn({4, 39})).save(dir / "plain.safetensors");
  EXPECT_TRUE(contains(what_of([&] { make_adapter({{"type", "speech_units"}, {"kmeans", "plain.safetensors"}}, dir.path()); }),
                       "without a feature config"));
  const std::vector<std::string> types = adapter_types();
  EXPECT_TRUE(std::find(types.begin(), types.end(), std::string("speech_units")) != types.end());
}

}  // namespace
}  // namespace tessera::speech
