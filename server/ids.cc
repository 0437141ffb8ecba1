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

}  // namespace tlserve
