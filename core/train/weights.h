// Moving a module's parameters to and from name -> tensor maps (safetensors files).
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace tessera {

// Parameters only (buffers such as RoPE tables are recomputed from the config), in module order.
std::vector<std::pair<std::string, at::Tensor>> parameter_tensors(const torch::nn::Module& module);

// Copies every parameter from `tensors`; a missing, extra or mis-shaped tensor is an error that names
// it and `source` (the checkpoint file).
void load_parameters(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                     const std::string& source);

}  // namespace tessera
