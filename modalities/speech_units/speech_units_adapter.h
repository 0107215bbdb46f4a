// The "speech_units" adapter: audio segments <-> HuBERT-style discrete units (units.h), and back to
// audio through a trained vocoder (vocoder.h).
//
// encode: a float waveform [T] (or [C, T], mixed down) at any sample rate (resampled to the unit
// model's rate, 16 kHz) -> one unit per 20 ms frame, ids in [0, K). With dedup, repeated units collapse
// to one (GSLM-style): the Span then carries no durations, which is fine for language modelling but
// means decode cannot restore the timing.
// decode: ids -> frames (each id one frame; with dedup, each id `dedup_duration` frames) -> log-mel
// through the vocoder -> Griffin-Lim waveform of (frames - 0.5) * 320 samples at 16 kHz. Without a
// vocoder, decode is an error saying which path to give.
//
// Description (make_adapter's input, recorded in shard indexes and checkpoints):
//   {"type": "speech_units", "kmeans": PATH, "crc32": N, "vocab_size": K, "features": {...},
//    "dedup": false, "dedup_duration": 2[, "vocoder": PATH, "vocoder_crc32": N]}
// Paths may name the file or its run directory (kmeans.safetensors / vocoder.safetensors inside) and
// are resolved against make_adapter's base_dir when relative. A recorded checksum, vocabulary size or
// feature config the files no longer match is an error, and so is a vocoder trained on other units.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>

#include "core/data/sample.h"
#include "modalities/speech_units/units.h"
#include "modalities/speech_units/vocoder.h"

namespace tessera::speech {

struct SpeechUnitsOptions {
  std::filesystem::path vocoder;  // empty: encode only
  bool dedup = false;
  int64_t dedup_duration = 2;     // frames per unit when decoding deduplicated ids
};

class SpeechUnitsAdapter final : public Adapter {
 public:
  static constexpr const char* kType = "speech_units";
  static constexpr const char* kName = "speech_units";
  static constexpr const char* kKmeansFile = "kmeans.safetensors";
  static constexpr const char* kVocoderFile = "vocoder.safetensors";

  SpeechUnitsAdapter(std::filesystem::path kmeans, const std::filesystem::path& base_dir = {},
                     SpeechUnitsOptions options = {});

  std::string name() const override { return kName; }
  std::string modality() const override { return modality::kAudio; }
  int64_t vocab_size() const override { return units_.k(); }
  // Empty audio, a non-float or non-audio segment, or a missing sample rate is an error.
  Span encode(const Segment& segment) const override;
  // Needs a vocoder; ids outside [0, K) are an error.
  Segment decode(const Span& span) const override;
  nlohmann::json describe() const override;

  const SpeechUnitModel& unit_model() const { return units_; }
  const Vocoder* vocoder() const { return vocoder_ ? &*vocoder_ : nullptr; }
  uint32_t kmeans_crc32() const { return kmeans_crc32_; }

 private:
  std::filesystem::path kmeans_, kmeans_resolved_;
  SpeechUnitsOptions options_;
  std::filesystem::path vocoder_resolved_;
  SpeechUnitModel units_;
  uint32_t kmeans_crc32_ = 0, vocoder_crc32_ = 0;
  std::optional<Vocoder> vocoder_;
};

// make_adapter's factory for the description above.
std::shared_ptr<const Adapter> make_speech_units_adapter(const nlohmann::json& description,
                                                         const std::filesystem::path& base_dir);

}  // namespace tessera::speech
