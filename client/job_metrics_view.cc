#include "client/job_metrics_view.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/job_progress.h"
#include "client/tlctl_commands.h"
#include "common/classification_metrics.h"
#include "common/plot.h"
#include "common/status_macros.h"

namespace tlserve::cli {
namespace {

using google::protobuf::RepeatedField;
using google::protobuf::RepeatedPtrField;

// One evaluation (a validation epoch or the test split) as stored.
struct Evaluation {
  std::string title;
  int64_t count = 0;
  float accuracy = 0;
  float top5_accuracy = 0;
  const RepeatedPtrField<v1::ClassMetrics>* per_class = nullptr;
  const RepeatedField<int64_t>* confusion = nullptr;
};

int SquareSide(int n) {
  const int side = static_cast<int>(std::lround(std::sqrt(n)));
  return side * side == n ? side : 0;
}

bool HasTest(const v1::Job& job) {
  return job.result().test_count() > 0 ||
         job.result().test_confusion_size() > 0;
}

Evaluation LastValidation(const v1::Job& job) {
  const v1::EpochMetrics& m = job.metrics(job.metrics_size() - 1);
  Evaluation e;
  e.title = absl::StrCat("validation, epoch ", m.epoch());
  e.accuracy = m.val_accuracy();
  e.top5_accuracy = m.val_top5_accuracy();
  e.per_class = &m.per_class();
  e.confusion = &m.confusion();
  for (const v1::ClassMetrics& c : m.per_class()) e.count += c.support();
  if (e.count == 0) {
    for (int64_t v : m.confusion()) e.count += v;
  }
  return e;
}

Evaluation Test(const v1::Job& job) {
  const v1::JobResult& r = job.result();
  Evaluation e;
  e.title = "test";
  e.count = r.test_count();
  e.accuracy = r.test_accuracy();
  e.top5_accuracy = r.test_top5_accuracy();
  e.per_class = &r.per_class_test();
  e.confusion = &r.test_confusion();
  return e;
}

// Right-aligned columns (the first left-aligned), two spaces apart.
std::string FormatMatrix(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      const std::string pad(widths[i] - row[i].size(), ' ');
      if (i == 0) {
        absl::StrAppend(&line, row[i], pad);
      } else {
        absl::StrAppend(&line, "  ", pad, row[i]);
      }
    }
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

void AppendEvaluation(const Evaluation& e,
                      const std::vector<std::string>& names, std::string* out) {
  const int k = static_cast<int>(names.size());
  absl::StatusOr<ClassificationMetrics> metrics =
      absl::FailedPreconditionError("no confusion matrix");
  if (k > 0 && e.confusion->size() == k * k) {
    int64_t top5_hits = std::llround(e.top5_accuracy * e.count);
    std::vector<int64_t> counts(e.confusion->begin(), e.confusion->end());
    int64_t total = 0;
    for (int64_t v : counts) total += v;
    metrics = ClassificationMetrics::FromConfusion(
        k, std::move(counts), std::clamp<int64_t>(top5_hits, 0, total));
  }
  absl::StrAppendFormat(out, "\n%s: accuracy %.4f", e.title, e.accuracy);
  if (e.top5_accuracy > 0 || metrics.ok()) {
    absl::StrAppendFormat(out, ", top-5 %.4f", e.top5_accuracy);
  }
  if (metrics.ok()) {
    absl::StrAppendFormat(out, ", macro F1 %.4f", metrics->MacroF1());
  }
  absl::StrAppend(out, ", ", e.count, " samples\n");

  // Scores as the worker stored them; recomputed from the matrix if only
  // the matrix is there.
  std::vector<ClassScores> scores;
  if (e.per_class->size() == k) {
    for (const v1::ClassMetrics& c : *e.per_class) {
      scores.push_back({c.precision(), c.recall(), c.f1(), c.support()});
    }
  } else if (metrics.ok()) {
    scores = metrics->PerClass();
  }
  if (!scores.empty()) {
    std::vector<std::vector<std::string>> rows;
    rows.push_back({"CLASS", "PRECISION", "RECALL", "F1", "SUPPORT"});
    for (int c = 0; c < k; ++c) {
      const ClassScores& s = scores[c];
      rows.push_back({absl::StrCat(c, " ", names[c]),
                      absl::StrFormat("%.3f", s.precision),
                      absl::StrFormat("%.3f", s.recall),
                      absl::StrFormat("%.3f", s.f1), absl::StrCat(s.support)});
    }
    absl::StrAppend(out, FormatMatrix(rows));
  }
  if (metrics.ok()) {
    std::vector<std::vector<std::string>> rows;
    std::vector<std::string> header = {"TRUE \\ PREDICTED"};
    for (int c = 0; c < k; ++c) header.push_back(absl::StrCat(c));
    rows.push_back(std::move(header));
    for (int t = 0; t < k; ++t) {
      std::vector<std::string> row = {absl::StrCat(t, " ", names[t])};
      for (int p = 0; p < k; ++p)
        row.push_back(absl::StrCat(metrics->At(t, p)));
      rows.push_back(std::move(row));
    }
    absl::StrAppend(out, "\nconfusion matrix (", e.title,
                    "; rows true class, columns predicted):\n",
                    FormatMatrix(rows));
  }
}

}  // namespace

int JobMetricsClassCount(const v1::Job& job) {
  if (int k = SquareSide(job.result().test_confusion_size()); k > 0) return k;
  if (job.result().per_class_test_size() > 0) {
    return job.result().per_class_test_size();
  }
  for (int i = job.metrics_size() - 1; i >= 0; --i) {
    const v1::EpochMetrics& m = job.metrics(i);
    if (int k = SquareSide(m.confusion_size()); k > 0) return k;
    if (m.per_class_size() > 0) return m.per_class_size();
    if (m.per_class_val_accuracy_size() > 0) {
      return m.per_class_val_accuracy_size();
    }
  }
  return job.result().per_class_test_accuracy_size();
}

std::vector<std::string> MetricsClassNames(const v1::Job& job,
                                           std::vector<std::string> names) {
  const size_t k = static_cast<size_t>(JobMetricsClassCount(job));
  if (names.size() > k) names.resize(k);
  while (names.size() < k)
    names.push_back(absl::StrCat("class ", names.size()));
  return names;
}

std::string FormatJobMetrics(const v1::Job& job,
                             const std::vector<std::string>& class_names) {
  const std::vector<std::string> names = MetricsClassNames(job, class_names);
  std::string out =
      absl::StrCat("job ", job.id(), " (", JobStateName(job.state()),
                   "): ", job.metrics_size(), " epochs of metrics\n");
  if (job.metrics_size() > 0) {
    bool any_best = false;
    std::vector<std::vector<std::string>> rows;
    for (const v1::EpochMetrics& m : job.metrics()) {
      any_best = any_best || m.best();
      const bool has_top5 = m.val_top5_accuracy() > 0 || m.confusion_size() > 0;
      rows.push_back(
          {absl::StrCat(m.epoch(), m.best() ? "*" : ""),
           absl::StrFormat("%.4f", m.train_loss()),
           absl::StrFormat("%.3f", m.train_accuracy()),
           absl::StrFormat("%.4f", m.val_loss()),
           absl::StrFormat("%.3f", m.val_accuracy()),
           has_top5 ? absl::StrFormat("%.3f", m.val_top5_accuracy()) : "-",
           m.learning_rate() > 0 ? absl::StrFormat("%.3g", m.learning_rate())
                                 : "-",
           absl::StrFormat("%.1f", m.seconds())});
    }
    absl::StrAppend(&out, "\n",
                    FormatTable({"EPOCH", "TRAIN_LOSS", "TRAIN_ACC", "VAL_LOSS",
                                 "VAL_ACC", "VAL_TOP5", "LR", "SECONDS"},
                                rows));
    if (any_best) {
      absl::StrAppend(&out,
                      "* best epoch so far (early-stopping metric) when it "
                      "ended\n");
    }
    AppendEvaluation(LastValidation(job), names, &out);
  }
  if (HasTest(job)) AppendEvaluation(Test(job), names, &out);
  return out;
}

absl::StatusOr<std::string> LearningCurvesPng(const v1::Job& job) {
  if (job.metrics_size() == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job.id(),
                     " has no epoch metrics yet; plot once an epoch ends"));
  }
  plot::Series train_loss{"train", plot::kBlue, {}, {}};
  plot::Series val_loss{"val", plot::kOrange, {}, {}};
  plot::Series train_acc{"train", plot::kBlue, {}, {}};
  plot::Series val_acc{"val", plot::kOrange, {}, {}};
  plot::Series val_top5{"val top-5", plot::kGreen, {}, {}};
  bool any_top5 = false;
  for (const v1::EpochMetrics& m : job.metrics()) {
    const double x = m.epoch();
    for (plot::Series* s :
         {&train_loss, &val_loss, &train_acc, &val_acc, &val_top5}) {
      s->x.push_back(x);
    }
    train_loss.y.push_back(m.train_loss());
    val_loss.y.push_back(m.val_loss());
    train_acc.y.push_back(m.train_accuracy());
    val_acc.y.push_back(m.val_accuracy());
    val_top5.y.push_back(m.val_top5_accuracy());
    any_top5 = any_top5 || m.val_top5_accuracy() > 0;
  }
  plot::LinePanel loss;
  loss.title = "loss";
  loss.x_label = "epoch";
  loss.integer_x = true;
  loss.series = {train_loss, val_loss};
  plot::LinePanel accuracy;
  accuracy.title = "accuracy";
  accuracy.x_label = "epoch";
  accuracy.integer_x = true;
  accuracy.y_min = 0;
  accuracy.y_max = 1;
  accuracy.series = {train_acc, val_acc};
  if (any_top5) accuracy.series.push_back(val_top5);
  ASSIGN_OR_RETURN(plot::Canvas canvas,
                   plot::DrawLineCharts({loss, accuracy}, 480, 340));
  return canvas.EncodePng();
}

absl::StatusOr<std::string> ConfusionPng(
    const v1::Job& job, const std::vector<std::string>& class_names) {
  const std::vector<std::string> names = MetricsClassNames(job, class_names);
  const int k = static_cast<int>(names.size());
  plot::Heatmap heatmap;
  heatmap.row_axis = "true";
  heatmap.column_axis = "predicted";
  heatmap.labels = names;
  if (k > 0 && job.result().test_confusion_size() == k * k) {
    heatmap.title =
        absl::StrCat("test confusion, ", job.result().test_count(), " samples");
    heatmap.values.assign(job.result().test_confusion().begin(),
                          job.result().test_confusion().end());
  } else if (k > 0 && job.metrics_size() > 0 &&
             job.metrics(job.metrics_size() - 1).confusion_size() == k * k) {
    const v1::EpochMetrics& m = job.metrics(job.metrics_size() - 1);
    heatmap.title = absl::StrCat("validation confusion, epoch ", m.epoch());
    heatmap.values.assign(m.confusion().begin(), m.confusion().end());
  } else {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job.id(),
                     " has no confusion matrix yet (it comes with the first "
                     "epoch's validation)"));
  }
  ASSIGN_OR_RETURN(plot::Canvas canvas, plot::DrawHeatmap(heatmap));
  return canvas.EncodePng();
}

}  // namespace tlserve::cli
