#include "recipes/cli/task_image.h"

#include <cxxopts.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include "core/config.h"
#include "core/error.h"
#include "core/io/files.h"
#include "core/progress.h"
#include "core/train/runtime.h"
#include "modalities/image/autoencoder_train.h"
#include "modalities/image/image_io.h"
#include "modalities/image/scenes.h"
#include "modalities/image_latent/vae.h"
#include "modalities/image_vq/vq_tokenizer.h"
#include "recipes/cli/options.h"

namespace tessera::cli {
namespace fs = std::filesystem;

namespace {

// The recipe of an image autoencoder task; `Model` is the model section's typed config.
template <class Model>
struct AutoencoderRecipe {
  std::string task;
  std::string name = "image_tokenizer";
  std::string run_dir;  // "" -> runs/<name>
  int64_t seed = 0;
  image::ImageDataConfig data;
  Model model;
  image::AutoencoderTrainConfig train;
  int64_t recon_images = 8;

  template <class V>
  void fields(V& v) {
    v.required("task", task, "vq_tokenizer or vae");
    v.optional("name", name, "recipe name");
    v.optional("run_dir", run_dir, "where the artifact, metrics and checkpoints go (default runs/<name>)");
    v.optional("seed", seed, "seed of the weights init and the batch order");
    v.optional("data", data);
    v.optional("model", model);
    v.optional("train", train);
    v.optional("recon_images", recon_images, "validation images shown in reconstructions.png");
  }
};

template <class Model>
AutoencoderRecipe<Model> load_autoencoder_recipe(const TaskContext& context, const std::string& task) {
  auto recipe = load_task_config<AutoencoderRecipe<Model>>(context);
  check(recipe.task == task, "recipe ", context.file, ": task '", recipe.task, "' reached the ", task, " task");
  check(recipe.recon_images >= 1, "recon_images must be positive, got ", recipe.recon_images);
  return recipe;
}

void print_eval_summary(const std::string& task, const nlohmann::json& ev) {
  std::string line = str(task, ": val PSNR ", ev.value("val_psnr", 0.0), " dB (MSE ", ev.value("val_mse", 0.0), ")");
  if (ev.contains("codebook_usage"))
    line += str(", codebook usage ", 100.0 * ev["codebook_usage"].get<double>(), "%, perplexity ",
                ev.value("perplexity", 0.0), " of ", ev.value("codebook_size", 0));
  if (ev.contains("scaling_factor"))
    line += str(", latent scaling factor ", ev["scaling_factor"].get<double>(), ", KL ", ev.value("kl", 0.0));
  if (ev.contains("images_per_s")) line += str(", ", format_count(ev["images_per_s"].get<double>()), " images/s");
  std::printf("%s\n", line.c_str());
}

// Loads the recipe and data, builds the model with `make` from the model config completed by the data's
// image size and channels, trains, and reports. A finished run is skipped unless --force.
template <class Model, class Make>
int run_autoencoder_task(const TaskContext& context, const std::string& task, const std::string& artifact_file,
                         Make make) {
  const auto recipe = load_autoencoder_recipe<Model>(context, task);
  const fs::path run_dir = recipe.run_dir;
  if (context.force) remove_tree(run_dir);
  if (image::autoencoder_finished(run_dir, artifact_file)) {
    std::printf("%s: %s is finished (%s, eval.json); --force starts over\n", task.c_str(), run_dir.string().c_str(),
                artifact_file.c_str());
    std::ifstream in(run_dir / image::kEvalFile);
    print_eval_summary(task, nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false));
    return 0;
  }
  seed_everything(static_cast<uint64_t>(recipe.seed));
  const auto t0 = std::chrono::steady_clock::now();
  const image::ImageSet data = image::load_image_data(recipe.data, fs::path(context.file).parent_path().string());
  std::printf("%s: %ld train + %ld val images from %s in %.1fs\n", task.c_str(), (long)data.train.size(0),
              (long)data.val.size(0), recipe.data.source.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  image::ImageModelConfig<Model> model_config;  // the image shape is the data's
  model_config.image_size = recipe.data.size;
  model_config.channels = data.channels();
  model_config.model = recipe.model;
  const std::unique_ptr<image::TrainableAutoencoder> trainable = make(model_config);

  image::AutoencoderRun run;
  run.task = task;
  run.run_dir = run_dir;
  run.artifact_file = artifact_file;
  run.train = recipe.train;
  run.config = config::to_json(recipe);
  run.seed = recipe.seed;
  run.require_checkpoint = context.resume;
  run.recon_images = recipe.recon_images;
  fs::create_directories(run_dir);
  write_task_config(run_dir, config::to_yaml(recipe));
  const image::AutoencoderResult result = image::train_autoencoder(*trainable, data, run);
  if (result.interrupted) return 0;
  print_eval_summary(task, result.eval);
  std::printf("%s: wrote %s, %s, %s\n", task.c_str(), result.artifact.string().c_str(),
              (run_dir / image::kEvalFile).string().c_str(), (run_dir / image::kReconstructionsFile).string().c_str());
  return 0;
}

// ---- generate decode-image / encode-image -----------------------------------------------------------

// One image's ids per non-empty line; whitespace, commas and brackets separate ids.
std::vector<std::vector<int64_t>> read_token_lines(const fs::path& path) {
  std::ifstream in(path);
  check(static_cast<bool>(in), "cannot open tokens file '", path.string(), "'");
  std::vector<std::vector<int64_t>> images;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    for (char& ch : line)
      if (ch == ',' || ch == '[' || ch == ']') ch = ' ';
    std::istringstream fields(line);
    std::vector<int64_t> ids;
    std::string field;
    while (fields >> field) {
      size_t used = 0;
      int64_t id = 0;
      try {
        id = std::stoll(field, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      check(used == field.size(), path.string(), ":", number, ": '", field,
            "' is not a token id (expected integers separated by spaces or commas)");
      ids.push_back(id);
    }
    if (!ids.empty()) images.push_back(std::move(ids));
  }
  check(!images.empty(), "tokens file '", path.string(), "' holds no token ids");
  return images;
}

}  // namespace

int vq_tokenizer_task(const TaskContext& context) {
  return run_autoencoder_task<image::VqModelConfig>(
      context, "vq_tokenizer", image::kVqArtifactFile, [](const image::VqTokenizerConfig& config) {
        return std::make_unique<image::VqTraining>(std::make_shared<image::VqTokenizerImpl>(config));
      });
}

int vae_task(const TaskContext& context) {
  return run_autoencoder_task<image::VaeModelConfig>(
      context, "vae", image::kVaeArtifactFile, [](const image::VaeConfig& config) {
        return std::make_unique<image::VaeTraining>(std::make_shared<image::VaeImpl>(config),
                                                    config.model.scale_images);
      });
}

int decode_image_command(const Args& args) {
  cxxopts::Options o("tessera generate decode-image",
                     "Decode image token ids (one image per line) with a trained VQ tokenizer into a PNG; several "
                     "images become a grid.\n");
  o.add_options()("tokenizer", "the tokenizer's run directory or tokenizer.safetensors", cxxopts::value<std::string>())(
      "tokens", "tokens file: one image per line, ids separated by spaces or commas", cxxopts::value<std::string>())(
      "out", "the PNG to write", cxxopts::value<std::string>())(
      "columns", "images per grid row (default: up to 8)", cxxopts::value<int64_t>())(
      "device", "cpu, cuda or auto", cxxopts::value<std::string>()->default_value("cpu"))("h,help", "show this help");
  cxxopts::ParseResult r;
  if (!parse_options(o, args, r)) return 0;
  const image::ImageVqAdapter adapter(required_option(r, "tokenizer", o), {}, r["device"].as<std::string>());
  const fs::path tokens = required_option(r, "tokens", o), out = required_option(r, "out", o);
  std::vector<at::Tensor> images;
  int64_t line = 0;
  for (const auto& ids : read_token_lines(tokens)) {
    ++line;
    try {
      images.push_back(adapter.decode_batch(at::tensor(ids, at::kLong).view({1, -1}))[0]);
    } catch (const Error& e) {
      fail(tokens.string(), ", image ", line, ": ", e.what());
    }
  }
  const auto n = static_cast<int64_t>(images.size());
  if (n == 1) {
    image::write_png(out, images[0]);
  } else {
    image::write_grid_png(out, images, r.count("columns") ? r["columns"].as<int64_t>() : std::min<int64_t>(n, 8));
  }
  std::printf("decoded %ld image%s -> %s\n", (long)n, n == 1 ? "" : "s", out.string().c_str());
  return 0;
}

int encode_image_command(const Args& args) {
  cxxopts::Options o("tessera generate encode-image",
                     "Encode images into VQ token ids, one line per image (the input of decode-image).\n");
  o.add_options()("tokenizer", "the tokenizer's run directory or tokenizer.safetensors", cxxopts::value<std::string>())(
      "out", "the tokens file to write", cxxopts::value<std::string>())(
      "images", "image files (PNG, JPEG: needs OpenCV)", cxxopts::value<std::vector<std::string>>())(
      "scenes", "encode the first N validation scenes of the generator instead (no OpenCV needed)",
      cxxopts::value<int64_t>())("device", "cpu, cuda or auto", cxxopts::value<std::string>()->default_value("cpu"))(
      "h,help", "show this help");
  o.parse_positional({"images"});
  o.positional_help("IMAGE...");
  cxxopts::ParseResult r;
  if (!parse_options(o, args, r)) return 0;
  const image::ImageVqAdapter adapter(required_option(r, "tokenizer", o), {}, r["device"].as<std::string>());
  const fs::path out = required_option(r, "out", o);
  std::vector<at::Tensor> images;
  if (r.count("images"))
    for (const auto& path : r["images"].as<std::vector<std::string>>()) images.push_back(image::read_image(path, 0));
  if (r.count("scenes"))
    for (int64_t i = 0; i < r["scenes"].as<int64_t>(); ++i)
      images.push_back(image::generate_scene(image::SceneConfig{}, image::kValSceneOffset + i).image);
  check(!images.empty(), "encode-image: no images: name image files or --scenes N");
  std::ostringstream text;
  for (const at::Tensor& img : images) {
    const Span span = adapter.encode(image::image_segment(img));
    for (size_t i = 0; i < span.ids.size(); ++i) text << (i ? " " : "") << span.ids[i];
    text << "\n";
  }
  write_text_atomic(out, text.str());
  std::printf("encoded %zu image%s (%zu tokens each) -> %s\n", images.size(), images.size() == 1 ? "" : "s",
              static_cast<size_t>(adapter.tokenizer().model->tokens_per_image()), out.string().c_str());
  return 0;
}

}  // namespace tessera::cli
