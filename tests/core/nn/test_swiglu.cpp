#include <gtest/gtest.h>

#include "core/error.h"
#include "core/nn/swiglu.h"
#include "nn_test_util.h"

namespace tessera::nn {
namespace {

using testing::f64;
using testing::max_abs_diff;

TEST(SwiGLUHiddenDim, MatchesLlamaConfigs) {
  EXPECT_EQ(swiglu_hidden_dim(4096, 0, 256), 11008);    // Llama-2 7B
  EXPECT_EQ(swiglu_hidden_dim(5120, 0, 256), 13824);    // Llama-2 13B
  EXPECT_EQ(swiglu_hidden_dim(8192, 1.3, 4096), 28672); // Llama-2 70B
  EXPECT_EQ(swiglu_hidden_dim(4096, 1.3, 1024), 14336); // Llama-3 8B as released
  EXPECT_EQ(swiglu_hidden_dim(4096, 1.3, 256), 14336);
  EXPECT_EQ(swiglu_hidden_dim(4, 0, 1), 10);            // int(32 / 3) = 10, no rounding
  EXPECT_THROW(swiglu_hidden_dim(4096, 0, 0), tessera::Error);
}

TEST(SwiGLU, RegistersBiasFreeLinears) {
  SwiGLU ffn(12, 20);
  const auto params = ffn->named_parameters();
  EXPECT_EQ(params.size(), 3u);
  EXPECT_EQ(params["w1.weight"].sizes(), (std::vector<int64_t>{20, 12}));
  EXPECT_EQ(params["w2.weight"].sizes(), (std::vector<int64_t>{12, 20}));
  EXPECT_EQ(params["w3.weight"].sizes(), (std::vector<int64_t>{20, 12}));
}

TEST(SwiGLU, MatchesReference) {
  torch::manual_seed(4);
  SwiGLU ffn(12, 20);
  const at::Tensor x = torch::randn({2, 5, 12});
  const at::Tensor y = ffn(x);

  // h[j] = silu(sum_i W1[j,i] x[i]) * sum_i W3[j,i] x[i]; y[o] = sum_j W2[o,j] h[j]
  const at::Tensor xd = f64(x).view({-1, 12}), w1 = f64(ffn->w1->weight), w2 = f64(ffn->w2->weight),
                   w3 = f64(ffn->w3->weight);
  at::Tensor ref = at::zeros({10, 12}, at::kDouble);
  auto xa = xd.accessor<double, 2>();
  auto a1 = w1.accessor<double, 2>();
  auto a2 = w2.accessor<double, 2>();
  auto a3 = w3.accessor<double, 2>();
  auto ra = ref.accessor<double, 2>();
  for (int64_t n = 0; n < 10; ++n) {
    std::vector<double> h(20);
    for (int64_t j = 0; j < 20; ++j) {
      double g = 0, l = 0;
      for (int64_t i = 0; i < 12; ++i) {
        g += a1[j][i] * xa[n][i];
        l += a3[j][i] * xa[n][i];
      }
      h[j] = g / (1 + std::exp(-g)) * l;
    }
    for (int64_t o = 0; o < 12; ++o)
      for (int64_t j = 0; j < 20; ++j) ra[n][o] += a2[o][j] * h[j];
  }
  EXPECT_LT(max_abs_diff(y, ref.view({2, 5, 12})), 1e-5);  // float32 vs float64
}

TEST(SwiGLU, WrongWidthIsAnError) {
  SwiGLU ffn(8, 16);
  EXPECT_THROW(ffn(torch::randn({2, 9})), tessera::Error);
}

}  // namespace
}  // namespace tessera::nn
