#ifndef TLSERVE_SERVER_JOB_SPEC_VALIDATOR_H_
#define TLSERVE_SERVER_JOB_SPEC_VALIDATOR_H_

#include "absl/status/status.h"
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
absl::Status ValidateJobSpec(const tlserve::v1::JobSpec& spec,
                             const tlserve::v1::Dataset& dataset,
                             const tlserve::v1::Backbone* backbone);

}  // namespace tlserve

#endif  // TLSERVE_SERVER_JOB_SPEC_VALIDATOR_H_
