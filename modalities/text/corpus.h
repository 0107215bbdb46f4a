// Text corpora as streams of documents (Samples with one text segment), read without ever holding the
// whole corpus in memory: plain-text files split into documents, JSON-lines files (one document per
// line), folders of both, and the embedded default corpus from a Debian package.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/data/sample.h"

namespace tessera {

struct CorpusConfig {
  // Files or folders (searched recursively for .txt, .md and .jsonl), or "debian:fortunes" for the
  // embedded default (the Debian `fortunes` package: English quotations, poems and prose).
  std::vector<std::string> inputs;
  std::string split_by = "paragraph";  // plain-text files: blank-line paragraphs, lines, or whole files
  std::string jsonl_field = "text";    // the field holding a JSON-lines document's text
  int64_t min_chars = 1;               // documents shorter than this are skipped
  int64_t max_documents = 0;           // 0: all

  template <class V>
  void fields(V& v) {
    v.required("inputs", inputs, "files or folders (.txt/.md/.jsonl), or debian:fortunes for the default corpus");
    v.choice("split_by", split_by, {"paragraph", "line", "file"}, "what makes one document in a plain-text file");
    v.optional("jsonl_field", jsonl_field, "the JSON-lines field holding the text");
    v.optional("min_chars", min_chars, "skip documents shorter than this many bytes");
    v.optional("max_documents", max_documents, "stop after this many documents (0: all)");
  }
};

// The fortunes files the default corpus uses (English prose, verse and quotations; the package's
// offensive, ASCII-art and non-English files are left out). Empty if the package is missing.
inline constexpr const char* kFortunesDir = "/usr/share/games/fortunes";
std::vector<std::string> default_fortunes_files();

// The concrete files `config.inputs` names, in a fixed order (sorted within folders), with the reader
// each gets; `recipe_dir` resolves relative paths that are not found from the working directory.
struct CorpusFile {
  std::string path;
  std::string format;  // "text", "jsonl" or "fortunes"
};
std::vector<CorpusFile> list_corpus_files(const CorpusConfig& config, const std::string& recipe_dir = "");

// Streams every document to `fn` in a deterministic order; `fn` returns false to stop early. Errors
// (a missing input, malformed JSON, a missing field) name the file and line.
void for_each_document(const std::vector<CorpusFile>& files, const CorpusConfig& config,
                       const std::function<bool(Sample&&)>& fn);

}  // namespace tessera
