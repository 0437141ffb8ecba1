#ifndef TLSERVE_WORKER_NVML_H_
#define TLSERVE_WORKER_NVML_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace tlserve::worker {

// NVIDIA's management library (libnvidia-ml), opened with dlopen at run
// time: the worker neither links against it nor needs it, and the GPU
// driver ships it on every GPU node. Only the few calls the device series
// need. Thread-safe (NVML is); owns the library handle and shuts NVML down
// in its destructor.
class Nvml {
 public:
  // One GPU, found by Open().
  struct Device {
    void* handle = nullptr;  // nvmlDevice_t
    std::string name;        // "NVIDIA H200"
  };
  struct Reading {
    double utilization = 0;  // share of the last sample period with a kernel running
    int64_t memory_used_bytes = 0;
    int64_t memory_total_bytes = 0;
  };

  // dlopen()s `library` and initialises NVML; the error says which step
  // failed (no library: no NVIDIA driver on this machine).
  static absl::StatusOr<std::unique_ptr<Nvml>> Load(const std::string& library);
  ~Nvml();
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  // A GPU by NVML index ("0") or UUID ("GPU-8e...").
  absl::StatusOr<Device> Open(const std::string& id) const;
  absl::StatusOr<Reading> Read(const Device& device) const;

 private:
  struct Api;
  Nvml(void* library, std::unique_ptr<Api> api);

  void* library_;
  std::unique_ptr<Api> api_;
};

// Which NVML device the worker's cuda:`cuda_index` is. NVML numbers every
// GPU the process can see; CUDA numbers only those CUDA_VISIBLE_DEVICES
// lists, in its order, by index or UUID. `cuda_visible_devices` is that
// variable, or null when unset. Assumes CUDA_DEVICE_ORDER=PCI_BUS_ID
// ordering (NVML's), which is CUDA's too unless the GPUs differ in speed.
absl::StatusOr<std::string> NvmlDeviceId(int cuda_index, const char* cuda_visible_devices);

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_NVML_H_
