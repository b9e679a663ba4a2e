"""The SavedModel a model server loads: two serving signatures around the trained classifier.

``serving_default`` takes encoded images (``image_bytes``, DT_STRING [-1]) and decodes and
resizes them with ``service.training.preprocessing.decode_and_resize``, the very function the
training pipeline used, so a request's pixels match what the model learned on. Before that,
each image's header is judged against a pixel limit (``exporter.image_guard``), so that a
server which runs none of our Python refuses decompression bombs too.
``serving_tensor`` takes float32 pixels (``images``, [-1, H, W, 3], 0–255). Both answer
``probabilities`` [-1, C], ``labels`` [-1, K] and ``label_scores`` [-1, K], K = min(5, C).

The class names travel inside the model twice: as a constant the graph gathers labels from,
and as the asset ``labels.txt`` (one class per line, training order).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from exporter.image_guard import DEFAULT_MAX_PIXELS, checked_image
from service.contract.repository import LABELS_FILE
from service.contract.signatures import (
    BYTES_INPUT,
    LABEL_SCORES,
    LABELS,
    PROBABILITIES,
    SERVING_DEFAULT,
    SERVING_TENSOR,
    TENSOR_INPUT,
    top_k,
)
from service.training.preprocessing import decode_and_resize


def labels_text(classes: Sequence[str]) -> str:
    """The labels file's contents: one class per line, in training order."""
    return "".join(f"{name}\n" for name in classes)


class ServingModule(tf.Module):
    """The classifier, its class names and the two serving functions, as one trackable."""

    def __init__(
        self,
        model: keras.Model,
        classes: Sequence[str],
        image_size: int,
        labels_path: Path,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(name="ftserve_classifier")
        self.model = model
        self.image_size = image_size
        self.max_image_pixels = max_image_pixels
        self.k = top_k(len(classes))
        self.class_names = tf.constant(list(classes), dtype=tf.string)
        self.labels_asset = tf.saved_model.Asset(str(labels_path))
        pixels = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=TENSOR_INPUT)
        self.serving_default = tf.function(
            self._from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]
        )
        self.serving_tensor = tf.function(self._from_pixels, input_signature=[pixels])

    def _from_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        size, limit = self.image_size, self.max_image_pixels

        def decode(item: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
            data, index = item
            return decode_and_resize(checked_image(data, index, limit), size)

        images = tf.map_fn(
            decode,
            (image_bytes, tf.range(tf.size(image_bytes))),
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return self._from_pixels(images)

    def _from_pixels(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        # Mixed-precision models already end in a float32 softmax; the cast makes it a contract.
        probabilities = tf.cast(self.model(images, training=False), tf.float32)
        scores, indices = tf.math.top_k(probabilities, k=self.k)
        return {
            PROBABILITIES: probabilities,
            LABELS: tf.gather(self.class_names, indices),
            LABEL_SCORES: scores,
        }

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The concrete functions to export, keyed by signature name."""
        return {
            SERVING_DEFAULT: self.serving_default.get_concrete_function(),
            SERVING_TENSOR: self.serving_tensor.get_concrete_function(),
        }


def save_saved_model(
    model: keras.Model,
    classes: Sequence[str],
    image_size: int,
    path: Path,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
) -> Path:
    """Write ``model`` as a SavedModel with both serving signatures at ``path``.

    Args:
        model: float32 [N, H, W, 3] pixels in 0–255 → probabilities [N, C].
        classes: class names in training order (index i is output column i).
        image_size: H = W, the size ``decode_and_resize`` produces.
        path: the SavedModel directory (a model version directory).
        max_image_pixels: ``serving_default`` refuses an image whose header declares more.

    Returns:
        ``path``.
    """
    with tempfile.TemporaryDirectory(prefix="ftserve-labels-") as scratch:
        # The asset is copied into <path>/assets/ while saving, so a scratch file will do.
        labels_path = Path(scratch) / LABELS_FILE
        labels_path.write_text(labels_text(classes), encoding="utf-8")
        module = ServingModule(model, classes, image_size, labels_path, max_image_pixels)
        tf.saved_model.save(module, str(path), signatures=module.signatures())
    return path
