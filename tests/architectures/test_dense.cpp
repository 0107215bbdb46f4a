#include <gtest/gtest.h>

#include "arch_test_util.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "architectures/dense.h"
#include "architectures/registry.h"
#include "core/config.h"
#include "core/train/autocast.h"
#include "core/train/weights.h"
#include "core/kernels/fused.h"
#include <torch/cuda.h>

namespace tessera {
namespace {

DenseConfig tiny(int64_t kv_heads = 2, bool tie = false, int64_t window = 0) {
  DenseConfig c;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = kv_heads;
  c.vocab_size = 50;
  c.max_seq_len = 64;
  c.multiple_of = 16;
  c.tie_embeddings = tie;
  c.sliding_window = window;
  return c;
}

using testing::batch_of;
using testing::max_diff;

TEST(Dense, ParameterNamesFollowLlamaAndCountMatchesClosedForm) {
  at::manual_seed(0);
  DenseModel m(tiny());
  std::set<std::string> names;
  for (const auto& [n, p] : parameter_tensors(m)) names.insert(n);
  for (const char* n : {"tok_embeddings.weight", "layers.0.attention.wq.weight", "layers.1.attention.wo.weight",
                        "layers.0.feed_forward.w1.weight", "layers.0.feed_forward.w3.weight",
                        "layers.0.attention_norm.weight", "layers.1.ffn_norm.weight", "norm.weight", "output.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  // dim 32, 4 heads of 8, 2 kv heads -> kv_dim 16; hidden = 2*4*32/3 = 85 -> rounded up to 96.
  const int64_t d = 32, kv = 16, h = 96, V = 50, L = 2;
  const int64_t per_layer = d * d + 2 * d * kv + d * d + 3 * d * h + 2 * d;
  EXPECT_EQ(m.parameter_count(), V * d + L * per_layer + d + V * d);
  DenseModel tied(tiny(2, true));
  EXPECT_EQ(tied.parameter_count(), m.parameter_count() - V * d);
  // FLOPs: the output head counts, embeddings do not.
  EXPECT_EQ(m.flops(16).matmul_params, L * (d * d + 2 * d * kv + d * d + 3 * d * h) + V * d);
}

TEST(Dense, IsCausal) {
  at::manual_seed(1);
  DenseModel m(tiny());
  const at::Tensor x = at::randint(50, {2, 12}, at::kLong);
  at::Tensor y = x.clone();
  y.narrow(1, 8, 4).random_(50);
  at::NoGradGuard g;
  const at::Tensor a = m.forward(batch_of(x)).logits, b = m.forward(batch_of(y)).logits;
  EXPECT_LT(max_diff(a.narrow(1, 0, 8), b.narrow(1, 0, 8)), 1e-6);
  EXPECT_GT(max_diff(a.narrow(1, 8, 4), b.narrow(1, 8, 4)), 1e-4);
}

class DenseIncremental : public ::testing::TestWithParam<std::tuple<int64_t, bool, int64_t>> {};

TEST_P(DenseIncremental, CachedDecodingEqualsFullForward) {
  const auto [kv_heads, tie, window] = GetParam();
  at::manual_seed(2);
  DenseModel m(tiny(kv_heads, tie, window));
  m.eval();
  const int64_t T = 20;
  const at::Tensor x = at::randint(50, {2, T}, at::kLong);
  at::NoGradGuard g;
  const at::Tensor full = m.forward(batch_of(x)).logits;
  // Token by token.
  auto state = m.start_decoding(2, T);
  std::vector<at::Tensor> steps;
  for (int64_t t = 0; t < T; ++t) steps.push_back(m.step(x.narrow(1, t, 1), *state));
  EXPECT_LT(max_diff(at::cat(steps, 1), full), 1e-5);
  // A prompt of 7, then chunks of 5 and 8.
  auto chunked = m.start_decoding(2, T);
  std::vector<at::Tensor> parts{m.step(x.narrow(1, 0, 7), *chunked), m.step(x.narrow(1, 7, 5), *chunked),
                                m.step(x.narrow(1, 12, 8), *chunked)};
  EXPECT_LT(max_diff(at::cat(parts, 1), full), 1e-5);
  EXPECT_EQ(chunked->position, T);
}

INSTANTIATE_TEST_SUITE_P(Configs, DenseIncremental,
                         ::testing::Values(std::make_tuple(int64_t{0}, false, int64_t{0}),
                                           std::make_tuple(int64_t{2}, true, int64_t{0}),
                                           std::make_tuple(int64_t{1}, false, int64_t{6})));

TEST(Dense, DocumentMaskIsolatesPackedDocuments) {
  at::manual_seed(3);
  DenseModel m(tiny());
  m.eval();
  at::NoGradGuard g;
  const at::Tensor x = at::randint(50, {1, 16}, at::kLong);
  Batch packed = batch_of(x);
  packed.doc_ids = at::cat({at::zeros({1, 6}, at::kLong), at::ones({1, 10}, at::kLong)}, 1);
  const at::Tensor logits = m.forward(packed).logits;
  // Document 1 alone, at the same absolute positions, gives the same logits.
  Batch second = batch_of(x.narrow(1, 6, 10));
  second.positions = at::arange(6, 16, at::kLong);
  EXPECT_LT(max_diff(logits.narrow(1, 6, 10), m.forward(second).logits), 1e-5);
  EXPECT_LT(max_diff(logits.narrow(1, 0, 6), m.forward(batch_of(x.narrow(1, 0, 6))).logits), 1e-5);
}

TEST(Dense, TrainsOnARepeatingPattern) {
  at::manual_seed(4);
  DenseModel m(tiny());
  const at::Tensor pattern = at::arange(10, at::kLong).repeat({2, 4});  // 0..9 repeated
  Batch b = batch_of(pattern.narrow(1, 0, 39));
  b.targets = pattern.narrow(1, 1, 39);
  std::vector<at::Tensor> params;
  for (const auto& p : m.parameters()) params.push_back(p);
  auto loss_of = [&] {
    const at::Tensor logits = m.forward(b).logits;
    return at::cross_entropy_loss(logits.reshape({-1, 50}), b.targets.reshape({-1}));
  };
  const double before = loss_of().item<double>();
  for (int i = 0; i < 60; ++i) {
    const at::Tensor loss = loss_of();
    loss.backward();
    at::NoGradGuard g;
    for (auto& p : params) {
      p.sub_(p.grad() * 0.05);
      p.mutable_grad() = at::Tensor();
    }
  }
  EXPECT_LT(loss_of().item<double>(), 0.2 * before);
}

// The fused kernels (core/kernels) change nothing but speed: the same weights give the same loss and
// gradients with fused_kernels on and off, under bf16 autocast. On the CPU both take the ATen path
// (identical; it checks the dtypes flow); on CUDA the kernels round once where the ATen path rounds at
// several places, so the two agree to bf16 precision.
TEST(Dense, FusedKernelsAndProjectionsGiveTheSameLossAndGradients) {
  // Each fusion (core/kernels; one GEMM for q/k/v and for w1/w3) against the plain ATen model with
  // separate projections: in float32, and under bf16 autocast (on the CPU too, where the dtypes flow as
  // on CUDA), where one GEMM rounds where separate ones rounded three times.
  std::vector<at::Device> devices{at::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(at::kCUDA, 0);
  for (const at::Device& device : devices) {
    for (const auto& [kernels_on, projections_on] : std::vector<std::pair<bool, bool>>{{true, true}, {true, false}, {false, true}}) {
      for (const bool bf16 : {false, true}) {
        SCOPED_TRACE(device.str() + (kernels_on ? " kernels" : "") + (projections_on ? " projections" : "") +
                     (bf16 ? " bf16" : " f32"));
        at::manual_seed(5);
        DenseConfig c = tiny();
        c.dim = 64;
        c.n_heads = 4;
        c.n_kv_heads = 2;
        c.fused_kernels = kernels_on;
        c.fused_projections = projections_on;
        DenseModel fused(c);
        c.fused_kernels = false;
        c.fused_projections = false;
        DenseModel plain(c);
        {
          torch::NoGradGuard no_grad;
          const auto src = fused.named_parameters();
          for (auto& p : plain.named_parameters()) p.value().copy_(src[p.key()]);
        }
        fused.to(device);
        plain.to(device);
        const at::Tensor x = at::randint(50, {3, 24}, at::kLong).to(device);
        const at::Tensor y = at::randint(50, {3, 24}, at::kLong).to(device);
        auto loss_of = [&](DenseModel& m) {
          const AutocastGuard autocast(device.type(), bf16);
          const at::Tensor logits = m.forward(batch_of(x)).logits;
          return kernels::cross_entropy_nll(logits.reshape({-1, logits.size(-1)}), y.reshape({-1})).mean();
        };
        const at::Tensor lf = loss_of(fused), lp = loss_of(plain);
        lf.backward();
        lp.backward();
        const double tol = bf16 ? 2e-2 : (device.is_cuda() ? 1e-4 : 1e-5);
        EXPECT_NEAR(lf.item<double>(), lp.item<double>(), tol * lp.item<double>());
        const auto plain_params = plain.named_parameters();
        for (const auto& p : fused.named_parameters()) {
          const at::Tensor a = p.value().grad().to(at::kDouble).cpu(), b = plain_params[p.key()].grad().to(at::kDouble).cpu();
          EXPECT_LT((a - b).norm().item<double>(), tol * b.norm().item<double>() + 1e-9) << p.key();
        }
      }
    }
  }
}

TEST(Registry, BuildsByNameWithStrictKeys) {
  YAML::Node node = config::load_yaml_string("arch: dense\ndim: 16\nn_layers: 1\nn_heads: 2\n", "m.yaml");
  ModelContext ctx;
  ctx.vocab_size = 260;
  auto model = build_model(node, ctx);
  EXPECT_EQ(model->arch(), "dense");
  EXPECT_EQ(model->vocab_size(), 260);
  EXPECT_EQ(model->config_yaml()["vocab_size"].as<int64_t>(), 260);

  auto error_of = [&](const std::string& yaml) {
    try {
      build_model(config::load_yaml_string(yaml, "m.yaml"), ModelContext{260, "m.yaml"});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of("arch: denes\n").find("unknown architecture 'denes' (did you mean 'dense'?)"), std::string::npos);
  EXPECT_NE(error_of("arch: dense\ndimm: 16\n").find("unknown key 'model.dimm'"), std::string::npos);
  EXPECT_NE(error_of("arch: dense\ndimm: 16\n").find("did you mean 'model.dim'"), std::string::npos);
  EXPECT_NE(error_of("arch: dense\ndim: 30\nn_heads: 4\n").find("divisible"), std::string::npos);
  EXPECT_NE(error_of("arch: dense\nn_heads: 4\nn_kv_heads: 3\n").find("multiple of model.n_kv_heads"),
            std::string::npos);
  EXPECT_NE(error_of("dim: 3\n").find("model.arch"), std::string::npos);
  EXPECT_FALSE(architecture_doc("dense").empty());
}

}  // namespace
}  // namespace tessera
