#include "server/job_spec_validator.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tlserve {

using tlserve::v1::FreezePolicy;
using tlserve::v1::JobSpec;
using tlserve::v1::OptimizerSpec;
using tlserve::v1::ScheduleSpec;

namespace {

constexpr int kMaxEpochs = 1000;
constexpr int kMaxBatch = 4096;
constexpr int kMaxAttempts = 10;
constexpr int kMaxHeadLayers = 8;
constexpr int kMaxHeadWidth = 16384;

absl::Status Invalid(std::string message) {
  return absl::InvalidArgumentError(std::move(message));
}

}  // namespace

void ApplyJobDefaults(JobSpec* spec) {
  if (spec->epochs() == 0) spec->set_epochs(10);
  if (spec->batch_size() == 0) spec->set_batch_size(32);
  if (spec->max_attempts() == 0) spec->set_max_attempts(3);
  if (spec->device().empty()) spec->set_device("cpu");
  auto* opt = spec->mutable_optimizer();
  if (opt->kind() == OptimizerSpec::KIND_UNSPECIFIED) {
    opt->set_kind(OptimizerSpec::ADAMW);
  }
  if (opt->learning_rate() == 0) {
    opt->set_learning_rate(opt->kind() == OptimizerSpec::SGD ? 0.01f : 1e-3f);
  }
  if (opt->kind() == OptimizerSpec::SGD && opt->momentum() == 0) {
    opt->set_momentum(0.9f);
  }
  if (spec->schedule().kind() == ScheduleSpec::KIND_UNSPECIFIED) {
    spec->mutable_schedule()->set_kind(ScheduleSpec::COSINE);
  }
  auto* data = spec->mutable_data();
  if (data->validation_fraction() == 0) data->set_validation_fraction(0.1f);
  if (spec->kind() == tlserve::v1::FINE_TUNE) {
    auto* freeze = spec->mutable_freeze();
    if (freeze->mode() == FreezePolicy::MODE_UNSPECIFIED) {
      freeze->set_mode(FreezePolicy::FROZEN);
    }
    if (freeze->backbone_lr_scale() == 0) freeze->set_backbone_lr_scale(1.0f);
    if (spec->backbone_init() == tlserve::v1::BACKBONE_INIT_UNSPECIFIED) {
      spec->set_backbone_init(tlserve::v1::PRETRAINED);
    }
  }
  if (spec->kind() == tlserve::v1::PRETRAIN) {
    auto* pre = spec->mutable_pretrain();
    if (pre->base_width() == 0) pre->set_base_width(16);
  }
}

absl::Status ValidateJobSpec(const JobSpec& spec,
                             const tlserve::v1::Dataset& dataset,
                             const tlserve::v1::Backbone* backbone) {
  if (spec.kind() != tlserve::v1::FINE_TUNE &&
      spec.kind() != tlserve::v1::PRETRAIN) {
    return Invalid("spec.kind must be FINE_TUNE or PRETRAIN");
  }
  if (spec.epochs() < 1 || spec.epochs() > kMaxEpochs) {
    return Invalid(absl::StrFormat("spec.epochs must be in [1, %d], got %d",
                                   kMaxEpochs, spec.epochs()));
  }
  if (spec.batch_size() < 1 || spec.batch_size() > kMaxBatch) {
    return Invalid(absl::StrFormat("spec.batch_size must be in [1, %d], got %d",
                                   kMaxBatch, spec.batch_size()));
  }
  if (spec.max_attempts() < 1 || spec.max_attempts() > kMaxAttempts) {
    return Invalid(absl::StrFormat(
        "spec.max_attempts must be in [1, %d], got %d", kMaxAttempts,
        spec.max_attempts()));
  }
  if (spec.device() != "cpu" && spec.device() != "cuda") {
    return Invalid(absl::StrCat("spec.device must be \"cpu\" or \"cuda\", got \"",
                                spec.device(), "\""));
  }
  const auto& opt = spec.optimizer();
  if (!(opt.learning_rate() > 0) || opt.learning_rate() > 10) {
    return Invalid(absl::StrFormat(
        "spec.optimizer.learning_rate must be in (0, 10], got %g",
        opt.learning_rate()));
  }
  if (opt.momentum() < 0 || opt.momentum() >= 1) {
    return Invalid(absl::StrFormat(
        "spec.optimizer.momentum must be in [0, 1), got %g", opt.momentum()));
  }
  if (opt.weight_decay() < 0) {
    return Invalid(absl::StrFormat(
        "spec.optimizer.weight_decay must be >= 0, got %g", opt.weight_decay()));
  }
  if (spec.schedule().warmup_epochs() < 0 ||
      spec.schedule().warmup_epochs() >= spec.epochs()) {
    return Invalid(absl::StrFormat(
        "spec.schedule.warmup_epochs must be in [0, epochs), got %d",
        spec.schedule().warmup_epochs()));
  }
  const auto& head = spec.head();
  if (head.hidden_sizes_size() > kMaxHeadLayers) {
    return Invalid(absl::StrFormat("spec.head.hidden_sizes has %d layers; at most %d",
                                   head.hidden_sizes_size(), kMaxHeadLayers));
  }
  for (int width : head.hidden_sizes()) {
    if (width < 1 || width > kMaxHeadWidth) {
      return Invalid(absl::StrFormat(
          "spec.head.hidden_sizes entries must be in [1, %d], got %d",
          kMaxHeadWidth, width));
    }
  }
  if (head.dropout() < 0 || head.dropout() >= 1) {
    return Invalid(absl::StrFormat("spec.head.dropout must be in [0, 1), got %g",
                                   head.dropout()));
  }

  // Data against the dataset as it was validated at upload.
  const auto& data = spec.data();
  const int num_classes = dataset.class_names_size();
  if (data.validation_fraction() < 0 || data.validation_fraction() >= 1) {
    return Invalid(absl::StrFormat(
        "spec.data.validation_fraction must be in [0, 1), got %g",
        data.validation_fraction()));
  }
  if (data.samples_per_class() < 0) {
    return Invalid("spec.data.samples_per_class must be >= 0");
  }
  if (data.max_test_samples() < 0) {
    return Invalid("spec.data.max_test_samples must be >= 0");
  }
  std::set<int> seen;
  std::vector<int> classes(data.class_subset().begin(), data.class_subset().end());
  if (classes.empty()) {
    for (int c = 0; c < num_classes; ++c) classes.push_back(c);
  }
  for (int c : data.class_subset()) {
    if (c < 0 || c >= num_classes) {
      return Invalid(absl::StrFormat(
          "spec.data.class_subset: class %d is outside [0, %d) of dataset '%s'",
          c, num_classes, dataset.id()));
    }
    if (!seen.insert(c).second) {
      return Invalid(absl::StrFormat("spec.data.class_subset: class %d is listed twice", c));
    }
  }
  if (classes.size() < 2) {
    return Invalid("spec.data.class_subset must name at least 2 classes");
  }
  for (int c : classes) {
    int64_t count = c < dataset.train_class_counts_size()
                        ? dataset.train_class_counts(c) : 0;
    if (count == 0) {
      return Invalid(absl::StrFormat(
          "spec.data.class_subset: class %d ('%s') has no training images in "
          "dataset '%s'", c, dataset.class_names(c), dataset.id()));
    }
  }

  if (spec.kind() == tlserve::v1::FINE_TUNE) {
    if (backbone == nullptr) {
      return Invalid("spec.backbone_id is required for FINE_TUNE");
    }
    const auto& freeze = spec.freeze();
    if (freeze.mode() == FreezePolicy::LAST_N_BLOCKS) {
      if (freeze.n_blocks() < 1) {
        return Invalid(absl::StrFormat(
            "spec.freeze.n_blocks must be >= 1 for LAST_N_BLOCKS, got %d",
            freeze.n_blocks()));
      }
      if (backbone->blocks_size() > 0 && freeze.n_blocks() > backbone->blocks_size()) {
        return Invalid(absl::StrFormat(
            "spec.freeze.n_blocks is %d but backbone '%s' has %d blocks",
            freeze.n_blocks(), backbone->id(), backbone->blocks_size()));
      }
    }
    if (!(freeze.backbone_lr_scale() > 0) || freeze.backbone_lr_scale() > 100) {
      return Invalid(absl::StrFormat(
          "spec.freeze.backbone_lr_scale must be in (0, 100], got %g",
          freeze.backbone_lr_scale()));
    }
    const auto& in = backbone->input_spec();
    if (dataset.channels() != 0 && in.channels() != 0 &&
        dataset.channels() != in.channels() && dataset.channels() != 1 &&
        in.channels() != 1) {
      return Invalid(absl::StrFormat(
          "dataset '%s' has %d channels but backbone '%s' takes %d",
          dataset.id(), dataset.channels(), backbone->id(), in.channels()));
    }
  } else {
    if (spec.pretrain().backbone_name().empty()) {
      return Invalid("spec.pretrain.backbone_name is required for PRETRAIN");
    }
    if (spec.pretrain().base_width() < 4 || spec.pretrain().base_width() > 256) {
      return Invalid(absl::StrFormat(
          "spec.pretrain.base_width must be in [4, 256], got %d",
          spec.pretrain().base_width()));
    }
  }
  return absl::OkStatus();
}

}  // namespace tlserve
