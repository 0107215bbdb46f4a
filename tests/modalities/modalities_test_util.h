// Helpers shared by the modality adapter tests: temporary folders, a small English corpus, and one
// BPE model trained on it per test process.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "core/io/files.h"
#include "core/error.h"
#include "modalities/text_bpe/sentencepiece_adapter.h"

namespace tessera::testing {

namespace fs = std::filesystem;

inline std::string current_test_name() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return info ? std::string(info->test_suite_name()) + "." + info->name() : "modalities";
}

// A fresh folder, removed afterwards.
class TempDir {
 public:
  explicit TempDir(const std::string& name = current_test_name()) {
    path_ = fs::temp_directory_path() / ("tessera-modalities-" + std::to_string(::getpid()) + "-" + name);
    remove_tree(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { remove_tree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

inline std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

// English-like sentences from small word lists, reproducible from `seed`: the documents of the
// training corpus and, with another seed, held-out text of the same domain.
inline std::vector<std::string> english_documents(int count, uint64_t seed) {
  static const std::vector<std::string> subjects = {
      "The small river",  "A tired traveller", "Every morning the baker", "The old library",
      "Our neighbour",    "The quiet teacher", "A curious student",       "The village council",
      "The northern wind", "My grandmother"};
  static const std::vector<std::string> verbs = {
      "carries", "remembers", "opens", "follows", "describes", "watches", "prepares", "explains"};
  static const std::vector<std::string> objects = {
      "the bread before sunrise",    "a letter from the city",    "the long road through the hills",
      "stories about the harbour",   "the garden behind the house", "the lessons of the winter",
      "the light over the water",    "a question nobody answered", "the history of the station",
      "the sound of distant trains"};
  static const std::vector<std::string> endings = {
      ".", ", and nobody seems surprised.", " while the children are still sleeping.",
      " because the weather is changing.", "; later that evening it starts to rain.",
      " with great patience and care."};
  std::mt19937_64 rng(seed);
  auto pick = [&](const std::vector<std::string>& v) -> const std::string& { return v[rng() % v.size()]; };
  std::vector<std::string> docs;
  for (int d = 0; d < count; ++d) {
    std::string doc;
    const int sentences = 2 + static_cast<int>(rng() % 4);
    for (int s = 0; s < sentences; ++s) {
      if (s > 0) doc += (rng() % 3 == 0) ? "\n" : " ";
      doc += pick(subjects) + " " + pick(verbs) + " " + pick(objects) + pick(endings);
      if (rng() % 5 == 0) doc += " It happened in " + std::to_string(1900 + rng() % 120) + ".";
    }
    docs.push_back(doc);
  }
  return docs;
}

inline SentencePieceTrainConfig small_bpe_config() {
  SentencePieceTrainConfig c;
  c.vocab_size = 512;
  c.threads = 2;
  return c;
}

// One model per test process, trained on english_documents(60, 1) (~12 KB).
inline const fs::path& shared_bpe_model() {
  static const TempDir dir("shared");  // removed at exit
  static const fs::path model =
      train_sentencepiece(english_documents(60, 1), small_bpe_config(), dir / "english").model;
  return model;
}

// The message of the tessera::Error `f` throws, or "(no error)".
inline std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace tessera::testing
