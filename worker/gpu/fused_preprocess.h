#ifndef TLSERVE_WORKER_GPU_FUSED_PREPROCESS_H_
#define TLSERVE_WORKER_GPU_FUSED_PREPROCESS_H_

// One image's preprocessing as a single pass per output value: crop a box,
// resize it bilinearly, mirror it, scale to [0, 1], normalise per channel
// and write planar [C, H, W] or channels-last [H, W, C] floats. The same
// inline function is the CUDA kernel's body (fused_preprocess.cu) and the
// host reference below, so the kernel computes what the CPU path
// (common/image_transforms.h: CropResize, then ToFloat) computes, value
// for value: the bilinear sample is rounded to uint8 first, as there.
//
// Plain C++ with no CUDA or torch types: the host half builds and is
// tested everywhere; nvcc compiles the kernel where it is present.

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TLSERVE_HOST_DEVICE __host__ __device__
#else
#define TLSERVE_HOST_DEVICE
#endif

namespace tlserve::worker::gpu {

inline constexpr int kMaxChannels = 4;

struct FusedPreprocessParams {
  // The decoded source: interleaved [H, W, C] (as decoders write it) or
  // planar [C, H, W].
  int channels = 0;
  int src_height = 0;
  int src_width = 0;
  bool src_planar = false;
  // The crop box, inside the source.
  int box_top = 0;
  int box_left = 0;
  int box_height = 0;
  int box_width = 0;
  int out_height = 0;
  int out_width = 0;
  bool flip = false;
  // With normalise: (v / 255 - mean[c]) / std[c]; else v / 255.
  bool normalise = false;
  float mean[kMaxChannels] = {};
  float std[kMaxChannels] = {};
  // Output layout: [C, H, W] (false) or [H, W, C] (true).
  bool channels_last = false;
};

// Why a set of parameters cannot run, or nullptr when it can. The kernel
// launcher and the host reference both refuse what this refuses.
const char* FusedPreprocessProblem(const FusedPreprocessParams& p);

namespace internal {

TLSERVE_HOST_DEVICE inline int MinInt(int a, int b) { return a < b ? a : b; }

// The value of output channel c at (y, x). Written with the same float
// operations in the same order as CropResize and ToFloat; the kernel is
// compiled without FMA contraction so that the order holds on the device.
TLSERVE_HOST_DEVICE inline float FusedValue(const uint8_t* src,
                                            const FusedPreprocessParams& p,
                                            int c, int y, int x) {
  const long long channel_stride =
      p.src_planar ? static_cast<long long>(p.src_height) * p.src_width : 1;
  const long long row_stride =
      p.src_planar ? p.src_width : static_cast<long long>(p.src_width) * p.channels;
  const long long col_stride = p.src_planar ? 1 : p.channels;
  const float sy = static_cast<float>(p.box_height) / p.out_height;
  const float sx = static_cast<float>(p.box_width) / p.out_width;

  const int sample_x = p.flip ? p.out_width - 1 - x : x;
  float fx = (sample_x + 0.5f) * sx - 0.5f;
  fx = fx > 0.0f ? fx : 0.0f;
  const int ix = MinInt(static_cast<int>(fx), p.box_width - 1);
  const long long x0 = (p.box_left + ix) * col_stride;
  const long long x1 = (p.box_left + MinInt(ix + 1, p.box_width - 1)) * col_stride;
  const float wx = fx - static_cast<float>(ix);

  float fy = (y + 0.5f) * sy - 0.5f;
  fy = fy > 0.0f ? fy : 0.0f;
  const int iy = MinInt(static_cast<int>(fy), p.box_height - 1);
  const float wy = fy - static_cast<float>(iy);
  const long long r0 = (p.box_top + iy) * row_stride;
  const long long r1 = (p.box_top + MinInt(iy + 1, p.box_height - 1)) * row_stride;

  const uint8_t* base = src + c * channel_stride;
  const uint8_t* row0 = base + r0;
  const uint8_t* row1 = base + r1;
  const float top = row0[x0] + (row0[x1] - row0[x0]) * wx;
  const float bottom = row1[x0] + (row1[x1] - row1[x0]) * wx;
  float v = top + (bottom - top) * wy;
  // std::nearbyint under the default rounding mode: half to even.
  v = rintf(v);
  v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
  const float scaled = static_cast<float>(static_cast<uint8_t>(v)) / 255.0f;
  return p.normalise ? (scaled - p.mean[c]) / p.std[c] : scaled;
}

// Where output channel c at (y, x) goes in the image's output.
TLSERVE_HOST_DEVICE inline long long FusedOffset(const FusedPreprocessParams& p,
                                                 int c, int y, int x) {
  return p.channels_last
             ? (static_cast<long long>(y) * p.out_width + x) * p.channels + c
             : (static_cast<long long>(c) * p.out_height + y) * p.out_width + x;
}

}  // namespace internal

// The host reference: the kernel's arithmetic in a plain loop, writing
// channels * out_height * out_width floats to `out`. False (and nothing
// written) when FusedPreprocessProblem refuses `p`.
bool FusedPreprocessOnHost(const uint8_t* src, const FusedPreprocessParams& p,
                           float* out);

}  // namespace tlserve::worker::gpu

#endif  // TLSERVE_WORKER_GPU_FUSED_PREPROCESS_H_
