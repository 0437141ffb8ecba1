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
// concurrently. No torch types in this header.
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
    // at load, not on a caller's inputs).
    bool warm_up = true;
    // LibTorch intra-op threads for each batch (0: LibTorch's default).
    // Set on every thread that runs a batch: in this LibTorch the count is
    // per thread, so setting it once elsewhere would not reach them.
    int num_threads = 0;
  };

  // A model of a batch: its id, its file on this worker and what the
  // server knows about it.
  struct ModelFile {
    std::string model_id;
    std::string path;
    tlserve::v1::InputSpec input_spec;
    std::vector<std::string> class_names;
  };

  struct LoadedModelInfo {
    std::string model_id;
    int64_t bytes = 0;
  };

  explicit InferenceRunner(Options options);
  ~InferenceRunner();

  // Runs one batch. Each item's inputs are preprocessed on their own (an
  // image that does not decode fails its item with INVALID_ARGUMENT naming
  // the input, not the batch); then each model runs once over the inputs
  // of all its items: forward() for Predict items, features() (the
  // backbone, before the head) for Embed items, and when both are present
  // features() once and the head on the Predict rows. Returns one result
  // per item, in order. A model that fails to load fails its items. A model
  // with no items is only loaded and warmed up.
  std::vector<tlserve::v1::InferenceResult> RunBatch(
      const std::vector<ModelFile>& models,
      const google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem>&
          items);

  // Drops a loaded model (undeployed); batches running on it finish.
  void Unload(const std::string& model_id);

  // One-item conveniences over RunBatch.
  absl::StatusOr<tlserve::v1::PredictResponse> Predict(
      const ModelFile& model, const tlserve::v1::PredictRequest& request);
  absl::StatusOr<tlserve::v1::EmbedResponse> Embed(
      const ModelFile& model, const tlserve::v1::EmbedRequest& request);

  // Most recently used first.
  std::vector<std::string> LoadedModelIds() const;
  std::vector<LoadedModelInfo> LoadedModels() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_INFERENCE_RUNNER_H_
