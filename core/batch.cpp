#include "core/batch.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace tessera {

int64_t Batch::target_count() const {
  if (loss_mask.defined()) return static_cast<int64_t>(loss_mask.sum().item<double>());
  return targets.numel();
}

Batch Batch::to(const at::Device& device) const {
  auto move = [&](const at::Tensor& t) { return t.defined() ? t.to(device, /*non_blocking=*/true) : t; };
  Batch out;
  out.tokens = move(tokens);
  out.targets = move(targets);
  out.loss_mask = move(loss_mask);
  out.modality = move(modality);
  out.doc_ids = move(doc_ids);
  out.positions = move(positions);
  out.entropies = move(entropies);
  out.patch_lengths = patch_lengths;  // read on the host by the patch bookkeeping: stays where it is
  return out;
}

void require_field(const at::Tensor& t, const char* field, const std::string& arch) {
  check(t.defined(), "architecture '", arch, "' needs batch field '", field,
        "', which this data source does not provide");
}

}  // namespace tessera
