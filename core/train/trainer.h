// The one training loop every recipe uses (ARCHITECTURE §4): forward -> backward with gradient
// accumulation -> clip -> AdamW -> schedule -> log -> periodic eval -> atomic checkpoint.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/data/source.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/train/train_config.h"

namespace tessera {

struct TrainerSetup {
  std::shared_ptr<LanguageModel> model;
  std::shared_ptr<Objective> objective;
  std::shared_ptr<DataSource> train_data;
  std::shared_ptr<DataSource> val_data;  // optional
  TrainConfig config;
  std::filesystem::path run_dir;
  nlohmann::json recipe;  // the resolved recipe, saved in every checkpoint's state.json
  uint64_t seed = 0;
  bool quiet = false;  // no progress lines (tests)
  // Called after each completed step; lets tests interrupt a run at a chosen step.
  std::function<void(int64_t step)> after_step;
};

struct EvalResult {
  double loss = 0;        // mean NLL per counted token (nats)
  double perplexity = 0;  // exp(loss)
  double bits_per_token = 0;
  int64_t tokens = 0;
};

struct TrainResult {
  int64_t start_step = 0;
  int64_t final_step = 0;
  bool interrupted = false;
  std::vector<double> losses;  // training loss of every step run in this call
  std::optional<EvalResult> last_eval;
  std::filesystem::path last_checkpoint;
  double tokens_per_second = 0;
};

// The gradient half of one optimizer step over `grad_accum` micro-batches: forward/backward under
// autocast and gradient clipping. The caller checks the loss and then applies AdamW, so a non-finite
// loss never reaches the weights. Shared by the trainer and `tessera bench train`, so the benchmark
// times the real step. Returns the mean loss (device tensor, not synchronised) and the pre-clip norm.
struct StepOutput {
  at::Tensor loss;
  at::Tensor grad_norm;
  int64_t tokens = 0;
};
StepOutput train_step(LanguageModel& model, Objective& objective,
                      const std::vector<at::Tensor>& params, const std::function<Batch()>& next_batch,
                      int64_t grad_accum, double lr, double grad_clip, const c10::Device& device, bool bf16);

// Runs the loop. With `resume`, continues from run_dir/checkpoints/latest (error if there is none).
// A non-finite loss throws tessera::Error naming the step and the last good checkpoint.
TrainResult train(TrainerSetup setup, bool resume);

// Mean loss over `max_batches` batches of `data` (0: one full pass), without gradients.
EvalResult evaluate(LanguageModel& model, Objective& objective, DataSource& data, int64_t max_batches,
                    const c10::Device& device, bool bf16);

}  // namespace tessera
