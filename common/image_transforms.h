#ifndef TLSERVE_COMMON_IMAGE_TRANSFORMS_H_
#define TLSERVE_COMMON_IMAGE_TRANSFORMS_H_

// The per-image training transforms in plain C++ (no LibTorch), so the
// worker's loader threads can run them without touching torch's thread
// pool, and the data-pipeline benchmark can time them alone:
// crop boxes (random-resized as torchvision's RandomResizedCrop, centre),
// bilinear crop-and-resize with an optional mirror, and the uint8 -> float
// conversion with optional per-channel normalisation.

#include <cstdint>
#include <random>

namespace tlserve {

// A read-only view of an 8-bit image: planar [C, H, W] (the worker's
// tensors) or interleaved [H, W, C] (decoded files, common/image.h).
struct ImageView {
  const uint8_t* data = nullptr;
  int channels = 0;
  int height = 0;
  int width = 0;
  bool planar = true;
};

struct CropBox {
  int top = 0;
  int left = 0;
  int height = 0;
  int width = 0;
};

// torchvision's RandomResizedCrop parameters for an image of height x
// width: area fraction uniform in [scale_min, 1], aspect ratio log-uniform
// in [3/4, 4/3]; up to 10 draws for a box that fits, else the whole image.
// Every draw comes from `rng`.
CropBox RandomResizedCropBox(int height, int width, double scale_min,
                             std::mt19937_64& rng);

// The centred crop_height x crop_width box (clamped to the image), placed
// as torchvision's center_crop places it.
CropBox CenterCropBox(int height, int width, int crop_height, int crop_width);

// Crops `box` out of `src`, resizes it bilinearly to out_height x
// out_width (pixel centres as PyTorch's align_corners=false, no
// antialiasing), mirrors it left-right when `flip`, and writes planar
// uint8 [C, out_height, out_width] with C = src.channels (rounded, as a
// float -> uint8 cast of the rounded value). `box` must lie inside the image.
void CropResize(const ImageView& src, const CropBox& box, int out_height,
                int out_width, bool flip, uint8_t* out);

// Planar uint8 [C, H, W] -> float: v / 255, then (x - mean[c]) / std[c]
// when mean and std are given (both or neither), in float as torch does
// it, so the result equals ToModelInput / Normalize exactly. plane = H * W.
void ToFloat(const uint8_t* src, int channels, int64_t plane, float* out,
             const float* mean = nullptr, const float* std = nullptr);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_IMAGE_TRANSFORMS_H_
