// Linear layers (no bias, or all with bias) over one input as one GEMM: y = x · [W_1; W_2; ...]^T (+ b).
// The layers keep their own parameters (checkpoint names unchanged); their weights are concatenated per
// call. One GEMM gives one input gradient, where separate layers' gradients must be summed.
#pragma once

#include <torch/nn/modules/linear.h>

#include <vector>

namespace tessera::nn {

// x [..., in] -> [..., sum of out features], the layers' outputs side by side in the given order (one
// layer: the layer itself). Under autocast the weights are cast before the concatenation, so the float32
// masters are never copied whole and the GEMM runs in the autocast dtype, as separate layers would.
// Through kernels::autocast_linear: use_kernels lets bias-free float32 weights under CUDA autocast take its
// op, whose backward writes the weights' float32 gradients straight from the GEMM (no bf16 gradient cast).
torch::Tensor project(const torch::Tensor& x, const std::vector<const torch::nn::LinearImpl*>& layers,
                      bool use_kernels = true);

}  // namespace tessera::nn
