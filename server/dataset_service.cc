#include "server/dataset_service.h"

#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "server/reactors.h"

namespace tlserve {

using tlserve::v1::Dataset;

grpc::ServerReadReactor<tlserve::v1::UploadDatasetRequest>*
DatasetServiceImpl::UploadDataset(grpc::CallbackServerContext* context,
                                  Dataset* response) {
  auto caller = auth_->Check(*context, Role::kUser, "uploading a dataset");
  if (!caller.ok()) {
    return new FinishedReactor<
        grpc::ServerReadReactor<tlserve::v1::UploadDatasetRequest>>(
        caller.status());
  }
  auto upload = std::make_shared<DatasetUpload>(store_, blobs_, limits_,
                                                caller->tenant, quotas_);
  return new UploadReactor<tlserve::v1::UploadDatasetRequest, Dataset>(
      response, pool_,
      [upload](const tlserve::v1::UploadDatasetRequest& r) {
        return upload->OnMessage(r);
      },
      [upload] { return upload->Finish(); });
}

grpc::ServerUnaryReactor* DatasetServiceImpl::GetDataset(
    grpc::CallbackServerContext* context,
    const tlserve::v1::GetDatasetRequest* request, Dataset* response) {
  auto caller = auth_->Check(*context, Role::kUser, "reading a dataset");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<Dataset>(
      context, pool_, response,
      [this, id = request->id(), tenant = caller->tenant] {
        return store_->GetDataset(id, tenant);
      });
}

grpc::ServerUnaryReactor* DatasetServiceImpl::ListDatasets(
    grpc::CallbackServerContext* context,
    const tlserve::v1::ListDatasetsRequest* request,
    tlserve::v1::ListDatasetsResponse* response) {
  auto caller = auth_->Check(*context, Role::kUser, "listing datasets");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<tlserve::v1::ListDatasetsResponse>(
      context, pool_, response,
      [this, size = request->page_size(), token = request->page_token(),
       tenant = caller->tenant]()
          -> absl::StatusOr<tlserve::v1::ListDatasetsResponse> {
        ASSIGN_OR_RETURN(auto page, store_->ListDatasets(size, token, tenant));
        tlserve::v1::ListDatasetsResponse out;
        for (auto& d : page.items) *out.add_datasets() = std::move(d);
        out.set_next_page_token(page.next_page_token);
        return out;
      });
}

grpc::ServerUnaryReactor* DatasetServiceImpl::DeleteDataset(
    grpc::CallbackServerContext* context,
    const tlserve::v1::DeleteDatasetRequest* request,
    google::protobuf::Empty* response) {
  auto caller = auth_->Check(*context, Role::kUser, "deleting a dataset");
  if (!caller.ok()) {
    return Refuse(context, caller.status());
  }
  return RunOnPool<google::protobuf::Empty>(
      context, pool_, response,
      [this, id = request->id(),
       tenant = caller->tenant]() -> absl::StatusOr<google::protobuf::Empty> {
        RETURN_IF_ERROR(store_->GetDataset(id, tenant).status());
        // A job that has not finished still needs the data.
        for (auto state : {tlserve::v1::QUEUED, tlserve::v1::RUNNING}) {
          ASSIGN_OR_RETURN(auto jobs, store_->JobsInState(state));
          for (const auto& job : jobs) {
            if (job.spec().data().dataset_id() == id ||
                job.spec().domain_adapt().target_dataset_id() == id) {
              return absl::FailedPreconditionError(absl::StrFormat(
                  "dataset '%s' is used by %s job '%s'; cancel it or wait", id,
                  tlserve::v1::JobState_Name(state), job.id()));
            }
          }
        }
        RETURN_IF_ERROR(store_->DeleteDataset(id, tenant));
        return google::protobuf::Empty();
      });
}

}  // namespace tlserve
