#include "server/scheduler.h"

#include <cstdlib>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "server/blob_store.h"
#include "server/event_hub.h"
#include "server/job_manager.h"
#include "server/store.h"

namespace tlserve {
namespace {

using tlserve::v1::ServerMessage;

class FakeChannel : public WorkerChannel {
 public:
  bool Send(const ServerMessage& message) override {
    absl::MutexLock lock(&mu);
    if (closed) return false;
    sent.push_back(message);
    return true;
  }
  void Close(const absl::Status& why) override {
    absl::MutexLock lock(&mu);
    closed = true;
    close_status = why;
  }
  // Waits up to 5 s for a message of the given kind.
  bool WaitFor(ServerMessage::MsgCase kind, ServerMessage* out = nullptr) {
    absl::MutexLock lock(&mu);
    auto has = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) {
      for (const auto& m : sent) if (m.msg_case() == kind) return true;
      return false;
    };
    if (!mu.AwaitWithTimeout(absl::Condition(&has), absl::Seconds(5))) return false;
    for (const auto& m : sent) {
      if (m.msg_case() == kind && out != nullptr) *out = m;
    }
    return true;
  }
  bool IsClosed() {
    absl::MutexLock lock(&mu);
    return closed;
  }
  absl::Mutex mu;
  std::vector<ServerMessage> sent ABSL_GUARDED_BY(mu);
  bool closed ABSL_GUARDED_BY(mu) = false;
  absl::Status close_status ABSL_GUARDED_BY(mu);
};

class SchedulerTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = testing::TempDir() + "/sched_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    store_ = *Store::Open(dir_ + "/tlserve.db");
    blobs_ = *BlobStore::Open(dir_ + "/blobs");
    tlserve::v1::Dataset dataset;
    dataset.set_id("ds-1");
    dataset.add_class_names("a");
    dataset.add_class_names("b");
    dataset.add_train_class_counts(5);
    dataset.add_train_class_counts(5);
    ASSERT_TRUE(store_->PutDataset(dataset).ok());
    jobs_ = std::make_unique<JobManager>(JobManager::Options{}, store_.get(),
                                         blobs_.get(), &hub_);
    Scheduler::Options options;
    options.lease = absl::Seconds(10);
    options.now = [this] {
      absl::MutexLock lock(&clock_mu_);
      return now_;
    };
    scheduler_ = std::make_unique<Scheduler>(options, jobs_.get());
    jobs_->set_dispatcher(scheduler_.get());
    scheduler_->Start();
  }
  void TearDown() override {
    scheduler_.reset();
    jobs_.reset();
    store_.reset();
    ASSERT_EQ(std::system(("rm -rf '" + dir_ + "'").c_str()), 0);
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&clock_mu_);
    now_ += d;
  }
  std::string CreatePretrainJob() {
    tlserve::v1::JobSpec spec;
    spec.set_kind(tlserve::v1::PRETRAIN);
    spec.mutable_data()->set_dataset_id("ds-1");
    spec.mutable_pretrain()->set_backbone_name("source");
    auto job = jobs_->CreateJob(spec, "");
    EXPECT_TRUE(job.ok()) << job.status();
    return job->id();
  }
  std::shared_ptr<FakeChannel> Connect(const std::string& id) {
    auto channel = std::make_shared<FakeChannel>();
    tlserve::v1::RegisterWorker hello;
    hello.set_worker_id(id);
    hello.set_device("cpu");
    EXPECT_TRUE(scheduler_->Connect(hello, channel).ok());
    return channel;
  }
  bool WaitForState(const std::string& id, tlserve::v1::JobState state) {
    for (int i = 0; i < 500; ++i) {
      if (store_->GetJob(id)->state() == state) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  std::string dir_;
  absl::Mutex clock_mu_;
  absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
  std::unique_ptr<Store> store_;
  std::unique_ptr<BlobStore> blobs_;
  EventHub hub_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, PushesAQueuedJobToAnIdleWorker) {
  std::string id = CreatePretrainJob();
  auto channel = Connect("w1");
  ASSERT_TRUE(channel->WaitFor(ServerMessage::kRegistered));
  ServerMessage assign;
  ASSERT_TRUE(channel->WaitFor(ServerMessage::kAssign, &assign));
  EXPECT_EQ(assign.assign().job_id(), id);
  EXPECT_EQ(assign.assign().attempt(), 1);
  EXPECT_EQ(store_->GetJob(id)->state(), tlserve::v1::RUNNING);
}

TEST_F(SchedulerTest, GivesABusyWorkerNoSecondJob) {
  std::string first = CreatePretrainJob();
  std::string second = CreatePretrainJob();
  auto channel = Connect("w1");
  ASSERT_TRUE(channel->WaitFor(ServerMessage::kAssign));
  absl::SleepFor(absl::Milliseconds(600));
  EXPECT_EQ(store_->GetJob(second)->state(), tlserve::v1::QUEUED);
  // The worker reports the first job done (failed); the second one follows.
  tlserve::v1::WorkerMessage finished;
  finished.mutable_finished()->set_job_id(first);
  finished.mutable_finished()->set_attempt(1);
  finished.mutable_finished()->set_error("boom");
  scheduler_->OnMessage("w1", finished);
  EXPECT_TRUE(WaitForState(second, tlserve::v1::RUNNING));
  EXPECT_EQ(store_->GetJob(first)->state(), tlserve::v1::FAILED);
}

// A draining worker hands its job back; the job goes to another worker, the
// draining one gets nothing new and leaves the inference routing set.
TEST_F(SchedulerTest, DrainingWorkerGetsNoWorkAndItsJobMovesOn) {
  auto w1 = Connect("w1");
  std::string id = CreatePretrainJob();
  ASSERT_TRUE(w1->WaitFor(ServerMessage::kAssign));
  tlserve::v1::WorkerMessage draining;
  draining.mutable_draining()->set_reason("asked to stop");
  scheduler_->OnMessage("w1", draining);
  tlserve::v1::WorkerMessage back;
  back.mutable_finished()->set_job_id(id);
  back.mutable_finished()->set_attempt(1);
  back.mutable_finished()->set_cancelled(true);
  back.mutable_finished()->set_handed_back(true);
  scheduler_->OnMessage("w1", back);
  EXPECT_TRUE(WaitForState(id, tlserve::v1::QUEUED));
  absl::SleepFor(absl::Milliseconds(600));
  // Idle, connected, and still not given the queued job.
  EXPECT_EQ(store_->GetJob(id)->state(), tlserve::v1::QUEUED);
  std::vector<std::string> routed;
  for (const auto& w : scheduler_->Workers()) routed.push_back(w.id);
  EXPECT_TRUE(routed.empty());

  auto w2 = Connect("w2");
  ServerMessage assign;
  ASSERT_TRUE(w2->WaitFor(ServerMessage::kAssign, &assign));
  EXPECT_EQ(assign.assign().job_id(), id);
  EXPECT_EQ(assign.assign().attempt(), 2);
  EXPECT_EQ(store_->GetJob(id)->handed_back_attempts(), 1);
  {
    absl::MutexLock lock(&w1->mu);
    int assigns = 0;
    for (const auto& m : w1->sent) assigns += m.has_assign();
    EXPECT_EQ(assigns, 1);
  }
  // Server shutdown closes every worker stream with UNAVAILABLE.
  scheduler_->CloseAllWorkers("tlserve is shutting down");
  EXPECT_TRUE(w1->IsClosed());
  EXPECT_TRUE(w2->IsClosed());
  absl::MutexLock lock(&w2->mu);
  EXPECT_TRUE(absl::IsUnavailable(w2->close_status));
}

TEST_F(SchedulerTest, SilentWorkerLosesItsLeaseAndTheJobIsRequeued) {
  auto channel = Connect("w1");
  std::string id = CreatePretrainJob();
  ASSERT_TRUE(channel->WaitFor(ServerMessage::kAssign));
  Advance(absl::Seconds(11));
  EXPECT_TRUE(WaitForState(id, tlserve::v1::QUEUED));
  EXPECT_TRUE(channel->IsClosed());
  EXPECT_EQ(scheduler_->ConnectedWorkers(), 0);
  // Another worker picks it up as attempt 2.
  auto second = Connect("w2");
  ServerMessage assign;
  ASSERT_TRUE(second->WaitFor(ServerMessage::kAssign, &assign));
  EXPECT_EQ(assign.assign().attempt(), 2);
}

TEST_F(SchedulerTest, HeartbeatsKeepTheLease) {
  auto channel = Connect("w1");
  std::string id = CreatePretrainJob();
  ASSERT_TRUE(channel->WaitFor(ServerMessage::kAssign));
  tlserve::v1::WorkerMessage beat;
  beat.mutable_heartbeat();
  for (int i = 0; i < 4; ++i) {
    Advance(absl::Seconds(5));
    scheduler_->OnMessage("w1", beat);
  }
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_FALSE(channel->IsClosed());
  EXPECT_EQ(store_->GetJob(id)->state(), tlserve::v1::RUNNING);
}

TEST_F(SchedulerTest, ClosedStreamRequeuesAndReconnectStopsStaleAttempt) {
  auto channel = Connect("w1");
  std::string id = CreatePretrainJob();
  ASSERT_TRUE(channel->WaitFor(ServerMessage::kAssign));
  scheduler_->Disconnect("w1", channel.get(), "stream closed");
  EXPECT_TRUE(WaitForState(id, tlserve::v1::QUEUED) ||
              store_->GetJob(id)->state() == tlserve::v1::RUNNING);
  // The same worker comes back still running attempt 1: it is told to stop.
  auto again = std::make_shared<FakeChannel>();
  tlserve::v1::RegisterWorker hello;
  hello.set_worker_id("w1");
  hello.add_running_job_ids(id);
  ASSERT_TRUE(scheduler_->Connect(hello, again).ok());
  ServerMessage cancel;
  ASSERT_TRUE(again->WaitFor(ServerMessage::kCancel, &cancel));
  EXPECT_EQ(cancel.cancel().job_id(), id);
}

}  // namespace
}  // namespace tlserve
