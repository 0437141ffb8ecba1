#include "common/classification_metrics.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace tlserve {
namespace {

double Ratio(int64_t num, int64_t den) {
  return den == 0 ? 0.0 : static_cast<double>(num) / static_cast<double>(den);
}

}  // namespace

ClassificationMetrics::ClassificationMetrics(int64_t num_classes)
    : num_classes_(std::max<int64_t>(0, num_classes)),
      confusion_(static_cast<size_t>(num_classes_ * num_classes_), 0) {}

absl::StatusOr<ClassificationMetrics> ClassificationMetrics::FromConfusion(
    int64_t num_classes, std::vector<int64_t> confusion, int64_t top5_hits) {
  if (num_classes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("confusion matrix: ", num_classes, " classes"));
  }
  if (static_cast<int64_t>(confusion.size()) != num_classes * num_classes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "confusion matrix: ", confusion.size(), " counts for ", num_classes,
        " classes; want ", num_classes * num_classes, " (k x k)"));
  }
  ClassificationMetrics metrics(num_classes);
  for (size_t i = 0; i < confusion.size(); ++i) {
    if (confusion[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "confusion matrix: count ", confusion[i], " at row ", i / num_classes,
          ", column ", i % num_classes, " is negative"));
    }
    metrics.count_ += confusion[i];
  }
  if (top5_hits < 0 || top5_hits > metrics.count_) {
    return absl::InvalidArgumentError(
        absl::StrCat("confusion matrix: ", top5_hits, " top-5 hits for ",
                     metrics.count_, " samples"));
  }
  metrics.confusion_ = std::move(confusion);
  metrics.top5_hits_ = top5_hits;
  return metrics;
}

absl::Status ClassificationMetrics::Add(int64_t true_label,
                                        int64_t predicted_label,
                                        bool top5_hit) {
  if (true_label < 0 || true_label >= num_classes_ || predicted_label < 0 ||
      predicted_label >= num_classes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("labels (true ", true_label, ", predicted ",
                     predicted_label, ") must be in [0, ", num_classes_, ")"));
  }
  ++confusion_[true_label * num_classes_ + predicted_label];
  ++count_;
  // The top-1 label is always among the top 5.
  if (top5_hit || true_label == predicted_label) ++top5_hits_;
  return absl::OkStatus();
}

double ClassificationMetrics::Accuracy() const {
  int64_t correct = 0;
  for (int64_t c = 0; c < num_classes_; ++c) correct += At(c, c);
  return Ratio(correct, count_);
}

double ClassificationMetrics::Top5Accuracy() const {
  return Ratio(top5_hits_, count_);
}

ClassScores ClassificationMetrics::Class(int64_t c) const {
  ClassScores s;
  int64_t predicted = 0;
  for (int64_t i = 0; i < num_classes_; ++i) {
    s.support += At(c, i);
    predicted += At(i, c);
  }
  const int64_t tp = At(c, c);
  s.precision = Ratio(tp, predicted);
  s.recall = Ratio(tp, s.support);
  // 2PR/(P+R) == 2TP/(2TP+FP+FN); the count form has no 0/0 when P=R=0
  // except with no samples at all, which Ratio turns into 0.
  s.f1 = Ratio(2 * tp, predicted + s.support);
  return s;
}

std::vector<ClassScores> ClassificationMetrics::PerClass() const {
  std::vector<ClassScores> out;
  out.reserve(static_cast<size_t>(num_classes_));
  for (int64_t c = 0; c < num_classes_; ++c) out.push_back(Class(c));
  return out;
}

double ClassificationMetrics::MacroF1() const {
  double sum = 0;
  int64_t present = 0;
  for (int64_t c = 0; c < num_classes_; ++c) {
    int64_t predicted = 0;
    int64_t support = 0;
    for (int64_t i = 0; i < num_classes_; ++i) {
      support += At(c, i);
      predicted += At(i, c);
    }
    if (support == 0 && predicted == 0) continue;
    ++present;
    sum += Ratio(2 * At(c, c), predicted + support);
  }
  return present == 0 ? 0.0 : sum / static_cast<double>(present);
}

}  // namespace tlserve
