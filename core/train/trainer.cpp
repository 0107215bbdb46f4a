#include "core/train/trainer.h"

#include "core/train/stage_timer.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include "core/config.h"
#include "core/error.h"
#include "core/io/checkpoint.h"
#include "core/progress.h"
#include "core/train/autocast.h"
#include "core/train/metrics.h"
#include "core/train/optimizer.h"
#include "core/train/runtime.h"
#include "core/train/schedule.h"
#include "core/train/signals.h"
#include "core/train/weights.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

constexpr int kCheckpointVersion = 1;

void validate(const TrainConfig& c) {
  check(c.steps > 0, "train.steps must be positive (or set train.flops_budget), got ", c.steps);
  check(c.grad_accum > 0, "train.grad_accum must be positive, got ", c.grad_accum);
  check(c.lr > 0 && std::isfinite(c.lr), "train.lr must be a positive number, got ", c.lr);
  check(c.warmup_steps >= 0, "train.warmup_steps must be >= 0");
  check(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1]");
  check(c.decay_fraction >= 0 && c.decay_fraction <= 1, "train.decay_fraction must be in [0, 1]");
  check(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1, "train.beta1/beta2 must be in [0, 1)");
  check(c.log_every > 0, "train.log_every must be positive");
}

ScheduleConfig schedule_of(const TrainConfig& c) {
  ScheduleConfig s;
  s.kind = c.schedule;
  s.peak_lr = c.lr;
  s.min_lr_ratio = c.min_lr_ratio;
  s.warmup_steps = c.warmup_steps;
  s.total_steps = c.steps;
  s.decay_fraction = c.decay_fraction;
  return s;
}

std::map<std::string, at::Tensor> to_map(const io::NamedTensors& tensors) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : tensors) out.emplace(name, t);
  return out;
}

std::string format_loss(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

std::string bpb_text(const EvalResult& ev) {
  if (ev.bits_per_byte <= 0) return "";
  char buf[48];
  std::snprintf(buf, sizeof buf, " bpb %.4f", ev.bits_per_byte);
  return buf;
}

}  // namespace

EvalResult evaluate(LanguageModel& model, Objective& objective, DataSource& data, int64_t max_batches,
                    const c10::Device& device, bool bf16) {
  at::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  data.reset();
  const int64_t batches = max_batches > 0 ? std::min(max_batches, data.batches_per_epoch()) : data.batches_per_epoch();
  at::Tensor sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(device));
  at::Tensor count = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(device));
  at::Tensor position_sum, position_count;  // [T] double, when the objective reports per-position NLL
  for (int64_t i = 0; i < batches; ++i) {
    const Batch batch = data.next().to(device);
    AutocastGuard autocast(device.type(), bf16);
    const LossTerms terms = objective.compute(model, batch);
    check(terms.sum_nll.defined() && terms.count.defined(), "objective '", objective.name(),
          "' does not report per-token NLL, so it cannot be evaluated for loss/perplexity");
    sum += terms.sum_nll.to(at::kDouble);
    count += terms.count.to(at::kDouble);
    if (terms.token_nll.defined() && terms.token_nll.dim() == 2) {
      const at::Tensor nll = terms.token_nll.to(at::kDouble).sum(0);
      const at::Tensor mask = terms.token_mask.defined()
                                  ? terms.token_mask.to(at::kDouble).sum(0)
                                  : at::full({terms.token_nll.size(1)}, static_cast<double>(terms.token_nll.size(0)),
                                             nll.options());
      if (!position_sum.defined()) {
        position_sum = nll;
        position_count = mask;
      } else if (position_sum.size(0) == nll.size(0)) {
        position_sum += nll;
        position_count += mask;
      }  // rows of another length (a ragged last batch) count in the totals only
    }
  }
  data.reset();
  if (was_training) model.train();
  EvalResult r;
  r.tokens = static_cast<int64_t>(count.item<double>());
  r.sum_nll = sum.item<double>();
  r.loss = r.sum_nll / std::max<double>(1.0, static_cast<double>(r.tokens));
  r.perplexity = std::exp(r.loss);
  r.bits_per_token = r.loss / std::log(2.0);
  if (position_sum.defined()) {
    const at::Tensor ps = position_sum.cpu().contiguous(), pc = position_count.cpu().contiguous();
    r.position_sum_nll.assign(ps.data_ptr<double>(), ps.data_ptr<double>() + ps.numel());
    r.position_count.assign(pc.data_ptr<double>(), pc.data_ptr<double>() + pc.numel());
  }
  return r;
}

std::vector<PositionBucket> position_buckets(const EvalResult& r, const SplitSize& split, int count) {
  check(count > 0, "position_buckets: count must be positive");
  const int64_t T = static_cast<int64_t>(r.position_sum_nll.size());
  std::vector<int64_t> edges{T};
  for (int i = 1; i < count; ++i) {
    const int64_t e = T >> i;
    if (e <= 0 || e == edges.back()) break;
    edges.push_back(e);
  }
  edges.push_back(0);
  std::reverse(edges.begin(), edges.end());
  const double bytes_per_target =
      split.targets > 0 && split.bytes > 0 ? static_cast<double>(split.bytes) / static_cast<double>(split.targets) : 0.0;
  std::vector<PositionBucket> out;
  for (size_t b = 0; b + 1 < edges.size(); ++b) {
    if (edges[b] == edges[b + 1]) continue;
    PositionBucket bucket;
    bucket.begin = edges[b];
    bucket.end = edges[b + 1];
    double nll = 0, n = 0;
    for (int64_t p = bucket.begin; p < bucket.end; ++p) {
      nll += r.position_sum_nll[p];
      n += r.position_count[p];
    }
    bucket.tokens = static_cast<int64_t>(n);
    bucket.bits_per_token = n > 0 ? nll / n / std::log(2.0) : 0.0;
    bucket.bits_per_byte = bytes_per_target > 0 ? bucket.bits_per_token / bytes_per_target : 0.0;
    out.push_back(bucket);
  }
  return out;
}

void add_bits_per_byte(EvalResult& r, const SplitSize& split) {
  check(split.bytes > 0 && split.targets > 0, "bits per byte needs the split's byte and target counts");
  r.bits_per_byte_exact = r.tokens == split.targets;
  const double nll = r.bits_per_byte_exact
                         ? r.sum_nll
                         : r.loss * static_cast<double>(split.targets);  // per-token mean x all targets
  r.bits_per_byte = nll / (std::log(2.0) * static_cast<double>(split.bytes));
}

StepOutput train_step(LanguageModel& model, Objective& objective,
                      const std::vector<at::Tensor>& params, const std::function<Batch()>& next_batch,
                      int64_t grad_accum, double lr, double grad_clip, const c10::Device& device, bool bf16) {
  StepOutput out;
  at::Tensor loss_sum = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device));
  for (int64_t micro = 0; micro < grad_accum; ++micro) {
    const Batch batch = next_batch();
    out.tokens += batch.tokens.numel();
    LossTerms terms;
    {
      AutocastGuard autocast(device.type(), bf16);
      terms = objective.compute(model, batch);
    }
    if (model.stage_timer()) model.stage_timer()->end_forward(terms.total);
    (terms.total / static_cast<double>(grad_accum)).backward();
    loss_sum += terms.total.detach().to(at::kFloat);
  }
  if (model.stage_timer()) model.stage_timer()->finish();
  out.loss = loss_sum / static_cast<double>(grad_accum);
  out.grad_norm = clip_grad_norm(params, /*max_norm=*/0.0);  // measured only: AdamW applies the clipping
  if (grad_clip > 0) out.grad_multiplier = clip_coefficient(out.grad_norm, grad_clip);
  return out;
}

TrainResult train(TrainerSetup setup, bool resume) {
  const TrainConfig& cfg = setup.config;
  validate(cfg);
  check(setup.model && setup.objective && setup.train_data, "trainer needs a model, an objective and data");
  if (cfg.threads > 0) at::set_num_threads(static_cast<int>(cfg.threads));

  LanguageModel& model = *setup.model;
  DataSource& data = *setup.train_data;
  const c10::Device device = select_device(cfg.device);
  const bool bf16 = use_bf16(cfg.precision, device);
  model.to(device);
  model.train();
  fs::create_directories(setup.run_dir);

  auto named = parameter_tensors(model);
  std::vector<at::Tensor> params;
  for (const auto& [name, p] : named) params.push_back(p);
  AdamW optimizer(named, AdamWConfig{cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay});
  io::CheckpointManager checkpoints(setup.run_dir / "checkpoints", static_cast<int>(cfg.keep_checkpoints));

  TrainResult result;
  int64_t step = 0;
  int64_t tokens_seen = 0;
  std::optional<fs::path> last_good = checkpoints.latest();
  if (resume) {
    check(last_good.has_value(), "--resume: no checkpoint in ", (setup.run_dir / "checkpoints").string(),
          "; run without --resume to start fresh");
    const io::CheckpointContents ckpt = io::load_checkpoint(*last_good);
    const nlohmann::json& state = ckpt.state;
    const std::string ckpt_arch = state.value("arch", std::string("?"));
    check(ckpt_arch == model.arch(), "checkpoint ", last_good->string(), " was written by architecture '", ckpt_arch,
          "' but the recipe builds '", model.arch(), "'");
    require_same_layout(data.layout(), VocabLayout::from_json(state.at("vocab_layout")),
                        "checkpoint " + last_good->string());
    load_parameters(model, to_map(ckpt.model), (*last_good / "model.safetensors").string());
    optimizer.load_state(to_map(ckpt.optimizer), (*last_good / "optimizer.safetensors").string());
    step = state.at("step").get<int64_t>();
    tokens_seen = state.value("tokens_seen", int64_t{0});
    data.restore(state.at("data_state"));
    restore_rng_state(state.at("rng"));
    if (!setup.quiet) std::printf("resumed from %s at step %ld\n", last_good->string().c_str(), (long)step);
  }
  result.start_step = step;

  auto save = [&](const nlohmann::json& extra) {
    io::CheckpointContents contents;
    contents.model = parameter_tensors(model);
    contents.optimizer = optimizer.state();
    nlohmann::json state = {
        {"format", "tessera-checkpoint"},
        {"version", kCheckpointVersion},
        {"step", step},
        {"tokens_seen", tokens_seen},
        {"arch", model.arch()},
        {"parameters", model.parameter_count()},
        {"model_config", config::yaml_to_json(model.config_yaml())},
        {"vocab_layout", data.layout().to_json()},
        {"recipe", setup.recipe},
        {"data_state", data.state()},
        {"rng", capture_rng_state()},
        {"optimizer", {{"type", "adamw"}, {"beta1", cfg.beta1}, {"beta2", cfg.beta2}, {"eps", cfg.eps},
                       {"weight_decay", cfg.weight_decay}}},
    };
    state.update(setup.extra_state);
    state.update(extra);
    contents.state = std::move(state);
    last_good = checkpoints.save(step, contents);
    result.last_checkpoint = *last_good;
  };

  MetricsWriter metrics((setup.run_dir / "metrics.jsonl").string());
  const ScheduleConfig schedule = schedule_of(cfg);
  StopSignalGuard stop;
  ProgressBar bar(cfg.steps, "train", step);

  if (!setup.quiet)
    std::printf("training %s (%s parameters) on %s, %s, steps %ld -> %ld\n", model.arch().c_str(),
                format_count(static_cast<double>(model.parameter_count())).c_str(),
                device_description(device).c_str(), bf16 ? "bf16 autocast" : "fp32", (long)step, (long)cfg.steps);

  // Training FLOPs so far (core/flops convention), logged so that runs compare at equal compute.
  const double flops_per_token = setup.seq_len > 0 ? model.flops(setup.seq_len).train_per_token : 0.0;
  auto run_eval = [&] {
    EvalResult ev = evaluate(model, *setup.objective, *setup.val_data, cfg.eval_batches, device, bf16);
    nlohmann::json record = {{"step", step}, {"val_loss", ev.loss}, {"val_ppl", ev.perplexity},
                             {"val_bits_per_token", ev.bits_per_token}, {"tokens", tokens_seen},
                             {"train_flops", flops_per_token * static_cast<double>(tokens_seen)}};
    if (setup.val_size.bytes > 0) {
      add_bits_per_byte(ev, setup.val_size);
      record["val_bpb"] = ev.bits_per_byte;
    }
    metrics.write(record);
    return ev;
  };

  auto window_start = std::chrono::steady_clock::now();
  const auto run_start = window_start;
  int64_t window_tokens = 0;
  double last_loss = 0;
  // The untrained model's validation loss anchors every curve (a fresh start only: a resumed run has it).
  if (setup.val_data && cfg.eval_every > 0 && step == 0) {
    const EvalResult ev = run_eval();
    if (!setup.quiet && !bar.enabled())
      std::printf("eval step 0: val loss %.4f ppl %.3f%s\n", ev.loss, ev.perplexity, bpb_text(ev).c_str());
  }
  while (step < cfg.steps) {
    const double lr = learning_rate(schedule, step);
    const StepOutput out = train_step(
        model, *setup.objective, params, [&] { return data.next().to(device); }, cfg.grad_accum, lr,
        cfg.grad_clip, device, bf16);
    window_tokens += out.tokens;
    tokens_seen += out.tokens;
    const double loss = out.loss.item<double>();
    if (!std::isfinite(loss)) {
      metrics.write({{"step", step + 1}, {"event", "non_finite_loss"}, {"loss", std::isnan(loss) ? "nan" : "inf"}});
      bar.finish();
      fail("loss is ", std::isnan(loss) ? "NaN" : "infinite", " at step ", step + 1,
           "; the update was not applied. Last good checkpoint: ",
           last_good ? last_good->string() : std::string("none (no checkpoint written yet)"),
           ". Lower train.lr, raise train.warmup_steps or check the data, then resume with --resume.");
    }
    const at::Tensor& grad_norm = out.grad_norm;
    optimizer.step(lr, out.grad_multiplier);
    optimizer.zero_grad();
    ++step;
    last_loss = loss;
    result.losses.push_back(loss);

    const bool log_now = step % cfg.log_every == 0 || step == cfg.steps;
    if (log_now) {
      const auto now = std::chrono::steady_clock::now();
      const double seconds = std::chrono::duration<double>(now - window_start).count();
      const double tps = window_tokens / std::max(seconds, 1e-9);
      result.tokens_per_second = tps;
      metrics.write({{"step", step},
                     {"loss", loss},
                     {"lr", lr},
                     {"grad_norm", grad_norm.item<double>()},
                     {"tokens", tokens_seen},
                     {"train_flops", flops_per_token * static_cast<double>(tokens_seen)},
                     {"tokens_per_s", tps},
                     {"elapsed_s", std::chrono::duration<double>(now - run_start).count()}});
      char lr_text[32];
      std::snprintf(lr_text, sizeof lr_text, "%.2e", lr);
      const std::string postfix = "loss " + format_loss(loss) + " lr " + lr_text + " " + format_count(tps) + " tok/s";
      if (bar.enabled()) bar.update(step, postfix);
      else if (!setup.quiet) std::printf("step %ld/%ld %s\n", (long)step, (long)cfg.steps, postfix.c_str());
      window_start = now;
      window_tokens = 0;
    } else if (bar.enabled()) {
      bar.update(step, "loss " + format_loss(loss));
    }

    if (setup.val_data && cfg.eval_every > 0 && step % cfg.eval_every == 0 && step < cfg.steps) {
      const EvalResult ev = run_eval();
      result.last_eval = ev;
      if (!setup.quiet && !bar.enabled())
        std::printf("eval step %ld: val loss %.4f ppl %.3f%s\n", (long)step, ev.loss, ev.perplexity, bpb_text(ev).c_str());
    }
    if (setup.after_step) setup.after_step(step);
    if (stop.requested()) {
      save({{"loss", last_loss}, {"interrupted_by_signal", stop.signal_number()}});
      bar.finish();
      if (!setup.quiet)
        std::printf("stopped by signal %d at step %ld; checkpoint %s\n", stop.signal_number(), (long)step,
                    result.last_checkpoint.string().c_str());
      result.interrupted = true;
      result.final_step = step;
      return result;
    }
    if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < cfg.steps)
      save({{"loss", last_loss}});
  }
  bar.finish();

  nlohmann::json extra = {{"loss", last_loss}};
  if (setup.val_data) {
    const EvalResult ev = run_eval();
    result.last_eval = ev;
    extra["val_loss"] = ev.loss;
    if (ev.bits_per_byte > 0) extra["val_bpb"] = ev.bits_per_byte;
    if (!setup.quiet)
      std::printf("eval step %ld: val loss %.4f ppl %.3f%s\n", (long)step, ev.loss, ev.perplexity, bpb_text(ev).c_str());
  }
  save(extra);
  result.final_step = step;
  if (!setup.quiet) std::printf("checkpoint %s\n", result.last_checkpoint.string().c_str());
  return result;
}

}  // namespace tessera
