#ifndef TLSERVE_COMMON_DATASET_LOADER_H_
#define TLSERVE_COMMON_DATASET_LOADER_H_

// Reads the dataset formats the service accepts into decoded images and
// labels. The server uses it to validate uploads, the worker to train.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/image.h"
#include "tlserve/v1/dataset.pb.h"

namespace tlserve {

struct DatasetLimits {
  int64_t max_images = 2'000'000;
  int64_t max_archive_entries = 2'000'000;
  int64_t max_entry_bytes = 64LL * 1024 * 1024;
  // Bytes after gunzip of one IDX file.
  int64_t max_idx_bytes = 4LL * 1024 * 1024 * 1024;
  // Pixel bytes of one archive's decoded images, after any fit (0: no
  // bound). The server bounds it like max_idx_bytes; the images of a part
  // are held in memory together.
  int64_t max_decoded_bytes = 0;
  ImageLimits image;
};

struct LabelledImages {
  std::vector<Image> images;
  std::vector<int32_t> labels;  // same length as images
};

struct DecodedDataset {
  std::vector<std::string> class_names;
  LabelledImages train;
  LabelledImages test;  // empty when the dataset has no test split
};

// One IDX array of unsigned bytes (type 0x08), gzip-compressed or not.
struct IdxArray {
  std::vector<int32_t> dims;
  std::vector<uint8_t> data;
};
absl::StatusOr<IdxArray> ParseIdx(std::string_view bytes,
                                  const DatasetLimits& limits = {});

// The files of a dataset on local disk, by role.
struct DatasetFiles {
  tlserve::v1::DatasetFormat format = tlserve::v1::DATASET_FORMAT_UNSPECIFIED;
  std::map<tlserve::v1::DatasetPartRole, std::string> paths;
  // IDX: label names (labels must be < size); empty: "0".."K-1" from the
  // largest label seen. Archives: ignored (folder names, sorted, are used).
  std::vector<std::string> class_names;
};

// How LoadDataset decodes; the defaults decode on the calling thread and
// keep every image at its stored size.
struct DatasetLoadOptions {
  // When > 0, every image with more pixels than this height x width is
  // resized (ResizeBilinear, channels kept) to it right after decoding, so
  // a job that trains at 64x64 need not hold 500x375 images; smaller
  // images are kept as stored. 0 keeps the stored size of that side.
  int fit_height = 0;
  int fit_width = 0;
  // When > 0 (instead of fit_height/fit_width), an image whose shorter
  // side is longer than this is resized so that its shorter side is this,
  // the aspect ratio kept (ShorterSideSize): what a RESIZE_CENTER_CROP fit
  // resizes to before it crops, so the crop comes out the same.
  int fit_shorter_side = 0;
  // Archives: threads that decode and fit images while the calling thread
  // reads the archive (0 or 1: decode on the calling thread). The output,
  // errors included, is the same for any count.
  int decode_threads = 0;
  // Archives with decode_threads > 1: encoded bytes read ahead of the
  // decoders at most (one entry is always let through), so memory stays
  // bounded however fast the archive reads.
  int64_t max_pending_bytes = 64LL * 1024 * 1024;
};

// Decodes every image and label. Errors are INVALID_ARGUMENT and name the
// part and record, e.g. "TRAIN_LABELS: label 12 at record 311 is outside
// [0, 10)", "TRAIN_ARCHIVE: entry '../x.png' escapes the archive"; the
// first bad record in file order is the one reported.
// A missing required part (train images+labels, or the train archive) is
// INVALID_ARGUMENT too.
absl::StatusOr<DecodedDataset> LoadDataset(
    const DatasetFiles& files, const DatasetLimits& limits = {},
    const DatasetLoadOptions& options = {});

}  // namespace tlserve

#endif  // TLSERVE_COMMON_DATASET_LOADER_H_
