// SelfAttention, KVCache and CrossAttention: float64 loop references, and incremental decoding with a
// cache against the full forward.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/nn/attention.h"
#include "core/nn/rope.h"
#include "nn_test_util.h"

namespace tessera::nn {
namespace {

using testing::allowed_from;
using testing::max_abs_diff;
using testing::ref_attention;
using testing::ref_linear;
using testing::ref_rope;

// [B, T, H*D] -> [B, H, T, D] and back, in float64.
at::Tensor split_heads(const at::Tensor& x, int64_t H) {
  return x.view({x.size(0), x.size(1), H, -1}).permute({0, 2, 1, 3}).contiguous();
}
at::Tensor join_heads(const at::Tensor& x) {
  return x.permute({0, 2, 1, 3}).reshape({x.size(0), x.size(2), -1});
}

TEST(SelfAttention, MatchesReferenceWithRopeAndGQA) {
  torch::manual_seed(20);
  const int64_t B = 2, T = 6, dim = 32, Hq = 4, Hkv = 2, D = 8;
  SelfAttention attn(SelfAttentionOptions{dim, Hq, Hkv});
  RotaryEmbedding rope(D, 64, 10000.0, RopeLayout::Interleaved);
  const at::Tensor x = torch::randn({B, T, dim});
  const at::Tensor pos = torch::randint(0, 64, {B, T}, at::kLong);
  MaskSpec spec;
  spec.q_doc_ids = torch::tensor({0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0}, at::kLong).view({B, T});
  spec.kv_doc_ids = spec.q_doc_ids;
  const at::Tensor y = attn(x, rope.get(), pos, spec);

  auto pa = pos.accessor<int64_t, 2>();
  auto at_pos = [&](int64_t b, int64_t t) { return pa[b][t]; };
  const at::Tensor q = ref_rope(split_heads(ref_linear(x, attn->wq->weight), Hq), at_pos, 10000.0,
                                RopeLayout::Interleaved);
  const at::Tensor k = ref_rope(split_heads(ref_linear(x, attn->wk->weight), Hkv), at_pos, 10000.0,
                                RopeLayout::Interleaved);
  const at::Tensor v = split_heads(ref_linear(x, attn->wv->weight), Hkv);
  const at::Tensor ref = ref_linear(join_heads(ref_attention(q, k, v, allowed_from(spec))), attn->wo->weight);
  EXPECT_LT(max_abs_diff(y, ref), 1e-5);  // float32 vs float64
}

TEST(SelfAttention, RegistersLlamaNamesAndChecksShapes) {
  SelfAttention attn(SelfAttentionOptions{24, 4, 2});
  EXPECT_EQ(attn->head_dim(), 6);
  const auto params = attn->named_parameters();
  EXPECT_EQ(params.size(), 4u);
  EXPECT_EQ(params["wq.weight"].sizes(), (std::vector<int64_t>{24, 24}));
  EXPECT_EQ(params["wk.weight"].sizes(), (std::vector<int64_t>{12, 24}));
  EXPECT_EQ(params["wv.weight"].sizes(), (std::vector<int64_t>{12, 24}));
  EXPECT_EQ(params["wo.weight"].sizes(), (std::vector<int64_t>{24, 24}));
  EXPECT_EQ(SelfAttention(SelfAttentionOptions{24, 4, 0, 0, true})->named_parameters().size(), 8u);

  EXPECT_THROW(SelfAttention(SelfAttentionOptions{30, 4, 4}), tessera::Error);  // 30 % 4 != 0
  EXPECT_NO_THROW(SelfAttention(SelfAttentionOptions{30, 4, 4, 8}));            // explicit head_dim
  EXPECT_THROW(SelfAttention(SelfAttentionOptions{32, 4, 3}), tessera::Error);  // 4 % 3 != 0
  EXPECT_THROW(attn(torch::randn({1, 3, 23}), nullptr, at::Tensor(), MaskSpec{}), tessera::Error);
}

TEST(KVCache, AppendsAndOverflows) {
  torch::manual_seed(21);
  KVCache cache(2, 3, 5, 4, at::kFloat, torch::kCPU);
  EXPECT_EQ(cache.capacity(), 5);
  const at::Tensor k1 = torch::randn({2, 3, 3, 4}), v1 = torch::randn({2, 3, 3, 4});
  auto [k, v] = cache.append(k1, v1);
  EXPECT_EQ(cache.length(), 3);
  EXPECT_TRUE(k.equal(k1) && v.equal(v1));
  const at::Tensor k2 = torch::randn({2, 3, 2, 4}), v2 = torch::randn({2, 3, 2, 4});
  std::tie(k, v) = cache.append(k2, v2);
  EXPECT_TRUE(k.equal(at::cat({k1, k2}, 2)) && v.equal(at::cat({v1, v2}, 2)));
  try {
    cache.append(k2.narrow(2, 0, 1), v2.narrow(2, 0, 1));
    FAIL() << "expected an overflow error";
  } catch (const tessera::Error& e) {
    EXPECT_NE(std::string(e.what()).find("overflow"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.length(), 5);
  cache.reset();
  EXPECT_EQ(cache.length(), 0);
  std::tie(k, v) = cache.append(k2, v2);
  EXPECT_TRUE(k.equal(k2));
  EXPECT_THROW(cache.append(torch::randn({2, 2, 1, 4}), torch::randn({2, 2, 1, 4})), tessera::Error);
  EXPECT_THROW(cache.append(k2.to(at::kDouble), v2.to(at::kDouble)), tessera::Error);
}

// Decoding token by token, and in chunks of 3, with a cache reproduces the full forward (causal and
// sliding-window masks, GQA, both RoPE layouts, explicit and default positions). Tolerance 1e-5.
TEST(KVCache, IncrementalDecodingMatchesFullForward) {
  torch::manual_seed(22);
  const int64_t B = 2, T = 10, dim = 32, Hq = 4, Hkv = 2, D = 8;
  torch::NoGradGuard no_grad;
  for (RopeLayout layout : {RopeLayout::HalfSplit, RopeLayout::Interleaved})
    for (int64_t window : {0, 4}) {
      SelfAttention attn(SelfAttentionOptions{dim, Hq, Hkv});
      RotaryEmbedding rope(D, 64, 10000.0, layout);
      const at::Tensor x = torch::randn({B, T, dim});
      MaskSpec spec;
      spec.window = window;
      const at::Tensor full = attn(x, rope.get(), torch::arange(T, at::kLong), spec);

      for (int64_t chunk : {1, 3}) {
        for (const bool explicit_positions : {true, false}) {
          KVCache cache(B, Hkv, T, D, at::kFloat, torch::kCPU);
          std::vector<at::Tensor> parts;
          for (int64_t start = 0; start < T; start += chunk) {
            const int64_t n = std::min(chunk, T - start);
            const at::Tensor pos =
                explicit_positions ? torch::arange(start, start + n, at::kLong) : at::Tensor();
            parts.push_back(attn(x.narrow(1, start, n), rope.get(), pos, spec, &cache));
          }
          EXPECT_EQ(cache.length(), T);
          EXPECT_LT(max_abs_diff(at::cat(parts, 1), full), 1e-5)
              << to_string(layout) << " window=" << window << " chunk=" << chunk
              << " explicit_positions=" << explicit_positions;
        }
      }
    }
}

TEST(KVCache, SelfAttentionRefusesWrongOffsetAndOverflow) {
  torch::manual_seed(23);
  torch::NoGradGuard no_grad;
  SelfAttention attn(SelfAttentionOptions{16, 2, 2});
  KVCache cache(1, 2, 4, 8, at::kFloat, torch::kCPU);
  attn(torch::randn({1, 3, 16}), nullptr, at::Tensor(), MaskSpec{}, &cache);
  MaskSpec wrong;
  wrong.q_offset = 1;
  EXPECT_THROW(attn(torch::randn({1, 1, 16}), nullptr, at::Tensor(), wrong, &cache), tessera::Error);
  EXPECT_THROW(attn(torch::randn({1, 2, 16}), nullptr, at::Tensor(), MaskSpec{}, &cache), tessera::Error);
}

TEST(CrossAttention, MatchesReferenceWithMaskAndEmptyRow) {
  torch::manual_seed(24);
  const int64_t B = 2, Tq = 4, Tk = 5, H = 3;
  CrossAttention attn(CrossAttentionOptions{12, 10, H, 0, 7});
  const at::Tensor x = torch::randn({B, Tq, 12}), memory = torch::randn({B, Tk, 10});
  at::Tensor mask = torch::rand({B, Tq, Tk}) > 0.4;
  mask[1][2].fill_(false);  // query 2 of row 1 sees nothing
  mask[0][0].fill_(true);
  const at::Tensor y = attn(x, memory, mask);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{B, Tq, 7}));
  EXPECT_TRUE(y[1][2].eq(0).all().item<bool>());

  auto ma = mask.accessor<bool, 3>();
  const at::Tensor q = split_heads(ref_linear(x, attn->wq->weight), H);
  const at::Tensor k = split_heads(ref_linear(memory, attn->wk->weight), H);
  const at::Tensor v = split_heads(ref_linear(memory, attn->wv->weight), H);
  const at::Tensor o = ref_attention(q, k, v, [&](int64_t b, int64_t, int64_t i, int64_t j) { return ma[b][i][j]; });
  EXPECT_LT(max_abs_diff(y, ref_linear(join_heads(o), attn->wo->weight)), 1e-5);
}

TEST(CrossAttention, UnmaskedWithBias) {
  torch::manual_seed(25);
  CrossAttention attn(CrossAttentionOptions{8, 6, 2, 5, 0, /*bias=*/true});
  const at::Tensor x = torch::randn({2, 3, 8}), memory = torch::randn({2, 4, 6});
  const at::Tensor y = attn(x, memory, at::Tensor());
  const at::Tensor q = split_heads(ref_linear(x, attn->wq->weight, attn->wq->bias), 2);
  const at::Tensor k = split_heads(ref_linear(memory, attn->wk->weight, attn->wk->bias), 2);
  const at::Tensor v = split_heads(ref_linear(memory, attn->wv->weight, attn->wv->bias), 2);
  const at::Tensor o = ref_attention(q, k, v, [](int64_t, int64_t, int64_t, int64_t) { return true; });
  EXPECT_LT(max_abs_diff(y, ref_linear(join_heads(o), attn->wo->weight, attn->wo->bias)), 1e-5);

  EXPECT_THROW(attn(x, torch::randn({2, 4, 7}), at::Tensor()), tessera::Error);
  EXPECT_THROW(attn(x, memory, torch::ones({2, 3, 5}, at::kBool)), tessera::Error);
  EXPECT_THROW(CrossAttention(CrossAttentionOptions{10, 6, 4}), tessera::Error);  // 10 % 4 != 0
}

}  // namespace
}  // namespace tessera::nn
