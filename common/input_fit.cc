#include "common/input_fit.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/image_transforms.h"

namespace tlserve {

using ::tlserve::v1::InputFit;

InputFit::Mode FitMode(const tlserve::v1::InputSpec& spec) {
  return spec.fit().mode() == InputFit::MODE_UNSPECIFIED ? InputFit::STRETCH
                                                         : spec.fit().mode();
}

int ShorterSide(const tlserve::v1::InputSpec& spec) {
  if (spec.fit().shorter_side() > 0) return spec.fit().shorter_side();
  const int crop = std::max(spec.height(), spec.width());
  return static_cast<int>(std::lround(crop * 8.0 / 7.0));
}

void ShorterSideSize(int height, int width, int side, int* out_height,
                     int* out_width) {
  if (height <= width) {
    *out_height = side;
    *out_width = static_cast<int>(int64_t{side} * width / height);
  } else {
    *out_width = side;
    *out_height = static_cast<int>(int64_t{side} * height / width);
  }
}

absl::Status ValidateInputFit(const InputFit& fit, int height, int width,
                              const std::string& field) {
  if (!InputFit::Mode_IsValid(fit.mode())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s.mode %d is not STRETCH or RESIZE_CENTER_CROP", field, fit.mode()));
  }
  if (fit.shorter_side() < 0 || fit.shorter_side() > 4096) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s.shorter_side must be in [0, 4096], got %d", field,
                        fit.shorter_side()));
  }
  if (fit.mode() != InputFit::RESIZE_CENTER_CROP) {
    if (fit.shorter_side() != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s.shorter_side is set (%d) but the mode is not "
          "RESIZE_CENTER_CROP",
          field, fit.shorter_side()));
    }
    return absl::OkStatus();
  }
  const int crop = std::max(height, width);
  if (fit.shorter_side() != 0 && fit.shorter_side() < crop) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s.shorter_side %d is smaller than the %dx%d crop: it must be at "
        "least %d",
        field, fit.shorter_side(), height, width, crop));
  }
  return absl::OkStatus();
}

tlserve::v1::InputSpec ApplyJobFit(const tlserve::v1::InputSpec& base,
                                   const tlserve::v1::JobSpec& job) {
  tlserve::v1::InputSpec spec = base;
  if (job.input_fit().mode() != InputFit::MODE_UNSPECIFIED) {
    *spec.mutable_fit() = job.input_fit();
  }
  return spec;
}

Image FitImage(const Image& image, const tlserve::v1::InputSpec& spec) {
  const int h = spec.height();
  const int w = spec.width();
  if (FitMode(spec) != InputFit::RESIZE_CENTER_CROP) {
    if (image.height == h && image.width == w) return image;
    return ResizeBilinear(image, h, w);
  }
  int rh = 0;
  int rw = 0;
  ShorterSideSize(image.height, image.width, ShorterSide(spec), &rh, &rw);
  const Image resized = ResizeBilinear(image, rh, rw);
  const CropBox box = CenterCropBox(rh, rw, h, w);
  Image out;
  out.height = box.height;
  out.width = box.width;
  out.channels = image.channels;
  const size_t row = static_cast<size_t>(box.width) * image.channels;
  out.pixels.resize(row * box.height);
  for (int y = 0; y < box.height; ++y) {
    std::memcpy(out.pixels.data() + y * row,
                resized.pixels.data() +
                    (static_cast<size_t>(box.top + y) * rw + box.left) *
                        image.channels,
                row);
  }
  // Only a fit that skipped validation gets here with a smaller box.
  if (out.height != h || out.width != w) return ResizeBilinear(out, h, w);
  return out;
}

}  // namespace tlserve
