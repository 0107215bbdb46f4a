#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/io/files.h"
#include "core/error.h"
#include "core/plot.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using Rgb = std::array<uint8_t, 3>;

// ---- an independent PNG reader (zlib for inflate and CRC, the rest written from the spec) -------

uint32_t be32(const std::vector<uint8_t>& b, size_t at) {
  if (at + 4 > b.size()) throw std::runtime_error("truncated PNG");
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 | b[at + 3];
}

int paeth_predictor(int a, int b, int c) {
  const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  return pb <= pc ? b : c;
}

struct Decoded {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
};

// Decodes an 8-bit RGB, non-interlaced PNG; throws on anything malformed (bad CRC included).
Decoded decode_png(const std::vector<uint8_t>& png) {
  const uint8_t signature[8] = {0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A};
  if (png.size() < 8 || !std::equal(signature, signature + 8, png.begin()))
    throw std::runtime_error("bad signature");
  Decoded out;
  std::vector<uint8_t> idat;
  std::vector<std::string> order;
  for (size_t at = 8; at < png.size();) {
    const uint32_t length = be32(png, at);
    if (at + 12 + length > png.size()) throw std::runtime_error("chunk runs past the end");
    const std::string type(png.begin() + at + 4, png.begin() + at + 8);
    const uint8_t* body = png.data() + at + 8;
    const uLong crc = crc32(crc32(0L, Z_NULL, 0), png.data() + at + 4, 4 + length);
    if (crc != be32(png, at + 8 + length)) throw std::runtime_error("bad CRC in " + type);
    order.push_back(type);
    if (type == "IHDR") {
      if (length != 13) throw std::runtime_error("IHDR length");
      const std::vector<uint8_t> h(body, body + 13);
      out.width = static_cast<int>(be32(h, 0));
      out.height = static_cast<int>(be32(h, 4));
      if (h[8] != 8 || h[9] != 2) throw std::runtime_error("not 8-bit RGB");
      if (h[10] != 0 || h[11] != 0 || h[12] != 0) throw std::runtime_error("bad methods");
    } else if (type == "IDAT") {
      idat.insert(idat.end(), body, body + length);
    }
    at += 12 + length;
  }
  if (order.empty() || order.front() != "IHDR" || order.back() != "IEND")
    throw std::runtime_error("IHDR must come first and IEND last");

  const size_t stride = static_cast<size_t>(out.width) * 3;
  std::vector<uint8_t> raw((stride + 1) * out.height);
  uLongf raw_size = raw.size();
  if (uncompress(raw.data(), &raw_size, idat.data(), idat.size()) != Z_OK || raw_size != raw.size())
    throw std::runtime_error("IDAT does not inflate to the image size");

  out.rgb.resize(stride * out.height);
  for (int y = 0; y < out.height; ++y) {
    const uint8_t filter = raw[(stride + 1) * y];
    const uint8_t* in = &raw[(stride + 1) * y + 1];
    uint8_t* row = &out.rgb[stride * y];
    const uint8_t* up = y > 0 ? row - stride : nullptr;
    for (size_t i = 0; i < stride; ++i) {
      const int a = i >= 3 ? row[i - 3] : 0, b = up ? up[i] : 0, c = (up && i >= 3) ? up[i - 3] : 0;
      int pred;
      switch (filter) {
        case 0:
          pred = 0;
          break;
        case 1:
          pred = a;
          break;
        case 2:
          pred = b;
          break;
        case 3:
          pred = (a + b) / 2;
          break;
        case 4:
          pred = paeth_predictor(a, b, c);
          break;
        default:
          throw std::runtime_error("unknown filter type " + std::to_string(filter));
      }
      row[i] = static_cast<uint8_t>(in[i] + pred);
    }
  }
  return out;
}

// ---- helpers ------------------------------------------------------------------------------------

Rgb pixel(const std::vector<uint8_t>& rgb, const PlotSpec& spec, int col, int row) {
  const size_t at = (static_cast<size_t>(row) * spec.width + col) * 3;
  return {rgb[at], rgb[at + 1], rgb[at + 2]};
}

PlotSeries flat_series(const std::string& name, double y, Rgb color, int n = 101) {
  PlotSeries s;
  s.name = name;
  for (int i = 0; i < n; ++i) {
    s.x.push_back(i);
    s.y.push_back(y);
  }
  s.color = color;
  s.auto_color = false;
  return s;
}

// The mapping documented in plot.h, computed here from the layout's bounds and ranges.
double expected_row(const PlotLayout& L, double y) {
  const auto t = [&](double v) { return L.log_y ? std::log10(v) : v; };
  return L.bottom - (t(y) - t(L.y_lo)) / (t(L.y_hi) - t(L.y_lo)) * (L.bottom - L.top);
}
double expected_col(const PlotLayout& L, double x) {
  const auto t = [&](double v) { return L.log_x ? std::log10(v) : v; };
  return L.left + (t(x) - t(L.x_lo)) / (t(L.x_hi) - t(L.x_lo)) * (L.right - L.left);
}

std::string error_of(const PlotSpec& spec) {
  try {
    render_plot_rgb(spec);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Is `v` m * 10^k with m in {1, 2, 5}?
bool is_125(double v) {
  const double k = std::floor(std::log10(v) + 1e-9);
  const double m = v / std::pow(10.0, k);
  return std::abs(m - 1) < 1e-9 || std::abs(m - 2) < 1e-9 || std::abs(m - 5) < 1e-9;
}

PlotSpec sample_spec() {
  PlotSpec spec;
  spec.title = "Loss vs compute";
  spec.x_label = "FLOPs";
  spec.y_label = "loss";
  spec.log_x = true;
  PlotSeries a, b;
  a.name = "dense";
  b.name = "blt";
  b.style = "line+points";
  for (int i = 0; i < 40; ++i) {
    const double flops = std::pow(10.0, 15 + i * 0.1);
    a.x.push_back(flops);
    a.y.push_back(1.0 + 3.0 * std::exp(-0.1 * i));
    b.x.push_back(flops);
    b.y.push_back(0.9 + 3.2 * std::exp(-0.12 * i));
  }
  spec.series = {a, b};
  return spec;
}

// ---- PNG ----------------------------------------------------------------------------------------

TEST(PlotPng, EncodesAnyImageLosslessly) {
  // Odd sizes and noise: no structure for the encoder to lean on.
  std::mt19937 rng(7);
  for (auto [w, h] : {std::pair{1, 1}, std::pair{37, 23}, std::pair{64, 3}}) {
    std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
    for (auto& v : rgb) v = static_cast<uint8_t>(rng());
    const Decoded d = decode_png(encode_png_rgb(rgb.data(), w, h));
    EXPECT_EQ(d.width, w);
    EXPECT_EQ(d.height, h);
    EXPECT_EQ(d.rgb, rgb) << w << "x" << h;
  }
  EXPECT_THROW(encode_png_rgb(nullptr, 4, 4), Error);
}

TEST(PlotPng, FileDecodesToTheRenderedPixels) {
  const PlotSpec spec = sample_spec();
  const std::vector<uint8_t> rgb = render_plot_rgb(spec);
  ASSERT_EQ(rgb.size(), static_cast<size_t>(spec.width) * spec.height * 3);
  const std::vector<uint8_t> png = encode_png_rgb(rgb.data(), spec.width, spec.height);
  // IHDR right after the signature: width, height, bit depth 8, colour type 2.
  ASSERT_GT(png.size(), 33u);
  EXPECT_EQ(std::string(png.begin() + 12, png.begin() + 16), "IHDR");
  EXPECT_EQ(be32(png, 16), 900u);
  EXPECT_EQ(be32(png, 20), 560u);
  EXPECT_EQ(png[24], 8);
  EXPECT_EQ(png[25], 2);
  Decoded d;
  ASSERT_NO_THROW(d = decode_png(png));
  EXPECT_EQ(d.width, spec.width);
  EXPECT_EQ(d.height, spec.height);
  EXPECT_TRUE(d.rgb == rgb);
  // A corrupted byte is caught by the chunk CRC (the reader really checks it).
  std::vector<uint8_t> bad = png;
  bad[png.size() / 2] ^= 0x40;
  EXPECT_THROW(decode_png(bad), std::runtime_error);
}

TEST(PlotPng, WritesAtomicallyAndCreatesFolders) {
  const fs::path dir = fs::temp_directory_path() / ("tessera_plot_" + std::to_string(::getpid()));
  remove_tree(dir);
  const fs::path file = dir / "plots" / "loss.png";
  const PlotSpec spec = sample_spec();
  write_plot_png(file, spec);
  write_plot_png(file, spec);  // replacing an existing plot works the same way
  ASSERT_TRUE(fs::exists(file));
  std::ifstream in(file, std::ios::binary);
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  ASSERT_GE(bytes.size(), 8u);
  EXPECT_TRUE(std::equal(signature, signature + 8, bytes.begin()));
  EXPECT_TRUE(decode_png(bytes).rgb == render_plot_rgb(spec));
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(file.parent_path()))
    names.push_back(entry.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"loss.png"});  // no temporary file left behind
  // A failed render writes nothing.
  PlotSpec empty;
  EXPECT_THROW(write_plot_png(dir / "plots" / "empty.png", empty), Error);
  EXPECT_FALSE(fs::exists(dir / "plots" / "empty.png"));
  remove_tree(dir);
}

// ---- ticks --------------------------------------------------------------------------------------

TEST(PlotTicks, NiceTicksCoverTheRangeInOneTwoFiveSteps) {
  struct Case {
    double lo, hi;
    int target;
  };
  for (const Case& c : {Case{0, 1, 5}, Case{0.96, 2.04, 4}, Case{-3.7, 12.2, 6},
                        Case{1e13, 7e13, 5}, Case{0.00123, 0.00456, 5}, Case{-1e-5, -2e-6, 4},
                        Case{3, 1003, 8}, Case{-250, 250, 10}, Case{1.0, 1.0001, 5}}) {
    SCOPED_TRACE(testing::Message() << "[" << c.lo << ", " << c.hi << "] target " << c.target);
    const std::vector<double> t = nice_ticks(c.lo, c.hi, c.target);
    ASSERT_GE(t.size(), 2u);
    const double step = t[1] - t[0];
    EXPECT_TRUE(is_125(step)) << step;
    for (size_t i = 1; i < t.size(); ++i) EXPECT_NEAR(t[i] - t[i - 1], step, 1e-9 * step);
    for (double v : t) EXPECT_NEAR(v / step, std::round(v / step), 1e-6);  // multiples of the step
    EXPECT_LE(t.front(), c.lo + 1e-9 * step);
    EXPECT_GE(t.back(), c.hi - 1e-9 * step);
    EXPECT_GT(t[1], c.lo);  // covering, but no further than one step out
    EXPECT_LT(t[t.size() - 2], c.hi);
    int inside = 0;
    for (double v : t) inside += v >= c.lo - 1e-9 * step && v <= c.hi + 1e-9 * step;
    EXPECT_GE(inside, c.target / 2);
    EXPECT_LE(inside, 2 * c.target + 1);
  }
  EXPECT_EQ(nice_ticks(3, 3, 5), std::vector<double>{3});
  EXPECT_THROW(nice_ticks(2, 1, 5), Error);
  EXPECT_THROW(nice_ticks(0, NAN, 5), Error);
}

TEST(PlotTicks, LogTicksAreDecadesWithTwoAndFiveOverFewDecades) {
  // Six decades: exactly the powers of ten.
  const std::vector<double> wide = log_ticks(1e13, 1e19);
  ASSERT_EQ(wide.size(), 7u);
  for (int k = 0; k < 7; ++k) EXPECT_NEAR(wide[k], std::pow(10.0, 13 + k), 1e-9 * wide[k]);
  // Not on decades: still covered by the decades around it.
  const std::vector<double> off = log_ticks(3e14, 2e20);
  EXPECT_NEAR(off.front(), 1e14, 1e2);
  EXPECT_NEAR(off.back(), 1e21, 1e7);
  for (size_t i = 1; i < off.size(); ++i) EXPECT_NEAR(off[i] / off[i - 1], 10.0, 1e-9);
  // Two decades: 1, 2, 5, 10, 20, 50, 100.
  const std::vector<double> few = log_ticks(1, 100);
  const std::vector<double> expected = {1, 2, 5, 10, 20, 50, 100};
  ASSERT_EQ(few.size(), expected.size());
  for (size_t i = 0; i < few.size(); ++i) EXPECT_NEAR(few[i], expected[i], 1e-12 * expected[i]);
  const std::vector<double> small = log_ticks(3e-4, 0.04);
  EXPECT_LE(small.front(), 3e-4);
  EXPECT_GE(small.back(), 0.04);
  for (double v : small) EXPECT_TRUE(is_125(v)) << v;
  // Sixty decades: powers of ten at a regular stride, few enough to label.
  const std::vector<double> huge = log_ticks(1e-30, 1e30);
  EXPECT_LE(huge.size(), 12u);
  EXPECT_LE(huge.front(), 1e-30);
  EXPECT_GE(huge.back(), 1e30);
  for (size_t i = 1; i < huge.size(); ++i)
    EXPECT_NEAR(std::log10(huge[i] / huge[i - 1]), std::log10(huge[1] / huge[0]), 1e-9);
  // Within one decade: positive linear 1-2-5 ticks.
  const std::vector<double> narrow = log_ticks(0.9, 1.4);
  EXPECT_GE(narrow.size(), 3u);
  for (double v : narrow) EXPECT_GT(v, 0);
  EXPECT_THROW(log_ticks(0, 10), Error);
}

TEST(PlotTicks, LabelsAreCompact) {
  EXPECT_EQ(format_tick(0.5), "0.5");
  EXPECT_EQ(format_tick(1e13), "1e13");
  EXPECT_EQ(format_tick(2.5e-3), "2.5e-3");
  EXPECT_EQ(format_tick(250), "250");
  EXPECT_EQ(format_tick(1000), "1000");
  EXPECT_EQ(format_tick(-1.5), "-1.5");
  EXPECT_EQ(format_tick(0), "0");
  EXPECT_EQ(format_tick(-0.0), "0");
  // With a step, labels carry the digits that tell neighbours apart, and no more.
  EXPECT_EQ(format_tick(1.0, 0.5), "1.0");
  EXPECT_EQ(format_tick(1.0, 0.02), "1.00");
  EXPECT_EQ(format_tick(1.25, 0.25), "1.25");
  EXPECT_EQ(format_tick(3e-4, 1e-4), "3e-4");
  EXPECT_EQ(format_tick(1.0002, 0.0001), "1.0002");
  EXPECT_EQ(format_tick(2.5e13, 5e12), "2.5e13");
  EXPECT_EQ(format_tick(200, 50), "200");
  EXPECT_EQ(format_tick(-1e-17, 0.1), "0.0");  // a zero tick off by rounding
}

TEST(PlotTicks, AnAxisUsesOneNotation) {
  using V = std::vector<std::string>;
  EXPECT_EQ(tick_labels({0, 5000, 10000, 15000}, 5000), (V{"0", "5e3", "1e4", "1.5e4"}));
  EXPECT_EQ(tick_labels({0.94, 0.96, 0.98, 1.0, 1.02}, 0.02),
            (V{"0.94", "0.96", "0.98", "1.00", "1.02"}));
  EXPECT_EQ(tick_labels({0.005, 0.01, 0.015}, 0.005), (V{"0.005", "0.010", "0.015"}));
  EXPECT_EQ(tick_labels({1e3, 2e3, 5e3, 1e4}), (V{"1e3", "2e3", "5e3", "1e4"}));
  EXPECT_EQ(tick_labels({0.001, 0.01, 0.1, 1}), (V{"1e-3", "1e-2", "1e-1", "1e0"}));
  EXPECT_EQ(tick_labels({0.1, 1, 10, 100}), (V{"0.1", "1", "10", "100"}));
}

// ---- rendering ----------------------------------------------------------------------------------

TEST(PlotRender, HorizontalLineLandsOnItsRowInItsColour) {
  for (bool log_y : {false, true}) {
    SCOPED_TRACE(log_y ? "log y" : "linear y");
    PlotSpec spec;
    spec.log_y = log_y;
    spec.y_range = log_y ? std::pair{1.0, 1000.0} : std::pair{0.0, 10.0};
    const double y = log_y ? 10.0 : 4.0;
    const Rgb color = {200, 30, 30};
    spec.series = {flat_series("flat", y, color)};
    const PlotLayout L = plot_area(spec);
    ASSERT_LT(L.left, L.right);
    ASSERT_LT(L.top, L.bottom);
    const double row = expected_row(L, y);
    const std::vector<uint8_t> rgb = render_plot_rgb(spec);
    for (double f : {0.2, 0.5, 0.8}) {
      const int col = static_cast<int>(L.left + f * (L.right - L.left));
      EXPECT_EQ(pixel(rgb, spec, col, static_cast<int>(std::lround(row))), color)
          << "column " << col;
      // The line is there and only there: every pixel of its colour is within a pixel of the row.
      for (int r = 0; r < spec.height; ++r) {
        if (pixel(rgb, spec, col, r) == color) {
          EXPECT_LE(std::abs(r - row), 1.0) << "row " << r;
        }
      }
    }
  }
}

TEST(PlotRender, AutoColoursAreDistinct) {
  PlotSpec spec;
  spec.y_range = std::pair{0.0, 4.0};
  for (int i = 0; i < 3; ++i) {
    spec.series.push_back(flat_series("s" + std::to_string(i), 1.0 + i, {0, 0, 0}));
    spec.series.back().auto_color = true;
  }
  const PlotLayout L = plot_area(spec);
  const std::vector<uint8_t> rgb = render_plot_rgb(spec);
  const int col = L.left + (L.right - L.left) / 3;
  std::vector<Rgb> seen;
  for (int i = 0; i < 3; ++i)
    seen.push_back(pixel(rgb, spec, col, static_cast<int>(std::lround(expected_row(L, 1.0 + i)))));
  for (const Rgb& c : seen) EXPECT_NE(c, (Rgb{255, 255, 255}));
  EXPECT_NE(seen[0], seen[1]);
  EXPECT_NE(seen[1], seen[2]);
  EXPECT_NE(seen[0], seen[2]);
}

TEST(PlotRender, FixedRangesAreKeptAndCurvesClippedToThePlotArea) {
  PlotSpec spec;
  spec.x_range = std::pair{10.0, 20.0};
  spec.y_range = std::pair{0.0, 1.0};
  const Rgb color = {10, 160, 60};
  PlotSeries s = flat_series("", 0, color, 0);
  s.x = {0, 15, 30};  // from far outside, through the middle, to far outside
  s.y = {-100, 0.5, 100};
  spec.series = {s};
  const PlotLayout L = plot_area(spec);
  EXPECT_EQ(L.x_lo, 10.0);
  EXPECT_EQ(L.x_hi, 20.0);
  EXPECT_EQ(L.y_lo, 0.0);
  EXPECT_EQ(L.y_hi, 1.0);
  const std::vector<uint8_t> rgb = render_plot_rgb(spec);
  int inside = 0;
  for (int r = 0; r < spec.height; ++r)
    for (int c = 0; c < spec.width; ++c) {
      if (pixel(rgb, spec, c, r) != color) continue;
      const bool in_area = c >= L.left && c <= L.right && r >= L.top && r <= L.bottom;
      EXPECT_TRUE(in_area) << "series colour at " << c << "," << r;
      inside += in_area;
    }
  EXPECT_GT(inside, 0);
  // The middle point is where the mapping puts it.
  EXPECT_EQ(pixel(rgb, spec, static_cast<int>(std::lround(expected_col(L, 15))),
                  static_cast<int>(std::lround(expected_row(L, 0.5)))),
            color);
}

TEST(PlotRender, NonFiniteValuesAreSkippedAndBreakTheLine) {
  PlotSpec spec;
  spec.x_range = std::pair{0.0, 100.0};
  spec.y_range = std::pair{0.0, 10.0};
  const Rgb color = {20, 40, 220};
  PlotSeries s = flat_series("gappy", 5.0, color);
  s.y[50] = NAN;
  s.x[20] = INFINITY;
  spec.series = {s};
  std::vector<uint8_t> rgb;
  ASSERT_NO_THROW(rgb = render_plot_rgb(spec));
  const PlotLayout L = plot_area(spec);
  const int row = static_cast<int>(std::lround(expected_row(L, 5.0)));
  auto at_x = [&](double x) {
    return pixel(rgb, spec, static_cast<int>(std::lround(expected_col(L, x))), row);
  };
  EXPECT_EQ(at_x(35), color);
  EXPECT_EQ(at_x(75), color);
  EXPECT_NE(at_x(50), color);  // the gap where y is NaN
  EXPECT_NE(at_x(20), color);  // and where x is infinite
  // Only non-finite points: nothing to plot.
  PlotSpec none;
  none.series = {flat_series("nan", NAN, color)};
  EXPECT_NE(error_of(none).find("nothing to plot"), std::string::npos) << error_of(none);
  EXPECT_NE(error_of(PlotSpec{}).find("nothing to plot"), std::string::npos);
}

TEST(PlotRender, ErrorsNameTheSeriesAndValue) {
  PlotSpec spec;
  spec.log_y = true;
  PlotSeries good = flat_series("fine", 1.0, {0, 0, 0});
  PlotSeries bad = flat_series("run-7", 1.0, {0, 0, 0});
  bad.y[3] = -2.5;
  spec.series = {good, bad};
  std::string message = error_of(spec);
  EXPECT_NE(message.find("run-7"), std::string::npos) << message;
  EXPECT_NE(message.find("-2.5"), std::string::npos) << message;
  EXPECT_NE(message.find("log y"), std::string::npos) << message;

  spec.log_y = false;
  spec.log_x = true;  // x starts at 0
  message = error_of(spec);
  EXPECT_NE(message.find("fine"), std::string::npos) << message;
  EXPECT_NE(message.find("log x"), std::string::npos) << message;

  PlotSpec styled;
  styled.series = {flat_series("wavy", 1.0, {0, 0, 0})};
  styled.series[0].style = "wavy";
  EXPECT_NE(error_of(styled).find("'wavy'"), std::string::npos);
  styled.series[0].style = "line";
  styled.series[0].y.pop_back();
  EXPECT_NE(error_of(styled).find("wavy"), std::string::npos);
  PlotSpec ranged;
  ranged.series = {flat_series("a", 1.0, {0, 0, 0})};
  ranged.y_range = std::pair{2.0, 1.0};
  EXPECT_THROW(render_plot_rgb(ranged), Error);
}

TEST(PlotRender, TenSeriesOfAThousandPointsAreFast) {
  PlotSpec spec;
  spec.title = "timing";
  spec.x_label = "step";
  spec.y_label = "loss";
  for (int s = 0; s < 10; ++s) {
    PlotSeries series;
    series.name = "series " + std::to_string(s);
    series.style = s % 3 == 0 ? "dashed" : "line";
    for (int i = 0; i < 1000; ++i) {
      series.x.push_back(i);
      series.y.push_back(std::sin(i * 0.01 + s) + 0.3 * s + 0.05 * std::sin(i * 0.7));
    }
    spec.series.push_back(series);
  }
  const auto start = std::chrono::steady_clock::now();
  const std::vector<uint8_t> rgb = render_plot_rgb(spec);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(rgb.size(), 900u * 560u * 3u);
  // About 5 ms on one core in a release build; the bound only catches a blow-up.
  EXPECT_LT(ms, 250.0);
}

}  // namespace
}  // namespace tessera
