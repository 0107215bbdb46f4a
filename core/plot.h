// PNG line charts for training curves and scaling-law fits, with no dependency beyond the standard
// library and zlib: recipes write plots on machines without OpenCV or Python.
//
//   PlotSpec spec;
//   spec.title = "loss vs compute", spec.x_label = "FLOPs", spec.y_label = "loss";
//   spec.log_x = spec.log_y = true;
//   spec.series.push_back({"dense", flops, loss});
//   write_plot_png(run_dir / "loss.png", spec);
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tessera {

struct PlotSeries {
  std::string name;  // shown in the legend; an empty name keeps the series out of it
  std::vector<double> x, y;
  std::string style = "line";                // "line", "points", "line+points", "dashed"
  std::array<uint8_t, 3> color = {0, 0, 0};  // used when auto_color is false
  bool auto_color = true;                    // Okabe-Ito palette colour chosen by the series' index
};

struct PlotSpec {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  int width = 900, height = 560;
  std::vector<PlotSeries> series;
  // Fixed axis ranges in data units; unset = the finite data's extent plus a small margin.
  std::optional<std::pair<double, double>> x_range, y_range;
};

// Where data lands in the image. Pixel (col, row) has its centre at the integer point (col, row);
// the plot area is columns [left, right] and rows [top, bottom] (the axes box is drawn on its
// edges). A point (x, y) maps to
//   col = left   + (X - X(x_lo)) / (X(x_hi) - X(x_lo)) * (right - left)
//   row = bottom - (Y - Y(y_lo)) / (Y(y_hi) - Y(y_lo)) * (bottom - top)
// with X = log10(x) on a log axis and X = x otherwise (the same for Y).
struct PlotLayout {
  int left = 0, top = 0, right = 0, bottom = 0;
  double x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;  // data values at the plot-area edges
  bool log_x = false, log_y = false;

  double col(double x) const;  // the mapping above, as a continuous pixel coordinate
  double row(double y) const;
};

// Validates `spec` (errors name the series and value at fault) and returns its layout.
PlotLayout plot_area(const PlotSpec& spec);

// The rendered chart, row-major RGB, width * height * 3 bytes.
std::vector<uint8_t> render_plot_rgb(const PlotSpec& spec);

// Renders and writes a PNG atomically (temporary file, fsync, rename); creates missing folders.
// The colour auto_color gives series `index` (for giving related series one colour).
const std::array<uint8_t, 3>& plot_color(size_t index);

void write_plot_png(const std::filesystem::path& path, const PlotSpec& spec);

// Ticks at multiples of a 1, 2 or 5 x 10^k step, about `target_count` of them inside [lo, hi], plus
// at most one on each side so that they cover it: the first is <= lo and the last >= hi.
// lo == hi gives {lo}.
std::vector<double> nice_ticks(double lo, double hi, int target_count);

// Ticks for a log axis over [lo, hi] (both > 0), covering it like nice_ticks: powers of ten, plus
// 2 and 5 times them when the range spans at most 3 decades, every n-th power when it spans more
// than 10; a range within one decade gets linear 1-2-5 ticks instead (all positive).
std::vector<double> log_ticks(double lo, double hi);

// A short number label: "0.5", "250", "1e13", "2.5e-3" (exponent form below 0.01 and from 1e4 on).
// With step > 0 (the spacing of the ticks it labels): the digits that tell neighbouring ticks
// apart, in fixed form exactly the step's decimals ("1.00" beside "0.98"); with step == 0, up to 4
// significant digits without trailing zeros.
std::string format_tick(double value, double step = 0);

// Labels for one axis' ticks, like format_tick but in one notation for all of them (exponent form
// when the largest |tick| is >= 1e4 or < 0.01, or, without a step, the smallest is below 0.01).
std::vector<std::string> tick_labels(const std::vector<double>& ticks, double step = 0);

// A PNG file's bytes: 8-bit RGB, non-interlaced, filter type 0 on every row (on charts smaller
// than the adaptive filters), one zlib stream in one IDAT chunk.
std::vector<uint8_t> encode_png_rgb(const uint8_t* rgb, int width, int height);

}  // namespace tessera
