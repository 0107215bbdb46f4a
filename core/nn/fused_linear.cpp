#include "core/nn/fused_linear.h"

#include <ATen/autocast_mode.h>

#include "core/error.h"
#include "core/kernels/fused.h"

namespace tessera::nn {

torch::Tensor project(const torch::Tensor& x, const std::vector<const torch::nn::LinearImpl*>& layers,
                      bool use_kernels) {
  check(!layers.empty(), "project: no layers");
  const int64_t in = layers.front()->options.in_features();
  const bool bias = layers.front()->options.bias();
  for (const torch::nn::LinearImpl* layer : layers)
    check(layer->options.in_features() == in && layer->options.bias() == bias,
          "project: layers differ in input size or bias (", layer->options.in_features(), " vs ", in, ")");
  if (!bias) {
    std::vector<torch::Tensor> weights;
    for (const torch::nn::LinearImpl* layer : layers) weights.push_back(layer->weight);
    return kernels::autocast_linear(x, weights, use_kernels);
  }
  const c10::DeviceType device = x.device().type();
  const bool autocast = at::autocast::is_autocast_enabled(device);
  const at::ScalarType dtype = autocast ? at::autocast::get_autocast_dtype(device) : x.scalar_type();
  auto cast = [&](const torch::Tensor& t) { return autocast ? at::autocast::cached_cast(dtype, t, device) : t; };
  std::vector<torch::Tensor> weights, biases;
  for (const torch::nn::LinearImpl* layer : layers) {
    weights.push_back(cast(layer->weight));
    biases.push_back(cast(layer->bias));
  }
  return weights.size() == 1 ? at::linear(x, weights[0], biases[0]) : at::linear(x, at::cat(weights), at::cat(biases));
}

}  // namespace tessera::nn
