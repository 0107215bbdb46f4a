#include "recipes/cli/commands.h"

#include <cxxopts.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "architectures/blt.h"
#include "architectures/registry.h"
#include "core/config.h"
#include "core/data/entropies.h"
#include "core/error.h"
#include "core/io/files.h"
#include "core/io/checkpoint.h"
#include "core/plot.h"
#include "core/progress.h"
#include "core/sampling.h"
#include "core/train/autocast.h"
#include "core/train/runtime.h"
#include "core/train/trainer.h"
#include "eval/bench/cema_bench.h"
#include "eval/bench/data_bench.h"
#include "eval/bench/generate_bench.h"
#include "eval/bench/train_bench.h"
#include "modalities/bytes/patching.h"
#include "recipes/cli/options.h"
#include "recipes/cli/recipe.h"
#include "recipes/cli/task_image.h"
#include "recipes/cli/task_speech.h"
#include "recipes/cli/tasks.h"

namespace tessera::cli {
namespace fs = std::filesystem;

namespace {

struct Verb {
  const char* name;
  const char* summary;
  int (*fn)(const Args&);
};

const std::vector<Verb>& verbs() {
  static const std::vector<Verb> table = {
      {"run", "all stages of a recipe (prepare -> train -> eval -> generate), each skipped when done", run_command},
      {"train", "train a model from a recipe (--resume continues from the last checkpoint)", train_command},
      {"prepare", "prepare a recipe's dataset: corpus -> adapter -> memory-mapped shards + index.json", prepare_command},
      {"eval", "validation loss, perplexity and bits per byte of a checkpoint (`tessera eval bpb PATH`)", eval_command},
      {"generate", "sample text from a checkpoint with a KV cache", generate_command},
      {"info", "describe a checkpoint, run directory or recipe; --arch NAME lists an architecture's keys",
       info_command},
      {"bench", "benchmarks: `tessera bench train` times the training step", bench_command},
      {"patch", "BLT patching: `tessera patch calibrate` finds the entropy threshold for a mean patch size",
       patch_command},
  };
  return table;
}

// Parses with cxxopts; --help prints and returns false (options.h).
bool parse(cxxopts::Options& options, const Args& args, cxxopts::ParseResult& result) {
  return parse_options(options, args, result);
}

std::string positional(const cxxopts::ParseResult& r, const char* name, const cxxopts::Options& options) {
  if (!r.count(name)) throw UsageError(str("missing ", name, " (see `", options.program(), " --help`)"));
  return r[name].as<std::string>();
}

std::vector<std::string> overrides_of(const cxxopts::ParseResult& r) {
  return r.count("overrides") ? r["overrides"].as<std::vector<std::string>>() : std::vector<std::string>{};
}

// Sampled bytes need not be valid UTF-8; JSON output replaces invalid sequences with U+FFFD.
std::string json_text(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

void write_text(const fs::path& path, const std::string& text) {
  // Small outputs are written whole then renamed, so a reader never sees half a file.
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    check(static_cast<bool>(out), "cannot write '", tmp.string(), "'");
    out << text;
  }
  fs::rename(tmp, path);
}

std::optional<nlohmann::json> read_json_if_exists(const fs::path& path) {
  if (!fs::exists(path)) return std::nullopt;
  std::ifstream in(path);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;  // a damaged output is simply redone
  }
}

void add_recipe_options(cxxopts::Options& o) {
  o.add_options()("recipe", "recipe YAML file", cxxopts::value<std::string>())(
      "overrides", "key.sub=value overrides of the recipe", cxxopts::value<std::vector<std::string>>())(
      "run-dir", "override the run directory", cxxopts::value<std::string>())("h,help", "show this help");
  o.parse_positional({"recipe", "overrides"});
  o.positional_help("RECIPE.yaml [key.sub=value ...]");
}

// The key=value overrides plus --run-dir as `run_dir=`, so that a comparison recipe's variants land
// under the given directory (run_dir/<variant>) too.
std::vector<std::string> recipe_overrides(const cxxopts::ParseResult& r) {
  std::vector<std::string> overrides = overrides_of(r);
  if (r.count("run-dir")) overrides.push_back("run_dir=" + r["run-dir"].as<std::string>());
  return overrides;
}

LoadedRecipe recipe_from(const cxxopts::ParseResult& r, const cxxopts::Options& o) {
  return load_recipe(positional(r, "recipe", o), recipe_overrides(r));
}

// A recipe with a non-LM `task:` goes to that task's function (tasks.h); returns nullopt for LM recipes.
std::optional<int> run_task_recipe(const cxxopts::ParseResult& r, const cxxopts::Options& o) {
  const std::string file = positional(r, "recipe", o);
  const std::string task = recipe_task(file);
  if (task == "lm") return std::nullopt;
  TaskContext context;
  context.file = file;
  context.overrides = overrides_of(r);
  if (r.count("run-dir")) context.run_dir = r["run-dir"].as<std::string>();
  context.force = r.count("force") > 0;
  context.resume = r.count("resume") > 0;
  return find_task(task, file).run(context);
}

// ---- stages ---------------------------------------------------------------------------------------

TrainResult train_stage(const LoadedRecipe& recipe, bool resume) {
  return train(make_trainer_setup(recipe), resume);
}

nlohmann::json eval_stage(const fs::path& path, int64_t batches_override, const std::string& device_name) {
  LoadedCheckpoint ckpt = load_trained(path);
  const c10::Device device = select_device(device_name.empty() ? ckpt.recipe.train.device : device_name);
  const bool bf16 = use_bf16(ckpt.recipe.train.precision, device);
  ckpt.model->to(device);
  const fs::path dir = dataset_dir(ckpt.recipe);
  DataConfig data_config = ckpt.recipe.data;
  data_config.prefetch = 0;
  DataBundle data = make_data(data_config, dir, static_cast<uint64_t>(ckpt.recipe.seed));
  check_dataset_entropies(dir, *ckpt.model);
  require_same_layout(ckpt.layout, data.layout, "dataset " + dir.string());
  check(data.val != nullptr, "dataset ", dir.string(), " has no validation documents (prepare.val_fraction is 0); "
        "nothing to evaluate");
  auto objective = make_objective(ckpt.recipe.objective);
  const int64_t batches = batches_override >= 0 ? batches_override : ckpt.recipe.eval.batches;
  EvalResult r = evaluate(*ckpt.model, *objective, *data.val, batches, device, bf16);
  add_bits_per_byte(r, data.val_size);
  // Bytes per patch of patch-based models (BLT's patcher, MEGABYTE's P) on up to 16 validation batches.
  double bytes = 0, patches = 0;
  {
    at::NoGradGuard no_grad;
    AutocastGuard autocast(device.type(), bf16);
    data.val->reset();
    for (int64_t b = 0; b < std::min<int64_t>(16, data.val->batches_per_epoch()); ++b) {
      const LanguageModel::PatchCount count = ckpt.model->count_patches(data.val->next().to(device));
      if (count.patches == 0) break;  // not a patch-based model
      bytes += static_cast<double>(count.bytes);
      patches += static_cast<double>(count.patches);
    }
    data.val->reset();
  }
  const double bytes_per_patch = patches > 0 ? bytes / patches : 0.0;
  nlohmann::json by_position = nlohmann::json::array();
  for (const PositionBucket& b : position_buckets(r, data.val_size))
    by_position.push_back({{"begin", b.begin},
                           {"end", b.end},
                           {"tokens", b.tokens},
                           {"bits_per_token", b.bits_per_token},
                           {"bits_per_byte", b.bits_per_byte}});
  return {{"checkpoint", ckpt.dir.string()},   {"step", ckpt.state.at("step")},
          {"by_position", by_position},        {"bytes_per_patch", bytes_per_patch},
          {"dataset", dir.string()},           {"loss", r.loss},
          {"perplexity", r.perplexity},        {"bits_per_token", r.bits_per_token},
          {"bits_per_byte", r.bits_per_byte},  {"bits_per_byte_exact", r.bits_per_byte_exact},
          {"tokens", r.tokens},                {"bytes", data.val_size.bytes},
          {"sum_nll", r.sum_nll},              {"split_targets", data.val_size.targets}};
}

void print_eval(const nlohmann::json& ev) {
  std::printf("val loss %.4f, perplexity %.3f, %.4f bits/token, %.4f bits/byte%s over %s tokens (%s bytes)\n",
              ev.at("loss").get<double>(), ev.at("perplexity").get<double>(), ev.at("bits_per_token").get<double>(),
              ev.at("bits_per_byte").get<double>(), ev.value("bits_per_byte_exact", false) ? "" : " (estimated)",
              format_count(ev.at("tokens").get<double>()).c_str(), format_count(ev.value("bytes", 0.0)).c_str());
  if (ev.contains("by_position") && !ev.at("by_position").empty()) {
    std::printf("bits/byte by position in the context:");
    for (const auto& b : ev.at("by_position"))
      std::printf(" [%ld,%ld) %.3f", (long)b.at("begin").get<int64_t>(), (long)b.at("end").get<int64_t>(),
                  b.at("bits_per_byte").get<double>());
    std::printf("\n");
  }
}

nlohmann::json generate_stage(const fs::path& path, const GenerateConfig& g, const std::string& device_name) {
  LoadedCheckpoint ckpt = load_trained(path);
  const c10::Device device = select_device(device_name.empty() ? ckpt.recipe.train.device : device_name);
  const bool bf16 = use_bf16(ckpt.recipe.train.precision, device);
  ckpt.model->to(device);
  const Adapter& adapter = *ckpt.adapter;
  const int64_t offset = ckpt.layout.modality(adapter.name()).offset;
  std::vector<int64_t> prompt{ckpt.layout.special_id("<bos>")};
  for (int64_t id : adapter.encode(Segment::of_text(g.prompt)).ids) prompt.push_back(id + offset);
  const int64_t room = ckpt.model->max_seq_len() - static_cast<int64_t>(prompt.size());
  check(room > 0, "prompt of ", prompt.size(), " tokens leaves no room in max_seq_len ", ckpt.model->max_seq_len());
  const int64_t max_new = std::min(g.max_new_tokens, room);
  nlohmann::json samples = nlohmann::json::array();
  for (int64_t i = 0; i < g.num_samples; ++i) {
    SamplingConfig s = g.sampling;
    s.seed = g.sampling.seed + i;
    const auto ids = generate(*ckpt.model, prompt, max_new, s, device, bf16, ckpt.layout.special_id("<eos>"));
    // Decode prompt and continuation together: BPE pieces carry their leading spaces.
    Span span;
    span.modality = adapter.modality();
    for (const auto& seq : {std::vector<int64_t>(prompt.begin() + 1, prompt.end()), ids})
      for (int64_t id : seq)
        if (id >= offset && id < offset + adapter.vocab_size()) span.ids.push_back(id - offset);
    samples.push_back(adapter.decode(span).text);
  }
  return {{"checkpoint", ckpt.dir.string()},
          {"step", ckpt.state.at("step")},
          {"prompt", g.prompt},
          {"temperature", g.sampling.temperature},
          {"top_k", g.sampling.top_k},
          {"top_p", g.sampling.top_p},
          {"seed", g.sampling.seed},
          {"samples", samples}};
}

void print_samples(const nlohmann::json& result) {
  int i = 0;
  for (const auto& s : result.at("samples")) std::printf("--- sample %d ---\n%s\n", i++, s.get<std::string>().c_str());
}

}  // namespace

// ---- verbs ----------------------------------------------------------------------------------------

int train_command(const Args& args) {
  cxxopts::Options o("tessera train", "Train a model from a recipe.\n");
  add_recipe_options(o);
  o.add_options()("resume", "continue from the run's latest checkpoint (bit-exact on CPU)");
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  if (const auto code = run_task_recipe(r, o)) return *code;
  const LoadedRecipe recipe = recipe_from(r, o);
  // An interrupted run (SIGINT/SIGTERM) has written its checkpoint: that is a clean exit.
  train_stage(recipe, r.count("resume") > 0);
  return 0;
}

namespace {

// Every stage of one (non-comparison) recipe; returns what the summary of a comparison needs.
nlohmann::json run_stages(const LoadedRecipe& recipe, bool& interrupted) {
  const RecipeConfig& c = recipe.config;
  std::printf("== recipe %s -> %s\n", c.name.c_str(), recipe.run_dir.string().c_str());
  // Stage 0: prepare the dataset (a no-op when it is up to date).
  std::printf("== prepare\n");
  const PrepareResult prepared = prepare_recipe_data(recipe);

  // Stage 1: train (or resume, or skip when the final checkpoint exists).
  const int64_t steps = planned_steps(recipe);
  std::optional<fs::path> latest;
  if (fs::exists(recipe.run_dir / "checkpoints")) latest = io::CheckpointManager(recipe.run_dir / "checkpoints", 0).latest();
  int64_t done_steps = 0;
  if (latest) done_steps = io::load_checkpoint(*latest).state.at("step").get<int64_t>();
  if (latest && done_steps >= steps) {
    std::printf("== train: done (checkpoint %s at step %ld)\n", latest->string().c_str(), (long)done_steps);
  } else {
    std::printf("== train%s\n", latest ? " (resuming)" : "");
    const TrainResult result = train_stage(recipe, latest.has_value());
    if (result.interrupted) {
      interrupted = true;
      return {};
    }
  }
  const fs::path ckpt = io::resolve_checkpoint(recipe.run_dir);
  const nlohmann::json state = io::load_checkpoint(ckpt).state;
  const int64_t step = state.at("step").get<int64_t>();

  // Stage 2: evaluate on the whole validation split (exact bits per byte).
  const fs::path eval_path = recipe.run_dir / "eval.json";
  auto ev = read_json_if_exists(eval_path);
  if (ev && ev->value("step", int64_t{-1}) == step && ev->contains("bits_per_byte") && ev->contains("by_position") &&
      ev->contains("bytes_per_patch")) {
    std::printf("== eval: done (%s)\n", eval_path.string().c_str());
  } else {
    std::printf("== eval\n");
    ev = eval_stage(ckpt, -1, c.train.device);
    write_text(eval_path, json_text(*ev));
  }
  print_eval(*ev);

  // Stage 3: generate.
  const fs::path samples_path = recipe.run_dir / "samples.json";
  auto samples = read_json_if_exists(samples_path);
  if (samples && samples->value("step", int64_t{-1}) == step) {
    std::printf("== generate: done (%s)\n", samples_path.string().c_str());
  } else {
    std::printf("== generate\n");
    samples = generate_stage(ckpt, c.generate, c.train.device);
    write_text(samples_path, json_text(*samples));
  }
  print_samples(*samples);
  std::printf("== outputs in %s: config.yaml, metrics.jsonl, checkpoints/, eval.json, samples.json\n",
              recipe.run_dir.string().c_str());

  const SplitInfo& train_split = prepared.index.splits.at("train");
  const double flops_per_token = state.value("train_flops_per_token", 0.0);
  return {{"name", c.name},
          {"run_dir", recipe.run_dir.string()},
          {"adapter", prepared.index.adapters.at(0).value("type", std::string("?"))},
          {"vocab_size", prepared.index.layout.size()},
          {"parameters", state.value("parameters", int64_t{0})},
          {"steps", step},
          {"tokens", state.value("tokens_seen", int64_t{0})},
          {"train_flops", flops_per_token * state.value("tokens_seen", 0.0)},
          {"train_flops_per_byte",
           per_byte(FlopCount{flops_per_token, 0.0, 0},
                    static_cast<double>(train_split.bytes) /
                        static_cast<double>(std::max<int64_t>(1, train_split.tokens - train_split.docs)))
               .train_per_token},
          {"train_bytes_per_token", static_cast<double>(train_split.bytes) /
                                        static_cast<double>(std::max<int64_t>(1, train_split.tokens - train_split.docs))},
          {"train_targets_per_byte", static_cast<double>(train_split.tokens - train_split.docs) /
                                         static_cast<double>(std::max<int64_t>(1, train_split.bytes))},
          {"eval", *ev},
          {"sample", samples->at("samples").empty() ? std::string() : samples->at("samples")[0].get<std::string>()}};
}

// The variants a command acts on: --variant NAME, else all of the recipe's (none for a plain recipe).
std::vector<std::string> selected_variants(const LoadedRecipe& recipe, const cxxopts::ParseResult& r) {
  if (r.count("variant")) return {r["variant"].as<std::string>()};
  std::vector<std::string> names;
  for (const auto& v : recipe.config.variants) names.push_back(v.name);
  return names;
}

// Deletes everything under `dir` except `keep` (and the folders leading to it).
void remove_all_except(const fs::path& dir, const fs::path& keep) {
  if (!fs::exists(dir)) return;
  const fs::path k = fs::absolute(keep).lexically_normal();
  for (const auto& entry : fs::directory_iterator(dir)) {
    const fs::path p = fs::absolute(entry.path()).lexically_normal();
    if (p == k) continue;
    const std::string rel = k.lexically_relative(p).string();
    if (entry.is_directory() && !rel.empty() && rel != "." && rel.rfind("..", 0) != 0) remove_all_except(p, k);
    else remove_tree(p);
  }
}

std::vector<nlohmann::json> read_metrics(const fs::path& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    try {
      out.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception&) {
      // A line cut short by an interrupted write is skipped.
    }
  }
  return out;
}

// The comparison's outputs: a table on stdout and in summary.md, summary.json, and bpb-vs-FLOPs curves.
void write_comparison(const fs::path& dir, const std::vector<nlohmann::json>& arms) {
  fs::create_directories(dir);
  std::string table =
      "| variant | adapter | vocab | parameters | steps | tokens | train FLOPs | FLOPs/byte | bytes/token | val bpb "
      "| val ppl/token | best val bpb (at FLOPs) | bytes/patch |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  PlotSpec plot;
  plot.title = "validation bits per byte vs training FLOPs";
  plot.x_label = "training FLOPs";
  plot.y_label = "bits per byte";
  plot.log_x = true;
  for (const auto& a : arms) {
    const std::string label = a.value("variant", a.at("name").get<std::string>());
    PlotSeries val, train;
    val.name = label + " (validation)";
    val.style = "line+points";
    train.name = label + " (training, smoothed)";
    train.style = "dashed";
    const double train_scale = a.at("train_targets_per_byte").get<double>() / std::log(2.0);
    double ema = -1;
    for (const auto& m : read_metrics(fs::path(a.at("run_dir").get<std::string>()) / "metrics.jsonl")) {
      if (!m.contains("train_flops") || m.at("train_flops").get<double>() <= 0) continue;
      if (m.contains("val_bpb")) {
        val.x.push_back(m.at("train_flops").get<double>());
        val.y.push_back(m.at("val_bpb").get<double>());
      } else if (m.contains("loss") && m.at("loss").is_number()) {
        const double bpb = m.at("loss").get<double>() * train_scale;
        ema = ema < 0 ? bpb : 0.7 * ema + 0.3 * bpb;
        train.x.push_back(m.at("train_flops").get<double>());
        train.y.push_back(ema);
      }
    }
    // The best evaluation on the way: with a small corpus and many epochs the last one may be past
    // the point where the model starts to memorise.
    double best = a.at("eval").at("bits_per_byte").get<double>(), best_flops = a.at("train_flops").get<double>();
    for (size_t i = 0; i < val.y.size(); ++i)
      if (val.y[i] < best) {
        best = val.y[i];
        best_flops = val.x[i];
      }
    char row[600];
    const double patch = a.at("eval").value("bytes_per_patch", 0.0);
    const std::string patch_cell = patch > 0 ? str(std::round(patch * 100) / 100) : std::string("-");
    std::snprintf(row, sizeof row, "| %s | %s | %ld | %s | %ld | %s | %.3g | %.3g | %.2f | %.4f | %.3f | %.4f (%.2g) | %s |\n",
                  label.c_str(), a.at("adapter").get<std::string>().c_str(), (long)a.at("vocab_size").get<int64_t>(),
                  format_count(a.at("parameters").get<double>()).c_str(), (long)a.at("steps").get<int64_t>(),
                  format_count(a.at("tokens").get<double>()).c_str(), a.at("train_flops").get<double>(),
                  a.value("train_flops_per_byte", 0.0), a.at("train_bytes_per_token").get<double>(), a.at("eval").at("bits_per_byte").get<double>(),
                  a.at("eval").at("perplexity").get<double>(), best, best_flops, patch_cell.c_str());
    table += row;
    // Same colour for a variant's two curves.
    val.auto_color = train.auto_color = false;
    val.color = train.color = plot_color(plot.series.size() / 2);
    plot.series.push_back(val);
    plot.series.push_back(train);
  }
  // Loss by position in the context (does a model use what lies further back?), when every arm has it
  // over the same buckets.
  std::string position_table;
  PlotSpec position_plot;
  position_plot.title = "val bits per byte by position in context";
  position_plot.x_label = "position in the context (bucket centre)";
  position_plot.y_label = "bits per byte";
  position_plot.log_x = true;
  const auto buckets_of = [](const nlohmann::json& a) {
    return a.at("eval").value("by_position", nlohmann::json::array());
  };
  bool same_buckets = !arms.empty() && !buckets_of(arms[0]).empty();
  for (const auto& a : arms) {
    const nlohmann::json b = buckets_of(a);
    same_buckets = same_buckets && b.size() == buckets_of(arms[0]).size();
    for (size_t i = 0; same_buckets && i < b.size(); ++i)
      same_buckets = b[i].at("begin") == buckets_of(arms[0])[i].at("begin") &&
                     b[i].at("end") == buckets_of(arms[0])[i].at("end");
  }
  if (same_buckets && arms.size() > 1) {
    position_table = "| variant |";
    std::string rule = "|---|";
    for (const auto& b : buckets_of(arms[0])) {
      position_table += " [" + std::to_string(b.at("begin").get<int64_t>()) + ", " +
                        std::to_string(b.at("end").get<int64_t>()) + ") |";
      rule += "---|";
    }
    position_table += "\n" + rule + "\n";
    for (const auto& a : arms) {
      PlotSeries series;
      series.name = a.value("variant", a.at("name").get<std::string>());
      series.style = "line+points";
      position_table += "| " + series.name + " |";
      for (const auto& b : buckets_of(a)) {
        char cell[32];
        std::snprintf(cell, sizeof cell, " %.4f |", b.at("bits_per_byte").get<double>());
        position_table += cell;
        series.x.push_back(0.5 * (b.at("begin").get<double>() + b.at("end").get<double>()));
        series.y.push_back(b.at("bits_per_byte").get<double>());
      }
      position_table += "\n";
      position_plot.series.push_back(series);
    }
    table += "\nValidation bits per byte by position in the context:\n\n" + position_table;
  }
  std::printf("\n%s\n", table.c_str());
  for (const auto& a : arms)
    std::printf("--- %s ---\n%s\n", a.value("variant", a.at("name").get<std::string>()).c_str(),
                a.at("sample").get<std::string>().c_str());
  write_text(dir / "summary.md", table);
  write_text(dir / "summary.json", json_text(arms));
  write_plot_png(dir / "bpb_vs_flops.png", plot);
  if (!position_table.empty()) write_plot_png(dir / "bpb_by_position.png", position_plot);
  std::printf("\n== summary in %s: summary.md, summary.json, bpb_vs_flops.png%s\n", dir.string().c_str(),
              position_table.empty() ? "" : ", bpb_by_position.png");
}

}  // namespace

int run_command(const Args& args) {
  cxxopts::Options o("tessera run",
                     "Run every stage of a recipe: prepare, train, evaluate, generate. A stage whose outputs exist "
                     "is skipped; an interrupted training resumes. A recipe with variants runs each, then writes "
                     "a comparison table and plot.\n");
  add_recipe_options(o);
  o.add_options()("force", "delete the run directory and start over (the prepared dataset is kept)")(
      "variant", "run only this variant of a comparison recipe", cxxopts::value<std::string>());
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  if (const auto code = run_task_recipe(r, o)) return *code;
  const LoadedRecipe base = recipe_from(r, o);
  const std::vector<std::string> names = selected_variants(base, r);
  auto reset = [&](const LoadedRecipe& recipe) {
    // --force starts the run over but keeps a prepared dataset stored inside the run directory.
    if (r.count("force")) remove_all_except(recipe.run_dir, dataset_dir(recipe));
  };
  bool interrupted = false;
  if (names.empty()) {
    reset(base);
    run_stages(base, interrupted);
    return 0;
  }
  std::vector<nlohmann::json> arms;
  for (const auto& name : names) {
    const LoadedRecipe recipe = load_recipe(base.file, recipe_overrides(r), name);
    reset(recipe);
    arms.push_back(run_stages(recipe, interrupted));
    if (interrupted) return 0;
    arms.back()["variant"] = name;
  }
  write_comparison(base.run_dir, arms);
  return 0;
}

int eval_command(const Args& args) {
  cxxopts::Options o("tessera eval",
                     "Evaluate a checkpoint on its dataset's validation split: loss, per-token perplexity and "
                     "bits per byte (summed NLL / (ln 2 x UTF-8 bytes), comparable across byte and BPE models).\n"
                     "usage: tessera eval [bpb|ppl] PATH [options]\n");
  o.add_options()("path", "checkpoint dir, run dir or checkpoints/ dir", cxxopts::value<std::string>())(
      "batches", "validation batches (default: the recipe's eval.batches; 0 = whole split, exact bpb)",
      cxxopts::value<int64_t>()->default_value("-1"))(
      "device", "auto, cpu or cuda (default: the recipe's train.device)", cxxopts::value<std::string>())(
      "json", "also write the result to this file", cxxopts::value<std::string>())("h,help", "show this help");
  o.parse_positional({"path"});
  o.positional_help("[bpb|ppl] PATH");
  // `bpb` and `ppl` name the metric to headline; both are always computed.
  Args rest = args;
  std::string metric = "all";
  if (!rest.empty() && (rest[0] == "bpb" || rest[0] == "ppl" || rest[0] == "perplexity")) {
    metric = rest[0];
    rest.erase(rest.begin());
  }
  cxxopts::ParseResult r;
  if (!parse(o, rest, r)) return 0;
  const nlohmann::json ev = eval_stage(positional(r, "path", o), r["batches"].as<int64_t>(),
                                       r.count("device") ? r["device"].as<std::string>() : "");
  std::printf("checkpoint %s (step %ld), dataset %s\n", ev.at("checkpoint").get<std::string>().c_str(),
              (long)ev.at("step").get<int64_t>(), ev.at("dataset").get<std::string>().c_str());
  if (metric == "bpb") std::printf("bits per byte %.4f\n", ev.at("bits_per_byte").get<double>());
  else if (metric != "all") std::printf("perplexity %.3f\n", ev.at("perplexity").get<double>());
  print_eval(ev);
  if (r.count("json")) write_text(r["json"].as<std::string>(), json_text(ev));
  return 0;
}

int prepare_command(const Args& args) {
  cxxopts::Options o("tessera prepare",
                     "Prepare a recipe's dataset: read data.prepare.corpus, encode it with the adapter (bytes or "
                     "SentencePiece BPE, trained here when no model is given) into memory-mapped shards plus "
                     "index.json in data.dataset. Re-running with the same inputs and settings does nothing.\n");
  add_recipe_options(o);
  o.add_options()("force", "rebuild even if the dataset exists (also when it was made from other inputs)")(
      "variant", "prepare only this variant's dataset (default: all variants)", cxxopts::value<std::string>());
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  const LoadedRecipe base = recipe_from(r, o);
  const std::vector<std::string> names = selected_variants(base, r);
  if (names.empty()) {
    prepare_recipe_data(base, r.count("force") > 0);
    return 0;
  }
  for (const auto& name : names) prepare_recipe_data(load_recipe(base.file, recipe_overrides(r), name), r.count("force") > 0);
  return 0;
}

namespace {

// What the patch subcommands share: the recipe (or one variant), its BLT patcher settings, and the
// entropy model (--entropy-model, else the recipe's model.entropy_model).
struct PatchContext {
  LoadedRecipe recipe;
  blt::PatcherConfig patcher;
  std::string entropy_path;
};

PatchContext patch_context(const cxxopts::ParseResult& r, const cxxopts::Options& o, const char* verb) {
  PatchContext p{r.count("variant") ? load_recipe(positional(r, "recipe", o), recipe_overrides(r), r["variant"].as<std::string>())
                                    : recipe_from(r, o),
                 {}, {}};
  const RecipeConfig& c = p.recipe.config;
  p.patcher.mode = "entropy";
  if (c.model && c.model["arch"] && c.model["arch"].Scalar() == "blt") {
    const BLTConfig blt_config = config::parse<BLTConfig>(c.model, "model", p.recipe.file);
    p.patcher = blt_config.patcher;
    p.patcher.mode = "entropy";
    p.entropy_path = blt_config.entropy_model;
  }
  if (r.count("entropy-model")) p.entropy_path = r["entropy-model"].as<std::string>();
  check(!p.entropy_path.empty(), "patch ", verb, ": no entropy model; pass --entropy-model RUN_DIR (train one with "
        "tessera run recipes/blt/entropy_model.yaml) or set model.entropy_model in the recipe");
  prepare_recipe_data(p.recipe, false, true);
  return p;
}

void add_patch_options(cxxopts::Options& o) {
  add_recipe_options(o);
  o.add_options()("entropy-model", "entropy model run dir or checkpoint (default: the recipe's model.entropy_model)",
                  cxxopts::value<std::string>())("variant", "take the model and data of this variant",
                                                 cxxopts::value<std::string>())(
      "json", "write the result as JSON here", cxxopts::value<std::string>());
}

int patch_entropies_command(const Args& args) {
  cxxopts::Options o("tessera patch entropies",
                     "Run the entropy model once over the recipe's dataset and store every token's next-byte "
                     "entropy beside the shards (float16), so that training and evaluation of entropy-patched "
                     "BLT read them instead of running the entropy model in every step. Documents are cut into "
                     "chunks, each preceded by --context earlier tokens (exact when the entropy model's "
                     "receptive field, layers x sliding window, fits in it).\n");
  add_patch_options(o);
  o.add_options()("chunk", "tokens per row whose entropies are kept (default: max_seq_len - context)",
                  cxxopts::value<int64_t>())(
      "context", "earlier tokens before each chunk (default: the model's sliding window, else max_seq_len / 4)",
      cxxopts::value<int64_t>())("batch", "rows per forward", cxxopts::value<int64_t>()->default_value("8"))(
      "device", "auto, cpu or cuda (default: the entropy model's train.device)", cxxopts::value<std::string>());
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  const PatchContext p = patch_context(r, o, "entropies");
  const fs::path dir = dataset_dir(p.recipe);
  const DatasetIndex index = DatasetIndex::load(dir);
  LoadedCheckpoint entropy = load_trained(p.entropy_path);
  require_same_layout(index.layout, entropy.layout, "entropy model " + p.entropy_path);
  const c10::Device device = select_device(r.count("device") ? r["device"].as<std::string>() : entropy.recipe.train.device);
  const bool bf16 = use_bf16(entropy.recipe.train.precision, device);
  entropy.model->to(device);
  entropy.model->eval();
  const YAML::Node mc = entropy.model->config_yaml();
  const int64_t max_len = entropy.model->max_seq_len();
  const int64_t window = mc["sliding_window"] ? mc["sliding_window"].as<int64_t>() : 0;
  EntropyPassOptions options;
  options.context = r.count("context") ? r["context"].as<int64_t>() : (window > 0 ? std::min(window, max_len / 2) : max_len / 4);
  options.chunk = r.count("chunk") ? r["chunk"].as<int64_t>() : max_len - options.context;
  options.batch_size = r["batch"].as<int64_t>();
  options.pad_id = index.layout.has_special("<pad>") ? index.layout.special_id("<pad>") : 0;
  check(options.chunk > 0 && options.chunk + options.context <= max_len, "patch entropies: chunk (", options.chunk,
        ") + context (", options.context, ") must fit the entropy model's max_seq_len ", max_len);
  LanguageModel& model = *entropy.model;
  const EntropyFn entropies_of = [&](const at::Tensor& tokens, const at::Tensor& doc_ids) {
    at::NoGradGuard no_grad;
    AutocastGuard autocast(device.type(), bf16);
    Batch b;
    b.tokens = tokens.to(device);
    b.doc_ids = doc_ids.to(device);
    return blt::next_byte_entropies(model.forward(b).logits);
  };
  const EntropyPassResult result =
      compute_dataset_entropies(dir, index, entropies_of, options, entropy_model_identity(entropy));
  std::printf("entropies of %ld tokens in %s (mean %.3f nats) from %s in %.1fs: chunks of %ld after %ld tokens of "
              "context, on %s\n",
              (long)result.tokens, dir.string().c_str(), result.mean_entropy, entropy.dir.string().c_str(),
              result.seconds, (long)options.chunk, (long)options.context, device_description(device).c_str());
  if (r.count("json"))
    write_text(r["json"].as<std::string>(), json_text({{"tokens", result.tokens},
                                                       {"mean_entropy", result.mean_entropy},
                                                       {"seconds", result.seconds},
                                                       {"chunk", options.chunk},
                                                       {"context", options.context},
                                                       {"entropy_model", entropy.dir.string()}}));
  return 0;
}

}  // namespace

int patch_command(const Args& args) {
  const std::string usage =
      "usage: tessera patch calibrate RECIPE.yaml [key=value ...] --target BYTES [--entropy-model RUN] "
      "[--variant V] [--rows N] [--json F]\n       tessera patch entropies RECIPE.yaml [key=value ...] "
      "[--entropy-model RUN] [--variant V] [--chunk N] [--context N] [--batch N] [--device D]";
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::printf("%s\n  calibrate  the entropy threshold that gives a target mean patch size (BLT, entropy "
                "patching) on the recipe's validation rows\n  entropies  precompute every token's next-byte "
                "entropy beside the dataset's shards\n",
                usage.c_str());
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "entropies") return patch_entropies_command(Args(args.begin() + 1, args.end()));
  if (args[0] != "calibrate") throw UsageError(str("unknown patch command '", args[0], "'; ", usage));
  cxxopts::Options o("tessera patch calibrate",
                     "Find the global entropy threshold that gives a target mean patch size: next-byte "
                     "entropies from the entropy model over the recipe's validation rows, then the patcher's "
                     "rule (the recipe's model.patcher when it is a BLT, else entropy/global). Prints the "
                     "threshold to set as model.patcher.threshold.\n");
  add_patch_options(o);
  o.add_options()("target", "mean patch size in bytes to aim for (BLT used 4.5)", cxxopts::value<double>())(
      "rows", "validation rows to use (0: all)", cxxopts::value<int64_t>()->default_value("64"));
  cxxopts::ParseResult r;
  if (!parse(o, Args(args.begin() + 1, args.end()), r)) return 0;
  if (!r.count("target")) throw UsageError("patch calibrate needs --target (mean bytes per patch, e.g. 4.5)");
  const PatchContext p = patch_context(r, o, "calibrate");
  const LoadedRecipe& recipe = p.recipe;
  const RecipeConfig& c = recipe.config;
  const blt::PatcherConfig& patcher = p.patcher;
  const std::string& entropy_path = p.entropy_path;
  DataConfig data_config = c.data;
  data_config.prefetch = 0;
  DataBundle data = make_data(data_config, dataset_dir(recipe), static_cast<uint64_t>(c.seed));
  check(data.val != nullptr, "patch calibrate: dataset ", dataset_dir(recipe).string(), " has no validation rows");
  LoadedCheckpoint entropy = load_trained(entropy_path);
  require_same_layout(data.layout, entropy.layout, "entropy model " + entropy_path);
  const c10::Device device = select_device(entropy.recipe.train.device);
  const bool bf16 = use_bf16(entropy.recipe.train.precision, device);
  entropy.model->to(device);
  entropy.model->eval();
  const int64_t want = r["rows"].as<int64_t>();
  std::vector<at::Tensor> rows;
  {
    at::NoGradGuard no_grad;
    data.val->reset();
    for (int64_t b = 0; b < data.val->batches_per_epoch() && (want <= 0 || static_cast<int64_t>(rows.size()) < want); ++b) {
      const Batch batch = data.val->next().to(device);
      AutocastGuard autocast(device.type(), bf16);
      const at::Tensor H = blt::next_byte_entropies(entropy.model->forward(batch).logits).cpu();  // [B, T] nats
      // The split's last row is padded at its end (masked targets there); every other row is whole.
      const at::Tensor full = batch.loss_mask.defined() ? batch.loss_mask.select(1, -1).cpu().to(at::kFloat)
                                                        : at::ones({H.size(0)});
      for (int64_t i = 0; i < H.size(0) && (want <= 0 || static_cast<int64_t>(rows.size()) < want); ++i)
        if (full[i].item<float>() > 0) rows.push_back(H[i].contiguous());
    }
  }
  check(!rows.empty(), "patch calibrate: no complete validation row of ", c.data.seq_len, " tokens; lower data.seq_len");
  const blt::ThresholdCalibration cal = blt::calibrate_threshold(patcher, rows, r["target"].as<double>());
  std::printf("entropy model %s, %zu rows x %ld bytes, rule %s%s\n", entropy.dir.string().c_str(), rows.size(),
              (long)c.data.seq_len, patcher.rule.c_str(),
              patcher.max_patch_length > 0 ? str(", max patch length ", patcher.max_patch_length).c_str() : "");
  std::printf("threshold %.6f nats -> mean patch size %.3f bytes (%ld patches over %ld bytes; reachable %.2f-%.2f)\n",
              cal.threshold, cal.mean_patch_size, (long)cal.patches, (long)cal.bytes, cal.min_mean_patch_size,
              cal.max_mean_patch_size);
  std::printf("set it with: model.patcher.threshold=%.6f\n", cal.threshold);
  if (r.count("json"))
    write_text(r["json"].as<std::string>(),
               json_text({{"threshold", cal.threshold},
                          {"mean_patch_size", cal.mean_patch_size},
                          {"target", r["target"].as<double>()},
                          {"patches", cal.patches},
                          {"bytes", cal.bytes},
                          {"rows", rows.size()},
                          {"rule", patcher.rule},
                          {"entropy_model", entropy.dir.string()}}));
  return 0;
}

int generate_command(const Args& args) {
  // Image token files <-> PNGs through a trained VQ tokenizer (task_image.h).
  if (!args.empty() && args[0] == "decode-image") return decode_image_command(Args(args.begin() + 1, args.end()));
  if (!args.empty() && args[0] == "encode-image") return encode_image_command(Args(args.begin() + 1, args.end()));
  // Unit ids -> WAV through a trained vocoder (task_speech.h).
  if (!args.empty() && args[0] == "decode-units") return decode_units_command(Args(args.begin() + 1, args.end()));
  cxxopts::Options o("tessera generate", "Sample from a checkpoint (KV-cached incremental decoding).\n");
  o.add_options()("path", "checkpoint dir, run dir or checkpoints/ dir", cxxopts::value<std::string>())(
      "prompt", "text to continue (default: the recipe's generate.prompt)", cxxopts::value<std::string>())(
      "max-new-tokens", "tokens per sample", cxxopts::value<int64_t>())(
      "temperature", "softmax temperature (0: greedy)", cxxopts::value<double>())(
      "top-k", "top-k filter (0: off)", cxxopts::value<int64_t>())("top-p", "nucleus filter (1: off)",
                                                                   cxxopts::value<double>())(
      "seed", "sampling seed", cxxopts::value<int64_t>())("num-samples", "number of samples", cxxopts::value<int64_t>())(
      "device", "auto, cpu or cuda (default: the recipe's train.device)", cxxopts::value<std::string>())(
      "json", "also write the samples to this file", cxxopts::value<std::string>())("h,help", "show this help");
  o.parse_positional({"path"});
  o.positional_help("PATH");
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  const fs::path path = positional(r, "path", o);
  GenerateConfig g = load_trained(path).recipe.generate;
  if (r.count("prompt")) g.prompt = r["prompt"].as<std::string>();
  if (r.count("max-new-tokens")) g.max_new_tokens = r["max-new-tokens"].as<int64_t>();
  if (r.count("temperature")) g.sampling.temperature = r["temperature"].as<double>();
  if (r.count("top-k")) g.sampling.top_k = r["top-k"].as<int64_t>();
  if (r.count("top-p")) g.sampling.top_p = r["top-p"].as<double>();
  if (r.count("seed")) g.sampling.seed = r["seed"].as<int64_t>();
  if (r.count("num-samples")) g.num_samples = r["num-samples"].as<int64_t>();
  const nlohmann::json out = generate_stage(path, g, r.count("device") ? r["device"].as<std::string>() : "");
  print_samples(out);
  if (r.count("json")) write_text(r["json"].as<std::string>(), json_text(out));
  return 0;
}

int info_command(const Args& args) {
  cxxopts::Options o("tessera info",
                     "Describe a checkpoint or run directory (architecture, parameters, step, config), a recipe "
                     "file (its resolved config), or with --arch the keys an architecture accepts.\n");
  o.add_options()("path", "checkpoint dir, run dir, or recipe .yaml", cxxopts::value<std::string>())(
      "arch", "list the config keys of this architecture", cxxopts::value<std::string>())(
      "json", "print machine-readable JSON")("h,help", "show this help");
  o.parse_positional({"path"});
  o.positional_help("PATH");
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  if (r.count("arch")) {
    std::printf("architecture %s — keys of the model: section\n", r["arch"].as<std::string>().c_str());
    for (const auto& line : architecture_doc(r["arch"].as<std::string>())) std::printf("  %s\n", line.c_str());
    return 0;
  }
  if (!r.count("path")) {
    std::printf("architectures:");
    for (const auto& a : architecture_names()) std::printf(" %s", a.c_str());
    std::printf("\nrecipe keys:\n");
    for (const auto& line : config::document<RecipeConfig>()) std::printf("  %s\n", line.c_str());
    return 0;
  }
  const fs::path path = r["path"].as<std::string>();
  if (fs::is_regular_file(path) && (path.extension() == ".yaml" || path.extension() == ".yml")) {
    const LoadedRecipe recipe = load_recipe(path.string(), {});
    const PrepareResult data = prepare_recipe_data(recipe, false, true);
    const auto model = make_model(recipe.config, recipe.file, data.index.layout);
    std::printf("recipe %s: arch %s, %s parameters, run dir %s\n", recipe.file.c_str(), model->arch().c_str(),
                format_count(static_cast<double>(model->parameter_count())).c_str(), recipe.run_dir.string().c_str());
    std::printf("%s", config::dump_yaml(resolved_yaml(recipe.config, *model)).c_str());
    return 0;
  }
  const LoadedCheckpoint ckpt = load_trained(path);
  const nlohmann::json& s = ckpt.state;
  nlohmann::json summary = {{"checkpoint", ckpt.dir.string()},
                            {"arch", s.at("arch")},
                            {"parameters", ckpt.model->parameter_count()},
                            {"step", s.at("step")},
                            {"tokens_seen", s.value("tokens_seen", int64_t{0})},
                            {"vocab_layout", s.at("vocab_layout")},
                            {"model_config", s.at("model_config")},
                            {"train_flops_per_token", ckpt.model->flops(ckpt.recipe.data.seq_len).train_per_token}};
  if (s.contains("loss")) summary["loss"] = s.at("loss");
  if (s.contains("val_loss")) summary["val_loss"] = s.at("val_loss");
  if (r.count("json")) {
    std::printf("%s\n", summary.dump(2).c_str());
    return 0;
  }
  std::printf("checkpoint   %s\narchitecture %s\nparameters   %s (%ld)\nstep         %ld\ntokens seen  %s\n",
              ckpt.dir.string().c_str(), s.at("arch").get<std::string>().c_str(),
              format_count(static_cast<double>(ckpt.model->parameter_count())).c_str(),
              (long)ckpt.model->parameter_count(), (long)s.at("step").get<int64_t>(),
              format_count(static_cast<double>(s.value("tokens_seen", int64_t{0}))).c_str());
  std::printf("train FLOPs  %s per token at seq_len %ld\nvocabulary   %s\n",
              format_count(summary["train_flops_per_token"].get<double>()).c_str(), (long)ckpt.recipe.data.seq_len,
              ckpt.layout.describe().c_str());
  if (s.contains("loss")) std::printf("train loss   %.4f\n", s.at("loss").get<double>());
  if (s.contains("val_loss")) std::printf("val loss     %.4f\n", s.at("val_loss").get<double>());
  std::printf("config:\n%s", config::dump_yaml(config::json_to_yaml(s.at("recipe"))).c_str());
  return 0;
}

int bench_data_command(const Args& args) {
  cxxopts::Options o("tessera bench data",
                     "Loader throughput: memory-mapped shards -> packed, shuffled rows -> batches, with the "
                     "prefetch worker. Without --dataset, a synthetic dataset is written to a temporary folder.\n");
  DataBenchOptions b;
  o.add_options()("dataset", "a prepared dataset folder (default: synthetic)", cxxopts::value<std::string>())(
      "split", "split to read", cxxopts::value<std::string>()->default_value(b.split))(
      "batch", "rows per batch", cxxopts::value<int64_t>()->default_value(std::to_string(b.batch_size)))(
      "seq", "tokens per row", cxxopts::value<int64_t>()->default_value(std::to_string(b.seq_len)))(
      "prefetch", "batches prepared ahead (0: none)", cxxopts::value<int>()->default_value(std::to_string(b.prefetch)))(
      "seconds", "time this long", cxxopts::value<double>()->default_value("5"))(
      "batches", "time exactly this many batches instead", cxxopts::value<int64_t>()->default_value("0"))(
      "verify", "CRC-32 every shard when opening (timed apart)")(
      "synthetic-mtokens", "size of the synthetic dataset in millions of tokens",
      cxxopts::value<double>()->default_value("20"))("json", "write the result as JSON here",
                                                     cxxopts::value<std::string>())("h,help", "show this help");
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  if (r.count("dataset")) b.dataset = r["dataset"].as<std::string>();
  b.split = r["split"].as<std::string>();
  b.batch_size = r["batch"].as<int64_t>();
  b.seq_len = r["seq"].as<int64_t>();
  b.prefetch = r["prefetch"].as<int>();
  b.seconds = r["seconds"].as<double>();
  b.batches = r["batches"].as<int64_t>();
  b.verify = r.count("verify") > 0;
  b.synthetic_mtokens = r["synthetic-mtokens"].as<double>();
  const DataBenchResult result = bench_data(b);
  std::printf("%s", result.summary.c_str());
  if (r.count("json")) write_text(r["json"].as<std::string>(), json_text(result.json));
  return 0;
}

namespace {

std::vector<int64_t> parse_int_list(const std::string& text, const char* option) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      size_t used = 0;
      out.push_back(std::stoll(item, &used));
      check(used == item.size(), "");
    } catch (const std::exception&) {
      throw UsageError(str("--", option, " takes comma-separated integers, got '", text, "'"));
    }
  }
  return out;
}

int bench_generate_command(const Args& args) {
  cxxopts::Options o("tessera bench generate",
                     "Decoding after long contexts: prefill each context length in pieces, then decode tokens one "
                     "at a time; reports prefill time, ms/token, the decoding state's memory and the peak.\n");
  GenerateBenchOptions b;
  o.add_options()("model", "model section as YAML or a recipe/YAML file (required)", cxxopts::value<std::string>())(
      "vocab", "vocabulary (when the model leaves it 0)", cxxopts::value<int64_t>()->default_value(std::to_string(b.vocab_size)))(
      "context", "comma-separated context lengths", cxxopts::value<std::string>()->default_value("4096,65536"))(
      "prefill-chunk", "tokens per prefill call", cxxopts::value<int64_t>()->default_value(std::to_string(b.prefill_chunk)))(
      "decode", "tokens decoded one at a time", cxxopts::value<int64_t>()->default_value(std::to_string(b.decode_tokens)))(
      "batch", "sequences decoded together", cxxopts::value<int64_t>()->default_value("1"))(
      "profile", "after the last context, profile this many decode steps (GPU time per kernel)",
      cxxopts::value<int64_t>()->default_value("0"))(
      "compare", "instead of the context sweep: greedy-generate this many tokens cached (step) and uncached "
      "(full forward per token) and compare", cxxopts::value<int64_t>()->default_value("0"))(
      "prompt-tokens", "with --compare: prompt length", cxxopts::value<int64_t>()->default_value("64"))(
      "uncached-samples", "with --compare: time the uncached forward at this many evenly spaced lengths and "
      "interpolate (0: generate every token uncached)", cxxopts::value<int64_t>()->default_value("0"))(
      "data", "with --compare: prompts from this prepared dataset's validation rows", cxxopts::value<std::string>())(
      "checkpoint", "a trained model (checkpoint, run or checkpoints dir) instead of --model",
      cxxopts::value<std::string>())(
      "precision", "auto, fp32 or bf16", cxxopts::value<std::string>()->default_value("auto"))(
      "device", "auto, cpu or cuda", cxxopts::value<std::string>()->default_value("auto"))(
      "json", "write the result as JSON here", cxxopts::value<std::string>())("h,help", "show this help");
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  if (r.count("model") == r.count("checkpoint"))
    throw UsageError("bench generate needs --model (e.g. --model \"{arch: megalodon}\") or --checkpoint RUN, not both");
  if (r.count("model")) b.model = r["model"].as<std::string>();
  if (r.count("checkpoint")) {
    const std::string path = r["checkpoint"].as<std::string>();
    b.load_model = [path] { return load_trained(path).model; };
  }
  b.prepare_model = attach_entropy_model;
  b.compare_tokens = r["compare"].as<int64_t>();
  b.prompt_tokens = r["prompt-tokens"].as<int64_t>();
  b.uncached_samples = r["uncached-samples"].as<int64_t>();
  if (r.count("data")) b.data = r["data"].as<std::string>();
  b.vocab_size = r["vocab"].as<int64_t>();
  b.context_lengths = parse_int_list(r["context"].as<std::string>(), "context");
  b.prefill_chunk = r["prefill-chunk"].as<int64_t>();
  b.decode_tokens = r["decode"].as<int64_t>();
  b.batch_size = r["batch"].as<int64_t>();
  b.profile_tokens = r["profile"].as<int64_t>();
  b.precision = r["precision"].as<std::string>();
  b.device = r["device"].as<std::string>();
  const GenerateBenchResult result = bench_generate(b);
  std::printf("%s", result.summary.c_str());
  if (r.count("json")) write_text(r["json"].as<std::string>(), json_text(result.json));
  return 0;
}

int bench_cema_command(const Args& args) {
  cxxopts::Options o("tessera bench cema",
                     "Megalodon's complex EMA three ways: FFT convolution, chunked scan (Toeplitz GEMMs), sequential "
                     "recurrence; forward and forward+backward time and peak memory per length.\n");
  CemaBenchOptions b;
  o.add_options()("dim", "model width D", cxxopts::value<int64_t>()->default_value(std::to_string(b.dim)))(
      "ndim", "EMA channels N per dimension", cxxopts::value<int64_t>()->default_value(std::to_string(b.ndim)))(
      "batch", "batch size", cxxopts::value<int64_t>()->default_value(std::to_string(b.batch_size)))(
      "seq", "comma-separated lengths", cxxopts::value<std::string>()->default_value("4096,32768"))(
      "modes", "comma-separated: fft, scan, sequential", cxxopts::value<std::string>()->default_value("fft,scan"))(
      "scan-chunk", "segment length of the chunked scan", cxxopts::value<int64_t>()->default_value(std::to_string(b.scan_chunk)))(
      "warmup", "untimed runs", cxxopts::value<int64_t>()->default_value(std::to_string(b.warmup)))(
      "steps", "timed runs", cxxopts::value<int64_t>()->default_value(std::to_string(b.steps)))(
      "precision", "auto, fp32 or bf16 (inputs)", cxxopts::value<std::string>()->default_value("auto"))(
      "device", "auto, cpu or cuda", cxxopts::value<std::string>()->default_value("auto"))(
      "json", "write the result as JSON here", cxxopts::value<std::string>())("h,help", "show this help");
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  b.dim = r["dim"].as<int64_t>();
  b.ndim = r["ndim"].as<int64_t>();
  b.batch_size = r["batch"].as<int64_t>();
  b.seq_lens = parse_int_list(r["seq"].as<std::string>(), "seq");
  b.modes.clear();
  std::stringstream modes(r["modes"].as<std::string>());
  for (std::string m; std::getline(modes, m, ',');) b.modes.push_back(m);
  b.scan_chunk = r["scan-chunk"].as<int64_t>();
  b.warmup = r["warmup"].as<int64_t>();
  b.steps = r["steps"].as<int64_t>();
  b.precision = r["precision"].as<std::string>();
  b.device = r["device"].as<std::string>();
  const CemaBenchResult result = bench_cema(b);
  std::printf("%s", result.summary.c_str());
  if (r.count("json")) write_text(r["json"].as<std::string>(), json_text(result.json));
  return 0;
}

}  // namespace

int bench_command(const Args& args) {
  const std::string usage = "usage: tessera bench {train|data|generate|cema} [options]   (tessera bench train --help)";
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::printf("%s\n  train   time the training step of a dense model (step ms, tokens/s, TFLOP/s, peak memory)\n"
                "  data    loader throughput over a prepared dataset (rows/s, tokens/s, MB/s)\n"
                "  generate  decoding state memory and speed after long contexts, any architecture\n"
                "  cema    Megalodon's complex EMA: FFT vs chunked scan vs recurrence\n",
                usage.c_str());
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "data") return bench_data_command(Args(args.begin() + 1, args.end()));
  if (args[0] == "generate") return bench_generate_command(Args(args.begin() + 1, args.end()));
  if (args[0] == "cema") return bench_cema_command(Args(args.begin() + 1, args.end()));
  if (args[0] != "train") throw UsageError(str("unknown benchmark '", args[0], "'; ", usage));
  cxxopts::Options o("tessera bench train",
                     "Time the training step (forward, backward, clip, fused AdamW) on random tokens. Defaults: "
                     "the 220M dense reference config; --model times any architecture.\n");
  TrainBenchOptions b;
  o.add_options()("model", "a model section as YAML (\"{arch: megalodon, dim: 1024, ...}\") or a recipe/YAML file; "
                  "replaces --dim/--layers/--heads/--kv-heads/--tie-embeddings", cxxopts::value<std::string>())("dim", "model width", cxxopts::value<int64_t>()->default_value(std::to_string(b.dim)))(
      "layers", "blocks", cxxopts::value<int64_t>()->default_value(std::to_string(b.n_layers)))(
      "heads", "heads", cxxopts::value<int64_t>()->default_value(std::to_string(b.n_heads)))(
      "kv-heads", "key/value heads (0: heads)", cxxopts::value<int64_t>()->default_value("0"))(
      "vocab", "vocabulary", cxxopts::value<int64_t>()->default_value(std::to_string(b.vocab_size)))(
      "batch", "batch size", cxxopts::value<int64_t>()->default_value(std::to_string(b.batch_size)))(
      "seq", "sequence length", cxxopts::value<int64_t>()->default_value(std::to_string(b.seq_len)))(
      "warmup", "untimed steps", cxxopts::value<int64_t>()->default_value(std::to_string(b.warmup)))(
      "steps", "timed steps", cxxopts::value<int64_t>()->default_value(std::to_string(b.steps)))(
      "precision", "auto, fp32 or bf16", cxxopts::value<std::string>()->default_value("auto"))(
      "device", "auto, cpu or cuda", cxxopts::value<std::string>()->default_value("auto"))(
      "tie-embeddings", "share embedding and output weights")(
      "reference", "also run the PyTorch twin (eval/bench/reference/dense.py) in these modes on the same shape and "
      "device, e.g. eager,compile (modes: eager, eager-fused, compile)", cxxopts::value<std::string>())(
      "python", "Python with PyTorch for --reference (default: $PYTHON or python3)", cxxopts::value<std::string>())(
      "reference-script", "the reference script (default: eval/bench/reference/dense.py of this source tree)",
      cxxopts::value<std::string>())(
      "cuda-graph", "CUDA only: capture the whole training step (forward, backward, clip, AdamW) as one CUDA "
      "graph after the warm-up and time its replays")(
      "profile", "after timing, profile this many steps: GPU time per kernel (CPU: per operator)",
      cxxopts::value<int64_t>()->default_value("0"))(
      "stages", "after timing, split this many steps by the model's stages (BLT: patching, encoder, global, "
      "decoder)", cxxopts::value<int64_t>()->default_value("0"))(
      "data", "train on rows of this prepared dataset instead of random ids (its vocabulary sizes the model)",
      cxxopts::value<std::string>())("trace", "with --profile, save the Kineto trace (JSON) here",
                                                     cxxopts::value<std::string>())("json", "write the result as JSON here",
                                                              cxxopts::value<std::string>())(
      "h,help", "show this help");
  cxxopts::ParseResult r;
  if (!parse(o, Args(args.begin() + 1, args.end()), r)) return 0;
  if (r.count("model")) {
    for (const char* dense_only : {"dim", "layers", "heads", "kv-heads", "tie-embeddings"})
      if (r.count(dense_only))
        throw UsageError(str("--", dense_only, " sets the default dense model; with --model put it in the model YAML"));
    b.model = r["model"].as<std::string>();
  }
  b.dim = r["dim"].as<int64_t>();
  b.n_layers = r["layers"].as<int64_t>();
  b.n_heads = r["heads"].as<int64_t>();
  b.n_kv_heads = r["kv-heads"].as<int64_t>();
  b.vocab_size = r["vocab"].as<int64_t>();
  b.batch_size = r["batch"].as<int64_t>();
  b.seq_len = r["seq"].as<int64_t>();
  b.warmup = r["warmup"].as<int64_t>();
  b.steps = r["steps"].as<int64_t>();
  b.precision = r["precision"].as<std::string>();
  b.device = r["device"].as<std::string>();
  b.tie_embeddings = r.count("tie-embeddings") > 0;
  if (r.count("reference")) {
    std::stringstream modes(r["reference"].as<std::string>());
    for (std::string m; std::getline(modes, m, ',');)
      if (!m.empty()) b.reference_modes.push_back(m);
    if (r.count("model") || r.count("data"))
      throw UsageError("--reference times the PyTorch twin of the default dense model; drop --model/--data");
  }
  const char* python_env = std::getenv("PYTHON");
  b.python = r.count("python") ? r["python"].as<std::string>() : (python_env && *python_env ? python_env : "python3");
  b.reference_script = r.count("reference-script") ? r["reference-script"].as<std::string>()
                                                   : std::string(TESSERA_SOURCE_DIR) + "/eval/bench/reference/dense.py";
  b.cuda_graph = r.count("cuda-graph") > 0;
  b.profile_steps = r["profile"].as<int64_t>();
  if (r.count("trace")) b.trace = r["trace"].as<std::string>();
  b.stage_steps = r["stages"].as<int64_t>();
  if (r.count("data")) b.data = r["data"].as<std::string>();
  b.prepare_model = attach_entropy_model;  // a BLT model section may name its entropy model
  const TrainBenchResult result = bench_train(b);
  std::printf("%s", result.summary.c_str());
  if (r.count("json")) write_text(r["json"].as<std::string>(), json_text(result.json));
  return 0;
}

int main_dispatch(const Args& argv) {
  auto print_help = [] {
    std::printf("tessera — train, evaluate and sample mixed-modal generative models\n\nusage: tessera VERB [options]\n\n");
    for (const auto& v : verbs()) std::printf("  %-9s %s\n", v.name, v.summary);
    if (!task_recipes().empty()) {
      std::printf("\nRecipes with a top-level `task:` train artifacts (tessera run RECIPE.yaml):\n");
      for (const auto& t : task_recipes()) std::printf("  %-14s %s\n", t.task, t.summary);
    }
    std::printf("\n`tessera VERB --help` describes a verb's options.\n");
  };
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h" || argv[0] == "help") {
    print_help();
    return argv.empty() ? 2 : 0;
  }
  const std::string& verb = argv[0];
  const Args rest(argv.begin() + 1, argv.end());
  try {
    for (const auto& v : verbs())
      if (verb == v.name) return v.fn(rest);
    std::vector<std::string> names;
    for (const auto& v : verbs()) names.emplace_back(v.name);
    const std::string hint = config::closest_match(verb, names);
    throw UsageError(str("unknown verb '", verb, "'", hint.empty() ? "" : "; did you mean '" + hint + "'?",
                         " (run `tessera --help` for the list)"));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error (LibTorch): %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

}  // namespace tessera::cli
