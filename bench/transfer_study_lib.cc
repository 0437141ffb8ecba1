#include "bench/transfer_study_lib.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <tuple>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "client/demo.h"
#include "client/job_progress.h"
#include "client/tlctl_commands.h"
#include "common/file_util.h"
#include "common/proto_time.h"
#include "common/status_macros.h"

namespace tlserve::bench {
namespace {

using cli::DemoOptions;

// The demo's fine-tune recipe with this study's labels, epochs and batch.
DemoOptions DemoOptionsFor(const StudyOptions& options, int shots) {
  DemoOptions demo;
  demo.data_dir = options.data_dir;
  demo.shots = shots;
  demo.pretrain_samples = options.pretrain_samples;
  demo.pretrain_epochs = options.pretrain_epochs;
  demo.device = options.device;
  return demo;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppend(&out, absl::StrFormat("\\u%04x", c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  return absl::StrFormat("%.6g", v);
}

double JobWallSeconds(const v1::Job& job) {
  if (job.start_time().seconds() > 0 && job.end_time().seconds() > 0) {
    return absl::ToDoubleSeconds(FromProtoTime(job.end_time()) -
                                 FromProtoTime(job.start_time()));
  }
  return job.result().train_seconds();
}

const Split* FindSplit(const std::string& name) {
  for (const Split& split : StudySplits()) {
    if (split.name == name) return &split;
  }
  return nullptr;
}

}  // namespace

const std::vector<Split>& StudySplits() {
  static const auto* splits = new std::vector<Split>{
      {"related", cli::DemoSourceClasses(), cli::DemoTargetClasses()},
      {"naive", {0, 1, 2, 3, 4}, {5, 6, 7, 8, 9}},
  };
  return *splits;
}

const std::vector<std::string>& StudyArmNames() {
  static const auto* names = new std::vector<std::string>{
      "scratch", "frozen", "last_block", "full_low_lr", "gradual", "few_shot"};
  return *names;
}

absl::StatusOr<std::vector<int>> ParseShots(const std::string& text) {
  std::vector<int> shots;
  for (absl::string_view item :
       absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    item = absl::StripAsciiWhitespace(item);
    int value = 0;
    if (item == "all") {
      shots.push_back(kAllShots);
    } else if (absl::SimpleAtoi(item, &value) && value > 0 &&
               value <= kTrainImagesPerClass) {
      shots.push_back(value);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "--shots: '", item, "' is neither 'all' nor a count in [1, ",
          kTrainImagesPerClass, "]"));
    }
  }
  if (shots.empty()) {
    return absl::InvalidArgumentError(
        "--shots is empty; give e.g. --shots=1,5,20,100,all");
  }
  return shots;
}

std::string ShotsLabel(int shots) {
  return shots == kAllShots ? "all" : absl::StrCat(shots);
}

int TrainImagesPerClass(int shots) {
  const int n = shots == kAllShots ? kTrainImagesPerClass : shots;
  if (n < 2) return n;
  // Mirrors common/data_split.cc: round(0.2 n), at least 1, at most n - 1.
  int val = static_cast<int>(std::floor(n * 0.2 + 0.5));
  val = std::clamp(val, 1, n - 1);
  return n - val;
}

int StudyBatchSize(int shots) {
  return shots != kAllShots && shots <= 20 ? 16 : 64;
}

int StudyEpochs(int shots, int num_classes, bool quick) {
  const int target_steps = quick ? 60 : 150;
  const int min_epochs = quick ? 3 : 5;
  const int max_epochs = quick ? 30 : 60;
  const int images = TrainImagesPerClass(shots) * num_classes;
  const int batch = StudyBatchSize(shots);
  const int steps_per_epoch = std::max(1, (images + batch - 1) / batch);
  const int epochs = (target_steps + steps_per_epoch - 1) / steps_per_epoch;
  return std::clamp(epochs, min_epochs, max_epochs);
}

v1::JobSpec StudyPretrainSpec(const Split& split, const StudyOptions& options,
                              const std::string& dataset_id) {
  v1::JobSpec spec =
      cli::DemoPretrainSpec(DemoOptionsFor(options, 0), dataset_id);
  spec.set_display_name(absl::StrCat("study-", split.name, "-pretrain"));
  spec.mutable_data()->clear_class_subset();
  for (int32_t c : split.source) spec.mutable_data()->add_class_subset(c);
  spec.mutable_pretrain()->set_backbone_name(
      absl::StrCat("fmnist-", split.name, "-source-resnet"));
  return spec;
}

absl::StatusOr<v1::JobSpec> StudyArmSpec(const std::string& arm,
                                         const Split& split, int shots,
                                         uint64_t seed,
                                         const StudyOptions& options,
                                         const std::string& dataset_id,
                                         const std::string& backbone_id) {
  const std::string base = arm == "scratch" || arm == "frozen" ? arm
                           : arm == "few_shot"                  ? "frozen"
                                                                : "last_block";
  if (std::find(StudyArmNames().begin(), StudyArmNames().end(), arm) ==
      StudyArmNames().end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown study arm '", arm,
                     "' (known: ", absl::StrJoin(StudyArmNames(), ", "), ")"));
  }
  ASSIGN_OR_RETURN(v1::JobSpec spec,
                   cli::DemoArmSpec(base, DemoOptionsFor(options, shots),
                                    dataset_id, backbone_id, seed));
  const int epochs =
      StudyEpochs(shots, static_cast<int>(split.target.size()), options.quick);
  spec.set_display_name(absl::StrCat("study-", split.name, "-",
                                     ShotsLabel(shots), "-", arm, "-seed",
                                     seed));
  spec.mutable_data()->clear_class_subset();
  for (int32_t c : split.target) spec.mutable_data()->add_class_subset(c);
  spec.set_epochs(epochs);
  spec.set_batch_size(StudyBatchSize(shots));
  v1::FreezePolicy* freeze = spec.mutable_freeze();
  if (arm == "few_shot") {
    // No training: the class means of the frozen source backbone's
    // features. Every labelled image is an example (nothing to validate).
    spec.set_kind(v1::FEW_SHOT);
    spec.set_epochs(0);
    spec.mutable_data()->set_validation_fraction(0);
    spec.clear_augment();
    spec.clear_early_stopping();
    spec.clear_schedule();
    spec.mutable_head()->clear_hidden_sizes();
    freeze->set_mode(v1::FreezePolicy::FROZEN);
    freeze->clear_gradual_unfreeze();
    return spec;
  }
  if (arm == "full_low_lr") {
    // Everything trains, the backbone at a tenth of the head's 1e-2.
    freeze->set_mode(v1::FreezePolicy::FULL);
    freeze->set_n_blocks(0);
    freeze->set_backbone_lr_scale(0.1f);
  } else if (arm == "gradual") {
    // Head only first, then the last block from 1/3 of the epochs, the last
    // two from 2/3 (ULMFiT-style), backbone at 0.1x. Steps must have
    // increasing epochs, so short runs drop repeats.
    // The base mode is the first step's (head only); the steps override it.
    freeze->set_mode(v1::FreezePolicy::FROZEN);
    freeze->set_n_blocks(0);
    freeze->set_backbone_lr_scale(0.1f);
    int previous = 0;
    for (int k = 0; k < 3; ++k) {
      const int epoch = 1 + k * epochs / 3;
      if (epoch <= previous) continue;
      v1::UnfreezeStep* step = freeze->add_gradual_unfreeze();
      step->set_epoch(epoch);
      step->set_n_blocks(k);
      previous = epoch;
    }
  }
  return spec;
}

double TimeToAccuracy(
    const google::protobuf::RepeatedPtrField<v1::EpochMetrics>& metrics,
    double threshold) {
  double seconds = 0;
  for (const v1::EpochMetrics& m : metrics) {
    seconds += m.seconds();
    // A job without validation data reports 0 (and no per-class numbers).
    if (m.per_class_val_accuracy_size() == 0 && m.per_class_size() == 0) {
      continue;
    }
    if (m.val_accuracy() >= threshold) return seconds;
  }
  return -1;
}

std::vector<StudyCell> SummarizeRows(const std::vector<StudyRow>& rows) {
  std::vector<std::tuple<std::string, int, std::string>> order;
  std::map<std::tuple<std::string, int, std::string>, std::vector<StudyRow>>
      groups;
  std::vector<std::string> split_order;
  std::vector<int> shot_order;
  std::vector<std::string> arm_order;
  auto note = [](auto& list, const auto& v) {
    if (std::find(list.begin(), list.end(), v) == list.end()) list.push_back(v);
  };
  for (const StudyRow& row : rows) {
    note(split_order, row.split);
    note(shot_order, row.shots);
    note(arm_order, row.arm);
    groups[{row.split, row.shots, row.arm}].push_back(row);
  }
  std::vector<StudyCell> cells;
  for (const std::string& split : split_order) {
    for (int shots : shot_order) {
      for (const std::string& arm : arm_order) {
        auto it = groups.find({split, shots, arm});
        if (it == groups.end()) continue;
        StudyCell cell;
        cell.split = split;
        cell.shots = shots;
        cell.arm = arm;
        std::vector<double> accuracy, wall, tta;
        for (const StudyRow& row : it->second) {
          accuracy.push_back(row.test_accuracy);
          wall.push_back(row.wall_seconds);
          if (row.tta_seconds >= 0) tta.push_back(row.tta_seconds);
        }
        cell.runs = static_cast<int>(accuracy.size());
        cli::MeanStd acc = cli::ComputeMeanStd(accuracy);
        cell.accuracy_mean = acc.mean;
        cell.accuracy_std = acc.std;
        cell.wall_seconds_mean = cli::ComputeMeanStd(wall).mean;
        cell.tta_reached = static_cast<int>(tta.size());
        cell.tta_seconds_mean =
            tta.empty() ? -1 : cli::ComputeMeanStd(tta).mean;
        cells.push_back(std::move(cell));
      }
    }
  }
  return cells;
}

const StudyCell* FindScratch(const std::vector<StudyCell>& cells,
                             const StudyCell& cell) {
  for (const StudyCell& c : cells) {
    if (c.split == cell.split && c.shots == cell.shots && c.arm == "scratch") {
      return &c;
    }
  }
  return nullptr;
}

std::string FormatMarkdownTable(const std::vector<StudyCell>& cells,
                                double tta_threshold) {
  std::string out = absl::StrFormat(
      "| split | labels/class | arm | test accuracy, mean ± std | vs scratch "
      "(points) | wall s | s to val acc %.2f (runs reaching it) |\n",
      tta_threshold);
  absl::StrAppend(&out, "|---|---|---|---|---|---|---|\n");
  for (const StudyCell& cell : cells) {
    const StudyCell* scratch = FindScratch(cells, cell);
    std::string delta = "";
    if (scratch != nullptr && scratch != &cell) {
      delta = absl::StrFormat(
          "%+.1f", 100 * (cell.accuracy_mean - scratch->accuracy_mean));
    }
    const std::string tta =
        cell.tta_reached == 0
            ? absl::StrFormat("- (0/%d)", cell.runs)
            : absl::StrFormat("%.2f (%d/%d)", cell.tta_seconds_mean,
                              cell.tta_reached, cell.runs);
    absl::StrAppendFormat(&out, "| %s | %s | %s | %.3f ± %.3f | %s | %.1f | %s |\n",
                          cell.split, ShotsLabel(cell.shots), cell.arm,
                          cell.accuracy_mean, cell.accuracy_std, delta,
                          cell.wall_seconds_mean, tta);
  }
  return out;
}

std::string StudyToJson(const StudyMeta& meta,
                        const std::vector<StudyRow>& rows,
                        const std::vector<StudyCell>& cells) {
  std::string j = "{\n  \"meta\": {";
  absl::StrAppend(&j, "\"date\": ", JsonString(meta.date),
                  ", \"command\": ", JsonString(meta.command),
                  ", \"tta_threshold\": ", JsonNumber(meta.tta_threshold),
                  ", \"quick\": ", meta.quick ? "true" : "false", "},\n");
  absl::StrAppend(&j, "  \"pretrain\": [");
  for (size_t i = 0; i < meta.pretrains.size(); ++i) {
    const StudyMeta::Pretrain& p = meta.pretrains[i];
    absl::StrAppend(&j, i == 0 ? "\n" : ",\n", "    {\"split\": ",
                    JsonString(p.split), ", \"job_id\": ", JsonString(p.job_id),
                    ", \"backbone_id\": ", JsonString(p.backbone_id),
                    ", \"source_test_accuracy\": ",
                    JsonNumber(p.source_test_accuracy),
                    ", \"seconds\": ", JsonNumber(p.seconds), "}");
  }
  absl::StrAppend(&j, meta.pretrains.empty() ? "],\n" : "\n  ],\n");
  absl::StrAppend(&j, "  \"rows\": [");
  for (size_t i = 0; i < rows.size(); ++i) {
    const StudyRow& r = rows[i];
    absl::StrAppend(
        &j, i == 0 ? "\n" : ",\n", "    {\"split\": ", JsonString(r.split),
        ", \"shots\": ", JsonString(ShotsLabel(r.shots)),
        ", \"arm\": ", JsonString(r.arm), ", \"seed\": ", r.seed,
        ", \"job_id\": ", JsonString(r.job_id), ", \"epochs\": ", r.epochs,
        ", \"test_accuracy\": ", JsonNumber(r.test_accuracy),
        ", \"wall_seconds\": ", JsonNumber(r.wall_seconds),
        ", \"tta_seconds\": ",
        r.tta_seconds >= 0 ? JsonNumber(r.tta_seconds) : "null", "}");
  }
  absl::StrAppend(&j, rows.empty() ? "],\n" : "\n  ],\n");
  absl::StrAppend(&j, "  \"cells\": [");
  for (size_t i = 0; i < cells.size(); ++i) {
    const StudyCell& c = cells[i];
    absl::StrAppend(
        &j, i == 0 ? "\n" : ",\n", "    {\"split\": ", JsonString(c.split),
        ", \"shots\": ", JsonString(ShotsLabel(c.shots)),
        ", \"arm\": ", JsonString(c.arm), ", \"runs\": ", c.runs,
        ", \"test_accuracy_mean\": ", JsonNumber(c.accuracy_mean),
        ", \"test_accuracy_std\": ", JsonNumber(c.accuracy_std),
        ", \"wall_seconds_mean\": ", JsonNumber(c.wall_seconds_mean),
        ", \"tta_seconds_mean\": ",
        c.tta_reached > 0 ? JsonNumber(c.tta_seconds_mean) : "null",
        ", \"tta_reached\": ", c.tta_reached, "}");
  }
  absl::StrAppend(&j, cells.empty() ? "]\n}\n" : "\n  ]\n}\n");
  return j;
}

absl::StatusOr<plot::Canvas> DrawStudyChart(
    const std::vector<StudyCell>& cells) {
  static const plot::Rgb kColors[] = {plot::kBlack, plot::kBlue, plot::kOrange,
                                      plot::kGreen, plot::kRed,
                                      plot::Rgb{148, 103, 189}};
  std::vector<std::string> splits;
  std::vector<std::string> arms;
  for (const StudyCell& c : cells) {
    if (std::find(splits.begin(), splits.end(), c.split) == splits.end()) {
      splits.push_back(c.split);
    }
    if (std::find(arms.begin(), arms.end(), c.arm) == arms.end()) {
      arms.push_back(c.arm);
    }
  }
  std::vector<plot::LinePanel> panels;
  for (const std::string& split : splits) {
    plot::LinePanel panel;
    panel.title = absl::StrCat(split, ": test accuracy");
    panel.x_label = "log10(labels per class)";
    // The data's range: the arms differ by a few points, which [0, 1] hides.
    for (size_t a = 0; a < arms.size(); ++a) {
      plot::Series series;
      series.name = arms[a];
      series.color = kColors[a % (sizeof(kColors) / sizeof(kColors[0]))];
      std::vector<std::pair<double, double>> points;
      for (const StudyCell& c : cells) {
        if (c.split != split || c.arm != arms[a]) continue;
        const int n = c.shots == kAllShots ? kTrainImagesPerClass : c.shots;
        points.emplace_back(std::log10(static_cast<double>(n)),
                            c.accuracy_mean);
      }
      std::sort(points.begin(), points.end());
      for (const auto& [x, y] : points) {
        series.x.push_back(x);
        series.y.push_back(y);
      }
      panel.series.push_back(std::move(series));
    }
    panels.push_back(std::move(panel));
  }
  // The legend is one unwrapped row under each panel: wide enough for five
  // arm names.
  return plot::DrawLineCharts(panels, /*panel_width=*/820,
                              /*panel_height=*/380);
}

namespace {

// The raw text after `"key": ` on `line`, up to the next ',' or '}'.
std::string JsonField(const std::string& line, const std::string& key) {
  const std::string tag = absl::StrCat("\"", key, "\": ");
  size_t at = line.find(tag);
  if (at == std::string::npos) return "";
  at += tag.size();
  size_t end = line.find_first_of(",}", at);
  std::string value = line.substr(at, end - at);
  if (value.size() >= 2 && value.front() == '"') {
    value = value.substr(1, value.size() - 2);
  }
  return value;
}

}  // namespace

absl::StatusOr<std::vector<StudyRow>> RowsFromJson(const std::string& json) {
  std::vector<StudyRow> rows;
  for (absl::string_view piece : absl::StrSplit(json, '\n')) {
    const std::string line(piece);
    // Rows have a seed; cells do not.
    if (line.find("\"split\": ") == std::string::npos ||
        line.find("\"seed\": ") == std::string::npos) {
      continue;
    }
    StudyRow row;
    row.split = JsonField(line, "split");
    row.arm = JsonField(line, "arm");
    row.job_id = JsonField(line, "job_id");
    ASSIGN_OR_RETURN(std::vector<int> shots,
                     ParseShots(JsonField(line, "shots")));
    row.shots = shots[0];
    const std::string tta = JsonField(line, "tta_seconds");
    if (!absl::SimpleAtoi(JsonField(line, "seed"), &row.seed) ||
        !absl::SimpleAtoi(JsonField(line, "epochs"), &row.epochs) ||
        !absl::SimpleAtod(JsonField(line, "test_accuracy"),
                          &row.test_accuracy) ||
        !absl::SimpleAtod(JsonField(line, "wall_seconds"),
                          &row.wall_seconds) ||
        (tta != "null" && !absl::SimpleAtod(tta, &row.tta_seconds))) {
      return absl::InvalidArgumentError(
          absl::StrCat("study JSON: cannot read the row '", line, "'"));
    }
    rows.push_back(std::move(row));
  }
  if (rows.empty()) {
    return absl::InvalidArgumentError("study JSON: no rows found");
  }
  return rows;
}

absl::StatusOr<int> RunStudy(Client& client, const StudyOptions& options,
                             const std::string& command, std::ostream& out) {
  std::vector<const Split*> splits;
  for (const std::string& name : options.splits) {
    const Split* split = FindSplit(name);
    if (split == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--splits: unknown split '", name,
                       "' (known: related, naive)"));
    }
    splits.push_back(split);
  }
  for (const std::string& arm : options.arms) {
    if (std::find(StudyArmNames().begin(), StudyArmNames().end(), arm) ==
        StudyArmNames().end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--arms: unknown arm '", arm,
          "' (known: ", absl::StrJoin(StudyArmNames(), ", "), ")"));
    }
  }
  const std::string run_id =
      absl::StrFormat("%x", absl::ToUnixNanos(absl::Now()));
  StudyMeta meta;
  meta.date = absl::FormatTime("%Y-%m-%d %H:%M UTC", absl::Now(),
                               absl::UTCTimeZone());
  meta.command = command;
  meta.tta_threshold = options.tta_threshold;
  meta.quick = options.quick;

  const std::string& dir = options.data_dir;
  out << "== uploading Fashion-MNIST from " << dir << "\n";
  ASSIGN_OR_RETURN(v1::Dataset dataset,
                   client.UploadDatasetFiles(
                       "fashion-mnist", v1::IDX,
                       {{v1::TRAIN_IMAGES, dir + "/train-images-idx3-ubyte.gz"},
                        {v1::TRAIN_LABELS, dir + "/train-labels-idx1-ubyte.gz"},
                        {v1::TEST_IMAGES, dir + "/t10k-images-idx3-ubyte.gz"},
                        {v1::TEST_LABELS, dir + "/t10k-labels-idx1-ubyte.gz"}},
                       cli::FashionMnistClassNames(),
                       absl::StrCat("demo-fashion-mnist:", dir)));
  out << "dataset " << dataset.id() << "\n";

  // Pretrain every split's source model, then wait for them.
  std::vector<std::string> pretrain_ids;
  for (const Split* split : splits) {
    ASSIGN_OR_RETURN(
        v1::Job job,
        client.CreateJob(StudyPretrainSpec(*split, options, dataset.id()),
                         absl::StrCat("study-", run_id, "-", split->name,
                                      "-pretrain")));
    pretrain_ids.push_back(job.id());
  }
  std::vector<std::string> backbones;
  for (size_t s = 0; s < splits.size(); ++s) {
    ASSIGN_OR_RETURN(v1::Job job,
                     client.WaitForJob(pretrain_ids[s], options.job_timeout));
    if (job.state() != v1::SUCCEEDED || job.result().backbone_id().empty()) {
      out << "pretrain " << splits[s]->name << " job " << job.id() << " "
          << cli::JobStateName(job.state()) << ": " << job.error() << "\n";
      return 2;
    }
    StudyMeta::Pretrain p{splits[s]->name, job.id(),
                          job.result().backbone_id(),
                          job.result().test_accuracy(), JobWallSeconds(job)};
    out << absl::StrFormat(
        "pretrain %-8s source {%s}: backbone %s, source test accuracy %.4f, "
        "%.1f s\n",
        p.split, absl::StrJoin(splits[s]->source, ","), p.backbone_id,
        p.source_test_accuracy, p.seconds);
    backbones.push_back(p.backbone_id);
    meta.pretrains.push_back(std::move(p));
  }

  // Every fine-tune job at once: the server queues them.
  std::vector<StudyRow> pending;
  for (size_t s = 0; s < splits.size(); ++s) {
    for (int shots : options.shots) {
      for (const std::string& arm : options.arms) {
        for (uint64_t seed : options.seeds) {
          ASSIGN_OR_RETURN(
              v1::JobSpec spec,
              StudyArmSpec(arm, *splits[s], shots, seed, options, dataset.id(),
                           backbones[s]));
          ASSIGN_OR_RETURN(
              v1::Job job,
              client.CreateJob(spec, absl::StrCat("study-", run_id, "-",
                                                  spec.display_name())));
          StudyRow row;
          row.split = splits[s]->name;
          row.arm = arm;
          row.shots = shots;
          row.seed = seed;
          row.job_id = job.id();
          row.epochs = spec.epochs();
          pending.push_back(std::move(row));
        }
      }
    }
  }
  out << "== " << pending.size() << " fine-tune jobs submitted\n";
  std::vector<StudyRow> rows;
  int failed = 0;
  for (StudyRow& row : pending) {
    ASSIGN_OR_RETURN(v1::Job job,
                     client.WaitForJob(row.job_id, options.job_timeout));
    if (job.state() != v1::SUCCEEDED) {
      ++failed;
      out << absl::StrFormat("%-7s %4s %-11s seed %d job %s %s: %s\n",
                             row.split, ShotsLabel(row.shots), row.arm,
                             row.seed, job.id(), cli::JobStateName(job.state()),
                             job.error());
      continue;
    }
    row.test_accuracy = job.result().test_accuracy();
    row.wall_seconds = JobWallSeconds(job);
    row.tta_seconds = TimeToAccuracy(job.metrics(), options.tta_threshold);
    out << absl::StrFormat(
        "%-7s %4s %-11s seed %d  %2d epochs  test acc %.4f  %.1f s\n",
        row.split, ShotsLabel(row.shots), row.arm, row.seed, row.epochs,
        row.test_accuracy, row.wall_seconds);
    out.flush();  // live progress when stdout is a file or a pipe
    rows.push_back(std::move(row));
  }

  const std::vector<StudyCell> cells = SummarizeRows(rows);
  const std::string table =
      FormatMarkdownTable(cells, options.tta_threshold);
  out << "\n" << table;
  RETURN_IF_ERROR(MakeDirs(options.out_dir));
  const std::string base = options.out_dir + "/transfer_study";
  RETURN_IF_ERROR(
      WriteFileAtomic(base + ".json", StudyToJson(meta, rows, cells)));
  RETURN_IF_ERROR(WriteFileAtomic(base + ".md", table));
  ASSIGN_OR_RETURN(plot::Canvas chart, DrawStudyChart(cells));
  ASSIGN_OR_RETURN(std::string png, chart.EncodePng());
  RETURN_IF_ERROR(WriteFileAtomic(base + ".png", png));
  out << "wrote " << base << ".{json,md,png}\n";
  if (failed > 0) {
    out << failed << " job(s) did not succeed; their cells have fewer runs\n";
    return 2;
  }
  return 0;
}

}  // namespace tlserve::bench
