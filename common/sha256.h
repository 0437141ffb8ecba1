#ifndef TLSERVE_COMMON_SHA256_H_
#define TLSERVE_COMMON_SHA256_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tlserve {

// Incremental SHA-256 (OpenSSL underneath). Not thread-safe.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  void Update(std::string_view data);
  // 64 lowercase hex digits. The hasher must not be used afterwards.
  std::string FinalHex();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

std::string Sha256Hex(std::string_view data);
absl::StatusOr<std::string> Sha256OfFile(const std::string& path);
// True for 64 lowercase hex digits.
bool IsSha256Hex(std::string_view s);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_SHA256_H_
