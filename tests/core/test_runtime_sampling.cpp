#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "core/error.h"
#include "core/sampling.h"
#include "core/train/runtime.h"

namespace tessera {
namespace {

TEST(Runtime, Base64RoundTripsAnyBytes) {
  for (size_t n : {0, 1, 2, 3, 4, 5, 100}) {
    std::vector<uint8_t> data(n);
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<uint8_t>(i * 37 + 11);
    EXPECT_EQ(base64_decode(base64_encode(data.data(), data.size())), data);
  }
  const std::string text = "Man";
  EXPECT_EQ(base64_encode(reinterpret_cast<const uint8_t*>(text.data()), 3), "TWFu");  // RFC 4648 example
  EXPECT_THROW(base64_decode("abc"), Error);
}

TEST(Runtime, RngStateRestoresTheSameStream) {
  at::manual_seed(5);
  at::randn({3});
  const nlohmann::json state = capture_rng_state();
  const at::Tensor first = at::randn({10});
  at::randn({7});
  restore_rng_state(state);
  EXPECT_TRUE(at::equal(at::randn({10}), first));
}

TEST(Runtime, DeviceSelection) {
  EXPECT_TRUE(select_device("cpu").is_cpu());
  EXPECT_FALSE(use_bf16("auto", c10::Device(c10::kCPU)));
  EXPECT_TRUE(use_bf16("bf16", c10::Device(c10::kCPU)));
  if (!cuda_available()) {
    EXPECT_TRUE(select_device("auto").is_cpu());
    EXPECT_THROW(select_device("cuda"), Error);
  }
}

TEST(Sampling, GreedyAndDegenerateFiltersPickTheArgmax) {
  at::manual_seed(0);
  const at::Tensor logits = at::randn({4, 50});
  const at::Tensor argmax = logits.argmax(-1);
  at::Generator gen = at::detail::createCPUGenerator(1);
  SamplingConfig greedy{0.0, 0, 1.0, 0};
  EXPECT_TRUE(at::equal(sample_next(logits, greedy, gen), argmax));
  SamplingConfig top1{1.0, 1, 1.0, 0};
  EXPECT_TRUE(at::equal(sample_next(logits, top1, gen), argmax));
  SamplingConfig tiny_p{1.0, 0, 1e-6, 0};
  EXPECT_TRUE(at::equal(sample_next(logits, tiny_p, gen), argmax));
}

TEST(Sampling, TopKAndTopPKeepOnlyTheirSets) {
  // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps {0, 1}; top_k 3 keeps {0, 1, 2}.
  const at::Tensor logits = at::log(at::tensor({0.5, 0.3, 0.15, 0.05}, at::kFloat)).repeat({2000, 1});
  at::Generator gen = at::detail::createCPUGenerator(3);
  const at::Tensor p = sample_next(logits, SamplingConfig{1.0, 0, 0.7, 0}, gen);
  EXPECT_LE(p.max().item<int64_t>(), 1);
  // Renormalised: P(0) = 0.5 / 0.8 = 0.625.
  EXPECT_NEAR(p.eq(0).to(at::kDouble).mean().item<double>(), 0.625, 0.04);
  const at::Tensor k = sample_next(logits, SamplingConfig{1.0, 3, 1.0, 0}, gen);
  EXPECT_LE(k.max().item<int64_t>(), 2);
  EXPECT_GT(k.eq(2).sum().item<int64_t>(), 0);
}

TEST(Sampling, SameSeedSameDraws) {
  const at::Tensor logits = at::randn({8, 30});
  at::Generator g1 = at::detail::createCPUGenerator(42), g2 = at::detail::createCPUGenerator(42);
  const SamplingConfig c{0.9, 10, 0.9, 0};
  EXPECT_TRUE(at::equal(sample_next(logits, c, g1), sample_next(logits, c, g2)));
  EXPECT_THROW(validate(SamplingConfig{-1.0, 0, 1.0, 0}), Error);
  EXPECT_THROW(validate(SamplingConfig{1.0, 0, 0.0, 0}), Error);
}

}  // namespace
}  // namespace tessera
