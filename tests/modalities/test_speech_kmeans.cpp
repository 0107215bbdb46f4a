// Speech units: k-means (recovers separated Gaussian clusters, deterministic per seed, distortion falls,
// usage, save/load) and run-length deduplication with exact restore.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "core/io/safetensors.h"
#include "modalities/speech_units/kmeans.h"
#include "modalities_test_util.h"

namespace tessera::speech {
namespace {
using tessera::testing::contains;
using tessera::testing::TempDir;
using tessera::testing::what_of;

struct Blobs {
  at::Tensor centres;  // [K, D]
  at::Tensor points;   // [K * per, D], cluster i at rows i*per .. (i+1)*per
};

Blobs blobs(int64_t k, int64_t d, int64_t per, double spread, double sigma, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  Blobs b;
  b.centres = at::randn({k, d}, gen) * spread;
  b.points = (b.centres.repeat_interleave(per, 0) + at::randn({k * per, d}, gen) * sigma).contiguous();
  return b;
}

KMeansConfig small_config(int64_t k, int64_t seed) {
  KMeansConfig c;
  c.k = k;
  c.batch_size = 256;
  c.steps = 60;
  c.eval_every = 20;
  c.seed = seed;
  return c;
}

TEST(SpeechKMeans, RecoversSeparatedGaussianClusters) {
  const Blobs b = blobs(6, 8, 400, 10.0, 0.1, 7);
  const KMeansResult r = fit_kmeans(b.points, small_config(6, 1));
  ASSERT_EQ(r.model.centroids().sizes(), (at::IntArrayRef{6, 8}));
  // Match each true centre to its nearest learned centroid: a permutation, each within noise.
  std::set<int64_t> matched;
  for (int64_t i = 0; i < 6; ++i) {
    const at::Tensor dist = (r.model.centroids() - b.centres[i]).norm(2, 1);
    const int64_t j = dist.argmin().item<int64_t>();
    matched.insert(j);
    EXPECT_LT(dist[j].item<double>(), 0.05) << "true centre " << i;
    // Every point of cluster i is assigned to centroid j.
    EXPECT_TRUE((r.model.assign(b.points.slice(0, i * 400, (i + 1) * 400)) == j).all().item<bool>());
  }
  EXPECT_EQ(matched.size(), 6u);
  // Usage: 400 points per cluster; distortion: the noise variance times D.
  EXPECT_TRUE(at::equal(std::get<0>(r.model.usage(b.points).sort()), at::full({6}, 400, at::kLong)));
  EXPECT_NEAR(r.model.inertia(b.points), 8 * 0.01, 0.01);
}

TEST(SpeechKMeans, DeterministicWithASeedAndDistortionFalls) {
  const Blobs b = blobs(20, 4, 100, 1.0, 0.5, 3);  // overlapping clusters: a harder problem
  KMeansConfig c = small_config(12, 5);
  const KMeansResult r1 = fit_kmeans(b.points, c), r2 = fit_kmeans(b.points, c);
  EXPECT_TRUE(at::equal(r1.model.centroids(), r2.model.centroids()));
  EXPECT_EQ(r1.inertia_history, r2.inertia_history);
  EXPECT_EQ(r1.inertia_steps, (std::vector<int64_t>{0, 20, 40, 60}));
  EXPECT_LT(r1.inertia_history.back(), 0.9 * r1.inertia_history.front());
  for (size_t i = 1; i < r1.inertia_history.size(); ++i)
    EXPECT_LE(r1.inertia_history[i], r1.inertia_history[i - 1] * 1.02) << "record " << i;
  c.seed = 6;
  EXPECT_FALSE(at::equal(fit_kmeans(b.points, c).model.centroids(), r1.model.centroids()));
  EXPECT_EQ(r1.model.usage(b.points).sum().item<int64_t>(), b.points.size(0));
}

TEST(SpeechKMeans, KMeansPlusPlusPicksDistinctPointsFromEachBlob) {
  const Blobs b = blobs(5, 3, 50, 20.0, 0.01, 11);
  const at::Tensor init = kmeans_plus_plus(b.points, 5, 42);
  std::set<int64_t> clusters;
  for (int64_t i = 0; i < 5; ++i) clusters.insert((b.centres - init[i]).norm(2, 1).argmin().item<int64_t>());
  EXPECT_EQ(clusters.size(), 5u);
  EXPECT_TRUE(at::equal(init, kmeans_plus_plus(b.points, 5, 42)));
  // Duplicate points: still k rows, no error.
  EXPECT_EQ(kmeans_plus_plus(at::ones({10, 2}), 3, 1).size(0), 3);
}

TEST(SpeechKMeans, SaveLoadAndErrors) {
  TempDir dir;
  const Blobs b = blobs(4, 5, 50, 5.0, 0.1, 2);
  const KMeansModel m = fit_kmeans(b.points, small_config(4, 0)).model;
  m.save(dir / "units.safetensors");
  const KMeansModel back = KMeansModel::load(dir / "units.safetensors");
  EXPECT_TRUE(at::equal(back.centroids(), m.centroids()));
  EXPECT_TRUE(at::equal(back.assign(b.points), m.assign(b.points)));
  io::save_safetensors(dir / "other.safetensors", {{"centroids", at::zeros({2, 2})}});
  EXPECT_TRUE(contains(what_of([&] { KMeansModel::load(dir / "other.safetensors"); }), "not a Tessera k-means"));
  EXPECT_TRUE(contains(what_of([&] { m.assign(at::zeros({3, 4})); }), "dimension 4"));
  EXPECT_TRUE(contains(what_of([&] { fit_kmeans(at::zeros({3, 2}), small_config(4, 0)); }), "fewer than kmeans.k"));
  KMeansConfig bad = small_config(0, 0);
  EXPECT_TRUE(contains(what_of([&] { validate(bad); }), "kmeans.k"));
}

TEST(SpeechUnits, DeduplicateAndRestoreExactly) {
  const std::vector<int64_t> units = {3, 3, 3, 7, 7, 1, 3, 3, 0, 0, 0, 0};
  const RunLength r = deduplicate(units);
  EXPECT_EQ(r.units, (std::vector<int64_t>{3, 7, 1, 3, 0}));
  EXPECT_EQ(r.durations, (std::vector<int64_t>{3, 2, 1, 2, 4}));
  EXPECT_EQ(restore(r), units);
  EXPECT_TRUE(deduplicate({}).units.empty());
  EXPECT_TRUE(restore({}).empty());
  std::mt19937_64 rng(9);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<int64_t> seq(rng() % 300);
    for (auto& u : seq) u = (rng() % 4 == 0) ? static_cast<int64_t>(rng() % 100) : (seq.empty() ? 0 : u);
    for (size_t i = 1; i < seq.size(); ++i)
      if (rng() % 3) seq[i] = seq[i - 1];  // long runs
    const RunLength rl = deduplicate(seq);
    for (size_t i = 1; i < rl.units.size(); ++i) ASSERT_NE(rl.units[i], rl.units[i - 1]);
    ASSERT_EQ(restore(rl), seq);
  }
  EXPECT_TRUE(contains(what_of([] { restore({{1, 2}, {1}}); }), "2 units but 1 durations"));
  EXPECT_TRUE(contains(what_of([] { restore({{1}, {0}}); }), "must be >= 1"));
}

}  // namespace
}  // namespace tessera::speech
