#include "architectures/dense.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/config.h"
#include "core/error.h"
#include "core/kernels/fused.h"
#include "core/nn/fused_linear.h"

namespace tessera {

namespace {
struct DenseDecodeState : DecodeState {
  std::vector<nn::KVCache> caches;
};

void validate(const DenseConfig& c) {
  check(c.dim > 0 && c.n_layers > 0 && c.n_heads > 0, "model: dim, n_layers and n_heads must be positive");
  check(c.dim % c.n_heads == 0, "model.dim (", c.dim, ") must be divisible by model.n_heads (", c.n_heads, ")");
  const int64_t kv = c.n_kv_heads == 0 ? c.n_heads : c.n_kv_heads;
  check(kv > 0 && c.n_heads % kv == 0, "model.n_heads (", c.n_heads, ") must be a multiple of model.n_kv_heads (",
        kv, ")");
  check((c.dim / c.n_heads) % 2 == 0, "model: head dim ", c.dim / c.n_heads, " must be even for RoPE");
  check(c.vocab_size > 0, "model.vocab_size must be positive (or 0 to take it from the data)");
  check(c.max_seq_len > 0, "model.max_seq_len must be positive");
  check(c.sliding_window >= 0, "model.sliding_window must be >= 0");
}
// RMSNorm of residual + pending (pending undefined: of residual alone), in the activation dtype, with the
// sum kept in the residual's precision: one kernel on CUDA.
kernels::AddRmsNorm norm_of_sum(const at::Tensor& residual, const at::Tensor& pending, const nn::RMSNormImpl& norm,
                                bool use_kernel) {
  const at::ScalarType act = kernels::activation_dtype(residual);
  return pending.defined() ? kernels::add_rms_norm(residual, pending, norm.scale(), norm.eps, act, use_kernel)
                           : kernels::add_rms_norm({}, residual, norm.scale(), norm.eps, act, use_kernel);
}
}  // namespace

DenseBlockImpl::DenseBlockImpl(const DenseConfig& c, int64_t hidden_dim) {
  attention_norm = register_module("attention_norm", nn::RMSNorm(c.dim, c.norm_eps));
  nn::SelfAttentionOptions opts;
  opts.dim = c.dim;
  opts.n_heads = c.n_heads;
  opts.n_kv_heads = c.n_kv_heads == 0 ? c.n_heads : c.n_kv_heads;
  attention = register_module("attention", nn::SelfAttention(opts));
  ffn_norm = register_module("ffn_norm", nn::RMSNorm(c.dim, c.norm_eps));
  feed_forward = register_module("feed_forward", nn::SwiGLU(c.dim, hidden_dim));
  feed_forward->fused = c.fused_kernels;
  feed_forward->fused_projections = c.fused_projections;
  attention->fused_projections = c.fused_projections;
  attention->fused = c.fused_kernels;
  fused_kernels = c.fused_kernels;
}

at::Tensor DenseBlockImpl::forward(const at::Tensor& x, const nn::RotaryEmbeddingImpl* rope,
                                   const at::Tensor& positions, const nn::MaskSpec& spec, nn::KVCache* cache) {
  const auto [h, pending] = forward_deferred(x, at::Tensor(), rope, positions, spec, cache);
  return h + pending;
}

std::pair<at::Tensor, at::Tensor> DenseBlockImpl::forward_deferred(const at::Tensor& residual, const at::Tensor& pending,
                                                                   const nn::RotaryEmbeddingImpl* rope,
                                                                   const at::Tensor& positions, const nn::MaskSpec& spec,
                                                                   nn::KVCache* cache) {
  // The residual stream stays in its precision (float32 under autocast); each norm writes the activation
  // dtype directly and also forms the residual sum (the previous block's pending feed-forward output, then
  // the attention output), in one kernel on CUDA.
  const kernels::AddRmsNorm a = norm_of_sum(residual, pending, *attention_norm, fused_kernels);
  const kernels::AddRmsNorm b = kernels::add_rms_norm(a.sum, attention->forward(a.normed, rope, positions, spec, cache),
                                                      ffn_norm->scale(), ffn_norm->eps,
                                                      kernels::activation_dtype(residual), fused_kernels);
  return {b.sum, feed_forward->forward(b.normed)};
}

std::pair<at::Tensor, at::Tensor> run_dense_blocks_deferred(torch::nn::ModuleList& layers,
                                                            const nn::RotaryEmbeddingImpl* rope, at::Tensor h,
                                                            const at::Tensor& positions, const nn::MaskSpec& spec,
                                                            std::vector<nn::KVCache>* caches) {
  at::Tensor pending;
  for (size_t i = 0; i < layers->size(); ++i)
    std::tie(h, pending) = layers->ptr<DenseBlockImpl>(i)->forward_deferred(h, pending, rope, positions, spec,
                                                                            caches ? &(*caches)[i] : nullptr);
  return {h, pending};
}

at::Tensor run_dense_blocks(torch::nn::ModuleList& layers, const nn::RotaryEmbeddingImpl* rope, at::Tensor h,
                            const at::Tensor& positions, const nn::MaskSpec& spec, std::vector<nn::KVCache>* caches) {
  const auto [sum, pending] = run_dense_blocks_deferred(layers, rope, std::move(h), positions, spec, caches);
  return pending.defined() ? sum + pending : sum;
}

DenseModel::DenseModel(DenseConfig config) : config_(std::move(config)) {
  validate(config_);
  hidden_dim_ = nn::swiglu_hidden_dim(config_.dim, config_.ffn_dim_multiplier, config_.multiple_of);
  tok_embeddings = register_module("tok_embeddings", torch::nn::Embedding(config_.vocab_size, config_.dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.n_layers; ++i) layers->push_back(DenseBlock(config_, hidden_dim_));
  norm = register_module("norm", nn::RMSNorm(config_.dim, config_.norm_eps));
  if (!config_.tie_embeddings)
    output = register_module("output", torch::nn::Linear(torch::nn::LinearOptions(config_.dim, config_.vocab_size).bias(false)));
  rope = register_module("rope", nn::RotaryEmbedding(config_.dim / config_.n_heads, config_.max_seq_len,
                                                     config_.rope_theta, nn::parse_rope_layout(config_.rope_layout)));
  rope->fused = config_.fused_kernels;
  init_weights();
}

void DenseModel::init_weights() {
  torch::NoGradGuard no_grad;
  // GPT-2 style: N(0, std) everywhere, residual output projections scaled down with depth so that
  // the residual stream's variance does not grow with n_layers.
  const double out_std = config_.init_std / std::sqrt(2.0 * config_.n_layers);
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    at::Tensor p = item.value();
    if (p.dim() < 2) continue;  // norm weights stay at 1
    const bool residual_out = name.find("attention.wo") != std::string::npos ||
                              name.find("feed_forward.w2") != std::string::npos;
    p.normal_(0.0, residual_out ? out_std : config_.init_std);
  }
}

YAML::Node DenseModel::config_yaml() const { return config::to_yaml(config_); }

FlopCount DenseModel::flops(int64_t seq_len) const {
  const int64_t d = config_.dim;
  const int64_t kv_dim = (config_.n_kv_heads == 0 ? config_.n_heads : config_.n_kv_heads) * (d / config_.n_heads);
  const int64_t per_layer = d * d /*wq*/ + 2 * d * kv_dim /*wk,wv*/ + d * d /*wo*/ + 3 * d * hidden_dim_;
  const int64_t matmul_params = config_.n_layers * per_layer + config_.vocab_size * d /*output head*/;
  return transformer_flops(matmul_params, config_.n_layers, d, causal_attended(seq_len, config_.sliding_window));
}

at::Tensor DenseModel::run(const at::Tensor& tokens, const at::Tensor& positions, const nn::MaskSpec& spec,
                           std::vector<nn::KVCache>* caches) {
  // The last block's feed-forward output is added inside the final norm (one kernel on CUDA).
  const auto [sum, pending] =
      run_dense_blocks_deferred(layers, rope.get(), tok_embeddings->forward(tokens), positions, spec, caches);
  const at::Tensor h = norm_of_sum(sum, pending, *norm, config_.fused_kernels).normed;
  return config_.tie_embeddings ? at::linear(h, tok_embeddings->weight) : nn::project(h, {output.get()}, config_.fused_kernels);
}

Outputs DenseModel::forward(const Batch& batch) {
  require_field(batch.tokens, "tokens", arch());
  const int64_t T = batch.seq_len();
  check(T <= config_.max_seq_len, "sequence length ", T, " exceeds model.max_seq_len ", config_.max_seq_len);
  const at::Tensor positions =
      batch.positions.defined() ? batch.positions : rope->range(0, T, batch.tokens.device());
  nn::MaskSpec spec;
  spec.causal = true;
  spec.window = config_.sliding_window;
  if (batch.doc_ids.defined()) {
    spec.q_doc_ids = batch.doc_ids;
    spec.kv_doc_ids = batch.doc_ids;
  }
  Outputs out;
  out.logits = run(batch.tokens, positions, spec, nullptr);
  return out;
}

std::unique_ptr<DecodeState> DenseModel::start_decoding(int64_t batch_size, int64_t max_len) {
  check(max_len <= config_.max_seq_len, "generation length ", max_len, " exceeds model.max_seq_len ",
        config_.max_seq_len);
  auto state = std::make_unique<DenseDecodeState>();
  const at::Tensor w = tok_embeddings->weight;
  const int64_t kv_heads = config_.n_kv_heads == 0 ? config_.n_heads : config_.n_kv_heads;
  const auto dtype = nn::kv_cache_dtype(w);
  for (int64_t i = 0; i < config_.n_layers; ++i)
    state->caches.emplace_back(batch_size, kv_heads, max_len, config_.dim / config_.n_heads, dtype, w.device());
  return state;
}

at::Tensor DenseModel::step(const at::Tensor& tokens, DecodeState& base) {
  auto& state = dynamic_cast<DenseDecodeState&>(base);
  const int64_t t = tokens.size(1);
  const at::Tensor positions = rope->range(state.position, t, tokens.device());
  nn::MaskSpec spec;
  spec.causal = true;
  spec.window = config_.sliding_window;
  spec.q_offset = state.position;
  at::Tensor logits = run(tokens, positions, spec, &state.caches);
  state.position += t;
  return logits;
}

}  // namespace tessera
