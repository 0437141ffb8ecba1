#ifndef TLSERVE_CLIENT_CLIENT_H_
#define TLSERVE_CLIENT_CLIENT_H_

// A C++ client for the tlserve public API (tlserve.v1) with an
// absl::Status / absl::StatusOr surface over the generated gRPC stubs.
//
// Thread-safety: a Client is safe to use from several threads at once (the
// gRPC channel and stubs are); each call uses its own ClientContext.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"
#include "tlserve/v1/dataset.grpc.pb.h"
#include "tlserve/v1/inference.grpc.pb.h"
#include "tlserve/v1/job.grpc.pb.h"
#include "tlserve/v1/model.grpc.pb.h"

namespace tlserve {

class Client {
 public:
  struct Options {
    // host:port of the tlserve server.
    std::string target;
    // Deadline of each unary call (Get/List/Create/Cancel, health checks).
    absl::Duration timeout = absl::Seconds(30);
    // Deadline of a whole upload or export stream: they move files of many
    // megabytes, which a unary deadline would cut off.
    absl::Duration stream_timeout = absl::Minutes(30);
    // WatchJob re-connects this many times in a row (no event in between)
    // when its stream breaks with UNAVAILABLE, e.g. while the server
    // restarts, waiting watch_backoff, doubled each time, capped at 10 s.
    int watch_max_retries = 8;
    absl::Duration watch_backoff = absl::Milliseconds(250);
    // Sent as "authorization: Bearer <token>" on every call; empty: none.
    std::string token{};
    // PEM CA to verify the server's certificate with; empty: plaintext.
    std::string tls_ca_file{};
  };

  // Makes the channel (TLS when tls_ca_file is set). Does not contact the
  // server: gRPC connects lazily, so call WaitUntilHealthy() to know it is
  // up.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(Options options);

  // --- Datasets ---
  // Streams the header (each part's role, size and sha256) and then each
  // part's bytes in 1 MiB chunks. `request_id` makes a retry (or a re-run)
  // return the dataset the first upload made instead of a duplicate.
  absl::StatusOr<v1::Dataset> UploadDatasetFiles(
      const std::string& name, v1::DatasetFormat format,
      const std::vector<std::pair<v1::DatasetPartRole, std::string>>& parts,
      const std::vector<std::string>& class_names,
      const std::string& request_id);
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id);
  // Every page.
  absl::StatusOr<std::vector<v1::Dataset>> ListDatasets();
  absl::StatusOr<v1::ListDatasetsResponse> ListDatasetsPage(
      int32_t page_size, const std::string& page_token);
  absl::Status DeleteDataset(const std::string& id);

  // --- Backbones and models ---
  // An image backbone (TorchScript) with its input spec.
  absl::StatusOr<v1::Backbone> UploadBackbone(const std::string& name,
                                              const std::string& path,
                                              const v1::InputSpec& input_spec,
                                              const std::string& request_id);
  // Word vectors (GloVe text or word2vec binary) for text jobs.
  absl::StatusOr<v1::Backbone> UploadWordVectors(const std::string& name,
                                                 const std::string& path,
                                                 const std::string& request_id);
  absl::StatusOr<v1::Backbone> GetBackbone(const std::string& id);
  absl::StatusOr<std::vector<v1::Backbone>> ListBackbones();
  absl::StatusOr<v1::ListBackbonesResponse> ListBackbonesPage(
      int32_t page_size, const std::string& page_token);
  absl::StatusOr<v1::Model> GetModel(const std::string& id);
  // (Re)deploys with these batcher settings (unset: the server's) and
  // warms the model up; Undeploy stops serving it.
  absl::StatusOr<v1::Model> DeployModel(const std::string& id,
                                        const v1::ServingConfig& serving);
  absl::StatusOr<v1::Model> UndeployModel(const std::string& id);
  // An undeployed model (FAILED_PRECONDITION while deployed).
  absl::Status DeleteModel(const std::string& id);
  absl::StatusOr<std::vector<v1::Model>> ListModels();
  absl::StatusOr<v1::ListModelsResponse> ListModelsPage(
      int32_t page_size, const std::string& page_token);
  // Writes the model's TorchScript file to `out_path` atomically (temp file,
  // fsync, rename) after checking its size and sha256 against the first
  // chunk's; on any error `out_path` is left as it was. Returns the sha256.
  absl::StatusOr<std::string> ExportModel(const std::string& id,
                                          const std::string& out_path);

  // --- Jobs ---
  absl::StatusOr<v1::Job> CreateJob(const v1::JobSpec& spec,
                                    const std::string& request_id);
  absl::StatusOr<v1::Job> GetJob(const std::string& id);
  // One page; state JOB_STATE_UNSPECIFIED lists every state.
  absl::StatusOr<v1::ListJobsResponse> ListJobs(v1::JobState state,
                                                int32_t page_size,
                                                const std::string& page_token);
  // Every page.
  absl::StatusOr<std::vector<v1::Job>> ListAllJobs(v1::JobState state);
  absl::StatusOr<v1::Job> CancelJob(const std::string& id);
  // A finished job, with its events and checkpoints (FAILED_PRECONDITION
  // before it has finished).
  absl::Status DeleteJob(const std::string& id);
  absl::StatusOr<v1::ListCheckpointsResponse> ListCheckpoints(
      const std::string& job_id);

  // Calls `on_event` for each event with sequence > after_sequence until the
  // job ends (or `on_event` returns false), then returns the job as GetJob
  // sees it. A stream that breaks with UNAVAILABLE (or CANCELLED, from a
  // server shutting down) is re-opened from the last sequence seen, so no
  // event is delivered twice or lost; see
  // Options::watch_max_retries. Past `deadline`: DEADLINE_EXCEEDED.
  absl::StatusOr<v1::Job> WatchJob(
      const std::string& id, int64_t after_sequence,
      const std::function<bool(const v1::JobEvent&)>& on_event,
      absl::Time deadline = absl::InfiniteFuture());
  // The job once it is SUCCEEDED, FAILED or CANCELLED (any of them is OK
  // here: look at job.state()); DEADLINE_EXCEEDED after `timeout`.
  absl::StatusOr<v1::Job> WaitForJob(const std::string& id,
                                     absl::Duration timeout);

  // --- Inference ---
  absl::StatusOr<v1::PredictResponse> Predict(const v1::PredictRequest& request,
                                              absl::Duration deadline);
  // The backbone's features for each input (the model's features()).
  absl::StatusOr<v1::EmbedResponse> Embed(const v1::EmbedRequest& request,
                                          absl::Duration deadline);

  // --- Health (grpc.health.v1) ---
  // OK iff the server reports SERVING for the whole server ("").
  absl::Status CheckHealth();
  // Polls CheckHealth until OK; DEADLINE_EXCEEDED with the last error after
  // `timeout`.
  absl::Status WaitUntilHealthy(absl::Duration timeout);

  const Options& options() const { return options_; }

 private:
  Client(Options options, std::shared_ptr<grpc::Channel> channel);
  // `header` holds the kind and input spec; name, size, hash and request
  // id are filled in here.
  absl::StatusOr<v1::Backbone> UploadBackboneFile(
      const std::string& name, const std::string& path,
      v1::BackboneUploadHeader header, const std::string& request_id);
  // The deadline (unless infinite) and the token.
  void Prepare(grpc::ClientContext* ctx, absl::Time deadline) const;

  Options options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DatasetService::Stub> datasets_;
  std::unique_ptr<v1::ModelService::Stub> models_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::InferenceService::Stub> inference_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// True for SUCCEEDED, FAILED and CANCELLED.
bool IsFinalJobState(v1::JobState state);

}  // namespace tlserve

#endif  // TLSERVE_CLIENT_CLIENT_H_
