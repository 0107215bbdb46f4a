// FLOP accounting (ARCHITECTURE §3): one place for every "FLOP-controlled" number.
//
// Convention (Chinchilla-style, as in Hoffmann et al. 2022 and Kaplan et al. 2020):
//  * a matrix multiply of an [m, k] by [k, n] costs 2·m·k·n FLOPs; training costs 3× the forward
//    (forward + two backward products), so a weight matrix costs 6 FLOPs per parameter per token;
//  * embedding look-ups are free; the output (LM head) projection counts like any other matrix,
//    tied or not;
//  * causal self-attention scores and the weighted sum cost 2·2·T·d per token and layer at full
//    density; causality halves it (2·T·d forward, 6·T·d training), sliding windows cap T at the window;
//  * norms, activations, softmax and the optimizer are not counted (they are O(d) per token).
#pragma once

#include <cstdint>

namespace tessera {

struct FlopCount {
  double train_per_token = 0;      // forward + backward
  double inference_per_token = 0;  // forward only
  int64_t matmul_params = 0;       // parameters that cost 2 FLOPs per token in the forward
};

// `attended` is the mean number of keys a query attends to (T/2 for causal full attention).
FlopCount transformer_flops(int64_t matmul_params, int64_t n_layers, int64_t attn_dim, double attended);

// Mean attended keys per query for causal attention over `seq_len`, optionally windowed.
double causal_attended(int64_t seq_len, int64_t window = 0);

// FLOPs per byte of text, the unit the BLT paper compares models in (Pagnoni et al. 2024, §4.5):
// a model's per-token count divided by the bytes one token covers, 1 for byte-level models (dense
// bytes, MEGABYTE and BLT already count per byte), the tokenizer's mean UTF-8 bytes per token for BPE
// (measured on the training split). matmul_params stays the per-token count.
FlopCount per_byte(const FlopCount& per_token, double bytes_per_token);

}  // namespace tessera
