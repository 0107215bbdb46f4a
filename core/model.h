// The interface every backbone implements (ARCHITECTURE §3): a torch::nn::Module built from a typed
// config, with a full forward over a Batch and, where it generates, incremental decoding with a cache.
#pragma once

#include <torch/nn/module.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <memory>
#include <string>

#include "core/batch.h"
#include "core/flops.h"

namespace tessera {

class StageTimer;

// Per-sequence decoding state (KV caches, recurrent states); owned by the caller of step().
struct DecodeState {
  virtual ~DecodeState() = default;
  int64_t position = 0;  // tokens consumed so far
};

class LanguageModel : public torch::nn::Module {
 public:
  ~LanguageModel() override = default;

  virtual std::string arch() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t max_seq_len() const = 0;
  // The resolved architecture config (every field, defaults filled in), as saved in checkpoints.
  virtual YAML::Node config_yaml() const = 0;
  virtual FlopCount flops(int64_t seq_len) const = 0;

  virtual Outputs forward(const Batch& batch) = 0;

  // Incremental generation. `tokens` [B, t] continue the sequences in `state`; returns logits [B, t, V].
  virtual std::unique_ptr<DecodeState> start_decoding(int64_t batch_size, int64_t max_len) = 0;
  virtual at::Tensor step(const at::Tensor& tokens, DecodeState& state) = 0;

  int64_t parameter_count() const;

  // Patch-based byte models (BLT, MEGABYTE) report how they cut `batch` into patches, so that evaluation
  // can give the mean patch size without knowing the architecture; others report none.
  struct PatchCount {
    int64_t bytes = 0;
    int64_t patches = 0;
  };
  virtual PatchCount count_patches(const Batch& /*batch*/) { return {}; }

  // Benchmarks install a timer to split the training step by stage (core/train/stage_timer.h); models
  // mark their stages with mark_stage(). nullptr (the default) removes it; marks then cost nothing.
  void set_stage_timer(std::shared_ptr<StageTimer> timer) { stage_timer_ = std::move(timer); }
  const std::shared_ptr<StageTimer>& stage_timer() const { return stage_timer_; }

 protected:
  // Stage `name` of the forward begins, with `input` entering it.
  void mark_stage(const char* name, const at::Tensor& input) const;

 private:
  std::shared_ptr<StageTimer> stage_timer_;
};

}  // namespace tessera
