// BLT patching: where the byte stream is cut into patches (notes blt_megabyte.md §1.7, §2), faithful to
// the released code (facebookresearch/blt `bytelatent/data/patcher.py`), which the released weights
// were trained with.
//
// Ids are BLT's 260-id layout (VocabLayout::bytes(): <boe>=0, <bos>=1, <eos>=2, <delim>=3, byte b -> b+4).
// Entropies are per position, in nats: H[i] is the entropy of the entropy model's next-byte
// distribution at position i, i.e. the uncertainty of x[i+1] given x[0..i].
//
// Boundary rules. Positions 0 and 1 always start a patch (position 0, the BOS, is a patch of its own:
// the decoder's patch lag, notes §1.6, needs L_0 = 1). For p >= 2, p starts a patch iff
//
//   entropy/global                 H[p-1] > θ                                          (the default)
//   entropy/monotonic              p == 2  or  H[p-1] − H[p-2] > θ                      (approx. monotonic)
//   entropy/global_and_monotonic   p == 2  or  p >= 4 and H[p-1] − H[p-2] > θ_add and H[p-1] > θ
//   space                          x[p-1] is a counted space-like id (see below)
//   static                         p % patch_size == 0
//   byte                           always
//
// The index alignment matters: the byte p opens a patch when the model was uncertain about it, and
// that uncertainty is H[p-1], computed from x[0..p-1] only. Every rule therefore reads only data
// before p, which gives the incremental property f(x[0..i)) = f(x)[0..i) (notes §2.4) that cached
// generation relies on. The combined rule's "p never 3" is an artifact of the released code (its
// "not previous start" term only ever sees the forced start at p = 2); we keep it for fidelity.
// Comparisons are in float32, as the released code compares a float32 tensor with the threshold
// (θ = 1.335442066192627 is exactly a float32 value) and takes the differences in float32.
//
// Space-like ids (released `find_space_patch_start_ids`): an id below 4 always counts; a byte counts
// when it is not an ASCII letter or digit and not a UTF-8 continuation byte (0x80..0xBF) and the
// previous id was not space-like too (specials count as space-like there), so a run of punctuation or
// spaces cuts once, right after its first byte. UTF-8 leading bytes (>= 0xC0) are space-like.
//
// include_next_token. A row of N ids normally gets patches covering N positions (data preparation).
// For a forward pass that predicts the byte after the row (generation, `patch_in_forward`) the code
// also decides whether that next byte, position N, opens a patch, from data before N (H[N-1]); the
// lengths then sum to N + 1 (notes §1.7 sum rule; the Hugging Face port sums to N and appends an empty
// patch instead, which gives the same decoder ids; we follow the released code).
//
// max_patch_length m (optional) splits any longer patch into chunks of m and a remainder (released
// `split_large_numbers`); equivalently p also starts a patch when p − (previous start) == m, which is
// how the incremental `starts_patch` applies it.
//
// Paper vs code (notes §1.10, §2.2): the paper's BLT-Entropy 8B used the monotonic rule with an entropy
// context reset at newlines; the released code has no reset and defaults to the global rule. Static
// patching in the released Patcher gives [s, s, ..., rest] with a first patch of s bytes; the
// released training pipeline (PackingIterator) then splits it into [1, s−1] because the model asserts
// L_0 = 1. We return that split form directly, so every mode has L_0 = 1 and starts 0, s, 2s, ...
// stay on the MEGABYTE grid. The released fixed-count entropy mode (threshold None: top-k entropies)
// and the bpe / bpe_patcher modes (they need a never-released SentencePiece model, notes §1.1) are not
// provided.
#pragma once

#include <ATen/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::blt {

// BLT's id layout (the same ids as VocabLayout::bytes(); a test keeps them in step).
inline constexpr int64_t kBoeId = 0;
inline constexpr int64_t kBosId = 1;
inline constexpr int64_t kEosId = 2;
inline constexpr int64_t kBpeDelimId = 3;
inline constexpr int64_t kByteOffset = 4;
inline constexpr int64_t kVocabSize = 260;

// The released default θ (nats): `PatcherArgs.threshold`, used with the released 1B/7B models.
inline constexpr double kReleasedThreshold = 1.335442066192627;

// The released `PatcherArgs` mapped onto a typed config. Released `monotonicity: true` is
// rule "monotonic" (it wins over threshold_add, as in the code); a non-None `threshold_add` is rule
// "global_and_monotonic"; otherwise "global". Released `max_patch_length: None` is 0 here.
struct PatcherConfig {
  std::string mode = "entropy";
  std::string rule = "global";
  double threshold = kReleasedThreshold;
  double threshold_add = 0.0;
  int64_t max_patch_length = 0;
  double patch_size = 4.5;

  template <class V>
  void fields(V& v) {
    v.choice("mode", mode, {"entropy", "space", "static", "byte"}, "how patch boundaries are chosen");
    v.choice("rule", rule, {"global", "monotonic", "global_and_monotonic"},
             "entropy boundary rule: H[p-1] > threshold; H[p-1]-H[p-2] > threshold; or both tests, "
             "the difference against threshold_add");
    v.optional("threshold", threshold, "entropy threshold in nats (monotonic rule: on the increase)");
    v.optional("threshold_add", threshold_add, "global_and_monotonic: threshold on the entropy increase");
    v.optional("max_patch_length", max_patch_length, "split longer patches into chunks of this size (0: no limit)");
    v.optional("patch_size", patch_size,
               "static: bytes per patch (an integer); entropy: the target mean patch size for calibration");
  }

  // Errors name the field and the fix; called by Patcher's constructor.
  void validate() const;
};

class Patcher {
 public:
  explicit Patcher(PatcherConfig config);

  const PatcherConfig& config() const { return config_; }
  bool needs_entropies() const { return config_.mode == "entropy"; }

  // Patch lengths of every row of `tokens` [B, T] (integer ids; only their shape is used except in
  // space mode). `entropies` [B, T] (floating, nats) is required in entropy mode and ignored otherwise.
  // Returns int64 [B, P] on the tokens' device, right-padded with zeros, P = the most patches of any
  // row; row b sums to T (+1 with include_next_token). Each row is patched on its own, exactly as the
  // single-row call. (The released code, run on a batch of rows with different patch counts and
  // include_next_token = false, gives space-mode rows a wrong sum and trips its own assertion; a
  // single row, which is how its data pipeline calls it, gives what we return.) Copies to the CPU.
  at::Tensor patch(const at::Tensor& tokens, const at::Tensor& entropies = {}, bool include_next_token = false) const;

  // One row: ids x[0..N) and, in entropy mode, entropies H[0..N). Lengths sum to N (+1).
  std::vector<int64_t> patch_row(c10::ArrayRef<int64_t> tokens, c10::ArrayRef<float> entropies = {},
                                 bool include_next_token = false) const;

  // The incremental decision (notes §2.4): does position p start a patch? Reads tokens[0..p) and
  // entropies[0..p) only, so a generator can call it for p = N (the byte about to be generated) once
  // H[N-1] is known. `last_start` is the start of the patch that holds position p-1 (it matters only
  // with max_patch_length); p = 0 and p = 1 are always starts.
  bool starts_patch(int64_t p, c10::ArrayRef<int64_t> tokens, c10::ArrayRef<float> entropies,
                    int64_t last_start) const;

 private:
  bool rule_starts(int64_t p, c10::ArrayRef<int64_t> tokens, c10::ArrayRef<float> entropies) const;
  std::vector<int64_t> row_lengths(const int64_t* tokens, const float* entropies, int64_t n,
                                   bool include_next_token) const;

  enum class Kind { kEntropyGlobal, kEntropyMonotonic, kEntropyGlobalAndMonotonic, kSpace, kStatic, kByte };

  PatcherConfig config_;
  Kind kind_ = Kind::kEntropyGlobal;  // mode and rule, decided once
  float threshold_f_ = 0.0f;      // θ as the float32 the comparisons use
  float threshold_add_f_ = 0.0f;  // θ_add likewise
  int64_t static_size_ = 0;       // static mode: patch_size as an integer
};

// ---- patch lengths -> positions ---------------------------------------------------------------------
// Lengths are int64 [B, P], >= 0, zeros only on the right (released layout, notes §1.7).

// Errors unless `lengths` is such a tensor; with expected_sum >= 0 every row must also sum to it.
void check_patch_lengths(const at::Tensor& lengths, int64_t expected_sum = -1);

// patch_ids[b, i] for i < seq_len: the index of the patch holding position i, i.e. the number of
// patch starts <= i, minus 1 (released `patch_ids_from_lengths`). Every row must cover seq_len.
at::Tensor patch_ids_from_lengths(const at::Tensor& lengths, int64_t seq_len);

// The decoder's lagged ids (notes §1.6): patch_ids over lengths[:, 1:], so decoder position t (which
// predicts byte t+1) reads the patch before the one holding t+1. Needs L_0 == 1 in every row.
at::Tensor decoder_patch_ids_from_lengths(const at::Tensor& lengths, int64_t seq_len);

// Start offset of every patch, [B, P] (exclusive cumulative sum; a padding zero-length patch starts
// at the row's total).
at::Tensor patch_starts_from_lengths(const at::Tensor& lengths);

// ---- threshold calibration --------------------------------------------------------------------------
// The released code has none; the maintainers' recipe (issue #106, notes §2.2) is to tune θ until the
// mean patch size on a data sample hits a target (the paper used 4.5, 6 and 8).
// The entropy patcher's input: the softmax entropy in nats of an entropy model's next-byte logits
// [..., V] -> [...], computed in float32 whatever the logits' dtype.
at::Tensor next_byte_entropies(const at::Tensor& logits);

struct ThresholdCalibration {
  double threshold = 0.0;         // θ to put in PatcherConfig::threshold
  double mean_patch_size = 0.0;   // bytes / patches on the sample with that θ
  int64_t bytes = 0;              // positions in the sample
  int64_t patches = 0;            // patches with that θ
  double min_mean_patch_size = 0.0;  // achievable range on the sample: every candidate starts ...
  double max_mean_patch_size = 0.0;  // ... or none does
};

// Finds θ for `config` (entropy mode, any rule; for global_and_monotonic θ_add stays fixed; with
// max_patch_length the splits count as patches) whose mean patch size over `rows` (1-D entropies of
// whole sequences, patched without the next token) is closest to `target_mean_patch_size`.
// The patch count only changes when θ crosses one of the values the rule compares against it (the
// entropies, or their float32 differences for the monotonic rule), so the search is a binary search
// over those sorted values: deterministic and exact. The returned θ lies inside the winning interval
// (its midpoint where float32 can represent it). Errors when the target is outside the range the
// sample allows.
ThresholdCalibration calibrate_threshold(const PatcherConfig& config, const std::vector<at::Tensor>& rows,
                                         double target_mean_patch_size);
// Same, rows of a [B, T] tensor.
ThresholdCalibration calibrate_threshold(const PatcherConfig& config, const at::Tensor& entropies,
                                         double target_mean_patch_size);

}  // namespace tessera::blt
