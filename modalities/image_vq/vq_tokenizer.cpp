#include "modalities/image_vq/vq_tokenizer.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <cmath>

#include "core/config.h"
#include "core/error.h"
#include "core/train/runtime.h"
#include "modalities/image/image_io.h"

namespace tessera::image {
namespace fs = std::filesystem;

namespace {

// The codebook search and EMA statistics run in fp32 even inside a bf16 autocast region: bf16 distances
// lose near-ties between codes and the EMA sums lose precision.
class AutocastOff {
 public:
  explicit AutocastOff(at::DeviceType device) : device_(device), was_(at::autocast::is_autocast_enabled(device)) {
    at::autocast::set_autocast_enabled(device_, false);
  }
  ~AutocastOff() { at::autocast::set_autocast_enabled(device_, was_); }
  AutocastOff(const AutocastOff&) = delete;
  AutocastOff& operator=(const AutocastOff&) = delete;

 private:
  at::DeviceType device_;
  bool was_;
};

}  // namespace

void validate(const VqTokenizerConfig& c) {
  check(c.channels == 1 || c.channels == 3, "image_vq: channels must be 1 or 3, got ", c.channels);
  validate(c.model.net, c.image_size, "model");
  const VqModelConfig& m = c.model;
  check(m.codebook_size >= 2 && m.codebook_size <= (int64_t{1} << 20), "model.codebook_size must be in 2..2^20, got ",
        m.codebook_size);
  check(m.code_dim >= 1, "model.code_dim must be positive, got ", m.code_dim);
  check(m.beta >= 0, "model.beta must be >= 0, got ", m.beta);
  check(m.ema_decay >= 0 && m.ema_decay < 1, "model.ema_decay must be in [0, 1), got ", m.ema_decay);
  check(m.ema_epsilon > 0, "model.ema_epsilon must be positive, got ", m.ema_epsilon);
  check(m.dead_code_steps >= 0, "model.dead_code_steps must be >= 0 (0: no restarts), got ", m.dead_code_steps);
}

// ---- quantizer --------------------------------------------------------------------------------------

VectorQuantizerImpl::VectorQuantizerImpl(const VqModelConfig& config) : config_(config) {
  const int64_t k = config.codebook_size, d = config.code_dim;
  codebook = register_buffer("codebook", at::randn({k, d}));
  ema_count = register_buffer("ema_count", at::ones({k}));
  ema_sum = register_buffer("ema_sum", codebook.clone());
  unused_steps = register_buffer("unused_steps", at::zeros({k}, at::kLong));
  initialized = register_buffer("initialized", at::zeros({}, at::kLong));
}

at::Tensor VectorQuantizerImpl::prepare(const at::Tensor& flat) const {
  return config_.lookup == "cosine" ? flat / flat.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12) : flat;
}

at::Tensor VectorQuantizerImpl::nearest(const at::Tensor& flat) const {
  const AutocastOff fp32(flat.device().type());
  const at::Tensor x = prepare(flat.to(codebook.scalar_type()));
  const at::Tensor e = prepare(codebook);
  if (config_.lookup == "cosine") return at::mm(x, e.t()).argmax(1);
  // ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; ||x||^2 does not change the argmin.
  return at::addmm(e.pow(2).sum(1).unsqueeze(0), x, e.t(), /*beta=*/1, /*alpha=*/-2).argmin(1);
}

at::Tensor VectorQuantizerImpl::embed(const at::Tensor& ids) const {
  std::vector<int64_t> shape = ids.sizes().vec();
  shape.push_back(config_.code_dim);
  return prepare(codebook).index_select(0, ids.reshape(-1)).view(shape);
}

void VectorQuantizerImpl::set_codebook(const at::Tensor& codes) {
  at::NoGradGuard no_grad;
  check(codes.sizes() == codebook.sizes(), "set_codebook: expected ", codebook.sizes(), ", got ", codes.sizes());
  codebook.copy_(codes);
  ema_sum.copy_(codes);
  ema_count.fill_(1.0);
  unused_steps.zero_();
  initialized.fill_(1);
}

void VectorQuantizerImpl::update(const at::Tensor& flat, const at::Tensor& ids, const at::Tensor& counts) {
  at::NoGradGuard no_grad;
  const double d = config_.ema_decay, eps = config_.ema_epsilon;
  const auto k = static_cast<double>(config_.codebook_size);
  ema_count.mul_(d).add_(counts, 1.0 - d);
  ema_sum.mul_(d).add_(at::zeros_like(ema_sum).index_add_(0, ids, flat), 1.0 - d);
  const at::Tensor n = ema_count.sum();
  const at::Tensor smoothed = (ema_count + eps) / (n + k * eps) * n;  // Laplace smoothing: no division by 0
  codebook.copy_(ema_sum / smoothed.unsqueeze(1));

  if (config_.dead_code_steps <= 0) return;
  unused_steps.add_(1).masked_fill_(counts > 0, 0);
  const at::Tensor dead = (unused_steps >= config_.dead_code_steps).nonzero().squeeze(1);
  if (dead.numel() == 0) return;
  const at::Tensor rows = at::randint(flat.size(0), {dead.size(0)}, ids.options());
  const at::Tensor fresh = flat.index_select(0, rows);
  codebook.index_copy_(0, dead, fresh);
  ema_sum.index_copy_(0, dead, fresh);
  ema_count.index_fill_(0, dead, 1.0);
  unused_steps.index_fill_(0, dead, 0);
}

QuantizerOutput VectorQuantizerImpl::forward(const at::Tensor& z) {
  check(z.dim() == 4 && z.size(1) == config_.code_dim, "vector quantizer: expected [B, ", config_.code_dim,
        ", h, w], got ", z.sizes());
  const AutocastOff fp32(z.device().type());
  const int64_t b = z.size(0), h = z.size(2), w = z.size(3);
  const at::Tensor flat = prepare(z.permute({0, 2, 3, 1}).reshape({-1, config_.code_dim}).to(codebook.scalar_type()));
  if (is_training() && initialized.item<int64_t>() == 0) {
    // Codes start where the data is, so that none is born dead.
    at::NoGradGuard no_grad;
    const int64_t n = flat.size(0), k = config_.codebook_size;
    const at::Tensor rows = n >= k ? at::randperm(n, codebook.options().dtype(at::kLong)).slice(0, 0, k)
                                   : at::randint(n, {k}, codebook.options().dtype(at::kLong));
    set_codebook(flat.detach().index_select(0, rows));
  }
  QuantizerOutput out;
  const at::Tensor ids = nearest(flat.detach());
  out.counts = at::zeros({config_.codebook_size}, flat.options()).index_add_(0, ids, at::ones_like(ids, flat.options()));
  const at::Tensor zq = embed(ids).detach();
  out.commit_loss = config_.beta * at::mse_loss(flat, zq);
  if (is_training()) update(flat.detach(), ids, out.counts);
  const at::Tensor st = flat + (zq - flat).detach();  // straight-through estimator
  out.quantized = st.view({b, h, w, config_.code_dim}).permute({0, 3, 1, 2});
  out.codes = ids.view({b, h, w});
  return out;
}

// ---- tokenizer --------------------------------------------------------------------------------------

VqTokenizerImpl::VqTokenizerImpl(const VqTokenizerConfig& config) : config_(config) {
  validate(config_);
  encoder = register_module("encoder", ConvEncoder(config.model.net, config.channels, config.model.code_dim));
  quantizer = register_module("quantizer", VectorQuantizer(config.model));
  decoder = register_module("decoder", ConvDecoder(config.model.net, config.model.code_dim, config.channels));
}

VqTokenizerImpl::Output VqTokenizerImpl::forward(const at::Tensor& x) {
  Output out;
  out.vq = quantizer->forward(encoder->forward(x));
  out.recon = decoder->forward(out.vq.quantized);
  return out;
}

at::Tensor VqTokenizerImpl::encode(const at::Tensor& x) {
  const at::Tensor z = encoder->forward(x);
  const at::Tensor flat = z.permute({0, 2, 3, 1}).reshape({-1, config_.model.code_dim});
  return quantizer->nearest(flat).view({x.size(0), -1});
}

at::Tensor VqTokenizerImpl::decode(const at::Tensor& codes) {
  const at::Tensor z = quantizer->embed(codes.view({codes.size(0), grid(), grid()}));  // [B, g, g, D]
  return decoder->forward(z.permute({0, 3, 1, 2}).contiguous());
}

void save_vq_tokenizer(const fs::path& path, const VqTokenizerImpl& model) {
  write_image_artifact(path, kVqArtifactKind, config::to_json(model.config()), model);
}

LoadedVqTokenizer load_vq_tokenizer(const fs::path& path) {
  LoadedVqTokenizer out;
  out.model = load_image_model<VqTokenizerImpl, VqTokenizerConfig>(resolve_artifact(path, {}, kVqArtifactFile),
                                                                   kVqArtifactKind, out.artifact);
  return out;
}

// ---- training ---------------------------------------------------------------------------------------

double code_perplexity(const at::Tensor& counts) {
  const at::Tensor c = counts.to(at::kCPU, at::kDouble);
  const double total = c.sum().item<double>();
  if (total <= 0) return 0.0;
  const at::Tensor p = c / total;
  return std::exp(-at::where(p > 0, p * p.log(), at::zeros_like(p)).sum().item<double>());
}

AutoencoderLoss VqTraining::loss(const at::Tensor& x) {
  const VqTokenizerImpl::Output out = model_->forward(x);
  AutoencoderLoss l;
  l.recon_mse = at::mse_loss(out.recon.to(at::kFloat), x);
  l.total = l.recon_mse + out.vq.commit_loss;
  // Batch statistics, logged: read only on logging steps.
  const at::Tensor used = (out.vq.counts > 0).to(at::kFloat).mean();
  const at::Tensor p = out.vq.counts / out.vq.counts.sum();
  l.terms = {{"commit", out.vq.commit_loss.detach()},
             {"batch_usage", used},
             {"batch_perplexity", at::exp(-at::where(p > 0, p * p.log(), at::zeros_like(p)).sum())}};
  return l;
}

void VqTraining::eval_begin() { counts_ = at::zeros({model_->config().model.codebook_size}, at::kDouble); }

at::Tensor VqTraining::eval_reconstruct(const at::Tensor& x) {
  const VqTokenizerImpl::Output out = model_->forward(x);
  counts_ += out.vq.counts.to(at::kCPU, at::kDouble);
  return out.recon;
}

nlohmann::json VqTraining::eval_end() {
  return {{"codebook_usage", (counts_ > 0).to(at::kDouble).mean().item<double>()},
          {"perplexity", code_perplexity(counts_)},
          {"codebook_size", model_->config().model.codebook_size},
          {"tokens_per_image", model_->tokens_per_image()}};
}

// ---- adapter ----------------------------------------------------------------------------------------

ImageVqAdapter::ImageVqAdapter(fs::path model, const fs::path& base_dir, const std::string& device)
    : model_(std::move(model)),
      tokenizer_(load_vq_tokenizer(resolve_artifact(model_, base_dir, kVqArtifactFile))),
      device_(select_device(device)) {
  tokenizer_.model->to(device_);
}

at::Tensor ImageVqAdapter::encode_batch(const at::Tensor& images) const {
  const VqTokenizerConfig& c = tokenizer_.model->config();
  check(images.dim() == 4, "image_vq: encode_batch expects uint8 [B, C, H, W], got ", images.sizes());
  std::vector<at::Tensor> inputs;
  for (int64_t i = 0; i < images.size(0); ++i)
    inputs.push_back(tokenizer_input(images[i], c.image_size, c.channels, "image_vq"));
  at::NoGradGuard no_grad;
  return tokenizer_.model->encode(at::cat(inputs).to(device_)).cpu();
}

at::Tensor ImageVqAdapter::decode_batch(const at::Tensor& codes) const {
  const int64_t tokens = tokenizer_.model->tokens_per_image(), k = vocab_size();
  check(codes.dim() == 2 && codes.size(1) == tokens, "image_vq: an image is ", tokens, " tokens (a ",
        tokenizer_.model->grid(), "x", tokenizer_.model->grid(), " grid), got ", codes.sizes());
  const at::Tensor ids = codes.to(at::kLong);
  if (ids.numel() > 0) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    check(lo >= 0 && hi < k, "image_vq: token id ", lo < 0 ? lo : hi, " is outside the codebook [0, ", k,
          "); these ids were not made by this tokenizer (vocab_size ", k, ")");
  }
  at::NoGradGuard no_grad;
  return to_uint8(tokenizer_.model->decode(ids.to(device_)));
}

Span ImageVqAdapter::encode(const Segment& segment) const {
  check(segment.tensor.defined(), "image_vq: the segment (modality '", segment.modality, "') has no image");
  const at::Tensor codes = encode_batch(segment.tensor.unsqueeze(0)).contiguous();
  Span span;
  span.modality = modality::kImage;
  span.ids.assign(codes.data_ptr<int64_t>(), codes.data_ptr<int64_t>() + codes.numel());
  return span;
}

Segment ImageVqAdapter::decode(const Span& span) const {
  check(span.is_discrete(), "image_vq: expected discrete ids, got continuous latents");
  const at::Tensor codes = at::tensor(span.ids, at::kLong).view({1, -1});
  return image_segment(decode_batch(codes)[0]);
}

nlohmann::json ImageVqAdapter::describe() const {
  return {{"type", kType},
          {"model", model_.string()},
          {"crc32", tokenizer_.artifact.crc32},
          {"vocab_size", vocab_size()},
          {"image_size", tokenizer_.model->config().image_size},
          {"tokens_per_image", tokenizer_.model->tokens_per_image()}};
}

std::shared_ptr<const Adapter> make_image_vq_adapter(const nlohmann::json& d, const fs::path& base_dir) {
  check(d.contains("model") && d.at("model").is_string(), "adapter 'image_vq': description ", d.dump(),
        " needs a string \"model\" (the tokenizer's run directory or tokenizer.safetensors)");
  auto adapter = std::make_shared<const ImageVqAdapter>(d.at("model").get<std::string>(), base_dir,
                                                        d.value("device", std::string("cpu")));
  check_recorded_crc32(d, ImageVqAdapter::kType, adapter->tokenizer().artifact);
  if (d.contains("vocab_size"))
    check(d.at("vocab_size") == adapter->vocab_size(), "image_vq: '", adapter->tokenizer().artifact.path.string(),
          "' has ", adapter->vocab_size(), " codes but ", d.at("vocab_size").dump(),
          " were recorded; restore the tokenizer these ids were made with, or prepare the data again");
  return adapter;
}

}  // namespace tessera::image
