// Tenants through real processes on loopback: with bearer tokens of two
// tenants, each sees only its own datasets, jobs, checkpoints and models
// (the other's are NOT_FOUND, word for word like missing ones, in every
// RPC that names one, tlserve's and KServe's), both share the backbone an
// admin uploaded, and per-tenant quotas refuse uploads and jobs with
// RESOURCE_EXHAUSTED while losing nothing already stored.

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.grpc.pb.h"
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

int Shell(const std::string& command) { return std::system(command.c_str()); }

// NOT_FOUND with the message a missing `kind` 'id' gets.
void ExpectHidden(const absl::Status& status, const std::string& kind,
                  const std::string& id, const std::string& what) {
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << what << ": " << status;
  EXPECT_TRUE(absl::StrContains(status.message(),
                                absl::StrCat(kind, " '", id, "' not found")))
      << what << ": " << status;
}

class TenantTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveFashionMnist()) GTEST_SKIP() << "needs dataset-fashion-mnist";
    dir_ = cluster_.dir() + "/auth";
    ASSERT_OK(MakeDirs(dir_));
    const std::string scripts = SourceDir() + "/scripts";
    for (const auto& [tenant, role, name] :
         {std::tuple{"ops", "admin", "admin"}, std::tuple{"team-a", "user", "a"},
          std::tuple{"team-b", "user", "b"}}) {
      ASSERT_EQ(Shell(absl::StrCat(scripts, "/make-token.sh ", tenant, " ", role,
                                   " '", dir_, "/", name, ".token' >> '", dir_,
                                   "/tokens' 2>/dev/null")),
                0);
    }
    // The same small dataset for both tenants; team-b may store it once
    // and a half, and queue one job.
    const std::string data_dir = cluster_.dir() + "/data";
    ASSERT_OK(MakeDirs(data_dir));
    auto parts = WriteFashionMnistSubset(data_dir, {0, 1}, 30, 10);
    ASSERT_OK(parts.status());
    parts_ = *parts;
    int64_t bytes = 0;
    for (const auto& [role, path] : parts_) bytes += std::filesystem::file_size(path);
    dataset_bytes_ = bytes;
    std::ofstream(dir_ + "/quotas")
        << "# tenant quotas for the test\n"
        << "team-b queued_jobs=1 stored_bytes=" << bytes + bytes / 2 << "\n";

    Client::Options admin;
    admin.token = Token("admin");
    cluster_.set_client_options(admin);
    ASSERT_OK(cluster_.StartServer(
        {absl::StrCat("--auth_tokens_file=", dir_, "/tokens"),
         absl::StrCat("--tenant_quotas_file=", dir_, "/quotas")}));
    a_ = Connect(Token("a"));
    b_ = Connect(Token("b"));
  }

  std::string Token(const std::string& name) {
    auto text = ReadFile(absl::StrCat(dir_, "/", name, ".token"));
    EXPECT_TRUE(text.ok()) << text.status();
    std::string token = text.ok() ? *text : "";
    while (!token.empty() && token.back() == '\n') token.pop_back();
    return token;
  }

  std::unique_ptr<Client> Connect(const std::string& token) {
    Client::Options options;
    options.target = cluster_.address();
    options.token = token;
    options.timeout = absl::Seconds(20);
    auto client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // A KServe call as `token`'s tenant.
  std::unique_ptr<grpc::ClientContext> KServeContext(const std::string& token) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->AddMetadata("authorization", "Bearer " + token);
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    return context;
  }

  Cluster cluster_;
  std::string dir_;
  std::vector<std::pair<v1::DatasetPartRole, std::string>> parts_;
  int64_t dataset_bytes_ = 0;
  std::unique_ptr<Client> a_;
  std::unique_ptr<Client> b_;
};

TEST_F(TenantTest, EachTenantSeesOnlyItsOwnAndQuotasHold) {
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
  auto backbone = cluster_.client().UploadBackbone("resnet18", *exported, input, "");
  ASSERT_OK(backbone.status());
  EXPECT_EQ(backbone->tenant(), "");  // shared

  auto dataset_a = a_->UploadDatasetFiles("fmnist-a", v1::IDX, parts_,
                                          FashionMnistClassNames(), "upload-1");
  ASSERT_OK(dataset_a.status());
  EXPECT_EQ(dataset_a->tenant(), "team-a");
  // The same request id from team-b is team-b's own upload, not team-a's.
  auto dataset_b = b_->UploadDatasetFiles("fmnist-b", v1::IDX, parts_,
                                          FashionMnistClassNames(), "upload-1");
  ASSERT_OK(dataset_b.status());
  EXPECT_NE(dataset_b->id(), dataset_a->id());
  EXPECT_EQ(dataset_b->tenant(), "team-b");

  // Quota: a second copy would pass team-b's stored bytes.
  absl::Status over = b_->UploadDatasetFiles("again", v1::IDX, parts_,
                                             FashionMnistClassNames(), "")
                          .status();
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted) << over;
  EXPECT_TRUE(absl::StrContains(over.message(), "tenant 'team-b' stores"))
      << over;
  EXPECT_TRUE(absl::StrContains(over.message(),
                                absl::StrCat("quota of ", dataset_bytes_ + dataset_bytes_ / 2)))
      << over;
  auto b_datasets = b_->ListDatasets();
  ASSERT_OK(b_datasets.status());
  ASSERT_EQ(b_datasets->size(), 1u);  // nothing half-stored
  EXPECT_EQ((*b_datasets)[0].id(), dataset_b->id());

  v1::JobSpec spec;
  spec.set_kind(v1::FINE_TUNE);
  spec.mutable_data()->add_class_subset(0);
  spec.mutable_data()->add_class_subset(1);
  spec.set_backbone_id(backbone->id());
  spec.set_epochs(1);
  spec.set_batch_size(16);
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::FROZEN);

  // Quota: team-b may queue one job (no worker runs yet).
  v1::JobSpec spec_b = spec;
  spec_b.mutable_data()->set_dataset_id(dataset_b->id());
  auto queued_b = b_->CreateJob(spec_b, "");
  ASSERT_OK(queued_b.status());
  absl::Status full = b_->CreateJob(spec_b, "").status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_TRUE(absl::StrContains(full.message(), "1 jobs queued")) << full;
  ASSERT_OK(b_->CancelJob(queued_b->id()).status());
  // team-a's queue is its own.
  v1::JobSpec spec_a = spec;
  spec_a.mutable_data()->set_dataset_id(dataset_a->id());
  // team-b cannot train on team-a's data: it does not exist for team-b.
  absl::Status foreign = b_->CreateJob(spec_a, "").status();
  EXPECT_EQ(foreign.code(), absl::StatusCode::kInvalidArgument) << foreign;
  EXPECT_TRUE(absl::StrContains(
      foreign.message(), absl::StrCat("dataset '", dataset_a->id(), "' not found")))
      << foreign;
  auto job_a = a_->CreateJob(spec_a, "");
  ASSERT_OK(job_a.status());
  EXPECT_EQ(job_a->tenant(), "team-a");

  ASSERT_OK(cluster_.StartWorker(
      "w1", 1, {absl::StrCat("--token_file=", dir_, "/admin.token")}));
  auto done = a_->WaitForJob(job_a->id(), absl::Minutes(3));
  ASSERT_OK(done.status());
  ASSERT_EQ(done->state(), v1::SUCCEEDED) << done->error();
  const std::string model_id = done->result().model_id();
  auto model = a_->GetModel(model_id);
  ASSERT_OK(model.status());
  EXPECT_EQ(model->tenant(), "team-a");

  // --- team-b, naming team-a's things: NOT_FOUND everywhere.
  const std::string ds = dataset_a->id();
  const std::string job = job_a->id();
  ExpectHidden(b_->GetDataset(ds).status(), "dataset", ds, "GetDataset");
  ExpectHidden(b_->DeleteDataset(ds), "dataset", ds, "DeleteDataset");
  ExpectHidden(b_->GetJob(job).status(), "job", job, "GetJob");
  ExpectHidden(b_->CancelJob(job).status(), "job", job, "CancelJob");
  ExpectHidden(b_->DeleteJob(job), "job", job, "DeleteJob");
  ExpectHidden(b_->ListCheckpoints(job).status(), "job", job, "ListCheckpoints");
  ExpectHidden(b_->WatchJob(job, 0, [](const v1::JobEvent&) { return true; },
                            absl::Now() + absl::Seconds(20))
                   .status(),
               "job", job, "WatchJob");
  ExpectHidden(b_->GetModel(model_id).status(), "model", model_id, "GetModel");
  ExpectHidden(b_->DeployModel(model_id, v1::ServingConfig()).status(), "model",
               model_id, "DeployModel");
  ExpectHidden(b_->UndeployModel(model_id).status(), "model", model_id,
               "UndeployModel");
  ExpectHidden(b_->DeleteModel(model_id), "model", model_id, "DeleteModel");
  ExpectHidden(b_->ExportModel(model_id, cluster_.dir() + "/stolen.pt").status(),
               "model", model_id, "ExportModel");
  EXPECT_FALSE(std::filesystem::exists(cluster_.dir() + "/stolen.pt"));
  v1::PredictRequest predict;
  predict.set_model_id(model_id);
  predict.add_images(TinyPng(3));
  ExpectHidden(b_->Predict(predict, absl::Seconds(20)).status(), "model",
               model_id, "Predict");
  v1::EmbedRequest embed;
  embed.set_model_id(model_id);
  embed.add_images(TinyPng(3));
  ExpectHidden(b_->Embed(embed, absl::Seconds(20)).status(), "model", model_id,
               "Embed");

  auto channel = grpc::CreateChannel(cluster_.address(),
                                     grpc::InsecureChannelCredentials());
  auto kserve = inference::GRPCInferenceService::NewStub(channel);
  {
    inference::ModelMetadataRequest request;
    request.set_name(model_id);
    inference::ModelMetadataResponse response;
    grpc::Status s =
        kserve->ModelMetadata(KServeContext(Token("b")).get(), request, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  }
  {
    inference::ModelInferRequest request;
    request.set_model_name(model_id);
    auto* in = request.add_inputs();
    in->set_name("input");
    in->set_datatype("FP32");
    for (int d : {1, 3, 32, 32}) in->add_shape(d);
    request.add_raw_input_contents(std::string(3 * 32 * 32 * 4, '\0'));
    inference::ModelInferResponse response;
    grpc::Status s =
        kserve->ModelInfer(KServeContext(Token("b")).get(), request, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
    // The very call works for the owner.
    s = kserve->ModelInfer(KServeContext(Token("a")).get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  {
    inference::ModelReadyRequest request;
    request.set_name(model_id);
    inference::ModelReadyResponse response;
    ASSERT_TRUE(
        kserve->ModelReady(KServeContext(Token("b")).get(), request, &response).ok());
    EXPECT_FALSE(response.ready());
    ASSERT_TRUE(
        kserve->ModelReady(KServeContext(Token("a")).get(), request, &response).ok());
    EXPECT_TRUE(response.ready());
  }
  {
    inference::ModelStatisticsRequest request;  // every model the caller may see
    inference::ModelStatisticsResponse response;
    ASSERT_TRUE(kserve->ModelStatistics(KServeContext(Token("b")).get(), request,
                                        &response)
                    .ok());
    EXPECT_EQ(response.model_stats_size(), 0);
    ASSERT_TRUE(kserve->ModelStatistics(KServeContext(Token("a")).get(), request,
                                        &response)
                    .ok());
    EXPECT_EQ(response.model_stats_size(), 1);
  }

  // Lists leave the other tenant out; the shared backbone is everyone's.
  auto b_jobs = b_->ListAllJobs(v1::JOB_STATE_UNSPECIFIED);
  ASSERT_OK(b_jobs.status());
  for (const v1::Job& j : *b_jobs) EXPECT_NE(j.id(), job);
  auto b_models = b_->ListModels();
  ASSERT_OK(b_models.status());
  EXPECT_TRUE(b_models->empty());
  ASSERT_OK(b_->GetBackbone(backbone->id()).status());

  // team-a's things are intact and work.
  ASSERT_OK(a_->GetDataset(ds).status());
  auto still = a_->GetJob(job);
  ASSERT_OK(still.status());
  EXPECT_EQ(still->state(), v1::SUCCEEDED);
  ASSERT_OK(a_->ListCheckpoints(job).status());
  auto predicted = a_->Predict(predict, absl::Seconds(30));
  ASSERT_OK(predicted.status());
  EXPECT_EQ(predicted->predictions_size(), 1);
  auto a_models = a_->ListModels();
  ASSERT_OK(a_models.status());
  ASSERT_EQ(a_models->size(), 1u);
  EXPECT_EQ((*a_models)[0].id(), model_id);
}

}  // namespace
}  // namespace tlserve::testing
