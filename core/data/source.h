// Where batches come from. A source's position is serialisable so that checkpoints can resume a run
// on exactly the rows it would have seen (ARCHITECTURE §2).
#pragma once

#include <nlohmann/json.hpp>

#include "core/batch.h"
#include "core/vocab.h"

namespace tessera {

class DataSource {
 public:
  virtual ~DataSource() = default;
  virtual Batch next() = 0;
  virtual nlohmann::json state() const = 0;
  virtual void restore(const nlohmann::json& state) = 0;
  virtual void reset() = 0;  // back to the first batch (validation passes)
  virtual const VocabLayout& layout() const = 0;
  // Batches in one pass (validation) or per epoch (training).
  virtual int64_t batches_per_epoch() const = 0;
};

}  // namespace tessera
