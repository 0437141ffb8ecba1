#ifndef TLSERVE_SERVER_JOB_MANAGER_H_
#define TLSERVE_SERVER_JOB_MANAGER_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/blob_store.h"
#include "server/event_hub.h"
#include "server/quotas.h"
#include "server/server_metrics.h"
#include "server/store.h"
#include "tlserve/v1/job.pb.h"
#include "tlserve/v1/worker.pb.h"

namespace tlserve {

// What the job manager needs from whoever runs workers (the Scheduler).
class JobDispatcher {
 public:
  virtual ~JobDispatcher() = default;
  // A job entered the queue: try to hand it to an idle worker.
  virtual void JobQueued() = 0;
  // Tell a worker to stop an attempt (the job is already CANCELLED).
  virtual void CancelAttempt(const std::string& worker_id,
                             const std::string& job_id, int attempt) = 0;
  // Workers able to run jobs now, and how many of them are busy.
  virtual int ConnectedWorkers() = 0;
};

// The job lifecycle: VALIDATING -> QUEUED -> RUNNING -> SUCCEEDED | FAILED |
// CANCELLED, with requeue of a lost attempt and fencing of stale ones. Every
// transition is one store transaction together with its events, made under
// one mutex, so the store is always a consistent picture. No gRPC here.
// Thread-safe.
class JobManager {
 public:
  struct Options {
    // Run time assumed for a job before any has finished, for estimates.
    absl::Duration default_run_estimate = absl::Minutes(2);
    std::function<absl::Time()> now = [] { return absl::Now(); };
    // Checkpoints a finished job keeps: the newest this many and the newest
    // best one (0: all). Pruned blobs go to the collector.
    int keep_checkpoints = 0;
    // Queued jobs and stored bytes per tenant (server/quotas.h).
    Quotas quotas{};
  };

  JobManager(Options options, Store* store, BlobStore* blobs, EventHub* events);

  void set_dispatcher(JobDispatcher* dispatcher) { dispatcher_ = dispatcher; }
  // Where job starts and ends are counted (optional; not owned).
  void set_metrics(ServerMetrics* metrics) { metrics_ = metrics; }

  // At start-up: attempts that were RUNNING when the server stopped go back
  // to QUEUED (their workers, if alive, are told to stop when they return).
  absl::Status RecoverAfterRestart();

  // --- Client side: the calls of one tenant, which sees only its own jobs
  // (another's are NOT_FOUND, as in the Store).
  // Validates, stores and queues; INVALID_ARGUMENT names the bad field,
  // RESOURCE_EXHAUSTED a spent quota. A repeated request_id returns the
  // job made the first time.
  absl::StatusOr<tlserve::v1::Job> CreateJob(
      tlserve::v1::JobSpec spec, const std::string& request_id,
      absl::string_view tenant = kDefaultTenant);
  // With queue_position and estimated_start_time for a QUEUED job.
  absl::StatusOr<tlserve::v1::Job> GetJob(
      const std::string& id, absl::string_view tenant = kDefaultTenant);
  absl::StatusOr<Store::Page<tlserve::v1::Job>> ListJobs(
      tlserve::v1::JobState state, int page_size, const std::string& token,
      absl::string_view tenant = kDefaultTenant);
  // QUEUED or RUNNING -> CANCELLED (the worker is told to stop). Cancelling
  // a finished job is FAILED_PRECONDITION.
  absl::StatusOr<tlserve::v1::Job> CancelJob(
      const std::string& id, absl::string_view tenant = kDefaultTenant);
  // Deletes a finished job (FAILED_PRECONDITION before it has finished).
  absl::Status DeleteJob(const std::string& id,
                         absl::string_view tenant = kDefaultTenant);

  // --- Worker side. Updates carry (job_id, attempt); one that is not the
  // current RUNNING attempt on that worker is refused with ABORTED and
  // changes nothing (fencing).
  // The next QUEUED job this worker can run, now RUNNING on it.
  absl::StatusOr<std::optional<tlserve::v1::AssignJob>> ClaimNextJob(
      const std::string& worker_id, const std::string& device);
  absl::Status OnProgress(const std::string& worker_id,
                          const tlserve::v1::JobProgressUpdate& update);
  absl::Status OnEpochDone(const std::string& worker_id,
                           const tlserve::v1::JobEpochDone& done);
  // A checkpoint taken inside an epoch: recorded like an epoch's, without
  // metrics, and the next attempt resumes from it.
  absl::Status OnCheckpointSaved(const std::string& worker_id,
                                 const tlserve::v1::JobCheckpointSaved& saved);
  absl::Status OnLog(const std::string& worker_id,
                     const tlserve::v1::JobLog& log);
  absl::Status OnFinished(const std::string& worker_id,
                          const tlserve::v1::JobFinished& finished);
  // The worker is gone: its RUNNING attempts go back to QUEUED, or FAILED
  // once max_attempts are spent.
  void OnWorkerLost(const std::string& worker_id, const std::string& reason);
  // The worker says it still runs these jobs; returns the ones it must stop
  // because they are no longer its current attempt.
  std::vector<std::string> StaleJobsOf(const std::string& worker_id,
                                       const std::vector<std::string>& job_ids);

 private:
  absl::StatusOr<tlserve::v1::Job> LoadRunningAttempt(
      const std::string& worker_id, const std::string& job_id, int attempt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves a job to `to` with a StateChange event (plus `extra` events and
  // the rows in `outputs`) in one transaction, then wakes watchers.
  absl::Status Transition(tlserve::v1::Job* job, tlserve::v1::JobState to,
                          const std::string& reason,
                          std::vector<tlserve::v1::JobEvent> extra = {},
                          bool enter_queue = false,
                          const Store::JobOutputs& outputs = {})
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RequeueOrFail(tlserve::v1::Job* job, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds a checkpoint the worker reported (its blob must be there) to
  // `outputs`, makes it the job's latest and adds its event; the caller
  // stores all three with the job.
  absl::Status RecordCheckpoint(tlserve::v1::CheckpointInfo checkpoint,
                                int32_t attempt, tlserve::v1::Job* job,
                                std::vector<tlserve::v1::JobEvent>* events,
                                Store::JobOutputs* outputs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The model (or, for PRETRAIN, the backbone) a finished job made, into
  // `outputs` and the job's result; stored with its move to SUCCEEDED.
  absl::Status RegisterArtifact(tlserve::v1::Job* job,
                                const tlserve::v1::JobFinished& finished,
                                Store::JobOutputs* outputs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FillQueueEstimate(tlserve::v1::Job* job);
  tlserve::v1::JobEvent NewEvent() const;

  Options options_;
  Store* store_;
  BlobStore* blobs_;
  EventHub* events_;
  JobDispatcher* dispatcher_ = nullptr;
  ServerMetrics* metrics_ = nullptr;
  absl::Mutex mu_;
};

bool IsFinalState(tlserve::v1::JobState state);

}  // namespace tlserve

#endif  // TLSERVE_SERVER_JOB_MANAGER_H_
