// Continuous latents beside token shards (ARCHITECTURE §2, Transfusion): a document with an image
// encoded as latents [n, d] holds n placeholder ids of the `<latent>` special in its token stream, and
// the latents themselves go to a sidecar file per shard, in order of appearance:
//
//   <split>_<NNNNN>.latents.safetensors    one tensor "latents" float32 [rows, d], where rows is the
//                                          number of <latent> placeholders in <split>_<NNNNN>.bin
//
// Every shard of a split that holds latents has a sidecar (possibly with 0 rows), written atomically
// like the shard. A token loader must not train on the placeholders as if they were tokens: it refuses
// a layout with kLatentSpecial unless the architecture consumes latents.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/data/shard.h"

namespace tessera {

// The special whose ids stand for one latent row each.
inline constexpr const char* kLatentSpecial = "<latent>";

// "train_00003.bin" -> "train_00003.latents.safetensors"
std::string latents_file_name(const std::string& shard_file);

struct LatentsFileInfo {
  std::string file;
  int64_t rows = 0;
};

// Collects the latents of one split's documents, shard by shard, next to a ShardWriter: after each
// ShardWriter::add, add(writer.current_shard(), latents of that document). A shard's sidecar is written
// once a later shard is reached (or at finish), so memory holds one shard's latents.
class LatentsWriter {
 public:
  LatentsWriter(std::filesystem::path dir, std::string split, int64_t dim);
  LatentsWriter(const LatentsWriter&) = delete;
  LatentsWriter& operator=(const LatentsWriter&) = delete;

  // `latents`: [n, dim] (any float type; stored as float32) of a document in shard `shard`; shards
  // are reached in order.
  void add(int64_t shard, const at::Tensor& latents);
  // Writes the pending sidecars up to `shards` (the split's shard count) and returns them in order.
  std::vector<LatentsFileInfo> finish(int64_t shards);

 private:
  void flush();

  std::filesystem::path dir_;
  std::string split_;
  int64_t dim_;
  int64_t shard_ = 0;              // the shard being collected
  std::vector<at::Tensor> pending_;  // its latents, in order
  std::vector<LatentsFileInfo> written_;
};

// For loaders that feed token ids to a model (the LM path): an error, unless `allowed`, when the
// dataset's layout has <latent> placeholders, since training on them as tokens is silently wrong.
// `flag` names the setting that allows it.
void reject_latent_placeholders(const DatasetIndex& index, const std::filesystem::path& dir, bool allowed,
                                const std::string& flag);

// The latents of shard `shard` of `split`, float32 [rows, d] in order of appearance. Errors name the
// file: missing, malformed, or a row count other than the shard's number of <latent> placeholders.
at::Tensor read_shard_latents(const std::filesystem::path& dir, const DatasetIndex& index, const std::string& split,
                              int64_t shard);

}  // namespace tessera
