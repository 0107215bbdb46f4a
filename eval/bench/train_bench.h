// `tessera bench train`: times the trainer's real step (forward, backward, clip, fused AdamW) for a
// dense model (or any architecture given by `model`) on random tokens, and reports step time,
// tokens/s, TFLOP/s and peak memory.
#pragma once

#include <nlohmann/json.hpp>

#include <c10/core/Device.h>

#include <string>
#include <vector>

#include "eval/bench/bench_model.h"

namespace tessera {

struct TrainBenchOptions {
  std::string model;  // YAML model section or file (eval/bench/bench_model.h); "" = the dense fields below
  int64_t dim = 1024;
  int64_t n_layers = 12;
  int64_t n_heads = 16;
  int64_t n_kv_heads = 0;
  int64_t vocab_size = 32000;
  int64_t batch_size = 8;
  int64_t seq_len = 2048;
  int64_t warmup = 5;
  int64_t steps = 20;
  std::string precision = "auto";
  std::string device = "auto";
  bool tie_embeddings = false;
  uint64_t seed = 0;
  int64_t profile_steps = 0;  // > 0: after timing, profile this many steps (per-kernel GPU time, or CPU ops)
  std::string trace;          // with profile_steps: also save the Kineto trace (chrome://tracing JSON) here
  std::string data;           // a prepared dataset whose train rows are the batches ("" = random ids); its
                              // vocabulary then sizes the model
  int64_t stage_steps = 0;    // > 0: after timing, split this many steps by the model's stages (StageTimer)
  PrepareModelFn prepare_model;  // run on the built model (e.g. attach BLT's entropy model)
  // PyTorch reference (default dense model only): after Tessera's timing, run this script
  // (eval/bench/reference/dense.py) with `python` once per mode (eager, eager-fused, compile) on the same
  // shape, device and step counts, and report its rows beside Tessera's.
  std::vector<std::string> reference_modes;
  std::string python = "python3";
  std::string reference_script;
  bool cuda_graph = false;       // time replays of the whole step captured as one CUDA graph (CUDA only)
};

struct TrainBenchResult {
  nlohmann::json json;  // every number, for RESULTS.md and comparisons with the PyTorch reference
  std::string summary;  // human-readable table
};

TrainBenchResult bench_train(const TrainBenchOptions& options);

// Runs options.reference_modes of the PyTorch reference on `device`; one JSON row per mode (its own keys
// plus "impl": "pytorch-<mode>"). Errors name the mode, the exit status and the script's stderr.
nlohmann::json run_pytorch_reference(const TrainBenchOptions& options, const c10::Device& device);

}  // namespace tessera
