#include "core/nn/rope.h"

#include "core/error.h"
#include "core/kernels/fused.h"

namespace tessera::nn {

RopeLayout parse_rope_layout(const std::string& name) {
  if (name == "half_split") return RopeLayout::HalfSplit;
  if (name == "interleaved") return RopeLayout::Interleaved;
  fail("unknown RoPE layout '", name, "'; valid values: half_split, interleaved");
}

std::string to_string(RopeLayout layout) {
  return layout == RopeLayout::HalfSplit ? "half_split" : "interleaved";
}

RotaryEmbeddingImpl::RotaryEmbeddingImpl(int64_t head_dim, int64_t max_positions, double theta,
                                         RopeLayout layout)
    : head_dim_(head_dim), max_positions_(max_positions), theta_(theta), layout_(layout) {
  check(head_dim > 0 && head_dim % 2 == 0, "RoPE: head_dim must be positive and even, got ", head_dim);
  check(max_positions > 0, "RoPE: max_positions must be positive, got ", max_positions);
  check(theta > 0, "RoPE: theta must be positive, got ", theta);
  // Angles in float64: p * inv_freq reaches ~1e5 rad at long contexts, where float32 keeps only
  // ~1e-2 rad of absolute precision. Only the final cos/sin are rounded to float32.
  const auto f64 = torch::TensorOptions().dtype(at::kDouble);
  const torch::Tensor inv_freq =
      at::pow(theta, -at::arange(0, head_dim, 2, f64) / static_cast<double>(head_dim));  // [D/2]
  const torch::Tensor angles = at::outer(at::arange(max_positions, f64), inv_freq);     // [P, D/2]
  cos_table = register_buffer("cos", angles.cos().to(at::kFloat));
  sin_table = register_buffer("sin", angles.sin().to(at::kFloat));
}

void RotaryEmbeddingImpl::check_positions(const torch::Tensor& positions) const {
  // Inference tensors have no version counter: always check them.
  const bool memo = !positions.is_inference();
  std::lock_guard<std::mutex> lock(checked_mutex_);
  if (memo && positions.is_same(checked_positions_) && positions._version() == checked_version_) return;
  if (positions.numel() > 0) {
    const auto [lo, hi] = at::aminmax(positions);
    const torch::Tensor range = at::stack({lo, hi}).to(at::kCPU, at::kLong);  // one sync
    const int64_t min_pos = range[0].item<int64_t>(), max_pos = range[1].item<int64_t>();
    check(min_pos >= 0, "RoPE: negative position ", min_pos);
    check(max_pos < max_positions_, "RoPE: position ", max_pos, " is beyond the table of ",
          max_positions_, " positions; raise max_positions (the model's max_seq_len)");
  }
  if (memo) {
    checked_positions_ = positions;
    checked_version_ = positions._version();
  }
}

void RotaryEmbeddingImpl::check_inputs(const torch::Tensor& positions, int64_t B, int64_t T,
                                       torch::Device device) const {
  check(positions.defined() && at::isIntegralType(positions.scalar_type(), /*includeBool=*/false),
        "RoPE: positions must be an integer tensor");
  check((positions.dim() == 1 && positions.size(0) == T) ||
            (positions.dim() == 2 && positions.size(0) == B && positions.size(1) == T),
        "RoPE: positions must be [T] or [B, T] with B=", B, ", T=", T, "; got ", positions.sizes());
  check(cos_table.device() == device, "RoPE: tables are on ", cos_table.device(), " but the input is on ", device,
        "; move the module with .to(device)");
  // A captured CUDA graph replays the positions its warm-up steps checked; reading them on the host
  // would break the capture.
  if (!kernels::cuda_graph_capturing()) check_positions(positions);
}

torch::Tensor RotaryEmbeddingImpl::range(int64_t start, int64_t len, torch::Device device) const {
  check(start >= 0 && len >= 0, "RoPE: bad position range start=", start, " length=", len);
  check(start + len <= max_positions_, "RoPE: position ", start + len - 1, " is beyond the table of ", max_positions_,
        " positions; raise max_positions (the model's max_seq_len)");
  torch::Tensor positions = at::arange(start, start + len, torch::TensorOptions().dtype(at::kLong).device(device));
  std::lock_guard<std::mutex> lock(checked_mutex_);
  checked_positions_ = positions;
  checked_version_ = positions._version();
  return positions;
}

torch::Tensor RotaryEmbeddingImpl::apply(const torch::Tensor& x, const torch::Tensor& positions) const {
  check(x.dim() == 4 && x.size(3) == head_dim_, "RoPE: expected x [B, H, T, ", head_dim_, "], got ",
        x.sizes());
  check_inputs(positions, x.size(0), x.size(2), x.device());
  return kernels::rope(x, cos_table, sin_table, positions, layout_ == RopeLayout::Interleaved, fused);
}

kernels::QkvHeads RotaryEmbeddingImpl::split_qkv(const torch::Tensor& qkv, int64_t n_heads, int64_t n_kv_heads,
                                                 const torch::Tensor& positions) const {
  check(qkv.dim() == 3 && n_heads > 0 && n_kv_heads > 0 && qkv.size(2) == (n_heads + 2 * n_kv_heads) * head_dim_,
        "RoPE: expected qkv [B, T, (", n_heads, " + 2·", n_kv_heads, ")·", head_dim_, "], got ", qkv.sizes());
  check_inputs(positions, qkv.size(0), qkv.size(1), qkv.device());
  return kernels::split_qkv_rope(qkv, n_heads, n_kv_heads, cos_table, sin_table, positions,
                                 layout_ == RopeLayout::Interleaved, fused);
}

}  // namespace tessera::nn
