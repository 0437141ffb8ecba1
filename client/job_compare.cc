#include "client/job_compare.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/job_progress.h"
#include "client/tlctl_commands.h"
#include "common/plot.h"
#include "common/recipe_validation.h"
#include "common/status_macros.h"

namespace tlserve::cli {
namespace {

constexpr char kNone[] = "-";

// Keeps both ends of a long name: job names often differ only at the end
// ("resnet18-frozen-seed1" / "...-seed2").
std::string Shorten(const std::string& s, size_t max_chars,
                    std::string_view filler) {
  if (s.size() <= max_chars || max_chars <= filler.size() + 1) {
    return s.size() <= max_chars ? s : s.substr(0, max_chars);
  }
  const size_t keep = max_chars - filler.size();
  const size_t head = (keep + 1) / 2;
  const size_t tail = keep - head;
  return absl::StrCat(s.substr(0, head), std::string(filler),
                      s.substr(s.size() - tail));
}

// What the user calls each job: its display name, else its id; a name
// given to several jobs gets the job's position ("#2") to tell them apart.
std::vector<std::string> JobLabels(const std::vector<v1::Job>& jobs) {
  std::vector<std::string> labels;
  std::map<std::string, int> uses;
  for (const v1::Job& job : jobs) {
    labels.push_back(job.spec().display_name().empty()
                         ? job.id()
                         : job.spec().display_name());
    ++uses[labels.back()];
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    if (uses[labels[i]] > 1) absl::StrAppend(&labels[i], " #", i + 1);
  }
  return labels;
}

// One job's epochs by number; a repeated epoch (a retried attempt) keeps
// the last report.
std::map<int, const v1::EpochMetrics*> EpochsOf(const v1::Job& job) {
  std::map<int, const v1::EpochMetrics*> epochs;
  for (const v1::EpochMetrics& m : job.metrics()) epochs[m.epoch()] = &m;
  return epochs;
}

double MetricValue(const v1::EpochMetrics& m, CompareMetric metric) {
  switch (metric) {
    case CompareMetric::kValAccuracy:
      return m.val_accuracy();
    case CompareMetric::kValLoss:
      return m.val_loss();
    case CompareMetric::kTrainLoss:
      return m.train_loss();
    case CompareMetric::kTrainAccuracy:
      return m.train_accuracy();
  }
  return 0;
}

bool IsLoss(CompareMetric metric) {
  return metric == CompareMetric::kValLoss ||
         metric == CompareMetric::kTrainLoss;
}

std::string MetricText(double v, CompareMetric metric) {
  return IsLoss(metric) ? absl::StrFormat("%.4f", v)
                        : absl::StrFormat("%.3f", v);
}

bool HasTestResult(const v1::Job& job) {
  return job.state() == v1::SUCCEEDED && job.result().test_count() > 0;
}

// The epoch with the highest validation accuracy (the first of equals) and
// the training seconds up to its end.
struct BestValidation {
  bool found = false;
  int epoch = 0;
  double accuracy = 0;
  double seconds_to_reach = 0;
};

BestValidation FindBestValidation(const v1::Job& job) {
  BestValidation best;
  double elapsed = 0;
  for (const auto& [epoch, m] : EpochsOf(job)) {
    elapsed += m->seconds();
    if (!best.found || m->val_accuracy() > best.accuracy) {
      best.found = true;
      best.epoch = epoch;
      best.accuracy = m->val_accuracy();
      best.seconds_to_reach = elapsed;
    }
  }
  return best;
}

// The epoch whose weights the job keeps (early stopping), as the job
// reports it.
std::string BestEpochText(const v1::Job& job) {
  if (job.result().best_epoch() > 0) return absl::StrCat(job.result().best_epoch());
  for (int i = job.metrics_size() - 1; i >= 0; --i) {
    if (job.metrics(i).best()) return absl::StrCat(job.metrics(i).epoch());
  }
  return kNone;
}

std::string FreezeText(const v1::JobSpec& s) {
  switch (s.freeze().mode()) {
    case v1::FreezePolicy::FROZEN:
      return "frozen";
    case v1::FreezePolicy::LAST_N_BLOCKS:
      return absl::StrCat("last ", s.freeze().n_blocks(), " blocks");
    case v1::FreezePolicy::FULL:
      return "full";
    default:
      return "default";
  }
}

// The trainable backbone's learning rate relative to the head's.
std::string BackboneLrText(const v1::JobSpec& s) {
  if (s.freeze().mode() == v1::FreezePolicy::FROZEN) return kNone;
  const float scale = s.freeze().backbone_lr_scale();
  return absl::StrFormat("x%g", scale > 0 ? scale : 1.0f);
}

// Columns (a row label, then one per job) cut into blocks of jobs that fit
// `width`, each block a table of its own with the row labels repeated.
std::string FormatBlocks(const std::vector<std::string>& header,
                         const std::vector<std::vector<std::string>>& rows,
                         int width) {
  const size_t n = header.size();
  std::vector<size_t> widths(n, 0);
  for (size_t c = 0; c < n; ++c) widths[c] = header[c].size();
  for (const auto& row : rows) {
    for (size_t c = 0; c < n && c < row.size(); ++c) {
      widths[c] = std::max(widths[c], row[c].size());
    }
  }
  std::string out;
  size_t first = 1;
  while (first < n) {
    // At least one job per block, however narrow the terminal.
    size_t used = widths[0];
    size_t last = first;
    while (last < n && (last == first ||
                        used + 2 + widths[last] <= static_cast<size_t>(width))) {
      used += 2 + widths[last];
      ++last;
    }
    auto pick = [&](const std::vector<std::string>& row) {
      std::vector<std::string> part = {row[0]};
      for (size_t c = first; c < last; ++c) {
        part.push_back(c < row.size() ? row[c] : kNone);
      }
      return part;
    };
    std::vector<std::vector<std::string>> block_rows;
    for (const auto& row : rows) block_rows.push_back(pick(row));
    if (!out.empty()) out += "\n";
    absl::StrAppend(&out, FormatTable(pick(header), block_rows));
    first = last;
  }
  return out;
}

std::string SummaryTable(const std::vector<v1::Job>& jobs,
                         const std::vector<std::string>& names, int width) {
  std::vector<std::string> header = {""};
  for (const std::string& name : names) header.push_back(name);
  const bool any_named =
      std::any_of(jobs.begin(), jobs.end(), [](const v1::Job& j) {
        return !j.spec().display_name().empty();
      });
  std::vector<std::vector<std::string>> rows;
  auto add = [&](std::string label, auto cell) {
    std::vector<std::string> row = {std::move(label)};
    for (const v1::Job& job : jobs) row.push_back(cell(job));
    rows.push_back(std::move(row));
  };
  if (any_named) {
    add("job", [&](const v1::Job& j) { return Shorten(j.id(), 24, "~"); });
  }
  add("kind", [](const v1::Job& j) {
    return absl::AsciiStrToLower(v1::JobKind_Name(j.spec().kind()));
  });
  // Kinds whose backbone may train at its own rate.
  auto fine_tune = [](const v1::Job& j) {
    return j.spec().kind() == v1::FINE_TUNE ||
           j.spec().kind() == v1::DOMAIN_ADAPT ||
           j.spec().kind() == v1::MULTITASK;
  };
  // FEW_SHOT reuses a backbone too (frozen, pretrained).
  auto reuses = [](const v1::Job& j) { return ReusesBackbone(j.spec().kind()); };
  add("backbone", [&](const v1::Job& j) {
    return reuses(j) && !j.spec().backbone_id().empty()
               ? Shorten(j.spec().backbone_id(), 24, "~")
               : kNone;
  });
  add("init", [&](const v1::Job& j) {
    if (!reuses(j)) return std::string(kNone);
    return j.spec().backbone_init() == v1::RANDOM ? std::string("random")
                                                  : std::string("pretrained");
  });
  add("freeze", [&](const v1::Job& j) {
    return reuses(j) ? FreezeText(j.spec()) : kNone;
  });
  add("backbone lr", [&](const v1::Job& j) {
    return fine_tune(j) ? BackboneLrText(j.spec()) : kNone;
  });
  add("samples/class", [](const v1::Job& j) {
    const int64_t n = j.spec().data().samples_per_class();
    return n > 0 ? absl::StrCat(n) : std::string("all");
  });
  add("epochs run", [](const v1::Job& j) {
    const size_t run = EpochsOf(j).size();
    return j.spec().epochs() > 0 ? absl::StrCat(run, "/", j.spec().epochs())
                                 : absl::StrCat(run);
  });
  add("state", [](const v1::Job& j) { return JobStateName(j.state()); });
  add("best epoch", [](const v1::Job& j) { return BestEpochText(j); });
  add("best val acc", [](const v1::Job& j) {
    const BestValidation b = FindBestValidation(j);
    return b.found ? absl::StrFormat("%.3f @%d", b.accuracy, b.epoch)
                   : std::string(kNone);
  });
  add("time to best val", [](const v1::Job& j) {
    const BestValidation b = FindBestValidation(j);
    return b.found ? FormatSeconds(b.seconds_to_reach) : std::string(kNone);
  });
  add("test acc", [](const v1::Job& j) {
    return HasTestResult(j)
               ? absl::StrFormat("%.4f", j.result().test_accuracy())
               : std::string(kNone);
  });
  add("test top-5", [](const v1::Job& j) {
    return HasTestResult(j) && j.result().test_top5_accuracy() > 0
               ? absl::StrFormat("%.4f", j.result().test_top5_accuracy())
               : std::string(kNone);
  });
  add("test loss", [](const v1::Job& j) {
    return HasTestResult(j) ? absl::StrFormat("%.4f", j.result().test_loss())
                            : std::string(kNone);
  });
  add("train time", [](const v1::Job& j) {
    // A finished job's own count; a running one's epochs so far.
    double seconds = j.result().train_seconds();
    if (seconds <= 0) {
      for (const auto& [epoch, m] : EpochsOf(j)) seconds += m->seconds();
    }
    return seconds > 0 ? FormatSeconds(seconds) : std::string(kNone);
  });
  return FormatBlocks(header, rows, width);
}

// Rows are every epoch any job reached; "*" marks each job's best value of
// the metric.
std::string EpochTable(const std::vector<v1::Job>& jobs,
                       const std::vector<std::string>& names,
                       CompareMetric metric, int width) {
  std::vector<std::map<int, const v1::EpochMetrics*>> epochs;
  std::set<int> all;
  for (const v1::Job& job : jobs) {
    epochs.push_back(EpochsOf(job));
    for (const auto& [epoch, m] : epochs.back()) all.insert(epoch);
  }
  if (all.empty()) return "no job has finished an epoch yet\n";
  std::vector<int> best_epoch(jobs.size(), -1);
  for (size_t j = 0; j < jobs.size(); ++j) {
    double best = 0;
    for (const auto& [epoch, m] : epochs[j]) {
      const double v = MetricValue(*m, metric);
      const bool better = IsLoss(metric) ? v < best : v > best;
      if (best_epoch[j] < 0 || better) {
        best = v;
        best_epoch[j] = epoch;
      }
    }
  }
  std::vector<std::string> header = {"EPOCH"};
  for (const std::string& name : names) header.push_back(name);
  std::vector<std::vector<std::string>> rows;
  for (int epoch : all) {
    std::vector<std::string> row = {absl::StrCat(epoch)};
    for (size_t j = 0; j < jobs.size(); ++j) {
      auto it = epochs[j].find(epoch);
      row.push_back(it == epochs[j].end()
                        ? std::string(kNone)
                        : absl::StrCat(MetricText(MetricValue(*it->second,
                                                              metric),
                                                  metric),
                                       epoch == best_epoch[j] ? "*" : ""));
    }
    rows.push_back(std::move(row));
  }
  return absl::StrCat(FormatBlocks(header, rows, width), "* best ",
                      CompareMetricName(metric), " of the job\n");
}

// The "did transfer help" line: ranks by test accuracy when every job with
// any accuracy has a test result, else by best validation accuracy, so
// jobs are never ranked on different splits.
std::string WinnerLine(const std::vector<v1::Job>& jobs,
                       const std::vector<std::string>& labels) {
  bool all_tested = true;
  bool any_scored = false;
  for (const v1::Job& job : jobs) {
    const bool scored = HasTestResult(job) || FindBestValidation(job).found;
    any_scored = any_scored || scored;
    if (scored && !HasTestResult(job)) all_tested = false;
  }
  if (!any_scored) {
    return "no job has a validation or test accuracy yet\n";
  }
  struct Scored {
    size_t index;
    double accuracy;
  };
  std::vector<Scored> scored;
  std::vector<std::string> unscored;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (all_tested && HasTestResult(jobs[i])) {
      scored.push_back({i, jobs[i].result().test_accuracy()});
      continue;
    }
    const BestValidation b = FindBestValidation(jobs[i]);
    if (!all_tested && b.found) {
      scored.push_back({i, b.accuracy});
    } else {
      unscored.push_back(labels[i]);
    }
  }
  // Stable, so of equal jobs the first named on the command line wins.
  std::stable_sort(scored.begin(), scored.end(),
                   [](const Scored& a, const Scored& b) {
                     return a.accuracy > b.accuracy;
                   });
  const Scored& top = scored.front();
  std::string line = absl::StrFormat(
      "best by %s: %s (%.4f)",
      all_tested ? "test accuracy" : "best val accuracy (not all tested)",
      labels[top.index], top.accuracy);
  std::vector<std::string> margins;
  for (size_t i = 1; i < scored.size(); ++i) {
    margins.push_back(absl::StrFormat(
        "%+.2f pp over %s (%.4f)", 100.0 * (top.accuracy - scored[i].accuracy),
        labels[scored[i].index], scored[i].accuracy));
  }
  if (!margins.empty()) absl::StrAppend(&line, ", ", absl::StrJoin(margins, ", "));
  if (!unscored.empty()) {
    absl::StrAppend(&line, "; no result yet: ", absl::StrJoin(unscored, ", "));
  }
  return absl::StrCat(line, "\n");
}

}  // namespace

absl::StatusOr<CompareMetric> ParseCompareMetric(std::string_view text) {
  const std::string lower = absl::AsciiStrToLower(std::string(text));
  for (CompareMetric m :
       {CompareMetric::kValAccuracy, CompareMetric::kValLoss,
        CompareMetric::kTrainLoss, CompareMetric::kTrainAccuracy}) {
    if (lower == CompareMetricName(m)) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--metric: '", std::string(text),
      "' is not one of val_accuracy, val_loss, train_loss, train_accuracy"));
}

std::string CompareMetricName(CompareMetric metric) {
  switch (metric) {
    case CompareMetric::kValAccuracy:
      return "val_accuracy";
    case CompareMetric::kValLoss:
      return "val_loss";
    case CompareMetric::kTrainLoss:
      return "train_loss";
    case CompareMetric::kTrainAccuracy:
      return "train_accuracy";
  }
  return "?";
}

std::string FormatJobComparison(const std::vector<v1::Job>& jobs,
                                const JobCompareOptions& options) {
  const int width = std::max(options.width, 40);
  const std::vector<std::string> labels = JobLabels(jobs);
  // Job columns share what the row labels (16 wide) leave: as many jobs
  // side by side as get 14 columns each (the rest go into further blocks),
  // and names longer than their share are shortened.
  constexpr int kMinColumn = 14;
  constexpr int kMaxColumn = 28;
  const int room = width - 18;
  const int per_block = std::max(1, room / (kMinColumn + 2));
  const int side_by_side =
      std::clamp(static_cast<int>(jobs.size()), 1, per_block);
  const size_t column = static_cast<size_t>(
      std::clamp(room / side_by_side - 2, kMinColumn, kMaxColumn));
  std::vector<std::string> names;
  for (const std::string& label : labels) {
    names.push_back(Shorten(label, column, "~"));
  }
  return absl::StrCat(SummaryTable(jobs, names, width), "\n",
                      CompareMetricName(options.metric), " per epoch:\n",
                      EpochTable(jobs, names, options.metric, width), "\n",
                      WinnerLine(jobs, labels));
}

absl::StatusOr<std::string> JobComparisonPng(const std::vector<v1::Job>& jobs,
                                             CompareMetric metric) {
  if (jobs.size() > static_cast<size_t>(plot::kPaletteSize)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--plot draws at most ", plot::kPaletteSize,
                     " jobs (one colour each); got ", jobs.size()));
  }
  const std::vector<std::string> labels = JobLabels(jobs);
  plot::LinePanel panel;
  panel.title = absl::StrCat(CompareMetricName(metric), " per epoch");
  panel.x_label = "epoch";
  panel.integer_x = true;
  if (!IsLoss(metric)) {
    panel.y_min = 0;
    panel.y_max = 1;
  }
  bool any_epoch = false;
  for (size_t i = 0; i < jobs.size(); ++i) {
    plot::Series s;
    s.name = Shorten(labels[i], 28, "..");
    s.color = plot::kPalette[i];
    for (const auto& [epoch, m] : EpochsOf(jobs[i])) {
      s.x.push_back(epoch);
      s.y.push_back(MetricValue(*m, metric));
    }
    if (s.x.empty()) absl::StrAppend(&s.name, " (no epochs)");
    any_epoch = any_epoch || !s.x.empty();
    panel.series.push_back(std::move(s));
  }
  if (!any_epoch) {
    return absl::FailedPreconditionError(
        "none of the jobs has epoch metrics yet; plot once an epoch ends");
  }
  constexpr int kWidth = 720;
  // Extra legend rows take plot height: give it back.
  const int height =
      420 + (plot::LegendRows(panel, kWidth) - 1) * plot::LegendRowHeight();
  ASSIGN_OR_RETURN(plot::Canvas canvas,
                   plot::DrawLineCharts({panel}, kWidth, height));
  return canvas.EncodePng();
}

}  // namespace tlserve::cli
