#include "common/recipe_validation.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace tlserve {

using tlserve::v1::FreezePolicy;

absl::Status ValidateRecipe(const tlserve::v1::JobSpec& spec, int epochs) {
  const FreezePolicy& f = spec.freeze();
  int previous = 0;
  for (int i = 0; i < f.gradual_unfreeze_size(); ++i) {
    const auto& step = f.gradual_unfreeze(i);
    if (step.epoch() < 1 || step.epoch() > epochs || step.epoch() <= previous) {
      return absl::InvalidArgumentError(absl::StrCat(
          "freeze.gradual_unfreeze[", i, "]: epoch ", step.epoch(),
          " must be in [1, epochs = ", epochs,
          "] and after the previous step's epoch ", previous));
    }
    if (step.n_blocks() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "freeze.gradual_unfreeze[", i, "]: n_blocks ", step.n_blocks(),
          " is negative"));
    }
    previous = step.epoch();
  }
  if (!(f.layer_decay() >= 0 && f.layer_decay() <= 100)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "freeze.layer_decay ", f.layer_decay(), " is outside [0, 100]"));
  }
  for (const auto& [block, scale] : f.block_lr_scales()) {
    if (!(scale >= 0 && scale <= 100)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "freeze.block_lr_scales['", block, "'] = ", scale,
          " is outside [0, 100]"));
    }
  }
  if (!FreezePolicy::BatchNormStats_IsValid(f.batchnorm_stats())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "freeze.batchnorm_stats: unknown value ", f.batchnorm_stats()));
  }
  const auto& es = spec.early_stopping();
  if (!es.metric().empty() && es.metric() != "val_accuracy" &&
      es.metric() != "val_loss") {
    return absl::InvalidArgumentError(
        absl::StrCat("early_stopping.metric '", es.metric(),
                     "' is not val_accuracy or val_loss"));
  }
  if (es.patience() < 0 || !(es.min_delta() >= 0)) {
    return absl::InvalidArgumentError(
        "early_stopping: patience and min_delta must not be negative");
  }
  if (!(spec.augment().crop_scale_min() >= 0 &&
        spec.augment().crop_scale_min() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("augment.crop_scale_min ", spec.augment().crop_scale_min(),
                     " is outside [0, 1]"));
  }
  if (!(spec.label_smoothing() >= 0 && spec.label_smoothing() < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "label_smoothing ", spec.label_smoothing(), " is outside [0, 1)"));
  }
  if (!(spec.checkpoint_every_seconds() >= 0) ||
      std::isinf(spec.checkpoint_every_seconds())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint_every_seconds ", spec.checkpoint_every_seconds(),
        " must be a finite number of seconds >= 0 (0: every 300 s)"));
  }
  if (spec.loader_threads() < 0 || spec.loader_threads() > 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "loader_threads ", spec.loader_threads(), " is outside [0, 64]"));
  }
  if (!(spec.grad_clip_norm() >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grad_clip_norm ", spec.grad_clip_norm(), " is negative"));
  }
  if (spec.schedule().kind() == tlserve::v1::ScheduleSpec::STEP) {
    if (spec.schedule().step_epochs() <= 0) {
      return absl::InvalidArgumentError(
          "schedule STEP needs step_epochs > 0 (epochs between rate drops)");
    }
    const float gamma = spec.schedule().step_gamma();
    if (!(gamma > 0 && gamma <= 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "schedule.step_gamma ", gamma, " is outside (0, 1]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tlserve
