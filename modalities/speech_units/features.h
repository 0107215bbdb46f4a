// Frame-level speech features for HuBERT-style units (research/megalodon_scaling_eval.md §5): log-mel
// spectrogram and MFCC with deltas, computed with torch::stft at 50 frames/s (hop 320 at 16 kHz).
//
// Conventions (torchaudio's defaults where it has one):
//  * STFT: periodic Hann window of `win_length` samples, zero-padded (centred) to `n_fft`; centred
//    frames (signal reflect-padded by n_fft/2 on each side), so T samples give 1 + floor(T / hop)
//    frames; power spectrum |X|^2.
//  * Mel filterbank: HTK mel scale (mel = 2595 log10(1 + f/700)), triangles between n_mels + 2 points
//    spaced evenly in mel from f_min to f_max, no area normalisation: torchaudio.functional.
//    melscale_fbanks(..., norm=None, mel_scale="htk").
//  * log-mel: natural log of max(mel power, log_floor).
//  * MFCC: DCT-II with orthonormal scaling ("ortho") of the log-mel frame, first n_mfcc coefficients
//    (torchaudio's MFCC applies the same DCT, but to dB values: ours are natural-log, i.e. scaled by
//    ln(10)/10 and not top_db-clipped).
//  * deltas: the regression formula d_t = sum_{n=1..N} n (c_{t+n} - c_{t-n}) / (2 sum n^2), N = 2,
//    edges replicated (torchaudio.functional.compute_deltas(win_length=5)); delta-deltas are the
//    deltas of the deltas.
// Outputs are time-major float32 [frames, dim] on the input's device.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>

namespace tessera::speech {

struct FeatureConfig {
  int64_t sample_rate = 16000;
  int64_t n_fft = 512;       // >= win_length; 512 keeps all 80 HTK filters non-empty at 16 kHz
  int64_t win_length = 400;  // 25 ms
  int64_t hop_length = 320;  // 20 ms: 50 frames/s
  int64_t n_mels = 80;
  double f_min = 0.0;
  double f_max = 0.0;        // 0: sample_rate / 2
  int64_t n_mfcc = 13;
  bool deltas = true;        // MFCC: append deltas and delta-deltas (13 -> 39)
  double log_floor = 1e-10;

  template <class V>
  void fields(V& v) {
    v.optional("sample_rate", sample_rate, "input sample rate in Hz");
    v.optional("n_fft", n_fft, "FFT size (>= win_length)");
    v.optional("win_length", win_length, "Hann window length in samples");
    v.optional("hop_length", hop_length, "frame shift in samples (320 at 16 kHz = 50 frames/s)");
    v.optional("n_mels", n_mels, "mel bands");
    v.optional("f_min", f_min, "lowest mel filter edge in Hz");
    v.optional("f_max", f_max, "highest mel filter edge in Hz (0: sample_rate / 2)");
    v.optional("n_mfcc", n_mfcc, "MFCC coefficients kept (before deltas)");
    v.optional("deltas", deltas, "append deltas and delta-deltas to the MFCC");
    v.optional("log_floor", log_floor, "power floor before the log");
  }
};

// Checks the config; errors name the field and a valid value.
void validate(const FeatureConfig& config);

// Frames that `samples` samples give: 1 + samples / hop_length.
int64_t num_frames(int64_t samples, const FeatureConfig& config);

// HTK mel filterbank [n_fft/2 + 1, n_mels] in float64 (torchaudio's layout).
at::Tensor mel_filterbank(const FeatureConfig& config);
// Orthonormal DCT-II matrix [n_mels, n_mfcc] in float64: mfcc = log_mel @ dct.
at::Tensor dct_matrix(int64_t n_mels, int64_t n_mfcc);

// Power spectrogram [frames, n_fft/2 + 1] of a mono waveform [T] (float32 result).
at::Tensor power_spectrogram(const at::Tensor& waveform, const FeatureConfig& config = {});
// log-mel [frames, n_mels].
at::Tensor log_mel(const at::Tensor& waveform, const FeatureConfig& config = {});
// MFCC [frames, n_mfcc] or, with config.deltas, [frames, 3 n_mfcc] (static, delta, delta-delta).
at::Tensor mfcc(const at::Tensor& waveform, const FeatureConfig& config = {});
// Regression deltas along dim 0 of [frames, dim] with window N (edges replicated).
at::Tensor deltas(const at::Tensor& features, int64_t n = 2);

}  // namespace tessera::speech
