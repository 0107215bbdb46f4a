// CEMA: Megalodon's complex exponential moving average (Ma et al. 2024, §3.1 eq. 2-3), with the
// numerics of the official code (XuezheMax/megalodon, `MultiHeadComplexEMA`; notes §1.2 "What the
// code computes"). Each of the D model dimensions drives N complex EMA channels:
//
//   h_t = p ⊙ x_t + q ⊙ h_{t-1}                  h_t ∈ C^{D×N}, x_t ∈ R^D broadcast over n
//   y_t = Re(Σ_n η_n ⊙ h_{t,n}) + ω ⊙ x_t         (no SiLU, unlike Mega)
//
//   p_{d,n} = σ(alpha_{d,n})                                      real: the input is not rotated
//   q_{d,n} = (1 - σ(alpha_{d,n}) σ(delta_{d,n})) · e^{iθ_{d,n}}   |q| < 1 by construction
//   θ_{d,n} = n · σ(theta_d) · 2π/N,  n = 1..N                   one learnable base angle per d
//   η_{d,n} = (gamma_{d,n,0} + i gamma_{d,n,1}) / √N
//
// Parameters carry the official names and layouts so that a converted state dict loads as is:
// "alpha" [D,N,1], "delta" [D,N,1], "theta" [D,1,1], "gamma" [D,N,2] (η's real/imag parts),
// "omega" [D] (the official tensor is [D,1]; a converter must squeeze it).
//
// The recurrence is linear and time-invariant, so a whole sequence has closed forms (notes §1.2):
//   kernel        k_d[j] = Re Σ_n η p q^j                         j = 0..L-1
//   state bias    b[t]   = Re Σ_n η q^{t+1} h_{-1}                 (the carried state's echo)
//   output        y = k * x (causal convolution) + b + ω ⊙ x
//   final state   h_{L-1} = q^L h_{-1} + Σ_j p q^{L-1-j} x_j
// Three interchangeable ways to evaluate them (CEMAMode), equal to float64 rounding:
//   FFT          the training path: k, b and h_{L-1} from the closed forms, k * x by rfft/irfft
//                zero-padded to 2·n_fft (n_fft = L rounded up to a power of two), as the official
//                fallback path does. O(L log L) per channel.
//   ChunkedScan  segments of S = `scan_chunk` steps: inside a segment a lower-triangular Toeplitz
//                matmul with the kernel, plus the echo of the state carried into the segment; the
//                state is carried segment to segment. All segments go through three batched GEMMs
//                (D matmuls of [B·L/S, S] × [S, S] or [S, 2N]); only the carry h <- q^S h + p u loops
//                over segments. Memory D·S² for the Toeplitz matrices, so keep S small (<= 512).
//   Sequential   the recurrence itself, one step at a time: the reference, and generation.
//
// Powers q^j come from exp(j · log q) with one complex log (as in the official kernels; repeated
// multiplication drifts over long kernels), never as a [D, N, L] tensor: with j = nb·k + r, q^j =
// q^{nb·k} · q^r, the block factors q^{nb·k} are folded into the small [B, D, N] side and each
// primitive below is one batched real GEMM over all blocks (Re(a·b) = a_r b_r - a_i b_i, the N-sum
// as the inner dimension). The two primitives are custom autograd functions that save only their
// small inputs and recompute the powers in backward, so training memory is that of the [B, D, L]
// activations. Powers whose modulus falls below e^-30 (float32) / e^-300 (float64) are exactly 0:
// far below rounding, and it keeps the GEMMs out of slow subnormal arithmetic on CPUs.
//
// Precision: all EMA arithmetic is float32/complex64 for float32, bf16 and fp16 inputs (autocast is
// switched off inside), float64/complex128 for float64 inputs; y is cast back to x's dtype once.
// The state is a complex tensor [B, D, N] of the compute precision (complex64 or complex128).
//
// Padding: steps where padding_mask is true are treated as zero input (x_t := 0, as the official code
// multiplies x by the inverted mask). The state still advances through them: it decays by q per
// padded step, and y at a padded step is the decaying echo Re Σ η h_t (not 0; the caller masks it).
// So left padding with a zero state is invisible (y = 0 there, up to FFT rounding, and the later
// steps are those of the unpadded row), while right padding decays the final state by q^{#pad}: run
// generation from the state of an unpadded (or left-padded) prompt.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <optional>

namespace tessera::nn {

enum class CEMAMode { FFT, ChunkedScan, Sequential };

struct CEMAOutput {
  at::Tensor y;      // [B, L, D] (step(): [B, D]), x's dtype
  at::Tensor state;  // h_{L-1}: complex [B, D, N], complex64 (complex128 for float64 input)
};

// The block-wise primitives behind the FFT path (also usable on their own; both differentiable
// w.r.t. every tensor argument through custom autograd functions that recompute the powers in
// backward). log_q is complex [D, N] (c and x of the matching precision); block = steps per block
// of powers; block <= 0 picks the power of two just above √L, between 16 and what keeps D·N·block
// near 2^23 elements. The result does not depend on the block size beyond rounding.
//
//   cema_power_project: c complex [B, D, N] -> real [B, D, L],  out[b,d,t] = Re Σ_n c[b,d,n] q[d,n]^t
//   cema_power_reduce:  x real [B, L, D]    -> complex [B, D, N], out[b,d,n] = Σ_j x[b,j,d] q[d,n]^{L-1-j}
at::Tensor cema_power_project(const at::Tensor& c, const at::Tensor& log_q, int64_t length,
                              int64_t block = 0);
at::Tensor cema_power_reduce(const at::Tensor& x, const at::Tensor& log_q, int64_t block = 0);

// The derived coefficients, in a real compute dtype (float32 or float64): p real [D, N],
// log q = log(1 - σ(alpha)σ(delta)) + iθ complex [D, N], η complex [D, N].
struct CEMACoefficients {
  at::Tensor p;
  at::Tensor log_q;
  at::Tensor eta;
};

struct CEMAImpl : torch::nn::Module {
  // dim = D (model width), ndim = N (EMA channels per dimension; 16 in the paper).
  CEMAImpl(int64_t dim, int64_t ndim = 16);

  // The official initialisation (notes §1.2): alpha, delta ~ N(0, 0.2²); theta_d = logit(f_{π(d)})
  // with f_i = exp(-i·ln D / D), i = 1..D, π a random permutation (so σ(theta) spans [1/D, 1)
  // log-uniformly over the dimensions; for D = 1, f_1 = 1 is clamped to 1 - 1e-6 to stay finite);
  // gamma[..., 0] ~ N(0, 1), gamma[..., 1] = 0 (η starts real); omega ~ N(0, 0.25²) truncated to
  // [-1, 1]. Draws from torch's default generator, so torch::manual_seed makes it reproducible.
  void reset_parameters();

  // x [B, L, D] (any floating dtype); state: complex [B, D, N] or undefined (= zeros); padding_mask:
  // [B, L] bool, true = padding (treated as zero input, see above), or undefined. eval_mode picks
  // the evaluation for this call; nullopt uses the member `mode`. (One forward with defaults, not
  // overloads: torch's ModuleHolder::operator() needs a single forward to deduce its return type.)
  CEMAOutput forward(const at::Tensor& x, const at::Tensor& state = {},
                     const at::Tensor& padding_mask = {},
                     std::optional<CEMAMode> eval_mode = std::nullopt);

  // One generation step: x_t [B, D] -> y_t [B, D] and the next state; the same as forward on a
  // length-1 sequence (evaluated by the recurrence). state may be undefined (= zeros).
  CEMAOutput step(const at::Tensor& x_t, const at::Tensor& state);

  // Zeros, complex [batch, D, N]: complex64, or complex128 when `real_dtype` is float64.
  at::Tensor initial_state(int64_t batch, at::ScalarType real_dtype = at::kFloat,
                           const c10::Device& device = c10::kCPU) const;

  // p, log q, η in `real_dtype` (float32 or float64), differentiable w.r.t. the parameters.
  CEMACoefficients coefficients(at::ScalarType real_dtype) const;

  torch::Tensor alpha;  // [D, N, 1] logit of α (p = α)
  torch::Tensor delta;  // [D, N, 1] logit of δ (|q| = 1 - αδ)
  torch::Tensor theta;  // [D, 1, 1] logit of the base angle σ(theta)
  torch::Tensor gamma;  // [D, N, 2] η·√N as (real, imag)
  torch::Tensor omega;  // [D]       residual skip weight
  int64_t dim;
  int64_t ndim;
  CEMAMode mode = CEMAMode::FFT;
  int64_t scan_chunk = 256;  // ChunkedScan segment length S
  int64_t power_block = 0;   // steps per block of powers q^j (FFT mode); <= 0: automatic (see above)
};
TORCH_MODULE(CEMA);

}  // namespace tessera::nn
