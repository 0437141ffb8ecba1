#include "worker/batch_loader.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include "common/image_transforms.h"
#include "gtest/gtest.h"

namespace tlserve::worker {
namespace {

// Each image's pixels are its own index plus its column, so a batch can be
// traced back to the samples, and a mirrored image reads backwards.
at::Tensor IndexedImages(int64_t n, int64_t size) {
  at::Tensor columns = at::arange(size, at::kLong).view({1, 1, 1, size});
  at::Tensor index = at::arange(n, at::kLong).view({n, 1, 1, 1}) * 3;
  return (columns + index).remainder(256).expand({n, 2, size, size})
      .to(at::kByte)
      .contiguous();
}

BatchLoaderOptions Options(const at::Tensor& images, int epoch, int threads) {
  BatchLoaderOptions o;
  o.inputs = images;
  o.labels = at::arange(images.size(0), at::kLong);
  o.order = EpochOrder(images.size(0), 7, epoch);
  o.batch_size = 6;
  o.num_batches = (images.size(0) + 5) / 6;
  o.seed = 7;
  o.epoch = epoch;
  o.threads = threads;
  return o;
}

std::vector<LoadedBatch> All(BatchLoaderOptions options) {
  BatchLoader loader(std::move(options));
  std::vector<LoadedBatch> out;
  for (;;) {
    absl::StatusOr<LoadedBatch> b = loader.Next();
    if (!b.ok()) {
      EXPECT_EQ(b.status().code(), absl::StatusCode::kOutOfRange);
      break;
    }
    out.push_back(*b);
  }
  return out;
}

TEST(EpochOrderTest, IsASeededPermutationThatChangesEachEpoch) {
  std::vector<int64_t> a = EpochOrder(50, 1, 1);
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> iota(50);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota);
  EXPECT_EQ(a, EpochOrder(50, 1, 1));
  EXPECT_NE(a, EpochOrder(50, 1, 2));
  EXPECT_NE(a, EpochOrder(50, 2, 1));
}

TEST(BatchLoaderTest, BatchesFollowTheOrderAndConvertExactly) {
  at::Tensor images = IndexedImages(23, 8);
  BatchLoaderOptions options = Options(images, 1, 2);
  const std::vector<int64_t> order = options.order;
  std::vector<LoadedBatch> batches = All(options);
  ASSERT_EQ(batches.size(), 4u);
  EXPECT_EQ(batches.back().labels.size(0), 5);  // 23 = 3 * 6 + 5
  int64_t i = 0;
  for (const LoadedBatch& b : batches) {
    ASSERT_EQ(b.inputs.scalar_type(), at::kFloat);
    for (int64_t j = 0; j < b.labels.size(0); ++j, ++i) {
      EXPECT_EQ(b.labels[j].item<int64_t>(), order[i]);
      // Same as the evaluation path: uint8 -> float / 255.
      EXPECT_TRUE(at::equal(b.inputs[j],
                            images[order[i]].to(at::kFloat).div(255.0)))
          << "sample " << order[i];
    }
  }
  EXPECT_EQ(i, 23);
}

TEST(BatchLoaderTest, AugmentationDependsOnlyOnSeedEpochAndBatch) {
  at::Tensor images = IndexedImages(30, 16);
  BatchLoaderOptions options = Options(images, 3, 0);
  options.augment.set_random_resized_crop(true);
  options.augment.set_horizontal_flip(true);
  options.augment.set_crop_scale_min(0.3f);
  const std::vector<LoadedBatch> inline_batches = All(options);

  options.threads = 3;
  const std::vector<LoadedBatch> threaded = All(options);
  ASSERT_EQ(inline_batches.size(), threaded.size());
  for (size_t b = 0; b < threaded.size(); ++b) {
    EXPECT_TRUE(at::equal(inline_batches[b].inputs, threaded[b].inputs)) << b;
  }

  // A resumed epoch starting at batch 2 sees the same batches from there.
  options.first_batch = 2;
  const std::vector<LoadedBatch> resumed = All(options);
  ASSERT_EQ(resumed.size(), inline_batches.size() - 2);
  for (size_t b = 0; b < resumed.size(); ++b) {
    EXPECT_TRUE(at::equal(resumed[b].inputs, inline_batches[b + 2].inputs)) << b;
  }

  // Another epoch crops differently (and visits another order).
  BatchLoaderOptions next = Options(images, 4, 1);
  next.augment = options.augment;
  const std::vector<LoadedBatch> other = All(next);
  EXPECT_FALSE(at::equal(other[0].inputs, inline_batches[0].inputs));
  // Crops zoom in: most augmented images differ from the stored ones.
  int changed = 0;
  for (int64_t j = 0; j < 6; ++j) {
    const int64_t index = inline_batches[0].labels[j].item<int64_t>();
    if (!at::equal(inline_batches[0].inputs[j],
                   images[index].to(at::kFloat).div(255.0))) {
      ++changed;
    }
  }
  EXPECT_GE(changed, 4);
}

TEST(BatchLoaderTest, FlipMirrorsAboutHalfTheImages) {
  at::Tensor images = IndexedImages(64, 8);
  BatchLoaderOptions options = Options(images, 1, 1);
  options.batch_size = 64;
  options.num_batches = 1;
  options.augment.set_horizontal_flip(true);
  const std::vector<LoadedBatch> batches = All(options);
  ASSERT_EQ(batches.size(), 1u);
  int flipped = 0;
  for (int64_t j = 0; j < 64; ++j) {
    const int64_t index = batches[0].labels[j].item<int64_t>();
    const at::Tensor plain = images[index].to(at::kFloat).div(255.0);
    if (at::equal(batches[0].inputs[j], plain.flip({2}))) {
      ++flipped;
    } else {
      EXPECT_TRUE(at::equal(batches[0].inputs[j], plain)) << index;
    }
  }
  EXPECT_GT(flipped, 16);
  EXPECT_LT(flipped, 48);
}

TEST(BatchLoaderTest, CachedFeaturesPassThrough) {
  at::Tensor features = at::randn({10, 4});
  BatchLoaderOptions options;
  options.inputs = features;
  options.labels = at::arange(10, at::kLong);
  options.order = EpochOrder(10, 1, 1);
  options.batch_size = 4;
  options.num_batches = 3;
  options.threads = 0;
  options.augment.set_horizontal_flip(true);  // ignored for features
  const std::vector<LoadedBatch> batches = All(options);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_TRUE(at::equal(batches[1].inputs,
                        features.index_select(
                            0, at::tensor(std::vector<int64_t>(
                                              options.order.begin() + 4,
                                              options.order.begin() + 8),
                                          at::kLong))));
}

// The plain C++ crop-and-resize agrees with torch's bilinear
// interpolation (align_corners=false) to within rounding.
TEST(CropResizeTest, MatchesTorchBilinear) {
  at::manual_seed(5);
  const at::Tensor image = at::randint(0, 256, {3, 20, 24}, at::kByte);
  const CropBox box{3, 5, 11, 13};
  std::vector<uint8_t> ours(3 * 16 * 16);
  CropResize(ImageView{image.data_ptr<uint8_t>(), 3, 20, 24, true}, box, 16, 16,
             /*flip=*/false, ours.data());
  const at::Tensor crop = image.slice(1, 3, 14).slice(2, 5, 18).unsqueeze(0);
  const at::Tensor theirs =
      at::upsample_bilinear2d(crop.to(at::kFloat), {16, 16}, false)
          .round()
          .clamp(0, 255)
          .to(at::kByte)
          .squeeze(0)
          .contiguous();
  int max_diff = 0;
  for (size_t i = 0; i < ours.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(int{ours[i]} -
                                           int{theirs.data_ptr<uint8_t>()[i]}));
  }
  EXPECT_LE(max_diff, 1);
}

}  // namespace
}  // namespace tlserve::worker
