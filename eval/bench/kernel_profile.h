// Where the time goes: runs a piece of work under Kineto (the profiler behind torch.profiler) and sums
// the time by kernel name (GPU kernels on CUDA; operators' inclusive CPU time on CPU). Shared by the
// benchmarks' --profile options.
#pragma once

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>

namespace tessera {

struct KernelProfile {
  nlohmann::json kernels = nlohmann::json::array();  // {name, ms_per_step, calls_per_step, share}, slowest first
  std::string table;                                 // the top rows, human-readable
  double total_ms = 0;                               // per step
};

// Calls `step` `steps` times under the profiler; times are per call. With `trace` non-empty the Kineto
// trace (chrome://tracing JSON) is saved there. `what` names a call in the table's title ("step", "token").
KernelProfile profile_kernels(const c10::Device& device, int64_t steps, const std::function<void()>& step,
                              const std::string& trace = "", const std::string& what = "step", size_t rows = 25);

}  // namespace tessera
