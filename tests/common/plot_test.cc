#include "common/plot.h"

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "common/image.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve::plot {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

int CountColor(const Canvas& canvas, Rgb color) {
  int n = 0;
  for (int y = 0; y < canvas.height(); ++y) {
    for (int x = 0; x < canvas.width(); ++x) n += canvas.At(x, y) == color;
  }
  return n;
}

// With TLSERVE_PLOT_DIR set, tests leave their PNGs there to look at.
void MaybeSave(const Canvas& canvas, const std::string& name) {
  const char* dir = std::getenv("TLSERVE_PLOT_DIR");
  if (dir == nullptr) return;
  std::ofstream(std::string(dir) + "/" + name, std::ios::binary)
      << *canvas.EncodePng();
}

TEST(CanvasTest, StartsWithBackgroundAndClipsDrawing) {
  Canvas canvas(20, 10, kWhite);
  EXPECT_EQ(canvas.width(), 20);
  EXPECT_EQ(canvas.height(), 10);
  EXPECT_EQ(CountColor(canvas, kWhite), 200);
  canvas.FillRect(-5, -5, 10, 10, kRed);  // only 5x5 lands
  EXPECT_EQ(CountColor(canvas, kRed), 25);
  canvas.SetPixel(100, 100, kRed);  // ignored
  EXPECT_EQ(canvas.At(100, 100), (Rgb{}));
}

TEST(CanvasTest, LinesHitTheirEndpointsAndThePixelsBetween) {
  Canvas canvas(50, 50);
  canvas.DrawLine(0, 0, 49, 49, kBlue);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(canvas.At(i, i), kBlue) << i;
  EXPECT_EQ(CountColor(canvas, kBlue), 50);
  canvas.DrawLine(10, 40, 40, 40, kRed, 3);
  EXPECT_EQ(canvas.At(25, 39), kRed);
  EXPECT_EQ(canvas.At(25, 41), kRed);
  EXPECT_EQ(canvas.At(25, 43), kWhite);
  // A 3-pixel square stamp reaches one pixel past each end.
  EXPECT_EQ(CountColor(canvas, kRed), 33 * 3);
}

TEST(CanvasTest, RectOutlineLeavesInsideEmpty) {
  Canvas canvas(10, 10);
  canvas.DrawRect(2, 2, 5, 4, kBlack);
  EXPECT_EQ(CountColor(canvas, kBlack), 2 * 5 + 2 * 2);
  EXPECT_EQ(canvas.At(4, 4), kWhite);
  EXPECT_EQ(canvas.At(6, 5), kBlack);
}

TEST(CanvasTest, TextUsesTheGlyphsAndTurnsUp) {
  EXPECT_EQ(TextWidth("AB", 1), 11);
  EXPECT_EQ(TextWidth("AB", 2), 22);
  EXPECT_EQ(TextWidth("", 2), 0);
  EXPECT_EQ(TextHeight(3), 21);
  Canvas canvas(20, 10);
  // '1': its stem is column 2 in rows 0-6, plus the foot and the flag.
  canvas.DrawText(0, 0, "1", kBlack);
  for (int y = 0; y < 7; ++y) EXPECT_EQ(canvas.At(2, y), kBlack) << y;
  EXPECT_EQ(canvas.At(0, 0), kWhite);
  EXPECT_EQ(CountColor(canvas, kBlack), 7 + 1 + 2);
  // Lower case draws like upper case.
  Canvas a(6, 7), b(6, 7);
  a.DrawText(0, 0, "e", kBlack);
  b.DrawText(0, 0, "E", kBlack);
  EXPECT_EQ(a.image().pixels, b.image().pixels);
  // Turned up, the stem of '1' becomes a row: x 0..6 at y = 9 - 2.
  Canvas up(10, 10);
  up.DrawTextUp(0, 9, "1", kBlack);
  for (int x = 0; x < 7; ++x) EXPECT_EQ(up.At(x, 7), kBlack) << x;
  EXPECT_EQ(CountColor(up, kBlack), 10);
}

TEST(NiceTicksTest, RoundStepsCoveringTheRange) {
  Ticks t = NiceTicks(0, 1, 5);
  EXPECT_THAT(t.values, ElementsAre(0, 0.2, 0.4, 0.6000000000000001, 0.8, 1));
  EXPECT_EQ(t.decimals, 1);
  t = NiceTicks(0.37, 2.41, 5);
  EXPECT_DOUBLE_EQ(t.values.front(), 0.0);
  EXPECT_DOUBLE_EQ(t.values.back(), 2.5);
  EXPECT_EQ(t.decimals, 1);
  t = NiceTicks(1, 30, 6);
  EXPECT_THAT(t.values, ElementsAre(0, 5, 10, 15, 20, 25, 30));
  EXPECT_EQ(t.decimals, 0);
  t = NiceTicks(3, 3, 5);  // a flat line still gets an axis
  EXPECT_GE(t.values.size(), 2u);
  EXPECT_LT(t.values.front(), 3);
  EXPECT_GT(t.values.back(), 3);
}

TEST(LineChartTest, DrawsSeriesAxesAndDecodesBack) {
  LinePanel loss;
  loss.title = "Loss";
  loss.x_label = "epoch";
  loss.integer_x = true;
  loss.series.push_back({"train", kBlue, {1, 2, 3, 4}, {2.0, 1.2, 0.8, 0.6}});
  loss.series.push_back({"val", kOrange, {1, 2, 3, 4}, {2.1, 1.5, 1.1, 1.0}});
  LinePanel acc;
  acc.title = "Accuracy";
  acc.x_label = "epoch";
  acc.integer_x = true;
  acc.y_min = 0;
  acc.y_max = 1;
  acc.series.push_back({"train", kBlue, {1, 2, 3, 4}, {0.3, 0.6, 0.8, 0.9}});
  absl::StatusOr<Canvas> canvas = DrawLineCharts({loss, acc}, 400, 300);
  ASSERT_TRUE(canvas.ok()) << canvas.status();
  EXPECT_EQ(canvas->width(), 800);
  EXPECT_EQ(canvas->height(), 300);
  // Both panels have their series' colours: lines, markers and legend.
  int blue_left = 0, blue_right = 0;
  for (int y = 0; y < 300; ++y) {
    for (int x = 0; x < 800; ++x) {
      if (canvas->At(x, y) == kBlue) (x < 400 ? blue_left : blue_right)++;
    }
  }
  EXPECT_GT(blue_left, 100);
  EXPECT_GT(blue_right, 100);
  EXPECT_GT(CountColor(*canvas, kOrange), 100);
  EXPECT_GT(CountColor(*canvas, kBlack), 500);  // axes, ticks, text

  absl::StatusOr<std::string> png = canvas->EncodePng();
  ASSERT_TRUE(png.ok()) << png.status();
  absl::StatusOr<Image> back = DecodeImage(*png);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->width, 800);
  EXPECT_EQ(back->height, 300);
  EXPECT_EQ(back->channels, 3);
  EXPECT_EQ(back->pixels, canvas->image().pixels);
  MaybeSave(*canvas, "plot_test_curves.png");
}

TEST(LineChartTest, MarkersSitWhereTheDataSays) {
  // One series rising from the bottom-left to the top-right corner of the
  // plot area: the first marker is low and left, the last high and right.
  LinePanel p;
  p.series.push_back({"s", kRed, {0, 10}, {0, 1}});
  p.y_min = 0;
  p.y_max = 1;
  absl::StatusOr<Canvas> canvas = DrawLineCharts({p}, 300, 300);
  ASSERT_TRUE(canvas.ok());
  int min_x = 1 << 30, max_x = -1, y_at_min_x = 0, y_at_max_x = 0;
  for (int y = 0; y < canvas->height(); ++y) {
    for (int x = 0; x < canvas->width(); ++x) {
      if (canvas->At(x, y) != kRed) continue;
      // The legend swatch is below the plot; skip the bottom band.
      if (y > canvas->height() - 60) continue;
      if (x < min_x) min_x = x, y_at_min_x = y;
      if (x > max_x) max_x = x, y_at_max_x = y;
    }
  }
  ASSERT_GE(max_x, 0);
  EXPECT_GT(max_x - min_x, 150);
  EXPECT_GT(y_at_min_x - y_at_max_x, 100);
}

TEST(LineChartTest, RejectsMismatchedSeries) {
  LinePanel p;
  p.title = "t";
  p.series.push_back({"bad", kRed, {1, 2}, {1}});
  absl::StatusOr<Canvas> canvas = DrawLineCharts({p});
  ASSERT_FALSE(canvas.ok());
  EXPECT_THAT(std::string(canvas.status().message()),
              HasSubstr("'bad' has 2 x values and 1 y values"));
}

TEST(LineChartTest, LongLegendsWrapOntoRowsInsideThePanel) {
  LinePanel p;
  p.integer_x = true;
  for (int i = 0; i < kPaletteSize; ++i) {
    p.series.push_back({"job-with-a-long-name-" + std::to_string(i),
                        kPalette[i],
                        {1, 2, 3},
                        {0.1 * i, 0.1 * i + 0.05, 0.1 * i + 0.1}});
  }
  const int rows = LegendRows(p, 600);
  EXPECT_GT(rows, 2);
  absl::StatusOr<Canvas> canvas = DrawLineCharts({p}, 600, 500);
  ASSERT_TRUE(canvas.ok()) << canvas.status();
  // Every series' colour is drawn, and the legend's rows (the bottom band)
  // stay inside the plot's right margin rather than running off the
  // canvas.
  for (int i = 0; i < kPaletteSize; ++i) {
    EXPECT_GT(CountColor(*canvas, kPalette[i]), 20) << i;
  }
  for (int y = canvas->height() - 20 * rows; y < canvas->height(); ++y) {
    for (int x = canvas->width() - 15; x < canvas->width(); ++x) {
      ASSERT_EQ(canvas->At(x, y), kWhite) << x << "," << y;
    }
  }
  // A legend that fits keeps one row.
  LinePanel two;
  two.series.push_back({"train", kBlue, {1}, {1}});
  two.series.push_back({"val", kOrange, {1}, {1}});
  EXPECT_EQ(LegendRows(two, 480), 1);
  EXPECT_EQ(LegendRows(LinePanel{}, 480), 1);
  MaybeSave(*canvas, "plot_test_legend.png");
}

TEST(PaletteTest, ColoursAreDistinct) {
  for (int i = 0; i < kPaletteSize; ++i) {
    EXPECT_NE(kPalette[i], kWhite);
    EXPECT_NE(kPalette[i], kBlack);
    for (int j = i + 1; j < kPaletteSize; ++j) {
      EXPECT_NE(kPalette[i], kPalette[j]) << i << " " << j;
    }
  }
}

TEST(HeatmapTest, ShadesByRowShareAndDecodesBack) {
  Heatmap h;
  h.title = "Confusion";
  h.row_axis = "true";
  h.column_axis = "predicted";
  h.labels = {"cat", "dog", "bird"};
  h.values = {10, 0, 0, 2, 8, 0, 0, 5, 5};
  absl::StatusOr<Canvas> canvas = DrawHeatmap(h);
  ASSERT_TRUE(canvas.ok()) << canvas.status();
  EXPECT_GT(canvas->width(), 3 * 64);
  EXPECT_GT(canvas->height(), 3 * 64);
  // The darkest colour fills the cell of a row that is all one class.
  EXPECT_GT(CountColor(*canvas, Rgb{8, 48, 107}), 64 * 64 / 2);
  absl::StatusOr<Image> back = DecodeImage(*canvas->EncodePng());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->width, canvas->width());
  EXPECT_EQ(back->height, canvas->height());
  MaybeSave(*canvas, "plot_test_heatmap.png");
}

TEST(HeatmapTest, RejectsWrongSize) {
  Heatmap h;
  h.labels = {"a", "b"};
  h.values = {1, 2, 3};
  EXPECT_EQ(DrawHeatmap(h).status().code(), absl::StatusCode::kInvalidArgument);
  h.labels.clear();
  h.values.clear();
  EXPECT_FALSE(DrawHeatmap(h).ok());
}

}  // namespace
}  // namespace tlserve::plot
