#include "worker/data_tensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/data_split.h"
#include "common/input_fit.h"
#include "common/status_macros.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

absl::Status CheckImage(const Image& image) {
  if (image.channels != 1 && image.channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("image has ", image.channels, " channels; need 1 or 3"));
  }
  if (image.height < 1 || image.width < 1 ||
      image.pixels.size() != static_cast<size_t>(image.height) *
                                 static_cast<size_t>(image.width) *
                                 static_cast<size_t>(image.channels)) {
    return absl::InvalidArgumentError(
        absl::StrCat("image of ", image.height, "x", image.width, "x",
                     image.channels, " holds ", image.pixels.size(), " bytes"));
  }
  return absl::OkStatus();
}

// Writes `image` as [C, H, W] uint8 into out (spec-sized, contiguous),
// fitted by the spec's fit (FitImage: ResizeBilinear, the very code
// LoadDataset fits images with, so a dataset fitted at load time converts
// to the same bytes as one fitted here).
void ConvertInto(const Image& image, const tlserve::v1::InputSpec& spec,
                 uint8_t* out) {
  const int h = spec.height();
  const int w = spec.width();
  if (h <= 0 || w <= 0) return;  // nothing to write
  Image resized;
  const Image* sized = &image;
  if (image.height != h || image.width != w ||
      FitMode(spec) != tlserve::v1::InputFit::STRETCH) {
    resized = FitImage(image, spec);
    sized = &resized;
  }
  const int c_out = spec.channels();
  const int c_in = sized->channels;
  const size_t plane = static_cast<size_t>(h) * w;
  const uint8_t* src = sized->pixels.data();
  for (size_t i = 0; i < plane; ++i) {
    const uint8_t* px = src + i * c_in;
    if (c_in == c_out) {
      for (int c = 0; c < c_out; ++c) out[c * plane + i] = px[c];
    } else if (c_in == 1) {
      for (int c = 0; c < c_out; ++c) out[c * plane + i] = px[0];
    } else {
      const float mean = (static_cast<float>(px[0]) + px[1] + px[2]) / 3.0f;
      out[i] = static_cast<uint8_t>(std::nearbyint(mean));
    }
  }
}

absl::StatusOr<SplitTensors> MakeSplit(const LabelledImages& source,
                                       const std::vector<size_t>& indices,
                                       const std::vector<int>& label_map,
                                       const tlserve::v1::InputSpec& spec,
                                       const char* split_name) {
  const int64_t n = static_cast<int64_t>(indices.size());
  SplitTensors split;
  split.images =
      at::empty({n, spec.channels(), spec.height(), spec.width()}, at::kByte);
  split.labels = at::empty({n}, at::kLong);
  uint8_t* images = split.images.data_ptr<uint8_t>();
  int64_t* labels = split.labels.data_ptr<int64_t>();
  const size_t stride =
      static_cast<size_t>(spec.channels()) * spec.height() * spec.width();
  for (int64_t i = 0; i < n; ++i) {
    const size_t index = indices[i];
    const Image& image = source.images[index];
    absl::Status status = CheckImage(image);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(split_name, " image ", index, ": ", status.message()));
    }
    ConvertInto(image, spec, images + i * stride);
    labels[i] = label_map[source.labels[index]];
  }
  return split;
}

absl::Status CheckLabels(const LabelledImages& split, size_t num_classes,
                         const char* split_name) {
  if (split.images.size() != split.labels.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(split_name, ": ", split.images.size(), " images but ",
                     split.labels.size(), " labels"));
  }
  return CheckSplitLabels(split.labels, num_classes, split_name);
}

}  // namespace

absl::StatusOr<at::Tensor> ImageToTensor(const Image& image,
                                         const tlserve::v1::InputSpec& spec) {
  RETURN_IF_ERROR(CheckImage(image));
  return TorchGuardOr<at::Tensor>(
      "converting an image", [&]() -> absl::StatusOr<at::Tensor> {
        at::Tensor out = at::empty(
            {spec.channels(), spec.height(), spec.width()}, at::kByte);
        ConvertInto(image, spec, out.data_ptr<uint8_t>());
        return out;
      });
}

at::Tensor ToModelInput(const at::Tensor& images) {
  return images.to(at::kFloat).div_(255.0);
}

absl::StatusOr<TrainingData> PrepareTrainingData(
    const DecodedDataset& data, const tlserve::v1::DataSpec& spec,
    const tlserve::v1::InputSpec& input_spec, uint64_t seed) {
  const size_t num_classes = data.class_names.size();
  if (num_classes == 0) {
    return absl::InvalidArgumentError("dataset has no class names");
  }
  RETURN_IF_ERROR(CheckLabels(data.train, num_classes, "train split"));
  RETURN_IF_ERROR(CheckLabels(data.test, num_classes, "test split"));
  // Which records go where is shared with the server's checks at
  // VALIDATING (common/data_split.h), so both see the same split.
  ASSIGN_OR_RETURN(SplitIndices split,
                   SplitDataset(data.train.labels, data.test.labels,
                                num_classes, spec, seed));
  TrainingData out;
  for (int32_t label : split.classes) {
    out.class_names.push_back(data.class_names[label]);
  }
  const std::vector<int>& label_map = split.label_map;

  RETURN_IF_ERROR(TorchGuard("converting the dataset to tensors", [&] {
    ASSIGN_OR_RETURN(out.train, MakeSplit(data.train, split.train, label_map,
                                          input_spec, "train"));
    ASSIGN_OR_RETURN(out.val, MakeSplit(data.train, split.val, label_map,
                                        input_spec, "train"));
    if (data.test.labels.empty()) {
      out.test = out.val;
      out.test_is_val = true;
    } else {
      ASSIGN_OR_RETURN(out.test, MakeSplit(data.test, split.test, label_map,
                                           input_spec, "test"));
    }
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<tlserve::v1::InputSpec> ResolveInputSpec(
    const DecodedDataset& data, const tlserve::v1::InputSpec& requested) {
  if (data.train.images.empty()) {
    return absl::InvalidArgumentError("dataset has no training images");
  }
  tlserve::v1::InputSpec spec = requested;
  if (spec.channels() == 0) {
    bool any_rgb = false;
    for (const Image& image : data.train.images) {
      if (image.channels == 3) {
        any_rgb = true;
        break;
      }
    }
    spec.set_channels(any_rgb ? 3 : 1);
  }
  if (spec.height() == 0) spec.set_height(data.train.images[0].height);
  if (spec.width() == 0) spec.set_width(data.train.images[0].width);
  return spec;
}

void ChannelMeanStd(const at::Tensor& images, std::vector<float>* mean,
                    std::vector<float>* std) {
  mean->clear();
  std->clear();
  const int64_t channels = images.size(1);
  // The first 10k images estimate the statistics well enough and bound the
  // memory; doubles keep the sums exact.
  const int64_t n = std::min<int64_t>(images.size(0), 10000);
  at::Tensor flat = images.slice(0, 0, n)
                        .transpose(0, 1)
                        .reshape({channels, -1})
                        .to(at::kDouble)
                        .div_(255.0);
  at::Tensor m = flat.mean(1);
  at::Tensor s = flat.std(1, /*unbiased=*/false);
  for (int64_t c = 0; c < channels; ++c) {
    mean->push_back(static_cast<float>(m[c].item<double>()));
    std->push_back(std::max(1e-3f, static_cast<float>(s[c].item<double>())));
  }
}

}  // namespace tlserve::worker
