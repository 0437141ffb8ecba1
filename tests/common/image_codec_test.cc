#include <png.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/image.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

Image Gradient(int height, int width, int channels) {
  Image image{height, width, channels, {}};
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) {
        image.pixels.push_back(static_cast<uint8_t>(x * 7 + y * 13 + c * 50));
      }
    }
  }
  return image;
}

std::string MakeJpeg(const Image& image) {
  tjhandle tj = tjInitCompress();
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  int rc = tjCompress2(tj, image.pixels.data(), image.width, 0, image.height,
                       image.channels == 1 ? TJPF_GRAY : TJPF_RGB, &buf, &size,
                       image.channels == 1 ? TJSAMP_GRAY : TJSAMP_444, 95, 0);
  EXPECT_EQ(rc, 0) << tjGetErrorStr2(tj);
  std::string out(reinterpret_cast<char*>(buf), size);
  tjFree(buf);
  tjDestroy(tj);
  return out;
}

// PNGs in layouts EncodePng does not write, via libpng's simplified API.
std::string WritePng(int width, int height, png_uint_32 format,
                     const void* pixels, const void* colormap = nullptr,
                     int colormap_entries = 0) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = width;
  image.height = height;
  image.format = format;
  image.colormap_entries = colormap_entries;
  png_alloc_size_t size = 0;
  EXPECT_TRUE(png_image_write_to_memory(&image, nullptr, &size, 0, pixels, 0,
                                        colormap));
  std::string out(size, '\0');
  EXPECT_TRUE(png_image_write_to_memory(&image, out.data(), &size, 0, pixels, 0,
                                        colormap))
      << image.message;
  out.resize(size);
  return out;
}

void ExpectInvalid(const absl::StatusOr<Image>& got, const std::string& what) {
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument)
      << what << ": " << got.status();
}

TEST(ImageCodecTest, PngRoundTripsGrayAndRgb) {
  for (int channels : {1, 3}) {
    Image image = Gradient(17, 23, channels);
    absl::StatusOr<std::string> png = EncodePng(image);
    ASSERT_TRUE(png.ok()) << png.status();
    absl::StatusOr<Image> back = DecodeImage(*png);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->height, 17);
    EXPECT_EQ(back->width, 23);
    EXPECT_EQ(back->channels, channels);
    EXPECT_EQ(back->pixels, image.pixels);
  }
}

TEST(ImageCodecTest, PngAlphaIsDropped) {
  Image rgba = Gradient(4, 5, 4);
  absl::StatusOr<Image> back = DecodeImage(*EncodePng(rgba));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->channels, 3);
  for (int i = 0; i < 20; ++i) {
    for (int c = 0; c < 3; ++c) {
      EXPECT_EQ(back->pixels[i * 3 + c], rgba.pixels[i * 4 + c]);
    }
  }
}

TEST(ImageCodecTest, PngGrayAlphaPaletteAnd16BitBecome8Bit) {
  const uint8_t gray_alpha[] = {10, 255, 20, 0, 30, 128, 40, 7};
  absl::StatusOr<Image> ga =
      DecodeImage(WritePng(2, 2, PNG_FORMAT_GA, gray_alpha));
  ASSERT_TRUE(ga.ok()) << ga.status();
  EXPECT_EQ(ga->channels, 1);
  EXPECT_EQ(ga->pixels, (std::vector<uint8_t>{10, 20, 30, 40}));

  const uint8_t palette[] = {255, 0, 0, 0, 0, 255};
  const uint8_t indices[] = {0, 1, 1, 0};
  absl::StatusOr<Image> pal =
      DecodeImage(WritePng(2, 2, PNG_FORMAT_RGB_COLORMAP, indices, palette, 2));
  ASSERT_TRUE(pal.ok()) << pal.status();
  EXPECT_EQ(pal->channels, 3);
  EXPECT_EQ(pal->pixels,
            (std::vector<uint8_t>{255, 0, 0, 0, 0, 255, 0, 0, 255, 255, 0, 0}));

  const uint16_t wide[] = {0, 65535, 65535, 0};
  absl::StatusOr<Image> deep =
      DecodeImage(WritePng(2, 2, PNG_FORMAT_LINEAR_Y, wide));
  ASSERT_TRUE(deep.ok()) << deep.status();
  EXPECT_EQ(deep->channels, 1);
  EXPECT_EQ(deep->pixels, (std::vector<uint8_t>{0, 255, 255, 0}));
}

TEST(ImageCodecTest, EncodePngRefusesBadImages) {
  Image image = Gradient(3, 3, 3);
  image.pixels.pop_back();
  EXPECT_FALSE(EncodePng(image).ok());
  EXPECT_FALSE(EncodePng(Image{}).ok());
}

TEST(ImageCodecTest, CorruptPngIsInvalidArgument) {
  std::string png = *EncodePng(Gradient(32, 32, 3));
  size_t idat = png.find("IDAT");
  ASSERT_NE(idat, std::string::npos);

  std::string flipped = png;
  for (size_t i = idat + 6; i < idat + 16; ++i) flipped[i] ^= 0x5a;
  ExpectInvalid(DecodeImage(flipped), "flipped IDAT bytes");

  ExpectInvalid(DecodeImage(png.substr(0, png.size() / 2)), "half a PNG");
  ExpectInvalid(DecodeImage(png.substr(0, 8)), "signature only");
  ExpectInvalid(DecodeImage(png.substr(0, png.size() - 12)), "no IEND");
  // Every prefix: errors, never a crash.
  for (size_t n = 0; n < png.size(); ++n) {
    EXPECT_FALSE(DecodeImage(png.substr(0, n)).ok()) << n;
  }
}

TEST(ImageCodecTest, DecodesJpegGrayAndRgb) {
  for (int channels : {1, 3}) {
    Image image = Gradient(16, 24, channels);
    absl::StatusOr<Image> back = DecodeImage(MakeJpeg(image));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->height, 16);
    EXPECT_EQ(back->width, 24);
    EXPECT_EQ(back->channels, channels);
    ASSERT_EQ(back->pixels.size(), image.pixels.size());
    // Lossy: close, not equal.
    int max_diff = 0;
    for (size_t i = 0; i < image.pixels.size(); ++i) {
      max_diff =
          std::max(max_diff, std::abs(back->pixels[i] - image.pixels[i]));
    }
    EXPECT_LT(max_diff, 16);
  }
}

TEST(ImageCodecTest, CorruptJpegIsInvalidArgument) {
  std::string jpeg = MakeJpeg(Gradient(32, 32, 3));
  ExpectInvalid(DecodeImage(jpeg.substr(0, jpeg.size() / 2)), "half a JPEG");
  ExpectInvalid(DecodeImage(jpeg.substr(0, 3)), "magic only");
  for (size_t n = 0; n < jpeg.size(); n += 7) {
    EXPECT_FALSE(DecodeImage(jpeg.substr(0, n)).ok()) << n;
  }
}

TEST(ImageCodecTest, UnknownFormatIsInvalidArgument) {
  ExpectInvalid(DecodeImage(""), "empty");
  ExpectInvalid(DecodeImage("GIF89a........"), "gif");
}

TEST(ImageCodecTest, EnforcesSizeLimits) {
  ImageLimits limits;
  limits.max_side = 16;
  ExpectInvalid(DecodeImage(*EncodePng(Gradient(8, 20, 1)), limits), "png");
  ExpectInvalid(DecodeImage(MakeJpeg(Gradient(8, 20, 1)), limits), "jpeg");
  limits = ImageLimits{};
  limits.max_pixels = 100;
  ExpectInvalid(DecodeImage(*EncodePng(Gradient(11, 10, 3)), limits), "px");
  EXPECT_TRUE(DecodeImage(*EncodePng(Gradient(10, 10, 3)), limits).ok());
}

TEST(ImageCodecTest, ResizeBilinearInterpolates) {
  Image image{2, 2, 1, {0, 100, 100, 200}};
  Image same = ResizeBilinear(image, 2, 2);
  EXPECT_EQ(same.pixels, image.pixels);

  Image up = ResizeBilinear(image, 4, 4);
  ASSERT_EQ(up.pixels.size(), 16u);
  EXPECT_EQ(up.pixels[0], 0);  // corners stay
  EXPECT_EQ(up.pixels[15], 200);
  EXPECT_EQ(up.pixels[1], 25);  // a quarter of the way to 100

  Image down =
      ResizeBilinear(Image{2, 4, 1, {0, 10, 20, 30, 40, 50, 60, 70}}, 1, 2);
  ASSERT_EQ(down.pixels.size(), 2u);
  EXPECT_EQ(down.pixels[0], 25);  // mean of 0, 10, 40, 50
  EXPECT_EQ(down.pixels[1], 45);

  Image rgb = ResizeBilinear(Gradient(5, 7, 3), 9, 3);
  EXPECT_EQ(rgb.height, 9);
  EXPECT_EQ(rgb.width, 3);
  EXPECT_EQ(rgb.channels, 3);
  EXPECT_EQ(rgb.pixels.size(), 81u);
}

}  // namespace
}  // namespace tlserve
