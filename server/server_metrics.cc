#include "server/server_metrics.h"

#include <string>

#include "server/blob_store.h"
#include "server/store.h"

namespace tlserve {
namespace {

using tlserve::v1::JobState;

// Jobs take seconds (a small fine-tune) to a day; queue waits from nothing
// to hours when the workers are busy.
const prometheus::Histogram::BucketBoundaries kDurationBuckets = {
    1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400};
const prometheus::Histogram::BucketBoundaries kQueueWaitBuckets = {
    0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400};

bool IsFinal(JobState state) {
  return state == tlserve::v1::SUCCEEDED || state == tlserve::v1::FAILED ||
         state == tlserve::v1::CANCELLED;
}

}  // namespace

ServerMetrics::ServerMetrics(prometheus::Registry& registry, Sources sources)
    : sources_(std::move(sources)),
      workers_(prometheus::BuildGauge()
                   .Name("tlserve_workers_connected")
                   .Help("Workers connected to the server")
                   .Register(registry)
                   .Add({})),
      store_bytes_(prometheus::BuildGauge()
                       .Name("tlserve_store_size_bytes")
                       .Help("Size of the job and metadata store on disk (tlserve.db and its WAL)")
                       .Register(registry)
                       .Add({})),
      blob_bytes_(prometheus::BuildGauge()
                      .Name("tlserve_blob_bytes")
                      .Help("Bytes of stored blobs: datasets, backbones, checkpoints, models")
                      .Register(registry)
                      .Add({})),
      jobs_by_state_(tlserve::v1::JobState_ARRAYSIZE, nullptr),
      finished_by_state_(tlserve::v1::JobState_ARRAYSIZE, nullptr),
      queue_wait_(prometheus::BuildHistogram()
                      .Name("tlserve_job_queue_wait_seconds")
                      .Help("Time from a job's creation to its first start")
                      .Register(registry)
                      .Add({}, kQueueWaitBuckets)),
      duration_(prometheus::BuildHistogram()
                    .Name("tlserve_job_duration_seconds")
                    .Help("Time from a job's first start to its end, all attempts")
                    .Register(registry)
                    .Add({}, kDurationBuckets)) {
  auto& jobs = prometheus::BuildGauge()
                   .Name("tlserve_jobs")
                   .Help("Jobs in each state")
                   .Register(registry);
  auto& finished = prometheus::BuildCounter()
                       .Name("tlserve_jobs_finished_total")
                       .Help("Jobs that reached a final state, by outcome")
                       .Register(registry);
  // Every child exists from the start, at 0, so rates and alerts see the
  // series before the first job of a kind.
  for (int s = tlserve::v1::VALIDATING; s <= tlserve::v1::CANCELLED; ++s) {
    const auto state = static_cast<JobState>(s);
    const std::string name = tlserve::v1::JobState_Name(state);
    jobs_by_state_[s] = &jobs.Add({{"state", name}});
    if (IsFinal(state)) finished_by_state_[s] = &finished.Add({{"outcome", name}});
  }
}

void ServerMetrics::JobStarted(absl::Duration queue_wait) {
  queue_wait_.Observe(absl::ToDoubleSeconds(queue_wait));
}

void ServerMetrics::JobFinished(JobState outcome, std::optional<absl::Duration> ran) {
  if (outcome < 0 || outcome >= static_cast<int>(finished_by_state_.size()) ||
      finished_by_state_[outcome] == nullptr) {
    return;
  }
  finished_by_state_[outcome]->Increment();
  if (ran.has_value()) duration_.Observe(absl::ToDoubleSeconds(*ran));
}

void ServerMetrics::Refresh() {
  if (sources_.connected_workers) workers_.Set(sources_.connected_workers());
  if (sources_.store != nullptr) {
    if (auto counts = sources_.store->CountJobsByState(); counts.ok()) {
      for (size_t s = 0; s < jobs_by_state_.size(); ++s) {
        if (jobs_by_state_[s] == nullptr) continue;
        auto it = counts->find(static_cast<JobState>(s));
        jobs_by_state_[s]->Set(it == counts->end() ? 0 : static_cast<double>(it->second));
      }
    }
    if (auto bytes = sources_.store->SizeOnDisk(); bytes.ok()) {
      store_bytes_.Set(static_cast<double>(*bytes));
    }
  }
  if (sources_.blobs != nullptr) {
    if (auto bytes = sources_.blobs->TotalBytes(); bytes.ok()) {
      blob_bytes_.Set(static_cast<double>(*bytes));
    }
  }
}

}  // namespace tlserve
