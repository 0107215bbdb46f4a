#include "eval/bench/train_bench.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include <unistd.h>

#include "architectures/dense.h"
#include "core/error.h"
#include "core/io/process.h"
#include "core/progress.h"
#include "core/train/optimizer.h"
#include "core/train/runtime.h"
#include "core/train/stage_timer.h"
#include "core/train/trainer.h"
#include "core/train/weights.h"
#include "eval/bench/bench_model.h"
#include "eval/bench/kernel_profile.h"
#include "objectives/lm.h"

#ifdef TESSERA_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace tessera {

nlohmann::json run_pytorch_reference(const TrainBenchOptions& o, const c10::Device& device) {
  check(o.model.empty() && o.data.empty(), "bench: --reference runs the PyTorch twin of the default dense model "
        "on random ids; it does not combine with --model or --data");
  check(!o.reference_script.empty() && std::filesystem::exists(o.reference_script), "bench: the PyTorch reference "
        "script '", o.reference_script, "' does not exist (eval/bench/reference/dense.py in the source tree; set "
        "--reference-script)");
  const std::filesystem::path scratch = std::filesystem::temp_directory_path() /
                                        ("tessera-reference-" + std::to_string(::getpid()));
  std::filesystem::create_directories(scratch);
  nlohmann::json rows = nlohmann::json::array();
  for (const std::string& mode : o.reference_modes) {
    check(mode == "eager" || mode == "eager-fused" || mode == "compile", "bench: unknown --reference mode '", mode,
          "'; valid: eager, eager-fused, compile");
    std::vector<std::string> argv = {o.python,         o.reference_script,           "--mode",
                                     mode,             "--dim",                      std::to_string(o.dim),
                                     "--n-layers",     std::to_string(o.n_layers),   "--n-heads",
                                     std::to_string(o.n_heads), "--n-kv-heads",      std::to_string(o.n_kv_heads),
                                     "--vocab-size",   std::to_string(o.vocab_size), "--batch-size",
                                     std::to_string(o.batch_size), "--seq-len",      std::to_string(o.seq_len),
                                     "--warmup",       std::to_string(o.warmup),     "--steps",
                                     std::to_string(o.steps), "--seed",              std::to_string(o.seed),
                                     "--device",       device.is_cuda() ? "cuda" : "cpu"};
    if (o.tie_embeddings) argv.push_back("--tie-embeddings");
    const std::filesystem::path out = scratch / (mode + ".json"), err = scratch / (mode + ".log");
    const int status = io::ChildProcess(argv, out, err).wait();
    check(status == 0, "bench: the PyTorch reference (", mode, ") failed with exit status ", status, ": ",
          io::tail_of_file(err, 1500), " (needs PyTorch for ", o.python, "; set --python)");
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(std::ifstream(out));
    } catch (const nlohmann::json::exception& e) {
      fail("bench: the PyTorch reference (", mode, ") printed no JSON result: ", e.what(), "; its output: ",
           io::tail_of_file(out, 500));
    }
    for (const char* key : {"step_ms_median", "tokens_per_s", "tflops", "peak_memory_gb"})
      check(row.contains(key) && row[key].is_number(), "bench: the PyTorch reference (", mode, ") result lacks '", key, "'");
    row["impl"] = "pytorch-" + mode;
    rows.push_back(row);
  }
  std::error_code ec;
  std::filesystem::remove_all(scratch, ec);
  return rows;
}

#ifdef TESSERA_WITH_CUDA
namespace {

// Copies src's fields into dst's (same shapes): the static inputs a captured step reads.
void copy_batch_into(Batch& dst, const Batch& src) {
  auto copy = [](at::Tensor& d, const at::Tensor& s, const char* field) {
    check(d.defined() == s.defined() && (!d.defined() || d.sizes() == s.sizes()), "bench --cuda-graph: batch field ",
          field, " changed shape or presence between steps; a captured step needs static shapes");
    if (d.defined()) d.copy_(s, /*non_blocking=*/true);
  };
  copy(dst.tokens, src.tokens, "tokens");
  copy(dst.targets, src.targets, "targets");
  copy(dst.loss_mask, src.loss_mask, "loss_mask");
  copy(dst.modality, src.modality, "modality");
  copy(dst.doc_ids, src.doc_ids, "doc_ids");
  copy(dst.positions, src.positions, "positions");
  copy(dst.patch_lengths, src.patch_lengths, "patch_lengths");
  copy(dst.entropies, src.entropies, "entropies");
}

}  // namespace
#endif


TrainBenchResult bench_train(const TrainBenchOptions& o) {
  check(o.steps > 0 && o.warmup >= 0, "bench: --steps must be positive and --warmup >= 0");
  const c10::Device device = select_device(o.device);
  const bool bf16 = use_bf16(o.precision, device);
  seed_everything(o.seed);

  // Real rows when a dataset is given (four batches rotated through, so no step sees cached inputs).
  BenchData data = bench_batches(o.data, "train", 4, o.batch_size, o.seq_len, o.data.empty() ? o.vocab_size : -1, o.seed);
  const int64_t vocab_size = o.data.empty() ? o.vocab_size : data.layout.size();
  std::shared_ptr<LanguageModel> model;
  if (!o.model.empty()) {
    model = bench_model(o.model, vocab_size, o.seq_len);
  } else {
    DenseConfig config;
    config.dim = o.dim;
    config.n_layers = o.n_layers;
    config.n_heads = o.n_heads;
    config.n_kv_heads = o.n_kv_heads;
    config.vocab_size = vocab_size;
    config.max_seq_len = o.seq_len;
    config.tie_embeddings = o.tie_embeddings;
    model = std::make_shared<DenseModel>(config);
  }
  if (o.prepare_model) o.prepare_model(*model, data.layout);
  model->to(device);
  model->train();
  LMObjective objective;
  auto named = parameter_tensors(*model);
  std::vector<at::Tensor> params;
  for (const auto& [name, p] : named) params.push_back(p);
  AdamW optimizer(named, AdamWConfig{});

  std::vector<Batch> batches;
  for (const Batch& b : data.batches) batches.push_back(b.to(device));
  size_t next = 0;
  auto next_batch = [&] { return batches[next++ % batches.size()]; };

  reset_peak_memory(device);
  std::vector<double> times_ms;
  double first_loss = 0, last_loss = 0;
  std::vector<double> losses;  // every step's, warm-up included: the loss curve for numerics checks
  check(!o.cuda_graph || device.is_cuda(), "bench: --cuda-graph needs a CUDA device, got ", device.str());
  check(!o.cuda_graph || o.stage_steps == 0, "bench: --cuda-graph and --stages do not combine (the stage timer's "
        "hooks run on the host)");
#ifdef TESSERA_WITH_CUDA
  if (o.cuda_graph) {
    // The whole step (forward, backward, clip, AdamW at a fixed lr) captured once and replayed; each
    // replay reads the next batch copied into static input tensors. Warm-up runs eagerly on the capture
    // stream first, so that lazy initialisation (cuBLAS workspaces, autotuning) happens outside capture.
    Batch static_batch = batches.front();  // then its own tensors, not the rotating batches'
    for (at::Tensor* t : {&static_batch.tokens, &static_batch.targets, &static_batch.loss_mask, &static_batch.modality,
                          &static_batch.doc_ids, &static_batch.positions, &static_batch.patch_lengths,
                          &static_batch.entropies})
      if (t->defined()) *t = t->clone();
    const c10::cuda::CUDAStream capture_stream = c10::cuda::getStreamFromPool();
    at::cuda::CUDAGraph graph;
    at::Tensor static_loss;
    {
      const c10::cuda::CUDAStreamGuard guard(capture_stream);
      for (int64_t s = 0; s < std::max<int64_t>(o.warmup, 2); ++s) {
        copy_batch_into(static_batch, next_batch());
        const StepOutput out = train_step(*model, objective, params, [&] { return static_batch; }, 1, 1e-4, 1.0, device, bf16);
        optimizer.step(1e-4, out.grad_multiplier);
        losses.push_back(out.loss.item<double>());
      }
      optimizer.zero_grad();  // the captured backward allocates the gradients in the graph's pool
      synchronize(device);
      try {
        graph.capture_begin();
        const StepOutput out = train_step(*model, objective, params, [&] { return static_batch; }, 1, 1e-4, 1.0, device, bf16);
        optimizer.step(1e-4, out.grad_multiplier);
        graph.capture_end();
        static_loss = out.loss;
      } catch (const std::exception& e) {
        fail("bench --cuda-graph: capturing the training step failed (something in the step synchronises with the "
             "host or changes shape): ", e.what());
      }
    }
    for (int64_t s = 0; s < o.steps; ++s) {
      synchronize(device);
      const auto t0 = std::chrono::steady_clock::now();
      copy_batch_into(static_batch, next_batch());
      graph.replay();
      synchronize(device);
      const auto t1 = std::chrono::steady_clock::now();
      times_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      losses.push_back(static_loss.item<double>());
    }
    first_loss = losses.front();
    last_loss = losses.back();
  }
#endif
  for (int64_t s = 0; !o.cuda_graph && s < o.warmup + o.steps; ++s) {
    synchronize(device);
    const auto t0 = std::chrono::steady_clock::now();
    const StepOutput out = train_step(*model, objective, params, next_batch, 1, 1e-4, 1.0, device, bf16);
    optimizer.step(1e-4, out.grad_multiplier);
    optimizer.zero_grad();
    synchronize(device);
    const auto t1 = std::chrono::steady_clock::now();
    if (s >= o.warmup) times_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    const double loss = out.loss.item<double>();
    if (s == 0) first_loss = loss;
    last_loss = loss;
    losses.push_back(loss);
  }
  KernelProfile profile;
  if (o.profile_steps > 0) {
    profile = profile_kernels(device, o.profile_steps, [&] {
      const StepOutput out = train_step(*model, objective, params, next_batch, 1, 1e-4, 1.0, device, bf16);
      optimizer.step(1e-4, out.grad_multiplier);
      optimizer.zero_grad();
    }, o.trace);
  }

  // The step split by the model's stages (models without marks report none).
  std::vector<std::pair<std::string, std::pair<std::vector<double>, std::vector<double>>>> stage_ms;
  if (o.stage_steps > 0) {
    auto timer = std::make_shared<StageTimer>(device);
    model->set_stage_timer(timer);
    for (int64_t s = 0; s < o.stage_steps; ++s) {
      timer->begin_step();
      const StepOutput out = train_step(*model, objective, params, next_batch, 1, 1e-4, 1.0, device, bf16);
      const auto split = timer->collect();
      optimizer.step(1e-4, out.grad_multiplier);
      optimizer.zero_grad();
      if (stage_ms.empty())
        for (const auto& st : split) stage_ms.push_back({st.stage, {}});
      check(split.size() == stage_ms.size(), "bench: the model marked a different number of stages in step ", s);
      for (size_t i = 0; i < split.size(); ++i) {
        stage_ms[i].second.first.push_back(split[i].forward_ms);
        stage_ms[i].second.second.push_back(split[i].backward_ms);
      }
    }
    model->set_stage_timer(nullptr);
  }

  std::vector<double> sorted = times_ms;
  std::sort(sorted.begin(), sorted.end());
  const double median_ms = sorted[sorted.size() / 2];
  const double tokens = static_cast<double>(o.batch_size * o.seq_len);
  const FlopCount flops = model->flops(o.seq_len);
  const double tflops = flops.train_per_token * tokens / (median_ms / 1e3) / 1e12;
  const double peak_gb = peak_memory_gb(device);

  TrainBenchResult r;
  r.json = {{"impl", o.cuda_graph ? "tessera-cuda-graph" : "tessera"},
            {"arch", model->arch()},
            {"device", device_description(device)},
            {"precision", bf16 ? "bf16-autocast" : "fp32"},
            {"dim", o.dim},
            {"n_layers", o.n_layers},
            {"n_heads", o.n_heads},
            {"vocab_size", vocab_size},
            {"batch_size", o.batch_size},
            {"seq_len", o.seq_len},
            {"parameters", model->parameter_count()},
            {"matmul_params", flops.matmul_params},
            {"train_flops_per_token", flops.train_per_token},
            {"step_ms_median", median_ms},
            {"step_ms_min", sorted.front()},
            {"step_ms_max", sorted.back()},
            {"tokens_per_s", tokens / (median_ms / 1e3)},
            {"tflops", tflops},
            {"peak_memory_gb", peak_gb},
            {"timed_steps", o.steps},
            {"warmup_steps", o.warmup},
            {"first_loss", first_loss},
            {"last_loss", last_loss},
            {"losses", losses}};
  if (!profile.kernels.empty()) r.json["kernels"] = profile.kernels;
  if (!o.model.empty()) r.json["model"] = YAML::Dump(model->config_yaml());
  if (!o.data.empty()) r.json["data"] = o.data;
  std::string stage_table;
  if (!stage_ms.empty()) {
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    nlohmann::json stages = nlohmann::json::array();
    stage_table = "  stage      | forward ms | backward ms | share of the step (median of " +
                  std::to_string(o.stage_steps) + " steps)\n";
    for (const auto& [name, fb] : stage_ms) {
      const double f = median(fb.first), b = median(fb.second);
      stages.push_back({{"stage", name}, {"forward_ms", f}, {"backward_ms", b}, {"share", (f + b) / median_ms}});
      char row[160];
      std::snprintf(row, sizeof row, "  %-10s | %10.2f | %11.2f | %5.1f%%\n", name.c_str(), f, b, 100 * (f + b) / median_ms);
      stage_table += row;
    }
    double staged = 0;
    for (const auto& st : stages) staged += st["forward_ms"].get<double>() + st["backward_ms"].get<double>();
    char row[160];
    std::snprintf(row, sizeof row, "  %-10s | %24.2f | %5.1f%%  (the step's median minus the stages)\n",
                  "clip+AdamW", median_ms - staged, 100 * (median_ms - staged) / median_ms);
    stage_table += row;
    r.json["stages"] = stages;
  }
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%s %s params, B=%ld T=%ld on %s (%s)\n"
                "  step %.2f ms (median of %ld; min %.2f, max %.2f)\n"
                "  %s tokens/s, %.1f TFLOP/s, peak memory %.2f GB\n",
                model->arch().c_str(), format_count(static_cast<double>(model->parameter_count())).c_str(),
                (long)o.batch_size,
                (long)o.seq_len, device_description(device).c_str(), bf16 ? "bf16 autocast" : "fp32", median_ms,
                (long)o.steps, sorted.front(), sorted.back(), format_count(tokens / (median_ms / 1e3)).c_str(), tflops,
                peak_gb);
  r.summary = std::string(buf) + stage_table + profile.table;
  if (!o.reference_modes.empty()) {
    const nlohmann::json rows = run_pytorch_reference(o, device);
    r.json["reference"] = rows;
    std::string table = "  implementation        | step ms (median) | tokens/s   | TFLOP/s | peak GB | time vs Tessera\n";
    auto row = [&](const std::string& impl, const nlohmann::json& j) {
      char line[256];
      std::snprintf(line, sizeof line, "  %-21s | %16.2f | %10.0f | %7.1f | %7.2f | %.3fx\n", impl.c_str(),
                    j.at("step_ms_median").get<double>(), j.at("tokens_per_s").get<double>(),
                    j.at("tflops").get<double>(), j.at("peak_memory_gb").get<double>(),
                    j.at("step_ms_median").get<double>() / median_ms);
      table += line;
    };
    row("tessera", r.json);
    for (const auto& j : rows) row(j.at("impl").get<std::string>(), j);
    r.summary += table;
  }
  return r;
}

}  // namespace tessera
