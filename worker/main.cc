// tlworker: dials tlserve and runs the jobs and inference calls it pushes.
// Flags -> WorkerAgent::Options -> Run until SIGINT/SIGTERM.

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "prometheus/registry.h"
#include "worker/allocator.h"
#include "worker/connection.h"
#include "worker/metrics_http.h"
#include "worker/worker_metrics.h"

namespace {

std::string DefaultServer() {
  const char* env = std::getenv("TLSERVE_SERVER");
  return env != nullptr && env[0] != '\0' ? env : "127.0.0.1:50051";
}

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

ABSL_FLAG(std::string, server, DefaultServer(),
          "tlserve address host:port (default: $TLSERVE_SERVER or "
          "127.0.0.1:50051)");
ABSL_FLAG(std::string, worker_id, "",
          "name of this worker (default: <hostname>-<pid>)");
ABSL_FLAG(std::string, cache_dir, "",
          "blob cache and job scratch folder (default: "
          "./var/worker-cache/<worker_id>)");
ABSL_FLAG(int, threads, static_cast<int>(std::thread::hardware_concurrency()),
          "LibTorch threads for training and for each inference batch (0: LibTorch's default)");
ABSL_FLAG(std::string, device, "cpu", "device to train on: cpu or cuda:N");
ABSL_FLAG(bool, keep_freed_memory, true,
          "fix glibc's malloc thresholds so freed tensor buffers are reused "
          "(worker/allocator.h); false: glibc's defaults");
ABSL_FLAG(double, drain_seconds, 60,
          "on SIGTERM/SIGINT: seconds to checkpoint and hand back the "
          "running job and finish held inference calls before stopping; a "
          "second signal stops at once");
ABSL_FLAG(std::string, metrics_listen, "",
          "Prometheus /metrics address, e.g. 0.0.0.0:9465 (empty: none)");
ABSL_FLAG(std::string, metrics_port_file, "",
          "write the /metrics port here once serving (with --metrics_listen=HOST:0)");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
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
  options.worker_id = absl::GetFlag(FLAGS_worker_id);
  if (options.worker_id.empty()) options.worker_id = DefaultWorkerId();
  options.cache_dir = absl::GetFlag(FLAGS_cache_dir);
  if (options.cache_dir.empty()) {
    options.cache_dir = absl::StrCat("./var/worker-cache/", options.worker_id);
  }
  options.num_threads = absl::GetFlag(FLAGS_threads);
  options.device = absl::GetFlag(FLAGS_device);
  const std::string worker_id = options.worker_id;
  options.on_connection_change = [worker_id](bool connected,
                                             const std::string& detail) {
    std::fprintf(stderr, "tlworker %s: %s%s\n", worker_id.c_str(),
                 connected ? "" : "disconnected: ", detail.c_str());
  };

  auto registry = std::make_shared<prometheus::Registry>();
  tlserve::worker::WorkerMetrics metrics(*registry);
  options.metrics = &metrics;
  std::unique_ptr<tlserve::worker::MetricsHttpServer> metrics_server;
  if (const std::string listen = absl::GetFlag(FLAGS_metrics_listen); !listen.empty()) {
    auto started = tlserve::worker::MetricsHttpServer::Start(listen, registry);
    if (!started.ok()) {
      std::fprintf(stderr, "tlworker: %s\n", started.status().ToString().c_str());
      return 1;
    }
    metrics_server = *std::move(started);
    WritePortFile(absl::GetFlag(FLAGS_metrics_port_file), metrics_server->port());
  }

  auto agent = tlserve::worker::WorkerAgent::Create(options);
  if (!agent.ok()) {
    std::fprintf(stderr, "tlworker: %s\n", agent.status().ToString().c_str());
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
    std::fprintf(stderr,
                 "tlworker: signal %d, draining for up to %s (a second "
                 "signal stops at once)\n",
                 sig, absl::FormatDuration(drain).c_str());
    drainer = std::thread([raw, drain] {
      const bool drained = raw->Drain(drain);
      std::fprintf(stderr, "tlworker: %s, stopping\n",
                   drained ? "drained" : "drain time is up");
    });
    const timespec slice = {0, 100 * 1000 * 1000};
    while (!run_returned) {
      if (sigtimedwait(&signals, nullptr, &slice) > 0) {
        std::fprintf(stderr, "tlworker: second signal, stopping now\n");
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
