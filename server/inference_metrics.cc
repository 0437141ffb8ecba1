#include "server/inference_metrics.h"

#include <vector>

namespace tlserve {
namespace {

// 0.5 ms to about 16 s, doubling: covers a 28x28 model's microbatch and a
// large model's queue under load.
const prometheus::Histogram::BucketBoundaries& SecondsBuckets() {
  static const auto* const buckets = [] {
    auto* b = new prometheus::Histogram::BucketBoundaries;
    for (double s = 0.0005; s < 20; s *= 2) b->push_back(s);
    return b;
  }();
  return *buckets;
}

const prometheus::Histogram::BucketBoundaries& BatchBuckets() {
  static const auto* const buckets = [] {
    auto* b = new prometheus::Histogram::BucketBoundaries;
    for (double n = 1; n <= 4096; n *= 2) b->push_back(n);
    return b;
  }();
  return *buckets;
}

}  // namespace

InferenceMetrics::InferenceMetrics(prometheus::Registry& registry)
    : requests_(prometheus::BuildCounter()
                    .Name("tlserve_inference_requests_total")
                    .Help("Inference calls answered, by model and status code")
                    .Register(registry)),
      latency_(prometheus::BuildHistogram()
                   .Name("tlserve_inference_request_duration_seconds")
                   .Help("Inference call time in the server, arrival to answer")
                   .Register(registry)),
      queue_(prometheus::BuildHistogram()
                 .Name("tlserve_inference_queue_duration_seconds")
                 .Help("Time an inference call waited in the batcher's queue")
                 .Register(registry)),
      batch_size_(prometheus::BuildHistogram()
                      .Name("tlserve_inference_batch_size")
                      .Help("Inputs per batch sent to a worker")
                      .Register(registry)),
      compute_(prometheus::BuildHistogram()
                   .Name("tlserve_inference_compute_duration_seconds")
                   .Help("Worker time per batch: decode, forward, encode")
                   .Register(registry)) {}

void InferenceMetrics::Call(const std::string& model_id, absl::StatusCode code,
                            absl::Duration latency, const absl::Duration* queued) {
  const std::string model = model_id.empty() ? kUnknownModel : model_id;
  requests_.Add({{"model", model}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
  latency_.Add({{"model", model}}, SecondsBuckets())
      .Observe(absl::ToDoubleSeconds(latency));
  if (queued != nullptr) {
    queue_.Add({{"model", model}}, SecondsBuckets())
        .Observe(absl::ToDoubleSeconds(*queued));
  }
}

void InferenceMetrics::Batch(const std::string& model_id, int64_t inputs,
                             absl::Duration compute) {
  batch_size_.Add({{"model", model_id}}, BatchBuckets())
      .Observe(static_cast<double>(inputs));
  compute_.Add({{"model", model_id}}, SecondsBuckets())
      .Observe(absl::ToDoubleSeconds(compute));
}

}  // namespace tlserve
