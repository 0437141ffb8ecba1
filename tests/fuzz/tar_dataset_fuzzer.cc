// LoadDataset of an IMAGE_FOLDER_TAR dataset whose train archive is the
// input: libarchive's tar/gzip readers, the entry checks (paths, links,
// sizes, counts) and the image decoders behind them. A loaded dataset is
// loaded again with decoder threads and a fit size: the outcome must not
// depend on either.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/dataset_loader.h"
#include "tests/fuzz/fuzz_util.h"

using tlserve::fuzz::Require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const tlserve::fuzz::MemFile file(
      std::string_view(reinterpret_cast<const char*>(data), size));
  tlserve::DatasetFiles files;
  files.format = tlserve::v1::IMAGE_FOLDER_TAR;
  files.paths[tlserve::v1::TRAIN_ARCHIVE] = file.path();
  tlserve::DatasetLimits limits;
  // Small limits so that every limit can be reached within -rss_limit_mb.
  limits.max_images = 64;
  limits.max_archive_entries = 256;
  limits.max_entry_bytes = 1 << 20;
  limits.image.max_pixels = 1 << 20;
  limits.image.max_side = 2048;

  absl::StatusOr<tlserve::DecodedDataset> dataset =
      tlserve::LoadDataset(files, limits);
  if (!dataset.ok()) {
    Require(dataset.status().code() == absl::StatusCode::kInvalidArgument,
            "LoadDataset fails with INVALID_ARGUMENT");
  } else {
    const tlserve::LabelledImages& train = dataset->train;
    Require(!train.images.empty(), "a loaded archive holds images");
    Require(train.images.size() == train.labels.size(), "a label per image");
    for (int32_t label : train.labels) {
      Require(label >= 0 &&
                  static_cast<size_t>(label) < dataset->class_names.size(),
              "labels index class_names");
    }
  }

  // The header promises the same output, errors included, for any thread
  // count; and a fit size changes image sizes only.
  tlserve::DatasetLoadOptions options;
  options.decode_threads = 2;
  options.max_pending_bytes = 4096;
  options.fit_height = 6;
  options.fit_width = 5;
  absl::StatusOr<tlserve::DecodedDataset> threaded =
      tlserve::LoadDataset(files, limits, options);
  Require(threaded.status() == dataset.status(),
          "same status with decoder threads");
  if (dataset.ok()) {
    Require(threaded->class_names == dataset->class_names &&
                threaded->train.labels == dataset->train.labels,
            "same classes and labels with decoder threads");
    for (const tlserve::Image& image : threaded->train.images) {
      Require(int64_t{image.height} * image.width <= 30, "fitted to 6x5");
    }
  }
  return 0;
}
