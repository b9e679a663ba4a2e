"""Keras callbacks that connect a training run to whoever is watching it.

The worker (and ``ftserve train``) pass plain callables; these adapt them to Keras:
progress with an ETA, a cancellation check after every batch, the per-epoch history that
goes into the job and the model card, and keeping the best weights across the fine-tuning
phase.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from service.contract.history import record_epoch
from service.errors import TrainingCancelledError


@dataclass(frozen=True)
class Progress:
    phase: str  # "features", "head_search", "head", "fine_tune" or "evaluate"
    epoch: int  # 1-based within the phase
    epochs: int
    step: int
    steps: int
    eta_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_end: bool = False


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


class ProgressCallback(keras.callbacks.Callback):
    """Reports phase/epoch/step and an ETA, at most every ``interval`` seconds mid-epoch."""

    def __init__(
        self,
        report: ProgressFn,
        phase: str,
        epochs: int,
        steps: int,
        interval: float = 0.5,
        epoch_ends: bool = True,
    ) -> None:
        super().__init__()
        self.report, self.phase, self.epochs, self.steps = report, phase, epochs, steps
        self.interval = interval
        # False for work whose epochs are not the model's training history (the head
        # search): each epoch's end is then reported as an ordinary update.
        self.epoch_ends = epoch_ends
        self._started = 0.0
        self._last = 0.0
        self._steps_done = 0
        self._epoch = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._steps_done += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.report(self._progress(batch + 1, logs))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.report(self._progress(self.steps, logs, epoch_end=self.epoch_ends))

    def _progress(self, step: int, logs: dict | None, epoch_end: bool = False) -> Progress:
        elapsed = time.monotonic() - self._started
        remaining = (self.epochs - self._epoch) * self.steps - step
        per_step = elapsed / self._steps_done if self._steps_done else None
        return Progress(
            phase=self.phase,
            epoch=self._epoch + 1,
            epochs=self.epochs,
            step=step,
            steps=self.steps,
            eta_seconds=None if per_step is None else round(max(0, remaining) * per_step, 1),
            metrics=_scalars(logs),
            epoch_end=epoch_end,
        )


class CancelCallback(keras.callbacks.Callback):
    """Stops within one batch of a cancel request, by raising out of ``fit``."""

    def __init__(self, should_cancel: CancelFn) -> None:
        super().__init__()
        self.should_cancel = should_cancel

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.should_cancel():
            raise TrainingCancelledError("training was cancelled")


class HistoryCallback(keras.callbacks.Callback):
    """Records each epoch's scalar metrics, tagged with the phase, in ``history``.

    With ``path``, the history is also written there after every epoch, so a run resumed
    after a crash starts from what the earlier attempt had (see ``load_history``). An epoch
    done again replaces its entry rather than listing it twice.
    """

    def __init__(
        self, history: list[dict[str, object]], phase: str, path: Path | None = None
    ) -> None:
        super().__init__()
        self.history, self.phase, self.path = history, phase, path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {k: round(float(v), 6) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        entry = {"phase": self.phase, "epoch": epoch + 1, **metrics}
        self.history[:] = record_epoch(self.history, entry)
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.history))
            os.replace(tmp, self.path)


def load_history(path: Path) -> list[dict[str, object]]:
    """The history a ``HistoryCallback`` wrote to ``path``; empty when there is none."""
    try:
        return list(json.loads(path.read_text()))
    except FileNotFoundError:
        return []


class EpochBackup(keras.callbacks.BackupAndRestore):
    """Keras's resumable checkpoint, written at an epoch's end at most every ``interval`` s.

    Short epochs (a head on cached features takes milliseconds) would otherwise spend more
    time saving than training. A crash redoes at most the epochs of the last ``interval``
    seconds, and a redone epoch replaces its history entry (``HistoryCallback``).
    """

    def __init__(self, backup_dir: str, interval: float = 1.0) -> None:
        super().__init__(backup_dir)
        self.interval = interval
        self._saved_at = float("-inf")
        # It saves only at epoch ends: its per-batch hook does nothing, so Keras need not
        # wait on every batch for it.
        self.async_safe = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.monotonic()
        if now - self._saved_at >= self.interval:
            super().on_epoch_end(epoch, logs)
            self._saved_at = now
        else:
            self._current_epoch = epoch + 1  # what the next save records


class KeepBest(keras.callbacks.Callback):
    """Remembers the weights with the lowest validation loss, starting from a baseline.

    With the phase-1 loss as baseline, fine-tuning that never beats it leaves the
    phase-1 weights in place. With ``path``, the best weights are also kept on disk, so a
    run resumed after a crash still knows the best epoch from before it.
    """

    def __init__(
        self, baseline: float, baseline_weights: list[np.ndarray], path: Path | None = None
    ) -> None:
        super().__init__()
        self.best = baseline
        self.best_weights = baseline_weights
        self.improved = False
        self.path = path
        if path is not None and path.is_file():
            with np.load(path) as saved:
                self.best = float(saved["val_loss"])
                count = len(saved.files) - 1
                self.best_weights = [saved[f"arr_{i}"] for i in range(count)]
            self.improved = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("val_loss")
        if loss is not None and float(loss) < self.best:
            self.best = float(loss)
            self.best_weights = self.model.get_weights()
            self.improved = True
            if self.path is not None:
                self._save()

    def _save(self) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as handle:
            np.savez(handle, *self.best_weights, val_loss=np.float64(self.best))
        os.replace(tmp, self.path)  # a crash mid-write leaves the previous best intact

    def on_train_end(self, logs: dict | None = None) -> None:
        self.model.set_weights(self.best_weights)


def _scalars(logs: dict | None) -> dict[str, float]:
    return {key: float(value) for key, value in (logs or {}).items() if np.ndim(value) == 0}
