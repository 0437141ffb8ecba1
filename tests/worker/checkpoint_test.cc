#include "worker/checkpoint.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/test_util.h"
#include "worker/model_builder.h"

namespace tlserve::worker {
namespace {

using ::testing::HasSubstr;

struct Model {
  torch::jit::Module module;
  std::unique_ptr<torch::optim::AdamW> optimizer;
};

Model MakeModel(int hidden, uint64_t seed) {
  auto backbone = MakeCompactResNet(1, 4, seed);
  auto head = MakeHead(16, {hidden}, 0.0, 3, seed);
  EXPECT_TRUE(backbone.ok() && head.ok());
  auto classifier = MakeClassifier(*backbone, *head, testing::SimpleSpec(1, 8));
  EXPECT_TRUE(classifier.ok());
  std::vector<at::Tensor> params;
  for (const auto& p : classifier->parameters()) params.push_back(p);
  return {*classifier, std::make_unique<torch::optim::AdamW>(
                           params, torch::optim::AdamWOptions(0.01))};
}

void Step(Model& model) {
  model.module.train();
  model.optimizer->zero_grad();
  at::Tensor loss = model.module.forward({torch::rand({4, 1, 8, 8})})
                        .toTensor()
                        .logsumexp(1)
                        .mean();
  loss.backward();
  model.optimizer->step();
}

TEST(CheckpointTest, RoundTripRestoresModelOptimizerCursorAndRng) {
  const std::string path = testing::MakeTempDir("ckpt") + "/ckpt.pt";
  Model saved = MakeModel(8, 1);
  Step(saved);
  TrainingCursor cursor;
  cursor.epoch = 4;
  cursor.batch = 7;
  cursor.loss_sum = 12.25;
  cursor.correct = 99;
  cursor.seen = 224;
  ASSERT_TRUE(SaveCheckpoint(path, cursor, saved.module, *saved.optimizer).ok());
  const at::Tensor next_torch = torch::rand({3});
  // One more step from the saved state, for comparison after restore.
  Step(saved);
  auto expected = testing::NamedState(saved.module);

  Model restored = MakeModel(8, 2);  // different initial weights
  absl::StatusOr<TrainingCursor> loaded =
      LoadCheckpoint(path, restored.module, *restored.optimizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->epoch, 4);
  EXPECT_EQ(loaded->batch, 7);
  EXPECT_EQ(loaded->loss_sum, 12.25);
  EXPECT_EQ(loaded->correct, 99);
  EXPECT_EQ(loaded->seen, 224);
  EXPECT_TRUE(torch::equal(torch::rand({3}), next_torch));
  // Same step (same random input, AdamW moments restored) -> same weights.
  Step(restored);
  auto actual = testing::NamedState(restored.module);
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_TRUE(torch::equal(actual[i].second, expected[i].second))
        << actual[i].first;
  }
}

TEST(CheckpointTest, LeavesOutUnchangedTensorsAndKeepsThemAsBuilt) {
  const std::string dir = testing::MakeTempDir("ckpt_slim");
  Model saved = MakeModel(8, 1);
  Step(saved);
  auto is_backbone = [](const std::string& name) {
    return name.rfind("backbone.", 0) == 0;
  };
  ASSERT_TRUE(SaveCheckpoint(dir + "/slim.pt", {}, saved.module,
                             *saved.optimizer, is_backbone)
                  .ok());
  ASSERT_TRUE(
      SaveCheckpoint(dir + "/full.pt", {}, saved.module, *saved.optimizer).ok());
  EXPECT_LT(std::filesystem::file_size(dir + "/slim.pt"),
            std::filesystem::file_size(dir + "/full.pt"));

  Model restored = MakeModel(8, 2);
  const auto built = testing::NamedState(restored.module);
  ASSERT_TRUE(
      LoadCheckpoint(dir + "/slim.pt", restored.module, *restored.optimizer)
          .ok());
  const auto original = testing::NamedState(saved.module);
  const auto actual = testing::NamedState(restored.module);
  ASSERT_EQ(actual.size(), original.size());
  int backbone_tensors = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (is_backbone(actual[i].first)) {
      ++backbone_tensors;
      // Left out of the file: stays as the restoring model built it.
      EXPECT_TRUE(torch::equal(actual[i].second, built[i].second))
          << actual[i].first;
    } else {
      EXPECT_TRUE(torch::equal(actual[i].second, original[i].second))
          << actual[i].first;
    }
  }
  EXPECT_GT(backbone_tensors, 0);
}

TEST(CheckpointTest, RejectsMissingForeignAndMismatchingFiles) {
  const std::string dir = testing::MakeTempDir("ckpt_bad");
  Model model = MakeModel(8, 1);
  EXPECT_EQ(
      LoadCheckpoint(dir + "/none.pt", model.module, *model.optimizer)
          .status()
          .code(),
      absl::StatusCode::kNotFound);

  std::ofstream(dir + "/garbage.pt") << "garbage";
  EXPECT_EQ(
      LoadCheckpoint(dir + "/garbage.pt", model.module, *model.optimizer)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(
      SaveCheckpoint(dir + "/ok.pt", {1}, model.module, *model.optimizer).ok());
  Model other = MakeModel(6, 1);  // hidden layer of another width
  const at::Tensor before = other.module.attr("head")
                                .toModule()
                                .attr("fc0")
                                .toModule()
                                .attr("weight")
                                .toTensor()
                                .clone();
  absl::StatusOr<TrainingCursor> epoch =
      LoadCheckpoint(dir + "/ok.pt", other.module, *other.optimizer);
  EXPECT_EQ(epoch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(epoch.status().message(), HasSubstr("head.fc0.weight"));
  // Nothing was copied into the model.
  EXPECT_TRUE(torch::equal(before, other.module.attr("head")
                                       .toModule()
                                       .attr("fc0")
                                       .toModule()
                                       .attr("weight")
                                       .toTensor()));
}

}  // namespace
}  // namespace tlserve::worker
