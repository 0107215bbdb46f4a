#include "core/train/stage_timer.h"

#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <chrono>
#include <memory>

#include "core/error.h"

namespace tessera {

// Timestamps: device events on accelerators, steady-clock readings on the CPU.
struct StageTimer::Clock {
  explicit Clock(c10::Device d) : device(d) {}
  c10::Device device;
  std::vector<std::unique_ptr<c10::Event>> events;
  std::vector<std::chrono::steady_clock::time_point> times;

  int record() {
    if (device.is_cpu()) {
      times.push_back(std::chrono::steady_clock::now());
      return static_cast<int>(times.size()) - 1;
    }
    auto event = std::make_unique<c10::Event>(device.type(), c10::EventFlag::BACKEND_DEFAULT);
    const c10::impl::VirtualGuardImpl guard(device.type());
    event->record(guard.getStream(device));
    events.push_back(std::move(event));
    return static_cast<int>(events.size()) - 1;
  }
  double ms(int from, int to) const {
    if (device.is_cpu()) return std::chrono::duration<double, std::milli>(times.at(to) - times.at(from)).count();
    events.at(to)->synchronize();
    return events.at(from)->elapsedTime(*events.at(to));
  }
  void clear() {
    events.clear();
    times.clear();
  }
};

StageTimer::StageTimer(c10::Device device) : device_(device), clock_(std::make_unique<Clock>(device)) {}
StageTimer::~StageTimer() = default;

void StageTimer::begin_step() {
  clock_->clear();
  stages_.clear();
  forward_events_.clear();
  backward_events_.clear();
  forward_end_ = backward_start_ = finish_ = -1;
}

void StageTimer::mark(const std::string& stage, const at::Tensor& input) {
  check(forward_end_ < 0, "stage timer: mark('", stage, "') after end_forward(); call begin_step() first");
  stages_.push_back(stage);
  forward_events_.push_back(clock_->record());
  backward_events_.push_back(-1);
  if (input.defined() && input.requires_grad()) {
    const size_t index = stages_.size() - 1;
    // The hook runs when this input's gradient is complete: the stage's backward has finished.
    input.register_hook([this, index](const at::Tensor& grad) {
      backward_events_[index] = clock_->record();
      return grad;
    });
  }
}

void StageTimer::end_forward(const at::Tensor& loss) {
  forward_end_ = clock_->record();
  if (loss.defined() && loss.requires_grad())
    loss.register_hook([this](const at::Tensor& grad) {
      backward_start_ = clock_->record();
      return grad;
    });
}

void StageTimer::finish() { finish_ = clock_->record(); }

std::vector<StageTimer::Split> StageTimer::collect() const {
  check(forward_end_ >= 0 && finish_ >= 0, "stage timer: no complete step recorded (begin_step, marks, "
        "end_forward, backward, finish)");
  std::vector<Split> out;
  int next_backward = backward_start_;  // the backward event of the stage after this one
  std::vector<double> backward(stages_.size(), 0.0);
  for (size_t i = stages_.size(); i-- > 0;) {
    if (backward_events_[i] >= 0 && next_backward >= 0) {
      backward[i] = clock_->ms(next_backward, backward_events_[i]);
      next_backward = backward_events_[i];
    }
  }
  for (size_t i = 0; i < stages_.size(); ++i) {
    const int to = i + 1 < stages_.size() ? forward_events_[i + 1] : forward_end_;
    out.push_back({stages_[i], clock_->ms(forward_events_[i], to), backward[i]});
  }
  if (next_backward >= 0) out.push_back({"rest", 0.0, clock_->ms(next_backward, finish_)});
  return out;
}

}  // namespace tessera
