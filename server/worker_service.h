#ifndef TLSERVE_SERVER_WORKER_SERVICE_H_
#define TLSERVE_SERVER_WORKER_SERVICE_H_

#include "server/auth.h"
#include "server/blob_store.h"
#include "server/scheduler.h"
#include "server/work_pool.h"
#include "tlserve/v1/worker.grpc.pb.h"

namespace tlserve {

// tlserve.v1.WorkerService: the Connect stream of each worker, bridged to
// the Scheduler as a WorkerChannel, and blob transfer both ways.
class WorkerServiceImpl final : public tlserve::v1::WorkerService::CallbackService {
 public:
  WorkerServiceImpl(Scheduler* scheduler, BlobStore* blobs, WorkPool* pool,
                    int64_t max_blob_bytes, const Authenticator* auth)
      : scheduler_(scheduler), blobs_(blobs), pool_(pool),
        max_blob_bytes_(max_blob_bytes), auth_(auth) {}

  grpc::ServerBidiReactor<tlserve::v1::WorkerMessage, tlserve::v1::ServerMessage>*
  Connect(grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<tlserve::v1::BlobChunk>* FetchBlob(
      grpc::CallbackServerContext* context,
      const tlserve::v1::FetchBlobRequest* request) override;
  grpc::ServerReadReactor<tlserve::v1::BlobChunk>* PutBlob(
      grpc::CallbackServerContext* context,
      tlserve::v1::PutBlobResponse* response) override;

 private:
  Scheduler* scheduler_;
  BlobStore* blobs_;
  WorkPool* pool_;
  int64_t max_blob_bytes_;  const Authenticator* auth_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_WORKER_SERVICE_H_
