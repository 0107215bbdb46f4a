#include "core/nn/attention.h"

#include <limits>

#include <ATen/SDPBackend.h>
#include <ATen/autocast_mode.h>

#include "core/error.h"
#include "core/kernels/fused.h"
#include "core/nn/fused_linear.h"

namespace tessera::nn {
namespace {

void check_doc_ids(const torch::Tensor& ids, const char* name, int64_t batch, int64_t len) {
  check(at::isIntegralType(ids.scalar_type(), /*includeBool=*/false), "attention mask: ", name,
        " must be an integer tensor, got ", ids.scalar_type());
  check(ids.dim() == 2 && (ids.size(0) == batch || ids.size(0) == 1) && ids.size(1) == len,
        "attention mask: ", name, " must be [", batch, " or 1, ", len, "], got ", ids.sizes());
}

void check_extra(const torch::Tensor& extra, int64_t batch, int64_t q_len, int64_t kv_len) {
  check(extra.scalar_type() == at::kBool, "attention mask: extra must be bool (true = may attend), got ",
        extra.scalar_type());
  check(extra.dim() == 2 || extra.dim() == 4, "attention mask: extra must be [Tq, Tk] or [B, H, Tq, Tk] ",
        "(unsqueeze a [B, Tq, Tk] mask at dim 1), got ", extra.sizes());
  const int64_t tq = extra.size(-2), tk = extra.size(-1);
  const bool ok = (tq == 1 || tq == q_len) && (tk == 1 || tk == kv_len) &&
                  (extra.dim() == 2 || extra.size(0) == 1 || extra.size(0) == batch);
  check(ok, "attention mask: extra ", extra.sizes(), " does not broadcast to [", batch, ", H, ", q_len,
        ", ", kv_len, "]");
}

// Whether some query row can end up with no key at all. Position constraints alone always leave the
// query's own position visible when it is a valid key index; documents and extra masks can empty a row.
bool rows_may_be_empty(const MaskSpec& spec, int64_t q_len, int64_t kv_len) {
  return spec.q_doc_ids.defined() || spec.extra.defined() || spec.q_offset < 0 ||
         spec.q_offset + q_len > kv_len;
}

torch::Tensor project_heads(const torch::nn::Linear& proj, const torch::Tensor& x, int64_t heads, int64_t head_dim,
                            bool use_kernels = false) {
  // [B, T, H*D] -> [B, H, T, D]; a strided view, which SDPA takes as is (last dim contiguous).
  return project(x, {proj.get()}, use_kernels).view({x.size(0), x.size(1), heads, head_dim}).transpose(1, 2);
}

torch::Tensor merge_heads(const torch::Tensor& y) {
  // [B, H, T, D] -> [B, T, H*D]
  return y.transpose(1, 2).reshape({y.size(0), y.size(2), y.size(1) * y.size(3)});
}

}  // namespace

torch::Tensor build_attention_mask(const MaskSpec& spec, int64_t batch, int64_t q_len, int64_t kv_len,
                                   torch::Device device, bool* use_is_causal) {
  if (use_is_causal) *use_is_causal = false;
  check(batch > 0 && q_len >= 0 && kv_len >= 0, "attention mask: bad sizes batch=", batch,
        " q_len=", q_len, " kv_len=", kv_len);
  check(spec.window >= 0, "attention mask: window must be >= 0 (0 = none), got ", spec.window);
  const bool has_docs = spec.q_doc_ids.defined() || spec.kv_doc_ids.defined();
  if (has_docs) {
    check(spec.q_doc_ids.defined() && spec.kv_doc_ids.defined(),
          "attention mask: q_doc_ids and kv_doc_ids must be given together");
    check_doc_ids(spec.q_doc_ids, "q_doc_ids", batch, q_len);
    check_doc_ids(spec.kv_doc_ids, "kv_doc_ids", batch, kv_len);
  }
  const bool has_extra = spec.extra.defined();
  if (has_extra) check_extra(spec.extra, batch, q_len, kv_len);
  if (q_len == 0 || kv_len == 0) return {};

  // Query positions run over [first, last]. Each positional constraint is materialised only when it
  // excludes some key, so decoding one token at the end of the cache needs no mask at all.
  const int64_t first = spec.q_offset, last = spec.q_offset + q_len - 1, w = spec.window;
  const bool need_causal = spec.causal && first < kv_len - 1;          // j <= p cuts some key
  const bool need_window_lo = w > 0 && last - w >= 0;                  // p - w < j cuts key 0
  const bool need_window_hi = w > 0 && !spec.causal && first + w <= kv_len - 1;  // j < p + w
  const bool positional = need_causal || need_window_lo || need_window_hi;
  if (!positional && !has_docs && !has_extra) return {};
  if (use_is_causal && need_causal && !need_window_lo && !need_window_hi && !has_docs && !has_extra &&
      q_len == kv_len && spec.q_offset == 0) {
    *use_is_causal = true;  // SDPA's kernels skip masked blocks without reading a mask
    return {};
  }

  torch::Tensor mask;  // bool, broadcastable to [B, H, Tq, Tk]
  if (positional) {
    const auto opts = torch::TensorOptions().dtype(at::kLong).device(device);
    const torch::Tensor p = at::arange(first, last + 1, opts).unsqueeze(1);  // [Tq, 1]
    const torch::Tensor j = at::arange(kv_len, opts).unsqueeze(0);           // [1, Tk]
    auto both = [&mask](torch::Tensor m) { mask = mask.defined() ? mask.logical_and_(m) : m; };
    if (need_causal) both(j <= p);
    if (need_window_lo) both(j > p - w);
    if (need_window_hi) both(j < p + w);
    mask = mask.view({1, 1, q_len, kv_len});
  }
  if (has_docs) {
    const torch::Tensor q_docs = spec.q_doc_ids.to(device), kv_docs = spec.kv_doc_ids.to(device);
    const torch::Tensor same = (q_docs.unsqueeze(2) == kv_docs.unsqueeze(1)).unsqueeze(1);  // [B,1,Tq,Tk]
    mask = mask.defined() ? mask.logical_and(same) : same;
  }
  if (has_extra) {
    torch::Tensor extra = spec.extra.to(device);
    if (extra.dim() == 2) extra = extra.view({1, 1, extra.size(0), extra.size(1)});
    mask = mask.defined() ? mask.logical_and(extra)
                          : extra.expand({extra.size(0), extra.size(1), q_len, kv_len});
  }
  return mask;
}

namespace {
// softmax(q k^T · scale, masked) v with two matmuls and a float32 softmax; mask bool (true = attend),
// broadcastable to [B, H, Tq, Tk], or undefined for none. A row with no key gives NaN, as 0/0 would.
torch::Tensor attend_explicit(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& mask, std::optional<double> scale) {
  const int64_t Hq = q.size(1), Hkv = k.size(1);
  const torch::Tensor keys = Hq == Hkv ? k : k.repeat_interleave(Hq / Hkv, 1);
  const torch::Tensor values = Hq == Hkv ? v : v.repeat_interleave(Hq / Hkv, 1);
  const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  torch::Tensor scores = at::matmul(s == 1.0 ? q : q * s, keys.transpose(-2, -1));
  if (mask.defined()) scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
  const torch::Tensor probs = at::softmax(scores, -1, at::kFloat).to(values.scalar_type());
  return at::matmul(probs, values);
}
}  // namespace

bool uses_block_local(const MaskSpec& spec, int64_t q_len, int64_t kv_len) {
  return spec.causal && spec.window > 0 && spec.q_offset == 0 && !spec.extra.defined() && q_len == kv_len &&
         q_len >= kBlockLocalMinWindows * spec.window;
}

namespace {

// [B, H, nb·W, D] -> [B·nb, H, W, D]: block i of sequence b becomes batch entry b·nb + i.
torch::Tensor to_blocks(const torch::Tensor& x, int64_t nb, int64_t W) {
  const int64_t B = x.size(0), H = x.size(1), D = x.size(3);
  return x.view({B, H, nb, W, D}).permute({0, 2, 1, 3, 4}).reshape({B * nb, H, W, D});
}

// Block-local causal window attention (uses_block_local): block i's queries (positions iW + r) see
// keys (i-1)W + c for c in (r, r + W] of [previous block, own block] — exactly the last W keys, self
// included — with the previous block of block 0 masked out, and document ids applied per block.
torch::Tensor attention_block_local(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    const MaskSpec& spec, std::optional<double> scale) {
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), W = spec.window;
  const int64_t nb = (T + W - 1) / W, padded = nb * W;
  auto pad = [&](const torch::Tensor& x) {
    return padded == T ? x : at::constant_pad_nd(x, {0, 0, 0, padded - T});
  };
  // Keys and values of [previous block, own block] for every block: [B·nb, Hkv, 2W, D].
  auto with_previous = [&](const torch::Tensor& x) {
    const torch::Tensor own = pad(x);
    const torch::Tensor previous = at::constant_pad_nd(own, {0, 0, W, 0}).narrow(2, 0, padded);
    return at::cat({to_blocks(previous, nb, W), to_blocks(own, nb, W)}, 2);
  };
  const torch::Tensor qb = to_blocks(pad(q), nb, W);
  const torch::Tensor kb = with_previous(k), vb = with_previous(v);

  const auto long_opts = torch::TensorOptions().dtype(at::kLong).device(q.device());
  const torch::Tensor r = at::arange(W, long_opts).view({W, 1}), c = at::arange(2 * W, long_opts).view({1, 2 * W});
  torch::Tensor allowed = c.gt(r).logical_and(c.le(r + W)).view({1, W, 2 * W}).repeat({nb, 1, 1});  // [nb, W, 2W]
  allowed.select(0, 0).narrow(1, 0, W).fill_(false);  // block 0 has no previous block
  torch::Tensor mask;
  if (spec.q_doc_ids.defined()) {
    check(spec.kv_doc_ids.defined(), "attention mask: q_doc_ids needs kv_doc_ids");
    check_doc_ids(spec.q_doc_ids, "q_doc_ids", B, T);
    check_doc_ids(spec.kv_doc_ids, "kv_doc_ids", B, T);
    auto docs = [&](const torch::Tensor& d) {  // [B|1, T] -> [B, padded] (padding: a document of its own)
      const torch::Tensor full = d.to(q.device(), at::kLong).expand({B, T});
      return padded == T ? full : at::cat({full, at::full({B, padded - T}, -2, long_opts)}, 1);
    };
    const torch::Tensor dq = docs(spec.q_doc_ids).view({B, nb, W});
    const torch::Tensor dk_own = docs(spec.kv_doc_ids);
    const torch::Tensor dk_prev = at::cat({at::full({B, W}, -1, long_opts), dk_own.narrow(1, 0, padded - W)}, 1);
    const torch::Tensor dk = at::cat({dk_prev.view({B, nb, W}), dk_own.view({B, nb, W})}, 2);  // [B, nb, 2W]
    mask = allowed.unsqueeze(0).logical_and(dq.unsqueeze(-1).eq(dk.unsqueeze(-2)));          // [B, nb, W, 2W]
  } else {
    mask = allowed.unsqueeze(0).expand({B, nb, W, 2 * W});
  }
  MaskSpec block_spec;
  block_spec.causal = false;
  block_spec.extra = mask.reshape({B * nb, 1, W, 2 * W});
  const torch::Tensor out = attention(qb, kb, vb, block_spec, scale);  // [B·nb, Hq, W, Dv]
  const int64_t Dv = out.size(3);
  return out.view({B, nb, Hq, W, Dv}).permute({0, 2, 1, 3, 4}).reshape({B, Hq, padded, Dv}).narrow(2, 0, T);
}

}  // namespace

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const MaskSpec& spec, std::optional<double> scale) {
  check(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
        "attention: q, k, v must be [B, H, T, D]; got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2);
  const int64_t Hkv = k.size(1), Tk = k.size(2);
  check(k.size(0) == B && v.size(0) == B, "attention: batch sizes differ: q ", q.sizes(), ", k ",
        k.sizes(), ", v ", v.sizes());
  check(v.size(1) == Hkv && v.size(2) == Tk, "attention: k ", k.sizes(), " and v ", v.sizes(),
        " must agree on heads and length");
  check(k.size(3) == q.size(3), "attention: q and k head dims differ: ", q.sizes(), " vs ", k.sizes());
  check(Hkv > 0 && Hq % Hkv == 0, "attention: grouped-query attention needs the ", Hkv,
        " key/value heads to divide the ", Hq, " query heads");
  if (Tk == 0) return at::zeros({B, Hq, Tq, v.size(3)}, q.options());  // nothing to attend to
  if (uses_block_local(spec, Tq, Tk)) return attention_block_local(q, k, v, spec, scale);

  bool is_causal = false;
  torch::Tensor mask = build_attention_mask(spec, B, Tq, Tk, q.device(), &is_causal);
  torch::Tensor empty_rows;  // [B|1, H|1, Tq, 1], true where a query has no key
  if (mask.defined()) {
    check(mask.size(1) == 1 || mask.size(1) == Hq, "attention: extra mask has ", mask.size(1),
          " heads, expected 1 or ", Hq);
    if (rows_may_be_empty(spec, Tq, Tk)) {
      // Softmax over no keys is 0/0, and backends disagree on the result (2.11: math and
      // memory-efficient give zeros, cuDNN gives finite garbage). Let such rows see every key, then
      // zero them: zeros everywhere, and no gradient into q/k/v from those rows.
      empty_rows = mask.any(-1, /*keepdim=*/true).logical_not_();
      mask = mask.logical_or(empty_rows);
    }
  }
  if (q.is_cuda() && (std::max(q.size(3), v.size(3)) > kFusedAttentionMaxHeadDim ||
                      (Tq <= kExplicitAttentionMaxQueries && Tq != Tk))) {
    // Head dims beyond the fused kernels' range (Megalodon's values are 2048 wide): SDPA would pick
    // a memory-efficient variant whose backward alone took 46% of a Megalodon step on an H100;
    // two GEMMs and a softmax are several times faster at these widths. Decoding (a few queries
    // against a cache): SDPA picks cuDNN on an H100, which builds an execution plan for every new
    // key length, 3.4 ms of host time per layer and token (measured); the scores are tiny here.
    // The mask built above is reused; only the causal fast path left none to reuse.
    const torch::Tensor explicit_mask = is_causal ? build_attention_mask(spec, B, Tq, Tk, q.device(), nullptr) : mask;
    torch::Tensor out = attend_explicit(q, k, v, explicit_mask, scale);
    if (empty_rows.defined()) out = out.masked_fill(empty_rows, 0.0);
    return out;
  }
  const std::optional<torch::Tensor> sdpa_mask =
      mask.defined() ? std::optional<torch::Tensor>(mask) : std::nullopt;
  bool gqa = Hq != Hkv;
  torch::Tensor keys = k, values = v;
  if (gqa && q.is_cuda() &&
      at::_fused_sdp_choice(q, k, v, sdpa_mask, 0.0, is_causal, scale, /*enable_gqa=*/true) ==
          static_cast<int64_t>(at::SDPBackend::math)) {
    // LibTorch 2.11's CUDA memory-efficient kernel takes masks and float32 but not GQA, so where
    // flash and cuDNN do not apply (float32, a mask in deterministic mode) SDPA would fall back to
    // the math kernel, which materialises [B, Hq, Tq, Tk] scores. Repeating k/v costs far less.
    // (The CPU flash kernel supports GQA with masks.)
    keys = k.repeat_interleave(Hq / Hkv, 1);
    values = v.repeat_interleave(Hq / Hkv, 1);
    gqa = false;
  }
  torch::Tensor out = at::scaled_dot_product_attention(q, keys, values, sdpa_mask, /*dropout_p=*/0.0,
                                                       is_causal, scale, /*enable_gqa=*/gqa);
  if (empty_rows.defined()) out = out.masked_fill(empty_rows, 0.0);
  return out;
}

torch::Tensor attention_explicit(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const MaskSpec& spec, std::optional<double> scale) {
  const int64_t Hq = q.size(1), Hkv = k.size(1);
  check(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && Hkv > 0 && Hq % Hkv == 0 && v.size(1) == Hkv &&
            k.size(3) == q.size(3),
        "attention_explicit: incompatible q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  return attend_explicit(q, k, v, build_attention_mask(spec, q.size(0), q.size(2), k.size(2), q.device(), nullptr),
                         scale);
}

torch::ScalarType kv_cache_dtype(const torch::Tensor& weight) {
  const auto type = weight.device().type();
  return at::autocast::is_autocast_enabled(type) ? at::autocast::get_autocast_dtype(type) : weight.scalar_type();
}

KVCache::KVCache(int64_t batch, int64_t n_kv_heads, int64_t max_len, int64_t head_dim,
                 torch::ScalarType dtype, torch::Device device, int64_t value_dim) {
  if (value_dim == 0) value_dim = head_dim;
  check(batch > 0 && n_kv_heads > 0 && max_len > 0 && head_dim > 0 && value_dim > 0,
        "KVCache: sizes must be positive, got batch=", batch, " n_kv_heads=", n_kv_heads,
        " max_len=", max_len, " head_dim=", head_dim, " value_dim=", value_dim);
  const auto opts = torch::TensorOptions().dtype(dtype).device(device);
  keys_ = at::empty({batch, n_kv_heads, max_len, head_dim}, opts);
  values_ = at::empty({batch, n_kv_heads, max_len, value_dim}, opts);
}

std::pair<torch::Tensor, torch::Tensor> KVCache::append(const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t B = keys_.size(0), H = keys_.size(1), D = keys_.size(3), Dv = values_.size(3);
  check(k.dim() == 4 && k.size(0) == B && k.size(1) == H && k.size(3) == D && v.dim() == 4 &&
            v.size(0) == B && v.size(1) == H && v.size(2) == k.size(2) && v.size(3) == Dv,
        "KVCache: expected k [", B, ", ", H, ", T, ", D, "] and v [", B, ", ", H, ", T, ", Dv, "], got ",
        k.sizes(), " and ", v.sizes());
  check(k.scalar_type() == keys_.scalar_type() && v.scalar_type() == keys_.scalar_type(),
        "KVCache: cache holds ", keys_.scalar_type(), " but k/v are ", k.scalar_type(), "/",
        v.scalar_type());
  const int64_t T = k.size(2);
  check(length_ + T <= capacity(), "KVCache overflow: holds ", length_, " of ", capacity(),
        " positions, cannot append ", T, "; start decoding with a larger max_len");
  keys_.narrow(2, length_, T).copy_(k);
  values_.narrow(2, length_, T).copy_(v);
  length_ += T;
  return {keys_.narrow(2, 0, length_), values_.narrow(2, 0, length_)};
}

SelfAttentionImpl::SelfAttentionImpl(const SelfAttentionOptions& o)
    : dim_(o.dim), n_heads_(o.n_heads), n_kv_heads_(o.n_kv_heads > 0 ? o.n_kv_heads : o.n_heads) {
  check(o.dim > 0 && o.n_heads > 0 && o.n_kv_heads >= 0 && o.head_dim >= 0,
        "SelfAttention: dim and n_heads must be positive (n_kv_heads, head_dim >= 0), got dim=", o.dim,
        " n_heads=", o.n_heads, " n_kv_heads=", o.n_kv_heads, " head_dim=", o.head_dim);
  check(n_heads_ % n_kv_heads_ == 0, "SelfAttention: n_heads (", n_heads_,
        ") must be a multiple of n_kv_heads (", n_kv_heads_, ")");
  check(o.head_dim > 0 || o.dim % o.n_heads == 0, "SelfAttention: dim (", o.dim,
        ") is not divisible by n_heads (", o.n_heads, "); set head_dim explicitly");
  head_dim_ = o.head_dim > 0 ? o.head_dim : o.dim / o.n_heads;
  using torch::nn::LinearOptions;
  wq = register_module("wq", torch::nn::Linear(LinearOptions(dim_, n_heads_ * head_dim_).bias(o.bias)));
  wk = register_module("wk", torch::nn::Linear(LinearOptions(dim_, n_kv_heads_ * head_dim_).bias(o.bias)));
  wv = register_module("wv", torch::nn::Linear(LinearOptions(dim_, n_kv_heads_ * head_dim_).bias(o.bias)));
  wo = register_module("wo", torch::nn::Linear(LinearOptions(n_heads_ * head_dim_, dim_).bias(o.bias)));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x, const RotaryEmbeddingImpl* rope,
                                         const torch::Tensor& positions, const MaskSpec& spec,
                                         KVCache* cache) {
  check(x.dim() == 3 && x.size(2) == dim_, "SelfAttention: expected x [B, T, ", dim_, "], got ",
        x.sizes());
  const int64_t T = x.size(1);

  // With a cache the new queries sit after the cached keys; the offset comes from the cache so that
  // callers cannot get it wrong (an explicit, different offset is refused).
  const MaskSpec* mask_spec = &spec;
  MaskSpec shifted;
  if (cache) {
    const int64_t cached = cache->length();
    check(spec.q_offset == 0 || spec.q_offset == cached, "SelfAttention: spec.q_offset is ",
          spec.q_offset, " but the cache holds ", cached, " positions (leave q_offset at 0 with a cache)");
    shifted = spec;
    shifted.q_offset = cached;
    mask_spec = &shifted;
  }
  const torch::Tensor pos =
      !rope || positions.defined() ? positions : rope->range(mask_spec->q_offset, T, x.device());
  torch::Tensor q, k, v;
  if (fused_projections) {
    const torch::Tensor qkv = project(x, {wq.get(), wk.get(), wv.get()}, fused);
    const kernels::QkvHeads heads =
        rope ? rope->split_qkv(qkv, n_heads_, n_kv_heads_, pos)
             : kernels::split_qkv_rope(qkv, n_heads_, n_kv_heads_, {}, {}, {}, /*interleaved=*/false);
    q = heads.q;
    k = heads.k;
    v = heads.v;
  } else {
    q = project_heads(wq, x, n_heads_, head_dim_, fused);
    k = project_heads(wk, x, n_kv_heads_, head_dim_, fused);
    v = project_heads(wv, x, n_kv_heads_, head_dim_, fused);
    if (rope) {
      q = rope->apply(q, pos);
      k = rope->apply(k, pos);
    }
  }
  if (cache) std::tie(k, v) = cache->append(k, v);
  return project(merge_heads(attention(q, k, v, *mask_spec)), {wo.get()}, fused);
}

CrossAttentionImpl::CrossAttentionImpl(const CrossAttentionOptions& o)
    : q_dim_(o.q_dim), kv_dim_(o.kv_dim), n_heads_(o.n_heads) {
  check(o.q_dim > 0 && o.kv_dim > 0 && o.n_heads > 0 && o.head_dim >= 0 && o.out_dim >= 0,
        "CrossAttention: q_dim, kv_dim and n_heads must be positive, got q_dim=", o.q_dim,
        " kv_dim=", o.kv_dim, " n_heads=", o.n_heads);
  check(o.head_dim > 0 || o.q_dim % o.n_heads == 0, "CrossAttention: q_dim (", o.q_dim,
        ") is not divisible by n_heads (", o.n_heads, "); set head_dim explicitly");
  head_dim_ = o.head_dim > 0 ? o.head_dim : o.q_dim / o.n_heads;
  const int64_t inner = n_heads_ * head_dim_, out_dim = o.out_dim > 0 ? o.out_dim : o.q_dim;
  using torch::nn::LinearOptions;
  wq = register_module("wq", torch::nn::Linear(LinearOptions(q_dim_, inner).bias(o.bias)));
  wk = register_module("wk", torch::nn::Linear(LinearOptions(kv_dim_, inner).bias(o.bias)));
  wv = register_module("wv", torch::nn::Linear(LinearOptions(kv_dim_, inner).bias(o.bias)));
  wo = register_module("wo", torch::nn::Linear(LinearOptions(inner, out_dim).bias(o.bias)));
}

torch::Tensor CrossAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& memory,
                                          const torch::Tensor& mask) {
  check(x.dim() == 3 && x.size(2) == q_dim_, "CrossAttention: expected x [B, Tq, ", q_dim_, "], got ",
        x.sizes());
  check(memory.dim() == 3 && memory.size(0) == x.size(0) && memory.size(2) == kv_dim_,
        "CrossAttention: expected memory [", x.size(0), ", Tk, ", kv_dim_, "], got ", memory.sizes());
  MaskSpec spec;
  spec.causal = false;
  if (mask.defined()) {
    check(mask.dim() == 2 || mask.dim() == 3, "CrossAttention: mask must be [Tq, Tk] or [B, Tq, Tk], got ",
          mask.sizes());
    spec.extra = mask.dim() == 3 ? mask.unsqueeze(1) : mask;  // [B, 1, Tq, Tk]: shared by the heads
  }
  const torch::Tensor q = project_heads(wq, x, n_heads_, head_dim_);
  const torch::Tensor k = project_heads(wk, memory, n_heads_, head_dim_);
  const torch::Tensor v = project_heads(wv, memory, n_heads_, head_dim_);
  return wo->forward(merge_heads(attention(q, k, v, spec)));
}

}  // namespace tessera::nn
