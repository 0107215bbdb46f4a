#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/nn/timestep_norm.h"
#include "nn_test_util.h"

namespace tessera::nn {
namespace {

using testing::f64;
using testing::max_abs_diff;

// The direct definition with explicit loops in float64: for every (b, t, g) collect the features of
// group g at the un-padded steps i <= t, take their two-pass population mean and variance, and
// normalise x[b, t, g's features]. Padded steps output 0. mask [B, L] bool (true = padding) or
// undefined.
at::Tensor ref_timestep_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                             int64_t G, double eps, const at::Tensor& mask = {}) {
  const at::Tensor xd = f64(x), wd = f64(w), bd = f64(bias);
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), dg = D / G;
  const at::Tensor md = mask.defined() ? mask.contiguous() : at::zeros({B, L}, at::kBool);
  auto xa = xd.accessor<double, 3>();
  auto wa = wd.accessor<double, 1>();
  auto ba = bd.accessor<double, 1>();
  auto ma = md.accessor<bool, 2>();
  at::Tensor y = at::zeros({B, L, D}, at::kDouble);
  auto ya = y.accessor<double, 3>();
  std::vector<double> vals;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t) {
      if (ma[b][t]) continue;
      for (int64_t g = 0; g < G; ++g) {
        vals.clear();
        for (int64_t i = 0; i <= t; ++i)
          if (!ma[b][i])
            for (int64_t j = g * dg; j < (g + 1) * dg; ++j) vals.push_back(xa[b][i][j]);
        double mean = 0, var = 0;
        for (double v : vals) mean += v;
        mean /= static_cast<double>(vals.size());
        for (double v : vals) var += (v - mean) * (v - mean);
        var /= static_cast<double>(vals.size());
        for (int64_t j = g * dg; j < (g + 1) * dg; ++j)
          ya[b][t][j] = (xa[b][t][j] - mean) / std::sqrt(var + eps) * (1 + wa[j]) + ba[j];
      }
    }
  return y;
}

TimestepNorm make_norm(int64_t D, int64_t G, at::ScalarType dtype = at::kDouble, double eps = 1e-5) {
  TimestepNorm norm(D, G, eps);
  norm->to(dtype);
  torch::NoGradGuard no_grad;
  norm->weight.copy_(torch::randn({D}) * 0.3);
  norm->bias.copy_(torch::randn({D}) * 0.3);
  return norm;
}

const at::TensorOptions kF64 = at::TensorOptions().dtype(at::kDouble);

TEST(TimestepNorm, RegistersWeightAndBiasAsZeros) {
  TimestepNorm norm(8, 2);
  const auto params = norm->named_parameters();
  ASSERT_EQ(params.size(), 2u);
  ASSERT_TRUE(params.contains("weight"));
  ASSERT_TRUE(params.contains("bias"));
  EXPECT_TRUE(params["weight"].equal(torch::zeros({8})));
  EXPECT_TRUE(params["bias"].equal(torch::zeros({8})));
  EXPECT_DOUBLE_EQ(norm->eps, 1e-5);
  EXPECT_EQ(norm->groups, 2);
}

TEST(TimestepNorm, EveryPositionMatchesDirectDefinition) {
  torch::manual_seed(1);
  TimestepNorm norm = make_norm(12, 3);
  const at::Tensor x = torch::randn({2, 9, 12}, kF64) * 2 + 0.7;
  const auto out = norm(x);
  EXPECT_EQ(out.y.scalar_type(), at::kDouble);
  EXPECT_LT(max_abs_diff(out.y, ref_timestep_norm(x, norm->weight, norm->bias, 3, 1e-5)), 1e-10);
  EXPECT_TRUE(out.state.count.equal(torch::full({2}, 9, at::kLong)));
}

// The last position is ordinary group norm over the whole sequence (written with tensor ops here),
// and the returned state holds that group norm's mean and variance.
TEST(TimestepNorm, LastPositionIsGroupNormOfWholePrefix) {
  torch::manual_seed(2);
  const int64_t B = 2, L = 7, D = 8, G = 2;
  TimestepNorm norm = make_norm(D, G);
  const at::Tensor x = torch::randn({B, L, D}, kF64) * 3 - 1;
  const auto out = norm(x);
  const at::Tensor xg = x.view({B, L, G, D / G});
  const at::Tensor mean = xg.mean({1, 3});                    // [B, G]
  const at::Tensor var = (xg - mean.view({B, 1, G, 1})).square().mean({1, 3});
  const at::Tensor last = x.select(1, L - 1).view({B, G, D / G});
  const at::Tensor gn = ((last - mean.unsqueeze(-1)) / (var.unsqueeze(-1) + 1e-5).sqrt()).view({B, D}) *
                            (1 + norm->weight) + norm->bias;
  EXPECT_LT(max_abs_diff(out.y.select(1, L - 1), gn), 1e-10);
  EXPECT_LT(max_abs_diff(out.state.mean, mean), 1e-12);
  EXPECT_LT(max_abs_diff(out.state.var, var), 1e-12);
}

TEST(TimestepNorm, IsCausal) {
  torch::manual_seed(3);
  TimestepNorm norm = make_norm(8, 4);
  const at::Tensor x = torch::randn({2, 10, 8}, kF64);
  const at::Tensor y = norm(x).y;
  for (const int64_t t : {0, 4, 9}) {
    at::Tensor x2 = x.clone();
    x2.select(1, t).add_(torch::randn({2, 8}, kF64) * 5);
    const at::Tensor y2 = norm(x2).y;
    if (t > 0) {
      EXPECT_LT(max_abs_diff(y2.narrow(1, 0, t), y.narrow(1, 0, t)), 1e-12) << t;
    }
    EXPECT_GT(max_abs_diff(y2.narrow(1, t, 1), y.narrow(1, t, 1)), 1e-3) << t;
  }
}

TEST(TimestepNorm, ChunkedWithCarriedStateEqualsOneForward) {
  torch::manual_seed(4);
  TimestepNorm norm = make_norm(12, 4);
  const at::Tensor x = torch::randn({3, 11, 12}, kF64) * 1.5 + 2;
  const auto full = norm(x);
  // Uneven chunks, the first with an explicit fresh state, the others with the carried one.
  TimestepNormState st = norm->initial_state(3);
  std::vector<at::Tensor> ys;
  int64_t start = 0;
  for (const int64_t len : {5, 1, 5}) {
    auto out = norm(x.narrow(1, start, len), &st);
    ys.push_back(out.y);
    st = out.state;
    start += len;
  }
  EXPECT_LT(max_abs_diff(at::cat(ys, 1), full.y), 1e-12);
  EXPECT_TRUE(st.count.equal(full.state.count));
  EXPECT_LT(max_abs_diff(st.mean, full.state.mean), 1e-12);
  EXPECT_LT(max_abs_diff(st.var, full.state.var), 1e-12);
}

TEST(TimestepNorm, StepByStepEqualsForward) {
  torch::manual_seed(5);
  TimestepNorm norm = make_norm(8, 2);
  const at::Tensor x = torch::randn({2, 6, 8}, kF64) - 0.5;
  const auto full = norm(x);
  TimestepNormState st;  // undefined: no prefix
  for (int64_t t = 0; t < 6; ++t) {
    auto out = norm->step(x.select(1, t), st);
    ASSERT_EQ(out.y.sizes(), (at::IntArrayRef{2, 8}));
    EXPECT_LT(max_abs_diff(out.y, full.y.select(1, t)), 1e-12) << t;
    st = out.state;
  }
  EXPECT_LT(max_abs_diff(st.var, full.state.var), 1e-12);
}

TEST(TimestepNorm, PaddedStepsGiveZeroAndAreSkipped) {
  torch::manual_seed(6);
  const int64_t L = 8, D = 6, G = 3;
  TimestepNorm norm = make_norm(D, G);
  at::Tensor x = torch::randn({2, L, D}, kF64);
  // Row 0: padding at the start (before any real step) and in the middle; row 1: at the end.
  const std::vector<std::vector<int64_t>> pads = {{0, 1, 4}, {6, 7}};
  at::Tensor mask = at::zeros({2, L}, at::kBool);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t : pads[b]) mask[b][t] = true;
  x[0][4].fill_(1e6);  // garbage in padded steps must not matter
  x[1][6].fill_(NAN);
  const auto out = norm(x, nullptr, mask);
  EXPECT_LT(max_abs_diff(out.y, ref_timestep_norm(x, norm->weight, norm->bias, G, 1e-5, mask)), 1e-10);
  for (int64_t b = 0; b < 2; ++b) {
    // Padded steps are exactly 0; the real steps equal a forward over the row with them removed.
    std::vector<int64_t> keep;
    for (int64_t t = 0; t < L; ++t) {
      if (!mask[b][t].item<bool>()) {
        keep.push_back(t);
      } else {
        EXPECT_TRUE(out.y[b][t].eq(0).all().item<bool>()) << b << " " << t;
      }
    }
    const at::Tensor idx = torch::tensor(keep);
    const auto compact = norm(x[b].index_select(0, idx).unsqueeze(0));
    EXPECT_LT(max_abs_diff(out.y[b].index_select(0, idx), compact.y[0]), 1e-12) << b;
    EXPECT_EQ(out.state.count[b].item<int64_t>(), static_cast<int64_t>(keep.size()));
    EXPECT_LT(max_abs_diff(out.state.mean[b], compact.state.mean[0]), 1e-12);
    EXPECT_LT(max_abs_diff(out.state.var[b], compact.state.var[0]), 1e-12);
  }
  // A chunk that is all padding leaves a carried state unchanged, and a padded step() too.
  const auto none = norm(torch::randn({2, 3, D}, kF64), &out.state, at::ones({2, 3}, at::kBool));
  EXPECT_TRUE(none.y.eq(0).all().item<bool>());
  EXPECT_TRUE(none.state.count.equal(out.state.count));
  EXPECT_TRUE(none.state.mean.equal(out.state.mean));
  EXPECT_TRUE(none.state.var.equal(out.state.var));
  const auto st = norm->step(torch::randn({2, D}, kF64), out.state, torch::tensor({true, false}));
  EXPECT_TRUE(st.y[0].eq(0).all().item<bool>());
  EXPECT_EQ(st.state.count[0].item<int64_t>(), out.state.count[0].item<int64_t>());
  EXPECT_EQ(st.state.count[1].item<int64_t>(), out.state.count[1].item<int64_t>() + 1);
  EXPECT_TRUE(st.state.var[0].equal(out.state.var[0]));
}

// A large common offset: cumsum(x) / cumsum(x^2) in float32 would lose the variance entirely
// (E[x^2] ~ 1e8 has a float32 ulp of 8, the variance is ~1). The float32 result must stay within a
// few float32 ulps of 1e4 (~1e-3, relative to a unit standard deviation) of the float64 reference
// on the same float32 inputs, also across a carried state.
TEST(TimestepNorm, Float32StableUnderLargeOffset) {
  torch::manual_seed(7);
  const int64_t B = 2, L = 64, D = 16, G = 4;
  TimestepNorm norm = make_norm(D, G, at::kFloat);
  const at::Tensor x = torch::randn({B, L, D}) + 1e4;
  const auto out = norm(x);
  ASSERT_EQ(out.y.scalar_type(), at::kFloat);
  const at::Tensor ref = ref_timestep_norm(x, norm->weight, norm->bias, G, 1e-5);
  EXPECT_LT(max_abs_diff(out.y, ref), 5e-3);  // measured ~1.3e-3
  const auto a = norm(x.narrow(1, 0, 20));
  const auto b = norm(x.narrow(1, 20, L - 20), &a.state);
  EXPECT_LT(max_abs_diff(b.y, ref.narrow(1, 20, L - 20)), 5e-3);
}

TEST(TimestepNorm, BFloat16ComputesInFloat32) {
  torch::manual_seed(8);
  TimestepNorm norm = make_norm(16, 4, at::kFloat);
  const at::Tensor x = (torch::randn({2, 10, 16}) * 2 + 3).to(at::kBFloat16);
  const auto out = norm(x);
  ASSERT_EQ(out.y.scalar_type(), at::kBFloat16);
  EXPECT_EQ(out.state.mean.scalar_type(), at::kDouble);
  const at::Tensor ref = ref_timestep_norm(x, norm->weight, norm->bias, 4, 1e-5);
  const at::Tensor err = (f64(out.y) - ref).abs() - (ref.abs() * (1.0 / 128) + 1e-3);
  EXPECT_LE(err.max().item<double>(), 0.0);
}

// Central finite differences in float64 on a tiny case with a carried state and a padded step:
// gradients w.r.t. x, weight, bias and the carried mean/var.
TEST(TimestepNorm, GradientMatchesFiniteDifferences) {
  torch::manual_seed(9);
  const int64_t B = 1, L = 4, D = 4, G = 2;
  TimestepNorm norm = make_norm(D, G);
  const at::Tensor x = torch::randn({B, L, D}, kF64).requires_grad_();
  const at::Tensor mask = torch::tensor({false, false, true, false}).view({B, L});
  TimestepNormState st{at::full({B}, 3, at::kLong), (torch::randn({B, G}, kF64) * 0.5).requires_grad_(),
                       (torch::rand({B, G}, kF64) + 0.5).requires_grad_()};
  const at::Tensor r = torch::randn({B, L, D}, kF64);
  auto loss = [&] {
    const auto out = norm(x, &st, mask);
    return (out.y * r).sum() + (out.state.mean * 0.7).sum() + (out.state.var * 0.3).sum();
  };
  std::vector<at::Tensor> leaves = {x, norm->weight, norm->bias, st.mean, st.var};
  for (auto& p : leaves) p.mutable_grad() = at::Tensor();
  loss().backward();
  const double h = 1e-6;
  for (size_t k = 0; k < leaves.size(); ++k) {
    const at::Tensor p = leaves[k], g = p.grad();
    ASSERT_TRUE(g.defined()) << k;
    const at::Tensor flat = p.detach().view({-1});
    for (int64_t i = 0; i < flat.numel(); ++i) {
      double lp, lm;
      {
        torch::NoGradGuard ng;
        const double v0 = flat[i].item<double>();
        flat[i] = v0 + h;
        lp = loss().item<double>();
        flat[i] = v0 - h;
        lm = loss().item<double>();
        flat[i] = v0;
      }
      const double fd = (lp - lm) / (2 * h);
      EXPECT_NEAR(g.view({-1})[i].item<double>(), fd, 1e-6 * (1 + std::abs(fd))) << k << " " << i;
    }
  }
  // The padded step's input gets no gradient.
  EXPECT_TRUE(x.grad()[0][2].eq(0).all().item<bool>());
}

TEST(TimestepNorm, BadShapesAreErrors) {
  EXPECT_THROW(TimestepNorm(10, 3), tessera::Error);
  EXPECT_THROW(TimestepNorm(0, 1), tessera::Error);
  EXPECT_THROW(TimestepNorm(8, 0), tessera::Error);
  TimestepNorm norm(8, 2);
  EXPECT_THROW(norm(torch::randn({2, 8})), tessera::Error);
  EXPECT_THROW(norm(torch::randn({2, 3, 6})), tessera::Error);
  EXPECT_THROW(norm(torch::randn({2, 3, 8}), nullptr, at::zeros({2, 4}, at::kBool)), tessera::Error);
  EXPECT_THROW(norm(torch::randn({2, 3, 8}), nullptr, at::zeros({2, 3})), tessera::Error);
  TimestepNormState wrong = norm->initial_state(3);
  EXPECT_THROW(norm(torch::randn({2, 3, 8}), &wrong), tessera::Error);
  TimestepNormState wrong_groups{at::zeros({2}, at::kLong), at::zeros({2, 4}, kF64), at::ones({2, 4}, kF64)};
  EXPECT_THROW(norm(torch::randn({2, 3, 8}), &wrong_groups), tessera::Error);
  EXPECT_THROW(norm->step(torch::randn({2, 3, 8}), TimestepNormState{}), tessera::Error);
}

}  // namespace
}  // namespace tessera::nn
