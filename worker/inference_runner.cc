#include "worker/inference_runner.h"

#include <torch/script.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/image.h"
#include "common/status_macros.h"
#include "worker/data_tensors.h"
#include "worker/model_builder.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

// Inputs per forward: bounds the activation memory of one large request.
constexpr int64_t kMaxForwardBatch = 256;
constexpr int kDefaultTopK = 5;

struct LoadedModel {
  std::string path;
  torch::jit::Module module;
};

bool IsLittleEndian() {
  const uint16_t probe = 1;
  uint8_t first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

// request.tensor -> float [N, C, H, W] in [0, 1].
absl::StatusOr<at::Tensor> TensorInput(const tlserve::v1::RawTensor& raw,
                                       const tlserve::v1::InputSpec& spec) {
  const std::vector<int64_t> want = {spec.channels(), spec.height(),
                                     spec.width()};
  if (raw.shape_size() != 4 || raw.shape(0) < 1 || raw.shape(1) != want[0] ||
      raw.shape(2) != want[1] || raw.shape(3) != want[2]) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor: shape [", absl::StrJoin(raw.shape(), ", "),
                     "] does not match the model's input [N, ",
                     absl::StrJoin(want, ", "), "] with N >= 1"));
  }
  size_t element_size = 0;
  at::ScalarType type = at::kFloat;
  if (raw.dtype() == "FP32") {
    element_size = 4;
  } else if (raw.dtype() == "UINT8") {
    element_size = 1;
    type = at::kByte;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor: dtype '", raw.dtype(), "' is not FP32 or UINT8"));
  }
  int64_t count = 1;
  for (int64_t d : raw.shape()) {
    if (d > (int64_t{1} << 40) / std::max<int64_t>(count, 1)) {
      return absl::InvalidArgumentError("tensor: shape is too large");
    }
    count *= d;
  }
  if (raw.contents().size() != static_cast<size_t>(count) * element_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor: contents hold ", raw.contents().size(), " bytes; shape [",
        absl::StrJoin(raw.shape(), ", "), "] of ", raw.dtype(), " needs ",
        count * static_cast<int64_t>(element_size)));
  }
  if (type == at::kFloat && !IsLittleEndian()) {
    return absl::UnimplementedError(
        "tensor: big-endian hosts are not supported");
  }
  return TorchGuardOr<at::Tensor>(
      "reading the request tensor", [&]() -> absl::StatusOr<at::Tensor> {
        std::vector<int64_t> shape(raw.shape().begin(), raw.shape().end());
        at::Tensor t = at::empty(shape, type);
        std::memcpy(t.data_ptr(), raw.contents().data(), raw.contents().size());
        if (type == at::kByte) return ToModelInput(t);
        return t;
      });
}

// request.images -> float [N, C, H, W] in [0, 1], preprocessed like the
// training images (ImageToTensor).
absl::StatusOr<at::Tensor> ImageInputs(
    const google::protobuf::RepeatedPtrField<std::string>& images,
    const tlserve::v1::InputSpec& spec) {
  std::vector<at::Tensor> converted;
  for (int i = 0; i < images.size(); ++i) {
    absl::StatusOr<Image> image = DecodeImage(images[i]);
    if (!image.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("image ", i, ": ", image.status().message()));
    }
    absl::StatusOr<at::Tensor> t = ImageToTensor(*image, spec);
    if (!t.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("image ", i, ": ", t.status().message()));
    }
    converted.push_back(*std::move(t));
  }
  return TorchGuardOr<at::Tensor>("stacking the request images",
                                  [&]() -> absl::StatusOr<at::Tensor> {
                                    return ToModelInput(at::stack(converted));
                                  });
}

}  // namespace

struct InferenceRunner::Impl {
  explicit Impl(Options o) : options(o) {}

  // The model for model_id, loading (and evicting the least recently used)
  // when needed. The returned pointer keeps the module alive while a
  // request runs, even if it is evicted meanwhile.
  absl::StatusOr<std::shared_ptr<const LoadedModel>> Get(
      const std::string& model_id, const std::string& path) {
    {
      absl::MutexLock lock(&mu);
      auto it = models.find(model_id);
      if (it != models.end() && it->second->path == path) {
        lru.remove(model_id);
        lru.push_front(model_id);
        return it->second;
      }
    }
    // Loading takes a while (0.15 s for resnet18): done outside the lock so
    // requests for loaded models are not held up. Two concurrent first
    // requests may both load; the second insert wins, which is harmless.
    std::error_code error;
    if (!std::filesystem::exists(path, error)) {
      return absl::NotFoundError(
          absl::StrCat("model ", model_id, ": file ", path, " not found"));
    }
    auto loaded = std::make_shared<LoadedModel>();
    loaded->path = path;
    RETURN_IF_ERROR(TorchGuard(
        absl::StrCat("loading model ", model_id, " from ", path), [&] {
          loaded->module = torch::jit::load(path);
          loaded->module.eval();
          return absl::OkStatus();
        }));
    absl::MutexLock lock(&mu);
    models[model_id] = loaded;
    lru.remove(model_id);
    lru.push_front(model_id);
    while (lru.size() > std::max<size_t>(1, options.max_loaded_models)) {
      models.erase(lru.back());
      lru.pop_back();
    }
    return std::shared_ptr<const LoadedModel>(loaded);
  }

  const Options options;
  mutable absl::Mutex mu;
  absl::flat_hash_map<std::string, std::shared_ptr<LoadedModel>> models
      ABSL_GUARDED_BY(mu);
  // Most recently used first. Short (max_loaded_models), so list::remove
  // is fine.
  std::list<std::string> lru ABSL_GUARDED_BY(mu);
};

InferenceRunner::InferenceRunner(Options options)
    : impl_(std::make_unique<Impl>(options)) {}

InferenceRunner::~InferenceRunner() = default;

std::vector<std::string> InferenceRunner::LoadedModelIds() const {
  absl::MutexLock lock(&impl_->mu);
  return std::vector<std::string>(impl_->lru.begin(), impl_->lru.end());
}

absl::StatusOr<tlserve::v1::PredictResponse> InferenceRunner::Predict(
    const std::string& model_id, const std::string& model_path,
    const tlserve::v1::InputSpec& input_spec,
    const std::vector<std::string>& class_names,
    const tlserve::v1::PredictRequest& request) {
  RETURN_IF_ERROR(Annotate(ValidateInputSpec(input_spec),
                           absl::StrCat("model ", model_id)));
  const bool has_images = !request.images().empty();
  const bool has_tensor =
      request.has_tensor() && (request.tensor().shape_size() > 0 ||
                               !request.tensor().contents().empty());
  if (!has_images && !has_tensor) {
    return absl::InvalidArgumentError(
        "request has no inputs: send images or a tensor");
  }
  if (has_images && has_tensor) {
    return absl::InvalidArgumentError(
        "request has both images and a tensor: send one of them");
  }
  if (request.top_k() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k ", request.top_k(), " is negative"));
  }

  // Loaded outside InferenceMode so the module's tensors are ordinary ones.
  ASSIGN_OR_RETURN(std::shared_ptr<const LoadedModel> model,
                   impl_->Get(model_id, model_path));
  // InferenceMode is thread-local: set on the thread that runs the model.
  c10::InferenceMode inference_mode;
  at::Tensor inputs;
  if (has_images) {
    ASSIGN_OR_RETURN(inputs, ImageInputs(request.images(), input_spec));
  } else {
    ASSIGN_OR_RETURN(inputs, TensorInput(request.tensor(), input_spec));
  }

  at::Tensor probabilities;
  RETURN_IF_ERROR(TorchGuard(absl::StrCat("running model ", model_id), [&] {
    std::vector<at::Tensor> parts;
    // forward() is not const, but running a TorchScript module in eval
    // mode from several threads at once is safe.
    torch::jit::Module module = model->module;
    for (int64_t start = 0; start < inputs.size(0); start += kMaxForwardBatch) {
      const int64_t end = std::min(inputs.size(0), start + kMaxForwardBatch);
      torch::jit::IValue out = module.forward({inputs.slice(0, start, end)});
      if (!out.isTensor() || out.toTensor().dim() != 2) {
        return absl::FailedPreconditionError(absl::StrCat(
            "model ", model_id, " does not return [N, classes] logits"));
      }
      parts.push_back(out.toTensor().to(at::kFloat).softmax(1));
    }
    probabilities = at::cat(parts).contiguous();
    return absl::OkStatus();
  }));

  const int64_t num_classes = probabilities.size(1);
  if (!class_names.empty() &&
      static_cast<int64_t>(class_names.size()) != num_classes) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", model_id, " outputs ", num_classes,
                     " classes but has ", class_names.size(), " class names"));
  }
  const int64_t top_k = std::min<int64_t>(
      request.top_k() == 0 ? kDefaultTopK : request.top_k(), num_classes);

  tlserve::v1::PredictResponse response;
  response.set_model_id(model_id);
  const float* data = probabilities.data_ptr<float>();
  std::vector<int> order(num_classes);
  for (int64_t i = 0; i < probabilities.size(0); ++i) {
    const float* row = data + i * num_classes;
    tlserve::v1::Prediction* prediction = response.add_predictions();
    prediction->mutable_probabilities()->Add(row, row + num_classes);
    for (int c = 0; c < num_classes; ++c) order[c] = c;
    // Ties keep the lower class index first, so results are stable.
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                      [row](int a, int b) {
                        return row[a] > row[b] || (row[a] == row[b] && a < b);
                      });
    for (int64_t j = 0; j < top_k; ++j) {
      tlserve::v1::ClassScore* score = prediction->add_top();
      score->set_index(order[j]);
      score->set_label(class_names.empty() ? std::to_string(order[j])
                                           : class_names[order[j]]);
      score->set_probability(row[order[j]]);
    }
  }
  return response;
}

}  // namespace tlserve::worker
