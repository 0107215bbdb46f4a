// Speech features against a float64 reference written out here from the definitions (direct DFT,
// explicit HTK triangles, DCT-II sums, regression deltas): log-mel, MFCC with deltas, frame counts.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/config.h"
#include "modalities/speech_units/features.h"
#include "modalities_test_util.h"

namespace tessera::speech {
namespace {
using tessera::testing::contains;
using tessera::testing::what_of;
using Matrix = std::vector<std::vector<double>>;

std::vector<double> test_signal(int64_t n, int64_t rate) {
  std::vector<double> x(n);
  uint64_t state = 12345;
  for (int64_t i = 0; i < n; ++i) {
    const double t = static_cast<double>(i) / rate;
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const double noise = (static_cast<double>(state >> 11) / 9007199254740992.0 - 0.5) * 0.02;
    x[i] = 0.4 * std::sin(2 * M_PI * 220 * t) + 0.2 * std::sin(2 * M_PI * 1830 * t + 0.3) +
           0.1 * std::sin(2 * M_PI * (500 + 3000 * t) * t) + noise;
  }
  return x;
}

// Power spectrum frames [frames][n_fft/2+1]: reflect padding, periodic Hann centred in n_fft, DFT sums.
Matrix reference_power(const std::vector<double>& x, const FeatureConfig& c) {
  const int64_t n = x.size(), pad = c.n_fft / 2;
  std::vector<double> padded(n + 2 * pad);
  for (int64_t i = 0; i < n + 2 * pad; ++i) {
    int64_t j = i - pad;
    if (j < 0) j = -j;
    if (j >= n) j = 2 * (n - 1) - j;
    padded[i] = x[j];
  }
  std::vector<double> window(c.n_fft, 0.0);
  const int64_t offset = (c.n_fft - c.win_length) / 2;
  for (int64_t i = 0; i < c.win_length; ++i) window[offset + i] = 0.5 - 0.5 * std::cos(2 * M_PI * i / c.win_length);
  const int64_t frames = 1 + n / c.hop_length, bins = c.n_fft / 2 + 1;
  Matrix power(frames, std::vector<double>(bins));
  for (int64_t f = 0; f < frames; ++f)
    for (int64_t k = 0; k < bins; ++k) {
      double re = 0, im = 0;
      for (int64_t i = 0; i < c.n_fft; ++i) {
        const double v = padded[f * c.hop_length + i] * window[i];
        const double angle = -2 * M_PI * static_cast<double>(k * i % c.n_fft) / c.n_fft;
        re += v * std::cos(angle);
        im += v * std::sin(angle);
      }
      power[f][k] = re * re + im * im;
    }
  return power;
}

// HTK triangles [bins][n_mels].
Matrix reference_filterbank(const FeatureConfig& c) {
  auto mel = [](double f) { return 2595.0 * std::log10(1.0 + f / 700.0); };
  auto hz = [](double m) { return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0); };
  const double f_max = c.f_max > 0 ? c.f_max : c.sample_rate / 2.0;
  std::vector<double> edges(c.n_mels + 2);
  for (int64_t i = 0; i < c.n_mels + 2; ++i)
    edges[i] = hz(mel(c.f_min) + (mel(f_max) - mel(c.f_min)) * i / (c.n_mels + 1));
  const int64_t bins = c.n_fft / 2 + 1;
  Matrix fb(bins, std::vector<double>(c.n_mels, 0.0));
  for (int64_t k = 0; k < bins; ++k) {
    const double f = static_cast<double>(k) * c.sample_rate / c.n_fft;
    for (int64_t m = 0; m < c.n_mels; ++m) {
      const double lo = edges[m], mid = edges[m + 1], hi = edges[m + 2];
      if (f > lo && f <= mid) fb[k][m] = (f - lo) / (mid - lo);
      else if (f > mid && f < hi) fb[k][m] = (hi - f) / (hi - mid);
    }
  }
  return fb;
}

Matrix reference_log_mel(const std::vector<double>& x, const FeatureConfig& c) {
  const Matrix p = reference_power(x, c), fb = reference_filterbank(c);
  Matrix out(p.size(), std::vector<double>(c.n_mels));
  for (size_t f = 0; f < p.size(); ++f)
    for (int64_t m = 0; m < c.n_mels; ++m) {
      double s = 0;
      for (size_t k = 0; k < fb.size(); ++k) s += p[f][k] * fb[k][m];
      out[f][m] = std::log(std::max(s, c.log_floor));
    }
  return out;
}

Matrix reference_dct(const Matrix& lm, int64_t n_mfcc) {
  const int64_t n = lm[0].size();
  Matrix out(lm.size(), std::vector<double>(n_mfcc));
  for (size_t f = 0; f < lm.size(); ++f)
    for (int64_t k = 0; k < n_mfcc; ++k) {
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += lm[f][i] * std::cos(M_PI * k * (2 * i + 1) / (2.0 * n));
      out[f][k] = s * (k == 0 ? std::sqrt(1.0 / n) : std::sqrt(2.0 / n));
    }
  return out;
}

Matrix reference_deltas(const Matrix& c) {
  const int64_t t = c.size(), d = c[0].size();
  Matrix out(t, std::vector<double>(d));
  auto at_clamped = [&](int64_t i) -> const std::vector<double>& { return c[std::clamp<int64_t>(i, 0, t - 1)]; };
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < d; ++j)
      out[i][j] = (1 * (at_clamped(i + 1)[j] - at_clamped(i - 1)[j]) + 2 * (at_clamped(i + 2)[j] - at_clamped(i - 2)[j])) / 10.0;
  return out;
}

at::Tensor to_tensor(const Matrix& m) {
  at::Tensor t = at::empty({static_cast<int64_t>(m.size()), static_cast<int64_t>(m[0].size())}, at::kDouble);
  for (size_t i = 0; i < m.size(); ++i)
    for (size_t j = 0; j < m[0].size(); ++j) t[i][j] = m[i][j];
  return t;
}

at::Tensor as_tensor(const std::vector<double>& x) { return at::tensor(x, at::kDouble).to(at::kFloat); }

TEST(SpeechFeatures, FilterbankAndDctMatchTheirDefinitions) {
  const FeatureConfig c;
  EXPECT_TRUE(at::allclose(mel_filterbank(c), to_tensor(reference_filterbank(c)), 1e-9, 1e-12));
  // Orthonormal: D^T D = I for the square DCT.
  const at::Tensor d = dct_matrix(16, 16);
  EXPECT_TRUE(at::allclose(at::matmul(d.t(), d), at::eye(16, at::kDouble), 1e-9, 1e-12));
  EXPECT_TRUE(contains(what_of([] {
                         FeatureConfig small;
                         small.n_fft = small.win_length = 64;
                         mel_filterbank(small);
                       }),
                       "raise features.n_fft"));
}

TEST(SpeechFeatures, LogMelMatchesAFloat64Reference) {
  const FeatureConfig c;
  const std::vector<double> x = test_signal(3200, c.sample_rate);  // 0.2 s -> 11 frames
  const at::Tensor got = log_mel(as_tensor(x), c);
  ASSERT_EQ(got.sizes(), (at::IntArrayRef{11, 80}));
  EXPECT_EQ(got.scalar_type(), at::kFloat);
  const at::Tensor want = to_tensor(reference_log_mel(x, c));
  const double err = (got.to(at::kDouble) - want).abs().max().item<double>();
  EXPECT_LT(err, 5e-4) << "max |log-mel - reference|";
}

TEST(SpeechFeatures, MfccWithDeltasMatchesAFloat64Reference) {
  FeatureConfig c;
  const std::vector<double> x = test_signal(4000, c.sample_rate);  // 13 frames
  const at::Tensor got = mfcc(as_tensor(x), c).to(at::kDouble);
  ASSERT_EQ(got.sizes(), (at::IntArrayRef{13, 39}));
  const Matrix stat = reference_dct(reference_log_mel(x, c), 13);
  const Matrix d1 = reference_deltas(stat), d2 = reference_deltas(d1);
  EXPECT_LT((got.slice(1, 0, 13) - to_tensor(stat)).abs().max().item<double>(), 2e-4);
  EXPECT_LT((got.slice(1, 13, 26) - to_tensor(d1)).abs().max().item<double>(), 2e-4);
  EXPECT_LT((got.slice(1, 26, 39) - to_tensor(d2)).abs().max().item<double>(), 2e-4);
  c.deltas = false;
  EXPECT_EQ(mfcc(as_tensor(x), c).size(1), 13);
  // Deltas of a linear ramp are its slope, including at the replicated edges' interior.
  const at::Tensor ramp = at::arange(10, at::kFloat).unsqueeze(1) * 3;
  EXPECT_TRUE(at::allclose(deltas(ramp).slice(0, 2, 8), at::full({6, 1}, 3.0f)));
}

TEST(SpeechFeatures, FiftyFramesPerSecond) {
  const FeatureConfig c;
  for (int64_t seconds : {1, 2, 3}) {
    const at::Tensor x = at::randn({16000 * seconds}) * 0.1;
    EXPECT_EQ(log_mel(x, c).size(0), 1 + 50 * seconds);
    EXPECT_EQ(num_frames(x.size(0), c), 1 + 50 * seconds);
  }
  EXPECT_EQ(log_mel(at::randn({16000 + 319}) * 0.1, c).size(0), 51);
  EXPECT_EQ(log_mel(at::randn({16000 + 320}) * 0.1, c).size(0), 52);
  EXPECT_TRUE(contains(what_of([&] { log_mel(at::zeros({100}), c); }), "at least"));
  EXPECT_TRUE(contains(what_of([&] { log_mel(at::zeros({2, 1000}), c); }), "mono"));
}

TEST(SpeechFeatures, ConfigParsesStrictly) {
  const FeatureConfig c =
      config::parse<FeatureConfig>(YAML::Load("n_mels: 40\nhop_length: 160\n"), "features");
  EXPECT_EQ(c.n_mels, 40);
  EXPECT_EQ(c.hop_length, 160);
  EXPECT_EQ(c.n_fft, 512);
  EXPECT_FALSE(contains(what_of([] { config::parse<FeatureConfig>(YAML::Load("n_mel: 40\n"), "features"); }),
                        "(no error)"));
  FeatureConfig bad;
  bad.hop_length = 0;
  EXPECT_TRUE(contains(what_of([&] { validate(bad); }), "features.hop_length"));
}

}  // namespace
}  // namespace tessera::speech
