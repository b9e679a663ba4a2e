"""Turn a training result into one complete model version directory, and check one.

A version directory is a SavedModel (see signatures.py) plus ``assets.extra/`` holding
``model.onnx``, ``model_card.json``, ``labels.txt``, ``tf_serving_warmup_requests`` and
``misclassified/`` (thumbnails of the held-out images the model got wrong).
``export_model`` writes it (the repository points it at a staging folder); ``verify_export``
loads it back and checks it answers like the in-memory model, before anyone may serve it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from exporter.card import build_model_card
from exporter.image_guard import DEFAULT_MAX_PIXELS
from exporter.onnx_export import export_onnx
from exporter.signatures import labels_text, save_saved_model
from exporter.warmup import write_warmup_requests
from service.contract.repository import (
    ASSETS_EXTRA,
    LABELS_FILE,
    MISCLASSIFIED_DIR,
    MODEL_CARD_FILE,
    ONNX_FILE,
    WARMUP_FILE,
)
from service.contract.signatures import BYTES_INPUT, PROBABILITIES, SERVING_DEFAULT
from service.errors import ExportError
from service.training.mistakes import write_thumbnails
from service.training.preprocessing import decode_and_resize
from service.training.trainer import TrainingResult

EXTRA_FILES = (ONNX_FILE, MODEL_CARD_FILE, LABELS_FILE, WARMUP_FILE)
# Enough validation images to exercise the model without slowing the export down.
PARITY_IMAGES = 32
WARMUP_IMAGES = 8
# The SavedModel runs the same graph as Keras on the same pixels; only op scheduling differs.
SERVING_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ExportReport:
    saved_model_path: Path
    onnx_path: Path
    onnx_max_abs_diff: float
    card: dict[str, Any]


def decode_batch(images_bytes: Sequence[bytes], image_size: int) -> np.ndarray:
    """Encoded images → float32 [N, H, W, 3] through the training pipeline's decode/resize."""
    return np.stack(
        [decode_and_resize(tf.constant(data), image_size).numpy() for data in images_bytes]
    )


def validation_image_bytes(result: TrainingResult, limit: int) -> list[bytes]:
    """Raw bytes of up to ``limit`` of the run's held-out images, spread over the classes."""
    paths = result.validation_paths
    # Validation paths come sorted by class: a stride keeps every class in.
    stride = max(1, math.ceil(len(paths) / limit))
    try:
        return [path.read_bytes() for path in paths[::stride][:limit]]
    except OSError as exc:
        raise ExportError(f"cannot read a validation image for the export: {exc}") from exc


def export_model(
    result: TrainingResult,
    model_name: str,
    out_dir: Path,
    version: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
) -> ExportReport:
    """Write a complete, servable version of ``result``'s classifier into ``out_dir``.

    Args:
        result: a finished training run.
        model_name: the name the version is served under (recorded in warmup and card).
        out_dir: the version directory; created if missing, and it must be empty.
        version: the version number, when the caller already knows it (for the card).
        max_image_pixels: the most pixels an image's header may declare; ``serving_default``
            refuses more wherever the model is served.

    Raises:
        ExportError: ``out_dir`` is not empty, or the ONNX copy does not match the model.
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"refusing to export into {out_dir}: it is not empty")
    model, size = result.classifier.model, result.image_size
    save_saved_model(model, result.classes, size, out_dir, max_image_pixels)
    extra = out_dir / ASSETS_EXTRA
    extra.mkdir()

    samples = validation_image_bytes(result, PARITY_IMAGES)
    parity_images = decode_batch(samples, size)
    onnx_path = extra / ONNX_FILE
    difference = export_onnx(model, size, onnx_path, parity_images)

    (extra / LABELS_FILE).write_text(labels_text(result.classes), encoding="utf-8")
    write_warmup_requests(extra / WARMUP_FILE, model_name, samples[:WARMUP_IMAGES])
    # Now, while the job's images still exist: the job folder goes once the job ends.
    misclassified = write_thumbnails(
        result.mistakes, result.classes, extra / MISCLASSIFIED_DIR, max_image_pixels
    )
    card = build_model_card(
        result, model_name, version, out_dir, difference, len(samples), misclassified
    )
    (extra / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return ExportReport(out_dir, onnx_path, difference, card)


def verify_export(
    path: Path,
    reference_model: keras.Model,
    images_bytes: Sequence[bytes],
    tolerance: float = SERVING_TOLERANCE,
) -> float:
    """Check a version directory is complete and answers like ``reference_model``.

    Loads the SavedModel at ``path``, runs ``serving_default`` on ``images_bytes`` and
    compares its probabilities with ``reference_model`` on the same bytes decoded by
    ``decode_and_resize``.

    Returns:
        The largest absolute difference in any probability.

    Raises:
        ExportError: a file is missing, the model cannot be loaded or run, or it differs
            from the reference by more than ``tolerance``.
    """
    if not images_bytes:
        raise ValueError("verify_export needs at least one image")
    missing = [name for name in EXTRA_FILES if not (path / ASSETS_EXTRA / name).is_file()]
    if missing:
        raise ExportError(f"export at {path} lacks {ASSETS_EXTRA}/ files: {', '.join(missing)}")
    image_size = int(reference_model.input_shape[1])
    # Both sides on the CPU: its kernels are deterministic, while GPU autotuning may pick a
    # different convolution algorithm for each graph.
    with tf.device("/CPU:0"):
        actual = _served_probabilities(path, images_bytes)
        expected = _graph_predict(reference_model, decode_batch(images_bytes, image_size))
    if actual.shape != expected.shape:
        raise ExportError(f"the export answers shape {actual.shape}, expected {expected.shape}")
    difference = float(np.max(np.abs(actual - expected)))
    if not difference <= tolerance:
        raise ExportError(
            f"the export at {path} differs from the trained model by {difference:.3g} "
            f"(tolerance {tolerance:g})"
        )
    return difference


def _served_probabilities(path: Path, images_bytes: Sequence[bytes]) -> np.ndarray:
    try:
        serve = tf.saved_model.load(str(path)).signatures[SERVING_DEFAULT]
        served = serve(**{BYTES_INPUT: tf.constant(list(images_bytes), dtype=tf.string)})
    except (OSError, KeyError, ValueError, tf.errors.OpError) as exc:
        raise ExportError(f"the export at {path} cannot answer a request: {exc}") from exc
    return np.asarray(served[PROBABILITIES])


def _graph_predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    # Run the reference as a graph, as serving (and Keras' predict) do: in float16 or
    # bfloat16, eager and graph execution round differently (by up to ~2e-3 in bfloat16).
    predict = tf.function(lambda batch: model(batch, training=False))
    return np.asarray(predict(tf.constant(images)), dtype=np.float32)
