// Device, precision, RNG state and memory statistics: the few places where CPU and CUDA builds differ.
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <string>

namespace tessera {

bool cuda_available();
// "auto" -> CUDA when available, else CPU; "cuda" without a GPU is an error.
c10::Device select_device(const std::string& name);
// "auto" -> bf16 on CUDA, fp32 on CPU. Returns true when bf16 autocast should be on.
bool use_bf16(const std::string& precision, const c10::Device& device);
std::string device_description(const c10::Device& device);

void seed_everything(uint64_t seed);
nlohmann::json capture_rng_state();
void restore_rng_state(const nlohmann::json& state);

void synchronize(const c10::Device& device);
void reset_peak_memory(const c10::Device& device);
double peak_memory_gb(const c10::Device& device);     // 0 on CPU
double current_memory_gb(const c10::Device& device);  // bytes held by live tensors now; 0 on CPU

std::string base64_encode(const uint8_t* data, size_t size);
std::vector<uint8_t> base64_decode(const std::string& text);

}  // namespace tessera
