// Next-token language modelling: mean cross-entropy over the positions where loss_mask is 1.
#pragma once

#include "core/objective.h"

namespace tessera {

class LMObjective : public Objective {
 public:
  std::string name() const override { return "lm"; }
  LossTerms compute(LanguageModel& model, const Batch& batch) override;
};

// NLL per position [B, T] (nats, float32, computed in float32 whatever the logits' dtype).
at::Tensor token_nll(const at::Tensor& logits, const at::Tensor& targets);

// Summed NLL (nats, float32) and count of the masked-in targets; the logits may be bf16.
std::pair<at::Tensor, at::Tensor> masked_nll_sum(const at::Tensor& logits, const at::Tensor& targets,
                                                 const at::Tensor& loss_mask);

}  // namespace tessera
