// Corpus readers: documents from text, JSON-lines and fortunes files, streamed in a fixed order.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/io/files.h"
#include "core/error.h"
#include "temp_dir.h"
#include "modalities/text/corpus.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;

// A scratch folder that can write files into itself.
struct Dir : test::ScratchDir {
  Dir() : test::ScratchDir("corpus") {}
  fs::path write(const std::string& name, const std::string& text) const {
    const fs::path p = path / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
};

std::vector<std::string> docs_of(const CorpusConfig& c) {
  std::vector<std::string> out;
  for_each_document(list_corpus_files(c), c, [&](Sample&& s) {
    EXPECT_EQ(s.segments.size(), 1u);
    out.push_back(s.segments[0].text);
    return true;
  });
  return out;
}

TEST(Corpus, TextFilesSplitByParagraphLineOrFile) {
  Dir d;
  const fs::path f = d.write("a.txt", "first para\nstill first\n\n\n  \nsecond\r\nline two\n\nthird");
  CorpusConfig c;
  c.inputs = {f.string()};
  EXPECT_EQ(docs_of(c), (std::vector<std::string>{"first para\nstill first", "second\r\nline two", "third"}));
  c.split_by = "line";
  EXPECT_EQ(docs_of(c), (std::vector<std::string>{"first para", "still first", "second", "line two", "third"}));
  c.split_by = "file";
  EXPECT_EQ(docs_of(c).size(), 1u);
  EXPECT_EQ(docs_of(c)[0].rfind("first para", 0), 0u);
}

TEST(Corpus, JsonLinesAndFoldersInSortedOrder) {
  Dir d;
  d.write("b/2.jsonl", "{\"text\": \"from json \\u00e9\"}\n\n{\"text\": \"second\", \"id\": 3}\n");
  d.write("b/1.txt", "plain\n");
  d.write("b/skip.bin", "not read");
  CorpusConfig c;
  c.inputs = {(d.path / "b").string()};
  EXPECT_EQ(docs_of(c), (std::vector<std::string>{"plain", "from json \xc3\xa9", "second"}));
  c.max_documents = 2;
  EXPECT_EQ(docs_of(c).size(), 2u);
}

TEST(Corpus, BadJsonLinesNameFileAndLine) {
  Dir d;
  const fs::path f = d.write("x.jsonl", "{\"text\": \"ok\"}\n{\"text\": oops}\n");
  CorpusConfig c;
  c.inputs = {f.string()};
  try {
    docs_of(c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x.jsonl:2: not valid JSON"), std::string::npos) << e.what();
  }
  d.write("y.jsonl", "{\"body\": \"no text field\"}\n");
  c.inputs = {(d.path / "y.jsonl").string()};
  try {
    docs_of(c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("y.jsonl:1: no string field 'text'"), std::string::npos) << e.what();
  }
}

TEST(Corpus, MissingInputsAreClearErrors) {
  CorpusConfig c;
  EXPECT_THROW(list_corpus_files(c), Error);
  c.inputs = {"/no/such/place.txt"};
  try {
    list_corpus_files(c);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("corpus input '/no/such/place.txt' not found"), std::string::npos);
  }
  c.inputs = {"debian:novels"};
  EXPECT_THROW(list_corpus_files(c), Error);
}

TEST(Corpus, FortunesFormatSplitsAtPercentAndRemovesOverstrike) {
  // The default corpus's reader, on a file written here in the fortunes format.
  Dir d;
  const fs::path f = d.write("fortunes", "One\nfortune.\n%\n_\bb_\bo_\bl_\bd and B\bBo\bol\bld\bd\n%\n%\nlast\n");
  std::vector<std::string> docs;
  CorpusConfig c;
  for_each_document({{f.string(), "fortunes"}}, c, [&](Sample&& s) {
    docs.push_back(s.segments[0].text);
    return true;
  });
  EXPECT_EQ(docs, (std::vector<std::string>{"One\nfortune.", "bold and Bold", "last"}));
}

TEST(Corpus, DefaultCorpusWhenInstalled) {
  if (default_fortunes_files().empty()) GTEST_SKIP() << "Debian package fortunes not installed";
  CorpusConfig c;
  c.inputs = {"debian:fortunes"};
  c.max_documents = 50;
  const auto docs = docs_of(c);
  ASSERT_EQ(docs.size(), 50u);
  for (const auto& doc : docs) {
    EXPECT_FALSE(doc.empty());
    EXPECT_EQ(doc.find('\b'), std::string::npos);
  }
}

}  // namespace
}  // namespace tessera
