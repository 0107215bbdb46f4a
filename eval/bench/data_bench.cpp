#include "eval/bench/data_bench.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "core/data/packer.h"
#include "core/data/shard.h"
#include "core/error.h"
#include "core/io/files.h"
#include "core/progress.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A folder removed with everything in it when the bench ends, however it ends.
class TempFolder {
 public:
  TempFolder() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / str("tessera_bench_data_", ::getpid(), "_", rd());
    fs::create_directories(path_);
  }
  ~TempFolder() {
    std::error_code ignored;
    remove_tree(path_, ignored);
  }
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Writes a "train" split of about `mtokens` million random ids: <bos> ids <eos> documents whose lengths
// follow a log-normal around 512 tokens (web text is heavy-tailed), each counted as 4 bytes per id.
void build_synthetic(const fs::path& dir, const DataBenchOptions& o) {
  check(o.synthetic_mtokens > 0, "bench data: the synthetic dataset needs a positive size, got ",
        o.synthetic_mtokens, "M tokens");
  check(o.synthetic_vocab > 3, "bench data: the synthetic vocabulary needs more than 3 ids");
  const VocabLayout layout({"<pad>", "<bos>", "<eos>"}, {{"synthetic", 3, o.synthetic_vocab - 3}});
  const auto target = static_cast<int64_t>(o.synthetic_mtokens * 1e6);
  std::mt19937_64 rng(o.seed);
  std::lognormal_distribution<double> length(std::log(512.0), 1.0);
  std::uniform_int_distribution<int64_t> id(3, o.synthetic_vocab - 1);
  ShardWriter writer(dir, "train", layout.size(), o.shard_tokens);
  std::vector<int64_t> doc;
  for (int64_t written = 0; written < target;) {
    const auto n = std::min<int64_t>(std::clamp<int64_t>(std::llround(length(rng)), 8, 1 << 16), target - written);
    doc.assign(1, layout.special_id("<bos>"));
    for (int64_t i = 0; i < n; ++i) doc.push_back(id(rng));
    doc.push_back(layout.special_id("<eos>"));
    writer.add(doc, 4 * n);
    written += static_cast<int64_t>(doc.size());
  }
  DatasetIndex index;
  index.layout = layout;
  index.source = {{"synthetic", true}, {"mtokens", o.synthetic_mtokens}, {"seed", o.seed}};
  index.splits["train"] = writer.finish();
  index.save(dir);
}

}  // namespace

DataBenchResult bench_data(const DataBenchOptions& o) {
  check(o.batches > 0 || o.seconds > 0, "bench data: give a positive --seconds or --batches");
  check(o.warmup >= 0, "bench data: --warmup must be >= 0");
  std::unique_ptr<TempFolder> temp;
  fs::path dir = o.dataset;
  std::string split = o.split;
  double build_s = 0;
  if (o.dataset.empty()) {
    temp = std::make_unique<TempFolder>();
    dir = temp->path();
    split = "train";
    const auto t0 = Clock::now();
    build_synthetic(dir, o);
    build_s = seconds_since(t0);
  }

  auto t0 = Clock::now();
  const DatasetIndex index = DatasetIndex::load(dir);
  std::shared_ptr<const ShardedSplit> store = ShardedSplit::open(dir, index, split, o.verify);
  const double open_s = seconds_since(t0);
  const int width = store->shards().empty() ? shard_token_width(index.layout.size()) : store->shards()[0].token_width();

  PackerOptions po;
  po.batch_size = o.batch_size;
  po.seq_len = o.seq_len;
  po.shuffle = o.shuffle;
  po.seed = o.seed;
  po.prefetch = o.prefetch;
  PackedRowSource source(store, index.layout, po);
  for (int64_t i = 0; i < o.warmup; ++i) source.next();

  int64_t batches = 0, rows = 0;
  double wait_sum = 0, wait_max = 0;
  t0 = Clock::now();
  double elapsed = 0;
  while (o.batches > 0 ? batches < o.batches : elapsed < o.seconds) {
    const auto w0 = Clock::now();
    const Batch b = source.next();
    const double wait = seconds_since(w0);
    wait_sum += wait;
    wait_max = std::max(wait_max, wait);
    rows += b.batch_size();
    ++batches;
    elapsed = seconds_since(t0);
  }
  const double rows_per_s = static_cast<double>(rows) / elapsed;
  const double tokens_per_s = rows_per_s * static_cast<double>(o.seq_len);
  // Each row reads seq_len + 1 stored ids.
  const double mb_per_s = rows_per_s * static_cast<double>((o.seq_len + 1) * width) / 1e6;

  DataBenchResult r;
  r.json = {{"dataset", o.dataset.empty() ? "synthetic" : o.dataset},
            {"split", split},
            {"shards", static_cast<int64_t>(store->shards().size())},
            {"dataset_tokens", store->tokens()},
            {"dataset_docs", store->docs()},
            {"token_width", width},
            {"batch_size", o.batch_size},
            {"seq_len", o.seq_len},
            {"prefetch", o.prefetch},
            {"shuffle", o.shuffle},
            {"verify", o.verify},
            {"synthetic_build_s", build_s},
            {"open_s", open_s},
            {"timed_batches", batches},
            {"timed_s", elapsed},
            {"batches_per_s", static_cast<double>(batches) / elapsed},
            {"rows_per_s", rows_per_s},
            {"tokens_per_s", tokens_per_s},
            {"mb_per_s", mb_per_s},
            {"next_ms_mean", 1e3 * wait_sum / static_cast<double>(batches)},
            {"next_ms_max", 1e3 * wait_max}};
  char buf[768];
  std::snprintf(buf, sizeof buf,
                "data loader on %s (split %s: %zu shards, %s tokens, %s docs, uint%d ids)\n"
                "  B=%ld T=%ld, prefetch %d, %s; opened in %.3f s%s\n"
                "  %ld batches in %.2f s: %.1f batches/s, %s rows/s, %s tokens/s, %.1f MB/s of token data\n"
                "  next(): mean %.3f ms, max %.3f ms\n",
                o.dataset.empty() ? "a synthetic dataset" : o.dataset.c_str(), split.c_str(), store->shards().size(),
                format_count(static_cast<double>(store->tokens())).c_str(),
                format_count(static_cast<double>(store->docs())).c_str(), 8 * width, (long)o.batch_size,
                (long)o.seq_len, o.prefetch, o.shuffle ? "shuffled" : "in order", open_s,
                o.verify ? " (CRC-32 verified)" : "", (long)batches, elapsed, static_cast<double>(batches) / elapsed,
                format_count(rows_per_s).c_str(), format_count(tokens_per_s).c_str(), mb_per_s,
                1e3 * wait_sum / static_cast<double>(batches), 1e3 * wait_max);
  r.summary = buf;
  if (o.dataset.empty())
    r.summary += str("  (synthetic dataset built in ", std::round(build_s * 100) / 100,
                     " s and read from the page cache)\n");
  return r;
}

}  // namespace tessera
