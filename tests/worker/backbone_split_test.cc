#include "worker/backbone_split.h"

#include <torch/script.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/test_util.h"
#include "worker/model_builder.h"

namespace tlserve::worker {
namespace {

using ::testing::HasSubstr;

// Both halves together compute forward, bit for bit, in eval mode.
void ExpectSplitMatchesForward(torch::jit::Module& backbone,
                               const std::string& block,
                               const at::Tensor& input) {
  absl::StatusOr<BackboneCut> cut =
      SplitAtFirstTrainableBlock(backbone, {block});
  ASSERT_TRUE(cut.ok()) << block << ": " << cut.status();
  EXPECT_EQ(cut->block, block);
  backbone.eval();
  torch::NoGradGuard no_grad;
  const at::Tensor whole = backbone.forward({input}).toTensor();
  const at::Tensor activation =
      backbone.run_method(cut->frozen_part, input).toTensor();
  const at::Tensor joined =
      backbone.run_method(cut->trainable_part, activation).toTensor();
  EXPECT_TRUE(torch::equal(whole, joined)) << block;
  // The cut is where the block starts, not the input or the output.
  EXPECT_FALSE(activation.sizes() == input.sizes() &&
               torch::equal(activation, input))
      << block;
}

TEST(BackboneSplitTest, CompactResNetSplitsAtEveryBlock) {
  absl::StatusOr<torch::jit::Module> net = MakeCompactResNet(3, 8, 5);
  ASSERT_TRUE(net.ok()) << net.status();
  const at::Tensor x = torch::rand({2, 3, 16, 16});
  for (const std::string block : {"layer1", "layer2", "layer3"}) {
    ExpectSplitMatchesForward(*net, block, x);
  }
  // Asking twice finds the methods made the first time.
  EXPECT_TRUE(SplitAtFirstTrainableBlock(*net, {"layer3"}).ok());
}

TEST(BackboneSplitTest, CutsAtTheEarliestOfSeveralTrainableBlocks) {
  absl::StatusOr<torch::jit::Module> net = MakeCompactResNet(3, 8, 5);
  ASSERT_TRUE(net.ok());
  absl::StatusOr<BackboneCut> cut =
      SplitAtFirstTrainableBlock(*net, {"layer3", "layer2"});
  ASSERT_TRUE(cut.ok()) << cut.status();
  EXPECT_EQ(cut->block, "layer2");
}

TEST(BackboneSplitTest, TorchvisionBlocksNestedInHelpersAndContainers) {
  if (!testing::PythonTorchAvailable()) {
    GTEST_SKIP() << "/usr/bin/python3 with torchvision is not available";
  }
  // resnet18 calls its stages from _forward_impl; mobilenet_v2's blocks
  // live inside `features`.
  for (const std::string arch : {"resnet18", "mobilenet_v2"}) {
    absl::StatusOr<std::string> path = testing::TorchvisionBackbone(arch, 32);
    ASSERT_TRUE(path.ok()) << path.status();
    torch::jit::Module backbone = torch::jit::load(*path);
    const std::vector<std::string> blocks = Blocks(backbone);
    ASSERT_GE(blocks.size(), 3u) << arch;
    // The last block and one in the middle.
    ExpectSplitMatchesForward(backbone, blocks.back(), torch::rand({2, 3, 32, 32}));
    ExpectSplitMatchesForward(backbone, blocks[blocks.size() / 2],
                              torch::rand({2, 3, 32, 32}));
  }
}

torch::jit::Module TwoLayers(const std::string& forward) {
  torch::jit::Module net("Net");
  for (const char* name : {"a", "b"}) {
    torch::jit::Module layer(std::string("Layer_") + name);
    layer.register_parameter("weight", torch::rand({1}), false);
    layer.define("def forward(self, x):\n    return x * self.weight\n");
    net.register_module(name, layer);
  }
  net.define(forward);
  return net;
}

TEST(BackboneSplitTest, RefusesWhatACacheWouldGetWrong) {
  // A skip connection around the cut needs more than the activation.
  torch::jit::Module skip = TwoLayers(
      "def forward(self, x):\n"
      "    y = self.a.forward(x)\n"
      "    return self.b.forward(y) + x\n");
  absl::StatusOr<BackboneCut> cut = SplitAtFirstTrainableBlock(skip, {"b"});
  ASSERT_FALSE(cut.ok());
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(cut.status().message()),
              HasSubstr("more of the input than the activation"));

  // The frozen part reading a trainable block's weight would go stale.
  torch::jit::Module reads = TwoLayers(
      "def forward(self, x):\n"
      "    y = self.a.forward(x) * self.b.weight\n"
      "    return self.b.forward(y)\n");
  cut = SplitAtFirstTrainableBlock(reads, {"b"});
  ASSERT_FALSE(cut.ok());
  EXPECT_THAT(std::string(cut.status().message()),
              HasSubstr("frozen part reads a trainable block"));

  // A block that runs inside a branch has no single place to cut.
  torch::jit::Module branch = TwoLayers(
      "def forward(self, x):\n"
      "    y = self.a.forward(x)\n"
      "    if bool(y.sum() > 0):\n"
      "        y = self.b.forward(y)\n"
      "    return y\n");
  cut = SplitAtFirstTrainableBlock(branch, {"b"});
  ASSERT_FALSE(cut.ok());
  EXPECT_THAT(std::string(cut.status().message()), HasSubstr("loop or branch"));

  // The plain two-layer chain splits.
  torch::jit::Module chain = TwoLayers(
      "def forward(self, x):\n"
      "    return self.b.forward(self.a.forward(x))\n");
  ExpectSplitMatchesForward(chain, "b", torch::rand({4}));
}

}  // namespace
}  // namespace tlserve::worker
