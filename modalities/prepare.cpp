#include "modalities/prepare.h"

#include <chrono>
#include <cstdio>

#include "core/config.h"
#include "core/error.h"
#include "core/io/files.h"
#include "core/progress.h"
#include "modalities/bytes/bytes_adapter.h"
#include "modalities/registry.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

// Document n goes to validation when a hash of (seed, n) falls below val_fraction: a streaming,
// reproducible split that does not need the document count in advance.
bool is_validation(int64_t doc_number, int64_t seed, double val_fraction) {
  uint64_t z = static_cast<uint64_t>(doc_number) + 0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(seed) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53 < val_fraction;
}

// Leftovers of an earlier, different or unfinished preparation (never anything else in the folder).
void clear_dataset_files(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const bool ours = name == "index.json" || name.rfind("tokenizer.", 0) == 0 ||
                      (entry.path().extension() == ".bin" && (name.rfind("train_", 0) == 0 || name.rfind("val_", 0) == 0)) ||
                      name.find(".tmp-") != std::string::npos;
    if (ours) remove_tree(entry.path());
  }
}

}  // namespace

std::string prepare_fingerprint(const PrepareConfig& config, const std::vector<CorpusFile>& files) {
  nlohmann::json j = {{"settings", config::yaml_to_json(config::to_yaml(config))},
                      {"shard_format", kShardFormatVersion}, {"dataset_format", kDatasetFormatVersion}};
  for (const auto& f : files) {
    std::error_code ec;
    const auto size = fs::file_size(f.path, ec);
    const auto mtime = fs::last_write_time(f.path, ec).time_since_epoch().count();
    j["files"].push_back({f.path, static_cast<int64_t>(size), static_cast<int64_t>(mtime)});
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a(j.dump())));
  return hex;
}

PrepareResult prepare_dataset(const PrepareConfig& config, const fs::path& out_dir, const std::string& recipe_dir,
                              bool force, bool quiet) {
  const auto start = std::chrono::steady_clock::now();
  check(config.val_fraction >= 0 && config.val_fraction < 1, "prepare.val_fraction must be in [0, 1), got ",
        config.val_fraction);
  check(config.shard_tokens > 0, "prepare.shard_tokens must be positive");
  PrepareResult result;
  result.dir = out_dir;
  std::vector<CorpusFile> files;
  try {
    files = list_corpus_files(config.corpus, recipe_dir);
  } catch (const Error& e) {
    // Shards prepared on another machine (say, a GPU box without the corpus) with these very settings:
    // use them as they are. Changed settings with missing inputs stay an error.
    if (force || !fs::exists(out_dir / "index.json")) throw;
    DatasetIndex existing = DatasetIndex::load(out_dir);
    if (existing.source.value("settings", nlohmann::json()) != config::yaml_to_json(config::to_yaml(config))) throw;
    result.index = std::move(existing);
    result.up_to_date = true;
    if (!quiet)
      std::printf("prepare: the corpus is not available here (%s); using the prepared dataset %s as it is\n",
                  e.what(), out_dir.string().c_str());
    return result;
  }
  const std::string fingerprint = prepare_fingerprint(config, files);

  if (fs::exists(out_dir / "index.json")) {
    DatasetIndex existing = DatasetIndex::load(out_dir);
    const std::string had = existing.source.value("fingerprint", std::string());
    if (had == fingerprint && !force) {
      result.index = std::move(existing);
      result.up_to_date = true;
      if (!quiet) std::printf("prepare: %s is up to date\n", out_dir.string().c_str());
      return result;
    }
    check(force, "dataset ", out_dir.string(), " was prepared from other inputs or settings (fingerprint ", had,
          ", now ", fingerprint, "); choose another data.dataset, or pass --force to rebuild it");
  }
  fs::create_directories(out_dir);
  clear_dataset_files(out_dir);

  // The adapter: bytes, or a SentencePiece model (trained now on the training split when none is given).
  std::shared_ptr<const Adapter> adapter;
  if (config.adapter == "bytes") {
    adapter = std::make_shared<BytesAdapter>();
  } else if (!config.bpe_model.empty()) {
    adapter = std::make_shared<SentencePieceAdapter>(config.bpe_model);
  } else {
    std::vector<std::string> texts;
    int64_t bytes = 0, number = 0;
    for_each_document(files, config.corpus, [&](Sample&& s) {
      if (!is_validation(number++, config.seed, config.val_fraction)) {
        bytes += static_cast<int64_t>(s.segments[0].text.size());
        texts.push_back(std::move(s.segments[0].text));
      }
      return bytes < config.bpe_train_bytes;
    });
    check(!texts.empty(), "the corpus has no training documents to train the BPE model on");
    if (!quiet)
      std::printf("prepare: training a %ld-piece SentencePiece %s model on %s of text\n", (long)config.bpe.vocab_size,
                  config.bpe.model_type.c_str(), format_count(static_cast<double>(bytes)).c_str());
    SentencePieceTrainConfig bpe = config.bpe;
    bpe.seed = static_cast<uint64_t>(config.seed);
    train_sentencepiece(texts, bpe, out_dir / "tokenizer");
    adapter = std::make_shared<SentencePieceAdapter>((out_dir / "tokenizer.model").string());
  }
  const VocabLayout layout = layout_for({adapter});
  const int64_t offset = layout.modality(adapter->name()).offset;
  const int64_t bos = layout.special_id("<bos>"), eos = layout.special_id("<eos>");

  int64_t total_bytes = 0;
  for (const auto& f : files) total_bytes += static_cast<int64_t>(fs::file_size(f.path));
  ProgressBar bar(total_bytes, "prepare");
  ShardWriter train_writer(out_dir, "train", layout.size(), config.shard_tokens);
  ShardWriter val_writer(out_dir, "val", layout.size(), config.shard_tokens);
  int64_t number = 0, read_bytes = 0;
  std::vector<int64_t> tokens;
  for_each_document(files, config.corpus, [&](Sample&& s) {
    const Segment& seg = s.segments.at(0);
    Span span;
    try {
      span = adapter->encode(seg);
    } catch (const Error& e) {
      fail("document ", s.id, ": ", e.what());
    }
    tokens.clear();
    tokens.reserve(span.ids.size() + 2);
    tokens.push_back(bos);
    for (int64_t id : span.ids) tokens.push_back(id + offset);
    tokens.push_back(eos);
    const auto text_bytes = static_cast<int64_t>(seg.text.size());
    (is_validation(number++, config.seed, config.val_fraction) ? val_writer : train_writer).add(tokens, text_bytes);
    read_bytes += text_bytes;
    if (bar.enabled() && number % 256 == 0)
      bar.update(std::min(read_bytes, total_bytes), format_count(static_cast<double>(number)) + " docs");
    return true;
  });
  bar.finish();

  DatasetIndex index;
  index.format_version = kDatasetFormatVersion;
  index.layout = layout;
  nlohmann::json described = adapter->describe();
  if (described.contains("model") && config.bpe_model.empty()) described["model"] = "tokenizer.model";
  index.adapters = nlohmann::json::array({described});
  index.source = {{"fingerprint", fingerprint},
                  {"settings", config::yaml_to_json(config::to_yaml(config))},
                  {"files", static_cast<int64_t>(files.size())},
                  {"documents", number}};
  index.splits["train"] = train_writer.finish();
  index.splits["val"] = val_writer.finish();
  check(index.splits["train"].docs > 0, "the corpus produced no training documents (", number,
        " documents read); check prepare.corpus.inputs and min_chars");
  index.save(out_dir);  // last: its presence marks the dataset complete

  result.index = std::move(index);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!quiet) {
    const auto& tr = result.index.splits.at("train");
    const auto& va = result.index.splits.at("val");
    std::printf("prepare: %s -> %s in %.1fs: train %s docs / %s tokens / %s bytes, val %s docs / %s tokens "
                "(%s, %.2f bytes per token)\n",
                config.adapter.c_str(), out_dir.string().c_str(), result.seconds,
                format_count(static_cast<double>(tr.docs)).c_str(), format_count(static_cast<double>(tr.tokens)).c_str(),
                format_count(static_cast<double>(tr.bytes)).c_str(), format_count(static_cast<double>(va.docs)).c_str(),
                format_count(static_cast<double>(va.tokens)).c_str(), layout.describe().c_str(),
                static_cast<double>(tr.bytes) / std::max<int64_t>(1, tr.tokens - 2 * tr.docs));
  }
  return result;
}

}  // namespace tessera
