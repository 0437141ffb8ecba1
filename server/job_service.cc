#include "server/job_service.h"

#include <deque>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/reactors.h"

namespace tlserve {

using tlserve::v1::Job;
using tlserve::v1::JobEvent;

namespace {

// Streams a job's stored events after a sequence number, then new ones as
// the hub announces them, and ends once the job is final and everything
// was sent. At most one write is in flight; a notification during a write
// is remembered and served after it.
class WatchReactor : public grpc::ServerWriteReactor<JobEvent> {
 public:
  WatchReactor(Store* store, EventHub* hub, std::string job_id,
               int64_t after_sequence)
      : store_(store), hub_(hub), job_id_(std::move(job_id)),
        last_sequence_(after_sequence), state_(std::make_shared<State>()) {
    state_->reactor = this;
    std::weak_ptr<State> weak = state_;
    token_ = hub_->Subscribe(job_id_, [weak] {
      if (auto state = weak.lock()) state->Pump();
    });
    state_->Pump();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    {
      absl::MutexLock lock(&state_->mu);
      writing_ = false;
    }
    state_->Pump();
  }
  void OnCancel() override {
    FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }
  void OnDone() override {
    hub_->Unsubscribe(token_);
    {
      absl::MutexLock lock(&state_->mu);
      state_->reactor = nullptr;
    }
    delete this;
  }

 private:
  struct State {
    absl::Mutex mu;
    WatchReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
    void Pump() {
      absl::MutexLock lock(&mu);
      if (reactor != nullptr) reactor->PumpLocked();
    }
  };

  // Called with state_->mu held: the reactor cannot go away meanwhile.
  void PumpLocked() {
    if (writing_ || finished_) return;
    if (pending_.empty()) {
      auto events = store_->ListEvents(job_id_, last_sequence_, 256);
      if (!events.ok()) {
        FinishLocked(ToGrpcStatus(events.status()));
        return;
      }
      for (auto& e : *events) pending_.push_back(std::move(e));
    }
    if (!pending_.empty()) {
      current_ = std::move(pending_.front());
      pending_.pop_front();
      last_sequence_ = current_.sequence();
      writing_ = true;
      StartWrite(&current_);
      return;
    }
    if (hub_->closed()) {
      // Everything stored was sent; the client can watch again (on the
      // next server) from the last sequence it got.
      FinishLocked(grpc::Status(
          grpc::StatusCode::UNAVAILABLE,
          absl::StrCat("tlserve is shutting down; watch again after event ",
                       last_sequence_, " to continue")));
      return;
    }
    auto job = store_->GetJob(job_id_, kEveryTenant);
    if (!job.ok()) {
      FinishLocked(ToGrpcStatus(job.status()));
    } else if (IsFinalState(job->state())) {
      FinishLocked(grpc::Status::OK);
    }
  }
  void FinishLocked(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }
  void FinishOnce(const grpc::Status& status) {
    absl::MutexLock lock(&state_->mu);
    FinishLocked(status);
  }

  Store* store_;
  EventHub* hub_;
  std::string job_id_;
  int64_t last_sequence_;
  std::shared_ptr<State> state_;
  uint64_t token_ = 0;
  std::deque<JobEvent> pending_;
  JobEvent current_;
  bool writing_ = false;
  bool finished_ = false;
};

}  // namespace

grpc::ServerUnaryReactor* JobServiceImpl::CreateJob(
    grpc::CallbackServerContext* context,
    const tlserve::v1::CreateJobRequest* request, Job* response) {
  auto caller = auth_->Check(*context, Role::kUser, "creating a job");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<Job>(
      context, pool_, response,
      [this, spec = request->spec(), rid = request->request_id(),
       tenant = caller->tenant] {
        return jobs_->CreateJob(spec, rid, tenant);
      });
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJob(
    grpc::CallbackServerContext* context, const tlserve::v1::GetJobRequest* request,
    Job* response) {
  auto caller = auth_->Check(*context, Role::kUser, "reading a job");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<Job>(context, pool_, response,
                        [this, id = request->id(), tenant = caller->tenant] {
                          return jobs_->GetJob(id, tenant);
                        });
}

grpc::ServerUnaryReactor* JobServiceImpl::ListJobs(
    grpc::CallbackServerContext* context,
    const tlserve::v1::ListJobsRequest* request,
    tlserve::v1::ListJobsResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "listing jobs");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<tlserve::v1::ListJobsResponse>(
      context, pool_, response,
      [this, state = request->state(), size = request->page_size(),
       token = request->page_token(), tenant = caller->tenant]()
          -> absl::StatusOr<tlserve::v1::ListJobsResponse> {
        ASSIGN_OR_RETURN(auto page, jobs_->ListJobs(state, size, token, tenant));
        tlserve::v1::ListJobsResponse out;
        for (auto& j : page.items) *out.add_jobs() = std::move(j);
        out.set_next_page_token(page.next_page_token);
        return out;
      });
}

grpc::ServerUnaryReactor* JobServiceImpl::CancelJob(
    grpc::CallbackServerContext* context,
    const tlserve::v1::CancelJobRequest* request, Job* response) {
  auto caller = auth_->Check(*context, Role::kUser, "cancelling a job");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<Job>(context, pool_, response,
                        [this, id = request->id(), tenant = caller->tenant] {
                          return jobs_->CancelJob(id, tenant);
                        });
}

grpc::ServerWriteReactor<JobEvent>* JobServiceImpl::WatchJob(
    grpc::CallbackServerContext* context,
    const tlserve::v1::WatchJobRequest* request) {
  auto caller = auth_->Check(*context, Role::kUser, "watching a job");
  if (!caller.ok()) {
    return new FinishedReactor<grpc::ServerWriteReactor<JobEvent>>(
        caller.status());
  }
  // Ownership is checked once here (a job never changes tenant); the
  // reactor then reads the job's events by id. The read blocks this
  // thread briefly, like the reactor's own first read.
  if (absl::Status owned = store_->GetJob(request->id(), caller->tenant).status();
      !owned.ok()) {
    return new FinishedReactor<grpc::ServerWriteReactor<JobEvent>>(owned);
  }
  return new WatchReactor(store_, events_, request->id(),
                          request->after_sequence());
}

grpc::ServerUnaryReactor* JobServiceImpl::ListCheckpoints(
    grpc::CallbackServerContext* context,
    const tlserve::v1::ListCheckpointsRequest* request,
    tlserve::v1::ListCheckpointsResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "listing checkpoints");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<tlserve::v1::ListCheckpointsResponse>(
      context, pool_, response,
      [this, id = request->job_id(), tenant = caller->tenant]()
          -> absl::StatusOr<tlserve::v1::ListCheckpointsResponse> {
        RETURN_IF_ERROR(store_->GetJob(id, tenant).status());
        ASSIGN_OR_RETURN(auto checkpoints, store_->ListCheckpoints(id));
        tlserve::v1::ListCheckpointsResponse out;
        for (auto& c : checkpoints) *out.add_checkpoints() = std::move(c);
        return out;
      });
}

grpc::ServerUnaryReactor* JobServiceImpl::DeleteJob(
    grpc::CallbackServerContext* context,
    const tlserve::v1::DeleteJobRequest* request,
    google::protobuf::Empty* response) {
  auto caller = auth_->Check(*context, Role::kUser, "deleting a job");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<google::protobuf::Empty>(
      context, pool_, response,
      [this, id = request->id(),
       tenant = caller->tenant]() -> absl::StatusOr<google::protobuf::Empty> {
        RETURN_IF_ERROR(jobs_->DeleteJob(id, tenant));
        return google::protobuf::Empty();
      });
}

}  // namespace tlserve
