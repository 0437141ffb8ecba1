#include "worker/model_builder.h"

#include <torch/torch.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/test_util.h"

namespace tlserve::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using tlserve::v1::FreezePolicy;

at::Tensor Forward(torch::jit::Module module, const at::Tensor& x) {
  return module.forward({x}).toTensor();
}

TEST(ModelBuilderTest, CompactResNetMapsImagesToFeatures) {
  absl::StatusOr<torch::jit::Module> net = MakeCompactResNet(1, 16, 7);
  ASSERT_TRUE(net.ok()) << net.status();
  net->eval();
  at::Tensor out = Forward(*net, torch::rand({3, 1, 28, 28}));
  EXPECT_THAT(out.sizes().vec(), ElementsAre(3, 64));
  EXPECT_THAT(Blocks(*net), ElementsAre("stem", "layer1", "layer2", "layer3"));
  absl::StatusOr<int64_t> dim = FeatureDim(*net, testing::SimpleSpec(1, 28));
  ASSERT_TRUE(dim.ok()) << dim.status();
  EXPECT_EQ(*dim, 64);
}

TEST(ModelBuilderTest, WeightsDependOnSeedOnly) {
  auto a = MakeCompactResNet(3, 8, 1);
  auto b = MakeCompactResNet(3, 8, 1);
  auto c = MakeCompactResNet(3, 8, 2);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  auto sa = testing::NamedState(*a);
  auto sb = testing::NamedState(*b);
  auto sc = testing::NamedState(*c);
  ASSERT_EQ(sa.size(), sb.size());
  bool any_differs = false;
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_TRUE(torch::equal(sa[i].second, sb[i].second)) << sa[i].first;
    if (!torch::equal(sa[i].second, sc[i].second)) any_differs = true;
  }
  EXPECT_TRUE(any_differs);
}

TEST(ModelBuilderTest, RejectsBadArguments) {
  EXPECT_EQ(MakeCompactResNet(0, 16, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeHead(64, {}, 1.5, 10, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeHead(64, {0}, 0, 10, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  tlserve::v1::InputSpec spec = testing::SimpleSpec(3, 32);
  spec.mutable_std()->RemoveLast();
  EXPECT_THAT(ValidateInputSpec(spec).message(), HasSubstr("one per channel"));
}

TEST(ModelBuilderTest, HeadDropoutOnlyInTraining) {
  auto head = MakeHead(64, {32, 16}, 0.5, 10, 3);
  ASSERT_TRUE(head.ok()) << head.status();
  at::Tensor x = torch::rand({4, 64});
  head->eval();
  at::Tensor a = Forward(*head, x);
  EXPECT_THAT(a.sizes().vec(), ElementsAre(4, 10));
  EXPECT_TRUE(torch::equal(a, Forward(*head, x)));
  head->train();
  EXPECT_FALSE(torch::equal(Forward(*head, x), Forward(*head, x)));
}

TEST(ModelBuilderTest, ClassifierNormalisesThenRunsBackboneAndHead) {
  auto backbone = MakeCompactResNet(3, 8, 1);
  auto head = MakeHead(32, {}, 0, 5, 2);
  ASSERT_TRUE(backbone.ok() && head.ok());
  tlserve::v1::InputSpec spec = testing::ImageNetSpec(16);
  auto classifier = MakeClassifier(*backbone, *head, spec);
  ASSERT_TRUE(classifier.ok()) << classifier.status();
  classifier->eval();
  at::Tensor x = torch::rand({2, 3, 16, 16});
  at::Tensor mean =
      torch::tensor({0.485f, 0.456f, 0.406f}).reshape({1, 3, 1, 1});
  at::Tensor std =
      torch::tensor({0.229f, 0.224f, 0.225f}).reshape({1, 3, 1, 1});
  at::Tensor expected = Forward(*head, Forward(*backbone, (x - mean) / std));
  EXPECT_TRUE(torch::allclose(Forward(*classifier, x), expected));
  at::Tensor features = classifier->get_method("features")({x}).toTensor();
  EXPECT_THAT(features.sizes().vec(), ElementsAre(2, 32));
}

TEST(ModelBuilderTest, ClassifierSavesAndReloads) {
  auto backbone = MakeCompactResNet(1, 8, 1);
  auto head = MakeHead(32, {16}, 0.2, 4, 2);
  ASSERT_TRUE(backbone.ok() && head.ok());
  auto classifier =
      MakeClassifier(*backbone, *head, testing::SimpleSpec(1, 12));
  ASSERT_TRUE(classifier.ok());
  classifier->eval();
  const std::string path = testing::MakeTempDir("save") + "/model.pt";
  classifier->save(path);
  torch::jit::Module loaded = torch::jit::load(path);
  loaded.eval();
  at::Tensor x = torch::rand({5, 1, 12, 12});
  EXPECT_TRUE(torch::equal(Forward(*classifier, x), Forward(loaded, x)));
}

// The lead's design premise: autograd runs through Module::forward of a
// module built from TorchScript source, and BatchNorm statistics move.
TEST(ModelBuilderTest, JitModuleTrains) {
  torch::manual_seed(0);
  auto backbone = MakeCompactResNet(1, 8, 1);
  auto head = MakeHead(32, {}, 0, 3, 2);
  ASSERT_TRUE(backbone.ok() && head.ok());
  auto classifier =
      MakeClassifier(*backbone, *head, testing::SimpleSpec(1, 12));
  ASSERT_TRUE(classifier.ok());
  DecodedDataset data = testing::SyntheticDataset(3, 16, 0, 12, 1, 1);
  at::Tensor x = torch::empty({48, 1, 12, 12});
  at::Tensor y = torch::empty({48}, torch::kLong);
  for (int i = 0; i < 48; ++i) {
    x[i] = torch::from_blob(data.train.images[i].pixels.data(), {1, 12, 12},
                            torch::kByte)
               .to(torch::kFloat) /
           255.0;
    y[i] = data.train.labels[i];
  }
  std::vector<at::Tensor> params;
  for (const auto& p : classifier->parameters()) params.push_back(p);
  torch::optim::SGD optimizer(params,
                              torch::optim::SGDOptions(0.05).momentum(0.9));
  at::Tensor running_mean_before = backbone->attr("stem")
                                       .toModule()
                                       .attr("bn")
                                       .toModule()
                                       .attr("running_mean")
                                       .toTensor()
                                       .clone();
  classifier->train();
  float first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    optimizer.zero_grad();
    at::Tensor loss =
        torch::nn::functional::cross_entropy(Forward(*classifier, x), y);
    loss.backward();
    optimizer.step();
    if (step == 0) first = loss.item<float>();
    last = loss.item<float>();
  }
  EXPECT_LT(last, first * 0.5f);
  EXPECT_FALSE(torch::equal(running_mean_before, backbone->attr("stem")
                                                     .toModule()
                                                     .attr("bn")
                                                     .toModule()
                                                     .attr("running_mean")
                                                     .toTensor()));
}

TEST(ModelBuilderTest, ReinitializeResetsWeightsAndStatistics) {
  auto net = MakeCompactResNet(1, 8, 1);
  ASSERT_TRUE(net.ok());
  torch::jit::Module bn = net->attr("layer1").toModule().attr("bn1").toModule();
  {
    torch::NoGradGuard no_grad;
    bn.attr("weight").toTensor().fill_(3);
    bn.attr("running_mean").toTensor().fill_(2);
  }
  const at::Tensor conv_before = net->attr("stem")
                                     .toModule()
                                     .attr("conv")
                                     .toModule()
                                     .attr("weight")
                                     .toTensor()
                                     .clone();
  ASSERT_TRUE(ReinitializeParameters(*net, 99).ok());
  EXPECT_TRUE(torch::equal(bn.attr("weight").toTensor(), torch::ones({8})));
  EXPECT_TRUE(torch::equal(bn.attr("bias").toTensor(), torch::zeros({8})));
  EXPECT_TRUE(
      torch::equal(bn.attr("running_mean").toTensor(), torch::zeros({8})));
  const at::Tensor conv_after = net->attr("stem")
                                    .toModule()
                                    .attr("conv")
                                    .toModule()
                                    .attr("weight")
                                    .toTensor();
  EXPECT_FALSE(torch::equal(conv_before, conv_after));
  // kaiming fan_out: std = sqrt(2 / (8 * 3 * 3)) = 0.167.
  EXPECT_NEAR(conv_after.std().item<float>(), 0.167f, 0.05f);
}

class TorchvisionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::PythonTorchAvailable()) {
      GTEST_SKIP() << "/usr/bin/python3 with torch is not available";
    }
    absl::StatusOr<std::string> path =
        testing::TorchvisionBackbone("resnet18", 32);
    ASSERT_TRUE(path.ok()) << path.status();
    backbone_ = torch::jit::load(*path);
  }
  torch::jit::Module backbone_;
};

TEST_F(TorchvisionTest, Resnet18Blocks) {
  EXPECT_THAT(Blocks(backbone_), ElementsAre("conv1", "bn1", "layer1", "layer2",
                                             "layer3", "layer4"));
  absl::StatusOr<int64_t> dim =
      FeatureDim(backbone_, testing::ImageNetSpec(32));
  ASSERT_TRUE(dim.ok()) << dim.status();
  EXPECT_EQ(*dim, 512);
}

TEST_F(TorchvisionTest, LastBlockPolicyLeavesOnlyLayer4Trainable) {
  FreezePolicy policy;
  policy.set_mode(FreezePolicy::LAST_N_BLOCKS);
  policy.set_n_blocks(1);
  absl::StatusOr<FreezePlan> plan = ApplyFreezePolicy(backbone_, policy);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->trainable_blocks, ElementsAre("layer4"));
  EXPECT_FALSE(plan->backbone_frozen);
  for (const auto& p : backbone_.named_parameters()) {
    EXPECT_EQ(p.value.requires_grad(), p.name.rfind("layer4.", 0) == 0)
        << p.name;
  }

  policy.set_n_blocks(7);
  EXPECT_THAT(ApplyFreezePolicy(backbone_, policy).status().message(),
              HasSubstr("outside [1, 6]"));
  policy.set_n_blocks(0);
  EXPECT_EQ(ApplyFreezePolicy(backbone_, policy).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TorchvisionTest, FrozenAndFullPolicies) {
  FreezePolicy policy;
  policy.set_mode(FreezePolicy::FROZEN);
  auto plan = ApplyFreezePolicy(backbone_, policy);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->backbone_frozen);
  for (const auto& p : backbone_.parameters()) EXPECT_FALSE(p.requires_grad());

  policy.set_mode(FreezePolicy::FULL);
  plan = ApplyFreezePolicy(backbone_, policy);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->trainable_blocks.size(), 6u);
  for (const auto& p : backbone_.parameters()) EXPECT_TRUE(p.requires_grad());
}

TEST_F(TorchvisionTest, TrainingModeKeepsFrozenBlocksInEval) {
  auto head = MakeHead(512, {}, 0, 3, 1);
  ASSERT_TRUE(head.ok());
  auto classifier = MakeClassifier(backbone_, *head, testing::ImageNetSpec(32));
  ASSERT_TRUE(classifier.ok());
  FreezePolicy policy;
  policy.set_mode(FreezePolicy::LAST_N_BLOCKS);
  policy.set_n_blocks(2);
  auto plan = ApplyFreezePolicy(backbone_, policy);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(SetTrainingMode(*classifier, *plan, true).ok());
  EXPECT_TRUE(classifier->is_training());
  EXPECT_TRUE(backbone_.attr("layer4").toModule().is_training());
  EXPECT_TRUE(backbone_.attr("layer3").toModule().is_training());
  EXPECT_FALSE(backbone_.attr("layer2").toModule().is_training());
  EXPECT_FALSE(backbone_.attr("bn1").toModule().is_training());
  for (const auto& m : backbone_.attr("layer1").toModule().modules()) {
    EXPECT_FALSE(m.is_training());
  }
  ASSERT_TRUE(SetTrainingMode(*classifier, *plan, false).ok());
  EXPECT_FALSE(backbone_.attr("layer4").toModule().is_training());
}

}  // namespace
}  // namespace tlserve::worker
