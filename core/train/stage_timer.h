// Where a training step's time goes, stage by stage, measured inside the real step (forward and
// backward) rather than by timing pieces in isolation.
//
// A model calls mark("encoder", x) as a stage begins, with the tensor entering it; the step calls
// end_forward(loss) after the loss and finish() after backward. Forward: an event is recorded on the
// device's current stream at every mark, so stage i's forward time is the span to the next mark.
// Backward: a gradient hook on each marked tensor records an event when the gradient reaching that
// stage's input is complete, i.e. when the stage's backward is done. Autograd runs backward in the
// reverse order of the forward's creation, so stage i's backward is the span from stage i+1's event
// (the loss's, for the last stage) to its own; the time from the first stage's event to finish()
// (embedding gradients, accumulation) is reported as "rest". Stages whose input carries no gradient
// (e.g. BLT's entropy model, run under no_grad) have a forward time only. On CUDA the events are
// device events (no synchronisation inside the step); on the CPU, where ops run synchronously, they
// are wall-clock times.
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <string>
#include <vector>

namespace tessera {

class StageTimer {
 public:
  explicit StageTimer(c10::Device device);
  ~StageTimer();
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;

  void begin_step();                          // forgets the previous step's events
  void mark(const std::string& stage, const at::Tensor& input);  // a stage begins (forward)
  void end_forward(const at::Tensor& loss);   // the forward is over; hooks the start of backward
  void finish();                              // backward is over

  struct Split {
    std::string stage;
    double forward_ms = 0, backward_ms = 0;  // backward 0 when the stage's input has no gradient
  };
  // The last step's split (synchronises the device). Stages in forward order, then "rest" (backward
  // after the first stage's input). Errors when the step was not bracketed by begin_step/finish.
  std::vector<Split> collect() const;

 private:
  struct Clock;
  c10::Device device_;
  std::unique_ptr<Clock> clock_;
  std::vector<std::string> stages_;
  std::vector<int> forward_events_, backward_events_;  // clock indices; -1: not recorded
  int forward_end_ = -1, backward_start_ = -1, finish_ = -1;
};

}  // namespace tessera
