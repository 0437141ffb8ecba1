"""Text rendering of a job's event stream: a one-line progress bar redrawn
in place on a terminal, plain lines elsewhere (logs, CI), plus a line per
epoch and per state change. The same layout as `tlctl job watch`."""

import time
from typing import Optional, TextIO

from tlserve.v1 import job_pb2


def format_seconds(seconds: float) -> str:
    """Whole seconds as "1h02m03s", "4m05s" or "7s"."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def format_progress(progress: job_pb2.Progress, bar_width: int = 20) -> str:
    """"epoch 2/30 [#####...............] batch 12/40 loss 0.4213 acc 0.871
    ETA 1m23s". The bar fills over the whole job, not one epoch."""
    total = progress.total_epochs * max(progress.batches_per_epoch, 0)
    done = max(progress.epoch - 1, 0) * progress.batches_per_epoch + progress.batch
    fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
    filled = int(fraction * bar_width)
    line = (f"epoch {progress.epoch}/{progress.total_epochs} "
            f"[{'#' * filled}{'.' * (bar_width - filled)}] "
            f"batch {progress.batch}/{progress.batches_per_epoch} "
            f"loss {progress.loss:.4f} acc {progress.accuracy:.3f}")
    if progress.eta_seconds > 0:
        line += f" ETA {format_seconds(progress.eta_seconds)}"
    if progress.samples_per_second > 0:
        line += f" {progress.samples_per_second:.0f} img/s"
    return line


def format_epoch(metrics: job_pb2.EpochMetrics, total_epochs: int) -> str:
    """"epoch 3/30: train loss 0.4100 acc 0.860 | val loss 0.5000 acc 0.820 |
    4.1s 980 img/s"."""
    of = f"/{total_epochs}" if total_epochs > 0 else ""
    line = (f"epoch {metrics.epoch}{of}: "
            f"train loss {metrics.train_loss:.4f} acc {metrics.train_accuracy:.3f}"
            f" | val loss {metrics.val_loss:.4f} acc {metrics.val_accuracy:.3f}"
            f" | {metrics.seconds:.1f}s")
    if metrics.samples_per_second > 0:
        line += f" {metrics.samples_per_second:.0f} img/s"
    return line


def state_name(state: int) -> str:
    return job_pb2.JobState.Name(state)


class ProgressPrinter:
    """Writes a job's events to `out`. Not thread-safe; one per watched job.

    On a terminal (`tty`) the progress line is redrawn in place with '\\r';
    otherwise a progress line is written at most every `plain_interval`
    seconds, so logs stay short."""

    def __init__(self, out: TextIO, tty: Optional[bool] = None,
                 plain_interval: float = 5.0, bar_width: int = 20):
        self._out = out
        if tty is None:
            isatty = getattr(out, "isatty", None)
            tty = bool(isatty and isatty())
        self._tty = tty
        self._plain_interval = plain_interval
        self._bar_width = bar_width
        self._bar_shown = False
        self._total_epochs = 0
        self._last_plain = float("-inf")

    def on_event(self, event: job_pb2.JobEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind == "progress":
            if event.progress.total_epochs > 0:
                self._total_epochs = event.progress.total_epochs
            line = format_progress(event.progress, self._bar_width)
            if self._tty:
                # Back to the line's start and clear it: no leftovers from a
                # longer previous line.
                self._out.write("\r\033[K" + line)
                self._bar_shown = True
            elif time.monotonic() - self._last_plain >= self._plain_interval:
                self._out.write(line + "\n")
                self._last_plain = time.monotonic()
        elif kind == "epoch_metrics":
            self._line(format_epoch(event.epoch_metrics, self._total_epochs))
        elif kind == "state_change":
            change = event.state_change
            previous = getattr(change, "from")  # a Python keyword
            # A new job's first change comes from no state at all.
            text = "state "
            if previous != job_pb2.JOB_STATE_UNSPECIFIED:
                text += f"{state_name(previous)} -> "
            text += state_name(change.to)
            if change.reason:
                text += f": {change.reason}"
            self._line(text)
        elif kind == "checkpoint":
            checkpoint = event.checkpoint
            text = f"checkpoint: epoch {checkpoint.epoch}"
            if checkpoint.batch > 0:
                text += f" + {checkpoint.batch} batches of epoch {checkpoint.epoch + 1}"
            self._line(text)
        elif kind == "message":
            self._line(f"note: {event.message}")
        self._out.flush()

    def finish(self) -> None:
        """Ends a progress line still being redrawn."""
        if self._bar_shown:
            self._out.write("\n")
            self._bar_shown = False
        self._out.flush()

    def _line(self, text: str) -> None:
        if self._bar_shown:
            self._out.write("\r\033[K")
            self._bar_shown = False
        self._out.write(text + "\n")
