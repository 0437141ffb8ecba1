#ifndef TLSERVE_CLIENT_BACKBONE_RANK_H_
#define TLSERVE_CLIENT_BACKBONE_RANK_H_

// `tlctl backbone rank`: which backbone to spend training time on. Every
// candidate gets a FEW_SHOT job on the same labelled images of the user's
// dataset: a nearest-class-mean classifier on the backbone's frozen
// features, scored on held-out images. Nothing trains, so a candidate
// costs one pass of its backbone over the images (seconds on a small
// dataset), and a backbone whose classes sit apart in feature space is
// the one a fine-tuned head tends to do best with (docs/benchmarks.md
// measures how often the order agrees).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::cli {

struct RankOptions {
  std::string dataset_id;
  // Empty: every backbone the caller can see.
  std::vector<std::string> backbone_ids;
  // The labels to tell apart (empty: all of the dataset's).
  std::vector<int32_t> class_subset;
  // Labelled images per class that make the class means.
  int shots = 20;
  // Held-out images scored per candidate (0: the whole test split).
  int max_test_samples = 1000;
  uint64_t seed = 1;
  // For all candidates together.
  absl::Duration timeout = absl::Minutes(30);
};

struct RankedBackbone {
  std::string backbone_id;
  std::string name;
  std::string job_id;
  // Nearest-class-mean accuracy on the held-out images.
  double accuracy = 0;
  double top5_accuracy = 0;
  int64_t scored = 0;
  double seconds = 0;
  // Why the candidate could not be scored ("" when it was).
  std::string error;
};

// The FEW_SHOT job that scores one backbone. A dataset without a test
// split holds 30% of the labelled images out instead.
v1::JobSpec RankJobSpec(const RankOptions& options,
                        const std::string& backbone_id, bool has_test_split);
// Best accuracy first (ties: the faster); candidates that failed last, in
// their given order.
std::vector<RankedBackbone> OrderRanking(std::vector<RankedBackbone> ranked);
// A table: rank, backbone, name, accuracy, top-5, images scored, seconds.
std::string FormatRanking(const std::vector<RankedBackbone>& ranked);

// Submits every candidate's job at once (workers score them side by
// side), waits for all and orders them. A candidate whose job fails is
// kept with its error; an unknown dataset or backbone fails the call.
absl::StatusOr<std::vector<RankedBackbone>> RankBackbones(
    Client& client, const RankOptions& options);

}  // namespace tlserve::cli

#endif  // TLSERVE_CLIENT_BACKBONE_RANK_H_
