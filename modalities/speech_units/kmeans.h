// k-means over frame features: HuBERT's first-iteration unit discovery
// (research/megalodon_scaling_eval.md §5). k-means++ initialisation (Arthur & Vassilvitskii 2007) on a
// sample of the data, then mini-batch updates (Sculley 2010: each centre moves towards the batch points
// assigned to it with per-centre learning rate 1 / count, i.e. a running mean over all points it was
// ever assigned). Everything is seeded: the same data, config and seed give the same centroids.
//
//   KMeansResult r = fit_kmeans(features, cfg);        // features float [N, D]
//   at::Tensor units = r.model.assign(new_features);   // int64 [M]
//   RunLength rl = deduplicate(units_vector);           // unit ids + durations; restore(rl) is exact
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <vector>

namespace tessera::speech {

struct KMeansConfig {
  int64_t k = 100;
  int64_t batch_size = 1024;     // points per mini-batch
  int64_t steps = 200;           // mini-batch updates
  int64_t init_samples = 20000;  // points k-means++ chooses among (all when fewer)
  int64_t eval_every = 50;       // steps between inertia records (on an eval sample)
  int64_t eval_samples = 20000;  // points of that fixed sample (all when fewer)
  int64_t seed = 0;

  template <class V>
  void fields(V& v) {
    v.optional("k", k, "number of clusters (units), e.g. 50, 100, 500");
    v.optional("batch_size", batch_size, "points per mini-batch update");
    v.optional("steps", steps, "mini-batch updates");
    v.optional("init_samples", init_samples, "points k-means++ initialisation draws from");
    v.optional("eval_every", eval_every, "steps between within-cluster distortion records");
    v.optional("eval_samples", eval_samples, "points the distortion is measured on");
    v.optional("seed", seed, "random seed (sampling of batches and initial centres)");
  }
};

void validate(const KMeansConfig& config);

class KMeansModel {
 public:
  KMeansModel() = default;
  explicit KMeansModel(at::Tensor centroids);  // float32 [K, D]

  int64_t k() const;
  int64_t dim() const;
  const at::Tensor& centroids() const { return centroids_; }

  // Nearest centroid (squared Euclidean; ties to the lower id) of each row of [N, D]: int64 [N].
  at::Tensor assign(const at::Tensor& features) const;
  // Within-cluster distortion: mean over points of the squared distance to the nearest centroid.
  double inertia(const at::Tensor& features) const;
  // Points assigned to each centroid: int64 [K].
  at::Tensor usage(const at::Tensor& features) const;

  // safetensors file with tensor "centroids" (F32 [K, D]) and metadata format=tessera.kmeans, k, dim.
  void save(const std::filesystem::path& path) const;
  static KMeansModel load(const std::filesystem::path& path);

 private:
  at::Tensor centroids_;
};

struct KMeansResult {
  KMeansModel model;
  // Inertia on the fixed eval sample: after initialisation, then every eval_every steps and at the end.
  std::vector<double> inertia_history;
  std::vector<int64_t> inertia_steps;  // the step of each record (0 = after initialisation)
};

// Trains on float features [N, D] (N >= k; any device: computed on the CPU in float32).
KMeansResult fit_kmeans(const at::Tensor& features, const KMeansConfig& config);

// k-means++ centres: k rows of `points` [N, D] chosen with probability proportional to the squared
// distance to the nearest centre chosen so far (the first uniformly).
at::Tensor kmeans_plus_plus(const at::Tensor& points, int64_t k, uint64_t seed);

// Run-length coding of a unit sequence: consecutive repeats collapse to one unit with its count.
struct RunLength {
  std::vector<int64_t> units;
  std::vector<int64_t> durations;  // >= 1 each, same length as units
};
RunLength deduplicate(const std::vector<int64_t>& units);
// The exact inverse of deduplicate; errors on mismatched lengths or durations < 1.
std::vector<int64_t> restore(const RunLength& runs);

}  // namespace tessera::speech
