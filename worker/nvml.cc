#include "worker/nvml.h"

#include <dlfcn.h>

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tlserve::worker {
namespace {

// The parts of nvml.h used here, written from NVIDIA's NVML API reference
// so that building needs no CUDA toolkit.
using nvmlReturn_t = int;  // an enum in nvml.h; NVML_SUCCESS is 0
constexpr nvmlReturn_t kNvmlSuccess = 0;
struct nvmlDevice_st;
using nvmlDevice_t = nvmlDevice_st*;
struct nvmlUtilization_t {
  unsigned int gpu;     // percent of the sample period a kernel ran
  unsigned int memory;  // percent of it device memory was read or written
};
struct nvmlMemory_t {  // version 1 of the struct: bytes
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
constexpr unsigned int kNvmlNameBufferSize = 96;  // NVML_DEVICE_NAME_V2_BUFFER_SIZE

}  // namespace

struct Nvml::Api {
  nvmlReturn_t (*init_v2)();
  nvmlReturn_t (*shutdown)();
  nvmlReturn_t (*get_count_v2)(unsigned int*);
  nvmlReturn_t (*get_handle_by_index_v2)(unsigned int, nvmlDevice_t*);
  nvmlReturn_t (*get_handle_by_uuid)(const char*, nvmlDevice_t*);
  nvmlReturn_t (*get_utilization_rates)(nvmlDevice_t, nvmlUtilization_t*);
  nvmlReturn_t (*get_memory_info)(nvmlDevice_t, nvmlMemory_t*);
  nvmlReturn_t (*get_name)(nvmlDevice_t, char*, unsigned int);
  const char* (*error_string)(nvmlReturn_t);  // may be missing: then codes only

  std::string Error(const char* call, nvmlReturn_t code) const {
    const char* text = error_string != nullptr ? error_string(code) : nullptr;
    return absl::StrCat(call, " failed: ", text != nullptr ? text : "NVML error", " (",
                        code, ")");
  }
};

namespace {

template <typename F>
bool Bind(void* library, const char* symbol, F*& out) {
  out = reinterpret_cast<F*>(dlsym(library, symbol));
  return out != nullptr;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Nvml>> Nvml::Load(const std::string& library) {
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return absl::NotFoundError(absl::StrCat("cannot load ", library, ": ",
                                            why != nullptr ? why : "dlopen failed"));
  }
  auto api = std::make_unique<Api>();
  const struct {
    const char* symbol;
    bool bound;
  } symbols[] = {
      {"nvmlInit_v2", Bind(handle, "nvmlInit_v2", api->init_v2)},
      {"nvmlShutdown", Bind(handle, "nvmlShutdown", api->shutdown)},
      {"nvmlDeviceGetCount_v2", Bind(handle, "nvmlDeviceGetCount_v2", api->get_count_v2)},
      {"nvmlDeviceGetHandleByIndex_v2",
       Bind(handle, "nvmlDeviceGetHandleByIndex_v2", api->get_handle_by_index_v2)},
      {"nvmlDeviceGetHandleByUUID",
       Bind(handle, "nvmlDeviceGetHandleByUUID", api->get_handle_by_uuid)},
      {"nvmlDeviceGetUtilizationRates",
       Bind(handle, "nvmlDeviceGetUtilizationRates", api->get_utilization_rates)},
      {"nvmlDeviceGetMemoryInfo", Bind(handle, "nvmlDeviceGetMemoryInfo", api->get_memory_info)},
      {"nvmlDeviceGetName", Bind(handle, "nvmlDeviceGetName", api->get_name)},
  };
  for (const auto& s : symbols) {
    if (!s.bound) {
      dlclose(handle);
      return absl::UnimplementedError(
          absl::StrCat(library, " has no ", s.symbol, ": an NVIDIA driver too old for it?"));
    }
  }
  Bind(handle, "nvmlErrorString", api->error_string);
  if (const nvmlReturn_t rc = api->init_v2(); rc != kNvmlSuccess) {
    const std::string error = api->Error("nvmlInit_v2", rc);
    dlclose(handle);
    return absl::UnavailableError(error);
  }
  return std::unique_ptr<Nvml>(new Nvml(handle, std::move(api)));
}

Nvml::Nvml(void* library, std::unique_ptr<Api> api)
    : library_(library), api_(std::move(api)) {}

Nvml::~Nvml() {
  api_->shutdown();
  dlclose(library_);
}

absl::StatusOr<Nvml::Device> Nvml::Open(const std::string& id) const {
  nvmlDevice_t handle = nullptr;
  unsigned int index = 0;
  if (absl::SimpleAtoi(id, &index)) {
    unsigned int count = 0;
    if (const nvmlReturn_t rc = api_->get_count_v2(&count); rc != kNvmlSuccess) {
      return absl::UnavailableError(api_->Error("nvmlDeviceGetCount_v2", rc));
    }
    if (index >= count) {
      return absl::NotFoundError(
          absl::StrCat("NVML device ", index, " does not exist: NVML sees ", count, " GPUs"));
    }
    if (const nvmlReturn_t rc = api_->get_handle_by_index_v2(index, &handle);
        rc != kNvmlSuccess) {
      return absl::UnavailableError(api_->Error("nvmlDeviceGetHandleByIndex_v2", rc));
    }
  } else if (const nvmlReturn_t rc = api_->get_handle_by_uuid(id.c_str(), &handle);
             rc != kNvmlSuccess) {
    return absl::NotFoundError(
        absl::StrCat("GPU ", id, ": ", api_->Error("nvmlDeviceGetHandleByUUID", rc)));
  }
  char name[kNvmlNameBufferSize] = {};
  if (const nvmlReturn_t rc = api_->get_name(handle, name, sizeof(name)); rc != kNvmlSuccess) {
    return absl::UnavailableError(api_->Error("nvmlDeviceGetName", rc));
  }
  name[sizeof(name) - 1] = '\0';
  return Device{reinterpret_cast<void*>(handle), name};
}

absl::StatusOr<Nvml::Reading> Nvml::Read(const Device& device) const {
  auto* handle = reinterpret_cast<nvmlDevice_t>(device.handle);
  nvmlUtilization_t utilization{};
  if (const nvmlReturn_t rc = api_->get_utilization_rates(handle, &utilization);
      rc != kNvmlSuccess) {
    return absl::UnavailableError(api_->Error("nvmlDeviceGetUtilizationRates", rc));
  }
  nvmlMemory_t memory{};
  if (const nvmlReturn_t rc = api_->get_memory_info(handle, &memory); rc != kNvmlSuccess) {
    return absl::UnavailableError(api_->Error("nvmlDeviceGetMemoryInfo", rc));
  }
  Reading reading;
  reading.utilization = static_cast<double>(utilization.gpu) / 100.0;
  reading.memory_used_bytes = static_cast<int64_t>(memory.used);
  reading.memory_total_bytes = static_cast<int64_t>(memory.total);
  return reading;
}

absl::StatusOr<std::string> NvmlDeviceId(int cuda_index, const char* cuda_visible_devices) {
  if (cuda_index < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda:", cuda_index, " is not a device"));
  }
  if (cuda_visible_devices == nullptr) return absl::StrCat(cuda_index);
  const std::vector<absl::string_view> visible =
      absl::StrSplit(cuda_visible_devices, ',', absl::SkipWhitespace());
  if (static_cast<size_t>(cuda_index) >= visible.size()) {
    return absl::NotFoundError(absl::StrCat("cuda:", cuda_index, " is not among the ",
                                            visible.size(), " GPUs CUDA_VISIBLE_DEVICES='",
                                            cuda_visible_devices, "' lists"));
  }
  const absl::string_view entry = absl::StripAsciiWhitespace(visible[cuda_index]);
  int index = 0;
  if (absl::SimpleAtoi(entry, &index) && index >= 0) return absl::StrCat(index);
  if (absl::StartsWith(entry, "GPU-")) return std::string(entry);
  // MIG-... instances: NVML reports utilisation of the whole GPU only.
  return absl::UnimplementedError(absl::StrCat("CUDA_VISIBLE_DEVICES entry '", entry,
                                               "' is neither a GPU index nor a GPU- UUID"));
}

}  // namespace tlserve::worker
