#include "worker/inference_runner.h"

#include <torch/script.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/image.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/test_util.h"
#include "worker/trainer.h"

namespace tlserve::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int kSize = 12;

tlserve::v1::RawTensor ToRaw(const at::Tensor& t) {
  tlserve::v1::RawTensor raw;
  for (int64_t d : t.sizes()) raw.add_shape(d);
  raw.set_dtype("FP32");
  at::Tensor c = t.contiguous();
  raw.set_contents(std::string(static_cast<const char*>(c.data_ptr()),
                               c.numel() * sizeof(float)));
  return raw;
}

// A classifier trained by RunTrainingJob: the real export path.
class InferenceRunnerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::MakeTempDir("inference_model");
    TrainJobInput input;
    input.spec.set_kind(tlserve::v1::FINE_TUNE);
    input.spec.mutable_freeze()->set_mode(tlserve::v1::FreezePolicy::FULL);
    input.spec.mutable_head()->add_hidden_sizes(8);
    input.spec.mutable_head()->set_dropout(0.2f);
    input.spec.set_epochs(1);
    input.spec.set_batch_size(8);
    input.work_dir = dir;
    input.backbone_path = testing::SaveCompactBackbone(dir, 1, 4, 1);
    input.backbone_input_spec = testing::SimpleSpec(1, kSize);
    DecodedDataset data = testing::SyntheticDataset(3, 8, 0, kSize, 1, 2);
    absl::StatusOr<TrainJobOutput> out = RunTrainingJob(input, data, {});
    ASSERT_TRUE(out.ok()) << out.status();
    model_path_ = new std::string(out->artifact_path);
    spec_ = new tlserve::v1::InputSpec(out->input_spec);
    classes_ = new std::vector<std::string>(out->class_names);
  }
  static void TearDownTestSuite() {
    delete model_path_;
    delete spec_;
    delete classes_;
  }

  static InferenceRunner::ModelFile File(const std::string& id,
                                         const std::string& path) {
    InferenceRunner::ModelFile file;
    file.model_id = id;
    file.path = path;
    file.input_spec = *spec_;
    file.class_names = *classes_;
    return file;
  }

  absl::StatusOr<tlserve::v1::PredictResponse> Predict(
      const tlserve::v1::PredictRequest& request) {
    return runner_.Predict(File("m1", *model_path_), request);
  }

  static std::string* model_path_;
  static tlserve::v1::InputSpec* spec_;
  static std::vector<std::string>* classes_;
  InferenceRunner runner_{InferenceRunner::Options{}};
};

std::string* InferenceRunnerTest::model_path_ = nullptr;
tlserve::v1::InputSpec* InferenceRunnerTest::spec_ = nullptr;
std::vector<std::string>* InferenceRunnerTest::classes_ = nullptr;

TEST_F(InferenceRunnerTest, TensorInputGivesProbabilitiesAndTopK) {
  tlserve::v1::PredictRequest request;
  *request.mutable_tensor() = ToRaw(torch::rand({4, 1, kSize, kSize}));
  request.set_top_k(2);
  absl::StatusOr<tlserve::v1::PredictResponse> response = Predict(request);
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(response->predictions_size(), 4);
  for (const auto& p : response->predictions()) {
    ASSERT_EQ(p.probabilities_size(), 3);
    float sum = 0;
    for (float v : p.probabilities()) sum += v;
    EXPECT_NEAR(sum, 1.0f, 1e-5f);
    ASSERT_EQ(p.top_size(), 2);
    EXPECT_GE(p.top(0).probability(), p.top(1).probability());
    EXPECT_EQ(p.top(0).label(), absl::StrCat("class_", p.top(0).index()));
    EXPECT_EQ(p.top(0).probability(), p.probabilities(p.top(0).index()));
  }
  // top_k 0 means 5, capped at the 3 classes.
  request.set_top_k(0);
  response = Predict(request);
  ASSERT_TRUE(response.ok());
  EXPECT_EQ(response->predictions(0).top_size(), 3);
  EXPECT_THAT(runner_.LoadedModelIds(), ElementsAre("m1"));
}

TEST_F(InferenceRunnerTest, MatchesPythonTorchJitLoad) {
  if (!testing::PythonTorchAvailable()) {
    GTEST_SKIP() << "/usr/bin/python3 with torch is not available";
  }
  const at::Tensor x = torch::rand({5, 1, kSize, kSize});
  tlserve::v1::PredictRequest request;
  *request.mutable_tensor() = ToRaw(x);
  absl::StatusOr<tlserve::v1::PredictResponse> response = Predict(request);
  ASSERT_TRUE(response.ok()) << response.status();

  const std::string dir = testing::MakeTempDir("python_check");
  const std::string input_path = dir + "/input.f32";
  std::ofstream(input_path, std::ios::binary) << request.tensor().contents();
  std::string output;
  const int rc = testing::RunPython(
      absl::StrCat(
          "import torch\n"
          "m = torch.jit.load('",
          *model_path_,
          "')\n"
          "m.eval()\n"
          "data = bytearray(open('",
          input_path,
          "', 'rb').read())\n"
          "x = torch.frombuffer(data, dtype=torch.float32).reshape(5, 1, ",
          kSize, ", ", kSize,
          ")\n"
          "with torch.no_grad():\n"
          "    p = torch.softmax(m(x), 1)\n"
          "print(' '.join('%.9g' % v for v in p.flatten().tolist()))\n"),
      &output);
  ASSERT_EQ(rc, 0) << output;
  std::vector<std::string> values =
      absl::StrSplit(output, ' ', absl::SkipWhitespace());
  ASSERT_EQ(values.size(), 15u) << output;
  float max_diff = 0;
  for (int i = 0; i < 5; ++i) {
    for (int c = 0; c < 3; ++c) {
      const float python = std::stof(values[i * 3 + c]);
      max_diff = std::max(
          max_diff,
          std::abs(python - response->predictions(i).probabilities(c)));
    }
  }
  EXPECT_LT(max_diff, 1e-4f);
}

TEST_F(InferenceRunnerTest, PngImageMatchesTensorOfSamePixels) {
  Image image;
  image.height = kSize;
  image.width = kSize;
  image.channels = 1;
  for (int i = 0; i < kSize * kSize; ++i)
    image.pixels.push_back((i * 37) % 256);
  absl::StatusOr<std::string> png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();
  tlserve::v1::PredictRequest by_image;
  by_image.add_images(*png);
  absl::StatusOr<tlserve::v1::PredictResponse> a = Predict(by_image);
  ASSERT_TRUE(a.ok()) << a.status();

  at::Tensor x =
      torch::from_blob(image.pixels.data(), {1, 1, kSize, kSize}, torch::kByte)
          .to(torch::kFloat) /
      255.0;
  tlserve::v1::PredictRequest by_tensor;
  *by_tensor.mutable_tensor() = ToRaw(x);
  absl::StatusOr<tlserve::v1::PredictResponse> b = Predict(by_tensor);
  ASSERT_TRUE(b.ok()) << b.status();
  for (int c = 0; c < 3; ++c) {
    EXPECT_FLOAT_EQ(a->predictions(0).probabilities(c),
                    b->predictions(0).probabilities(c));
  }
}

TEST_F(InferenceRunnerTest, RejectsBadInputsWithInvalidArgument) {
  tlserve::v1::PredictRequest request;
  EXPECT_EQ(Predict(request).status().code(),
            absl::StatusCode::kInvalidArgument);

  *request.mutable_tensor() = ToRaw(torch::rand({2, 3, kSize, kSize}));
  absl::Status status = Predict(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("shape [2, 3, 12, 12]"));

  *request.mutable_tensor() = ToRaw(torch::rand({2, 1, kSize, kSize}));
  request.mutable_tensor()->mutable_contents()->resize(17);
  status = Predict(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("17 bytes"));

  request.mutable_tensor()->set_dtype("FP64");
  EXPECT_EQ(Predict(request).status().code(),
            absl::StatusCode::kInvalidArgument);

  tlserve::v1::PredictRequest images;
  Image ok{kSize, kSize, 1, std::vector<uint8_t>(kSize * kSize, 9)};
  absl::StatusOr<std::string> png = EncodePng(ok);
  ASSERT_TRUE(png.ok());
  images.add_images(*png);
  images.add_images("\x89PNG\r\n\x1a\n this is not a png");
  status = Predict(images).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("image 1"));

  images.set_top_k(-1);
  EXPECT_EQ(Predict(images).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(InferenceRunnerTest, EvictsLeastRecentlyUsedModel) {
  InferenceRunner runner(InferenceRunner::Options{.max_loaded_models = 2});
  tlserve::v1::PredictRequest request;
  *request.mutable_tensor() = ToRaw(torch::rand({1, 1, kSize, kSize}));
  for (const char* id : {"a", "b", "a", "c"}) {
    ASSERT_TRUE(
        runner.Predict(File(id, *model_path_), request).ok());
  }
  EXPECT_THAT(runner.LoadedModelIds(), ElementsAre("c", "a"));
  EXPECT_EQ(
      runner.Predict(File("x", "/nonexistent/model.pt"), request)
          .status()
          .code(),
      absl::StatusCode::kNotFound);
}

TEST_F(InferenceRunnerTest, EvictsByMemoryButKeepsTheModelInUse) {
  tlserve::v1::PredictRequest request;
  *request.mutable_tensor() = ToRaw(torch::rand({1, 1, kSize, kSize}));
  InferenceRunner probe(InferenceRunner::Options{});
  ASSERT_TRUE(probe.Predict(File("a", *model_path_), request).ok());
  const int64_t bytes = probe.LoadedModels().at(0).bytes;
  EXPECT_GT(bytes, 0);
  // Room for two models' bytes: the third load drops the oldest.
  InferenceRunner runner(
      InferenceRunner::Options{.max_loaded_bytes = 2 * bytes + bytes / 2});
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE(runner.Predict(File(id, *model_path_), request).ok());
  }
  EXPECT_THAT(runner.LoadedModelIds(), ElementsAre("c", "b"));
  // A bound below one model still serves it, holding that one alone.
  InferenceRunner tiny(InferenceRunner::Options{.max_loaded_bytes = 1});
  for (const char* id : {"a", "b"}) {
    ASSERT_TRUE(tiny.Predict(File(id, *model_path_), request).ok());
  }
  EXPECT_THAT(tiny.LoadedModelIds(), ElementsAre("b"));
}

// One batch mixing Predict and Embed items and a bad image: the bad item
// fails alone, and every other item gets what it would get on its own.
TEST_F(InferenceRunnerTest, BatchMatchesItemsRunAlone) {
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  const at::Tensor x = torch::rand({3, 1, kSize, kSize});
  {
    auto* item = items.Add();
    *item->mutable_request()->mutable_tensor() = ToRaw(x.slice(0, 0, 2));
    item->mutable_request()->set_top_k(2);
  }
  items.Add()->mutable_request()->add_images("not an image");
  {
    auto* item = items.Add();
    item->set_embed(true);
    item->set_also_predict(true);
    *item->mutable_request()->mutable_tensor() = ToRaw(x.slice(0, 2, 3));
  }
  {
    auto* item = items.Add();
    *item->mutable_request()->mutable_tensor() = ToRaw(x.slice(0, 2, 3));
  }
  std::vector<tlserve::v1::InferenceResult> results =
      runner_.RunBatch({File("m1", *model_path_)}, items);
  ASSERT_EQ(results.size(), 4u);
  EXPECT_EQ(results[1].code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(results[1].message(), HasSubstr("image 0"));
  for (int i : {0, 2, 3}) ASSERT_EQ(results[i].code(), 0) << results[i].message();

  ASSERT_EQ(results[0].prediction().predictions_size(), 2);
  EXPECT_EQ(results[0].prediction().predictions(0).top_size(), 2);
  ASSERT_EQ(results[3].prediction().predictions_size(), 1);

  tlserve::v1::PredictRequest alone;
  *alone.mutable_tensor() = ToRaw(x);
  absl::StatusOr<tlserve::v1::PredictResponse> reference = Predict(alone);
  ASSERT_TRUE(reference.ok()) << reference.status();
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(results[0].prediction().predictions(1).probabilities(c),
                reference->predictions(1).probabilities(c), 1e-5);
    EXPECT_NEAR(results[3].prediction().predictions(0).probabilities(c),
                reference->predictions(2).probabilities(c), 1e-5);
    // Embed with also_predict: the scores come with the features.
    EXPECT_NEAR(results[2].prediction().predictions(0).probabilities(c),
                reference->predictions(2).probabilities(c), 1e-5);
  }

  tlserve::v1::EmbedRequest embed;
  *embed.mutable_tensor() = ToRaw(x.slice(0, 2, 3));
  absl::StatusOr<tlserve::v1::EmbedResponse> features =
      runner_.Embed(File("m1", *model_path_), embed);
  ASSERT_TRUE(features.ok()) << features.status();
  ASSERT_EQ(features->embeddings_size(), 1);
  ASSERT_EQ(results[2].embedding().embeddings_size(), 1);
  const auto& got = results[2].embedding().embeddings(0).values();
  const auto& want = features->embeddings(0).values();
  ASSERT_EQ(got.size(), want.size());
  EXPECT_GT(want.size(), 1);
  for (int d = 0; d < want.size(); ++d) EXPECT_NEAR(got[d], want[d], 1e-5);
}

TEST_F(InferenceRunnerTest, ConcurrentPredictsAgree) {
  tlserve::v1::PredictRequest request;
  *request.mutable_tensor() = ToRaw(torch::rand({3, 1, kSize, kSize}));
  absl::StatusOr<tlserve::v1::PredictResponse> reference = Predict(request);
  ASSERT_TRUE(reference.ok());
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        auto response = Predict(request);
        if (!response.ok() || response->predictions(2).probabilities(1) !=
                                  reference->predictions(2).probabilities(1)) {
          ++mismatches;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace tlserve::worker
