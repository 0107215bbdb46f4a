#include <gtest/gtest.h>

#include "arch_test_util.h"

#include <ATen/ATen.h>
#include <torch/optim/adam.h>

#include <set>

#include "architectures/megalodon.h"
#include "architectures/registry.h"
#include "core/config.h"
#include "core/error.h"
#include "core/train/weights.h"

namespace tessera {
namespace {

MegalodonConfig tiny(int64_t chunk = 8, int64_t heads = 2, bool swiglu = true, bool tie = false) {
  MegalodonConfig c;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = heads;
  c.z_dim = 16;
  c.value_dim = 24;
  c.swiglu = swiglu;
  c.ffn_hidden_dim = 40;
  c.cema_ndim = 4;
  c.chunk_size = chunk;
  c.norm_groups = 4;
  c.vocab_size = 50;
  c.tie_embeddings = tie;
  return c;
}

using testing::batch_of;
using testing::max_diff;

// Gives every zero-initialised parameter (norm scales, q/k scale and offset, biases) a random value,
// so that the tests exercise every term rather than the identity it starts as.
void perturb(torch::nn::Module& m, double scale = 0.2) {
  torch::NoGradGuard g;
  for (auto& p : m.parameters())
    if (p.abs().max().item<double>() == 0.0) p.normal_(0.0, scale);
}

TEST(Megalodon, ParameterCountMatchesClosedFormAndThePaper) {
  for (bool swiglu : {true, false})
    for (bool tie : {false, true})
      for (int64_t heads : {1, 2}) {
        const MegalodonConfig c = tiny(8, heads, swiglu, tie);
        MegalodonModel m(c);
        EXPECT_EQ(m.parameter_count(), c.parameter_count()) << swiglu << tie << heads;
      }
  // The official layouts (notes §1.7; the 7B model of the paper is mega7.3B).
  EXPECT_EQ(MegalodonConfig::preset("mega200M").parameter_count(), 220627968);
  EXPECT_EQ(MegalodonConfig::preset("mega1.3B").parameter_count(), 1342832640);
  EXPECT_EQ(MegalodonConfig::preset("mega7.1B").parameter_count(), 7117381632);
  const MegalodonConfig seven = MegalodonConfig::preset("mega7.3B");
  EXPECT_EQ(seven.parameter_count(), 7385817088);
  // 222,614,528 per layer, i.e. everything but embedding, head and final norm.
  EXPECT_EQ((seven.parameter_count() - 2 * 32000 * 4096 - 2 * 4096) / 32, 222614528);
  EXPECT_THROW(MegalodonConfig::preset("mega70B"), Error);
}

TEST(Megalodon, ParameterNamesAndInitialisation) {
  at::manual_seed(0);
  MegalodonModel m(tiny());
  std::set<std::string> names;
  for (const auto& [n, p] : parameter_tensors(m)) names.insert(n);
  for (const char* n : {"tok_embeddings.weight", "layers.0.timenorm.weight", "layers.0.timenorm.bias",
                        "layers.0.cema.alpha", "layers.0.cema.delta", "layers.0.cema.theta", "layers.0.cema.gamma",
                        "layers.0.cema.omega", "layers.0.rmsnorm.weight", "layers.0.wz.weight", "layers.0.wz.bias",
                        "layers.0.wv.weight", "layers.0.wr.weight", "layers.0.wh1.weight", "layers.1.wh2.weight",
                        "layers.0.qk_gamma", "layers.0.qk_beta", "layers.0.ffn_norm.weight", "layers.0.w3.weight",
                        "norm.weight", "norm.bias", "output.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_FALSE(names.count("layers.0.wh2.bias"));
  const auto params = m.named_parameters();
  // Plus-one norms start at zero; Kaiming(a = sqrt 5) linear weights have std 1/sqrt(3 fan_in).
  EXPECT_EQ(params["layers.0.rmsnorm.weight"].abs().max().item<double>(), 0.0);
  EXPECT_EQ(params["layers.0.ffn_norm.weight"].abs().max().item<double>(), 0.0);
  const at::Tensor w1 = params["layers.0.w1.weight"];  // [40, 32]
  EXPECT_NEAR(w1.std().item<double>(), 1.0 / std::sqrt(3.0 * 32), 0.15 / std::sqrt(3.0 * 32));
  const at::Tensor emb = params["tok_embeddings.weight"];
  EXPECT_LE(emb.abs().max().item<double>(), 3.0 / std::sqrt(32.0) + 1e-6);  // truncated at 3 sigma
}

TEST(Megalodon, IsCausalAcrossChunks) {
  at::manual_seed(1);
  MegalodonModel m(tiny(/*chunk=*/4));
  perturb(m);
  m.to(at::kDouble);  // float32 FFT rounding would blur "unchanged" to ~1e-6
  const int64_t T = 14;  // three full chunks and a short one
  const at::Tensor x = at::randint(50, {2, T}, at::kLong);
  at::NoGradGuard g;
  const at::Tensor base = m.forward(batch_of(x)).logits;
  for (int64_t t : {1, 5, 8, 13}) {
    at::Tensor y = x.clone();
    y.select(1, t).add_(1).remainder_(50);
    const at::Tensor out = m.forward(batch_of(y)).logits;
    EXPECT_LT(max_diff(out.narrow(1, 0, t), base.narrow(1, 0, t)), 1e-12) << t;
    // Later chunks see the change through the EMA and the norm statistics.
    EXPECT_GT(max_diff(out.narrow(1, t, T - t), base.narrow(1, t, T - t)), 1e-5) << t;
  }
}

// The layer written out from the paper's equations with explicit masked softmax attention over the
// whole sequence (float64): queries see keys of the same chunk (and document) at or before them.
at::Tensor reference_layer(MegalodonLayerImpl& l, const nn::RotaryEmbeddingImpl& rope, const at::Tensor& x,
                           int64_t chunk, int64_t heads, const at::Tensor& doc_ids) {
  const double eps = 1e-5;
  const int64_t B = x.size(0), L = x.size(1), z_dim = l.qk_gamma.size(1), dz = z_dim / heads;
  const int64_t v_dim = l.wv->weight.size(0), dv = v_dim / heads;
  auto lin = [](const torch::nn::Linear& f, const at::Tensor& a) {
    at::Tensor y = at::matmul(a, f->weight.t());
    return f->bias.defined() ? y + f->bias : y;
  };
  auto rms = [&](const at::Tensor& a) { return a / (a.square().mean(-1, true) + eps).sqrt(); };
  const at::Tensor xhat = l.timenorm->forward(x).y;  // TimestepNorm and CEMA have their own tests
  const at::Tensor xe = l.cema->forward(xhat).y;
  const at::Tensor m = rms(xe) * (1 + l.rmsnorm->weight);
  const at::Tensor zh = rms(lin(l.wz, m).view({B, L, heads, dz}));
  const at::Tensor g = (1 + l.qk_gamma).view({2, heads, dz}) / std::sqrt(static_cast<double>(dz));
  const at::Tensor b = l.qk_beta.view({2, heads, dz});
  const at::Tensor pos = at::arange(L, at::kLong).remainder(chunk);
  const at::Tensor q = rope.apply((zh * g[0] + b[0]).transpose(1, 2), pos);
  const at::Tensor k = rope.apply((zh * g[1] + b[1]).transpose(1, 2), pos);
  const at::Tensor v = at::silu(lin(l.wv, xhat)).view({B, L, heads, dv}).transpose(1, 2);
  const at::Tensor i = at::arange(L, at::kLong).view({L, 1}), j = at::arange(L, at::kLong).view({1, L});
  at::Tensor allowed = (j <= i).logical_and(j.div(chunk, "floor") == i.div(chunk, "floor")).view({1, 1, L, L});
  if (doc_ids.defined()) allowed = allowed.logical_and((doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1)).unsqueeze(1));
  const at::Tensor scores = at::matmul(q, k.transpose(-1, -2)).masked_fill(allowed.logical_not(), -INFINITY);
  const at::Tensor o = at::matmul(at::softmax(scores, -1), v).transpose(1, 2).reshape({B, L, v_dim});
  const at::Tensor r = at::silu(lin(l.wr, m));
  const at::Tensor yhat = x + lin(l.wh1, m) + lin(l.wh2, o * r);
  const at::Tensor mu = yhat.mean(-1, true), var = (yhat - mu).square().mean(-1, true);
  const at::Tensor f = (yhat - mu) / (var + eps).sqrt() * (1 + l.ffn_norm->weight) + l.ffn_norm->bias;
  return x + lin(l.w2, at::silu(lin(l.w1, f)) * lin(l.w3, f));
}

TEST(Megalodon, ChunkedLayerEqualsMaskedFullAttentionReference) {
  at::manual_seed(2);
  for (const int64_t L : {5, 8, 16, 21}) {
    const MegalodonConfig c = tiny(/*chunk=*/8, /*heads=*/2);
    MegalodonLayer layer(c);
    nn::RotaryEmbedding rope(c.z_dim / c.n_heads, c.chunk_size, c.rope_theta, nn::RopeLayout::HalfSplit);
    perturb(*layer);
    layer->to(at::kDouble);
    rope->to(at::kDouble);
    const at::Tensor x = at::randn({2, L, c.dim}, at::kDouble);
    at::Tensor docs = at::zeros({2, L}, at::kLong);
    docs.narrow(1, L / 3, L - L / 3).fill_(1);  // a document boundary inside a chunk
    at::NoGradGuard g;
    for (const at::Tensor& d : {at::Tensor(), docs}) {
      const at::Tensor got = layer->forward(x, *rope, d);
      const at::Tensor want = reference_layer(*layer, *rope, x, c.chunk_size, c.n_heads, d);
      EXPECT_LT(max_diff(got, want), 1e-10) << "L=" << L << " docs=" << d.defined();
    }
  }
}

TEST(Megalodon, IncrementalGenerationEqualsFullForwardWithOneChunkOfCache) {
  at::manual_seed(3);
  MegalodonModel m(tiny(/*chunk=*/4));
  perturb(m);
  m.to(at::kDouble);
  m.eval();
  const int64_t T = 19;  // several chunks: a cache that grew past one chunk would overflow
  const at::Tensor x = at::randint(50, {2, T}, at::kLong);
  at::NoGradGuard g;
  const at::Tensor full = m.forward(batch_of(x)).logits;
  // One token at a time.
  auto state = m.start_decoding(2, T);
  std::vector<at::Tensor> steps;
  for (int64_t t = 0; t < T; ++t) steps.push_back(m.step(x.narrow(1, t, 1), *state));
  EXPECT_LT(max_diff(at::cat(steps, 1), full), 1e-10);
  // Uneven pieces that straddle chunk boundaries (a prompt, then single tokens, then a block).
  auto state2 = m.start_decoding(2, T);
  std::vector<at::Tensor> pieces;
  int64_t at_ = 0;
  for (int64_t len : {6, 1, 1, 7, 4}) {
    pieces.push_back(m.step(x.narrow(1, at_, len), *state2));
    at_ += len;
  }
  EXPECT_LT(max_diff(at::cat(pieces, 1), full), 1e-10);
}

TEST(Megalodon, Float32CachedDecodingMatchesWithinRounding) {
  at::manual_seed(4);
  MegalodonModel m(tiny(/*chunk=*/8, /*heads=*/1, /*swiglu=*/false, /*tie=*/true));
  perturb(m, 0.1);
  m.eval();
  const at::Tensor x = at::randint(50, {1, 20}, at::kLong);
  at::NoGradGuard g;
  const at::Tensor full = m.forward(batch_of(x)).logits;
  auto state = m.start_decoding(1, 20);
  std::vector<at::Tensor> steps;
  for (int64_t t = 0; t < 20; ++t) steps.push_back(m.step(x.narrow(1, t, 1), *state));
  EXPECT_LT(max_diff(at::cat(steps, 1), full), 1e-4);
}

TEST(Megalodon, LearnsATinyBatch) {
  at::manual_seed(5);
  MegalodonModel m(tiny(/*chunk=*/8));
  const at::Tensor x = at::randint(50, {2, 17}, at::kLong);
  Batch b = batch_of(x.narrow(1, 0, 16));
  const at::Tensor targets = x.narrow(1, 1, 16);
  torch::optim::Adam opt(m.parameters(), torch::optim::AdamOptions(3e-3));
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    opt.zero_grad();
    const at::Tensor logits = m.forward(b).logits;
    const at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, 50}), targets.reshape({-1}));
    loss.backward();
    for (const auto& p : m.parameters()) ASSERT_TRUE(p.grad().defined() && p.grad().isfinite().all().item<bool>());
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.3 * first);
}

TEST(Megalodon, FlopsCountProjectionsChunkedAttentionAndCema) {
  const MegalodonConfig c = tiny(/*chunk=*/8, 2, /*swiglu=*/true);
  MegalodonModel m(c);
  const int64_t D = 32, z = 16, v = 24, F = 40, V = 50, L = 2;
  const int64_t matmul = L * (2 * D * v + D * z + D * D + v * D + 3 * D * F) + V * D;
  const FlopCount f = m.flops(16);
  EXPECT_EQ(f.matmul_params, matmul);
  // Two chunks of 8: a query attends to (8 + 1) / 2 = 4.5 keys on average.
  const double attention = 2.0 * 4.5 * (z + v) * L;
  const double cema = (7.5 * 5.0 + 3.0) * 32.0 / 16.0 * D * L;  // n = 2 * 16 = 32 points, log2 32 = 5
  EXPECT_DOUBLE_EQ(f.inference_per_token, 2.0 * matmul + attention + cema);
  EXPECT_DOUBLE_EQ(f.train_per_token, 3.0 * f.inference_per_token);
  // Attention per token stops growing once the sequence is longer than a chunk: from 64 to 128 tokens
  // only the FFT's log2 term grows, by 7.5 FLOPs x 2 points per token x D x layers.
  const double a64 = m.flops(64).inference_per_token, a128 = m.flops(128).inference_per_token;
  EXPECT_DOUBLE_EQ(a128 - a64, 7.5 * 2.0 * D * L);
}

TEST(Megalodon, BuildsFromTheRegistryWithStrictKeys) {
  YAML::Node node = YAML::Load("{arch: megalodon, dim: 32, n_layers: 1, z_dim: 16, value_dim: 32, "
                               "chunk_size: 16, norm_groups: 4, cema_ndim: 2}");
  ModelContext ctx;
  ctx.vocab_size = 260;
  const auto model = build_model(node, ctx);
  EXPECT_EQ(model->arch(), "megalodon");
  EXPECT_EQ(model->vocab_size(), 260);
  YAML::Node bad = YAML::Clone(node);
  bad["chunk_sise"] = 8;
  try {
    build_model(bad, ctx);
    FAIL() << "unknown key accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chunk_size"), std::string::npos) << e.what();
  }
  YAML::Node groups = YAML::Clone(node);
  groups["norm_groups"] = 5;
  EXPECT_THROW(build_model(groups, ctx), Error);
}

TEST(Megalodon, RejectsExplicitPositions) {
  MegalodonModel m(tiny());
  Batch b = batch_of(at::zeros({1, 4}, at::kLong));
  b.positions = at::arange(4);
  EXPECT_THROW(m.forward(b), Error);
}

}  // namespace
}  // namespace tessera
