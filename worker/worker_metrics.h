#ifndef TLSERVE_WORKER_WORKER_METRICS_H_
#define TLSERVE_WORKER_WORKER_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "worker/device_metrics.h"

namespace tlserve::worker {

// A worker's own Prometheus series, served on tlworker --metrics_listen
// (Prometheus tells workers apart by target, so no worker label):
//   tlserve_worker_training_samples_total              samples trained on
//   tlserve_worker_checkpoint_write_duration_seconds   one checkpoint's save
//   tlserve_worker_checkpoint_written_bytes_total      bytes of those files
// and the device series of DeviceMetrics for `device` (tlworker --device),
// refreshed on a thread of their own. Thread-safe.
class WorkerMetrics {
 public:
  explicit WorkerMetrics(prometheus::Registry& registry, const std::string& device = "cpu");

  void SamplesTrained(int64_t samples);
  void CheckpointWritten(absl::Duration took, int64_t bytes);

 private:
  prometheus::Counter& samples_;
  prometheus::Histogram& checkpoint_seconds_;
  prometheus::Counter& checkpoint_bytes_;
  std::unique_ptr<DeviceMetrics> device_;
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_WORKER_METRICS_H_
