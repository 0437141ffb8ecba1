#ifndef TLSERVE_COMMON_GRPC_STATUS_H_
#define TLSERVE_COMMON_GRPC_STATUS_H_

// The one place where absl::Status and grpc::Status convert.

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace tlserve {

// Messages longer than 1 KiB are cut, so a status never floods a client.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_GRPC_STATUS_H_
