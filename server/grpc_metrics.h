#ifndef TLSERVE_SERVER_GRPC_METRICS_H_
#define TLSERVE_SERVER_GRPC_METRICS_H_

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tlserve {

// Every call the gRPC server answers, counted by a server interceptor:
//   tlserve_grpc_server_handled_total{method,code}
//   tlserve_grpc_server_handling_seconds{method}   arrival to status sent
// method is "package.Service/Method" for the methods of the services named
// at construction, and "_other" for any other path, so a client cannot grow
// the label set; code is the grpc::StatusCode name ("OK", "NOT_FOUND").
// Streams count once, when they end. Thread-safe.
class GrpcMetrics {
 public:
  static constexpr char kOtherMethod[] = "_other";

  // `services`: full service names ("tlserve.v1.JobService") whose methods
  // are looked up in the generated descriptor pool; unknown ones are skipped.
  GrpcMetrics(prometheus::Registry& registry, const std::vector<std::string>& services);

  // An interceptor factory for grpc::ServerBuilder; the metrics must
  // outlive the server it is given to.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  NewInterceptorFactory();

  static constexpr int kCodes = grpc::StatusCode::UNAUTHENTICATED + 1;
  // One method's children: the histogram made up front, the counters on
  // first use (17 codes per method would mostly be empty series).
  struct Method {
    std::string label;
    prometheus::Histogram* seconds = nullptr;
    std::array<std::atomic<prometheus::Counter*>, kCodes> handled{};
  };
  // The method of a gRPC path ("/pkg.Service/Method"), or the "_other" one.
  Method& Find(const char* path);
  // One call answered.
  void Handled(Method& method, grpc::StatusCode code, absl::Duration took);

 private:

  prometheus::Family<prometheus::Counter>& handled_;
  prometheus::Family<prometheus::Histogram>& seconds_;
  // Keyed by "/pkg.Service/Method"; fixed after construction.
  std::map<std::string, std::unique_ptr<Method>, std::less<>> methods_;
  Method other_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_GRPC_METRICS_H_
