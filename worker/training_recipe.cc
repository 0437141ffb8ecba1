#include "worker/training_recipe.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

using tlserve::v1::FreezePolicy;

bool InBlock(absl::string_view param, const std::string& block) {
  return param.size() > block.size() && absl::StartsWith(param, block) &&
         param[block.size()] == '.';
}

// Index into `blocks` of the block holding `param`, or -1.
int BlockOf(absl::string_view param, const std::vector<std::string>& blocks) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (InBlock(param, blocks[i])) return static_cast<int>(i);
  }
  return -1;
}

bool IsBatchNorm(const torch::jit::Module& m) {
  const auto& name = m.type()->name();
  return name.has_value() && absl::StrContains(name->name(), "BatchNorm");
}

}  // namespace

bool GlobMatch(absl::string_view pattern, absl::string_view name) {
  // Iterative wildcard match with one backtrack point: linear in practice.
  size_t p = 0, n = 0, star = absl::string_view::npos, resume = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = n;
    } else if (p < pattern.size() && pattern[p] == name[n]) {
      ++p;
      ++n;
    } else if (star != absl::string_view::npos) {
      p = star + 1;
      n = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

absl::Status ApplyParameterPatterns(torch::jit::Module backbone,
                                    const FreezePolicy& policy,
                                    FreezePlan* plan) {
  if (policy.trainable_patterns().empty() && policy.frozen_patterns().empty()) {
    return absl::OkStatus();
  }
  return TorchGuard("applying parameter patterns", [&]() -> absl::Status {
    const auto named = backbone.named_parameters(/*recurse=*/true);
    auto apply = [&](const auto& patterns, bool trainable,
                     const char* field) -> absl::Status {
      for (const std::string& pattern : patterns) {
        int matched = 0;
        for (const auto& p : named) {
          if (!GlobMatch(pattern, p.name)) continue;
          p.value.requires_grad_(trainable);
          ++matched;
        }
        if (matched == 0) {
          std::vector<std::string> examples;
          for (const auto& p : named) {
            if (examples.size() == 4) break;
            examples.push_back(p.name);
          }
          return absl::InvalidArgumentError(absl::StrCat(
              "freeze.", field, ": '", pattern,
              "' matches no backbone parameter (names look like ",
              absl::StrJoin(examples, ", "), ")"));
        }
      }
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(apply(policy.trainable_patterns(), true,
                          "trainable_patterns"));
    RETURN_IF_ERROR(apply(policy.frozen_patterns(), false, "frozen_patterns"));

    const std::vector<std::string> blocks = Blocks(backbone);
    std::vector<bool> trains(blocks.size(), false);
    bool any = false;
    for (const auto& p : named) {
      if (!p.value.requires_grad()) continue;
      any = true;
      const int b = BlockOf(p.name, blocks);
      if (b >= 0) trains[b] = true;
    }
    plan->backbone_frozen = !any;
    plan->trainable_blocks.clear();
    plan->frozen_blocks.clear();
    for (size_t i = 0; i < blocks.size(); ++i) {
      (trains[i] ? plan->trainable_blocks : plan->frozen_blocks)
          .push_back(blocks[i]);
    }
    return absl::OkStatus();
  });
}

FreezePolicy PolicyAtEpoch(const FreezePolicy& policy, int epoch) {
  if (policy.gradual_unfreeze().empty()) return policy;
  FreezePolicy at = policy;
  at.clear_gradual_unfreeze();
  int n = 0;
  for (const auto& step : policy.gradual_unfreeze()) {
    if (step.epoch() <= epoch) n = step.n_blocks();
  }
  if (n <= 0) {
    at.set_mode(FreezePolicy::FROZEN);
    at.set_n_blocks(0);
  } else {
    at.set_mode(FreezePolicy::LAST_N_BLOCKS);
    at.set_n_blocks(n);
  }
  return at;
}

bool BackboneFrozenThroughout(const FreezePolicy& policy) {
  if (!policy.trainable_patterns().empty()) return false;
  if (!policy.gradual_unfreeze().empty()) {
    for (const auto& step : policy.gradual_unfreeze()) {
      if (step.n_blocks() > 0) return false;
    }
    return true;
  }
  return policy.mode() == FreezePolicy::FROZEN ||
         policy.mode() == FreezePolicy::MODE_UNSPECIFIED;
}

absl::StatusOr<std::vector<BackboneGroup>> BackboneGroups(
    const torch::jit::Module& backbone, const std::vector<std::string>& blocks,
    const FreezePolicy& policy, double backbone_lr_scale) {
  for (const auto& [block, scale] : policy.block_lr_scales()) {
    if (std::find(blocks.begin(), blocks.end(), block) == blocks.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "freeze.block_lr_scales: '", block,
          "' is not a block of the backbone; its blocks are ",
          absl::StrJoin(blocks, ", ")));
    }
  }
  const double decay = policy.layer_decay() > 0 ? policy.layer_decay() : 1.0;
  std::vector<BackboneGroup> groups(blocks.size() + 1);
  for (size_t i = 0; i < blocks.size(); ++i) {
    groups[i].block = blocks[i];
    auto explicit_scale = policy.block_lr_scales().find(blocks[i]);
    groups[i].lr_scale =
        explicit_scale != policy.block_lr_scales().end()
            ? explicit_scale->second
            : backbone_lr_scale *
                  std::pow(decay, static_cast<double>(blocks.size() - 1 - i));
  }
  groups.back().lr_scale = backbone_lr_scale;
  for (const auto& p : backbone.named_parameters(/*recurse=*/true)) {
    const int b = BlockOf(p.name, blocks);
    groups[b >= 0 ? b : blocks.size()].params.push_back(p.value);
  }
  groups.erase(std::remove_if(groups.begin(), groups.end(),
                              [](const BackboneGroup& g) {
                                return g.params.empty();
                              }),
               groups.end());
  return groups;
}

void ApplyBatchNormMode(torch::jit::Module backbone,
                        FreezePolicy::BatchNormStats mode) {
  if (mode != FreezePolicy::FROZEN_ALL && mode != FreezePolicy::UPDATE_ALL) {
    return;
  }
  const bool train = mode == FreezePolicy::UPDATE_ALL;
  for (const auto& m : backbone.named_modules()) {
    if (IsBatchNorm(m.value)) {
      torch::jit::Module module = m.value;
      module.train(train);
    }
  }
}

EarlyStopper::EarlyStopper(const tlserve::v1::EarlyStopping& spec)
    : metric_(spec.metric().empty() ? "val_accuracy" : spec.metric()),
      higher_is_better_(metric_ != "val_loss"),
      patience_(spec.patience()),
      min_delta_(spec.min_delta()) {}

bool EarlyStopper::Record(int epoch, const tlserve::v1::EpochMetrics& metrics) {
  const double value = higher_is_better_ ? metrics.val_accuracy()
                                         : metrics.val_loss();
  const bool better =
      state_.best_epoch == 0 ||
      (higher_is_better_ ? value > state_.best_value + min_delta_
                         : value < state_.best_value - min_delta_);
  if (better) {
    state_.best_epoch = epoch;
    state_.best_value = value;
    state_.epochs_since_best = 0;
  } else {
    ++state_.epochs_since_best;
  }
  return better;
}

bool EarlyStopper::ShouldStop() const {
  return patience_ > 0 && state_.epochs_since_best >= patience_;
}

}  // namespace tlserve::worker
