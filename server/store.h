#ifndef TLSERVE_SERVER_STORE_H_
#define TLSERVE_SERVER_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "tlserve/v1/dataset.pb.h"
#include "tlserve/v1/job.pb.h"
#include "tlserve/v1/model.pb.h"

struct sqlite3;

namespace tlserve {

// Tenants. Datasets, jobs (with their events and checkpoints) and models
// belong to the tenant that made them; a row stored without one belongs to
// kDefaultTenant, the tenant of every call when authentication is off.
// Backbones an admin uploaded belong to no tenant ("") and every tenant
// sees them; a PRETRAIN job's backbone is its tenant's. Reads that take a
// tenant see that tenant's rows and the shared ones: another tenant's row
// is NOT_FOUND with the very message of a missing one, and lists leave it
// out. The server's own work (dispatch, recovery, workers, the collector)
// reads with kEveryTenant. A read that names no tenant is the default
// tenant's, so a forgotten argument hides rows rather than showing them.
inline constexpr absl::string_view kDefaultTenant = "default";
inline constexpr absl::string_view kEveryTenant = "*";

// Durable state of the server in one SQLite database (WAL mode,
// synchronous=FULL: a write has reached the disk when a call returns).
// Resources are stored as serialized protos beside the columns that queries
// need. The schema is versioned; Open() applies pending migrations in order
// inside transactions. Thread-safe: calls are serialised on one connection.
class Store {
 public:
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  ~Store();

  int schema_version() const;

  // A page of a list: items and the token for the next page ("" at the end).
  template <typename T>
  struct Page {
    std::vector<T> items;
    std::string next_page_token;
  };

  // --- Idempotency keys: (kind, tenant, request_id) -> resource id, where
  // kind is "dataset", "job" or "backbone" (whose tenant is "").
  absl::StatusOr<std::optional<std::string>> LookupRequest(
      absl::string_view kind, absl::string_view tenant,
      const std::string& request_id);

  // --- Datasets. Put inserts or replaces by id. When request_id is not
  // empty it is recorded in the same transaction, under kind "dataset" and
  // the dataset's tenant.
  absl::Status PutDataset(const tlserve::v1::Dataset& dataset,
                          const std::string& request_id = "");
  // NOT_FOUND when absent.
  absl::StatusOr<tlserve::v1::Dataset> GetDataset(
      const std::string& id, absl::string_view tenant = kDefaultTenant);
  // Ordered by creation (oldest first). page_size <= 0 means 100.
  absl::StatusOr<Page<tlserve::v1::Dataset>> ListDatasets(
      int page_size, const std::string& page_token,
      absl::string_view tenant = kDefaultTenant);
  absl::Status DeleteDataset(const std::string& id,
                             absl::string_view tenant = kDefaultTenant);
  // PutDataset plus the dataset's per-record image index (opaque bytes,
  // common/dataset_checks.h), in one transaction. The index goes away with
  // the dataset.
  absl::Status PutDatasetWithIndex(const tlserve::v1::Dataset& dataset,
                                   const std::string& image_index,
                                   const std::string& request_id = "");
  // The index stored with the dataset; nullopt for datasets stored without
  // one (uploaded before schema version 2).
  absl::StatusOr<std::optional<std::string>> GetDatasetImageIndex(
      const std::string& dataset_id);

  // --- Backbones (scope "backbone") and models.
  absl::Status PutBackbone(const tlserve::v1::Backbone& backbone,
                           const std::string& request_id = "");
  absl::StatusOr<tlserve::v1::Backbone> GetBackbone(
      const std::string& id, absl::string_view tenant = kDefaultTenant);
  absl::StatusOr<Page<tlserve::v1::Backbone>> ListBackbones(
      int page_size, const std::string& page_token,
      absl::string_view tenant = kDefaultTenant);
  absl::Status PutModel(const tlserve::v1::Model& model);
  absl::StatusOr<tlserve::v1::Model> GetModel(
      const std::string& id, absl::string_view tenant = kDefaultTenant);
  // NOT_FOUND, or FAILED_PRECONDITION while the model is deployed.
  absl::Status DeleteModel(const std::string& id,
                           absl::string_view tenant = kDefaultTenant);
  absl::StatusOr<Page<tlserve::v1::Model>> ListModels(
      int page_size, const std::string& page_token,
      absl::string_view tenant = kDefaultTenant);

  // --- Jobs. PutJob inserts or replaces the job (its state, priority and
  // attempt are indexed) and appends `events` in the same transaction,
  // filling in each event's sequence (increasing, unique in the database)
  // and job_id. A new job (or one moved back to QUEUED) gets a fresh
  // queue_seq when enter_queue is true: the FIFO order among equal
  // priorities. request_id as for datasets, scope "job".
  absl::Status PutJob(const tlserve::v1::Job& job,
                      std::vector<tlserve::v1::JobEvent>* events = nullptr,
                      bool enter_queue = false,
                      const std::string& request_id = "");
  // What a running job made, stored in the transaction that stores the
  // job: stored apart, a crash between the two would leave a checkpoint the
  // job does not name, or a model whose job runs again and makes a second.
  struct JobOutputs {
    std::vector<tlserve::v1::CheckpointInfo> checkpoints;  // added
    std::vector<tlserve::v1::Backbone> backbones;          // inserted or replaced
    std::optional<tlserve::v1::Model> model;               // inserted
  };
  absl::Status PutJobWithOutputs(const tlserve::v1::Job& job,
                                 const JobOutputs& outputs,
                                 std::vector<tlserve::v1::JobEvent>* events,
                                 bool enter_queue = false);
  absl::StatusOr<tlserve::v1::Job> GetJob(
      const std::string& id, absl::string_view tenant = kDefaultTenant);
  // Newest first. state JOB_STATE_UNSPECIFIED: every state.
  absl::StatusOr<Page<tlserve::v1::Job>> ListJobs(
      tlserve::v1::JobState state, int page_size,
      const std::string& page_token,
      absl::string_view tenant = kDefaultTenant);
  // QUEUED jobs in run order (priority high to low, then queue_seq): the
  // first `limit`, or every one when limit <= 0.
  absl::StatusOr<std::vector<tlserve::v1::Job>> QueuedJobs(int limit = 0);
  // How many queued jobs run before job `id`; NOT_FOUND when it is not
  // queued.
  absl::StatusOr<int64_t> QueuePosition(const std::string& id);
  // Jobs in the given state (any order); used at start-up for recovery.
  absl::StatusOr<std::vector<tlserve::v1::Job>> JobsInState(
      tlserve::v1::JobState state);
  // How many jobs are in each state (states with none are absent).
  absl::StatusOr<std::map<tlserve::v1::JobState, int64_t>> CountJobsByState();
  // Bytes of the database file and its WAL: what the data dir's store
  // holds on disk.
  absl::StatusOr<int64_t> SizeOnDisk();
  // Appends events to a job without rewriting it.
  absl::Status AppendEvents(const std::string& job_id,
                            std::vector<tlserve::v1::JobEvent>* events);
  // Events with sequence > after_sequence, in order, at most limit.
  absl::StatusOr<std::vector<tlserve::v1::JobEvent>> ListEvents(
      const std::string& job_id, int64_t after_sequence, int limit);
  // Mean run time (start to end) of the last `last_n` SUCCEEDED jobs, or
  // nullopt when there are none.
  absl::StatusOr<std::optional<double>> MeanRunSeconds(int last_n);

  // --- Checkpoints of a job, oldest first.
  absl::Status AddCheckpoint(const std::string& job_id,
                             const tlserve::v1::CheckpointInfo& checkpoint);
  // Deletes a job with its events, checkpoint rows and request id (whether
  // it may be deleted is the caller's call).
  absl::Status DeleteJob(const std::string& id);
  // Deletes a job's checkpoint rows but the newest `keep_latest` (>= 1) and
  // the newest marked best; their blobs are left to the collector.
  absl::Status PruneCheckpoints(const std::string& job_id, int keep_latest);

  // The sha256 of every blob a row refers to (dataset parts, backbones,
  // models, checkpoints): what the blob collector must keep. One snapshot:
  // no write lands while it is read.
  absl::StatusOr<std::set<std::string>> ReferencedBlobs();
  absl::StatusOr<std::vector<tlserve::v1::CheckpointInfo>> ListCheckpoints(
      const std::string& job_id);

  // --- What a tenant holds, for quotas: its QUEUED jobs, and the bytes of
  // its datasets' parts, models, own backbones and jobs' checkpoints as
  // uploaded or reported (before the blob store's deduplication).
  absl::StatusOr<int64_t> QueuedJobsOf(absl::string_view tenant);
  absl::StatusOr<int64_t> StoredBytesOf(absl::string_view tenant);

 private:
  explicit Store(sqlite3* db);
  // PutJob and PutJobWithOutputs; outputs may be null.
  absl::Status StoreJob(const tlserve::v1::Job& job, const JobOutputs* outputs,
                        std::vector<tlserve::v1::JobEvent>* events,
                        bool enter_queue, const std::string& request_id);
  sqlite3* db_;
  mutable absl::Mutex mu_;
  int schema_version_ = 0;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_STORE_H_
