#ifndef TLSERVE_SERVER_IDS_H_
#define TLSERVE_SERVER_IDS_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace tlserve {

// A new resource id: prefix, '-', 16 random hex digits ("job-3f9c...").
// Thread-safe.
std::string NewId(std::string_view prefix);

// A client's idempotency key (request_id fields): empty, or 1 to 128
// printable ASCII characters. It is stored with what it created, so it is
// bounded like any other stored string. INVALID_ARGUMENT names `field`.
inline constexpr size_t kMaxRequestIdBytes = 128;
absl::Status ValidateRequestId(std::string_view id, std::string_view field);

}  // namespace tlserve

#endif  // TLSERVE_SERVER_IDS_H_
