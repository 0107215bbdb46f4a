#include "modalities/bytes/patching.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace tessera::blt {

namespace {

// Released `find_space_patch_start_ids`: with b = id − 4, not an ASCII digit or letter and not a UTF-8
// continuation byte. Specials (id < 4, so b < 0 < '0') are space-like here too, which matters for the
// "previous id was space-like" test: a space right after BOS does not count again.
bool space_like(int64_t id) {
  const int64_t b = id - kByteOffset;
  return b < '0' || ('9' < b && b < 'A') || ('Z' < b && b < 'a') || ('z' < b && b < 0x80) || 0xC0 <= b;
}

// Released `patch_end_mask[j]` for j >= 1: the id at j ends a patch.
bool counted_space(const int64_t* x, int64_t j) {
  if (x[j] < kByteOffset) return true;  // specials always end a patch
  return space_like(x[j]) && !space_like(x[j - 1]);
}

at::Tensor cpu_ids(const at::Tensor& tokens, const char* what) {
  check(tokens.defined(), what, ": tokens are missing (pass the [B, T] ids)");
  check(tokens.dim() == 2, what, ": tokens must be [B, T], got ", tokens.dim(), " dimensions ", tokens.sizes());
  check(at::isIntegralType(tokens.scalar_type(), /*includeBool=*/false), what, ": tokens must be integer ids, got ",
        tokens.scalar_type());
  return tokens.to(at::kCPU, at::kLong).contiguous();
}

void check_ids(const int64_t* x, int64_t n, int64_t row) {
  for (int64_t i = 0; i < n; ++i)
    check(x[i] >= 0 && x[i] < kVocabSize, "patcher: id ", x[i], " at row ", row, ", position ", i,
          " is outside BLT's 260-id layout (0..259: specials 0-3, byte b as b+4); encode bytes with the 'bytes' ",
          "adapter at offset 4 and drop padding before patching");
}

void check_finite(const float* h, int64_t n, int64_t row) {
  for (int64_t i = 0; i < n; ++i)
    check(std::isfinite(h[i]), "patcher: entropy at row ", row, ", position ", i, " is ", h[i],
          " (entropies must be finite nats; check the entropy model's logits for NaN/inf)");
}

}  // namespace

// ---- PatcherConfig ------------------------------------------------------------------------------------

void PatcherConfig::validate() const {
  check(mode == "entropy" || mode == "space" || mode == "static" || mode == "byte", "patcher: unknown mode '", mode,
        "' (use entropy, space, static or byte)");
  check(rule == "global" || rule == "monotonic" || rule == "global_and_monotonic", "patcher: unknown rule '", rule,
        "' (use global, monotonic or global_and_monotonic)");
  check(std::isfinite(threshold), "patcher: threshold must be a finite number of nats, got ", threshold);
  check(std::isfinite(threshold_add), "patcher: threshold_add must be a finite number of nats, got ", threshold_add);
  check(max_patch_length >= 0, "patcher: max_patch_length must be >= 0 (0: no limit), got ", max_patch_length);
  check(std::isfinite(patch_size) && patch_size > 0, "patcher: patch_size must be positive, got ", patch_size);
  if (mode == "static")
    check(patch_size >= 1 && patch_size == std::floor(patch_size) && patch_size <= 1e15,
          "patcher: static patching needs a whole number of bytes per patch, got patch_size ", patch_size,
          " (the default 4.5 is entropy patching's target mean; set e.g. patch_size: 4)");
}

// ---- Patcher ------------------------------------------------------------------------------------------

Patcher::Patcher(PatcherConfig config) : config_(std::move(config)) {
  config_.validate();
  threshold_f_ = static_cast<float>(config_.threshold);
  threshold_add_f_ = static_cast<float>(config_.threshold_add);
  if (config_.mode == "static") static_size_ = static_cast<int64_t>(config_.patch_size);
  if (config_.mode == "entropy") {
    kind_ = config_.rule == "global"      ? Kind::kEntropyGlobal
            : config_.rule == "monotonic" ? Kind::kEntropyMonotonic
                                          : Kind::kEntropyGlobalAndMonotonic;
  } else {
    kind_ = config_.mode == "space" ? Kind::kSpace : config_.mode == "static" ? Kind::kStatic : Kind::kByte;
  }
}

// p >= 2; the caller made sure the data before p is there.
bool Patcher::rule_starts(int64_t p, c10::ArrayRef<int64_t> x, c10::ArrayRef<float> h) const {
  // Entropy rules follow the released find_entropy_patch_start_ids: its mask runs over entropies[:, 1:]
  // and mask index k is start id k + 2, so the entry for p reads H[p-1] (and H[p-1] − H[p-2]).
  switch (kind_) {
    case Kind::kEntropyGlobal:
      return h[p - 1] > threshold_f_;
    case Kind::kEntropyMonotonic:
      return p == 2 || h[p - 1] - h[p - 2] > threshold_f_;  // p = 2 forced (mask[:, 0] = True)
    case Kind::kEntropyGlobalAndMonotonic:
      // p = 2 forced as above; the released "& ~mask[:, :-1]" only ever sees that forced start, so it
      // suppresses p = 3 and nothing else (a code artifact, kept for fidelity).
      if (p == 2) return true;
      return p >= 4 && h[p - 1] - h[p - 2] > threshold_add_f_ && h[p - 1] > threshold_f_;
    case Kind::kSpace:
      return counted_space(x.data(), p - 1);
    case Kind::kStatic:
      return p % static_size_ == 0;
    case Kind::kByte:
      return true;
  }
  return true;
}

bool Patcher::starts_patch(int64_t p, c10::ArrayRef<int64_t> tokens, c10::ArrayRef<float> entropies,
                           int64_t last_start) const {
  check(p >= 0, "patcher: position must be >= 0, got ", p);
  if (p == 0) return true;
  if (config_.max_patch_length > 0) {
    check(last_start >= 0 && last_start < p, "patcher: last_start must be the start of the patch holding position ",
          p - 1, " (0..", p - 1, "), got ", last_start);
    if (p - last_start >= config_.max_patch_length) return true;
  }
  if (p == 1) return true;
  if (config_.mode == "entropy") {
    check(static_cast<int64_t>(entropies.size()) >= p, "patcher: deciding position ", p, " needs entropies H[0..",
          p - 1, "], got ", entropies.size());
    for (int64_t i = p - 2; i < p; ++i)
      check(std::isfinite(entropies[i]), "patcher: entropy at position ", i, " is ", entropies[i],
            " (entropies must be finite nats; check the entropy model's logits for NaN/inf)");
  } else if (config_.mode == "space") {
    check(static_cast<int64_t>(tokens.size()) >= p, "patcher: deciding position ", p, " needs ids x[0..", p - 1,
          "], got ", tokens.size());
    for (int64_t i = p - 2; i < p; ++i)
      check(tokens[i] >= 0 && tokens[i] < kVocabSize, "patcher: id ", tokens[i], " at position ", i,
            " is outside BLT's 260-id layout (0..259)");
  }
  return rule_starts(p, tokens, entropies);
}

std::vector<int64_t> Patcher::row_lengths(const int64_t* tokens, const float* entropies, int64_t n,
                                          bool include_next_token) const {
  const int64_t total = n + (include_next_token ? 1 : 0);
  const c10::ArrayRef<int64_t> x(tokens, tokens ? n : 0);
  const c10::ArrayRef<float> h(entropies, entropies ? n : 0);
  const int64_t max_len = config_.max_patch_length;
  std::vector<int64_t> lengths;
  int64_t last = 0;  // position 0 always starts the first patch
  for (int64_t p = 1; p < total; ++p) {
    // The same decision as starts_patch, without its per-call checks (the row was checked once).
    const bool start = (max_len > 0 && p - last >= max_len) || p == 1 || rule_starts(p, x, h);
    if (start) {
      lengths.push_back(p - last);
      last = p;
    }
  }
  lengths.push_back(total - last);
  return lengths;
}

std::vector<int64_t> Patcher::patch_row(c10::ArrayRef<int64_t> tokens, c10::ArrayRef<float> entropies,
                                        bool include_next_token) const {
  const auto n = static_cast<int64_t>(tokens.size());
  check(n >= 1, "patcher: the row is empty; a row needs at least one id (its BOS)");
  if (needs_entropies()) {
    check(static_cast<int64_t>(entropies.size()) == n, "patcher: entropy patching needs one entropy per id: got ",
          entropies.size(), " entropies for ", n, " ids");
    check_finite(entropies.data(), n, 0);
  }
  if (config_.mode == "space") check_ids(tokens.data(), n, 0);
  return row_lengths(tokens.data(), needs_entropies() ? entropies.data() : nullptr, n, include_next_token);
}

at::Tensor Patcher::patch(const at::Tensor& tokens, const at::Tensor& entropies, bool include_next_token) const {
  const at::Tensor x = cpu_ids(tokens, "patcher");
  const int64_t rows = x.size(0), n = x.size(1);
  check(n >= 1 || rows == 0, "patcher: tokens are [", rows, ", 0]; every row needs at least one id (its BOS)");
  at::Tensor h;
  if (needs_entropies()) {
    check(entropies.defined(), "patcher: entropy patching needs the entropies [B, T] (nats) next to the tokens");
    check(entropies.sizes() == tokens.sizes(), "patcher: entropies ", entropies.sizes(),
          " must have the tokens' shape ", tokens.sizes(), " (one entropy per id)");
    check(at::isFloatingType(entropies.scalar_type()), "patcher: entropies must be floating point (nats), got ",
          entropies.scalar_type());
    h = entropies.to(at::kCPU, at::kFloat).contiguous();  // released: entropies.to(float32)
  }
  const int64_t* xp = x.data_ptr<int64_t>();
  const float* hp = h.defined() ? h.data_ptr<float>() : nullptr;
  std::vector<std::vector<int64_t>> all(static_cast<size_t>(rows));
  size_t most = 0;
  for (int64_t b = 0; b < rows; ++b) {
    if (hp) check_finite(hp + b * n, n, b);
    if (config_.mode == "space") check_ids(xp + b * n, n, b);
    all[b] = row_lengths(xp + b * n, hp ? hp + b * n : nullptr, n, include_next_token);
    most = std::max(most, all[b].size());
  }
  at::Tensor out = at::zeros({rows, static_cast<int64_t>(most)}, at::kLong);
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t b = 0; b < rows; ++b) std::copy(all[b].begin(), all[b].end(), op + b * static_cast<int64_t>(most));
  return out.to(tokens.device());
}

// ---- lengths -> positions -----------------------------------------------------------------------------

void check_patch_lengths(const at::Tensor& lengths, int64_t expected_sum) {
  check(lengths.defined(), "patch lengths are missing");
  check(lengths.dim() == 2, "patch lengths must be [B, P], got ", lengths.dim(), " dimensions ", lengths.sizes());
  check(at::isIntegralType(lengths.scalar_type(), /*includeBool=*/false), "patch lengths must be integers, got ",
        lengths.scalar_type());
  const at::Tensor l = lengths.to(at::kCPU, at::kLong).contiguous();
  const int64_t rows = l.size(0), cols = l.size(1);
  const int64_t* lp = l.data_ptr<int64_t>();
  for (int64_t b = 0; b < rows; ++b) {
    int64_t sum = 0;
    bool padding = false;
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t v = lp[b * cols + j];
      check(v >= 0, "patch lengths: row ", b, ", patch ", j, " has negative length ", v);
      check(!(padding && v > 0), "patch lengths: row ", b, ", patch ", j, " has length ", v,
            " after a zero; zero-length padding may only appear on the right");
      padding = padding || v == 0;
      sum += v;
    }
    check(expected_sum < 0 || sum == expected_sum, "patch lengths: row ", b, " sums to ", sum, ", expected ",
          expected_sum);
  }
}

namespace {

// Rows must cover `seq_len` positions; `what` names the caller in errors.
void check_covers(const at::Tensor& lengths, int64_t seq_len, const char* what, const char* fix) {
  check(seq_len >= 0, what, ": seq_len must be >= 0, got ", seq_len);
  if (lengths.size(0) == 0) return;
  const int64_t least = lengths.sum(1).min().item<int64_t>();
  check(least >= seq_len, what, ": patch lengths sum to ", least, " in some row, fewer than the ", seq_len,
        " positions to cover", fix);
}

at::Tensor ids_from_lengths(const at::Tensor& lengths, int64_t seq_len) {
  // cum = [0, L0, L0+L1, ...]: position i lies in patch (number of cum entries <= i) − 1; equal entries
  // of zero-length padding patches sit at the row total, past every position.
  const at::Tensor l = lengths.to(at::kLong);
  const int64_t rows = l.size(0);
  const at::Tensor cum = at::cat({at::zeros({rows, 1}, l.options()), l.cumsum(1)}, 1).contiguous();
  const at::Tensor pos = at::arange(seq_len, l.options()).unsqueeze(0).expand({rows, seq_len}).contiguous();
  return at::searchsorted(cum, pos, /*out_int32=*/false, /*right=*/true) - 1;
}

}  // namespace

at::Tensor patch_ids_from_lengths(const at::Tensor& lengths, int64_t seq_len) {
  check_patch_lengths(lengths);
  check_covers(lengths, seq_len, "patch_ids_from_lengths", "");
  return ids_from_lengths(lengths, seq_len);
}

at::Tensor decoder_patch_ids_from_lengths(const at::Tensor& lengths, int64_t seq_len) {
  check_patch_lengths(lengths);
  if (lengths.size(0) > 0) {
    check(lengths.size(1) >= 1 && (lengths.select(1, 0) == 1).all().item<bool>(),
          "decoder_patch_ids_from_lengths: the first patch of every row must have length 1 (the BOS alone; "
          "the decoder lag of notes §1.6 needs it); patch with blt::Patcher, which always does this");
  }
  const at::Tensor rest = lengths.slice(1, 1);
  check_covers(rest, seq_len, "decoder_patch_ids_from_lengths",
               " after the first patch; decoder ids need lengths that also cover the next byte (sum seq_len + 1: "
               "patch with include_next_token = true)");
  return ids_from_lengths(rest, seq_len);
}

at::Tensor patch_starts_from_lengths(const at::Tensor& lengths) {
  check_patch_lengths(lengths);
  const at::Tensor l = lengths.to(at::kLong);
  return l.cumsum(1) - l;
}

// ---- calibration --------------------------------------------------------------------------------------

namespace {

// The values the rule compares θ against, over whole rows patched without the next token (candidate
// positions p = 2..n-1). Sorted, without duplicates.
std::vector<float> threshold_candidates(const PatcherConfig& c, const std::vector<std::vector<float>>& rows) {
  std::vector<float> out;
  for (const auto& h : rows) {
    const auto n = static_cast<int64_t>(h.size());
    if (c.rule == "global") {
      for (int64_t p = 2; p < n; ++p) out.push_back(h[p - 1]);
    } else if (c.rule == "monotonic") {
      for (int64_t p = 3; p < n; ++p) out.push_back(h[p - 1] - h[p - 2]);  // float32, as the rule
    } else {
      for (int64_t p = 4; p < n; ++p) out.push_back(h[p - 1]);  // θ_add stays fixed
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

int64_t count_patches(PatcherConfig c, double threshold, const std::vector<std::vector<float>>& rows,
                      const std::vector<std::vector<int64_t>>& ids) {
  c.threshold = threshold;
  const Patcher patcher(std::move(c));
  int64_t patches = 0;
  for (size_t r = 0; r < rows.size(); ++r)
    patches += static_cast<int64_t>(patcher.patch_row(ids[r], rows[r], false).size());
  return patches;
}

}  // namespace

ThresholdCalibration calibrate_threshold(const PatcherConfig& config, const std::vector<at::Tensor>& rows,
                                         double target) {
  config.validate();
  check(config.mode == "entropy", "calibrate_threshold: only entropy patching has a threshold (mode is '",
        config.mode, "')");
  check(std::isfinite(target) && target >= 1.0, "calibrate_threshold: the target mean patch size must be >= 1 byte, got ",
        target);
  check(!rows.empty(), "calibrate_threshold: no rows of entropies were given");
  std::vector<std::vector<float>> h(rows.size());
  std::vector<std::vector<int64_t>> ids(rows.size());  // unused by entropy rules; sized for patch_row
  int64_t bytes = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    const at::Tensor& t = rows[r];
    check(t.defined() && t.dim() == 1, "calibrate_threshold: row ", r, " must be a 1-D tensor of entropies, got ",
          t.defined() ? t.sizes() : c10::IntArrayRef{});
    check(at::isFloatingType(t.scalar_type()), "calibrate_threshold: row ", r,
          " must hold floating-point entropies (nats), got ", t.scalar_type());
    check(t.numel() >= 1, "calibrate_threshold: row ", r, " is empty");
    const at::Tensor f = t.to(at::kCPU, at::kFloat).contiguous();
    h[r].assign(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
    check_finite(h[r].data(), f.numel(), static_cast<int64_t>(r));
    ids[r].assign(h[r].size(), kBosId);
    bytes += f.numel();
  }

  const std::vector<float> cand = threshold_candidates(config, h);
  const auto k = static_cast<int64_t>(cand.size());
  // θ for interval j: j = -1 lies below every candidate (all of them start), j >= 0 is candidate j
  // itself (values > θ start, so exactly the candidates above j).
  auto theta_at = [&](int64_t j) -> double {
    if (k == 0) return config.threshold;
    if (j < 0) return std::nextafter(cand[0], -std::numeric_limits<float>::infinity());
    return cand[j];
  };
  auto mean_at = [&](int64_t j) {
    return static_cast<double>(bytes) / static_cast<double>(count_patches(config, theta_at(j), h, ids));
  };
  ThresholdCalibration out;
  out.bytes = bytes;
  out.min_mean_patch_size = mean_at(-1);
  out.max_mean_patch_size = mean_at(k - 1);
  const double slack = 1e-12 * target;
  check(target >= out.min_mean_patch_size - slack && target <= out.max_mean_patch_size + slack,
        "calibrate_threshold: a mean patch size of ", target, " bytes is impossible on this sample (", rows.size(),
        " rows, ", bytes, " positions): with rule '", config.rule, "'",
        config.max_patch_length > 0 ? str(" and max_patch_length ", config.max_patch_length) : std::string(),
        " any threshold gives between ", out.min_mean_patch_size, " (below every entropy) and ",
        out.max_mean_patch_size, " (above every entropy); choose a target in that range or use longer rows");

  // The mean is non-decreasing in j: find the first interval reaching the target, then keep it or the
  // one before, whichever is closer.
  int64_t lo = -1, hi = k - 1;  // mean_at(hi) >= target
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;  // floor for lo = -1 too: mid < hi
    if (mean_at(mid) >= target) hi = mid; else lo = mid + 1;
  }
  int64_t best = hi;
  if (best > -1 && std::abs(mean_at(best - 1) - target) < std::abs(mean_at(best) - target)) best = best - 1;

  double theta = theta_at(best);
  if (best >= 0 && best + 1 < k) {
    // The middle of [cand[best], cand[best+1]) generalises better to unseen rows; keep it only if its
    // float32 value stays inside the interval (adjacent floats leave no room).
    const double mid = 0.5 * (static_cast<double>(cand[best]) + static_cast<double>(cand[best + 1]));
    if (static_cast<float>(mid) < cand[best + 1]) theta = mid;
  }
  out.threshold = theta;
  out.patches = count_patches(config, theta, h, ids);
  out.mean_patch_size = static_cast<double>(bytes) / static_cast<double>(out.patches);
  return out;
}

ThresholdCalibration calibrate_threshold(const PatcherConfig& config, const at::Tensor& entropies, double target) {
  check(entropies.defined() && entropies.dim() == 2, "calibrate_threshold: entropies must be [B, T], got ",
        entropies.defined() ? entropies.sizes() : c10::IntArrayRef{});
  std::vector<at::Tensor> rows;
  for (int64_t b = 0; b < entropies.size(0); ++b) rows.push_back(entropies[b]);
  return calibrate_threshold(config, rows, target);
}

at::Tensor next_byte_entropies(const at::Tensor& logits) {
  const at::Tensor lp = at::log_softmax(logits.to(at::kFloat), -1);
  return -(lp.exp() * lp).sum(-1);
}

}  // namespace tessera::blt
