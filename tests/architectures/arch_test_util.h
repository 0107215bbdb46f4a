// Helpers shared by the architecture tests.
#pragma once

#include <ATen/ATen.h>
#include <torch/optim/adam.h>

#include <functional>
#include <string>
#include <utility>

#include "core/batch.h"
#include "core/error.h"
#include "core/model.h"

namespace tessera::testing {

inline Batch batch_of(const at::Tensor& tokens) {
  Batch b;
  b.tokens = tokens;
  return b;
}

inline double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

// The message of the tessera::Error that f throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Cross-entropy of `model` on `batch` (targets required) before and after `steps` Adam steps at `lr`.
inline std::pair<double, double> overfit(LanguageModel& model, const Batch& batch, int steps, double lr) {
  torch::optim::Adam opt(model.parameters(), torch::optim::AdamOptions(lr));
  const int64_t V = model.vocab_size();
  auto loss_of = [&] {
    return at::cross_entropy_loss(model.forward(batch).logits.reshape({-1, V}), batch.targets.reshape({-1}));
  };
  const double before = loss_of().item<double>();
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    loss_of().backward();
    opt.step();
  }
  return {before, loss_of().item<double>()};
}

}  // namespace tessera::testing
