"""Two-phase transfer learning: train a new head on a frozen base, then optionally fine-tune.

Phase 1 takes the fast path whenever it applies (frozen base, no augmentation): the base's
features are computed once and the head trains on them — the same computation as running
every image through the frozen base each epoch, without repeating the expensive part.
Before it, a config that leaves the head to ``auto`` has one chosen on those cached
features (heads.py); phase 1 goes on from the winner's weights.
Phase 2 unfreezes the top of the base and continues at a small learning rate; it only
replaces the phase-1 weights when it improves the validation loss.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from service.config import Settings
from service.contract.train_config import TrainConfig
from service.errors import DatasetError
from service.training import heads
from service.training.backbones import ResolvedWeights, build_base, get_backbone, resolve_weights
from service.training.callbacks import (
    CancelCallback,
    EpochBackup,
    HistoryCallback,
    KeepBest,
    ProgressCallback,
    load_history,
)
from service.training.data import Hooks, RunData, extract_features
from service.training.dataset import DatasetIndex, open_dataset, stratified_split
from service.training.evaluation import evaluate
from service.training.mistakes import Mistake, find_mistakes
from service.training.model import (
    Classifier,
    build_classifier,
    build_extractor,
    fine_tune_start,
    unfreeze_from,
)
from service.training.pipeline import (
    array_dataset,
)
from service.training.runtime import Runtime, dtype_policy, resolve_runtime

PHASE1_WEIGHTS = "phase1-weights.npz"
PHASE1_STATE = "phase1.json"
PHASE2_BEST = "phase2-best.npz"
HISTORY = "history.json"


@dataclass(kw_only=True)
class TrainingResult:
    classifier: Classifier
    config: TrainConfig
    image_size: int
    weights: ResolvedWeights
    dataset: DatasetIndex
    split: dict[str, int]
    runtime: dict[str, object]
    used_feature_cache: bool
    # Which head was built, and every candidate tried when it was chosen on validation.
    head: dict[str, object] = field(default_factory=dict)
    history: list[dict[str, object]] = field(default_factory=list)
    fine_tune: dict[str, object] | None = None
    evaluation: dict[str, object] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # The held-out images, sorted by class: the exporter checks and warms up with them.
    validation_paths: tuple[Path, ...] = ()
    # The held-out images the model got wrong, most confident first (thumbnails come from it).
    mistakes: tuple[Mistake, ...] = ()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    def summary(self) -> dict[str, object]:
        """Everything about the run that is worth keeping, as JSON-ready data."""
        return {
            "model_name": self.config.model_name,
            "classes": list(self.classes),
            "base_model": self.config.base_model,
            "weights": {
                "source": self.weights.source,
                "file": self.weights.path.name if self.weights.path else None,
                "sha256": self.weights.sha256,
            },
            "image_size": self.image_size,
            "config": self.config.model_dump(mode="json"),
            "dataset": {
                "fingerprint": self.dataset.fingerprint,
                "class_counts": self.dataset.class_counts,
                "split": self.split,
                "skipped": [vars(s) for s in self.dataset.skipped],
            },
            "runtime": self.runtime,
            "used_feature_cache": self.used_feature_cache,
            "head": self.head,
            "history": self.history,
            "fine_tune": self.fine_tune,
            "evaluation": self.evaluation,
            "timings": self.timings,
        }


class _Run:
    """State shared by the phases of one training run."""

    def __init__(
        self, config: TrainConfig, work_dir: Path, settings: Settings, hooks: Hooks, rt: Runtime
    ) -> None:
        self.config, self.work_dir, self.settings, self.hooks, self.rt = (
            config,
            work_dir,
            settings,
            hooks,
            rt,
        )
        self.timings: dict[str, float] = {}
        # A resumed run continues the history of the attempts before it.
        self.history: list[dict[str, object]] = load_history(work_dir / HISTORY)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        spent = self.timings.get(name, 0.0) + time.perf_counter() - started
        self.timings[name] = round(spent, 3)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Build layers under the run's distribution strategy and precision."""
        with self.rt.strategy.scope(), dtype_policy(self.rt.precision):
            yield

    def callbacks(self, phase: str, epochs: int, steps: int) -> list[keras.callbacks.Callback]:
        # Each epoch is checkpointed: a run resumed after a crash goes on from the last one.
        found: list[keras.callbacks.Callback] = [
            HistoryCallback(self.history, phase, self.work_dir / HISTORY),
            EpochBackup(str(self.work_dir / "backup" / phase)),
        ]
        if self.hooks.progress:
            found.append(ProgressCallback(self.hooks.progress, phase, epochs, steps))
        return found + self.cancel_callbacks()

    def cancel_callbacks(self) -> list[keras.callbacks.Callback]:
        """A cancel check after every batch, when the caller can cancel."""
        if self.hooks.should_cancel:
            return [CancelCallback(self.hooks.should_cancel)]
        return []

    def compile(self, model: keras.Model, learning_rate: float, num_classes: int) -> None:
        # Optimizer and metric variables must live under the model's strategy.
        with self.rt.strategy.scope():
            self._compile(model, learning_rate, num_classes)

    def _compile(self, model: keras.Model, learning_rate: float, num_classes: int) -> None:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=self.config.label_smoothing),
            metrics=[
                keras.metrics.CategoricalAccuracy(name="accuracy"),
                keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top_k_accuracy"),
            ],
            jit_compile=self.rt.jit_compile,
        )


def train(
    source: Path,
    config: TrainConfig,
    work_dir: Path,
    settings: Settings,
    hooks: Hooks | None = None,
    runtime: Runtime | None = None,
) -> TrainingResult:
    """Run a whole fine-tuning job on a dataset folder or archive.

    Args:
        source: a folder of class folders, or a zip/tar archive of one.
        config: the job's validated options.
        work_dir: the job's folder: extracted data, caches, checkpoints for resuming.
        settings: operator limits and folders.
        hooks: progress reporting and cancellation.
        runtime: devices/precision/strategy; detected when omitted.

    Returns:
        The trained classifier with its evaluation and lineage.
    """
    hooks = hooks or Hooks()
    backbone = get_backbone(config.base_model)
    image_size = config.image_size or backbone.default_size
    # Weights are checked before any image is touched: a missing file fails in milliseconds.
    weights = resolve_weights(backbone, config.weights, image_size, settings)
    rt = runtime or resolve_runtime(config)
    run = _Run(config, work_dir, settings, hooks, rt)
    work_dir.mkdir(parents=True, exist_ok=True)

    with run.timed("ingest"):
        index = open_dataset(source, work_dir, settings)
    train_idx, val_idx = stratified_split(index.labels, config.validation_split, config.seed)
    if len(val_idx) == 0:
        raise DatasetError("no class has enough images to hold any back for validation")
    num_classes = len(index.classes)

    keras.utils.set_random_seed(config.seed)
    with run.scope():
        base = build_base(backbone, image_size, weights)
    start = fine_tune_start(base, config) if config.fine_tunes else None

    data = RunData(index, train_idx, val_idx, config, image_size, work_dir, settings)
    fast = config.feature_cache and config.augmentation is None
    choice, head_weights = _choose_head(run, base, data, fast)
    # Seeded again: phase 1 starts alike whether this attempt searched or read the choice.
    keras.utils.set_random_seed(config.seed)
    with run.scope():
        classifier = build_classifier(backbone, base, num_classes, image_size, config, choice.spec)
    if head_weights is not None:
        classifier.head.set_weights(head_weights)
    with run.timed("head"):
        phase1_loss = _phase1(run, classifier, data, fast, choice.winner_loss)
    fine_tune = None
    if start is not None:
        with run.timed("fine_tune"):
            fine_tune = _phase2(run, classifier, data, start, phase1_loss)
    with run.timed("evaluate"):
        probabilities = _predict_validation(classifier, data, fast and fine_tune is None)
        evaluation = evaluate(probabilities, data.val_labels, index.classes)
    return TrainingResult(
        classifier=classifier,
        config=config,
        image_size=image_size,
        weights=weights,
        dataset=index,
        split={"train": len(train_idx), "validation": len(val_idx)},
        runtime=rt.describe(),
        used_feature_cache=fast,
        head=choice.describe(),
        history=run.history,
        fine_tune=fine_tune,
        evaluation=evaluation,
        timings=run.timings,
        validation_paths=tuple(Path(p) for p in data.val_paths),
        mistakes=find_mistakes(probabilities, data.val_labels, data.val_paths),
    )


def _choose_head(
    run: _Run, base: keras.Model, data: RunData, fast: bool
) -> tuple[heads.HeadChoice, list[np.ndarray] | None]:
    """The head to build and, when it was searched for, the winner's trained weights."""
    known = heads.known_choice(run.config, run.work_dir)
    if known is not None:  # fixed by the config, or saved by an earlier attempt of this job
        return known
    candidates = heads.candidate_heads(run.config, tuple(base.output.shape[1:]))
    train, val = _cached_maps(run, base, data, candidates.need_maps)
    setup = heads.SearchSetup.for_run(
        run.config,
        data.options,
        jit_compile=run.rt.jit_compile,
        scope=run.scope,
        # Not checkpointed: a crash before the choice is saved redoes the (seeded) search.
        callbacks=[*_search_progress(run, data), *run.cancel_callbacks()],
    )
    with run.timed("head_search"):
        choice, weights = heads.search_heads(candidates, train, val, setup)
    heads.save_choice(run.work_dir, choice, weights)
    if fast:  # phase 1 trains on these maps, pooled the winner's way: no second pass
        for split, maps in (("train", train.maps), ("validation", val.maps)):
            data.features[split] = heads.pool_features(maps, choice.spec.pooling)
    return choice, weights


def _search_progress(run: _Run, data: RunData) -> list[keras.callbacks.Callback]:
    if not run.hooks.progress:
        return []
    # The search's epochs show as progress, not as epochs of the model's history.
    report = ProgressCallback(
        run.hooks.progress, "head_search", heads.SEARCH_EPOCHS, data.steps, epoch_ends=False
    )
    return [report]


def _cached_maps(
    run: _Run, base: keras.Model, data: RunData, keep_maps: bool
) -> tuple[heads.FeatureSplit, heads.FeatureSplit]:
    """The base's feature maps (or their averages) of both splits, one pass over the images."""
    backbone = get_backbone(run.config.base_model)
    with run.scope():
        extractor = build_extractor(backbone, base, data.options.image_size, keep_maps)
    with run.timed("features"):
        train_maps = extract_features(extractor, data, "train", run.hooks)
        val_maps = extract_features(extractor, data, "validation", run.hooks)
    train = heads.FeatureSplit(train_maps, data.train_labels, data.train_weights)
    return train, heads.FeatureSplit(val_maps, data.val_labels)


def _phase1(
    run: _Run, clf: Classifier, data: RunData, fast: bool, start_loss: float | None = None
) -> float:
    config, state = run.config, run.work_dir / PHASE1_STATE
    if state.is_file():  # resuming a job whose head was already trained
        clf.model.set_weights(load_weight_arrays(run.work_dir / PHASE1_WEIGHTS))
        return float(json.loads(state.read_text())["val_loss"])
    model = clf.head if fast else clf.model
    if fast:
        train_ds, val_ds = _feature_datasets(run, clf, data)
    else:
        train_ds, val_ds = data.images("train"), data.images("validation")
    run.compile(model, config.learning_rate, data.options.num_classes)
    stop = keras.callbacks.EarlyStopping(
        patience=config.early_stopping_patience, restore_best_weights=True
    )
    callbacks = [*run.callbacks("head", config.epochs, data.steps), stop]
    if start_loss is not None:  # the head search's winner: end no worse than it started
        callbacks.append(KeepBest(start_loss, model.get_weights()))
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=0,
        shuffle=False,  # the datasets shuffle themselves
    )
    val_loss = float(model.evaluate(val_ds, verbose=0, return_dict=True)["loss"])
    save_weight_arrays(clf.model, run.work_dir / PHASE1_WEIGHTS)
    state.write_text(json.dumps({"val_loss": val_loss}))
    return val_loss


def save_weight_arrays(model: keras.Model, path: Path) -> None:
    """Model variables only, in ``get_weights`` order: no optimizer state rides along."""
    with path.open("wb") as handle:
        np.savez(handle, *model.get_weights())


def load_weight_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _feature_datasets(run: _Run, clf: Classifier, data: RunData):
    splits = {}
    for split, labels, weights, training in (
        ("train", data.train_labels, data.train_weights, True),
        ("validation", data.val_labels, None, False),
    ):
        if split not in data.features:  # the head search may have left them pooled already
            with run.timed("features"):
                data.features[split] = extract_features(clf.features, data, split, run.hooks)
        splits[split] = array_dataset(
            data.features[split], labels, weights, data.options, training=training
        )
    return splits["train"], splits["validation"]


def _phase2(run: _Run, clf: Classifier, data: RunData, start: int, phase1_loss: float) -> dict:
    config = run.config
    unfrozen = unfreeze_from(clf.base, start)
    # Changing `trainable` only takes effect after compiling again.
    run.compile(clf.model, config.fine_tune_learning_rate, data.options.num_classes)
    keep = KeepBest(phase1_loss, clf.model.get_weights(), run.work_dir / PHASE2_BEST)
    stop = keras.callbacks.EarlyStopping(patience=config.early_stopping_patience)
    epochs = config.fine_tune_epochs
    callbacks = [*run.callbacks("fine_tune", epochs, data.steps), keep, stop]
    clf.model.fit(
        data.images("train"),
        validation_data=data.images("validation"),
        epochs=epochs,
        callbacks=callbacks,
        verbose=0,
        shuffle=False,
    )
    return {
        "unfrozen_layers": unfrozen,
        "first_layer": clf.base.layers[start].name,
        "phase1_val_loss": round(phase1_loss, 6),
        "best_val_loss": round(keep.best, 6),
        "improved": keep.improved,
    }


def _predict_validation(clf: Classifier, data: RunData, from_features: bool) -> np.ndarray:
    if from_features and "validation" in data.features:
        features = data.features["validation"]
        return np.asarray(clf.head.predict(features, batch_size=data.options.batch_size, verbose=0))
    return np.asarray(clf.model.predict(data.images("validation"), verbose=0))
