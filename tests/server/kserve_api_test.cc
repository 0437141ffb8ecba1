// The KServe v2 translation as plain functions: requests to worker items,
// results to responses, model descriptions.
#include "server/kserve_api.h"

#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve::kserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using inference::ModelInferRequest;

ModelInferRequest Request(const std::string& datatype, std::vector<int64_t> shape) {
  ModelInferRequest request;
  request.set_model_name("m1");
  request.set_id("r7");
  auto* input = request.add_inputs();
  input->set_name("input");
  input->set_datatype(datatype);
  for (int64_t d : shape) input->add_shape(d);
  return request;
}

TEST(KServeApiTest, RawFp32InputBecomesATensorItem) {
  ModelInferRequest request = Request("FP32", {2, 1, 2, 2});
  std::vector<float> values(8, 0.5f);
  request.add_raw_input_contents(std::string(
      reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float)));
  absl::StatusOr<tlserve::v1::InferenceItem> item = ItemFromInferRequest(request);
  ASSERT_TRUE(item.ok()) << item.status();
  EXPECT_THAT(item->request().tensor().shape(), ElementsAre(2, 1, 2, 2));
  EXPECT_EQ(item->request().tensor().dtype(), "FP32");
  EXPECT_EQ(item->request().tensor().contents().size(), 32u);
  // No outputs named: both, in one pass.
  EXPECT_TRUE(item->embed());
  EXPECT_TRUE(item->also_predict());
}

TEST(KServeApiTest, TypedContentsAndRequestedOutputs) {
  ModelInferRequest fp32 = Request("FP32", {1, 1, 1, 2});
  fp32.mutable_inputs(0)->mutable_contents()->add_fp32_contents(0.25f);
  fp32.mutable_inputs(0)->mutable_contents()->add_fp32_contents(0.75f);
  fp32.add_outputs()->set_name("probabilities");
  auto item = ItemFromInferRequest(fp32);
  ASSERT_TRUE(item.ok()) << item.status();
  float back[2];
  std::memcpy(back, item->request().tensor().contents().data(), sizeof(back));
  EXPECT_EQ(back[0], 0.25f);
  EXPECT_EQ(back[1], 0.75f);
  EXPECT_FALSE(item->embed());

  ModelInferRequest u8 = Request("UINT8", {1, 1, 1, 2});
  u8.mutable_inputs(0)->mutable_contents()->add_uint_contents(7);
  u8.mutable_inputs(0)->mutable_contents()->add_uint_contents(255);
  u8.add_outputs()->set_name("features");
  item = ItemFromInferRequest(u8);
  ASSERT_TRUE(item.ok()) << item.status();
  EXPECT_EQ(item->request().tensor().contents(), std::string("\x07\xff", 2));
  EXPECT_TRUE(item->embed());
  EXPECT_FALSE(item->also_predict());
}

TEST(KServeApiTest, BadRequestsNameTheField) {
  struct Case {
    ModelInferRequest request;
    std::string message;
  };
  std::vector<Case> cases;
  ModelInferRequest none = Request("FP32", {1, 1, 1, 1});
  none.clear_inputs();
  cases.push_back({none, "inputs"});
  cases.push_back({Request("INT64", {1, 1, 1, 1}), "datatype 'INT64'"});
  cases.push_back({Request("FP32", {1, 1, 1}), "[N, C, H, W]"});
  cases.push_back({Request("FP32", {1, 0, 1, 1}), "below 1"});
  cases.push_back({Request("FP32", {1, 1, 1, 1}), "no data"});
  ModelInferRequest big = Request("UINT8", {1, 1, 1, 1});
  big.mutable_inputs(0)->mutable_contents()->add_uint_contents(256);
  cases.push_back({big, "over 255"});
  ModelInferRequest two_raw = Request("FP32", {1, 1, 1, 1});
  two_raw.add_raw_input_contents("abcd");
  two_raw.add_raw_input_contents("abcd");
  cases.push_back({two_raw, "raw_input_contents"});
  ModelInferRequest output = Request("FP32", {1, 1, 1, 1});
  output.add_raw_input_contents("abcd");
  output.add_outputs()->set_name("logits");
  cases.push_back({output, "outputs[0]: unknown output 'logits'"});
  for (const Case& c : cases) {
    absl::StatusOr<tlserve::v1::InferenceItem> item = ItemFromInferRequest(c.request);
    EXPECT_EQ(item.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(item.status().message(), HasSubstr(c.message));
  }
  EXPECT_TRUE(CheckVersion("m1", "").ok());
  EXPECT_TRUE(CheckVersion("m1", "1").ok());
  EXPECT_EQ(CheckVersion("m1", "2").code(), absl::StatusCode::kNotFound);
}

TEST(KServeApiTest, ResponseCarriesTheOutputsAsRawFp32) {
  tlserve::v1::InferenceResult result;
  for (int row = 0; row < 2; ++row) {
    auto* p = result.mutable_prediction()->add_predictions();
    p->add_probabilities(0.1f + row);
    p->add_probabilities(0.9f);
    auto* e = result.mutable_embedding()->add_embeddings();
    for (int d = 0; d < 3; ++d) e->add_values(static_cast<float>(10 * row + d));
  }
  ModelInferRequest request = Request("FP32", {2, 1, 1, 1});
  request.add_outputs()->set_name("features");
  request.add_outputs()->set_name("probabilities");
  absl::StatusOr<inference::ModelInferResponse> response =
      InferResponse(request, result);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->id(), "r7");
  EXPECT_EQ(response->model_version(), "1");
  ASSERT_EQ(response->outputs_size(), 2);
  EXPECT_EQ(response->outputs(0).name(), "features");
  EXPECT_THAT(response->outputs(0).shape(), ElementsAre(2, 3));
  EXPECT_THAT(response->outputs(1).shape(), ElementsAre(2, 2));
  ASSERT_EQ(response->raw_output_contents_size(), 2);
  std::vector<float> features(6);
  ASSERT_EQ(response->raw_output_contents(0).size(), 6 * sizeof(float));
  std::memcpy(features.data(), response->raw_output_contents(0).data(), 24);
  EXPECT_THAT(features, ElementsAre(0, 1, 2, 10, 11, 12));
}

TEST(KServeApiTest, MultitaskHeadsAreOutputsOfTheirOwn) {
  tlserve::v1::Model model;
  model.set_id("m1");
  model.add_class_names("a");
  model.add_class_names("b");
  tlserve::v1::TaskSpec* task = model.add_tasks();
  task->set_name("coarse");
  for (const char* c : {"x", "y", "z"}) task->add_class_names(c);
  model.mutable_input_spec()->set_channels(1);
  inference::ModelMetadataResponse meta = Metadata(model);
  ASSERT_EQ(meta.outputs_size(), 3);
  EXPECT_EQ(meta.outputs(1).name(), "probabilities_coarse");
  EXPECT_THAT(meta.outputs(1).shape(), ElementsAre(-1, 3));
  inference::ModelConfig config = Config(model, InferenceRouter::Options{});
  ASSERT_EQ(config.output_size(), 3);
  EXPECT_EQ(config.output(1).name(), "probabilities_coarse");
  EXPECT_THAT(config.output(1).dims(), ElementsAre(3));

  tlserve::v1::InferenceResult result;
  for (int row = 0; row < 2; ++row) {
    auto* p = result.mutable_prediction()->add_predictions();
    p->add_probabilities(0.5f);
    p->add_probabilities(0.5f);
    auto* t = p->add_tasks();
    t->set_task("coarse");
    for (float v : {0.2f, 0.3f, 0.5f}) t->add_probabilities(v + row);
  }
  // Asked for by name: a Predict item, no features.
  ModelInferRequest request = Request("FP32", {2, 1, 1, 1});
  request.add_raw_input_contents(std::string(8, '\0'));
  request.add_outputs()->set_name("probabilities_coarse");
  absl::StatusOr<tlserve::v1::InferenceItem> item = ItemFromInferRequest(request);
  ASSERT_TRUE(item.ok()) << item.status();
  EXPECT_FALSE(item->embed());
  absl::StatusOr<inference::ModelInferResponse> response =
      InferResponse(request, result);
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(response->outputs_size(), 1);
  EXPECT_THAT(response->outputs(0).shape(), ElementsAre(2, 3));
  std::vector<float> values(6);
  ASSERT_EQ(response->raw_output_contents(0).size(), 6 * sizeof(float));
  std::memcpy(values.data(), response->raw_output_contents(0).data(), 24);
  EXPECT_THAT(values, ElementsAre(0.2f, 0.3f, 0.5f, 1.2f, 1.3f, 1.5f));
  // Every output when none is named: classes, each head, features.
  ModelInferRequest all = Request("FP32", {2, 1, 1, 1});
  response = InferResponse(all, result);
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(response->outputs_size(), 3);
  EXPECT_EQ(response->outputs(1).name(), "probabilities_coarse");
  // A head the model lacks is the caller's mistake.
  request.mutable_outputs(0)->set_name("probabilities_fine");
  response = InferResponse(request, result);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(response.status().message()),
              HasSubstr("has no head 'fine'"));
}

TEST(KServeApiTest, DescribesTheModel) {
  tlserve::v1::Model model;
  model.set_id("m1");
  model.add_class_names("a");
  model.add_class_names("b");
  model.mutable_input_spec()->set_channels(3);
  model.mutable_input_spec()->set_height(32);
  model.mutable_input_spec()->set_width(32);
  inference::ModelMetadataResponse meta = Metadata(model);
  EXPECT_EQ(meta.name(), "m1");
  EXPECT_THAT(meta.versions(), ElementsAre("1"));
  EXPECT_THAT(meta.inputs(0).shape(), ElementsAre(-1, 3, 32, 32));
  EXPECT_EQ(meta.outputs(0).name(), "probabilities");
  EXPECT_THAT(meta.outputs(0).shape(), ElementsAre(-1, 2));
  InferenceRouter::Options batcher;
  batcher.max_batch_size = 16;
  batcher.max_queue_delay = absl::Microseconds(250);
  inference::ModelConfig config = Config(model, batcher);
  EXPECT_EQ(config.max_batch_size(), 16);
  EXPECT_THAT(config.input(0).dims(), ElementsAre(3, 32, 32));
  EXPECT_EQ(config.dynamic_batching().max_queue_delay_microseconds(), 250u);

  InferenceRouter::ModelStats stats;
  stats.model_id = "m1";
  stats.success.Add(absl::Milliseconds(2));
  stats.inference_count = 5;
  stats.execution_count = 1;
  stats.batches[5].Add(absl::Milliseconds(1));
  inference::ModelStatistics out = Statistics(stats);
  EXPECT_EQ(out.inference_count(), 5u);
  EXPECT_EQ(out.inference_stats().success().count(), 1u);
  EXPECT_EQ(out.inference_stats().success().ns(), 2'000'000u);
  ASSERT_EQ(out.batch_stats_size(), 1);
  EXPECT_EQ(out.batch_stats(0).batch_size(), 5u);
}

}  // namespace
}  // namespace tlserve::kserve
