// The speech recipes end to end through the CLI with tiny settings: speech_corpus (espeak-ng) ->
// speech_units -> vocoder -> generate decode-units; re-runs skip, changed configs are refused, --force redoes.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "core/io/files.h"
#include "modalities/audio/audio_io.h"
#include "modalities/speech_units/speech_corpus.h"
#include "modalities/speech_units/tts_corpus.h"
#include "modalities/speech_units/units.h"
#include "recipes/cli/commands.h"
#include "temp_dir.h"
#include "cli_test_util.h"

namespace tessera {
namespace {
namespace fs = std::filesystem;


fs::path write(const fs::path& p, const std::string& text) {
  std::ofstream(p) << text;
  return p;
}

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(std::ifstream(p)); }

TEST(SpeechTasks, CorpusUnitsVocoderThroughTheCliThenSkipAndRefuse) {
  try {
    speech::find_espeak();
  } catch (const Error&) {
    GTEST_SKIP() << "espeak-ng is not installed (Debian package espeak-ng)";
  }
  if (!audio::has_ffmpeg()) GTEST_SKIP() << "no FFmpeg (libswresample) in this build: espeak-ng's 22050 Hz needs it";
  test::ScratchDir dir("speech_cli");
  const fs::path corpus_run = dir.path / "corpus", units_run = dir.path / "units", voc_run = dir.path / "voc";
  const fs::path corpus = write(dir.path / "corpus.yaml",
                                "task: speech_corpus\nrun_dir: " + corpus_run.string() +
                                    "\ncorpus: {train_utterances: 6, val_utterances: 3, seed: 2}\n");
  // Relative manifests resolve beside the recipe (the test's working directory is elsewhere).
  const fs::path units = write(dir.path / "units.yaml",
                               "task: speech_units\nrun_dir: " + units_run.string() +
                                   "\ndata: {manifest: corpus/train.tsv, val_manifest: corpus/val.tsv}\n"
                                   "features: {kind: mfcc, normalize: true}\n"
                                   "kmeans: {k: 8, steps: 20, batch_size: 256, eval_every: 5}\n");
  const fs::path vocoder = write(dir.path / "vocoder.yaml",
                                 "task: vocoder\nrun_dir: " + voc_run.string() + "\nunits: units\ndevice: cpu\n"
                                 "data: {manifest: corpus/train.tsv, val_manifest: corpus/val.tsv}\n"
                                 "eval_utterances: 2\nexamples: 1\nexample_max_seconds: 30\n"
                                 "model: {channels: 32, blocks: 2, kernel_size: 3}\n"
                                 "train: {steps: 20, batch_size: 4, crop_frames: 32, log_every: 5}\n"
                                 "griffin_lim: {iterations: 4}\n");
  std::string out, err;
  ASSERT_EQ(cli({"run", corpus.string()}, &out, &err), 0) << err;
  EXPECT_EQ(speech::read_speech_manifest(corpus_run / "train.tsv").size(), 6u);
  EXPECT_EQ(speech::read_speech_manifest(corpus_run / "val.tsv").size(), 3u);
  EXPECT_TRUE(fs::exists(corpus_run / "corpus.json") && fs::exists(corpus_run / "config.yaml"));
  EXPECT_EQ(audio::read_audio(corpus_run / "train/00005.wav", 0).original_sample_rate, 16000);

  ASSERT_EQ(cli({"run", units.string()}, &out, &err), 0) << err;
  for (const char* f : {"kmeans.safetensors", "stats.json", "distortion.png", "config.yaml"})
    EXPECT_TRUE(fs::exists(units_run / f)) << f;
  const nlohmann::json stats = read_json(units_run / "stats.json");
  EXPECT_EQ(stats["k"], 8);
  EXPECT_EQ(stats["feature_dim"], 39);
  const int64_t used = stats["usage"]["codes_used"].get<int64_t>();
  EXPECT_TRUE(used >= 1 && used <= 8);
  EXPECT_NEAR(stats["usage"]["perplexity"].get<double>(), std::exp(stats["usage"]["entropy_nats"].get<double>()), 1e-9);
  EXPECT_GE(stats["train"]["mean_run_length"].get<double>(), 1.0);
  EXPECT_GT(stats["val"]["distortion"].get<double>(), 0.0);
  const auto& curve = stats["distortion_curve"]["distortion"];
  EXPECT_LT(curve.back().get<double>(), curve.front().get<double>());
  EXPECT_EQ(speech::SpeechUnitModel::load(units_run / "kmeans.safetensors").k(), 8);

  ASSERT_EQ(cli({"train", vocoder.string()}, &out, &err), 0) << err;
  for (const char* f : {"vocoder.safetensors", "eval.json", "loss.png", "metrics.jsonl", "examples/00_original.wav",
                        "examples/00_resynth.wav"})
    EXPECT_TRUE(fs::exists(voc_run / f)) << f;
  const nlohmann::json ev = read_json(voc_run / "eval.json");
  EXPECT_EQ(ev["utterances"], 2);
  for (const char* k : {"mcd_model_mel_db", "mcd_resynth_db", "mcd_griffin_lim_true_mel_db"})
    EXPECT_GT(ev[k].get<double>(), 0.0) << k;
  // The resynthesis has the original's length to within half a frame.
  const int64_t original = audio::read_audio(voc_run / "examples/00_original.wav", 0).samples.numel();
  const int64_t resynth = audio::read_audio(voc_run / "examples/00_resynth.wav", 0).samples.numel();
  EXPECT_LE(std::abs(original - resynth), 320);

  // Finished tasks skip; a changed config is refused; --force redoes.
  for (const auto& recipe : {corpus, units, vocoder}) {
    ASSERT_EQ(cli({"run", recipe.string()}, &out, &err), 0) << err;
    EXPECT_NE(out.find("up to date"), std::string::npos) << recipe << ": " << out;
  }
  EXPECT_NE(cli({"run", units.string(), "kmeans.k=9"}, &out, &err), 0);
  EXPECT_NE(err.find("another configuration"), std::string::npos) << err;
  EXPECT_NE(cli({"run", units.string(), "kmeans.kk=9"}, &out, &err), 0);
  EXPECT_NE(err.find("kmeans.kk"), std::string::npos) << err;
  ASSERT_EQ(cli({"run", vocoder.string(), "--force"}, &out, &err), 0) << err;
  EXPECT_EQ(out.find("up to date"), std::string::npos);

  // Units -> WAV from the command line.
  const fs::path ids = write(dir.path / "ids.txt", "0 1 1 2 7 7 7 3\n4 5");
  ASSERT_EQ(cli({"generate", "decode-units", "--vocoder", voc_run.string(), "--units", ids.string(), "--out",
                 (dir.path / "x.wav").string()},
                &out, &err),
            0)
      << err;
  EXPECT_EQ(audio::read_audio(dir.path / "x.wav", 0).samples.numel(), 10 * 320 - 160);
  write(dir.path / "bad.txt", "0 1 99\n");
  EXPECT_NE(cli({"generate", "decode-units", "--vocoder", voc_run.string(), "--units", (dir.path / "bad.txt").string(),
                 "--out", (dir.path / "y.wav").string()},
                &out, &err),
            0);
  EXPECT_NE(err.find("outside the codebook"), std::string::npos) << err;
}

}  // namespace
}  // namespace tessera
