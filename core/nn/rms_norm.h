// RMSNorm (Zhang & Sennrich 2019), as used by Llama: y = x / sqrt(mean(x^2) + eps) * weight.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace tessera::nn {

struct RMSNormImpl : torch::nn::Module {
  explicit RMSNormImpl(int64_t dim, double eps = 1e-5);

  // x [..., dim] -> same shape and dtype. bf16/fp16 inputs are normalised and scaled in float32 and
  // cast back once, so the statistic does not lose precision.
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // [dim], registered as "weight", initialised to ones
  double eps;
};
TORCH_MODULE(RMSNorm);

}  // namespace tessera::nn
