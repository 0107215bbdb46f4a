// Speech units -> waveform in two steps:
//  1. a small network trained by the toolkit maps one unit per frame (50 Hz; deduplicated units are
//     expanded back to frames by their durations first) to an 80-bin log-mel frame, exactly the log-mel
//     of features.h (same filterbank, floor and STFT settings): embedding -> residual blocks of
//     LayerNorm, GELU and dilated 1-D convolutions (a context of a few hundred ms on both sides) ->
//     linear projection to n_mels; trained with an L1 loss on random crops.
//  2. Griffin-Lim turns the log-mel into a waveform: the mel filterbank's pseudo-inverse gives a
//     linear power spectrum (clamped at 0; magnitude = its square root), then N iterations of
//     istft/stft with features.h's window (periodic Hann of win_length, n_fft, centred, reflect
//     padding), optionally with momentum ("fast Griffin-Lim", Perraudin et al. 2013, momentum 0.99).
//
// Why Griffin-Lim runs at a finer hop: features.h frames with hop 320 and a 400-sample window overlap
// by only 80 samples, where the squared Hann windows sum to ~0.02: istft divides by that sum, so a
// phase estimate at hop 320 amplifies its errors there. The log-mel is therefore interpolated linearly
// in time to hop_length / hop_divisor (80 by default: 80% overlap, the usual Griffin-Lim setting)
// before inversion; the window, n_fft and centring stay those of features.h. hop_divisor 1 runs at the
// analysis hop.
//
// Lengths: F frames become (F - 0.5) * hop_length samples (frame i is centred on sample i * hop; the
// waveform ends half a hop after the last centre), so log_mel() of the result has F frames again.
#pragma once

#include <ATen/Tensor.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "modalities/speech_units/features.h"

namespace tessera::speech {

// ---- Griffin-Lim ---------------------------------------------------------------------------------

struct GriffinLimConfig {
  int64_t iterations = 48;
  double momentum = 0.99;    // 0: plain Griffin-Lim (Griffin & Lim 1984)
  int64_t hop_divisor = 4;   // synthesis hop = features hop_length / hop_divisor (see above)
  int64_t seed = 0;          // initial random phases
  int64_t nnls_iterations = 100;  // mel -> linear inversion: 0 = pseudo-inverse clamped at 0, else NNLS

  template <class V>
  void fields(V& v) {
    v.optional("iterations", iterations, "Griffin-Lim iterations");
    v.optional("momentum", momentum, "fast Griffin-Lim momentum (0.99; 0 = plain Griffin-Lim)");
    v.optional("hop_divisor", hop_divisor, "synthesis hop = hop_length / hop_divisor (1: the analysis hop)");
    v.optional("seed", seed, "seed of the initial random phases");
    v.optional("nnls_iterations", nnls_iterations,
               "mel -> linear spectrum: non-negative least-squares iterations (0: pseudo-inverse clamped at 0)");
  }
};

void validate(const GriffinLimConfig& config, const FeatureConfig& features);

// Linear magnitude [frames, n_fft/2 + 1] whose mel power is closest to exp(log_mel) [frames, n_mels]:
// with nnls_iterations = 0 the filterbank's pseudo-inverse (minimum-norm least squares) clamped at 0;
// otherwise non-negative least squares by multiplicative updates (Lee & Seung 2001)
//   P <- P * (M B^T) / (P B B^T),  B = filterbank [n_freqs, n_mels]^T layout as in features.h,
// started from each mel value spread over its triangle (librosa's mel_to_stft also solves NNLS). The
// pseudo-inverse alternates in sign between neighbouring narrow low-frequency filters, and clamping
// those negatives adds energy, which is why NNLS is the default.
at::Tensor mel_to_magnitude(const at::Tensor& log_mel, const FeatureConfig& features, int64_t nnls_iterations = 100);

// Griffin-Lim phase reconstruction of a magnitude [frames, n_fft/2 + 1] taken with hop `hop`
// (features' window and n_fft); returns a waveform of `length` samples (float32 [length]).
at::Tensor griffin_lim(const at::Tensor& magnitude, const FeatureConfig& features, int64_t hop, int64_t length,
                       const GriffinLimConfig& config);

// log-mel [F, n_mels] -> waveform float32 [(F - 0.5) * hop_length] (interpolation, inversion, Griffin-Lim).
at::Tensor mel_to_waveform(const at::Tensor& log_mel, const FeatureConfig& features, const GriffinLimConfig& config);

// Spectral convergence ||S - S'||_F / ||S||_F of two magnitudes of the same shape.
double spectral_convergence(const at::Tensor& reference, const at::Tensor& estimate);

// Mel-cepstral distortion in dB between two log-mels [F, n_mels] of the same shape (frames aligned).
// The mel-cepstrum of a frame is the cosine series of its natural-log mel *amplitude* L_n (log-mel
// power / 2) over the N mel bins, ln A(w) = c_0 + sum_m c_m cos(m w) (SPTK's convention):
//   c_m = (2 / N) sum_n L_n cos(pi m (n + 1/2) / N),  m = 1..n_cep-1   (c_0, the energy, is left out)
//   MCD = mean over frames of 10 sqrt(2) / ln 10 * sqrt(sum_m (c_m - c'_m)^2)
// which is the RMS difference in dB (20 log10 amplitude) between the two cepstrally smoothed spectra.
// Both log-mels are first clipped `top_db` dB below the peak of log_mel_a (librosa's power_to_db
// top_db = 80 convention; <= 0: no clipping), so that digital silence (log of features.log_floor,
// ~ -23) in one and faint noise in the other does not dominate. Computed in float64.
double mel_cepstral_distortion(const at::Tensor& log_mel_a, const at::Tensor& log_mel_b, int64_t n_cep = 13,
                               double top_db = 80.0);

// ---- the unit -> log-mel network -----------------------------------------------------------------

struct VocoderModelConfig {
  int64_t channels = 192;
  int64_t blocks = 6;
  int64_t kernel_size = 5;
  std::vector<int64_t> dilations = {1, 2, 4};  // cycled over the blocks

  template <class V>
  void fields(V& v) {
    v.optional("channels", channels, "width of the unit embedding and the convolutions");
    v.optional("blocks", blocks, "residual convolution blocks");
    v.optional("kernel_size", kernel_size, "convolution kernel size in frames (odd)");
    v.optional("dilations", dilations, "dilation of each block, cycled (context grows with their sum)");
  }
};

void validate(const VocoderModelConfig& config);

class VocoderNetImpl : public torch::nn::Module {
 public:
  VocoderNetImpl(const VocoderModelConfig& config, int64_t num_units, int64_t n_mels);
  // units int64 [B, T] -> log-mel [B, T, n_mels]
  at::Tensor forward(const at::Tensor& units);
  // Sets the output bias (initial prediction for every unit) to a mean log-mel frame [n_mels].
  void set_output_bias(const at::Tensor& mean_frame);

 private:
  torch::nn::Embedding embed_{nullptr};
  torch::nn::ModuleList norms_, convs_;
  torch::nn::Linear out_{nullptr};
};
TORCH_MODULE(VocoderNet);

// ---- training --------------------------------------------------------------------------------------

struct VocoderTrainConfig {
  int64_t steps = 600;
  int64_t batch_size = 16;
  int64_t crop_frames = 96;   // frames per training crop (shorter utterances are padded and masked)
  double lr = 3e-3;
  int64_t warmup_steps = 50;
  double min_lr_ratio = 0.05;
  double weight_decay = 0.01;
  double grad_clip = 1.0;
  int64_t log_every = 100;
  int64_t seed = 0;

  template <class V>
  void fields(V& v) {
    v.optional("steps", steps, "optimizer steps");
    v.optional("batch_size", batch_size, "crops per step");
    v.optional("crop_frames", crop_frames, "frames per crop (50 per second)");
    v.optional("lr", lr, "peak learning rate (AdamW, warm-up then cosine)");
    v.optional("warmup_steps", warmup_steps, "linear warm-up steps");
    v.optional("min_lr_ratio", min_lr_ratio, "final learning rate as a fraction of lr");
    v.optional("weight_decay", weight_decay, "AdamW weight decay");
    v.optional("grad_clip", grad_clip, "global gradient-norm clip (0: off)");
    v.optional("log_every", log_every, "steps between loss records");
    v.optional("seed", seed, "seed of the initial weights and the crops");
  }
};

void validate(const VocoderTrainConfig& config);

// One utterance for training: units int64 [F] and its log-mel float [F, n_mels].
struct UnitMelPair {
  at::Tensor units;
  at::Tensor log_mel;
};

struct VocoderTrainRecord {
  int64_t step = 0;
  double loss = 0;  // mean L1 (nats of log-mel) over the last log_every steps
  double lr = 0;
};

// Trains `net` in place on `data` (on `device`), calling `on_record` every log_every steps and at the end.
std::vector<VocoderTrainRecord> train_vocoder(VocoderNet& net, const std::vector<UnitMelPair>& data,
                                              const VocoderTrainConfig& config, const c10::Device& device,
                                              const std::function<void(const VocoderTrainRecord&)>& on_record = {});

// ---- the artifact ----------------------------------------------------------------------------------

// A trained vocoder: network, the feature config of its mel, Griffin-Lim settings, and the k-means
// it was trained on (K and the file's crc32: units of another codebook are meaningless to it).
class Vocoder {
 public:
  Vocoder(VocoderModelConfig model, FeatureConfig features, GriffinLimConfig griffin_lim, int64_t num_units,
          uint32_t kmeans_crc32);

  VocoderNet& net() { return net_; }
  int64_t num_units() const { return num_units_; }
  uint32_t kmeans_crc32() const { return kmeans_crc32_; }
  const FeatureConfig& features() const { return features_; }
  const GriffinLimConfig& griffin_lim() const { return griffin_lim_; }

  // One unit per frame -> log-mel [F, n_mels] (CPU float32). Ids outside [0, K) are an error.
  at::Tensor predict_mel(const std::vector<int64_t>& units) const;
  // predict_mel, then mel_to_waveform: float32 [(F - 0.5) * hop_length] at features().sample_rate.
  at::Tensor synthesize(const std::vector<int64_t>& units) const;

  // safetensors: the network's parameters; metadata format=tessera.vocoder and the configs as JSON.
  void save(const std::filesystem::path& path) const;
  static Vocoder load(const std::filesystem::path& path);

 private:
  VocoderModelConfig model_;
  FeatureConfig features_;
  GriffinLimConfig griffin_lim_;
  int64_t num_units_;
  uint32_t kmeans_crc32_;
  VocoderNet net_{nullptr};
};

}  // namespace tessera::speech
