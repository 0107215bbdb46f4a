// Fused CUDA kernels for the transformer blocks' elementwise and row-wise work (see fused_cuda.h).
// Math in float32 whatever the storage dtype; one rounding at each output.
#include "core/kernels/fused_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace tessera::kernels::cuda {
namespace {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }

constexpr int kThreads = 256;

// 16 bytes of one dtype, for vectorised loads and stores (8 bf16/fp16 or 4 floats per access).
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Sum over the block (every thread gets the result). Uses 32 floats of shared memory.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? partial[lane] : 0.f;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ float block_max(float v) {
  __shared__ float partial[32];
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? partial[lane] : -INFINITY;
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

int finish() { return static_cast<int>(cudaGetLastError()); }

// Calls f with a typed null pointer for the dtype (for template dispatch); returns -1 for unknown dtypes.
template <typename F>
int dispatch(DType d, F&& f) {
  switch (d) {
    case DType::Float32: return f(static_cast<float*>(nullptr));
    case DType::BFloat16: return f(static_cast<__nv_bfloat16*>(nullptr));
    case DType::Float16: return f(static_cast<__half*>(nullptr));
  }
  return -1;
}

// ---- residual add + RMSNorm ------------------------------------------------------------------------

// W consecutive values of one dtype, aligned so that W = 4 is one vector access (16 bytes of float32,
// 8 of bf16); W = 1 is the scalar fallback for widths or pointers that do not allow it.
template <typename T, int W>
struct alignas(sizeof(T) * W) Chunk {
  T v[W];
};

template <int W, typename T>
__device__ __forceinline__ void load(const T* __restrict__ row, int64_t j, float (&out)[W]) {
  const Chunk<T, W> c = reinterpret_cast<const Chunk<T, W>*>(row)[j];
#pragma unroll
  for (int k = 0; k < W; ++k) out[k] = to_float(c.v[k]);
}

template <int W, typename T>
__device__ __forceinline__ void store(T* __restrict__ row, int64_t j, const float (&in)[W]) {
  Chunk<T, W> c;
#pragma unroll
  for (int k = 0; k < W; ++k) c.v[k] = from_float<T>(in[k]);
  reinterpret_cast<Chunk<T, W>*>(row)[j] = c;
}

// x[j] (+ residual[j] when residual is not null), chunk j of W values, in float32.
template <int W, typename TX>
__device__ __forceinline__ void load_sum(const TX* __restrict__ x, const float* __restrict__ residual, int64_t j,
                                         float (&out)[W]) {
  load<W>(x, j, out);
  if (residual) {
    float r[W];
    load<W>(residual, j, r);
#pragma unroll
    for (int k = 0; k < W; ++k) out[k] += r[k];
  }
}

template <typename TX, typename TO, int W>
__global__ void add_rms_norm_fwd_kernel(const float* __restrict__ residual, const TX* __restrict__ x,
                                        const float* __restrict__ scale, float* __restrict__ sum_out,
                                        TO* __restrict__ out, float* __restrict__ rstd, int64_t dim, float eps) {
  const int64_t row = blockIdx.x, chunks = dim / W;
  const TX* xr = x + row * dim;
  const float* rr = residual ? residual + row * dim : nullptr;
  float* sr = sum_out ? sum_out + row * dim : nullptr;
  float squares = 0.f;
  for (int64_t j = threadIdx.x; j < chunks; j += blockDim.x) {
    float v[W];
    load_sum<W>(xr, rr, j, v);
    if (sr) store<W>(sr, j, v);
#pragma unroll
    for (int k = 0; k < W; ++k) squares += v[k] * v[k];
  }
  const float inv = rsqrtf(block_sum(squares) / static_cast<float>(dim) + eps);
  if (threadIdx.x == 0) rstd[row] = inv;
  TO* orow = out + row * dim;
  for (int64_t j = threadIdx.x; j < chunks; j += blockDim.x) {
    float v[W], sc[W];
    if (sr) {
      load<W>(sr, j, v);  // written by this thread above
    } else {
      load_sum<W>(xr, rr, j, v);
    }
    load<W>(scale, j, sc);
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] *= inv * sc[k];
    store<W>(orow, j, v);
  }
}

constexpr int64_t kNormBackwardRowsPerBlock = 16;

template <typename TG, typename TX, int W>
__global__ void add_rms_norm_bwd_kernel(const float* __restrict__ sum, const float* __restrict__ rstd,
                                        const float* __restrict__ scale, const TG* __restrict__ grad_normed,
                                        const float* __restrict__ grad_sum, float* __restrict__ grad_residual,
                                        TX* __restrict__ grad_x, float* __restrict__ scale_partials, int64_t rows,
                                        int64_t dim) {
  extern __shared__ float scale_grad[];  // [dim]: this block's partial sum of grad_normed · x̂
  const int64_t chunks = dim / W;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) scale_grad[j] = 0.f;
  __syncthreads();
  const int64_t first = blockIdx.x * kNormBackwardRowsPerBlock;
  const int64_t last = min(rows, first + kNormBackwardRowsPerBlock);
  for (int64_t row = first; row < last; ++row) {
    const float inv = rstd[row];
    const float* s = sum + row * dim;
    const TG* g = grad_normed + row * dim;
    float dot = 0.f;
    for (int64_t j = threadIdx.x; j < chunks; j += blockDim.x) {
      float sv[W], gv[W], sc[W];
      load<W>(s, j, sv);
      load<W>(g, j, gv);
      load<W>(scale, j, sc);
#pragma unroll
      for (int k = 0; k < W; ++k) dot += gv[k] * sc[k] * sv[k] * inv;
    }
    const float mean_dot = block_sum(dot) / static_cast<float>(dim);
    for (int64_t j = threadIdx.x; j < chunks; j += blockDim.x) {
      float sv[W], gv[W], sc[W], dx[W];
      load<W>(s, j, sv);
      load<W>(g, j, gv);
      load<W>(scale, j, sc);
      float gs[W];
      if (grad_sum) load<W>(grad_sum + row * dim, j, gs);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const float xhat = sv[k] * inv;
        dx[k] = inv * (gv[k] * sc[k] - xhat * mean_dot) + (grad_sum ? gs[k] : 0.f);
        scale_grad[j * W + k] += gv[k] * xhat;  // only this thread touches these columns
      }
      if (grad_residual) store<W>(grad_residual + row * dim, j, dx);
      if (grad_x) store<W>(grad_x + row * dim, j, dx);
    }
  }
  __syncthreads();  // column j was accumulated by the thread owning chunk j / W
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) scale_partials[blockIdx.x * dim + j] = scale_grad[j];
}

// ---- SwiGLU's silu(gate) · up ---------------------------------------------------------------------

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

template <typename T>
__global__ void silu_mul_fwd_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                                    int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g * sigmoid(g) * to_float(up[i]));
  }
}

template <typename T>
__global__ void silu_mul_bwd_kernel(const T* __restrict__ gate, const T* __restrict__ up, const T* __restrict__ grad,
                                    T* __restrict__ grad_gate, T* __restrict__ grad_up, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]), u = to_float(up[i]), go = to_float(grad[i]);
    const float sg = sigmoid(g);
    grad_gate[i] = from_float<T>(go * u * sg * (1.f + g * (1.f - sg)));
    grad_up[i] = from_float<T>(go * g * sg);
  }
}

template <typename T>
__global__ void silu_mul_fwd_pack_kernel(const Pack<T>* __restrict__ gate, const Pack<T>* __restrict__ up,
                                         Pack<T>* __restrict__ out, int64_t packs) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Pack<T> g = gate[i], u = up[i];
    Pack<T> o;
#pragma unroll
    for (int k = 0; k < Pack<T>::kSize; ++k) {
      const float gv = to_float(g.v[k]);
      o.v[k] = from_float<T>(gv * sigmoid(gv) * to_float(u.v[k]));
    }
    out[i] = o;
  }
}

template <typename T>
__global__ void silu_mul_bwd_pack_kernel(const Pack<T>* __restrict__ gate, const Pack<T>* __restrict__ up,
                                         const Pack<T>* __restrict__ grad, Pack<T>* __restrict__ grad_gate,
                                         Pack<T>* __restrict__ grad_up, int64_t packs) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Pack<T> g = gate[i], u = up[i], go = grad[i];
    Pack<T> dg, du;
#pragma unroll
    for (int k = 0; k < Pack<T>::kSize; ++k) {
      const float gv = to_float(g.v[k]), uv = to_float(u.v[k]), gov = to_float(go.v[k]);
      const float sg = sigmoid(gv);
      dg.v[k] = from_float<T>(gov * uv * sg * (1.f + gv * (1.f - sg)));
      du.v[k] = from_float<T>(gov * gv * sg);
    }
    grad_gate[i] = dg;
    grad_up[i] = du;
  }
}

int elementwise_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 132 * 32 ? (blocks > 0 ? blocks : 1) : 132 * 32);
}

// Packed gate/up rows [rows, 2·hidden]: a block walks whole rows (no per-element division), W values per
// access (W = 16 bytes when hidden and the pointers allow it, else 1).
template <typename T, int W>
__global__ void silu_mul_packed_fwd_kernel(const T* __restrict__ gate_up, T* __restrict__ out, int64_t rows,
                                           int64_t hidden) {
  const int64_t chunks = hidden / W;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* gate = gate_up + r * 2 * hidden;
    const T* up = gate + hidden;
    T* o = out + r * hidden;
    for (int64_t j = threadIdx.x; j < chunks; j += blockDim.x) {
      float g[W], u[W], y[W];
      load<W>(gate, j, g);
      load<W>(up, j, u);
#pragma unroll
      for (int k = 0; k < W; ++k) y[k] = g[k] * sigmoid(g[k]) * u[k];
      store<W>(o, j, y);
    }
  }
}

template <typename T, int W>
__global__ void silu_mul_packed_bwd_kernel(const T* __restrict__ gate_up, const T* __restrict__ grad,
                                           T* __restrict__ grad_gate_up, int64_t rows, int64_t hidden) {
  const int64_t chunks = hidden / W;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* gate = gate_up + r * 2 * hidden;
    const T* up = gate + hidden;
    const T* go = grad + r * hidden;
    T* dgate = grad_gate_up + r * 2 * hidden;
    T* dup = dgate + hidden;
    for (int64_t j = threadIdx.x; j < chunks; j += blockDim.x) {
      float g[W], u[W], d[W], dg[W], du[W];
      load<W>(gate, j, g);
      load<W>(up, j, u);
      load<W>(go, j, d);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const float sg = sigmoid(g[k]);
        dg[k] = d[k] * u[k] * sg * (1.f + g[k] * (1.f - sg));
        du[k] = d[k] * g[k] * sg;
      }
      store<W>(dgate, j, dg);
      store<W>(dup, j, du);
    }
  }
}

constexpr int kPackedThreads = 128;

int packed_blocks(int64_t rows) { return static_cast<int>(rows < 132 * 16 ? (rows > 0 ? rows : 1) : 132 * 16); }

// ---- rotary embedding ------------------------------------------------------------------------------

// One block per token (b, t): its H heads × D/2 pairs, with 32-bit index math inside the token (64-bit
// division per element was this kernel's cost).
template <typename T>
__global__ void rope_kernel(const T* __restrict__ x, T* __restrict__ out, const float* __restrict__ cos_table,
                            const float* __restrict__ sin_table, const int64_t* __restrict__ positions,
                            RopeShape s) {
  const int64_t token = blockIdx.x;
  const int64_t b = token / s.T, t = token - b * s.T;
  const int half = static_cast<int>(s.D / 2), pairs = static_cast<int>(s.H) * half;
  const int64_t pos = positions[s.positions_batched ? token : t];
  const float* cos_row = cos_table + pos * half;
  const float* sin_row = sin_table + pos * half;
  const T* xt = x + b * s.x_stride_b + t * s.x_stride_t;
  T* ot = out + b * s.out_stride_b + t * s.out_stride_t;
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
    const int h = i / half, p = i - h * half;
    const float c = cos_row[p], sn = s.inverse ? -sin_row[p] : sin_row[p];
    const int64_t ia = s.interleaved ? 2 * p : p, ib = s.interleaved ? 2 * p + 1 : p + half;
    const T* xh = xt + h * s.x_stride_h;
    T* oh = ot + h * s.out_stride_h;
    const float a = to_float(xh[ia]), bv = to_float(xh[ib]);
    oh[ia] = from_float<T>(a * c - bv * sn);
    oh[ib] = from_float<T>(a * sn + bv * c);
  }
}

// The same with 16-byte accesses: a thread rotates one chunk of V = 16 / sizeof(T) values of one head —
// half split: V pairs (V values from each half, V cos and sin); interleaved: V / 2 adjacent pairs. One
// block per token, one thread per (head, chunk). Needs the chunks aligned (launcher checks).
template <typename T>
__global__ void rope_vec_kernel(const T* __restrict__ x, T* __restrict__ out, const float* __restrict__ cos_table,
                                const float* __restrict__ sin_table, const int64_t* __restrict__ positions,
                                RopeShape s) {
  constexpr int V = Pack<T>::kSize;
  const int64_t token = blockIdx.x;
  const int64_t b = token / s.T, t = token - b * s.T;
  const int half = static_cast<int>(s.D / 2);
  const int chunks = s.interleaved ? static_cast<int>(s.D) / V : half / V;  // per head
  const int i = threadIdx.x;
  if (i >= static_cast<int>(s.H) * chunks) return;
  const int h = i / chunks, c = i - h * chunks;
  const int64_t pos = positions[s.positions_batched ? token : t];
  const T* xh = x + b * s.x_stride_b + t * s.x_stride_t + h * s.x_stride_h;
  T* oh = out + b * s.out_stride_b + t * s.out_stride_t + h * s.out_stride_h;
  const float sign = s.inverse ? -1.f : 1.f;
  if (!s.interleaved) {
    float a[V], bv[V], cs[V], sn[V];
    load<V>(xh, c, a);
    load<V>(xh + half, c, bv);
    load<V>(cos_table + pos * half, c, cs);  // V floats: two 16-byte loads
    load<V>(sin_table + pos * half, c, sn);
    float ra[V], rb[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      ra[k] = a[k] * cs[k] - bv[k] * sign * sn[k];
      rb[k] = a[k] * sign * sn[k] + bv[k] * cs[k];
    }
    store<V>(oh, c, ra);
    store<V>(oh + half, c, rb);
  } else {
    constexpr int P = V / 2;
    float v[V], cs[P], sn[P], r[V];
    load<V>(xh, c, v);
    load<P>(cos_table + pos * half, c, cs);
    load<P>(sin_table + pos * half, c, sn);
#pragma unroll
    for (int k = 0; k < P; ++k) {
      r[2 * k] = v[2 * k] * cs[k] - v[2 * k + 1] * sign * sn[k];
      r[2 * k + 1] = v[2 * k] * sign * sn[k] + v[2 * k + 1] * cs[k];
    }
    store<V>(oh, c, r);
  }
}

// ---- cross-entropy ---------------------------------------------------------------------------------

constexpr int kCeThreads = 512;

// Rows are read in 16-byte packs when kPacked (vocab a multiple of the pack and the rows aligned).
// Online log-sum-exp: each thread keeps a running max m and sum s of exp(v - m), rescaling s when m
// grows, so the row is read once (a max pass then an exp pass read it twice). A thread that has seen
// only -inf keeps s = 0.
struct OnlineLse {
  float m = -INFINITY, s = 0.f;
  __device__ __forceinline__ void raise_to(float new_max) {
    if (new_max > m) {
      s = m == -INFINITY ? 0.f : s * __expf(m - new_max);
      m = new_max;
    }
  }
  __device__ __forceinline__ void add(float v) {
    if (m != -INFINITY) s += __expf(v - m);
  }
};

template <typename T, bool kPacked>
__global__ void cross_entropy_fwd_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                                         float* __restrict__ nll, float* __restrict__ lse, int64_t vocab) {
  const int64_t row = blockIdx.x;
  const T* l = logits + row * vocab;
  OnlineLse acc;
  if (kPacked) {
    const Pack<T>* packs = reinterpret_cast<const Pack<T>*>(l);
    for (int64_t i = threadIdx.x; i < vocab / Pack<T>::kSize; i += blockDim.x) {
      const Pack<T> p = packs[i];
      float v[Pack<T>::kSize], pack_max = -INFINITY;
#pragma unroll
      for (int k = 0; k < Pack<T>::kSize; ++k) {
        v[k] = to_float(p.v[k]);
        pack_max = fmaxf(pack_max, v[k]);
      }
      acc.raise_to(pack_max);
#pragma unroll
      for (int k = 0; k < Pack<T>::kSize; ++k) acc.add(v[k]);
    }
  } else {
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float v = to_float(l[j]);
      acc.raise_to(v);
      acc.add(v);
    }
  }
  const float m = block_max(acc.m);
  const float total = block_sum(acc.m == -INFINITY ? 0.f : acc.s * __expf(acc.m - m));
  if (threadIdx.x == 0) {
    const float row_lse = m + logf(total);
    lse[row] = row_lse;
    const int64_t t = targets[row];
    if (t == -100) nll[row] = 0.f;
    else if (t < 0 || t >= vocab) nll[row] = NAN;  // a bad target must not pass silently
    else nll[row] = row_lse - to_float(l[t]);
  }
}

template <typename T, bool kPacked>
__global__ void cross_entropy_bwd_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                                         const float* __restrict__ lse, const float* __restrict__ grad_nll,
                                         T* __restrict__ grad_logits, int64_t vocab) {
  const int64_t row = blockIdx.x;
  const int64_t t = targets[row];
  const float g = (t == -100) ? 0.f : grad_nll[row];
  const float row_lse = lse[row];
  const T* l = logits + row * vocab;
  T* out = grad_logits + row * vocab;
  if (kPacked) {
    const Pack<T>* in = reinterpret_cast<const Pack<T>*>(l);
    Pack<T>* o = reinterpret_cast<Pack<T>*>(out);
    for (int64_t i = threadIdx.x; i < vocab / Pack<T>::kSize; i += blockDim.x) {
      const Pack<T> p = in[i];
      Pack<T> r;
#pragma unroll
      for (int k = 0; k < Pack<T>::kSize; ++k) {
        const int64_t j = i * Pack<T>::kSize + k;
        r.v[k] = from_float<T>(g * (__expf(to_float(p.v[k]) - row_lse) - (j == t ? 1.f : 0.f)));
      }
      o[i] = r;
    }
  } else {
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float p = __expf(to_float(l[j]) - row_lse);
      out[j] = from_float<T>(g * (p - (j == t ? 1.f : 0.f)));
    }
  }
}

// ---- AdamW ---------------------------------------------------------------------------------------

template <int W>
__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ exp_avg,
                             float* __restrict__ exp_avg_sq, const float* __restrict__ step,
                             const float* __restrict__ grad_multiplier, int64_t chunks, float lr, float beta1,
                             float beta2, float weight_decay, float eps) {
  // Bias corrections in double, then float, as PyTorch's fused kernel computes them.
  const double t = *step;
  const float bias_correction1 = static_cast<float>(1.0 - pow(static_cast<double>(beta1), t));
  const float bias_correction2_sqrt = static_cast<float>(sqrt(1.0 - pow(static_cast<double>(beta2), t)));
  const float step_size = lr / bias_correction1;
  const float multiplier = grad_multiplier ? *grad_multiplier : 1.f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < chunks;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float p[W], g[W], m[W], v[W];
    load<W>(param, i, p);
    load<W>(grad, i, g);
    load<W>(exp_avg, i, m);
    load<W>(exp_avg_sq, i, v);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float gk = g[k] * multiplier;
      if (weight_decay != 0.f) p[k] -= lr * weight_decay * p[k];
      m[k] = fmaf(beta1, m[k], fmaf(-beta1, gk, gk));
      v[k] = fmaf(beta2, v[k], fmaf(-beta2, gk * gk, gk * gk));
      const float denom = sqrtf(v[k]) / bias_correction2_sqrt + eps;
      p[k] -= step_size * m[k] / denom;
    }
    store<W>(param, i, p);
    store<W>(exp_avg, i, m);
    store<W>(exp_avg_sq, i, v);
  }
}

}  // namespace

int add_rms_norm_forward(const float* residual, const void* x, DType x_dtype, const float* scale, float* sum_out,
                         void* normed_out, DType out_dtype, float* rstd_out, int64_t rows, int64_t dim, float eps,
                         void* stream) {
  if (rows == 0) return 0;
  return dispatch(x_dtype, [&](auto* xt) {
    using TX = std::remove_pointer_t<decltype(xt)>;
    return dispatch(out_dtype, [&](auto* ot) {
      using TO = std::remove_pointer_t<decltype(ot)>;
      // Four values per access where every row and pointer allows it.
      const bool wide = dim % 4 == 0 && aligned16(residual) && aligned16(x) && aligned16(scale) && aligned16(sum_out) &&
                        aligned16(normed_out);
      auto kernel = wide ? add_rms_norm_fwd_kernel<TX, TO, 4> : add_rms_norm_fwd_kernel<TX, TO, 1>;
      kernel<<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
          residual, static_cast<const TX*>(x), scale, sum_out, static_cast<TO*>(normed_out), rstd_out, dim, eps);
      return finish();
    });
  });
}

int64_t add_rms_norm_backward_blocks(int64_t rows) {
  return (rows + kNormBackwardRowsPerBlock - 1) / kNormBackwardRowsPerBlock;
}

int add_rms_norm_backward(const float* sum, const float* rstd, const float* scale, const void* grad_normed,
                          DType grad_dtype, const float* grad_sum, float* grad_residual, void* grad_x, DType x_dtype,
                          float* scale_partials, int64_t rows, int64_t dim, void* stream) {
  if (rows == 0) return 0;
  const size_t shared = static_cast<size_t>(dim) * sizeof(float);
  return dispatch(grad_dtype, [&](auto* gt) {
    using TG = std::remove_pointer_t<decltype(gt)>;
    return dispatch(x_dtype, [&](auto* xt) {
      using TX = std::remove_pointer_t<decltype(xt)>;
      const bool wide = dim % 4 == 0 && aligned16(sum) && aligned16(scale) && aligned16(grad_normed) &&
                        aligned16(grad_sum) && aligned16(grad_residual) && aligned16(grad_x);
      auto kernel = wide ? add_rms_norm_bwd_kernel<TG, TX, 4> : add_rms_norm_bwd_kernel<TG, TX, 1>;
      if (shared > 48 * 1024) {
        const cudaError_t e =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
        if (e != cudaSuccess) return static_cast<int>(e);
      }
      kernel<<<static_cast<unsigned>(add_rms_norm_backward_blocks(rows)), kThreads, shared,
               static_cast<cudaStream_t>(stream)>>>(sum, rstd, scale, static_cast<const TG*>(grad_normed), grad_sum,
                                                    grad_residual, static_cast<TX*>(grad_x), scale_partials, rows, dim);
      return finish();
    });
  });
}

int silu_mul_forward(const void* gate, const void* up, void* out, DType dtype, int64_t n, void* stream) {
  if (n == 0) return 0;
  return dispatch(dtype, [&](auto* tt) {
    using T = std::remove_pointer_t<decltype(tt)>;
    constexpr int V = Pack<T>::kSize;
    if (n % V == 0 && aligned16(gate) && aligned16(up) && aligned16(out)) {
      silu_mul_fwd_pack_kernel<T><<<elementwise_blocks(n / V), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const Pack<T>*>(gate), static_cast<const Pack<T>*>(up), static_cast<Pack<T>*>(out), n / V);
      return finish();
    }
    silu_mul_fwd_kernel<T><<<elementwise_blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(out), n);
    return finish();
  });
}

int silu_mul_backward(const void* gate, const void* up, const void* grad, void* grad_gate, void* grad_up, DType dtype,
                      int64_t n, void* stream) {
  if (n == 0) return 0;
  return dispatch(dtype, [&](auto* tt) {
    using T = std::remove_pointer_t<decltype(tt)>;
    constexpr int V = Pack<T>::kSize;
    if (n % V == 0 && aligned16(gate) && aligned16(up) && aligned16(grad) && aligned16(grad_gate) &&
        aligned16(grad_up)) {
      silu_mul_bwd_pack_kernel<T><<<elementwise_blocks(n / V), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const Pack<T>*>(gate), static_cast<const Pack<T>*>(up), static_cast<const Pack<T>*>(grad),
          static_cast<Pack<T>*>(grad_gate), static_cast<Pack<T>*>(grad_up), n / V);
      return finish();
    }
    silu_mul_bwd_kernel<T><<<elementwise_blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<const T*>(grad), static_cast<T*>(grad_gate),
        static_cast<T*>(grad_up), n);
    return finish();
  });
}

int silu_mul_packed_forward(const void* gate_up, void* out, DType dtype, int64_t rows, int64_t hidden, void* stream) {
  if (rows == 0 || hidden == 0) return 0;
  return dispatch(dtype, [&](auto* tt) {
    using T = std::remove_pointer_t<decltype(tt)>;
    constexpr int V = Pack<T>::kSize;
    const auto kernel = hidden % V == 0 && aligned16(gate_up) && aligned16(out) ? silu_mul_packed_fwd_kernel<T, V>
                                                                              : silu_mul_packed_fwd_kernel<T, 1>;
    kernel<<<packed_blocks(rows), kPackedThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(gate_up), static_cast<T*>(out), rows, hidden);
    return finish();
  });
}

int silu_mul_packed_backward(const void* gate_up, const void* grad, void* grad_gate_up, DType dtype, int64_t rows,
                             int64_t hidden, void* stream) {
  if (rows == 0 || hidden == 0) return 0;
  return dispatch(dtype, [&](auto* tt) {
    using T = std::remove_pointer_t<decltype(tt)>;
    constexpr int V = Pack<T>::kSize;
    const auto kernel = hidden % V == 0 && aligned16(gate_up) && aligned16(grad) && aligned16(grad_gate_up)
                            ? silu_mul_packed_bwd_kernel<T, V>
                            : silu_mul_packed_bwd_kernel<T, 1>;
    kernel<<<packed_blocks(rows), kPackedThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(gate_up), static_cast<const T*>(grad), static_cast<T*>(grad_gate_up), rows, hidden);
    return finish();
  });
}

int rope_forward(const void* x, void* out, DType dtype, const float* cos_table, const float* sin_table,
                 const int64_t* positions, const RopeShape& shape, void* stream) {
  const int64_t pairs = shape.B * shape.H * shape.T * (shape.D / 2);
  if (pairs == 0) return 0;
  return dispatch(dtype, [&](auto* tt) {
    using T = std::remove_pointer_t<decltype(tt)>;
    constexpr int64_t V = Pack<T>::kSize;
    const int64_t half = shape.D / 2;
    const int64_t threads = shape.H * (shape.interleaved ? shape.D / V : half / V);
    // 16-byte chunks: every head, token and batch start (in and out) and the chunk width aligned.
    const bool strides_ok = shape.x_stride_b % V == 0 && shape.x_stride_h % V == 0 && shape.x_stride_t % V == 0 &&
                            shape.out_stride_b % V == 0 && shape.out_stride_h % V == 0 && shape.out_stride_t % V == 0;
    const bool vec = strides_ok && aligned16(x) && aligned16(out) && aligned16(cos_table) && aligned16(sin_table) &&
                     (shape.interleaved ? shape.D % V == 0 : half % V == 0) && threads <= 1024;
    if (vec) {
      rope_vec_kernel<T><<<static_cast<unsigned>(shape.B * shape.T), static_cast<unsigned>((threads + 31) / 32 * 32), 0,
                           static_cast<cudaStream_t>(stream)>>>(static_cast<const T*>(x), static_cast<T*>(out), cos_table,
                                                                 sin_table, positions, shape);
    } else {
      rope_kernel<T><<<static_cast<unsigned>(shape.B * shape.T), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(x), static_cast<T*>(out), cos_table, sin_table, positions, shape);
    }
    return finish();
  });
}

int cross_entropy_forward(const void* logits, DType dtype, const int64_t* targets, float* nll, float* lse, int64_t rows,
                          int64_t vocab, void* stream) {
  if (rows == 0) return 0;
  return dispatch(dtype, [&](auto* tt) {
    using T = std::remove_pointer_t<decltype(tt)>;
    const bool packed = vocab % Pack<T>::kSize == 0 && aligned16(logits);
    auto kernel = packed ? cross_entropy_fwd_kernel<T, true> : cross_entropy_fwd_kernel<T, false>;
    kernel<<<static_cast<unsigned>(rows), kCeThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(logits), targets, nll, lse, vocab);
    return finish();
  });
}

int cross_entropy_backward(const void* logits, DType dtype, const int64_t* targets, const float* lse,
                           const float* grad_nll, void* grad_logits, int64_t rows, int64_t vocab, void* stream) {
  if (rows == 0) return 0;
  return dispatch(dtype, [&](auto* tt) {
    using T = std::remove_pointer_t<decltype(tt)>;
    const bool packed = vocab % Pack<T>::kSize == 0 && aligned16(logits) && aligned16(grad_logits);
    auto kernel = packed ? cross_entropy_bwd_kernel<T, true> : cross_entropy_bwd_kernel<T, false>;
    kernel<<<static_cast<unsigned>(rows), kCeThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(logits), targets, lse, grad_nll, static_cast<T*>(grad_logits), vocab);
    return finish();
  });
}

int adamw_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, const float* step,
               const float* grad_multiplier, int64_t n, float lr, float beta1, float beta2, float weight_decay,
               float eps, void* stream) {
  if (n == 0) return 0;
  const bool wide = n % 4 == 0 && aligned16(param) && aligned16(grad) && aligned16(exp_avg) && aligned16(exp_avg_sq);
  const int64_t chunks = wide ? n / 4 : n;
  const auto kernel = wide ? adamw_kernel<4> : adamw_kernel<1>;
  kernel<<<elementwise_blocks(chunks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      param, grad, exp_avg, exp_avg_sq, step, grad_multiplier, chunks, lr, beta1, beta2, weight_decay, eps);
  return finish();
}

}  // namespace tessera::kernels::cuda
