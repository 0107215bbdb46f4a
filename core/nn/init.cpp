#include "core/nn/init.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/error.h"

namespace tessera::nn {

void truncated_normal_(const at::Tensor& t, double std, double bound) {
  check(std > 0 && bound > 0, "truncated_normal_: std and bound must be positive, got ", std, " and ", bound);
  at::NoGradGuard no_grad;
  // u ~ U(Phi(-bound), Phi(bound)); x = Phi^-1(u) = sqrt(2) erfinv(2u - 1). The clamp only guards the
  // last ulp of erfinv at the ends.
  const double lo = 0.5 * (1.0 + std::erf(-bound / std::sqrt(2.0)));
  t.uniform_(lo, 1.0 - lo).mul_(2.0).sub_(1.0).erfinv_().mul_(std * std::sqrt(2.0)).clamp_(-bound * std, bound * std);
}

}  // namespace tessera::nn
