// Launchers of the fused CUDA kernels (core/kernels/fused_cuda.cu). Raw pointers and a cudaStream_t
// passed as void*, so that this header and the .cu file need no LibTorch: nvcc compiles them on any
// machine with the CUDA toolkit (CI included), and only core/kernels/fused.cpp, built where LibTorch has
// CUDA, calls them. Every launcher returns the cudaError_t of its launch (0 = success) as an int.
#pragma once

#include <cstdint>

namespace tessera::kernels::cuda {

enum class DType : int { Float32 = 0, BFloat16 = 1, Float16 = 2 };

// sum = residual + x (residual may be null: sum = x), normed = sum * rsqrt(mean(sum²) + eps) * scale.
// sum_out may be null when residual is null and x is float32 (x itself is the sum). rstd_out: [rows].
int add_rms_norm_forward(const float* residual, const void* x, DType x_dtype, const float* scale, float* sum_out,
                         void* normed_out, DType out_dtype, float* rstd_out, int64_t rows, int64_t dim, float eps,
                         void* stream);

// From the saved fp32 sum and rstd and the gradient of normed (dtype of normed): the gradient of the sum
// plus grad_sum (may be null), written to grad_residual (fp32, may be null) and grad_x (x's dtype, may be
// null); scale's gradient as per-block partial sums scale_partials [blocks, dim] (blocks from
// add_rms_norm_backward_blocks).
int64_t add_rms_norm_backward_blocks(int64_t rows);
int add_rms_norm_backward(const float* sum, const float* rstd, const float* scale, const void* grad_normed,
                          DType grad_dtype, const float* grad_sum, float* grad_residual, void* grad_x, DType x_dtype,
                          float* scale_partials, int64_t rows, int64_t dim, void* stream);

// out = silu(gate) * up, elementwise over n values of one dtype (contiguous).
int silu_mul_forward(const void* gate, const void* up, void* out, DType dtype, int64_t n, void* stream);
// grad_gate = grad · up · silu'(gate), grad_up = grad · silu(gate).
int silu_mul_backward(const void* gate, const void* up, const void* grad, void* grad_gate, void* grad_up, DType dtype,
                      int64_t n, void* stream);
// The same on a packed input [rows, 2·hidden] holding gate then up in each row (one GEMM's output):
// out [rows, hidden] contiguous; the backward writes both gradients into grad_gate_up [rows, 2·hidden],
// the layout the GEMM's backward reads.
int silu_mul_packed_forward(const void* gate_up, void* out, DType dtype, int64_t rows, int64_t hidden, void* stream);
int silu_mul_packed_backward(const void* gate_up, const void* grad, void* grad_gate_up, DType dtype, int64_t rows,
                             int64_t hidden, void* stream);

// Rotary embedding of x [B, H, T, D] into out [B, H, T, D] (each with its own strides, the last dimension
// contiguous): pairs (i, i + D/2) (half split) or (2i, 2i + 1) (interleaved) rotated by the angle of the
// token's position; cos/sin tables [max_positions, D/2] float32; positions int64 [T] or [B, T]
// (positions_batched). inverse = rotate by minus the angle (the backward pass).
struct RopeShape {
  int64_t B, H, T, D;
  int64_t x_stride_b, x_stride_h, x_stride_t;
  int64_t out_stride_b, out_stride_h, out_stride_t;
  bool interleaved, positions_batched, inverse;
};
int rope_forward(const void* x, void* out, DType dtype, const float* cos_table, const float* sin_table,
                 const int64_t* positions, const RopeShape& shape, void* stream);

// Per-row negative log-likelihood of logits [rows, V] (any float dtype, contiguous rows) at targets
// (int64; -100 = ignored: nll 0 and no gradient; any other value outside [0, V): NaN), with the
// log-sum-exp kept for the backward: nll[r] = lse[r] - logits[r, t_r], in float32.
int cross_entropy_forward(const void* logits, DType dtype, const int64_t* targets, float* nll, float* lse, int64_t rows,
                          int64_t vocab, void* stream);
// grad_logits[r, j] = grad_nll[r] · (softmax[r, j] - [j == t_r]), in the logits' dtype.
int cross_entropy_backward(const void* logits, DType dtype, const int64_t* targets, const float* lse,
                           const float* grad_nll, void* grad_logits, int64_t rows, int64_t vocab, void* stream);

// One AdamW step (decoupled weight decay; PyTorch's fused AdamW math in float32) over n float32 values:
// g = grad · *grad_multiplier (null: 1) enters the moments; grad itself is not written. step points at the
// (already incremented) float32 step count on the device.
int adamw_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, const float* step,
               const float* grad_multiplier, int64_t n, float lr, float beta1, float beta2, float weight_decay,
               float eps, void* stream);

}  // namespace tessera::kernels::cuda
