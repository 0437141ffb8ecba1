// A stand-in for libnvidia-ml.so.1 with two made-up GPUs, so the NVML path
// of DeviceMetrics runs on machines without a GPU. Layouts as in nvml.h.
// FakeNvmlSetFailReads(1) makes the per-sample reads fail, as a GPU that
// fell off the bus does.

#include <cstring>

namespace {

struct Utilization {
  unsigned int gpu;
  unsigned int memory;
};
struct Memory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct Gpu {
  const char* uuid;
  const char* name;
  unsigned int busy_percent;
  unsigned long long total;
  unsigned long long used;
};

constexpr int kSuccess = 0;
constexpr int kUninitialized = 1;
constexpr int kInvalidArgument = 2;
constexpr int kNotFound = 6;
constexpr int kGpuIsLost = 15;

Gpu gpus[] = {
    {"GPU-00000000-1111-2222-3333-444444444444", "Fake GPU Alpha", 37, 80ull << 30, 3ull << 30},
    {"GPU-55555555-6666-7777-8888-999999999999", "Fake GPU Beta", 90, 16ull << 30, 15ull << 30},
};
int initialised = 0;
int fail_reads = 0;

Gpu* Find(void* device) {
  for (Gpu& gpu : gpus) {
    if (device == &gpu) return &gpu;
  }
  return nullptr;
}

}  // namespace

extern "C" {

void FakeNvmlSetFailReads(int fail) { fail_reads = fail; }
int FakeNvmlInitialised() { return initialised; }

int nvmlInit_v2() {
  ++initialised;
  return kSuccess;
}
int nvmlShutdown() {
  if (initialised == 0) return kUninitialized;
  --initialised;
  return kSuccess;
}
const char* nvmlErrorString(int code) { return code == kGpuIsLost ? "GPU is lost" : "fake error"; }
int nvmlDeviceGetCount_v2(unsigned int* count) {
  if (initialised == 0) return kUninitialized;
  *count = sizeof(gpus) / sizeof(gpus[0]);
  return kSuccess;
}
int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void** device) {
  if (initialised == 0) return kUninitialized;
  if (index >= sizeof(gpus) / sizeof(gpus[0])) return kInvalidArgument;
  *device = &gpus[index];
  return kSuccess;
}
int nvmlDeviceGetHandleByUUID(const char* uuid, void** device) {
  if (initialised == 0) return kUninitialized;
  for (Gpu& gpu : gpus) {
    if (std::strcmp(gpu.uuid, uuid) == 0) {
      *device = &gpu;
      return kSuccess;
    }
  }
  return kNotFound;
}
int nvmlDeviceGetName(void* device, char* name, unsigned int length) {
  const Gpu* gpu = Find(device);
  if (gpu == nullptr) return kInvalidArgument;
  if (std::strlen(gpu->name) + 1 > length) return kInvalidArgument;
  std::strcpy(name, gpu->name);
  return kSuccess;
}
int nvmlDeviceGetUtilizationRates(void* device, Utilization* utilization) {
  const Gpu* gpu = Find(device);
  if (gpu == nullptr) return kInvalidArgument;
  if (fail_reads) return kGpuIsLost;
  utilization->gpu = gpu->busy_percent;
  utilization->memory = gpu->busy_percent / 2;
  return kSuccess;
}
int nvmlDeviceGetMemoryInfo(void* device, Memory* memory) {
  const Gpu* gpu = Find(device);
  if (gpu == nullptr) return kInvalidArgument;
  if (fail_reads) return kGpuIsLost;
  memory->total = gpu->total;
  memory->used = gpu->used;
  memory->free = gpu->total - gpu->used;
  return kSuccess;
}

}  // extern "C"
