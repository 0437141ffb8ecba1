#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "client/tlctl_commands.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<FlagDef> Defs() {
  return {{"name"}, {"epochs"}, {"json", false}, {"image", true, true}};
}

TEST(ParseArgsTest, AcceptsEqualsAndSpaceFormsSwitchesAndPositionals) {
  auto args =
      ParseArgs({"get", "--name=a", "--epochs", "3", "--json", "x"}, Defs());
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(args->positional(), ElementsAre("get", "x"));
  EXPECT_EQ(args->Get("name"), "a");
  EXPECT_EQ(*args->GetInt("epochs", 0), 3);
  EXPECT_TRUE(*args->GetBool("json"));
  EXPECT_FALSE(args->Has("image"));
  EXPECT_EQ(*args->GetInt("missing-is-fallback", 7), 7);
}

TEST(ParseArgsTest, RejectsUnknownFlagNamingIt) {
  auto args = ParseArgs({"--nmae", "x"}, Defs());
  ASSERT_FALSE(args.ok());
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(args.status().message()), HasSubstr("--nmae"));
}

TEST(ParseArgsTest, RejectsMissingValueAndRepeats) {
  auto missing = ParseArgs({"--name"}, Defs());
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("--name: needs a value"));
  auto twice = ParseArgs({"--name=a", "--name=b"}, Defs());
  ASSERT_FALSE(twice.ok());
  EXPECT_THAT(std::string(twice.status().message()),
              HasSubstr("more than once"));
}

TEST(ParseArgsTest, RepeatedFlagsKeepEveryValueInOrder) {
  auto args = ParseArgs({"--image", "a.png", "--image=b.png"}, Defs());
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(args->GetAll("image"), ElementsAre("a.png", "b.png"));
}

TEST(ParseArgsTest, DoubleDashEndsFlags) {
  auto args = ParseArgs({"--", "--name"}, Defs());
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(args->positional(), ElementsAre("--name"));
}

TEST(ParseArgsTest, BadNumbersNameTheFlag) {
  auto args = ParseArgs({"--epochs=3x"}, Defs());
  ASSERT_TRUE(args.ok());
  auto epochs = args->GetInt("epochs", 0);
  ASSERT_FALSE(epochs.ok());
  EXPECT_THAT(std::string(epochs.status().message()),
              HasSubstr("--epochs: '3x' is not an integer"));
  EXPECT_FALSE(ParseDoubleFlag("lr", "abc").ok());
  EXPECT_FALSE(ParseDoubleFlag("lr", "nan").ok());
  EXPECT_DOUBLE_EQ(*ParseDoubleFlag("lr", "1e-3"), 1e-3);
}

absl::StatusOr<v1::JobSpec> SpecFrom(std::vector<std::string> argv) {
  auto args = ParseArgs(argv, JobCreateFlags());
  if (!args.ok()) return args.status();
  return JobSpecFromArgs(*args);
}

TEST(JobSpecFromArgsTest, LastNBlocksWithBlocksYieldsFreezePolicy) {
  auto spec = SpecFrom({"--freeze", "last_n_blocks", "--blocks", "1",
                        "--backbone-lr-scale", "0.1"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->freeze().mode(), v1::FreezePolicy::LAST_N_BLOCKS);
  EXPECT_EQ(spec->freeze().n_blocks(), 1);
  EXPECT_FLOAT_EQ(spec->freeze().backbone_lr_scale(), 0.1f);
  EXPECT_EQ(spec->kind(), v1::FINE_TUNE);  // the default kind
}

TEST(JobSpecFromArgsTest, MultitaskTasksFromGroupsOfLabels) {
  auto spec = SpecFrom({"--kind", "multitask", "--task",
                        "coarse=tops:0,2,3,4,6/footwear:5,7,9/other:1,8",
                        "--task", "parity=even:0,2/odd:1,3",
                        "--task-weight", "coarse=0.5", "--classes-weight", "2"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->kind(), v1::MULTITASK);
  ASSERT_EQ(spec->multitask().tasks_size(), 2);
  const v1::TaskSpec& coarse = spec->multitask().tasks(0);
  EXPECT_EQ(coarse.name(), "coarse");
  EXPECT_THAT(coarse.class_names(), ElementsAre("tops", "footwear", "other"));
  EXPECT_THAT(coarse.label_map(), ElementsAre(0, 2, 0, 0, 0, 1, 0, 1, 2, 1));
  EXPECT_FLOAT_EQ(coarse.loss_weight(), 0.5f);
  EXPECT_THAT(spec->multitask().tasks(1).label_map(), ElementsAre(0, 1, 0, 1));
  EXPECT_FLOAT_EQ(spec->multitask().tasks(1).loss_weight(), 0.0f);
  EXPECT_FLOAT_EQ(spec->multitask().classes_loss_weight(), 2.0f);
}

TEST(JobSpecFromArgsTest, BadTaskFlagsSayWhatIsWrong) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"coarse", "no NAME="},
      {"coarse=tops:0,1", "a task needs 2 or more groups"},
      {"coarse=tops:0,1/rest:1,2", "label 1 is in two groups"},
      {"coarse=tops:0/rest:2", "label 1 is in no group"},
      {"coarse=tops:0/rest", "group 'rest' is not GROUP:LABELS"},
      {"coarse=tops:0/rest:x", "--task"},
  };
  for (const auto& [text, message] : cases) {
    SCOPED_TRACE(text);
    auto spec = SpecFrom({"--kind", "multitask", "--task", text});
    ASSERT_FALSE(spec.ok());
    EXPECT_THAT(std::string(spec.status().message()), HasSubstr(message));
  }
  auto unknown = SpecFrom({"--task", "a=x:0/y:1", "--task-weight", "b=2"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(std::string(unknown.status().message()),
              HasSubstr("no --task named 'b'"));
}

TEST(JobSpecFromArgsTest, LastNBlocksWithoutBlocksIsAnError) {
  auto spec = SpecFrom({"--freeze=last_n_blocks"});
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("--blocks"));
}

TEST(JobSpecFromArgsTest, BlocksWithoutLastNBlocksIsAnError) {
  auto spec = SpecFrom({"--freeze=frozen", "--blocks=2"});
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("--blocks"));
}

TEST(JobSpecFromArgsTest, BuildsAFullFineTuneSpec) {
  auto spec = SpecFrom({"--dataset",
                        "ds1",
                        "--backbone",
                        "bb1",
                        "--classes",
                        "2,3,4",
                        "--samples-per-class",
                        "10",
                        "--val-fraction",
                        "0.2",
                        "--init",
                        "random",
                        "--freeze",
                        "FULL",
                        "--optimizer",
                        "adamw",
                        "--lr",
                        "0.001",
                        "--epochs",
                        "30",
                        "--batch-size",
                        "16",
                        "--seed",
                        "3",
                        "--hidden",
                        "128,64",
                        "--dropout",
                        "0.1",
                        "--schedule",
                        "cosine",
                        "--warmup-epochs",
                        "2",
                        "--priority",
                        "-1",
                        "--max-attempts",
                        "3",
                        "--device",
                        "cuda"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->data().dataset_id(), "ds1");
  EXPECT_THAT(spec->data().class_subset(), ElementsAre(2, 3, 4));
  EXPECT_EQ(spec->data().samples_per_class(), 10);
  EXPECT_FLOAT_EQ(spec->data().validation_fraction(), 0.2f);
  EXPECT_EQ(spec->backbone_id(), "bb1");
  EXPECT_EQ(spec->backbone_init(), v1::RANDOM);
  EXPECT_EQ(spec->freeze().mode(), v1::FreezePolicy::FULL);
  EXPECT_EQ(spec->optimizer().kind(), v1::OptimizerSpec::ADAMW);
  EXPECT_FLOAT_EQ(spec->optimizer().learning_rate(), 0.001f);
  EXPECT_EQ(spec->epochs(), 30);
  EXPECT_EQ(spec->batch_size(), 16);
  EXPECT_EQ(spec->seed(), 3u);
  EXPECT_THAT(spec->head().hidden_sizes(), ElementsAre(128, 64));
  EXPECT_FLOAT_EQ(spec->head().dropout(), 0.1f);
  EXPECT_EQ(spec->schedule().kind(), v1::ScheduleSpec::COSINE);
  EXPECT_EQ(spec->schedule().warmup_epochs(), 2);
  EXPECT_EQ(spec->priority(), -1);
  EXPECT_EQ(spec->max_attempts(), 3);
  EXPECT_EQ(spec->device(), "cuda");
}

TEST(JobSpecFromArgsTest, GpuFlagsSetPrecisionAndPasses) {
  auto spec = SpecFrom({"--batch-size=256", "--micro-batch-size=64",
                        "--shrink-on-oom", "--precision=bf16"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->micro_batch_size(), 64);
  EXPECT_TRUE(spec->shrink_micro_batch_on_oom());
  EXPECT_EQ(spec->precision(), v1::PRECISION_BF16);

  auto plain = SpecFrom({"--batch-size=16"});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->micro_batch_size(), 0);
  EXPECT_FALSE(plain->shrink_micro_batch_on_oom());
  EXPECT_EQ(plain->precision(), v1::PRECISION_UNSPECIFIED);

  auto fp16 = SpecFrom({"--precision=fp16"});
  ASSERT_FALSE(fp16.ok());
  EXPECT_THAT(std::string(fp16.status().message()), HasSubstr("--precision"));
  auto negative = SpecFrom({"--micro-batch-size=-1"});
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(std::string(negative.status().message()),
              HasSubstr("--micro-batch-size"));
}

TEST(JobSpecFromArgsTest, RecipeFlagsFillTheRecipe) {
  auto spec = SpecFrom({"--freeze=full", "--unfreeze=1:0,3:1,5:2",
                        "--train-params=layer4.*,*.bias",
                        "--freeze-params=*.bn*", "--bn-stats=frozen",
                        "--layer-decay=0.5", "--label-smoothing=0.1",
                        "--grad-clip=1", "--early-stop=3",
                        "--early-stop-metric=val_loss", "--schedule=step",
                        "--step-epochs=2", "--step-gamma=0.5",
                        "--feature-cache=off", "--augment=crop,flip",
                        "--crop-scale-min=0.25", "--loader-threads=3",
                        "--checkpoint-every=60", "--checkpoint-every-epoch"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  const v1::FreezePolicy& f = spec->freeze();
  ASSERT_EQ(f.gradual_unfreeze_size(), 3);
  EXPECT_EQ(f.gradual_unfreeze(1).epoch(), 3);
  EXPECT_EQ(f.gradual_unfreeze(2).n_blocks(), 2);
  EXPECT_THAT(f.trainable_patterns(), ElementsAre("layer4.*", "*.bias"));
  EXPECT_THAT(f.frozen_patterns(), ElementsAre("*.bn*"));
  EXPECT_EQ(f.batchnorm_stats(), v1::FreezePolicy::FROZEN_ALL);
  EXPECT_FLOAT_EQ(f.layer_decay(), 0.5f);
  EXPECT_FLOAT_EQ(spec->label_smoothing(), 0.1f);
  EXPECT_FLOAT_EQ(spec->grad_clip_norm(), 1.0f);
  EXPECT_EQ(spec->early_stopping().patience(), 3);
  EXPECT_EQ(spec->early_stopping().metric(), "val_loss");
  EXPECT_EQ(spec->schedule().kind(), v1::ScheduleSpec::STEP);
  EXPECT_EQ(spec->schedule().step_epochs(), 2);
  EXPECT_EQ(spec->feature_cache().mode(), v1::FeatureCacheSpec::OFF);
  EXPECT_TRUE(spec->augment().random_resized_crop());
  EXPECT_TRUE(spec->augment().horizontal_flip());
  EXPECT_FLOAT_EQ(spec->augment().crop_scale_min(), 0.25f);
  EXPECT_EQ(spec->loader_threads(), 3);
  EXPECT_FLOAT_EQ(spec->checkpoint_every_seconds(), 60.0f);
  EXPECT_TRUE(spec->checkpoint_every_epoch());

  auto bad = SpecFrom({"--unfreeze=3"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("'3' is not EPOCH:BLOCKS"));
  bad = SpecFrom({"--bn-stats=sometimes"});
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("--bn-stats"));
}

TEST(JobSpecFromArgsTest, InputFitFlags) {
  auto spec = SpecFrom({"--input-fit=center-crop"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->input_fit().mode(), v1::InputFit::RESIZE_CENTER_CROP);
  EXPECT_EQ(spec->input_fit().shorter_side(), 0);
  // A shorter side alone means resize and crop.
  spec = SpecFrom({"--resize-shorter-side=256"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->input_fit().mode(), v1::InputFit::RESIZE_CENTER_CROP);
  EXPECT_EQ(spec->input_fit().shorter_side(), 256);
  spec = SpecFrom({"--input-fit=stretch"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->input_fit().mode(), v1::InputFit::STRETCH);
  auto bad = SpecFrom({"--input-fit=letterbox"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("--input-fit"));
  bad = SpecFrom({"--resize-shorter-side=0"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("--resize-shorter-side"));
}

TEST(JobSpecFromArgsTest, PretrainTakesBackboneName) {
  auto spec = SpecFrom({"--kind=pretrain", "--backbone-name=src"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->kind(), v1::PRETRAIN);
  EXPECT_EQ(spec->pretrain().backbone_name(), "src");
}

TEST(JobSpecFromArgsTest, RejectsBadValuesNamingTheFlag) {
  struct Case {
    std::vector<std::string> argv;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {{"--epochs", "ten"}, "--epochs: 'ten' is not an integer"},
           {{"--epochs", "0"}, "--epochs: 0 is out of range"},
           {{"--lr", "fast"}, "--lr: 'fast' is not a number"},
           {{"--val-fraction", "1"}, "--val-fraction"},
           {{"--freeze", "some"}, "not one of frozen, last_n_blocks, full"},
           {{"--optimizer", "adam"}, "--optimizer"},
           {{"--classes", "2,x"}, "--classes: 'x' is not an integer"},
           {{"--hidden", "0"}, "--hidden"},
           {{"--device", "tpu"}, "--device"},
           {{"--bogus", "1"}, "unknown flag --bogus"}}) {
    auto spec = SpecFrom(c.argv);
    ASSERT_FALSE(spec.ok()) << c.argv[0];
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(spec.status().message()), HasSubstr(c.expected));
  }
}

TEST(JobSpecFromArgsTest, FlagsOverrideSpecJson) {
  std::string path = ::testing::TempDir() + "/spec.json";
  {
    std::ofstream f(path);
    f << R"({"kind": "PRETRAIN", "epochs": 5, "batchSize": 64,
             "data": {"datasetId": "d", "classSubset": [0, 1]}})";
  }
  auto spec = SpecFrom({"--spec-json", path, "--epochs", "7"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->kind(), v1::PRETRAIN);
  EXPECT_EQ(spec->epochs(), 7);
  EXPECT_EQ(spec->batch_size(), 64);
  EXPECT_THAT(spec->data().class_subset(), ElementsAre(0, 1));
  std::remove(path.c_str());
}

TEST(InputSpecFromArgsTest, BuildsAndChecksPerChannelValues) {
  std::vector<FlagDef> defs = {{"channels"}, {"height"}, {"width"},
                               {"mean"},     {"std"},    {"spec-json"}};
  auto args = ParseArgs({"--channels=3", "--height=224", "--width=224",
                         "--mean=0.485,0.456,0.406", "--std=0.229,0.224,0.225"},
                        defs);
  ASSERT_TRUE(args.ok());
  auto spec = InputSpecFromArgs(*args);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->channels(), 3);
  EXPECT_EQ(spec->mean_size(), 3);
  EXPECT_FLOAT_EQ(spec->std(2), 0.225f);

  auto short_mean = ParseArgs(
      {"--channels=3", "--height=2", "--width=2", "--mean=0.5", "--std=1,1,1"},
      defs);
  ASSERT_TRUE(short_mean.ok());
  EXPECT_FALSE(InputSpecFromArgs(*short_mean).ok());
}

TEST(ParseJobStateTest, IsCaseInsensitive) {
  EXPECT_EQ(*ParseJobState("RUNNING"), v1::RUNNING);
  EXPECT_EQ(*ParseJobState("succeeded"), v1::SUCCEEDED);
  EXPECT_FALSE(ParseJobState("done").ok());
}

TEST(FormatTableTest, AlignsColumns) {
  EXPECT_EQ(FormatTable({"ID", "NAME"}, {{"a", "x"}, {"long", "y"}}),
            "ID    NAME\n"
            "a     x\n"
            "long  y\n");
}

int RunCli(std::vector<std::string> argv, std::string* out, std::string* err) {
  std::ostringstream o;
  std::ostringstream e;
  RunOptions options;
  // Nothing listens here; every case below fails before connecting.
  options.default_server = "127.0.0.1:1";
  int code = RunTlctl(argv, options, o, e);
  *out = o.str();
  *err = e.str();
  return code;
}

TEST(RunTlctlTest, UsageErrorsExitOneWithCodeAndMessage) {
  std::string out;
  std::string err;
  EXPECT_EQ(RunCli({"frobnicate"}, &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("error: INVALID_ARGUMENT: unknown command"));

  EXPECT_EQ(RunCli({"job", "create", "--epochz=3"}, &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("unknown flag --epochz"));

  EXPECT_EQ(RunCli({"job", "get"}, &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("expected 1 argument(s), got 0"));

  EXPECT_EQ(RunCli({"job", "create", "--freeze=last_n_blocks"}, &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("error: INVALID_ARGUMENT: --freeze"));

  EXPECT_EQ(RunCli({"dataset", "upload", "--name=x"}, &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("--idx-train-images"));

  EXPECT_EQ(RunCli({}, &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("usage: tlctl"));
}

TEST(RunTlctlTest, HelpExitsZero) {
  std::string out;
  std::string err;
  EXPECT_EQ(RunCli({"--help"}, &out, &err), 0);
  EXPECT_THAT(out, HasSubstr("job watch ID"));
  EXPECT_EQ(RunCli({"--server=x:1", "job", "create", "--help"}, &out, &err), 0);
  EXPECT_THAT(out, HasSubstr("--freeze"));
}

}  // namespace
}  // namespace tlserve::cli
