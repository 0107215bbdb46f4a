#include "core/io/checkpoint.h"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include "tests/core/io/io_test_util.h"

namespace tessera::io {
namespace {

using namespace tessera::io::testing;

CheckpointContents make_contents(int64_t step) {
  CheckpointContents c;
  const float s = static_cast<float>(step);
  c.model = {{"layers.0.weight", at::full({3, 2}, s)},
             {"embed.weight", at::arange(6, at::kFloat).reshape({2, 3}).to(at::kBFloat16)}};
  c.optimizer = {{"step", at::scalar_tensor(step, at::kLong)},
                 {"exp_avg.layers.0.weight", at::full({3, 2}, s * 0.5f)}};
  c.state = {{"format", "tessera-checkpoint"}, {"step", step}, {"rng", {{"seed", 1234}}}};
  return c;
}

std::string read_text(const fs::path& p) { return read_bytes(p); }

// A pid that certainly belongs to no running process: a child that has exited and been reaped.
long dead_pid() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  return static_cast<long>(child);
}

void copy_checkpoint(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  for (const char* f : {kModelFile, kOptimizerFile, kStateFile}) fs::copy_file(from / f, to / f);
}

TEST(Checkpoint, DirNames) {
  EXPECT_EQ(checkpoint_dir_name(42), "step_00000042");
  EXPECT_EQ(checkpoint_dir_name(0), "step_00000000");
  EXPECT_EQ(checkpoint_dir_name(1234567890), "step_1234567890");
  expect_error([] { checkpoint_dir_name(-1); }, {"-1"});
}

TEST(Checkpoint, SaveAndLoadRoundTrip) {
  TempDir dir;
  CheckpointManager manager(dir / "checkpoints", 3);
  EXPECT_EQ(manager.root(), dir / "checkpoints");
  EXPECT_FALSE(manager.latest().has_value());  // root does not exist yet
  EXPECT_TRUE(manager.steps().empty());

  const fs::path saved = manager.save(42, make_contents(42));
  EXPECT_EQ(saved, dir / "checkpoints" / "step_00000042");
  EXPECT_EQ(entries(saved), (std::set<std::string>{kModelFile, kOptimizerFile, kStateFile}));
  EXPECT_EQ(entries(dir / "checkpoints"), (std::set<std::string>{"latest", "step_00000042"}));
  EXPECT_EQ(read_text(dir / "checkpoints" / "latest"), "step_00000042\n");
  EXPECT_EQ(manager.latest(), saved);
  EXPECT_EQ(manager.steps(), (std::vector<int64_t>{42}));

  // Model weights carry the metadata Hugging Face loaders look for.
  EXPECT_EQ(load_safetensors(saved / kModelFile).metadata.at("format"), "pt");
  // state.json is pretty printed.
  const std::string state_text = read_text(saved / kStateFile);
  EXPECT_NE(state_text.find("\n  \"format\": \"tessera-checkpoint\""), std::string::npos)
      << state_text;

  const CheckpointContents expected = make_contents(42);
  const CheckpointContents loaded = load_checkpoint(saved);
  EXPECT_EQ(loaded.state, expected.state);
  auto check_named = [](const NamedTensors& actual, const NamedTensors& want) {
    ASSERT_EQ(actual.size(), want.size());
    std::map<std::string, at::Tensor> got(actual.begin(), actual.end());
    for (const auto& [name, t] : want) {
      ASSERT_TRUE(got.count(name)) << name;
      EXPECT_EQ(got[name].scalar_type(), t.scalar_type()) << name;
      EXPECT_TRUE(at::equal(got[name], t)) << name;
    }
    for (size_t i = 1; i < actual.size(); ++i) EXPECT_LT(actual[i - 1].first, actual[i].first);
  };
  check_named(loaded.model, expected.model);
  check_named(loaded.optimizer, expected.optimizer);
}

TEST(Checkpoint, KeepLastPrunesOldest) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 2);
  for (int64_t step : {10, 20, 30, 40}) manager.save(step, make_contents(step));
  EXPECT_EQ(manager.steps(), (std::vector<int64_t>{30, 40}));
  EXPECT_EQ(manager.latest(), dir / "step_00000040");
  EXPECT_EQ(entries(dir.path()),
            (std::set<std::string>{"latest", "step_00000030", "step_00000040"}));
}

TEST(Checkpoint, KeepLastNeverDeletesTheOneJustWritten) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 2);
  manager.save(10, make_contents(10));
  manager.save(20, make_contents(20));
  manager.save(5, make_contents(5));  // older than every kept one: still kept, and latest
  EXPECT_EQ(manager.steps(), (std::vector<int64_t>{5, 20}));
  EXPECT_EQ(manager.latest(), dir / "step_00000005");
  CheckpointManager one(dir / "one", 1);
  one.save(1, make_contents(1));
  one.save(2, make_contents(2));
  EXPECT_EQ(one.steps(), (std::vector<int64_t>{2}));
}

TEST(Checkpoint, KeepAllWhenKeepLastIsNotPositive) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 0);
  for (int64_t step : {1, 2, 3, 4, 5}) manager.save(step, make_contents(step));
  EXPECT_EQ(manager.steps(), (std::vector<int64_t>{1, 2, 3, 4, 5}));
  CheckpointManager negative(dir / "neg", -1);
  for (int64_t step : {1, 2, 3}) negative.save(step, make_contents(step));
  EXPECT_EQ(negative.steps().size(), 3u);
}

TEST(Checkpoint, SavingTheSameStepReplacesIt) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 0);
  manager.save(7, make_contents(7));
  CheckpointContents second = make_contents(7);
  second.state["again"] = true;
  second.model = {{"only", at::ones({2})}};
  const fs::path saved = manager.save(7, second);
  const CheckpointContents loaded = load_checkpoint(saved);
  EXPECT_EQ(loaded.state.value("again", false), true);
  ASSERT_EQ(loaded.model.size(), 1u);
  EXPECT_EQ(loaded.model[0].first, "only");
  EXPECT_EQ(entries(dir.path()), (std::set<std::string>{"latest", "step_00000007"}));
}

TEST(Checkpoint, FailedSaveLeavesNothingBehind) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 0);
  manager.save(1, make_contents(1));
  CheckpointContents bad = make_contents(2);
  bad.optimizer.emplace_back("step", at::zeros({1}));  // duplicate name
  expect_error([&] { manager.save(2, bad); }, {"optimizer.safetensors", "duplicate"});
  EXPECT_EQ(entries(dir.path()), (std::set<std::string>{"latest", "step_00000001"}));
  EXPECT_EQ(manager.latest(), dir / "step_00000001");
  expect_error([&] { manager.save(-3, make_contents(1)); }, {"-3"});
}

TEST(Checkpoint, LeftoverTemporaryDirsAreIgnoredAndCleanedUp) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 0);
  const fs::path good = manager.save(5, make_contents(5));
  // A crashed writer's complete-looking temporary of a newer step, plus a stale latest temp.
  const std::string dead = std::to_string(dead_pid());
  const std::string stale_dir = "step_00000009.tmp-" + dead + "-0";
  const std::string stale_file = "latest.tmp-" + dead + "-3";
  copy_checkpoint(good, dir / stale_dir);
  write_bytes(dir / stale_file, stale_dir + "\n");
  // A temporary owned by a live process (this one) must be left alone.
  const std::string live_dir = "step_00000008.tmp-" + std::to_string(::getpid()) + "-999999";
  copy_checkpoint(good, dir / live_dir);

  EXPECT_EQ(manager.steps(), (std::vector<int64_t>{5}));
  EXPECT_EQ(manager.latest(), good);
  fs::remove(dir / "latest");  // without the pointer: newest *complete* step dir
  EXPECT_EQ(manager.latest(), good);
  EXPECT_EQ(resolve_checkpoint(dir.path()), good);

  manager.save(6, make_contents(6));
  const auto after = entries(dir.path());
  EXPECT_EQ(after.count(stale_dir), 0u);
  EXPECT_EQ(after.count(stale_file), 0u);
  EXPECT_EQ(after.count(live_dir), 1u);
  EXPECT_EQ(manager.steps(), (std::vector<int64_t>{5, 6}));
}

TEST(Checkpoint, LatestWithoutPointerSkipsIncompleteDirs) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 0);
  manager.save(3, make_contents(3));
  manager.save(4, make_contents(4));
  fs::remove(dir / "latest");
  fs::create_directories(dir / "step_00000099");  // no files: not a checkpoint
  copy_checkpoint(dir / "step_00000004", dir / "step_00000050");
  fs::remove(dir / "step_00000050" / kStateFile);  // incomplete
  fs::create_directories(dir / "step_abc");
  write_bytes(dir / "step_00000077", "a file, not a dir");
  EXPECT_EQ(manager.steps(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(manager.latest(), dir / "step_00000004");
}

TEST(Checkpoint, LatestPointerErrors) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 0);
  manager.save(3, make_contents(3));
  write_bytes(dir / "latest", "step_00000099\n");
  expect_error([&] { manager.latest(); }, {(dir / "latest").string(), "step_00000099",
                                           "does not exist"});
  write_bytes(dir / "latest", "  \n");
  expect_error([&] { manager.latest(); }, {(dir / "latest").string(), "malformed"});
  write_bytes(dir / "latest", "../elsewhere");
  expect_error([&] { manager.latest(); }, {(dir / "latest").string(), "malformed"});
}

TEST(Checkpoint, ResolveAcceptsTheThreePathKinds) {
  TempDir dir;
  const fs::path run = dir / "run";
  CheckpointManager manager(run / "checkpoints", 0);
  manager.save(1, make_contents(1));
  const fs::path second = manager.save(2, make_contents(2));

  EXPECT_EQ(resolve_checkpoint(second), second);                          // checkpoint dir
  EXPECT_EQ(resolve_checkpoint(run / "checkpoints" / "step_00000001"),
            run / "checkpoints" / "step_00000001");
  EXPECT_EQ(resolve_checkpoint(run / "checkpoints"), second);             // checkpoints root
  EXPECT_EQ(resolve_checkpoint(run), second);                             // run dir
  EXPECT_EQ(resolve_checkpoint(run / "checkpoints" / "latest"), second);  // the pointer file
  EXPECT_EQ(resolve_checkpoint(second / kModelFile), second);

  // The pointer wins over the numerically newest dir.
  write_bytes(run / "checkpoints" / "latest", "step_00000001\n");
  EXPECT_EQ(resolve_checkpoint(run), run / "checkpoints" / "step_00000001");
  // Without a pointer, the newest complete step dir.
  fs::remove(run / "checkpoints" / "latest");
  EXPECT_EQ(resolve_checkpoint(run / "checkpoints"), second);
}

TEST(Checkpoint, ResolveExplainsWhatWasExpected) {
  TempDir dir;
  expect_error([&] { resolve_checkpoint(dir / "missing"); },
               {(dir / "missing").string(), "does not exist", "checkpoint dir", "run dir"});
  fs::create_directories(dir / "unrelated" / "stuff");
  expect_error([&] { resolve_checkpoint(dir / "unrelated"); },
               {(dir / "unrelated").string(), "holds no checkpoint", "model.safetensors"});
  write_bytes(dir / "notes.txt", "hi");
  expect_error([&] { resolve_checkpoint(dir / "notes.txt"); },
               {(dir / "notes.txt").string(), "is a file"});
  fs::create_directories(dir / "fresh_run" / "checkpoints");
  expect_error([&] { resolve_checkpoint(dir / "fresh_run"); },
               {(dir / "fresh_run").string(), "no checkpoint yet"});
  fs::create_directories(dir / "broken_root" / "step_00000003");
  expect_error([&] { resolve_checkpoint(dir / "broken_root"); },
               {(dir / "broken_root").string(), "none is complete"});
}

TEST(Checkpoint, LoadErrorsNameTheMissingOrCorruptFile) {
  TempDir dir;
  CheckpointManager manager(dir.path(), 0);
  const fs::path saved = manager.save(1, make_contents(1));

  fs::rename(saved / kOptimizerFile, dir / "moved.safetensors");
  expect_error([&] { load_checkpoint(saved); },
               {saved.string(), "missing optimizer.safetensors"});
  fs::rename(dir / "moved.safetensors", saved / kOptimizerFile);

  const std::string model = read_bytes(saved / kModelFile);
  write_bytes(saved / kModelFile, model.substr(0, model.size() - 3));
  expect_error([&] { load_checkpoint(saved); }, {(saved / kModelFile).string(), "truncated"});
  write_bytes(saved / kModelFile, model);

  write_bytes(saved / kStateFile, "{\"step\": ");
  expect_error([&] { load_checkpoint(saved); }, {(saved / kStateFile).string(), "not valid JSON"});

  expect_error([&] { load_checkpoint(dir / "nope"); }, {(dir / "nope").string(), "does not exist"});
}

}  // namespace
}  // namespace tessera::io
