// SwiGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer"), in Llama's form:
// FFN(x) = W2 (silu(W1 x) * W3 x), no biases.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace tessera::nn {

// Llama's hidden size: h = int(2 * 4 * dim / 3); if ffn_dim_multiplier > 0, h = int(multiplier * h);
// then h is rounded up to a multiple of multiple_of. (Llama-2 7B: 4096 -> 11008 with multiple_of 256;
// Llama-3 8B: 4096, 1.3, 1024 -> 14336.) Pass ffn_dim_multiplier <= 0 for "none".
int64_t swiglu_hidden_dim(int64_t dim, double ffn_dim_multiplier, int64_t multiple_of);

struct SwiGLUImpl : torch::nn::Module {
  SwiGLUImpl(int64_t dim, int64_t hidden_dim);

  // x [..., dim] -> [..., dim]
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Linear w1{nullptr};  // dim -> hidden (gate, through silu)
  torch::nn::Linear w2{nullptr};  // hidden -> dim (down projection)
  torch::nn::Linear w3{nullptr};  // dim -> hidden (linear branch)
  bool fused = true;                // core/kernels on CUDA tensors: silu(·) · (·) in one kernel, float32 weight gradients
  bool fused_projections = false;    // W1 and W3 as one GEMM (nn::project); parameters stay w1, w3
};
TORCH_MODULE(SwiGLU);

}  // namespace tessera::nn
