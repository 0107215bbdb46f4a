// Subword text tokens through SentencePiece (BPE by default): training a model from documents, and the
// "text_bpe" adapter that encodes UTF-8 text with a trained .model file.
//
// Models trained here are lossless for any valid UTF-8 text: no normalization, whitespace kept as it
// is, characters outside the vocabulary fall back to byte pieces. decode(encode(text)) == text.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/data/sample.h"

namespace tessera {
namespace spm {
class Model;
}

struct SentencePieceTrainConfig {
  int64_t vocab_size = 4096;
  double character_coverage = 0.9995;
  std::string model_type = "bpe";
  int64_t max_sentences = 1000000;
  int64_t max_line_bytes = 4096;
  int64_t seed = 0;
  int64_t threads = 8;
  bool verbose = false;

  template <class V>
  void fields(V& v) {
    v.optional("vocab_size", vocab_size, "pieces in the model, including <unk> and the 256 byte pieces");
    v.optional("character_coverage", character_coverage,
               "share of the corpus characters that get their own piece; rarer ones fall back to bytes");
    v.choice("model_type", model_type, {"bpe", "unigram"}, "SentencePiece model type");
    v.optional("max_sentences", max_sentences,
               "train on at most this many lines, sampled with `seed` (0: all; memory grows with it)");
    v.optional("max_line_bytes", max_line_bytes, "longer lines are cut into chunks of at most this many bytes");
    v.optional("seed", seed, "random seed of the line sampling (same data + seed -> same model)");
    v.optional("threads", threads,
               "trainer threads (0: all cores; the .model records the count, so a fixed one keeps files identical)");
    v.optional("verbose", verbose, "let SentencePiece log its progress to stderr");
  }
};

// Calls `next(doc)` until it returns false; each true return has filled `doc` with one document.
using DocumentStream = std::function<bool(std::string& document)>;

struct SentencePieceTrainResult {
  std::filesystem::path model;  // <prefix>.model
  std::filesystem::path vocab;  // <prefix>.vocab
  int64_t vocab_size = 0;
  int64_t lines = 0;       // non-empty lines (after cutting long ones) in the documents
  int64_t lines_used = 0;  // lines the trainer saw (at most max_sentences)
};

// Trains a model and writes `<prefix>.model` and `<prefix>.vocab` (one "piece<TAB>score" per line),
// each atomically (.model last: it existing means training finished). Documents are fed to the trainer
// line by line, so newlines encode as the byte piece <0x0A>. When there are more lines than
// max_sentences, a uniform sample drawn with `seed` is used. Errors (empty corpus, a vocabulary the
// corpus cannot fill, ...) are tessera::Error.
SentencePieceTrainResult train_sentencepiece(const DocumentStream& documents, const SentencePieceTrainConfig& config,
                                             const std::filesystem::path& model_prefix);
SentencePieceTrainResult train_sentencepiece(const std::vector<std::string>& documents,
                                             const SentencePieceTrainConfig& config,
                                             const std::filesystem::path& model_prefix);

class SentencePieceAdapter final : public Adapter {
 public:
  static constexpr const char* kName = "text_bpe";
  static constexpr const char* kType = "sentencepiece";  // describe()["type"]

  // Loads `model` (resolved against `base_dir` when relative and base_dir is not empty). describe()
  // records `model` as given, so that descriptions stay relative to their base directory.
  explicit SentencePieceAdapter(std::filesystem::path model, const std::filesystem::path& base_dir = {});
  ~SentencePieceAdapter() override;
  SentencePieceAdapter(const SentencePieceAdapter&) = delete;
  SentencePieceAdapter& operator=(const SentencePieceAdapter&) = delete;

  std::string name() const override { return kName; }
  std::string modality() const override { return modality::kText; }
  int64_t vocab_size() const override { return vocab_size_; }
  // The text must be valid UTF-8 (the bytes adapter takes any bytes).
  Span encode(const Segment& segment) const override;
  // Ids outside [0, vocab_size) are an error; byte pieces that do not form UTF-8 decode to U+FFFD.
  Segment decode(const Span& span) const override;
  // {"type": "sentencepiece", "model": path as given, "crc32": of the file, "vocab_size": n}
  nlohmann::json describe() const override;

  const std::filesystem::path& model_path() const { return resolved_; }  // the file that was loaded
  uint32_t crc32() const { return crc32_; }
  std::string piece(int64_t id) const;  // the piece string of an id (for inspection and tests)

 private:
  void append_ids(std::string_view text, std::vector<int64_t>& ids) const;

  std::filesystem::path model_;     // as given
  std::filesystem::path resolved_;  // as loaded
  uint32_t crc32_ = 0;
  int64_t vocab_size_ = 0;
  std::array<int64_t, 256> byte_ids_{};  // id of the byte piece <0xXX> for each byte
  std::unique_ptr<const spm::Model> sp_;
};

}  // namespace tessera
