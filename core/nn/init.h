// Weight initialisers the backbones share.
#pragma once

#include <ATen/core/Tensor.h>

namespace tessera::nn {

// In place: Normal(0, std) truncated to [-bound·std, bound·std], drawn by the inverse CDF of a uniform
// restricted to the kept mass (no rejection loop, no device sync), from torch's default generator.
// MEGABYTE uses bound 2, Megalodon's embeddings bound 3.
void truncated_normal_(const at::Tensor& t, double std, double bound = 2.0);

}  // namespace tessera::nn
