// DecodeImage on arbitrary bytes (PNG through libpng, JPEG through
// libjpeg-turbo); a decoded image must survive a PNG round trip and a
// resize.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/image.h"
#include "tests/fuzz/fuzz_util.h"

using tlserve::fuzz::Require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tlserve::ImageLimits limits;
  // 4 Mpixel: a header that claims more is refused, not allocated.
  limits.max_pixels = 4 << 20;
  limits.max_side = 4096;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<tlserve::Image> image = tlserve::DecodeImage(bytes, limits);
  if (!image.ok()) {
    Require(image.status().code() == absl::StatusCode::kInvalidArgument,
            "DecodeImage fails with INVALID_ARGUMENT");
    return 0;
  }
  Require(image->channels == 1 || image->channels == 3, "1 or 3 channels");
  Require(image->height > 0 && image->width > 0, "non-empty image");
  Require(image->height <= limits.max_side && image->width <= limits.max_side,
          "sides within max_side");
  Require(int64_t{image->height} * image->width <= limits.max_pixels,
          "pixels within max_pixels");
  Require(image->pixels.size() == static_cast<size_t>(image->height) *
                                      image->width * image->channels,
          "pixels hold height * width * channels bytes");

  // What decodes must encode and decode back to the same pixels.
  absl::StatusOr<std::string> png = tlserve::EncodePng(*image);
  Require(png.ok(), "EncodePng of a decoded image");
  absl::StatusOr<tlserve::Image> again = tlserve::DecodeImage(*png, limits);
  Require(again.ok(), "DecodeImage of our own PNG");
  Require(again->height == image->height && again->width == image->width &&
              again->channels == image->channels &&
              again->pixels == image->pixels,
          "PNG round trip keeps the pixels");

  const tlserve::Image small = tlserve::ResizeBilinear(*image, 7, 5);
  Require(small.pixels.size() == size_t{7} * 5 * image->channels,
          "ResizeBilinear output size");
  return 0;
}
