#include "core/progress.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace tessera {

std::string format_count(double n) {
  const char* suffix[] = {"", "K", "M", "G", "T", "P"};
  int i = 0;
  while (n >= 1000.0 && i < 5) {
    n /= 1000.0;
    ++i;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, i == 0 ? "%.0f%s" : "%.2f%s", n, suffix[i]);
  return buf;
}

std::string format_duration(double seconds) {
  if (seconds < 0 || seconds > 1e8) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm%02lds", (long)(s / 3600), (long)(s % 3600 / 60), (long)(s % 60));
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", (long)(s / 60), (long)(s % 60));
  else std::snprintf(buf, sizeof buf, "%lds", (long)s);
  return buf;
}

ProgressBar::ProgressBar(int64_t total, std::string label, int64_t start)
    : total_(total), start_(start), label_(std::move(label)) {
  const char* force = std::getenv("TESSERA_PROGRESS");
  enabled_ = force ? std::strcmp(force, "0") != 0 : isatty(STDERR_FILENO) == 1;
  begin_ = last_draw_ = std::chrono::steady_clock::now();
}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(int64_t done, const std::string& postfix) {
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - begin_).count();
  const double rate = (done - start_) / std::max(elapsed, 1e-9);
  const double eta = rate > 0 ? (total_ - done) / rate : -1;
  const int width = 24;
  const double frac = total_ > 0 ? static_cast<double>(done) / total_ : 1.0;
  const int filled = static_cast<int>(frac * width);
  std::string bar(filled, '#');
  bar.resize(width, '.');
  std::fprintf(stderr, "\r%s [%s] %ld/%ld %s ETA %s\033[K", label_.c_str(), bar.c_str(), (long)done, (long)total_,
               postfix.c_str(), format_duration(eta).c_str());
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  std::fprintf(stderr, "\n");
}

}  // namespace tessera
