#include "eval/bench/bench_model.h"

#include <yaml-cpp/yaml.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>

#include "architectures/registry.h"
#include "core/config.h"
#include "core/data/entropies.h"
#include "core/data/packer.h"
#include "core/data/shard.h"
#include "core/error.h"

namespace tessera {

std::shared_ptr<LanguageModel> bench_model(const std::string& spec, int64_t vocab_size, int64_t max_seq_len) {
  check(!spec.empty(), "bench: --model needs a YAML model section or a file holding one");
  const bool is_file = spec.find('{') == std::string::npos && std::filesystem::exists(spec);
  YAML::Node root = is_file ? config::load_yaml_file(spec) : config::load_yaml_string(spec, "--model");
  YAML::Node node = root.IsMap() && root["model"] ? YAML::Clone(root["model"]) : YAML::Clone(root);
  check(node.IsMap() && node["arch"], "bench: --model ", is_file ? "file " : "", spec,
        " has no model section with 'arch' (e.g. --model \"{arch: megalodon, dim: 512}\")");
  if (max_seq_len > 0 && (!node["max_seq_len"] || node["max_seq_len"].as<int64_t>() < max_seq_len))
    node["max_seq_len"] = max_seq_len;
  ModelContext context;
  context.vocab_size = vocab_size;
  context.file = is_file ? spec : "--model";
  return build_model(node, context);
}

BenchData bench_batches(const std::string& dataset, const std::string& split, int64_t count, int64_t batch_size,
                        int64_t seq_len, int64_t vocab_size, uint64_t seed) {
  check(count > 0 && batch_size > 0 && seq_len > 0, "bench: batches, batch size and sequence length must be positive");
  BenchData out;
  if (dataset.empty()) {
    out.layout = VocabLayout::bytes();
    const auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (int64_t i = 0; i < count; ++i) {
      const at::Tensor row = at::randint(vocab_size, {batch_size, seq_len + 1}, gen, at::kLong);
      Batch b;
      b.tokens = row.narrow(1, 0, seq_len).contiguous();
      b.targets = row.narrow(1, 1, seq_len).contiguous();
      out.batches.push_back(b);
    }
    return out;
  }
  const DatasetIndex index = DatasetIndex::load(dataset);
  out.layout = index.layout;
  check(index.layout.size() <= vocab_size || vocab_size <= 0, "bench: dataset ", dataset, " has ",
        index.layout.size(), " ids (", index.layout.describe(), "), more than the model's vocabulary ", vocab_size);
  PackerOptions options;
  options.batch_size = batch_size;
  options.seq_len = seq_len;
  options.shuffle = true;
  options.seed = seed;
  options.doc_mask = false;
  auto store = ShardedSplit::open(dataset, index, split, /*verify=*/false);
  if (has_entropies(dataset)) {  // BLT then patches from the stored entropies, as in training
    read_entropies_info(dataset, index);
    store->attach_entropies(dataset);
  }
  PackedRowSource source(store, index.layout, options);
  check(source.batches_per_epoch() > 0, "bench: the ", split, " split of ", dataset, " has fewer than ", batch_size,
        " rows of ", seq_len, " tokens; lower --batch or --seq");
  for (int64_t i = 0; i < count; ++i) out.batches.push_back(source.next());
  return out;
}

}  // namespace tessera
