#include "core/data/packer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <random>

#include "core/error.h"

namespace tessera {

void TokenStream::read(int64_t begin, int64_t n, int64_t* out_tokens, int64_t* doc_index) const {
  check(begin >= 0 && n >= 0 && begin + n <= size() && doc.size() == tokens.size(), "internal: reading tokens [",
        begin, ", ", begin + n, ") of a stream of ", size(), " tokens (", doc.size(), " document indices)");
  std::copy(tokens.begin() + begin, tokens.begin() + begin + n, out_tokens);
  if (doc_index) std::copy(doc.begin() + begin, doc.begin() + begin + n, doc_index);
}

PackedRowSource::PackedRowSource(std::shared_ptr<const TokenStore> store, VocabLayout layout, PackerOptions options)
    : store_(std::move(store)), layout_(std::move(layout)), options_(options) {
  const PackerOptions& o = options_;
  check(store_ != nullptr, "internal: PackedRowSource needs a token store");
  check(o.batch_size > 0 && o.seq_len > 0, "batch_size and seq_len must be positive");
  check(o.world_size > 0 && o.rank >= 0 && o.rank < o.world_size, "rank ", o.rank, " outside world size ",
        o.world_size);
  check(o.prefetch >= 0, "data prefetch must be >= 0, got ", o.prefetch);
  const int64_t n = store_->size();
  if (n <= 1) {
    total_rows_ = 0;
  } else if (o.cover_all) {
    total_rows_ = (n - 1 + o.seq_len - 1) / o.seq_len;  // the last row may be short
  } else {
    total_rows_ = (n - 1) / o.seq_len;
  }
  check(total_rows_ / o.world_size >= 1, "data split holds ", n, " tokens: not one row of seq_len ", o.seq_len,
        " + 1 per rank; use more data or a shorter data.seq_len");
  // cover_all gives every rank ceil(rows / world) rows (all-padding ones past the end) so that ranks stay
  // in step; otherwise equal counts come from dropping the remainder.
  rows_per_rank_ = o.cover_all ? (total_rows_ + o.world_size - 1) / o.world_size : total_rows_ / o.world_size;
  bos_ = layout_.has_special("<bos>") ? layout_.special_id("<bos>") : -1;
  if (o.cover_all) {
    check(layout_.has_special("<pad>") || layout_.has_special("<boe>"),
          "cover_all pads the last row but the vocabulary layout has neither <pad> nor <boe> (", layout_.describe(),
          ")");
    pad_ = layout_.has_special("<pad>") ? layout_.special_id("<pad>") : layout_.special_id("<boe>");
  }
}

PackedRowSource::PackedRowSource(std::shared_ptr<const TokenStore> store, VocabLayout layout, int64_t batch_size,
                                 int64_t seq_len, bool shuffle, uint64_t seed, int64_t rank, int64_t world_size,
                                 bool doc_mask)
    : PackedRowSource(std::move(store), std::move(layout), [&] {
        PackerOptions o;
        o.batch_size = batch_size;
        o.seq_len = seq_len;
        o.shuffle = shuffle;
        o.seed = seed;
        o.rank = rank;
        o.world_size = world_size;
        o.doc_mask = doc_mask;
        return o;
      }()) {}

PackedRowSource::~PackedRowSource() { stop_worker(); }

void PackedRowSource::ensure_order(Cursor& c) const {
  if (c.order_epoch == c.epoch) return;
  std::vector<int64_t> all(total_rows_);
  for (int64_t i = 0; i < total_rows_; ++i) all[i] = i;
  if (options_.shuffle) {
    // Fisher-Yates with a generator of our own: the order depends only on (seed, epoch).
    std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(c.epoch) + 1);
    for (int64_t i = total_rows_ - 1; i > 0; --i) {
      std::uniform_int_distribution<int64_t> pick(0, i);
      std::swap(all[i], all[pick(rng)]);
    }
  }
  c.order.resize(rows_per_rank_);
  const int64_t world = options_.world_size, rank = options_.rank;
  for (int64_t i = 0; i < rows_per_rank_; ++i) {
    const int64_t k = i * world + rank;
    c.order[i] = k < total_rows_ ? all[k] : -1;  // -1: an all-padding row (cover_all only)
  }
  c.order_epoch = c.epoch;
}

int64_t PackedRowSource::batches_per_epoch() const {
  const int64_t rows = rows_per_rank_, bs = options_.batch_size;
  return drops_partial() ? std::max<int64_t>(1, rows / bs) : (rows + bs - 1) / bs;
}

void TokenStore::read_entropies(int64_t, int64_t, float*) const {
  fail("internal: this token store has no entropies (check has_entropies() first)");
}

Batch PackedRowSource::take(Cursor& c) const {
  const int64_t bs = options_.batch_size, seq_len = options_.seq_len;
  ensure_order(c);
  const int64_t n_rows = rows_per_rank_;
  const int64_t rows_left = n_rows - c.cursor;
  // Training drops a last partial batch (fixed shapes); validation and cover_all keep it.
  if (rows_left <= 0 || (drops_partial() && rows_left < std::min(bs, n_rows))) {
    ++c.epoch;
    c.cursor = 0;
    ensure_order(c);
  }
  const int64_t b = std::min(bs, n_rows - c.cursor);
  const int64_t width = seq_len + 1;
  const int64_t n = store_->size();
  // Filled element by element (no ATen ops): the prefetch worker then shares no thread pool with
  // the training step.
  at::Tensor tokens = at::empty({b, seq_len}, at::kLong);
  at::Tensor targets = at::empty({b, seq_len}, at::kLong);
  at::Tensor loss_mask = at::empty({b, seq_len}, at::kFloat);
  at::Tensor doc_ids = options_.doc_mask ? at::empty({b, seq_len}, at::kLong) : at::Tensor();
  int64_t* tok = tokens.data_ptr<int64_t>();
  int64_t* tgt = targets.data_ptr<int64_t>();
  float* mask = loss_mask.data_ptr<float>();
  int64_t* dd = doc_ids.defined() ? doc_ids.data_ptr<int64_t>() : nullptr;
  at::Tensor entropies = store_->has_entropies() ? at::zeros({b, seq_len}, at::kFloat) : at::Tensor();
  float* ent = entropies.defined() ? entropies.data_ptr<float>() : nullptr;
  std::vector<int64_t> row_tokens(width), row_docs(dd ? width : 0);  // one row of seq_len + 1
  for (int64_t r = 0; r < b; ++r) {
    const int64_t row = c.order[c.cursor + r];
    // Only cover_all has short (the last) or empty (-1) rows; they are padded.
    const int64_t avail = row < 0 ? 0 : std::min(width, n - row * seq_len);
    if (avail > 0) store_->read(row * seq_len, avail, row_tokens.data(), dd ? row_docs.data() : nullptr);
    std::fill(row_tokens.begin() + avail, row_tokens.end(), pad_);
    const int64_t o = r * seq_len;
    // The inputs' entropies (padding keeps 0).
    if (ent && avail > 0) store_->read_entropies(row * seq_len, std::min(avail, seq_len), ent + o);
    std::copy(row_tokens.begin(), row_tokens.end() - 1, tok + o);
    std::copy(row_tokens.begin() + 1, row_tokens.end(), tgt + o);
    // A document's first token cannot be predicted from the previous document; padding is no target.
    for (int64_t t = 0; t < seq_len; ++t) mask[o + t] = (t + 1 < avail && row_tokens[t + 1] != bos_) ? 1.0f : 0.0f;
    if (dd) {
      // Doc ids count from the row's first document; padding is a document of its own.
      const int64_t first = avail > 0 ? row_docs[0] : 0;
      const int64_t pad_doc = avail > 0 ? row_docs[avail - 1] - first + 1 : 0;
      for (int64_t t = 0; t < seq_len; ++t) dd[o + t] = t < avail ? row_docs[t] - first : pad_doc;
    }
  }
  c.cursor += b;

  Batch batch;
  batch.tokens = std::move(tokens);
  batch.targets = std::move(targets);
  batch.loss_mask = std::move(loss_mask);
  if (dd) batch.doc_ids = std::move(doc_ids);
  if (ent) batch.entropies = std::move(entropies);
  return batch;
}

Batch PackedRowSource::next() {
  if (options_.prefetch <= 0) return take(pos_);
  if (!worker_.joinable()) start_worker();
  Prefetched item;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [&] { return !queue_.empty(); });
    item = std::move(queue_.front());
    queue_.pop_front();
  }
  space_.notify_one();
  if (item.error) {
    stop_worker();  // the worker has exited; the next call starts a fresh one at the unchanged position
    std::rethrow_exception(item.error);
  }
  pos_.epoch = item.epoch;
  pos_.cursor = item.cursor;
  return std::move(item.batch);
}

void PackedRowSource::start_worker() {
  queue_.clear();
  stop_ = false;
  Cursor from;  // the worker continues from the consumer's position; its order is rebuilt there
  from.epoch = pos_.epoch;
  from.cursor = pos_.cursor;
  worker_ = std::thread(&PackedRowSource::worker_loop, this, std::move(from));
}

void PackedRowSource::stop_worker() {
  if (!worker_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  space_.notify_all();
  worker_.join();
  queue_.clear();  // batches made ahead of the consumer's position are discarded
  stop_ = false;
}

void PackedRowSource::worker_loop(Cursor c) {
  const auto depth = static_cast<size_t>(options_.prefetch);
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      space_.wait(lock, [&] { return stop_ || queue_.size() < depth; });
      if (stop_) return;
    }
    Prefetched item;
    try {
      item.batch = take(c);
      item.epoch = c.epoch;
      item.cursor = c.cursor;
    } catch (...) {
      item.error = std::current_exception();  // re-thrown by next() on the consumer's thread
    }
    const bool failed = static_cast<bool>(item.error);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_) return;
      queue_.push_back(std::move(item));
    }
    ready_.notify_one();
    if (failed) return;
  }
}

nlohmann::json PackedRowSource::state() const {
  return {{"epoch", pos_.epoch}, {"cursor", pos_.cursor}, {"seed", options_.seed}, {"rows", total_rows_}};
}

void PackedRowSource::restore(const nlohmann::json& state) {
  check(state.contains("epoch") && state.contains("cursor"), "data state in checkpoint lacks epoch/cursor");
  check(state.value("rows", total_rows_) == total_rows_, "checkpoint was taken on data with ",
        state.value("rows", int64_t{0}), " rows but the data now has ", total_rows_,
        "; the data changed since the checkpoint, so resuming would not see the same rows");
  const auto epoch = state.at("epoch").get<int64_t>();
  const auto cursor = state.at("cursor").get<int64_t>();
  check(epoch >= 0 && cursor >= 0 && cursor <= rows_per_rank_, "data state in checkpoint has epoch ", epoch,
        " and cursor ", cursor, " but this rank has ", rows_per_rank_, " rows per epoch");
  stop_worker();
  pos_ = Cursor{};
  pos_.epoch = epoch;
  pos_.cursor = cursor;
}

void PackedRowSource::reset() {
  stop_worker();
  pos_ = Cursor{};
}

}  // namespace tessera
