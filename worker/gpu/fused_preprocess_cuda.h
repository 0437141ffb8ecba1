#ifndef TLSERVE_WORKER_GPU_FUSED_PREPROCESS_CUDA_H_
#define TLSERVE_WORKER_GPU_FUSED_PREPROCESS_CUDA_H_

// The CUDA half of worker/gpu/fused_preprocess.h: one kernel launch
// preprocesses a whole batch of decoded images into one float tensor.
// Only code built with the CUDA Toolkit includes this header.

#include <cuda_runtime.h>

#include <cstdint>

#include "worker/gpu/fused_preprocess.h"

namespace tlserve::worker::gpu {

// Preprocesses `images` decoded images into `device_out`, image i at
// device_out + i * channels * out_height * out_width, laid out as each
// image's params say. All pointers are device memory: device_srcs[i] is
// image i's bytes, device_params[i] its parameters, which must share
// `channels`, `out_height` and `out_width` and which the caller has
// checked with FusedPreprocessProblem on the host. Asynchronous on
// `stream`; returns the launch's error, if any.
cudaError_t LaunchFusedPreprocess(const uint8_t* const* device_srcs,
                                  const FusedPreprocessParams* device_params,
                                  int images, int channels, int out_height,
                                  int out_width, float* device_out,
                                  cudaStream_t stream);

// Why no CUDA device can run the kernel here (no driver, no device), or
// nullptr when one can.
const char* CudaDeviceUnavailable();

// For tests and tools: preprocesses one image held in host memory on the
// current CUDA device and copies the floats back to `out` (host memory,
// channels * out_height * out_width). Synchronous. nullptr on success,
// else what failed (FusedPreprocessProblem's refusal or a CUDA error).
const char* FusedPreprocessOnDevice(const uint8_t* src,
                                    const FusedPreprocessParams& p,
                                    float* out);

}  // namespace tlserve::worker::gpu

#endif  // TLSERVE_WORKER_GPU_FUSED_PREPROCESS_CUDA_H_
