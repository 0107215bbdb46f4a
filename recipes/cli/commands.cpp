#include "recipes/cli/commands.h"

#include <cxxopts.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "architectures/registry.h"
#include "core/config.h"
#include "core/error.h"
#include "core/io/checkpoint.h"
#include "core/progress.h"
#include "core/sampling.h"
#include "core/train/runtime.h"
#include "core/train/trainer.h"
#include "eval/bench/train_bench.h"
#include "recipes/cli/recipe.h"

namespace tessera::cli {
namespace fs = std::filesystem;

namespace {

// Thrown for bad command lines; main_dispatch turns it into exit code 2.
struct UsageError : Error {
  using Error::Error;
};

struct Verb {
  const char* name;
  const char* summary;
  int (*fn)(const Args&);
};

const std::vector<Verb>& verbs() {
  static const std::vector<Verb> table = {
      {"run", "all stages of a recipe (train -> eval -> generate), each skipped when its outputs exist", run_command},
      {"train", "train a model from a recipe (--resume continues from the last checkpoint)", train_command},
      {"eval", "validation loss, perplexity and bits per token of a checkpoint", eval_command},
      {"generate", "sample text from a checkpoint with a KV cache", generate_command},
      {"info", "describe a checkpoint, run directory or recipe; --arch NAME lists an architecture's keys",
       info_command},
      {"bench", "benchmarks: `tessera bench train` times the training step", bench_command},
  };
  return table;
}

// Parses with cxxopts; --help prints and returns false.
bool parse(cxxopts::Options& options, const Args& args, cxxopts::ParseResult& result) {
  std::vector<std::string> storage = args;
  std::vector<char*> argv;
  std::string program = options.program();
  argv.push_back(program.data());
  for (auto& a : storage) argv.push_back(a.data());
  try {
    result = options.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const cxxopts::exceptions::exception& e) {
    std::string hint;
    for (const auto& a : args)
      if (a.rfind("--", 0) == 0 && a.find('.') != std::string::npos && a.find('=') != std::string::npos)
        hint = "; config overrides take no dashes: write " + a.substr(2);
    throw UsageError(str(e.what(), hint, " (see `", options.program(), " --help`)"));
  }
  if (result.count("help")) {
    std::cout << options.help() << std::endl;
    return false;
  }
  return true;
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

LoadedRecipe recipe_from(const cxxopts::ParseResult& r, const cxxopts::Options& o) {
  LoadedRecipe recipe = load_recipe(positional(r, "recipe", o), overrides_of(r));
  if (r.count("run-dir")) recipe.run_dir = r["run-dir"].as<std::string>();
  return recipe;
}

// ---- stages ---------------------------------------------------------------------------------------

TrainResult train_stage(const LoadedRecipe& recipe, bool resume) {
  return train(make_trainer_setup(recipe), resume);
}

nlohmann::json eval_stage(const fs::path& path, int64_t batches_override, const std::string& device_name) {
  LoadedCheckpoint ckpt = load_trained(path);
  const c10::Device device = select_device(device_name);
  const bool bf16 = use_bf16(ckpt.recipe.train.precision, device);
  ckpt.model->to(device);
  DataBundle data = make_data(ckpt.recipe.data, "", static_cast<uint64_t>(ckpt.recipe.seed));
  require_same_layout(ckpt.layout, data.layout, "data '" + ckpt.recipe.data.path + "'");
  check(data.val != nullptr, "the recipe has no validation split (data.val_fraction is 0); nothing to evaluate");
  auto objective = make_objective(ckpt.recipe.objective);
  const int64_t batches = batches_override >= 0 ? batches_override : ckpt.recipe.eval.batches;
  const EvalResult r = evaluate(*ckpt.model, *objective, *data.val, batches, device, bf16);
  return {{"checkpoint", ckpt.dir.string()}, {"step", ckpt.state.at("step")}, {"loss", r.loss},
          {"perplexity", r.perplexity}, {"bits_per_token", r.bits_per_token}, {"tokens", r.tokens}};
}

nlohmann::json generate_stage(const fs::path& path, const GenerateConfig& g, const std::string& device_name) {
  LoadedCheckpoint ckpt = load_trained(path);
  const c10::Device device = select_device(device_name);
  const bool bf16 = use_bf16(ckpt.recipe.train.precision, device);
  ckpt.model->to(device);
  std::vector<int64_t> prompt{ckpt.layout.special_id("<bos>")};
  for (int64_t id : encode_bytes(g.prompt, ckpt.layout)) prompt.push_back(id);
  const int64_t room = ckpt.model->max_seq_len() - static_cast<int64_t>(prompt.size());
  check(room > 0, "prompt of ", prompt.size(), " tokens leaves no room in max_seq_len ", ckpt.model->max_seq_len());
  const int64_t max_new = std::min(g.max_new_tokens, room);
  nlohmann::json samples = nlohmann::json::array();
  for (int64_t i = 0; i < g.num_samples; ++i) {
    SamplingConfig s = g.sampling;
    s.seed = g.sampling.seed + i;
    const auto ids = generate(*ckpt.model, prompt, max_new, s, device, bf16, ckpt.layout.special_id("<eos>"));
    samples.push_back(g.prompt + decode_bytes(ids, ckpt.layout));
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
  const LoadedRecipe recipe = recipe_from(r, o);
  // An interrupted run (SIGINT/SIGTERM) has written its checkpoint: that is a clean exit.
  train_stage(recipe, r.count("resume") > 0);
  return 0;
}

int run_command(const Args& args) {
  cxxopts::Options o("tessera run",
                     "Run every stage of a recipe: train, evaluate, generate. A stage whose outputs exist is "
                     "skipped; an interrupted training resumes.\n");
  add_recipe_options(o);
  o.add_options()("force", "delete the run directory and start over");
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  const LoadedRecipe recipe = recipe_from(r, o);
  const RecipeConfig& c = recipe.config;
  if (r.count("force") && fs::exists(recipe.run_dir)) fs::remove_all(recipe.run_dir);

  std::printf("== recipe %s -> %s\n", c.name.c_str(), recipe.run_dir.string().c_str());
  // Stage 1: train (or resume, or skip when the final checkpoint exists).
  std::optional<fs::path> latest;
  if (fs::exists(recipe.run_dir / "checkpoints")) latest = io::CheckpointManager(recipe.run_dir / "checkpoints", 0).latest();
  int64_t done_steps = 0;
  if (latest) done_steps = io::load_checkpoint(*latest).state.at("step").get<int64_t>();
  if (latest && done_steps >= c.train.steps) {
    std::printf("== train: done (checkpoint %s at step %ld)\n", latest->string().c_str(), (long)done_steps);
  } else {
    std::printf("== train%s\n", latest ? " (resuming)" : "");
    const TrainResult result = train_stage(recipe, latest.has_value());
    if (result.interrupted) return 0;
  }
  const fs::path ckpt = io::resolve_checkpoint(recipe.run_dir);
  const int64_t step = io::load_checkpoint(ckpt).state.at("step").get<int64_t>();

  // Stage 2: evaluate.
  const fs::path eval_path = recipe.run_dir / "eval.json";
  auto previous_eval = read_json_if_exists(eval_path);
  if (previous_eval && previous_eval->value("step", int64_t{-1}) == step) {
    std::printf("== eval: done (%s)\n", eval_path.string().c_str());
  } else {
    std::printf("== eval\n");
    const nlohmann::json ev = eval_stage(ckpt, -1, c.train.device);
    write_text(eval_path, json_text(ev));
    previous_eval = ev;
  }
  std::printf("val loss %.4f, perplexity %.3f, %.4f bits/token over %s tokens\n",
              previous_eval->at("loss").get<double>(), previous_eval->at("perplexity").get<double>(),
              previous_eval->at("bits_per_token").get<double>(),
              format_count(previous_eval->at("tokens").get<double>()).c_str());

  // Stage 3: generate.
  const fs::path samples_path = recipe.run_dir / "samples.json";
  auto previous_samples = read_json_if_exists(samples_path);
  if (previous_samples && previous_samples->value("step", int64_t{-1}) == step) {
    std::printf("== generate: done (%s)\n", samples_path.string().c_str());
  } else {
    std::printf("== generate\n");
    previous_samples = generate_stage(ckpt, c.generate, c.train.device);
    write_text(samples_path, json_text(*previous_samples));
  }
  print_samples(*previous_samples);
  std::printf("== outputs in %s: config.yaml, metrics.jsonl, checkpoints/, eval.json, samples.json\n",
              recipe.run_dir.string().c_str());
  return 0;
}

int eval_command(const Args& args) {
  cxxopts::Options o("tessera eval", "Evaluate a checkpoint on its recipe's validation split.\n");
  o.add_options()("path", "checkpoint dir, run dir or checkpoints/ dir", cxxopts::value<std::string>())(
      "batches", "validation batches (default: the recipe's eval.batches; 0 = whole split)",
      cxxopts::value<int64_t>()->default_value("-1"))("device", "auto, cpu or cuda",
                                                       cxxopts::value<std::string>()->default_value("auto"))(
      "json", "also write the result to this file", cxxopts::value<std::string>())("h,help", "show this help");
  o.parse_positional({"path"});
  o.positional_help("PATH");
  cxxopts::ParseResult r;
  if (!parse(o, args, r)) return 0;
  const nlohmann::json ev = eval_stage(positional(r, "path", o), r["batches"].as<int64_t>(), r["device"].as<std::string>());
  std::printf("checkpoint %s (step %ld)\nval loss %.4f  perplexity %.3f  %.4f bits/token  (%ld tokens)\n",
              ev.at("checkpoint").get<std::string>().c_str(), (long)ev.at("step").get<int64_t>(),
              ev.at("loss").get<double>(), ev.at("perplexity").get<double>(), ev.at("bits_per_token").get<double>(),
              (long)ev.at("tokens").get<int64_t>());
  if (r.count("json")) write_text(r["json"].as<std::string>(), json_text(ev));
  return 0;
}

int generate_command(const Args& args) {
  cxxopts::Options o("tessera generate", "Sample from a checkpoint (KV-cached incremental decoding).\n");
  o.add_options()("path", "checkpoint dir, run dir or checkpoints/ dir", cxxopts::value<std::string>())(
      "prompt", "text to continue (default: the recipe's generate.prompt)", cxxopts::value<std::string>())(
      "max-new-tokens", "tokens per sample", cxxopts::value<int64_t>())(
      "temperature", "softmax temperature (0: greedy)", cxxopts::value<double>())(
      "top-k", "top-k filter (0: off)", cxxopts::value<int64_t>())("top-p", "nucleus filter (1: off)",
                                                                   cxxopts::value<double>())(
      "seed", "sampling seed", cxxopts::value<int64_t>())("num-samples", "number of samples", cxxopts::value<int64_t>())(
      "device", "auto, cpu or cuda", cxxopts::value<std::string>()->default_value("auto"))(
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
  const nlohmann::json out = generate_stage(path, g, r["device"].as<std::string>());
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
    const DataBundle data = make_data(recipe.config.data, recipe.file, 0);
    const auto model = make_model(recipe.config, recipe.file, data.layout);
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

int bench_command(const Args& args) {
  const std::string usage = "usage: tessera bench train [options]   (tessera bench train --help)";
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::printf("%s\n  train   time the training step of a dense model (step ms, tokens/s, TFLOP/s, peak memory)\n",
                usage.c_str());
    return args.empty() ? 2 : 0;
  }
  if (args[0] != "train") throw UsageError(str("unknown benchmark '", args[0], "'; ", usage));
  cxxopts::Options o("tessera bench train",
                     "Time the dense model's training step (forward, backward, clip, fused AdamW) on random "
                     "tokens. Defaults: the 220M reference config.\n");
  TrainBenchOptions b;
  o.add_options()("dim", "model width", cxxopts::value<int64_t>()->default_value(std::to_string(b.dim)))(
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
      "tie-embeddings", "share embedding and output weights")("json", "write the result as JSON here",
                                                              cxxopts::value<std::string>())(
      "h,help", "show this help");
  cxxopts::ParseResult r;
  if (!parse(o, Args(args.begin() + 1, args.end()), r)) return 0;
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
  const TrainBenchResult result = bench_train(b);
  std::printf("%s", result.summary.c_str());
  if (r.count("json")) write_text(r["json"].as<std::string>(), json_text(result.json));
  return 0;
}

int main_dispatch(const Args& argv) {
  auto print_help = [] {
    std::printf("tessera — train, evaluate and sample mixed-modal generative models\n\nusage: tessera VERB [options]\n\n");
    for (const auto& v : verbs()) std::printf("  %-9s %s\n", v.name, v.summary);
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
