#include "worker/trainer.h"

#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "worker/checkpoint.h"
#include "worker/data_tensors.h"
#include "worker/model_builder.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

using tlserve::v1::EpochMetrics;
using tlserve::v1::JobSpec;
using tlserve::v1::OptimizerSpec;
using tlserve::v1::ScheduleSpec;
using Clock = std::chrono::steady_clock;

constexpr int64_t kEvalBatchSize = 256;
constexpr int kDefaultEpochs = 10;
constexpr int kDefaultBatchSize = 32;
constexpr int kDefaultBaseWidth = 16;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
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
  double backbone_lr_scale = 1.0;
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
  return h;
}

// Factor on the base learning rate before optimizer step `step` (0-based):
// linear warmup to 1, then constant or a cosine decay to 0 at the end.
double LrFactor(const Hyper& h, int64_t step, int64_t steps_per_epoch) {
  const int64_t total = static_cast<int64_t>(h.epochs) * steps_per_epoch;
  const int64_t warmup =
      static_cast<int64_t>(h.warmup_epochs) * steps_per_epoch;
  if (step < warmup) return static_cast<double>(step + 1) / warmup;
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

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  std::vector<float> per_class;
  int64_t count = 0;
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
  bool ShouldStop() {
    return callbacks_.should_stop && callbacks_.should_stop();
  }

  absl::Status BuildModel();
  absl::Status BuildOptimizer();
  // Features of every split under the frozen backbone; false if cancelled.
  absl::StatusOr<bool> CacheFeatures();
  absl::StatusOr<at::Tensor> Features(const at::Tensor& images,
                                      bool* cancelled);
  at::Tensor Forward(const at::Tensor& inputs);
  // One epoch; false if cancelled.
  absl::StatusOr<bool> TrainEpoch(int epoch, EpochMetrics* metrics);
  EvalResult Evaluate(const at::Tensor& inputs, const at::Tensor& labels);
  absl::Status Export(TrainJobOutput* output);

  const TrainJobInput& input_;
  const JobSpec& spec_;
  const DecodedDataset& data_;
  const TrainerCallbacks& callbacks_;

  Hyper hyper_;
  tlserve::v1::InputSpec input_spec_;
  TrainingData tensors_;
  torch::jit::Module classifier_;
  torch::jit::Module backbone_;
  torch::jit::Module head_;
  FreezePlan plan_;
  bool use_feature_cache_ = false;
  // What the trained module consumes per split: uint8 images, or cached
  // features when the backbone is frozen.
  at::Tensor train_inputs_;
  at::Tensor val_inputs_;
  at::Tensor test_inputs_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::vector<double> base_lrs_;
  std::mt19937_64 host_rng_;
  int64_t steps_per_epoch_ = 0;
  int64_t feature_dim_ = 0;
  // For the ETA: time and batches of the epochs run in this attempt.
  double train_seconds_ = 0;
  int64_t batches_done_ = 0;
};

absl::Status Trainer::BuildModel() {
  const uint64_t seed = spec_.seed();
  const int64_t num_classes = static_cast<int64_t>(tensors_.class_names.size());
  if (spec_.kind() == v1::FINE_TUNE) {
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
    ASSIGN_OR_RETURN(plan_, ApplyFreezePolicy(backbone_, spec_.freeze()));
    ASSIGN_OR_RETURN(feature_dim_, FeatureDim(backbone_, input_spec_));
    std::vector<int64_t> hidden(spec_.head().hidden_sizes().begin(),
                                spec_.head().hidden_sizes().end());
    ASSIGN_OR_RETURN(head_,
                     MakeHead(feature_dim_, hidden, spec_.head().dropout(),
                              num_classes, seed + 1));
  } else {
    const int64_t width = spec_.pretrain().base_width() > 0
                              ? spec_.pretrain().base_width()
                              : kDefaultBaseWidth;
    ASSIGN_OR_RETURN(backbone_,
                     MakeCompactResNet(input_spec_.channels(), width, seed));
    tlserve::v1::FreezePolicy full;
    full.set_mode(tlserve::v1::FreezePolicy::FULL);
    ASSIGN_OR_RETURN(plan_, ApplyFreezePolicy(backbone_, full));
    ASSIGN_OR_RETURN(feature_dim_, FeatureDim(backbone_, input_spec_));
    ASSIGN_OR_RETURN(head_,
                     MakeHead(feature_dim_, {}, 0.0, num_classes, seed + 1));
  }
  ASSIGN_OR_RETURN(classifier_, MakeClassifier(backbone_, head_, input_spec_));
  use_feature_cache_ = plan_.backbone_frozen;
  return absl::OkStatus();
}

absl::Status Trainer::BuildOptimizer() {
  std::vector<at::Tensor> head_params;
  for (at::Tensor p : head_.parameters()) {
    p.requires_grad_(true);
    head_params.push_back(p);
  }
  std::vector<at::Tensor> backbone_params;
  if (!use_feature_cache_) {
    for (const at::Tensor& p : backbone_.parameters()) {
      if (p.requires_grad()) backbone_params.push_back(p);
    }
  }
  base_lrs_ = {hyper_.lr};
  if (!backbone_params.empty()) {
    base_lrs_.push_back(hyper_.lr * hyper_.backbone_lr_scale);
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
  groups.emplace_back(head_params, options(base_lrs_[0]));
  if (!backbone_params.empty()) {
    groups.emplace_back(backbone_params, options(base_lrs_[1]));
  }
  if (hyper_.optimizer == OptimizerSpec::SGD) {
    optimizer_ = std::make_unique<torch::optim::SGD>(
        std::move(groups), torch::optim::SGDOptions(hyper_.lr));
  } else {
    optimizer_ = std::make_unique<torch::optim::AdamW>(
        std::move(groups), torch::optim::AdamWOptions(hyper_.lr));
  }
  int64_t trainable = 0;
  for (const auto& group : optimizer_->param_groups()) {
    for (const auto& p : group.params()) trainable += p.numel();
  }
  Log(absl::StrFormat("trainable parameters: %d (blocks: %s)", trainable,
                      plan_.trainable_blocks.empty()
                          ? "head only"
                          : absl::StrJoin(plan_.trainable_blocks, ", ")));
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> Trainer::Features(const at::Tensor& images,
                                             bool* cancelled) {
  torch::jit::Method features = classifier_.get_method("features");
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < images.size(0); start += kEvalBatchSize) {
    if (ShouldStop()) {
      *cancelled = true;
      return at::Tensor();
    }
    const int64_t end = std::min(images.size(0), start + kEvalBatchSize);
    parts.push_back(
        features({ToModelInput(images.slice(0, start, end))}).toTensor());
  }
  if (parts.empty()) return at::empty({0, feature_dim_});
  return at::cat(parts);
}

absl::StatusOr<bool> Trainer::CacheFeatures() {
  const Clock::time_point start = Clock::now();
  at::NoGradGuard no_grad;
  RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, false));
  bool cancelled = false;
  ASSIGN_OR_RETURN(train_inputs_, Features(tensors_.train.images, &cancelled));
  if (cancelled) return false;
  ASSIGN_OR_RETURN(val_inputs_, Features(tensors_.val.images, &cancelled));
  if (cancelled) return false;
  if (tensors_.test_is_val) {
    test_inputs_ = val_inputs_;
  } else {
    ASSIGN_OR_RETURN(test_inputs_, Features(tensors_.test.images, &cancelled));
    if (cancelled) return false;
  }
  const int64_t n = train_inputs_.size(0) + val_inputs_.size(0) +
                    (tensors_.test_is_val ? 0 : test_inputs_.size(0));
  Log(absl::StrFormat("feature cache: %d samples, %.2f s", n,
                      SecondsSince(start)));
  return true;
}

at::Tensor Trainer::Forward(const at::Tensor& inputs) {
  if (use_feature_cache_) return head_.forward({inputs}).toTensor();
  return classifier_.forward({ToModelInput(inputs)}).toTensor();
}

EvalResult Trainer::Evaluate(const at::Tensor& inputs,
                             const at::Tensor& labels) {
  at::NoGradGuard no_grad;
  const int64_t k = static_cast<int64_t>(tensors_.class_names.size());
  EvalResult result;
  result.count = inputs.size(0);
  at::Tensor correct_per_class = at::zeros({k}, at::kLong);
  at::Tensor count_per_class = at::zeros({k}, at::kLong);
  double loss_sum = 0;
  int64_t correct = 0;
  for (int64_t start = 0; start < result.count; start += kEvalBatchSize) {
    const int64_t end = std::min(result.count, start + kEvalBatchSize);
    at::Tensor y = labels.slice(0, start, end);
    at::Tensor logits = Forward(inputs.slice(0, start, end));
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, y,
                    torch::nn::functional::CrossEntropyFuncOptions().reduction(
                        torch::kSum))
                    .item<double>();
    at::Tensor hit = logits.argmax(1).eq(y).to(at::kLong);
    correct += hit.sum().item<int64_t>();
    correct_per_class.index_add_(0, y, hit);
    count_per_class.index_add_(0, y, at::ones_like(y));
  }
  if (result.count > 0) {
    result.loss = loss_sum / result.count;
    result.accuracy = static_cast<double>(correct) / result.count;
  }
  for (int64_t c = 0; c < k; ++c) {
    const int64_t n = count_per_class[c].item<int64_t>();
    result.per_class.push_back(
        n == 0 ? 0.0f
               : static_cast<float>(correct_per_class[c].item<int64_t>()) / n);
  }
  return result;
}

absl::StatusOr<bool> Trainer::TrainEpoch(int epoch, EpochMetrics* metrics) {
  const Clock::time_point start = Clock::now();
  RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, true));
  const int64_t n = train_inputs_.size(0);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), host_rng_);
  const at::Tensor permutation = at::tensor(order, at::kLong);
  const at::Tensor& labels = tensors_.train.labels;

  double loss_sum = 0;
  int64_t correct = 0;
  int64_t seen = 0;
  for (int64_t batch = 0; batch < steps_per_epoch_; ++batch) {
    if (ShouldStop()) return false;
    const int64_t begin = batch * hyper_.batch_size;
    const int64_t end = std::min(n, begin + hyper_.batch_size);
    const at::Tensor index = permutation.slice(0, begin, end);
    const at::Tensor x = train_inputs_.index_select(0, index);
    const at::Tensor y = labels.index_select(0, index);

    const int64_t step =
        static_cast<int64_t>(epoch - 1) * steps_per_epoch_ + batch;
    const double factor = LrFactor(hyper_, step, steps_per_epoch_);
    for (size_t g = 0; g < optimizer_->param_groups().size(); ++g) {
      optimizer_->param_groups()[g].options().set_lr(base_lrs_[g] * factor);
    }
    optimizer_->zero_grad();
    at::Tensor logits = Forward(x);
    at::Tensor loss = torch::nn::functional::cross_entropy(logits, y);
    loss.backward();
    optimizer_->step();

    const int64_t b = end - begin;
    seen += b;
    loss_sum += loss.item<double>() * b;
    correct += logits.argmax(1).eq(y).sum().item<int64_t>();
    ++batches_done_;
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
  }
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
  metrics->set_seconds(SecondsSince(start));
  metrics->set_samples_per_second(seen / std::max(1e-9, train_seconds));
  return true;
}

absl::Status Trainer::Export(TrainJobOutput* output) {
  RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, false));
  if (spec_.kind() == v1::FINE_TUNE) {
    output->artifact_path =
        (std::filesystem::path(input_.work_dir) / "model.pt").string();
    classifier_.save(output->artifact_path);
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
  host_rng_.seed(spec_.seed());
  ASSIGN_OR_RETURN(hyper_, ResolveHyper(spec_));

  if (spec_.kind() == v1::FINE_TUNE) {
    input_spec_ = input_.backbone_input_spec;
    RETURN_IF_ERROR(Annotate(ValidateInputSpec(input_spec_), "backbone"));
  } else if (spec_.kind() == v1::PRETRAIN) {
    ASSIGN_OR_RETURN(input_spec_, ResolveInputSpec(data_, spec_.input_spec()));
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
                     " is not FINE_TUNE or PRETRAIN"));
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
  Log(absl::StrFormat(
      "data: %d train, %d validation, %d test samples, %d classes, input "
      "%dx%dx%d",
      tensors_.train.size(), tensors_.val.size(), tensors_.test.size(),
      tensors_.class_names.size(), input_spec_.channels(), input_spec_.height(),
      input_spec_.width()));

  RETURN_IF_ERROR(BuildModel());
  RETURN_IF_ERROR(BuildOptimizer());

  const int64_t n = tensors_.train.size();
  steps_per_epoch_ = (n + hyper_.batch_size - 1) / hyper_.batch_size;
  // BatchNorm cannot train on a batch of one; drop such a last batch.
  if (!use_feature_cache_ && n > 1 && n % hyper_.batch_size == 1) {
    --steps_per_epoch_;
  }

  int first_epoch = 1;
  if (!input_.resume_checkpoint_path.empty()) {
    ASSIGN_OR_RETURN(int stored,
                     LoadCheckpoint(input_.resume_checkpoint_path, classifier_,
                                    *optimizer_, host_rng_));
    if (stored != input_.resume_epoch) {
      Log(absl::StrCat("checkpoint holds epoch ", stored, ", not ",
                       input_.resume_epoch, " as announced; using ", stored));
    }
    first_epoch = stored + 1;
    Log(absl::StrCat("resumed from checkpoint of epoch ", stored));
  }

  TrainJobOutput output;
  if (use_feature_cache_) {
    ASSIGN_OR_RETURN(bool done, CacheFeatures());
    if (!done) {
      output.cancelled = true;
      return output;
    }
  } else {
    train_inputs_ = tensors_.train.images;
    val_inputs_ = tensors_.val.images;
    test_inputs_ = tensors_.test.images;
  }

  std::string previous_checkpoint;
  for (int epoch = first_epoch; epoch <= hyper_.epochs; ++epoch) {
    EpochMetrics metrics;
    ASSIGN_OR_RETURN(bool done, TrainEpoch(epoch, &metrics));
    if (!done) {
      output.cancelled = true;
      Log(absl::StrCat("cancelled during epoch ", epoch));
      return output;
    }
    const std::string path = (std::filesystem::path(input_.work_dir) /
                              absl::StrCat("checkpoint_epoch_", epoch, ".pt"))
                                 .string();
    RETURN_IF_ERROR(
        SaveCheckpoint(path, epoch, classifier_, *optimizer_, host_rng_));
    if (callbacks_.on_epoch_end) {
      RETURN_IF_ERROR(callbacks_.on_epoch_end(metrics, path));
    }
    // Only the newest checkpoint is needed to resume; the caller has
    // stored it by now.
    if (!previous_checkpoint.empty()) {
      std::error_code ignored;
      std::filesystem::remove(previous_checkpoint, ignored);
    }
    previous_checkpoint = path;
  }

  RETURN_IF_ERROR(SetTrainingMode(classifier_, plan_, false));
  const EvalResult test = Evaluate(test_inputs_, tensors_.test.labels);
  tlserve::v1::JobResult& result = output.result;
  result.set_test_accuracy(static_cast<float>(test.accuracy));
  result.set_test_loss(static_cast<float>(test.loss));
  for (float a : test.per_class) result.add_per_class_test_accuracy(a);
  result.set_test_count(test.count);
  result.set_feature_dim(static_cast<int32_t>(feature_dim_));
  for (const std::string& block : Blocks(backbone_)) result.add_blocks(block);
  RETURN_IF_ERROR(Export(&output));
  result.set_train_seconds(SecondsSince(start));
  output.input_spec = input_spec_;
  output.class_names = tensors_.class_names;
  Log(absl::StrFormat("test accuracy %.4f on %d samples%s", test.accuracy,
                      test.count,
                      tensors_.test_is_val ? " (validation split)" : ""));
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
