#include "worker/connection.h"

#include <unistd.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <limits>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/recipe_validation.h"
#include "common/channel_security.h"
#include "common/dataset_loader.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/proto_time.h"
#include "common/sha256.h"
#include "common/input_fit.h"
#include "common/status_macros.h"
#include "grpc/grpc.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "tlserve/v1/dataset.pb.h"
#include "tlserve/v1/job.pb.h"
#include "common/text_dataset.h"
#include "worker/text_trainer.h"
#include "worker/trainer.h"
#include "worker/worker_metrics.h"

namespace tlserve::worker {
namespace {

namespace fs = std::filesystem;
using ::tlserve::v1::AssignJob;
using ::tlserve::v1::BlobRef;
using ::tlserve::v1::CancelAssignment;
using ::tlserve::v1::InferenceCall;
using ::tlserve::v1::InferenceReply;
using ::tlserve::v1::JobFinished;
using ::tlserve::v1::ServerMessage;
using ::tlserve::v1::WorkerMessage;

// Pings find a dead connection the heartbeats cannot (writes into a
// half-open TCP connection succeed). gRPC servers refuse pings more often
// than every 5 minutes by default, hence the long interval.
constexpr int kKeepaliveTimeMs = 330'000;
constexpr int kKeepaliveTimeoutMs = 20'000;

std::string StatusText(const absl::Status& status) {
  return absl::StrCat(absl::StatusCodeToString(status.code()), ": ",
                      status.message());
}

absl::Status Annotate(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

std::chrono::system_clock::time_point DeadlineAfter(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

int ToMillis(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1,
                                              std::numeric_limits<int>::max()));
}

std::string LocalHostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

// Job ids name a folder: refuse anything that could leave jobs/.
bool SafeForPath(const std::string& id) {
  return !id.empty() && id.size() <= 200 && id[0] != '.' &&
         !absl::StrContains(id, '/') && !absl::StrContains(id, '\0');
}

InferenceReply ErrorReply(const std::string& request_id,
                          const absl::Status& status) {
  InferenceReply reply;
  reply.set_request_id(request_id);
  reply.set_code(static_cast<int32_t>(status.code()));
  reply.set_message(std::string(status.message()));
  return reply;
}

}  // namespace

struct WorkerAgent::Job {
  AssignJob assign;
  // Set by a cancel for this attempt or by Stop(); polled by the trainer.
  std::atomic<bool> cancel{false};
  // Set by Drain(): checkpoint, then give the attempt back.
  std::atomic<bool> hand_back{false};
  // Set just before the JobFinished goes out: the thread is about to exit
  // and a new assignment may already be on its way.
  std::atomic<bool> finishing{false};
  // Set (under write_mu_) once the JobFinished was written or held.
  std::atomic<bool> done{false};
  std::thread thread;
};

absl::StatusOr<std::unique_ptr<WorkerAgent>> WorkerAgent::Create(
    Options options) {
  if (options.server_address.empty()) {
    return absl::InvalidArgumentError("worker needs a server address");
  }
  if (options.worker_id.empty()) {
    return absl::InvalidArgumentError("worker needs a worker_id");
  }
  if (options.cache_dir.empty()) {
    return absl::InvalidArgumentError("worker needs a cache_dir");
  }
  options.inference_threads = std::max(1, options.inference_threads);
  options.max_queued_inferences = std::max(1, options.max_queued_inferences);
  if (options.reconnect_backoff <= absl::ZeroDuration()) {
    options.reconnect_backoff = absl::Milliseconds(500);
  }
  options.max_reconnect_backoff =
      std::max(options.max_reconnect_backoff, options.reconnect_backoff);

  std::unique_ptr<WorkerAgent> agent(new WorkerAgent(std::move(options)));
  const Options& opts = agent->options_;
  RETURN_IF_ERROR(MakeDirs((fs::path(opts.cache_dir) / "jobs").string()));

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(opts.max_receive_message_bytes);
  // Our backoff only decides how often we ask; the channel's own reconnect
  // backoff (up to 2 minutes by default) decides when it really dials.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              ToMillis(opts.reconnect_backoff));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
              ToMillis(opts.reconnect_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              ToMillis(opts.max_reconnect_backoff));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                   ClientChannelCredentials(opts.tls_ca_file));
  agent->channel_ = grpc::experimental::CreateCustomChannelWithInterceptors(
      opts.server_address, credentials, args,
      BearerTokenInterceptors(opts.token));
  agent->stub_ = tlserve::v1::WorkerService::NewStub(agent->channel_);

  BlobCache::Options cache_options;
  cache_options.cache_dir = opts.cache_dir;
  ASSIGN_OR_RETURN(agent->blob_cache_,
                   BlobCache::Create(cache_options, agent->stub_.get()));

  InferenceRunner::Options runner_options;
  runner_options.max_loaded_models = opts.max_loaded_models;
  runner_options.num_threads = opts.num_threads;
  runner_options.optimize = opts.optimize_models;
  runner_options.single_thread_max_rows = opts.single_thread_max_rows;
  agent->inference_runner_ = std::make_unique<InferenceRunner>(runner_options);

  {
    absl::MutexLock lock(&agent->mu_);
    agent->inference_thread_running_.assign(opts.inference_threads, false);
    agent->inference_thread_running_[0] = true;
  }
  try {
    absl::MutexLock lock(&agent->threads_mu_);
    agent->inference_threads_.resize(opts.inference_threads);
    agent->inference_threads_[0] =
        std::thread(&WorkerAgent::InferenceLoop, agent.get(), 0);
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("starting inference threads: ", e.what()));
  }
  return agent;
}

WorkerAgent::WorkerAgent(Options options)
    : options_(std::move(options)), hostname_(LocalHostname()) {}

WorkerAgent::~WorkerAgent() {
  Stop();
  JoinThreads();
}

bool WorkerAgent::Stopping() const {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

bool WorkerAgent::SleepUnlessStopping(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
  return stopping_;
}

void WorkerAgent::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    if (stream_context_ != nullptr) stream_context_->TryCancel();
    if (job_ != nullptr) job_->cancel = true;
  }
  // Blob transfers can take minutes: cut them short too.
  if (blob_cache_ != nullptr) blob_cache_->Shutdown();
}

bool WorkerAgent::IdleLocked() const {
  const int running_extra = static_cast<int>(
      std::count(inference_thread_running_.begin() + 1,
                 inference_thread_running_.end(), true));
  return (job_ == nullptr || job_->done) && inference_queue_.empty() &&
         main_inference_thread_idle_ &&
         static_cast<int>(idle_inference_threads_.size()) >= running_extra;
}

void WorkerAgent::SendDraining() {
  WorkerMessage message;
  message.mutable_draining()->set_reason("the worker was asked to stop");
  Send(message);
}

bool WorkerAgent::Drain(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    draining_ = true;
    if (job_ != nullptr) job_->hand_back = true;
  }
  SendDraining();
  bool drained = false;
  while (true) {
    absl::MutexLock lock(&mu_);
    if (stopping_) break;
    // Job::done is set under write_mu_, not mu_: look again every slice.
    if (IdleLocked()) {
      drained = true;
      break;
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) break;
    mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                         std::min(deadline - now, absl::Milliseconds(50)));
  }
  Stop();
  return drained;
}

void WorkerAgent::JoinThreads() {
  std::unique_ptr<Job> job;
  {
    absl::MutexLock lock(&mu_);
    job = std::move(job_);
    if (job != nullptr) job->cancel = true;
    inference_stop_ = true;
  }
  if (job != nullptr && job->thread.joinable()) job->thread.join();
  absl::MutexLock lock(&threads_mu_);
  for (std::thread& thread : inference_threads_) {
    if (thread.joinable()) thread.join();
  }
  inference_threads_.clear();
}

bool WorkerAgent::WaitForChannel() {
  const absl::Time deadline = absl::Now() + options_.connect_timeout;
  // Short slices, so Stop() is noticed quickly.
  while (!Stopping()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    if (channel_->WaitForConnected(
            DeadlineAfter(std::min(left, absl::Milliseconds(200))))) {
      return true;
    }
  }
  return false;
}

void WorkerAgent::Run() {
  absl::Duration backoff = options_.reconnect_backoff;
  bool told_unreachable = false;
  while (!Stopping()) {
    if (!WaitForChannel()) {
      if (Stopping()) break;
      if (!told_unreachable && options_.on_connection_change) {
        options_.on_connection_change(
            false, absl::StrCat("cannot reach ", options_.server_address,
                                "; retrying"));
      }
      told_unreachable = true;
    } else {
      bool registered = false;
      absl::Status ended = ServeOneConnection(&registered);
      if (Stopping()) break;
      if (registered) {
        backoff = options_.reconnect_backoff;
        told_unreachable = false;
      }
      if (options_.on_connection_change && (registered || !told_unreachable)) {
        options_.on_connection_change(false, StatusText(ended));
        told_unreachable = !registered;
      }
    }
    if (SleepUnlessStopping(backoff)) break;
    backoff = std::min(backoff * 2, options_.max_reconnect_backoff);
  }
  JoinThreads();
}

absl::Status WorkerAgent::ServeOneConnection(bool* registered) {
  grpc::ClientContext context;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::OkStatus();
    stream_context_ = &context;
  }
  absl::Cleanup forget_context = [this] {
    absl::MutexLock lock(&mu_);
    stream_context_ = nullptr;
  };
  std::unique_ptr<Stream> stream = stub_->Connect(&context);

  WorkerMessage hello;
  tlserve::v1::RegisterWorker* reg = hello.mutable_register_();
  reg->set_worker_id(options_.worker_id);
  reg->set_device(options_.device);
  reg->set_hostname(hostname_);
  reg->set_pid(static_cast<int64_t>(getpid()));
  {
    absl::MutexLock lock(&mu_);
    if (job_ != nullptr && !job_->done) {
      reg->add_running_job_ids(job_->assign.job_id());
    }
  }
  {
    // A finished job whose JobFinished is still held counts as running: its
    // result is on its way.
    absl::MutexLock lock(&write_mu_);
    for (const WorkerMessage& held : held_) {
      reg->add_running_job_ids(held.finished().job_id());
    }
  }
  ServerMessage message;
  if (!stream->Write(hello) || !stream->Read(&message)) {
    absl::Status status = FromGrpcStatus(stream->Finish());
    if (status.ok()) {
      status = absl::UnavailableError("server closed the stream at register");
    }
    return Annotate(status, "registering: ");
  }
  if (!message.has_registered()) {
    context.TryCancel();
    stream->Finish().ok();
    return absl::FailedPreconditionError(
        "the server's first message was not 'registered'");
  }
  *registered = true;
  absl::Duration interval =
      absl::Seconds(message.registered().heartbeat_interval_seconds());
  if (interval <= absl::ZeroDuration()) {
    interval = options_.default_heartbeat_interval;
  }
  if (options_.on_connection_change) {
    options_.on_connection_change(
        true, absl::StrCat("connected to ", options_.server_address, " as ",
                           options_.worker_id, " (heartbeat every ",
                           absl::FormatDuration(interval), ", lease ",
                           message.registered().lease_seconds(), "s)"));
  }

  {
    absl::MutexLock lock(&write_mu_);
    stream_ = stream.get();
    size_t sent = 0;
    while (sent < held_.size() && stream_->Write(held_[sent])) ++sent;
    held_.erase(held_.begin(), held_.begin() + static_cast<long>(sent));
  }
  bool draining = false;
  {
    absl::MutexLock lock(&mu_);
    draining = draining_;
  }
  if (draining) SendDraining();
  {
    absl::MutexLock lock(&mu_);
    heartbeat_stop_ = false;
  }
  std::thread heartbeat;
  try {
    heartbeat = std::thread(&WorkerAgent::HeartbeatLoop, this, interval);
  } catch (const std::system_error&) {
    context.TryCancel();  // Ends the read loop below at once.
  }

  while (stream->Read(&message)) Dispatch(message);

  {
    absl::MutexLock lock(&mu_);
    heartbeat_stop_ = true;
  }
  if (heartbeat.joinable()) heartbeat.join();
  {
    // Writers finish (writes to an ended call fail fast) before the stream
    // goes away.
    absl::MutexLock lock(&write_mu_);
    stream_ = nullptr;
  }
  absl::Status status = FromGrpcStatus(stream->Finish());
  if (status.ok()) status = absl::UnavailableError("server closed the stream");
  return status;
}

void WorkerAgent::HeartbeatLoop(absl::Duration interval) {
  auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return heartbeat_stop_ || stopping_;
  };
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop), interval);
      if (stop()) return;
    }
    WorkerMessage message;
    tlserve::v1::Heartbeat* heartbeat = message.mutable_heartbeat();
    for (std::string& id : inference_runner_->LoadedModelIds()) {
      heartbeat->add_loaded_model_ids(std::move(id));
    }
    Send(message);
  }
}

bool WorkerAgent::Send(const WorkerMessage& message) {
  absl::MutexLock lock(&write_mu_);
  return stream_ != nullptr && stream_->Write(message);
}

void WorkerAgent::Dispatch(const ServerMessage& message) {
  switch (message.msg_case()) {
    case ServerMessage::kAssign:
      OnAssign(message.assign());
      break;
    case ServerMessage::kCancel:
      OnCancel(message.cancel());
      break;
    case ServerMessage::kInfer:
      OnInfer(message.infer());
      break;
    default:
      break;  // A repeated 'registered' or a newer message: nothing to do.
  }
}

void WorkerAgent::JoinFinishedJob() {
  std::unique_ptr<Job> finished;
  {
    absl::MutexLock lock(&mu_);
    if (job_ != nullptr && (job_->done || job_->finishing)) {
      finished = std::move(job_);
    }
  }
  if (finished != nullptr && finished->thread.joinable()) {
    finished->thread.join();
  }
}

void WorkerAgent::OnAssign(const AssignJob& assign) {
  JoinFinishedJob();
  WorkerMessage refusal;
  JobFinished* finished = refusal.mutable_finished();
  finished->set_job_id(assign.job_id());
  finished->set_attempt(assign.attempt());
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    if (job_ != nullptr && job_->assign.job_id() == assign.job_id() &&
        job_->assign.attempt() == assign.attempt()) {
      return;  // The same attempt again (e.g. re-sent after a reconnect).
    }
    if (draining_) {
      // Sent before the server read our WorkerDraining: straight back, and
      // as a hand-back it costs the job no attempt.
      finished->set_cancelled(true);
      finished->set_handed_back(true);
      finished->set_error("worker stopping");
    } else if (job_ != nullptr) {
      // The server sends one job at a time, so this should not happen.
      finished->set_cancelled(true);
      finished->set_error("worker busy");
    } else {
      job_ = std::make_unique<Job>();
      job_->assign = assign;
      try {
        job_->thread = std::thread(&WorkerAgent::RunJob, this, job_.get());
        return;
      } catch (const std::system_error& e) {
        job_.reset();
        finished->set_error(absl::StrCat(
            "RESOURCE_EXHAUSTED: starting the job thread: ", e.what()));
      }
    }
  }
  Send(refusal);
}

void WorkerAgent::OnCancel(const CancelAssignment& cancel) {
  absl::MutexLock lock(&mu_);
  if (job_ != nullptr && !job_->done &&
      job_->assign.job_id() == cancel.job_id() &&
      (cancel.attempt() == 0 || cancel.attempt() == job_->assign.attempt())) {
    job_->cancel = true;
  }
}

void WorkerAgent::OnInfer(const InferenceCall& call) {
  bool queued = false;
  int start = -1;  // an extra inference thread's slot to start
  {
    absl::MutexLock lock(&mu_);
    if (!inference_stop_ &&
        static_cast<int>(inference_queue_.size()) <
            options_.max_queued_inferences) {
      InferenceTask task;
      task.call = call;
      task.deadline = call.timeout_ms() > 0
                          ? absl::Now() + absl::Milliseconds(call.timeout_ms())
                          : absl::InfiniteFuture();
      inference_queue_.push_back(std::move(task));
      queued = true;
      // Only when every running thread is inside a batch: one that is
      // sending its reply takes the call in a moment.
      const int running = static_cast<int>(
          std::count(inference_thread_running_.begin(),
                     inference_thread_running_.end(), true));
      if (inference_threads_computing_ >= running) {
        for (int i = 1; i < options_.inference_threads; ++i) {
          if (!inference_thread_running_[i]) {
            inference_thread_running_[i] = true;
            start = i;
            break;
          }
        }
      }
    }
  }
  if (start >= 0) StartExtraInferenceThread(start);
  if (queued) return;
  WorkerMessage message;
  *message.mutable_inference_reply() = ErrorReply(
      call.request_id(),
      absl::ResourceExhaustedError(absl::StrCat(
          "worker ", options_.worker_id, " has ",
          options_.max_queued_inferences,
          " inference calls queued; retry later or add workers")));
  Send(message);
}

void WorkerAgent::StartExtraInferenceThread(int index) {
  absl::MutexLock threads_lock(&threads_mu_);
  {
    // JoinThreads sets the stop flag before it joins (under threads_mu_):
    // a thread started after that would never be joined.
    absl::MutexLock lock(&mu_);
    if (inference_stop_ || inference_threads_.empty()) {
      inference_thread_running_[index] = false;
      return;
    }
  }
  // The slot's last thread has exited (or is about to): reap it.
  std::thread& slot = inference_threads_[index];
  if (slot.joinable()) slot.join();
  try {
    slot = std::thread(&WorkerAgent::InferenceLoop, this, index);
  } catch (const std::system_error&) {
    // The call waits for a running thread instead.
    absl::MutexLock lock(&mu_);
    inference_thread_running_[index] = false;
  }
}

void WorkerAgent::InferenceLoop(int index) {
  const bool main_thread = index == 0;
  // Evaluated by the mutex with mu_ held.
  auto my_turn = [this, index, main_thread]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (inference_stop_) return true;
    if (inference_queue_.empty()) return false;
    if (main_thread) return true;
    return !main_inference_thread_idle_ && !idle_inference_threads_.empty() &&
           idle_inference_threads_.back() == index;
  };
  while (true) {
    InferenceTask task;
    {
      absl::MutexLock lock(&mu_);
      if (main_thread) {
        main_inference_thread_idle_ = true;
        mu_.Await(absl::Condition(&my_turn));
      } else {
        idle_inference_threads_.push_back(index);
        if (!mu_.AwaitWithTimeout(absl::Condition(&my_turn),
                                  options_.extra_inference_thread_idle)) {
          // Idle too long: exit, and LibTorch's thread team with it.
          idle_inference_threads_.erase(
              std::find(idle_inference_threads_.begin(),
                        idle_inference_threads_.end(), index));
          inference_thread_running_[index] = false;
          return;
        }
      }
      if (inference_stop_) return;
      if (main_thread) {
        main_inference_thread_idle_ = false;
      } else {
        idle_inference_threads_.pop_back();
      }
      task = std::move(inference_queue_.front());
      inference_queue_.pop_front();
      ++inference_threads_computing_;
    }
    WorkerMessage message;
    *message.mutable_inference_reply() = RunInference(task);
    {
      absl::MutexLock lock(&mu_);
      --inference_threads_computing_;
    }
    Send(message);
  }
}

InferenceReply WorkerAgent::RunInference(const InferenceTask& task) {
  const InferenceCall& call = task.call;
  auto expired = [&] {
    return ErrorReply(
        call.request_id(),
        absl::DeadlineExceededError(absl::StrCat(
            "the call's ", call.timeout_ms(), " ms ran out on worker ",
            options_.worker_id, " before the model ran")));
  };
  for (const std::string& id : call.unload_model_ids()) {
    inference_runner_->Unload(id);
  }
  if (absl::Now() > task.deadline) return expired();
  const absl::Time start = absl::Now();
  try {
    std::vector<InferenceRunner::ModelFile> models;
    models.reserve(call.models_size());
    for (const tlserve::v1::InferenceModel& m : call.models()) {
      absl::StatusOr<std::string> path = blob_cache_->Fetch(m.model().sha256());
      if (!path.ok()) {
        return ErrorReply(call.request_id(),
                          Annotate(path.status(),
                                   absl::StrCat("model ", m.model_id(), ": ")));
      }
      InferenceRunner::ModelFile file;
      file.model_id = m.model_id();
      file.path = *std::move(path);
      file.input_spec = m.input_spec();
      file.class_names.assign(m.class_names().begin(), m.class_names().end());
      file.shared_backbone = m.shared_backbone();
      file.tasks.assign(m.tasks().begin(), m.tasks().end());
      file.text = m.has_text();
      models.push_back(std::move(file));
    }
    if (absl::Now() > task.deadline) return expired();
    std::vector<tlserve::v1::InferenceResult> results =
        inference_runner_->RunBatch(models, call.items());
    InferenceReply reply;
    reply.set_request_id(call.request_id());
    for (tlserve::v1::InferenceResult& result : results) {
      if (result.has_prediction()) {
        result.mutable_prediction()->set_worker_id(options_.worker_id);
      }
      if (result.has_embedding()) {
        result.mutable_embedding()->set_worker_id(options_.worker_id);
      }
      *reply.add_results() = std::move(result);
    }
    reply.set_compute_seconds(absl::ToDoubleSeconds(absl::Now() - start));
    return reply;
  } catch (const std::exception& e) {
    return ErrorReply(call.request_id(),
                      absl::InternalError(absl::StrCat(
                          "unexpected exception in inference: ", e.what())));
  } catch (...) {
    return ErrorReply(call.request_id(),
                      absl::InternalError("unexpected exception in inference"));
  }
}

void WorkerAgent::SendJobLog(const Job& job, const std::string& text) {
  WorkerMessage message;
  tlserve::v1::JobLog* log = message.mutable_log();
  log->set_job_id(job.assign.job_id());
  log->set_attempt(job.assign.attempt());
  log->set_message(text);
  Send(message);
}

void WorkerAgent::RunJob(Job* job) {
  WorkerMessage message;
  JobFinished* finished = message.mutable_finished();
  finished->set_job_id(job->assign.job_id());
  finished->set_attempt(job->assign.attempt());
  absl::Status status;
  try {
    status = RunJobSteps(job, finished);
  } catch (const std::exception& e) {
    status = absl::InternalError(
        absl::StrCat("unexpected exception in the job: ", e.what()));
  } catch (...) {
    status = absl::InternalError("unexpected exception in the job");
  }
  if (!status.ok()) {
    finished->set_succeeded(false);
    finished->set_cancelled(false);
    finished->set_error(StatusText(status));
  }
  if (SafeForPath(job->assign.job_id())) {
    std::error_code ignored;
    fs::remove_all(fs::path(options_.cache_dir) / "jobs" /
                       absl::StrCat(job->assign.job_id(), "-a",
                                    job->assign.attempt()),
                   ignored);
  }
  // On shutdown an unfinished job goes unreported: the server requeues it
  // when the stream closes, and the next attempt resumes from a checkpoint.
  const bool report = finished->succeeded() || !Stopping();
  job->finishing = true;
  absl::MutexLock lock(&write_mu_);
  if (report && (stream_ == nullptr || !stream_->Write(message))) {
    held_.push_back(message);
  }
  // Under write_mu_, so a register either lists the job as running or
  // finds its JobFinished held.
  job->done = true;
}

absl::Status WorkerAgent::RunJobSteps(Job* job, JobFinished* finished) {
  const AssignJob& assign = job->assign;
  const std::string& job_id = assign.job_id();
  if (!SafeForPath(job_id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("job id '", job_id, "' cannot name a folder"));
  }
  const std::string work_dir =
      (fs::path(options_.cache_dir) / "jobs" /
       absl::StrCat(job_id, "-a", assign.attempt()))
          .string();
  {
    std::error_code ignored;
    fs::remove_all(work_dir, ignored);  // Left by a crashed run.
  }
  RETURN_IF_ERROR(Annotate(MakeDirs(work_dir), "creating the work folder: "));
  auto cancelled = [&] {
    if (!job->cancel && !job->hand_back) return false;
    finished->set_cancelled(true);
    finished->set_handed_back(!job->cancel);
    return true;
  };

  // Inputs first: blobs, then the dataset decode.
  auto fetch = [&](const tlserve::v1::Dataset& dataset,
                   DatasetFiles* files) -> absl::Status {
    files->format = dataset.format();
    files->class_names.assign(dataset.class_names().begin(),
                              dataset.class_names().end());
    for (const tlserve::v1::DatasetPart& part : dataset.parts()) {
      const std::string role = tlserve::v1::DatasetPartRole_Name(part.role());
      if (part.sha256().empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "dataset ", dataset.id(), " part ", role, " has no sha256"));
      }
      absl::StatusOr<std::string> path = blob_cache_->Fetch(part.sha256());
      if (!path.ok()) {
        return Annotate(path.status(), absl::StrCat("dataset ", dataset.id(),
                                                    " part ", role, ": "));
      }
      files->paths[part.role()] = *path;
      if (cancelled()) return absl::OkStatus();
    }
    return absl::OkStatus();
  };
  const tlserve::v1::Dataset& dataset = assign.dataset();
  DatasetFiles files;
  RETURN_IF_ERROR(fetch(dataset, &files));
  if (cancelled()) return absl::OkStatus();
  const bool adapts = assign.spec().kind() == tlserve::v1::DOMAIN_ADAPT;
  DatasetFiles target_files;
  if (adapts) {
    if (assign.target_dataset().id().empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "DOMAIN_ADAPT job ", job_id, " came without its target dataset"));
    }
    RETURN_IF_ERROR(fetch(assign.target_dataset(), &target_files));
    if (cancelled()) return absl::OkStatus();
  }

  TrainJobInput input;
  input.spec = assign.spec();
  input.work_dir = work_dir;
  input.num_threads = options_.num_threads;
  input.worker_device = options_.device;
  if (ReusesBackbone(assign.spec().kind())) {
    if (assign.backbone().sha256().empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(tlserve::v1::JobKind_Name(assign.spec().kind()), " job ",
                       job_id, " came without a backbone"));
    }
    absl::StatusOr<std::string> backbone =
        blob_cache_->Fetch(assign.backbone().sha256());
    if (!backbone.ok()) {
      return Annotate(backbone.status(),
                      absl::StrCat("backbone ", assign.spec().backbone_id(),
                                   ": "));
    }
    input.backbone_path = *backbone;
    input.backbone_input_spec = assign.backbone_input_spec();
  }
  if (assign.has_resume_from() && !assign.resume_from().sha256().empty()) {
    const tlserve::v1::CheckpointInfo& from = assign.resume_from();
    absl::StatusOr<std::string> checkpoint = blob_cache_->Fetch(from.sha256());
    if (!checkpoint.ok()) {
      return Annotate(checkpoint.status(),
                      absl::StrCat("checkpoint of epoch ", from.epoch(), ": "));
    }
    input.resume_checkpoint_path = *checkpoint;
    input.resume_epoch = from.epoch();
    SendJobLog(*job,
               absl::StrCat("attempt ", assign.attempt(),
                            " resumes from checkpoint of epoch ", from.epoch(),
                            from.batch() > 0
                                ? absl::StrCat(" + ", from.batch(),
                                               " batches of epoch ",
                                               from.epoch() + 1)
                                : "",
                            " (sha256 ", from.sha256().substr(0, 12), ")"));
  }
  if (cancelled()) return absl::OkStatus();
  const bool text = dataset.format() == tlserve::v1::TEXT_CSV;
  absl::StatusOr<DecodedDataset> data;
  absl::StatusOr<TextDatasetSplits> text_data;
  if (text) {
    auto path_of = [&](tlserve::v1::DatasetPartRole role) {
      auto it = files.paths.find(role);
      return it == files.paths.end() ? std::string() : it->second;
    };
    text_data = LoadTextDatasetFiles(path_of(tlserve::v1::TRAIN_CSV),
                                     path_of(tlserve::v1::TEST_CSV),
                                     files.class_names);
    if (!text_data.ok()) {
      return Annotate(text_data.status(),
                      absl::StrCat("dataset ", dataset.id(), ": "));
    }
  }
  // Images are held at the model's input size when it is known already,
  // so large source images do not pile up in memory.
  DatasetLoadOptions load;
  const tlserve::v1::InputSpec fit = ApplyJobFit(
      ReusesBackbone(assign.spec().kind())
          ? assign.backbone_input_spec()
          : assign.spec().input_spec(),
      assign.spec());
  if (fit.height() > 0 && fit.width() > 0) {
    if (FitMode(fit) == tlserve::v1::InputFit::RESIZE_CENTER_CROP) {
      load.fit_shorter_side = ShorterSide(fit);
    } else {
      load.fit_height = fit.height();
      load.fit_width = fit.width();
    }
  }
  load.decode_threads =
      options_.num_threads > 0
          ? options_.num_threads
          : static_cast<int>(std::thread::hardware_concurrency());
  if (!text) data = LoadDataset(files, {}, load);
  if (!text && !data.ok()) {
    return Annotate(data.status(), absl::StrCat("dataset ", dataset.id(), ": "));
  }
  if (cancelled()) return absl::OkStatus();
  absl::StatusOr<DecodedDataset> target_data;
  if (adapts) {
    target_data = LoadDataset(target_files, {}, load);
    if (!target_data.ok()) {
      return Annotate(target_data.status(),
                      absl::StrCat("target dataset ",
                                   assign.target_dataset().id(), ": "));
    }
    input.target_data = &*target_data;
    if (cancelled()) return absl::OkStatus();
  }

  absl::Time last_progress = absl::InfinitePast();
  TrainerCallbacks callbacks;
  if (WorkerMetrics* metrics = options_.metrics; metrics != nullptr) {
    callbacks.on_samples_trained = [metrics](int64_t n) { metrics->SamplesTrained(n); };
    callbacks.on_checkpoint_written = [metrics](absl::Duration took, int64_t bytes) {
      metrics->CheckpointWritten(took, bytes);
    };
  }
  callbacks.on_progress = [&](const tlserve::v1::Progress& progress) {
    const absl::Time now = absl::Now();
    const bool epoch_end =
        progress.batches_per_epoch() > 0 &&
        progress.batch() >= progress.batches_per_epoch() - 1;
    if (!epoch_end && now - last_progress < options_.progress_interval) return;
    last_progress = now;
    WorkerMessage message;
    tlserve::v1::JobProgressUpdate* update = message.mutable_progress();
    update->set_job_id(job_id);
    update->set_attempt(assign.attempt());
    *update->mutable_progress() = progress;
    Send(message);
  };
  callbacks.on_epoch_end =
      [&](const tlserve::v1::EpochMetrics& metrics,
          const std::string& checkpoint_path) -> absl::Status {
    WorkerMessage message;
    tlserve::v1::JobEpochDone* done = message.mutable_epoch_done();
    done->set_job_id(job_id);
    done->set_attempt(assign.attempt());
    *done->mutable_metrics() = metrics;
    if (checkpoint_path.empty()) {  // this epoch's end took no checkpoint
      Send(message);
      return absl::OkStatus();
    }
    absl::StatusOr<BlobRef> stored = blob_cache_->Put(checkpoint_path);
    if (!stored.ok()) {
      return Annotate(stored.status(),
                      absl::StrCat("storing the checkpoint of epoch ",
                                   metrics.epoch(), ": "));
    }
    tlserve::v1::CheckpointInfo* checkpoint = done->mutable_checkpoint();
    checkpoint->set_epoch(metrics.epoch());
    checkpoint->set_attempt(assign.attempt());
    checkpoint->set_sha256(stored->sha256());
    checkpoint->set_size_bytes(stored->size_bytes());
    checkpoint->set_best(metrics.best());
    *checkpoint->mutable_create_time() = ToProtoTime(absl::Now());
    Send(message);
    return absl::OkStatus();
  };
  callbacks.on_checkpoint = [&](int epoch, int64_t batch,
                                const std::string& checkpoint_path)
      -> absl::Status {
    absl::StatusOr<BlobRef> stored = blob_cache_->Put(checkpoint_path);
    if (!stored.ok()) {
      return Annotate(stored.status(),
                      absl::StrCat("storing the checkpoint at batch ", batch,
                                   " of epoch ", epoch + 1, ": "));
    }
    WorkerMessage message;
    tlserve::v1::JobCheckpointSaved* saved = message.mutable_checkpoint_saved();
    saved->set_job_id(job_id);
    saved->set_attempt(assign.attempt());
    tlserve::v1::CheckpointInfo* checkpoint = saved->mutable_checkpoint();
    checkpoint->set_epoch(epoch);
    checkpoint->set_batch(batch);
    checkpoint->set_attempt(assign.attempt());
    checkpoint->set_sha256(stored->sha256());
    checkpoint->set_size_bytes(stored->size_bytes());
    *checkpoint->mutable_create_time() = ToProtoTime(absl::Now());
    Send(message);
    return absl::OkStatus();
  };
  callbacks.on_log = [&](const std::string& text) { SendJobLog(*job, text); };
  callbacks.should_stop = [job] { return job->cancel.load(); };
  callbacks.should_hand_back = [job] { return job->hand_back.load(); };

  tlserve::v1::TextSpec served_as;
  ASSIGN_OR_RETURN(TrainJobOutput output,
                   text ? RunTextJob(input, *text_data, callbacks, &served_as)
                        : RunTrainingJob(input, *data, callbacks));
  if (output.cancelled) {
    finished->set_cancelled(true);
    finished->set_handed_back(output.handed_back);
    return absl::OkStatus();
  }
  // A hand-back asked for after the last batch is too late to matter: the
  // finished job is reported.
  if (job->cancel) {
    finished->set_cancelled(true);
    return absl::OkStatus();
  }
  absl::StatusOr<BlobRef> artifact =
      blob_cache_->Put(output.artifact_path, /*move_into_cache=*/true);
  if (!artifact.ok()) {
    return Annotate(artifact.status(), "storing the trained artifact: ");
  }
  finished->set_succeeded(true);
  *finished->mutable_result() = output.result;
  tlserve::v1::ReproManifest* manifest =
      finished->mutable_result()->mutable_manifest();
  std::string part_hashes;
  for (const auto& part : dataset.parts()) {
    absl::StrAppend(&part_hashes, part.sha256(), "\n");
  }
  manifest->set_dataset_sha256(Sha256Hex(part_hashes));
  if (assign.has_backbone()) {
    manifest->set_backbone_sha256(assign.backbone().sha256());
  }
  manifest->set_tlserve_version(TLSERVE_VERSION);
  finished->set_artifact_sha256(artifact->sha256());
  finished->set_artifact_size_bytes(artifact->size_bytes());
  *finished->mutable_input_spec() = output.input_spec;
  for (const std::string& name : output.class_names) {
    finished->add_class_names(name);
  }
  if (text) *finished->mutable_text() = served_as;
  return absl::OkStatus();
}

}  // namespace tlserve::worker
