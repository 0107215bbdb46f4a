// The VQ image tokenizer: quantizer math (EMA update against a float64 hand computation, dead-code
// restarts, straight-through gradients, lookups), training (overfitting a tiny batch, bit-exact resume),
// the artifact and the "image_vq" adapter through make_adapter, and its errors.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <fstream>
#include <set>

#include "core/config.h"
#include "image_test_util.h"
#include "modalities/image_latent/vae.h"
#include "modalities/image_vq/vq_tokenizer.h"
#include "modalities/modalities_test_util.h"
#include "modalities/registry.h"

namespace tessera {
namespace {

using image::VectorQuantizerImpl;
using image::VqModelConfig;
using image::VqTokenizerConfig;
using image::VqTokenizerImpl;
using testing::contains;
using testing::TempDir;
using testing::what_of;

VqTokenizerConfig tiny_config(int64_t size = 16, int64_t channels = 3) {
  VqTokenizerConfig c;
  c.image_size = size;
  c.channels = channels;
  c.model.net = testing::tiny_net();
  c.model.codebook_size = 32;
  c.model.code_dim = 8;
  c.model.dead_code_steps = 20;
  return c;
}

// A tokenizer whose codebook was initialised from data (one training forward), saved as an artifact.
std::shared_ptr<VqTokenizerImpl> saved_tokenizer(const std::filesystem::path& path, int64_t channels = 3) {
  at::manual_seed(3);
  auto model = std::make_shared<VqTokenizerImpl>(tiny_config(16, channels));
  at::Tensor images = testing::tiny_scenes(4, 16);
  if (channels == 1) images = images.to(at::kFloat).mean(1, true).round().to(at::kByte);
  model->forward(image::to_float(images));
  model->eval();
  image::save_vq_tokenizer(path, *model);
  return model;
}

TEST(ImageVq, EmaUpdateMatchesHandComputedFloat64) {
  VqModelConfig c;
  c.codebook_size = 3;
  c.code_dim = 2;
  c.ema_decay = 0.9;
  c.ema_epsilon = 0.01;
  c.dead_code_steps = 0;
  auto q = std::make_shared<VectorQuantizerImpl>(c);
  q->to(at::kDouble);
  const std::array<std::array<double, 2>, 3> e0 = {{{0.0, 0.0}, {1.0, 0.0}, {0.0, 1.0}}};
  q->set_codebook(at::tensor({0.0, 0.0, 1.0, 0.0, 0.0, 1.0}, at::kDouble).view({3, 2}));
  // Four vectors on a 2x2 grid: nearest codes 0, 1, 1, 2.
  const std::array<std::array<double, 2>, 4> z = {{{0.1, 0.1}, {0.9, 0.2}, {1.1, -0.1}, {0.2, 0.8}}};
  const std::array<int, 4> code = {0, 1, 1, 2};
  at::Tensor input = at::empty({1, 2, 2, 2}, at::kDouble);
  for (int i = 0; i < 4; ++i)
    for (int d = 0; d < 2; ++d) input[0][d][i / 2][i % 2] = z[i][d];
  q->train();
  const image::QuantizerOutput out = q->forward(input);

  // By hand: N_k = d + (1-d) n_k (N started at 1), m_k = d e_k + (1-d) sum z, smoothed counts, e_k = m_k / Ñ_k.
  std::array<double, 3> n{}, count{}, smoothed{};
  std::array<std::array<double, 2>, 3> sum{}, expected{};
  for (int i = 0; i < 4; ++i) {
    n[code[i]] += 1;
    for (int d = 0; d < 2; ++d) sum[code[i]][d] += z[i][d];
  }
  double total = 0;
  for (int k = 0; k < 3; ++k) total += count[k] = 0.9 * 1.0 + 0.1 * n[k];
  for (int k = 0; k < 3; ++k) {
    smoothed[k] = (count[k] + 0.01) / (total + 3 * 0.01) * total;
    for (int d = 0; d < 2; ++d) expected[k][d] = (0.9 * e0[k][d] + 0.1 * sum[k][d]) / smoothed[k];
  }
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out.codes.view(-1)[i].item<int64_t>(), code[i]) << i;
  for (int k = 0; k < 3; ++k) {
    EXPECT_NEAR(q->ema_count[k].item<double>(), count[k], 1e-14);
    for (int d = 0; d < 2; ++d) EXPECT_NEAR(q->codebook[k][d].item<double>(), expected[k][d], 1e-14) << k << "," << d;
  }
  // The commitment loss uses the codes before the update: beta * mean (z - e_old)^2.
  double commit = 0;
  for (int i = 0; i < 4; ++i)
    for (int d = 0; d < 2; ++d) commit += std::pow(z[i][d] - e0[code[i]][d], 2);
  EXPECT_NEAR(out.commit_loss.item<double>(), 0.25 * commit / 8, 1e-14);
}

TEST(ImageVq, DeadCodesRestartAtEncoderOutputsOfTheBatch) {
  VqModelConfig c;
  c.codebook_size = 4;
  c.code_dim = 2;
  c.dead_code_steps = 2;
  auto q = std::make_shared<VectorQuantizerImpl>(c);
  q->set_codebook(at::tensor({0.f, 0.f, 1.f, 0.f, 0.f, 1.f, 100.f, 100.f}).view({4, 2}));
  q->train();
  at::manual_seed(0);
  const at::Tensor z = at::rand({2, 2, 3, 3}) * 0.5;  // near codes 0..2, never code 3
  const std::set<std::pair<float, float>> rows = [&] {
    std::set<std::pair<float, float>> s;
    const at::Tensor flat = z.permute({0, 2, 3, 1}).reshape({-1, 2});
    for (int64_t i = 0; i < flat.size(0); ++i) s.insert({flat[i][0].item<float>(), flat[i][1].item<float>()});
    return s;
  }();
  q->forward(z);
  EXPECT_EQ(q->unused_steps[3].item<int64_t>(), 1);
  EXPECT_NEAR(q->codebook[3][0].item<float>(), 100.f, 0.01);  // not yet: one step unused (EMA only)
  q->forward(z);
  const std::pair<float, float> restarted = {q->codebook[3][0].item<float>(), q->codebook[3][1].item<float>()};
  EXPECT_TRUE(rows.count(restarted)) << "code 3 is now (" << restarted.first << ", " << restarted.second
                                     << "), not an encoder output of the batch";
  EXPECT_EQ(q->unused_steps[3].item<int64_t>(), 0);
}

TEST(ImageVq, StraightThroughPassesGradientsToTheEncoder) {
  VqModelConfig c;
  c.codebook_size = 8;
  c.code_dim = 4;
  auto q = std::make_shared<VectorQuantizerImpl>(c);
  q->eval();
  const at::Tensor z = at::randn({2, 4, 3, 3}).requires_grad_(true);
  const image::QuantizerOutput out = q->forward(z);
  // Forward value: the chosen code vectors; backward: the identity.
  EXPECT_TRUE(at::allclose(out.quantized, q->embed(out.codes).permute({0, 3, 1, 2}), 1e-6, 1e-6));
  (out.quantized * at::arange(72).view({2, 4, 3, 3})).sum().backward();
  EXPECT_TRUE(at::equal(z.grad(), at::arange(72, at::kFloat).view({2, 4, 3, 3})));

  // And through the whole tokenizer, every encoder parameter gets a gradient from the reconstruction.
  VqTokenizerImpl model(tiny_config());
  model.train();
  const auto result = model.forward(image::to_float(testing::tiny_scenes(2, 16)));
  result.recon.pow(2).mean().backward();
  for (const auto& p : model.encoder->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
  }
}

TEST(ImageVq, CosineLookupIgnoresLengthWhereL2DoesNot) {
  VqModelConfig c;
  c.codebook_size = 2;
  c.code_dim = 2;
  const at::Tensor codes = at::tensor({10.f, 0.f, 0.f, 1.f}).view({2, 2});
  const at::Tensor x = at::tensor({5.f, 4.f}).view({1, 2});  // cos: code 0 (0.78 vs 0.62); L2: code 1 (34 vs 41)
  auto l2 = std::make_shared<VectorQuantizerImpl>(c);
  l2->set_codebook(codes);
  EXPECT_EQ(l2->nearest(x).item<int64_t>(), 1);
  c.lookup = "cosine";
  auto cosine = std::make_shared<VectorQuantizerImpl>(c);
  cosine->set_codebook(codes);
  EXPECT_EQ(cosine->nearest(x).item<int64_t>(), 0);
  EXPECT_NEAR(cosine->embed(at::tensor({0}, at::kLong)).norm().item<double>(), 1.0, 1e-6);
}

TEST(ImageVq, PerplexityOfCodeHistograms) {
  EXPECT_NEAR(image::code_perplexity(at::tensor({5.0, 5.0, 5.0, 5.0})), 4.0, 1e-12);
  EXPECT_NEAR(image::code_perplexity(at::tensor({9.0, 0.0, 0.0})), 1.0, 1e-12);
  const double p = 0.25, q = 0.75;
  EXPECT_NEAR(image::code_perplexity(at::tensor({1.0, 3.0, 0.0})), std::exp(-(p * std::log(p) + q * std::log(q))), 1e-12);
}

TEST(ImageVq, OverfitsATinyBatch) {
  TempDir dir;
  at::manual_seed(0);
  const at::Tensor images = testing::tiny_scenes(8, 16);
  auto model = std::make_shared<VqTokenizerImpl>(tiny_config());
  image::VqTraining trainable(model);
  const image::AutoencoderRun run = testing::tiny_run(dir.path(), "vq_tokenizer", image::kVqArtifactFile, 150);
  const image::ImageSet data{images, images};
  // Before training the codebook is random: initialise it from data first so the baseline is fair.
  model->train();
  model->forward(image::to_float(images));
  const double before = image::evaluate_autoencoder(trainable, images, 8, at::kCPU, false)["val_mse"];
  const image::AutoencoderResult result = image::train_autoencoder(trainable, data, run);
  const double after = result.eval["val_mse"];
  EXPECT_LT(after, 0.25 * before) << "val MSE " << before << " -> " << after;
  EXPECT_GT(result.eval["val_psnr"].get<double>(), image::psnr_from_mse(before) + 6.0);
  EXPECT_GT(result.eval["codebook_usage"].get<double>(), 0.0);
  EXPECT_GE(result.eval["perplexity"].get<double>(), 1.0);
  EXPECT_TRUE(std::filesystem::exists(dir / image::kVqArtifactFile));
  EXPECT_TRUE(std::filesystem::exists(dir / image::kReconstructionsFile));
  EXPECT_TRUE(std::filesystem::exists(dir / image::kEvalFile));
}

TEST(ImageVq, ResumeFromACheckpointIsBitExact) {
  const at::Tensor images = testing::tiny_scenes(12, 16);
  const image::ImageSet data{images, images.slice(0, 0, 4)};
  auto train = [&](const std::filesystem::path& dir, int64_t steps) {
    at::manual_seed(5);
    image::VqTraining trainable(std::make_shared<VqTokenizerImpl>(tiny_config()));
    image::AutoencoderRun run = testing::tiny_run(dir, "vq_tokenizer", image::kVqArtifactFile, steps);
    run.train.checkpoint_every = 3;
    run.train.schedule = "constant";  // the learning rate must not depend on the planned total
    return image::train_autoencoder(trainable, data, run);
  };
  TempDir straight("resume_a"), resumed("resume_b");
  const auto full = train(straight.path(), 8);
  train(resumed.path(), 4);  // checkpoint at step 3, then finishes at 4
  std::filesystem::remove(resumed / image::kEvalFile);
  const auto rest = train(resumed.path(), 8);  // continues from step 3
  ASSERT_EQ(rest.start_step, 3);
  ASSERT_EQ(rest.losses.size(), 5u);
  for (size_t i = 0; i < rest.losses.size(); ++i) EXPECT_EQ(rest.losses[i], full.losses[3 + i]) << "step " << 4 + i;
}

TEST(ImageVq, AdapterRoundTripThroughMakeAdapter) {
  TempDir dir;
  const auto model = saved_tokenizer(dir / "tok" / image::kVqArtifactFile);
  // A relative model path resolved against base_dir, and a run directory in place of the file.
  const auto adapter = make_adapter({{"type", "image_vq"}, {"model", "tok"}}, dir.path());
  EXPECT_EQ(adapter->vocab_size(), 32);
  EXPECT_EQ(adapter->modality(), "image");
  Segment image;
  image.modality = "image";
  image.tensor = testing::tiny_scenes(1, 32)[0].slice(2, 0, 28).contiguous();  // 3x32x28: resized + cropped
  const Span span = adapter->encode(image);
  ASSERT_EQ(span.ids.size(), 16u);  // 16 px / 4 = 4x4 grid
  for (const int64_t id : span.ids) EXPECT_TRUE(id >= 0 && id < 32) << id;
  const Segment decoded = adapter->decode(span);
  EXPECT_EQ(decoded.modality, "image");
  EXPECT_EQ(decoded.tensor.sizes(), (at::IntArrayRef{3, 16, 16}));
  EXPECT_EQ(decoded.tensor.scalar_type(), at::kByte);

  // The ids are what the model computes on the resized image.
  const at::Tensor x = image::to_float(image::resize_center_crop(image.tensor, 16)).unsqueeze(0);
  EXPECT_TRUE(at::equal(model->encode(x).view(-1), at::tensor(span.ids, at::kLong)));

  // describe() rebuilds an equal adapter: same ids, same pixels.
  const nlohmann::json d = adapter->describe();
  EXPECT_EQ(d["type"], "image_vq");
  EXPECT_EQ(d["model"], "tok");
  EXPECT_EQ(d["crc32"], file_crc32(dir / "tok" / image::kVqArtifactFile));
  const auto again = make_adapter(d, dir.path());
  EXPECT_EQ(again->encode(image).ids, span.ids);
  EXPECT_TRUE(at::equal(again->decode(span).tensor, decoded.tensor));

  // A grey image feeds an RGB tokenizer as three equal channels.
  Segment grey;
  grey.modality = "image";
  grey.tensor = image.tensor.slice(0, 0, 1).contiguous();
  Segment rgb = grey;
  rgb.tensor = grey.tensor.expand({3, 32, 28}).contiguous();
  EXPECT_EQ(adapter->encode(grey).ids, adapter->encode(rgb).ids);
}

TEST(ImageVq, BadInputsAreClearErrors) {
  TempDir dir;
  const auto file = dir / "tokenizer.safetensors";
  saved_tokenizer(file);
  const auto adapter = make_adapter({{"type", "image_vq"}, {"model", file.string()}}, {});

  Span span;
  span.ids.assign(16, 0);
  span.ids[5] = 32;
  EXPECT_TRUE(contains(what_of([&] { adapter->decode(span); }), "token id 32 is outside the codebook [0, 32)"));
  span.ids.assign(15, 0);
  EXPECT_TRUE(contains(what_of([&] { adapter->decode(span); }), "16 tokens"));

  Segment rgba;
  rgba.modality = "image";
  rgba.tensor = at::zeros({4, 16, 16}, at::kByte);
  const std::string four = what_of([&] { adapter->encode(rgba); });
  EXPECT_TRUE(contains(four, "image_vq") && contains(four, "4")) << four;

  const auto grey_file = dir / "grey.safetensors";
  saved_tokenizer(grey_file, 1);
  Segment rgb;
  rgb.modality = "image";
  rgb.tensor = at::zeros({3, 16, 16}, at::kByte);
  EXPECT_TRUE(contains(what_of([&] { make_adapter({{"type", "image_vq"}, {"model", grey_file.string()}}, {})->encode(rgb); }),
                       "grey"));

  // A recorded checksum that the file no longer has.
  nlohmann::json d = adapter->describe();
  d["crc32"] = d["crc32"].get<uint32_t>() ^ 1u;
  EXPECT_TRUE(contains(what_of([&] { make_adapter(d, {}); }), "crc32"));

  // Truncated, missing, or of another kind.
  const std::string bytes = testing::read_bytes(file);
  testing::write_bytes(dir / "short.safetensors", bytes.substr(0, bytes.size() / 2));
  const std::string truncated = what_of([&] { image::ImageVqAdapter(dir / "short.safetensors"); });
  EXPECT_TRUE(contains(truncated, "short.safetensors")) << truncated;
  EXPECT_TRUE(contains(what_of([&] { image::ImageVqAdapter(dir / "missing"); }), "no artifact"));
  image::VaeConfig vae_config;
  vae_config.image_size = 16;
  vae_config.model.net = testing::tiny_net();
  image::save_vae(dir / "vae.safetensors", image::VaeImpl(vae_config));
  EXPECT_TRUE(contains(what_of([&] { image::ImageVqAdapter(dir / "vae.safetensors"); }), "is not an image_vq artifact"));

  // A file whose tensors do not fit its recorded config.
  VqTokenizerConfig other = tiny_config();
  other.model.codebook_size = 64;
  VqTokenizerImpl bigger(other);
  image::write_image_artifact(dir / "mismatch.safetensors", image::kVqArtifactKind, config::to_json(tiny_config()),
                              bigger);
  EXPECT_TRUE(contains(what_of([&] { image::ImageVqAdapter(dir / "mismatch.safetensors"); }), "shape"));
}

}  // namespace
}  // namespace tessera
