// TLS and bearer tokens through real processes on loopback: a certificate
// from scripts/make-test-ca.sh, tokens from scripts/make-token.sh. Only
// callers with a known token get in, only admins upload backbones and
// connect workers, and a job runs end to end over TLS.

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"
#include "tests/integration/fixtures.h"

namespace tlserve::testing {
namespace {

#define ASSERT_OK(expr)                          \
  do {                                           \
    auto _s = (expr);                            \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s; \
  } while (0)

bool HaveFashionMnist() {
  return access((std::string(kFashionMnistDir) + "/train-labels-idx1-ubyte.gz")
                    .c_str(),
                R_OK) == 0;
}

// Runs a command through the shell; its exit status.
int Shell(const std::string& command) { return std::system(command.c_str()); }

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveFashionMnist() || access("/usr/bin/openssl", X_OK) != 0) {
      GTEST_SKIP() << "needs dataset-fashion-mnist and openssl";
    }
    dir_ = cluster_.dir() + "/pki";
    const std::string scripts = SourceDir() + "/scripts";
    ASSERT_EQ(Shell(absl::StrCat(scripts, "/make-test-ca.sh '", dir_, "' >/dev/null")), 0);
    ASSERT_EQ(Shell(absl::StrCat(scripts, "/make-token.sh ops admin '", dir_,
                               "/admin.token' > '", dir_, "/tokens' 2>/dev/null")),
              0);
    ASSERT_EQ(Shell(absl::StrCat(scripts, "/make-token.sh team-a user '", dir_,
                               "/user.token' >> '", dir_, "/tokens' 2>/dev/null")),
              0);
    admin_token_ = Token("admin");
    user_token_ = Token("user");
    Client::Options admin;
    admin.token = admin_token_;
    admin.tls_ca_file = dir_ + "/ca.pem";
    cluster_.set_client_options(admin);
    ASSERT_OK(cluster_.StartServer(
        {absl::StrCat("--auth_tokens_file=", dir_, "/tokens"),
         absl::StrCat("--tls_cert_file=", dir_, "/server.pem"),
         absl::StrCat("--tls_key_file=", dir_, "/server.key")}));
  }

  std::string Token(const std::string& name) {
    auto text = ReadFile(absl::StrCat(dir_, "/", name, ".token"));
    EXPECT_TRUE(text.ok()) << text.status();
    std::string token = text.ok() ? *text : "";
    while (!token.empty() && token.back() == '\n') token.pop_back();
    return token;
  }

  std::unique_ptr<Client> Connect(const std::string& token, bool tls) {
    Client::Options options;
    options.target = cluster_.address();
    options.token = token;
    options.timeout = absl::Seconds(10);
    if (tls) options.tls_ca_file = dir_ + "/ca.pem";
    auto client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  Cluster cluster_;
  std::string dir_;
  std::string admin_token_;
  std::string user_token_;
};

TEST_F(AuthTest, OnlyKnownTokensGetInAndOnlyAdminsUploadBackbonesAndConnectWorkers) {
  // Plaintext against a TLS server never gets as far as a status from it.
  auto plaintext = Connect(user_token_, /*tls=*/false);
  EXPECT_EQ(plaintext->ListDatasets().status().code(),
            absl::StatusCode::kUnavailable);
  // The health check is open (kubelet probes carry no token); nothing else.
  auto anonymous = Connect("", /*tls=*/true);
  EXPECT_TRUE(anonymous->CheckHealth().ok());
  absl::Status refused = anonymous->ListDatasets().status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnauthenticated) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "authorization: Bearer"));
  auto forged = Connect(user_token_ + "x", /*tls=*/true);
  EXPECT_EQ(forged->ListJobs(v1::JOB_STATE_UNSPECIFIED, 10, "").status().code(),
            absl::StatusCode::kUnauthenticated);

  // A user uploads data and trains; a backbone needs the admin.
  auto user = Connect(user_token_, /*tls=*/true);
  const std::string data_dir = cluster_.dir() + "/data";
  ASSERT_OK(MakeDirs(data_dir));
  auto parts = WriteFashionMnistSubset(data_dir, {0, 1}, 30, 10);
  ASSERT_OK(parts.status());
  auto dataset = user->UploadDatasetFiles("fmnist", v1::IDX, *parts,
                                          FashionMnistClassNames(), "");
  ASSERT_OK(dataset.status());
  auto exported = ExportResNet18(cluster_.dir(), 32);
  ASSERT_OK(exported.status());
  v1::InputSpec input;
  input.set_channels(3);
  input.set_height(32);
  input.set_width(32);
  for (int c = 0; c < 3; ++c) {
    input.add_mean(0.5f);
    input.add_std(0.25f);
  }
  absl::Status denied =
      user->UploadBackbone("resnet18", *exported, input, "").status();
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied) << denied;
  EXPECT_TRUE(absl::StrContains(denied.message(),
                                "uploading a backbone needs an admin token"));
  auto backbone =
      cluster_.client().UploadBackbone("resnet18", *exported, input, "");
  ASSERT_OK(backbone.status());

  v1::JobSpec spec;
  spec.set_kind(v1::FINE_TUNE);
  spec.mutable_data()->set_dataset_id(dataset->id());
  spec.mutable_data()->add_class_subset(0);
  spec.mutable_data()->add_class_subset(1);
  spec.set_backbone_id(backbone->id());
  spec.set_epochs(1);
  spec.set_batch_size(16);
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::FROZEN);
  auto job = user->CreateJob(spec, "");
  ASSERT_OK(job.status());

  // A worker with a user token is turned away; with the admin token, over
  // TLS, it runs the job.
  ASSERT_OK(cluster_.StartWorker(
      "intruder", 1,
      {absl::StrCat("--tls_ca_file=", dir_, "/ca.pem"),
       absl::StrCat("--token_file=", dir_, "/user.token")}));
  absl::SleepFor(absl::Seconds(2));
  auto still_queued = user->GetJob(job->id());
  ASSERT_OK(still_queued.status());
  EXPECT_EQ(still_queued->state(), v1::QUEUED);
  EXPECT_TRUE(absl::StrContains(cluster_.ServerLog(),
                                "connecting a worker needs an admin token"));
  cluster_.KillWorker("intruder", SIGKILL);

  ASSERT_OK(cluster_.StartWorker(
      "w1", 1,
      {absl::StrCat("--tls_ca_file=", dir_, "/ca.pem"),
       absl::StrCat("--token_file=", dir_, "/admin.token")}));
  auto done = user->WaitForJob(job->id(), absl::Minutes(3));
  ASSERT_OK(done.status());
  ASSERT_EQ(done->state(), v1::SUCCEEDED) << done->error();
  EXPECT_EQ(done->worker_id(), "w1");

  v1::PredictRequest predict;
  predict.set_model_id(done->result().model_id());
  predict.add_images(TinyPng(3));
  auto predicted = user->Predict(predict, absl::Seconds(30));
  ASSERT_OK(predicted.status());
  EXPECT_EQ(predicted->predictions_size(), 1);
  EXPECT_EQ(anonymous->Predict(predict, absl::Seconds(30)).status().code(),
            absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace tlserve::testing
