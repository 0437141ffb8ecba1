#ifndef TLSERVE_WORKER_TRAINER_H_
#define TLSERVE_WORKER_TRAINER_H_

// Runs one training job (FINE_TUNE or PRETRAIN) with LibTorch. Plain C++
// API: no torch types cross this header, so the connection code that calls
// it compiles without torch headers.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/dataset_loader.h"
#include "tlserve/v1/common.pb.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::worker {

struct TrainerCallbacks {
  // After every batch (the caller throttles what it sends on).
  std::function<void(const tlserve::v1::Progress&)> on_progress;
  // After every epoch. `checkpoint_path` names the checkpoint written at
  // its end, or is empty when this epoch's end took none (see
  // JobSpec.checkpoint_every_seconds). An error stops the job with that
  // error (e.g. the checkpoint could not be stored).
  std::function<absl::Status(const tlserve::v1::EpochMetrics&,
                             const std::string& checkpoint_path)>
      on_epoch_end;
  // A checkpoint taken inside an epoch (JobSpec.checkpoint_every_seconds):
  // `epoch` is the last completed epoch, `batch` the batches of the next
  // one already trained. An error stops the job with that error.
  std::function<absl::Status(int epoch, int64_t batch,
                             const std::string& checkpoint_path)>
      on_checkpoint;
  // For metrics: samples of each batch trained on, and each checkpoint
  // file's write time and size. May be empty.
  std::function<void(int64_t samples)> on_samples_trained;
  std::function<void(absl::Duration took, int64_t bytes)> on_checkpoint_written;
  // Human-readable notes for the job's events.
  std::function<void(const std::string&)> on_log;
  // Polled once per batch: true stops the job (cancelled) within a batch.
  std::function<bool()> should_stop;
  // Polled once per batch: true (the worker is stopping) stores a
  // checkpoint of the position reached, unless the latest one already is
  // there, and stops the job with `handed_back` set, so that another
  // worker resumes it from that checkpoint.
  std::function<bool()> should_hand_back;
  // Before every forward pass of training, with its rows (a batch, or a
  // micro-batch of it). A fault seam: tests throw an out-of-memory error
  // from it to drive JobSpec.shrink_micro_batch_on_oom without a GPU.
  std::function<void(int64_t rows)> before_pass;
};

struct TrainJobInput {
  tlserve::v1::JobSpec spec;
  // Scratch folder for checkpoint and export files (exists, writable).
  std::string work_dir;
  // FINE_TUNE: the TorchScript backbone file and its input spec.
  std::string backbone_path;
  tlserve::v1::InputSpec backbone_input_spec;
  // A checkpoint from an earlier attempt, or "": start from epoch 0.
  std::string resume_checkpoint_path;
  // Epoch stored in that checkpoint (the first epoch to run is this + 1).
  int resume_epoch = 0;
  // DOMAIN_ADAPT: the target dataset (its training labels are not read).
  const DecodedDataset* target_data = nullptr;
  int num_threads = 0;  // 0: leave LibTorch's setting
  // The worker's --device ("cpu", "cuda:N"): where a job whose
  // spec.device is "cuda" runs.
  std::string worker_device = "cpu";
};

struct TrainJobOutput {
  bool cancelled = false;
  // With cancelled: stopped by should_hand_back, its position checkpointed.
  bool handed_back = false;
  // Test metrics on the dataset's test split (or the validation split when
  // there is none), feature_dim and blocks of the backbone.
  tlserve::v1::JobResult result;
  // FINE_TUNE: the exported classifier (one TorchScript file, [N,C,H,W]
  // floats in [0,1] -> logits). PRETRAIN: the backbone file ([N,C,H,W] ->
  // [N,D]).
  std::string artifact_path;
  tlserve::v1::InputSpec input_spec;
  std::vector<std::string> class_names;
};

// Never throws: LibTorch errors become statuses (OOM: RESOURCE_EXHAUSTED,
// bad spec or data: INVALID_ARGUMENT, others: INTERNAL).
absl::StatusOr<TrainJobOutput> RunTrainingJob(const TrainJobInput& input,
                                              const DecodedDataset& data,
                                              const TrainerCallbacks& callbacks);

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_TRAINER_H_
