#include "worker/compute_device.h"

#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/test_util.h"
#include "worker/trainer.h"

namespace tlserve::worker {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using tlserve::v1::FreezePolicy;
using tlserve::v1::JobSpec;
using tlserve::v1::OptimizerSpec;

TEST(ComputeDeviceTest, CpuJobsRunOnTheCpuOnAnyWorker) {
  for (const char* worker : {"cpu", "cuda:0", "cuda:3"}) {
    for (const char* spec : {"", "cpu"}) {
      absl::StatusOr<c10::Device> device = ResolveJobDevice(worker, spec);
      ASSERT_TRUE(device.ok()) << worker << " " << spec << ": " << device.status();
      EXPECT_TRUE(device->is_cpu());
    }
  }
}

TEST(ComputeDeviceTest, CudaJobOnACpuWorkerIsRefusedSayingWhy) {
  absl::StatusOr<c10::Device> device = ResolveJobDevice("cpu", "cuda");
  ASSERT_EQ(device.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(device.status().message(), HasSubstr("GPU worker"));
  EXPECT_EQ(ResolveJobDevice("cpu", "tpu").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ComputeDeviceTest, AWorkerDeviceItCannotReachIsAStartUpError) {
  EXPECT_TRUE(CheckWorkerDevice("cpu").ok());
  EXPECT_EQ(CheckWorkerDevice("gpu0").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckWorkerDevice("cuda:-1").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckWorkerDevice("cuda:x").code(),
            absl::StatusCode::kInvalidArgument);
  const int64_t gpus = torch::cuda::is_available()
                           ? static_cast<int64_t>(torch::cuda::device_count())
                           : 0;
  const absl::Status beyond = CheckWorkerDevice(absl::StrCat("cuda:", gpus));
  EXPECT_EQ(beyond.code(), absl::StatusCode::kFailedPrecondition) << beyond;
  if (gpus == 0) {
    EXPECT_THAT(beyond.message(), HasSubstr("--device=cpu"));
    const absl::Status job = ResolveJobDevice("cuda:0", "cuda").status();
    EXPECT_EQ(job.code(), absl::StatusCode::kFailedPrecondition) << job;
  } else {
    EXPECT_TRUE(CheckWorkerDevice("cuda:0").ok());
    absl::StatusOr<c10::Device> device = ResolveJobDevice("cuda:0", "cuda");
    ASSERT_TRUE(device.ok()) << device.status();
    EXPECT_TRUE(device->is_cuda());
  }
}

TEST(AutocastScopeTest, MatrixProductsRunInBfloat16OnlyInsideTheScope) {
  const at::Tensor a = torch::randn({8, 8});
  EXPECT_EQ(at::mm(a, a).scalar_type(), at::kFloat);
  {
    AutocastScope outer(c10::DeviceType::CPU, true);
    EXPECT_EQ(at::mm(a, a).scalar_type(), at::kBFloat16);
    {
      AutocastScope inner(c10::DeviceType::CPU, true);
      EXPECT_EQ(at::mm(a, a).scalar_type(), at::kBFloat16);
    }
    // Leaving the inner scope keeps the outer one's setting.
    EXPECT_EQ(at::mm(a, a).scalar_type(), at::kBFloat16);
  }
  EXPECT_EQ(at::mm(a, a).scalar_type(), at::kFloat);
  {
    AutocastScope off(c10::DeviceType::CPU, false);
    EXPECT_EQ(at::mm(a, a).scalar_type(), at::kFloat);
  }
}

TEST(ComputeDeviceTest, ChannelsLastKeepsTheWeightsTensorsAndValues) {
  const std::string dir = testing::MakeTempDir("channels_last");
  torch::jit::Module module =
      torch::jit::load(testing::SaveCompactBackbone(dir, 3, 8, 7));
  std::vector<at::Tensor> before;
  std::vector<at::Tensor> values;
  for (const at::Tensor& p : module.parameters()) {
    before.push_back(p);
    values.push_back(p.detach().clone());
  }
  SetWeightsMemoryFormat(module, c10::MemoryFormat::ChannelsLast);
  int convolutions = 0;
  size_t i = 0;
  for (const at::Tensor& p : module.parameters()) {
    ASSERT_LT(i, before.size());
    // The same tensor (what an optimizer holds), laid out anew.
    EXPECT_TRUE(p.is_same(before[i]));
    EXPECT_TRUE(torch::equal(p, values[i]));
    if (p.dim() == 4) {
      ++convolutions;
      EXPECT_TRUE(p.is_contiguous(c10::MemoryFormat::ChannelsLast));
    }
    ++i;
  }
  EXPECT_GT(convolutions, 3);
  const at::Tensor x = torch::rand({2, 3, 16, 16});
  module.eval();
  const at::Tensor y = module.forward({x}).toTensor();
  SetWeightsMemoryFormat(module, c10::MemoryFormat::Contiguous);
  EXPECT_TRUE(torch::allclose(y, module.forward({x}).toTensor(), 1e-5, 1e-5));
}

TEST(ComputeDeviceTest, OnlyAllocatorFailuresCountAsOutOfMemory) {
  EXPECT_TRUE(IsOutOfMemory(absl::ResourceExhaustedError(
      "a training pass: out of memory: CUDA out of memory. Tried to allocate")));
  EXPECT_FALSE(IsOutOfMemory(absl::ResourceExhaustedError("queue is full")));
  EXPECT_FALSE(IsOutOfMemory(absl::InternalError("out of memory")));
}

// Training jobs on the trainer's device path, on the CPU: micro-batches,
// the out-of-memory retry (driven through the fault seam), bfloat16.

JobSpec FullFineTune(int batch_size) {
  JobSpec spec;
  spec.set_kind(tlserve::v1::FINE_TUNE);
  spec.mutable_freeze()->set_mode(FreezePolicy::FULL);
  // BatchNorm in eval mode everywhere: a micro-batch then computes exactly
  // what its rows of the whole batch would, and the comparison is exact up
  // to float rounding.
  spec.mutable_freeze()->set_batchnorm_stats(FreezePolicy::FROZEN_ALL);
  spec.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  spec.mutable_optimizer()->set_learning_rate(0.05f);
  spec.mutable_optimizer()->set_momentum(0.9f);
  spec.set_epochs(2);
  spec.set_batch_size(batch_size);
  spec.set_seed(11);
  spec.mutable_data()->set_validation_fraction(0.2f);
  return spec;
}

struct TrainingRun {
  absl::StatusOr<TrainJobOutput> out = absl::UnknownError("not run");
  std::vector<std::string> logs;
  std::vector<int64_t> pass_rows;
};

TrainingRun Train(const JobSpec& spec, const std::string& name, int64_t fail_above_rows = 0) {
  TrainingRun run;
  const std::string dir = testing::MakeTempDir(name);
  TrainJobInput input;
  input.spec = spec;
  input.work_dir = dir;
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 3);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  input.num_threads = 2;
  const DecodedDataset data = testing::SyntheticDataset(3, 30, 10, 12, 1, 5);
  TrainerCallbacks callbacks;
  callbacks.on_log = [&](const std::string& line) { run.logs.push_back(line); };
  callbacks.before_pass = [&](int64_t rows) {
    run.pass_rows.push_back(rows);
    // What a GPU does when a pass needs more than it has.
    TORCH_CHECK_WITH(OutOfMemoryError, fail_above_rows == 0 || rows <= fail_above_rows,
                     "CUDA out of memory. Tried to allocate 2.00 GiB (a pass of ",
                     rows, " rows, in a test)");
  };
  run.out = RunTrainingJob(input, data, callbacks);
  return run;
}

// Every parameter and buffer of two exported models, compared.
void ExpectSameModel(const std::string& a_path, const std::string& b_path,
                     double tolerance) {
  torch::jit::Module a = torch::jit::load(a_path);
  torch::jit::Module b = torch::jit::load(b_path);
  const auto a_state = testing::NamedState(a);
  const auto b_state = testing::NamedState(b);
  ASSERT_EQ(a_state.size(), b_state.size());
  for (size_t i = 0; i < a_state.size(); ++i) {
    ASSERT_EQ(a_state[i].first, b_state[i].first);
    EXPECT_TRUE(torch::allclose(a_state[i].second, b_state[i].second, tolerance,
                                tolerance))
        << a_state[i].first << " differs by "
        << (a_state[i].second - b_state[i].second).abs().max().item<double>();
  }
}

TEST(MicroBatchTest, AccumulatedPassesMakeTheWholeBatchsStep) {
  const TrainingRun whole = Train(FullFineTune(16), "micro_whole");
  ASSERT_TRUE(whole.out.ok()) << whole.out.status();
  JobSpec spec = FullFineTune(16);
  spec.set_micro_batch_size(5);  // passes of 5, 5, 5 and 1 rows
  const TrainingRun micro = Train(spec, "micro_5");
  ASSERT_TRUE(micro.out.ok()) << micro.out.status();
  EXPECT_THAT(micro.pass_rows, Contains(1));
  for (int64_t rows : micro.pass_rows) EXPECT_LE(rows, 5);
  for (int64_t rows : whole.pass_rows) EXPECT_GT(rows, 5);
  // Gradients that add up in a different order differ in the last bits;
  // after two epochs of SGD with momentum the weights agree to 1e-4.
  ExpectSameModel(whole.out->artifact_path, micro.out->artifact_path, 1e-4);
  EXPECT_FLOAT_EQ(whole.out->result.test_accuracy(),
                  micro.out->result.test_accuracy());
  EXPECT_GT(micro.out->result.test_accuracy(), 0.6f);  // chance: 1/3
  EXPECT_THAT(micro.out->result.manifest().settings(),
              Contains("micro_batch_size=5"));
}

TEST(MicroBatchTest, OutOfMemoryHalvesThePassesAndKeepsTheResult) {
  const TrainingRun whole = Train(FullFineTune(16), "oom_reference");
  ASSERT_TRUE(whole.out.ok()) << whole.out.status();
  JobSpec spec = FullFineTune(16);
  spec.set_shrink_micro_batch_on_oom(true);
  const TrainingRun shrunk = Train(spec, "oom_shrink", /*fail_above_rows=*/4);
  ASSERT_TRUE(shrunk.out.ok()) << shrunk.out.status();
  // 16 fails, then 8, then passes of 4 for the rest of the job.
  ASSERT_GE(shrunk.pass_rows.size(), 3u);
  EXPECT_EQ(shrunk.pass_rows[0], 16);
  EXPECT_EQ(shrunk.pass_rows[1], 8);
  EXPECT_EQ(shrunk.pass_rows[2], 4);
  for (size_t i = 2; i < shrunk.pass_rows.size(); ++i) {
    EXPECT_LE(shrunk.pass_rows[i], 4) << "pass " << i;
  }
  bool logged = false;
  for (const std::string& line : shrunk.logs) {
    logged |= line.find("out of memory in a pass of 8 rows") != std::string::npos &&
              line.find("passes of 4 rows") != std::string::npos;
  }
  EXPECT_TRUE(logged) << "no log line of the second halving";
  ExpectSameModel(whole.out->artifact_path, shrunk.out->artifact_path, 1e-4);
  EXPECT_FLOAT_EQ(whole.out->result.test_accuracy(),
                  shrunk.out->result.test_accuracy());
}

TEST(MicroBatchTest, OutOfMemoryWithoutShrinkingFailsSayingWhatToSet) {
  const TrainingRun run = Train(FullFineTune(16), "oom_fail", /*fail_above_rows=*/4);
  ASSERT_FALSE(run.out.ok());
  EXPECT_EQ(run.out.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(run.out.status().message(), HasSubstr("CUDA out of memory"));
  EXPECT_THAT(run.out.status().message(), HasSubstr("a pass of 16 rows"));
  EXPECT_THAT(run.out.status().message(), HasSubstr("spec.micro_batch_size"));
  EXPECT_THAT(run.out.status().message(),
              HasSubstr("spec.shrink_micro_batch_on_oom"));
}

TEST(PrecisionTest, Bfloat16JobLearnsAndExportsAFloat32Model) {
  JobSpec spec = FullFineTune(16);
  spec.set_precision(tlserve::v1::PRECISION_BF16);
  spec.set_epochs(4);
  const TrainingRun run = Train(spec, "bf16");
  ASSERT_TRUE(run.out.ok()) << run.out.status();
  EXPECT_GT(run.out->result.test_accuracy(), 0.6f);  // chance: 1/3
  EXPECT_THAT(run.out->result.manifest().settings(),
              Contains("precision=bf16_autocast"));
  torch::jit::Module exported = torch::jit::load(run.out->artifact_path);
  for (const auto& [name, tensor] : testing::NamedState(exported)) {
    if (tensor.is_floating_point()) {
      EXPECT_EQ(tensor.scalar_type(), at::kFloat) << name;
    }
  }
}

TEST(TrainerDeviceTest, CudaJobOnACpuWorkerFailsBeforeTraining) {
  JobSpec spec = FullFineTune(16);
  spec.set_device("cuda");
  const TrainingRun run = Train(spec, "cuda_on_cpu");
  ASSERT_FALSE(run.out.ok());
  EXPECT_EQ(run.out.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(run.pass_rows.empty());
}

// The GPU path end to end: channels-last weights, bfloat16, pinned
// batches, the model exported back to the CPU.
TEST(TrainerDeviceTest, TrainsOnTheGpuAndExportsACpuModel) {
  if (!torch::cuda::is_available()) {
    GTEST_SKIP() << "no CUDA device visible to LibTorch (CPU build or no GPU)";
  }
  JobSpec spec = FullFineTune(16);
  spec.set_device("cuda");
  spec.set_precision(tlserve::v1::PRECISION_BF16);
  spec.set_micro_batch_size(8);
  const std::string dir = testing::MakeTempDir("on_gpu");
  TrainJobInput input;
  input.spec = spec;
  input.work_dir = dir;
  input.worker_device = "cuda:0";
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 3);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  const DecodedDataset data = testing::SyntheticDataset(3, 30, 10, 12, 1, 5);
  absl::StatusOr<TrainJobOutput> out = RunTrainingJob(input, data, {});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_GT(out->result.test_accuracy(), 0.6f);
  EXPECT_THAT(out->result.manifest().device(), HasSubstr("cuda"));
  torch::jit::Module exported = torch::jit::load(out->artifact_path);
  for (const auto& [name, tensor] : testing::NamedState(exported)) {
    EXPECT_TRUE(tensor.device().is_cpu()) << name;
  }
}

}  // namespace
}  // namespace tlserve::worker
