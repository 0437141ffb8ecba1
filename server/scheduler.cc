#include "server/scheduler.h"

#include "absl/strings/str_format.h"
#include "common/log.h"

namespace tlserve {

using tlserve::v1::ServerMessage;
using tlserve::v1::WorkerMessage;

Scheduler::Scheduler(Options options, JobManager* jobs)
    : options_(std::move(options)), jobs_(jobs) {}

Scheduler::~Scheduler() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Scheduler::Start() { thread_ = std::thread([this] { Loop(); }); }

absl::StatusOr<tlserve::v1::Registered> Scheduler::Connect(
    const tlserve::v1::RegisterWorker& hello,
    std::shared_ptr<WorkerChannel> channel) {
  if (hello.worker_id().empty()) {
    return absl::InvalidArgumentError("register.worker_id is required");
  }
  const std::string& id = hello.worker_id();
  std::shared_ptr<WorkerChannel> replaced;
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(id);
    if (it != workers_.end()) replaced = it->second.channel;
  }
  if (replaced != nullptr) {
    replaced->Close(absl::AbortedError("replaced by a newer connection"));
    DropWorker(id, "replaced by a newer connection");
  }
  tlserve::v1::Registered registered;
  registered.set_heartbeat_interval_seconds(
      absl::ToDoubleSeconds(options_.heartbeat_interval));
  registered.set_lease_seconds(absl::ToDoubleSeconds(options_.lease));
  ServerMessage reply;
  *reply.mutable_registered() = registered;
  channel->Send(reply);

  // Attempts the worker still runs but no longer owns are stopped; it stays
  // busy with them until it reports them finished.
  std::vector<std::string> held(hello.running_job_ids().begin(),
                                hello.running_job_ids().end());
  for (const std::string& job_id : jobs_->StaleJobsOf(id, held)) {
    ServerMessage cancel;
    cancel.mutable_cancel()->set_job_id(job_id);
    channel->Send(cancel);
  }
  {
    absl::MutexLock lock(&mu_);
    Worker& w = workers_[id];
    w.device = hello.device().empty() ? "cpu" : hello.device();
    w.channel = std::move(channel);
    w.last_seen = options_.now();
    w.running_jobs.insert(held.begin(), held.end());
    kicked_ = true;
  }
  Log(LogSeverity::kInfo, "worker connected",
      {{"worker_id", id}, {"device", hello.device()},
       {"pid", static_cast<long long>(hello.pid())}});
  return registered;
}

void Scheduler::Disconnect(const std::string& worker_id,
                           const WorkerChannel* channel,
                           const std::string& reason) {
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(worker_id);
    if (it == workers_.end() || it->second.channel.get() != channel) return;
  }
  DropWorker(worker_id, reason);
}

void Scheduler::DropWorker(const std::string& worker_id,
                           const std::string& reason) {
  {
    absl::MutexLock lock(&mu_);
    if (workers_.erase(worker_id) == 0) return;
  }
  Log(LogSeverity::kWarning, "worker lost",
      {{"worker_id", worker_id}, {"reason", reason}});
  jobs_->OnWorkerLost(worker_id, reason);
  if (sink_ != nullptr) sink_->OnWorkerGone(worker_id);
}

void Scheduler::HandleRejected(const std::string& worker_id,
                               const std::string& job_id,
                               const absl::Status& status) {
  if (status.ok()) return;
  Log(LogSeverity::kWarning, "worker update refused",
      {{"worker_id", worker_id}, {"job_id", job_id},
       {"error", status.message()}});
  if (absl::IsAborted(status)) {
    // A fenced (stale) attempt: make the worker stop it.
    CancelAttempt(worker_id, job_id, 0);
  }
}

void Scheduler::OnMessage(const std::string& worker_id,
                          const WorkerMessage& message) {
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return;  // Dropped; its stream is closing.
    it->second.last_seen = options_.now();
    if (message.has_heartbeat()) {
      it->second.loaded_models = {message.heartbeat().loaded_model_ids().begin(),
                                  message.heartbeat().loaded_model_ids().end()};
    }
    if (message.has_finished()) {
      it->second.running_jobs.erase(message.finished().job_id());
      kicked_ = true;
    }
    if (message.has_draining()) it->second.draining = true;
  }
  switch (message.msg_case()) {
    case WorkerMessage::kProgress:
      HandleRejected(worker_id, message.progress().job_id(),
                     jobs_->OnProgress(worker_id, message.progress()));
      break;
    case WorkerMessage::kEpochDone:
      HandleRejected(worker_id, message.epoch_done().job_id(),
                     jobs_->OnEpochDone(worker_id, message.epoch_done()));
      break;
    case WorkerMessage::kCheckpointSaved:
      HandleRejected(
          worker_id, message.checkpoint_saved().job_id(),
          jobs_->OnCheckpointSaved(worker_id, message.checkpoint_saved()));
      break;
    case WorkerMessage::kLog:
      HandleRejected(worker_id, message.log().job_id(),
                     jobs_->OnLog(worker_id, message.log()));
      break;
    case WorkerMessage::kFinished: {
      absl::Status s = jobs_->OnFinished(worker_id, message.finished());
      if (!s.ok() && !absl::IsAborted(s)) {
        Log(LogSeverity::kError, "finishing job failed",
            {{"job_id", message.finished().job_id()},
             {"worker_id", worker_id}, {"error", s.message()}});
      }
      break;
    }
    case WorkerMessage::kDraining:
      Log(LogSeverity::kInfo, "worker draining: no new work for it",
          {{"worker_id", worker_id}, {"reason", message.draining().reason()}});
      break;
    case WorkerMessage::kInferenceReply:
      if (sink_ != nullptr) sink_->OnInferenceReply(worker_id, message.inference_reply());
      break;
    default:
      break;
  }
}

std::vector<Scheduler::WorkerSnapshot> Scheduler::Workers() {
  absl::MutexLock lock(&mu_);
  std::vector<WorkerSnapshot> out;
  for (const auto& [id, w] : workers_) {
    if (w.draining) continue;
    out.push_back({id, w.device, w.loaded_models, w.running_jobs});
  }
  return out;
}

void Scheduler::CloseAllWorkers(const std::string& reason) {
  std::vector<std::shared_ptr<WorkerChannel>> channels;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, w] : workers_) channels.push_back(w.channel);
  }
  for (auto& channel : channels) {
    channel->Close(absl::UnavailableError(reason));
  }
}

bool Scheduler::SendTo(const std::string& worker_id,
                       const ServerMessage& message) {
  std::shared_ptr<WorkerChannel> channel;
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return false;
    channel = it->second.channel;
  }
  return channel->Send(message);
}

void Scheduler::JobQueued() {
  absl::MutexLock lock(&mu_);
  kicked_ = true;
}

void Scheduler::CancelAttempt(const std::string& worker_id,
                              const std::string& job_id, int attempt) {
  ServerMessage message;
  message.mutable_cancel()->set_job_id(job_id);
  message.mutable_cancel()->set_attempt(attempt);
  SendTo(worker_id, message);
}

int Scheduler::ConnectedWorkers() {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(workers_.size());
}

void Scheduler::Loop() {
  // Wake on a kick, or every quarter lease to check for silent workers.
  const absl::Duration tick =
      std::min(absl::Milliseconds(250), options_.lease / 4);
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return kicked_ || stopping_;
      };
      mu_.AwaitWithTimeout(absl::Condition(&ready), tick);
      if (stopping_) return;
      kicked_ = false;
    }
    ReapExpiredLeases();
    Dispatch();
  }
}

void Scheduler::ReapExpiredLeases() {
  std::vector<std::pair<std::string, std::shared_ptr<WorkerChannel>>> expired;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = options_.now();
    for (const auto& [id, w] : workers_) {
      if (now - w.last_seen > options_.lease) expired.emplace_back(id, w.channel);
    }
  }
  for (auto& [id, channel] : expired) {
    const std::string reason = absl::StrFormat(
        "no message within the %s lease", absl::FormatDuration(options_.lease));
    channel->Close(absl::UnavailableError(reason));
    DropWorker(id, reason);
  }
}

void Scheduler::Dispatch() {
  std::vector<std::pair<std::string, std::string>> idle;  // id, device
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, w] : workers_) {
      if (w.running_jobs.empty() && !w.draining) idle.emplace_back(id, w.device);
    }
  }
  for (const auto& [id, device] : idle) {
    auto claimed = jobs_->ClaimNextJob(id, device);
    if (!claimed.ok()) {
      Log(LogSeverity::kError, "claiming a job failed",
          {{"worker_id", id}, {"error", claimed.status().message()}});
      return;
    }
    if (!claimed->has_value()) return;  // Queue empty (for this device).
    const tlserve::v1::AssignJob& assign = **claimed;
    std::shared_ptr<WorkerChannel> channel;
    {
      absl::MutexLock lock(&mu_);
      auto it = workers_.find(id);
      if (it != workers_.end()) {
        it->second.running_jobs.insert(assign.job_id());
        channel = it->second.channel;
      }
    }
    ServerMessage message;
    *message.mutable_assign() = assign;
    if (channel == nullptr || !channel->Send(message)) {
      // The worker left between the claim and the send.
      jobs_->OnWorkerLost(id, "disconnected before its assignment was sent");
    }
  }
}

}  // namespace tlserve
