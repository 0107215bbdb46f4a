// SIGINT/SIGTERM turn into a polite stop request: the trainer finishes the step, writes a checkpoint
// and exits 0. The handler can only touch a lock-free flag, so that one flag is process-wide.
#pragma once

#include <csignal>

namespace tessera {

class StopSignalGuard {
 public:
  StopSignalGuard();   // installs the handlers and clears the flag
  ~StopSignalGuard();  // restores the previous handlers
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;

  bool requested() const;
  int signal_number() const;  // 0 when none arrived

 private:
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
};

}  // namespace tessera
