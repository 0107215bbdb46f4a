// Several linear layers over the same input as one GEMM: y = x · [W_1; W_2; ...]^T (+ [b_1; b_2; ...]).
// The layers keep their own parameters (checkpoint names unchanged); their weights are concatenated per
// call. One GEMM gives one input gradient, where separate layers' gradients must be summed.
#pragma once

#include <torch/nn/modules/linear.h>

#include <vector>

namespace tessera::nn {

// x [..., in] -> [..., sum of out features], the layers' outputs side by side in the given order. Under
// autocast each weight is cast with autocast's cached cast before the concatenation, so the float32
// masters are never copied whole and the GEMM runs in the autocast dtype, as separate layers would.
torch::Tensor concat_linear(const torch::Tensor& x, const std::vector<const torch::nn::LinearImpl*>& layers);

}  // namespace tessera::nn
