#ifndef TLSERVE_SERVER_INFERENCE_ROUTER_H_
#define TLSERVE_SERVER_INFERENCE_ROUTER_H_

#include <deque>
#include <functional>
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/inference_metrics.h"
#include "server/scheduler.h"
#include "server/store.h"
#include "tlserve/v1/inference.pb.h"
#include "tlserve/v1/worker.pb.h"

namespace tlserve {

// The dynamic batcher. Predict and Embed calls queue in lanes: one per
// model, or one per shared backbone for models fine-tuned from the same
// frozen backbone (Model.backbone_digest), whose calls batch together so
// the worker runs the backbone once and each model's head on its rows.
// Whenever a worker has room (fewer than max_batches_per_worker batches
// outstanding) the oldest ready lane becomes one batch of up to
// max_batch_size inputs and goes down the stream of the least loaded
// worker that holds the model of its oldest call (a worker without it is
// used when none holds it, or when it is idle and every holder is busy: it
// loads the model and shares the load). So at low load a call goes out at
// once, alone, and under load batches grow to what arrived while the
// workers were busy.
//
// Every call completes exactly once: with its result; NOT_FOUND for an
// unknown model; RESOURCE_EXHAUSTED when the model's queue is full;
// DEADLINE_EXCEEDED when its deadline passes, queued or in flight;
// UNAVAILABLE when no worker is connected, or when its worker goes away
// twice (the first loss re-queues it). Never hangs. Thread-safe.
class InferenceRouter : public InferenceSink {
 public:
  struct Options {
    // Inputs (images or tensor rows) per batch. A call with more goes alone.
    int max_batch_size = 64;
    // How long the oldest queued call may wait for more to fill a batch
    // while a worker has room. Zero: send at once.
    absl::Duration max_queue_delay = absl::ZeroDuration();
    // Serialized bytes per batch, so a batch always fits the worker stream
    // (the server sends at most 64 MiB per message). A bigger call is
    // refused with INVALID_ARGUMENT; a call that would overflow the batch
    // waits for the next one.
    int64_t max_batch_bytes = int64_t{48} << 20;
    // Calls waiting per model; more get RESOURCE_EXHAUSTED.
    int max_queue_size = 1024;
    // Batches in flight per worker: two keeps a worker busy while the
    // next batch travels, without queueing work a free worker could take.
    int max_batches_per_worker = 2;
    // Deadline for calls that come without one.
    absl::Duration default_timeout = absl::Seconds(30);
    // Times a call is re-sent after its worker went away.
    int max_retries = 1;
    // Batch the calls of models that share a frozen backbone together and
    // let workers keep one copy of it. Off: every model is on its own.
    bool share_backbones = true;
  };
  // What the router measured for one model since the server started
  // (the KServe ModelStatistics extension and the metrics read it).
  struct ModelStats {
    std::string model_id;
    struct Duration {
      uint64_t count = 0;
      uint64_t ns = 0;
      void Add(absl::Duration d) {
        ++count;
        ns += static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Nanoseconds(d)));
      }
    };
    Duration success;  // arrival to answer, calls that succeeded
    Duration fail;     // the same, calls that failed after queueing
    Duration queue;    // arrival to leaving for a worker
    Duration compute;  // worker time per batch
    uint64_t inference_count = 0;  // inputs answered
    uint64_t execution_count = 0;  // batches answered
    absl::Time last_inference = absl::UnixEpoch();
    // Batches by inputs per batch: count and worker time.
    std::map<int64_t, Duration> batches;
  };
  using ResultDone =
      std::function<void(absl::StatusOr<tlserve::v1::InferenceResult>)>;
  using PredictDone =
      std::function<void(absl::StatusOr<tlserve::v1::PredictResponse>)>;
  using EmbedDone =
      std::function<void(absl::StatusOr<tlserve::v1::EmbedResponse>)>;

  InferenceRouter(Options options, Store* store, Scheduler* scheduler);
  ~InferenceRouter() override;  // Fails what is pending with UNAVAILABLE.

  // Optional; set before Start. Not owned.
  void set_metrics(InferenceMetrics* metrics) { metrics_ = metrics; }
  void Start();
  // Waits until no call is queued and no batch is out on a worker, or
  // `deadline`; true when idle. For shutdown, once no new calls come.
  bool WaitIdle(absl::Time deadline);
  // `done` runs exactly once, possibly before the call returns, on the
  // caller's thread or one of the router's.
  // `tenant` is the caller's: another tenant's model is NOT_FOUND.
  void Predict(const tlserve::v1::PredictRequest& request, absl::Time deadline,
               PredictDone done, absl::string_view tenant = kDefaultTenant);
  void Embed(const tlserve::v1::EmbedRequest& request, absl::Time deadline,
             EmbedDone done, absl::string_view tenant = kDefaultTenant);

  // Any item (what Predict and Embed build; the KServe API builds its
  // own). The item's inputs are checked by the worker.
  void Infer(const std::string& model_id, tlserve::v1::InferenceItem item,
             absl::Time deadline, ResultDone done,
             absl::string_view tenant = kDefaultTenant);

  // Model lifecycle (ModelService.DeployModel / UndeployModel): stores the
  // model's serving settings and applies them to its queue at once.
  // Deploy validates `serving` (INVALID_ARGUMENT naming the field) and
  // warms the model up on the least loaded worker; Undeploy fails the
  // model's queued calls with FAILED_PRECONDITION and has every worker
  // that holds it drop it. NOT_FOUND for an unknown model.
  absl::StatusOr<tlserve::v1::Model> Deploy(
      const std::string& model_id, const tlserve::v1::ServingConfig& serving,
      absl::string_view tenant = kDefaultTenant);
  absl::StatusOr<tlserve::v1::Model> Undeploy(
      const std::string& model_id, absl::string_view tenant = kDefaultTenant);

  // Every model of `tenant` called so far, or one (empty if it was never
  // called).
  std::vector<ModelStats> Stats(const std::string& model_id = "",
                                absl::string_view tenant = kEveryTenant);
  const Options& options() const { return options_; }
  // Workers the router can send to (a fresh look at the scheduler).
  int ConnectedWorkers();

  void OnInferenceReply(const std::string& worker_id,
                        const tlserve::v1::InferenceReply& reply) override;
  void OnWorkerGone(const std::string& worker_id) override;

 private:
  struct Call {
    std::string model_id;
    std::string lane;
    tlserve::v1::InferenceItem item;
    int64_t inputs = 1;
    int64_t bytes = 0;  // item.ByteSizeLong()
    absl::Time deadline;
    absl::Time enqueued;
    absl::Time dispatched;  // last time it left for a worker
    int attempts = 0;
    bool completed = false;  // guarded by mu_
    ResultDone done;
  };
  using CallPtr = std::shared_ptr<Call>;
  // What the router knows of one model.
  struct ModelQueue {
    tlserve::v1::InferenceModel model;
    tlserve::v1::ServingConfig serving;
    std::string lane;
    // The model's owner; empty until the model was read from the store.
    std::string tenant;
    size_t queued_calls = 0;  // its calls waiting in the lane
    ModelStats stats;
  };
  // Calls waiting to be batched: one model's, or those of every model on
  // one shared backbone, oldest first.
  struct Lane {
    std::deque<CallPtr> calls;
    int64_t queued_inputs = 0;
    std::set<std::string> models;
  };
  struct Batch {
    std::string worker_id;
    int64_t inputs = 0;
    std::vector<CallPtr> calls;
  };
  struct WorkerState {
    int batches = 0;
    std::set<std::string> models;
  };
  // A completion to run once mu_ is released.
  struct Completion {
    ResultDone done;
    absl::StatusOr<tlserve::v1::InferenceResult> result;
  };
  struct Outgoing {
    std::string worker_id;
    std::string batch_id;
    tlserve::v1::ServerMessage message;
  };

  // Completes `call` (once) with `result`, counting it in the model's
  // stats; the completion runs after mu_ is released.
  void FinishLocked(const CallPtr& call,
                    absl::StatusOr<tlserve::v1::InferenceResult> result,
                    absl::Time now, std::vector<Completion>* completions)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forms every batch that can go now; the caller sends them unlocked.
  std::vector<Outgoing> DispatchLocked(absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The model's settings, or the server's where the model sets none.
  int64_t MaxBatch(const ModelQueue& queue) const;
  absl::Duration MaxDelay(const ModelQueue& queue) const;
  size_t MaxQueue(const ModelQueue& queue) const;
  // A lane's: the smallest batch and delay of its models, so none gets a
  // batch bigger or a wait longer than it was deployed with.
  int64_t MaxBatch(const Lane& lane) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration MaxDelay(const Lane& lane) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What workers are sent about a stored model.
  tlserve::v1::InferenceModel ServedModel(const tlserve::v1::Model& model) const;
  // The model's entry with `served` and `serving` applied, in its lane.
  ModelQueue& UpdateModelLocked(const tlserve::v1::InferenceModel& served,
                                const tlserve::v1::ServingConfig& serving)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RefreshWorkersLocked(absl::Time now, bool force)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts the calls of a lost batch back at the front of their lanes, or
  // fails those out of retries.
  void RequeueLocked(std::vector<CallPtr> calls,
                     const std::string& why,
                     std::vector<Completion>* completions)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Send(std::vector<Outgoing> outgoing);
  static void Run(std::vector<Completion> completions);
  void Loop();

  Options options_;
  Store* store_;
  Scheduler* scheduler_;
  // Serialises Deploy/Undeploy's read-modify-write of the stored model.
  absl::Mutex lifecycle_mu_;
  absl::Mutex mu_;
  uint64_t next_batch_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, ModelQueue> queues_ ABSL_GUARDED_BY(mu_);
  // Ordered, so dispatch walks lanes in a stable order.
  std::map<std::string, Lane> lanes_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Batch> in_flight_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, WorkerState> workers_ ABSL_GUARDED_BY(mu_);
  absl::Time workers_refreshed_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  InferenceMetrics* metrics_ = nullptr;
  std::thread thread_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_INFERENCE_ROUTER_H_
