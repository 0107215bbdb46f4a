// Training checkpoints: one directory per step under a checkpoints root,
//
//   root/step_00000042/model.safetensors      weights (metadata {"format": "pt"}, as HF expects)
//                      optimizer.safetensors  optimizer state tensors
//                      state.json             step, data position, RNG, config, ... (pretty JSON)
//   root/latest                               text file: the name of the newest step dir
//
// A step dir is written under a temporary name (containing ".tmp-") and renamed when complete;
// `latest` is updated after that. Names containing ".tmp-" are leftovers of interrupted writes:
// they are never taken for checkpoints.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/io/safetensors.h"

namespace tessera::io {

struct CheckpointContents {
  NamedTensors model;      // -> model.safetensors
  NamedTensors optimizer;  // -> optimizer.safetensors
  nlohmann::json state;    // -> state.json (pretty printed)
};

inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kStateFile = "state.json";
inline constexpr const char* kLatestFile = "latest";

// "step_00000042" (at least 8 digits).
std::string checkpoint_dir_name(int64_t step);

class CheckpointManager {
 public:
  // `root` is created on the first save. keep_last <= 0 keeps every checkpoint.
  CheckpointManager(std::filesystem::path root, int keep_last);

  // Writes root/step_<step>.tmp-<pid>-<n>/ with the three files (each fsynced), renames it to
  // root/step_<step>/ (atomically replacing an existing dir of that step), fsyncs root, rewrites
  // root/latest (tmp + rename), then deletes the oldest step dirs beyond keep_last (never the one
  // just written) and leftover temporaries of dead processes. Returns the final dir.
  std::filesystem::path save(int64_t step, const CheckpointContents& contents);

  // The dir named by root/latest (tessera::Error if it names a missing dir or is malformed);
  // without a pointer, the newest complete step dir; nullopt when there is none.
  std::optional<std::filesystem::path> latest() const;

  // Steps of the complete step dirs (all three files present), ascending.
  std::vector<int64_t> steps() const;

  const std::filesystem::path& root() const { return root_; }
  int keep_last() const { return keep_last_; }

 private:
  std::filesystem::path root_;
  int keep_last_;
};

// Loads the three files of a checkpoint dir. Tensors come back sorted by name, on CPU. Errors name
// the missing or corrupt file.
CheckpointContents load_checkpoint(const std::filesystem::path& dir);

// Accepts a checkpoint dir, a checkpoints root (with `latest` or step_* dirs), a run dir
// containing checkpoints/, or the `latest` file itself; returns the checkpoint dir, or throws a
// tessera::Error explaining what was expected.
std::filesystem::path resolve_checkpoint(const std::filesystem::path& path);

}  // namespace tessera::io
