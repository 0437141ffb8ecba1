#include "server/job_manager.h"

#include <sqlite3.h>

#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/blob_store.h"
#include "server/event_hub.h"
#include "server/store.h"

namespace tlserve {
namespace {

using tlserve::v1::Job;
using tlserve::v1::JobEvent;
using tlserve::v1::JobSpec;

class FakeDispatcher : public JobDispatcher {
 public:
  void JobQueued() override { ++queued; }
  void CancelAttempt(const std::string& worker_id, const std::string& job_id,
                     int attempt) override {
    cancels.push_back(worker_id + "/" + job_id + "/" + std::to_string(attempt));
  }
  int ConnectedWorkers() override { return workers; }
  int queued = 0;
  int workers = 0;
  std::vector<std::string> cancels;
};

std::string MakeTempDir() {
  std::string tmpl = testing::TempDir() + "/jm_XXXXXX";
  char* dir = mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr);
  return tmpl;
}

class JobManagerTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    store_ = *Store::Open(dir_ + "/tlserve.db");
    blobs_ = *BlobStore::Open(dir_ + "/blobs");
    tlserve::v1::Dataset dataset;
    dataset.set_id("ds-1");
    dataset.set_name("three classes");
    dataset.set_format(tlserve::v1::IDX);
    for (const char* name : {"a", "b", "c"}) dataset.add_class_names(name);
    for (int count : {10, 10, 0}) dataset.add_train_class_counts(count);
    dataset.set_train_count(20);
    dataset.set_channels(1);
    ASSERT_TRUE(store_->PutDataset(dataset).ok());
    tlserve::v1::Backbone backbone;
    backbone.set_id("bb-1");
    backbone.set_sha256(std::string(64, 'a'));
    backbone.mutable_input_spec()->set_channels(1);
    for (const char* block : {"stem", "layer1", "layer2"}) backbone.add_blocks(block);
    ASSERT_TRUE(store_->PutBackbone(backbone).ok());
    MakeManager();
  }
  void TearDown() override {
    manager_.reset();
    store_.reset();
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  void MakeManager() {
    JobManager::Options options;
    options.now = [this] { return now_; };
    manager_ = std::make_unique<JobManager>(options, store_.get(), blobs_.get(), &hub_);
    manager_->set_dispatcher(&dispatcher_);
  }
  JobSpec Spec(int priority = 0) {
    JobSpec spec;
    spec.set_kind(tlserve::v1::FINE_TUNE);
    spec.mutable_data()->set_dataset_id("ds-1");
    spec.mutable_data()->add_class_subset(0);
    spec.mutable_data()->add_class_subset(1);
    spec.set_backbone_id("bb-1");
    spec.set_priority(priority);
    return spec;
  }
  std::vector<JobEvent> Events(const std::string& id) {
    return *store_->ListEvents(id, 0, 1000);
  }
  tlserve::v1::AssignJob Claim(const std::string& worker) {
    auto claimed = manager_->ClaimNextJob(worker, "cpu");
    EXPECT_TRUE(claimed.ok()) << claimed.status();
    EXPECT_TRUE(claimed->has_value());
    return **claimed;
  }

  std::string dir_;
  absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
  std::unique_ptr<Store> store_;
  std::unique_ptr<BlobStore> blobs_;
  EventHub hub_;
  FakeDispatcher dispatcher_;
  std::unique_ptr<JobManager> manager_;
};

TEST_F(JobManagerTest, CreateFillsDefaultsAndRecordsValidatingThenQueued) {
  auto job = manager_->CreateJob(Spec(), "");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), tlserve::v1::QUEUED);
  EXPECT_EQ(job->spec().epochs(), 10);
  EXPECT_EQ(job->spec().optimizer().kind(), tlserve::v1::OptimizerSpec::ADAMW);
  EXPECT_EQ(job->spec().freeze().mode(), tlserve::v1::FreezePolicy::FROZEN);
  EXPECT_EQ(dispatcher_.queued, 1);
  auto events = Events(job->id());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].state_change().to(), tlserve::v1::VALIDATING);
  EXPECT_EQ(events[1].state_change().to(), tlserve::v1::QUEUED);
  EXPECT_LT(events[0].sequence(), events[1].sequence());
}

TEST_F(JobManagerTest, RejectsBadSpecsNamingTheField) {
  JobSpec bad_lr = Spec();
  bad_lr.mutable_optimizer()->set_learning_rate(-1);
  auto r = manager_->CreateJob(bad_lr, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "learning_rate"));

  JobSpec empty_class = Spec();
  empty_class.mutable_data()->add_class_subset(2);  // no training images
  r = manager_->CreateJob(empty_class, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "no training images"));

  JobSpec unknown_backbone = Spec();
  unknown_backbone.set_backbone_id("bb-missing");
  r = manager_->CreateJob(unknown_backbone, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "spec.backbone_id"));

  JobSpec too_many_blocks = Spec();
  too_many_blocks.mutable_freeze()->set_mode(tlserve::v1::FreezePolicy::LAST_N_BLOCKS);
  too_many_blocks.mutable_freeze()->set_n_blocks(4);
  r = manager_->CreateJob(too_many_blocks, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "n_blocks"));

  // The training recipe is checked before any worker time is spent.
  JobSpec bad_unfreeze = Spec();
  auto* step = bad_unfreeze.mutable_freeze()->add_gradual_unfreeze();
  step->set_epoch(500);  // beyond the job's epochs
  step->set_n_blocks(1);
  r = manager_->CreateJob(bad_unfreeze, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(),
                                "spec.freeze.gradual_unfreeze[0]"))
      << r.status();

  auto page = store_->ListJobs(tlserve::v1::JOB_STATE_UNSPECIFIED, 100, "");
  EXPECT_TRUE(page->items.empty()) << "refused jobs must not be stored";
}

// Found by tests/fuzz/job_spec_fuzzer: range checks written as
// `x < lo || x >= hi` let NaN through (and `x < 0` let +inf through), so
// such a job reached a worker and trained NaN weights.
TEST_F(JobManagerTest, RejectsNanAndInfiniteNumbersNamingTheField) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    std::function<void(JobSpec*)> set;
    const char* field;
  };
  const std::vector<Case> cases = {
      {[&](JobSpec* s) { s->mutable_optimizer()->set_momentum(nan); },
       "spec.optimizer.momentum"},
      {[&](JobSpec* s) { s->mutable_optimizer()->set_weight_decay(nan); },
       "spec.optimizer.weight_decay"},
      {[&](JobSpec* s) { s->mutable_optimizer()->set_weight_decay(inf); },
       "spec.optimizer.weight_decay"},
      {[&](JobSpec* s) { s->mutable_head()->set_dropout(nan); },
       "spec.head.dropout"},
      {[&](JobSpec* s) { s->mutable_data()->set_validation_fraction(nan); },
       "spec.data.validation_fraction"},
  };
  for (const Case& c : cases) {
    JobSpec spec = Spec();
    c.set(&spec);
    auto r = manager_->CreateJob(spec, "");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_TRUE(absl::StrContains(r.status().message(), c.field))
        << r.status();
  }
  EXPECT_EQ(dispatcher_.queued, 0);
}

TEST_F(JobManagerTest, RequestIdMakesCreateIdempotent) {
  auto first = manager_->CreateJob(Spec(), "req-1");
  auto second = manager_->CreateJob(Spec(), "req-1");
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(first->id(), second->id());
  EXPECT_EQ(store_->ListJobs(tlserve::v1::JOB_STATE_UNSPECIFIED, 100, "")->items.size(), 1u);
}

TEST_F(JobManagerTest, QueueRunsHigherPriorityFirstThenFifo) {
  std::string low1 = manager_->CreateJob(Spec(0), "")->id();
  std::string high = manager_->CreateJob(Spec(5), "")->id();
  std::string low2 = manager_->CreateJob(Spec(0), "")->id();
  EXPECT_EQ(manager_->GetJob(high)->queue_position(), 0);
  EXPECT_EQ(manager_->GetJob(low1)->queue_position(), 1);
  EXPECT_EQ(manager_->GetJob(low2)->queue_position(), 2);
  EXPECT_EQ(Claim("w1").job_id(), high);
  EXPECT_EQ(Claim("w2").job_id(), low1);
  EXPECT_EQ(Claim("w3").job_id(), low2);
}

TEST_F(JobManagerTest, EstimatesStartOnlyWithWorkers) {
  std::string a = manager_->CreateJob(Spec(), "")->id();
  std::string b = manager_->CreateJob(Spec(), "")->id();
  EXPECT_FALSE(manager_->GetJob(b)->has_estimated_start_time());
  dispatcher_.workers = 1;
  auto ja = *manager_->GetJob(a);
  auto jb = *manager_->GetJob(b);
  ASSERT_TRUE(ja.has_estimated_start_time());
  ASSERT_TRUE(jb.has_estimated_start_time());
  EXPECT_EQ(FromProtoTime(ja.estimated_start_time()), now_);
  // One worker, default estimate of 2 minutes per job.
  EXPECT_EQ(FromProtoTime(jb.estimated_start_time()), now_ + absl::Minutes(2));
  dispatcher_.workers = 2;
  EXPECT_EQ(FromProtoTime(manager_->GetJob(b)->estimated_start_time()), now_);
}

TEST_F(JobManagerTest, FencesUpdatesFromAStaleAttempt) {
  std::string id = manager_->CreateJob(Spec(), "")->id();
  EXPECT_EQ(Claim("w1").attempt(), 1);
  manager_->OnWorkerLost("w1", "test");
  EXPECT_EQ(manager_->GetJob(id)->state(), tlserve::v1::QUEUED);
  EXPECT_EQ(Claim("w2").attempt(), 2);

  tlserve::v1::JobProgressUpdate stale;
  stale.set_job_id(id);
  stale.set_attempt(1);
  stale.mutable_progress()->set_epoch(3);
  EXPECT_EQ(manager_->OnProgress("w1", stale).code(), absl::StatusCode::kAborted);
  tlserve::v1::JobProgressUpdate wrong_worker = stale;
  wrong_worker.set_attempt(2);
  EXPECT_EQ(manager_->OnProgress("w1", wrong_worker).code(), absl::StatusCode::kAborted);
  tlserve::v1::JobProgressUpdate current = wrong_worker;
  EXPECT_TRUE(manager_->OnProgress("w2", current).ok());
  EXPECT_EQ(manager_->GetJob(id)->progress().epoch(), 3);
}

TEST_F(JobManagerTest, FailsForGoodAfterMaxAttempts) {
  JobSpec spec = Spec();
  spec.set_max_attempts(2);
  std::string id = manager_->CreateJob(spec, "")->id();
  Claim("w1");
  manager_->OnWorkerLost("w1", "crash one");
  Claim("w2");
  manager_->OnWorkerLost("w2", "crash two");
  Job job = *manager_->GetJob(id);
  EXPECT_EQ(job.state(), tlserve::v1::FAILED);
  EXPECT_TRUE(absl::StrContains(job.error(), "crash two")) << job.error();
  EXPECT_TRUE(absl::StrContains(job.error(), "2 of 2")) << job.error();
}

// Attempts handed back by stopping workers are not failures: a job with
// two attempts survives any number of them, and only crashes use attempts.
TEST_F(JobManagerTest, HandedBackAttemptsDoNotCountAgainstMaxAttempts) {
  JobSpec spec = Spec();
  spec.set_max_attempts(2);
  std::string id = manager_->CreateJob(spec, "")->id();
  for (int i = 1; i <= 3; ++i) {
    const std::string worker = absl::StrCat("w", i);
    tlserve::v1::AssignJob assign = Claim(worker);
    EXPECT_EQ(assign.attempt(), i);
    tlserve::v1::JobFinished back;
    back.set_job_id(id);
    back.set_attempt(i);
    back.set_cancelled(true);
    back.set_handed_back(true);
    ASSERT_TRUE(manager_->OnFinished(worker, back).ok());
    Job job = *manager_->GetJob(id);
    EXPECT_EQ(job.state(), tlserve::v1::QUEUED) << job.error();
    EXPECT_EQ(job.handed_back_attempts(), i);
    EXPECT_TRUE(absl::StrContains(
        Events(id).back().state_change().reason(),
        absl::StrCat("worker ", worker, " handed back attempt ", i,
                     " as it stopped (no checkpoint yet")))
        << Events(id).back().state_change().reason();
  }
  Claim("w4");
  manager_->OnWorkerLost("w4", "crash one");
  EXPECT_EQ(manager_->GetJob(id)->state(), tlserve::v1::QUEUED);
  Claim("w5");
  manager_->OnWorkerLost("w5", "crash two");
  Job job = *manager_->GetJob(id);
  EXPECT_EQ(job.state(), tlserve::v1::FAILED);
  EXPECT_TRUE(absl::StrContains(job.error(), "2 of 2 used")) << job.error();
}

TEST_F(JobManagerTest, NextAttemptResumesFromLatestCheckpoint) {
  std::string id = manager_->CreateJob(Spec(), "")->id();
  Claim("w1");
  tlserve::v1::JobEpochDone done;
  done.set_job_id(id);
  done.set_attempt(1);
  done.mutable_metrics()->set_epoch(1);
  done.mutable_checkpoint()->set_epoch(1);
  done.mutable_checkpoint()->set_sha256(std::string(64, 'f'));
  // The checkpoint must be stored first.
  EXPECT_EQ(manager_->OnEpochDone("w1", done).code(),
            absl::StatusCode::kFailedPrecondition);
  std::string sha = *blobs_->Put("checkpoint bytes");
  done.mutable_checkpoint()->set_sha256(sha);
  ASSERT_TRUE(manager_->OnEpochDone("w1", done).ok());
  manager_->OnWorkerLost("w1", "killed");
  tlserve::v1::AssignJob next = Claim("w2");
  EXPECT_EQ(next.attempt(), 2);
  ASSERT_TRUE(next.has_resume_from());
  EXPECT_EQ(next.resume_from().epoch(), 1);
  EXPECT_EQ(next.resume_from().sha256(), sha);
  auto events = Events(id);
  EXPECT_TRUE(absl::StrContains(events.back().state_change().reason(),
                                "resuming from checkpoint of epoch 1"));
  EXPECT_EQ(store_->ListCheckpoints(id)->size(), 1u);
}

// A lost attempt that recorded epochs past its last checkpoint: the next
// attempt trains them again, and its metrics replace the lost ones, so the
// job shows each epoch once.
TEST_F(JobManagerTest, EpochTrainedAgainReplacesTheLostAttemptsMetrics) {
  std::string id = manager_->CreateJob(Spec(), "")->id();
  auto epoch_done = [&](const std::string& worker, int attempt, int epoch,
                        float loss) {
    tlserve::v1::JobEpochDone done;
    done.set_job_id(id);
    done.set_attempt(attempt);
    done.mutable_metrics()->set_epoch(epoch);
    done.mutable_metrics()->set_train_loss(loss);
    if (epoch == 1) {
      done.mutable_checkpoint()->set_epoch(1);
      done.mutable_checkpoint()->set_sha256(*blobs_->Put("epoch 1"));
    }
    return manager_->OnEpochDone(worker, done);
  };
  Claim("w1");
  ASSERT_TRUE(epoch_done("w1", 1, 1, 0.9f).ok());
  ASSERT_TRUE(epoch_done("w1", 1, 2, 0.8f).ok());
  ASSERT_TRUE(epoch_done("w1", 1, 3, 0.7f).ok());
  manager_->OnWorkerLost("w1", "killed");
  EXPECT_EQ(Claim("w2").resume_from().epoch(), 1);
  ASSERT_TRUE(epoch_done("w2", 2, 2, 0.6f).ok());
  Job job = *manager_->GetJob(id);
  ASSERT_EQ(job.metrics_size(), 2);
  EXPECT_EQ(job.metrics(0).epoch(), 1);
  EXPECT_FLOAT_EQ(job.metrics(0).train_loss(), 0.9f);
  EXPECT_EQ(job.metrics(1).epoch(), 2);
  EXPECT_FLOAT_EQ(job.metrics(1).train_loss(), 0.6f);
  ASSERT_TRUE(epoch_done("w2", 2, 3, 0.5f).ok());
  job = *manager_->GetJob(id);
  ASSERT_EQ(job.metrics_size(), 3);
  EXPECT_FLOAT_EQ(job.metrics(2).train_loss(), 0.5f);
}

TEST_F(JobManagerTest, CheckpointInsideAnEpochIsWhereTheNextAttemptResumes) {
  std::string id = manager_->CreateJob(Spec(), "")->id();
  Claim("w1");
  tlserve::v1::JobCheckpointSaved saved;
  saved.set_job_id(id);
  saved.set_attempt(1);
  saved.mutable_checkpoint()->set_epoch(2);
  saved.mutable_checkpoint()->set_batch(17);
  saved.mutable_checkpoint()->set_sha256(std::string(64, 'e'));
  EXPECT_EQ(manager_->OnCheckpointSaved("w1", saved).code(),
            absl::StatusCode::kFailedPrecondition);
  // Another worker's report is fenced off.
  saved.mutable_checkpoint()->set_sha256(*blobs_->Put("mid-epoch bytes"));
  EXPECT_FALSE(manager_->OnCheckpointSaved("w9", saved).ok());
  ASSERT_TRUE(manager_->OnCheckpointSaved("w1", saved).ok());
  Job job = *manager_->GetJob(id);
  EXPECT_EQ(job.latest_checkpoint().batch(), 17);
  EXPECT_TRUE(job.metrics().empty());  // no epoch ended
  EXPECT_TRUE(Events(id).back().has_checkpoint());

  manager_->OnWorkerLost("w1", "killed");
  tlserve::v1::AssignJob next = Claim("w2");
  EXPECT_EQ(next.resume_from().epoch(), 2);
  EXPECT_EQ(next.resume_from().batch(), 17);
  EXPECT_TRUE(absl::StrContains(
      Events(id).back().state_change().reason(),
      "resuming from checkpoint of epoch 2 + 17 batches of epoch 3"))
      << Events(id).back().state_change().reason();
  ASSERT_EQ(store_->ListCheckpoints(id)->size(), 1u);
  EXPECT_EQ((*store_->ListCheckpoints(id))[0].batch(), 17);
}

TEST_F(JobManagerTest, CancelOfRunningJobTellsTheWorkerAndFencesIt) {
  std::string id = manager_->CreateJob(Spec(), "")->id();
  Claim("w1");
  auto cancelled = manager_->CancelJob(id);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state(), tlserve::v1::CANCELLED);
  EXPECT_THAT(dispatcher_.cancels, testing::ElementsAre("w1/" + id + "/1"));
  tlserve::v1::JobFinished finished;
  finished.set_job_id(id);
  finished.set_attempt(1);
  finished.set_cancelled(true);
  EXPECT_EQ(manager_->OnFinished("w1", finished).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(manager_->CancelJob(id).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(JobManagerTest, RestartSendsRunningJobsBackToTheQueue) {
  std::string id = manager_->CreateJob(Spec(), "")->id();
  Claim("w1");
  MakeManager();  // a new server process on the same store
  ASSERT_TRUE(manager_->RecoverAfterRestart().ok());
  Job job = *manager_->GetJob(id);
  EXPECT_EQ(job.state(), tlserve::v1::QUEUED);
  EXPECT_TRUE(absl::StrContains(Events(id).back().state_change().reason(),
                                "server restarted"));
  EXPECT_THAT(manager_->StaleJobsOf("w1", {id}), testing::ElementsAre(id));
}

TEST_F(JobManagerTest, SuccessRegistersTheModel) {
  std::string id = manager_->CreateJob(Spec(), "")->id();
  Claim("w1");
  tlserve::v1::JobFinished finished;
  finished.set_job_id(id);
  finished.set_attempt(1);
  finished.set_succeeded(true);
  finished.set_artifact_sha256(*blobs_->Put("model bytes"));
  finished.set_artifact_size_bytes(11);
  finished.add_class_names("a");
  finished.add_class_names("b");
  finished.mutable_result()->set_test_accuracy(0.75f);
  ASSERT_TRUE(manager_->OnFinished("w1", finished).ok());
  Job job = *manager_->GetJob(id);
  EXPECT_EQ(job.state(), tlserve::v1::SUCCEEDED);
  EXPECT_FLOAT_EQ(job.result().test_accuracy(), 0.75f);
  auto model = store_->GetModel(job.result().model_id());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->job_id(), id);
  EXPECT_EQ(model->class_names_size(), 2);
}

// A reported checkpoint, and a finished job's model, are stored in the
// transaction that stores the job. When that write fails, as when the
// server dies half-way, neither is left behind: the job's next attempt
// makes the only model (a model stored on its own made a second one in the
// chaos test). The failure: a trigger on the jobs table, from a second
// connection.
TEST_F(JobManagerTest, CheckpointsAndTheModelAreStoredOnlyWithTheirJob) {
  std::string id = manager_->CreateJob(Spec(), "")->id();
  Claim("w1");
  auto exec = [&](const char* sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir_ + "/tlserve.db").c_str(), &db), SQLITE_OK);
    char* error = nullptr;
    EXPECT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, &error), SQLITE_OK)
        << (error != nullptr ? error : "");
    sqlite3_free(error);
    sqlite3_close(db);
  };
  exec("CREATE TRIGGER fail_job_write BEFORE UPDATE ON jobs "
       "BEGIN SELECT RAISE(ABORT, 'injected failure'); END");

  tlserve::v1::JobCheckpointSaved saved;
  saved.set_job_id(id);
  saved.set_attempt(1);
  saved.mutable_checkpoint()->set_epoch(1);
  saved.mutable_checkpoint()->set_sha256(*blobs_->Put("checkpoint bytes"));
  EXPECT_FALSE(manager_->OnCheckpointSaved("w1", saved).ok());
  EXPECT_TRUE(store_->ListCheckpoints(id)->empty());

  tlserve::v1::JobFinished finished;
  finished.set_job_id(id);
  finished.set_attempt(1);
  finished.set_succeeded(true);
  finished.set_artifact_sha256(*blobs_->Put("model bytes"));
  finished.set_artifact_size_bytes(11);
  finished.add_class_names("a");
  finished.add_class_names("b");
  absl::Status stored = manager_->OnFinished("w1", finished);
  EXPECT_TRUE(absl::StrContains(stored.message(), "injected failure")) << stored;
  EXPECT_TRUE(store_->ListModels(100, "")->items.empty());
  EXPECT_EQ(manager_->GetJob(id)->state(), tlserve::v1::RUNNING);

  exec("DROP TRIGGER fail_job_write");
  manager_->OnWorkerLost("w1", "killed");
  Claim("w2");
  ASSERT_TRUE(manager_->OnCheckpointSaved("w2", [&] {
                saved.set_attempt(2);
                return saved;
              }()).ok());
  EXPECT_EQ(store_->ListCheckpoints(id)->size(), 1u);
  finished.set_attempt(2);
  ASSERT_TRUE(manager_->OnFinished("w2", finished).ok());
  Job job = *manager_->GetJob(id);
  EXPECT_EQ(job.state(), tlserve::v1::SUCCEEDED);
  auto models = store_->ListModels(100, "");
  ASSERT_EQ(models->items.size(), 1u);
  EXPECT_EQ(models->items[0].id(), job.result().model_id());
  EXPECT_EQ(models->items[0].job_id(), id);
}

// Deleting: only a finished job, with everything of it but its model; its
// request id then makes a new job. A model only once undeployed. Finished
// jobs keep the checkpoints their spec (or the server) asks for.
TEST_F(JobManagerTest, DeletesFinishedJobsAndUndeployedModelsOnly) {
  JobSpec spec = Spec();
  spec.set_keep_checkpoints(1);
  std::string id = manager_->CreateJob(spec, "request-1")->id();
  EXPECT_EQ(manager_->DeleteJob(id).code(), absl::StatusCode::kFailedPrecondition);
  Claim("w1");
  EXPECT_EQ(manager_->DeleteJob(id).code(), absl::StatusCode::kFailedPrecondition);
  for (int epoch = 1; epoch <= 3; ++epoch) {
    tlserve::v1::JobEpochDone done;
    done.set_job_id(id);
    done.set_attempt(1);
    done.mutable_metrics()->set_epoch(epoch);
    done.mutable_checkpoint()->set_epoch(epoch);
    done.mutable_checkpoint()->set_sha256(*blobs_->Put(absl::StrCat("ckpt ", epoch)));
    ASSERT_TRUE(manager_->OnEpochDone("w1", done).ok());
  }
  EXPECT_EQ(store_->ListCheckpoints(id)->size(), 3u);
  tlserve::v1::JobFinished finished;
  finished.set_job_id(id);
  finished.set_attempt(1);
  finished.set_succeeded(true);
  finished.set_artifact_sha256(*blobs_->Put("model bytes"));
  finished.set_artifact_size_bytes(11);
  finished.add_class_names("a");
  ASSERT_TRUE(manager_->OnFinished("w1", finished).ok());
  // keep_checkpoints = 1: the newest stays.
  ASSERT_EQ(store_->ListCheckpoints(id)->size(), 1u);
  EXPECT_EQ((*store_->ListCheckpoints(id))[0].epoch(), 3);

  const std::string model_id = manager_->GetJob(id)->result().model_id();
  ASSERT_TRUE(manager_->DeleteJob(id).ok());
  EXPECT_EQ(manager_->GetJob(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->DeleteJob(id).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->ListCheckpoints(id)->empty());
  EXPECT_TRUE(store_->ListEvents(id, 0, 100)->empty());
  EXPECT_TRUE(store_->GetModel(model_id).ok());
  auto again = manager_->CreateJob(spec, "request-1");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(again->id(), id);

  // A model from a job is deployed at once: deleting it needs an undeploy.
  tlserve::v1::Model model = *store_->GetModel(model_id);
  EXPECT_EQ(store_->DeleteModel(model_id).code(), absl::StatusCode::kFailedPrecondition);
  model.mutable_serving()->set_undeployed(true);
  ASSERT_TRUE(store_->PutModel(model).ok());
  ASSERT_TRUE(store_->DeleteModel(model_id).ok());
  EXPECT_EQ(store_->GetModel(model_id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DeleteModel(model_id).code(), absl::StatusCode::kNotFound);

  JobSpec bad = Spec();
  bad.set_keep_checkpoints(-1);
  EXPECT_EQ(manager_->CreateJob(bad, "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(JobManagerTest, TenantsTrainOnAndSeeOnlyTheirOwn) {
  // ds-1 is the default tenant's: to team-b it does not exist.
  auto foreign = manager_->CreateJob(Spec(), "", "team-b");
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(foreign.status().message(),
                                "dataset 'ds-1' not found"))
      << foreign.status();

  auto job = manager_->CreateJob(Spec(), "req-1");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->tenant(), "default");
  EXPECT_EQ(manager_->GetJob(job->id(), "team-b").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->CancelJob(job->id(), "team-b").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->DeleteJob(job->id(), "team-b").code(),
            absl::StatusCode::kNotFound);
  auto listed = manager_->ListJobs(tlserve::v1::JOB_STATE_UNSPECIFIED, 0, "", "team-b");
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->items.empty());

  // team-b's own dataset; the same request id makes team-b its own job.
  tlserve::v1::Dataset theirs = *store_->GetDataset("ds-1");
  theirs.set_id("ds-b");
  theirs.set_tenant("team-b");
  ASSERT_TRUE(store_->PutDataset(theirs).ok());
  JobSpec spec = Spec();
  spec.mutable_data()->set_dataset_id("ds-b");
  auto job_b = manager_->CreateJob(spec, "req-1", "team-b");
  ASSERT_TRUE(job_b.ok()) << job_b.status();
  EXPECT_NE(job_b->id(), job->id());
  EXPECT_EQ(job_b->tenant(), "team-b");
  listed = manager_->ListJobs(tlserve::v1::JOB_STATE_UNSPECIFIED, 0, "", "team-b");
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->items.size(), 1u);
  EXPECT_EQ(listed->items[0].id(), job_b->id());
  // Workers run every tenant's jobs, each with its own tenant's dataset.
  auto first = Claim("w1");
  auto second = Claim("w2");
  EXPECT_EQ(first.dataset().id(), "ds-1");
  EXPECT_EQ(second.dataset().id(), "ds-b");
}

TEST_F(JobManagerTest, QuotasRefuseJobsPastATenantsLimits) {
  auto quotas = Quotas::FromText("default queued_jobs=2\nbig stored_bytes=1K\n",
                                 "quotas", TenantQuota{});
  ASSERT_TRUE(quotas.ok()) << quotas.status();
  JobManager::Options options;
  options.now = [this] { return now_; };
  options.quotas = *quotas;
  manager_ = std::make_unique<JobManager>(options, store_.get(), blobs_.get(), &hub_);
  manager_->set_dispatcher(&dispatcher_);

  ASSERT_TRUE(manager_->CreateJob(Spec(), "").ok());
  ASSERT_TRUE(manager_->CreateJob(Spec(), "").ok());
  auto third = manager_->CreateJob(Spec(), "");
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(third.status().message(), "2 jobs queued"))
      << third.status();
  Claim("w1");  // one leaves the queue: room for one more
  EXPECT_TRUE(manager_->CreateJob(Spec(), "").ok());

  tlserve::v1::Dataset big = *store_->GetDataset("ds-1");
  big.set_id("ds-big");
  big.set_tenant("big");
  big.add_parts()->set_size_bytes(2048);
  ASSERT_TRUE(store_->PutDataset(big).ok());
  JobSpec spec = Spec();
  spec.mutable_data()->set_dataset_id("ds-big");
  auto over = manager_->CreateJob(spec, "", "big");
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(over.status().message(), "quota of 1024 bytes"))
      << over.status();
  ASSERT_TRUE(store_->DeleteDataset("ds-big", "big").ok());
}

TEST_F(JobManagerTest, FewShotJobsTrainNothingAndRefuseTrainingSettings) {
  JobSpec spec = Spec();
  spec.set_kind(tlserve::v1::FEW_SHOT);
  spec.mutable_data()->set_samples_per_class(5);
  auto job = manager_->CreateJob(spec, "");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->spec().epochs(), 0);
  EXPECT_EQ(job->spec().data().validation_fraction(), 0.0f);
  EXPECT_EQ(job->spec().freeze().mode(), tlserve::v1::FreezePolicy::FROZEN);
  EXPECT_EQ(job->spec().backbone_init(), tlserve::v1::PRETRAINED);
  // A worker gets the backbone with it.
  auto assign = Claim("w1");
  EXPECT_EQ(assign.backbone().sha256(), std::string(64, 'a'));

  auto refused = [&](auto change, const std::string& field) {
    JobSpec bad = spec;
    change(&bad);
    auto r = manager_->CreateJob(bad, "");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_TRUE(absl::StrContains(r.status().message(), field))
        << field << ": " << r.status();
  };
  refused([](JobSpec* s) { s->set_epochs(3); }, "spec.epochs must be 0");
  refused([](JobSpec* s) {
    s->mutable_freeze()->set_mode(tlserve::v1::FreezePolicy::FULL);
  }, "spec.freeze must be FROZEN");
  refused([](JobSpec* s) { s->mutable_head()->add_hidden_sizes(64); },
          "spec.head.hidden_sizes");
  refused([](JobSpec* s) { s->mutable_augment()->set_horizontal_flip(true); },
          "spec.augment");
  refused([](JobSpec* s) { s->set_backbone_init(tlserve::v1::RANDOM); },
          "spec.backbone_init");
  refused([](JobSpec* s) { s->clear_backbone_id(); },
          "spec.backbone_id is required for FEW_SHOT");
}

TEST_F(JobManagerTest, DomainAdaptJobsNeedAnOwnTargetWithTheSameLabels) {
  tlserve::v1::Dataset target = *store_->GetDataset("ds-1");
  target.set_id("ds-target");
  target.set_test_count(12);
  ASSERT_TRUE(store_->PutDataset(target).ok());
  JobSpec spec = Spec();
  spec.set_kind(tlserve::v1::DOMAIN_ADAPT);
  spec.mutable_domain_adapt()->set_target_dataset_id("ds-target");
  auto job = manager_->CreateJob(spec, "");
  ASSERT_TRUE(job.ok()) << job.status();
  // Adaptation moves the features: the backbone trains by default.
  EXPECT_EQ(job->spec().freeze().mode(), tlserve::v1::FreezePolicy::FULL);
  auto assign = Claim("w1");
  EXPECT_EQ(assign.target_dataset().id(), "ds-target");
  EXPECT_EQ(assign.dataset().id(), "ds-1");

  auto refused = [&](auto change, const std::string& field) {
    JobSpec bad = spec;
    change(&bad);
    auto r = manager_->CreateJob(bad, "");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_TRUE(absl::StrContains(r.status().message(), field))
        << field << ": " << r.status();
  };
  refused([](JobSpec* s) { s->mutable_domain_adapt()->clear_target_dataset_id(); },
          "spec.domain_adapt.target_dataset_id is required");
  refused([](JobSpec* s) {
    s->mutable_domain_adapt()->set_target_dataset_id("ds-1");
  }, "names the source dataset itself");
  refused([](JobSpec* s) {
    s->mutable_domain_adapt()->set_target_dataset_id("ds-nowhere");
  }, "dataset 'ds-nowhere' not found");
  refused([](JobSpec* s) {
    s->mutable_freeze()->set_mode(tlserve::v1::FreezePolicy::FROZEN);
  }, "spec.freeze must let the backbone train");
  refused([](JobSpec* s) { s->mutable_domain_adapt()->set_domain_loss_weight(-1); },
          "spec.domain_adapt.domain_loss_weight");
  refused([](JobSpec* s) {
    s->set_kind(tlserve::v1::FINE_TUNE);
  }, "spec.domain_adapt is for DOMAIN_ADAPT jobs only");

  // Another label set, or no test split to measure on.
  tlserve::v1::Dataset other = target;
  other.set_id("ds-other-labels");
  other.set_class_names(0, "zebra");
  ASSERT_TRUE(store_->PutDataset(other).ok());
  refused([](JobSpec* s) {
    s->mutable_domain_adapt()->set_target_dataset_id("ds-other-labels");
  }, "must share the label set");
  tlserve::v1::Dataset untested = target;
  untested.set_id("ds-untested");
  untested.set_test_count(0);
  ASSERT_TRUE(store_->PutDataset(untested).ok());
  refused([](JobSpec* s) {
    s->mutable_domain_adapt()->set_target_dataset_id("ds-untested");
  }, "has no test split");
  // Another tenant's target does not exist for this one.
  tlserve::v1::Dataset foreign = target;
  foreign.set_id("ds-foreign");
  foreign.set_tenant("team-b");
  ASSERT_TRUE(store_->PutDataset(foreign).ok());
  refused([](JobSpec* s) {
    s->mutable_domain_adapt()->set_target_dataset_id("ds-foreign");
  }, "dataset 'ds-foreign' not found");
}

}  // namespace
}  // namespace tlserve
