// The whole loop through real processes on loopback: upload, fine-tune,
// watch, cancel, worker and server crashes, inference, export, bad input.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <thread>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/image.h"
#include "common/input_fit.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"
#include "tests/integration/fixtures.h"

namespace tlserve::testing {
namespace {

using tlserve::v1::Job;
using tlserve::v1::JobEvent;
using tlserve::v1::JobSpec;

#define ASSERT_OK(expr)                                  \
  do {                                                   \
    auto _s = (expr);                                    \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s;         \
  } while (0)

bool HaveFashionMnist() {
  return access((std::string(kFashionMnistDir) + "/train-labels-idx1-ubyte.gz").c_str(),
                R_OK) == 0;
}

class EndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveFashionMnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    ASSERT_OK(cluster_.StartServer());
  }

  v1::Dataset Upload(const std::vector<int>& classes, int train, int test,
                     bool invert = false, int skip = 0) {
    const std::string dir = cluster_.dir() + "/data" + std::to_string(++uploads_);
    EXPECT_TRUE(MakeDirs(dir).ok());
    auto parts = WriteFashionMnistSubset(dir, classes, train, test, invert, skip);
    EXPECT_TRUE(parts.ok()) << parts.status();
    auto dataset = cluster_.client().UploadDatasetFiles(
        "fmnist", v1::IDX, *parts, FashionMnistClassNames(), "");
    EXPECT_TRUE(dataset.ok()) << dataset.status();
    return *dataset;
  }

  v1::Backbone UploadResNet18(int size) {
    auto path = ExportResNet18(cluster_.dir(), size);
    EXPECT_TRUE(path.ok()) << path.status();
    v1::InputSpec spec;
    spec.set_channels(3);
    spec.set_height(size);
    spec.set_width(size);
    for (float m : {0.485f, 0.456f, 0.406f}) spec.add_mean(m);
    for (float s : {0.229f, 0.224f, 0.225f}) spec.add_std(s);
    auto backbone = cluster_.client().UploadBackbone("resnet18", *path, spec, "");
    EXPECT_TRUE(backbone.ok()) << backbone.status();
    return *backbone;
  }

  JobSpec FineTune(const v1::Dataset& dataset, const std::string& backbone,
                   std::vector<int> classes, int epochs) {
    JobSpec spec;
    spec.set_kind(v1::FINE_TUNE);
    spec.mutable_data()->set_dataset_id(dataset.id());
    for (int c : classes) spec.mutable_data()->add_class_subset(c);
    spec.mutable_data()->set_validation_fraction(0.2f);
    spec.set_backbone_id(backbone);
    spec.set_epochs(epochs);
    spec.set_batch_size(16);
    spec.set_seed(7);
    spec.mutable_optimizer()->set_learning_rate(3e-3f);
    return spec;
  }

  // Collects every event of a job until it ends.
  std::vector<JobEvent> WatchAll(const std::string& id,
                                 absl::Duration timeout = absl::Minutes(4)) {
    std::vector<JobEvent> events;
    auto job = cluster_.client().WatchJob(
        id, 0, [&](const JobEvent& e) { events.push_back(e); return true; },
        absl::Now() + timeout);
    EXPECT_TRUE(job.ok()) << job.status();
    return events;
  }

  Job WaitDone(const std::string& id, absl::Duration timeout = absl::Minutes(4)) {
    auto job = cluster_.client().WaitForJob(id, timeout);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : Job();
  }

  // Waits (bounded) for the first event satisfying `pred`.
  bool WaitForEvent(const std::string& id,
                    const std::function<bool(const JobEvent&)>& pred) {
    bool seen = false;
    (void)cluster_.client().WatchJob(
        id, 0, [&](const JobEvent& e) { seen = pred(e); return !seen; },
        absl::Now() + absl::Minutes(3));
    return seen;
  }

  // Runs tlctl against the cluster: its exit code and what it printed
  // (stdout and stderr).
  std::pair<int, std::string> Tlctl(const std::string& args) {
    const std::string command =
        absl::StrCat(TLSERVE_BINARY_DIR, "/client/tlctl --server=",
                     cluster_.address(), " ", args, " 2>&1");
    FILE* pipe = popen(command.c_str(), "r");
    std::string output;
    if (pipe == nullptr) return std::make_pair(-1, output);
    char buffer[4096];
    while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
    return std::make_pair(WEXITSTATUS(pclose(pipe)), output);
  }

  Cluster cluster_;
  int uploads_ = 0;
};

std::vector<int> EpochsOf(const Job& job) {
  std::vector<int> epochs;
  for (const auto& m : job.metrics()) epochs.push_back(m.epoch());
  return epochs;
}

// DOMAIN_ADAPT through the real processes: labelled source images, an
// inverted target with other images, a model judged on the target.
TEST_F(EndToEndTest, DomainAdaptJobTrainsOnBothDomainsAndIsJudgedOnTheTarget) {
  ASSERT_OK(cluster_.StartWorker("w1", 2));
  v1::Dataset source = Upload({0, 1, 7}, 40, 20);
  v1::Dataset target = Upload({0, 1, 7}, 40, 20, /*invert=*/true, /*skip=*/40);
  v1::Backbone backbone = UploadResNet18(32);

  JobSpec spec = FineTune(source, backbone.id(), {0, 1, 7}, 2);
  spec.set_kind(v1::DOMAIN_ADAPT);
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::LAST_N_BLOCKS);
  spec.mutable_freeze()->set_n_blocks(1);
  spec.mutable_domain_adapt()->set_target_dataset_id(target.id());
  auto created = cluster_.client().CreateJob(spec, "");
  ASSERT_OK(created.status());
  std::vector<JobEvent> events = WatchAll(created->id());
  Job job = WaitDone(created->id());
  ASSERT_EQ(job.state(), v1::SUCCEEDED) << job.error();
  bool logged = false;
  for (const JobEvent& e : events) {
    logged |= absl::StrContains(
        e.message(), "domain adaptation: 120 unlabelled target images, 60 labelled");
  }
  EXPECT_TRUE(logged);
  ASSERT_EQ(job.metrics_size(), 2);
  for (const auto& m : job.metrics()) {
    EXPECT_GT(m.domain_loss(), 0.0f);
    EXPECT_GT(m.domain_loss_weight(), 0.0f);
  }
  EXPECT_EQ(job.result().test_count(), 60);         // the target's test split
  EXPECT_EQ(job.result().source_test_count(), 60);  // and the source's
  EXPECT_GT(job.result().test_accuracy(), 0.0f);

  // The target dataset is in use until the job ends, then it may go.
  auto model = cluster_.client().GetModel(job.result().model_id());
  ASSERT_OK(model.status());
  v1::PredictRequest request;
  request.set_model_id(model->id());
  request.add_images(TinyPng(2));
  ASSERT_OK(cluster_.client().Predict(request, absl::Seconds(30)).status());
  ASSERT_OK(cluster_.client().DeleteDataset(target.id()));
}

// MULTITASK through tlctl and the real processes: Fashion-MNIST classes
// and a coarse grouping of them, trained together on one backbone; one
// model whose Predict answers with both heads.
TEST_F(EndToEndTest, MultitaskJobTrainsTwoHeadsAndPredictAnswersWithBoth) {
  ASSERT_OK(cluster_.StartWorker("w1", 2));
  v1::Dataset dataset = Upload({0, 1, 5, 7}, 40, 20);
  v1::Backbone backbone = UploadResNet18(32);
  auto run = [&](const std::string& args) { return Tlctl(args); };

  // A grouping that leaves a label out is refused by the server, naming
  // the field; nothing is queued.
  auto [bad_code, bad] = run(absl::StrCat(
      "job create --kind multitask --dataset ", dataset.id(), " --backbone ",
      backbone.id(), " --classes 0,1,5,7 --task coarse=tops:0,2,3,4,6/"
      "footwear:5,7/other:1,8"));
  EXPECT_EQ(bad_code, 1) << bad;
  EXPECT_TRUE(absl::StrContains(bad, "label_map has 9 entries; the dataset has 10 labels"))
      << bad;

  auto [code, output] = run(absl::StrCat(
      "job create --kind multitask --dataset ", dataset.id(), " --backbone ",
      backbone.id(), " --classes 0,1,5,7 --epochs 3 --batch-size 16 --seed 7 "
      "--lr 0.003 --task coarse=tops:0,2,3,4,6/footwear:5,7,9/other:1,8 "
      "--task-weight coarse=0.5 --watch"));
  ASSERT_EQ(code, 0) << output;
  auto jobs = cluster_.client().ListAllJobs(v1::JOB_STATE_UNSPECIFIED);
  ASSERT_OK(jobs.status());
  ASSERT_EQ(jobs->size(), 1u);
  const Job& job = (*jobs)[0];
  ASSERT_EQ(job.state(), v1::SUCCEEDED) << job.error();
  EXPECT_EQ(job.spec().kind(), v1::MULTITASK);
  ASSERT_EQ(job.metrics_size(), 3);
  for (const auto& m : job.metrics()) {
    ASSERT_EQ(m.tasks_size(), 1);
    EXPECT_EQ(m.tasks(0).name(), "coarse");
    EXPECT_GT(m.tasks(0).train_loss(), 0.0f);
    EXPECT_EQ(m.tasks(0).per_class_accuracy_size(), 3);
  }
  ASSERT_EQ(job.result().tasks_size(), 1);
  EXPECT_EQ(job.result().test_count(), 80);
  // Footwear is half of the test images: the head must beat always
  // answering it. A random resnet18's features separate these classes.
  EXPECT_GT(job.result().tasks(0).accuracy(), 0.6f);
  EXPECT_GT(job.result().test_accuracy(), 0.4f);
  // The backbone stayed frozen, so the model can share it when served.
  EXPECT_FALSE(job.result().frozen_backbone_digest().empty());

  auto model = cluster_.client().GetModel(job.result().model_id());
  ASSERT_OK(model.status());
  EXPECT_EQ(model->class_names_size(), 4);
  ASSERT_EQ(model->tasks_size(), 1);
  EXPECT_EQ(model->tasks(0).name(), "coarse");
  v1::PredictRequest request;
  request.set_model_id(model->id());
  request.add_images(TinyPng(1));
  request.add_images(TinyPng(2));
  auto predicted = cluster_.client().Predict(request, absl::Seconds(30));
  ASSERT_OK(predicted.status());
  ASSERT_EQ(predicted->predictions_size(), 2);
  for (const v1::Prediction& p : predicted->predictions()) {
    EXPECT_EQ(p.probabilities_size(), 4);
    ASSERT_EQ(p.tasks_size(), 1);
    EXPECT_EQ(p.tasks(0).task(), "coarse");
    ASSERT_EQ(p.tasks(0).probabilities_size(), 3);
    float sum = 0;
    for (float v : p.tasks(0).probabilities()) sum += v;
    EXPECT_NEAR(sum, 1.0f, 1e-4f);
    ASSERT_EQ(p.tasks(0).top_size(), 3);
  }

  // tlctl shows both heads: the job's results and a prediction.
  auto [get_code, shown] = run(absl::StrCat("job get ", job.id()));
  ASSERT_EQ(get_code, 0) << shown;
  EXPECT_TRUE(absl::StrContains(shown, "head 'coarse': test accuracy")) << shown;
  EXPECT_TRUE(absl::StrContains(shown, "VAL_ACC_COARSE")) << shown;
  const std::string png = cluster_.dir() + "/one.png";
  {
    std::ofstream out(png, std::ios::binary);
    out << TinyPng(1);
  }
  auto [predict_code, answer] = run(absl::StrCat("predict --model ", model->id(),
                                                 " --image ", png));
  ASSERT_EQ(predict_code, 0) << answer;
  EXPECT_TRUE(absl::StrContains(answer, "head 'coarse'")) << answer;
}

// `tlctl model create --few-shot`: a FEW_SHOT job that trains nothing,
// then a model served like a fine-tuned one.
// Text transfer through the real processes: word vectors the test writes
// (animal words near one axis, vehicle words near another, filler words
// near zero), a CSV of short texts, a FINE_TUNE job on frozen vectors,
// then Predict and Embed on new texts, and tlctl all the way.
TEST_F(EndToEndTest, TextJobOnWordVectorsTrainsAndPredictsTexts) {
  ASSERT_OK(cluster_.StartWorker("w1", 2));
  const std::string dir = cluster_.dir() + "/text";
  ASSERT_OK(MakeDirs(dir));
  const std::vector<std::string> animals = {"cat", "dog", "horse", "cow",
                                            "sheep", "goat", "mouse", "owl"};
  const std::vector<std::string> vehicles = {"car", "bus", "truck", "train",
                                             "tram", "bike", "van", "ship"};
  const std::vector<std::string> filler = {"the", "a", "saw", "near", "big",
                                           "small", "my", "old"};
  {
    std::ofstream out(dir + "/vectors.txt");
    auto row = [&](const std::string& word, int axis, int i) {
      out << word;
      for (int d = 0; d < 8; ++d) {
        const double v = (d == axis ? 1.0 : 0.0) + 0.05 * ((i * 7 + d * 3) % 5 - 2);
        out << " " << v;
      }
      out << "\n";
    };
    for (size_t i = 0; i < animals.size(); ++i) row(animals[i], 0, static_cast<int>(i));
    for (size_t i = 0; i < vehicles.size(); ++i) row(vehicles[i], 1, static_cast<int>(i));
    for (size_t i = 0; i < filler.size(); ++i) row(filler[i], 7, static_cast<int>(i));
  }
  // A text: a filler word, a class word (the last two of each class only
  // in the test file), and sometimes a word no vector has.
  auto write_csv = [&](const std::string& path, int n, bool test) {
    std::ofstream out(path);
    out << "text,label\n";
    for (int i = 0; i < n; ++i) {
      const bool animal = i % 2 == 0;
      const auto& words = animal ? animals : vehicles;
      const std::string word = test ? words[6 + i % 2] : words[i % 6];
      out << "\"" << filler[i % filler.size()] << " " << word
          << (i % 3 == 0 ? ", zyxxyq" : "") << "\"," << (animal ? "animal" : "vehicle")
          << "\n";
    }
  };
  write_csv(dir + "/train.csv", 60, false);
  write_csv(dir + "/test.csv", 20, true);

  auto [up_code, up] = Tlctl(absl::StrCat(
      "dataset upload --name words --text-csv ", dir, "/train.csv --test-text-csv ",
      dir, "/test.csv"));
  ASSERT_EQ(up_code, 0) << up;
  EXPECT_TRUE(absl::StrContains(up, "60 train, 20 test texts, 2 classes")) << up;
  auto datasets = cluster_.client().ListDatasets();
  ASSERT_OK(datasets.status());
  ASSERT_EQ(datasets->size(), 1u);
  const v1::Dataset dataset = (*datasets)[0];
  EXPECT_EQ(dataset.format(), v1::TEXT_CSV);
  ASSERT_EQ(dataset.class_names_size(), 2);
  EXPECT_EQ(dataset.class_names(0), "animal");
  EXPECT_EQ(dataset.train_class_counts(0), 30);
  // The same short texts recur: the upload says so.
  EXPECT_GT(dataset.duplicate_train_images(), 0);

  // A vectors file with a short row is refused at upload, naming the line.
  {
    std::ofstream out(dir + "/bad.txt");
    out << "cat 1 0 0\ndog 0 1\n";
  }
  auto [bad_code, bad] = Tlctl(absl::StrCat("backbone upload --name bad --file ", dir,
                                            "/bad.txt --word-vectors"));
  EXPECT_EQ(bad_code, 1) << bad;
  EXPECT_TRUE(absl::StrContains(bad, "line 2")) << bad;
  auto [bb_code, bb] = Tlctl(absl::StrCat("backbone upload --name toy --file ", dir,
                                          "/vectors.txt --word-vectors"));
  ASSERT_EQ(bb_code, 0) << bb;
  EXPECT_TRUE(absl::StrContains(bb, "word vectors, 24 words")) << bb;
  auto backbones = cluster_.client().ListBackbones();
  ASSERT_OK(backbones.status());
  ASSERT_EQ(backbones->size(), 1u);
  const v1::Backbone backbone = (*backbones)[0];
  EXPECT_EQ(backbone.kind(), v1::WORD_VECTORS);
  EXPECT_EQ(backbone.feature_dim(), 8);
  EXPECT_EQ(backbone.vocab_size(), 24);

  // What a text job cannot do is refused before it is queued.
  const std::string job_base = absl::StrCat("job create --dataset ", dataset.id(),
                                            " --backbone ", backbone.id());
  auto [blocks_code, blocks] =
      Tlctl(absl::StrCat(job_base, " --freeze last_n_blocks --blocks 1"));
  EXPECT_EQ(blocks_code, 1) << blocks;
  EXPECT_TRUE(absl::StrContains(blocks, "does not apply to text jobs")) << blocks;
  auto [kind_code, kind] = Tlctl(absl::StrCat(job_base, " --kind pretrain --backbone-name x"));
  EXPECT_EQ(kind_code, 1) << kind;
  EXPECT_TRUE(absl::StrContains(kind, "FINE_TUNE jobs only")) << kind;

  auto [code, output] = Tlctl(absl::StrCat(
      job_base, " --pooling mean --max-tokens 16 --epochs 8 --batch-size 8 "
                "--lr 0.05 --seed 3 --watch"));
  ASSERT_EQ(code, 0) << output;
  auto jobs = cluster_.client().ListAllJobs(v1::JOB_STATE_UNSPECIFIED);
  ASSERT_OK(jobs.status());
  ASSERT_EQ(jobs->size(), 1u);
  const Job& job = (*jobs)[0];
  ASSERT_EQ(job.state(), v1::SUCCEEDED) << job.error();
  EXPECT_EQ(job.metrics_size(), 8);
  EXPECT_EQ(job.result().test_count(), 20);
  // The test texts use class words training never showed: only the
  // pretrained vectors can tell them apart.
  EXPECT_GE(job.result().test_accuracy(), 0.9f);
  // "zyxxyq" in every third text: 1 of 3 tokens there.
  EXPECT_GT(job.result().unknown_token_rate(), 0.05f);
  EXPECT_LT(job.result().unknown_token_rate(), 0.3f);

  auto model = cluster_.client().GetModel(job.result().model_id());
  ASSERT_OK(model.status());
  ASSERT_TRUE(model->has_text());
  EXPECT_EQ(model->text().pooling(), "mean");
  EXPECT_EQ(model->text().max_tokens(), 16);
  v1::PredictRequest request;
  request.set_model_id(model->id());
  request.add_texts("My old OWL!");
  request.add_texts("a ship, near the tram");
  auto predicted = cluster_.client().Predict(request, absl::Seconds(30));
  ASSERT_OK(predicted.status());
  ASSERT_EQ(predicted->predictions_size(), 2);
  EXPECT_EQ(predicted->predictions(0).top(0).label(), "animal");
  EXPECT_EQ(predicted->predictions(1).top(0).label(), "vehicle");
  EXPECT_NEAR(predicted->predictions(0).probabilities(0) +
                  predicted->predictions(0).probabilities(1),
              1.0f, 1e-4f);

  // Embed: the mean of the token vectors, 8 wide.
  v1::EmbedRequest embed;
  embed.set_model_id(model->id());
  embed.add_texts("cat");
  auto embedded = cluster_.client().Embed(embed, absl::Seconds(30));
  ASSERT_OK(embedded.status());
  ASSERT_EQ(embedded->embeddings_size(), 1);
  ASSERT_EQ(embedded->embeddings(0).values_size(), 8);
  EXPECT_GT(embedded->embeddings(0).values(0), 0.8f);

  // An image sent to a text model is a clear error, and the model still
  // answers afterwards.
  v1::PredictRequest image_request;
  image_request.set_model_id(model->id());
  image_request.add_images(TinyPng(1));
  auto refused = cluster_.client().Predict(image_request, absl::Seconds(30));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "text model"))
      << refused.status();

  auto [predict_code, answer] =
      Tlctl(absl::StrCat("predict --model ", model->id(), " --text 'the big dog'"));
  ASSERT_EQ(predict_code, 0) << answer;
  EXPECT_TRUE(absl::StrContains(answer, "\"the big dog\":")) << answer;
  bool ranked_first = false;
  for (absl::string_view line : absl::StrSplit(answer, '\n')) {
    if (absl::StartsWith(line, "1 ")) ranked_first = absl::StrContains(line, "animal");
  }
  EXPECT_TRUE(ranked_first) << answer;
  auto [get_code, shown] = Tlctl(absl::StrCat("job get ", job.id()));
  ASSERT_EQ(get_code, 0) << shown;
  EXPECT_TRUE(absl::StrContains(shown, "on 20 texts")) << shown;
  EXPECT_TRUE(absl::StrContains(shown, "of the tokens had no word vector")) << shown;
}

TEST_F(EndToEndTest, FewShotModelIsMadeWithoutTrainingAndServed) {
  ASSERT_OK(cluster_.StartWorker("w1", 2));
  v1::Dataset dataset = Upload({0, 1, 7}, 40, 20);
  v1::Backbone backbone = UploadResNet18(32);

  auto [code, output] = Tlctl(absl::StrCat(
      "model create --few-shot --dataset ", dataset.id(), " --backbone ",
      backbone.id(), " --shots 10 --classes 0,1,7 --seed 3"));
  ASSERT_EQ(code, 0) << output;
  EXPECT_TRUE(absl::StrContains(output, "without training")) << output;

  auto jobs = cluster_.client().ListAllJobs(v1::JOB_STATE_UNSPECIFIED);
  ASSERT_OK(jobs.status());
  ASSERT_EQ(jobs->size(), 1u);
  const Job& job = (*jobs)[0];
  EXPECT_EQ(job.spec().kind(), v1::FEW_SHOT);
  EXPECT_EQ(job.state(), v1::SUCCEEDED) << job.error();
  EXPECT_EQ(job.spec().data().samples_per_class(), 10);
  EXPECT_TRUE(job.metrics().empty()) << "a few-shot job trains no epoch";
  EXPECT_EQ(job.result().test_count(), 60);
  // T-shirt, Trouser and Sneaker on a randomly initialised resnet18's
  // features: well above chance (1/3) all the same.
  EXPECT_GT(job.result().test_accuracy(), 0.5f);
  EXPECT_FALSE(job.result().frozen_backbone_digest().empty());
  std::vector<JobEvent> events = WatchAll(job.id());
  bool logged = false;
  for (const JobEvent& e : events) {
    logged |= absl::StrContains(e.message(), "few-shot: prototypes of 3 classes");
  }
  EXPECT_TRUE(logged);

  auto model = cluster_.client().GetModel(job.result().model_id());
  ASSERT_OK(model.status());
  EXPECT_EQ(model->class_names_size(), 3);
  EXPECT_TRUE(absl::StrContains(output, model->id())) << output;
  v1::PredictRequest request;
  request.set_model_id(model->id());
  request.set_top_k(3);
  request.add_images(TinyPng(1));
  auto predicted = cluster_.client().Predict(request, absl::Seconds(30));
  ASSERT_OK(predicted.status());
  ASSERT_EQ(predicted->predictions_size(), 1);
  EXPECT_EQ(predicted->predictions(0).top_size(), 3);
  EXPECT_EQ(predicted->predictions(0).probabilities_size(), 3);

  // `tlctl backbone rank` scores the backbone by the same rule: with the
  // same images (seed) it finds the very accuracy of the model above.
  std::tie(code, output) = Tlctl(absl::StrCat(
      "--json backbone rank --dataset ", dataset.id(),
      " --shots 10 --classes 0,1,7 --seed 3"));
  ASSERT_EQ(code, 0) << output;
  EXPECT_TRUE(absl::StrContains(output, absl::StrCat("\"backbone_id\": \"",
                                                     backbone.id(), "\"")))
      << output;
  EXPECT_TRUE(absl::StrContains(
      output, absl::StrFormat("\"accuracy\": %.6f", job.result().test_accuracy())))
      << output;
  EXPECT_TRUE(absl::StrContains(output, "\"error\": \"\"")) << output;

  // `tlctl job compare` on the two real jobs (the model's and the rank's):
  // both columns, and the same test accuracy for both (same images).
  auto all = cluster_.client().ListAllJobs(v1::JOB_STATE_UNSPECIFIED);
  ASSERT_OK(all.status());
  ASSERT_EQ(all->size(), 2u);
  std::tie(code, output) =
      Tlctl(absl::StrCat("job compare ", (*all)[0].id(), " ", (*all)[1].id()));
  ASSERT_EQ(code, 0) << output;
  EXPECT_TRUE(absl::StrContains(output, "few_shot")) << output;
  EXPECT_TRUE(absl::StrContains(output, "best by test accuracy")) << output;
  EXPECT_TRUE(absl::StrContains(output, "+0.00 pp")) << output;
}

TEST_F(EndToEndTest, FineTunesATorchvisionResNet18AndServesAndExportsIt) {
  ASSERT_OK(cluster_.StartWorker("w1", 2));
  v1::Dataset dataset = Upload({0, 1, 7}, 40, 20);
  EXPECT_EQ(dataset.train_count(), 120);
  EXPECT_EQ(dataset.test_count(), 60);
  EXPECT_EQ(dataset.train_class_counts(7), 40);
  v1::Backbone backbone = UploadResNet18(32);

  JobSpec spec = FineTune(dataset, backbone.id(), {0, 1, 7}, 2);
  spec.set_checkpoint_every_epoch(true);  // epochs here take a second
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::LAST_N_BLOCKS);
  spec.mutable_freeze()->set_n_blocks(1);
  auto created = cluster_.client().CreateJob(spec, "");
  ASSERT_OK(created.status());
  std::vector<JobEvent> events = WatchAll(created->id());
  Job job = WaitDone(created->id());
  ASSERT_EQ(job.state(), v1::SUCCEEDED) << job.error();

  // Every kind of event arrived, in sequence order, ending with the result.
  std::set<int> kinds;
  for (size_t i = 0; i < events.size(); ++i) {
    kinds.insert(events[i].kind_case());
    if (i > 0) {
      EXPECT_GT(events[i].sequence(), events[i - 1].sequence());
    }
  }
  EXPECT_TRUE(kinds.count(JobEvent::kProgress));
  EXPECT_TRUE(kinds.count(JobEvent::kEpochMetrics));
  EXPECT_TRUE(kinds.count(JobEvent::kCheckpoint));
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state_change().to(), v1::SUCCEEDED);

  EXPECT_EQ(EpochsOf(job), (std::vector<int>{1, 2}));
  auto checkpoints = cluster_.client().ListCheckpoints(job.id());
  ASSERT_OK(checkpoints.status());
  EXPECT_EQ(checkpoints->checkpoints_size(), 2);
  EXPECT_EQ(job.result().test_count(), 60);
  EXPECT_GT(job.result().test_accuracy(), 0.0f);

  // The backbone learned its blocks from the worker.
  ASSERT_FALSE(job.result().model_id().empty());
  auto model = cluster_.client().GetModel(job.result().model_id());
  ASSERT_OK(model.status());
  EXPECT_EQ(model->class_names_size(), 3);
  EXPECT_EQ(model->class_names(2), "Sneaker");
  const v1::ReproManifest& manifest = job.result().manifest();
  EXPECT_EQ(manifest.backbone_sha256(), backbone.sha256());
  EXPECT_EQ(manifest.dataset_sha256().size(), 64u);
  EXPECT_EQ(manifest.seed(), job.spec().seed());
  EXPECT_FALSE(manifest.libtorch_version().empty());
  EXPECT_FALSE(manifest.tlserve_version().empty());
  auto learned = cluster_.client().GetBackbone(backbone.id());
  ASSERT_OK(learned.status());
  EXPECT_EQ(learned->feature_dim(), 512);
  EXPECT_GE(learned->blocks_size(), 4) << "resnet18 has layer1..layer4";

  // Predict on a raw tensor, then the exported file in Python must agree.
  v1::PredictRequest request;
  request.set_model_id(model->id());
  request.set_top_k(2);
  std::vector<float> pixels(2 * 3 * 32 * 32);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<float>((i * 37) % 101) / 100.0f;
  auto* tensor = request.mutable_tensor();
  for (int d : {2, 3, 32, 32}) tensor->add_shape(d);
  tensor->set_dtype("FP32");
  tensor->set_contents(std::string(reinterpret_cast<const char*>(pixels.data()),
                                   pixels.size() * sizeof(float)));
  auto predicted = cluster_.client().Predict(request, absl::Seconds(60));
  ASSERT_OK(predicted.status());
  ASSERT_EQ(predicted->predictions_size(), 2);
  EXPECT_EQ(predicted->predictions(0).top_size(), 2);
  float sum = 0;
  for (float p : predicted->predictions(0).probabilities()) sum += p;
  EXPECT_NEAR(sum, 1.0f, 1e-4);

  const std::string exported = cluster_.dir() + "/model.pt";
  ASSERT_OK(cluster_.client().ExportModel(model->id(), exported).status());
  ASSERT_OK(WriteFileAtomic(cluster_.dir() + "/input.f32", tensor->contents()));
  const std::string script = absl::StrCat(
      "import torch,numpy\n"
      "m=torch.jit.load('", exported, "')\n"
      "x=torch.from_numpy(numpy.fromfile('", cluster_.dir(),
      "/input.f32',dtype=numpy.float32).reshape(2,3,32,32))\n"
      "p=torch.softmax(m(x),dim=1)\n"
      "print(' '.join('%.6f'%v for v in p.flatten().tolist()))\n"
      "f=m.features(x)\n"
      "print(' '.join('%.6f'%v for v in f.abs().sum(1).tolist()))\n");
  ASSERT_OK(WriteFileAtomic(cluster_.dir() + "/check.py", script));
  const std::string out = cluster_.dir() + "/python.out";
  ASSERT_EQ(std::system(("/usr/bin/python3 " + cluster_.dir() + "/check.py > " + out +
                         " 2>&1").c_str()),
            0)
      << *ReadFile(out);
  std::vector<std::string> lines =
      absl::StrSplit(absl::StripAsciiWhitespace(*ReadFile(out)), '\n');
  ASSERT_EQ(lines.size(), 2u) << *ReadFile(out);
  std::vector<std::string> values = absl::StrSplit(lines[0], ' ');
  ASSERT_EQ(values.size(), 6u) << *ReadFile(out);
  for (int row = 0; row < 2; ++row) {
    for (int c = 0; c < 3; ++c) {
      EXPECT_NEAR(std::stof(values[row * 3 + c]),
                  predicted->predictions(row).probabilities(c), 1e-4);
    }
  }

  // Embed: the backbone's 512 features per row, as features() in Python.
  v1::EmbedRequest embed;
  embed.set_model_id(model->id());
  *embed.mutable_tensor() = *tensor;
  auto embedded = cluster_.client().Embed(embed, absl::Seconds(60));
  ASSERT_OK(embedded.status());
  ASSERT_EQ(embedded->embeddings_size(), 2);
  std::vector<std::string> norms = absl::StrSplit(lines[1], ' ');
  ASSERT_EQ(norms.size(), 2u);
  for (int row = 0; row < 2; ++row) {
    ASSERT_EQ(embedded->embeddings(row).values_size(), 512);
    double l1 = 0;
    for (float v : embedded->embeddings(row).values()) l1 += std::abs(v);
    EXPECT_NEAR(l1, std::stod(norms[row]), 1e-3 * std::max(1.0, l1));
  }

  // The same model through the KServe v2 API, from a Python client
  // generated from tlserve's proto: same probabilities, same features.
  {
    const std::string kserve_out = cluster_.dir() + "/kserve.json";
    const std::string command = absl::StrCat(
        "/usr/bin/python3 ", TLSERVE_SOURCE_DIR,
        "/tests/integration/kserve_client.py --target ", cluster_.address(),
        " --model ", model->id(), " --proto_dir ", TLSERVE_SOURCE_DIR,
        "/proto --input ", cluster_.dir(), "/input.f32 --shape 2,3,32,32 > ",
        kserve_out, " 2>&1");
    ASSERT_EQ(std::system(command.c_str()), 0) << *ReadFile(kserve_out);
    google::protobuf::Struct seen;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(*ReadFile(kserve_out),
                                                            &seen)
                    .ok())
        << *ReadFile(kserve_out);
    const auto& f = seen.fields();
    EXPECT_TRUE(f.at("live").bool_value());
    EXPECT_TRUE(f.at("ready").bool_value());
    EXPECT_EQ(f.at("server_name").string_value(), "tlserve");
    EXPECT_TRUE(f.at("model_ready").bool_value());
    EXPECT_FALSE(f.at("unknown_model_ready").bool_value());
    EXPECT_EQ(f.at("max_batch_size").number_value(), 64);
    EXPECT_EQ(f.at("id").string_value(), "req-1");
    const auto& shape = f.at("input_shape").list_value().values();
    ASSERT_EQ(shape.size(), 4);
    EXPECT_EQ(shape[0].number_value(), -1);
    EXPECT_EQ(shape[1].number_value(), 3);
    const auto& shapes = f.at("output_shapes").struct_value().fields();
    EXPECT_EQ(shapes.at("probabilities").list_value().values(1).number_value(), 3);
    EXPECT_EQ(shapes.at("features").list_value().values(1).number_value(), 512);
    const auto& probabilities = f.at("probabilities").list_value().values();
    ASSERT_EQ(probabilities.size(), 6);
    for (int row = 0; row < 2; ++row) {
      for (int c = 0; c < 3; ++c) {
        EXPECT_NEAR(probabilities[row * 3 + c].number_value(),
                    predicted->predictions(row).probabilities(c), 1e-5);
      }
    }
    const auto& l1 = f.at("features_l1").list_value().values();
    ASSERT_EQ(l1.size(), 2);
    EXPECT_NEAR(l1[0].number_value(), std::stod(norms[0]),
                1e-3 * std::max(1.0, l1[0].number_value()));
    EXPECT_EQ(f.at("typed_outputs").list_value().values_size(), 1);
    EXPECT_LT(f.at("typed_max_diff").number_value(), 1e-6);
    const auto& errors = f.at("errors").struct_value().fields();
    EXPECT_EQ(errors.at("unknown_model").string_value(), "NOT_FOUND");
    EXPECT_EQ(errors.at("bad_version").string_value(), "NOT_FOUND");
    EXPECT_EQ(errors.at("bad_datatype").string_value(), "INVALID_ARGUMENT");
    EXPECT_EQ(errors.at("wrong_shape").string_value(), "INVALID_ARGUMENT");
    EXPECT_EQ(errors.at("short_data").string_value(), "INVALID_ARGUMENT");
    EXPECT_EQ(errors.at("unknown_output").string_value(), "INVALID_ARGUMENT");
    const auto& stats = f.at("stats").struct_value().fields();
    // Two good ModelInfers of 2 rows, plus the Predict and Embed above.
    EXPECT_GE(stats.at("inference_count").number_value(), 4);
    EXPECT_GE(stats.at("execution_count").number_value(), 1);
    EXPECT_GE(stats.at("fail_count").number_value(), 2);  // the worker's refusals
    EXPECT_GE(stats.at("batch_sizes").list_value().values_size(), 1);
  }

  // 32 callers at once: the batcher merges them, and each still gets the
  // answer it gets alone.
  std::vector<std::thread> callers;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 32; ++t) {
    callers.emplace_back([&] {
      auto r = cluster_.client().Predict(request, absl::Seconds(60));
      if (!r.ok() || r->predictions_size() != 2 ||
          std::abs(r->predictions(1).probabilities(2) -
                   predicted->predictions(1).probabilities(2)) > 1e-4) {
        ++wrong;
      }
    });
  }
  for (std::thread& caller : callers) caller.join();
  EXPECT_EQ(wrong.load(), 0);

  // Undeployed: refused with what to do; deployed again with its own
  // batch size: served, and the setting is stored.
  ASSERT_OK(cluster_.client().UndeployModel(model->id()).status());
  auto refused = cluster_.client().Predict(request, absl::Seconds(10));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "deploy"))
      << refused.status();
  v1::ServingConfig serving;
  serving.set_max_batch_size(4);
  auto redeployed = cluster_.client().DeployModel(model->id(), serving);
  ASSERT_OK(redeployed.status());
  EXPECT_EQ(redeployed->serving().max_batch_size(), 4);
  ASSERT_OK(cluster_.client().Predict(request, absl::Seconds(60)).status());
  EXPECT_EQ(cluster_.client().GetModel(model->id())->serving().max_batch_size(), 4);
  serving.set_max_batch_size(100000);
  EXPECT_EQ(cluster_.client().DeployModel(model->id(), serving).status().code(),
            absl::StatusCode::kInvalidArgument);

  // An unknown model is NOT_FOUND, not a hang.
  request.set_model_id("model-missing");
  EXPECT_EQ(cluster_.client().Predict(request, absl::Seconds(10)).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(EndToEndTest, PretrainedSourceBackboneIsFineTunedOnNewClasses) {
  ASSERT_OK(cluster_.StartWorker("w1", 2));
  v1::Dataset dataset = Upload({3, 7, 8, 9}, 60, 30);
  JobSpec pretrain;
  pretrain.set_kind(v1::PRETRAIN);
  pretrain.mutable_data()->set_dataset_id(dataset.id());
  pretrain.mutable_data()->add_class_subset(8);
  pretrain.mutable_data()->add_class_subset(9);
  pretrain.mutable_pretrain()->set_backbone_name("source");
  pretrain.set_epochs(2);
  pretrain.set_batch_size(16);
  auto source = cluster_.client().CreateJob(pretrain, "");
  ASSERT_OK(source.status());
  Job source_job = WaitDone(source->id());
  ASSERT_EQ(source_job.state(), v1::SUCCEEDED) << source_job.error();
  auto backbone = cluster_.client().GetBackbone(source_job.result().backbone_id());
  ASSERT_OK(backbone.status());
  EXPECT_EQ(backbone->source_job_id(), source_job.id());
  EXPECT_GT(backbone->feature_dim(), 0);
  EXPECT_GE(backbone->blocks_size(), 2);

  JobSpec tune = FineTune(dataset, backbone->id(), {3, 7}, 3);
  tune.mutable_freeze()->set_mode(v1::FreezePolicy::FROZEN);
  auto tuned = cluster_.client().CreateJob(tune, "");
  ASSERT_OK(tuned.status());
  Job job = WaitDone(tuned->id());
  ASSERT_EQ(job.state(), v1::SUCCEEDED) << job.error();
  EXPECT_EQ(job.result().test_count(), 60);
}

TEST_F(EndToEndTest, CancelStopsARunningJobAndFreesTheWorker) {
  ASSERT_OK(cluster_.StartWorker("w1", 1));
  v1::Dataset dataset = Upload({0, 1}, 500, 10);
  v1::Backbone backbone = UploadResNet18(32);
  JobSpec long_spec = FineTune(dataset, backbone.id(), {0, 1}, 200);
  long_spec.mutable_freeze()->set_mode(v1::FreezePolicy::FULL);
  auto long_job = cluster_.client().CreateJob(long_spec, "");
  ASSERT_OK(long_job.status());
  ASSERT_TRUE(WaitForEvent(long_job->id(),
                           [](const JobEvent& e) { return e.has_progress(); }));
  auto cancelled = cluster_.client().CancelJob(long_job->id());
  ASSERT_OK(cancelled.status());
  EXPECT_EQ(cancelled->state(), v1::CANCELLED);
  EXPECT_EQ(cluster_.client().CancelJob(long_job->id()).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // The same single worker takes the next job once it has stopped.
  JobSpec short_spec = FineTune(dataset, backbone.id(), {0, 1}, 1);
  short_spec.mutable_data()->set_samples_per_class(20);
  auto next = cluster_.client().CreateJob(short_spec, "");
  ASSERT_OK(next.status());
  Job done = WaitDone(next->id(), absl::Minutes(2));
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.error();
  Job stopped = *cluster_.client().GetJob(long_job->id());
  EXPECT_EQ(stopped.state(), v1::CANCELLED);
  EXPECT_LT(stopped.metrics_size(), 200);
}

// A worker killed with a batch in flight: the call is re-queued, waits for
// the next worker and is answered there, not lost and not hung.
TEST_F(EndToEndTest, InferenceOnAKilledWorkerIsAnsweredByTheNextOne) {
  ASSERT_OK(cluster_.StartWorker("w1", 1));
  v1::Dataset dataset = Upload({0, 1}, 40, 10);
  v1::Backbone backbone = UploadResNet18(32);
  JobSpec spec = FineTune(dataset, backbone.id(), {0, 1}, 1);
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::FROZEN);
  auto created = cluster_.client().CreateJob(spec, "");
  ASSERT_OK(created.status());
  Job job = WaitDone(created->id());
  ASSERT_EQ(job.state(), v1::SUCCEEDED) << job.error();

  // 2048 rows at 32x32: seconds of work for one LibTorch thread.
  constexpr int kRows = 2048;
  std::vector<float> pixels(static_cast<size_t>(kRows) * 3 * 32 * 32);
  for (size_t i = 0; i < pixels.size(); ++i) {
    pixels[i] = static_cast<float>((i * 13) % 97) / 96.0f;
  }
  v1::PredictRequest request;
  request.set_model_id(job.result().model_id());
  for (int d : {kRows, 3, 32, 32}) request.mutable_tensor()->add_shape(d);
  request.mutable_tensor()->set_dtype("FP32");
  request.mutable_tensor()->set_contents(std::string(
      reinterpret_cast<const char*>(pixels.data()), pixels.size() * sizeof(float)));
  v1::PredictRequest first_row = request;
  first_row.mutable_tensor()->set_shape(0, 1);
  first_row.mutable_tensor()->set_contents(
      request.tensor().contents().substr(0, 3 * 32 * 32 * sizeof(float)));
  auto alone = cluster_.client().Predict(first_row, absl::Seconds(60));
  ASSERT_OK(alone.status());
  EXPECT_EQ(alone->worker_id(), "w1");

  absl::StatusOr<v1::PredictResponse> big;
  std::thread caller(
      [&] { big = cluster_.client().Predict(request, absl::Seconds(120)); });
  absl::SleepFor(absl::Milliseconds(700));
  cluster_.KillWorker("w1", SIGKILL);
  ASSERT_OK(cluster_.StartWorker("w2", 1));
  caller.join();
  ASSERT_OK(big.status());
  EXPECT_EQ(big->worker_id(), "w2");
  ASSERT_EQ(big->predictions_size(), kRows);
  for (int c = 0; c < 2; ++c) {
    EXPECT_NEAR(big->predictions(0).probabilities(c),
                alone->predictions(0).probabilities(c), 1e-4);
  }
}

// Two models trained on the same frozen backbone are marked as sharing it
// (one that trained its last block is not), and calls for both, mixed in
// one batch on one worker, get what each model gives alone.
TEST_F(EndToEndTest, ModelsOnOneFrozenBackboneAreServedTogether) {
  ASSERT_OK(cluster_.StartWorker("w1", 1));
  v1::Dataset dataset = Upload({0, 1}, 40, 10);
  v1::Backbone backbone = UploadResNet18(32);
  std::vector<v1::Model> models;
  for (int variant = 0; variant < 3; ++variant) {
    JobSpec spec = FineTune(dataset, backbone.id(), {0, 1}, 1);
    spec.set_seed(11 + variant);
    if (variant < 2) {
      spec.mutable_freeze()->set_mode(v1::FreezePolicy::FROZEN);
    } else {
      spec.mutable_freeze()->set_mode(v1::FreezePolicy::LAST_N_BLOCKS);
      spec.mutable_freeze()->set_n_blocks(1);
    }
    auto created = cluster_.client().CreateJob(spec, "");
    ASSERT_OK(created.status());
    Job job = WaitDone(created->id());
    ASSERT_EQ(job.state(), v1::SUCCEEDED) << job.error();
    auto model = cluster_.client().GetModel(job.result().model_id());
    ASSERT_OK(model.status());
    models.push_back(*model);
  }
  EXPECT_EQ(models[0].backbone_digest().size(), 64u);
  EXPECT_EQ(models[0].backbone_digest(), models[1].backbone_digest());
  EXPECT_EQ(models[2].backbone_digest(), "");

  constexpr int kRows = 16;
  std::vector<float> pixels(static_cast<size_t>(kRows) * 3 * 32 * 32);
  for (size_t i = 0; i < pixels.size(); ++i) {
    pixels[i] = static_cast<float>((i * 31) % 101) / 100.0f;
  }
  v1::PredictRequest request;
  for (int d : {kRows, 3, 32, 32}) request.mutable_tensor()->add_shape(d);
  request.mutable_tensor()->set_dtype("FP32");
  request.mutable_tensor()->set_contents(std::string(
      reinterpret_cast<const char*>(pixels.data()), pixels.size() * sizeof(float)));
  request.set_top_k(2);
  std::vector<v1::PredictResponse> alone;
  for (const v1::Model& m : models) {
    request.set_model_id(m.id());
    auto r = cluster_.client().Predict(request, absl::Seconds(60));
    ASSERT_OK(r.status());
    alone.push_back(*r);
  }
  // Different heads: the two frozen-backbone models disagree somewhere.
  EXPECT_NE(alone[0].predictions(0).probabilities(0),
            alone[1].predictions(0).probabilities(0));

  // 24 concurrent calls, the three models interleaved.
  constexpr int kCalls = 24;
  std::vector<absl::StatusOr<v1::PredictResponse>> got(kCalls);
  std::vector<std::thread> callers;
  for (int i = 0; i < kCalls; ++i) {
    callers.emplace_back([&, i] {
      v1::PredictRequest mine = request;
      mine.set_model_id(models[i % 3].id());
      got[i] = cluster_.client().Predict(mine, absl::Seconds(60));
    });
  }
  for (std::thread& t : callers) t.join();
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_OK(got[i].status());
    const v1::PredictResponse& want = alone[i % 3];
    ASSERT_EQ(got[i]->predictions_size(), kRows);
    for (int r = 0; r < kRows; ++r) {
      for (int c = 0; c < 2; ++c) {
        EXPECT_NEAR(got[i]->predictions(r).probabilities(c),
                    want.predictions(r).probabilities(c), 1e-4)
            << "call " << i << " row " << r;
      }
    }
  }
}

// A model trained with the resize-and-crop fit fits Predict's images the
// same way: a wide PNG gives what its centre crop, sent as a tensor, gives.
TEST_F(EndToEndTest, AModelKeepsItsResizeAndCropFitForPredict) {
  ASSERT_OK(cluster_.StartWorker("w1", 1));
  v1::Dataset dataset = Upload({0, 1}, 20, 10);
  v1::Backbone backbone = UploadResNet18(32);
  JobSpec spec = FineTune(dataset, backbone.id(), {0, 1}, 1);
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::FROZEN);
  // A crop larger than the shorter side is refused before any worker time.
  spec.mutable_input_fit()->set_mode(v1::InputFit::RESIZE_CENTER_CROP);
  spec.mutable_input_fit()->set_shorter_side(20);
  auto refused = cluster_.client().CreateJob(spec, "");
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.status().message(),
                                "spec.input_fit.shorter_side 20 is smaller"))
      << refused.status();

  spec.mutable_input_fit()->set_shorter_side(36);
  auto created = cluster_.client().CreateJob(spec, "");
  ASSERT_OK(created.status());
  Job job = WaitDone(created->id());
  ASSERT_EQ(job.state(), v1::SUCCEEDED) << job.error();
  auto model = cluster_.client().GetModel(job.result().model_id());
  ASSERT_OK(model.status());
  EXPECT_EQ(model->input_spec().fit().mode(), v1::InputFit::RESIZE_CENTER_CROP);
  EXPECT_EQ(model->input_spec().fit().shorter_side(), 36);

  Image wide;
  wide.height = 24;
  wide.width = 60;
  wide.channels = 3;
  for (int i = 0; i < 24 * 60 * 3; ++i) {
    wide.pixels.push_back(static_cast<uint8_t>((i * 29 + i / 180) % 251));
  }
  const Image crop = FitImage(wide, model->input_spec());
  ASSERT_EQ(crop.height, 32);
  ASSERT_EQ(crop.width, 32);
  // The crop as UINT8 [1, 3, 32, 32], planar.
  std::string planar(3 * 32 * 32, '\0');
  for (int c = 0; c < 3; ++c) {
    for (int i = 0; i < 32 * 32; ++i) {
      planar[c * 32 * 32 + i] = static_cast<char>(crop.pixels[i * 3 + c]);
    }
  }
  v1::PredictRequest by_image;
  by_image.set_model_id(model->id());
  by_image.add_images(*EncodePng(wide));
  v1::PredictRequest by_tensor;
  by_tensor.set_model_id(model->id());
  for (int d : {1, 3, 32, 32}) by_tensor.mutable_tensor()->add_shape(d);
  by_tensor.mutable_tensor()->set_dtype("UINT8");
  by_tensor.mutable_tensor()->set_contents(planar);
  auto from_image = cluster_.client().Predict(by_image, absl::Seconds(60));
  auto from_tensor = cluster_.client().Predict(by_tensor, absl::Seconds(60));
  ASSERT_OK(from_image.status());
  ASSERT_OK(from_tensor.status());
  for (int c = 0; c < 2; ++c) {
    EXPECT_NEAR(from_image->predictions(0).probabilities(c),
                from_tensor->predictions(0).probabilities(c), 1e-5);
  }
  // Stretching the whole image instead gives other scores, so the match
  // above is the fit's doing.
  const Image squashed = ResizeBilinear(wide, 32, 32);
  for (int c = 0; c < 3; ++c) {
    for (int i = 0; i < 32 * 32; ++i) {
      planar[c * 32 * 32 + i] = static_cast<char>(squashed.pixels[i * 3 + c]);
    }
  }
  by_tensor.mutable_tensor()->set_contents(planar);
  auto from_squashed = cluster_.client().Predict(by_tensor, absl::Seconds(60));
  ASSERT_OK(from_squashed.status());
  EXPECT_GT(std::abs(from_squashed->predictions(0).probabilities(0) -
                     from_image->predictions(0).probabilities(0)),
            1e-4);
}

TEST_F(EndToEndTest, KilledWorkerJobResumesOnAnotherWorkerFromItsCheckpoint) {
  ASSERT_OK(cluster_.StartWorker("w1", 1));
  v1::Dataset dataset = Upload({0, 1}, 150, 20);
  v1::Backbone backbone = UploadResNet18(32);
  JobSpec spec = FineTune(dataset, backbone.id(), {0, 1}, 4);
  spec.set_checkpoint_every_epoch(true);  // epochs here take a second
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::LAST_N_BLOCKS);
  spec.mutable_freeze()->set_n_blocks(2);
  auto created = cluster_.client().CreateJob(spec, "");
  ASSERT_OK(created.status());
  int checkpoint_epoch = 0;
  ASSERT_TRUE(WaitForEvent(created->id(), [&](const JobEvent& e) {
    if (e.has_checkpoint()) checkpoint_epoch = e.checkpoint().epoch();
    return e.has_checkpoint();
  }));
  cluster_.KillWorker("w1", SIGKILL);
  ASSERT_OK(cluster_.StartWorker("w2", 1));

  std::vector<JobEvent> events = WatchAll(created->id());
  Job job = WaitDone(created->id());
  ASSERT_EQ(job.state(), v1::SUCCEEDED) << job.error();
  EXPECT_GE(job.attempt(), 2);
  EXPECT_EQ(job.worker_id(), "w2");
  // No epoch ran twice into the record: each epoch once, in order.
  EXPECT_EQ(EpochsOf(job), (std::vector<int>{1, 2, 3, 4}));
  bool requeued = false, resumed_reason = false, resumed_log = false;
  for (const JobEvent& e : events) {
    if (e.has_state_change() && e.state_change().to() == v1::QUEUED &&
        absl::StrContains(e.state_change().reason(), "worker w1 lost")) {
      requeued = true;
    }
    if (e.has_state_change() && e.state_change().to() == v1::RUNNING &&
        e.state_change().attempt() >= 2 &&
        absl::StrContains(e.state_change().reason(), "resuming from checkpoint of epoch")) {
      resumed_reason = true;
    }
    if (e.has_message() && absl::StrContains(e.message(), "resumes from checkpoint of epoch")) {
      resumed_log = true;
    }
  }
  EXPECT_TRUE(requeued);
  EXPECT_TRUE(resumed_reason);
  EXPECT_TRUE(resumed_log);
  EXPECT_GE(checkpoint_epoch, 1);
}

TEST_F(EndToEndTest, KilledServerRestartsWithEveryAcknowledgedJob) {
  ASSERT_OK(cluster_.StartWorker("w1", 1));
  v1::Dataset dataset = Upload({0, 1}, 150, 20);
  v1::Backbone backbone = UploadResNet18(32);
  JobSpec spec = FineTune(dataset, backbone.id(), {0, 1}, 3);
  spec.set_checkpoint_every_epoch(true);  // epochs here take a second
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::FULL);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto job = cluster_.client().CreateJob(spec, "");
    ASSERT_OK(job.status());
    ids.push_back(job->id());
  }
  ASSERT_TRUE(WaitForEvent(ids[0], [](const JobEvent& e) { return e.has_checkpoint(); }));
  cluster_.KillServer(SIGKILL);
  ASSERT_OK(cluster_.StartServer());  // same port, same data dir

  for (const std::string& id : ids) {
    Job job = WaitDone(id);
    EXPECT_EQ(job.state(), v1::SUCCEEDED) << id << ": " << job.error();
    EXPECT_EQ(EpochsOf(job), (std::vector<int>{1, 2, 3})) << id;
  }
  Job first = *cluster_.client().GetJob(ids[0]);
  EXPECT_GE(first.attempt(), 2);
  bool restart_recorded = false;
  (void)cluster_.client().WatchJob(ids[0], 0, [&](const JobEvent& e) {
    restart_recorded |= e.has_state_change() &&
                        absl::StrContains(e.state_change().reason(), "server restarted");
    return true;
  });
  EXPECT_TRUE(restart_recorded);
  auto all = cluster_.client().ListAllJobs(v1::JOB_STATE_UNSPECIFIED);
  ASSERT_OK(all.status());
  EXPECT_EQ(all->size(), 3u);
}

TEST_F(EndToEndTest, BadUploadsAreRefusedClearlyAndNothingIsLost) {
  const std::string dir = cluster_.dir();
  auto good = WriteFashionMnistSubset(dir, {0, 1}, 10, 5);
  ASSERT_OK(good.status());
  auto uploaded = cluster_.client().UploadDatasetFiles("good", v1::IDX, *good,
                                                       FashionMnistClassNames(), "");
  ASSERT_OK(uploaded.status());
  const auto& images = (*good)[0].second;
  const auto& labels = (*good)[1].second;

  auto expect_invalid = [&](const std::string& what, v1::DatasetFormat format,
                            const DatasetParts& parts, const std::string& needle,
                            std::vector<std::string> names = FashionMnistClassNames()) {
    auto r = cluster_.client().UploadDatasetFiles(what, format, parts, names, "");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
        << what << ": " << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), needle))
        << what << ": message '" << r.status().message() << "' lacks '" << needle << "'";
  };

  std::string image_bytes = *ReadFile(images);
  ASSERT_OK(WriteFileAtomic(dir + "/truncated.idx", image_bytes.substr(0, image_bytes.size() - 100)));
  expect_invalid("truncated IDX", v1::IDX,
                 {{v1::TRAIN_IMAGES, dir + "/truncated.idx"}, {v1::TRAIN_LABELS, labels}},
                 "TRAIN_IMAGES");
  std::string wrong_magic = image_bytes;
  wrong_magic[2] = 0x0d;
  ASSERT_OK(WriteFileAtomic(dir + "/magic.idx", wrong_magic));
  expect_invalid("wrong magic", v1::IDX,
                 {{v1::TRAIN_IMAGES, dir + "/magic.idx"}, {v1::TRAIN_LABELS, labels}},
                 "TRAIN_IMAGES");
  expect_invalid("label out of range", v1::IDX,
                 {{v1::TRAIN_IMAGES, images}, {v1::TRAIN_LABELS, labels}}, "outside",
                 {"only-one"});

  std::string corrupt = TinyPng(3);
  for (size_t i = corrupt.size() / 2; i < corrupt.size() - 12; ++i) corrupt[i] ^= 0x5a;
  ASSERT_OK(WriteTar(dir + "/corrupt.tar", {{"cat/a.png", TinyPng(1)},
                                            {"dog/b.png", TinyPng(2)},
                                            {"dog/broken.png", corrupt}}));
  expect_invalid("corrupt PNG", v1::IMAGE_FOLDER_TAR,
                 {{v1::TRAIN_ARCHIVE, dir + "/corrupt.tar"}}, "broken.png");
  ASSERT_OK(WriteTar(dir + "/escape.tar", {{"cat/a.png", TinyPng(1)},
                                           {"../dog/b.png", TinyPng(2)}}));
  expect_invalid("escaping entry", v1::IMAGE_FOLDER_TAR,
                 {{v1::TRAIN_ARCHIVE, dir + "/escape.tar"}}, "../dog/b.png");

  ASSERT_OK(WriteFileAtomic(dir + "/not_torchscript.pt", "this is not a zip file"));
  v1::InputSpec spec;
  spec.set_channels(1);
  spec.set_height(28);
  spec.set_width(28);
  spec.add_mean(0.5f);
  spec.add_std(0.25f);
  auto bad_backbone = cluster_.client().UploadBackbone("bad", dir + "/not_torchscript.pt", spec, "");
  EXPECT_EQ(bad_backbone.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad_backbone.status().message(), "TorchScript"));

  // A good archive still works, the server is healthy, and only the good
  // uploads are stored.
  ASSERT_OK(WriteTar(dir + "/good.tar", {{"cat/a.png", TinyPng(1)},
                                         {"dog/b.png", TinyPng(2)}}));
  auto archive = cluster_.client().UploadDatasetFiles(
      "pets", v1::IMAGE_FOLDER_TAR, {{v1::TRAIN_ARCHIVE, dir + "/good.tar"}}, {}, "");
  ASSERT_OK(archive.status());
  EXPECT_EQ(archive->class_names_size(), 2);
  ASSERT_OK(cluster_.client().CheckHealth());
  auto datasets = cluster_.client().ListDatasets();
  ASSERT_OK(datasets.status());
  EXPECT_EQ(datasets->size(), 2u);
  EXPECT_EQ(cluster_.client().ListBackbones()->size(), 0u);
}

}  // namespace
}  // namespace tlserve::testing
