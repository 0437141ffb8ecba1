#include "common/image_transforms.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace tlserve {

CropBox RandomResizedCropBox(int height, int width, double scale_min,
                             std::mt19937_64& rng) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const double log_lo = std::log(3.0 / 4);
  const double log_hi = std::log(4.0 / 3);
  const double image_area = static_cast<double>(height) * width;
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double area = (scale_min + (1.0 - scale_min) * unit(rng)) * image_area;
    const double ratio = std::exp(log_lo + (log_hi - log_lo) * unit(rng));
    const long tw = std::lround(std::sqrt(area * ratio));
    const long th = std::lround(std::sqrt(area / ratio));
    if (tw < 1 || th < 1 || tw > width || th > height) continue;
    CropBox box;
    box.height = static_cast<int>(th);
    box.width = static_cast<int>(tw);
    box.top = std::min(static_cast<int>(unit(rng) * (height - th + 1)),
                       height - box.height);
    box.left = std::min(static_cast<int>(unit(rng) * (width - tw + 1)),
                        width - box.width);
    return box;
  }
  return CropBox{0, 0, height, width};
}

CropBox CenterCropBox(int height, int width, int crop_height, int crop_width) {
  CropBox box;
  box.height = std::clamp(crop_height, 1, height);
  box.width = std::clamp(crop_width, 1, width);
  // Rounded half to even, as torchvision's center_crop (Python's round).
  box.top = static_cast<int>(std::nearbyint((height - box.height) / 2.0));
  box.left = static_cast<int>(std::nearbyint((width - box.width) / 2.0));
  return box;
}

void CropResize(const ImageView& src, const CropBox& box, int out_height,
                int out_width, bool flip, uint8_t* out) {
  const int c = src.channels;
  // Element strides of the source: planar [C,H,W] or interleaved [H,W,C].
  const ptrdiff_t channel_stride =
      src.planar ? static_cast<ptrdiff_t>(src.height) * src.width : 1;
  const ptrdiff_t row_stride = src.planar ? src.width : src.width * c;
  const ptrdiff_t col_stride = src.planar ? 1 : c;
  const float sy = static_cast<float>(box.height) / out_height;
  const float sx = static_cast<float>(box.width) / out_width;

  // Column taps are the same for every row and channel.
  std::vector<ptrdiff_t> x0(out_width), x1(out_width);
  std::vector<float> wx(out_width);
  for (int x = 0; x < out_width; ++x) {
    const int sample_x = flip ? out_width - 1 - x : x;
    const float fx = std::max(0.0f, (sample_x + 0.5f) * sx - 0.5f);
    const int ix = std::min(static_cast<int>(fx), box.width - 1);
    x0[x] = (box.left + ix) * col_stride;
    x1[x] = (box.left + std::min(ix + 1, box.width - 1)) * col_stride;
    wx[x] = fx - static_cast<float>(ix);
  }
  const size_t out_plane = static_cast<size_t>(out_height) * out_width;
  for (int y = 0; y < out_height; ++y) {
    const float fy = std::max(0.0f, (y + 0.5f) * sy - 0.5f);
    const int iy = std::min(static_cast<int>(fy), box.height - 1);
    const float wy = fy - static_cast<float>(iy);
    const ptrdiff_t r0 = (box.top + iy) * row_stride;
    const ptrdiff_t r1 = (box.top + std::min(iy + 1, box.height - 1)) * row_stride;
    for (int k = 0; k < c; ++k) {
      const uint8_t* base = src.data + k * channel_stride;
      const uint8_t* row0 = base + r0;
      const uint8_t* row1 = base + r1;
      uint8_t* dst = out + k * out_plane + static_cast<size_t>(y) * out_width;
      for (int x = 0; x < out_width; ++x) {
        const float top = row0[x0[x]] + (row0[x1[x]] - row0[x0[x]]) * wx[x];
        const float bottom = row1[x0[x]] + (row1[x1[x]] - row1[x0[x]]) * wx[x];
        const float v = top + (bottom - top) * wy;
        dst[x] = static_cast<uint8_t>(std::clamp(std::nearbyint(v), 0.0f, 255.0f));
      }
    }
  }
}

void ToFloat(const uint8_t* src, int channels, int64_t plane, float* out,
             const float* mean, const float* std) {
  // A 256-entry table per channel, filled with the same float operations,
  // in the same order, as torch's x.to(float).div(255) and torchvision's
  // Normalize: the same bits at a table lookup per value (4x faster than
  // the two divisions, which the compiler leaves scalar).
  float table[256];
  for (int c = 0; c < channels; ++c) {
    for (int v = 0; v < 256; ++v) {
      const float x = static_cast<float>(v) / 255.0f;
      table[v] = (mean != nullptr && std != nullptr) ? (x - mean[c]) / std[c] : x;
    }
    const uint8_t* in = src + c * plane;
    float* o = out + c * plane;
    for (int64_t i = 0; i < plane; ++i) o[i] = table[in[i]];
  }
}

}  // namespace tlserve
