// Fused operations of the transformer blocks, with autograd. On CUDA tensors (in builds where LibTorch
// has CUDA) each is one kernel forward and one backward (core/kernels/fused_cuda.cu); everywhere else,
// and for dtypes the kernels do not cover, the same math through ATen ops, so CPU builds compute the
// same function. All math runs in float32 whatever the storage dtype.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace tessera::kernels {

// Whether this build has the CUDA kernels (LibTorch with CUDA and TESSERA_WITH_CUDA).
bool cuda_kernels_built();

// Whether the current CUDA stream is capturing a CUDA graph (false in CPU builds): host
// synchronisations (value checks that read a tensor on the host) must be skipped then.
bool cuda_graph_capturing();

struct AddRmsNorm {
  at::Tensor sum;     // residual + x in float32 (the new residual stream); x itself when residual is undefined and x is float32
  at::Tensor normed;  // RMSNorm(sum) · scale in out_dtype
};

// Pre-norm residual step: sum = residual + x (residual may be undefined), normed = sum / rms(sum) · scale,
// cast once to out_dtype (bf16 under autocast, so that the next projection needs no cast). scale: [dim]
// float32 (a norm's weight, or weight + 1).
// use_kernel = false takes the ATen path on CUDA too (for measuring what the kernels gain).
AddRmsNorm add_rms_norm(const at::Tensor& residual, const at::Tensor& x, const at::Tensor& scale, double eps,
                        at::ScalarType out_dtype, bool use_kernel = true);

// SwiGLU's gate: silu(gate) · up (same shapes and dtype).
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up, bool use_kernel = true);

// silu_mul on one GEMM's output: gate_up [..., 2·hidden] holds gate then up in each row; returns
// [..., hidden]. The CUDA backward writes both gradients into one [..., 2·hidden] tensor, the layout of
// the GEMM's output, so the fused projection's backward needs no concatenation.
at::Tensor silu_mul_packed(const at::Tensor& gate_up, bool use_kernel = true);

// Rotary embedding of x [B, H, T, D] by the angles in cos/sin tables [max_positions, D/2] (float32) at
// integer positions [T] or [B, T] (already range-checked by the caller); interleaved pairs (2i, 2i + 1),
// else (i, i + D/2). Returns x's dtype.
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos_table, const at::Tensor& sin_table,
                const at::Tensor& positions, bool interleaved, bool use_kernel = true);

struct QkvHeads {
  at::Tensor q, k, v;  // [B, Hq, T, D], [B, Hkv, T, D], [B, Hkv, T, D]
};

// One fused projection's output qkv [B, T, (Hq + 2·Hkv)·D] (q's heads, then k's, then v's) split into
// heads, q and k rotated as rope() does (cos_table undefined: no rotation). v is a view of qkv. On CUDA the
// backward writes the three gradients into one tensor of qkv's layout (the rotations undone), instead of
// the sum of three projections' input gradients that separate q/k/v GEMMs need.
QkvHeads split_qkv_rope(const at::Tensor& qkv, int64_t n_heads, int64_t n_kv_heads, const at::Tensor& cos_table,
                        const at::Tensor& sin_table, const at::Tensor& positions, bool interleaved,
                        bool use_kernel = true);

// Per-token negative log-likelihood in float32 of logits [N, V] (any float dtype) at targets [N] (int64;
// -100 is ignored: 0 and no gradient). The CUDA kernel reads bf16 logits directly: no float32 copy of the
// logits is made, forward or backward.
at::Tensor cross_entropy_nll(const at::Tensor& logits, const at::Tensor& targets, bool use_kernel = true);

// y = x · [W_1; ...; W_n]^T (+ [b_1; ...; b_n]) for 1 ≤ n ≤ 3 weights [out_i, in] (biases: none, or one per
// weight). Bias-free float32 weights under CUDA autocast take one op: each weight is cast to the autocast
// dtype once, straight into its rows of the concatenated weight, one GEMM, and the backward's weight GEMM
// writes float32 gradients directly (cuBLAS with a float32 output) where autocast's path would write bf16
// gradients and cast each afterwards (a pass over every weight gradient). Otherwise at::linear over the
// weights (cast by autocast's cached cast when on, then concatenated): the same math.
at::Tensor autocast_linear(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                           const std::vector<at::Tensor>& biases = {}, bool use_kernel = true);

// AdamW (decoupled weight decay; PyTorch's fused AdamW math) over parameters with their gradients, moments
// and float32 step counters (incremented here). Each gradient is multiplied by grad_multiplier (a 0-dim
// float32 tensor on the parameters' device, e.g. the clipping coefficient; undefined: 1) inside the update,
// so clipping needs no pass of its own over the gradients. On CUDA with float32 state: one kernel per
// tensor that leaves the gradients untouched; otherwise the gradients are scaled in place, then ATen's
// _fused_adamw_.
void adamw_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& exp_avg_sqs,
                const std::vector<at::Tensor>& steps, double lr, double beta1, double beta2, double weight_decay,
                double eps, const at::Tensor& grad_multiplier, bool use_kernel = true);

// The dtype activations take under autocast on x's device (bf16 on CUDA when enabled), else x's dtype:
// what a fused norm should write so that the next projection needs no cast.
at::ScalarType activation_dtype(const at::Tensor& x);

}  // namespace tessera::kernels
