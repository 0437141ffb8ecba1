#include "worker/device_metrics.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace tlserve::worker {
namespace {

// The N of "cuda:N" ("cuda" alone is 0); nullopt for any other device.
std::optional<int> CudaIndex(absl::string_view device) {
  if (!absl::ConsumePrefix(&device, "cuda")) return std::nullopt;
  if (device.empty()) return 0;
  int index = -1;
  if (!absl::ConsumePrefix(&device, ":") || !absl::SimpleAtoi(device, &index)) return -1;
  return index;
}

}  // namespace

DeviceMetrics::DeviceMetrics(prometheus::Registry& registry, Options options)
    : options_(std::move(options)),
      host_(options_.host != nullptr ? options_.host : ProcHostReader()),
      utilization_(prometheus::BuildGauge()
                       .Name("tlserve_worker_device_utilization_ratio")
                       .Help("Busy share of the worker's device, 0 to 1: for a GPU, of "
                             "NVML's last sample period with a kernel running; for the "
                             "CPU, this process's CPU time over the CPUs it may use")
                       .Register(registry)),
      memory_used_(prometheus::BuildGauge()
                       .Name("tlserve_worker_device_memory_used_bytes")
                       .Help("Memory in use on the worker's device: GPU memory in use "
                             "(NVML), or this process's resident memory for the CPU")
                       .Register(registry)),
      memory_total_(prometheus::BuildGauge()
                        .Name("tlserve_worker_device_memory_total_bytes")
                        .Help("Memory of the worker's device: the GPU's, or for the CPU "
                              "the machine's MemTotal or the cgroup's limit if lower")
                        .Register(registry)),
      cpu_seconds_(prometheus::BuildCounter()
                       .Name("process_cpu_seconds_total")
                       .Help("User and system CPU time the worker process has used")
                       .Register(registry)
                       .Add({})) {
  {
    absl::MutexLock lock(&mu_);
    cpu_.labels = {{"device", "cpu"}};
    OpenGpu();
  }
  Sample();
  if (options_.sample_period > absl::ZeroDuration()) {
    thread_ = std::thread([this] { Loop(); });
  }
}

DeviceMetrics::~DeviceMetrics() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void DeviceMetrics::Loop() {
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.sample_period)) {
    SampleHost();
    SampleGpu();
  }
}

void DeviceMetrics::Sample() {
  absl::MutexLock lock(&mu_);
  SampleHost();
  SampleGpu();
}

bool DeviceMetrics::exports_gpu() const {
  absl::MutexLock lock(&mu_);
  return gpu_series_.memory_used != nullptr;
}

void DeviceMetrics::OpenGpu() {
  const std::optional<int> cuda = CudaIndex(options_.device);
  if (!cuda.has_value()) return;
  const auto fail = [this](const std::string& why) {
    Warn(absl::StrCat("no GPU series for --device=", options_.device, ": ", why));
  };
  absl::StatusOr<std::string> id = NvmlDeviceId(*cuda, std::getenv("CUDA_VISIBLE_DEVICES"));
  if (!id.ok()) return fail(std::string(id.status().message()));
  absl::StatusOr<std::unique_ptr<Nvml>> nvml = Nvml::Load(options_.nvml_library);
  if (!nvml.ok()) return fail(std::string(nvml.status().message()));
  absl::StatusOr<Nvml::Device> device = (*nvml)->Open(*id);
  if (!device.ok()) return fail(std::string(device.status().message()));
  nvml_ = *std::move(nvml);
  gpu_ = *std::move(device);
  gpu_series_.labels = {{"device", absl::StrCat("cuda:", *cuda)}, {"model", gpu_->name}};
}

void DeviceMetrics::SampleHost() {
  const HostSample sample = ReadHost(*host_);
  std::optional<double> utilization;
  if (sample.cpu_seconds.has_value()) {
    // The counter takes increments only; CPU time never goes back.
    if (*sample.cpu_seconds > cpu_seconds_counted_) {
      cpu_seconds_.Increment(*sample.cpu_seconds - cpu_seconds_counted_);
      cpu_seconds_counted_ = *sample.cpu_seconds;
    }
    if (sample.cpus.has_value()) {
      utilization = cpu_utilization_.Update(sample.at, *sample.cpu_seconds, *sample.cpus);
    }
  }
  const auto as_double = [](std::optional<int64_t> v) -> std::optional<double> {
    if (!v.has_value()) return std::nullopt;
    return static_cast<double>(*v);
  };
  Set(cpu_, utilization, as_double(sample.resident_bytes),
      as_double(sample.memory_limit_bytes));
}

void DeviceMetrics::SampleGpu() {
  if (!gpu_.has_value()) return;
  absl::StatusOr<Nvml::Reading> reading = nvml_->Read(*gpu_);
  if (!reading.ok()) {
    // A GPU that fell off the bus, a driver reload: no stale values; try
    // again next time.
    Drop(gpu_series_);
    Warn(absl::StrCat("GPU series for ", options_.device, " left out: ",
                      reading.status().message()));
    return;
  }
  Set(gpu_series_, reading->utilization, static_cast<double>(reading->memory_used_bytes),
      static_cast<double>(reading->memory_total_bytes));
}

void DeviceMetrics::Set(Series& series, std::optional<double> utilization,
                        std::optional<double> used, std::optional<double> total) {
  // Each gauge is made the first time there is a value for it, so a series
  // never shows a made-up 0.
  const auto set = [&series](prometheus::Family<prometheus::Gauge>& family,
                             prometheus::Gauge*& gauge, std::optional<double> value) {
    if (!value.has_value()) return;
    if (gauge == nullptr) gauge = &family.Add(series.labels);
    gauge->Set(*value);
  };
  set(utilization_, series.utilization, utilization);
  set(memory_used_, series.memory_used, used);
  set(memory_total_, series.memory_total, total);
}

void DeviceMetrics::Drop(Series& series) {
  const auto drop = [](prometheus::Family<prometheus::Gauge>& family,
                       prometheus::Gauge*& gauge) {
    if (gauge != nullptr) family.Remove(gauge);
    gauge = nullptr;
  };
  drop(utilization_, series.utilization);
  drop(memory_used_, series.memory_used);
  drop(memory_total_, series.memory_total);
}

void DeviceMetrics::Warn(const std::string& message) {
  if (warned_) return;
  warned_ = true;
  if (options_.warn) {
    options_.warn(message);
  } else {
    std::fprintf(stderr, "tlworker: warning: %s\n", message.c_str());
  }
}

}  // namespace tlserve::worker
