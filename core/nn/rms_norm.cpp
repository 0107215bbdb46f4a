#include "core/nn/rms_norm.h"

#include "core/error.h"

namespace tessera::nn {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, bool plus_one_) : eps(eps_), plus_one(plus_one_) {
  check(dim > 0, "RMSNorm: dim must be positive, got ", dim);
  check(eps_ >= 0, "RMSNorm: eps must be non-negative, got ", eps_);
  weight = register_parameter("weight", plus_one ? torch::zeros({dim}) : torch::ones({dim}));
}

torch::Tensor RMSNormImpl::scale() const { return plus_one ? weight + 1.0 : weight; }

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const int64_t dim = weight.size(0);
  check(x.dim() >= 1 && x.size(-1) == dim, "RMSNorm: expected input [..., ", dim, "], got ",
        x.sizes());
  if (weight.scalar_type() == x.scalar_type()) {
    // One fused kernel on CUDA (forward and backward); it accumulates in float32 for bf16/fp16.
    return at::rms_norm(x, {dim}, scale(), eps);
  }
  // Mixed dtypes (bf16 activations under autocast, float32 weight): ATen would take the same
  // composite path but warn; spell it out in float32 and cast back once.
  const torch::Tensor xf = x.to(at::promote_types(x.scalar_type(), at::kFloat));
  const torch::Tensor inv_rms = xf.square().mean(-1, /*keepdim=*/true).add_(eps).rsqrt_();
  return (xf * inv_rms * scale()).to(x.scalar_type());
}

}  // namespace tessera::nn
