#include "server/grpc_metrics.h"

#include <algorithm>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "server/ids.h"
#include "google/protobuf/descriptor.h"

namespace tlserve {
namespace {

// 0.5 ms to about 16 s, doubling, as the inference histograms; streams
// that outlast it (WatchJob, a worker's Connect) land in +Inf.
prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double s = 0.0005; s < 20; s *= 2) b.push_back(s);
  return b;
}

// A client's x-request-id goes into logs as is, up to this many bytes.
constexpr size_t kMaxRequestIdBytes = 128;

// Times one call from its arrival (the interceptor is made then) to its
// status; a call that ends without one (the client went away before the
// handler finished) counts as CANCELLED when the call is destroyed. Logs
// each call answered with an error with its request id (the client's
// x-request-id, or one made here), which goes back in the trailers.
class MetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(GrpcMetrics* metrics, GrpcMetrics::Method* method,
                     const char* path)
      : metrics_(metrics), method_(method), path_(path == nullptr ? "" : path),
        start_(absl::Now()) {}
  ~MetricsInterceptor() override {
    if (!recorded_) {
      metrics_->Handled(*method_, grpc::StatusCode::CANCELLED, absl::Now() - start_);
    }
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      if (auto* md = methods->GetRecvInitialMetadata(); md != nullptr) {
        if (auto it = md->find("x-request-id"); it != md->end()) {
          request_id_.assign(it->second.data(),
                             std::min(it->second.size(), kMaxRequestIdBytes));
        }
      }
    }
    if (!recorded_ && methods->QueryInterceptionHookPoint(
                          grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      recorded_ = true;
      const grpc::Status status = methods->GetSendStatus();
      metrics_->Handled(*method_, status.error_code(), absl::Now() - start_);
      if (!status.ok()) {
        // The id goes back with the error, so that whoever saw it can find
        // this call's log line; a call without one gets one.
        if (request_id_.empty()) request_id_ = NewId("req");
        if (auto* trailers = methods->GetSendTrailingMetadata();
            trailers != nullptr && trailers->count("x-request-id") == 0) {
          trailers->emplace("x-request-id", request_id_);
        }
        LogFailure(status);
      }
    }
    methods->Proceed();
  }

 private:
  void LogFailure(const grpc::Status& status) const {
    const auto code = static_cast<absl::StatusCode>(status.error_code());
    // Codes that point at the server rather than at the request.
    const bool server_fault = code == absl::StatusCode::kInternal ||
                              code == absl::StatusCode::kUnknown ||
                              code == absl::StatusCode::kDataLoss ||
                              code == absl::StatusCode::kUnimplemented;
    const absl::string_view method =
        method_->label == GrpcMetrics::kOtherMethod ? path_ : method_->label;
    Log(server_fault ? LogSeverity::kError : LogSeverity::kWarning, "rpc failed",
        {{"method", method}, {"code", absl::StatusCodeToString(code)},
         {"error", status.error_message()}, {"request_id", request_id_}});
  }

  GrpcMetrics* metrics_;
  GrpcMetrics::Method* method_;  // owned by metrics_
  absl::string_view path_;  // the server's method table outlives the call
  // The client's x-request-id; on an error without one, one made here.
  std::string request_id_;
  absl::Time start_;
  bool recorded_ = false;
};

class MetricsInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(GrpcMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    const char* path = info->method();
    return new MetricsInterceptor(metrics_, &metrics_->Find(path == nullptr ? "" : path),
                                  path);
  }

 private:
  GrpcMetrics* metrics_;
};

}  // namespace

GrpcMetrics::GrpcMetrics(prometheus::Registry& registry,
                         const std::vector<std::string>& services)
    : handled_(prometheus::BuildCounter()
                   .Name("tlserve_grpc_server_handled_total")
                   .Help("gRPC calls answered by the server, by method and status code")
                   .Register(registry)),
      seconds_(prometheus::BuildHistogram()
                   .Name("tlserve_grpc_server_handling_seconds")
                   .Help("gRPC call time in the server, arrival to status, by method")
                   .Register(registry)) {
  const auto buckets = SecondsBuckets();
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const std::string& name : services) {
    const google::protobuf::ServiceDescriptor* service = pool->FindServiceByName(name);
    if (service == nullptr) continue;
    for (int i = 0; i < service->method_count(); ++i) {
      auto method = std::make_unique<Method>();
      method->label = absl::StrCat(service->full_name(), "/", service->method(i)->name());
      method->seconds = &seconds_.Add({{"method", method->label}}, buckets);
      methods_.emplace(absl::StrCat("/", method->label), std::move(method));
    }
  }
  other_.label = kOtherMethod;
  other_.seconds = &seconds_.Add({{"method", other_.label}}, buckets);
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
GrpcMetrics::NewInterceptorFactory() {
  return std::make_unique<MetricsInterceptorFactory>(this);
}

GrpcMetrics::Method& GrpcMetrics::Find(const char* path) {
  auto it = methods_.find(std::string_view(path));
  return it == methods_.end() ? other_ : *it->second;
}

void GrpcMetrics::Handled(Method& method, grpc::StatusCode code, absl::Duration took) {
  const int c = (code >= 0 && code < kCodes) ? static_cast<int>(code)
                                             : static_cast<int>(grpc::StatusCode::UNKNOWN);
  prometheus::Counter* counter = method.handled[c].load(std::memory_order_acquire);
  if (counter == nullptr) {
    // Family::Add returns the existing child for the same labels, so two
    // threads racing here store the same pointer.
    counter = &handled_.Add(
        {{"method", method.label},
         {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(c))}});
    method.handled[c].store(counter, std::memory_order_release);
  }
  counter->Increment();
  method.seconds->Observe(absl::ToDoubleSeconds(took));
}

}  // namespace tlserve
