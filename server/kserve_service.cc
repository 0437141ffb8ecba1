#include "server/kserve_service.h"

#include <chrono>

#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/kserve_api.h"
#include "server/reactors.h"

namespace tlserve {
namespace {

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context,
                               const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

absl::Time CallDeadline(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline < std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
    return absl::FromChrono(deadline);
  }
  return absl::InfiniteFuture();
}

}  // namespace

absl::StatusOr<tlserve::v1::Model> KServeServiceImpl::FindModel(
    const std::string& name, const std::string& version,
    absl::string_view tenant) {
  if (name.empty()) return absl::InvalidArgumentError("name: a model id is required");
  RETURN_IF_ERROR(kserve::CheckVersion(name, version));
  return store_->GetModel(name, tenant);
}

grpc::ServerUnaryReactor* KServeServiceImpl::ServerLive(
    grpc::CallbackServerContext* context, const inference::ServerLiveRequest*,
    inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeServiceImpl::ServerReady(
    grpc::CallbackServerContext* context, const inference::ServerReadyRequest*,
    inference::ServerReadyResponse* response) {
  // Ready to infer: some worker is connected to run the models.
  response->set_ready(router_->ConnectedWorkers() > 0);
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelReady(
    grpc::CallbackServerContext* context,
    const inference::ModelReadyRequest* request,
    inference::ModelReadyResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "ModelReady");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  absl::StatusOr<tlserve::v1::Model> model =
      FindModel(request->name(), request->version(), caller->tenant);
  if (!model.ok() && !absl::IsNotFound(model.status())) {
    return Done(context, model.status());
  }
  response->set_ready(model.ok() && !model->serving().undeployed() &&
                      router_->ConnectedWorkers() > 0);
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeServiceImpl::ServerMetadata(
    grpc::CallbackServerContext* context, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "ServerMetadata");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  response->set_name("tlserve");
  response->set_version(TLSERVE_VERSION);
  response->add_extensions("model_configuration");
  response->add_extensions("statistics");
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelMetadata(
    grpc::CallbackServerContext* context,
    const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "ModelMetadata");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  absl::StatusOr<tlserve::v1::Model> model =
      FindModel(request->name(), request->version(), caller->tenant);
  if (model.ok()) *response = kserve::Metadata(*model);
  return Done(context, model.status());
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelConfig(
    grpc::CallbackServerContext* context,
    const inference::ModelConfigRequest* request,
    inference::ModelConfigResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "ModelConfig");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  absl::StatusOr<tlserve::v1::Model> model =
      FindModel(request->name(), request->version(), caller->tenant);
  if (model.ok()) {
    *response->mutable_config() = kserve::Config(*model, router_->options());
  }
  return Done(context, model.status());
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelStatistics(
    grpc::CallbackServerContext* context,
    const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "ModelStatistics");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  if (!request->name().empty()) {
    absl::StatusOr<tlserve::v1::Model> model =
        FindModel(request->name(), request->version(), caller->tenant);
    if (!model.ok()) return Done(context, model.status());
  }
  std::vector<InferenceRouter::ModelStats> stats =
      router_->Stats(request->name(), caller->tenant);
  if (stats.empty() && !request->name().empty()) {
    stats.emplace_back();  // a stored model not called yet: all zeros
    stats.back().model_id = request->name();
  }
  for (const InferenceRouter::ModelStats& s : stats) {
    *response->add_model_stats() = kserve::Statistics(s);
  }
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeServiceImpl::ModelInfer(
    grpc::CallbackServerContext* context,
    const inference::ModelInferRequest* request,
    inference::ModelInferResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "ModelInfer");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  if (request->model_name().empty()) {
    return Done(context,
                absl::InvalidArgumentError("model_name: a model id is required"));
  }
  absl::Status version =
      kserve::CheckVersion(request->model_name(), request->model_version());
  if (!version.ok()) return Done(context, version);
  absl::StatusOr<tlserve::v1::InferenceItem> item =
      kserve::ItemFromInferRequest(*request);
  if (!item.ok()) return Done(context, item.status());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  router_->Infer(
      request->model_name(), *std::move(item), CallDeadline(context),
      [reactor, request, response](absl::StatusOr<tlserve::v1::InferenceResult> r) {
        absl::Status status = r.status();
        if (r.ok()) {
          absl::StatusOr<inference::ModelInferResponse> out =
              kserve::InferResponse(*request, *r);
          if (out.ok()) {
            *response = *std::move(out);
          } else {
            status = out.status();
          }
        }
        reactor->Finish(ToGrpcStatus(status));
      },
      caller->tenant);
  return reactor;
}

}  // namespace tlserve
