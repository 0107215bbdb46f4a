#include "modalities/speech_units/units.h"

#include <ATen/ATen.h>

#include "core/config.h"
#include "core/error.h"
#include "core/io/safetensors.h"

namespace tessera::speech {
namespace fs = std::filesystem;

void validate(const UnitFeatureConfig& c) {
  check(c.kind == "mfcc" || c.kind == "log_mel", "features.kind must be mfcc or log_mel, got '", c.kind, "'");
  validate(c.stft);
}

int64_t feature_dim(const UnitFeatureConfig& c) {
  if (c.kind == "log_mel") return c.stft.n_mels;
  return c.stft.deltas ? 3 * c.stft.n_mfcc : c.stft.n_mfcc;
}

at::Tensor unit_features(const at::Tensor& waveform, const UnitFeatureConfig& c) {
  validate(c);
  return c.kind == "mfcc" ? mfcc(waveform, c.stft) : log_mel(waveform, c.stft);
}

std::pair<at::Tensor, at::Tensor> feature_statistics(const at::Tensor& features) {
  check(features.dim() == 2 && features.size(0) > 0, "feature statistics: expected [N > 0, D], got ", features.sizes());
  const at::Tensor x = features.to(at::kCPU, at::kDouble);
  return {x.mean(0).to(at::kFloat), x.std(0, /*unbiased=*/false).clamp_min(1e-5).to(at::kFloat)};
}

SpeechUnitModel::SpeechUnitModel(UnitFeatureConfig config, KMeansModel kmeans, at::Tensor mean, at::Tensor std)
    : config_(std::move(config)), kmeans_(std::move(kmeans)) {
  validate(config_);
  const int64_t d = feature_dim(config_);
  check(kmeans_.dim() == d, "speech units: the k-means centroids have dimension ", kmeans_.dim(), " but the features (",
        config_.kind, ") have ", d);
  if (mean.defined() || std.defined()) {
    check(mean.defined() && std.defined() && mean.dim() == 1 && std.dim() == 1 && mean.size(0) == d &&
              std.size(0) == d,
          "speech units: normalisation statistics must both be [", d, "]");
    check((std > 0).all().item<bool>(), "speech units: feature_std must be positive");
    mean_ = mean.to(at::kCPU, at::kFloat).contiguous();
    std_ = std.to(at::kCPU, at::kFloat).contiguous();
  }
  check(!config_.normalize || mean_.defined(), "speech units: features.normalize is on but no statistics were given");
}

at::Tensor SpeechUnitModel::normalize(const at::Tensor& raw) const {
  if (!config_.normalize) return raw;
  return (raw - mean_.to(raw.device())) / std_.to(raw.device());
}

at::Tensor SpeechUnitModel::features(const at::Tensor& waveform) const {
  return normalize(unit_features(waveform, config_));
}

at::Tensor SpeechUnitModel::units(const at::Tensor& waveform) const { return kmeans_.assign(features(waveform)); }

void SpeechUnitModel::save(const fs::path& path) const {
  const int64_t d = kmeans_.dim();
  const at::Tensor mean = config_.normalize ? mean_ : at::zeros({d}, at::kFloat);
  const at::Tensor std = config_.normalize ? std_ : at::ones({d}, at::kFloat);
  io::save_safetensors(path, {{"centroids", kmeans_.centroids()}, {"feature_mean", mean}, {"feature_std", std}},
                       {{"format", "tessera.kmeans"},
                        {"k", std::to_string(k())},
                        {"dim", std::to_string(d)},
                        {"features", config::to_json(config_).dump()}});
}

SpeechUnitModel SpeechUnitModel::load(const fs::path& path) {
  KMeansModel kmeans = KMeansModel::load(path);
  io::SafetensorsFile f = io::load_safetensors(path);
  const auto features = f.metadata.find("features");
  check(features != f.metadata.end(), "'", path.string(), "' is a k-means file without a feature config (metadata ",
        "\"features\"); speech units need the file `tessera run recipes/speech/units.yaml` writes");
  UnitFeatureConfig config;
  try {
    config = config::parse<UnitFeatureConfig>(config::json_to_yaml(nlohmann::json::parse(features->second)),
                                              "features", path.string());
  } catch (const std::exception& e) {
    fail("'", path.string(), "': unreadable feature config in its metadata (", e.what(), ")");
  }
  const auto mean = f.tensors.find("feature_mean");
  const auto std = f.tensors.find("feature_std");
  check(mean != f.tensors.end() && std != f.tensors.end(), "'", path.string(),
        "' lacks feature_mean/feature_std; re-run the speech_units recipe");
  return SpeechUnitModel(config, kmeans, mean->second, std->second);
}

}  // namespace tessera::speech
