#ifndef TLSERVE_SERVER_JOB_SPEC_VALIDATOR_H_
#define TLSERVE_SERVER_JOB_SPEC_VALIDATOR_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dataset_checks.h"
#include "tlserve/v1/dataset.pb.h"
#include "tlserve/v1/job.pb.h"
#include "tlserve/v1/model.pb.h"

namespace tlserve {

// Fills unset fields with the service's defaults, so the stored spec says
// exactly what will run (epochs 10, batch 32, AdamW 1e-3, cosine, cpu,
// 3 attempts, validation 0.1, FROZEN for fine-tunes).
void ApplyJobDefaults(tlserve::v1::JobSpec* spec);

// Checks a defaulted spec against the dataset (and the backbone for
// FINE_TUNE; null for PRETRAIN) before any worker time is spent. Errors are
// INVALID_ARGUMENT naming the field, e.g. "spec.optimizer.learning_rate
// must be > 0, got -1".
// DOMAIN_ADAPT: INVALID_ARGUMENT naming spec.domain_adapt.target_dataset_id
// when the target cannot serve: another label set than the source's, no
// test split to measure on, no training images, or channels the backbone
// cannot take.
absl::Status ValidateDomainTarget(const tlserve::v1::Dataset& source,
                                  const tlserve::v1::Dataset& target,
                                  const tlserve::v1::Backbone& backbone);

absl::Status ValidateJobSpec(const tlserve::v1::JobSpec& spec,
                             const tlserve::v1::Dataset& dataset,
                             const tlserve::v1::Backbone* backbone);

// Looks at the job's split itself, before any worker time is spent: with
// common/data_split it computes exactly the records the worker will train,
// validate and test on (same labels, spec and seed), from the per-record
// index stored at upload (common/dataset_checks.h). Returns warnings for
// the job's events: validation images identical to training images, test
// images that occur in training, classes left with fewer than 2 training
// samples. INVALID_ARGUMENT naming the field only for a split that cannot
// train (a class with no training sample). Call after ValidateJobSpec.
absl::StatusOr<std::vector<std::string>> CheckJobSplit(
    const tlserve::v1::JobSpec& spec, const tlserve::v1::Dataset& dataset,
    const DatasetImageIndex& index);
// The same from the stored bytes of the index; no checks (no warnings) for
// a dataset stored without one, and a warning saying so when the bytes do
// not decode or do not match the dataset.
absl::StatusOr<std::vector<std::string>> CheckJobSplit(
    const tlserve::v1::JobSpec& spec, const tlserve::v1::Dataset& dataset,
    const std::optional<std::string>& image_index);

}  // namespace tlserve

#endif  // TLSERVE_SERVER_JOB_SPEC_VALIDATOR_H_
