// RMSNorm (Zhang & Sennrich 2019), as used by Llama: y = x / sqrt(mean(x^2) + eps) * weight.
// With plus_one (Megalodon, App. B.2) the stored weight starts at 0 and the scale is 1 + weight, so
// weight decay applied to it pulls the scale toward 1 rather than 0.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace tessera::nn {

struct RMSNormImpl : torch::nn::Module {
  explicit RMSNormImpl(int64_t dim, double eps = 1e-5, bool plus_one = false);

  // x [..., dim] -> same shape and dtype. bf16/fp16 inputs are normalised and scaled in float32 and
  // cast back once, so the statistic does not lose precision.
  torch::Tensor forward(const torch::Tensor& x);

  // The scale actually applied: weight, or 1 + weight with plus_one.
  torch::Tensor scale() const;

  torch::Tensor weight;  // [dim], registered as "weight", initialised to ones (zeros with plus_one)
  double eps;
  bool plus_one;
};
TORCH_MODULE(RMSNorm);

}  // namespace tessera::nn
