// Plain float64 references for the core/nn tests, written with explicit loops over scalars so that
// they share no tensor code with the implementations under test.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "core/nn/attention.h"
#include "core/nn/rope.h"

namespace tessera::nn::testing {

inline at::Tensor f64(const at::Tensor& t) { return t.detach().to(at::kDouble).contiguous(); }

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  return (f64(a) - f64(b)).abs().max().item<double>();
}

// y[n, o] = sum_i x[n, i] * w[o, i] (+ bias[o]) over the flattened leading dims of x.
inline at::Tensor ref_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias = {}) {
  const at::Tensor xd = f64(x).reshape({-1, x.size(-1)}), wd = f64(w);
  const int64_t N = xd.size(0), I = wd.size(1), O = wd.size(0);
  at::Tensor y = at::zeros({N, O}, at::kDouble);
  auto xa = xd.accessor<double, 2>();
  auto wa = wd.accessor<double, 2>();
  auto ya = y.accessor<double, 2>();
  at::Tensor bd = bias.defined() ? f64(bias) : at::zeros({O}, at::kDouble);
  auto ba = bd.accessor<double, 1>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) {
      double s = ba[o];
      for (int64_t i = 0; i < I; ++i) s += xa[n][i] * wa[o][i];
      ya[n][o] = s;
    }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = O;
  return y.view(shape);
}

// x [B, H, T, D]; pos(b, t) gives the absolute position. Rotates each channel pair explicitly.
inline at::Tensor ref_rope(const at::Tensor& x, const std::function<int64_t(int64_t, int64_t)>& pos,
                           double theta, RopeLayout layout) {
  const at::Tensor xd = f64(x);
  at::Tensor y = xd.clone();
  auto xa = xd.accessor<double, 4>();
  auto ya = y.accessor<double, 4>();
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), half = D / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < half; ++i) {
          const int64_t ia = layout == RopeLayout::HalfSplit ? i : 2 * i;
          const int64_t ib = layout == RopeLayout::HalfSplit ? i + half : 2 * i + 1;
          const double angle = static_cast<double>(pos(b, t)) * std::pow(theta, -2.0 * i / D);
          const double a = xa[b][h][t][ia], c = xa[b][h][t][ib];
          ya[b][h][t][ia] = a * std::cos(angle) - c * std::sin(angle);
          ya[b][h][t][ib] = a * std::sin(angle) + c * std::cos(angle);
        }
  return y;
}

using Allowed = std::function<bool(int64_t b, int64_t h, int64_t i, int64_t j)>;

// The rule MaskSpec documents, one (query, key) pair at a time.
inline Allowed allowed_from(const MaskSpec& spec) {
  const at::Tensor qd = spec.q_doc_ids.defined() ? spec.q_doc_ids.to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor kd = spec.kv_doc_ids.defined() ? spec.kv_doc_ids.to(at::kLong).contiguous() : at::Tensor();
  at::Tensor ex;
  if (spec.extra.defined()) {
    ex = spec.extra.contiguous();
    if (ex.dim() == 2) ex = ex.view({1, 1, ex.size(0), ex.size(1)});
  }
  return [=](int64_t b, int64_t h, int64_t i, int64_t j) {
    const int64_t p = i + spec.q_offset;
    if (spec.causal && j > p) return false;
    if (spec.window > 0 && j <= p - spec.window) return false;
    if (spec.window > 0 && !spec.causal && j >= p + spec.window) return false;
    if (qd.defined()) {
      const int64_t qb = qd.size(0) == 1 ? 0 : b, kb = kd.size(0) == 1 ? 0 : b;
      if (qd.accessor<int64_t, 2>()[qb][i] != kd.accessor<int64_t, 2>()[kb][j]) return false;
    }
    if (ex.defined()) {
      auto idx = [](const at::Tensor& t, int d, int64_t v) { return t.size(d) == 1 ? 0 : v; };
      if (!ex.accessor<bool, 4>()[idx(ex, 0, b)][idx(ex, 1, h)][idx(ex, 2, i)][idx(ex, 3, j)]) return false;
    }
    return true;
  };
}

// Softmax attention in float64; query head h reads kv head h / (Hq / Hkv); rows with no allowed key
// are zero.
inline at::Tensor ref_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const Allowed& allowed, double scale = 0) {
  const at::Tensor qd = f64(q), kd = f64(k), vd = f64(v);
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Tk = k.size(2), Dv = v.size(3), group = Hq / Hkv;
  if (scale == 0) scale = 1.0 / std::sqrt(static_cast<double>(D));
  at::Tensor out = at::zeros({B, Hq, Tq, Dv}, at::kDouble);
  auto qa = qd.accessor<double, 4>();
  auto ka = kd.accessor<double, 4>();
  auto va = vd.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  std::vector<double> score(Tk);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t hk = h / group;
        double mx = -INFINITY;
        for (int64_t j = 0; j < Tk; ++j) {
          score[j] = -INFINITY;
          if (!allowed(b, h, i, j)) continue;
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += qa[b][h][i][d] * ka[b][hk][j][d];
          score[j] = s * scale;
          mx = std::max(mx, score[j]);
        }
        if (mx == -INFINITY) continue;  // no key: zeros
        double z = 0;
        for (int64_t j = 0; j < Tk; ++j) z += score[j] == -INFINITY ? 0 : std::exp(score[j] - mx);
        for (int64_t j = 0; j < Tk; ++j) {
          if (score[j] == -INFINITY) continue;
          const double w = std::exp(score[j] - mx) / z;
          for (int64_t e = 0; e < Dv; ++e) oa[b][h][i][e] += w * va[b][hk][j][e];
        }
      }
  return out;
}

}  // namespace tessera::nn::testing
