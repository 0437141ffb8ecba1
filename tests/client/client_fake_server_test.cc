// Client against in-process fake services on loopback: the stream
// protocols (chunked upload, verified export, resumable watch, health)
// without the real server.

#include <atomic>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::ElementsAre;

std::string HexOf(std::string_view data) {
  Sha256 hasher;
  hasher.Update(data);
  return hasher.FinalHex();
}

class FakeDatasets : public v1::DatasetService::Service {
 public:
  grpc::Status UploadDataset(
      grpc::ServerContext*,
      grpc::ServerReader<v1::UploadDatasetRequest>* reader,
      v1::Dataset* response) override {
    v1::UploadDatasetRequest request;
    if (!reader->Read(&request) || !request.has_header()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no header");
    }
    v1::DatasetUploadHeader header = request.header();
    std::vector<std::string> data(header.parts_size());
    while (reader->Read(&request)) {
      data.at(request.chunk().part_index()) += request.chunk().data();
      max_chunk_ = std::max(max_chunk_, request.chunk().data().size());
    }
    for (int i = 0; i < header.parts_size(); ++i) {
      if (static_cast<int64_t>(data[i].size()) !=
              header.parts(i).size_bytes() ||
          HexOf(data[i]) != header.parts(i).sha256()) {
        return grpc::Status(grpc::StatusCode::DATA_LOSS, "part mismatch");
      }
    }
    response->set_id("ds-1");
    response->set_name(header.name());
    *response->mutable_parts() = header.parts();
    *response->mutable_class_names() = header.class_names();
    return grpc::Status::OK;
  }
  size_t max_chunk_ = 0;
};

class FakeModels : public v1::ModelService::Service {
 public:
  grpc::Status ExportModel(
      grpc::ServerContext*, const v1::ExportModelRequest* request,
      grpc::ServerWriter<v1::ExportModelChunk>* writer) override {
    const std::string content = "torchscript bytes, more or less";
    v1::ExportModelChunk first;
    first.set_data(content.substr(0, 10));
    first.set_total_bytes(static_cast<int64_t>(content.size()));
    first.set_sha256(corrupt_ ? std::string(64, '0') : HexOf(content));
    writer->Write(first);
    v1::ExportModelChunk rest;
    rest.set_data(content.substr(10));
    writer->Write(rest);
    return grpc::Status::OK;
  }
  std::atomic<bool> corrupt_{false};
};

// The first watch breaks with break_code_ (UNAVAILABLE unless a test sets
// it) after two events; the second must resume after sequence 2 and sees
// the job finish.
class FakeJobs : public v1::JobService::Service {
 public:
  grpc::Status WatchJob(grpc::ServerContext*,
                        const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    int call;
    {
      absl::MutexLock lock(&mu_);
      after_.push_back(request->after_sequence());
      call = static_cast<int>(after_.size());
    }
    for (int64_t seq = request->after_sequence() + 1; seq <= 3; ++seq) {
      if (call == 1 && seq == 3) {
        return grpc::Status(break_code_.load(), "server restarting");
      }
      v1::JobEvent event;
      event.set_sequence(seq);
      event.set_job_id(request->id());
      event.mutable_progress()->set_epoch(static_cast<int32_t>(seq));
      writer->Write(event);
    }
    done_ = true;
    return grpc::Status::OK;
  }
  grpc::Status GetJob(grpc::ServerContext*, const v1::GetJobRequest* request,
                      v1::Job* job) override {
    job->set_id(request->id());
    job->set_state(done_ ? v1::SUCCEEDED : v1::RUNNING);
    return grpc::Status::OK;
  }
  std::vector<int64_t> after() {
    absl::MutexLock lock(&mu_);
    return after_;
  }
  std::atomic<grpc::StatusCode> break_code_{grpc::StatusCode::UNAVAILABLE};

 private:
  absl::Mutex mu_;
  std::vector<int64_t> after_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> done_{false};
};

class FakeHealth : public grpc::health::v1::Health::Service {
 public:
  grpc::Status Check(grpc::ServerContext*,
                     const grpc::health::v1::HealthCheckRequest*,
                     grpc::health::v1::HealthCheckResponse* response) override {
    response->set_status(
        serving_ ? grpc::health::v1::HealthCheckResponse::SERVING
                 : grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    return grpc::Status::OK;
  }
  std::atomic<bool> serving_{true};
};

class ClientFakeServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(&datasets_);
    builder.RegisterService(&models_);
    builder.RegisterService(&jobs_);
    builder.RegisterService(&health_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    Client::Options options;
    options.target = "127.0.0.1:" + std::to_string(port);
    options.timeout = absl::Seconds(10);
    options.watch_backoff = absl::Milliseconds(10);
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }
  void TearDown() override { server_->Shutdown(); }

  std::string WriteTemp(const std::string& name, const std::string& content) {
    std::string path = ::testing::TempDir() + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  FakeDatasets datasets_;
  FakeModels models_;
  FakeJobs jobs_;
  FakeHealth health_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientFakeServerTest, UploadSendsSizesHashesAndOneMibChunks) {
  std::string big(2 * 1024 * 1024 + 17, 'x');
  std::string images = WriteTemp("images.idx", big);
  std::string labels = WriteTemp("labels.idx", "labels");
  auto dataset = client_->UploadDatasetFiles(
      "d", v1::IDX, {{v1::TRAIN_IMAGES, images}, {v1::TRAIN_LABELS, labels}},
      {"a", "b"}, "req-1");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->id(), "ds-1");
  ASSERT_EQ(dataset->parts_size(), 2);
  EXPECT_EQ(dataset->parts(0).size_bytes(), static_cast<int64_t>(big.size()));
  EXPECT_EQ(dataset->parts(0).sha256(), HexOf(big));
  EXPECT_THAT(dataset->class_names(), ElementsAre("a", "b"));
  EXPECT_EQ(datasets_.max_chunk_, 1024u * 1024u);
}

TEST_F(ClientFakeServerTest, UploadOfMissingFileIsNotFound) {
  auto dataset = client_->UploadDatasetFiles(
      "d", v1::IDX, {{v1::TRAIN_IMAGES, "/nonexistent/images"}}, {}, "");
  EXPECT_EQ(dataset.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientFakeServerTest, ExportVerifiesHashAndWritesAtomically) {
  std::string out = ::testing::TempDir() + "/model.pt";
  std::remove(out.c_str());
  auto sha = client_->ExportModel("m-1", out);
  ASSERT_TRUE(sha.ok()) << sha.status();
  std::ifstream in(out, std::ios::binary);
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(content, "torchscript bytes, more or less");
  EXPECT_EQ(*sha, HexOf(content));

  std::string bad = ::testing::TempDir() + "/bad_model.pt";
  std::remove(bad.c_str());
  models_.corrupt_ = true;
  auto corrupt = client_->ExportModel("m-1", bad);
  EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(std::ifstream(bad).good()) << "a bad export left a file";
}

TEST_F(ClientFakeServerTest, WatchResumesAfterUnavailableWithoutLosingEvents) {
  std::vector<int64_t> seen;
  auto job = client_->WatchJob("job-1", 0, [&](const v1::JobEvent& e) {
    seen.push_back(e.sequence());
    return true;
  });
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::SUCCEEDED);
  EXPECT_THAT(seen, ElementsAre(1, 2, 3));
  EXPECT_THAT(jobs_.after(), ElementsAre(0, 2));
}

// A call that reaches a server as it shuts down is cancelled there: the
// client did not cancel it, so it resumes as after UNAVAILABLE. Any other
// code ends the watch.
TEST_F(ClientFakeServerTest, WatchResumesAfterAServerSideCancel) {
  jobs_.break_code_ = grpc::StatusCode::CANCELLED;
  std::vector<int64_t> seen;
  auto job = client_->WatchJob("job-1", 0, [&](const v1::JobEvent& e) {
    seen.push_back(e.sequence());
    return true;
  });
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_THAT(seen, ElementsAre(1, 2, 3));
  EXPECT_THAT(jobs_.after(), ElementsAre(0, 2));
}

TEST_F(ClientFakeServerTest, WatchEndsOnOtherErrors) {
  jobs_.break_code_ = grpc::StatusCode::PERMISSION_DENIED;
  auto job = client_->WatchJob("job-1", 0, [](const v1::JobEvent&) { return true; });
  EXPECT_EQ(job.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(jobs_.after(), ElementsAre(0));
}

TEST_F(ClientFakeServerTest, WatchStopsWhenCallbackSaysSo) {
  int calls = 0;
  auto job = client_->WatchJob("job-1", 0, [&](const v1::JobEvent&) {
    ++calls;
    return false;
  });
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(calls, 1);
}

TEST_F(ClientFakeServerTest, HealthReflectsServingStatus) {
  EXPECT_TRUE(client_->CheckHealth().ok());
  EXPECT_TRUE(client_->WaitUntilHealthy(absl::Seconds(1)).ok());
  health_.serving_ = false;
  EXPECT_EQ(client_->CheckHealth().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client_->WaitUntilHealthy(absl::Milliseconds(300)).code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(ClientTest, UnreachableServerIsUnavailable) {
  Client::Options options;
  options.target = "127.0.0.1:1";
  options.timeout = absl::Seconds(2);
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->GetJob("x").status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(Client::Connect(Client::Options{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tlserve
