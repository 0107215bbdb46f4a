// core/kernels: each fused op against a float64 reference (values and gradients), on the CPU (the ATen
// path every build has) and, where this build has the CUDA kernels and a GPU answers, on CUDA in float32
// and bf16. Relative errors ‖out − ref‖ / ‖ref‖: float32 math lands far under 1e-4; bf16 storage near 4e-3.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/cuda.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/kernels/fused.h"
#include "nn_test_util.h"

namespace tessera::kernels {
namespace {

using nn::testing::f64;

double rel_err(const at::Tensor& out, const at::Tensor& ref) {
  const at::Tensor o = f64(out.cpu()), r = f64(ref.cpu());
  EXPECT_EQ(o.sizes(), r.sizes());
  EXPECT_TRUE(o.isfinite().all().item<bool>()) << "non-finite values";
  return (o - r).norm().item<double>() / std::max(r.norm().item<double>(), 1e-30);
}

struct Case {
  at::Device device;
  at::ScalarType dtype;
  double tol;
};

std::vector<Case> cases() {
  std::vector<Case> out{{at::kCPU, at::kFloat, 1e-5}};
  if (cuda_kernels_built() && torch::cuda::is_available()) {
    out.push_back({at::Device(at::kCUDA, 0), at::kFloat, 1e-5});
    out.push_back({at::Device(at::kCUDA, 0), at::kBFloat16, 1.5e-2});
  }
  return out;
}

std::string name(const Case& c) { return c.device.str() + "/" + std::string(c.dtype == at::kFloat ? "f32" : "bf16"); }

// float64 reference of the pre-norm residual step, through autograd for the gradients.
std::pair<at::Tensor, at::Tensor> ref_add_rms_norm(const at::Tensor& residual, const at::Tensor& x,
                                                   const at::Tensor& scale, double eps) {
  const at::Tensor sum = residual.defined() ? residual + x : x * 1.0;
  const at::Tensor normed = sum / (sum.square().mean(-1, true) + eps).sqrt() * scale;
  return {sum, normed};
}

TEST(FusedKernels, AddRmsNormMatchesFloat64ValuesAndGradients) {
  for (const Case& c : cases()) {
    for (const int64_t dim : {90, 96, 1536}) {  // 90: the scalar path (not a multiple of 4); 1536 > 256 threads
      for (const bool with_residual : {true, false}) {
        SCOPED_TRACE(name(c) + " dim " + std::to_string(dim) + (with_residual ? " residual" : " no residual"));
        const at::Tensor r64 = at::randn({3, 37, dim}, at::kDouble) * 2.0;
        const at::Tensor x64 = at::randn({3, 37, dim}, at::kDouble);
        const at::Tensor s64 = at::rand({dim}, at::kDouble) + 0.5;
        // Inputs as the kernels see them: float32 residual and scale, x in the case's dtype.
        const at::Tensor r = r64.to(c.device, at::kFloat).requires_grad_(), s = s64.to(c.device, at::kFloat).requires_grad_();
        const at::Tensor x = x64.to(c.device, with_residual ? c.dtype : at::kFloat).requires_grad_();
        const AddRmsNorm out = add_rms_norm(with_residual ? r : at::Tensor(), x, s, 1e-5, c.dtype);
        EXPECT_EQ(out.sum.scalar_type(), at::kFloat);
        EXPECT_EQ(out.normed.scalar_type(), c.dtype);
        const at::Tensor gs = at::randn_like(r64), gn = at::randn_like(r64);
        (out.sum * gs.to(c.device, at::kFloat)).sum().add((out.normed.to(at::kFloat) * gn.to(c.device, at::kFloat)).sum()).backward();

        // The reference from the inputs as rounded to their dtypes.
        const at::Tensor rr = f64(r.cpu()).requires_grad_(), xr = f64(x.cpu()).requires_grad_(), sr = f64(s.cpu()).requires_grad_();
        const auto [sum_ref, normed_ref] = ref_add_rms_norm(with_residual ? rr : at::Tensor(), xr, sr, 1e-5);
        (sum_ref * gs).sum().add((normed_ref * gn).sum()).backward();
        EXPECT_LT(rel_err(out.sum, sum_ref), 1e-6);
        EXPECT_LT(rel_err(out.normed, normed_ref), c.tol);
        EXPECT_LT(rel_err(x.grad(), xr.grad()), c.tol);
        EXPECT_LT(rel_err(s.grad(), sr.grad()), c.dtype == at::kFloat ? 1e-5 : 2e-2);
        if (with_residual) {
          EXPECT_LT(rel_err(r.grad(), rr.grad()), c.dtype == at::kFloat ? 1e-5 : 2e-2);
        }
      }
    }
  }
}

TEST(FusedKernels, SiluMulMatchesFloat64ValuesAndGradients) {
  // Sizes with and without whole 16-byte packs; `offset` makes a contiguous but misaligned view (the
  // kernels' scalar path).
  for (const Case& c : cases()) {
    for (const auto& [shape, offset] : std::vector<std::pair<std::vector<int64_t>, int64_t>>{
             {{5, 33, 171}, 0}, {{7, 256}, 0}, {{7, 256}, 1}}) {
      SCOPED_TRACE(name(c) + " " + std::to_string(shape.back()) + " offset " + std::to_string(offset));
      const int64_t n = at::empty(shape).numel();
      auto view = [&](const at::Tensor& t64) {
        return t64.to(c.device, c.dtype).flatten().narrow(0, offset, n - offset).detach().requires_grad_();
      };
      const at::Tensor g64 = at::randn(shape, at::kDouble).flatten() * 3.0, u64 = at::randn(shape, at::kDouble).flatten();
      const at::Tensor g = view(g64), u = view(u64);
      const at::Tensor out = silu_mul(g, u);
      EXPECT_EQ(out.scalar_type(), c.dtype);
      const at::Tensor go = at::randn({n - offset}, at::kDouble);
      (out.to(at::kFloat) * go.to(c.device, at::kFloat)).sum().backward();
      const at::Tensor gr = f64(g.cpu()).requires_grad_(), ur = f64(u.cpu()).requires_grad_();
      const at::Tensor ref = gr / (1.0 + (-gr).exp()) * ur;
      (ref * go).sum().backward();
      EXPECT_LT(rel_err(out, ref), c.tol);
      EXPECT_LT(rel_err(g.grad(), gr.grad()), c.tol);
      EXPECT_LT(rel_err(u.grad(), ur.grad()), c.tol);
    }
  }
}

TEST(FusedKernels, SiluMulPackedMatchesFloat64ValuesAndGradients) {
  // gate_up rows [gate | up]: hidden 171 (the scalar path), 256 (16-byte packs), and 256 in a misaligned
  // view (offset by one element: the scalar path again).
  for (const Case& c : cases()) {
    for (const auto& [hidden, offset] : std::vector<std::pair<int64_t, int64_t>>{{171, 0}, {256, 0}, {256, 1}}) {
      SCOPED_TRACE(name(c) + " hidden " + std::to_string(hidden) + " offset " + std::to_string(offset));
      const int64_t rows = 37, n = rows * 2 * hidden;
      const at::Tensor gu64 = at::randn({n + offset}, at::kDouble) * 2.0;
      const at::Tensor gate_up =
          gu64.to(c.device, c.dtype).narrow(0, offset, n).view({rows, 2 * hidden}).detach().requires_grad_();
      const at::Tensor out = silu_mul_packed(gate_up);
      EXPECT_EQ(out.sizes(), (std::vector<int64_t>{rows, hidden}));
      const at::Tensor go = at::randn({rows, hidden}, at::kDouble);
      (out.to(at::kFloat) * go.to(c.device, at::kFloat)).sum().backward();
      const at::Tensor ref_in = f64(gate_up.cpu()).requires_grad_();
      const at::Tensor g = ref_in.narrow(1, 0, hidden), u = ref_in.narrow(1, hidden, hidden);
      const at::Tensor ref = g / (1.0 + (-g).exp()) * u;
      (ref * go).sum().backward();
      EXPECT_LT(rel_err(out, ref), c.tol);
      EXPECT_LT(rel_err(gate_up.grad(), ref_in.grad()), c.tol);
    }
  }
}

TEST(FusedKernels, RopeMatchesFloat64RotationAndItsTranspose) {
  // D = 32: 16-byte chunks (the vector kernel); D = 12: the scalar kernel (bf16 both layouts, f32 half split).
  const int64_t B = 2, T = 19, H = 3;
  const double theta = 10000.0;
  for (const Case& c : cases()) {
    for (const int64_t D : {32, 12}) {
      const int64_t half = D / 2;
      const at::Tensor inv_freq = at::pow(theta, -at::arange(0, half, at::kDouble) * 2.0 / D);
      const at::Tensor angles = at::outer(at::arange(64, at::kDouble), inv_freq);
      for (const bool interleaved : {false, true}) {
        for (const bool batched : {false, true}) {
          SCOPED_TRACE(name(c) + " D " + std::to_string(D) + (interleaved ? " interleaved" : " half split") +
                       (batched ? " [B, T]" : " [T]"));
          const at::Tensor cos_t = angles.cos().to(c.device, at::kFloat), sin_t = angles.sin().to(c.device, at::kFloat);
          const at::Tensor pos = batched ? at::randint(0, 64, {B, T}, at::kLong) : at::randperm(64, at::kLong).narrow(0, 0, T);
          // x as the projection makes it: [B, T, H, D] memory viewed as [B, H, T, D].
          const at::Tensor x64 = at::randn({B, T, H, D}, at::kDouble);
          const at::Tensor x = x64.to(c.device, c.dtype).transpose(1, 2).detach().requires_grad_();
          const at::Tensor out = rope(x, cos_t, sin_t, pos.to(c.device), interleaved);
          const at::Tensor go = at::randn({B, H, T, D}, at::kDouble);
          (out.to(at::kFloat) * go.to(c.device, at::kFloat)).sum().backward();

          const auto position = [&](int64_t b, int64_t t) {
            return batched ? pos[b][t].item<int64_t>() : pos[t].item<int64_t>();
          };
          const nn::RopeLayout layout = interleaved ? nn::RopeLayout::Interleaved : nn::RopeLayout::HalfSplit;
          const at::Tensor ref = nn::testing::ref_rope(f64(x.cpu()), position, theta, layout);
          EXPECT_LT(rel_err(out, ref), c.tol);
          // The gradient is the inverse rotation of the incoming gradient: rotating it forward again
          // gives the incoming gradient back.
          const at::Tensor back = nn::testing::ref_rope(f64(x.grad().cpu()), position, theta, layout);
          EXPECT_LT(rel_err(back, go), c.tol);
        }
      }
    }
  }
}

TEST(FusedKernels, SplitQkvRopeMatchesFloat64HeadsAndGradients) {
  // One projection's output [B, T, (Hq + 2·Hkv)·D] (grouped query: Hq = 4, Hkv = 2): q and k rotated like
  // separate heads, v as is; the gradient of qkv holds each part's gradient (q and k rotated back).
  const int64_t B = 2, T = 19, Hq = 4, Hkv = 2, D = 32, half = D / 2, E = (Hq + 2 * Hkv) * D;
  const double theta = 10000.0;
  const at::Tensor inv_freq = at::pow(theta, -at::arange(0, half, at::kDouble) * 2.0 / D);
  const at::Tensor angles = at::outer(at::arange(64, at::kDouble), inv_freq);
  for (const Case& c : cases()) {
    for (const bool interleaved : {false, true}) {
      for (const bool rotate : {true, false}) {
        SCOPED_TRACE(name(c) + (interleaved ? " interleaved" : " half split") + (rotate ? "" : " no rotation"));
        const at::Tensor cos_t = angles.cos().to(c.device, at::kFloat), sin_t = angles.sin().to(c.device, at::kFloat);
        const at::Tensor pos = at::randperm(64, at::kLong).narrow(0, 0, T);
        const at::Tensor qkv = at::randn({B, T, E}, at::kDouble).to(c.device, c.dtype).requires_grad_();
        const QkvHeads heads = rotate ? split_qkv_rope(qkv, Hq, Hkv, cos_t, sin_t, pos.to(c.device), interleaved)
                                      : split_qkv_rope(qkv, Hq, Hkv, {}, {}, {}, false);
        ASSERT_EQ(heads.q.sizes(), (std::vector<int64_t>{B, Hq, T, D}));
        ASSERT_EQ(heads.k.sizes(), (std::vector<int64_t>{B, Hkv, T, D}));
        ASSERT_EQ(heads.v.sizes(), (std::vector<int64_t>{B, Hkv, T, D}));
        const at::Tensor gq = at::randn({B, Hq, T, D}, at::kDouble), gk = at::randn({B, Hkv, T, D}, at::kDouble);
        const at::Tensor gv = at::randn({B, Hkv, T, D}, at::kDouble);
        auto dot = [&](const at::Tensor& t, const at::Tensor& g) { return (t.to(at::kFloat) * g.to(c.device, at::kFloat)).sum(); };
        (dot(heads.q, gq) + dot(heads.k, gk) + dot(heads.v, gv)).backward();

        const nn::RopeLayout layout = interleaved ? nn::RopeLayout::Interleaved : nn::RopeLayout::HalfSplit;
        const auto position = [&](int64_t, int64_t t) { return pos[t].item<int64_t>(); };
        const at::Tensor q64 = f64(qkv.cpu()).view({B, T, Hq + 2 * Hkv, D}).transpose(1, 2);  // [B, H, T, D]
        auto part = [&](const at::Tensor& all, int64_t first, int64_t count) { return all.narrow(1, first, count); };
        auto maybe_rope = [&](const at::Tensor& x) { return rotate ? nn::testing::ref_rope(x, position, theta, layout) : x; };
        EXPECT_LT(rel_err(heads.q, maybe_rope(part(q64, 0, Hq))), c.tol);
        EXPECT_LT(rel_err(heads.k, maybe_rope(part(q64, Hq, Hkv))), c.tol);
        EXPECT_LT(rel_err(heads.v, part(q64, Hq + Hkv, Hkv)), 1e-12);  // a view: exact
        // The gradient's q and k parts rotated forward again give the incoming gradients back.
        const at::Tensor grad = f64(qkv.grad().cpu()).view({B, T, Hq + 2 * Hkv, D}).transpose(1, 2);
        EXPECT_LT(rel_err(maybe_rope(part(grad, 0, Hq)), gq), c.tol);
        EXPECT_LT(rel_err(maybe_rope(part(grad, Hq, Hkv)), gk), c.tol);
        EXPECT_LT(rel_err(part(grad, Hq + Hkv, Hkv), gv), c.dtype == at::kFloat ? 1e-6 : 5e-3);
      }
    }
  }
}

TEST(FusedKernels, CrossEntropyMatchesFloat64AndIgnoresMinus100) {
  for (const Case& c : cases()) {
    for (const int64_t vocab : {50, 3001, 4096}) {  // 4096: whole 16-byte packs per row
      SCOPED_TRACE(name(c) + " vocab " + std::to_string(vocab));
      const int64_t N = 45;
      const at::Tensor l64 = at::randn({N, vocab}, at::kDouble) * 4.0;
      at::Tensor targets = at::randint(0, vocab, {N}, at::kLong);
      targets[3] = -100;
      targets[17] = -100;
      l64[5].narrow(0, 0, vocab / 2).fill_(-std::numeric_limits<double>::infinity());  // a masked half
      targets[5] = vocab - 1;
      const at::Tensor logits = l64.to(c.device, c.dtype).requires_grad_();
      const at::Tensor nll = cross_entropy_nll(logits, targets.to(c.device));
      EXPECT_EQ(nll.scalar_type(), at::kFloat);
      const at::Tensor gn = at::randn({N}, at::kDouble);
      (nll * gn.to(c.device, at::kFloat)).sum().backward();

      const at::Tensor lr = f64(logits.cpu()).requires_grad_();
      const at::Tensor keep = targets.ne(-100);
      const at::Tensor safe = targets.clamp_min(0);
      const at::Tensor ref = -(at::log_softmax(lr, -1).gather(1, safe.unsqueeze(1)).squeeze(1)) * keep.to(at::kDouble);
      (ref * gn).sum().backward();
      EXPECT_LT(rel_err(nll, ref), c.dtype == at::kFloat ? 1e-6 : 1e-5);  // bf16 logits are exact in float32 math
      EXPECT_LT(rel_err(logits.grad(), lr.grad()), c.tol);
      EXPECT_EQ(nll.cpu()[3].item<float>(), 0.f);
      EXPECT_EQ(logits.grad().cpu()[17].abs().max().item<float>(), 0.f);
    }
  }
}

TEST(FusedKernels, CrossEntropyBadTargetIsNotSilent) {
  const at::Tensor logits = at::randn({4, 10});
  const at::Tensor targets = at::tensor({1, 2, 10, 3}, at::kLong);  // 10 is out of range
  EXPECT_ANY_THROW(cross_entropy_nll(logits, targets));  // ATen's range check on the CPU
  if (cuda_kernels_built() && torch::cuda::is_available()) {
    const at::Tensor nll = cross_entropy_nll(logits.cuda(), targets.cuda()).cpu();
    EXPECT_TRUE(std::isnan(nll[2].item<float>()));  // NaN, which the trainer's NaN check names
    EXPECT_TRUE(std::isfinite(nll[0].item<float>()));
  }
}

TEST(FusedKernels, AutocastLinearMatchesFloat64WithFloat32WeightGradients) {
  // One, two and three float32 weights under autocast (bf16 on CUDA: the op whose backward writes float32
  // weight gradients from the GEMM; the CPU: ATen's cached casts) and without (float32 throughout).
  std::vector<at::Device> devices{at::kCPU};
  if (cuda_kernels_built() && torch::cuda::is_available()) devices.emplace_back(at::kCUDA, 0);
  for (const at::Device& device : devices) {
    for (const bool autocast : {true, false}) {
      for (const std::vector<int64_t>& outs : std::vector<std::vector<int64_t>>{{24}, {24, 8}, {16, 8, 8}}) {
        SCOPED_TRACE(device.str() + (autocast ? " autocast" : " float32") + " weights " + std::to_string(outs.size()));
        const int64_t in = 40;
        std::vector<at::Tensor> weights, refs;
        for (const int64_t out : outs) {
          const at::Tensor w64 = at::randn({out, in}, at::kDouble) * 0.2;
          weights.push_back(w64.to(device, at::kFloat).requires_grad_());
          refs.push_back(w64.clone().requires_grad_());
        }
        const at::Tensor x64 = at::randn({3, 7, in}, at::kDouble);
        const at::Tensor x = x64.to(device, autocast ? at::kBFloat16 : at::kFloat).requires_grad_();
        at::Tensor y;
        {
          at::autocast::set_autocast_enabled(device.type(), autocast);
          at::autocast::set_autocast_dtype(device.type(), at::kBFloat16);
          y = autocast_linear(x, weights);
          at::autocast::set_autocast_enabled(device.type(), false);
          at::autocast::clear_cache();
        }
        EXPECT_EQ(y.scalar_type(), autocast ? at::kBFloat16 : at::kFloat);
        const at::Tensor gy = at::randn(y.sizes(), at::kDouble);
        (y.to(at::kFloat) * gy.to(device, at::kFloat)).sum().backward();
        const at::Tensor xr = f64(x.cpu()).requires_grad_();
        const at::Tensor ref = at::linear(xr, at::cat(refs));
        (ref * gy).sum().backward();
        const double tol = autocast ? 1.5e-2 : 1e-5;
        EXPECT_LT(rel_err(y, ref), tol);
        EXPECT_LT(rel_err(x.grad(), xr.grad()), tol);
        for (size_t i = 0; i < weights.size(); ++i) {
          EXPECT_EQ(weights[i].grad().scalar_type(), at::kFloat);
          EXPECT_LT(rel_err(weights[i].grad(), refs[i].grad()), tol) << "weight " << i;
        }
      }
    }
  }
}

TEST(FusedKernels, AutocastLinearWithBiasesConcatenatesThem) {
  // Biased layers take the ATen path: the outputs side by side, each with its own bias.
  const at::Tensor x = at::randn({5, 12});
  const std::vector<at::Tensor> weights{at::randn({4, 12}), at::randn({6, 12})}, biases{at::randn({4}), at::randn({6})};
  const at::Tensor y = autocast_linear(x, weights, biases);
  EXPECT_TRUE(at::allclose(y.narrow(1, 0, 4), at::linear(x, weights[0], biases[0]), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(y.narrow(1, 4, 6), at::linear(x, weights[1], biases[1]), 1e-5, 1e-5));
  EXPECT_ANY_THROW(autocast_linear(x, weights, {biases[0]}));  // one bias for two weights
}

TEST(FusedKernels, ActivationDtypeFollowsAutocast) {
  const at::Tensor x = at::randn({2, 3});
  EXPECT_EQ(activation_dtype(x), at::kFloat);
  EXPECT_EQ(activation_dtype(x.to(at::kDouble)), at::kDouble);
}

}  // namespace
}  // namespace tessera::kernels
