#include "worker/inference_runner.h"

#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
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
  int64_t bytes = 0;
  // Exported by tlserve (TlClassifier): features() and a "head" submodule,
  // so Embed works.
  bool has_features = false;
};

bool IsLittleEndian() {
  const uint16_t probe = 1;
  uint8_t first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

// request.tensor -> float [N, C, H, W]: FP32 as sent, UINT8 scaled to
// [0, 1].
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


// One item's inputs -> float [n, C, H, W].
absl::StatusOr<at::Tensor> ItemInputs(const tlserve::v1::PredictRequest& request,
                                      const tlserve::v1::InputSpec& spec) {
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
  if (has_images) return ImageInputs(request.images(), spec);
  return TensorInput(request.tensor(), spec);
}

int64_t ModuleBytes(const torch::jit::Module& module) {
  int64_t bytes = 0;
  for (const at::Tensor& p : module.parameters()) bytes += p.nbytes();
  for (const at::Tensor& b : module.buffers()) bytes += b.nbytes();
  return bytes;
}

// Runs `fn` on row chunks of `inputs` and concatenates the outputs, which
// must be [rows, K].
absl::StatusOr<at::Tensor> RunChunked(
    const at::Tensor& inputs, const std::string& what,
    const std::function<torch::jit::IValue(const at::Tensor&)>& fn) {
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < inputs.size(0); start += kMaxForwardBatch) {
    const int64_t end = std::min(inputs.size(0), start + kMaxForwardBatch);
    torch::jit::IValue out = fn(inputs.slice(0, start, end));
    if (!out.isTensor() || out.toTensor().dim() != 2 ||
        out.toTensor().size(0) != end - start) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, " does not return a [N, K] tensor"));
    }
    parts.push_back(out.toTensor().to(at::kFloat));
  }
  return parts.size() == 1 ? parts[0].contiguous() : at::cat(parts).contiguous();
}

void FillPrediction(const float* row, int64_t num_classes, int64_t top_k,
                    const std::vector<std::string>& class_names,
                    std::vector<int>* order,
                    tlserve::v1::Prediction* prediction) {
  prediction->mutable_probabilities()->Add(row, row + num_classes);
  order->resize(num_classes);
  for (int c = 0; c < num_classes; ++c) (*order)[c] = c;
  // Ties keep the lower class index first, so results are stable.
  std::partial_sort(order->begin(), order->begin() + top_k, order->end(),
                    [row](int a, int b) {
                      return row[a] > row[b] || (row[a] == row[b] && a < b);
                    });
  for (int64_t j = 0; j < top_k; ++j) {
    const int c = (*order)[j];
    tlserve::v1::ClassScore* score = prediction->add_top();
    score->set_index(c);
    score->set_label(class_names.empty() ? std::to_string(c) : class_names[c]);
    score->set_probability(row[c]);
  }
}

bool WantsPrediction(const tlserve::v1::InferenceItem& item) {
  return !item.embed() || item.also_predict();
}

void SetError(const absl::Status& status, tlserve::v1::InferenceResult* result) {
  result->Clear();
  result->set_code(static_cast<int>(status.code()));
  result->set_message(std::string(status.message()));
}

absl::Status ResultStatus(const tlserve::v1::InferenceResult& result) {
  return absl::Status(static_cast<absl::StatusCode>(result.code()),
                      result.message());
}

}  // namespace

struct InferenceRunner::Impl {
  explicit Impl(Options o) : options(o) {}

  // The model for model_id, loading (and evicting the least recently used)
  // when needed. The returned pointer keeps the module alive while a
  // batch runs, even if it is evicted meanwhile.
  absl::StatusOr<std::shared_ptr<const LoadedModel>> Get(const ModelFile& file) {
    {
      absl::MutexLock lock(&mu);
      auto it = models.find(file.model_id);
      if (it != models.end() && it->second->path == file.path) {
        lru.remove(file.model_id);
        lru.push_front(file.model_id);
        return std::shared_ptr<const LoadedModel>(it->second);
      }
    }
    // Loading takes a while (0.15 s for resnet18): done outside the lock so
    // batches for loaded models are not held up. Two concurrent first
    // batches may both load; the second insert wins, which is harmless.
    std::error_code error;
    if (!std::filesystem::exists(file.path, error)) {
      return absl::NotFoundError(absl::StrCat(
          "model ", file.model_id, ": file ", file.path, " not found"));
    }
    auto loaded = std::make_shared<LoadedModel>();
    loaded->path = file.path;
    RETURN_IF_ERROR(TorchGuard(
        absl::StrCat("loading model ", file.model_id, " from ", file.path),
        [&] {
          loaded->module = torch::jit::load(file.path);
          loaded->module.eval();
          loaded->bytes = ModuleBytes(loaded->module);
          loaded->has_features =
              loaded->module.find_method("features").has_value() &&
              loaded->module.hasattr("head");
          return absl::OkStatus();
        }));
    if (options.warm_up) {
      RETURN_IF_ERROR(TorchGuard(
          absl::StrCat("warming up model ", file.model_id), [&] {
            c10::InferenceMode inference_mode;
            const auto& spec = file.input_spec;
            torch::jit::Module module = loaded->module;
            module.forward(
                {at::zeros({1, spec.channels(), spec.height(), spec.width()})});
            return absl::OkStatus();
          }));
    }
    absl::MutexLock lock(&mu);
    auto old = models.find(file.model_id);
    if (old != models.end()) loaded_bytes -= old->second->bytes;
    models[file.model_id] = loaded;
    loaded_bytes += loaded->bytes;
    lru.remove(file.model_id);
    lru.push_front(file.model_id);
    while (lru.size() > 1 &&
           (lru.size() > std::max<size_t>(1, options.max_loaded_models) ||
            loaded_bytes > options.max_loaded_bytes)) {
      auto victim = models.find(lru.back());
      loaded_bytes -= victim->second->bytes;
      models.erase(victim);
      lru.pop_back();
    }
    return std::shared_ptr<const LoadedModel>(loaded);
  }

  // Runs `model` over the items at `indices` (all for this model).
  void RunModel(const ModelFile& file,
                const google::protobuf::RepeatedPtrField<
                    tlserve::v1::InferenceItem>& items,
                const std::vector<int>& indices,
                std::vector<tlserve::v1::InferenceResult>* results) {
    auto fail_all = [&](const absl::Status& status) {
      for (int i : indices) SetError(status, &(*results)[i]);
    };
    absl::Status spec_ok = Annotate(ValidateInputSpec(file.input_spec),
                                    absl::StrCat("model ", file.model_id));
    if (!spec_ok.ok()) return fail_all(spec_ok);
    // Loaded outside InferenceMode so the module's tensors are ordinary ones.
    absl::StatusOr<std::shared_ptr<const LoadedModel>> model = Get(file);
    if (!model.ok()) return fail_all(model.status());

    // InferenceMode and the thread count are per thread: set both on the
    // thread that runs the model.
    c10::InferenceMode inference_mode;
    if (options.num_threads > 0 && at::get_num_threads() != options.num_threads) {
      at::set_num_threads(options.num_threads);
    }
    std::vector<at::Tensor> inputs;
    std::vector<int> ready;        // items whose inputs converted
    std::vector<int64_t> offsets;  // their first row in the batch
    int64_t rows = 0;
    bool any_embed = false;
    bool any_predict = false;
    for (int i : indices) {
      absl::StatusOr<at::Tensor> t =
          ItemInputs(items[i].request(), file.input_spec);
      if (!t.ok()) {
        SetError(t.status(), &(*results)[i]);
        continue;
      }
      if (items[i].embed() && !(*model)->has_features) {
        SetError(absl::FailedPreconditionError(absl::StrCat(
                     "model ", file.model_id,
                     " was not exported by tlserve (no features() method), "
                     "so it cannot embed; use Predict")),
                 &(*results)[i]);
        continue;
      }
      any_embed = any_embed || items[i].embed();
      any_predict = any_predict || WantsPrediction(items[i]);
      ready.push_back(i);
      offsets.push_back(rows);
      rows += t->size(0);
      inputs.push_back(*std::move(t));
    }
    if (ready.empty()) return;

    at::Tensor features;
    at::Tensor probabilities;
    absl::Status ran = TorchGuard(
        absl::StrCat("running model ", file.model_id), [&]() -> absl::Status {
          at::Tensor batch = inputs.size() == 1 ? inputs[0] : at::cat(inputs);
          // forward() is not const, but running a TorchScript module in eval
          // mode from several threads at once is safe.
          torch::jit::Module module = (*model)->module;
          at::Tensor logits;
          if (any_embed) {
            ASSIGN_OR_RETURN(
                features,
                RunChunked(batch, absl::StrCat("model ", file.model_id,
                                               " features()"),
                           [&](const at::Tensor& x) {
                             return module.run_method("features", x);
                           }));
            if (any_predict) {
              torch::jit::Module head = module.attr("head").toModule();
              ASSIGN_OR_RETURN(
                  logits, RunChunked(features,
                                     absl::StrCat("model ", file.model_id,
                                                  " head"),
                                     [&](const at::Tensor& x) {
                                       return head.forward({x});
                                     }));
            }
          } else {
            ASSIGN_OR_RETURN(
                logits,
                RunChunked(batch, absl::StrCat("model ", file.model_id),
                           [&](const at::Tensor& x) {
                             return module.forward({x});
                           }));
          }
          if (any_predict) probabilities = logits.softmax(1).contiguous();
          return absl::OkStatus();
        });
    if (!ran.ok()) {
      for (int i : ready) SetError(ran, &(*results)[i]);
      return;
    }

    const int64_t num_classes = any_predict ? probabilities.size(1) : 0;
    if (any_predict && !file.class_names.empty() &&
        static_cast<int64_t>(file.class_names.size()) != num_classes) {
      const absl::Status mismatch = absl::FailedPreconditionError(absl::StrCat(
          "model ", file.model_id, " outputs ", num_classes,
          " classes but has ", file.class_names.size(), " class names"));
      for (int i : ready) {
        if (WantsPrediction(items[i])) SetError(mismatch, &(*results)[i]);
      }
    }
    std::vector<int> order;
    for (size_t k = 0; k < ready.size(); ++k) {
      const int i = ready[k];
      tlserve::v1::InferenceResult& result = (*results)[i];
      if (result.code() != 0) continue;
      const int64_t n = inputs[k].size(0);
      if (items[i].embed()) {
        tlserve::v1::EmbedResponse* out = result.mutable_embedding();
        out->set_model_id(file.model_id);
        const int64_t dim = features.size(1);
        const float* data = features.data_ptr<float>() + offsets[k] * dim;
        for (int64_t r = 0; r < n; ++r) {
          out->add_embeddings()->mutable_values()->Add(data + r * dim,
                                                       data + (r + 1) * dim);
        }
      }
      if (!WantsPrediction(items[i])) continue;
      const int top_k_asked = items[i].request().top_k();
      const int64_t top_k = std::min<int64_t>(
          top_k_asked == 0 ? kDefaultTopK : top_k_asked, num_classes);
      tlserve::v1::PredictResponse* out = result.mutable_prediction();
      out->set_model_id(file.model_id);
      const float* data =
          probabilities.data_ptr<float>() + offsets[k] * num_classes;
      for (int64_t r = 0; r < n; ++r) {
        FillPrediction(data + r * num_classes, num_classes, top_k,
                       file.class_names, &order, out->add_predictions());
      }
    }
  }

  const Options options;
  mutable absl::Mutex mu;
  absl::flat_hash_map<std::string, std::shared_ptr<LoadedModel>> models
      ABSL_GUARDED_BY(mu);
  int64_t loaded_bytes ABSL_GUARDED_BY(mu) = 0;
  // Most recently used first. Short (max_loaded_models), so list::remove
  // is fine.
  std::list<std::string> lru ABSL_GUARDED_BY(mu);
};

InferenceRunner::InferenceRunner(Options options)
    : impl_(std::make_unique<Impl>(options)) {}

InferenceRunner::~InferenceRunner() = default;

void InferenceRunner::Unload(const std::string& model_id) {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->models.find(model_id);
  if (it == impl_->models.end()) return;
  impl_->loaded_bytes -= it->second->bytes;
  impl_->models.erase(it);
  impl_->lru.remove(model_id);
}

std::vector<std::string> InferenceRunner::LoadedModelIds() const {
  absl::MutexLock lock(&impl_->mu);
  return std::vector<std::string>(impl_->lru.begin(), impl_->lru.end());
}

std::vector<InferenceRunner::LoadedModelInfo> InferenceRunner::LoadedModels()
    const {
  absl::MutexLock lock(&impl_->mu);
  std::vector<LoadedModelInfo> out;
  for (const std::string& id : impl_->lru) {
    LoadedModelInfo info;
    info.model_id = id;
    info.bytes = impl_->models.at(id)->bytes;
    out.push_back(std::move(info));
  }
  return out;
}

std::vector<tlserve::v1::InferenceResult> InferenceRunner::RunBatch(
    const std::vector<ModelFile>& models,
    const google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem>&
        items) {
  std::vector<tlserve::v1::InferenceResult> results(items.size());
  std::vector<std::vector<int>> by_model(models.size());
  for (int i = 0; i < items.size(); ++i) {
    const int m = items[i].model_index();
    if (m < 0 || m >= static_cast<int>(models.size())) {
      SetError(absl::InternalError(absl::StrCat(
                   "batch item ", i, " names model ", m, " of ",
                   models.size())),
               &results[i]);
      continue;
    }
    by_model[m].push_back(i);
  }
  for (size_t m = 0; m < models.size(); ++m) {
    if (!by_model[m].empty()) {
      impl_->RunModel(models[m], items, by_model[m], &results);
    } else {
      // A warm-up (the model was just deployed): load it, nobody waits.
      (void)impl_->Get(models[m]);
    }
  }
  return results;
}

absl::StatusOr<tlserve::v1::PredictResponse> InferenceRunner::Predict(
    const ModelFile& model, const tlserve::v1::PredictRequest& request) {
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  *items.Add()->mutable_request() = request;
  std::vector<tlserve::v1::InferenceResult> results = RunBatch({model}, items);
  if (results[0].code() != 0) return ResultStatus(results[0]);
  return std::move(*results[0].mutable_prediction());
}

absl::StatusOr<tlserve::v1::EmbedResponse> InferenceRunner::Embed(
    const ModelFile& model, const tlserve::v1::EmbedRequest& request) {
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  tlserve::v1::InferenceItem* item = items.Add();
  item->set_embed(true);
  *item->mutable_request()->mutable_images() = request.images();
  if (request.has_tensor()) {
    *item->mutable_request()->mutable_tensor() = request.tensor();
  }
  std::vector<tlserve::v1::InferenceResult> results = RunBatch({model}, items);
  if (results[0].code() != 0) return ResultStatus(results[0]);
  return std::move(*results[0].mutable_embedding());
}

}  // namespace tlserve::worker
