#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/data/packer.h"
#include "core/vocab.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;

TEST(VocabLayout, BytesLayoutIsBltCompatible) {
  const VocabLayout v = VocabLayout::bytes();
  EXPECT_EQ(v.size(), 260);
  EXPECT_EQ(v.special_id("<boe>"), 0);
  EXPECT_EQ(v.special_id("<bos>"), 1);
  EXPECT_EQ(v.special_id("<eos>"), 2);
  EXPECT_EQ(v.modality("bytes").offset, 4);
  EXPECT_EQ(VocabLayout::from_json(v.to_json()), v);
  EXPECT_THROW(VocabLayout({"<pad>"}, {{"bytes", 3, 256}}), Error);  // gap after the specials
  try {
    require_same_layout(v, VocabLayout({"<pad>", "<bos>"}, {{"bytes", 2, 256}}), "shard x");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shard x uses vocabulary layout"), std::string::npos);
  }
}

// Documents as BLT byte ids (<bos>=1, byte b -> b + 4, <eos>=2), written out here independently.
std::shared_ptr<const TokenStream> stream_of(int docs) {
  auto s = std::make_shared<TokenStream>();
  for (int i = 0; i < docs; ++i) {
    const std::string text = "document number " + std::to_string(i) + " has some words in it.";
    s->tokens.push_back(1);
    for (unsigned char c : text) s->tokens.push_back(c + 4);
    s->tokens.push_back(2);
    s->doc.resize(s->tokens.size(), i);
    s->bytes += static_cast<int64_t>(text.size());
  }
  return s;
}

TEST(PackedRows, TargetsAreShiftedInputsAndDocIdsMarkBoundaries) {
  auto stream = stream_of(20);
  PackedRowSource src(stream, VocabLayout::bytes(), 3, 16, /*shuffle=*/false, 0);
  const Batch b = src.next();
  ASSERT_EQ(b.tokens.sizes(), (at::IntArrayRef{3, 16}));
  // Row r starts at token r * 16 of the stream; targets are the next tokens.
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t t = 0; t < 16; ++t) {
      EXPECT_EQ(b.tokens[r][t].item<int64_t>(), stream->tokens[r * 16 + t]);
      EXPECT_EQ(b.targets[r][t].item<int64_t>(), stream->tokens[r * 16 + t + 1]);
      const double mask = b.loss_mask[r][t].item<double>();
      EXPECT_EQ(mask, stream->tokens[r * 16 + t + 1] == 1 ? 0.0 : 1.0);  // <bos> targets are masked
    }
  // Doc ids increase by one at each <bos>, starting at 0 in every row.
  const at::Tensor d = b.doc_ids;
  for (int64_t r = 0; r < 3; ++r) {
    EXPECT_EQ(d[r][0].item<int64_t>(), 0);
    for (int64_t t = 1; t < 16; ++t) {
      const int64_t step = d[r][t].item<int64_t>() - d[r][t - 1].item<int64_t>();
      EXPECT_EQ(step, b.tokens[r][t].item<int64_t>() == 1 ? 1 : 0);
    }
  }
}

TEST(PackedRows, ShuffleIsDeterministicAndResumable) {
  auto stream = stream_of(60);
  PackedRowSource a(stream, VocabLayout::bytes(), 4, 32, true, 7);
  PackedRowSource b(stream, VocabLayout::bytes(), 4, 32, true, 7);
  PackedRowSource other_seed(stream, VocabLayout::bytes(), 4, 32, true, 8);
  bool differs = false;
  std::vector<at::Tensor> seen;
  for (int i = 0; i < 25; ++i) {  // crosses epoch boundaries
    const Batch x = a.next(), y = b.next(), z = other_seed.next();
    EXPECT_TRUE(at::equal(x.tokens, y.tokens));
    differs |= !at::equal(x.tokens, z.tokens);
    seen.push_back(x.tokens);
  }
  EXPECT_TRUE(differs);
  // Restore the state after batch 10 into a fresh source: it continues identically.
  PackedRowSource c(stream, VocabLayout::bytes(), 4, 32, true, 7);
  for (int i = 0; i < 10; ++i) c.next();
  const nlohmann::json state = c.state();
  PackedRowSource d(stream, VocabLayout::bytes(), 4, 32, true, 7);
  d.restore(state);
  for (int i = 10; i < 25; ++i) EXPECT_TRUE(at::equal(d.next().tokens, seen[i])) << i;
}

TEST(PackedRows, RanksSeeDisjointRows) {
  // Token i = i makes every row's content unique, so equal contents would mean the same row.
  auto unique = std::make_shared<TokenStream>();
  for (int32_t i = 0; i < 641; ++i) {
    unique->tokens.push_back(i);
    unique->doc.push_back(0);
  }
  std::shared_ptr<const TokenStream> stream = unique;
  PackedRowSource r0(stream, VocabLayout::bytes(), 1, 16, true, 3, 0, 2);
  PackedRowSource r1(stream, VocabLayout::bytes(), 1, 16, true, 3, 1, 2);
  EXPECT_EQ(r0.rows(), r1.rows());
  std::set<std::vector<int64_t>> rows0;
  for (int64_t i = 0; i < r0.rows(); ++i) {
    const at::Tensor t = r0.next().tokens.contiguous();
    rows0.insert(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
  }
  for (int64_t i = 0; i < r1.rows(); ++i) {
    const at::Tensor t = r1.next().tokens.contiguous();
    EXPECT_EQ(rows0.count(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel())), 0u);
  }
}

TEST(PackedRows, RestoreRejectsChangedData) {
  PackedRowSource a(stream_of(40), VocabLayout::bytes(), 2, 16, true, 3);
  PackedRowSource b(stream_of(80), VocabLayout::bytes(), 2, 16, true, 3);
  EXPECT_THROW(b.restore(a.state()), Error);
  EXPECT_THROW(PackedRowSource(stream_of(1), VocabLayout::bytes(), 2, 4096, true, 3), Error);
}

}  // namespace
}  // namespace tessera
