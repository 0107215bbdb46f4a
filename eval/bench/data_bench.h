// `tessera bench data`: times the packed-row loader over memory-mapped shards (a prepared dataset, or
// a synthetic one built in a temporary folder) and reports batches/s, rows/s, tokens/s and MB/s of
// token data read, with the consumer's wait per batch.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace tessera {

struct DataBenchOptions {
  std::string dataset;  // a folder written by `tessera prepare`; empty: a synthetic dataset in a temp folder
  std::string split = "train";
  int64_t batch_size = 32;
  int64_t seq_len = 2048;
  int prefetch = 2;
  bool shuffle = true;
  bool verify = false;     // CRC-32 every shard when opening (its time is reported apart)
  double seconds = 5.0;    // how long to time, unless batches > 0
  int64_t batches = 0;     // > 0: time exactly this many batches
  int64_t warmup = 3;      // batches before timing (starts the worker, touches the first pages)
  uint64_t seed = 0;
  // The synthetic dataset: random ids in documents of log-normal length (median 512 tokens).
  double synthetic_mtokens = 20;
  int64_t synthetic_vocab = 32000;  // <= 65536 gives uint16 shards
  int64_t shard_tokens = int64_t{1} << 23;
};

struct DataBenchResult {
  nlohmann::json json;  // every number
  std::string summary;  // human-readable lines
};

DataBenchResult bench_data(const DataBenchOptions& options);

}  // namespace tessera
