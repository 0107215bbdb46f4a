// The model a benchmark times: any registered architecture, from a YAML model section given inline
// ("{arch: megalodon, dim: 1024, ...}") or as a file (a recipe, whose `model:` section is used, or a
// bare model section).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/batch.h"
#include "core/model.h"
#include "core/vocab.h"

namespace tessera {

// vocab_size fills the config's vocab_size when it is 0 or absent; max_seq_len, when > 0, raises
// the config's max_seq_len to at least that (a benchmark's longest sequence).
std::shared_ptr<LanguageModel> bench_model(const std::string& spec, int64_t vocab_size, int64_t max_seq_len);

// Called on a benchmark's model after it is built (e.g. to attach BLT's entropy model): the CLI layer
// supplies it, since loading checkpoints is above eval/.
using PrepareModelFn = std::function<void(LanguageModel& model, const VocabLayout& layout)>;

// What a benchmark feeds its model: `count` batches of rows of a prepared dataset's `split` (real text:
// BLT's patches, and so its cost, depend on it; rows are drawn with the loader's shuffled order from
// `seed`), or, when `dataset` is empty, uniformly random ids below vocab_size. Batches are on the CPU.
struct BenchData {
  std::vector<Batch> batches;
  VocabLayout layout;  // the dataset's; VocabLayout::bytes() for random ids
};
BenchData bench_batches(const std::string& dataset, const std::string& split, int64_t count, int64_t batch_size,
                        int64_t seq_len, int64_t vocab_size, uint64_t seed);

}  // namespace tessera
