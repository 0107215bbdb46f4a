#include <gtest/gtest.h>

#include "arch_test_util.h"

#include <ATen/ATen.h>
#include <torch/optim/adam.h>

#include <cmath>
#include <set>

#include "architectures/blt.h"
#include "architectures/dense.h"
#include "core/config.h"
#include "core/error.h"
#include "core/kernels/fused.h"
#include "core/train/autocast.h"
#include "core/train/weights.h"

namespace tessera {
namespace {

constexpr int64_t kVocab = 260;

using testing::batch_of;
using testing::error_of;
using testing::max_diff;

// h_E = h_D = 16, h_G = 32 = k·h_E (no input projection), window 8, tiny hash tables.
BLTConfig tiny(const std::string& mode = "static", const std::string& impl = "segments") {
  BLTConfig c;
  c.dim_local_encoder = 16;
  c.n_layers_local_encoder = 1;
  c.n_heads_local_encoder = 2;
  c.dim_global = 32;
  c.n_layers_global = 2;
  c.n_heads_global = 2;
  c.dim_local_decoder = 16;
  c.n_layers_local_decoder = 2;
  c.n_heads_local_decoder = 2;
  c.local_attention_window_len = 8;
  c.cross_attn_k = 2;
  c.cross_attn_nheads = 2;
  c.cross_attn_impl = impl;
  c.hash.vocab = 97;
  c.patcher.mode = mode;
  c.patcher.patch_size = 3;
  c.vocab_size = kVocab;
  c.max_seq_len = 64;
  c.multiple_of = 16;
  return c;
}

std::shared_ptr<DenseModel> tiny_entropy_model() {
  DenseConfig d;
  d.dim = 16;
  d.n_layers = 1;
  d.n_heads = 2;
  d.vocab_size = kVocab;
  d.max_seq_len = 64;
  d.multiple_of = 16;
  d.rope_layout = "interleaved";
  d.init_std = 0.5;  // a random model with entropies spread well below log(260)
  auto m = std::make_shared<DenseModel>(d);
  m->eval();
  return m;
}

// Text-like ids: letters with spaces and punctuation, so that space patching cuts at varied places.
at::Tensor texty(int64_t B, int64_t T, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor letters = at::randint(97, 123, {B, T}, at::kLong);
  const at::Tensor space = at::rand({B, T}).lt(0.25);
  at::Tensor x = at::where(space, at::full({B, T}, 32, at::kLong), letters) + blt::kByteOffset;
  x.select(1, 0).fill_(blt::kBosId);
  return x;
}

// An entropy-mode config whose θ is the median entropy of `em` over `x`, so boundaries vary.
BLTConfig entropy_config(LanguageModel& em, const at::Tensor& x) {
  BLTConfig c = tiny("entropy");
  at::NoGradGuard g;
  const at::Tensor lp = at::log_softmax(em.forward(batch_of(x)).logits.to(at::kFloat), -1);
  // Halfway between the two middle entropies: no entropy sits near θ, so float rounding between the
  // full and the cached entropy model cannot flip a boundary.
  const at::Tensor sorted = std::get<0>((-(lp.exp() * lp).sum(-1)).flatten().to(at::kDouble).sort());
  const int64_t n = sorted.size(0);
  c.patcher.threshold = 0.5 * (sorted[n / 2 - 1].item<double>() + sorted[n / 2].item<double>());
  return c;
}

// One tiny config per patching mode: static, space, and entropy with θ from entropy_config.
std::vector<std::pair<std::string, BLTConfig>> every_patch_mode(LanguageModel& em, const at::Tensor& x) {
  return {{"static", tiny("static")}, {"space", tiny("space")}, {"entropy", entropy_config(em, x)}};
}

void copy_parameters(torch::nn::Module& from, torch::nn::Module& to) {
  at::NoGradGuard g;
  auto dst = to.named_parameters();
  for (const auto& p : from.named_parameters()) dst[p.key()].copy_(p.value());
}

TEST(BLT, ShapesInEveryPatchModeAndErrors) {
  at::manual_seed(0);
  at::NoGradGuard g;
  for (const std::string mode : {"static", "space", "byte"}) {
    BLTModel m(tiny(mode));
    for (int64_t T : {1, 2, 5, 17, 64}) {
      const at::Tensor logits = m.forward(batch_of(texty(3, T, T))).logits;
      EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, T, kVocab})) << mode << " T=" << T;
      EXPECT_EQ(logits.scalar_type(), at::kFloat);
      EXPECT_TRUE(logits.isfinite().all().item<bool>()) << mode << " T=" << T;
    }
  }
  BLTModel m(tiny("static"));
  EXPECT_NE(error_of([&] { m.forward(batch_of(at::zeros({1, 65}, at::kLong))); }).find("max_seq_len"), std::string::npos);
  EXPECT_NE(error_of([&] { m.forward(Batch{}); }).find("'tokens'"), std::string::npos);
  BLTModel e(tiny("entropy"));
  EXPECT_NE(error_of([&] { e.forward(batch_of(texty(1, 4, 1))); }).find("set_entropy_model"), std::string::npos);
  // Explicit lengths must follow the released layout: sum N + 1, first patch 1.
  const at::Tensor x = texty(1, 5, 2);
  EXPECT_NE(error_of([&] { m.forward_with_patches(batch_of(x), at::tensor({1, 4}, at::kLong).view({1, 2})); }),
            "");
  EXPECT_NE(error_of([&] { m.forward_with_patches(batch_of(x), at::tensor({2, 4}, at::kLong).view({1, 2})); })
                .find("length 1"),
            std::string::npos);
}

TEST(BLT, ForwardUsesThePatcherAndForwardWithPatchesAgrees) {
  at::manual_seed(1);
  BLTModel m(tiny("space"));
  at::NoGradGuard g;
  const at::Tensor x = texty(2, 20, 3);
  const at::Tensor lengths = m.patch_lengths(batch_of(x));
  EXPECT_TRUE(lengths.sum(1).eq(21).all().item<bool>());  // the next byte included
  EXPECT_TRUE(at::equal(lengths, m.patcher().patch(x, {}, true)));
  EXPECT_LT(max_diff(m.forward(batch_of(x)).logits, m.forward_with_patches(batch_of(x), lengths).logits), 1e-6);
  // Other boundaries give other logits (the patches matter), but the first byte's prediction only
  // depends on patch 0 = BOS.
  const at::Tensor other = at::full({2, 21}, 1, at::kLong);  // byte patching
  const at::Tensor byte_logits = m.forward_with_patches(batch_of(x), other).logits;
  EXPECT_GT(max_diff(byte_logits, m.forward(batch_of(x)).logits), 1e-4);
  EXPECT_LT(max_diff(byte_logits.narrow(1, 0, 1), m.forward(batch_of(x)).logits.narrow(1, 0, 1)), 1e-6);
  // Boundaries that come with the batch (Batch::patch_lengths) are used instead of the patcher's.
  Batch with = batch_of(x);
  with.patch_lengths = other;
  EXPECT_LT(max_diff(m.forward(with).logits, byte_logits), 1e-6);
}

// Changing byte t changes no logit at positions < t (the predictions of bytes <= t) and does change the
// logit at t, with the boundaries recomputed from the perturbed bytes every time (static, space, and
// entropy mode with its entropy model): the patchers' incremental property plus the decoder lag.
TEST(BLT, IsCausalWithPatchesRecomputed) {
  const at::Tensor x = texty(2, 20, 7);
  auto em = tiny_entropy_model();
  em->to(at::kDouble);
  std::vector<std::pair<std::string, BLTConfig>> cases = {{"static", tiny("static")}, {"space", tiny("space")},
                                                          {"entropy", entropy_config(*em, x)}};
  cases[1].second.cross_attn_all_layers_encoder = true;
  cases[1].second.n_layers_local_encoder = 2;
  for (auto& [name, config] : cases) {
    at::manual_seed(2);
    BLTModel m(config);
    m.to(at::kDouble);
    if (name == "entropy") m.set_entropy_model(em);
    at::NoGradGuard g;
    // Not vacuous: the boundaries are neither every byte nor one long patch.
    const at::Tensor L = m.patch_lengths(batch_of(x));
    EXPECT_GT(L.size(1), 4) << name;
    EXPECT_LT(L.ne(0).sum().item<int64_t>(), 2 * 15) << name;
    const at::Tensor base = m.forward(batch_of(x)).logits;
    for (int64_t t = 1; t < x.size(1); ++t) {
      at::Tensor y = x.clone();
      // Flip letter <-> space so that space boundaries move too.
      y.narrow(1, t, 1).copy_(at::where(y.narrow(1, t, 1).eq(36), at::full_like(y.narrow(1, t, 1), 101),
                                        at::full_like(y.narrow(1, t, 1), 36)));
      const at::Tensor changed = m.forward(batch_of(y)).logits;
      EXPECT_LT(max_diff(base.narrow(1, 0, t), changed.narrow(1, 0, t)), 1e-10) << name << " t=" << t;
      EXPECT_GT(max_diff(base.narrow(1, t, 1), changed.narrow(1, t, 1)), 1e-8) << name << " t=" << t;
    }
  }
}

// The per-patch segment encoder attention and the per-byte k-way decoder attention equal the released
// dense-masked formulation, values and gradients, including rows whose last patch holds only the
// future byte (an encoder query with no key) and right-padded rows (patches with no bytes at all).
TEST(BLT, EfficientCrossAttentionEqualsMaskedReference) {
  for (const bool all_layers : {false, true}) {
    at::manual_seed(3);
    BLTConfig ce = tiny("space");
    ce.cross_attn_all_layers_encoder = all_layers;
    ce.cross_attn_all_layers_decoder = !all_layers;
    ce.n_layers_local_encoder = 2;
    ce.dim_global = 48;  // k·h_E = 32 != 48: the global input projection exists
    BLTConfig cm = ce;
    cm.cross_attn_impl = "masked";
    BLTModel fast(ce), ref(cm);
    copy_parameters(fast, ref);
    fast.to(at::kDouble);
    ref.to(at::kDouble);
    const at::Tensor x = texty(3, 19, 11);
    // Row 0: the next byte opens a patch (empty last encoder patch); rows differ in patch count.
    const at::Tensor lengths = at::tensor({1, 4, 2, 5, 7, 1, 0, 0,  //
                                           1, 1, 1, 1, 1, 1, 1, 13,  //
                                           1, 18, 1, 0, 0, 0, 0, 0},
                                          at::kLong)
                                   .view({3, 8});
    Batch b = batch_of(x);
    const at::Tensor lf = fast.forward_with_patches(b, lengths).logits;
    const at::Tensor lr = ref.forward_with_patches(b, lengths).logits;
    EXPECT_TRUE(lf.isfinite().all().item<bool>());
    EXPECT_LT(max_diff(lf, lr), 1e-10) << "all_layers_encoder=" << all_layers;
    // Gradients under one shared cotangent.
    auto rp = ref.named_parameters();
    at::manual_seed(4);
    const at::Tensor cot = at::randn(lf.sizes(), at::kDouble);
    (fast.forward_with_patches(b, lengths).logits.to(at::kDouble) * cot).sum().backward();
    (ref.forward_with_patches(b, lengths).logits.to(at::kDouble) * cot).sum().backward();
    for (const auto& p : fast.named_parameters()) {
      const at::Tensor gf = p.value().grad(), gr = rp[p.key()].grad();
      ASSERT_EQ(gf.defined(), gr.defined()) << p.key();
      if (gf.defined()) {
        EXPECT_LT(max_diff(gf, gr), 1e-9) << p.key();
        EXPECT_TRUE(gf.isfinite().all().item<bool>()) << p.key();
      }
    }
  }
}

// Byte-by-byte decoding with KV caches (entropy model, encoder, decoder, global model stepping only
// when a patch closes) gives the full forward's logits at every position, in every patch mode.
TEST(BLT, CachedGenerationEqualsFullForward) {
  const int64_t T = 22;
  const at::Tensor x = texty(2, T, 13);
  auto em = tiny_entropy_model();
  auto cases = every_patch_mode(*em, x);
  cases[0].second.patcher.max_patch_length = 0;
  cases[1].second.n_layers_local_encoder = 2;
  cases[1].second.cross_attn_all_layers_encoder = true;
  cases[1].second.cross_attn_all_layers_decoder = false;
  cases[1].second.dim_global = 48;
  cases[2].second.patcher.max_patch_length = 4;
  for (auto& [name, config] : cases) {
    SCOPED_TRACE(name);
    at::manual_seed(5);
    BLTModel m(config);
    m.eval();
    if (name == "entropy") m.set_entropy_model(em);
    at::NoGradGuard g;
    const at::Tensor L = m.patch_lengths(batch_of(x));
    EXPECT_GT(L.size(1), 4);
    EXPECT_LT(L.ne(0).sum().item<int64_t>(), 2 * 17);
    const at::Tensor full = m.forward(batch_of(x)).logits;
    auto state = m.start_decoding(2, T);
    for (int64_t t = 0; t < T; ++t)
      ASSERT_LT(max_diff(m.step(x.narrow(1, t, 1), *state), full.narrow(1, t, 1)), 1e-4) << "t=" << t;
    EXPECT_EQ(state->position, T);
    auto chunked = m.start_decoding(2, T);
    const at::Tensor parts = at::cat({m.step(x.narrow(1, 0, 9), *chunked), m.step(x.narrow(1, 9, 13), *chunked)}, 1);
    EXPECT_LT(max_diff(parts, full), 1e-4);
    EXPECT_NE(error_of([&] { m.step(x.narrow(1, 0, 1), *chunked); }).find("max_len"), std::string::npos);
  }
}

TEST(BLT, TrainsOnARepeatingPattern) {
  at::manual_seed(6);
  BLTModel m(tiny("space"));
  const at::Tensor text = (at::tensor({104, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 32}, at::kLong) +
                           blt::kByteOffset)
                              .repeat({2, 4});  // "hello world " repeated
  Batch b = batch_of(text.narrow(1, 0, 47));
  b.targets = text.narrow(1, 1, 47);
  const auto [before, after] = testing::overfit(m, b, 30, 1e-2);
  EXPECT_LT(after, 0.2 * before) << before << " -> " << after;
}

TEST(BLT, ParameterNamesFollowTheReleasedCheckpoints) {
  BLTConfig c = tiny("space");
  c.dim_global = 48;  // k·h_E = 32 != 48: the 7B-style global input projection
  c.hash.ngram_sizes = {3, 4, 5, 6, 7, 8};
  BLTModel m(c);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [n, p] : parameter_tensors(m)) shapes[n] = p.sizes().vec();
  const std::map<std::string, std::vector<int64_t>> expected = {
      {"local_encoder.tok_embeddings.weight", {260, 16}},
      {"encoder_hash_tok_embedding.0.weight", {97, 16}},
      {"encoder_hash_tok_embedding.5.weight", {97, 16}},
      {"local_encoder.layers.0.attention.wq.weight", {16, 16}},
      {"local_encoder.layers.0.attention_norm.weight", {16}},
      {"local_encoder.layers.0.feed_forward.w1.weight", {48, 16}},
      {"local_encoder.layers.0.ffn_norm.weight", {16}},
      {"local_encoder.patch_embedding_projection.weight", {32, 16}},
      {"local_encoder.cross_attn_layers.0.cross_attn_norm_q.weight", {16}},
      {"local_encoder.cross_attn_layers.0.cross_attn_norm_kv.weight", {16}},
      {"local_encoder.cross_attn_layers.0.wq.weight", {16, 16}},
      {"local_encoder.cross_attn_layers.0.wo.weight", {16, 16}},
      {"global_transformer.token_embedding_projection.weight", {48, 32}},
      {"global_transformer.layers.1.attention.wk.weight", {48, 48}},
      {"global_transformer.layers.1.feed_forward.w2.weight", {48, 128}},
      {"local_decoder.patch_embedding_projection.weight", {32, 48}},
      {"local_decoder.cross_attn_layers.1.wv.weight", {16, 16}},
      {"local_decoder.layers.1.attention.wo.weight", {16, 16}},
      {"local_decoder.norm.weight", {16}},
      {"local_decoder.output.weight", {260, 16}}};
  for (const auto& [n, s] : expected) {
    ASSERT_TRUE(shapes.count(n)) << n;
    EXPECT_EQ(shapes[n], s) << n;
  }
  EXPECT_FALSE(shapes.count("encoder_hash_tok_embedding.6.weight"));
  EXPECT_FALSE(shapes.count("local_encoder.cross_attn_layers.1.wq.weight"));  // last layer only (released)
  for (const auto& [n, s] : shapes) EXPECT_EQ(n.find("inner"), std::string::npos) << n;
  // Without the projection (k·h_E == h_G, the 1B layout) there is no such parameter.
  BLTModel plain(tiny("space"));
  for (const auto& [n, p] : parameter_tensors(plain))
    EXPECT_EQ(n.find("token_embedding_projection"), std::string::npos) << n;
  // The released presets' widths (§1.8) without building them (the hash tables alone are 3-4 B).
  EXPECT_EQ(BLTConfig::released_1b().dim_global, 2 * BLTConfig::released_1b().dim_local_encoder);
  EXPECT_EQ(nn::swiglu_hidden_dim(1024, 1.0, 256), 2816);
  EXPECT_EQ(nn::swiglu_hidden_dim(2048, 1.0, 256), 5632);
  EXPECT_EQ(BLTConfig::released_7b().cross_attn_k * BLTConfig::released_7b().dim_local_encoder, 5120);
}

TEST(BLT, FlopsMatchHandCount) {
  // h_E = h_D = 16 (SwiGLU 48), h_G = 32 (96), k = 2, windows 8, n_p = 4, 1 + 2 + 2 layers.
  BLTConfig c = tiny("static");
  c.patcher.patch_size = 4;
  BLTModel m(c);
  const FlopCount f = m.flops(32);
  const double block_E = 4 * 16 * 16 + 3 * 16 * 48;  // 2560
  const double block_G = 4 * 32 * 32 + 3 * 32 * 96;  // 13312
  // (13) global: 8 patches, causal mean 4.5; per byte / 4.
  const double global = (2 * 2 * block_G + 4 * 4.5 * 32 * 2) / 4;
  // (14) encoder / (15) decoder: window 8 over 32 bytes: mean (36 + 24·8)/32 = 7.125 keys.
  const double enc = 2 * block_E + 4 * 7.125 * 16;
  const double dec = 2 * (2 * block_E + 260 * 16) + 4 * 7.125 * 16 * 2;
  // (16) encoder cross (1 layer): wk, wv per byte; W_pe (2·16·16) and wq, wo for 2 queries per patch;
  // 2 queries per patch over its 4 bytes.
  const double enc_cross = 2 * (2 * 256 + (2 * 256 + 2 * 2 * 256) / 4.0) + 4 * (2 / 4.0) * 4 * 16;
  // (17) decoder cross (2 layers): wq, wo per byte; W_pd (2·16·32) and wk, wv for 2 vectors per patch;
  // each byte attends 2 keys.
  const double dec_cross = 2 * (2 * 2 * 256 + (2 * 16 * 32 + 2 * 2 * 2 * 256) / 4.0) + 2 * 4 * 2 * 16;
  EXPECT_DOUBLE_EQ(f.inference_per_token, global + enc + dec + enc_cross + dec_cross);
  EXPECT_DOUBLE_EQ(f.train_per_token, 3 * f.inference_per_token);
  EXPECT_EQ(f.matmul_params, std::llround(2 * block_G / 4 + block_E + 2 * block_E + 260 * 16 + 2 * 256 +
                                          (2 * 256 + 4 * 256) / 4.0 + 4 * 256 + (2 * 16 * 32 + 8 * 256) / 4.0));
  // Paper's checks (§8.12): the global term halves when n_p doubles; the local terms do not move.
  BLTConfig c8 = c;
  c8.patcher.patch_size = 8;
  const double f8 = BLTModel(c8).flops(32).inference_per_token;
  const double global8 = (2 * 2 * block_G + 4 * 2.5 * 32 * 2) / 8;  // 4 patches, mean 2.5
  const double enc_cross8 = 2 * (2 * 256 + (2 * 256 + 2 * 2 * 256) / 8.0) + 4 * (2 / 8.0) * 8 * 16;
  const double dec_cross8 = 2 * (2 * 2 * 256 + (2 * 16 * 32 + 2 * 2 * 2 * 256) / 8.0) + 2 * 4 * 2 * 16;
  EXPECT_DOUBLE_EQ(f8, global8 + enc + dec + enc_cross8 + dec_cross8);
}

TEST(BLT, DocumentsAreBlockCausal) {
  // Documents [0, 9) and [9, 18), patches [0] [1,3) [3,6) [6,9) [9] [10,13) [13,16) [16,19): the
  // released layout after an EOS, where the next document's first byte (its BOS) is a patch of its own.
  // Patch [6, 9) holds document 0's last byte, so it ends document 0 (the released EOS rule) and the
  // global model keeps patches 4.. apart from 0..3. Hash n-grams run over the packed row as released
  // (byte 9's 4-gram reads bytes 6..8), so only bytes 1..5 of document 0 are changed here.
  at::manual_seed(8);
  BLTConfig c = tiny("static");
  c.hash.ngram_sizes = {3, 4};
  BLTModel m(c);
  m.eval();
  at::NoGradGuard g;
  const at::Tensor x = texty(1, 18, 17);
  const at::Tensor lengths = at::tensor({1, 2, 3, 3, 1, 3, 3, 3}, at::kLong).view({1, 8});
  Batch packed = batch_of(x);
  packed.doc_ids = at::cat({at::zeros({1, 9}, at::kLong), at::ones({1, 9}, at::kLong)}, 1);
  const at::Tensor logits = m.forward_with_patches(packed, lengths).logits;
  Batch other = packed;
  other.tokens = x.clone();
  other.tokens.narrow(1, 1, 5).copy_(texty(1, 6, 99).narrow(1, 1, 5));
  const at::Tensor changed = m.forward_with_patches(other, lengths).logits;
  EXPECT_LT(max_diff(logits.narrow(1, 9, 9), changed.narrow(1, 9, 9)), 1e-6);
  EXPECT_GT(max_diff(logits.narrow(1, 1, 8), changed.narrow(1, 1, 8)), 1e-5);  // not vacuous
  // Without doc_ids the same change reaches document 1.
  EXPECT_GT(max_diff(m.forward_with_patches(batch_of(x), lengths).logits.narrow(1, 9, 9),
                     m.forward_with_patches(batch_of(other.tokens), lengths).logits.narrow(1, 9, 9)),
            1e-5);
}

TEST(BLT, StrictConfigKeys) {
  auto parse = [](const std::string& yaml) {
    return config::parse<BLTConfig>(config::load_yaml_string(yaml, "m.yaml"), "model", "m.yaml");
  };
  const BLTConfig c = parse(
      "arch: blt\ndim_global: 64\ncross_attn_k: 4\nhash: {ngram_sizes: [3, 4], vocab: 1000}\n"
      "patcher: {mode: entropy, threshold: 1.5, max_patch_length: 8}\n");
  EXPECT_EQ(c.dim_global, 64);
  EXPECT_EQ(c.cross_attn_k, 4);
  EXPECT_EQ(c.hash.ngram_sizes, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(c.hash.vocab, 1000);
  EXPECT_EQ(c.patcher.mode, "entropy");
  EXPECT_EQ(c.patcher.max_patch_length, 8);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_layout, "interleaved");
  const std::string unknown = error_of([&] { parse("arch: blt\ndim_globl: 4\n"); });
  EXPECT_NE(unknown.find("model.dim_globl"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("did you mean 'model.dim_global'"), std::string::npos) << unknown;
  const std::string nested = error_of([&] { parse("arch: blt\npatcher: {mod: space}\n"); });
  EXPECT_NE(nested.find("model.patcher.mod"), std::string::npos) << nested;
  EXPECT_NE(error_of([&] { parse("arch: blt\ncross_attn_impl: flex\n"); }).find("cross_attn_impl"), std::string::npos);
  BLTConfig bad = tiny();
  bad.dim_local_decoder = 32;
  EXPECT_NE(error_of([&] { BLTModel m(bad); }).find("model.dim_local_decoder"), std::string::npos);
  bad = tiny();
  bad.cross_attn_nheads = 3;
  EXPECT_NE(error_of([&] { BLTModel m(bad); }).find("model.cross_attn_nheads"), std::string::npos);
  // Documentation lists nested keys too (for `tessera info --arch blt`).
  const auto doc = config::document<BLTConfig>("model.");
  EXPECT_TRUE(std::any_of(doc.begin(), doc.end(), [](const std::string& l) { return l.find("patcher") != std::string::npos && l.find("mode") != std::string::npos; }));
  // The resolved config round-trips through YAML.
  BLTModel m(tiny("space"));
  const BLTConfig back = config::parse<BLTConfig>(m.config_yaml(), "model");
  EXPECT_EQ(config::dump_yaml(config::to_yaml(back)), config::dump_yaml(m.config_yaml()));
}

// bf16 autocast (on the CPU here: the same dtypes flow as on CUDA, where linear layers hand bf16 to the
// blocks and the fused norms keep the residual stream in float32): a training step and cached decoding
// run in every patching mode, with the global model's input projection (dim_global 48 ≠ k · 16).
TEST(BLT, TrainsAndDecodesUnderBf16Autocast) {
  const int64_t T = 22;
  const at::Tensor x = texty(2, T, 21);
  auto em = tiny_entropy_model();
  auto cases = every_patch_mode(*em, x);
  for (auto& [name, config] : cases) {
    SCOPED_TRACE(name);
    config.dim_global = 48;
    at::manual_seed(7);
    BLTModel m(config);
    if (name == "entropy") m.set_entropy_model(em);
    at::Tensor loss;
    {
      const AutocastGuard autocast(at::kCPU, true);
      const at::Tensor logits = m.forward(batch_of(x.narrow(1, 0, T - 1))).logits;
      loss = kernels::cross_entropy_nll(logits.reshape({-1, logits.size(-1)}), x.narrow(1, 1, T - 1).reshape({-1}))
                 .mean();
    }
    loss.backward();
    EXPECT_TRUE(std::isfinite(loss.item<double>()));
    int64_t with_grad = 0;
    for (const auto& p : m.parameters()) {
      if (p.grad().defined()) {
        ++with_grad;
        EXPECT_TRUE(p.grad().isfinite().all().item<bool>());
      }
    }
    EXPECT_GT(with_grad, 10);
    m.eval();
    at::NoGradGuard no_grad;
    const AutocastGuard autocast(at::kCPU, true);
    auto state = m.start_decoding(2, T);
    for (int64_t t = 0; t < 6; ++t) EXPECT_TRUE(m.step(x.narrow(1, t, 1), *state).isfinite().all().item<bool>());
  }
}

}  // namespace
}  // namespace tessera
