#include "common/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tlserve::plot {
namespace {

// The font: each glyph is 7 rows of 5 columns, '#' set, read row by row.
struct Glyph {
  char c;
  const char* rows;  // 35 characters
};

// clang-format off
constexpr Glyph kFont[] = {
    {' ', "....." "....." "....." "....." "....." "....." "....."},
    {'0', ".###." "#...#" "#..##" "#.#.#" "##..#" "#...#" ".###."},
    {'1', "..#.." ".##.." "..#.." "..#.." "..#.." "..#.." ".###."},
    {'2', ".###." "#...#" "....#" "...#." "..#.." ".#..." "#####"},
    {'3', "#####" "...#." "..#.." "...#." "....#" "#...#" ".###."},
    {'4', "...#." "..##." ".#.#." "#..#." "#####" "...#." "...#."},
    {'5', "#####" "#...." "####." "....#" "....#" "#...#" ".###."},
    {'6', "..##." ".#..." "#...." "####." "#...#" "#...#" ".###."},
    {'7', "#####" "....#" "...#." "..#.." ".#..." ".#..." ".#..."},
    {'8', ".###." "#...#" "#...#" ".###." "#...#" "#...#" ".###."},
    {'9', ".###." "#...#" "#...#" ".####" "....#" "...#." ".##.."},
    {'A', ".###." "#...#" "#...#" "#####" "#...#" "#...#" "#...#"},
    {'B', "####." "#...#" "#...#" "####." "#...#" "#...#" "####."},
    {'C', ".###." "#...#" "#...." "#...." "#...." "#...#" ".###."},
    {'D', "####." "#...#" "#...#" "#...#" "#...#" "#...#" "####."},
    {'E', "#####" "#...." "#...." "####." "#...." "#...." "#####"},
    {'F', "#####" "#...." "#...." "####." "#...." "#...." "#...."},
    {'G', ".###." "#...#" "#...." "#.###" "#...#" "#...#" ".####"},
    {'H', "#...#" "#...#" "#...#" "#####" "#...#" "#...#" "#...#"},
    {'I', ".###." "..#.." "..#.." "..#.." "..#.." "..#.." ".###."},
    {'J', "..###" "...#." "...#." "...#." "...#." "#..#." ".##.."},
    {'K', "#...#" "#..#." "#.#.." "##..." "#.#.." "#..#." "#...#"},
    {'L', "#...." "#...." "#...." "#...." "#...." "#...." "#####"},
    {'M', "#...#" "##.##" "#.#.#" "#.#.#" "#...#" "#...#" "#...#"},
    {'N', "#...#" "#...#" "##..#" "#.#.#" "#..##" "#...#" "#...#"},
    {'O', ".###." "#...#" "#...#" "#...#" "#...#" "#...#" ".###."},
    {'P', "####." "#...#" "#...#" "####." "#...." "#...." "#...."},
    {'Q', ".###." "#...#" "#...#" "#...#" "#.#.#" "#..#." ".##.#"},
    {'R', "####." "#...#" "#...#" "####." "#.#.." "#..#." "#...#"},
    {'S', ".####" "#...." "#...." ".###." "....#" "....#" "####."},
    {'T', "#####" "..#.." "..#.." "..#.." "..#.." "..#.." "..#.."},
    {'U', "#...#" "#...#" "#...#" "#...#" "#...#" "#...#" ".###."},
    {'V', "#...#" "#...#" "#...#" "#...#" "#...#" ".#.#." "..#.."},
    {'W', "#...#" "#...#" "#...#" "#.#.#" "#.#.#" "#.#.#" ".#.#."},
    {'X', "#...#" "#...#" ".#.#." "..#.." ".#.#." "#...#" "#...#"},
    {'Y', "#...#" "#...#" ".#.#." "..#.." "..#.." "..#.." "..#.."},
    {'Z', "#####" "....#" "...#." "..#.." ".#..." "#...." "#####"},
    {'.', "....." "....." "....." "....." "....." ".##.." ".##.."},
    {',', "....." "....." "....." "....." ".##.." "..#.." ".#..."},
    {'-', "....." "....." "....." ".###." "....." "....." "....."},
    {'_', "....." "....." "....." "....." "....." "....." "#####"},
    {'/', "....#" "....#" "...#." "..#.." ".#..." "#...." "#...."},
    {'\\', "#...." "#...." ".#..." "..#.." "...#." "....#" "....#"},
    {':', "....." ".##.." ".##.." "....." ".##.." ".##.." "....."},
    {'(', "...#." "..#.." ".#..." ".#..." ".#..." "..#.." "...#."},
    {')', ".#..." "..#.." "...#." "...#." "...#." "..#.." ".#..."},
    {'[', ".###." ".#..." ".#..." ".#..." ".#..." ".#..." ".###."},
    {']', ".###." "...#." "...#." "...#." "...#." "...#." ".###."},
    {'%', "##..#" "##..#" "...#." "..#.." ".#..." "#..##" "#..##"},
    {'+', "....." "..#.." "..#.." "#####" "..#.." "..#.." "....."},
    {'=', "....." "....." "#####" "....." "#####" "....." "....."},
    {'\'', "..#.." "..#.." ".#..." "....." "....." "....." "....."},
    {'?', ".###." "#...#" "....#" "...#." "..#.." "....." "..#.."},
    {'*', "....." "..#.." "#.#.#" ".###." "#.#.#" "..#.." "....."},
    {'<', "...#." "..#.." ".#..." "#...." ".#..." "..#.." "...#."},
    {'>', ".#..." "..#.." "...#." "....#" "...#." "..#.." ".#..."},
    {'#', ".#.#." ".#.#." "#####" ".#.#." "#####" ".#.#." ".#.#."},
    {'&', ".##.." "#..#." "#.#.." ".#..." "#.#.#" "#..#." ".##.#"},
};
constexpr const char* kUnknownGlyph =
    "#####" "#...#" "#...#" "#...#" "#...#" "#...#" "#####";
// clang-format on

const char* GlyphRows(char c) {
  const char upper = absl::ascii_toupper(static_cast<unsigned char>(c));
  for (const Glyph& g : kFont) {
    if (g.c == upper) return g.rows;
  }
  return kUnknownGlyph;
}

int ClampSide(int v) { return std::clamp(v, 1, 8192); }

std::string TickText(double v, int decimals) {
  if (std::fabs(v) < 1e-12) v = 0;  // no "-0.0"
  return absl::StrFormat("%.*f", decimals, v);
}

// Scales a value into [p0, p1] pixels given the axis range [v0, v1].
double Scale(double v, double v0, double v1, double p0, double p1) {
  if (v1 == v0) return (p0 + p1) / 2;
  return p0 + (v - v0) / (v1 - v0) * (p1 - p0);
}

Rgb Mix(Rgb a, Rgb b, double t) {
  t = std::clamp(t, 0.0, 1.0);
  auto lerp = [t](uint8_t x, uint8_t y) {
    return static_cast<uint8_t>(std::lround(x + (y - x) * t));
  };
  return {lerp(a.r, b.r), lerp(a.g, b.g), lerp(a.b, b.b)};
}

std::string Truncate(const std::string& s, size_t max_chars) {
  if (s.size() <= max_chars) return s;
  return s.substr(0, max_chars - 1) + ".";
}

constexpr int kTextScale = 2;

// Plot-area margins of a panel: tick labels on the left, a little air on
// the right.
constexpr int kPanelLeft = 78;
constexpr int kPanelRight = 16;
// A legend entry: colour swatch, gap, name; entries 18 pixels apart, rows
// 8 pixels apart.
constexpr int kSwatch = 26;
constexpr int kEntryGap = 18;
constexpr int kLegendRowGap = 8;

struct LegendEntry {
  std::string name;
  int row = 0;
  int x = 0;  // from the plot area's left edge
};

// Entries left to right, wrapping to a new row when the next one would
// pass `width`; a name longer than a whole row is shortened.
std::vector<LegendEntry> LayoutLegend(const LinePanel& panel, int width) {
  const int max_chars =
      std::max(2, (width - kSwatch + kTextScale) / (kGlyphAdvance * kTextScale));
  std::vector<LegendEntry> entries;
  int row = 0;
  int x = 0;
  for (const Series& s : panel.series) {
    LegendEntry e;
    e.name = Truncate(s.name, static_cast<size_t>(max_chars));
    const int w = kSwatch + TextWidth(e.name, kTextScale);
    if (x > 0 && x + w > width) {
      ++row;
      x = 0;
    }
    e.row = row;
    e.x = x;
    entries.push_back(std::move(e));
    x += w + kEntryGap;
  }
  return entries;
}

int ClampPanelWidth(int w) { return std::clamp(w, 200, 4096); }

void DrawPanel(Canvas& canvas, int ox, int w, int h, const LinePanel& panel) {
  // Margins leave room for tick labels (left, bottom), the title (top),
  // and the x label plus the legend (bottom), which may wrap onto more
  // rows.
  const int th = TextHeight(kTextScale);
  const int left = ox + kPanelLeft;
  const int right = ox + w - kPanelRight;
  const std::vector<LegendEntry> legend = LayoutLegend(panel, right - left);
  const int legend_rows = legend.empty() ? 1 : legend.back().row + 1;
  const int top = 16 + th + 14;
  const int bottom = h - (12 + th + 10 + th + 12 + th + 10) -
                     (legend_rows - 1) * LegendRowHeight();

  canvas.DrawText(ox + (w - TextWidth(panel.title, kTextScale)) / 2, 14,
                  panel.title, kBlack, kTextScale);

  double x_lo = INFINITY, x_hi = -INFINITY, y_lo = INFINITY, y_hi = -INFINITY;
  for (const Series& s : panel.series) {
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      x_lo = std::min(x_lo, s.x[i]);
      x_hi = std::max(x_hi, s.x[i]);
      y_lo = std::min(y_lo, s.y[i]);
      y_hi = std::max(y_hi, s.y[i]);
    }
  }
  if (!std::isfinite(x_lo)) x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  if (panel.y_min < panel.y_max) {
    y_lo = std::min(y_lo, panel.y_min);
    y_hi = std::max(y_hi, panel.y_max);
  }
  Ticks xt = NiceTicks(x_lo, x_hi, 6);
  if (panel.integer_x && !xt.values.empty() && xt.values.size() > 1 &&
      xt.values[1] - xt.values[0] < 1) {
    xt.values.clear();
    for (double v = std::floor(x_lo); v <= std::ceil(x_hi) + 1e-9; v += 1) {
      xt.values.push_back(v);
    }
    if (xt.values.size() == 1) xt.values.push_back(xt.values[0] + 1);
    xt.decimals = 0;
  }
  const Ticks yt = NiceTicks(y_lo, y_hi, 5);
  const double x0 = xt.values.front(), x1 = xt.values.back();
  const double y0 = yt.values.front(), y1 = yt.values.back();

  for (double v : yt.values) {
    const int py = static_cast<int>(std::lround(Scale(v, y0, y1, bottom, top)));
    canvas.DrawLine(left, py, right, py, kGrid);
    canvas.DrawLine(left - 5, py, left, py, kBlack);
    const std::string text = TickText(v, yt.decimals);
    canvas.DrawText(left - 9 - TextWidth(text, kTextScale), py - th / 2, text,
                    kBlack, kTextScale);
  }
  for (double v : xt.values) {
    const int px = static_cast<int>(std::lround(Scale(v, x0, x1, left, right)));
    canvas.DrawLine(px, top, px, bottom, kGrid);
    canvas.DrawLine(px, bottom, px, bottom + 5, kBlack);
    const std::string text = TickText(v, xt.decimals);
    canvas.DrawText(px - TextWidth(text, kTextScale) / 2, bottom + 10, text,
                    kBlack, kTextScale);
  }
  canvas.DrawRect(left, top, right - left + 1, bottom - top + 1, kBlack);
  const int x_label_y = bottom + 10 + th + 10;
  canvas.DrawText((left + right - TextWidth(panel.x_label, kTextScale)) / 2,
                  x_label_y, panel.x_label, kBlack, kTextScale);

  const int legend_y = x_label_y + th + 12;
  for (size_t i = 0; i < legend.size(); ++i) {
    const int x = left + legend[i].x;
    const int y = legend_y + legend[i].row * LegendRowHeight();
    canvas.FillRect(x, y + th / 2 - 1, 20, 3, panel.series[i].color);
    canvas.DrawText(x + kSwatch, y, legend[i].name, kBlack, kTextScale);
  }

  for (const Series& s : panel.series) {
    bool have_prev = false;
    int px_prev = 0, py_prev = 0;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
        have_prev = false;
        continue;
      }
      const int px =
          static_cast<int>(std::lround(Scale(s.x[i], x0, x1, left, right)));
      const int py =
          static_cast<int>(std::lround(Scale(s.y[i], y0, y1, bottom, top)));
      if (have_prev) canvas.DrawLine(px_prev, py_prev, px, py, s.color, 2);
      canvas.FillRect(px - 2, py - 2, 5, 5, s.color);
      have_prev = true;
      px_prev = px;
      py_prev = py;
    }
  }
}

}  // namespace

Canvas::Canvas(int width, int height, Rgb background) {
  image_.width = ClampSide(width);
  image_.height = ClampSide(height);
  image_.channels = 3;
  image_.pixels.resize(static_cast<size_t>(image_.width) * image_.height * 3);
  for (size_t i = 0; i < image_.pixels.size(); i += 3) {
    image_.pixels[i] = background.r;
    image_.pixels[i + 1] = background.g;
    image_.pixels[i + 2] = background.b;
  }
}

Rgb Canvas::At(int x, int y) const {
  if (x < 0 || y < 0 || x >= width() || y >= height()) return {};
  const size_t i = (static_cast<size_t>(y) * width() + x) * 3;
  return {image_.pixels[i], image_.pixels[i + 1], image_.pixels[i + 2]};
}

void Canvas::SetPixel(int x, int y, Rgb color) {
  if (x < 0 || y < 0 || x >= width() || y >= height()) return;
  const size_t i = (static_cast<size_t>(y) * width() + x) * 3;
  image_.pixels[i] = color.r;
  image_.pixels[i + 1] = color.g;
  image_.pixels[i + 2] = color.b;
}

void Canvas::FillRect(int x, int y, int w, int h, Rgb color) {
  const int x_end = std::min(width(), x + w);
  const int y_end = std::min(height(), y + h);
  for (int yy = std::max(0, y); yy < y_end; ++yy) {
    for (int xx = std::max(0, x); xx < x_end; ++xx) SetPixel(xx, yy, color);
  }
}

void Canvas::DrawRect(int x, int y, int w, int h, Rgb color) {
  if (w <= 0 || h <= 0) return;
  FillRect(x, y, w, 1, color);
  FillRect(x, y + h - 1, w, 1, color);
  FillRect(x, y, 1, h, color);
  FillRect(x + w - 1, y, 1, h, color);
}

void Canvas::DrawLine(int x0, int y0, int x1, int y1, Rgb color,
                      int thickness) {
  thickness = std::clamp(thickness, 1, 64);
  const int offset = (thickness - 1) / 2;
  const int dx = std::abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
  const int dy = -std::abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  // Lines far outside the canvas are cut short rather than walked.
  const int limit = 4 * (width() + height()) + dx - dy;
  for (int steps = 0; steps <= limit; ++steps) {
    if (thickness == 1) {
      SetPixel(x0, y0, color);
    } else {
      FillRect(x0 - offset, y0 - offset, thickness, thickness, color);
    }
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      x0 += sx;
    }
    if (e2 <= dx) {
      err += dx;
      y0 += sy;
    }
  }
}

void Canvas::DrawGlyph(int x, int y, char c, Rgb color, int scale, bool up) {
  const char* rows = GlyphRows(c);
  for (int gy = 0; gy < kGlyphHeight; ++gy) {
    for (int gx = 0; gx < kGlyphWidth; ++gx) {
      if (rows[gy * kGlyphWidth + gx] != '#') continue;
      if (up) {
        // (gx, gy) -> (gy, -gx): a quarter turn to the left.
        FillRect(x + gy * scale, y - (gx + 1) * scale + 1, scale, scale, color);
      } else {
        FillRect(x + gx * scale, y + gy * scale, scale, scale, color);
      }
    }
  }
}

void Canvas::DrawText(int x, int y, std::string_view text, Rgb color,
                      int scale) {
  scale = std::clamp(scale, 1, 16);
  for (char c : text) {
    DrawGlyph(x, y, c, color, scale, false);
    x += kGlyphAdvance * scale;
  }
}

void Canvas::DrawTextUp(int x, int y, std::string_view text, Rgb color,
                        int scale) {
  scale = std::clamp(scale, 1, 16);
  for (char c : text) {
    DrawGlyph(x, y, c, color, scale, true);
    y -= kGlyphAdvance * scale;
  }
}

absl::StatusOr<std::string> Canvas::EncodePng() const {
  return ::tlserve::EncodePng(image_);
}

int TextWidth(std::string_view text, int scale) {
  if (text.empty()) return 0;
  scale = std::clamp(scale, 1, 16);
  return static_cast<int>(text.size()) * kGlyphAdvance * scale - scale;
}

int TextHeight(int scale) { return kGlyphHeight * std::clamp(scale, 1, 16); }

Ticks NiceTicks(double lo, double hi, int target) {
  Ticks ticks;
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (lo > hi) std::swap(lo, hi);
  if (hi - lo < 1e-12) {
    const double pad = std::max(std::fabs(lo) * 0.1, 0.5);
    lo -= pad;
    hi += pad;
  }
  target = std::clamp(target, 2, 20);
  const double raw = (hi - lo) / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double n = raw / magnitude;
  const double step = (n < 1.5   ? 1.0
                       : n < 3.0 ? 2.0
                       : n < 7.0 ? 5.0
                                 : 10.0) *
                      magnitude;
  const double first = std::floor(lo / step + 1e-9);
  const double last = std::ceil(hi / step - 1e-9);
  for (double i = first; i <= last; i += 1) ticks.values.push_back(i * step);
  ticks.decimals =
      std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  return ticks;
}

int LegendRows(const LinePanel& panel, int panel_width) {
  const std::vector<LegendEntry> legend = LayoutLegend(
      panel, ClampPanelWidth(panel_width) - kPanelLeft - kPanelRight);
  return legend.empty() ? 1 : legend.back().row + 1;
}

int LegendRowHeight() { return TextHeight(kTextScale) + kLegendRowGap; }

absl::StatusOr<Canvas> DrawLineCharts(const std::vector<LinePanel>& panels,
                                      int panel_width, int panel_height) {
  for (const LinePanel& panel : panels) {
    for (const Series& s : panel.series) {
      if (s.x.size() != s.y.size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "plot '", panel.title, "': series '", s.name, "' has ", s.x.size(),
            " x values and ", s.y.size(), " y values"));
      }
    }
  }
  panel_width = ClampPanelWidth(panel_width);
  panel_height = std::clamp(panel_height, 200, 4096);
  const int n = std::max<int>(1, static_cast<int>(panels.size()));
  Canvas canvas(panel_width * n, panel_height);
  for (size_t i = 0; i < panels.size(); ++i) {
    DrawPanel(canvas, static_cast<int>(i) * panel_width, panel_width,
              panel_height, panels[i]);
  }
  return canvas;
}

absl::StatusOr<Canvas> DrawHeatmap(const Heatmap& heatmap) {
  const size_t k = heatmap.labels.size();
  if (k == 0 || heatmap.values.size() != k * k) {
    return absl::InvalidArgumentError(
        absl::StrCat("heatmap '", heatmap.title, "': ", heatmap.values.size(),
                     " values for ", k, " labels; want labels squared"));
  }
  if (k > 200) {
    return absl::InvalidArgumentError(
        absl::StrCat("heatmap '", heatmap.title, "': ", k,
                     " classes is more than a readable 200"));
  }
  const int th = TextHeight(kTextScale);
  const int cell = std::clamp(480 / static_cast<int>(k), 12, 64);
  // Counts in a cell: as big as fits.
  int count_digits = 1;
  for (int64_t v : heatmap.values) {
    count_digits =
        std::max<int>(count_digits, static_cast<int>(absl::StrCat(v).size()));
  }
  const int count_scale =
      TextWidth(std::string(count_digits, '0'), 2) <= cell - 6 &&
              TextHeight(2) <= cell - 6
          ? 2
          : 1;
  const bool write_counts =
      TextWidth(std::string(count_digits, '0'), count_scale) <= cell - 2 &&
      TextHeight(count_scale) <= cell - 2;

  std::vector<std::string> labels;
  int label_width = 0;
  for (const std::string& l : heatmap.labels) {
    labels.push_back(Truncate(l, 16));
    label_width = std::max(label_width, TextWidth(labels.back(), kTextScale));
  }
  const int matrix = cell * static_cast<int>(k);
  const int left = 12 + th + 12 + label_width + 10;
  const int top = 16 + th + 20;
  const int width =
      std::max(left + matrix + 24, TextWidth(heatmap.title, kTextScale) + 32);
  const int height = top + matrix + 10 + label_width + 14 + th + 14;
  Canvas canvas(width, height);
  canvas.DrawText((width - TextWidth(heatmap.title, kTextScale)) / 2, 14,
                  heatmap.title, kBlack, kTextScale);

  const Rgb kLow{247, 251, 255};
  const Rgb kHigh{8, 48, 107};
  for (size_t r = 0; r < k; ++r) {
    int64_t row_total = 0;
    for (size_t c = 0; c < k; ++c) row_total += heatmap.values[r * k + c];
    for (size_t c = 0; c < k; ++c) {
      const int64_t v = heatmap.values[r * k + c];
      const double share =
          row_total > 0 ? static_cast<double>(v) / row_total : 0.0;
      const int x = left + static_cast<int>(c) * cell;
      const int y = top + static_cast<int>(r) * cell;
      canvas.FillRect(x, y, cell, cell, Mix(kLow, kHigh, share));
      if (write_counts) {
        const std::string text = absl::StrCat(v);
        canvas.DrawText(x + (cell - TextWidth(text, count_scale)) / 2,
                        y + (cell - TextHeight(count_scale)) / 2, text,
                        share > 0.5 ? kWhite : kBlack, count_scale);
      }
    }
    // Row label, right-aligned against the matrix.
    const int ly = top + static_cast<int>(r) * cell + (cell - th) / 2;
    canvas.DrawText(left - 10 - TextWidth(labels[r], kTextScale), ly, labels[r],
                    kBlack, kTextScale);
    // Column label, rising from below the matrix.
    const int lx = left + static_cast<int>(r) * cell + (cell - th) / 2;
    canvas.DrawTextUp(lx, top + matrix + 10 + TextWidth(labels[r], kTextScale),
                      labels[r], kBlack, kTextScale);
  }
  for (size_t i = 0; i <= k; ++i) {
    const int p = static_cast<int>(i) * cell;
    canvas.DrawLine(left + p, top, left + p, top + matrix, kGrid);
    canvas.DrawLine(left, top + p, left + matrix, top + p, kGrid);
  }
  canvas.DrawRect(left, top, matrix + 1, matrix + 1, kBlack);
  canvas.DrawTextUp(
      12, top + (matrix + TextWidth(heatmap.row_axis, kTextScale)) / 2,
      heatmap.row_axis, kBlack, kTextScale);
  canvas.DrawText(
      left + (matrix - TextWidth(heatmap.column_axis, kTextScale)) / 2,
      top + matrix + 10 + label_width + 14, heatmap.column_axis, kBlack,
      kTextScale);
  return canvas;
}

}  // namespace tlserve::plot
