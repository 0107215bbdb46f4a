// Helpers shared by the architecture tests.
#pragma once

#include <ATen/ATen.h>

#include "core/batch.h"

namespace tessera::testing {

inline Batch batch_of(const at::Tensor& tokens) {
  Batch b;
  b.tokens = tokens;
  return b;
}

inline double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace tessera::testing
