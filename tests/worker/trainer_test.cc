#include "worker/trainer.h"

#include <torch/script.h>
#include <torch/serialize/input-archive.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/test_util.h"

namespace tlserve::worker {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using tlserve::v1::FreezePolicy;
using tlserve::v1::JobSpec;

struct Recorder {
  std::vector<std::string> logs;
  std::vector<tlserve::v1::EpochMetrics> epochs;
  std::vector<std::string> checkpoints;
  int progress_calls = 0;
  // Copies of each checkpoint (the trainer removes older ones).
  std::string keep_dir;

  TrainerCallbacks Callbacks() {
    TrainerCallbacks callbacks;
    callbacks.on_log = [this](const std::string& line) {
      logs.push_back(line);
    };
    callbacks.on_progress = [this](const tlserve::v1::Progress&) {
      ++progress_calls;
    };
    callbacks.on_epoch_end = [this](const tlserve::v1::EpochMetrics& m,
                                    const std::string& path) {
      epochs.push_back(m);
      std::string kept = path;  // empty: no checkpoint at this epoch's end
      if (!keep_dir.empty() && !path.empty()) {
        kept = absl::StrCat(keep_dir, "/epoch_", m.epoch(), ".pt");
        std::filesystem::copy_file(path, kept);
      }
      checkpoints.push_back(kept);
      return absl::OkStatus();
    };
    return callbacks;
  }
  bool Logged(const std::string& text) const {
    for (const auto& line : logs) {
      if (line.find(text) != std::string::npos) return true;
    }
    return false;
  }
};

JobSpec FineTuneSpec(FreezePolicy::Mode mode, int epochs, int batch_size) {
  JobSpec spec;
  spec.set_kind(tlserve::v1::FINE_TUNE);
  spec.mutable_freeze()->set_mode(mode);
  spec.set_epochs(epochs);
  spec.set_batch_size(batch_size);
  spec.set_seed(42);
  return spec;
}

std::map<std::string, at::Tensor> StateMap(const torch::jit::Module& module) {
  std::map<std::string, at::Tensor> state;
  for (auto& [name, tensor] : testing::NamedState(module)) state[name] = tensor;
  return state;
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

// The confusion matrix of an evaluation over `count` samples and k classes
// agrees with the accuracy, top-5 and per-class numbers beside it.
void ExpectConsistentEvaluation(const google::protobuf::RepeatedField<int64_t>&
                                    confusion,
                                const google::protobuf::RepeatedPtrField<
                                    tlserve::v1::ClassMetrics>& per_class,
                                int k, int64_t count, float accuracy,
                                float top5_accuracy) {
  ASSERT_EQ(confusion.size(), k * k);
  ASSERT_EQ(per_class.size(), k);
  int64_t total = 0;
  int64_t diagonal = 0;
  for (int t = 0; t < k; ++t) {
    int64_t row = 0;
    for (int p = 0; p < k; ++p) row += confusion[t * k + p];
    EXPECT_EQ(per_class[t].support(), row) << "class " << t;
    total += row;
    diagonal += confusion[t * k + t];
  }
  EXPECT_EQ(total, count);
  EXPECT_FLOAT_EQ(accuracy, static_cast<float>(diagonal) / count);
  EXPECT_GE(top5_accuracy, accuracy);
  // With at most 5 classes the top 5 is every class.
  if (k <= 5) {
    EXPECT_FLOAT_EQ(top5_accuracy, 1.0f);
  }
}

TEST(TrainerTest, FrozenBackboneStaysBitIdenticalAndHeadLearns) {
  const std::string dir = testing::MakeTempDir("frozen");
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FROZEN, 6, 16);
  input.spec.mutable_optimizer()->set_learning_rate(0.05f);
  input.spec.mutable_data()->set_validation_fraction(0.2f);
  input.work_dir = dir;
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 3);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  input.num_threads = 2;
  DecodedDataset data = testing::SyntheticDataset(3, 30, 10, 12, 1, 5);
  Recorder recorder;
  absl::StatusOr<TrainJobOutput> out =
      RunTrainingJob(input, data, recorder.Callbacks());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->cancelled);
  EXPECT_TRUE(recorder.Logged("feature cache: ")) << "no feature cache used";
  ASSERT_EQ(recorder.epochs.size(), 6u);
  EXPECT_LT(recorder.epochs.back().train_loss(),
            recorder.epochs.front().train_loss());
  EXPECT_EQ(recorder.epochs.back().per_class_val_accuracy_size(), 3);
  int train_count = 0, val_count = 0;
  for (const std::string& line : recorder.logs) {
    if (std::sscanf(line.c_str(), "data: %d train, %d validation",
                    &train_count, &val_count) == 2) {
      break;
    }
  }
  ASSERT_GT(val_count, 0) << "no 'data: N train, M validation' log line";
  for (const tlserve::v1::EpochMetrics& m : recorder.epochs) {
    SCOPED_TRACE(absl::StrCat("epoch ", m.epoch()));
    ExpectConsistentEvaluation(m.confusion(), m.per_class(), 3, val_count,
                               m.val_accuracy(), m.val_top5_accuracy());
  }
  ExpectConsistentEvaluation(out->result.test_confusion(),
                             out->result.per_class_test(), 3,
                             out->result.test_count(),
                             out->result.test_accuracy(),
                             out->result.test_top5_accuracy());
  // A random backbone ends in global average pooling, which blurs where
  // the bar is; well above chance (1/3) is what the head can do.
  EXPECT_GT(out->result.test_accuracy(), 0.6f);
  EXPECT_EQ(out->result.test_count(), 30);
  EXPECT_EQ(out->result.feature_dim(), 32);
  EXPECT_THAT(out->result.blocks(),
              ElementsAre("stem", "layer1", "layer2", "layer3"));
  EXPECT_THAT(out->class_names, ElementsAre("class_0", "class_1", "class_2"));

  torch::jit::Module original = torch::jit::load(input.backbone_path);
  torch::jit::Module exported = torch::jit::load(out->artifact_path);
  auto trained = StateMap(exported.attr("backbone").toModule());
  for (const auto& [name, tensor] : StateMap(original)) {
    ASSERT_TRUE(trained.count(name)) << name;
    EXPECT_TRUE(torch::equal(tensor, trained[name])) << name << " changed";
  }
}

TEST(TrainerTest, FewShotHeadIsTheNearestClassMeanRuleWithoutTraining) {
  const std::string dir = testing::MakeTempDir("few_shot");
  TrainJobInput input;
  input.spec.set_kind(tlserve::v1::FEW_SHOT);
  input.spec.mutable_freeze()->set_mode(FreezePolicy::FROZEN);
  input.spec.mutable_data()->set_samples_per_class(5);
  input.spec.set_seed(42);
  input.work_dir = dir;
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 3);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  input.num_threads = 2;
  DecodedDataset data = testing::SyntheticDataset(3, 30, 10, 12, 1, 5);
  Recorder recorder;
  absl::StatusOr<TrainJobOutput> out =
      RunTrainingJob(input, data, recorder.Callbacks());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(recorder.epochs.empty()) << "a few-shot job trains no epoch";
  EXPECT_TRUE(recorder.Logged(
      "few-shot: prototypes of 3 classes from 15 labelled images (5/5/5 per "
      "class)"));
  EXPECT_EQ(out->result.test_count(), 30);
  ExpectConsistentEvaluation(out->result.test_confusion(),
                             out->result.per_class_test(), 3,
                             out->result.test_count(),
                             out->result.test_accuracy(),
                             out->result.test_top5_accuracy());
  EXPECT_GT(out->result.test_accuracy(), 0.5f);  // chance is 1/3
  // The backbone is untouched, so the model can share it when served.
  EXPECT_FALSE(out->result.frozen_backbone_digest().empty());

  // The exported model ranks classes by the distance of the backbone's
  // features to each class mean (weight = 2 c_k, bias = -|c_k|^2).
  torch::jit::Module model = torch::jit::load(out->artifact_path);
  torch::jit::Module head = model.attr("head").toModule().attr("out").toModule();
  const at::Tensor means = head.attr("weight").toTensor() / 2;
  EXPECT_TRUE(torch::allclose(head.attr("bias").toTensor(),
                              -(means * means).sum(1), 1e-4, 1e-4));
  at::NoGradGuard no_grad;
  const at::Tensor x = torch::rand({8, 1, 12, 12}, torch::kFloat);
  const at::Tensor logits = model.forward({x}).toTensor();
  const at::Tensor features = model.run_method("features", x).toTensor();
  const at::Tensor distances = torch::cdist(features, means).pow(2);
  EXPECT_TRUE(torch::equal(logits.argmax(1), distances.argmin(1)));
  // Scores differ from -distance by |f|^2 only, the same for every class.
  const at::Tensor gap = logits + distances;
  EXPECT_TRUE(torch::allclose(gap, gap.select(1, 0).unsqueeze(1).expand_as(gap),
                              1e-3, 1e-3));
}

// The same images with every pixel inverted: a shift in appearance with
// the labels unchanged.
DecodedDataset Inverted(DecodedDataset data) {
  for (LabelledImages* split : {&data.train, &data.test}) {
    for (Image& image : split->images) {
      for (uint8_t& p : image.pixels) p = static_cast<uint8_t>(255 - p);
    }
  }
  return data;
}

TEST(TrainerTest, DomainAdaptationTrainsADomainClassifierAndReportsTheTarget) {
  const std::string dir = testing::MakeTempDir("dann");
  DecodedDataset source = testing::SyntheticDataset(3, 30, 10, 12, 1, 5);
  DecodedDataset target = Inverted(testing::SyntheticDataset(3, 20, 8, 12, 1, 6));
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FULL, 3, 16);
  input.spec.set_kind(tlserve::v1::DOMAIN_ADAPT);
  input.spec.mutable_optimizer()->set_learning_rate(0.01f);
  input.spec.mutable_data()->set_validation_fraction(0.2f);
  input.spec.mutable_domain_adapt()->set_target_dataset_id("ds-target");
  input.work_dir = dir;
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 3);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  input.num_threads = 2;
  input.target_data = &target;
  Recorder recorder;
  absl::StatusOr<TrainJobOutput> out =
      RunTrainingJob(input, source, recorder.Callbacks());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(recorder.Logged("domain adaptation: 60 unlabelled target images, "
                              "24 labelled target test images"));
  ASSERT_EQ(recorder.epochs.size(), 3u);
  float previous_weight = 0;
  for (const tlserve::v1::EpochMetrics& m : recorder.epochs) {
    SCOPED_TRACE(absl::StrCat("epoch ", m.epoch()));
    EXPECT_GT(m.domain_loss(), 0.0f);
    EXPECT_GE(m.domain_accuracy(), 0.0f);
    EXPECT_LE(m.domain_accuracy(), 1.0f);
    // The reversal's weight ramps up over training.
    EXPECT_GT(m.domain_loss_weight(), previous_weight);
    EXPECT_LT(m.domain_loss_weight(), 1.0f);
    previous_weight = m.domain_loss_weight();
  }
  // Judged on the target's test split, the source's kept beside it.
  EXPECT_EQ(out->result.test_count(), 24);
  EXPECT_EQ(out->result.source_test_count(), 30);
  ExpectConsistentEvaluation(out->result.test_confusion(),
                             out->result.per_class_test(), 3,
                             out->result.test_count(),
                             out->result.test_accuracy(),
                             out->result.test_top5_accuracy());
  // The served model is backbone and head only.
  torch::jit::Module model = torch::jit::load(out->artifact_path);
  EXPECT_FALSE(model.hasattr("domain_head"));
  EXPECT_TRUE(model.hasattr("head"));

  // Weight 0: the same pipeline on the source alone, the baseline.
  input.spec.mutable_domain_adapt()->set_domain_loss_weight(0);
  input.work_dir = testing::MakeTempDir("dann_baseline");
  Recorder baseline;
  absl::StatusOr<TrainJobOutput> alone =
      RunTrainingJob(input, source, baseline.Callbacks());
  ASSERT_TRUE(alone.ok()) << alone.status();
  EXPECT_TRUE(baseline.Logged("weight 0: source only"));
  ASSERT_EQ(baseline.epochs.size(), 3u);
  EXPECT_EQ(baseline.epochs[0].domain_loss(), 0.0f);
  EXPECT_EQ(alone->result.test_count(), 24);

  // Without the target's images the job cannot run.
  input.target_data = nullptr;
  absl::StatusOr<TrainJobOutput> missing =
      RunTrainingJob(input, source, Recorder().Callbacks());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
}

// Four classes and a coarse task grouping them {0, 1} -> "low", {2, 3} ->
// "high"; class_subset keeps labels 1, 2, 3 only.
tlserve::v1::TaskSpec CoarseTask() {
  tlserve::v1::TaskSpec task;
  task.set_name("coarse");
  task.add_class_names("low");
  task.add_class_names("high");
  for (int m : {0, 0, 1, 1}) task.add_label_map(m);
  task.set_loss_weight(2.0f);
  return task;
}

TEST(TrainerTest, MultitaskHeadsTrainTogetherAndExportEveryOutput) {
  DecodedDataset data = testing::SyntheticDataset(4, 24, 10, 12, 1, 7);
  for (FreezePolicy::Mode mode : {FreezePolicy::FROZEN, FreezePolicy::FULL}) {
    SCOPED_TRACE(FreezePolicy::Mode_Name(mode));
    const std::string dir = testing::MakeTempDir("multitask");
    TrainJobInput input;
    input.spec = FineTuneSpec(mode, 3, 16);
    input.spec.set_kind(tlserve::v1::MULTITASK);
    input.spec.mutable_optimizer()->set_learning_rate(0.01f);
    input.spec.mutable_data()->set_validation_fraction(0.2f);
    for (int c : {1, 2, 3}) input.spec.mutable_data()->add_class_subset(c);
    *input.spec.mutable_multitask()->add_tasks() = CoarseTask();
    input.work_dir = dir;
    input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 3);
    input.backbone_input_spec = testing::SimpleSpec(1, 12);
    input.num_threads = 2;
    Recorder recorder;
    absl::StatusOr<TrainJobOutput> out =
        RunTrainingJob(input, data, recorder.Callbacks());
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_TRUE(recorder.Logged("multitask: heads classes (3 classes, weight "
                                "1), coarse (2 classes, weight 2)"));
    EXPECT_EQ(out->class_names.size(), 3u);
    ASSERT_EQ(recorder.epochs.size(), 3u);
    for (const tlserve::v1::EpochMetrics& m : recorder.epochs) {
      SCOPED_TRACE(absl::StrCat("epoch ", m.epoch()));
      ASSERT_EQ(m.tasks_size(), 1);
      EXPECT_EQ(m.tasks(0).name(), "coarse");
      EXPECT_GT(m.tasks(0).train_loss(), 0.0f);
      EXPECT_GT(m.tasks(0).loss(), 0.0f);
      EXPECT_GE(m.tasks(0).accuracy(), 0.0f);
      EXPECT_LE(m.tasks(0).accuracy(), 1.0f);
      EXPECT_EQ(m.tasks(0).per_class_accuracy_size(), 2);
    }
    ASSERT_EQ(out->result.tasks_size(), 1);
    const tlserve::v1::TaskMetrics& coarse = out->result.tasks(0);
    EXPECT_EQ(coarse.name(), "coarse");
    // The classes head stays a 3-class classifier with consistent numbers.
    ExpectConsistentEvaluation(out->result.test_confusion(),
                               out->result.per_class_test(), 3,
                               out->result.test_count(),
                               out->result.test_accuracy(),
                               out->result.test_top5_accuracy());

    // One file, every head: forward() side by side, outputs() by name.
    torch::jit::Module model = torch::jit::load(out->artifact_path);
    model.eval();
    const at::Tensor x = torch::rand({5, 1, 12, 12});
    const at::Tensor all = model.forward({x}).toTensor();
    ASSERT_EQ(all.size(1), 5);
    const c10::Dict<c10::IValue, c10::IValue> heads =
        model.run_method("outputs", x).toGenericDict();
    ASSERT_EQ(heads.size(), 2u);
    EXPECT_TRUE(heads.at("classes").toTensor().equal(all.slice(1, 0, 3)));
    EXPECT_TRUE(heads.at("coarse").toTensor().equal(all.slice(1, 3, 5)));

    // The coarse head's test accuracy is what its outputs give on the test
    // split (the classes are 1, 2, 3: coarse low, high, high).
    std::vector<at::Tensor> pixels;
    for (const Image& image : data.test.images) {
      pixels.push_back(
          torch::from_blob(const_cast<uint8_t*>(image.pixels.data()),
                           {1, 12, 12}, at::kByte)
              .clone());
    }
    const at::Tensor images = torch::stack(pixels).to(at::kFloat).div(255);
    const at::Tensor labels = torch::tensor(
        std::vector<int64_t>(data.test.labels.begin(), data.test.labels.end()));
    const at::Tensor kept = labels.ge(1);
    const at::Tensor truth = labels.index({kept}).ge(2).to(at::kLong);
    const at::Tensor coarse_out =
        model.run_method("outputs", images.index({kept}))
            .toGenericDict()
            .at("coarse")
            .toTensor();
    EXPECT_EQ(out->result.test_count(), truth.size(0));
    EXPECT_NEAR(coarse.accuracy(),
                coarse_out.argmax(1).eq(truth).to(at::kFloat).mean().item<float>(),
                1e-5);
    EXPECT_GT(coarse.accuracy(), 0.5f) << "no better than chance";
  }

  // A map that does not fit the dataset fails the job, naming the field.
  TrainJobInput bad;
  bad.spec = FineTuneSpec(FreezePolicy::FROZEN, 1, 16);
  bad.spec.set_kind(tlserve::v1::MULTITASK);
  tlserve::v1::TaskSpec short_map = CoarseTask();
  short_map.mutable_label_map()->RemoveLast();
  *bad.spec.mutable_multitask()->add_tasks() = short_map;
  bad.work_dir = testing::MakeTempDir("multitask_bad");
  bad.backbone_path = testing::SaveCompactBackbone(bad.work_dir, 1, 8, 3);
  bad.backbone_input_spec = testing::SimpleSpec(1, 12);
  absl::StatusOr<TrainJobOutput> refused =
      RunTrainingJob(bad, data, Recorder().Callbacks());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("label_map has 3 entries"));
}

TEST(TrainerTest, LastBlockOfResnet18TrainsOnlyLayer4) {
  if (!testing::PythonTorchAvailable()) {
    GTEST_SKIP() << "/usr/bin/python3 with torch is not available";
  }
  absl::StatusOr<std::string> backbone =
      testing::TorchvisionBackbone("resnet18", 32);
  ASSERT_TRUE(backbone.ok()) << backbone.status();
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::LAST_N_BLOCKS, 1, 12);
  input.spec.mutable_freeze()->set_n_blocks(1);
  input.spec.mutable_optimizer()->set_kind(tlserve::v1::OptimizerSpec::SGD);
  input.work_dir = testing::MakeTempDir("last_n");
  input.backbone_path = *backbone;
  input.backbone_input_spec = testing::ImageNetSpec(32);
  input.num_threads = 2;
  DecodedDataset data = testing::SyntheticDataset(3, 12, 2, 32, 3, 6);
  Recorder recorder;
  absl::StatusOr<TrainJobOutput> out =
      RunTrainingJob(input, data, recorder.Callbacks());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->result.feature_dim(), 512);
  EXPECT_EQ(out->result.blocks_size(), 6);

  auto original = StateMap(torch::jit::load(*backbone));
  auto trained = StateMap(
      torch::jit::load(out->artifact_path).attr("backbone").toModule());
  int changed = 0;
  for (const auto& [name, tensor] : original) {
    ASSERT_TRUE(trained.count(name)) << name;
    const bool equal = torch::equal(tensor, trained[name]);
    if (StartsWith(name, "layer4.")) {
      // Weights and BatchNorm statistics of the trained block move
      // (num_batches_tracked too); nothing in it can stay put by chance.
      EXPECT_FALSE(equal) << name << " did not train";
      changed += !equal;
    } else {
      EXPECT_TRUE(equal) << name << " changed but is frozen";
    }
  }
  EXPECT_GT(changed, 0);
  EXPECT_TRUE(recorder.Logged("blocks: layer4"));
  EXPECT_TRUE(recorder.Logged("activation cache: the backbone up to 'layer4'"));
}

// Training the last block on activations cached at its input gives the
// run that computes the frozen blocks every step: same accuracy, losses
// and weights up to float rounding (convolutions over batches of another
// size), while the frozen part ran once.
TEST(TrainerTest, ActivationCacheTrainsLikeTheUncachedRun) {
  const std::string dir = testing::MakeTempDir("activation_cache");
  DecodedDataset data = testing::SyntheticDataset(3, 20, 5, 12, 1, 9);
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::LAST_N_BLOCKS, 3, 8);
  input.spec.mutable_freeze()->set_n_blocks(1);
  input.spec.mutable_data()->set_validation_fraction(0.25f);
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 4);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);

  input.work_dir = testing::MakeTempDir("activation_cache_on");
  Recorder cached;
  absl::StatusOr<TrainJobOutput> a = RunTrainingJob(input, data, cached.Callbacks());
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(cached.Logged("activation cache: the backbone up to 'layer3'"));
  EXPECT_TRUE(cached.Logged("saved about"));

  input.spec.mutable_feature_cache()->set_mode(tlserve::v1::FeatureCacheSpec::OFF);
  input.work_dir = testing::MakeTempDir("activation_cache_off");
  Recorder plain;
  absl::StatusOr<TrainJobOutput> b = RunTrainingJob(input, data, plain.Callbacks());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(plain.Logged("activation cache"));

  ASSERT_EQ(cached.epochs.size(), plain.epochs.size());
  for (size_t i = 0; i < cached.epochs.size(); ++i) {
    EXPECT_NEAR(cached.epochs[i].train_loss(), plain.epochs[i].train_loss(), 1e-4);
    EXPECT_NEAR(cached.epochs[i].val_loss(), plain.epochs[i].val_loss(), 1e-4);
  }
  EXPECT_EQ(a->result.test_accuracy(), b->result.test_accuracy());
  EXPECT_NEAR(a->result.test_loss(), b->result.test_loss(), 1e-4);
  auto sa = StateMap(torch::jit::load(a->artifact_path));
  auto sb = StateMap(torch::jit::load(b->artifact_path));
  for (const auto& [name, tensor] : sa) {
    EXPECT_TRUE(torch::allclose(tensor.to(at::kDouble), sb[name].to(at::kDouble),
                                1e-4, 1e-5))
        << name;
  }
  // Training moved the last block, so the comparison is not vacuous.
  auto original = StateMap(torch::jit::load(input.backbone_path));
  EXPECT_FALSE(torch::equal(original["layer3.conv1.weight"],
                            sa["backbone.layer3.conv1.weight"]));
}

TEST(TrainerTest, ResumedRunMatchesUninterruptedRun) {
  const std::string dir = testing::MakeTempDir("resume");
  DecodedDataset data = testing::SyntheticDataset(3, 20, 5, 12, 1, 9);
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FULL, 3, 8);
  input.spec.set_checkpoint_every_epoch(true);
  input.spec.mutable_head()->add_hidden_sizes(16);
  input.spec.mutable_head()->set_dropout(0.3f);  // uses the torch RNG
  input.spec.mutable_optimizer()->set_kind(tlserve::v1::OptimizerSpec::SGD);
  input.spec.mutable_schedule()->set_kind(tlserve::v1::ScheduleSpec::COSINE);
  input.spec.mutable_schedule()->set_warmup_epochs(1);
  input.spec.mutable_data()->set_validation_fraction(0.25f);
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 4);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  input.num_threads = 2;

  input.work_dir = testing::MakeTempDir("full_run");
  Recorder full;
  full.keep_dir = dir;
  absl::StatusOr<TrainJobOutput> a =
      RunTrainingJob(input, data, full.Callbacks());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(full.checkpoints.size(), 3u);
  // Older checkpoints are removed once the next one is handed over.
  EXPECT_FALSE(
      std::filesystem::exists(input.work_dir + "/checkpoint_epoch_1_batch_0.pt"));
  EXPECT_TRUE(
      std::filesystem::exists(input.work_dir + "/checkpoint_epoch_3_batch_0.pt"));

  input.work_dir = testing::MakeTempDir("resumed_run");
  input.resume_checkpoint_path = full.checkpoints[0];
  input.resume_epoch = 1;
  Recorder resumed;
  absl::StatusOr<TrainJobOutput> b =
      RunTrainingJob(input, data, resumed.Callbacks());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(resumed.Logged("resumed from checkpoint of epoch 1"));
  ASSERT_EQ(resumed.epochs.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    const auto& x = full.epochs[i + 1];
    const auto& y = resumed.epochs[i];
    EXPECT_EQ(x.epoch(), y.epoch());
    EXPECT_EQ(x.train_loss(), y.train_loss()) << "epoch " << x.epoch();
    EXPECT_EQ(x.val_loss(), y.val_loss()) << "epoch " << x.epoch();
    EXPECT_EQ(x.val_accuracy(), y.val_accuracy());
  }
  EXPECT_EQ(a->result.test_loss(), b->result.test_loss());
  EXPECT_EQ(a->result.test_accuracy(), b->result.test_accuracy());

  auto sa = StateMap(torch::jit::load(a->artifact_path));
  auto sb = StateMap(torch::jit::load(b->artifact_path));
  ASSERT_EQ(sa.size(), sb.size());
  for (const auto& [name, tensor] : sa) {
    EXPECT_TRUE(torch::equal(tensor, sb[name])) << name << " differs";
  }
  // FULL really trained the whole backbone.
  auto original = StateMap(torch::jit::load(input.backbone_path));
  for (const auto& [name, tensor] : original) {
    if (name.find("weight") != std::string::npos) {
      EXPECT_FALSE(torch::equal(tensor, sa["backbone." + name])) << name;
    }
  }
}

// A worker lost in the middle of an epoch: the next attempt resumes from
// the last checkpoint inside that epoch (position, running sums, weights,
// optimizer, dropout RNG; shuffles and crops are derived from the seed)
// and ends with exactly the metrics and weights of a run never stopped.
TEST(TrainerTest, StoppedMidEpochResumesToTheSameMetrics) {
  const std::string dir = testing::MakeTempDir("mid_epoch");
  DecodedDataset data = testing::SyntheticDataset(3, 20, 5, 12, 1, 9);
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FULL, 3, 8);
  input.spec.set_checkpoint_every_epoch(true);
  input.spec.mutable_head()->add_hidden_sizes(16);
  input.spec.mutable_head()->set_dropout(0.3f);  // uses the torch RNG
  input.spec.mutable_augment()->set_random_resized_crop(true);
  input.spec.mutable_augment()->set_horizontal_flip(true);
  input.spec.set_loader_threads(2);
  input.spec.mutable_schedule()->set_kind(tlserve::v1::ScheduleSpec::COSINE);
  input.spec.mutable_data()->set_validation_fraction(0.25f);
  // A checkpoint after every batch.
  input.spec.set_checkpoint_every_seconds(1e-6f);
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 4);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  input.num_threads = 2;

  input.work_dir = testing::MakeTempDir("mid_full");
  Recorder full;
  int mid_epoch_checkpoints = 0;
  TrainerCallbacks full_callbacks = full.Callbacks();
  full_callbacks.on_checkpoint = [&](int epoch, int64_t batch,
                                     const std::string& path) {
    EXPECT_TRUE(std::filesystem::exists(path));
    EXPECT_GT(batch, 0);
    EXPECT_LT(epoch, 3);
    ++mid_epoch_checkpoints;
    return absl::OkStatus();
  };
  absl::StatusOr<TrainJobOutput> a = RunTrainingJob(input, data, full_callbacks);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(full.epochs.size(), 3u);
  // 45 training samples in batches of 8: 6 batches, a checkpoint after
  // each but the last of every epoch (that one is the epoch's).
  EXPECT_EQ(mid_epoch_checkpoints, 3 * 5);

  // The same job stopped during batch 5 of epoch 2; the last checkpoint it
  // handed over is kept, as the server keeps it.
  input.work_dir = testing::MakeTempDir("mid_stopped");
  Recorder stopped;
  TrainerCallbacks stop_callbacks = stopped.Callbacks();
  std::string last_checkpoint;
  int last_epoch = -1;
  int64_t last_batch = -1;
  stop_callbacks.on_checkpoint = [&](int epoch, int64_t batch,
                                     const std::string& path) {
    last_checkpoint = dir + "/kept.pt";
    std::filesystem::copy_file(
        path, last_checkpoint,
        std::filesystem::copy_options::overwrite_existing);
    last_epoch = epoch;
    last_batch = batch;
    return absl::OkStatus();
  };
  bool stop = false;
  stop_callbacks.on_progress = [&](const tlserve::v1::Progress& p) {
    if (p.epoch() == 2 && p.batch() == 4) stop = true;
  };
  stop_callbacks.should_stop = [&] { return stop; };
  absl::StatusOr<TrainJobOutput> b = RunTrainingJob(input, data, stop_callbacks);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(b->cancelled);
  ASSERT_EQ(stopped.epochs.size(), 1u);
  EXPECT_EQ(last_epoch, 1);
  EXPECT_EQ(last_batch, 4);

  input.work_dir = testing::MakeTempDir("mid_resumed");
  input.resume_checkpoint_path = last_checkpoint;
  input.resume_epoch = 1;
  Recorder resumed;
  absl::StatusOr<TrainJobOutput> c =
      RunTrainingJob(input, data, resumed.Callbacks());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(resumed.Logged("resumed from checkpoint inside epoch 2 after "
                             "batch 4 of 6"));
  ASSERT_EQ(resumed.epochs.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    const auto& x = full.epochs[i + 1];
    const auto& y = resumed.epochs[i];
    EXPECT_EQ(x.epoch(), y.epoch());
    EXPECT_EQ(x.train_loss(), y.train_loss()) << "epoch " << x.epoch();
    EXPECT_EQ(x.train_accuracy(), y.train_accuracy()) << "epoch " << x.epoch();
    EXPECT_EQ(x.val_loss(), y.val_loss()) << "epoch " << x.epoch();
  }
  EXPECT_EQ(a->result.test_loss(), c->result.test_loss());
  EXPECT_EQ(a->result.test_accuracy(), c->result.test_accuracy());
  auto sa = StateMap(torch::jit::load(a->artifact_path));
  auto sc = StateMap(torch::jit::load(c->artifact_path));
  ASSERT_EQ(sa.size(), sc.size());
  for (const auto& [name, tensor] : sa) {
    EXPECT_TRUE(torch::equal(tensor, sc[name])) << name << " differs";
  }
}

// A worker told to stop (SIGTERM) checkpoints the batch it got to and
// hands the job back; resuming there ends exactly like a run never stopped.
// With nothing trained since the last checkpoint there is nothing to store,
// and a cancel outranks a hand-back.
TEST(TrainerTest, HandBackCheckpointsWhereItStoppedAndResumesThere) {
  const std::string dir = testing::MakeTempDir("hand_back");
  DecodedDataset data = testing::SyntheticDataset(3, 20, 5, 12, 1, 9);
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FULL, 3, 8);
  input.spec.mutable_head()->set_dropout(0.3f);
  input.spec.mutable_augment()->set_horizontal_flip(true);
  input.spec.mutable_data()->set_validation_fraction(0.25f);
  input.spec.set_checkpoint_every_seconds(3600);  // no timed checkpoints
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 4);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  input.num_threads = 2;

  input.work_dir = testing::MakeTempDir("hand_back_full");
  Recorder full;
  absl::StatusOr<TrainJobOutput> a = RunTrainingJob(input, data, full.Callbacks());
  ASSERT_TRUE(a.ok()) << a.status();

  input.work_dir = testing::MakeTempDir("hand_back_stopped");
  Recorder stopped;
  TrainerCallbacks callbacks = stopped.Callbacks();
  std::vector<std::pair<int, int64_t>> positions;
  const std::string kept = dir + "/kept.pt";
  callbacks.on_checkpoint = [&](int epoch, int64_t batch,
                                const std::string& path) {
    std::filesystem::copy_file(path, kept,
                               std::filesystem::copy_options::overwrite_existing);
    positions.emplace_back(epoch, batch);
    return absl::OkStatus();
  };
  bool hand_back = false;
  callbacks.on_progress = [&](const tlserve::v1::Progress& p) {
    if (p.epoch() == 2 && p.batch() == 3) hand_back = true;
  };
  callbacks.should_hand_back = [&] { return hand_back; };
  absl::StatusOr<TrainJobOutput> b = RunTrainingJob(input, data, callbacks);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->cancelled);
  EXPECT_TRUE(b->handed_back);
  EXPECT_TRUE(stopped.Logged("handed back during epoch 2"));
  // Epoch 1 + 3 batches of epoch 2, and no other checkpoint.
  EXPECT_THAT(positions, ElementsAre(std::make_pair(1, int64_t{3})));

  input.work_dir = testing::MakeTempDir("hand_back_resumed");
  input.resume_checkpoint_path = kept;
  input.resume_epoch = 1;
  Recorder resumed;
  TrainerCallbacks resumed_callbacks = resumed.Callbacks();
  absl::StatusOr<TrainJobOutput> c =
      RunTrainingJob(input, data, resumed_callbacks);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(resumed.Logged("resumed from checkpoint inside epoch 2 after "
                             "batch 3"));
  EXPECT_EQ(a->result.test_loss(), c->result.test_loss());
  auto sa = StateMap(torch::jit::load(a->artifact_path));
  auto sc = StateMap(torch::jit::load(c->artifact_path));
  ASSERT_EQ(sa.size(), sc.size());
  for (const auto& [name, tensor] : sa) {
    EXPECT_TRUE(torch::equal(tensor, sc[name])) << name << " differs";
  }

  // Told to stop straight after resuming: the checkpoint it resumed from
  // already holds that position, so none is written.
  input.work_dir = testing::MakeTempDir("hand_back_again");
  Recorder again;
  TrainerCallbacks again_callbacks = again.Callbacks();
  int written = 0;
  again_callbacks.on_checkpoint = [&](int, int64_t, const std::string&) {
    ++written;
    return absl::OkStatus();
  };
  again_callbacks.should_hand_back = [] { return true; };
  absl::StatusOr<TrainJobOutput> d = RunTrainingJob(input, data, again_callbacks);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->cancelled);
  EXPECT_TRUE(d->handed_back);
  EXPECT_EQ(written, 0);

  // Cancelled and asked to hand back: cancelled.
  input.work_dir = testing::MakeTempDir("hand_back_cancelled");
  input.resume_checkpoint_path.clear();
  Recorder cancelled;
  TrainerCallbacks cancel_callbacks = cancelled.Callbacks();
  cancel_callbacks.should_stop = [] { return true; };
  cancel_callbacks.should_hand_back = [] { return true; };
  absl::StatusOr<TrainJobOutput> e = RunTrainingJob(input, data, cancel_callbacks);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(e->cancelled);
  EXPECT_FALSE(e->handed_back);
}

// A loss that is no longer finite fails the job with a reason a person can
// act on, before any checkpoint holds non-finite weights.
TEST(TrainerTest, DivergingRunFailsBeforeAnyCheckpointIsPoisoned) {
  const std::string dir = testing::MakeTempDir("diverge");
  DecodedDataset data = testing::SyntheticDataset(3, 20, 5, 12, 1, 9);
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FULL, 3, 8);
  input.spec.set_checkpoint_every_seconds(1e-6f);  // after every batch
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 4);
  // A normalisation by a (denormal) std of 1e-40 overflows the inputs to
  // infinity, as a far too high learning rate does to weights in a few
  // steps: the loss is not finite from the first batch.
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  input.backbone_input_spec.clear_std();
  input.backbone_input_spec.add_std(1e-40f);
  input.num_threads = 2;
  input.work_dir = testing::MakeTempDir("diverge_run");
  Recorder recorder;
  TrainerCallbacks callbacks = recorder.Callbacks();
  std::vector<std::string> kept;
  callbacks.on_checkpoint = [&](int, int64_t, const std::string& path) {
    kept.push_back(absl::StrCat(dir, "/kept_", kept.size(), ".pt"));
    std::filesystem::copy_file(path, kept.back());
    return absl::OkStatus();
  };
  absl::StatusOr<TrainJobOutput> out = RunTrainingJob(input, data, callbacks);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(out.status().message()),
              HasSubstr("training diverged"));
  EXPECT_THAT(std::string(out.status().message()),
              HasSubstr("spec.optimizer.learning_rate"));
  EXPECT_THAT(std::string(out.status().message()),
              HasSubstr("at epoch 1, batch 1 of"));
  // It stopped before its first step, so nothing was stored, although a
  // checkpoint was due after every batch.
  EXPECT_TRUE(kept.empty());
  EXPECT_TRUE(recorder.checkpoints.empty());
}

// A frozen backbone is left out of checkpoints: they hold the head (and
// BatchNorm statistics), and resuming from one still ends the same.
TEST(TrainerTest, FrozenBackboneCheckpointsHoldOnlyWhatTrains) {
  const std::string dir = testing::MakeTempDir("slim");
  DecodedDataset data = testing::SyntheticDataset(3, 20, 5, 12, 1, 9);
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FROZEN, 3, 8);
  input.spec.set_checkpoint_every_epoch(true);
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 4);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  input.work_dir = testing::MakeTempDir("slim_full");
  Recorder full;
  full.keep_dir = dir;
  absl::StatusOr<TrainJobOutput> a = RunTrainingJob(input, data, full.Callbacks());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(full.checkpoints.size(), 3u);
  EXPECT_LT(std::filesystem::file_size(full.checkpoints[0]),
            std::filesystem::file_size(input.backbone_path) / 2);

  input.work_dir = testing::MakeTempDir("slim_resumed");
  input.resume_checkpoint_path = full.checkpoints[0];
  input.resume_epoch = 1;
  Recorder resumed;
  absl::StatusOr<TrainJobOutput> b =
      RunTrainingJob(input, data, resumed.Callbacks());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->result.test_loss(), b->result.test_loss());
  auto sa = StateMap(torch::jit::load(a->artifact_path));
  auto sb = StateMap(torch::jit::load(b->artifact_path));
  for (const auto& [name, tensor] : sa) {
    EXPECT_TRUE(torch::equal(tensor, sb[name])) << name << " differs";
  }
  // The digest is of the backbone file, not of the checkpoint resumed.
  EXPECT_TRUE(IsSha256Hex(a->result.frozen_backbone_digest()));
  EXPECT_EQ(a->result.frozen_backbone_digest(),
            b->result.frozen_backbone_digest());
}

// JobResult.frozen_backbone_digest: the same for every job that leaves one
// backbone untouched under the same normalisation, whatever the head and
// seed; different under other normalisation; empty when the weights or
// the BatchNorm statistics of the backbone trained.
TEST(TrainerTest, FrozenBackboneDigestOnlyWhenTheBackboneStaysAsLoaded) {
  const std::string dir = testing::MakeTempDir("digest");
  const std::string backbone = testing::SaveCompactBackbone(dir, 1, 4, 3);
  DecodedDataset data = testing::SyntheticDataset(3, 6, 2, 12, 1, 5);
  auto run = [&](JobSpec spec, const tlserve::v1::InputSpec& input_spec) {
    TrainJobInput input;
    input.spec = std::move(spec);
    input.work_dir = testing::MakeTempDir("digest_job");
    input.backbone_path = backbone;
    input.backbone_input_spec = input_spec;
    absl::StatusOr<TrainJobOutput> out = RunTrainingJob(input, data, {});
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? out->result.frozen_backbone_digest() : "error";
  };
  const tlserve::v1::InputSpec spec = testing::SimpleSpec(1, 12);
  JobSpec frozen = FineTuneSpec(FreezePolicy::FROZEN, 1, 8);
  frozen.mutable_freeze()->set_batchnorm_stats(FreezePolicy::FROZEN_ALL);
  const std::string a = run(frozen, spec);
  EXPECT_TRUE(IsSha256Hex(a)) << a;

  // Another seed and head, trained through the backbone (no feature
  // cache): the backbone runs in eval mode, so it is the same.
  JobSpec other_head = frozen;
  other_head.set_seed(7);
  other_head.mutable_head()->add_hidden_sizes(8);
  other_head.mutable_feature_cache()->set_mode(
      tlserve::v1::FeatureCacheSpec::OFF);
  EXPECT_EQ(run(other_head, spec), a);

  tlserve::v1::InputSpec other_norm = spec;
  other_norm.set_mean(0, 0.4f);
  const std::string b = run(frozen, other_norm);
  EXPECT_TRUE(IsSha256Hex(b)) << b;
  EXPECT_NE(b, a);

  JobSpec last_block = FineTuneSpec(FreezePolicy::LAST_N_BLOCKS, 1, 8);
  last_block.mutable_freeze()->set_n_blocks(1);
  EXPECT_EQ(run(last_block, spec), "");
  EXPECT_EQ(run(FineTuneSpec(FreezePolicy::FULL, 1, 8), spec), "");
  // Frozen weights, but BatchNorm statistics that follow the new data.
  JobSpec bn_updates = frozen;
  bn_updates.mutable_freeze()->set_batchnorm_stats(FreezePolicy::UPDATE_ALL);
  EXPECT_EQ(run(bn_updates, spec), "");
}

// Which epoch ends write a checkpoint: time decides by default (these
// epochs take milliseconds, so none of 300 s), every epoch when asked, and
// every new best epoch under early stopping.
TEST(TrainerTest, EpochEndsCheckpointByTimeByRequestAndAtTheBest) {
  const std::string dir = testing::MakeTempDir("cadence");
  DecodedDataset data = testing::SyntheticDataset(3, 20, 5, 12, 1, 9);
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FULL, 4, 8);
  input.spec.mutable_data()->set_validation_fraction(0.25f);
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 4);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);

  auto run = [&](const std::string& name) {
    input.work_dir = testing::MakeTempDir(name);
    Recorder recorder;
    absl::StatusOr<TrainJobOutput> out =
        RunTrainingJob(input, data, recorder.Callbacks());
    EXPECT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(recorder.epochs.size(), recorder.checkpoints.size());
    return recorder;
  };

  Recorder by_time = run("cadence_time");
  ASSERT_EQ(by_time.epochs.size(), 4u);
  for (const std::string& path : by_time.checkpoints) EXPECT_EQ(path, "");

  input.spec.set_checkpoint_every_epoch(true);
  Recorder every = run("cadence_every");
  ASSERT_EQ(every.checkpoints.size(), 4u);
  for (const std::string& path : every.checkpoints) EXPECT_NE(path, "");

  input.spec.set_checkpoint_every_epoch(false);
  input.spec.mutable_early_stopping()->set_metric("val_loss");
  input.spec.mutable_early_stopping()->set_patience(10);
  Recorder best = run("cadence_best");
  ASSERT_EQ(best.epochs.size(), 4u);
  EXPECT_TRUE(best.epochs[0].best());
  for (size_t i = 0; i < best.epochs.size(); ++i) {
    EXPECT_EQ(best.checkpoints[i].empty(), !best.epochs[i].best())
        << "epoch " << i + 1;
  }
}

TEST(TrainerTest, CancelStopsWithinOneBatch) {
  const std::string dir = testing::MakeTempDir("cancel");
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FULL, 5, 4);
  input.work_dir = dir;
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 3);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  DecodedDataset data = testing::SyntheticDataset(2, 20, 2, 12, 1, 5);
  Recorder recorder;
  TrainerCallbacks callbacks = recorder.Callbacks();
  std::atomic<bool> stop{false};
  int progress_at_stop = -1;
  callbacks.on_progress = [&](const tlserve::v1::Progress& p) {
    ++recorder.progress_calls;
    EXPECT_EQ(p.batches_per_epoch(), 10);
    if (p.batch() == 3) {
      stop = true;
      progress_at_stop = recorder.progress_calls;
    }
  };
  callbacks.should_stop = [&] { return stop.load(); };
  absl::StatusOr<TrainJobOutput> out = RunTrainingJob(input, data, callbacks);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->cancelled);
  EXPECT_EQ(recorder.progress_calls, progress_at_stop);
  EXPECT_TRUE(recorder.epochs.empty());
  EXPECT_TRUE(out->artifact_path.empty());
}

TEST(TrainerTest, PretrainMakesABackboneThatFineTunes) {
  const std::string dir = testing::MakeTempDir("pretrain");
  TrainJobInput input;
  input.spec.set_kind(tlserve::v1::PRETRAIN);
  input.spec.mutable_pretrain()->set_base_width(8);
  input.spec.set_epochs(1);
  input.spec.set_batch_size(16);
  input.work_dir = dir;
  input.num_threads = 2;
  DecodedDataset data = testing::SyntheticDataset(4, 8, 2, 28, 1, 5);
  Recorder recorder;
  absl::StatusOr<TrainJobOutput> out =
      RunTrainingJob(input, data, recorder.Callbacks());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->input_spec.channels(), 1);
  EXPECT_EQ(out->input_spec.height(), 28);
  EXPECT_EQ(out->input_spec.width(), 28);
  ASSERT_EQ(out->input_spec.mean_size(), 1);
  EXPECT_GT(out->input_spec.mean(0), 0.1f);
  EXPECT_GT(out->input_spec.std(0), 0.05f);
  EXPECT_EQ(out->result.feature_dim(), 32);
  EXPECT_THAT(out->result.blocks(),
              ElementsAre("stem", "layer1", "layer2", "layer3"));

  torch::jit::Module backbone = torch::jit::load(out->artifact_path);
  backbone.eval();
  at::Tensor features =
      backbone.forward({torch::rand({5, 1, 28, 28})}).toTensor();
  EXPECT_THAT(features.sizes().vec(), ElementsAre(5, 32));

  // The backbone made here is what a later FINE_TUNE job reuses.
  TrainJobInput fine_tune;
  fine_tune.spec = FineTuneSpec(FreezePolicy::LAST_N_BLOCKS, 1, 16);
  fine_tune.spec.mutable_freeze()->set_n_blocks(2);
  fine_tune.work_dir = testing::MakeTempDir("pretrain_then_fine_tune");
  fine_tune.backbone_path = out->artifact_path;
  fine_tune.backbone_input_spec = out->input_spec;
  fine_tune.num_threads = 2;
  absl::StatusOr<TrainJobOutput> tuned =
      RunTrainingJob(fine_tune, data, recorder.Callbacks());
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  torch::jit::Module model = torch::jit::load(tuned->artifact_path);
  model.eval();
  EXPECT_THAT(
      model.forward({torch::rand({2, 1, 28, 28})}).toTensor().sizes().vec(),
      ElementsAre(2, 4));
}

TEST(TrainerTest, FineTuneOnFashionMnistSliceBeatsChance) {
  absl::StatusOr<DecodedDataset> full = testing::LoadFashionMnist();
  if (absl::IsNotFound(full.status())) {
    GTEST_SKIP() << "Fashion-MNIST is not installed: " << full.status();
  }
  ASSERT_TRUE(full.ok()) << full.status();
  DecodedDataset data;
  data.class_names = full->class_names;
  for (size_t i = 0; i < 800; ++i) {
    data.train.images.push_back(full->train.images[i]);
    data.train.labels.push_back(full->train.labels[i]);
  }
  for (size_t i = 0; i < 500; ++i) {
    data.test.images.push_back(full->test.images[i]);
    data.test.labels.push_back(full->test.labels[i]);
  }
  const std::string dir = testing::MakeTempDir("fmnist");
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FULL, 3, 32);
  input.spec.mutable_optimizer()->set_learning_rate(3e-3f);
  input.spec.mutable_data()->set_validation_fraction(0.1f);
  input.work_dir = dir;
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 3);
  tlserve::v1::InputSpec spec = testing::SimpleSpec(1, 28);
  spec.set_mean(0, 0.286f);
  spec.set_std(0, 0.353f);
  input.backbone_input_spec = spec;
  input.num_threads = 2;
  Recorder recorder;
  absl::StatusOr<TrainJobOutput> out =
      RunTrainingJob(input, data, recorder.Callbacks());
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->result.test_count(), 500);
  EXPECT_GT(out->result.test_accuracy(), 0.5f) << "chance is 0.1";
  std::cout << "Fashion-MNIST slice: test accuracy "
            << out->result.test_accuracy() << "\n";
  EXPECT_EQ(out->class_names.size(), 10u);
}

TEST(TrainerTest, AJobsInputFitIsKeptByTheModel) {
  const std::string dir = testing::MakeTempDir("fit");
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::FROZEN, 1, 16);
  input.spec.mutable_input_fit()->set_mode(
      tlserve::v1::InputFit::RESIZE_CENTER_CROP);
  input.spec.mutable_input_fit()->set_shorter_side(14);
  input.work_dir = dir;
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 3);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  input.num_threads = 2;
  DecodedDataset data = testing::SyntheticDataset(3, 10, 4, 12, 1, 5);
  TrainerCallbacks none;
  absl::StatusOr<TrainJobOutput> out = RunTrainingJob(input, data, none);
  ASSERT_TRUE(out.ok()) << out.status();
  // The model is served with the fit it trained with; the backbone's own
  // spec (stretch) is not changed.
  EXPECT_EQ(out->input_spec.fit().mode(),
            tlserve::v1::InputFit::RESIZE_CENTER_CROP);
  EXPECT_EQ(out->input_spec.fit().shorter_side(), 14);
  EXPECT_EQ(out->input_spec.height(), 12);
  EXPECT_FALSE(input.backbone_input_spec.has_fit());
}

TEST(TrainerTest, BadSpecsAndFilesAreInvalidArgument) {
  const std::string dir = testing::MakeTempDir("bad");
  DecodedDataset data = testing::SyntheticDataset(2, 4, 0, 12, 1, 5);
  TrainJobInput input;
  input.spec = FineTuneSpec(FreezePolicy::LAST_N_BLOCKS, 1, 4);
  input.spec.mutable_freeze()->set_n_blocks(9);
  input.work_dir = dir;
  input.backbone_path = testing::SaveCompactBackbone(dir, 1, 8, 3);
  input.backbone_input_spec = testing::SimpleSpec(1, 12);
  TrainerCallbacks none;
  absl::StatusOr<TrainJobOutput> out = RunTrainingJob(input, data, none);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("n_blocks 9"));

  input.spec.mutable_freeze()->set_n_blocks(1);
  input.spec.mutable_data()->add_class_subset(5);
  out = RunTrainingJob(input, data, none);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("class_subset label 5"));
  input.spec.mutable_data()->clear_class_subset();

  // A backbone that expects 3 channels cannot take the 1-channel spec.
  TrainJobInput mismatch = input;
  mismatch.backbone_path = testing::SaveCompactBackbone(dir, 3, 8, 4);
  out = RunTrainingJob(mismatch, data, none);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);

  TrainJobInput garbage = input;
  garbage.backbone_path = dir + "/garbage.pt";
  std::ofstream(garbage.backbone_path) << "not a torchscript file";
  out = RunTrainingJob(garbage, data, none);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("loading backbone"));

  // A crop larger than the fit's shorter side cannot be cut.
  TrainJobInput small_fit = input;
  small_fit.spec.mutable_input_fit()->set_mode(
      tlserve::v1::InputFit::RESIZE_CENTER_CROP);
  small_fit.spec.mutable_input_fit()->set_shorter_side(8);
  out = RunTrainingJob(small_fit, data, none);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(),
              HasSubstr("shorter_side 8 is smaller than the 12x12 crop"));

  TrainJobInput no_kind = input;
  no_kind.spec.set_kind(tlserve::v1::JOB_KIND_UNSPECIFIED);
  EXPECT_EQ(RunTrainingJob(no_kind, data, none).status().code(),
            absl::StatusCode::kInvalidArgument);

  TrainerCallbacks failing;
  failing.on_epoch_end = [](const tlserve::v1::EpochMetrics&,
                            const std::string&) {
    return absl::UnavailableError("checkpoint store is down");
  };
  out = RunTrainingJob(input, data, failing);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnavailable);
}

// Not run by default: the epoch time the report quotes. Run with
//   worker_test --gtest_also_run_disabled_tests --gtest_filter='*Timing*'
TEST(TrainerTest, DISABLED_TimingFashionMnistEpoch) {
  absl::StatusOr<DecodedDataset> data = testing::LoadFashionMnist();
  if (!data.ok()) GTEST_SKIP() << data.status();
  TrainJobInput input;
  input.spec.set_kind(tlserve::v1::PRETRAIN);
  input.spec.mutable_pretrain()->set_base_width(16);
  input.spec.set_epochs(1);
  input.spec.set_batch_size(64);
  input.spec.set_seed(1);
  input.spec.mutable_data()->set_validation_fraction(0.1f);
  input.work_dir = testing::MakeTempDir("timing");
  input.num_threads = 2;
  Recorder recorder;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<TrainJobOutput> out =
      RunTrainingJob(input, *data, recorder.Callbacks());
  ASSERT_TRUE(out.ok()) << out.status();
  for (const auto& m : recorder.epochs) {
    std::cout << "epoch " << m.epoch() << ": " << m.seconds() << " s, "
              << m.samples_per_second() << " samples/s, val acc "
              << m.val_accuracy() << "\n";
  }
  std::cout << "test accuracy " << out->result.test_accuracy() << ", total "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                             start)
                   .count()
            << " s\n";
}

}  // namespace
}  // namespace tlserve::worker
