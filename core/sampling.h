// Sampling from a model's next-token distribution: temperature, top-k, top-p (nucleus), seeded.
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <vector>

#include "core/model.h"

namespace tessera {

struct SamplingConfig {
  double temperature = 0.8;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 0.95;       // 1: off
  int64_t seed = 0;

  template <class V>
  void fields(V& v) {
    v.optional("temperature", temperature, "softmax temperature (0: greedy)");
    v.optional("top_k", top_k, "sample among the k most likely tokens (0: off)");
    v.optional("top_p", top_p, "sample within the smallest set of probability >= top_p (1: off)");
    v.optional("seed", seed, "sampling seed");
  }
};

void validate(const SamplingConfig& c);

// Draws one token per row of `logits` [B, V] (float32 math); `generator` makes it repeatable.
at::Tensor sample_next(const at::Tensor& logits, const SamplingConfig& c, at::Generator& generator);

// Prefills `prompt` with the model's KV cache, then samples up to max_new_tokens, stopping at
// `stop_id` (>= 0). Returns only the new tokens.
std::vector<int64_t> generate(LanguageModel& model, const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                              const SamplingConfig& c, const c10::Device& device, bool bf16, int64_t stop_id);

}  // namespace tessera
