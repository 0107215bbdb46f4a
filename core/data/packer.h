// Packs a token store into fixed-length training rows (ARCHITECTURE §2): rows are windows of
// seq_len + 1 tokens starting at r * seq_len (inputs and shifted targets), visited in a per-epoch
// permutation that depends only on (seed, epoch), split across ranks by striding. The position
// (epoch, cursor) is the source's state, so a resumed run sees exactly the rows it would have seen.
// The store is either in memory (TokenStream) or memory-mapped shards (ShardedSplit).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/data/source.h"

namespace tessera {

// A read-only sequence of token ids with the (global, non-decreasing) document number of each token.
// Implementations must allow concurrent read() calls (the prefetch worker reads while others may).
class TokenStore {
 public:
  virtual ~TokenStore() = default;
  virtual int64_t size() const = 0;  // tokens
  // Copies tokens [begin, begin + n) into `tokens` and, unless it is null, their document numbers into
  // `doc_index`. The range must lie within [0, size()).
  virtual void read(int64_t begin, int64_t n, int64_t* tokens, int64_t* doc_index) const = 0;
  virtual int64_t text_bytes() const = 0;  // UTF-8 bytes of the text the tokens encode (bits-per-byte)
  // Per-token next-byte entropies stored beside the tokens (BLT; core/data/entropies.h), if any.
  virtual bool has_entropies() const { return false; }
  // Copies entropies [begin, begin + n) as float32; only when has_entropies().
  virtual void read_entropies(int64_t begin, int64_t n, float* out) const;
};

// An in-memory token stream with the global document index of every token (tests, small corpora).
struct TokenStream : TokenStore {
  std::vector<int32_t> tokens;
  std::vector<int32_t> doc;  // same length as tokens
  int64_t bytes = 0;         // UTF-8 bytes of the text the stream encodes (for bits-per-byte)

  int64_t size() const override { return static_cast<int64_t>(tokens.size()); }
  void read(int64_t begin, int64_t n, int64_t* out_tokens, int64_t* doc_index) const override;
  int64_t text_bytes() const override { return bytes; }
};

struct PackerOptions {
  int64_t batch_size = 0;
  int64_t seq_len = 0;
  // Also: true drops a last partial batch (training: fixed shapes), false keeps it (validation).
  bool shuffle = false;
  uint64_t seed = 0;
  int64_t rank = 0;
  int64_t world_size = 1;
  bool doc_mask = true;  // emit doc_ids (block-diagonal attention across packed documents)
  // Validation / bits-per-byte: keep the last, shorter row (padded with the layout's <pad> or <boe>,
  // loss_mask 0 on padding) so that every token after the first is a target exactly once. With several
  // ranks, a rank whose stride runs past the last row gets an all-padding row, keeping ranks in step.
  // A last partial batch is kept even when shuffling.
  bool cover_all = false;
  int prefetch = 0;  // batches prepared ahead by one worker thread (0: built on the caller's thread)
};

class PackedRowSource : public DataSource {
 public:
  PackedRowSource(std::shared_ptr<const TokenStore> store, VocabLayout layout, PackerOptions options);
  // The positional form existing callers use; equal to the options form with cover_all and prefetch off.
  PackedRowSource(std::shared_ptr<const TokenStore> store, VocabLayout layout, int64_t batch_size, int64_t seq_len,
                  bool shuffle, uint64_t seed, int64_t rank = 0, int64_t world_size = 1, bool doc_mask = true);
  ~PackedRowSource() override;
  PackedRowSource(const PackedRowSource&) = delete;
  PackedRowSource& operator=(const PackedRowSource&) = delete;

  Batch next() override;
  // The position after the last batch next() returned (never a prefetched one).
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  void reset() override;
  const VocabLayout& layout() const override { return layout_; }
  int64_t batches_per_epoch() const override;
  int64_t rows() const { return rows_per_rank_; }  // this rank's rows per epoch
  const PackerOptions& options() const { return options_; }
  const TokenStore& store() const { return *store_; }

 private:
  // A position in the row sequence, with the row order of its epoch (rebuilt lazily).
  struct Cursor {
    int64_t epoch = 0;
    int64_t cursor = 0;
    int64_t order_epoch = -1;  // epoch `order` was built for
    std::vector<int64_t> order;
  };
  struct Prefetched {
    Batch batch;
    int64_t epoch = 0, cursor = 0;  // the position after this batch
    std::exception_ptr error;
  };

  bool drops_partial() const { return options_.shuffle && !options_.cover_all; }
  void ensure_order(Cursor& c) const;
  Batch take(Cursor& c) const;  // the batch at c, advancing c; touches no member state
  void start_worker();
  void stop_worker();
  void worker_loop(Cursor c);

  std::shared_ptr<const TokenStore> store_;
  VocabLayout layout_;
  PackerOptions options_;
  int64_t total_rows_ = 0;
  int64_t rows_per_rank_ = 0;
  int64_t bos_ = -1;  // targets equal to it are masked; -1 when the layout has no <bos>
  int64_t pad_ = -1;  // cover_all padding id

  Cursor pos_;  // the consumer's position: what state() reports

  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable ready_;  // a batch (or error) was queued
  std::condition_variable space_;  // the queue has room, or stop_ was set
  std::deque<Prefetched> queue_;
  bool stop_ = false;
};

}  // namespace tessera
