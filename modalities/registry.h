// The adapter factory (ARCHITECTURE §5: one of the two allowed registries) and the vocabulary layout
// that a set of adapters implies, with the id mapping between an adapter's ids and the model's.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/data/sample.h"
#include "core/vocab.h"

namespace tessera {

// The `type`s make_adapter knows: "bytes", "sentencepiece", "image_vq", "image_latent", "speech_units".
std::vector<std::string> adapter_types();

// Rebuilds an adapter from its describe() (or a recipe's equivalent). Relative artifact paths are
// resolved against `base_dir` (a shard folder, a checkpoint, a recipe's folder). A recorded "crc32" or
// "vocab_size" that the artifact no longer matches is an error: ids made with one model would be
// garbage under another. An unknown type is an error listing the known ones.
std::shared_ptr<const Adapter> make_adapter(const nlohmann::json& description, const std::filesystem::path& base_dir);

// The model's id space for these adapters. A single bytes adapter gives VocabLayout::bytes() exactly
// (BLT's ids); otherwise the specials <pad>, <bos>, <eos>, then <boi>, <eoi> when an adapter encodes
// images, <boa>, <eoa> when one encodes audio, <latent> when one is continuous (vocab_size 0), then each
// discrete adapter's range at consecutive offsets, named by the adapter's name(). Continuous adapters
// take no range.
VocabLayout layout_for(const std::vector<std::shared_ptr<const Adapter>>& adapters);

// The specials around a media segment in a mixed-modal document: {"<boi>", "<eoi>"} for images,
// {"<boa>", "<eoa>"} for audio; an error for other modalities.
std::pair<std::string, std::string> segment_delimiters(const std::string& media);

// Adapter ids -> model ids (+ the offset of the adapter's range in `layout`); ids outside the adapter's
// vocabulary, or a layout whose range does not fit the adapter, are errors.
std::vector<int64_t> to_model_ids(const Span& span, const Adapter& adapter, const VocabLayout& layout);
// Model ids -> a Span of the adapter: ids outside its range (specials, other modalities) are dropped.
Span from_model_ids(const std::vector<int64_t>& ids, const Adapter& adapter, const VocabLayout& layout);

// adapter.encode(sample.segments[index]), with any error prefixed by the sample id and segment index.
Span encode_segment(const Adapter& adapter, const Sample& sample, size_t index);

}  // namespace tessera
