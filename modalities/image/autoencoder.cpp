#include "modalities/image/autoencoder.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/upsampling.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>

#include "core/error.h"
#include "core/train/weights.h"
#include "modalities/image/image_io.h"

namespace tessera::image {
namespace fs = std::filesystem;
namespace nn = torch::nn;

namespace {

// GroupNorm over up to 32 groups that divide the width (tiny test nets have 4..16 channels).
nn::GroupNorm group_norm(int64_t channels) {
  return nn::GroupNorm(nn::GroupNormOptions(std::gcd(channels, int64_t{32}), channels).eps(1e-6));
}

nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).stride(stride).padding((kernel - 1) / 2));
}

}  // namespace

int64_t ConvNetConfig::width(int64_t stage) const { return std::min(channels << stage, max_channels); }

void validate(const ConvNetConfig& net, int64_t image_size, const std::string& where) {
  check(net.channels >= 1 && net.channels <= 4096, where, ".channels must be in 1..4096, got ", net.channels);
  check(net.max_channels >= net.channels, where, ".max_channels (", net.max_channels, ") must be >= ", where,
        ".channels (", net.channels, ")");
  check(net.downsample >= 0 && net.downsample <= 6, where, ".downsample must be in 0..6 (factor 1..64), got ",
        net.downsample);
  check(net.res_blocks >= 0 && net.res_blocks <= 8, where, ".res_blocks must be in 0..8, got ", net.res_blocks);
  check(image_size > 0 && image_size % net.factor() == 0, "image size ", image_size,
        " is not divisible by the downsampling factor ", net.factor(), " (", where, ".downsample: ", net.downsample,
        "); pick a size that is a multiple of ", net.factor());
}

ResBlockImpl::ResBlockImpl(int64_t in, int64_t out)
    : norm1_(register_module("norm1", group_norm(in))),
      norm2_(register_module("norm2", group_norm(out))),
      conv1_(register_module("conv1", conv(in, out, 3))),
      conv2_(register_module("conv2", conv(out, out, 3))) {
  if (in != out) skip_ = register_module("skip", conv(in, out, 1));
}

at::Tensor ResBlockImpl::forward(const at::Tensor& x) {
  at::Tensor h = conv1_->forward(at::silu(norm1_->forward(x)));
  h = conv2_->forward(at::silu(norm2_->forward(h)));
  return (skip_ ? skip_->forward(x) : x) + h;
}

ConvEncoderImpl::ConvEncoderImpl(const ConvNetConfig& net, int64_t in_channels, int64_t out_channels) {
  nn::Sequential body;
  body->push_back(conv(in_channels, net.width(0), 3));
  for (int64_t s = 0; s < net.downsample; ++s) {
    for (int64_t b = 0; b < net.res_blocks; ++b) body->push_back(ResBlock(net.width(s), net.width(s)));
    body->push_back(conv(net.width(s), net.width(s + 1), 3, 2));  // halves H and W
  }
  const int64_t top = net.width(net.downsample);
  body->push_back(ResBlock(top, top));
  body->push_back(group_norm(top));
  body->push_back(nn::SiLU());
  body->push_back(conv(top, out_channels, 1));
  body_ = register_module("body", body);
}

at::Tensor ConvEncoderImpl::forward(const at::Tensor& x) { return body_->forward(x); }

ConvDecoderImpl::ConvDecoderImpl(const ConvNetConfig& net, int64_t in_channels, int64_t out_channels) {
  nn::Sequential body;
  const int64_t top = net.width(net.downsample);
  body->push_back(conv(in_channels, top, 3));
  body->push_back(ResBlock(top, top));
  for (int64_t s = net.downsample - 1; s >= 0; --s) {
    body->push_back(nn::Upsample(nn::UpsampleOptions().scale_factor(std::vector<double>{2.0, 2.0})
                                     .mode(torch::kNearest)));
    body->push_back(conv(net.width(s + 1), net.width(s), 3));
    for (int64_t b = 0; b < net.res_blocks; ++b) body->push_back(ResBlock(net.width(s), net.width(s)));
  }
  body->push_back(group_norm(net.width(0)));
  body->push_back(nn::SiLU());
  body->push_back(conv(net.width(0), out_channels, 3));
  body_ = register_module("body", body);
}

at::Tensor ConvDecoderImpl::forward(const at::Tensor& z) { return body_->forward(z); }

io::NamedTensors module_state(const torch::nn::Module& module) {
  io::NamedTensors out = parameter_tensors(module);
  for (const auto& item : module.named_buffers(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

void load_module_state(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                       const std::string& source) {
  // Buffers here, parameters (and the check for extra tensors) through core's load_parameters.
  at::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> params = tensors;
  for (auto& item : module.named_buffers(/*recurse=*/true)) {
    const auto it = params.find(item.key());
    check(it != params.end(), source, " has no tensor '", item.key(),
          "': it was written by a different model or configuration");
    check(it->second.sizes() == item.value().sizes(), source, ": tensor '", item.key(), "' has shape ",
          it->second.sizes(), " but the model expects ", item.value().sizes(), " (different model config?)");
    item.value().copy_(it->second);
    params.erase(it);
  }
  load_parameters(module, params, source);
}

void write_image_artifact(const fs::path& path, const std::string& kind, const nlohmann::json& config,
                          const torch::nn::Module& module) {
  io::save_safetensors(path, module_state(module),
                       {{"format", "pt"}, {"tessera_artifact", kind}, {"config", config.dump()}});
}

ImageArtifact read_image_artifact(const fs::path& path, const std::string& kind) {
  std::error_code ec;
  check(fs::is_regular_file(path, ec), kind, ": no artifact at '", path.string(),
        "'; give the run directory of a finished `tessera run` of its recipe or its .safetensors file");
  io::SafetensorsFile file = io::load_safetensors(path);
  const auto found = file.metadata.find("tessera_artifact");
  check(found != file.metadata.end() && found->second == kind, "'", path.string(), "' is not an ", kind,
        " artifact (its metadata says ",
        found == file.metadata.end() ? std::string("nothing") : "'" + found->second + "'",
        "); give the file its training run wrote");
  ImageArtifact artifact;
  artifact.path = path;
  try {
    artifact.config = nlohmann::json::parse(file.metadata.at("config"));
  } catch (const std::exception& e) {
    fail("'", path.string(), "': its metadata has no readable \"config\" (", e.what(), "); the file is damaged");
  }
  artifact.tensors = std::move(file.tensors);
  artifact.crc32 = file_crc32(path);
  return artifact;
}

void check_recorded_crc32(const nlohmann::json& d, const std::string& type, const ImageArtifact& artifact) {
  if (!d.contains("crc32")) return;
  check(d.at("crc32").is_number_unsigned() && d.at("crc32").get<uint64_t>() == artifact.crc32, type, ": '",
        artifact.path.string(), "' has crc32 ", artifact.crc32, " but ", d.at("crc32").dump(),
        " was recorded: the model file changed since; restore the model these tokens were made with, or "
        "prepare the data again");
}

at::Tensor tokenizer_input(const at::Tensor& image, int64_t size, int64_t channels, const std::string& who) {
  check_image(image, who + ": the image");
  at::Tensor x = image;
  if (x.size(0) != channels) {
    check(x.size(0) == 1, who, ": the tokenizer takes grey (1-channel) images but got ", x.size(0),
          " channels; convert the image to grey first or use a tokenizer trained on RGB");
    x = x.expand({channels, x.size(1), x.size(2)});
  }
  return to_float(resize_center_crop(x.contiguous(), size)).unsqueeze(0);
}

Segment image_segment(at::Tensor image) {
  Segment s;
  s.modality = modality::kImage;
  s.tensor = std::move(image);
  return s;
}

double psnr_from_mse(double mse_pm1) { return 10.0 * std::log10(4.0 / std::max(mse_pm1, 1e-12)); }

}  // namespace tessera::image
