// The packed-row loader over a TokenStore: shards give the same batches as the same tokens in memory;
// resume is exact with and without the prefetch worker; ranks, cover_all and worker errors.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <unistd.h>

#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "core/io/files.h"
#include "core/data/packer.h"
#include "core/data/shard.h"
#include "core/error.h"
#include "temp_dir.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;

using TempDir = test::ScratchDir;

using Docs = std::vector<std::vector<int64_t>>;

// Byte-layout documents: <bos> bytes <eos>, of random lengths.
Docs byte_docs(int n, uint64_t seed) {
  const VocabLayout v = VocabLayout::bytes();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> len(0, 60), byte(0, 255);
  Docs docs(n);
  for (auto& d : docs) {
    d.push_back(v.special_id("<bos>"));
    for (int i = len(rng); i > 0; --i) d.push_back(v.modality("bytes").offset + byte(rng));
    d.push_back(v.special_id("<eos>"));
  }
  return docs;
}

std::shared_ptr<const TokenStream> in_memory(const Docs& docs) {
  auto s = std::make_shared<TokenStream>();
  for (size_t d = 0; d < docs.size(); ++d)
    for (int64_t t : docs[d]) {
      s->tokens.push_back(static_cast<int32_t>(t));
      s->doc.push_back(static_cast<int32_t>(d));
    }
  s->bytes = static_cast<int64_t>(s->tokens.size());
  return s;
}

std::shared_ptr<const ShardedSplit> on_disk(const fs::path& dir, const Docs& docs, const VocabLayout& layout,
                                            int64_t shard_tokens) {
  ShardWriter writer(dir, "train", layout.size(), shard_tokens);
  for (const auto& d : docs) writer.add(d, static_cast<int64_t>(d.size()));
  DatasetIndex index;
  index.layout = layout;
  index.splits["train"] = writer.finish();
  index.save(dir);
  return ShardedSplit::open(dir, DatasetIndex::load(dir), "train", true);
}

PackerOptions options(int64_t batch, int64_t seq_len, bool shuffle, uint64_t seed, int prefetch = 0) {
  PackerOptions o;
  o.batch_size = batch;
  o.seq_len = seq_len;
  o.shuffle = shuffle;
  o.seed = seed;
  o.prefetch = prefetch;
  return o;
}

::testing::AssertionResult same_batch(const Batch& a, const Batch& b) {
  auto same = [](const at::Tensor& x, const at::Tensor& y) {
    return x.defined() == y.defined() && (!x.defined() || (x.sizes() == y.sizes() && at::equal(x, y)));
  };
  if (!same(a.tokens, b.tokens)) return ::testing::AssertionFailure() << "tokens differ";
  if (!same(a.targets, b.targets)) return ::testing::AssertionFailure() << "targets differ";
  if (!same(a.loss_mask, b.loss_mask)) return ::testing::AssertionFailure() << "loss_mask differs";
  if (!same(a.doc_ids, b.doc_ids)) return ::testing::AssertionFailure() << "doc_ids differ";
  return ::testing::AssertionSuccess();
}

TEST(Loader, ShardsGiveTheBatchesOfTheSameTokensInMemory) {
  TempDir dir("equal");
  const Docs docs = byte_docs(80, 1);
  auto memory = in_memory(docs);
  auto shards = on_disk(dir.path, docs, VocabLayout::bytes(), 97);  // rows span shard boundaries
  ASSERT_GE(shards->shards().size(), 10u);
  ASSERT_EQ(shards->size(), memory->size());

  std::vector<PackerOptions> variants = {options(4, 32, true, 5), options(3, 17, false, 0),
                                         options(2, 64, true, 9, /*prefetch=*/2)};
  variants.push_back(options(3, 17, false, 0));
  variants.back().cover_all = true;
  variants.push_back(options(4, 32, true, 5));
  variants.back().doc_mask = false;
  variants.push_back(options(2, 20, true, 5));
  variants.back().rank = 1;
  variants.back().world_size = 2;
  for (size_t v = 0; v < variants.size(); ++v) {
    PackedRowSource a(memory, VocabLayout::bytes(), variants[v]);
    PackedRowSource b(shards, VocabLayout::bytes(), variants[v]);
    ASSERT_EQ(a.rows(), b.rows());
    ASSERT_EQ(a.batches_per_epoch(), b.batches_per_epoch());
    for (int64_t i = 0; i < 3 * a.batches_per_epoch(); ++i) ASSERT_TRUE(same_batch(a.next(), b.next())) << v << ":" << i;
  }
  // The positional constructor is the options one with the new features off.
  PackedRowSource positional(shards, VocabLayout::bytes(), 4, 32, true, 5);
  PackedRowSource with_options(shards, VocabLayout::bytes(), options(4, 32, true, 5));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(same_batch(positional.next(), with_options.next()));
}

TEST(Loader, RowsAreWindowsOfTheStore) {
  TempDir dir("windows");
  const Docs docs = byte_docs(30, 2);
  auto shards = on_disk(dir.path, docs, VocabLayout::bytes(), 50);
  std::vector<int64_t> all;
  std::vector<int64_t> doc_of;
  for (size_t d = 0; d < docs.size(); ++d)
    for (int64_t t : docs[d]) {
      all.push_back(t);
      doc_of.push_back(static_cast<int64_t>(d));
    }
  const int64_t L = 24;
  PackedRowSource src(shards, VocabLayout::bytes(), options(2, L, false, 0));
  ASSERT_EQ(src.rows(), (static_cast<int64_t>(all.size()) - 1) / L);
  for (int64_t batch = 0; batch < 3; ++batch) {
    const Batch b = src.next();
    for (int64_t r = 0; r < 2; ++r) {
      const int64_t start = (batch * 2 + r) * L;  // unshuffled: rows in order
      for (int64_t t = 0; t < L; ++t) {
        EXPECT_EQ(b.tokens[r][t].item<int64_t>(), all[start + t]);
        EXPECT_EQ(b.targets[r][t].item<int64_t>(), all[start + t + 1]);
        EXPECT_EQ(b.loss_mask[r][t].item<float>(), all[start + t + 1] == 1 ? 0.0f : 1.0f);
        EXPECT_EQ(b.doc_ids[r][t].item<int64_t>(), doc_of[start + t] - doc_of[start]);
      }
    }
  }
}

TEST(Loader, SameSeedSameBatchesOtherSeedOtherOrder) {
  TempDir dir("seed");
  auto shards = on_disk(dir.path, byte_docs(60, 3), VocabLayout::bytes(), 200);
  PackedRowSource a(shards, VocabLayout::bytes(), options(4, 32, true, 7));
  PackedRowSource b(shards, VocabLayout::bytes(), options(4, 32, true, 7, /*prefetch=*/1));
  PackedRowSource c(shards, VocabLayout::bytes(), options(4, 32, true, 8));
  bool differs = false;
  std::multiset<std::vector<int64_t>> rows_a, rows_c;
  for (int64_t i = 0; i < a.batches_per_epoch(); ++i) {
    const Batch x = a.next(), y = b.next(), z = c.next();
    EXPECT_TRUE(same_batch(x, y)) << i;
    differs |= !at::equal(x.tokens, z.tokens);
    for (int64_t r = 0; r < 4; ++r) {
      const at::Tensor rx = x.tokens[r].contiguous(), rz = z.tokens[r].contiguous();
      rows_a.insert({rx.data_ptr<int64_t>(), rx.data_ptr<int64_t>() + rx.numel()});
      rows_c.insert({rz.data_ptr<int64_t>(), rz.data_ptr<int64_t>() + rz.numel()});
    }
  }
  EXPECT_TRUE(differs);
  // Another order, not other data: with every row in full batches, an epoch holds the same rows.
  if (a.rows() % 4 == 0) {
    EXPECT_EQ(rows_a, rows_c);
  }
}

void check_resume(int prefetch) {
  TempDir dir("resume_" + std::to_string(prefetch));
  auto shards = on_disk(dir.path, byte_docs(50, 4), VocabLayout::bytes(), 150);
  PackedRowSource reference(shards, VocabLayout::bytes(), options(3, 16, true, 11));
  const int n = static_cast<int>(3 * reference.batches_per_epoch()) + 2;  // crosses epochs
  std::vector<Batch> expected;
  std::vector<nlohmann::json> states;
  for (int i = 0; i < n; ++i) {
    expected.push_back(reference.next());
    states.push_back(reference.state());
  }
  const int bpe = static_cast<int>(reference.batches_per_epoch());
  for (int k : {1, 7, bpe, 2 * bpe + 1}) {  // mid-epoch, at an epoch's end, in a later epoch
    PackedRowSource a(shards, VocabLayout::bytes(), options(3, 16, true, 11, prefetch));
    for (int i = 0; i < k; ++i) ASSERT_TRUE(same_batch(a.next(), expected[i])) << i;
    // The state is the consumer's position, however far the worker has run ahead.
    const nlohmann::json state = a.state();
    EXPECT_EQ(state, states[k - 1]);
    PackedRowSource b(shards, VocabLayout::bytes(), options(3, 16, true, 11, prefetch));
    b.restore(state);
    for (int i = k; i < n; ++i) ASSERT_TRUE(same_batch(b.next(), expected[i])) << "k=" << k << " i=" << i;
    // Restoring or resetting a source whose worker is running restarts it at the new position.
    a.next();
    a.restore(state);
    for (int i = k; i < k + 3; ++i) ASSERT_TRUE(same_batch(a.next(), expected[i])) << i;
    a.reset();
    ASSERT_TRUE(same_batch(a.next(), expected[0]));
  }
}

TEST(Loader, ResumeIsExactWithoutPrefetch) { check_resume(0); }
TEST(Loader, ResumeIsExactWithPrefetch) { check_resume(3); }

TEST(Loader, RanksSeeDisjointRowsOfEqualCounts) {
  // Token i = 3 + i everywhere (uint32 shards), so equal contents would mean the same row.
  TempDir dir("ranks");
  const VocabLayout layout({"<pad>", "<bos>", "<eos>"}, {{"ids", 3, 70000}});
  Docs docs(1);
  for (int64_t i = 0; i < 1000; ++i) {
    if (i % 90 == 0) docs.emplace_back();
    docs.back().push_back(3 + i);
  }
  auto shards = on_disk(dir.path, docs, layout, 128);
  const int64_t L = 16, total_rows = (1000 - 1) / L;
  std::vector<std::set<std::vector<int64_t>>> seen(2);
  std::vector<int64_t> counts(2);
  for (int64_t rank = 0; rank < 2; ++rank) {
    PackerOptions o = options(1, L, true, 3, static_cast<int>(rank));  // rank 1 also runs the worker
    o.rank = rank;
    o.world_size = 2;
    PackedRowSource src(shards, layout, o);
    counts[rank] = src.rows();
    for (int64_t i = 0; i < src.rows(); ++i) {
      const at::Tensor t = src.next().tokens.contiguous();
      seen[rank].insert({t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()});
    }
  }
  EXPECT_EQ(counts[0], counts[1]);
  EXPECT_EQ(counts[0], total_rows / 2);
  EXPECT_EQ(static_cast<int64_t>(seen[0].size()), counts[0]);  // no row twice within a rank
  for (const auto& row : seen[1]) EXPECT_EQ(seen[0].count(row), 0u);
  // Every row is a window starting at a multiple of L.
  for (const auto& s : seen)
    for (const auto& row : s) EXPECT_EQ((row[0] - 3) % L, 0);
}

TEST(Loader, CoverAllMakesEveryTargetCountOnce) {
  // Ids unique except <bos>, so a target's value says which position it is.
  TempDir dir("cover");
  const VocabLayout layout({"<pad>", "<bos>", "<eos>"}, {{"ids", 3, 1000}});
  const int64_t pad = 0, bos = 1, L = 16;
  const int64_t n = L * 10 + 5;  // 11 rows, the last short; odd, so with two ranks one gets a padding row
  std::mt19937 rng(8);
  Docs docs;
  std::vector<int64_t> all;
  int64_t next_id = 3;
  while (static_cast<int64_t>(all.size()) < n) {
    docs.emplace_back();
    const int len = std::uniform_int_distribution<int>(1, 30)(rng);
    for (int i = 0; i < len && static_cast<int64_t>(all.size()) < n; ++i) {
      docs.back().push_back(i == 0 ? bos : next_id++);
      all.push_back(docs.back().back());
    }
  }
  // Expected: every position 1..n-1 whose token is not <bos>, once.
  std::map<int64_t, int> expected;
  for (int64_t i = 1; i < n; ++i)
    if (all[i] != bos) expected[all[i]] = 1;
  auto shards = on_disk(dir.path, docs, layout, 40);

  for (int64_t world : {1, 2})
    for (bool shuffle : {false, true}) {
      std::map<int64_t, int> counted;
      double mask_sum = 0;
      std::vector<int64_t> batches(world);
      for (int64_t rank = 0; rank < world; ++rank) {
        PackerOptions o = options(3, L, shuffle, 5, shuffle ? 2 : 0);
        o.cover_all = true;
        o.rank = rank;
        o.world_size = world;
        PackedRowSource src(shards, layout, o);
        batches[rank] = src.batches_per_epoch();
        for (int64_t b = 0; b < src.batches_per_epoch(); ++b) {
          const Batch batch = src.next();
          mask_sum += batch.loss_mask.sum().item<double>();
          const auto targets = batch.targets.flatten(), mask = batch.loss_mask.flatten();
          for (int64_t i = 0; i < targets.numel(); ++i) {
            const int64_t t = targets[i].item<int64_t>();
            if (mask[i].item<float>() > 0) ++counted[t];
            if (t == pad || t == bos) {
              EXPECT_EQ(mask[i].item<float>(), 0.0f);
            }
          }
        }
      }
      EXPECT_EQ(counted, expected) << "world " << world << " shuffle " << shuffle;
      const int64_t bos_targets = std::count(all.begin() + 1, all.end(), bos);
      EXPECT_EQ(mask_sum, static_cast<double>(n - 1 - bos_targets));
      EXPECT_EQ(batches.front(), batches.back());  // ranks stay in step
    }

  // The last row is padded with <pad> and its padding is a document of its own.
  PackerOptions o = options(11, L, false, 0);
  o.cover_all = true;
  PackedRowSource src(shards, layout, o);
  const Batch b = src.next();
  ASSERT_EQ(b.batch_size(), 11);
  const int64_t real = n - 10 * L;  // tokens in the last row
  for (int64_t t = real; t < L; ++t) EXPECT_EQ(b.tokens[10][t].item<int64_t>(), pad);
  EXPECT_GT(b.doc_ids[10][real].item<int64_t>(), b.doc_ids[10][real - 1].item<int64_t>());
  // Without cover_all the short row is dropped.
  EXPECT_EQ(PackedRowSource(shards, layout, options(1, L, false, 0)).rows(), 10);
}

TEST(Loader, TooLittleDataOrNoPadIdIsAClearError) {
  auto tiny = in_memory({{1, 4, 5, 6, 7, 8, 9, 10, 11, 2}});  // 10 tokens
  PackerOptions o = options(1, 8, false, 0);
  o.world_size = 2;
  try {
    PackedRowSource(tiny, VocabLayout::bytes(), o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("per rank"), std::string::npos) << e.what();
  }
  o = options(1, 4, false, 0);
  o.cover_all = true;
  EXPECT_THROW(PackedRowSource(tiny, VocabLayout({"<bos>"}, {{"bytes", 1, 256}}), o), Error);
}

// Fails every read that reaches token `fail_from`.
class FailingStore : public TokenStore {
 public:
  FailingStore(std::shared_ptr<const TokenStore> inner, int64_t fail_from)
      : inner_(std::move(inner)), fail_from_(fail_from) {}
  int64_t size() const override { return inner_->size(); }
  int64_t text_bytes() const override { return inner_->text_bytes(); }
  void read(int64_t begin, int64_t n, int64_t* tokens, int64_t* doc_index) const override {
    if (begin + n > fail_from_) fail("injected read failure at token ", begin);
    inner_->read(begin, n, tokens, doc_index);
  }

 private:
  std::shared_ptr<const TokenStore> inner_;
  int64_t fail_from_;
};

TEST(Loader, PrefetchWorkerErrorsReachTheConsumer) {
  const int64_t L = 8;
  auto store = std::make_shared<FailingStore>(in_memory(byte_docs(20, 6)), 5 * L + 1);  // row 5 fails
  PackedRowSource plain(store, VocabLayout::bytes(), options(1, L, false, 0));
  PackedRowSource src(store, VocabLayout::bytes(), options(1, L, false, 0, /*prefetch=*/3));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(same_batch(src.next(), plain.next()));
  for (int attempt = 0; attempt < 2; ++attempt) {  // a failed batch fails again, it is not skipped
    try {
      src.next();
      FAIL() << "the worker's error was lost";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("injected read failure"), std::string::npos) << e.what();
    }
    EXPECT_EQ(src.state().at("cursor"), 5);
  }
  // Restoring an earlier position restarts the worker there.
  nlohmann::json state = src.state();
  state["cursor"] = 2;
  src.restore(state);
  PackedRowSource again(store, VocabLayout::bytes(), options(1, L, false, 0));
  again.restore(state);
  EXPECT_TRUE(same_batch(src.next(), again.next()));
}

TEST(Loader, DestroyingASourceStopsItsWorker) {
  auto memory = in_memory(byte_docs(40, 7));
  for (int taken : {0, 1, 5}) {
    PackedRowSource src(memory, VocabLayout::bytes(), options(2, 16, true, 1, /*prefetch=*/2));
    for (int i = 0; i < taken; ++i) src.next();
    // The worker is blocked on a full queue; the destructor must wake and join it.
  }
}

}  // namespace
}  // namespace tessera
