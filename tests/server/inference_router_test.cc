// The dynamic batcher against the real scheduler, with fake worker streams
// the test answers by hand: batching under load, queue bounds, deadlines,
// routing and retries on worker loss.
#include "server/inference_router.h"

#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "server/blob_store.h"
#include "server/event_hub.h"
#include "server/job_manager.h"
#include "server/store.h"

namespace tlserve {
namespace {

using ::testing::HasSubstr;
using tlserve::v1::InferenceCall;
using tlserve::v1::InferenceReply;
using tlserve::v1::PredictRequest;
using tlserve::v1::PredictResponse;
using tlserve::v1::ServerMessage;

// A worker stream that keeps the batches it is sent.
class FakeWorker : public WorkerChannel {
 public:
  bool Send(const ServerMessage& message) override {
    absl::MutexLock lock(&mu_);
    if (closed_) return false;
    if (message.has_infer()) calls_.push_back(message.infer());
    return true;
  }
  void Close(const absl::Status&) override {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  // The n-th batch (0-based), waiting up to 5 s for it.
  std::optional<InferenceCall> Batch(size_t n) {
    absl::MutexLock lock(&mu_);
    auto has = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return calls_.size() > n; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&has), absl::Seconds(5))) {
      return std::nullopt;
    }
    return calls_[n];
  }
  size_t BatchCount() {
    absl::MutexLock lock(&mu_);
    return calls_.size();
  }

 private:
  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<InferenceCall> calls_ ABSL_GUARDED_BY(mu_);
};

// Outcomes of calls, by a caller-chosen tag.
class Outcomes {
 public:
  InferenceRouter::PredictDone Slot(int tag) {
    return [this, tag](absl::StatusOr<PredictResponse> r) {
      absl::MutexLock lock(&mu_);
      EXPECT_EQ(results_.count(tag), 0u) << "call " << tag << " completed twice";
      results_.emplace(tag, std::move(r));
    };
  }
  // The outcome of `tag`, waiting up to `timeout`; nullopt if none came.
  std::optional<absl::StatusOr<PredictResponse>> Get(
      int tag, absl::Duration timeout = absl::Seconds(5)) {
    absl::MutexLock lock(&mu_);
    auto has = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return results_.count(tag) > 0;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&has), timeout)) return std::nullopt;
    return results_.at(tag);
  }
  bool Done(int tag) {
    absl::MutexLock lock(&mu_);
    return results_.count(tag) > 0;
  }

 private:
  absl::Mutex mu_;
  std::map<int, absl::StatusOr<PredictResponse>> results_ ABSL_GUARDED_BY(mu_);
};

// A request tagged by its top_k, which the fake answers echo back.
PredictRequest Request(const std::string& model, int tag, int images = 1) {
  PredictRequest request;
  request.set_model_id(model);
  request.set_top_k(tag);
  for (int i = 0; i < images; ++i) request.add_images("png bytes");
  return request;
}

// What a worker answers: per item, one prediction whose top class index is
// the item's tag.
InferenceReply Answer(const InferenceCall& call) {
  InferenceReply reply;
  reply.set_request_id(call.request_id());
  for (const auto& item : call.items()) {
    auto* result = reply.add_results();
    result->mutable_prediction()->set_model_id(
        call.models(item.model_index()).model_id());
    result->mutable_prediction()->add_predictions()->add_top()->set_index(
        item.request().top_k());
  }
  return reply;
}

std::vector<int> Tags(const InferenceCall& call) {
  std::vector<int> tags;
  for (const auto& item : call.items()) tags.push_back(item.request().top_k());
  return tags;
}

class InferenceRouterTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = testing::TempDir() + "/router_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    store_ = *Store::Open(dir_ + "/tlserve.db");
    blobs_ = *BlobStore::Open(dir_ + "/blobs");
    for (const char* id : {"m1", "m2"}) {
      tlserve::v1::Model model;
      model.set_id(id);
      model.set_sha256(std::string(64, 'a'));
      model.set_size_bytes(10);
      model.add_class_names("a");
      ASSERT_TRUE(store_->PutModel(model).ok());
    }
    jobs_ = std::make_unique<JobManager>(JobManager::Options{}, store_.get(),
                                         blobs_.get(), &hub_);
    scheduler_ = std::make_unique<Scheduler>(Scheduler::Options{}, jobs_.get());
    jobs_->set_dispatcher(scheduler_.get());
    scheduler_->Start();
  }
  void TearDown() override {
    router_.reset();
    scheduler_.reset();
    jobs_.reset();
    store_.reset();
    ASSERT_EQ(std::system(("rm -rf '" + dir_ + "'").c_str()), 0);
  }
  void StartRouter(InferenceRouter::Options options) {
    router_ = std::make_unique<InferenceRouter>(options, store_.get(),
                                                scheduler_.get());
    scheduler_->set_inference_sink(router_.get());
    router_->Start();
  }
  std::shared_ptr<FakeWorker> Connect(const std::string& id) {
    auto worker = std::make_shared<FakeWorker>();
    tlserve::v1::RegisterWorker hello;
    hello.set_worker_id(id);
    hello.set_device("cpu");
    EXPECT_TRUE(scheduler_->Connect(hello, worker).ok());
    return worker;
  }
  void Disconnect(const std::string& id, const FakeWorker* worker) {
    scheduler_->Disconnect(id, worker, "test");
  }
  void Predict(const PredictRequest& request, int tag,
               absl::Duration timeout = absl::Seconds(30)) {
    router_->Predict(request, absl::Now() + timeout, outcomes_.Slot(tag));
  }

  std::string dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<BlobStore> blobs_;
  EventHub hub_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<InferenceRouter> router_;
  Outcomes outcomes_;
};

TEST_F(InferenceRouterTest, SendsAtOnceWhenIdleAndBatchesWhatQueuesWhileBusy) {
  InferenceRouter::Options options;
  options.max_batch_size = 8;
  options.max_batches_per_worker = 1;
  StartRouter(options);
  auto w1 = Connect("w1");

  Predict(Request("m1", 1), 1);
  std::optional<InferenceCall> first = w1->Batch(0);
  ASSERT_TRUE(first.has_value());
  EXPECT_THAT(Tags(*first), testing::ElementsAre(1));
  ASSERT_EQ(first->models_size(), 1);
  EXPECT_EQ(first->models(0).model_id(), "m1");
  EXPECT_EQ(first->models(0).model().sha256(), std::string(64, 'a'));

  // The worker is busy: 11 calls (12 inputs) queue.
  Predict(Request("m1", 2, /*images=*/2), 2);
  for (int tag = 3; tag <= 12; ++tag) Predict(Request("m1", tag), tag);
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(w1->BatchCount(), 1u);
  EXPECT_FALSE(outcomes_.Done(2));

  router_->OnInferenceReply("w1", Answer(*first));
  auto one = outcomes_.Get(1);
  ASSERT_TRUE(one.has_value() && one->ok());
  EXPECT_EQ((*one)->predictions(0).top(0).index(), 1);

  // 8 inputs: tag 2 (two images) and tags 3..8, in arrival order.
  std::optional<InferenceCall> second = w1->Batch(1);
  ASSERT_TRUE(second.has_value());
  EXPECT_THAT(Tags(*second), testing::ElementsAre(2, 3, 4, 5, 6, 7, 8));
  router_->OnInferenceReply("w1", Answer(*second));
  std::optional<InferenceCall> third = w1->Batch(2);
  ASSERT_TRUE(third.has_value());
  EXPECT_THAT(Tags(*third), testing::ElementsAre(9, 10, 11, 12));
  router_->OnInferenceReply("w1", Answer(*third));
  for (int tag = 2; tag <= 12; ++tag) {
    auto r = outcomes_.Get(tag);
    ASSERT_TRUE(r.has_value()) << tag;
    ASSERT_TRUE(r->ok()) << r->status();
    EXPECT_EQ((*r)->predictions(0).top(0).index(), tag);
  }
}

TEST_F(InferenceRouterTest, QueueDelayWaitsToFillABatch) {
  InferenceRouter::Options options;
  options.max_batch_size = 4;
  options.max_queue_delay = absl::Milliseconds(300);
  StartRouter(options);
  auto w1 = Connect("w1");
  const absl::Time start = absl::Now();
  Predict(Request("m1", 1), 1);
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(w1->BatchCount(), 0u) << "went out before the queue delay";
  for (int tag = 2; tag <= 4; ++tag) Predict(Request("m1", tag), tag);
  // Full: goes at once, well before the delay runs out.
  std::optional<InferenceCall> full = w1->Batch(0);
  ASSERT_TRUE(full.has_value());
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(250));
  EXPECT_THAT(Tags(*full), testing::ElementsAre(1, 2, 3, 4));
  // A lone call goes when its delay runs out.
  Predict(Request("m1", 5), 5);
  const absl::Time lone = absl::Now();
  std::optional<InferenceCall> late = w1->Batch(1);
  ASSERT_TRUE(late.has_value());
  EXPECT_GE(absl::Now() - lone, absl::Milliseconds(250));
  EXPECT_THAT(Tags(*late), testing::ElementsAre(5));
}

TEST_F(InferenceRouterTest, RefusesWhatItCannotServe) {
  InferenceRouter::Options options;
  options.max_queue_size = 2;
  options.max_batches_per_worker = 1;
  StartRouter(options);

  // No worker at all.
  Predict(Request("m1", 1), 1);
  auto none = outcomes_.Get(1);
  ASSERT_TRUE(none.has_value());
  EXPECT_EQ(none->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(none->status().message(), HasSubstr("no worker"));

  auto w1 = Connect("w1");
  Predict(Request("nope", 2), 2);
  EXPECT_EQ(outcomes_.Get(2)->status().code(), absl::StatusCode::kNotFound);
  PredictRequest empty;
  empty.set_model_id("m1");
  Predict(empty, 3);
  EXPECT_EQ(outcomes_.Get(3)->status().code(),
            absl::StatusCode::kInvalidArgument);
  PredictRequest both = Request("m1", 0);
  both.mutable_tensor()->add_shape(1);
  Predict(both, 4);
  EXPECT_EQ(outcomes_.Get(4)->status().code(),
            absl::StatusCode::kInvalidArgument);
  Predict(Request("m1", -1), 5);
  EXPECT_EQ(outcomes_.Get(5)->status().code(),
            absl::StatusCode::kInvalidArgument);

  // One in flight, two queued (the bound), the next is refused at once.
  for (int tag = 10; tag <= 12; ++tag) Predict(Request("m1", tag), tag);
  Predict(Request("m1", 13), 13);
  auto full = outcomes_.Get(13, absl::Milliseconds(500));
  ASSERT_TRUE(full.has_value());
  EXPECT_EQ(full->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full->status().message(), HasSubstr("m1"));
  EXPECT_FALSE(outcomes_.Done(11));
}

TEST_F(InferenceRouterTest, BatchesStayWithinTheByteLimit) {
  InferenceRouter::Options options;
  options.max_batches_per_worker = 1;
  options.max_batch_bytes = 1000;
  StartRouter(options);
  auto w1 = Connect("w1");
  auto big = [](int tag, size_t bytes) {
    PredictRequest request = Request("m1", tag, 0);
    request.add_images(std::string(bytes, 'x'));
    return request;
  };
  Predict(big(1, 100), 1);
  ASSERT_TRUE(w1->Batch(0).has_value());
  // Queued while w1 is busy: 600 + 600 bytes do not fit one batch.
  Predict(big(2, 600), 2);
  Predict(big(3, 600), 3);
  // Over the limit alone: refused at once, never queued.
  Predict(big(4, 2000), 4);
  auto refused = outcomes_.Get(4, absl::Milliseconds(500));
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused->status().message(), HasSubstr("byte limit"));

  router_->OnInferenceReply("w1", Answer(*w1->Batch(0)));
  std::optional<InferenceCall> second = w1->Batch(1);
  ASSERT_TRUE(second.has_value());
  EXPECT_THAT(Tags(*second), testing::ElementsAre(2));
  router_->OnInferenceReply("w1", Answer(*second));
  std::optional<InferenceCall> third = w1->Batch(2);
  ASSERT_TRUE(third.has_value());
  EXPECT_THAT(Tags(*third), testing::ElementsAre(3));
}

TEST_F(InferenceRouterTest, DeadlinesExpireQueuedAndInFlightCalls) {
  InferenceRouter::Options options;
  options.max_batches_per_worker = 1;
  StartRouter(options);
  auto w1 = Connect("w1");
  Predict(Request("m1", 1), 1, absl::Milliseconds(100));  // in flight
  ASSERT_TRUE(w1->Batch(0).has_value());
  Predict(Request("m1", 2), 2, absl::Milliseconds(100));  // queued
  Predict(Request("m1", 3), 3, absl::Seconds(30));
  for (int tag : {1, 2}) {
    auto r = outcomes_.Get(tag, absl::Seconds(2));
    ASSERT_TRUE(r.has_value()) << "call " << tag << " hung";
    EXPECT_EQ(r->status().code(), absl::StatusCode::kDeadlineExceeded);
  }
  EXPECT_THAT(outcomes_.Get(2)->status().message(), HasSubstr("in the queue"));
  // The late reply for call 1 is dropped; the slot frees and 3 goes out.
  router_->OnInferenceReply("w1", Answer(*w1->Batch(0)));
  std::optional<InferenceCall> next = w1->Batch(1);
  ASSERT_TRUE(next.has_value());
  EXPECT_THAT(Tags(*next), testing::ElementsAre(3));
}

TEST_F(InferenceRouterTest, SpreadsLoadAndPrefersWorkersHoldingTheModel) {
  InferenceRouter::Options options;
  options.max_batches_per_worker = 1;
  StartRouter(options);
  auto w1 = Connect("w1");
  auto w2 = Connect("w2");
  // Nobody holds m1: it goes to one worker; the next call, with that one
  // busy, goes to the idle other one, which then holds m1 too.
  Predict(Request("m1", 1), 1);
  Predict(Request("m1", 2), 2);
  ASSERT_TRUE(w1->Batch(0).has_value());
  ASSERT_TRUE(w2->Batch(0).has_value());
  router_->OnInferenceReply("w1", Answer(*w1->Batch(0)));
  router_->OnInferenceReply("w2", Answer(*w2->Batch(0)));
  // Nobody holds m2: it goes to the first worker with room (w1). With w1
  // busy on it, a call for m1 goes to w2, which holds m1 and is idle.
  Predict(Request("m2", 3), 3);
  std::optional<InferenceCall> m2 = w1->Batch(1);
  ASSERT_TRUE(m2.has_value());
  EXPECT_THAT(Tags(*m2), testing::ElementsAre(3));
  Predict(Request("m1", 4), 4);
  std::optional<InferenceCall> m1 = w2->Batch(1);
  ASSERT_TRUE(m1.has_value());
  EXPECT_THAT(Tags(*m1), testing::ElementsAre(4));
  EXPECT_EQ(w1->BatchCount(), 2u);
}

TEST_F(InferenceRouterTest, RetriesOnceWhenAWorkerIsLostThenFails) {
  InferenceRouter::Options options;
  options.max_batches_per_worker = 1;
  StartRouter(options);
  auto w1 = Connect("w1");
  Predict(Request("m1", 1), 1);
  ASSERT_TRUE(w1->Batch(0).has_value());
  auto w2 = Connect("w2");
  Disconnect("w1", w1.get());
  // Re-sent to w2, answered there.
  std::optional<InferenceCall> retried = w2->Batch(0);
  ASSERT_TRUE(retried.has_value());
  EXPECT_THAT(Tags(*retried), testing::ElementsAre(1));
  router_->OnInferenceReply("w2", Answer(*retried));
  auto ok = outcomes_.Get(1);
  ASSERT_TRUE(ok.has_value() && ok->ok()) << (ok ? ok->status() : absl::OkStatus());

  // Lost twice: UNAVAILABLE, not a hang.
  Predict(Request("m1", 2), 2);
  ASSERT_TRUE(w2->Batch(1).has_value());
  auto w3 = Connect("w3");
  Disconnect("w2", w2.get());
  std::optional<InferenceCall> again = w3->Batch(0);
  ASSERT_TRUE(again.has_value());
  Disconnect("w3", w3.get());
  auto failed = outcomes_.Get(2);
  ASSERT_TRUE(failed.has_value());
  EXPECT_EQ(failed->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(failed->status().message(), HasSubstr("tried 2 times"));
}

TEST_F(InferenceRouterTest, DeployAppliesPerModelSettingsAndWarmsUp) {
  InferenceRouter::Options options;
  options.max_batch_size = 64;
  options.max_batches_per_worker = 1;
  StartRouter(options);
  auto w1 = Connect("w1");
  tlserve::v1::ServingConfig serving;
  serving.set_max_batch_size(2);
  absl::StatusOr<tlserve::v1::Model> deployed = router_->Deploy("m1", serving);
  ASSERT_TRUE(deployed.ok()) << deployed.status();
  EXPECT_EQ(deployed->serving().max_batch_size(), 2);
  EXPECT_EQ(store_->GetModel("m1")->serving().max_batch_size(), 2);
  // The warm-up: the model, no items.
  std::optional<InferenceCall> warm = w1->Batch(0);
  ASSERT_TRUE(warm.has_value());
  ASSERT_EQ(warm->models_size(), 1);
  EXPECT_EQ(warm->items_size(), 0);
  router_->OnInferenceReply("w1", Answer(*warm));

  Predict(Request("m1", 1), 1);
  std::optional<InferenceCall> first = w1->Batch(1);
  ASSERT_TRUE(first.has_value());
  for (int tag = 2; tag <= 4; ++tag) Predict(Request("m1", tag), tag);
  router_->OnInferenceReply("w1", Answer(*first));
  std::optional<InferenceCall> second = w1->Batch(2);
  ASSERT_TRUE(second.has_value());
  EXPECT_THAT(Tags(*second), testing::ElementsAre(2, 3));  // 2, not 64

  tlserve::v1::ServingConfig bad;
  bad.set_max_batch_size(0);
  EXPECT_EQ(router_->Deploy("m1", bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(router_->Deploy("nope", serving).status().code(),
            absl::StatusCode::kNotFound);
}

// Models s1 and s2 share a frozen backbone (same backbone and digest),
// s3 is on the same backbone but trained it (another digest), m1 has none.
void PutBackboneModels(Store* store) {
  for (const auto& [id, digest] :
       std::vector<std::pair<std::string, std::string>>{
           {"s1", "d1"}, {"s2", "d1"}, {"s3", "d2"}}) {
    tlserve::v1::Model model;
    model.set_id(id);
    model.set_backbone_id("bb1");
    model.set_backbone_digest(digest);
    model.set_sha256(std::string(64, 'b'));
    model.set_size_bytes(10);
    model.add_class_names("a");
    ASSERT_TRUE(store->PutModel(model).ok());
  }
}

std::vector<std::string> ItemModels(const InferenceCall& call) {
  std::vector<std::string> ids;
  for (const auto& item : call.items()) {
    ids.push_back(call.models(item.model_index()).model_id());
  }
  return ids;
}

TEST_F(InferenceRouterTest, ModelsOnASharedBackboneBatchTogether) {
  PutBackboneModels(store_.get());
  InferenceRouter::Options options;
  options.max_batches_per_worker = 1;
  StartRouter(options);
  auto w1 = Connect("w1");
  Predict(Request("m1", 1), 1);
  std::optional<InferenceCall> first = w1->Batch(0);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->models(0).shared_backbone(), "");

  // Queued while the worker is busy, interleaved.
  Predict(Request("s1", 2), 2);
  Predict(Request("s3", 3), 3);
  Predict(Request("s2", 4, /*images=*/2), 4);
  Predict(Request("s1", 5), 5);
  Predict(Request("m1", 6), 6);
  absl::SleepFor(absl::Milliseconds(30));
  router_->OnInferenceReply("w1", Answer(*first));

  // The oldest lane first: s1 and s2 together, each model sent once with
  // the shared key, items pointing at their own model.
  std::optional<InferenceCall> shared = w1->Batch(1);
  ASSERT_TRUE(shared.has_value());
  EXPECT_THAT(Tags(*shared), testing::ElementsAre(2, 4, 5));
  EXPECT_THAT(ItemModels(*shared), testing::ElementsAre("s1", "s2", "s1"));
  ASSERT_EQ(shared->models_size(), 2);
  EXPECT_EQ(shared->models(0).shared_backbone(), "bb1/d1");
  EXPECT_EQ(shared->models(1).shared_backbone(), "bb1/d1");
  router_->OnInferenceReply("w1", Answer(*shared));
  // Then s3 alone (its backbone differs), then m1.
  std::optional<InferenceCall> other = w1->Batch(2);
  ASSERT_TRUE(other.has_value());
  EXPECT_THAT(ItemModels(*other), testing::ElementsAre("s3"));
  EXPECT_EQ(other->models(0).shared_backbone(), "bb1/d2");
  router_->OnInferenceReply("w1", Answer(*other));
  std::optional<InferenceCall> last = w1->Batch(3);
  ASSERT_TRUE(last.has_value());
  EXPECT_THAT(ItemModels(*last), testing::ElementsAre("m1"));
  router_->OnInferenceReply("w1", Answer(*last));

  for (int tag = 1; tag <= 6; ++tag) {
    auto r = outcomes_.Get(tag);
    ASSERT_TRUE(r.has_value()) << tag;
    ASSERT_TRUE(r->ok()) << r->status();
    EXPECT_EQ((*r)->predictions(0).top(0).index(), tag);
  }
  // Each model counts its own rows of the shared batch.
  std::vector<InferenceRouter::ModelStats> s2 = router_->Stats("s2");
  ASSERT_EQ(s2.size(), 1u);
  EXPECT_EQ(s2[0].execution_count, 1u);
  EXPECT_EQ(s2[0].inference_count, 2u);
  EXPECT_EQ(s2[0].batches.count(2), 1u);
  std::vector<InferenceRouter::ModelStats> s1 = router_->Stats("s1");
  ASSERT_EQ(s1.size(), 1u);
  EXPECT_EQ(s1[0].execution_count, 1u);
  EXPECT_EQ(s1[0].inference_count, 2u);
}

TEST_F(InferenceRouterTest, ASharedLaneTakesItsModelsSmallestSettings) {
  PutBackboneModels(store_.get());
  InferenceRouter::Options options;
  options.max_batches_per_worker = 1;
  StartRouter(options);
  auto w1 = Connect("w1");
  tlserve::v1::ServingConfig small;
  small.set_max_batch_size(2);
  ASSERT_TRUE(router_->Deploy("s2", small).ok());
  std::optional<InferenceCall> warm = w1->Batch(0);
  ASSERT_TRUE(warm.has_value());
  EXPECT_EQ(warm->models(0).shared_backbone(), "bb1/d1");
  for (int tag = 1; tag <= 3; ++tag) Predict(Request("s1", tag), tag);
  Predict(Request("s2", 4), 4);
  absl::SleepFor(absl::Milliseconds(30));
  router_->OnInferenceReply("w1", Answer(*warm));
  std::optional<InferenceCall> first = w1->Batch(1);
  ASSERT_TRUE(first.has_value());
  EXPECT_THAT(Tags(*first), testing::ElementsAre(1, 2));  // s2's 2, not 64

  // Undeploying s2 fails its queued call only; s1's stay queued.
  ASSERT_TRUE(router_->Undeploy("s2").ok());
  auto dropped = outcomes_.Get(4);
  ASSERT_TRUE(dropped.has_value());
  EXPECT_EQ(dropped->status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(outcomes_.Done(3));
  router_->OnInferenceReply("w1", Answer(*first));
  // s2 undeployed: the lane is back to the server's batch size.
  std::optional<InferenceCall> second = w1->Batch(2);
  ASSERT_TRUE(second.has_value());
  while (second->items_size() == 0) {  // skip the unload message
    router_->OnInferenceReply("w1", Answer(*second));
    second = w1->Batch(w1->BatchCount() - 1);
    ASSERT_TRUE(second.has_value());
  }
  EXPECT_THAT(Tags(*second), testing::ElementsAre(3));
  router_->OnInferenceReply("w1", Answer(*second));
  for (int tag = 1; tag <= 3; ++tag) {
    auto r = outcomes_.Get(tag);
    ASSERT_TRUE(r.has_value() && r->ok()) << tag;
  }
}

TEST_F(InferenceRouterTest, SharingOffKeepsEveryModelOnItsOwn) {
  PutBackboneModels(store_.get());
  InferenceRouter::Options options;
  options.max_batches_per_worker = 1;
  options.share_backbones = false;
  StartRouter(options);
  auto w1 = Connect("w1");
  Predict(Request("m1", 1), 1);
  std::optional<InferenceCall> first = w1->Batch(0);
  ASSERT_TRUE(first.has_value());
  Predict(Request("s1", 2), 2);
  Predict(Request("s2", 3), 3);
  absl::SleepFor(absl::Milliseconds(30));
  router_->OnInferenceReply("w1", Answer(*first));
  std::optional<InferenceCall> second = w1->Batch(1);
  ASSERT_TRUE(second.has_value());
  EXPECT_THAT(ItemModels(*second), testing::ElementsAre("s1"));
  EXPECT_EQ(second->models(0).shared_backbone(), "");
  router_->OnInferenceReply("w1", Answer(*second));
  std::optional<InferenceCall> third = w1->Batch(2);
  ASSERT_TRUE(third.has_value());
  EXPECT_THAT(ItemModels(*third), testing::ElementsAre("s2"));
  router_->OnInferenceReply("w1", Answer(*third));
  for (int tag = 1; tag <= 3; ++tag) {
    auto r = outcomes_.Get(tag);
    ASSERT_TRUE(r.has_value() && r->ok()) << tag;
  }
}

TEST_F(InferenceRouterTest, UndeployRefusesCallsAndUnloadsWorkers) {
  InferenceRouter::Options options;
  options.max_batches_per_worker = 1;
  StartRouter(options);
  auto w1 = Connect("w1");
  Predict(Request("m1", 1), 1);
  std::optional<InferenceCall> running = w1->Batch(0);
  ASSERT_TRUE(running.has_value());
  Predict(Request("m1", 2), 2);  // queued
  absl::StatusOr<tlserve::v1::Model> undeployed = router_->Undeploy("m1");
  ASSERT_TRUE(undeployed.ok()) << undeployed.status();
  EXPECT_TRUE(store_->GetModel("m1")->serving().undeployed());
  auto queued = outcomes_.Get(2);
  ASSERT_TRUE(queued.has_value());
  EXPECT_EQ(queued->status().code(), absl::StatusCode::kFailedPrecondition);
  std::optional<InferenceCall> unload = w1->Batch(1);
  ASSERT_TRUE(unload.has_value());
  EXPECT_THAT(unload->unload_model_ids(), testing::ElementsAre("m1"));
  // The batch in flight still completes.
  router_->OnInferenceReply("w1", Answer(*running));
  ASSERT_TRUE(outcomes_.Get(1).has_value() && outcomes_.Get(1)->ok());
  Predict(Request("m1", 3), 3);
  auto refused = outcomes_.Get(3);
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused->status().message(), HasSubstr("tlctl model deploy"));
  // Deployed again: served again.
  ASSERT_TRUE(router_->Deploy("m1", {}).ok());
  Predict(Request("m1", 4), 4);
  bool sent = false;
  for (size_t n = 2; n < 4 && !sent; ++n) {
    std::optional<InferenceCall> call = w1->Batch(n);
    if (!call.has_value()) break;
    if (call->items_size() == 0) {  // a warm-up
      router_->OnInferenceReply("w1", Answer(*call));
      continue;
    }
    EXPECT_THAT(Tags(*call), testing::ElementsAre(4));
    sent = true;
  }
  EXPECT_TRUE(sent);
}

// The Prometheus series move with calls and batches, and unknown model
// ids do not become labels.
TEST_F(InferenceRouterTest, MetricsCountCallsByModelAndCodeAndBatches) {
  prometheus::Registry registry;
  InferenceMetrics metrics(registry);
  router_ = std::make_unique<InferenceRouter>(InferenceRouter::Options{},
                                              store_.get(), scheduler_.get());
  scheduler_->set_inference_sink(router_.get());
  router_->set_metrics(&metrics);
  router_->Start();
  auto w1 = Connect("w1");
  Predict(Request("m1", 1, /*images=*/3), 1);
  std::optional<InferenceCall> batch = w1->Batch(0);
  ASSERT_TRUE(batch.has_value());
  InferenceReply reply = Answer(*batch);
  reply.set_compute_seconds(0.25);
  router_->OnInferenceReply("w1", reply);
  ASSERT_TRUE(outcomes_.Get(1).has_value());
  Predict(Request("no-such-model-1", 2), 2);
  Predict(Request("no-such-model-2", 3), 3);
  ASSERT_TRUE(outcomes_.Get(3).has_value());

  std::ostringstream text;
  prometheus::TextSerializer().Serialize(text, registry.Collect());
  const std::string out = text.str();
  EXPECT_THAT(out, HasSubstr(
      "tlserve_inference_requests_total{code=\"OK\",model=\"m1\"} 1"));
  EXPECT_THAT(out, HasSubstr("tlserve_inference_requests_total{code=\"NOT_FOUND\","
                             "model=\"_unknown\"} 2"));
  EXPECT_THAT(out, testing::Not(HasSubstr("no-such-model")));
  EXPECT_THAT(out, HasSubstr(
      "tlserve_inference_batch_size_sum{model=\"m1\"} 3"));
  EXPECT_THAT(out, HasSubstr(
      "tlserve_inference_compute_duration_seconds_sum{model=\"m1\"} 0.25"));
  EXPECT_THAT(out, HasSubstr(
      "tlserve_inference_request_duration_seconds_count{model=\"m1\"} 1"));
  EXPECT_THAT(out, HasSubstr(
      "tlserve_inference_queue_duration_seconds_count{model=\"m1\"} 1"));
  // The router goes before the metrics it writes to.
  scheduler_->set_inference_sink(nullptr);
  router_.reset();
}

TEST_F(InferenceRouterTest, PerItemErrorsStayWithTheirCall) {
  StartRouter(InferenceRouter::Options{});
  auto w1 = Connect("w1");
  Predict(Request("m1", 1), 1);
  std::optional<InferenceCall> batch = w1->Batch(0);
  ASSERT_TRUE(batch.has_value());
  InferenceReply reply = Answer(*batch);
  reply.mutable_results(0)->set_code(
      static_cast<int>(absl::StatusCode::kInvalidArgument));
  reply.mutable_results(0)->set_message("image 0: not a PNG or JPEG");
  router_->OnInferenceReply("w1", reply);
  auto bad = outcomes_.Get(1);
  ASSERT_TRUE(bad.has_value());
  EXPECT_EQ(bad->status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad->status().message(), HasSubstr("image 0"));
}

TEST_F(InferenceRouterTest, ShutdownFailsEverythingPending) {
  InferenceRouter::Options options;
  options.max_batches_per_worker = 1;
  StartRouter(options);
  auto w1 = Connect("w1");
  Predict(Request("m1", 1), 1);
  Predict(Request("m1", 2), 2);
  ASSERT_TRUE(w1->Batch(0).has_value());
  scheduler_->set_inference_sink(nullptr);
  router_.reset();
  for (int tag : {1, 2}) {
    auto r = outcomes_.Get(tag, absl::Milliseconds(100));
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status().code(), absl::StatusCode::kUnavailable);
  }
}

}  // namespace
}  // namespace tlserve
