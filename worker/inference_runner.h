#ifndef TLSERVE_WORKER_INFERENCE_RUNNER_H_
#define TLSERVE_WORKER_INFERENCE_RUNNER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tlserve/v1/common.pb.h"
#include "tlserve/v1/inference.pb.h"

namespace tlserve::worker {

// Runs Predict on exported models (TorchScript files), keeping the most
// recently used ones loaded. Thread-safe: concurrent Predict calls on the
// same or different models are allowed. No torch types in this header.
class InferenceRunner {
 public:
  struct Options {
    // Models kept loaded; the least recently used is dropped past it.
    size_t max_loaded_models = 8;
  };
  explicit InferenceRunner(Options options);
  ~InferenceRunner();

  // Loads model_path under model_id if it is not loaded, preprocesses the
  // request's images (decode, gray<->RGB, resize to the input spec, scale
  // to [0,1]) or takes its FP32 tensor [N,C,H,W] as is, and returns top-k
  // classes and every probability (softmax of the model's logits).
  // Bad input: INVALID_ARGUMENT naming the input index and what was wrong.
  absl::StatusOr<tlserve::v1::PredictResponse> Predict(
      const std::string& model_id, const std::string& model_path,
      const tlserve::v1::InputSpec& input_spec,
      const std::vector<std::string>& class_names,
      const tlserve::v1::PredictRequest& request);

  std::vector<std::string> LoadedModelIds() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_INFERENCE_RUNNER_H_
