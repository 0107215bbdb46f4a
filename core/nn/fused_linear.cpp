#include "core/nn/fused_linear.h"

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
  std::vector<torch::Tensor> weights, biases;
  for (const torch::nn::LinearImpl* layer : layers) {
    weights.push_back(layer->weight);
    if (bias) biases.push_back(layer->bias);
  }
  return kernels::autocast_linear(x, weights, biases, use_kernels);
}

}  // namespace tessera::nn
