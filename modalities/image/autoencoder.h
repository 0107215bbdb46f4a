// Pieces shared by the trained image tokenizers (image_vq: a VQ autoencoder; image_latent: a KL VAE):
// the convolutional encoder/decoder (residual blocks, GroupNorm, SiLU; 2^n down/up-sampling), moving a
// module's parameters *and* buffers to and from safetensors, and the artifact file those tokenizers
// are shipped in:
//
//   tokenizer.safetensors   tensors: every parameter and buffer of the model
//                           metadata: {"format": "pt", "tessera_artifact": "image_vq",
//                                      "config": JSON of the model's typed config}
//
// so that an adapter rebuilds the net from the file alone, and a file of another kind or shape is an
// error, not garbage.
#pragma once

#include <ATen/Tensor.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/data/sample.h"
#include "core/io/files.h"  // file_crc32, resolve_artifact
#include "core/io/safetensors.h"

namespace tessera::image {

// The conv net's shape. Stage s (0 = full resolution) has width min(channels * 2^s, max_channels);
// `downsample` stages of stride-2 convolutions give the latent grid image_size / 2^downsample.
struct ConvNetConfig {
  int64_t channels = 64;
  int64_t max_channels = 256;
  int64_t downsample = 3;
  int64_t res_blocks = 1;

  template <class V>
  void fields(V& v) {
    v.optional("channels", channels, "conv width at full resolution (doubles per downsampling stage)");
    v.optional("max_channels", max_channels, "cap on the conv width");
    v.optional("downsample", downsample, "stride-2 stages: the latent grid is image_size / 2^downsample");
    v.optional("res_blocks", res_blocks, "residual blocks per stage");
  }
  int64_t factor() const { return int64_t{1} << downsample; }
  int64_t width(int64_t stage) const;
};

// What an artifact records: a model's hyper-parameters plus the images it takes.
template <class Model>
struct ImageModelConfig {
  int64_t image_size = 64;
  int64_t channels = 3;
  Model model;

  template <class V>
  void fields(V& v) {
    v.optional("image_size", image_size, "square input side in pixels");
    v.optional("channels", channels, "image channels: 3 (RGB) or 1 (grey)");
    v.optional("model", model);
  }
};

// Errors name `where` ("model"), the field and the allowed range; image_size must be divisible by
// the downsampling factor.
void validate(const ConvNetConfig& net, int64_t image_size, const std::string& where);

// GroupNorm -> SiLU -> conv3x3 twice, plus a 1x1 skip when the width changes.
class ResBlockImpl : public torch::nn::Module {
 public:
  ResBlockImpl(int64_t in, int64_t out);
  at::Tensor forward(const at::Tensor& x);

 private:
  torch::nn::GroupNorm norm1_{nullptr}, norm2_{nullptr};
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, skip_{nullptr};
};
TORCH_MODULE(ResBlock);

// image [B, in, H, W] -> [B, out, H/f, W/f]
class ConvEncoderImpl : public torch::nn::Module {
 public:
  ConvEncoderImpl(const ConvNetConfig& net, int64_t in_channels, int64_t out_channels);
  at::Tensor forward(const at::Tensor& x);

 private:
  torch::nn::Sequential body_{nullptr};
};
TORCH_MODULE(ConvEncoder);

// latent [B, in, h, w] -> [B, out, h*f, w*f] (the mirror of ConvEncoder, nearest upsampling + conv)
class ConvDecoderImpl : public torch::nn::Module {
 public:
  ConvDecoderImpl(const ConvNetConfig& net, int64_t in_channels, int64_t out_channels);
  at::Tensor forward(const at::Tensor& z);

 private:
  torch::nn::Sequential body_{nullptr};
};
TORCH_MODULE(ConvDecoder);

// Parameters and buffers (EMA codebooks, scaling factors), by name.
io::NamedTensors module_state(const torch::nn::Module& module);
// Copies every parameter and buffer from `tensors`; a missing, extra or mis-shaped tensor is an error
// naming it and `source`.
void load_module_state(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                       const std::string& source);

struct ImageArtifact {
  std::filesystem::path path;  // the file read
  nlohmann::json config;       // the model config it was written with
  std::map<std::string, at::Tensor> tensors;
  uint32_t crc32 = 0;
};

// Writes module_state(module) with the metadata above, atomically.
void write_image_artifact(const std::filesystem::path& path, const std::string& kind, const nlohmann::json& config,
                          const torch::nn::Module& module);
// Reads an artifact of `kind` ("image_vq", "image_latent"); a missing, corrupt or other-kind file is an
// error naming it and what was expected.
ImageArtifact read_image_artifact(const std::filesystem::path& path, const std::string& kind);

// Reads an artifact of `kind` into `artifact` and rebuilds its model: Impl(Config) with every tensor
// loaded, in eval mode on the CPU. The artifact's tensors are released afterwards.
template <class Impl, class Config>
std::shared_ptr<Impl> load_image_model(const std::filesystem::path& path, const std::string& kind,
                                       ImageArtifact& artifact) {
  artifact = read_image_artifact(path, kind);
  const std::string source = artifact.path.string();
  auto model = std::make_shared<Impl>(config::parse<Config>(config::json_to_yaml(artifact.config), "config", source));
  load_module_state(*model, artifact.tensors, source);
  artifact.tensors.clear();
  model->eval();
  return model;
}

// Checks a recorded adapter description (make_adapter's input) against the artifact that was loaded:
// a "crc32" that differs means the file changed since the ids/latents were made.
void check_recorded_crc32(const nlohmann::json& description, const std::string& type, const ImageArtifact& artifact);

// An image payload (uint8 C×H×W, C 1 or 3) as a tokenizer input: resized / centre-cropped to
// size × size, grey replicated to RGB when the tokenizer takes 3 channels, as float [1, C, S, S] in
// [-1, 1]. An RGB image for a grey tokenizer, or anything check_image rejects, is an error naming `who`.
at::Tensor tokenizer_input(const at::Tensor& image, int64_t size, int64_t channels, const std::string& who);
// A decoded image (uint8 C×H×W) as a Segment of modality "image".
Segment image_segment(at::Tensor image);

// Reconstruction quality of images in [-1, 1]: PSNR in dB for a mean squared error measured on that
// scale (peak-to-peak 2, so PSNR = 10 log10(4 / mse), the same as on [0, 1] or [0, 255]).
double psnr_from_mse(double mse_pm1);

}  // namespace tessera::image
