// The unit of data every model consumes (ARCHITECTURE §2). Architectures read the fields they need
// and reject a batch that lacks one with a clear error.
#pragma once

#include <ATen/Tensor.h>

#include <string>

namespace tessera {

struct Batch {
  at::Tensor tokens;     // [B, T] int64 input ids in the model's vocabulary layout
  at::Tensor targets;    // [B, T] int64 next-token ids
  at::Tensor loss_mask;  // [B, T] float, 1 where the target counts toward the loss
  at::Tensor modality;   // [B, T] int64 modality index per position (optional)
  at::Tensor doc_ids;    // [B, T] int64 document index within a packed row (optional: block-diagonal attention)
  at::Tensor positions;  // [B, T] or [T] int64 absolute positions (optional; default 0..T-1)
  at::Tensor patch_lengths;  // [B, P] int64 patch lengths (BLT, optional): precomputed boundaries, each row
                             // summing to T + 1 with a first patch of 1 (the released layout); when absent
                             // BLT patches with its own patcher
  at::Tensor entropies;  // [B, T] float32 next-byte entropies (nats) of the tokens (BLT, optional): computed
                         // once by `tessera patch entropies` and stored beside the shards; BLT's entropy
                         // patcher uses them instead of running its entropy model

  int64_t batch_size() const { return tokens.size(0); }
  int64_t seq_len() const { return tokens.size(1); }
  // Number of positions whose target counts (the denominator of a mean loss).
  int64_t target_count() const;

  Batch to(const at::Device& device) const;
};

// Errors name the architecture and the missing field.
void require_field(const at::Tensor& t, const char* field, const std::string& arch);

struct Outputs {
  at::Tensor logits;  // [B, T, V]
};

}  // namespace tessera
