#include "common/dataset_checks.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

Image Gray(uint8_t value, int side = 4) {
  Image image;
  image.height = side;
  image.width = side;
  image.channels = 1;
  image.pixels.assign(static_cast<size_t>(side) * side, value);
  return image;
}

TEST(DatasetChecksTest, HashSeesPixelsAndGeometry) {
  EXPECT_EQ(ImageContentHash(Gray(1)), ImageContentHash(Gray(1)));
  EXPECT_NE(ImageContentHash(Gray(1)), ImageContentHash(Gray(2)));
  Image wide = Gray(1);
  wide.height = 2;
  wide.width = 8;  // same bytes, other shape
  EXPECT_NE(ImageContentHash(Gray(1)), ImageContentHash(wide));
}

TEST(DatasetChecksTest, IndexRoundTripsAndRefusesGarbage) {
  DatasetImageIndex index;
  index.train_labels = {0, 2, 1};
  index.train_hashes = {1, 0xfedcba9876543210ull, 3};
  index.test_labels = {5};
  index.test_hashes = {42};
  absl::StatusOr<DatasetImageIndex> back =
      DecodeDatasetImageIndex(EncodeDatasetImageIndex(index));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->train_labels, index.train_labels);
  EXPECT_EQ(back->train_hashes, index.train_hashes);
  EXPECT_EQ(back->test_labels, index.test_labels);
  EXPECT_EQ(back->test_hashes, index.test_hashes);
  std::string cut = EncodeDatasetImageIndex(index);
  cut.pop_back();
  EXPECT_EQ(DecodeDatasetImageIndex(cut).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeDatasetImageIndex("nonsense").status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(DatasetChecksTest, CountsDuplicatesAndLeakageWithExamples) {
  DecodedDataset data;
  data.class_names = {"cat", "dog"};
  // Records 1 and 3 are copies (same class); 2 and 4 copies with different
  // labels; 0 is unique.
  for (auto [value, label] : std::vector<std::pair<int, int>>{
           {10, 0}, {11, 0}, {12, 1}, {11, 0}, {12, 0}, {13, 1}}) {
    data.train.images.push_back(Gray(static_cast<uint8_t>(value)));
    data.train.labels.push_back(label);
  }
  data.test.images = {Gray(99), Gray(13)};
  data.test.labels = {0, 1};
  DatasetFindings findings =
      CheckDatasetImages(data.class_names, IndexDatasetImages(data));
  EXPECT_EQ(findings.duplicate_train_images, 4);
  EXPECT_EQ(findings.test_images_in_train, 1);
  ASSERT_EQ(findings.warnings.size(), 2u);
  EXPECT_EQ(findings.warnings[0],
            "duplicates: 4 training images are exact copies of another "
            "training image (2 distinct images repeated), e.g. records 1, 3; "
            "records 2, 4 are identical; 1 of these groups carry different "
            "labels (e.g. record 2 is class 1 ('dog'), record 4 is class 0 "
            "('cat'))");
  EXPECT_EQ(findings.warnings[1],
            "test-in-train leakage: 1 of 2 test images also occur in the "
            "training split (e.g. test record 1 = train record 5); test "
            "accuracy will be optimistic");
}

TEST(DatasetChecksTest, WarnsAboutImbalanceAndEmptyClasses) {
  DatasetImageIndex index;
  for (int i = 0; i < 60; ++i) index.train_labels.push_back(0);
  for (int i = 0; i < 5; ++i) index.train_labels.push_back(2);
  for (size_t i = 0; i < index.train_labels.size(); ++i) {
    index.train_hashes.push_back(i);
  }
  DatasetFindings findings =
      CheckDatasetImages({"T-shirt", "Trouser", "Sneaker"}, index);
  EXPECT_EQ(findings.duplicate_train_images, 0);
  ASSERT_EQ(findings.warnings.size(), 2u);
  EXPECT_EQ(findings.warnings[0],
            "class 1 ('Trouser') has no training images; leave it out of "
            "spec.data.class_subset");
  EXPECT_THAT(findings.warnings[1],
              HasSubstr("class imbalance: class 0 ('T-shirt') has 60 training "
                        "images but class 2 ('Sneaker') has only 5 (12.0x"));

  // 10x exactly is fine.
  index.train_labels.assign(10, 0);
  index.train_labels.push_back(1);
  index.train_hashes.resize(index.train_labels.size());
  for (size_t i = 0; i < index.train_hashes.size(); ++i) index.train_hashes[i] = i;
  EXPECT_THAT(CheckDatasetImages({"a", "b"}, index).warnings, IsEmpty());
}

TEST(DatasetChecksTest, FindSharedImagesPairsQueryWithFirstMatch) {
  const std::vector<uint64_t> train = {7, 8, 7, 9};
  const std::vector<uint64_t> test = {9, 1, 7};
  std::vector<RecordPair> pairs = FindSharedImages(train, {0, 1, 2, 3}, test,
                                                   {0, 1, 2});
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[0].first, 3u);
  EXPECT_EQ(pairs[0].second, 0u);
  EXPECT_EQ(pairs[1].first, 0u);
  EXPECT_EQ(pairs[1].second, 2u);
  // Only the given records of `within` count.
  EXPECT_THAT(FindSharedImages(train, {1}, test, {0, 2}), IsEmpty());
}

}  // namespace
}  // namespace tlserve
