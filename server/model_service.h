#ifndef TLSERVE_SERVER_MODEL_SERVICE_H_
#define TLSERVE_SERVER_MODEL_SERVICE_H_

#include "server/auth.h"
#include "server/blob_store.h"
#include "server/inference_router.h"
#include "server/store.h"
#include "server/uploads.h"
#include "server/work_pool.h"
#include "tlserve/v1/model.grpc.pb.h"

namespace tlserve {

// tlserve.v1.ModelService: backbones in, trained models out.
class ModelServiceImpl final : public tlserve::v1::ModelService::CallbackService {
 public:
  ModelServiceImpl(Store* store, BlobStore* blobs, WorkPool* pool,
                   UploadLimits limits, InferenceRouter* router,
                   const Authenticator* auth)
      : store_(store),
        blobs_(blobs),
        pool_(pool),
        limits_(limits),
        router_(router),
        auth_(auth) {}

  grpc::ServerReadReactor<tlserve::v1::UploadBackboneRequest>* UploadBackbone(
      grpc::CallbackServerContext* context,
      tlserve::v1::Backbone* response) override;
  grpc::ServerUnaryReactor* GetBackbone(
      grpc::CallbackServerContext* context,
      const tlserve::v1::GetBackboneRequest* request,
      tlserve::v1::Backbone* response) override;
  grpc::ServerUnaryReactor* ListBackbones(
      grpc::CallbackServerContext* context,
      const tlserve::v1::ListBackbonesRequest* request,
      tlserve::v1::ListBackbonesResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const tlserve::v1::GetModelRequest* request,
                                     tlserve::v1::Model* response) override;
  grpc::ServerUnaryReactor* ListModels(
      grpc::CallbackServerContext* context,
      const tlserve::v1::ListModelsRequest* request,
      tlserve::v1::ListModelsResponse* response) override;
  grpc::ServerWriteReactor<tlserve::v1::ExportModelChunk>* ExportModel(
      grpc::CallbackServerContext* context,
      const tlserve::v1::ExportModelRequest* request) override;
  grpc::ServerUnaryReactor* DeployModel(
      grpc::CallbackServerContext* context,
      const tlserve::v1::DeployModelRequest* request,
      tlserve::v1::Model* response) override;
  grpc::ServerUnaryReactor* UndeployModel(
      grpc::CallbackServerContext* context,
      const tlserve::v1::UndeployModelRequest* request,
      tlserve::v1::Model* response) override;

  grpc::ServerUnaryReactor* DeleteModel(
      grpc::CallbackServerContext* context,
      const tlserve::v1::DeleteModelRequest* request,
      google::protobuf::Empty* response) override;

 private:
  Store* store_;
  BlobStore* blobs_;
  WorkPool* pool_;
  UploadLimits limits_;
  InferenceRouter* router_;
  const Authenticator* auth_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_MODEL_SERVICE_H_
