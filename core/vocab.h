// One id space for a model (ARCHITECTURE §2): special tokens first, then each discrete modality at a
// fixed offset. The layout travels with shards and checkpoints so that a mismatch is an error.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace tessera {

struct ModalityRange {
  std::string name;  // "bytes", "text_bpe", "image_vq", ...
  int64_t offset = 0;
  int64_t size = 0;
  bool operator==(const ModalityRange& o) const { return name == o.name && offset == o.offset && size == o.size; }
};

class VocabLayout {
 public:
  VocabLayout() = default;
  VocabLayout(std::vector<std::string> specials, std::vector<ModalityRange> modalities);

  // BLT-compatible byte vocabulary: <boe/pad>=0, <bos>=1, <eos>=2, <delim>=3, byte b -> b + 4 (260 ids).
  static VocabLayout bytes();

  int64_t size() const;
  const std::vector<std::string>& specials() const { return specials_; }
  const std::vector<ModalityRange>& modalities() const { return modalities_; }
  int64_t special_id(const std::string& name) const;  // error if absent
  bool has_special(const std::string& name) const;
  const ModalityRange& modality(const std::string& name) const;  // error if absent

  nlohmann::json to_json() const;
  static VocabLayout from_json(const nlohmann::json& j);
  std::string describe() const;

  bool operator==(const VocabLayout& o) const { return specials_ == o.specials_ && modalities_ == o.modalities_; }
  bool operator!=(const VocabLayout& o) const { return !(*this == o); }

 private:
  std::vector<std::string> specials_;
  std::vector<ModalityRange> modalities_;
};

// Errors with both layouts described when `found` differs from `expected`; `what` names the source.
void require_same_layout(const VocabLayout& expected, const VocabLayout& found, const std::string& what);

}  // namespace tessera
