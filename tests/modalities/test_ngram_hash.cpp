// BLT hash n-gram ids against the notes' golden table (blt_megabyte.md §1.2, §8.2) and an
// arbitrary-precision emulation of the released int64 wrap-around + floor remainder.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <random>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "modalities/bytes/ngram_hash.h"
#include "modalities_test_util.h"

namespace tessera {
namespace {

using blt::NgramHashConfig;
using testing::contains;
using testing::what_of;

// "Hello, world!" with BOS and no EOS, as BLT ids (notes §1.2).
const std::vector<int64_t> kHelloIds = {1, 76, 105, 112, 112, 115, 48, 36, 123, 115, 118, 112, 104, 37};

// Notes §1.2 golden table, f = 0, V = 500002, n = 3..8 (the official algorithm under PyTorch 2.11 for
// n = 3 and 8, an exact big-integer emulation of the same semantics for all n; recomputed for this
// test with Python integers, identical).
const std::vector<std::vector<int64_t>> kHelloHashes = {
    {443987, 124875, 393970, 386145, 358223, 190185, 141703, 484917, 141967, 146186, 10172, 334275, 306354, 205291},
    {437197, 433869, 117936, 254402, 246577, 30240, 114083, 12253, 461502, 217488, 33292, 467104, 390141, 114099},
    {123201, 168913, 27892, 170862, 307328, 265602, 426354, 435293, 113380, 384029, 106114, 86218, 437928, 431048},
    {166353, 160907, 92310, 405250, 48218, 280239, 83968, 362502, 28514, 86291, 48991, 483472, 343264, 40427},
    {34117, 338221, 15158, 281878, 94816, 340137, 303839, 101668, 427355, 320433, 480561, 142061, 303606, 395081},
    {172383, 205585, 456240, 129346, 299568, 322649, 430431, 246559, 94549, 155186, 258407, 498251, 491201, 418709}};

at::Tensor ids_tensor(const std::vector<int64_t>& v) { return at::tensor(v, at::kLong); }

TEST(NgramHash, GoldenHelloWorldTable) {
  std::vector<int64_t> encoded = {1};
  for (const unsigned char c : std::string("Hello, world!")) encoded.push_back(c + 4);
  ASSERT_EQ(encoded, kHelloIds);
  const at::Tensor x = ids_tensor(kHelloIds);
  for (int64_t n = 3; n <= 8; ++n) {
    const at::Tensor expect = ids_tensor(kHelloHashes[n - 3]);
    EXPECT_TRUE(at::equal(blt::ngram_hash_ids(x, n), expect)) << "n=" << n;                 // [T]
    EXPECT_TRUE(at::equal(blt::ngram_hash_ids(x.unsqueeze(0), n)[0], expect)) << "n=" << n;  // [1, T]
    EXPECT_TRUE(at::equal(blt::detail::ngram_hash_ids_tensor_ops(x, n, 0, blt::kHashVocab), expect)) << "n=" << n;
  }
  // All tables in the released order (function-major, then n = 3..8).
  const at::Tensor all = blt::ngram_hash_ids(x.unsqueeze(0), NgramHashConfig{});
  ASSERT_EQ(all.sizes(), (std::vector<int64_t>{6, 1, 14}));
  for (int64_t k = 0; k < 6; ++k) EXPECT_TRUE(at::equal(all[k][0], ids_tensor(kHelloHashes[k])));
}

TEST(NgramHash, OverflowWindowOfEight259s) {
  // h = Σ 259·a^j wraps int64 (a^3 and up already overflow); positions 0, 1 and 3 (and f = 2's full
  // window) have negative h, which must still give non-negative ids. Expected values from an exact
  // Python-integer emulation: reduce mod 2^64, read as signed, then floor-mod V.
  const at::Tensor x = at::full({8}, 259, at::kLong);
  const at::Tensor expect = ids_tensor({402217, 168436, 499951, 400308, 151025, 494166, 459983, 460242});
  EXPECT_TRUE(at::equal(blt::ngram_hash_ids(x, 8), expect));
  EXPECT_TRUE(at::equal(blt::detail::ngram_hash_ids_tensor_ops(x, 8, 0, blt::kHashVocab), expect));
  // The full window under every released prime.
  const std::vector<int64_t> per_function = {460242, 244098, 373212, 242630, 259332, 420906,
                                             127946, 193886, 412264, 436608, 176722};
  for (int64_t f = 0; f < 11; ++f) {
    EXPECT_EQ(blt::ngram_hash_ids(x, 8, f)[7].item<int64_t>(), per_function[f]) << "f=" << f;
    EXPECT_EQ(blt::detail::ngram_hash_ids_tensor_ops(x, 8, f, blt::kHashVocab)[7].item<int64_t>(), per_function[f]);
  }
}

TEST(NgramHash, BothPathsAgreeOnRandomRowsAndStayInRange) {
  std::mt19937_64 rng(42);
  at::manual_seed(42);
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t rows = 1 + static_cast<int64_t>(rng() % 4), len = 1 + static_cast<int64_t>(rng() % 200);
    const int64_t n = 1 + static_cast<int64_t>(rng() % 10), f = static_cast<int64_t>(rng() % 11);
    const int64_t vocab = trial % 3 == 0 ? 7 : trial % 3 == 1 ? blt::kHashVocab : 1 + static_cast<int64_t>(rng() % 100000);
    const at::Tensor x = at::randint(0, 260, {rows, len}, at::kLong);
    const at::Tensor a = blt::ngram_hash_ids(x, n, f, vocab);
    const at::Tensor b = blt::detail::ngram_hash_ids_tensor_ops(x, n, f, vocab);
    ASSERT_TRUE(at::equal(a, b)) << "n=" << n << " f=" << f << " vocab=" << vocab;
    EXPECT_TRUE(a.ge(0).logical_and(a.lt(vocab)).all().item<bool>());
    // Each row is hashed on its own, and position i depends only on the n ids ending at i: the ids of
    // a prefix are the prefix of the ids.
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_TRUE(at::equal(blt::ngram_hash_ids(x[r], n, f, vocab), a[r]));
      const int64_t cut = 1 + static_cast<int64_t>(rng() % len);
      EXPECT_TRUE(at::equal(blt::ngram_hash_ids(x[r].slice(0, 0, cut), n, f, vocab), a[r].slice(0, 0, cut)));
    }
  }
}

TEST(NgramHash, EarlyPositionsHashZeroPaddedWindows) {
  // The first n−1 positions are not skipped (paper footnote) but hashed with zeros on the left: the
  // same ids as for the row with n−1 explicit zeros (BOE) in front.
  const at::Tensor x = ids_tensor(kHelloIds);
  for (int64_t n = 3; n <= 8; ++n) {
    const at::Tensor padded = at::cat({at::zeros({n - 1}, at::kLong), x});
    EXPECT_TRUE(at::equal(blt::ngram_hash_ids(padded, n).slice(0, n - 1), blt::ngram_hash_ids(x, n)));
  }
  // The oldest id gets a^0: a bigram (x0, x1) hashes to x0 + x1·a, not x0·a + x1.
  const int64_t a = blt::kHashPrimes[0];
  EXPECT_EQ(blt::ngram_hash_ids(ids_tensor({5, 7}), 2, 0, 1000000000000000)[1].item<int64_t>(), 5 + 7 * a);
  // A window of zeros hashes to 0 (and n = 1 is the id itself modulo V).
  EXPECT_EQ(blt::ngram_hash_ids(ids_tensor({0, 0, 0}), 3)[2].item<int64_t>(), 0);
  EXPECT_TRUE(at::equal(blt::ngram_hash_ids(ids_tensor({3, 259, 10}), 1, 0, 100), ids_tensor({3, 59, 10})));
}

TEST(NgramHash, FusedOffsetsIndexOneTable) {
  at::manual_seed(1);
  NgramHashConfig c;
  c.ngram_sizes = {2, 3};
  c.num_hash_functions = 3;
  c.vocab = 1000;
  const at::Tensor x = at::randint(0, 260, {2, 30}, at::kLong);
  const at::Tensor plain = blt::ngram_hash_ids(x, c);
  const at::Tensor fused = blt::ngram_hash_ids(x, c, true);
  ASSERT_EQ(plain.sizes(), (std::vector<int64_t>{6, 2, 30}));
  for (int64_t k = 0; k < 6; ++k) {
    const int64_t f = k / 2, n = c.ngram_sizes[k % 2];  // function-major order
    EXPECT_TRUE(at::equal(plain[k], blt::ngram_hash_ids(x, n, f, 1000)));
    EXPECT_TRUE(at::equal(fused[k], plain[k] + k * 1000));
  }
  EXPECT_EQ(c.num_tables(), 6);
}

TEST(NgramHash, ConfigParsesFromYamlWithReleasedDefaults) {
  const NgramHashConfig d;
  EXPECT_EQ(d.ngram_sizes, (std::vector<int64_t>{3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(d.num_hash_functions, 1);
  EXPECT_EQ(d.vocab, 500002);
  const auto c = config::parse<NgramHashConfig>(
      config::load_yaml_string("ngram_sizes: [4]\nnum_hash_functions: 3\nvocab: 50002\n", "hash.yaml"));
  EXPECT_EQ(c.ngram_sizes, (std::vector<int64_t>{4}));  // the repo's debug config
  EXPECT_EQ(c.num_hash_functions, 3);
  EXPECT_EQ(c.vocab, 50002);
  EXPECT_THROW(config::parse<NgramHashConfig>(config::load_yaml_string("vocab_size: 3\n", "hash.yaml")), Error);
}

TEST(NgramHash, BadInputsGiveClearErrors) {
  const at::Tensor x = ids_tensor({1, 2, 3});
  EXPECT_TRUE(contains(what_of([&] { blt::ngram_hash_ids(x.to(at::kFloat), 3); }), "integer ids"));
  EXPECT_TRUE(contains(what_of([&] { blt::ngram_hash_ids(x.reshape({1, 1, 3}), 3); }), "[T] or [B, T]"));
  EXPECT_TRUE(contains(what_of([&] { blt::ngram_hash_ids(ids_tensor({1, -1, 3}), 3); }), "found -1"));
  EXPECT_TRUE(contains(what_of([&] { blt::ngram_hash_ids(x, 0); }), "n-gram size must be >= 1"));
  EXPECT_TRUE(contains(what_of([&] { blt::ngram_hash_ids(x, 3, 11); }), "hash function 11 does not exist"));
  EXPECT_TRUE(contains(what_of([&] { blt::ngram_hash_ids(x, 3, 0, 0); }), "vocab must be >= 1"));
  EXPECT_TRUE(contains(what_of([&] { blt::ngram_hash_ids(at::Tensor(), 3); }), "missing"));
  NgramHashConfig c;
  c.num_hash_functions = 12;
  EXPECT_TRUE(contains(what_of([&] { blt::ngram_hash_ids(x, c); }), "num_hash_functions must be 1..11"));
  c = NgramHashConfig{};
  c.ngram_sizes = {};
  EXPECT_TRUE(contains(what_of([&] { blt::ngram_hash_ids(x, c); }), "ngram_sizes is empty"));
  // Empty rows are fine.
  EXPECT_EQ(blt::ngram_hash_ids(at::zeros({2, 0}, at::kLong), 3).sizes(), (std::vector<int64_t>{2, 0}));
}

}  // namespace
}  // namespace tessera
