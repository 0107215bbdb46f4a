#include "core/plot.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "core/error.h"
#include "core/io/files.h"
#include "core/plot_font.h"

namespace tessera {
namespace {

using Color = std::array<uint8_t, 3>;

constexpr Color kWhite = {255, 255, 255};
constexpr Color kInk = {34, 34, 34};  // text, axes box, tick marks
constexpr Color kGridMajor = {222, 222, 222};
constexpr Color kGridMinor = {240, 240, 240};  // the 2x and 5x lines of a log axis
constexpr Color kLegendEdge = {170, 170, 170};

// Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision
// deficiencies. Reordered so that the first series get the strongest colours; yellow, the weakest
// on white, comes last.
constexpr std::array<Color, 8> kPalette = {{
    {0, 114, 178},    // blue
    {213, 94, 0},     // vermillion
    {0, 158, 115},    // bluish green
    {204, 121, 167},  // reddish purple
    {230, 159, 0},    // orange
    {86, 180, 233},   // sky blue
    {0, 0, 0},        // black
    {240, 228, 66},   // yellow
}};

// Keeps mapped coordinates of far-away points finite; the visible part of a line to such a point
// changes by far less than a pixel.
constexpr double kFarPixels = 1e9;

double pow10i(int e) { return std::pow(10.0, e); }

// m * 10^e, correctly rounded (0.002 rather than 2 * 0.001).
double scaled(double m, int e) { return e >= 0 ? m * pow10i(e) : m / pow10i(-e); }

bool is_power_of_ten(double v) {
  const double l = std::log10(v);
  return std::abs(l - std::round(l)) < 1e-9;
}

// ---- font ---------------------------------------------------------------------------------------

using Glyph = std::array<uint8_t, plot_font::kGlyphHeight>;  // bit 4 = leftmost column

const std::array<Glyph, plot_font::kCharCount>& glyphs() {
  static const auto table = [] {
    std::array<Glyph, plot_font::kCharCount> out{};
    std::vector<std::string> rows;  // glyph rows of the sheet, band after band
    const char* p = plot_font::kSheet;
    while (*p) {
      const char* end = std::strchr(p, '\n');
      if (!end) end = p + std::strlen(p);
      if (*p == '.' || *p == '#') rows.emplace_back(p, end);
      p = *end ? end + 1 : end;
    }
    for (int c = 0; c < plot_font::kCharCount; ++c) {
      const int band = c / plot_font::kGlyphsPerBand, col = c % plot_font::kGlyphsPerBand;
      for (int r = 0; r < plot_font::kGlyphHeight; ++r) {
        const std::string& line = rows.at(static_cast<size_t>(band * plot_font::kGlyphHeight + r));
        uint8_t bits = 0;
        for (int x = 0; x < plot_font::kGlyphWidth; ++x)
          if (line.at(static_cast<size_t>(col * (plot_font::kGlyphWidth + 1) + x)) == '#')
            bits |= static_cast<uint8_t>(1u << (plot_font::kGlyphWidth - 1 - x));
        out[static_cast<size_t>(c)][static_cast<size_t>(r)] = bits;
      }
    }
    return out;
  }();
  return table;
}

// Glyph indices of a UTF-8 string: printable ASCII as is, any other character (one multi-byte
// sequence or control byte) as '?', so user-given names never break the layout.
std::vector<int> glyph_indices(const std::string& text) {
  std::vector<int> out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const auto b = static_cast<unsigned char>(text[i]);
    if (b >= 0x80 && b < 0xC0) continue;  // continuation byte of a sequence already replaced
    const int c = (b >= 32 && b <= 126) ? b : '?';
    out.push_back(c - plot_font::kFirstChar);
  }
  return out;
}

int advance(int scale) { return (plot_font::kGlyphWidth + 1) * scale; }
int text_width(const std::string& text, int scale) {
  const int n = static_cast<int>(glyph_indices(text).size());
  return n == 0 ? 0 : n * advance(scale) - scale;
}
int cap_height(int scale) { return plot_font::kCapHeight * scale; }
int line_height(int scale) { return plot_font::kGlyphHeight * scale; }

// ---- canvas -------------------------------------------------------------------------------------

class Canvas {
 public:
  Canvas(int width, int height)
      : w_(width), h_(height), px_(static_cast<size_t>(width) * height * 3, 255) {}

  int width() const { return w_; }
  int height() const { return h_; }

  void fill_rect(int x0, int y0, int x1, int y1, Color c) {  // inclusive bounds, clipped
    x0 = std::max(x0, 0), y0 = std::max(y0, 0);
    x1 = std::min(x1, w_ - 1), y1 = std::min(y1, h_ - 1);
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) put(x, y, c);
  }
  void blend(int x, int y, Color c, float a) {
    uint8_t* p = at(x, y);
    for (int k = 0; k < 3; ++k) p[k] = static_cast<uint8_t>(std::lround(p[k] + (c[k] - p[k]) * a));
  }

  // Text with its top-left corner at (x, y); `vertical` reads bottom to top (a y-axis label), the
  // top-left then being that of the rotated text's bounding box.
  void text(int x, int y, const std::string& s, int scale, Color c, bool vertical = false) {
    const auto& table = glyphs();
    const int total = text_width(s, scale);
    int u0 = 0;  // position along the text
    for (int g : glyph_indices(s)) {
      const Glyph& glyph = table[static_cast<size_t>(g)];
      for (int r = 0; r < plot_font::kGlyphHeight; ++r)
        for (int col = 0; col < plot_font::kGlyphWidth; ++col) {
          if (!(glyph[static_cast<size_t>(r)] >> (plot_font::kGlyphWidth - 1 - col) & 1)) continue;
          const int u = u0 + col * scale, v = r * scale;
          if (vertical)
            fill_rect(x + v, y + total - u - scale, x + v + scale - 1, y + total - u - 1, c);
          else
            fill_rect(x + u, y + v, x + u + scale - 1, y + v + scale - 1, c);
        }
      u0 += advance(scale);
    }
  }

  std::vector<uint8_t> take() { return std::move(px_); }

 private:
  uint8_t* at(int x, int y) { return &px_[(static_cast<size_t>(y) * w_ + x) * 3]; }
  void put(int x, int y, Color c) { std::memcpy(at(x, y), c.data(), 3); }

  int w_, h_;
  std::vector<uint8_t> px_;
};

// Liang-Barsky: clips the segment a + t (b - a), t in [0, 1], to the rectangle; false when nothing
// of it is inside. On success [t0, t1] is the visible part.
bool clip_segment(double ax, double ay, double bx, double by, double x0, double y0, double x1,
                  double y1, double& t0, double& t1) {
  t0 = 0, t1 = 1;
  const double dx = bx - ax, dy = by - ay;
  const double p[4] = {-dx, dx, -dy, dy};
  const double q[4] = {ax - x0, x1 - ax, ay - y0, y1 - ay};
  for (int i = 0; i < 4; ++i) {
    if (p[i] == 0) {
      if (q[i] < 0) return false;
      continue;
    }
    const double t = q[i] / p[i];
    if (p[i] < 0)
      t0 = std::max(t0, t);
    else
      t1 = std::min(t1, t);
    if (t0 > t1) return false;
  }
  return true;
}

// Anti-aliased ink of one series: the coverage of each pixel (0..1), max-combined over the
// series' segments and markers so that overlapping pieces of one curve do not darken it, then
// blended onto the canvas once. Only the touched span of each row is blended and cleared.
class Coverage {
 public:
  Coverage(int width, int height)
      : w_(width),
        h_(height),
        a_(static_cast<size_t>(width) * height, 0.f),
        lo_(static_cast<size_t>(height), INT_MAX),
        hi_(static_cast<size_t>(height), INT_MIN) {}

  void set_clip(int x0, int y0, int x1, int y1) {
    cx0_ = std::max(x0, 0), cy0_ = std::max(y0, 0);
    cx1_ = std::min(x1, w_ - 1), cy1_ = std::min(y1, h_ - 1);
  }

  // A round-capped stroke of width 2 * half_width from a to b (a == b: a disc). A pixel's
  // coverage is its centre's distance to the stroke's edge, clamped to [0, 1].
  void segment(double ax, double ay, double bx, double by, double half_width) {
    const double reach = half_width + 0.5;
    double t0, t1;
    if (!clip_segment(ax, ay, bx, by, cx0_ - reach - 1, cy0_ - reach - 1, cx1_ + reach + 1,
                      cy1_ + reach + 1, t0, t1))
      return;
    const double dx0 = bx - ax, dy0 = by - ay;
    const double sx = ax + t0 * dx0, sy = ay + t0 * dy0, ex = ax + t1 * dx0, ey = ay + t1 * dy0;
    const double dx = ex - sx, dy = ey - sy, len2 = dx * dx + dy * dy, len = std::sqrt(len2);
    const int y_first = std::max(cy0_, static_cast<int>(std::ceil(std::min(sy, ey) - reach)));
    const int y_last = std::min(cy1_, static_cast<int>(std::floor(std::max(sy, ey) + reach)));
    const double bx0 = std::max<double>(cx0_, std::min(sx, ex) - reach);
    const double bx1 = std::min<double>(cx1_, std::max(sx, ex) + reach);
    const bool has_length = len2 > 1e-12;
    for (int y = y_first; y <= y_last; ++y) {
      double xl = bx0, xr = bx1;
      if (has_length && std::abs(dy) > 1e-9) {  // the row's crossing of the band around the line
        const double centre = sx + dx * (y - sy) / dy, half = reach * len / std::abs(dy);
        xl = std::max(xl, centre - half), xr = std::min(xr, centre + half);
      }
      const int xs = static_cast<int>(std::ceil(xl)), xe = static_cast<int>(std::floor(xr));
      if (xs > xe) continue;
      float* row = &a_[static_cast<size_t>(y) * w_];
      for (int x = xs; x <= xe; ++x) {
        const double px = x - sx, py = y - sy;
        const double t = has_length ? std::clamp((px * dx + py * dy) / len2, 0.0, 1.0) : 0.0;
        const double ox = px - t * dx, oy = py - t * dy;
        const float c =
            static_cast<float>(std::clamp(reach - std::sqrt(ox * ox + oy * oy), 0.0, 1.0));
        if (c > row[x]) row[x] = c;
      }
      lo_[static_cast<size_t>(y)] = std::min(lo_[static_cast<size_t>(y)], xs);
      hi_[static_cast<size_t>(y)] = std::max(hi_[static_cast<size_t>(y)], xe);
    }
  }

  // Blends the coverage onto the canvas in `color`, marks inked pixels in `ink` (if given), clears.
  void composite(Canvas& canvas, Color color, std::vector<uint8_t>* ink) {
    for (int y = 0; y < h_; ++y) {
      int& lo = lo_[static_cast<size_t>(y)];
      int& hi = hi_[static_cast<size_t>(y)];
      if (lo > hi) continue;
      float* row = &a_[static_cast<size_t>(y) * w_];
      for (int x = lo; x <= hi; ++x) {
        if (row[x] <= 0.f) continue;
        canvas.blend(x, y, color, row[x]);
        if (ink) (*ink)[static_cast<size_t>(y) * w_ + x] = 1;
        row[x] = 0.f;
      }
      lo = INT_MAX, hi = INT_MIN;
    }
  }

 private:
  int w_, h_;
  int cx0_ = 0, cy0_ = 0, cx1_ = 0, cy1_ = 0;
  std::vector<float> a_;
  std::vector<int> lo_, hi_;  // touched columns per row
};

// ---- series styles ------------------------------------------------------------------------------

struct Style {
  bool line = false, points = false, dashed = false;
};

// "plot series 'loss'", or "plot series 3" for an unnamed one: how errors point at a series.
std::string series_label(const PlotSeries& s, size_t index) {
  return s.name.empty() ? str("plot series ", index) : str("plot series '", s.name, "'");
}

Style parse_style(const PlotSeries& s, size_t index) {
  if (s.style == "line") return {true, false, false};
  if (s.style == "points") return {false, true, false};
  if (s.style == "line+points") return {true, true, false};
  if (s.style == "dashed") return {true, false, true};
  fail(series_label(s, index), ": unknown style '", s.style,
       "' (expected line, points, line+points or dashed)");
}

struct Pen {
  double half_width;     // of lines
  double marker_radius;  // of points
  double dash_on, dash_period;
};

// Draws one run of consecutive finite points (pixel coordinates) in a style.
void draw_run(Coverage& cov, const std::vector<std::pair<double, double>>& pts, size_t begin,
              size_t end, const Style& style, const Pen& pen, const double clip[4]) {
  if (style.line) {
    if (end - begin == 1) {  // an isolated point of a line would otherwise vanish: a marker
      cov.segment(pts[begin].first, pts[begin].second, pts[begin].first, pts[begin].second,
                  pen.marker_radius);
    } else if (!style.dashed) {
      for (size_t i = begin + 1; i < end; ++i)
        cov.segment(pts[i - 1].first, pts[i - 1].second, pts[i].first, pts[i].second,
                    pen.half_width);
    } else {
      // The dash pattern runs on along the polyline; only the visible part of each segment is
      // walked, so a segment to a point far outside the plot costs nothing.
      double pos = 0;  // position in the pattern, [0, dash_period)
      const double m = pen.half_width + 2;
      for (size_t i = begin + 1; i < end; ++i) {
        const auto [ax, ay] = pts[i - 1];
        const auto [bx, by] = pts[i];
        const double len = std::hypot(bx - ax, by - ay);
        double t0, t1;
        if (len <= 0 || !clip_segment(ax, ay, bx, by, clip[0] - m, clip[1] - m, clip[2] + m,
                                      clip[3] + m, t0, t1)) {
          pos = std::fmod(pos + len, pen.dash_period);
          continue;
        }
        pos = std::fmod(pos + t0 * len, pen.dash_period);
        for (double d = t0 * len, stop = t1 * len; d < stop;) {
          const bool on = pos < pen.dash_on;
          const double step = std::min((on ? pen.dash_on : pen.dash_period) - pos, stop - d);
          if (on) {
            const double u0 = d / len, u1 = (d + step) / len;
            cov.segment(ax + u0 * (bx - ax), ay + u0 * (by - ay), ax + u1 * (bx - ax),
                        ay + u1 * (by - ay), pen.half_width);
          }
          d += step;
          pos += step;
          if (pos >= pen.dash_period - 1e-9) pos = 0;
        }
        pos = std::fmod(pos + (1 - t1) * len, pen.dash_period);
      }
    }
  }
  if (style.points)
    for (size_t i = begin; i < end; ++i)
      cov.segment(pts[i].first, pts[i].second, pts[i].first, pts[i].second, pen.marker_radius);
}

// ---- axes ---------------------------------------------------------------------------------------

double axis_value(double v, bool log) { return log ? std::log10(v) : v; }

struct Axis {
  std::vector<double> ticks;        // inside the axis range
  std::vector<bool> major;          // minor: the 2x and 5x ticks of a log axis
  std::vector<std::string> labels;  // "" where the label was left out for lack of room
};

// Labels ticks greedily, majors first, skipping any that would overlap an accepted label or leave
// [0, limit). `pos(i)` is tick i's pixel position along the axis; `extent` a label's size along it.
void place_labels(Axis& axis, const std::vector<std::string>& text, const std::vector<int>& extent,
                  const std::vector<double>& pos, int limit, int gap) {
  axis.labels.assign(axis.ticks.size(), "");
  std::vector<std::pair<double, double>> taken;
  for (int pass = 0; pass < 2; ++pass)
    for (size_t i = 0; i < axis.ticks.size(); ++i) {
      if (axis.major[i] != (pass == 0)) continue;
      const double a = pos[i] - extent[i] / 2.0, b = pos[i] + extent[i] / 2.0;
      if (a < 0 || b > limit - 1) continue;
      const bool clash = std::any_of(taken.begin(), taken.end(), [&](const auto& t) {
        return a < t.second + gap && t.first < b + gap;
      });
      if (clash) continue;
      taken.emplace_back(a, b);
      axis.labels[i] = text[i];
    }
}

// Ticks and labels for one axis of the layout. For linear ticks the count is lowered until every
// label fits, so labels are never skipped irregularly; a log axis keeps all its ticks and labels
// what fits, decades first.
Axis make_axis(const PlotLayout& L, bool horizontal, int target, int scale, int limit) {
  const double lo = horizontal ? L.x_lo : L.y_lo, hi = horizontal ? L.x_hi : L.y_hi;
  const bool log = horizontal ? L.log_x : L.log_y;
  const double a = axis_value(lo, log), b = axis_value(hi, log), tol = 1e-9 * (b - a);
  const bool decades = log && b - a >= 1;  // else log_ticks would give linear ticks anyway
  Axis axis;
  for (int t = target;; --t) {
    const std::vector<double> all = decades ? log_ticks(lo, hi) : nice_ticks(lo, hi, t);
    axis.ticks.clear(), axis.major.clear();
    for (double v : all) {
      if (log && v <= 0) continue;
      const double u = axis_value(v, log);
      if (u < a - tol || u > b + tol) continue;
      axis.ticks.push_back(v);
      axis.major.push_back(!decades || is_power_of_ten(v));
    }
    // Linear steps give each label the digits that tell it from its neighbour.
    const double step = (!decades && all.size() > 1) ? all[1] - all[0] : 0.0;
    const std::vector<std::string> text = tick_labels(axis.ticks, step);
    std::vector<int> extent;
    std::vector<double> pos;
    for (size_t i = 0; i < axis.ticks.size(); ++i) {
      extent.push_back(horizontal ? text_width(text[i], scale) : cap_height(scale));
      pos.push_back(horizontal ? L.col(axis.ticks[i]) : L.row(axis.ticks[i]));
    }
    place_labels(axis, text, extent, pos, limit,
                 horizontal ? 2 * advance(scale) : cap_height(scale));
    const bool all_fit = std::none_of(axis.labels.begin(), axis.labels.end(),
                                      [](const std::string& l) { return l.empty(); });
    if (decades || all_fit || t <= 2) break;
  }
  return axis;
}

// ---- the whole chart ----------------------------------------------------------------------------

struct Prepared {
  PlotLayout layout;
  std::vector<Style> styles;
  std::vector<Color> colors;
  Axis x_axis, y_axis;
  int text_scale = 1, title_scale = 2;
  int pad = 0, tick_len = 0, gap = 0;
  Pen pen{};
};

// The data extent of one axis in axis units (log10 on a log axis), with a margin.
std::pair<double, double> auto_range(double lo, double hi, bool log) {
  double a = axis_value(lo, log), b = axis_value(hi, log);
  if (b > a) {
    const double m = 0.04 * (b - a);
    a -= m, b += m;
  } else {
    const double m = log ? 0.1 : (a == 0 ? 1.0 : 0.1 * std::abs(a));
    a -= m, b += m;
  }
  return log ? std::pair{std::pow(10.0, a), std::pow(10.0, b)} : std::pair{a, b};
}

void check_range(const std::pair<double, double>& r, bool log, const char* axis) {
  check(std::isfinite(r.first) && std::isfinite(r.second) && r.first < r.second, "plot ", axis,
        "_range [", r.first, ", ", r.second, "] must be finite with low < high");
  check(!log || r.first > 0, "plot ", axis, "_range [", r.first, ", ", r.second,
        "] must be positive on a log axis");
}

Prepared prepare(const PlotSpec& spec) {
  check(spec.width >= 64 && spec.height >= 64 && spec.width <= 16384 && spec.height <= 16384,
        "plot size ", spec.width, "x", spec.height, " is outside 64..16384 pixels per side");
  check(!spec.series.empty(), "nothing to plot: the plot '", spec.title, "' has no series");
  if (spec.x_range) check_range(*spec.x_range, spec.log_x, "x");
  if (spec.y_range) check_range(*spec.y_range, spec.log_y, "y");

  Prepared p;
  for (size_t i = 0; i < spec.series.size(); ++i) {
    const PlotSeries& s = spec.series[i];
    const std::string label = series_label(s, i);
    check(s.x.size() == s.y.size(), label, ": x has ", s.x.size(), " values but y has ",
          s.y.size());
    p.styles.push_back(parse_style(s, i));
    p.colors.push_back(s.auto_color ? kPalette[i % kPalette.size()] : s.color);
    for (size_t k = 0; k < s.x.size(); ++k) {
      check(!spec.log_x || !std::isfinite(s.x[k]) || s.x[k] > 0, label, ": x = ", s.x[k],
            " (point ", k, ") cannot be shown on a log x axis; values must be > 0");
      check(!spec.log_y || !std::isfinite(s.y[k]) || s.y[k] > 0, label, ": y = ", s.y[k],
            " (point ", k, ") cannot be shown on a log y axis; values must be > 0");
    }
  }

  // Data extents over finite points; with one range fixed, the other axis fits the points inside
  // it (a zoom shows its part of the curves well), or all points when none is inside.
  auto extent = [&](bool want_x, bool restrict) {
    double lo = INFINITY, hi = -INFINITY;
    const auto& other = want_x ? spec.y_range : spec.x_range;
    for (const PlotSeries& s : spec.series)
      for (size_t k = 0; k < s.x.size(); ++k) {
        if (!std::isfinite(s.x[k]) || !std::isfinite(s.y[k])) continue;
        const double v = want_x ? s.x[k] : s.y[k], o = want_x ? s.y[k] : s.x[k];
        if (restrict && other && (o < other->first || o > other->second)) continue;
        lo = std::min(lo, v), hi = std::max(hi, v);
      }
    return std::pair{lo, hi};
  };
  auto x_ext = extent(true, true), y_ext = extent(false, true);
  if (!(x_ext.first <= x_ext.second)) x_ext = extent(true, false);
  if (!(y_ext.first <= y_ext.second)) y_ext = extent(false, false);
  check(x_ext.first <= x_ext.second, "nothing to plot: no series of '", spec.title,
        "' has a point with finite x and y");

  PlotLayout& L = p.layout;
  L.log_x = spec.log_x, L.log_y = spec.log_y;
  std::tie(L.x_lo, L.x_hi) =
      spec.x_range ? *spec.x_range : auto_range(x_ext.first, x_ext.second, spec.log_x);
  std::tie(L.y_lo, L.y_hi) =
      spec.y_range ? *spec.y_range : auto_range(y_ext.first, y_ext.second, spec.log_y);
  for (const auto& [lo, hi, log, axis] : {std::tuple{L.x_lo, L.x_hi, L.log_x, "x"},
                                          std::tuple{L.y_lo, L.y_hi, L.log_y, "y"}}) {
    const double span = axis_value(hi, log) - axis_value(lo, log);
    check(std::isfinite(span) && span > 0, "plot '", spec.title, "': the ", axis, " range [", lo,
          ", ", hi, "] is too wide (or narrow) to draw; set ", axis, "_range");
  }

  // Sizes scale with the image so that a default 900x560 chart reads like a screen figure.
  const int s = std::min(spec.width, spec.height) >= 400 ? 2 : 1;
  p.text_scale = s;
  p.title_scale = s + 1;
  p.pad = 5 * s;
  p.gap = 3 * s;
  p.tick_len = 3 * s;
  p.pen = {s >= 2 ? 1.0 : 0.75, s >= 2 ? 3.0 : 2.0, 8.0 * s, 13.0 * s};

  const int W = spec.width, H = spec.height;
  L.top = p.pad + (spec.title.empty() ? cap_height(s) / 2 : line_height(p.title_scale) + 2 * p.gap);
  L.bottom = H - 1 -
             (p.pad + (spec.x_label.empty() ? 0 : line_height(s) + p.gap) + line_height(s) + p.gap +
              p.tick_len);
  check(L.bottom - L.top >= 16, "plot height ", H,
        " leaves no room for the chart under its labels");

  // The y labels' width sets the left margin, which the x axis needs; the y axis needs none of x.
  p.y_axis = make_axis(L, false, std::clamp((L.bottom - L.top) / (5 * cap_height(s)), 3, 8), s, H);
  int y_label_w = 0;
  for (const std::string& l : p.y_axis.labels) y_label_w = std::max(y_label_w, text_width(l, s));
  L.left =
      p.pad + (spec.y_label.empty() ? 0 : line_height(s) + p.gap) + y_label_w + p.gap + p.tick_len;
  L.right = W - 1 - (p.pad + 3 * advance(s));
  check(L.right - L.left >= 16, "plot width ", W,
        " leaves no room for the chart beside its labels");

  p.x_axis = make_axis(L, true, std::clamp((L.right - L.left) / (9 * advance(s)), 3, 10), s, W);
  return p;
}

// The series' names with a line sample each, in the corner of the plot area with the least ink.
void draw_legend(Canvas& canvas, Coverage& cov, const PlotSpec& spec, const Prepared& p,
                 const std::vector<uint8_t>& ink) {
  std::vector<size_t> named;
  int text_w = 0;
  for (size_t i = 0; i < spec.series.size(); ++i)
    if (!spec.series[i].name.empty()) {
      named.push_back(i);
      text_w = std::max(text_w, text_width(spec.series[i].name, p.text_scale));
    }
  if (named.empty()) return;
  const int s = p.text_scale, inner = 2 * p.gap, sample_w = 14 * s, row_h = line_height(s) + s;
  const int box_w = inner + sample_w + p.gap + text_w + inner;
  const int box_h = 2 * inner + (static_cast<int>(named.size()) - 1) * row_h + cap_height(s);
  const PlotLayout& L = p.layout;
  const int margin = 2 * p.gap;
  const int xs[2] = {L.right - margin - box_w, L.left + margin};
  const int ys[2] = {L.top + margin, L.bottom - margin - box_h};
  // Corners in order of preference: top right, top left, bottom right, bottom left.
  const std::pair<int, int> corners[4] = {
      {xs[0], ys[0]}, {xs[1], ys[0]}, {xs[0], ys[1]}, {xs[1], ys[1]}};
  int bx = xs[0], by = ys[0];
  long best = LONG_MAX;
  for (const auto& [cx, cy] : corners) {
    long count = 0;
    for (int y = std::max(cy, 0); y < std::min(cy + box_h, canvas.height()); ++y)
      for (int x = std::max(cx, 0); x < std::min(cx + box_w, canvas.width()); ++x)
        count += ink[static_cast<size_t>(y) * canvas.width() + x];
    if (count < best) best = count, bx = cx, by = cy;
  }
  canvas.fill_rect(bx, by, bx + box_w - 1, by + box_h - 1, kLegendEdge);
  canvas.fill_rect(bx + 1, by + 1, bx + box_w - 2, by + box_h - 2, kWhite);

  cov.set_clip(bx + 1, by + 1, bx + box_w - 2, by + box_h - 2);
  const double clip[4] = {bx + 1.0, by + 1.0, bx + box_w - 2.0, by + box_h - 2.0};
  for (size_t r = 0; r < named.size(); ++r) {
    const size_t i = named[r];
    const int top = by + inner + static_cast<int>(r) * row_h;
    const double mid = top + (cap_height(s) - 1) / 2.0;
    const double x0 = bx + inner, x1 = x0 + sample_w;
    const Style style = p.styles[i];
    std::vector<std::pair<double, double>> pts = {{x0, mid}, {x1, mid}};
    if (style.points && !style.line) pts = {{(x0 + x1) / 2, mid}};
    if (style.points && style.line) {  // the marker in the middle of the sample only
      draw_run(cov, pts, 0, 2, Style{true, false, false}, p.pen, clip);
      std::vector<std::pair<double, double>> m = {{(x0 + x1) / 2, mid}};
      draw_run(cov, m, 0, 1, Style{false, true, false}, p.pen, clip);
    } else {
      draw_run(cov, pts, 0, pts.size(), style, p.pen, clip);
    }
    cov.composite(canvas, p.colors[i], nullptr);
    canvas.text(static_cast<int>(x1) + p.gap, top, spec.series[i].name, s, kInk);
  }
}

}  // namespace

const std::array<uint8_t, 3>& plot_color(size_t index) { return kPalette[index % kPalette.size()]; }

double PlotLayout::col(double x) const {
  const double a = axis_value(x_lo, log_x), b = axis_value(x_hi, log_x);
  const double c = left + (axis_value(x, log_x) - a) / (b - a) * (right - left);
  return std::clamp(c, -kFarPixels, kFarPixels);
}

double PlotLayout::row(double y) const {
  const double a = axis_value(y_lo, log_y), b = axis_value(y_hi, log_y);
  const double r = bottom - (axis_value(y, log_y) - a) / (b - a) * (bottom - top);
  return std::clamp(r, -kFarPixels, kFarPixels);
}

PlotLayout plot_area(const PlotSpec& spec) { return prepare(spec).layout; }

std::vector<uint8_t> render_plot_rgb(const PlotSpec& spec) {
  const Prepared p = prepare(spec);
  const PlotLayout& L = p.layout;
  const int W = spec.width, H = spec.height, s = p.text_scale;
  Canvas canvas(W, H);

  // Grid first, so that curves lie over it.
  for (size_t i = 0; i < p.x_axis.ticks.size(); ++i) {
    const int x = static_cast<int>(std::lround(L.col(p.x_axis.ticks[i])));
    canvas.fill_rect(x, L.top, x, L.bottom, p.x_axis.major[i] ? kGridMajor : kGridMinor);
  }
  for (size_t i = 0; i < p.y_axis.ticks.size(); ++i) {
    const int y = static_cast<int>(std::lround(L.row(p.y_axis.ticks[i])));
    canvas.fill_rect(L.left, y, L.right, y, p.y_axis.major[i] ? kGridMajor : kGridMinor);
  }

  Coverage cov(W, H);
  std::vector<uint8_t> ink(static_cast<size_t>(W) * H, 0);  // where curves are, for the legend
  cov.set_clip(L.left, L.top, L.right, L.bottom);
  const double clip[4] = {double(L.left), double(L.top), double(L.right), double(L.bottom)};
  std::vector<std::pair<double, double>> pts;
  for (size_t i = 0; i < spec.series.size(); ++i) {
    const PlotSeries& series = spec.series[i];
    pts.clear();
    // Runs of finite points; a non-finite value ends a run, so the line breaks there.
    size_t run_start = 0;
    auto flush = [&] {
      if (pts.size() > run_start)
        draw_run(cov, pts, run_start, pts.size(), p.styles[i], p.pen, clip);
      run_start = pts.size();
    };
    for (size_t k = 0; k < series.x.size(); ++k) {
      if (!std::isfinite(series.x[k]) || !std::isfinite(series.y[k])) {
        flush();
        continue;
      }
      pts.emplace_back(L.col(series.x[k]), L.row(series.y[k]));
    }
    flush();
    cov.composite(canvas, p.colors[i], &ink);
  }

  // Axes box, tick marks and labels over the curves' clipped ends.
  canvas.fill_rect(L.left, L.top, L.right, L.top, kInk);
  canvas.fill_rect(L.left, L.bottom, L.right, L.bottom, kInk);
  canvas.fill_rect(L.left, L.top, L.left, L.bottom, kInk);
  canvas.fill_rect(L.right, L.top, L.right, L.bottom, kInk);
  const int line_w = std::max(1, s / 2);
  for (size_t i = 0; i < p.x_axis.ticks.size(); ++i) {
    const int x = static_cast<int>(std::lround(L.col(p.x_axis.ticks[i])));
    const int len = p.x_axis.major[i] ? p.tick_len : p.tick_len / 2;
    canvas.fill_rect(x, L.bottom, x + line_w - 1, L.bottom + len, kInk);
    const std::string& label = p.x_axis.labels[i];
    if (!label.empty())
      canvas.text(x - text_width(label, s) / 2, L.bottom + p.tick_len + p.gap, label, s, kInk);
  }
  for (size_t i = 0; i < p.y_axis.ticks.size(); ++i) {
    const int y = static_cast<int>(std::lround(L.row(p.y_axis.ticks[i])));
    const int len = p.y_axis.major[i] ? p.tick_len : p.tick_len / 2;
    canvas.fill_rect(L.left - len, y, L.left, y + line_w - 1, kInk);
    const std::string& label = p.y_axis.labels[i];
    if (!label.empty())
      canvas.text(L.left - p.tick_len - p.gap - text_width(label, s), y - cap_height(s) / 2, label,
                  s, kInk);
  }

  draw_legend(canvas, cov, spec, p, ink);

  const int mid_x = (L.left + L.right) / 2, mid_y = (L.top + L.bottom) / 2;
  if (!spec.title.empty())
    canvas.text(mid_x - text_width(spec.title, p.title_scale) / 2, p.pad, spec.title, p.title_scale,
                kInk);
  if (!spec.x_label.empty())
    canvas.text(mid_x - text_width(spec.x_label, s) / 2,
                L.bottom + p.tick_len + p.gap + line_height(s) + p.gap, spec.x_label, s, kInk);
  if (!spec.y_label.empty())
    canvas.text(p.pad, mid_y - text_width(spec.y_label, s) / 2, spec.y_label, s, kInk, true);
  return canvas.take();
}

void write_plot_png(const std::filesystem::path& path, const PlotSpec& spec) {
  const std::vector<uint8_t> rgb = render_plot_rgb(spec);
  const std::vector<uint8_t> png = encode_png_rgb(rgb.data(), spec.width, spec.height);
  write_bytes_atomic(path, png.data(), png.size());
}

// ---- ticks and labels ---------------------------------------------------------------------------

std::vector<double> nice_ticks(double lo, double hi, int target_count) {
  check(std::isfinite(lo) && std::isfinite(hi) && lo <= hi, "nice_ticks: [", lo, ", ", hi,
        "] is not a finite range");
  check(target_count >= 1 && target_count <= 1000, "nice_ticks: target count ", target_count,
        " is outside 1..1000");
  if (lo == hi) return {lo};
  const double raw = (hi - lo) / std::max(1, target_count - 1);
  check(std::isfinite(raw), "nice_ticks: [", lo, ", ", hi, "] is too wide to divide");
  const int e0 = static_cast<int>(std::floor(std::log10(raw)));
  // The 1-2-5 step whose tick count is nearest the target; on a tie, the larger step.
  double best_step = 0, best_m = 0;
  int best_e = 0;
  long best_lo = 0, best_hi = 0;
  double best_score = INFINITY;
  for (int e = e0 - 1; e <= e0 + 1; ++e)
    for (double m : {1.0, 2.0, 5.0}) {
      const double step = scaled(m, e);
      if (!(step > 0 && std::isfinite(step))) continue;  // beyond the double range
      const double k_lo = std::floor(lo / step + 1e-9), k_hi = std::ceil(hi / step - 1e-9);
      // A step below the range's precision would give billions of indistinguishable ticks.
      if (std::abs(k_lo) > 1e15 || std::abs(k_hi) > 1e15) continue;
      // Judged by the ticks inside [lo, hi], the ones a reader sees on an axis of that range.
      const double inside = std::floor(hi / step + 1e-9) - std::ceil(lo / step - 1e-9) + 1;
      const double score = std::abs(inside - target_count);
      if (score <= best_score) {
        best_score = score, best_step = step, best_m = m, best_e = e;
        best_lo = static_cast<long>(k_lo), best_hi = static_cast<long>(k_hi);
      }
    }
  check(best_step > 0, "nice_ticks: [", lo, ", ", hi, "] is too narrow for its magnitude");
  std::vector<double> out;
  for (long k = best_lo; k <= best_hi; ++k) {
    const double v = scaled(static_cast<double>(k) * best_m, best_e);
    if (out.empty() || v > out.back()) out.push_back(v);
  }
  return out;
}

std::vector<double> log_ticks(double lo, double hi) {
  check(std::isfinite(lo) && std::isfinite(hi) && lo > 0 && lo <= hi, "log_ticks: [", lo, ", ", hi,
        "] is not a finite positive range");
  const double a = std::log10(lo), b = std::log10(hi);
  if (b - a < 1) {
    std::vector<double> out;
    for (double v : nice_ticks(lo, hi, 6))
      if (v > 0) out.push_back(v);
    return out;
  }
  const int d0 = static_cast<int>(std::floor(a + 1e-9)), d1 = static_cast<int>(std::ceil(b - 1e-9));
  std::vector<double> out;
  if (b - a <= 3) {
    std::vector<double> all;
    for (int e = d0; e <= d1; ++e)
      for (double m : {1.0, 2.0, 5.0}) all.push_back(scaled(m, e));
    // The last tick <= lo through the first >= hi.
    size_t first = 0, last = all.size() - 1;
    while (first + 1 < all.size() && all[first + 1] <= lo * (1 + 1e-12)) ++first;
    while (last > 0 && all[last - 1] >= hi * (1 - 1e-12)) --last;
    out.assign(all.begin() + static_cast<long>(first), all.begin() + static_cast<long>(last) + 1);
    return out;
  }
  // Beyond 10 decades every n-th power keeps about 8 labels.
  const int stride = (d1 - d0 <= 10) ? 1 : (d1 - d0 + 7) / 8;
  const int first = static_cast<int>(std::floor(static_cast<double>(d0) / stride)) * stride;
  for (int e = first;; e += stride) {
    out.push_back(scaled(1, e));
    if (e >= d1) break;
  }
  return out;
}

namespace {

std::string strip_zeros(std::string s) {  // "2.500" -> "2.5", "3.000" -> "3"
  if (s.find('.') == std::string::npos) return s;
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s;
}

// `v` at `sig` significant digits as a decimal exponent and a mantissa without trailing zeros:
// 0.0025 -> {-3, "2.5"}. Rounding may carry (9.99 at 2 digits -> {1, "1"}).
std::pair<int, std::string> scientific(double v, int sig) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*e", std::clamp(sig, 1, 17) - 1, v);
  const char* e = std::strchr(buf, 'e');
  return {std::atoi(e + 1), strip_zeros(std::string(buf, static_cast<size_t>(e - buf)))};
}

int digit_count(const std::string& s) {
  return static_cast<int>(
      std::count_if(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }));
}

enum class Notation { kAuto, kFixed, kExponent };

// The one formatter behind format_tick and tick_labels. Without a step: up to 4 significant
// digits, trailing zeros dropped. With a step: the digits that tell multiples of the step apart,
// and in fixed notation exactly the step's decimals (1.00 next to 0.98), so an axis reads evenly.
std::string format_number(double value, double step, Notation notation) {
  if (!std::isfinite(value)) return value != value ? "nan" : (value > 0 ? "inf" : "-inf");
  const bool has_step = step > 0 && std::isfinite(step);
  if (has_step && std::abs(value) < 1e-9 * step) value = 0;  // a zero tick up to rounding
  int sig = 4;
  int decimals = -1;  // fixed notation's decimals when the step dictates them
  if (has_step) {
    const auto [e_step, m_step] = scientific(step, 3);  // 0.25 -> {-1, "2.5"}
    const size_t dot = m_step.find('.');
    const int frac = dot == std::string::npos ? 0 : static_cast<int>(m_step.size() - dot - 1);
    decimals = std::max(0, frac - e_step);
    if (value != 0) sig = scientific(value, 1).first - e_step + digit_count(m_step);
  }
  const auto [e, mantissa] = scientific(value, sig);
  const bool exponent = notation == Notation::kExponent ||
                        (notation == Notation::kAuto && value != 0 && (e < -2 || e > 3));
  if (exponent) return value == 0 ? "0" : mantissa + "e" + std::to_string(e);
  if (value == 0 && !has_step) return "0";
  char buf[400];  // fixed notation of up to 1e308 and 17 decimals
  std::snprintf(buf, sizeof buf, "%.*f", has_step ? decimals : std::clamp(sig - 1 - e, 0, 17),
                value);
  std::string out = has_step ? std::string(buf) : strip_zeros(buf);
  // A negative value that rounds to zero would print as "-0.0".
  if (out.front() == '-' && out.find_first_not_of("-0.") == std::string::npos) out.erase(0, 1);
  return out;
}

}  // namespace

std::string format_tick(double value, double step) {
  return format_number(value, step, Notation::kAuto);
}

std::vector<std::string> tick_labels(const std::vector<double>& ticks, double step) {
  // One notation for the whole axis, so 5000 is not followed by 1e4.
  double max_abs = 0, min_abs = INFINITY;
  for (double t : ticks)
    if (std::isfinite(t) && t != 0)
      max_abs = std::max(max_abs, std::abs(t)), min_abs = std::min(min_abs, std::abs(t));
  const bool has_step = step > 0 && std::isfinite(step);
  const bool exponent =
      max_abs >= 1e4 || (max_abs > 0 && max_abs < 1e-2) || (!has_step && min_abs < 1e-2);
  std::vector<std::string> out;
  for (double t : ticks)
    out.push_back(format_number(t, step, exponent ? Notation::kExponent : Notation::kFixed));
  return out;
}

// ---- PNG ----------------------------------------------------------------------------------------

namespace {

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}

void put_chunk(std::vector<uint8_t>& out, const char type[4], const uint8_t* data, size_t size) {
  check(size <= 0x7fffffffu, "PNG chunk of ", size, " bytes is over the format's limit");
  put_u32(out, static_cast<uint32_t>(size));
  const size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data, data + size);
  const uLong crc = crc32(0L, out.data() + start, static_cast<uInt>(4 + size));
  put_u32(out, static_cast<uint32_t>(crc));
}

}  // namespace

std::vector<uint8_t> encode_png_rgb(const uint8_t* rgb, int width, int height) {
  check(rgb != nullptr && width > 0 && height > 0 && width <= 65535 && height <= 65535,
        "encode_png_rgb: bad image ", width, "x", height);
  const size_t stride = static_cast<size_t>(width) * 3;
  // Filter type 0 (None) on every row: on charts (flat colours, thin anti-aliased lines) it gave
  // smaller files than Sub, Up, Average, Paeth or the per-row minimum-sum heuristic, and costs
  // nothing.
  std::vector<uint8_t> filtered((stride + 1) * height);
  for (int y = 0; y < height; ++y) {
    uint8_t* dst = &filtered[(stride + 1) * y];
    dst[0] = 0;
    std::memcpy(dst + 1, rgb + stride * y, stride);
  }
  uLongf packed_size = compressBound(static_cast<uLong>(filtered.size()));
  std::vector<uint8_t> packed(packed_size);
  const int rc = compress2(packed.data(), &packed_size, filtered.data(),
                           static_cast<uLong>(filtered.size()), 6);
  check(rc == Z_OK, "encode_png_rgb: zlib compress2 failed (", rc, ")");

  std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<uint8_t> ihdr;
  put_u32(ihdr, static_cast<uint32_t>(width));
  put_u32(ihdr, static_cast<uint32_t>(height));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit, RGB, deflate, filter method 0, no interlace
  put_chunk(out, "IHDR", ihdr.data(), ihdr.size());
  put_chunk(out, "IDAT", packed.data(), packed_size);
  put_chunk(out, "IEND", nullptr, 0);
  return out;
}

}  // namespace tessera
