// Human-facing output: a progress bar on a terminal, and number/duration formatting.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace tessera {

std::string format_count(double n);       // 1234567 -> "1.23M"
std::string format_duration(double seconds);  // 3725 -> "1h02m05s"

class ProgressBar {
 public:
  // Draws only when stderr is a terminal (or TESSERA_PROGRESS=1); logs and CI stay clean.
  ProgressBar(int64_t total, std::string label, int64_t start = 0);
  ~ProgressBar();
  void update(int64_t done, const std::string& postfix);
  void finish();
  bool enabled() const { return enabled_; }

 private:
  int64_t total_, start_;
  std::string label_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point begin_, last_draw_;
};

}  // namespace tessera
