#include "worker/compute_device.h"

#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>
#include <ATen/autocast_mode.h>

#if TLSERVE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace tlserve::worker {
namespace {

// LibTorch 2.4 replaced the per-device autocast calls with ones that take
// the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define TLSERVE_AUTOCAST_BY_DEVICE_TYPE 1
#endif

bool AutocastEnabled(c10::DeviceType type) {
#ifdef TLSERVE_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::is_autocast_enabled(type);
#else
  return type == c10::DeviceType::CUDA ? at::autocast::is_enabled()
                                       : at::autocast::is_cpu_enabled();
#endif
}

void SetAutocastEnabled(c10::DeviceType type, bool enabled) {
#ifdef TLSERVE_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_enabled(type, enabled);
#else
  if (type == c10::DeviceType::CUDA) {
    at::autocast::set_enabled(enabled);
  } else {
    at::autocast::set_cpu_enabled(enabled);
  }
#endif
}

at::ScalarType AutocastDtype(c10::DeviceType type) {
#ifdef TLSERVE_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::get_autocast_dtype(type);
#else
  return type == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype()
                                       : at::autocast::get_autocast_cpu_dtype();
#endif
}

void SetAutocastDtype(c10::DeviceType type, at::ScalarType dtype) {
#ifdef TLSERVE_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_dtype(type, dtype);
#else
  if (type == c10::DeviceType::CUDA) {
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
}

// The N of "cuda:N" ("cuda" is 0); an error for anything else.
absl::StatusOr<int> CudaIndexOf(absl::string_view device) {
  absl::string_view rest = device;
  if (!absl::ConsumePrefix(&rest, "cuda")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device \"", device, "\" is not cpu, cuda or cuda:N"));
  }
  if (rest.empty()) return 0;
  int index = -1;
  if (!absl::ConsumePrefix(&rest, ":") || !absl::SimpleAtoi(rest, &index) ||
      index < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device \"", device, "\" is not cpu, cuda or cuda:N (N >= 0)"));
  }
  return index;
}

}  // namespace

absl::Status CheckWorkerDevice(absl::string_view worker_device) {
  if (worker_device == "cpu") return absl::OkStatus();
  absl::StatusOr<int> index = CudaIndexOf(worker_device);
  if (!index.ok()) return index.status();
  if (!torch::cuda::is_available()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device=", worker_device,
        " but this worker's LibTorch sees no CUDA device (a CPU-only LibTorch, "
        "a build without TLSERVE_WITH_CUDA, no GPU, or CUDA_VISIBLE_DEVICES "
        "hides it); start it with --device=cpu or on a GPU machine"));
  }
  const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
  if (*index >= count) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device=", worker_device, " but only ", count,
        " CUDA device(s) are visible (cuda:0 to cuda:", count - 1,
        "); CUDA_VISIBLE_DEVICES renumbers them from 0"));
  }
  return absl::OkStatus();
}

absl::StatusOr<c10::Device> ResolveJobDevice(absl::string_view worker_device,
                                             absl::string_view spec_device) {
  if (spec_device.empty() || spec_device == "cpu") return c10::Device(c10::kCPU);
  if (spec_device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.device must be \"cpu\" or \"cuda\", got \"", spec_device, "\""));
  }
  if (!absl::StartsWith(worker_device, "cuda")) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the job asks for spec.device \"cuda\" but this worker runs on \"",
        worker_device, "\"; the server should have sent it to a GPU worker"));
  }
  if (absl::Status ok = CheckWorkerDevice(worker_device); !ok.ok()) return ok;
  absl::StatusOr<int> index = CudaIndexOf(worker_device);
  if (!index.ok()) return index.status();
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(*index));
}

std::string DescribeDevice(const c10::Device& device) {
#if TLSERVE_WITH_CUDA
  if (device.is_cuda()) {
    const cudaDeviceProp* props = at::cuda::getDeviceProperties(device.index());
    return absl::StrCat(device.str(), " (", props->name, ")");
  }
#endif
  return device.str();
}

std::vector<std::string> ConfigureForTraining(const c10::Device& device) {
  std::vector<std::string> settings;
  if (!device.is_cuda()) return settings;
  // cuDNN times the candidate kernels for each new input shape once and
  // keeps the fastest; results then depend on the kernels chosen, so not
  // when deterministic algorithms are asked for.
  const bool benchmark = !at::globalContext().deterministicAlgorithms();
  at::globalContext().setBenchmarkCuDNN(benchmark);
  settings.push_back(absl::StrCat("cudnn.benchmark=", benchmark ? "true" : "false"));
  return settings;
}

AutocastScope::AutocastScope(c10::DeviceType device_type, bool enabled)
    : device_type_(device_type), enabled_(enabled) {
  if (!enabled_) return;
  was_enabled_ = AutocastEnabled(device_type_);
  previous_dtype_ = static_cast<int>(AutocastDtype(device_type_));
  SetAutocastDtype(device_type_, at::kBFloat16);
  SetAutocastEnabled(device_type_, true);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!enabled_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  SetAutocastEnabled(device_type_, was_enabled_);
  SetAutocastDtype(device_type_, static_cast<at::ScalarType>(previous_dtype_));
}

c10::MemoryFormat PreferredMemoryFormat(const c10::Device& device) {
  return device.is_cuda() ? c10::MemoryFormat::ChannelsLast
                          : c10::MemoryFormat::Contiguous;
}

void SetWeightsMemoryFormat(torch::jit::Module& module,
                            c10::MemoryFormat format) {
  for (at::Tensor p : module.parameters(/*recurse=*/true)) {
    if (p.dim() != 4 || p.is_contiguous(format)) continue;
    at::NoGradGuard no_grad;
    p.set_data(p.contiguous(format));
  }
}

bool IsOutOfMemory(const absl::Status& status) {
  return status.code() == absl::StatusCode::kResourceExhausted &&
         absl::StrContains(status.message(), "out of memory");
}

void ReleaseCachedDeviceMemory() {
#if TLSERVE_WITH_CUDA
  c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

}  // namespace tlserve::worker
