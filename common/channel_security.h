#ifndef TLSERVE_COMMON_CHANNEL_SECURITY_H_
#define TLSERVE_COMMON_CHANNEL_SECURITY_H_

// The client side of tlserve's transport security, shared by the client
// library and the workers: TLS when a CA file is given, and a bearer token
// on every call of a channel.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/client_interceptor.h"

namespace tlserve {

// TLS credentials trusting the PEM CA in `tls_ca_file`; plaintext when it
// is empty.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientChannelCredentials(
    const std::string& tls_ca_file);

// Interceptors that add "authorization: Bearer <token>" to every call of
// a channel (none for an empty token). gRPC's own call credentials would
// refuse a plaintext channel, which development and tests use.
std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
BearerTokenInterceptors(const std::string& token);

// A token kept in a file (a mounted Secret): its content without
// surrounding whitespace; INVALID_ARGUMENT when empty.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_CHANNEL_SECURITY_H_
