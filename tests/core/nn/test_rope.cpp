#include <gtest/gtest.h>

#include "core/error.h"
#include "core/nn/rope.h"
#include "nn_test_util.h"

namespace tessera::nn {
namespace {

using testing::f64;
using testing::max_abs_diff;
using testing::ref_rope;

constexpr double kTheta = 10000.0;

TEST(RopeLayout, ParsesAndPrints) {
  EXPECT_EQ(parse_rope_layout("half_split"), RopeLayout::HalfSplit);
  EXPECT_EQ(parse_rope_layout("interleaved"), RopeLayout::Interleaved);
  for (RopeLayout l : {RopeLayout::HalfSplit, RopeLayout::Interleaved})
    EXPECT_EQ(parse_rope_layout(to_string(l)), l);
  try {
    parse_rope_layout("neox");
    FAIL() << "expected an error";
  } catch (const tessera::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("half_split"), std::string::npos) << msg;
    EXPECT_NE(msg.find("interleaved"), std::string::npos) << msg;
  }
}

TEST(RotaryEmbedding, TablesAreFloat32Buffers) {
  RotaryEmbedding rope(8, 32, kTheta, RopeLayout::HalfSplit);
  const auto buffers = rope->named_buffers();
  ASSERT_TRUE(buffers.contains("cos") && buffers.contains("sin"));
  EXPECT_EQ(buffers["cos"].sizes(), (std::vector<int64_t>{32, 4}));
  EXPECT_EQ(buffers["cos"].scalar_type(), at::kFloat);
  EXPECT_TRUE(rope->named_parameters().is_empty());
  EXPECT_EQ(rope->head_dim(), 8);
  EXPECT_EQ(rope->max_positions(), 32);
  EXPECT_EQ(rope->layout(), RopeLayout::HalfSplit);
}

// Arbitrary (unsorted, repeated) positions, shared [T] and per-row [B, T], both layouts, against an
// explicit per-pair rotation in float64. Tolerance 1e-5: float32 tables and arithmetic on N(0,1) x.
TEST(RotaryEmbedding, MatchesPerPairRotation) {
  torch::manual_seed(5);
  const int64_t B = 2, H = 3, T = 5, D = 16, P = 4096;
  for (RopeLayout layout : {RopeLayout::HalfSplit, RopeLayout::Interleaved}) {
    RotaryEmbedding rope(D, P, kTheta, layout);
    const at::Tensor x = torch::randn({B, H, T, D});

    const at::Tensor shared = torch::randint(0, P, {T}, at::kLong);
    auto sa = shared.accessor<int64_t, 1>();
    const at::Tensor y1 = rope->apply(x, shared);
    EXPECT_LT(max_abs_diff(y1, ref_rope(x, [&](int64_t, int64_t t) { return sa[t]; }, kTheta, layout)),
              1e-5)
        << to_string(layout);

    const at::Tensor per_row = torch::randint(0, P, {B, T}, at::kLong);
    auto pa = per_row.accessor<int64_t, 2>();
    const at::Tensor y2 = rope->apply(x, per_row);
    EXPECT_LT(max_abs_diff(y2, ref_rope(x, [&](int64_t b, int64_t t) { return pa[b][t]; }, kTheta, layout)),
              1e-5)
        << to_string(layout);
  }
}

TEST(RotaryEmbedding, LayoutsDiffer) {
  torch::manual_seed(6);
  RotaryEmbedding half(8, 16, kTheta, RopeLayout::HalfSplit);
  RotaryEmbedding inter(8, 16, kTheta, RopeLayout::Interleaved);
  const at::Tensor x = torch::randn({1, 1, 4, 8});
  const at::Tensor pos = torch::arange(1, 5, at::kLong);
  EXPECT_GT(max_abs_diff(half->apply(x, pos), inter->apply(x, pos)), 1e-2);
}

// <R(i) q, R(j) k> depends only on i - j: compare shifted pairs, and check it does vary with i - j.
TEST(RotaryEmbedding, DotProductDependsOnlyOnRelativePosition) {
  torch::manual_seed(7);
  const int64_t D = 16, T = 200;
  for (RopeLayout layout : {RopeLayout::HalfSplit, RopeLayout::Interleaved}) {
    RotaryEmbedding rope(D, T, 500.0, layout);
    const at::Tensor pos = torch::arange(T, at::kLong);
    const at::Tensor q = rope->apply(torch::randn({1, 1, 1, D}).expand({1, 1, T, D}), pos)[0][0];
    const at::Tensor k = rope->apply(torch::randn({1, 1, 1, D}).expand({1, 1, T, D}), pos)[0][0];
    auto dot = [&](int64_t i, int64_t j) { return q[i].dot(k[j]).item<double>(); };
    for (int64_t i : {0, 3, 17, 64})
      for (int64_t j : {0, 5, 40})
        for (int64_t shift : {1, 29, 120}) {
          // float32 rotations of N(0,1) vectors: |dot| ~ 4; 1e-4 absolute.
          EXPECT_NEAR(dot(i, j), dot(i + shift, j + shift), 1e-4)
              << to_string(layout) << " i=" << i << " j=" << j << " shift=" << shift;
        }
    EXPECT_GT(std::abs(dot(0, 0) - dot(7, 0)), 1e-2);
  }
}

TEST(RotaryEmbedding, BFloat16RotatesInFloat32) {
  torch::manual_seed(8);
  RotaryEmbedding rope(16, 1024, kTheta, RopeLayout::Interleaved);
  const at::Tensor x = torch::randn({2, 2, 6, 16}).to(at::kBFloat16);
  const at::Tensor pos = torch::randint(0, 1024, {6}, at::kLong);
  auto pa = pos.accessor<int64_t, 1>();
  const at::Tensor y = rope->apply(x, pos);
  ASSERT_EQ(y.scalar_type(), at::kBFloat16);
  const at::Tensor ref = ref_rope(x, [&](int64_t, int64_t t) { return pa[t]; }, kTheta, RopeLayout::Interleaved);
  // Only the final rounding to bf16: half an ulp, 2^-9 relative, plus float32 noise.
  const at::Tensor excess = (f64(y) - ref).abs() - (ref.abs() * (1.0 / 256) + 1e-5);
  EXPECT_LE(excess.max().item<double>(), 0.0);
}

TEST(RotaryEmbedding, PositionsOutsideTableAreErrors) {
  RotaryEmbedding rope(8, 8, kTheta, RopeLayout::HalfSplit);
  const at::Tensor x = torch::randn({1, 2, 3, 8});
  try {
    rope->apply(x, torch::tensor({2, 8, 1}, at::kLong));
    FAIL() << "expected an error";
  } catch (const tessera::Error& e) {
    EXPECT_NE(std::string(e.what()).find("beyond"), std::string::npos) << e.what();
  }
  EXPECT_THROW(rope->apply(x, torch::tensor({0, -1, 1}, at::kLong)), tessera::Error);
  EXPECT_NO_THROW(rope->apply(x, torch::tensor({5, 6, 7}, at::kLong)));

  // A tensor found valid once and then modified in place is checked again.
  at::Tensor pos = torch::tensor({0, 1, 2}, at::kLong);
  EXPECT_NO_THROW(rope->apply(x, pos));
  pos[2].fill_(9);
  EXPECT_THROW(rope->apply(x, pos), tessera::Error);
}

TEST(RotaryEmbedding, ShapeErrors) {
  EXPECT_THROW(RotaryEmbedding(7, 8, kTheta, RopeLayout::HalfSplit), tessera::Error);  // odd head_dim
  RotaryEmbedding rope(8, 8, kTheta, RopeLayout::HalfSplit);
  EXPECT_THROW(rope->apply(torch::randn({1, 2, 3, 6}), torch::arange(3)), tessera::Error);
  EXPECT_THROW(rope->apply(torch::randn({1, 2, 3, 8}), torch::arange(4)), tessera::Error);
  EXPECT_THROW(rope->apply(torch::randn({2, 2, 3, 8}), torch::zeros({3, 3}, at::kLong)), tessera::Error);
  EXPECT_THROW(rope->apply(torch::randn({1, 2, 3, 8}), torch::zeros({3})), tessera::Error);  // float
}

}  // namespace
}  // namespace tessera::nn
