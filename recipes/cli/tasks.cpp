#include "recipes/cli/tasks.h"

#include "core/config.h"
#include "core/error.h"
#include "core/io/files.h"
#include "recipes/cli/task_image.h"
#include "recipes/cli/task_speech.h"

namespace tessera::cli {

const std::vector<TaskRecipe>& task_recipes() {
  // One row per artifact-training recipe kind; each function lives in its own task_*.cpp.
  static const std::vector<TaskRecipe> table = {
      {"vq_tokenizer", "train a VQ image tokenizer: discrete image tokens (modalities/image_vq)", vq_tokenizer_task},
      {"vae", "train a KL image VAE: continuous latents for Transfusion (modalities/image_latent)", vae_task},
      {"speech_corpus", "synthesise a speech-text corpus with espeak-ng (modalities/speech_units)", speech_corpus_task},
      {"speech_units", "fit k-means speech units on MFCC/log-mel features (modalities/speech_units)", speech_units_task},
      {"vocoder", "train a units -> log-mel vocoder with Griffin-Lim resynthesis, report MCD", vocoder_task},
  };
  return table;
}

std::string recipe_task(const std::string& file) {
  const YAML::Node root = config::load_yaml_file(file);
  if (!root.IsMap() || !root["task"]) return "lm";
  check(root["task"].IsScalar(), config::location(root["task"], file), ": `task` must be a name (lm or one of ",
        "the artifact tasks), not a ", root["task"].IsMap() ? "map" : "list");
  return root["task"].as<std::string>();
}

void write_task_config(const std::filesystem::path& run_dir, const YAML::Node& resolved) {
  write_text_atomic(run_dir / "config.yaml", config::dump_yaml(resolved) + "\n");
}

const TaskRecipe& find_task(const std::string& task, const std::string& file) {
  std::vector<std::string> names = {"lm"};
  for (const auto& t : task_recipes()) {
    if (task == t.task) return t;
    names.emplace_back(t.task);
  }
  std::string known;
  for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
  fail("recipe ", file, ": unknown task '", task, "' (known: ", known, "); did you mean '",
       config::closest_match(task, names), "'?");
}

}  // namespace tessera::cli
