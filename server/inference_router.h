#ifndef TLSERVE_SERVER_INFERENCE_ROUTER_H_
#define TLSERVE_SERVER_INFERENCE_ROUTER_H_

#include <functional>
#include <map>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/scheduler.h"
#include "server/store.h"
#include "tlserve/v1/inference.pb.h"

namespace tlserve {

// Sends Predict calls down the stream of a worker that has the model loaded
// (else the one with the fewest outstanding calls, which loads it) and
// completes each call exactly once: with the worker's reply, UNAVAILABLE if
// the worker goes away, DEADLINE_EXCEEDED when the deadline passes, or
// RESOURCE_EXHAUSTED when too many calls are pending. Never hangs.
// Thread-safe.
class InferenceRouter : public InferenceSink {
 public:
  struct Options {
    size_t max_pending = 1024;
    // Deadline for calls that come without one.
    absl::Duration default_timeout = absl::Seconds(30);
  };
  using Done = std::function<void(absl::StatusOr<tlserve::v1::PredictResponse>)>;

  InferenceRouter(Options options, Store* store, Scheduler* scheduler);
  ~InferenceRouter() override;  // Fails what is pending with UNAVAILABLE.

  void Start();
  // `done` runs exactly once, possibly before Predict returns.
  void Predict(const tlserve::v1::PredictRequest& request, absl::Time deadline,
               Done done);

  void OnInferenceReply(const std::string& worker_id,
                        const tlserve::v1::InferenceReply& reply) override;
  void OnWorkerGone(const std::string& worker_id) override;

 private:
  struct Pending {
    std::string worker_id;
    absl::Time deadline;
    Done done;
  };
  void Loop();

  Options options_;
  Store* store_;
  Scheduler* scheduler_;
  absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> outstanding_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_INFERENCE_ROUTER_H_
