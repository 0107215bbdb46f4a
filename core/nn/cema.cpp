#include "core/nn/cema.h"

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace tessera::nn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr double kPi = 3.14159265358979323846;

// Keeps bf16 autocast (CUDA or CPU) from re-casting the EMA's matmuls and FFTs: everything inside
// runs in the dtype it is given (float32 or float64). RAII over the thread-local dispatch key set,
// the same mechanism autocast itself uses for its fall-through.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// Steps per block of powers. Automatic: the power of two nearest above √L (which balances the
// [D, 2N, nb] offset powers against the [D, B·L/nb, 2N] folded coefficients), at least 16 and at
// most what keeps D·N·nb near 2^23 elements.
int64_t resolve_block(int64_t block, int64_t length, int64_t D, int64_t N) {
  if (block > 0) return block;
  const int64_t cap = std::max<int64_t>(16, (int64_t{1} << 23) / std::max<int64_t>(D * N, 1));
  int64_t nb = 16;
  while (nb * nb < length && nb < cap) nb <<= 1;
  return std::min(nb, cap);
}

// n exponents first, first + step, ..., as a real tensor (exact integers in float32 up to 2^24).
at::Tensor exponents(int64_t first, int64_t n, int64_t step, const at::TensorOptions& options) {
  return at::arange(n, options).mul_(static_cast<double>(step)).add_(static_cast<double>(first));
}

// |q|^e = exp(e · log|q|), set to exactly 0 once it falls below e^-30 ≈ 1e-13 (float32) or
// e^-300 (float64): far below the precision of the sums it enters (the dropped tail of a kernel is
// e^-30 relative to its head), but it keeps the products of up to three such factors, and the GEMMs
// over them, out of the subnormal range, where x86 CPUs run up to ~100x slower (measured here: 12 s
// instead of under 1 s for one [1024 × 32 × 256] × [1024 × 256 × 32] bmm against decayed powers).
double decay_cutoff(at::ScalarType dtype) { return dtype == at::kDouble ? -300.0 : -30.0; }
at::Tensor decay(const at::Tensor& log_mag) {
  return at::exp(log_mag).masked_fill(log_mag < decay_cutoff(log_mag.scalar_type()), 0.0);
}

// A complex tensor as its real and imaginary parts (the custom functions work in real arithmetic).
struct Pair {
  at::Tensor re, im;
};
Pair operator*(const Pair& a, const Pair& b) {
  return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}
Pair conj(const Pair& a) { return {a.re, a.im.neg()}; }

// [..., 2N] (real parts, then imaginary parts) -> Pair of [..., N].
Pair split_pair(const at::Tensor& t, int64_t N) { return {t.narrow(-1, 0, N), t.narrow(-1, N, N)}; }
// "Re Σ_n c_n w_n" as a real matmul: the left operand [c_r, -c_i].
at::Tensor re_dot_lhs(const Pair& c) { return at::cat({c.re, c.im.neg()}, -1); }

// q^r for r = 0..n-1 from log q = lr + i·th ([D, N] each), as one real tensor [D, 2N, n]: rows
// 0..N-1 hold Re q^r, rows N..2N-1 hold Im q^r (stacking the parts turns "Re Σ_n c_n q_n^r" into a
// real matmul over 2N with [c_r, -c_i]); reversed = true gives q^{n-1-r}. Two levels, so that only
// O(√n) of the D·N·n entries need exp/cos/sin: with m = ⌈√n⌉, q^{m·i + j} = q^{m·i} · q^j, each
// factor exp-evaluated from the log (a product of two, ~2 ulp; no drift from repeated
// multiplication). Powers below the decay cutoff are exactly 0.
at::Tensor base_powers(const at::Tensor& lr, const at::Tensor& th, int64_t n, bool reversed = false) {
  const int64_t D = lr.size(0), N = lr.size(1);
  const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n)))));
  const int64_t nh = (n + m - 1) / m;
  const auto factor = [&](const at::Tensor& e) {
    const at::Tensor ev = e.view({1, 1, -1});
    const at::Tensor mag = decay(lr.unsqueeze(-1) * ev);
    const at::Tensor phase = th.unsqueeze(-1) * ev;
    return Pair{mag * at::cos(phase), mag * at::sin(phase)};
  };
  const Pair lo = factor(exponents(0, m, 1, lr.options()));   // q^j,     [D, N, m]
  const Pair hi = factor(exponents(0, nh, m, lr.options()));  // q^{m·i}, [D, N, nh]
  const Pair w = Pair{hi.re.unsqueeze(-1), hi.im.unsqueeze(-1)} * Pair{lo.re.unsqueeze(-2), lo.im.unsqueeze(-2)};
  const at::Tensor below = lr.unsqueeze(-1) * exponents(0, n, 1, lr.options()).view({1, 1, -1}) <
                           decay_cutoff(lr.scalar_type());
  const auto finish = [&](const at::Tensor& part) {
    return part.reshape({D, N, nh * m}).narrow(2, 0, n).masked_fill(below, 0.0);
  };
  at::Tensor out = at::cat({finish(w.re), finish(w.im)}, 1);
  return reversed ? out.flip(2) : out;
}

// Blocked powers. Every exponent is split as e = nb·k + r (block k, offset 0 <= r < nb), and
// q^e = q^{nb·k} · q^r. The offsets' powers W [D, 2N, nb] and the block factors A_k = q^{nb·k}
// [D, N, L/nb] are small; A is folded into the small operand ([B, D, N] coefficients, or a [D, B, N]
// result), so that each primitive is one batched GEMM over all blocks at once, with the sequence
// padded to a whole number of blocks. No loop, no [D, N, L] tensor, and only O(D·N·(√nb + L/nb))
// transcendentals. Each power is a product of three exp-evaluated factors (a few ulp).
struct Blocking {
  int64_t nb;    // steps per block
  int64_t nblk;  // blocks; nb·nblk >= L
  int64_t pad() const { return nb * nblk; }
};
Blocking blocking(int64_t length, int64_t block) {
  const int64_t nb = std::max<int64_t>(1, std::min(block, length));
  return {nb, std::max<int64_t>(1, (length + nb - 1) / nb)};
}

// A_k = q^{nb·k}, k = 0..nblk-1 (or q^{nb·(nblk-1-k)} reversed), laid out [D, 1, nblk, N] to
// broadcast against [D, B, nblk, N].
Pair block_factors(const at::Tensor& lr, const at::Tensor& th, const Blocking& bl, bool reversed) {
  const at::Tensor e = reversed ? exponents(bl.nb * (bl.nblk - 1), bl.nblk, -bl.nb, lr.options())
                                : exponents(0, bl.nblk, bl.nb, lr.options());
  const at::Tensor ev = e.view({1, -1, 1});
  const at::Tensor mag = decay(lr.unsqueeze(1) * ev);  // [D, nblk, N]
  const at::Tensor phase = th.unsqueeze(1) * ev;
  return {(mag * at::cos(phase)).unsqueeze(1), (mag * at::sin(phase)).unsqueeze(1)};
}

// out[b,d,t] = Re Σ_n c[b,d,n] q[d,n]^t for t = 0..L-1, with c = cr + i·ci [B,D,N] and
// log q = lr + i·th [D,N]: out[., ., nb·k + r] = Re Σ_n (c·A_k) q^r, one bmm
// [D, B·nblk, 2N] × [D, 2N, nb].
//
// Backward (z = log q, w_t = q^t = e^{t z}; ∂w_t/∂lr = t w_t, ∂w_t/∂θ = i t w_t), from
// S0 = Σ_t g_t w_t and S1 = Σ_t t g_t w_t (complex [B,D,N]):
//   ∂/∂cr = Re S0,  ∂/∂ci = -Im S0,  ∂/∂lr = Σ_b Re(c S1),  ∂/∂θ = -Σ_b Im(c S1).
// One bmm of g (padded, [D, B·nblk, nb]) against [q^r, r·q^r] gives P0_k = Σ_r g q^r and
// P1_k = Σ_r r g q^r per block; then S0 = Σ_k A_k P0_k and S1 = Σ_k A_k (nb·k·P0_k + P1_k).
// Only the inputs are saved; the powers are recomputed.
struct ProjectFn : torch::autograd::Function<ProjectFn> {
  static variable_list forward(AutogradContext* ctx, at::Tensor cr, at::Tensor ci, at::Tensor lr,
                               at::Tensor th, int64_t length, int64_t block) {
    NoAutocast no_autocast;
    ctx->save_for_backward({cr, ci, lr, th});
    ctx->saved_data["length"] = length;
    ctx->saved_data["block"] = block;
    const int64_t B = cr.size(0), D = cr.size(1), N = cr.size(2);
    if (length == 0) return {at::empty({B, D, 0}, cr.options())};
    const Blocking bl = blocking(length, block);
    const Pair c{cr.transpose(0, 1).unsqueeze(2), ci.transpose(0, 1).unsqueeze(2)};  // [D, B, 1, N]
    const at::Tensor lhs = re_dot_lhs(c * block_factors(lr, th, bl, false)).view({D, B * bl.nblk, 2 * N});
    const at::Tensor res = at::bmm(lhs, base_powers(lr, th, bl.nb));  // [D, B·nblk, nb]
    return {res.view({D, B, bl.pad()}).narrow(2, 0, length).transpose(0, 1).contiguous()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    NoAutocast no_autocast;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &cr = saved[0], &ci = saved[1], &lr = saved[2], &th = saved[3];
    const int64_t length = ctx->saved_data["length"].toInt();
    const Blocking bl = blocking(length, ctx->saved_data["block"].toInt());
    const int64_t B = cr.size(0), D = cr.size(1), N = cr.size(2);
    const bool need_c = ctx->needs_input_grad(0) || ctx->needs_input_grad(1);
    const bool need_q = ctx->needs_input_grad(2) || ctx->needs_input_grad(3);
    variable_list out(6);
    if (length == 0) {
      if (need_c) out[0] = at::zeros_like(cr), out[1] = at::zeros_like(ci);
      if (need_q) out[2] = at::zeros_like(lr), out[3] = at::zeros_like(th);
      return out;
    }
    if (!(need_c || need_q)) return out;
    // (reshape: the padding is a no-op copy-free view when L fills the blocks.)
    const at::Tensor g = at::constant_pad_nd(grads[0].transpose(0, 1), {0, bl.pad() - length})
                             .reshape({D, B * bl.nblk, bl.nb});
    const at::Tensor r = exponents(0, bl.nb, 1, lr.options());
    const at::Tensor w = base_powers(lr, th, bl.nb);
    const at::Tensor p = at::bmm(g, at::cat({w, w * r}, 1).transpose(1, 2)).view({D, B, bl.nblk, 4 * N});
    const Pair p0 = split_pair(p.narrow(3, 0, 2 * N), N), p1 = split_pair(p.narrow(3, 2 * N, 2 * N), N);
    const Pair a = block_factors(lr, th, bl, false);
    if (need_c) {
      const Pair s0 = a * p0;
      out[0] = s0.re.sum(2).transpose(0, 1).contiguous();
      out[1] = s0.im.sum(2).neg().transpose(0, 1).contiguous();
    }
    if (need_q) {
      const at::Tensor kn = exponents(0, bl.nblk, bl.nb, lr.options()).view({1, 1, -1, 1});
      const Pair s1 = a * Pair{p0.re * kn + p1.re, p0.im * kn + p1.im};
      const at::Tensor s1r = s1.re.sum(2).transpose(0, 1), s1i = s1.im.sum(2).transpose(0, 1);  // [B, D, N]
      out[2] = (cr * s1r - ci * s1i).sum(0);
      out[3] = (cr * s1i + ci * s1r).sum(0).neg();
    }
    return out;
  }
};

// u[b,d,n] = Σ_j x[b,d,j] q[d,n]^{L-1-j} for x [B,D,L] (the input part of the final EMA state),
// returned as (Re u, Im u), each [B,D,N]. x is zero-padded at the front to nb·nblk steps (which
// keeps every step's exponent); step s of block k then has exponent nb·(nblk-1-k) + (nb-1-s), so
// u = Σ_k A_{nblk-1-k} V_k with V = one bmm of the padded x against the reversed powers q^{nb-1-s}.
//
// Backward, for the loss Re(conj(G) u) with G = gr + i·gi (the output gradients):
//   ∂/∂x[b,d,j] = Σ_n Re(conj(G) q^{L-1-j}): one bmm of [conj(G)·A_{nblk-1-k}] against the
//   reversed powers; with U1 = Σ_j x_j (L-1-j) q^{L-1-j} = Σ_k A_{nblk-1-k} (nb·(nblk-1-k)·V0_k + V1_k):
//   ∂/∂lr = Σ_b Re(conj(G) U1),  ∂/∂θ = -Σ_b Im(conj(G) U1).
struct ReduceFn : torch::autograd::Function<ReduceFn> {
  // [B, D, L] -> [D, B·nblk, nb], zero-padded at the front (time innermost: unit-stride GEMM rows).
  static at::Tensor blocked(const at::Tensor& x, const Blocking& bl) {
    const int64_t B = x.size(0), D = x.size(1), L = x.size(2);
    return at::constant_pad_nd(x.transpose(0, 1), {bl.pad() - L, 0}).reshape({D, B * bl.nblk, bl.nb});
  }

  static variable_list forward(AutogradContext* ctx, at::Tensor x, at::Tensor lr, at::Tensor th,
                               int64_t block) {
    NoAutocast no_autocast;
    ctx->save_for_backward({x, lr, th});
    ctx->saved_data["block"] = block;
    const int64_t B = x.size(0), D = x.size(1), L = x.size(2), N = lr.size(1);
    if (L == 0) return {at::zeros({B, D, N}, x.options()), at::zeros({B, D, N}, x.options())};
    const Blocking bl = blocking(L, block);
    const at::Tensor v = at::bmm(blocked(x, bl), base_powers(lr, th, bl.nb, /*reversed=*/true).transpose(1, 2));
    const Pair u = block_factors(lr, th, bl, /*reversed=*/true) * split_pair(v.view({D, B, bl.nblk, 2 * N}), N);
    return {u.re.sum(2).transpose(0, 1).contiguous(), u.im.sum(2).transpose(0, 1).contiguous()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    NoAutocast no_autocast;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &lr = saved[1], &th = saved[2];
    const int64_t B = x.size(0), D = x.size(1), L = x.size(2), N = lr.size(1);
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_q = ctx->needs_input_grad(1) || ctx->needs_input_grad(2);
    variable_list out(4);
    if (L == 0) {
      if (need_x) out[0] = at::zeros_like(x);
      if (need_q) out[1] = at::zeros_like(lr), out[2] = at::zeros_like(th);
      return out;
    }
    if (!(need_x || need_q)) return out;
    const Blocking bl = blocking(L, ctx->saved_data["block"].toInt());
    const Pair G{grads[0].transpose(0, 1).unsqueeze(2), grads[1].transpose(0, 1).unsqueeze(2)};  // [D, B, 1, N]
    const Pair a = block_factors(lr, th, bl, /*reversed=*/true);
    const at::Tensor ef = exponents(bl.nb - 1, bl.nb, -1, lr.options());
    const at::Tensor wf = base_powers(lr, th, bl.nb, /*reversed=*/true);  // [D, 2N, nb], q^{nb-1-s}
    if (need_x) {
      const at::Tensor lhs = re_dot_lhs(conj(G) * a).view({D, B * bl.nblk, 2 * N});
      out[0] = at::bmm(lhs, wf).view({D, B, bl.pad()}).narrow(2, bl.pad() - L, L).transpose(0, 1).contiguous();
    }
    if (need_q) {
      const at::Tensor v = at::bmm(blocked(x, bl), at::cat({wf, wf * ef}, 1).transpose(1, 2))
                               .view({D, B, bl.nblk, 4 * N});
      const Pair v0 = split_pair(v.narrow(3, 0, 2 * N), N), v1 = split_pair(v.narrow(3, 2 * N, 2 * N), N);
      const at::Tensor kn = exponents(bl.nb * (bl.nblk - 1), bl.nblk, -bl.nb, lr.options()).view({1, 1, -1, 1});
      const Pair t = a * Pair{v0.re * kn + v1.re, v0.im * kn + v1.im};
      const at::Tensor u1r = t.re.sum(2), u1i = t.im.sum(2);  // [D, B, N]
      const at::Tensor gr = G.re.squeeze(2), gi = G.im.squeeze(2);
      out[1] = (gr * u1r + gi * u1i).sum(1);
      out[2] = (gi * u1r - gr * u1i).sum(1);
    }
    return out;
  }
};

void check_log_q(const at::Tensor& log_q, const char* who) {
  check(log_q.defined() && log_q.is_complex() && log_q.dim() == 2, who,
        ": log_q must be a complex [D, N] tensor, got ",
        log_q.defined() ? log_q.sizes() : at::IntArrayRef{}, " ",
        log_q.defined() ? c10::toString(log_q.scalar_type()) : "undefined");
}

int64_t next_power_of_two(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// cema_power_reduce on x already laid out as a contiguous [B, D, L].
at::Tensor reduce_bdl(const at::Tensor& xt, const at::Tensor& log_q, int64_t block) {
  const int64_t blk = resolve_block(block, xt.size(2), log_q.size(0), log_q.size(1));
  const auto u = ReduceFn::apply(xt, at::real(log_q), at::imag(log_q), blk);
  return at::complex(u[0], u[1]);
}

}  // namespace

at::Tensor cema_power_project(const at::Tensor& c, const at::Tensor& log_q, int64_t length,
                              int64_t block) {
  check_log_q(log_q, "cema_power_project");
  check(c.defined() && c.is_complex() && c.dim() == 3 && c.size(1) == log_q.size(0) &&
            c.size(2) == log_q.size(1),
        "cema_power_project: c must be complex [B, ", log_q.size(0), ", ", log_q.size(1), "], got ",
        c.defined() ? c.sizes() : at::IntArrayRef{});
  check(c.scalar_type() == log_q.scalar_type(), "cema_power_project: c (", c.scalar_type(),
        ") and log_q (", log_q.scalar_type(), ") must have the same dtype");
  check(length >= 0, "cema_power_project: length must be non-negative, got ", length);
  const int64_t blk = resolve_block(block, length, log_q.size(0), log_q.size(1));
  return ProjectFn::apply(at::real(c), at::imag(c), at::real(log_q), at::imag(log_q), length, blk)[0];
}

at::Tensor cema_power_reduce(const at::Tensor& x, const at::Tensor& log_q, int64_t block) {
  check_log_q(log_q, "cema_power_reduce");
  check(x.defined() && !x.is_complex() && x.dim() == 3 && x.size(2) == log_q.size(0),
        "cema_power_reduce: x must be real [B, L, ", log_q.size(0), "], got ",
        x.defined() ? x.sizes() : at::IntArrayRef{});
  check(c10::toComplexType(x.scalar_type()) == log_q.scalar_type(), "cema_power_reduce: x (",
        x.scalar_type(), ") does not match log_q (", log_q.scalar_type(), ")");
  return reduce_bdl(x.transpose(1, 2).contiguous(), log_q, block);
}

CEMAImpl::CEMAImpl(int64_t dim_, int64_t ndim_) : dim(dim_), ndim(ndim_) {
  check(dim_ >= 1, "CEMA: dim must be positive, got ", dim_);
  check(ndim_ >= 1, "CEMA: ndim (EMA channels per dimension) must be positive, got ", ndim_);
  alpha = register_parameter("alpha", torch::empty({dim_, ndim_, 1}));
  delta = register_parameter("delta", torch::empty({dim_, ndim_, 1}));
  theta = register_parameter("theta", torch::empty({dim_, 1, 1}));
  gamma = register_parameter("gamma", torch::empty({dim_, ndim_, 2}));
  omega = register_parameter("omega", torch::empty({dim_}));
  reset_parameters();
}

void CEMAImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  alpha.normal_(0.0, 0.2);
  delta.normal_(0.0, 0.2);
  // Base angles σ(theta_d) = f_{π(d)}, f_i = exp(-i ln D / D): log-uniform over [1/D, 1), each
  // dimension its own time scale (a spread of rotation speeds, like RoPE's frequencies).
  const at::Tensor perm = at::randperm(dim, at::TensorOptions().dtype(at::kLong));
  const double step = std::log(static_cast<double>(dim)) / static_cast<double>(dim);
  const at::Tensor f = at::exp(at::arange(1, dim + 1, at::kDouble) * -step)
                           .clamp_max(1.0 - 1e-6)
                           .index_select(0, perm);
  theta.copy_(at::log(f / (1.0 - f)).view({dim, 1, 1}));
  gamma.normal_(0.0, 1.0);
  gamma.select(2, 1).zero_();
  // Truncated normal by the inverse CDF, as torch.nn.init.trunc_normal_(std=0.25, a=-1, b=1).
  const double sd = 0.25, lo = -1.0, hi = 1.0;
  const auto cdf = [](double v) { return 0.5 * (1.0 + std::erf(v / std::sqrt(2.0))); };
  omega.uniform_(2 * cdf(lo / sd) - 1, 2 * cdf(hi / sd) - 1)
      .erfinv_()
      .mul_(sd * std::sqrt(2.0))
      .clamp_(lo, hi);
}

CEMACoefficients CEMAImpl::coefficients(at::ScalarType real_dtype) const {
  check(real_dtype == at::kFloat || real_dtype == at::kDouble,
        "CEMA: coefficients are computed in float32 or float64, not ", real_dtype);
  const at::Tensor a = at::sigmoid(alpha.to(real_dtype)).squeeze(-1);  // [D, N]
  const at::Tensor d = at::sigmoid(delta.to(real_dtype)).squeeze(-1);
  const at::Tensor base = at::sigmoid(theta.to(real_dtype)).view({dim, 1}) * (2 * kPi / ndim);
  const at::Tensor wavelets = at::arange(1, ndim + 1, alpha.options().dtype(real_dtype));
  // log|q| = log(1 - αδ) (log1p: exact for small αδ), arg q = n·σ(theta)·2π/N.
  const at::Tensor log_q = at::complex(at::log1p(-(a * d)), base * wavelets);
  const at::Tensor g = gamma.to(real_dtype) * (1.0 / std::sqrt(static_cast<double>(ndim)));
  return {a, log_q, at::complex(g.select(2, 0), g.select(2, 1))};
}

at::Tensor CEMAImpl::initial_state(int64_t batch, at::ScalarType real_dtype,
                                   const c10::Device& device) const {
  check(batch >= 0, "CEMA: batch must be non-negative, got ", batch);
  const at::ScalarType ct = real_dtype == at::kDouble ? at::kComplexDouble : at::kComplexFloat;
  return at::zeros({batch, dim, ndim}, at::TensorOptions().dtype(ct).device(device));
}

CEMAOutput CEMAImpl::forward(const at::Tensor& x, const at::Tensor& state,
                             const at::Tensor& padding_mask, std::optional<CEMAMode> eval_mode) {
  check(x.defined() && x.dim() == 3 && x.size(2) == dim, "CEMA: expected x [B, L, ", dim, "], got ",
        x.defined() ? x.sizes() : at::IntArrayRef{});
  check(at::isFloatingType(x.scalar_type()), "CEMA: x must be real floating point, got ",
        x.scalar_type());
  const int64_t B = x.size(0), L = x.size(1), N = ndim;
  const at::ScalarType rt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::ScalarType ct = c10::toComplexType(rt);
  NoAutocast no_autocast;

  at::Tensor h0;  // carried state h_{-1}, complex [B, D, N], or undefined for zeros
  if (state.defined()) {
    check(state.is_complex(), "CEMA: state must be a complex tensor [B, D, N], got ",
          state.scalar_type());
    check(state.dim() == 3 && state.size(0) == B && state.size(1) == dim && state.size(2) == N,
          "CEMA: state must be [", B, ", ", dim, ", ", N, "], got ", state.sizes());
    h0 = state.to(x.device(), ct);
  }
  at::Tensor xc = x.to(rt);
  if (padding_mask.defined()) {
    check(padding_mask.scalar_type() == at::kBool, "CEMA: padding_mask must be bool, got ",
          padding_mask.scalar_type());
    check(padding_mask.dim() == 2 && padding_mask.size(0) == B && padding_mask.size(1) == L,
          "CEMA: padding_mask must be [", B, ", ", L, "] (true = padding), got ",
          padding_mask.sizes());
    // where, not multiply: garbage (inf/nan) in padded steps must not leak.
    xc = at::where(padding_mask.to(x.device()).unsqueeze(-1), at::zeros({}, xc.options()), xc);
  }
  if (L == 0) {
    return {x.clone(), h0.defined() ? h0 : initial_state(B, rt, x.device())};
  }

  const CEMACoefficients co = coefficients(rt);
  const at::Tensor& p = co.p;
  const at::Tensor& log_q = co.log_q;
  const at::Tensor& eta = co.eta;
  at::Tensor y;  // Re Σ_n η h_t, [B, L, D]
  at::Tensor h;  // h_{L-1}

  switch (eval_mode.value_or(mode)) {
    case CEMAMode::FFT: {
      // One projection gives the kernel k_d[j] = Re Σ_n (η p) q^j (row 0) and, with a carried state,
      // the bias b[t] = Re Σ_n η q^{t+1} h_{-1} = Re Σ_n (η q h_{-1}) q^t (rows 1..B).
      at::Tensor c = (eta * p).unsqueeze(0);
      if (h0.defined()) c = at::cat({c, eta * at::exp(log_q) * h0}, 0);
      const at::Tensor proj = cema_power_project(c, log_q, L, power_block);  // [1 (+B), D, L]
      // y = k * x, linear (not circular) because both are zero-padded to 2·n_fft >= 2L.
      const int64_t n2 = 2 * next_power_of_two(L);
      const at::Tensor xt = xc.transpose(1, 2).contiguous();  // [B, D, L], time innermost
      at::Tensor yt = at::fft_irfft(at::fft_rfft(xt, n2, -1) * at::fft_rfft(proj[0], n2, -1), n2, -1)
                          .narrow(-1, 0, L);
      // h_{L-1} = q^L h_{-1} + p Σ_j q^{L-1-j} x_j.
      h = p * reduce_bdl(xt, log_q, power_block);
      if (h0.defined()) {
        yt = yt + proj.narrow(0, 1, B);
        h = h + at::exp(log_q * static_cast<double>(L)) * h0;
      }
      y = yt.transpose(1, 2);
      break;
    }
    case CEMAMode::ChunkedScan: {
      // Segments of S steps (the last one zero-padded to S). Three batched GEMMs cover all segments
      // at once: the in-segment convolution (Toeplitz), the inputs' contribution to each segment's
      // final state, and the carried states' echo (bias). Only the carry h_s -> h_{s+1} is a loop,
      // over L/S segments of [B, D, N] elementwise work. Plain ATen autograd; memory D·S² for the
      // Toeplitz matrix.
      check(scan_chunk >= 1, "CEMA: scan_chunk must be positive, got ", scan_chunk);
      const int64_t S = std::min(scan_chunk, L);
      const int64_t nseg = (L + S - 1) / S, last = L - (nseg - 1) * S;
      // q^0..q^{S-1} ([D, 2N, S]: real rows then imaginary rows), k[:S], and T[d, t, s] = k_d[t - s]
      // for t >= s (stored transposed, [D, s, t], for the right-hand side of the bmm).
      const at::Tensor w = base_powers(at::real(log_q), at::imag(log_q), S);
      const at::Tensor ck = eta * p;
      const at::Tensor k =
          at::bmm(at::cat({at::real(ck), at::imag(ck).neg()}, 1).unsqueeze(1), w).squeeze(1);  // [D, S]
      const at::Tensor ts = at::arange(S, at::TensorOptions().dtype(at::kLong).device(x.device()));
      const at::Tensor lag = ts.unsqueeze(1) - ts.unsqueeze(0);  // t - s
      const at::Tensor toeplitz_t =
          at::where((lag >= 0).unsqueeze(0), k.index_select(1, lag.clamp_min(0).flatten()).view({dim, S, S}),
                    at::zeros({}, k.options()))
              .transpose(1, 2);
      const at::Tensor xd = xc.permute({2, 0, 1}).contiguous();  // [D, B, L] (unit stride in t)
      const at::Tensor segs = at::constant_pad_nd(xd, {0, nseg * S - L}).view({dim, B * nseg, S});
      const at::Tensor conv = at::bmm(segs, toeplitz_t);  // [D, B·nseg, S]
      // u_s = Σ_j q^{S-1-j} x_{s,j} for the full segments; the last uses its own length.
      const at::Tensor wrev_t = w.flip(2).transpose(1, 2);  // [D, S, 2N]
      const at::Tensor uc = at::bmm(segs, wrev_t).view({dim, B, nseg, 2 * N}).permute({1, 0, 2, 3});
      const at::Tensor u = at::complex(uc.narrow(3, 0, N), uc.narrow(3, N, N));  // [B, D, nseg, N]
      const at::Tensor ul = at::bmm(xd.narrow(2, (nseg - 1) * S, last), wrev_t.narrow(1, S - last, last))
                                .transpose(0, 1);  // [B, D, 2N]
      // Carry: h_{s+1} = q^S h_s + p u_s; h_in[s] is the state entering segment s.
      const at::Tensor qS = at::exp(log_q * static_cast<double>(S));
      std::vector<at::Tensor> h_in{h0.defined() ? h0 : initial_state(B, rt, x.device())};
      for (int64_t s = 0; s + 1 < nseg; ++s) h_in.push_back(qS * h_in.back() + p * u.select(2, s));
      h = at::exp(log_q * static_cast<double>(last)) * h_in.back() +
          p * at::complex(ul.narrow(2, 0, N), ul.narrow(2, N, N));
      // Bias: Re Σ_n (η q h_in[s]) q^t for t < S, all segments in one bmm.
      const at::Tensor c = ((eta * at::exp(log_q)).unsqueeze(1) * at::stack(h_in, 2))  // [B, D, nseg, N]
                               .permute({1, 0, 2, 3})
                               .reshape({dim, B * nseg, N});
      const at::Tensor bias = at::bmm(at::cat({at::real(c), at::imag(c).neg()}, 2), w);
      y = (conv + bias).view({dim, B, nseg * S}).narrow(2, 0, L).permute({1, 2, 0});
      break;
    }
    case CEMAMode::Sequential: {
      const at::Tensor q = at::exp(log_q);
      h = h0.defined() ? h0 : initial_state(B, rt, x.device());
      std::vector<at::Tensor> steps;
      steps.reserve(static_cast<size_t>(L));
      for (int64_t t = 0; t < L; ++t) {
        h = p * xc.select(1, t).unsqueeze(-1) + q * h;
        steps.push_back(at::real(eta * h).sum(-1));
      }
      y = at::stack(steps, 1);
      break;
    }
  }
  y = y + xc * omega.to(rt);
  return {y.to(x.scalar_type()), h};
}

CEMAOutput CEMAImpl::step(const at::Tensor& x_t, const at::Tensor& state) {
  check(x_t.defined() && x_t.dim() == 2 && x_t.size(1) == dim, "CEMA::step: expected x_t [B, ", dim,
        "], got ", x_t.defined() ? x_t.sizes() : at::IntArrayRef{});
  CEMAOutput out = forward(x_t.unsqueeze(1), state, {}, CEMAMode::Sequential);
  out.y = out.y.squeeze(1);
  return out;
}

}  // namespace tessera::nn
