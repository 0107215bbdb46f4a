// BLT entropies beside the shards: the chunked pass equals the entropy function over whole documents
// when the function's receptive field fits the context, the loader serves them aligned with the
// tokens, and stale or missing sidecars are errors that say to recompute.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <fstream>
#include <random>
#include <vector>

#include "core/data/entropies.h"
#include "core/data/packer.h"
#include "core/data/shard.h"
#include "core/error.h"
#include "temp_dir.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;

constexpr int64_t kReach = 5;  // the stand-in entropy model sees the last kReach tokens of the document

// A causal, document-local stand-in for an entropy model with a receptive field of kReach tokens: the
// value at i is (token i mod 7) + the number of its document's tokens among i-kReach+1..i-1, small
// integers that float16 holds exactly.
at::Tensor stand_in_entropies(const at::Tensor& tokens, const at::Tensor& docs) {
  const auto t = tokens.accessor<int64_t, 2>();
  const auto d = docs.accessor<int64_t, 2>();
  at::Tensor out = at::zeros(tokens.sizes(), at::kFloat);
  auto o = out.accessor<float, 2>();
  for (int64_t b = 0; b < tokens.size(0); ++b)
    for (int64_t i = 0; i < tokens.size(1); ++i) {
      int64_t seen = 0;
      for (int64_t j = std::max<int64_t>(0, i - kReach + 1); j < i; ++j) seen += d[b][j] == d[b][i];
      o[b][i] = static_cast<float>(t[b][i] % 7 + seen);
    }
  return out;
}

struct Dataset {
  DatasetIndex index;
  std::vector<int64_t> tokens;  // the train split's token stream
  std::vector<float> expected;  // stand_in over each whole document
};

Dataset write_dataset(const fs::path& dir) {
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int> len(1, 30), id(4, 259);
  Dataset out;
  ShardWriter writer(dir, "train", 260, 100);  // several shards, documents never split
  for (int doc = 0; doc < 40; ++doc) {
    std::vector<int64_t> t(len(rng));
    for (auto& x : t) x = id(rng);
    writer.add(t, static_cast<int64_t>(t.size()));
    for (size_t i = 0; i < t.size(); ++i) {
      out.tokens.push_back(t[i]);
      out.expected.push_back(static_cast<float>(t[i] % 7 + std::min<int64_t>(static_cast<int64_t>(i), kReach - 1)));
    }
  }
  out.index.layout = VocabLayout::bytes();
  out.index.splits["train"] = writer.finish();
  out.index.save(dir);
  return out;
}

TEST(Entropies, ChunkedPassEqualsWholeDocumentsWhenTheContextCoversTheReach) {
  test::ScratchDir dir("entropies_pass");
  const Dataset data = write_dataset(dir.path);
  ASSERT_GT(data.index.split("train").shards.size(), 2u);
  EntropyPassOptions options;
  options.chunk = 7;  // rows cut documents everywhere; the context restores their past
  options.context = kReach - 1;
  options.batch_size = 3;
  options.quiet = true;
  const nlohmann::json identity = {{"checkpoint", "stand-in"}, {"weights_crc32", 42}};
  const EntropyPassResult result = compute_dataset_entropies(dir.path, data.index, stand_in_entropies, options, identity);
  EXPECT_EQ(result.tokens, static_cast<int64_t>(data.tokens.size()));
  ASSERT_TRUE(has_entropies(dir.path));
  EXPECT_EQ(read_entropies_info(dir.path, data.index).at("entropy_model"), identity);

  // The split's store serves them; the loader puts them beside the tokens of every row.
  auto split = ShardedSplit::open(dir.path, data.index, "train", true);
  EXPECT_FALSE(split->has_entropies());
  split->attach_entropies(dir.path);
  ASSERT_TRUE(split->has_entropies());
  std::vector<float> all(data.tokens.size());
  split->read_entropies(0, static_cast<int64_t>(all.size()), all.data());
  EXPECT_EQ(all, data.expected);
  PackerOptions packing;
  packing.batch_size = 4;
  packing.seq_len = 16;
  packing.shuffle = true;
  packing.seed = 9;
  PackedRowSource source(split, VocabLayout::bytes(), packing);
  for (int b = 0; b < 3; ++b) {
    const Batch batch = source.next();
    ASSERT_TRUE(batch.entropies.defined());
    ASSERT_EQ(batch.entropies.sizes(), batch.tokens.sizes());
    for (int64_t r = 0; r < batch.tokens.size(0); ++r) {
      // Find the row in the stream by its tokens' position: rows start at multiples of seq_len.
      bool found = false;
      for (size_t start = 0; start + 16 <= data.tokens.size() && !found; start += 16) {
        bool same = true;
        for (int64_t t = 0; t < 16 && same; ++t) same = batch.tokens[r][t].item<int64_t>() == data.tokens[start + t];
        if (!same) continue;
        found = true;
        for (int64_t t = 0; t < 16; ++t) EXPECT_EQ(batch.entropies[r][t].item<float>(), data.expected[start + t]);
      }
      EXPECT_TRUE(found);
    }
  }

  // A context shorter than the reach loses part of the past: the values differ where rows cut documents.
  options.context = 1;
  compute_dataset_entropies(dir.path, data.index, stand_in_entropies, options, identity);
  auto short_split = ShardedSplit::open(dir.path, data.index, "train", true);
  short_split->attach_entropies(dir.path);
  short_split->read_entropies(0, static_cast<int64_t>(all.size()), all.data());
  EXPECT_NE(all, data.expected);
}

TEST(Entropies, StaleOrMissingSidecarsAreErrorsThatSayToRecompute) {
  test::ScratchDir dir("entropies_stale");
  Dataset data = write_dataset(dir.path);
  EntropyPassOptions options;
  options.quiet = true;
  compute_dataset_entropies(dir.path, data.index, stand_in_entropies, options, {{"checkpoint", "x"}});
  // The shards were prepared again (another CRC-32): the recorded pass no longer applies.
  DatasetIndex changed = data.index;
  changed.splits["train"].shards[0].crc32 = "00000000";
  try {
    read_entropies_info(dir.path, changed);
    FAIL() << "stale entropies accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tessera patch entropies"), std::string::npos) << e.what();
  }
  const std::string first = data.index.split("train").shards[0].file;
  fs::remove(dir.path / entropies_file_name(first));
  auto split = ShardedSplit::open(dir.path, data.index, "train", true);
  try {
    split->attach_entropies(dir.path);
    FAIL() << "missing sidecar accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(entropies_file_name(first)), std::string::npos) << e.what();
  }
  EXPECT_EQ(entropies_file_name("val_00002.bin"), "val_00002.entropies.safetensors");
}

}  // namespace
}  // namespace tessera
