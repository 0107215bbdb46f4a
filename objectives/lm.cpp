#include "objectives/lm.h"

#include <ATen/ATen.h>

namespace tessera {

std::pair<at::Tensor, at::Tensor> masked_nll_sum(const at::Tensor& logits, const at::Tensor& targets,
                                                 const at::Tensor& loss_mask) {
  const int64_t V = logits.size(-1);
  // Reduction in float32 whatever the logits' dtype (bf16 under autocast).
  at::Tensor nll = at::cross_entropy_loss(logits.reshape({-1, V}).to(at::kFloat), targets.reshape({-1}), {},
                                          at::Reduction::None);
  if (!loss_mask.defined()) return {nll.sum(), at::full({}, static_cast<double>(nll.numel()), nll.options())};
  const at::Tensor mask = loss_mask.reshape({-1}).to(at::kFloat);
  return {(nll * mask).sum(), mask.sum()};
}

LossTerms LMObjective::compute(LanguageModel& model, const Batch& batch) {
  require_field(batch.targets, "targets", model.arch());
  const Outputs out = model.forward(batch);
  auto [sum, count] = masked_nll_sum(out.logits, batch.targets, batch.loss_mask);
  LossTerms terms;
  terms.total = sum / count.clamp_min(1.0);
  terms.terms["lm"] = terms.total.detach();
  terms.sum_nll = sum.detach();
  terms.count = count.detach();
  return terms;
}

}  // namespace tessera
