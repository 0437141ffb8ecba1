#ifndef TLSERVE_WORKER_DATA_TENSORS_H_
#define TLSERVE_WORKER_DATA_TENSORS_H_

// Turns a decoded dataset into the tensors a job trains and evaluates on,
// and single images into model input. Training and inference share
// ImageToTensor, so a PNG sent to Predict is preprocessed exactly like the
// training images were.
//
// Images are kept as uint8 [N, C, H, W] at the input spec's size (a
// quarter of the memory of floats) and scaled to [0, 1] per batch with
// ToModelInput.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dataset_loader.h"
#include "common/image.h"
#include "tlserve/v1/common.pb.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::worker {

struct SplitTensors {
  at::Tensor images;  // uint8 [N, C, H, W]
  at::Tensor labels;  // int64 [N], in [0, number of classes)
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

struct TrainingData {
  // The model's classes: the subset's names in the subset's order.
  std::vector<std::string> class_names;
  SplitTensors train;
  SplitTensors val;
  // The dataset's test split restricted to the subset, or a copy of `val`
  // when the dataset has no test split (test_is_val).
  SplitTensors test;
  bool test_is_val = false;
};

// Applies the data spec:
//  - class_subset: keep these labels (remapped to 0..K-1 in its order);
//  - samples_per_class: the first k samples of each class after a shuffle
//    seeded with `seed`;
//  - validation_fraction: a stratified, seeded split of the kept samples
//    (every class with 2+ samples gives at least one when the fraction is
//    > 0 and keeps at least one for training);
//  - max_test_samples: a seeded sample of the test split, in dataset order.
// Images are converted with ImageToTensor. INVALID_ARGUMENT for a bad spec
// (unknown or repeated subset label, fraction outside [0, 1)), a label
// outside the class list, an unusable image, or no training samples left.
absl::StatusOr<TrainingData> PrepareTrainingData(
    const DecodedDataset& data, const tlserve::v1::DataSpec& spec,
    const tlserve::v1::InputSpec& input_spec, uint64_t seed);

// One image as uint8 [C, H, W] with the spec's channels and size: bilinear
// resize (align_corners=false) when the size differs, gray -> RGB by
// repetition, RGB -> gray by the channel mean. INVALID_ARGUMENT for an
// image whose pixel buffer does not match its geometry.
absl::StatusOr<at::Tensor> ImageToTensor(const Image& image,
                                         const tlserve::v1::InputSpec& spec);

// uint8 [N, C, H, W] -> float in [0, 1]. Like ChannelMeanStd, this one
// calls torch directly: run it inside TorchGuard.
at::Tensor ToModelInput(const at::Tensor& images);

// The input spec a PRETRAIN job uses: fields set in `requested` win; a
// zero channels/height/width comes from the training images (3 channels
// when any image is RGB, else 1; the size of the first image); mean and
// std stay empty for the caller to fill with ChannelMeanStd.
absl::StatusOr<tlserve::v1::InputSpec> ResolveInputSpec(
    const DecodedDataset& data, const tlserve::v1::InputSpec& requested);

// Per-channel mean and std of uint8 images [N, C, H, W] (the first 10k),
// in [0, 1] units (std floored at 1e-3 so a constant channel cannot divide by
// zero).
void ChannelMeanStd(const at::Tensor& images, std::vector<float>* mean,
                    std::vector<float>* std);

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_DATA_TENSORS_H_
