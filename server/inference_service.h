#ifndef TLSERVE_SERVER_INFERENCE_SERVICE_H_
#define TLSERVE_SERVER_INFERENCE_SERVICE_H_

#include "server/auth.h"
#include "server/inference_router.h"
#include "tlserve/v1/inference.grpc.pb.h"

namespace tlserve {

// tlserve.v1.InferenceService: hands calls to the router (the batcher)
// with the caller's deadline.
class InferenceServiceImpl final
    : public tlserve::v1::InferenceService::CallbackService {
 public:
  InferenceServiceImpl(InferenceRouter* router, const Authenticator* auth)
      : router_(router), auth_(auth) {}

  grpc::ServerUnaryReactor* Predict(grpc::CallbackServerContext* context,
                                    const tlserve::v1::PredictRequest* request,
                                    tlserve::v1::PredictResponse* response) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* context,
                                  const tlserve::v1::EmbedRequest* request,
                                  tlserve::v1::EmbedResponse* response) override;

 private:
  InferenceRouter* router_;  const Authenticator* auth_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_INFERENCE_SERVICE_H_
