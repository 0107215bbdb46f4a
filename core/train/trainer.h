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

// A validation split's size for bits-per-byte: the tokens that are targets and the UTF-8 bytes of the
// text they encode. Bits per byte put byte-level and BPE models on one scale.
struct SplitSize {
  int64_t targets = 0;
  int64_t bytes = 0;
};

struct TrainerSetup {
  std::shared_ptr<LanguageModel> model;
  std::shared_ptr<Objective> objective;
  std::shared_ptr<DataSource> train_data;
  std::shared_ptr<DataSource> val_data;  // optional
  SplitSize val_size;                    // for val_bpb in metrics (bytes 0: not reported)
  int64_t seq_len = 0;                   // tokens per row, for the FLOPs logged in metrics (0: not logged)
  TrainConfig config;
  std::filesystem::path run_dir;
  nlohmann::json recipe;  // the resolved recipe, saved in every checkpoint's state.json
  nlohmann::json extra_state = nlohmann::json::object();  // more keys for state.json (e.g. the adapters)
  uint64_t seed = 0;
  bool quiet = false;  // no progress lines (tests)
  // Called after each completed step; lets tests interrupt a run at a chosen step.
  std::function<void(int64_t step)> after_step;
};

struct EvalResult {
  double loss = 0;        // mean NLL per counted token (nats)
  double perplexity = 0;  // exp(loss)
  double bits_per_token = 0;
  int64_t tokens = 0;     // counted (target) tokens
  double sum_nll = 0;     // summed NLL over them (nats)
  double bits_per_byte = 0;   // 0 until add_bits_per_byte()
  bool bits_per_byte_exact = false;
  // Summed NLL and counted targets at each position of a row (length seq_len), when the objective
  // reports per-position NLL: how well the model uses the context it has at that point.
  std::vector<double> position_sum_nll, position_count;
};

// Loss over a range of positions [begin, end) of the rows.
struct PositionBucket {
  int64_t begin = 0, end = 0;
  int64_t tokens = 0;
  double bits_per_token = 0;
  double bits_per_byte = 0;  // bits per token / the split's mean bytes per target
};

// Positions grouped into `count` buckets that double in width toward the end of the row:
// [0, T/2^(n-1)), ..., [T/4, T/2), [T/2, T) (the first buckets merge when T is too short to split).
// Bits per byte use the split's mean bytes per target: exact for the bytes adapter (one byte per
// target, specials aside), an approximation for BPE, whose bytes per token vary little with position.
std::vector<PositionBucket> position_buckets(const EvalResult& r, const SplitSize& split, int count = 5);

// bits per byte = summed NLL / (ln 2 × UTF-8 bytes). Exact when the evaluation covered every target of
// the split (r.tokens == split.targets); otherwise the mean per-token loss is scaled by the split's
// targets per byte, an unbiased estimate for a random subset of rows.
void add_bits_per_byte(EvalResult& r, const SplitSize& split);

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
// autocast, and the gradient norm with the clipping coefficient. The caller checks the loss and then
// applies AdamW with `grad_multiplier` (the clipping, folded into the update: the gradients themselves
// are left unclipped), so a non-finite loss never reaches the weights. Shared by the trainer and
// `tessera bench train`, so the benchmark times the real step. Returns the mean loss (device tensor, not
// synchronised) and the pre-clip norm.
struct StepOutput {
  at::Tensor loss;
  at::Tensor grad_norm;
  at::Tensor grad_multiplier;  // min(1, grad_clip / grad_norm); undefined when grad_clip <= 0
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
