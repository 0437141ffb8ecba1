#ifndef TLSERVE_COMMON_DATASET_CHECKS_H_
#define TLSERVE_COMMON_DATASET_CHECKS_H_

// Checks of a dataset's content that need every image once: exact
// duplicates, test images that also occur in training, class imbalance.
// The server runs them at upload (where every image is decoded anyway) and
// keeps a per-record index (label + content hash) so that job validation
// can look at a job's split without decoding the images again.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dataset_loader.h"
#include "common/image.h"

namespace tlserve {

// Content hash of an image: the first 8 bytes (big-endian) of SHA-256 over
// "<height>x<width>x<channels>:" followed by the pixels. Two images with the
// same hash have, for all practical purposes, the same geometry and pixels.
// Stored with datasets: never change the definition.
uint64_t ImageContentHash(const Image& image);

// Per record of each split: its label and content hash (same order and
// length as the decoded dataset's records).
struct DatasetImageIndex {
  std::vector<int32_t> train_labels;
  std::vector<uint64_t> train_hashes;
  std::vector<int32_t> test_labels;
  std::vector<uint64_t> test_hashes;
};

DatasetImageIndex IndexDatasetImages(const DecodedDataset& data);

// A compact byte form for storage (12 bytes per record plus a header);
// Decode gives DATA_LOSS for bytes that Encode did not make.
std::string EncodeDatasetImageIndex(const DatasetImageIndex& index);
absl::StatusOr<DatasetImageIndex> DecodeDatasetImageIndex(
    std::string_view bytes);

// Two records with the same pixels.
struct RecordPair {
  size_t first;   // record of the split searched in
  size_t second;  // record of the split searched for
};

// For each record of `query` (indices into query_hashes) whose hash occurs
// among `within` (indices into within_hashes): the pair with the first such
// record of `within`, in query order. Used for val-in-train and
// test-in-train checks.
std::vector<RecordPair> FindSharedImages(
    const std::vector<uint64_t>& within_hashes,
    const std::vector<size_t>& within, const std::vector<uint64_t>& query_hashes,
    const std::vector<size_t>& query);

struct DatasetFindings {
  // Training images whose pixels occur more than once in the training split
  // (every copy counts).
  int64_t duplicate_train_images = 0;
  // Test images whose pixels also occur in the training split.
  int64_t test_images_in_train = 0;
  // Human-readable, one finding each: duplicates, test-in-train leakage,
  // class imbalance, classes without training images.
  std::vector<std::string> warnings;
};

// Largest/smallest training class count above this ratio is worth a warning.
inline constexpr double kImbalanceWarnRatio = 10.0;

// Labels in the index must be valid indices of class_names. `noun` names a
// record in the warnings ("image"; "text" for text datasets).
DatasetFindings CheckDatasetImages(const std::vector<std::string>& class_names,
                                   const DatasetImageIndex& index,
                                   absl::string_view noun = "image");

// The index of a text dataset: a text's hash is the first 8 bytes
// (big-endian) of SHA-256 over "text:" and its bytes, so only byte-equal
// texts share one. Stored with datasets: never change the definition.
DatasetImageIndex IndexTextDataset(const std::vector<int32_t>& train_labels,
                                   const std::vector<std::string>& train_texts,
                                   const std::vector<int32_t>& test_labels,
                                   const std::vector<std::string>& test_texts);

// "3 ('cat')": how warnings name a class.
std::string ClassLabel(const std::vector<std::string>& class_names,
                       int32_t label);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_DATASET_CHECKS_H_
