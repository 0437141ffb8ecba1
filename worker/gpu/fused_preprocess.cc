#include "worker/gpu/fused_preprocess.h"

#include <cmath>

namespace tlserve::worker::gpu {

const char* FusedPreprocessProblem(const FusedPreprocessParams& p) {
  if (p.channels < 1 || p.channels > kMaxChannels) {
    return "channels must be 1 to 4";
  }
  if (p.src_height < 1 || p.src_width < 1) return "empty source image";
  if (p.out_height < 1 || p.out_width < 1) return "empty output size";
  if (p.box_height < 1 || p.box_width < 1 || p.box_top < 0 ||
      p.box_left < 0 || p.box_top + p.box_height > p.src_height ||
      p.box_left + p.box_width > p.src_width) {
    return "crop box outside the source image";
  }
  if (p.normalise) {
    for (int c = 0; c < p.channels; ++c) {
      if (!(p.std[c] > 0.0f)) return "std must be positive";
    }
  }
  return nullptr;
}

bool FusedPreprocessOnHost(const uint8_t* src, const FusedPreprocessParams& p,
                           float* out) {
  if (FusedPreprocessProblem(p) != nullptr) return false;
  for (int c = 0; c < p.channels; ++c) {
    for (int y = 0; y < p.out_height; ++y) {
      for (int x = 0; x < p.out_width; ++x) {
        out[internal::FusedOffset(p, c, y, x)] =
            internal::FusedValue(src, p, c, y, x);
      }
    }
  }
  return true;
}

}  // namespace tlserve::worker::gpu
