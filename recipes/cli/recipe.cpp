#include "recipes/cli/recipe.h"

#include <ATen/ATen.h>

#include <fstream>

#include "architectures/registry.h"
#include "core/config.h"
#include "core/error.h"
#include "core/io/checkpoint.h"
#include "core/train/runtime.h"
#include "core/train/weights.h"
#include "objectives/lm.h"

namespace tessera {
namespace fs = std::filesystem;

LoadedRecipe load_recipe(const std::string& file, const std::vector<std::string>& overrides) {
  YAML::Node root = config::load_yaml_file(file);
  config::apply_overrides(root, overrides);
  LoadedRecipe out;
  out.file = file;
  out.config = config::parse<RecipeConfig>(root, "", file);
  const RecipeConfig& c = out.config;
  check(c.data.seq_len > 0 && c.data.batch_size > 0, "data.seq_len and data.batch_size must be positive");
  validate(c.generate.sampling);
  out.run_dir = c.run_dir.empty() ? fs::path("runs") / c.name : fs::path(c.run_dir);
  return out;
}

DataBundle make_data(const DataConfig& config, const std::string& recipe_file, uint64_t seed) {
  const std::string dir = recipe_file.empty() ? "" : fs::path(recipe_file).parent_path().string();
  const std::string path = resolve_data_path(config.path, dir);
  TextCorpus corpus = load_text_bytes(path, config.split_by, config.val_fraction);
  DataBundle out;
  out.layout = corpus.layout;
  out.val_bytes = corpus.val.bytes;
  auto train = std::make_shared<const TokenStream>(std::move(corpus.train));
  out.train = std::make_shared<PackedRowSource>(train, out.layout, config.batch_size, config.seq_len, true, seed, 0, 1,
                                                config.doc_mask);
  if (!corpus.val.tokens.empty()) {
    auto val = std::make_shared<const TokenStream>(std::move(corpus.val));
    out.val = std::make_shared<PackedRowSource>(val, out.layout, config.batch_size, config.seq_len, false, seed, 0, 1,
                                                config.doc_mask);
  }
  return out;
}

std::shared_ptr<LanguageModel> make_model(const RecipeConfig& recipe, const std::string& file,
                                          const VocabLayout& layout) {
  ModelContext context;
  context.vocab_size = layout.size();
  context.file = file;
  auto model = build_model(recipe.model, context);
  check(model->vocab_size() >= layout.size(), "model.vocab_size (", model->vocab_size(),
        ") is smaller than the data's vocabulary (", layout.describe(), ")");
  return model;
}

std::shared_ptr<Objective> make_objective(const std::string& name) {
  check(name == "lm", "unknown objective '", name, "' (available: lm)");
  return std::make_shared<LMObjective>();
}

YAML::Node resolved_yaml(const RecipeConfig& recipe, const LanguageModel& model) {
  YAML::Node node = config::to_yaml(recipe);
  node["model"] = model.config_yaml();
  return node;
}

TrainerSetup make_trainer_setup(const LoadedRecipe& recipe) {
  const RecipeConfig& c = recipe.config;
  seed_everything(static_cast<uint64_t>(c.seed));
  DataBundle data = make_data(c.data, recipe.file, static_cast<uint64_t>(c.seed));
  auto model = make_model(c, recipe.file, data.layout);
  fs::create_directories(recipe.run_dir);
  const YAML::Node resolved = resolved_yaml(c, *model);
  const fs::path config_path = recipe.run_dir / "config.yaml";
  {
    std::ofstream out(config_path.string() + ".tmp");
    check(static_cast<bool>(out), "cannot write '", config_path.string(), "'");
    out << config::dump_yaml(resolved);
  }
  fs::rename(config_path.string() + ".tmp", config_path);

  TrainerSetup setup;
  setup.model = model;
  setup.objective = make_objective(c.objective);
  setup.train_data = data.train;
  setup.val_data = data.val;
  setup.config = c.train;
  setup.run_dir = recipe.run_dir;
  setup.recipe = config::yaml_to_json(resolved);
  setup.seed = static_cast<uint64_t>(c.seed);
  return setup;
}

LoadedCheckpoint load_trained(const fs::path& path) {
  LoadedCheckpoint out;
  out.dir = io::resolve_checkpoint(path);
  const io::CheckpointContents contents = io::load_checkpoint(out.dir);
  out.state = contents.state;
  check(out.state.value("format", std::string()) == "tessera-checkpoint", out.dir.string(),
        "/state.json is not a Tessera checkpoint state (no \"format\": \"tessera-checkpoint\")");
  out.recipe = config::parse<RecipeConfig>(config::json_to_yaml(out.state.at("recipe")), "",
                                           (out.dir / "state.json").string());
  out.layout = VocabLayout::from_json(out.state.at("vocab_layout"));
  ModelContext context;
  context.vocab_size = out.layout.size();
  context.file = (out.dir / "state.json").string();
  out.model = build_model(config::json_to_yaml(out.state.at("model_config")), context);
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, t] : contents.model) tensors.emplace(name, t);
  load_parameters(*out.model, tensors, (out.dir / "model.safetensors").string());
  return out;
}

}  // namespace tessera
