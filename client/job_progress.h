#ifndef TLSERVE_CLIENT_JOB_PROGRESS_H_
#define TLSERVE_CLIENT_JOB_PROGRESS_H_

// Renders a job's event stream for people: a live one-line progress bar on
// a terminal, plain lines elsewhere (logs, CI), plus a line per epoch and
// per state change. Used by `tlctl job watch` and `tlctl demo`.

#include <ostream>
#include <string>

#include "absl/time/time.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::cli {

// "epoch 2/30 [#####.....] batch 12/40 loss 0.4213 acc 0.871 ETA 1m23s"
std::string FormatProgressLine(const v1::Progress& progress, int bar_width);
// "epoch 3/30: train loss 0.4100 acc 0.860 | val loss ... | 4.1s 980 img/s"
std::string FormatEpochMetrics(const v1::EpochMetrics& metrics,
                               int total_epochs);
// Whole seconds as "1h02m03s", "4m05s", "7s".
std::string FormatSeconds(double seconds);
// "RUNNING" etc.
std::string JobStateName(v1::JobState state);

// Not thread-safe; one per watched job.
class JobProgressPrinter {
 public:
  // `tty`: redraw the progress line in place with '\r'; otherwise print a
  // progress line at most every `plain_interval`.
  JobProgressPrinter(std::ostream& out, bool tty,
                     absl::Duration plain_interval = absl::Seconds(5));
  // Always true: a callback for Client::WatchJob.
  bool OnEvent(const v1::JobEvent& event);
  // Ends a pending progress line.
  void Finish();

 private:
  void ClearBar();

  std::ostream& out_;
  bool tty_;
  absl::Duration plain_interval_;
  bool bar_shown_ = false;
  int total_epochs_ = 0;
  absl::Time last_plain_ = absl::InfinitePast();
};

}  // namespace tlserve::cli

#endif  // TLSERVE_CLIENT_JOB_PROGRESS_H_
