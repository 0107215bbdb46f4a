#include "modalities/prepare.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <functional>

#include "core/config.h"
#include "core/data/latents.h"
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

// A uniform number in [0, 1) from (n, salt): SplitMix64's finaliser.
double unit_hash(uint64_t n, uint64_t salt) {
  uint64_t z = n + 0x9E3779B97F4A7C15ULL * (salt + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

// Document (or pair item) n goes to validation when a hash of (seed, n) falls below val_fraction: a
// streaming, reproducible split that does not need the document count in advance.
bool is_validation(int64_t number, int64_t seed, double val_fraction) {
  return unit_hash(static_cast<uint64_t>(number), static_cast<uint64_t>(seed)) < val_fraction;
}

// Leftovers of an earlier, different or unfinished preparation (never anything else in the folder).
void clear_dataset_files(const fs::path& dir) {
  const auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const bool split_file = name.rfind("train_", 0) == 0 || name.rfind("val_", 0) == 0;
    const bool ours = name == "index.json" || name.rfind("tokenizer.", 0) == 0 ||
                      (split_file && (entry.path().extension() == ".bin" || ends_with(name, ".latents.safetensors"))) ||
                      name.find(".tmp-") != std::string::npos;
    if (ours) remove_tree(entry.path());
  }
}

// The settings recorded and fingerprinted. A text-only config leaves `pairs` out, so that it records
// exactly what it did before pairs existed (same fingerprint: its datasets stay up to date).
nlohmann::json settings_of(const PrepareConfig& config) {
  nlohmann::json j = config::yaml_to_json(config::to_yaml(config));
  if (!config.pairs.enabled()) j.erase("pairs");
  return j;
}

std::string fingerprint_of(const nlohmann::json& settings, const std::vector<std::string>& files,
                           const nlohmann::json& media) {
  nlohmann::json j = {{"settings", settings}, {"shard_format", kShardFormatVersion},
                      {"dataset_format", kDatasetFormatVersion}};
  for (const auto& f : files) {
    std::error_code ec;
    const auto size = fs::file_size(f, ec);
    const auto mtime = fs::last_write_time(f, ec).time_since_epoch().count();
    j["files"].push_back({f, static_cast<int64_t>(size), static_cast<int64_t>(mtime)});
  }
  if (!media.is_null()) j["media_adapter"] = media;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a(j.dump())));
  return hex;
}

// Exactly one input: a corpus or a pairs source.
void check_inputs(const PrepareConfig& config) {
  const bool corpus = !config.corpus.inputs.empty();
  if (!config.pairs.enabled()) {
    check(config::to_json(config.pairs) == config::to_json(PairsConfig{}),
          "prepare.pairs has settings but no source: set prepare.pairs.source to scenes, fashion_mnist, captions "
          "or speech");
    check(corpus, "prepare has nothing to read: set prepare.corpus.inputs (a text corpus) or prepare.pairs.source "
          "(image-caption or audio-transcript pairs)");
    return;
  }
  check(!corpus, "prepare has both corpus.inputs and pairs (source ", config.pairs.source,
        "): a dataset is prepared from one of them; remove the other");
  validate(config.pairs);
}

// The media adapter pairs.media_adapter describes. A relative model path is taken from the working
// directory when it exists there, else from the recipe's folder (make_adapter's base_dir), and recorded
// absolute, so that the dataset's index finds it from its own folder.
std::shared_ptr<const Adapter> build_media_adapter(const PairsConfig& pairs, const std::string& recipe_dir) {
  check(pairs.media_adapter && pairs.media_adapter.IsMap(),
        "prepare.pairs.media_adapter is required: the adapter that encodes the ",
        pairs_media_modality(pairs.source), ", e.g. {type: image_vq, model: runs/image/vq_tokenizer/tokenizer.safetensors}");
  nlohmann::json d = config::yaml_to_json(pairs.media_adapter);
  if (d.contains("model") && d["model"].is_string()) {
    const fs::path model = d["model"].get<std::string>();
    std::error_code ec;
    if (!model.is_absolute()) {
      const fs::path found = fs::exists(model, ec) || recipe_dir.empty() ? model : fs::path(recipe_dir) / model;
      d["model"] = fs::absolute(found).lexically_normal().string();
    }
  }
  try {
    return make_adapter(d, recipe_dir);
  } catch (const Error& e) {
    fail("prepare.pairs.media_adapter: ", e.what());
  }
}

// What a preparation reads: its input files and, for pairs, the media adapter. Errors here mean the
// inputs are not available (prepare_dataset may then use a dataset prepared elsewhere).
struct Inputs {
  std::vector<CorpusFile> corpus;
  std::vector<std::string> files;  // corpus files or the pairs' files, for the fingerprint
  std::shared_ptr<const Adapter> media;
};

Inputs gather_inputs(const PrepareConfig& config, const std::string& recipe_dir,
                     std::shared_ptr<const Adapter> media_override) {
  Inputs in;
  if (!config.pairs.enabled()) {
    in.corpus = list_corpus_files(config.corpus, recipe_dir);
    for (const auto& f : in.corpus) in.files.push_back(f.path);
    return in;
  }
  in.files = pairs_input_files(config.pairs, recipe_dir);
  in.media = media_override ? std::move(media_override) : build_media_adapter(config.pairs, recipe_dir);
  const std::string want = pairs_media_modality(config.pairs.source);
  check(in.media->modality() == want, "prepare.pairs.media_adapter '", in.media->name(), "' encodes ",
        in.media->modality(), " but source ", config.pairs.source, " gives ", want, "; choose an adapter for ", want);
  return in;
}

// The text adapter: bytes, a given SentencePiece model, or one trained now on `training_texts` (which
// calls its argument with each training-split text until it returns false).
std::shared_ptr<const Adapter> make_text_adapter(
    const PrepareConfig& config, const fs::path& out_dir, bool quiet,
    const std::function<void(const std::function<bool(std::string&&)>&)>& training_texts) {
  if (config.adapter == "bytes") return std::make_shared<BytesAdapter>();
  if (!config.bpe_model.empty()) return std::make_shared<SentencePieceAdapter>(config.bpe_model);
  std::vector<std::string> texts;
  int64_t bytes = 0;
  training_texts([&](std::string&& text) {
    bytes += static_cast<int64_t>(text.size());
    texts.push_back(std::move(text));
    return bytes < config.bpe_train_bytes;
  });
  check(!texts.empty(), "the ", config.pairs.enabled() ? "pairs have no training texts" : "corpus has no training documents",
        " to train the BPE model on");
  if (!quiet)
    std::printf("prepare: training a %ld-piece SentencePiece %s model on %s of text\n", (long)config.bpe.vocab_size,
                config.bpe.model_type.c_str(), format_count(static_cast<double>(bytes)).c_str());
  SentencePieceTrainConfig bpe = config.bpe;
  bpe.seed = static_cast<uint64_t>(config.seed);
  train_sentencepiece(texts, bpe, out_dir / "tokenizer");
  return std::make_shared<SentencePieceAdapter>((out_dir / "tokenizer.model").string());
}

// Each text document: <bos> text <eos>.
int64_t write_corpus(const PrepareConfig& config, const std::vector<CorpusFile>& files, const Adapter& adapter,
                     const VocabLayout& layout, ShardWriter& train, ShardWriter& val) {
  const int64_t offset = layout.modality(adapter.name()).offset;
  const int64_t bos = layout.special_id("<bos>"), eos = layout.special_id("<eos>");
  int64_t total_bytes = 0;
  for (const auto& f : files) total_bytes += static_cast<int64_t>(fs::file_size(f.path));
  ProgressBar bar(total_bytes, "prepare");
  int64_t number = 0, read_bytes = 0;
  std::vector<int64_t> tokens;
  for_each_document(files, config.corpus, [&](Sample&& s) {
    const Segment& seg = s.segments.at(0);
    Span span;
    try {
      span = adapter.encode(seg);
    } catch (const Error& e) {
      fail("document ", s.id, ": ", e.what());
    }
    tokens.clear();
    tokens.reserve(span.ids.size() + 2);
    tokens.push_back(bos);
    for (int64_t id : span.ids) tokens.push_back(id + offset);
    tokens.push_back(eos);
    const auto text_bytes = static_cast<int64_t>(seg.text.size());
    (is_validation(number++, config.seed, config.val_fraction) ? val : train).add(tokens, text_bytes);
    read_bytes += text_bytes;
    if (bar.enabled() && number % 256 == 0)
      bar.update(std::min(read_bytes, total_bytes), format_count(static_cast<double>(number)) + " docs");
    return true;
  });
  bar.finish();
  return number;
}

// A split's shard writer and, for continuous media, its latents sidecar writer (made at the first
// latents, whose width it needs).
struct SplitWriter {
  ShardWriter shards;
  std::unique_ptr<LatentsWriter> latents;
  SplitWriter(const fs::path& dir, const std::string& split, int64_t vocab_size, int64_t shard_tokens)
      : shards(dir, split, vocab_size, shard_tokens) {}
};

// What write_pairs did, for index.json and the summary.
struct PairsReport {
  int64_t items = 0, documents = 0;
  int64_t text_tokens = 0, media_tokens = 0, special_tokens = 0;
  SkippedItems skipped;
  int64_t latent_dim = 0;
};

// Each pair's documents (pairs.h): every document of an item goes to the item's split, so that no image
// or recording is seen in both; both orders of a pair hence land together.
PairsReport write_pairs(const PrepareConfig& config, const std::string& recipe_dir, const Adapter& text,
                        const Adapter& media, const VocabLayout& layout, SplitWriter& train, SplitWriter& val,
                        const fs::path& out_dir) {
  const PairsConfig& pairs = config.pairs;
  const int64_t bos = layout.special_id("<bos>"), eos = layout.special_id("<eos>");
  const auto [begin_name, end_name] = segment_delimiters(media.modality());
  const int64_t begin = layout.special_id(begin_name), end = layout.special_id(end_name);
  const bool continuous = media.vocab_size() == 0;
  const int64_t placeholder = continuous ? layout.special_id(kLatentSpecial) : -1;

  PairsReport report;
  ProgressBar bar(pairs.source == "scenes" ? pairs.count : 0, "prepare");
  for_each_pair_item(pairs, recipe_dir, true, [&](MediaItem&& item) {
    const bool is_val = is_validation(item.number, config.seed, config.val_fraction);
    SplitWriter& writer = is_val ? val : train;
    Span media_span;
    try {
      media_span = media.encode(item.media);
    } catch (const Error& e) {
      fail(item.id, ": ", e.what());
    }
    std::vector<int64_t> media_ids;
    if (continuous) {
      check(!media_span.is_discrete() && media_span.latents.dim() == 2, item.id, ": the media adapter '", media.name(),
            "' has no vocabulary but returned no latents [n, d]");
      media_ids.assign(static_cast<size_t>(media_span.latents.size(0)), placeholder);
      if (!train.latents) {
        report.latent_dim = media_span.latents.size(1);
        train.latents = std::make_unique<LatentsWriter>(out_dir, "train", report.latent_dim);
        val.latents = std::make_unique<LatentsWriter>(out_dir, "val", report.latent_dim);
      }
    } else {
      media_ids = to_model_ids(media_span, media, layout);
    }
    for (size_t j = 0; j < item.texts.size(); ++j) {
      const std::string& caption = item.texts[j];
      std::vector<int64_t> text_ids;
      try {
        text_ids = to_model_ids(text.encode(Segment::of_text(caption)), text, layout);
      } catch (const Error& e) {
        fail(item.id, ", text ", j, ": ", e.what());
      }
      std::vector<bool> orders;  // text first?
      if (pairs.order == "both") orders = {true, false};
      else if (pairs.order == "random")
        orders = {unit_hash(static_cast<uint64_t>(item.number) * 1024 + j, static_cast<uint64_t>(config.seed) + 1) < 0.5};
      else orders = {pairs.order == "text_first"};
      for (const bool text_first : orders) {
        // Bits per byte counts only the text's UTF-8 bytes; the loss over media tokens is in the
        // numerator too, so a mixed dataset's bpb is not comparable to a text-only one's.
        writer.shards.add(pair_document(text_ids, media_ids, text_first, bos, eos, begin, end),
                          static_cast<int64_t>(caption.size()));
        if (continuous) writer.latents->add(writer.shards.current_shard(), media_span.latents);
        ++report.documents;
        report.text_tokens += static_cast<int64_t>(text_ids.size());
        report.media_tokens += static_cast<int64_t>(media_ids.size());
        report.special_tokens += 4;
      }
    }
    ++report.items;
    if (bar.enabled() && report.items % 16 == 0)
      bar.update(item.number + 1, format_count(static_cast<double>(report.documents)) + " docs");
    return true;
  }, &report.skipped);
  bar.finish();
  return report;
}

}  // namespace

std::string prepare_fingerprint(const PrepareConfig& config, const std::vector<CorpusFile>& files) {
  std::vector<std::string> paths;
  for (const auto& f : files) paths.push_back(f.path);
  return fingerprint_of(settings_of(config), paths, nullptr);
}

PrepareResult prepare_dataset(const PrepareConfig& config, const fs::path& out_dir, const std::string& recipe_dir,
                              bool force, bool quiet, std::shared_ptr<const Adapter> media_adapter) {
  const auto start = std::chrono::steady_clock::now();
  check(config.val_fraction >= 0 && config.val_fraction < 1, "prepare.val_fraction must be in [0, 1), got ",
        config.val_fraction);
  check(config.shard_tokens > 0, "prepare.shard_tokens must be positive");
  check_inputs(config);
  const nlohmann::json settings = settings_of(config);
  PrepareResult result;
  result.dir = out_dir;
  Inputs inputs;
  try {
    inputs = gather_inputs(config, recipe_dir, std::move(media_adapter));
  } catch (const Error& e) {
    // Shards prepared on another machine (say, a GPU box without the corpus) with these very settings:
    // use them as they are. Changed settings with missing inputs stay an error.
    if (force || !fs::exists(out_dir / "index.json")) throw;
    DatasetIndex existing = DatasetIndex::load(out_dir);
    if (existing.source.value("settings", nlohmann::json()) != settings) throw;
    result.index = std::move(existing);
    result.up_to_date = true;
    if (!quiet)
      std::printf("prepare: the inputs are not available here (%s); using the prepared dataset %s as it is\n",
                  e.what(), out_dir.string().c_str());
    return result;
  }
  const std::string fingerprint =
      fingerprint_of(settings, inputs.files, inputs.media ? inputs.media->describe() : nlohmann::json());

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

  // The text adapter: bytes, or a SentencePiece model (trained now on the training split when none is
  // given: the corpus's training documents, or the training items' texts).
  const auto adapter = make_text_adapter(config, out_dir, quiet, [&](const std::function<bool(std::string&&)>& take) {
    if (config.pairs.enabled()) {
      // Texts only: media are not read, so items skip_bad would drop still lend their captions here.
      for_each_pair_item(config.pairs, recipe_dir, false, [&](MediaItem&& item) {
        if (is_validation(item.number, config.seed, config.val_fraction)) return true;
        for (auto& t : item.texts)
          if (!take(std::move(t))) return false;
        return true;
      });
    } else {
      int64_t number = 0;
      for_each_document(inputs.corpus, config.corpus, [&](Sample&& s) {
        if (is_validation(number++, config.seed, config.val_fraction)) return true;
        return take(std::move(s.segments[0].text));
      });
    }
  });
  std::vector<std::shared_ptr<const Adapter>> adapters = {adapter};
  if (inputs.media) adapters.push_back(inputs.media);
  const VocabLayout layout = layout_for(adapters);

  SplitWriter train(out_dir, "train", layout.size(), config.shard_tokens);
  SplitWriter val(out_dir, "val", layout.size(), config.shard_tokens);
  int64_t documents = 0;
  PairsReport pairs;
  if (inputs.media)
    pairs = write_pairs(config, recipe_dir, *adapter, *inputs.media, layout, train, val, out_dir);
  else
    documents = write_corpus(config, inputs.corpus, *adapter, layout, train.shards, val.shards);

  DatasetIndex index;
  index.format_version = kDatasetFormatVersion;
  index.layout = layout;
  nlohmann::json described = adapter->describe();
  if (described.contains("model") && config.bpe_model.empty()) described["model"] = "tokenizer.model";
  index.adapters = nlohmann::json::array({described});  // the text adapter first
  index.source = {{"fingerprint", fingerprint}, {"settings", settings}, {"files", static_cast<int64_t>(inputs.files.size())}};
  index.splits["train"] = train.shards.finish();
  index.splits["val"] = val.shards.finish();
  if (!inputs.media) {
    index.source["documents"] = documents;
    check(index.splits["train"].docs > 0, "the corpus produced no training documents (", documents,
          " documents read); check prepare.corpus.inputs and min_chars");
  } else {
    index.adapters.push_back(inputs.media->describe());
    index.source["documents"] = pairs.documents;
    index.source["pairs"] = {{"source", config.pairs.source},
                             {"items", pairs.items},
                             {"tokens", {{"text", pairs.text_tokens},
                                         {inputs.media->modality(), pairs.media_tokens},
                                         {"special", pairs.special_tokens}}},
                             {"skipped", {{"count", pairs.skipped.count}, {"examples", pairs.skipped.examples}}}};
    if (pairs.latent_dim > 0) {
      // Each shard's latents sidecar (core/data/latents.h) and what a latents consumer needs to know.
      nlohmann::json files = nlohmann::json::object();
      for (SplitWriter* w : {&train, &val}) {
        const std::string split = w == &train ? "train" : "val";
        for (const auto& f : w->latents->finish(static_cast<int64_t>(index.splits[split].shards.size())))
          files[split].push_back({{"file", f.file}, {"rows", f.rows}});
      }
      index.source["latents"] = {{"placeholder", kLatentSpecial}, {"dim", pairs.latent_dim}, {"dtype", "float32"},
                                 {"adapter", inputs.media->describe()}, {"files", files}};
    }
    check(index.splits["train"].docs > 0, "the pairs produced no training documents (", pairs.items, " items read, ",
          pairs.skipped.count, " skipped); check prepare.pairs (count, val_fraction, the source's files)");
  }
  index.save(out_dir);  // last: its presence marks the dataset complete

  result.index = std::move(index);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!quiet && inputs.media) {
    const auto& tr = result.index.splits.at("train");
    const auto& va = result.index.splits.at("val");
    std::printf("prepare: %s pairs (%s text + %s) -> %s in %.1fs: %s items -> %s documents (train %s / val %s); "
                "tokens: %s text, %s %s, %s specials; %s skipped\n(%s)\n",
                config.pairs.source.c_str(), config.adapter.c_str(), inputs.media->name().c_str(),
                out_dir.string().c_str(), result.seconds, format_count(static_cast<double>(pairs.items)).c_str(),
                format_count(static_cast<double>(pairs.documents)).c_str(), format_count(static_cast<double>(tr.docs)).c_str(),
                format_count(static_cast<double>(va.docs)).c_str(), format_count(static_cast<double>(pairs.text_tokens)).c_str(),
                format_count(static_cast<double>(pairs.media_tokens)).c_str(), inputs.media->modality().c_str(),
                format_count(static_cast<double>(pairs.special_tokens)).c_str(),
                std::to_string(pairs.skipped.count).c_str(), layout.describe().c_str());
    for (const auto& example : pairs.skipped.examples) std::printf("prepare: skipped %s\n", example.c_str());
  } else if (!quiet) {
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
