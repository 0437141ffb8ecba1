#ifndef TLSERVE_CLIENT_JOB_METRICS_VIEW_H_
#define TLSERVE_CLIENT_JOB_METRICS_VIEW_H_

// What `tlctl job metrics` shows of a Job: the per-epoch table, per-class
// precision/recall/F1 and the confusion matrix of the last validation and
// of the test evaluation, and the same as PNG charts. Pure functions of the
// Job proto and the class names, so tests need no server.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::cli {

// The number of classes the job's metrics describe (from its confusion
// matrices or per-class lists; 0 if it has none yet).
int JobMetricsClassCount(const v1::Job& job);

// `names` cut or padded ("class 7") to the job's class count.
std::vector<std::string> MetricsClassNames(const v1::Job& job,
                                           std::vector<std::string> names);

// The text report. Missing parts (no epochs yet, no test result, metrics
// from before per-class scores existed) are left out or shown as "-".
std::string FormatJobMetrics(const v1::Job& job,
                             const std::vector<std::string>& class_names);

// Learning curves: loss (train, val) and accuracy (train, val, val top-5)
// against epoch, two panels. FAILED_PRECONDITION if the job has no epochs.
absl::StatusOr<std::string> LearningCurvesPng(const v1::Job& job);

// Heatmap of the test confusion matrix, else the last epoch's validation
// one. FAILED_PRECONDITION if the job has neither.
absl::StatusOr<std::string> ConfusionPng(
    const v1::Job& job, const std::vector<std::string>& class_names);

}  // namespace tlserve::cli

#endif  // TLSERVE_CLIENT_JOB_METRICS_VIEW_H_
