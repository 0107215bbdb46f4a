#include "modalities/image_latent/vae.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/config.h"
#include "core/error.h"
#include "core/train/runtime.h"
#include "modalities/image/image_io.h"

namespace tessera::image {
namespace fs = std::filesystem;

void validate(const VaeConfig& c) {
  check(c.channels == 1 || c.channels == 3, "image_latent: channels must be 1 or 3, got ", c.channels);
  validate(c.model.net, c.image_size, "model");
  check(c.model.latent_channels >= 1 && c.model.latent_channels <= 256, "model.latent_channels must be in 1..256, got ",
        c.model.latent_channels);
  check(c.model.scale_images >= 1, "model.scale_images must be positive, got ", c.model.scale_images);
  check(c.model.kl_weight >= 0 && std::isfinite(c.model.kl_weight), "model.kl_weight must be >= 0, got ",
        c.model.kl_weight);
}

VaeImpl::VaeImpl(const VaeConfig& config) : config_(config) {
  validate(config_);
  const int64_t cz = config.model.latent_channels;
  encoder = register_module("encoder", ConvEncoder(config.model.net, config.channels, 2 * cz));
  decoder = register_module("decoder", ConvDecoder(config.model.net, cz, config.channels));
  scaling_factor_ = register_buffer("scaling_factor", at::ones({}));
}

std::pair<at::Tensor, at::Tensor> VaeImpl::moments(const at::Tensor& x) {
  // fp32 moments even under bf16 autocast: the KL and the scaling factor are sums over many elements.
  const auto halves = encoder->forward(x).to(at::kFloat).chunk(2, 1);
  return {halves[0], halves[1].clamp(-30.0, 20.0)};
}

VaeImpl::Output VaeImpl::forward(const at::Tensor& x, bool sample) {
  Output out;
  std::tie(out.mean, out.logvar) = moments(x);
  const at::Tensor z = sample ? out.mean + at::exp(0.5 * out.logvar) * at::randn_like(out.mean) : out.mean;
  out.recon = decoder->forward(z);
  // KL(N(mu, sigma^2) || N(0, 1)) = 0.5 (mu^2 + sigma^2 - 1 - log sigma^2), per element.
  const at::Tensor kl = 0.5 * (out.mean.pow(2) + out.logvar.exp() - 1.0 - out.logvar);
  out.kl = kl.flatten(1).sum(1).mean();
  return out;
}

at::Tensor VaeImpl::encode(const at::Tensor& x) { return moments(x).first; }
at::Tensor VaeImpl::decode(const at::Tensor& z) { return decoder->forward(z); }

double VaeImpl::scaling_factor() const { return scaling_factor_.item<double>(); }

void VaeImpl::set_scaling_factor(double s) {
  check(std::isfinite(s) && s > 0, "latent scaling factor must be a positive number, got ", s);
  at::NoGradGuard no_grad;
  scaling_factor_.fill_(s);
}

double latent_scaling_factor(VaeImpl& vae, const at::Tensor& images, int64_t batch_size) {
  check(images.dim() == 4 && images.size(0) > 0, "latent scaling factor: expected images [N, C, H, W], got ",
        images.sizes());
  const bool was_training = vae.is_training();
  vae.eval();
  at::NoGradGuard no_grad;
  const c10::Device device = vae.encoder->parameters().front().device();
  std::vector<at::Tensor> latents;
  for (int64_t i = 0; i < images.size(0); i += batch_size) {
    const at::Tensor x = to_float(images.slice(0, i, std::min(i + batch_size, images.size(0))).to(device));
    latents.push_back(vae.encode(x).to(at::kCPU, at::kDouble));
  }
  vae.train(was_training);
  const double std = at::cat(latents).std().item<double>();
  check(std > 0 && std::isfinite(std), "latent scaling factor: the latents have std ", std,
        " (all equal or not finite); the VAE did not train");
  return 1.0 / std;
}

// ---- training ---------------------------------------------------------------------------------------

AutoencoderLoss VaeTraining::loss(const at::Tensor& x) {
  const VaeImpl::Output out = model_->forward(x, /*sample=*/true);
  AutoencoderLoss l;
  l.recon_mse = at::mse_loss(out.recon.to(at::kFloat), x);
  const auto pixels = static_cast<double>(x[0].numel());
  l.total = l.recon_mse + model_->config().model.kl_weight * out.kl.to(at::kFloat) / pixels;
  l.terms = {{"kl", out.kl.detach()}};
  return l;
}

void VaeTraining::eval_begin() {
  kl_sum_ = at::zeros({}, at::kDouble);
  eval_images_ = 0;
}

at::Tensor VaeTraining::eval_reconstruct(const at::Tensor& x) {
  const VaeImpl::Output out = model_->forward(x, /*sample=*/false);
  kl_sum_ += out.kl.to(at::kCPU, at::kDouble) * static_cast<double>(x.size(0));
  eval_images_ += x.size(0);
  return out.recon;
}

nlohmann::json VaeTraining::eval_end() {
  const int64_t side = model_->latent_size();
  return {{"kl", kl_sum_.item<double>() / static_cast<double>(std::max<int64_t>(eval_images_, 1))},
          {"scaling_factor", model_->scaling_factor()},
          {"latent_shape", {model_->config().model.latent_channels, side, side}}};
}

void VaeTraining::finalize(const at::Tensor& train_images) {
  const int64_t n = std::min(scale_images_, train_images.size(0));
  model_->set_scaling_factor(latent_scaling_factor(*model_, train_images.slice(0, 0, n)));
}

// ---- patches ----------------------------------------------------------------------------------------

at::Tensor patchify(const at::Tensor& latents, int64_t p) {
  check(p == 1 || p == 2 || p == 4, "patch_size must be 1, 2 or 4, got ", p);
  check(latents.dim() == 3 || latents.dim() == 4, "patchify: expected latents [C, h, w] or [B, C, h, w], got ",
        latents.sizes());
  const at::Tensor x = latents.dim() == 3 ? latents.unsqueeze(0) : latents;
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  check(h % p == 0 && w % p == 0, "patchify: the latent grid ", h, "x", w, " is not divisible by patch_size ", p);
  const at::Tensor out = x.reshape({b, c, h / p, p, w / p, p})
                             .permute({0, 2, 4, 1, 3, 5})  // B, h/p, w/p, C, p, p
                             .reshape({b, (h / p) * (w / p), c * p * p});
  return latents.dim() == 3 ? out[0] : out;
}

at::Tensor unpatchify(const at::Tensor& patches, int64_t p, int64_t c, int64_t h, int64_t w) {
  check(p == 1 || p == 2 || p == 4, "patch_size must be 1, 2 or 4, got ", p);
  check(h % p == 0 && w % p == 0, "unpatchify: the latent grid ", h, "x", w, " is not divisible by patch_size ", p);
  const int64_t n = (h / p) * (w / p), d = c * p * p;
  check((patches.dim() == 2 || patches.dim() == 3) && patches.size(-2) == n && patches.size(-1) == d,
        "unpatchify: expected [", n, ", ", d, "] (", c, "x", h, "x", w, " latents in ", p, "x", p,
        " patches), got ", patches.sizes());
  const at::Tensor x = patches.dim() == 2 ? patches.unsqueeze(0) : patches;
  const at::Tensor out = x.reshape({x.size(0), h / p, w / p, c, p, p})
                             .permute({0, 3, 1, 4, 2, 5})  // B, C, h/p, p, w/p, p
                             .reshape({x.size(0), c, h, w});
  return patches.dim() == 2 ? out[0] : out;
}

// ---- artifact ---------------------------------------------------------------------------------------

void save_vae(const fs::path& path, const VaeImpl& model) {
  write_image_artifact(path, kVaeArtifactKind, config::to_json(model.config()), model);
}

LoadedVae load_vae(const fs::path& path) {
  LoadedVae out;
  out.model = load_image_model<VaeImpl, VaeConfig>(resolve_artifact(path, {}, kVaeArtifactFile), kVaeArtifactKind,
                                                   out.artifact);
  return out;
}

// ---- adapter ----------------------------------------------------------------------------------------

ImageLatentAdapter::ImageLatentAdapter(fs::path model, const fs::path& base_dir, int64_t patch_size,
                                       const std::string& device)
    : model_(std::move(model)),
      vae_(load_vae(resolve_artifact(model_, base_dir, kVaeArtifactFile))),
      patch_size_(patch_size),
      device_(select_device(device)) {
  const int64_t side = vae_.model->latent_size();
  check(patch_size == 1 || patch_size == 2 || patch_size == 4, "image_latent: patch_size must be 1, 2 or 4, got ",
        patch_size);
  check(side % patch_size == 0, "image_latent: the ", side, "x", side, " latent grid of '",
        vae_.artifact.path.string(), "' is not divisible by patch_size ", patch_size, "; use a smaller patch_size");
  vae_.model->to(device_);
}

int64_t ImageLatentAdapter::latent_tokens() const {
  const int64_t g = vae_.model->latent_size() / patch_size_;
  return g * g;
}

int64_t ImageLatentAdapter::latent_dim() const {
  return vae_.model->config().model.latent_channels * patch_size_ * patch_size_;
}

Span ImageLatentAdapter::encode(const Segment& segment) const {
  check(segment.tensor.defined(), "image_latent: the segment (modality '", segment.modality, "') has no image");
  const VaeConfig& c = vae_.model->config();
  const at::Tensor x = tokenizer_input(segment.tensor, c.image_size, c.channels, "image_latent").to(device_);
  at::NoGradGuard no_grad;
  const at::Tensor z = vae_.model->encode(x)[0] * vae_.model->scaling_factor();
  Span span;
  span.modality = modality::kImage;
  span.latents = patchify(z, patch_size_).to(at::kCPU, at::kFloat).contiguous();
  return span;
}

Segment ImageLatentAdapter::decode(const Span& span) const {
  check(!span.is_discrete(), "image_latent: expected continuous latents, got discrete ids");
  const VaeConfig& c = vae_.model->config();
  const int64_t side = vae_.model->latent_size();
  const at::Tensor z = unpatchify(span.latents.to(device_, at::kFloat), patch_size_, c.model.latent_channels, side,
                                  side);
  at::NoGradGuard no_grad;
  return image_segment(to_uint8(vae_.model->decode((z / vae_.model->scaling_factor()).unsqueeze(0)))[0]);
}

nlohmann::json ImageLatentAdapter::describe() const {
  return {{"type", kType},
          {"model", model_.string()},
          {"crc32", vae_.artifact.crc32},
          {"patch_size", patch_size_},
          {"latent_tokens", latent_tokens()},
          {"latent_dim", latent_dim()},
          {"image_size", vae_.model->config().image_size},
          {"scaling_factor", vae_.model->scaling_factor()}};
}

std::shared_ptr<const Adapter> make_image_latent_adapter(const nlohmann::json& d, const fs::path& base_dir) {
  check(d.contains("model") && d.at("model").is_string(), "adapter 'image_latent': description ", d.dump(),
        " needs a string \"model\" (the VAE's run directory or vae.safetensors)");
  check(!d.contains("patch_size") || d.at("patch_size").is_number_integer(),
        "adapter 'image_latent': \"patch_size\" must be 1, 2 or 4, got ", d.value("patch_size", nlohmann::json()).dump());
  auto adapter = std::make_shared<const ImageLatentAdapter>(d.at("model").get<std::string>(), base_dir,
                                                            d.value("patch_size", int64_t{2}),
                                                            d.value("device", std::string("cpu")));
  check_recorded_crc32(d, ImageLatentAdapter::kType, adapter->vae().artifact);
  if (d.contains("latent_dim"))
    check(d.at("latent_dim") == adapter->latent_dim(), "image_latent: '", adapter->vae().artifact.path.string(),
          "' with patch_size ", adapter->patch_size(), " gives latents of dimension ", adapter->latent_dim(), " but ",
          d.at("latent_dim").dump(), " was recorded; restore that VAE or prepare the data again");
  return adapter;
}

}  // namespace tessera::image
