#ifndef TLSERVE_SERVER_JOB_SERVICE_H_
#define TLSERVE_SERVER_JOB_SERVICE_H_

#include "server/auth.h"
#include "server/event_hub.h"
#include "server/job_manager.h"
#include "server/store.h"
#include "server/work_pool.h"
#include "tlserve/v1/job.grpc.pb.h"

namespace tlserve {

// tlserve.v1.JobService over the JobManager; WatchJob streams the store's
// events, woken by the EventHub.
class JobServiceImpl final : public tlserve::v1::JobService::CallbackService {
 public:
  JobServiceImpl(JobManager* jobs, Store* store, EventHub* events, WorkPool* pool,
                 const Authenticator* auth)
      : jobs_(jobs), store_(store), events_(events), pool_(pool), auth_(auth) {}

  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* context,
                                      const tlserve::v1::CreateJobRequest* request,
                                      tlserve::v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const tlserve::v1::GetJobRequest* request,
                                   tlserve::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const tlserve::v1::ListJobsRequest* request,
                                     tlserve::v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const tlserve::v1::CancelJobRequest* request,
                                      tlserve::v1::Job* response) override;
  grpc::ServerWriteReactor<tlserve::v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* context,
      const tlserve::v1::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* DeleteJob(
      grpc::CallbackServerContext* context,
      const tlserve::v1::DeleteJobRequest* request,
      google::protobuf::Empty* response) override;
  grpc::ServerUnaryReactor* ListCheckpoints(
      grpc::CallbackServerContext* context,
      const tlserve::v1::ListCheckpointsRequest* request,
      tlserve::v1::ListCheckpointsResponse* response) override;

 private:
  JobManager* jobs_;
  Store* store_;
  EventHub* events_;
  WorkPool* pool_;  const Authenticator* auth_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_JOB_SERVICE_H_
