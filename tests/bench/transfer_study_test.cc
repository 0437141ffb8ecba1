#include "bench/transfer_study_lib.h"

#include <algorithm>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve::bench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const Split& Related() { return StudySplits()[0]; }

v1::JobSpec Spec(const std::string& arm, int shots, bool quick = true) {
  StudyOptions options;
  options.quick = quick;
  absl::StatusOr<v1::JobSpec> spec =
      StudyArmSpec(arm, Related(), shots, 7, options, "ds", "bb");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.value_or(v1::JobSpec());
}

TEST(TransferStudyTest, SplitsAreDisjointAndCoverTenClasses) {
  ASSERT_EQ(StudySplits().size(), 2u);
  for (const Split& split : StudySplits()) {
    std::vector<int32_t> all = split.source;
    all.insert(all.end(), split.target.begin(), split.target.end());
    std::sort(all.begin(), all.end());
    EXPECT_THAT(all, ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)) << split.name;
  }
  EXPECT_THAT(StudySplits()[1].target, ElementsAre(5, 6, 7, 8, 9));
}

TEST(TransferStudyTest, ParsesShotsAndRejectsBadOnes) {
  EXPECT_THAT(*ParseShots("1,5, 20,all"), ElementsAre(1, 5, 20, kAllShots));
  EXPECT_THAT(ParseShots("1,x").status().message(), HasSubstr("'x'"));
  EXPECT_FALSE(ParseShots("0").ok());
  EXPECT_FALSE(ParseShots("").ok());
  EXPECT_EQ(ShotsLabel(kAllShots), "all");
}

TEST(TransferStudyTest, EpochRuleGivesSmallShotsEnoughSteps) {
  EXPECT_EQ(TrainImagesPerClass(1), 1);
  EXPECT_EQ(TrainImagesPerClass(5), 4);
  EXPECT_EQ(TrainImagesPerClass(20), 16);
  EXPECT_EQ(TrainImagesPerClass(kAllShots), 4800);
  // quick: 60 steps; 1 label x 5 classes is one batch -> capped at 30.
  EXPECT_EQ(StudyEpochs(1, 5, true), 30);
  EXPECT_EQ(StudyEpochs(5, 5, true), 30);   // 20 images, 2 batches
  EXPECT_EQ(StudyEpochs(20, 5, true), 12);  // 80 images, 5 batches
  EXPECT_EQ(StudyEpochs(kAllShots, 5, true), 3);
  // full: 150 steps in [5, 60].
  EXPECT_EQ(StudyEpochs(20, 5, false), 30);
  EXPECT_EQ(StudyEpochs(100, 5, false), 22);  // 400 images, 7 batches of 64
  EXPECT_EQ(StudyEpochs(kAllShots, 5, false), 5);
}

TEST(TransferStudyTest, ArmSpecsDifferOnlyInRecipe) {
  const v1::JobSpec scratch = Spec("scratch", 5);
  EXPECT_EQ(scratch.backbone_init(), v1::RANDOM);
  EXPECT_EQ(scratch.freeze().mode(), v1::FreezePolicy::FULL);
  EXPECT_THAT(scratch.data().class_subset(), ElementsAre(2, 3, 4, 6, 7));
  EXPECT_EQ(scratch.data().samples_per_class(), 5);
  EXPECT_EQ(scratch.epochs(), 30);
  EXPECT_EQ(scratch.seed(), 7u);
  EXPECT_EQ(scratch.batch_size(), 16);

  const v1::JobSpec frozen = Spec("frozen", 5);
  EXPECT_EQ(frozen.backbone_init(), v1::PRETRAINED);
  EXPECT_EQ(frozen.freeze().mode(), v1::FreezePolicy::FROZEN);
  EXPECT_EQ(frozen.backbone_id(), "bb");

  const v1::JobSpec last = Spec("last_block", 5);
  EXPECT_EQ(last.freeze().mode(), v1::FreezePolicy::LAST_N_BLOCKS);
  EXPECT_EQ(last.freeze().n_blocks(), 1);
  EXPECT_FLOAT_EQ(last.freeze().backbone_lr_scale(), 0.1f);

  const v1::JobSpec full = Spec("full_low_lr", 5);
  EXPECT_EQ(full.backbone_init(), v1::PRETRAINED);
  EXPECT_EQ(full.freeze().mode(), v1::FreezePolicy::FULL);
  EXPECT_FLOAT_EQ(full.freeze().backbone_lr_scale(), 0.1f);
  EXPECT_FLOAT_EQ(full.optimizer().learning_rate(), 1e-2f);

  const v1::JobSpec few = Spec("few_shot", 5);
  EXPECT_EQ(few.kind(), v1::FEW_SHOT);
  EXPECT_EQ(few.epochs(), 0);
  EXPECT_EQ(few.freeze().mode(), v1::FreezePolicy::FROZEN);
  EXPECT_EQ(few.data().samples_per_class(), 5);
  EXPECT_EQ(few.data().validation_fraction(), 0.0f);  // all 5 are examples
  EXPECT_EQ(few.backbone_id(), "bb");
  EXPECT_THAT(few.data().class_subset(), ElementsAre(2, 3, 4, 6, 7));

  EXPECT_FALSE(StudyArmSpec("bogus", Related(), 5, 1, StudyOptions(), "d", "b")
                   .ok());
}

TEST(TransferStudyTest, GradualUnfreezesAtThirds) {
  const v1::JobSpec gradual = Spec("gradual", 5);  // 30 epochs
  EXPECT_EQ(gradual.freeze().mode(), v1::FreezePolicy::FROZEN);
  EXPECT_FLOAT_EQ(gradual.freeze().backbone_lr_scale(), 0.1f);
  ASSERT_EQ(gradual.freeze().gradual_unfreeze_size(), 3);
  EXPECT_EQ(gradual.freeze().gradual_unfreeze(0).epoch(), 1);
  EXPECT_EQ(gradual.freeze().gradual_unfreeze(0).n_blocks(), 0);
  EXPECT_EQ(gradual.freeze().gradual_unfreeze(1).epoch(), 11);
  EXPECT_EQ(gradual.freeze().gradual_unfreeze(1).n_blocks(), 1);
  EXPECT_EQ(gradual.freeze().gradual_unfreeze(2).epoch(), 21);
  EXPECT_EQ(gradual.freeze().gradual_unfreeze(2).n_blocks(), 2);

  const v1::JobSpec short_run = Spec("gradual", kAllShots);  // 3 epochs
  ASSERT_EQ(short_run.epochs(), 3);
  ASSERT_EQ(short_run.freeze().gradual_unfreeze_size(), 3);
  EXPECT_EQ(short_run.freeze().gradual_unfreeze(2).epoch(), 3);
}

TEST(TransferStudyTest, TimeToAccuracySumsEpochSeconds) {
  google::protobuf::RepeatedPtrField<v1::EpochMetrics> metrics;
  for (float acc : {0.4f, 0.65f, 0.8f}) {
    v1::EpochMetrics* m = metrics.Add();
    m->set_val_accuracy(acc);
    m->set_seconds(1.5);
    m->add_per_class_val_accuracy(acc);
  }
  EXPECT_DOUBLE_EQ(TimeToAccuracy(metrics, 0.6), 3.0);
  EXPECT_DOUBLE_EQ(TimeToAccuracy(metrics, 0.8), 4.5);
  EXPECT_LT(TimeToAccuracy(metrics, 0.9), 0);
}

std::vector<StudyRow> SampleRows() {
  std::vector<StudyRow> rows;
  auto add = [&](std::string arm, int shots, double acc, double tta) {
    StudyRow row;
    row.split = "related";
    row.arm = std::move(arm);
    row.shots = shots;
    row.test_accuracy = acc;
    row.wall_seconds = 2;
    row.tta_seconds = tta;
    rows.push_back(row);
  };
  add("scratch", 5, 0.5, -1);
  add("scratch", 5, 0.6, 4);
  add("frozen", 5, 0.7, 1);
  add("frozen", 5, 0.7, 2);
  add("scratch", 1, 0.3, -1);
  return rows;
}

TEST(TransferStudyTest, SummarizesCellsInFirstSeenOrder) {
  const std::vector<StudyCell> cells = SummarizeRows(SampleRows());
  ASSERT_EQ(cells.size(), 3u);
  EXPECT_EQ(cells[0].arm, "scratch");
  EXPECT_EQ(cells[0].shots, 5);
  EXPECT_EQ(cells[0].runs, 2);
  EXPECT_DOUBLE_EQ(cells[0].accuracy_mean, 0.55);
  EXPECT_NEAR(cells[0].accuracy_std, 0.0707107, 1e-6);
  EXPECT_EQ(cells[0].tta_reached, 1);
  EXPECT_DOUBLE_EQ(cells[0].tta_seconds_mean, 4);
  EXPECT_EQ(cells[1].arm, "frozen");
  EXPECT_DOUBLE_EQ(cells[1].accuracy_std, 0);
  EXPECT_DOUBLE_EQ(cells[1].tta_seconds_mean, 1.5);
  EXPECT_EQ(cells[2].shots, 1);
  EXPECT_EQ(cells[2].tta_reached, 0);
  EXPECT_EQ(FindScratch(cells, cells[1]), &cells[0]);
}

TEST(TransferStudyTest, TableShowsDifferenceToScratch) {
  const std::string table = FormatMarkdownTable(SummarizeRows(SampleRows()), 0.6);
  EXPECT_THAT(table, HasSubstr("| related | 5 | frozen | 0.700 ± 0.000 | "
                               "+15.0 | 2.0 | 1.50 (2/2) |"));
  EXPECT_THAT(table, HasSubstr("| related | 1 | scratch | 0.300 ± 0.000 |  | "
                               "2.0 | - (0/1) |"));
  EXPECT_THAT(table, HasSubstr("s to val acc 0.60"));
}

TEST(TransferStudyTest, JsonHasRowsCellsAndNullForUnreached) {
  StudyMeta meta;
  meta.command = "transfer_study --quick";
  meta.tta_threshold = 0.6;
  const std::vector<StudyRow> rows = SampleRows();
  const std::string json = StudyToJson(meta, rows, SummarizeRows(rows));
  EXPECT_THAT(json, HasSubstr("\"command\": \"transfer_study --quick\""));
  EXPECT_THAT(json, HasSubstr("\"tta_seconds\": null"));
  EXPECT_THAT(json, HasSubstr("\"test_accuracy_mean\": 0.55"));
}

TEST(TransferStudyTest, RowsRoundTripThroughJson) {
  const std::vector<StudyRow> rows = SampleRows();
  absl::StatusOr<std::vector<StudyRow>> back =
      RowsFromJson(StudyToJson(StudyMeta(), rows, SummarizeRows(rows)));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), rows.size());
  EXPECT_EQ((*back)[2].arm, "frozen");
  EXPECT_EQ((*back)[4].shots, 1);
  EXPECT_DOUBLE_EQ((*back)[1].test_accuracy, 0.6);
  EXPECT_DOUBLE_EQ((*back)[1].tta_seconds, 4);
  EXPECT_LT((*back)[0].tta_seconds, 0);
  EXPECT_FALSE(RowsFromJson("{}").ok());
}

TEST(TransferStudyTest, ChartHasOnePanelPerSplit) {
  std::vector<StudyRow> rows = SampleRows();
  StudyRow naive = rows[0];
  naive.split = "naive";
  rows.push_back(naive);
  absl::StatusOr<plot::Canvas> chart = DrawStudyChart(SummarizeRows(rows));
  ASSERT_TRUE(chart.ok()) << chart.status();
  EXPECT_GT(chart->width(), chart->height());
  EXPECT_TRUE(chart->EncodePng().ok());
}

}  // namespace
}  // namespace tlserve::bench
