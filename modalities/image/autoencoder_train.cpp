#include "modalities/image/autoencoder_train.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "core/error.h"
#include "core/io/files.h"
#include "core/io/checkpoint.h"
#include "core/progress.h"
#include "core/train/autocast.h"
#include "core/train/metrics.h"
#include "core/train/optimizer.h"
#include "core/train/runtime.h"
#include "core/train/schedule.h"
#include "core/train/signals.h"
#include "core/train/weights.h"
#include "modalities/image/autoencoder.h"
#include "modalities/image/image_io.h"

namespace tessera::image {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// images[i] = make(i) for i in [0, n), filled in parallel (each image is independent and deterministic).
at::Tensor stack_images(int64_t n, int64_t channels, int64_t size, const std::function<at::Tensor(int64_t)>& make) {
  at::Tensor out = at::empty({n, channels, size, size}, at::kByte);
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i].copy_(make(i));
  });
  return out;
}

at::Tensor scene_images(const ImageDataConfig& c, int64_t first, int64_t n) {
  return stack_images(n, 3, c.size, [&](int64_t i) {
    return resize_center_crop(generate_scene(c.scenes, first + i).image, c.size);
  });
}

at::Tensor fashion_images(const ImageDataConfig& c, const std::string& split, int64_t n) {
  const LabeledImages set = read_fashion_mnist(split, c.fashion_mnist_dir, n);
  check(set.images.size(0) == n, "data: Fashion-MNIST's ", split, " split has ", set.images.size(0),
        " images, fewer than the ", n, " asked for; lower data.", split == "train" ? "train_images" : "val_images");
  return stack_images(n, 1, c.size, [&](int64_t i) { return resize_center_crop(set.images[i], c.size); });
}

ImageSet captioned_images(const ImageDataConfig& c, const std::string& recipe_dir) {
  check(!c.captions.file.empty(), "data.source is captions but data.captions.file is not set; name a captions file");
  std::vector<std::string> paths;
  std::set<std::string> seen;
  for (const CaptionedImage& pair : read_captions(c.captions, recipe_dir))
    if (seen.insert(pair.path).second) paths.push_back(pair.path);
  const auto need = static_cast<size_t>(c.train_images + c.val_images);
  check(paths.size() >= need, "data: '", c.captions.file, "' names ", paths.size(), " distinct images, fewer than ",
        "data.train_images + data.val_images = ", need, "; lower them");
  const at::Tensor all = stack_images(static_cast<int64_t>(need), 3, c.size, [&](int64_t i) {
    return resize_center_crop(read_image(paths[static_cast<size_t>(i)], 3), c.size);
  });
  return {all.slice(0, 0, c.train_images), all.slice(0, c.train_images)};
}

// Batch indices: the concatenation of per-epoch permutations, each drawn from (seed, epoch).
class BatchOrder {
 public:
  BatchOrder(int64_t n, int64_t seed) : n_(n), seed_(seed) {}
  at::Tensor indices(int64_t step, int64_t batch) {
    std::vector<at::Tensor> parts;
    for (int64_t pos = step * batch, left = batch; left > 0;) {
      const int64_t epoch = pos / n_, offset = pos % n_, take = std::min(left, n_ - offset);
      if (epoch != epoch_) {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed_) * 1000003u +
                                                            static_cast<uint64_t>(epoch));
        perm_ = at::randperm(n_, gen, at::kLong);
        epoch_ = epoch;
      }
      parts.push_back(perm_.slice(0, offset, offset + take));
      pos += take;
      left -= take;
    }
    return at::cat(parts);
  }

 private:
  int64_t n_, seed_, epoch_ = -1;
  at::Tensor perm_;
};

std::map<std::string, at::Tensor> to_map(const io::NamedTensors& tensors) {
  return {tensors.begin(), tensors.end()};
}

nlohmann::json section(const nlohmann::json& config, const char* key) {
  return config.is_object() && config.contains(key) ? config.at(key) : nlohmann::json();
}

void write_json(const fs::path& path, const nlohmann::json& j) {
  const std::string text = j.dump(2) + "\n";
  write_bytes_atomic(path, text.data(), text.size());
}

}  // namespace

ImageSet load_image_data(const ImageDataConfig& c, const std::string& recipe_dir) {
  check(c.size >= 8 && c.size <= 1024, "data.size must be in 8..1024, got ", c.size);
  check(c.train_images >= 1, "data.train_images must be positive, got ", c.train_images);
  check(c.val_images >= 1, "data.val_images must be positive, got ", c.val_images);
  if (c.source == "scenes") {
    validate(c.scenes);
    return {scene_images(c, 0, c.train_images), scene_images(c, kValSceneOffset, c.val_images)};
  }
  if (c.source == "fashion_mnist") return {fashion_images(c, "train", c.train_images), fashion_images(c, "test", c.val_images)};
  return captioned_images(c, recipe_dir);
}

void validate(const AutoencoderTrainConfig& c) {
  check(c.steps > 0, "train.steps must be positive, got ", c.steps);
  check(c.batch_size > 0, "train.batch_size must be positive, got ", c.batch_size);
  check(c.lr > 0 && std::isfinite(c.lr), "train.lr must be a positive number, got ", c.lr);
  check(c.warmup_steps >= 0, "train.warmup_steps must be >= 0, got ", c.warmup_steps);
  check(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1], got ", c.min_lr_ratio);
  check(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1, "train.beta1/beta2 must be in [0, 1)");
  check(c.log_every > 0, "train.log_every must be positive, got ", c.log_every);
  check(c.eval_every >= 0 && c.checkpoint_every >= 0, "train.eval_every and train.checkpoint_every must be >= 0");
}

bool autoencoder_finished(const fs::path& run_dir, const std::string& artifact_file) {
  std::error_code ec;
  return fs::is_regular_file(run_dir / artifact_file, ec) && fs::is_regular_file(run_dir / kEvalFile, ec);
}

nlohmann::json evaluate_autoencoder(TrainableAutoencoder& model, const at::Tensor& images, int64_t batch_size,
                                    const c10::Device& device, bool bf16, at::Tensor* recon, int64_t keep) {
  torch::nn::Module& net = model.module();
  const bool was_training = net.is_training();
  net.eval();
  at::NoGradGuard no_grad;
  model.eval_begin();
  at::Tensor squared = at::zeros({}, at::TensorOptions(device).dtype(at::kDouble));
  std::vector<at::Tensor> kept;
  int64_t kept_count = 0;
  for (int64_t i = 0; i < images.size(0); i += batch_size) {
    const at::Tensor x = to_float(images.slice(0, i, std::min(i + batch_size, images.size(0))).to(device));
    at::Tensor r;
    {
      const AutocastGuard autocast(device.type(), bf16);
      r = model.eval_reconstruct(x);
    }
    r = r.to(at::kFloat).clamp(-1.0, 1.0);
    squared += (r - x).pow(2).sum().to(at::kDouble);
    if (kept_count < keep) {
      kept.push_back(r.slice(0, 0, keep - kept_count).cpu());
      kept_count += kept.back().size(0);
    }
  }
  net.train(was_training);
  if (recon != nullptr && !kept.empty()) *recon = at::cat(kept);
  const double mse = squared.item<double>() / static_cast<double>(images.numel());
  nlohmann::json out = {{"val_mse", mse}, {"val_psnr", psnr_from_mse(mse)}};
  out.update(model.eval_end());
  return out;
}

AutoencoderResult train_autoencoder(TrainableAutoencoder& model, const ImageSet& data, const AutoencoderRun& run) {
  const AutoencoderTrainConfig& cfg = run.train;
  validate(cfg);
  check(data.train.defined() && data.val.defined() && data.train.size(0) > 0 && data.val.size(0) > 0,
        run.task, ": no training or validation images");
  if (cfg.threads > 0) at::set_num_threads(static_cast<int>(cfg.threads));
  const c10::Device device = select_device(cfg.device);
  const bool bf16 = use_bf16(cfg.precision, device);
  if (device.is_cuda()) at::globalContext().setBenchmarkCuDNN(true);  // fixed conv shapes: let cuDNN pick
  torch::nn::Module& net = model.module();
  net.to(device);
  net.train();
  fs::create_directories(run.run_dir);

  const auto named = parameter_tensors(net);
  std::vector<at::Tensor> params;
  int64_t parameter_count = 0;
  for (const auto& [name, p] : named) {
    params.push_back(p);
    parameter_count += p.numel();
  }
  AdamW optimizer(named, AdamWConfig{cfg.beta1, cfg.beta2, 1e-8, cfg.weight_decay});
  io::CheckpointManager checkpoints(run.run_dir / "checkpoints", static_cast<int>(cfg.keep_checkpoints));

  AutoencoderResult result;
  int64_t step = 0;
  const std::optional<fs::path> latest = checkpoints.latest();
  check(latest || !run.require_checkpoint, "--resume: no checkpoint in ", checkpoints.root().string(),
        "; run without --resume to start fresh");
  if (latest) {
    const io::CheckpointContents ckpt = io::load_checkpoint(*latest);
    for (const char* key : {"model", "data"})
      check(section(ckpt.state.value("config", nlohmann::json()), key) == section(run.config, key),
            run.task, ": the checkpoint ", latest->string(), " was trained with another `", key,
            "` section than this recipe's; restore it, or start over with --force");
    load_module_state(net, to_map(ckpt.model), (*latest / io::kModelFile).string());
    optimizer.load_state(to_map(ckpt.optimizer), (*latest / io::kOptimizerFile).string());
    step = ckpt.state.at("step").get<int64_t>();
    restore_rng_state(ckpt.state.at("rng"));
    if (!run.quiet) std::printf("resumed from %s at step %ld\n", latest->string().c_str(), (long)step);
  }
  result.start_step = step;
  auto save = [&](const nlohmann::json& extra) {
    nlohmann::json state = {{"format", "tessera-checkpoint"}, {"task", run.task}, {"step", step},
                            {"config", run.config}, {"rng", capture_rng_state()}};
    if (extra.is_object()) state.update(extra);
    return checkpoints.save(step, {module_state(net), optimizer.state(), std::move(state)});
  };

  const at::Tensor train_images = data.train.to(device);  // uint8: small enough to live on the GPU
  BatchOrder order(train_images.size(0), run.seed);
  MetricsWriter metrics((run.run_dir / "metrics.jsonl").string());
  const ScheduleConfig schedule{cfg.schedule, cfg.lr, cfg.min_lr_ratio, cfg.warmup_steps, cfg.steps};
  StopSignalGuard stop;
  ProgressBar bar(cfg.steps, run.task, step);
  if (!run.quiet)
    std::printf("training %s (%s parameters) on %s, %s, steps %ld -> %ld, %ld train / %ld val images %ldx%ldx%ld\n",
                run.task.c_str(), format_count(static_cast<double>(parameter_count)).c_str(),
                device_description(device).c_str(), bf16 ? "bf16 autocast" : "fp32", (long)step, (long)cfg.steps,
                (long)data.train.size(0), (long)data.val.size(0), (long)data.train.size(1), (long)data.train.size(2),
                (long)data.train.size(3));

  auto run_eval = [&](at::Tensor* recon) {
    nlohmann::json ev = evaluate_autoencoder(model, data.val, cfg.batch_size, device, bf16, recon, run.recon_images);
    ev["step"] = step;
    metrics.write(ev);
    if (!run.quiet && !bar.enabled()) std::printf("eval step %ld: %s\n", (long)step, ev.dump().c_str());
    return ev;
  };

  double train_seconds = 0, window_seconds = 0;
  int64_t window_images = 0, trained_images = 0;
  while (step < cfg.steps) {
    const auto t0 = Clock::now();
    const double lr = learning_rate(schedule, step);
    const at::Tensor x = to_float(train_images.index_select(0, order.indices(step, cfg.batch_size).to(device)));
    AutoencoderLoss l;
    {
      const AutocastGuard autocast(device.type(), bf16);
      l = model.loss(x);
    }
    l.total.backward();
    const at::Tensor grad_norm = clip_grad_norm(params, cfg.grad_clip);
    const double loss = l.total.item<double>();  // one sync per step: the NaN check needs it
    if (!std::isfinite(loss)) {
      metrics.write({{"step", step + 1}, {"event", "non_finite_loss"}, {"loss", std::isnan(loss) ? "nan" : "inf"}});
      bar.finish();
      const std::optional<fs::path> good = checkpoints.latest();
      fail(run.task, ": loss is ", std::isnan(loss) ? "NaN" : "infinite", " at step ", step + 1,
           "; the update was not applied. Last good checkpoint: ", good ? good->string() : std::string("none"),
           ". Lower train.lr, raise train.warmup_steps or set train.precision=fp32, then run again.");
    }
    optimizer.step(lr);
    optimizer.zero_grad();
    ++step;
    result.losses.push_back(loss);
    const double dt = seconds_since(t0);
    train_seconds += dt;
    window_seconds += dt;
    window_images += x.size(0);
    trained_images += x.size(0);

    if (step % cfg.log_every == 0 || step == cfg.steps) {
      const double ips = window_images / std::max(window_seconds, 1e-9);
      const double mse = l.recon_mse.item<double>();
      nlohmann::json record = {{"step", step}, {"loss", loss}, {"recon_mse", mse}, {"psnr", psnr_from_mse(mse)},
                               {"lr", lr}, {"grad_norm", grad_norm.item<double>()}, {"images_per_s", ips}};
      std::string postfix = str("loss ", loss, " psnr ", psnr_from_mse(mse));
      for (const auto& [name, value] : l.terms) {
        record[name] = value.item<double>();
        postfix += str(" ", name, " ", record[name].get<double>());
      }
      postfix += " " + format_count(ips) + " img/s";
      metrics.write(record);
      if (bar.enabled()) {
        bar.update(step, postfix);
      } else if (!run.quiet) {
        std::printf("step %ld/%ld %s\n", (long)step, (long)cfg.steps, postfix.c_str());
        std::fflush(stdout);
      }
      window_seconds = 0;
      window_images = 0;
    }
    if (cfg.eval_every > 0 && step % cfg.eval_every == 0 && step < cfg.steps) run_eval(nullptr);
    if (stop.requested()) {
      const fs::path dir = save({{"interrupted_by_signal", stop.signal_number()}});
      bar.finish();
      if (!run.quiet) std::printf("stopped at step %ld; checkpoint %s\n", (long)step, dir.string().c_str());
      result.interrupted = true;
      return result;
    }
    if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < cfg.steps) save({});
  }
  bar.finish();
  result.images_per_second = trained_images / std::max(train_seconds, 1e-9);

  model.finalize(data.train);
  at::Tensor recon;
  result.eval = run_eval(&recon);
  result.eval["images_per_s"] = result.images_per_second;
  result.eval["train_seconds"] = train_seconds;
  result.eval["device"] = device_description(device);
  result.eval["precision"] = bf16 ? "bf16" : "fp32";
  result.eval["train_images"] = data.train.size(0);
  result.eval["val_images"] = data.val.size(0);
  result.artifact = run.run_dir / run.artifact_file;
  model.save_artifact(result.artifact);
  const at::Tensor originals = data.val.slice(0, 0, recon.size(0));
  write_grid_png(run.run_dir / kReconstructionsFile, at::cat({originals, to_uint8(recon)}), recon.size(0));
  write_json(run.run_dir / kEvalFile, result.eval);  // last: its presence marks the run finished
  return result;
}

}  // namespace tessera::image
