#include "core/io/durable.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <system_error>

#include "core/error.h"

namespace tessera::io::detail {

namespace fs = std::filesystem;

std::string errno_text(int err) { return std::generic_category().message(err); }

std::string tmp_suffix() {
  static std::atomic<unsigned long long> counter{0};
  return str(kTmpMarker, static_cast<long>(::getpid()), "-", counter.fetch_add(1));
}

long tmp_owner_pid(const std::string& name) {
  const auto at = name.rfind(kTmpMarker);
  if (at == std::string::npos) return -1;
  const char* begin = name.c_str() + at + std::strlen(kTmpMarker);
  char* end = nullptr;
  errno = 0;
  const long pid = std::strtol(begin, &end, 10);
  if (end == begin || errno != 0 || *end != '-' || pid <= 0) return -1;
  return pid;
}

bool process_alive(long pid) {
  if (pid <= 0) return false;
  if (::kill(static_cast<pid_t>(pid), 0) == 0) return true;
  return errno != ESRCH;  // EPERM: exists, owned by someone else
}

FileWriter::FileWriter(const fs::path& path) : path_(path) {
  do {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  } while (fd_ < 0 && errno == EINTR);
  if (fd_ < 0) fail("cannot create '", path.string(), "': ", errno_text(errno));
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::write(const void* data, std::size_t size) {
  check(fd_ >= 0, "internal: write to closed file '", path_.string(), "'");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const std::size_t chunk = size < (std::size_t{1} << 30) ? size : (std::size_t{1} << 30);
    const ssize_t n = ::write(fd_, p, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot write '", path_.string(), "': ", errno_text(errno));
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void FileWriter::sync_and_close() {
  if (fd_ < 0) return;
  int rc;
  do {
    rc = ::fsync(fd_);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) fail("cannot fsync '", path_.string(), "': ", errno_text(errno));
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0 && errno != EINTR)
    fail("cannot close '", path_.string(), "': ", errno_text(errno));
}

void fsync_dir(const fs::path& dir) {
  const fs::path d = dir.empty() ? fs::path(".") : dir;
  const int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail("cannot open folder '", d.string(), "' to fsync it: ", errno_text(errno));
  int rc;
  do {
    rc = ::fsync(fd);
  } while (rc != 0 && errno == EINTR);
  const int err = errno;
  ::close(fd);
  // Some file systems refuse fsync on directories; the data itself is already synced.
  if (rc != 0 && err != EINVAL && err != ENOTSUP)
    fail("cannot fsync folder '", d.string(), "': ", errno_text(err));
}

void rename_or_fail(const fs::path& from, const fs::path& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0)
    fail("cannot rename '", from.string(), "' to '", to.string(), "': ", errno_text(errno));
}

void write_file_atomic(const fs::path& final_path, const std::function<void(FileWriter&)>& fill) {
  check(!final_path.filename().empty(), "cannot write to '", final_path.string(),
        "': not a file name");
  fs::path parent = final_path.parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    if (ec) fail("cannot create folder '", parent.string(), "' for '", final_path.string(),
                 "': ", ec.message());
  }
  const fs::path tmp = fs::path(final_path.string() + tmp_suffix());
  try {
    {
      FileWriter out(tmp);
      fill(out);
      out.sync_and_close();
    }
    rename_or_fail(tmp, final_path);
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
  fsync_dir(parent);
}

}  // namespace tessera::io::detail
