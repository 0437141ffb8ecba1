#ifndef TLSERVE_WORKER_METRICS_HTTP_H_
#define TLSERVE_WORKER_METRICS_HTTP_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace tlserve::worker {

// Serves a registry as Prometheus text on GET /metrics (HTTP/1.0, one
// request at a time, on one thread). Why not prometheus::Exposer:
// civetweb starts its threads with a 100 KiB stack, LibTorch's static TLS
// does not fit in that, and pthread_create fails in any process that links
// LibTorch. std::thread gets the default stack. Stops in its destructor.
class MetricsHttpServer {
 public:
  // `address` is "IPv4:port"; port 0 picks a free one.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer(int fd, int port, std::shared_ptr<prometheus::Registry> registry)
      : fd_(fd), port_(port), registry_(std::move(registry)) {}
  void Loop();
  void Answer(int client);

  int fd_;
  int port_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_METRICS_HTTP_H_
