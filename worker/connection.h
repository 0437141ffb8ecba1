#ifndef TLSERVE_WORKER_CONNECTION_H_
#define TLSERVE_WORKER_CONNECTION_H_

// WorkerAgent: the worker's side of WorkerService.Connect. It dials the
// server, registers, heartbeats, and runs what the server pushes down the
// stream: one training job at a time on its own thread, inference calls on a
// small pool. Reconnects with backoff when the stream breaks; a running job
// keeps going across a reconnect and its JobFinished is held until a stream
// is up again (the server fences it if the attempt went stale).
//
// Thread-safety: Run() is called once, from one thread; Stop() from any
// thread (e.g. a signal watcher). The agent owns its channel, blob cache,
// inference runner and every thread it starts; the destructor stops and
// joins them.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"
#include "tlserve/v1/worker.grpc.pb.h"
#include "tlserve/v1/worker.pb.h"
#include "worker/blob_cache.h"
#include "worker/inference_runner.h"

namespace tlserve::worker {

class WorkerMetrics;

class WorkerAgent {
 public:
  struct Options {
    // host:port of tlserve.
    std::string server_address;
    // PEM CA of the server's certificate (empty: plaintext), and the
    // admin token sent on every call (empty: none).
    std::string tls_ca_file;
    std::string token;
    // Stable name of this worker (the server's key for it).
    std::string worker_id;
    // Blob cache and per-job scratch folders live under it.
    std::string cache_dir;
    // "cpu" or "cuda:N", as sent in RegisterWorker.
    std::string device = "cpu";
    // LibTorch intra-op threads for training (0: LibTorch's default).
    int num_threads = 0;
    // First wait after a failed connect; doubles up to the max.
    absl::Duration reconnect_backoff = absl::Milliseconds(500);
    absl::Duration max_reconnect_backoff = absl::Seconds(5);
    // How long one connect attempt may take.
    absl::Duration connect_timeout = absl::Seconds(5);
    // Used when the server's Registered carries no interval.
    absl::Duration default_heartbeat_interval = absl::Seconds(5);
    // Least time between progress updates of a job (the last batch of an
    // epoch is always sent).
    absl::Duration progress_interval = absl::Milliseconds(500);
    // Inference calls run on up to this many threads (all but the first
    // started under load); calls beyond max_queued_inferences waiting are
    // refused with RESOURCE_EXHAUSTED.
    int inference_threads = 4;
    // An inference thread other than the first exits after this long
    // without a call (see idle_inference_threads_).
    absl::Duration extra_inference_thread_idle = absl::Seconds(2);
    int max_queued_inferences = 64;
    // Models the inference runner keeps loaded.
    size_t max_loaded_models = 8;
    // InferenceRunner::Options::optimize.
    bool optimize_models = true;
    // InferenceRunner::Options::single_thread_max_rows.
    int64_t single_thread_max_rows = -1;
    // Largest message the server may push (inference calls carry images).
    int max_receive_message_bytes = 256 << 20;
    // Told about connects ("connected") and disconnects (with the reason),
    // from the thread in Run(). May be empty.
    std::function<void(bool connected, const std::string& detail)>
        on_connection_change;
    // Where training and checkpoint series are recorded; may be null. Not
    // owned; must outlive the agent.
    WorkerMetrics* metrics = nullptr;
  };

  static absl::StatusOr<std::unique_ptr<WorkerAgent>> Create(Options options);
  ~WorkerAgent();

  WorkerAgent(const WorkerAgent&) = delete;
  WorkerAgent& operator=(const WorkerAgent&) = delete;

  // Connects, serves and reconnects until Stop(); then stops the running
  // job (unreported: the server requeues it when the stream closes) and
  // returns once every thread the agent started is done.
  void Run();

  // Makes Run() return soon. Thread-safe, idempotent, never blocks long.
  void Stop();

  // A graceful stop (SIGTERM): tells the server to send no more work, has
  // the running job store a checkpoint of where it got to and hands it
  // back (the server requeues it and another worker resumes from there),
  // lets the inference calls it holds finish, then Stop()s. Blocks until
  // that is done or `timeout` has passed (then it stops anyway); true when
  // it drained in time. Thread-safe; Stop() from another thread cuts it
  // short.
  bool Drain(absl::Duration timeout);

 private:
  using Stream = grpc::ClientReaderWriterInterface<tlserve::v1::WorkerMessage,
                                                   tlserve::v1::ServerMessage>;
  struct Job;
  struct InferenceTask {
    tlserve::v1::InferenceCall call;
    absl::Time deadline;  // InfiniteFuture when the call has no timeout
  };

  explicit WorkerAgent(Options options);

  bool Stopping() const;
  // Waits up to `d`, returning early on Stop(); true when stopping.
  bool SleepUnlessStopping(absl::Duration d);

  // Waits up to connect_timeout for the channel; false when it is not
  // connected by then or the agent is stopping.
  bool WaitForChannel();
  // One connection: register, serve until the stream ends. Returns why it
  // ended; OK only when stopping. `registered` tells whether it got as far
  // as registering (the caller then resets its backoff).
  absl::Status ServeOneConnection(bool* registered);
  void HeartbeatLoop(absl::Duration interval);
  void Dispatch(const tlserve::v1::ServerMessage& message);

  // Writes one message if a stream is up; false when it was not sent.
  bool Send(const tlserve::v1::WorkerMessage& message);

  void OnAssign(const tlserve::v1::AssignJob& assign);
  void OnCancel(const tlserve::v1::CancelAssignment& cancel);
  void OnInfer(const tlserve::v1::InferenceCall& call);
  void JoinFinishedJob();

  void RunJob(Job* job);
  // Tells the server this worker drains (again after a reconnect).
  void SendDraining();
  // True when no job runs and no inference call is queued or running.
  bool IdleLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job's work; OK with *cancelled set when should_stop fired.
  absl::Status RunJobSteps(Job* job, tlserve::v1::JobFinished* finished);
  void SendJobLog(const Job& job, const std::string& text);

  // Inference thread `index`: thread 0 takes a call whenever it is idle;
  // another when thread 0 is busy and it is the most recently idle extra
  // one. Returns when the worker stops, or (not thread 0) after
  // Options::extra_inference_thread_idle without a call.
  void InferenceLoop(int index);
  // Stops and joins the job and the inference threads. Idempotent.
  void JoinThreads();
  tlserve::v1::InferenceReply RunInference(const InferenceTask& task);
  // Starts extra inference thread `index` (its slot marked running).
  void StartExtraInferenceThread(int index);

  const Options options_;
  std::string hostname_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tlserve::v1::WorkerService::Stub> stub_;
  std::unique_ptr<BlobCache> blob_cache_;
  std::unique_ptr<InferenceRunner> inference_runner_;

  // Agent state: stop flag, the job, the heartbeat and inference threads.
  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Drain() was called: new jobs are handed straight back.
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool heartbeat_stop_ ABSL_GUARDED_BY(mu_) = false;
  std::unique_ptr<Job> job_ ABSL_GUARDED_BY(mu_);
  // The context of the live Connect call, for Stop() to cancel it.
  grpc::ClientContext* stream_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::deque<InferenceTask> inference_queue_ ABSL_GUARDED_BY(mu_);
  bool inference_stop_ ABSL_GUARDED_BY(mu_) = false;
  // Inference thread 0 lives as long as the agent and takes the next call
  // whenever it is idle, so at low load it serves every call. The others
  // (up to Options::inference_threads in all) start when a call finds no
  // thread idle and exit after extra_inference_thread_idle without one.
  // Why they exit: OpenMP keeps a team of threads for every thread that
  // ran a parallel op, and once those add up to more than the cores every
  // team's threads sleep between ops instead of spinning; a resnet18
  // forward at batch 1 took 24-27 ms that way instead of 17. Of the idle
  // extra threads the most recently idle (last here) goes first.
  bool main_inference_thread_idle_ ABSL_GUARDED_BY(mu_) = false;
  // Inference threads inside RunInference (not waiting, not sending).
  int inference_threads_computing_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<int> idle_inference_threads_ ABSL_GUARDED_BY(mu_);
  // Per slot: a thread is running there (slot 0 always).
  std::vector<bool> inference_thread_running_ ABSL_GUARDED_BY(mu_);
  absl::Mutex threads_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::vector<std::thread> inference_threads_ ABSL_GUARDED_BY(threads_mu_);

  // Serialises writes: gRPC sync streams allow one writer at a time.
  absl::Mutex write_mu_ ABSL_ACQUIRED_AFTER(mu_);
  Stream* stream_ ABSL_GUARDED_BY(write_mu_) = nullptr;
  // JobFinished messages that found no stream, sent after reconnecting.
  std::vector<tlserve::v1::WorkerMessage> held_ ABSL_GUARDED_BY(write_mu_);
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_CONNECTION_H_
