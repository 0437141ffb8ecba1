#include "client/backbone_rank.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

RankedBackbone Scored(const std::string& id, double accuracy, double seconds) {
  RankedBackbone r;
  r.backbone_id = id;
  r.name = "name of " + id;
  r.accuracy = accuracy;
  r.seconds = seconds;
  r.scored = 500;
  return r;
}

TEST(BackboneRankTest, JobSpecIsAFewShotJobOnTheSameImagesForEveryCandidate) {
  RankOptions options;
  options.dataset_id = "ds-1";
  options.class_subset = {5, 6, 7};
  options.shots = 10;
  options.max_test_samples = 300;
  options.seed = 4;
  const v1::JobSpec a = RankJobSpec(options, "bb-a", /*has_test_split=*/true);
  const v1::JobSpec b = RankJobSpec(options, "bb-b", /*has_test_split=*/true);
  EXPECT_EQ(a.kind(), v1::FEW_SHOT);
  EXPECT_EQ(a.backbone_id(), "bb-a");
  EXPECT_EQ(a.data().dataset_id(), "ds-1");
  EXPECT_THAT(a.data().class_subset(), ElementsAre(5, 6, 7));
  EXPECT_EQ(a.data().samples_per_class(), 10);
  EXPECT_EQ(a.data().max_test_samples(), 300);
  EXPECT_EQ(a.data().validation_fraction(), 0.0f);
  EXPECT_EQ(a.seed(), 4u);
  // Same seed and data: every candidate sees the same labelled images.
  v1::JobSpec b_as_a = b;
  b_as_a.set_backbone_id("bb-a");
  b_as_a.set_display_name(a.display_name());
  EXPECT_EQ(b_as_a.SerializeAsString(), a.SerializeAsString());
  // Without a test split, images are held out to score on.
  EXPECT_GT(RankJobSpec(options, "bb-a", false).data().validation_fraction(), 0.0f);
}

TEST(BackboneRankTest, OrdersByAccuracyThenSpeedWithFailuresLast) {
  RankedBackbone failed = Scored("bb-bad", 0, 0);
  failed.error = "INVALID_ARGUMENT: channels";
  std::vector<RankedBackbone> ordered = OrderRanking(
      {Scored("bb-1", 0.70, 3), failed, Scored("bb-2", 0.91, 9),
       Scored("bb-3", 0.70, 1)});
  std::vector<std::string> ids;
  for (const auto& r : ordered) ids.push_back(r.backbone_id);
  EXPECT_THAT(ids, ElementsAre("bb-2", "bb-3", "bb-1", "bb-bad"));

  const std::string table = FormatRanking(ordered);
  EXPECT_THAT(table, HasSubstr("rank"));
  EXPECT_THAT(table, HasSubstr("1     bb-2"));
  EXPECT_THAT(table, HasSubstr("0.9100"));
  EXPECT_THAT(table, HasSubstr("3     bb-1"));
  EXPECT_THAT(table, HasSubstr("failed: INVALID_ARGUMENT: channels"));
}

}  // namespace
}  // namespace tlserve::cli
