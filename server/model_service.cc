#include "server/model_service.h"

#include "common/status_macros.h"
#include "server/reactors.h"

namespace tlserve {

using tlserve::v1::Backbone;
using tlserve::v1::ExportModelChunk;
using tlserve::v1::Model;

grpc::ServerReadReactor<tlserve::v1::UploadBackboneRequest>*
ModelServiceImpl::UploadBackbone(grpc::CallbackServerContext* context,
                                 Backbone* response) {
  auto caller = auth_->Check(*context, Role::kAdmin, "uploading a backbone");
  if (!caller.ok()) {
    return new FinishedReactor<
        grpc::ServerReadReactor<tlserve::v1::UploadBackboneRequest>>(
        caller.status());
  }
  auto upload = std::make_shared<BackboneUpload>(store_, blobs_, limits_);
  return new UploadReactor<tlserve::v1::UploadBackboneRequest, Backbone>(
      response, pool_,
      [upload](const tlserve::v1::UploadBackboneRequest& r) {
        return upload->OnMessage(r);
      },
      [upload] { return upload->Finish(); });
}

grpc::ServerUnaryReactor* ModelServiceImpl::GetBackbone(
    grpc::CallbackServerContext* context,
    const tlserve::v1::GetBackboneRequest* request, Backbone* response) {
  auto caller = auth_->Check(*context, Role::kUser, "reading a backbone");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<Backbone>(
      context, pool_, response,
      [this, id = request->id(), tenant = caller->tenant] {
        return store_->GetBackbone(id, tenant);
      });
}

grpc::ServerUnaryReactor* ModelServiceImpl::ListBackbones(
    grpc::CallbackServerContext* context,
    const tlserve::v1::ListBackbonesRequest* request,
    tlserve::v1::ListBackbonesResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "listing backbones");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<tlserve::v1::ListBackbonesResponse>(
      context, pool_, response,
      [this, size = request->page_size(), token = request->page_token(),
       tenant = caller->tenant]()
          -> absl::StatusOr<tlserve::v1::ListBackbonesResponse> {
        ASSIGN_OR_RETURN(auto page, store_->ListBackbones(size, token, tenant));
        tlserve::v1::ListBackbonesResponse out;
        for (auto& b : page.items) *out.add_backbones() = std::move(b);
        out.set_next_page_token(page.next_page_token);
        return out;
      });
}

grpc::ServerUnaryReactor* ModelServiceImpl::GetModel(
    grpc::CallbackServerContext* context,
    const tlserve::v1::GetModelRequest* request, Model* response) {
  auto caller = auth_->Check(*context, Role::kUser, "reading a model");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<Model>(context, pool_, response,
                          [this, id = request->id(), tenant = caller->tenant] {
                            return store_->GetModel(id, tenant);
                          });
}

grpc::ServerUnaryReactor* ModelServiceImpl::DeployModel(
    grpc::CallbackServerContext* context,
    const tlserve::v1::DeployModelRequest* request, Model* response) {
  auto caller = auth_->Check(*context, Role::kUser, "deploying a model");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  // The stored model is rewritten (fsync): off the reactor thread.
  return RunOnPool<Model>(
      context, pool_, response,
      [this, id = request->id(), serving = request->serving(),
       tenant = caller->tenant] {
        return router_->Deploy(id, serving, tenant);
      });
}

grpc::ServerUnaryReactor* ModelServiceImpl::UndeployModel(
    grpc::CallbackServerContext* context,
    const tlserve::v1::UndeployModelRequest* request, Model* response) {
  auto caller = auth_->Check(*context, Role::kUser, "undeploying a model");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<Model>(context, pool_, response,
                          [this, id = request->id(), tenant = caller->tenant] {
                            return router_->Undeploy(id, tenant);
                          });
}

grpc::ServerUnaryReactor* ModelServiceImpl::ListModels(
    grpc::CallbackServerContext* context,
    const tlserve::v1::ListModelsRequest* request,
    tlserve::v1::ListModelsResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "listing models");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<tlserve::v1::ListModelsResponse>(
      context, pool_, response,
      [this, size = request->page_size(), token = request->page_token(),
       tenant = caller->tenant]()
          -> absl::StatusOr<tlserve::v1::ListModelsResponse> {
        ASSIGN_OR_RETURN(auto page, store_->ListModels(size, token, tenant));
        tlserve::v1::ListModelsResponse out;
        for (auto& m : page.items) *out.add_models() = std::move(m);
        out.set_next_page_token(page.next_page_token);
        return out;
      });
}

namespace {
// Finishes at once with an error (for streams refused before they start).
template <typename Message>
class ErrorWriteReactor : public grpc::ServerWriteReactor<Message> {
 public:
  explicit ErrorWriteReactor(const absl::Status& status) {
    this->Finish(ToGrpcStatus(status));
  }
  void OnDone() override { delete this; }
};
}  // namespace

grpc::ServerWriteReactor<ExportModelChunk>* ModelServiceImpl::ExportModel(
    grpc::CallbackServerContext* context,
    const tlserve::v1::ExportModelRequest* request) {
  auto caller = auth_->Check(*context, Role::kUser, "exporting a model");
  if (!caller.ok()) {
    return new FinishedReactor<grpc::ServerWriteReactor<ExportModelChunk>>(
        caller.status());
  }
  auto model = store_->GetModel(request->id(), caller->tenant);
  if (!model.ok()) return new ErrorWriteReactor<ExportModelChunk>(model.status());
  auto path = blobs_->PathOf(model->sha256());
  if (!path.ok()) return new ErrorWriteReactor<ExportModelChunk>(path.status());
  return new FileStreamReactor<ExportModelChunk>(
      *path, [size = model->size_bytes(), sha = model->sha256()](
                 ExportModelChunk* chunk, std::string data, bool first) {
        chunk->set_data(std::move(data));
        if (first) {
          chunk->set_total_bytes(size);
          chunk->set_sha256(sha);
        }
      });
}

grpc::ServerUnaryReactor* ModelServiceImpl::DeleteModel(
    grpc::CallbackServerContext* context,
    const tlserve::v1::DeleteModelRequest* request,
    google::protobuf::Empty* response) {
  auto caller = auth_->Check(*context, Role::kUser, "deleting a model");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<google::protobuf::Empty>(
      context, pool_, response,
      [this, id = request->id(),
       tenant = caller->tenant]() -> absl::StatusOr<google::protobuf::Empty> {
        RETURN_IF_ERROR(store_->DeleteModel(id, tenant));
        return google::protobuf::Empty();
      });
}

}  // namespace tlserve
