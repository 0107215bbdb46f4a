// Scaled dot-product attention over at::scaled_dot_product_attention (SDPA), with the masks the
// backbones need (causal, sliding window, packed documents, decoding offset, arbitrary extra mask),
// grouped-query attention, a preallocated KV cache, and self-/cross-attention modules.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <utility>

#include "core/nn/rope.h"

namespace tessera::nn {

// Which keys each query may attend to. Positions are absolute: query row i sits at p = i + q_offset,
// key column j at j. Every condition given must hold.
struct MaskSpec {
  bool causal = true;          // j <= p
  int64_t window = 0;          // > 0: p - window < j (with causal: the last `window` keys, self
                               // included); without causal the window is symmetric, |p - j| < window
  torch::Tensor q_doc_ids;     // optional integer [B or 1, Tq]: attend only to keys of the same
  torch::Tensor kv_doc_ids;    // document; [B or 1, Tk], required when q_doc_ids is given
  int64_t q_offset = 0;        // p of query 0 minus position of key 0 (decoding: cache length
                               // before the new tokens)
  torch::Tensor extra;         // optional bool, true = may attend; [Tq|1, Tk|1] or
                               // [B|1, H|1, Tq|1, Tk|1] (3-D is refused: torch would read it as [H, Tq, Tk])
};

// The boolean mask of `spec` (true = attend), shaped [B or 1, 1 or H, Tq, Tk] on `device`, or an
// undefined tensor when every query sees every key, or when SDPA's is_causal fast path applies
// (causal, no window/docs/extra, Tq == Tk, q_offset == 0); *use_is_causal reports the latter.
// With use_is_causal == nullptr the causal mask is always materialised instead.
torch::Tensor build_attention_mask(const MaskSpec& spec, int64_t batch, int64_t q_len, int64_t kv_len,
                                   torch::Device device, bool* use_is_causal);

// q [B, Hq, Tq, D], k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv] -> [B, Hq, Tq, Dv]. Grouped-query attention
// when Hkv divides Hq (query head h reads kv head h / (Hq / Hkv)), through SDPA's enable_gqa; on CUDA,
// k/v are repeated instead where SDPA would otherwise drop to its math kernel. scale defaults to
// 1/sqrt(D). Query rows with no key to attend to give zeros, with finite gradients.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const MaskSpec& spec, std::optional<double> scale = std::nullopt);

// Head dims above this go through attention_explicit on CUDA: the fused SDPA kernels are built for
// head dims up to 256, and beyond that SDPA's remaining kernels are slow (measured in
// eval/bench/RESULTS.md, Megalodon section).
inline constexpr int64_t kFusedAttentionMaxHeadDim = 256;
// Queries at most this many against a longer key sequence (decoding) also go through
// attention_explicit on CUDA.
inline constexpr int64_t kExplicitAttentionMaxQueries = 16;

// Causal sliding-window self-attention over at least this many windows is computed block-locally:
// queries in blocks of `window`, each against its own and the previous block's keys, instead of one
// [T, T] masked score matrix (T x 2W scores instead of T x T).
inline constexpr int64_t kBlockLocalMinWindows = 4;

// Whether attention() takes the block-local route for `spec` and these lengths: causal, window > 0,
// Tq == Tk >= kBlockLocalMinWindows x window, no query offset and no extra mask (document ids allowed).
bool uses_block_local(const MaskSpec& spec, int64_t q_len, int64_t kv_len);

// The same contract as attention(), computed as softmax(q k^T · scale + mask) v with two matmuls
// and a float32 softmax, materialising [B, H, Tq, Tk] scores. attention() uses it on CUDA for head
// dims above kFusedAttentionMaxHeadDim; exposed so that it can be tested on any device. Unlike
// attention(), a query row with no key to attend to gives NaN.
torch::Tensor attention_explicit(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const MaskSpec& spec, std::optional<double> scale = std::nullopt);

// The dtype a KV cache should hold for a model whose weights are like `weight`: under autocast the
// projections produce the autocast dtype (bf16), so the cache holds what attention will see.
torch::ScalarType kv_cache_dtype(const torch::Tensor& weight);

// Keys and values of one layer for incremental decoding, preallocated [B, Hkv, max_len, D] (values
// [B, Hkv, max_len, Dv] where their width differs, as in Megalodon) so that
// decoding allocates nothing per token. Meant for inference (under NoGradGuard/InferenceMode): the
// storage is written in place.
class KVCache {
 public:
  // value_dim 0 means head_dim (keys and values of one width, as in ordinary attention).
  KVCache(int64_t batch, int64_t n_kv_heads, int64_t max_len, int64_t head_dim, torch::ScalarType dtype,
          torch::Device device, int64_t value_dim = 0);

  // Writes k/v [B, Hkv, T, D] at [length(), length() + T) and returns views of all cached keys and
  // values [B, Hkv, length(), D] (length() already advanced). Overflow is a tessera::Error.
  std::pair<torch::Tensor, torch::Tensor> append(const torch::Tensor& k, const torch::Tensor& v);

  int64_t length() const { return length_; }
  int64_t capacity() const { return keys_.size(2); }
  void reset() { length_ = 0; }

 private:
  torch::Tensor keys_, values_;
  int64_t length_ = 0;
};

struct SelfAttentionOptions {
  int64_t dim = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // 0 -> n_heads (plain multi-head attention)
  int64_t head_dim = 0;    // 0 -> dim / n_heads
  bool bias = false;
};

struct SelfAttentionImpl : torch::nn::Module {
  explicit SelfAttentionImpl(const SelfAttentionOptions& options);

  // x [B, T, dim] -> [B, T, dim]. rope may be nullptr (no rotary embedding). positions: integer [T]
  // or [B, T] absolute positions for rope; undefined means q_offset + arange(T).
  // With a cache, the new k/v are appended and attention runs over the whole cache; spec.q_offset is
  // then set to the cache length before appending (a different non-zero value is an error), and
  // doc ids / extra must describe all cached keys (Tk = cache length after appending).
  torch::Tensor forward(const torch::Tensor& x, const RotaryEmbeddingImpl* rope,
                        const torch::Tensor& positions, const MaskSpec& spec, KVCache* cache = nullptr);

  int64_t n_heads() const { return n_heads_; }
  int64_t n_kv_heads() const { return n_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }

  torch::nn::Linear wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};  // Llama's names
  // q, k and v from one GEMM over the concatenated weights (nn::project), split (and rotated) by one
  // op whose backward writes a single input gradient; the parameters stay wq, wk, wv.
  bool fused_projections = false;
  // core/kernels ops on CUDA: the projections' float32 weight gradients from the GEMM (nn::project).
  bool fused = false;

 private:
  int64_t dim_, n_heads_, n_kv_heads_, head_dim_;
};
TORCH_MODULE(SelfAttention);

struct CrossAttentionOptions {
  int64_t q_dim = 0;
  int64_t kv_dim = 0;
  int64_t n_heads = 0;
  int64_t head_dim = 0;  // 0 -> q_dim / n_heads
  int64_t out_dim = 0;   // 0 -> q_dim
  bool bias = false;
};

struct CrossAttentionImpl : torch::nn::Module {
  explicit CrossAttentionImpl(const CrossAttentionOptions& options);

  // x [B, Tq, q_dim] attends to memory [B, Tk, kv_dim] -> [B, Tq, out_dim]. mask: bool broadcastable
  // to [B, Tq, Tk] (true = attend), or undefined (attend to all). Rows with no allowed key give zeros
  // before wo (so the output row is wo's bias, or zeros without bias).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& memory, const torch::Tensor& mask);

  torch::nn::Linear wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};

 private:
  int64_t q_dim_, kv_dim_, n_heads_, head_dim_;
};
TORCH_MODULE(CrossAttention);

}  // namespace tessera::nn
