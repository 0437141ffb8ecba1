// torchvision architectures exported by tools/export_backbone.py, run
// through Blocks(), the freeze policy and a real fine-tuning job, with the
// exported classifier checked against torch.jit.load in Python. Skips when
// /usr/bin/python3 has no torchvision.

#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/test_util.h"
#include "worker/model_builder.h"
#include "worker/trainer.h"

namespace tlserve::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using tlserve::v1::FreezePolicy;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

bool PythonTorchvisionAvailable() {
  static const bool available = [] {
    std::string output;
    return testing::RunPython("import torchvision\n", &output) == 0;
  }();
  return available;
}

std::vector<std::string> Numbered(const std::string& prefix,
                                  const std::vector<int>& indices) {
  std::vector<std::string> names;
  for (int i : indices) names.push_back(absl::StrCat(prefix, i));
  return names;
}

std::vector<std::string> Range(const std::string& prefix, int n) {
  std::vector<int> indices(n);
  for (int i = 0; i < n; ++i) indices[i] = i;
  return Numbered(prefix, indices);
}

struct Arch {
  std::string name;
  int size;  // input height and width of the export and the job
  int64_t feature_dim;
  std::vector<std::string> blocks;
};

// Test names and ctest list the architecture, not the struct's bytes.
void PrintTo(const Arch& arch, std::ostream* os) {
  *os << arch.name << " at " << arch.size << "x" << arch.size;
}

std::vector<Arch> Archs() {
  const std::vector<std::string> resnet = {"conv1",  "bn1",    "layer1",
                                           "layer2", "layer3", "layer4"};
  return {
      {"resnet18", 32, 512, resnet},
      {"resnet50", 32, 2048, resnet},
      {"mobilenet_v2", 32, 1280, Range("features.", 19)},
      {"mobilenet_v3_small", 32, 576, Range("features.", 13)},
      {"efficientnet_b0", 32, 1280, Range("features.", 9)},
      // Conv and BatchNorm layers of `features` (ReLU and max-pool hold no
      // parameters); the whole classifier is cut, so D = 512 * 7 * 7.
      {"vgg11_bn", 32, 25088,
       Numbered("features.",
                {0, 1, 4, 5, 8, 9, 11, 12, 15, 16, 18, 19, 22, 23, 25, 26})},
      {"densenet121",
       32,
       1024,
       {"features.conv0", "features.norm0", "features.denseblock1",
        "features.transition1", "features.denseblock2", "features.transition2",
        "features.denseblock3", "features.transition3", "features.denseblock4",
        "features.norm5"}},
      // 75 is the smallest input inception_v3 takes.
      {"inception_v3",
       75,
       2048,
       {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
        "Conv2d_4a_3x3", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
        "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b",
        "Mixed_7c"}},
  };
}

std::map<std::string, at::Tensor> StateMap(const torch::jit::Module& module) {
  std::map<std::string, at::Tensor> state;
  for (auto& [name, tensor] : testing::NamedState(module)) state[name] = tensor;
  return state;
}

// Logits of torch.jit.load(model_path) in Python for `x`.
absl::StatusOr<std::vector<float>> PythonLogits(const std::string& model_path,
                                                const at::Tensor& x) {
  const std::string dir = testing::MakeTempDir("python_logits");
  const std::string input_path = dir + "/input.f32";
  const at::Tensor contiguous = x.contiguous();
  std::ofstream(input_path, std::ios::binary)
      .write(reinterpret_cast<const char*>(contiguous.data_ptr<float>()),
             static_cast<std::streamsize>(contiguous.numel() * sizeof(float)));
  std::string output;
  const int rc = testing::RunPython(
      absl::StrCat(
          "import torch\n"
          "m = torch.jit.load('",
          model_path,
          "')\n"
          "m.eval()\n"
          "data = bytearray(open('",
          input_path,
          "', 'rb').read())\n"
          "x = torch.frombuffer(data, dtype=torch.float32).reshape(",
          absl::StrJoin(x.sizes(), ", "),
          ")\n"
          "with torch.no_grad():\n"
          "    y = m(x)\n"
          "print(' '.join('%.9g' % v for v in y.flatten().tolist()))\n"),
      &output);
  if (rc != 0) return absl::InternalError(output);
  std::vector<float> values;
  for (absl::string_view v :
       absl::StrSplit(output, ' ', absl::SkipWhitespace())) {
    values.push_back(std::stof(std::string(v)));
  }
  return values;
}

class TorchvisionBackboneTest : public ::testing::TestWithParam<Arch> {
 protected:
  void SetUp() override {
    if (!PythonTorchvisionAvailable()) {
      GTEST_SKIP() << "/usr/bin/python3 with torchvision is not available";
    }
  }
};

TEST_P(TorchvisionBackboneTest, ExportsBlocksAndFineTunesLastBlock) {
  const Arch& arch = GetParam();
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::string> path =
      testing::TorchvisionBackbone(arch.name, arch.size);
  ASSERT_TRUE(path.ok()) << path.status();
  const double export_seconds = SecondsSince(start);

  torch::jit::Module original = torch::jit::load(*path);
  const std::vector<std::string> blocks = Blocks(original);
  EXPECT_GE(blocks.size(), 3u);
  EXPECT_THAT(blocks, ElementsAreArray(arch.blocks));
  absl::StatusOr<int64_t> dim =
      FeatureDim(original, testing::ImageNetSpec(arch.size));
  ASSERT_TRUE(dim.ok()) << dim.status();
  EXPECT_EQ(*dim, arch.feature_dim);

  const Clock::time_point train_start = Clock::now();
  TrainJobInput input;
  input.spec.set_kind(tlserve::v1::FINE_TUNE);
  input.spec.mutable_freeze()->set_mode(FreezePolicy::LAST_N_BLOCKS);
  input.spec.mutable_freeze()->set_n_blocks(1);
  input.spec.mutable_optimizer()->set_kind(tlserve::v1::OptimizerSpec::SGD);
  input.spec.set_epochs(1);
  input.spec.set_batch_size(8);
  input.spec.set_seed(7);
  input.work_dir = testing::MakeTempDir(arch.name);
  input.backbone_path = *path;
  input.backbone_input_spec = testing::ImageNetSpec(arch.size);
  // One thread: the work is small, and on a busy 2-core machine two
  // OpenMP threads spin-waiting for each other made the job 6x slower.
  input.num_threads = 1;
  const DecodedDataset data =
      testing::SyntheticDataset(3, 6, 2, arch.size, 3, 11);
  std::vector<std::string> logs;
  TrainerCallbacks callbacks;
  callbacks.on_log = [&](const std::string& line) { logs.push_back(line); };
  absl::StatusOr<TrainJobOutput> out = RunTrainingJob(input, data, callbacks);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->cancelled);
  const double train_seconds = SecondsSince(train_start);
  EXPECT_EQ(out->result.feature_dim(), arch.feature_dim);
  EXPECT_THAT(out->result.blocks(), ElementsAreArray(arch.blocks));
  EXPECT_THAT(absl::StrJoin(logs, "\n"),
              HasSubstr(absl::StrCat("(blocks: ", blocks.back(), ")")));

  // Only the last block trains: every other parameter and buffer is
  // bit-identical (frozen BatchNorm layers ran in eval mode), and every
  // parameter of the last block moved.
  torch::jit::Module exported = torch::jit::load(out->artifact_path);
  auto trained = StateMap(exported.attr("backbone").toModule());
  const std::string last = blocks.back() + ".";
  int last_block_parameters = 0;
  for (const auto& p : original.named_parameters(/*recurse=*/true)) {
    if (!StartsWith(p.name, last)) continue;
    ++last_block_parameters;
    ASSERT_TRUE(trained.count(p.name)) << p.name;
    EXPECT_FALSE(torch::equal(p.value, trained[p.name]))
        << p.name << " is in the trained block but did not change";
  }
  EXPECT_GT(last_block_parameters, 0);
  for (const auto& [name, tensor] : StateMap(original)) {
    if (StartsWith(name, last)) continue;
    ASSERT_TRUE(trained.count(name)) << name;
    EXPECT_TRUE(torch::equal(tensor, trained[name]))
        << name << " changed but is frozen";
  }

  // The exported classifier gives the same logits in Python.
  const Clock::time_point check_start = Clock::now();
  torch::manual_seed(3);
  const at::Tensor x = torch::rand({2, 3, arch.size, arch.size});
  exported.eval();
  at::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    logits = exported.forward({x}).toTensor().contiguous();
  }
  ASSERT_THAT(logits.sizes().vec(), ElementsAre(2, 3));
  absl::StatusOr<std::vector<float>> python =
      PythonLogits(out->artifact_path, x);
  ASSERT_TRUE(python.ok()) << python.status();
  ASSERT_EQ(python->size(), 6u);
  const float scale = std::max(1.0f, logits.abs().max().item<float>());
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR((*python)[i], logits.data_ptr<float>()[i], 1e-4f * scale)
        << "logit " << i;
  }
  const double check_seconds = SecondsSince(check_start);

  std::cout << arch.name << " @" << arch.size << ": export " << export_seconds
            << " s, fine-tune " << train_seconds << " s, Python check "
            << check_seconds << " s; blocks: " << absl::StrJoin(blocks, ", ")
            << "\n";
  RecordProperty("export_seconds", std::to_string(export_seconds));
  RecordProperty("train_seconds", std::to_string(train_seconds));
}

std::string ArchName(const ::testing::TestParamInfo<Arch>& info) {
  return absl::StrCat(info.param.name, "_", info.param.size);
}

INSTANTIATE_TEST_SUITE_P(Archs, TorchvisionBackboneTest,
                         ::testing::ValuesIn(Archs()), ArchName);

// inception_v3 at its native 299x299 (slower). Run with
//   torchvision_backbones_test --gtest_also_run_disabled_tests
//   --gtest_filter='DISABLED_Native*'
INSTANTIATE_TEST_SUITE_P(DISABLED_Native, TorchvisionBackboneTest,
                         ::testing::Values(Arch{"inception_v3", 299, 2048,
                                                Archs().back().blocks}),
                         ArchName);

// Blocks() on modules built here: the compact ResNet keeps its top-level
// stages, and a wrapper around it is opened up to the same stages.
TEST(BlocksTest, OpensAWrapperThatHoldsAllParameters) {
  absl::StatusOr<torch::jit::Module> net = MakeCompactResNet(1, 8, 1);
  ASSERT_TRUE(net.ok()) << net.status();
  EXPECT_THAT(Blocks(*net), ElementsAre("stem", "layer1", "layer2", "layer3"));

  torch::jit::Module wrapper("__torch__.tlserve_test.Wrapper");
  wrapper.register_attribute("training", c10::BoolType::get(), true);
  wrapper.register_module("net", *net);
  wrapper.define(
      "def forward(self, x):\n"
      "    return self.net.forward(x)\n");
  EXPECT_THAT(Blocks(wrapper), ElementsAre("net.stem", "net.layer1",
                                           "net.layer2", "net.layer3"));

  absl::StatusOr<std::vector<NamedParameter>> params =
      BlockParameters(wrapper, "net.layer3");
  ASSERT_TRUE(params.ok()) << params.status();
  std::vector<std::string> names;
  for (const NamedParameter& p : *params) names.push_back(p.name);
  EXPECT_THAT(names, ::testing::Contains("net.layer3.conv1.weight"));
  EXPECT_EQ(names.size(), net->attr("layer3").toModule().parameters().size());

  absl::StatusOr<torch::jit::Module> missing =
      ResolveBlock(wrapper, "net.layer9");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), HasSubstr("'layer9'"));
  EXPECT_THAT(missing.status().message(), HasSubstr("net.layer3"));
  EXPECT_EQ(ResolveBlock(wrapper, "net..stem").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BlocksTest, FreezePolicyAndTrainingModeFollowDottedBlocks) {
  if (!PythonTorchvisionAvailable()) {
    GTEST_SKIP() << "/usr/bin/python3 with torchvision is not available";
  }
  absl::StatusOr<std::string> path =
      testing::TorchvisionBackbone("mobilenet_v2", 32);
  ASSERT_TRUE(path.ok()) << path.status();
  torch::jit::Module backbone = torch::jit::load(*path);
  FreezePolicy policy;
  policy.set_mode(FreezePolicy::LAST_N_BLOCKS);
  policy.set_n_blocks(2);
  absl::StatusOr<FreezePlan> plan = ApplyFreezePolicy(backbone, policy);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->trainable_blocks,
              ElementsAre("features.17", "features.18"));
  EXPECT_EQ(plan->frozen_blocks.size(), 17u);
  for (const auto& p : backbone.named_parameters()) {
    EXPECT_EQ(p.value.requires_grad(), StartsWith(p.name, "features.17.") ||
                                           StartsWith(p.name, "features.18."))
        << p.name;
  }

  absl::StatusOr<torch::jit::Module> head = MakeHead(1280, {}, 0, 3, 1);
  ASSERT_TRUE(head.ok());
  absl::StatusOr<torch::jit::Module> classifier =
      MakeClassifier(backbone, *head, testing::ImageNetSpec(32));
  ASSERT_TRUE(classifier.ok());
  ASSERT_TRUE(SetTrainingMode(*classifier, *plan, true).ok());
  torch::jit::Module features = backbone.attr("features").toModule();
  EXPECT_TRUE(features.attr("18").toModule().is_training());
  EXPECT_TRUE(features.attr("17").toModule().is_training());
  for (const auto& m : features.attr("16").toModule().modules()) {
    EXPECT_FALSE(m.is_training());
  }
  EXPECT_FALSE(features.attr("0").toModule().is_training());

  policy.set_n_blocks(20);
  EXPECT_THAT(ApplyFreezePolicy(backbone, policy).status().message(),
              HasSubstr("outside [1, 19]"));
}

}  // namespace
}  // namespace tlserve::worker
