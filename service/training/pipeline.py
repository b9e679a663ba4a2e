"""The tf.data input pipeline (decoding itself is ``preprocessing``'s, shared with serving).

Files are read and decoded in parallel, cached once decoded (in memory when they fit the
budget, else in a file cache in the job folder), shuffled, batched and prefetched. On an
accelerator the distribution strategy (see runtime.py) prefetches each batch onto the
device, so the next batch is already there when the step that needs it starts.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from service.training.preprocessing import decode_and_resize

AUTOTUNE = tf.data.AUTOTUNE
# Decoded images waiting in the shuffle buffer; the file order is already shuffled once
# (see stratified_split), so a modest buffer mixes classes well.
_SHUFFLE_IMAGES = 256


@dataclass(frozen=True)
class PipelineOptions:
    image_size: int
    batch_size: int
    num_classes: int
    seed: int
    cache_memory_bytes: int
    cache_dir: Path


def decoded_dataset(
    paths: list[str],
    labels: np.ndarray,
    weights: np.ndarray | None,
    options: PipelineOptions,
    *,
    name: str,
) -> tf.data.Dataset:
    """Single decoded examples, cached once decoded.

    Every dataset built on this one shares its cache: the feature pass (in order) and the
    fine-tuning epochs (shuffled) decode each file once between them.
    """
    columns = _columns(paths, labels, weights, options.num_classes)
    size = options.image_size

    def load(path: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return (decode_and_resize(tf.io.read_file(path), size), *rest)

    dataset = tf.data.Dataset.from_tensor_slices(columns)
    dataset = dataset.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    return _cache(dataset, len(paths) * size * size * 3 * 4, options, name)


def batched(decoded: tf.data.Dataset, options: PipelineOptions, *, training: bool):
    """``decoded_dataset``'s examples in batches; shuffled each epoch when ``training``."""
    dataset = decoded
    if training:
        count = int(dataset.cardinality())  # known: one example a file
        buffer = min(count, _SHUFFLE_IMAGES) if count > 0 else _SHUFFLE_IMAGES
        dataset = dataset.shuffle(buffer, seed=options.seed, reshuffle_each_iteration=True)
    return dataset.batch(options.batch_size).prefetch(AUTOTUNE)


def array_dataset(
    features: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    options: PipelineOptions,
    *,
    training: bool,
) -> tf.data.Dataset:
    """Batches of precomputed base features; shuffled as a whole each epoch."""
    if isinstance(features, np.memmap):
        one_hot = _one_hot(labels, options.num_classes)
        return _memmap_dataset(features, one_hot, weights, options, training=training)
    columns = _columns(features, labels, weights, options.num_classes)
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    if training:
        dataset = dataset.shuffle(len(features), seed=options.seed, reshuffle_each_iteration=True)
    return dataset.batch(options.batch_size).prefetch(AUTOTUNE)


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


def _columns(
    inputs: object, labels: np.ndarray, weights: np.ndarray | None, num_classes: int
) -> tuple[object, ...]:
    """(inputs, one-hot labels) plus sample weights when there are any: what Keras fit takes."""
    one_hot = _one_hot(labels, num_classes)
    return (inputs, one_hot) if weights is None else (inputs, one_hot, weights)


def _memmap_dataset(
    features: np.memmap,
    one_hot: np.ndarray,
    weights: np.ndarray | None,
    options: PipelineOptions,
    *,
    training: bool,
) -> tf.data.Dataset:
    # Features too large for memory stay on disk; each batch gathers its rows.
    def gather(index: np.ndarray) -> tuple[np.ndarray, ...]:
        rows = np.sort(index)
        picked = (np.asarray(features[rows]), one_hot[rows])
        return picked if weights is None else (*picked, weights[rows])

    dtypes = [tf.float32, tf.float32] + ([] if weights is None else [tf.float32])
    feature_shape = features.shape[1:]

    def load(index: tf.Tensor) -> tuple[tf.Tensor, ...]:
        tensors = tf.numpy_function(gather, [index], dtypes)
        tensors[0].set_shape((None, *feature_shape))
        tensors[1].set_shape((None, options.num_classes))
        for extra in tensors[2:]:
            extra.set_shape((None,))
        return tuple(tensors)

    dataset = tf.data.Dataset.range(len(features))
    if training:
        dataset = dataset.shuffle(len(features), seed=options.seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(options.batch_size).map(load, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def feature_store(rows: int, shape: tuple[int, ...], options: PipelineOptions) -> np.ndarray:
    """An array for base features: in memory within the cache budget, else memory-mapped."""
    nbytes = rows * int(np.prod(shape)) * 4
    if nbytes <= options.cache_memory_bytes:
        return np.empty((rows, *shape), dtype=np.float32)
    options.cache_dir.mkdir(parents=True, exist_ok=True)
    path = options.cache_dir / f"features-{rows}x{'x'.join(map(str, shape))}.npy"
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, *shape))


def _cache(dataset: tf.data.Dataset, nbytes: int, options: PipelineOptions, name: str):
    if nbytes <= options.cache_memory_bytes:
        return dataset.cache()
    # A file cache left by an interrupted run is incomplete (and locked): start afresh.
    target = options.cache_dir / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    return dataset.cache(str(target / "cache"))
