#include "modalities/speech_units/vocoder.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <random>

#include "core/config.h"
#include "core/error.h"
#include "core/io/safetensors.h"
#include "core/train/optimizer.h"
#include "core/train/schedule.h"
#include "core/train/weights.h"

namespace tessera::speech {
namespace fs = std::filesystem;

// ---- Griffin-Lim ---------------------------------------------------------------------------------

void validate(const GriffinLimConfig& c, const FeatureConfig& f) {
  check(c.iterations >= 0, "griffin_lim.iterations must be >= 0, got ", c.iterations);
  check(c.momentum >= 0 && c.momentum < 1, "griffin_lim.momentum must be in [0, 1), got ", c.momentum);
  check(c.hop_divisor >= 1 && f.hop_length % c.hop_divisor == 0, "griffin_lim.hop_divisor (", c.hop_divisor,
        ") must be >= 1 and divide features.hop_length (", f.hop_length, "), e.g. 4");
}

at::Tensor mel_to_magnitude(const at::Tensor& log_mel, const FeatureConfig& f, int64_t nnls_iterations) {
  check(log_mel.dim() == 2 && log_mel.size(1) == f.n_mels, "mel_to_magnitude: expected log-mel [frames, ", f.n_mels,
        "], got ", log_mel.sizes());
  check(nnls_iterations >= 0, "griffin_lim.nnls_iterations must be >= 0, got ", nnls_iterations);
  const at::Tensor fb = mel_filterbank(f);  // [n_freqs, n_mels]
  const at::Tensor mel = at::exp(log_mel.to(at::kCPU, at::kDouble));
  at::Tensor power;
  if (nnls_iterations == 0) {
    power = at::matmul(mel, at::linalg_pinv(fb)).clamp_min(0.0);
  } else {
    const at::Tensor fbt = fb.t();
    const at::Tensor target = at::matmul(mel, fbt);  // M B^T, [frames, n_freqs]
    const at::Tensor gram = at::matmul(fb, fbt);     // B B^T
    power = target / fb.sum(1).clamp_min(1e-12);
    for (int64_t i = 0; i < nnls_iterations; ++i) power = power * target / (at::matmul(power, gram) + 1e-30);
  }
  return power.sqrt().to(at::kFloat);
}

at::Tensor griffin_lim(const at::Tensor& magnitude, const FeatureConfig& f, int64_t hop, int64_t length,
                       const GriffinLimConfig& c) {
  validate(f);
  check(magnitude.dim() == 2 && magnitude.size(1) == f.n_fft / 2 + 1, "griffin_lim: expected a magnitude [frames, ",
        f.n_fft / 2 + 1, "], got ", magnitude.sizes());
  check(hop >= 1 && hop <= f.win_length, "griffin_lim: hop ", hop, " must be in 1..win_length (", f.win_length, ")");
  check(length >= 1, "griffin_lim: length must be >= 1, got ", length);
  // stft with reflect padding needs more than n_fft / 2 samples: append silent frames to short inputs.
  at::Tensor mag = magnitude.to(at::kCPU, at::kFloat).t();  // [n_freqs, frames]
  const int64_t min_frames = (f.n_fft / 2) / hop + 2;
  if (mag.size(1) < min_frames) mag = at::constant_pad_nd(mag, {0, min_frames - mag.size(1)});
  mag = mag.contiguous();
  const int64_t inner_length = (mag.size(1) - 1) * hop;  // stft of this many samples gives mag's frame count
  const at::Tensor window = at::hann_window(f.win_length, /*periodic=*/true, at::kFloat);
  auto istft = [&](const at::Tensor& spec, int64_t len) {
    return at::istft(spec, f.n_fft, hop, f.win_length, window, /*center=*/true, /*normalized=*/false,
                     /*onesided=*/true, len);
  };
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(c.seed));
  const at::Tensor phase = at::rand(mag.sizes(), gen, at::kFloat) * (2.0 * M_PI);
  at::Tensor angles = at::polar(at::ones_like(phase), phase);
  at::Tensor previous = at::zeros_like(angles);
  const double beta = c.momentum / (1.0 + c.momentum);
  for (int64_t it = 0; it < c.iterations; ++it) {
    const at::Tensor inverse = istft(mag * angles, inner_length);
    const at::Tensor rebuilt = at::stft(inverse, f.n_fft, hop, f.win_length, window, /*center=*/true, "reflect",
                                        /*normalized=*/false, /*onesided=*/true, /*return_complex=*/true);
    angles = c.momentum > 0 ? rebuilt - previous * beta : rebuilt;
    angles = angles / (angles.abs() + 1e-16);
    previous = rebuilt;
  }
  return istft(mag * angles, length).contiguous();
}

at::Tensor mel_to_waveform(const at::Tensor& log_mel, const FeatureConfig& f, const GriffinLimConfig& c) {
  validate(c, f);
  check(log_mel.dim() == 2 && log_mel.size(0) >= 1 && log_mel.size(1) == f.n_mels,
        "mel_to_waveform: expected log-mel [frames >= 1, ", f.n_mels, "], got ", log_mel.sizes());
  const int64_t frames = log_mel.size(0), r = c.hop_divisor;
  // Frame j of the synthesis grid lies at analysis position j / r; interpolate the log-mel linearly
  // (holding the last frame beyond the end).
  const at::Tensor pos = at::clamp_max(at::arange(frames * r, at::kDouble) / static_cast<double>(r),
                                       static_cast<double>(frames - 1));
  const at::Tensor lo = pos.floor().to(at::kLong);
  const at::Tensor hi = at::clamp_max(lo + 1, frames - 1);
  const at::Tensor w = (pos - lo.to(at::kDouble)).unsqueeze(1);
  const at::Tensor lm = log_mel.to(at::kCPU, at::kDouble);
  const at::Tensor fine = lm.index_select(0, lo) * (1.0 - w) + lm.index_select(0, hi) * w;
  const int64_t length = frames * f.hop_length - f.hop_length / 2;
  return griffin_lim(mel_to_magnitude(fine, f, c.nnls_iterations), f, f.hop_length / r, length, c);
}

double spectral_convergence(const at::Tensor& reference, const at::Tensor& estimate) {
  check(reference.sizes() == estimate.sizes(), "spectral_convergence: shapes differ (", reference.sizes(), " vs ",
        estimate.sizes(), ")");
  const at::Tensor a = reference.to(at::kDouble), b = estimate.to(at::kDouble);
  return (a - b).norm().item<double>() / std::max(a.norm().item<double>(), 1e-300);
}

double mel_cepstral_distortion(const at::Tensor& a, const at::Tensor& b, int64_t n_cep, double top_db) {
  check(a.dim() == 2 && a.sizes() == b.sizes() && a.size(0) > 0, "mel_cepstral_distortion: expected two log-mels of ",
        "the same shape [frames > 0, n_mels], got ", a.sizes(), " and ", b.sizes(), " (align the frames first)");
  check(n_cep >= 2 && n_cep <= a.size(1), "mel_cepstral_distortion: n_cep must be in 2..n_mels, got ", n_cep);
  const at::Tensor dct = dct_matrix(a.size(1), n_cep);
  at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
  if (top_db > 0) {
    const double floor = x.max().item<double>() - top_db * std::log(10.0) / 10.0;
    x = x.clamp_min(floor), y = y.clamp_min(floor);
  }
  // dct_matrix is the orthonormal DCT-II: its columns m >= 1 times sqrt(2 / N) give c_m's (2 / N) cos(...).
  const at::Tensor diff = at::matmul(0.5 * (x - y), dct) * std::sqrt(2.0 / static_cast<double>(a.size(1)));
  const at::Tensor per_frame = diff.slice(1, 1).pow(2).sum(1).sqrt();
  return 10.0 * std::sqrt(2.0) / std::log(10.0) * per_frame.mean().item<double>();
}

// ---- the network ---------------------------------------------------------------------------------

void validate(const VocoderModelConfig& c) {
  check(c.channels >= 1, "model.channels must be >= 1, got ", c.channels);
  check(c.blocks >= 0, "model.blocks must be >= 0, got ", c.blocks);
  check(c.kernel_size >= 1 && c.kernel_size % 2 == 1, "model.kernel_size must be odd, got ", c.kernel_size);
  check(!c.dilations.empty(), "model.dilations must list at least one dilation, e.g. [1, 2, 4]");
  for (const int64_t d : c.dilations) check(d >= 1, "model.dilations must be >= 1, got ", d);
}

VocoderNetImpl::VocoderNetImpl(const VocoderModelConfig& c, int64_t num_units, int64_t n_mels) {
  validate(c);
  check(num_units >= 1 && n_mels >= 1, "vocoder: need num_units >= 1 and n_mels >= 1");
  embed_ = register_module("embed", torch::nn::Embedding(num_units, c.channels));
  norms_ = register_module("norms", torch::nn::ModuleList());
  convs_ = register_module("convs", torch::nn::ModuleList());
  for (int64_t b = 0; b < c.blocks; ++b) {
    const int64_t d = c.dilations[static_cast<size_t>(b) % c.dilations.size()];
    norms_->push_back(torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.channels})));
    convs_->push_back(torch::nn::Conv1d(
        torch::nn::Conv1dOptions(c.channels, c.channels, c.kernel_size).dilation(d).padding(d * (c.kernel_size / 2))));
  }
  norms_->push_back(torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.channels})));
  out_ = register_module("out", torch::nn::Linear(c.channels, n_mels));
  at::NoGradGuard no_grad;
  out_->weight.mul_(0.1);
}

void VocoderNetImpl::set_output_bias(const at::Tensor& mean_frame) {
  at::NoGradGuard no_grad;
  out_->bias.copy_(mean_frame.to(out_->bias.device(), at::kFloat));
}

at::Tensor VocoderNetImpl::forward(const at::Tensor& units) {
  check(units.dim() == 2, "vocoder: expected units [batch, frames], got ", units.sizes());
  at::Tensor h = embed_->forward(units);  // [B, T, C]
  const size_t blocks = convs_->size();
  for (size_t b = 0; b < blocks; ++b) {
    const at::Tensor x = at::gelu(norms_[b]->as<torch::nn::LayerNorm>()->forward(h)).transpose(1, 2);
    h = h + convs_[b]->as<torch::nn::Conv1d>()->forward(x).transpose(1, 2);
  }
  return out_->forward(at::gelu(norms_[blocks]->as<torch::nn::LayerNorm>()->forward(h)));
}

// ---- training --------------------------------------------------------------------------------------

void validate(const VocoderTrainConfig& c) {
  check(c.steps >= 1, "train.steps must be >= 1, got ", c.steps);
  check(c.batch_size >= 1, "train.batch_size must be >= 1, got ", c.batch_size);
  check(c.crop_frames >= 1, "train.crop_frames must be >= 1, got ", c.crop_frames);
  check(c.lr > 0, "train.lr must be positive, got ", c.lr);
  check(c.warmup_steps >= 0, "train.warmup_steps must be >= 0");
  check(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1]");
  check(c.log_every >= 1, "train.log_every must be >= 1");
}

std::vector<VocoderTrainRecord> train_vocoder(VocoderNet& net, const std::vector<UnitMelPair>& data,
                                              const VocoderTrainConfig& c, const c10::Device& device,
                                              const std::function<void(const VocoderTrainRecord&)>& on_record) {
  validate(c);
  check(!data.empty(), "train_vocoder: no utterances");
  const int64_t n_mels = data[0].log_mel.size(1);
  for (const auto& p : data)
    check(p.units.dim() == 1 && p.log_mel.dim() == 2 && p.units.size(0) == p.log_mel.size(0) &&
              p.log_mel.size(1) == n_mels && p.units.size(0) > 0,
          "train_vocoder: each utterance needs units [F] and log-mel [F, ", n_mels, "] with F > 0");
  net->to(device);
  net->train();
  AdamW optimizer(parameter_tensors(*net), AdamWConfig{0.9, 0.98, 1e-8, c.weight_decay});
  std::vector<at::Tensor> params;
  for (const auto& p : net->parameters()) params.push_back(p);
  ScheduleConfig schedule;
  schedule.kind = "cosine";
  schedule.peak_lr = c.lr;
  schedule.min_lr_ratio = c.min_lr_ratio;
  schedule.warmup_steps = c.warmup_steps;
  schedule.total_steps = c.steps;

  std::mt19937_64 rng(static_cast<uint64_t>(c.seed));
  std::uniform_int_distribution<size_t> pick(0, data.size() - 1);
  std::vector<VocoderTrainRecord> records;
  double loss_sum = 0;
  int64_t loss_count = 0;
  for (int64_t step = 0; step < c.steps; ++step) {
    at::Tensor units = at::zeros({c.batch_size, c.crop_frames}, at::kLong);
    at::Tensor target = at::zeros({c.batch_size, c.crop_frames, n_mels}, at::kFloat);
    at::Tensor mask = at::zeros({c.batch_size, c.crop_frames, 1}, at::kFloat);
    for (int64_t b = 0; b < c.batch_size; ++b) {
      const UnitMelPair& p = data[pick(rng)];
      const int64_t frames = p.units.size(0), len = std::min(frames, c.crop_frames);
      const int64_t start = std::uniform_int_distribution<int64_t>(0, frames - len)(rng);
      units[b].slice(0, 0, len).copy_(p.units.slice(0, start, start + len));
      target[b].slice(0, 0, len).copy_(p.log_mel.slice(0, start, start + len));
      mask[b].slice(0, 0, len).fill_(1.0f);
    }
    units = units.to(device), target = target.to(device), mask = mask.to(device);
    const at::Tensor pred = net->forward(units);
    const at::Tensor loss = ((pred - target).abs() * mask).sum() / (mask.sum() * static_cast<double>(n_mels));
    optimizer.zero_grad();
    loss.backward();
    clip_grad_norm(params, c.grad_clip);
    const double lr = learning_rate(schedule, step);
    optimizer.step(lr);
    const double value = loss.item<double>();
    check(std::isfinite(value), "vocoder training: the loss became ", value, " at step ", step + 1,
          "; lower train.lr");
    loss_sum += value;
    ++loss_count;
    if ((step + 1) % c.log_every == 0 || step + 1 == c.steps) {
      records.push_back({step + 1, loss_sum / static_cast<double>(loss_count), lr});
      if (on_record) on_record(records.back());
      loss_sum = 0;
      loss_count = 0;
    }
  }
  net->eval();
  return records;
}

// ---- the artifact ----------------------------------------------------------------------------------

Vocoder::Vocoder(VocoderModelConfig model, FeatureConfig features, GriffinLimConfig griffin_lim, int64_t num_units,
                 uint32_t kmeans_crc32)
    : model_(std::move(model)),
      features_(features),
      griffin_lim_(griffin_lim),
      num_units_(num_units),
      kmeans_crc32_(kmeans_crc32) {
  validate(features_);
  validate(griffin_lim_, features_);
  net_ = VocoderNet(model_, num_units_, features_.n_mels);
  net_->eval();
}

at::Tensor Vocoder::predict_mel(const std::vector<int64_t>& units) const {
  check(!units.empty(), "vocoder: no units to synthesise");
  for (size_t i = 0; i < units.size(); ++i)
    check(units[i] >= 0 && units[i] < num_units_, "vocoder: unit ", units[i], " at position ", i,
          " is outside the codebook [0, ", num_units_, ")");
  at::NoGradGuard no_grad;
  const c10::Device device = net_->parameters().front().device();
  const at::Tensor ids = at::tensor(units, at::kLong).unsqueeze(0).to(device);
  return net_.ptr()->forward(ids).squeeze(0).to(at::kCPU, at::kFloat);
}

at::Tensor Vocoder::synthesize(const std::vector<int64_t>& units) const {
  return mel_to_waveform(predict_mel(units), features_, griffin_lim_);
}

void Vocoder::save(const fs::path& path) const {
  io::NamedTensors tensors;
  for (auto& [name, t] : parameter_tensors(*net_)) tensors.emplace_back(name, t.detach());
  io::save_safetensors(path, tensors,
                       {{"format", "tessera.vocoder"},
                        {"model", config::to_json(model_).dump()},
                        {"features", config::to_json(features_).dump()},
                        {"griffin_lim", config::to_json(griffin_lim_).dump()},
                        {"num_units", std::to_string(num_units_)},
                        {"kmeans_crc32", std::to_string(kmeans_crc32_)}});
}

Vocoder Vocoder::load(const fs::path& path) {
  std::error_code ec;
  check(fs::is_regular_file(path, ec), "vocoder: no file at '", path.string(),
        "'; give the vocoder.safetensors (or run directory) that `tessera run recipes/speech/vocoder.yaml` writes");
  io::SafetensorsFile f = io::load_safetensors(path);
  const auto meta = [&](const char* key) -> const std::string& {
    const auto it = f.metadata.find(key);
    check(it != f.metadata.end(), "'", path.string(), "' is not a Tessera vocoder (metadata \"", key, "\" missing)");
    return it->second;
  };
  check(meta("format") == "tessera.vocoder", "'", path.string(), "' is not a Tessera vocoder (format=",
        meta("format"), ")");
  try {
    const auto parse = [&](const char* key, auto& out) {
      out = config::parse<std::decay_t<decltype(out)>>(config::json_to_yaml(nlohmann::json::parse(meta(key))), key,
                                                       path.string());
    };
    VocoderModelConfig model;
    FeatureConfig features;
    GriffinLimConfig gl;
    parse("model", model);
    parse("features", features);
    parse("griffin_lim", gl);
    Vocoder v(model, features, gl, std::stoll(meta("num_units")),
              static_cast<uint32_t>(std::stoull(meta("kmeans_crc32"))));
    load_parameters(*v.net_, f.tensors, path.string());
    return v;
  } catch (const nlohmann::json::exception& e) {
    fail("'", path.string(), "': unreadable vocoder metadata (", e.what(), ")");
  } catch (const std::logic_error& e) {
    fail("'", path.string(), "': unreadable vocoder metadata (", e.what(), ")");
  }
}

}  // namespace tessera::speech
