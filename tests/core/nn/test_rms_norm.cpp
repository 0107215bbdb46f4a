#include <gtest/gtest.h>

#include "core/error.h"
#include "core/nn/rms_norm.h"
#include "nn_test_util.h"

namespace tessera::nn {
namespace {

using testing::f64;
using testing::max_abs_diff;

// y[r, i] = x[r, i] / sqrt(mean_i x[r, i]^2 + eps) * w[i], rows r over the leading dims.
at::Tensor ref_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  const at::Tensor xd = f64(x).reshape({-1, x.size(-1)}), wd = f64(w);
  at::Tensor y = at::empty_like(xd);
  auto xa = xd.accessor<double, 2>();
  auto wa = wd.accessor<double, 1>();
  auto ya = y.accessor<double, 2>();
  const int64_t R = xd.size(0), D = xd.size(1);
  for (int64_t r = 0; r < R; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += xa[r][i] * xa[r][i];
    const double inv = 1.0 / std::sqrt(ss / D + eps);
    for (int64_t i = 0; i < D; ++i) ya[r][i] = xa[r][i] * inv * wa[i];
  }
  return y.view(x.sizes());
}

RMSNorm make_norm(int64_t dim, double eps) {
  RMSNorm norm(dim, eps);
  torch::NoGradGuard no_grad;
  norm->weight.copy_(torch::randn({dim}) * 0.5 + 1.0);
  return norm;
}

TEST(RMSNorm, RegistersWeightAsOnes) {
  RMSNorm norm(6);
  const auto params = norm->named_parameters();
  ASSERT_EQ(params.size(), 1u);
  ASSERT_TRUE(params.contains("weight"));
  EXPECT_TRUE(params["weight"].equal(torch::ones({6})));
  EXPECT_DOUBLE_EQ(norm->eps, 1e-5);
}

TEST(RMSNorm, PlusOneStoresZeroAndScalesByOnePlusWeight) {
  torch::manual_seed(5);
  RMSNorm norm(8, 1e-5, /*plus_one=*/true);
  EXPECT_TRUE(norm->weight.equal(torch::zeros({8})));
  {
    torch::NoGradGuard no_grad;
    norm->weight.copy_(torch::randn({8}) * 0.3);
  }
  const at::Tensor x = torch::randn({3, 8}, at::kDouble);
  norm->to(at::kDouble);
  EXPECT_LT(max_abs_diff(norm(x), ref_rms_norm(x, norm->weight + 1.0, 1e-5)), 1e-12);
}

TEST(RMSNorm, Float32MatchesReference) {
  torch::manual_seed(1);
  RMSNorm norm = make_norm(16, 1e-5);
  const at::Tensor x = torch::randn({3, 5, 16}) * 3 + 0.5;
  const at::Tensor y = norm(x);
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  EXPECT_LT(max_abs_diff(y, ref_rms_norm(x, norm->weight, 1e-5)), 1e-5);  // float32 rounding
}

TEST(RMSNorm, LargeEpsIsUsed) {
  torch::manual_seed(2);
  RMSNorm norm = make_norm(8, 0.5);
  const at::Tensor x = torch::randn({4, 8}) * 0.3;  // mean square ~0.09, so eps dominates
  EXPECT_LT(max_abs_diff(norm(x), ref_rms_norm(x, norm->weight, 0.5)), 1e-6);
}

// bf16 input, float32 weight (autocast-style) and bf16 weight (module cast to bf16): the result is
// bf16 and within bf16 rounding of the float64 reference on the same (rounded) inputs.
TEST(RMSNorm, BFloat16WithinBf16Tolerance) {
  torch::manual_seed(3);
  for (const bool bf16_weight : {false, true}) {
    RMSNorm norm = make_norm(32, 1e-5);
    if (bf16_weight) norm->to(at::kBFloat16);
    const at::Tensor x = (torch::randn({4, 7, 32}) * 2).to(at::kBFloat16);
    const at::Tensor y = norm(x);
    ASSERT_EQ(y.scalar_type(), at::kBFloat16);
    const at::Tensor ref = ref_rms_norm(x, norm->weight, 1e-5);
    // bf16 has 8 significant bits: allow 2^-7 relative (two roundings) plus a small absolute floor.
    const at::Tensor err = (f64(y) - ref).abs() - (ref.abs() * (1.0 / 128) + 1e-3);
    EXPECT_LE(err.max().item<double>(), 0.0) << "bf16_weight=" << bf16_weight;
  }
}

TEST(RMSNorm, WrongWidthIsAnError) {
  RMSNorm norm(8);
  EXPECT_THROW(norm(torch::randn({2, 7})), tessera::Error);
  EXPECT_THROW(RMSNorm(0), tessera::Error);
}

}  // namespace
}  // namespace tessera::nn
