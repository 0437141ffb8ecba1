#ifndef TLSERVE_COMMON_DATA_SPLIT_H_
#define TLSERVE_COMMON_DATA_SPLIT_H_

// Which records of a dataset a job trains, validates and tests on. Pure
// index logic on labels (no images, no LibTorch), so the server computes
// at VALIDATING exactly the split the worker will train on: same labels,
// same spec, same seed, same code.

#include <cstddef>
#include <cstdint>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve {

struct SplitIndices {
  // Dataset label -> model class, -1 for labels outside the subset.
  std::vector<int> label_map;
  // Model class -> dataset label: the subset in its order (all labels when
  // the subset is empty).
  std::vector<int32_t> classes;
  // Record indices, each ascending (dataset order). train and val index
  // the training split and never overlap; test indexes the test split.
  std::vector<size_t> train;
  std::vector<size_t> val;
  std::vector<size_t> test;
};

// INVALID_ARGUMENT naming the record of the first label outside
// [0, num_classes), e.g. "train split: label 7 at record 3 is outside
// [0, 3)".
absl::Status CheckSplitLabels(const std::vector<int32_t>& labels,
                              size_t num_classes, absl::string_view split_name);

// Applies the data spec to the labels of a dataset:
//  - class_subset: keep these labels (remapped to 0..K-1 in its order);
//  - samples_per_class: the first k samples of each class after a shuffle
//    seeded with `seed`;
//  - validation_fraction: a stratified, seeded split of the kept samples
//    (every class with 2+ samples gives at least one when the fraction is
//    > 0 and keeps at least one for training);
//  - max_test_samples: a seeded sample of the test split, in dataset order.
// INVALID_ARGUMENT for no classes, a label outside [0, num_classes), a bad
// spec (unknown or repeated subset label, fraction outside [0, 1), negative
// counts) or no training samples left. Deterministic for given inputs.
absl::StatusOr<SplitIndices> SplitDataset(
    const std::vector<int32_t>& train_labels,
    const std::vector<int32_t>& test_labels, size_t num_classes,
    const tlserve::v1::DataSpec& spec, uint64_t seed);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_DATA_SPLIT_H_
