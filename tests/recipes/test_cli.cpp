// End-to-end: recipes through the trainer, checkpoints, resume, and the CLI verbs.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>

#include "architectures/blt.h"
#include "architectures/registry.h"
#include "core/io/files.h"
#include "core/error.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "core/train/metrics.h"
#include "recipes/cli/commands.h"
#include "modalities/bytes/patching.h"
#include "recipes/cli/recipe.h"
#include "recipes/cli/tasks.h"
#include "cli_test_util.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("tessera_cli_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    remove_tree(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { remove_tree(path_); }
  const fs::path& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

// A model small enough that a step takes milliseconds.
std::string tiny_recipe(const fs::path& run_dir, int steps = 8) {
  return "name: tiny\nrun_dir: " + run_dir.string() + "\nseed: 11\n" +
         "model: {arch: dense, dim: 32, n_layers: 2, n_heads: 2, multiple_of: 16, max_seq_len: 128}\n"
         "data: {prepare: {corpus: {inputs: [assets/data/quickstart.txt]}, val_fraction: 0.05}, seq_len: 32, "
         "batch_size: 4}\n"
         "train: {steps: " + std::to_string(steps) + ", lr: 3.0e-3, warmup_steps: 2, eval_every: 4, eval_batches: 2, "
         "checkpoint_every: 2, keep_checkpoints: 2, log_every: 2, device: cpu}\n"
         "eval: {batches: 3}\n"
         "generate: {prompt: \"The \", max_new_tokens: 12, num_samples: 2, seed: 5}\n";
}

fs::path write_recipe(const TempDir& dir, const std::string& text) {
  const fs::path p = dir.path() / "recipe.yaml";
  std::ofstream(p) << text;
  return p;
}

TrainResult train_recipe(const fs::path& recipe, const std::vector<std::string>& overrides, bool resume,
                         std::function<void(int64_t)> after_step = {}) {
  LoadedRecipe r = load_recipe(recipe.string(), overrides);
  TrainerSetup setup = make_trainer_setup(r);
  setup.quiet = true;
  setup.after_step = std::move(after_step);
  return train(setup, resume);
}


TEST(Train, WritesCheckpointsMetricsAndResolvedConfig) {
  TempDir dir;
  const fs::path run = dir.path() / "run";
  const TrainResult r = train_recipe(write_recipe(dir, tiny_recipe(run)), {}, false);
  EXPECT_EQ(r.final_step, 8);
  ASSERT_EQ(r.losses.size(), 8u);
  EXPECT_LT(r.losses.back(), r.losses.front());
  // keep_checkpoints: 2 -> steps 6 and 8 remain, latest -> 8.
  io::CheckpointManager m(run / "checkpoints", 2);
  EXPECT_EQ(m.steps(), (std::vector<int64_t>{6, 8}));
  ASSERT_TRUE(m.latest().has_value());
  const io::CheckpointContents c = io::load_checkpoint(*m.latest());
  EXPECT_EQ(c.state["step"], 8);
  EXPECT_EQ(c.state["arch"], "dense");
  EXPECT_EQ(c.state["vocab_layout"]["size"], 260);
  EXPECT_EQ(c.state["recipe"]["model"]["dim"], 32);
  EXPECT_TRUE(c.state.contains("rng") && c.state.contains("data_state"));
  // Weights carry the names a PyTorch user expects.
  const auto names = io::list_safetensors(*m.latest() / "model.safetensors");
  EXPECT_NE(std::find(names.begin(), names.end(), "layers.1.attention.wq.weight"), names.end());
  // Metrics: one record per log step plus evaluations.
  const auto metrics = read_metrics((run / "metrics.jsonl").string());
  int train_records = 0, eval_records = 0;
  for (const auto& rec : metrics) {
    train_records += rec.contains("loss");
    eval_records += rec.contains("val_loss");
  }
  EXPECT_EQ(train_records, 4);
  EXPECT_EQ(eval_records, 3);  // step 0 (untrained), step 4 and the final one
  // The resolved config has every default filled in and parses back.
  const LoadedRecipe back = load_recipe((run / "config.yaml").string(), {});
  EXPECT_EQ(back.config.train.grad_accum, 1);
  EXPECT_EQ(back.config.model["vocab_size"].as<int64_t>(), 260);
}

TEST(Train, InterruptedAndResumedRunMatchesUninterruptedBitForBit) {
  TempDir dir;
  const fs::path recipe = write_recipe(dir, tiny_recipe(dir.path() / "unused", 10));
  const TrainResult full = train_recipe(recipe, {"run_dir=" + (dir.path() / "full").string()}, false);

  // SIGINT after step 5: the trainer finishes the step, checkpoints and returns.
  const std::vector<std::string> part = {"run_dir=" + (dir.path() / "part").string()};
  const TrainResult first = train_recipe(recipe, part, false, [](int64_t step) {
    if (step == 5) std::raise(SIGINT);
  });
  EXPECT_TRUE(first.interrupted);
  EXPECT_EQ(first.final_step, 5);
  EXPECT_TRUE(fs::exists(dir.path() / "part" / "checkpoints" / "step_00000005" / "state.json"));
  const TrainResult second = train_recipe(recipe, part, true);
  EXPECT_EQ(second.start_step, 5);
  std::vector<double> joined = first.losses;
  joined.insert(joined.end(), second.losses.begin(), second.losses.end());
  ASSERT_EQ(joined.size(), full.losses.size());
  for (size_t i = 0; i < joined.size(); ++i) EXPECT_EQ(joined[i], full.losses[i]) << "step " << i + 1;

  // The final weights are identical too.
  const auto a = io::load_safetensors(dir.path() / "full/checkpoints/step_00000010/model.safetensors");
  const auto b = io::load_safetensors(dir.path() / "part/checkpoints/step_00000010/model.safetensors");
  for (const auto& [name, t] : a.tensors) EXPECT_TRUE(at::equal(t, b.tensors.at(name))) << name;
}

TEST(Train, GradientAccumulationMatchesTheLargerBatch) {
  TempDir dir;
  const fs::path recipe = write_recipe(dir, tiny_recipe(dir.path() / "x", 3));
  const TrainResult big = train_recipe(
      recipe, {"run_dir=" + (dir.path() / "big").string(), "data.batch_size=4", "train.grad_accum=1"}, false);
  const TrainResult acc = train_recipe(
      recipe, {"run_dir=" + (dir.path() / "acc").string(), "data.batch_size=2", "train.grad_accum=2"}, false);
  // Same rows in the same order, split in two micro-batches: the same losses up to float rounding
  // (the mean over the masked tokens differs slightly when the halves hold different mask counts).
  for (size_t i = 0; i < big.losses.size(); ++i) EXPECT_NEAR(acc.losses[i], big.losses[i], 2e-2);
}

class NanObjective : public Objective {
 public:
  explicit NanObjective(std::shared_ptr<Objective> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return "nan"; }
  LossTerms compute(LanguageModel& model, const Batch& batch) override {
    LossTerms t = inner_->compute(model, batch);
    if (model.is_training() && ++calls_ == 5) t.total = t.total * std::numeric_limits<float>::quiet_NaN();
    return t;
  }

 private:
  std::shared_ptr<Objective> inner_;
  int calls_ = 0;
};

TEST(Train, NonFiniteLossStopsWithStepAndLastGoodCheckpoint) {
  TempDir dir;
  const fs::path run = dir.path() / "run";
  LoadedRecipe r = load_recipe(write_recipe(dir, tiny_recipe(run)).string(), {});
  TrainerSetup setup = make_trainer_setup(r);
  setup.quiet = true;
  setup.objective = std::make_shared<NanObjective>(setup.objective);
  try {
    train(setup, false);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("loss is NaN at step 5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("step_00000004"), std::string::npos) << msg;
  }
  // The checkpoint of step 4 is intact and no later one exists.
  EXPECT_EQ(io::CheckpointManager(run / "checkpoints", 0).steps(), (std::vector<int64_t>{2, 4}));
}

TEST(Train, ResumeRefusesAnotherArchitectureOrModel) {
  TempDir dir;
  const fs::path run = dir.path() / "run";
  const fs::path recipe = write_recipe(dir, tiny_recipe(run, 2));
  train_recipe(recipe, {}, false);
  // A different width: the tensors do not fit, and the error names one.
  try {
    train_recipe(recipe, {"model.dim=64", "train.steps=4"}, true);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has shape"), std::string::npos) << e.what();
  }
  // A checkpoint claiming another architecture.
  const fs::path state_path = run / "checkpoints" / "step_00000002" / "state.json";
  nlohmann::json state = nlohmann::json::parse(std::ifstream(state_path));
  state["arch"] = "blt";
  std::ofstream(state_path) << state.dump();
  try {
    train_recipe(recipe, {"train.steps=4"}, true);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("written by architecture 'blt'"), std::string::npos) << e.what();
  }
  // --resume without any checkpoint.
  EXPECT_THROW(train_recipe(recipe, {"run_dir=" + (dir.path() / "empty").string()}, true), Error);
}

TEST(Cli, HelpUnknownVerbsAndOptions) {
  std::string out, err;
  EXPECT_EQ(cli({"--help"}, &out), 0);
  for (const char* verb : {"run", "train", "eval", "generate", "info", "bench"})
    EXPECT_NE(out.find(verb), std::string::npos) << verb;
  EXPECT_EQ(cli({"train", "--help"}, &out), 0);
  EXPECT_NE(out.find("--resume"), std::string::npos);
  EXPECT_EQ(cli({"trian"}, &out, &err), 2);
  EXPECT_NE(err.find("did you mean 'train'"), std::string::npos) << err;
  EXPECT_EQ(cli({"eval", "--nope"}, &out, &err), 2);
  EXPECT_NE(err.find("nope"), std::string::npos) << err;
  EXPECT_EQ(cli({"train", "r.yaml", "--train.lr=1"}, &out, &err), 2);
  EXPECT_NE(err.find("overrides take no dashes"), std::string::npos) << err;
  EXPECT_EQ(cli({"bench", "flops"}, &out, &err), 2);
  EXPECT_EQ(cli({"info", "--arch", "dense"}, &out), 0);
  EXPECT_NE(out.find("model.n_kv_heads"), std::string::npos);
}

TEST(Cli, BadRecipesAreClearErrors) {
  TempDir dir;
  std::string out, err;
  EXPECT_EQ(cli({"train", (dir.path() / "missing.yaml").string()}, &out, &err), 1);
  EXPECT_NE(err.find("cannot open config file"), std::string::npos) << err;
  const fs::path recipe = write_recipe(dir, tiny_recipe(dir.path() / "run") + "trian: {}\n");
  EXPECT_EQ(cli({"train", recipe.string()}, &out, &err), 1);
  EXPECT_NE(err.find("unknown key 'trian'"), std::string::npos) << err;
  EXPECT_NE(err.find("did you mean 'train'"), std::string::npos) << err;
  const fs::path ok = write_recipe(dir, tiny_recipe(dir.path() / "run"));
  EXPECT_EQ(cli({"train", ok.string(), "model.arch=dence"}, &out, &err), 1);
  EXPECT_NE(err.find("did you mean 'dense'"), std::string::npos) << err;
  EXPECT_EQ(cli({"train", ok.string(), "data.prepare.corpus.inputs=[nowhere.txt]"}, &out, &err), 1);
  EXPECT_NE(err.find("corpus input 'nowhere.txt' not found"), std::string::npos) << err;
  EXPECT_EQ(cli({"train", ok.string(), "data.prepare.corpus.inputs=[]", "data.dataset=" + (dir.path() / "none").string()},
                &out, &err),
            1);
  EXPECT_NE(err.find("is not prepared"), std::string::npos) << err;
  EXPECT_EQ(cli({"info", (dir.path() / "nothing").string()}, &out, &err), 1);
  // `task:` picks what a recipe trains: lm is this file's kind, anything unknown is named.
  const fs::path lm_task = write_recipe(dir, "task: lm\n" + tiny_recipe(dir.path() / "run"));
  EXPECT_NO_THROW(load_recipe(lm_task.string(), {}));
  const fs::path bad_task = write_recipe(dir, "task: vq_tokeniser\nname: x\n");
  EXPECT_EQ(cli({"run", bad_task.string()}, &out, &err), 1);
  EXPECT_NE(err.find("unknown task 'vq_tokeniser'"), std::string::npos) << err;
  EXPECT_NE(err.find("known: lm"), std::string::npos) << err;
}

TEST(Cli, RunTrainsEvaluatesGeneratesThenSkipsDoneStages) {
  TempDir dir;
  const fs::path run = dir.path() / "run";
  const fs::path recipe = write_recipe(dir, tiny_recipe(run, 4));
  std::string out, err;
  ASSERT_EQ(cli({"run", recipe.string()}, &out, &err), 0) << err;
  EXPECT_NE(out.find("== train"), std::string::npos);
  EXPECT_NE(out.find("val loss"), std::string::npos);
  EXPECT_NE(out.find("--- sample 1 ---"), std::string::npos);
  for (const char* f : {"config.yaml", "metrics.jsonl", "eval.json", "samples.json"})
    EXPECT_TRUE(fs::exists(run / f)) << f;
  const nlohmann::json ev = nlohmann::json::parse(std::ifstream(run / "eval.json"));
  EXPECT_GT(ev["loss"].get<double>(), 0.0);
  EXPECT_NEAR(ev["bits_per_token"].get<double>(), ev["loss"].get<double>() / std::log(2.0), 1e-9);
  EXPECT_NEAR(ev["perplexity"].get<double>(), std::exp(ev["loss"].get<double>()), 1e-6);

  ASSERT_EQ(cli({"run", recipe.string()}, &out, &err), 0) << err;
  EXPECT_NE(out.find("== train: done"), std::string::npos) << out;
  EXPECT_NE(out.find("== eval: done"), std::string::npos);
  EXPECT_NE(out.find("== generate: done"), std::string::npos);

  // info describes the run; eval and generate work on it directly; same seed, same text.
  ASSERT_EQ(cli({"info", run.string()}, &out), 0);
  EXPECT_NE(out.find("architecture dense"), std::string::npos) << out;
  EXPECT_NE(out.find("step         4"), std::string::npos) << out;
  ASSERT_EQ(cli({"eval", run.string(), "--batches", "3"}, &out), 0);
  EXPECT_NE(out.find("val loss"), std::string::npos);
  std::string g1, g2;
  ASSERT_EQ(cli({"generate", run.string(), "--seed", "9", "--max-new-tokens", "20", "--num-samples", "1"}, &g1), 0);
  ASSERT_EQ(cli({"generate", run.string(), "--seed", "9", "--max-new-tokens", "20", "--num-samples", "1"}, &g2), 0);
  EXPECT_EQ(g1, g2);
  EXPECT_NE(g1.find("The "), std::string::npos);
}

TEST(Cli, ForceStartsOverButKeepsThePreparedData) {
  TempDir dir;
  const fs::path run = dir.path() / "run";
  const fs::path recipe = write_recipe(dir, tiny_recipe(run, 2));
  std::string out, err;
  ASSERT_EQ(cli({"run", recipe.string()}, &out, &err), 0) << err;
  const auto index_time = fs::last_write_time(run / "data" / "index.json");
  std::ofstream(run / "stale.txt") << "from the earlier run";
  ASSERT_EQ(cli({"run", recipe.string(), "--force"}, &out, &err), 0) << err;
  EXPECT_NE(out.find("up to date"), std::string::npos) << out;  // the shards were kept
  EXPECT_EQ(fs::last_write_time(run / "data" / "index.json"), index_time);
  EXPECT_FALSE(fs::exists(run / "stale.txt"));
  EXPECT_NE(out.find("== train\n"), std::string::npos) << out;  // trained again, not skipped
  EXPECT_TRUE(fs::exists(run / "eval.json"));
}

TEST(Cli, BenchTrainRunsOnCpu) {
  std::string out, err;
  ASSERT_EQ(cli({"bench", "train", "--dim", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--batch", "2",
                 "--seq", "16", "--warmup", "1", "--steps", "2", "--device", "cpu"},
                &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("TFLOP/s"), std::string::npos) << out;
  // The JSON keeps every step's loss (the curve scripts/gpu_bench.sh NUMERICS=1 compares); the same seed
  // gives the same curve, and the ATen path (fused_kernels: false) the same one on the CPU.
  TempDir dir;
  std::vector<std::vector<double>> curves;
  for (const char* fused : {"true", "false"}) {
    const fs::path json = dir.path() / (std::string("losses-") + fused + ".json");
    ASSERT_EQ(cli({"bench", "train", "--model",
                   std::string("{arch: dense, dim: 32, n_layers: 1, n_heads: 2, multiple_of: 16, fused_kernels: ") + fused + "}",
                   "--vocab", "64", "--batch", "2", "--seq", "16", "--warmup", "2", "--steps", "6", "--device", "cpu",
                   "--json", json.string()},
                  &out, &err),
              0)
        << err;
    curves.push_back(nlohmann::json::parse(std::ifstream(json)).at("losses").get<std::vector<double>>());
  }
  ASSERT_EQ(curves[0].size(), 8u);
  for (size_t i = 0; i < curves[0].size(); ++i) {
    EXPECT_TRUE(std::isfinite(curves[0][i]));
    EXPECT_DOUBLE_EQ(curves[0][i], curves[1][i]) << "step " << i;
  }
  // --reference runs the PyTorch twin with the same shape and counts and reports its rows. Here a stand-in
  // for Python records its arguments and prints a result (the real script needs PyTorch for Python,
  // which the GPU machine has).
  const fs::path fake = dir.path() / "fake-python.sh", args = dir.path() / "args.txt";
  std::ofstream(fake) << "#!/bin/sh\necho \"$@\" >> " << args.string()
                      << "\necho '{\"step_ms_median\": 12.5, \"tokens_per_s\": 2.5, \"tflops\": 0.001, "
                         "\"peak_memory_gb\": 0.0}'\n";
  fs::permissions(fake, fs::perms::owner_all);
  const fs::path ref_json = dir.path() / "ref.json";
  ASSERT_EQ(cli({"bench", "train", "--dim", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--batch", "2",
                 "--seq", "16", "--warmup", "1", "--steps", "2", "--device", "cpu", "--reference", "eager,compile",
                 "--python", fake.string(), "--json", ref_json.string()},
                &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("pytorch-compile"), std::string::npos) << out;
  const nlohmann::json ref = nlohmann::json::parse(std::ifstream(ref_json)).at("reference");
  ASSERT_EQ(ref.size(), 2u);
  EXPECT_EQ(ref[0].at("impl"), "pytorch-eager");
  EXPECT_EQ(ref[1].at("impl"), "pytorch-compile");
  EXPECT_EQ(ref[1].at("step_ms_median").get<double>(), 12.5);
  std::ifstream recorded(args);
  std::string first, second;
  std::getline(recorded, first);
  std::getline(recorded, second);
  EXPECT_NE(first.find("reference/dense.py --mode eager --dim 32 --n-layers 1 --n-heads 2"), std::string::npos) << first;
  EXPECT_NE(second.find("--mode compile"), std::string::npos) << second;
  EXPECT_NE(second.find("--vocab-size 64 --batch-size 2 --seq-len 16 --warmup 1 --steps 2"), std::string::npos) << second;
  EXPECT_NE(second.find("--device cpu"), std::string::npos) << second;
  // A reference that fails is an error that quotes it.
  std::ofstream(fake) << "#!/bin/sh\necho 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n";
  EXPECT_EQ(cli({"bench", "train", "--dim", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--batch", "2",
                 "--seq", "16", "--warmup", "1", "--steps", "1", "--device", "cpu", "--reference", "eager", "--python",
                 fake.string()},
                &out, &err),
            1);
  EXPECT_NE(err.find("No module named torch"), std::string::npos) << err;
  EXPECT_EQ(cli({"bench", "train", "--model", "{arch: dense, dim: 32}", "--reference", "eager"}, &out, &err), 2);
  // A CUDA graph needs CUDA: on the CPU it is an error that says so.
  EXPECT_EQ(cli({"bench", "train", "--dim", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--batch", "2",
                 "--seq", "16", "--steps", "1", "--device", "cpu", "--cuda-graph"},
                &out, &err),
            1);
  EXPECT_NE(err.find("--cuda-graph needs a CUDA device"), std::string::npos) << err;
  // --profile adds a per-operator breakdown (per-kernel on CUDA) in which the matrix multiplies appear.
  ASSERT_EQ(cli({"bench", "train", "--dim", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--batch", "2",
                 "--seq", "16", "--warmup", "1", "--steps", "1", "--device", "cpu", "--profile", "1"},
                &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("CPU operator time (inclusive) per step"), std::string::npos) << out;
  EXPECT_NE(out.find("aten::mm"), std::string::npos) << out;
}

// The benchmarks for any architecture: the training step of a Megalodon given as YAML, its CEMA three
// ways, and decoding after two context lengths (state memory is measured on CUDA only).
TEST(Cli, BenchesTakeAnyArchitecture) {
  TempDir dir;
  const std::string mega = "{arch: megalodon, dim: 32, n_layers: 1, z_dim: 16, value_dim: 32, chunk_size: 16, "
                           "norm_groups: 4, cema_ndim: 2}";
  std::string out, err;
  const fs::path train_json = dir.path() / "train.json";
  ASSERT_EQ(cli({"bench", "train", "--model", mega, "--vocab", "64", "--batch", "2", "--seq", "40", "--warmup", "1",
                 "--steps", "2", "--device", "cpu", "--json", train_json.string()},
                &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("megalodon"), std::string::npos) << out;
  const nlohmann::json t = nlohmann::json::parse(std::ifstream(train_json));
  EXPECT_EQ(t.at("arch"), "megalodon");
  EXPECT_GT(t.at("tokens_per_s").get<double>(), 0.0);
  // --dim belongs to the default dense model: mixing it with --model is a usage error.
  EXPECT_EQ(cli({"bench", "train", "--model", mega, "--dim", "64"}, &out, &err), 2);
  EXPECT_NE(err.find("--dim"), std::string::npos) << err;

  const fs::path cema_json = dir.path() / "cema.json";
  ASSERT_EQ(cli({"bench", "cema", "--dim", "8", "--ndim", "2", "--batch", "1", "--seq", "33,64", "--modes",
                 "fft,scan,sequential", "--scan-chunk", "8", "--warmup", "0", "--steps", "1", "--device", "cpu",
                 "--json", cema_json.string()},
                &out, &err),
            0)
      << err;
  EXPECT_EQ(nlohmann::json::parse(std::ifstream(cema_json)).at("rows").size(), 6u);
  EXPECT_EQ(cli({"bench", "cema", "--modes", "fast"}, &out, &err), 1);
  EXPECT_NE(err.find("unknown mode 'fast'"), std::string::npos) << err;

  const fs::path gen_json = dir.path() / "gen.json";
  ASSERT_EQ(cli({"bench", "generate", "--model", mega, "--vocab", "64", "--context", "20,50", "--prefill-chunk", "16",
                 "--decode", "3", "--device", "cpu", "--json", gen_json.string()},
                &out, &err),
            0)
      << err;
  const nlohmann::json g = nlohmann::json::parse(std::ifstream(gen_json));
  ASSERT_EQ(g.at("rows").size(), 2u);
  EXPECT_EQ(g.at("rows")[1].at("context"), 50);
  EXPECT_GT(g.at("rows")[1].at("decode_ms_per_token_median").get<double>(), 0.0);
  EXPECT_EQ(cli({"bench", "generate", "--context", "20"}, &out, &err), 2);  // --model is required
  EXPECT_EQ(cli({"bench", "generate", "--model", mega, "--context", "20,x"}, &out, &err), 2);
}

// BLT's training step split by stage (patching, encoder, global, decoder, rest), and cached against
// uncached generation, which in fp32 must produce the very same greedy tokens.
TEST(Cli, BenchSplitsBltByStageAndComparesCachedGeneration) {
  TempDir dir;
  const std::string blt = "{arch: blt, dim_local_encoder: 32, n_layers_local_encoder: 1, n_heads_local_encoder: 2, "
                          "dim_global: 64, n_layers_global: 1, n_heads_global: 2, dim_local_decoder: 32, "
                          "n_layers_local_decoder: 1, n_heads_local_decoder: 2, cross_attn_k: 2, cross_attn_nheads: 2, "
                          "multiple_of: 16, max_seq_len: 128, hash: {vocab: 101}, patcher: {mode: space}}";
  std::string out, err;
  const fs::path train_json = dir.path() / "train.json";
  ASSERT_EQ(cli({"bench", "train", "--model", blt, "--vocab", "260", "--batch", "2", "--seq", "64", "--warmup", "1",
                 "--steps", "2", "--stages", "2", "--device", "cpu", "--json", train_json.string()},
                &out, &err),
            0)
      << err;
  const nlohmann::json t = nlohmann::json::parse(std::ifstream(train_json));
  std::vector<std::string> names;
  double staged = 0;
  for (const auto& st : t.at("stages")) {
    names.push_back(st.at("stage"));
    EXPECT_GE(st.at("forward_ms").get<double>(), 0.0);
    staged += st.at("forward_ms").get<double>() + st.at("backward_ms").get<double>();
  }
  EXPECT_EQ(names, (std::vector<std::string>{"patching", "encoder", "global", "decoder", "rest"}));
  EXPECT_EQ(t.at("stages")[0].at("backward_ms").get<double>(), 0.0);  // no gradient reaches the patcher
  for (int i = 1; i <= 3; ++i) EXPECT_GT(t.at("stages")[i].at("backward_ms").get<double>(), 0.0) << names[i];
  EXPECT_GT(staged, 0.0);
  EXPECT_NE(out.find("clip+AdamW"), std::string::npos) << out;

  const fs::path gen_json = dir.path() / "gen.json";
  ASSERT_EQ(cli({"bench", "generate", "--model", blt, "--vocab", "260", "--compare", "24", "--prompt-tokens", "8",
                 "--device", "cpu", "--json", gen_json.string()},
                &out, &err),
            0)
      << err;
  const nlohmann::json g = nlohmann::json::parse(std::ifstream(gen_json));
  EXPECT_EQ(g.at("generated_tokens"), 24);
  EXPECT_EQ(g.at("identical_leading_tokens"), 24) << out;
  EXPECT_GT(g.at("cached_tokens_per_s").get<double>(), 0.0);
  EXPECT_GT(g.at("uncached_tokens_per_s").get<double>(), 0.0);
  // Sampled uncached lengths (a long generation's quadratic baseline): the full forward on the cached
  // prefix predicts the cached token at every sampled length.
  ASSERT_EQ(cli({"bench", "generate", "--model", blt, "--vocab", "260", "--compare", "24", "--prompt-tokens", "8",
                 "--uncached-samples", "4", "--device", "cpu", "--json", gen_json.string()},
                &out, &err),
            0)
      << err;
  const nlohmann::json sampled = nlohmann::json::parse(std::ifstream(gen_json));
  EXPECT_EQ(sampled.at("uncached_sampled_lengths"), 4);
  EXPECT_EQ(sampled.at("uncached_agreeing_samples"), 4) << out;
  EXPECT_GT(sampled.at("uncached_s").get<double>(), 0.0);
  EXPECT_EQ(cli({"bench", "generate", "--model", blt, "--checkpoint", "x", "--compare", "4"}, &out, &err), 2);
}

// The quickstart's shape on a smaller config: prepare (bytes and BPE) -> train at equal FLOPs -> exact
// bits per byte -> samples -> comparison table and plot; the loss must clearly decrease.
TEST(Cli, ComparisonRecipeRunsBothArmsAndWritesSummary) {
  TempDir dir;
  const fs::path run = dir.path() / "cmp";
  const std::string recipe_text =
      "name: cmp\nrun_dir: " + run.string() + "\nseed: 3\n"
      "model: {arch: dense, dim: 48, n_layers: 2, n_heads: 2, multiple_of: 16, max_seq_len: 128, tie_embeddings: true}\n"
      "data: {prepare: {corpus: {inputs: [assets/data/quickstart.txt], max_documents: 400}, val_fraction: 0.1}, "
      "seq_len: 64, batch_size: 8}\n"
      "train: {flops_budget: 4.0e10, lr: 3.0e-3, warmup_steps: 10, eval_every: 25, eval_batches: 0, log_every: 5, "
      "device: cpu}\n"
      "generate: {prompt: \"The \", max_new_tokens: 16, num_samples: 1, seed: 1}\n"
      "variants:\n  - name: bytes\n  - name: bpe\n"
      "    set: {data: {prepare: {adapter: bpe, bpe: {vocab_size: 512, threads: 1}}, seq_len: 24}}\n";
  const fs::path recipe = write_recipe(dir, recipe_text);
  std::string out, err;
  ASSERT_EQ(cli({"run", recipe.string()}, &out, &err), 0) << err << out;
  for (const char* f : {"summary.md", "summary.json", "bpb_vs_flops.png"}) EXPECT_TRUE(fs::exists(run / f)) << f;
  EXPECT_NE(out.find("| bytes | bytes |"), std::string::npos) << out;
  EXPECT_NE(out.find("| bpe | sentencepiece |"), std::string::npos) << out;

  const nlohmann::json arms = nlohmann::json::parse(std::ifstream(run / "summary.json"));
  ASSERT_EQ(arms.size(), 2u);
  double flops[2];
  for (int a = 0; a < 2; ++a) {
    const auto& arm = arms[a];
    flops[a] = arm.at("train_flops").get<double>();
    EXPECT_TRUE(arm.at("eval").at("bits_per_byte_exact").get<bool>());
    const double bpb = arm.at("eval").at("bits_per_byte").get<double>();
    EXPECT_GT(bpb, 0.5);
    EXPECT_LT(bpb, 8.0);
    // Bits per byte from the summed NLL and the split's bytes, recomputed here.
    EXPECT_NEAR(bpb, arm.at("eval").at("sum_nll").get<double>() / (std::log(2.0) * arm.at("eval").at("bytes").get<double>()),
                1e-9);
    // A clearly decreasing validation curve: the last evaluation well below the first.
    std::vector<double> curve;
    std::ifstream metrics(fs::path(arm.at("run_dir").get<std::string>()) / "metrics.jsonl");
    for (std::string line; std::getline(metrics, line);) {
      const auto m = nlohmann::json::parse(line);
      if (m.contains("val_bpb")) curve.push_back(m["val_bpb"].get<double>());
    }
    ASSERT_GE(curve.size(), 3u);
    // Untrained (step 0): close to the uniform distribution, log2(V) bits per target.
    const double uniform = std::log2(arm.at("vocab_size").get<double>()) *
                           arm.at("eval").at("split_targets").get<double>() / arm.at("eval").at("bytes").get<double>();
    EXPECT_NEAR(curve.front(), uniform, 0.1 * uniform) << arm.at("name");
    EXPECT_LT(curve.back(), curve.front() * 0.7) << arm.at("name");
    EXPECT_LT(curve.back(), curve[1]) << arm.at("name");  // and still improving after the first evaluation
    EXPECT_NEAR(curve.back(), bpb, 1e-6);
    EXPECT_FALSE(arm.at("sample").get<std::string>().empty());
  }
  // Equal compute within one optimizer step's worth.
  EXPECT_NEAR(flops[0] / flops[1], 1.0, 0.1);

  // Everything is done: a second run skips every stage; prepare alone is a no-op.
  ASSERT_EQ(cli({"run", recipe.string()}, &out, &err), 0) << err;
  EXPECT_NE(out.find("up to date"), std::string::npos) << out;
  EXPECT_NE(out.find("== train: done"), std::string::npos) << out;
  ASSERT_EQ(cli({"prepare", recipe.string(), "--variant", "bpe"}, &out, &err), 0) << err;
  EXPECT_NE(out.find("up to date"), std::string::npos) << out;
  // --run-dir moves the variants too (run_dir/<variant>), e.g. for the same comparison at another setting.
  const fs::path elsewhere = dir.path() / "elsewhere";
  ASSERT_EQ(cli({"prepare", recipe.string(), "--variant", "bytes", "--run-dir", elsewhere.string()}, &out, &err), 0)
      << err;
  EXPECT_TRUE(fs::exists(elsewhere / "bytes" / "data" / "index.json")) << out;
  EXPECT_EQ(out.find("up to date"), std::string::npos) << out;
  // `eval bpb` on one arm gives the recorded value; generation uses the arm's BPE tokenizer.
  ASSERT_EQ(cli({"eval", "bpb", (run / "bpe").string(), "--json", (dir.path() / "bpb.json").string()}, &out, &err), 0)
      << err;
  EXPECT_NE(out.find("bits per byte"), std::string::npos) << out;
  const nlohmann::json again = nlohmann::json::parse(std::ifstream(dir.path() / "bpb.json"));
  EXPECT_NEAR(again.at("bits_per_byte").get<double>(), arms[1].at("eval").at("bits_per_byte").get<double>(), 1e-6);
  ASSERT_EQ(cli({"generate", (run / "bpe").string(), "--prompt", "The meaning", "--max-new-tokens", "8"}, &out, &err), 0)
      << err;
  EXPECT_NE(out.find("The meaning"), std::string::npos) << out;
  EXPECT_EQ(cli({"run", recipe.string(), "--variant", "bpf"}, &out, &err), 1);
  EXPECT_NE(err.find("did you mean 'bpe'"), std::string::npos) << err;
}

// Megalodon against dense in one comparison recipe: the variant that names another architecture
// replaces the model section; both arms train at equal FLOPs, and the summary has bpb by position.
TEST(Cli, MegalodonVersusDenseComparisonWithBitsPerBytePosition) {
  TempDir dir;
  const fs::path run = dir.path() / "mvd";
  const std::string recipe_text =
      "name: mvd\nrun_dir: " + run.string() + "\nseed: 5\n"
      "model: {arch: dense, dim: 32, n_layers: 2, n_heads: 2, multiple_of: 16, max_seq_len: 64, tie_embeddings: true}\n"
      "data: {dataset: " + (run / "data").string() + ", prepare: {corpus: {inputs: [assets/data/quickstart.txt], "
      "max_documents: 300}, val_fraction: 0.1}, seq_len: 64, batch_size: 4, doc_mask: false}\n"
      "train: {flops_budget: 1.0e10, lr: 3.0e-3, warmup_steps: 5, eval_every: 20, eval_batches: 0, log_every: 5, "
      "device: cpu}\n"
      "generate: {prompt: \"The \", max_new_tokens: 40, num_samples: 1, seed: 1}\n"
      "variants:\n  - name: dense\n  - name: megalodon\n"
      "    set: {model: {arch: megalodon, dim: 32, n_layers: 2, z_dim: 16, value_dim: 48, ffn_hidden_dim: 64, "
      "cema_ndim: 4, chunk_size: 16, norm_groups: 4, tie_embeddings: true}}\n";
  const fs::path recipe = write_recipe(dir, recipe_text);
  std::string out, err;
  ASSERT_EQ(cli({"run", recipe.string()}, &out, &err), 0) << err << out;
  for (const char* f : {"summary.md", "summary.json", "bpb_vs_flops.png", "bpb_by_position.png"})
    EXPECT_TRUE(fs::exists(run / f)) << f;
  EXPECT_NE(out.find("by position in the context"), std::string::npos) << out;
  const nlohmann::json arms = nlohmann::json::parse(std::ifstream(run / "summary.json"));
  ASSERT_EQ(arms.size(), 2u);
  EXPECT_EQ(arms[1].at("name"), "mvd/megalodon");
  double flops[2];
  for (int a = 0; a < 2; ++a) {
    const auto& ev = arms[a].at("eval");
    flops[a] = arms[a].at("train_flops").get<double>();
    // Buckets [0,4) [4,8) [8,16) [16,32) [32,64) cover every counted target; their token-weighted
    // mean is the overall bits per token.
    const auto& buckets = ev.at("by_position");
    ASSERT_EQ(buckets.size(), 5u);
    EXPECT_EQ(buckets[0].at("begin"), 0);
    EXPECT_EQ(buckets[4].at("begin"), 32);
    EXPECT_EQ(buckets[4].at("end"), 64);
    double tokens = 0, bits = 0;
    for (const auto& b : buckets) {
      tokens += b.at("tokens").get<double>();
      bits += b.at("bits_per_token").get<double>() * b.at("tokens").get<double>();
    }
    EXPECT_EQ(tokens, ev.at("tokens").get<double>());
    // (The total is summed per batch in float32, the positions in float64: agreement to float32 rounding.)
    EXPECT_NEAR(bits / tokens, ev.at("bits_per_token").get<double>(), 1e-6);
    // Learned something: well below the uniform 8.0 bits per byte of 260 ids.
    EXPECT_LT(ev.at("bits_per_byte").get<double>(), 5.0) << arms[a].at("name");
    EXPECT_FALSE(arms[a].at("sample").get<std::string>().empty());
  }
  EXPECT_NEAR(flops[0] / flops[1], 1.0, 0.1);
  // The Megalodon checkpoint evaluates and generates through the CLI.
  ASSERT_EQ(cli({"eval", "bpb", (run / "megalodon").string()}, &out, &err), 0) << err;
  EXPECT_NE(out.find("bits/byte by position"), std::string::npos) << out;
  ASSERT_EQ(cli({"generate", (run / "megalodon").string(), "--prompt", "Love", "--max-new-tokens", "40"}, &out, &err), 0)
      << err;
  EXPECT_NE(out.find("Love"), std::string::npos) << out;
}

// The BLT-vs-BPE comparison on a tiny scale: an entropy model first, then dense (BPE and bytes),
// MEGABYTE, BLT with space and with entropy patching at equal FLOPs; every arm's validation loss falls,
// the summary reports bytes per patch, and `patch calibrate` finds a threshold for a target patch size.
TEST(Cli, BltVersusBpeComparisonAndPatchCalibration) {
  TempDir dir;
  const fs::path bytes_data = dir.path() / "bytes_data";
  const std::string data = "data: {dataset: " + bytes_data.string() + ", prepare: {corpus: {inputs: "
                           "[assets/data/quickstart.txt], max_documents: 300}, val_fraction: 0.1}, seq_len: 64, "
                           "batch_size: 4, doc_mask: false}\n";
  const std::string train = "train: {flops_budget: %s, lr: 3.0e-3, warmup_steps: 5, eval_every: 15, eval_batches: 0, "
                            "log_every: 5, device: cpu}\n";
  auto with_budget = [&](const char* budget) {
    std::string t = train;
    t.replace(t.find("%s"), 2, budget);
    return t;
  };
  const fs::path entropy_run = dir.path() / "entropy";
  const fs::path entropy_recipe = dir.path() / "entropy.yaml";
  std::ofstream(entropy_recipe) << "name: ent\nrun_dir: " << entropy_run.string() << "\nseed: 2\n"
                                << "model: {arch: dense, dim: 32, n_layers: 1, n_heads: 2, multiple_of: 16, "
                                   "max_seq_len: 64, sliding_window: 32, tie_embeddings: true}\n"
                                << data << with_budget("2.0e9")
                                << "generate: {prompt: \"The \", max_new_tokens: 8, num_samples: 1, seed: 1}\n";
  std::string out, err;
  ASSERT_EQ(cli({"run", entropy_recipe.string()}, &out, &err), 0) << err << out;

  const std::string blt = "{arch: blt, dim_local_encoder: 32, n_layers_local_encoder: 1, n_heads_local_encoder: 2, "
                          "dim_global: 64, n_layers_global: 1, n_heads_global: 2, dim_local_decoder: 32, "
                          "n_layers_local_decoder: 1, n_heads_local_decoder: 2, cross_attn_k: 2, cross_attn_nheads: 2, "
                          "multiple_of: 16, max_seq_len: 64, local_attention_window_len: 32, hash: {vocab: 101}, ";
  const fs::path run = dir.path() / "bvb";
  const fs::path recipe = dir.path() / "bvb.yaml";
  std::ofstream(recipe)
      << "name: bvb\nrun_dir: " << run.string() << "\nseed: 4\n"
      << "model: {arch: dense, dim: 32, n_layers: 2, n_heads: 2, multiple_of: 16, max_seq_len: 64, tie_embeddings: true}\n"
      << data << with_budget("6.0e9")
      << "generate: {prompt: \"The \", max_new_tokens: 12, num_samples: 1, seed: 1}\n"
      << "variants:\n"
      << "  - name: dense_bpe\n    set: {data: {dataset: " << (dir.path() / "bpe_data").string()
      << ", prepare: {adapter: bpe, bpe: {vocab_size: 512, threads: 1}}, seq_len: 32}}\n"
      << "  - name: dense_bytes\n"
      << "  - name: megabyte_p4\n    set: {model: {arch: megabyte, patch_size: 4, global_dim: 64, global_layers: 1, "
         "global_heads: 2, local_dim: 32, local_layers: 1, local_heads: 2, multiple_of: 16, max_seq_len: 64}}\n"
      << "  - name: blt_space\n    set: {model: " << blt << "patcher: {mode: space}}}\n"
      << "  - name: blt_entropy\n    set: {model: " << blt
      << "patcher: {mode: entropy, threshold: 2.5}, entropy_model: " << entropy_run.string() << "}}\n";
  ASSERT_EQ(cli({"run", recipe.string()}, &out, &err), 0) << err << out;
  EXPECT_NE(out.find("bytes/patch"), std::string::npos) << out;
  const nlohmann::json arms = nlohmann::json::parse(std::ifstream(run / "summary.json"));
  ASSERT_EQ(arms.size(), 5u);
  for (const auto& arm : arms) {
    std::vector<double> curve;
    std::ifstream metrics(fs::path(arm.at("run_dir").get<std::string>()) / "metrics.jsonl");
    for (std::string line; std::getline(metrics, line);) {
      const auto m = nlohmann::json::parse(line);
      if (m.contains("val_bpb")) curve.push_back(m["val_bpb"].get<double>());
    }
    ASSERT_GE(curve.size(), 2u) << arm.at("name");
    EXPECT_LT(curve.back(), 0.8 * curve.front()) << arm.at("name");
  }
  const double megabyte_patch = arms[2].at("eval").at("bytes_per_patch").get<double>();
  const double space_patch = arms[3].at("eval").at("bytes_per_patch").get<double>();
  const double entropy_patch = arms[4].at("eval").at("bytes_per_patch").get<double>();
  EXPECT_EQ(megabyte_patch, 4.0);
  EXPECT_GT(space_patch, 1.5);   // English words and their spaces
  EXPECT_LT(space_patch, 10.0);
  EXPECT_GE(entropy_patch, 1.0);
  EXPECT_LT(entropy_patch, 64.0);
  EXPECT_EQ(arms[1].at("eval").at("bytes_per_patch").get<double>(), 0.0);  // dense: no patches

  // Calibration: the threshold for a mean patch of 3 bytes on the validation rows.
  const fs::path cal = dir.path() / "cal.json";
  ASSERT_EQ(cli({"patch", "calibrate", recipe.string(), "--variant", "blt_entropy", "--target", "3", "--json",
                 cal.string()},
                &out, &err),
            0)
      << err << out;
  EXPECT_NE(out.find("model.patcher.threshold="), std::string::npos) << out;
  const nlohmann::json c = nlohmann::json::parse(std::ifstream(cal));
  EXPECT_NEAR(c.at("mean_patch_size").get<double>(), 3.0, 0.3);
  EXPECT_GT(c.at("threshold").get<double>(), 0.0);
  // Without an entropy model there is nothing to calibrate with.
  EXPECT_EQ(cli({"patch", "calibrate", recipe.string(), "--variant", "blt_space", "--target", "3"}, &out, &err), 1);
  EXPECT_NE(err.find("no entropy model"), std::string::npos) << err;
  EXPECT_EQ(cli({"patch", "calibrate", recipe.string()}, &out, &err), 2);  // --target missing

  // Entropies precomputed beside the shards. The entropy model is one layer with a 32-byte window, so a
  // 32-byte context makes every stored value the model's own entropy over the document (float16 aside):
  // rows of the loader (doc-masked) agree with the model run on them wherever a row holds the window.
  ASSERT_EQ(cli({"patch", "entropies", recipe.string(), "--variant", "blt_entropy", "--chunk", "24", "--context",
                 "32", "--device", "cpu"},
                &out, &err),
            0)
      << err << out;
  ASSERT_TRUE(fs::exists(bytes_data / "entropies.json"));
  DataConfig rows;
  rows.seq_len = 64;
  rows.batch_size = 4;
  rows.prefetch = 0;
  DataBundle bundle = make_data(rows, bytes_data, 1);
  LoadedCheckpoint entropy = load_trained(entropy_run);
  entropy.model->eval();
  int64_t compared = 0;
  for (int b = 0; b < 3; ++b) {
    const Batch batch = bundle.train->next();
    ASSERT_TRUE(batch.entropies.defined());
    at::Tensor direct;
    {
      at::NoGradGuard no_grad;
      direct = blt::next_byte_entropies(entropy.model->forward(batch).logits);
    }
    const at::Tensor tail = at::arange(32, 64);  // positions whose whole window is in the row
    const at::Tensor stored = batch.entropies.index_select(1, tail), recomputed = direct.index_select(1, tail);
    EXPECT_LT((stored - recomputed).abs().max().item<double>(), 5e-3);
    compared += stored.numel();
  }
  EXPECT_GT(compared, 0);
  // Evaluating the entropy-patched arm reads them; another entropy model than the one that made them is
  // an error naming the fix.
  EXPECT_EQ(cli({"eval", (run / "blt_entropy").string(), "--device", "cpu"}, &out, &err), 0) << err;
  const fs::path other = dir.path() / "entropy2";
  ASSERT_EQ(cli({"train", entropy_recipe.string(), "run_dir=" + other.string(), "seed=5", "train.flops_budget=3.0e8"},
                &out, &err),
            0)
      << err;
  const fs::path arm = dir.path() / "arm.yaml";
  std::ofstream(arm) << "name: arm\nrun_dir: " << (dir.path() / "arm").string() << "\nseed: 4\nmodel: " << blt
                     << "patcher: {mode: entropy, threshold: 2.5}, entropy_model: " << other.string() << "}\n"
                     << data << with_budget("1.0e8");
  EXPECT_EQ(cli({"train", arm.string()}, &out, &err), 1);
  EXPECT_NE(err.find("tessera patch entropies"), std::string::npos) << err;
}

// The shipped recipe resolves for both arms: nearly equal parameters, a context four chunks long.
TEST(Cli, ShippedMegalodonRecipeMatchesParametersAndSpansSeveralChunks) {
  const std::string file = std::string(TESSERA_SOURCE_DIR) + "/recipes/megalodon_vs_dense.yaml";
  // A command-line override reaches a variant that replaces the model section (megalodon here) and beats
  // the variant's own settings.
  const LoadedRecipe overridden = load_recipe(file, {"model.chunk_size=64", "train.lr=1.0e-4"}, "megalodon");
  EXPECT_EQ(overridden.config.model["chunk_size"].as<int64_t>(), 64);
  EXPECT_EQ(overridden.config.train.lr, 1.0e-4);
  int64_t params[2];
  int i = 0;
  for (const char* variant : {"dense", "megalodon"}) {
    const LoadedRecipe r = load_recipe(file, {}, variant);
    ModelContext context;
    context.vocab_size = 260;  // the bytes adapter's layout
    const auto model = build_model(r.config.model, context);
    EXPECT_EQ(model->arch(), variant);
    params[i++] = model->parameter_count();
    if (std::string(variant) == "megalodon") {
      EXPECT_EQ(r.config.data.seq_len, 4 * r.config.model["chunk_size"].as<int64_t>());
    }
  }
  EXPECT_NEAR(static_cast<double>(params[1]) / static_cast<double>(params[0]), 1.0, 0.05);
}

TEST(Cli, PreparedDataErrorsNameTheFile) {
  TempDir dir;
  const fs::path run = dir.path() / "run";
  const fs::path recipe = write_recipe(dir, tiny_recipe(run, 2));
  std::string out, err;
  ASSERT_EQ(cli({"prepare", recipe.string()}, &out, &err), 0) << err;
  // Corrupt one byte of the training shard: training refuses it, naming the file.
  const fs::path shard = run / "data" / "train_00000.bin";
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(200);
    const char c = static_cast<char>(f.get());
    f.seekp(200);
    f.put(static_cast<char>(~c));
  }
  EXPECT_EQ(cli({"train", recipe.string()}, &out, &err), 1);
  EXPECT_NE(err.find("train_00000.bin"), std::string::npos) << err;
  EXPECT_NE(err.find("checksum"), std::string::npos) << err;
  // --force rebuilds it.
  ASSERT_EQ(cli({"prepare", recipe.string(), "--force"}, &out, &err), 0) << err;
  EXPECT_EQ(cli({"train", recipe.string()}, &out, &err), 0) << err;
}

TEST(Cli, BenchDataRunsOnASyntheticDataset) {
  std::string out, err;
  ASSERT_EQ(cli({"bench", "data", "--batch", "4", "--seq", "128", "--batches", "20", "--synthetic-mtokens", "0.2"},
                &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("tokens/s"), std::string::npos) << out;
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

// Every recipe shipped under recipes/ parses: language-model recipes (and each of their variants) through
// the typed config, artifact recipes name a known task.
TEST(Cli, EveryShippedRecipeParses) {
  int lm = 0, tasks = 0;
  for (const auto& entry : fs::recursive_directory_iterator(fs::path(TESSERA_SOURCE_DIR) / "recipes")) {
    if (entry.path().extension() != ".yaml") continue;
    const std::string file = entry.path().string();
    const std::string task = cli::recipe_task(file);
    if (task != "lm") {
      EXPECT_NO_THROW(cli::find_task(task, file)) << file;
      ++tasks;
      continue;
    }
    ++lm;
    LoadedRecipe base;
    ASSERT_NO_THROW(base = load_recipe(file, {})) << file;
    for (const auto& v : base.config.variants) EXPECT_NO_THROW(load_recipe(file, {}, v.name)) << file << " " << v.name;
  }
  EXPECT_GE(lm, 8);
  EXPECT_GE(tasks, 5);
}

}  // namespace
}  // namespace tessera
