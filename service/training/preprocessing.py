"""The train/serve decode contract: image bytes to the pixels a model sees.

The training pipeline maps ``decode_and_resize`` over files; the exported ``serving_default``
signature maps the very same function over request bytes, and the exporter checks its
export with it. Change it here and both sides change together. The backbone's own
normalisation (``BackbonePreprocessing``) is a layer of the model, so it travels with it too.
"""

from __future__ import annotations

import tensorflow as tf


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """JPEG, PNG, GIF (first frame), BMP or WebP bytes → uint8 RGB [height, width, 3]."""
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Image bytes → float32 [image_size, image_size, 3] with pixel values in 0–255.

    This is the train/serve contract: the exported serving signature calls this very
    function on request bytes, so a model sees the same pixels in both places.
    """
    image = decode_image(image_bytes)
    resized = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def decode_error(data: bytes) -> str | None:
    """Why TensorFlow cannot decode these bytes, or None when it can."""
    try:
        decode_image(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        return exc.message.splitlines()[0] if exc.message else type(exc).__name__
    return None
