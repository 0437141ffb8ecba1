#include "client/job_metrics_view.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "client/tlctl_commands.h"
#include "common/image.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

void SetClass(v1::ClassMetrics* c, float p, float r, float f1, int64_t n) {
  c->set_precision(p);
  c->set_recall(r);
  c->set_f1(f1);
  c->set_support(n);
}

// Three epochs on three classes. The last validation (10 samples):
//   t0 [ 3 1 0 ]  t1 [ 1 2 1 ]  t2 [ 0 0 2 ]
// and the test split (6 samples) is all correct but one.
v1::Job SampleJob() {
  v1::Job job;
  job.set_id("job-123");
  job.set_state(v1::SUCCEEDED);
  const float train_loss[] = {1.05f, 0.71f, 0.52f};
  const float val_acc[] = {0.5f, 0.6f, 0.7f};
  for (int e = 0; e < 3; ++e) {
    v1::EpochMetrics* m = job.add_metrics();
    m->set_epoch(e + 1);
    m->set_train_loss(train_loss[e]);
    m->set_train_accuracy(0.4f + 0.2f * e);
    m->set_val_loss(1.1f - 0.2f * e);
    m->set_val_accuracy(val_acc[e]);
    m->set_val_top5_accuracy(1.0f);
    m->set_learning_rate(0.001f);
    m->set_seconds(1.25 + e);
  }
  v1::EpochMetrics* last = job.mutable_metrics(2);
  for (int64_t v : {3, 1, 0, 1, 2, 1, 0, 0, 2}) last->add_confusion(v);
  SetClass(last->add_per_class(), 0.75f, 0.75f, 0.75f, 4);
  SetClass(last->add_per_class(), 0.6667f, 0.5f, 0.5714f, 4);
  SetClass(last->add_per_class(), 0.6667f, 1.0f, 0.8f, 2);
  last->set_best(true);
  v1::JobResult* r = job.mutable_result();
  r->set_test_accuracy(5.0f / 6);
  r->set_test_top5_accuracy(1.0f);
  r->set_test_count(6);
  for (int64_t v : {2, 0, 0, 0, 2, 0, 0, 1, 1}) r->add_test_confusion(v);
  SetClass(r->add_per_class_test(), 1.0f, 1.0f, 1.0f, 2);
  SetClass(r->add_per_class_test(), 0.6667f, 1.0f, 0.8f, 2);
  SetClass(r->add_per_class_test(), 1.0f, 0.5f, 0.6667f, 2);
  return job;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool HasLine(const std::string& text, const std::string& line) {
  for (const std::string& l : Lines(text)) {
    if (l == line) return true;
  }
  return false;
}

void MaybeSave(const std::string& png, const std::string& name) {
  const char* dir = std::getenv("TLSERVE_PLOT_DIR");
  if (dir != nullptr) {
    std::ofstream(std::string(dir) + "/" + name, std::ios::binary) << png;
  }
}

TEST(JobMetricsViewTest, TableHasOneRowPerEpochWithTop5AndLr) {
  const std::string text =
      FormatJobMetrics(SampleJob(), {"cat", "dog", "bird"});
  EXPECT_THAT(text, HasSubstr("job job-123 (SUCCEEDED): 3 epochs"));
  EXPECT_TRUE(HasLine(text,
                      "EPOCH  TRAIN_LOSS  TRAIN_ACC  VAL_LOSS  VAL_ACC  "
                      "VAL_TOP5  LR     SECONDS"))
      << text;
  EXPECT_TRUE(HasLine(text,
                      "1      1.0500      0.400      1.1000    0.500    "
                      "1.000     0.001  1.2"))
      << text;
  EXPECT_TRUE(HasLine(text,
                      "3*     0.5200      0.800      0.7000    0.700    "
                      "1.000     0.001  3.2"))
      << text;
  EXPECT_THAT(text, HasSubstr("* best epoch so far"));
}

TEST(JobMetricsViewTest, PerClassScoresAndConfusionWithClassNames) {
  const std::string text =
      FormatJobMetrics(SampleJob(), {"cat", "dog", "bird"});
  // Macro F1 comes from the matrix: (3/4 + 4/7 + 4/5) / 3 = 0.7071.
  EXPECT_THAT(text, HasSubstr("validation, epoch 3: accuracy 0.7000, top-5 "
                              "1.0000, macro F1 0.7071, 10 samples"));
  EXPECT_TRUE(HasLine(text, "CLASS   PRECISION  RECALL     F1  SUPPORT"))
      << text;
  EXPECT_TRUE(HasLine(text, "1 dog       0.667   0.500  0.571        4"))
      << text;
  EXPECT_TRUE(HasLine(text, "TRUE \\ PREDICTED  0  1  2")) << text;
  EXPECT_TRUE(HasLine(text, "0 cat             3  1  0")) << text;
  EXPECT_TRUE(HasLine(text, "2 bird            0  0  2")) << text;
  // The test evaluation follows, with its own matrix.
  EXPECT_THAT(text, HasSubstr("test: accuracy 0.8333, top-5 1.0000"));
  EXPECT_THAT(text, HasSubstr("6 samples"));
  EXPECT_THAT(text, HasSubstr("confusion matrix (test; rows true class"));
  EXPECT_TRUE(HasLine(text, "2 bird            0  1  1")) << text;
}

TEST(JobMetricsViewTest, MissingNamesAreNumberedAndOldJobsShowDashes) {
  v1::Job job = SampleJob();
  EXPECT_EQ(JobMetricsClassCount(job), 3);
  EXPECT_THAT(MetricsClassNames(job, {"cat"}),
              ElementsAre("cat", "class 1", "class 2"));
  EXPECT_THAT(MetricsClassNames(job, {"a", "b", "c", "d"}),
              ElementsAre("a", "b", "c"));

  // A job from before top-5 and per-class metrics: no confusion anywhere.
  v1::Job old;
  old.set_id("old");
  old.set_state(v1::RUNNING);
  v1::EpochMetrics* m = old.add_metrics();
  m->set_epoch(1);
  m->add_per_class_val_accuracy(0.5f);
  m->add_per_class_val_accuracy(0.5f);
  const std::string text = FormatJobMetrics(old, {});
  EXPECT_THAT(text, HasSubstr("validation, epoch 1: accuracy 0.0000, 0 "
                              "samples"));
  EXPECT_THAT(text, Not(HasSubstr("confusion")));
  EXPECT_THAT(text, Not(HasSubstr("test:")));
  EXPECT_TRUE(HasLine(text,
                      "1      0.0000      0.000      0.0000    0.000    -"
                      "         -   0.0"))
      << text;
}

TEST(JobMetricsViewTest, PlotsDecodeAsImages) {
  const v1::Job job = SampleJob();
  absl::StatusOr<std::string> curves = LearningCurvesPng(job);
  ASSERT_TRUE(curves.ok()) << curves.status();
  absl::StatusOr<Image> image = DecodeImage(*curves);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width, 960);
  EXPECT_EQ(image->height, 340);
  MaybeSave(*curves, "job_metrics_curves.png");

  absl::StatusOr<std::string> confusion =
      ConfusionPng(job, {"T-shirt/top", "Trouser", "Pullover"});
  ASSERT_TRUE(confusion.ok()) << confusion.status();
  image = DecodeImage(*confusion);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_GT(image->width, 200);
  MaybeSave(*confusion, "job_metrics_confusion.png");
}

TEST(JobMetricsViewTest, PlotsOfAJobWithoutMetricsSayWhy) {
  v1::Job job;
  job.set_id("queued");
  absl::StatusOr<std::string> curves = LearningCurvesPng(job);
  EXPECT_EQ(curves.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(curves.status().message()),
              HasSubstr("no epoch metrics yet"));
  EXPECT_EQ(ConfusionPng(job, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(JobMetricsViewTest, TlctlKnowsTheCommandAndItsFlags) {
  RunOptions options;
  std::ostringstream out, err;
  EXPECT_EQ(RunTlctl({"job", "metrics", "--help"}, options, out, err), 0);
  EXPECT_THAT(out.str(), HasSubstr("job metrics ID [--plot-curves FILE.png] "
                                   "[--plot-confusion FILE.png]"));
  std::ostringstream out2, err2;
  EXPECT_EQ(RunTlctl({"job", "metrics"}, options, out2, err2), 1);
  EXPECT_THAT(err2.str(), HasSubstr("expected 1 argument(s), got 0"));
  std::ostringstream out3, err3;
  EXPECT_EQ(RunTlctl({"job", "metrics", "j", "--plot-curve", "x.png"}, options,
                     out3, err3),
            1);
  EXPECT_THAT(err3.str(), HasSubstr("unknown flag --plot-curve"));
  std::ostringstream out4, err4;
  EXPECT_EQ(RunTlctl({"--help"}, options, out4, err4), 0);
  EXPECT_THAT(out4.str(), HasSubstr("job metrics ID"));
}

}  // namespace
}  // namespace tlserve::cli
