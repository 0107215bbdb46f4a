#include "eval/bench/bench_model.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>

#include "architectures/registry.h"
#include "core/config.h"
#include "core/error.h"

namespace tessera {

std::shared_ptr<LanguageModel> bench_model(const std::string& spec, int64_t vocab_size, int64_t max_seq_len) {
  check(!spec.empty(), "bench: --model needs a YAML model section or a file holding one");
  const bool is_file = spec.find('{') == std::string::npos && std::filesystem::exists(spec);
  YAML::Node root = is_file ? config::load_yaml_file(spec) : config::load_yaml_string(spec, "--model");
  YAML::Node node = root.IsMap() && root["model"] ? YAML::Clone(root["model"]) : YAML::Clone(root);
  check(node.IsMap() && node["arch"], "bench: --model ", is_file ? "file " : "", spec,
        " has no model section with 'arch' (e.g. --model \"{arch: megalodon, dim: 512}\")");
  if (max_seq_len > 0 && (!node["max_seq_len"] || node["max_seq_len"].as<int64_t>() < max_seq_len))
    node["max_seq_len"] = max_seq_len;
  ModelContext context;
  context.vocab_size = vocab_size;
  context.file = is_file ? spec : "--model";
  return build_model(node, context);
}

}  // namespace tessera
