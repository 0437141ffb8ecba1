#include "worker/training_recipe.h"

#include <torch/script.h>
#include <torch/version.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/test_util.h"
#include "worker/trainer.h"

namespace tlserve::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using tlserve::v1::EpochMetrics;
using tlserve::v1::FreezePolicy;
using tlserve::v1::JobSpec;

std::map<std::string, at::Tensor> StateOf(const torch::jit::Module& module) {
  std::map<std::string, at::Tensor> state;
  for (auto& [name, tensor] : testing::NamedState(module)) {
    state[name] = tensor.clone();
  }
  return state;
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

TEST(GlobMatchTest, StarMatchesAnyRunIncludingDots) {
  EXPECT_TRUE(GlobMatch("layer4.*", "layer4.0.conv1.weight"));
  EXPECT_TRUE(GlobMatch("*.bn*.weight", "layer1.bn2.weight"));
  EXPECT_TRUE(GlobMatch("*", "anything"));
  EXPECT_TRUE(GlobMatch("stem.conv.weight", "stem.conv.weight"));
  EXPECT_FALSE(GlobMatch("layer4.*", "layer3.0.conv1.weight"));
  EXPECT_FALSE(GlobMatch("*.bias", "layer1.bn1.weight"));
  EXPECT_FALSE(GlobMatch("stem", "stem.conv.weight"));
  EXPECT_TRUE(GlobMatch("a*b*c", "aXXbYYbZc"));
  EXPECT_FALSE(GlobMatch("a*b*c", "aXXbYY"));
}

class RecipeOnCompactResNet : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("recipe");
    path_ = testing::SaveCompactBackbone(dir_, 1, 8, 3);
    backbone_ = torch::jit::load(path_);
  }
  std::string dir_;
  std::string path_;
  torch::jit::Module backbone_;
};

TEST_F(RecipeOnCompactResNet, PatternsAddAndRemoveTrainableParameters) {
  FreezePolicy policy;
  policy.set_mode(FreezePolicy::FROZEN);
  policy.add_trainable_patterns("layer3.*");
  policy.add_frozen_patterns("*.bn*");
  absl::StatusOr<FreezePlan> plan = ApplyFreezePolicy(backbone_, policy);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(ApplyParameterPatterns(backbone_, policy, &*plan).ok());
  EXPECT_FALSE(plan->backbone_frozen);
  EXPECT_THAT(plan->trainable_blocks, ElementsAre("layer3"));
  EXPECT_THAT(plan->frozen_blocks, ElementsAre("stem", "layer1", "layer2"));
  int trainable = 0;
  for (const auto& p : backbone_.named_parameters(/*recurse=*/true)) {
    const bool expect = StartsWith(p.name, "layer3.") &&
                        p.name.find(".bn") == std::string::npos;
    EXPECT_EQ(p.value.requires_grad(), expect) << p.name;
    trainable += expect;
  }
  EXPECT_GT(trainable, 0);
}

TEST_F(RecipeOnCompactResNet, PatternMatchingNothingIsRefusedWithExamples) {
  FreezePolicy policy;
  policy.set_mode(FreezePolicy::FULL);
  policy.add_frozen_patterns("layer9.*");
  absl::StatusOr<FreezePlan> plan = ApplyFreezePolicy(backbone_, policy);
  ASSERT_TRUE(plan.ok());
  absl::Status status = ApplyParameterPatterns(backbone_, policy, &*plan);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("'layer9.*' matches no backbone parameter"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("stem."));
}

TEST_F(RecipeOnCompactResNet, GroupsGetDecayedAndExplicitRates) {
  FreezePolicy policy;
  policy.set_layer_decay(0.5f);
  (*policy.mutable_block_lr_scales())["stem"] = 0.01f;
  const std::vector<std::string> blocks = Blocks(backbone_);
  absl::StatusOr<std::vector<BackboneGroup>> groups =
      BackboneGroups(backbone_, blocks, policy, 0.1);
  ASSERT_TRUE(groups.ok()) << groups.status();
  ASSERT_EQ(groups->size(), 4u);
  EXPECT_EQ((*groups)[0].block, "stem");
  EXPECT_NEAR((*groups)[0].lr_scale, 0.01, 1e-9);
  EXPECT_EQ((*groups)[1].block, "layer1");
  EXPECT_NEAR((*groups)[1].lr_scale, 0.1 * 0.25, 1e-9);
  EXPECT_NEAR((*groups)[2].lr_scale, 0.1 * 0.5, 1e-9);
  EXPECT_EQ((*groups)[3].block, "layer3");
  EXPECT_NEAR((*groups)[3].lr_scale, 0.1, 1e-9);
  size_t total = 0;
  for (const auto& g : *groups) total += g.params.size();
  EXPECT_EQ(total, backbone_.parameters().size());

  (*policy.mutable_block_lr_scales())["layer7"] = 1;
  EXPECT_EQ(BackboneGroups(backbone_, blocks, policy, 0.1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PolicyAtEpochTest, GradualUnfreezingSchedule) {
  FreezePolicy policy;
  policy.set_mode(FreezePolicy::FULL);
  auto* a = policy.add_gradual_unfreeze();
  a->set_epoch(2);
  a->set_n_blocks(1);
  auto* b = policy.add_gradual_unfreeze();
  b->set_epoch(4);
  b->set_n_blocks(3);
  EXPECT_EQ(PolicyAtEpoch(policy, 1).mode(), FreezePolicy::FROZEN);
  EXPECT_EQ(PolicyAtEpoch(policy, 2).mode(), FreezePolicy::LAST_N_BLOCKS);
  EXPECT_EQ(PolicyAtEpoch(policy, 3).n_blocks(), 1);
  EXPECT_EQ(PolicyAtEpoch(policy, 4).n_blocks(), 3);
  EXPECT_EQ(PolicyAtEpoch(policy, 9).n_blocks(), 3);
  EXPECT_FALSE(BackboneFrozenThroughout(policy));
  FreezePolicy frozen;
  frozen.set_mode(FreezePolicy::FROZEN);
  EXPECT_TRUE(BackboneFrozenThroughout(frozen));
  frozen.add_trainable_patterns("*.bias");
  EXPECT_FALSE(BackboneFrozenThroughout(frozen));
}

TEST(ValidateRecipeTest, RefusesWhatCannotRun) {
  JobSpec spec;
  EXPECT_TRUE(tlserve::ValidateRecipe(spec, 5).ok());
  JobSpec bad = spec;
  auto* step = bad.mutable_freeze()->add_gradual_unfreeze();
  step->set_epoch(7);
  step->set_n_blocks(1);
  EXPECT_THAT(std::string(tlserve::ValidateRecipe(bad, 5).message()),
              HasSubstr("gradual_unfreeze[0]: epoch 7"));
  bad = spec;
  bad.set_label_smoothing(1.0f);
  EXPECT_FALSE(tlserve::ValidateRecipe(bad, 5).ok());
  bad = spec;
  bad.mutable_early_stopping()->set_metric("f1");
  EXPECT_THAT(std::string(tlserve::ValidateRecipe(bad, 5).message()),
              HasSubstr("early_stopping.metric 'f1'"));
  bad = spec;
  bad.mutable_schedule()->set_kind(tlserve::v1::ScheduleSpec::STEP);
  EXPECT_THAT(std::string(tlserve::ValidateRecipe(bad, 5).message()),
              HasSubstr("step_epochs"));
  bad.mutable_schedule()->set_step_epochs(2);
  bad.mutable_schedule()->set_step_gamma(0.5f);
  EXPECT_TRUE(tlserve::ValidateRecipe(bad, 5).ok());
}

TEST(EarlyStopperTest, TracksBestAndStopsAfterPatience) {
  tlserve::v1::EarlyStopping spec;
  spec.set_patience(2);
  EarlyStopper stopper(spec);
  auto at = [](float acc) {
    EpochMetrics m;
    m.set_val_accuracy(acc);
    return m;
  };
  EXPECT_TRUE(stopper.Record(1, at(0.5f)));
  EXPECT_TRUE(stopper.Record(2, at(0.7f)));
  EXPECT_FALSE(stopper.Record(3, at(0.7f)));
  EXPECT_FALSE(stopper.ShouldStop());
  EXPECT_FALSE(stopper.Record(4, at(0.6f)));
  EXPECT_TRUE(stopper.ShouldStop());
  EXPECT_EQ(stopper.state().best_epoch, 2);

  tlserve::v1::EarlyStopping loss;
  loss.set_metric("val_loss");
  EarlyStopper by_loss(loss);
  EpochMetrics m;
  m.set_val_loss(1.0f);
  EXPECT_TRUE(by_loss.Record(1, m));
  m.set_val_loss(0.5f);
  EXPECT_TRUE(by_loss.Record(2, m));
  m.set_val_loss(0.9f);
  EXPECT_FALSE(by_loss.Record(3, m));
  EXPECT_FALSE(by_loss.ShouldStop()) << "patience 0 never stops";
}

// Runs of RunTrainingJob on a small synthetic task.
class RecipeTrainingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("recipe_run");
    input_.spec.set_kind(tlserve::v1::FINE_TUNE);
    input_.spec.set_epochs(3);
    input_.spec.set_batch_size(16);
    input_.spec.set_seed(7);
    input_.spec.mutable_data()->set_validation_fraction(0.2f);
    input_.spec.mutable_optimizer()->set_learning_rate(0.01f);
    input_.work_dir = dir_;
    input_.backbone_path = testing::SaveCompactBackbone(dir_, 1, 8, 3);
    input_.backbone_input_spec = testing::SimpleSpec(1, 12);
    input_.num_threads = 2;
    data_ = testing::SyntheticDataset(3, 30, 10, 12, 1, 5);
  }

  absl::StatusOr<TrainJobOutput> Run() {
    epochs_.clear();
    logs_.clear();
    TrainerCallbacks callbacks;
    callbacks.on_log = [this](const std::string& line) {
      logs_ += line + "\n";
    };
    callbacks.on_epoch_end = [this](const EpochMetrics& m,
                                    const std::string&) {
      epochs_.push_back(m);
      return absl::OkStatus();
    };
    return RunTrainingJob(input_, data_, callbacks);
  }

  std::map<std::string, at::Tensor> TrainedBackbone(
      const TrainJobOutput& out) {
    return StateOf(torch::jit::load(out.artifact_path)
                       .attr("backbone")
                       .toModule());
  }

  std::string dir_;
  TrainJobInput input_;
  DecodedDataset data_;
  std::vector<EpochMetrics> epochs_;
  std::string logs_;
};

TEST_F(RecipeTrainingTest, GradualUnfreezingTrainsMoreBlocksEachStep) {
  auto* freeze = input_.spec.mutable_freeze();
  auto* s2 = freeze->add_gradual_unfreeze();
  s2->set_epoch(2);
  s2->set_n_blocks(1);
  auto* s3 = freeze->add_gradual_unfreeze();
  s3->set_epoch(3);
  s3->set_n_blocks(2);
  absl::StatusOr<TrainJobOutput> out = Run();
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(epochs_.size(), 3u);
  EXPECT_THAT(epochs_[0].trainable_blocks(), IsEmpty());
  EXPECT_THAT(epochs_[1].trainable_blocks(), ElementsAre("layer3"));
  EXPECT_THAT(epochs_[2].trainable_blocks(), ElementsAre("layer2", "layer3"));
  EXPECT_THAT(logs_, HasSubstr("epoch 2: gradual unfreezing, training blocks "
                               "layer3"));

  const auto original = StateOf(torch::jit::load(input_.backbone_path));
  const auto trained = TrainedBackbone(*out);
  bool layer3_changed = false;
  for (const auto& [name, tensor] : original) {
    const bool same = torch::equal(tensor, trained.at(name));
    if (StartsWith(name, "stem.") || StartsWith(name, "layer1.")) {
      EXPECT_TRUE(same) << name << " should have stayed frozen";
    }
    if (StartsWith(name, "layer3.") && !same) layer3_changed = true;
  }
  EXPECT_TRUE(layer3_changed);
}

TEST_F(RecipeTrainingTest, BatchNormStatisticsFrozenOrUpdated) {
  // FULL with FROZEN_ALL: weights move, running statistics do not.
  input_.spec.mutable_freeze()->set_mode(FreezePolicy::FULL);
  input_.spec.mutable_freeze()->set_batchnorm_stats(FreezePolicy::FROZEN_ALL);
  absl::StatusOr<TrainJobOutput> out = Run();
  ASSERT_TRUE(out.ok()) << out.status();
  const auto original = StateOf(torch::jit::load(input_.backbone_path));
  auto trained = TrainedBackbone(*out);
  int stats = 0;
  bool weights_moved = false;
  for (const auto& [name, tensor] : original) {
    if (name.find("running_") != std::string::npos) {
      EXPECT_TRUE(torch::equal(tensor, trained.at(name))) << name;
      ++stats;
    } else if (!torch::equal(tensor, trained.at(name))) {
      weights_moved = true;
    }
  }
  EXPECT_GT(stats, 0);
  EXPECT_TRUE(weights_moved);

  // FROZEN with UPDATE_ALL: weights fixed, statistics adapt, and the
  // feature cache (which would freeze them) is not used.
  input_.spec.mutable_freeze()->set_mode(FreezePolicy::FROZEN);
  input_.spec.mutable_freeze()->set_batchnorm_stats(FreezePolicy::UPDATE_ALL);
  out = Run();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->result.feature_cache().used());
  EXPECT_FALSE(epochs_.back().feature_cache_used());
  trained = TrainedBackbone(*out);
  bool stats_moved = false;
  for (const auto& [name, tensor] : original) {
    if (name.find("running_mean") != std::string::npos) {
      stats_moved |= !torch::equal(tensor, trained.at(name));
    } else if (name.find("running_") == std::string::npos &&
               name.find("num_batches") == std::string::npos) {
      EXPECT_TRUE(torch::equal(tensor, trained.at(name))) << name;
    }
  }
  EXPECT_TRUE(stats_moved);
}

TEST_F(RecipeTrainingTest, EarlyStoppingKeepsTheBestEpochsWeights) {
  // A min_delta no epoch can beat: epoch 1 stays best, training stops
  // after `patience` more epochs, and the model is epoch 1's.
  input_.spec.set_epochs(6);
  input_.spec.mutable_early_stopping()->set_metric("val_loss");
  input_.spec.mutable_early_stopping()->set_patience(2);
  input_.spec.mutable_early_stopping()->set_min_delta(100.0f);
  input_.spec.mutable_freeze()->set_mode(FreezePolicy::FULL);
  absl::StatusOr<TrainJobOutput> stopped = Run();
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  ASSERT_EQ(epochs_.size(), 3u);
  EXPECT_TRUE(epochs_[0].best());
  EXPECT_FALSE(epochs_[1].best());
  EXPECT_TRUE(stopped->result.stopped_early());
  EXPECT_EQ(stopped->result.best_epoch(), 1);
  EXPECT_THAT(logs_, HasSubstr("early stopping after epoch 3"));

  // The same job run for exactly one epoch (constant rate) has the same
  // weights as the early-stopped one.
  input_.spec.clear_early_stopping();
  input_.spec.set_epochs(1);
  absl::StatusOr<TrainJobOutput> one = Run();
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->result.test_accuracy(), stopped->result.test_accuracy());
  EXPECT_EQ(one->result.test_loss(), stopped->result.test_loss());
}

TEST_F(RecipeTrainingTest, LabelSmoothingClippingAndStepSchedule) {
  input_.spec.mutable_freeze()->set_mode(FreezePolicy::FULL);
  input_.spec.set_label_smoothing(0.5f);
  input_.spec.mutable_schedule()->set_kind(tlserve::v1::ScheduleSpec::STEP);
  input_.spec.mutable_schedule()->set_step_epochs(1);
  input_.spec.mutable_schedule()->set_step_gamma(0.5f);
  absl::StatusOr<TrainJobOutput> out = Run();
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(epochs_.size(), 3u);
  // With 3 classes and smoothing 0.5 the cross-entropy cannot go below the
  // smoothed target's entropy.
  const double t = 0.5 + 0.5 / 3, o = 0.5 / 3;
  const double floor = -(t * std::log(t) + 2 * o * std::log(o));
  for (const auto& m : epochs_) EXPECT_GT(m.train_loss(), floor - 1e-3);
  EXPECT_NEAR(epochs_[0].learning_rate(), 0.01, 1e-6);
  EXPECT_NEAR(epochs_[1].learning_rate(), 0.005, 1e-6);
  EXPECT_NEAR(epochs_[2].learning_rate(), 0.0025, 1e-6);

  // SGD steps of a gradient clipped to a tiny norm barely move anything.
  input_.spec.clear_label_smoothing();
  input_.spec.clear_schedule();
  input_.spec.mutable_optimizer()->set_kind(tlserve::v1::OptimizerSpec::SGD);
  input_.spec.mutable_optimizer()->set_learning_rate(0.1f);
  input_.spec.set_grad_clip_norm(1e-7f);
  out = Run();
  ASSERT_TRUE(out.ok()) << out.status();
  const auto original = StateOf(torch::jit::load(input_.backbone_path));
  const auto trained = TrainedBackbone(*out);
  for (const auto& [name, tensor] : original) {
    if (name.find("running_") != std::string::npos ||
        name.find("num_batches") != std::string::npos) {
      continue;
    }
    EXPECT_LT((tensor - trained.at(name)).abs().max().item<double>(), 1e-5)
        << name;
  }
}

TEST_F(RecipeTrainingTest, FeatureCacheReportsItsSavings) {
  input_.spec.mutable_freeze()->set_mode(FreezePolicy::FROZEN);
  absl::StatusOr<TrainJobOutput> out = Run();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->result.feature_cache().used());
  EXPECT_EQ(out->result.feature_cache().samples(), 72 + 18 + 30);
  EXPECT_GT(out->result.feature_cache().build_seconds(), 0);
  EXPECT_THAT(logs_, HasSubstr("feature cache: backbone ran once"));
  // Every result carries what it needs to be reproduced.
  EXPECT_EQ(out->result.manifest().seed(), 7u);
  EXPECT_EQ(out->result.manifest().libtorch_version(), TORCH_VERSION);
  EXPECT_EQ(out->result.manifest().threads(), 2);
  EXPECT_EQ(out->result.manifest().device(), "cpu");
  for (const auto& m : epochs_) EXPECT_TRUE(m.feature_cache_used());

  EXPECT_GT(out->result.feature_cache().bytes_in_memory(), 0);
  EXPECT_EQ(out->result.feature_cache().bytes_on_disk(), 0);

  // Over the memory bound the features go to a mapped file, with the
  // same training result.
  input_.spec.mutable_feature_cache()->set_memory_limit_bytes(1000);
  absl::StatusOr<TrainJobOutput> spilled = Run();
  ASSERT_TRUE(spilled.ok()) << spilled.status();
  EXPECT_THAT(logs_, HasSubstr("feature cache on disk"));
  EXPECT_EQ(spilled->result.feature_cache().bytes_in_memory(), 0);
  EXPECT_EQ(spilled->result.feature_cache().bytes_on_disk(),
            out->result.feature_cache().bytes_in_memory());
  EXPECT_EQ(spilled->result.test_loss(), out->result.test_loss());

  input_.spec.mutable_feature_cache()->set_mode(
      tlserve::v1::FeatureCacheSpec::OFF);
  out = Run();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->result.feature_cache().used());
}

TEST_F(RecipeTrainingTest, AugmentationIsSeededAndTurnsTheCacheOff) {
  input_.spec.mutable_freeze()->set_mode(FreezePolicy::FROZEN);
  input_.spec.mutable_augment()->set_horizontal_flip(true);
  input_.spec.mutable_augment()->set_random_resized_crop(true);
  input_.spec.mutable_augment()->set_crop_scale_min(0.5f);
  absl::StatusOr<TrainJobOutput> first = Run();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->result.feature_cache().used())
      << "augmented inputs change every epoch; features cannot be cached";
  const std::vector<EpochMetrics> first_epochs = epochs_;
  absl::StatusOr<TrainJobOutput> second = Run();
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_EQ(epochs_.size(), first_epochs.size());
  for (size_t i = 0; i < epochs_.size(); ++i) {
    EXPECT_EQ(epochs_[i].train_loss(), first_epochs[i].train_loss()) << i;
  }
  EXPECT_EQ(second->result.test_loss(), first->result.test_loss());

  input_.spec.clear_augment();
  absl::StatusOr<TrainJobOutput> plain = Run();
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_NE(epochs_[0].train_loss(), first_epochs[0].train_loss());
}

}  // namespace
}  // namespace tlserve::worker
