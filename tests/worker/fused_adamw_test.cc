#include "worker/fused_adamw.h"

#include <torch/torch.h>

#include <vector>

#include "gtest/gtest.h"

namespace tlserve::worker {
namespace {

// Parameters of several shapes, one of them a transposed (non-contiguous)
// view, so both the fused loop and the whole-tensor fallback run. Sizes
// above and below the per-task grain.
std::vector<torch::Tensor> MakeParams(uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> params = {
      torch::randn({70000}), torch::randn({3, 5}), torch::randn({7}),
      torch::randn({9, 4}).t()};
  for (auto& p : params) p.set_requires_grad(true);
  return params;
}

std::vector<torch::optim::OptimizerParamGroup> Groups(
    const std::vector<torch::Tensor>& params, double weight_decay) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(
      std::vector<torch::Tensor>{params[0], params[1]},
      std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(1e-2).weight_decay(weight_decay)));
  // A lower rate, as a backbone group has.
  groups.emplace_back(
      std::vector<torch::Tensor>{params[2], params[3]},
      std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(1e-3).weight_decay(weight_decay)));
  return groups;
}

// Gives every parameter the gradient of a fixed quadratic.
void SetGradients(const std::vector<torch::Tensor>& params, int step) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].mutable_grad() =
        params[i].detach() * (0.5 + 0.1 * static_cast<double>(i)) +
        std::sin(static_cast<double>(step));
  }
}

void ExpectClose(const std::vector<torch::Tensor>& a,
                 const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const double diff = (a[i] - b[i]).abs().max().item<double>();
    EXPECT_LT(diff, 1e-5) << "parameter " << i;
  }
}

TEST(FusedAdamWTest, FollowsTorchAdamWOverManySteps) {
  for (double weight_decay : {0.0, 0.05}) {
    std::vector<torch::Tensor> fused_params = MakeParams(7);
    std::vector<torch::Tensor> torch_params = MakeParams(7);
    FusedAdamW fused(Groups(fused_params, weight_decay));
    torch::optim::AdamW reference(Groups(torch_params, weight_decay));
    for (int step = 0; step < 30; ++step) {
      SetGradients(fused_params, step);
      SetGradients(torch_params, step);
      fused.step();
      reference.step();
    }
    // The parameters moved: the comparison is not between two untouched
    // copies.
    const std::vector<torch::Tensor> start = MakeParams(7);
    EXPECT_GT((fused_params[0] - start[0]).abs().max().item<double>(), 0.1);
    ExpectClose(fused_params, torch_params);
  }
}

TEST(FusedAdamWTest, StateSavedByOneLoadsIntoTheOther) {
  std::vector<torch::Tensor> fused_params = MakeParams(3);
  FusedAdamW fused(Groups(fused_params, 0.01));
  for (int step = 0; step < 5; ++step) {
    SetGradients(fused_params, step);
    fused.step();
  }
  torch::serialize::OutputArchive out;
  fused.save(out);
  std::ostringstream bytes;
  out.save_to(bytes);

  // A torch AdamW over copies of the same parameters, given the fused
  // optimizer's state, continues exactly where the fused one goes.
  std::vector<torch::Tensor> torch_params;
  for (const auto& p : fused_params) {
    torch_params.push_back(p.detach().clone().set_requires_grad(true));
  }
  // Keep the transposed layout of the last one, as built.
  torch_params[3] =
      fused_params[3].detach().t().clone().t().set_requires_grad(true);
  torch::optim::AdamW reference(Groups(torch_params, 0.01));
  torch::serialize::InputArchive in;
  std::istringstream read(bytes.str());
  in.load_from(read);
  reference.load(in);
  for (int step = 5; step < 10; ++step) {
    SetGradients(fused_params, step);
    SetGradients(torch_params, step);
    fused.step();
    reference.step();
  }
  ExpectClose(fused_params, torch_params);
}

TEST(FusedAdamWTest, ParametersWithoutGradientsStayPut) {
  std::vector<torch::Tensor> params = MakeParams(5);
  FusedAdamW fused(Groups(params, 0.1));
  const torch::Tensor before = params[1].detach().clone();
  SetGradients(params, 0);
  params[1].mutable_grad().reset();
  fused.step();
  EXPECT_TRUE(torch::equal(params[1], before));
  EXPECT_FALSE(torch::equal(params[0], MakeParams(5)[0]));
}

}  // namespace
}  // namespace tlserve::worker
