// SIGTERM through real processes on loopback: a worker hands its job back
// with a checkpoint and another worker resumes it; the server finishes the
// calls it holds, ends its streams, closes the store and exits cleanly.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"
#include "tests/integration/fixtures.h"
#include "tlserve/v1/dataset.grpc.pb.h"
#include "tlserve/v1/job.grpc.pb.h"

namespace tlserve::testing {
namespace {

using tlserve::v1::Job;
using tlserve::v1::JobEvent;
using tlserve::v1::JobSpec;

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

bool ExitedCleanly(int status) {
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

class GracefulShutdownTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveFashionMnist()) {
      GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    }
    ASSERT_OK(cluster_.StartServer());
  }

  v1::Dataset Upload(const std::vector<int>& classes, int train, int test) {
    const std::string dir = cluster_.dir() + "/data";
    EXPECT_TRUE(MakeDirs(dir).ok());
    auto parts = WriteFashionMnistSubset(dir, classes, train, test);
    EXPECT_TRUE(parts.ok()) << parts.status();
    auto dataset = cluster_.client().UploadDatasetFiles(
        "fmnist", v1::IDX, *parts, FashionMnistClassNames(), "");
    EXPECT_TRUE(dataset.ok()) << dataset.status();
    return dataset.ok() ? *dataset : v1::Dataset();
  }

  // A resnet18 fine-tune at 32x32 whose epochs take a second or two, with
  // no timed checkpoints: the only checkpoint inside an epoch is the one a
  // stopping worker takes.
  JobSpec SlowJob(int epochs) {
    v1::Dataset dataset = Upload({0, 1}, 150, 20);
    auto path = ExportResNet18(cluster_.dir(), 32);
    EXPECT_TRUE(path.ok()) << path.status();
    v1::InputSpec input;
    input.set_channels(3);
    input.set_height(32);
    input.set_width(32);
    for (float m : {0.485f, 0.456f, 0.406f}) input.add_mean(m);
    for (float d : {0.229f, 0.224f, 0.225f}) input.add_std(d);
    auto backbone =
        cluster_.client().UploadBackbone("resnet18", *path, input, "");
    EXPECT_TRUE(backbone.ok()) << backbone.status();
    JobSpec spec;
    spec.set_kind(v1::FINE_TUNE);
    spec.mutable_data()->set_dataset_id(dataset.id());
    spec.mutable_data()->add_class_subset(0);
    spec.mutable_data()->add_class_subset(1);
    spec.mutable_data()->set_validation_fraction(0.2f);
    spec.set_backbone_id(backbone.ok() ? backbone->id() : "");
    spec.set_epochs(epochs);
    spec.set_batch_size(16);
    spec.set_seed(7);
    spec.mutable_optimizer()->set_learning_rate(3e-3f);
    spec.mutable_freeze()->set_mode(v1::FreezePolicy::FULL);
    spec.set_checkpoint_every_seconds(3600);
    return spec;
  }

  // Waits (bounded) for the first event satisfying `pred`.
  bool WaitForEvent(const std::string& id,
                    const std::function<bool(const JobEvent&)>& pred) {
    bool seen = false;
    (void)cluster_.client().WatchJob(
        id, 0,
        [&](const JobEvent& e) {
          seen = pred(e);
          return !seen;
        },
        absl::Now() + absl::Minutes(3));
    return seen;
  }

  std::vector<JobEvent> AllEvents(const std::string& id) {
    std::vector<JobEvent> events;
    (void)cluster_.client().WatchJob(
        id, 0,
        [&](const JobEvent& e) {
          events.push_back(e);
          return true;
        },
        absl::Now() + absl::Minutes(4));
    return events;
  }

  Cluster cluster_;
};

TEST_F(GracefulShutdownTest, StoppedWorkerHandsItsJobBackWithACheckpoint) {
  ASSERT_OK(cluster_.StartWorker("w1", 1));
  JobSpec spec = SlowJob(4);
  // A hand-back is not a failure: even a job with one attempt survives it.
  spec.set_max_attempts(1);
  auto created = cluster_.client().CreateJob(spec, "");
  ASSERT_OK(created.status());
  // Inside epoch 2, so that there is both an epoch done and a position
  // inside the next one to keep.
  ASSERT_TRUE(WaitForEvent(created->id(), [](const JobEvent& e) {
    return e.has_progress() && e.progress().epoch() == 2 &&
           e.progress().batch() >= 2;
  }));

  const absl::Time signalled = absl::Now();
  auto exit_status =
      cluster_.SignalWorkerAndWait("w1", SIGTERM, absl::Seconds(60));
  const absl::Duration took = absl::Now() - signalled;
  ASSERT_OK(exit_status.status());
  EXPECT_TRUE(ExitedCleanly(*exit_status)) << "status " << *exit_status;
  std::printf("worker drained and exited %s after SIGTERM\n",
              absl::FormatDuration(took).c_str());

  auto queued = cluster_.client().GetJob(created->id());
  ASSERT_OK(queued.status());
  EXPECT_EQ(queued->state(), v1::QUEUED) << queued->error();
  EXPECT_EQ(queued->handed_back_attempts(), 1);
  const v1::CheckpointInfo kept = queued->latest_checkpoint();
  EXPECT_EQ(kept.attempt(), 1);
  EXPECT_FALSE(kept.sha256().empty());
  // Where the worker got to: past epoch 1, at a batch of epoch 2 (or at
  // the end of epoch 2 if the signal came with its last batch).
  EXPECT_TRUE((kept.epoch() == 1 && kept.batch() >= 2) ||
              (kept.epoch() == 2 && kept.batch() == 0))
      << kept.ShortDebugString();

  ASSERT_OK(cluster_.StartWorker("w2", 1));
  auto done = cluster_.client().WaitForJob(created->id(), absl::Minutes(4));
  ASSERT_OK(done.status());
  ASSERT_EQ(done->state(), v1::SUCCEEDED) << done->error();
  EXPECT_EQ(done->worker_id(), "w2");
  EXPECT_EQ(done->attempt(), 2);
  std::vector<int> epochs;
  for (const auto& m : done->metrics()) epochs.push_back(m.epoch());
  EXPECT_EQ(epochs, (std::vector<int>{1, 2, 3, 4}));

  bool handed_back = false;
  bool resumed_there = false;
  for (const JobEvent& e : AllEvents(created->id())) {
    if (e.has_state_change() && e.state_change().to() == v1::QUEUED &&
        absl::StrContains(e.state_change().reason(),
                          "worker w1 handed back attempt 1 as it stopped; "
                          "the next attempt resumes at epoch")) {
      handed_back = true;
    }
    if (e.has_message() &&
        absl::StrContains(e.message(),
                          absl::StrCat("attempt 2 resumes from checkpoint of "
                                       "epoch ",
                                       kept.epoch()))) {
      resumed_there = true;
    }
  }
  EXPECT_TRUE(handed_back);
  EXPECT_TRUE(resumed_there);
}

// Sends an UploadDataset stream in two halves, so that the server can be
// told to stop in between.
class SplitUpload {
 public:
  SplitUpload(const std::string& address, const DatasetParts& parts)
      : channel_(grpc::CreateChannel(address,
                                     grpc::InsecureChannelCredentials())),
        stub_(v1::DatasetService::NewStub(channel_)) {
    for (const auto& [role, path] : parts) {
      absl::StatusOr<std::string> bytes = ReadFile(path);
      EXPECT_TRUE(bytes.ok()) << bytes.status();
      parts_.emplace_back(role, bytes.ok() ? *bytes : "");
    }
    context_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    writer_ = stub_->UploadDataset(&context_, &dataset_);
  }

  // The header and the first half of the first part.
  bool SendFirstHalf() {
    v1::UploadDatasetRequest header;
    v1::DatasetUploadHeader* h = header.mutable_header();
    h->set_name("in-flight");
    h->set_format(v1::IDX);
    for (const std::string& name : FashionMnistClassNames()) {
      h->add_class_names(name);
    }
    for (const auto& [role, bytes] : parts_) {
      v1::DatasetPart* part = h->add_parts();
      part->set_role(role);
      part->set_size_bytes(static_cast<int64_t>(bytes.size()));
      part->set_sha256(Sha256Hex(bytes));
    }
    return writer_->Write(header) && Chunk(0, 0, parts_[0].second.size() / 2);
  }

  grpc::Status SendRestAndFinish() {
    bool sent = Chunk(0, parts_[0].second.size() / 2, parts_[0].second.size());
    for (size_t i = 1; sent && i < parts_.size(); ++i) {
      sent = Chunk(i, 0, parts_[i].second.size());
    }
    if (sent) writer_->WritesDone();
    return writer_->Finish();
  }

  const v1::Dataset& dataset() const { return dataset_; }

 private:
  bool Chunk(size_t part, size_t from, size_t to) {
    v1::UploadDatasetRequest request;
    request.mutable_chunk()->set_part_index(static_cast<int32_t>(part));
    request.mutable_chunk()->set_data(parts_[part].second.substr(from, to - from));
    return writer_->Write(request);
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DatasetService::Stub> stub_;
  std::vector<std::pair<v1::DatasetPartRole, std::string>> parts_;
  grpc::ClientContext context_;
  v1::Dataset dataset_;
  std::unique_ptr<grpc::ClientWriter<v1::UploadDatasetRequest>> writer_;
};

// One WatchJob stream, no reconnects: how and when it ended.
struct RawWatch {
  absl::Status status;
  absl::Time ended;
};

RawWatch WatchOnce(const std::string& address, const std::string& job_id) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = v1::JobService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(2)));
  v1::WatchJobRequest request;
  request.set_id(job_id);
  auto reader = stub->WatchJob(&context, request);
  JobEvent event;
  while (reader->Read(&event)) {
  }
  const grpc::Status status = reader->Finish();
  return {absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                       status.error_message()),
          absl::Now()};
}

TEST_F(GracefulShutdownTest, StoppedServerFinishesCallsEndsStreamsAndClosesTheStore) {
  ASSERT_OK(cluster_.StartWorker("w1", 1));
  JobSpec spec = SlowJob(6);
  auto created = cluster_.client().CreateJob(spec, "");
  ASSERT_OK(created.status());
  ASSERT_TRUE(WaitForEvent(created->id(), [](const JobEvent& e) {
    return e.has_progress() && e.progress().batch() >= 2;
  }));

  // An upload in flight: the header and half of its first part.
  const std::string dir = cluster_.dir() + "/upload";
  ASSERT_OK(MakeDirs(dir));
  auto parts = WriteFashionMnistSubset(dir, {0, 1}, 20, 5);
  ASSERT_OK(parts.status());
  SplitUpload upload(cluster_.address(), *parts);
  ASSERT_TRUE(upload.SendFirstHalf());

  // Two watches on the running job: one raw stream, and the client's,
  // which reconnects on UNAVAILABLE and so should carry on across the
  // restart below without losing or repeating an event.
  std::atomic<bool> watch_ended{false};
  RawWatch raw;
  std::thread watcher([&] {
    raw = WatchOnce(cluster_.address(), created->id());
    watch_ended = true;
  });
  std::vector<int64_t> sequences;
  absl::StatusOr<Job> watched = absl::UnknownError("not yet");
  // Its own client: the cluster's is replaced when the server restarts.
  auto watch_client = Client::Connect(Client::Options{
      .target = cluster_.address(), .watch_backoff = absl::Milliseconds(100)});
  ASSERT_OK(watch_client.status());
  std::thread client_watcher([&] {
    watched = (*watch_client)->WatchJob(
        created->id(), 0,
        [&](const JobEvent& e) {
          sequences.push_back(e.sequence());
          return true;
        },
        absl::Now() + absl::Minutes(4));
  });
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_FALSE(watch_ended);

  const absl::Time signalled = absl::Now();
  // Server exit is awaited on another thread: the upload finishes first.
  std::atomic<bool> server_exited{false};
  absl::StatusOr<int> server_status = absl::UnknownError("not yet");
  std::thread stopper([&] {
    server_status = cluster_.SignalServerAndWait(SIGTERM, absl::Seconds(30));
    server_exited = true;
  });
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_FALSE(server_exited) << "the server left with an upload in flight";
  // The rest of the upload, after the signal: the call still completes.
  const grpc::Status uploaded = upload.SendRestAndFinish();
  EXPECT_TRUE(uploaded.ok()) << uploaded.error_message();
  stopper.join();
  watcher.join();
  const absl::Duration took = absl::Now() - signalled;
  ASSERT_OK(server_status.status());
  EXPECT_TRUE(ExitedCleanly(*server_status)) << "status " << *server_status;
  // Within the 5 s grace period, with margin for a loaded machine.
  EXPECT_LT(took, absl::Seconds(12));
  std::printf("server stopped %s after SIGTERM\n",
              absl::FormatDuration(took).c_str());

  // The watch ended promptly with a status that says what to do.
  EXPECT_TRUE(absl::IsUnavailable(raw.status)) << raw.status;
  EXPECT_TRUE(absl::StrContains(raw.status.message(), "shutting down"))
      << raw.status;
  EXPECT_LT(raw.ended - signalled, absl::Seconds(3));

  // The store was closed: SQLite folded its write-ahead log back.
  const std::filesystem::path wal =
      std::filesystem::path(cluster_.dir()) / "var" / "tlserve.db-wal";
  std::error_code ec;
  EXPECT_TRUE(!std::filesystem::exists(wal, ec) ||
              std::filesystem::file_size(wal, ec) == 0)
      << wal << " left behind";

  // Restarted on the same data: the upload made during the drain is there,
  // and the running job goes on (the worker reconnects to the new server).
  ASSERT_OK(cluster_.StartServer());
  auto stored = cluster_.client().GetDataset(upload.dataset().id());
  ASSERT_OK(stored.status());
  EXPECT_EQ(stored->name(), "in-flight");
  auto done = cluster_.client().WaitForJob(created->id(), absl::Minutes(4));
  ASSERT_OK(done.status());
  EXPECT_EQ(done->state(), v1::SUCCEEDED) << done->error();
  client_watcher.join();
  ASSERT_OK(watched.status());
  EXPECT_EQ(watched->state(), v1::SUCCEEDED);
  ASSERT_FALSE(sequences.empty());
  for (size_t i = 1; i < sequences.size(); ++i) {
    EXPECT_LT(sequences[i - 1], sequences[i]) << "event repeated or reordered";
  }
}

}  // namespace
}  // namespace tlserve::testing
