// TimestepNorm (Megalodon, Ma et al. 2024, §3.2 eq. 4): group normalisation made causal. The
// statistics of group g at step t cover all D/G features of that group at every un-padded step <= t,
// including a prefix carried in a TimestepNormState (previous chunk, previous generation step):
//
//   mu_t   = mean of x[i, j] over i <= t (un-padded), j in g        (population mean)
//   var_t  = mean of (x[i, j] - mu_t)^2 over the same set          (population variance)
//   y[t, j] = (x[t, j] - mu_t) / sqrt(var_t + eps) * (1 + weight[j]) + bias[j]
//
// Parameters (named as in the official Megalodon `TimestepNorm`): "weight" [D] and "bias" [D], both
// initialised to 0; the effective scale is 1 + weight ("plus-one" reparameterisation, so weight decay
// pulls the scale toward 1, not 0). A checkpoint converter to a standard norm must add 1 to weight.
// The official module's learnable prior (prior_count, prior_mean, prior_logv) is not implemented:
// every released config uses prior_count = 0, which ignores it.
//
// A padded step (padding_mask true) outputs 0 and leaves the statistics unchanged. The whole
// sequence is processed in parallel over time (cumulative sums, see timestep_norm.cpp), not with a
// loop over steps. Eval-time windowing of the statistics (official generation code, notes §1.6) is the
// caller's business: it replaces the carried state; this module always uses the full carried prefix.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace tessera::nn {

// Running statistics per (batch row, group). The count is the number of un-padded steps seen, the
// same for every group of a row, so it is stored once per row as in the official code.
// mean/var are kept in float64 whatever the activation dtype: they are tiny and carried across many
// chunks, so they should not add rounding of their own. A default-constructed (undefined) state
// means "no prefix" and is equivalent to initial_state().
struct TimestepNormState {
  at::Tensor count;  // [B] int64
  at::Tensor mean;   // [B, G] float64
  at::Tensor var;    // [B, G] float64, population variance
  bool defined() const { return count.defined(); }
};

struct TimestepNormOutput {
  at::Tensor y;                 // same shape and dtype as the input
  TimestepNormState state;      // statistics after the last step (padded steps excluded)
};

struct TimestepNormImpl : torch::nn::Module {
  TimestepNormImpl(int64_t dim, int64_t groups, double eps = 1e-5);

  // x [B, L, D]; state: the carried prefix or nullptr for none; padding_mask [B, L] bool, true =
  // padding, or undefined for none. bf16/fp16 inputs are normalised in float32 and cast back once;
  // float64 stays float64. Differentiable (ATen ops only) w.r.t. x, weight, bias and state mean/var.
  TimestepNormOutput forward(const at::Tensor& x, const TimestepNormState* state = nullptr,
                             const at::Tensor& padding_mask = {});

  // One generation step: x_t [B, D] -> y_t [B, D]; identical to forward on a length-1 sequence.
  // padding_mask, if given, is [B] bool (true = this row's token is padding).
  TimestepNormOutput step(const at::Tensor& x_t, const TimestepNormState& state,
                          const at::Tensor& padding_mask = {});

  // count 0, mean 0, var 1 (the official prior's defaults; with count 0 they never affect outputs).
  TimestepNormState initial_state(int64_t batch, const c10::Device& device = c10::kCPU) const;

  torch::Tensor weight;  // [dim], "weight", initialised to 0; effective scale 1 + weight
  torch::Tensor bias;    // [dim], "bias", initialised to 0
  int64_t dim;
  int64_t groups;
  double eps;
};
TORCH_MODULE(TimestepNorm);

}  // namespace tessera::nn
