// Dense Llama-style decoder (the baseline every other backbone is compared with): pre-norm blocks of
// RMSNorm -> grouped-query self-attention with RoPE -> residual, RMSNorm -> SwiGLU -> residual.
// Parameter names follow Meta's Llama checkpoints (tok_embeddings, layers.N.attention.wq, ...).
#pragma once

#include <torch/nn/modules/container/modulelist.h>

#include <utility>

#include "core/model.h"
#include "core/nn/attention.h"
#include "core/nn/rms_norm.h"
#include "core/nn/rope.h"
#include "core/nn/swiglu.h"

namespace tessera {

struct DenseConfig {
  std::string arch = "dense";
  int64_t dim = 256;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 0;  // 0: same as n_heads (no grouping)
  int64_t vocab_size = 0;  // 0: taken from the data's vocabulary layout
  int64_t max_seq_len = 2048;
  double ffn_dim_multiplier = 0.0;  // Llama's optional multiplier on the 8/3·dim hidden size
  int64_t multiple_of = 256;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  std::string rope_layout = "half_split";
  bool tie_embeddings = false;
  int64_t sliding_window = 0;  // 0: full causal attention
  double init_std = 0.02;
  bool fused_kernels = true;  // core/kernels on CUDA; false: the ATen composite path (same math)
  bool fused_projections = true;  // q/k/v and SwiGLU's w1/w3 each as one GEMM (parameters unchanged)

  template <class V>
  void fields(V& v) {
    v.choice("arch", arch, {"dense"}, "architecture name");
    v.optional("dim", dim, "model width");
    v.optional("n_layers", n_layers, "transformer blocks");
    v.optional("n_heads", n_heads, "query heads");
    v.optional("n_kv_heads", n_kv_heads, "key/value heads for grouped-query attention (0: n_heads)");
    v.optional("vocab_size", vocab_size, "vocabulary size (0: from the data's layout)");
    v.optional("max_seq_len", max_seq_len, "longest sequence (RoPE table and KV cache size)");
    v.optional("ffn_dim_multiplier", ffn_dim_multiplier, "multiplier on the SwiGLU hidden size (0: none)");
    v.optional("multiple_of", multiple_of, "SwiGLU hidden size is rounded up to this");
    v.optional("norm_eps", norm_eps, "RMSNorm epsilon");
    v.optional("rope_theta", rope_theta, "RoPE base frequency");
    v.choice("rope_layout", rope_layout, {"half_split", "interleaved"}, "RoPE pairing of dimensions");
    v.optional("tie_embeddings", tie_embeddings, "share input embedding and output projection");
    v.optional("sliding_window", sliding_window, "attention window in tokens (0: full causal)");
    v.optional("init_std", init_std, "std of the normal weight init (output projections scaled by 1/sqrt(2·n_layers))");
    v.optional("fused_kernels", fused_kernels,
               "fused CUDA kernels for residual add + RMSNorm, SwiGLU, RoPE and float32 weight gradients (false: ATen ops; same math)");
    v.optional("fused_projections", fused_projections,
               "compute wq/wk/wv and SwiGLU's w1/w3 each as one GEMM over concatenated weights (same parameters)");
  }
};

struct DenseBlockImpl : torch::nn::Module {
  DenseBlockImpl(const DenseConfig& c, int64_t hidden_dim);
  // rope may be nullptr (no rotary embedding, e.g. MEGABYTE's learned positions).
  at::Tensor forward(const at::Tensor& x, const nn::RotaryEmbeddingImpl* rope, const at::Tensor& positions,
                     const nn::MaskSpec& spec, nn::KVCache* cache);
  // The same with the residual additions deferred: takes the residual stream and the previous block's
  // feed-forward output not yet added to it (undefined for none), returns them likewise, so that each
  // addition happens inside the next norm's kernel. forward(x) = sum + pending of forward_deferred(x, {}).
  std::pair<at::Tensor, at::Tensor> forward_deferred(const at::Tensor& residual, const at::Tensor& pending,
                                                     const nn::RotaryEmbeddingImpl* rope, const at::Tensor& positions,
                                                     const nn::MaskSpec& spec, nn::KVCache* cache);
  nn::RMSNorm attention_norm{nullptr}, ffn_norm{nullptr};
  nn::SelfAttention attention{nullptr};
  nn::SwiGLU feed_forward{nullptr};
  bool fused_kernels = true;
};
TORCH_MODULE(DenseBlock);

// Runs a stack of DenseBlocks (a ModuleList of them) in order; caches, when given, hold one KV cache per
// block. Shared by every backbone built from Llama blocks (dense, MEGABYTE's stacks, BLT's global model).
at::Tensor run_dense_blocks(torch::nn::ModuleList& layers, const nn::RotaryEmbeddingImpl* rope, at::Tensor h,
                            const at::Tensor& positions, const nn::MaskSpec& spec, std::vector<nn::KVCache>* caches);
// The same returning {residual stream, last block's feed-forward output not yet added} (see
// DenseBlockImpl::forward_deferred), for a caller that folds the last addition into its final norm.
std::pair<at::Tensor, at::Tensor> run_dense_blocks_deferred(torch::nn::ModuleList& layers,
                                                            const nn::RotaryEmbeddingImpl* rope, at::Tensor h,
                                                            const at::Tensor& positions, const nn::MaskSpec& spec,
                                                            std::vector<nn::KVCache>* caches);

class DenseModel : public LanguageModel {
 public:
  explicit DenseModel(DenseConfig config);

  std::string arch() const override { return "dense"; }
  int64_t vocab_size() const override { return config_.vocab_size; }
  int64_t max_seq_len() const override { return config_.max_seq_len; }
  YAML::Node config_yaml() const override;
  FlopCount flops(int64_t seq_len) const override;

  Outputs forward(const Batch& batch) override;
  std::unique_ptr<DecodeState> start_decoding(int64_t batch_size, int64_t max_len) override;
  at::Tensor step(const at::Tensor& tokens, DecodeState& state) override;

  const DenseConfig& config() const { return config_; }

 private:
  at::Tensor run(const at::Tensor& tokens, const at::Tensor& positions, const nn::MaskSpec& spec,
                 std::vector<nn::KVCache>* caches);
  void init_weights();

  DenseConfig config_;
  int64_t hidden_dim_;
  torch::nn::Embedding tok_embeddings{nullptr};
  torch::nn::ModuleList layers{nullptr};
  nn::RMSNorm norm{nullptr};
  torch::nn::Linear output{nullptr};
  nn::RotaryEmbedding rope{nullptr};
};

}  // namespace tessera
