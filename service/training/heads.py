"""Choosing the classifier head on the frozen base's cached feature maps.

Whether average pooling or flattening suits a task depends on it: average pooling ignores
where a pattern sits (good for objects anywhere in the frame), flattening keeps it (good
for digits, whose strokes matter by position). Once the base's feature maps are cached,
a head costs milliseconds an epoch, so rather than guess, a job whose config leaves the
head to ``auto`` trains a few small candidates side by side under one budget and keeps
the best on the validation split.

The choice is persisted in the job folder (``head.json`` with the winner's weights next to
it): a job resumed after a crash builds the same head instead of searching again.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from service.contract.train_config import TrainConfig
from service.training.model import HeadSpec, build_head, default_head, pooling_layer
from service.training.pipeline import PipelineOptions, array_dataset

HEAD_CHOICE = "head.json"
HEAD_WEIGHTS = "head-weights.npz"
# The hidden layer's width in candidates when the config leaves ``dense_units`` open.
HIDDEN_UNITS = 256
# The search's budget, apart from the job's ``epochs`` (phase 1, which goes on from the
# winner): on cached features an epoch is cheap, and a head learning positions (flatten)
# needs a few dozen epochs at the usual learning rate before it can be judged.
SEARCH_EPOCHS = 40
# The search ends once the lowest validation loss of any candidate has not dropped by
# SEARCH_MIN_DELTA for SEARCH_PATIENCE epochs: the leader has settled, and a candidate that
# trails it by then is not worth the wait (phase 1 trains the winner further).
SEARCH_PATIENCE = 5
SEARCH_MIN_DELTA = 1e-3
# A flattened head's input beyond this many values (e.g. ResNet50 at 224 px: 100,352)
# costs more memory than the search is worth; such bases only try average pooling.
MAX_FLATTEN_FEATURES = 1 << 16
# A hidden layer on flattened maps has (values per image x units) weights, every one
# updated at every step: it is what a search epoch mostly costs (on MobileNetV2 at 96 px,
# 11,520 values: 2.9 M weights at 256 units, ~70% of the epoch). Past this many weights
# its width is halved until it fits, down to MIN_FLATTEN_UNITS (e.g. 64 units at 96 px,
# 16 at 224 px); a hidden layer on averaged maps keeps HIDDEN_UNITS.
MAX_FLATTEN_HIDDEN_WEIGHTS = 1 << 20
MIN_FLATTEN_UNITS = 16
SELECTION = "highest validation accuracy, then lowest validation loss, then the earlier candidate"


def searches_head(config: TrainConfig) -> bool:
    """Whether ``config`` leaves any part of the head to be chosen on validation."""
    return config.pooling == "auto" or config.dense_units is None


def known_choice(
    config: TrainConfig, work_dir: Path
) -> tuple[HeadChoice, list[np.ndarray] | None] | None:
    """The head when no search is due: saved by an earlier attempt, or fixed by ``config``.

    A saved choice comes with the winner's weights; None means a search is due.
    """
    saved = load_choice(work_dir)
    if saved is not None:  # a resumed job: searching again could choose differently
        return saved
    if not searches_head(config):
        return HeadChoice(default_head(config)), None
    return None


@dataclass(frozen=True)
class Candidates:
    """The heads to try, and why any usual candidate was left out."""

    specs: tuple[HeadSpec, ...]
    skipped: tuple[str, ...] = ()

    @property
    def need_maps(self) -> bool:
        """Whether any candidate needs the full feature maps, not just their averages."""
        return any(spec.pooling == "flatten" for spec in self.specs)


def candidate_heads(config: TrainConfig, map_shape: Sequence[int]) -> Candidates:
    """The heads ``config`` allows on a base whose feature maps are ``map_shape`` (H, W, C).

    ``auto`` pooling tries ``avg`` and ``flatten``; ``dense_units`` left open tries none
    and one hidden layer of ``HIDDEN_UNITS`` (narrower on large flattened maps, see
    ``MAX_FLATTEN_HIDDEN_WEIGHTS``). What the config sets is kept as set.
    """
    poolings = ("avg", "flatten") if config.pooling == "auto" else (config.pooling,)
    skipped: tuple[str, ...] = ()
    flat = int(np.prod(map_shape))
    if config.pooling == "auto" and flat > MAX_FLATTEN_FEATURES:
        poolings = ("avg",)
        skipped = (f"flatten: {flat} features per image, over the {MAX_FLATTEN_FEATURES} limit",)
    specs = []
    for pooling in poolings:
        if config.dense_units is not None:
            specs.append(HeadSpec(pooling, config.dense_units))
            continue
        units = HIDDEN_UNITS if pooling == "avg" else flatten_hidden_units(flat)
        specs += [HeadSpec(pooling), HeadSpec(pooling, (units,))]
    return Candidates(tuple(specs), skipped)


def flatten_hidden_units(values: int) -> int:
    """The hidden layer's width for a search candidate on ``values`` flattened values."""
    units = HIDDEN_UNITS
    while units > MIN_FLATTEN_UNITS and values * units > MAX_FLATTEN_HIDDEN_WEIGHTS:
        units //= 2
    return units


def pool_features(maps: np.ndarray, pooling: str, chunk: int = 1024) -> np.ndarray:
    """What a head with ``pooling`` sees of cached feature maps [N, H, W, C].

    Average pooling runs Keras's own layer, so the cached path computes what the
    exported model does; flattening is a view (of a memory map, when the maps are one).
    """
    if pooling == "flatten":
        return maps.reshape(len(maps), -1)
    pool = keras.layers.GlobalAveragePooling2D()
    parts = [np.asarray(pool(maps[i : i + chunk])) for i in range(0, len(maps), chunk)]
    return np.concatenate(parts).astype(np.float32, copy=False)


@dataclass(frozen=True)
class FeatureSplit:
    """Cached feature maps of one split, with its labels and optional sample weights."""

    maps: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None


@dataclass(frozen=True)
class Trial:
    """How one candidate did at its best epoch (lowest validation loss)."""

    spec: HeadSpec
    val_accuracy: float
    val_loss: float
    best_epoch: int

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.spec.name,
            **self.spec.to_json(),
            "val_accuracy": round(self.val_accuracy, 6),
            "val_loss": round(self.val_loss, 6),
            "best_epoch": self.best_epoch,
        }

    @classmethod
    def from_json(cls, data: dict) -> Trial:
        spec = HeadSpec.from_json(data)
        accuracy, loss = float(data["val_accuracy"]), float(data["val_loss"])
        return cls(spec, accuracy, loss, int(data["best_epoch"]))


@dataclass(frozen=True)
class HeadChoice:
    """The head a run uses and, when it was searched for, every candidate's result."""

    spec: HeadSpec
    trials: tuple[Trial, ...] = ()
    skipped: tuple[str, ...] = ()
    epochs: int = 0  # how many epochs the search ran
    seconds: float = 0.0

    @property
    def searched(self) -> bool:
        return bool(self.trials)

    @property
    def winner_loss(self) -> float | None:
        """The chosen head's validation loss in the search; None when there was none."""
        return next((t.val_loss for t in self.trials if t.spec == self.spec), None)

    def describe(self) -> dict[str, object]:
        """JSON-ready record for the run summary and the model card."""
        return {
            "chosen": self.spec.name,
            **self.spec.to_json(),
            "searched": self.searched,
            "selection": SELECTION if self.searched else "fixed by the config",
            "candidates": [trial.to_json() for trial in self.trials],
            "skipped": list(self.skipped),
            "search_epochs": self.epochs,
            "search_seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_description(cls, data: dict) -> HeadChoice:
        trials = tuple(Trial.from_json(t) for t in data["candidates"])
        return cls(
            HeadSpec.from_json(data),
            trials,
            tuple(data["skipped"]),
            int(data["search_epochs"]),
            float(data["search_seconds"]),
        )


@dataclass(frozen=True)
class SearchSetup:
    """How the candidates train: the run's data options, optimiser settings and devices.

    ``scope`` builds and compiles under the run's distribution strategy and precision;
    ``callbacks`` (e.g. a cancel check) join the search's own.
    """

    options: PipelineOptions
    learning_rate: float = 1e-3
    label_smoothing: float = 0.0
    dropout: float = 0.2
    seed: int = 0
    epochs: int = SEARCH_EPOCHS
    patience: int = SEARCH_PATIENCE
    min_delta: float = SEARCH_MIN_DELTA
    jit_compile: bool = False
    scope: Callable[[], AbstractContextManager[object]] = nullcontext
    callbacks: Sequence[keras.callbacks.Callback] = ()

    @classmethod
    def for_run(cls, config: TrainConfig, options: PipelineOptions, **how: Any) -> SearchSetup:
        """The setup for a job: its learning rate, label smoothing, dropout and seed."""
        return cls(
            options=options,
            learning_rate=config.learning_rate,
            label_smoothing=config.label_smoothing,
            dropout=config.dropout,
            seed=config.seed,
            **how,
        )


def search_heads(
    candidates: Candidates, train: FeatureSplit, val: FeatureSplit, setup: SearchSetup
) -> tuple[HeadChoice, list[np.ndarray]]:
    """Train every candidate on the cached maps and keep the best on validation.

    The candidates are branches of one model fed the same batches. Their parameters are
    disjoint and the loss is the sum of theirs, so each trains as it would alone (Adam
    scales every parameter on its own), for the price of one fit: one trace and one pass
    over the data per epoch, not one per candidate. The model is seeded, so the choice
    depends on the data, the config and the seed only.

    Returns:
        The choice, and the winner's head weights at its best epoch (``get_weights`` order).
    """
    started = time.perf_counter()
    specs, count = candidates.specs, len(candidates.specs)
    keras.utils.set_random_seed(setup.seed)
    with setup.scope():
        model, branches = _side_by_side(specs, tuple(train.maps.shape[1:]), setup)
        _compile(model, count, setup)
    best = _BestPerBranch(branches, setup.patience, setup.min_delta)
    model.fit(
        _dataset(train, count, setup.options, training=True),
        validation_data=_dataset(val, count, setup.options, training=False),
        epochs=setup.epochs,
        callbacks=[*setup.callbacks, best],
        verbose=0,
        shuffle=False,  # the dataset shuffles itself, from the seed
    )
    trials = tuple(best.trial(i, spec) for i, spec in enumerate(specs))
    winner = min(range(count), key=lambda i: (-trials[i].val_accuracy, trials[i].val_loss, i))
    seconds = time.perf_counter() - started
    choice = HeadChoice(specs[winner], trials, candidates.skipped, best.epochs_run, seconds)
    return choice, best.weights[winner]


def _side_by_side(
    specs: Sequence[HeadSpec], map_shape: tuple[int, ...], setup: SearchSetup
) -> tuple[keras.Model, list[keras.Model]]:
    maps = keras.Input(shape=map_shape, name="maps")
    branches, outputs = [], []
    for i, spec in enumerate(specs):
        pooled = pooling_layer(spec.pooling, name=f"pool_{i}")(maps)
        classes = setup.options.num_classes
        branch = build_head(
            pooled.shape[-1], classes, spec, setup.dropout, setup.seed, name=f"candidate_{i}"
        )
        branches.append(branch)
        outputs.append(branch(pooled))
    return keras.Model(maps, outputs, name="head_search"), branches


def _compile(model: keras.Model, count: int, setup: SearchSetup) -> None:
    # The same loss and metric as phase 1, once per branch.
    smoothing = setup.label_smoothing
    model.compile(
        optimizer=keras.optimizers.Adam(setup.learning_rate),
        loss=[keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)] * count,
        metrics=[[keras.metrics.CategoricalAccuracy(name="accuracy")] for _ in range(count)],
        jit_compile=setup.jit_compile,
    )


def _dataset(split: FeatureSplit, count: int, options: PipelineOptions, *, training: bool):
    """The split's batches with labels (and sample weights) repeated for every branch."""
    dataset = array_dataset(split.maps, split.labels, split.weights, options, training=training)

    def repeat(maps: Any, labels: Any, *weights: Any) -> tuple[Any, ...]:
        return (maps, (labels,) * count, *[(w,) * count for w in weights])

    return dataset.map(repeat)


class _BestPerBranch(keras.callbacks.Callback):
    """Each branch's weights and scores at its lowest validation loss so far.

    Stops training once the lowest loss of all branches has not dropped by ``min_delta``
    for ``patience`` epochs.
    """

    def __init__(self, branches: list[keras.Model], patience: int, min_delta: float) -> None:
        super().__init__()
        self.branches, self.patience, self.min_delta = branches, patience, min_delta
        self.scores: list[tuple[float, float, int]] = [(math.inf, 0.0, 0)] * len(branches)
        self.weights: list[list[np.ndarray]] = [b.get_weights() for b in branches]
        self.leading_loss, self.wait, self.epochs_run = math.inf, 0, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.epochs_run = epoch + 1
        for i, branch in enumerate(self.branches):
            # Keras names a lone output's metrics without the output's name.
            prefix = f"val_{branch.name}_" if len(self.branches) > 1 else "val_"
            loss, accuracy = float(logs[prefix + "loss"]), float(logs[prefix + "accuracy"])
            if loss < self.scores[i][0]:  # NaN never is
                self.scores[i] = (loss, accuracy, epoch + 1)
                self.weights[i] = branch.get_weights()
        lowest = min(score[0] for score in self.scores)
        if lowest < self.leading_loss - self.min_delta:
            self.leading_loss, self.wait = lowest, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def trial(self, index: int, spec: HeadSpec) -> Trial:
        loss, accuracy, epoch = self.scores[index]
        return Trial(spec, val_accuracy=accuracy, val_loss=loss, best_epoch=epoch)


def save_choice(work_dir: Path, choice: HeadChoice, weights: list[np.ndarray]) -> None:
    """Persist the choice and the winner's weights; the JSON, written last, marks it done."""
    with _replacing(work_dir / HEAD_WEIGHTS) as tmp, tmp.open("wb") as handle:
        np.savez(handle, *weights)
    with _replacing(work_dir / HEAD_CHOICE) as tmp:
        tmp.write_text(json.dumps(choice.describe(), indent=2))


def load_choice(work_dir: Path) -> tuple[HeadChoice, list[np.ndarray]] | None:
    """The choice an earlier attempt of this job saved, or None when there is none."""
    path = work_dir / HEAD_CHOICE
    if not path.is_file():
        return None
    choice = HeadChoice.from_description(json.loads(path.read_text()))
    with np.load(work_dir / HEAD_WEIGHTS) as saved:
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return choice, weights


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling to write, then rename it over ``path``: no half files."""
    tmp = path.with_name(path.name + ".tmp")
    yield tmp
    os.replace(tmp, path)
