#include "server/server.h"

#include <unistd.h>

#include <climits>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/auth.h"
#include "server/blob_collector.h"
#include "server/blob_store.h"
#include "server/dataset_service.h"
#include "server/event_hub.h"
#include "server/health_listener.h"
#include "server/inference_router.h"
#include "server/inference_service.h"
#include "server/kserve_service.h"
#include "server/job_manager.h"
#include "server/job_service.h"
#include "server/local_workers.h"
#include "server/model_service.h"
#include "server/scheduler.h"
#include "server/store.h"
#include "server/work_pool.h"
#include "server/worker_service.h"

namespace tlserve {

namespace {

constexpr int kMaxMessageBytes = 64 << 20;

std::string DefaultWorkerBinary() {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "tlworker";
  std::string path(self, static_cast<size_t>(n));
  std::string dir = path.substr(0, path.rfind('/'));
  // build/server/tlserve -> build/worker/tlworker; an install dir holds both.
  std::string sibling = dir + "/tlworker";
  if (access(sibling.c_str(), X_OK) == 0) return sibling;
  return dir + "/../worker/tlworker";
}

// TLS when a certificate is given, plaintext otherwise.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const Server::Options& options) {
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert_file and --tls_key_file go together: give both or neither");
  }
  if (options.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadFile(options.tls_cert_file));
  ASSIGN_OR_RETURN(pair.private_key, ReadFile(options.tls_key_file));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(Options options) {
  std::unique_ptr<Server> s(new Server());
  s->options_ = options;
  if (options.auth_tokens_file.empty()) {
    s->auth_ = std::make_unique<Authenticator>();
    Log(LogSeverity::kWarning,
        "authentication is off: every caller is an admin; pass "
        "--auth_tokens_file outside development",
        {});
  } else {
    ASSIGN_OR_RETURN(s->auth_, Authenticator::FromFile(options.auth_tokens_file));
    if (options.local_workers > 0 && options.local_worker_token_file.empty()) {
      return absl::InvalidArgumentError(
          "--local_workers with --auth_tokens_file needs "
          "--local_worker_token_file: the admin token local workers send");
    }
  }
  if (options.tenant_quotas_file.empty()) {
    s->quotas_ = Quotas(options.tenant_quota);
  } else {
    ASSIGN_OR_RETURN(s->quotas_, Quotas::FromFile(options.tenant_quotas_file,
                                                  options.tenant_quota));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                   ServerCredentials(options));
  RETURN_IF_ERROR(MakeDirs(options.data_dir));
  ASSIGN_OR_RETURN(s->store_, Store::Open(options.data_dir + "/tlserve.db"));
  ASSIGN_OR_RETURN(s->blobs_, BlobStore::Open(options.data_dir + "/blobs"));
  s->events_ = std::make_unique<EventHub>();
  s->pool_ = std::make_unique<WorkPool>(4);
  JobManager::Options job_options;
  job_options.keep_checkpoints = options.keep_checkpoints;
  job_options.quotas = s->quotas_;
  s->jobs_ = std::make_unique<JobManager>(job_options, s->store_.get(),
                                          s->blobs_.get(), s->events_.get());
  Scheduler::Options sched;
  sched.heartbeat_interval = options.heartbeat_interval;
  sched.lease = options.lease;
  s->scheduler_ = std::make_unique<Scheduler>(sched, s->jobs_.get());
  s->jobs_->set_dispatcher(s->scheduler_.get());
  s->router_ = std::make_unique<InferenceRouter>(options.inference,
                                                 s->store_.get(), s->scheduler_.get());
  s->scheduler_->set_inference_sink(s->router_.get());
  s->registry_ = std::make_shared<prometheus::Registry>();
  s->inference_metrics_ = std::make_unique<InferenceMetrics>(*s->registry_);
  s->router_->set_metrics(s->inference_metrics_.get());
  ServerMetrics::Sources sources;
  sources.store = s->store_.get();
  sources.blobs = s->blobs_.get();
  Scheduler* scheduler = s->scheduler_.get();
  sources.connected_workers = [scheduler] { return scheduler->ConnectedWorkers(); };
  s->server_metrics_ = std::make_unique<ServerMetrics>(*s->registry_, std::move(sources));
  s->jobs_->set_metrics(s->server_metrics_.get());
  s->grpc_metrics_ = std::make_unique<GrpcMetrics>(
      *s->registry_,
      std::vector<std::string>{"tlserve.v1.DatasetService", "tlserve.v1.ModelService",
                               "tlserve.v1.JobService", "tlserve.v1.InferenceService",
                               "tlserve.v1.WorkerService", "inference.GRPCInferenceService",
                               "grpc.health.v1.Health",
                               "grpc.reflection.v1alpha.ServerReflection"});
  ServerMetrics* server_metrics = s->server_metrics_.get();
  s->scraped_ = std::make_shared<RefreshingCollectable>(
      s->registry_, [server_metrics] { server_metrics->Refresh(); });
  if (!options.metrics_listen.empty()) {
    try {
      s->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat(
          "cannot serve metrics on ", options.metrics_listen, ": ", e.what(),
          "; pick another with --metrics_listen"));
    }
    s->exposer_->RegisterCollectable(s->scraped_);
    const std::vector<int> ports = s->exposer_->GetListeningPorts();
    s->metrics_port_ = ports.empty() ? 0 : ports[0];
  }
  RETURN_IF_ERROR(s->jobs_->RecoverAfterRestart());

  s->dataset_service_ = std::make_unique<DatasetServiceImpl>(
      s->store_.get(), s->blobs_.get(), s->pool_.get(), options.limits,
      s->auth_.get(), &s->quotas_);
  s->model_service_ = std::make_unique<ModelServiceImpl>(
      s->store_.get(), s->blobs_.get(), s->pool_.get(), options.limits,
      s->router_.get(), s->auth_.get());
  s->job_service_ = std::make_unique<JobServiceImpl>(
      s->jobs_.get(), s->store_.get(), s->events_.get(), s->pool_.get(),
      s->auth_.get());
  s->inference_service_ =
      std::make_unique<InferenceServiceImpl>(s->router_.get(), s->auth_.get());
  s->kserve_service_ =
      std::make_unique<KServeServiceImpl>(s->store_.get(), s->router_.get(),
                                          s->auth_.get());
  s->worker_service_ = std::make_unique<WorkerServiceImpl>(
      s->scheduler_.get(), s->blobs_.get(), s->pool_.get(),
      options.limits.max_part_bytes, s->auth_.get());

  // Before the main port, so that a failure here leaves nothing serving.
  if (!options.health_listen.empty()) {
    ASSIGN_OR_RETURN(s->health_, HealthListener::Start(options.health_listen));
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, credentials, &s->port_);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(s->grpc_metrics_->NewInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.RegisterService(s->dataset_service_.get());
  builder.RegisterService(s->model_service_.get());
  builder.RegisterService(s->job_service_.get());
  builder.RegisterService(s->inference_service_.get());
  builder.RegisterService(s->kserve_service_.get());
  builder.RegisterService(s->worker_service_.get());
  s->grpc_server_ = builder.BuildAndStart();
  if (s->grpc_server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen_address,
        " (in use, or not a valid address); pick another with --listen"));
  }
  // Serving only now that the store is open and recovered.
  s->SetServing(true);
  s->scheduler_->Start();
  s->router_->Start();
  if (options.blob_gc_interval > absl::ZeroDuration()) {
    Server* server = s.get();
    s->collector_ = std::thread(
        [server, interval = options.blob_gc_interval] {
          server->CollectBlobsEvery(interval);
        });
  }

  if (options.local_workers > 0) {
    LocalWorkers::Options lw;
    lw.count = options.local_workers;
    lw.binary = options.worker_binary.empty() ? DefaultWorkerBinary()
                                              : options.worker_binary;
    lw.server_address = absl::StrCat("127.0.0.1:", s->port_);
    lw.cache_root = options.data_dir + "/worker-cache";
    lw.threads_per_worker = options.worker_threads;
    if (!options.local_worker_token_file.empty()) {
      lw.extra_args.push_back(
          absl::StrCat("--token_file=", options.local_worker_token_file));
    }
    if (!options.tls_cert_file.empty()) {
      // The certificate must name 127.0.0.1 (scripts/make-test-ca.sh's do).
      lw.extra_args.push_back(absl::StrCat(
          "--tls_ca_file=", options.tls_ca_file.empty() ? options.tls_cert_file
                                                       : options.tls_ca_file));
    }
    s->local_workers_ = std::make_unique<LocalWorkers>(lw);
    s->local_workers_->Start();
  }
  return s;
}

void Server::Wait() { grpc_server_->Wait(); }

int Server::health_port() const {
  return health_ == nullptr ? 0 : health_->port();
}

void Server::SetServing(bool serving) {
  grpc_server_->GetHealthCheckService()->SetServingStatus(serving);
  if (health_ != nullptr) health_->SetServing(serving);
}

void Server::CollectBlobsEvery(absl::Duration interval) {
  while (!stop_collecting_.WaitForNotificationWithTimeout(interval)) {
    absl::StatusOr<BlobCollection> done = CollectBlobs(
        store_.get(), blobs_.get(), options_.blob_gc_grace, absl::Now());
    if (!done.ok()) {
      Log(LogSeverity::kWarning, "blob collection failed",
          {{"error", std::string(done.status().message())}});
    } else if (done->removed > 0) {
      Log(LogSeverity::kInfo, "blobs collected",
          {{"removed", static_cast<long long>(done->removed)},
           {"removed_bytes", static_cast<long long>(done->removed_bytes)},
           {"kept", static_cast<long long>(done->referenced)},
           {"spared_young", static_cast<long long>(done->spared)}});
    }
  }
}

void Server::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  stop_collecting_.Notify();
  if (collector_.joinable()) collector_.join();
  // Null when Start failed before serving.
  if (grpc_server_ != nullptr) {
    // Readiness fails first, so load balancers stop sending calls here.
    SetServing(false);
  }
  // Local workers drain while the server still serves them: they hand
  // their jobs back with a checkpoint, which they upload here.
  local_workers_.reset();
  if (grpc_server_ == nullptr) return;
  const absl::Time deadline = absl::Now() + grace;
  // grpc::Server::Shutdown refuses new calls at once and waits for running
  // ones until the deadline. The long-lived streams would hold it that long,
  // so they are ended here: watches once they have sent what is stored,
  // worker streams once the inference batches out on workers came back.
  std::thread closer([this, deadline] {
    events_->Close();
    if (!router_->WaitIdle(deadline)) {
      Log(LogSeverity::kWarning,
          "inference calls still running at the end of the grace period");
    }
    scheduler_->CloseAllWorkers("tlserve is shutting down");
  });
  grpc_server_->Shutdown(absl::ToChronoTime(deadline));
  closer.join();
  // Probes keep reading NOT_SERVING until the main port has drained.
  if (health_ != nullptr) health_->Shutdown(absl::Now() + absl::Seconds(1));
}

Server::~Server() {
  Shutdown();
  if (grpc_server_ != nullptr) grpc_server_->Wait();
  // A scrape reads the scheduler and the stores: stop scrapes first.
  exposer_.reset();
  // Threads that call into the store stop before it closes.
  router_.reset();
  scheduler_.reset();
  pool_.reset();
}

}  // namespace tlserve
