#ifndef TLSERVE_SERVER_SCHEDULER_H_
#define TLSERVE_SERVER_SCHEDULER_H_

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/job_manager.h"
#include "tlserve/v1/worker.pb.h"

namespace tlserve {

// One connected worker's downstream: implemented over the gRPC stream by the
// worker service, and by fakes in tests.
class WorkerChannel {
 public:
  virtual ~WorkerChannel() = default;
  // Queues a message for the worker; never blocks. False once closed.
  virtual bool Send(const tlserve::v1::ServerMessage& message) = 0;
  // Ends the stream (lease expired, replaced by a newer connection).
  virtual void Close(const absl::Status& why) = 0;
};

// Receives what concerns inference: replies, and workers going away.
class InferenceSink {
 public:
  virtual ~InferenceSink() = default;
  virtual void OnInferenceReply(const std::string& worker_id,
                                const tlserve::v1::InferenceReply& reply) = 0;
  virtual void OnWorkerGone(const std::string& worker_id) = 0;
};

// Keeps the set of connected workers with their leases, and pushes queued
// jobs to idle workers (one job per worker at a time) from one dispatch
// thread. A worker whose stream closes, or that sends nothing within the
// lease, is dropped and its attempts go back to the queue. Thread-safe.
class Scheduler : public JobDispatcher {
 public:
  struct Options {
    // How often workers must send a heartbeat.
    absl::Duration heartbeat_interval = absl::Seconds(1);
    // Silence longer than this loses the worker.
    absl::Duration lease = absl::Seconds(10);
    std::function<absl::Time()> now = [] { return absl::Now(); };
  };

  struct WorkerSnapshot {
    std::string id;
    std::string device;
    std::set<std::string> loaded_models;
    std::set<std::string> running_jobs;
  };

  Scheduler(Options options, JobManager* jobs);
  ~Scheduler() override;  // Stops the dispatch thread.

  void Start();
  void set_inference_sink(InferenceSink* sink) { sink_ = sink; }

  // A worker's first message. A newer connection with the same id replaces
  // the old one. Returns the Registered reply (already sent).
  absl::StatusOr<tlserve::v1::Registered> Connect(
      const tlserve::v1::RegisterWorker& hello,
      std::shared_ptr<WorkerChannel> channel);
  // The stream of `channel` ended.
  void Disconnect(const std::string& worker_id, const WorkerChannel* channel,
                  const std::string& reason);
  // Every later message from a registered worker.
  void OnMessage(const std::string& worker_id,
                 const tlserve::v1::WorkerMessage& message);

  // For inference routing: the workers that take new batches (not those
  // draining).
  std::vector<WorkerSnapshot> Workers();
  // Ends every worker stream with UNAVAILABLE (server shutdown). Workers
  // keep their running jobs and reconnect to the next server.
  void CloseAllWorkers(const std::string& reason);
  bool SendTo(const std::string& worker_id,
              const tlserve::v1::ServerMessage& message);

  // JobDispatcher.
  void JobQueued() override;
  void CancelAttempt(const std::string& worker_id, const std::string& job_id,
                     int attempt) override;
  int ConnectedWorkers() override;

 private:
  struct Worker {
    std::string device;
    std::shared_ptr<WorkerChannel> channel;
    absl::Time last_seen;
    std::set<std::string> running_jobs;
    std::set<std::string> loaded_models;
    // Sent WorkerDraining: it is stopping and takes no new work.
    bool draining = false;
  };

  void Loop();
  void Dispatch();
  void ReapExpiredLeases();
  void DropWorker(const std::string& worker_id, const std::string& reason);
  void HandleRejected(const std::string& worker_id, const std::string& job_id,
                      const absl::Status& status);

  Options options_;
  JobManager* jobs_;
  InferenceSink* sink_ = nullptr;

  absl::Mutex mu_;
  std::map<std::string, Worker> workers_ ABSL_GUARDED_BY(mu_);
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_SCHEDULER_H_
