#ifndef TLSERVE_COMMON_MULTITASK_H_
#define TLSERVE_COMMON_MULTITASK_H_

// MULTITASK jobs: one backbone, the head for the dataset's labels
// ("classes") and one head per JobSpec.multitask.tasks entry, each trained
// on its own grouping of the same labels. The server checks the spec with
// these rules before a worker sees it; the worker derives each task's
// targets from the model's classes with the same tables.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve {

// The name of the head for the dataset's own labels.
inline constexpr char kClassesHead[] = "classes";
inline constexpr int kMaxTasks = 16;

// INVALID_ARGUMENT naming the field unless: MULTITASK has 1 to kMaxTasks
// tasks; each name is 1-32 of [a-z0-9_] starting with a letter, unique and
// not "classes"; each task has 2 to 1000 non-empty, distinct class names;
// label_map has one entry per dataset label, each in [0, class count);
// every task class gets a label the job trains on (data.class_subset, or
// all), since a head class no image teaches is a dead output; weights are
// finite and in [0, 100]. Other kinds must leave spec.multitask unset.
absl::Status ValidateMultitask(const tlserve::v1::JobSpec& spec,
                               int dataset_classes);

// For each task, its class of each model class i (the model's classes are
// data.class_subset in order, or every dataset label): out[t][i]. Call on
// a validated spec; entries outside the map read as 0.
std::vector<std::vector<int>> TaskClassesOfModelClasses(
    const tlserve::v1::JobSpec& spec, int dataset_classes);

// Loss weights with their defaults (0 means 1).
double ClassesLossWeight(const tlserve::v1::MultitaskSpec& multitask);
double TaskLossWeight(const tlserve::v1::TaskSpec& task);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_MULTITASK_H_
