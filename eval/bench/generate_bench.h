// `tessera bench generate`: the memory and speed of incremental generation after a long context, for
// any architecture. For each context length the model's decoding state is filled by prefilling the
// context in pieces (step() with prefill_chunk tokens at a time), then decode_tokens tokens are
// generated one at a time (greedy). Reported per length: prefill time, decode ms/token, the memory the
// decoding state holds (allocated after prefill minus before) and the peak during the whole run.
// A KV-cache transformer's state grows with the context; Megalodon's (norm statistics, CEMA state,
// one chunk of keys/values) does not.
#pragma once

#include <nlohmann/json.hpp>

#include "eval/bench/bench_model.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace tessera {

struct GenerateBenchOptions {
  std::string model;  // YAML model section or file (see bench_model.h)
  int64_t vocab_size = 32000;
  std::vector<int64_t> context_lengths{4096, 65536};
  int64_t prefill_chunk = 2048;
  int64_t decode_tokens = 32;
  int64_t batch_size = 1;
  std::string precision = "auto";
  std::string device = "auto";
  uint64_t seed = 0;
  int64_t profile_tokens = 0;  // > 0: after the last context, profile this many decode steps per kernel
  // Cached against uncached generation (instead of the context sweep): greedy-decode compare_tokens
  // tokens after a prompt of prompt_tokens, once with step() and its caches, once recomputing the full
  // forward over the whole prefix for every token (what a model without incremental decoding does);
  // reports tokens/s of each and how many leading tokens agree.
  int64_t compare_tokens = 0;
  int64_t prompt_tokens = 64;
  // > 0: time the uncached forward at only this many evenly spaced lengths (teacher-forced with the
  // cached tokens) and interpolate; the full quadratic run of a long generation can take many minutes.
  int64_t uncached_samples = 0;
  std::string data;  // prompts from this prepared dataset's validation rows ("" = random ids)
  std::function<std::shared_ptr<LanguageModel>()> load_model;  // a trained model (replaces `model`)
  PrepareModelFn prepare_model;                               // run on a model built from `model`
};

struct GenerateBenchResult {
  nlohmann::json json;
  std::string summary;
};

GenerateBenchResult bench_generate(const GenerateBenchOptions& options);

}  // namespace tessera
