#include "worker/fused_adamw.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

namespace tlserve::worker {
namespace {

using torch::optim::AdamWOptions;
using torch::optim::AdamWParamState;

// Elements per task: large enough that a thread streams a few hundred KiB.
constexpr int64_t kGrain = 32768;

// Per-step constants, in the precision AdamW's ops apply them to float
// tensors (a double Scalar meets a float tensor as float).
struct StepConstants {
  float decay;       // 1 - lr * weight_decay
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float bias_correction2_sqrt;
  float eps;
  float neg_step_size;  // -lr / bias_correction1
};

// One pass over [begin, end): what AdamW does with whole-tensor ops.
// Plain loops the compiler vectorises (this file is built with
// -fno-math-errno so sqrt needs no library call).
__attribute__((target_clones("avx2", "default"))) void UpdateRange(const StepConstants& c, float* __restrict param,
                 const float* __restrict grad, float* __restrict exp_avg,
                 float* __restrict exp_avg_sq, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float g = grad[i];
    const float p = param[i] * c.decay;
    const float m = exp_avg[i] * c.beta1 + c.one_minus_beta1 * g;
    const float v = exp_avg_sq[i] * c.beta2 + c.one_minus_beta2 * g * g;
    const float denom = std::sqrt(v) / c.bias_correction2_sqrt + c.eps;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] = p + c.neg_step_size * m / denom;
  }
}

bool Fusable(const torch::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat &&
         t.is_contiguous() && !t.is_sparse();
}

}  // namespace

torch::Tensor FusedAdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss = {};
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    auto& options = static_cast<AdamWOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const torch::Tensor& grad = p.grad();
      TORCH_CHECK(!grad.is_sparse(), "AdamW does not support sparse gradients");
      const std::string key = c10::guts::to_string(p.unsafeGetTensorImpl());
      auto found = state_.find(key);
      if (found == state_.end()) {
        auto state = std::make_unique<AdamWParamState>();
        state->step(0);
        state->exp_avg(torch::zeros_like(p, at::MemoryFormat::Preserve));
        state->exp_avg_sq(torch::zeros_like(p, at::MemoryFormat::Preserve));
        if (options.amsgrad()) {
          state->max_exp_avg_sq(
              torch::zeros_like(p, at::MemoryFormat::Preserve));
        }
        found = state_.emplace(key, std::move(state)).first;
      }
      auto& state = static_cast<AdamWParamState&>(*found->second);
      state.step(state.step() + 1);
      const double beta1 = std::get<0>(options.betas());
      const double beta2 = std::get<1>(options.betas());
      const double bias_correction1 = 1 - std::pow(beta1, state.step());
      const double bias_correction2 = 1 - std::pow(beta2, state.step());
      const double step_size = options.lr() / bias_correction1;
      torch::Tensor& exp_avg = state.exp_avg();
      torch::Tensor& exp_avg_sq = state.exp_avg_sq();

      if (options.amsgrad() || !Fusable(p) || !Fusable(grad) ||
          !Fusable(exp_avg) || !Fusable(exp_avg_sq)) {
        // AdamW's own sequence of whole-tensor ops.
        if (options.weight_decay() != 0) {
          p.mul_(1 - options.lr() * options.weight_decay());
        }
        exp_avg.mul_(beta1).add_(grad, 1 - beta1);
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
        torch::Tensor denom;
        if (options.amsgrad()) {
          torch::Tensor& max_exp_avg_sq = state.max_exp_avg_sq();
          torch::max_out(max_exp_avg_sq, exp_avg_sq, max_exp_avg_sq);
          denom = (max_exp_avg_sq.sqrt() / std::sqrt(bias_correction2))
                      .add_(options.eps());
        } else {
          denom = (exp_avg_sq.sqrt() / std::sqrt(bias_correction2))
                      .add_(options.eps());
        }
        p.addcdiv_(exp_avg, denom, -step_size);
        continue;
      }

      const StepConstants c{
          static_cast<float>(1 - options.lr() * options.weight_decay()),
          static_cast<float>(beta1),
          static_cast<float>(1 - beta1),
          static_cast<float>(beta2),
          static_cast<float>(1 - beta2),
          static_cast<float>(std::sqrt(bias_correction2)),
          static_cast<float>(options.eps()),
          static_cast<float>(-step_size)};
      float* param = p.data_ptr<float>();
      const float* g = grad.data_ptr<float>();
      float* m = exp_avg.data_ptr<float>();
      float* v = exp_avg_sq.data_ptr<float>();
      at::parallel_for(0, p.numel(), kGrain, [&](int64_t begin, int64_t end) {
        UpdateRange(c, param, g, m, v, begin, end);
      });
    }
  }
  return loss;
}

}  // namespace tlserve::worker
