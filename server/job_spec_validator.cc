#include "server/job_spec_validator.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/data_split.h"
#include "common/input_fit.h"
#include "common/multitask.h"
#include "common/recipe_validation.h"
#include "common/status_macros.h"

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
// Record pairs shown in a split warning.
constexpr size_t kMaxShownPairs = 5;

absl::Status Invalid(std::string message) {
  return absl::InvalidArgumentError(std::move(message));
}

// "validation record 12 = train record 5, ..." for the first few pairs.
std::string ShowPairs(const std::vector<RecordPair>& pairs,
                      const char* query_name, const char* within_name) {
  std::vector<std::string> shown;
  for (size_t i = 0; i < std::min(pairs.size(), kMaxShownPairs); ++i) {
    shown.push_back(absl::StrFormat("%s record %d = %s record %d", query_name,
                                    pairs[i].second, within_name,
                                    pairs[i].first));
  }
  return absl::StrCat(absl::StrJoin(shown, ", "),
                      pairs.size() > kMaxShownPairs ? ", ..." : "");
}

// What a few-shot job cannot have: it trains nothing, so anything that
// would change the backbone's features or ask for training is refused
// rather than silently ignored.
absl::Status ValidateFewShot(const JobSpec& spec) {
  if (spec.epochs() != 0) {
    return Invalid(absl::StrFormat(
        "spec.epochs must be 0 for FEW_SHOT (nothing trains), got %d",
        spec.epochs()));
  }
  if (spec.freeze().mode() != FreezePolicy::FROZEN ||
      spec.freeze().gradual_unfreeze_size() > 0 ||
      spec.freeze().trainable_patterns_size() > 0) {
    return Invalid(
        "spec.freeze must be FROZEN for FEW_SHOT: the prototypes are means of "
        "the pretrained backbone's features");
  }
  if (spec.freeze().batchnorm_stats() == FreezePolicy::UPDATE_ALL) {
    return Invalid("spec.freeze.batchnorm_stats cannot be UPDATE_ALL for FEW_SHOT");
  }
  if (spec.backbone_init() == tlserve::v1::RANDOM) {
    return Invalid("spec.backbone_init cannot be RANDOM for FEW_SHOT: random "
                   "features make no prototypes");
  }
  if (spec.head().hidden_sizes_size() > 0) {
    return Invalid("spec.head.hidden_sizes must be empty for FEW_SHOT: the "
                   "prototype classifier is one linear layer");
  }
  if (spec.augment().random_resized_crop() || spec.augment().horizontal_flip()) {
    return Invalid("spec.augment must be off for FEW_SHOT: each labelled image "
                   "is used once, as it is");
  }
  if (spec.early_stopping().patience() > 0) {
    return Invalid("spec.early_stopping does not apply to FEW_SHOT (no epochs)");
  }
  return absl::OkStatus();
}

absl::Status ValidateDomainAdapt(const JobSpec& spec) {
  const tlserve::v1::DomainAdaptSpec& da = spec.domain_adapt();
  if (da.target_dataset_id().empty()) {
    return Invalid("spec.domain_adapt.target_dataset_id is required for "
                   "DOMAIN_ADAPT: the unlabelled images of the target domain");
  }
  if (da.target_dataset_id() == spec.data().dataset_id()) {
    return Invalid("spec.domain_adapt.target_dataset_id names the source "
                   "dataset itself; there is no shift to adapt to");
  }
  if (da.has_domain_loss_weight() &&
      !(da.domain_loss_weight() >= 0 && da.domain_loss_weight() <= 100)) {
    return Invalid(absl::StrFormat(
        "spec.domain_adapt.domain_loss_weight must be in [0, 100], got %g",
        da.domain_loss_weight()));
  }
  if (!(da.gamma() >= 0 && da.gamma() <= 100)) {
    return Invalid(absl::StrFormat(
        "spec.domain_adapt.gamma must be in [0, 100] (0: 10), got %g",
        da.gamma()));
  }
  if (da.domain_hidden() < 0 || da.domain_hidden() > kMaxHeadWidth) {
    return Invalid(absl::StrFormat(
        "spec.domain_adapt.domain_hidden must be in [0, %d] (0: 256), got %d",
        kMaxHeadWidth, da.domain_hidden()));
  }
  const FreezePolicy& freeze = spec.freeze();
  if (freeze.mode() == FreezePolicy::FROZEN &&
      freeze.gradual_unfreeze_size() == 0 &&
      freeze.trainable_patterns_size() == 0) {
    return Invalid(
        "spec.freeze must let the backbone train for DOMAIN_ADAPT "
        "(LAST_N_BLOCKS or FULL): frozen features cannot move toward the "
        "target domain");
  }
  if (spec.early_stopping().patience() > 0) {
    return Invalid(
        "spec.early_stopping does not apply to DOMAIN_ADAPT: the source's "
        "validation accuracy says nothing about the target's");
  }
  return absl::OkStatus();
}

// A text job: FINE_TUNE of a word-vector backbone on a TEXT_CSV dataset.
// Refuses here what the worker's text trainer would refuse, so the caller
// hears it now, not when the job fails.
absl::Status ValidateTextJob(const JobSpec& spec,
                             const tlserve::v1::Dataset& dataset,
                             const tlserve::v1::Backbone* backbone) {
  if (spec.kind() != tlserve::v1::FINE_TUNE) {
    return Invalid(absl::StrFormat(
        "dataset '%s' is text (TEXT_CSV): text datasets train FINE_TUNE "
        "jobs only, not %s",
        dataset.id(), tlserve::v1::JobKind_Name(spec.kind())));
  }
  if (backbone == nullptr) {
    return Invalid("spec.backbone_id is required: a text job needs word "
                   "vectors (a WORD_VECTORS backbone)");
  }
  if (backbone->kind() != tlserve::v1::WORD_VECTORS) {
    return Invalid(absl::StrFormat(
        "dataset '%s' is text but backbone '%s' is an image network; use a "
        "WORD_VECTORS backbone (tlctl backbone upload --word-vectors)",
        dataset.id(), backbone->id()));
  }
  const FreezePolicy& freeze = spec.freeze();
  if (freeze.mode() != FreezePolicy::FROZEN &&
      freeze.mode() != FreezePolicy::FULL) {
    return Invalid(absl::StrFormat(
        "spec.freeze.mode %s does not apply to text jobs: the word vectors "
        "are one block; use FROZEN (they stay as loaded) or FULL (they train "
        "at learning_rate * backbone_lr_scale)",
        FreezePolicy::Mode_Name(freeze.mode())));
  }
  if (freeze.gradual_unfreeze_size() > 0 ||
      freeze.trainable_patterns_size() > 0 ||
      freeze.frozen_patterns_size() > 0) {
    return Invalid("spec.freeze.gradual_unfreeze and freeze patterns do not "
                   "apply to text jobs; use freeze.mode FROZEN or FULL");
  }
  if (!(freeze.backbone_lr_scale() > 0) || freeze.backbone_lr_scale() > 100) {
    return Invalid(absl::StrFormat(
        "spec.freeze.backbone_lr_scale must be in (0, 100], got %g",
        freeze.backbone_lr_scale()));
  }
  if (spec.backbone_init() == tlserve::v1::RANDOM) {
    return Invalid("spec.backbone_init RANDOM does not apply to text jobs; to "
                   "train without pretrained vectors, upload random ones");
  }
  if (spec.early_stopping().patience() > 0) {
    return Invalid("spec.early_stopping does not apply to text jobs (they "
                   "train every epoch); set its patience to 0");
  }
  if (spec.augment().random_resized_crop() || spec.augment().horizontal_flip()) {
    return Invalid("spec.augment: crops and flips are image augmentations; "
                   "clear them for a text job");
  }
  if (spec.has_input_fit()) {
    return Invalid("spec.input_fit is for images; leave it out for a text job");
  }
  const tlserve::v1::TextSpec& text = spec.text();
  if (!text.pooling().empty() && text.pooling() != "mean" &&
      text.pooling() != "max" && text.pooling() != "conv") {
    return Invalid(absl::StrFormat(
        "spec.text.pooling must be \"mean\", \"max\" or \"conv\", got \"%s\"",
        text.pooling()));
  }
  if (text.max_tokens() < 0 || text.max_tokens() > 65536) {
    return Invalid(absl::StrFormat(
        "spec.text.max_tokens must be in [0, 65536] (0: 256), got %d",
        text.max_tokens()));
  }
  if (text.conv_channels() < 0 || text.conv_channels() > 65536) {
    return Invalid(absl::StrFormat(
        "spec.text.conv_channels must be in [0, 65536] (0: 256), got %d",
        text.conv_channels()));
  }
  if (text.conv_channels() != 0 && text.pooling() != "conv") {
    return Invalid("spec.text.conv_channels is for pooling \"conv\" only");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateDomainTarget(const tlserve::v1::Dataset& source,
                                  const tlserve::v1::Dataset& target,
                                  const tlserve::v1::Backbone& backbone) {
  const std::string& id = target.id();
  if (target.class_names_size() != source.class_names_size() ||
      !std::equal(target.class_names().begin(), target.class_names().end(),
                  source.class_names().begin())) {
    return Invalid(absl::StrFormat(
        "spec.domain_adapt.target_dataset_id: dataset '%s' has classes [%s], "
        "not the source's [%s]; the target must share the label set",
        id, absl::StrJoin(target.class_names(), ", "),
        absl::StrJoin(source.class_names(), ", ")));
  }
  if (target.train_count() == 0) {
    return Invalid(absl::StrFormat(
        "spec.domain_adapt.target_dataset_id: dataset '%s' has no training "
        "images to adapt to",
        id));
  }
  if (target.test_count() == 0) {
    return Invalid(absl::StrFormat(
        "spec.domain_adapt.target_dataset_id: dataset '%s' has no test split; "
        "its labelled test images measure the adaptation",
        id));
  }
  const auto& in = backbone.input_spec();
  if (target.channels() != 0 && in.channels() != 0 &&
      target.channels() != in.channels() && target.channels() != 1 &&
      in.channels() != 1) {
    return Invalid(absl::StrFormat(
        "spec.domain_adapt.target_dataset_id: dataset '%s' has %d channels "
        "but backbone '%s' takes %d",
        id, target.channels(), backbone.id(), in.channels()));
  }
  return absl::OkStatus();
}

void ApplyJobDefaults(JobSpec* spec) {
  const bool few_shot = spec->kind() == tlserve::v1::FEW_SHOT;
  // Nothing trains in a few-shot job: no epochs, and every labelled image
  // is an example of its class rather than held out for validation.
  if (spec->epochs() == 0 && !few_shot) spec->set_epochs(10);
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
  if (data->validation_fraction() == 0 && !few_shot) {
    data->set_validation_fraction(0.1f);
  }
  if (ReusesBackbone(spec->kind())) {
    auto* freeze = spec->mutable_freeze();
    if (freeze->mode() == FreezePolicy::MODE_UNSPECIFIED) {
      // Adaptation moves the features; everything else starts frozen.
      freeze->set_mode(spec->kind() == tlserve::v1::DOMAIN_ADAPT
                           ? FreezePolicy::FULL
                           : FreezePolicy::FROZEN);
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
      spec.kind() != tlserve::v1::PRETRAIN &&
      spec.kind() != tlserve::v1::FEW_SHOT &&
      spec.kind() != tlserve::v1::DOMAIN_ADAPT &&
      spec.kind() != tlserve::v1::MULTITASK) {
    return Invalid(
        "spec.kind must be FINE_TUNE, PRETRAIN, FEW_SHOT, DOMAIN_ADAPT or "
        "MULTITASK");
  }
  // Before the kind's own checks, which would ask for what a text job
  // cannot use anyway.
  if (dataset.format() == tlserve::v1::TEXT_CSV &&
      spec.kind() != tlserve::v1::FINE_TUNE) {
    return Invalid(absl::StrFormat(
        "dataset '%s' is text (TEXT_CSV): text datasets train FINE_TUNE "
        "jobs only, not %s",
        dataset.id(), tlserve::v1::JobKind_Name(spec.kind())));
  }
  if (spec.kind() == tlserve::v1::DOMAIN_ADAPT) {
    RETURN_IF_ERROR(ValidateDomainAdapt(spec));
  } else if (spec.has_domain_adapt()) {
    return Invalid("spec.domain_adapt is for DOMAIN_ADAPT jobs only");
  }
  if (spec.kind() == tlserve::v1::FEW_SHOT) {
    RETURN_IF_ERROR(ValidateFewShot(spec));
  } else if (spec.epochs() < 1 || spec.epochs() > kMaxEpochs) {
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
  if (spec.keep_checkpoints() < 0 || spec.keep_checkpoints() > 1000) {
    return Invalid(absl::StrFormat(
        "spec.keep_checkpoints must be in [0, 1000] (0: the server's "
        "default), got %d",
        spec.keep_checkpoints()));
  }
  if (spec.micro_batch_size() < 0 || spec.micro_batch_size() > spec.batch_size()) {
    return Invalid(absl::StrFormat(
        "spec.micro_batch_size must be in [0, batch_size = %d] (0: the whole "
        "batch in one pass), got %d",
        spec.batch_size(), spec.micro_batch_size()));
  }
  if (!tlserve::v1::Precision_IsValid(spec.precision())) {
    return Invalid(absl::StrFormat(
        "spec.precision must be PRECISION_FP32 or PRECISION_BF16, got %d",
        static_cast<int>(spec.precision())));
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
  // Ranges are written so that NaN fails them (every comparison with NaN
  // is false): a NaN that got through trained NaN weights on a worker.
  if (!(opt.momentum() >= 0 && opt.momentum() < 1)) {
    return Invalid(absl::StrFormat(
        "spec.optimizer.momentum must be in [0, 1), got %g", opt.momentum()));
  }
  if (!(opt.weight_decay() >= 0) || std::isinf(opt.weight_decay())) {
    return Invalid(absl::StrFormat(
        "spec.optimizer.weight_decay must be a finite number >= 0, got %g",
        opt.weight_decay()));
  }
  if (spec.schedule().warmup_epochs() < 0 ||
      (spec.schedule().warmup_epochs() >= spec.epochs() &&
       spec.schedule().warmup_epochs() > 0)) {
    return Invalid(absl::StrFormat(
        "spec.schedule.warmup_epochs must be in [0, epochs), got %d",
        spec.schedule().warmup_epochs()));
  }
  if (absl::Status recipe = ValidateRecipe(spec, spec.epochs()); !recipe.ok()) {
    return Invalid(absl::StrCat("spec.", recipe.message()));
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
  if (!(head.dropout() >= 0 && head.dropout() < 1)) {
    return Invalid(absl::StrFormat("spec.head.dropout must be in [0, 1), got %g",
                                   head.dropout()));
  }

  // Data against the dataset as it was validated at upload.
  const auto& data = spec.data();
  const int num_classes = dataset.class_names_size();
  if (!(data.validation_fraction() >= 0 && data.validation_fraction() < 1)) {
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
  // After the labels are known good: the tasks map them.
  RETURN_IF_ERROR(ValidateMultitask(spec, num_classes));

  if (dataset.format() == tlserve::v1::TEXT_CSV) {
    return ValidateTextJob(spec, dataset, backbone);
  }
  if (spec.has_text()) {
    return Invalid(absl::StrFormat(
        "spec.text is for text datasets; dataset '%s' holds images",
        dataset.id()));
  }
  if (backbone != nullptr && backbone->kind() == tlserve::v1::WORD_VECTORS) {
    return Invalid(absl::StrFormat(
        "backbone '%s' is word vectors, for text datasets; dataset '%s' holds "
        "images: use an image backbone",
        backbone->id(), dataset.id()));
  }

  if (ReusesBackbone(spec.kind())) {
    if (backbone == nullptr) {
      return Invalid(absl::StrCat("spec.backbone_id is required for ",
                                  tlserve::v1::JobKind_Name(spec.kind())));
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
    RETURN_IF_ERROR(ValidateInputFit(spec.input_fit(), in.height(), in.width(),
                                     "spec.input_fit"));
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
    // A size of 0 is the dataset's, known on the worker, which checks the
    // crop against it; here only the fields themselves.
    const auto& in = spec.input_spec();
    RETURN_IF_ERROR(ValidateInputFit(in.fit(), in.height(), in.width(),
                                     "spec.input_spec.fit"));
    RETURN_IF_ERROR(ValidateInputFit(spec.input_fit(), in.height(), in.width(),
                                     "spec.input_fit"));
    if (spec.pretrain().base_width() < 4 || spec.pretrain().base_width() > 256) {
      return Invalid(absl::StrFormat(
          "spec.pretrain.base_width must be in [4, 256], got %d",
          spec.pretrain().base_width()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> CheckJobSplit(
    const JobSpec& spec, const tlserve::v1::Dataset& dataset,
    const DatasetImageIndex& index) {
  const std::vector<std::string> class_names(dataset.class_names().begin(),
                                             dataset.class_names().end());
  const auto& data = spec.data();
  absl::StatusOr<SplitIndices> split =
      SplitDataset(index.train_labels, index.test_labels, class_names.size(),
                   data, spec.seed());
  if (!split.ok()) {
    // The worker would fail the same way: refuse now. Its messages start
    // with "data: ..." for the spec's fields.
    const absl::string_view message = split.status().message();
    return Invalid(absl::StartsWith(message, "data:")
                       ? absl::StrCat("spec.", message)
                       : absl::StrFormat("spec.data: dataset '%s': %s",
                                         dataset.id(), message));
  }
  std::vector<std::string> warnings;
  const std::string scope = absl::StrFormat(
      "samples_per_class %d, validation_fraction %g, seed %d",
      data.samples_per_class(), data.validation_fraction(), spec.seed());

  std::vector<int64_t> train_per_class(split->classes.size(), 0);
  for (size_t record : split->train) {
    ++train_per_class[split->label_map[index.train_labels[record]]];
  }
  for (size_t k = 0; k < split->classes.size(); ++k) {
    const std::string name = ClassLabel(class_names, split->classes[k]);
    if (train_per_class[k] == 0) {
      return Invalid(absl::StrFormat(
          "spec.data.class_subset: class %s has no training samples after "
          "the split (%s)",
          name, scope));
    }
    if (train_per_class[k] < 2) {
      warnings.push_back(absl::StrFormat(
          "class %s has only %d training sample after the split (%s); the "
          "model will hardly learn it: raise samples_per_class or add images",
          name, train_per_class[k], scope));
    }
  }

  const std::vector<RecordPair> val_in_train = FindSharedImages(
      index.train_hashes, split->train, index.train_hashes, split->val);
  if (!val_in_train.empty()) {
    warnings.push_back(absl::StrFormat(
        "train/validation overlap: %d of %d validation images are identical "
        "to training images (%s; records of the dataset's training split); "
        "validation metrics will be optimistic",
        val_in_train.size(), split->val.size(),
        ShowPairs(val_in_train, "validation", "train")));
  }
  const std::vector<RecordPair> test_in_train = FindSharedImages(
      index.train_hashes, split->train, index.test_hashes, split->test);
  if (!test_in_train.empty()) {
    warnings.push_back(absl::StrFormat(
        "test/train overlap: %d of the job's %d test images are identical to "
        "its training images (%s); test metrics will be optimistic",
        test_in_train.size(), split->test.size(),
        ShowPairs(test_in_train, "test", "train")));
  }
  return warnings;
}

absl::StatusOr<std::vector<std::string>> CheckJobSplit(
    const JobSpec& spec, const tlserve::v1::Dataset& dataset,
    const std::optional<std::string>& image_index) {
  if (!image_index.has_value()) return std::vector<std::string>();
  absl::StatusOr<DatasetImageIndex> index =
      DecodeDatasetImageIndex(*image_index);
  if (index.ok() &&
      (static_cast<int64_t>(index->train_labels.size()) !=
           dataset.train_count() ||
       static_cast<int64_t>(index->test_labels.size()) != dataset.test_count())) {
    index = absl::DataLossError(absl::StrFormat(
        "it holds %d + %d records, the dataset %d + %d",
        index->train_labels.size(), index->test_labels.size(),
        dataset.train_count(), dataset.test_count()));
  }
  if (!index.ok()) {
    // Advisory checks: a damaged index must not stop training.
    return std::vector<std::string>{absl::StrCat(
        "split checks skipped: the stored image index of dataset '",
        dataset.id(), "' is unusable: ", index.status().message())};
  }
  return CheckJobSplit(spec, dataset, *index);
}

}  // namespace tlserve
