#include "worker/inference_runner.h"

#include <ATen/Parallel.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <torch/script.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/image.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "worker/data_tensors.h"
#include "worker/intra_op_threads.h"
#include "worker/thread_choice.h"
#include "common/text_tokenizer.h"
#include "common/word_vectors.h"
#include "worker/model_builder.h"
#include "worker/text_model.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

// Inputs per forward: bounds the activation memory of one large request.
constexpr int64_t kMaxForwardBatch = 256;
constexpr int kDefaultTopK = 5;

// The backbone that the models with one ModelFile.shared_backbone key run
// on: the first such model's whole TlClassifier, whose features() serves
// them all. That model's head stays in it, uncounted, until the backbone
// goes (when the last model using it is dropped and no batch holds it).
// How a model's (or shared backbone's) batches choose their intra-op
// threads.
struct ThreadPolicy {
  // Without `choice`: batches of up to this many rows run on one thread
  // (Options.single_thread_max_rows, or 0 where one thread is not tried).
  int64_t fixed_max_rows = 0;
  // The default: chosen from timings of real batches.
  std::unique_ptr<ThreadChoice> choice;

  int64_t OneThreadMaxRows() const {
    return choice != nullptr ? choice->OneThreadMaxRows() : fixed_max_rows;
  }
};

struct SharedBackbone {
  std::string key;
  torch::jit::Module module;
  // Options.optimize: a frozen, optimised copy whose features() answers
  // for `module`'s (checked equal on a probe input at load). Most models
  // on a shared backbone are alone on it, and its features() is nearly all
  // of their compute.
  std::optional<torch::jit::Module> optimized;
  // The `backbone` submodule's parameters and buffers plus mean and std
  // (twice with the optimised copy).
  int64_t bytes = 0;
  // Whether a batch runs its features() on one thread.
  ThreadPolicy threads;

  // The module whose features() a batch runs.
  torch::jit::Module Features() const {
    return optimized.has_value() ? *optimized : module;
  }
};

// What turns a text model's inputs into ids: the words of its vocab
// attribute (no vectors) and its max_tokens.
struct TextInput {
  WordVectors words;
  TextVocabulary vocab{words};
  int max_tokens = kDefaultMaxTokens;
};

struct LoadedModel {
  std::string path;
  // ModelFile.shared_backbone it was loaded with; asked with another key,
  // the model loads again.
  std::string requested_key;
  // Standalone: the whole module. On a shared backbone: its head only (the
  // rest of its file is dropped).
  torch::jit::Module module;
  // Standalone: all parameters and buffers. Shared: the head's.
  int64_t bytes = 0;
  // Exported by tlserve (TlClassifier): features() and a "head" submodule,
  // so Embed works.
  bool has_features = false;
  // Null when standalone.
  std::shared_ptr<const SharedBackbone> backbone;
  // Text models only.
  std::unique_ptr<const TextInput> text;
  // Options.optimize: forward() of this copy answers Predict-only batches.
  std::optional<torch::jit::Module> optimized;
  // Standalone: whether a batch runs on one thread.
  ThreadPolicy threads;

  const ThreadPolicy& Threads() const {
    return backbone != nullptr ? backbone->threads : threads;
  }
};

// How long `run` takes on one row of `probe`, on `threads` threads, the
// second time (the first after a change of count is slow). Runs under
// InferenceMode; LibTorch errors propagate.
absl::Duration OneRowForward(const at::Tensor& probe, int threads,
                             const std::function<void(const at::Tensor&)>& run) {
  c10::InferenceMode inference_mode;
  ScopedIntraOpThreads scoped(threads);
  const at::Tensor row = probe.slice(0, 0, 1);
  run(row);
  const absl::Time start = absl::Now();
  run(row);
  return absl::Now() - start;
}

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


// A text model's item: texts -> int64 ids [n, T] (T >= 1).
absl::StatusOr<at::Tensor> TextItemInputs(
    const tlserve::v1::PredictRequest& request, const std::string& model_id,
    const TextInput& text) {
  if (request.texts().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", model_id, " is a text model: send texts, not images or a "
        "tensor"));
  }
  if (request.top_k() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k ", request.top_k(), " is negative"));
  }
  const std::vector<std::string> texts(request.texts().begin(),
                                       request.texts().end());
  ASSIGN_OR_RETURN(EncodedTexts encoded,
                   EncodeTexts(texts, text.vocab, text.max_tokens));
  return encoded.ids;
}

// Rows of token ids of different widths as one [N, T] batch: padding at
// the end of a row leaves its features unchanged (worker/text_model.h).
at::Tensor CatPadded(const std::vector<at::Tensor>& rows) {
  if (rows.size() == 1) return rows[0];
  int64_t width = 0;
  for (const at::Tensor& r : rows) width = std::max(width, r.size(1));
  std::vector<at::Tensor> padded;
  padded.reserve(rows.size());
  for (const at::Tensor& r : rows) {
    padded.push_back(r.size(1) == width
                         ? r
                         : at::constant_pad_nd(r, {0, width - r.size(1)},
                                               kPaddingTokenId));
  }
  return at::cat(padded);
}

// One item's inputs -> float [n, C, H, W].
absl::StatusOr<at::Tensor> ItemInputs(const tlserve::v1::PredictRequest& request,
                                      const tlserve::v1::InputSpec& spec) {
  if (!request.texts().empty()) {
    return absl::InvalidArgumentError(
        "texts are for text models; this model takes images or a tensor");
  }
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

// Probabilities and the top_k classes of one head's row.
void FillScores(const float* row, int64_t num_classes, int64_t top_k,
                const std::vector<std::string>& class_names,
                std::vector<int>* order,
                google::protobuf::RepeatedField<float>* probabilities,
                google::protobuf::RepeatedPtrField<tlserve::v1::ClassScore>* top) {
  probabilities->Add(row, row + num_classes);
  order->resize(num_classes);
  for (int c = 0; c < num_classes; ++c) (*order)[c] = c;
  // Ties keep the lower class index first, so results are stable.
  std::partial_sort(order->begin(), order->begin() + top_k, order->end(),
                    [row](int a, int b) {
                      return row[a] > row[b] || (row[a] == row[b] && a < b);
                    });
  for (int64_t j = 0; j < top_k; ++j) {
    const int c = (*order)[j];
    tlserve::v1::ClassScore* score = top->Add();
    score->set_index(c);
    score->set_label(class_names.empty() ? std::to_string(c) : class_names[c]);
    score->set_probability(row[c]);
  }
}

// Output widths of a model's heads: its classes, then each task's (a
// MULTITASK model's forward() returns them side by side).
std::vector<int64_t> HeadWidths(const InferenceRunner::ModelFile& file) {
  std::vector<int64_t> widths = {static_cast<int64_t>(file.class_names.size())};
  for (const tlserve::v1::TaskSpec& task : file.tasks) {
    widths.push_back(task.class_names_size());
  }
  return widths;
}

// Softmax over each head's own outputs. Logits whose width does not fit
// the heads get one softmax; FillResults then reports the mismatch.
at::Tensor HeadProbabilities(const at::Tensor& logits,
                             const InferenceRunner::ModelFile& file) {
  if (file.tasks.empty()) return logits.softmax(1).contiguous();
  const std::vector<int64_t> widths = HeadWidths(file);
  int64_t total = 0;
  for (int64_t w : widths) total += w;
  if (logits.dim() != 2 || logits.size(1) != total) {
    return logits.softmax(1).contiguous();
  }
  std::vector<at::Tensor> parts;
  int64_t start = 0;
  for (int64_t w : widths) {
    parts.push_back(logits.slice(1, start, start + w).softmax(1));
    start += w;
  }
  return at::cat(parts, 1).contiguous();
}

// Laid out like MakeClassifier's TlClassifier: features(), submodules
// backbone and head, tensors mean and std.
bool IsClassifier(const torch::jit::Module& module) {
  auto has = [&module](const char* name, bool want_module) {
    if (!module.hasattr(name)) return false;
    const torch::jit::IValue value = module.attr(name);
    return want_module ? value.isModule() : value.isTensor();
  };
  return module.find_method("features").has_value() && has("backbone", true) &&
         has("head", true) && has("mean", false) && has("std", false);
}

bool SameTensor(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes().equals(b.sizes()) &&
         a.device() == b.device() && at::equal(a, b);
}

// The parameters, then the buffers, of a module, with their names.
std::vector<std::pair<std::string, at::Tensor>> NamedWeights(
    const torch::jit::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    out.emplace_back(absl::StrCat("parameter ", p.name), p.value);
  }
  for (const auto& b : module.named_buffers(/*recurse=*/true)) {
    out.emplace_back(absl::StrCat("buffer ", b.name), b.value);
  }
  return out;
}

// Two TlClassifiers: the same backbone parameters and buffers (names,
// dtypes, shapes, values) and the same mean and std.
bool SameBackboneWeights(const torch::jit::Module& a,
                         const torch::jit::Module& b) {
  const auto wa = NamedWeights(a.attr("backbone").toModule());
  const auto wb = NamedWeights(b.attr("backbone").toModule());
  if (wa.size() != wb.size()) return false;
  for (size_t i = 0; i < wa.size(); ++i) {
    if (wa[i].first != wb[i].first || !SameTensor(wa[i].second, wb[i].second)) {
      return false;
    }
  }
  return SameTensor(a.attr("mean").toTensor(), b.attr("mean").toTensor()) &&
         SameTensor(a.attr("std").toTensor(), b.attr("std").toTensor());
}

// A fixed input in [0, 1) of two rows shaped by `spec` (valid), varied
// enough that different functions give different outputs.
at::Tensor ProbeInput(const tlserve::v1::InputSpec& spec) {
  const int64_t n = 2 * spec.channels() * spec.height() * spec.width();
  return at::frac(at::arange(n, at::kDouble).mul_(0.6180339887498949))
      .to(at::kFloat)
      .reshape({2, spec.channels(), spec.height(), spec.width()});
}

// Both tensors of the same shape and equal to float rounding.
bool Close(const torch::jit::IValue& a, const torch::jit::IValue& b) {
  if (!a.isTensor() || !b.isTensor()) return false;
  const at::Tensor x = a.toTensor().to(at::kFloat);
  const at::Tensor y = b.toTensor().to(at::kFloat);
  return x.sizes().equals(y.sizes()) && at::allclose(x, y, 1e-4, 1e-5);
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

  // One model's part of a batch.
  struct ModelRun {
    const ModelFile* file = nullptr;
    std::vector<int> indices;  // its items
    std::shared_ptr<const LoadedModel> model;
    std::vector<at::Tensor> inputs;  // of the items in `ready`
    std::vector<int> ready;          // items whose inputs converted
    std::vector<int64_t> offsets;    // their first row among this model's
    int64_t rows = 0;
    bool any_embed = false;
    bool any_predict = false;
    at::Tensor features;       // [rows, D] when computed
    at::Tensor probabilities;  // [rows, K] when any_predict
  };

  // The model for file.model_id, loading (and evicting the least recently
  // used) when needed. The returned pointer keeps the module (and its
  // shared backbone) alive while a batch runs, even if it is evicted
  // meanwhile.
  absl::StatusOr<std::shared_ptr<const LoadedModel>> Get(const ModelFile& file) {
    if (auto hit = Lookup(file)) return hit;
    // Loading takes a while (0.15 s for resnet18): done outside `mu` so
    // batches for loaded models are not held up, but one at a time, so two
    // first loads of models on one backbone cannot both become its copy.
    absl::MutexLock load_lock(&load_mu);
    if (auto hit = Lookup(file)) return hit;  // loaded while we waited
    const absl::Time start = absl::Now();
    ASSIGN_OR_RETURN(std::shared_ptr<LoadedModel> loaded, Load(file));
    Log(LogSeverity::kInfo, "model loaded",
        {{"model_id", file.model_id},
         {"seconds", absl::ToDoubleSeconds(absl::Now() - start)},
         {"bytes", loaded->bytes},
         {"shared_backbone",
          loaded->backbone != nullptr ? loaded->backbone->key : ""},
         {"optimized", loaded->optimized.has_value() ||
                           (loaded->backbone != nullptr &&
                            loaded->backbone->optimized.has_value())},
         {"threads", loaded->Threads().choice != nullptr
                         ? std::string("chosen per batch size")
                         : absl::StrCat("one up to ",
                                        loaded->Threads().fixed_max_rows,
                                        " rows")}});
    {
      absl::MutexLock lock(&mu);
      Insert(file.model_id, loaded);
    }
#if defined(__GLIBC__)
    // A model that joined a shared backbone freed its own copy of it (and
    // an evicted model may have gone too); glibc keeps freed memory for
    // reuse, so without this the process would not shrink.
    if (loaded->backbone != nullptr) malloc_trim(0);
#endif
    return std::shared_ptr<const LoadedModel>(loaded);
  }

  // The loaded model for `file` (same path and key), marked most recently
  // used; null when not loaded.
  std::shared_ptr<const LoadedModel> Lookup(const ModelFile& file) {
    absl::MutexLock lock(&mu);
    auto it = models.find(file.model_id);
    if (it == models.end() || it->second->path != file.path ||
        it->second->requested_key != file.shared_backbone) {
      return nullptr;
    }
    lru.remove(file.model_id);
    lru.push_front(file.model_id);
    return it->second;
  }

  // Reads the file; on the key's shared backbone when Share allows, else
  // standalone (warmed up when options.warm_up). Caller holds load_mu.
  absl::StatusOr<std::shared_ptr<LoadedModel>> Load(const ModelFile& file) {
    std::error_code error;
    if (!std::filesystem::exists(file.path, error)) {
      return absl::NotFoundError(absl::StrCat(
          "model ", file.model_id, ": file ", file.path, " not found"));
    }
    auto loaded = std::make_shared<LoadedModel>();
    loaded->path = file.path;
    loaded->requested_key = file.shared_backbone;
    torch::jit::Module module;
    int64_t bytes = 0;
    RETURN_IF_ERROR(TorchGuard(
        absl::StrCat("loading model ", file.model_id, " from ", file.path),
        [&] {
          module = torch::jit::load(file.path);
          module.eval();
          bytes = ModuleBytes(module);
          loaded->has_features = module.find_method("features").has_value() &&
                                 module.hasattr("head");
          return absl::OkStatus();
        }));
    if (file.text) {
      // Its vocabulary and token cut come with the file, so inference
      // tokenises exactly as its training did.
      auto text = std::make_unique<TextInput>();
      ASSIGN_OR_RETURN(text->words, VocabIndexOf(module));
      RETURN_IF_ERROR(TorchGuard(
          absl::StrCat("reading max_tokens of text model ", file.model_id),
          [&] {
            if (module.hasattr("max_tokens")) {
              text->max_tokens =
                  static_cast<int>(module.attr("max_tokens").toInt());
            }
            return absl::OkStatus();
          }));
      loaded->text = std::move(text);
      loaded->module = module;
      loaded->bytes = bytes;
      if (options.warm_up) {
        RETURN_IF_ERROR(TorchGuard(
            absl::StrCat("warming up text model ", file.model_id), [&] {
              c10::InferenceMode inference_mode;
              module.forward({at::zeros({1, 1}, at::kLong)});
              return absl::OkStatus();
            }));
      }
      return loaded;
    }
    if (!file.shared_backbone.empty() && loaded->has_features) {
      ASSIGN_OR_RETURN(const bool shared, Share(file, module, loaded.get()));
      if (shared) return loaded;
    }
    loaded->module = module;
    loaded->bytes = bytes;
    if (options.optimize) Optimize(file, loaded.get());
    if (options.warm_up) {
      RETURN_IF_ERROR(TorchGuard(
          absl::StrCat("warming up model ", file.model_id), [&] {
            c10::InferenceMode inference_mode;
            const auto& spec = file.input_spec;
            module.forward(
                {at::zeros({1, spec.channels(), spec.height(), spec.width()})});
            return absl::OkStatus();
          }));
    }
    if (ValidateInputSpec(file.input_spec).ok()) {
      torch::jit::Module runs =
          loaded->optimized.has_value() ? *loaded->optimized : module;
      loaded->threads = MakeThreadPolicy(
          file, [&runs](const at::Tensor& x) { runs.forward({x}); });
    }
    return loaded;
  }

  // The thread policy of a model (or backbone) whose batches run `run`:
  // the option's fixed size when set; else chosen from real batches,
  // except where one thread is not worth trying: the runner has one
  // anyway, the count cannot be set per thread, or a one-row forward takes
  // over kSlowForward (the threads' hand-offs are noise there, and a batch
  // tried on one thread would cost a caller that much more).
  ThreadPolicy MakeThreadPolicy(
      const ModelFile& file,
      const std::function<void(const at::Tensor&)>& run) const {
    constexpr absl::Duration kSlowForward = absl::Milliseconds(10);
    ThreadPolicy policy;
    if (options.single_thread_max_rows >= 0) {
      policy.fixed_max_rows = options.single_thread_max_rows;
      return policy;
    }
    const int threads =
        options.num_threads > 0 ? options.num_threads : at::get_num_threads();
    if (threads <= 1 || !ScopedIntraOpThreads::Supported()) return policy;
    absl::StatusOr<absl::Duration> took = TorchGuardOr<absl::Duration>(
        absl::StrCat("timing model ", file.model_id, " on one row"),
        [&]() -> absl::StatusOr<absl::Duration> {
          return OneRowForward(ProbeInput(file.input_spec), threads, run);
        });
    if (took.ok() && *took <= kSlowForward) {
      policy.choice = std::make_unique<ThreadChoice>();
    }
    return policy;
  }

  // Whether a batch of `rows` rows runs on one intra-op thread; counts the
  // ones that do.
  bool OnOneThread(const ThreadPolicy& policy, int64_t rows) {
    const bool one =
        policy.choice != nullptr
            ? policy.choice->OneThread(rows)
            : rows > 0 && rows <= policy.fixed_max_rows;
    if (one) single_thread_runs.fetch_add(1, std::memory_order_relaxed);
    return one;
  }

  // A batch's compute time, for the choice of the next ones.
  static void RecordThreads(const ThreadPolicy& policy, int64_t rows,
                            bool one_thread, absl::Time began) {
    if (policy.choice != nullptr) {
      policy.choice->Record(rows, one_thread, absl::Now() - began);
    }
  }

  // Sets loaded->optimized when optimize_for_inference makes a copy whose
  // forward() equals the model's on a probe input (to float rounding);
  // otherwise, or on any error, the model runs as exported.
  static void Optimize(const ModelFile& file, LoadedModel* loaded) {
    if (!ValidateInputSpec(file.input_spec).ok()) return;
    absl::StatusOr<bool> made = TorchGuardOr<bool>(
        absl::StrCat("optimizing model ", file.model_id),
        [&]() -> absl::StatusOr<bool> {
          // Freezing clones the module first: the exported one is intact.
          torch::jit::Module exported = loaded->module;
          torch::jit::Module optimized =
              torch::jit::optimize_for_inference(exported);
          c10::InferenceMode inference_mode;
          const at::Tensor probe = ProbeInput(file.input_spec);
          if (!Close(optimized.forward({probe}),
                     loaded->module.forward({probe}))) {
            return false;
          }
          // Frozen weights are constants, not parameters: count the copy
          // as the size of the model it was made from.
          loaded->bytes += ModuleBytes(loaded->module);
          loaded->optimized = std::move(optimized);
          return true;
        });
    (void)made;  // not optimized: served as exported
  }

  // A frozen copy of `module` made by optimize_for_inference, keeping
  // features(), if on a probe input its features() equal `module`'s (to
  // float rounding); nullopt otherwise or on any error: the backbone then
  // runs as exported.
  static std::optional<torch::jit::Module> OptimizedFeatures(
      torch::jit::Module module, const ModelFile& file) {
    absl::StatusOr<std::optional<torch::jit::Module>> made =
        TorchGuardOr<std::optional<torch::jit::Module>>(
            absl::StrCat("optimizing the backbone of model ", file.model_id),
            [&]() -> absl::StatusOr<std::optional<torch::jit::Module>> {
              // Freezing clones the module first: the exported one is
              // intact. Frozen here, not by optimize_for_inference, whose
              // C++ freeze keeps forward() alone.
              torch::jit::Module optimized = torch::jit::freeze(
                  module, std::vector<std::string>{"features"});
              optimized =
                  torch::jit::optimize_for_inference(optimized, {"features"});
              c10::InferenceMode inference_mode;
              const at::Tensor probe = ProbeInput(file.input_spec);
              if (!Close(optimized.run_method("features", probe),
                         module.run_method("features", probe))) {
                return std::nullopt;
              }
              return optimized;
            });
    return made.ok() ? *std::move(made) : std::nullopt;
  }

  // Puts `loaded` on the shared backbone of file.shared_backbone: the one
  // loaded for that key if `module` matches it (same backbone weights and
  // buffers, mean and std; and on a probe input, its features() equal the
  // shared ones and its forward() equals its head over them), or else
  // `module` itself becomes the key's backbone (if its forward() is its
  // head over its features()). The probe also warms the model up. False,
  // with `loaded` untouched, when the model must run standalone. Caller
  // holds load_mu, so the key's entry cannot be replaced meanwhile.
  absl::StatusOr<bool> Share(const ModelFile& file, torch::jit::Module module,
                             LoadedModel* loaded) {
    if (!ValidateInputSpec(file.input_spec).ok()) return false;
    std::shared_ptr<const SharedBackbone> existing;
    {
      absl::MutexLock lock(&mu);
      auto it = shared.find(file.shared_backbone);
      if (it != shared.end()) existing = it->second.backbone;
    }
    return TorchGuardOr<bool>(
        absl::StrCat("checking model ", file.model_id, " for shared backbone '",
                     file.shared_backbone, "'"),
        [&]() -> absl::StatusOr<bool> {
          if (!IsClassifier(module)) return false;
          if (existing != nullptr &&
              !SameBackboneWeights(module, existing->module)) {
            return false;
          }
          torch::jit::Module head = module.attr("head").toModule();
          {
            c10::InferenceMode inference_mode;
            const at::Tensor probe = ProbeInput(file.input_spec);
            torch::jit::Module reference =
                existing != nullptr ? existing->module : module;
            const torch::jit::IValue features =
                reference.run_method("features", probe);
            if (!features.isTensor()) return false;
            if (existing != nullptr &&
                !Close(module.run_method("features", probe), features)) {
              return false;
            }
            if (!Close(module.forward({probe}), head.forward({features}))) {
              return false;
            }
          }
          std::shared_ptr<const SharedBackbone> backbone = existing;
          if (backbone == nullptr) {
            auto created = std::make_shared<SharedBackbone>();
            created->key = file.shared_backbone;
            created->module = module;
            created->bytes = ModuleBytes(module.attr("backbone").toModule()) +
                             module.attr("mean").toTensor().nbytes() +
                             module.attr("std").toTensor().nbytes();
            if (options.optimize) {
              created->optimized = OptimizedFeatures(module, file);
              if (created->optimized.has_value()) created->bytes *= 2;
            }
            torch::jit::Module features = created->Features();
            created->threads = MakeThreadPolicy(
                file, [&features](const at::Tensor& x) {
                  features.run_method("features", x);
                });
            backbone = std::move(created);
          }
          loaded->module = head;
          loaded->bytes = ModuleBytes(head);
          loaded->backbone = std::move(backbone);
          return true;
        });
  }

  // Adds a loaded model (replacing an older load of the same id) and
  // evicts past the bounds, never the model just added.
  void Insert(const std::string& model_id, std::shared_ptr<LoadedModel> loaded)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto old = models.find(model_id);
    if (old != models.end()) {
      Release(*old->second);
      models.erase(old);
    }
    loaded_bytes += loaded->bytes;
    if (loaded->backbone != nullptr) {
      // Only loads (serialised) add entries, so an entry for this key
      // holds this backbone; one removed since Share looked is re-added.
      SharedUse& use = shared[loaded->backbone->key];
      if (use.users == 0) {
        use.backbone = loaded->backbone;
        loaded_bytes += use.backbone->bytes;
      }
      ++use.users;
    }
    models[model_id] = std::move(loaded);
    lru.remove(model_id);
    lru.push_front(model_id);
    while (lru.size() > 1 &&
           (lru.size() > std::max<size_t>(1, options.max_loaded_models) ||
            loaded_bytes > options.max_loaded_bytes)) {
      auto victim = models.find(lru.back());
      Release(*victim->second);
      models.erase(victim);
      lru.pop_back();
    }
  }

  // Takes a model's bytes off the count, and its shared backbone's when it
  // was the last loaded model using it.
  void Release(const LoadedModel& model) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    loaded_bytes -= model.bytes;
    if (model.backbone == nullptr) return;
    auto it = shared.find(model.backbone->key);
    if (it == shared.end() || it->second.backbone != model.backbone) return;
    if (--it->second.users == 0) {
      loaded_bytes -= model.backbone->bytes;
      shared.erase(it);
    }
  }

  // Converts the inputs of run->indices; an item that fails gets its
  // error.
  void PrepareInputs(
      const google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem>&
          items,
      ModelRun* run, std::vector<tlserve::v1::InferenceResult>* results) {
    for (int i : run->indices) {
      absl::StatusOr<at::Tensor> t =
          run->model->text != nullptr
              ? TextItemInputs(items[i].request(), run->file->model_id,
                               *run->model->text)
              : ItemInputs(items[i].request(), run->file->input_spec);
      if (!t.ok()) {
        SetError(t.status(), &(*results)[i]);
        continue;
      }
      if (items[i].embed() && !run->model->has_features) {
        SetError(absl::FailedPreconditionError(absl::StrCat(
                     "model ", run->file->model_id,
                     " was not exported by tlserve (no features() method), "
                     "so it cannot embed; use Predict")),
                 &(*results)[i]);
        continue;
      }
      run->any_embed = run->any_embed || items[i].embed();
      run->any_predict = run->any_predict || WantsPrediction(items[i]);
      run->ready.push_back(i);
      run->offsets.push_back(run->rows);
      run->rows += t->size(0);
      run->inputs.push_back(*std::move(t));
    }
  }

  static void FailReady(const ModelRun& run, const absl::Status& status,
                        std::vector<tlserve::v1::InferenceResult>* results) {
    for (int i : run.ready) SetError(status, &(*results)[i]);
  }

  // A model on its own backbone: forward() for Predict items, features()
  // for Embed items, and when both are present features() once and the
  // head on its rows.
  void RunStandalone(ModelRun* run,
                     std::vector<tlserve::v1::InferenceResult>* results) {
    const std::string& id = run->file->model_id;
    backbone_runs.fetch_add(1, std::memory_order_relaxed);
    const ThreadPolicy& policy = run->model->Threads();
    const bool one_thread =
        run->model->text == nullptr && OnOneThread(policy, run->rows);
    std::optional<ScopedIntraOpThreads> threads;
    if (one_thread) threads.emplace(1);
    const absl::Time began = absl::Now();
    absl::Status ran =
        TorchGuard(absl::StrCat("running model ", id), [&]() -> absl::Status {
          at::Tensor batch =
              run->model->text != nullptr ? CatPadded(run->inputs)
              : run->inputs.size() == 1   ? run->inputs[0]
                                          : at::cat(run->inputs);
          // forward() is not const, but running a TorchScript module in eval
          // mode from several threads at once is safe.
          torch::jit::Module module = run->model->module;
          at::Tensor logits;
          if (run->any_embed) {
            ASSIGN_OR_RETURN(
                run->features,
                RunChunked(batch, absl::StrCat("model ", id, " features()"),
                           [&](const at::Tensor& x) {
                             return module.run_method("features", x);
                           }));
            if (run->any_predict) {
              torch::jit::Module head = module.attr("head").toModule();
              ASSIGN_OR_RETURN(
                  logits,
                  RunChunked(
                      run->features, absl::StrCat("model ", id, " head"),
                      [&](const at::Tensor& x) { return head.forward({x}); }));
            }
          } else {
            torch::jit::Module runs =
                run->model->optimized.has_value() ? *run->model->optimized
                                                  : module;
            ASSIGN_OR_RETURN(logits,
                             RunChunked(batch, absl::StrCat("model ", id),
                                        [&](const at::Tensor& x) {
                                          return runs.forward({x});
                                        }));
          }
          if (run->any_predict) {
            run->probabilities = HeadProbabilities(logits, *run->file);
          }
          return absl::OkStatus();
        });
    if (!ran.ok()) {
      FailReady(*run, ran, results);
      return;
    }
    RecordThreads(policy, run->rows, one_thread, began);
  }

  // Models on one shared backbone with the same input spec: its
  // features() once over all their rows, then each head on its own rows.
  void RunShared(const std::vector<ModelRun*>& group,
                 std::vector<tlserve::v1::InferenceResult>* results) {
    const SharedBackbone& backbone = *group[0]->model->backbone;
    std::vector<std::string> ids;
    std::vector<at::Tensor> inputs;
    for (const ModelRun* run : group) {
      ids.push_back(run->file->model_id);
      inputs.insert(inputs.end(), run->inputs.begin(), run->inputs.end());
    }
    const std::string what =
        absl::StrCat("shared backbone '", backbone.key, "' of models ",
                     absl::StrJoin(ids, ", "));
    backbone_runs.fetch_add(1, std::memory_order_relaxed);
    int64_t rows = 0;
    for (const ModelRun* run : group) rows += run->rows;
    // The heads run under the same count: they are a small part of it.
    const bool one_thread = OnOneThread(backbone.threads, rows);
    std::optional<ScopedIntraOpThreads> threads;
    if (one_thread) threads.emplace(1);
    const absl::Time began = absl::Now();
    at::Tensor features;
    absl::Status ran =
        TorchGuard(absl::StrCat("running the ", what), [&]() -> absl::Status {
          at::Tensor batch = inputs.size() == 1 ? inputs[0] : at::cat(inputs);
          torch::jit::Module module = backbone.Features();
          ASSIGN_OR_RETURN(features,
                           RunChunked(batch, absl::StrCat(what, " features()"),
                                      [&](const at::Tensor& x) {
                                        return module.run_method("features", x);
                                      }));
          return absl::OkStatus();
        });
    if (!ran.ok()) {
      for (const ModelRun* run : group) FailReady(*run, ran, results);
      return;
    }
    RecordThreads(backbone.threads, rows, one_thread, began);
    int64_t start = 0;
    for (ModelRun* run : group) {
      run->features = features.slice(0, start, start + run->rows);
      start += run->rows;
      if (!run->any_predict) continue;
      const std::string& id = run->file->model_id;
      absl::Status head_ran = TorchGuard(
          absl::StrCat("running the head of model ", id),
          [&]() -> absl::Status {
            torch::jit::Module head = run->model->module;
            ASSIGN_OR_RETURN(
                at::Tensor logits,
                RunChunked(
                    run->features, absl::StrCat("model ", id, " head"),
                    [&](const at::Tensor& x) { return head.forward({x}); }));
            run->probabilities = HeadProbabilities(logits, *run->file);
            return absl::OkStatus();
          });
      if (!head_ran.ok()) FailReady(*run, head_ran, results);
    }
  }

  // Results of the items of `run` that have not failed.
  static void FillResults(
      const google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem>&
          items,
      const ModelRun& run, std::vector<tlserve::v1::InferenceResult>* results) {
    const ModelFile& file = *run.file;
    const int64_t num_classes = run.any_predict && run.probabilities.defined()
                                    ? run.probabilities.size(1)
                                    : 0;
    const std::vector<int64_t> widths = HeadWidths(file);
    int64_t expected = 0;
    for (int64_t w : widths) expected += w;
    if (num_classes > 0 && !file.class_names.empty() &&
        expected != num_classes) {
      const absl::Status mismatch = absl::FailedPreconditionError(
          file.tasks.empty()
              ? absl::StrCat("model ", file.model_id, " outputs ", num_classes,
                             " classes but has ", file.class_names.size(),
                             " class names")
              : absl::StrCat("model ", file.model_id, " outputs ", num_classes,
                             " values but its heads have ",
                             absl::StrJoin(widths, " + "), " classes"));
      for (int i : run.ready) {
        if (WantsPrediction(items[i])) SetError(mismatch, &(*results)[i]);
      }
    }
    // The classes head comes first; without class names it is all of it.
    const int64_t classes_width =
        file.class_names.empty() ? num_classes : widths[0];
    std::vector<int> order;
    for (size_t k = 0; k < run.ready.size(); ++k) {
      const int i = run.ready[k];
      tlserve::v1::InferenceResult& result = (*results)[i];
      if (result.code() != 0) continue;
      const int64_t n = run.inputs[k].size(0);
      if (items[i].embed()) {
        tlserve::v1::EmbedResponse* out = result.mutable_embedding();
        out->set_model_id(file.model_id);
        const int64_t dim = run.features.size(1);
        const float* data =
            run.features.data_ptr<float>() + run.offsets[k] * dim;
        for (int64_t r = 0; r < n; ++r) {
          out->add_embeddings()->mutable_values()->Add(data + r * dim,
                                                       data + (r + 1) * dim);
        }
      }
      if (!WantsPrediction(items[i])) continue;
      const int top_k_asked = items[i].request().top_k();
      const int64_t want = top_k_asked == 0 ? kDefaultTopK : top_k_asked;
      tlserve::v1::PredictResponse* out = result.mutable_prediction();
      out->set_model_id(file.model_id);
      const float* data =
          run.probabilities.data_ptr<float>() + run.offsets[k] * num_classes;
      for (int64_t r = 0; r < n; ++r) {
        const float* row = data + r * num_classes;
        tlserve::v1::Prediction* p = out->add_predictions();
        FillScores(row, classes_width, std::min(want, classes_width),
                   file.class_names, &order, p->mutable_probabilities(),
                   p->mutable_top());
        int64_t offset = classes_width;
        for (const tlserve::v1::TaskSpec& task : file.tasks) {
          const int64_t width = task.class_names_size();
          const std::vector<std::string> names(task.class_names().begin(),
                                               task.class_names().end());
          tlserve::v1::TaskPrediction* t = p->add_tasks();
          t->set_task(task.name());
          FillScores(row + offset, width, std::min(want, width), names, &order,
                     t->mutable_probabilities(), t->mutable_top());
          offset += width;
        }
      }
    }
  }

  std::vector<tlserve::v1::InferenceResult> Run(
      const std::vector<ModelFile>& files,
      const google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem>&
          items) {
    std::vector<tlserve::v1::InferenceResult> results(items.size());
    std::vector<ModelRun> runs(files.size());
    for (int i = 0; i < items.size(); ++i) {
      const int m = items[i].model_index();
      if (m < 0 || m >= static_cast<int>(files.size())) {
        SetError(
            absl::InternalError(absl::StrCat("batch item ", i, " names model ",
                                             m, " of ", files.size())),
            &results[i]);
        continue;
      }
      runs[m].indices.push_back(i);
    }
    // Loaded outside InferenceMode so the modules' tensors are ordinary
    // ones.
    for (size_t m = 0; m < files.size(); ++m) {
      ModelRun& run = runs[m];
      run.file = &files[m];
      if (run.indices.empty()) {
        // A warm-up (the model was just deployed): load it, nobody waits.
        (void)Get(files[m]);
        continue;
      }
      auto fail_all = [&](const absl::Status& status) {
        for (int i : run.indices) SetError(status, &results[i]);
      };
      absl::Status spec_ok =
          files[m].text ? absl::OkStatus()
                        : Annotate(ValidateInputSpec(files[m].input_spec),
                                   absl::StrCat("model ", files[m].model_id));
      if (!spec_ok.ok()) {
        fail_all(spec_ok);
        continue;
      }
      absl::StatusOr<std::shared_ptr<const LoadedModel>> model = Get(files[m]);
      if (!model.ok()) {
        fail_all(model.status());
        continue;
      }
      run.model = *std::move(model);
    }

    // InferenceMode and the thread count are per thread: set both on the
    // thread that runs the models.
    c10::InferenceMode inference_mode;
    if (options.num_threads > 0 &&
        at::get_num_threads() != options.num_threads) {
      at::set_num_threads(options.num_threads);
    }
    for (ModelRun& run : runs) {
      if (run.model != nullptr) PrepareInputs(items, &run, &results);
    }
    std::vector<bool> grouped(runs.size(), false);
    for (size_t m = 0; m < runs.size(); ++m) {
      ModelRun& run = runs[m];
      if (run.model == nullptr || run.ready.empty() || grouped[m]) continue;
      if (run.model->backbone == nullptr) {
        RunStandalone(&run, &results);
        continue;
      }
      std::vector<ModelRun*> group = {&run};
      const std::string spec = run.file->input_spec.SerializeAsString();
      for (size_t n = m + 1; n < runs.size(); ++n) {
        ModelRun& other = runs[n];
        if (other.model != nullptr && !other.ready.empty() && !grouped[n] &&
            other.model->backbone == run.model->backbone &&
            other.file->input_spec.SerializeAsString() == spec) {
          group.push_back(&other);
          grouped[n] = true;
        }
      }
      RunShared(group, &results);
    }
    for (const ModelRun& run : runs) {
      if (run.model != nullptr && !run.ready.empty()) {
        FillResults(items, run, &results);
      }
    }
    return results;
  }

  // A shared backbone in use by `users` loaded models.
  struct SharedUse {
    std::shared_ptr<const SharedBackbone> backbone;
    int users = 0;
  };

  const Options options;
  // Serialises loads; taken before `mu`, never while holding it.
  absl::Mutex load_mu;
  mutable absl::Mutex mu;
  absl::flat_hash_map<std::string, std::shared_ptr<LoadedModel>> models
      ABSL_GUARDED_BY(mu);
  // Shared backbones by key, while a loaded model uses them.
  absl::flat_hash_map<std::string, SharedUse> shared ABSL_GUARDED_BY(mu);
  int64_t loaded_bytes ABSL_GUARDED_BY(mu) = 0;
  // Most recently used first. Short (max_loaded_models), so list::remove
  // is fine.
  std::list<std::string> lru ABSL_GUARDED_BY(mu);
  std::atomic<int64_t> backbone_runs{0};
  std::atomic<int64_t> single_thread_runs{0};
};

InferenceRunner::InferenceRunner(Options options)
    : impl_(std::make_unique<Impl>(options)) {}

InferenceRunner::~InferenceRunner() = default;

void InferenceRunner::Unload(const std::string& model_id) {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->models.find(model_id);
  if (it == impl_->models.end()) return;
  impl_->Release(*it->second);
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
    const LoadedModel& model = *impl_->models.at(id);
    LoadedModelInfo info;
    info.model_id = id;
    info.bytes = model.bytes;
    if (model.backbone != nullptr) info.shared_backbone = model.backbone->key;
    info.single_thread_max_rows = model.Threads().OneThreadMaxRows();
    info.threads_chosen_per_batch = model.Threads().choice != nullptr;
    out.push_back(std::move(info));
  }
  return out;
}

int64_t InferenceRunner::LoadedBytes() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->loaded_bytes;
}

int64_t InferenceRunner::BackboneRuns() const {
  return impl_->backbone_runs.load(std::memory_order_relaxed);
}

int64_t InferenceRunner::SingleThreadRuns() const {
  return impl_->single_thread_runs.load(std::memory_order_relaxed);
}

std::vector<tlserve::v1::InferenceResult> InferenceRunner::RunBatch(
    const std::vector<ModelFile>& models,
    const google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem>&
        items) {
  return impl_->Run(models, items);
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
  *item->mutable_request()->mutable_texts() = request.texts();
  if (request.has_tensor()) {
    *item->mutable_request()->mutable_tensor() = request.tensor();
  }
  std::vector<tlserve::v1::InferenceResult> results = RunBatch({model}, items);
  if (results[0].code() != 0) return ResultStatus(results[0]);
  return std::move(*results[0].mutable_embedding());
}

}  // namespace tlserve::worker
