// MEGABYTE (Yu et al. 2023, arXiv 2305.07185): a large global transformer over patches of P bytes and
// a small local transformer inside each patch. Notes: ../shared/research/blt_megabyte.md §5.
//
// The model is a distribution over a byte stream z: slot j predicts z_j from z_<j (MB §2, Appendix B):
//
//   h^embed_t      = E^global-embed[z_t] + E^pos_t                                       (eq. 1)
//   h^global-in_k  = E^global-pad (P×D_G)            for k = 0                             (eq. 2)
//                  = concat(h^embed_t for t in patch k-1), width P·D_G, for k > 0
//   h^global-out   = transformer^global(h^global-in), causal over patches               (eq. 3)
//   h^local-in_k,p = w^GL · chunk_p(h^global-out_k) + (p = 0 ? E^local-pad : E^local-embed[z_kP+p-1])  (eq. 4)
//   h^local-out_k  = transformer^local(h^local-in_k), causal within patch k only        (eq. 5)
//   p(z_kP+p | z_<kP+p) = softmax(E^local-embed · h^local-out_k,p)                       (eq. 6)
//
// So patch k's global input holds only patches < k (the patch-sized pad offset), and inside a patch the
// local model sees the bytes before p only (the one-byte pad offset).
//
// Mapping to the LanguageModel interface, where logits[t] predict targets[t] = tokens[t+1] from
// tokens[<=t]: the stream is z = tokens, the patch grid starts at tokens[0], and logits[t] is slot t+1.
// A forward over T tokens therefore computes slots 0..T, i.e. floor(T/P) + 1 patches: the last patch is
// padded internally (T need not be a multiple of P), and slot 0 (the first byte with no context) is
// computed but not returned. The extra patch costs 1/K of a forward and is not counted in flops().
//
// Blocks are the toolkit's Llama-style blocks (DenseBlock: RMSNorm, multi-head attention, SwiGLU at
// Llama's 8/3·d hidden size), not the paper's LayerNorm/ReLU-MLP pre-norm blocks (same FLOPs per token;
// notes §3.1); there is no dropout. Each stack ends with an RMSNorm. Positions are the paper's learned
// byte positions on the global input and none in the local model (eq. 4 has none: each byte position
// gets its own chunk of the global output), or, with pos_embedding: rope, RoPE over patch indices in the
// global model and over byte offsets 0..P-1 in the local model.
//
// Packed documents (Batch::doc_ids) are isolated: slot j belongs to z_j's document, so a document's first
// byte is predicted with no context (at the previous document's last position), as if it stood alone.
// A patch belongs to the document of its first slot; patches attend only to patches of their document;
// a patch's global input keeps only its document's bytes (the others read the pad's rows); slots of a
// document that starts inside a patch take the global output of a lone pad patch (what a document's
// first patch gets) and the local pad at the document's first byte; local attention is masked by
// document. A document starting at a multiple of patch_size is then modelled exactly as if it stood
// alone at the same positions; one starting inside a patch is isolated but sees a shifted patch grid.
//
// Generation: the global model runs once per patch, when a patch of the stream closes (with a KV cache
// over patches); the local model runs per byte with a KV cache holding the current patch only.
//
// Parameter names: global_model.{tok_embeddings, pos_embeddings, pad, layers.N.<Llama block>, norm},
// global_to_local (w^GL), local_model.{tok_embeddings, pad, layers.N.<Llama block>, norm, output}.
#pragma once

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include "architectures/dense.h"
#include "core/model.h"
#include "core/nn/attention.h"
#include "core/nn/rms_norm.h"
#include "core/nn/rope.h"

namespace tessera {

struct MegabyteConfig {
  std::string arch = "megabyte";
  int64_t patch_size = 8;     // P (MB: 8 for text)
  int64_t global_dim = 1024;  // width of the global transformer, P·D_G; byte embeddings are global_dim/P wide
  int64_t global_layers = 4;
  int64_t global_heads = 8;
  int64_t local_dim = 256;    // D_L
  int64_t local_layers = 2;
  int64_t local_heads = 4;
  int64_t vocab_size = 0;     // 0: taken from the data's vocabulary layout (260 for bytes)
  int64_t max_seq_len = 8192;
  double ffn_dim_multiplier = 0.0;  // Llama's optional multiplier on the 8/3·dim SwiGLU hidden size
  int64_t multiple_of = 256;
  double norm_eps = 1e-5;
  std::string pos_embedding = "learned";
  double rope_theta = 10000.0;
  std::string rope_layout = "half_split";
  // eq. 6: logits through E^local-embed. Measured (RESULTS.md, BLT vs BPE): at ~3M parameters on the
  // default corpus the tied model stays at unigram loss for hundreds of steps at lr 1e-3..3e-3 while
  // the untied one learns at once; the small recipes therefore set it false.
  bool tie_embeddings = true;
  double init_std = 0.006;     // MB App. A.1: N(0, 0.006) truncated at 2σ

  int64_t global_byte_dim() const { return patch_size > 0 ? global_dim / patch_size : 0; }  // D_G

  template <class V>
  void fields(V& v) {
    v.choice("arch", arch, {"megabyte"}, "architecture name");
    v.optional("patch_size", patch_size, "bytes per patch P");
    v.optional("global_dim", global_dim, "global transformer width P·D_G (a multiple of patch_size)");
    v.optional("global_layers", global_layers, "global transformer blocks");
    v.optional("global_heads", global_heads, "global attention heads");
    v.optional("local_dim", local_dim, "local transformer width D_L");
    v.optional("local_layers", local_layers, "local transformer blocks");
    v.optional("local_heads", local_heads, "local attention heads");
    v.optional("vocab_size", vocab_size, "vocabulary size (0: from the data's layout)");
    v.optional("max_seq_len", max_seq_len, "longest sequence in bytes (learned position table, KV caches)");
    v.optional("ffn_dim_multiplier", ffn_dim_multiplier, "multiplier on the SwiGLU hidden size of both stacks (0: none)");
    v.optional("multiple_of", multiple_of, "SwiGLU hidden sizes are rounded up to this");
    v.optional("norm_eps", norm_eps, "RMSNorm epsilon");
    v.choice("pos_embedding", pos_embedding, {"learned", "rope"},
             "learned: the paper's learned byte positions on the global input (eq. 1); rope: RoPE over "
             "patch indices (global) and byte offsets within the patch (local)");
    v.optional("rope_theta", rope_theta, "RoPE base frequency (pos_embedding: rope)");
    v.choice("rope_layout", rope_layout, {"half_split", "interleaved"}, "RoPE pairing of dimensions (pos_embedding: rope)");
    v.optional("tie_embeddings", tie_embeddings, "output logits through the local byte embedding (eq. 6)");
    v.optional("init_std", init_std, "std of the normal weight init, truncated at 2 std (MB App. A.1)");
  }
};

// The global model: patch embedder (eq. 1-2) and a causal transformer over patches (eq. 3).
struct MegabyteGlobalImpl : torch::nn::Module {
  MegabyteGlobalImpl(const MegabyteConfig& c, int64_t hidden_dim);
  torch::nn::Embedding tok_embeddings{nullptr};  // E^global-embed [V, D_G]
  torch::nn::Embedding pos_embeddings{nullptr};  // E^pos [max_seq_len, D_G]; pos_embedding: learned only
  at::Tensor pad;                                // E^global-pad [P, D_G], the global input of a first patch
  torch::nn::ModuleList layers{nullptr};         // DenseBlocks of width P·D_G
  nn::RMSNorm norm{nullptr};
  nn::RotaryEmbedding rope{nullptr};             // over patch indices; pos_embedding: rope only
};
TORCH_MODULE(MegabyteGlobal);

// The local model: byte embedding with the one-byte offset (eq. 4), a causal transformer inside one
// patch (eq. 5) and the output head (eq. 6).
struct MegabyteLocalImpl : torch::nn::Module {
  MegabyteLocalImpl(const MegabyteConfig& c, int64_t hidden_dim);
  torch::nn::Embedding tok_embeddings{nullptr};  // E^local-embed [V, D_L]
  at::Tensor pad;                                // E^local-pad [D_L], the input of offset p = 0
  torch::nn::ModuleList layers{nullptr};         // DenseBlocks of width D_L
  nn::RMSNorm norm{nullptr};
  torch::nn::Linear output{nullptr};             // [V, D_L]; only without tie_embeddings
  nn::RotaryEmbedding rope{nullptr};             // over offsets 0..P-1; pos_embedding: rope only
};
TORCH_MODULE(MegabyteLocal);

class MegabyteModel : public LanguageModel {
 public:
  explicit MegabyteModel(MegabyteConfig config);

  std::string arch() const override { return "megabyte"; }
  int64_t vocab_size() const override { return config_.vocab_size; }
  int64_t max_seq_len() const override { return config_.max_seq_len; }
  YAML::Node config_yaml() const override;
  // Per byte, from the notes §3.3: the global stack costs once per patch (its matmul parameters and
  // attention over ceil(seq_len/P) patches divided by P), the local stack, w^GL and the output head once
  // per byte (attention over the (P+1)/2 bytes of the patch on average). matmul_params is the per-byte
  // equivalent: global_matmul/P + D_G·D_L + local_matmul + V·D_L.
  FlopCount flops(int64_t seq_len) const override;

  // tokens [B, T] (any T <= max_seq_len) -> logits [B, T, V]; optional doc_ids (packed documents, see
  // above) and positions ([T] or [B, T] byte positions; default 0..T-1).
  // Fixed patches of patch_size bytes (a short last one counts as a patch).
  PatchCount count_patches(const Batch& batch) override;
  Outputs forward(const Batch& batch) override;
  std::unique_ptr<DecodeState> start_decoding(int64_t batch_size, int64_t max_len) override;
  at::Tensor step(const at::Tensor& tokens, DecodeState& state) override;

  const MegabyteConfig& config() const { return config_; }

 private:
  // Global stack over patch inputs [B, K, P·D_G] -> w^GL of each byte chunk [B, K, P, D_L].
  at::Tensor run_global(const at::Tensor& global_in, const at::Tensor& positions, const nn::MaskSpec& spec,
                        std::vector<nn::KVCache>* caches);
  // Local stack over [N, L, D_L] -> final-normed hidden states [N, L, D_L].
  at::Tensor run_local(const at::Tensor& local_in, const nn::MaskSpec& spec, std::vector<nn::KVCache>* caches);
  at::Tensor head(const at::Tensor& h);
  // Byte embeddings for the global input (eq. 1), [B, n·P] ids and positions -> [B, n, P·D_G].
  at::Tensor embed_global(const at::Tensor& bytes, const at::Tensor& positions);
  void init_weights();

  MegabyteConfig config_;
  int64_t global_hidden_, local_hidden_;
  MegabyteGlobal global_model{nullptr};
  torch::nn::Linear global_to_local{nullptr};  // w^GL [D_L, D_G], shared by the P chunks
  MegabyteLocal local_model{nullptr};
};

}  // namespace tessera
