// Rotary position embedding (Su et al. 2021, RoFormer, eq. 34): each pair of channels (a, b) of a
// query/key at position p is rotated by the angle p * theta^(-2i/D), i the pair index.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <mutex>
#include <string>

#include "core/kernels/fused.h"

namespace tessera::nn {

// Which channels form the rotated pairs. Checkpoints differ, and loading one with the wrong layout
// gives a model that runs but is wrong, so the layout is always explicit.
enum class RopeLayout {
  HalfSplit,    // pair (i, i + D/2): Hugging Face Llama's rotate_half
  Interleaved,  // pair (2i, 2i + 1): Meta's original Llama and BLT's released code
};

// "half_split" | "interleaved"; anything else is a tessera::Error naming the valid values.
RopeLayout parse_rope_layout(const std::string& name);
std::string to_string(RopeLayout layout);

struct RotaryEmbeddingImpl : torch::nn::Module {
  RotaryEmbeddingImpl(int64_t head_dim, int64_t max_positions, double theta, RopeLayout layout);

  // x [B, H, T, D]; positions integer [T] (shared by the batch) or [B, T], each in [0, max_positions).
  // Returns x rotated, in x's dtype; the rotation runs in float32 for bf16/fp16 inputs.
  torch::Tensor apply(const torch::Tensor& x, const torch::Tensor& positions) const;

  // One fused projection's output qkv [B, T, (Hq + 2·Hkv)·D] split into heads with q and k rotated at
  // positions ([T] or [B, T]); see kernels::split_qkv_rope.
  kernels::QkvHeads split_qkv(const torch::Tensor& qkv, int64_t n_heads, int64_t n_kv_heads,
                              const torch::Tensor& positions) const;

  // Positions start, start + 1, ..., start + len - 1 on device, range-checked on the host from the two
  // integers and remembered as checked, so that apply() needs no device sync for them (a fresh arange
  // would cost one sync per forward: its min/max must come back to the host).
  torch::Tensor range(int64_t start, int64_t len, torch::Device device) const;

  int64_t head_dim() const { return head_dim_; }
  int64_t max_positions() const { return max_positions_; }
  double theta() const { return theta_; }
  RopeLayout layout() const { return layout_; }

  bool fused = true;  // one CUDA kernel per rotation (core/kernels) on CUDA tensors

  // [max_positions, D/2] float32 tables, registered as buffers "cos" and "sin" so that .to(device)
  // moves them (they are derived from the config and not meant to be checkpointed).
  torch::Tensor cos_table, sin_table;

 private:
  // Positions' type and shape for an input of batch B and length T on device, then their range.
  void check_inputs(const torch::Tensor& positions, int64_t B, int64_t T, torch::Device device) const;
  void check_positions(const torch::Tensor& positions) const;

  int64_t head_dim_, max_positions_;
  double theta_;
  RopeLayout layout_;

  // Range check memo. Checking positions needs their min/max on the host: a device sync. A backbone
  // passes one positions tensor to every layer (q and k), so remember the last tensor found valid
  // (held, so its identity cannot be reused) together with its version counter.
  mutable std::mutex checked_mutex_;
  mutable torch::Tensor checked_positions_;
  mutable int64_t checked_version_ = -1;
};
TORCH_MODULE(RotaryEmbedding);

}  // namespace tessera::nn
