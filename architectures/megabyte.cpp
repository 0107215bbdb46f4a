#include "architectures/megabyte.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "core/config.h"
#include "core/error.h"
#include "core/nn/init.h"

namespace tessera {

namespace {

struct MegabyteDecodeState : DecodeState {
  int64_t batch = 0, max_len = 0;
  std::vector<nn::KVCache> global_caches;  // over patches, capacity max_len / P + 1
  std::vector<nn::KVCache> local_caches;   // over the current patch's slots, capacity P
  at::Tensor patch_bytes;                  // [B, P] stream bytes of the patch being filled (position % P valid)
  at::Tensor local_context;                // [B, P, D_L] w^GL chunks of the patch holding slot `position`
  bool started = false;                    // slot 0 (pad input) computed and cached
};

void validate(const MegabyteConfig& c) {
  check(c.patch_size > 0, "model.patch_size must be positive, got ", c.patch_size);
  check(c.global_dim > 0 && c.global_heads > 0 && c.local_dim > 0 && c.local_heads > 0,
        "model: global_dim, global_heads, local_dim and local_heads must be positive");
  check(c.global_layers >= 0 && c.local_layers >= 0, "model: global_layers and local_layers must be >= 0");
  check(c.global_dim % c.patch_size == 0, "model.global_dim (", c.global_dim, ") must be a multiple of model.patch_size (",
        c.patch_size, "): the global model concatenates patch_size byte embeddings of width global_dim/patch_size");
  check(c.global_dim % c.global_heads == 0, "model.global_dim (", c.global_dim, ") must be divisible by model.global_heads (",
        c.global_heads, ")");
  check(c.local_dim % c.local_heads == 0, "model.local_dim (", c.local_dim, ") must be divisible by model.local_heads (",
        c.local_heads, ")");
  if (c.pos_embedding == "rope") {
    check((c.global_dim / c.global_heads) % 2 == 0 && (c.local_dim / c.local_heads) % 2 == 0,
          "model: head dims (global ", c.global_dim / c.global_heads, ", local ", c.local_dim / c.local_heads,
          ") must be even for RoPE");
  }
  check(c.vocab_size > 0, "model.vocab_size must be positive (or 0 to take it from the data)");
  check(c.max_seq_len > 0, "model.max_seq_len must be positive");
  check(c.init_std >= 0, "model.init_std must be >= 0");
}

bool uses_rope(const MegabyteConfig& c) { return c.pos_embedding == "rope"; }

// DenseBlock takes its sizes from a DenseConfig; only dim, heads and norm_eps matter to it.
DenseConfig block_config(int64_t dim, int64_t heads, double norm_eps) {
  DenseConfig b;
  b.dim = dim;
  b.n_heads = heads;
  b.n_kv_heads = 0;
  b.norm_eps = norm_eps;
  return b;
}


}  // namespace

MegabyteGlobalImpl::MegabyteGlobalImpl(const MegabyteConfig& c, int64_t hidden_dim) {
  const int64_t dg = c.global_byte_dim();
  tok_embeddings = register_module("tok_embeddings", torch::nn::Embedding(c.vocab_size, dg));
  if (!uses_rope(c)) pos_embeddings = register_module("pos_embeddings", torch::nn::Embedding(c.max_seq_len, dg));
  pad = register_parameter("pad", at::zeros({c.patch_size, dg}));
  layers = register_module("layers", torch::nn::ModuleList());
  const DenseConfig block = block_config(c.global_dim, c.global_heads, c.norm_eps);
  for (int64_t i = 0; i < c.global_layers; ++i) layers->push_back(DenseBlock(block, hidden_dim));
  norm = register_module("norm", nn::RMSNorm(c.global_dim, c.norm_eps));
  if (uses_rope(c))
    // A forward over max_seq_len bytes has floor(max_seq_len / P) + 1 patches (slots 0..T).
    rope = register_module("rope", nn::RotaryEmbedding(c.global_dim / c.global_heads, c.max_seq_len / c.patch_size + 1,
                                                       c.rope_theta, nn::parse_rope_layout(c.rope_layout)));
}

MegabyteLocalImpl::MegabyteLocalImpl(const MegabyteConfig& c, int64_t hidden_dim) {
  tok_embeddings = register_module("tok_embeddings", torch::nn::Embedding(c.vocab_size, c.local_dim));
  pad = register_parameter("pad", at::zeros({c.local_dim}));
  layers = register_module("layers", torch::nn::ModuleList());
  const DenseConfig block = block_config(c.local_dim, c.local_heads, c.norm_eps);
  for (int64_t i = 0; i < c.local_layers; ++i) layers->push_back(DenseBlock(block, hidden_dim));
  norm = register_module("norm", nn::RMSNorm(c.local_dim, c.norm_eps));
  if (!c.tie_embeddings)
    output = register_module("output",
                             torch::nn::Linear(torch::nn::LinearOptions(c.local_dim, c.vocab_size).bias(false)));
  if (uses_rope(c))
    rope = register_module("rope", nn::RotaryEmbedding(c.local_dim / c.local_heads, c.patch_size, c.rope_theta,
                                                       nn::parse_rope_layout(c.rope_layout)));
}

MegabyteModel::MegabyteModel(MegabyteConfig config) : config_(std::move(config)) {
  validate(config_);
  global_hidden_ = nn::swiglu_hidden_dim(config_.global_dim, config_.ffn_dim_multiplier, config_.multiple_of);
  local_hidden_ = nn::swiglu_hidden_dim(config_.local_dim, config_.ffn_dim_multiplier, config_.multiple_of);
  global_model = register_module("global_model", MegabyteGlobal(config_, global_hidden_));
  global_to_local = register_module(
      "global_to_local",
      torch::nn::Linear(torch::nn::LinearOptions(config_.global_byte_dim(), config_.local_dim).bias(false)));
  local_model = register_module("local_model", MegabyteLocal(config_, local_hidden_));
  init_weights();
}

void MegabyteModel::init_weights() {
  torch::NoGradGuard no_grad;
  // The paper's init for every weight, embedding and pad (App. A.1); norm scales stay at their init.
  for (auto& item : named_parameters()) {
    if (item.key().find("norm") != std::string::npos) continue;
    nn::truncated_normal_(item.value(), config_.init_std, /*bound=*/2.0);
  }
}

YAML::Node MegabyteModel::config_yaml() const { return config::to_yaml(config_); }

FlopCount MegabyteModel::flops(int64_t seq_len) const {
  const auto& c = config_;
  const int64_t P = c.patch_size, Dw = c.global_dim, Dl = c.local_dim;
  const int64_t global_matmul = c.global_layers * (4 * Dw * Dw /*wq,wk,wv,wo*/ + 3 * Dw * global_hidden_);
  const int64_t local_matmul = c.local_layers * (4 * Dl * Dl + 3 * Dl * local_hidden_) +
                               c.global_byte_dim() * Dl /*w^GL*/ + c.vocab_size * Dl /*output head*/;
  const int64_t patches = std::max<int64_t>(1, (seq_len + P - 1) / P);
  // Global: once per patch over causal patch attention; local: once per byte, causal inside the patch.
  const FlopCount g = transformer_flops(global_matmul, c.global_layers, Dw, causal_attended(patches));
  const FlopCount l = transformer_flops(local_matmul, c.local_layers, Dl, causal_attended(P));
  FlopCount out;
  out.matmul_params = global_matmul / P + local_matmul;  // exact: Dw is a multiple of P
  out.inference_per_token = g.inference_per_token / static_cast<double>(P) + l.inference_per_token;
  out.train_per_token = g.train_per_token / static_cast<double>(P) + l.train_per_token;
  return out;
}

at::Tensor MegabyteModel::embed_global(const at::Tensor& bytes, const at::Tensor& positions) {
  // eq. 1: h^embed_t = E^global-embed[z_t] + E^pos_t, then P consecutive bytes side by side.
  at::Tensor e = global_model->tok_embeddings->forward(bytes);  // [B, n·P, D_G]
  if (global_model->pos_embeddings) e = e + global_model->pos_embeddings->forward(positions);
  return e.reshape({bytes.size(0), bytes.size(1) / config_.patch_size, config_.global_dim});
}

at::Tensor MegabyteModel::run_global(const at::Tensor& global_in, const at::Tensor& positions,
                                     const nn::MaskSpec& spec, std::vector<nn::KVCache>* caches) {
  const nn::RotaryEmbeddingImpl* rope = global_model->rope ? global_model->rope.get() : nullptr;
  at::Tensor h = run_dense_blocks(global_model->layers, rope, global_in, positions, spec, caches);
  h = global_model->norm->forward(h);  // [B, K, P·D_G]
  // eq. 4: chunk p of patch k's output (width D_G) goes through w^GL to the local width.
  const int64_t B = h.size(0), K = h.size(1);
  return global_to_local->forward(h.reshape({B, K, config_.patch_size, config_.global_byte_dim()}));
}

at::Tensor MegabyteModel::run_local(const at::Tensor& local_in, const nn::MaskSpec& spec,
                                    std::vector<nn::KVCache>* caches) {
  // RoPE positions are the offsets in the patch: 0..P-1, or continuing the cache.
  const nn::RotaryEmbeddingImpl* rope = local_model->rope ? local_model->rope.get() : nullptr;
  return local_model->norm->forward(run_dense_blocks(local_model->layers, rope, local_in, at::Tensor(), spec, caches));
}

at::Tensor MegabyteModel::head(const at::Tensor& h) {
  // eq. 6: logits through E^local-embed (tied), or a separate output projection.
  return config_.tie_embeddings ? at::linear(h, local_model->tok_embeddings->weight) : local_model->output->forward(h);
}

LanguageModel::PatchCount MegabyteModel::count_patches(const Batch& batch) {
  require_field(batch.tokens, "tokens", arch());
  const int64_t P = config_.patch_size, T = batch.seq_len();
  return {batch.tokens.numel(), batch.batch_size() * ((T + P - 1) / P)};
}

Outputs MegabyteModel::forward(const Batch& batch) {
  require_field(batch.tokens, "tokens", arch());
  const at::Tensor& x = batch.tokens;
  check(x.dim() == 2, "megabyte: tokens must be [B, T], got ", x.sizes());
  const int64_t B = x.size(0), T = x.size(1), P = config_.patch_size;
  const int64_t Dg = config_.global_byte_dim(), Dl = config_.local_dim;
  check(T >= 1, "megabyte: empty sequence");
  check(T <= config_.max_seq_len, "sequence length ", T, " exceeds model.max_seq_len ", config_.max_seq_len);
  const auto long_opts = x.options().dtype(at::kLong);
  // Slots 0..T (logits[t] is slot t + 1) fill K patches; the last one is padded.
  const int64_t K = T / P + 1;
  const int64_t Tg = (K - 1) * P;  // stream bytes that enter the global model: every whole patch but the last

  at::Tensor positions;  // byte positions; undefined: 0..T-1
  if (batch.positions.defined()) {
    positions = batch.positions.to(at::kLong);
    check((positions.dim() == 1 && positions.size(0) == T) ||
              (positions.dim() == 2 && positions.size(0) == B && positions.size(1) == T),
          "megabyte: positions must be [T] or [B, T] with B=", B, ", T=", T, "; got ", positions.sizes());
    const auto [lo_t, hi_t] = at::aminmax(positions);
    const int64_t lo = lo_t.item<int64_t>(), hi = hi_t.item<int64_t>();
    check(lo >= 0 && hi < config_.max_seq_len, "megabyte: positions must lie in [0, ", config_.max_seq_len,
          "), got [", lo, ", ", hi, "]");
  }

  // Global input (eq. 2): the pad for patch 0, then patch k - 1's bytes for patch k.
  const at::Tensor pad_g = global_model->pad.reshape({1, 1, P * Dg}).expand({B, 1, P * Dg});
  at::Tensor global_in = pad_g;
  if (K > 1) {
    const at::Tensor pos = positions.defined() ? positions.narrow(-1, 0, Tg) : at::arange(Tg, long_opts);
    global_in = at::cat({pad_g, embed_global(x.narrow(1, 0, Tg), pos)}, 1);
  }
  nn::MaskSpec global_spec;
  global_spec.causal = true;
  at::Tensor patch_positions;  // RoPE positions of the patches; undefined: 0..K-1
  if (global_model->rope && positions.defined()) {
    // Slot j sits at z_j's position (slot T one past the last token); a patch at its first slot's, / P.
    const at::Tensor slot_pos = at::cat({positions, positions.narrow(-1, T - 1, 1) + 1}, -1);
    patch_positions = slot_pos.index_select(-1, at::arange(0, T + 1, P, long_opts)).div(P, "floor");
  }

  // Packed documents. Slot j predicts z_j and belongs to z_j's document (slot T and the padding to the
  // last token's): a document's first byte is predicted with no context, as if the document stood alone.
  at::Tensor slot_doc;  // [B, K, P]
  at::Tensor own;       // [B, K, P]: the slot shares its patch's document (that of the patch's first slot)
  if (batch.doc_ids.defined()) {
    const at::Tensor doc = batch.doc_ids.to(at::kLong);
    check(doc.dim() == 2 && doc.size(0) == B && doc.size(1) == T, "megabyte: doc_ids must be [", B, ", ", T,
          "], got ", doc.sizes());
    slot_doc = at::cat({doc, doc.narrow(1, T - 1, 1).expand({B, K * P - T})}, 1).view({B, K, P});
    const at::Tensor patch_doc = slot_doc.select(2, 0);  // [B, K]
    own = slot_doc.eq(patch_doc.unsqueeze(2));
    // Patch k's global input keeps only the bytes of patch k's document; the others read the pad's rows.
    // Patches attend only to patches of their own document.
    if (K > 1) {
      const at::Tensor previous_doc = slot_doc.narrow(1, 0, K - 1);  // documents of the bytes of patches 0..K-2
      const at::Tensor keep = at::cat({at::zeros({B, 1, P}, own.options()),
                                       previous_doc.eq(patch_doc.narrow(1, 1, K - 1).unsqueeze(2))}, 1);
      const at::Tensor pad_rows = global_model->pad.reshape({1, 1, P, Dg});
      global_in = at::where(keep.unsqueeze(-1), global_in.reshape({B, K, P, Dg}), pad_rows).reshape({B, K, P * Dg});
    }
    global_spec.q_doc_ids = patch_doc;
    global_spec.kv_doc_ids = patch_doc;
  }
  at::Tensor context = run_global(global_in, patch_positions, global_spec, nullptr);  // [B, K, P, D_L]
  if (own.defined()) {
    // A document starting inside a patch takes, for its slots there, the global output of a document's
    // first patch: the global model over the pad alone (one position: independent of position).
    const at::Tensor fresh =
        run_global(global_model->pad.reshape({1, 1, P * Dg}), at::Tensor(), nn::MaskSpec(), nullptr);
    context = at::where(own.unsqueeze(-1), context, fresh);
  }

  // Local input (eq. 4): slot (k, p) reads z_{kP+p-1} for p > 0 and the local pad at p = 0 (and at a
  // document's first slot).
  const at::Tensor z = at::cat({x.to(at::kLong), at::zeros({B, K * P - T}, long_opts)}, 1);  // padded stream
  const at::Tensor previous = z.view({B, K, P}).narrow(2, 0, P - 1);
  const at::Tensor pad_l = local_model->pad.reshape({1, 1, 1, Dl});
  at::Tensor local_in = at::cat({pad_l.expand({B, K, 1, Dl}), local_model->tok_embeddings->forward(previous)}, 2);
  nn::MaskSpec local_spec;
  local_spec.causal = true;
  if (slot_doc.defined()) {
    const at::Tensor flat = slot_doc.view({B, K * P});
    const at::Tensor doc_start = at::cat({at::ones({B, 1}, own.options()),
                                          flat.narrow(1, 1, K * P - 1).ne(flat.narrow(1, 0, K * P - 1))}, 1);
    local_in = at::where(doc_start.view({B, K, P, 1}), pad_l, local_in);
    local_spec.q_doc_ids = slot_doc.reshape({B * K, P});
    local_spec.kv_doc_ids = local_spec.q_doc_ids;
  }
  local_in = local_in + context;
  const at::Tensor h = run_local(local_in.reshape({B * K, P, Dl}), local_spec, nullptr);
  Outputs out;
  out.logits = head(h).reshape({B, K * P, config_.vocab_size}).narrow(1, 1, T);
  return out;
}

std::unique_ptr<DecodeState> MegabyteModel::start_decoding(int64_t batch_size, int64_t max_len) {
  check(batch_size > 0, "megabyte: batch size must be positive, got ", batch_size);
  check(max_len > 0 && max_len <= config_.max_seq_len, "generation length ", max_len,
        " must be in [1, model.max_seq_len = ", config_.max_seq_len, "]");
  auto state = std::make_unique<MegabyteDecodeState>();
  state->batch = batch_size;
  state->max_len = max_len;
  const at::Tensor w = local_model->tok_embeddings->weight;
  const auto dtype = nn::kv_cache_dtype(w);
  const int64_t P = config_.patch_size;
  for (int64_t i = 0; i < config_.global_layers; ++i)
    state->global_caches.emplace_back(batch_size, config_.global_heads, max_len / P + 1,
                                      config_.global_dim / config_.global_heads, dtype, w.device());
  for (int64_t i = 0; i < config_.local_layers; ++i)
    state->local_caches.emplace_back(batch_size, config_.local_heads, P, config_.local_dim / config_.local_heads,
                                     dtype, w.device());
  state->patch_bytes = at::zeros({batch_size, P}, at::TensorOptions().dtype(at::kLong).device(w.device()));
  return state;
}

at::Tensor MegabyteModel::step(const at::Tensor& tokens_in, DecodeState& state) {
  auto& s = dynamic_cast<MegabyteDecodeState&>(state);
  check(tokens_in.dim() == 2 && tokens_in.size(0) == s.batch, "megabyte: step expects tokens [", s.batch,
        ", t], got ", tokens_in.sizes());
  const at::Tensor tokens = tokens_in.to(at::kLong);
  const int64_t B = s.batch, t = tokens.size(1), n0 = s.position, P = config_.patch_size, Dl = config_.local_dim;
  check(n0 + t <= s.max_len, "megabyte: decoding past max_len ", s.max_len, " given to start_decoding (",
        n0, " tokens consumed, ", t, " more)");
  if (t == 0) return at::zeros({B, 0, config_.vocab_size}, local_model->tok_embeddings->weight.options());
  const auto long_opts = tokens.options();
  nn::MaskSpec causal;
  causal.causal = true;
  const at::Tensor pad_l = local_model->pad.reshape({1, 1, Dl}).expand({B, 1, Dl});

  // Slot j is computed when token j - 1 arrives; slot 0 (patch 0 from the global pad, local pad) first.
  if (!s.started) {
    const int64_t Dg = config_.global_byte_dim();
    const at::Tensor pad_g = global_model->pad.reshape({1, 1, P * Dg}).expand({B, 1, P * Dg});
    s.local_context = run_global(pad_g, at::Tensor(), causal, &s.global_caches).select(1, 0);
    for (auto& c : s.local_caches) c.reset();
    run_local(pad_l + s.local_context.narrow(1, 0, 1), causal, &s.local_caches);
    s.started = true;
  }

  // The stream from the first byte of the patch being filled: [base, n0 + t).
  const int64_t base = n0 - n0 % P;
  const at::Tensor stream = n0 % P ? at::cat({s.patch_bytes.narrow(1, 0, n0 % P), tokens}, 1) : tokens;
  // Patches k whose first slot kP lies in [n0 + 1, n0 + t] open now, one global pass for all of them;
  // patch k's input is stream patch k - 1, complete by now.
  const int64_t k_first = n0 / P + 1, k_last = (n0 + t) / P;
  at::Tensor context;  // [B, k_last - k_first + 1, P, D_L]
  if (k_last >= k_first) {
    const int64_t begin = (k_first - 1) * P, n = (k_last - k_first + 1) * P;
    context = run_global(embed_global(stream.narrow(1, begin - base, n), at::arange(begin, begin + n, long_opts)),
                         at::Tensor(), causal, &s.global_caches);
  }

  // Local model, one pass per patch touched: slot j reads z_{j-1} = tokens[j - 1 - n0] (pad at p = 0).
  std::vector<at::Tensor> logits;
  for (int64_t j = n0 + 1; j <= n0 + t;) {
    const int64_t p0 = j % P, len = std::min(n0 + t - j + 1, P - p0);
    if (p0 == 0) {
      s.local_context = context.select(1, j / P - k_first);
      for (auto& c : s.local_caches) c.reset();
    }
    at::Tensor in = local_model->tok_embeddings->forward(tokens.narrow(1, j - 1 - n0, len));
    if (p0 == 0) in = at::cat({pad_l, in.narrow(1, 1, len - 1)}, 1);
    in = in + s.local_context.narrow(1, p0, len);
    logits.push_back(head(run_local(in, causal, &s.local_caches)));
    j += len;
  }

  const int64_t n = n0 + t;
  if (n % P) s.patch_bytes.narrow(1, 0, n % P).copy_(stream.narrow(1, n - n % P - base, n % P));
  s.position = n;
  return logits.size() == 1 ? logits[0] : at::cat(logits, 1);
}

}  // namespace tessera
