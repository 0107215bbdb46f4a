#include "architectures/megalodon.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/config.h"
#include "core/error.h"
#include "core/nn/init.h"

namespace tessera {

namespace {

struct MegalodonDecodeState : DecodeState {
  std::vector<MegalodonLayerCache> layers;
  nn::TimestepNormState output_norm;
};

void validate(const MegalodonConfig& c) {
  check(c.dim > 0 && c.n_layers > 0 && c.n_heads > 0, "model: dim, n_layers and n_heads must be positive");
  check(c.z_dim > 0 && c.value_dim > 0, "model: z_dim and value_dim must be positive");
  check(c.z_dim % c.n_heads == 0 && c.value_dim % c.n_heads == 0, "model.z_dim (", c.z_dim,
        ") and model.value_dim (", c.value_dim, ") must be divisible by model.n_heads (", c.n_heads, ")");
  check((c.z_dim / c.n_heads) % 2 == 0, "model: the query/key head width z_dim/n_heads = ", c.z_dim / c.n_heads,
        " must be even for RoPE");
  check(c.cema_ndim > 0, "model.cema_ndim must be positive");
  check(c.chunk_size > 0, "model.chunk_size must be positive");
  check(c.norm_groups > 0 && c.dim % c.norm_groups == 0, "model.dim (", c.dim,
        ") must be divisible by model.norm_groups (", c.norm_groups, ")");
  check(c.ffn_dim() > 0, "model.ffn_hidden_dim must be >= 0");
  check(c.vocab_size > 0, "model.vocab_size must be positive (or 0 to take it from the data)");
  check(c.max_seq_len > 0, "model.max_seq_len must be positive");
}

torch::nn::Linear linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

// Mean number of keys a query attends to when causal attention restarts every `chunk` positions.
double chunked_attended(int64_t seq_len, int64_t chunk) {
  const int64_t full = seq_len / chunk, rest = seq_len % chunk;
  const double sum = full * (chunk * (chunk + 1) / 2.0) + rest * (rest + 1) / 2.0;
  return sum / static_cast<double>(seq_len);
}

}  // namespace

// ---- config ------------------------------------------------------------------------------------------

int64_t MegalodonConfig::parameter_count() const {
  const int64_t D = dim, N = cema_ndim, z = z_dim, v = value_dim, F = ffn_dim();
  const int64_t per_layer = 2 * D                    // timestep norm (weight, bias)
                            + D * (4 * N + 2)        // CEMA: alpha, delta [D,N], gamma [D,N,2], theta, omega [D]
                            + D                      // RMSNorm
                            + (D * z + z)            // wz
                            + 2 * (D * v + v)        // wv, wr
                            + (D * D + D)            // wh1
                            + v * D                  // wh2 (no bias)
                            + 4 * z                  // qk_gamma, qk_beta [2, z]
                            + 2 * D                  // FFN LayerNorm
                            + (swiglu ? 3 : 2) * D * F;
  return n_layers * per_layer + vocab_size * D * (tie_embeddings ? 1 : 2) + 2 * D /*output timestep norm*/;
}

MegalodonConfig MegalodonConfig::preset(const std::string& name) {
  // The official ModelStore layouts (notes §1.7), with Llama-2's 32000-piece vocabulary.
  struct Row {
    const char* name;
    int64_t layers, dim, heads, z, v, ffn;
    bool swiglu;
    int64_t groups;
    double rope_theta;
  };
  static const Row rows[] = {
      {"mega200M", 12, 1024, 1, 256, 2048, 2560, false, 32, 1e4},
      {"mega1.3B", 24, 2048, 2, 512, 4096, 4864, false, 64, 1e4},
      {"mega7.1B", 32, 4096, 4, 1024, 8192, 11264, false, 64, 1e5},
      {"mega7.3B", 32, 4096, 4, 1024, 8192, 8192, true, 64, 1e5},
  };
  for (const Row& r : rows) {
    if (name != r.name) continue;
    MegalodonConfig c;
    c.n_layers = r.layers;
    c.dim = r.dim;
    c.n_heads = r.heads;
    c.z_dim = r.z;
    c.value_dim = r.v;
    c.ffn_hidden_dim = r.ffn;
    c.swiglu = r.swiglu;
    c.norm_groups = r.groups;
    c.rope_theta = r.rope_theta;
    c.cema_ndim = 16;
    c.chunk_size = 2048;
    c.vocab_size = 32000;
    return c;
  }
  fail("unknown Megalodon preset '", name, "'; available: mega200M, mega1.3B, mega7.1B, mega7.3B");
}

// ---- layer -------------------------------------------------------------------------------------------

MegalodonLayerImpl::MegalodonLayerImpl(const MegalodonConfig& c)
    : dim_(c.dim),
      heads_(c.n_heads),
      z_dim_(c.z_dim),
      value_dim_(c.value_dim),
      chunk_(c.chunk_size),
      eps_(c.norm_eps),
      swiglu_(c.swiglu) {
  const int64_t D = c.dim, F = c.ffn_dim();
  timenorm = register_module("timenorm", nn::TimestepNorm(D, c.norm_groups, c.norm_eps));
  cema = register_module("cema", nn::CEMA(D, c.cema_ndim));
  rmsnorm = register_module("rmsnorm", nn::RMSNorm(D, c.norm_eps, /*plus_one=*/true));
  wz = register_module("wz", linear(D, c.z_dim, true));
  wv = register_module("wv", linear(D, c.value_dim, true));
  wr = register_module("wr", linear(D, c.value_dim, true));
  wh1 = register_module("wh1", linear(D, D, true));
  wh2 = register_module("wh2", linear(c.value_dim, D, false));
  qk_gamma = register_parameter("qk_gamma", torch::zeros({2, c.z_dim}));
  qk_beta = register_parameter("qk_beta", torch::zeros({2, c.z_dim}));
  ffn_norm = register_module("ffn_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({D}).eps(c.norm_eps)));
  {
    torch::NoGradGuard no_grad;
    ffn_norm->weight.zero_();  // plus-one: the applied scale is 1 + weight
  }
  w1 = register_module("w1", linear(D, F, false));
  w2 = register_module("w2", linear(F, D, false));
  if (c.swiglu) w3 = register_module("w3", linear(D, F, false));
}

MegalodonLayerImpl::Mixed MegalodonLayerImpl::mix(const at::Tensor& xhat, const at::Tensor& xema) {
  const int64_t B = xhat.size(0), T = xhat.size(1), dz = z_dim_ / heads_, dv = value_dim_ / heads_;
  Mixed out;
  out.xhat = xhat;
  out.m = rmsnorm->forward(xema);
  const at::Tensor z = wz->forward(out.m).view({B, T, heads_, dz});
  // Per-head RMSNorm without affine; times 1/sqrt(dz) this is the paper's Z / ||Z||, so every logit
  // is a cosine similarity at initialisation and attention needs no 1/sqrt(d) scale of its own.
  const at::Tensor zhat = at::rms_norm(z, {dz}, std::nullopt, eps_);
  const double inv_sqrt = 1.0 / std::sqrt(static_cast<double>(dz));
  const at::Tensor gamma = (qk_gamma + 1.0).mul(inv_sqrt).view({2, 1, 1, heads_, dz});
  const at::Tensor beta = qk_beta.view({2, 1, 1, heads_, dz});
  const at::Tensor qk = (zhat.unsqueeze(0) * gamma + beta).to(z.scalar_type());  // [2, B, T, H, dz]
  out.q = qk[0].transpose(1, 2);
  out.k = qk[1].transpose(1, 2);
  out.v = at::silu(wv->forward(xhat)).view({B, T, heads_, dv}).transpose(1, 2);
  out.r = at::silu(wr->forward(out.m));
  return out;
}

at::Tensor MegalodonLayerImpl::finish(const at::Tensor& x, const Mixed& mixed, const at::Tensor& attn) {
  const int64_t B = x.size(0), T = x.size(1);
  const at::Tensor o = attn.transpose(1, 2).reshape({B, T, value_dim_});
  const at::Tensor yhat = x + wh1->forward(mixed.m) + wh2->forward(o * mixed.r);
  const at::Tensor f = at::layer_norm(yhat, {dim_}, ffn_norm->weight + 1.0, ffn_norm->bias, eps_);
  const at::Tensor hidden =
      swiglu_ ? at::silu(w1->forward(f)) * w3->forward(f) : at::silu(w1->forward(f));
  return x + w2->forward(hidden);  // two-hop residual: back to the block input, not to yhat
}

at::Tensor MegalodonLayerImpl::forward(const at::Tensor& x, const nn::RotaryEmbeddingImpl& rope,
                                       const at::Tensor& doc_ids) {
  const at::Tensor xhat = timenorm->forward(x).y;
  const Mixed mixed = mix(xhat, cema->forward(xhat).y);
  const int64_t B = x.size(0), L = x.size(1), c = chunk_;
  nn::MaskSpec spec;
  spec.causal = true;
  if (L <= c) {
    const at::Tensor positions = at::arange(L, x.options().dtype(at::kLong));
    if (doc_ids.defined()) spec.q_doc_ids = spec.kv_doc_ids = doc_ids;
    const at::Tensor attn = nn::attention(rope.apply(mixed.q, positions), rope.apply(mixed.k, positions), mixed.v,
                                          spec, /*scale=*/1.0);
    return finish(x, mixed, attn);
  }
  // Chunks become batch rows: [B, H, L, d] -> [B * nc, H, c, d]. A short last chunk is padded at its
  // end; causality keeps the padding invisible to the real queries, and its outputs are dropped.
  const int64_t nc = (L + c - 1) / c, pad = nc * c - L;
  auto fold = [&](const at::Tensor& t) {
    const at::Tensor padded = pad > 0 ? at::constant_pad_nd(t, {0, 0, 0, pad}) : t;
    return padded.view({B, heads_, nc, c, t.size(3)}).transpose(1, 2).reshape({B * nc, heads_, c, t.size(3)});
  };
  const at::Tensor positions = at::arange(c, x.options().dtype(at::kLong));
  if (doc_ids.defined()) {
    const at::Tensor ids = (pad > 0 ? at::constant_pad_nd(doc_ids, {0, pad}, -1) : doc_ids).reshape({B * nc, c});
    spec.q_doc_ids = spec.kv_doc_ids = ids;
  }
  const at::Tensor attn = nn::attention(rope.apply(fold(mixed.q), positions), rope.apply(fold(mixed.k), positions),
                                        fold(mixed.v), spec, /*scale=*/1.0);  // [B*nc, H, c, dv]
  const at::Tensor unfolded =
      attn.view({B, nc, heads_, c, attn.size(3)}).transpose(1, 2).reshape({B, heads_, nc * c, attn.size(3)});
  return finish(x, mixed, unfolded.narrow(2, 0, L));
}

at::Tensor MegalodonLayerImpl::forward_cached(const at::Tensor& x, const nn::RotaryEmbeddingImpl& rope,
                                              int64_t position, MegalodonLayerCache& cache) {
  const int64_t t = x.size(1), offset = position % chunk_;
  check(offset + t <= chunk_, "Megalodon: a cached call may not cross a chunk boundary (offset ", offset, " + ", t,
        " > chunk ", chunk_, ")");
  // One token (generation): the recurrent forms, a few kernels each; generation is launch-bound.
  at::Tensor xhat, xema;
  if (t == 1) {
    nn::TimestepNormOutput normed = timenorm->step(x.squeeze(1), cache.norm);
    cache.norm = normed.state;
    nn::CEMAOutput ema = cema->step(normed.y, cache.cema);
    cache.cema = ema.state;
    xhat = normed.y.unsqueeze(1);
    xema = ema.y.unsqueeze(1);
  } else {
    nn::TimestepNormOutput normed = timenorm->forward(x, &cache.norm);
    cache.norm = normed.state;
    nn::CEMAOutput ema = cema->forward(normed.y, cache.cema);
    cache.cema = ema.state;
    xhat = normed.y;
    xema = ema.y;
  }
  const Mixed mixed = mix(xhat, xema);
  if (offset == 0) cache.kv->reset();  // a new chunk: the previous chunk's keys are never seen again
  check(cache.kv->length() == offset, "Megalodon: KV cache holds ", cache.kv->length(), " positions at chunk offset ",
        offset);
  const at::Tensor positions = at::arange(offset, offset + t, x.options().dtype(at::kLong));
  const auto [keys, values] = cache.kv->append(rope.apply(mixed.k, positions), mixed.v);
  nn::MaskSpec spec;
  spec.causal = true;
  spec.q_offset = offset;
  const at::Tensor attn = nn::attention(rope.apply(mixed.q, positions), keys, values, spec, /*scale=*/1.0);
  return finish(x, mixed, attn);
}

// ---- model -------------------------------------------------------------------------------------------

MegalodonModel::MegalodonModel(MegalodonConfig config) : config_(std::move(config)) {
  validate(config_);
  tok_embeddings = register_module("tok_embeddings", torch::nn::Embedding(config_.vocab_size, config_.dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.n_layers; ++i) layers->push_back(MegalodonLayer(config_));
  norm = register_module("norm", nn::TimestepNorm(config_.dim, config_.norm_groups, config_.norm_eps));
  if (!config_.tie_embeddings) output = register_module("output", linear(config_.dim, config_.vocab_size, false));
  rope = register_module("rope", nn::RotaryEmbedding(config_.z_dim / config_.n_heads, config_.chunk_size,
                                                     config_.rope_theta, nn::RopeLayout::HalfSplit));
  init_weights();
}

void MegalodonModel::init_weights() {
  torch::NoGradGuard no_grad;
  // Official init: linear weights Kaiming-normal with a = sqrt(5), i.e. std 1/sqrt(3 fan_in); biases
  // 0; embedding and output head truncated normal with std 1/sqrt(D). Norms start at 0 (plus-one)
  // and CEMA initialises itself (its own reset_parameters).
  for (size_t i = 0; i < layers->size(); ++i) {
    for (const auto& child : layers[i]->modules(/*include_self=*/false)) {
      auto* lin = child->as<torch::nn::LinearImpl>();
      if (!lin) continue;
      lin->weight.normal_(0.0, 1.0 / std::sqrt(3.0 * static_cast<double>(lin->weight.size(1))));
      if (lin->bias.defined()) lin->bias.zero_();
    }
  }
  const double std = 1.0 / std::sqrt(static_cast<double>(config_.dim));
  nn::truncated_normal_(tok_embeddings->weight, std, /*bound=*/3.0);
  if (output) nn::truncated_normal_(output->weight, std, /*bound=*/3.0);
}

YAML::Node MegalodonModel::config_yaml() const { return config::to_yaml(config_); }

FlopCount MegalodonModel::flops(int64_t seq_len) const {
  const auto& c = config_;
  const int64_t D = c.dim, z = c.z_dim, v = c.value_dim, F = c.ffn_dim();
  const int64_t per_layer = 2 * D * v /*wv, wr*/ + D * z /*wz*/ + D * D /*wh1*/ + v * D /*wh2*/ +
                            (c.swiglu ? 3 : 2) * D * F;
  FlopCount out = transformer_flops(c.n_layers * per_layer + c.vocab_size * D, c.n_layers, 0, 0.0);
  // Attention inside chunks: Q K^T costs z and A V costs v per attended key (notes §1.10).
  const double attended = chunked_attended(std::max<int64_t>(seq_len, 1), c.chunk_size);
  const double attention = 2.0 * attended * static_cast<double>(z + v) * c.n_layers;
  // CEMA as an FFT convolution: three real FFTs of n = 2 * next_pow2(L) points per channel and sequence
  // (about 2.5 n log2 n FLOPs each) plus the pointwise complex product, spread over the L tokens. Under
  // 1% of a 7B layer, but several % of a small one, so it is counted.
  int64_t n_fft = 1;
  while (n_fft < seq_len) n_fft <<= 1;
  const double n = 2.0 * static_cast<double>(n_fft);
  const double cema = (7.5 * std::log2(n) + 3.0) * n / std::max<int64_t>(seq_len, 1) * D * c.n_layers;
  out.inference_per_token += attention + cema;
  out.train_per_token = 3.0 * out.inference_per_token;
  return out;
}

at::Tensor MegalodonModel::head(const at::Tensor& h) {
  return config_.tie_embeddings ? at::linear(h, tok_embeddings->weight) : output->forward(h);
}

Outputs MegalodonModel::forward(const Batch& batch) {
  require_field(batch.tokens, "tokens", arch());
  check(batch.seq_len() <= config_.max_seq_len, "sequence length ", batch.seq_len(), " exceeds model.max_seq_len ",
        config_.max_seq_len);
  check(!batch.positions.defined(),
        "megalodon: Batch.positions is not supported (RoPE positions restart in every attention chunk)");
  at::Tensor h = tok_embeddings->forward(batch.tokens);
  for (size_t i = 0; i < layers->size(); ++i) h = layers->ptr<MegalodonLayerImpl>(i)->forward(h, *rope, batch.doc_ids);
  Outputs out;
  out.logits = head(norm->forward(h).y);
  return out;
}

std::unique_ptr<DecodeState> MegalodonModel::start_decoding(int64_t batch_size, int64_t max_len) {
  check(batch_size > 0, "megalodon: batch size must be positive");
  check(max_len <= config_.max_seq_len, "generation length ", max_len, " exceeds model.max_seq_len ",
        config_.max_seq_len);
  auto state = std::make_unique<MegalodonDecodeState>();
  const at::Tensor w = tok_embeddings->weight;
  const auto dtype = nn::kv_cache_dtype(w);
  const int64_t H = config_.n_heads;
  for (size_t i = 0; i < layers->size(); ++i) {
    MegalodonLayerCache cache;
    cache.norm = layers->ptr<MegalodonLayerImpl>(i)->timenorm->initial_state(batch_size, w.device());
    // Keys/values of one chunk at most: the cache never grows with the sequence.
    cache.kv = std::make_unique<nn::KVCache>(batch_size, H, config_.chunk_size, config_.z_dim / H, dtype, w.device(),
                                             config_.value_dim / H);
    state->layers.push_back(std::move(cache));
  }
  state->output_norm = norm->initial_state(batch_size, w.device());
  return state;
}

at::Tensor MegalodonModel::step(const at::Tensor& tokens, DecodeState& base) {
  auto& state = dynamic_cast<MegalodonDecodeState&>(base);
  check(tokens.dim() == 2 && tokens.size(1) > 0, "megalodon.step: expected tokens [B, t>0], got ", tokens.sizes());
  const int64_t t = tokens.size(1), c = config_.chunk_size;
  std::vector<at::Tensor> logits;
  for (int64_t done = 0; done < t;) {
    // Never cross a chunk boundary within one call to the layers: the KV cache restarts there.
    const int64_t seg = std::min(t - done, c - state.position % c);
    at::Tensor h = tok_embeddings->forward(tokens.narrow(1, done, seg));
    for (size_t i = 0; i < layers->size(); ++i)
      h = layers->ptr<MegalodonLayerImpl>(i)->forward_cached(h, *rope, state.position, state.layers[i]);
    nn::TimestepNormOutput normed =
        seg == 1 ? norm->step(h.squeeze(1), state.output_norm) : norm->forward(h, &state.output_norm);
    state.output_norm = normed.state;
    logits.push_back(head(seg == 1 ? normed.y.unsqueeze(1) : normed.y));
    state.position += seg;
    done += seg;
  }
  return logits.size() == 1 ? logits[0] : at::cat(logits, 1);
}

}  // namespace tessera
