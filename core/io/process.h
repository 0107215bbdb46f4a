// A child process with its standard streams redirected to files, started with posix_spawn (no shell:
// arguments are passed as they are, so no quoting or injection issues) and always reaped.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace tessera::io {

class ChildProcess {
 public:
  // argv[0] without a '/' is looked up on PATH. stdin reads /dev/null; stdout/stderr go to the given
  // files (truncated), or to /dev/null when empty. A program that cannot be started is a
  // tessera::Error naming it and the reason.
  ChildProcess(const std::vector<std::string>& argv, const std::filesystem::path& stdout_file,
               const std::filesystem::path& stderr_file);
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ChildProcess& operator=(ChildProcess&&) = delete;
  ~ChildProcess();  // waits for a child not yet waited for

  // Waits for the child; its exit code, or 128 + the signal that ended it. Idempotent.
  int wait();

 private:
  pid_t pid_ = -1;
  int status_ = -1;
};

// The file's text without trailing whitespace, at most max_chars from its end ("" if unreadable): for
// quoting a child's stderr in an error message.
std::string tail_of_file(const std::filesystem::path& file, size_t max_chars = 2000);

}  // namespace tessera::io
