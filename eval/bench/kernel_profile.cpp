#include "eval/bench/kernel_profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <vector>

#include "core/train/runtime.h"

namespace tessera {

KernelProfile profile_kernels(const c10::Device& device, int64_t steps, const std::function<void()>& step,
                              const std::string& trace, const std::string& what, size_t max_rows) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  KernelProfile out;
  if (steps <= 0) return out;
  const prof::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  std::set<ActivityType> activities{ActivityType::CPU};
  if (device.is_cuda()) activities.insert(ActivityType::CUDA);
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  for (int64_t s = 0; s < steps; ++s) step();
  synchronize(device);
  const auto result = prof::disableProfiler();
  if (!trace.empty()) result->save(trace);
  std::map<std::string, std::pair<double, int64_t>> by_name;  // total ms, calls
  std::map<std::string, double> host_ms;                     // on CUDA: host-side events too
  for (const auto& e : result->events()) {
    const bool on_device = e.deviceType() == c10::DeviceType::CUDA;
    if (device.is_cuda() && !on_device) {
      host_ms[e.name()] += static_cast<double>(e.durationNs()) / 1e6 / static_cast<double>(steps);
      continue;
    }
    if (device.is_cuda() != on_device) continue;
    const double ms = static_cast<double>(e.durationNs()) / 1e6 / static_cast<double>(steps);
    auto& slot = by_name[e.name()];
    slot.first += ms;
    slot.second += 1;
    out.total_ms += ms;
  }
  std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  char line[320];
  std::snprintf(line, sizeof line, "  %s per %s (mean of %ld profiled):\n",
                device.is_cuda() ? "GPU kernel time" : "CPU operator time (inclusive)", what.c_str(), (long)steps);
  out.table = line;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& [name, v] = rows[i];
    out.kernels.push_back({{"name", name}, {"ms_per_step", v.first}, {"calls_per_step", v.second / steps},
                           {"share", out.total_ms > 0 ? v.first / out.total_ms : 0.0}});
    if (i < max_rows) {
      std::snprintf(line, sizeof line, "  %8.3f ms %5.1f%% %5ld x  %.150s\n", v.first,
                    out.total_ms > 0 ? 100 * v.first / out.total_ms : 0.0, (long)(v.second / steps), name.c_str());
      out.table += line;
    }
  }
  std::snprintf(line, sizeof line, "  %8.3f ms in all\n", out.total_ms);
  out.table += line;
  if (!host_ms.empty()) {
    // When the GPU idles between kernels the host is the bottleneck: its slowest operators and
    // runtime calls (inclusive, so nested entries overlap).
    std::vector<std::pair<std::string, double>> host(host_ms.begin(), host_ms.end());
    std::sort(host.begin(), host.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    std::snprintf(line, sizeof line, "  host time per %s, inclusive (top %d):\n", what.c_str(), 12);
    out.table += line;
    for (size_t i = 0; i < host.size() && i < 12; ++i) {
      std::snprintf(line, sizeof line, "  %8.3f ms  %.150s\n", host[i].second, host[i].first.c_str());
      out.table += line;
    }
  }
  return out;
}

}  // namespace tessera
