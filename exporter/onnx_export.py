"""The ONNX copy of the tensor path (``images`` → ``probabilities``), with a parity check.

The conversion goes through ``tf2onnx.convert.from_function`` on a ``tf.function`` with a
fixed input signature: with Keras 3 models that is the path tf2onnx supports (Keras' own
ONNX export takes it too); ``from_keras`` expects a tf.keras model. The opset is pinned so
the file a version ships does not change with the converter's default.

The ONNX graph is float32 throughout. A mixed-precision model is converted from its float32
twin: the same layers and the very same variables (mixed precision keeps variables in
float32), computing in float32. Converting the float16 graph instead gives a file that
differs from Keras by rounding alone (~5e-4, over the parity tolerance) and, for bfloat16,
one onnxruntime refuses to load. Parity is measured against the model that was converted.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from service.contract.signatures import PROBABILITIES, TENSOR_INPUT
from service.errors import ExportError

ONNX_OPSET = 17
OUTPUT_NAME = PROBABILITIES
# Two float32 runtimes summing in different orders agree far more closely than this.
PARITY_TOLERANCE = 1e-4


def compute_dtypes(model: keras.Layer) -> set[str]:
    """The compute dtypes of a model's layers, nested models' layers included."""
    found = {model.dtype_policy.compute_dtype}
    for layer in getattr(model, "layers", ()):
        found |= compute_dtypes(layer)
    return found


def float32_twin(model: keras.Model) -> keras.Model:
    """``model`` itself when it computes in float32, else a float32 copy with the same weights."""
    if compute_dtypes(model) == {"float32"}:
        return model

    def as_float32(layer: keras.Layer) -> keras.Layer:
        return type(layer).from_config({**layer.get_config(), "dtype": "float32"})

    twin = keras.models.clone_model(model, clone_function=as_float32, recursive=True)
    twin.set_weights(model.get_weights())
    return twin


def convert_to_onnx(model: keras.Model, image_size: int, path: Path) -> Path:
    """Write ``model``'s forward pass as an ONNX file: ``images`` [-1, H, W, 3] → ``probabilities``.

    ``model`` should compute in float32 (see ``float32_twin``).

    Returns:
        ``path``.
    """
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=TENSOR_INPUT)

    @tf.function(input_signature=[spec])
    def forward(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: tf.cast(model(images, training=False), tf.float32)}

    try:
        tf2onnx.convert.from_function(
            forward, input_signature=[spec], opset=ONNX_OPSET, output_path=str(path)
        )
    except Exception as exc:  # tf2onnx raises bare Exceptions for unsupported ops
        raise ExportError(f"cannot convert the model to ONNX: {exc}") from exc
    return path


def check_parity(onnx_path: Path, model: keras.Model, images: np.ndarray) -> float:
    """Largest absolute difference between onnxruntime and Keras on ``images``, both on CPU."""
    batch = np.asarray(images, dtype=np.float32)
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (onnx_out,) = session.run([OUTPUT_NAME], {TENSOR_INPUT: batch})
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        raise ExportError(f"onnxruntime cannot run {onnx_path.name}: {exc}") from exc
    # Keras on the CPU too: on a GPU, TensorFlow's float32 convolutions use TF32 by default,
    # which would be measured here as a conversion error.
    with tf.device("/CPU:0"):
        keras_out = np.asarray(model(batch, training=False), dtype=np.float32)
    return float(np.max(np.abs(onnx_out - keras_out)))


def export_onnx(
    model: keras.Model,
    image_size: int,
    path: Path,
    images: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Convert ``model`` (as float32) to ONNX at ``path``; check it answers like Keras does.

    Args:
        model: the classifier (float32 0–255 pixels → probabilities).
        image_size: H = W of its input.
        path: where to write the ``.onnx`` file.
        images: float32 [N, H, W, 3] pixels to compare the two on.
        tolerance: the largest absolute difference in any probability that is accepted.

    Returns:
        The measured maximum absolute difference.

    Raises:
        ExportError: when conversion fails or the difference exceeds ``tolerance``.
    """
    converted = float32_twin(model)
    convert_to_onnx(converted, image_size, path)
    difference = check_parity(path, converted, images)
    if not difference <= tolerance:  # NaN fails too
        raise ExportError(
            f"the ONNX model differs from the Keras model by {difference:.3g} "
            f"(tolerance {tolerance:g}) on {len(images)} images"
        )
    return difference
