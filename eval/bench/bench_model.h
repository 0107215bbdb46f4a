// The model a benchmark times: any registered architecture, from a YAML model section given inline
// ("{arch: megalodon, dim: 1024, ...}") or as a file (a recipe, whose `model:` section is used, or a
// bare model section).
#pragma once

#include <memory>
#include <string>

#include "core/model.h"

namespace tessera {

// vocab_size fills the config's vocab_size when it is 0 or absent; max_seq_len, when > 0, raises
// the config's max_seq_len to at least that (a benchmark's longest sequence).
std::shared_ptr<LanguageModel> bench_model(const std::string& spec, int64_t vocab_size, int64_t max_seq_len);

}  // namespace tessera
