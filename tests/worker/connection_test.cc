// BlobCache and WorkerAgent against an in-process fake WorkerService: the
// protocol (register, heartbeats, reconnect, replies) without a real server
// or any training.

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tlserve/v1/worker.grpc.pb.h"
#include "worker/blob_cache.h"
#include "worker/connection.h"

namespace tlserve::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::tlserve::v1::BlobChunk;
using ::tlserve::v1::ServerMessage;
using ::tlserve::v1::WorkerMessage;

class FakeWorkerService final : public tlserve::v1::WorkerService::Service {
 public:
  // Serves `served` under the name `sha256` (a mismatch fakes corruption).
  void AddBlob(const std::string& sha256, const std::string& served) {
    absl::MutexLock lock(&mu_);
    blobs_[sha256] = served;
  }
  std::string AddBlob(const std::string& data) {
    std::string sha = Sha256Hex(data);
    AddBlob(sha, data);
    return sha;
  }
  bool HasBlob(const std::string& sha256) {
    absl::MutexLock lock(&mu_);
    return blobs_.count(sha256) > 0;
  }
  int fetches() {
    absl::MutexLock lock(&mu_);
    return fetches_;
  }
  // While held, FetchBlob waits (until released or the call is cancelled).
  void HoldFetches(bool hold) {
    absl::MutexLock lock(&mu_);
    hold_fetches_ = hold;
  }
  // Waits until `n` FetchBlob calls came in.
  bool WaitForFetch(int n = 1, absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto fetched = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return fetches_ >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&fetched), timeout);
  }
  void DropConnections(int n) {
    absl::MutexLock lock(&mu_);
    drop_connections_ = n;
  }

  // Pushes a message down the live Connect stream; false when none.
  bool Push(const ServerMessage& message) {
    absl::MutexLock lock(&mu_);
    return stream_ != nullptr && stream_->Write(message);
  }

  // Waits until `pred` holds for the messages received so far.
  bool WaitFor(std::function<bool(const std::vector<WorkerMessage>&)> pred,
               absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return pred(received_);
    };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }

  grpc::Status Connect(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<ServerMessage, WorkerMessage>* stream) override {
    WorkerMessage message;
    if (!stream->Read(&message) || !message.has_register_()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no register");
    }
    {
      absl::MutexLock lock(&mu_);
      received_.push_back(message);
      if (drop_connections_ > 0) {
        --drop_connections_;
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "dropped by test");
      }
    }
    ServerMessage registered;
    registered.mutable_registered()->set_heartbeat_interval_seconds(0.05);
    registered.mutable_registered()->set_lease_seconds(1);
    stream->Write(registered);
    {
      absl::MutexLock lock(&mu_);
      stream_ = stream;
    }
    while (stream->Read(&message)) {
      absl::MutexLock lock(&mu_);
      received_.push_back(message);
    }
    absl::MutexLock lock(&mu_);
    stream_ = nullptr;
    return grpc::Status::OK;
  }

  grpc::Status FetchBlob(grpc::ServerContext* context,
                         const tlserve::v1::FetchBlobRequest* request,
                         grpc::ServerWriter<BlobChunk>* writer) override {
    std::string data;
    {
      absl::MutexLock lock(&mu_);
      ++fetches_;
      while (hold_fetches_ && !context->IsCancelled()) {
        mu_.AwaitWithTimeout(absl::Condition(+[](bool* hold) { return !*hold; },
                                             &hold_fetches_),
                             absl::Milliseconds(20));
      }
      auto it = blobs_.find(request->sha256());
      if (it == blobs_.end()) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such blob");
      }
      data = it->second;
    }
    // Small chunks, so the client reassembles several.
    for (size_t i = 0; i < data.size(); i += 1000) {
      BlobChunk chunk;
      chunk.set_data(data.substr(i, 1000));
      writer->Write(chunk);
    }
    return grpc::Status::OK;
  }

  grpc::Status PutBlob(grpc::ServerContext* context,
                       grpc::ServerReader<BlobChunk>* reader,
                       tlserve::v1::PutBlobResponse* response) override {
    std::string data;
    BlobChunk chunk;
    while (reader->Read(&chunk)) data += chunk.data();
    const std::string sha = AddBlob(data);
    response->mutable_blob()->set_sha256(sha);
    response->mutable_blob()->set_size_bytes(static_cast<int64_t>(data.size()));
    return grpc::Status::OK;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::string> blobs_ ABSL_GUARDED_BY(mu_);
  int fetches_ ABSL_GUARDED_BY(mu_) = 0;
  int drop_connections_ ABSL_GUARDED_BY(mu_) = 0;
  bool hold_fetches_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<WorkerMessage> received_ ABSL_GUARDED_BY(mu_);
  grpc::ServerReaderWriter<ServerMessage, WorkerMessage>* stream_
      ABSL_GUARDED_BY(mu_) = nullptr;
};

class WorkerTestBase : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("worker_connection_test_" +
            std::string(::testing::UnitTest::GetInstance()
                            ->current_test_info()
                            ->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port_);
    channel_ = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
    stub_ = tlserve::v1::WorkerService::NewStub(channel_);
  }
  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now());
    fs::remove_all(dir_);
  }

  std::unique_ptr<BlobCache> MakeCache() {
    BlobCache::Options options;
    options.cache_dir = (dir_ / "cache").string();
    auto cache = BlobCache::Create(options, stub_.get());
    EXPECT_TRUE(cache.ok()) << cache.status();
    return cache.ok() ? *std::move(cache) : nullptr;
  }

  static std::string ReadAll(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  fs::path dir_;
  FakeWorkerService service_;
  int port_ = 0;
  std::string address_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tlserve::v1::WorkerService::Stub> stub_;
};

using BlobCacheTest = WorkerTestBase;

TEST_F(BlobCacheTest, FetchesVerifiesAndCachesABlob) {
  const std::string data(5000, 'x');
  const std::string sha = service_.AddBlob(data);
  auto cache = MakeCache();
  auto path = cache->Fetch(sha);
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadAll(*path), data);
  auto again = cache->Fetch(sha);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *path);
  EXPECT_EQ(service_.fetches(), 1);
}

TEST_F(BlobCacheTest, RefusesACorruptBlobAndKeepsNothing) {
  const std::string sha = Sha256Hex("the real bytes");
  service_.AddBlob(sha, "other bytes");
  auto cache = MakeCache();
  auto path = cache->Fetch(sha);
  EXPECT_EQ(path.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(fs::exists(cache->PathFor(sha)));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_ / "cache" / "blobs"),
                          fs::directory_iterator()),
            0);
}

TEST_F(BlobCacheTest, MissingBlobIsNotFoundAndBadNameIsInvalid) {
  auto cache = MakeCache();
  EXPECT_EQ(cache->Fetch(Sha256Hex("absent")).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(cache->Fetch("../etc/passwd").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(BlobCacheTest, PutUploadsInChunksAndCanAdoptTheFile) {
  const std::string file = (dir_ / "artifact.bin").string();
  std::string data(2 * 1024 * 1024 + 123, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  std::ofstream(file, std::ios::binary) << data;
  auto cache = MakeCache();
  auto ref = cache->Put(file, /*move_into_cache=*/true);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->sha256(), Sha256Hex(data));
  EXPECT_EQ(ref->size_bytes(), static_cast<int64_t>(data.size()));
  EXPECT_TRUE(service_.HasBlob(ref->sha256()));
  auto path = cache->Fetch(ref->sha256());
  ASSERT_TRUE(path.ok());
  EXPECT_EQ(service_.fetches(), 0);
  EXPECT_EQ(ReadAll(*path), data);
}

TEST_F(BlobCacheTest, FetchAfterShutdownIsCancelled) {
  const std::string sha = service_.AddBlob("abc");
  auto cache = MakeCache();
  cache->Shutdown();
  EXPECT_EQ(cache->Fetch(sha).status().code(), absl::StatusCode::kCancelled);
}

class WorkerAgentTest : public WorkerTestBase {
 protected:
  void StartAgent(std::function<void(WorkerAgent::Options*)> adjust = {}) {
    WorkerAgent::Options options;
    options.server_address = address_;
    options.worker_id = "w-test";
    options.cache_dir = (dir_ / "agent").string();
    options.reconnect_backoff = absl::Milliseconds(20);
    options.max_reconnect_backoff = absl::Milliseconds(100);
    if (adjust) adjust(&options);
    auto agent = WorkerAgent::Create(options);
    ASSERT_TRUE(agent.ok()) << agent.status();
    agent_ = *std::move(agent);
    runner_ = std::thread([this] { agent_->Run(); });
  }
  void TearDown() override {
    if (agent_ != nullptr) {
      agent_->Stop();
      runner_.join();
      agent_.reset();
    }
    WorkerTestBase::TearDown();
  }

  // An inference call for a model the fake server does not have: the
  // worker fetches it (held while the test holds fetches), then replies
  // NOT_FOUND.
  static ServerMessage InferCall(const std::string& request_id) {
    ServerMessage call;
    call.mutable_infer()->set_request_id(request_id);
    tlserve::v1::InferenceModel* model = call.mutable_infer()->add_models();
    model->set_model_id("model-" + request_id);
    model->mutable_model()->set_sha256(Sha256Hex("no model " + request_id));
    call.mutable_infer()->add_items()->mutable_request()->add_images("png");
    call.mutable_infer()->set_timeout_ms(10'000);
    return call;
  }

  // The code of the reply to `request_id`, or -1 while there is none.
  static int ReplyCode(const std::vector<WorkerMessage>& messages,
                       const std::string& request_id) {
    for (const WorkerMessage& m : messages) {
      if (m.has_inference_reply() &&
          m.inference_reply().request_id() == request_id) {
        return m.inference_reply().code();
      }
    }
    return -1;
  }

  static int Count(const std::vector<WorkerMessage>& messages,
                   WorkerMessage::MsgCase which) {
    int n = 0;
    for (const WorkerMessage& m : messages) n += m.msg_case() == which;
    return n;
  }

  std::unique_ptr<WorkerAgent> agent_;
  std::thread runner_;
};

TEST_F(WorkerAgentTest, RegistersThenHeartbeats) {
  StartAgent();
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return Count(m, WorkerMessage::kHeartbeat) >= 2;
  }));
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return !m.empty() && m[0].has_register_() &&
           m[0].register_().worker_id() == "w-test" &&
           m[0].register_().device() == "cpu" && m[0].register_().pid() > 0 &&
           m[0].register_().running_job_ids().empty();
  }));
}

TEST_F(WorkerAgentTest, ReconnectsWhenTheStreamIsDropped) {
  service_.DropConnections(2);
  StartAgent();
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return Count(m, WorkerMessage::kRegister) == 3 &&
           Count(m, WorkerMessage::kHeartbeat) >= 1;
  }));
}

TEST_F(WorkerAgentTest, RepliesToInferenceWhoseModelIsMissing) {
  StartAgent();
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return Count(m, WorkerMessage::kHeartbeat) >= 1;
  }));
  ServerMessage call;
  call.mutable_infer()->set_request_id("r1");
  tlserve::v1::InferenceModel* model = call.mutable_infer()->add_models();
  model->set_model_id("model-x");
  model->mutable_model()->set_sha256(Sha256Hex("no model"));
  call.mutable_infer()->add_items()->mutable_request()->add_images("png");
  call.mutable_infer()->set_timeout_ms(10'000);
  ASSERT_TRUE(service_.Push(call));
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    for (const WorkerMessage& msg : m) {
      if (msg.has_inference_reply() &&
          msg.inference_reply().request_id() == "r1") {
        return msg.inference_reply().code() ==
                   static_cast<int>(absl::StatusCode::kNotFound) &&
               msg.inference_reply().message().find("model-x") !=
                   std::string::npos;
      }
    }
    return false;
  }));
}

// Every inference thread busy: the stream is still read, so a further call
// is queued and one over the queue's bound is refused at once. Then all
// finish, calls one at a time are answered, and a drain finds the worker
// idle (the thread waiting on the stream counts as idle).
TEST_F(WorkerAgentTest, KeepsReadingWhileEveryInferenceThreadRuns) {
  StartAgent([](WorkerAgent::Options* options) {
    options->inference_threads = 2;
    options->max_queued_inferences = 1;
  });
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return Count(m, WorkerMessage::kHeartbeat) >= 1;
  }));
  service_.HoldFetches(true);
  // One at a time: two calls queued at once would find the 1-call queue
  // full.
  ASSERT_TRUE(service_.Push(InferCall("r1")));
  ASSERT_TRUE(service_.WaitForFetch(1));
  ASSERT_TRUE(service_.Push(InferCall("r2")));
  ASSERT_TRUE(service_.WaitForFetch(2));  // both threads are in a call
  ASSERT_TRUE(service_.Push(InferCall("r3")));
  ASSERT_TRUE(service_.Push(InferCall("r4")));
  const int exhausted = static_cast<int>(absl::StatusCode::kResourceExhausted);
  const int not_found = static_cast<int>(absl::StatusCode::kNotFound);
  ASSERT_TRUE(service_.WaitFor([&](const std::vector<WorkerMessage>& m) {
    return ReplyCode(m, "r4") == exhausted;
  }));
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return ReplyCode(m, "r1") == -1 && ReplyCode(m, "r2") == -1 &&
           ReplyCode(m, "r3") == -1;
  }));
  EXPECT_EQ(service_.fetches(), 2);  // r3 waits in the queue

  service_.HoldFetches(false);
  ASSERT_TRUE(service_.WaitFor([&](const std::vector<WorkerMessage>& m) {
    return ReplyCode(m, "r1") == not_found && ReplyCode(m, "r2") == not_found &&
           ReplyCode(m, "r3") == not_found;
  }));
  // Calls one after another, each on an idle worker, all answered.
  for (int i = 0; i < 20; ++i) {
    const std::string id = "s" + std::to_string(i);
    ASSERT_TRUE(service_.Push(InferCall(id)));
    ASSERT_TRUE(service_.WaitFor([&](const std::vector<WorkerMessage>& m) {
      return ReplyCode(m, id) == not_found;
    })) << id;
  }
  EXPECT_TRUE(agent_->Drain(absl::Seconds(5)));
}

// Beyond the first, inference threads start when a call finds every thread
// in a batch, up to the limit, and exit when idle; they start again at the
// next burst.
TEST_F(WorkerAgentTest, ExtraInferenceThreadsStartUnderLoadAndExitWhenIdle) {
  StartAgent([](WorkerAgent::Options* options) {
    options->inference_threads = 3;
    options->max_queued_inferences = 4;
    options->extra_inference_thread_idle = absl::Milliseconds(50);
  });
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return Count(m, WorkerMessage::kHeartbeat) >= 1;
  }));
  const int not_found = static_cast<int>(absl::StatusCode::kNotFound);
  int fetches = 0;
  for (const std::string burst : {"a", "b"}) {
    SCOPED_TRACE(burst);
    service_.HoldFetches(true);
    // Three calls in batches at once: the first thread and two started.
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(service_.Push(InferCall(burst + std::to_string(i))));
      ASSERT_TRUE(service_.WaitForFetch(++fetches));
    }
    // A fourth waits: the limit is three threads.
    ASSERT_TRUE(service_.Push(InferCall(burst + "3")));
    absl::SleepFor(absl::Milliseconds(100));
    EXPECT_EQ(service_.fetches(), fetches);
    service_.HoldFetches(false);
    ++fetches;
    ASSERT_TRUE(service_.WaitFor([&](const std::vector<WorkerMessage>& m) {
      for (int i = 0; i < 4; ++i) {
        if (ReplyCode(m, burst + std::to_string(i)) != not_found) return false;
      }
      return true;
    }));
    EXPECT_EQ(service_.fetches(), fetches);
    // Long enough for the extra threads to exit.
    absl::SleepFor(absl::Milliseconds(300));
  }
  EXPECT_TRUE(agent_->Drain(absl::Seconds(5)));
}

TEST_F(WorkerAgentTest, ReportsAJobWhoseDatasetCannotBeFetched) {
  StartAgent();
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return Count(m, WorkerMessage::kHeartbeat) >= 1;
  }));
  ServerMessage assign;
  assign.mutable_assign()->set_job_id("job-1");
  assign.mutable_assign()->set_attempt(2);
  assign.mutable_assign()->mutable_spec()->set_kind(tlserve::v1::PRETRAIN);
  tlserve::v1::DatasetPart* part =
      assign.mutable_assign()->mutable_dataset()->add_parts();
  part->set_role(tlserve::v1::TRAIN_IMAGES);
  part->set_sha256(Sha256Hex("not on the server"));
  ASSERT_TRUE(service_.Push(assign));
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    for (const WorkerMessage& msg : m) {
      if (msg.has_finished()) {
        return msg.finished().job_id() == "job-1" &&
               msg.finished().attempt() == 2 && !msg.finished().succeeded() &&
               !msg.finished().cancelled() &&
               msg.finished().error().find("NOT_FOUND") != std::string::npos &&
               msg.finished().error().find("TRAIN_IMAGES") != std::string::npos;
      }
    }
    return false;
  }));
  // The job's scratch folder is gone; the agent takes new work.
  EXPECT_FALSE(fs::exists(dir_ / "agent" / "jobs" / "job-1-a2"));
}

// SIGTERM's path with nothing running: the server is told, and the agent
// stops by itself.
TEST_F(WorkerAgentTest, DrainOfAnIdleWorkerTellsTheServerAndStops) {
  StartAgent();
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return Count(m, WorkerMessage::kHeartbeat) >= 1;
  }));
  std::atomic<bool> drained{false};
  std::thread drainer([&] { drained = agent_->Drain(absl::Seconds(20)); });
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return Count(m, WorkerMessage::kDraining) == 1;
  }));
  drainer.join();
  EXPECT_TRUE(drained);
  runner_.join();  // Run() returns after the drain's Stop()
  agent_.reset();
}

// A drain waits for the running job to hand itself back; an assignment
// that crosses the WorkerDraining message goes straight back, handed back
// so that it costs no attempt.
TEST_F(WorkerAgentTest, DrainWaitsForTheJobAndHandsBackAJobAssignedMeanwhile) {
  StartAgent();
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return Count(m, WorkerMessage::kHeartbeat) >= 1;
  }));
  // A job held in its first step: the dataset download waits for the test.
  service_.HoldFetches(true);
  ServerMessage first;
  first.mutable_assign()->set_job_id("job-1");
  first.mutable_assign()->set_attempt(1);
  first.mutable_assign()->mutable_spec()->set_kind(tlserve::v1::PRETRAIN);
  tlserve::v1::DatasetPart* part =
      first.mutable_assign()->mutable_dataset()->add_parts();
  part->set_role(tlserve::v1::TRAIN_IMAGES);
  part->set_sha256(service_.AddBlob("images"));
  ASSERT_TRUE(service_.Push(first));
  ASSERT_TRUE(service_.WaitForFetch());

  std::atomic<bool> returned{false};
  bool drained = false;
  std::thread drainer([&] {
    drained = agent_->Drain(absl::Seconds(20));
    returned = true;
  });
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    return Count(m, WorkerMessage::kDraining) == 1;
  }));
  ServerMessage second;
  second.mutable_assign()->set_job_id("job-7");
  second.mutable_assign()->set_attempt(3);
  ASSERT_TRUE(service_.Push(second));
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    for (const WorkerMessage& msg : m) {
      if (msg.has_finished() && msg.finished().job_id() == "job-7") {
        return msg.finished().cancelled() && msg.finished().handed_back() &&
               msg.finished().attempt() == 3;
      }
    }
    return false;
  }));
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(returned) << "the drain left a job running";

  service_.HoldFetches(false);
  drainer.join();
  EXPECT_TRUE(drained);
  ASSERT_TRUE(service_.WaitFor([](const std::vector<WorkerMessage>& m) {
    for (const WorkerMessage& msg : m) {
      if (msg.has_finished() && msg.finished().job_id() == "job-1") {
        return msg.finished().cancelled() && msg.finished().handed_back();
      }
    }
    return false;
  }));
  runner_.join();
  agent_.reset();
}

}  // namespace
}  // namespace tlserve::worker
