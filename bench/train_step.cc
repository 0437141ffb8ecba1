// One training step of a TorchScript backbone + linear head, taken apart:
// clearing gradients, forward, backward and the optimizer step, for
//   torch      torch::optim::AdamW after zero_grad() (what a plain LibTorch
//              or PyTorch 1.x loop does),
//   fused      FusedAdamW (worker/fused_adamw.h) after zero_grad(),
//   fused_noopt the same with the graph executor's optimisations off: what
//              tlserve's trainer runs.
// The variants take turns, round after round, so drift of the machine
// falls on all of them; medians per phase are printed.
//
//   build/bench/train_step --backbone=/tmp/tlserve_fine_tune_speed/resnet18_64.pt

#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "worker/allocator.h"
#include "worker/fused_adamw.h"

ABSL_FLAG(std::string, backbone, "/tmp/tlserve_fine_tune_speed/resnet18_64.pt",
          "TorchScript backbone mapping [N,3,S,S] to [N,D] "
          "(build/bench/fine_tune_speed exports one)");
ABSL_FLAG(int, size, 64, "input size (square)");
ABSL_FLAG(int, batch_size, 32, "batch size");
ABSL_FLAG(int, threads, 2, "intra-op threads");
ABSL_FLAG(int, rounds, 5, "rounds; each runs every variant");
ABSL_FLAG(int, steps, 10, "timed steps per variant per round");

namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

struct Variant {
  Variant(std::string n, bool f, bool o)
      : name(std::move(n)), fused(f), optimize(o) {}
  std::string name;
  bool fused;
  // The graph executor's optimisations (profiling, autodiff subgraphs):
  // on in a Python script, off in the trainer (for exact resume).
  bool optimize;
  torch::jit::Module backbone;
  torch::nn::Linear head{nullptr};
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::vector<double> clear_ms, forward_ms, backward_ms, step_ms, total_ms;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  tlserve::worker::KeepFreedTensorMemoryForReuse();  // as tlworker does
  torch::set_num_threads(absl::GetFlag(FLAGS_threads));
  const int size = absl::GetFlag(FLAGS_size);
  const int batch = absl::GetFlag(FLAGS_batch_size);
  torch::manual_seed(1);
  const torch::Tensor x = torch::rand({batch, 3, size, size});
  const torch::Tensor y = torch::randint(0, 10, {batch});

  std::vector<Variant> variants;
  variants.emplace_back("torch", false, true);
  variants.emplace_back("fused", true, true);
  variants.emplace_back("fused_noopt", true, false);
  for (Variant& v : variants) {
    try {
      v.backbone = torch::jit::load(absl::GetFlag(FLAGS_backbone));
    } catch (const c10::Error& e) {
      std::fprintf(stderr, "cannot load %s: %s\n",
                   absl::GetFlag(FLAGS_backbone).c_str(), e.what_without_backtrace());
      return 1;
    }
    v.backbone.train();
    torch::NoGradGuard no_grad;
    const int64_t dim = v.backbone.forward({x.narrow(0, 0, 1)}).toTensor().size(1);
    v.head = torch::nn::Linear(dim, 10);
    std::vector<torch::Tensor> params;
    for (const auto& p : v.backbone.parameters()) params.push_back(p);
    for (const auto& p : v.head->parameters()) params.push_back(p);
    torch::optim::AdamWOptions options(1e-4);
    if (v.fused) {
      v.optimizer = std::make_unique<tlserve::worker::FusedAdamW>(params, options);
    } else {
      v.optimizer = std::make_unique<torch::optim::AdamW>(params, options);
    }
  }

  const int steps = absl::GetFlag(FLAGS_steps);
  for (int round = 0; round <= absl::GetFlag(FLAGS_rounds); ++round) {
    for (Variant& v : variants) {
      torch::jit::setGraphExecutorOptimize(v.optimize);
      for (int s = 0; s < steps; ++s) {
        const Clock::time_point t0 = Clock::now();
        v.optimizer->zero_grad();
        const Clock::time_point t1 = Clock::now();
        torch::Tensor logits = v.head(v.backbone.forward({x}).toTensor());
        torch::Tensor loss = torch::nn::functional::cross_entropy(logits, y);
        const Clock::time_point t2 = Clock::now();
        loss.backward();
        const Clock::time_point t3 = Clock::now();
        v.optimizer->step();
        const Clock::time_point t4 = Clock::now();
        if (round == 0) continue;  // warm-up round
        v.clear_ms.push_back(Ms(t0, t1));
        v.forward_ms.push_back(Ms(t1, t2));
        v.backward_ms.push_back(Ms(t2, t3));
        v.step_ms.push_back(Ms(t3, t4));
        v.total_ms.push_back(Ms(t0, t4));
      }
    }
  }
  std::printf("%dx%d, batch %d, %d threads, %d rounds x %d steps; median ms\n",
              size, size, batch, absl::GetFlag(FLAGS_threads),
              absl::GetFlag(FLAGS_rounds), steps);
  std::printf("%-12s %8s %8s %8s %8s %8s %8s\n", "VARIANT", "GRADS", "FORWARD",
              "BACKWARD", "STEP", "TOTAL", "VS_TORCH");
  const double base = Median(variants[0].total_ms);
  for (const Variant& v : variants) {
    std::printf("%-12s %8.1f %8.1f %8.1f %8.1f %8.1f %7.2fx\n", v.name.c_str(),
                Median(v.clear_ms), Median(v.forward_ms), Median(v.backward_ms),
                Median(v.step_ms), Median(v.total_ms),
                base / Median(v.total_ms));
  }
  return 0;
}
