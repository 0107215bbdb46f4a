// A speech-text corpus generated on this machine with the espeak-ng synthesiser: the embedded default
// speech data (like debian:fortunes for text and the scene generator for images).
//
// Sentences come from the default text corpus (fortunes, cut into sentences of min_words..max_words
// words of plain ASCII prose) and from the scene captions (modalities/image/scenes.h); each utterance
// gets a voice, speaking rate and pitch drawn from its own seeded generator, so the corpus is the same
// for a seed on every run (whatever `jobs` is). espeak-ng writes 22050 Hz WAVs; they are resampled to
// `sample_rate` (16 kHz) with audio::resample when read, and the corpus stores 16 kHz mono PCM16 WAVs:
//
//   out_dir/train/00000.wav ...   out_dir/train.tsv   (path<TAB>transcript, paths relative to it)
//   out_dir/val/00000.wav ...     out_dir/val.tsv
//
// espeak-ng runs as a child process (posix_spawn, argument vector, text passed in a file): no shell is
// involved, so no text can inject commands.
#pragma once

#include <ATen/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace tessera::speech {

struct TtsCorpusConfig {
  int64_t train_utterances = 600;
  int64_t val_utterances = 60;
  std::vector<std::string> text_inputs = {"debian:fortunes"};  // corpus.h inputs the sentences come from
  double scene_fraction = 0.3;  // share of utterances that are scene captions (the rest: text sentences)
  int64_t min_words = 3;
  int64_t max_words = 20;
  std::vector<std::string> voices = {"en",       "en-us",    "en-gb",    "en+f3",   "en+m3",
                                     "en-us+f2", "en-gb+f4", "en-us+m5", "en+f1", "en-gb-scotland"};
  int64_t rate_min = 140;  // words per minute (espeak-ng -s)
  int64_t rate_max = 200;
  int64_t pitch_min = 30;  // 0..99 (espeak-ng -p)
  int64_t pitch_max = 70;
  int64_t sample_rate = 16000;
  int64_t jobs = 2;  // espeak-ng processes at once
  std::string espeak = "espeak-ng";  // program name (searched on PATH) or path
  int64_t seed = 0;

  template <class V>
  void fields(V& v) {
    v.optional("train_utterances", train_utterances, "utterances in the training split");
    v.optional("val_utterances", val_utterances, "utterances in the validation split");
    v.optional("text_inputs", text_inputs, "text corpus inputs (files/folders or debian:fortunes) for the sentences");
    v.optional("scene_fraction", scene_fraction, "share of utterances that are image-scene captions (0..1)");
    v.optional("min_words", min_words, "shortest sentence in words");
    v.optional("max_words", max_words, "longest sentence in words");
    v.optional("voices", voices, "espeak-ng voices (language[+variant]) chosen per utterance");
    v.optional("rate_min", rate_min, "slowest speaking rate, words per minute (espeak-ng -s)");
    v.optional("rate_max", rate_max, "fastest speaking rate, words per minute");
    v.optional("pitch_min", pitch_min, "lowest pitch, 0..99 (espeak-ng -p)");
    v.optional("pitch_max", pitch_max, "highest pitch, 0..99");
    v.optional("sample_rate", sample_rate, "sample rate of the written WAVs (Hz)");
    v.optional("jobs", jobs, "espeak-ng processes run at once");
    v.optional("espeak", espeak, "the espeak-ng program (name on PATH or a path)");
    v.optional("seed", seed, "seed of the sentence choice and the per-utterance voice/rate/pitch");
  }
};

void validate(const TtsCorpusConfig& config);

// One utterance's synthesis settings.
struct EspeakVoice {
  std::string voice = "en";
  int64_t rate = 175;
  int64_t pitch = 50;
};

// The espeak-ng executable `program` names (a path, or a name looked up on PATH); a missing one is an
// error naming the Debian package.
std::filesystem::path find_espeak(const std::string& program = "espeak-ng");

// Speaks `text` and returns mono float32 [T] at `sample_rate`; `scratch` is a folder for the temporary
// text and WAV files. A failing espeak-ng (unknown voice, ...) is an error with its stderr.
at::Tensor espeak_synthesize(const std::string& text, const EspeakVoice& voice, const std::filesystem::path& espeak,
                             const std::filesystem::path& scratch, int64_t sample_rate = 16000);

// Sentences of the corpus, deterministic for the config: `count` distinct sentences (text sentences and
// scene captions mixed by scene_fraction, shuffled). Too few usable sentences is an error.
std::vector<std::string> tts_sentences(const TtsCorpusConfig& config, int64_t count,
                                       const std::string& recipe_dir = "");

// The settings of utterance `index` (0-based over train then val).
EspeakVoice utterance_voice(const TtsCorpusConfig& config, int64_t index);

// Writes the corpus (layout above) and returns a summary: utterances and seconds per split, voices used.
nlohmann::json generate_tts_corpus(const TtsCorpusConfig& config, const std::filesystem::path& out_dir,
                                   const std::string& recipe_dir = "");

}  // namespace tessera::speech
