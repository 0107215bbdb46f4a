#include "core/train/runtime.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

#include <mutex>

#include "core/error.h"

#ifdef TESSERA_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace tessera {

bool cuda_available() {
#ifdef TESSERA_WITH_CUDA
  return at::hasCUDA() && at::cuda::device_count() > 0;
#else
  return false;
#endif
}

c10::Device select_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name == "cuda") {
    check(cuda_available(), "train.device=cuda but no CUDA device is usable",
#ifdef TESSERA_WITH_CUDA
          " (is the driver loaded?)"
#else
          " (this build has TESSERA_WITH_CUDA=OFF; reconfigure with -DTESSERA_WITH_CUDA=ON on a GPU machine)"
#endif
    );
    return c10::Device(c10::kCUDA, 0);
  }
  check(name == "auto", "unknown device '", name, "' (use auto, cpu or cuda)");
  return cuda_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
}

bool use_bf16(const std::string& precision, const c10::Device& device) {
  if (precision == "fp32") return false;
  if (precision == "bf16") return true;
  check(precision == "auto", "unknown precision '", precision, "' (use auto, fp32 or bf16)");
  return device.is_cuda();
}

std::string device_description(const c10::Device& device) {
#ifdef TESSERA_WITH_CUDA
  if (device.is_cuda()) {
    const auto* prop = at::cuda::getDeviceProperties(device.index());
    return str("cuda:", static_cast<int>(device.index()), " (", prop->name, ")");
  }
#endif
  return str("cpu (", at::get_num_threads(), " threads)");
}

void seed_everything(uint64_t seed) {
  at::manual_seed(seed);  // seeds the CPU generator and every CUDA generator
}

std::string base64_encode(const uint8_t* data, size_t size) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((size + 2) / 3 * 4);
  for (size_t i = 0; i < size; i += 3) {
    uint32_t chunk = static_cast<uint32_t>(data[i]) << 16;
    if (i + 1 < size) chunk |= static_cast<uint32_t>(data[i + 1]) << 8;
    if (i + 2 < size) chunk |= data[i + 2];
    out += alphabet[(chunk >> 18) & 63];
    out += alphabet[(chunk >> 12) & 63];
    out += i + 1 < size ? alphabet[(chunk >> 6) & 63] : '=';
    out += i + 2 < size ? alphabet[chunk & 63] : '=';
  }
  return out;
}

std::vector<uint8_t> base64_decode(const std::string& text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  check(text.size() % 4 == 0, "malformed base64 text (length ", text.size(), ")");
  std::vector<uint8_t> out;
  for (size_t i = 0; i < text.size(); i += 4) {
    uint32_t chunk = 0;
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text[i + k];
      if (c == '=') {
        ++pad;
        chunk <<= 6;
        continue;
      }
      const int v = value(c);
      check(v >= 0, "malformed base64 text (character '", c, "')");
      chunk = (chunk << 6) | static_cast<uint32_t>(v);
    }
    out.push_back((chunk >> 16) & 255);
    if (pad < 2) out.push_back((chunk >> 8) & 255);
    if (pad < 1) out.push_back(chunk & 255);
  }
  return out;
}

namespace {
std::string encode_state(const at::Tensor& state) {
  const at::Tensor s = state.contiguous();
  return base64_encode(s.data_ptr<uint8_t>(), static_cast<size_t>(s.numel()));
}
at::Tensor decode_state(const std::string& text) {
  const std::vector<uint8_t> bytes = base64_decode(text);
  return at::tensor(at::ArrayRef<uint8_t>(bytes), at::kByte);
}
}  // namespace

nlohmann::json capture_rng_state() {
  nlohmann::json out;
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    out["cpu"] = encode_state(gen.get_state());
  }
#ifdef TESSERA_WITH_CUDA
  if (cuda_available()) {
    auto gen = at::cuda::detail::getDefaultCUDAGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    out["cuda"] = encode_state(gen.get_state());
  }
#endif
  return out;
}

void restore_rng_state(const nlohmann::json& state) {
  if (state.contains("cpu")) {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(decode_state(state.at("cpu").get<std::string>()));
  }
#ifdef TESSERA_WITH_CUDA
  if (state.contains("cuda") && cuda_available()) {
    auto gen = at::cuda::detail::getDefaultCUDAGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(decode_state(state.at("cuda").get<std::string>()));
  }
#endif
}

void synchronize(const c10::Device& device) {
#ifdef TESSERA_WITH_CUDA
  if (device.is_cuda()) at::cuda::device_synchronize();
#endif
}

void reset_peak_memory(const c10::Device& device) {
#ifdef TESSERA_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
}

double peak_memory_gb(const c10::Device& device) {
#ifdef TESSERA_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    const auto& peak = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
    return static_cast<double>(peak) / 1e9;
  }
#endif
  return 0.0;
}

double current_memory_gb(const c10::Device& device) {
#ifdef TESSERA_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    const auto& now = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].current;
    return static_cast<double>(now) / 1e9;
  }
#endif
  return 0.0;
}

}  // namespace tessera
