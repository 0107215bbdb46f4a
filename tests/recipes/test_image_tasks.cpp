// End to end: the image tokenizer tasks through `tessera run` (artifact, eval.json, reconstructions.png,
// skipping a finished run), strict recipe keys, and `tessera generate encode-image / decode-image`.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/train/metrics.h"
#include "modalities/image/image_io.h"
#include "modalities/image_latent/vae.h"
#include "modalities/image_vq/vq_tokenizer.h"
#include "modalities/registry.h"
#include "recipes/cli/commands.h"
#include "recipes/cli/task_image.h"
#include "temp_dir.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;

// {channels, height, width} of a PNG from its IHDR chunk: no decoder needed, so these checks also run
// in builds without OpenCV. Tessera writes 8-bit RGB (colour type 2).
std::vector<int64_t> png_shape(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char h[26] = {};
  in.read(reinterpret_cast<char*>(h), sizeof h);
  EXPECT_TRUE(in && h[1] == 'P' && h[2] == 'N' && h[3] == 'G') << path << " is not a PNG";
  auto be32 = [&](int at) { return (int64_t{h[at]} << 24) | (h[at + 1] << 16) | (h[at + 2] << 8) | h[at + 3]; };
  return {h[25] == 2 ? 3 : -1, be32(20), be32(16)};
}

std::string tiny_recipe(const std::string& task, const fs::path& run_dir, const std::string& model_extra) {
  return "task: " + task + "\nname: tiny\nrun_dir: " + run_dir.string() +
         "\nseed: 3\n"
         "data: {source: scenes, size: 16, train_images: 16, val_images: 4, scenes: {size: 32}}\n"
         "model: {channels: 8, max_channels: 16, downsample: 2" + model_extra + "}\n"
         "train: {steps: 6, batch_size: 4, lr: 2.0e-3, warmup_steps: 1, device: cpu, log_every: 3, eval_every: 3}\n"
         "recon_images: 4\n";
}

fs::path write_file(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

TEST(ImageTasks, VqTokenizerRunWritesItsOutputsSkipsWhenDoneAndDecodesTokens) {
  test::ScratchDir dir("image_tasks");
  const fs::path run_dir = dir.path / "run";
  const fs::path recipe =
      write_file(dir.path / "vq.yaml", tiny_recipe("vq_tokenizer", run_dir, ", codebook_size: 16, code_dim: 4"));
  ASSERT_EQ(cli::main_dispatch({"run", recipe.string()}), 0);
  for (const char* f : {"tokenizer.safetensors", "eval.json", "reconstructions.png", "metrics.jsonl", "config.yaml"})
    EXPECT_TRUE(fs::exists(run_dir / f)) << f;
  const nlohmann::json ev = read_json(run_dir / "eval.json");
  for (const char* key : {"val_psnr", "val_mse", "codebook_usage", "perplexity", "images_per_s"})
    EXPECT_TRUE(ev.contains(key)) << key << " missing from " << ev.dump();
  EXPECT_GT(ev["codebook_usage"].get<double>(), 0.0);
  EXPECT_LE(ev["codebook_usage"].get<double>(), 1.0);
  EXPECT_GT(ev["images_per_s"].get<double>(), 0.0);
  // reconstructions.png: 2 rows of 4 cells of 16 px with 2 px padding.
  EXPECT_EQ(png_shape(run_dir / "reconstructions.png"), (std::vector<int64_t>{3, 2 + 2 * 18, 2 + 4 * 18}));
  // Metrics: steps 3 and 6 logged, an eval at step 3 and the final one.
  int steps = 0, evals = 0;
  for (const auto& m : read_metrics((run_dir / "metrics.jsonl").string())) {
    steps += m.contains("loss");
    evals += m.contains("val_psnr");
  }
  EXPECT_EQ(steps, 2);
  EXPECT_EQ(evals, 2);

  // A second run finds it finished and leaves it alone.
  const auto written = fs::last_write_time(run_dir / "tokenizer.safetensors");
  ASSERT_EQ(cli::main_dispatch({"run", recipe.string()}), 0);
  EXPECT_EQ(fs::last_write_time(run_dir / "tokenizer.safetensors"), written);

  // Round trip through token files: encode two scenes, decode them to a grid PNG.
  const fs::path tokens = dir.path / "tokens.txt", png = dir.path / "decoded.png";
  ASSERT_EQ(cli::main_dispatch({"generate", "encode-image", "--tokenizer", run_dir.string(), "--scenes", "2", "--out",
                                tokens.string()}),
            0);
  std::ifstream in(tokens);
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    std::istringstream ids(line);
    int64_t id = 0, count = 0;
    while (ids >> id) {
      EXPECT_TRUE(id >= 0 && id < 16) << id;
      ++count;
    }
    EXPECT_EQ(count, 16);  // 16 px / 4 -> 4x4
    ++lines;
  }
  EXPECT_EQ(lines, 2);
  ASSERT_EQ(cli::main_dispatch({"generate", "decode-image", "--tokenizer", (run_dir / "tokenizer.safetensors").string(),
                                "--tokens", tokens.string(), "--out", png.string()}),
            0);
  EXPECT_EQ(png_shape(png), (std::vector<int64_t>{3, 2 + 18, 2 + 2 * 18}));

  // A JSON list per line works too, and the single image is written as it is.
  write_file(tokens, "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\n");
  ASSERT_EQ(cli::main_dispatch({"generate", "decode-image", "--tokenizer", run_dir.string(), "--tokens",
                                tokens.string(), "--out", png.string()}),
            0);
  EXPECT_EQ(png_shape(png), (std::vector<int64_t>{3, 16, 16}));
  // Ids beyond the codebook and malformed files fail with exit code 1.
  write_file(tokens, "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 99\n");
  EXPECT_EQ(cli::main_dispatch({"generate", "decode-image", "--tokenizer", run_dir.string(), "--tokens",
                                tokens.string(), "--out", png.string()}),
            1);
  write_file(tokens, "0 1 x\n");
  EXPECT_EQ(cli::main_dispatch({"generate", "decode-image", "--tokenizer", run_dir.string(), "--tokens",
                                tokens.string(), "--out", png.string()}),
            1);
}

TEST(ImageTasks, VaeRunStoresTheScalingFactorForTheAdapter) {
  test::ScratchDir dir("image_tasks");
  const fs::path run_dir = dir.path / "vae";
  const fs::path recipe = write_file(dir.path / "vae.yaml", tiny_recipe("vae", run_dir, ", latent_channels: 2"));
  ASSERT_EQ(cli::main_dispatch({"train", recipe.string()}), 0);
  const nlohmann::json ev = read_json(run_dir / "eval.json");
  for (const char* key : {"val_psnr", "kl", "scaling_factor", "images_per_s"})
    EXPECT_TRUE(ev.contains(key)) << key << " missing from " << ev.dump();
  EXPECT_TRUE(fs::exists(run_dir / "reconstructions.png"));
  // The adapter reads it from vae.safetensors; the path is relative to the base directory.
  const auto adapter = make_adapter({{"type", "image_latent"}, {"model", "vae"}, {"patch_size", 1}}, dir.path);
  EXPECT_DOUBLE_EQ(adapter->describe()["scaling_factor"].get<double>(), ev["scaling_factor"].get<double>());
  Segment scene;
  scene.modality = "image";
  scene.tensor = image::generate_scene(image::SceneConfig{}, 0).image;
  EXPECT_EQ(adapter->encode(scene).latents.sizes(), (at::IntArrayRef{16, 2}));
}

TEST(ImageTasks, RecipeErrorsNameTheKey) {
  test::ScratchDir dir("image_tasks");
  const std::string text = tiny_recipe("vq_tokenizer", dir.path / "run", ", codebook_sise: 16");
  cli::TaskContext context;
  context.file = write_file(dir.path / "bad.yaml", text).string();
  try {
    cli::vq_tokenizer_task(context);
    FAIL() << "an unknown key was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("codebook_sise"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("codebook_size"), std::string::npos) << e.what();
  }
  // Overrides are checked the same way, and bad values name their field.
  context.file = write_file(dir.path / "good.yaml", tiny_recipe("vq_tokenizer", dir.path / "run", "")).string();
  context.overrides = {"train.stepz=3"};
  EXPECT_THROW(cli::vq_tokenizer_task(context), Error);
  context.overrides = {"data.size=18"};  // not a multiple of 4 (downsample 2)
  try {
    cli::vq_tokenizer_task(context);
    FAIL() << "an image size the net cannot take was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not divisible by the downsampling factor 4"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cli::main_dispatch({"run", (dir.path / "bad.yaml").string()}), 1);
}

}  // namespace
}  // namespace tessera
