#include "modalities/speech_units/speech_corpus.h"

#include <nlohmann/json.hpp>

#include <fstream>

#include "core/error.h"
#include "core/io/files.h"

namespace tessera::speech {
namespace fs = std::filesystem;

namespace {

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

bool is_header(const std::string& first, const std::string& second) {
  const auto in = [](const std::string& s, std::initializer_list<const char*> names) {
    for (const char* n : names)
      if (s == n) return true;
    return false;
  };
  return in(first, {"path", "audio", "wav", "file"}) && in(second, {"transcript", "text", "sentence"});
}

bool is_jsonl(const fs::path& p) {
  const std::string ext = p.extension().string();
  return ext == ".jsonl" || ext == ".json";
}

}  // namespace

std::vector<SpeechTextEntry> read_speech_manifest(const fs::path& manifest) {
  std::error_code ec;
  check(fs::is_regular_file(manifest, ec), "speech manifest '", manifest.string(),
        "' does not exist; give a TSV (path<TAB>transcript) or JSONL ({\"audio\", \"text\"}) file, e.g. the "
        "train.tsv that `tessera run recipes/speech/corpus.yaml` writes");
  std::ifstream in(manifest, std::ios::binary);
  check(static_cast<bool>(in), "cannot open speech manifest '", manifest.string(), "'");
  const fs::path base = manifest.parent_path();
  const bool jsonl = is_jsonl(manifest);
  std::vector<SpeechTextEntry> entries;
  std::string line;
  int64_t number = 0;
  bool first = true;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string where = manifest.string() + ":" + std::to_string(number);
    const std::string stripped = trim(line);
    if (stripped.empty() || stripped[0] == '#') continue;
    std::string path, text;
    if (jsonl) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(stripped);
      } catch (const std::exception& e) {
        fail(where, ": not a JSON object (", e.what(), "); each line must be {\"audio\": PATH, \"text\": TRANSCRIPT}");
      }
      check(j.is_object() && j.contains("audio") && j.at("audio").is_string(), where,
            ": needs a string \"audio\" (the audio file, relative to the manifest)");
      check(j.contains("text") && j.at("text").is_string(), where, ": needs a string \"text\" (the transcript)");
      path = j.at("audio").get<std::string>();
      text = j.at("text").get<std::string>();
    } else {
      const size_t tab = line.find('\t');
      check(tab != std::string::npos, where, ": expected path<TAB>transcript, found no tab (",
            line.substr(0, 60), ")");
      path = trim(line.substr(0, tab));
      text = line.substr(tab + 1);
      check(text.find('\t') == std::string::npos, where,
            ": more than one tab; the transcript may not contain tabs (use JSONL for such text)");
      if (first && is_header(path, trim(text))) {
        first = false;
        continue;
      }
    }
    first = false;
    text = trim(text);
    check(!path.empty(), where, ": empty audio path");
    check(!text.empty(), where, ": empty transcript for '", path, "'; every utterance needs its text");
    const fs::path resolved = fs::path(path).is_absolute() ? fs::path(path) : base / path;
    check(fs::is_regular_file(resolved, ec), where, ": audio file '", resolved.string(),
          "' does not exist (paths are relative to the manifest's folder)");
    entries.push_back({resolved, text, where});
  }
  check(!entries.empty(), "speech manifest '", manifest.string(), "' lists no utterances");
  return entries;
}

audio::Audio load_speech_audio(const SpeechTextEntry& entry, int64_t sample_rate) {
  try {
    return audio::read_audio(entry.audio, sample_rate);
  } catch (const Error& e) {
    fail(entry.where, ": ", e.what());
  }
}

void write_speech_manifest(const fs::path& manifest, const std::vector<SpeechTextEntry>& entries) {
  const fs::path base = fs::absolute(manifest).parent_path().lexically_normal();
  std::string text = "path\ttranscript\n";
  for (const auto& e : entries) {
    check(e.text.find_first_of("\t\r\n") == std::string::npos, "speech manifest: the transcript of '",
          e.audio.string(), "' contains a tab or line break; remove it first");
    check(!trim(e.text).empty(), "speech manifest: empty transcript for '", e.audio.string(), "'");
    const fs::path abs = fs::absolute(e.audio).lexically_normal();
    const fs::path rel = abs.lexically_relative(base);
    const bool below = !rel.empty() && *rel.begin() != "..";
    text += (below ? rel : abs).generic_string() + "\t" + e.text + "\n";
  }
  write_bytes_atomic(manifest, text.data(), text.size());
}

}  // namespace tessera::speech
