#include "server/kserve_api.h"

#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tlserve::kserve {
namespace {

using inference::ModelInferRequest;
using inference::ModelInferResponse;

void SetDuration(const InferenceRouter::ModelStats::Duration& from,
                 inference::StatisticDuration* to) {
  to->set_count(from.count);
  to->set_ns(from.ns);
}

std::string FloatBytes(const float* data, size_t count) {
  return std::string(reinterpret_cast<const char*>(data), count * sizeof(float));
}

void AddOutput(const std::string& name, int64_t rows, int64_t cols,
               std::string bytes, ModelInferResponse* response) {
  auto* out = response->add_outputs();
  out->set_name(name);
  out->set_datatype("FP32");
  out->add_shape(rows);
  out->add_shape(cols);
  response->add_raw_output_contents(std::move(bytes));
}

}  // namespace

absl::Status CheckVersion(const std::string& model, const std::string& version) {
  if (version.empty() || version == kVersion) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat("model ", model, " has no version '",
                                          version, "' (only \"", kVersion, "\")"));
}

absl::StatusOr<tlserve::v1::InferenceItem> ItemFromInferRequest(
    const ModelInferRequest& request) {
  if (request.inputs_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inputs: the model takes one tensor '", kInputName,
        "' [N, C, H, W]; the request has ", request.inputs_size()));
  }
  const ModelInferRequest::InferInputTensor& input = request.inputs(0);
  const std::string what = absl::StrCat("inputs[0] '", input.name(), "'");
  if (input.datatype() != "FP32" && input.datatype() != "UINT8") {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": datatype '", input.datatype(), "' is not FP32 or UINT8"));
  }
  if (input.shape_size() != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": shape [", absl::StrJoin(input.shape(), ", "),
                     "] is not [N, C, H, W]"));
  }
  for (int64_t d : input.shape()) {
    if (d < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": shape [", absl::StrJoin(input.shape(), ", "),
                       "] has a dimension below 1"));
    }
  }
  tlserve::v1::InferenceItem item;
  tlserve::v1::RawTensor* tensor = item.mutable_request()->mutable_tensor();
  tensor->mutable_shape()->CopyFrom(input.shape());
  tensor->set_dtype(input.datatype());
  if (request.raw_input_contents_size() > 0) {
    if (request.raw_input_contents_size() != request.inputs_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "raw_input_contents: ", request.raw_input_contents_size(),
          " entries for ", request.inputs_size(), " input"));
    }
    tensor->set_contents(request.raw_input_contents(0));
  } else if (input.datatype() == "FP32" && input.contents().fp32_contents_size() > 0) {
    const auto& values = input.contents().fp32_contents();
    tensor->set_contents(FloatBytes(values.data(), values.size()));
  } else if (input.datatype() == "UINT8" &&
             input.contents().uint_contents_size() > 0) {
    std::string bytes;
    bytes.reserve(input.contents().uint_contents_size());
    for (uint32_t v : input.contents().uint_contents()) {
      if (v > 255) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": UINT8 value ", v, " in contents.uint_contents is over 255"));
      }
      bytes.push_back(static_cast<char>(v));
    }
    tensor->set_contents(std::move(bytes));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": no data; send raw_input_contents, or contents.",
        input.datatype() == "FP32" ? "fp32_contents" : "uint_contents"));
  }

  bool probabilities = request.outputs_size() == 0;
  bool features = request.outputs_size() == 0;
  for (int i = 0; i < request.outputs_size(); ++i) {
    const std::string& name = request.outputs(i).name();
    if (name == kProbabilitiesOutput) {
      probabilities = true;
    } else if (name == kFeaturesOutput) {
      features = true;
    } else if (absl::StartsWith(name, kTaskOutputPrefix) &&
               name.size() > strlen(kTaskOutputPrefix)) {
      // A MULTITASK head; InferResponse checks the model has it.
      probabilities = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "outputs[", i, "]: unknown output '", name, "' (the model has '",
          kProbabilitiesOutput, "', '", kFeaturesOutput, "' and, with more "
          "heads, '", kTaskOutputPrefix, "<head>')"));
    }
  }
  item.set_embed(features);
  item.set_also_predict(features && probabilities);
  // Only the full probability rows are returned; keep the top list short.
  item.mutable_request()->set_top_k(1);
  return item;
}

absl::StatusOr<ModelInferResponse> InferResponse(
    const ModelInferRequest& request, const tlserve::v1::InferenceResult& result) {
  ModelInferResponse response;
  response.set_model_name(request.model_name());
  response.set_model_version(kVersion);
  response.set_id(request.id());
  std::vector<std::string> names;
  for (const auto& out : request.outputs()) names.push_back(out.name());
  if (names.empty()) {
    names = {kProbabilitiesOutput};
    // A MULTITASK model's other heads, then the features.
    const auto& rows = result.prediction().predictions();
    if (!rows.empty()) {
      for (const auto& task : rows[0].tasks()) {
        names.push_back(absl::StrCat(kTaskOutputPrefix, task.task()));
      }
    }
    names.push_back(kFeaturesOutput);
  }
  for (const std::string& name : names) {
    if (absl::StartsWith(name, kTaskOutputPrefix)) {
      const std::string head = name.substr(strlen(kTaskOutputPrefix));
      const auto& rows = result.prediction().predictions();
      int index = -1;
      if (!rows.empty()) {
        for (int t = 0; t < rows[0].tasks_size(); ++t) {
          if (rows[0].tasks(t).task() == head) index = t;
        }
      }
      if (index < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "outputs: model ", request.model_name(), " has no head '", head,
            "' (ModelMetadata lists its outputs)"));
      }
      const int64_t cols = rows[0].tasks(index).probabilities_size();
      std::string bytes;
      bytes.reserve(rows.size() * cols * sizeof(float));
      for (const auto& row : rows) {
        if (row.tasks_size() <= index ||
            row.tasks(index).probabilities_size() != cols) {
          return absl::InternalError("prediction rows differ in their heads");
        }
        bytes += FloatBytes(row.tasks(index).probabilities().data(), cols);
      }
      AddOutput(name, rows.size(), cols, std::move(bytes), &response);
    } else if (name == kProbabilitiesOutput) {
      const auto& rows = result.prediction().predictions();
      const int64_t cols = rows.empty() ? 0 : rows[0].probabilities_size();
      std::string bytes;
      bytes.reserve(rows.size() * cols * sizeof(float));
      for (const auto& row : rows) {
        if (row.probabilities_size() != cols) {
          return absl::InternalError("prediction rows differ in length");
        }
        bytes += FloatBytes(row.probabilities().data(), cols);
      }
      AddOutput(name, rows.size(), cols, std::move(bytes), &response);
    } else {
      const auto& rows = result.embedding().embeddings();
      const int64_t cols = rows.empty() ? 0 : rows[0].values_size();
      std::string bytes;
      bytes.reserve(rows.size() * cols * sizeof(float));
      for (const auto& row : rows) {
        if (row.values_size() != cols) {
          return absl::InternalError("embedding rows differ in length");
        }
        bytes += FloatBytes(row.values().data(), cols);
      }
      AddOutput(name, rows.size(), cols, std::move(bytes), &response);
    }
  }
  return response;
}

inference::ModelMetadataResponse Metadata(const tlserve::v1::Model& model) {
  inference::ModelMetadataResponse out;
  out.set_name(model.id());
  // (A std::string: the const char* overload trips a false -Wrestrict
  // in g++ 12.)
  out.add_versions(std::string(kVersion));
  out.set_platform(kPlatform);
  const auto& spec = model.input_spec();
  auto* input = out.add_inputs();
  input->set_name(kInputName);
  input->set_datatype("FP32");
  for (int64_t d : {int64_t{-1}, int64_t{spec.channels()}, int64_t{spec.height()},
                    int64_t{spec.width()}}) {
    input->add_shape(d);
  }
  auto* probabilities = out.add_outputs();
  probabilities->set_name(kProbabilitiesOutput);
  probabilities->set_datatype("FP32");
  probabilities->add_shape(-1);
  probabilities->add_shape(model.class_names_size() > 0 ? model.class_names_size() : -1);
  for (const tlserve::v1::TaskSpec& task : model.tasks()) {
    auto* head = out.add_outputs();
    head->set_name(absl::StrCat(kTaskOutputPrefix, task.name()));
    head->set_datatype("FP32");
    head->add_shape(-1);
    head->add_shape(task.class_names_size());
  }
  auto* features = out.add_outputs();
  features->set_name(kFeaturesOutput);
  features->set_datatype("FP32");
  features->add_shape(-1);
  features->add_shape(-1);
  return out;
}

inference::ModelConfig Config(const tlserve::v1::Model& model,
                              const InferenceRouter::Options& batcher) {
  inference::ModelConfig config;
  config.set_name(model.id());
  config.set_platform(kPlatform);
  config.set_backend("tlserve");
  const tlserve::v1::ServingConfig& serving = model.serving();
  config.set_max_batch_size(serving.has_max_batch_size()
                                ? serving.max_batch_size()
                                : batcher.max_batch_size);
  auto* input = config.add_input();
  input->set_name(kInputName);
  input->set_data_type(inference::TYPE_FP32);
  input->set_format(inference::ModelInput::FORMAT_NCHW);
  const auto& spec = model.input_spec();
  input->add_dims(spec.channels());
  input->add_dims(spec.height());
  input->add_dims(spec.width());
  auto* probabilities = config.add_output();
  probabilities->set_name(kProbabilitiesOutput);
  probabilities->set_data_type(inference::TYPE_FP32);
  probabilities->add_dims(model.class_names_size() > 0 ? model.class_names_size() : -1);
  for (const tlserve::v1::TaskSpec& task : model.tasks()) {
    auto* head = config.add_output();
    head->set_name(absl::StrCat(kTaskOutputPrefix, task.name()));
    head->set_data_type(inference::TYPE_FP32);
    head->add_dims(task.class_names_size());
  }
  auto* features = config.add_output();
  features->set_name(kFeaturesOutput);
  features->set_data_type(inference::TYPE_FP32);
  features->add_dims(-1);
  config.mutable_dynamic_batching()->set_max_queue_delay_microseconds(
      static_cast<uint64_t>(serving.has_max_queue_delay_us()
                                ? serving.max_queue_delay_us()
                                : absl::ToInt64Microseconds(batcher.max_queue_delay)));
  return config;
}

inference::ModelStatistics Statistics(const InferenceRouter::ModelStats& stats) {
  inference::ModelStatistics out;
  out.set_name(stats.model_id);
  out.set_version(kVersion);
  if (stats.last_inference > absl::UnixEpoch()) {
    out.set_last_inference(static_cast<uint64_t>(absl::ToUnixMillis(stats.last_inference)));
  }
  out.set_inference_count(stats.inference_count);
  out.set_execution_count(stats.execution_count);
  auto* infer = out.mutable_inference_stats();
  SetDuration(stats.success, infer->mutable_success());
  SetDuration(stats.fail, infer->mutable_fail());
  SetDuration(stats.queue, infer->mutable_queue());
  SetDuration(stats.compute, infer->mutable_compute_infer());
  for (const auto& [size, duration] : stats.batches) {
    auto* batch = out.add_batch_stats();
    batch->set_batch_size(static_cast<uint64_t>(size));
    SetDuration(duration, batch->mutable_compute_infer());
  }
  return out;
}

}  // namespace tlserve::kserve
