#include "server/health_listener.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/impl/server_builder_plugin.h"

namespace tlserve {

namespace {

// ServerBuilder adds every globally registered plugin to every builder;
// tlserve registers the reflection plugin for its main port. Dropping the
// plugins keeps this listener to the health service alone.
class WithoutPlugins : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(
      std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->clear();
  }
};

// Answers every method but the health service's, which gRPC matches first.
// It is also what lets the builder start: it refuses a server with no
// service of its own, and adds the default health service only later.
class OnlyHealth : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext*) override {
    class Refuse : public grpc::ServerGenericBidiReactor {
     public:
      Refuse() {
        Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                            "this port serves only grpc.health.v1.Health; "
                            "call tlserve's --listen port"));
      }
      void OnDone() override { delete this; }
    };
    return new Refuse;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<HealthListener>> HealthListener::Start(
    const std::string& address) {
  std::unique_ptr<HealthListener> listener(new HealthListener());
  // The default health service is what answers here; it is created only
  // while this global switch is on.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.SetOption(std::make_unique<WithoutPlugins>());
  listener->others_ = std::make_unique<OnlyHealth>();
  builder.RegisterCallbackGenericService(listener->others_.get());
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(),
                           &listener->port_);
  listener->server_ = builder.BuildAndStart();
  if (listener->server_ == nullptr || listener->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen for health checks on ", address,
        " (in use, or not a valid address); pick another with "
        "--health_listen"));
  }
  // The default service starts out SERVING; the owner says when it is.
  listener->SetServing(false);
  return listener;
}

void HealthListener::SetServing(bool serving) {
  server_->GetHealthCheckService()->SetServingStatus(serving);
}

void HealthListener::Shutdown(absl::Time deadline) {
  if (shut_down_) return;
  shut_down_ = true;
  server_->Shutdown(absl::ToChronoTime(deadline));
  server_->Wait();
}

HealthListener::~HealthListener() {
  if (server_ != nullptr) Shutdown(absl::Now());
}

}  // namespace tlserve
