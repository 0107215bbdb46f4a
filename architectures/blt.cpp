#include "architectures/blt.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "core/config.h"
#include "core/error.h"
#include "core/nn/init.h"

namespace tessera {

namespace {

using torch::nn::LinearOptions;

void validate(const BLTConfig& c) {
  check(c.dim_local_encoder > 0 && c.dim_global > 0 && c.dim_local_decoder > 0,
        "model: dim_local_encoder, dim_global and dim_local_decoder must be positive");
  check(c.n_layers_local_encoder > 0 && c.n_layers_global >= 0 && c.n_layers_local_decoder > 0,
        "model: n_layers_local_encoder and n_layers_local_decoder must be positive, n_layers_global >= 0");
  check(c.n_heads_local_encoder > 0 && c.n_heads_global > 0 && c.n_heads_local_decoder > 0 && c.cross_attn_nheads > 0,
        "model: every n_heads must be positive");
  check(c.dim_local_decoder == c.dim_local_encoder, "model.dim_local_decoder (", c.dim_local_decoder,
        ") must equal model.dim_local_encoder (", c.dim_local_encoder,
        "): the decoder reads the encoder's byte states and the released reshapes need one local width");
  auto heads_ok = [](int64_t dim, int64_t heads, int64_t kv, const char* name) {
    check(dim % heads == 0, "model.", name, ": width ", dim, " is not divisible by ", heads, " heads");
    check((dim / heads) % 2 == 0, "model.", name, ": head dim ", dim / heads, " must be even for RoPE");
    const int64_t k = kv == 0 ? heads : kv;
    check(k > 0 && heads % k == 0, "model.", name, ": ", heads, " heads are not a multiple of ", k, " key/value heads");
  };
  heads_ok(c.dim_local_encoder, c.n_heads_local_encoder, c.n_kv_heads, "n_heads_local_encoder");
  heads_ok(c.dim_global, c.n_heads_global, c.n_kv_heads_global, "n_heads_global");
  heads_ok(c.dim_local_decoder, c.n_heads_local_decoder, c.n_kv_heads, "n_heads_local_decoder");
  check(c.dim_local_encoder % c.cross_attn_nheads == 0, "model.cross_attn_nheads (", c.cross_attn_nheads,
        ") must divide model.dim_local_encoder (", c.dim_local_encoder, ")");
  check(c.cross_attn_k > 0, "model.cross_attn_k must be positive, got ", c.cross_attn_k);
  check(c.local_attention_window_len >= 0, "model.local_attention_window_len must be >= 0");
  check(c.vocab_size > 0, "model.vocab_size must be positive (or 0 to take it from the data)");
  check(c.max_seq_len > 0, "model.max_seq_len must be positive");
  c.hash.validate();
}

DenseConfig block_config(int64_t dim, int64_t heads, int64_t kv_heads, double norm_eps) {
  DenseConfig b;
  b.dim = dim;
  b.n_heads = heads;
  b.n_kv_heads = kv_heads;
  b.norm_eps = norm_eps;
  return b;
}

nn::RotaryEmbedding make_rope(const BLTConfig& c, int64_t dim, int64_t heads, int64_t positions) {
  return nn::RotaryEmbedding(dim / heads, positions, c.rope_theta, nn::parse_rope_layout(c.rope_layout));
}

// Block i of a stack of DenseBlocks (the local stacks interleave cross-attention between blocks).
at::Tensor run_block(torch::nn::ModuleList& layers, size_t i, const at::Tensor& h, const nn::RotaryEmbeddingImpl* rope,
                     const at::Tensor& positions, const nn::MaskSpec& spec, nn::KVCache* cache) {
  return layers->ptr<DenseBlockImpl>(i)->forward(h, rope, positions, spec, cache);
}


struct BLTDecodeState : DecodeState {
  int64_t batch = 0, max_len = 0;
  std::vector<nn::KVCache> encoder_caches, decoder_caches;
  std::vector<std::vector<nn::KVCache>> global_caches;  // [row][layer], each batch 1: rows close patches apart
  std::unique_ptr<DecodeState> entropy_state;
  at::Tensor tokens;                 // [B, max_len] history on the model's device
  at::Tensor tokens_cpu;             // [B, max_len] the same on the CPU (patcher)
  at::Tensor entropies_cpu;          // [B, max_len] float32 (entropy mode)
  std::vector<at::Tensor> states;    // per encoder cross-attention layer: [B, max_len, h_E] states after that
                                     // layer, in the parameters' dtype (the residual stream's under autocast)
  std::vector<at::Tensor> dec_keys, dec_values;  // per decoder cross layer: [B, k, H, D] of the last closed patch
  std::vector<int64_t> patch_start;  // per row: first byte of the open patch
  std::vector<int64_t> closed;       // per row: patches closed so far (= global positions used)
};

}  // namespace

BLTConfig BLTConfig::released_1b() {
  BLTConfig c;
  c.dim_local_encoder = 1024;
  c.n_layers_local_encoder = 1;
  c.n_heads_local_encoder = 16;
  c.dim_global = 2048;
  c.n_layers_global = 25;
  c.n_heads_global = 16;
  c.dim_local_decoder = 1024;
  c.n_layers_local_decoder = 9;
  c.n_heads_local_decoder = 16;
  c.cross_attn_k = 2;
  c.cross_attn_nheads = 16;
  c.hash = blt::NgramHashConfig{};  // n = 3..8, one function, 500002 rows
  c.patcher = blt::PatcherConfig{};  // entropy / global / θ = 1.335442066192627
  c.vocab_size = blt::kVocabSize;
  c.max_seq_len = 24576;
  return c;
}

BLTConfig BLTConfig::released_7b() {
  BLTConfig c = released_1b();
  c.dim_local_encoder = 1280;
  c.n_heads_local_encoder = 20;
  c.dim_global = 4096;
  c.n_layers_global = 32;
  c.n_heads_global = 32;
  c.dim_local_decoder = 1280;
  c.n_layers_local_decoder = 6;
  c.n_heads_local_decoder = 20;
  c.cross_attn_k = 4;
  c.cross_attn_nheads = 20;
  return c;
}

// ---- cross-attention ------------------------------------------------------------------------------

BLTCrossAttentionImpl::BLTCrossAttentionImpl(int64_t dim, int64_t n_heads, double norm_eps)
    : dim_(dim), n_heads_(n_heads), head_dim_(dim / n_heads) {
  cross_attn_norm_q = register_module("cross_attn_norm_q", nn::RMSNorm(dim, norm_eps));
  cross_attn_norm_kv = register_module("cross_attn_norm_kv", nn::RMSNorm(dim, norm_eps));
  nn::CrossAttentionOptions o;
  o.q_dim = dim;
  o.kv_dim = dim;
  o.n_heads = n_heads;
  inner_ = nn::CrossAttention(o);
  // The released names sit directly under the cross-attention layer: share inner_'s projections.
  wq = register_module("wq", inner_->wq);
  wk = register_module("wk", inner_->wk);
  wv = register_module("wv", inner_->wv);
  wo = register_module("wo", inner_->wo);
}

at::Tensor BLTCrossAttentionImpl::queries(const at::Tensor& x) {
  at::Tensor q = wq->forward(cross_attn_norm_q->forward(x));
  auto sizes = q.sizes().vec();
  sizes.back() = n_heads_;
  sizes.push_back(head_dim_);
  return q.view(sizes);
}

std::pair<at::Tensor, at::Tensor> BLTCrossAttentionImpl::keys_values(const at::Tensor& kv) {
  const at::Tensor n = cross_attn_norm_kv->forward(kv);
  auto sizes = kv.sizes().vec();
  sizes.back() = n_heads_;
  sizes.push_back(head_dim_);
  return {wk->forward(n).view(sizes), wv->forward(n).view(sizes)};
}

at::Tensor BLTCrossAttentionImpl::forward_masked(const at::Tensor& x, const at::Tensor& kv, const at::Tensor& mask) {
  return x + inner_->forward(cross_attn_norm_q->forward(x), cross_attn_norm_kv->forward(kv), mask);
}

at::Tensor BLTCrossAttentionImpl::forward_segments(const at::Tensor& x, const at::Tensor& keys,
                                                   const at::Tensor& values, const at::Tensor& index,
                                                   const at::Tensor& valid) {
  const int64_t B = x.size(0), P = x.size(1), K = x.size(2), L = index.size(2), H = n_heads_, D = head_dim_;
  // One short non-causal attention per patch: batch B·P, k queries, L keys.
  const at::Tensor q = queries(x).view({B * P, K, H, D}).transpose(1, 2);  // [BP, H, k, D]
  const at::Tensor flat = index.reshape({B, P * L, 1, 1}).expand({B, P * L, H, D});
  const at::Tensor k = keys.gather(1, flat).view({B * P, L, H, D}).transpose(1, 2);  // [BP, H, L, D]
  const at::Tensor v = values.gather(1, flat).view({B * P, L, H, D}).transpose(1, 2);
  nn::MaskSpec spec;
  spec.causal = false;
  spec.extra = valid.reshape({B * P, 1, 1, L});
  const at::Tensor y = nn::attention(q, k, v, spec);  // [BP, H, k, D]; patches without bytes give 0
  return x + wo->forward(y.transpose(1, 2).reshape({B, P, K, H * D}));
}

at::Tensor BLTCrossAttentionImpl::forward_gathered(const at::Tensor& x, const at::Tensor& keys,
                                                   const at::Tensor& values) {
  // x [B, N, dim]; keys/values [B, N, k, H, D]: a k-way softmax per byte and head.
  const at::Tensor q = queries(x).unsqueeze(-2);                                 // [B, N, H, 1, D]
  const at::Tensor k = keys.permute({0, 1, 3, 4, 2});                            // [B, N, H, D, k]
  const at::Tensor v = values.permute({0, 1, 3, 2, 4});                          // [B, N, H, k, D]
  const at::Tensor w = at::softmax(at::matmul(q, k) / std::sqrt(static_cast<double>(head_dim_)), -1);
  const at::Tensor y = at::matmul(w.to(v.scalar_type()), v);                     // [B, N, H, 1, D]
  return x + wo->forward(y.reshape({x.size(0), x.size(1), dim_}));
}

// ---- stacks --------------------------------------------------------------------------------------

BLTLocalEncoderImpl::BLTLocalEncoderImpl(const BLTConfig& c, int64_t hidden_dim) {
  const int64_t d = c.dim_local_encoder;
  tok_embeddings = register_module("tok_embeddings", torch::nn::Embedding(c.vocab_size, d));
  layers = register_module("layers", torch::nn::ModuleList());
  const DenseConfig b = block_config(d, c.n_heads_local_encoder, c.n_kv_heads, c.norm_eps);
  for (int64_t i = 0; i < c.n_layers_local_encoder; ++i) layers->push_back(DenseBlock(b, hidden_dim));
  patch_embedding_projection =
      register_module("patch_embedding_projection", torch::nn::Linear(LinearOptions(d, d * c.cross_attn_k).bias(false)));
  cross_attn_layers = register_module("cross_attn_layers", torch::nn::ModuleList());
  const int64_t n_cross = c.cross_attn_all_layers_encoder ? c.n_layers_local_encoder : 1;
  for (int64_t i = 0; i < n_cross; ++i) cross_attn_layers->push_back(BLTCrossAttention(d, c.cross_attn_nheads, c.norm_eps));
  rope = register_module("rope", make_rope(c, d, c.n_heads_local_encoder, c.max_seq_len));
}

BLTGlobalImpl::BLTGlobalImpl(const BLTConfig& c, int64_t hidden_dim) {
  const int64_t in = c.dim_local_encoder * c.cross_attn_k;
  if (in != c.dim_global)
    token_embedding_projection = register_module("token_embedding_projection",
                                                 torch::nn::Linear(LinearOptions(in, c.dim_global).bias(false)));
  layers = register_module("layers", torch::nn::ModuleList());
  const DenseConfig b = block_config(c.dim_global, c.n_heads_global, c.n_kv_heads_global, c.norm_eps);
  for (int64_t i = 0; i < c.n_layers_global; ++i) layers->push_back(DenseBlock(b, hidden_dim));
  // N bytes give at most N + 1 patches (the next byte's included).
  rope_embeddings = register_module("rope_embeddings", make_rope(c, c.dim_global, c.n_heads_global, c.max_seq_len + 1));
}

BLTLocalDecoderImpl::BLTLocalDecoderImpl(const BLTConfig& c, int64_t hidden_dim) {
  const int64_t d = c.dim_local_decoder;
  patch_embedding_projection = register_module(
      "patch_embedding_projection", torch::nn::Linear(LinearOptions(c.dim_global, d * c.cross_attn_k).bias(false)));
  cross_attn_layers = register_module("cross_attn_layers", torch::nn::ModuleList());
  const int64_t n_cross = c.cross_attn_all_layers_decoder ? c.n_layers_local_decoder : 1;
  for (int64_t i = 0; i < n_cross; ++i) cross_attn_layers->push_back(BLTCrossAttention(d, c.cross_attn_nheads, c.norm_eps));
  layers = register_module("layers", torch::nn::ModuleList());
  const DenseConfig b = block_config(d, c.n_heads_local_decoder, c.n_kv_heads, c.norm_eps);
  for (int64_t i = 0; i < c.n_layers_local_decoder; ++i) layers->push_back(DenseBlock(b, hidden_dim));
  norm = register_module("norm", nn::RMSNorm(d, c.norm_eps));
  output = register_module("output", torch::nn::Linear(LinearOptions(d, c.vocab_size).bias(false)));
  rope = register_module("rope", make_rope(c, d, c.n_heads_local_decoder, c.max_seq_len));
}

// ---- model ---------------------------------------------------------------------------------------

BLTModel::BLTModel(BLTConfig config)
    : config_((validate(config), std::move(config))), patcher_(config_.patcher) {
  local_hidden_ = nn::swiglu_hidden_dim(config_.dim_local_encoder, config_.ffn_dim_multiplier, config_.multiple_of);
  global_hidden_ = nn::swiglu_hidden_dim(config_.dim_global, config_.ffn_dim_multiplier, config_.multiple_of);
  local_encoder = register_module("local_encoder", BLTLocalEncoder(config_, local_hidden_));
  global_transformer = register_module("global_transformer", BLTGlobal(config_, global_hidden_));
  local_decoder = register_module("local_decoder", BLTLocalDecoder(config_, local_hidden_));
  encoder_hash_tok_embedding = register_module("encoder_hash_tok_embedding", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.hash.num_tables(); ++i)
    encoder_hash_tok_embedding->push_back(torch::nn::Embedding(config_.hash.vocab, config_.dim_local_encoder));
  init_weights();
}

void BLTModel::init_weights() {
  // The released init (lingua base_transformer / local_models): truncated normal cut at ±3σ, std
  // dim^-0.5 for inputs, hidden^-0.5 for w2; block d's wo and w2 divided by sqrt(2(d+1)) under
  // current_depth (the released cut stays at 3·std before the division; ours scales with it).
  torch::NoGradGuard no_grad;
  const bool depth = config_.init_std_factor == "current_depth";
  auto tn = [](const at::Tensor& w, double std) { nn::truncated_normal_(w, std, 3.0); };
  auto init_blocks = [&](torch::nn::ModuleList& layers, int64_t dim, int64_t hidden) {
    for (size_t i = 0; i < layers->size(); ++i) {
      auto b = layers->ptr<DenseBlockImpl>(i);
      const double f = depth ? std::sqrt(2.0 * (i + 1)) : 1.0, s = std::pow(dim, -0.5);
      tn(b->attention->wq->weight, s);
      tn(b->attention->wk->weight, s);
      tn(b->attention->wv->weight, s);
      tn(b->attention->wo->weight, s / f);
      tn(b->feed_forward->w1->weight, s);
      tn(b->feed_forward->w3->weight, s);
      tn(b->feed_forward->w2->weight, std::pow(hidden, -0.5) / f);
    }
  };
  auto init_cross = [&](torch::nn::ModuleList& layers, int64_t dim) {
    for (size_t i = 0; i < layers->size(); ++i) {
      auto x = layers->ptr<BLTCrossAttentionImpl>(i);
      const double f = depth ? std::sqrt(2.0 * (i + 1)) : 1.0, s = std::pow(dim, -0.5);
      tn(x->wq->weight, s);
      tn(x->wk->weight, s);
      tn(x->wv->weight, s);
      tn(x->wo->weight, s / f);
    }
  };
  const int64_t dE = config_.dim_local_encoder, dG = config_.dim_global, dD = config_.dim_local_decoder;
  tn(local_encoder->tok_embeddings->weight, std::pow(dE, -0.5));
  for (size_t i = 0; i < encoder_hash_tok_embedding->size(); ++i)
    tn(encoder_hash_tok_embedding->ptr<torch::nn::EmbeddingImpl>(i)->weight, std::pow(dE, -0.5));
  init_blocks(local_encoder->layers, dE, local_hidden_);
  init_cross(local_encoder->cross_attn_layers, dE);
  tn(local_encoder->patch_embedding_projection->weight, std::pow(dE, -0.5));
  if (global_transformer->token_embedding_projection)
    tn(global_transformer->token_embedding_projection->weight, std::pow(dE * config_.cross_attn_k, -0.5));
  init_blocks(global_transformer->layers, dG, global_hidden_);
  tn(local_decoder->patch_embedding_projection->weight, std::pow(dG, -0.5));
  init_cross(local_decoder->cross_attn_layers, dD);
  init_blocks(local_decoder->layers, dD, local_hidden_);
  tn(local_decoder->output->weight, std::pow(dD, -0.5));
}

YAML::Node BLTModel::config_yaml() const { return config::to_yaml(config_); }

void BLTModel::set_entropy_model(std::shared_ptr<LanguageModel> model) {
  if (model)
    check(model->vocab_size() == config_.vocab_size, "blt: the entropy model's vocabulary (", model->vocab_size(),
          ") differs from the model's (", config_.vocab_size, ")");
  entropy_model_ = std::move(model);
}

bool BLTModel::encoder_cross_after(int64_t layer) const {
  return config_.cross_attn_all_layers_encoder || layer == config_.n_layers_local_encoder - 1;
}
bool BLTModel::decoder_cross_before(int64_t layer) const {
  return config_.cross_attn_all_layers_decoder || layer == 0;
}

at::Tensor BLTModel::embed(const at::Tensor& tokens) {
  // §1.2: byte embedding plus one row of every hash table, summed without normalisation.
  at::Tensor e = local_encoder->tok_embeddings->forward(tokens);
  const at::Tensor ids = blt::ngram_hash_ids(tokens, config_.hash);  // [tables, B, N]
  for (size_t i = 0; i < encoder_hash_tok_embedding->size(); ++i)
    e = e + encoder_hash_tok_embedding->ptr<torch::nn::EmbeddingImpl>(i)->forward(ids[i]);
  return e;
}

at::Tensor BLTModel::entropies(const Batch& batch) {
  // Precomputed by `tessera patch entropies` (the recipe layer checked they come from this entropy model).
  if (batch.entropies.defined()) {
    check(batch.entropies.sizes() == batch.tokens.sizes(), "blt: batch entropies ", batch.entropies.sizes(),
          " do not match the tokens ", batch.tokens.sizes());
    return batch.entropies.to(at::kFloat);
  }
  check(entropy_model_ != nullptr, "blt: patcher.mode is 'entropy' but no entropy model is attached; call "
        "BLTModel::set_entropy_model(), or pass patch lengths to forward_with_patches()");
  torch::NoGradGuard no_grad;
  // Not a submodule (it is not trained or saved with BLT), so it follows the data to its device here.
  const auto params = entropy_model_->parameters();
  if (!params.empty() && params.front().device() != batch.tokens.device()) entropy_model_->to(batch.tokens.device());
  Batch b;
  b.tokens = batch.tokens;
  b.doc_ids = batch.doc_ids;
  return blt::next_byte_entropies(entropy_model_->forward(b).logits);
}

LanguageModel::PatchCount BLTModel::count_patches(const Batch& batch) {
  require_field(batch.tokens, "tokens", arch());
  const at::Tensor H = patcher_.needs_entropies() ? entropies(batch) : at::Tensor();
  const at::Tensor lengths = patcher_.patch(batch.tokens, H, /*include_next_token=*/false);
  return {lengths.sum().item<int64_t>(), lengths.gt(0).sum().item<int64_t>()};
}

at::Tensor BLTModel::patch_lengths(const Batch& batch) {
  require_field(batch.tokens, "tokens", arch());
  const at::Tensor H = patcher_.needs_entropies() ? entropies(batch) : at::Tensor();
  return patcher_.patch(batch.tokens, H, /*include_next_token=*/true);
}

Outputs BLTModel::forward(const Batch& batch) {
  mark_stage("patching", batch.tokens);  // the entropy model and the patcher (no gradient)
  // Boundaries that came with the data (precomputed by a pipeline) win over the configured patcher.
  return forward_with_patches(batch, batch.patch_lengths.defined() ? batch.patch_lengths : patch_lengths(batch));
}

at::Tensor BLTModel::encoder_cross(size_t layer, const at::Tensor& queries, const at::Tensor& h,
                                   const at::Tensor& patch_ids, const at::Tensor& lengths_cpu, int64_t N) {
  auto x = local_encoder->cross_attn_layers->ptr<BLTCrossAttentionImpl>(layer);
  const int64_t B = h.size(0), P = lengths_cpu.size(1), k = config_.cross_attn_k, d = h.size(2);
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(h.device());
  if (config_.cross_attn_impl == "masked") {
    // Query (p, c) sees byte i iff patch_ids[i] == p (§1.4, released cross_attn_mask).
    const at::Tensor q_patch = at::arange(P, long_opts).repeat_interleave(k).view({1, P * k, 1});
    return x->forward_masked(queries, h, q_patch.eq(patch_ids.unsqueeze(1)));
  }
  // Segments: patch p's bytes are [start_p, min(start_p + L_p, N)).
  const at::Tensor starts = blt::patch_starts_from_lengths(lengths_cpu);
  const at::Tensor count = (at::minimum(starts + lengths_cpu, at::full_like(starts, N)) - starts).clamp_min(0);
  const int64_t L = std::max<int64_t>(1, count.max().item<int64_t>());
  const at::Tensor j = at::arange(L, at::kLong).view({1, 1, L});
  const at::Tensor index = (starts.unsqueeze(-1) + j).clamp_max(N - 1).to(h.device());
  const at::Tensor valid = j.lt(count.unsqueeze(-1)).to(h.device());
  const auto [keys, values] = x->keys_values(h);  // [B, N, H, D], projected once per byte
  return x->forward_segments(queries.view({B, P, k, d}), keys, values, index, valid).view({B, P * k, d});
}

at::Tensor BLTModel::decoder_cross(size_t layer, const at::Tensor& h, const at::Tensor& patch_vectors,
                                   const at::Tensor& decoder_patch_ids) {
  auto x = local_decoder->cross_attn_layers->ptr<BLTCrossAttentionImpl>(layer);
  const int64_t B = h.size(0), N = h.size(1), P = patch_vectors.size(1) / config_.cross_attn_k;
  const int64_t k = config_.cross_attn_k;
  if (config_.cross_attn_impl == "masked") {
    // Byte t sees the k vectors of patch decoder_patch_ids[t] (§1.6).
    const at::Tensor kv_patch =
        at::arange(P, decoder_patch_ids.options()).repeat_interleave(k).view({1, 1, P * k});
    return x->forward_masked(h, patch_vectors, decoder_patch_ids.unsqueeze(-1).eq(kv_patch));
  }
  auto [keys, values] = x->keys_values(patch_vectors);  // [B, P·k, H, D]
  const int64_t H = keys.size(2), D = keys.size(3);
  const at::Tensor idx = decoder_patch_ids.view({B, N, 1, 1, 1}).expand({B, N, k, H, D});
  keys = keys.view({B, P, k, H, D}).gather(1, idx);
  values = values.view({B, P, k, H, D}).gather(1, idx);
  return x->forward_gathered(h, keys, values);
}

at::Tensor BLTModel::run_global(at::Tensor g, const at::Tensor& positions, const nn::MaskSpec& spec,
                                std::vector<nn::KVCache>* caches) {
  if (global_transformer->token_embedding_projection) g = global_transformer->token_embedding_projection->forward(g);
  g = run_dense_blocks(global_transformer->layers, global_transformer->rope_embeddings.get(), g, positions, spec, caches);
  return g;  // no final norm: the decoder reads the residual stream (§1.5)
}

at::Tensor BLTModel::head(const at::Tensor& h) {
  // Released: logits cast to float32 (here: reduced-precision logits are; a float64 model stays float64).
  const at::Tensor logits = local_decoder->output->forward(local_decoder->norm->forward(h));
  return at::isReducedFloatingType(logits.scalar_type()) ? logits.to(at::kFloat) : logits;
}

Outputs BLTModel::forward_with_patches(const Batch& batch, const at::Tensor& patch_lengths) {
  require_field(batch.tokens, "tokens", arch());
  const at::Tensor x = batch.tokens.to(at::kLong);
  check(x.dim() == 2, "blt: tokens must be [B, N], got ", x.sizes());
  const int64_t B = x.size(0), N = x.size(1), k = config_.cross_attn_k, dE = config_.dim_local_encoder;
  check(N >= 1, "blt: empty sequence");
  check(N <= config_.max_seq_len, "sequence length ", N, " exceeds model.max_seq_len ", config_.max_seq_len);
  check(patch_lengths.defined() && patch_lengths.dim() == 2 && patch_lengths.size(0) == B,
        "blt: patch_lengths must be [", B, ", P], got ", patch_lengths.defined() ? patch_lengths.sizes() : at::IntArrayRef{});
  const at::Tensor lengths_cpu = patch_lengths.to(at::kCPU, at::kLong);
  blt::check_patch_lengths(lengths_cpu, N + 1);  // the released sum rule: the next byte included
  check(lengths_cpu.select(1, 0).eq(1).all().item<bool>(), "blt: the first patch of every row must have length 1 "
        "(the decoder's patch lag, notes §1.6)");
  const int64_t P = lengths_cpu.size(1);
  const at::Tensor lengths = lengths_cpu.to(x.device());
  const at::Tensor patch_ids = blt::patch_ids_from_lengths(lengths, N);            // [B, N]
  const at::Tensor dec_ids = blt::decoder_patch_ids_from_lengths(lengths, N);      // [B, N]
  const auto long_opts = x.options();

  at::Tensor positions = batch.positions.defined() ? batch.positions.to(at::kLong) : at::arange(N, long_opts);
  nn::MaskSpec local_spec;
  local_spec.causal = true;
  local_spec.window = config_.local_attention_window_len;
  nn::MaskSpec global_spec;
  global_spec.causal = true;
  if (batch.doc_ids.defined()) {
    const at::Tensor doc = batch.doc_ids.to(at::kLong);
    check(doc.dim() == 2 && doc.size(0) == B && doc.size(1) == N, "blt: doc_ids must be [", B, ", ", N, "], got ",
          doc.sizes());
    local_spec.q_doc_ids = doc;
    local_spec.kv_doc_ids = doc;
    // A patch holding a document's last byte ends that document (the released EOS rule, §1.5).
    at::Tensor ends = at::zeros({B, N}, long_opts);
    if (N > 1) ends.narrow(1, 0, N - 1).copy_(doc.narrow(1, 1, N - 1).ne(doc.narrow(1, 0, N - 1)));
    const at::Tensor holds_end = at::zeros({B, P}, long_opts).scatter_reduce(1, patch_ids, ends, "amax");
    global_spec.q_doc_ids = holds_end.cumsum(1) - holds_end;
    global_spec.kv_doc_ids = global_spec.q_doc_ids;
  }

  // Local encoder (§1.4).
  at::Tensor h = embed(x);
  mark_stage("encoder", h);
  at::Tensor patch_embeds;  // [B, P·k, h_E]
  size_t cross = 0;
  for (int64_t i = 0; i < config_.n_layers_local_encoder; ++i) {
    h = run_block(local_encoder->layers, i, h, local_encoder->rope.get(), positions, local_spec, nullptr);
    if (!encoder_cross_after(i)) continue;
    if (!patch_embeds.defined()) {
      // Query init: max over each patch's states (empty patch: 0), projected to k vectors.
      const at::Tensor pooled = at::zeros({B, P, dE}, h.options())
                                    .scatter_reduce(1, patch_ids.unsqueeze(-1).expand({B, N, dE}), h, "amax",
                                                    /*include_self=*/false);
      patch_embeds = local_encoder->patch_embedding_projection->forward(pooled).reshape({B, P * k, dE});
    }
    // The module returns q + attn and the caller adds q again: 2·q + attn (§1.4).
    patch_embeds = patch_embeds + encoder_cross(cross++, patch_embeds, h, patch_ids, lengths_cpu, N);
  }

  // Global transformer over patches (§1.5).
  mark_stage("global", patch_embeds);
  const at::Tensor g = run_global(patch_embeds.reshape({B, P, k * dE}), at::arange(P, long_opts), global_spec, nullptr);

  // Local decoder (§1.6).
  mark_stage("decoder", g);
  const at::Tensor patch_vectors =
      local_decoder->patch_embedding_projection->forward(g).reshape({B, P * k, config_.dim_local_decoder});
  cross = 0;
  for (int64_t i = 0; i < config_.n_layers_local_decoder; ++i) {
    if (decoder_cross_before(i)) h = h + decoder_cross(cross++, h, patch_vectors, dec_ids);
    h = run_block(local_decoder->layers, i, h, local_decoder->rope.get(), positions, local_spec, nullptr);
  }
  Outputs out;
  out.logits = head(h);
  return out;
}

// ---- incremental generation ----------------------------------------------------------------------

std::unique_ptr<DecodeState> BLTModel::start_decoding(int64_t batch_size, int64_t max_len) {
  check(batch_size > 0, "blt: batch size must be positive, got ", batch_size);
  check(max_len > 0 && max_len <= config_.max_seq_len, "generation length ", max_len,
        " must be in [1, model.max_seq_len = ", config_.max_seq_len, "]");
  auto s = std::make_unique<BLTDecodeState>();
  s->batch = batch_size;
  s->max_len = max_len;
  const at::Tensor w = local_encoder->tok_embeddings->weight;
  const auto dtype = nn::kv_cache_dtype(w);
  const auto dev = w.device();
  const int64_t kvE = config_.n_kv_heads ? config_.n_kv_heads : config_.n_heads_local_encoder;
  const int64_t kvD = config_.n_kv_heads ? config_.n_kv_heads : config_.n_heads_local_decoder;
  const int64_t kvG = config_.n_kv_heads_global ? config_.n_kv_heads_global : config_.n_heads_global;
  for (int64_t i = 0; i < config_.n_layers_local_encoder; ++i)
    s->encoder_caches.emplace_back(batch_size, kvE, max_len, config_.dim_local_encoder / config_.n_heads_local_encoder,
                                   dtype, dev);
  for (int64_t i = 0; i < config_.n_layers_local_decoder; ++i)
    s->decoder_caches.emplace_back(batch_size, kvD, max_len, config_.dim_local_decoder / config_.n_heads_local_decoder,
                                   dtype, dev);
  s->global_caches.resize(batch_size);
  for (auto& row : s->global_caches)
    for (int64_t i = 0; i < config_.n_layers_global; ++i)
      row.emplace_back(1, kvG, max_len, config_.dim_global / config_.n_heads_global, dtype, dev);
  if (patcher_.needs_entropies()) {
    check(entropy_model_ != nullptr, "blt: patcher.mode is 'entropy' but no entropy model is attached; call "
          "BLTModel::set_entropy_model() before start_decoding()");
    const auto params = entropy_model_->parameters();
    if (!params.empty() && params.front().device() != dev) entropy_model_->to(dev);
    s->entropy_state = entropy_model_->start_decoding(batch_size, max_len);
  }
  s->tokens = at::zeros({batch_size, max_len}, at::TensorOptions().dtype(at::kLong).device(dev));
  s->tokens_cpu = at::zeros({batch_size, max_len}, at::kLong);
  s->entropies_cpu = at::zeros({batch_size, max_len}, at::kFloat);
  const int64_t n_cross = local_encoder->cross_attn_layers->size();
  for (int64_t i = 0; i < n_cross; ++i)
    s->states.push_back(at::zeros({batch_size, max_len, config_.dim_local_encoder}, w.options()));
  s->patch_start.assign(batch_size, 0);
  s->closed.assign(batch_size, 0);
  return s;
}

at::Tensor BLTModel::step(const at::Tensor& tokens_in, DecodeState& state) {
  auto& s = dynamic_cast<BLTDecodeState&>(state);
  check(tokens_in.dim() == 2 && tokens_in.size(0) == s.batch, "blt: step expects tokens [", s.batch, ", t], got ",
        tokens_in.sizes());
  const int64_t B = s.batch, T = tokens_in.size(1), k = config_.cross_attn_k, dE = config_.dim_local_encoder;
  check(s.position + T <= s.max_len, "blt: decoding past max_len ", s.max_len, " given to start_decoding (",
        s.position, " tokens consumed, ", T, " more)");
  const at::Tensor w = local_encoder->tok_embeddings->weight;
  if (T == 0) return at::zeros({B, 0, config_.vocab_size}, w.options().dtype(at::kFloat));
  const at::Tensor tokens = tokens_in.to(w.device(), at::kLong);
  const auto long_opts = tokens.options();
  int64_t max_n = 1;
  for (int64_t n : config_.hash.ngram_sizes) max_n = std::max(max_n, n);
  nn::MaskSpec local_spec;
  local_spec.causal = true;
  local_spec.window = config_.local_attention_window_len;
  nn::MaskSpec causal;
  causal.causal = true;

  std::vector<at::Tensor> logits;
  for (int64_t c = 0; c < T; ++c) {
    const int64_t t = s.position;
    const at::Tensor xt = tokens.narrow(1, c, 1);  // [B, 1]
    s.tokens.narrow(1, t, 1).copy_(xt);
    s.tokens_cpu.narrow(1, t, 1).copy_(xt.cpu());
    const at::Tensor pos = at::full({1}, t, long_opts);

    // 1. Entropy model one step: H_t, the uncertainty of byte t + 1.
    if (s.entropy_state) {
      torch::NoGradGuard no_grad;
      s.entropies_cpu.narrow(1, t, 1).copy_(blt::next_byte_entropies(entropy_model_->step(xt, *s.entropy_state)).cpu());
    }

    // 2. Encoder one step; hash ids from the last max_n ids (the same windows as the full row).
    const int64_t lo = std::max<int64_t>(0, t + 1 - max_n);
    at::Tensor h = embed(s.tokens.narrow(1, lo, t + 1 - lo)).narrow(1, t - lo, 1);  // [B, 1, h_E]
    size_t cross = 0;
    for (int64_t i = 0; i < config_.n_layers_local_encoder; ++i) {
      h = run_block(local_encoder->layers, i, h, local_encoder->rope.get(), pos, local_spec, &s.encoder_caches[i]);
      if (encoder_cross_after(i)) s.states[cross++].narrow(1, t, 1).copy_(h);
    }

    // 3. Does byte t + 1 open a patch? Then the patch [start, t] is complete: pool, cross-attend, and
    //    run the global model one step for that row (§2.4).
    for (int64_t b = 0; b < B; ++b) {
      const int64_t* row_tokens = s.tokens_cpu[b].data_ptr<int64_t>();
      const float* row_entropies = s.entropies_cpu[b].data_ptr<float>();
      if (!patcher_.starts_patch(t + 1, c10::ArrayRef<int64_t>(row_tokens, t + 1),
                                 c10::ArrayRef<float>(row_entropies, t + 1), s.patch_start[b]))
        continue;
      const int64_t start = s.patch_start[b], len = t + 1 - start;
      at::Tensor pe;  // [1, 1, k, h_E]
      for (size_t l = 0; l < s.states.size(); ++l) {
        const at::Tensor bytes = s.states[l].narrow(0, b, 1).narrow(1, start, len);  // [1, len, h_E]
        if (!pe.defined())
          pe = local_encoder->patch_embedding_projection->forward(std::get<0>(bytes.max(1, true))).view({1, 1, k, dE});
        auto x = local_encoder->cross_attn_layers->ptr<BLTCrossAttentionImpl>(l);
        const auto [keys, values] = x->keys_values(bytes);
        const at::Tensor index = at::arange(len, long_opts).view({1, 1, len});
        pe = pe + x->forward_segments(pe, keys, values, index, at::ones({1, 1, len}, long_opts.dtype(at::kBool)));
      }
      const at::Tensor o = run_global(pe.view({1, 1, k * dE}), at::full({1}, s.closed[b], long_opts), causal,
                                      &s.global_caches[b]);  // [1, 1, h_G]
      const at::Tensor pv = local_decoder->patch_embedding_projection->forward(o).view({1, k, config_.dim_local_decoder});
      for (size_t l = 0; l < local_decoder->cross_attn_layers->size(); ++l) {
        const auto [keys, values] = local_decoder->cross_attn_layers->ptr<BLTCrossAttentionImpl>(l)->keys_values(pv);
        if (s.dec_keys.size() <= l) {
          s.dec_keys.push_back(at::zeros({B, k, keys.size(2), keys.size(3)}, keys.options()));
          s.dec_values.push_back(at::zeros_like(s.dec_keys.back()));
        }
        s.dec_keys[l].narrow(0, b, 1).copy_(keys);
        s.dec_values[l].narrow(0, b, 1).copy_(values);
      }
      s.patch_start[b] = t + 1;
      s.closed[b] += 1;
    }

    // 4. Decoder one step at t: cross-attend to the last closed patch (dpid(t)), then the window.
    cross = 0;
    for (int64_t i = 0; i < config_.n_layers_local_decoder; ++i) {
      if (decoder_cross_before(i)) {
        auto x = local_decoder->cross_attn_layers->ptr<BLTCrossAttentionImpl>(cross);
        h = h + x->forward_gathered(h, s.dec_keys[cross].unsqueeze(1), s.dec_values[cross].unsqueeze(1));
        ++cross;
      }
      h = run_block(local_decoder->layers, i, h, local_decoder->rope.get(), pos, local_spec, &s.decoder_caches[i]);
    }
    logits.push_back(head(h));
    s.position = t + 1;
  }
  return logits.size() == 1 ? logits[0] : at::cat(logits, 1);
}

// ---- FLOPs ---------------------------------------------------------------------------------------

FlopCount BLTModel::flops(int64_t seq_len) const {
  const auto& c = config_;
  const double np = c.patcher.patch_size;
  check(np > 0, "blt: flops needs patcher.patch_size > 0 (the assumed mean patch size)");
  const int64_t dE = c.dim_local_encoder, dG = c.dim_global, dD = c.dim_local_decoder, k = c.cross_attn_k;
  auto block = [](int64_t dim, int64_t heads, int64_t kv_heads, int64_t hidden) {
    const int64_t kv_dim = (kv_heads ? kv_heads : heads) * (dim / heads);
    return 2 * dim * dim + 2 * dim * kv_dim + 3 * dim * hidden;
  };
  const int64_t w = c.local_attention_window_len;
  // (13) global, once per patch.
  const int64_t global_matmul = c.n_layers_global * block(dG, c.n_heads_global, c.n_kv_heads_global, global_hidden_) +
                                (k * dE != dG ? k * dE * dG : 0);
  const int64_t patches = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(seq_len / np)));
  const FlopCount g = transformer_flops(global_matmul, c.n_layers_global, dG, causal_attended(patches));
  // (14) encoder, (15) decoder + output head, once per byte.
  const int64_t enc_matmul = c.n_layers_local_encoder * block(dE, c.n_heads_local_encoder, c.n_kv_heads, local_hidden_);
  const int64_t dec_matmul =
      c.n_layers_local_decoder * block(dD, c.n_heads_local_decoder, c.n_kv_heads, local_hidden_) + c.vocab_size * dD;
  const FlopCount e = transformer_flops(enc_matmul, c.n_layers_local_encoder, dE, causal_attended(seq_len, w));
  const FlopCount d = transformer_flops(dec_matmul, c.n_layers_local_decoder, dD, causal_attended(seq_len, w));
  // (16) encoder cross-attention: per byte wk, wv; per patch W_pe (k·dE²) and wq, wo for k queries.
  const double ne = static_cast<double>(c.cross_attn_all_layers_encoder ? c.n_layers_local_encoder : 1);
  const double enc_cross_matmul = ne * 2.0 * dE * dE + (k * dE * dE + ne * k * 2.0 * dE * dE) / np;
  const double enc_cross_attn = ne * (k / np) * 4.0 * np * dE;  // k queries per patch, n_p keys each
  // (17) decoder cross-attention: per byte wq, wo; per patch W_pd and wk, wv for k vectors.
  const double nd = static_cast<double>(c.cross_attn_all_layers_decoder ? c.n_layers_local_decoder : 1);
  const double dec_cross_matmul = nd * 2.0 * dD * dD + (k * dD * dG + nd * k * 2.0 * dD * dD) / np;
  const double dec_cross_attn = nd * 4.0 * k * dD;  // k keys per byte
  FlopCount out;
  const double matmul = global_matmul / np + enc_matmul + dec_matmul + enc_cross_matmul + dec_cross_matmul;
  out.matmul_params = std::llround(matmul);
  out.inference_per_token = g.inference_per_token / np + e.inference_per_token + d.inference_per_token +
                            2.0 * (enc_cross_matmul + dec_cross_matmul) + enc_cross_attn + dec_cross_attn;
  out.train_per_token = 3.0 * out.inference_per_token;
  return out;
}

}  // namespace tessera
