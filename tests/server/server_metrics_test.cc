#include "server/server_metrics.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "server/blob_store.h"
#include "server/grpc_metrics.h"
#include "server/store.h"

namespace tlserve {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Scrape(const prometheus::Collectable& collectable) {
  return prometheus::TextSerializer().Serialize(collectable.Collect());
}

class ServerMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/server_metrics_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    auto store = Store::Open(dir_ + "/tlserve.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto blobs = BlobStore::Open(dir_ + "/blobs");
    ASSERT_TRUE(blobs.ok()) << blobs.status();
    blobs_ = *std::move(blobs);
  }

  void TearDown() override {
    store_.reset();
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }

  void PutJob(const std::string& id, tlserve::v1::JobState state) {
    tlserve::v1::Job job;
    job.set_id(id);
    job.set_state(state);
    job.mutable_create_time()->set_seconds(1700000000);
    ASSERT_TRUE(store_->PutJob(job, nullptr, state == tlserve::v1::QUEUED).ok());
  }

  std::string dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::shared_ptr<prometheus::Registry> registry_ =
      std::make_shared<prometheus::Registry>();
};

TEST_F(ServerMetricsTest, GaugesAreReadFromTheStoresAtScrape) {
  int workers = 2;
  ServerMetrics::Sources sources;
  sources.store = store_.get();
  sources.blobs = blobs_.get();
  sources.connected_workers = [&workers] { return workers; };
  ServerMetrics metrics(*registry_, std::move(sources));
  RefreshingCollectable scraped(registry_, [&metrics] { metrics.Refresh(); });

  PutJob("j1", tlserve::v1::QUEUED);
  PutJob("j2", tlserve::v1::QUEUED);
  PutJob("j3", tlserve::v1::RUNNING);
  ASSERT_TRUE(blobs_->Put(std::string(1000, 'x')).ok());
  std::string text = Scrape(scraped);
  EXPECT_THAT(text, HasSubstr("tlserve_jobs{state=\"QUEUED\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_jobs{state=\"RUNNING\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_jobs{state=\"FAILED\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_workers_connected 2\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_blob_bytes 1000\n"));
  EXPECT_THAT(text, Not(HasSubstr("tlserve_store_size_bytes 0\n")));

  // The next scrape sees the change without anyone telling the metrics.
  workers = 0;
  PutJob("j3", tlserve::v1::SUCCEEDED);
  text = Scrape(scraped);
  EXPECT_THAT(text, HasSubstr("tlserve_jobs{state=\"RUNNING\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_jobs{state=\"SUCCEEDED\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_workers_connected 0\n"));
}

TEST_F(ServerMetricsTest, CountsFinishedJobsByOutcomeAndTimesThoseThatRan) {
  ServerMetrics metrics(*registry_, ServerMetrics::Sources{});
  metrics.JobStarted(absl::Seconds(3));
  metrics.JobFinished(tlserve::v1::SUCCEEDED, absl::Seconds(40));
  metrics.JobFinished(tlserve::v1::CANCELLED, std::nullopt);  // never ran
  metrics.JobFinished(tlserve::v1::RUNNING, absl::Seconds(1));  // not an outcome
  const std::string text = Scrape(*registry_);
  EXPECT_THAT(text, HasSubstr("tlserve_jobs_finished_total{outcome=\"SUCCEEDED\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_jobs_finished_total{outcome=\"CANCELLED\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_jobs_finished_total{outcome=\"FAILED\"} 0\n"));
  EXPECT_THAT(text, Not(HasSubstr("outcome=\"RUNNING\"")));
  EXPECT_THAT(text, HasSubstr("tlserve_job_duration_seconds_count 1\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_job_duration_seconds_sum 40\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_job_queue_wait_seconds_sum 3\n"));
}

TEST(GrpcMetricsTest, LabelsKnownMethodsAndFoldsOtherPathsIntoOne) {
  prometheus::Registry registry;
  GrpcMetrics metrics(registry, {"tlserve.v1.JobService", "no.such.Service"});
  metrics.Handled(metrics.Find("/tlserve.v1.JobService/CreateJob"), grpc::StatusCode::OK,
                  absl::Milliseconds(2));
  metrics.Handled(metrics.Find("/tlserve.v1.JobService/GetJob"),
                  grpc::StatusCode::NOT_FOUND, absl::Milliseconds(1));
  metrics.Handled(metrics.Find("/made.up/Path1"), grpc::StatusCode::UNIMPLEMENTED,
                  absl::Milliseconds(1));
  metrics.Handled(metrics.Find("/made.up/Path2"), grpc::StatusCode::UNIMPLEMENTED,
                  absl::Milliseconds(1));
  const std::string text = Scrape(registry);
  EXPECT_THAT(text, HasSubstr("tlserve_grpc_server_handled_total{code=\"OK\","
                              "method=\"tlserve.v1.JobService/CreateJob\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_grpc_server_handled_total{code=\"NOT_FOUND\","
                              "method=\"tlserve.v1.JobService/GetJob\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("tlserve_grpc_server_handled_total{code=\"UNIMPLEMENTED\","
                              "method=\"_other\"} 2\n"));
  EXPECT_THAT(text, Not(HasSubstr("made.up")));
  EXPECT_THAT(text, HasSubstr("tlserve_grpc_server_handling_seconds_count{"
                              "method=\"tlserve.v1.JobService/CreateJob\"} 1\n"));
}

}  // namespace
}  // namespace tlserve
