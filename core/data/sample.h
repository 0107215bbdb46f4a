// The mixed-modal data model (ARCHITECTURE §2): a Sample is one document, an ordered list of segments
// of any modality; an Adapter turns a segment's raw payload into a Span (ids in the adapter's own
// vocabulary, or continuous latents) and back. The vocabulary layout places each discrete adapter's
// ids at an offset in the model's single id space.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/vocab.h"

namespace tessera {

// Modality names used in samples, layouts and shard indexes.
namespace modality {
inline constexpr const char* kText = "text";
inline constexpr const char* kImage = "image";
inline constexpr const char* kAudio = "audio";
}  // namespace modality

// One segment's raw payload. Text is UTF-8 (any bytes are carried as they are); images are
// uint8 C×H×W tensors; audio is a float waveform [n] with its sample rate.
struct Segment {
  std::string modality = modality::kText;
  std::string text;
  at::Tensor tensor;       // image (uint8 C×H×W) or waveform (float [n])
  int64_t sample_rate = 0;  // audio only

  static Segment of_text(std::string t) {
    Segment s;
    s.text = std::move(t);
    return s;
  }
};

struct Sample {
  std::string id;  // where it came from (file:line, dataset index), for error messages
  std::vector<Segment> segments;
};

// An adapter's encoding of one segment: discrete ids in the adapter's own vocabulary [0, vocab_size),
// or continuous latents [n, d].
struct Span {
  std::string modality;
  std::vector<int64_t> ids;
  at::Tensor latents;
  bool is_discrete() const { return !latents.defined(); }
};

class Adapter {
 public:
  virtual ~Adapter() = default;
  virtual std::string name() const = 0;      // "bytes", "text_bpe", ... (the layout's modality range name)
  virtual std::string modality() const = 0;  // which Segment modality it encodes
  virtual int64_t vocab_size() const = 0;    // ids per Span are in [0, vocab_size); 0 for continuous adapters
  virtual Span encode(const Segment& segment) const = 0;
  virtual Segment decode(const Span& span) const = 0;
  // Everything needed to rebuild the adapter (type, artifact path and checksum, settings), recorded in
  // shard indexes and checkpoints.
  virtual nlohmann::json describe() const = 0;
};

}  // namespace tessera
