#include "common/image_transforms.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <utility>
#include <vector>

#include "common/image.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

// Distinct-ish values per (channel, row, column), stored planar [C, H, W].
std::vector<uint8_t> PlanarPattern(int channels, int height, int width) {
  std::vector<uint8_t> out;
  for (int c = 0; c < channels; ++c) {
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        out.push_back(static_cast<uint8_t>(c * 83 + y * 19 + x * 7 + 3));
      }
    }
  }
  return out;
}

std::vector<uint8_t> ToInterleaved(const std::vector<uint8_t>& planar,
                                   int channels, int height, int width) {
  std::vector<uint8_t> out(planar.size());
  for (int c = 0; c < channels; ++c) {
    for (int i = 0; i < height * width; ++i) {
      out[static_cast<size_t>(i) * channels + c] =
          planar[c * height * width + i];
    }
  }
  return out;
}

std::vector<uint8_t> CropResized(const ImageView& src, const CropBox& box,
                                 int out_h, int out_w, bool flip) {
  std::vector<uint8_t> out(static_cast<size_t>(src.channels) * out_h * out_w,
                           0xAB);
  CropResize(src, box, out_h, out_w, flip, out.data());
  return out;
}

TEST(CropResizeTest, WholeImageAtSameSizeIsIdentityForPlanarAndInterleaved) {
  const int c = 3, h = 5, w = 7;
  const std::vector<uint8_t> planar = PlanarPattern(c, h, w);
  const std::vector<uint8_t> interleaved = ToInterleaved(planar, c, h, w);
  const CropBox whole{0, 0, h, w};
  EXPECT_EQ(CropResized({planar.data(), c, h, w, /*planar=*/true}, whole, h, w,
                        false),
            planar);
  EXPECT_EQ(CropResized({interleaved.data(), c, h, w, /*planar=*/false}, whole,
                        h, w, false),
            planar);
}

TEST(CropResizeTest, InterleavedAndPlanarInputGiveTheSameResizedCrop) {
  const int c = 3, h = 9, w = 13;
  const std::vector<uint8_t> planar = PlanarPattern(c, h, w);
  const std::vector<uint8_t> interleaved = ToInterleaved(planar, c, h, w);
  const CropBox box{2, 3, 6, 8};
  for (bool flip : {false, true}) {
    EXPECT_EQ(
        CropResized({planar.data(), c, h, w, true}, box, 5, 11, flip),
        CropResized({interleaved.data(), c, h, w, false}, box, 5, 11, flip))
        << "flip=" << flip;
  }
}

TEST(CropResizeTest, UpscalesTwoByTwoWithHalfPixelCentresAndClampedEdges) {
  // [[0, 100], [200, 40]] -> 4x4. With align_corners=false the source
  // coordinate of output index i is (i + 0.5) / 2 - 0.5, clamped at 0:
  // 0 (clamped from -0.25), 0.25, 0.75, 1.25 (the right/bottom neighbour
  // clamps to the last pixel, so it equals pixel 1).
  const std::vector<uint8_t> src = {0, 100, 200, 40};
  const std::vector<uint8_t> expected = {
      0,   25,  75, 100,  // row 0 = source row 0
      50,  59,  76, 85,   // 0.25 of the way to row 1 (58.75, 76.25 rounded)
      150, 126, 79, 55,   // 0.75 of the way (126.25, 78.75 rounded)
      200, 160, 80, 40,   // source row 1
  };
  EXPECT_EQ(CropResized({src.data(), 1, 2, 2, true}, {0, 0, 2, 2}, 4, 4, false),
            expected);
}

TEST(CropResizeTest, WholeImageResizeAgreesWithResizeBilinear) {
  // Both claim PyTorch's align_corners=false mapping; their arithmetic
  // differs, so allow one step of rounding.
  const int c = 3, h = 11, w = 17;
  const std::vector<uint8_t> planar = PlanarPattern(c, h, w);
  Image image{h, w, c, ToInterleaved(planar, c, h, w)};
  for (auto [out_h, out_w] : {std::pair{4, 6}, std::pair{23, 30}}) {
    const Image ref = ResizeBilinear(image, out_h, out_w);
    const std::vector<uint8_t> got =
        CropResized({image.pixels.data(), c, h, w, false}, {0, 0, h, w}, out_h,
                    out_w, false);
    const std::vector<uint8_t> want =
        ToInterleaved(got, c, out_h, out_w);  // compare in one layout
    ASSERT_EQ(want.size(), ref.pixels.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_LE(std::abs(int{want[i]} - int{ref.pixels[i]}), 1)
          << out_h << "x" << out_w << " at " << i;
    }
  }
}

TEST(CropResizeTest, FlipMirrorsColumnsExactly) {
  const int c = 2, h = 6, w = 9;
  const std::vector<uint8_t> planar = PlanarPattern(c, h, w);
  const ImageView view{planar.data(), c, h, w, true};
  // Identity: the flipped output is the source mirrored.
  const std::vector<uint8_t> mirrored =
      CropResized(view, {0, 0, h, w}, h, w, true);
  for (int k = 0; k < c; ++k) {
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) {
        EXPECT_EQ(mirrored[(k * h + y) * w + x],
                  planar[(k * h + y) * w + (w - 1 - x)]);
      }
    }
  }
  // A resized crop: flipping mirrors the unflipped output column for column.
  const CropBox box{1, 2, 4, 6};
  const int out_h = 5, out_w = 7;
  const std::vector<uint8_t> plain =
      CropResized(view, box, out_h, out_w, false);
  const std::vector<uint8_t> flipped =
      CropResized(view, box, out_h, out_w, true);
  for (int k = 0; k < c; ++k) {
    for (int y = 0; y < out_h; ++y) {
      for (int x = 0; x < out_w; ++x) {
        EXPECT_EQ(flipped[(k * out_h + y) * out_w + x],
                  plain[(k * out_h + y) * out_w + (out_w - 1 - x)]);
      }
    }
  }
}

TEST(CropResizeTest, CropBoxPicksTheRightRegion) {
  // 4x4 with values 10 * row + column.
  std::vector<uint8_t> src;
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) src.push_back(static_cast<uint8_t>(10 * y + x));
  }
  const ImageView view{src.data(), 1, 4, 4, true};
  EXPECT_EQ(CropResized(view, {0, 0, 2, 2}, 2, 2, false),
            (std::vector<uint8_t>{0, 1, 10, 11}));
  EXPECT_EQ(CropResized(view, {2, 2, 2, 2}, 2, 2, false),
            (std::vector<uint8_t>{22, 23, 32, 33}));
  EXPECT_EQ(CropResized(view, {0, 2, 2, 2}, 2, 2, false),
            (std::vector<uint8_t>{2, 3, 12, 13}));
  EXPECT_EQ(CropResized(view, {1, 0, 3, 1}, 3, 1, false),
            (std::vector<uint8_t>{10, 20, 30}));
  // Interleaved RGB: channel k of pixel (y, x) is 10 * y + x + 100 * k.
  std::vector<uint8_t> rgb;
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) {
      for (int k = 0; k < 3; ++k) {
        rgb.push_back(static_cast<uint8_t>(10 * y + x + 100 * k));
      }
    }
  }
  EXPECT_EQ(
      CropResized({rgb.data(), 3, 4, 4, false}, {2, 1, 2, 2}, 2, 2, false),
      (std::vector<uint8_t>{21, 22, 31, 32,      //
                            121, 122, 131, 132,  //
                            221, 222, 231, 232}));
}

// Draws many boxes and checks each against the RandomResizedCrop contract.
void CheckBoxes(int height, int width, double scale_min, uint64_t seed) {
  SCOPED_TRACE(testing::Message()
               << height << "x" << width << " scale_min=" << scale_min);
  std::mt19937_64 rng(seed);
  const double image_area = static_cast<double>(height) * width;
  double min_fraction = 2, max_fraction = 0, min_ratio = 9, max_ratio = 0;
  int touches_bottom = 0, touches_right = 0, at_origin = 0, fallbacks = 0;
  for (int i = 0; i < 2000; ++i) {
    const CropBox b = RandomResizedCropBox(height, width, scale_min, rng);
    ASSERT_GE(b.top, 0);
    ASSERT_GE(b.left, 0);
    ASSERT_GE(b.height, 1);
    ASSERT_GE(b.width, 1);
    ASSERT_LE(b.top + b.height, height);
    ASSERT_LE(b.left + b.width, width);
    if (b.top == 0 && b.left == 0 && b.height == height && b.width == width) {
      ++fallbacks;  // also a legitimate draw at scale 1 on a square image
      continue;
    }
    // Sides are rounded to whole pixels, so compare with half a pixel of
    // slack on each side.
    EXPECT_GE((b.height + 0.5) * (b.width + 0.5), scale_min * image_area);
    EXPECT_GE((b.width + 0.5) / (b.height - 0.5), 3.0 / 4);
    EXPECT_LE((b.width - 0.5) / (b.height + 0.5), 4.0 / 3);
    const double fraction = b.height * b.width / image_area;
    const double ratio = static_cast<double>(b.width) / b.height;
    min_fraction = std::min(min_fraction, fraction);
    max_fraction = std::max(max_fraction, fraction);
    min_ratio = std::min(min_ratio, ratio);
    max_ratio = std::max(max_ratio, ratio);
    // Only boxes smaller than the image have a choice of offset.
    touches_bottom += b.height < height && b.top + b.height == height;
    touches_right += b.width < width && b.left + b.width == width;
    at_origin += b.top == 0 && b.left == 0;
  }
  // The draws spread over the whole range, not just inside it.
  EXPECT_LT(min_fraction, scale_min + 0.05);
  EXPECT_GT(max_fraction, 0.85);
  EXPECT_LT(min_ratio, 0.8);
  EXPECT_GT(max_ratio, 1.25);
  // Offsets reach both ends of [0, side - crop].
  EXPECT_GT(touches_bottom, 0);
  EXPECT_GT(touches_right, 0);
  EXPECT_GT(at_origin, 0);
  EXPECT_LT(fallbacks, 200);
}

TEST(RandomResizedCropBoxTest, BoxesStayInsideWithScaleAndAspectInRange) {
  CheckBoxes(20, 20, 0.08, 1);
  CheckBoxes(224, 224, 0.08, 2);
  CheckBoxes(64, 48, 0.5, 3);
  CheckBoxes(33, 40, 0.25, 4);
}

TEST(RandomResizedCropBoxTest, SameSeedGivesSameBoxes) {
  std::mt19937_64 a(42), b(42);
  for (int i = 0; i < 100; ++i) {
    const CropBox x = RandomResizedCropBox(224, 300, 0.08, a);
    const CropBox y = RandomResizedCropBox(224, 300, 0.08, b);
    EXPECT_EQ(x.top, y.top);
    EXPECT_EQ(x.left, y.left);
    EXPECT_EQ(x.height, y.height);
    EXPECT_EQ(x.width, y.width);
  }
}

TEST(RandomResizedCropBoxTest, DifferentSeedsGiveDifferentBoxes) {
  std::mt19937_64 a(1), b(2);
  int same = 0;
  for (int i = 0; i < 100; ++i) {
    const CropBox x = RandomResizedCropBox(224, 224, 0.08, a);
    const CropBox y = RandomResizedCropBox(224, 224, 0.08, b);
    same += x.top == y.top && x.left == y.left && x.height == y.height &&
            x.width == y.width;
  }
  EXPECT_LT(same, 5);
}

TEST(CenterCropBoxTest, CentresTheBox) {
  const CropBox a = CenterCropBox(224, 224, 196, 196);
  EXPECT_EQ(a.top, 14);
  EXPECT_EQ(a.left, 14);
  EXPECT_EQ(a.height, 196);
  EXPECT_EQ(a.width, 196);
  // Odd margins round half to even, as torchvision's center_crop:
  // round(2.5) = 2, round(3.5) = 4.
  const CropBox b = CenterCropBox(10, 11, 5, 4);
  EXPECT_EQ(b.top, 2);
  EXPECT_EQ(b.left, 4);
  EXPECT_EQ(b.height, 5);
  EXPECT_EQ(b.width, 4);
  const CropBox c = CenterCropBox(300, 400, 300, 300);
  EXPECT_EQ(c.top, 0);
  EXPECT_EQ(c.left, 50);
}

TEST(CenterCropBoxTest, ClampsToTheImage) {
  const CropBox b = CenterCropBox(10, 10, 20, 5);
  EXPECT_EQ(b.top, 0);
  EXPECT_EQ(b.height, 10);
  EXPECT_EQ(b.left, 2);
  EXPECT_EQ(b.width, 5);
  const CropBox c = CenterCropBox(8, 6, 0, 100);
  EXPECT_EQ(c.height, 1);
  EXPECT_EQ(c.width, 6);
  EXPECT_EQ(c.left, 0);
  EXPECT_EQ(c.top, 4);  // round((8 - 1) / 2) = round(3.5) = 4
}

TEST(ToFloatTest, DividesBy255Exactly) {
  // Every byte value, in each of three planes.
  std::vector<uint8_t> src;
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) src.push_back(static_cast<uint8_t>(v));
  }
  std::vector<float> out(src.size(), -1.0f);
  ToFloat(src.data(), 3, 256, out.data());
  for (size_t i = 0; i < src.size(); ++i) {
    EXPECT_EQ(out[i], static_cast<float>(src[i]) / 255.0f) << i;
  }
  EXPECT_EQ(out[255], 1.0f);
  EXPECT_EQ(out[256], 0.0f);
}

TEST(ToFloatTest, NormalisesPerChannelInTorchOrder) {
  std::vector<uint8_t> src;
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) src.push_back(static_cast<uint8_t>(255 - v));
  }
  const float mean[3] = {0.485f, 0.456f, 0.406f};
  const float std[3] = {0.229f, 0.224f, 0.225f};
  std::vector<float> out(src.size(), -1.0f);
  ToFloat(src.data(), 3, 256, out.data(), mean, std);
  for (int c = 0; c < 3; ++c) {
    for (int i = 0; i < 256; ++i) {
      const float v = static_cast<float>(src[c * 256 + i]);
      // Divide first, then subtract and divide, all in float: not fused
      // into one scale and offset, which would round differently.
      const float expected = (v / 255.0f - mean[c]) / std[c];
      EXPECT_EQ(out[c * 256 + i], expected)
          << "channel " << c << " value " << v;
    }
  }
}

}  // namespace
}  // namespace tlserve
