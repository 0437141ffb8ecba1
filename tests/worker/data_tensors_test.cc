#include "worker/data_tensors.h"

#include <ATen/ATen.h>

#include <map>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/test_util.h"

namespace tlserve::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::map<int64_t, int64_t> Counts(const at::Tensor& labels) {
  std::map<int64_t, int64_t> counts;
  for (int64_t i = 0; i < labels.size(0); ++i)
    ++counts[labels[i].item<int64_t>()];
  return counts;
}

TEST(DataTensorsTest, SubsetSamplesPerClassAndStratifiedValidation) {
  DecodedDataset data = testing::SyntheticDataset(4, 20, 6, 10, 1, 1);
  tlserve::v1::DataSpec spec;
  spec.add_class_subset(3);
  spec.add_class_subset(1);
  spec.set_samples_per_class(10);
  spec.set_validation_fraction(0.2f);
  spec.set_max_test_samples(8);
  absl::StatusOr<TrainingData> out =
      PrepareTrainingData(data, spec, testing::SimpleSpec(1, 10), 7);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT(out->class_names, ElementsAre("class_3", "class_1"));
  EXPECT_THAT(Counts(out->train.labels),
              (std::map<int64_t, int64_t>{{0, 8}, {1, 8}}));
  EXPECT_THAT(Counts(out->val.labels),
              (std::map<int64_t, int64_t>{{0, 2}, {1, 2}}));
  EXPECT_EQ(out->test.size(), 8);
  EXPECT_FALSE(out->test_is_val);
  EXPECT_THAT(out->train.images.sizes().vec(), ElementsAre(16, 1, 10, 10));
  EXPECT_EQ(out->train.images.scalar_type(), at::kByte);

  // Same seed, same split; another seed, another sample.
  absl::StatusOr<TrainingData> again =
      PrepareTrainingData(data, spec, testing::SimpleSpec(1, 10), 7);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(at::equal(out->train.images, again->train.images));
  absl::StatusOr<TrainingData> other =
      PrepareTrainingData(data, spec, testing::SimpleSpec(1, 10), 8);
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(at::equal(out->train.images, other->train.images));
}

TEST(DataTensorsTest, NoTestSplitUsesValidation) {
  DecodedDataset data = testing::SyntheticDataset(2, 10, 0, 8, 1, 1);
  tlserve::v1::DataSpec spec;
  spec.set_validation_fraction(0.3f);
  absl::StatusOr<TrainingData> out =
      PrepareTrainingData(data, spec, testing::SimpleSpec(1, 8), 1);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->test_is_val);
  EXPECT_EQ(out->test.size(), 6);
  EXPECT_EQ(out->train.size(), 14);
}

TEST(DataTensorsTest, ConvertsChannelsAndSize) {
  Image gray{2, 2, 1, {0, 100, 200, 255}};
  absl::StatusOr<at::Tensor> rgb =
      ImageToTensor(gray, testing::SimpleSpec(3, 2));
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_THAT(rgb->sizes().vec(), ElementsAre(3, 2, 2));
  EXPECT_EQ(rgb->index({2, 1, 0}).item<uint8_t>(), 200);

  Image color{1, 1, 3, {10, 20, 31}};
  absl::StatusOr<at::Tensor> mono =
      ImageToTensor(color, testing::SimpleSpec(1, 1));
  ASSERT_TRUE(mono.ok());
  EXPECT_EQ(mono->index({0, 0, 0}).item<uint8_t>(), 20);

  absl::StatusOr<at::Tensor> big =
      ImageToTensor(gray, testing::SimpleSpec(1, 4));
  ASSERT_TRUE(big.ok());
  EXPECT_THAT(big->sizes().vec(), ElementsAre(1, 4, 4));
  EXPECT_EQ(big->index({0, 0, 0}).item<uint8_t>(), 0);
  EXPECT_EQ(big->index({0, 3, 3}).item<uint8_t>(), 255);

  Image broken{4, 4, 1, {1, 2, 3}};
  EXPECT_THAT(
      ImageToTensor(broken, testing::SimpleSpec(1, 4)).status().message(),
      HasSubstr("holds 3 bytes"));
}

TEST(DataTensorsTest, RejectsBadSpecs) {
  DecodedDataset data = testing::SyntheticDataset(2, 4, 0, 8, 1, 1);
  tlserve::v1::DataSpec spec;
  spec.add_class_subset(0);
  spec.add_class_subset(0);
  EXPECT_THAT(PrepareTrainingData(data, spec, testing::SimpleSpec(1, 8), 1)
                  .status()
                  .message(),
              HasSubstr("twice"));
  spec.clear_class_subset();
  spec.set_validation_fraction(1.0f);
  EXPECT_EQ(PrepareTrainingData(data, spec, testing::SimpleSpec(1, 8), 1)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  spec.set_validation_fraction(0);
  data.train.labels[3] = 7;
  EXPECT_THAT(PrepareTrainingData(data, spec, testing::SimpleSpec(1, 8), 1)
                  .status()
                  .message(),
              HasSubstr("label 7 at record 3"));
}

TEST(DataTensorsTest, InputSpecFromData) {
  DecodedDataset data = testing::SyntheticDataset(2, 4, 0, 12, 1, 1);
  tlserve::v1::InputSpec requested;
  requested.set_height(16);
  absl::StatusOr<tlserve::v1::InputSpec> spec =
      ResolveInputSpec(data, requested);
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->channels(), 1);
  EXPECT_EQ(spec->height(), 16);
  EXPECT_EQ(spec->width(), 12);
  std::vector<float> mean, std;
  ChannelMeanStd(at::full({2, 1, 2, 2}, 51, at::kByte), &mean, &std);
  EXPECT_THAT(mean, ElementsAre(::testing::FloatNear(0.2f, 1e-6f)));
  EXPECT_THAT(std, ElementsAre(::testing::FloatNear(1e-3f, 1e-6f)));
}

}  // namespace
}  // namespace tlserve::worker
