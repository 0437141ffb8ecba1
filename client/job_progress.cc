#include "client/job_progress.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace tlserve::cli {

std::string FormatSeconds(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) {
    return absl::StrFormat("%dh%02dm%02ds", s / 3600, (s / 60) % 60, s % 60);
  }
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string JobStateName(v1::JobState state) {
  return v1::JobState_Name(state);
}

std::string FormatProgressLine(const v1::Progress& p, int bar_width) {
  std::string line =
      absl::StrFormat("epoch %d/%d", p.epoch(), p.total_epochs());
  if (bar_width > 0) {
    // Overall fraction: finished epochs plus the share of this one, so the
    // bar moves steadily across the whole job instead of refilling.
    double fraction = 0;
    if (p.total_epochs() > 0) {
      double within = p.batches_per_epoch() > 0
                          ? static_cast<double>(p.batch()) /
                                static_cast<double>(p.batches_per_epoch())
                          : 0.0;
      fraction = (std::max(p.epoch() - 1, 0) + std::clamp(within, 0.0, 1.0)) /
                 p.total_epochs();
    }
    int filled = static_cast<int>(std::clamp(fraction, 0.0, 1.0) * bar_width);
    absl::StrAppend(&line, " [", std::string(filled, '#'),
                    std::string(bar_width - filled, '.'), "]");
  }
  absl::StrAppend(
      &line, absl::StrFormat(" batch %d/%d loss %.4f acc %.3f", p.batch(),
                             p.batches_per_epoch(), p.loss(), p.accuracy()));
  if (p.eta_seconds() > 0) {
    absl::StrAppend(&line, " ETA ", FormatSeconds(p.eta_seconds()));
  }
  if (p.samples_per_second() > 0) {
    absl::StrAppend(&line,
                    absl::StrFormat(" %.0f img/s", p.samples_per_second()));
  }
  return line;
}

std::string FormatEpochMetrics(const v1::EpochMetrics& m, int total_epochs) {
  std::string line = absl::StrFormat(
      "epoch %d%s: train loss %.4f acc %.3f | val loss %.4f acc %.3f | %.1fs",
      m.epoch(), total_epochs > 0 ? absl::StrCat("/", total_epochs) : "",
      m.train_loss(), m.train_accuracy(), m.val_loss(), m.val_accuracy(),
      m.seconds());
  if (m.samples_per_second() > 0) {
    absl::StrAppend(&line,
                    absl::StrFormat(" %.0f img/s", m.samples_per_second()));
  }
  return line;
}

JobProgressPrinter::JobProgressPrinter(std::ostream& out, bool tty,
                                       absl::Duration plain_interval)
    : out_(out), tty_(tty), plain_interval_(plain_interval) {}

void JobProgressPrinter::ClearBar() {
  if (bar_shown_) {
    out_ << "\r\033[K";
    bar_shown_ = false;
  }
}

void JobProgressPrinter::Finish() {
  if (bar_shown_) {
    out_ << "\n";
    bar_shown_ = false;
  }
  out_.flush();
}

bool JobProgressPrinter::OnEvent(const v1::JobEvent& event) {
  switch (event.kind_case()) {
    case v1::JobEvent::kProgress: {
      const v1::Progress& p = event.progress();
      if (p.total_epochs() > 0) total_epochs_ = p.total_epochs();
      if (tty_) {
        out_ << "\r\033[K" << FormatProgressLine(p, 24);
        bar_shown_ = true;
        out_.flush();
      } else if (absl::Now() - last_plain_ >= plain_interval_) {
        last_plain_ = absl::Now();
        out_ << FormatProgressLine(p, 0) << "\n";
      }
      return true;
    }
    case v1::JobEvent::kStateChange: {
      ClearBar();
      const v1::StateChange& c = event.state_change();
      out_ << "state ";
      // A new job's first change comes from no state at all.
      if (c.from() != v1::JOB_STATE_UNSPECIFIED) {
        out_ << JobStateName(c.from()) << " -> ";
      }
      out_ << JobStateName(c.to());
      if (c.attempt() > 0) out_ << " (attempt " << c.attempt() << ")";
      if (!c.reason().empty()) out_ << ": " << c.reason();
      out_ << "\n";
      break;
    }
    case v1::JobEvent::kEpochMetrics:
      ClearBar();
      out_ << FormatEpochMetrics(event.epoch_metrics(), total_epochs_) << "\n";
      break;
    case v1::JobEvent::kCheckpoint:
      ClearBar();
      out_ << "checkpoint: epoch " << event.checkpoint().epoch();
      if (event.checkpoint().batch() > 0) {
        out_ << " + " << event.checkpoint().batch() << " batches of epoch "
             << event.checkpoint().epoch() + 1;
      }
      out_ << " (attempt " << event.checkpoint().attempt() << ")\n";
      break;
    case v1::JobEvent::kMessage:
      ClearBar();
      out_ << "note: " << event.message() << "\n";
      break;
    case v1::JobEvent::KIND_NOT_SET:
      break;
  }
  out_.flush();
  return true;
}

}  // namespace tlserve::cli
