#include "objectives/lm.h"

#include <ATen/ATen.h>

#include "core/kernels/fused.h"

namespace tessera {

at::Tensor token_nll(const at::Tensor& logits, const at::Tensor& targets) {
  const int64_t V = logits.size(-1);
  // Float32 math whatever the logits' dtype (bf16 under autocast); on CUDA one kernel each way that reads
  // the bf16 logits as they are (core/kernels).
  return kernels::cross_entropy_nll(logits.reshape({-1, V}), targets.reshape({-1})).view(targets.sizes());
}

std::pair<at::Tensor, at::Tensor> masked_nll_sum(const at::Tensor& logits, const at::Tensor& targets,
                                                 const at::Tensor& loss_mask) {
  const at::Tensor nll = token_nll(logits, targets);
  if (!loss_mask.defined()) return {nll.sum(), at::full({}, static_cast<double>(nll.numel()), nll.options())};
  const at::Tensor mask = loss_mask.to(at::kFloat).view(nll.sizes());
  return {(nll * mask).sum(), mask.sum()};
}

LossTerms LMObjective::compute(LanguageModel& model, const Batch& batch) {
  require_field(batch.targets, "targets", model.arch());
  const Outputs out = model.forward(batch);
  const at::Tensor nll = token_nll(out.logits, batch.targets);
  const bool masked_loss = batch.loss_mask.defined();
  const at::Tensor mask = masked_loss ? batch.loss_mask.to(at::kFloat).view(nll.sizes()) : at::Tensor();
  const at::Tensor masked = masked_loss ? nll * mask : nll;
  const at::Tensor sum = masked.sum();
  const at::Tensor count = masked_loss ? mask.sum() : at::full({}, static_cast<double>(nll.numel()), nll.options());
  LossTerms terms;
  terms.total = sum / count.clamp_min(1.0);
  terms.terms["lm"] = terms.total.detach();
  terms.sum_nll = sum.detach();
  terms.count = count.detach();
  terms.token_nll = masked.detach();
  terms.token_mask = mask;  // undefined: every position counts
  return terms;
}

}  // namespace tessera
