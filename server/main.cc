// tlserve: the control-plane server. Flags -> Server::Options -> Start -> Wait.

#include <signal.h>

#include <cstdio>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/config.h"
#include "common/log.h"
#include "server/quotas.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051",
          "gRPC listen address, host:port; port 0 takes any free port "
          "(see --port_file)");
ABSL_FLAG(int, port, -1,
          "shorthand for --listen=0.0.0.0:PORT; 0 takes any free port, -1 "
          "uses --listen");
ABSL_FLAG(std::string, data_dir, "./var",
          "folder for the job database (tlserve.db) and the blobs/ store "
          "(datasets, backbones, checkpoints); created if missing");
ABSL_FLAG(int, local_workers, 0,
          "tlworker processes to start on this machine and restart when they "
          "exit (0: none; workers then dial in from elsewhere)");
ABSL_FLAG(std::string, worker_binary, "",
          "path of the tlworker binary for --local_workers (empty: the "
          "tlworker beside this tlserve)");
ABSL_FLAG(int, worker_threads, 0,
          "LibTorch threads per local worker (0: all cores)");
ABSL_FLAG(double, lease_seconds, 10,
          "seconds a worker may stay silent before it counts as lost and "
          "its job is requeued");
ABSL_FLAG(int, max_batch_size, 64,
          "inference: most inputs per batch sent to a worker by the dynamic "
          "batcher");
ABSL_FLAG(int, max_queue_delay_us, 0,
          "inference: microseconds a call may wait for others to fill its "
          "batch while a worker is free (0: send at once)");
ABSL_FLAG(int, max_inference_queue, 1024,
          "inference: calls queued per model before new ones get "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int, batches_per_worker, 2,
          "inference: batches in flight per worker at once");
ABSL_FLAG(bool, share_backbones, true,
          "inference: batch calls of models on the same frozen backbone "
          "together, running the backbone once per batch");
ABSL_FLAG(int64_t, max_decoded_part_bytes, 512LL << 20,
          "uploads: largest dataset part the server decodes in memory to "
          "validate it: an IDX file after gunzip (checked against its "
          "header before inflating, so a gzip bomb costs nothing) or an "
          "archive's decoded images; larger ones get INVALID_ARGUMENT");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "file of bearer tokens (lines '<tenant> <user|admin> <sha256 of "
          "the token>', see scripts/make-token.sh); empty: authentication "
          "off, every caller an admin (development only)");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain the server presents (with --tls_key_file); "
          "empty: plaintext");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA that signed --tls_cert_file, for local workers to trust "
          "(empty: they trust --tls_cert_file itself)");
ABSL_FLAG(std::string, local_worker_token_file, "",
          "file holding the admin token local workers send (needed with "
          "--local_workers and --auth_tokens_file)");
ABSL_FLAG(int64_t, tenant_max_queued_jobs, 0,
          "jobs a tenant may have queued; one more gets RESOURCE_EXHAUSTED "
          "(0: no limit; --tenant_quotas_file sets one per tenant)");
ABSL_FLAG(std::string, tenant_max_stored_bytes, "0",
          "bytes a tenant may store (datasets, models, its backbones, its "
          "jobs' checkpoints), with an optional K, M, G or T suffix; an "
          "upload or job past it gets RESOURCE_EXHAUSTED (0: no limit)");
ABSL_FLAG(std::string, tenant_quotas_file, "",
          "per-tenant quotas, lines '<tenant> [queued_jobs=N] "
          "[stored_bytes=N[K|M|G|T]]' (server/quotas.h); tenants not listed "
          "get --tenant_max_queued_jobs and --tenant_max_stored_bytes");
ABSL_FLAG(int, keep_checkpoints, 0,
          "checkpoints a finished job keeps: the newest N and the newest "
          "best (0: all); the rest are freed by the blob collector");
ABSL_FLAG(double, blob_gc_interval_seconds, 600,
          "seconds between collections of blobs no dataset, backbone, model "
          "or checkpoint refers to (0: never)");
ABSL_FLAG(double, blob_gc_grace_seconds, 3600,
          "an unreferenced blob is removed only once it is this old: longer "
          "than any upload takes from storing a blob to recording it");
ABSL_FLAG(std::string, metrics_listen, "",
          "Prometheus /metrics address, host:port, e.g. 0.0.0.0:9464; port 0 "
          "takes any free port (empty: no /metrics)");
ABSL_FLAG(std::string, health_listen, "",
          "second address, host:port, that serves only grpc.health.v1.Health "
          "in plaintext, with the same state as --listen: for probes that "
          "cannot speak TLS (Kubernetes' gRPC probes), e.g. 0.0.0.0:50052; "
          "port 0 takes any free port (empty: none)");
ABSL_FLAG(std::string, health_port_file, "",
          "file to write the health port to once serving, with "
          "--health_listen=HOST:0 (empty: none)");
ABSL_FLAG(std::string, port_file, "",
          "file to write the gRPC port to once serving, for tests and "
          "scripts that start tlserve on port 0 (empty: none)");
ABSL_FLAG(std::string, metrics_port_file, "",
          "file to write the /metrics port to once serving, with "
          "--metrics_listen=HOST:0 (empty: none)");

namespace {

// Written to a temp name and renamed, so a reader never sees half a number.
void WritePortFile(const std::string& file, int port) {
  if (file.empty()) return;
  FILE* f = std::fopen((file + ".tmp").c_str(), "w");
  if (f == nullptr) return;
  std::fprintf(f, "%d\n", port);
  std::fclose(f);
  std::rename((file + ".tmp").c_str(), file.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  tlserve::BinaryInfo info;
  info.name = "tlserve";
  info.usage =
      "the tlserve control plane: the gRPC API for datasets, backbones, "
      "fine-tuning jobs and inference, the job store and the scheduler that "
      "hands jobs to tlworker processes.\n\nUsage: tlserve [--flag=value]...";
  info.own_dirs = {"server", "common"};
  tlserve::InitFlags(argc, argv, info);
  // Signals are taken by one thread with sigwait; block them everywhere else.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  tlserve::Server::Options options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  if (absl::GetFlag(FLAGS_port) >= 0) {
    options.listen_address = absl::StrCat("0.0.0.0:", absl::GetFlag(FLAGS_port));
  }
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.local_workers = absl::GetFlag(FLAGS_local_workers);
  options.worker_binary = absl::GetFlag(FLAGS_worker_binary);
  options.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  options.lease = absl::Seconds(absl::GetFlag(FLAGS_lease_seconds));
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.health_listen = absl::GetFlag(FLAGS_health_listen);
  options.keep_checkpoints = absl::GetFlag(FLAGS_keep_checkpoints);
  options.blob_gc_interval =
      absl::Seconds(absl::GetFlag(FLAGS_blob_gc_interval_seconds));
  options.blob_gc_grace =
      absl::Seconds(absl::GetFlag(FLAGS_blob_gc_grace_seconds));
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  options.tenant_quota.max_queued_jobs =
      absl::GetFlag(FLAGS_tenant_max_queued_jobs);
  {
    absl::StatusOr<int64_t> bytes =
        tlserve::ParseByteSize(absl::GetFlag(FLAGS_tenant_max_stored_bytes));
    if (!bytes.ok()) {
      tlserve::Log(tlserve::LogSeverity::kError, "cannot start",
                   {{"error", absl::StrCat("--tenant_max_stored_bytes: ",
                                           bytes.status().message())}});
      return 1;
    }
    options.tenant_quota.max_stored_bytes = *bytes;
  }
  options.tenant_quotas_file = absl::GetFlag(FLAGS_tenant_quotas_file);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  options.local_worker_token_file =
      absl::GetFlag(FLAGS_local_worker_token_file);
  options.limits.dataset.max_idx_bytes =
      absl::GetFlag(FLAGS_max_decoded_part_bytes);
  options.limits.dataset.max_decoded_bytes =
      absl::GetFlag(FLAGS_max_decoded_part_bytes);
  options.inference.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  options.inference.max_queue_delay =
      absl::Microseconds(absl::GetFlag(FLAGS_max_queue_delay_us));
  options.inference.max_queue_size = absl::GetFlag(FLAGS_max_inference_queue);
  options.inference.max_batches_per_worker =
      absl::GetFlag(FLAGS_batches_per_worker);
  options.inference.share_backbones = absl::GetFlag(FLAGS_share_backbones);

  auto server = tlserve::Server::Start(options);
  if (!server.ok()) {
    tlserve::Log(tlserve::LogSeverity::kError, "cannot start",
                 {{"error", server.status().ToString()}});
    return 1;
  }
  // The other ports first: whoever waits for port_file then finds them all.
  WritePortFile(absl::GetFlag(FLAGS_metrics_port_file), (*server)->metrics_port());
  WritePortFile(absl::GetFlag(FLAGS_health_port_file), (*server)->health_port());
  WritePortFile(absl::GetFlag(FLAGS_port_file), (*server)->port());
  tlserve::Log(tlserve::LogSeverity::kInfo, "serving",
               {{"port", (*server)->port()},
                {"metrics_port", (*server)->metrics_port()},
                {"health_port", (*server)->health_port()},
                {"data_dir", options.data_dir}});
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    tlserve::Log(tlserve::LogSeverity::kInfo, "shutting down", {{"signal", sig}});
    (*server)->Shutdown();
  });
  (*server)->Wait();
  waiter.join();
  server->reset();
  return 0;
}
