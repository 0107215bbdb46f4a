#include "modalities/registry.h"

#include <functional>
#include <set>
#include <utility>

#include "core/data/latents.h"
#include "core/error.h"
#include "modalities/bytes/bytes_adapter.h"
#include "modalities/image_latent/vae.h"
#include "modalities/image_vq/vq_tokenizer.h"
#include "modalities/speech_units/speech_units_adapter.h"
#include "modalities/text_bpe/sentencepiece_adapter.h"

namespace tessera {
namespace fs = std::filesystem;

namespace {

using Factory = std::function<std::shared_ptr<const Adapter>(const nlohmann::json&, const fs::path&)>;

std::string field_string(const nlohmann::json& d, const char* key, const std::string& type) {
  check(d.contains(key) && d.at(key).is_string(), "adapter '", type, "': description ", d.dump(),
        " needs a string \"", key, "\"");
  return d.at(key).get<std::string>();
}

std::shared_ptr<const Adapter> make_bytes(const nlohmann::json&, const fs::path&) {
  return std::make_shared<const BytesAdapter>();
}

std::shared_ptr<const Adapter> make_sentencepiece(const nlohmann::json& d, const fs::path& base_dir) {
  auto adapter = std::make_shared<const SentencePieceAdapter>(field_string(d, "model", "sentencepiece"), base_dir);
  const std::string fix = "restore the model these ids were made with, or prepare the data again";
  if (d.contains("crc32")) {
    check(d.at("crc32").is_number_unsigned() && d.at("crc32").get<uint64_t>() == adapter->crc32(),
          "text_bpe: '", adapter->model_path().string(), "' has crc32 ", adapter->crc32(), " but ",
          d.at("crc32").dump(), " was recorded: the model file changed since; ", fix);
  }
  if (d.contains("vocab_size")) {
    check(d.at("vocab_size").is_number_integer() && d.at("vocab_size").get<int64_t>() == adapter->vocab_size(),
          "text_bpe: '", adapter->model_path().string(), "' has ", adapter->vocab_size(), " pieces but ",
          d.at("vocab_size").dump(), " were recorded; ", fix);
  }
  return adapter;
}

// type -> factory. Constant: adding an adapter means adding a line here.
const std::vector<std::pair<std::string, Factory>>& factories() {
  static const std::vector<std::pair<std::string, Factory>> table = {
      {BytesAdapter::kType, make_bytes},
      {SentencePieceAdapter::kType, make_sentencepiece},
      {image::ImageVqAdapter::kType, image::make_image_vq_adapter},
      {image::ImageLatentAdapter::kType, image::make_image_latent_adapter},
      {speech::SpeechUnitsAdapter::kType, speech::make_speech_units_adapter},
  };
  return table;
}

const ModalityRange& range_of(const Adapter& adapter, const VocabLayout& layout) {
  const ModalityRange& range = layout.modality(adapter.name());
  check(range.size == adapter.vocab_size(), "vocabulary layout range '", range.name, "' holds ", range.size,
        " ids but the adapter has ", adapter.vocab_size(), " (", layout.describe(), ")");
  return range;
}

}  // namespace

std::vector<std::string> adapter_types() {
  std::vector<std::string> types;
  for (const auto& [type, factory] : factories()) types.push_back(type);
  return types;
}

std::shared_ptr<const Adapter> make_adapter(const nlohmann::json& description, const fs::path& base_dir) {
  std::string known;
  for (const auto& type : adapter_types()) known += (known.empty() ? "" : ", ") + type;
  check(description.is_object() && description.contains("type") && description.at("type").is_string(),
        "adapter description ", description.dump(), " needs a string \"type\" (one of: ", known, ")");
  const std::string type = description.at("type").get<std::string>();
  for (const auto& [name, factory] : factories())
    if (name == type) return factory(description, base_dir);
  fail("unknown adapter type '", type, "' (known: ", known, ")");
}

std::pair<std::string, std::string> segment_delimiters(const std::string& media) {
  if (media == modality::kImage) return {"<boi>", "<eoi>"};
  if (media == modality::kAudio) return {"<boa>", "<eoa>"};
  fail("segments of modality '", media, "' have no delimiter specials (images and audio do)");
}

VocabLayout layout_for(const std::vector<std::shared_ptr<const Adapter>>& adapters) {
  check(!adapters.empty(), "vocabulary layout: no adapters");
  for (const auto& a : adapters) check(a != nullptr, "vocabulary layout: a null adapter");
  if (adapters.size() == 1 && adapters[0]->name() == BytesAdapter::kName) return VocabLayout::bytes();

  std::vector<std::string> specials = {"<pad>", "<bos>", "<eos>"};
  // Mixed-modal documents delimit each media segment (<boi> ... <eoi>, <boa> ... <eoa>), and continuous
  // latents stand in the token stream as <latent> placeholders. Text-only layouts get none of these.
  for (const char* media : {modality::kImage, modality::kAudio}) {
    bool present = false;
    for (const auto& a : adapters) present = present || a->modality() == media;
    if (!present) continue;
    const auto [begin, end] = segment_delimiters(media);
    specials.push_back(begin);
    specials.push_back(end);
  }
  bool continuous = false;
  for (const auto& a : adapters) continuous = continuous || a->vocab_size() == 0;
  if (continuous) specials.push_back(kLatentSpecial);

  std::vector<ModalityRange> ranges;
  std::set<std::string> names;
  int64_t offset = static_cast<int64_t>(specials.size());
  for (const auto& a : adapters) {
    if (a->vocab_size() == 0) continue;  // continuous latents
    check(names.insert(a->name()).second, "vocabulary layout: two adapters named '", a->name(), "'");
    ranges.push_back({a->name(), offset, a->vocab_size()});
    offset += a->vocab_size();
  }
  return VocabLayout(std::move(specials), std::move(ranges));
}

std::vector<int64_t> to_model_ids(const Span& span, const Adapter& adapter, const VocabLayout& layout) {
  check(span.is_discrete(), "adapter '", adapter.name(), "': continuous latents have no model ids");
  const ModalityRange& range = range_of(adapter, layout);
  std::vector<int64_t> ids(span.ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = span.ids[i];
    check(id >= 0 && id < range.size, "adapter '", adapter.name(), "': id ", id, " at position ", i,
          " is outside its vocabulary [0, ", range.size, ")");
    ids[i] = range.offset + id;
  }
  return ids;
}

Span from_model_ids(const std::vector<int64_t>& ids, const Adapter& adapter, const VocabLayout& layout) {
  const ModalityRange& range = range_of(adapter, layout);
  Span span;
  span.modality = adapter.modality();
  span.ids.reserve(ids.size());
  for (const int64_t id : ids)
    if (id >= range.offset && id < range.offset + range.size) span.ids.push_back(id - range.offset);
  return span;
}

Span encode_segment(const Adapter& adapter, const Sample& sample, size_t index) {
  check(index < sample.segments.size(), "sample '", sample.id, "' has ", sample.segments.size(),
        " segments, no segment ", index);
  try {
    return adapter.encode(sample.segments[index]);
  } catch (const Error& e) {
    fail("sample '", sample.id, "', segment ", index, ": ", e.what());
  }
}

}  // namespace tessera
