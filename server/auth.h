#ifndef TLSERVE_SERVER_AUTH_H_
#define TLSERVE_SERVER_AUTH_H_

// Who is calling: bearer tokens mapped to tenants and roles. Every RPC but
// the health check asks the Authenticator first, naming the role it needs.
//
// The tokens file (--auth_tokens_file, mounted from a Secret) has one
// token per line, as its sha256 so that the file does not hold the token:
//
//   # tenant   role    sha256 of the token (scripts/make-token.sh)
//   team-a     user    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//   ops        admin   60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
//
// Roles: `user` trains and serves (datasets, jobs, models, inference);
// `admin` can do that too and also uploads backbones and connects workers.
// Without a tokens file authentication is off: every call is tenant
// "default" with the admin role (development and tests only; the server
// logs a warning).

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/server_context.h"

namespace tlserve {

enum class Role { kUser = 0, kAdmin = 1 };

struct Caller {
  std::string tenant;
  Role role = Role::kUser;
};

class Authenticator {
 public:
  // Authentication off.
  Authenticator() = default;
  // Parses a tokens file; an error names the line.
  static absl::StatusOr<std::unique_ptr<Authenticator>> FromFile(
      const std::string& path);
  static absl::StatusOr<std::unique_ptr<Authenticator>> FromText(
      absl::string_view text, absl::string_view source);

  bool enabled() const { return enabled_; }
  size_t token_count() const { return by_hash_.size(); }

  // The caller of a call whose `authorization` metadata is
  // "Bearer <token>": UNAUTHENTICATED without a known token,
  // PERMISSION_DENIED when its role is below `needed` (`what` says what
  // was refused, e.g. "uploading a backbone").
  absl::StatusOr<Caller> Check(const grpc::ServerContextBase& context,
                               Role needed, absl::string_view what) const;
  absl::StatusOr<Caller> CheckToken(absl::string_view authorization,
                                    Role needed, absl::string_view what) const;

 private:
  bool enabled_ = false;
  std::map<std::string, Caller> by_hash_;  // hex sha256 of the token
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_AUTH_H_
