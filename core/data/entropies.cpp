#include "core/data/entropies.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "core/io/files.h"
#include "core/io/safetensors.h"
#include "core/progress.h"

namespace tessera {
namespace fs = std::filesystem;

std::string entropies_file_name(const std::string& shard_file) {
  const std::string stem = shard_file.size() > 4 && shard_file.compare(shard_file.size() - 4, 4, ".bin") == 0
                               ? shard_file.substr(0, shard_file.size() - 4)
                               : shard_file;
  return stem + ".entropies.safetensors";
}

bool has_entropies(const fs::path& dir) { return fs::exists(dir / kEntropiesInfoFile); }

nlohmann::json read_entropies_info(const fs::path& dir, const DatasetIndex& index) {
  const fs::path file = dir / kEntropiesInfoFile;
  std::ifstream in(file);
  check(static_cast<bool>(in), "cannot open ", file.string());
  nlohmann::json info;
  try {
    info = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    fail(file.string(), " is not valid JSON (", e.what(), "); recompute it with `tessera patch entropies`");
  }
  check(info.is_object() && info.contains("shards") && info.contains("entropy_model"), file.string(),
        " lacks 'shards' or 'entropy_model'; recompute it with `tessera patch entropies`");
  for (const auto& [split, split_info] : index.splits)
    for (const ShardInfo& shard : split_info.shards) {
      const auto& shards = info["shards"];
      check(shards.contains(shard.file) && shards[shard.file].value("crc32", std::string()) == shard.crc32,
            file.string(), ": the entropies were computed for other shards than ", shard.file, " (CRC-32 ",
            shard.crc32, "): the dataset was prepared again since; recompute them with `tessera patch entropies`");
    }
  return info;
}

at::Tensor read_shard_entropies(const fs::path& dir, const std::string& shard_file, int64_t tokens) {
  const fs::path file = dir / entropies_file_name(shard_file);
  check(fs::exists(file), "missing ", file.string(), " (entropies of ", shard_file,
        "); recompute them with `tessera patch entropies`");
  io::SafetensorsFile st = io::load_safetensors(file);
  const auto it = st.tensors.find("entropies");
  check(it != st.tensors.end(), file.string(), " has no tensor 'entropies'");
  const at::Tensor& h = it->second;
  check(h.scalar_type() == at::kHalf && h.dim() == 1 && h.size(0) == tokens, file.string(),
        " must hold float16 [", tokens, "] (the tokens of ", shard_file, "), found ", h.scalar_type(), " ",
        h.sizes(), "; recompute it with `tessera patch entropies`");
  return h.contiguous();
}

namespace {

// One shard's entropies: rows of [context + chunk] tokens through the entropy function, B at a time.
at::Tensor shard_entropies(const ShardFile& shard, const EntropyFn& entropies_of, const EntropyPassOptions& o) {
  const int64_t n = shard.tokens();
  at::Tensor out = at::zeros({n}, at::kFloat);
  if (n == 0) return out;
  std::vector<int64_t> tokens(static_cast<size_t>(n)), docs(static_cast<size_t>(n));
  shard.read_tokens(0, n, tokens.data());
  const int64_t* off = shard.doc_offsets();
  for (int64_t d = 0; d < shard.docs(); ++d) std::fill(docs.begin() + off[d], docs.begin() + off[d + 1], d);
  const int64_t row_len = std::min(o.chunk + o.context, n);
  std::vector<int64_t> starts;
  for (int64_t s = 0; s < n; s += o.chunk) starts.push_back(s);
  for (size_t first = 0; first < starts.size(); first += static_cast<size_t>(o.batch_size)) {
    const size_t count = std::min(starts.size() - first, static_cast<size_t>(o.batch_size));
    at::Tensor rows = at::full({static_cast<int64_t>(count), row_len}, o.pad_id, at::kLong);
    at::Tensor row_docs = at::full({static_cast<int64_t>(count), row_len}, shard.docs(), at::kLong);
    auto r_tok = rows.accessor<int64_t, 2>();
    auto r_doc = row_docs.accessor<int64_t, 2>();
    for (size_t r = 0; r < count; ++r) {
      const int64_t start = starts[first + r], from = std::max<int64_t>(0, start - o.context);
      const int64_t to = std::min(n, start + o.chunk);
      for (int64_t i = from; i < to; ++i) {
        r_tok[r][i - from] = tokens[i];
        r_doc[r][i - from] = docs[i];
      }
    }
    const at::Tensor h = entropies_of(rows, row_docs).to(at::kCPU, at::kFloat);
    check(h.dim() == 2 && h.size(0) == static_cast<int64_t>(count) && h.size(1) == row_len,
          "entropy pass: the entropy function returned ", h.sizes(), " for rows [", count, ", ", row_len, "]");
    for (size_t r = 0; r < count; ++r) {
      const int64_t start = starts[first + r], from = std::max<int64_t>(0, start - o.context);
      const int64_t to = std::min(n, start + o.chunk);
      out.narrow(0, start, to - start).copy_(h[static_cast<int64_t>(r)].narrow(0, start - from, to - start));
    }
  }
  return out;
}

}  // namespace

EntropyPassResult compute_dataset_entropies(const fs::path& dir, const DatasetIndex& index,
                                            const EntropyFn& entropies_of, const EntropyPassOptions& o,
                                            const nlohmann::json& identity) {
  check(o.chunk > 0 && o.context >= 0 && o.batch_size > 0,
        "entropy pass: chunk and batch size must be positive and context >= 0");
  const auto start = std::chrono::steady_clock::now();
  std::error_code ec;
  fs::remove(dir / kEntropiesInfoFile, ec);  // the old pass is invalid from here on
  int64_t total = 0;
  for (const auto& [split, info] : index.splits) total += info.tokens;
  ProgressBar bar(total, "entropies");
  EntropyPassResult result;
  double sum = 0;
  nlohmann::json shards = nlohmann::json::object();
  for (const auto& [split, info] : index.splits) {
    for (const ShardInfo& entry : info.shards) {
      const ShardFile shard = ShardFile::open(dir / entry.file, entry, /*verify_checksum=*/true);
      const at::Tensor h = shard_entropies(shard, entropies_of, o);
      check(at::isfinite(h).all().item<bool>(), "entropy pass: non-finite entropies in ", entry.file,
            "; check the entropy model");
      sum += h.sum().item<double>();
      io::save_safetensors(dir / entropies_file_name(entry.file), {{"entropies", h.to(at::kHalf)}},
                           {{"format", "pt"}, {"tessera", "blt next-byte entropies (nats)"}});
      shards[entry.file] = {{"crc32", entry.crc32}, {"tokens", entry.tokens}};
      result.tokens += entry.tokens;
      bar.update(result.tokens, entry.file);
    }
  }
  bar.finish();
  const nlohmann::json info = {{"format", 1},
                               {"entropy_model", identity},
                               {"chunk", o.chunk},
                               {"context", o.context},
                               {"shards", shards}};
  const std::string text = info.dump(2) + "\n";
  write_bytes_atomic(dir / kEntropiesInfoFile, text.data(), text.size());
  result.mean_entropy = result.tokens > 0 ? sum / static_cast<double>(result.tokens) : 0.0;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace tessera
