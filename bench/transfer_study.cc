// transfer_study: runs the transfer-learning study (bench/transfer_study_lib.h)
// against a running tlserve. bench/run_transfer_study.sh starts one.
//
//   transfer_study --server=127.0.0.1:PORT --shots=1,5,20 --quick

#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/transfer_study_lib.h"
#include "client/client.h"
#include "common/file_util.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "tlserve host:port");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Fashion-MNIST IDX files (train-/t10k-*-ubyte.gz)");
ABSL_FLAG(std::string, splits, "related,naive", "splits: related, naive");
ABSL_FLAG(std::string, shots, "1,5,20,100,all",
          "labelled images per target class (validation included)");
ABSL_FLAG(std::string, arms, "scratch,frozen,last_block,full_low_lr,gradual",
          "recipes to compare");
ABSL_FLAG(std::string, seeds, "1,2,3", "seeds");
ABSL_FLAG(bool, quick, false,
          "60 optimizer steps per job (epochs in [3, 30]) instead of 150 "
          "(epochs in [5, 60])");
ABSL_FLAG(int32_t, pretrain_samples, 1000, "source images per class");
ABSL_FLAG(int32_t, pretrain_epochs, 3, "source pretraining epochs");
ABSL_FLAG(double, tta_threshold, 0.7,
          "validation accuracy for time-to-accuracy");
ABSL_FLAG(std::string, out_dir, "var/transfer_study",
          "where transfer_study.{json,md,png} go");
ABSL_FLAG(std::string, replot, "",
          "a transfer_study.json: re-draw its table (to stdout and "
          "--out_dir) and chart without a server, at --tta_threshold");
ABSL_FLAG(std::string, device, "", "cpu or cuda; empty: the server's choice");

namespace {

// Table and chart from a saved JSON; the time-to-accuracy column uses the
// threshold the rows were measured at.
int Replot(const std::string& json_path,
           const tlserve::bench::StudyOptions& options) {
  using namespace tlserve::bench;
  absl::StatusOr<std::string> json = tlserve::ReadFile(json_path);
  if (!json.ok()) {
    std::cerr << json.status() << "\n";
    return 1;
  }
  absl::StatusOr<std::vector<StudyRow>> rows = RowsFromJson(*json);
  if (!rows.ok()) {
    std::cerr << json_path << ": " << rows.status() << "\n";
    return 1;
  }
  const std::vector<StudyCell> cells = SummarizeRows(*rows);
  const std::string table = FormatMarkdownTable(cells, options.tta_threshold);
  std::cout << table;
  absl::StatusOr<tlserve::plot::Canvas> chart = DrawStudyChart(cells);
  absl::StatusOr<std::string> png =
      chart.ok() ? chart->EncodePng() : chart.status();
  const std::string base = options.out_dir + "/transfer_study";
  absl::Status status = png.status();
  if (status.ok()) status = tlserve::MakeDirs(options.out_dir);
  if (status.ok()) status = tlserve::WriteFileAtomic(base + ".md", table);
  if (status.ok()) status = tlserve::WriteFileAtomic(base + ".png", *png);
  if (!status.ok()) {
    std::cerr << status << "\n";
    return 1;
  }
  std::cout << "wrote " << base << ".{md,png}\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Transfer-learning study on Fashion-MNIST against a running tlserve; "
      "see docs/benchmarks.md");
  std::vector<std::string> command_words(argv, argv + argc);
  absl::ParseCommandLine(argc, argv);
  tlserve::bench::StudyOptions options;
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.splits = absl::StrSplit(absl::GetFlag(FLAGS_splits), ',',
                                  absl::SkipWhitespace());
  options.arms = absl::StrSplit(absl::GetFlag(FLAGS_arms), ',',
                                absl::SkipWhitespace());
  absl::StatusOr<std::vector<int>> shots =
      tlserve::bench::ParseShots(absl::GetFlag(FLAGS_shots));
  if (!shots.ok()) {
    std::cerr << shots.status().message() << "\n";
    return 1;
  }
  options.shots = *shots;
  options.seeds.clear();
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_seeds), ',',
                                            absl::SkipWhitespace())) {
    uint64_t seed = 0;
    if (!absl::SimpleAtoi(s, &seed)) {
      std::cerr << "--seeds: '" << s << "' is not a number\n";
      return 1;
    }
    options.seeds.push_back(seed);
  }
  options.quick = absl::GetFlag(FLAGS_quick);
  options.pretrain_samples = absl::GetFlag(FLAGS_pretrain_samples);
  options.pretrain_epochs = absl::GetFlag(FLAGS_pretrain_epochs);
  options.tta_threshold = absl::GetFlag(FLAGS_tta_threshold);
  options.out_dir = absl::GetFlag(FLAGS_out_dir);
  options.device = absl::GetFlag(FLAGS_device);

  if (const std::string json_path = absl::GetFlag(FLAGS_replot);
      !json_path.empty()) {
    return Replot(json_path, options);
  }

  tlserve::Client::Options client_options;
  client_options.target = absl::GetFlag(FLAGS_server);
  auto client = tlserve::Client::Connect(client_options);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  if (absl::Status health = (*client)->WaitUntilHealthy(absl::Seconds(30));
      !health.ok()) {
    std::cerr << "tlserve at " << client_options.target
              << " is not healthy: " << health << "\n";
    return 1;
  }
  absl::StatusOr<int> rc = tlserve::bench::RunStudy(
      **client, options, absl::StrJoin(command_words, " "), std::cout);
  if (!rc.ok()) {
    std::cerr << "transfer_study: " << rc.status() << "\n";
    return 1;
  }
  return *rc;
}
