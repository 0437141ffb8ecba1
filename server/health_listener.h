#ifndef TLSERVE_SERVER_HEALTH_LISTENER_H_
#define TLSERVE_SERVER_HEALTH_LISTENER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/grpcpp.h"

namespace tlserve {

// A second gRPC listener, always plaintext, that serves grpc.health.v1.Health
// and nothing else: no tlserve service, no reflection. It exists for probes
// that cannot speak TLS (Kubernetes' native gRPC probes) once the main port
// does. It reports what the owner tells it (Server mirrors the main port's
// state); it starts NOT_SERVING.
//
// SetServing may be called from any thread; Shutdown (also run by the
// destructor) only by the owner. Shutdown stops the listener and ends Watch
// streams.
class HealthListener {
 public:
  // Listens on `address` (host:port; port 0 picks a free one). UNAVAILABLE
  // when it cannot.
  static absl::StatusOr<std::unique_ptr<HealthListener>> Start(
      const std::string& address);
  ~HealthListener();

  int port() const { return port_; }
  // The overall ("") status answered to Check and Watch.
  void SetServing(bool serving);
  // Refuses new calls; open Watch streams end by `deadline` at the latest.
  void Shutdown(absl::Time deadline);

 private:
  HealthListener() = default;

  int port_ = 0;
  // Refuses every other method; outlives server_.
  std::unique_ptr<grpc::CallbackGenericService> others_;
  std::unique_ptr<grpc::Server> server_;
  bool shut_down_ = false;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_HEALTH_LISTENER_H_
