#ifndef TLSERVE_COMMON_PLOT_H_
#define TLSERVE_COMMON_PLOT_H_

// A tiny rasteriser for the charts tlctl writes (learning curves, confusion
// heatmaps): an RGB canvas with lines, rectangles and text in a built-in
// 5x7 bitmap font, plus two chart layouts on top. No dependencies beyond
// the PNG encoder, so the CLI stays free of plotting libraries.
//
// The font has digits, upper-case letters and common punctuation; lower
// case is drawn in upper case and anything else as a hollow box.
// Not thread-safe: one owner draws on a Canvas.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/image.h"

namespace tlserve::plot {

struct Rgb {
  uint8_t r = 0;
  uint8_t g = 0;
  uint8_t b = 0;
  bool operator==(const Rgb& o) const {
    return r == o.r && g == o.g && b == o.b;
  }
  bool operator!=(const Rgb& o) const { return !(*this == o); }
};

inline constexpr Rgb kWhite{255, 255, 255};
inline constexpr Rgb kBlack{0, 0, 0};
inline constexpr Rgb kGrid{225, 225, 225};
inline constexpr Rgb kBlue{31, 119, 180};
inline constexpr Rgb kOrange{255, 127, 14};
inline constexpr Rgb kGreen{44, 160, 44};
inline constexpr Rgb kRed{214, 39, 40};
inline constexpr Rgb kPurple{148, 103, 189};
inline constexpr Rgb kBrown{140, 86, 75};
inline constexpr Rgb kPink{227, 119, 194};
inline constexpr Rgb kGray{127, 127, 127};
inline constexpr Rgb kOlive{188, 189, 34};
inline constexpr Rgb kCyan{23, 190, 207};

// Distinct series colours, in the order charts hand them out; a chart with
// more series than this repeats colours, so callers cap their series.
inline constexpr Rgb kPalette[] = {kBlue,  kOrange, kGreen, kRed,   kPurple,
                                   kBrown, kPink,   kGray,  kOlive, kCyan};
inline constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

// Glyph cell of the built-in font at scale 1 (5x7 glyph plus spacing).
inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 7;
inline constexpr int kGlyphAdvance = 6;

class Canvas {
 public:
  // Sizes are clamped to [1, 8192].
  Canvas(int width, int height, Rgb background = kWhite);

  int width() const { return image_.width; }
  int height() const { return image_.height; }
  Rgb At(int x, int y) const;
  const Image& image() const { return image_; }

  // Everything below clips to the canvas.
  void SetPixel(int x, int y, Rgb color);
  void FillRect(int x, int y, int w, int h, Rgb color);
  // A one-pixel outline.
  void DrawRect(int x, int y, int w, int h, Rgb color);
  // Bresenham line; `thickness` > 1 stamps a square of that side.
  void DrawLine(int x0, int y0, int x1, int y1, Rgb color, int thickness = 1);
  // Text with its top-left corner at (x, y), glyphs scaled by `scale`.
  void DrawText(int x, int y, std::string_view text, Rgb color, int scale = 1);
  // Text turned a quarter left (read bottom to top): it fills x to
  // x + TextHeight - 1 and rises from y to y - TextWidth + 1.
  void DrawTextUp(int x, int y, std::string_view text, Rgb color,
                  int scale = 1);

  absl::StatusOr<std::string> EncodePng() const;

 private:
  void DrawGlyph(int x, int y, char c, Rgb color, int scale, bool up);

  Image image_;
};

// Pixel size of `text` drawn at `scale` (no trailing spacing).
int TextWidth(std::string_view text, int scale = 1);
int TextHeight(int scale = 1);

// Up to about `target` evenly spaced round values (steps of 1, 2 or 5 times
// a power of ten) covering [lo, hi], and the decimals they need.
struct Ticks {
  std::vector<double> values;
  int decimals = 0;
};
Ticks NiceTicks(double lo, double hi, int target = 5);

struct Series {
  std::string name;
  Rgb color = kBlue;
  // Points in order; x and y have the same length. Non-finite values
  // break the line.
  std::vector<double> x;
  std::vector<double> y;
};

struct LinePanel {
  std::string title;
  std::string x_label;
  std::vector<Series> series;
  // x ticks at whole numbers only (epochs).
  bool integer_x = false;
  // Fixed y range when y_min < y_max (e.g. [0, 1] for accuracy); otherwise
  // the data's range with a margin.
  double y_min = 0;
  double y_max = 0;
};

// Rows the panel's legend takes at `panel_width`: entries wrap onto more
// rows when they do not fit on one (each extra row takes plot height), and
// names too long for a row are shortened. Callers with many series use it
// to size the chart.
int LegendRows(const LinePanel& panel, int panel_width);
// Pixels each legend row after the first takes from the plot.
int LegendRowHeight();

// Panels side by side, each `panel_width` x `panel_height`, with axes,
// tick labels, a grid and a legend. INVALID_ARGUMENT if a series' x and y
// differ in length.
absl::StatusOr<Canvas> DrawLineCharts(const std::vector<LinePanel>& panels,
                                      int panel_width = 420,
                                      int panel_height = 300);

struct Heatmap {
  std::string title;
  std::string row_axis;             // e.g. "TRUE"
  std::string column_axis;          // e.g. "PREDICTED"
  std::vector<std::string> labels;  // k names, for rows and columns
  // Row-major k x k counts. Colour is the count over its row's total, so
  // each row shows where that true class went; the count is written in.
  std::vector<int64_t> values;
};

// INVALID_ARGUMENT if values is not labels.size() squared or empty.
absl::StatusOr<Canvas> DrawHeatmap(const Heatmap& heatmap);

}  // namespace tlserve::plot

#endif  // TLSERVE_COMMON_PLOT_H_
