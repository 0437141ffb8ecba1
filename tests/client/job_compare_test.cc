#include "client/job_compare.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "client/tlctl_commands.h"
#include "common/file_util.h"
#include "common/image.h"
#include "common/plot.h"
#include "gmock/gmock.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "tlserve/v1/job.grpc.pb.h"

namespace tlserve::cli {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

void AddEpoch(v1::Job* job, int epoch, float train_loss, float train_acc,
              float val_loss, float val_acc, double seconds) {
  v1::EpochMetrics* m = job->add_metrics();
  m->set_epoch(epoch);
  m->set_train_loss(train_loss);
  m->set_train_accuracy(train_acc);
  m->set_val_loss(val_loss);
  m->set_val_accuracy(val_acc);
  m->set_seconds(seconds);
}

// Pretrained, frozen backbone: 3 epochs, best validation at epoch 2.
v1::Job TransferJob() {
  v1::Job job;
  job.set_id("job-aaa");
  job.set_state(v1::SUCCEEDED);
  v1::JobSpec* s = job.mutable_spec();
  s->set_display_name("transfer");
  s->set_kind(v1::FINE_TUNE);
  s->set_backbone_id("bb-resnet");
  s->set_backbone_init(v1::PRETRAINED);
  s->mutable_freeze()->set_mode(v1::FreezePolicy::FROZEN);
  s->mutable_data()->set_samples_per_class(10);
  s->set_epochs(3);
  AddEpoch(&job, 1, 1.20f, 0.55f, 1.00f, 0.600f, 10);
  AddEpoch(&job, 2, 0.80f, 0.75f, 0.70f, 0.800f, 12);
  AddEpoch(&job, 3, 0.60f, 0.85f, 0.75f, 0.780f, 11);
  job.mutable_metrics(1)->set_best(true);
  v1::JobResult* r = job.mutable_result();
  r->set_test_accuracy(0.8125f);
  r->set_test_top5_accuracy(0.975f);
  r->set_test_loss(0.6500f);
  r->set_test_count(80);
  r->set_train_seconds(40);
  r->set_best_epoch(2);
  return job;
}

// Random init, full fine-tune, two epochs, worse.
v1::Job ScratchJob() {
  v1::Job job;
  job.set_id("job-bbb");
  job.set_state(v1::SUCCEEDED);
  v1::JobSpec* s = job.mutable_spec();
  s->set_display_name("scratch");
  s->set_kind(v1::FINE_TUNE);
  s->set_backbone_id("bb-resnet");
  s->set_backbone_init(v1::RANDOM);
  s->mutable_freeze()->set_mode(v1::FreezePolicy::LAST_N_BLOCKS);
  s->mutable_freeze()->set_n_blocks(2);
  s->mutable_freeze()->set_backbone_lr_scale(0.1f);
  s->mutable_data()->set_samples_per_class(10);
  s->set_epochs(2);
  AddEpoch(&job, 1, 2.00f, 0.30f, 1.90f, 0.350f, 20);
  AddEpoch(&job, 2, 1.50f, 0.45f, 1.60f, 0.500f, 21);
  v1::JobResult* r = job.mutable_result();
  r->set_test_accuracy(0.4875f);
  r->set_test_loss(1.6f);
  r->set_test_count(80);
  r->set_train_seconds(45);
  return job;
}

v1::Job QueuedJob() {
  v1::Job job;
  job.set_id("job-ccc");
  job.set_state(v1::QUEUED);
  job.mutable_spec()->set_kind(v1::FINE_TUNE);
  job.mutable_spec()->set_backbone_id("bb-resnet");
  job.mutable_spec()->mutable_freeze()->set_mode(v1::FreezePolicy::FULL);
  job.mutable_spec()->set_epochs(5);
  return job;
}

// The cells of the row whose label is `label`, split on runs of 2+ spaces.
std::vector<std::string> Row(const std::string& text, const std::string& label) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, label + "  ") && line != label) continue;
    std::vector<std::string> cells;
    for (absl::string_view cell : absl::StrSplit(line, "  ")) {
      const absl::string_view c = absl::StripAsciiWhitespace(cell);
      if (!c.empty()) cells.emplace_back(c);
    }
    return cells;
  }
  return {};
}

std::string Line(const std::string& text, const std::string& prefix) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, prefix)) return std::string(line);
  }
  return "";
}

using Cells = std::vector<std::string>;

TEST(JobCompareTest, SummaryHasOneColumnPerJob) {
  const std::string text =
      FormatJobComparison({TransferJob(), ScratchJob(), QueuedJob()}, {});
  EXPECT_EQ(Row(text, "job"), (Cells{"job", "job-aaa", "job-bbb", "job-ccc"}));
  EXPECT_EQ(Row(text, "init"),
            (Cells{"init", "pretrained", "random", "pretrained"}));
  EXPECT_EQ(Row(text, "freeze"),
            (Cells{"freeze", "frozen", "last 2 blocks", "full"}));
  EXPECT_EQ(Row(text, "backbone lr"), (Cells{"backbone lr", "-", "x0.1", "x1"}));
  EXPECT_EQ(Row(text, "samples/class"),
            (Cells{"samples/class", "10", "10", "all"}));
  EXPECT_EQ(Row(text, "epochs run"), (Cells{"epochs run", "3/3", "2/2", "0/5"}));
  EXPECT_EQ(Row(text, "state"),
            (Cells{"state", "SUCCEEDED", "SUCCEEDED", "QUEUED"}));
  EXPECT_EQ(Row(text, "best epoch"), (Cells{"best epoch", "2", "-", "-"}));
  EXPECT_EQ(Row(text, "best val acc"),
            (Cells{"best val acc", "0.800 @2", "0.500 @2", "-"}));
  // 10 s + 12 s to epoch 2; 20 s + 21 s.
  EXPECT_EQ(Row(text, "time to best val"),
            (Cells{"time to best val", "22s", "41s", "-"}));
  EXPECT_EQ(Row(text, "test acc"),
            (Cells{"test acc", "0.8125", "0.4875", "-"}));
  EXPECT_EQ(Row(text, "test top-5"), (Cells{"test top-5", "0.9750", "-", "-"}));
  EXPECT_EQ(Row(text, "test loss"),
            (Cells{"test loss", "0.6500", "1.6000", "-"}));
  EXPECT_EQ(Row(text, "train time"), (Cells{"train time", "40s", "45s", "-"}));
  // The header names the jobs (display name, else the id).
  EXPECT_THAT(Line(text, " "), ContainsRegex("^ +transfer +scratch +job-ccc$"));
}

TEST(JobCompareTest, EpochTableShowsDashWhereAJobHasNoSuchEpoch) {
  const std::string text =
      FormatJobComparison({TransferJob(), ScratchJob(), QueuedJob()}, {});
  EXPECT_THAT(text, HasSubstr("val_accuracy per epoch:"));
  // "*" marks each job's best epoch of the metric.
  EXPECT_EQ(Row(text, "1"), (Cells{"1", "0.600", "0.350", "-"}));
  EXPECT_EQ(Row(text, "2"), (Cells{"2", "0.800*", "0.500*", "-"}));
  EXPECT_EQ(Row(text, "3"), (Cells{"3", "0.780", "-", "-"}));
  EXPECT_TRUE(Row(text, "4").empty());
}

TEST(JobCompareTest, MetricChoiceChangesTheEpochTable) {
  JobCompareOptions options;
  options.metric = CompareMetric::kValLoss;
  const std::string text =
      FormatJobComparison({TransferJob(), ScratchJob()}, options);
  EXPECT_THAT(text, HasSubstr("val_loss per epoch:"));
  // For a loss the lowest value is the best.
  EXPECT_EQ(Row(text, "2"), (Cells{"2", "0.7000*", "1.6000*"}));
  EXPECT_EQ(Row(text, "3"), (Cells{"3", "0.7500", "-"}));

  options.metric = CompareMetric::kTrainAccuracy;
  const std::string train =
      FormatJobComparison({TransferJob(), ScratchJob()}, options);
  EXPECT_EQ(Row(train, "1"), (Cells{"1", "0.550", "0.300"}));
  EXPECT_EQ(Row(train, "3"), (Cells{"3", "0.850*", "-"}));
}

TEST(JobCompareTest, WinnerLineGivesMarginsInPercentagePoints) {
  const std::string text =
      FormatJobComparison({ScratchJob(), TransferJob(), QueuedJob()}, {});
  EXPECT_EQ(Line(text, "best by"),
            "best by test accuracy: transfer (0.8125), +32.50 pp over scratch "
            "(0.4875); no result yet: job-ccc");
}

TEST(JobCompareTest, WinnerFallsBackToValidationWhenNotAllAreTested) {
  v1::Job running = ScratchJob();
  running.set_state(v1::RUNNING);
  running.clear_result();
  AddEpoch(&running, 3, 1.0f, 0.6f, 1.0f, 0.850f, 20);
  const std::string text = FormatJobComparison({TransferJob(), running}, {});
  EXPECT_EQ(Line(text, "best by"),
            "best by best val accuracy (not all tested): scratch (0.8500), "
            "+5.00 pp over transfer (0.8000)");
  // Without a result, train time is the epochs' seconds so far.
  EXPECT_EQ(Row(text, "train time"), (Cells{"train time", "40s", "1m01s"}));
}

TEST(JobCompareTest, QueuedJobsOnlyShowDashes) {
  const std::string text = FormatJobComparison({QueuedJob(), QueuedJob()}, {});
  EXPECT_THAT(text, HasSubstr("no job has finished an epoch yet"));
  EXPECT_THAT(text, HasSubstr("no job has a validation or test accuracy yet"));
  // Same id twice: the columns still tell them apart.
  EXPECT_THAT(text, HasSubstr("job-ccc #1"));
  EXPECT_THAT(text, HasSubstr("job-ccc #2"));
}

TEST(JobCompareTest, NarrowTerminalsGetBlocksAndShortNames) {
  std::vector<v1::Job> jobs;
  for (int i = 0; i < 6; ++i) {
    v1::Job job = TransferJob();
    job.set_id("job-" + std::to_string(i));
    job.mutable_spec()->set_display_name(
        "resnet18-frozen-ten-shot-cosine-seed" + std::to_string(i));
    jobs.push_back(job);
  }
  JobCompareOptions options;
  options.width = 80;
  const std::string text = FormatJobComparison(jobs, options);
  size_t widest = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    // The winner line is one sentence; the tables must fit.
    if (absl::StartsWith(line, "best by")) continue;
    widest = std::max(widest, line.size());
  }
  EXPECT_LE(widest, 80u);
  // Shortened in the middle, so each keeps both its ends.
  EXPECT_THAT(Line(text, " "), ContainsRegex("^ +resnet18-~ne-seed0  "));
  EXPECT_THAT(text, HasSubstr("resnet18-~ne-seed5"));
  // More than one block: the row labels repeat.
  int state_rows = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    state_rows += absl::StartsWith(line, "state ");
  }
  EXPECT_GE(state_rows, 2);
  // The winner line names jobs in full.
  EXPECT_THAT(Line(text, "best by"),
              HasSubstr("resnet18-frozen-ten-shot-cosine-seed0 (0.8125)"));
}

TEST(JobCompareTest, ParsesMetricNamesAndNamesTheChoices) {
  EXPECT_EQ(*ParseCompareMetric("val_loss"), CompareMetric::kValLoss);
  EXPECT_EQ(*ParseCompareMetric("TRAIN_ACCURACY"),
            CompareMetric::kTrainAccuracy);
  absl::StatusOr<CompareMetric> bad = ParseCompareMetric("f1");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("val_accuracy, val_loss, train_loss, train_accuracy"));
}

int CountColor(const Image& image, plot::Rgb color) {
  int n = 0;
  for (size_t i = 0; i + 2 < image.pixels.size(); i += 3) {
    n += image.pixels[i] == color.r && image.pixels[i + 1] == color.g &&
         image.pixels[i + 2] == color.b;
  }
  return n;
}

TEST(JobComparePngTest, DrawsEachJobInItsPaletteColour) {
  absl::StatusOr<std::string> png = JobComparisonPng(
      {TransferJob(), ScratchJob(), QueuedJob()}, CompareMetric::kValAccuracy);
  ASSERT_TRUE(png.ok()) << png.status();
  absl::StatusOr<Image> image = DecodeImage(*png);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width, 720);
  EXPECT_EQ(image->height, 420);
  // Lines, markers and legend swatches of the two jobs with epochs; the
  // queued one has only its legend swatch (20x3).
  EXPECT_GT(CountColor(*image, plot::kPalette[0]), 200);
  EXPECT_GT(CountColor(*image, plot::kPalette[1]), 200);
  EXPECT_EQ(CountColor(*image, plot::kPalette[2]), 60);
  EXPECT_EQ(CountColor(*image, plot::kPalette[3]), 0);
  if (const char* dir = std::getenv("TLSERVE_PLOT_DIR"); dir != nullptr) {
    std::ofstream(std::string(dir) + "/job_compare.png", std::ios::binary)
        << *png;
  }
}

TEST(JobComparePngTest, RefusesWithoutEpochsOrWithTooManyJobs) {
  EXPECT_EQ(JobComparisonPng({QueuedJob(), QueuedJob()},
                             CompareMetric::kValLoss)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  std::vector<v1::Job> many(plot::kPaletteSize + 1, TransferJob());
  EXPECT_EQ(JobComparisonPng(many, CompareMetric::kValLoss).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// tlctl's own command line against an in-process JobService on loopback
// that answers GetJob from a fixed set of jobs (NOT_FOUND otherwise, with
// the real store's wording).
class FixedJobs : public v1::JobService::Service {
 public:
  explicit FixedJobs(std::vector<v1::Job> jobs) {
    for (v1::Job& job : jobs) jobs_[job.id()] = std::move(job);
  }
  grpc::Status GetJob(grpc::ServerContext*, const v1::GetJobRequest* request,
                      v1::Job* response) override {
    auto it = jobs_.find(request->id());
    if (it == jobs_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "job '" + request->id() + "' not found");
    }
    *response = it->second;
    return grpc::Status::OK;
  }

 private:
  std::map<std::string, v1::Job> jobs_;
};

class TlctlJobCompareTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(&jobs_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  void TearDown() override { server_->Shutdown(); }

  int Run(std::vector<std::string> argv) {
    std::ostringstream o;
    std::ostringstream e;
    RunOptions options;
    options.default_server = address_;
    options.terminal_columns = 120;
    const int code = RunTlctl(argv, options, o, e);
    out_ = o.str();
    err_ = e.str();
    return code;
  }

  FixedJobs jobs_{{TransferJob(), ScratchJob(), QueuedJob()}};
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  std::string out_;
  std::string err_;
};

TEST_F(TlctlJobCompareTest, PrintsTablesAndWritesThePlot) {
  const std::string png = ::testing::TempDir() + "/compare.png";
  std::remove(png.c_str());
  ASSERT_EQ(Run({"job", "compare", "job-aaa", "job-bbb", "job-ccc", "--plot",
                 png, "--metric=train_loss"}),
            0)
      << err_;
  EXPECT_EQ(Row(out_, "test acc"),
            (Cells{"test acc", "0.8125", "0.4875", "-"}));
  EXPECT_THAT(out_, HasSubstr("train_loss per epoch:"));
  EXPECT_EQ(Row(out_, "3"), (Cells{"3", "0.6000*", "-", "-"}));
  EXPECT_THAT(out_, HasSubstr("+32.50 pp over scratch"));
  EXPECT_THAT(out_, HasSubstr("wrote " + png));
  absl::StatusOr<std::string> bytes = ReadFile(png);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<Image> image = DecodeImage(*bytes);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width, 720);
}

TEST_F(TlctlJobCompareTest, JsonListsTheJobs) {
  ASSERT_EQ(Run({"--json", "job", "compare", "job-aaa", "job-ccc"}), 0) << err_;
  EXPECT_THAT(out_, HasSubstr("\"jobs\""));
  EXPECT_THAT(out_, HasSubstr("\"job-aaa\""));
  EXPECT_THAT(out_, HasSubstr("\"job-ccc\""));
  EXPECT_THAT(out_, Not(HasSubstr("per epoch")));
}

TEST_F(TlctlJobCompareTest, ErrorsExitOneWithTheirCodes) {
  EXPECT_EQ(Run({"job", "compare", "job-aaa"}), 1);
  EXPECT_THAT(err_, HasSubstr("usage: tlctl job compare ID ID"));
  EXPECT_THAT(err_, HasSubstr("error: INVALID_ARGUMENT: job compare needs at "
                              "least two job ids, got 1"));

  EXPECT_EQ(Run({"job", "compare", "job-aaa", "job-nope"}), 1);
  EXPECT_THAT(err_, HasSubstr("error: NOT_FOUND: job 'job-nope' not found"));
  EXPECT_EQ(out_, "");

  EXPECT_EQ(Run({"job", "compare", "job-aaa", "job-bbb", "--metric=f1"}), 1);
  EXPECT_THAT(err_, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(err_, HasSubstr("val_accuracy, val_loss, train_loss"));

  // Nothing to plot yet is an error, not an empty chart.
  const std::string png = ::testing::TempDir() + "/empty.png";
  EXPECT_EQ(Run({"job", "compare", "job-ccc", "job-ccc", "--plot", png}), 1);
  EXPECT_THAT(err_, HasSubstr("FAILED_PRECONDITION"));
}

}  // namespace
}  // namespace tlserve::cli
