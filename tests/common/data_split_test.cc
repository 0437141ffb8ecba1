#include "common/data_split.h"

#include <algorithm>
#include <map>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// n_per_class records of each class, interleaved: 0, 1, ..., k-1, 0, 1, ...
std::vector<int32_t> Labels(int num_classes, int n_per_class) {
  std::vector<int32_t> labels;
  for (int i = 0; i < n_per_class; ++i) {
    for (int c = 0; c < num_classes; ++c) labels.push_back(c);
  }
  return labels;
}

std::map<int32_t, int> CountsOf(const std::vector<size_t>& records,
                                const std::vector<int32_t>& labels) {
  std::map<int32_t, int> counts;
  for (size_t r : records) ++counts[labels[r]];
  return counts;
}

TEST(DataSplitTest, SubsetCapAndStratifiedValidation) {
  const std::vector<int32_t> train = Labels(4, 20);
  const std::vector<int32_t> test = Labels(4, 6);
  tlserve::v1::DataSpec spec;
  spec.add_class_subset(3);
  spec.add_class_subset(1);
  spec.set_samples_per_class(10);
  spec.set_validation_fraction(0.2f);
  spec.set_max_test_samples(8);
  absl::StatusOr<SplitIndices> split = SplitDataset(train, test, 4, spec, 7);
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_THAT(split->classes, ElementsAre(3, 1));
  EXPECT_THAT(split->label_map, ElementsAre(-1, 1, -1, 0));
  EXPECT_EQ(CountsOf(split->train, train),
            (std::map<int32_t, int>{{1, 8}, {3, 8}}));
  EXPECT_EQ(CountsOf(split->val, train),
            (std::map<int32_t, int>{{1, 2}, {3, 2}}));
  EXPECT_EQ(split->test.size(), 8u);
  for (size_t r : split->test) EXPECT_TRUE(test[r] == 1 || test[r] == 3);
  EXPECT_TRUE(std::is_sorted(split->train.begin(), split->train.end()));
  EXPECT_TRUE(std::is_sorted(split->val.begin(), split->val.end()));
  EXPECT_TRUE(std::is_sorted(split->test.begin(), split->test.end()));
  std::set<size_t> train_set(split->train.begin(), split->train.end());
  for (size_t r : split->val) EXPECT_EQ(train_set.count(r), 0u) << r;
}

TEST(DataSplitTest, SameSeedSameSplitOtherSeedOtherSample) {
  const std::vector<int32_t> train = Labels(3, 30);
  tlserve::v1::DataSpec spec;
  spec.set_samples_per_class(10);
  spec.set_validation_fraction(0.3f);
  absl::StatusOr<SplitIndices> a = SplitDataset(train, {}, 3, spec, 5);
  absl::StatusOr<SplitIndices> b = SplitDataset(train, {}, 3, spec, 5);
  absl::StatusOr<SplitIndices> c = SplitDataset(train, {}, 3, spec, 6);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->train, b->train);
  EXPECT_EQ(a->val, b->val);
  EXPECT_NE(a->train, c->train);
  EXPECT_TRUE(a->test.empty());
}

TEST(DataSplitTest, EveryClassKeepsATrainingSample) {
  // Class 0 has 1 record, class 1 has 2: validation takes none of class 0
  // and at most one of class 1, whatever the fraction.
  const std::vector<int32_t> train = {0, 1, 1, 2, 2, 2, 2, 2};
  tlserve::v1::DataSpec spec;
  spec.set_validation_fraction(0.9f);
  absl::StatusOr<SplitIndices> split = SplitDataset(train, {}, 3, spec, 1);
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_EQ(CountsOf(split->train, train),
            (std::map<int32_t, int>{{0, 1}, {1, 1}, {2, 1}}));
  EXPECT_EQ(CountsOf(split->val, train), (std::map<int32_t, int>{{1, 1}, {2, 4}}));
}

TEST(DataSplitTest, NoValidationWhenFractionIsZero) {
  const std::vector<int32_t> train = Labels(2, 5);
  tlserve::v1::DataSpec spec;
  absl::StatusOr<SplitIndices> split = SplitDataset(train, {}, 2, spec, 1);
  ASSERT_TRUE(split.ok());
  EXPECT_EQ(split->train.size(), 10u);
  EXPECT_TRUE(split->val.empty());
}

TEST(DataSplitTest, RefusesBadInputWithTheWorkersMessages) {
  const std::vector<int32_t> train = Labels(2, 4);
  tlserve::v1::DataSpec spec;
  EXPECT_EQ(SplitDataset(train, {}, 0, spec, 1).status().message(),
            "dataset has no class names");
  std::vector<int32_t> bad = train;
  bad[3] = 7;
  EXPECT_EQ(SplitDataset(bad, {}, 2, spec, 1).status().message(),
            "train split: label 7 at record 3 is outside [0, 2)");
  EXPECT_EQ(SplitDataset(train, {0, -1}, 2, spec, 1).status().message(),
            "test split: label -1 at record 1 is outside [0, 2)");
  spec.set_validation_fraction(1.0f);
  EXPECT_EQ(SplitDataset(train, {}, 2, spec, 1).status().message(),
            "data: validation_fraction 1 is outside [0, 1)");
  spec.set_validation_fraction(0);
  spec.set_samples_per_class(-1);
  EXPECT_THAT(SplitDataset(train, {}, 2, spec, 1).status().message(),
              HasSubstr("must not be negative"));
  spec.set_samples_per_class(0);
  spec.add_class_subset(0);
  spec.add_class_subset(0);
  EXPECT_EQ(SplitDataset(train, {}, 2, spec, 1).status().message(),
            "data: class_subset names label 0 twice");
  spec.clear_class_subset();
  spec.add_class_subset(2);
  EXPECT_EQ(SplitDataset(train, {}, 2, spec, 1).status().message(),
            "data: class_subset label 2 is outside [0, 2)");
  spec.clear_class_subset();
  EXPECT_THAT(SplitDataset({}, {}, 2, spec, 1).status().message(),
              HasSubstr("no training samples left"));
  EXPECT_EQ(SplitDataset(bad, {}, 2, spec, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tlserve
