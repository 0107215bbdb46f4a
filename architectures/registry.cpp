#include "architectures/registry.h"

#include "architectures/blt.h"
#include "architectures/dense.h"
#include "architectures/megabyte.h"
#include "architectures/megalodon.h"
#include "core/config.h"
#include "core/error.h"

namespace tessera {

namespace {

struct ArchitectureEntry {
  const char* name;
  const char* summary;
  std::shared_ptr<LanguageModel> (*build)(const YAML::Node&, const ModelContext&);
  std::vector<std::string> (*doc)();
};

std::shared_ptr<LanguageModel> build_dense(const YAML::Node& node, const ModelContext& context) {
  auto config = config::parse<DenseConfig>(node, "model", context.file);
  if (config.vocab_size == 0) config.vocab_size = context.vocab_size;
  return std::make_shared<DenseModel>(config);
}

std::shared_ptr<LanguageModel> build_megalodon(const YAML::Node& node, const ModelContext& context) {
  auto config = config::parse<MegalodonConfig>(node, "model", context.file);
  if (config.vocab_size == 0) config.vocab_size = context.vocab_size;
  return std::make_shared<MegalodonModel>(config);
}

std::shared_ptr<LanguageModel> build_blt(const YAML::Node& node, const ModelContext& context) {
  auto config = config::parse<BLTConfig>(node, "model", context.file);
  if (config.vocab_size == 0) config.vocab_size = context.vocab_size;
  return std::make_shared<BLTModel>(config);
}

std::shared_ptr<LanguageModel> build_megabyte(const YAML::Node& node, const ModelContext& context) {
  auto config = config::parse<MegabyteConfig>(node, "model", context.file);
  if (config.vocab_size == 0) config.vocab_size = context.vocab_size;
  return std::make_shared<MegabyteModel>(config);
}

const std::vector<ArchitectureEntry>& table() {
  static const std::vector<ArchitectureEntry> entries = {
      {"dense", "Llama-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention", build_dense,
       [] { return config::document<DenseConfig>("model."); }},
      {"blt", "BLT: hash n-gram local encoder/decoder with cross-attention around a global transformer over byte patches",
       build_blt, [] { return config::document<BLTConfig>("model."); }},
      {"megabyte", "MEGABYTE: global transformer over byte patches, local transformer inside each patch",
       build_megabyte, [] { return config::document<MegabyteConfig>("model."); }},
      {"megalodon", "Megalodon: complex EMA + timestep norm + chunk-wise normalised attention, two-hop residual",
       build_megalodon, [] { return config::document<MegalodonConfig>("model."); }},
  };
  return entries;
}

std::string name_list() {
  std::string list;
  for (const auto& e : table()) list += (list.empty() ? "" : ", ") + std::string(e.name);
  return list;
}

const ArchitectureEntry& find(const std::string& arch) {
  for (const auto& e : table())
    if (arch == e.name) return e;
  const auto names = architecture_names();
  const std::string hint = config::closest_match(arch, names);
  const std::string list = name_list();
  fail("unknown architecture '", arch, "'", hint.empty() ? "" : " (did you mean '" + hint + "'?)",
       "; available: ", list);
}

}  // namespace

std::vector<std::string> architecture_names() {
  std::vector<std::string> names;
  for (const auto& e : table()) names.emplace_back(e.name);
  return names;
}

std::shared_ptr<LanguageModel> build_model(const YAML::Node& node, const ModelContext& context) {
  check(node && node.IsMap(), "the recipe needs a 'model:' section with at least 'arch:'");
  const YAML::Node arch = node["arch"];
  check(arch && arch.IsScalar(), "missing required key 'model.arch' (one of: ", name_list(), ")");
  return find(arch.Scalar()).build(node, context);
}

std::vector<std::string> architecture_doc(const std::string& arch) { return find(arch).doc(); }

}  // namespace tessera
