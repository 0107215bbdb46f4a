// BLT's next-byte entropies beside byte shards: the entropy model runs once over the dataset
// (`tessera patch entropies`), not in every training step (the released code computes them on the
// fly; its paper notes they can be precomputed). Per shard, in the dataset folder:
//
//   <split>_<NNNNN>.entropies.safetensors   tensor "entropies", F16 [tokens of the shard]: entry i is
//                                           the entropy (nats) of the model's distribution for token i+1
//                                           given tokens ..i of its document
//   entropies.json                          written last: the entropy model's identity, the pass's
//                                           chunking, and the CRC-32 of every shard it read
//
// Documents are processed in chunks of `chunk` tokens, each preceded by up to `context` earlier tokens
// of the shard (their entropies are discarded); attention stays inside documents. A token therefore sees
// at least `context` tokens of its document's past (all of it when the document starts in its chunk or
// context): exact for an entropy model whose receptive field is within `context` (sliding window ×
// layers), a close approximation for the released model (window 512) with context = 512.
#pragma once

#include <ATen/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "core/data/shard.h"

namespace tessera {

inline constexpr const char* kEntropiesInfoFile = "entropies.json";

// "train_00003.bin" -> "train_00003.entropies.safetensors"
std::string entropies_file_name(const std::string& shard_file);

// Whether `dir` holds a complete entropy pass (its entropies.json).
bool has_entropies(const std::filesystem::path& dir);

// entropies.json, checked against the dataset: every shard of the index must be listed with its CRC-32
// (shards re-prepared since are an error that says to recompute).
nlohmann::json read_entropies_info(const std::filesystem::path& dir, const DatasetIndex& index);

// One shard's entropies (float16 [tokens]); errors name the file (missing, malformed, wrong length).
at::Tensor read_shard_entropies(const std::filesystem::path& dir, const std::string& shard_file, int64_t tokens);

// The entropy model as a function: tokens [B, T] int64 and doc_ids [B, T] -> next-token entropies
// [B, T] float (any device).
using EntropyFn = std::function<at::Tensor(const at::Tensor& tokens, const at::Tensor& doc_ids)>;

struct EntropyPassOptions {
  int64_t chunk = 2048;     // tokens whose entropies one row yields
  int64_t context = 512;    // earlier tokens each row starts with
  int64_t batch_size = 8;   // rows per call of the entropy function
  int64_t pad_id = 0;       // fills the rows' tails (their own document, so nothing attends to them)
  bool quiet = false;
};

struct EntropyPassResult {
  int64_t tokens = 0;
  double mean_entropy = 0;  // nats
  double seconds = 0;
};

// Computes and writes the sidecars of every split, then entropies.json (an earlier pass's is removed
// first, so an interrupted pass is never taken for a finished one). `identity` describes the entropy
// model (recorded; recipes compare it with the model they attach).
EntropyPassResult compute_dataset_entropies(const std::filesystem::path& dir, const DatasetIndex& index,
                                            const EntropyFn& entropies_of, const EntropyPassOptions& options,
                                            const nlohmann::json& identity);

}  // namespace tessera
