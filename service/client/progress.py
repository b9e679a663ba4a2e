"""How ``ftserve jobs watch`` shows a job while it runs.

On a terminal, a progress bar (phase, epoch, step, ETA, latest loss and accuracy) redrawn in
place, with each finished epoch and state change printed above it as a line of its own.
Anywhere else (a log file, a pipe, CI), only those lines: one per state change, one per epoch.
"""

from __future__ import annotations

import shutil
from typing import Any, TextIO

from service.client.common import number
from service.client.follow import FINAL_STATES, Update

PHASES = {"fine_tune": "fine-tune", "head_search": "head search"}  # the rest read well
_NOT_METRICS = ("phase", "epoch", "epochs")
# Training's own before validation's, loss before accuracy; other metrics after, as given.
_FIRST_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
_BAR_METRICS = ("loss", "accuracy")
_CLEAR_LINE = "\r\x1b[K"  # carriage return, then erase to the end of the line


def phase_name(phase: object) -> str:
    """A phase as people read it (``fine_tune`` → ``fine-tune``)."""
    return PHASES.get(str(phase), str(phase))


def metric_names(row: dict[str, Any]) -> list[str]:
    """The metrics of a history row or progress report, in the order people read them."""
    names = [name for name in row if name not in _NOT_METRICS]
    first = [name for name in _FIRST_METRICS if name in names]
    return first + [name for name in names if name not in first]


def state_line(state: dict[str, Any]) -> str:
    """``job <id>: running (attempt 1)`` and the like; a failure with its error."""
    status = state.get("status")
    line = f"job {state.get('job_id')}: {status}"
    if status == "queued":
        line += ", waiting for a worker"
    elif status == "running":
        line += f" (attempt {state.get('attempts')})"
    if state.get("cancel_requested") and status not in FINAL_STATES:
        line += ", cancel requested"
    error = state.get("error")
    if error:
        line += f": {error.get('message')} ({error.get('code')})"
    return line


def epoch_line(row: dict[str, Any], epochs: int | None = None, replaced: bool = False) -> str:
    """One finished epoch: phase, number (of how many, when known) and its metrics."""
    of = f"/{epochs}" if epochs else ""
    metrics = "  ".join(f"{name} {number(row[name])}" for name in metric_names(row))
    line = f"{phase_name(row.get('phase')):<9}  epoch {row.get('epoch')}{of}  {metrics}"
    return line.rstrip() + ("  (redone)" if replaced else "")


def bar_line(progress: dict[str, Any], width: int) -> str:
    """The progress bar's line, at most ``width`` characters."""
    epoch, epochs = progress.get("epoch") or 0, progress.get("epochs") or 0
    step, steps = progress.get("step") or 0, progress.get("steps") or 0
    head = f"{phase_name(progress.get('phase'))}  epoch {epoch}/{epochs or '?'}"
    metrics = progress.get("metrics") or {}
    tail = "  ".join(
        [
            f"{step}/{steps or '?'}",
            f"ETA {duration(progress.get('eta_seconds'))}",
            *(f"{name} {number(metrics[name])}" for name in _BAR_METRICS if name in metrics),
        ]
    )
    done = ((epoch - 1) * steps + step) / (epochs * steps) if epochs and steps and epoch else 0.0
    cells = max(10, min(30, width - len(head) - len(tail) - 6))
    filled = round(max(0.0, min(1.0, done)) * cells)
    line = f"{head}  [{'#' * filled}{'.' * (cells - filled)}]  {tail}"
    return line[:width]


def duration(seconds: object) -> str:
    """``1:02:03``, ``2:03`` or ``?`` when unknown."""
    if not isinstance(seconds, int | float) or seconds < 0:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class LineDisplay:
    """One line per state change and per finished epoch (for logs and pipes)."""

    def __init__(self, out: TextIO, epochs: dict[str, int] | None = None) -> None:
        self.out = out
        # Epochs per phase, from the job's config, then as progress reports them.
        self._epochs: dict[str, int] = dict(epochs or {})

    def show(self, update: Update) -> None:
        """Print what ``update`` changes."""
        if update.kind == "state":
            self.line(state_line(update.data))
        elif update.kind == "epoch":
            epochs = self._epochs.get(str(update.data.get("phase")))
            self.line(epoch_line(update.data, epochs, update.replaced))
        else:
            self._progress(update.data)

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def close(self) -> None:
        """Leave the output as it should stay (nothing to tidy here)."""

    def _progress(self, progress: dict[str, Any]) -> None:
        if progress.get("epochs"):
            self._epochs[str(progress.get("phase"))] = progress["epochs"]


class BarDisplay(LineDisplay):
    """The same lines, with a progress bar redrawn in place under them (for terminals)."""

    def __init__(self, out: TextIO, epochs: dict[str, int] | None = None) -> None:
        super().__init__(out, epochs)
        self._bar = ""

    def show(self, update: Update) -> None:
        """Print what ``update`` changes; a final state takes the bar away."""
        if update.kind == "state" and update.data.get("status") in FINAL_STATES:
            self.close()
        super().show(update)

    def line(self, text: str) -> None:
        self.out.write(f"{_CLEAR_LINE if self._bar else ''}{text}\n{self._bar}")
        self.out.flush()

    def close(self) -> None:
        """Erase the bar: the report that follows replaces it."""
        if self._bar:
            self.out.write(_CLEAR_LINE)
            self.out.flush()
        self._bar = ""

    def _progress(self, progress: dict[str, Any]) -> None:
        super()._progress(progress)
        width = shutil.get_terminal_size().columns - 1  # the last column would wrap
        self._bar = bar_line(progress, width)
        self.out.write(_CLEAR_LINE + self._bar)
        self.out.flush()


def display_for(out: TextIO, epochs: dict[str, int] | None = None) -> LineDisplay:
    """A bar on a terminal, plain lines elsewhere; ``epochs`` per phase, where known."""
    return BarDisplay(out, epochs) if out.isatty() else LineDisplay(out, epochs)
