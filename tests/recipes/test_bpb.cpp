// Bits per byte: the arithmetic against hand-computed values, and a uniform model's closed form through
// the real evaluation path (packer with cover_all, LM objective, evaluate, add_bits_per_byte).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>

#include "core/data/packer.h"
#include "core/error.h"
#include "core/train/trainer.h"
#include "objectives/lm.h"

namespace tessera {
namespace {

// Predicts the uniform distribution over its vocabulary whatever the input.
class UniformModel : public LanguageModel {
 public:
  explicit UniformModel(int64_t vocab) : vocab_(vocab) {}
  std::string arch() const override { return "uniform"; }
  int64_t vocab_size() const override { return vocab_; }
  int64_t max_seq_len() const override { return 1 << 20; }
  YAML::Node config_yaml() const override { return YAML::Node(); }
  FlopCount flops(int64_t) const override { return {}; }
  Outputs forward(const Batch& batch) override {
    Outputs out;
    out.logits = at::zeros({batch.batch_size(), batch.seq_len(), vocab_});
    return out;
  }
  std::unique_ptr<DecodeState> start_decoding(int64_t, int64_t) override { return nullptr; }
  at::Tensor step(const at::Tensor&, DecodeState&) override { return {}; }

 private:
  int64_t vocab_;
};

TEST(BitsPerByte, HandComputedCases) {
  EvalResult r;
  r.sum_nll = 10.0;
  r.tokens = 5;
  r.loss = 2.0;
  add_bits_per_byte(r, SplitSize{5, 8});
  EXPECT_TRUE(r.bits_per_byte_exact);
  EXPECT_NEAR(r.bits_per_byte, 10.0 / (std::log(2.0) * 8.0), 1e-12);  // 1.80337...
  EXPECT_NEAR(r.bits_per_byte, 1.8033688011112042, 1e-12);

  // A partial evaluation scales its mean loss by the split's targets per byte.
  EvalResult part;
  part.sum_nll = 3.0;
  part.tokens = 2;
  part.loss = 1.5;
  add_bits_per_byte(part, SplitSize{5, 8});
  EXPECT_FALSE(part.bits_per_byte_exact);
  EXPECT_NEAR(part.bits_per_byte, 1.5 * 5.0 / (std::log(2.0) * 8.0), 1e-12);
  EXPECT_THROW(add_bits_per_byte(part, SplitSize{5, 0}), Error);
}

TEST(BitsPerByte, PositionBucketsDoubleTowardTheEndOfTheRow) {
  EvalResult r;
  // 16 positions; position p has NLL sum p * ln 2 over 2 targets (1 target at position 15).
  for (int p = 0; p < 16; ++p) {
    r.position_count.push_back(p == 15 ? 1.0 : 2.0);
    r.position_sum_nll.push_back(p * std::log(2.0));
  }
  const auto buckets = position_buckets(r, SplitSize{31, 62}, 3);  // 2 bytes per target
  ASSERT_EQ(buckets.size(), 3u);
  const int64_t edges[4] = {0, 4, 8, 16};
  for (int b = 0; b < 3; ++b) {
    EXPECT_EQ(buckets[b].begin, edges[b]);
    EXPECT_EQ(buckets[b].end, edges[b + 1]);
  }
  // [0, 4): bits (0+1+2+3) over 8 targets; [8, 16): bits 8+...+15 over 15 targets.
  EXPECT_EQ(buckets[0].tokens, 8);
  EXPECT_NEAR(buckets[0].bits_per_token, 6.0 / 8.0, 1e-12);
  EXPECT_NEAR(buckets[0].bits_per_byte, 6.0 / 8.0 / 2.0, 1e-12);
  EXPECT_EQ(buckets[2].tokens, 15);
  EXPECT_NEAR(buckets[2].bits_per_token, 92.0 / 15.0, 1e-12);
  // A row too short to split into 5 buckets keeps the distinct ones; no data gives none.
  EvalResult tiny;
  tiny.position_count = {1, 1, 1};
  tiny.position_sum_nll = {0, 0, 0};
  EXPECT_EQ(position_buckets(tiny, SplitSize{3, 3}, 5).size(), 2u);  // [0, 1), [1, 3)
  EXPECT_TRUE(position_buckets(EvalResult{}, SplitSize{3, 3}).empty());
}

TEST(BitsPerByte, UniformModelGivesLog2VocabPerToken) {
  // 7 documents of byte ids (<bos>=1 ... <eos>=2), packed into rows that do not divide the stream.
  auto stream = std::make_shared<TokenStream>();
  int64_t bytes = 0;
  for (int d = 0; d < 7; ++d) {
    stream->tokens.push_back(1);
    stream->doc.push_back(d);
    for (int i = 0; i < 5 + 3 * d; ++i) {
      stream->tokens.push_back(4 + 'a' + (i + d) % 26);
      stream->doc.push_back(d);
      ++bytes;
    }
    stream->tokens.push_back(2);
    stream->doc.push_back(d);
  }
  stream->bytes = bytes;
  PackerOptions o;
  o.batch_size = 3;
  o.seq_len = 8;
  o.cover_all = true;
  PackedRowSource source(stream, VocabLayout::bytes(), o);
  UniformModel model(260);
  LMObjective objective;
  EvalResult r = evaluate(model, objective, source, 0, c10::Device(c10::kCPU), false);

  // Every token but the <bos> ones is a target exactly once: bytes + one <eos> per document.
  const SplitSize split{static_cast<int64_t>(stream->tokens.size()) - 7, bytes};
  EXPECT_EQ(r.tokens, bytes + 7);
  EXPECT_EQ(r.tokens, split.targets);
  // The NLL is computed in float32 (as in training): exact up to float32 rounding of log(260).
  EXPECT_NEAR(r.bits_per_token, std::log2(260.0), 1e-5);
  EXPECT_NEAR(r.perplexity, 260.0, 1e-3);
  add_bits_per_byte(r, split);
  EXPECT_TRUE(r.bits_per_byte_exact);
  EXPECT_NEAR(r.bits_per_byte, std::log2(260.0) * static_cast<double>(bytes + 7) / static_cast<double>(bytes), 1e-5);
}

}  // namespace
}  // namespace tessera
