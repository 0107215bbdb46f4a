// Builds a backbone by name from the `model:` section of a recipe (`model.arch: dense`). The table of
// architectures is constant; each entry parses its own typed config with strict key checking.
#pragma once

#include <yaml-cpp/yaml.h>

#include <memory>
#include <string>
#include <vector>

#include "core/model.h"

namespace tessera {

struct ModelContext {
  int64_t vocab_size = 0;  // from the data's vocabulary layout; fills model.vocab_size when it is 0
  std::string file;        // recipe file, for error locations
};

std::vector<std::string> architecture_names();

// Parses `node` (which holds `arch` and the architecture's keys) and constructs the model.
std::shared_ptr<LanguageModel> build_model(const YAML::Node& node, const ModelContext& context);

// The field documentation of one architecture's config, for `tessera info --arch NAME`.
std::vector<std::string> architecture_doc(const std::string& arch);

}  // namespace tessera
