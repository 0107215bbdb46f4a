#include "core/data/latents.h"

#include <ATen/ATen.h>

#include <utility>

#include "core/error.h"
#include "core/io/safetensors.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {
constexpr const char* kTensorName = "latents";
}  // namespace

std::string latents_file_name(const std::string& shard_file) {
  return fs::path(shard_file).replace_extension(".latents.safetensors").string();
}

LatentsWriter::LatentsWriter(fs::path dir, std::string split, int64_t dim)
    : dir_(std::move(dir)), split_(std::move(split)), dim_(dim) {
  check(dim_ > 0, "latents of split '", split_, "': the latent dimension must be positive, got ", dim_);
}

void LatentsWriter::add(int64_t shard, const at::Tensor& latents) {
  check(latents.defined() && latents.dim() == 2 && latents.size(1) == dim_, "latents of split '", split_,
        "': expected [n, ", dim_, "], got ", latents.defined() ? latents.sizes() : at::IntArrayRef{});
  check(shard >= shard_, "internal: latents of split '", split_, "' added to shard ", shard, " after shard ", shard_);
  while (shard_ < shard) flush();
  pending_.push_back(latents.to(at::kCPU, at::kFloat).contiguous());
}

void LatentsWriter::flush() {
  const at::Tensor all =
      pending_.empty() ? at::zeros({0, dim_}, at::kFloat) : at::cat(pending_, 0);
  const std::string file = latents_file_name(shard_file_name(split_, shard_));
  io::save_safetensors(dir_ / file, {{kTensorName, all}}, {{"format", "tessera-latents"}, {"split", split_}});
  written_.push_back({file, all.size(0)});
  pending_.clear();
  ++shard_;
}

std::vector<LatentsFileInfo> LatentsWriter::finish(int64_t shards) {
  check(shards >= shard_, "internal: latents of split '", split_, "' reached shard ", shard_, " of ", shards);
  while (shard_ < shards) flush();
  return written_;
}

void reject_latent_placeholders(const DatasetIndex& index, const fs::path& dir, bool allowed, const std::string& flag) {
  if (allowed || !index.layout.has_special(kLatentSpecial)) return;
  fail("dataset ", dir.string(), " holds continuous latents: its documents carry ", kLatentSpecial,
       " placeholders whose values are in .latents.safetensors sidecars, and a token model would train on the "
       "placeholders as if they were tokens. Train it with an architecture that consumes latents (Transfusion), "
       "prepare the pairs with a discrete media adapter (e.g. image_vq), or set ", flag,
       ": true to train on the token stream as it is");
}

at::Tensor read_shard_latents(const fs::path& dir, const DatasetIndex& index, const std::string& split,
                              int64_t shard) {
  const SplitInfo& info = index.split(split);
  check(shard >= 0 && shard < static_cast<int64_t>(info.shards.size()), dir.string(), ": split '", split, "' has ",
        info.shards.size(), " shards, no shard ", shard);
  check(index.layout.has_special(kLatentSpecial), dir.string(), ": the dataset's layout (", index.layout.describe(),
        ") has no ", kLatentSpecial, " special, so its shards hold no latents");
  const ShardInfo& s = info.shards[static_cast<size_t>(shard)];
  const fs::path path = dir / latents_file_name(s.file);
  const io::SafetensorsFile file = io::load_safetensors(path);
  const auto it = file.tensors.find(kTensorName);
  check(it != file.tensors.end(), path.string(), " has no tensor '", kTensorName, "'; re-run `tessera prepare`");
  const at::Tensor latents = it->second;
  check(latents.dim() == 2 && latents.scalar_type() == at::kFloat, path.string(), ": expected float32 [rows, d], got ",
        latents.scalar_type(), " ", latents.sizes(), "; re-run `tessera prepare`");

  // The rows must match the shard's placeholders one for one.
  const ShardFile tokens = ShardFile::open(dir / s.file, s, false);
  const int64_t placeholder = index.layout.special_id(kLatentSpecial);
  std::vector<int64_t> ids(static_cast<size_t>(tokens.tokens()));
  tokens.read_tokens(0, tokens.tokens(), ids.data());
  int64_t rows = 0;
  for (const int64_t id : ids) rows += id == placeholder;
  check(rows == latents.size(0), path.string(), " holds ", latents.size(0), " latent rows but ", s.file, " has ", rows,
        " ", kLatentSpecial, " placeholders; re-run `tessera prepare`");
  return latents;
}

}  // namespace tessera
