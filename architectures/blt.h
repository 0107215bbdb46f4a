// BLT, the Byte Latent Transformer (Pagnoni et al. 2024, arXiv 2412.09871), faithful to the released
// code (facebookresearch/blt, bytelatent/model/{blt,local_models,latent_transformer}.py) so that the
// released checkpoints map onto it. Notes: ../shared/research/blt_megabyte.md §1-§3 (section numbers
// below refer to them).
//
// Data flow for a row of N byte ids x (BLT's 260-id layout) cut into P patches (§1.7):
//
//   e_i   = E_byte[x_i] + Σ_{f,n} E_{f,n}[hash_{f,n}(x_{i-n+1..i})]          hash n-grams, no normalisation (§1.2)
//   h     = LocalEncoder(e)   l_E pre-norm blocks, causal, window w, per document            (§1.4)
//   q_p   = W_pe · maxpool_{i in patch p}(h_i)       -> k query vectors per patch ("pooling init")
//   q_p  <- 2·q_p + CrossAttn(q_p -> bytes of patch p)     the doubled residual of the released code
//   o     = GlobalTransformer([q_p,0..k-1] concatenated, optional W_in: k·h_E -> h_G), causal over
//           patches (block-causal across documents)                                           (§1.5)
//   kv_p  = W_pd · o_p                               -> k vectors per patch, width h_D = h_E
//   z     = h; per decoder layer: z <- 2·z + CrossAttn(z_t -> kv of patch dpid(t)); z <- block(z)   (§1.6)
//   logits = W_out · RMSNorm(z)                      over the 260-byte vocabulary, float32
//
// dpid(t) = patch_id(t+1) − 1 is the decoder's one-patch lag: position t (predicting byte t+1) reads the
// global output of the last patch that ends at or before t. Patch lengths therefore cover N + 1
// positions (the next byte included, §1.7 sum rule; the first patch is always the lone first byte).
//
// Patching at forward time. forward(batch) patches batch.tokens with the configured patcher
// (modalities/bytes/patching.h; include_next_token = true): space/static/byte modes need nothing else;
// entropy mode needs an entropy model, attached with set_entropy_model() (a small causal byte LM, e.g.
// a DenseModel over the same 260 ids; entropies are the softmax entropies, in nats, of its next-byte
// logits, computed under no_grad; it is not a submodule: not trained, not saved, not moved by .to()).
// forward_with_patches(batch, patch_lengths) takes the boundaries from the caller instead (precomputed
// entropies, a data pipeline that stores lengths). Causality holds because every patcher rule decides
// whether byte p opens a patch from data before p only (the incremental property, §2.4).
//
// Efficient cross-attention (§6), selected by cross_attn_impl:
//   segments (default): encoder queries of patch p attend only to the bytes of patch p, run as a batch
//     of B·P short attentions over each patch's padded byte range; decoder byte t attends to exactly
//     the k vectors of patch dpid(t), gathered per byte (a k-way softmax, no mask, no attention kernel);
//   masked: the released formulation, dense [B, P·k, N] and [B, N, P·k] masks through SDPA (reference).
// Rows with no key (an encoder patch holding only the future byte, or right-padding patches) give 0.
//
// Documents (Batch::doc_ids) play the role of the released EOS-based masks: local self-attention is
// block-causal per document; in the global model a patch that holds a document's last byte ends that
// document, i.e. patch p belongs to document #(patches before p that hold a document end), exactly
// what the released code derives from EOS positions. Without doc_ids everything is one document (the
// released code would also cut at EOS ids; put the boundaries in doc_ids). RoPE positions run over the
// whole packed row (bytes) and over patch indices (global) without restarting (§1.3).
//
// Incremental generation (§2.4): step() consumes one byte at a time (a chunk is consumed byte by byte)
// with KV caches for the entropy model, the encoder and the decoder; a patch is closed, pooled,
// cross-attended and pushed through the global model (one cached step, per row) only when the patcher
// says the next byte opens a new patch (Patcher::starts_patch). The decoder then reads the k vectors of
// the most recently closed patch, which is dpid(t). The logits equal the full forward's at every step.
//
// Parameter names (released checkpoint -> here; shapes [out, in] as torch.nn.Linear):
//   local_encoder.tok_embeddings.weight                       [260, h_E]
//   encoder_hash_tok_embedding.{i}.weight                     [hash.vocab, h_E], i = f·|G| + index of n
//   local_encoder.layers.{l}.attention.{wq,wk,wv,wo}.weight   Llama block (also attention_norm,
//   local_encoder.layers.{l}.feed_forward.{w1,w2,w3}.weight     ffn_norm); likewise global_transformer.
//   local_encoder.patch_embedding_projection.weight           [k·h_E, h_E]  (pooled states -> queries)
//   local_encoder.cross_attn_layers.{c}.{cross_attn_norm_q,cross_attn_norm_kv}.weight  [h_E]
//   local_encoder.cross_attn_layers.{c}.{wq,wk,wv,wo}.weight  [h_E, h_E]
//   global_transformer.token_embedding_projection.weight      [h_G, k·h_E]  (only when k·h_E != h_G)
//   global_transformer.layers.{l}.*                           Llama blocks of width h_G
//   local_decoder.patch_embedding_projection.weight           [k·h_D, h_G]
//   local_decoder.cross_attn_layers.{c}.*                     as the encoder's, width h_D
//   local_decoder.layers.{l}.*, local_decoder.norm.weight, local_decoder.output.weight [260, h_D]
// The RoPE tables (local_encoder.rope, global_transformer.rope_embeddings, local_decoder.rope) are
// buffers derived from the config, as the released non-persistent freqs_cis. The Hugging Face port
// renames everything (and fuses the hash tables); convert from the official names.
//
// Paper vs code (§1.10): we follow the code — hash ids on token ids with the oldest byte at a^0, no
// 1/(#n+1) normalisation, pooling from the encoder states after the layer where cross-attention first
// runs, RMSNorm on the cross-attention query and key/value inputs, the doubled residual, encoder
// cross-attention after the last layer only (option: every layer), decoder cross-attention before every
// layer (option: first only), interleaved RoPE with θ = 500000 for all three stacks.
// Not provided: the released static-patching variant with BOE prefix padding (our static patcher gives
// [1, s−1, s, ...] directly, §patching.h), cross_attn_window_{encoder,decoder} (None in the released
// models), cross-attention without pooling init, downsampling without cross-attention, the frequency
// n-gram tables (unused by the released models), the entropy model's restart every 8192 bytes.
#pragma once

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <memory>

#include "architectures/dense.h"
#include "core/model.h"
#include "core/nn/attention.h"
#include "core/nn/rms_norm.h"
#include "core/nn/rope.h"
#include "modalities/bytes/ngram_hash.h"
#include "modalities/bytes/patching.h"

namespace tessera {

struct BLTConfig {
  std::string arch = "blt";
  // Local encoder E (released names; defaults: the repo's debug config dims, §1.8).
  int64_t dim_local_encoder = 256;  // h_E
  int64_t n_layers_local_encoder = 1;
  int64_t n_heads_local_encoder = 4;
  // Latent global transformer G.
  int64_t dim_global = 512;  // h_G
  int64_t n_layers_global = 4;
  int64_t n_heads_global = 8;
  int64_t n_kv_heads_global = 0;  // 0: n_heads_global
  // Local decoder D (h_D must equal h_E, as the released reshapes require).
  int64_t dim_local_decoder = 256;
  int64_t n_layers_local_decoder = 2;
  int64_t n_heads_local_decoder = 4;
  int64_t n_kv_heads = 0;  // local stacks' key/value heads (0: their n_heads)
  int64_t local_attention_window_len = 512;  // w_E = w_D (0: full causal)
  // Cross-attention.
  int64_t cross_attn_k = 2;       // query/key vectors per patch
  int64_t cross_attn_nheads = 4;  // heads of every cross-attention (head dim h_E / nheads)
  bool cross_attn_all_layers_encoder = false;
  bool cross_attn_all_layers_decoder = true;
  std::string cross_attn_impl = "segments";
  // Hash n-gram embeddings (released: n = 3..8, one function, 500002 rows; default vocab is the
  // debug config's 50002 to keep a default model small) and the patcher (default: space patching, which
  // needs no entropy model; the released models use entropy/global with θ = 1.3354).
  blt::NgramHashConfig hash = [] {
    blt::NgramHashConfig h;
    h.vocab = 50002;
    return h;
  }();
  blt::PatcherConfig patcher = [] {
    blt::PatcherConfig p;
    p.mode = "space";
    return p;
  }();
  // Run dir or checkpoint of the entropy model for patcher.mode entropy (a dense byte LM such as
  // recipes/blt/entropy_model.yaml trains). Attached by the recipe layer when the model is built; ""
  // leaves it to set_entropy_model().
  std::string entropy_model;
  int64_t vocab_size = 0;       // 0: from the data's layout (260 for bytes)
  int64_t max_seq_len = 8192;   // longest row in bytes (RoPE tables, KV caches); released 24576
  double rope_theta = 500000.0;
  std::string rope_layout = "interleaved";
  double ffn_dim_multiplier = 1.0;
  int64_t multiple_of = 256;
  double norm_eps = 1e-5;
  std::string init_std_factor = "current_depth";

  template <class V>
  void fields(V& v) {
    v.choice("arch", arch, {"blt"}, "architecture name");
    v.optional("dim_local_encoder", dim_local_encoder, "local encoder width h_E");
    v.optional("n_layers_local_encoder", n_layers_local_encoder, "local encoder blocks l_E");
    v.optional("n_heads_local_encoder", n_heads_local_encoder, "local encoder attention heads");
    v.optional("dim_global", dim_global, "global (latent) transformer width h_G");
    v.optional("n_layers_global", n_layers_global, "global transformer blocks l_G");
    v.optional("n_heads_global", n_heads_global, "global attention heads");
    v.optional("n_kv_heads_global", n_kv_heads_global, "global key/value heads (0: n_heads_global)");
    v.optional("dim_local_decoder", dim_local_decoder, "local decoder width h_D (must equal h_E)");
    v.optional("n_layers_local_decoder", n_layers_local_decoder, "local decoder blocks l_D");
    v.optional("n_heads_local_decoder", n_heads_local_decoder, "local decoder attention heads");
    v.optional("n_kv_heads", n_kv_heads, "local encoder/decoder key/value heads (0: their n_heads)");
    v.optional("local_attention_window_len", local_attention_window_len,
               "sliding window of the local self-attention in bytes (0: full causal; released 512)");
    v.optional("cross_attn_k", cross_attn_k, "query vectors per patch in the encoder / keys per patch in the decoder");
    v.optional("cross_attn_nheads", cross_attn_nheads, "heads of the cross-attentions");
    v.optional("cross_attn_all_layers_encoder", cross_attn_all_layers_encoder,
               "encoder cross-attention after every layer (released: last layer only)");
    v.optional("cross_attn_all_layers_decoder", cross_attn_all_layers_decoder,
               "decoder cross-attention before every layer (released) or only the first");
    v.choice("cross_attn_impl", cross_attn_impl, {"segments", "masked"},
             "segments: per-patch encoder attention and k-way per-byte decoder attention; masked: the "
             "released dense-mask formulation (reference)");
    v.optional("hash", hash, "hash n-gram embeddings (ngram_sizes, num_hash_functions, vocab)");
    v.optional("patcher", patcher, "patch boundaries (entropy mode needs entropy_model)");
    v.optional("entropy_model", entropy_model,
               "run dir or checkpoint of the entropy model for patcher.mode entropy (recipes/blt/entropy_model.yaml)");
    v.optional("vocab_size", vocab_size, "byte vocabulary size (0: from the data's layout)");
    v.optional("max_seq_len", max_seq_len, "longest sequence in bytes (RoPE tables, KV caches)");
    v.optional("rope_theta", rope_theta, "RoPE base of all three stacks (released 500000)");
    v.choice("rope_layout", rope_layout, {"interleaved", "half_split"}, "RoPE pairing (released: interleaved)");
    v.optional("ffn_dim_multiplier", ffn_dim_multiplier, "multiplier on the 8/3·dim SwiGLU hidden size");
    v.optional("multiple_of", multiple_of, "SwiGLU hidden sizes are rounded up to this");
    v.optional("norm_eps", norm_eps, "RMSNorm epsilon");
    v.choice("init_std_factor", init_std_factor, {"current_depth", "disabled"},
             "output projections of block d are initialised with std / sqrt(2(d+1)) (current_depth) or std");
  }

  // The released checkpoints' architectures (§1.8), vocab 260, entropy/global patching at θ = 1.3354.
  static BLTConfig released_1b();
  static BLTConfig released_7b();
};

// The released CrossAttention (latent_transformer.py): RMSNorm on the query input and on the key/value
// input, bias-free wq/wk/wv/wo, no RoPE; returns x + attn (the caller adds x again: the doubled
// residual). Head dim = dim / n_heads.
struct BLTCrossAttentionImpl : torch::nn::Module {
  BLTCrossAttentionImpl(int64_t dim, int64_t n_heads, double norm_eps);

  // Queries of x [..., dim] -> [..., H, D]; keys and values of kv [..., dim] -> [..., H, D] each.
  at::Tensor queries(const at::Tensor& x);
  std::pair<at::Tensor, at::Tensor> keys_values(const at::Tensor& kv);
  // Reference: x [B, Tq, dim] attends to kv [B, Tk, dim] under mask [B, Tq, Tk] (true = attend).
  at::Tensor forward_masked(const at::Tensor& x, const at::Tensor& kv, const at::Tensor& mask);
  // Segments: x [B, P, k, dim] (queries of patch p) attend to keys/values [B, N, H, D] at byte indices
  // index [B, P, L] where valid [B, P, L]. -> [B, P, k, dim].
  at::Tensor forward_segments(const at::Tensor& x, const at::Tensor& keys, const at::Tensor& values,
                              const at::Tensor& index, const at::Tensor& valid);
  // Gathered: x [B, N, dim]; every query attends to its own k keys/values [B, N, k, H, D]. -> [B, N, dim].
  at::Tensor forward_gathered(const at::Tensor& x, const at::Tensor& keys, const at::Tensor& values);

  nn::RMSNorm cross_attn_norm_q{nullptr}, cross_attn_norm_kv{nullptr};
  torch::nn::Linear wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};

 private:
  nn::CrossAttention inner_{nullptr};  // the same wq..wo (not a registered child): the masked path
  int64_t dim_, n_heads_, head_dim_;
};
TORCH_MODULE(BLTCrossAttention);

struct BLTLocalEncoderImpl : torch::nn::Module {
  BLTLocalEncoderImpl(const BLTConfig& c, int64_t hidden_dim);
  torch::nn::Embedding tok_embeddings{nullptr};
  torch::nn::ModuleList layers{nullptr};             // DenseBlocks
  torch::nn::Linear patch_embedding_projection{nullptr};
  torch::nn::ModuleList cross_attn_layers{nullptr};  // BLTCrossAttention, 1 or l_E
  nn::RotaryEmbedding rope{nullptr};
};
TORCH_MODULE(BLTLocalEncoder);

struct BLTGlobalImpl : torch::nn::Module {
  BLTGlobalImpl(const BLTConfig& c, int64_t hidden_dim);
  torch::nn::Linear token_embedding_projection{nullptr};  // only when k·h_E != h_G
  torch::nn::ModuleList layers{nullptr};
  nn::RotaryEmbedding rope_embeddings{nullptr};
};
TORCH_MODULE(BLTGlobal);

struct BLTLocalDecoderImpl : torch::nn::Module {
  BLTLocalDecoderImpl(const BLTConfig& c, int64_t hidden_dim);
  torch::nn::Linear patch_embedding_projection{nullptr};
  torch::nn::ModuleList cross_attn_layers{nullptr};  // l_D or 1
  torch::nn::ModuleList layers{nullptr};
  nn::RMSNorm norm{nullptr};
  torch::nn::Linear output{nullptr};
  nn::RotaryEmbedding rope{nullptr};
};
TORCH_MODULE(BLTLocalDecoder);

class BLTModel : public LanguageModel {
 public:
  explicit BLTModel(BLTConfig config);

  std::string arch() const override { return "blt"; }
  int64_t vocab_size() const override { return config_.vocab_size; }
  int64_t max_seq_len() const override { return config_.max_seq_len; }
  YAML::Node config_yaml() const override;
  // Per byte, the paper's eqs. (13)-(17) (§3.1) in FlopCount's conventions (core/flops.h: exact SwiGLU
  // matmuls, causal attention halved, windows capped, 260 logits), with n_p = patcher.patch_size taken
  // as the mean patch size and seq_len bytes (ceil(seq_len / n_p) patches):
  //   global stack (+ input projection) once per patch, i.e. / n_p;
  //   encoder and decoder stacks (+ output head) once per byte, attending min(i+1, window) bytes;
  //   encoder cross-attention: wk/wv per byte, W_pe, wq/wo for k queries per patch (/ n_p), each query
  //     attending the n_p bytes of its patch;
  //   decoder cross-attention: wq/wo per byte, W_pd and wk/wv for k vectors per patch (/ n_p), each
  //     byte attending k keys.
  // Hash/byte embeddings and the entropy model are free (§3.1). matmul_params is the per-byte
  // equivalent count, rounded to an integer.
  FlopCount flops(int64_t seq_len) const override;

  // tokens [B, N] (BLT ids) -> logits [B, N, V] (float32). Patches with Batch::patch_lengths when the data
  // provides them, else with the configured patcher.
  Outputs forward(const Batch& batch) override;
  // Same, with patch_lengths [B, P] (int64, right-padded with zeros, each row summing to N + 1 with a
  // first patch of 1: the released layout, §1.7) given by the caller.
  Outputs forward_with_patches(const Batch& batch, const at::Tensor& patch_lengths);
  // The lengths forward() uses for this batch (include_next_token), on the CPU.
  at::Tensor patch_lengths(const Batch& batch);
  // Per-byte entropies [B, N] (float32, nats): the batch's precomputed ones (Batch::entropies) when it
  // has them, else the attached entropy model's over batch.tokens (and doc_ids, when given), under no_grad.
  at::Tensor entropies(const Batch& batch);

  // The configured patcher's patches of the rows themselves (without the generation-time next byte).
  PatchCount count_patches(const Batch& batch) override;

  // Attaches the entropy model used by entropy-mode patching (forward and generation). nullptr detaches.
  void set_entropy_model(std::shared_ptr<LanguageModel> model);
  const std::shared_ptr<LanguageModel>& entropy_model() const { return entropy_model_; }

  std::unique_ptr<DecodeState> start_decoding(int64_t batch_size, int64_t max_len) override;
  at::Tensor step(const at::Tensor& tokens, DecodeState& state) override;

  const BLTConfig& config() const { return config_; }
  const blt::Patcher& patcher() const { return patcher_; }

 private:
  at::Tensor embed(const at::Tensor& tokens);  // byte + hash n-gram embeddings, [B, N, h_E]
  at::Tensor encoder_cross(size_t layer, const at::Tensor& queries, const at::Tensor& h,
                           const at::Tensor& patch_ids, const at::Tensor& lengths_cpu, int64_t n_bytes);
  at::Tensor decoder_cross(size_t layer, const at::Tensor& h, const at::Tensor& patch_vectors,
                           const at::Tensor& decoder_patch_ids);
  at::Tensor run_global(at::Tensor patches, const at::Tensor& positions, const nn::MaskSpec& spec,
                        std::vector<nn::KVCache>* caches);
  at::Tensor head(const at::Tensor& h);
  bool encoder_cross_after(int64_t layer) const;
  bool decoder_cross_before(int64_t layer) const;
  void init_weights();

  BLTConfig config_;
  blt::Patcher patcher_;
  int64_t local_hidden_, global_hidden_;
  BLTLocalEncoder local_encoder{nullptr};
  BLTGlobal global_transformer{nullptr};
  BLTLocalDecoder local_decoder{nullptr};
  torch::nn::ModuleList encoder_hash_tok_embedding{nullptr};
  std::shared_ptr<LanguageModel> entropy_model_;
};

}  // namespace tessera
