// Learning-rate schedules: linear warm-up, then cosine decay, warmup-stable-decay, or constant.
#pragma once

#include <cstdint>
#include <string>

namespace tessera {

struct ScheduleConfig {
  std::string kind = "cosine";  // cosine | wsd | constant
  double peak_lr = 3e-4;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double decay_fraction = 0.2;  // wsd: the last fraction of steps decays linearly to min_lr
};

// Learning rate for optimizer step `step` (0-based: the update that turns step into step + 1).
double learning_rate(const ScheduleConfig& c, int64_t step);

}  // namespace tessera
