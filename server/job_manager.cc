#include "server/job_manager.h"

#include <algorithm>
#include <functional>
#include <queue>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/proto_time.h"
#include "common/recipe_validation.h"
#include "common/status_macros.h"
#include "server/ids.h"
#include "server/job_spec_validator.h"

namespace tlserve {

using tlserve::v1::AssignJob;
using tlserve::v1::Backbone;
using tlserve::v1::Job;
using tlserve::v1::JobEvent;
using tlserve::v1::JobSpec;
using tlserve::v1::JobState;

bool IsFinalState(JobState state) {
  return state == tlserve::v1::SUCCEEDED || state == tlserve::v1::FAILED ||
         state == tlserve::v1::CANCELLED;
}

JobManager::JobManager(Options options, Store* store, BlobStore* blobs,
                       EventHub* events)
    : options_(std::move(options)), store_(store), blobs_(blobs),
      events_(events) {}

JobEvent JobManager::NewEvent() const {
  JobEvent event;
  *event.mutable_time() = ToProtoTime(options_.now());
  return event;
}

absl::Status JobManager::Transition(Job* job, JobState to,
                                    const std::string& reason,
                                    std::vector<JobEvent> extra,
                                    bool enter_queue,
                                    const Store::JobOutputs& outputs) {
  JobEvent change = NewEvent();
  auto* sc = change.mutable_state_change();
  sc->set_from(job->state());
  sc->set_to(to);
  sc->set_attempt(job->attempt());
  sc->set_reason(reason);
  job->set_state(to);
  if (IsFinalState(to)) {
    *job->mutable_end_time() = ToProtoTime(options_.now());
    if (to != tlserve::v1::SUCCEEDED) job->set_error(reason);
  }
  job->clear_queue_position();
  job->clear_estimated_start_time();
  // The state change goes last: a watcher that stops at a final state has
  // then seen everything that led to it.
  extra.push_back(std::move(change));
  RETURN_IF_ERROR(store_->PutJobWithOutputs(*job, outputs, &extra, enter_queue));
  Log(to == tlserve::v1::FAILED ? LogSeverity::kWarning : LogSeverity::kInfo,
      "job state change",
      {{"job_id", job->id()},
       {"from", tlserve::v1::JobState_Name(extra.back().state_change().from())},
       {"to", tlserve::v1::JobState_Name(to)},
       {"attempt", job->attempt()},
       {"reason", reason}});
  events_->Notify(job->id());
  // A finished job needs no checkpoint to resume from: keep the few a
  // user may want. A failure here costs disk, not the job.
  const int keep = job->spec().keep_checkpoints() > 0
                       ? job->spec().keep_checkpoints()
                       : options_.keep_checkpoints;
  if (IsFinalState(to) && keep > 0) {
    if (absl::Status pruned = store_->PruneCheckpoints(job->id(), keep);
        !pruned.ok()) {
      Log(LogSeverity::kWarning, "pruning checkpoints failed",
          {{"job_id", job->id()}, {"error", std::string(pruned.message())}});
    }
  }
  // Counted only once stored: a failed write changed nothing.
  if (metrics_ != nullptr && IsFinalState(to)) {
    std::optional<absl::Duration> ran;
    if (job->has_start_time()) {
      ran = FromProtoTime(job->end_time()) - FromProtoTime(job->start_time());
    }
    metrics_->JobFinished(to, ran);
  }
  return absl::OkStatus();
}

absl::Status JobManager::RequeueOrFail(Job* job, const std::string& reason) {
  // Attempts handed back by stopping workers are not failures: a rolling
  // restart of every worker must not use up a job's attempts.
  const int used = job->attempt() - job->handed_back_attempts();
  if (used >= job->spec().max_attempts()) {
    return Transition(job, tlserve::v1::FAILED,
                      absl::StrFormat("%s; no attempts left (%d of %d used)",
                                      reason, used,
                                      job->spec().max_attempts()));
  }
  job->clear_worker_id();
  // enter_queue=false keeps the job's old place: it goes ahead of jobs
  // submitted after it.
  return Transition(job, tlserve::v1::QUEUED, reason);
}

absl::Status JobManager::RecoverAfterRestart() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(std::vector<Job> running,
                   store_->JobsInState(tlserve::v1::RUNNING));
  for (Job& job : running) {
    RETURN_IF_ERROR(RequeueOrFail(
        &job, absl::StrFormat("server restarted during attempt %d",
                              job.attempt())));
  }
  return absl::OkStatus();
}

absl::StatusOr<Job> JobManager::CreateJob(JobSpec spec,
                                          const std::string& request_id,
                                          absl::string_view tenant) {
  RETURN_IF_ERROR(ValidateRequestId(request_id, "request_id"));
  ApplyJobDefaults(&spec);
  if (spec.data().dataset_id().empty()) {
    return absl::InvalidArgumentError("spec.data.dataset_id is required");
  }
  // Another tenant's dataset or backbone is not found, as in every read.
  auto dataset = store_->GetDataset(spec.data().dataset_id(), tenant);
  if (absl::IsNotFound(dataset.status())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "spec.data.dataset_id: dataset '%s' not found",
        spec.data().dataset_id()));
  }
  RETURN_IF_ERROR(dataset.status());
  std::optional<Backbone> backbone;
  if (ReusesBackbone(spec.kind())) {
    if (spec.backbone_id().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec.backbone_id is required for ",
          tlserve::v1::JobKind_Name(spec.kind())));
    }
    auto found = store_->GetBackbone(spec.backbone_id(), tenant);
    if (absl::IsNotFound(found.status())) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "spec.backbone_id: backbone '%s' not found", spec.backbone_id()));
    }
    RETURN_IF_ERROR(found.status());
    backbone = *std::move(found);
  }
  RETURN_IF_ERROR(
      ValidateJobSpec(spec, *dataset, backbone ? &*backbone : nullptr));
  if (spec.kind() == tlserve::v1::DOMAIN_ADAPT) {
    // The caller's own, like the source.
    const std::string& target_id = spec.domain_adapt().target_dataset_id();
    auto target = store_->GetDataset(target_id, tenant);
    if (absl::IsNotFound(target.status())) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "spec.domain_adapt.target_dataset_id: dataset '%s' not found",
          target_id));
    }
    RETURN_IF_ERROR(target.status());
    RETURN_IF_ERROR(ValidateDomainTarget(*dataset, *target, *backbone));
  }
  // The job's own split (exactly the worker's): warnings become events.
  ASSIGN_OR_RETURN(std::optional<std::string> image_index,
                   store_->GetDatasetImageIndex(dataset->id()));
  ASSIGN_OR_RETURN(std::vector<std::string> split_warnings,
                   CheckJobSplit(spec, *dataset, image_index));

  std::string id;
  {
    absl::MutexLock lock(&mu_);
    if (!request_id.empty()) {
      ASSIGN_OR_RETURN(auto existing,
                       store_->LookupRequest("job", tenant, request_id));
      if (existing.has_value()) id = *existing;
    }
    if (id.empty()) {
      // Under mu_: concurrent creates cannot pass the quota together.
      if (options_.quotas.limits_queued_jobs()) {
        ASSIGN_OR_RETURN(int64_t queued, store_->QueuedJobsOf(tenant));
        RETURN_IF_ERROR(options_.quotas.CheckQueueJob(tenant, queued));
      }
      if (options_.quotas.limits_stored_bytes()) {
        ASSIGN_OR_RETURN(int64_t stored, store_->StoredBytesOf(tenant));
        RETURN_IF_ERROR(options_.quotas.CheckStore(tenant, stored, 0));
      }
      Job job;
      job.set_id(NewId("job"));
      job.set_tenant(std::string(tenant));
      *job.mutable_spec() = spec;
      job.set_state(tlserve::v1::QUEUED);
      *job.mutable_create_time() = ToProtoTime(options_.now());
      std::vector<JobEvent> events(2, NewEvent());
      auto* validating = events[0].mutable_state_change();
      validating->set_to(tlserve::v1::VALIDATING);
      validating->set_reason("job accepted; checking spec and dataset");
      auto* queued = events[1].mutable_state_change();
      queued->set_from(tlserve::v1::VALIDATING);
      queued->set_to(tlserve::v1::QUEUED);
      queued->set_reason(absl::StrFormat(
          "spec and dataset '%s' valid; %d training images in scope",
          dataset->id(), dataset->train_count()));
      for (const std::string& warning : split_warnings) {
        JobEvent event = NewEvent();
        event.set_message(absl::StrFormat("warning: %s", warning));
        events.insert(events.end() - 1, std::move(event));  // before QUEUED
      }
      RETURN_IF_ERROR(store_->PutJob(job, &events, /*enter_queue=*/true,
                                     request_id));
      id = job.id();
      events_->Notify(id);
    }
  }
  if (dispatcher_ != nullptr) dispatcher_->JobQueued();
  return GetJob(id, tenant);
}

absl::StatusOr<Job> JobManager::GetJob(const std::string& id,
                                       absl::string_view tenant) {
  ASSIGN_OR_RETURN(Job job, store_->GetJob(id, tenant));
  if (job.state() == tlserve::v1::QUEUED) FillQueueEstimate(&job);
  return job;
}

void JobManager::FillQueueEstimate(Job* job) {
  auto ahead = store_->QueuePosition(job->id());
  if (!ahead.ok()) return;
  const int64_t position = *ahead;
  job->set_queue_position(position);

  const int workers = dispatcher_ != nullptr ? dispatcher_->ConnectedWorkers() : 0;
  if (workers <= 0) return;  // No worker: no honest estimate to give.
  double mean = absl::ToDoubleSeconds(options_.default_run_estimate);
  if (auto m = store_->MeanRunSeconds(20); m.ok() && m->has_value()) mean = **m;

  // Simulate the queue: each worker frees up when its running job ends
  // (the job's own ETA when it reports one), then takes queued jobs in order.
  const absl::Time now = options_.now();
  std::priority_queue<double, std::vector<double>, std::greater<double>> free_at;
  std::vector<double> busy;
  if (auto running = store_->JobsInState(tlserve::v1::RUNNING); running.ok()) {
    for (const Job& r : *running) {
      double left = r.progress().eta_seconds();
      if (left <= 0) {
        double elapsed = absl::ToDoubleSeconds(now - FromProtoTime(r.start_time()));
        left = std::max(0.0, mean - elapsed);
      }
      busy.push_back(left);
    }
  }
  std::sort(busy.begin(), busy.end());
  for (int w = 0; w < workers; ++w) {
    free_at.push(w < static_cast<int>(busy.size()) ? busy[w] : 0.0);
  }
  double start = 0;
  for (int64_t i = 0; i <= position; ++i) {
    start = free_at.top();
    free_at.pop();
    free_at.push(start + mean);
  }
  *job->mutable_estimated_start_time() =
      ToProtoTime(now + absl::Seconds(start));
}

absl::StatusOr<Store::Page<Job>> JobManager::ListJobs(JobState state,
                                                      int page_size,
                                                      const std::string& token,
                                                      absl::string_view tenant) {
  ASSIGN_OR_RETURN(auto page, store_->ListJobs(state, page_size, token, tenant));
  for (Job& job : page.items) {
    if (job.state() == tlserve::v1::QUEUED) FillQueueEstimate(&job);
  }
  return page;
}

absl::StatusOr<Job> JobManager::CancelJob(const std::string& id,
                                          absl::string_view tenant) {
  std::string worker_id;
  int attempt = 0;
  Job job;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(job, store_->GetJob(id, tenant));
    if (IsFinalState(job.state())) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "job '%s' already finished as %s; nothing to cancel", id,
          tlserve::v1::JobState_Name(job.state())));
    }
    if (job.state() == tlserve::v1::RUNNING) {
      worker_id = job.worker_id();
      attempt = job.attempt();
    }
    RETURN_IF_ERROR(Transition(&job, tlserve::v1::CANCELLED, "cancelled by user"));
  }
  if (!worker_id.empty() && dispatcher_ != nullptr) {
    dispatcher_->CancelAttempt(worker_id, id, attempt);
  }
  return job;
}

absl::Status JobManager::DeleteJob(const std::string& id,
                                   absl::string_view tenant) {
  // Under mu_, so the job cannot be requeued between the check and the
  // delete.
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Job job, store_->GetJob(id, tenant));
  if (!IsFinalState(job.state())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "job '%s' is %s; cancel it first, then delete it", id,
        tlserve::v1::JobState_Name(job.state())));
  }
  return store_->DeleteJob(id);
}

absl::StatusOr<std::optional<AssignJob>> JobManager::ClaimNextJob(
    const std::string& worker_id, const std::string& device) {
  absl::MutexLock lock(&mu_);
  const bool has_cuda = absl::StartsWith(device, "cuda");
  // The head of the queue almost always has a job this worker can run;
  // the whole queue (thousands of jobs under load) is read only when not.
  constexpr int kHeadOfQueue = 32;
  for (int limit : {kHeadOfQueue, 0}) {
    ASSIGN_OR_RETURN(std::vector<Job> queued, store_->QueuedJobs(limit));
    for (Job& job : queued) {
      if (job.spec().device() == "cuda" && !has_cuda) continue;
      AssignJob assign;
      auto dataset =
          store_->GetDataset(job.spec().data().dataset_id(), job.tenant());
      if (!dataset.ok()) {
        RETURN_IF_ERROR(Transition(
            &job, tlserve::v1::FAILED,
            "dataset is gone: " + std::string(dataset.status().message())));
        continue;
      }
      *assign.mutable_dataset() = *dataset;
      if (ReusesBackbone(job.spec().kind())) {
        auto backbone =
            store_->GetBackbone(job.spec().backbone_id(), job.tenant());
        if (!backbone.ok()) {
          RETURN_IF_ERROR(Transition(
              &job, tlserve::v1::FAILED,
              "backbone is gone: " + std::string(backbone.status().message())));
          continue;
        }
        if (job.spec().kind() == tlserve::v1::DOMAIN_ADAPT) {
          auto target = store_->GetDataset(
              job.spec().domain_adapt().target_dataset_id(), job.tenant());
          if (!target.ok()) {
            RETURN_IF_ERROR(Transition(
                &job, tlserve::v1::FAILED,
                "target dataset is gone: " +
                    std::string(target.status().message())));
            continue;
          }
          *assign.mutable_target_dataset() = *target;
        }
        assign.mutable_backbone()->set_sha256(backbone->sha256());
        assign.mutable_backbone()->set_size_bytes(backbone->size_bytes());
        *assign.mutable_backbone_input_spec() = backbone->input_spec();
      }
      const absl::Time now = options_.now();
      job.set_attempt(job.attempt() + 1);
      job.set_worker_id(worker_id);
      const bool first_start = !job.has_start_time();
      if (first_start) {
        *job.mutable_start_time() = ToProtoTime(now);
        job.set_queue_wait_seconds(
            absl::ToDoubleSeconds(now - FromProtoTime(job.create_time())));
      }
      std::string resume;
      if (job.has_latest_checkpoint()) {
        *assign.mutable_resume_from() = job.latest_checkpoint();
        const tlserve::v1::CheckpointInfo& from = job.latest_checkpoint();
        resume = absl::StrFormat(
            "; resuming from checkpoint of epoch %d%s (attempt %d, sha256 %s)",
            from.epoch(),
            from.batch() > 0 ? absl::StrFormat(" + %d batches of epoch %d",
                                               from.batch(), from.epoch() + 1)
                             : "",
            from.attempt(), from.sha256().substr(0, 12));
      }
      assign.set_job_id(job.id());
      assign.set_attempt(job.attempt());
      *assign.mutable_spec() = job.spec();
      RETURN_IF_ERROR(Transition(
          &job, tlserve::v1::RUNNING,
          absl::StrFormat("attempt %d of %d on worker %s%s", job.attempt(),
                          job.spec().max_attempts(), worker_id, resume)));
      if (metrics_ != nullptr && first_start) {
        metrics_->JobStarted(absl::Seconds(job.queue_wait_seconds()));
      }
      return std::optional<AssignJob>(std::move(assign));
    }
    if (static_cast<int>(queued.size()) < kHeadOfQueue) break;
  }
  return std::optional<AssignJob>();
}

absl::StatusOr<Job> JobManager::LoadRunningAttempt(const std::string& worker_id,
                                                   const std::string& job_id,
                                                   int attempt) {
  ASSIGN_OR_RETURN(Job job, store_->GetJob(job_id, kEveryTenant));
  if (job.state() != tlserve::v1::RUNNING || job.attempt() != attempt ||
      job.worker_id() != worker_id) {
    return absl::AbortedError(absl::StrFormat(
        "stale update for job '%s' attempt %d from worker %s: the job is %s "
        "at attempt %d on worker '%s'",
        job_id, attempt, worker_id, tlserve::v1::JobState_Name(job.state()),
        job.attempt(), job.worker_id()));
  }
  return job;
}

absl::Status JobManager::OnProgress(const std::string& worker_id,
                                    const tlserve::v1::JobProgressUpdate& update) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Job job,
                   LoadRunningAttempt(worker_id, update.job_id(), update.attempt()));
  *job.mutable_progress() = update.progress();
  std::vector<JobEvent> events(1, NewEvent());
  *events[0].mutable_progress() = update.progress();
  RETURN_IF_ERROR(store_->PutJob(job, &events));
  events_->Notify(job.id());
  return absl::OkStatus();
}

absl::Status JobManager::OnEpochDone(const std::string& worker_id,
                                     const tlserve::v1::JobEpochDone& done) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Job job,
                   LoadRunningAttempt(worker_id, done.job_id(), done.attempt()));
  std::vector<JobEvent> events(1, NewEvent());
  *events[0].mutable_epoch_metrics() = done.metrics();
  // An epoch trained again (a lost attempt got past its last checkpoint)
  // replaces what that attempt recorded for it and any later epoch, so the
  // job's history is that of one run.
  auto* metrics = job.mutable_metrics();
  metrics->erase(std::remove_if(metrics->begin(), metrics->end(),
                                [&](const tlserve::v1::EpochMetrics& m) {
                                  return m.epoch() >= done.metrics().epoch();
                                }),
                 metrics->end());
  *job.add_metrics() = done.metrics();
  Store::JobOutputs outputs;
  if (done.has_checkpoint()) {
    RETURN_IF_ERROR(RecordCheckpoint(done.checkpoint(), done.attempt(), &job,
                                     &events, &outputs));
  }
  RETURN_IF_ERROR(store_->PutJobWithOutputs(job, outputs, &events));
  events_->Notify(job.id());
  return absl::OkStatus();
}

absl::Status JobManager::OnCheckpointSaved(
    const std::string& worker_id,
    const tlserve::v1::JobCheckpointSaved& saved) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Job job, LoadRunningAttempt(worker_id, saved.job_id(),
                                               saved.attempt()));
  std::vector<JobEvent> events;
  Store::JobOutputs outputs;
  RETURN_IF_ERROR(RecordCheckpoint(saved.checkpoint(), saved.attempt(), &job,
                                   &events, &outputs));
  RETURN_IF_ERROR(store_->PutJobWithOutputs(job, outputs, &events));
  events_->Notify(job.id());
  return absl::OkStatus();
}

absl::Status JobManager::RecordCheckpoint(tlserve::v1::CheckpointInfo checkpoint,
                                          int32_t attempt, Job* job,
                                          std::vector<JobEvent>* events,
                                          Store::JobOutputs* outputs) {
  if (!blobs_->Has(checkpoint.sha256())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "checkpoint %s of job '%s' was not stored; PutBlob it first",
        checkpoint.sha256(), job->id()));
  }
  checkpoint.set_attempt(attempt);
  *checkpoint.mutable_create_time() = ToProtoTime(options_.now());
  outputs->checkpoints.push_back(checkpoint);
  *job->mutable_latest_checkpoint() = checkpoint;
  JobEvent saved = NewEvent();
  *saved.mutable_checkpoint() = checkpoint;
  events->push_back(std::move(saved));
  return absl::OkStatus();
}

absl::Status JobManager::OnLog(const std::string& worker_id,
                               const tlserve::v1::JobLog& log) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Job job,
                   LoadRunningAttempt(worker_id, log.job_id(), log.attempt()));
  std::vector<JobEvent> events(1, NewEvent());
  events[0].set_message(log.message());
  RETURN_IF_ERROR(store_->AppendEvents(job.id(), &events));
  events_->Notify(job.id());
  return absl::OkStatus();
}

absl::Status JobManager::RegisterArtifact(Job* job,
                                          const tlserve::v1::JobFinished& finished,
                                          Store::JobOutputs* outputs) {
  const std::string& sha = finished.artifact_sha256();
  if (!blobs_->Has(sha)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "artifact %s of job '%s' was not stored; PutBlob it first", sha,
        job->id()));
  }
  tlserve::v1::JobResult* result = job->mutable_result();
  *result = finished.result();
  if (job->spec().kind() == tlserve::v1::PRETRAIN) {
    Backbone backbone;
    backbone.set_id(NewId("bb"));
    backbone.set_name(job->spec().pretrain().backbone_name());
    backbone.set_sha256(sha);
    backbone.set_size_bytes(finished.artifact_size_bytes());
    *backbone.mutable_input_spec() = finished.input_spec();
    backbone.set_feature_dim(finished.result().feature_dim());
    *backbone.mutable_blocks() = finished.result().blocks();
    backbone.set_source_job_id(job->id());
    backbone.set_tenant(job->tenant());
    *backbone.mutable_create_time() = ToProtoTime(options_.now());
    result->set_backbone_id(backbone.id());
    outputs->backbones.push_back(std::move(backbone));
  } else {
    tlserve::v1::Model model;
    model.set_id(NewId("model"));
    model.set_job_id(job->id());
    model.set_tenant(job->tenant());
    model.set_backbone_id(job->spec().backbone_id());
    model.set_sha256(sha);
    model.set_size_bytes(finished.artifact_size_bytes());
    *model.mutable_class_names() = finished.class_names();
    *model.mutable_tasks() = job->spec().multitask().tasks();
    *model.mutable_input_spec() = finished.input_spec();
    model.set_backbone_digest(finished.result().frozen_backbone_digest());
    if (finished.has_text()) *model.mutable_text() = finished.text();
    *model.mutable_create_time() = ToProtoTime(options_.now());
    result->set_model_id(model.id());
    outputs->model = std::move(model);
    // The server cannot open TorchScript; the first worker to load an
    // uploaded backbone tells it the blocks and feature size, so that
    // `backbone get` can show them for later jobs.
    auto backbone = store_->GetBackbone(job->spec().backbone_id(), kEveryTenant);
    if (backbone.ok() && backbone->blocks_size() == 0 &&
        finished.result().blocks_size() > 0) {
      backbone->set_feature_dim(finished.result().feature_dim());
      *backbone->mutable_blocks() = finished.result().blocks();
      outputs->backbones.push_back(*std::move(backbone));
    }
  }
  return absl::OkStatus();
}

absl::Status JobManager::OnFinished(const std::string& worker_id,
                                    const tlserve::v1::JobFinished& finished) {
  bool requeued = false;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(Job job, LoadRunningAttempt(worker_id, finished.job_id(),
                                                 finished.attempt()));
    if (finished.succeeded()) {
      Store::JobOutputs outputs;
      absl::Status registered = RegisterArtifact(&job, finished, &outputs);
      if (!registered.ok()) {
        return Transition(&job, tlserve::v1::FAILED,
                          "could not register the result: " +
                              std::string(registered.message()));
      }
      return Transition(&job, tlserve::v1::SUCCEEDED,
                        absl::StrFormat("attempt %d finished", job.attempt()),
                        /*extra=*/{}, /*enter_queue=*/false, outputs);
    }
    if (finished.cancelled()) {
      // The worker gave the attempt back (e.g. it is shutting down).
      std::string reason = absl::StrFormat("worker %s handed back attempt %d",
                                           worker_id, job.attempt());
      if (finished.handed_back()) {
        job.set_handed_back_attempts(job.handed_back_attempts() + 1);
        const tlserve::v1::CheckpointInfo& at = job.latest_checkpoint();
        absl::StrAppend(&reason, " as it stopped",
                        at.sha256().empty()
                            ? std::string(" (no checkpoint yet: the next "
                                          "attempt starts over)")
                            : absl::StrFormat(
                                  "; the next attempt resumes at epoch %d + "
                                  "%d batches",
                                  at.epoch(), at.batch()));
      }
      RETURN_IF_ERROR(RequeueOrFail(&job, reason));
      requeued = job.state() == tlserve::v1::QUEUED;
    } else {
      return Transition(&job, tlserve::v1::FAILED,
                        absl::StrFormat("attempt %d failed: %s", job.attempt(),
                                        finished.error()));
    }
  }
  if (requeued && dispatcher_ != nullptr) dispatcher_->JobQueued();
  return absl::OkStatus();
}

void JobManager::OnWorkerLost(const std::string& worker_id,
                              const std::string& reason) {
  bool requeued = false;
  {
    absl::MutexLock lock(&mu_);
    auto running = store_->JobsInState(tlserve::v1::RUNNING);
    if (!running.ok()) return;
    for (Job& job : *running) {
      if (job.worker_id() != worker_id) continue;
      absl::Status s = RequeueOrFail(
          &job, absl::StrFormat("worker %s lost during attempt %d: %s",
                                worker_id, job.attempt(), reason));
      requeued |= s.ok() && job.state() == tlserve::v1::QUEUED;
    }
  }
  if (requeued && dispatcher_ != nullptr) dispatcher_->JobQueued();
}

std::vector<std::string> JobManager::StaleJobsOf(
    const std::string& worker_id, const std::vector<std::string>& job_ids) {
  std::vector<std::string> stale;
  for (const std::string& id : job_ids) {
    auto job = store_->GetJob(id, kEveryTenant);
    if (!job.ok() || job->state() != tlserve::v1::RUNNING ||
        job->worker_id() != worker_id) {
      stale.push_back(id);
    }
  }
  return stale;
}

}  // namespace tlserve
