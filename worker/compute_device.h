#ifndef TLSERVE_WORKER_COMPUTE_DEVICE_H_
#define TLSERVE_WORKER_COMPUTE_DEVICE_H_

// Where and how a job's arithmetic runs: the device, bfloat16 autocast and
// the memory layout of convolution weights. The LibTorch API differences
// between Debian's 1.13 (CPU) and 2.x (CUDA) stay in compute_device.cc.

#include <string>
#include <vector>

#include <c10/core/Device.h>
#include <c10/core/MemoryFormat.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace at {
class Tensor;
}
namespace torch::jit {
struct Module;
}

namespace tlserve::worker {

// Checks a worker's --device ("cpu", "cuda" or "cuda:N") against what its
// LibTorch can reach: FAILED_PRECONDITION, saying what to change, for a GPU
// that is not there or a LibTorch built without CUDA.
absl::Status CheckWorkerDevice(absl::string_view worker_device);

// The device a job runs on: the worker's GPU for spec.device "cuda", the
// CPU for "cpu" (or unset). A "cuda" job on a worker without one is
// FAILED_PRECONDITION (the server sends such jobs only to GPU workers).
absl::StatusOr<c10::Device> ResolveJobDevice(absl::string_view worker_device,
                                             absl::string_view spec_device);

// The device as the manifest and logs name it: "cpu", "cuda:0 (NVIDIA H200)".
std::string DescribeDevice(const c10::Device& device);

// Sets the per-process switches a training job on `device` wants: cuDNN's
// autotuner (benchmark mode) on a GPU unless deterministic algorithms are
// asked for. Returns the settings made, for the repro manifest.
std::vector<std::string> ConfigureForTraining(const c10::Device& device);

// bfloat16 autocast on `device_type` for this thread while in scope (off:
// does nothing). Leaving the outermost scope drops autocast's cache of
// bfloat16 weight copies, so a scope per step never reuses copies of
// weights the optimizer has since changed.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device_type, bool enabled);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_type_;
  bool enabled_;
  bool was_enabled_ = false;
  int previous_dtype_ = 0;  // c10::ScalarType, kept opaque here
};

// The memory layout a job's image tensors and convolution weights use on
// `device`: channels-last on a GPU (what cuDNN's tensor-core kernels take
// without transposes), contiguous on the CPU (Debian's CPU kernels were not
// faster with it).
c10::MemoryFormat PreferredMemoryFormat(const c10::Device& device);

// Re-lays out every 4-D parameter of `module` (convolution weights) in
// `format`, keeping the tensors (optimizers built later see the same ones).
void SetWeightsMemoryFormat(torch::jit::Module& module, c10::MemoryFormat format);

// True for a status TorchGuard made of an allocator failure (CUDA or host):
// the case a smaller micro-batch can fix.
bool IsOutOfMemory(const absl::Status& status);

// Frees the CUDA caching allocator's unused blocks after an out-of-memory
// error, so the smaller retry finds them; nothing on a CPU-only build.
void ReleaseCachedDeviceMemory();

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_COMPUTE_DEVICE_H_
