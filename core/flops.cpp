#include "core/flops.h"

#include "core/error.h"

#include <algorithm>

namespace tessera {

FlopCount transformer_flops(int64_t matmul_params, int64_t n_layers, int64_t attn_dim, double attended) {
  // Per token and layer: QK^T and AV are each 2·attended·attn_dim FLOPs in the forward.
  const double attention_forward = 2.0 * 2.0 * attended * static_cast<double>(attn_dim) * n_layers;
  const double weights_forward = 2.0 * static_cast<double>(matmul_params);
  FlopCount out;
  out.matmul_params = matmul_params;
  out.inference_per_token = weights_forward + attention_forward;
  out.train_per_token = 3.0 * out.inference_per_token;
  return out;
}

double causal_attended(int64_t seq_len, int64_t window) {
  // Query i (0-based) sees min(i + 1, window) keys; the mean over the sequence.
  const int64_t T = seq_len;
  if (window <= 0 || window >= T) return (T + 1) / 2.0;
  const int64_t w = window;
  const double ramp = w * (w + 1) / 2.0;  // queries 0..w-1
  const double flat = static_cast<double>(T - w) * w;
  return (ramp + flat) / T;
}

FlopCount per_byte(const FlopCount& per_token, double bytes_per_token) {
  check(bytes_per_token > 0, "per_byte: bytes per token must be positive, got ", bytes_per_token);
  FlopCount out = per_token;
  out.train_per_token /= bytes_per_token;
  out.inference_per_token /= bytes_per_token;
  return out;
}

}  // namespace tessera
