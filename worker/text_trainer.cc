#include "worker/text_trainer.h"

#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/classification_metrics.h"
#include "common/data_split.h"
#include "common/recipe_validation.h"
#include "common/status_macros.h"
#include "common/text_tokenizer.h"
#include "common/word_vectors.h"
#include "worker/batch_loader.h"
#include "worker/fused_adamw.h"
#include "worker/text_model.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

using tlserve::v1::EpochMetrics;
using tlserve::v1::FreezePolicy;
using tlserve::v1::JobSpec;
using tlserve::v1::OptimizerSpec;
using tlserve::v1::ScheduleSpec;
using Clock = std::chrono::steady_clock;

constexpr int kDefaultEpochs = 10;
constexpr int64_t kDefaultBatchSize = 32;
// Evaluation and the feature cache: rows per forward.
constexpr int64_t kEvalBatchSize = 256;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The job's hyper-parameters with defaults filled in (as the image
// trainer's, for the fields text jobs share).
struct TextHyper {
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
  bool train_embedding = false;
  double embedding_lr_scale = 1.0;
  double label_smoothing = 0;
  double grad_clip_norm = 0;
};

absl::StatusOr<TextHyper> ResolveTextHyper(const JobSpec& spec) {
  TextHyper h;
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
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer: learning_rate ", opt.learning_rate(),
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

  const FreezePolicy& freeze = spec.freeze();
  switch (freeze.mode()) {
    case FreezePolicy::MODE_UNSPECIFIED:
    case FreezePolicy::FROZEN:
      h.train_embedding = false;
      break;
    case FreezePolicy::FULL:
      h.train_embedding = true;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "freeze.mode ", FreezePolicy::Mode_Name(freeze.mode()),
          ": a text model's backbone is its word embedding alone; use FROZEN "
          "(the vectors stay as loaded) or FULL (they train)"));
  }
  if (freeze.gradual_unfreeze_size() > 0 ||
      freeze.trainable_patterns_size() > 0 ||
      freeze.frozen_patterns_size() > 0) {
    return absl::InvalidArgumentError(
        "freeze.gradual_unfreeze and freeze patterns do not apply to text "
        "jobs (the embedding is one block); use freeze.mode FROZEN or FULL");
  }
  const float scale = freeze.backbone_lr_scale();
  if (!(scale >= 0 && scale <= 100)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "freeze: backbone_lr_scale ", scale, " is outside [0, 100]"));
  }
  if (scale > 0) h.embedding_lr_scale = scale;
  if (spec.early_stopping().patience() > 0) {
    return absl::InvalidArgumentError(
        "early_stopping: text jobs train every epoch; set "
        "early_stopping.patience to 0");
  }
  if (spec.augment().random_resized_crop() ||
      spec.augment().horizontal_flip()) {
    return absl::InvalidArgumentError(
        "augment: crops and flips are image augmentations; clear them for a "
        "text job");
  }
  RETURN_IF_ERROR(ValidateRecipe(spec, h.epochs));
  h.label_smoothing = spec.label_smoothing();
  h.grad_clip_norm = spec.grad_clip_norm();
  return h;
}

// Factor on the base learning rate before optimizer step `step` (0-based):
// linear warmup to 1, then constant, a cosine decay to 0 at the end, or a
// drop by step_gamma every step_epochs epochs (the image trainer's rule).
double LrFactor(const TextHyper& h, int64_t step, int64_t steps_per_epoch) {
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

// Training runs the plain autograd graph, as in the image trainer: the
// graph executor's profiling and optimised runs differ in the last bits.
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

// One split of the job: each record's token ids and its model class.
struct TextSplit {
  std::vector<std::vector<int32_t>> ids;
  std::vector<int64_t> labels;
  // Features of every record when the feature cache is used.
  at::Tensor features;

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  double top5_accuracy = 0;
  std::vector<float> per_class;  // recall per class
  std::vector<ClassScores> class_scores;
  std::vector<int64_t> confusion;  // k x k, rows true
  int64_t count = 0;

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

class TextTrainer {
 public:
  TextTrainer(const TextTrainInput& input, const TextDataset& train,
              const TextDataset* test, const TrainerCallbacks& callbacks)
      : input_(input),
        spec_(input.spec),
        train_data_(train),
        test_data_(test),
        callbacks_(callbacks) {}

  absl::StatusOr<TextTrainOutput> Run();

 private:
  void Log(const std::string& message) {
    if (callbacks_.on_log) callbacks_.on_log(message);
  }
  bool ShouldStop() {
    return callbacks_.should_stop && callbacks_.should_stop();
  }
  TextTrainOutput Cancelled(const std::string& where) {
    Log(absl::StrCat("cancelled during ", where));
    TextTrainOutput output;
    output.cancelled = true;
    return output;
  }

  absl::Status CheckDatasets();
  // Splits the records, loads the vectors, encodes the texts and builds
  // the model.
  absl::Status Prepare();
  // Trains on the rows some text uses rather than the whole file: a
  // 400k-word embedding would otherwise get a dense gradient and an
  // optimizer update of every row at every step (a 200k x 100 table ran at
  // under 100 texts/s on 2 cores). Rows no text uses get no gradient, and
  // the embedding has no weight decay, so they would not have moved: the
  // result is the same. Remaps the splits' ids to the compact table.
  absl::Status CompactVocabulary();
  // Puts the whole file's vectors back into the model (the trained rows in
  // their place), so the export covers every word.
  absl::Status RestoreFullVocabulary();
  absl::Status BuildOptimizer();
  // Rows `rows` of `split` as model input: padded ids, or cached features.
  absl::StatusOr<at::Tensor> Inputs(const TextSplit& split,
                                    const std::vector<int64_t>& rows);
  at::Tensor Forward(const at::Tensor& inputs);
  // Features of every record of `split`; false if cancelled.
  absl::StatusOr<bool> CacheFeatures(TextSplit* split);
  absl::StatusOr<EvalResult> Evaluate(const TextSplit& split);
  absl::StatusOr<bool> TrainEpoch(int epoch, EpochMetrics* metrics);

  const TextTrainInput& input_;
  const JobSpec& spec_;
  const TextDataset& train_data_;
  const TextDataset* test_data_;
  const TrainerCallbacks& callbacks_;

  TextHyper hyper_;
  std::vector<std::string> class_names_;
  TextSplit train_;
  TextSplit val_;
  TextSplit test_;
  bool test_is_val_ = false;
  int64_t tokens_ = 0;
  int64_t unknown_tokens_ = 0;
  // The whole file, for the export; and the rows the texts use, which the
  // model trains with (see CompactVocabulary).
  WordVectors vectors_;
  WordVectors used_vectors_;
  // Full-vocabulary id of used_vectors_'s row r (its id there is r + 2).
  std::vector<int64_t> used_ids_;
  torch::jit::Module model_;
  torch::jit::Module head_;
  int64_t feature_dim_ = 0;
  bool use_feature_cache_ = false;
  double feature_cache_seconds_ = 0;
  std::vector<at::Tensor> trainable_;
  std::vector<double> base_lrs_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  int64_t steps_per_epoch_ = 0;
  int64_t batches_done_ = 0;
  double train_seconds_ = 0;
};

absl::Status TextTrainer::CheckDatasets() {
  if (train_data_.texts.size() != train_data_.labels.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train dataset: ", train_data_.texts.size(), " texts but ",
        train_data_.labels.size(), " labels"));
  }
  if (train_data_.texts.empty()) {
    return absl::InvalidArgumentError(
        "train dataset: no records; a text job needs labelled texts");
  }
  if (train_data_.class_names.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train dataset: ", train_data_.class_names.size(),
        " class(es); a classifier needs at least 2"));
  }
  if (test_data_ != nullptr) {
    if (test_data_->texts.size() != test_data_->labels.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "test dataset: ", test_data_->texts.size(), " texts but ",
          test_data_->labels.size(), " labels"));
    }
    if (test_data_->class_names != train_data_.class_names) {
      return absl::InvalidArgumentError(absl::StrCat(
          "test dataset: its classes (",
          absl::StrJoin(test_data_->class_names, ", "),
          ") are not the training dataset's (",
          absl::StrJoin(train_data_.class_names, ", "),
          "); give both files the same set of labels"));
    }
  }
  return absl::OkStatus();
}

absl::Status TextTrainer::Prepare() {
  const std::vector<int32_t> no_labels;
  ASSIGN_OR_RETURN(
      const SplitIndices split,
      SplitDataset(train_data_.labels,
                   test_data_ != nullptr ? test_data_->labels : no_labels,
                   train_data_.class_names.size(), spec_.data(), spec_.seed()));
  if (split.classes.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.class_subset keeps ", split.classes.size(),
        " class; a classifier needs at least 2"));
  }
  for (int32_t label : split.classes) {
    class_names_.push_back(train_data_.class_names[label]);
  }

  const int max_tokens = input_.model.max_tokens;
  if (max_tokens < 1 || max_tokens > kMaxTextTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens ", max_tokens, " is outside [1, ", kMaxTextTokens, "]"));
  }
  absl::StatusOr<WordVectors> vectors = LoadWordVectors(input_.vectors_path);
  if (!vectors.ok()) {
    return Annotate(vectors.status(),
                    absl::StrCat("word vectors ", input_.vectors_path));
  }
  vectors_ = *std::move(vectors);
  const TextVocabulary vocab(vectors_);
  auto encode = [&](const TextDataset& data,
                    const std::vector<size_t>& records, TextSplit* out) {
    for (size_t r : records) {
      EncodedText encoded = EncodeText(data.texts[r], vocab, max_tokens);
      tokens_ += static_cast<int64_t>(encoded.ids.size());
      unknown_tokens_ += encoded.unknown_tokens;
      out->ids.push_back(std::move(encoded.ids));
      out->labels.push_back(split.label_map[data.labels[r]]);
    }
  };
  encode(train_data_, split.train, &train_);
  encode(train_data_, split.val, &val_);
  test_is_val_ = test_data_ == nullptr;
  if (!test_is_val_) encode(*test_data_, split.test, &test_);
  const double rate =
      tokens_ > 0 ? static_cast<double>(unknown_tokens_) / tokens_ : 0.0;
  Log(absl::StrFormat(
      "data: %d train, %d validation, %d test texts, %d classes; word "
      "vectors: %d words x %d dims; %d tokens, %d (%.1f%%) not in the "
      "vectors",
      train_.size(), val_.size(), test_is_val_ ? val_.size() : test_.size(),
      class_names_.size(), vectors_.size(), vectors_.dim, tokens_,
      unknown_tokens_, 100 * rate));
  if (rate > 0.5) {
    Log("most tokens are not in the word vectors: check that the vectors "
        "are of the texts' language and lowercase (tokens are lowercased)");
  }

  RETURN_IF_ERROR(CompactVocabulary());

  TextModelOptions options = input_.model;
  options.train_embedding = hyper_.train_embedding;
  options.hidden_sizes.assign(spec_.head().hidden_sizes().begin(),
                              spec_.head().hidden_sizes().end());
  options.dropout = spec_.head().dropout();
  options.num_classes = static_cast<int64_t>(class_names_.size());
  options.seed = spec_.seed();
  ASSIGN_OR_RETURN(model_, MakeTextClassifier(used_vectors_, options));
  head_ = model_.attr("head").toModule();
  feature_dim_ = options.pooling == TextPooling::kConv ? options.conv_channels
                                                       : vectors_.dim;
  use_feature_cache_ = !options.train_embedding &&
                       options.pooling != TextPooling::kConv &&
                       spec_.feature_cache().mode() !=
                           tlserve::v1::FeatureCacheSpec::OFF;
  return absl::OkStatus();
}

absl::Status TextTrainer::CompactVocabulary() {
  const int64_t full_size = vectors_.size() + kFirstWordTokenId;
  std::vector<int32_t> compact(static_cast<size_t>(full_size), -1);
  for (const TextSplit* split : {&train_, &val_, &test_}) {
    for (const std::vector<int32_t>& ids : split->ids) {
      for (int32_t id : ids) compact[id] = 0;
    }
  }
  // Padding and unknown keep their ids; used words follow in file order.
  compact[kPaddingTokenId] = kPaddingTokenId;
  compact[kUnknownTokenId] = kUnknownTokenId;
  used_vectors_ = WordVectors();
  used_vectors_.dim = vectors_.dim;
  used_ids_.clear();
  int32_t next = kFirstWordTokenId;
  for (int64_t id = kFirstWordTokenId; id < full_size; ++id) {
    if (compact[id] < 0) continue;
    compact[id] = next++;
    used_ids_.push_back(id);
    const int32_t row = static_cast<int32_t>(id - kFirstWordTokenId);
    used_vectors_.words.push_back(vectors_.words[row]);
    const absl::Span<const float> values = vectors_.Row(row);
    used_vectors_.values.insert(used_vectors_.values.end(), values.begin(),
                                values.end());
  }
  if (used_ids_.empty()) {
    return absl::InvalidArgumentError(
        "no token of the texts is in the word vectors: check that the "
        "vectors are of the texts' language and lowercase (tokens are "
        "lowercased)");
  }
  for (TextSplit* split : {&train_, &val_, &test_}) {
    for (std::vector<int32_t>& ids : split->ids) {
      for (int32_t& id : ids) id = compact[id];
    }
  }
  Log(absl::StrFormat("embedding: the texts use %d of the %d words",
                      used_ids_.size(), vectors_.size()));
  return absl::OkStatus();
}

absl::Status TextTrainer::RestoreFullVocabulary() {
  return TorchGuard("restoring the full vocabulary", [&] {
    at::NoGradGuard no_grad;
    const at::Tensor trained = model_.attr("embedding").toTensor();
    const int64_t dim = vectors_.dim;
    at::Tensor full =
        torch::empty({vectors_.size() + kFirstWordTokenId, dim}, torch::kFloat);
    std::memcpy(full[kFirstWordTokenId].data_ptr<float>(),
                vectors_.values.data(), vectors_.values.size() * sizeof(float));
    full.slice(0, 0, kFirstWordTokenId)
        .copy_(trained.slice(0, 0, kFirstWordTokenId));
    full.index_copy_(0, torch::tensor(used_ids_, torch::kLong),
                     trained.slice(0, kFirstWordTokenId));
    full.requires_grad_(trained.requires_grad());
    model_.setattr("embedding", full);
    c10::List<std::string> vocab;
    vocab.reserve(vectors_.words.size());
    for (const std::string& word : vectors_.words) vocab.push_back(word);
    model_.setattr("vocab", vocab);
    return absl::OkStatus();
  });
}

absl::Status TextTrainer::BuildOptimizer() {
  // Group 0: what starts from scratch (head, conv) at the base rate with
  // the job's weight decay; group 1 (FULL): the embedding at the scaled
  // rate, never decayed (see text_trainer.h).
  std::vector<at::Tensor> fresh;
  std::vector<at::Tensor> embedding;
  for (const auto& p : model_.named_parameters(/*recurse=*/true)) {
    if (p.name == "embedding") {
      if (hyper_.train_embedding) embedding.push_back(p.value);
    } else if (!use_feature_cache_ || p.name.rfind("head.", 0) == 0) {
      fresh.push_back(p.value);
    }
  }
  auto options = [this](double lr, double decay)
      -> std::unique_ptr<torch::optim::OptimizerOptions> {
    if (hyper_.optimizer == OptimizerSpec::SGD) {
      return std::make_unique<torch::optim::SGDOptions>(
          torch::optim::SGDOptions(lr).momentum(hyper_.momentum).weight_decay(
              decay));
    }
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(lr).weight_decay(decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(fresh, options(hyper_.lr, hyper_.weight_decay));
  base_lrs_ = {hyper_.lr};
  if (!embedding.empty()) {
    const double lr = hyper_.lr * hyper_.embedding_lr_scale;
    groups.emplace_back(embedding, options(lr, 0.0));
    base_lrs_.push_back(lr);
  }
  trainable_ = fresh;
  trainable_.insert(trainable_.end(), embedding.begin(), embedding.end());
  if (hyper_.optimizer == OptimizerSpec::SGD) {
    optimizer_ = std::make_unique<torch::optim::SGD>(
        std::move(groups), torch::optim::SGDOptions(hyper_.lr));
  } else {
    optimizer_ = std::make_unique<FusedAdamW>(
        std::move(groups), torch::optim::AdamWOptions(hyper_.lr));
  }
  int64_t count = 0;
  for (const at::Tensor& p : trainable_) count += p.numel();
  Log(absl::StrFormat("trainable parameters: %d (%s)", count,
                      hyper_.train_embedding
                          ? "embedding, pooling and head"
                          : "pooling and head; embedding frozen"));
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> PaddedIds(const TextSplit& split,
                                     const std::vector<int64_t>& rows) {
  std::vector<const std::vector<int32_t>*> ids;
  ids.reserve(rows.size());
  for (int64_t r : rows) ids.push_back(&split.ids[r]);
  return PadTokenIds(ids);
}

// Rows [start, end).
std::vector<int64_t> Range(int64_t start, int64_t end) {
  std::vector<int64_t> rows;
  for (int64_t r = start; r < end; ++r) rows.push_back(r);
  return rows;
}

absl::StatusOr<at::Tensor> TextTrainer::Inputs(
    const TextSplit& split, const std::vector<int64_t>& rows) {
  if (use_feature_cache_) {
    return split.features.index_select(0, torch::tensor(rows, torch::kLong));
  }
  return PaddedIds(split, rows);
}

at::Tensor TextTrainer::Forward(const at::Tensor& inputs) {
  if (use_feature_cache_) return head_.forward({inputs}).toTensor();
  return model_.forward({inputs}).toTensor();
}

absl::StatusOr<bool> TextTrainer::CacheFeatures(TextSplit* split) {
  at::NoGradGuard no_grad;
  model_.eval();
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < split->size(); start += kEvalBatchSize) {
    if (ShouldStop()) return false;
    ASSIGN_OR_RETURN(
        const at::Tensor ids,
        PaddedIds(*split,
                  Range(start, std::min(split->size(), start + kEvalBatchSize))));
    parts.push_back(model_.run_method("features", ids).toTensor());
  }
  split->features =
      parts.empty() ? at::empty({0, feature_dim_}) : at::cat(parts);
  return true;
}

absl::StatusOr<EvalResult> TextTrainer::Evaluate(const TextSplit& split) {
  at::NoGradGuard no_grad;
  model_.eval();
  const int64_t k = static_cast<int64_t>(class_names_.size());
  EvalResult result;
  result.count = split.size();
  ClassificationMetrics metrics(k);
  double loss_sum = 0;
  const int64_t top = std::min<int64_t>(5, k);
  for (int64_t start = 0; start < result.count; start += kEvalBatchSize) {
    const int64_t end = std::min(result.count, start + kEvalBatchSize);
    ASSIGN_OR_RETURN(const at::Tensor x, Inputs(split, Range(start, end)));
    const at::Tensor y = torch::tensor(
        std::vector<int64_t>(split.labels.begin() + start,
                             split.labels.begin() + end),
        torch::kLong);
    const at::Tensor logits = Forward(x);
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, y,
                    torch::nn::functional::CrossEntropyFuncOptions().reduction(
                        torch::kSum))
                    .item<double>();
    const at::Tensor predicted = logits.argmax(1).contiguous();
    const at::Tensor hits =
        std::get<1>(logits.topk(top, 1)).eq(y.unsqueeze(1)).any(1).contiguous();
    for (int64_t i = 0; i < end - start; ++i) {
      RETURN_IF_ERROR(metrics.Add(split.labels[start + i],
                                  predicted.data_ptr<int64_t>()[i],
                                  hits.data_ptr<bool>()[i]));
    }
  }
  if (result.count > 0) result.loss = loss_sum / result.count;
  result.accuracy = metrics.Accuracy();
  result.top5_accuracy = metrics.Top5Accuracy();
  result.class_scores = metrics.PerClass();
  for (const ClassScores& s : result.class_scores) {
    result.per_class.push_back(static_cast<float>(s.recall));
  }
  result.confusion = metrics.confusion();
  return result;
}

absl::StatusOr<bool> TextTrainer::TrainEpoch(int epoch, EpochMetrics* metrics) {
  const Clock::time_point start = Clock::now();
  model_.train(true);
  const int64_t n = train_.size();
  const std::vector<int64_t> order =
      EpochOrder(n, spec_.seed(), epoch);
  double loss_sum = 0;
  int64_t correct = 0;
  int64_t seen = 0;
  for (int64_t batch = 0; batch < steps_per_epoch_; ++batch) {
    if (ShouldStop()) return false;
    const int64_t first = batch * hyper_.batch_size;
    const std::vector<int64_t> rows(
        order.begin() + first,
        order.begin() + std::min(n, first + hyper_.batch_size));
    ASSIGN_OR_RETURN(const at::Tensor x, Inputs(train_, rows));
    std::vector<int64_t> labels;
    labels.reserve(rows.size());
    for (int64_t r : rows) labels.push_back(train_.labels[r]);
    const at::Tensor y = torch::tensor(labels, torch::kLong);

    const int64_t step =
        static_cast<int64_t>(epoch - 1) * steps_per_epoch_ + batch;
    const double factor = LrFactor(hyper_, step, steps_per_epoch_);
    for (size_t g = 0; g < optimizer_->param_groups().size(); ++g) {
      optimizer_->param_groups()[g].options().set_lr(base_lrs_[g] * factor);
    }
    optimizer_->zero_grad();
    const at::Tensor logits = Forward(x);
    const at::Tensor loss = torch::nn::functional::cross_entropy(
        logits, y,
        torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(
            hyper_.label_smoothing));
    const double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "training diverged: the loss is %f at epoch %d, batch %d of %d "
          "(learning rate %g); lower spec.optimizer.learning_rate or set "
          "spec.grad_clip_norm (and check the word vectors for huge values)",
          loss_value, epoch, batch + 1, steps_per_epoch_,
          base_lrs_[0] * factor));
    }
    loss.backward();
    if (hyper_.grad_clip_norm > 0) {
      torch::nn::utils::clip_grad_norm_(trainable_, hyper_.grad_clip_norm);
    }
    optimizer_->step();

    const int64_t b = y.size(0);
    seen += b;
    loss_sum += loss_value * static_cast<double>(b);
    correct += logits.argmax(1).eq(y).sum().item<int64_t>();
    ++batches_done_;
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
  }
  const double train_seconds = SecondsSince(start);
  train_seconds_ += train_seconds;

  ASSIGN_OR_RETURN(const EvalResult val, Evaluate(val_));
  metrics->set_epoch(epoch);
  metrics->set_train_loss(seen > 0 ? static_cast<float>(loss_sum / seen) : 0);
  metrics->set_train_accuracy(
      seen > 0 ? static_cast<float>(correct) / static_cast<float>(seen) : 0);
  metrics->set_val_loss(static_cast<float>(val.loss));
  metrics->set_val_accuracy(static_cast<float>(val.accuracy));
  for (float a : val.per_class) metrics->add_per_class_val_accuracy(a);
  metrics->set_val_top5_accuracy(static_cast<float>(val.top5_accuracy));
  val.CopyTo(metrics->mutable_per_class(), metrics->mutable_confusion());
  metrics->set_seconds(SecondsSince(start));
  metrics->set_samples_per_second(seen / std::max(1e-9, train_seconds));
  metrics->set_learning_rate(static_cast<float>(
      optimizer_->param_groups()[0].options().get_lr()));
  metrics->set_feature_cache_used(use_feature_cache_);
  if (hyper_.train_embedding) metrics->add_trainable_blocks("embedding");
  return true;
}

absl::StatusOr<TextTrainOutput> TextTrainer::Run() {
  const Clock::time_point start = Clock::now();
  ScopedNoGraphOptimize no_graph_optimize;
  if (input_.num_threads > 0) torch::set_num_threads(input_.num_threads);
  torch::manual_seed(spec_.seed());
  RETURN_IF_ERROR(CheckDatasets());
  ASSIGN_OR_RETURN(hyper_, ResolveTextHyper(spec_));
  RETURN_IF_ERROR(Prepare());
  RETURN_IF_ERROR(BuildOptimizer());
  const int64_t n = train_.size();
  steps_per_epoch_ = (n + hyper_.batch_size - 1) / hyper_.batch_size;

  if (use_feature_cache_) {
    const Clock::time_point cache_start = Clock::now();
    for (TextSplit* split : {&train_, &val_, &test_}) {
      ASSIGN_OR_RETURN(const bool done, CacheFeatures(split));
      if (!done) return Cancelled("the feature cache");
    }
    feature_cache_seconds_ = SecondsSince(cache_start);
    Log(absl::StrFormat(
        "feature cache: the frozen embedding and %s pooling ran once over "
        "%d texts (%.2f s); epochs train the head alone",
        TextPoolingName(input_.model.pooling),
        train_.size() + val_.size() + test_.size(), feature_cache_seconds_));
  }

  for (int epoch = 1; epoch <= hyper_.epochs; ++epoch) {
    EpochMetrics metrics;
    ASSIGN_OR_RETURN(const bool done, TrainEpoch(epoch, &metrics));
    if (!done) return Cancelled(absl::StrCat("epoch ", epoch));
    if (callbacks_.on_epoch_end) {
      RETURN_IF_ERROR(callbacks_.on_epoch_end(metrics, ""));
    }
  }

  model_.eval();
  ASSIGN_OR_RETURN(const EvalResult test,
                   Evaluate(test_is_val_ ? val_ : test_));
  TextTrainOutput output;
  tlserve::v1::JobResult& result = output.result;
  result.set_test_accuracy(static_cast<float>(test.accuracy));
  result.set_test_loss(static_cast<float>(test.loss));
  for (float a : test.per_class) result.add_per_class_test_accuracy(a);
  result.set_test_top5_accuracy(static_cast<float>(test.top5_accuracy));
  test.CopyTo(result.mutable_per_class_test(), result.mutable_test_confusion());
  result.set_test_count(test.count);
  result.set_feature_dim(static_cast<int32_t>(feature_dim_));
  result.set_best_epoch(hyper_.epochs);
  if (use_feature_cache_) {
    tlserve::v1::FeatureCacheStats* cache = result.mutable_feature_cache();
    cache->set_used(true);
    cache->set_samples(train_.size() + val_.size() + test_.size());
    cache->set_bytes_in_memory(cache->samples() * feature_dim_ * 4);
    cache->set_build_seconds(feature_cache_seconds_);
  }

  RETURN_IF_ERROR(RestoreFullVocabulary());
  output.artifact_path =
      (std::filesystem::path(input_.work_dir) / "model.pt").string();
  model_.save(output.artifact_path);
  result.set_train_seconds(SecondsSince(start));
  tlserve::v1::ReproManifest* manifest = result.mutable_manifest();
  manifest->set_seed(spec_.seed());
  manifest->set_libtorch_version(TORCH_VERSION);
  manifest->set_device("cpu");
  manifest->set_threads(at::get_num_threads());
  manifest->set_deterministic_algorithms(
      at::globalContext().deterministicAlgorithms());
  manifest->add_settings("graph_executor_optimize=false");
  manifest->add_settings(absl::StrCat(
      "text_pooling=", TextPoolingName(input_.model.pooling),
      ",max_tokens=", input_.model.max_tokens));
  manifest->add_settings(
      absl::StrCat("torch_generator=manual_seed(", spec_.seed(), ")"));
  output.class_names = class_names_;
  output.unknown_token_rate =
      tokens_ > 0 ? static_cast<double>(unknown_tokens_) / tokens_ : 0.0;
  Log(absl::StrFormat("test accuracy %.4f on %d texts%s", test.accuracy,
                      test.count, test_is_val_ ? " (validation split)" : ""));
  return output;
}

}  // namespace

absl::StatusOr<TextTrainOutput> RunTextTrainingJob(
    const TextTrainInput& input, const TextDataset& train,
    const TextDataset* test, const TrainerCallbacks& callbacks) {
  TextTrainer trainer(input, train, test, callbacks);
  return TorchGuardOr<TextTrainOutput>(
      "text training",
      [&]() -> absl::StatusOr<TextTrainOutput> { return trainer.Run(); });
}

absl::StatusOr<TextModelOptions> TextModelOptionsOf(
    const tlserve::v1::TextSpec& text) {
  TextModelOptions options;
  if (!text.pooling().empty()) {
    absl::StatusOr<TextPooling> pooling = ParseTextPooling(text.pooling());
    if (!pooling.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("text.pooling: ", pooling.status().message()));
    }
    options.pooling = *pooling;
  }
  if (text.max_tokens() < 0 || text.max_tokens() > kMaxTextTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "text.max_tokens ", text.max_tokens(), " is outside [0, ",
        kMaxTextTokens, "]"));
  }
  if (text.max_tokens() > 0) options.max_tokens = text.max_tokens();
  if (text.conv_channels() < 0 || text.conv_channels() > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "text.conv_channels ", text.conv_channels(),
        " is outside [0, 65536]"));
  }
  if (text.conv_channels() > 0) options.conv_channels = text.conv_channels();
  return options;
}

tlserve::v1::TextSpec TextSpecOf(const TextModelOptions& options) {
  tlserve::v1::TextSpec text;
  text.set_pooling(std::string(TextPoolingName(options.pooling)));
  text.set_max_tokens(options.max_tokens);
  if (options.pooling == TextPooling::kConv) {
    text.set_conv_channels(static_cast<int32_t>(options.conv_channels));
  }
  return text;
}

absl::StatusOr<TrainJobOutput> RunTextJob(const TrainJobInput& input,
                                          const TextDatasetSplits& data,
                                          const TrainerCallbacks& callbacks,
                                          tlserve::v1::TextSpec* served_as) {
  TextTrainInput text_input;
  text_input.spec = input.spec;
  ASSIGN_OR_RETURN(text_input.model, TextModelOptionsOf(input.spec.text()));
  text_input.vectors_path = input.backbone_path;
  text_input.work_dir = input.work_dir;
  text_input.num_threads = input.num_threads;
  const TextDataset* test = data.test.texts.empty() ? nullptr : &data.test;
  ASSIGN_OR_RETURN(TextTrainOutput text,
                   RunTextTrainingJob(text_input, data.train, test, callbacks));
  TrainJobOutput output;
  output.cancelled = text.cancelled;
  if (text.cancelled) return output;
  output.result = std::move(text.result);
  output.result.set_unknown_token_rate(
      static_cast<float>(text.unknown_token_rate));
  output.artifact_path = std::move(text.artifact_path);
  output.class_names = std::move(text.class_names);
  if (served_as != nullptr) *served_as = TextSpecOf(text_input.model);
  return output;
}

}  // namespace tlserve::worker
