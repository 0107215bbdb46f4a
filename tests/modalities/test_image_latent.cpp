// The image VAE: patchify/unpatchify, the latent scaling factor, training (overfitting a tiny batch),
// the artifact and the "image_latent" adapter through make_adapter, and its errors.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "image_test_util.h"
#include "modalities/image_latent/vae.h"
#include "modalities/modalities_test_util.h"
#include "modalities/registry.h"

namespace tessera {
namespace {

using image::patchify;
using image::unpatchify;
using image::VaeConfig;
using image::VaeImpl;
using testing::contains;
using testing::TempDir;
using testing::what_of;

VaeConfig tiny_config() {
  VaeConfig c;
  c.image_size = 16;
  c.model.net = testing::tiny_net();
  c.model.latent_channels = 4;
  c.model.kl_weight = 1e-4;
  return c;
}

TEST(ImageLatent, PatchifyIsExactlyInvertedAndRasterOrdered) {
  const int64_t c = 3, h = 8, w = 4;
  const at::Tensor latents = at::randn({c, h, w});
  for (const int64_t p : {1, 2, 4}) {
    const at::Tensor patches = patchify(latents, p);
    ASSERT_EQ(patches.sizes(), (at::IntArrayRef{(h / p) * (w / p), c * p * p})) << "p=" << p;
    EXPECT_TRUE(at::equal(unpatchify(patches, p, c, h, w), latents)) << "p=" << p;
    // Patch n = (row r, col q) in raster order; d = channel * p * p + i * p + j.
    for (const auto& [r, q, ch, i, j] : std::vector<std::array<int64_t, 5>>{{0, 0, 0, 0, 0}, {1, 0, 2, 0, p - 1},
                                                                            {h / p - 1, w / p - 1, 1, p - 1, 0}}) {
      const int64_t n = r * (w / p) + q, d = ch * p * p + i * p + j;
      EXPECT_EQ(patches[n][d].item<float>(), latents[ch][r * p + i][q * p + j].item<float>())
          << "p=" << p << " patch " << n << " dim " << d;
    }
    // A batch is the same, image by image.
    const at::Tensor batch = at::stack({latents, latents * 2});
    const at::Tensor batch_patches = patchify(batch, p);
    EXPECT_TRUE(at::equal(batch_patches[1], patchify(latents * 2, p)));
    EXPECT_TRUE(at::equal(unpatchify(batch_patches, p, c, h, w), batch));
  }
  EXPECT_TRUE(contains(what_of([&] { patchify(latents, 3); }), "patch_size must be 1, 2 or 4"));
  EXPECT_TRUE(contains(what_of([&] { patchify(at::randn({3, 6, 6}), 4); }), "not divisible by patch_size 4"));
  EXPECT_TRUE(contains(what_of([&] { unpatchify(at::randn({7, 12}), 2, c, h, w); }), "expected [8, 12]"));
}

TEST(ImageLatent, ScalingFactorIsOneOverTheLatentStd) {
  at::manual_seed(1);
  VaeImpl vae(tiny_config());
  const at::Tensor images = testing::tiny_scenes(10, 16);
  // Batches of 4 (10 is not a multiple) must pool to the same statistic as one pass.
  const double s = image::latent_scaling_factor(vae, images, 4);
  at::NoGradGuard no_grad;
  vae.eval();
  const at::Tensor latents = vae.encode(image::to_float(images)).to(at::kDouble);
  const double direct = 1.0 / latents.std().item<double>();
  EXPECT_NEAR(s, direct, 1e-5 * direct);
  EXPECT_NEAR((latents * s).std().item<double>(), 1.0, 1e-5);
}

TEST(ImageLatent, KlMatchesTheClosedFormAndIsPositive) {
  VaeImpl vae(tiny_config());
  const auto out = vae.forward(image::to_float(testing::tiny_scenes(2, 16)), /*sample=*/false);
  const at::Tensor mean = out.mean.to(at::kDouble), logvar = out.logvar.to(at::kDouble);
  // Closed form per element, summed over the latent, averaged over the batch.
  const double expected = (0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar)).sum().item<double>() / 2;
  EXPECT_NEAR(out.kl.item<double>(), expected, 1e-4 * std::abs(expected) + 1e-6);
  EXPECT_GT(out.kl.item<double>(), 0);
}

TEST(ImageLatent, OverfitsATinyBatch) {
  TempDir dir;
  at::manual_seed(0);
  const at::Tensor images = testing::tiny_scenes(8, 16);
  auto vae = std::make_shared<VaeImpl>(tiny_config());
  image::VaeTraining trainable(vae, 8);
  const image::AutoencoderRun run = testing::tiny_run(dir.path(), "vae", image::kVaeArtifactFile, 150);
  const double before = image::evaluate_autoencoder(trainable, images, 8, at::kCPU, false)["val_mse"];
  const image::AutoencoderResult result = image::train_autoencoder(trainable, {images, images}, run);
  const double after = result.eval["val_mse"];
  EXPECT_LT(after, 0.2 * before) << "val MSE " << before << " -> " << after;
  // The scaling factor was measured on the training images and is stored with the model.
  EXPECT_NEAR(result.eval["scaling_factor"].get<double>(), image::latent_scaling_factor(*vae, images), 1e-6);
  const image::LoadedVae loaded = image::load_vae(dir.path());
  EXPECT_DOUBLE_EQ(loaded.model->scaling_factor(), vae->scaling_factor());
  EXPECT_NE(vae->scaling_factor(), 1.0);
}

TEST(ImageLatent, AdapterEncodesScaledPatchesAndRoundTrips) {
  TempDir dir;
  at::manual_seed(2);
  VaeImpl vae(tiny_config());
  vae.set_scaling_factor(0.5);
  std::filesystem::create_directories(dir / "vae");
  image::save_vae(dir / "vae" / image::kVaeArtifactFile, vae);
  vae.eval();
  Segment image;
  image.modality = "image";
  image.tensor = testing::tiny_scenes(1, 24)[0];
  at::Tensor z;
  {
    at::NoGradGuard no_grad;
    z = vae.encode(image::to_float(image::resize_center_crop(image.tensor, 16)).unsqueeze(0))[0] * 0.5;
  }
  for (const int64_t p : {1, 2, 4}) {
    const auto adapter = make_adapter({{"type", "image_latent"}, {"model", "vae"}, {"patch_size", p}}, dir.path());
    EXPECT_EQ(adapter->vocab_size(), 0);
    const Span span = adapter->encode(image);
    ASSERT_FALSE(span.is_discrete());
    const int64_t n = (4 / p) * (4 / p), d = 4 * p * p;  // 16 px / 4 = 4x4 latent, 4 channels
    ASSERT_EQ(span.latents.sizes(), (at::IntArrayRef{n, d})) << "p=" << p;
    EXPECT_TRUE(at::allclose(span.latents, patchify(z, p), 1e-5, 1e-6)) << "p=" << p;
    const Segment decoded = adapter->decode(span);
    EXPECT_EQ(decoded.tensor.sizes(), (at::IntArrayRef{3, 16, 16}));
    EXPECT_EQ(decoded.tensor.scalar_type(), at::kByte);
    // The description rebuilds an adapter producing the same latents and pixels.
    const nlohmann::json description = adapter->describe();
    EXPECT_EQ(description["patch_size"], p);
    EXPECT_EQ(description["latent_dim"], d);
    EXPECT_DOUBLE_EQ(description["scaling_factor"].get<double>(), 0.5);
    const auto again = make_adapter(description, dir.path());
    EXPECT_TRUE(at::equal(again->encode(image).latents, span.latents));
    EXPECT_TRUE(at::equal(again->decode(span).tensor, decoded.tensor));
  }
}

TEST(ImageLatent, BadInputsAreClearErrors) {
  TempDir dir;
  image::save_vae(dir / image::kVaeArtifactFile, VaeImpl(tiny_config()));
  const nlohmann::json base = {{"type", "image_latent"}, {"model", dir.path().string()}};
  nlohmann::json d = base;
  d["patch_size"] = 3;
  EXPECT_TRUE(contains(what_of([&] { make_adapter(d, {}); }), "patch_size must be 1, 2 or 4"));
  d["patch_size"] = "2";
  EXPECT_TRUE(contains(what_of([&] { make_adapter(d, {}); }), "patch_size"));
  const auto adapter = make_adapter(base, {});
  d = adapter->describe();
  d["crc32"] = d["crc32"].get<uint32_t>() ^ 1u;
  EXPECT_TRUE(contains(what_of([&] { make_adapter(d, {}); }), "crc32"));
  d = adapter->describe();
  d["latent_dim"] = 4;
  EXPECT_TRUE(contains(what_of([&] { make_adapter(d, {}); }), "latent_dim") ||
              contains(what_of([&] { make_adapter(d, {}); }), "dimension"));

  Span span;
  span.latents = at::zeros({3, 16});
  EXPECT_TRUE(contains(what_of([&] { adapter->decode(span); }), "expected [4, 16]"));
  Span ids;
  ids.ids = {1, 2};
  EXPECT_TRUE(contains(what_of([&] { adapter->decode(ids); }), "continuous"));
  Segment rgba;
  rgba.modality = "image";
  rgba.tensor = at::zeros({4, 16, 16}, at::kByte);
  EXPECT_TRUE(contains(what_of([&] { adapter->encode(rgba); }), "image_latent"));
  EXPECT_TRUE(contains(what_of([&] { make_adapter({{"type", "image_latent"}}, {}); }), "needs a string \"model\""));
}

}  // namespace
}  // namespace tessera
