// tlworker: dials tlserve and runs the jobs and inference calls it pushes.
// Flags -> WorkerAgent::Options -> Run until SIGINT/SIGTERM.

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/channel_security.h"
#include "common/config.h"
#include "common/log.h"
#include "prometheus/registry.h"
#include "worker/allocator.h"
#include "worker/compute_device.h"
#include "worker/connection.h"
#include "worker/metrics_http.h"
#include "worker/worker_metrics.h"

namespace {

std::string DefaultWorkerId() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return absl::StrCat(host[0] != '\0' ? host : "worker", "-", getpid());
}

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

ABSL_FLAG(std::string, server, "127.0.0.1:50051",
          "tlserve address to dial, host:port (TLSERVE_SERVER sets it like "
          "any flag)");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA that signed the server's certificate: connect with TLS "
          "(empty: plaintext)");
ABSL_FLAG(std::string, token_file, "",
          "file holding the admin token sent to the server on every call "
          "(a mounted Secret); empty: none");
ABSL_FLAG(std::string, worker_id, "",
          "name of this worker in tlserve's scheduler and logs; must be "
          "unique per server (empty: <hostname>-<pid>)");
ABSL_FLAG(std::string, cache_dir, "",
          "folder for the blob cache and job scratch files; created if "
          "missing (empty: ./var/worker-cache/<worker_id>)");
ABSL_FLAG(int, threads, static_cast<int>(std::thread::hardware_concurrency()),
          "LibTorch threads for training and for each inference batch "
          "(default: this machine's cores; 0: LibTorch's own choice)");
ABSL_FLAG(int, inference_threads, 4,
          "inference batches this worker runs at once, each on --threads "
          "LibTorch threads");
ABSL_FLAG(std::string, device, "cpu",
          "device to train and infer on: cpu, or cuda:N for GPU N");
ABSL_FLAG(bool, keep_freed_memory, true,
          "fix glibc's malloc thresholds so freed tensor buffers are reused "
          "instead of returned to the OS (worker/allocator.h); false: "
          "glibc's defaults");
ABSL_FLAG(bool, optimize_models, true,
          "answer Predict with a copy of each image model frozen and "
          "optimised for inference (torch::jit::optimize_for_inference), "
          "when it gives the model's answers; false: the exported model as "
          "it is");
ABSL_FLAG(int64_t, single_thread_max_rows, -1,
          "inference batches of at most this many rows run on one LibTorch "
          "thread instead of --threads; -1: chosen per model and batch size "
          "from the timings of its batches (worker/thread_choice.h); 0: "
          "never");
ABSL_FLAG(double, drain_seconds, 60,
          "on SIGTERM/SIGINT: seconds to checkpoint and hand back the "
          "running job and finish held inference calls before stopping; a "
          "second signal stops at once");
ABSL_FLAG(std::string, metrics_listen, "",
          "Prometheus /metrics address, host:port, e.g. 0.0.0.0:9465; port 0 "
          "takes any free port (empty: no /metrics)");
ABSL_FLAG(std::string, metrics_port_file, "",
          "file to write the /metrics port to once serving, with "
          "--metrics_listen=HOST:0 (empty: none)");

int main(int argc, char** argv) {
  tlserve::BinaryInfo info;
  info.name = "tlworker";
  info.usage =
      "a tlserve worker: dials tlserve and runs the fine-tuning jobs and "
      "inference batches it is given, with LibTorch.\n\nUsage: tlworker "
      "[--flag=value]...";
  info.own_dirs = {"worker", "common"};
  tlserve::InitFlags(argc, argv, info);
  if (absl::GetFlag(FLAGS_keep_freed_memory)) {
    tlserve::worker::KeepFreedTensorMemoryForReuse();
  }
  // Signals are taken by one thread with sigwait; block them before any
  // other thread starts so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  tlserve::worker::WorkerAgent::Options options;
  options.server_address = absl::GetFlag(FLAGS_server);
  options.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  if (const std::string path = absl::GetFlag(FLAGS_token_file); !path.empty()) {
    absl::StatusOr<std::string> token = tlserve::ReadTokenFile(path);
    if (!token.ok()) {
      tlserve::Log(tlserve::LogSeverity::kError, "cannot read --token_file",
          {{"error", std::string(token.status().message())}});
      return 2;
    }
    options.token = *std::move(token);
  }
  options.worker_id = absl::GetFlag(FLAGS_worker_id);
  if (options.worker_id.empty()) options.worker_id = DefaultWorkerId();
  options.cache_dir = absl::GetFlag(FLAGS_cache_dir);
  if (options.cache_dir.empty()) {
    options.cache_dir = absl::StrCat("./var/worker-cache/", options.worker_id);
  }
  options.num_threads = absl::GetFlag(FLAGS_threads);
  options.inference_threads = absl::GetFlag(FLAGS_inference_threads);
  options.device = absl::GetFlag(FLAGS_device);
  // One worker per GPU: a device it cannot reach is a start-up error, not
  // a failure of every job it would be sent.
  if (absl::Status device = tlserve::worker::CheckWorkerDevice(options.device);
      !device.ok()) {
    tlserve::Log(tlserve::LogSeverity::kError, "cannot use --device",
                 {{"error", std::string(device.message())}});
    return 2;
  }
  options.optimize_models = absl::GetFlag(FLAGS_optimize_models);
  options.single_thread_max_rows = absl::GetFlag(FLAGS_single_thread_max_rows);
  const std::string worker_id = options.worker_id;
  options.on_connection_change = [worker_id](bool connected,
                                             const std::string& detail) {
    tlserve::Log(connected ? tlserve::LogSeverity::kInfo : tlserve::LogSeverity::kWarning,
                 connected ? detail : absl::StrCat("disconnected: ", detail),
                 {{"worker_id", worker_id}});
  };

  auto registry = std::make_shared<prometheus::Registry>();
  tlserve::worker::WorkerMetrics metrics(*registry, options.device);
  options.metrics = &metrics;
  std::unique_ptr<tlserve::worker::MetricsHttpServer> metrics_server;
  if (const std::string listen = absl::GetFlag(FLAGS_metrics_listen); !listen.empty()) {
    auto started = tlserve::worker::MetricsHttpServer::Start(listen, registry);
    if (!started.ok()) {
      tlserve::Log(tlserve::LogSeverity::kError, "cannot serve /metrics",
                   {{"error", started.status().ToString()}});
      return 1;
    }
    metrics_server = *std::move(started);
    WritePortFile(absl::GetFlag(FLAGS_metrics_port_file), metrics_server->port());
  }

  auto agent = tlserve::worker::WorkerAgent::Create(options);
  if (!agent.ok()) {
    tlserve::Log(tlserve::LogSeverity::kError, "cannot start",
                 {{"error", agent.status().ToString()}});
    return 1;
  }
  tlserve::worker::WorkerAgent* raw = agent->get();
  // The first signal drains (Drain() ends with Stop()); a second one, or
  // Run() returning for another reason, cuts the drain short. Run()
  // returns only after Stop(), so the joins below never wait for a signal.
  const absl::Duration drain = absl::Seconds(absl::GetFlag(FLAGS_drain_seconds));
  std::atomic<bool> run_returned{false};
  std::thread drainer;
  std::thread waiter([raw, signals, drain, &run_returned, &drainer] {
    int sig = 0;
    sigwait(&signals, &sig);
    tlserve::Log(tlserve::LogSeverity::kInfo,
                 "draining: the running job is checkpointed and handed back; "
                 "a second signal stops at once",
                 {{"signal", sig},
                  {"drain_seconds", absl::ToDoubleSeconds(drain)}});
    drainer = std::thread([raw, drain] {
      const bool drained = raw->Drain(drain);
      tlserve::Log(drained ? tlserve::LogSeverity::kInfo
                           : tlserve::LogSeverity::kWarning,
                   drained ? "drained, stopping"
                           : "drain time is up, stopping");
    });
    const timespec slice = {0, 100 * 1000 * 1000};
    while (!run_returned) {
      if (sigtimedwait(&signals, nullptr, &slice) > 0) {
        tlserve::Log(tlserve::LogSeverity::kWarning,
                     "second signal, stopping now");
        raw->Stop();
        break;
      }
    }
  });
  raw->Run();
  run_returned = true;
  waiter.join();
  if (drainer.joinable()) drainer.join();
  agent->reset();
  metrics_server.reset();  // before the metrics it reads go
  return 0;
}
