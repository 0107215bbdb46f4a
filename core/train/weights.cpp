#include "core/train/weights.h"

#include <ATen/ATen.h>

#include <set>

#include "core/error.h"

namespace tessera {

std::vector<std::pair<std::string, at::Tensor>> parameter_tensors(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

void load_parameters(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                     const std::string& source) {
  at::NoGradGuard no_grad;
  std::set<std::string> used;
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    auto it = tensors.find(item.key());
    check(it != tensors.end(), source, " has no tensor '", item.key(),
          "': it was written by a different architecture or configuration");
    at::Tensor dst = item.value();
    check(it->second.sizes() == dst.sizes(), source, ": tensor '", item.key(), "' has shape ", it->second.sizes(),
          " but the model expects ", dst.sizes(), " (different model config?)");
    dst.copy_(it->second);
    used.insert(item.key());
  }
  for (const auto& [name, tensor] : tensors)
    check(used.count(name) > 0, source, " holds tensor '", name,
          "' that the model does not have: it was written by a different architecture or configuration");
}

}  // namespace tessera
