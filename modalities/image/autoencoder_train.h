// The training loop of the image autoencoders (the VQ tokenizer and the VAE): not a language model, so
// not core/train/trainer.h, but the same pieces: core's AdamW and LR schedule, bf16 autocast on CUDA,
// atomic safetensors checkpoints (params + buffers, optimizer, state.json) with resume, metrics JSONL,
// progress lines, and a NaN/inf loss reported with its step. Images are held in memory as uint8 (on
// the training device) and batched in per-epoch permutations fixed by (seed, step), so a resumed run
// sees exactly the batches it would have seen.
//
// Outputs in run_dir: the artifact, metrics.jsonl, eval.json (val MSE/PSNR + the model's own metrics,
// images/s), reconstructions.png (originals row over reconstructions row), checkpoints/.
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/Device.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "modalities/image/captions.h"
#include "modalities/image/idx.h"
#include "modalities/image/scenes.h"

namespace tessera::image {

// Where the training images come from. Every source is resized / centre-cropped to size × size.
struct ImageDataConfig {
  std::string source = "scenes";
  int64_t size = 64;
  int64_t train_images = 10000;
  int64_t val_images = 256;
  SceneConfig scenes;
  std::string fashion_mnist_dir = kFashionMnistDir;
  CaptionsConfig captions;

  template <class V>
  void fields(V& v) {
    v.choice("source", source, {"scenes", "fashion_mnist", "captions"},
             "scenes: the generated shapes (no files needed); fashion_mnist: the Debian dataset package (grey); "
             "captions: the images of a captions file (needs OpenCV)");
    v.optional("size", size, "image side in pixels after resize / centre crop");
    v.optional("train_images", train_images, "training images (held in memory)");
    v.optional("val_images", val_images, "validation images (scenes: indices disjoint from training's)");
    v.optional("scenes", scenes, "scene generator settings (source: scenes)");
    v.optional("fashion_mnist_dir", fashion_mnist_dir, "Fashion-MNIST IDX folder (source: fashion_mnist)");
    v.optional("captions", captions, "the captions file whose images are used (source: captions)");
  }
};

// Scene indices of the validation images start here, far from any training index.
inline constexpr int64_t kValSceneOffset = int64_t{1} << 40;

struct ImageSet {
  at::Tensor train;  // uint8 [N, C, S, S]
  at::Tensor val;    // uint8 [M, C, S, S]
  int64_t channels() const { return train.size(1); }
};
// Loads (or generates) the images; `recipe_dir` resolves a relative captions file.
ImageSet load_image_data(const ImageDataConfig& config, const std::string& recipe_dir = "");

struct AutoencoderTrainConfig {
  int64_t steps = 2000;
  int64_t batch_size = 64;
  double lr = 1e-3;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 100;
  std::string schedule = "cosine";
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double grad_clip = 1.0;
  std::string device = "auto";
  std::string precision = "auto";
  int64_t eval_every = 0;
  int64_t checkpoint_every = 0;
  int64_t keep_checkpoints = 2;
  int64_t log_every = 50;
  int64_t threads = 0;

  template <class V>
  void fields(V& v) {
    v.optional("steps", steps, "optimizer steps");
    v.optional("batch_size", batch_size, "images per step");
    v.optional("lr", lr, "peak learning rate");
    v.optional("min_lr_ratio", min_lr_ratio, "final learning rate as a fraction of the peak");
    v.optional("warmup_steps", warmup_steps, "linear warm-up steps");
    v.choice("schedule", schedule, {"cosine", "wsd", "constant"}, "learning-rate schedule after warm-up");
    v.optional("weight_decay", weight_decay, "AdamW decoupled weight decay (conv kernels only)");
    v.optional("beta1", beta1, "AdamW beta1");
    v.optional("beta2", beta2, "AdamW beta2");
    v.optional("grad_clip", grad_clip, "clip the global gradient norm to this (0: off)");
    v.choice("device", device, {"auto", "cpu", "cuda"}, "auto: CUDA when available");
    v.choice("precision", precision, {"auto", "fp32", "bf16"}, "auto: bf16 autocast on CUDA, fp32 on CPU");
    v.optional("eval_every", eval_every, "validation every N steps (0: only at the end)");
    v.optional("checkpoint_every", checkpoint_every, "checkpoint every N steps (0: only when interrupted)");
    v.optional("keep_checkpoints", keep_checkpoints, "keep the last K checkpoints (0: all)");
    v.optional("log_every", log_every, "a metrics line every N steps");
    v.optional("threads", threads, "CPU intra-op threads (0: LibTorch's default)");
  }
};
void validate(const AutoencoderTrainConfig& config);

struct AutoencoderLoss {
  at::Tensor total;      // what is minimised (0-dim)
  at::Tensor recon_mse;  // mean squared error on [-1, 1] pixels (0-dim)
  std::vector<std::pair<std::string, at::Tensor>> terms;  // logged beside it (0-dim each)
};

// What a model gives the loop. Images reach it as float [B, C, S, S] in [-1, 1] on the device.
class TrainableAutoencoder {
 public:
  virtual ~TrainableAutoencoder() = default;
  virtual torch::nn::Module& module() = 0;
  // One training forward (train mode, autocast as configured); may update non-gradient state (EMA).
  virtual AutoencoderLoss loss(const at::Tensor& x) = 0;
  // Evaluation: eval_begin, then eval_reconstruct per batch (eval mode, no grad) while the model gathers
  // its own statistics, then eval_end returns them as JSON (codebook usage, KL, ...).
  virtual void eval_begin() {}
  virtual at::Tensor eval_reconstruct(const at::Tensor& x) = 0;
  virtual nlohmann::json eval_end() { return nlohmann::json::object(); }
  // After the last step, before the final evaluation and the artifact (the VAE measures its latent scale).
  virtual void finalize(const at::Tensor& train_images) { (void)train_images; }
  virtual void save_artifact(const std::filesystem::path& path) const = 0;
};

struct AutoencoderRun {
  std::string task;  // "vq_tokenizer", for messages
  std::filesystem::path run_dir;
  std::string artifact_file;  // "tokenizer.safetensors"
  AutoencoderTrainConfig train;
  nlohmann::json config;  // the resolved recipe; a resume needs the same "model" and "data"
  int64_t seed = 0;
  bool require_checkpoint = false;  // --resume: continuing is required, not just taken when possible
  int64_t recon_images = 8;         // columns of reconstructions.png
  bool quiet = false;
};

struct AutoencoderResult {
  nlohmann::json eval;  // what eval.json holds
  std::filesystem::path artifact;
  std::vector<double> losses;  // per step trained by this call
  int64_t start_step = 0;
  double images_per_second = 0;
  bool interrupted = false;  // SIGINT/SIGTERM: checkpoint written, no artifact
};

// Trains from scratch, or from run_dir/checkpoints when one exists (an interrupted run continues).
AutoencoderResult train_autoencoder(TrainableAutoencoder& model, const ImageSet& data, const AutoencoderRun& run);

// Val MSE and PSNR (on [-1, 1] pixels clamped to the range) plus the model's eval_end() metrics, over
// `images` (uint8 [N, C, S, S]) in batches. `recon` (optional) receives the first reconstructions.
nlohmann::json evaluate_autoencoder(TrainableAutoencoder& model, const at::Tensor& images, int64_t batch_size,
                                    const c10::Device& device, bool bf16, at::Tensor* recon = nullptr,
                                    int64_t keep = 0);

inline constexpr const char* kEvalFile = "eval.json";
inline constexpr const char* kReconstructionsFile = "reconstructions.png";
// A finished run: its artifact and eval.json exist.
bool autoencoder_finished(const std::filesystem::path& run_dir, const std::string& artifact_file);

}  // namespace tessera::image
