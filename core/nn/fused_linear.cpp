#include "core/nn/fused_linear.h"

#include <ATen/autocast_mode.h>

#include "core/error.h"

namespace tessera::nn {

torch::Tensor concat_linear(const torch::Tensor& x, const std::vector<const torch::nn::LinearImpl*>& layers) {
  check(!layers.empty(), "concat_linear: no layers");
  const int64_t in = layers.front()->options.in_features();
  const bool bias = layers.front()->options.bias();
  const c10::DeviceType device = x.device().type();
  const bool autocast = at::autocast::is_autocast_enabled(device);
  const at::ScalarType dtype = autocast ? at::autocast::get_autocast_dtype(device) : x.scalar_type();
  std::vector<torch::Tensor> weights, biases;
  for (const torch::nn::LinearImpl* layer : layers) {
    check(layer->options.in_features() == in && layer->options.bias() == bias,
          "concat_linear: layers differ in input size or bias (", layer->options.in_features(), " vs ", in, ")");
    weights.push_back(autocast ? at::autocast::cached_cast(dtype, layer->weight, device) : layer->weight);
    if (bias) biases.push_back(autocast ? at::autocast::cached_cast(dtype, layer->bias, device) : layer->bias);
  }
  return at::linear(x, at::cat(weights), bias ? at::cat(biases) : torch::Tensor());
}

}  // namespace tessera::nn
