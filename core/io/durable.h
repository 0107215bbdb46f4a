// Crash-safe file writing for the checkpoint I/O (internal to core/io): write to a temporary
// name in the destination folder, fsync, rename, fsync the folder.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>

namespace tessera::io::detail {

// ".tmp-<pid>-<counter>": unique within this host for concurrent writers (threads and processes).
// Everything carrying this marker in its name is an unfinished write.
std::string tmp_suffix();
inline constexpr const char* kTmpMarker = ".tmp-";

// The process id embedded in a name made with tmp_suffix(), or -1.
long tmp_owner_pid(const std::string& name);
// False only when `pid` is certainly not a live process on this host.
bool process_alive(long pid);

// An open file being written; closes (without syncing) on destruction.
class FileWriter {
 public:
  explicit FileWriter(const std::filesystem::path& path);  // creates; fails if it exists
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  void write(const void* data, std::size_t size);
  void sync_and_close();  // fsync + close; errors are tessera::Error naming the file
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

// Writes `final_path` atomically: `fill` writes into a temporary file next to it, which is then
// fsynced and renamed over `final_path`; the folder is fsynced. On any failure the temporary file
// is removed and the error rethrown (as tessera::Error for I/O errors).
void write_file_atomic(const std::filesystem::path& final_path,
                       const std::function<void(FileWriter&)>& fill);

void fsync_dir(const std::filesystem::path& dir);
void rename_or_fail(const std::filesystem::path& from, const std::filesystem::path& to);
std::string errno_text(int err);

}  // namespace tessera::io::detail
