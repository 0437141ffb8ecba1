#ifndef TLSERVE_SERVER_INFERENCE_METRICS_H_
#define TLSERVE_SERVER_INFERENCE_METRICS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tlserve {

// The inference path's Prometheus series, labelled by model (the stored
// models that were called; unknown ids all count as model="_unknown", so a
// client cannot grow the label set) and by status code:
//   tlserve_inference_requests_total{model,code}
//   tlserve_inference_request_duration_seconds{model}   arrival to answer
//   tlserve_inference_queue_duration_seconds{model}     arrival to a worker
//   tlserve_inference_batch_size{model}                 inputs per batch
//   tlserve_inference_compute_duration_seconds{model}   worker time per batch
// Thread-safe.
class InferenceMetrics {
 public:
  static constexpr char kUnknownModel[] = "_unknown";

  explicit InferenceMetrics(prometheus::Registry& registry);

  // One call's outcome; `queued` is its time before leaving for a worker
  // (absent when it never left).
  void Call(const std::string& model_id, absl::StatusCode code,
            absl::Duration latency, const absl::Duration* queued);
  void Batch(const std::string& model_id, int64_t inputs, absl::Duration compute);

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Family<prometheus::Histogram>& queue_;
  prometheus::Family<prometheus::Histogram>& batch_size_;
  prometheus::Family<prometheus::Histogram>& compute_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_INFERENCE_METRICS_H_
