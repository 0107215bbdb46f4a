// An objective turns (model, batch) into named loss terms and their total (ARCHITECTURE §3).
// Implementations live in objectives/; the trainer only sees this interface.
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <string>

#include "core/batch.h"
#include "core/model.h"

namespace tessera {

struct LossTerms {
  at::Tensor total;                         // scalar, what backward() runs on
  std::map<std::string, at::Tensor> terms;  // named scalars for logging ("lm", "diffusion", ...)
  at::Tensor sum_nll;                       // optional: summed token NLL (nats) for bits-per-token/perplexity
  at::Tensor count;                         // optional: number of counted targets
  at::Tensor token_nll;                     // optional [B, T]: NLL per position (nats, float32), 0 where
                                            // not counted; lets evaluation report loss by position
  at::Tensor token_mask;                    // optional [B, T] float: 1 where the target counts;
                                            // undefined with token_nll: every position counts
};

class Objective {
 public:
  virtual ~Objective() = default;
  virtual std::string name() const = 0;
  virtual LossTerms compute(LanguageModel& model, const Batch& batch) = 0;
};

}  // namespace tessera
