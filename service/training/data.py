"""The training data of one run: decoded images per split, and the base's features of them.

Each split's images are decoded once into a cache that every pass over them shares: the
feature pass reads them in file order and fills it, phase 2's epochs read it shuffled.
The feature pass runs the frozen base (or its feature extractor) over every image once, in
padded batches of one shape, into an array (memory-mapped past the cache budget).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from service.config import Settings
from service.contract.train_config import TrainConfig
from service.errors import TrainingCancelledError
from service.training.callbacks import CancelFn, Progress, ProgressFn
from service.training.dataset import DatasetIndex
from service.training.pipeline import PipelineOptions, batched, decoded_dataset, feature_store

# Images a feature-pass batch holds at least: inference keeps no activations for a
# backward pass, and on a CPU 64 images a call ran about 1.3x faster than 32 (MobileNetV2).
FEATURE_BATCH = 64


@dataclass
class Hooks:
    """How a caller watches and steers a run; both optional."""

    progress: ProgressFn | None = None
    should_cancel: CancelFn | None = None


class RunData:
    """The run's datasets, built lazily: the fast path never decodes an image twice."""

    def __init__(
        self,
        index: DatasetIndex,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        config: TrainConfig,
        image_size: int,
        work_dir: Path,
        settings: Settings,
    ) -> None:
        labels = np.asarray(index.labels)
        paths = np.asarray([str(p) for p in index.paths])
        self.train_paths, self.val_paths = paths[train_idx].tolist(), paths[val_idx].tolist()
        self.train_labels, self.val_labels = labels[train_idx], labels[val_idx]
        self.train_weights = sample_weights(self.train_labels, len(index.classes), config)
        self.options = PipelineOptions(
            image_size=image_size,
            batch_size=config.batch_size,
            num_classes=len(index.classes),
            seed=config.seed,
            cache_memory_bytes=settings.cache_memory_bytes,
            cache_dir=work_dir / "cache",
        )
        self.steps = math.ceil(len(train_idx) / config.batch_size)
        self._decoded: dict[str, object] = {}
        self.features: dict[str, np.ndarray] = {}

    def _examples(self, split: str):
        """The split's decoded examples; one cache, shared by every pass over them."""
        if split not in self._decoded:
            train = split == "train"
            self._decoded[split] = decoded_dataset(
                self.train_paths if train else self.val_paths,
                self.train_labels if train else self.val_labels,
                self.train_weights if train else None,
                self.options,
                name=split,
            )
        return self._decoded[split]

    def images(self, split: str):
        return batched(self._examples(split), self.options, training=split == "train")

    def unshuffled_images(self, split: str, batch_size: int | None = None):
        """In file order: the feature pass, which fills the cache the epochs after it read."""
        options = self.options
        if batch_size is not None:
            options = dataclasses.replace(options, batch_size=batch_size)
        return batched(self._examples(split), options, training=False)


def sample_weights(labels: np.ndarray, num_classes: int, config: TrainConfig):
    if config.class_weight == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
    per_class = len(labels) / (num_classes * np.maximum(counts, 1.0))
    return per_class[labels].astype(np.float32)


def extract_features(model: keras.Model, data: RunData, split: str, hooks: Hooks) -> np.ndarray:
    """``model``'s outputs for every image of ``split``, in order, in one pass."""
    rows = len(data.train_paths if split == "train" else data.val_paths)
    store = feature_store(rows, tuple(model.output.shape[1:]), data.options)
    size = max(data.options.batch_size, FEATURE_BATCH)
    batches = data.unshuffled_images(split, size)
    total = math.ceil(rows / size)
    offset = 0
    for step, batch in enumerate(batches, start=1):
        images = batch[0]
        count = int(images.shape[0])
        if count < size:  # the last batch, padded: one traced shape for every batch
            images = tf.pad(images, [[0, size - count], [0, 0], [0, 0], [0, 0]])
        out = np.asarray(model.predict_on_batch(images), dtype=np.float32)[:count]
        store[offset : offset + count] = out
        offset += count
        if hooks.should_cancel and hooks.should_cancel():
            raise TrainingCancelledError("training was cancelled")
        if hooks.progress:
            hooks.progress(Progress("features", 1, 1, step, total))
    return store
