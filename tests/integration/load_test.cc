// Load through a real tlserve and tlworker on loopback: 100 clients, each
// with its own channel, create, poll, watch and cancel jobs and call
// Predict on a deployed model at once. Every call must end in a code the
// API documents for it; the server's peak RSS must stay bounded.
//
// TLSERVE_LOAD_SECONDS (default 20) and TLSERVE_LOAD_CLIENTS (default 100)
// size it; docs/reliability.md has the 60-second figures.

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"
#include "tests/integration/fixtures.h"

namespace tlserve::testing {
namespace {

using tlserve::v1::Job;
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

// Peak resident set of a process in bytes (VmHWM), or -1.
int64_t PeakRss(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::atoll(line.c_str() + 6) * 1024;
    }
  }
  return -1;
}

bool IsFinal(v1::JobState s) {
  return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED;
}

// Latencies and outcomes of one kind of call, merged over the clients.
struct CallStats {
  std::vector<double> ms;
  std::map<std::string, int> codes;  // "OK", "NOT_FOUND", ...
  std::vector<std::string> unexpected;
};

class Recorder {
 public:
  // `expected`: the codes the API documents for this call under load.
  void Record(const std::string& method, absl::Duration took,
              const absl::Status& status,
              std::initializer_list<absl::StatusCode> expected) {
    std::lock_guard<std::mutex> lock(mu_);
    CallStats& stats = calls_[method];
    stats.ms.push_back(absl::ToDoubleMilliseconds(took));
    stats.codes[absl::StatusCodeToString(status.code())]++;
    if (status.ok()) return;
    if (std::find(expected.begin(), expected.end(), status.code()) ==
        expected.end()) {
      if (stats.unexpected.size() < 5) {
        stats.unexpected.push_back(status.ToString());
      }
      ++unexpected_;
    }
  }
  int unexpected() const { return unexpected_; }
  std::map<std::string, CallStats> calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  std::mutex mu_;
  std::map<std::string, CallStats> calls_;
  std::atomic<int> unexpected_{0};
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
  return v[i];
}

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveFashionMnist()) {
      GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    }
    ASSERT_OK(cluster_.StartServer());
  }

  Cluster cluster_;
};

TEST_F(LoadTest, HundredClientsGetOnlyDocumentedErrorsAndBoundedMemory) {
  const int seconds = EnvInt("TLSERVE_LOAD_SECONDS", 20);
  const int clients = EnvInt("TLSERVE_LOAD_CLIENTS", 100);

  const std::string data_dir = cluster_.dir() + "/data";
  ASSERT_OK(MakeDirs(data_dir));
  auto parts = WriteFashionMnistSubset(data_dir, {0, 1}, 40, 10);
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
  ASSERT_OK(cluster_.StartWorker("w1", 1));

  // Small jobs: a frozen backbone, one epoch; most are cancelled.
  JobSpec spec;
  spec.set_kind(v1::FINE_TUNE);
  spec.mutable_data()->set_dataset_id(dataset->id());
  spec.mutable_data()->add_class_subset(0);
  spec.mutable_data()->add_class_subset(1);
  spec.set_backbone_id(backbone->id());
  spec.set_epochs(1);
  spec.set_batch_size(16);
  spec.mutable_optimizer()->set_learning_rate(1e-3f);
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::FROZEN);

  // A model to predict with, trained before the load starts.
  auto first = cluster_.client().CreateJob(spec, "");
  ASSERT_OK(first.status());
  auto trained = cluster_.client().WaitForJob(first->id(), absl::Minutes(3));
  ASSERT_OK(trained.status());
  ASSERT_EQ(trained->state(), v1::SUCCEEDED) << trained->error();
  const std::string model_id = trained->result().model_id();

  v1::PredictRequest predict;
  predict.set_model_id(model_id);
  predict.set_top_k(1);
  std::vector<float> pixels(3 * 32 * 32, 0.5f);
  for (int d : {1, 3, 32, 32}) predict.mutable_tensor()->add_shape(d);
  predict.mutable_tensor()->set_dtype("FP32");
  predict.mutable_tensor()->set_contents(
      std::string(reinterpret_cast<const char*>(pixels.data()),
                  pixels.size() * sizeof(float)));

  const int64_t rss_before = PeakRss(cluster_.server_pid());
  Recorder recorder;
  std::atomic<int> created{0};
  std::atomic<int> cancelled{0};
  const absl::Time end = absl::Now() + absl::Seconds(seconds);
  using Code = absl::StatusCode;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto connected = Client::Connect(Client::Options{
          .target = cluster_.address(), .timeout = absl::Seconds(30)});
      if (!connected.ok()) {
        recorder.Record("Connect", absl::ZeroDuration(), connected.status(), {});
        return;
      }
      Client& client = **connected;
      std::mt19937 rng(c);
      std::uniform_real_distribution<double> uniform(0, 1);
      std::string job_id;  // this client's current job
      int n = 0;
      while (absl::Now() < end) {
        // Think time, so that 100 clients are 100 users, not a tight loop.
        absl::SleepFor(absl::Milliseconds(50 + 100 * uniform(rng)));
        const double r = uniform(rng);
        absl::Time start = absl::Now();
        if (job_id.empty() || r < 0.1) {
          JobSpec s = spec;
          s.set_seed(c * 1000 + n);
          auto job = client.CreateJob(s, absl::StrCat("load-", c, "-", n++));
          recorder.Record("CreateJob", absl::Now() - start, job.status(), {});
          if (job.ok()) {
            job_id = job->id();
            ++created;
          }
        } else if (r < 0.45) {
          auto job = client.GetJob(job_id);
          recorder.Record("GetJob", absl::Now() - start, job.status(), {});
        } else if (r < 0.55) {
          // A watch that gives up after a second, as a progress bar that is
          // closed would; ending at the deadline is expected.
          auto job = client.WatchJob(
              job_id, 0, [](const v1::JobEvent&) { return true; },
              absl::Now() + absl::Seconds(1));
          recorder.Record("WatchJob", absl::Now() - start, job.status(),
                          {Code::kDeadlineExceeded});
        } else if (r < 0.65) {
          // Cancelling a job that already ended is refused, as documented.
          auto job = client.CancelJob(job_id);
          recorder.Record("CancelJob", absl::Now() - start, job.status(),
                          {Code::kFailedPrecondition});
          if (job.ok()) ++cancelled;
          job_id.clear();
        } else if (r < 0.7) {
          auto page = client.ListJobs(v1::JOB_STATE_UNSPECIFIED, 50, "");
          recorder.Record("ListJobs", absl::Now() - start, page.status(), {});
        } else {
          // A full inference queue sheds load with RESOURCE_EXHAUSTED.
          auto predicted = client.Predict(predict, absl::Seconds(10));
          recorder.Record("Predict", absl::Now() - start, predicted.status(),
                          {Code::kResourceExhausted});
          if (predicted.ok() && predicted->predictions_size() != 1) {
            recorder.Record("Predict", absl::ZeroDuration(),
                            absl::InternalError("wrong number of predictions"),
                            {});
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();

  // The server is still healthy and consistent after the load.
  ASSERT_OK(cluster_.client().CheckHealth());
  const int64_t rss_peak = PeakRss(cluster_.server_pid());
  auto all = cluster_.client().ListAllJobs(v1::JOB_STATE_UNSPECIFIED);
  ASSERT_OK(all.status());
  EXPECT_EQ(static_cast<int>(all->size()), created.load() + 1);
  int final_jobs = 0;
  for (const Job& job : *all) final_jobs += IsFinal(job.state());

  int total = 0;
  std::string table;
  for (const auto& [method, stats] : recorder.calls()) {
    total += static_cast<int>(stats.ms.size());
    std::string codes;
    for (const auto& [code, count] : stats.codes) {
      absl::StrAppend(&codes, codes.empty() ? "" : ", ", code, " ", count);
    }
    absl::StrAppendFormat(&table, "  %-10s %6zu calls  p50 %7.1f ms  p99 %7.1f ms  (%s)\n",
                          method, stats.ms.size(), Percentile(stats.ms, 0.5),
                          Percentile(stats.ms, 0.99), codes);
    for (const std::string& error : stats.unexpected) {
      ADD_FAILURE() << method << " failed unexpectedly: " << error;
    }
  }
  EXPECT_EQ(recorder.unexpected(), 0);
  // Bounded: the server's resident memory under this load stays well under
  // what a pod is given (deploy/ sets 2 GiB).
  EXPECT_GT(rss_peak, 0);
  EXPECT_LT(rss_peak, 1LL << 30) << "peak RSS " << rss_peak;
  std::printf(
      "load: %d clients for %d s: %d calls (%.0f/s), %d unexpected errors; "
      "%d jobs created, %d cancelled, %d final at the end; server peak RSS "
      "%.1f MiB (%.1f MiB before the load)\n%s",
      clients, seconds, total, total / static_cast<double>(seconds),
      recorder.unexpected(), created.load(), cancelled.load(), final_jobs,
      rss_peak / 1048576.0, rss_before / 1048576.0, table.c_str());
}

}  // namespace
}  // namespace tlserve::testing
