#ifndef TLSERVE_WORKER_TRAINING_RECIPE_H_
#define TLSERVE_WORKER_TRAINING_RECIPE_H_

// The fine-tuning recipe beyond "which blocks train": parameter-name
// patterns, BatchNorm statistics, discriminative (per-block) learning
// rates, gradual unfreezing and early stopping. The trainer asks these
// functions what to do; they hold no training loop themselves.

#include <torch/script.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tlserve/v1/job.pb.h"
#include "common/recipe_validation.h"
#include "worker/model_builder.h"

namespace tlserve::worker {

// '*' matches any run of characters (dots included); everything else
// matches itself. "layer4.*" matches "layer4.0.conv1.weight".
bool GlobMatch(absl::string_view pattern, absl::string_view name);

// Applies freeze.trainable_patterns then freeze.frozen_patterns (which
// win) to the backbone's parameters, on top of what ApplyFreezePolicy set,
// and recomputes the plan's trainable/frozen blocks and backbone_frozen
// from the resulting requires_grad flags. INVALID_ARGUMENT for a pattern
// that matches no parameter (a typo would otherwise silently train
// nothing).
absl::Status ApplyParameterPatterns(torch::jit::Module backbone,
                                    const tlserve::v1::FreezePolicy& policy,
                                    FreezePlan* plan);

// The freeze policy in force during `epoch` (1-based): with gradual
// unfreezing, LAST_N_BLOCKS with the n of the last step whose epoch <=
// `epoch` (FROZEN before the first step); otherwise `policy` itself.
tlserve::v1::FreezePolicy PolicyAtEpoch(const tlserve::v1::FreezePolicy& policy,
                                        int epoch);

// True when no epoch of the run trains any backbone parameter: the
// condition (with a deterministic input pipeline) for caching features.
bool BackboneFrozenThroughout(const tlserve::v1::FreezePolicy& policy);

// One optimizer group of backbone parameters and its rate relative to the
// head's.
struct BackboneGroup {
  std::string block;  // "" for parameters outside every block
  double lr_scale = 1.0;
  std::vector<at::Tensor> params;
};

// Every backbone parameter (trainable now or later), grouped by block in
// Blocks() order, with rate scale block_lr_scales[block] if given, else
// backbone_lr_scale * layer_decay^k for the block k places before the last.
// Parameters outside every block get backbone_lr_scale. Blocks without
// parameters are left out. INVALID_ARGUMENT for a block_lr_scales key that
// names no block.
absl::StatusOr<std::vector<BackboneGroup>> BackboneGroups(
    const torch::jit::Module& backbone, const std::vector<std::string>& blocks,
    const tlserve::v1::FreezePolicy& policy, double backbone_lr_scale);

// Sets the train/eval flag of the backbone's BatchNorm modules after
// SetTrainingMode(training=true): FROZEN_ALL puts every one in eval,
// UPDATE_ALL every one in train; FOLLOW_TRAINABLE leaves SetTrainingMode's
// choice.
void ApplyBatchNormMode(torch::jit::Module backbone,
                        tlserve::v1::FreezePolicy::BatchNormStats mode);

// Early stopping over epochs: which epoch is best so far, and when to stop.
class EarlyStopper {
 public:
  struct State {
    int best_epoch = 0;
    double best_value = 0;
    int epochs_since_best = 0;
  };

  // metric "" means val_accuracy; patience 0 never stops (the best epoch is
  // still tracked).
  explicit EarlyStopper(const tlserve::v1::EarlyStopping& spec);

  // Records an epoch's validation metrics; true when it is the best so far.
  bool Record(int epoch, const tlserve::v1::EpochMetrics& metrics);
  bool ShouldStop() const;
  bool enabled() const { return patience_ > 0; }
  const std::string& metric() const { return metric_; }

  const State& state() const { return state_; }
  void Restore(const State& state) { state_ = state; }

 private:
  std::string metric_;
  bool higher_is_better_ = true;
  int patience_ = 0;
  double min_delta_ = 0;
  State state_;
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_TRAINING_RECIPE_H_
