#include "server/inference_service.h"

#include <chrono>

#include "common/grpc_status.h"
#include "server/reactors.h"

namespace tlserve {
namespace {

// The caller's deadline; a call without one carries the far future, which
// stays infinite here (the router then applies its default).
absl::Time CallDeadline(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline < std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
    return absl::FromChrono(deadline);
  }
  return absl::InfiniteFuture();
}

}  // namespace

grpc::ServerUnaryReactor* InferenceServiceImpl::Predict(
    grpc::CallbackServerContext* context,
    const tlserve::v1::PredictRequest* request,
    tlserve::v1::PredictResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "Predict");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  router_->Predict(*request, CallDeadline(context),
                   [reactor, response](absl::StatusOr<tlserve::v1::PredictResponse> r) {
                     if (r.ok()) *response = *std::move(r);
                     reactor->Finish(ToGrpcStatus(r.status()));
                   },
                   caller->tenant);
  return reactor;
}

grpc::ServerUnaryReactor* InferenceServiceImpl::Embed(
    grpc::CallbackServerContext* context,
    const tlserve::v1::EmbedRequest* request,
    tlserve::v1::EmbedResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "Embed");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  router_->Embed(*request, CallDeadline(context),
                 [reactor, response](absl::StatusOr<tlserve::v1::EmbedResponse> r) {
                   if (r.ok()) *response = *std::move(r);
                   reactor->Finish(ToGrpcStatus(r.status()));
                 },
                 caller->tenant);
  return reactor;
}

}  // namespace tlserve
