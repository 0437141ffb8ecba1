#ifndef TLSERVE_COMMON_IMAGE_H_
#define TLSERVE_COMMON_IMAGE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tlserve {

// An 8-bit image, interleaved HWC, row-major. channels is 1 (gray) or 3 (RGB).
struct Image {
  int height = 0;
  int width = 0;
  int channels = 0;
  std::vector<uint8_t> pixels;  // height * width * channels bytes
};

struct ImageLimits {
  int64_t max_pixels = 64LL * 1024 * 1024;  // width * height
  int max_side = 16384;
};

// Decodes PNG (libpng) or JPEG (libjpeg-turbo), told apart by their magic
// bytes. Gray stays 1 channel; RGB, RGBA (alpha dropped), palette and
// gray+alpha become 3 or 1 channels; 16-bit samples are cut to 8 bits.
// Corrupt, truncated, unknown or oversized input: INVALID_ARGUMENT with
// the reason.
absl::StatusOr<Image> DecodeImage(std::string_view bytes,
                                  const ImageLimits& limits = {});
// PNG encoding, for fixtures, tests and plots.
absl::StatusOr<std::string> EncodePng(const Image& image);
// Bilinear resize (for the worker's preprocessing and tests).
Image ResizeBilinear(const Image& image, int height, int width);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_IMAGE_H_
