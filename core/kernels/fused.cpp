#include "core/kernels/fused.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>

#include "core/error.h"

#ifdef TESSERA_WITH_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/kernels/fused_cuda.h"
#endif

namespace tessera::kernels {

namespace {

// ---- the same math through ATen (CPU, other dtypes, builds without the kernels) --------------------

AddRmsNorm add_rms_norm_aten(const at::Tensor& residual, const at::Tensor& x, const at::Tensor& scale, double eps,
                             at::ScalarType out_dtype) {
  const at::ScalarType compute = at::promote_types(
      residual.defined() ? at::promote_types(residual.scalar_type(), x.scalar_type()) : x.scalar_type(), at::kFloat);
  const at::Tensor sum = residual.defined() ? residual.to(compute) + x.to(compute) : x.to(compute);
  const int64_t dim = sum.size(-1);
  at::Tensor normed;
  if (scale.scalar_type() == compute) {
    normed = at::rms_norm(sum, {dim}, scale, eps);  // ATen's fused kernel where it has one
  } else {
    normed = sum * sum.square().mean(-1, /*keepdim=*/true).add_(eps).rsqrt_() * scale.to(compute);
  }
  return {sum, normed.to(out_dtype)};
}

at::Tensor rope_aten(const at::Tensor& x, const at::Tensor& cos_table, const at::Tensor& sin_table,
                     const at::Tensor& positions, bool interleaved) {
  const int64_t B = x.size(0), T = x.size(2), half = x.size(3) / 2;
  const at::Tensor flat = positions.reshape(-1).to(x.device(), at::kLong);
  const int64_t pb = positions.dim() == 2 ? B : 1;
  const at::Tensor c = cos_table.index_select(0, flat).view({pb, 1, T, half});
  const at::Tensor s = sin_table.index_select(0, flat).view({pb, 1, T, half});
  // float32 for reduced precision (no-op for float32 input; float64 stays float64).
  const at::Tensor xf = x.to(at::promote_types(x.scalar_type(), at::kFloat));
  // (a, b) -> (a cos - b sin, a sin + b cos); addcmul_ acts on fresh temporaries.
  auto rotate = [&](const at::Tensor& a, const at::Tensor& b) {
    return std::make_pair((a * c).addcmul_(b, s, -1), (a * s).addcmul_(b, c));
  };
  at::Tensor out;
  if (!interleaved) {
    const auto [ra, rb] = rotate(xf.narrow(-1, 0, half), xf.narrow(-1, half, half));
    out = at::cat({ra, rb}, -1);
  } else {
    const at::Tensor pairs = xf.unflatten(-1, {half, 2});
    const auto [ra, rb] = rotate(pairs.select(-1, 0), pairs.select(-1, 1));
    out = at::stack({ra, rb}, -1).flatten(-2);
  }
  return out.to(x.scalar_type());
}

at::Tensor cross_entropy_aten(const at::Tensor& logits, const at::Tensor& targets) {
  // Reduction in float32 whatever the logits' dtype (bf16 under autocast).
  return at::cross_entropy_loss(logits.to(at::promote_types(logits.scalar_type(), at::kFloat)), targets, {},
                                at::Reduction::None);
}

#ifdef TESSERA_WITH_CUDA
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace kc = tessera::kernels::cuda;

std::optional<kc::DType> kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kc::DType::Float32;
    case at::kBFloat16: return kc::DType::BFloat16;
    case at::kHalf: return kc::DType::Float16;
    default: return std::nullopt;
  }
}

void* stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

void check_launch(int rc, const char* what) {
  check(rc == 0, what, ": CUDA kernel launch failed: ", rc < 0 ? "unsupported dtype" : cudaGetErrorString(static_cast<cudaError_t>(rc)));
}

struct AddRmsNormFunction : torch::autograd::Function<AddRmsNormFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& residual, const at::Tensor& x_in,
                               const at::Tensor& scale_in, double eps, int64_t out_dtype) {
    const c10::cuda::CUDAGuard guard(x_in.device());
    const at::Tensor x = x_in.contiguous(), scale = scale_in.contiguous();
    // No residual is passed as an empty tensor: custom autograd functions take no undefined inputs.
    const at::Tensor res = residual.numel() > 0 ? residual.contiguous() : at::Tensor();
    const int64_t dim = x.size(-1), rows = x.numel() / dim;
    const bool own_sum = res.defined() || x.scalar_type() != at::kFloat;
    const at::Tensor sum = own_sum ? at::empty(x.sizes(), x.options().dtype(at::kFloat)) : x;
    const at::Tensor normed = at::empty(x.sizes(), x.options().dtype(static_cast<at::ScalarType>(out_dtype)));
    const at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
    check_launch(kc::add_rms_norm_forward(res.defined() ? res.data_ptr<float>() : nullptr, x.data_ptr(),
                                          *kernel_dtype(x.scalar_type()), scale.data_ptr<float>(),
                                          own_sum ? sum.data_ptr<float>() : nullptr, normed.data_ptr(),
                                          *kernel_dtype(normed.scalar_type()), rstd.data_ptr<float>(), rows, dim,
                                          static_cast<float>(eps), stream_of(x)),
                 "add_rms_norm");
    ctx->save_for_backward({sum, rstd, scale});
    ctx->saved_data["has_residual"] = res.defined();
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    return {sum, normed};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &sum = saved[0], &rstd = saved[1], &scale = saved[2];
    const bool has_residual = ctx->saved_data["has_residual"].toBool();
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const c10::cuda::CUDAGuard guard(sum.device());
    const at::Tensor grad_sum = grads[0].defined() ? grads[0].to(at::kFloat).contiguous() : at::Tensor();
    if (!grads[1].defined()) {  // normed unused: the sum passes its gradient through
      const at::Tensor g = grad_sum.defined() ? grad_sum : at::zeros_like(sum);
      return {has_residual ? g : at::Tensor(), g.to(x_dtype), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const at::Tensor grad_normed = grads[1].contiguous();
    const int64_t dim = sum.size(-1), rows = sum.numel() / dim;
    const at::Tensor grad_residual = has_residual ? at::empty_like(sum) : at::Tensor();
    const at::Tensor grad_x = at::empty(sum.sizes(), sum.options().dtype(x_dtype));
    const at::Tensor partials = at::empty({kc::add_rms_norm_backward_blocks(rows), dim}, sum.options());
    check_launch(kc::add_rms_norm_backward(
                     sum.data_ptr<float>(), rstd.data_ptr<float>(), scale.data_ptr<float>(), grad_normed.data_ptr(),
                     *kernel_dtype(grad_normed.scalar_type()), grad_sum.defined() ? grad_sum.data_ptr<float>() : nullptr,
                     has_residual ? grad_residual.data_ptr<float>() : nullptr, grad_x.data_ptr(), *kernel_dtype(x_dtype),
                     partials.data_ptr<float>(), rows, dim, stream_of(sum)),
                 "add_rms_norm backward");
    return {grad_residual, grad_x, partials.sum(0), at::Tensor(), at::Tensor()};
  }
};

struct SiluMulFunction : torch::autograd::Function<SiluMulFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate_in, const at::Tensor& up_in) {
    const c10::cuda::CUDAGuard guard(gate_in.device());
    const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
    at::Tensor out = at::empty_like(gate);
    check_launch(kc::silu_mul_forward(gate.data_ptr(), up.data_ptr(), out.data_ptr(), *kernel_dtype(gate.scalar_type()),
                                      gate.numel(), stream_of(gate)),
                 "silu_mul");
    ctx->save_for_backward({gate, up});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &gate = saved[0], &up = saved[1];
    const c10::cuda::CUDAGuard guard(gate.device());
    const at::Tensor grad = grads[0].to(gate.scalar_type()).contiguous();
    at::Tensor grad_gate = at::empty_like(gate), grad_up = at::empty_like(up);
    check_launch(kc::silu_mul_backward(gate.data_ptr(), up.data_ptr(), grad.data_ptr(), grad_gate.data_ptr(),
                                       grad_up.data_ptr(), *kernel_dtype(gate.scalar_type()), gate.numel(),
                                       stream_of(gate)),
                 "silu_mul backward");
    return {grad_gate, grad_up};
  }
};

// Launches the rotation of x [B, H, T, D] into out (same sizes, own strides; both last-dim contiguous).
void rope_launch_into(const at::Tensor& x, const at::Tensor& out, const at::Tensor& cos_table,
                      const at::Tensor& sin_table, const at::Tensor& positions, bool interleaved, bool inverse) {
  kc::RopeShape s{x.size(0),      x.size(1),      x.size(2),      x.size(3),   x.stride(0), x.stride(1), x.stride(2),
                  out.stride(0),  out.stride(1),  out.stride(2),  interleaved, positions.dim() == 2, inverse};
  check_launch(kc::rope_forward(x.data_ptr(), out.data_ptr(), *kernel_dtype(x.scalar_type()),
                                cos_table.data_ptr<float>(), sin_table.data_ptr<float>(), positions.data_ptr<int64_t>(),
                                s, stream_of(x)),
               "rope");
}

// The same into a new tensor of x's strides.
at::Tensor rope_launch(const at::Tensor& x, const at::Tensor& cos_table, const at::Tensor& sin_table,
                       const at::Tensor& positions, bool interleaved, bool inverse) {
  at::Tensor out = at::empty_strided(x.sizes(), x.strides(), x.options());
  rope_launch_into(x, out, cos_table, sin_table, positions, interleaved, inverse);
  return out;
}

// Rotations need the last dimension contiguous and no overlapping elements; anything else is copied.
at::Tensor rope_ready(const at::Tensor& x) {
  return x.stride(3) == 1 && x.is_non_overlapping_and_dense() ? x : x.contiguous();
}

struct RopeFunction : torch::autograd::Function<RopeFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos_table,
                            const at::Tensor& sin_table, const at::Tensor& positions, bool interleaved) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor pos = positions.to(x.device(), at::kLong).contiguous();
    ctx->save_for_backward({cos_table, sin_table, pos});
    ctx->saved_data["interleaved"] = interleaved;
    return rope_launch(rope_ready(x), cos_table, sin_table, pos, interleaved, /*inverse=*/false);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const c10::cuda::CUDAGuard guard(grads[0].device());
    // The rotation is orthogonal: its transpose is the rotation by minus the angle.
    const at::Tensor g = rope_launch(rope_ready(grads[0]), saved[0], saved[1], saved[2],
                                     ctx->saved_data["interleaved"].toBool(), /*inverse=*/true);
    return {g, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct SiluMulPackedFunction : torch::autograd::Function<SiluMulPackedFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate_up_in) {
    const c10::cuda::CUDAGuard guard(gate_up_in.device());
    const at::Tensor gate_up = gate_up_in.contiguous();
    const int64_t hidden = gate_up.size(-1) / 2, rows = gate_up.numel() / std::max<int64_t>(2 * hidden, 1);
    std::vector<int64_t> sizes = gate_up.sizes().vec();
    sizes.back() = hidden;
    at::Tensor out = at::empty(sizes, gate_up.options());
    check_launch(kc::silu_mul_packed_forward(gate_up.data_ptr(), out.data_ptr(), *kernel_dtype(gate_up.scalar_type()),
                                             rows, hidden, stream_of(gate_up)),
                 "silu_mul_packed");
    ctx->save_for_backward({gate_up});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor gate_up = ctx->get_saved_variables()[0];
    const c10::cuda::CUDAGuard guard(gate_up.device());
    const at::Tensor grad = grads[0].to(gate_up.scalar_type()).contiguous();
    const int64_t hidden = gate_up.size(-1) / 2, rows = gate_up.numel() / std::max<int64_t>(2 * hidden, 1);
    at::Tensor grad_gate_up = at::empty_like(gate_up);
    check_launch(kc::silu_mul_packed_backward(gate_up.data_ptr(), grad.data_ptr(), grad_gate_up.data_ptr(),
                                              *kernel_dtype(gate_up.scalar_type()), rows, hidden, stream_of(gate_up)),
                 "silu_mul_packed backward");
    return {grad_gate_up};
  }
};

// qkv [B, T, (Hq + 2·Hkv)·D] -> rotated q [B, Hq, T, D] and k [B, Hkv, T, D] (new tensors laid out as
// [B, T, H, D], which SDPA reads as is) and v, a view of qkv. The backward writes dq and dk rotated back,
// and dv, into one gradient of qkv's layout: no concatenation and no sum of three input gradients.
struct QkvRopeFunction : torch::autograd::Function<QkvRopeFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& qkv_in, const at::Tensor& cos_table,
                               const at::Tensor& sin_table, const at::Tensor& positions, int64_t n_heads,
                               int64_t n_kv_heads, bool interleaved) {
    const c10::cuda::CUDAGuard guard(qkv_in.device());
    const at::Tensor qkv = qkv_in.contiguous();
    const int64_t B = qkv.size(0), T = qkv.size(1), E = qkv.size(2), D = E / (n_heads + 2 * n_kv_heads);
    const at::Tensor pos = positions.to(qkv.device(), at::kLong).contiguous();
    auto heads = [&](int64_t first, int64_t count) {  // a [B, count, T, D] view of qkv's heads [first, first + count)
      return qkv.narrow(2, first * D, count * D).view({B, T, count, D}).transpose(1, 2);
    };
    auto rotated = [&](int64_t first, int64_t count) {
      const at::Tensor out = at::empty_strided({B, count, T, D}, {T * count * D, D, count * D, 1}, qkv.options());
      rope_launch_into(heads(first, count), out, cos_table, sin_table, pos, interleaved, /*inverse=*/false);
      return out;
    };
    const at::Tensor q = rotated(0, n_heads), k = rotated(n_heads, n_kv_heads);
    ctx->save_for_backward({cos_table, sin_table, pos});
    ctx->saved_data["shape"] = std::vector<int64_t>{B, T, E, D, n_heads, n_kv_heads};
    ctx->saved_data["interleaved"] = interleaved;
    ctx->saved_data["dtype"] = static_cast<int64_t>(qkv.scalar_type());
    return {q, k, heads(n_heads + n_kv_heads, n_kv_heads)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> shape = ctx->saved_data["shape"].toIntVector();
    const int64_t B = shape[0], T = shape[1], E = shape[2], D = shape[3], Hq = shape[4], Hkv = shape[5];
    const bool interleaved = ctx->saved_data["interleaved"].toBool();
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const c10::cuda::CUDAGuard guard(saved[0].device());
    at::Tensor grad = at::empty({B, T, E}, saved[0].options().dtype(dtype));
    auto heads = [&](int64_t first, int64_t count) {
      return grad.narrow(2, first * D, count * D).view({B, T, count, D}).transpose(1, 2);
    };
    const int64_t first[3] = {0, Hq, Hq + Hkv}, count[3] = {Hq, Hkv, Hkv};
    for (int i = 0; i < 3; ++i) {
      const at::Tensor dst = heads(first[i], count[i]);
      if (!grads[i].defined()) {
        dst.zero_();
      } else if (i < 2) {  // the rotation is orthogonal: its transpose rotates by minus the angle
        rope_launch_into(rope_ready(grads[i].to(dtype)), dst, saved[0], saved[1], saved[2], interleaved,
                         /*inverse=*/true);
      } else {
        dst.copy_(grads[i]);
      }
    }
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// autocast_linear's op: w0..w2 float32 masters (empty tensors for absent ones), dtype the autocast dtype.
struct AutocastLinearFunction : torch::autograd::Function<AutocastLinearFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w0, const at::Tensor& w1,
                            const at::Tensor& w2, int64_t dtype_code) {
    const auto dtype = static_cast<at::ScalarType>(dtype_code);
    std::vector<int64_t> rows;
    int64_t total = 0;
    for (const at::Tensor* w : {&w0, &w1, &w2})
      if (w->numel() > 0) {
        rows.push_back(w->size(0));
        total += w->size(0);
      }
    // Each master cast straight into its rows of the concatenated weight: no separate concatenation.
    const at::Tensor weight = at::empty({total, w0.size(1)}, w0.options().dtype(dtype));
    int64_t offset = 0;
    for (const at::Tensor* w : {&w0, &w1, &w2})
      if (w->numel() > 0) {
        weight.narrow(0, offset, w->size(0)).copy_(*w);
        offset += w->size(0);
      }
    const at::Tensor input = x.to(dtype);
    ctx->save_for_backward({input, weight});
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    return at::matmul(input, weight.t());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1];
    const std::vector<int64_t> rows = ctx->saved_data["rows"].toIntVector();
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const int64_t in = weight.size(1), out = weight.size(0);
    const at::Tensor grad = grads[0].to(weight.scalar_type()).reshape({-1, out});
    const at::Tensor grad_input = at::mm(grad, weight).view(input.sizes()).to(x_dtype);
    // [out, in] in float32 from the GEMM itself: no bf16 weight gradient to cast.
    const at::Tensor grad_weight = at::mm(grad.t(), input.reshape({-1, in}), at::kFloat);
    variable_list result{grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    int64_t offset = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      result[1 + i] = grad_weight.narrow(0, offset, rows[i]);
      offset += rows[i];
    }
    return result;
  }
};

struct CrossEntropyFunction : torch::autograd::Function<CrossEntropyFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits_in, const at::Tensor& targets_in) {
    const c10::cuda::CUDAGuard guard(logits_in.device());
    const at::Tensor logits = logits_in.contiguous(), targets = targets_in.to(at::kLong).contiguous();
    const int64_t rows = logits.size(0), vocab = logits.size(1);
    at::Tensor nll = at::empty({rows}, logits.options().dtype(at::kFloat));
    const at::Tensor lse = at::empty({rows}, nll.options());
    check_launch(kc::cross_entropy_forward(logits.data_ptr(), *kernel_dtype(logits.scalar_type()),
                                           targets.data_ptr<int64_t>(), nll.data_ptr<float>(), lse.data_ptr<float>(),
                                           rows, vocab, stream_of(logits)),
                 "cross_entropy");
    ctx->save_for_backward({logits, targets, lse});
    return nll;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &logits = saved[0], &targets = saved[1], &lse = saved[2];
    const c10::cuda::CUDAGuard guard(logits.device());
    const at::Tensor grad_nll = grads[0].to(at::kFloat).contiguous();
    at::Tensor grad_logits = at::empty_like(logits);
    check_launch(kc::cross_entropy_backward(logits.data_ptr(), *kernel_dtype(logits.scalar_type()),
                                            targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
                                            grad_nll.data_ptr<float>(), grad_logits.data_ptr(), logits.size(0),
                                            logits.size(1), stream_of(logits)),
                 "cross_entropy backward");
    return {grad_logits, at::Tensor()};
  }
};
#endif  // TESSERA_WITH_CUDA

#ifdef TESSERA_WITH_CUDA
bool on_cuda(const at::Tensor& t) { return t.defined() && t.is_cuda(); }

bool kernel_float_type(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }
#endif

}  // namespace

bool cuda_graph_capturing() {
#ifdef TESSERA_WITH_CUDA
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
#else
  return false;
#endif
}

bool cuda_kernels_built() {
#ifdef TESSERA_WITH_CUDA
  return true;
#else
  return false;
#endif
}

AddRmsNorm add_rms_norm(const at::Tensor& residual, const at::Tensor& x, const at::Tensor& scale, double eps,
                        at::ScalarType out_dtype, bool use_kernel) {
  const int64_t dim = scale.numel();
  check(x.dim() >= 1 && x.size(-1) == dim && scale.dim() == 1, "add_rms_norm: expected x [..., ", dim,
        "] and scale [", dim, "], got ", x.sizes(), " and ", scale.sizes());
  check(!residual.defined() || residual.sizes() == x.sizes(), "add_rms_norm: residual ", residual.sizes(),
        " and x ", x.sizes(), " differ");
#ifdef TESSERA_WITH_CUDA
  if (use_kernel && on_cuda(x) && kernel_float_type(x.scalar_type()) && kernel_float_type(out_dtype) &&
      scale.scalar_type() == at::kFloat && (!residual.defined() || residual.scalar_type() == at::kFloat) &&
      x.numel() > 0) {
    const at::Tensor res = residual.defined() ? residual : at::empty({0}, x.options().dtype(at::kFloat));
    const variable_list out = AddRmsNormFunction::apply(res, x, scale, eps, static_cast<int64_t>(out_dtype));
    return {out[0], out[1]};
  }
#endif
  return add_rms_norm_aten(residual, x, scale, eps, out_dtype);
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up, bool use_kernel) {
  check(gate.sizes() == up.sizes(), "silu_mul: gate ", gate.sizes(), " and up ", up.sizes(), " differ");
#ifdef TESSERA_WITH_CUDA
  if (use_kernel && on_cuda(gate) && gate.scalar_type() == up.scalar_type() && kernel_float_type(gate.scalar_type()))
    return SiluMulFunction::apply(gate, up);
#endif
  return at::silu(gate) * up;
}

at::Tensor silu_mul_packed(const at::Tensor& gate_up, bool use_kernel) {
  check(gate_up.dim() >= 1 && gate_up.size(-1) % 2 == 0, "silu_mul_packed: expected gate_up [..., 2·hidden], got ",
        gate_up.sizes());
#ifdef TESSERA_WITH_CUDA
  if (use_kernel && on_cuda(gate_up) && kernel_float_type(gate_up.scalar_type()) && gate_up.numel() > 0)
    return SiluMulPackedFunction::apply(gate_up);
#endif
  const std::vector<at::Tensor> halves = gate_up.chunk(2, -1);  // one backward node: both halves' gradients in one cat
  return at::silu(halves[0]) * halves[1];
}

QkvHeads split_qkv_rope(const at::Tensor& qkv, int64_t n_heads, int64_t n_kv_heads, const at::Tensor& cos_table,
                        const at::Tensor& sin_table, const at::Tensor& positions, bool interleaved, bool use_kernel) {
  check(qkv.dim() == 3 && n_heads > 0 && n_kv_heads > 0 && qkv.size(2) % (n_heads + 2 * n_kv_heads) == 0,
        "split_qkv_rope: expected qkv [B, T, (", n_heads, " + 2·", n_kv_heads, ")·head_dim], got ", qkv.sizes());
  const int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(2) / (n_heads + 2 * n_kv_heads);
  const bool rotate = cos_table.defined();
  check(!rotate || (D % 2 == 0 && cos_table.size(1) == D / 2), "split_qkv_rope: head dim ", D,
        " does not match the RoPE tables [", cos_table.sizes(), "]");
#ifdef TESSERA_WITH_CUDA
  if (rotate && use_kernel && on_cuda(qkv) && kernel_float_type(qkv.scalar_type()) && qkv.numel() > 0 &&
      cos_table.scalar_type() == at::kFloat && sin_table.scalar_type() == at::kFloat && cos_table.is_contiguous() &&
      sin_table.is_contiguous()) {
    const variable_list out =
        QkvRopeFunction::apply(qkv, cos_table, sin_table, positions, n_heads, n_kv_heads, interleaved);
    return {out[0], out[1], out[2]};
  }
#endif
  // One split (a single backward node that concatenates the three gradients), then the rotations.
  const std::vector<at::Tensor> parts = qkv.split_with_sizes({n_heads * D, n_kv_heads * D, n_kv_heads * D}, 2);
  auto heads = [&](const at::Tensor& part, int64_t count) { return part.view({B, T, count, D}).transpose(1, 2); };
  at::Tensor q = heads(parts[0], n_heads), k = heads(parts[1], n_kv_heads);
  if (rotate) {
    q = rope(q, cos_table, sin_table, positions, interleaved, use_kernel);
    k = rope(k, cos_table, sin_table, positions, interleaved, use_kernel);
  }
  return {q, k, heads(parts[2], n_kv_heads)};
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos_table, const at::Tensor& sin_table,
                const at::Tensor& positions, bool interleaved, bool use_kernel) {
  check(x.dim() == 4 && x.size(3) % 2 == 0 && cos_table.size(1) == x.size(3) / 2, "rope: expected x [B, H, T, D] with D = ",
        2 * cos_table.size(1), ", got ", x.sizes());
#ifdef TESSERA_WITH_CUDA
  if (use_kernel && on_cuda(x) && kernel_float_type(x.scalar_type()) && cos_table.scalar_type() == at::kFloat &&
      sin_table.scalar_type() == at::kFloat && cos_table.is_contiguous() && sin_table.is_contiguous())
    return RopeFunction::apply(x, cos_table, sin_table, positions, interleaved);
#endif
  return rope_aten(x, cos_table, sin_table, positions, interleaved);
}

at::Tensor cross_entropy_nll(const at::Tensor& logits, const at::Tensor& targets, bool use_kernel) {
  check(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
        "cross_entropy_nll: expected logits [N, V] and targets [N], got ", logits.sizes(), " and ", targets.sizes());
#ifdef TESSERA_WITH_CUDA
  if (use_kernel && on_cuda(logits) && kernel_float_type(logits.scalar_type()) && logits.size(1) > 0)
    return CrossEntropyFunction::apply(logits, targets);
#endif
  return cross_entropy_aten(logits, targets);
}

at::Tensor autocast_linear(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                           const std::vector<at::Tensor>& biases, bool use_kernel) {
  check(!weights.empty() && weights.size() <= 3, "autocast_linear: expected 1 to 3 weights, got ", weights.size());
  check(biases.empty() || biases.size() == weights.size(), "autocast_linear: ", biases.size(), " biases for ",
        weights.size(), " weights (none, or one per weight)");
  const int64_t in = weights.front().size(-1);
  for (const at::Tensor& w : weights)
    check(w.dim() == 2 && w.size(1) == in, "autocast_linear: weights must be [out, ", in, "], got ", w.sizes());
  check(x.dim() >= 1 && x.size(-1) == in, "autocast_linear: expected x [..., ", in, "], got ", x.sizes());
  const c10::DeviceType device = x.device().type();
  const bool autocast = at::autocast::is_autocast_enabled(device);
#ifdef TESSERA_WITH_CUDA
  bool masters = biases.empty();
  for (const at::Tensor& w : weights) masters = masters && w.scalar_type() == at::kFloat && w.is_cuda();
  const at::ScalarType dtype = autocast ? at::autocast::get_autocast_dtype(device) : x.scalar_type();
  if (use_kernel && on_cuda(x) && autocast && masters && (dtype == at::kBFloat16 || dtype == at::kHalf) &&
      x.numel() > 0) {
    const at::Tensor none = at::empty({0}, weights.front().options());
    return AutocastLinearFunction::apply(x, weights[0], weights.size() > 1 ? weights[1] : none,
                                         weights.size() > 2 ? weights[2] : none, static_cast<int64_t>(dtype));
  }
#endif
  auto joined = [&](const std::vector<at::Tensor>& parts) -> at::Tensor {
    if (parts.empty()) return {};
    if (parts.size() == 1) return parts[0];  // autocast casts it inside at::linear (cached for weights)
    std::vector<at::Tensor> cast;
    for (const at::Tensor& t : parts)
      cast.push_back(autocast ? at::autocast::cached_cast(at::autocast::get_autocast_dtype(device), t, device) : t);
    return at::cat(cast);
  };
  return at::linear(x, joined(weights), joined(biases));
}

void adamw_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& exp_avg_sqs,
                const std::vector<at::Tensor>& steps, double lr, double beta1, double beta2, double weight_decay,
                double eps, const at::Tensor& grad_multiplier, bool use_kernel) {
  const size_t n = params.size();
  check(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n,
        "adamw_step: parameter, gradient, moment and step lists differ in length");
  if (n == 0) return;
  at::NoGradGuard no_grad;
  at::_foreach_add_(steps, 1.0);
#ifdef TESSERA_WITH_CUDA
  bool kernel = use_kernel;
  for (size_t i = 0; i < n && kernel; ++i)
    for (const at::Tensor* t : {&params[i], &grads[i], &exp_avgs[i], &exp_avg_sqs[i], &steps[i]})
      kernel = kernel && on_cuda(*t) && t->scalar_type() == at::kFloat && (t == &steps[i] || t->is_contiguous());
  kernel = kernel && (!grad_multiplier.defined() ||
                      (on_cuda(grad_multiplier) && grad_multiplier.scalar_type() == at::kFloat && grad_multiplier.numel() == 1));
  if (kernel) {
    const c10::cuda::CUDAGuard guard(params.front().device());
    const float* multiplier = grad_multiplier.defined() ? grad_multiplier.data_ptr<float>() : nullptr;
    for (size_t i = 0; i < n; ++i) {
      check(grads[i].numel() == params[i].numel(), "adamw_step: gradient of parameter ", i, " has ",
            grads[i].numel(), " values, the parameter ", params[i].numel());
      check_launch(kc::adamw_step(params[i].data_ptr<float>(), grads[i].data_ptr<float>(),
                                  exp_avgs[i].data_ptr<float>(), exp_avg_sqs[i].data_ptr<float>(),
                                  steps[i].data_ptr<float>(), multiplier, params[i].numel(), static_cast<float>(lr),
                                  static_cast<float>(beta1), static_cast<float>(beta2),
                                  static_cast<float>(weight_decay), static_cast<float>(eps), stream_of(params[i])),
                   "adamw");
    }
    return;
  }
#endif
  if (grad_multiplier.defined()) at::_foreach_mul_(grads, grad_multiplier.to(grads.front().scalar_type()));
  at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2,
                    weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
}

at::ScalarType activation_dtype(const at::Tensor& x) {
  const at::DeviceType device = x.device().type();
  if ((device == at::kCUDA || device == at::kCPU) && at::autocast::is_autocast_enabled(device))
    return at::autocast::get_autocast_dtype(device);
  return x.scalar_type();
}

}  // namespace tessera::kernels
