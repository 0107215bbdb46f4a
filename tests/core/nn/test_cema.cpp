#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdio>
#include <functional>
#include <vector>

#include "core/error.h"
#include "core/nn/cema.h"
#include "core/train/autocast.h"
#include "nn_test_util.h"

namespace tessera::nn {
namespace {

using testing::f64;
using testing::max_abs_diff;
using cd = std::complex<double>;

const at::TensorOptions kF64 = at::TensorOptions().dtype(at::kDouble);
const at::TensorOptions kC128 = at::TensorOptions().dtype(at::kComplexDouble);
constexpr double kPi = 3.14159265358979323846;

struct Ref {
  at::Tensor y;      // [B, L, D] float64
  at::Tensor state;  // [B, D, N] complex128
};

// The recurrence itself, one scalar channel at a time with std::complex<double>, from the raw
// parameters (no tensor code shared with the module):
//   p = σ(alpha), q = (1 - σ(alpha)σ(delta)) e^{iθ}, θ_n = n σ(theta) 2π/N, η = (g0 + i g1)/√N,
//   h_t = p x_t + q h_{t-1},  y_t = Re Σ_n η_n h_{t,n} + ω x_t.
// h0: complex [B, D, N] or undefined (zeros); mask [B, L] bool (true = padding = zero input).
Ref ref_cema(const CEMA& m, const at::Tensor& x, const at::Tensor& h0 = {}, const at::Tensor& mask = {}) {
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), N = m->ndim;
  const at::Tensor xd = f64(x), al = f64(m->alpha), de = f64(m->delta), th = f64(m->theta),
                   ga = f64(m->gamma), om = f64(m->omega);
  const at::Tensor h0d = h0.defined() ? h0.detach().to(at::kComplexDouble).contiguous()
                                      : at::zeros({B, D, N}, kC128);
  const at::Tensor md = mask.defined() ? mask.contiguous() : at::zeros({B, L}, at::kBool);
  auto xa = xd.accessor<double, 3>();
  auto aa = al.accessor<double, 3>();
  auto da = de.accessor<double, 3>();
  auto ta = th.accessor<double, 3>();
  auto ga_ = ga.accessor<double, 3>();
  auto oa = om.accessor<double, 1>();
  auto ma = md.accessor<bool, 2>();
  const auto* h0p = reinterpret_cast<const cd*>(h0d.data_ptr());
  const auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  Ref r{at::zeros({B, L, D}, kF64), at::zeros({B, D, N}, kC128)};
  auto ya = r.y.accessor<double, 3>();
  auto* hs = reinterpret_cast<cd*>(r.state.data_ptr());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t n = 0; n < N; ++n) {
        const double p = sig(aa[d][n][0]);
        const double angle = static_cast<double>(n + 1) * sig(ta[d][0][0]) * 2 * kPi / N;
        const cd q = (1 - sig(aa[d][n][0]) * sig(da[d][n][0])) * cd(std::cos(angle), std::sin(angle));
        const cd eta = cd(ga_[d][n][0], ga_[d][n][1]) / std::sqrt(static_cast<double>(N));
        cd h = h0p[(b * D + d) * N + n];
        for (int64_t t = 0; t < L; ++t) {
          const double xv = ma[b][t] ? 0.0 : xa[b][t][d];
          h = p * xv + q * h;
          ya[b][t][d] += (eta * h).real();
        }
        hs[(b * D + d) * N + n] = h;
      }
      for (int64_t t = 0; t < L; ++t) ya[b][t][d] += oa[d] * (ma[b][t] ? 0.0 : xa[b][t][d]);
    }
  return r;
}

// A float64 module with non-trivial random parameters: decays |q| spread over (0, 1) (some close to
// 1, so the state matters over the whole test lengths), random base angles, complex η (g1 != 0).
CEMA make_cema(int64_t D, int64_t N, uint64_t seed) {
  torch::manual_seed(seed);
  CEMA m(D, N);
  m->to(at::kDouble);
  torch::NoGradGuard no_grad;
  m->alpha.copy_(torch::randn({D, N, 1}, kF64) * 0.8);
  m->delta.copy_(torch::randn({D, N, 1}, kF64) * 0.8 - 1.0);
  m->theta.copy_(torch::randn({D, 1, 1}, kF64) * 1.5);
  m->gamma.copy_(torch::randn({D, N, 2}, kF64));
  m->omega.copy_(torch::randn({D}, kF64) * 0.5);
  return m;
}

at::Tensor random_state(int64_t B, int64_t D, int64_t N) {
  return at::complex(torch::randn({B, D, N}, kF64), torch::randn({B, D, N}, kF64));
}

// Relative max error: max |a - b| / (1 + max |b|).
double rel_err(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  const at::Tensor ad = a.detach().to(at::kComplexDouble), bd = b.detach().to(at::kComplexDouble);
  return (ad - bd).abs().max().item<double>() / (1.0 + bd.abs().max().item<double>());
}

const char* mode_name(CEMAMode mode) {
  switch (mode) {
    case CEMAMode::FFT: return "FFT";
    case CEMAMode::ChunkedScan: return "ChunkedScan";
    case CEMAMode::Sequential: return "Sequential";
  }
  return "?";
}

const CEMAMode kModes[] = {CEMAMode::FFT, CEMAMode::ChunkedScan, CEMAMode::Sequential};

// Central differences of loss() w.r.t. every real scalar of every leaf (complex leaves: the real
// and imaginary parts separately; autograd's complex gradient is ∂/∂re + i ∂/∂im), against
// loss().backward(). Returns the largest relative difference.
double gradient_fd_error(const std::function<at::Tensor()>& loss, const std::vector<at::Tensor>& leaves,
                         double h = 1e-6) {
  for (auto leaf : leaves) leaf.mutable_grad() = at::Tensor();
  loss().backward();
  double worst = 0;
  for (size_t k = 0; k < leaves.size(); ++k) {
    const at::Tensor leaf = leaves[k];
    const at::Tensor g = leaf.grad();
    EXPECT_TRUE(g.defined()) << "leaf " << k;
    if (!g.defined()) continue;
    const at::Tensor values = leaf.is_complex() ? at::view_as_real(leaf.detach()) : leaf.detach();
    const at::Tensor grads = leaf.is_complex() ? at::view_as_real(g) : g;
    const at::Tensor flat = values.view({-1});
    const at::Tensor gflat = grads.contiguous().view({-1});
    for (int64_t i = 0; i < flat.numel(); ++i) {
      double lp, lm;
      {
        torch::NoGradGuard no_grad;
        const double v0 = flat[i].item<double>();
        flat[i] = v0 + h;
        lp = loss().item<double>();
        flat[i] = v0 - h;
        lm = loss().item<double>();
        flat[i] = v0;
      }
      const double fd = (lp - lm) / (2 * h);
      const double an = gflat[i].item<double>();
      const double err = std::abs(an - fd) / (1 + std::abs(fd));
      EXPECT_LT(err, 1e-6) << "leaf " << k << " element " << i << ": autograd " << an << " fd " << fd;
      worst = std::max(worst, err);
    }
  }
  return worst;
}

TEST(CEMA, RegistersOfficialParameterNamesAndShapes) {
  CEMA m(6, 4);
  const auto params = m->named_parameters();
  ASSERT_EQ(params.size(), 5u);
  EXPECT_EQ(params["alpha"].sizes(), (at::IntArrayRef{6, 4, 1}));
  EXPECT_EQ(params["delta"].sizes(), (at::IntArrayRef{6, 4, 1}));
  EXPECT_EQ(params["theta"].sizes(), (at::IntArrayRef{6, 1, 1}));
  EXPECT_EQ(params["gamma"].sizes(), (at::IntArrayRef{6, 4, 2}));
  EXPECT_EQ(params["omega"].sizes(), (at::IntArrayRef{6}));
  EXPECT_EQ(params["alpha"].scalar_type(), at::kFloat);
  EXPECT_EQ(m->mode, CEMAMode::FFT);
  EXPECT_EQ(m->scan_chunk, 256);
  CEMA one(1, 1);  // D = 1: f_1 = 1 would give theta = +inf; it is clamped
  EXPECT_TRUE(one->theta.isfinite().all().item<bool>());
}

TEST(CEMA, InitialisationFollowsOfficialCode) {
  torch::manual_seed(11);
  const int64_t D = 512, N = 16;
  CEMA m(D, N);
  // alpha, delta ~ N(0, 0.2²) (8192 draws each: the std is within ±0.01 with overwhelming odds).
  for (const at::Tensor& t : {m->alpha, m->delta}) {
    EXPECT_NEAR(t.mean().item<double>(), 0.0, 0.01);
    EXPECT_NEAR(t.std().item<double>(), 0.2, 0.01);
  }
  // σ(theta) is a permutation of f_i = exp(-i ln D / D), i = 1..D: all in [1/D, 1), not in order.
  const at::Tensor base = torch::sigmoid(f64(m->theta).view({D}));
  const at::Tensor f = torch::exp(torch::arange(1, D + 1, kF64) * (-std::log(double(D)) / D));
  EXPECT_LT(max_abs_diff(std::get<0>(base.sort()), std::get<0>(f.sort())), 1e-6);
  EXPECT_GE(base.min().item<double>(), 1.0 / D - 1e-7);
  EXPECT_LT(base.max().item<double>(), 1.0);
  EXPECT_FALSE(base.allclose(f));
  EXPECT_FALSE(base.allclose(f.flip(0)));
  // gamma: real part N(0, 1), imaginary part exactly 0 (η starts real).
  EXPECT_TRUE(m->gamma.select(2, 1).eq(0).all().item<bool>());
  EXPECT_NEAR(m->gamma.select(2, 0).std().item<double>(), 1.0, 0.04);
  EXPECT_NEAR(m->gamma.select(2, 0).mean().item<double>(), 0.0, 0.04);
  // omega: truncated N(0, 0.25²) on [-1, 1] (the truncation at ±4σ barely changes the std).
  EXPECT_LE(m->omega.abs().max().item<double>(), 1.0);
  EXPECT_NEAR(m->omega.std().item<double>(), 0.25, 0.03);
  // Reproducible from the seed; reset_parameters redraws.
  torch::manual_seed(11);
  CEMA again(D, N);
  EXPECT_TRUE(again->theta.equal(m->theta));
  EXPECT_TRUE(again->omega.equal(m->omega));
  again->reset_parameters();
  EXPECT_FALSE(again->alpha.equal(m->alpha));
}

// Notes §7 acceptance test 3: N = 1, p = 0.5, q = 0.75 (θ = 0), η = 1, ω = 0, unit impulse ->
// y_t = 0.5 · 0.75^t.
TEST(CEMA, ImpulseResponseClosedForm) {
  CEMA m(1, 1);
  m->to(at::kDouble);
  {
    torch::NoGradGuard no_grad;
    m->alpha.fill_(0.0);      // p = σ(0) = 0.5
    m->delta.fill_(0.0);      // |q| = 1 - 0.25
    m->theta.fill_(-1000.0);  // σ = 0 in float64: θ = 0
    m->gamma.select(2, 0).fill_(1.0);
    m->gamma.select(2, 1).fill_(0.0);
    m->omega.fill_(0.0);
  }
  const int64_t L = 40;
  at::Tensor x = at::zeros({1, L, 1}, kF64);
  x[0][0][0] = 1.0;
  const at::Tensor expect = 0.5 * torch::pow(0.75, torch::arange(L, kF64)).view({1, L, 1});
  m->scan_chunk = 16;
  for (CEMAMode mode : kModes) {
    const auto out = m->forward(x, {}, {}, mode);
    EXPECT_LT(max_abs_diff(out.y, expect), 1e-14) << mode_name(mode);
  }
}

// The three modes against the scalar recurrence: lengths that are and are not powers of two,
// with and without a carried state, several power blocks and scan segments (the last one partial).
TEST(CEMA, AllModesMatchRecurrenceReference) {
  const int64_t B = 2, D = 3, N = 4;
  CEMA m = make_cema(D, N, 21);
  double worst_y[3] = {0, 0, 0}, worst_h[3] = {0, 0, 0};
  for (const int64_t L : {1, 7, 16, 37, 64, 100}) {
    for (const bool with_state : {false, true}) {
      const at::Tensor x = torch::randn({B, L, D}, kF64);
      const at::Tensor h0 = with_state ? random_state(B, D, N) : at::Tensor();
      const Ref ref = ref_cema(m, x, h0);
      for (const int64_t block : {0, 5}) {
        m->power_block = block;
        m->scan_chunk = block == 0 ? 256 : 16;
        for (int i = 0; i < 3; ++i) {
          const auto out = m->forward(x, h0, {}, kModes[i]);
          ASSERT_EQ(out.y.scalar_type(), at::kDouble);
          ASSERT_EQ(out.state.scalar_type(), at::kComplexDouble);
          ASSERT_EQ(out.state.sizes(), (at::IntArrayRef{B, D, N}));
          const double ey = rel_err(out.y, ref.y), eh = rel_err(out.state, ref.state);
          EXPECT_LT(ey, 1e-10) << mode_name(kModes[i]) << " L=" << L << " state=" << with_state;
          EXPECT_LT(eh, 1e-10) << mode_name(kModes[i]) << " L=" << L << " state=" << with_state;
          worst_y[i] = std::max(worst_y[i], ey);
          worst_h[i] = std::max(worst_h[i], eh);
        }
      }
    }
  }
  for (int i = 0; i < 3; ++i)
    std::printf("[CEMA] %s vs recurrence: max rel error y %.2e, state %.2e\n", mode_name(kModes[i]),
                worst_y[i], worst_h[i]);
  m->mode = CEMAMode::FFT;  // the member selects the default mode
  const at::Tensor x = torch::randn({B, 9, D}, kF64);
  EXPECT_LT(rel_err(m(x).y, ref_cema(m, x).y), 1e-10);
}

// Notes §7 acceptance test 1 at the longer lengths (one row, few channels so the reference is fast).
TEST(CEMA, LongSequencesMatchRecurrence) {
  CEMA m = make_cema(2, 3, 22);
  {
    torch::NoGradGuard no_grad;  // slow decays (|q| ≈ 0.99) so that the whole length matters
    m->alpha.fill_(-4.0);
    m->delta.fill_(-0.5);
  }
  for (const int64_t L : {1000, 4097}) {
    const at::Tensor x = torch::randn({1, L, 2}, kF64);
    const at::Tensor h0 = random_state(1, 2, 3);
    const Ref ref = ref_cema(m, x, h0);
    for (const CEMAMode mode : {CEMAMode::FFT, CEMAMode::ChunkedScan}) {
      const auto out = m->forward(x, h0, {}, mode);
      const double ey = rel_err(out.y, ref.y), eh = rel_err(out.state, ref.state);
      std::printf("[CEMA] L=%lld %s: max rel error y %.2e, state %.2e\n", static_cast<long long>(L),
                  mode_name(mode), ey, eh);
      EXPECT_LT(ey, 1e-10) << mode_name(mode) << " L=" << L;
      EXPECT_LT(eh, 1e-10) << mode_name(mode) << " L=" << L;
    }
  }
}

TEST(CEMA, ChunkedWithCarriedStateEqualsWholeSequence) {
  const int64_t B = 2, D = 3, N = 4, L = 37;
  CEMA m = make_cema(D, N, 23);
  m->scan_chunk = 8;
  const at::Tensor x = torch::randn({B, L, D}, kF64);
  const at::Tensor h0 = random_state(B, D, N);
  for (CEMAMode mode : kModes) {
    const auto whole = m->forward(x, h0, {}, mode);
    at::Tensor st = h0;
    std::vector<at::Tensor> ys;
    int64_t start = 0;
    for (const int64_t len : {3, 1, 12, 21}) {
      const auto out = m->forward(x.narrow(1, start, len), st, {}, mode);
      ys.push_back(out.y);
      st = out.state;
      start += len;
    }
    EXPECT_LT(rel_err(at::cat(ys, 1), whole.y), 1e-12) << mode_name(mode);
    EXPECT_LT(rel_err(st, whole.state), 1e-12) << mode_name(mode);
  }
  // Mixing modes across chunks is fine too (FFT for the prompt, Sequential afterwards).
  const auto first = m->forward(x.narrow(1, 0, 20), h0, {}, CEMAMode::FFT);
  const auto rest = m->forward(x.narrow(1, 20, L - 20), first.state, {}, CEMAMode::Sequential);
  EXPECT_LT(rel_err(rest.y, ref_cema(m, x, h0).y.narrow(1, 20, L - 20)), 1e-12);
}

TEST(CEMA, StepByStepEqualsForward) {
  const int64_t B = 2, D = 3, N = 4, L = 10;
  CEMA m = make_cema(D, N, 24);
  const at::Tensor x = torch::randn({B, L, D}, kF64);
  const auto full = m->forward(x);  // FFT
  at::Tensor st;                     // undefined: zeros
  for (int64_t t = 0; t < L; ++t) {
    const auto out = m->step(x.select(1, t), st);
    ASSERT_EQ(out.y.sizes(), (at::IntArrayRef{B, D}));
    EXPECT_LT(rel_err(out.y, full.y.select(1, t)), 1e-12) << t;
    st = out.state;
  }
  EXPECT_LT(rel_err(st, full.state), 1e-12);
  // One step is forward on a length-1 sequence, in every mode.
  const at::Tensor h0 = random_state(B, D, N);
  const auto one = m->step(x.select(1, 0), h0);
  for (CEMAMode mode : kModes) {
    const auto out = m->forward(x.narrow(1, 0, 1), h0, {}, mode);
    EXPECT_LT(rel_err(one.y, out.y.squeeze(1)), 1e-12) << mode_name(mode);
    EXPECT_LT(rel_err(one.state, out.state), 1e-12) << mode_name(mode);
  }
}

TEST(CEMA, IsCausal) {
  const int64_t B = 2, D = 3, N = 4, L = 23;
  CEMA m = make_cema(D, N, 25);
  m->scan_chunk = 8;
  const at::Tensor x = torch::randn({B, L, D}, kF64);
  const at::Tensor h0 = random_state(B, D, N);
  for (CEMAMode mode : kModes) {
    const at::Tensor y = m->forward(x, h0, {}, mode).y;
    for (const int64_t t : {0, 5, 8, 22}) {
      at::Tensor x2 = x.clone();
      x2.select(1, t).add_(torch::randn({B, D}, kF64) * 3);
      const at::Tensor y2 = m->forward(x2, h0, {}, mode).y;
      if (t > 0) {
        EXPECT_LT(max_abs_diff(y2.narrow(1, 0, t), y.narrow(1, 0, t)), 1e-13) << mode_name(mode) << t;
      }
      EXPECT_GT(max_abs_diff(y2.narrow(1, t, 1), y.narrow(1, t, 1)), 1e-3) << mode_name(mode) << t;
    }
  }
}

// Padding = zero input (garbage in padded steps is ignored); the state keeps evolving through
// padded steps (decaying by q), so left padding from a zero state is invisible and right padding
// decays the final state by q^{#pad}.
TEST(CEMA, PaddedStepsAreZeroInput) {
  const int64_t B = 3, D = 3, N = 4, L = 12;
  CEMA m = make_cema(D, N, 26);
  m->scan_chunk = 5;
  at::Tensor x = torch::randn({B, L, D}, kF64);
  at::Tensor mask = at::zeros({B, L}, at::kBool);
  mask.narrow(1, 0, 4)[0].fill_(true);  // row 0: left padding (4 steps)
  mask.narrow(1, 9, 3)[1].fill_(true);  // row 1: right padding (3 steps)
  mask[2][5] = true;                    // row 2: one step in the middle
  x[0][1].fill_(NAN);
  x[1][10].fill_(1e30);
  x[2][5].fill_(INFINITY);
  const at::Tensor zeroed = at::where(mask.unsqueeze(-1), at::zeros({}, kF64), x);
  const Ref ref = ref_cema(m, x, {}, mask);
  for (CEMAMode mode : kModes) {
    const auto out = m->forward(x, {}, mask, mode);
    EXPECT_LT(rel_err(out.y, ref.y), 1e-10) << mode_name(mode);
    EXPECT_LT(rel_err(out.state, ref.state), 1e-10) << mode_name(mode);
    const auto plain = m->forward(zeroed, {}, {}, mode);
    EXPECT_LT(rel_err(out.y, plain.y), 1e-14) << mode_name(mode);
    // Left padding: y = 0 on the padded steps, and the rest equals the unpadded row.
    EXPECT_LT(out.y[0].narrow(0, 0, 4).abs().max().item<double>(), 1e-14) << mode_name(mode);
    const auto compact0 = m->forward(x[0].narrow(0, 4, L - 4).unsqueeze(0), {}, {}, mode);
    EXPECT_LT(rel_err(out.y[0].narrow(0, 4, L - 4), compact0.y[0]), 1e-12) << mode_name(mode);
    EXPECT_LT(rel_err(out.state[0], compact0.state[0]), 1e-12) << mode_name(mode);
    // Right padding: the final state is the unpadded row's, decayed by q^3.
    const auto compact1 = m->forward(x[1].narrow(0, 0, 9).unsqueeze(0), {}, {}, mode);
    const at::Tensor q3 = at::exp(m->coefficients(at::kDouble).log_q * 3.0);
    EXPECT_LT(rel_err(out.state[1], q3 * compact1.state[0]), 1e-12) << mode_name(mode);
  }
}

// The two custom autograd functions on their own: central differences in float64 w.r.t. the
// complex coefficients c, log q and the input x, with blocks smaller than the length.
TEST(CEMA, PowerPrimitivesGradcheck) {
  torch::manual_seed(27);
  const int64_t B = 2, D = 2, N = 3, L = 7;
  const at::Tensor log_q =
      at::complex(torch::log(torch::rand({D, N}, kF64) * 0.6 + 0.3), torch::rand({D, N}, kF64) * 3)
          .requires_grad_();
  const at::Tensor c = random_state(B, D, N).requires_grad_();
  const at::Tensor x = torch::randn({B, L, D}, kF64).requires_grad_();
  const at::Tensor r1 = torch::randn({B, D, L}, kF64);
  const at::Tensor r2 = random_state(B, D, N);
  // Forward values against the direct definition first.
  {
    const at::Tensor q = at::exp(log_q.detach());
    const at::Tensor t = torch::arange(L, kF64);
    const at::Tensor w = at::exp(log_q.detach().unsqueeze(-1) * t);  // [D, N, L] q^t
    const at::Tensor proj = at::real(c.detach().unsqueeze(-1) * w).sum(2);
    EXPECT_LT(max_abs_diff(cema_power_project(c.detach(), log_q.detach(), L, 3), proj), 1e-13);
    const at::Tensor red = (x.detach().permute({0, 2, 1}).unsqueeze(2) * w.flip(-1)).sum(-1);
    EXPECT_LT(rel_err(cema_power_reduce(x.detach(), log_q.detach(), 3), red), 1e-13);
    (void)q;
  }
  const double e1 = gradient_fd_error(
      [&] { return (cema_power_project(c, log_q, L, 3) * r1).sum(); }, {c, log_q});
  const double e2 = gradient_fd_error(
      [&] { return at::real(cema_power_reduce(x, log_q, 3) * r2).sum(); }, {x, log_q});
  std::printf("[CEMA] gradcheck primitives vs finite differences: project %.2e, reduce %.2e\n", e1, e2);

  // Tighter: the same gradients by autograd through the direct complex formulas (q^t = exp(t log q)
  // materialised), at several block sizes (1, not dividing L, equal to L, larger than L).
  const auto grads_of = [&](const std::function<at::Tensor()>& loss, const std::vector<at::Tensor>& leaves) {
    for (auto leaf : leaves) leaf.mutable_grad() = at::Tensor();
    loss().backward();
    std::vector<at::Tensor> g;
    for (const auto& leaf : leaves) g.push_back(leaf.grad().clone());
    return g;
  };
  const auto direct_w = [&] { return at::exp(log_q.unsqueeze(-1) * torch::arange(L, kF64)); };  // [D, N, L]
  const auto ref_p = grads_of([&] { return (at::real(c.unsqueeze(-1) * direct_w()).sum(2) * r1).sum(); }, {c, log_q});
  const auto ref_r = grads_of(
      [&] { return at::real((x.permute({0, 2, 1}).unsqueeze(2) * direct_w().flip(-1)).sum(-1) * r2).sum(); },
      {x, log_q});
  double worst = 0;
  for (const int64_t block : {1, 3, 7, 64}) {
    const auto gp = grads_of([&] { return (cema_power_project(c, log_q, L, block) * r1).sum(); }, {c, log_q});
    const auto gr = grads_of([&] { return at::real(cema_power_reduce(x, log_q, block) * r2).sum(); }, {x, log_q});
    for (size_t i = 0; i < 2; ++i) {
      worst = std::max({worst, rel_err(gp[i], ref_p[i]), rel_err(gr[i], ref_r[i])});
      EXPECT_LT(rel_err(gp[i], ref_p[i]), 1e-12) << "project block " << block << " grad " << i;
      EXPECT_LT(rel_err(gr[i], ref_r[i]), 1e-12) << "reduce block " << block << " grad " << i;
    }
  }
  std::printf("[CEMA] primitives' gradients vs autograd through direct formulas: max rel error %.2e\n", worst);
}

// The block size of the powers only regroups the same sums.
TEST(CEMA, PowerBlockSizeDoesNotChangeResults) {
  const int64_t B = 2, D = 3, N = 4, L = 37;
  CEMA m = make_cema(D, N, 33);
  const at::Tensor x = torch::randn({B, L, D}, kF64);
  const at::Tensor h0 = random_state(B, D, N);
  const auto base = m->forward(x, h0);
  for (const int64_t block : {1, 2, 5, 36, 37, 38, 1000}) {
    m->power_block = block;
    const auto out = m->forward(x, h0);
    EXPECT_LT(rel_err(out.y, base.y), 1e-13) << block;
    EXPECT_LT(rel_err(out.state, base.state), 1e-13) << block;
  }
}

// Channels that decay fast: powers below e^-300 (float64) are flushed to 0, far below rounding.
TEST(CEMA, FastDecayingChannelsStayExact) {
  CEMA m = make_cema(2, 4, 34);
  {
    torch::NoGradGuard no_grad;
    m->alpha.select(1, 0).fill_(6.0);  // σ ≈ 0.9975: |q| ≈ 0.005 for channel 0 (e^-300 after ~57 steps)
    m->delta.select(1, 0).fill_(6.0);
  }
  const at::Tensor x = torch::randn({1, 600, 2}, kF64);
  const at::Tensor h0 = random_state(1, 2, 4);
  const Ref ref = ref_cema(m, x, h0);
  for (CEMAMode mode : {CEMAMode::FFT, CEMAMode::ChunkedScan}) {
    const auto out = m->forward(x, h0, {}, mode);
    EXPECT_TRUE(out.y.isfinite().all().item<bool>());
    EXPECT_LT(rel_err(out.y, ref.y), 1e-12) << mode_name(mode);
    EXPECT_LT(rel_err(out.state, ref.state), 1e-12) << mode_name(mode);
  }
}

// float32 at the default initialisation (the training setting) over a long sequence with slow
// channels: within float32 rounding of the float64 recurrence.
TEST(CEMA, Float32LongSequenceAccuracy) {
  torch::manual_seed(35);
  const int64_t D = 4, N = 16, L = 4096;
  CEMA m(D, N);
  {
    torch::NoGradGuard no_grad;  // half the channels slow (|q| ≈ 0.998), half at init (≈ 0.75)
    m->alpha.narrow(1, 0, 8).fill_(-3.0);
    m->delta.narrow(1, 0, 8).fill_(-2.0);
  }
  const at::Tensor x = torch::randn({1, L, D});
  const at::Tensor h0 = at::complex(torch::randn({1, D, N}), torch::randn({1, D, N}));
  const Ref ref = ref_cema(m, x, h0);
  for (CEMAMode mode : kModes) {
    const auto out = m->forward(x, h0, {}, mode);
    ASSERT_EQ(out.y.scalar_type(), at::kFloat);
    const double ey = rel_err(out.y, ref.y), eh = rel_err(out.state, ref.state);
    std::printf("[CEMA] float32 L=%lld %s vs float64 recurrence: max rel error y %.2e, state %.2e\n",
                static_cast<long long>(L), mode_name(mode), ey, eh);
    EXPECT_LT(ey, 2e-5) << mode_name(mode);
    EXPECT_LT(eh, 2e-5) << mode_name(mode);
  }
}

// The FFT path (custom functions + FFT + autograd on the small coefficients) w.r.t. every
// parameter, x and the complex initial state, batch > 1 (the case the official 2025 fix touched),
// with power blocks smaller than the length; loss touches both y and the final state.
TEST(CEMA, FFTGradientsMatchFiniteDifferences) {
  const int64_t B = 2, D = 2, N = 2, L = 6;
  CEMA m = make_cema(D, N, 28);
  m->power_block = 4;
  const at::Tensor x = torch::randn({B, L, D}, kF64).requires_grad_();
  const at::Tensor h0 = random_state(B, D, N).requires_grad_();
  const at::Tensor ry = torch::randn({B, L, D}, kF64);
  const at::Tensor rh = random_state(B, D, N);
  const auto loss = [&] {
    const auto out = m->forward(x, h0, {}, CEMAMode::FFT);
    return (out.y * ry).sum() + at::real(out.state * rh).sum();
  };
  const double err =
      gradient_fd_error(loss, {m->alpha, m->delta, m->theta, m->gamma, m->omega, x, h0});
  std::printf("[CEMA] gradcheck FFT path: max rel error %.2e\n", err);
}

// Autograd through the FFT path and the chunked scan equals autograd through the plain recurrence.
TEST(CEMA, GradientsAgreeAcrossModes) {
  const int64_t B = 2, D = 3, N = 4, L = 37;
  CEMA m = make_cema(D, N, 29);
  m->power_block = 10;
  m->scan_chunk = 16;
  const at::Tensor x0 = torch::randn({B, L, D}, kF64);
  const at::Tensor h00 = random_state(B, D, N);
  const at::Tensor ry = torch::randn({B, L, D}, kF64);
  const at::Tensor rh = random_state(B, D, N);
  std::vector<std::vector<at::Tensor>> grads;
  for (CEMAMode mode : kModes) {
    const at::Tensor x = x0.clone().requires_grad_();
    const at::Tensor h0 = h00.clone().requires_grad_();
    m->zero_grad();
    const auto out = m->forward(x, h0, {}, mode);
    ((out.y * ry).sum() + at::real(out.state * rh).sum()).backward();
    grads.push_back({m->alpha.grad().clone(), m->delta.grad().clone(), m->theta.grad().clone(),
                     m->gamma.grad().clone(), m->omega.grad().clone(), x.grad(), h0.grad()});
  }
  double worst = 0;
  for (size_t i = 0; i < grads[2].size(); ++i)
    for (int mode = 0; mode < 2; ++mode) {
      const double e = rel_err(grads[mode][i], grads[2][i]);
      EXPECT_LT(e, 1e-10) << mode_name(kModes[mode]) << " gradient " << i;
      worst = std::max(worst, e);
    }
  std::printf("[CEMA] gradients FFT/ChunkedScan vs Sequential: max rel error %.2e\n", worst);
}

// bf16 activations: computed in float32 and cast back once, so the result is exactly the float32
// path's output rounded to bf16, and within bf16 rounding of the float64 reference.
TEST(CEMA, BFloat16ComputesInFloat32) {
  torch::manual_seed(30);
  const int64_t B = 2, D = 8, N = 16, L = 50;
  CEMA m(D, N);
  const at::Tensor x = torch::randn({B, L, D}).to(at::kBFloat16);
  const at::Tensor h0 = at::complex(torch::randn({B, D, N}), torch::randn({B, D, N}));
  for (CEMAMode mode : kModes) {
    const auto out = m->forward(x, h0, {}, mode);
    ASSERT_EQ(out.y.scalar_type(), at::kBFloat16);
    ASSERT_EQ(out.state.scalar_type(), at::kComplexFloat);
    const auto out32 = m->forward(x.to(at::kFloat), h0, {}, mode);
    ASSERT_EQ(out32.y.scalar_type(), at::kFloat);
    EXPECT_TRUE(out.y.equal(out32.y.to(at::kBFloat16))) << mode_name(mode);
    const Ref ref = ref_cema(m, x, h0);
    const at::Tensor excess = (f64(out.y) - ref.y).abs() - (ref.y.abs() * (1.0 / 256) + 1e-5);
    EXPECT_LE(excess.max().item<double>(), 0.0) << mode_name(mode);
    EXPECT_LT(rel_err(out.state, ref.state), 1e-5) << mode_name(mode);
    if (mode == CEMAMode::FFT)
      std::printf("[CEMA] bf16 FFT vs float64 reference: max abs error %.2e (max |y| %.2f)\n",
                  (f64(out.y) - ref.y).abs().max().item<double>(), ref.y.abs().max().item<double>());
  }
}

// Under CPU bf16 autocast a float32 input still gets float32 arithmetic (the bmm/FFT inside would
// otherwise run in bf16 and be off by ~1e-2).
TEST(CEMA, AutocastDoesNotLowerPrecision) {
  torch::manual_seed(31);
  CEMA m(8, 16);
  const at::Tensor x = torch::randn({2, 40, 8});
  const at::Tensor h0 = at::complex(torch::randn({2, 8, 16}), torch::randn({2, 8, 16}));
  m->scan_chunk = 16;
  for (CEMAMode mode : kModes) {
    const auto plain = m->forward(x, h0, {}, mode);
    CEMAOutput cast;
    {
      AutocastGuard autocast(at::kCPU, true);
      cast = m->forward(x, h0, {}, mode);
    }
    ASSERT_EQ(cast.y.scalar_type(), at::kFloat);
    EXPECT_LT(max_abs_diff(cast.y, plain.y), 1e-6) << mode_name(mode);
    EXPECT_LT(rel_err(cast.state, plain.state), 1e-6) << mode_name(mode);
  }
}

TEST(CEMA, EmptySequenceKeepsState) {
  CEMA m = make_cema(3, 2, 32);
  const at::Tensor h0 = random_state(2, 3, 2);
  for (CEMAMode mode : kModes) {
    const auto out = m->forward(at::zeros({2, 0, 3}, kF64), h0, {}, mode);
    EXPECT_EQ(out.y.sizes(), (at::IntArrayRef{2, 0, 3}));
    EXPECT_TRUE(out.state.equal(h0));
  }
  const auto fresh = m->forward(at::zeros({2, 0, 3}, kF64));
  EXPECT_TRUE(fresh.state.equal(m->initial_state(2, at::kDouble)));
}

TEST(CEMA, BadArgumentsAreErrors) {
  EXPECT_THROW(CEMA(4, 0), tessera::Error);
  EXPECT_THROW(CEMA(0, 4), tessera::Error);
  CEMA m(4, 2);
  const at::Tensor x = torch::randn({2, 3, 4});
  EXPECT_THROW(m(torch::randn({3, 4})), tessera::Error);                      // rank
  EXPECT_THROW(m(torch::randn({2, 3, 5})), tessera::Error);                   // D
  EXPECT_THROW(m(torch::randint(0, 3, {2, 3, 4})), tessera::Error);           // integer input
  EXPECT_THROW(m(x, m->initial_state(3)), tessera::Error);                    // state batch
  EXPECT_THROW(m(x, at::zeros({2, 4, 3}, at::kComplexFloat)), tessera::Error);  // state N
  EXPECT_THROW(m(x, at::zeros({2, 4}, at::kComplexFloat)), tessera::Error);     // state rank
  EXPECT_THROW(m(x, at::zeros({2, 4, 2})), tessera::Error);                   // real state
  EXPECT_THROW(m->forward(x, {}, at::zeros({2, 4}, at::kBool)), tessera::Error);  // mask shape
  EXPECT_THROW(m->forward(x, {}, at::zeros({2, 3})), tessera::Error);             // mask dtype
  EXPECT_THROW(m->step(x, {}), tessera::Error);                               // step rank
  m->scan_chunk = 0;
  EXPECT_THROW(m->forward(x, {}, {}, CEMAMode::ChunkedScan), tessera::Error);
  const at::Tensor lq = at::zeros({4, 2}, at::kComplexFloat);
  EXPECT_THROW(cema_power_project(at::zeros({1, 4, 3}, at::kComplexFloat), lq, 5), tessera::Error);
  EXPECT_THROW(cema_power_project(at::zeros({1, 4, 2}, at::kComplexFloat), at::zeros({4, 2}), 5),
               tessera::Error);
  EXPECT_THROW(cema_power_reduce(at::zeros({1, 5, 3}), lq), tessera::Error);
  EXPECT_THROW(cema_power_reduce(at::zeros({1, 5, 4}, kF64), lq), tessera::Error);  // dtype mismatch
}

}  // namespace
}  // namespace tessera::nn
