// Chaos through real processes on loopback: while a stream of fine-tune
// jobs runs on two workers, a random worker or the server is SIGKILLed at
// random moments and started again, and the blob collector runs every
// second. Afterwards every job the server
// acknowledged has succeeded exactly once, every stored checkpoint and
// model loads in PyTorch, every blob's content still hashes to its name
// and the database passes SQLite's integrity check.
//
// Bounded: TLSERVE_CHAOS_SECONDS of kills (default 45) and TLSERVE_CHAOS_SEED
// (default 1) pick the schedule; by hand, run it longer with
// `TLSERVE_CHAOS_SECONDS=600 ./chaos_test`.

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"
#include "tests/integration/fixtures.h"

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

int EnvInt(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

bool HaveFashionMnist() {
  return access((std::string(kFashionMnistDir) + "/train-labels-idx1-ubyte.gz")
                    .c_str(),
                R_OK) == 0;
}

constexpr int kEpochs = 3;
// Jobs queued or running at once: enough that both workers are busy when
// one is killed, few enough that the queue drains after the kills stop.
constexpr int kJobsInFlight = 3;

// A client call that waits out a server restart: retries UNAVAILABLE (and
// deadlines, which a half-dead connection gives) until `give_up`.
template <typename F>
auto Retrying(F call, absl::Time give_up) -> decltype(call()) {
  while (true) {
    auto result = call();
    const absl::StatusCode code = result.status().code();
    if (result.ok() || (code != absl::StatusCode::kUnavailable &&
                        code != absl::StatusCode::kDeadlineExceeded) ||
        absl::Now() > give_up) {
      return result;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
}

// Retention runs too, far more often than in production: finished jobs
// keep 2 checkpoints, and blobs nothing refers to are collected every
// second once 5 s old, while workers upload and record checkpoints.
const std::vector<std::string>& ServerFlags() {
  static const auto* flags = new std::vector<std::string>{
      "--keep_checkpoints=2", "--blob_gc_interval_seconds=1",
      "--blob_gc_grace_seconds=5"};
  return *flags;
}

class ChaosTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveFashionMnist()) {
      GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    }
    ASSERT_OK(cluster_.StartServer(ServerFlags()));
  }

  Cluster cluster_;
};

TEST_F(ChaosTest, KilledWorkersAndServerLoseNoJobAndCorruptNoBlob) {
  const int chaos_seconds = EnvInt("TLSERVE_CHAOS_SECONDS", 45);
  const int seed = EnvInt("TLSERVE_CHAOS_SEED", 1);

  // Data and backbone, uploaded before the kills start.
  const std::string data_dir = cluster_.dir() + "/data";
  ASSERT_OK(MakeDirs(data_dir));
  auto parts = WriteFashionMnistSubset(data_dir, {0, 1}, 150, 10);
  ASSERT_OK(parts.status());
  auto dataset = cluster_.client().UploadDatasetFiles(
      "fmnist", v1::IDX, *parts, FashionMnistClassNames(), "");
  ASSERT_OK(dataset.status());
  auto exported = ExportResNet18(cluster_.dir(), 32);
  ASSERT_OK(exported.status());
  v1::InputSpec input;
  input.set_channels(3);
  input.set_height(32);
  input.set_width(32);
  for (float m : {0.485f, 0.456f, 0.406f}) input.add_mean(m);
  for (float d : {0.229f, 0.224f, 0.225f}) input.add_std(d);
  auto backbone =
      cluster_.client().UploadBackbone("resnet18", *exported, input, "");
  ASSERT_OK(backbone.status());

  JobSpec spec;
  spec.set_kind(v1::FINE_TUNE);
  spec.mutable_data()->set_dataset_id(dataset->id());
  spec.mutable_data()->add_class_subset(0);
  spec.mutable_data()->add_class_subset(1);
  spec.mutable_data()->set_validation_fraction(0.2f);
  spec.set_backbone_id(backbone->id());
  spec.set_epochs(kEpochs);
  spec.set_batch_size(16);
  spec.mutable_optimizer()->set_learning_rate(3e-3f);
  // A little of the backbone trains, so checkpoints carry backbone weights
  // and optimizer state; one every second, so kills land between them.
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::FROZEN);
  spec.mutable_freeze()->add_trainable_patterns("layer4.1.bn2.*");
  spec.set_checkpoint_every_seconds(1);
  spec.set_checkpoint_every_epoch(true);
  spec.set_max_attempts(10);

  ASSERT_OK(cluster_.StartWorker("w1", 1));
  ASSERT_OK(cluster_.StartWorker("w2", 1));

  // The submitter: its own client, so that it races the kills. A job is
  // acknowledged when CreateJob returns OK; a retried call carries the same
  // request id, so a response lost in a crash cannot make a second job.
  auto submitter_client = Client::Connect(Client::Options{
      .target = cluster_.address(), .timeout = absl::Seconds(5)});
  ASSERT_OK(submitter_client.status());
  std::mutex mu;
  std::vector<std::string> acknowledged;
  std::map<std::string, std::string> request_of;  // job id -> request id
  std::vector<std::string> unacknowledged;       // request ids given up
  std::atomic<bool> stop_submitting{false};
  std::thread submitter([&] {
    Client& client = **submitter_client;
    for (int n = 0; !stop_submitting.load(); ++n) {
      // Waits until fewer than kJobsInFlight acknowledged jobs are open.
      while (!stop_submitting.load()) {
        std::vector<std::string> ids;
        {
          std::lock_guard<std::mutex> lock(mu);
          ids = acknowledged;
        }
        int open = 0;
        for (const std::string& id : ids) {
          auto job = client.GetJob(id);
          // While the server restarts, count the job as open.
          if (!job.ok() || (job->state() != v1::SUCCEEDED &&
                            job->state() != v1::FAILED &&
                            job->state() != v1::CANCELLED)) {
            ++open;
          }
        }
        if (open < kJobsInFlight) break;
        absl::SleepFor(absl::Milliseconds(300));
      }
      if (stop_submitting.load()) break;
      JobSpec job_spec = spec;
      job_spec.set_seed(100 + n);
      const std::string request_id = absl::StrCat("chaos-", seed, "-", n);
      auto created = Retrying(
          [&] { return client.CreateJob(job_spec, request_id); },
          absl::Now() + absl::Seconds(60));
      std::lock_guard<std::mutex> lock(mu);
      if (created.ok()) {
        acknowledged.push_back(created->id());
        request_of[created->id()] = request_id;
      } else {
        unacknowledged.push_back(
            absl::StrCat(request_id, ": ", created.status().ToString()));
      }
    }
  });

  // The killer: SIGKILL at random moments, then a restart after a random
  // pause (so work piles up against a dead process now and then).
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> gap_ms(1000, 4000);
  std::uniform_int_distribution<int> pause_ms(0, 1500);
  std::uniform_int_distribution<int> target(0, 2);
  std::map<std::string, int> kills;
  const absl::Time chaos_end = absl::Now() + absl::Seconds(chaos_seconds);
  bool restart_failed = false;
  while (absl::Now() < chaos_end && !restart_failed) {
    absl::SleepFor(absl::Milliseconds(gap_ms(rng)));
    const int who = target(rng);
    if (who == 0) {
      cluster_.KillServer(SIGKILL);
      absl::SleepFor(absl::Milliseconds(pause_ms(rng)));
      absl::Status started = cluster_.StartServer(ServerFlags());
      EXPECT_TRUE(started.ok()) << "restart after kill " << kills["server"]
                                << ": " << started;
      restart_failed = !started.ok();
      ++kills["server"];
    } else {
      const std::string id = who == 1 ? "w1" : "w2";
      cluster_.KillWorker(id, SIGKILL);
      absl::SleepFor(absl::Milliseconds(pause_ms(rng)));
      absl::Status started = cluster_.StartWorker(id, 1);
      EXPECT_TRUE(started.ok()) << started;
      restart_failed = !started.ok();
      ++kills[id];
    }
  }
  stop_submitting = true;
  submitter.join();
  ASSERT_FALSE(restart_failed) << cluster_.ServerLog();

  // Everything acknowledged finishes once the kills stop.
  std::vector<std::string> ids;
  {
    std::lock_guard<std::mutex> lock(mu);
    ids = acknowledged;
    EXPECT_TRUE(unacknowledged.empty())
        << "CreateJob never succeeded for " << absl::StrJoin(unacknowledged, "; ");
  }
  ASSERT_GE(ids.size(), 3u) << "too few jobs ran to say anything";
  Client& client = cluster_.client();
  int total_attempts = 0;
  int resumed = 0;
  std::set<std::string> checkpoint_blobs;
  std::set<std::string> model_blobs;
  for (const std::string& id : ids) {
    auto done = Retrying([&] { return client.WaitForJob(id, absl::Minutes(5)); },
                         absl::Now() + absl::Minutes(5));
    ASSERT_OK(done.status());
    EXPECT_EQ(done->state(), v1::SUCCEEDED)
        << id << " (" << request_of[id] << "): " << done->error();
    total_attempts += done->attempt();
    // Exactly once: each epoch's metrics recorded once, one move to
    // SUCCEEDED, one model from the job.
    std::vector<int> epochs;
    for (const auto& m : done->metrics()) epochs.push_back(m.epoch());
    EXPECT_EQ(epochs, (std::vector<int>{1, 2, 3})) << id;
    int succeeded = 0;
    (void)client.WatchJob(
        id, 0,
        [&](const JobEvent& e) {
          if (e.has_state_change() && e.state_change().to() == v1::SUCCEEDED) {
            ++succeeded;
          }
          if (e.has_message() &&
              e.message().find("resumes from checkpoint") != std::string::npos) {
            ++resumed;
          }
          return true;
        },
        absl::Now() + absl::Minutes(1));
    EXPECT_EQ(succeeded, 1) << id;
    auto checkpoints = client.ListCheckpoints(id);
    ASSERT_OK(checkpoints.status());
    for (const auto& c : checkpoints->checkpoints()) {
      checkpoint_blobs.insert(c.sha256());
    }
    if (done->state() == v1::SUCCEEDED) {
      auto model = client.GetModel(done->result().model_id());
      ASSERT_OK(model.status());
      EXPECT_EQ(model->job_id(), id);
      model_blobs.insert(model->sha256());
    }
  }
  // No job the test did not acknowledge, and no second copy of one.
  auto all = client.ListAllJobs(v1::JOB_STATE_UNSPECIFIED);
  ASSERT_OK(all.status());
  EXPECT_EQ(all->size(), ids.size());
  auto models = client.ListModels();
  ASSERT_OK(models.status());
  EXPECT_EQ(models->size(), ids.size());

  // Stop cleanly so that the database can be checked at rest.
  cluster_.KillWorker("w1", SIGKILL);
  cluster_.KillWorker("w2", SIGKILL);
  ASSERT_OK(cluster_.SignalServerAndWait(SIGTERM, absl::Seconds(30)).status());

  // Every blob's content hashes to its name; every checkpoint and model
  // the jobs list is among them.
  const std::string blob_dir = cluster_.dir() + "/var/blobs/sha256";
  std::set<std::string> blobs;
  int corrupt = 0;
  for (const auto& entry : std::filesystem::directory_iterator(blob_dir)) {
    const std::string name = entry.path().filename();
    auto bytes = ReadFile(entry.path());
    ASSERT_OK(bytes.status());
    if (Sha256Hex(*bytes) != name) {
      ++corrupt;
      ADD_FAILURE() << "blob " << name << " does not hash to its name";
    }
    blobs.insert(name);
  }
  for (const std::string& sha : checkpoint_blobs) {
    EXPECT_TRUE(blobs.count(sha)) << "checkpoint blob " << sha << " missing";
  }
  for (const std::string& sha : model_blobs) {
    EXPECT_TRUE(blobs.count(sha)) << "model blob " << sha << " missing";
  }
  for (const auto& part : dataset->parts()) {
    EXPECT_TRUE(blobs.count(part.sha256())) << "dataset part lost";
  }

  // PyTorch loads every checkpoint (the worker's archive format) and model.
  std::vector<std::string> argv = {
      "/usr/bin/python3", SourceDir() + "/tests/integration/check_checkpoints.py"};
  for (const std::string& sha : checkpoint_blobs) {
    argv.push_back("checkpoint=" + blob_dir + "/" + sha);
  }
  for (const std::string& sha : model_blobs) {
    argv.push_back("model=" + blob_dir + "/" + sha);
  }
  const std::string checked_log = cluster_.dir() + "/check_checkpoints.log";
  auto checker = ChildProcess::Start(argv, checked_log);
  ASSERT_OK(checker.status());
  auto checker_status = (*checker)->Wait(absl::Minutes(3));
  ASSERT_OK(checker_status.status());
  std::ifstream log_in(checked_log);
  std::string log((std::istreambuf_iterator<char>(log_in)), {});
  EXPECT_EQ(*checker_status, 0) << log;
  const std::string expected_summary =
      absl::StrCat(checkpoint_blobs.size() + model_blobs.size(), " of ",
                   checkpoint_blobs.size() + model_blobs.size(), " load");
  EXPECT_NE(log.find(expected_summary), std::string::npos) << log;

  // The database at rest passes SQLite's own check, when sqlite3 is there.
  std::string integrity = "(sqlite3 not installed)";
  if (access("/usr/bin/sqlite3", X_OK) == 0) {
    const std::string out = cluster_.dir() + "/integrity.txt";
    const std::string command =
        absl::StrCat("/usr/bin/sqlite3 '", cluster_.dir(),
                     "/var/tlserve.db' 'PRAGMA integrity_check;' > '", out, "'");
    ASSERT_EQ(std::system(command.c_str()), 0);
    std::ifstream in(out);
    std::getline(in, integrity);
    EXPECT_EQ(integrity, "ok");
  }

  // The collector ran and freed pruned checkpoints and stale attempts'
  // uploads (each collection that removed something logs a line).
  auto read_log = ReadFile(cluster_.dir() + "/tlserve.log");
  ASSERT_OK(read_log.status());
  const std::string& log_text = *read_log;
  int collections = 0;
  for (size_t at = log_text.find("blobs collected"); at != std::string::npos;
       at = log_text.find("blobs collected", at + 1)) {
    ++collections;
  }
  EXPECT_GT(collections, 0) << "the blob collector never removed anything";

  int total_kills = 0;
  for (const auto& [who, n] : kills) total_kills += n;
  std::printf(
      "chaos: %d s, seed %d: %d kills survived (server %d, w1 %d, w2 %d); "
      "%zu jobs acknowledged, all checked: %d attempts, %d resumes from a "
      "checkpoint; %zu checkpoints and %zu models load; %zu blobs, %d "
      "corrupt; integrity_check %s; %d collections removed blobs\n",
      chaos_seconds, seed, total_kills, kills["server"], kills["w1"],
      kills["w2"], ids.size(), total_attempts, resumed,
      checkpoint_blobs.size(), model_blobs.size(), blobs.size(), corrupt,
      integrity.c_str(), collections);
}

}  // namespace
}  // namespace tlserve::testing
