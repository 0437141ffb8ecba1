#include "client/backbone_rank.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"

namespace tlserve::cli {

v1::JobSpec RankJobSpec(const RankOptions& options,
                        const std::string& backbone_id, bool has_test_split) {
  v1::JobSpec spec;
  spec.set_kind(v1::FEW_SHOT);
  spec.set_display_name(absl::StrCat("rank-", backbone_id));
  spec.set_backbone_id(backbone_id);
  spec.set_seed(options.seed);
  v1::DataSpec* data = spec.mutable_data();
  data->set_dataset_id(options.dataset_id);
  for (int32_t c : options.class_subset) data->add_class_subset(c);
  data->set_samples_per_class(options.shots);
  data->set_max_test_samples(options.max_test_samples);
  // Scored on images that made no class mean.
  if (!has_test_split) data->set_validation_fraction(0.3f);
  return spec;
}

std::vector<RankedBackbone> OrderRanking(std::vector<RankedBackbone> ranked) {
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const RankedBackbone& a, const RankedBackbone& b) {
                     const bool a_ok = a.error.empty();
                     const bool b_ok = b.error.empty();
                     if (a_ok != b_ok) return a_ok;
                     if (!a_ok) return false;  // failures keep their order
                     if (a.accuracy != b.accuracy) return a.accuracy > b.accuracy;
                     return a.seconds < b.seconds;
                   });
  return ranked;
}

std::string FormatRanking(const std::vector<RankedBackbone>& ranked) {
  std::string out = absl::StrFormat("%-4s  %-22s  %-20s  %8s  %6s  %6s  %7s\n",
                                    "rank", "backbone", "name", "accuracy",
                                    "top-5", "images", "seconds");
  int rank = 0;
  for (const RankedBackbone& r : ranked) {
    const std::string name = r.name.size() > 20 ? r.name.substr(0, 19) + "~" : r.name;
    if (!r.error.empty()) {
      absl::StrAppend(&out, absl::StrFormat("%-4s  %-22s  %-20s  failed: %s\n",
                                            "-", r.backbone_id, name, r.error));
      continue;
    }
    absl::StrAppend(&out, absl::StrFormat(
                              "%-4d  %-22s  %-20s  %8.4f  %6.4f  %6d  %7.1f\n",
                              ++rank, r.backbone_id, name, r.accuracy,
                              r.top5_accuracy, r.scored, r.seconds));
  }
  return out;
}

absl::StatusOr<std::vector<RankedBackbone>> RankBackbones(
    Client& client, const RankOptions& options) {
  if (options.shots < 1) {
    return absl::InvalidArgumentError("shots must be >= 1 labelled image per class");
  }
  ASSIGN_OR_RETURN(v1::Dataset dataset, client.GetDataset(options.dataset_id));
  std::vector<v1::Backbone> candidates;
  if (options.backbone_ids.empty()) {
    ASSIGN_OR_RETURN(candidates, client.ListBackbones());
    if (candidates.empty()) {
      return absl::FailedPreconditionError(
          "there is no backbone to rank; upload one (tlctl backbone upload)");
    }
  } else {
    for (const std::string& id : options.backbone_ids) {
      ASSIGN_OR_RETURN(v1::Backbone b, client.GetBackbone(id));
      candidates.push_back(std::move(b));
    }
  }
  const bool has_test_split = dataset.test_count() > 0;
  std::vector<RankedBackbone> ranked;
  for (const v1::Backbone& b : candidates) {
    RankedBackbone r;
    r.backbone_id = b.id();
    r.name = b.name();
    absl::StatusOr<v1::Job> job =
        client.CreateJob(RankJobSpec(options, b.id(), has_test_split), "");
    if (job.ok()) {
      r.job_id = job->id();
    } else if (job.status().code() == absl::StatusCode::kInvalidArgument) {
      // This backbone cannot take this dataset (e.g. its channels); the
      // others still can.
      r.error = std::string(job.status().message());
    } else {
      return job.status();
    }
    ranked.push_back(std::move(r));
  }
  const absl::Time deadline = absl::Now() + options.timeout;
  for (RankedBackbone& r : ranked) {
    if (r.job_id.empty()) continue;
    ASSIGN_OR_RETURN(v1::Job done,
                     client.WaitForJob(r.job_id, deadline - absl::Now()));
    if (done.state() != v1::SUCCEEDED) {
      r.error = absl::StrCat(v1::JobState_Name(done.state()), ": ", done.error());
      continue;
    }
    r.accuracy = done.result().test_accuracy();
    r.top5_accuracy = done.result().test_top5_accuracy();
    r.scored = done.result().test_count();
    r.seconds = done.result().train_seconds();
  }
  return OrderRanking(std::move(ranked));
}

}  // namespace tlserve::cli
