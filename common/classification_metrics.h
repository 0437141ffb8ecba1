#ifndef TLSERVE_COMMON_CLASSIFICATION_METRICS_H_
#define TLSERVE_COMMON_CLASSIFICATION_METRICS_H_

// Classification metrics from a confusion matrix: accuracy, top-5,
// per-class precision/recall/F1/support and macro-F1. Plain C++ so the
// worker (which fills the counts from LibTorch) and tlctl (which reads
// them back from a Job) share one definition.
//
// Every ratio with an empty denominator is 0, never NaN: a class nobody
// predicted has precision 0, a class with no samples has recall 0.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace tlserve {

struct ClassScores {
  double precision = 0;
  double recall = 0;
  double f1 = 0;
  // Samples whose true label is this class.
  int64_t support = 0;
};

// Counts of (true, predicted) pairs for k classes. Not thread-safe; one
// owner fills it, then reads the scores.
class ClassificationMetrics {
 public:
  explicit ClassificationMetrics(int64_t num_classes);

  // From a row-major k x k matrix (rows true, columns predicted) with
  // non-negative counts, and how many of those samples had the true label
  // among the top 5 scores. INVALID_ARGUMENT when the sizes or counts do
  // not fit together.
  static absl::StatusOr<ClassificationMetrics> FromConfusion(
      int64_t num_classes, std::vector<int64_t> confusion, int64_t top5_hits);

  // One sample. Labels outside [0, k): INVALID_ARGUMENT, nothing counted.
  absl::Status Add(int64_t true_label, int64_t predicted_label, bool top5_hit);

  int64_t num_classes() const { return num_classes_; }
  int64_t count() const { return count_; }
  // Row-major k x k, rows true, columns predicted.
  const std::vector<int64_t>& confusion() const { return confusion_; }
  int64_t At(int64_t true_label, int64_t predicted_label) const {
    return confusion_[true_label * num_classes_ + predicted_label];
  }

  double Accuracy() const;
  double Top5Accuracy() const;
  ClassScores Class(int64_t c) const;
  std::vector<ClassScores> PerClass() const;
  // Unweighted mean of F1 over the classes that occur as a true or a
  // predicted label (scikit-learn's default); 0 when there are none.
  double MacroF1() const;

 private:
  int64_t num_classes_;
  int64_t count_ = 0;
  int64_t top5_hits_ = 0;
  std::vector<int64_t> confusion_;
};

}  // namespace tlserve

#endif  // TLSERVE_COMMON_CLASSIFICATION_METRICS_H_
