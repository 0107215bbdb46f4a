// StageTimer: the split of a step into its marked stages, forward by the marks and backward by the
// gradient hooks, with a stage whose input has no gradient timed forward only.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <chrono>

#include "core/error.h"
#include "core/train/stage_timer.h"

namespace tessera {
namespace {

TEST(StageTimer, SplitsForwardAndBackwardByStage) {
  at::manual_seed(0);
  const at::Tensor w1 = (at::randn({64, 64}) / 8).requires_grad_(true);
  const at::Tensor w2 = (at::randn({64, 64}) / 8).requires_grad_(true);
  StageTimer timer(c10::Device(c10::kCPU));
  const at::Tensor ids = at::arange(8, at::kLong);  // carries no gradient, like BLT's bytes
  for (int step = 0; step < 2; ++step) {
    timer.begin_step();
    const auto t0 = std::chrono::steady_clock::now();
    timer.mark("inputs", ids);
    at::Tensor x = at::randn({32, 64}).requires_grad_(true);
    timer.mark("first", x);
    at::Tensor h = at::matmul(x, w1).relu();
    timer.mark("second", h);
    const at::Tensor loss = at::matmul(h, w2).square().mean();
    timer.end_forward(loss);
    loss.backward();
    timer.finish();
    const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const auto split = timer.collect();
    ASSERT_EQ(split.size(), 4u);
    EXPECT_EQ(split[0].stage, "inputs");
    EXPECT_EQ(split[1].stage, "first");
    EXPECT_EQ(split[2].stage, "second");
    EXPECT_EQ(split[3].stage, "rest");
    EXPECT_EQ(split[0].backward_ms, 0.0);  // no hook on an input without gradient
    EXPECT_GT(split[1].backward_ms, 0.0);
    EXPECT_GT(split[2].backward_ms, 0.0);
    double total = 0;
    for (const auto& s : split) {
      EXPECT_GE(s.forward_ms, 0.0) << s.stage;
      EXPECT_GE(s.backward_ms, 0.0) << s.stage;
      total += s.forward_ms + s.backward_ms;
    }
    EXPECT_LE(total, wall);  // the stages partition (part of) the bracketed step
  }
}

TEST(StageTimer, CollectNeedsACompleteStep) {
  StageTimer timer(c10::Device(c10::kCPU));
  EXPECT_THROW(timer.collect(), Error);
  timer.begin_step();
  timer.mark("a", at::ones({2}));
  EXPECT_THROW(timer.collect(), Error);
  timer.end_forward(at::ones({}));
  EXPECT_THROW(timer.mark("late", at::ones({2})), Error);
}

}  // namespace
}  // namespace tessera
