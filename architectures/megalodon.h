// Megalodon (Ma et al. 2024, arXiv 2404.08801): unlimited context through a complex EMA (CEMA) that
// carries information across chunks, plus softmax attention inside fixed-size chunks.
//
// One layer, following the official code (XuezheMax/megalodon, notes in
// ../shared/research/megalodon_scaling_eval.md §1.4-1.6; paper-vs-code choices in §1.8):
//
//   X^  = TimestepNorm(X)                         causal group norm, statistics carried across chunks
//   X'  = CEMA(X^)                                complex EMA incl. its omega skip, no SiLU
//   M   = RMSNorm(X')                             scale 1 + w
//   Z   = M Wz + bz;  Z^ = RMSNorm_head(Z)        per head, no affine
//   Q   = Z^ (1 + kq)/sqrt(dz) + mq,  K = Z^ (1 + kk)/sqrt(dz) + mk   (one representation for Q and K)
//   RoPE on Q, K with positions restarting at 0 in every chunk
//   V   = SiLU(X^ Wv + bv);  R = SiLU(M Wr + br)
//   O   = softmax(Q K^T) V over the causal part of the query's own chunk; no 1/sqrt(d) (it is in Q, K)
//   Y^  = X + M Wh1 + bh1 + (O * R) Wh2
//   Y   = X + FFN(LayerNorm(Y^))                  two-hop residual: the FFN adds to the block input X
//
// The FFN is SwiGLU (7B) or a SiLU MLP (200M/1.3B); the output head follows a final TimestepNorm. All
// norm scales are "plus-one" (stored 0, applied as 1 + w). Differences from the official code:
// no dropout (every released run uses 0), no learnable timestep-norm prior (every config uses count
// 0), no chunk parallelism across GPUs, and packed documents (Batch::doc_ids) only mask attention:
// the EMA and norm statistics flow across document boundaries as in the official pre-training, which
// concatenates documents.
//
// Generation keeps, per layer, the timestep-norm statistics, the CEMA state [B, D, N] and the keys and
// values of the current chunk only (at most chunk_size entries), so memory does not grow with the
// sequence. The official eval code re-windows the norm statistics after 8 chunks (notes §1.6); this
// implementation always uses the full prefix, in training and generation alike.
#pragma once

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "core/model.h"
#include "core/nn/attention.h"
#include "core/nn/cema.h"
#include "core/nn/rms_norm.h"
#include "core/nn/rope.h"
#include "core/nn/timestep_norm.h"

namespace tessera {

struct MegalodonConfig {
  std::string arch = "megalodon";
  int64_t dim = 256;
  int64_t n_layers = 4;
  int64_t n_heads = 1;         // attention heads (the 7B model has 4)
  int64_t z_dim = 64;          // width of the shared query/key representation
  int64_t value_dim = 512;     // width of the values (and of the reset gate)
  int64_t ffn_hidden_dim = 0;  // 0: 2·dim for SwiGLU, 4·dim for the SiLU MLP
  bool swiglu = true;
  int64_t cema_ndim = 16;      // CEMA expansion N per dimension
  int64_t chunk_size = 256;    // attention chunk c (2048 in the released configs)
  int64_t norm_groups = 32;    // timestep-norm groups (32 for 200M, 64 for 1.3B/7B)
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  int64_t vocab_size = 0;
  int64_t max_seq_len = 1 << 20;  // only a sanity limit: training and generation memory do not grow with it
  bool tie_embeddings = false;

  template <class V>
  void fields(V& v) {
    v.choice("arch", arch, {"megalodon"}, "architecture name");
    v.optional("dim", dim, "model width D");
    v.optional("n_layers", n_layers, "Megalodon blocks");
    v.optional("n_heads", n_heads, "attention heads (z_dim and value_dim are split among them)");
    v.optional("z_dim", z_dim, "width of the shared query/key representation Z");
    v.optional("value_dim", value_dim, "width of the values V and the reset gate R");
    v.optional("ffn_hidden_dim", ffn_hidden_dim, "FFN hidden size (0: 2*dim for SwiGLU, 4*dim for the SiLU MLP)");
    v.optional("swiglu", swiglu, "SwiGLU FFN (true, as the 7B model) or a SiLU MLP (false, as 200M/1.3B)");
    v.optional("cema_ndim", cema_ndim, "CEMA expansion dimension N per model dimension");
    v.optional("chunk_size", chunk_size, "attention chunk length c; attention never crosses a chunk");
    v.optional("norm_groups", norm_groups, "timestep-norm groups (dim must be divisible)");
    v.optional("norm_eps", norm_eps, "epsilon of every norm");
    v.optional("rope_theta", rope_theta, "RoPE base (1e4; the paper's 7B used 1e5)");
    v.optional("vocab_size", vocab_size, "vocabulary size (0: from the data's layout)");
    v.optional("max_seq_len", max_seq_len, "longest sequence accepted (a sanity limit; memory does not grow with it)");
    v.optional("tie_embeddings", tie_embeddings, "share input embedding and output projection");
  }

  int64_t ffn_dim() const { return ffn_hidden_dim > 0 ? ffn_hidden_dim : (swiglu ? 2 : 4) * dim; }
  // Closed-form parameter count (notes §1.7), so a 7B layout can be checked without allocating it.
  int64_t parameter_count() const;
  // The official ModelStore layouts: "mega200M", "mega1.3B", "mega7.1B", "mega7.3B" (vocab 32000).
  static MegalodonConfig preset(const std::string& name);
};

// Per-layer generation state: everything a layer needs to continue a sequence.
struct MegalodonLayerCache {
  nn::TimestepNormState norm;
  at::Tensor cema;                       // [B, D, N] complex
  std::unique_ptr<nn::KVCache> kv;       // keys/values of the current chunk, capacity chunk_size
};

struct MegalodonLayerImpl : torch::nn::Module {
  explicit MegalodonLayerImpl(const MegalodonConfig& c);

  // Training / full forward: x [B, L, D]; attention runs per chunk of c (L need not be a multiple;
  // the last chunk may be shorter). doc_ids [B, L] (optional) additionally masks attention.
  at::Tensor forward(const at::Tensor& x, const nn::RotaryEmbeddingImpl& rope, const at::Tensor& doc_ids);

  // Continues the sequences in `cache` with x [B, t, D], where the t tokens start at absolute
  // position `position` and do not cross a chunk boundary.
  at::Tensor forward_cached(const at::Tensor& x, const nn::RotaryEmbeddingImpl& rope, int64_t position,
                            MegalodonLayerCache& cache);

  nn::TimestepNorm timenorm{nullptr};
  nn::CEMA cema{nullptr};
  nn::RMSNorm rmsnorm{nullptr};
  torch::nn::Linear wz{nullptr}, wv{nullptr}, wr{nullptr}, wh1{nullptr}, wh2{nullptr};
  torch::Tensor qk_gamma, qk_beta;  // [2, z_dim]: row 0 for queries, row 1 for keys
  torch::nn::LayerNorm ffn_norm{nullptr};  // applied with scale 1 + weight (weight starts at 0)
  torch::nn::Linear w1{nullptr}, w2{nullptr}, w3{nullptr};  // w3 only with SwiGLU

 private:
  struct Mixed {
    at::Tensor xhat, m, q, k, v, r;  // q, k [B, H, t, dz] before RoPE; v [B, H, t, dv]; r [B, t, v]
  };
  Mixed mix(const at::Tensor& xhat, const at::Tensor& xema);
  at::Tensor finish(const at::Tensor& x, const Mixed& mixed, const at::Tensor& attn);

  int64_t dim_, heads_, z_dim_, value_dim_, chunk_;
  double eps_;
  bool swiglu_;
};
TORCH_MODULE(MegalodonLayer);

class MegalodonModel : public LanguageModel {
 public:
  explicit MegalodonModel(MegalodonConfig config);

  std::string arch() const override { return "megalodon"; }
  int64_t vocab_size() const override { return config_.vocab_size; }
  int64_t max_seq_len() const override { return config_.max_seq_len; }
  YAML::Node config_yaml() const override;
  FlopCount flops(int64_t seq_len) const override;

  Outputs forward(const Batch& batch) override;
  std::unique_ptr<DecodeState> start_decoding(int64_t batch_size, int64_t max_len) override;
  at::Tensor step(const at::Tensor& tokens, DecodeState& state) override;

  const MegalodonConfig& config() const { return config_; }

 private:
  void init_weights();
  at::Tensor head(const at::Tensor& h);

  MegalodonConfig config_;
  torch::nn::Embedding tok_embeddings{nullptr};
  torch::nn::ModuleList layers{nullptr};
  nn::TimestepNorm norm{nullptr};
  torch::nn::Linear output{nullptr};
  nn::RotaryEmbedding rope{nullptr};
};

}  // namespace tessera
