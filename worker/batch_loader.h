#ifndef TLSERVE_WORKER_BATCH_LOADER_H_
#define TLSERVE_WORKER_BATCH_LOADER_H_

// Prepares an epoch's training batches ahead of the model on loader
// threads: gathers the epoch's samples, augments them (random-resized crop,
// flip; common/image_transforms, plain C++, so the threads never enter
// torch's intra-op pool) and converts them to the model's float input.
//
// The epoch's order and every batch's augmentation are drawn from RNGs
// derived from (job seed, epoch, batch), not from one running generator:
// batches can be made in any order on any thread with the same result,
// and a job resumed in the middle of an epoch needs only the position.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::worker {

// Independent RNG streams of one job.
enum class RngStream : uint32_t { kShuffle = 1, kAugment = 2 };
std::mt19937_64 DerivedRng(uint64_t seed, RngStream stream, int64_t epoch,
                           int64_t batch = 0);

// The order in which epoch `epoch` visits n training samples.
std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int epoch);

struct LoadedBatch {
  at::Tensor inputs;  // float: [B, C, H, W] in [0, 1], or [B, D] features
  at::Tensor labels;  // int64 [B]
};

struct BatchLoaderOptions {
  // uint8 [N, C, H, W] images, or float [N, D] cached features (taken as
  // they are: features are never augmented).
  at::Tensor inputs;
  at::Tensor labels;           // int64 [N]
  std::vector<int64_t> order;  // EpochOrder
  int64_t batch_size = 32;
  int64_t num_batches = 0;  // batch b covers order[b * batch_size, ...)
  int64_t first_batch = 0;  // > 0 when resuming inside the epoch
  tlserve::v1::AugmentSpec augment;
  uint64_t seed = 0;
  int epoch = 1;
  // Loader threads; 0 prepares each batch on the caller's thread in Next().
  int threads = 1;
  // Batches prepared ahead of the one being trained; 0: 2 per thread.
  int prefetch = 0;
  // Prepared images go to page-locked host memory, from which a copy to a
  // GPU can run asynchronously (non_blocking) while the host goes on. Only
  // where LibTorch has CUDA.
  bool pin_memory = false;
};

class BatchLoader {
 public:
  explicit BatchLoader(BatchLoaderOptions options);
  ~BatchLoader();  // stops and joins the loader threads
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The next batch in order (first_batch, first_batch + 1, ...). Errors
  // (e.g. out of memory) come back here, for the batch that hit them.
  absl::StatusOr<LoadedBatch> Next();

  // Seconds Next() spent waiting for a batch that was not ready yet.
  double wait_seconds() const { return wait_seconds_; }

 private:
  absl::StatusOr<LoadedBatch> Make(int64_t batch) const;
  void Work();

  const BatchLoaderOptions options_;
  const int64_t prefetch_;
  double wait_seconds_ = 0;
  absl::Mutex mu_;
  int64_t next_to_claim_ ABSL_GUARDED_BY(mu_);
  int64_t next_to_return_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  struct Made {
    absl::Status status;
    LoadedBatch batch;
  };
  std::map<int64_t, Made> ready_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_BATCH_LOADER_H_
