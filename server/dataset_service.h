#ifndef TLSERVE_SERVER_DATASET_SERVICE_H_
#define TLSERVE_SERVER_DATASET_SERVICE_H_

#include "server/auth.h"
#include "server/blob_store.h"
#include "server/store.h"
#include "server/uploads.h"
#include "server/work_pool.h"
#include "tlserve/v1/dataset.grpc.pb.h"

namespace tlserve {

// tlserve.v1.DatasetService over DatasetUpload and the Store.
class DatasetServiceImpl final : public tlserve::v1::DatasetService::CallbackService {
 public:
  DatasetServiceImpl(Store* store, BlobStore* blobs, WorkPool* pool,
                     UploadLimits limits, const Authenticator* auth,
                     const Quotas* quotas)
      : store_(store), blobs_(blobs), pool_(pool), limits_(limits),
        auth_(auth), quotas_(quotas) {}

  grpc::ServerReadReactor<tlserve::v1::UploadDatasetRequest>* UploadDataset(
      grpc::CallbackServerContext* context,
      tlserve::v1::Dataset* response) override;
  grpc::ServerUnaryReactor* GetDataset(grpc::CallbackServerContext* context,
                                       const tlserve::v1::GetDatasetRequest* request,
                                       tlserve::v1::Dataset* response) override;
  grpc::ServerUnaryReactor* ListDatasets(
      grpc::CallbackServerContext* context,
      const tlserve::v1::ListDatasetsRequest* request,
      tlserve::v1::ListDatasetsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteDataset(
      grpc::CallbackServerContext* context,
      const tlserve::v1::DeleteDatasetRequest* request,
      google::protobuf::Empty* response) override;

 private:
  Store* store_;
  BlobStore* blobs_;
  WorkPool* pool_;
  UploadLimits limits_;
  const Authenticator* auth_;
  const Quotas* quotas_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_DATASET_SERVICE_H_
