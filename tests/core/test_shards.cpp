// Token shards: the on-disk layout (read back with plain file I/O and zlib, not the reader), the
// writer's shard boundaries, the memory-mapped reader, and every way a dataset folder can be broken.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "core/io/files.h"
#include "core/data/shard.h"
#include "core/error.h"
#include "temp_dir.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;

using TempDir = test::ScratchDir;

struct Doc {
  std::vector<int64_t> tokens;
  int64_t bytes;
};

std::vector<Doc> random_docs(int n, int64_t vocab, uint64_t seed, int max_len = 40) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> len(1, max_len);
  std::uniform_int_distribution<int64_t> id(0, vocab - 1);
  std::vector<Doc> docs(n);
  for (auto& d : docs) {
    d.tokens.resize(len(rng));
    for (auto& t : d.tokens) t = id(rng);
    d.bytes = static_cast<int64_t>(d.tokens.size()) * 3 + 1;
  }
  return docs;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

template <class T>
T at_offset(const std::string& file, size_t offset) {
  T v;
  std::memcpy(&v, file.data() + offset, sizeof v);
  return v;
}

// Writes `docs` as split "train" and saves the index; returns the index.
DatasetIndex write_dataset(const fs::path& dir, const std::vector<Doc>& docs, const VocabLayout& layout,
                           int64_t shard_tokens) {
  ShardWriter writer(dir, "train", layout.size(), shard_tokens);
  for (const auto& d : docs) writer.add(d.tokens, d.bytes);
  DatasetIndex index;
  index.layout = layout;
  index.source = {{"test", true}};
  index.splits["train"] = writer.finish();
  index.save(dir);
  return index;
}

VocabLayout layout_of_size(int64_t size) { return VocabLayout({"<pad>", "<bos>", "<eos>"}, {{"ids", 3, size - 3}}); }

template <class E>
void expect_error_naming(const std::string& needle, const std::string& file, E&& f) {
  try {
    f();
    FAIL() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(needle), std::string::npos) << what;
    EXPECT_NE(what.find(file), std::string::npos) << what;
  }
}

void check_round_trip(int64_t vocab, int expected_width) {
  TempDir dir("round_trip_" + std::to_string(vocab));
  const VocabLayout layout = layout_of_size(vocab);
  const int64_t shard_tokens = 100;
  std::vector<Doc> docs = random_docs(30, vocab, 11);
  docs[7].tokens.assign(150, vocab - 1);  // longer than a shard: one of its own
  write_dataset(dir.path, docs, layout, shard_tokens);
  const DatasetIndex index = DatasetIndex::load(dir.path);
  EXPECT_EQ(index.layout, layout);
  EXPECT_EQ(index.source, nlohmann::json({{"test", true}}));
  const SplitInfo& split = index.split("train");

  // Every shard as raw bytes: header fields at the documented offsets, its CRC and size, and its documents
  // equal to the next documents of the input, never split.
  size_t next_doc = 0;
  int64_t total_tokens = 0, total_bytes = 0;
  for (size_t s = 0; s < split.shards.size(); ++s) {
    const ShardInfo& info = split.shards[s];
    char name[32];
    std::snprintf(name, sizeof name, "train_%05zu.bin", s);
    EXPECT_EQ(info.file, name);
    const std::string f = read_all(dir.path / info.file);
    ASSERT_EQ(static_cast<int64_t>(f.size()), info.file_size);
    EXPECT_EQ(f.substr(0, 8), "TSSHARD1");
    EXPECT_EQ(at_offset<uint32_t>(f, 8), 1u);
    ASSERT_EQ(at_offset<uint32_t>(f, 12), static_cast<uint32_t>(expected_width));
    const auto n_tokens = at_offset<int64_t>(f, 16), n_docs = at_offset<int64_t>(f, 24);
    EXPECT_EQ(n_tokens, info.tokens);
    EXPECT_EQ(n_docs, info.docs);
    EXPECT_EQ(at_offset<int64_t>(f, 32), info.bytes);
    for (size_t i = 40; i < 64; ++i) EXPECT_EQ(f[i], 0);
    const size_t a = 64 + (n_tokens * expected_width + 7) / 8 * 8;
    EXPECT_EQ(f.size(), a + 8 * (n_docs + 1) + 8 * n_docs);
    char crc[9];
    std::snprintf(crc, sizeof crc, "%08lx",
                  ::crc32(::crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(f.data()), f.size()));
    EXPECT_EQ(info.crc32, crc);
    // A shard goes past shard_tokens only when it is one document.
    EXPECT_TRUE(n_tokens <= shard_tokens || n_docs == 1) << info.file;
    // Adding the next document would have gone past shard_tokens (or there is none).
    if (s + 1 < split.shards.size()) {
      EXPECT_GT(n_tokens + static_cast<int64_t>(docs[next_doc + n_docs].tokens.size()), shard_tokens);
    }
    for (int64_t d = 0; d < n_docs; ++d, ++next_doc) {
      const int64_t begin = at_offset<int64_t>(f, a + 8 * d), end = at_offset<int64_t>(f, a + 8 * (d + 1));
      ASSERT_EQ(end - begin, static_cast<int64_t>(docs[next_doc].tokens.size()));
      for (int64_t t = begin; t < end; ++t) {
        const int64_t id = expected_width == 2 ? at_offset<uint16_t>(f, 64 + 2 * t) : at_offset<uint32_t>(f, 64 + 4 * t);
        ASSERT_EQ(id, docs[next_doc].tokens[t - begin]);
      }
      EXPECT_EQ(at_offset<int64_t>(f, a + 8 * (n_docs + 1) + 8 * d), docs[next_doc].bytes);
      total_bytes += docs[next_doc].bytes;
    }
    EXPECT_EQ(at_offset<int64_t>(f, a + 8 * n_docs), n_tokens);
    total_tokens += n_tokens;
  }
  EXPECT_EQ(next_doc, docs.size());
  EXPECT_GE(split.shards.size(), 4u);
  EXPECT_EQ(split.tokens, total_tokens);
  EXPECT_EQ(split.docs, static_cast<int64_t>(docs.size()));
  EXPECT_EQ(split.bytes, total_bytes);

  // The reader: the concatenation of the documents, with each token's document number.
  auto store = ShardedSplit::open(dir.path, index, "train", /*verify=*/true);
  std::vector<int64_t> all, doc_of;
  for (size_t d = 0; d < docs.size(); ++d)
    for (int64_t t : docs[d].tokens) {
      all.push_back(t);
      doc_of.push_back(static_cast<int64_t>(d));
    }
  ASSERT_EQ(store->size(), static_cast<int64_t>(all.size()));
  EXPECT_EQ(store->docs(), static_cast<int64_t>(docs.size()));
  EXPECT_EQ(store->text_bytes(), total_bytes);
  EXPECT_EQ(store->shards().front().token_width(), expected_width);
  std::vector<int64_t> tokens(all.size()), doc_index(all.size());
  store->read(0, store->size(), tokens.data(), doc_index.data());
  EXPECT_EQ(tokens, all);
  EXPECT_EQ(doc_index, doc_of);
  // Windows anywhere, across shard boundaries.
  std::mt19937 rng(5);
  for (int i = 0; i < 200; ++i) {
    const int64_t n = std::uniform_int_distribution<int64_t>(1, 130)(rng);
    const int64_t begin = std::uniform_int_distribution<int64_t>(0, store->size() - n)(rng);
    std::vector<int64_t> t(n), d(n);
    store->read(begin, n, t.data(), d.data());
    ASSERT_TRUE(std::equal(t.begin(), t.end(), all.begin() + begin)) << begin << "+" << n;
    ASSERT_TRUE(std::equal(d.begin(), d.end(), doc_of.begin() + begin)) << begin << "+" << n;
    store->read(begin, n, t.data(), nullptr);  // doc numbers are optional
  }
}

TEST(Shards, RoundTripUint16) { check_round_trip(300, 2); }
TEST(Shards, RoundTripUint32) { check_round_trip(70000, 4); }

TEST(Shards, WidthFollowsTheVocabularySize) {
  EXPECT_EQ(shard_token_width(65536), 2);
  EXPECT_EQ(shard_token_width(65537), 4);
}

TEST(Shards, EmptyDocumentsAndSplitsReadBack) {
  TempDir dir("empty_docs");
  const VocabLayout layout = layout_of_size(50);
  std::vector<Doc> docs = {{{5, 6}, 2}, {{}, 0}, {{7}, 1}, {{}, 0}, {{8, 9, 10}, 3}};
  const DatasetIndex index = write_dataset(dir.path, docs, layout, 3);
  auto store = ShardedSplit::open(dir.path, index, "train", true);
  std::vector<int64_t> t(6), d(6);
  store->read(0, 6, t.data(), d.data());
  EXPECT_EQ(t, (std::vector<int64_t>{5, 6, 7, 8, 9, 10}));
  EXPECT_EQ(d, (std::vector<int64_t>{0, 0, 2, 4, 4, 4}));
  // No documents: no shards, and nothing is read.
  ShardWriter none(dir.path, "val", 50, 10);
  const SplitInfo empty = none.finish();
  EXPECT_TRUE(empty.shards.empty());
  EXPECT_EQ(empty.tokens, 0);
}

TEST(Shards, IdOutsideTheVocabularyNamesTheDocument) {
  TempDir dir("bad_id");
  ShardWriter writer(dir.path, "train", 100, 1000);
  writer.add({1, 2, 3}, 3);
  writer.add({4, 5}, 2);
  try {
    writer.add({7, 100, 8}, 3);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("document 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("100"), std::string::npos) << e.what();
  }
  EXPECT_THROW(writer.add({-1}, 1), Error);
}

TEST(Shards, IndexRoundTripsAndRejectsBadFiles) {
  TempDir dir("index");
  DatasetIndex index = write_dataset(dir.path, random_docs(10, 260, 1), VocabLayout::bytes(), 50);
  index.adapters = nlohmann::json::array({{{"type", "bytes"}}});
  index.save(dir.path);
  const DatasetIndex back = DatasetIndex::load(dir.path);
  EXPECT_EQ(back.to_json(), index.to_json());
  EXPECT_EQ(back.adapters[0]["type"], "bytes");

  expect_error_naming("no split 'validation'", "train", [&] { back.split("validation"); });
  expect_error_naming("no split 'val'", dir.path.string(), [&] { ShardedSplit::open(dir.path, back, "val", false); });
  const std::string file = (dir.path / "index.json").string();

  // Unsupported version, malformed JSON, totals that disagree with the shards: each names the file.
  nlohmann::json j = index.to_json();
  j["format_version"] = 2;
  std::ofstream(dir.path / "index.json") << j.dump();
  expect_error_naming("version 2", file, [&] { DatasetIndex::load(dir.path); });
  std::ofstream(dir.path / "index.json") << "{\"format_version\": 1, \"layout\": ";
  expect_error_naming("malformed JSON", file, [&] { DatasetIndex::load(dir.path); });
  j = index.to_json();
  j["splits"]["train"]["tokens"] = j["splits"]["train"]["tokens"].get<int64_t>() + 1;
  std::ofstream(dir.path / "index.json") << j.dump();
  expect_error_naming("split 'train'", file, [&] { DatasetIndex::load(dir.path); });
  j = index.to_json();
  j.erase("layout");
  std::ofstream(dir.path / "index.json") << j.dump();
  expect_error_naming("layout", file, [&] { DatasetIndex::load(dir.path); });

  fs::remove(dir.path / "index.json");
  expect_error_naming("run `tessera prepare` first", dir.path.string(), [&] { DatasetIndex::load(dir.path); });
}

// A good dataset of several shards, then one shard damaged by `damage`; opening must fail naming it.
void expect_damage_detected(const std::string& name, const std::string& needle, bool verify,
                            const std::function<void(const fs::path& shard, DatasetIndex& index)>& damage) {
  TempDir dir("damage_" + name);
  DatasetIndex index = write_dataset(dir.path, random_docs(20, 260, 3), VocabLayout::bytes(), 60);
  ASSERT_GE(index.splits["train"].shards.size(), 3u);
  const fs::path shard = dir.path / index.splits["train"].shards[1].file;
  ASSERT_NO_THROW(ShardedSplit::open(dir.path, index, "train", true));
  damage(shard, index);
  expect_error_naming(needle, shard.string(), [&] { ShardedSplit::open(dir.path, index, "train", verify); });
}

void flip_byte(const fs::path& p, std::streamoff at) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c;
  f.get(c);
  f.seekp(at);
  f.put(static_cast<char>(c ^ 0x5a));
}

TEST(Shards, DamagedShardsAreErrorsNamingTheFile) {
  expect_damage_detected("truncated", "truncated", false, [](const fs::path& p, DatasetIndex&) {
    fs::resize_file(p, fs::file_size(p) - 8);
  });
  expect_damage_detected("short", "truncated", false, [](const fs::path& p, DatasetIndex&) { fs::resize_file(p, 10); });
  expect_damage_detected("longer", "index says", false, [](const fs::path& p, DatasetIndex&) {
    std::ofstream(p, std::ios::app | std::ios::binary) << "extra!!!";
  });
  // A token byte: the structure is intact, only the checksum tells.
  expect_damage_detected("flipped", "checksum mismatch", true,
                         [](const fs::path& p, DatasetIndex&) { flip_byte(p, 64 + 3); });
  expect_damage_detected("magic", "not a Tessera shard", false, [](const fs::path& p, DatasetIndex&) { flip_byte(p, 0); });
  expect_damage_detected("magic_verified", "not a Tessera shard", true,
                         [](const fs::path& p, DatasetIndex&) { flip_byte(p, 2); });
  expect_damage_detected("missing", "missing", false, [](const fs::path& p, DatasetIndex&) { fs::remove(p); });
  // The index's counts for the shard no longer match its header.
  expect_damage_detected("counts", "but the index says", false, [](const fs::path&, DatasetIndex& index) {
    index.splits["train"].shards[1].docs += 1;
  });
  // Document offsets that go backwards (the checksum is not asked for, so the structure check must see it).
  expect_damage_detected("offsets", "offsets", false, [](const fs::path& p, DatasetIndex& index) {
    const ShardInfo& info = index.splits["train"].shards[1];
    const std::streamoff a = 64 + (info.tokens * 2 + 7) / 8 * 8;
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    const int64_t big = info.tokens + 5;
    f.seekp(a + 8);
    f.write(reinterpret_cast<const char*>(&big), 8);
  });
  // A flipped token byte goes unnoticed without verification: that is what the checksum is for.
  TempDir dir("unverified");
  DatasetIndex index = write_dataset(dir.path, random_docs(20, 260, 3), VocabLayout::bytes(), 60);
  flip_byte(dir.path / index.splits["train"].shards[0].file, 64);
  EXPECT_NO_THROW(ShardedSplit::open(dir.path, index, "train", false));
}

pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

TEST(Shards, InterruptedWritesLeaveNothingAReaderAccepts) {
  TempDir dir("interrupted");
  const std::vector<Doc> docs = random_docs(12, 260, 9);
  {
    ShardWriter writer(dir.path, "train", 260, 60);
    for (const auto& d : docs) writer.add(d.tokens, d.bytes);
    // Only whole shards carry a final name while the writer runs; the current one is in memory.
    for (const auto& e : fs::directory_iterator(dir.path)) {
      const std::string f = read_all(e.path());
      ASSERT_GE(f.size(), 40u);
      const auto n_tokens = at_offset<int64_t>(f, 16), n_docs = at_offset<int64_t>(f, 24);
      EXPECT_EQ(f.size(), 64 + (n_tokens * 2 + 7) / 8 * 8 + 16 * n_docs + 8) << e.path();
    }
    // Destroyed without finish(): killed mid-prepare.
  }
  EXPECT_TRUE(fs::exists(dir.path / "train_00000.bin"));
  expect_error_naming("run `tessera prepare` first", dir.path.string(), [&] { DatasetIndex::load(dir.path); });

  // A write that fails (here: the final name is taken by a folder) leaves no temporary behind and no
  // file under the shard's name.
  fs::create_directories(dir.path / "val_00001.bin");
  {
    ShardWriter writer(dir.path, "val", 260, 5);
    writer.add({1, 2, 3}, 3);
    writer.add({4, 5, 6}, 3);  // writes val_00000.bin
    EXPECT_THROW(writer.add({7, 8, 9}, 3), Error);  // writing val_00001.bin fails
  }
  EXPECT_TRUE(fs::is_directory(dir.path / "val_00001.bin"));
  for (const auto& e : fs::directory_iterator(dir.path))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();

  // A temporary left by a dead writer: a finished dataset ignores it, and the next writer removes it.
  const DatasetIndex index = write_dataset(dir.path, docs, VocabLayout::bytes(), 60);
  const fs::path leftover = dir.path / ("train_00000.bin.tmp-" + std::to_string(dead_pid()) + "-0");
  std::ofstream(leftover) << "half a shard";
  EXPECT_EQ(ShardedSplit::open(dir.path, index, "train", true)->docs(), static_cast<int64_t>(docs.size()));
  ShardWriter next(dir.path, "train", 260, 60);
  EXPECT_FALSE(fs::exists(leftover));
}

}  // namespace
}  // namespace tessera
