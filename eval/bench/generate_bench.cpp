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

namespace {

// Greedy decoding of o.compare_tokens tokens after a prompt, cached (step) and uncached (full forward
// over the prefix per token), on one prompt (batch 1).
GenerateBenchResult compare_cached(const GenerateBenchOptions& o, const c10::Device& device, bool bf16) {
  check(o.prompt_tokens > 0, "bench generate: --prompt-tokens must be positive");
  const int64_t total = o.prompt_tokens + o.compare_tokens;
  BenchData data;
  if (!o.data.empty()) data = bench_batches(o.data, "val", 1, 1, o.prompt_tokens, -1, o.seed);
  std::shared_ptr<LanguageModel> model;
  if (o.load_model) {
    model = o.load_model();
  } else {
    model = bench_model(o.model, o.data.empty() ? o.vocab_size : data.layout.size(), total);
    if (o.prepare_model) o.prepare_model(*model, o.data.empty() ? VocabLayout::bytes() : data.layout);
  }
  check(model->max_seq_len() >= total, "bench generate: prompt + generated tokens (", total,
        ") exceed the model's max_seq_len ", model->max_seq_len());
  if (o.data.empty()) data = bench_batches("", "val", 1, 1, o.prompt_tokens, model->vocab_size(), o.seed);
  model->to(device);
  model->eval();
  c10::InferenceMode inference;
  AutocastGuard autocast(device.type(), bf16);
  const at::Tensor prompt = data.batches.at(0).tokens.to(device);

  // Cached: the prompt in one step, then one token per step.
  synchronize(device);
  auto t0 = std::chrono::steady_clock::now();
  auto state = model->start_decoding(1, total);
  at::Tensor next = model->step(prompt, *state).select(1, -1).argmax(-1, /*keepdim=*/true);
  std::vector<int64_t> cached{next.item<int64_t>()};
  // Progress on stderr, so that a run cut off by a time limit still says how far each half got.
  auto progress = [&](const char* what, int64_t done, std::chrono::steady_clock::time_point since) {
    if (done % 512 != 0) return;
    std::fprintf(stderr, "bench generate: %s %ld/%ld tokens in %.1f s\n", what, (long)done, (long)o.compare_tokens,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count());
  };
  for (int64_t i = 1; i < o.compare_tokens; ++i) {
    next = model->step(next, *state).select(1, -1).argmax(-1, /*keepdim=*/true);
    cached.push_back(next.item<int64_t>());
    progress("cached", i + 1, t0);
  }
  synchronize(device);
  const double cached_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  state.reset();

  // Uncached: the whole prefix through forward() for every new token. With uncached_samples, only at
  // that many evenly spaced lengths (teacher-forced with the cached tokens); its cost, a smooth function
  // of the length, is interpolated linearly over every length in between.
  const int64_t G = o.compare_tokens;
  const bool sampled = o.uncached_samples > 0 && o.uncached_samples < G;
  std::vector<int64_t> positions;
  if (sampled) {
    for (int64_t j = 0; j < o.uncached_samples; ++j)
      positions.push_back(o.uncached_samples == 1 ? 0 : j * (G - 1) / (o.uncached_samples - 1));
  } else {
    for (int64_t i = 0; i < G; ++i) positions.push_back(i);
  }
  const at::Tensor cached_ids = at::tensor(cached, at::kLong).view({1, G}).to(device);
  std::vector<double> step_s;
  int64_t agree = 0, agree_sampled = 0;
  bool diverged = false;
  t0 = std::chrono::steady_clock::now();
  at::Tensor seq = prompt;
  for (size_t j = 0; j < positions.size(); ++j) {
    const int64_t i = positions[j];
    Batch b;
    // Sampled: the prompt and the cached tokens before i. Full: the uncached run's own prefix.
    b.tokens = sampled ? at::cat({prompt, cached_ids.narrow(1, 0, i)}, 1) : seq;
    synchronize(device);
    const auto s0 = std::chrono::steady_clock::now();
    next = model->forward(b).logits.select(1, -1).argmax(-1, /*keepdim=*/true);
    const int64_t id = next.item<int64_t>();
    step_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count());
    if (id == cached[i]) ++agree_sampled;
    if (!sampled) {
      diverged = diverged || id != cached[i];
      if (!diverged) ++agree;
      seq = at::cat({seq, next}, 1);
    }
    progress("uncached", static_cast<int64_t>(j) + 1, t0);
  }
  double full_s = 0;
  if (!sampled) {
    for (double x : step_s) full_s += x;
  } else {
    for (size_t j = 0; j + 1 < positions.size(); ++j) {  // lengths positions[j] .. positions[j+1] - 1
      const double span = static_cast<double>(positions[j + 1] - positions[j]);
      full_s += span * (step_s[j] + 0.5 * (step_s[j + 1] - step_s[j]) * (span - 1) / span);
    }
    full_s += step_s.back();  // the last length itself
  }

  GenerateBenchResult r;
  const double n = static_cast<double>(o.compare_tokens);
  r.json = {{"bench", "generate_compare"},
            {"arch", model->arch()},
            {"parameters", model->parameter_count()},
            {"device", device_description(device)},
            {"precision", bf16 ? "bf16-autocast" : "fp32"},
            {"prompt_tokens", o.prompt_tokens},
            {"generated_tokens", o.compare_tokens},
            {"prompt_from", o.data.empty() ? std::string("random ids") : o.data},
            {"cached_s", cached_s},
            {"cached_tokens_per_s", n / cached_s},
            {"uncached_s", full_s},
            {"uncached_tokens_per_s", n / full_s},
            {"speedup", full_s / cached_s},
            {"identical_leading_tokens", sampled ? -1 : agree},
            {"uncached_sampled_lengths", sampled ? o.uncached_samples : 0},
            {"uncached_agreeing_samples", agree_sampled},
            {"uncached_forward_s_first_last", {step_s.front(), step_s.back()}}};
  char line[768];
  std::snprintf(line, sizeof line,
                "%s %s params on %s (%s): greedy, %ld tokens after a %ld-token prompt\n"
                "  cached (step + caches):        %8.2f s  %10.1f tokens/s\n"
                "  uncached (full forward/token): %8.2f s  %10.1f tokens/s   (%.1fx slower)%s\n"
                "  %s\n",
                model->arch().c_str(), format_count(static_cast<double>(model->parameter_count())).c_str(),
                device_description(device).c_str(), bf16 ? "bf16 autocast" : "fp32", (long)G, (long)o.prompt_tokens,
                cached_s, n / cached_s, full_s, n / full_s, full_s / cached_s,
                sampled ? str("\n    (forward timed at ", o.uncached_samples, " prefix lengths from ", o.prompt_tokens,
                              " to ", o.prompt_tokens + G - 1, ": ", step_s.front() * 1e3, " to ", step_s.back() * 1e3,
                              " ms, interpolated over all ", G, ")").c_str()
                        : "",
                sampled ? str("next token from the full forward = the cached one at ", agree_sampled, " of ",
                              o.uncached_samples, " sampled lengths").c_str()
                        : str("identical leading tokens: ", agree, " of ", G).c_str());
  r.summary = line;
  return r;
}

}  // namespace

GenerateBenchResult bench_generate(const GenerateBenchOptions& o) {
  check(!o.context_lengths.empty(), "bench generate: give at least one --context length");
  check(o.prefill_chunk > 0 && o.decode_tokens > 0 && o.batch_size > 0,
        "bench generate: --prefill-chunk, --decode and --batch must be positive");
  for (int64_t n : o.context_lengths) check(n > 0, "bench generate: context lengths must be positive, got ", n);
  const c10::Device device = select_device(o.device);
  const bool bf16 = use_bf16(o.precision, device);
  seed_everything(o.seed);
  if (o.compare_tokens > 0) return compare_cached(o, device, bf16);
  const int64_t longest = *std::max_element(o.context_lengths.begin(), o.context_lengths.end());
  auto model = o.load_model ? o.load_model()
                            : bench_model(o.model, o.vocab_size, longest + o.decode_tokens + std::max<int64_t>(0, o.profile_tokens));
  if (o.prepare_model && !o.load_model) o.prepare_model(*model, VocabLayout::bytes());
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
