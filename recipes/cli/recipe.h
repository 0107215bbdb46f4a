// A recipe: one YAML file that says what to train on what data, how, and what to do with the result.
#pragma once

#include <yaml-cpp/yaml.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/data/sample.h"
#include "core/data/source.h"
#include "core/model.h"
#include "core/objective.h"
#include "core/sampling.h"
#include "core/train/train_config.h"
#include "core/train/trainer.h"
#include "modalities/prepare.h"

namespace tessera {

// Where a recipe's data comes from: a prepared dataset folder (index.json + shards), built by `prepare`
// from `prepare.corpus` when that lists inputs, or from `prepare.pairs` when that names a source (a
// no-op once it is up to date).
struct DataConfig {
  std::string dataset;    // "" -> <run_dir>/data
  PrepareConfig prepare;  // used when it has inputs (corpus.inputs or pairs.source)
  int64_t seq_len = 256;
  int64_t batch_size = 16;
  bool doc_mask = true;
  int64_t prefetch = 2;
  bool verify_checksums = true;
  bool allow_latent_placeholders = false;

  template <class V>
  void fields(V& v) {
    v.optional("dataset", dataset, "prepared dataset folder (default <run_dir>/data)");
    v.optional("prepare", prepare, "how to prepare the dataset when it is missing (tessera prepare)");
    v.optional("seq_len", seq_len, "tokens per training row");
    v.optional("batch_size", batch_size, "rows per micro-batch (per rank)");
    v.optional("doc_mask", doc_mask, "block-diagonal attention across packed documents");
    v.optional("prefetch", prefetch, "batches prepared ahead on a worker thread (0: none)");
    v.optional("verify_checksums", verify_checksums, "check every shard's CRC32 when opening it");
    v.optional("allow_latent_placeholders", allow_latent_placeholders,
               "train a token model on a dataset whose images are continuous latents (their <latent> "
               "placeholders become ordinary tokens; normally an error)");
  }
  bool has_prepare() const { return prepare.has_inputs(); }
};

// One arm of a comparison recipe: the base recipe with `set` merged over it, run in <run_dir>/<name>.
struct VariantConfig {
  std::string name;
  YAML::Node set;

  template <class V>
  void fields(V& v) {
    v.required("name", name, "variant name (its run directory under the recipe's)");
    v.raw("set", set, false, "recipe keys this variant changes (a partial recipe merged over the base)");
  }
};

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
  std::string task = "lm";  // other tasks (tokenizers, VAEs, ...) never reach this struct: see tasks.h
  std::string name = "recipe";
  std::string run_dir;  // "" -> runs/<name>
  int64_t seed = 0;
  std::string objective = "lm";
  YAML::Node model;
  DataConfig data;
  TrainConfig train;
  EvalConfig eval;
  GenerateConfig generate;
  std::vector<VariantConfig> variants;

  template <class V>
  void fields(V& v) {
    v.choice("task", task, {"lm"}, "what the recipe trains: lm (this struct); artifact tasks are listed by `tessera --help`");
    v.optional("name", name, "recipe name");
    v.optional("run_dir", run_dir, "where checkpoints, metrics and samples go (default runs/<name>)");
    v.optional("seed", seed, "seed for weights init and data order");
    v.choice("objective", objective, {"lm"}, "training objective");
    v.raw("model", model, true, "the backbone: `arch` plus that architecture's keys (tessera info --arch NAME)");
    v.required("data", data);
    v.required("train", train);
    v.optional("eval", eval);
    v.optional("generate", generate);
    v.optional("variants", variants,
               "arms of a comparison: each runs the recipe with its `set` keys changed, then a summary table and plot");
  }
};

struct LoadedRecipe {
  RecipeConfig config;
  std::string file;  // the YAML file
  std::filesystem::path run_dir;
};

// Parses the file with overrides applied; errors name the key path and file position. With `variant`,
// that variant's `set` is merged over the base and the run directory becomes <run_dir>/<variant>.
// data.dataset is made absolute, so that checkpoints find their data from any working directory.
LoadedRecipe load_recipe(const std::string& file, const std::vector<std::string>& overrides,
                         const std::string& variant = "");

// The dataset folder of a recipe (data.dataset, or <run_dir>/data).
std::filesystem::path dataset_dir(const LoadedRecipe& recipe);
std::filesystem::path dataset_dir(const RecipeConfig& recipe);

// Prepares the recipe's dataset when it lists inputs (no-op when up to date).
PrepareResult prepare_recipe_data(const LoadedRecipe& recipe, bool force = false, bool quiet = false);

struct DataBundle {
  std::shared_ptr<DataSource> train;
  std::shared_ptr<DataSource> val;  // null when the dataset has no validation documents
  VocabLayout layout;
  SplitSize val_size;
  nlohmann::json adapters;  // the dataset's adapters, model paths made absolute
  std::filesystem::path dir;
};
// Opens a prepared dataset for training (shuffled train rows) and evaluation (every val token once).
DataBundle make_data(const DataConfig& config, const std::filesystem::path& dir, uint64_t seed);

std::shared_ptr<LanguageModel> make_model(const RecipeConfig& recipe, const std::string& file,
                                          const VocabLayout& layout);
// A BLT model whose config names an entropy_model gets it loaded (from its run dir or checkpoint) and
// attached; other models are left alone. The entropy model must share the data's vocabulary layout.
void attach_entropy_model(LanguageModel& model, const VocabLayout& layout);

// BLT entropies precomputed in a dataset must come from the model's own entropy model: an error naming
// both otherwise (no-op for other models, datasets without entropies, or BLT without entropy_model).
void check_dataset_entropies(const std::filesystem::path& dataset, const LanguageModel& model);

std::shared_ptr<Objective> make_objective(const std::string& name);

// Optimizer steps that spend train.flops_budget with this model and batch shape.
int64_t steps_for_budget(const RecipeConfig& recipe, const LanguageModel& model);
// The steps a run of this recipe will train for (train.steps, or derived from train.flops_budget,
// which needs the prepared dataset's vocabulary).
int64_t planned_steps(const LoadedRecipe& recipe);

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
  std::shared_ptr<const Adapter> adapter;  // the text adapter the model was trained through
};
LoadedCheckpoint load_trained(const std::filesystem::path& path);

// What entropies.json records of the entropy model that made a dataset's entropies.
nlohmann::json entropy_model_identity(const LoadedCheckpoint& entropy);

}  // namespace tessera
