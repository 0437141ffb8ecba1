#include "client/demo.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/job_progress.h"
#include "client/tlctl_commands.h"
#include "common/dataset_loader.h"
#include "common/file_util.h"
#include "common/image.h"
#include "common/proto_time.h"
#include "common/status_macros.h"

namespace tlserve::cli {
namespace {

constexpr char kPretrainBackboneName[] = "fmnist-source-resnet";

// Shared by all three arms so that only the freeze policy and the
// initialisation differ between them.
void SetCommonFineTune(const DemoOptions& options,
                       const std::string& dataset_id,
                       const std::string& backbone_id, uint64_t seed,
                       v1::JobSpec* spec) {
  spec->set_kind(v1::FINE_TUNE);
  v1::DataSpec* data = spec->mutable_data();
  data->set_dataset_id(dataset_id);
  for (int32_t c : DemoTargetClasses()) data->add_class_subset(c);
  data->set_samples_per_class(options.shots);
  // 20% of 10 shots is 2 images per class: enough to watch for divergence,
  // while 8 per class still train. Test accuracy (all 5000 test images of
  // the target classes) is the number reported, not validation.
  data->set_validation_fraction(0.2f);
  data->set_max_test_samples(0);
  spec->set_backbone_id(backbone_id);
  // A linear head: with 40 training images a hidden layer only adds
  // parameters to overfit.
  spec->mutable_head()->set_dropout(0.0f);
  spec->mutable_optimizer()->set_kind(v1::OptimizerSpec::ADAMW);
  spec->mutable_optimizer()->set_weight_decay(1e-4f);
  spec->mutable_schedule()->set_kind(v1::ScheduleSpec::COSINE);
  spec->mutable_schedule()->set_warmup_epochs(0);
  spec->set_epochs(options.epochs);
  spec->set_batch_size(16);
  spec->set_seed(seed);
  spec->set_max_attempts(3);
  if (!options.device.empty()) spec->set_device(options.device);
}

double JobSeconds(const v1::Job& job) {
  if (job.start_time().seconds() > 0 && job.end_time().seconds() > 0) {
    return absl::ToDoubleSeconds(FromProtoTime(job.end_time()) -
                                 FromProtoTime(job.start_time()));
  }
  return job.result().train_seconds();
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppend(&out, absl::StrFormat("\\u%04x", c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string JsonNumber(double v) {
  // JSON has no NaN or infinity.
  if (!std::isfinite(v)) return "null";
  return absl::StrFormat("%.6g", v);
}

std::string RandomRunId() {
  // Distinct per invocation, so a re-run trains again, while a CreateJob
  // retry within this run stays idempotent.
  return absl::StrFormat("%x", absl::ToUnixNanos(absl::Now()));
}

// The first test image of a target class, as PNG, with its label.
struct TestImage {
  std::string png;
  int32_t label = 0;
  int64_t index = 0;
};

absl::StatusOr<TestImage> LoadTestImage(const std::string& data_dir) {
  ASSIGN_OR_RETURN(std::string image_bytes,
                   ReadFile(data_dir + "/t10k-images-idx3-ubyte.gz"));
  ASSIGN_OR_RETURN(std::string label_bytes,
                   ReadFile(data_dir + "/t10k-labels-idx1-ubyte.gz"));
  ASSIGN_OR_RETURN(IdxArray images, ParseIdx(image_bytes));
  ASSIGN_OR_RETURN(IdxArray labels, ParseIdx(label_bytes));
  if (images.dims.size() != 3 || labels.dims.size() != 1 ||
      images.dims[0] != labels.dims[0]) {
    return absl::InvalidArgumentError(
        "t10k images/labels are not [N,H,W] and [N] of the same N");
  }
  const int height = images.dims[1];
  const int width = images.dims[2];
  const auto& targets = DemoTargetClasses();
  for (int64_t i = 0; i < labels.dims[0]; ++i) {
    int32_t label = labels.data[i];
    if (std::find(targets.begin(), targets.end(), label) == targets.end()) {
      continue;
    }
    Image image;
    image.height = height;
    image.width = width;
    image.channels = 1;
    auto begin = images.data.begin() + i * height * width;
    image.pixels.assign(begin, begin + height * width);
    TestImage out;
    ASSIGN_OR_RETURN(out.png, EncodePng(image));
    out.label = label;
    out.index = i;
    return out;
  }
  return absl::NotFoundError("no test image of a target class");
}

}  // namespace

const std::vector<std::string>& FashionMnistClassNames() {
  static const auto* names = new std::vector<std::string>{
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return *names;
}

const std::vector<int32_t>& DemoSourceClasses() {
  static const auto* classes = new std::vector<int32_t>{0, 1, 5, 8, 9};
  return *classes;
}

const std::vector<int32_t>& DemoTargetClasses() {
  static const auto* classes = new std::vector<int32_t>{2, 3, 4, 6, 7};
  return *classes;
}

const std::vector<std::string>& DemoArmNames() {
  static const auto* names =
      new std::vector<std::string>{"frozen", "last_block", "scratch"};
  return *names;
}

v1::JobSpec DemoPretrainSpec(const DemoOptions& options,
                             const std::string& dataset_id) {
  v1::JobSpec spec;
  spec.set_kind(v1::PRETRAIN);
  spec.set_display_name("demo-pretrain");
  v1::DataSpec* data = spec.mutable_data();
  data->set_dataset_id(dataset_id);
  for (int32_t c : DemoSourceClasses()) data->add_class_subset(c);
  data->set_samples_per_class(options.pretrain_samples);
  data->set_validation_fraction(0.1f);
  spec.mutable_optimizer()->set_kind(v1::OptimizerSpec::ADAMW);
  spec.mutable_optimizer()->set_learning_rate(2e-3f);
  spec.mutable_optimizer()->set_weight_decay(1e-4f);
  spec.mutable_schedule()->set_kind(v1::ScheduleSpec::COSINE);
  spec.set_epochs(options.pretrain_epochs);
  spec.set_batch_size(64);
  spec.set_seed(1);
  spec.set_max_attempts(3);
  spec.mutable_pretrain()->set_backbone_name(kPretrainBackboneName);
  if (!options.device.empty()) spec.set_device(options.device);
  return spec;
}

absl::StatusOr<v1::JobSpec> DemoArmSpec(const std::string& arm,
                                        const DemoOptions& options,
                                        const std::string& dataset_id,
                                        const std::string& backbone_id,
                                        uint64_t seed) {
  v1::JobSpec spec;
  SetCommonFineTune(options, dataset_id, backbone_id, seed, &spec);
  spec.set_display_name(absl::StrCat("demo-", arm, "-seed", seed));
  v1::FreezePolicy* freeze = spec.mutable_freeze();
  if (arm == "frozen") {
    // A linear probe on fixed features: a high rate is safe and needed to
    // converge in 30 epochs of 3 batches.
    spec.set_backbone_init(v1::PRETRAINED);
    freeze->set_mode(v1::FreezePolicy::FROZEN);
    spec.mutable_optimizer()->set_learning_rate(1e-2f);
  } else if (arm == "last_block") {
    // The head at the probe's rate, the last block ten times slower so the
    // few labels adapt the features without wiping them out.
    spec.set_backbone_init(v1::PRETRAINED);
    freeze->set_mode(v1::FreezePolicy::LAST_N_BLOCKS);
    freeze->set_n_blocks(1);
    freeze->set_backbone_lr_scale(0.1f);
    spec.mutable_optimizer()->set_learning_rate(1e-2f);
  } else if (arm == "scratch") {
    // The same architecture with random weights, everything training, at
    // AdamW's usual from-scratch rate (1e-2 makes a random ResNet diverge
    // on 40 images).
    spec.set_backbone_init(v1::RANDOM);
    freeze->set_mode(v1::FreezePolicy::FULL);
    spec.mutable_optimizer()->set_learning_rate(1e-3f);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown demo arm '", arm,
                     "' (known: ", absl::StrJoin(DemoArmNames(), ", "), ")"));
  }
  return spec;
}

MeanStd ComputeMeanStd(const std::vector<double>& values) {
  MeanStd out;
  if (values.empty()) return out;
  double sum = 0;
  for (double v : values) sum += v;
  out.mean = sum / static_cast<double>(values.size());
  if (values.size() < 2) return out;
  double squares = 0;
  for (double v : values) squares += (v - out.mean) * (v - out.mean);
  out.std = std::sqrt(squares / static_cast<double>(values.size() - 1));
  return out;
}

ArmSummary SummarizeArm(std::string name, std::vector<SeedRun> runs) {
  ArmSummary arm;
  arm.name = std::move(name);
  std::vector<double> accuracies;
  std::vector<double> seconds;
  for (const SeedRun& run : runs) {
    accuracies.push_back(run.test_accuracy);
    seconds.push_back(run.seconds);
  }
  MeanStd acc = ComputeMeanStd(accuracies);
  arm.test_accuracy_mean = acc.mean;
  arm.test_accuracy_std = acc.std;
  arm.seconds_mean = ComputeMeanStd(seconds).mean;
  arm.runs = std::move(runs);
  return arm;
}

const ArmSummary* BestTransferArm(const DemoSummary& summary) {
  const ArmSummary* best = nullptr;
  for (const ArmSummary& arm : summary.arms) {
    if (arm.name == "scratch") continue;
    if (best == nullptr || arm.test_accuracy_mean > best->test_accuracy_mean) {
      best = &arm;
    }
  }
  return best;
}

std::string DemoSummaryToJson(const DemoSummary& summary) {
  const ArmSummary* transfer = BestTransferArm(summary);
  const ArmSummary* scratch = nullptr;
  for (const ArmSummary& arm : summary.arms) {
    if (arm.name == "scratch") scratch = &arm;
  }
  std::string j = "{\n";
  if (transfer != nullptr) {
    absl::StrAppend(&j, "  \"transfer\": {\"test_accuracy\": ",
                    JsonNumber(transfer->test_accuracy_mean),
                    ", \"seconds\": ", JsonNumber(transfer->seconds_mean),
                    ", \"arm\": ", JsonString(transfer->name), "},\n");
  }
  if (scratch != nullptr) {
    absl::StrAppend(&j, "  \"scratch\": {\"test_accuracy\": ",
                    JsonNumber(scratch->test_accuracy_mean),
                    ", \"seconds\": ", JsonNumber(scratch->seconds_mean),
                    "},\n");
  }
  absl::StrAppend(&j, "  \"arms\": [");
  for (size_t a = 0; a < summary.arms.size(); ++a) {
    const ArmSummary& arm = summary.arms[a];
    absl::StrAppend(
        &j, a == 0 ? "\n" : ",\n", "    {\"name\": ", JsonString(arm.name),
        ", \"test_accuracy_mean\": ", JsonNumber(arm.test_accuracy_mean),
        ", \"test_accuracy_std\": ", JsonNumber(arm.test_accuracy_std),
        ", \"seconds_mean\": ", JsonNumber(arm.seconds_mean),
        ", \"per_seed\": [");
    for (size_t r = 0; r < arm.runs.size(); ++r) {
      const SeedRun& run = arm.runs[r];
      absl::StrAppend(&j, r == 0 ? "\n" : ",\n", "      {\"seed\": ", run.seed,
                      ", \"job_id\": ", JsonString(run.job_id),
                      ", \"test_accuracy\": ", JsonNumber(run.test_accuracy),
                      ", \"seconds\": ", JsonNumber(run.seconds), "}");
    }
    absl::StrAppend(&j, arm.runs.empty() ? "]}" : "\n    ]}");
  }
  absl::StrAppend(&j, summary.arms.empty() ? "],\n" : "\n  ],\n");
  absl::StrAppend(&j, "  \"shots\": ", summary.shots, ",\n");
  absl::StrAppend(
      &j, "  \"pretrain\": {\"job_id\": ", JsonString(summary.pretrain_job_id),
      ", \"backbone_id\": ", JsonString(summary.backbone_id),
      ", \"seconds\": ", JsonNumber(summary.pretrain_seconds), "}\n}\n");
  return j;
}

std::string FormatDemoTable(const DemoSummary& summary) {
  std::vector<std::vector<std::string>> rows;
  for (const ArmSummary& arm : summary.arms) {
    rows.push_back({arm.name,
                    absl::StrFormat("%.4f ± %.4f", arm.test_accuracy_mean,
                                    arm.test_accuracy_std),
                    absl::StrFormat("%.1f", arm.seconds_mean),
                    absl::StrCat(arm.runs.size())});
  }
  return FormatTable(
      {"ARM", "TEST_ACC (mean ± std)", "SECONDS (mean)", "SEEDS"}, rows);
}

absl::StatusOr<int> RunDemo(Client& client, const DemoOptions& options,
                            std::ostream& out) {
  const std::string run_id = RandomRunId();
  const std::vector<std::string>& names = FashionMnistClassNames();

  // (a) The dataset. The request id is stable across runs, so a re-run
  // reuses the first upload instead of storing Fashion-MNIST again.
  out << "== uploading Fashion-MNIST from " << options.data_dir << "\n";
  const std::string& dir = options.data_dir;
  ASSIGN_OR_RETURN(v1::Dataset dataset,
                   client.UploadDatasetFiles(
                       "fashion-mnist", v1::IDX,
                       {{v1::TRAIN_IMAGES, dir + "/train-images-idx3-ubyte.gz"},
                        {v1::TRAIN_LABELS, dir + "/train-labels-idx1-ubyte.gz"},
                        {v1::TEST_IMAGES, dir + "/t10k-images-idx3-ubyte.gz"},
                        {v1::TEST_LABELS, dir + "/t10k-labels-idx1-ubyte.gz"}},
                       names, absl::StrCat("demo-fashion-mnist:", dir)));
  out << "dataset " << dataset.id() << ": " << dataset.train_count()
      << " train, " << dataset.test_count() << " test images\n";

  // (b) Pretrain the source model on the other five classes.
  out << "\n== pretraining on source classes {"
      << absl::StrJoin(DemoSourceClasses(), ",") << "}, "
      << options.pretrain_samples << " images/class, "
      << options.pretrain_epochs << " epochs\n";
  ASSIGN_OR_RETURN(
      v1::Job pretrain,
      client.CreateJob(DemoPretrainSpec(options, dataset.id()),
                       absl::StrCat("demo-", run_id, "-pretrain")));
  out << "job " << pretrain.id() << "\n";
  JobProgressPrinter printer(out, options.tty);
  ASSIGN_OR_RETURN(
      pretrain, client.WatchJob(
                    pretrain.id(), 0,
                    [&](const v1::JobEvent& e) { return printer.OnEvent(e); },
                    absl::Now() + options.job_timeout));
  printer.Finish();
  if (pretrain.state() != v1::SUCCEEDED) {
    out << "pretrain job " << pretrain.id() << " "
        << JobStateName(pretrain.state()) << ": " << pretrain.error() << "\n";
    return 2;
  }
  const std::string backbone_id = pretrain.result().backbone_id();
  if (backbone_id.empty()) {
    return absl::InternalError(absl::StrCat(
        "pretrain job ", pretrain.id(), " succeeded but names no backbone"));
  }
  DemoSummary summary;
  summary.shots = options.shots;
  summary.pretrain_job_id = pretrain.id();
  summary.backbone_id = backbone_id;
  summary.pretrain_seconds = JobSeconds(pretrain);
  out << absl::StrFormat("backbone %s: source test accuracy %.4f, %.1f s\n",
                         backbone_id, pretrain.result().test_accuracy(),
                         summary.pretrain_seconds);

  // (c) Every arm × seed at once: the server queues them and runs them as
  // workers free up, so waiting in order costs no wall time.
  out << "\n== fine-tuning on target classes {"
      << absl::StrJoin(DemoTargetClasses(), ",") << "} with " << options.shots
      << " images/class: " << DemoArmNames().size() << " arms x "
      << options.seeds.size() << " seeds\n";
  struct Submitted {
    std::string arm;
    uint64_t seed;
    std::string job_id;
  };
  std::vector<Submitted> submitted;
  for (const std::string& arm : DemoArmNames()) {
    for (uint64_t seed : options.seeds) {
      ASSIGN_OR_RETURN(v1::JobSpec spec, DemoArmSpec(arm, options, dataset.id(),
                                                     backbone_id, seed));
      ASSIGN_OR_RETURN(v1::Job job,
                       client.CreateJob(spec, absl::StrCat("demo-", run_id, "-",
                                                           arm, "-", seed)));
      submitted.push_back({arm, seed, job.id()});
    }
  }
  std::vector<std::vector<SeedRun>> runs(DemoArmNames().size());
  int failed = 0;
  for (const Submitted& s : submitted) {
    ASSIGN_OR_RETURN(v1::Job job,
                     client.WaitForJob(s.job_id, options.job_timeout));
    if (job.state() != v1::SUCCEEDED) {
      ++failed;
      out << absl::StrFormat("%-10s seed %d  job %s  %s: %s\n", s.arm, s.seed,
                             job.id(), JobStateName(job.state()), job.error());
      continue;
    }
    SeedRun run{s.seed, job.id(), job.result().test_accuracy(),
                JobSeconds(job)};
    out << absl::StrFormat(
        "%-10s seed %d  job %s  test accuracy %.4f  %.1f s\n", s.arm, s.seed,
        job.id(), run.test_accuracy, run.seconds);
    size_t arm_index =
        std::find(DemoArmNames().begin(), DemoArmNames().end(), s.arm) -
        DemoArmNames().begin();
    runs[arm_index].push_back(std::move(run));
  }

  // (d) The table and the summary file.
  for (size_t a = 0; a < runs.size(); ++a) {
    summary.arms.push_back(SummarizeArm(DemoArmNames()[a], std::move(runs[a])));
  }
  out << "\n" << FormatDemoTable(summary);
  if (failed > 0) {
    // A summary with holes would read as a result; leave none.
    out << failed << " job(s) did not succeed; " << options.summary_path
        << " not written\n";
    return 2;
  }
  const ArmSummary* transfer = BestTransferArm(summary);
  const ArmSummary& scratch = summary.arms.back();
  out << absl::StrFormat(
      "\ntransfer (%s): %.4f vs scratch: %.4f  (%+.1f points) with %d "
      "labelled images per class\n",
      transfer->name, transfer->test_accuracy_mean, scratch.test_accuracy_mean,
      100 * (transfer->test_accuracy_mean - scratch.test_accuracy_mean),
      options.shots);
  size_t slash = options.summary_path.find_last_of('/');
  if (slash != std::string::npos && slash > 0) {
    RETURN_IF_ERROR(MakeDirs(options.summary_path.substr(0, slash)));
  }
  RETURN_IF_ERROR(
      WriteFileAtomic(options.summary_path, DemoSummaryToJson(summary)));
  out << "wrote " << options.summary_path << "\n";

  // (e) One prediction from the best model on a real test image.
  const SeedRun* best = &transfer->runs.front();
  for (const SeedRun& run : transfer->runs) {
    if (run.test_accuracy > best->test_accuracy) best = &run;
  }
  ASSIGN_OR_RETURN(v1::Job best_job, client.GetJob(best->job_id));
  const std::string& model_id = best_job.result().model_id();
  ASSIGN_OR_RETURN(TestImage image, LoadTestImage(options.data_dir));
  v1::PredictRequest request;
  request.set_model_id(model_id);
  request.add_images(image.png);
  request.set_top_k(3);
  // Generous: the first request may make a worker load the model.
  ASSIGN_OR_RETURN(v1::PredictResponse response,
                   client.Predict(request, absl::Seconds(120)));
  out << "\n== predict: model " << model_id << " (" << transfer->name
      << ", seed " << best->seed << "), test image #" << image.index
      << ", true class " << names[image.label] << "\n";
  if (response.predictions_size() > 0) {
    std::vector<std::vector<std::string>> rows;
    int rank = 1;
    for (const v1::ClassScore& c : response.predictions(0).top()) {
      rows.push_back({absl::StrCat(rank++), c.label(),
                      absl::StrFormat("%.4f", c.probability())});
    }
    out << FormatTable({"RANK", "CLASS", "PROBABILITY"}, rows);
  }
  return 0;
}

}  // namespace tlserve::cli
