#include "core/train/signals.h"

#include <atomic>

namespace tessera {

namespace {
// Written only by the signal handler, read by the training loop.
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void tessera_on_stop_signal(int signal) { g_stop_signal = signal; }
}  // namespace

StopSignalGuard::StopSignalGuard() {
  g_stop_signal = 0;
  struct sigaction action {};
  action.sa_handler = tessera_on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;
  sigaction(SIGINT, &action, &previous_int_);
  sigaction(SIGTERM, &action, &previous_term_);
}

StopSignalGuard::~StopSignalGuard() {
  sigaction(SIGINT, &previous_int_, nullptr);
  sigaction(SIGTERM, &previous_term_, nullptr);
}

bool StopSignalGuard::requested() const { return g_stop_signal != 0; }
int StopSignalGuard::signal_number() const { return static_cast<int>(g_stop_signal); }

}  // namespace tessera
