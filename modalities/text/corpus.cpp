#include "modalities/text/corpus.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

// English prose, verse and quotations; left out: ASCII art, files of mostly offensive or in-joke
// content, and the translation exercise.
const char* const kFortunesFiles[] = {"art",      "computers",  "cookie",    "definitions", "education",
                                      "food",     "goedel",     "humorists", "kids",        "law",
                                      "love",     "magic",      "medicine",  "miscellaneous", "news",
                                      "paradoxum", "people",    "pets",      "platitudes",  "politics",
                                      "science",  "songs-poems", "sports",   "startrek",    "tao",
                                      "wisdom",   "work"};

bool is_blank(const std::string& line) {
  return std::all_of(line.begin(), line.end(), [](unsigned char c) { return std::isspace(c); });
}

// Terminal overstrike ("_\bX" underline, "X\bX" bold) in the fortunes files: keep what was printed last.
std::string strip_overstrike(const std::string& s) {
  if (s.find('\b') == std::string::npos) return s;
  std::string out;
  for (char c : s) {
    if (c == '\b') {
      if (!out.empty()) out.pop_back();
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string format_of(const fs::path& p) {
  const std::string ext = p.extension().string();
  if (ext == ".jsonl") return "jsonl";
  if (ext == ".txt" || ext == ".md" || ext == ".text") return "text";
  return "";
}

fs::path resolve_input(const std::string& input, const std::string& recipe_dir) {
  const fs::path p(input);
  std::vector<fs::path> tried{p};
  if (!p.is_absolute() && !recipe_dir.empty()) tried.push_back(fs::path(recipe_dir) / p);
#ifdef TESSERA_SOURCE_DIR
  if (!p.is_absolute()) tried.push_back(fs::path(TESSERA_SOURCE_DIR) / p);
#endif
  for (const auto& t : tried)
    if (fs::exists(t)) return t;
  std::string where;
  for (const auto& t : tried) where += "\n  " + t.string();
  fail("corpus input '", input, "' not found; looked in:", where);
}

}  // namespace

std::vector<std::string> default_fortunes_files() {
  std::vector<std::string> out;
  for (const char* name : kFortunesFiles) {
    const fs::path p = fs::path(kFortunesDir) / name;
    if (fs::is_regular_file(p)) out.push_back(p.string());
  }
  return out;
}

std::vector<CorpusFile> list_corpus_files(const CorpusConfig& config, const std::string& recipe_dir) {
  check(!config.inputs.empty(), "corpus has no inputs: list files or folders in inputs (or debian:fortunes)");
  std::vector<CorpusFile> files;
  for (const std::string& input : config.inputs) {
    if (input == "debian:fortunes") {
      const auto found = default_fortunes_files();
      check(!found.empty(), "the default corpus needs the Debian package `fortunes` (", kFortunesDir,
            " is missing or empty): install it with `sudo apt-get install fortunes` (scripts/setup.sh does)");
      for (const auto& f : found) files.push_back({f, "fortunes"});
      continue;
    }
    check(input.rfind("debian:", 0) != 0, "unknown built-in corpus '", input, "' (available: debian:fortunes)");
    const fs::path p = resolve_input(input, recipe_dir);
    if (fs::is_directory(p)) {
      std::vector<fs::path> found;
      for (const auto& entry : fs::recursive_directory_iterator(p))
        if (entry.is_regular_file() && !format_of(entry.path()).empty()) found.push_back(entry.path());
      std::sort(found.begin(), found.end());
      check(!found.empty(), "corpus folder '", p.string(), "' holds no .txt, .md or .jsonl files");
      for (const auto& f : found) files.push_back({f.string(), format_of(f)});
    } else {
      // A file named explicitly is read whatever its extension: .jsonl as JSON lines, anything else as text.
      files.push_back({p.string(), p.extension() == ".jsonl" ? "jsonl" : "text"});
    }
  }
  return files;
}

void for_each_document(const std::vector<CorpusFile>& files, const CorpusConfig& config,
                       const std::function<bool(Sample&&)>& fn) {
  int64_t emitted = 0;
  bool stop = false;
  auto emit = [&](std::string text, const std::string& id) {
    if (stop || static_cast<int64_t>(text.size()) < std::max<int64_t>(config.min_chars, 1)) return;
    Sample s;
    s.id = id;
    s.segments.push_back(Segment::of_text(std::move(text)));
    ++emitted;
    if (!fn(std::move(s)) || (config.max_documents > 0 && emitted >= config.max_documents)) stop = true;
  };

  for (const CorpusFile& file : files) {
    if (stop) break;
    std::ifstream in(file.path, std::ios::binary);
    check(static_cast<bool>(in), "cannot open corpus file '", file.path, "'");
    std::string line, doc;
    int64_t line_no = 0, doc_line = 1;
    auto flush = [&] {
      // Trailing newlines belong to the separator, not the document.
      while (!doc.empty() && (doc.back() == '\n' || doc.back() == '\r')) doc.pop_back();
      if (!doc.empty()) emit(std::move(doc), file.path + ":" + std::to_string(doc_line));
      doc.clear();
    };
    while (!stop && std::getline(in, line)) {
      ++line_no;
      if (file.format == "jsonl") {
        if (is_blank(line)) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          fail(file.path, ":", line_no, ": not valid JSON (", e.what(), "); each line of a .jsonl file must be one "
               "JSON object");
        }
        check(j.is_object() && j.contains(config.jsonl_field) && j[config.jsonl_field].is_string(), file.path, ":",
              line_no, ": no string field '", config.jsonl_field, "' (set data.prepare.corpus.jsonl_field)");
        emit(j[config.jsonl_field].get<std::string>(), file.path + ":" + std::to_string(line_no));
      } else if (file.format == "fortunes") {
        if (line == "%") {
          flush();
          doc_line = line_no + 1;
        } else {
          doc += strip_overstrike(line);
          doc += '\n';
        }
      } else if (config.split_by == "line") {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!is_blank(line)) emit(line, file.path + ":" + std::to_string(line_no));
      } else if (config.split_by == "paragraph") {
        if (is_blank(line)) {
          flush();
          doc_line = line_no + 1;
        } else {
          doc += line;
          doc += '\n';
        }
      } else {  // whole file
        doc += line;
        doc += '\n';
      }
    }
    check(!in.bad(), "error reading corpus file '", file.path, "'");
    if (!stop && file.format != "jsonl") flush();
  }
}

}  // namespace tessera
