#include "core/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace tessera {

double learning_rate(const ScheduleConfig& c, int64_t step) {
  check(c.kind == "cosine" || c.kind == "wsd" || c.kind == "constant", "unknown schedule '", c.kind, "'");
  const double min_lr = c.peak_lr * c.min_lr_ratio;
  if (step < c.warmup_steps) return c.peak_lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  if (c.kind == "constant") return c.peak_lr;
  const int64_t last = std::max<int64_t>(c.total_steps - 1, c.warmup_steps);
  if (c.kind == "cosine") {
    const double span = static_cast<double>(std::max<int64_t>(last - c.warmup_steps, 1));
    const double progress = std::clamp(static_cast<double>(step - c.warmup_steps) / span, 0.0, 1.0);
    return min_lr + 0.5 * (c.peak_lr - min_lr) * (1.0 + std::cos(M_PI * progress));
  }
  // wsd: stable at the peak, then linear decay over the final decay_fraction of all steps.
  const auto decay_steps = static_cast<int64_t>(std::ceil(c.decay_fraction * static_cast<double>(c.total_steps)));
  const int64_t decay_start = std::max(c.warmup_steps, c.total_steps - decay_steps);
  if (step < decay_start) return c.peak_lr;
  const double span = static_cast<double>(std::max<int64_t>(last - decay_start, 1));
  const double progress = std::clamp(static_cast<double>(step - decay_start) / span, 0.0, 1.0);
  return c.peak_lr + (min_lr - c.peak_lr) * progress;
}

}  // namespace tessera
