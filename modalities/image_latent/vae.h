// Continuous image latents (Transfusion; Stable Diffusion's KL autoencoder): a small convolutional VAE
// mapping an image to a [C, H/8, W/8] latent, the latent scaling factor measured on data after
// training, and patchify/unpatchify between a latent [C, h, w] and the [n, d] rows a Transfusion Span
// carries (p×p patches in raster order, d = C·p·p).
//
//   loss = mean_pixels (x - D(z))^2 + kl_weight · KL(q(z|x) || N(0, I)) / pixels_per_image
// with the KL summed over the latent and the reconstruction summed over pixels before the common
// division, so kl_weight means what it means in Stable Diffusion's autoencoder (1e-6 there).
//
// Scaling factor (Rombach et al. 2022, §4.3.2 / Transfusion): s = 1 / std of the latents (all elements)
// on a sample of training images; latents are multiplied by s before the diffusion model sees them and
// divided by it before decoding. The latents here are the posterior means (deterministic encoding).
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include "core/data/sample.h"
#include "modalities/image/autoencoder.h"
#include "modalities/image/autoencoder_train.h"

namespace tessera::image {

struct VaeModelConfig {
  ConvNetConfig net;
  int64_t latent_channels = 4;
  double kl_weight = 1e-6;
  int64_t scale_images = 1024;

  template <class V>
  void fields(V& v) {
    net.fields(v);
    v.optional("latent_channels", latent_channels, "channels of the latent (Stable Diffusion: 4)");
    v.optional("kl_weight", kl_weight, "weight of the KL term (KL summed over the latent, as in Stable Diffusion)");
    v.optional("scale_images", scale_images, "training images whose latents set the scaling factor (1 / std)");
  }
};

using VaeConfig = ImageModelConfig<VaeModelConfig>;
void validate(const VaeConfig& config);

class VaeImpl : public torch::nn::Module {
 public:
  explicit VaeImpl(const VaeConfig& config);

  struct Output {
    at::Tensor recon;   // [B, C, H, W]
    at::Tensor mean;    // [B, Cz, h, w]
    at::Tensor logvar;  // [B, Cz, h, w], clamped to [-30, 20]
    at::Tensor kl;      // KL(q || N(0, I)) summed over the latent, mean over the batch (0-dim)
  };
  // With `sample`, z = mean + std · eps (training); otherwise z = mean.
  Output forward(const at::Tensor& x, bool sample);
  std::pair<at::Tensor, at::Tensor> moments(const at::Tensor& x);  // (mean, logvar)
  at::Tensor encode(const at::Tensor& x);  // posterior mean, unscaled
  at::Tensor decode(const at::Tensor& z);  // unscaled latent -> image

  int64_t latent_size() const { return config_.image_size / config_.model.net.factor(); }
  const VaeConfig& config() const { return config_; }
  double scaling_factor() const;
  void set_scaling_factor(double s);

  ConvEncoder encoder{nullptr};
  ConvDecoder decoder{nullptr};

 private:
  VaeConfig config_;
  at::Tensor scaling_factor_;  // buffer "scaling_factor", 0-dim; 1 until measured
};
TORCH_MODULE(Vae);

// 1 / std of the posterior-mean latents of `images` (uint8 [N, C, H, W]), every element pooled,
// encoded in batches of `batch_size` on the model's device.
double latent_scaling_factor(VaeImpl& vae, const at::Tensor& images, int64_t batch_size = 64);

// [C, h, w] -> [(h/p)·(w/p), C·p·p]: patches in raster order, each flattened channel-major
// (d = c·p·p + i·p + j). A batch [B, C, h, w] gives [B, n, d]. h and w must be divisible by p.
at::Tensor patchify(const at::Tensor& latents, int64_t patch_size);
// The exact inverse for a latent of `channels` × h × w: [n, d] -> [C, h, w] ([B, n, d] -> [B, C, h, w]).
at::Tensor unpatchify(const at::Tensor& patches, int64_t patch_size, int64_t channels, int64_t h, int64_t w);

inline constexpr const char* kVaeArtifactKind = "image_latent";
inline constexpr const char* kVaeArtifactFile = "vae.safetensors";

void save_vae(const std::filesystem::path& path, const VaeImpl& model);
struct LoadedVae {
  std::shared_ptr<VaeImpl> model;  // eval mode, CPU
  ImageArtifact artifact;          // tensors released
};
LoadedVae load_vae(const std::filesystem::path& path);  // the .safetensors file or its run directory

// The training loop's view of a VAE: loss as above (z sampled from the posterior); eval reconstructs
// from the posterior mean and adds the KL per image; finalize() measures the scaling factor on the
// first `scale_images` training images (model.scale_images).
class VaeTraining final : public TrainableAutoencoder {
 public:
  VaeTraining(std::shared_ptr<VaeImpl> model, int64_t scale_images) : model_(std::move(model)), scale_images_(scale_images) {}
  torch::nn::Module& module() override { return *model_; }
  AutoencoderLoss loss(const at::Tensor& x) override;
  void eval_begin() override;
  at::Tensor eval_reconstruct(const at::Tensor& x) override;
  nlohmann::json eval_end() override;
  void finalize(const at::Tensor& train_images) override;
  void save_artifact(const std::filesystem::path& path) const override { save_vae(path, *model_); }

 private:
  std::shared_ptr<VaeImpl> model_;
  int64_t scale_images_;
  at::Tensor kl_sum_;
  int64_t eval_images_ = 0;
};

// The "image_latent" adapter: a uint8 image (resized / centre-cropped) <-> a Span of continuous latents
// [n, d] = patchify(s · E(x), p). vocab_size 0.
class ImageLatentAdapter final : public Adapter {
 public:
  static constexpr const char* kType = "image_latent";
  static constexpr const char* kName = "image_latent";

  ImageLatentAdapter(std::filesystem::path model, const std::filesystem::path& base_dir = {},
                     int64_t patch_size = 2, const std::string& device = "cpu");

  std::string name() const override { return kName; }
  std::string modality() const override { return modality::kImage; }
  int64_t vocab_size() const override { return 0; }
  Span encode(const Segment& segment) const override;  // latents float32 [n, d] on the CPU
  Segment decode(const Span& span) const override;     // latents [n, d] of exactly this adapter's shape
  // {"type": "image_latent", "model": as given, "crc32", "patch_size", "latent_tokens", "latent_dim",
  //  "image_size", "scaling_factor"}
  nlohmann::json describe() const override;

  int64_t patch_size() const { return patch_size_; }
  int64_t latent_tokens() const;  // n
  int64_t latent_dim() const;     // d
  const LoadedVae& vae() const { return vae_; }

 private:
  std::filesystem::path model_;
  LoadedVae vae_;
  int64_t patch_size_;
  c10::Device device_;
};

// make_adapter's factory for {"type": "image_latent", "model": PATH[, "patch_size": 1|2|4 (default 2)]
// [, "device"][, "crc32"][, "latent_dim"]}.
std::shared_ptr<const Adapter> make_image_latent_adapter(const nlohmann::json& description,
                                                         const std::filesystem::path& base_dir);

}  // namespace tessera::image
