#include "modalities/bytes/bytes_adapter.h"

#include "core/error.h"

namespace tessera {

Span BytesAdapter::encode(const Segment& segment) const {
  check(segment.modality == modality::kText, "bytes adapter: cannot encode a '", segment.modality,
        "' segment (it encodes text)");
  Span span;
  span.modality = modality::kText;
  span.ids.reserve(segment.text.size());
  for (const unsigned char c : segment.text) span.ids.push_back(c);
  return span;
}

Segment BytesAdapter::decode(const Span& span) const {
  check(span.is_discrete(), "bytes adapter: cannot decode continuous latents");
  std::string text;
  text.reserve(span.ids.size());
  for (size_t i = 0; i < span.ids.size(); ++i) {
    const int64_t id = span.ids[i];
    check(id >= 0 && id < 256, "bytes adapter: id ", id, " at position ", i, " is not a byte (ids are 0..255)");
    text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
  }
  return Segment::of_text(std::move(text));
}

}  // namespace tessera
