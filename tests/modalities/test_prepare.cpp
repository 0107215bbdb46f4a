// `prepare`: corpus -> adapter -> shards + index.json; idempotent, atomic, and strict about changed inputs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/io/files.h"
#include "core/data/packer.h"
#include "core/error.h"
#include "temp_dir.h"
#include "modalities/prepare.h"
#include "modalities/registry.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;

struct Dir : test::ScratchDir {
  Dir() : test::ScratchDir("prepare") {}
};

// Paragraph documents with varied English-like text (enough for a small BPE vocabulary).
std::vector<std::string> make_documents(int n) {
  const char* words[] = {"the", "model", "reads", "bytes", "and", "writes", "tokens", "into", "shards",
                         "quickly", "with", "a", "seed", "every", "document", "ends", "here", "über", "naïve"};
  std::vector<std::string> docs;
  uint64_t x = 12345;
  for (int i = 0; i < n; ++i) {
    std::string d;
    const int len = 8 + i % 13;
    for (int w = 0; w < len; ++w) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      d += (w ? " " : "") + std::string(words[(x >> 33) % (sizeof words / sizeof *words)]);
    }
    docs.push_back(d + ".");
  }
  return docs;
}

fs::path write_corpus(const fs::path& dir, const std::vector<std::string>& docs) {
  const fs::path p = dir / "corpus.txt";
  std::ofstream out(p, std::ios::binary);
  for (const auto& d : docs) out << d << "\n\n";
  return p;
}

PrepareConfig config_for(const fs::path& corpus, const std::string& adapter = "bytes") {
  PrepareConfig c;
  c.corpus.inputs = {corpus.string()};
  c.adapter = adapter;
  c.val_fraction = 0.2;
  c.shard_tokens = 2000;  // several shards
  c.bpe.vocab_size = 300;
  c.bpe.threads = 1;
  return c;
}

TEST(Prepare, BytesDatasetHoldsEveryDocumentExactlyOnce) {
  Dir d;
  const auto docs = make_documents(200);
  const PrepareConfig c = config_for(write_corpus(d.path, docs));
  const PrepareResult r = prepare_dataset(c, d.path / "ds", "", false, true);
  EXPECT_FALSE(r.up_to_date);
  const DatasetIndex index = DatasetIndex::load(d.path / "ds");
  EXPECT_EQ(index.layout, VocabLayout::bytes());
  const auto& train = index.split("train");
  const auto& val = index.split("val");
  EXPECT_EQ(train.docs + val.docs, 200);
  EXPECT_GT(val.docs, 20);  // about 20% held out
  EXPECT_LT(val.docs, 60);
  EXPECT_GT(train.shards.size(), 1u);
  int64_t bytes = 0;
  for (const auto& doc : docs) bytes += static_cast<int64_t>(doc.size());
  EXPECT_EQ(train.bytes + val.bytes, bytes);
  EXPECT_EQ(train.tokens + val.tokens, bytes + 2 * 200);  // <bos> text <eos>

  // Decoding both splits gives back the corpus's documents, each once.
  std::multiset<std::string> expected(docs.begin(), docs.end()), got;
  for (const char* split : {"train", "val"}) {
    const auto s = ShardedSplit::open(d.path / "ds", index, split, true);
    std::vector<int64_t> tokens(s->size()), doc_index(s->size());
    s->read(0, s->size(), tokens.data(), doc_index.data());
    std::string cur;
    for (int64_t t : tokens) {
      if (t == 1) cur.clear();
      else if (t == 2) got.insert(cur);
      else cur.push_back(static_cast<char>(t - 4));
    }
  }
  EXPECT_EQ(got, expected);
}

TEST(Prepare, RerunIsANoOpAndChangedInputsAreAnError) {
  Dir d;
  const fs::path corpus = write_corpus(d.path, make_documents(60));
  PrepareConfig c = config_for(corpus);
  prepare_dataset(c, d.path / "ds", "", false, true);
  const auto mtime = fs::last_write_time(d.path / "ds" / "index.json");
  EXPECT_TRUE(prepare_dataset(c, d.path / "ds", "", false, true).up_to_date);
  EXPECT_EQ(fs::last_write_time(d.path / "ds" / "index.json"), mtime);

  c.val_fraction = 0.3;  // other settings
  try {
    prepare_dataset(c, d.path / "ds", "", false, true);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("prepared from other inputs or settings"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--force"), std::string::npos);
  }
  const PrepareResult forced = prepare_dataset(c, d.path / "ds", "", true, true);
  EXPECT_FALSE(forced.up_to_date);
  EXPECT_TRUE(prepare_dataset(c, d.path / "ds", "", false, true).up_to_date);

  // An edited input file changes the fingerprint too.
  std::ofstream(corpus, std::ios::app) << "one more document at the end\n";
  fs::last_write_time(corpus, fs::last_write_time(corpus) + std::chrono::seconds(5));
  EXPECT_THROW(prepare_dataset(c, d.path / "ds", "", false, true), Error);
}

TEST(Prepare, InterruptedRunLeavesNothingALoaderAccepts) {
  Dir d;
  const fs::path corpus = write_corpus(d.path, make_documents(80));
  const fs::path ds = d.path / "ds";
  // A document the adapter refuses (invalid UTF-8 for BPE) stops the run half-way.
  {
    std::ofstream(corpus, std::ios::app) << std::string("bad \xff\xfe bytes\n\n");
  }
  PrepareConfig c = config_for(corpus, "bpe");
  EXPECT_THROW(prepare_dataset(c, ds, "", false, true), Error);
  EXPECT_FALSE(fs::exists(ds / "index.json"));
  EXPECT_THROW(DatasetIndex::load(ds), Error);
  // The next run starts over cleanly (the BPE model is retrained, stale shards are replaced).
  c.adapter = "bytes";
  const PrepareResult r = prepare_dataset(c, ds, "", false, true);
  EXPECT_FALSE(r.up_to_date);
  EXPECT_TRUE(fs::exists(ds / "index.json"));
  EXPECT_FALSE(fs::exists(ds / "tokenizer.model"));
}

TEST(Prepare, BpeDatasetTrainsATokenizerAndIsShorterThanBytes) {
  Dir d;
  const auto docs = make_documents(300);
  const fs::path corpus = write_corpus(d.path, docs);
  prepare_dataset(config_for(corpus, "bytes"), d.path / "bytes", "", false, true);
  prepare_dataset(config_for(corpus, "bpe"), d.path / "bpe", "", false, true);
  const DatasetIndex bytes = DatasetIndex::load(d.path / "bytes");
  const DatasetIndex bpe = DatasetIndex::load(d.path / "bpe");
  ASSERT_TRUE(fs::exists(d.path / "bpe" / "tokenizer.model"));
  EXPECT_EQ(bpe.layout.size(), 3 + 300);  // <pad> <bos> <eos>, then the pieces
  EXPECT_EQ(bpe.adapters.at(0).at("model"), "tokenizer.model");  // relative: the folder can move
  // Same documents and bytes in each split; fewer tokens with BPE.
  for (const char* split : {"train", "val"}) {
    EXPECT_EQ(bpe.split(split).docs, bytes.split(split).docs);
    EXPECT_EQ(bpe.split(split).bytes, bytes.split(split).bytes);
    EXPECT_LT(bpe.split(split).tokens, bytes.split(split).tokens * 8 / 10);
  }
  // The recorded adapter decodes the shards back to the documents.
  const auto adapter = make_adapter(bpe.adapters.at(0), d.path / "bpe");
  const auto s = ShardedSplit::open(d.path / "bpe", bpe, "val", true);
  std::vector<int64_t> tokens(s->size());
  s->read(0, s->size(), tokens.data(), nullptr);
  std::vector<int64_t> first_doc;
  for (size_t i = 1; tokens[i] != bpe.layout.special_id("<eos>"); ++i) first_doc.push_back(tokens[i]);
  const std::string text = adapter->decode(from_model_ids(first_doc, *adapter, bpe.layout)).text;
  EXPECT_NE(std::find(docs.begin(), docs.end(), text), docs.end()) << text;
}

TEST(Prepare, ReusesAGivenTokenizerAndChecksSettings) {
  Dir d;
  const fs::path corpus = write_corpus(d.path, make_documents(200));
  prepare_dataset(config_for(corpus, "bpe"), d.path / "a", "", false, true);
  PrepareConfig c = config_for(corpus, "bpe");
  c.bpe_model = (d.path / "a" / "tokenizer.model").string();
  prepare_dataset(c, d.path / "b", "", false, true);
  EXPECT_FALSE(fs::exists(d.path / "b" / "tokenizer.model"));  // not retrained
  EXPECT_EQ(DatasetIndex::load(d.path / "a").split("train").tokens, DatasetIndex::load(d.path / "b").split("train").tokens);

  PrepareConfig bad = config_for(corpus);
  bad.val_fraction = 1.0;
  EXPECT_THROW(prepare_dataset(bad, d.path / "c", "", false, true), Error);
  bad = config_for(corpus, "bpe");
  bad.bpe_model = (d.path / "missing.model").string();
  EXPECT_THROW(prepare_dataset(bad, d.path / "c", "", false, true), Error);
}

TEST(Prepare, ShardsMadeElsewhereAreUsedWhenTheCorpusIsAbsent) {
  // Shards prepared on one machine, trained on another that lacks the corpus (the GPU workflow).
  Dir d;
  const fs::path corpus = write_corpus(d.path, make_documents(50));
  const PrepareConfig c = config_for(corpus);
  prepare_dataset(c, d.path / "ds", "", false, true);
  fs::remove(corpus);
  const PrepareResult r = prepare_dataset(c, d.path / "ds", "", false, true);
  EXPECT_TRUE(r.up_to_date);
  EXPECT_EQ(r.index.split("train").docs + r.index.split("val").docs, 50);
  // Other settings, no prepared dataset, or --force: the missing corpus is an error.
  PrepareConfig changed = c;
  changed.val_fraction = 0.5;
  EXPECT_THROW(prepare_dataset(changed, d.path / "ds", "", false, true), Error);
  EXPECT_THROW(prepare_dataset(c, d.path / "other", "", false, true), Error);
  EXPECT_THROW(prepare_dataset(c, d.path / "ds", "", true, true), Error);
}

}  // namespace
}  // namespace tessera
