// Speech-text manifests (TSV and JSONL, good and malformed) and the espeak-ng corpus generator
// (skipped only where espeak-ng is not installed).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>

#include "modalities/audio/audio_io.h"
#include "modalities/speech_units/speech_corpus.h"
#include "modalities/speech_units/tts_corpus.h"
#include "modalities_test_util.h"

namespace tessera::speech {
namespace {
namespace fs = std::filesystem;
using tessera::testing::contains;
using tessera::testing::read_bytes;
using tessera::testing::TempDir;
using tessera::testing::what_of;
using tessera::testing::write_bytes;

// A short 16 kHz tone, written as WAV.
void write_tone(const fs::path& p, double seconds = 0.2) {
  const auto n = static_cast<int64_t>(16000 * seconds);
  audio::write_wav(p, 0.3 * at::sin(at::arange(n, at::kFloat) * (2 * M_PI * 440 / 16000)), 16000);
}

bool has_espeak() {
  try {
    find_espeak();
    return true;
  } catch (const Error&) {
    return false;
  }
}

TEST(SpeechManifest, ReadsTsvWithHeaderAndJsonlRelativeToTheManifest) {
  if (!audio::has_sndfile() && !audio::has_ffmpeg()) GTEST_SKIP() << "no audio decoder in this build";
  TempDir dir;
  write_tone(dir / "a.wav");
  fs::create_directories(dir / "sub");
  write_tone(dir / "sub/b.wav");
  write_bytes(dir / "m.tsv", "path\ttranscript\na.wav\tHello there.\n\n# a comment\nsub/b.wav\t  Second one  \r\n");
  const auto tsv = read_speech_manifest(dir / "m.tsv");
  ASSERT_EQ(tsv.size(), 2u);
  EXPECT_EQ(tsv[0].audio, dir / "a.wav");
  EXPECT_EQ(tsv[0].text, "Hello there.");
  EXPECT_EQ(tsv[1].audio, dir / "sub/b.wav");
  EXPECT_EQ(tsv[1].text, "Second one");
  EXPECT_TRUE(contains(tsv[1].where, "m.tsv:5"));

  write_bytes(dir / "sub/m.jsonl", "{\"audio\": \"b.wav\", \"text\": \"Tab\\tinside is fine here\"}\n"
                                   "{\"audio\": \"../a.wav\", \"text\": \"Up one\"}\n");
  const auto jsonl = read_speech_manifest(dir / "sub/m.jsonl");
  ASSERT_EQ(jsonl.size(), 2u);
  EXPECT_EQ(jsonl[0].audio, dir / "sub/b.wav");
  EXPECT_EQ(jsonl[0].text, "Tab\tinside is fine here");
  EXPECT_EQ(jsonl[1].audio, dir / "sub/../a.wav");

  // The loaded audio is 16 kHz mono whatever the file's rate.
  audio::write_wav(dir / "c.wav", at::zeros({22050}).uniform_(-0.5, 0.5), 22050);
  write_bytes(dir / "c.tsv", "c.wav\tResampled.\n");
  const audio::Audio a = load_speech_audio(read_speech_manifest(dir / "c.tsv")[0]);
  EXPECT_EQ(a.sample_rate, 16000);
  EXPECT_NEAR(static_cast<double>(a.samples.numel()), 16000.0, 2.0);

  // write_speech_manifest writes paths relative to the manifest and reads back the same entries.
  write_speech_manifest(dir / "out.tsv", tsv);
  EXPECT_EQ(read_bytes(dir / "out.tsv"), "path\ttranscript\na.wav\tHello there.\nsub/b.wav\tSecond one\n");
  const auto again = read_speech_manifest(dir / "out.tsv");
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[1].text, "Second one");
}

TEST(SpeechManifest, MalformedLinesNameFileAndLine) {
  TempDir dir;
  write_tone(dir / "a.wav");
  const auto error_of = [&](const std::string& name, const std::string& body) {
    write_bytes(dir / name, body);
    return what_of([&] { read_speech_manifest(dir / name); });
  };
  std::string e = error_of("notab.tsv", "a.wav\tok\na.wav no tab here\n");
  EXPECT_TRUE(contains(e, "notab.tsv:2") && contains(e, "no tab")) << e;
  e = error_of("missing.tsv", "a.wav\tok\n\nnope.wav\tgone\n");
  EXPECT_TRUE(contains(e, "missing.tsv:3") && contains(e, "nope.wav") && contains(e, "does not exist")) << e;
  e = error_of("empty_text.tsv", "a.wav\t   \n");
  EXPECT_TRUE(contains(e, "empty_text.tsv:1") && contains(e, "empty transcript")) << e;
  e = error_of("two_tabs.tsv", "a.wav\tx\ty\n");
  EXPECT_TRUE(contains(e, "two_tabs.tsv:1") && contains(e, "more than one tab")) << e;
  e = error_of("bad.jsonl", "{\"audio\": \"a.wav\", \"text\": \"fine\"}\n{\"audio\": \"a.wav\"\n");
  EXPECT_TRUE(contains(e, "bad.jsonl:2") && contains(e, "not a JSON object")) << e;
  e = error_of("field.jsonl", "{\"path\": \"a.wav\", \"text\": \"x\"}\n");
  EXPECT_TRUE(contains(e, "field.jsonl:1") && contains(e, "\"audio\"")) << e;
  e = error_of("notext.jsonl", "{\"audio\": \"a.wav\", \"text\": \"\"}\n");
  EXPECT_TRUE(contains(e, "notext.jsonl:1") && contains(e, "empty transcript")) << e;
  e = error_of("nothing.tsv", "path\ttranscript\n\n");
  EXPECT_TRUE(contains(e, "lists no utterances")) << e;
  e = what_of([&] { read_speech_manifest(dir / "absent.tsv"); });
  EXPECT_TRUE(contains(e, "absent.tsv") && contains(e, "does not exist")) << e;
  e = what_of([&] { write_speech_manifest(dir / "w.tsv", {{dir / "a.wav", "line\nbreak", ""}}); });
  EXPECT_TRUE(contains(e, "tab or line break")) << e;
}

TEST(TtsCorpus, SentencesAndVoicesAreDeterministicAndWithinLimits) {
  TtsCorpusConfig c;
  c.scene_fraction = 0.5;
  c.min_words = 4;
  c.max_words = 12;
  const auto a = tts_sentences(c, 40);
  ASSERT_EQ(a.size(), 40u);
  EXPECT_EQ(a, tts_sentences(c, 40));
  const auto has_shape = [](const std::string& s) {
    for (const char* shape : {"circle", "square", "triangle", "diamond"})
      if (contains(s, shape)) return true;
    return false;
  };
  for (const auto& s : a) {
    const auto words = std::count(s.begin(), s.end(), ' ') + 1;
    EXPECT_TRUE(s.find_first_of("\t\n") == std::string::npos) << s;
    EXPECT_TRUE(s.back() == '.' || s.back() == '!' || s.back() == '?') << s;
    if (!has_shape(s)) {
      EXPECT_TRUE(words >= 4 && words <= 12) << s;
    }
  }
  EXPECT_GE(std::count_if(a.begin(), a.end(), has_shape), 20);  // half are scene captions
  TtsCorpusConfig only_scenes = c;
  only_scenes.scene_fraction = 1.0;
  const auto captions = tts_sentences(only_scenes, 30);
  EXPECT_EQ(std::count_if(captions.begin(), captions.end(), has_shape), 30);
  EXPECT_EQ(std::set<std::string>(captions.begin(), captions.end()).size(), 30u);  // distinct
  c.seed = 1;
  EXPECT_NE(a, tts_sentences(c, 40));
  // Voices vary per utterance and stay within the configured ranges.
  std::set<std::string> voices;
  for (int64_t i = 0; i < 50; ++i) {
    const EspeakVoice v = utterance_voice(c, i);
    voices.insert(v.voice);
    EXPECT_TRUE(v.rate >= c.rate_min && v.rate <= c.rate_max && v.pitch >= c.pitch_min && v.pitch <= c.pitch_max);
    EXPECT_EQ(v.voice, utterance_voice(c, i).voice);
  }
  EXPECT_GE(voices.size(), 4u);
  c.voices = {"en us"};
  EXPECT_TRUE(contains(what_of([&] { validate(c); }), "not a voice name"));
  EXPECT_TRUE(contains(what_of([&] { find_espeak("definitely-not-espeak-ng"); }), "apt-get install espeak-ng"));
}

TEST(TtsCorpus, GeneratesDeterministic16kHzSpeechWithManifests) {
  if (!has_espeak()) GTEST_SKIP() << "espeak-ng is not installed (Debian package espeak-ng)";
  // espeak-ng writes 22050 Hz: reading and resampling its output needs FFmpeg's libraries.
  if (!audio::has_ffmpeg()) GTEST_SKIP() << "no FFmpeg (libswresample) in this build";
  TempDir dir;
  TtsCorpusConfig c;
  c.train_utterances = 4;
  c.val_utterances = 2;
  c.seed = 3;
  const nlohmann::json summary = generate_tts_corpus(c, dir / "a");
  EXPECT_EQ(summary["train"]["utterances"], 4);
  EXPECT_EQ(summary["val"]["utterances"], 2);
  const auto train = read_speech_manifest(dir / "a/train.tsv");
  const auto val = read_speech_manifest(dir / "a/val.tsv");
  ASSERT_EQ(train.size(), 4u);
  ASSERT_EQ(val.size(), 2u);
  EXPECT_EQ(train[0].audio, dir / "a/train/00000.wav");
  EXPECT_EQ(val[1].audio, dir / "a/val/00001.wav");
  for (const auto& e : train) {
    const audio::Audio a = audio::read_audio(e.audio, /*sample_rate=*/0);  // the file's own rate
    EXPECT_EQ(a.original_sample_rate, 16000);
    EXPECT_EQ(a.original_channels, 1);
    const double seconds = static_cast<double>(a.samples.numel()) / 16000.0;
    EXPECT_GT(seconds, 0.4) << e.text;
    EXPECT_LT(seconds, 15.0) << e.text;
    const double rms = a.samples.pow(2).mean().sqrt().item<double>();
    EXPECT_GT(rms, 0.01) << e.text;  // speech, not silence
  }
  // Same config -> byte-identical files.
  generate_tts_corpus(c, dir / "b");
  EXPECT_EQ(read_bytes(dir / "a/train.tsv"), read_bytes(dir / "b/train.tsv"));
  EXPECT_EQ(read_bytes(dir / "a/train/00002.wav"), read_bytes(dir / "b/train/00002.wav"));
  EXPECT_EQ(read_bytes(dir / "a/val/00000.wav"), read_bytes(dir / "b/val/00000.wav"));
  // No scratch files left behind.
  for (const auto& entry : fs::directory_iterator(dir / "a"))
    EXPECT_FALSE(contains(entry.path().filename().string(), ".espeak")) << entry.path();
  // Shell metacharacters in the text are spoken, never executed; an unknown voice is a clear error.
  const at::Tensor w = espeak_synthesize("Say $(touch injected) and `id`; done.", {}, find_espeak(), dir / "s");
  EXPECT_GT(w.numel(), 8000);
  EXPECT_FALSE(fs::exists("injected"));
  const std::string e = what_of([&] { espeak_synthesize("Hello.", {"xx-nonexistent", 175, 50}, find_espeak(), dir / "s"); });
  EXPECT_TRUE(contains(e, "espeak-ng failed") && contains(e, "xx-nonexistent")) << e;
}

}  // namespace
}  // namespace tessera::speech
