#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>

#include "core/error.h"
#include "core/nn/init.h"

namespace tessera::nn {
namespace {

// Closed form: the variance of N(0, 1) truncated to [-b, b] is 1 - 2 b phi(b) / (2 Phi(b) - 1).
double truncated_variance(double b) {
  const double phi = std::exp(-0.5 * b * b) / std::sqrt(2.0 * M_PI);
  const double mass = std::erf(b / std::sqrt(2.0));
  return 1.0 - 2.0 * b * phi / mass;
}

TEST(Init, TruncatedNormalStaysInBoundsWithTheTruncatedVariance) {
  at::manual_seed(0);
  for (double bound : {2.0, 3.0}) {
    at::Tensor t = at::empty({400000}, at::kDouble);
    truncated_normal_(t, 0.5, bound);
    EXPECT_LE(t.abs().max().item<double>(), bound * 0.5 + 1e-12);
    EXPECT_NEAR(t.mean().item<double>(), 0.0, 0.005);
    EXPECT_NEAR(t.var().item<double>(), 0.25 * truncated_variance(bound), 0.005);
    // Mass close to the bound exists (it is a truncation, not a squashing).
    EXPECT_GT(t.abs().gt(0.95 * bound * 0.5).sum().item<int64_t>(), 0);
  }
  at::Tensor t = at::empty({4});
  EXPECT_THROW(truncated_normal_(t, 0.0), Error);
}

}  // namespace
}  // namespace tessera::nn
