#include <cmath>
#include <string>
#include <vector>

#include "client/demo.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

namespace tlserve::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ComputeMeanStdTest, UsesSampleStandardDeviation) {
  MeanStd m = ComputeMeanStd({0.8, 0.9, 1.0});
  EXPECT_NEAR(m.mean, 0.9, 1e-12);
  EXPECT_NEAR(m.std, 0.1, 1e-12);
}

TEST(ComputeMeanStdTest, FewValues) {
  EXPECT_EQ(ComputeMeanStd({}).mean, 0);
  MeanStd one = ComputeMeanStd({0.5});
  EXPECT_EQ(one.mean, 0.5);
  EXPECT_EQ(one.std, 0);
}

DemoSummary MakeSummary() {
  DemoSummary s;
  s.shots = 10;
  s.pretrain_job_id = "job-p";
  s.backbone_id = "bb-1";
  s.pretrain_seconds = 42.5;
  s.arms.push_back(SummarizeArm(
      "frozen",
      {{1, "j1", 0.70, 10}, {2, "j2", 0.72, 12}, {3, "j3", 0.74, 14}}));
  s.arms.push_back(SummarizeArm(
      "last_block",
      {{1, "j4", 0.78, 20}, {2, "j5", 0.80, 22}, {3, "j6", 0.82, 24}}));
  s.arms.push_back(SummarizeArm(
      "scratch",
      {{1, "j7", 0.50, 30}, {2, "j8", 0.60, 30}, {3, "j9", 0.55, 30}}));
  return s;
}

TEST(SummarizeArmTest, MeansAndStd) {
  ArmSummary arm = MakeSummary().arms[1];
  EXPECT_EQ(arm.name, "last_block");
  EXPECT_NEAR(arm.test_accuracy_mean, 0.80, 1e-12);
  EXPECT_NEAR(arm.test_accuracy_std, 0.02, 1e-12);
  EXPECT_NEAR(arm.seconds_mean, 22, 1e-12);
  EXPECT_EQ(arm.runs.size(), 3u);
}

TEST(BestTransferArmTest, IgnoresScratch) {
  DemoSummary s = MakeSummary();
  s.arms[2].test_accuracy_mean = 0.99;  // scratch never counts as transfer
  ASSERT_NE(BestTransferArm(s), nullptr);
  EXPECT_EQ(BestTransferArm(s)->name, "last_block");
  EXPECT_EQ(BestTransferArm(DemoSummary{}), nullptr);
}

TEST(DemoSummaryToJsonTest, HasTheDocumentedShape) {
  std::string json = DemoSummaryToJson(MakeSummary());
  google::protobuf::Struct doc;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &doc).ok())
      << json;
  const auto& f = doc.fields();
  const auto& transfer = f.at("transfer").struct_value().fields();
  EXPECT_NEAR(transfer.at("test_accuracy").number_value(), 0.80, 1e-6);
  EXPECT_NEAR(transfer.at("seconds").number_value(), 22, 1e-6);
  EXPECT_EQ(transfer.at("arm").string_value(), "last_block");
  const auto& scratch = f.at("scratch").struct_value().fields();
  EXPECT_NEAR(scratch.at("test_accuracy").number_value(), 0.55, 1e-6);
  EXPECT_NEAR(scratch.at("seconds").number_value(), 30, 1e-6);
  EXPECT_EQ(f.at("shots").number_value(), 10);
  const auto& pretrain = f.at("pretrain").struct_value().fields();
  EXPECT_EQ(pretrain.at("job_id").string_value(), "job-p");
  EXPECT_EQ(pretrain.at("backbone_id").string_value(), "bb-1");
  EXPECT_NEAR(pretrain.at("seconds").number_value(), 42.5, 1e-6);

  const auto& arms = f.at("arms").list_value().values();
  ASSERT_EQ(arms.size(), 3);
  const auto& frozen = arms[0].struct_value().fields();
  EXPECT_EQ(frozen.at("name").string_value(), "frozen");
  EXPECT_NEAR(frozen.at("test_accuracy_mean").number_value(), 0.72, 1e-6);
  EXPECT_NEAR(frozen.at("test_accuracy_std").number_value(), 0.02, 1e-6);
  EXPECT_NEAR(frozen.at("seconds_mean").number_value(), 12, 1e-6);
  const auto& per_seed = frozen.at("per_seed").list_value().values();
  ASSERT_EQ(per_seed.size(), 3);
  const auto& first = per_seed[0].struct_value().fields();
  EXPECT_EQ(first.at("seed").number_value(), 1);
  EXPECT_EQ(first.at("job_id").string_value(), "j1");
  EXPECT_NEAR(first.at("test_accuracy").number_value(), 0.70, 1e-6);
  EXPECT_NEAR(first.at("seconds").number_value(), 10, 1e-6);
}

TEST(DemoSummaryToJsonTest, NonFiniteNumbersBecomeNull) {
  DemoSummary s = MakeSummary();
  s.pretrain_seconds = std::nan("");
  std::string json = DemoSummaryToJson(s);
  EXPECT_THAT(json, HasSubstr("\"seconds\": null"));
  google::protobuf::Struct doc;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(json, &doc).ok());
}

TEST(FormatDemoTableTest, ShowsMeanAndStd) {
  std::string table = FormatDemoTable(MakeSummary());
  EXPECT_THAT(table, HasSubstr("last_block"));
  EXPECT_THAT(table, HasSubstr("0.8000 ± 0.0200"));
}

TEST(DemoArmSpecTest, ArmsDifferOnlyInFreezeInitAndRate) {
  DemoOptions options;
  auto frozen = DemoArmSpec("frozen", options, "ds", "bb", 2);
  auto last = DemoArmSpec("last_block", options, "ds", "bb", 2);
  auto scratch = DemoArmSpec("scratch", options, "ds", "bb", 2);
  ASSERT_TRUE(frozen.ok() && last.ok() && scratch.ok());
  EXPECT_EQ(frozen->freeze().mode(), v1::FreezePolicy::FROZEN);
  EXPECT_EQ(frozen->backbone_init(), v1::PRETRAINED);
  EXPECT_EQ(last->freeze().mode(), v1::FreezePolicy::LAST_N_BLOCKS);
  EXPECT_EQ(last->freeze().n_blocks(), 1);
  EXPECT_FLOAT_EQ(last->freeze().backbone_lr_scale(), 0.1f);
  EXPECT_EQ(scratch->freeze().mode(), v1::FreezePolicy::FULL);
  EXPECT_EQ(scratch->backbone_init(), v1::RANDOM);
  for (const v1::JobSpec* spec : {&*frozen, &*last, &*scratch}) {
    EXPECT_EQ(spec->kind(), v1::FINE_TUNE);
    EXPECT_EQ(spec->backbone_id(), "bb");
    EXPECT_EQ(spec->data().dataset_id(), "ds");
    EXPECT_THAT(spec->data().class_subset(), ElementsAre(2, 3, 4, 6, 7));
    EXPECT_EQ(spec->data().samples_per_class(), 10);
    EXPECT_FLOAT_EQ(spec->data().validation_fraction(), 0.2f);
    EXPECT_EQ(spec->epochs(), 30);
    EXPECT_EQ(spec->batch_size(), 16);
    EXPECT_EQ(spec->seed(), 2u);
    EXPECT_EQ(spec->head().hidden_sizes_size(), 0);
  }
  EXPECT_FALSE(DemoArmSpec("nope", options, "ds", "bb", 1).ok());
}

TEST(DemoPretrainSpecTest, UsesSourceClassesAndTheBrief) {
  DemoOptions options;
  v1::JobSpec spec = DemoPretrainSpec(options, "ds");
  EXPECT_EQ(spec.kind(), v1::PRETRAIN);
  EXPECT_THAT(spec.data().class_subset(), ElementsAre(0, 1, 5, 8, 9));
  EXPECT_EQ(spec.data().samples_per_class(), 1000);
  EXPECT_EQ(spec.epochs(), 3);
  EXPECT_EQ(spec.optimizer().kind(), v1::OptimizerSpec::ADAMW);
  EXPECT_FLOAT_EQ(spec.optimizer().learning_rate(), 2e-3f);
  EXPECT_EQ(spec.batch_size(), 64);
  EXPECT_EQ(spec.seed(), 1u);
  EXPECT_EQ(spec.pretrain().backbone_name(), "fmnist-source-resnet");
}

}  // namespace
}  // namespace tlserve::cli
