#include "worker/checkpoint.h"

#include <torch/torch.h>

#include <fstream>
#include <random>
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

TEST(CheckpointTest, RoundTripRestoresModelOptimizerAndRngs) {
  const std::string path = testing::MakeTempDir("ckpt") + "/ckpt.pt";
  Model saved = MakeModel(8, 1);
  Step(saved);
  std::mt19937_64 host_rng(123);
  host_rng();
  ASSERT_TRUE(
      SaveCheckpoint(path, 4, saved.module, *saved.optimizer, host_rng).ok());
  const uint64_t next_host = host_rng();
  const at::Tensor next_torch = torch::rand({3});
  // One more step from the saved state, for comparison after restore.
  Step(saved);
  auto expected = testing::NamedState(saved.module);

  Model restored = MakeModel(8, 2);  // different initial weights
  std::mt19937_64 restored_rng(999);
  absl::StatusOr<int> epoch =
      LoadCheckpoint(path, restored.module, *restored.optimizer, restored_rng);
  ASSERT_TRUE(epoch.ok()) << epoch.status();
  EXPECT_EQ(*epoch, 4);
  EXPECT_EQ(restored_rng(), next_host);
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

TEST(CheckpointTest, RejectsMissingForeignAndMismatchingFiles) {
  const std::string dir = testing::MakeTempDir("ckpt_bad");
  Model model = MakeModel(8, 1);
  std::mt19937_64 rng(1);
  EXPECT_EQ(
      LoadCheckpoint(dir + "/none.pt", model.module, *model.optimizer, rng)
          .status()
          .code(),
      absl::StatusCode::kNotFound);

  std::ofstream(dir + "/garbage.pt") << "garbage";
  EXPECT_EQ(
      LoadCheckpoint(dir + "/garbage.pt", model.module, *model.optimizer, rng)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(
      SaveCheckpoint(dir + "/ok.pt", 1, model.module, *model.optimizer, rng)
          .ok());
  Model other = MakeModel(6, 1);  // hidden layer of another width
  const at::Tensor before = other.module.attr("head")
                                .toModule()
                                .attr("fc0")
                                .toModule()
                                .attr("weight")
                                .toTensor()
                                .clone();
  absl::StatusOr<int> epoch =
      LoadCheckpoint(dir + "/ok.pt", other.module, *other.optimizer, rng);
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
