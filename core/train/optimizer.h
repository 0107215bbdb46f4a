// AdamW with decoupled weight decay through a fused kernel (kernels::adamw_step: core/kernels' on CUDA,
// ATen's `_fused_adamw_` elsewhere) instead of a dozen element-wise ops per tensor. Matrices decay;
// norm gains and biases (dim < 2) do not.
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace tessera {

using NamedTensorList = std::vector<std::pair<std::string, at::Tensor>>;

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(NamedTensorList params, AdamWConfig config);

  // grad_multiplier: a 0-dim float32 tensor on the parameters' device multiplying every gradient inside the
  // update (the clipping coefficient from clip_coefficient: clipping without its own pass over the
  // gradients); undefined: 1.
  void step(double lr, const at::Tensor& grad_multiplier = at::Tensor());
  void zero_grad();  // sets gradients to undefined (frees them; next backward allocates)

  // "<param>.exp_avg", "<param>.exp_avg_sq", "<param>.step" — what optimizer.safetensors holds.
  NamedTensorList state() const;
  void load_state(const std::map<std::string, at::Tensor>& tensors, const std::string& source);

 private:
  struct Group {
    double weight_decay;
    std::vector<size_t> members;
  };
  NamedTensorList params_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_, steps_;
  std::vector<Group> groups_;
  AdamWConfig config_;
};

// Scales gradients so that their global L2 norm is at most max_norm (no host sync); returns the norm
// before clipping as a 0-dim tensor. max_norm <= 0 only measures.
at::Tensor clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

// min(1, max_norm / norm) as a 0-dim float32 tensor on norm's device (no host sync): what clip_grad_norm
// multiplies the gradients by, for AdamW::step to apply inside the update.
at::Tensor clip_coefficient(const at::Tensor& norm, double max_norm);

}  // namespace tessera
