// attention(), build_attention_mask() and the masks they implement, against float64 softmax
// attention with an explicit per-(query, key) rule. Tolerance 2e-5 max-abs: float32 SDPA on N(0,1)
// inputs with head_dim 8, outputs of magnitude ~1.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "core/error.h"
#include "core/nn/attention.h"
#include "nn_test_util.h"

namespace tessera::nn {
namespace {

using testing::allowed_from;
using testing::max_abs_diff;
using testing::ref_attention;

constexpr double kTol = 2e-5;

struct QKV {
  at::Tensor q, k, v;
};

QKV random_qkv(int64_t B, int64_t Hq, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D = 8) {
  return {torch::randn({B, Hq, Tq, D}), torch::randn({B, Hkv, Tk, D}), torch::randn({B, Hkv, Tk, D})};
}

void expect_matches_reference(const QKV& t, const MaskSpec& spec, const char* what) {
  const at::Tensor out = attention(t.q, t.k, t.v, spec);
  ASSERT_FALSE(out.isnan().any().item<bool>()) << what;
  EXPECT_LT(max_abs_diff(out, ref_attention(t.q, t.k, t.v, allowed_from(spec))), kTol) << what;
}

TEST(Attention, CausalUsesFastPathAndMatchesReference) {
  torch::manual_seed(10);
  MaskSpec spec;  // causal by default
  bool use_is_causal = false;
  EXPECT_FALSE(build_attention_mask(spec, 2, 6, 6, torch::kCPU, &use_is_causal).defined());
  EXPECT_TRUE(use_is_causal);
  // Without the out-flag the causal mask is materialised.
  const at::Tensor m = build_attention_mask(spec, 2, 6, 6, torch::kCPU, nullptr);
  ASSERT_TRUE(m.defined());
  EXPECT_TRUE(m[0][0].equal(torch::ones({6, 6}, at::kBool).tril()));
  expect_matches_reference(random_qkv(2, 2, 2, 6, 6), spec, "causal");
}

TEST(Attention, NoMask) {
  torch::manual_seed(11);
  MaskSpec spec;
  spec.causal = false;
  bool use_is_causal = true;
  EXPECT_FALSE(build_attention_mask(spec, 2, 5, 7, torch::kCPU, &use_is_causal).defined());
  EXPECT_FALSE(use_is_causal);
  expect_matches_reference(random_qkv(2, 2, 2, 5, 7), spec, "no mask");
}

TEST(Attention, DocumentIdsBlockDiagonal) {
  torch::manual_seed(12);
  MaskSpec spec;
  spec.q_doc_ids = torch::tensor({0, 0, 1, 1, 1, 2, 2, 0, 0, 0, 0, 3, 3, 3}, at::kInt).view({2, 7});
  spec.kv_doc_ids = spec.q_doc_ids;
  const at::Tensor m = build_attention_mask(spec, 2, 7, 7, torch::kCPU, nullptr);
  EXPECT_EQ(m.sizes(), (std::vector<int64_t>{2, 1, 7, 7}));
  EXPECT_FALSE(m[0][0][2][1].item<bool>());  // doc 1 does not see doc 0
  EXPECT_TRUE(m[0][0][4][2].item<bool>());
  expect_matches_reference(random_qkv(2, 2, 2, 7, 7), spec, "causal packed documents");
  spec.causal = false;
  expect_matches_reference(random_qkv(2, 2, 2, 7, 7), spec, "bidirectional packed documents");
}

TEST(Attention, SlidingWindow) {
  torch::manual_seed(13);
  MaskSpec spec;
  spec.window = 3;
  expect_matches_reference(random_qkv(2, 2, 2, 9, 9), spec, "causal window 3");
  spec.causal = false;
  expect_matches_reference(random_qkv(2, 2, 2, 9, 9), spec, "symmetric window 3");
  // A window covering the whole sequence changes nothing: the is_causal fast path still applies.
  spec.causal = true;
  spec.window = 9;
  bool use_is_causal = false;
  EXPECT_FALSE(build_attention_mask(spec, 1, 9, 9, torch::kCPU, &use_is_causal).defined());
  EXPECT_TRUE(use_is_causal);
}

// Long causal windows go block-local (each block of queries against its own and the previous block);
// the result and the gradients equal the masked [T, T] computation, with and without documents, for
// lengths that are and are not multiples of the window, and with grouped-query heads.
TEST(Attention, BlockLocalWindowMatchesReferenceAndDenseGradients) {
  torch::manual_seed(17);
  for (const int64_t T : {16, 19, 37}) {
    for (const bool docs : {false, true}) {
      MaskSpec spec;
      spec.window = 4;
      if (docs) {
        spec.q_doc_ids = torch::arange(T).div(7, "floor").view({1, T}).expand({2, T}).clone();
        spec.q_doc_ids[1].fill_(0);  // the second row is one document
        spec.kv_doc_ids = spec.q_doc_ids;
      }
      ASSERT_TRUE(uses_block_local(spec, T, T));
      QKV t = random_qkv(2, 4, 2, T, T);
      expect_matches_reference(t, spec, docs ? "block-local window, documents" : "block-local window");
      // Gradients against the dense path (an all-true extra mask keeps the same rule but no block route).
      MaskSpec dense = spec;
      dense.extra = torch::ones({1, 1, T, T}, torch::kBool);
      ASSERT_FALSE(uses_block_local(dense, T, T));
      std::vector<at::Tensor> grads[2];
      for (int route = 0; route < 2; ++route) {
        const at::Tensor q = t.q.clone().requires_grad_(true), k = t.k.clone().requires_grad_(true),
                         v = t.v.clone().requires_grad_(true);
        const at::Tensor out = attention(q, k, v, route == 0 ? spec : dense);
        (out * torch::cos(out)).sum().backward();
        grads[route] = {q.grad(), k.grad(), v.grad()};
      }
      for (int i = 0; i < 3; ++i) EXPECT_LT(max_abs_diff(grads[0][i], grads[1][i]), 1e-4) << "T " << T << " grad " << i;
    }
  }
  MaskSpec short_window;
  short_window.window = 8;
  EXPECT_FALSE(uses_block_local(short_window, 16, 16));  // fewer than kBlockLocalMinWindows windows
  short_window.q_offset = 3;
  EXPECT_FALSE(uses_block_local(short_window, 64, 64));
}

TEST(Attention, QueryOffsetAgainstLongerKeys) {
  torch::manual_seed(14);
  MaskSpec spec;
  spec.q_offset = 5;
  expect_matches_reference(random_qkv(2, 2, 2, 3, 8), spec, "q_offset 5, Tq 3, Tk 8");
  spec.window = 4;
  expect_matches_reference(random_qkv(2, 2, 2, 3, 8), spec, "q_offset 5 with window 4");
  // One new token at the end of the cache sees every key: no mask at all.
  MaskSpec decode;
  decode.q_offset = 7;
  bool use_is_causal = true;
  EXPECT_FALSE(build_attention_mask(decode, 2, 1, 8, torch::kCPU, &use_is_causal).defined());
  EXPECT_FALSE(use_is_causal);
  expect_matches_reference(random_qkv(2, 2, 2, 1, 8), decode, "decode one token");
}

TEST(Attention, GroupedQueryAttention) {
  torch::manual_seed(15);
  MaskSpec causal;
  expect_matches_reference(random_qkv(2, 4, 2, 6, 6), causal, "GQA causal (fast path)");
  MaskSpec docs;
  docs.q_doc_ids = torch::tensor({0, 0, 0, 1, 1, 1}, at::kLong).view({1, 6});
  docs.kv_doc_ids = docs.q_doc_ids;
  expect_matches_reference(random_qkv(2, 4, 2, 6, 6), docs, "GQA with a mask");
  MaskSpec offset;
  offset.q_offset = 2;
  expect_matches_reference(random_qkv(1, 4, 1, 3, 5), offset, "MQA with q_offset");
}

TEST(Attention, ExtraMask) {
  torch::manual_seed(16);
  MaskSpec spec;
  spec.causal = false;
  spec.extra = torch::rand({2, 1, 5, 6}) > 0.4;
  expect_matches_reference(random_qkv(2, 2, 2, 5, 6), spec, "extra [B,1,Tq,Tk]");
  spec.extra = torch::rand({1, 2, 5, 6}) > 0.4;  // per head
  expect_matches_reference(random_qkv(2, 2, 2, 5, 6), spec, "extra [1,H,Tq,Tk]");
  spec.extra = torch::rand({2, 1, 1, 6}) > 0.3;  // key padding
  expect_matches_reference(random_qkv(2, 2, 2, 5, 6), spec, "extra [B,1,1,Tk]");
  spec.causal = true;
  spec.extra = torch::rand({5, 5}) > 0.3;
  expect_matches_reference(random_qkv(2, 2, 2, 5, 5), spec, "causal & extra [Tq,Tk]");
}

TEST(Attention, ExplicitScale) {
  torch::manual_seed(17);
  const QKV t = random_qkv(1, 2, 2, 4, 4);
  MaskSpec spec;
  const at::Tensor out = attention(t.q, t.k, t.v, spec, 0.3);
  EXPECT_LT(max_abs_diff(out, ref_attention(t.q, t.k, t.v, allowed_from(spec), 0.3)), kTol);
}

TEST(Attention, FullyMaskedRowsGiveZerosAndFiniteGradients) {
  torch::manual_seed(18);
  MaskSpec spec;
  spec.causal = false;
  spec.q_doc_ids = torch::tensor({0, 1, 5, 1}, at::kLong).view({1, 4});  // doc 5 has no keys
  spec.kv_doc_ids = torch::tensor({0, 0, 1, 1, 1}, at::kLong).view({1, 5});
  QKV t = random_qkv(2, 4, 2, 4, 5);
  for (at::Tensor* p : {&t.q, &t.k, &t.v}) p->requires_grad_(true);
  const at::Tensor out = attention(t.q, t.k, t.v, spec);
  EXPECT_TRUE(out.select(2, 2).eq(0).all().item<bool>());
  EXPECT_LT(max_abs_diff(out, ref_attention(t.q, t.k, t.v, allowed_from(spec))), kTol);
  out.square().sum().backward();
  for (const at::Tensor* p : {&t.q, &t.k, &t.v}) EXPECT_TRUE(p->grad().isfinite().all().item<bool>());
  EXPECT_TRUE(t.q.grad().select(2, 2).eq(0).all().item<bool>());  // the empty row gets no gradient

  // Same through an all-false extra row, with causal on.
  MaskSpec extra;
  extra.extra = torch::ones({4, 4}, at::kBool);
  extra.extra[1].fill_(false);
  const QKV u = random_qkv(1, 2, 2, 4, 4);
  const at::Tensor y = attention(u.q, u.k, u.v, extra);
  EXPECT_TRUE(y.select(2, 1).eq(0).all().item<bool>());
  EXPECT_LT(max_abs_diff(y, ref_attention(u.q, u.k, u.v, allowed_from(extra))), kTol);
}

// The explicit two-GEMM path (used on CUDA for head dims above 256) against the same float64
// reference, with value heads wider than query/key heads, documents, GQA and a decoding offset.
TEST(Attention, ExplicitPathMatchesReference) {
  torch::manual_seed(19);
  MaskSpec spec;
  spec.q_doc_ids = torch::tensor({0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3}, at::kLong).view({2, 6});
  spec.kv_doc_ids = spec.q_doc_ids;
  const at::Tensor q = torch::randn({2, 4, 6, 8}), k = torch::randn({2, 2, 6, 8}), v = torch::randn({2, 2, 6, 40});
  const at::Tensor out = attention_explicit(q, k, v, spec);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 4, 6, 40}));
  EXPECT_LT(max_abs_diff(out, ref_attention(q, k, v, allowed_from(spec))), kTol);
  MaskSpec offset;
  offset.q_offset = 3;
  const at::Tensor q2 = torch::randn({1, 2, 2, 8}), k2 = torch::randn({1, 2, 5, 8}), v2 = torch::randn({1, 2, 5, 300});
  EXPECT_LT(max_abs_diff(attention_explicit(q2, k2, v2, offset, 0.5), attention(q2, k2, v2, offset, 0.5)), kTol);
}

// On CUDA, attention() routes wide heads and decode-sized queries to the explicit path: check both
// routes (causal full sequence with 300-wide values; 2 queries against a cache with documents) against
// the float64 reference. Skipped without a GPU.
TEST(Attention, CudaExplicitRoutesMatchReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(20);
  const auto cuda = torch::Device(torch::kCUDA);
  MaskSpec causal;
  const at::Tensor q = torch::randn({2, 2, 7, 8}), k = torch::randn({2, 2, 7, 8}), v = torch::randn({2, 2, 7, 300});
  EXPECT_LT(max_abs_diff(attention(q.to(cuda), k.to(cuda), v.to(cuda), causal).cpu(),
                         ref_attention(q, k, v, allowed_from(causal))),
            kTol);
  MaskSpec decode;
  decode.q_offset = 4;
  decode.q_doc_ids = torch::tensor({0, 1}, at::kLong).view({1, 2});
  decode.kv_doc_ids = torch::tensor({0, 0, 0, 1, 1, 1}, at::kLong).view({1, 6});
  const at::Tensor q2 = torch::randn({1, 4, 2, 8}), k2 = torch::randn({1, 2, 6, 8}), v2 = torch::randn({1, 2, 6, 8});
  MaskSpec cuda_decode = decode;
  cuda_decode.q_doc_ids = decode.q_doc_ids.to(cuda);
  cuda_decode.kv_doc_ids = decode.kv_doc_ids.to(cuda);
  EXPECT_LT(max_abs_diff(attention(q2.to(cuda), k2.to(cuda), v2.to(cuda), cuda_decode).cpu(),
                         ref_attention(q2, k2, v2, allowed_from(decode))),
            kTol);
}

TEST(Attention, Errors) {
  torch::manual_seed(19);
  MaskSpec spec;
  const QKV gqa = random_qkv(1, 3, 2, 4, 4);
  EXPECT_THROW(attention(gqa.q, gqa.k, gqa.v, spec), tessera::Error);  // 2 kv heads, 3 q heads
  const QKV t = random_qkv(1, 2, 2, 4, 4);
  EXPECT_THROW(attention(t.q, torch::randn({1, 2, 4, 6}), t.v, spec), tessera::Error);
  EXPECT_THROW(attention(t.q.view({2, 4, 8}), t.k, t.v, spec), tessera::Error);

  MaskSpec only_q;
  only_q.q_doc_ids = torch::zeros({1, 4}, at::kLong);
  EXPECT_THROW(attention(t.q, t.k, t.v, only_q), tessera::Error);
  MaskSpec bad_len;
  bad_len.q_doc_ids = torch::zeros({1, 3}, at::kLong);
  bad_len.kv_doc_ids = torch::zeros({1, 4}, at::kLong);
  EXPECT_THROW(attention(t.q, t.k, t.v, bad_len), tessera::Error);
  MaskSpec three_d;
  three_d.extra = torch::ones({1, 4, 4}, at::kBool);
  EXPECT_THROW(attention(t.q, t.k, t.v, three_d), tessera::Error);
  MaskSpec not_bool;
  not_bool.extra = torch::ones({4, 4});
  EXPECT_THROW(attention(t.q, t.k, t.v, not_bool), tessera::Error);
  MaskSpec wrong_heads;
  wrong_heads.extra = torch::ones({1, 3, 4, 4}, at::kBool);
  EXPECT_THROW(attention(t.q, t.k, t.v, wrong_heads), tessera::Error);
}

}  // namespace
}  // namespace tessera::nn
