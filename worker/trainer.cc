#include "worker/trainer.h"

#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <numeric>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/recipe_validation.h"
#include "common/classification_metrics.h"
#include "common/sha256.h"
#include "common/input_fit.h"
#include "common/multitask.h"
#include "common/status_macros.h"
#include "worker/backbone_split.h"
#include "worker/batch_loader.h"
#include "worker/checkpoint.h"
#include "worker/compute_device.h"
#include "worker/data_tensors.h"
#include "worker/fused_adamw.h"
#include "worker/model_builder.h"
#include "worker/torch_status.h"
#include "worker/training_recipe.h"

namespace tlserve::worker {
namespace {

using tlserve::v1::EpochMetrics;
using tlserve::v1::JobSpec;
using tlserve::v1::OptimizerSpec;
using tlserve::v1::ScheduleSpec;
using Clock = std::chrono::steady_clock;

// Batches of 64 ran the backbone faster than 256 on the CI machine's
// caches (resnet18 at 64x64: 5.9 s against 6.7 s for 3000 images).
constexpr int64_t kEvalBatchSize = 64;
constexpr double kDefaultCheckpointSeconds = 300;
constexpr int kDefaultEpochs = 10;
constexpr int kDefaultBatchSize = 32;
constexpr int kDefaultBaseWidth = 16;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// JobResult.frozen_backbone_digest: the backbone's weights digest and the
// input normalisation the exported model bakes in (mean/std buffers), so
// two models share a backbone at serving time only when features() is
// the same function for both. Floats as %.9g, which round-trips a float.
std::string FrozenBackboneDigest(const std::string& weights_digest,
                                 const tlserve::v1::InputSpec& spec) {
  Sha256 hasher;
  hasher.Update(absl::StrCat("tlserve frozen backbone v1\nweights ",
                             weights_digest, "\n"));
  hasher.Update(absl::StrFormat("channels %d\nheight %d\nwidth %d\n",
                                spec.channels(), spec.height(), spec.width()));
  auto values = [&hasher](std::string_view name,
                          const google::protobuf::RepeatedField<float>& v) {
    hasher.Update(name);
    for (float x : v) hasher.Update(absl::StrFormat(" %.9g", x));
    hasher.Update("\n");
  };
  values("mean", spec.mean());
  values("std", spec.std());
  return hasher.FinalHex();
}

// The job's hyper-parameters with defaults filled in.
struct Hyper {
  int epochs = kDefaultEpochs;
  int64_t batch_size = kDefaultBatchSize;
  OptimizerSpec::Kind optimizer = OptimizerSpec::ADAMW;
  double lr = 1e-3;
  double momentum = 0.9;
  double weight_decay = 0;
  ScheduleSpec::Kind schedule = ScheduleSpec::CONSTANT;
  int warmup_epochs = 0;
  int step_epochs = 0;
  double step_gamma = 1.0;
  double backbone_lr_scale = 1.0;
  double label_smoothing = 0;
  double grad_clip_norm = 0;
};

absl::StatusOr<Hyper> ResolveHyper(const JobSpec& spec) {
  Hyper h;
  if (spec.epochs() < 0 || spec.epochs() > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("epochs ", spec.epochs(), " is outside [0, 10000]"));
  }
  if (spec.epochs() > 0) h.epochs = spec.epochs();
  if (spec.batch_size() < 0 || spec.batch_size() > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch_size ", spec.batch_size(), " is outside [0, 65536]"));
  }
  if (spec.batch_size() > 0) h.batch_size = spec.batch_size();
  const OptimizerSpec& opt = spec.optimizer();
  switch (opt.kind()) {
    case OptimizerSpec::KIND_UNSPECIFIED:
    case OptimizerSpec::ADAMW:
      h.optimizer = OptimizerSpec::ADAMW;
      h.lr = 1e-3;
      break;
    case OptimizerSpec::SGD:
      h.optimizer = OptimizerSpec::SGD;
      h.lr = 0.01;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer: unknown kind ", opt.kind()));
  }
  if (!(opt.learning_rate() >= 0 && opt.learning_rate() < 100)) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer: learning_rate ",
                                                   opt.learning_rate(),
                                                   " is outside [0, 100)"));
  }
  if (opt.learning_rate() > 0) h.lr = opt.learning_rate();
  if (!(opt.momentum() >= 0 && opt.momentum() < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer: momentum ", opt.momentum(), " is outside [0, 1)"));
  }
  if (opt.momentum() > 0) h.momentum = opt.momentum();
  if (!(opt.weight_decay() >= 0 && opt.weight_decay() < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer: weight_decay ", opt.weight_decay(), " is outside [0, 1)"));
  }
  h.weight_decay = opt.weight_decay();
  switch (spec.schedule().kind()) {
    case ScheduleSpec::KIND_UNSPECIFIED:
    case ScheduleSpec::CONSTANT:
      h.schedule = ScheduleSpec::CONSTANT;
      break;
    case ScheduleSpec::COSINE:
      h.schedule = ScheduleSpec::COSINE;
      break;
    case ScheduleSpec::STEP:
      h.schedule = ScheduleSpec::STEP;
      h.step_epochs = spec.schedule().step_epochs();
      h.step_gamma = spec.schedule().step_gamma();
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("schedule: unknown kind ", spec.schedule().kind()));
  }
  if (spec.schedule().warmup_epochs() < 0 ||
      spec.schedule().warmup_epochs() > h.epochs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "schedule: warmup_epochs ", spec.schedule().warmup_epochs(),
        " is outside [0, epochs = ", h.epochs, "]"));
  }
  h.warmup_epochs = spec.schedule().warmup_epochs();
  const float scale = spec.freeze().backbone_lr_scale();
  if (!(scale >= 0 && scale <= 100)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "freeze: backbone_lr_scale ", scale, " is outside [0, 100]"));
  }
  if (scale > 0) h.backbone_lr_scale = scale;
  RETURN_IF_ERROR(ValidateRecipe(spec, h.epochs));
  h.label_smoothing = spec.label_smoothing();
  h.grad_clip_norm = spec.grad_clip_norm();
  return h;
}

// Factor on the base learning rate before optimizer step `step` (0-based):
// linear warmup to 1, then constant, a cosine decay to 0 at the end, or a
// drop by step_gamma every step_epochs epochs.
double LrFactor(const Hyper& h, int64_t step, int64_t steps_per_epoch) {
  const int64_t total = static_cast<int64_t>(h.epochs) * steps_per_epoch;
  const int64_t warmup =
      static_cast<int64_t>(h.warmup_epochs) * steps_per_epoch;
  if (step < warmup) return static_cast<double>(step + 1) / warmup;
  if (h.schedule == ScheduleSpec::STEP) {
    const int64_t drops = step / (static_cast<int64_t>(h.step_epochs) *
                                  std::max<int64_t>(1, steps_per_epoch));
    return std::pow(h.step_gamma, static_cast<double>(drops));
  }
  if (h.schedule != ScheduleSpec::COSINE) return 1.0;
  const double progress =
      static_cast<double>(step - warmup) /
      static_cast<double>(std::max<int64_t>(1, total - warmup));
  return 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
}

// The graph executor's optimisations are thread-local; training turns them
// off so every step runs the same plain autograd graph. With them on, the
// first (profiling) runs and the later optimised runs differ in the last
// bits, and a resumed job would not reproduce an uninterrupted one.
class ScopedNoGraphOptimize {
 public:
  ScopedNoGraphOptimize() : previous_(torch::jit::getGraphExecutorOptimize()) {
    torch::jit::setGraphExecutorOptimize(false);
  }
  ~ScopedNoGraphOptimize() { torch::jit::setGraphExecutorOptimize(previous_); }
  ScopedNoGraphOptimize(const ScopedNoGraphOptimize&) = delete;
  ScopedNoGraphOptimize& operator=(const ScopedNoGraphOptimize&) = delete;

 private:
  bool previous_;
};

// A float32 [rows, dim] file as a read-only tensor over mmap; unmapped
// when the last tensor using it goes away.
absl::StatusOr<at::Tensor> MapFeatureFile(const std::string& path,
                                          int64_t rows, int64_t dim) {
  const size_t bytes = static_cast<size_t>(rows * dim) * sizeof(float);
  if (bytes == 0) return at::empty({rows, dim});
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("opening ", path, ": ",
                                            std::strerror(errno)));
  }
  void* mapped = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapped == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("mapping ", path, ": ",
                                            std::strerror(errno)));
  }
  return at::from_blob(
      mapped, {rows, dim}, [bytes](void* p) { ::munmap(p, bytes); },
      at::TensorOptions().dtype(at::kFloat));
}

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  std::vector<float> per_class;  // accuracy (recall) per class
  int64_t count = 0;
  // True label among the top min(5, k) logits.
  double top5_accuracy = 0;
  std::vector<ClassScores> class_scores;
  // Row-major k x k, rows true, columns predicted.
  std::vector<int64_t> confusion;
  // MULTITASK: each task head's loss, accuracy and per-class accuracy.
  struct Task {
    double loss = 0;
    double accuracy = 0;
    std::vector<float> per_class;
  };
  std::vector<Task> tasks;

  // Appends the scores and the matrix to an EpochMetrics or JobResult.
  void CopyTo(
      google::protobuf::RepeatedPtrField<tlserve::v1::ClassMetrics>* scores,
      google::protobuf::RepeatedField<int64_t>* matrix) const {
    for (const ClassScores& s : class_scores) {
      tlserve::v1::ClassMetrics* m = scores->Add();
      m->set_precision(static_cast<float>(s.precision));
      m->set_recall(static_cast<float>(s.recall));
      m->set_f1(static_cast<float>(s.f1));
      m->set_support(s.support);
    }
    matrix->Add(confusion.begin(), confusion.end());
  }
};

// The gradient-reversal layer of DANN: the identity going forward; going
// back it multiplies the gradient by -lambda, so the layers before it learn
// to make the domain classifier after it fail.
class GradientReversal : public torch::autograd::Function<GradientReversal> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            const at::Tensor& x, double lambda) {
    ctx->saved_data["lambda"] = lambda;
    return x.clone();
  }
  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    const double lambda = ctx->saved_data["lambda"].toDouble();
    return {grads[0] * -lambda, at::Tensor()};
  }
};

class Trainer {
 public:
  Trainer(const TrainJobInput& input, const DecodedDataset& data,
          const TrainerCallbacks& callbacks)
      : input_(input), spec_(input.spec), data_(data), callbacks_(callbacks) {}

  absl::StatusOr<TrainJobOutput> Run();

 private:
  void Log(const std::string& message) {
    if (callbacks_.on_log) callbacks_.on_log(message);
  }
  bool Cancelled() {
    return callbacks_.should_stop && callbacks_.should_stop();
  }
  bool HandBackRequested() {
    return callbacks_.should_hand_back && callbacks_.should_hand_back();
  }
  bool ShouldStop() { return Cancelled() || HandBackRequested(); }
  // How a stopped job reports: cancelled, and handed back unless it was
  // cancelled outright.
  TrainJobOutput Stopped(const std::string& where) {
    TrainJobOutput output;
    output.cancelled = true;
    output.handed_back = !Cancelled() && HandBackRequested();
    Log(absl::StrCat(output.handed_back ? "handed back" : "cancelled",
                     " during ", where));
    return output;
  }

  absl::Status BuildModel();
  absl::Status BuildOptimizer();
  // DOMAIN_ADAPT: the target's splits, with the source's classes.
  absl::Status PrepareTarget();
  // Sets which backbone parameters train during `epoch` (gradual
  // unfreezing, patterns); logs when the set of trainable blocks changes.
  absl::Status ApplyFreezeAt(int epoch);
  // The model's parameters and buffers, cloned.
  std::vector<std::pair<std::string, at::Tensor>> SnapshotWeights();
  absl::Status RestoreWeights(
      const std::vector<std::pair<std::string, at::Tensor>>& weights);
  // Features (or activations at the cut) of every split; false if
  // cancelled.
  absl::StatusOr<bool> CacheFeatures();
  // Runs the classifier's `method` over `images`, in batches.
  // `spill_path` non-empty: written to that file chunk by chunk and
  // returned as a read-only memory map of it, so resident memory stays
  // bounded by the page cache rather than the feature count. `optimize`:
  // through an inference-optimised frozen copy (feature cache only: its
  // numbers differ from the training graph's by float rounding).
  absl::StatusOr<at::Tensor> Features(const at::Tensor& images,
                                      bool* cancelled,
                                      const std::string& method,
                                      bool optimize,
                                      const std::string& spill_path = "");
  // Decides whether the frozen first part of a partly trainable backbone
  // can run once per sample (the activation cache), and sets it up.
  absl::Status PlanActivationCache();
  // FEW_SHOT: sets the head to the prototype classifier of the cached
  // training features.
  absl::Status SetPrototypeHead();
  // MULTITASK: one head per task (the classes head's layout), wrapped with
  // head_ in a MultiHead that becomes head_.
  absl::Status BuildTaskHeads(const std::vector<int64_t>& hidden);
  // MULTITASK: the classes head's logits of Forward's output.
  at::Tensor ClassLogits(const at::Tensor& logits) const {
    return tasks_.empty()
               ? logits
               : logits.slice(1, 0,
                              static_cast<int64_t>(tensors_.class_names.size()));
  }
  // True when the splits hold cached features or activations, not images.
  bool InputsCached() const {
    return use_feature_cache_ || use_activation_cache_;
  }
  // Logits for model input: float images in [0, 1], or cached features.
  at::Tensor Forward(const at::Tensor& inputs);
  // A batch (images, features, labels) on the job's device, images in its
  // memory layout; asynchronous from pinned memory.
  at::Tensor OnDevice(const at::Tensor& t) const {
    c10::optional<c10::MemoryFormat> format;
    if (t.dim() == 4) format = memory_format_;
    return t.to(at::TensorOptions().device(device_), /*non_blocking=*/true,
                /*copy=*/false, format);
  }
  // What one batch's passes add to the epoch's sums, kept on the device
  // until the batch ends: one synchronisation per batch, not per number.
  struct BatchSums {
    at::Tensor loss;            // class loss * rows
    at::Tensor total;           // the trained loss, summed (finite check)
    at::Tensor correct;
    at::Tensor domain_loss;     // DOMAIN_ADAPT: * (source + target rows)
    at::Tensor domain_correct;
    int64_t domain_seen = 0;
    double lambda = 0;
    std::vector<at::Tensor> task_loss;  // MULTITASK: * rows
    std::vector<at::Tensor> task_correct;
  };
  // The forward and backward passes of one batch, `rows` at a time, each
  // pass's loss scaled by its share of the batch so that the gradients
  // add up to the whole batch's. `target` holds DOMAIN_ADAPT's target
  // images (else undefined). No optimizer step.
  absl::Status TrainPasses(const at::Tensor& x, const at::Tensor& y,
                           const at::Tensor& target, int64_t rows,
                           int64_t step, BatchSums* sums);
  // One epoch from batch `first_batch` on (> 0 when resuming inside it,
  // with resume_cursor_'s sums); false if cancelled.
  absl::StatusOr<bool> TrainEpoch(int epoch, int64_t first_batch,
                                  EpochMetrics* metrics);
  // Tensors no epoch so far has trained: checkpoints leave them out.
  bool Unchanged(const std::string& name) const;
  // Writes a checkpoint at `cursor` and hands it to the callbacks:
  // on_epoch_end with `metrics` at an epoch's end, else on_checkpoint.
  absl::Status Checkpoint(const TrainingCursor& cursor,
                          const EpochMetrics* metrics);
  EvalResult Evaluate(const at::Tensor& inputs, const at::Tensor& labels);
  absl::Status Export(TrainJobOutput* output);

  const TrainJobInput& input_;
  const JobSpec& spec_;
  const DecodedDataset& data_;
  const TrainerCallbacks& callbacks_;

  // Where the job runs (ResolveJobDevice), the layout of images and
  // convolution weights there, whether passes run under bfloat16
  // autocast, and the device settings made, for the manifest.
  c10::Device device_{c10::kCPU};
  c10::MemoryFormat memory_format_ = c10::MemoryFormat::Contiguous;
  bool bf16_ = false;
  std::vector<std::string> device_settings_;
  // Rows per training pass (JobSpec.micro_batch_size; 0: the whole batch),
  // halved on out-of-memory when the spec allows.
  int64_t micro_batch_ = 0;

  Hyper hyper_;
  tlserve::v1::InputSpec input_spec_;
  TrainingData tensors_;
  // DOMAIN_ADAPT: the target's images (training labels unread) and the
  // domain classifier, a submodule of classifier_ so that checkpoints hold
  // it; the exported model leaves it out. adapts_ is false for a weight of
  // 0: the source-only baseline never shows the backbone a target image.
  TrainingData target_;
  torch::jit::Module domain_head_;
  bool adapts_ = false;
  double domain_weight_ = 1.0;
  double domain_gamma_ = 10.0;
  torch::jit::Module classifier_;
  torch::jit::Module backbone_;
  // The classes head; for MULTITASK the MultiHead holding it and the task
  // heads, whose logits Forward returns after the classes' ones.
  torch::jit::Module head_;
  // MULTITASK: where each task's logits sit in Forward's output, its loss
  // weight, and its class of each model class (a [K] long tensor that
  // turns a batch's labels into the task's).
  struct TaskHead {
    std::string name;
    int64_t offset = 0;
    int64_t width = 0;
    double weight = 1.0;
    at::Tensor of_class;
  };
  std::vector<TaskHead> tasks_;
  double classes_weight_ = 1.0;
  FreezePlan plan_;
  std::vector<std::string> blocks_;
  bool use_feature_cache_ = false;
  double feature_cache_seconds_ = 0;
  // Activation cache: the backbone cut at its first trainable block
  // (worker/backbone_split.h); the classifier's tl_until runs the frozen
  // part once per sample, tl_from the rest and the head every step.
  bool use_activation_cache_ = false;
  BackboneCut cut_;
  bool feature_cache_on_disk_ = false;
  // Every trainable parameter group's tensors, for gradient clipping.
  std::vector<at::Tensor> all_params_;
  // What the trained module consumes per split: uint8 images, or cached
  // features when the backbone is frozen.
  at::Tensor train_inputs_;
  at::Tensor val_inputs_;
  at::Tensor test_inputs_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::vector<double> base_lrs_;
  // Names ("backbone.<name>") of the backbone's parameters, and of those
  // trainable in some epoch so far.
  std::set<std::string> backbone_params_;
  std::set<std::string> ever_trained_;
  std::optional<EarlyStopper> stopper_;
  std::vector<std::pair<std::string, at::Tensor>> best_weights_;
  TrainingCursor resume_cursor_;
  double checkpoint_every_seconds_ = kDefaultCheckpointSeconds;
  Clock::time_point last_checkpoint_;
  std::string previous_checkpoint_;
  // Whether an optimizer step came after the latest checkpoint (or the one
  // resumed from): a hand-back then stores a new one.
  bool trained_since_checkpoint_ = false;
  double loader_wait_seconds_ = 0;
  int64_t steps_per_epoch_ = 0;
  int64_t feature_dim_ = 0;
  // FINE_TUNE: WeightsDigest of the backbone as loaded (after a RANDOM
  // re-init), before any training or checkpoint resume; Export compares.
  std::string initial_backbone_digest_;
  // For the ETA: time and batches of the epochs run in this attempt.
  double train_seconds_ = 0;
  int64_t batches_done_ = 0;
};

absl::Status Trainer::PrepareTarget() {
  if (input_.target_data == nullptr) {
    return absl::InvalidArgumentError(
        "DOMAIN_ADAPT needs the target dataset; none came with the job");
  }
  const v1::DomainAdaptSpec& da = spec_.domain_adapt();
  domain_weight_ = da.has_domain_loss_weight() ? da.domain_loss_weight() : 1.0;
  if (!(domain_weight_ >= 0 && domain_weight_ <= 100)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "domain_adapt.domain_loss_weight ", domain_weight_,
        " is outside [0, 100]"));
  }
  domain_gamma_ = da.gamma() > 0 ? da.gamma() : 10.0;
  adapts_ = domain_weight_ > 0;
  // Every target training image takes part, unlabelled; the test split
  // (the source's classes, remapped alike) measures the result.
  v1::DataSpec target_spec = spec_.data();
  target_spec.set_dataset_id(da.target_dataset_id());
  target_spec.set_samples_per_class(0);
  target_spec.set_validation_fraction(0);
  ASSIGN_OR_RETURN(target_, PrepareTrainingData(*input_.target_data, target_spec,
                                                input_spec_, spec_.seed() + 1));
  if (target_.class_names != tensors_.class_names) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the target dataset's classes (", absl::StrJoin(target_.class_names, ", "),
        ") are not the source's (", absl::StrJoin(tensors_.class_names, ", "),
        ")"));
  }
  if (target_.test_is_val || target_.test.size() == 0) {
    return absl::InvalidArgumentError(
        "the target dataset has no test split to measure the adaptation on");
  }
  Log(absl::StrFormat(
      "domain adaptation: %d unlabelled target images, %d labelled target "
      "test images; %s",
      target_.train.size(), target_.test.size(),
      adapts_ ? absl::StrFormat("domain loss weight %g, gamma %g",
                                domain_weight_, domain_gamma_)
              : std::string("weight 0: source only (the baseline)")));
  return absl::OkStatus();
}

absl::Status Trainer::BuildModel() {
  const uint64_t seed = spec_.seed();
  const int64_t num_classes = static_cast<int64_t>(tensors_.class_names.size());
  if (ReusesBackbone(spec_.kind())) {
    ASSIGN_OR_RETURN(
        backbone_, TorchGuardOr<torch::jit::Module>(
                       absl::StrCat("loading backbone ", input_.backbone_path),
                       [&]() -> absl::StatusOr<torch::jit::Module> {
                         return torch::jit::load(input_.backbone_path);
                       },
                       absl::StatusCode::kInvalidArgument));
    if (spec_.backbone_init() == v1::RANDOM) {
      RETURN_IF_ERROR(ReinitializeParameters(backbone_, seed));
    }
    ASSIGN_OR_RETURN(initial_backbone_digest_, WeightsDigest(backbone_));
    blocks_ = Blocks(backbone_);
    for (const auto& step : spec_.freeze().gradual_unfreeze()) {
      if (step.n_blocks() > static_cast<int>(blocks_.size())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "freeze.gradual_unfreeze: n_blocks ", step.n_blocks(),
            " at epoch ", step.epoch(), " exceeds the backbone's ",
            blocks_.size(), " blocks (", absl::StrJoin(blocks_, ", "), ")"));
      }
    }
    RETURN_IF_ERROR(ApplyFreezeAt(1));
    ASSIGN_OR_RETURN(feature_dim_, FeatureDim(backbone_, input_spec_));
    std::vector<int64_t> hidden(spec_.head().hidden_sizes().begin(),
                                spec_.head().hidden_sizes().end());
    ASSIGN_OR_RETURN(head_,
                     MakeHead(feature_dim_, hidden, spec_.head().dropout(),
                              num_classes, seed + 1));
    if (spec_.kind() == v1::MULTITASK) RETURN_IF_ERROR(BuildTaskHeads(hidden));
  } else {
    const int64_t width = spec_.pretrain().base_width() > 0
                              ? spec_.pretrain().base_width()
                              : kDefaultBaseWidth;
    ASSIGN_OR_RETURN(backbone_,
                     MakeCompactResNet(input_spec_.channels(), width, seed));
    tlserve::v1::FreezePolicy full;
    full.set_mode(tlserve::v1::FreezePolicy::FULL);
    ASSIGN_OR_RETURN(plan_, ApplyFreezePolicy(backbone_, full));
    blocks_ = Blocks(backbone_);
    ASSIGN_OR_RETURN(feature_dim_, FeatureDim(backbone_, input_spec_));
    ASSIGN_OR_RETURN(head_,
                     MakeHead(feature_dim_, {}, 0.0, num_classes, seed + 1));
  }
  ASSIGN_OR_RETURN(classifier_, MakeClassifier(backbone_, head_, input_spec_));
  if (adapts_) {
    const int64_t hidden = spec_.domain_adapt().domain_hidden() > 0
                               ? spec_.domain_adapt().domain_hidden()
                               : 256;
    ASSIGN_OR_RETURN(domain_head_,
                     MakeHead(feature_dim_, {hidden}, 0.0, 2, seed + 2));
    classifier_.register_module("domain_head", domain_head_);
  }
  // Features can be computed once when no epoch trains the backbone, its
  // BatchNorm statistics stay fixed and inputs are not augmented.
  const auto& freeze = spec_.freeze();
  // A few-shot job is nothing but those features (the server refuses any
  // spec that would change them), whatever the cache setting.
  use_feature_cache_ =
      (spec_.kind() == v1::FEW_SHOT && plan_.backbone_frozen) ||
      ((spec_.kind() == v1::FINE_TUNE || spec_.kind() == v1::MULTITASK) &&
       plan_.backbone_frozen &&
       BackboneFrozenThroughout(freeze) &&
       freeze.batchnorm_stats() != v1::FreezePolicy::UPDATE_ALL &&
       !spec_.augment().random_resized_crop() &&
       !spec_.augment().horizontal_flip() &&
       spec_.feature_cache().mode() != v1::FeatureCacheSpec::OFF);
  if (spec_.kind() == v1::FEW_SHOT && !use_feature_cache_) {
    return absl::InvalidArgumentError(
        "FEW_SHOT needs a frozen backbone (freeze.mode FROZEN)");
  }
  if (use_feature_cache_) {
    const int64_t limit = spec_.feature_cache().memory_limit_bytes() > 0
                              ? spec_.feature_cache().memory_limit_bytes()
                              : (int64_t{1} << 30);
    const int64_t samples =
        tensors_.train.size() + tensors_.val.size() + tensors_.test.size();
    const int64_t bytes = samples * feature_dim_ * 4;
    feature_cache_on_disk_ = bytes > limit;
    if (feature_cache_on_disk_) {
      Log(absl::StrFormat(
          "feature cache on disk: %d samples x %d features need %d bytes, "
          "above the %d-byte memory limit",
          samples, feature_dim_, bytes, limit));
    }
  }
  return PlanActivationCache();
}

absl::Status Trainer::BuildTaskHeads(const std::vector<int64_t>& hidden) {
  const v1::MultitaskSpec& mt = spec_.multitask();
  // The server checked the spec against the dataset; a worker may still be
  // handed one that does not fit the dataset it decoded.
  RETURN_IF_ERROR(ValidateMultitask(spec_, static_cast<int>(data_.class_names.size())));
  const std::vector<std::vector<int>> of_class = TaskClassesOfModelClasses(
      spec_, static_cast<int>(data_.class_names.size()));
  classes_weight_ = ClassesLossWeight(mt);
  int64_t offset = static_cast<int64_t>(tensors_.class_names.size());
  std::vector<std::pair<std::string, torch::jit::Module>> heads;
  std::vector<std::string> shown;
  for (int t = 0; t < mt.tasks_size(); ++t) {
    const v1::TaskSpec& task = mt.tasks(t);
    TaskHead head;
    head.name = task.name();
    head.offset = offset;
    head.width = task.class_names_size();
    head.weight = TaskLossWeight(task);
    head.of_class = at::tensor(std::vector<int64_t>(of_class[t].begin(),
                                                    of_class[t].end()),
                               at::kLong);
    ASSIGN_OR_RETURN(torch::jit::Module module,
                     MakeHead(feature_dim_, hidden, spec_.head().dropout(),
                              head.width, spec_.seed() + 10 + t));
    heads.emplace_back(head.name, module);
    shown.push_back(absl::StrFormat("%s (%d classes, weight %g)", head.name,
                                    head.width, head.weight));
    offset += head.width;
    tasks_.push_back(std::move(head));
  }
  ASSIGN_OR_RETURN(head_, MakeMultiHead(head_, heads));
  Log(absl::StrFormat("multitask: heads classes (%d classes, weight %g), %s",
                      tensors_.class_names.size(), classes_weight_,
                      absl::StrJoin(shown, ", ")));
  return absl::OkStatus();
}

// Class k scores 2 f.c_k - |c_k|^2, c_k the mean feature of its labelled
// images. That differs from -|f - c_k|^2 only by |f|^2, the same for every
// class, so it ranks classes, and softmaxes them, as the squared distance
// to each class mean does (the prototypical-network rule), while the model
// stays a plain linear head that exports and serves like any other.
absl::Status Trainer::SetPrototypeHead() {
  at::NoGradGuard no_grad;
  const int64_t k = static_cast<int64_t>(tensors_.class_names.size());
  const at::Tensor labels = tensors_.train.labels.to(at::kLong);
  const at::Tensor features = train_inputs_.to(at::kFloat);
  at::Tensor counts = at::bincount(labels, c10::nullopt, k);
  for (int64_t c = 0; c < k; ++c) {
    if (counts[c].item<int64_t>() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FEW_SHOT: class '", tensors_.class_names[c],
          "' has no labelled image left in the training split; lower "
          "data.validation_fraction or raise data.samples_per_class"));
    }
  }
  at::Tensor means = at::zeros({k, feature_dim_}, features.options());
  means.index_add_(0, labels, features);
  means.div_(counts.to(at::kFloat).unsqueeze(1));
  torch::jit::Module out = head_.attr("out").toModule();
  out.attr("weight").toTensor().copy_(means * 2);
  out.attr("bias").toTensor().copy_(-(means * means).sum(1));
  Log(absl::StrFormat(
      "few-shot: prototypes of %d classes from %d labelled images (%s per "
      "class), no training",
      k, labels.size(0),
      absl::StrJoin(std::vector<int64_t>(counts.data_ptr<int64_t>(),
                                         counts.data_ptr<int64_t>() + k),
                    "/")));
  return absl::OkStatus();
}

absl::Status Trainer::PlanActivationCache() {
  // The same conditions as the feature cache, except that the last blocks
  // train: the frozen first part must be the same function every epoch.
  const auto& freeze = spec_.freeze();
  if (use_feature_cache_ ||
      (spec_.kind() != v1::FINE_TUNE && spec_.kind() != v1::MULTITASK) ||
      plan_.backbone_frozen || plan_.frozen_blocks.empty() ||
      freeze.gradual_unfreeze_size() > 0 ||
      freeze.batchnorm_stats() == v1::FreezePolicy::UPDATE_ALL ||
      spec_.augment().random_resized_crop() ||
      spec_.augment().horizontal_flip() ||
      spec_.feature_cache().mode() == v1::FeatureCacheSpec::OFF ||
      tensors_.train.size() == 0) {
    return absl::OkStatus();
  }
  auto skip = [this](const std::string& why) {
    Log(absl::StrCat("activation cache: not used, ", why));
    return absl::OkStatus();
  };
  // Every trainable parameter must sit in a trainable block, so that the
  // part before the cut holds none.
  for (const auto& p : backbone_.named_parameters(/*recurse=*/true)) {
    if (!p.value.requires_grad()) continue;
    bool in_block = false;
    for (const std::string& b : plan_.trainable_blocks) {
      in_block = in_block || p.name == b || absl::StartsWith(p.name, b + ".");
    }
    if (!in_block) {
      return skip(absl::StrCat("parameter '", p.name,
                               "' trains outside the trainable blocks"));
    }
  }
  absl::StatusOr<BackboneCut> cut =
      SplitAtFirstTrainableBlock(backbone_, plan_.trainable_blocks);
  if (!cut.ok()) return skip(std::string(cut.status().message()));
  cut_ = *cut;
  RETURN_IF_ERROR(TorchGuard("adding the cut to the classifier", [&] {
    classifier_.define(absl::StrCat(
        "def tl_until(self, x):\n"
        "    return self.backbone.", cut_.frozen_part,
        "((x - self.mean) / self.std)\n"
        "def tl_from(self, a):\n"
        "    return self.head.forward(self.backbone.", cut_.trainable_part,
        "(a))\n"));
    return absl::OkStatus();
  }));

  // Check on a few real samples that the cached activation is what
  // training would compute: the same in training mode as in eval mode,
  // twice in a row (no dropout or batch statistics before the cut), with
  // no buffer moved, and that both halves give the model's output.
  at::NoGradGuard no_grad;
  const at::Tensor sample = ToModelInput(
      tensors_.train.images.slice(0, 0, std::min<int64_t>(4, tensors_.train.size())));
  std::vector<at::Tensor> buffers;
  for (const auto& b : classifier_.named_buffers(/*recurse=*/true)) {
    buffers.push_back(b.value.clone());
  }
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  at::Tensor rng_state;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    rng_state = gen.get_state();
  }
  bool holds = false;
  int64_t per_sample = 0;
  RETURN_IF_ERROR(TorchGuard("checking the activation cache", [&] {
    RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, false));
    const at::Tensor eval_cut = classifier_.run_method("tl_until", sample).toTensor();
    const at::Tensor eval_out = classifier_.forward({sample}).toTensor();
    const at::Tensor joined = classifier_.run_method("tl_from", eval_cut).toTensor();
    RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, true));
    ApplyBatchNormMode(backbone_, spec_.freeze().batchnorm_stats());
    const at::Tensor train_a = classifier_.run_method("tl_until", sample).toTensor();
    const at::Tensor train_b = classifier_.run_method("tl_until", sample).toTensor();
    RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, false));
    holds = torch::equal(eval_out, joined) && torch::equal(train_a, eval_cut) &&
            torch::equal(train_b, eval_cut);
    size_t i = 0;
    for (const auto& b : classifier_.named_buffers(/*recurse=*/true)) {
      holds = holds && torch::equal(b.value, buffers[i]);
      b.value.copy_(buffers[i++]);
    }
    per_sample = eval_cut.numel() / std::max<int64_t>(1, eval_cut.size(0));
    return absl::OkStatus();
  }));
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng_state);
  }
  if (!holds) {
    return skip(absl::StrCat("the part before '", cut_.block,
                             "' does not give the same output every time"));
  }
  const int64_t limit = spec_.feature_cache().memory_limit_bytes() > 0
                            ? spec_.feature_cache().memory_limit_bytes()
                            : (int64_t{1} << 30);
  const int64_t samples = tensors_.train.size() + tensors_.val.size() +
                          (tensors_.test_is_val ? 0 : tensors_.test.size());
  const int64_t bytes = samples * per_sample * 4;
  if (bytes > limit) {
    return skip(absl::StrFormat(
        "%d samples x %d activations at '%s' need %d bytes, above the "
        "%d-byte memory limit",
        samples, per_sample, cut_.block, bytes, limit));
  }
  use_activation_cache_ = true;
  return absl::OkStatus();
}

absl::Status Trainer::ApplyFreezeAt(int epoch) {
  const v1::FreezePolicy policy = PolicyAtEpoch(spec_.freeze(), epoch);
  const std::vector<std::string> before = plan_.trainable_blocks;
  ASSIGN_OR_RETURN(plan_, ApplyFreezePolicy(backbone_, policy));
  RETURN_IF_ERROR(ApplyParameterPatterns(backbone_, policy, &plan_));
  for (const auto& p : backbone_.named_parameters(/*recurse=*/true)) {
    backbone_params_.insert("backbone." + p.name);
    if (p.value.requires_grad()) ever_trained_.insert("backbone." + p.name);
  }
  if (epoch > 1 && plan_.trainable_blocks != before) {
    Log(absl::StrFormat("epoch %d: gradual unfreezing, training blocks %s",
                        epoch,
                        plan_.trainable_blocks.empty()
                            ? "none"
                            : absl::StrJoin(plan_.trainable_blocks, ", ")));
  }
  return absl::OkStatus();
}

bool Trainer::Unchanged(const std::string& name) const {
  // Buffers (BatchNorm statistics) are small and may move even in frozen
  // blocks, so only parameters are ever left out.
  return backbone_params_.count(name) > 0 && ever_trained_.count(name) == 0;
}

std::vector<std::pair<std::string, at::Tensor>> Trainer::SnapshotWeights() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : classifier_.named_parameters(/*recurse=*/true)) {
    if (Unchanged(p.name)) continue;
    out.emplace_back(p.name, p.value.detach().clone());
  }
  for (const auto& b : classifier_.named_buffers(/*recurse=*/true)) {
    out.emplace_back(b.name, b.value.detach().clone());
  }
  return out;
}

absl::Status Trainer::RestoreWeights(
    const std::vector<std::pair<std::string, at::Tensor>>& weights) {
  std::map<std::string, at::Tensor> by_name(weights.begin(), weights.end());
  at::NoGradGuard no_grad;
  auto copy = [&](const std::string& name, at::Tensor target) -> absl::Status {
    auto it = by_name.find(name);
    if (it == by_name.end() && Unchanged(name)) return absl::OkStatus();
    if (it == by_name.end() || !it->second.sizes().equals(target.sizes())) {
      return absl::InternalError(
          absl::StrCat("best weights do not fit the model at '", name, "'"));
    }
    target.copy_(it->second);
    return absl::OkStatus();
  };
  for (const auto& p : classifier_.named_parameters(/*recurse=*/true)) {
    RETURN_IF_ERROR(copy(p.name, p.value));
  }
  for (const auto& b : classifier_.named_buffers(/*recurse=*/true)) {
    RETURN_IF_ERROR(copy(b.name, b.value));
  }
  return absl::OkStatus();
}

absl::Status Trainer::BuildOptimizer() {
  std::vector<at::Tensor> head_params;
  for (at::Tensor p : head_.parameters()) {
    p.requires_grad_(true);
    head_params.push_back(p);
  }
  if (adapts_) {
    for (at::Tensor p : domain_head_.parameters()) {
      p.requires_grad_(true);
      head_params.push_back(p);
    }
  }
  // One group per backbone block, so each can have its own rate. Frozen
  // parameters never get a gradient, so the optimizer leaves them alone
  // until gradual unfreezing turns them on.
  std::vector<BackboneGroup> backbone_groups;
  const bool backbone_trains_some_epoch =
      !plan_.backbone_frozen ||
      (ReusesBackbone(spec_.kind()) &&
       !BackboneFrozenThroughout(spec_.freeze()));
  if (!use_feature_cache_ && backbone_trains_some_epoch) {
    ASSIGN_OR_RETURN(backbone_groups,
                     BackboneGroups(backbone_, blocks_, spec_.freeze(),
                                    hyper_.backbone_lr_scale));
  }
  base_lrs_ = {hyper_.lr};
  for (const BackboneGroup& g : backbone_groups) {
    base_lrs_.push_back(hyper_.lr * g.lr_scale);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto options =
      [&](double lr) -> std::unique_ptr<torch::optim::OptimizerOptions> {
    if (hyper_.optimizer == OptimizerSpec::SGD) {
      return std::make_unique<torch::optim::SGDOptions>(
          torch::optim::SGDOptions(lr)
              .momentum(hyper_.momentum)
              .weight_decay(hyper_.weight_decay));
    }
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(lr).weight_decay(hyper_.weight_decay));
  };
  all_params_ = head_params;
  groups.emplace_back(head_params, options(base_lrs_[0]));
  for (size_t g = 0; g < backbone_groups.size(); ++g) {
    all_params_.insert(all_params_.end(), backbone_groups[g].params.begin(),
                       backbone_groups[g].params.end());
    groups.emplace_back(backbone_groups[g].params, options(base_lrs_[g + 1]));
  }
  if (hyper_.optimizer == OptimizerSpec::SGD) {
    optimizer_ = std::make_unique<torch::optim::SGD>(
        std::move(groups), torch::optim::SGDOptions(hyper_.lr));
  } else {
    optimizer_ = std::make_unique<FusedAdamW>(
        std::move(groups), torch::optim::AdamWOptions(hyper_.lr));
  }
  int64_t trainable = 0;
  for (const auto& group : optimizer_->param_groups()) {
    for (const auto& p : group.params()) {
      if (p.requires_grad()) trainable += p.numel();
    }
  }
  Log(absl::StrFormat("trainable parameters: %d (blocks: %s)", trainable,
                      plan_.trainable_blocks.empty()
                          ? "head only"
                          : absl::StrJoin(plan_.trainable_blocks, ", ")));
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> Trainer::Features(const at::Tensor& images,
                                             bool* cancelled,
                                             const std::string& method,
                                             bool optimize,
                                             const std::string& spill_path) {
  // The backbone runs once per sample here, and never trains: an inference
  // copy (weights frozen into the graph, BatchNorm folded into the
  // convolutions, as torch.jit.optimize_for_inference) ran resnet18 1.5x
  // faster on the CI machine. Its features differ from the plain module's
  // only by float rounding, and the same seed always gives the same cache.
  std::optional<torch::jit::Module> fast;
  torch::jit::GraphOptimizerEnabledGuard optimizer_enabled(true);
  // On the CPU, optimize_for_inference rewrites convolutions to MKL-DNN
  // ones that bfloat16 autocast does not cover.
  if (optimize && !(bf16_ && device_.is_cpu())) {
    try {
      torch::jit::Module frozen = torch::jit::freeze(
          classifier_, std::vector<std::string>{method});
      fast = torch::jit::optimize_for_inference(frozen, {method});
    } catch (const std::exception& e) {
      Log(absl::StrCat("feature cache: the backbone could not be frozen for "
                       "inference, running it as is (",
                       std::string(e.what()).substr(0, 200), ")"));
    }
  }
  torch::jit::Method features =
      fast ? fast->get_method(method) : classifier_.get_method(method);
  std::vector<at::Tensor> parts;
  std::ofstream spill;
  if (!spill_path.empty()) {
    spill.open(spill_path, std::ios::binary | std::ios::trunc);
    if (!spill) {
      return absl::InternalError(
          absl::StrCat("cannot write the feature cache file ", spill_path));
    }
  }
  for (int64_t start = 0; start < images.size(0); start += kEvalBatchSize) {
    if (ShouldStop()) {
      *cancelled = true;
      return at::Tensor();
    }
    const int64_t end = std::min(images.size(0), start + kEvalBatchSize);
    at::Tensor part;
    {
      AutocastScope autocast(device_.type(), bf16_);
      part = features({ToModelInput(OnDevice(images.slice(0, start, end)))})
                 .toTensor();
    }
    // The cache lives in host memory (or on disk), in float32 and the
    // default layout, whatever the device computed it in.
    part = part.to(at::kCPU, at::kFloat).contiguous();
    if (spill_path.empty()) {
      parts.push_back(part);
    } else {
      part = part.contiguous();
      spill.write(reinterpret_cast<const char*>(part.data_ptr<float>()),
                  part.numel() * sizeof(float));
    }
  }
  if (spill_path.empty()) {
    if (parts.empty()) {
      return use_feature_cache_ ? at::empty({0, feature_dim_}) : at::empty({0});
    }
    return at::cat(parts);
  }
  spill.close();
  if (!spill) {
    return absl::InternalError(
        absl::StrCat("writing the feature cache file ", spill_path, " failed"));
  }
  return MapFeatureFile(spill_path, images.size(0), feature_dim_);
}

absl::StatusOr<bool> Trainer::CacheFeatures() {
  const Clock::time_point start = Clock::now();
  at::NoGradGuard no_grad;
  RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, false));
  bool cancelled = false;
  const std::string method = use_feature_cache_ ? "features" : "tl_until";
  const bool optimize = use_feature_cache_;
  auto spill = [&](const char* split) -> std::string {
    if (!feature_cache_on_disk_) return "";
    return (std::filesystem::path(input_.work_dir) /
            absl::StrCat("features_", split, ".f32"))
        .string();
  };
  ASSIGN_OR_RETURN(train_inputs_, Features(tensors_.train.images, &cancelled,
                                           method, optimize, spill("train")));
  if (cancelled) return false;
  ASSIGN_OR_RETURN(val_inputs_, Features(tensors_.val.images, &cancelled,
                                         method, optimize, spill("val")));
  if (cancelled) return false;
  if (tensors_.test_is_val) {
    test_inputs_ = val_inputs_;
  } else {
    ASSIGN_OR_RETURN(test_inputs_,
                     Features(tensors_.test.images, &cancelled, method,
                              optimize, spill("test")));
    if (cancelled) return false;
  }
  const int64_t n = train_inputs_.size(0) + val_inputs_.size(0) +
                    (tensors_.test_is_val ? 0 : test_inputs_.size(0));
  if (use_feature_cache_) {
    Log(absl::StrFormat("feature cache: %d samples, %.2f s", n,
                        SecondsSince(start)));
  } else {
    Log(absl::StrFormat(
        "activation cache: the backbone up to '%s' ran once over %d samples "
        "(%.2f s); epochs train from there",
        cut_.block, n, SecondsSince(start)));
  }
  return true;
}

at::Tensor Trainer::Forward(const at::Tensor& inputs) {
  if (use_feature_cache_) return head_.forward({inputs}).toTensor();
  if (use_activation_cache_) {
    return classifier_.run_method("tl_from", inputs).toTensor();
  }
  return classifier_.forward({inputs}).toTensor();
}

EvalResult Trainer::Evaluate(const at::Tensor& inputs,
                             const at::Tensor& labels) {
  at::NoGradGuard no_grad;
  const int64_t k = static_cast<int64_t>(tensors_.class_names.size());
  EvalResult result;
  result.count = inputs.size(0);
  // Flattened k x k counts: index true * k + predicted.
  const at::TensorOptions counts_options =
      at::TensorOptions(at::kLong).device(device_);
  at::Tensor confusion = at::zeros({k * k}, counts_options);
  const int64_t top = std::min<int64_t>(5, k);
  double loss_sum = 0;
  int64_t top5_hits = 0;
  std::vector<double> task_loss(tasks_.size(), 0.0);
  std::vector<at::Tensor> task_hits;
  std::vector<at::Tensor> task_support;
  for (const TaskHead& task : tasks_) {
    task_hits.push_back(at::zeros({task.width}, counts_options));
    task_support.push_back(at::zeros({task.width}, counts_options));
  }
  for (int64_t start = 0; start < result.count; start += kEvalBatchSize) {
    const int64_t end = std::min(result.count, start + kEvalBatchSize);
    at::Tensor y = OnDevice(labels.slice(0, start, end)).to(at::kLong);
    // Images travel as bytes and become floats on the device.
    at::Tensor x = OnDevice(inputs.slice(0, start, end));
    if (!InputsCached()) x = ToModelInput(x);
    at::Tensor outputs;
    {
      AutocastScope autocast(device_.type(), bf16_);
      outputs = Forward(x).to(at::kFloat);
    }
    at::Tensor logits = ClassLogits(outputs);
    for (size_t t = 0; t < tasks_.size(); ++t) {
      const TaskHead& task = tasks_[t];
      const at::Tensor tl = outputs.slice(1, task.offset, task.offset + task.width);
      const at::Tensor ty = task.of_class.index_select(0, y);
      task_loss[t] += torch::nn::functional::cross_entropy(
                          tl, ty,
                          torch::nn::functional::CrossEntropyFuncOptions()
                              .reduction(torch::kSum))
                          .item<double>();
      task_hits[t].index_add_(0, ty, tl.argmax(1).eq(ty).to(at::kLong));
      task_support[t].index_add_(0, ty, at::ones_like(ty));
    }
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, y,
                    torch::nn::functional::CrossEntropyFuncOptions().reduction(
                        torch::kSum))
                    .item<double>();
    confusion.index_add_(0, y * k + logits.argmax(1), at::ones_like(y));
    top5_hits += std::get<1>(logits.topk(top, 1))
                     .eq(y.unsqueeze(1))
                     .any(1)
                     .sum()
                     .item<int64_t>();
  }
  if (result.count > 0) result.loss = loss_sum / result.count;
  for (size_t t = 0; t < tasks_.size(); ++t) {
    EvalResult::Task task;
    if (result.count > 0) {
      task.loss = task_loss[t] / result.count;
      task.accuracy = static_cast<double>(task_hits[t].sum().item<int64_t>()) /
                      static_cast<double>(result.count);
    }
    for (int64_t c = 0; c < tasks_[t].width; ++c) {
      const int64_t support = task_support[t][c].item<int64_t>();
      task.per_class.push_back(
          support > 0 ? static_cast<float>(task_hits[t][c].item<int64_t>()) /
                            static_cast<float>(support)
                      : 0.0f);
    }
    result.tasks.push_back(std::move(task));
  }
  const at::Tensor counts = confusion.cpu().contiguous();
  absl::StatusOr<ClassificationMetrics> metrics =
      ClassificationMetrics::FromConfusion(
          k,
          std::vector<int64_t>(counts.data_ptr<int64_t>(),
                               counts.data_ptr<int64_t>() + k * k),
          top5_hits);
  if (!metrics.ok()) {
    // Labels are checked in [0, k) before training, so this is a bug.
    Log(absl::StrCat("evaluation metrics: ", metrics.status().ToString()));
    return result;
  }
  result.accuracy = metrics->Accuracy();
  result.top5_accuracy = metrics->Top5Accuracy();
  result.class_scores = metrics->PerClass();
  for (const ClassScores& s : result.class_scores) {
    result.per_class.push_back(static_cast<float>(s.recall));
  }
  result.confusion = metrics->confusion();
  return result;
}

absl::Status Trainer::TrainPasses(const at::Tensor& x, const at::Tensor& y,
                                  const at::Tensor& target, int64_t rows,
                                  int64_t step, BatchSums* sums) {
  const int64_t b = y.size(0);
  const int64_t bt = adapts_ ? target.size(0) : 0;
  const at::TensorOptions on_device = at::TensorOptions().device(device_);
  auto zero = [&](at::ScalarType type) {
    return at::zeros({}, on_device.dtype(type));
  };
  sums->loss = zero(at::kDouble);
  sums->total = zero(at::kDouble);
  sums->correct = zero(at::kLong);
  sums->domain_loss = zero(at::kDouble);
  sums->domain_correct = zero(at::kLong);
  for (size_t t = 0; t < tasks_.size(); ++t) {
    sums->task_loss.push_back(zero(at::kDouble));
    sums->task_correct.push_back(zero(at::kLong));
  }
  if (adapts_) {
    const double progress =
        static_cast<double>(step + 1) /
        static_cast<double>(std::max<int64_t>(1, hyper_.epochs * steps_per_epoch_));
    sums->lambda = 2.0 / (1.0 + std::exp(-domain_gamma_ * progress)) - 1.0;
  }
  const auto smoothed = torch::nn::functional::CrossEntropyFuncOptions()
                            .label_smoothing(hyper_.label_smoothing);
  for (int64_t begin = 0; begin < b; begin += rows) {
    const int64_t end = std::min(b, begin + rows);
    const int64_t n = end - begin;
    const bool whole = n == b;
    if (callbacks_.before_pass) callbacks_.before_pass(n);
    const at::Tensor px = whole ? x : x.slice(0, begin, end);
    const at::Tensor py = whole ? y : y.slice(0, begin, end);
    at::Tensor total;
    {
      AutocastScope autocast(device_.type(), bf16_);
      at::Tensor outputs;
      at::Tensor domain_loss;
      double domain_share = 1.0;
      if (adapts_) {
        // The target rows in proportion, so every pass sees both domains.
        const int64_t tb = begin * bt / b;
        const int64_t te = end * bt / b;
        const int64_t nt = te - tb;
        // One pass over both domains: BatchNorm sees them together.
        at::Tensor features =
            classifier_
                .run_method("features",
                            at::cat({px, whole ? target : target.slice(0, tb, te)}))
                .toTensor();
        outputs = head_.forward({features.slice(0, 0, n)}).toTensor().to(at::kFloat);
        at::Tensor domain_logits =
            domain_head_
                .forward({GradientReversal::apply(features, sums->lambda)})
                .toTensor()
                .to(at::kFloat);
        at::Tensor domains = at::cat({at::zeros({n}, on_device.dtype(at::kLong)),
                                      at::ones({nt}, on_device.dtype(at::kLong))});
        domain_loss = torch::nn::functional::cross_entropy(domain_logits, domains);
        sums->domain_loss += domain_loss.detach().to(at::kDouble) * (n + nt);
        sums->domain_correct += domain_logits.argmax(1).eq(domains).sum();
        sums->domain_seen += n + nt;
        if (!whole) {
          domain_share = static_cast<double>(n + nt) / static_cast<double>(b + bt);
        }
      } else {
        outputs = Forward(px).to(at::kFloat);
      }
      const at::Tensor logits = ClassLogits(outputs);
      const at::Tensor loss =
          torch::nn::functional::cross_entropy(logits, py, smoothed);
      // The class loss is what the metrics report; the sum is what trains.
      total = tasks_.empty() ? loss : loss * classes_weight_;
      for (size_t t = 0; t < tasks_.size(); ++t) {
        const TaskHead& task = tasks_[t];
        const at::Tensor tl =
            outputs.slice(1, task.offset, task.offset + task.width);
        const at::Tensor ty = task.of_class.index_select(0, py);
        const at::Tensor task_loss =
            torch::nn::functional::cross_entropy(tl, ty, smoothed);
        total = total + task_loss * task.weight;
        sums->task_loss[t] += task_loss.detach().to(at::kDouble) * n;
        sums->task_correct[t] += tl.argmax(1).eq(ty).sum();
      }
      // Each pass's mean loss weighs by its share of the batch: the
      // gradients then add up to those of the batch's mean loss.
      if (!whole) total = total * (static_cast<double>(n) / static_cast<double>(b));
      if (adapts_) total = total + domain_loss * (domain_weight_ * domain_share);
      sums->loss += loss.detach().to(at::kDouble) * n;
      sums->total += total.detach().to(at::kDouble);
      sums->correct += logits.argmax(1).eq(py).sum();
    }
    total.backward();
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Trainer::TrainEpoch(int epoch, int64_t first_batch,
                                         EpochMetrics* metrics) {
  const Clock::time_point start = Clock::now();
  if (spec_.freeze().gradual_unfreeze_size() > 0) {
    RETURN_IF_ERROR(ApplyFreezeAt(epoch));
  }
  RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, true));
  if (!use_feature_cache_) {
    ApplyBatchNormMode(backbone_, spec_.freeze().batchnorm_stats());
  }
  const int64_t n = train_inputs_.size(0);
  BatchLoaderOptions load;
  load.inputs = train_inputs_;
  load.labels = tensors_.train.labels;
  load.order = EpochOrder(n, spec_.seed(), epoch);
  load.batch_size = hyper_.batch_size;
  load.num_batches = steps_per_epoch_;
  load.first_batch = first_batch;
  load.augment = spec_.augment();
  load.seed = spec_.seed();
  load.epoch = epoch;
  // Cached features need no preparing; images are cropped, flipped and
  // converted on loader threads while the model trains.
  load.threads = InputsCached() ? 0 : std::max(1, spec_.loader_threads());
  load.pin_memory = device_.is_cuda();
  BatchLoader loader(std::move(load));
  // DOMAIN_ADAPT: as many target images per batch as source ones, in an
  // order drawn from (seed, epoch) alone, so a resumed epoch sees the same.
  std::unique_ptr<BatchLoader> target_loader;
  if (adapts_) {
    const int64_t nt = target_.train.size();
    BatchLoaderOptions t;
    t.inputs = target_.train.images;
    t.labels = at::zeros({nt}, at::kLong);
    const int64_t needed = steps_per_epoch_ * hyper_.batch_size;
    for (int round = 0; static_cast<int64_t>(t.order.size()) < needed; ++round) {
      std::vector<int64_t> more =
          EpochOrder(nt, spec_.seed() + 1, epoch * 1000 + round);
      t.order.insert(t.order.end(), more.begin(), more.end());
    }
    t.batch_size = hyper_.batch_size;
    t.num_batches = steps_per_epoch_;
    t.first_batch = first_batch;
    t.augment = spec_.augment();
    t.seed = spec_.seed() + 1;
    t.epoch = epoch;
    t.threads = std::max(1, spec_.loader_threads());
    t.pin_memory = device_.is_cuda();
    target_loader = std::make_unique<BatchLoader>(std::move(t));
  }
  double domain_loss_sum = 0;
  int64_t domain_correct = 0;
  int64_t domain_seen = 0;
  double lambda = 0;

  double loss_sum = 0;
  int64_t correct = 0;
  int64_t seen = 0;
  // MULTITASK: each task head's sums over the batches this attempt trained
  // (a resume inside the epoch restarts them; the classes head's come from
  // the checkpoint).
  std::vector<double> task_loss_sum(tasks_.size(), 0.0);
  std::vector<int64_t> task_correct(tasks_.size(), 0);
  int64_t task_seen = 0;
  if (first_batch > 0) {
    loss_sum = resume_cursor_.loss_sum;
    correct = resume_cursor_.correct;
    seen = resume_cursor_.seen;
  }
  for (int64_t batch = first_batch; batch < steps_per_epoch_; ++batch) {
    if (!Cancelled() && HandBackRequested()) {
      if (trained_since_checkpoint_) {
        TrainingCursor cursor;
        cursor.epoch = epoch - 1;
        cursor.batch = batch;
        cursor.loss_sum = loss_sum;
        cursor.correct = correct;
        cursor.seen = seen;
        RETURN_IF_ERROR(Checkpoint(cursor, nullptr));
      }
      return false;
    }
    if (ShouldStop()) return false;
    ASSIGN_OR_RETURN(LoadedBatch loaded, loader.Next());
    const at::Tensor x = OnDevice(loaded.inputs);
    const at::Tensor y = OnDevice(loaded.labels);

    const int64_t step =
        static_cast<int64_t>(epoch - 1) * steps_per_epoch_ + batch;
    const double factor = LrFactor(hyper_, step, steps_per_epoch_);
    for (size_t g = 0; g < optimizer_->param_groups().size(); ++g) {
      optimizer_->param_groups()[g].options().set_lr(base_lrs_[g] * factor);
    }
    const int64_t b = y.size(0);
    at::Tensor target;
    if (adapts_) {
      ASSIGN_OR_RETURN(LoadedBatch target_batch, target_loader->Next());
      target = OnDevice(target_batch.inputs);
    }
    // The batch's passes, then its one step. A pass out of memory, with
    // shrink_micro_batch_on_oom: the whole batch again, in passes half as
    // large; the step (and so the result) stays the batch's.
    BatchSums sums;
    for (;;) {
      // Zeroed, not dropped (set_to_none): dropped gradients went back to
      // the OS and every step paid page faults for fresh ones, about 20%
      // slower per step on the CPU.
      optimizer_->zero_grad();
      sums = BatchSums();
      const int64_t rows = micro_batch_ > 0 ? std::min(micro_batch_, b) : b;
      absl::Status passes = TorchGuard("a training pass", [&] {
        return TrainPasses(x, y, target, rows, step, &sums);
      });
      if (passes.ok()) break;
      if (!IsOutOfMemory(passes)) return passes;
      if (!spec_.shrink_micro_batch_on_oom() || rows <= 1) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "%s; at epoch %d, batch %d a pass of %d rows did not fit on %s%s",
            passes.message(), epoch, batch + 1, rows, device_.str(),
            rows <= 1 ? ""
                      : ": set spec.micro_batch_size lower, or "
                        "spec.shrink_micro_batch_on_oom to let the job find "
                        "a size that fits (same batch, same step)"));
      }
      ReleaseCachedDeviceMemory();
      micro_batch_ = (rows + 1) / 2;
      Log(absl::StrFormat(
          "out of memory in a pass of %d rows at epoch %d, batch %d: every "
          "batch of %d now runs as passes of %d rows, gradients accumulated "
          "into the same optimizer step",
          rows, epoch, batch + 1, hyper_.batch_size, micro_batch_));
    }
    const double batch_loss = sums.loss.item<double>();
    // A loss that is no longer finite poisons every weight it touches:
    // fail here, before the step, so no checkpoint ever holds it.
    if (!std::isfinite(batch_loss) || !std::isfinite(sums.total.item<double>())) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "training diverged: the loss is %f at epoch %d, batch %d of %d "
          "(learning rate %g); lower spec.optimizer.learning_rate or set "
          "spec.grad_clip_norm. No checkpoint was written from this batch on",
          batch_loss / b, epoch, batch + 1, steps_per_epoch_,
          base_lrs_.empty() ? 0.0 : base_lrs_[0] * factor));
    }
    if (hyper_.grad_clip_norm > 0) {
      torch::nn::utils::clip_grad_norm_(all_params_, hyper_.grad_clip_norm);
    }
    optimizer_->step();

    seen += b;
    loss_sum += batch_loss;
    correct += sums.correct.item<int64_t>();
    for (size_t t = 0; t < tasks_.size(); ++t) {
      task_loss_sum[t] += sums.task_loss[t].item<double>();
      task_correct[t] += sums.task_correct[t].item<int64_t>();
    }
    if (!tasks_.empty()) task_seen += b;
    if (adapts_) {
      domain_loss_sum += sums.domain_loss.item<double>();
      domain_correct += sums.domain_correct.item<int64_t>();
      domain_seen += sums.domain_seen;
      lambda = sums.lambda;
    }
    ++batches_done_;
    trained_since_checkpoint_ = true;
    if (callbacks_.on_samples_trained) callbacks_.on_samples_trained(b);
    if (callbacks_.on_progress) {
      const double elapsed = train_seconds_ + SecondsSince(start);
      const int64_t remaining =
          (static_cast<int64_t>(hyper_.epochs) - epoch) * steps_per_epoch_ +
          (steps_per_epoch_ - batch - 1);
      tlserve::v1::Progress progress;
      progress.set_epoch(epoch);
      progress.set_total_epochs(hyper_.epochs);
      progress.set_batch(batch + 1);
      progress.set_batches_per_epoch(steps_per_epoch_);
      progress.set_loss(static_cast<float>(loss_sum / seen));
      progress.set_accuracy(static_cast<float>(correct) / seen);
      progress.set_eta_seconds(elapsed / batches_done_ * remaining);
      progress.set_samples_per_second(seen /
                                      std::max(1e-9, SecondsSince(start)));
      callbacks_.on_progress(progress);
    }
    // At the epoch's last batch the epoch's end decides.
    if (batch + 1 < steps_per_epoch_ &&
        SecondsSince(last_checkpoint_) >= checkpoint_every_seconds_) {
      TrainingCursor cursor;
      cursor.epoch = epoch - 1;
      cursor.batch = batch + 1;
      cursor.loss_sum = loss_sum;
      cursor.correct = correct;
      cursor.seen = seen;
      RETURN_IF_ERROR(Checkpoint(cursor, nullptr));
    }
  }
  loader_wait_seconds_ += loader.wait_seconds();
  const double train_seconds = SecondsSince(start);
  train_seconds_ += train_seconds;

  RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, false));
  const EvalResult val = Evaluate(val_inputs_, tensors_.val.labels);
  metrics->set_epoch(epoch);
  metrics->set_train_loss(seen > 0 ? static_cast<float>(loss_sum / seen) : 0);
  metrics->set_train_accuracy(seen > 0 ? static_cast<float>(correct) / seen
                                       : 0);
  metrics->set_val_loss(static_cast<float>(val.loss));
  metrics->set_val_accuracy(static_cast<float>(val.accuracy));
  for (float a : val.per_class) metrics->add_per_class_val_accuracy(a);
  metrics->set_val_top5_accuracy(static_cast<float>(val.top5_accuracy));
  val.CopyTo(metrics->mutable_per_class(), metrics->mutable_confusion());
  metrics->set_seconds(SecondsSince(start));
  metrics->set_samples_per_second(seen / std::max(1e-9, train_seconds));
  for (size_t t = 0; t < tasks_.size(); ++t) {
    v1::TaskMetrics* m = metrics->add_tasks();
    m->set_name(tasks_[t].name);
    if (task_seen > 0) {
      m->set_train_loss(static_cast<float>(task_loss_sum[t] / task_seen));
      m->set_train_accuracy(static_cast<float>(task_correct[t]) /
                            static_cast<float>(task_seen));
    }
    m->set_loss(static_cast<float>(val.tasks[t].loss));
    m->set_accuracy(static_cast<float>(val.tasks[t].accuracy));
    for (float a : val.tasks[t].per_class) m->add_per_class_accuracy(a);
  }
  if (adapts_ && domain_seen > 0) {
    metrics->set_domain_loss(static_cast<float>(domain_loss_sum / domain_seen));
    metrics->set_domain_accuracy(static_cast<float>(domain_correct) /
                                 static_cast<float>(domain_seen));
    metrics->set_domain_loss_weight(static_cast<float>(lambda * domain_weight_));
  }
  return true;
}

absl::Status Trainer::Checkpoint(const TrainingCursor& cursor,
                                const EpochMetrics* metrics) {
  const std::string path =
      (std::filesystem::path(input_.work_dir) /
       absl::StrCat("checkpoint_epoch_", cursor.epoch, "_batch_", cursor.batch,
                    ".pt"))
          .string();
  // A step can leave weights that are not finite while the loss before it
  // was; such a checkpoint would only ever resume into the same failure.
  for (const at::Tensor& p : all_params_) {
    if (!torch::isfinite(p).all().item<bool>()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "training diverged: weights are no longer finite after epoch %d "
          "batch %d; lower spec.optimizer.learning_rate or set "
          "spec.grad_clip_norm. The checkpoint was not written",
          cursor.epoch + (cursor.batch > 0 ? 1 : 0), cursor.batch));
    }
  }
  const EarlyStopper::State& state = stopper_->state();
  CheckpointExtras extras{state.best_epoch, state.best_value,
                          state.epochs_since_best, best_weights_};
  const absl::Time save_start = absl::Now();
  RETURN_IF_ERROR(SaveCheckpoint(
      path, cursor, classifier_, *optimizer_,
      [this](const std::string& name) { return Unchanged(name); }, &extras));
  if (callbacks_.on_checkpoint_written) {
    std::error_code size_error;
    const auto bytes = std::filesystem::file_size(path, size_error);
    callbacks_.on_checkpoint_written(absl::Now() - save_start,
                                     size_error ? 0 : static_cast<int64_t>(bytes));
  }
  if (metrics != nullptr) {
    if (callbacks_.on_epoch_end) {
      RETURN_IF_ERROR(callbacks_.on_epoch_end(*metrics, path));
    }
  } else if (callbacks_.on_checkpoint) {
    RETURN_IF_ERROR(callbacks_.on_checkpoint(cursor.epoch, cursor.batch, path));
  }
  // Only the newest checkpoint is needed to resume; the caller has stored
  // it by now.
  if (!previous_checkpoint_.empty()) {
    std::error_code ignored;
    std::filesystem::remove(previous_checkpoint_, ignored);
  }
  previous_checkpoint_ = path;
  last_checkpoint_ = Clock::now();
  trained_since_checkpoint_ = false;
  return absl::OkStatus();
}

absl::Status Trainer::Export(TrainJobOutput* output) {
  RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, false));
  // The model is served by CPU and GPU workers alike, and its backbone
  // digest compared with the one loaded: float32, on the CPU, in the
  // default layout.
  if (!device_.is_cpu()) {
    classifier_.to(at::kCPU);
    SetWeightsMemoryFormat(classifier_, c10::MemoryFormat::Contiguous);
  }
  if (ReusesBackbone(spec_.kind())) {
    output->artifact_path =
        (std::filesystem::path(input_.work_dir) / "model.pt").string();
    if (adapts_) {
      // The served model is backbone and head; the domain classifier only
      // mattered in training.
      ASSIGN_OR_RETURN(torch::jit::Module served,
                       MakeClassifier(backbone_, head_, input_spec_));
      served.save(output->artifact_path);
    } else {
      classifier_.save(output->artifact_path);
    }
    // Only a backbone that training left exactly as loaded (weights and
    // BatchNorm statistics) can be shared with other models at serving.
    ASSIGN_OR_RETURN(const std::string final_digest, WeightsDigest(backbone_));
    if (!initial_backbone_digest_.empty() &&
        final_digest == initial_backbone_digest_) {
      output->result.set_frozen_backbone_digest(
          FrozenBackboneDigest(final_digest, input_spec_));
    } else {
      output->result.clear_frozen_backbone_digest();
    }
  } else {
    output->artifact_path =
        (std::filesystem::path(input_.work_dir) / "backbone.pt").string();
    backbone_.save(output->artifact_path);
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainJobOutput> Trainer::Run() {
  const Clock::time_point start = Clock::now();
  ScopedNoGraphOptimize no_graph_optimize;
  if (input_.num_threads > 0) torch::set_num_threads(input_.num_threads);
  torch::manual_seed(spec_.seed());
  ASSIGN_OR_RETURN(hyper_, ResolveHyper(spec_));
  if (spec_.kind() == v1::FEW_SHOT) hyper_.epochs = 0;  // nothing trains
  ASSIGN_OR_RETURN(device_, ResolveJobDevice(input_.worker_device, spec_.device()));
  memory_format_ = PreferredMemoryFormat(device_);
  bf16_ = spec_.precision() == v1::PRECISION_BF16;
  micro_batch_ = spec_.micro_batch_size();
  if (micro_batch_ < 0 || micro_batch_ > hyper_.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.micro_batch_size must be in [0, batch_size = ",
        hyper_.batch_size, "], got ", micro_batch_));
  }
  device_settings_ = ConfigureForTraining(device_);
  if (device_.is_cuda() || bf16_ || micro_batch_ > 0) {
    Log(absl::StrFormat(
        "device %s, %s%s", DescribeDevice(device_),
        bf16_ ? "bfloat16 autocast" : "float32",
        micro_batch_ > 0
            ? absl::StrFormat(", batches of %d in passes of %d rows",
                              hyper_.batch_size, micro_batch_)
            : ""));
  }

  if (ReusesBackbone(spec_.kind())) {
    input_spec_ = ApplyJobFit(input_.backbone_input_spec, spec_);
    RETURN_IF_ERROR(Annotate(ValidateInputSpec(input_spec_), "backbone"));
  } else if (spec_.kind() == v1::PRETRAIN) {
    ASSIGN_OR_RETURN(input_spec_,
                     ResolveInputSpec(data_, ApplyJobFit(spec_.input_spec(), spec_)));
    if (input_spec_.mean_size() == 0) {
      // Mean/std come from the data after conversion to the final size.
      tlserve::v1::InputSpec probe = input_spec_;
      for (int c = 0; c < probe.channels(); ++c) {
        probe.add_mean(0);
        probe.add_std(1);
      }
      RETURN_IF_ERROR(ValidateInputSpec(probe));
    } else {
      RETURN_IF_ERROR(ValidateInputSpec(input_spec_));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("job kind ", v1::JobKind_Name(spec_.kind()),
                     " is not FINE_TUNE, PRETRAIN, FEW_SHOT, DOMAIN_ADAPT "
                     "or MULTITASK"));
  }
  ASSIGN_OR_RETURN(tensors_, PrepareTrainingData(data_, spec_.data(),
                                                 input_spec_, spec_.seed()));
  if (input_spec_.mean_size() == 0) {
    std::vector<float> mean, std;
    ChannelMeanStd(tensors_.train.images, &mean, &std);
    for (size_t c = 0; c < mean.size(); ++c) {
      input_spec_.add_mean(mean[c]);
      input_spec_.add_std(std[c]);
    }
  }
  if (spec_.kind() == v1::DOMAIN_ADAPT) RETURN_IF_ERROR(PrepareTarget());
  Log(absl::StrFormat(
      "data: %d train, %d validation, %d test samples, %d classes, input "
      "%dx%dx%d",
      tensors_.train.size(), tensors_.val.size(), tensors_.test.size(),
      tensors_.class_names.size(), input_spec_.channels(), input_spec_.height(),
      input_spec_.width()));

  if (spec_.early_stopping().patience() > 0 && tensors_.val.size() == 0) {
    return absl::InvalidArgumentError(
        "early_stopping needs validation samples, and this job's split has "
        "none: raise data.validation_fraction or data.samples_per_class");
  }
  RETURN_IF_ERROR(BuildModel());
  // Built on the CPU (the backbone file loads there); trained where the
  // job runs. Before the optimizer, whose state follows its tensors.
  if (!device_.is_cpu()) {
    classifier_.to(device_);
    SetWeightsMemoryFormat(classifier_, memory_format_);
    for (TaskHead& task : tasks_) task.of_class = task.of_class.to(device_);
  }
  RETURN_IF_ERROR(BuildOptimizer());

  const int64_t n = tensors_.train.size();
  steps_per_epoch_ = (n + hyper_.batch_size - 1) / hyper_.batch_size;
  // BatchNorm cannot train on a batch of one; drop such a last batch.
  if (!use_feature_cache_ && n > 1 && n % hyper_.batch_size == 1) {
    --steps_per_epoch_;
  }

  stopper_.emplace(spec_.early_stopping());
  EarlyStopper& stopper = *stopper_;
  int first_epoch = 1;
  int64_t first_batch = 0;
  if (!input_.resume_checkpoint_path.empty()) {
    CheckpointExtras extras;
    ASSIGN_OR_RETURN(resume_cursor_,
                     LoadCheckpoint(input_.resume_checkpoint_path, classifier_,
                                    *optimizer_, &extras));
    stopper.Restore({extras.best_epoch, extras.best_value,
                     extras.epochs_since_best});
    best_weights_ = std::move(extras.best_weights);
    const int stored = resume_cursor_.epoch;
    if (stored != input_.resume_epoch) {
      Log(absl::StrCat("checkpoint holds epoch ", stored, ", not ",
                       input_.resume_epoch, " as announced; using ", stored));
    }
    if (resume_cursor_.batch < 0 || resume_cursor_.batch >= steps_per_epoch_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint position batch ", resume_cursor_.batch, " of epoch ",
          stored + 1, " does not fit this job's ", steps_per_epoch_,
          " batches per epoch"));
    }
    first_epoch = stored + 1;
    first_batch = resume_cursor_.batch;
    if (first_batch > 0) {
      Log(absl::StrCat("resumed from checkpoint inside epoch ", first_epoch,
                       " after batch ", first_batch, " of ", steps_per_epoch_));
    } else {
      Log(absl::StrCat("resumed from checkpoint of epoch ", stored));
    }
  }

  TrainJobOutput output;
  if (InputsCached()) {
    const Clock::time_point cache_start = Clock::now();
    ASSIGN_OR_RETURN(bool done, CacheFeatures());
    if (!done) return Stopped("the feature cache");
    feature_cache_seconds_ = SecondsSince(cache_start);
  } else {
    train_inputs_ = tensors_.train.images;
    val_inputs_ = tensors_.val.images;
    test_inputs_ = tensors_.test.images;
  }
  if (spec_.kind() == v1::FEW_SHOT) RETURN_IF_ERROR(SetPrototypeHead());

  if (spec_.checkpoint_every_seconds() > 0) {
    checkpoint_every_seconds_ = spec_.checkpoint_every_seconds();
  }
  last_checkpoint_ = Clock::now();
  int epochs_run = 0;
  bool stopped_early = false;
  for (int epoch = first_epoch; epoch <= hyper_.epochs; ++epoch) {
    EpochMetrics metrics;
    ASSIGN_OR_RETURN(bool done,
                     TrainEpoch(epoch, epoch == first_epoch ? first_batch : 0,
                                &metrics));
    if (!done) return Stopped(absl::StrCat("epoch ", epoch));
    ++epochs_run;
    metrics.set_learning_rate(static_cast<float>(
        optimizer_->param_groups()[0].options().get_lr()));
    for (const std::string& block : plan_.trainable_blocks) {
      metrics.add_trainable_blocks(block);
    }
    metrics.set_feature_cache_used(use_feature_cache_);
    const bool best = stopper.Record(epoch, metrics);
    metrics.set_best(best);
    // Only early stopping rolls back to the best epoch, so only it pays
    // for keeping those weights.
    if (best && stopper.enabled()) best_weights_ = SnapshotWeights();
    // Time decides, not the epoch: a checkpoint of a full fine-tune is the
    // model and two optimizer moments, and writing one every short epoch
    // cost more than the job's whole lead over a plain PyTorch loop.
    if (spec_.checkpoint_every_epoch() || (best && stopper.enabled()) ||
        SecondsSince(last_checkpoint_) >= checkpoint_every_seconds_) {
      TrainingCursor cursor;
      cursor.epoch = epoch;
      RETURN_IF_ERROR(Checkpoint(cursor, &metrics));
    } else if (callbacks_.on_epoch_end) {
      RETURN_IF_ERROR(callbacks_.on_epoch_end(metrics, ""));
    }
    if (stopper.ShouldStop() && epoch < hyper_.epochs) {
      stopped_early = true;
      Log(absl::StrFormat(
          "early stopping after epoch %d: %s has not improved for %d epochs; "
          "keeping epoch %d (%s %.4f)",
          epoch, stopper.metric(), stopper.state().epochs_since_best,
          stopper.state().best_epoch, stopper.metric(),
          stopper.state().best_value));
      break;
    }
  }
  if (stopper.enabled() && !best_weights_.empty() &&
      stopper.state().best_epoch != hyper_.epochs) {
    RETURN_IF_ERROR(RestoreWeights(best_weights_));
  }
  if (!InputsCached() && loader_wait_seconds_ > 0.05) {
    Log(absl::StrFormat("data loader: training waited %.2f s for batches",
                        loader_wait_seconds_));
  }

  RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, false));
  // DOMAIN_ADAPT is judged on the target; the source's test is kept beside.
  const bool on_target = spec_.kind() == v1::DOMAIN_ADAPT;
  const EvalResult test = on_target
                              ? Evaluate(target_.test.images, target_.test.labels)
                              : Evaluate(test_inputs_, tensors_.test.labels);
  tlserve::v1::JobResult& result = output.result;
  if (on_target) {
    const EvalResult source = Evaluate(test_inputs_, tensors_.test.labels);
    result.set_source_test_accuracy(static_cast<float>(source.accuracy));
    result.set_source_test_count(source.count);
    Log(absl::StrFormat("source test accuracy %.4f on %d samples",
                        source.accuracy, source.count));
  }
  result.set_test_accuracy(static_cast<float>(test.accuracy));
  result.set_test_loss(static_cast<float>(test.loss));
  for (float a : test.per_class) result.add_per_class_test_accuracy(a);
  result.set_test_top5_accuracy(static_cast<float>(test.top5_accuracy));
  test.CopyTo(result.mutable_per_class_test(), result.mutable_test_confusion());
  result.set_test_count(test.count);
  for (size_t t = 0; t < tasks_.size(); ++t) {
    v1::TaskMetrics* m = result.add_tasks();
    m->set_name(tasks_[t].name);
    m->set_loss(static_cast<float>(test.tasks[t].loss));
    m->set_accuracy(static_cast<float>(test.tasks[t].accuracy));
    for (float a : test.tasks[t].per_class) m->add_per_class_accuracy(a);
    Log(absl::StrFormat("test accuracy of head '%s': %.4f", tasks_[t].name,
                        test.tasks[t].accuracy));
  }
  result.set_feature_dim(static_cast<int32_t>(feature_dim_));
  for (const std::string& block : Blocks(backbone_)) result.add_blocks(block);
  RETURN_IF_ERROR(Export(&output));
  result.set_train_seconds(SecondsSince(start));
  // What the run needs to be reproduced; the connection adds the hashes
  // of the dataset and backbone it fetched.
  tlserve::v1::ReproManifest* manifest = result.mutable_manifest();
  manifest->set_seed(spec_.seed());
  manifest->set_libtorch_version(TORCH_VERSION);
  manifest->set_device(device_.str());
  for (const std::string& setting : device_settings_) {
    manifest->add_settings(setting);
  }
  manifest->add_settings(bf16_ ? "precision=bf16_autocast" : "precision=fp32");
  if (spec_.micro_batch_size() > 0 || micro_batch_ > 0) {
    manifest->add_settings(absl::StrCat("micro_batch_size=", micro_batch_));
  }
  manifest->set_threads(at::get_num_threads());
  manifest->set_deterministic_algorithms(
      at::globalContext().deterministicAlgorithms());
  manifest->add_settings("graph_executor_optimize=false");
  manifest->add_settings(absl::StrCat(
      "shuffle_and_augment=std::mt19937_64(seed_seq(", spec_.seed(),
      ", stream, epoch, batch))"));
  manifest->add_settings(
      absl::StrCat("torch_generator=manual_seed(", spec_.seed(), ")"));
  result.set_best_epoch(stopper.enabled() ? stopper.state().best_epoch
                                          : hyper_.epochs);
  result.set_stopped_early(stopped_early);
  if (use_feature_cache_) {
    tlserve::v1::FeatureCacheStats* cache = result.mutable_feature_cache();
    cache->set_used(true);
    cache->set_samples(train_inputs_.size(0) + val_inputs_.size(0) +
                       (tensors_.test_is_val ? 0 : test_inputs_.size(0)));
    const int64_t cache_bytes = cache->samples() * feature_dim_ * 4;
    if (feature_cache_on_disk_) {
      cache->set_bytes_on_disk(cache_bytes);
    } else {
      cache->set_bytes_in_memory(cache_bytes);
    }
    cache->set_build_seconds(feature_cache_seconds_);
    // Without the cache every epoch would run the backbone over the train
    // and validation images again.
    const double per_epoch =
        feature_cache_seconds_ *
        static_cast<double>(train_inputs_.size(0) + val_inputs_.size(0)) /
        std::max<double>(1, static_cast<double>(cache->samples()));
    cache->set_seconds_saved(std::max(0.0, per_epoch * (epochs_run - 1)));
    Log(absl::StrFormat(
        "feature cache: backbone ran once (%.2f s) instead of every epoch; "
        "saved about %.1f s over %d epochs",
        feature_cache_seconds_, cache->seconds_saved(), epochs_run));
  }
  if (use_activation_cache_) {
    Log(absl::StrFormat(
        "activation cache: the backbone up to '%s' ran once (%.2f s) instead "
        "of every epoch; saved about %.1f s over %d epochs",
        cut_.block, feature_cache_seconds_,
        std::max(0.0, feature_cache_seconds_ *
                          static_cast<double>(train_inputs_.size(0) +
                                              val_inputs_.size(0)) /
                          std::max<double>(1, static_cast<double>(
                                                  train_inputs_.size(0) +
                                                  val_inputs_.size(0) +
                                                  test_inputs_.size(0))) *
                          (epochs_run - 1)),
        epochs_run));
  }
  output.input_spec = input_spec_;
  output.class_names = tensors_.class_names;
  Log(absl::StrFormat("test accuracy %.4f on %d samples%s", test.accuracy,
                      test.count,
                      on_target                ? " (target test split)"
                      : tensors_.test_is_val ? " (validation split)"
                                             : ""));
  return output;
}

}  // namespace

absl::StatusOr<TrainJobOutput> RunTrainingJob(
    const TrainJobInput& input, const DecodedDataset& data,
    const TrainerCallbacks& callbacks) {
  Trainer trainer(input, data, callbacks);
  return TorchGuardOr<TrainJobOutput>(
      "training",
      [&]() -> absl::StatusOr<TrainJobOutput> { return trainer.Run(); });
}

}  // namespace tlserve::worker
