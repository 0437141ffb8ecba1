#ifndef TLSERVE_BENCH_TRANSFER_STUDY_LIB_H_
#define TLSERVE_BENCH_TRANSFER_STUDY_LIB_H_

// `transfer_study`: the full form of `tlctl demo` (client/demo.h). On
// Fashion-MNIST, for two source/target splits, it pretrains a compact
// ResNet on the source classes, then fine-tunes it on the target classes
// with 1, 5, 20, 100 or all labelled images per class under five recipes
// ("arms"), several seeds each, and reports test accuracy, wall time and
// time-to-accuracy per (split, labels, arm) cell as JSON, a markdown table
// and a PNG chart.
//
// Everything but RunStudy is a pure function, tested without a server
// (tests/bench/transfer_study_test.cc).

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "common/plot.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::bench {

// A source task (pretrained) and a target task (fine-tuned), by label.
struct Split {
  std::string name;
  std::vector<int32_t> source;
  std::vector<int32_t> target;
};

// "related": source {0 T-shirt, 1 Trouser, 5 Sandal, 8 Bag, 9 Ankle boot},
// target {2 Pullover, 3 Dress, 4 Coat, 6 Shirt, 7 Sneaker} (the demo's).
// "naive": source 0-4, target 5-9: the target's footwear and bags share
// little with the source's clothes, the negative-transfer counter-example.
const std::vector<Split>& StudySplits();
// scratch, frozen, last_block, full_low_lr, gradual: the report's order.
const std::vector<std::string>& StudyArmNames();

// Labels per class meaning "every training image of the class".
inline constexpr int kAllShots = 0;

struct StudyOptions {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  // Names from StudySplits().
  std::vector<std::string> splits = {"related", "naive"};
  // Labelled images per target class (validation comes out of these);
  // kAllShots for all.
  std::vector<int> shots = {1, 5, 20, 100, kAllShots};
  std::vector<std::string> arms = StudyArmNames();
  std::vector<uint64_t> seeds = {1, 2, 3};
  // Fewer optimizer steps per job (see StudyEpochs) for a grid that
  // finishes in minutes.
  bool quick = false;
  // Source pretraining, per split: images per class, epochs.
  int pretrain_samples = 1000;
  int pretrain_epochs = 3;
  // Time-to-accuracy: validation accuracy to reach.
  double tta_threshold = 0.7;
  // transfer_study.json, transfer_study.md and transfer_study.png go here.
  std::string out_dir = "var/transfer_study";
  // "" lets the server choose; "cpu" or "cuda" pins every job.
  std::string device;
  absl::Duration job_timeout = absl::Hours(3);
};

// "1,5,20,all" -> {1, 5, 20, kAllShots}. INVALID_ARGUMENT names a bad item.
absl::StatusOr<std::vector<int>> ParseShots(const std::string& text);
// "1" ... or "all".
std::string ShotsLabel(int shots);

// --- Epoch rule (documented in docs/benchmarks.md) ---
// Fashion-MNIST has 6000 training images per class.
inline constexpr int kTrainImagesPerClass = 6000;
// Training images per class after the 20% validation hold-out (at least 1
// validation image once there are 2; none at 1 label).
int TrainImagesPerClass(int shots);
// 16 up to 20 labels per class, 64 above.
int StudyBatchSize(int shots);
// Enough epochs for a target number of optimizer steps, so that 1 label
// per class (one batch per epoch) still trains: ceil(target / steps per
// epoch) clamped to [min, max]. Full: target 150 steps, epochs in [5, 60];
// quick: target 60 steps, epochs in [3, 30].
int StudyEpochs(int shots, int num_classes, bool quick);

// --- Specs ---
v1::JobSpec StudyPretrainSpec(const Split& split, const StudyOptions& options,
                              const std::string& dataset_id);
// The demo's recipes (client/demo.cc) for scratch, frozen and last_block;
// full_low_lr and gradual start from last_block's. INVALID_ARGUMENT for an
// unknown arm.
absl::StatusOr<v1::JobSpec> StudyArmSpec(const std::string& arm,
                                         const Split& split, int shots,
                                         uint64_t seed,
                                         const StudyOptions& options,
                                         const std::string& dataset_id,
                                         const std::string& backbone_id);

// --- Results ---

// One finished fine-tune job.
struct StudyRow {
  std::string split;
  std::string arm;
  int shots = 0;
  uint64_t seed = 0;
  std::string job_id;
  int epochs = 0;
  double test_accuracy = 0;
  // Job start to end.
  double wall_seconds = 0;
  // Sum of the per-epoch seconds up to the first epoch whose validation
  // accuracy reached the threshold; negative when none did (or there was
  // no validation set).
  double tta_seconds = -1;
};

// Seconds until `metrics` first reach `threshold` validation accuracy
// (per-epoch `seconds` summed); -1 if never. Epochs with an empty
// validation set report accuracy 0 and never count.
double TimeToAccuracy(const google::protobuf::RepeatedPtrField<v1::EpochMetrics>&
                          metrics,
                      double threshold);

// One (split, shots, arm) cell over its seeds.
struct StudyCell {
  std::string split;
  int shots = 0;
  std::string arm;
  int runs = 0;
  double accuracy_mean = 0;
  double accuracy_std = 0;  // sample std (n - 1), 0 for one run
  double wall_seconds_mean = 0;
  // Over the runs that reached the threshold; tta_reached of `runs` did.
  double tta_seconds_mean = -1;
  int tta_reached = 0;
};

// Cells in the order splits, then shots, then arms first appear in `rows`.
std::vector<StudyCell> SummarizeRows(const std::vector<StudyRow>& rows);
// The scratch cell of the same split and shots; nullptr if none.
const StudyCell* FindScratch(const std::vector<StudyCell>& cells,
                             const StudyCell& cell);

// Markdown: split, labels/class, arm, test accuracy mean ± std, the
// difference to scratch in points, wall seconds, time-to-accuracy.
std::string FormatMarkdownTable(const std::vector<StudyCell>& cells,
                                double tta_threshold);

struct StudyMeta {
  std::string date;
  std::string command;
  double tta_threshold = 0;
  bool quick = false;
  // Per split: pretrain job, backbone, source test accuracy, seconds.
  struct Pretrain {
    std::string split;
    std::string job_id;
    std::string backbone_id;
    double source_test_accuracy = 0;
    double seconds = 0;
  };
  std::vector<Pretrain> pretrains;
};
// {"meta": {...}, "pretrain": [...], "rows": [...], "cells": [...]}
std::string StudyToJson(const StudyMeta& meta,
                        const std::vector<StudyRow>& rows,
                        const std::vector<StudyCell>& cells);

// One panel per split: test accuracy against log10(labels per class), one
// line per arm ("all" is drawn at 6000).
absl::StatusOr<plot::Canvas> DrawStudyChart(
    const std::vector<StudyCell>& cells);

// The per-seed rows of a StudyToJson document (one row per line, as it
// writes them), for re-drawing the table and chart without re-running.
absl::StatusOr<std::vector<StudyRow>> RowsFromJson(const std::string& json);

// Runs the grid against `client`: upload, one pretrain per split, every
// fine-tune job (all submitted, then awaited), then writes the three files
// under options.out_dir. Returns 0 when every job succeeded, 2 otherwise.
absl::StatusOr<int> RunStudy(Client& client, const StudyOptions& options,
                             const std::string& command, std::ostream& out);

}  // namespace tlserve::bench

#endif  // TLSERVE_BENCH_TRANSFER_STUDY_LIB_H_
