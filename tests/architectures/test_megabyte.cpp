#include <gtest/gtest.h>

#include "arch_test_util.h"

#include <ATen/ATen.h>

#include <cmath>
#include <torch/optim/adam.h>

#include "architectures/megabyte.h"
#include "core/config.h"
#include "core/error.h"
#include "core/kernels/fused.h"
#include "core/train/autocast.h"
#include "core/train/weights.h"

namespace tessera {
namespace {

constexpr int64_t kVocab = 260;  // the byte layout's size

MegabyteConfig tiny(int64_t patch = 4, const std::string& pos = "learned", bool tie = true) {
  MegabyteConfig c;
  c.patch_size = patch;
  c.global_dim = 8 * patch;  // D_G = 8
  c.global_layers = 2;
  c.global_heads = 2;
  c.local_dim = 16;
  c.local_layers = 2;
  c.local_heads = 2;
  c.vocab_size = kVocab;
  c.max_seq_len = 64;
  c.multiple_of = 16;
  c.pos_embedding = pos;
  c.tie_embeddings = tie;
  c.init_std = 0.02;
  return c;
}

using testing::batch_of;
using testing::error_of;
using testing::max_diff;

TEST(Megabyte, ShapesForAnyLengthAndErrors) {
  at::manual_seed(0);
  MegabyteModel m(tiny());
  at::NoGradGuard g;
  for (int64_t T : {1, 3, 4, 13, 16, 64}) {
    const at::Tensor logits = m.forward(batch_of(at::randint(kVocab, {2, T}, at::kLong))).logits;
    EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, T, kVocab})) << "T=" << T;
    EXPECT_TRUE(logits.isfinite().all().item<bool>());
  }
  EXPECT_NE(error_of([&] { m.forward(batch_of(at::zeros({1, 65}, at::kLong))); }).find("max_seq_len"),
            std::string::npos);
  EXPECT_NE(error_of([&] { m.forward(Batch{}); }).find("'tokens'"), std::string::npos);
}

TEST(Megabyte, ParameterNamesAndCountMatchClosedForm) {
  at::manual_seed(0);
  MegabyteModel m(tiny());
  std::set<std::string> names;
  for (const auto& [n, p] : parameter_tensors(m)) names.insert(n);
  for (const char* n :
       {"global_model.tok_embeddings.weight", "global_model.pos_embeddings.weight", "global_model.pad",
        "global_model.layers.0.attention.wq.weight", "global_model.layers.1.feed_forward.w2.weight",
        "global_model.layers.0.attention_norm.weight", "global_model.norm.weight", "global_to_local.weight",
        "local_model.tok_embeddings.weight", "local_model.pad", "local_model.layers.1.attention.wo.weight",
        "local_model.layers.0.ffn_norm.weight", "local_model.norm.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_FALSE(names.count("local_model.output.weight"));  // tied by default (eq. 6)

  // P = 4, D_G = 8, global width 32 (SwiGLU hidden 2·4·32/3 = 85 -> 96), local width 16 (42 -> 48).
  const int64_t P = 4, Dg = 8, Dw = 32, hg = 96, Dl = 16, hl = 48, V = kVocab, S = 64, L = 2;
  const int64_t global = V * Dg /*E^global-embed*/ + S * Dg /*E^pos*/ + P * Dg /*pad*/ +
                         L * (4 * Dw * Dw + 3 * Dw * hg + 2 * Dw) + Dw /*final norm*/;
  const int64_t local = V * Dl /*E^local-embed*/ + Dl /*pad*/ + L * (4 * Dl * Dl + 3 * Dl * hl + 2 * Dl) + Dl;
  EXPECT_EQ(m.parameter_count(), global + Dg * Dl /*w^GL*/ + local);
  MegabyteModel untied(tiny(4, "learned", false));
  EXPECT_EQ(untied.parameter_count(), m.parameter_count() + V * Dl);
  MegabyteModel rope(tiny(4, "rope"));
  EXPECT_EQ(rope.parameter_count(), m.parameter_count() - S * Dg);
}

TEST(Megabyte, FlopsMatchHandCount) {
  MegabyteModel m(tiny());
  const int64_t P = 4, Dg = 8, Dw = 32, hg = 96, Dl = 16, hl = 48, V = kVocab, L = 2;
  const int64_t global_matmul = L * (4 * Dw * Dw + 3 * Dw * hg);                  // 26624
  const int64_t local_matmul = L * (4 * Dl * Dl + 3 * Dl * hl) + Dg * Dl + V * Dl;  // 6656 + 128 + 4160
  const FlopCount f = m.flops(32);
  EXPECT_EQ(f.matmul_params, global_matmul / P + local_matmul);
  EXPECT_EQ(f.matmul_params, 26624 / 4 + 10944);
  // 32 bytes = 8 patches: patch k attends to k + 1 patches, mean 4.5; byte p of a patch to p + 1 bytes,
  // mean 2.5. Attention costs 2·2·attended·width per layer per position; global per patch, i.e. /P per byte.
  const double global_fwd = (2.0 * global_matmul + 4.0 * 4.5 * Dw * L) / P;
  const double local_fwd = 2.0 * local_matmul + 4.0 * 2.5 * Dl * L;
  EXPECT_DOUBLE_EQ(f.inference_per_token, global_fwd + local_fwd);
  EXPECT_DOUBLE_EQ(f.train_per_token, 3.0 * (global_fwd + local_fwd));
  // A partial last patch counts as a patch: 30 bytes -> 8 patches too.
  EXPECT_DOUBLE_EQ(m.flops(30).inference_per_token, f.inference_per_token);
}

// Changing token t changes no logit at positions < t (the predictions of bytes <= t), and does change
// the logit at t: the patch-sized and one-byte offsets leak nothing. Checked in float64 for every t.
TEST(Megabyte, IsCausalAtEveryPosition) {
  for (const std::string pos : {"learned", "rope"}) {
    at::manual_seed(1);
    MegabyteModel m(tiny(4, pos));
    m.to(at::kDouble);
    at::NoGradGuard g;
    const int64_t T = 14;
    const at::Tensor x = at::randint(kVocab, {2, T}, at::kLong);
    const at::Tensor base = m.forward(batch_of(x)).logits;
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor y = x.clone();
      y.narrow(1, t, 1).add_(1).remainder_(kVocab);
      const at::Tensor changed = m.forward(batch_of(y)).logits;
      if (t > 0) {
        EXPECT_EQ(max_diff(base.narrow(1, 0, t), changed.narrow(1, 0, t)), 0.0) << pos << " t=" << t;
      }
      EXPECT_GT(max_diff(base.narrow(1, t, 1), changed.narrow(1, t, 1)), 1e-6) << pos << " t=" << t;
    }
  }
}

// For P = 4 (learned positions, tied), 3 (RoPE, untied), 1 (degenerate: one byte per patch) and 8 (RoPE,
// fewer than three patches), over 21 bytes.
TEST(Megabyte, CachedDecodingEqualsFullForward) {
  for (const auto& [patch, pos, tie] : {std::make_tuple(int64_t{4}, std::string("learned"), true),
                                        std::make_tuple(int64_t{3}, std::string("rope"), false),
                                        std::make_tuple(int64_t{1}, std::string("learned"), true),
                                        std::make_tuple(int64_t{8}, std::string("rope"), true)}) {
    SCOPED_TRACE("patch_size " + std::to_string(patch) + ", " + pos + (tie ? ", tied" : ", untied"));
    at::manual_seed(2);
    MegabyteModel m(tiny(patch, pos, tie));
    m.eval();
    const int64_t T = 21;
    const at::Tensor x = at::randint(kVocab, {2, T}, at::kLong);
    at::NoGradGuard g;
    const at::Tensor full = m.forward(batch_of(x)).logits;
    // Byte by byte: the global model runs when a patch closes, the local model per byte.
    auto state = m.start_decoding(2, T);
    for (int64_t t = 0; t < T; ++t)
      ASSERT_LT(max_diff(m.step(x.narrow(1, t, 1), *state), full.narrow(1, t, 1)), 1e-5) << "t=" << t;
    EXPECT_EQ(state->position, T);
    // A prompt of 7, then chunks of 5 and 9 (a chunk may open several patches), then all at once.
    auto chunked = m.start_decoding(2, T);
    std::vector<at::Tensor> parts{m.step(x.narrow(1, 0, 7), *chunked), m.step(x.narrow(1, 7, 5), *chunked),
                                  m.step(x.narrow(1, 12, 9), *chunked)};
    EXPECT_LT(max_diff(at::cat(parts, 1), full), 1e-5);
    auto whole = m.start_decoding(2, T);
    EXPECT_LT(max_diff(m.step(x, *whole), full), 1e-5);
    EXPECT_NE(error_of([&] { m.step(x.narrow(1, 0, 1), *whole); }).find("max_len"), std::string::npos);
  }
}

TEST(Megabyte, DocumentsAtPatchBoundariesBehaveAsIfAlone) {
  for (const std::string pos : {"learned", "rope"}) {
    at::manual_seed(3);
    MegabyteModel m(tiny(4, pos));
    m.eval();
    at::NoGradGuard g;
    const at::Tensor x = at::randint(kVocab, {1, 18}, at::kLong);
    Batch packed = batch_of(x);
    packed.doc_ids = at::cat({at::zeros({1, 8}, at::kLong), at::ones({1, 10}, at::kLong)}, 1);
    const at::Tensor logits = m.forward(packed).logits;
    // Document 1 alone, at the same absolute positions, gives the same logits; so does document 0,
    // except at its last position, whose target is document 1's first byte (predicted with no context).
    Batch second = batch_of(x.narrow(1, 8, 10));
    second.positions = at::arange(8, 18, at::kLong);
    EXPECT_LT(max_diff(logits.narrow(1, 8, 10), m.forward(second).logits), 1e-5) << pos;
    EXPECT_LT(max_diff(logits.narrow(1, 0, 7), m.forward(batch_of(x.narrow(1, 0, 8))).logits.narrow(1, 0, 7)),
              1e-5)
        << pos;
  }
}

// Documents starting inside patches (one of them shorter than a patch, inside one): the logits that
// predict a document's bytes do not change whatever the other documents hold.
TEST(Megabyte, DocumentsInsidePatchesAreIsolated) {
  for (const std::string pos : {"learned", "rope"}) {
    at::manual_seed(5);
    MegabyteModel m(tiny(4, pos));
    m.eval();
    at::NoGradGuard g;
    const int64_t T = 18;
    const at::Tensor x = at::randint(kVocab, {2, T}, at::kLong);
    // Row 0: [0, 5) [5, 7) [7, 18); row 1: [0, 10) [10, 18).
    const at::Tensor doc = at::tensor({0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  //
                                       0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
                                      at::kLong)
                              .view({2, T});
    Batch packed = batch_of(x);
    packed.doc_ids = doc;
    const at::Tensor logits = m.forward(packed).logits;
    // logits[t] predict token t + 1 and belong to its document (the last position to the last token's).
    const at::Tensor owner = at::cat({doc.narrow(1, 1, T - 1), doc.narrow(1, T - 1, 1)}, 1);
    for (int64_t d = 0; d < 3; ++d) {
      Batch other = batch_of(at::where(doc.eq(d), x, at::randint(kVocab, {2, T}, at::kLong)));
      other.doc_ids = doc;
      const at::Tensor diff = (m.forward(other).logits - logits).abs().amax(-1);  // [2, T]
      EXPECT_LT(diff.masked_select(owner.eq(d)).max().item<double>(), 1e-5) << pos << " document " << d;
      if (d == 2) {
        EXPECT_GT(diff.masked_select(owner.ne(d)).max().item<double>(), 1e-4);  // not vacuous
      }
    }
  }
}

TEST(Megabyte, TrainsOnARepeatingPattern) {
  at::manual_seed(4);
  MegabyteModel m(tiny());
  const at::Tensor pattern = (at::arange(10, at::kLong) + 97).repeat({2, 4});  // "abcdefghij" repeated
  Batch b = batch_of(pattern.narrow(1, 0, 39));
  b.targets = pattern.narrow(1, 1, 39);
  const auto [before, after] = testing::overfit(m, b, 40, 1e-2);
  EXPECT_LT(after, 0.1 * before) << before << " -> " << after;
}

// Next byte = a fixed random function of the previous byte, from random starts: nothing periodic to
// memorise, so only a model that reads the byte before each position (inside a patch through the local
// model, across a patch boundary through the global model) gets the loss near zero.
TEST(Megabyte, LearnsAFunctionOfThePreviousByte) {
  at::manual_seed(9);
  for (int64_t patch : {4, 1}) {
    MegabyteConfig c = tiny(patch);
    c.local_dim = 32;
    c.global_dim = 16 * patch;
    MegabyteModel m(c);
    const at::Tensor next = at::randperm(16, at::kLong);  // symbol s -> next[s]
    torch::optim::Adam opt(m.parameters(), torch::optim::AdamOptions(3e-3));
    double last = 0;
    for (int step = 0; step < 150; ++step) {
      at::Tensor x = at::empty({8, 33}, at::kLong);
      x.select(1, 0).copy_(at::randint(16, {8}, at::kLong));
      for (int64_t t = 1; t < 33; ++t) x.select(1, t).copy_(next.index_select(0, x.select(1, t - 1)));
      x = x + 4;  // byte ids
      opt.zero_grad();
      const at::Tensor logits = m.forward(batch_of(x.narrow(1, 0, 32))).logits;
      const at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, kVocab}), x.narrow(1, 1, 32).reshape({-1}));
      loss.backward();
      opt.step();
      last = loss.item<double>();
    }
    EXPECT_LT(last, 0.3) << "patch " << patch;  // log(16) = 2.77 for a model that ignores the context
  }
}

TEST(Megabyte, StrictConfigKeys) {
  auto parse = [](const std::string& yaml) {
    return config::parse<MegabyteConfig>(config::load_yaml_string(yaml, "m.yaml"), "model", "m.yaml");
  };
  const MegabyteConfig c = parse("arch: megabyte\npatch_size: 4\nglobal_dim: 64\npos_embedding: rope\n");
  EXPECT_EQ(c.patch_size, 4);
  EXPECT_EQ(c.global_byte_dim(), 16);
  EXPECT_EQ(c.pos_embedding, "rope");
  const std::string unknown = error_of([&] { parse("arch: megabyte\npatchsize: 4\n"); });
  EXPECT_NE(unknown.find("unknown key 'model.patchsize'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("did you mean 'model.patch_size'"), std::string::npos) << unknown;
  EXPECT_NE(error_of([&] { parse("arch: megabyte\npos_embedding: alibi\n"); }).find("pos_embedding"),
            std::string::npos);
  EXPECT_NE(error_of([&] { parse("arch: dense\n"); }).find("arch"), std::string::npos);

  // Semantic checks name the fields.
  MegabyteConfig bad = tiny();
  bad.global_dim = 30;
  EXPECT_NE(error_of([&] { MegabyteModel m(bad); }).find("model.global_dim (30) must be a multiple of model.patch_size (4)"),
            std::string::npos);
  bad = tiny();
  bad.local_heads = 3;
  EXPECT_NE(error_of([&] { MegabyteModel m(bad); }).find("model.local_heads"), std::string::npos);

  // The resolved config round-trips through YAML.
  MegabyteModel m(tiny(4, "rope", false));
  const MegabyteConfig back = config::parse<MegabyteConfig>(m.config_yaml(), "model");
  EXPECT_EQ(config::dump_yaml(config::to_yaml(back)), config::dump_yaml(m.config_yaml()));
  EXPECT_EQ(back.vocab_size, kVocab);
  EXPECT_FALSE(back.tie_embeddings);
}

// bf16 autocast (on the CPU: the dtypes flow as on CUDA): a training step and cached decoding run, both
// with learned positions and with RoPE.
TEST(Megabyte, TrainsAndDecodesUnderBf16Autocast) {
  for (const char* pos : {"learned", "rope"}) {
    SCOPED_TRACE(pos);
    at::manual_seed(8);
    MegabyteModel m(tiny(4, pos, false));
    const at::Tensor x = at::randint(kVocab, {2, 19}, at::kLong);
    at::Tensor loss;
    {
      const AutocastGuard autocast(at::kCPU, true);
      const at::Tensor logits = m.forward(batch_of(x.narrow(1, 0, 18))).logits;
      loss = kernels::cross_entropy_nll(logits.reshape({-1, logits.size(-1)}), x.narrow(1, 1, 18).reshape({-1})).mean();
    }
    loss.backward();
    EXPECT_TRUE(std::isfinite(loss.item<double>()));
    for (const auto& p : m.named_parameters()) {
      if (p.value().grad().defined()) {
        EXPECT_TRUE(p.value().grad().isfinite().all().item<bool>()) << p.key();
      }
    }
    m.eval();
    at::NoGradGuard no_grad;
    const AutocastGuard autocast(at::kCPU, true);
    auto state = m.start_decoding(2, 19);
    for (int64_t t = 0; t < 9; ++t) EXPECT_TRUE(m.step(x.narrow(1, t, 1), *state).isfinite().all().item<bool>());
  }
}

}  // namespace
}  // namespace tessera
