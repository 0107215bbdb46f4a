#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include <torch/cuda.h>

#include "core/kernels/fused.h"
#include "core/train/optimizer.h"

namespace tessera {
namespace {

// Decoupled AdamW (Loshchilov & Hutter), written out per element in float64.
struct RefAdamW {
  std::vector<double> p, m, v;
  int step = 0;
  void update(const std::vector<double>& g, double lr, double b1, double b2, double eps, double wd) {
    ++step;
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1.0 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      const double mhat = m[i] / (1 - std::pow(b1, step));
      const double vhat = v[i] / (1 - std::pow(b2, step));
      p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

std::vector<double> to_vec(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kDouble).contiguous().view(-1);  // host memory for data_ptr
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

TEST(AdamW, MatchesFloat64ReferenceWithDecayOnlyOnMatrices) {
  at::manual_seed(3);
  at::Tensor w = at::randn({3, 4}).requires_grad_(true);
  at::Tensor b = at::randn({4}).requires_grad_(true);
  AdamWConfig cfg{0.9, 0.95, 1e-8, 0.1};
  AdamW opt({{"w", w}, {"b", b}}, cfg);
  RefAdamW rw{to_vec(w), std::vector<double>(12), std::vector<double>(12)};
  RefAdamW rb{to_vec(b), std::vector<double>(4), std::vector<double>(4)};
  for (int s = 0; s < 5; ++s) {
    const double lr = 1e-2 * (s + 1);
    const at::Tensor gw = at::randn({3, 4}), gb = at::randn({4});
    w.mutable_grad() = gw.clone();
    b.mutable_grad() = gb.clone();
    opt.step(lr);
    opt.zero_grad();
    rw.update(to_vec(gw), lr, 0.9, 0.95, 1e-8, 0.1);
    rb.update(to_vec(gb), lr, 0.9, 0.95, 1e-8, 0.0);  // vectors are not decayed
  }
  const auto pw = to_vec(w), pb = to_vec(b);
  for (size_t i = 0; i < pw.size(); ++i) EXPECT_NEAR(pw[i], rw.p[i], 1e-5);
  for (size_t i = 0; i < pb.size(); ++i) EXPECT_NEAR(pb[i], rb.p[i], 1e-5);
  EXPECT_FALSE(w.grad().defined());
}

TEST(AdamW, StateRoundTripsAndValidates) {
  at::Tensor w = at::randn({2, 2}).requires_grad_(true);
  AdamW opt({{"w", w}}, AdamWConfig{});
  w.mutable_grad() = at::ones({2, 2});
  opt.step(0.1);
  const NamedTensorList state = opt.state();
  ASSERT_EQ(state.size(), 3u);
  EXPECT_EQ(state[0].first, "w.exp_avg");
  EXPECT_FLOAT_EQ(state[2].second.item<float>(), 1.0f);

  at::Tensor w2 = at::randn({2, 2}).requires_grad_(true);
  AdamW other({{"w", w2}}, AdamWConfig{});
  std::map<std::string, at::Tensor> m;
  for (const auto& [k, v] : state) m[k] = v.clone();
  other.load_state(m, "opt.safetensors");
  EXPECT_TRUE(at::equal(other.state()[1].second, state[1].second));

  m.erase("w.exp_avg");
  try {
    other.load_state(m, "opt.safetensors");
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("lacks 'w.exp_avg'"), std::string::npos) << e.what();
  }
}

TEST(ClipGradNorm, ScalesToMaxNormAndReportsTheNormBefore) {
  at::Tensor a = at::zeros({3}).requires_grad_(true), b = at::zeros({2, 2}).requires_grad_(true);
  a.mutable_grad() = at::tensor({3.0f, 0.0f, 0.0f});
  b.mutable_grad() = at::full({2, 2}, 2.0f);  // norm 4
  const at::Tensor norm = clip_grad_norm({a, b}, 1.0);
  EXPECT_NEAR(norm.item<double>(), 5.0, 1e-6);
  const double after = std::sqrt(a.grad().pow(2).sum().item<double>() + b.grad().pow(2).sum().item<double>());
  EXPECT_NEAR(after, 1.0, 1e-5);
  // Below the threshold nothing changes.
  const at::Tensor n2 = clip_grad_norm({a, b}, 10.0);
  EXPECT_NEAR(n2.item<double>(), 1.0, 1e-5);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
}

TEST(AdamW, GradMultiplierScalesInsideTheUpdateOnEveryDevice) {
  // The clipping coefficient applied by the update itself (the CUDA kernel where this build has it, the
  // ATen path on the CPU) equals AdamW on the scaled gradients, written out in float64. Sizes with and
  // without whole float4 accesses; the CUDA kernel leaves the gradients as they were.
  std::vector<at::Device> devices{at::kCPU};
  if (kernels::cuda_kernels_built() && torch::cuda::is_available()) devices.emplace_back(at::kCUDA, 0);
  for (const at::Device& device : devices) {
    SCOPED_TRACE(device.str());
    at::manual_seed(11);
    at::Tensor w = at::randn({6, 10}).to(device).requires_grad_(true);
    at::Tensor b = at::randn({7}).to(device).requires_grad_(true);
    AdamW opt({{"w", w}, {"b", b}}, AdamWConfig{0.9, 0.95, 1e-8, 0.1});
    RefAdamW rw{to_vec(w), std::vector<double>(60), std::vector<double>(60)};
    RefAdamW rb{to_vec(b), std::vector<double>(7), std::vector<double>(7)};
    for (int s = 0; s < 4; ++s) {
      const double lr = 1e-2, multiplier = 0.25 + 0.2 * s;
      const at::Tensor gw = at::randn({6, 10}), gb = at::randn({7});
      w.mutable_grad() = gw.to(device, /*non_blocking=*/false, /*copy=*/true);  // the CPU path scales it in place
      b.mutable_grad() = gb.to(device, /*non_blocking=*/false, /*copy=*/true);
      opt.step(lr, at::full({}, multiplier, at::TensorOptions().dtype(at::kFloat).device(device)));
      if (device.is_cuda()) {
        EXPECT_TRUE(at::equal(w.grad().cpu(), gw)) << "the kernel must not rewrite the gradients";
      }
      opt.zero_grad();
      auto scaled = [&](const at::Tensor& g) {
        std::vector<double> v = to_vec(g);
        for (double& x : v) x *= static_cast<double>(static_cast<float>(multiplier));
        return v;
      };
      rw.update(scaled(gw), lr, 0.9, 0.95, 1e-8, 0.1);
      rb.update(scaled(gb), lr, 0.9, 0.95, 1e-8, 0.0);
    }
    const auto pw = to_vec(w), pb = to_vec(b);
    for (size_t i = 0; i < pw.size(); ++i) EXPECT_NEAR(pw[i], rw.p[i], 1e-5);
    for (size_t i = 0; i < pb.size(); ++i) EXPECT_NEAR(pb[i], rb.p[i], 1e-5);
  }
}

TEST(ClipGradNorm, CoefficientIsMinOfOneAndMaxNormOverNorm) {
  EXPECT_NEAR(clip_coefficient(at::full({}, 5.0), 1.0).item<double>(), 0.2, 1e-6);
  EXPECT_NEAR(clip_coefficient(at::full({}, 0.5), 1.0).item<double>(), 1.0, 1e-6);
  EXPECT_EQ(clip_coefficient(at::full({}, 5.0, at::kDouble), 1.0).scalar_type(), at::kFloat);
  EXPECT_ANY_THROW(clip_coefficient(at::full({}, 5.0), 0.0));
}

}  // namespace
}  // namespace tessera
