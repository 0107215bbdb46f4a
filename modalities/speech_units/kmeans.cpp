#include "modalities/speech_units/kmeans.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/io/safetensors.h"

namespace tessera::speech {
namespace fs = std::filesystem;

namespace {

// Squared distances [N, K] between rows of x [N, D] and c [K, D] (float32; clamped at 0).
at::Tensor sq_dist(const at::Tensor& x, const at::Tensor& c) {
  const at::Tensor xx = (x * x).sum(1, true);
  const at::Tensor cc = (c * c).sum(1).unsqueeze(0);
  return at::clamp_min(xx - 2.0 * at::matmul(x, c.t()) + cc, 0.0);
}

at::Tensor as_points(const at::Tensor& f, const char* what) {
  check(f.dim() == 2, what, ": expected features [N, D], got shape ", f.sizes());
  check(f.is_floating_point(), what, ": expected float features, got ", f.scalar_type());
  return f.to(at::kCPU, at::kFloat).contiguous();
}

// `count` distinct row indices of [0, n) (all of them, in order, when count >= n).
std::vector<int64_t> sample_rows(int64_t n, int64_t count, std::mt19937_64& rng) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  if (count >= n) return idx;
  for (int64_t i = 0; i < count; ++i) {  // partial Fisher-Yates
    std::uniform_int_distribution<int64_t> pick(i, n - 1);
    std::swap(idx[i], idx[pick(rng)]);
  }
  idx.resize(static_cast<size_t>(count));
  return idx;
}

at::Tensor rows(const at::Tensor& x, const std::vector<int64_t>& idx) {
  return x.index_select(0, at::tensor(idx, at::kLong));
}

}  // namespace

void validate(const KMeansConfig& c) {
  check(c.k >= 1, "kmeans.k must be >= 1 (e.g. 100), got ", c.k);
  check(c.batch_size >= 1, "kmeans.batch_size must be >= 1 (e.g. 1024), got ", c.batch_size);
  check(c.steps >= 0, "kmeans.steps must be >= 0, got ", c.steps);
  check(c.init_samples >= c.k, "kmeans.init_samples (", c.init_samples, ") must be >= kmeans.k (", c.k, ")");
  check(c.eval_every >= 1, "kmeans.eval_every must be >= 1, got ", c.eval_every);
  check(c.eval_samples >= 1, "kmeans.eval_samples must be >= 1, got ", c.eval_samples);
}

KMeansModel::KMeansModel(at::Tensor centroids) : centroids_(as_points(centroids, "KMeansModel")) {
  check(centroids_.size(0) >= 1 && centroids_.size(1) >= 1, "KMeansModel: centroids must be [K >= 1, D >= 1], got ",
        centroids_.sizes());
  check(at::isfinite(centroids_).all().item<bool>(), "KMeansModel: centroids contain NaN or infinity");
}

int64_t KMeansModel::k() const { return centroids_.defined() ? centroids_.size(0) : 0; }
int64_t KMeansModel::dim() const { return centroids_.defined() ? centroids_.size(1) : 0; }

at::Tensor KMeansModel::assign(const at::Tensor& features) const {
  check(centroids_.defined(), "KMeansModel::assign: the model has no centroids (train or load one first)");
  const at::Tensor x = as_points(features, "KMeansModel::assign");
  check(x.size(1) == dim(), "KMeansModel::assign: features have dimension ", x.size(1), " but the centroids have ",
        dim(), " (same feature config as in training?)");
  if (x.size(0) == 0) return at::empty({0}, at::kLong);
  std::vector<at::Tensor> parts;
  for (int64_t s = 0; s < x.size(0); s += 8192) parts.push_back(sq_dist(x.slice(0, s, s + 8192), centroids_).argmin(1));
  return at::cat(parts);
}

double KMeansModel::inertia(const at::Tensor& features) const {
  check(centroids_.defined(), "KMeansModel::inertia: the model has no centroids");
  const at::Tensor x = as_points(features, "KMeansModel::inertia");
  check(x.size(1) == dim(), "KMeansModel::inertia: features have dimension ", x.size(1), ", centroids ", dim());
  check(x.size(0) > 0, "KMeansModel::inertia: no points");
  double total = 0;
  for (int64_t s = 0; s < x.size(0); s += 8192)
    total += sq_dist(x.slice(0, s, s + 8192), centroids_).amin(1).to(at::kDouble).sum().item<double>();
  return total / static_cast<double>(x.size(0));
}

at::Tensor KMeansModel::usage(const at::Tensor& features) const {
  return at::bincount(assign(features), {}, k());
}

void KMeansModel::save(const fs::path& path) const {
  check(centroids_.defined(), "KMeansModel::save: the model has no centroids");
  io::save_safetensors(path, {{"centroids", centroids_}},
                       {{"format", "tessera.kmeans"}, {"k", std::to_string(k())}, {"dim", std::to_string(dim())}});
}

KMeansModel KMeansModel::load(const fs::path& path) {
  io::SafetensorsFile f = io::load_safetensors(path);
  auto fmt = f.metadata.find("format");
  check(fmt != f.metadata.end() && fmt->second == "tessera.kmeans", "'", path.string(),
        "' is not a Tessera k-means file (metadata format=tessera.kmeans missing)");
  auto it = f.tensors.find("centroids");
  check(it != f.tensors.end(), "'", path.string(), "' has no tensor 'centroids'");
  check(it->second.dim() == 2 && it->second.scalar_type() == at::kFloat, "'", path.string(),
        "': 'centroids' must be F32 [K, D], got ", it->second.scalar_type(), " ", it->second.sizes());
  return KMeansModel(it->second);
}

at::Tensor kmeans_plus_plus(const at::Tensor& points, int64_t k, uint64_t seed) {
  const at::Tensor x = as_points(points, "kmeans_plus_plus");
  const int64_t n = x.size(0);
  check(k >= 1 && k <= n, "kmeans_plus_plus: need 1 <= k <= N points (k = ", k, ", N = ", n, ")");
  std::mt19937_64 rng(seed);
  std::vector<int64_t> chosen;
  chosen.push_back(std::uniform_int_distribution<int64_t>(0, n - 1)(rng));
  at::Tensor d2 = sq_dist(x, x.slice(0, chosen[0], chosen[0] + 1)).squeeze(1).to(at::kDouble);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  while (static_cast<int64_t>(chosen.size()) < k) {
    const at::Tensor cum = d2.cumsum(0);
    const double total = cum[n - 1].item<double>();
    int64_t next;
    if (total <= 0) {  // all remaining points coincide with centres: take any not yet chosen
      next = 0;
      while (std::find(chosen.begin(), chosen.end(), next) != chosen.end()) ++next;
    } else {
      const double r = unit(rng) * total;
      const double* c = cum.data_ptr<double>();
      next = std::upper_bound(c, c + n, r) - c;
      next = std::min(next, n - 1);
      while (d2[next].item<double>() <= 0 && next > 0) --next;  // never pick a zero-probability point
    }
    chosen.push_back(next);
    d2 = at::minimum(d2, sq_dist(x, x.slice(0, next, next + 1)).squeeze(1).to(at::kDouble));
  }
  return rows(x, chosen).clone();
}

KMeansResult fit_kmeans(const at::Tensor& features, const KMeansConfig& c) {
  validate(c);
  const at::Tensor x = as_points(features, "fit_kmeans");
  const int64_t n = x.size(0);
  check(n >= c.k, "fit_kmeans: ", n, " points are fewer than kmeans.k = ", c.k, "; lower k or add data");
  check(at::isfinite(x).all().item<bool>(), "fit_kmeans: features contain NaN or infinity");
  std::mt19937_64 rng(static_cast<uint64_t>(c.seed));
  const at::Tensor init_pool = rows(x, sample_rows(n, c.init_samples, rng));
  at::Tensor centroids = kmeans_plus_plus(init_pool, c.k, rng());
  const at::Tensor eval = rows(x, sample_rows(n, c.eval_samples, rng));
  at::Tensor counts = at::zeros({c.k}, at::kDouble);

  KMeansResult result;
  auto record = [&](int64_t step) {
    result.inertia_history.push_back(KMeansModel(centroids).inertia(eval));
    result.inertia_steps.push_back(step);
  };
  record(0);
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  for (int64_t step = 1; step <= c.steps; ++step) {
    std::vector<int64_t> idx(static_cast<size_t>(std::min(c.batch_size, n)));
    for (auto& i : idx) i = pick(rng);
    const at::Tensor batch = rows(x, idx);
    const at::Tensor a = sq_dist(batch, centroids).argmin(1);
    // Sculley's per-point update c <- (1 - 1/v) c + x/v over the batch equals the running mean
    // c <- (v_old c + sum x) / (v_old + n_c) for every centre (assignments fixed at the batch start).
    const at::Tensor sums = at::zeros({c.k, x.size(1)}, at::kDouble).index_add_(0, a, batch.to(at::kDouble));
    const at::Tensor nb = at::bincount(a, {}, c.k).to(at::kDouble);
    const at::Tensor new_counts = counts + nb;
    const at::Tensor moved = (nb > 0).unsqueeze(1);
    const at::Tensor updated = (centroids.to(at::kDouble) * counts.unsqueeze(1) + sums) / new_counts.clamp_min(1).unsqueeze(1);
    centroids = at::where(moved, updated, centroids.to(at::kDouble)).to(at::kFloat);
    counts = new_counts;
    if (step % c.eval_every == 0 || step == c.steps) record(step);
  }
  result.model = KMeansModel(centroids);
  return result;
}

RunLength deduplicate(const std::vector<int64_t>& units) {
  RunLength r;
  for (int64_t u : units) {
    if (!r.units.empty() && r.units.back() == u) {
      ++r.durations.back();
    } else {
      r.units.push_back(u);
      r.durations.push_back(1);
    }
  }
  return r;
}

std::vector<int64_t> restore(const RunLength& runs) {
  check(runs.units.size() == runs.durations.size(), "restore: ", runs.units.size(), " units but ",
        runs.durations.size(), " durations; they must be equal");
  std::vector<int64_t> out;
  for (size_t i = 0; i < runs.units.size(); ++i) {
    check(runs.durations[i] >= 1, "restore: duration ", runs.durations[i], " of run ", i, " must be >= 1");
    out.insert(out.end(), static_cast<size_t>(runs.durations[i]), runs.units[i]);
  }
  return out;
}

}  // namespace tessera::speech
