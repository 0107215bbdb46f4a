#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/flops.h"
#include "core/train/schedule.h"

namespace tessera {
namespace {

TEST(Schedule, WarmupIsLinearFromZero) {
  ScheduleConfig c{"cosine", 1.0, 0.1, 10, 100, 0.2};
  EXPECT_DOUBLE_EQ(learning_rate(c, 0), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(c, 4), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(c, 9), 1.0);
}

TEST(Schedule, CosineMatchesClosedForm) {
  ScheduleConfig c{"cosine", 2.0, 0.1, 10, 110, 0.2};
  const int64_t last = 109;
  for (int64_t s : {10, 35, 60, 85, 109}) {
    const double progress = static_cast<double>(s - 10) / (last - 10);
    const double expected = 0.2 + 0.5 * (2.0 - 0.2) * (1 + std::cos(M_PI * progress));
    EXPECT_NEAR(learning_rate(c, s), expected, 1e-12) << s;
  }
  EXPECT_NEAR(learning_rate(c, 10), 2.0, 1e-12);
  EXPECT_NEAR(learning_rate(c, last), 0.2, 1e-12);
}

TEST(Schedule, WarmupStableDecay) {
  ScheduleConfig c{"wsd", 1.0, 0.0, 5, 100, 0.2};  // decay over the last 20 steps: 80..99
  EXPECT_DOUBLE_EQ(learning_rate(c, 50), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(c, 79), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(c, 80), 1.0);
  EXPECT_NEAR(learning_rate(c, 99), 0.0, 1e-12);
  EXPECT_NEAR(learning_rate(c, 89), 1.0 - 9.0 / 19.0, 1e-12);
}

TEST(Schedule, Constant) {
  ScheduleConfig c{"constant", 0.5, 0.1, 2, 10, 0.2};
  EXPECT_DOUBLE_EQ(learning_rate(c, 0), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(c, 7), 0.5);
}

TEST(Flops, CausalAttendedIsMeanKeysPerQuery) {
  // Full causal over T: query i sees i + 1 keys -> mean (T + 1) / 2.
  EXPECT_DOUBLE_EQ(causal_attended(8), 4.5);
  // Window 2 over T = 4: keys seen 1, 2, 2, 2 -> 7 / 4.
  EXPECT_DOUBLE_EQ(causal_attended(4, 2), 7.0 / 4.0);
  EXPECT_DOUBLE_EQ(causal_attended(4, 10), 2.5);
}

TEST(Flops, TransformerFlopsFollowTheStatedConvention) {
  // 6 per matmul parameter per token plus 6 * L * d * attended (QK^T and AV, x3 for training).
  const FlopCount f = transformer_flops(1000, 2, 16, 4.5);
  EXPECT_DOUBLE_EQ(f.inference_per_token, 2.0 * 1000 + 2.0 * 2.0 * 4.5 * 16 * 2);
  EXPECT_DOUBLE_EQ(f.train_per_token, 3.0 * f.inference_per_token);
  EXPECT_EQ(f.matmul_params, 1000);
}

TEST(Flops, PerByteDividesByBytesPerToken) {
  // A BPE model at 2.5 bytes per token: 6,000 training FLOPs per token are 2,400 per byte.
  FlopCount f;
  f.train_per_token = 6000;
  f.inference_per_token = 2000;
  f.matmul_params = 1000;
  const FlopCount b = per_byte(f, 2.5);
  EXPECT_DOUBLE_EQ(b.train_per_token, 2400);
  EXPECT_DOUBLE_EQ(b.inference_per_token, 800);
  EXPECT_EQ(b.matmul_params, 1000);
  EXPECT_DOUBLE_EQ(per_byte(f, 1.0).train_per_token, 6000);  // byte-level: unchanged
  EXPECT_THROW(per_byte(f, 0.0), Error);
}

}  // namespace
}  // namespace tessera
