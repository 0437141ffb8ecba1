#ifndef TLSERVE_SERVER_SERVER_METRICS_H_
#define TLSERVE_SERVER_SERVER_METRICS_H_

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/time/time.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve {

class BlobStore;
class Store;

// The job lifecycle's and the server state's Prometheus series:
//   tlserve_jobs{state}                   jobs per JobState name, from the store
//   tlserve_workers_connected             workers holding a Connect stream
//   tlserve_store_size_bytes              tlserve.db plus its WAL
//   tlserve_blob_bytes                    stored blobs
//   tlserve_jobs_finished_total{outcome}  SUCCEEDED | FAILED | CANCELLED
//   tlserve_job_queue_wait_seconds        creation to first start
//   tlserve_job_duration_seconds          first start to the end
// The gauges mirror state that lives elsewhere, so they are read when
// scraped (Refresh) rather than kept in step with every change. Thread-safe.
class ServerMetrics {
 public:
  // Where the gauges read from; not owned, must outlive Refresh calls.
  struct Sources {
    Store* store = nullptr;
    const BlobStore* blobs = nullptr;
    std::function<int()> connected_workers;
  };

  ServerMetrics(prometheus::Registry& registry, Sources sources);

  // A job's first attempt started after `queue_wait` in the queue.
  void JobStarted(absl::Duration queue_wait);
  // A job reached a final state; `ran` is first start to end, absent when
  // it never started (cancelled or failed in the queue).
  void JobFinished(tlserve::v1::JobState outcome, std::optional<absl::Duration> ran);
  // Reads the gauges' sources. A source that fails leaves its gauge as it
  // was: a scrape must not fail because the store is busy.
  void Refresh();

 private:
  Sources sources_;
  prometheus::Gauge& workers_;
  prometheus::Gauge& store_bytes_;
  prometheus::Gauge& blob_bytes_;
  // Indexed by JobState; null for states that are never stored.
  std::vector<prometheus::Gauge*> jobs_by_state_;
  std::vector<prometheus::Counter*> finished_by_state_;
  prometheus::Histogram& queue_wait_;
  prometheus::Histogram& duration_;
};

// A registry whose collection first runs `before`, so gauges that mirror
// state are fresh at every scrape. Register this with the Exposer instead
// of the registry itself.
class RefreshingCollectable : public prometheus::Collectable {
 public:
  RefreshingCollectable(std::shared_ptr<prometheus::Registry> registry,
                        std::function<void()> before)
      : registry_(std::move(registry)), before_(std::move(before)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    before_();
    return registry_->Collect();
  }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::function<void()> before_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_SERVER_METRICS_H_
