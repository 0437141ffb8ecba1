#ifndef TLSERVE_CLIENT_JOB_COMPARE_H_
#define TLSERVE_CLIENT_JOB_COMPARE_H_

// What `tlctl job compare` shows of several jobs side by side: a summary
// (setup, best validation, test result, time), one metric per epoch, and
// which job did best by how much, so a user sees whether transfer helped.
// Pure functions of the Job protos, so tests need no server.

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::cli {

// The per-epoch metric the table and the chart show.
enum class CompareMetric { kValAccuracy, kValLoss, kTrainLoss, kTrainAccuracy };

// "val_accuracy", "val_loss", "train_loss", "train_accuracy" (as --metric
// spells them); INVALID_ARGUMENT naming the choices otherwise.
absl::StatusOr<CompareMetric> ParseCompareMetric(std::string_view text);
std::string CompareMetricName(CompareMetric metric);

struct JobCompareOptions {
  CompareMetric metric = CompareMetric::kValAccuracy;
  // Terminal columns the tables should fit; job columns that do not fit
  // side by side go on into a further block below.
  int width = 100;
};

// The text report. Jobs without epochs (QUEUED) or without a test result
// show "-" in those places.
std::string FormatJobComparison(const std::vector<v1::Job>& jobs,
                                const JobCompareOptions& options);

// The metric against epoch, one line per job in the palette's colours
// (common/plot.h), with a legend. FAILED_PRECONDITION when no job has an
// epoch yet; INVALID_ARGUMENT for more jobs than the palette has colours.
absl::StatusOr<std::string> JobComparisonPng(const std::vector<v1::Job>& jobs,
                                             CompareMetric metric);

}  // namespace tlserve::cli

#endif  // TLSERVE_CLIENT_JOB_COMPARE_H_
