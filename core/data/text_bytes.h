// A small in-memory data path for plain text files: documents -> BLT-compatible byte ids -> packed
// rows. It serves the quickstart and the tests until memory-mapped shards (`tessera prepare`) exist;
// the packing/shuffling/resume logic (PackedRowSource) is shared with them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/data/source.h"

namespace tessera {

struct DataConfig {
  std::string source = "text_bytes";
  std::string path;                    // a UTF-8 text file (any bytes are accepted)
  std::string split_by = "paragraph";  // document boundaries: blank lines, every line, or the whole file
  int64_t seq_len = 256;
  int64_t batch_size = 16;
  double val_fraction = 0.05;
  bool doc_mask = true;  // emit doc_ids so attention stays within each packed document

  template <class V>
  void fields(V& v) {
    v.choice("source", source, {"text_bytes"}, "data source kind");
    v.required("path", path, "input text file (relative to the working dir, the recipe, or the repo)");
    v.choice("split_by", split_by, {"paragraph", "line", "file"}, "what makes one document");
    v.optional("seq_len", seq_len, "tokens per training row");
    v.optional("batch_size", batch_size, "rows per micro-batch (per rank)");
    v.optional("val_fraction", val_fraction, "share of documents held out for validation (taken from the end)");
    v.optional("doc_mask", doc_mask, "block-diagonal attention across packed documents");
  }
};

// A token stream with the document index of every token.
struct TokenStream {
  std::vector<int32_t> tokens;
  std::vector<int32_t> doc;
  int64_t bytes = 0;  // UTF-8 bytes of the text the stream encodes (for bits-per-byte)
};

struct TextCorpus {
  TokenStream train;
  TokenStream val;
  VocabLayout layout;
};

// Reads `path`, splits it into documents and encodes each as <bos> bytes <eos>.
TextCorpus load_text_bytes(const std::string& path, const std::string& split_by, double val_fraction);

// Byte ids for a string (no specials) and back; bytes outside the byte range are dropped on decode.
std::vector<int64_t> encode_bytes(const std::string& text, const VocabLayout& layout);
std::string decode_bytes(const std::vector<int64_t>& ids, const VocabLayout& layout);

// Packs a stream into rows of seq_len + 1 tokens (inputs and shifted targets), in a deterministic
// per-epoch permutation (or in order), split across ranks. Its state is (epoch, cursor).
class PackedRowSource : public DataSource {
 public:
  PackedRowSource(std::shared_ptr<const TokenStream> stream, VocabLayout layout, int64_t batch_size, int64_t seq_len,
                  bool shuffle, uint64_t seed, int64_t rank = 0, int64_t world_size = 1, bool doc_mask = true);

  Batch next() override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  void reset() override;
  const VocabLayout& layout() const override { return layout_; }
  int64_t batches_per_epoch() const override;
  int64_t rows() const { return static_cast<int64_t>(order_.size()); }

 private:
  void build_order();

  std::shared_ptr<const TokenStream> stream_;
  VocabLayout layout_;
  int64_t batch_size_, seq_len_;
  bool shuffle_;
  uint64_t seed_;
  int64_t rank_, world_size_;
  bool doc_mask_;
  int64_t total_rows_ = 0;
  int64_t epoch_ = 0;
  int64_t cursor_ = 0;
  std::vector<int64_t> order_;  // this rank's rows for the current epoch
};

// Resolves a data path: absolute, else relative to the working dir, the recipe's folder, then the
// source tree; the error lists every place tried.
std::string resolve_data_path(const std::string& path, const std::string& recipe_dir);

}  // namespace tessera
