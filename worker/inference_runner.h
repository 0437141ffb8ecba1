#ifndef TLSERVE_WORKER_INFERENCE_RUNNER_H_
#define TLSERVE_WORKER_INFERENCE_RUNNER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tlserve/v1/common.pb.h"
#include "tlserve/v1/inference.pb.h"
#include "tlserve/v1/worker.pb.h"

namespace tlserve::worker {

// Runs batches of Predict and Embed items on exported models (TorchScript
// files), keeping the most recently used ones loaded within a memory
// bound. Thread-safe: batches for the same or different models may run
// concurrently; loads are serialised (they are rare). No torch types in
// this header.
//
// Shared backbones: models fine-tuned from one frozen backbone come with
// the same ModelFile.shared_backbone key. The first such model loaded
// becomes the key's backbone (its features() runs for all of them); a
// later one joins only after a check that its `backbone` weights and
// buffers and its mean/std equal the shared ones and that on a probe input
// its features() and forward() agree with the shared features() and its
// own head. It then keeps only its `head`; a model that fails the check is
// served on its own, as without a key. In a batch, the models on one
// backbone with the same input spec run it once over all their rows.
class InferenceRunner {
 public:
  struct Options {
    // Loaded models are dropped, least recently used first, past either
    // bound (the model in use is never dropped, even if alone it is over).
    size_t max_loaded_models = 16;
    // Parameter and buffer bytes of the loaded models.
    int64_t max_loaded_bytes = int64_t{4} << 30;
    // Run one forward on zeros when a model loads, so its first caller does
    // not pay for lazy initialisation (and a model that cannot run fails
    // at load, not on a caller's inputs). A model that shares a backbone
    // runs on a probe input at load regardless: that is its check.
    bool warm_up = true;
    // LibTorch intra-op threads for each batch (0: LibTorch's default).
    // Set on every thread that runs a batch: in this LibTorch the count is
    // per thread, so setting it once elsewhere would not reach them.
    int num_threads = 0;
    // Predict-only batches of a standalone image model run a frozen copy
    // made by torch::jit::optimize_for_inference (BatchNorm folded into the
    // convolutions, fused ops): resnet18 at 224 px ran 15.4 ms a forward
    // against 22.4 in bench/model_latency. The copy is used only when its
    // outputs equal the model's on a probe input; Embed batches and text
    // models keep the module as exported. A shared backbone likewise gets
    // an optimised copy of its features(), which then runs every batch on
    // it (Predict and Embed). The copies' bytes count against
    // max_loaded_bytes too.
    bool optimize = true;
    // Image batches of at most this many rows run on one intra-op thread
    // instead of num_threads. A small model's forward on a few rows can be
    // faster alone than split: every parallel op wakes the other threads
    // and waits for them, and between calls they have gone to sleep, or
    // their cores serve other processes. 0: never. -1 (the default): chosen
    // per model (per shared backbone) and batch size from how long its
    // real batches took each way (worker/thread_choice.h); one thread is
    // never tried for a model whose forward on one row takes over 10 ms.
    // Needs LibTorch's OpenMP build; otherwise never.
    int64_t single_thread_max_rows = -1;
  };

  // A model of a batch: its id, its file on this worker and what the
  // server knows about it.
  struct ModelFile {
    std::string model_id;
    std::string path;
    tlserve::v1::InputSpec input_spec;
    std::vector<std::string> class_names;
    // InferenceModel.shared_backbone: models with the same non-empty key
    // may share one backbone (checked at load). Empty: not shared.
    std::string shared_backbone;
    // A MULTITASK model's other heads: forward() returns their logits
    // after the class_names ones, and each Predict answer carries one
    // TaskPrediction per task.
    std::vector<tlserve::v1::TaskSpec> tasks;
    // A text model (InferenceModel.text set): items carry texts, turned
    // into token ids with the vocabulary and max_tokens inside the file
    // (worker/text_model.h); input_spec is unused.
    bool text = false;
  };

  struct LoadedModelInfo {
    std::string model_id;
    // The model's own parameter and buffer bytes: its head's when it
    // shares a backbone (the backbone is counted once, in LoadedBytes).
    int64_t bytes = 0;
    // The key of the backbone it runs on; empty when it runs alone (no
    // key, or the check at load found a different backbone).
    std::string shared_backbone;
    // Batches of up to this many rows run on one thread, as it applies to
    // this model (its shared backbone's when it has one): the option's
    // value, or what the timings of real batches choose now (0 while
    // still deciding).
    int64_t single_thread_max_rows = 0;
    // The choice follows the timings of real batches (the default).
    bool threads_chosen_per_batch = false;
  };

  explicit InferenceRunner(Options options);
  ~InferenceRunner();

  // Runs one batch. Each item's inputs are preprocessed on their own (an
  // image that does not decode fails its item with INVALID_ARGUMENT naming
  // the input, not the batch); then each model runs once over the inputs
  // of all its items: forward() for Predict items, features() (the
  // backbone, before the head) for Embed items, and when both are present
  // features() once and the head on the Predict rows. Models that share a
  // loaded backbone and have the same input spec run its features() once
  // over the rows of all of them, then each head on its own rows. Returns
  // one result per item, in order. A model that fails to load fails its
  // items. A model with no items is only loaded and warmed up.
  std::vector<tlserve::v1::InferenceResult> RunBatch(
      const std::vector<ModelFile>& models,
      const google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem>&
          items);

  // Drops a loaded model (undeployed); batches running on it finish. A
  // shared backbone goes with the last loaded model that uses it.
  void Unload(const std::string& model_id);

  // One-item conveniences over RunBatch.
  absl::StatusOr<tlserve::v1::PredictResponse> Predict(
      const ModelFile& model, const tlserve::v1::PredictRequest& request);
  absl::StatusOr<tlserve::v1::EmbedResponse> Embed(
      const ModelFile& model, const tlserve::v1::EmbedRequest& request);

  // Most recently used first.
  std::vector<std::string> LoadedModelIds() const;
  std::vector<LoadedModelInfo> LoadedModels() const;
  // Bytes held against Options.max_loaded_bytes: each loaded model's own
  // bytes plus each shared backbone in use once.
  int64_t LoadedBytes() const;
  // Backbone runs over a batch's rows so far: one per standalone model
  // with items per batch, one per group of models sharing a backbone
  // (however many chunks each run takes). Load-time warm-ups and checks
  // are not counted.
  int64_t BackboneRuns() const;
  // Of those, the runs made on one intra-op thread
  // (Options.single_thread_max_rows).
  int64_t SingleThreadRuns() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_INFERENCE_RUNNER_H_
