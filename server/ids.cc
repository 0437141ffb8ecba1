#include "server/ids.h"

#include "absl/random/random.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

namespace tlserve {

std::string NewId(std::string_view prefix) {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  uint64_t bits;
  {
    absl::MutexLock lock(&mu);
    bits = absl::Uniform<uint64_t>(*gen);
  }
  return absl::StrFormat("%s-%016x", prefix, bits);
}

absl::Status ValidateRequestId(std::string_view id, std::string_view field) {
  if (id.size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s has %d bytes; the most is %d", field, id.size(),
                        kMaxRequestIdBytes));
  }
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s must be printable ASCII without spaces (a UUID, say)", field));
    }
  }
  return absl::OkStatus();
}

}  // namespace tlserve
