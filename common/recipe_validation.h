#ifndef TLSERVE_COMMON_RECIPE_VALIDATION_H_
#define TLSERVE_COMMON_RECIPE_VALIDATION_H_

// Checks of a job's training recipe that need no model: the server runs
// them at VALIDATING so a bad recipe costs no worker time, and the worker
// runs them again before training.

#include "absl/status/status.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve {

// INVALID_ARGUMENT for a recipe that cannot run: gradual_unfreeze steps
// out of order or outside [1, epochs], n_blocks < 0, layer_decay or a block
// scale outside [0, 100], an unknown BatchNorm mode, a bad early-stopping
// metric or negative patience, label smoothing outside [0, 1), a negative
// clip norm, a STEP schedule without step_epochs > 0 or with a gamma
// outside (0, 1].
absl::Status ValidateRecipe(const tlserve::v1::JobSpec& spec, int epochs);

// Kinds whose job starts from an existing backbone (spec.backbone_id).
inline bool ReusesBackbone(tlserve::v1::JobKind kind) {
  return kind == tlserve::v1::FINE_TUNE || kind == tlserve::v1::FEW_SHOT ||
         kind == tlserve::v1::DOMAIN_ADAPT || kind == tlserve::v1::MULTITASK;
}

}  // namespace tlserve

#endif  // TLSERVE_COMMON_RECIPE_VALIDATION_H_
