#include "core/data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "core/data/entropies.h"
#include "core/error.h"
#include "core/io/durable.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shards are little-endian and read in place");

namespace tessera {
namespace fs = std::filesystem;
namespace durable = io::detail;

namespace {

constexpr int64_t align8(int64_t n) { return (n + 7) / 8 * 8; }

// Bytes of a shard file with these counts (see the layout in shard.h).
int64_t shard_file_size(int64_t n_tokens, int64_t n_docs, int width) {
  return kShardHeaderBytes + align8(n_tokens * width) + 8 * (n_docs + 1) + 8 * n_docs;
}

// CRC-32 over any length (zlib's length argument is 32-bit).
uLong crc32_update(uLong crc, const void* data, size_t size) {
  const auto* p = static_cast<const Bytef*>(data);
  while (size > 0) {
    const auto chunk = static_cast<uInt>(std::min<size_t>(size, size_t{1} << 30));
    crc = ::crc32(crc, p, chunk);
    p += chunk;
    size -= chunk;
  }
  return crc;
}

std::string crc_hex(uLong crc) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08lx", static_cast<unsigned long>(crc & 0xffffffffUL));
  return buf;
}

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t token_width;
  int64_t n_tokens;
  int64_t n_docs;
  int64_t text_bytes;
  char reserved[24];
};
static_assert(sizeof(Header) == kShardHeaderBytes, "the shard header is 64 bytes");

template <class T>
T json_get(const nlohmann::json& j, const char* key) {
  return j.at(key).get<T>();
}

}  // namespace

int shard_token_width(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

std::string shard_file_name(const std::string& split, int64_t index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "_%05lld.bin", static_cast<long long>(index));
  return split + buf;
}

// ---- index -------------------------------------------------------------------------------------------

nlohmann::json ShardInfo::to_json() const {
  return {{"file", file}, {"tokens", tokens}, {"docs", docs}, {"bytes", bytes}, {"file_size", file_size},
          {"crc32", crc32}};
}

ShardInfo ShardInfo::from_json(const nlohmann::json& j) {
  ShardInfo s;
  s.file = json_get<std::string>(j, "file");
  s.tokens = json_get<int64_t>(j, "tokens");
  s.docs = json_get<int64_t>(j, "docs");
  s.bytes = json_get<int64_t>(j, "bytes");
  s.file_size = json_get<int64_t>(j, "file_size");
  s.crc32 = json_get<std::string>(j, "crc32");
  check(!s.file.empty() && fs::path(s.file).filename() == fs::path(s.file) && s.file != "..",
        "shard file name '", s.file, "' is not a plain file name in the dataset folder");
  check(s.tokens >= 0 && s.docs >= 0 && s.bytes >= 0 && s.file_size >= kShardHeaderBytes, "shard '", s.file,
        "' has negative counts or a file size below the header's");
  return s;
}

nlohmann::json SplitInfo::to_json() const {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& s : shards) list.push_back(s.to_json());
  return {{"tokens", tokens}, {"docs", docs}, {"bytes", bytes}, {"shards", list}};
}

SplitInfo SplitInfo::from_json(const nlohmann::json& j) {
  SplitInfo s;
  s.tokens = json_get<int64_t>(j, "tokens");
  s.docs = json_get<int64_t>(j, "docs");
  s.bytes = json_get<int64_t>(j, "bytes");
  int64_t tokens = 0, docs = 0, bytes = 0;
  for (const auto& shard : j.at("shards")) {
    s.shards.push_back(ShardInfo::from_json(shard));
    tokens += s.shards.back().tokens;
    docs += s.shards.back().docs;
    bytes += s.shards.back().bytes;
  }
  check(tokens == s.tokens && docs == s.docs && bytes == s.bytes, "split totals (", s.tokens, " tokens, ", s.docs,
        " docs, ", s.bytes, " bytes) differ from the sums over its shards (", tokens, ", ", docs, ", ", bytes, ")");
  return s;
}

nlohmann::json DatasetIndex::to_json() const {
  nlohmann::json split_json = nlohmann::json::object();
  for (const auto& [name, info] : splits) split_json[name] = info.to_json();
  return {{"format_version", format_version},
          {"layout", layout.to_json()},
          {"adapters", adapters},
          {"source", source},
          {"splits", split_json}};
}

DatasetIndex DatasetIndex::from_json(const nlohmann::json& j, const std::string& what) {
  try {
    check(j.is_object(), "expected a JSON object");
    DatasetIndex index;
    index.format_version = json_get<int>(j, "format_version");
    check(index.format_version == kDatasetFormatVersion, "dataset format version ", index.format_version,
          " is not supported (this build reads version ", kDatasetFormatVersion,
          "); re-run `tessera prepare` with this build");
    index.layout = VocabLayout::from_json(j.at("layout"));
    index.adapters = j.value("adapters", nlohmann::json::array());
    index.source = j.value("source", nlohmann::json::object());
    for (const auto& [name, split] : j.at("splits").items()) {
      try {
        index.splits[name] = SplitInfo::from_json(split);
      } catch (const Error& e) {
        fail("split '", name, "': ", e.what());
      }
    }
    return index;
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": ", e.what());
  } catch (const Error& e) {
    fail(what, ": ", e.what());
  }
}

DatasetIndex DatasetIndex::load(const fs::path& dir) {
  const fs::path file = dir / kFileName;
  std::error_code ec;
  check(fs::is_regular_file(file, ec), "no ", kFileName, " in ", dir.string(), ": run `tessera prepare` first");
  std::ifstream in(file, std::ios::binary);
  check(static_cast<bool>(in), "cannot read ", file.string());
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    fail("malformed JSON in ", file.string(), ": ", e.what());
  }
  return from_json(j, file.string());
}

void DatasetIndex::save(const fs::path& dir) const {
  const std::string text = to_json().dump(2) + "\n";
  durable::write_file_atomic(dir / kFileName, [&](durable::FileWriter& out) { out.write(text.data(), text.size()); });
}

const SplitInfo& DatasetIndex::split(const std::string& name) const {
  const auto it = splits.find(name);
  if (it != splits.end()) return it->second;
  std::string names;
  for (const auto& [n, info] : splits) names += (names.empty() ? "" : ", ") + n;
  fail("the dataset has no split '", name, "' (it has: ", names.empty() ? "none" : names, ")");
}

// ---- writer ------------------------------------------------------------------------------------------

ShardWriter::ShardWriter(fs::path dir, std::string split, int64_t vocab_size, int64_t shard_tokens)
    : dir_(std::move(dir)),
      split_(std::move(split)),
      vocab_size_(vocab_size),
      shard_tokens_(shard_tokens),
      width_(shard_token_width(vocab_size)) {
  check(!split_.empty() && std::all_of(split_.begin(), split_.end(),
                                       [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; }),
        "split name '", split_, "' must be letters, digits, '_' or '-'");
  check(vocab_size_ > 0 && vocab_size_ <= (int64_t{1} << 32), "vocabulary size ", vocab_size_,
        " cannot be stored in a shard (1 to 2^32 ids)");
  check(shard_tokens_ > 0, "shard size must be positive, got ", shard_tokens_, " tokens");
  std::error_code ec;
  fs::create_directories(dir_, ec);
  check(!ec, "cannot create dataset folder '", dir_.string(), "': ", ec.message());
  // Temporaries of this split left by a writer that died are unfinished shards: remove them.
  const std::string prefix = split_ + "_";
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0 || name.find(durable::kTmpMarker) == std::string::npos) continue;
    const long pid = durable::tmp_owner_pid(name);
    if (pid > 0 && !durable::process_alive(pid)) fs::remove(entry.path(), ec);
  }
}

void ShardWriter::add(const std::vector<int64_t>& doc_tokens, int64_t text_bytes) {
  check(!finished_, "internal: ShardWriter::add after finish() (split '", split_, "')");
  const int64_t doc = info_.docs + static_cast<int64_t>(doc_bytes_.size());  // number within the split
  check(text_bytes >= 0, "document ", doc, " of split '", split_, "' has negative text size ", text_bytes);
  for (size_t i = 0; i < doc_tokens.size(); ++i)
    check(doc_tokens[i] >= 0 && doc_tokens[i] < vocab_size_, "document ", doc, " of split '", split_,
          "' has id ", doc_tokens[i], " at token ", i, ", outside the vocabulary [0, ", vocab_size_, ")");
  const auto n = static_cast<int64_t>(doc_tokens.size());
  if (!doc_bytes_.empty() && doc_offsets_.back() + n > shard_tokens_) flush();

  const size_t at = tokens_.size();
  tokens_.resize(at + doc_tokens.size() * width_);
  unsigned char* out = tokens_.data() + at;
  if (width_ == 2) {
    for (size_t i = 0; i < doc_tokens.size(); ++i) {
      const auto v = static_cast<uint16_t>(doc_tokens[i]);
      std::memcpy(out + 2 * i, &v, 2);
    }
  } else {
    for (size_t i = 0; i < doc_tokens.size(); ++i) {
      const auto v = static_cast<uint32_t>(doc_tokens[i]);
      std::memcpy(out + 4 * i, &v, 4);
    }
  }
  doc_offsets_.push_back(doc_offsets_.back() + n);
  doc_bytes_.push_back(text_bytes);
  text_bytes_ += text_bytes;
}

void ShardWriter::flush() {
  if (doc_bytes_.empty()) return;
  ShardInfo info;
  info.file = shard_file_name(split_, static_cast<int64_t>(info_.shards.size()));
  info.tokens = doc_offsets_.back();
  info.docs = static_cast<int64_t>(doc_bytes_.size());
  info.bytes = text_bytes_;
  info.file_size = shard_file_size(info.tokens, info.docs, width_);

  Header h{};
  std::memcpy(h.magic, kShardMagic, 8);
  h.version = kShardFormatVersion;
  h.token_width = static_cast<uint32_t>(width_);
  h.n_tokens = info.tokens;
  h.n_docs = info.docs;
  h.text_bytes = info.bytes;
  const char zeros[8] = {};
  const size_t pad = static_cast<size_t>(align8(static_cast<int64_t>(tokens_.size()))) - tokens_.size();

  uLong crc = ::crc32(0L, Z_NULL, 0);
  durable::write_file_atomic(dir_ / info.file, [&](durable::FileWriter& out) {
    auto put = [&](const void* data, size_t size) {
      out.write(data, size);
      crc = crc32_update(crc, data, size);
    };
    put(&h, sizeof h);
    put(tokens_.data(), tokens_.size());
    put(zeros, pad);
    put(doc_offsets_.data(), doc_offsets_.size() * sizeof(int64_t));
    put(doc_bytes_.data(), doc_bytes_.size() * sizeof(int64_t));
  });
  info.crc32 = crc_hex(crc);

  info_.tokens += info.tokens;
  info_.docs += info.docs;
  info_.bytes += info.bytes;
  info_.shards.push_back(std::move(info));
  tokens_.clear();  // keeps its capacity for the next shard
  doc_offsets_.assign(1, 0);
  doc_bytes_.clear();
  text_bytes_ = 0;
}

SplitInfo ShardWriter::finish() {
  check(!finished_, "internal: ShardWriter::finish called twice (split '", split_, "')");
  flush();
  finished_ = true;
  return info_;
}

// ---- reader ------------------------------------------------------------------------------------------

ShardFile::~ShardFile() { unmap(); }

ShardFile::ShardFile(ShardFile&& o) noexcept { *this = std::move(o); }

ShardFile& ShardFile::operator=(ShardFile&& o) noexcept {
  if (this != &o) {
    unmap();
    path_ = std::move(o.path_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    width_ = o.width_;
    n_tokens_ = o.n_tokens_;
    n_docs_ = o.n_docs_;
    text_bytes_ = o.text_bytes_;
    doc_offsets_ = std::exchange(o.doc_offsets_, nullptr);
    doc_bytes_ = std::exchange(o.doc_bytes_, nullptr);
  }
  return *this;
}

void ShardFile::unmap() {
  if (data_) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

ShardFile ShardFile::open(const fs::path& path, const ShardInfo& expected, bool verify_checksum) {
  const std::string name = path.string();
  const std::string fix = "; re-run `tessera prepare`";
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) fail("shard ", name, " is missing (the dataset index lists it)", fix);
    fail("cannot open shard ", name, ": ", durable::errno_text(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("cannot stat shard ", name, ": ", durable::errno_text(err));
  }
  const auto size = static_cast<int64_t>(st.st_size);
  if (size < kShardHeaderBytes || size < expected.file_size) {
    ::close(fd);
    fail("shard ", name, " is truncated: ", size, " bytes, index says ", expected.file_size, fix);
  }
  if (size != expected.file_size) {
    ::close(fd);
    fail("shard ", name, " has ", size, " bytes but the index says ", expected.file_size,
         " (the file was replaced or the index is stale)", fix);
  }
  void* data = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_SHARED, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file
  if (data == MAP_FAILED) fail("cannot memory-map shard ", name, ": ", durable::errno_text(map_err));

  ShardFile f;
  f.path_ = path;
  f.data_ = data;
  f.size_ = static_cast<size_t>(size);
  const auto* base = static_cast<const unsigned char*>(data);
  Header h;
  std::memcpy(&h, base, sizeof h);
  check(std::memcmp(h.magic, kShardMagic, 8) == 0, "shard ", name, " is not a Tessera shard (its first 8 bytes are not '",
        kShardMagic, "')", fix);
  check(h.version == kShardFormatVersion, "shard ", name, " has format version ", h.version,
        " but this build reads version ", kShardFormatVersion, fix);
  check(h.token_width == 2 || h.token_width == 4, "shard ", name, " has token width ", h.token_width,
        " (expected 2 or 4)", fix);
  check(h.n_tokens == expected.tokens && h.n_docs == expected.docs && h.text_bytes == expected.bytes, "shard ", name,
        " holds ", h.n_tokens, " tokens, ", h.n_docs, " docs, ", h.text_bytes, " text bytes but the index says ",
        expected.tokens, ", ", expected.docs, ", ", expected.bytes, fix);
  f.width_ = static_cast<int>(h.token_width);
  f.n_tokens_ = h.n_tokens;
  f.n_docs_ = h.n_docs;
  f.text_bytes_ = h.text_bytes;
  // Bound the counts by the size before computing offsets from them.
  check(h.n_tokens >= 0 && h.n_docs >= 0 && h.n_tokens <= size / f.width_ && h.n_docs <= size / 16 &&
            shard_file_size(h.n_tokens, h.n_docs, f.width_) == size,
        "shard ", name, ": its header describes ", h.n_tokens, " tokens and ", h.n_docs, " docs, which do not fit its ",
        size, " bytes", fix);

  const int64_t offsets_at = kShardHeaderBytes + align8(f.n_tokens_ * f.width_);
  f.doc_offsets_ = reinterpret_cast<const int64_t*>(base + offsets_at);
  f.doc_bytes_ = f.doc_offsets_ + f.n_docs_ + 1;
  const int64_t* off = f.doc_offsets_;
  check(off[0] == 0 && off[f.n_docs_] == f.n_tokens_, "shard ", name, ": document offsets run from ", off[0], " to ",
        off[f.n_docs_], " instead of 0 to ", f.n_tokens_, fix);
  int64_t bytes = 0;
  for (int64_t d = 0; d < f.n_docs_; ++d) {
    check(off[d + 1] >= off[d], "shard ", name, ": document offsets decrease at document ", d, fix);
    check(f.doc_bytes_[d] >= 0, "shard ", name, ": document ", d, " has a negative byte count", fix);
    bytes += f.doc_bytes_[d];
  }
  check(bytes == f.text_bytes_, "shard ", name, ": document byte counts sum to ", bytes, " but the header says ",
        f.text_bytes_, fix);
  if (verify_checksum) {
    const std::string crc = crc_hex(crc32_update(::crc32(0L, Z_NULL, 0), base, f.size_));
    std::string want = expected.crc32;
    std::transform(want.begin(), want.end(), want.begin(), [](unsigned char c) { return std::tolower(c); });
    check(crc == want, "checksum mismatch in ", name, ": the shard is corrupted", fix, " (CRC-32 ", crc,
          ", index says ", expected.crc32, ")");
  }
  return f;
}

const uint16_t* ShardFile::tokens_u16() const {
  check(width_ == 2, "internal: shard ", path_.string(), " stores ", width_, "-byte ids, not uint16");
  return reinterpret_cast<const uint16_t*>(static_cast<const unsigned char*>(data_) + kShardHeaderBytes);
}

const uint32_t* ShardFile::tokens_u32() const {
  check(width_ == 4, "internal: shard ", path_.string(), " stores ", width_, "-byte ids, not uint32");
  return reinterpret_cast<const uint32_t*>(static_cast<const unsigned char*>(data_) + kShardHeaderBytes);
}

void ShardFile::read_tokens(int64_t begin, int64_t n, int64_t* out) const {
  if (width_ == 2) {
    const uint16_t* t = tokens_u16() + begin;
    std::copy(t, t + n, out);
  } else {
    const uint32_t* t = tokens_u32() + begin;
    std::copy(t, t + n, out);
  }
}

std::shared_ptr<ShardedSplit> ShardedSplit::open(const fs::path& dir, const DatasetIndex& index,
                                                 const std::string& split, bool verify) {
  if (index.splits.count(split) == 0) {
    try {
      index.split(split);
    } catch (const Error& e) {
      fail(dir.string(), ": ", e.what());  // which dataset lacks it
    }
  }
  const SplitInfo& info = index.split(split);
  const int width = shard_token_width(index.layout.size());
  std::shared_ptr<ShardedSplit> s(new ShardedSplit());
  s->shards_.reserve(info.shards.size());
  s->token_start_.push_back(0);
  for (const ShardInfo& shard : info.shards) {
    ShardFile f = ShardFile::open(dir / shard.file, shard, verify);
    check(f.token_width() == width, "shard ", f.path().string(), " stores ", f.token_width(),
          "-byte ids but the index's vocabulary layout (", index.layout.describe(), ") needs ", width,
          "; re-run `tessera prepare`");
    s->doc_start_.push_back(s->docs_);
    s->tokens_ += f.tokens();
    s->docs_ += f.docs();
    s->bytes_ += f.text_bytes();
    s->token_start_.push_back(s->tokens_);
    s->shards_.push_back(std::move(f));
  }
  return s;
}

size_t ShardedSplit::shard_of(int64_t begin) const {
  // The last shard starting at or before `begin` (empty shards share a start).
  return static_cast<size_t>(std::upper_bound(token_start_.begin(), token_start_.end(), begin) -
                             token_start_.begin() - 1);
}

void ShardedSplit::attach_entropies(const fs::path& dir) {
  std::vector<at::Tensor> loaded;
  for (const ShardFile& f : shards_) loaded.push_back(read_shard_entropies(dir, f.path().filename().string(), f.tokens()));
  entropies_ = std::move(loaded);
}

void ShardedSplit::read_entropies(int64_t begin, int64_t n, float* out) const {
  check(has_entropies(), "internal: no entropies attached to this split");
  check(begin >= 0 && n >= 0 && begin + n <= tokens_, "internal: reading entropies [", begin, ", ", begin + n,
        ") of a split of ", tokens_, " tokens");
  if (n == 0) return;
  auto s = shard_of(begin);
  for (int64_t done = 0; done < n; ++s) {
    const int64_t local = begin + done - token_start_[s];
    const int64_t count = std::min(n - done, shards_[s].tokens() - local);
    if (count <= 0) continue;
    const at::Half* h = entropies_[s].data_ptr<at::Half>() + local;
    for (int64_t i = 0; i < count; ++i) out[done + i] = static_cast<float>(h[i]);
    done += count;
  }
}

void ShardedSplit::read(int64_t begin, int64_t n, int64_t* tokens, int64_t* doc_index) const {
  check(begin >= 0 && n >= 0 && begin + n <= tokens_, "internal: reading tokens [", begin, ", ", begin + n,
        ") of a split of ", tokens_, " tokens");
  if (n == 0) return;
  auto s = shard_of(begin);
  for (int64_t done = 0; done < n; ++s) {
    const ShardFile& f = shards_[s];
    const int64_t local = begin + done - token_start_[s];
    const int64_t count = std::min(n - done, f.tokens() - local);
    if (count <= 0) continue;
    f.read_tokens(local, count, tokens + done);
    if (doc_index) {
      // Fill document numbers a document at a time; empty documents share an offset and are skipped.
      const int64_t* off = f.doc_offsets();
      auto d = std::upper_bound(off, off + f.docs() + 1, local) - off - 1;
      for (int64_t pos = local, end = local + count; pos < end; ++d) {
        const int64_t stop = std::min(end, off[d + 1]);
        std::fill(doc_index + done + (pos - local), doc_index + done + (stop - local), doc_start_[s] + d);
        pos = stop;
      }
    }
    done += count;
  }
}

}  // namespace tessera
