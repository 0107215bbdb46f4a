#include "core/model.h"

#include "core/train/stage_timer.h"

namespace tessera {

int64_t LanguageModel::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

void LanguageModel::mark_stage(const char* name, const at::Tensor& input) const {
  if (stage_timer_) stage_timer_->mark(name, input);
}

}  // namespace tessera
