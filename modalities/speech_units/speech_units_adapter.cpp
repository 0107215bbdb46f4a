#include "modalities/speech_units/speech_units_adapter.h"

#include <ATen/ATen.h>

#include "core/config.h"
#include "core/error.h"
#include "core/io/files.h"
#include "modalities/audio/audio_io.h"
#include "modalities/speech_units/kmeans.h"

namespace tessera::speech {
namespace fs = std::filesystem;

namespace {
constexpr const char* kFix = "restore the files these units were made with, or prepare the data again";
}

SpeechUnitsAdapter::SpeechUnitsAdapter(fs::path kmeans, const fs::path& base_dir, SpeechUnitsOptions options)
    : kmeans_(std::move(kmeans)), options_(std::move(options)) {
  check(options_.dedup_duration >= 1, "speech_units: dedup_duration must be >= 1, got ", options_.dedup_duration);
  kmeans_resolved_ = resolve_artifact(kmeans_, base_dir, kKmeansFile);
  std::error_code ec;
  check(fs::is_regular_file(kmeans_resolved_, ec), "speech_units: no unit model at '", kmeans_resolved_.string(),
        "'; give the kmeans.safetensors (or run directory) of `tessera run recipes/speech/units.yaml`");
  units_ = SpeechUnitModel::load(kmeans_resolved_);
  kmeans_crc32_ = file_crc32(kmeans_resolved_);
  if (!options_.vocoder.empty()) {
    vocoder_resolved_ = resolve_artifact(options_.vocoder, base_dir, kVocoderFile);
    vocoder_.emplace(Vocoder::load(vocoder_resolved_));
    vocoder_crc32_ = file_crc32(vocoder_resolved_);
    check(vocoder_->num_units() == units_.k() && vocoder_->kmeans_crc32() == kmeans_crc32_, "speech_units: the vocoder '",
          vocoder_resolved_.string(), "' was trained on another unit model (K = ", vocoder_->num_units(), ", crc32 ",
          vocoder_->kmeans_crc32(), ") than '", kmeans_resolved_.string(), "' (K = ", units_.k(), ", crc32 ",
          kmeans_crc32_, "); train a vocoder on these units (recipes/speech/vocoder.yaml)");
  }
}

Span SpeechUnitsAdapter::encode(const Segment& segment) const {
  check(segment.modality == modality::kAudio, "speech_units: expected an audio segment, got '", segment.modality, "'");
  check(segment.tensor.defined() && segment.tensor.numel() > 0, "speech_units: the audio segment has no samples");
  check(segment.tensor.is_floating_point() && segment.tensor.dim() >= 1 && segment.tensor.dim() <= 2,
        "speech_units: expected a float waveform [T] or [C, T], got ", segment.tensor.scalar_type(), " ",
        segment.tensor.sizes());
  check(segment.sample_rate > 0, "speech_units: the audio segment has no sample rate (set Segment::sample_rate)");
  at::Tensor wave = audio::mix_down(segment.tensor.to(at::kCPU, at::kFloat).contiguous());
  const int64_t rate = units_.config().stft.sample_rate;
  if (segment.sample_rate != rate) wave = audio::resample(wave, segment.sample_rate, rate);
  const int64_t min_samples = units_.config().stft.n_fft / 2 + 1;
  check(wave.numel() >= min_samples, "speech_units: the audio is too short (", wave.numel(), " samples at ", rate,
        " Hz; at least ", min_samples, " are needed)");
  const at::Tensor ids = units_.units(wave).contiguous();
  std::vector<int64_t> units(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
  Span span;
  span.modality = modality::kAudio;
  span.ids = options_.dedup ? deduplicate(units).units : std::move(units);
  return span;
}

Segment SpeechUnitsAdapter::decode(const Span& span) const {
  check(vocoder_.has_value(), "speech_units: decoding units to audio needs a vocoder; give \"vocoder\": the run ",
        "directory or vocoder.safetensors of `tessera run recipes/speech/vocoder.yaml`");
  check(span.is_discrete() && !span.ids.empty(), "speech_units: nothing to decode (an empty or continuous span)");
  for (size_t i = 0; i < span.ids.size(); ++i)
    check(span.ids[i] >= 0 && span.ids[i] < units_.k(), "speech_units: id ", span.ids[i], " at position ", i,
          " is outside the vocabulary [0, ", units_.k(), ")");
  std::vector<int64_t> frames = span.ids;
  if (options_.dedup) frames = restore({span.ids, std::vector<int64_t>(span.ids.size(), options_.dedup_duration)});
  Segment out;
  out.modality = modality::kAudio;
  out.tensor = vocoder_->synthesize(frames);
  out.sample_rate = vocoder_->features().sample_rate;
  return out;
}

nlohmann::json SpeechUnitsAdapter::describe() const {
  nlohmann::json d = {{"type", kType},
                      {"kmeans", kmeans_.string()},
                      {"crc32", kmeans_crc32_},
                      {"vocab_size", units_.k()},
                      {"features", config::to_json(units_.config())},
                      {"dedup", options_.dedup},
                      {"dedup_duration", options_.dedup_duration}};
  if (vocoder_) {
    d["vocoder"] = options_.vocoder.string();
    d["vocoder_crc32"] = vocoder_crc32_;
  }
  return d;
}

std::shared_ptr<const Adapter> make_speech_units_adapter(const nlohmann::json& d, const fs::path& base_dir) {
  check(d.contains("kmeans") && d.at("kmeans").is_string(), "adapter 'speech_units': description ", d.dump(),
        " needs a string \"kmeans\" (the units run directory or its kmeans.safetensors)");
  SpeechUnitsOptions options;
  if (d.contains("vocoder")) {
    check(d.at("vocoder").is_string(), "adapter 'speech_units': \"vocoder\" must be a path");
    options.vocoder = d.at("vocoder").get<std::string>();
  }
  if (d.contains("dedup")) {
    check(d.at("dedup").is_boolean(), "adapter 'speech_units': \"dedup\" must be true or false");
    options.dedup = d.at("dedup").get<bool>();
  }
  if (d.contains("dedup_duration")) {
    check(d.at("dedup_duration").is_number_integer(), "adapter 'speech_units': \"dedup_duration\" must be an integer");
    options.dedup_duration = d.at("dedup_duration").get<int64_t>();
  }
  auto adapter = std::make_shared<const SpeechUnitsAdapter>(d.at("kmeans").get<std::string>(), base_dir, options);
  const auto recorded = [&](const char* key, uint32_t actual, const char* what) {
    if (!d.contains(key)) return;
    check(d.at(key).is_number_unsigned() && d.at(key).get<uint64_t>() == actual, "speech_units: the ", what,
          " file now has crc32 ", actual, " but ", d.at(key).dump(), " was recorded: it changed since; ", kFix);
  };
  recorded("crc32", adapter->kmeans_crc32(), "unit model (k-means)");
  if (d.contains("vocoder_crc32")) {
    check(adapter->vocoder() != nullptr, "speech_units: a vocoder_crc32 is recorded but no \"vocoder\" is given");
    recorded("vocoder_crc32", adapter->describe().at("vocoder_crc32").get<uint32_t>(), "vocoder");
  }
  if (d.contains("vocab_size"))
    check(d.at("vocab_size").is_number_integer() && d.at("vocab_size").get<int64_t>() == adapter->vocab_size(),
          "speech_units: the unit model has ", adapter->vocab_size(), " units but ", d.at("vocab_size").dump(),
          " were recorded; ", kFix);
  if (d.contains("features"))
    check(d.at("features") == config::to_json(adapter->unit_model().config()), "speech_units: the unit model's ",
          "feature config ", config::to_json(adapter->unit_model().config()).dump(), " differs from the recorded ",
          d.at("features").dump(), "; ", kFix);
  return adapter;
}

}  // namespace tessera::speech
