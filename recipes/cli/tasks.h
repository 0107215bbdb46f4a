// Recipes that train an artifact rather than a language model: an image tokenizer, a VAE, a k-means
// unit codebook, a vocoder, a generated corpus. Such a recipe names its kind with a top-level
// `task: NAME` key; `tessera run` and `tessera train` hand it to that task's function, which parses the
// rest of the file into its own typed config (strict keys) and writes its outputs under its run_dir.
// A recipe without `task` (or with `task: lm`) is a language-model recipe (recipe.h).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "core/config.h"

namespace tessera::cli {

struct TaskContext {
  std::string file;                    // the recipe YAML
  std::vector<std::string> overrides;  // key.sub=value from the command line
  std::string run_dir;                 // --run-dir, or "" (the recipe's run_dir)
  bool force = false;                  // --force: start over, ignoring finished outputs
  bool resume = false;                 // --resume (tessera train): continue from the latest checkpoint
};

using TaskFn = int (*)(const TaskContext&);

struct TaskRecipe {
  const char* task;     // the value of the recipe's `task:` key
  const char* summary;  // one line for `tessera --help` and error messages
  TaskFn run;
};

// Every task a recipe may name (the table lives in tasks.cpp).
const std::vector<TaskRecipe>& task_recipes();

// The recipe's top-level `task` ("lm" when absent); errors name the file when it does not parse.
std::string recipe_task(const std::string& file);

// The task of that name; an unknown name is an error listing the known tasks and the closest one.
const TaskRecipe& find_task(const std::string& task, const std::string& file);

// An artifact recipe: ctx.file with ctx.overrides applied, parsed into T (strict keys). T has `name`
// and `run_dir`; run_dir becomes --run-dir, else the recipe's, else runs/<name>.
template <class T>
T load_task_config(const TaskContext& ctx) {
  YAML::Node root = config::load_yaml_file(ctx.file);
  config::apply_overrides(root, ctx.overrides);
  T c = config::parse<T>(root, "", ctx.file);
  if (!ctx.run_dir.empty()) c.run_dir = ctx.run_dir;
  if (c.run_dir.empty()) c.run_dir = (std::filesystem::path("runs") / c.name).string();
  return c;
}

// Writes a task's resolved config as run_dir/config.yaml (atomically), as LM runs do.
void write_task_config(const std::filesystem::path& run_dir, const YAML::Node& resolved);

}  // namespace tessera::cli
