// tlserve --health_listen through a real process: the main port serves TLS
// and wants tokens (scripts/make-test-ca.sh, scripts/make-token.sh), while a
// second loopback port answers grpc.health.v1.Health in plaintext, as
// Kubernetes' gRPC probes need, and nothing else.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/channel_security.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"
#include "tlserve/v1/dataset.grpc.pb.h"

namespace tlserve::testing {
namespace {

using grpc::health::v1::HealthCheckResponse;

int Shell(const std::string& command) { return std::system(command.c_str()); }

std::shared_ptr<grpc::Channel> Plaintext(int port) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                             grpc::InsecureChannelCredentials());
}

// Calls any method by name with an empty message, without credentials.
grpc::Status CallMethod(int port, const std::string& method) {
  grpc::GenericStub stub(Plaintext(port));
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
  return status;
}

TEST(HealthListenTest, PlaintextHealthPortBesideTlsAnswersOnlyHealth) {
  if (access("/usr/bin/openssl", X_OK) != 0) GTEST_SKIP() << "needs openssl";
  Cluster cluster;
  const std::string pki = cluster.dir() + "/pki";
  const std::string scripts = SourceDir() + "/scripts";
  ASSERT_EQ(Shell(absl::StrCat(scripts, "/make-test-ca.sh '", pki, "' >/dev/null")), 0);
  ASSERT_EQ(Shell(absl::StrCat(scripts, "/make-token.sh ops admin '", pki,
                             "/admin.token' > '", pki, "/tokens' 2>/dev/null")),
            0);
  std::ifstream token_in(pki + "/admin.token");
  std::string token;
  ASSERT_TRUE(std::getline(token_in, token));
  Client::Options admin;
  admin.token = token;
  admin.tls_ca_file = pki + "/ca.pem";
  cluster.set_client_options(admin);
  const std::string health_port_file = cluster.dir() + "/health.port";
  auto started = cluster.StartServer(
      {absl::StrCat("--auth_tokens_file=", pki, "/tokens"),
       absl::StrCat("--tls_cert_file=", pki, "/server.pem"),
       absl::StrCat("--tls_key_file=", pki, "/server.key"),
       "--health_listen=127.0.0.1:0",
       absl::StrCat("--health_port_file=", health_port_file)});
  ASSERT_TRUE(started.ok()) << started;
  // Written before the main port file, which StartServer waited for.
  int health_port = 0;
  std::ifstream(health_port_file) >> health_port;
  ASSERT_GT(health_port, 0);
  const int main_port = std::stoi(cluster.address().substr(
      cluster.address().rfind(':') + 1));
  ASSERT_NE(health_port, main_port);

  // Plaintext, no token: the health port answers SERVING...
  auto health = grpc::health::v1::Health::NewStub(Plaintext(health_port));
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    grpc::health::v1::HealthCheckRequest request;
    HealthCheckResponse response;
    grpc::Status status = health->Check(&ctx, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  }
  // ...and nothing else: no tlserve service, no reflection.
  EXPECT_EQ(CallMethod(health_port, "/tlserve.v1.JobService/ListJobs").error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(CallMethod(health_port, "/tlserve.v1.WorkerService/Connect").error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(CallMethod(health_port,
                       "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
                .error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  // The main port stays TLS only: a plaintext caller never gets a status.
  EXPECT_EQ(CallMethod(main_port, "/grpc.health.v1.Health/Check").error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // Over TLS with the token it serves as before.
  auto jobs = cluster.client().ListJobs(v1::JOB_STATE_UNSPECIFIED, 10, "");
  EXPECT_TRUE(jobs.ok()) << jobs.status();

  // Told to stop, the server drains the main port (an upload held open
  // keeps it draining for its 5 s grace) while the health port, still up,
  // answers NOT_SERVING: probes see the drain rather than a closed port.
  grpc::ClientContext watch_ctx;
  watch_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  grpc::health::v1::HealthCheckRequest watch_request;
  auto watch = health->Watch(&watch_ctx, watch_request);
  HealthCheckResponse update;
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);
  auto tls = ClientChannelCredentials(pki + "/ca.pem");
  ASSERT_TRUE(tls.ok()) << tls.status();
  auto datasets = v1::DatasetService::NewStub(
      grpc::CreateChannel(cluster.address(), *tls));
  grpc::ClientContext upload_ctx;
  upload_ctx.AddMetadata("authorization", "Bearer " + token);
  upload_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::Dataset uploaded;
  auto upload = datasets->UploadDataset(&upload_ctx, &uploaded);
  // A valid header, then no chunks: the upload waits for them.
  v1::UploadDatasetRequest header;
  header.mutable_header()->set_name("held-open");
  header.mutable_header()->set_format(v1::IMAGE_FOLDER_TAR);
  v1::DatasetPart* part = header.mutable_header()->add_parts();
  part->set_role(v1::TRAIN_ARCHIVE);
  part->set_size_bytes(1024);
  ASSERT_TRUE(upload->Write(header));

  absl::StatusOr<int> exited = absl::UnknownError("not stopped");
  std::thread stopper(
      [&] { exited = cluster.SignalServerAndWait(SIGTERM, absl::Seconds(20)); });
  int status = HealthCheckResponse::SERVING;
  for (const absl::Time give_up = absl::Now() + absl::Seconds(4);
       status == HealthCheckResponse::SERVING && absl::Now() < give_up;) {
    absl::SleepFor(absl::Milliseconds(50));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    grpc::health::v1::HealthCheckRequest request;
    HealthCheckResponse response;
    if (health->Check(&ctx, request, &response).ok()) status = response.status();
  }
  EXPECT_EQ(status, HealthCheckResponse::NOT_SERVING);
  // Ending the upload (short of its bytes) lets the drain finish.
  upload->WritesDone();
  EXPECT_EQ(upload->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  stopper.join();
  ASSERT_TRUE(exited.ok()) << exited.status();
  EXPECT_TRUE(WIFEXITED(*exited) && WEXITSTATUS(*exited) == 0) << *exited;
  bool saw_not_serving = false;
  while (watch->Read(&update)) {
    if (update.status() == HealthCheckResponse::NOT_SERVING) saw_not_serving = true;
  }
  EXPECT_TRUE(saw_not_serving);
  (void)watch->Finish();
  // Gone with the server.
  EXPECT_EQ(CallMethod(health_port, "/grpc.health.v1.Health/Check").error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace tlserve::testing
