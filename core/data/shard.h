// Token shards on disk (ARCHITECTURE §2): `tessera prepare` writes each split as binary shards plus
// one index.json; the loader memory-maps them and reads them as one TokenStore.
//
// Dataset folder:
//   index.json            DatasetIndex: format_version, layout, adapters, source, and per split the
//                         shards with their counts, file sizes and CRC-32s. Written last.
//   <split>_<NNNNN>.bin   shards of a split, numbered from 00000.
//
// Shard file (all integers little-endian; a document never spans two shards):
//   offset 0   char[8]   magic "TSSHARD1"
//          8   uint32    format_version (1)
//         12   uint32    token_width: 2 (uint16 ids, vocabulary size <= 65536) or 4 (uint32 ids)
//         16   int64     n_tokens
//         24   int64     n_docs
//         32   int64     text_bytes (UTF-8 bytes of the text all documents encode)
//         40   zeros up to 64
//         64   tokens[n_tokens] (uint16 or uint32), then zero padding to a multiple of 8 bytes
//          A   int64     doc_offsets[n_docs + 1]  token where each document starts; the last is n_tokens
//     A + 8(n_docs+1)    int64 doc_bytes[n_docs]  UTF-8 bytes of each document's text (bits-per-byte)
//   where A = 64 + ceil(n_tokens * token_width / 8) * 8; the file ends right after doc_bytes.
//
// Reading one with numpy:
//   h = np.fromfile(path, np.uint8, 64)
//   width = int(h[12:16].view('<u4')[0]); n_tokens, n_docs, text_bytes = h[16:40].view('<i8')
//   tokens = np.memmap(path, '<u2' if width == 2 else '<u4', 'r', 64, (n_tokens,))
//   a = 64 + (n_tokens * width + 7) // 8 * 8
//   doc_offsets = np.memmap(path, '<i8', 'r', a, (n_docs + 1,))
//   doc_bytes = np.memmap(path, '<i8', 'r', a + 8 * (n_docs + 1), (n_docs,))
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/data/packer.h"
#include "core/vocab.h"

namespace tessera {

inline constexpr char kShardMagic[9] = "TSSHARD1";
inline constexpr uint32_t kShardFormatVersion = 1;
inline constexpr int64_t kShardHeaderBytes = 64;
inline constexpr int kDatasetFormatVersion = 1;

// Bytes per stored id for a vocabulary of `vocab_size` ids: 2 when they fit uint16, else 4.
int shard_token_width(int64_t vocab_size);
// "<split>_<NNNNN>.bin"
std::string shard_file_name(const std::string& split, int64_t index);

struct ShardInfo {
  std::string file;  // name inside the dataset folder
  int64_t tokens = 0, docs = 0, bytes = 0, file_size = 0;
  std::string crc32;  // 8 lowercase hex digits, CRC-32 (zlib) of the whole file

  nlohmann::json to_json() const;
  static ShardInfo from_json(const nlohmann::json& j);
};

struct SplitInfo {
  std::vector<ShardInfo> shards;
  int64_t tokens = 0, docs = 0, bytes = 0;  // sums over the shards

  nlohmann::json to_json() const;
  static SplitInfo from_json(const nlohmann::json& j);  // checks the sums
};

struct DatasetIndex {
  int format_version = kDatasetFormatVersion;
  VocabLayout layout;
  nlohmann::json adapters = nlohmann::json::array();  // adapters' describe(), in layout order (opaque here)
  nlohmann::json source = nlohmann::json::object();   // inputs, settings, fingerprint (opaque here)
  std::map<std::string, SplitInfo> splits;

  static constexpr const char* kFileName = "index.json";
  // Reads dir/index.json; errors name the file (missing, malformed JSON, unsupported version).
  static DatasetIndex load(const std::filesystem::path& dir);
  // Writes dir/index.json atomically (prepare writes it last, after every shard).
  void save(const std::filesystem::path& dir) const;
  nlohmann::json to_json() const;
  // `what` names the source in errors (usually the file).
  static DatasetIndex from_json(const nlohmann::json& j, const std::string& what = "dataset index");
  // Errors listing the splits there are when `name` is not one of them.
  const SplitInfo& split(const std::string& name) const;
};

// Writes one split as shards of about `shard_tokens` tokens. Each shard is held in memory until it is
// complete, then written under a temporary name, fsynced and renamed, so a shard file with its final
// name is always whole. Shards written before an interruption are never read: index.json, written
// after finish(), is what makes them a dataset.
class ShardWriter {
 public:
  ShardWriter(std::filesystem::path dir, std::string split, int64_t vocab_size, int64_t shard_tokens);
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends one document (ids in [0, vocab_size)) that encodes `text_bytes` bytes of UTF-8 text. A new
  // shard starts when this document would take the current one past shard_tokens, unless it is empty.
  void add(const std::vector<int64_t>& doc_tokens, int64_t text_bytes);
  // Writes the last shard and returns the split's shards and totals.
  SplitInfo finish();
  // The number of the shard the last add() went into (sidecars, e.g. latents, follow the shards).
  int64_t current_shard() const { return static_cast<int64_t>(info_.shards.size()); }

 private:
  void flush();

  std::filesystem::path dir_;
  std::string split_;
  int64_t vocab_size_, shard_tokens_;
  int width_;
  bool finished_ = false;
  SplitInfo info_;
  // The current shard.
  std::vector<unsigned char> tokens_;  // little-endian ids of `width_` bytes
  std::vector<int64_t> doc_offsets_{0};
  std::vector<int64_t> doc_bytes_;
  int64_t text_bytes_ = 0;
};

// One shard file, memory-mapped read-only and validated against the index entry. Move-only.
class ShardFile {
 public:
  ShardFile() = default;
  // Errors name the file: missing, truncated or a size other than the index's, bad magic or version,
  // counts that disagree with the index, inconsistent document offsets, and (when verify_checksum) a
  // CRC-32 mismatch.
  static ShardFile open(const std::filesystem::path& path, const ShardInfo& expected, bool verify_checksum);
  ~ShardFile();
  ShardFile(ShardFile&& other) noexcept;
  ShardFile& operator=(ShardFile&& other) noexcept;
  ShardFile(const ShardFile&) = delete;
  ShardFile& operator=(const ShardFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  int token_width() const { return width_; }
  int64_t tokens() const { return n_tokens_; }
  int64_t docs() const { return n_docs_; }
  int64_t text_bytes() const { return text_bytes_; }
  const uint16_t* tokens_u16() const;  // token_width() == 2 only
  const uint32_t* tokens_u32() const;  // token_width() == 4 only
  const int64_t* doc_offsets() const { return doc_offsets_; }  // [docs() + 1]
  const int64_t* doc_bytes() const { return doc_bytes_; }      // [docs()]
  // Tokens [begin, begin + n) of this shard as int64.
  void read_tokens(int64_t begin, int64_t n, int64_t* out) const;

 private:
  void unmap();

  std::filesystem::path path_;
  void* data_ = nullptr;
  size_t size_ = 0;
  int width_ = 0;
  int64_t n_tokens_ = 0, n_docs_ = 0, text_bytes_ = 0;
  const int64_t* doc_offsets_ = nullptr;
  const int64_t* doc_bytes_ = nullptr;
};

// One split: its shards, concatenated, as a TokenStore. Documents are numbered across the split.
class ShardedSplit : public TokenStore {
 public:
  static std::shared_ptr<ShardedSplit> open(const std::filesystem::path& dir, const DatasetIndex& index,
                                            const std::string& split, bool verify);
  int64_t tokens() const { return tokens_; }
  int64_t docs() const { return docs_; }
  int64_t bytes() const { return bytes_; }
  const std::vector<ShardFile>& shards() const { return shards_; }

  int64_t size() const override { return tokens_; }
  void read(int64_t begin, int64_t n, int64_t* tokens, int64_t* doc_index) const override;
  int64_t text_bytes() const override { return bytes_; }

  // Loads the split's entropy sidecars from `dir` (core/data/entropies.h; float16 in memory, 2 bytes per
  // token); read_entropies() then serves them beside the tokens.
  void attach_entropies(const std::filesystem::path& dir);
  bool has_entropies() const override { return !entropies_.empty(); }
  void read_entropies(int64_t begin, int64_t n, float* out) const override;

 private:
  ShardedSplit() = default;
  size_t shard_of(int64_t begin) const;  // the shard holding token `begin` of the split

  std::vector<ShardFile> shards_;
  std::vector<int64_t> token_start_;  // first token of each shard in the split; then the total
  std::vector<int64_t> doc_start_;    // first document of each shard in the split
  std::vector<at::Tensor> entropies_;  // per shard, float16 [tokens], when attached
  int64_t tokens_ = 0, docs_ = 0, bytes_ = 0;
};

}  // namespace tessera
