#include "worker/batch_loader.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/image_transforms.h"
#include "worker/torch_status.h"

namespace tlserve::worker {

std::mt19937_64 DerivedRng(uint64_t seed, RngStream stream, int64_t epoch,
                           int64_t batch) {
  std::seed_seq sequence{static_cast<uint32_t>(seed),
                         static_cast<uint32_t>(seed >> 32),
                         static_cast<uint32_t>(stream),
                         static_cast<uint32_t>(epoch),
                         static_cast<uint32_t>(batch),
                         static_cast<uint32_t>(static_cast<uint64_t>(batch) >> 32)};
  return std::mt19937_64(sequence);
}

std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int epoch) {
  std::vector<int64_t> order(static_cast<size_t>(std::max<int64_t>(n, 0)));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng = DerivedRng(seed, RngStream::kShuffle, epoch);
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

BatchLoader::BatchLoader(BatchLoaderOptions options)
    : options_(std::move(options)),
      prefetch_(options_.prefetch > 0 ? options_.prefetch
                                      : 2 * std::max(1, options_.threads)),
      next_to_claim_(options_.first_batch),
      next_to_return_(options_.first_batch) {
  for (int t = 0; t < options_.threads; ++t) {
    threads_.emplace_back([this] { Work(); });
  }
}

BatchLoader::~BatchLoader() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& thread : threads_) thread.join();
}

void BatchLoader::Work() {
  for (;;) {
    int64_t batch;
    {
      absl::MutexLock lock(&mu_);
      auto can_claim = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || next_to_claim_ >= options_.num_batches ||
               next_to_claim_ < next_to_return_ + prefetch_;
      };
      mu_.Await(absl::Condition(&can_claim));
      if (stop_ || next_to_claim_ >= options_.num_batches) return;
      batch = next_to_claim_++;
    }
    absl::StatusOr<LoadedBatch> made = Make(batch);
    Made slot;
    if (made.ok()) {
      slot.batch = *std::move(made);
    } else {
      slot.status = made.status();
    }
    absl::MutexLock lock(&mu_);
    ready_.emplace(batch, std::move(slot));
  }
}

absl::StatusOr<LoadedBatch> BatchLoader::Next() {
  int64_t batch;
  {
    absl::MutexLock lock(&mu_);
    batch = next_to_return_;
  }
  if (batch >= options_.num_batches) {
    return absl::OutOfRangeError(
        absl::StrCat("the epoch has only ", options_.num_batches, " batches"));
  }
  if (threads_.empty()) {
    absl::MutexLock lock(&mu_);
    ++next_to_return_;
    return Make(batch);
  }
  const auto start = std::chrono::steady_clock::now();
  absl::MutexLock lock(&mu_);
  auto is_ready = [this, batch]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return ready_.count(batch) > 0;
  };
  mu_.Await(absl::Condition(&is_ready));
  wait_seconds_ += std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count();
  auto it = ready_.find(batch);
  Made made = std::move(it->second);
  ready_.erase(it);
  ++next_to_return_;
  if (!made.status.ok()) return made.status;
  return std::move(made.batch);
}

absl::StatusOr<LoadedBatch> BatchLoader::Make(int64_t batch) const {
  const int64_t n = static_cast<int64_t>(options_.order.size());
  const int64_t begin = batch * options_.batch_size;
  const int64_t end = std::min(n, begin + options_.batch_size);
  return TorchGuardOr<LoadedBatch>(
      absl::StrCat("preparing batch ", batch + 1, " of epoch ", options_.epoch),
      [&]() -> absl::StatusOr<LoadedBatch> {
        const at::Tensor index =
            at::tensor(std::vector<int64_t>(options_.order.begin() + begin,
                                            options_.order.begin() + end),
                       at::kLong);
        LoadedBatch out;
        out.labels = options_.labels.index_select(0, index);
        if (options_.pin_memory) out.labels = out.labels.pin_memory();
        const at::Tensor& inputs = options_.inputs;
        if (inputs.scalar_type() != at::kByte) {
          out.inputs = inputs.index_select(0, index);
          if (options_.pin_memory) out.inputs = out.inputs.pin_memory();
          return out;
        }
        const int channels = static_cast<int>(inputs.size(1));
        const int height = static_cast<int>(inputs.size(2));
        const int width = static_cast<int>(inputs.size(3));
        const int64_t plane = int64_t{height} * width;
        const int64_t stride = channels * plane;
        out.inputs = at::empty(
            {end - begin, channels, height, width},
            at::TensorOptions(at::kFloat).pinned_memory(options_.pin_memory));
        float* dst = out.inputs.data_ptr<float>();
        const uint8_t* images = inputs.data_ptr<uint8_t>();

        const tlserve::v1::AugmentSpec& augment = options_.augment;
        const bool crop = augment.random_resized_crop();
        const bool mirror = augment.horizontal_flip();
        const double scale_min =
            augment.crop_scale_min() > 0
                ? std::min(1.0, static_cast<double>(augment.crop_scale_min()))
                : 0.08;
        std::mt19937_64 rng =
            DerivedRng(options_.seed, RngStream::kAugment, options_.epoch, batch);
        std::uniform_real_distribution<double> unit(0.0, 1.0);
        std::vector<uint8_t> scratch(static_cast<size_t>(stride));
        for (int64_t i = begin; i < end; ++i) {
          const uint8_t* image = images + options_.order[i] * stride;
          float* target = dst + (i - begin) * stride;
          const CropBox box = crop ? RandomResizedCropBox(height, width, scale_min, rng)
                                   : CropBox{0, 0, height, width};
          const bool flip = mirror && unit(rng) < 0.5;
          if (box.height != height || box.width != width || flip) {
            CropResize(ImageView{image, channels, height, width, /*planar=*/true},
                       box, height, width, flip, scratch.data());
            image = scratch.data();
          }
          ToFloat(image, channels, plane, target);
        }
        return out;
      });
}

}  // namespace tlserve::worker
