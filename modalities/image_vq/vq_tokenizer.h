// Discrete image tokens (Chameleon / CM3Leon style): a convolutional VQ autoencoder whose encoder maps
// an image to a grid of code vectors, each replaced by its nearest codebook entry; the ids of those
// entries, in raster order, are the image's tokens. Chameleon's tokenizer: 8192 codes, 16x
// downsampling (512 px -> 32x32 = 1024 tokens); the default here is sized for 64 px scenes (512 codes,
// 8x -> 8x8 = 64 tokens).
//
// Training (van den Oord et al. 2017, with the EMA codebook of its appendix / Razavi et al. 2019):
//   loss  = ||x - D(z_q)||^2 + beta ||z_e - sg(z_q)||^2           (commitment, beta = 0.25)
//   grad  passes the quantizer unchanged (straight-through: z_q' = z_e + sg(z_q - z_e))
//   EMA   N_k <- d N_k + (1-d) n_k;  m_k <- d m_k + (1-d) sum_{i: k_i = k} z_i;
//         e_k  = m_k / Ñ_k with Laplace-smoothed counts Ñ_k = (N_k + eps) / (sum N + K eps) * sum N
//   dead codes (unused for dead_code_steps batches) restart at random encoder outputs of the batch.
// Lookup by L2 distance, or ("cosine") on l2-normalised vectors (ViT-VQGAN's factorised codes).
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "core/data/sample.h"
#include "modalities/image/autoencoder.h"
#include "modalities/image/autoencoder_train.h"

namespace tessera::image {

struct VqModelConfig {
  ConvNetConfig net;
  int64_t codebook_size = 512;
  int64_t code_dim = 64;
  std::string lookup = "l2";
  double beta = 0.25;
  double ema_decay = 0.99;
  double ema_epsilon = 1e-5;
  int64_t dead_code_steps = 50;

  template <class V>
  void fields(V& v) {
    net.fields(v);
    v.optional("codebook_size", codebook_size, "codebook entries: the tokenizer's vocabulary size");
    v.optional("code_dim", code_dim, "dimension of a code vector");
    v.choice("lookup", lookup, {"l2", "cosine"}, "nearest code by L2 distance, or by cosine on l2-normalised vectors");
    v.optional("beta", beta, "commitment loss weight");
    v.optional("ema_decay", ema_decay, "decay of the EMA codebook update");
    v.optional("ema_epsilon", ema_epsilon, "Laplace smoothing of the EMA code counts");
    v.optional("dead_code_steps", dead_code_steps,
               "a code unused for this many training batches restarts at a random encoder output (0: never)");
  }
};

using VqTokenizerConfig = ImageModelConfig<VqModelConfig>;
void validate(const VqTokenizerConfig& config);

struct QuantizerOutput {
  at::Tensor quantized;    // [B, D, h, w], straight-through (gradients reach the encoder)
  at::Tensor codes;        // [B, h, w] int64
  at::Tensor commit_loss;  // beta * mse(z_e, sg(z_q)), 0-dim
  at::Tensor counts;       // [K] uses of each code in this batch (float)
};

class VectorQuantizerImpl : public torch::nn::Module {
 public:
  explicit VectorQuantizerImpl(const VqModelConfig& config);

  // z [B, D, h, w]. In training mode also updates the codebook (EMA, dead-code restarts); on the first
  // training batch the codebook starts as random encoder outputs of that batch.
  QuantizerOutput forward(const at::Tensor& z);
  // Nearest code of each row of `flat` [N, D] -> [N] int64.
  at::Tensor nearest(const at::Tensor& flat) const;
  // Code vectors of ids (any shape) -> [..., D] (unit length under cosine lookup).
  at::Tensor embed(const at::Tensor& ids) const;
  // Sets the codebook (and its EMA state: counts 1, sums = codes), marking it initialised.
  void set_codebook(const at::Tensor& codes);

  const VqModelConfig& config() const { return config_; }

  // Buffers: codebook [K, D], ema_count [K], ema_sum [K, D], unused_steps [K] (batches since last use),
  // initialized (0-dim, 0/1).
  at::Tensor codebook, ema_count, ema_sum, unused_steps, initialized;

 private:
  at::Tensor prepare(const at::Tensor& flat) const;  // l2-normalised under cosine lookup
  void update(const at::Tensor& flat, const at::Tensor& ids, const at::Tensor& counts);

  VqModelConfig config_;
};
TORCH_MODULE(VectorQuantizer);

class VqTokenizerImpl : public torch::nn::Module {
 public:
  explicit VqTokenizerImpl(const VqTokenizerConfig& config);

  struct Output {
    at::Tensor recon;  // [B, C, H, W] in about [-1, 1]
    QuantizerOutput vq;
  };
  // x: images as float [-1, 1], [B, C, image_size, image_size].
  Output forward(const at::Tensor& x);
  at::Tensor encode(const at::Tensor& x);      // -> [B, tokens] int64 code ids, raster order
  at::Tensor decode(const at::Tensor& codes);  // [B, tokens] -> [B, C, H, W] float

  int64_t grid() const { return config_.image_size / config_.model.net.factor(); }
  int64_t tokens_per_image() const { return grid() * grid(); }
  const VqTokenizerConfig& config() const { return config_; }

  ConvEncoder encoder{nullptr};
  VectorQuantizer quantizer{nullptr};
  ConvDecoder decoder{nullptr};

 private:
  VqTokenizerConfig config_;
};
TORCH_MODULE(VqTokenizer);

inline constexpr const char* kVqArtifactKind = "image_vq";
inline constexpr const char* kVqArtifactFile = "tokenizer.safetensors";

void save_vq_tokenizer(const std::filesystem::path& path, const VqTokenizerImpl& model);
// `path`: the .safetensors file or the run directory holding tokenizer.safetensors.
struct LoadedVqTokenizer {
  std::shared_ptr<VqTokenizerImpl> model;  // eval mode, CPU
  ImageArtifact artifact;                  // path, crc32, config (tensors released)
};
LoadedVqTokenizer load_vq_tokenizer(const std::filesystem::path& path);

// exp(entropy) of a code histogram (counts [K]): K when every code is used equally, 1 for one code.
double code_perplexity(const at::Tensor& counts);

// The training loop's view of a VQ tokenizer: loss = recon MSE + commitment (the codebook follows by EMA
// inside the quantizer); eval adds codebook usage (fraction of codes used on the val set) and perplexity.
class VqTraining final : public TrainableAutoencoder {
 public:
  explicit VqTraining(std::shared_ptr<VqTokenizerImpl> model) : model_(std::move(model)) {}
  torch::nn::Module& module() override { return *model_; }
  AutoencoderLoss loss(const at::Tensor& x) override;
  void eval_begin() override;
  at::Tensor eval_reconstruct(const at::Tensor& x) override;
  nlohmann::json eval_end() override;
  void save_artifact(const std::filesystem::path& path) const override { save_vq_tokenizer(path, *model_); }

 private:
  std::shared_ptr<VqTokenizerImpl> model_;
  at::Tensor counts_;  // code histogram over the evaluation
};

// The "image_vq" adapter: a uint8 C×H×W image (resized / centre-cropped to the tokenizer's size; grey
// images feed an RGB tokenizer as three equal channels) <-> its code ids in raster order.
class ImageVqAdapter final : public Adapter {
 public:
  static constexpr const char* kType = "image_vq";
  static constexpr const char* kName = "image_vq";

  // Loads `model` (a file or run directory; relative paths resolved against base_dir). describe()
  // records `model` as given. `device`: where encode/decode run ("cpu", "cuda", "cuda:1").
  ImageVqAdapter(std::filesystem::path model, const std::filesystem::path& base_dir = {},
                 const std::string& device = "cpu");

  std::string name() const override { return kName; }
  std::string modality() const override { return modality::kImage; }
  int64_t vocab_size() const override { return tokenizer_.model->config().model.codebook_size; }
  Span encode(const Segment& segment) const override;
  // Exactly tokens_per_image ids in [0, vocab_size); else an error.
  Segment decode(const Span& span) const override;
  // {"type": "image_vq", "model": as given, "crc32", "vocab_size", "image_size", "tokens_per_image"}
  nlohmann::json describe() const override;

  at::Tensor encode_batch(const at::Tensor& images) const;  // uint8 [B, C, H, W] -> int64 [B, tokens]
  at::Tensor decode_batch(const at::Tensor& codes) const;   // int64 [B, tokens] -> uint8 [B, C, S, S]
  const LoadedVqTokenizer& tokenizer() const { return tokenizer_; }

 private:
  std::filesystem::path model_;
  LoadedVqTokenizer tokenizer_;
  c10::Device device_;
};

// make_adapter's factory for {"type": "image_vq", "model": PATH[, "device"][, "crc32"][, "vocab_size"]}.
std::shared_ptr<const Adapter> make_image_vq_adapter(const nlohmann::json& description,
                                                     const std::filesystem::path& base_dir);

}  // namespace tessera::image
