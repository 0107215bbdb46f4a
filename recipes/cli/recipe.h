// A recipe: one YAML file that says what to train on what data, how, and what to do with the result.
#pragma once

#include <yaml-cpp/yaml.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/data/text_bytes.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/sampling.h"
#include "core/train/train_config.h"
#include "core/train/trainer.h"

namespace tessera {

struct GenerateConfig {
  std::string prompt = "The ";
  int64_t max_new_tokens = 200;
  int64_t num_samples = 2;
  SamplingConfig sampling;

  template <class V>
  void fields(V& v) {
    v.optional("prompt", prompt, "text the samples continue");
    v.optional("max_new_tokens", max_new_tokens, "tokens to generate per sample");
    v.optional("num_samples", num_samples, "samples to draw (seeds seed, seed+1, ...)");
    sampling.fields(v);
  }
};

struct EvalConfig {
  int64_t batches = 0;  // 0: the whole validation split

  template <class V>
  void fields(V& v) {
    v.optional("batches", batches, "validation batches to evaluate (0: the whole split)");
  }
};

struct RecipeConfig {
  std::string name = "recipe";
  std::string run_dir;  // "" -> runs/<name>
  int64_t seed = 0;
  std::string objective = "lm";
  YAML::Node model;
  DataConfig data;
  TrainConfig train;
  EvalConfig eval;
  GenerateConfig generate;

  template <class V>
  void fields(V& v) {
    v.optional("name", name, "recipe name");
    v.optional("run_dir", run_dir, "where checkpoints, metrics and samples go (default runs/<name>)");
    v.optional("seed", seed, "seed for weights init and data order");
    v.choice("objective", objective, {"lm"}, "training objective");
    v.raw("model", model, true, "the backbone: `arch` plus that architecture's keys (tessera info --arch NAME)");
    v.required("data", data);
    v.required("train", train);
    v.optional("eval", eval);
    v.optional("generate", generate);
  }
};

struct LoadedRecipe {
  RecipeConfig config;
  std::string file;  // the YAML file
  std::filesystem::path run_dir;
};

// Parses the file with overrides applied; errors name the key path and file position.
LoadedRecipe load_recipe(const std::string& file, const std::vector<std::string>& overrides);

struct DataBundle {
  std::shared_ptr<DataSource> train;
  std::shared_ptr<DataSource> val;  // null when data.val_fraction is 0
  VocabLayout layout;
  int64_t val_bytes = 0;
};
DataBundle make_data(const DataConfig& config, const std::string& recipe_file, uint64_t seed);

std::shared_ptr<LanguageModel> make_model(const RecipeConfig& recipe, const std::string& file,
                                          const VocabLayout& layout);
std::shared_ptr<Objective> make_objective(const std::string& name);

// The resolved recipe (every default filled, the model's full config) as YAML and JSON.
YAML::Node resolved_yaml(const RecipeConfig& recipe, const LanguageModel& model);

// Everything the trainer needs for a recipe: seeds, builds data/model/objective, writes the resolved
// config to run_dir/config.yaml. `tessera train`/`run` use it; tests add hooks before calling train().
TrainerSetup make_trainer_setup(const LoadedRecipe& recipe);

// A trained model back from a checkpoint directory, run directory or checkpoints root.
struct LoadedCheckpoint {
  std::filesystem::path dir;
  nlohmann::json state;
  RecipeConfig recipe;
  VocabLayout layout;
  std::shared_ptr<LanguageModel> model;
};
LoadedCheckpoint load_trained(const std::filesystem::path& path);

}  // namespace tessera
