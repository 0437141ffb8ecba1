#ifndef TLSERVE_WORKER_CHECKPOINT_H_
#define TLSERVE_WORKER_CHECKPOINT_H_

// Training checkpoints: everything needed to continue a job bit for bit
// after a worker is lost. One file (torch::serialize archive) holding
//   model      every named parameter and buffer of the model (a dict),
//   optimizer  the optimizer's state (torch::optim serialization),
//   epoch      the last completed epoch,
//   torch_rng  the state of LibTorch's default CPU generator (dropout),
//   host_rng   the trainer's own std::mt19937_64 state (shuffles), as text.
//   extras     optional: early-stopping state and the best epoch's weights.
// Written atomically (temp file, fsync, rename), so a reader sees a whole
// checkpoint or the previous one.

#include <torch/script.h>

#include <cstdint>
#include <random>
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

// Saves the state described above to `path`.
absl::Status SaveCheckpoint(const std::string& path, int epoch,
                            const torch::jit::Module& model,
                            const torch::optim::Optimizer& optimizer,
                            const std::mt19937_64& host_rng,
                            const CheckpointExtras* extras = nullptr);

// Restores a checkpoint written by SaveCheckpoint into a model and an
// optimizer built the same way as the saved ones (same parameter names,
// shapes and parameter groups), sets the torch CPU generator and
// `host_rng`, and returns the stored epoch. INVALID_ARGUMENT when the file
// is not a checkpoint or does not fit the model; NOT_FOUND when missing.
absl::StatusOr<int> LoadCheckpoint(const std::string& path,
                                   torch::jit::Module& model,
                                   torch::optim::Optimizer& optimizer,
                                   std::mt19937_64& host_rng,
                                   CheckpointExtras* extras = nullptr);

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_CHECKPOINT_H_
