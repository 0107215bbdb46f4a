// Waveform -> discrete speech units: frame features (features.h), an optional per-dimension
// normalisation, then the nearest k-means centroid (kmeans.h). HuBERT's first iteration uses
// kind = mfcc with deltas (39 dims) and K = 100.
//
// The unit model file is the k-means safetensors file (format=tessera.kmeans, so KMeansModel::load
// reads it too) with two more tensors, "feature_mean" and "feature_std" (F32 [D]; 0 and 1 when
// normalisation is off), and the feature config as JSON in the metadata key "features".
//
//   SpeechUnitModel m = SpeechUnitModel::load("runs/speech_units/kmeans.safetensors");
//   at::Tensor units = m.units(waveform_16k);   // int64 [frames], 50 per second
#pragma once

#include <ATen/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>

#include "modalities/speech_units/features.h"
#include "modalities/speech_units/kmeans.h"

namespace tessera::speech {

struct UnitFeatureConfig {
  std::string kind = "mfcc";  // mfcc (with features.deltas: 39-dim, HuBERT iteration 1) | log_mel
  bool normalize = true;      // per-dimension mean/variance normalisation, statistics stored with the model
  FeatureConfig stft;         // STFT, mel and MFCC settings (flat keys beside kind/normalize)

  template <class V>
  void fields(V& v) {
    v.choice("kind", kind, {"mfcc", "log_mel"}, "frame features: mfcc (+deltas: HuBERT iteration 1) or log_mel");
    v.optional("normalize", normalize, "normalise each feature dimension to zero mean, unit variance (train stats)");
    stft.fields(v);
  }
};

void validate(const UnitFeatureConfig& config);
// Feature dimension: n_mfcc (x3 with deltas) or n_mels.
int64_t feature_dim(const UnitFeatureConfig& config);
// Unnormalised features [frames, dim] of a mono waveform at config.stft.sample_rate.
at::Tensor unit_features(const at::Tensor& waveform, const UnitFeatureConfig& config);

class SpeechUnitModel {
 public:
  SpeechUnitModel() = default;
  // mean/std: float [D] (std > 0); undefined tensors mean no normalisation.
  SpeechUnitModel(UnitFeatureConfig config, KMeansModel kmeans, at::Tensor mean = {}, at::Tensor std = {});

  int64_t k() const { return kmeans_.k(); }
  const UnitFeatureConfig& config() const { return config_; }
  const KMeansModel& kmeans() const { return kmeans_; }
  const at::Tensor& mean() const { return mean_; }
  const at::Tensor& std() const { return std_; }

  at::Tensor normalize(const at::Tensor& raw_features) const;  // (x - mean) / std
  at::Tensor features(const at::Tensor& waveform) const;       // normalised features [frames, D]
  at::Tensor units(const at::Tensor& waveform) const;          // int64 [frames]

  void save(const std::filesystem::path& path) const;  // atomically
  // Reads a file written by save(); a plain k-means file (no "features" metadata) is an error saying so.
  static SpeechUnitModel load(const std::filesystem::path& path);

 private:
  UnitFeatureConfig config_;
  KMeansModel kmeans_;
  at::Tensor mean_, std_;
};

// Per-dimension mean and standard deviation (floored at 1e-5) of features [N, D], float32.
std::pair<at::Tensor, at::Tensor> feature_statistics(const at::Tensor& features);

}  // namespace tessera::speech
