#ifndef TLSERVE_SERVER_SERVER_H_
#define TLSERVE_SERVER_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "server/inference_metrics.h"
#include "server/grpc_metrics.h"
#include "server/inference_router.h"
#include "server/quotas.h"
#include "server/server_metrics.h"
#include "server/uploads.h"

namespace tlserve {

class Authenticator;
class BlobStore;
class DatasetServiceImpl;
class EventHub;
class HealthListener;
class InferenceServiceImpl;
class KServeServiceImpl;
class JobManager;
class JobServiceImpl;
class LocalWorkers;
class ModelServiceImpl;
class Scheduler;
class Store;
class WorkPool;
class WorkerServiceImpl;

// The tlserve process: owns the store, the blob store, the job manager,
// the scheduler, the inference router, the gRPC services (plus health and
// reflection), optionally a plaintext health-only listener
// (server/health_listener.h) and local worker processes.
class Server {
 public:
  struct Options {
    // Where clients and workers connect; port 0 picks a free port.
    std::string listen_address = "0.0.0.0:50051";
    // tlserve.db and blobs/ live here.
    std::string data_dir = "./var";
    // tlworker processes to start and supervise beside the server.
    int local_workers = 0;
    // Path of tlworker (default: next to the running tlserve binary).
    std::string worker_binary;
    int worker_threads = 0;
    absl::Duration heartbeat_interval = absl::Seconds(1);
    // A worker silent this long is lost and its job requeued.
    absl::Duration lease = absl::Seconds(10);
    UploadLimits limits;
    // The dynamic batcher's settings.
    InferenceRouter::Options inference;
    // Prometheus text endpoint (/metrics), e.g. "0.0.0.0:9464" or
    // "127.0.0.1:0" (any free port); empty: none.
    std::string metrics_listen;
    // A second, plaintext listener serving only grpc.health.v1.Health with
    // the main port's state, for probes that cannot speak TLS; e.g.
    // "0.0.0.0:50052", port 0 picks any; empty: none.
    std::string health_listen;
    // Bearer tokens (server/auth.h); empty: authentication off.
    std::string auth_tokens_file;
    // TLS: the server's certificate chain and key (PEM); both or neither.
    std::string tls_cert_file;
    std::string tls_key_file;
    // Local workers: the CA they trust for the server's certificate, and
    // the file holding their (admin) token.
    std::string tls_ca_file;
    std::string local_worker_token_file;
    // Per-tenant quotas (server/quotas.h): the default, and a file of
    // per-tenant ones (empty: none).
    TenantQuota tenant_quota;
    std::string tenant_quotas_file;
    // Checkpoints a finished job keeps (JobManager::Options; 0: all).
    int keep_checkpoints = 0;
    // How often unreferenced blobs are collected (server/blob_collector.h;
    // zero: never), and how old an unreferenced blob must be to go.
    absl::Duration blob_gc_interval = absl::Minutes(10);
    absl::Duration blob_gc_grace = absl::Hours(1);
  };

  static absl::StatusOr<std::unique_ptr<Server>> Start(Options options);
  ~Server();

  int port() const { return port_; }
  // The /metrics port (0 without an endpoint).
  int metrics_port() const { return metrics_port_; }
  // The plaintext health port (0 without --health_listen).
  int health_port() const;
  // Blocks until Shutdown() from another thread.
  void Wait();
  // Stops accepting calls, gives running ones `grace` to end, stops workers.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

 private:
  Server() = default;

  Options options_;
  int port_ = 0;
  std::unique_ptr<Authenticator> auth_;
  Quotas quotas_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<EventHub> events_;
  std::unique_ptr<WorkPool> pool_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<Scheduler> scheduler_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<InferenceMetrics> inference_metrics_;
  std::unique_ptr<ServerMetrics> server_metrics_;
  // Outlives grpc_server_, whose interceptors record into it.
  std::unique_ptr<GrpcMetrics> grpc_metrics_;
  // What the exposer scrapes (it holds only a weak_ptr).
  std::shared_ptr<prometheus::Collectable> scraped_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int metrics_port_ = 0;
  std::unique_ptr<InferenceRouter> router_;
  std::unique_ptr<DatasetServiceImpl> dataset_service_;
  std::unique_ptr<ModelServiceImpl> model_service_;
  std::unique_ptr<JobServiceImpl> job_service_;
  std::unique_ptr<InferenceServiceImpl> inference_service_;
  std::unique_ptr<KServeServiceImpl> kserve_service_;
  std::unique_ptr<WorkerServiceImpl> worker_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<HealthListener> health_;
  // The main port's health service and the health listener's, together.
  void SetServing(bool serving);
  std::unique_ptr<LocalWorkers> local_workers_;
  // The blob collector's thread, woken to stop by stop_collecting_.
  void CollectBlobsEvery(absl::Duration interval);
  absl::Notification stop_collecting_;
  std::thread collector_;
  bool shut_down_ = false;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_SERVER_H_
