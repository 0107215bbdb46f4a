#include "core/nn/swiglu.h"

#include "core/error.h"
#include "core/kernels/fused.h"
#include "core/nn/fused_linear.h"

namespace tessera::nn {

int64_t swiglu_hidden_dim(int64_t dim, double ffn_dim_multiplier, int64_t multiple_of) {
  check(dim > 0, "swiglu_hidden_dim: dim must be positive, got ", dim);
  check(multiple_of > 0, "swiglu_hidden_dim: multiple_of must be positive, got ", multiple_of);
  int64_t hidden = 4 * dim;
  hidden = 2 * hidden / 3;  // Python's int(2 * hidden / 3): truncation, same as integer division here
  if (ffn_dim_multiplier > 0) hidden = static_cast<int64_t>(ffn_dim_multiplier * static_cast<double>(hidden));
  check(hidden > 0, "swiglu_hidden_dim: ffn_dim_multiplier ", ffn_dim_multiplier,
        " makes the hidden size zero for dim ", dim);
  return multiple_of * ((hidden + multiple_of - 1) / multiple_of);
}

SwiGLUImpl::SwiGLUImpl(int64_t dim, int64_t hidden_dim) {
  check(dim > 0 && hidden_dim > 0, "SwiGLU: dim and hidden_dim must be positive, got ", dim, " and ",
        hidden_dim);
  using torch::nn::LinearOptions;
  w1 = register_module("w1", torch::nn::Linear(LinearOptions(dim, hidden_dim).bias(false)));
  w2 = register_module("w2", torch::nn::Linear(LinearOptions(hidden_dim, dim).bias(false)));
  w3 = register_module("w3", torch::nn::Linear(LinearOptions(dim, hidden_dim).bias(false)));
}

torch::Tensor SwiGLUImpl::forward(const torch::Tensor& x) {
  const int64_t dim = w1->options.in_features();
  check(x.dim() >= 1 && x.size(-1) == dim, "SwiGLU: expected input [..., ", dim, "], got ", x.sizes());
  const torch::Tensor hidden =
      fused_projections ? kernels::silu_mul_packed(project(x, {w1.get(), w3.get()}, fused), fused)
                       : kernels::silu_mul(project(x, {w1.get()}, fused), project(x, {w3.get()}, fused), fused);
  return project(hidden, {w2.get()}, fused);
}

}  // namespace tessera::nn
