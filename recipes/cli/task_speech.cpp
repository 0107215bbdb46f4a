#include "recipes/cli/task_speech.h"

#include <ATen/ATen.h>
#include <cxxopts.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

#include "core/config.h"
#include "core/error.h"
#include "core/io/files.h"
#include "core/plot.h"
#include "core/progress.h"
#include "core/train/runtime.h"
#include "modalities/audio/audio_io.h"
#include "modalities/speech_units/speech_corpus.h"
#include "modalities/speech_units/speech_units_adapter.h"
#include "modalities/speech_units/tts_corpus.h"
#include "modalities/speech_units/units.h"
#include "modalities/speech_units/vocoder.h"
#include "recipes/cli/options.h"
#include "recipes/cli/tasks.h"

namespace tessera::cli {
namespace fs = std::filesystem;
using namespace tessera::speech;

namespace {

// ---- configs ---------------------------------------------------------------------------------------

struct SpeechCorpusRecipe {
  std::string task, name = "speech_corpus", run_dir;
  TtsCorpusConfig corpus;
  template <class V>
  void fields(V& v) {
    v.required("task", task, "speech_corpus");
    v.optional("name", name, "run name (run_dir defaults to runs/<name>)");
    v.optional("run_dir", run_dir, "where the corpus is written");
    v.optional("corpus", corpus);
  }
};

struct SpeechDataConfig {
  std::string manifest = "runs/speech_corpus/train.tsv";
  std::string val_manifest = "runs/speech_corpus/val.tsv";
  int64_t max_utterances = 0;
  template <class V>
  void fields(V& v) {
    v.optional("manifest", manifest, "training manifest (TSV path<TAB>transcript or JSONL {audio, text})");
    v.optional("val_manifest", val_manifest, "held-out manifest (\"\": none)");
    v.optional("max_utterances", max_utterances, "use at most this many training utterances (0: all)");
  }
  // Both manifests made absolute (resolve_path below), so the recorded config names the files used.
  void resolve(const fs::path& recipe_dir);
};

struct SpeechUnitsRecipe {
  std::string task, name = "speech_units", run_dir;
  SpeechDataConfig data;
  UnitFeatureConfig features;
  KMeansConfig kmeans;
  template <class V>
  void fields(V& v) {
    v.required("task", task, "speech_units");
    v.optional("name", name, "run name (run_dir defaults to runs/<name>)");
    v.optional("run_dir", run_dir, "where kmeans.safetensors and stats.json go");
    v.optional("data", data);
    v.optional("features", features);
    v.optional("kmeans", kmeans);
  }
};

struct VocoderRecipe {
  std::string task, name = "vocoder", run_dir;
  std::string units = "runs/speech_units";
  std::string device = "auto";
  int64_t seed = 0;
  SpeechDataConfig data;
  int64_t eval_utterances = 30;
  int64_t examples = 2;
  double example_max_seconds = 3.0;
  VocoderModelConfig model;
  VocoderTrainConfig train;
  GriffinLimConfig griffin_lim;
  template <class V>
  void fields(V& v) {
    v.required("task", task, "vocoder");
    v.optional("name", name, "run name (run_dir defaults to runs/<name>)");
    v.optional("run_dir", run_dir, "where vocoder.safetensors, eval.json and examples/ go");
    v.optional("units", units, "the speech_units run directory (or its kmeans.safetensors)");
    v.optional("device", device, "auto, cpu or cuda");
    v.optional("seed", seed, "seed of the initial weights");
    v.optional("data", data);
    v.optional("eval_utterances", eval_utterances, "held-out utterances the MCD is measured on");
    v.optional("examples", examples, "example pairs written to examples/ (original, resynthesised)");
    v.optional("example_max_seconds", example_max_seconds, "examples are held-out utterances at most this long");
    v.optional("model", model);
    v.optional("train", train);
    v.optional("griffin_lim", griffin_lim);
  }
};

// ---- shared plumbing -------------------------------------------------------------------------------

template <class T>
struct Loaded {
  T config;
  fs::path run_dir;
  fs::path recipe_dir;
};

template <class T>
Loaded<T> load_task(const TaskContext& ctx) {
  Loaded<T> out;
  out.config = load_task_config<T>(ctx);
  out.recipe_dir = fs::path(ctx.file).parent_path();
  out.run_dir = out.config.run_dir;
  return out;
}

// A data path as the recipe gives it: from the working directory, else beside the recipe, else in the
// source tree (so recipes run from any directory), made absolute.
fs::path resolve_path(const std::string& p, const fs::path& recipe_dir) {
  const fs::path path(p);
  if (path.is_absolute()) return path;
  std::error_code ec;
  if (fs::exists(path, ec)) return fs::absolute(path).lexically_normal();
  if (!recipe_dir.empty() && fs::exists(recipe_dir / path, ec)) return fs::absolute(recipe_dir / path).lexically_normal();
#ifdef TESSERA_SOURCE_DIR
  if (fs::exists(fs::path(TESSERA_SOURCE_DIR) / path, ec)) return fs::path(TESSERA_SOURCE_DIR) / path;
#endif
  return fs::absolute(path).lexically_normal();
}

void SpeechDataConfig::resolve(const fs::path& recipe_dir) {
  manifest = resolve_path(manifest, recipe_dir).string();
  if (!val_manifest.empty()) val_manifest = resolve_path(val_manifest, recipe_dir).string();
}

void write_json(const fs::path& path, const nlohmann::json& j) { write_text_atomic(path, j.dump(2) + "\n"); }

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  try {
    return nlohmann::json::parse(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  } catch (const std::exception& e) {
    fail("'", path.string(), "' is not valid JSON (", e.what(), "); delete it or run with --force");
  }
}

// True when `marker` (the output written last) exists with the same config: the task is done. Outputs
// of another config are an error unless --force.
bool already_done(const fs::path& marker, const nlohmann::json& config, bool force, const char* task) {
  std::error_code ec;
  if (force || !fs::exists(marker, ec)) return false;
  const nlohmann::json done = read_json(marker);
  check(done.contains("config") && done.at("config") == config, task, ": '", marker.parent_path().string(),
        "' holds outputs of another configuration; rerun with --force to replace them, or choose another --run-dir");
  std::printf("%s: up to date in %s (use --force to redo)\n", task, marker.parent_path().string().c_str());
  return true;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::vector<SpeechTextEntry> read_manifest_limited(const std::string& manifest, const fs::path& recipe_dir,
                                                   int64_t limit) {
  std::vector<SpeechTextEntry> entries = read_speech_manifest(resolve_path(manifest, recipe_dir));
  if (limit > 0 && static_cast<int64_t>(entries.size()) > limit) entries.resize(static_cast<size_t>(limit));
  return entries;
}

struct UtteranceFeatures {
  std::vector<at::Tensor> per_utterance;  // unnormalised [F_i, D]
  at::Tensor all;                         // cat of them
};

UtteranceFeatures extract(const std::vector<SpeechTextEntry>& entries, const UnitFeatureConfig& config,
                          const char* label) {
  UtteranceFeatures out;
  ProgressBar bar(static_cast<int64_t>(entries.size()), label);
  for (size_t i = 0; i < entries.size(); ++i) {
    const at::Tensor wave = load_speech_audio(entries[i], config.stft.sample_rate).samples;
    try {
      out.per_utterance.push_back(unit_features(wave, config));
    } catch (const Error& e) {
      fail(entries[i].where, ": ", e.what());
    }
    bar.update(static_cast<int64_t>(i) + 1, "");
  }
  bar.finish();
  out.all = at::cat(out.per_utterance, 0);
  return out;
}

// Frames per deduplicated unit, over utterances.
double mean_run_length(const SpeechUnitModel& model, const std::vector<at::Tensor>& per_utterance) {
  int64_t frames = 0, runs = 0;
  for (const auto& f : per_utterance) {
    const at::Tensor u = model.kmeans().assign(model.normalize(f)).contiguous();
    const std::vector<int64_t> ids(u.data_ptr<int64_t>(), u.data_ptr<int64_t>() + u.numel());
    frames += static_cast<int64_t>(ids.size());
    runs += static_cast<int64_t>(deduplicate(ids).units.size());
  }
  return runs > 0 ? static_cast<double>(frames) / static_cast<double>(runs) : 0.0;
}

}  // namespace

// ---- speech_corpus -------------------------------------------------------------------------------------

int speech_corpus_task(const TaskContext& ctx) {
  const auto start = std::chrono::steady_clock::now();
  Loaded<SpeechCorpusRecipe> t = load_task<SpeechCorpusRecipe>(ctx);
  validate(t.config.corpus);
  const nlohmann::json config = config::to_json(t.config.corpus);
  const fs::path marker = t.run_dir / "corpus.json";
  if (already_done(marker, config, ctx.force, "speech_corpus")) return 0;
  for (const char* old : {"corpus.json", "train.tsv", "val.tsv", "train", "val"}) remove_tree(t.run_dir / old);
  fs::create_directories(t.run_dir);
  write_task_config(t.run_dir, config::to_yaml(t.config));
  std::printf("speech_corpus: synthesising %lld + %lld utterances with espeak-ng into %s\n",
              static_cast<long long>(t.config.corpus.train_utterances),
              static_cast<long long>(t.config.corpus.val_utterances), t.run_dir.string().c_str());
  nlohmann::json summary = generate_tts_corpus(t.config.corpus, t.run_dir, t.recipe_dir.string());
  summary["config"] = config;
  summary["seconds_taken"] = seconds_since(start);
  write_json(marker, summary);
  std::printf("speech_corpus: %lld train utterances (%.1f min of audio), %s; %.1f s\n",
              static_cast<long long>(summary["train"]["utterances"].get<int64_t>()),
              summary["train"]["seconds"].get<double>() / 60.0,
              summary.contains("val") ? (std::to_string(summary["val"]["utterances"].get<int64_t>()) + " val").c_str()
                                      : "no val",
              seconds_since(start));
  return 0;
}

// ---- speech_units --------------------------------------------------------------------------------------

int speech_units_task(const TaskContext& ctx) {
  const auto start = std::chrono::steady_clock::now();
  Loaded<SpeechUnitsRecipe> t = load_task<SpeechUnitsRecipe>(ctx);
  SpeechUnitsRecipe& c = t.config;
  validate(c.features);
  validate(c.kmeans);
  c.data.resolve(t.recipe_dir);
  const nlohmann::json config = config::to_json(c);
  const fs::path marker = t.run_dir / "stats.json";
  if (already_done(marker, config, ctx.force, "speech_units")) return 0;
  fs::create_directories(t.run_dir);
  write_task_config(t.run_dir, config::to_yaml(c));

  const auto train_entries = read_manifest_limited(c.data.manifest, t.recipe_dir, c.data.max_utterances);
  std::vector<SpeechTextEntry> val_entries;
  if (!c.data.val_manifest.empty()) val_entries = read_speech_manifest(c.data.val_manifest);
  std::printf("speech_units: %s features of %zu training utterances\n", c.features.kind.c_str(), train_entries.size());
  const UtteranceFeatures train = extract(train_entries, c.features, "features");
  at::Tensor mean, std;
  if (c.features.normalize) std::tie(mean, std) = feature_statistics(train.all);
  const at::Tensor points = c.features.normalize ? (train.all - mean) / std : train.all;
  std::printf("speech_units: k-means with K = %lld on %lld frames of dimension %lld\n",
              static_cast<long long>(c.kmeans.k), static_cast<long long>(points.size(0)),
              static_cast<long long>(points.size(1)));
  const KMeansResult fit = fit_kmeans(points, c.kmeans);
  const SpeechUnitModel model(c.features, fit.model, mean, std);
  model.save(t.run_dir / SpeechUnitsAdapter::kKmeansFile);

  const at::Tensor usage = fit.model.usage(points).to(at::kDouble);
  const at::Tensor share = usage / usage.sum();
  const at::Tensor used = share.masked_select(share > 0);
  const double entropy = -(used * used.log()).sum().item<double>();
  nlohmann::json stats = {
      {"k", c.kmeans.k},
      {"feature_dim", points.size(1)},
      {"train", {{"utterances", train_entries.size()},
                 {"frames", points.size(0)},
                 {"distortion", fit.model.inertia(points)},
                 {"mean_run_length", mean_run_length(model, train.per_utterance)}}},
      {"usage", {{"codes_used", used.numel()},
                 {"entropy_nats", entropy},
                 {"perplexity", std::exp(entropy)},
                 {"min_share", share.min().item<double>()},
                 {"max_share", share.max().item<double>()}}},
      {"distortion_curve", {{"step", fit.inertia_steps}, {"distortion", fit.inertia_history}}},
      {"note", "distortion: mean squared distance of a frame to its centroid in the (normalised) feature space; "
               "mean_run_length: frames per deduplicated unit (50 frames/s)"},
  };
  if (!val_entries.empty()) {
    const UtteranceFeatures val = extract(val_entries, c.features, "val features");
    stats["val"] = {{"utterances", val_entries.size()},
                    {"frames", val.all.size(0)},
                    {"distortion", fit.model.inertia(model.normalize(val.all))},
                    {"mean_run_length", mean_run_length(model, val.per_utterance)}};
  }
  PlotSpec plot;
  plot.title = "k-means distortion (K = " + std::to_string(c.kmeans.k) + ")";
  plot.x_label = "mini-batch step";
  plot.y_label = "within-cluster distortion";
  plot.series.push_back({"eval sample", std::vector<double>(fit.inertia_steps.begin(), fit.inertia_steps.end()),
                         fit.inertia_history, "line+points"});
  write_plot_png(t.run_dir / "distortion.png", plot);
  stats["config"] = config;
  stats["seconds_taken"] = seconds_since(start);
  write_json(marker, stats);
  std::printf("speech_units: %lld/%lld codes used (perplexity %.1f, shares %.4f..%.4f), distortion train %.3f%s, "
              "mean run length %.2f frames; %.1f s -> %s\n",
              static_cast<long long>(used.numel()), static_cast<long long>(c.kmeans.k), std::exp(entropy),
              share.min().item<double>(), share.max().item<double>(), stats["train"]["distortion"].get<double>(),
              stats.contains("val") ? (" / val " + std::to_string(stats["val"]["distortion"].get<double>())).c_str() : "",
              stats["train"]["mean_run_length"].get<double>(), seconds_since(start), t.run_dir.string().c_str());
  return 0;
}

// ---- vocoder -------------------------------------------------------------------------------------------

int vocoder_task(const TaskContext& ctx) {
  const auto start = std::chrono::steady_clock::now();
  Loaded<VocoderRecipe> t = load_task<VocoderRecipe>(ctx);
  VocoderRecipe& c = t.config;
  validate(c.model);
  validate(c.train);
  check(c.eval_utterances >= 1, "eval_utterances must be >= 1");
  check(c.examples >= 0, "examples must be >= 0");
  c.units = resolve_path(c.units, t.recipe_dir).string();
  check(!c.data.val_manifest.empty(), "vocoder: data.val_manifest is needed (the MCD is measured on held-out audio)");
  c.data.resolve(t.recipe_dir);
  // The units run is part of the config: another k-means must not pass for this vocoder.
  const SpeechUnitsAdapter units_adapter(c.units);
  const SpeechUnitModel& units = units_adapter.unit_model();
  nlohmann::json config = config::to_json(c);
  config["kmeans_crc32"] = units_adapter.kmeans_crc32();
  const fs::path marker = t.run_dir / "eval.json";
  if (already_done(marker, config, ctx.force, "vocoder")) return 0;
  fs::create_directories(t.run_dir);
  write_task_config(t.run_dir, config::to_yaml(c));
  const c10::Device device = select_device(c.device);
  seed_everything(static_cast<uint64_t>(c.seed));
  const FeatureConfig& fc = units.config().stft;

  // Units and log-mels of the training audio (frames aligned: same STFT).
  const auto train_entries = read_manifest_limited(c.data.manifest, t.recipe_dir, c.data.max_utterances);
  std::vector<UnitMelPair> data;
  at::Tensor mel_sum = at::zeros({fc.n_mels}, at::kDouble);
  int64_t mel_frames = 0;
  {
    ProgressBar bar(static_cast<int64_t>(train_entries.size()), "units+mel");
    for (size_t i = 0; i < train_entries.size(); ++i) {
      const at::Tensor wave = load_speech_audio(train_entries[i], fc.sample_rate).samples;
      UnitMelPair p{units.units(wave), log_mel(wave, fc)};
      mel_sum += p.log_mel.to(at::kDouble).sum(0);
      mel_frames += p.log_mel.size(0);
      data.push_back(std::move(p));
      bar.update(static_cast<int64_t>(i) + 1, "");
    }
    bar.finish();
  }
  Vocoder vocoder(c.model, fc, c.griffin_lim, units.k(), units_adapter.kmeans_crc32());
  vocoder.net()->set_output_bias(mel_sum / static_cast<double>(mel_frames));
  VocoderTrainConfig train = c.train;
  std::printf("vocoder: training on %zu utterances (%lld frames), %lld steps on %s\n", data.size(),
              static_cast<long long>(mel_frames), static_cast<long long>(train.steps),
              device_description(device).c_str());
  ProgressBar bar(train.steps, "vocoder");
  std::string log_text;
  const auto records = train_vocoder(vocoder.net(), data, train, device, [&](const VocoderTrainRecord& r) {
    char line[160];
    std::snprintf(line, sizeof line, "loss %.4f", r.loss);
    bar.update(r.step, line);
    log_text += nlohmann::json{{"step", r.step}, {"loss_l1", r.loss}, {"lr", r.lr}}.dump() + "\n";
  });
  bar.finish();
  const double train_seconds = seconds_since(start);
  vocoder.net()->to(at::kCPU);
  vocoder.save(t.run_dir / SpeechUnitsAdapter::kVocoderFile);
  write_bytes_atomic(t.run_dir / "metrics.jsonl", log_text.data(), log_text.size());
  PlotSpec plot;
  plot.title = "vocoder training loss (units -> log-mel)";
  plot.x_label = "step";
  plot.y_label = "L1 (log-mel)";
  PlotSeries series{"train", {}, {}, "line"};
  for (const auto& r : records) series.x.push_back(static_cast<double>(r.step)), series.y.push_back(r.loss);
  plot.series.push_back(series);
  write_plot_png(t.run_dir / "loss.png", plot);

  // Held-out evaluation: MCD of the network's mel, of its Griffin-Lim resynthesis, and of Griffin-Lim on
  // the true mel (the ceiling of this path).
  auto val_entries = read_speech_manifest(c.data.val_manifest);
  if (static_cast<int64_t>(val_entries.size()) > c.eval_utterances) val_entries.resize(static_cast<size_t>(c.eval_utterances));
  double mcd_mel = 0, mcd_resynth = 0, mcd_ceiling = 0, l1 = 0;
  int64_t frames = 0, examples = 0;
  nlohmann::json per_utt = nlohmann::json::array();
  ProgressBar eval_bar(static_cast<int64_t>(val_entries.size()), "eval");
  for (size_t i = 0; i < val_entries.size(); ++i) {
    const at::Tensor wave = load_speech_audio(val_entries[i], fc.sample_rate).samples;
    const at::Tensor truth = log_mel(wave, fc);
    const at::Tensor u = units.units(wave).contiguous();
    const std::vector<int64_t> ids(u.data_ptr<int64_t>(), u.data_ptr<int64_t>() + u.numel());
    const at::Tensor pred = vocoder.predict_mel(ids);
    const at::Tensor resynth = mel_to_waveform(pred, fc, c.griffin_lim);
    const at::Tensor ceiling = mel_to_waveform(truth, fc, c.griffin_lim);
    const double a = mel_cepstral_distortion(truth, pred);
    const double b = mel_cepstral_distortion(truth, log_mel(resynth, fc));
    const double g = mel_cepstral_distortion(truth, log_mel(ceiling, fc));
    const auto f = truth.size(0);
    mcd_mel += a * f, mcd_resynth += b * f, mcd_ceiling += g * f;
    l1 += (pred - truth).abs().mean().item<double>() * f;
    frames += f;
    per_utt.push_back({{"audio", val_entries[i].audio.string()}, {"frames", f}, {"mcd_model_mel_db", a},
                       {"mcd_resynth_db", b}, {"mcd_griffin_lim_true_mel_db", g}});
    const double seconds = static_cast<double>(wave.numel()) / static_cast<double>(fc.sample_rate);
    if (examples < c.examples && seconds <= c.example_max_seconds) {
      char name[32];
      std::snprintf(name, sizeof name, "%02lld", static_cast<long long>(examples));
      audio::write_wav(t.run_dir / "examples" / (std::string(name) + "_original.wav"), wave, fc.sample_rate);
      audio::write_wav(t.run_dir / "examples" / (std::string(name) + "_resynth.wav"), resynth, fc.sample_rate);
      per_utt.back()["example"] = name;
      ++examples;
    }
    eval_bar.update(static_cast<int64_t>(i) + 1, "");
  }
  eval_bar.finish();
  const double n = static_cast<double>(frames);
  nlohmann::json eval = {
      {"utterances", val_entries.size()},
      {"frames", frames},
      {"mcd_model_mel_db", mcd_mel / n},
      {"mcd_resynth_db", mcd_resynth / n},
      {"mcd_griffin_lim_true_mel_db", mcd_ceiling / n},
      {"mel_l1", l1 / n},
      {"final_train_l1", records.empty() ? 0.0 : records.back().loss},
      {"train_seconds", train_seconds},
      {"examples", examples},
      {"per_utterance", per_utt},
      {"note", "MCD (dB, frame-weighted mean over held-out utterances): c1..c12 of the orthonormal DCT of the "
               "natural-log mel amplitude, 10*sqrt(2)/ln10*||dc||; frames aligned (durations kept). model_mel: "
               "the network's log-mel; resynth: log-mel of its Griffin-Lim waveform; griffin_lim_true_mel: "
               "Griffin-Lim on the true log-mel (the ceiling of this path)."},
  };
  eval["config"] = config;
  eval["seconds_taken"] = seconds_since(start);
  write_json(marker, eval);
  std::printf("vocoder: held-out MCD %.2f dB (network mel), %.2f dB (resynthesised), %.2f dB (Griffin-Lim on the "
              "true mel); %lld examples; %.1f s -> %s\n",
              mcd_mel / n, mcd_resynth / n, mcd_ceiling / n, static_cast<long long>(examples), seconds_since(start),
              t.run_dir.string().c_str());
  return 0;
}

// ---- generate decode-units -----------------------------------------------------------------------------

int decode_units_command(const std::vector<std::string>& args) {
  cxxopts::Options o("tessera generate decode-units",
                     "Unit ids (whitespace-separated text, one per 20 ms frame) -> WAV through a trained vocoder.\n");
  o.add_options()("vocoder", "vocoder run directory or vocoder.safetensors", cxxopts::value<std::string>())(
      "units", "text file of unit ids", cxxopts::value<std::string>())(
      "out", "WAV file to write", cxxopts::value<std::string>())("h,help", "show this help");
  cxxopts::ParseResult r;
  if (!parse_options(o, args, r)) return 0;
  for (const char* key : {"vocoder", "units", "out"}) required_option(r, key, o);
  const Vocoder vocoder =
      Vocoder::load(resolve_artifact(r["vocoder"].as<std::string>(), {}, SpeechUnitsAdapter::kVocoderFile));
  std::ifstream in(r["units"].as<std::string>());
  check(static_cast<bool>(in), "cannot open units file '", r["units"].as<std::string>(), "'");
  std::vector<int64_t> ids;
  std::string token;
  while (in >> token) {
    try {
      size_t used = 0;
      ids.push_back(std::stoll(token, &used));
      check(used == token.size(), "");
    } catch (const std::exception&) {
      fail("units file '", r["units"].as<std::string>(), "': '", token, "' is not an integer unit id");
    }
  }
  const at::Tensor wave = vocoder.synthesize(ids);
  audio::write_wav(r["out"].as<std::string>(), wave, vocoder.features().sample_rate);
  std::printf("wrote %s (%.2f s from %zu units)\n", r["out"].as<std::string>().c_str(),
              static_cast<double>(wave.numel()) / static_cast<double>(vocoder.features().sample_rate), ids.size());
  return 0;
}

}  // namespace tessera::cli
