#include "core/io/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <system_error>

#include <fcntl.h>
#include <unistd.h>

#include "core/error.h"
#include "core/io/files.h"
#include "core/io/durable.h"

namespace tessera::io {

namespace fs = std::filesystem;

namespace {

constexpr const char* kStepPrefix = "step_";

// "step_<digits>" exactly (no temporary suffix): its step number.
bool parse_step_name(const std::string& name, int64_t& step) {
  const std::string prefix = kStepPrefix;
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  int64_t value = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    const char c = name[i];
    if (c < '0' || c > '9') return false;
    if (value > (std::numeric_limits<int64_t>::max() - (c - '0')) / 10) return false;
    value = value * 10 + (c - '0');
  }
  step = value;
  return true;
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

bool is_complete_checkpoint(const fs::path& dir) {
  return is_file(dir / kModelFile) && is_file(dir / kOptimizerFile) && is_file(dir / kStateFile);
}

bool looks_like_checkpoint(const fs::path& dir) {
  return is_file(dir / kModelFile) || is_file(dir / kOptimizerFile) || is_file(dir / kStateFile);
}

std::string expected_kinds() {
  return str("expected a checkpoint dir (holding ", kModelFile, ", ", kOptimizerFile, " and ",
             kStateFile, "), a checkpoints folder (holding `", kLatestFile,
             "` or step_* dirs), or a run dir containing checkpoints/");
}

// Moves `dir` out of the way under a temporary name first, so that a crash mid-delete never
// leaves a half-deleted dir that looks like a checkpoint.
void remove_dir_safely(const fs::path& dir) {
  const fs::path doomed = fs::path(dir.string() + detail::tmp_suffix());
  std::error_code ec;
  if (std::rename(dir.c_str(), doomed.c_str()) == 0)
    remove_tree(doomed, ec);
  else
    remove_tree(dir, ec);
}

// Puts the complete dir `tmp` at `final_dir`, replacing any existing one.
void install_dir(const fs::path& tmp, const fs::path& final_dir) {
  if (std::rename(tmp.c_str(), final_dir.c_str()) == 0) return;  // absent (or empty) target
  const int err = errno;
  if (err != ENOTEMPTY && err != EEXIST)
    fail("cannot rename '", tmp.string(), "' to '", final_dir.string(), "': ",
         detail::errno_text(err));
#ifdef RENAME_EXCHANGE
  // Atomic swap: readers see the old or the new checkpoint, never none.
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    std::error_code ec;
    remove_tree(tmp, ec);  // now holds the old checkpoint
    return;
  }
#endif
  const fs::path old = fs::path(final_dir.string() + detail::tmp_suffix());
  detail::rename_or_fail(final_dir, old);
  detail::rename_or_fail(tmp, final_dir);
  std::error_code ec;
  remove_tree(old, ec);
}

// Temporaries left by processes that no longer run (a crash mid-save).
void remove_stale_temporaries(const fs::path& root) {
  std::error_code ec;
  fs::directory_iterator it(root, ec);
  if (ec) return;
  const long self = static_cast<long>(::getpid());
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    if (name.find(detail::kTmpMarker) == std::string::npos) continue;
    const long pid = detail::tmp_owner_pid(name);
    if (pid < 0 || pid == self || detail::process_alive(pid)) continue;
    std::error_code ignored;
    remove_tree(entry.path(), ignored);
  }
}

NamedTensors to_named(std::map<std::string, at::Tensor>&& tensors) {
  NamedTensors out;
  out.reserve(tensors.size());
  for (auto& [name, t] : tensors) out.emplace_back(name, std::move(t));
  return out;
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  check(step >= 0, "checkpoint step must be >= 0, got ", step);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%08lld", kStepPrefix, static_cast<long long>(step));
  return buf;
}

CheckpointManager::CheckpointManager(fs::path root, int keep_last)
    : root_(std::move(root)), keep_last_(keep_last) {}

fs::path CheckpointManager::save(int64_t step, const CheckpointContents& contents) {
  const std::string name = checkpoint_dir_name(step);
  std::error_code ec;
  fs::create_directories(root_, ec);
  if (ec) fail("cannot create checkpoints folder '", root_.string(), "': ", ec.message());

  // Serialise the state first: a bad value (invalid UTF-8) then fails before any disk write.
  std::string state_text;
  try {
    state_text = contents.state.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {
    fail("cannot write checkpoint step ", step, ": state is not serialisable (", e.what(), ")");
  }

  const fs::path final_dir = root_ / name;
  const fs::path tmp = root_ / (name + detail::tmp_suffix());
  if (!fs::create_directory(tmp, ec) || ec)
    fail("cannot create '", tmp.string(), "': ", ec ? ec.message() : "it already exists");
  try {
    save_safetensors(tmp / kModelFile, contents.model, {{"format", "pt"}});
    save_safetensors(tmp / kOptimizerFile, contents.optimizer);
    detail::write_file_atomic(tmp / kStateFile, [&](detail::FileWriter& out) {
      out.write(state_text.data(), state_text.size());
    });
    install_dir(tmp, final_dir);
  } catch (...) {
    std::error_code ignored;
    remove_tree(tmp, ignored);
    throw;
  }
  detail::fsync_dir(root_);

  const std::string pointer = name + "\n";
  detail::write_file_atomic(root_ / kLatestFile, [&](detail::FileWriter& out) {
    out.write(pointer.data(), pointer.size());
  });

  if (keep_last_ > 0) {
    const std::vector<int64_t> all = steps();
    size_t excess = all.size() > static_cast<size_t>(keep_last_)
                        ? all.size() - static_cast<size_t>(keep_last_) : 0;
    for (size_t i = 0; i < all.size() && excess > 0; ++i) {
      if (all[i] == step) continue;
      remove_dir_safely(root_ / checkpoint_dir_name(all[i]));
      --excess;
    }
  }
  remove_stale_temporaries(root_);
  return final_dir;
}

std::optional<fs::path> CheckpointManager::latest() const {
  const fs::path pointer = root_ / kLatestFile;
  std::error_code ec;
  if (fs::exists(pointer, ec)) {
    std::ifstream in(pointer);
    check(static_cast<bool>(in), "cannot read checkpoint pointer '", pointer.string(), "'");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto first = text.find_first_not_of(" \t\r\n");
    const auto last = text.find_last_not_of(" \t\r\n");
    const std::string name =
        first == std::string::npos ? std::string() : text.substr(first, last - first + 1);
    check(!name.empty() && name.find('/') == std::string::npos && name != "." && name != ".." &&
              name.find(detail::kTmpMarker) == std::string::npos,
          "checkpoint pointer '", pointer.string(), "' is malformed (holds \"", name,
          "\"; expected a step dir name such as step_00000042)");
    const fs::path dir = root_ / name;
    check(is_dir(dir), "checkpoint pointer '", pointer.string(), "' names '", name,
          "', which does not exist in '", root_.string(), "'; delete the pointer to fall back to "
          "the newest step dir");
    return dir;
  }
  const std::vector<int64_t> all = steps();
  if (all.empty()) return std::nullopt;
  return root_ / checkpoint_dir_name(all.back());
}

std::vector<int64_t> CheckpointManager::steps() const {
  std::vector<int64_t> out;
  std::error_code ec;
  fs::directory_iterator it(root_, ec);
  if (ec) return out;
  for (const auto& entry : it) {
    int64_t step = 0;
    if (!parse_step_name(entry.path().filename().string(), step)) continue;
    if (!is_dir(entry.path()) || !is_complete_checkpoint(entry.path())) continue;
    out.push_back(step);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());  // step_1 and step_00000001
  return out;
}

CheckpointContents load_checkpoint(const fs::path& dir) {
  check(is_dir(dir), "checkpoint dir '", dir.string(), "' does not exist or is not a directory");
  for (const char* file : {kModelFile, kOptimizerFile, kStateFile})
    check(is_file(dir / file), "checkpoint '", dir.string(), "' is missing ", file, " ('",
          (dir / file).string(), "'); a checkpoint dir holds ", kModelFile, ", ", kOptimizerFile,
          " and ", kStateFile);
  CheckpointContents out;
  out.model = to_named(load_safetensors(dir / kModelFile).tensors);
  out.optimizer = to_named(load_safetensors(dir / kOptimizerFile).tensors);
  const fs::path state_path = dir / kStateFile;
  std::ifstream in(state_path);
  check(static_cast<bool>(in), "cannot read '", state_path.string(), "'");
  try {
    out.state = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("checkpoint state '", state_path.string(), "' is not valid JSON: ", e.what());
  }
  return out;
}

fs::path resolve_checkpoint(const fs::path& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status))
    fail("checkpoint path '", path.string(), "' does not exist; ", expected_kinds());
  if (fs::is_regular_file(status)) {
    const std::string name = path.filename().string();
    const fs::path parent = path.has_parent_path() ? path.parent_path() : fs::path(".");
    if (name == kLatestFile) return resolve_checkpoint(parent);
    if (name == kModelFile || name == kOptimizerFile || name == kStateFile) return parent;
    fail("checkpoint path '", path.string(), "' is a file; ", expected_kinds());
  }
  check(fs::is_directory(status), "checkpoint path '", path.string(), "' is not a directory; ",
        expected_kinds());

  if (looks_like_checkpoint(path)) return path;

  auto resolve_root = [&](const fs::path& root) -> std::optional<fs::path> {
    if (is_file(root / kLatestFile)) return CheckpointManager(root, 0).latest();
    bool has_steps = false;
    fs::directory_iterator it(root, ec);
    if (!ec) {
      for (const auto& entry : it) {
        int64_t step = 0;
        if (parse_step_name(entry.path().filename().string(), step) && is_dir(entry.path()))
          has_steps = true;
      }
    }
    if (!has_steps) return std::nullopt;
    auto found = CheckpointManager(root, 0).latest();
    check(found.has_value(), "checkpoints folder '", root.string(),
          "' has step_* dirs but none is complete (each needs ", kModelFile, ", ", kOptimizerFile,
          " and ", kStateFile, ")");
    return found;
  };

  if (auto found = resolve_root(path)) return *found;
  const fs::path nested = path / "checkpoints";
  if (is_dir(nested)) {
    if (auto found = resolve_root(nested)) return *found;
    fail("run dir '", path.string(), "' has no checkpoint yet ('", nested.string(),
         "' holds no `latest` pointer and no step_* dir)");
  }
  fail("'", path.string(), "' holds no checkpoint; ", expected_kinds());
}

}  // namespace tessera::io
