#include "worker/gpu/fused_preprocess_cuda.h"

namespace tlserve::worker::gpu {
namespace {

constexpr int kBlockX = 32;
constexpr int kBlockY = 8;

// One thread per output pixel of one image (blockIdx.z), all channels:
// neighbouring threads read neighbouring source pixels and write
// neighbouring outputs.
__global__ void FusedPreprocessKernel(const uint8_t* const* srcs,
                                      const FusedPreprocessParams* params,
                                      long long image_floats, float* out) {
  const int image = blockIdx.z;
  const FusedPreprocessParams& p = params[image];
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= p.out_width || y >= p.out_height) return;
  float* dst = out + image * image_floats;
  for (int c = 0; c < p.channels; ++c) {
    dst[internal::FusedOffset(p, c, y, x)] =
        internal::FusedValue(srcs[image], p, c, y, x);
  }
}

}  // namespace

cudaError_t LaunchFusedPreprocess(const uint8_t* const* device_srcs,
                                  const FusedPreprocessParams* device_params,
                                  int images, int channels, int out_height,
                                  int out_width, float* device_out,
                                  cudaStream_t stream) {
  if (images < 1 || channels < 1 || out_height < 1 || out_width < 1) {
    return cudaErrorInvalidValue;
  }
  const dim3 block(kBlockX, kBlockY, 1);
  const dim3 grid((out_width + kBlockX - 1) / kBlockX,
                  (out_height + kBlockY - 1) / kBlockY,
                  static_cast<unsigned>(images));
  const long long image_floats =
      static_cast<long long>(channels) * out_height * out_width;
  FusedPreprocessKernel<<<grid, block, 0, stream>>>(device_srcs, device_params,
                                                    image_floats, device_out);
  return cudaGetLastError();
}

const char* CudaDeviceUnavailable() {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess) return cudaGetErrorString(e);
  return devices > 0 ? nullptr : "no CUDA device";
}

const char* FusedPreprocessOnDevice(const uint8_t* src,
                                    const FusedPreprocessParams& p,
                                    float* out) {
  if (const char* problem = FusedPreprocessProblem(p)) return problem;
  const size_t src_bytes =
      static_cast<size_t>(p.channels) * p.src_height * p.src_width;
  const size_t out_bytes = sizeof(float) * p.channels * p.out_height *
                           static_cast<size_t>(p.out_width);
  uint8_t* d_src = nullptr;
  const uint8_t** d_srcs = nullptr;
  FusedPreprocessParams* d_params = nullptr;
  float* d_out = nullptr;
  cudaError_t e = cudaMalloc(&d_src, src_bytes);
  if (e == cudaSuccess) e = cudaMalloc(&d_srcs, sizeof(uint8_t*));
  if (e == cudaSuccess) e = cudaMalloc(&d_params, sizeof(p));
  if (e == cudaSuccess) e = cudaMalloc(&d_out, out_bytes);
  if (e == cudaSuccess) {
    e = cudaMemcpy(d_src, src, src_bytes, cudaMemcpyHostToDevice);
  }
  const uint8_t* srcs[1] = {d_src};
  if (e == cudaSuccess) {
    e = cudaMemcpy(d_srcs, srcs, sizeof(srcs), cudaMemcpyHostToDevice);
  }
  if (e == cudaSuccess) {
    e = cudaMemcpy(d_params, &p, sizeof(p), cudaMemcpyHostToDevice);
  }
  if (e == cudaSuccess) {
    e = LaunchFusedPreprocess(d_srcs, d_params, 1, p.channels, p.out_height,
                              p.out_width, d_out, nullptr);
  }
  if (e == cudaSuccess) {
    e = cudaMemcpy(out, d_out, out_bytes, cudaMemcpyDeviceToHost);
  }
  cudaFree(d_out);
  cudaFree(d_params);
  cudaFree(d_srcs);
  cudaFree(d_src);
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace tlserve::worker::gpu
