#ifndef TLSERVE_SERVER_KSERVE_API_H_
#define TLSERVE_SERVER_KSERVE_API_H_

// Translation between the KServe v2 / Open Inference Protocol messages
// (package inference) and tlserve's models and inference items: plain
// functions, so tests drive them without a server.
//
// A tlserve model, in KServe terms: name = the model id, one version "1",
// platform "pytorch_libtorch"; one input "input", FP32 (in [0,1]) or UINT8
// (0..255), [-1, C, H, W]; two outputs, "probabilities" FP32 [-1, K]
// (softmax over the model's classes, in class_names order) and
// "features" FP32 [-1, -1] (the backbone's embedding). A request that
// names no outputs gets both.

#include <string>

#include "absl/status/statusor.h"
#include "inference/grpc_service.pb.h"
#include "server/inference_router.h"
#include "tlserve/v1/model.pb.h"
#include "tlserve/v1/worker.pb.h"

namespace tlserve::kserve {

inline constexpr char kInputName[] = "input";
inline constexpr char kProbabilitiesOutput[] = "probabilities";
inline constexpr char kFeaturesOutput[] = "features";
// A MULTITASK model's other heads: "probabilities_<task name>", [N, K_task].
inline constexpr char kTaskOutputPrefix[] = "probabilities_";
inline constexpr char kVersion[] = "1";
inline constexpr char kPlatform[] = "pytorch_libtorch";

// NOT_FOUND unless `version` is empty or "1".
absl::Status CheckVersion(const std::string& model, const std::string& version);

// The worker item for a ModelInfer request: INVALID_ARGUMENT (naming the
// field) for anything but one FP32/UINT8 input of rank 4 whose data is in
// raw_input_contents or the typed contents, or an unknown output name.
absl::StatusOr<tlserve::v1::InferenceItem> ItemFromInferRequest(
    const inference::ModelInferRequest& request);

// The response for `request` from the worker's result: the outputs asked
// for (all when none were), as raw little-endian FP32.
absl::StatusOr<inference::ModelInferResponse> InferResponse(
    const inference::ModelInferRequest& request,
    const tlserve::v1::InferenceResult& result);

inference::ModelMetadataResponse Metadata(const tlserve::v1::Model& model);
// The model's own serving settings where it has them, else `batcher`'s.
inference::ModelConfig Config(const tlserve::v1::Model& model,
                              const InferenceRouter::Options& batcher);
inference::ModelStatistics Statistics(const InferenceRouter::ModelStats& stats);

}  // namespace tlserve::kserve

#endif  // TLSERVE_SERVER_KSERVE_API_H_
