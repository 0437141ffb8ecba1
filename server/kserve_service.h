#ifndef TLSERVE_SERVER_KSERVE_SERVICE_H_
#define TLSERVE_SERVER_KSERVE_SERVICE_H_

#include "inference/grpc_service.grpc.pb.h"
#include "server/auth.h"
#include "server/inference_router.h"
#include "server/store.h"

namespace tlserve {

// inference.GRPCInferenceService (KServe v2 / Open Inference Protocol, plus
// Triton's ModelConfig and ModelStatistics) over the same models and the
// same batcher as tlserve.v1.InferenceService. Translation lives in
// kserve_api.h; this class only wires calls.
class KServeServiceImpl final
    : public inference::GRPCInferenceService::CallbackService {
 public:
  KServeServiceImpl(Store* store, InferenceRouter* router,
                    const Authenticator* auth)
      : store_(store), router_(router), auth_(auth) {}

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context,
                                       const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(
      grpc::CallbackServerContext* context,
      const inference::ServerMetadataRequest* request,
      inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(
      grpc::CallbackServerContext* context,
      const inference::ModelMetadataRequest* request,
      inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context,
                                       const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* context,
                                        const inference::ModelConfigRequest* request,
                                        inference::ModelConfigResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(
      grpc::CallbackServerContext* context,
      const inference::ModelStatisticsRequest* request,
      inference::ModelStatisticsResponse* response) override;

 private:
  // The stored model `name` at `version` ("" or "1").
  absl::StatusOr<tlserve::v1::Model> FindModel(const std::string& name,
                                               const std::string& version,
                                               absl::string_view tenant);

  Store* store_;
  InferenceRouter* router_;  const Authenticator* auth_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_KSERVE_SERVICE_H_
