#include "client/job_progress.h"

#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(FormatProgressLineTest, ShowsEpochBatchLossAccuracyAndEta) {
  v1::Progress p;
  p.set_epoch(2);
  p.set_total_epochs(4);
  p.set_batch(5);
  p.set_batches_per_epoch(10);
  p.set_loss(0.5f);
  p.set_accuracy(0.75f);
  p.set_eta_seconds(83);
  std::string line = FormatProgressLine(p, 8);
  // 1.5 of 4 epochs done: 3 of 8 cells.
  EXPECT_EQ(line,
            "epoch 2/4 [###.....] batch 5/10 loss 0.5000 acc 0.750 ETA 1m23s");
  EXPECT_THAT(FormatProgressLine(p, 0), Not(HasSubstr("[")));
}

TEST(FormatSecondsTest, Units) {
  EXPECT_EQ(FormatSeconds(7), "7s");
  EXPECT_EQ(FormatSeconds(245), "4m05s");
  EXPECT_EQ(FormatSeconds(3723), "1h02m03s");
  EXPECT_EQ(FormatSeconds(-1), "?");
}

TEST(JobProgressPrinterTest, PlainOutputHasOneLinePerEvent) {
  std::ostringstream out;
  JobProgressPrinter printer(out, /*tty=*/false);
  v1::JobEvent change;
  change.mutable_state_change()->set_from(v1::QUEUED);
  change.mutable_state_change()->set_to(v1::RUNNING);
  change.mutable_state_change()->set_attempt(1);
  printer.OnEvent(change);
  v1::JobEvent progress;
  progress.mutable_progress()->set_epoch(1);
  progress.mutable_progress()->set_total_epochs(3);
  printer.OnEvent(progress);
  v1::JobEvent metrics;
  metrics.mutable_epoch_metrics()->set_epoch(1);
  metrics.mutable_epoch_metrics()->set_val_accuracy(0.5f);
  printer.OnEvent(metrics);
  printer.Finish();
  EXPECT_EQ(out.str(),
            "state QUEUED -> RUNNING (attempt 1)\n"
            "epoch 1/3 batch 0/0 loss 0.0000 acc 0.000\n"
            "epoch 1/3: train loss 0.0000 acc 0.000 | val loss 0.0000 acc "
            "0.500 | 0.0s\n");
  EXPECT_THAT(out.str(), Not(HasSubstr("\r")));
}

TEST(JobProgressPrinterTest, TtyRedrawsTheBarInPlace) {
  std::ostringstream out;
  JobProgressPrinter printer(out, /*tty=*/true);
  v1::JobEvent progress;
  progress.mutable_progress()->set_epoch(1);
  progress.mutable_progress()->set_total_epochs(3);
  printer.OnEvent(progress);
  printer.OnEvent(progress);
  printer.Finish();
  EXPECT_THAT(out.str(), HasSubstr("\r\033[K"));
  EXPECT_EQ(out.str().back(), '\n');
}

}  // namespace
}  // namespace tlserve::cli
