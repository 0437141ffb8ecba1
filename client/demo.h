#ifndef TLSERVE_CLIENT_DEMO_H_
#define TLSERVE_CLIENT_DEMO_H_

// `tlctl demo`: the end-to-end transfer-learning experiment on
// Fashion-MNIST. A compact ResNet is pretrained on five source classes
// (T-shirt/top, Trouser, Sandal, Bag, Ankle boot), then reused with a few
// labelled images per class on five target classes (Pullover, Dress, Coat,
// Shirt, Sneaker), against the same network trained from scratch on the
// same images. The answer is a table and var/demo_summary.json.

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::cli {

struct DemoOptions {
  // train-/t10k-{images-idx3,labels-idx1}-ubyte.gz (Debian's
  // dataset-fashion-mnist package).
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  // Labelled training images per target class (validation comes out of
  // these).
  int shots = 10;
  std::vector<uint64_t> seeds = {1, 2, 3};
  // Source-task images per class for pretraining (5 classes).
  int pretrain_samples = 1000;
  int pretrain_epochs = 3;
  // Fine-tune epochs, the same for every arm.
  int epochs = 30;
  std::string summary_path = "var/demo_summary.json";
  // "" lets the server choose; "cpu" or "cuda" pins every job.
  std::string device;
  // Upper bound on waiting for each job.
  absl::Duration job_timeout = absl::Hours(3);
  // Live progress bar for the pretrain job.
  bool tty = false;
};

// Fashion-MNIST's ten class names, by label.
const std::vector<std::string>& FashionMnistClassNames();
// Source (pretrain) and target (fine-tune) label sets.
const std::vector<int32_t>& DemoSourceClasses();
const std::vector<int32_t>& DemoTargetClasses();
// The three arms, in the order they are reported.
const std::vector<std::string>& DemoArmNames();

v1::JobSpec DemoPretrainSpec(const DemoOptions& options,
                             const std::string& dataset_id);
// INVALID_ARGUMENT for an unknown arm.
absl::StatusOr<v1::JobSpec> DemoArmSpec(const std::string& arm,
                                        const DemoOptions& options,
                                        const std::string& dataset_id,
                                        const std::string& backbone_id,
                                        uint64_t seed);

// --- Summary: pure functions, tested without a server ---

struct MeanStd {
  double mean = 0;
  // Sample standard deviation (n - 1): the seeds are a sample of the
  // run-to-run spread. 0 for fewer than two values.
  double std = 0;
};
MeanStd ComputeMeanStd(const std::vector<double>& values);

struct SeedRun {
  uint64_t seed = 0;
  std::string job_id;
  double test_accuracy = 0;
  double seconds = 0;
};

struct ArmSummary {
  std::string name;
  std::vector<SeedRun> runs;
  double test_accuracy_mean = 0;
  double test_accuracy_std = 0;
  double seconds_mean = 0;
};
ArmSummary SummarizeArm(std::string name, std::vector<SeedRun> runs);

struct DemoSummary {
  std::vector<ArmSummary> arms;
  int shots = 0;
  std::string pretrain_job_id;
  std::string backbone_id;
  double pretrain_seconds = 0;
};

// The non-scratch arm with the highest mean test accuracy; nullptr if none.
const ArmSummary* BestTransferArm(const DemoSummary& summary);
// The JSON document of var/demo_summary.json (shape documented in
// docs/ and in the demo's --help): transfer, scratch, arms, shots, pretrain.
std::string DemoSummaryToJson(const DemoSummary& summary);
// The human-readable table: arm, accuracy mean ± std, mean seconds.
std::string FormatDemoTable(const DemoSummary& summary);

// Runs the whole demo against `client`. Returns the exit status (0 when
// every job succeeded); errors that stop the demo are returned as a status.
absl::StatusOr<int> RunDemo(Client& client, const DemoOptions& options,
                            std::ostream& out);

}  // namespace tlserve::cli

#endif  // TLSERVE_CLIENT_DEMO_H_
