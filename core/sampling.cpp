#include "core/sampling.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "core/error.h"
#include "core/train/autocast.h"

namespace tessera {

void validate(const SamplingConfig& c) {
  check(c.temperature >= 0, "temperature must be >= 0 (0 is greedy), got ", c.temperature);
  check(c.top_k >= 0, "top_k must be >= 0 (0 is off), got ", c.top_k);
  check(c.top_p > 0 && c.top_p <= 1, "top_p must be in (0, 1], got ", c.top_p);
}

at::Tensor sample_next(const at::Tensor& logits_in, const SamplingConfig& c, at::Generator& generator) {
  at::Tensor logits = logits_in.to(at::kFloat);
  if (c.temperature == 0) return logits.argmax(-1);
  logits = logits / c.temperature;
  const int64_t V = logits.size(-1);
  if (c.top_k > 0 && c.top_k < V) {
    const at::Tensor kth = std::get<0>(logits.topk(c.top_k, -1)).select(-1, c.top_k - 1).unsqueeze(-1);
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
  }
  if (c.top_p < 1.0) {
    auto [sorted, index] = logits.sort(-1, /*descending=*/true);
    const at::Tensor probs = sorted.softmax(-1);
    // Drop a token when the mass before it already reaches top_p (the most likely token always stays).
    const at::Tensor before = probs.cumsum(-1) - probs;
    const at::Tensor drop_sorted = before >= c.top_p;
    const at::Tensor drop = at::zeros_like(drop_sorted).scatter(-1, index, drop_sorted);
    logits = logits.masked_fill(drop, -std::numeric_limits<float>::infinity());
  }
  const at::Tensor probs = logits.softmax(-1);
  // Draw on the CPU so that a seed gives the same text on every device.
  return at::multinomial(probs.cpu(), 1, false, generator).squeeze(-1).to(logits.device());
}

std::vector<int64_t> generate(LanguageModel& model, const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                              const SamplingConfig& c, const c10::Device& device, bool bf16, int64_t stop_id) {
  validate(c);
  check(!prompt.empty(), "generation needs a non-empty prompt (at least a <bos> token)");
  check(max_new_tokens >= 0, "max_new_tokens must be >= 0");
  const int64_t total = static_cast<int64_t>(prompt.size()) + max_new_tokens;
  check(total <= model.max_seq_len(), "prompt (", prompt.size(), " tokens) + max_new_tokens (", max_new_tokens,
        ") exceeds the model's max_seq_len ", model.max_seq_len());
  at::NoGradGuard no_grad;
  model.eval();
  at::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(c.seed));
  AutocastGuard autocast(device.type(), bf16);
  auto state = model.start_decoding(1, total);
  at::Tensor input = at::tensor(prompt, at::kLong).view({1, -1}).to(device);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < max_new_tokens; ++i) {
    const at::Tensor logits = model.step(input, *state);
    const at::Tensor next = sample_next(logits.select(1, logits.size(1) - 1), c, generator);
    const int64_t id = next.item<int64_t>();
    if (id == stop_id) break;
    out.push_back(id);
    input = next.view({1, 1});
  }
  return out;
}

}  // namespace tessera
