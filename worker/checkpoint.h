#ifndef TLSERVE_WORKER_CHECKPOINT_H_
#define TLSERVE_WORKER_CHECKPOINT_H_

// Training checkpoints: everything needed to continue a job bit for bit
// after a worker is lost, at an epoch's end or inside an epoch. One file
// (torch::serialize archive) holding
//   model      the named parameters and buffers the job can change (a
//              dict); `unchanged` lists the rest, which the resumed job
//              rebuilds identically from the backbone file and the seed
//              (a frozen backbone is most of a model, and of the bytes),
//   optimizer  the optimizer's state (torch::optim serialization),
//   cursor     the position: last completed epoch, batches of the next one
//              already trained, and that partial epoch's running sums,
//   torch_rng  the state of LibTorch's default CPU generator (dropout).
//   extras     optional: early-stopping state and the best epoch's weights.
// Shuffles and augmentation need no saved state: they are derived from
// (seed, epoch, batch) (worker/batch_loader.h).
// Written to a temporary name and renamed, so a reader sees a whole
// checkpoint or the previous one. Not fsync'ed: the durable copy is the
// one the worker uploads to the server; the local file only has to survive
// the process, not the machine.

#include <torch/script.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace tlserve::worker {

// What the trainer carries across epochs besides model and optimizer, so
// early stopping resumes exactly.
struct CheckpointExtras {
  int best_epoch = 0;
  double best_value = 0;
  int epochs_since_best = 0;
  // Parameters and buffers of the best epoch; empty when not kept.
  std::vector<std::pair<std::string, at::Tensor>> best_weights;
};

// Where in the run a checkpoint was taken.
struct TrainingCursor {
  int epoch = 0;        // the last completed epoch
  int64_t batch = 0;    // batches of epoch + 1 already trained
  // Running sums of that partial epoch, so its metrics come out whole.
  double loss_sum = 0;
  int64_t correct = 0;
  int64_t seen = 0;
};

// True for a tensor name the job has never changed (left out of the file).
using UnchangedTensor = std::function<bool(const std::string& name)>;

// Saves the state described above to `path`. `unchanged` may be empty:
// every tensor is stored.
absl::Status SaveCheckpoint(const std::string& path,
                            const TrainingCursor& cursor,
                            const torch::jit::Module& model,
                            const torch::optim::Optimizer& optimizer,
                            const UnchangedTensor& unchanged = {},
                            const CheckpointExtras* extras = nullptr);

// Restores a checkpoint written by SaveCheckpoint into a model and an
// optimizer built the same way as the saved ones (same parameter names,
// shapes and parameter groups; tensors the file lists as unchanged are
// left as built), sets the torch CPU generator and returns the cursor.
// INVALID_ARGUMENT when the file is not a checkpoint or does not fit the
// model; NOT_FOUND when missing.
absl::StatusOr<TrainingCursor> LoadCheckpoint(const std::string& path,
                                              torch::jit::Module& model,
                                              torch::optim::Optimizer& optimizer,
                                              CheckpointExtras* extras = nullptr);

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_CHECKPOINT_H_
