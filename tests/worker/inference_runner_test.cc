#include "worker/inference_runner.h"

#include <torch/script.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
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
#include "worker/model_builder.h"
#include "worker/thread_choice.h"
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

// Classifiers built like the trainer exports them (MakeClassifier) on one
// backbone with different heads, plus two that must not share it: the
// same backbone with one weight changed, and the same backbone with other
// normalisation (mean/std buffers).
class SharedBackboneTest : public ::testing::Test {
 protected:
  enum Model { kA, kB, kC, kPerturbed, kOtherNorm, kNumModels };

  static void SetUpTestSuite() {
    paths_ = new std::vector<std::string>(kNumModels);
    specs_ = new std::vector<tlserve::v1::InputSpec>(kNumModels);
    const std::string dir = testing::MakeTempDir("shared_backbone");
    const tlserve::v1::InputSpec spec = testing::SimpleSpec(1, kSize);
    tlserve::v1::InputSpec other_norm = spec;
    other_norm.set_mean(0, 0.4f);
    absl::StatusOr<torch::jit::Module> backbone = MakeCompactResNet(1, 8, 11);
    absl::StatusOr<torch::jit::Module> perturbed = MakeCompactResNet(1, 8, 11);
    ASSERT_TRUE(backbone.ok() && perturbed.ok());
    {
      torch::NoGradGuard no_grad;
      (*perturbed->parameters().begin()).add_(0.05);
    }
    auto save = [&](Model m, torch::jit::Module b,
                    const std::vector<int64_t>& hidden, uint64_t head_seed,
                    const tlserve::v1::InputSpec& s) {
      absl::StatusOr<torch::jit::Module> head =
          MakeHead(32, hidden, 0.0, 3, head_seed);
      ASSERT_TRUE(head.ok()) << head.status();
      absl::StatusOr<torch::jit::Module> classifier =
          MakeClassifier(b, *head, s);
      ASSERT_TRUE(classifier.ok()) << classifier.status();
      classifier->eval();
      (*paths_)[m] = absl::StrCat(dir, "/model_", m, ".pt");
      (*specs_)[m] = s;
      classifier->save((*paths_)[m]);
    };
    save(kA, *backbone, {16}, 1, spec);
    save(kB, *backbone, {}, 2, spec);
    save(kC, *backbone, {8}, 3, spec);
    // a's head: had it been put on the shared backbone, its results would
    // be a's.
    save(kPerturbed, *perturbed, {16}, 1, spec);
    save(kOtherNorm, *backbone, {16}, 1, other_norm);
  }
  static void TearDownTestSuite() {
    delete paths_;
    delete specs_;
  }

  static InferenceRunner::ModelFile File(Model m, const std::string& key) {
    InferenceRunner::ModelFile file;
    file.model_id = absl::StrCat("model_", m);
    file.path = (*paths_)[m];
    file.input_spec = (*specs_)[m];
    file.shared_backbone = key;
    return file;
  }
  static std::vector<InferenceRunner::ModelFile> Files(
      const std::vector<Model>& models, const std::string& key) {
    std::vector<InferenceRunner::ModelFile> files;
    for (Model m : models) files.push_back(File(m, key));
    return files;
  }

  static void AddItem(
      google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem>* items,
      int model_index, const at::Tensor& x, bool embed, bool also_predict) {
    tlserve::v1::InferenceItem* item = items->Add();
    item->set_model_index(model_index);
    item->set_embed(embed);
    item->set_also_predict(also_predict);
    *item->mutable_request()->mutable_tensor() = ToRaw(x);
  }

  // The reference: each model of the batch run alone, without a key, on
  // its own items.
  static std::vector<tlserve::v1::InferenceResult> RunEachModelAlone(
      InferenceRunner& runner,
      const std::vector<InferenceRunner::ModelFile>& files,
      const google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem>&
          items) {
    std::vector<tlserve::v1::InferenceResult> out(items.size());
    for (size_t m = 0; m < files.size(); ++m) {
      google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> subset;
      std::vector<int> where;
      for (int i = 0; i < items.size(); ++i) {
        if (items[i].model_index() != static_cast<int>(m)) continue;
        tlserve::v1::InferenceItem* item = subset.Add();
        *item = items[i];
        item->set_model_index(0);
        where.push_back(i);
      }
      if (where.empty()) continue;
      InferenceRunner::ModelFile alone = files[m];
      alone.shared_backbone.clear();
      std::vector<tlserve::v1::InferenceResult> results =
          runner.RunBatch({alone}, subset);
      for (size_t k = 0; k < where.size(); ++k) out[where[k]] = results[k];
    }
    return out;
  }

  static void ExpectSameResults(
      const std::vector<tlserve::v1::InferenceResult>& got,
      const std::vector<tlserve::v1::InferenceResult>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      SCOPED_TRACE(absl::StrCat("item ", i));
      ASSERT_EQ(got[i].code(), want[i].code()) << got[i].message();
      const auto& gp = got[i].prediction().predictions();
      const auto& wp = want[i].prediction().predictions();
      ASSERT_EQ(got[i].has_prediction(), want[i].has_prediction());
      ASSERT_EQ(gp.size(), wp.size());
      for (int r = 0; r < gp.size(); ++r) {
        ASSERT_EQ(gp[r].probabilities_size(), wp[r].probabilities_size());
        for (int c = 0; c < gp[r].probabilities_size(); ++c) {
          EXPECT_NEAR(gp[r].probabilities(c), wp[r].probabilities(c), 1e-5);
        }
      }
      const auto& ge = got[i].embedding().embeddings();
      const auto& we = want[i].embedding().embeddings();
      ASSERT_EQ(got[i].has_embedding(), want[i].has_embedding());
      ASSERT_EQ(ge.size(), we.size());
      for (int r = 0; r < ge.size(); ++r) {
        ASSERT_EQ(ge[r].values_size(), we[r].values_size());
        for (int d = 0; d < ge[r].values_size(); ++d) {
          EXPECT_NEAR(ge[r].values(d), we[r].values(d), 1e-5);
        }
      }
    }
  }

  // The largest difference between two results' first prediction and
  // first embedding.
  static float MaxDifference(const tlserve::v1::InferenceResult& a,
                             const tlserve::v1::InferenceResult& b) {
    float diff = 0;
    const auto& pa = a.prediction().predictions(0).probabilities();
    const auto& pb = b.prediction().predictions(0).probabilities();
    for (int c = 0; c < std::min(pa.size(), pb.size()); ++c) {
      diff = std::max(diff, std::abs(pa[c] - pb[c]));
    }
    if (a.has_embedding() && b.has_embedding()) {
      const auto& ea = a.embedding().embeddings(0).values();
      const auto& eb = b.embedding().embeddings(0).values();
      for (int d = 0; d < std::min(ea.size(), eb.size()); ++d) {
        diff = std::max(diff, std::abs(ea[d] - eb[d]));
      }
    }
    return diff;
  }

  static std::vector<std::string>* paths_;
  static std::vector<tlserve::v1::InputSpec>* specs_;
};

std::vector<std::string>* SharedBackboneTest::paths_ = nullptr;
std::vector<tlserve::v1::InputSpec>* SharedBackboneTest::specs_ = nullptr;

TEST_F(SharedBackboneTest, SharedBatchMatchesEachModelRunAlone) {
  const at::Tensor x = torch::rand({5, 1, kSize, kSize});
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  AddItem(&items, 0, x.slice(0, 0, 2), false, false);
  AddItem(&items, 1, x.slice(0, 2, 3), true, true);
  AddItem(&items, 2, x.slice(0, 1, 4), false, false);
  AddItem(&items, 0, x.slice(0, 3, 5), true, false);
  AddItem(&items, 2, x.slice(0, 0, 1), true, false);
  AddItem(&items, 1, x, false, false);
  const std::vector<InferenceRunner::ModelFile> files =
      Files({kA, kB, kC}, "backbone-1");

  InferenceRunner shared(InferenceRunner::Options{});
  std::vector<tlserve::v1::InferenceResult> got = shared.RunBatch(files, items);
  EXPECT_EQ(shared.BackboneRuns(), 1);
  for (const auto& info : shared.LoadedModels()) {
    EXPECT_EQ(info.shared_backbone, "backbone-1") << info.model_id;
  }
  // Loaded now: still one run for the three models.
  ExpectSameResults(shared.RunBatch(files, items), got);
  EXPECT_EQ(shared.BackboneRuns(), 2);

  InferenceRunner alone(InferenceRunner::Options{});
  std::vector<tlserve::v1::InferenceResult> want =
      RunEachModelAlone(alone, files, items);
  EXPECT_EQ(alone.BackboneRuns(), 3);
  ExpectSameResults(got, want);
  // The same models without a key in one batch: one run each.
  ExpectSameResults(alone.RunBatch(Files({kA, kB, kC}, ""), items), want);
  EXPECT_EQ(alone.BackboneRuns(), 6);
  for (const auto& info : alone.LoadedModels()) {
    EXPECT_EQ(info.shared_backbone, "") << info.model_id;
  }
  // Each model kept its own head: item 5 (b) and item 0 (a) see row 0.
  EXPECT_GT(MaxDifference(got[5], got[0]), 1e-4);
}

// Predict-only batches of a standalone model run an optimised copy
// (Options::optimize); its answers are the exported model's, and its
// bytes count as a second copy.
TEST_F(SharedBackboneTest, OptimizedCopyAnswersLikeTheExportedModel) {
  const at::Tensor x = torch::rand({3, 1, kSize, kSize});
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  AddItem(&items, 0, x.slice(0, 0, 2), false, false);
  AddItem(&items, 0, x.slice(0, 2, 3), false, false);
  InferenceRunner optimized(InferenceRunner::Options{});
  InferenceRunner::Options plain_options;
  plain_options.optimize = false;
  InferenceRunner exported(plain_options);
  const std::vector<InferenceRunner::ModelFile> files = Files({kA}, "");
  ExpectSameResults(optimized.RunBatch(files, items),
                    exported.RunBatch(files, items));
  EXPECT_EQ(optimized.LoadedBytes(), 2 * exported.LoadedBytes());
  // A batch with an Embed item runs the exported module: the same too.
  AddItem(&items, 0, x.slice(0, 0, 1), true, true);
  ExpectSameResults(optimized.RunBatch(files, items),
                    exported.RunBatch(files, items));
}

// A shared backbone runs an optimised copy of its features() too, for
// Predict and Embed alike, with its answers and one more backbone's bytes.
TEST_F(SharedBackboneTest, OptimizedBackboneAnswersLikeTheExportedOne) {
  const at::Tensor x = torch::rand({4, 1, kSize, kSize});
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  AddItem(&items, 0, x.slice(0, 0, 2), false, false);
  AddItem(&items, 1, x.slice(0, 1, 4), true, true);
  AddItem(&items, 0, x.slice(0, 3, 4), true, false);
  const std::vector<InferenceRunner::ModelFile> files =
      Files({kA, kB}, "backbone-1");
  InferenceRunner optimized(InferenceRunner::Options{});
  InferenceRunner::Options plain_options;
  plain_options.optimize = false;
  InferenceRunner exported(plain_options);
  ExpectSameResults(optimized.RunBatch(files, items),
                    exported.RunBatch(files, items));
  EXPECT_EQ(optimized.BackboneRuns(), 1);
  for (const auto& info : optimized.LoadedModels()) {
    EXPECT_EQ(info.shared_backbone, "backbone-1") << info.model_id;
  }
  int64_t heads = 0;
  for (const auto& info : exported.LoadedModels()) heads += info.bytes;
  EXPECT_EQ(optimized.LoadedBytes() - heads,
            2 * (exported.LoadedBytes() - heads));
  // One model alone on the backbone: the same answers as the whole file.
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> one;
  AddItem(&one, 0, x, false, false);
  ExpectSameResults(optimized.RunBatch(Files({kA}, "backbone-1"), one),
                    exported.RunBatch(Files({kA}, ""), one));
}

// Options::single_thread_max_rows: batches up to that many rows run on
// one intra-op thread, standalone or on a shared backbone, with the same
// answers as on several; bigger batches keep the threads.
TEST_F(SharedBackboneTest, SmallBatchesRunOnOneThreadWithTheSameAnswers) {
  const at::Tensor x = torch::rand({8, 1, kSize, kSize});
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> small;
  AddItem(&small, 0, x.slice(0, 0, 1), false, false);
  AddItem(&small, 1, x.slice(0, 1, 4), true, true);
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> big;
  AddItem(&big, 0, x, false, false);
  AddItem(&big, 1, x.slice(0, 2, 5), false, false);
  InferenceRunner::Options options;
  options.num_threads = 2;
  options.single_thread_max_rows = 4;
  InferenceRunner::Options never = options;
  never.single_thread_max_rows = 0;
  for (const std::string key : {"backbone-1", ""}) {
    SCOPED_TRACE(key.empty() ? "standalone" : "shared");
    const std::vector<InferenceRunner::ModelFile> files = Files({kA, kB}, key);
    InferenceRunner one(options);
    InferenceRunner several(never);
    ExpectSameResults(one.RunBatch(files, small), several.RunBatch(files, small));
    // Shared: one backbone run of 4 rows. Standalone: a's 1 and b's 3.
    EXPECT_EQ(one.SingleThreadRuns(), key.empty() ? 2 : 1);
    ExpectSameResults(one.RunBatch(files, big), several.RunBatch(files, big));
    // Shared: 11 rows; standalone: a's 8 and b's 3, which still fits.
    EXPECT_EQ(one.SingleThreadRuns(), key.empty() ? 3 : 1);
    EXPECT_EQ(several.SingleThreadRuns(), 0);
    for (const auto& info : one.LoadedModels()) {
      EXPECT_EQ(info.single_thread_max_rows, 4) << info.model_id;
    }
  }
}

// The default: a model's small batches try one thread and the team, then
// keep to the faster (worker/thread_choice.h), standalone or on a shared
// backbone; never one thread when the runner has only one anyway.
TEST_F(SharedBackboneTest, ThreadsAreChosenFromTheTimingsOfRealBatches) {
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> one_row;
  AddItem(&one_row, 0, torch::rand({1, 1, kSize, kSize}), false, false);
  constexpr int kBatches = 20;
  InferenceRunner::Options options;
  options.num_threads = 2;
  for (const std::string key : {"backbone-1", ""}) {
    SCOPED_TRACE(key.empty() ? "standalone" : "shared");
    InferenceRunner chosen(options);
    const std::vector<InferenceRunner::ModelFile> files = Files({kA}, key);
    for (int i = 0; i < kBatches; ++i) {
      for (const auto& result : chosen.RunBatch(files, one_row)) {
        ASSERT_TRUE(result.has_prediction()) << result.message();
      }
    }
    // Each way ran its first tries; which won is the machine's business.
    EXPECT_GE(chosen.SingleThreadRuns(), ThreadChoice::kMinSamples);
    EXPECT_LE(chosen.SingleThreadRuns(), kBatches - ThreadChoice::kMinSamples);
    for (const auto& info : chosen.LoadedModels()) {
      EXPECT_TRUE(info.threads_chosen_per_batch) << info.model_id;
      EXPECT_LE(info.single_thread_max_rows, 1) << info.model_id;
      std::cout << info.model_id << ": batches of up to "
                << info.single_thread_max_rows << " rows run on one thread, "
                << chosen.SingleThreadRuns() << " of " << kBatches
                << " on one\n";
    }
  }
  options.num_threads = 1;
  InferenceRunner single(options);
  for (int i = 0; i < 5; ++i) single.RunBatch(Files({kA}, "backbone-1"), one_row);
  EXPECT_EQ(single.SingleThreadRuns(), 0);
  for (const auto& info : single.LoadedModels()) {
    EXPECT_FALSE(info.threads_chosen_per_batch) << info.model_id;
    EXPECT_EQ(info.single_thread_max_rows, 0) << info.model_id;
  }
}

TEST_F(SharedBackboneTest, LoadedBytesCountTheBackboneOnce) {
  const google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> none;
  // The exported modules' bytes: no optimised copies.
  InferenceRunner::Options options;
  options.optimize = false;
  InferenceRunner shared(options);
  shared.RunBatch(Files({kA, kB, kC}, "backbone-1"), none);
  InferenceRunner alone(options);
  alone.RunBatch(Files({kA, kB, kC}, ""), none);
  ASSERT_EQ(shared.LoadedModels().size(), 3u);
  ASSERT_EQ(alone.LoadedModels().size(), 3u);

  int64_t heads = 0;
  int64_t full = 0;
  for (const auto& info : shared.LoadedModels()) heads += info.bytes;
  for (const auto& info : alone.LoadedModels()) full += info.bytes;
  const int64_t backbone = shared.LoadedBytes() - heads;
  EXPECT_EQ(alone.LoadedBytes(), full);
  // A full model is the backbone (with mean/std) plus its head.
  for (const auto& info : alone.LoadedModels()) {
    int64_t head = -1;
    for (const auto& s : shared.LoadedModels()) {
      if (s.model_id == info.model_id) head = s.bytes;
    }
    EXPECT_EQ(info.bytes, backbone + head) << info.model_id;
  }
  EXPECT_GT(backbone, 10 * heads);
  EXPECT_LT(shared.LoadedBytes() * 2, alone.LoadedBytes());
  std::cout << "loaded bytes of 3 models: shared " << shared.LoadedBytes()
            << " (backbone " << backbone << " + heads " << heads
            << "), standalone " << alone.LoadedBytes() << "\n";
}

TEST_F(SharedBackboneTest, DifferentWeightsOrNormalisationAreNotShared) {
  const at::Tensor x = torch::rand({2, 1, kSize, kSize});
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  for (int m = 0; m < 3; ++m) AddItem(&items, m, x, true, true);
  const std::vector<InferenceRunner::ModelFile> files =
      Files({kA, kPerturbed, kOtherNorm}, "backbone-1");
  InferenceRunner runner(InferenceRunner::Options{});
  std::vector<tlserve::v1::InferenceResult> got = runner.RunBatch(files, items);
  EXPECT_EQ(runner.BackboneRuns(), 3);
  std::map<std::string, InferenceRunner::LoadedModelInfo> loaded;
  for (const auto& info : runner.LoadedModels()) loaded[info.model_id] = info;
  ASSERT_EQ(loaded.size(), 3u);
  EXPECT_EQ(loaded["model_0"].shared_backbone, "backbone-1");
  EXPECT_EQ(loaded["model_3"].shared_backbone, "");
  EXPECT_EQ(loaded["model_4"].shared_backbone, "");
  // Standalone: the whole file counts, far more than a's head.
  EXPECT_GT(loaded["model_3"].bytes, 10 * loaded["model_0"].bytes);

  InferenceRunner alone(InferenceRunner::Options{});
  ExpectSameResults(got, RunEachModelAlone(alone, files, items));
  // Same head as a, so only the backbone or normalisation tells them apart.
  EXPECT_GT(MaxDifference(got[1], got[0]), 1e-4);
  EXPECT_GT(MaxDifference(got[2], got[0]), 1e-4);
}

TEST_F(SharedBackboneTest, UnloadingAndEvictingTheLastUserReleaseTheBackbone) {
  tlserve::v1::PredictRequest request;
  *request.mutable_tensor() = ToRaw(torch::rand({2, 1, kSize, kSize}));
  const google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> none;
  InferenceRunner runner(InferenceRunner::Options{});
  runner.RunBatch(Files({kA, kB}, "backbone-1"), none);
  int64_t head_a = 0, head_b = 0;
  for (const auto& info : runner.LoadedModels()) {
    (info.model_id == "model_0" ? head_a : head_b) = info.bytes;
  }
  const int64_t backbone = runner.LoadedBytes() - head_a - head_b;
  EXPECT_GT(backbone, 10 * (head_a + head_b));

  // a brought the backbone; b keeps it after a goes, and still predicts.
  runner.Unload("model_0");
  EXPECT_EQ(runner.LoadedBytes(), backbone + head_b);
  absl::StatusOr<tlserve::v1::PredictResponse> b =
      runner.Predict(File(kB, "backbone-1"), request);
  ASSERT_TRUE(b.ok()) << b.status();
  InferenceRunner alone(InferenceRunner::Options{});
  absl::StatusOr<tlserve::v1::PredictResponse> b_alone =
      alone.Predict(File(kB, ""), request);
  ASSERT_TRUE(b_alone.ok()) << b_alone.status();
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(b->predictions(1).probabilities(c),
                b_alone->predictions(1).probabilities(c), 1e-5);
  }
  runner.Unload("model_1");
  EXPECT_EQ(runner.LoadedBytes(), 0);
  EXPECT_TRUE(runner.LoadedModels().empty());

  // One model at most: each load evicts the previous one.
  InferenceRunner one(InferenceRunner::Options{.max_loaded_models = 1});
  ASSERT_TRUE(one.Predict(File(kA, "backbone-1"), request).ok());
  EXPECT_EQ(one.LoadedBytes(), backbone + head_a);
  ASSERT_TRUE(one.Predict(File(kB, "backbone-1"), request).ok());
  EXPECT_EQ(one.LoadedBytes(), backbone + head_b);
  ASSERT_EQ(one.LoadedModels().size(), 1u);
  EXPECT_EQ(one.LoadedModels()[0].shared_backbone, "backbone-1");
  ASSERT_TRUE(one.Predict(File(kC, ""), request).ok());
  ASSERT_EQ(one.LoadedModels().size(), 1u);
  EXPECT_EQ(one.LoadedBytes(), one.LoadedModels()[0].bytes);
  EXPECT_EQ(one.LoadedModels()[0].shared_backbone, "");
}

TEST_F(SharedBackboneTest, BadImageFailsOnlyItsItem) {
  const at::Tensor x = torch::rand({3, 1, kSize, kSize});
  Image image{kSize, kSize, 1, std::vector<uint8_t>(kSize * kSize, 0)};
  for (int i = 0; i < kSize * kSize; ++i) image.pixels[i] = (i * 53) % 256;
  absl::StatusOr<std::string> png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  AddItem(&items, 0, x.slice(0, 0, 2), false, false);
  {
    tlserve::v1::InferenceItem* item = items.Add();
    item->set_model_index(1);
    item->mutable_request()->add_images(*png);
    item->mutable_request()->add_images("not an image");
  }
  AddItem(&items, 1, x.slice(0, 2, 3), true, false);
  {
    tlserve::v1::InferenceItem* item = items.Add();
    item->set_model_index(0);
    item->set_embed(true);
    item->set_also_predict(true);
    item->mutable_request()->add_images(*png);
  }
  const std::vector<InferenceRunner::ModelFile> files =
      Files({kA, kB}, "backbone-1");
  InferenceRunner runner(InferenceRunner::Options{});
  std::vector<tlserve::v1::InferenceResult> got = runner.RunBatch(files, items);
  EXPECT_EQ(runner.BackboneRuns(), 1);
  EXPECT_EQ(got[1].code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(got[1].message(), HasSubstr("image 1"));
  for (int i : {0, 2, 3}) EXPECT_EQ(got[i].code(), 0) << got[i].message();
  InferenceRunner alone(InferenceRunner::Options{});
  ExpectSameResults(got, RunEachModelAlone(alone, files, items));
}

TEST_F(SharedBackboneTest, ConcurrentFirstLoadsKeepOneBackbone) {
  const at::Tensor x = torch::rand({1, 1, kSize, kSize});
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  for (int m = 0; m < 3; ++m) AddItem(&items, m, x, false, false);
  const std::vector<InferenceRunner::ModelFile> files =
      Files({kA, kB, kC}, "backbone-1");
  InferenceRunner sequential(InferenceRunner::Options{});
  const std::vector<tlserve::v1::InferenceResult> want =
      sequential.RunBatch(files, items);

  InferenceRunner runner(InferenceRunner::Options{});
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      // Different orders, so different models load first.
      std::vector<InferenceRunner::ModelFile> order = files;
      std::rotate(order.begin(), order.begin() + t % 3, order.end());
      google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> mine =
          items;
      for (auto& item : mine)
        item.set_model_index((item.model_index() + 3 - t % 3) % 3);
      std::vector<tlserve::v1::InferenceResult> got =
          runner.RunBatch(order, mine);
      for (int i = 0; i < 3; ++i) {
        if (got[i].code() != 0 || MaxDifference(got[i], want[i]) > 1e-5) {
          ++mismatches;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(runner.LoadedBytes(), sequential.LoadedBytes());
  for (const auto& info : runner.LoadedModels()) {
    EXPECT_EQ(info.shared_backbone, "backbone-1") << info.model_id;
  }
}

// A MULTITASK model answers Predict with every head, the same whether it
// shares its frozen backbone with a plain model in one batch or runs alone.
TEST(MultitaskInferenceTest, PredictAnswersWithEveryHead) {
  const std::string dir = testing::MakeTempDir("multitask_inference");
  const std::string backbone = testing::SaveCompactBackbone(dir, 1, 4, 9);
  DecodedDataset data = testing::SyntheticDataset(4, 8, 0, kSize, 1, 3);
  tlserve::v1::TaskSpec coarse;
  coarse.set_name("coarse");
  coarse.add_class_names("low");
  coarse.add_class_names("high");
  for (int m : {0, 0, 1, 1}) coarse.add_label_map(m);
  std::vector<InferenceRunner::ModelFile> files;
  for (bool multitask : {true, false}) {
    TrainJobInput input;
    input.spec.set_kind(multitask ? tlserve::v1::MULTITASK
                                  : tlserve::v1::FINE_TUNE);
    input.spec.mutable_freeze()->set_mode(tlserve::v1::FreezePolicy::FROZEN);
    input.spec.set_epochs(1);
    input.spec.set_batch_size(8);
    if (multitask) *input.spec.mutable_multitask()->add_tasks() = coarse;
    input.work_dir = testing::MakeTempDir(multitask ? "mt_model" : "plain_model");
    input.backbone_path = backbone;
    input.backbone_input_spec = testing::SimpleSpec(1, kSize);
    absl::StatusOr<TrainJobOutput> out = RunTrainingJob(input, data, {});
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_FALSE(out->result.frozen_backbone_digest().empty());
    InferenceRunner::ModelFile file;
    file.model_id = multitask ? "mt" : "plain";
    file.path = out->artifact_path;
    file.input_spec = out->input_spec;
    file.class_names = out->class_names;
    file.shared_backbone = "backbone-1";
    if (multitask) file.tasks = {coarse};
    files.push_back(file);
  }
  const at::Tensor x = torch::rand({3, 1, kSize, kSize});
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> items;
  for (int m : {0, 1}) {
    tlserve::v1::InferenceItem* item = items.Add();
    item->set_model_index(m);
    *item->mutable_request()->mutable_tensor() = ToRaw(x);
  }

  InferenceRunner shared(InferenceRunner::Options{});
  const std::vector<tlserve::v1::InferenceResult> got =
      shared.RunBatch(files, items);
  ASSERT_EQ(got.size(), 2u);
  ASSERT_EQ(got[0].code(), 0) << got[0].message();
  ASSERT_EQ(got[1].code(), 0) << got[1].message();
  EXPECT_EQ(shared.BackboneRuns(), 1);
  for (const auto& info : shared.LoadedModels()) {
    EXPECT_EQ(info.shared_backbone, "backbone-1") << info.model_id;
  }

  // Each head's probabilities are the softmax of its own outputs().
  torch::jit::Module model = torch::jit::load(files[0].path);
  model.eval();
  const c10::Dict<c10::IValue, c10::IValue> heads =
      model.run_method("outputs", x).toGenericDict();
  const at::Tensor classes = heads.at("classes").toTensor().softmax(1);
  const at::Tensor coarse_p = heads.at("coarse").toTensor().softmax(1);
  const tlserve::v1::PredictResponse& mt = got[0].prediction();
  ASSERT_EQ(mt.predictions_size(), 3);
  for (int r = 0; r < 3; ++r) {
    SCOPED_TRACE(absl::StrCat("row ", r));
    const tlserve::v1::Prediction& p = mt.predictions(r);
    ASSERT_EQ(p.probabilities_size(), 4);
    for (int c = 0; c < 4; ++c) {
      EXPECT_NEAR(p.probabilities(c), classes[r][c].item<float>(), 1e-5);
    }
    ASSERT_EQ(p.tasks_size(), 1);
    const tlserve::v1::TaskPrediction& t = p.tasks(0);
    EXPECT_EQ(t.task(), "coarse");
    ASSERT_EQ(t.probabilities_size(), 2);
    EXPECT_NEAR(t.probabilities(0) + t.probabilities(1), 1.0f, 1e-5f);
    for (int c = 0; c < 2; ++c) {
      EXPECT_NEAR(t.probabilities(c), coarse_p[r][c].item<float>(), 1e-5);
    }
    // top_k 0 means 5, capped at each head's own class count.
    EXPECT_EQ(p.top_size(), 4);
    ASSERT_EQ(t.top_size(), 2);
    EXPECT_EQ(t.top(0).label(), t.top(0).index() == 0 ? "low" : "high");
    EXPECT_GE(t.top(0).probability(), t.top(1).probability());
  }
  EXPECT_EQ(got[1].prediction().predictions(0).tasks_size(), 0);

  // Alone, without a shared backbone: the same answers.
  InferenceRunner alone(InferenceRunner::Options{});
  std::vector<InferenceRunner::ModelFile> own = files;
  for (auto& f : own) f.shared_backbone.clear();
  const std::vector<tlserve::v1::InferenceResult> want =
      alone.RunBatch(own, items);
  ASSERT_EQ(want[0].code(), 0) << want[0].message();
  for (int r = 0; r < 3; ++r) {
    const auto& a = got[0].prediction().predictions(r).tasks(0);
    const auto& b = want[0].prediction().predictions(r).tasks(0);
    for (int c = 0; c < 2; ++c) {
      EXPECT_NEAR(a.probabilities(c), b.probabilities(c), 1e-5);
    }
  }

  // A server that forgot the model's tasks gets an error, not a misread
  // of the extra outputs as classes.
  std::vector<InferenceRunner::ModelFile> forgot = {own[0]};
  forgot[0].tasks.clear();
  google::protobuf::RepeatedPtrField<tlserve::v1::InferenceItem> one;
  *one.Add() = items[0];
  const std::vector<tlserve::v1::InferenceResult> mismatch =
      alone.RunBatch(forgot, one);
  EXPECT_EQ(mismatch[0].code(),
            static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(mismatch[0].message(),
              HasSubstr("outputs 6 classes but has 4 class names"));
}

}  // namespace
}  // namespace tlserve::worker
