#ifndef TLSERVE_WORKER_DEVICE_METRICS_H_
#define TLSERVE_WORKER_DEVICE_METRICS_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "worker/host_stats.h"
#include "worker/nvml.h"

namespace tlserve::worker {

// The worker's device series, labelled device="cpu" or device="cuda:N"
// (the --device name) and, for a GPU, model="<NVML name>":
//   tlserve_worker_device_utilization_ratio    busy share, 0..1
//   tlserve_worker_device_memory_used_bytes
//   tlserve_worker_device_memory_total_bytes
//   process_cpu_seconds_total                  this process's CPU time
// device="cpu" is always there: this process's share of the CPUs it may
// use, its resident memory, and the memory it may use (MemTotal or a lower
// cgroup limit). device="cuda:N" comes from NVML when --device names a GPU
// and NVML loads; otherwise the GPU series are left out and one warning
// says why.
//
// prometheus-cpp's Registry cannot hold a custom Collectable (only an
// Exposer can, and the worker serves its Registry itself), so the gauges
// live in the served Registry and a thread refreshes them every
// `sample_period`: a scrape sees values at most that old. Thread-safe.
class DeviceMetrics {
 public:
  struct Options {
    // tlworker --device: "cpu" or "cuda:N" ("cuda" is cuda:0).
    std::string device = "cpu";
    // How often the sampling thread refreshes the gauges, and the window of
    // the CPU utilisation. Zero: no thread; the owner calls Sample().
    absl::Duration sample_period = absl::Seconds(5);
    // Opened with dlopen for a cuda device.
    std::string nvml_library = "libnvidia-ml.so.1";
    // Null: this process's /proc and cgroup files.
    std::shared_ptr<const HostReader> host;
    // Where the one warning about missing GPU series goes. Null: stderr.
    std::function<void(const std::string&)> warn;
  };

  // Takes a first sample (memory series exist from the start; utilisation
  // from the second sample on), then starts the sampling thread.
  DeviceMetrics(prometheus::Registry& registry, Options options);
  ~DeviceMetrics();  // stops and joins the thread
  DeviceMetrics(const DeviceMetrics&) = delete;
  DeviceMetrics& operator=(const DeviceMetrics&) = delete;

  // Reads the host (and the GPU) once and updates the series.
  void Sample();

  // Whether the GPU series are being exported.
  bool exports_gpu() const;

 private:
  // One device's three gauges; utilization is added once it has a value.
  struct Series {
    prometheus::Labels labels;
    prometheus::Gauge* utilization = nullptr;
    prometheus::Gauge* memory_used = nullptr;
    prometheus::Gauge* memory_total = nullptr;
  };

  void OpenGpu() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SampleHost() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SampleGpu() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Set(Series& series, std::optional<double> utilization, std::optional<double> used,
           std::optional<double> total) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Drop(Series& series) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Warn(const std::string& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Loop();

  const Options options_;
  const std::shared_ptr<const HostReader> host_;
  prometheus::Family<prometheus::Gauge>& utilization_;
  prometheus::Family<prometheus::Gauge>& memory_used_;
  prometheus::Family<prometheus::Gauge>& memory_total_;
  prometheus::Counter& cpu_seconds_;

  mutable absl::Mutex mu_;
  CpuUtilization cpu_utilization_ ABSL_GUARDED_BY(mu_);
  double cpu_seconds_counted_ ABSL_GUARDED_BY(mu_) = 0;
  Series cpu_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Nvml> nvml_ ABSL_GUARDED_BY(mu_);
  std::optional<Nvml::Device> gpu_ ABSL_GUARDED_BY(mu_);
  Series gpu_series_ ABSL_GUARDED_BY(mu_);
  bool warned_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_DEVICE_METRICS_H_
