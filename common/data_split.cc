#include "common/data_split.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tlserve {

absl::Status CheckSplitLabels(const std::vector<int32_t>& labels,
                              size_t num_classes, absl::string_view split_name) {
  for (size_t i = 0; i < labels.size(); ++i) {
    const int32_t label = labels[i];
    if (label < 0 || static_cast<size_t>(label) >= num_classes) {
      return absl::InvalidArgumentError(
          absl::StrCat(split_name, ": label ", label, " at record ", i,
                       " is outside [0, ", num_classes, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SplitIndices> SplitDataset(
    const std::vector<int32_t>& train_labels,
    const std::vector<int32_t>& test_labels, size_t num_classes,
    const tlserve::v1::DataSpec& spec, uint64_t seed) {
  if (num_classes == 0) {
    return absl::InvalidArgumentError("dataset has no class names");
  }
  RETURN_IF_ERROR(CheckSplitLabels(train_labels, num_classes, "train split"));
  RETURN_IF_ERROR(CheckSplitLabels(test_labels, num_classes, "test split"));
  if (!(spec.validation_fraction() >= 0 && spec.validation_fraction() < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("data: validation_fraction ",
                                                   spec.validation_fraction(),
                                                   " is outside [0, 1)"));
  }
  if (spec.samples_per_class() < 0 || spec.max_test_samples() < 0) {
    return absl::InvalidArgumentError(
        "data: samples_per_class and max_test_samples must not be negative");
  }

  SplitIndices out;
  out.label_map.assign(num_classes, -1);
  if (spec.class_subset().empty()) {
    std::iota(out.label_map.begin(), out.label_map.end(), 0);
    out.classes.resize(num_classes);
    std::iota(out.classes.begin(), out.classes.end(), 0);
  } else {
    for (int i = 0; i < spec.class_subset_size(); ++i) {
      const int32_t label = spec.class_subset(i);
      if (label < 0 || static_cast<size_t>(label) >= num_classes) {
        return absl::InvalidArgumentError(
            absl::StrCat("data: class_subset label ", label, " is outside [0, ",
                         num_classes, ")"));
      }
      if (out.label_map[label] != -1) {
        return absl::InvalidArgumentError(
            absl::StrCat("data: class_subset names label ", label, " twice"));
      }
      out.label_map[label] = i;
      out.classes.push_back(label);
    }
  }
  const size_t k = out.classes.size();

  // The order of draws from `rng` (train shuffle, then the test sample) is
  // part of the split's definition: jobs stored with a seed must keep
  // getting the same records.
  std::mt19937_64 rng(seed);
  std::vector<size_t> candidates;
  for (size_t i = 0; i < train_labels.size(); ++i) {
    if (out.label_map[train_labels[i]] >= 0) candidates.push_back(i);
  }
  std::shuffle(candidates.begin(), candidates.end(), rng);

  // Per class, in shuffled order; the cap and the validation share are
  // taken per class so rare classes are not squeezed out.
  std::vector<std::vector<size_t>> by_class(k);
  for (size_t index : candidates) {
    auto& bucket = by_class[out.label_map[train_labels[index]]];
    if (spec.samples_per_class() == 0 ||
        bucket.size() < static_cast<size_t>(spec.samples_per_class())) {
      bucket.push_back(index);
    }
  }
  for (const auto& bucket : by_class) {
    size_t n_val = static_cast<size_t>(
        std::floor(bucket.size() * spec.validation_fraction() + 0.5));
    if (spec.validation_fraction() > 0 && bucket.size() >= 2) {
      n_val = std::clamp<size_t>(n_val, 1, bucket.size() - 1);
    } else if (bucket.size() < 2) {
      n_val = 0;
    }
    out.val.insert(out.val.end(), bucket.begin(), bucket.begin() + n_val);
    out.train.insert(out.train.end(), bucket.begin() + n_val, bucket.end());
  }
  if (out.train.empty()) {
    return absl::InvalidArgumentError(
        "data: no training samples left after the class subset, samples per "
        "class and validation split");
  }
  // Dataset order within each split: deterministic and independent of how
  // the buckets were filled.
  std::sort(out.train.begin(), out.train.end());
  std::sort(out.val.begin(), out.val.end());

  for (size_t i = 0; i < test_labels.size(); ++i) {
    if (out.label_map[test_labels[i]] >= 0) out.test.push_back(i);
  }
  if (spec.max_test_samples() > 0 &&
      out.test.size() > static_cast<size_t>(spec.max_test_samples())) {
    std::shuffle(out.test.begin(), out.test.end(), rng);
    out.test.resize(spec.max_test_samples());
    std::sort(out.test.begin(), out.test.end());
  }
  return out;
}

}  // namespace tlserve
