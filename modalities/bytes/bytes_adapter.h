// Raw bytes as tokens (BLT, MegaByte, the quickstart): adapter id = byte value, 256 ids. Placed at
// offset 4 by VocabLayout::bytes() this gives BLT's released ids (byte b -> b + 4). Any byte string
// round-trips, including invalid UTF-8 and NUL bytes.
#pragma once

#include "core/data/sample.h"

namespace tessera {

class BytesAdapter final : public Adapter {
 public:
  static constexpr const char* kName = "bytes";
  static constexpr const char* kType = "bytes";  // describe()["type"]

  std::string name() const override { return kName; }
  std::string modality() const override { return modality::kText; }
  int64_t vocab_size() const override { return 256; }
  Span encode(const Segment& segment) const override;
  Segment decode(const Span& span) const override;  // ids outside [0, 256) are an error
  nlohmann::json describe() const override { return {{"type", kType}}; }
};

}  // namespace tessera
