// The plaintext health-only listener in-process: it answers what it is told,
// and nothing but grpc.health.v1.Health, even with the reflection plugin
// registered as tlserve registers it for its main port.

#include "server/health_listener.h"

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using grpc::health::v1::HealthCheckResponse;

std::shared_ptr<grpc::Channel> Dial(int port) {
  return grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                             grpc::InsecureChannelCredentials());
}

// The status of Health/Check for the overall ("") service, or the RPC's
// error code as a negative number.
int CheckStatus(int port) {
  auto stub = grpc::health::v1::Health::NewStub(Dial(port));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  grpc::health::v1::HealthCheckRequest request;
  HealthCheckResponse response;
  grpc::Status status = stub->Check(&ctx, request, &response);
  if (!status.ok()) return -static_cast<int>(status.error_code());
  return response.status();
}

// Calls any method by name with an empty message: the listener's answer.
grpc::StatusCode CallMethod(int port, const std::string& method) {
  grpc::GenericStub stub(Dial(port));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  return status.error_code();
}

TEST(HealthListenerTest, AnswersWhatItIsToldAndStartsNotServing) {
  auto listener = HealthListener::Start("127.0.0.1:0");
  ASSERT_TRUE(listener.ok()) << listener.status();
  const int port = (*listener)->port();
  ASSERT_GT(port, 0);
  EXPECT_EQ(CheckStatus(port), HealthCheckResponse::NOT_SERVING);
  (*listener)->SetServing(true);
  EXPECT_EQ(CheckStatus(port), HealthCheckResponse::SERVING);
  (*listener)->SetServing(false);
  EXPECT_EQ(CheckStatus(port), HealthCheckResponse::NOT_SERVING);
  (*listener)->Shutdown(absl::Now() + absl::Seconds(1));
  EXPECT_EQ(CheckStatus(port), -static_cast<int>(grpc::StatusCode::UNAVAILABLE));
}

TEST(HealthListenerTest, ServesNoOtherServiceEvenWithTheReflectionPlugin) {
  // tlserve's main port registers this for every ServerBuilder after it.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  auto listener = HealthListener::Start("127.0.0.1:0");
  ASSERT_TRUE(listener.ok()) << listener.status();
  const int port = (*listener)->port();
  (*listener)->SetServing(true);
  EXPECT_EQ(CallMethod(port, "/grpc.health.v1.Health/Check"), grpc::StatusCode::OK);
  EXPECT_EQ(CallMethod(port,
                       "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(CallMethod(port, "/tlserve.v1.JobService/ListJobs"),
            grpc::StatusCode::UNIMPLEMENTED);
}

TEST(HealthListenerTest, RefusesAnAddressItCannotListenOn) {
  // 192.0.2.1 (TEST-NET-1) is on no local interface.
  auto refused = HealthListener::Start("192.0.2.1:0");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("--health_listen"), std::string::npos);
}

}  // namespace
}  // namespace tlserve
