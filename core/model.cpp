#include "core/model.h"

namespace tessera {

int64_t LanguageModel::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace tessera
