#include "recipes/cli/recipe.h"

#include <ATen/ATen.h>

#include <fstream>

#include "architectures/blt.h"
#include "architectures/registry.h"
#include "core/config.h"
#include "core/data/entropies.h"
#include "core/data/latents.h"
#include "core/data/packer.h"
#include "core/data/shard.h"
#include "core/error.h"
#include "core/io/checkpoint.h"
#include "core/io/files.h"
#include "core/train/runtime.h"
#include "core/train/weights.h"
#include "modalities/registry.h"
#include "objectives/lm.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

// Deep merge for variants: mappings merge key by key, anything else replaces.
void merge_into(YAML::Node base, const YAML::Node& over) {
  for (const auto& kv : over) {
    const std::string key = kv.first.as<std::string>();
    if (kv.second.IsMap() && base[key] && base[key].IsMap()) {
      merge_into(base[key], kv.second);
    } else {
      base[key] = YAML::Clone(kv.second);
    }
  }
}

fs::path absolute_of(const fs::path& p) { return p.is_absolute() ? p : fs::absolute(p).lexically_normal(); }

}  // namespace

LoadedRecipe load_recipe(const std::string& file, const std::vector<std::string>& overrides,
                         const std::string& variant) {
  YAML::Node root = config::load_yaml_file(file);
  config::apply_overrides(root, overrides);
  LoadedRecipe out;
  out.file = file;
  if (!variant.empty()) {
    // Parse once to validate the base (and the variants list), then build the variant's tree.
    const RecipeConfig base = config::parse<RecipeConfig>(root, "", file);
    const VariantConfig* chosen = nullptr;
    std::vector<std::string> names;
    for (const auto& v : base.variants) {
      names.push_back(v.name);
      if (v.name == variant) chosen = &v;
    }
    check(chosen != nullptr, "recipe ", file, " has no variant '", variant, "'",
          names.empty() ? std::string(" (it has none)") : "; did you mean '" + config::closest_match(variant, names) + "'?");
    YAML::Node tree = YAML::Clone(root);
    tree.remove("variants");
    if (chosen->set) {
      // A variant that names another architecture replaces the model section: merging the keys of
      // two architectures' configs would only produce unknown-key errors.
      const YAML::Node set_model = chosen->set["model"];
      if (set_model && set_model.IsMap() && set_model["arch"] && tree["model"] && tree["model"]["arch"] &&
          set_model["arch"].as<std::string>() != tree["model"]["arch"].as<std::string>())
        tree["model"] = YAML::Clone(set_model);
      merge_into(tree, chosen->set);
    }
    // Command-line overrides win over the variant's settings too (a variant that replaced the model
    // section would otherwise drop `model.*` overrides silently); its run_dir and name are derived below.
    std::vector<std::string> variant_overrides;
    for (const auto& o : overrides) {
      const std::string key = o.substr(0, o.find('='));
      if (key != "run_dir" && key != "name") variant_overrides.push_back(o);
    }
    config::apply_overrides(tree, variant_overrides);
    const fs::path base_dir = base.run_dir.empty() ? fs::path("runs") / base.name : fs::path(base.run_dir);
    if (!(chosen->set && chosen->set["run_dir"])) tree["run_dir"] = (base_dir / variant).string();
    if (!(chosen->set && chosen->set["name"])) tree["name"] = base.name + "/" + variant;
    root = tree;
  }
  out.config = config::parse<RecipeConfig>(root, "", file);
  RecipeConfig& c = out.config;
  check(c.data.seq_len > 0 && c.data.batch_size > 0, "data.seq_len and data.batch_size must be positive");
  check(c.data.prefetch >= 0, "data.prefetch must be >= 0");
  check(c.train.steps > 0 || c.train.flops_budget > 0, "set train.steps or train.flops_budget");
  validate(c.generate.sampling);
  out.run_dir = c.run_dir.empty() ? fs::path("runs") / c.name : fs::path(c.run_dir);
  // Checkpoints record the resolved recipe; absolute data paths keep them usable from anywhere.
  const fs::path recipe_dir = fs::path(file).parent_path();
  c.data.dataset = absolute_of(c.data.dataset.empty() ? out.run_dir / "data" : fs::path(c.data.dataset)).string();
  // Likewise a BLT's entropy model (a run directory), so that its checkpoints find it from anywhere.
  if (c.model && c.model.IsMap() && c.model["entropy_model"] && c.model["entropy_model"].IsScalar()) {
    const std::string p = c.model["entropy_model"].Scalar();
    if (!p.empty()) c.model["entropy_model"] = absolute_of(p).string();
  }
  for (auto& input : c.data.prepare.corpus.inputs) {
    if (input.rfind("debian:", 0) == 0 || fs::path(input).is_absolute()) continue;
    if (fs::exists(input)) input = absolute_of(input).string();
    else if (fs::exists(recipe_dir / input)) input = absolute_of(recipe_dir / input).string();
#ifdef TESSERA_SOURCE_DIR
    else if (fs::exists(fs::path(TESSERA_SOURCE_DIR) / input)) input = (fs::path(TESSERA_SOURCE_DIR) / input).string();
#endif
  }
  if (!c.data.prepare.bpe_model.empty()) c.data.prepare.bpe_model = absolute_of(c.data.prepare.bpe_model).string();
  return out;
}

fs::path dataset_dir(const RecipeConfig& recipe) { return recipe.data.dataset; }
fs::path dataset_dir(const LoadedRecipe& recipe) { return dataset_dir(recipe.config); }

PrepareResult prepare_recipe_data(const LoadedRecipe& recipe, bool force, bool quiet) {
  const RecipeConfig& c = recipe.config;
  const fs::path dir = dataset_dir(recipe);
  if (!c.data.has_prepare()) {
    check(fs::exists(dir / "index.json"), "dataset ", dir.string(),
          " is not prepared and the recipe has no data.prepare.corpus.inputs or data.prepare.pairs to prepare it from; run "
          "`tessera prepare` or set data.dataset to a prepared folder");
    PrepareResult r;
    r.dir = dir;
    r.index = DatasetIndex::load(dir);
    r.up_to_date = true;
    return r;
  }
  return prepare_dataset(c.data.prepare, dir, fs::path(recipe.file).parent_path().string(), force, quiet);
}

DataBundle make_data(const DataConfig& config, const fs::path& dir, uint64_t seed) {
  const DatasetIndex index = DatasetIndex::load(dir);
  // Latents live in sidecars that this token loader does not read (Transfusion will).
  reject_latent_placeholders(index, dir, config.allow_latent_placeholders, "data.allow_latent_placeholders");
  DataBundle out;
  out.dir = dir;
  out.layout = index.layout;
  out.adapters = index.adapters;
  for (auto& a : out.adapters)
    if (a.contains("model") && !fs::path(a["model"].get<std::string>()).is_absolute())
      a["model"] = (fs::absolute(dir) / a["model"].get<std::string>()).lexically_normal().string();
  PackerOptions train_options;
  train_options.batch_size = config.batch_size;
  train_options.seq_len = config.seq_len;
  train_options.shuffle = true;
  train_options.seed = seed;
  train_options.doc_mask = config.doc_mask;
  train_options.prefetch = static_cast<int>(config.prefetch);
  // BLT entropies precomputed beside the shards (core/data/entropies.h) travel with every batch.
  const bool entropies = has_entropies(dir);
  if (entropies) read_entropies_info(dir, index);  // errors when the shards changed since
  auto open_split = [&](const std::string& split) {
    auto store = ShardedSplit::open(dir, index, split, config.verify_checksums);
    if (entropies) store->attach_entropies(dir);
    return store;
  };
  out.train = std::make_shared<PackedRowSource>(open_split("train"), out.layout, train_options);
  const auto val_it = index.splits.find("val");
  if (val_it != index.splits.end() && val_it->second.docs > 0) {
    PackerOptions val_options = train_options;
    val_options.shuffle = false;
    val_options.cover_all = true;  // every validation token is a target exactly once: exact bpb
    out.val = std::make_shared<PackedRowSource>(open_split("val"), out.layout, val_options);
    out.val_size.targets = val_it->second.tokens - val_it->second.docs;
    out.val_size.bytes = val_it->second.bytes;
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
  attach_entropy_model(*model, layout);
  return model;
}

void attach_entropy_model(LanguageModel& model, const VocabLayout& layout) {
  auto* blt = dynamic_cast<BLTModel*>(&model);
  if (blt == nullptr || blt->config().entropy_model.empty()) return;
  const fs::path path = blt->config().entropy_model;
  check(fs::exists(path), "model.entropy_model: ", path.string(), " does not exist; train the entropy model "
        "first (tessera run recipes/blt/entropy_model.yaml) or point model.entropy_model at its run directory");
  LoadedCheckpoint entropy = load_trained(path);
  require_same_layout(layout, entropy.layout, "model.entropy_model " + path.string());
  entropy.model->eval();
  blt->set_entropy_model(entropy.model);
}

nlohmann::json entropy_model_identity(const LoadedCheckpoint& entropy) {
  return {{"checkpoint", fs::absolute(entropy.dir).lexically_normal().string()},
          {"step", entropy.state.value("step", int64_t{0})},
          {"weights_crc32", file_crc32(entropy.dir / io::kModelFile)}};
}

void check_dataset_entropies(const fs::path& dataset, const LanguageModel& model) {
  const auto* blt = dynamic_cast<const BLTModel*>(&model);
  if (blt == nullptr || !has_entropies(dataset) || blt->config().entropy_model.empty()) return;
  const nlohmann::json recorded = read_entropies_info(dataset, DatasetIndex::load(dataset)).at("entropy_model");
  const uint32_t crc = file_crc32(io::resolve_checkpoint(blt->config().entropy_model) / io::kModelFile);
  check(recorded.value("weights_crc32", uint32_t{0}) == crc, "dataset ", dataset.string(),
        " holds entropies of the entropy model ", recorded.value("checkpoint", std::string("?")),
        " but model.entropy_model is ", blt->config().entropy_model,
        " (other weights): patches in training and in generation would differ. Recompute them with "
        "`tessera patch entropies RECIPE`, or point model.entropy_model at the model that made them");
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

int64_t steps_for_budget(const RecipeConfig& c, const LanguageModel& model) {
  const double per_step = model.flops(c.data.seq_len).train_per_token * static_cast<double>(c.data.seq_len) *
                          static_cast<double>(c.data.batch_size * c.train.grad_accum);
  return std::max<int64_t>(1, static_cast<int64_t>(std::llround(c.train.flops_budget / per_step)));
}

int64_t planned_steps(const LoadedRecipe& recipe) {
  const RecipeConfig& c = recipe.config;
  if (c.train.flops_budget <= 0) return c.train.steps;
  const PrepareResult data = prepare_recipe_data(recipe, false, true);
  return steps_for_budget(c, *make_model(c, recipe.file, data.index.layout));
}

TrainerSetup make_trainer_setup(const LoadedRecipe& recipe) {
  RecipeConfig c = recipe.config;
  seed_everything(static_cast<uint64_t>(c.seed));
  // Quiet when the dataset already exists: `run` has reported on it in its prepare stage.
  prepare_recipe_data(recipe, false, fs::exists(dataset_dir(recipe) / "index.json"));
  DataBundle data = make_data(c.data, dataset_dir(recipe), static_cast<uint64_t>(c.seed));
  auto model = make_model(c, recipe.file, data.layout);
  check_dataset_entropies(data.dir, *model);
  if (c.train.flops_budget > 0) c.train.steps = steps_for_budget(c, *model);
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
  setup.val_size = data.val_size;
  setup.seq_len = c.data.seq_len;
  setup.config = c.train;
  setup.run_dir = recipe.run_dir;
  setup.recipe = config::yaml_to_json(resolved);
  setup.extra_state = {{"adapters", data.adapters},
                       {"train_flops_per_token", model->flops(c.data.seq_len).train_per_token}};
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
  attach_entropy_model(*out.model, out.layout);
  const nlohmann::json adapters = out.state.value("adapters", nlohmann::json::array());
  check(adapters.is_array() && !adapters.empty(), out.dir.string(),
        "/state.json names no text adapter (\"adapters\"); it was written by an older Tessera: retrain");
  out.adapter = make_adapter(adapters[0], out.dir);  // the text adapter: prepare records media adapters after it
  return out;
}

}  // namespace tessera
