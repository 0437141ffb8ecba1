#include "common/input_fit.h"

#include <cstdint>
#include <string>
#include <vector>

#include "common/image.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::HasSubstr;
using ::tlserve::v1::InputFit;
using ::tlserve::v1::InputSpec;

InputSpec CropSpec(int height, int width, int shorter_side) {
  InputSpec spec;
  spec.set_channels(1);
  spec.set_height(height);
  spec.set_width(width);
  spec.mutable_fit()->set_mode(InputFit::RESIZE_CENTER_CROP);
  spec.mutable_fit()->set_shorter_side(shorter_side);
  return spec;
}

// A gray image whose columns hold `left`, `middle`, `right` in thirds.
Image Thirds(int height, int width, uint8_t left, uint8_t middle,
             uint8_t right) {
  Image image;
  image.height = height;
  image.width = width;
  image.channels = 1;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      image.pixels.push_back(x < width / 3       ? left
                             : x < 2 * width / 3 ? middle
                                                 : right);
    }
  }
  return image;
}

TEST(InputFitTest, ShorterSideSizeKeepsTheAspectRatioAsTorchvision) {
  int h = 0;
  int w = 0;
  // torchvision's Resize(256): the longer side is int(256 * long / short).
  ShorterSideSize(375, 500, 256, &h, &w);
  EXPECT_EQ(h, 256);
  EXPECT_EQ(w, 341);
  ShorterSideSize(500, 375, 256, &h, &w);
  EXPECT_EQ(h, 341);
  EXPECT_EQ(w, 256);
  ShorterSideSize(28, 28, 32, &h, &w);
  EXPECT_EQ(h, 32);
  EXPECT_EQ(w, 32);
}

TEST(InputFitTest, DefaultShorterSideIsTheCropTimesEightSevenths) {
  EXPECT_EQ(ShorterSide(CropSpec(224, 224, 0)), 256);
  EXPECT_EQ(ShorterSide(CropSpec(299, 299, 0)), 342);
  EXPECT_EQ(ShorterSide(CropSpec(200, 224, 0)), 256);
  EXPECT_EQ(ShorterSide(CropSpec(224, 224, 300)), 300);
}

TEST(InputFitTest, CenterCropKeepsTheMiddleWhereStretchSquashesTheSides) {
  // A wide image, black at the sides and white in the middle third.
  const Image wide = Thirds(30, 90, 0, 255, 0);
  InputSpec crop = CropSpec(30, 30, 30);
  const Image cropped = FitImage(wide, crop);
  ASSERT_EQ(cropped.height, 30);
  ASSERT_EQ(cropped.width, 30);
  EXPECT_EQ(cropped.pixels, std::vector<uint8_t>(900, 255));

  InputSpec stretch = crop;
  stretch.clear_fit();
  const Image squashed = FitImage(wide, stretch);
  ASSERT_EQ(squashed.width, 30);
  EXPECT_EQ(squashed.pixels[0], 0);    // the left third, squashed in
  EXPECT_EQ(squashed.pixels[15], 255);
  EXPECT_EQ(squashed.pixels[29], 0);
}

TEST(InputFitTest, CenterCropIsTheResizeThenTheCentredBox) {
  Image image;
  image.height = 40;
  image.width = 20;
  image.channels = 3;
  for (int i = 0; i < 40 * 20 * 3; ++i) {
    image.pixels.push_back(static_cast<uint8_t>(i * 37 + i / 60));
  }
  // Shorter side 16: 32x16, then rows 8..23 of it.
  const Image resized = ResizeBilinear(image, 32, 16);
  const Image got = FitImage(image, CropSpec(16, 16, 16));
  ASSERT_EQ(got.height, 16);
  ASSERT_EQ(got.width, 16);
  ASSERT_EQ(got.channels, 3);
  const std::vector<uint8_t> want(resized.pixels.begin() + 8 * 16 * 3,
                                  resized.pixels.begin() + 24 * 16 * 3);
  EXPECT_EQ(got.pixels, want);
  // An image already at the crop size is still resized and cropped (a zoom
  // by 8/7 by default), as torchvision's transform does.
  const Image square = ResizeBilinear(image, 16, 16);
  EXPECT_NE(FitImage(square, CropSpec(16, 16, 0)).pixels, square.pixels);
  EXPECT_EQ(FitImage(square, CropSpec(16, 16, 16)).pixels, square.pixels);
}

TEST(InputFitTest, ValidationNamesTheFieldAndTheBound) {
  InputFit fit;
  EXPECT_TRUE(ValidateInputFit(fit, 224, 224, "spec.input_fit").ok());
  fit.set_mode(InputFit::RESIZE_CENTER_CROP);
  EXPECT_TRUE(ValidateInputFit(fit, 224, 224, "spec.input_fit").ok());
  fit.set_shorter_side(256);
  EXPECT_TRUE(ValidateInputFit(fit, 224, 224, "spec.input_fit").ok());

  fit.set_shorter_side(200);
  absl::Status small = ValidateInputFit(fit, 224, 224, "spec.input_fit");
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(small.message()),
              HasSubstr("spec.input_fit.shorter_side 200 is smaller than the "
                        "224x224 crop"));
  fit.set_shorter_side(-1);
  EXPECT_THAT(
      std::string(ValidateInputFit(fit, 224, 224, "f").message()),
      HasSubstr("f.shorter_side must be in [0, 4096], got -1"));
  fit.set_mode(InputFit::STRETCH);
  fit.set_shorter_side(256);
  EXPECT_THAT(std::string(ValidateInputFit(fit, 224, 224, "f").message()),
              HasSubstr("but the mode is not RESIZE_CENTER_CROP"));
  fit.set_shorter_side(0);
  fit.set_mode(static_cast<InputFit::Mode>(9));
  EXPECT_THAT(std::string(ValidateInputFit(fit, 224, 224, "f").message()),
              HasSubstr("f.mode 9 is not"));
}

TEST(InputFitTest, AJobsFitReplacesTheBackbonesOnlyWhenSet) {
  InputSpec backbone = CropSpec(64, 64, 80);
  tlserve::v1::JobSpec job;
  EXPECT_EQ(ApplyJobFit(backbone, job).fit().shorter_side(), 80);
  job.mutable_input_fit()->set_mode(InputFit::STRETCH);
  const InputSpec stretched = ApplyJobFit(backbone, job);
  EXPECT_EQ(FitMode(stretched), InputFit::STRETCH);
  EXPECT_EQ(stretched.height(), 64);
  job.mutable_input_fit()->set_mode(InputFit::RESIZE_CENTER_CROP);
  job.mutable_input_fit()->set_shorter_side(72);
  EXPECT_EQ(ShorterSide(ApplyJobFit(backbone, job)), 72);
}

}  // namespace
}  // namespace tlserve
