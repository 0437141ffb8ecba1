#include "server/inference_service.h"

#include "common/grpc_status.h"

namespace tlserve {

grpc::ServerUnaryReactor* InferenceServiceImpl::Predict(
    grpc::CallbackServerContext* context,
    const tlserve::v1::PredictRequest* request,
    tlserve::v1::PredictResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Time deadline = absl::InfiniteFuture();
  // A call without a deadline carries the far future; keep it infinite.
  const auto chrono_deadline = context->deadline();
  if (chrono_deadline < std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
    deadline = absl::FromChrono(chrono_deadline);
  }
  router_->Predict(*request, deadline,
                   [reactor, response](absl::StatusOr<tlserve::v1::PredictResponse> r) {
                     if (r.ok()) *response = *std::move(r);
                     reactor->Finish(ToGrpcStatus(r.status()));
                   });
  return reactor;
}

}  // namespace tlserve
