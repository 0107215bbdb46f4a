// BLT patchers against the notes' golden example (blt_megabyte.md §2.2, §8.3), a tensor-op
// transliteration of the released patcher (facebookresearch/blt bytelatent/data/patcher.py at 9774ed4),
// and the invariants of §8.4–8.6: incremental property, sums, max_patch_length, ids and calibration.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/vocab.h"
#include "modalities/bytes/patching.h"
#include "modalities_test_util.h"

namespace tessera {
namespace {

using blt::Patcher;
using blt::PatcherConfig;
using testing::contains;
using testing::what_of;

// ---- helpers ------------------------------------------------------------------------------------------

std::vector<int64_t> blt_ids(const std::string& text, bool bos = true, bool eos = false) {
  std::vector<int64_t> ids;
  if (bos) ids.push_back(blt::kBosId);
  for (const unsigned char c : text) ids.push_back(c + blt::kByteOffset);
  if (eos) ids.push_back(blt::kEosId);
  return ids;
}

std::vector<int64_t> starts_of(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> s;
  int64_t at = 0;
  for (const int64_t l : lengths) {
    if (l == 0) break;
    s.push_back(at);
    at += l;
  }
  return s;
}

int64_t sum_of(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (const int64_t x : v) s += x;
  return s;
}

PatcherConfig make_config(const std::string& mode, const std::string& rule = "global", double threshold = 1.0,
                          double threshold_add = 0.0, int64_t max_len = 0, double patch_size = 4.5) {
  PatcherConfig c;
  c.mode = mode;
  c.rule = rule;
  c.threshold = threshold;
  c.threshold_add = threshold_add;
  c.max_patch_length = max_len;
  c.patch_size = patch_size;
  return c;
}

// Every mode and rule the module offers, with and without max_patch_length.
std::vector<PatcherConfig> all_configs() {
  std::vector<PatcherConfig> out;
  for (const int64_t m : {0, 1, 3, 7}) {
    out.push_back(make_config("entropy", "global", blt::kReleasedThreshold, 0.0, m));
    out.push_back(make_config("entropy", "monotonic", 0.4, 0.0, m));
    out.push_back(make_config("entropy", "global_and_monotonic", 1.0, 0.2, m));
    out.push_back(make_config("entropy", "global_and_monotonic", 0.5, -0.3, m));
    out.push_back(make_config("space", "global", 1.0, 0.0, m));
    out.push_back(make_config("static", "global", 1.0, 0.0, m, 1));
    out.push_back(make_config("static", "global", 1.0, 0.0, m, 4));
    out.push_back(make_config("static", "global", 1.0, 0.0, m, 5));
    out.push_back(make_config("byte", "global", 1.0, 0.0, m));
  }
  return out;
}

std::string describe(const PatcherConfig& c) {
  return str(c.mode, "/", c.rule, " θ=", c.threshold, " θ_add=", c.threshold_add, " max=", c.max_patch_length,
             " size=", c.patch_size);
}

// Random ids that exercise space patching: letters, digits, spaces, punctuation, UTF-8 leading and
// continuation bytes, and the specials (BOS first, as in real rows).
std::vector<int64_t> random_ids(std::mt19937_64& rng, int64_t n) {
  static const std::string pool = "abcXYZ019 ,.!\n-_(";
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = rng() % 10;
    int64_t byte;
    if (r < 6) byte = static_cast<unsigned char>(pool[rng() % pool.size()]);
    else if (r < 7) byte = 0xC0 + static_cast<int64_t>(rng() % 0x40);  // UTF-8 leading
    else if (r < 9) byte = 0x80 + static_cast<int64_t>(rng() % 0x40);  // UTF-8 continuation
    else byte = static_cast<int64_t>(rng() % 256);
    ids[i] = byte + blt::kByteOffset;
    if (rng() % 25 == 0) ids[i] = static_cast<int64_t>(rng() % 4);  // a special inside the row
  }
  if (n > 0) ids[0] = blt::kBosId;
  return ids;
}

// Entropies in [0, 4) nats; some exactly at the thresholds used above (a start needs strictly more).
std::vector<float> random_entropies(std::mt19937_64& rng, int64_t n) {
  std::uniform_real_distribution<float> u(0.0f, 4.0f);
  std::vector<float> h(static_cast<size_t>(n));
  for (auto& v : h) {
    const uint64_t r = rng() % 20;
    v = r == 0 ? static_cast<float>(blt::kReleasedThreshold) : r == 1 ? 1.0f : u(rng);
  }
  return h;
}

at::Tensor row_tensor(const std::vector<int64_t>& v) { return at::tensor(v, at::kLong).unsqueeze(0); }
at::Tensor row_tensor(const std::vector<float>& v) { return at::tensor(v, at::kFloat).unsqueeze(0); }

// ---- the released patcher, transliterated with tensor ops (one row at a time) --------------------------

// patch_start_ids_from_patch_start_mask
at::Tensor ref_start_ids_from_mask(const at::Tensor& mask) {
  const int64_t bs = mask.size(0), len = mask.size(1);
  const int64_t max_patches = mask.sum(1).max().item<int64_t>();
  if (max_patches == 0) return at::full({bs, len}, len, at::kLong);
  const at::Tensor ids = at::arange(len, at::kLong).unsqueeze(0).repeat({bs, 1});
  const at::Tensor extra = at::full({bs, len}, len, at::kLong);
  const at::Tensor all = at::cat({ids, extra}, 1);
  const at::Tensor padded = at::cat({mask, mask.logical_not()}, 1);
  return all.masked_select(padded).reshape({bs, len}).slice(1, 0, max_patches);
}

// patch_lengths_from_start_ids
at::Tensor ref_lengths_from_start_ids(const at::Tensor& start_ids, int64_t seq_len) {
  const at::Tensor last = at::full_like(start_ids.slice(1, 0, 1), seq_len - 1);
  const at::Tensor ends = at::cat({start_ids.slice(1, 1) - 1, last}, 1);
  return ends - start_ids + 1;
}

at::Tensor drop_last_column(const at::Tensor& t) { return t.slice(1, 0, std::max<int64_t>(0, t.size(1) - 1)); }

// find_entropy_patch_start_ids with a threshold (threshold_add < NaN means None).
at::Tensor ref_entropy_start_ids(const at::Tensor& entropies, double t, bool has_add, double t_add, bool monotonicity,
                                 bool include_next_token) {
  const int64_t bs = entropies.size(0);
  const at::Tensor first = at::tensor(std::vector<int64_t>{0, 1}, at::kLong).unsqueeze(0).repeat({bs, 1});
  const at::Tensor e = entropies.slice(1, 1);
  at::Tensor mask;
  if (monotonicity || has_add) {
    if (e.size(1) == 0) {
      mask = e > t;
    } else {
      mask = at::zeros_like(e, at::kBool);
      mask.select(1, 0).fill_(true);
      const at::Tensor diff = e.slice(1, 1) - drop_last_column(e);
      if (monotonicity) {
        mask.slice(1, 1).copy_(diff > t);
      } else {
        const at::Tensor cond = (diff > t_add).logical_and(e.slice(1, 1) > t).logical_and(
            drop_last_column(mask).logical_not());
        mask.slice(1, 1).copy_(cond);
      }
    }
  } else {
    mask = e > t;
  }
  if (!include_next_token) mask = drop_last_column(mask);
  return at::cat({first, ref_start_ids_from_mask(mask) + 2}, 1);
}

// find_space_patch_start_ids
at::Tensor ref_space_start_ids(const at::Tensor& tokens) {
  const int64_t bs = tokens.size(0), n = tokens.size(1);
  const at::Tensor b = tokens - blt::kByteOffset;
  const auto between = [&](int64_t lo, int64_t hi) { return b.gt(lo).logical_and(b.lt(hi)); };  // lo < b < hi
  at::Tensor end = b.lt(int64_t{'0'})
                       .logical_or(between('9', 'A'))
                       .logical_or(between('Z', 'a'))
                       .logical_or(between('z', 0x80))
                       .logical_or(b.ge(0xC0));
  const at::Tensor prev_not = drop_last_column(end).logical_not();  // computed before the in-place update
  end.slice(1, 1).logical_and_(prev_not);
  end.logical_or_(tokens.lt(blt::kByteOffset));
  const at::Tensor start_mask = at::cat({at::ones({bs, 2}, at::kBool), end.slice(1, 1)}, 1);
  const int64_t max_patches = start_mask.sum(1).max().item<int64_t>();
  const at::Tensor ids = at::arange(n + 1, at::kLong).unsqueeze(0).repeat({bs, 1});
  const at::Tensor extra = at::full({bs, n + 1}, n + 1, at::kLong);
  const at::Tensor all = at::cat({ids, extra}, 1);
  const at::Tensor padded = at::cat({start_mask, start_mask.logical_not()}, 1);
  return all.masked_select(padded).reshape({bs, -1}).slice(1, 0, max_patches);
}

// split_large_numbers
std::vector<int64_t> ref_split(const std::vector<int64_t>& lengths, int64_t m) {
  std::vector<int64_t> out;
  for (int64_t i : lengths) {
    if (i > m) {
      while (i > m) {
        out.push_back(m);
        i -= m;
      }
    }
    out.push_back(i);
  }
  return out;
}

// Patcher.patch for one row, then the trailing-zero trim; static adds PackingIterator's first split.
std::vector<int64_t> released_patch(const PatcherConfig& c, const std::vector<int64_t>& ids,
                                    const std::vector<float>& h, bool include_next_token) {
  const auto n = static_cast<int64_t>(ids.size());
  const int64_t total = n + (include_next_token ? 1 : 0);
  std::vector<int64_t> lengths;
  if (c.mode == "static") {
    const auto s = static_cast<int64_t>(c.patch_size);
    lengths.assign(static_cast<size_t>((total + s - 1) / s), s);
    if (total % s != 0) lengths.back() = total % s;
    if (lengths[0] > 1) {  // PackingIterator: the first patch becomes [1, s-1]
      lengths[0] -= 1;
      lengths.insert(lengths.begin(), 1);
    }
  } else if (c.mode == "byte") {
    lengths.assign(static_cast<size_t>(total), 1);
  } else {
    at::Tensor start_ids;
    if (c.mode == "space") {
      start_ids = ref_space_start_ids(row_tensor(ids));
    } else {
      start_ids = ref_entropy_start_ids(row_tensor(h), c.threshold, c.rule == "global_and_monotonic",
                                        c.threshold_add, c.rule == "monotonic", include_next_token);
    }
    const at::Tensor l = ref_lengths_from_start_ids(start_ids, total).squeeze(0).contiguous();
    lengths.assign(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + l.numel());
  }
  if (c.max_patch_length > 0) lengths = ref_split(lengths, c.max_patch_length);
  while (!lengths.empty() && lengths.back() == 0) lengths.pop_back();
  return lengths;
}

// ---- golden values --------------------------------------------------------------------------------------

// Notes §2.2: entropies of the official entropy model (plot_data/entropy_figure.json in the official
// repository), rounded to 4 decimals; the nearest one to θ is 0.0016 away, so rounding is safe.
const std::vector<float> kGoldenEntropies = {
    3.3949f, 2.1656f, 2.3217f, 2.8214f, 1.5249f, 0.0402f, 0.0981f, 0.0545f, 0.3430f, 1.0546f, 0.2525f, 0.1495f,
    0.0625f, 0.0014f, 0.0050f, 0.0052f, 0.0012f, 0.0010f, 1.0241f, 3.6868f, 0.4502f, 0.0484f, 2.2573f, 0.3789f,
    1.0043f, 2.9090f, 1.8934f, 1.3859f, 0.3827f, 0.2646f, 1.7742f, 0.0137f, 0.0054f, 0.5486f, 0.2064f, 0.0049f,
    0.0005f, 0.0007f, 0.0004f, 0.0055f, 1.1938f, 0.0238f, 3.1280f, 1.3883f, 3.0503f, 1.6959f, 1.8551f, 1.4570f,
    0.0048f, 0.0264f, 0.6634f, 0.3141f, 2.8411f, 1.1431f, 0.0520f, 0.3398f, 0.4140f, 2.5564f, 1.3371f, 0.0227f,
    3.4447f, 1.8576f, 0.8190f, 0.6777f, 0.0678f, 0.2127f, 0.1003f, 0.1746f, 0.4124f, 0.5507f, 0.1047f, 0.0194f,
    0.0015f, 0.0009f, 0.0002f, 0.0077f, 0.0004f, 0.0008f, 1.2395f, 0.4564f, 0.0000f};
const char* const kGoldenText = "Daenerys Targaryen is in Game of Thrones, a fantasy epic by George R.R. Martin.";
const std::vector<int64_t> kGoldenLengths = {1, 1, 1, 1, 1, 15, 3, 3, 1, 1, 3, 12, 1, 1, 1, 1, 1, 5, 5, 1, 2, 1, 19};
const char* const kGoldenSegmentation =
    "< | D | a | e | n | erys_Targaryen_ | is_ | in_ | G | a | me_ | of_Thrones,_ | a | _ | f | a | n | tasy_ | "
    "epic_ | b | y_ | G | eorge_R.R._Martin.>";

// The notes' notation: < = BOS, > = EOS, _ = space, " | " between patches.
std::string segmentation(const std::vector<int64_t>& ids, const std::vector<int64_t>& lengths) {
  std::string out;
  size_t at = 0;
  for (const int64_t l : lengths) {
    if (!out.empty()) out += " | ";
    for (int64_t k = 0; k < l && at < ids.size(); ++k, ++at) {
      const int64_t id = ids[at];
      out += id == blt::kBosId ? '<' : id == blt::kEosId ? '>' : id == ' ' + blt::kByteOffset ? '_'
                                                                       : static_cast<char>(id - blt::kByteOffset);
    }
  }
  return out;
}

// ---- tests ----------------------------------------------------------------------------------------------

TEST(Patching, IdConstantsMatchTheBytesLayout) {
  const VocabLayout layout = VocabLayout::bytes();
  EXPECT_EQ(layout.special_id("<boe>"), blt::kBoeId);
  EXPECT_EQ(layout.special_id("<bos>"), blt::kBosId);
  EXPECT_EQ(layout.special_id("<eos>"), blt::kEosId);
  EXPECT_EQ(layout.special_id("<delim>"), blt::kBpeDelimId);
  EXPECT_EQ(layout.modality("bytes").offset, blt::kByteOffset);
  EXPECT_EQ(layout.size(), blt::kVocabSize);
}

TEST(Patching, GoldenEntropyExampleGives23Patches) {
  const std::vector<int64_t> ids = blt_ids(kGoldenText, true, true);
  ASSERT_EQ(ids.size(), 81u);
  ASSERT_EQ(kGoldenEntropies.size(), 81u);
  const Patcher patcher{PatcherConfig{}};  // released defaults: entropy, global, θ = 1.335442066192627
  const std::vector<int64_t> lengths = patcher.patch_row(ids, kGoldenEntropies);
  EXPECT_EQ(lengths, kGoldenLengths);
  EXPECT_EQ(sum_of(lengths), 81);
  EXPECT_EQ(segmentation(ids, lengths), kGoldenSegmentation);

  // Generation / patch_in_forward: H_80 = 0 <= θ, so the next byte joins the last patch (notes §8.3).
  std::vector<int64_t> next = kGoldenLengths;
  next.back() = 20;
  EXPECT_EQ(patcher.patch_row(ids, kGoldenEntropies, true), next);

  // Batched, and from float16 / float64 storage (the released Arrow files keep float16 entropies).
  for (const auto dtype : {at::kFloat, at::kHalf, at::kDouble}) {
    const at::Tensor out = patcher.patch(row_tensor(ids), row_tensor(kGoldenEntropies).to(dtype));
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 23}));
    EXPECT_TRUE(at::equal(out, row_tensor(kGoldenLengths))) << dtype;
  }
  EXPECT_TRUE(at::equal(patcher.patch(row_tensor(ids), row_tensor(kGoldenEntropies), true), row_tensor(next)));

  // The alignment is what the example checks: deciding p from H[p] instead of H[p-1] disagrees.
  std::vector<float> shifted(kGoldenEntropies.begin() + 1, kGoldenEntropies.end());
  shifted.push_back(0.0f);
  EXPECT_NE(patcher.patch_row(ids, shifted), kGoldenLengths);
}

TEST(Patching, MatchesTheReleasedPatcherOnRandomRows) {
  std::mt19937_64 rng(2024);
  for (const PatcherConfig& c : all_configs()) {
    const Patcher patcher(c);
    for (int trial = 0; trial < 25; ++trial) {
      const int64_t n = trial < 5 ? trial + 1 : 1 + static_cast<int64_t>(rng() % 48);
      const std::vector<int64_t> ids = random_ids(rng, n);
      const std::vector<float> h = random_entropies(rng, n);
      for (const bool next : {false, true}) {
        EXPECT_EQ(patcher.patch_row(ids, h, next), released_patch(c, ids, h, next))
            << describe(c) << " n=" << n << " next=" << next;
      }
    }
  }
}

TEST(Patching, SpaceRuleOnText) {
  const Patcher patcher(make_config("space"));
  // A run of space-like bytes cuts once, after its first byte; BOS cuts; specials always cut.
  const std::vector<int64_t> ids = blt_ids("Hi, you  2x!");
  EXPECT_EQ(segmentation(ids, patcher.patch_row(ids)), "< | Hi, | _you_ | _2x!");
  // UTF-8: a leading byte is space-like (so "é" is cut after its first byte, as the released code
  // does), continuation bytes never are.
  const std::vector<int64_t> utf8 = blt_ids("caf\xc3\xa9 ok");
  EXPECT_EQ(patcher.patch_row(utf8), (std::vector<int64_t>{1, 4, 2, 2}));  // < | caf\xc3 | \xa9_ | ok
}

TEST(Patching, StaticAndByte) {
  const std::vector<int64_t> ids = blt_ids("abcdefghij");  // 11 ids
  EXPECT_EQ(Patcher(make_config("static", "global", 1, 0, 0, 4)).patch_row(ids),
            (std::vector<int64_t>{1, 3, 4, 3}));  // starts 0, 1, 4, 8: BOS alone, then the 4-grid
  EXPECT_EQ(Patcher(make_config("static", "global", 1, 0, 0, 4)).patch_row(ids, {}, true),
            (std::vector<int64_t>{1, 3, 4, 4}));
  EXPECT_EQ(Patcher(make_config("static", "global", 1, 0, 0, 1)).patch_row(ids), std::vector<int64_t>(11, 1));
  EXPECT_EQ(Patcher(make_config("byte")).patch_row(ids, {}, true), std::vector<int64_t>(12, 1));
}

TEST(Patching, IncrementalPropertyForEveryPatcher) {
  // f(x[0..i)) = f(x)[0..i) (notes §2.4, §8.5): the starts of a prefix are the full row's starts below
  // i; with include_next_token the prefix also decides i itself, exactly as the full row does.
  std::mt19937_64 rng(11);
  for (const PatcherConfig& c : all_configs()) {
    const Patcher patcher(c);
    for (int trial = 0; trial < 4; ++trial) {
      const int64_t n = 40 + static_cast<int64_t>(rng() % 40);
      const std::vector<int64_t> ids = random_ids(rng, n);
      const std::vector<float> h = random_entropies(rng, n);
      const std::vector<int64_t> full = starts_of(patcher.patch_row(ids, h, true));  // starts in [0, n]
      // The step-by-step decision a generator makes gives the same starts.
      std::vector<int64_t> stepwise;
      for (int64_t p = 0; p <= n; ++p)
        if (patcher.starts_patch(p, ids, h, stepwise.empty() ? 0 : stepwise.back())) stepwise.push_back(p);
      EXPECT_EQ(stepwise, full) << describe(c);
      for (int64_t i = 1; i <= n; ++i) {
        const std::vector<int64_t> px(ids.begin(), ids.begin() + i);
        const std::vector<float> ph(h.begin(), h.begin() + i);
        std::vector<int64_t> below, upto;
        for (const int64_t s : full) {
          if (s < i) below.push_back(s);
          if (s <= i) upto.push_back(s);
        }
        ASSERT_EQ(starts_of(patcher.patch_row(px, ph, false)), below) << describe(c) << " i=" << i;
        ASSERT_EQ(starts_of(patcher.patch_row(px, ph, true)), upto) << describe(c) << " i=" << i;
      }
    }
  }
}

TEST(Patching, LengthInvariantsAndMaxPatchLength) {
  std::mt19937_64 rng(5);
  for (const PatcherConfig& c : all_configs()) {
    const Patcher patcher(c);
    PatcherConfig unlimited = c;
    unlimited.max_patch_length = 0;
    const Patcher base(unlimited);
    for (int trial = 0; trial < 20; ++trial) {
      const int64_t n = 1 + static_cast<int64_t>(rng() % 70);
      const std::vector<int64_t> ids = random_ids(rng, n);
      const std::vector<float> h = random_entropies(rng, n);
      for (const bool next : {false, true}) {
        const std::vector<int64_t> l = patcher.patch_row(ids, h, next);
        ASSERT_FALSE(l.empty());
        EXPECT_EQ(sum_of(l), n + (next ? 1 : 0)) << describe(c);
        EXPECT_EQ(l[0], 1) << describe(c);  // position 0 (BOS) alone
        if (n + next >= 2) {
          EXPECT_EQ(starts_of(l)[1], 1) << describe(c);
        }
        for (const int64_t v : l) {
          EXPECT_GE(v, 1);
          if (c.max_patch_length > 0) {
            EXPECT_LE(v, c.max_patch_length) << describe(c);
          }
        }
        // Splitting only subdivides the unlimited patches: chunks of max, then the remainder.
        if (c.max_patch_length > 0) {
          EXPECT_EQ(l, ref_split(base.patch_row(ids, h, next), c.max_patch_length)) << describe(c);
        }
        // The space rule never starts a patch right after a UTF-8 continuation byte, so never inside a
        // run of them (max_patch_length splits, being positional, may).
        if (c.mode == "space" && c.max_patch_length == 0) {
          for (const int64_t s : starts_of(l)) {
            if (s < 2) continue;
            const int64_t prev = ids[s - 1] - blt::kByteOffset;
            EXPECT_FALSE(prev >= 0x80 && prev < 0xC0) << "start at " << s;
          }
        }
      }
    }
  }
}

TEST(Patching, BatchedRowsEqualSingleRows) {
  std::mt19937_64 rng(9);
  for (const PatcherConfig& c : all_configs()) {
    const Patcher patcher(c);
    const int64_t rows = 5, n = 33;
    std::vector<int64_t> ids;
    std::vector<float> h;
    for (int64_t b = 0; b < rows; ++b) {
      const auto r = random_ids(rng, n);
      const auto e = random_entropies(rng, n);
      ids.insert(ids.end(), r.begin(), r.end());
      h.insert(h.end(), e.begin(), e.end());
    }
    const at::Tensor tokens = at::tensor(ids, at::kLong).reshape({rows, n});
    const at::Tensor entropies = at::tensor(h, at::kFloat).reshape({rows, n});
    for (const bool next : {false, true}) {
      const at::Tensor out = patcher.patch(tokens.to(at::kInt), entropies, next);
      ASSERT_EQ(out.scalar_type(), at::kLong);
      size_t most = 0;
      for (int64_t b = 0; b < rows; ++b) {
        const std::vector<int64_t> r(ids.begin() + b * n, ids.begin() + (b + 1) * n);
        const std::vector<float> e(h.begin() + b * n, h.begin() + (b + 1) * n);
        std::vector<int64_t> expect = patcher.patch_row(r, e, next);
        most = std::max(most, expect.size());
        expect.resize(static_cast<size_t>(out.size(1)), 0);  // right-padded with zeros
        EXPECT_TRUE(at::equal(out[b], at::tensor(expect, at::kLong))) << describe(c);
      }
      EXPECT_EQ(static_cast<size_t>(out.size(1)), most);  // no all-zero columns
      blt::check_patch_lengths(out, n + (next ? 1 : 0));
    }
  }
  // No rows at all is fine.
  EXPECT_EQ(Patcher(make_config("space")).patch(at::zeros({0, 4}, at::kLong)).sizes(),
            (std::vector<int64_t>{0, 0}));
}

TEST(Patching, PatchIdsStartsAndDecoderLag) {
  const at::Tensor lengths = at::tensor(std::vector<int64_t>{1, 3, 2, 0, 1, 1, 4, 0}, at::kLong).reshape({2, 4});
  EXPECT_TRUE(at::equal(blt::patch_ids_from_lengths(lengths, 5),
                        at::tensor(std::vector<int64_t>{0, 1, 1, 1, 2, 0, 1, 2, 2, 2}).reshape({2, 5})));
  EXPECT_TRUE(at::equal(blt::patch_starts_from_lengths(lengths),
                        at::tensor(std::vector<int64_t>{0, 1, 4, 6, 0, 1, 2, 6}).reshape({2, 4})));
  // decoder_patch_id[t] = patch_id(t+1) − 1 (notes §8.6), and that patch ends at or before t.
  std::mt19937_64 rng(3);
  const Patcher patcher{PatcherConfig{}};
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t n = 2 + static_cast<int64_t>(rng() % 60);
    const std::vector<int64_t> ids = random_ids(rng, n);
    const std::vector<float> h = random_entropies(rng, n);
    const at::Tensor l = row_tensor(patcher.patch_row(ids, h, true));  // sums to n + 1
    const at::Tensor enc = blt::patch_ids_from_lengths(l, n + 1)[0];
    const at::Tensor dec = blt::decoder_patch_ids_from_lengths(l, n)[0];
    const at::Tensor starts = blt::patch_starts_from_lengths(l)[0];
    for (int64_t t = 0; t < n; ++t) {
      const int64_t d = dec[t].item<int64_t>();
      EXPECT_EQ(d, enc[t + 1].item<int64_t>() - 1);
      EXPECT_LE(starts[d].item<int64_t>() + l[0][d].item<int64_t>() - 1, t);
    }
    // Encoder ids: start at 0, never decrease, step by at most 1 (no empty patches inside a row).
    const at::Tensor step = enc.slice(0, 1) - enc.slice(0, 0, n);
    EXPECT_EQ(enc[0].item<int64_t>(), 0);
    EXPECT_TRUE(((step >= 0).logical_and(step <= 1)).all().item<bool>());
  }
}

TEST(Patching, CalibrationHitsTheTargetMeanPatchSize) {
  // Synthetic entropies: 64 rows of 512 positions, a mix of confident and uncertain stretches.
  std::mt19937_64 rng(77);
  std::gamma_distribution<float> g(1.5f, 0.6f);
  const int64_t rows = 64, n = 512;
  std::vector<float> h(static_cast<size_t>(rows * n));
  for (auto& v : h) v = g(rng);
  const at::Tensor entropies = at::tensor(h, at::kFloat).reshape({rows, n});
  const at::Tensor tokens = at::full({rows, n}, blt::kBosId, at::kLong);

  // Tolerance: one patch more or less moves the mean by about mean²/positions (0.06% at 4.5 over
  // 32768 positions), so 0.5% relative is generous for a continuous sample.
  const double tol = 0.005;
  const std::vector<double> targets = {2.0, 4.5, 6.0, 8.0};
  const std::vector<std::pair<PatcherConfig, std::vector<double>>> cases = {
      {make_config("entropy"), targets},
      {make_config("entropy", "monotonic"), targets},
      // Both tests at once cannot cut as often: below about 2.2 bytes is out of reach on this sample.
      {make_config("entropy", "global_and_monotonic", 1.0, 0.1), {4.5, 6.0, 8.0}},
      {make_config("entropy", "global", 1.0, 0.0, 12), targets}};
  for (const auto& [c, wanted] : cases) {
    for (const double target : wanted) {
      const blt::ThresholdCalibration cal = blt::calibrate_threshold(c, entropies, target);
      EXPECT_NEAR(cal.mean_patch_size, target, tol * target) << describe(c) << " target " << target;
      // The returned θ really gives that mean when the rows are patched with it.
      PatcherConfig tuned = c;
      tuned.threshold = cal.threshold;
      const at::Tensor l = Patcher(tuned).patch(tokens, entropies);
      const int64_t patches = (l > 0).sum().item<int64_t>();
      EXPECT_EQ(patches, cal.patches);
      EXPECT_EQ(cal.bytes, rows * n);
      EXPECT_DOUBLE_EQ(static_cast<double>(rows * n) / static_cast<double>(patches), cal.mean_patch_size);
      // Deterministic.
      EXPECT_EQ(blt::calibrate_threshold(c, entropies, target).threshold, cal.threshold);
    }
  }
  // Rows of different lengths (documents) are fine.
  std::vector<at::Tensor> docs;
  for (int64_t b = 0; b < rows; ++b) docs.push_back(entropies[b].slice(0, 0, 100 + 6 * b));
  const auto cal = blt::calibrate_threshold(make_config("entropy"), docs, 4.5);
  EXPECT_NEAR(cal.mean_patch_size, 4.5, tol * 4.5);

  // Impossible targets name the achievable range.
  const std::string high = what_of([&] { blt::calibrate_threshold(make_config("entropy"), entropies, 1000.0); });
  EXPECT_TRUE(contains(high, "impossible")) << high;
  EXPECT_TRUE(contains(high, "choose a target in that range")) << high;
  const std::string capped =
      what_of([&] { blt::calibrate_threshold(make_config("entropy", "global", 1, 0, 4), entropies, 6.0); });
  EXPECT_TRUE(contains(capped, "max_patch_length 4")) << capped;
  EXPECT_TRUE(contains(what_of([&] { blt::calibrate_threshold(make_config("entropy"), entropies, 0.5); }), ">= 1"));
  EXPECT_TRUE(contains(what_of([&] { blt::calibrate_threshold(make_config("space"), entropies, 4.0); }),
                       "only entropy patching"));
}

TEST(Patching, ConfigParsesFromYamlWithReleasedDefaults) {
  const PatcherConfig d;
  EXPECT_EQ(d.mode, "entropy");
  EXPECT_EQ(d.rule, "global");
  EXPECT_EQ(d.threshold, 1.335442066192627);
  EXPECT_EQ(d.max_patch_length, 0);
  EXPECT_EQ(d.patch_size, 4.5);
  const auto c = config::parse<PatcherConfig>(config::load_yaml_string(
      "mode: entropy\nrule: global_and_monotonic\nthreshold: 0.6\nthreshold_add: 0.1\nmax_patch_length: 16\n",
      "patcher.yaml"));
  EXPECT_EQ(c.rule, "global_and_monotonic");
  EXPECT_EQ(c.threshold, 0.6);
  EXPECT_EQ(c.threshold_add, 0.1);
  EXPECT_EQ(c.max_patch_length, 16);
  EXPECT_EQ(config::parse<PatcherConfig>(config::to_yaml(c)).threshold_add, 0.1);  // round trip
  const std::string typo =
      what_of([] { config::parse<PatcherConfig>(config::load_yaml_string("treshold: 2\n", "patcher.yaml")); });
  EXPECT_TRUE(contains(typo, "threshold")) << typo;
  EXPECT_THROW(config::parse<PatcherConfig>(config::load_yaml_string("mode: bpe\n", "p.yaml")), Error);
}

TEST(Patching, BadInputsGiveClearErrors) {
  const Patcher entropy{PatcherConfig{}};
  const at::Tensor tokens = at::full({2, 5}, 10, at::kLong);
  const at::Tensor h = at::ones({2, 5});
  auto msg = [](const std::function<void()>& f) { return what_of(f); };

  EXPECT_TRUE(contains(msg([&] { entropy.patch(tokens, at::ones({2, 4})); }), "must have the tokens' shape"));
  EXPECT_TRUE(contains(msg([&] { entropy.patch(tokens); }), "needs the entropies"));
  EXPECT_TRUE(contains(msg([&] { entropy.patch(tokens[0], h[0]); }), "must be [B, T]"));
  EXPECT_TRUE(contains(msg([&] { entropy.patch(tokens.to(at::kFloat), h); }), "integer ids"));
  EXPECT_TRUE(contains(msg([&] { entropy.patch(tokens, at::ones({2, 5}, at::kLong)); }), "floating point"));
  EXPECT_TRUE(contains(msg([&] { entropy.patch(at::zeros({2, 0}, at::kLong), at::zeros({2, 0})); }),
                       "at least one id"));
  at::Tensor bad = h.clone();
  bad[1][3] = std::numeric_limits<float>::quiet_NaN();
  const std::string nan = msg([&] { entropy.patch(tokens, bad); });
  EXPECT_TRUE(contains(nan, "row 1, position 3")) << nan;
  bad[1][3] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(contains(msg([&] { entropy.patch(tokens, bad); }), "must be finite"));
  EXPECT_TRUE(contains(msg([&] { entropy.patch_row(std::vector<int64_t>{1, 2, 3}, std::vector<float>{1, 2}); }),
                       "one entropy per id"));
  EXPECT_TRUE(contains(msg([&] { entropy.patch_row(std::vector<int64_t>{}); }), "empty"));
  EXPECT_TRUE(contains(msg([&] { entropy.starts_patch(5, std::vector<int64_t>{}, std::vector<float>{1, 2}, 0); }),
                       "needs entropies"));

  const Patcher space(make_config("space"));
  const std::string range = msg([&] { space.patch(at::full({1, 3}, 300, at::kLong)); });
  EXPECT_TRUE(contains(range, "id 300")) << range;
  EXPECT_TRUE(contains(msg([&] { space.patch(at::full({1, 3}, -1, at::kLong)); }), "260-id layout"));

  EXPECT_TRUE(contains(msg([] { Patcher(make_config("entropy", "global", 1, 0, -2)); }), "max_patch_length"));
  EXPECT_TRUE(contains(msg([] { Patcher(make_config("static")); }), "whole number of bytes"));
  EXPECT_TRUE(contains(msg([] { Patcher(make_config("static", "global", 1, 0, 0, -4)); }), "positive"));
  EXPECT_TRUE(contains(msg([] { Patcher(make_config("entropy", "global", std::nan(""))); }), "threshold"));
  EXPECT_TRUE(contains(msg([] { Patcher(make_config("bpe")); }), "unknown mode"));

  // Patch lengths: negative sizes, zeros in the middle, too short to cover, missing BOS patch.
  const auto L = [](std::vector<int64_t> v, int64_t cols) {
    return at::tensor(v, at::kLong).reshape({-1, cols});
  };
  EXPECT_TRUE(contains(msg([&] { blt::check_patch_lengths(L({1, -2, 3}, 3)); }), "negative length -2"));
  EXPECT_TRUE(contains(msg([&] { blt::check_patch_lengths(L({1, 0, 3}, 3)); }), "after a zero"));
  EXPECT_TRUE(contains(msg([&] { blt::check_patch_lengths(L({1, 2, 3}, 3), 5); }), "sums to 6, expected 5"));
  EXPECT_TRUE(contains(msg([&] { blt::patch_ids_from_lengths(L({1, 2}, 2), 4); }), "fewer than the 4"));
  EXPECT_TRUE(contains(msg([&] { blt::patch_ids_from_lengths(L({1, 2}, 2), -1); }), "seq_len must be >= 0"));
  EXPECT_TRUE(contains(msg([&] { blt::decoder_patch_ids_from_lengths(L({2, 2}, 2), 3); }), "length 1"));
  EXPECT_TRUE(contains(msg([&] { blt::decoder_patch_ids_from_lengths(L({1, 3}, 2), 4); }), "include_next_token"));
  EXPECT_TRUE(contains(msg([&] { blt::patch_starts_from_lengths(at::ones({3})); }), "[B, P]"));
}

}  // namespace
}  // namespace tessera
