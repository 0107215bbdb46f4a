// Speech-text corpora on disk: a manifest lists audio files with their transcripts.
//
//   TSV   (any extension but .jsonl/.json):  path<TAB>transcript, one utterance a line; an optional
//         first line "path<TAB>transcript" (or audio/text, wav/sentence) is a header and skipped.
//   JSONL (.jsonl, .json):                   {"audio": "a/b.wav", "text": "..."} one object a line.
//
// Audio paths are relative to the manifest's folder (absolute ones are kept). Blank lines and lines
// starting with '#' are skipped. Every problem (a malformed line, a missing audio file, an empty
// transcript) is a tessera::Error naming manifest:line.
//
//   for (const SpeechTextEntry& e : read_speech_manifest("runs/speech_corpus/train.tsv")) {
//     audio::Audio a = load_speech_audio(e);   // 16 kHz mono float32 [T]
//     ... e.text ...
//   }
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "modalities/audio/audio_io.h"

namespace tessera::speech {

struct SpeechTextEntry {
  std::filesystem::path audio;  // resolved: the manifest's folder / the listed path
  std::string text;             // the transcript, UTF-8, trimmed, never empty
  std::string where;            // "manifest.tsv:12", for error messages
};

// Reads and checks a whole manifest (format chosen by extension, see above). An empty manifest (no
// utterances) is an error too.
std::vector<SpeechTextEntry> read_speech_manifest(const std::filesystem::path& manifest);

// The entry's audio as mono float32 at `sample_rate` (read_audio: libsndfile/FFmpeg, mixed down and
// resampled); errors are prefixed with entry.where.
audio::Audio load_speech_audio(const SpeechTextEntry& entry, int64_t sample_rate = audio::kDefaultSampleRate);

// Writes a TSV manifest with a "path<TAB>transcript" header, atomically. Paths are written relative to
// the manifest's folder when they lie below it. Transcripts with a tab or a line break are an error.
void write_speech_manifest(const std::filesystem::path& manifest, const std::vector<SpeechTextEntry>& entries);

}  // namespace tessera::speech
