#include "modalities/speech_units/tts_corpus.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <unistd.h>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/io/durable.h"
#include "core/io/files.h"
#include "core/io/process.h"
#include "core/progress.h"
#include "modalities/audio/audio_io.h"
#include "modalities/image/scenes.h"
#include "modalities/speech_units/speech_corpus.h"
#include "modalities/text/corpus.h"

namespace tessera::speech {
namespace fs = std::filesystem;

namespace {

constexpr const char* kInstallHint =
    "install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu package espeak-ng), or set espeak: to its path";

// A mt19937_64 for utterance `index` under `seed` (independent of how many were made before).
std::mt19937_64 utterance_rng(int64_t seed, int64_t index, uint64_t stream) {
  std::seed_seq seq{static_cast<uint64_t>(seed), static_cast<uint64_t>(index), stream};
  return std::mt19937_64(seq);
}

int64_t uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// Plain prose only: letters, digits and ordinary punctuation (no ASCII art, code, or attributions).
bool speakable(const std::string& s, int64_t min_words, int64_t max_words) {
  if (s.size() < 8 || !std::isupper(static_cast<unsigned char>(s[0]))) return false;
  const char last = s.back();
  if (last != '.' && last != '!' && last != '?') return false;
  if (s.find("--") != std::string::npos) return false;
  int64_t letters = 0;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalpha(u)) ++letters;
    else if (!(std::isdigit(u) || c == ' ' || std::string_view(".,;:!?'\"()-").find(c) != std::string_view::npos))
      return false;
  }
  const auto words = static_cast<int64_t>(std::count(s.begin(), s.end(), ' ')) + 1;
  return words >= min_words && words <= max_words && letters * 2 > static_cast<int64_t>(s.size());
}

// A document's text with whitespace runs collapsed, cut after . ! ? that end a word.
std::vector<std::string> split_sentences(const std::string& doc) {
  std::string flat;
  for (const char c : doc) {
    const bool ws = std::isspace(static_cast<unsigned char>(c)) != 0;
    if (ws) {
      if (!flat.empty() && flat.back() != ' ') flat.push_back(' ');
    } else {
      flat.push_back(c);
    }
  }
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < flat.size(); ++i) {
    cur.push_back(flat[i]);
    const bool end = (flat[i] == '.' || flat[i] == '!' || flat[i] == '?') && (i + 1 == flat.size() || flat[i + 1] == ' ');
    if (end) {
      while (!cur.empty() && cur.front() == ' ') cur.erase(cur.begin());
      out.push_back(cur);
      cur.clear();
    }
  }
  return out;
}

// A running espeak-ng: text in a file, WAV out to a file, stderr kept for the error message. A job
// left unfinished (an error elsewhere) is reaped on destruction (io::ChildProcess), so no zombie
// outlives it.
struct EspeakJob {
  fs::path text, wav, err;
  io::ChildProcess process;
};

EspeakJob spawn_espeak(const std::string& text, const EspeakVoice& v, const fs::path& espeak, const fs::path& scratch,
                       const std::string& tag) {
  const fs::path text_file = scratch / (tag + ".txt"), wav = scratch / (tag + ".wav"), err = scratch / (tag + ".err");
  std::ofstream(text_file, std::ios::binary) << text << "\n";
  const std::vector<std::string> args = {espeak.string(), "-b",  "1",  "-v", v.voice, "-s", std::to_string(v.rate),
                                         "-p",            std::to_string(v.pitch), "-w", wav.string(), "-f",
                                         text_file.string()};
  try {
    return EspeakJob{text_file, wav, err, io::ChildProcess(args, {}, err)};
  } catch (const Error& e) {
    fail(e.what(), "; ", kInstallHint);
  }
}

at::Tensor finish_espeak(EspeakJob& job, const EspeakVoice& v, const std::string& text, int64_t sample_rate) {
  const bool ok = job.process.wait() == 0;
  const std::string err = io::tail_of_file(job.err);
  check(ok && fs::exists(job.wav), "espeak-ng failed (voice '", v.voice, "', rate ", v.rate, ", pitch ", v.pitch,
        ") on \"", text.substr(0, 80), "\": ", err.empty() ? "no output" : err,
        " (list voices with `espeak-ng --voices=en`)");
  at::Tensor samples = audio::read_audio(job.wav, sample_rate).samples;
  std::error_code ec;
  for (const auto& p : {job.text, job.wav, job.err}) fs::remove(p, ec);
  check(samples.numel() > 0 && samples.abs().max().item<float>() > 1e-4, "espeak-ng produced silence for \"",
        text.substr(0, 80), "\" (voice '", v.voice, "')");
  return samples;
}

}  // namespace

void validate(const TtsCorpusConfig& c) {
  check(c.train_utterances >= 1, "train_utterances must be >= 1, got ", c.train_utterances);
  check(c.val_utterances >= 0, "val_utterances must be >= 0, got ", c.val_utterances);
  check(c.scene_fraction >= 0 && c.scene_fraction <= 1, "scene_fraction must be in [0, 1], got ", c.scene_fraction);
  check(c.scene_fraction == 1 || !c.text_inputs.empty(), "text_inputs is empty but scene_fraction < 1; list inputs "
        "(e.g. [debian:fortunes]) or set scene_fraction: 1");
  check(c.min_words >= 1 && c.max_words >= c.min_words, "need 1 <= min_words <= max_words, got ", c.min_words, "..",
        c.max_words);
  check(!c.voices.empty(), "voices is empty; list espeak-ng voices such as en, en-us, en+f3");
  for (const auto& v : c.voices)
    check(!v.empty() && v.find_first_of(" \t\n/") == std::string::npos, "voice '", v,
          "' is not a voice name (language[+variant], e.g. en-us+f3)");
  check(c.rate_min >= 80 && c.rate_max >= c.rate_min && c.rate_max <= 450, "need 80 <= rate_min <= rate_max <= 450 "
        "words per minute, got ", c.rate_min, "..", c.rate_max);
  check(c.pitch_min >= 0 && c.pitch_max >= c.pitch_min && c.pitch_max <= 99, "need 0 <= pitch_min <= pitch_max <= 99, got ",
        c.pitch_min, "..", c.pitch_max);
  check(c.sample_rate >= 8000, "sample_rate must be >= 8000 Hz, got ", c.sample_rate);
  check(c.jobs >= 1, "jobs must be >= 1, got ", c.jobs);
}

fs::path find_espeak(const std::string& program) {
  check(!program.empty(), "espeak: empty program name; ", kInstallHint);
  if (program.find('/') != std::string::npos) {
    check(::access(program.c_str(), X_OK) == 0, "espeak-ng not found at '", program, "'; ", kInstallHint);
    return program;
  }
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  fail("'", program, "' is not on PATH: the speech corpus is synthesised with espeak-ng; ", kInstallHint);
}

at::Tensor espeak_synthesize(const std::string& text, const EspeakVoice& voice, const fs::path& espeak,
                             const fs::path& scratch, int64_t sample_rate) {
  fs::create_directories(scratch);
  EspeakJob job = spawn_espeak(text, voice, espeak, scratch, "utt-" + std::to_string(::getpid()));
  return finish_espeak(job, voice, text, sample_rate);
}

EspeakVoice utterance_voice(const TtsCorpusConfig& c, int64_t index) {
  std::mt19937_64 rng = utterance_rng(c.seed, index, 1);
  EspeakVoice v;
  v.voice = c.voices[static_cast<size_t>(uniform(rng, 0, static_cast<int64_t>(c.voices.size()) - 1))];
  v.rate = uniform(rng, c.rate_min, c.rate_max);
  v.pitch = uniform(rng, c.pitch_min, c.pitch_max);
  return v;
}

std::vector<std::string> tts_sentences(const TtsCorpusConfig& c, int64_t count, const std::string& recipe_dir) {
  validate(c);
  const auto n_scene = static_cast<int64_t>(std::llround(c.scene_fraction * static_cast<double>(count)));
  const int64_t n_text = count - n_scene;
  std::set<std::string> seen;
  std::vector<std::string> text_pool;
  if (n_text > 0) {
    CorpusConfig corpus;
    corpus.inputs = c.text_inputs;
    for_each_document(list_corpus_files(corpus, recipe_dir), corpus, [&](Sample&& s) {
      for (auto& sentence : split_sentences(s.segments[0].text))
        if (speakable(sentence, c.min_words, c.max_words) && seen.insert(sentence).second)
          text_pool.push_back(std::move(sentence));
      return true;
    });
    check(static_cast<int64_t>(text_pool.size()) >= n_text, "the text inputs give only ", text_pool.size(),
          " usable sentences of ", c.min_words, "..", c.max_words, " words but ", n_text,
          " are needed; add text_inputs, widen the word range, or raise scene_fraction");
    std::mt19937_64 rng = utterance_rng(c.seed, -1, 2);
    std::shuffle(text_pool.begin(), text_pool.end(), rng);
    text_pool.resize(static_cast<size_t>(n_text));
  }
  image::SceneConfig scenes;
  scenes.seed = c.seed;
  std::mt19937_64 pick = utterance_rng(c.seed, -1, 3);
  std::vector<std::string> out = std::move(text_pool);
  for (int64_t i = 0, made = 0; made < n_scene; ++i) {
    check(i < 100 * n_scene + 1000, "the scene generator gives too few distinct captions for ", n_scene,
          " utterances; lower scene_fraction");
    const image::Scene scene = image::generate_scene(scenes, i);
    std::string caption = scene.captions[static_cast<size_t>(uniform(pick, 0, static_cast<int64_t>(scene.captions.size()) - 1))];
    caption[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(caption[0])));
    caption += ".";
    if (seen.insert(caption).second) {
      out.push_back(std::move(caption));
      ++made;
    }
  }
  std::mt19937_64 rng = utterance_rng(c.seed, -1, 4);
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

nlohmann::json generate_tts_corpus(const TtsCorpusConfig& c, const fs::path& out_dir, const std::string& recipe_dir) {
  validate(c);
  const fs::path espeak = find_espeak(c.espeak);
  const int64_t total = c.train_utterances + c.val_utterances;
  const std::vector<std::string> sentences = tts_sentences(c, total, recipe_dir);
  const fs::path scratch = out_dir / (std::string(".espeak") + io::detail::tmp_suffix());
  fs::create_directories(scratch);
  struct Split {
    std::string name;
    int64_t begin, end;
    std::vector<SpeechTextEntry> entries;
    double seconds = 0;
  };
  std::vector<Split> splits = {{"train", 0, c.train_utterances, {}}, {"val", c.train_utterances, total, {}}};
  std::map<std::string, int64_t> voice_count;
  ProgressBar bar(total, "espeak-ng");
  int64_t done = 0;
  try {
    for (auto& split : splits) {
      for (int64_t start = split.begin; start < split.end; start += c.jobs) {
        const int64_t stop = std::min(split.end, start + c.jobs);
        std::vector<EspeakJob> jobs;
        std::vector<EspeakVoice> voices;
        for (int64_t i = start; i < stop; ++i) {
          voices.push_back(utterance_voice(c, i));
          jobs.push_back(spawn_espeak(sentences[static_cast<size_t>(i)], voices.back(), espeak, scratch,
                                      std::to_string(i)));
        }
        for (int64_t i = start; i < stop; ++i) {
          const size_t j = static_cast<size_t>(i - start);
          const std::string& text = sentences[static_cast<size_t>(i)];
          const at::Tensor samples = finish_espeak(jobs[j], voices[j], text, c.sample_rate);
          char name[32];
          std::snprintf(name, sizeof name, "%05lld.wav", static_cast<long long>(i - split.begin));
          const fs::path wav = out_dir / split.name / name;
          audio::write_wav(wav, samples, c.sample_rate);
          split.entries.push_back({wav, text, ""});
          split.seconds += static_cast<double>(samples.numel()) / static_cast<double>(c.sample_rate);
          ++voice_count[voices[j].voice];
          bar.update(++done, split.name);
        }
      }
    }
  } catch (...) {
    remove_tree(scratch);
    throw;
  }
  bar.finish();
  remove_tree(scratch);
  nlohmann::json summary = {{"sample_rate", c.sample_rate}, {"voices", voice_count}};
  for (const auto& split : splits) {
    if (split.entries.empty()) continue;
    write_speech_manifest(out_dir / (split.name + ".tsv"), split.entries);
    summary[split.name] = {{"utterances", split.entries.size()},
                           {"seconds", split.seconds},
                           {"manifest", split.name + ".tsv"}};
  }
  return summary;
}

}  // namespace tessera::speech
