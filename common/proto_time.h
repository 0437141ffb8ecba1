#ifndef TLSERVE_COMMON_PROTO_TIME_H_
#define TLSERVE_COMMON_PROTO_TIME_H_

#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"

namespace tlserve {

google::protobuf::Timestamp ToProtoTime(absl::Time t);
// An unset Timestamp (0, 0) is the Unix epoch.
absl::Time FromProtoTime(const google::protobuf::Timestamp& t);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_PROTO_TIME_H_
