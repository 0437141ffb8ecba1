#include "worker/data_tensors.h"

#include <ATen/ATen.h>

#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/input_fit.h"
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

// Images of assorted sizes and channels with seeded noise, so any
// difference in resizing shows.
DecodedDataset AssortedSizes(int classes, int per_class, uint64_t seed) {
  std::mt19937_64 rng(seed);
  DecodedDataset data;
  for (int c = 0; c < classes; ++c)
    data.class_names.push_back(std::to_string(c));
  for (int i = 0; i < classes * per_class; ++i) {
    Image image;
    image.height = 5 + static_cast<int>(rng() % 40);
    image.width = 5 + static_cast<int>(rng() % 40);
    image.channels = i % 3 == 0 ? 1 : 3;
    if (i % 7 == 0) image.height = image.width = 16;  // already at size
    image.pixels.resize(static_cast<size_t>(image.height) * image.width *
                        image.channels);
    for (uint8_t& p : image.pixels) p = static_cast<uint8_t>(rng());
    data.train.images.push_back(std::move(image));
    data.train.labels.push_back(i % classes);
  }
  return data;
}

// What LoadDataset's fit_height/fit_width hold: ResizeBilinear at load.
DecodedDataset Fitted(DecodedDataset data, int size) {
  for (Image& image : data.train.images) {
    image = ResizeBilinear(image, size, size);
  }
  return data;
}

TEST(DataTensorsTest, FittedDatasetGivesTheSameTensors) {
  const DecodedDataset data = AssortedSizes(3, 12, 5);
  const DecodedDataset fitted = Fitted(data, 16);
  tlserve::v1::DataSpec spec;
  spec.set_validation_fraction(0.25f);
  for (int channels : {1, 3}) {
    const tlserve::v1::InputSpec input = testing::SimpleSpec(channels, 16);
    absl::StatusOr<TrainingData> want =
        PrepareTrainingData(data, spec, input, 3);
    absl::StatusOr<TrainingData> got =
        PrepareTrainingData(fitted, spec, input, 3);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_THAT(want->train.images.sizes().vec(),
                ElementsAre(27, channels, 16, 16));
    EXPECT_TRUE(at::equal(want->train.images, got->train.images)) << channels;
    EXPECT_TRUE(at::equal(want->val.images, got->val.images)) << channels;
    EXPECT_TRUE(at::equal(want->train.labels, got->train.labels));
  }
}

TEST(DataTensorsTest, CenterCropFitCropsTrainingAndSingleImagesAlike) {
  const DecodedDataset data = AssortedSizes(3, 12, 5);
  tlserve::v1::DataSpec spec;
  spec.set_validation_fraction(0.25f);
  for (int channels : {1, 3}) {
    tlserve::v1::InputSpec crop = testing::SimpleSpec(channels, 16);
    crop.mutable_fit()->set_mode(tlserve::v1::InputFit::RESIZE_CENTER_CROP);
    // The same records fitted beforehand, then taken as they are.
    DecodedDataset cropped = data;
    for (Image& image : cropped.train.images) image = FitImage(image, crop);
    absl::StatusOr<TrainingData> want = PrepareTrainingData(
        cropped, spec, testing::SimpleSpec(channels, 16), 3);
    absl::StatusOr<TrainingData> got = PrepareTrainingData(data, spec, crop, 3);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(at::equal(want->train.images, got->train.images)) << channels;
    EXPECT_TRUE(at::equal(want->val.images, got->val.images)) << channels;
    // One image, as inference converts it.
    absl::StatusOr<at::Tensor> one = ImageToTensor(data.train.images[1], crop);
    absl::StatusOr<at::Tensor> fitted =
        ImageToTensor(cropped.train.images[1], testing::SimpleSpec(channels, 16));
    ASSERT_TRUE(one.ok()) << one.status();
    ASSERT_TRUE(fitted.ok()) << fitted.status();
    EXPECT_TRUE(at::equal(*one, *fitted));
  }
}

TEST(DataTensorsTest, ResizesWithResizeBilinear) {
  const DecodedDataset data = AssortedSizes(1, 6, 9);
  for (const Image& image : data.train.images) {
    const Image want = ResizeBilinear(image, 11, 11);
    absl::StatusOr<at::Tensor> got =
        ImageToTensor(image, testing::SimpleSpec(image.channels, 11));
    ASSERT_TRUE(got.ok()) << got.status();
    // [C, H, W] back to interleaved [H, W, C].
    at::Tensor hwc = got->permute({1, 2, 0}).contiguous();
    const uint8_t* bytes = hwc.data_ptr<uint8_t>();
    EXPECT_EQ(std::vector<uint8_t>(bytes, bytes + hwc.numel()), want.pixels);
  }
}

}  // namespace
}  // namespace tlserve::worker
