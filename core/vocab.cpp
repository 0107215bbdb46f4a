#include "core/vocab.h"

#include <algorithm>

#include "core/error.h"

namespace tessera {

VocabLayout::VocabLayout(std::vector<std::string> specials, std::vector<ModalityRange> modalities)
    : specials_(std::move(specials)), modalities_(std::move(modalities)) {
  int64_t next = static_cast<int64_t>(specials_.size());
  for (const auto& m : modalities_) {
    check(m.offset == next, "vocabulary layout: modality '", m.name, "' starts at ", m.offset,
          " but the previous range ends at ", next, " (ranges must be contiguous)");
    check(m.size > 0, "vocabulary layout: modality '", m.name, "' has size ", m.size);
    next += m.size;
  }
}

VocabLayout VocabLayout::bytes() {
  return VocabLayout({"<boe>", "<bos>", "<eos>", "<delim>"}, {{"bytes", 4, 256}});
}

int64_t VocabLayout::size() const {
  if (modalities_.empty()) return static_cast<int64_t>(specials_.size());
  return modalities_.back().offset + modalities_.back().size;
}

bool VocabLayout::has_special(const std::string& name) const {
  return std::find(specials_.begin(), specials_.end(), name) != specials_.end();
}

int64_t VocabLayout::special_id(const std::string& name) const {
  auto it = std::find(specials_.begin(), specials_.end(), name);
  check(it != specials_.end(), "vocabulary layout has no special token '", name, "' (", describe(), ")");
  return it - specials_.begin();
}

const ModalityRange& VocabLayout::modality(const std::string& name) const {
  for (const auto& m : modalities_)
    if (m.name == name) return m;
  fail("vocabulary layout has no modality '", name, "' (", describe(), ")");
}

nlohmann::json VocabLayout::to_json() const {
  nlohmann::json mods = nlohmann::json::array();
  for (const auto& m : modalities_) mods.push_back({{"name", m.name}, {"offset", m.offset}, {"size", m.size}});
  return {{"specials", specials_}, {"modalities", mods}, {"size", size()}};
}

VocabLayout VocabLayout::from_json(const nlohmann::json& j) {
  try {
    std::vector<ModalityRange> mods;
    for (const auto& m : j.at("modalities"))
      mods.push_back({m.at("name").get<std::string>(), m.at("offset").get<int64_t>(), m.at("size").get<int64_t>()});
    VocabLayout layout(j.at("specials").get<std::vector<std::string>>(), std::move(mods));
    if (j.contains("size"))
      check(j.at("size").get<int64_t>() == layout.size(), "vocabulary layout: recorded size ",
            j.at("size").get<int64_t>(), " does not match its ranges (", layout.size(), ")");
    return layout;
  } catch (const nlohmann::json::exception& e) {
    fail("malformed vocabulary layout: ", e.what());
  }
}

std::string VocabLayout::describe() const {
  std::string out = std::to_string(specials_.size()) + " specials";
  for (const auto& m : modalities_)
    out += str(", ", m.name, " [", m.offset, ", ", m.offset + m.size, ")");
  return out + str("; ", size(), " ids");
}

void require_same_layout(const VocabLayout& expected, const VocabLayout& found, const std::string& what) {
  check(expected == found, what, " uses vocabulary layout {", found.describe(), "} but the model expects {",
        expected.describe(), "}; use data prepared with the model's layout or retrain");
}

}  // namespace tessera
