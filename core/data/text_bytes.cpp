#include "core/data/text_bytes.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

std::vector<std::string> split_documents(const std::string& text, const std::string& split_by) {
  std::vector<std::string> docs;
  if (split_by == "file") {
    if (!text.empty()) docs.push_back(text);
    return docs;
  }
  std::istringstream in(text);
  std::string line, current;
  auto flush = [&] {
    if (!current.empty()) docs.push_back(current);
    current.clear();
  };
  while (std::getline(in, line)) {
    if (split_by == "line") {
      if (!line.empty()) docs.push_back(line);
      continue;
    }
    const bool blank = line.find_first_not_of(" \t\r") == std::string::npos;
    if (blank) {
      flush();
    } else {
      if (!current.empty()) current += '\n';
      current += line;
    }
  }
  flush();
  return docs;
}

void append_document(TokenStream& s, const std::string& doc, int32_t doc_index, int32_t bos, int32_t eos,
                     int32_t byte_offset) {
  s.tokens.push_back(bos);
  for (unsigned char c : doc) s.tokens.push_back(byte_offset + c);
  s.tokens.push_back(eos);
  s.doc.insert(s.doc.end(), doc.size() + 2, doc_index);
  s.bytes += static_cast<int64_t>(doc.size());
}

}  // namespace

TextCorpus load_text_bytes(const std::string& path, const std::string& split_by, double val_fraction) {
  check(val_fraction >= 0.0 && val_fraction < 1.0, "data.val_fraction must be in [0, 1), got ", val_fraction);
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), "cannot read data file '", path, "'");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::vector<std::string> docs = split_documents(buffer.str(), split_by);
  check(!docs.empty(), "data file '", path, "' holds no documents (is it empty?)");

  TextCorpus corpus;
  corpus.layout = VocabLayout::bytes();
  const auto bos = static_cast<int32_t>(corpus.layout.special_id("<bos>"));
  const auto eos = static_cast<int32_t>(corpus.layout.special_id("<eos>"));
  const auto offset = static_cast<int32_t>(corpus.layout.modality("bytes").offset);
  const auto n_val = static_cast<size_t>(val_fraction * static_cast<double>(docs.size()));
  check(val_fraction == 0.0 || n_val >= 1, "data file '", path, "' has only ", docs.size(),
        " documents: too few for a validation split of ", val_fraction, " (use more text or a larger val_fraction)");
  const size_t n_train = docs.size() - n_val;
  for (size_t i = 0; i < docs.size(); ++i) {
    TokenStream& target = i < n_train ? corpus.train : corpus.val;
    append_document(target, docs[i], static_cast<int32_t>(i), bos, eos, offset);
  }
  return corpus;
}

std::vector<int64_t> encode_bytes(const std::string& text, const VocabLayout& layout) {
  const int64_t offset = layout.modality("bytes").offset;
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(offset + c);
  return ids;
}

std::string decode_bytes(const std::vector<int64_t>& ids, const VocabLayout& layout) {
  const auto& range = layout.modality("bytes");
  std::string out;
  for (int64_t id : ids)
    if (id >= range.offset && id < range.offset + range.size) out.push_back(static_cast<char>(id - range.offset));
  return out;
}

PackedRowSource::PackedRowSource(std::shared_ptr<const TokenStream> stream, VocabLayout layout, int64_t batch_size,
                                 int64_t seq_len, bool shuffle, uint64_t seed, int64_t rank, int64_t world_size,
                                 bool doc_mask)
    : stream_(std::move(stream)),
      layout_(std::move(layout)),
      batch_size_(batch_size),
      seq_len_(seq_len),
      shuffle_(shuffle),
      seed_(seed),
      rank_(rank),
      world_size_(world_size),
      doc_mask_(doc_mask) {
  check(batch_size_ > 0 && seq_len_ > 0, "batch_size and seq_len must be positive");
  check(world_size_ > 0 && rank_ >= 0 && rank_ < world_size_, "rank ", rank_, " outside world size ", world_size_);
  const auto n = static_cast<int64_t>(stream_->tokens.size());
  total_rows_ = n > 1 ? (n - 1) / seq_len_ : 0;
  check(total_rows_ / world_size_ >= 1, "data split holds ", n, " tokens: not one row of seq_len ", seq_len_,
        " + 1 per rank; use more data or a shorter data.seq_len");
  build_order();
}

void PackedRowSource::build_order() {
  std::vector<int64_t> all(total_rows_);
  for (int64_t i = 0; i < total_rows_; ++i) all[i] = i;
  if (shuffle_) {
    // Fisher-Yates with a generator of our own: the order depends only on (seed, epoch).
    std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch_) + 1);
    for (int64_t i = total_rows_ - 1; i > 0; --i) {
      std::uniform_int_distribution<int64_t> pick(0, i);
      std::swap(all[i], all[pick(rng)]);
    }
  }
  order_.clear();
  const int64_t per_rank = total_rows_ / world_size_;  // equal counts keep ranks in step
  for (int64_t i = 0; i < per_rank; ++i) order_.push_back(all[i * world_size_ + rank_]);
}

int64_t PackedRowSource::batches_per_epoch() const {
  const auto rows = static_cast<int64_t>(order_.size());
  return shuffle_ ? std::max<int64_t>(1, rows / batch_size_) : (rows + batch_size_ - 1) / batch_size_;
}

Batch PackedRowSource::next() {
  const auto rows_left = static_cast<int64_t>(order_.size()) - cursor_;
  // Training drops a last partial batch (fixed shapes); validation keeps it.
  if (rows_left <= 0 || (shuffle_ && rows_left < std::min<int64_t>(batch_size_, order_.size()))) {
    ++epoch_;
    cursor_ = 0;
    build_order();
  }
  const int64_t b = std::min<int64_t>(batch_size_, static_cast<int64_t>(order_.size()) - cursor_);
  const int64_t width = seq_len_ + 1;
  auto tokens = at::empty({b, width}, at::kLong);
  auto docs = at::empty({b, width}, at::kLong);
  auto* tok = tokens.data_ptr<int64_t>();
  auto* dd = docs.data_ptr<int64_t>();
  for (int64_t r = 0; r < b; ++r) {
    const int64_t start = order_[cursor_ + r] * seq_len_;
    const int32_t first_doc = stream_->doc[start];
    for (int64_t t = 0; t < width; ++t) {
      tok[r * width + t] = stream_->tokens[start + t];
      dd[r * width + t] = stream_->doc[start + t] - first_doc;
    }
  }
  cursor_ += b;

  Batch batch;
  batch.tokens = tokens.narrow(1, 0, seq_len_).contiguous();
  batch.targets = tokens.narrow(1, 1, seq_len_).contiguous();
  // A document's first token cannot be predicted from the previous document.
  const int64_t bos = layout_.has_special("<bos>") ? layout_.special_id("<bos>") : -1;
  batch.loss_mask = batch.targets.ne(bos).to(at::kFloat);
  if (doc_mask_) batch.doc_ids = docs.narrow(1, 0, seq_len_).contiguous();
  return batch;
}

nlohmann::json PackedRowSource::state() const {
  return {{"epoch", epoch_}, {"cursor", cursor_}, {"seed", seed_}, {"rows", total_rows_}};
}

void PackedRowSource::restore(const nlohmann::json& state) {
  check(state.contains("epoch") && state.contains("cursor"), "data state in checkpoint lacks epoch/cursor");
  check(state.value("rows", total_rows_) == total_rows_, "checkpoint was taken on data with ",
        state.value("rows", int64_t{0}), " rows but the data now has ", total_rows_,
        "; the data changed since the checkpoint, so resuming would not see the same rows");
  epoch_ = state.at("epoch").get<int64_t>();
  cursor_ = state.at("cursor").get<int64_t>();
  build_order();
}

void PackedRowSource::reset() {
  epoch_ = 0;
  cursor_ = 0;
  build_order();
}

std::string resolve_data_path(const std::string& path, const std::string& recipe_dir) {
  check(!path.empty(), "data.path is empty: name a text file");
  const fs::path p(path);
  std::vector<fs::path> tried;
  if (p.is_absolute()) {
    tried.push_back(p);
  } else {
    tried.push_back(fs::current_path() / p);
    if (!recipe_dir.empty()) tried.push_back(fs::path(recipe_dir) / p);
#ifdef TESSERA_SOURCE_DIR
    tried.push_back(fs::path(TESSERA_SOURCE_DIR) / p);
#endif
  }
  for (const auto& t : tried)
    if (fs::is_regular_file(t)) return fs::weakly_canonical(t).string();
  std::string where;
  for (const auto& t : tried) where += "\n  " + t.string();
  fail("data file '", path, "' not found; looked in:", where);
}

}  // namespace tessera
