#include "modalities/speech_units/features.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/error.h"

namespace tessera::speech {

namespace {
double hz_to_mel(double f) { return 2595.0 * std::log10(1.0 + f / 700.0); }
double mel_to_hz(double m) { return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0); }
double f_max_of(const FeatureConfig& c) { return c.f_max > 0 ? c.f_max : c.sample_rate / 2.0; }

at::Tensor check_waveform(const at::Tensor& w) {
  check(w.dim() == 1, "speech features: expected a mono waveform [T], got shape ", w.sizes(),
        " (mix down multi-channel audio first: audio::mix_down)");
  check(w.is_floating_point(), "speech features: expected float samples, got ", w.scalar_type());
  return w.to(at::kFloat);
}
}  // namespace

void validate(const FeatureConfig& c) {
  check(c.sample_rate > 0, "features.sample_rate must be positive (e.g. 16000), got ", c.sample_rate);
  check(c.win_length > 0, "features.win_length must be positive (e.g. 400), got ", c.win_length);
  check(c.n_fft >= c.win_length, "features.n_fft (", c.n_fft, ") must be >= features.win_length (", c.win_length, ")");
  check(c.hop_length > 0, "features.hop_length must be positive (e.g. 320), got ", c.hop_length);
  check(c.n_mels > 0, "features.n_mels must be positive (e.g. 80), got ", c.n_mels);
  check(c.f_min >= 0 && c.f_min < f_max_of(c), "features.f_min (", c.f_min, ") must be in [0, f_max = ", f_max_of(c), ")");
  check(f_max_of(c) <= c.sample_rate / 2.0, "features.f_max (", c.f_max, ") must be <= sample_rate / 2 = ",
        c.sample_rate / 2.0);
  check(c.n_mfcc > 0 && c.n_mfcc <= c.n_mels, "features.n_mfcc must be in 1..n_mels (", c.n_mels, "), got ", c.n_mfcc);
  check(c.log_floor > 0, "features.log_floor must be positive (e.g. 1e-10), got ", c.log_floor);
}

int64_t num_frames(int64_t samples, const FeatureConfig& config) { return 1 + samples / config.hop_length; }

at::Tensor mel_filterbank(const FeatureConfig& c) {
  validate(c);
  const int64_t n_freqs = c.n_fft / 2 + 1;
  const at::Tensor freqs = at::linspace(0.0, c.sample_rate / 2.0, n_freqs, at::kDouble);
  const double m_min = hz_to_mel(c.f_min), m_max = hz_to_mel(f_max_of(c));
  at::Tensor f_pts = at::empty({c.n_mels + 2}, at::kDouble);
  auto fp = f_pts.accessor<double, 1>();
  for (int64_t i = 0; i < c.n_mels + 2; ++i) fp[i] = mel_to_hz(m_min + (m_max - m_min) * i / (c.n_mels + 1));
  const at::Tensor f_diff = f_pts.slice(0, 1) - f_pts.slice(0, 0, -1);      // [n_mels + 1]
  const at::Tensor slopes = f_pts.unsqueeze(0) - freqs.unsqueeze(1);        // [n_freqs, n_mels + 2]
  const at::Tensor down = -slopes.slice(1, 0, -2) / f_diff.slice(0, 0, -1);
  const at::Tensor up = slopes.slice(1, 2) / f_diff.slice(0, 1);
  const at::Tensor fb = at::clamp_min(at::minimum(down, up), 0.0);
  const at::Tensor empty = (fb.amax(0) == 0).nonzero();
  check(empty.numel() == 0, "features: ", empty.numel(), " of the ", c.n_mels, " mel filters contain no FFT bin (n_fft ",
        c.n_fft, " is too small for n_mels ", c.n_mels, "): raise features.n_fft or lower features.n_mels");
  return fb;
}

at::Tensor dct_matrix(int64_t n_mels, int64_t n_mfcc) {
  check(n_mfcc > 0 && n_mfcc <= n_mels, "dct_matrix: n_mfcc must be in 1..n_mels (", n_mels, "), got ", n_mfcc);
  const at::Tensor n = at::arange(n_mels, at::kDouble).unsqueeze(1);  // [n_mels, 1]
  const at::Tensor k = at::arange(n_mfcc, at::kDouble).unsqueeze(0);  // [1, n_mfcc]
  at::Tensor dct = at::cos(M_PI / n_mels * (n + 0.5) * k) * std::sqrt(2.0 / n_mels);
  dct.select(1, 0).mul_(1.0 / std::sqrt(2.0));
  return dct;
}

at::Tensor power_spectrogram(const at::Tensor& waveform, const FeatureConfig& c) {
  validate(c);
  const at::Tensor w = check_waveform(waveform);
  check(w.size(0) > c.n_fft / 2, "speech features: the waveform has ", w.size(0), " samples; at least n_fft / 2 + 1 = ",
        c.n_fft / 2 + 1, " are needed (reflect padding)");
  const at::Tensor window = at::hann_window(c.win_length, /*periodic=*/true, at::TensorOptions(w.device()).dtype(at::kFloat));
  const at::Tensor spec = at::stft(w, c.n_fft, c.hop_length, c.win_length, window, /*center=*/true, "reflect",
                                   /*normalized=*/false, /*onesided=*/true, /*return_complex=*/true);
  // [n_freqs, frames] -> [frames, n_freqs]
  return at::abs(spec).pow(2).t().contiguous();
}

at::Tensor log_mel(const at::Tensor& waveform, const FeatureConfig& c) {
  const at::Tensor power = power_spectrogram(waveform, c);
  const at::Tensor fb = mel_filterbank(c).to(power.device(), at::kFloat);
  return at::log(at::clamp_min(at::matmul(power, fb), c.log_floor));
}

at::Tensor deltas(const at::Tensor& f, int64_t n) {
  check(f.dim() == 2, "deltas: expected features [frames, dim], got ", f.sizes());
  check(n >= 1, "deltas: window N must be >= 1, got ", n);
  const int64_t frames = f.size(0);
  check(frames >= 1, "deltas: no frames");
  // Edge replication: pad n copies of the first/last frame.
  const at::Tensor padded = at::cat({f.slice(0, 0, 1).expand({n, f.size(1)}), f,
                                     f.slice(0, frames - 1).expand({n, f.size(1)})}, 0);
  at::Tensor out = at::zeros_like(f);
  double denom = 0;
  for (int64_t k = 1; k <= n; ++k) {
    out = out + static_cast<double>(k) * (padded.slice(0, n + k, n + k + frames) - padded.slice(0, n - k, n - k + frames));
    denom += 2.0 * k * k;
  }
  return out / denom;
}

at::Tensor mfcc(const at::Tensor& waveform, const FeatureConfig& c) {
  const at::Tensor lm = log_mel(waveform, c);
  const at::Tensor coeffs = at::matmul(lm, dct_matrix(c.n_mels, c.n_mfcc).to(lm.device(), at::kFloat));
  if (!c.deltas) return coeffs;
  const at::Tensor d = deltas(coeffs, 2);
  return at::cat({coeffs, d, deltas(d, 2)}, 1);
}

}  // namespace tessera::speech
