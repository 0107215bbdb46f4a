#include "eval/bench/generate_bench.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/error.h"
#include "core/progress.h"
#include "core/train/autocast.h"
#include "core/train/runtime.h"
#include "eval/bench/bench_model.h"
#include "eval/bench/kernel_profile.h"

namespace tessera {

GenerateBenchResult bench_generate(const GenerateBenchOptions& o) {
  check(!o.context_lengths.empty(), "bench generate: give at least one --context length");
  check(o.prefill_chunk > 0 && o.decode_tokens > 0 && o.batch_size > 0,
        "bench generate: --prefill-chunk, --decode and --batch must be positive");
  for (int64_t n : o.context_lengths) check(n > 0, "bench generate: context lengths must be positive, got ", n);
  const c10::Device device = select_device(o.device);
  const bool bf16 = use_bf16(o.precision, device);
  seed_everything(o.seed);
  const int64_t longest = *std::max_element(o.context_lengths.begin(), o.context_lengths.end());
  auto model = bench_model(o.model, o.vocab_size, longest + o.decode_tokens + std::max<int64_t>(0, o.profile_tokens));
  model->to(device);
  model->eval();
  const int64_t V = model->vocab_size();

  GenerateBenchResult r;
  KernelProfile profile;
  nlohmann::json rows = nlohmann::json::array();
  char line[400];
  std::snprintf(line, sizeof line, "%s %s params, batch %ld on %s (%s); prefill in pieces of %ld, then %ld decode steps\n",
                model->arch().c_str(), format_count(static_cast<double>(model->parameter_count())).c_str(),
                (long)o.batch_size, device_description(device).c_str(), bf16 ? "bf16 autocast" : "fp32",
                (long)o.prefill_chunk, (long)o.decode_tokens);
  r.summary = line;
  r.summary += "  context | prefill s | decode ms/token | state GB | peak GB\n";
  for (const int64_t n : o.context_lengths) {
    c10::InferenceMode inference;
    AutocastGuard autocast(device.type(), bf16);
    synchronize(device);
    reset_peak_memory(device);
    const double before = current_memory_gb(device);
    auto state = model->start_decoding(o.batch_size, n + o.decode_tokens + std::max<int64_t>(0, o.profile_tokens));
    const at::Tensor context = at::randint(V, {o.batch_size, n}, at::TensorOptions().dtype(at::kLong).device(device));
    const auto t0 = std::chrono::steady_clock::now();
    at::Tensor logits;
    for (int64_t at_ = 0; at_ < n; at_ += o.prefill_chunk)
      logits = model->step(context.narrow(1, at_, std::min(o.prefill_chunk, n - at_)), *state);
    synchronize(device);
    const auto t1 = std::chrono::steady_clock::now();
    logits = at::Tensor();  // only the decoding state stays alive
    const double state_gb = current_memory_gb(device) - before;
    at::Tensor next = at::randint(V, {o.batch_size, 1}, context.options());
    std::vector<double> step_ms;
    for (int64_t i = 0; i < o.decode_tokens; ++i) {
      synchronize(device);
      const auto s0 = std::chrono::steady_clock::now();
      next = model->step(next, *state).select(1, -1).argmax(-1, /*keepdim=*/true);
      synchronize(device);
      step_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s0).count());
    }
    if (o.profile_tokens > 0 && n == o.context_lengths.back()) {
      profile = profile_kernels(device, o.profile_tokens, [&] {
        next = model->step(next, *state).select(1, -1).argmax(-1, /*keepdim=*/true);
      }, "", "token");
    }
    std::sort(step_ms.begin(), step_ms.end());
    const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
    const double decode_ms = step_ms[step_ms.size() / 2];
    const double peak = peak_memory_gb(device);
    rows.push_back({{"context", n},
                    {"prefill_s", prefill_s},
                    {"prefill_tokens_per_s", static_cast<double>(n * o.batch_size) / prefill_s},
                    {"decode_ms_per_token_median", decode_ms},
                    {"state_gb", state_gb},
                    {"peak_gb", peak}});
    std::snprintf(line, sizeof line, "  %7ld | %9.2f | %15.2f | %8.3f | %7.3f\n", (long)n, prefill_s, decode_ms, state_gb,
                  peak);
    r.summary += line;
  }
  r.json = {{"bench", "generate"},
            {"arch", model->arch()},
            {"model", model->config_yaml() ? YAML::Dump(model->config_yaml()) : std::string()},
            {"parameters", model->parameter_count()},
            {"device", device_description(device)},
            {"precision", bf16 ? "bf16-autocast" : "fp32"},
            {"batch_size", o.batch_size},
            {"prefill_chunk", o.prefill_chunk},
            {"decode_tokens", o.decode_tokens},
            {"rows", rows}};
  if (!device.is_cuda()) r.summary += "  (memory columns are measured on CUDA only)\n";
  if (!profile.kernels.empty()) {
    r.json["kernels"] = profile.kernels;
    r.summary += profile.table;
  }
  return r;
}

}  // namespace tessera
