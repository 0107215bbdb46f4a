#include "eval/bench/cema_bench.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/error.h"
#include "core/nn/cema.h"
#include "core/train/runtime.h"

namespace tessera {

namespace {
nn::CEMAMode parse_mode(const std::string& m) {
  if (m == "fft") return nn::CEMAMode::FFT;
  if (m == "scan") return nn::CEMAMode::ChunkedScan;
  if (m == "sequential") return nn::CEMAMode::Sequential;
  fail("bench cema: unknown mode '", m, "' (fft, scan or sequential)");
}

template <class F>
double median_ms(const c10::Device& device, int64_t warmup, int64_t steps, F&& body) {
  std::vector<double> ms;
  for (int64_t s = 0; s < warmup + steps; ++s) {
    synchronize(device);
    const auto t0 = std::chrono::steady_clock::now();
    body();
    synchronize(device);
    if (s >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}
}  // namespace

CemaBenchResult bench_cema(const CemaBenchOptions& o) {
  check(o.steps > 0 && o.warmup >= 0, "bench cema: --steps must be positive and --warmup >= 0");
  const c10::Device device = select_device(o.device);
  const bool bf16 = use_bf16(o.precision, device);
  at::manual_seed(0);
  nn::CEMA cema(o.dim, o.ndim);
  cema->to(device);
  cema->scan_chunk = o.scan_chunk;
  CemaBenchResult r;
  nlohmann::json rows = nlohmann::json::array();
  char line[320];
  std::snprintf(line, sizeof line, "CEMA D=%ld N=%ld B=%ld on %s (%s inputs; the EMA runs in float32)\n", (long)o.dim,
                (long)o.ndim, (long)o.batch_size, device_description(device).c_str(), bf16 ? "bf16" : "fp32");
  r.summary = line;
  r.summary += "      L | mode       | forward ms | fwd+bwd ms | peak GB\n";
  for (const int64_t L : o.seq_lens) {
    const at::Tensor x = at::randn({o.batch_size, L, o.dim}, at::TensorOptions().device(device))
                             .to(bf16 ? at::kBFloat16 : at::kFloat)
                             .requires_grad_(true);
    for (const std::string& mode_name : o.modes) {
      const nn::CEMAMode mode = parse_mode(mode_name);
      const at::Tensor none;
      reset_peak_memory(device);
      const double fwd = median_ms(device, o.warmup, o.steps, [&] {
        at::NoGradGuard no_grad;
        cema->forward(x, none, none, mode);
      });
      const double both = median_ms(device, o.warmup, o.steps, [&] {
        const at::Tensor y = cema->forward(x, none, none, mode).y;
        y.to(at::kFloat).square().mean().backward();
      });
      const double peak = peak_memory_gb(device);
      cema->zero_grad();
      rows.push_back({{"seq_len", L}, {"mode", mode_name}, {"forward_ms", fwd}, {"forward_backward_ms", both},
                      {"peak_gb", peak}});
      std::snprintf(line, sizeof line, "  %5ld | %-10s | %10.2f | %10.2f | %7.3f\n", (long)L, mode_name.c_str(), fwd,
                    both, peak);
      r.summary += line;
    }
  }
  r.json = {{"bench", "cema"},         {"dim", o.dim},      {"ndim", o.ndim},   {"batch_size", o.batch_size},
            {"scan_chunk", o.scan_chunk}, {"device", device_description(device)},
            {"precision", bf16 ? "bf16-inputs" : "fp32"}, {"rows", rows}};
  return r;
}

}  // namespace tessera
