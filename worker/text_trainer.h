#ifndef TLSERVE_WORKER_TEXT_TRAINER_H_
#define TLSERVE_WORKER_TEXT_TRAINER_H_

// Trains and evaluates one text-classification job: pretrained word
// vectors (common/word_vectors.h) as the backbone, a CSV dataset
// (common/text_dataset.h), the classifier of worker/text_model.h. No torch
// types cross this header, like worker/trainer.h.
//
// What the job reads from its JobSpec:
//   epochs (0: 10), batch_size (0: 32), seed;
//   optimizer: ADAMW (default; learning_rate 0: 1e-3) or SGD (0: 0.01,
//     momentum 0: 0.9), weight_decay (the head and conv only: decaying the
//     embedding would shrink the vectors of words the data never shows,
//     which are what the model has for them at inference);
//   schedule: CONSTANT, COSINE or STEP, warmup_epochs (linear warmup);
//   head.hidden_sizes, head.dropout; label_smoothing; grad_clip_norm;
//   data.validation_fraction, data.samples_per_class, data.class_subset,
//     data.max_test_samples (common/data_split.h: the same seeded,
//     stratified split as image jobs, on the labels alone);
//   freeze.mode: FROZEN (or unspecified): the embedding stays as loaded;
//     FULL: it trains at learning_rate * freeze.backbone_lr_scale (0: 1).
// Refused (INVALID_ARGUMENT), since a text model has no blocks and this
// trainer no early stopping or augmentation: freeze.mode LAST_N_BLOCKS,
// freeze.gradual_unfreeze, freeze patterns, early_stopping.patience > 0,
// augment flags.
// Evaluation: on `test` when given (its class names must equal the
// training dataset's), else on the validation split (possibly empty:
// test_count 0).
//
// Determinism: torch's global generator is seeded with spec.seed (dropout),
// the head and conv initialise from their own seeded generators, and each
// epoch's order is EpochOrder(n, seed, epoch); the same inputs, seed and
// thread count give the same metrics and weights.
//
// Training uses only the embedding rows of words that occur in some text
// of the job (any split): rows no text uses would get no gradient and no
// weight decay, so they would not change, and a dense update of a
// 400k-word table at every step is what made FULL slow. The export puts
// every word of the file back (the trained rows in their place).
// With a frozen embedding and mean or max pooling nothing before the head
// trains, so every text's features are computed once (in eval mode) and
// the epochs train the head on them: the same function, far cheaper.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/text_dataset.h"
#include "tlserve/v1/job.pb.h"
#include "worker/text_model_options.h"
#include "worker/trainer.h"

namespace tlserve::worker {

struct TextTrainInput {
  tlserve::v1::JobSpec spec;
  // Read: pooling, conv_channels, max_tokens. The rest comes from spec:
  // train_embedding from freeze.mode, hidden_sizes and dropout from
  // spec.head, num_classes from the data, seed from spec.seed.
  TextModelOptions model;
  // The word vectors file, any format LoadWordVectors reads.
  std::string vectors_path;
  // Exists and is writable: the exported model goes here.
  std::string work_dir;
  int num_threads = 0;  // 0: leave LibTorch's setting
};

struct TextTrainOutput {
  // should_stop returned true: the job stopped at a batch boundary, and
  // nothing else here is filled in.
  bool cancelled = false;
  // Test metrics (test_accuracy, test_loss, per-class, confusion,
  // test_count), train_seconds, feature_dim, best_epoch (= epochs) and the
  // reproduction manifest.
  tlserve::v1::JobResult result;
  // work_dir/model.pt: the TlTextClassifier of worker/text_model.h in eval
  // mode, int64 [N, T] ids -> logits, its vocab inside.
  std::string artifact_path;
  // The model's classes, in logit order (after data.class_subset).
  std::vector<std::string> class_names;
  // Unknown tokens / tokens over every text the job encoded (train,
  // validation and test), after the max_tokens cut; 0 with no tokens.
  double unknown_token_rate = 0;
};

// Never throws. INVALID_ARGUMENT naming the field for a bad spec or data
// (empty dataset, fewer than 2 classes, class_subset out of range, a test
// set with other classes, a loss that is not finite: lower the learning
// rate), the vectors file's own errors for a bad file, RESOURCE_EXHAUSTED
// for out of memory, INTERNAL for other torch errors. Callbacks: on_log,
// on_progress after every batch, on_samples_trained, on_epoch_end(metrics,
// "") after every epoch (no checkpoints), should_stop polled before every
// batch; on_checkpoint and should_hand_back are not used.
absl::StatusOr<TextTrainOutput> RunTextTrainingJob(
    const TextTrainInput& input, const TextDataset& train,
    const TextDataset* test, const TrainerCallbacks& callbacks);

// The model options of a JobSpec's `text` block with the defaults filled in
// (pooling "mean", max_tokens kDefaultMaxTokens, conv_channels 256).
// INVALID_ARGUMENT naming the field for an unknown pooling or a value out
// of range.
absl::StatusOr<TextModelOptions> TextModelOptionsOf(
    const tlserve::v1::TextSpec& text);

// What a model is served with (Model.text): pooling and max_tokens, and
// conv_channels for conv pooling.
tlserve::v1::TextSpec TextSpecOf(const TextModelOptions& options);

// A text job as the worker runs one: input.spec (its `text` block through
// TextModelOptionsOf), input.backbone_path (the word vectors),
// input.work_dir and num_threads; the stored dataset's splits (an empty
// test split: evaluate on validation). The output is an image job's:
// result (unknown_token_rate set), artifact_path, class_names, no
// input_spec. `served_as` receives TextSpecOf the options used.
absl::StatusOr<TrainJobOutput> RunTextJob(const TrainJobInput& input,
                                          const TextDatasetSplits& data,
                                          const TrainerCallbacks& callbacks,
                                          tlserve::v1::TextSpec* served_as);

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_TEXT_TRAINER_H_
