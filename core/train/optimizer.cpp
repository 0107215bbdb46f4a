#include "core/train/optimizer.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "core/kernels/fused.h"

namespace tessera {

AdamW::AdamW(NamedTensorList params, AdamWConfig config) : params_(std::move(params)), config_(config) {
  Group decay{config_.weight_decay, {}}, no_decay{0.0, {}};
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i].second;
    exp_avg_.push_back(at::zeros_like(p, at::MemoryFormat::Preserve));
    exp_avg_sq_.push_back(at::zeros_like(p, at::MemoryFormat::Preserve));
    steps_.push_back(at::zeros({}, p.options().dtype(at::kFloat)));
    (p.dim() >= 2 ? decay : no_decay).members.push_back(i);
  }
  groups_ = {decay, no_decay};
}

void AdamW::step(double lr, const at::Tensor& grad_multiplier) {
  for (const Group& g : groups_) {
    std::vector<at::Tensor> params, grads, m, v, steps;
    for (size_t i : g.members) {
      const at::Tensor& grad = params_[i].second.grad();
      if (!grad.defined()) continue;  // unused this step (e.g. a tied or conditional branch)
      params.push_back(params_[i].second);
      grads.push_back(grad);
      m.push_back(exp_avg_[i]);
      v.push_back(exp_avg_sq_[i]);
      steps.push_back(steps_[i]);
    }
    kernels::adamw_step(params, grads, m, v, steps, lr, config_.beta1, config_.beta2, g.weight_decay, config_.eps,
                        grad_multiplier);
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_) p.mutable_grad() = at::Tensor();
}

NamedTensorList AdamW::state() const {
  NamedTensorList out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back(params_[i].first + ".exp_avg", exp_avg_[i]);
    out.emplace_back(params_[i].first + ".exp_avg_sq", exp_avg_sq_[i]);
    out.emplace_back(params_[i].first + ".step", steps_[i]);
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& tensors, const std::string& source) {
  at::NoGradGuard no_grad;
  auto load = [&](const std::string& key, at::Tensor& dst) {
    auto it = tensors.find(key);
    check(it != tensors.end(), source, ": optimizer state lacks '", key,
          "' (the checkpoint was written for a different model)");
    check(it->second.sizes() == dst.sizes(), source, ": optimizer state '", key, "' has shape ", it->second.sizes(),
          ", expected ", dst.sizes());
    dst.copy_(it->second);
  };
  for (size_t i = 0; i < params_.size(); ++i) {
    load(params_[i].first + ".exp_avg", exp_avg_[i]);
    load(params_[i].first + ".exp_avg_sq", exp_avg_sq_[i]);
    load(params_[i].first + ".step", steps_[i]);
  }
  check(tensors.size() == 3 * params_.size(), source, ": optimizer state holds ", tensors.size(),
        " tensors, expected ", 3 * params_.size(), " (a different model?)");
}

at::Tensor clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return at::zeros({});
  const std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2);
  const at::Tensor total = at::linalg_vector_norm(at::stack(norms).to(at::kFloat), 2);
  if (max_norm > 0) at::_foreach_mul_(grads, clip_coefficient(total, max_norm).to(grads.front().dtype()));
  return total;
}

at::Tensor clip_coefficient(const at::Tensor& norm, double max_norm) {
  check(max_norm > 0, "clip_coefficient: max_norm must be positive, got ", max_norm);
  // Stays on the device: no synchronisation in the training step.
  return (max_norm / (norm.to(at::kFloat) + 1e-6)).clamp_max(1.0);
}

}  // namespace tessera
