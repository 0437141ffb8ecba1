#include "worker/worker_metrics.h"

namespace tlserve::worker {

namespace {

DeviceMetrics::Options DeviceOptions(const std::string& device) {
  DeviceMetrics::Options options;
  options.device = device;
  return options;
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry, const std::string& device)
    : samples_(prometheus::BuildCounter()
                   .Name("tlserve_worker_training_samples_total")
                   .Help("Training samples the worker has trained on (forward and backward)")
                   .Register(registry)
                   .Add({})),
      // 10 ms (a small head) to about 80 s (a large backbone's full state).
      checkpoint_seconds_(prometheus::BuildHistogram()
                              .Name("tlserve_worker_checkpoint_write_duration_seconds")
                              .Help("Time to write one checkpoint file")
                              .Register(registry)
                              .Add({}, prometheus::Histogram::BucketBoundaries{
                                           0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                           5, 10, 20, 40, 80})),
      checkpoint_bytes_(prometheus::BuildCounter()
                            .Name("tlserve_worker_checkpoint_written_bytes_total")
                            .Help("Bytes of checkpoint files the worker has written")
                            .Register(registry)
                            .Add({})),
      device_(std::make_unique<DeviceMetrics>(registry, DeviceOptions(device))) {}

void WorkerMetrics::SamplesTrained(int64_t samples) {
  samples_.Increment(static_cast<double>(samples));
}

void WorkerMetrics::CheckpointWritten(absl::Duration took, int64_t bytes) {
  checkpoint_seconds_.Observe(absl::ToDoubleSeconds(took));
  checkpoint_bytes_.Increment(static_cast<double>(bytes));
}

}  // namespace tlserve::worker
