"""Train a backbone from scratch on labelled images, to use later as a frozen base.

For domains far from ImageNet (digits, documents, medical scans) a base pretrained on the
organisation's own large labelled set often transfers better; its saved weights are then
a ``weights`` file for fine-tuning jobs.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from service.training.backbones import (
    BackbonePreprocessing,
    ResolvedWeights,
    build_base,
    get_backbone,
)


def pretrain_base(
    base_model: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> keras.Model:
    """Train ``base_model`` (randomly initialised) with a temporary softmax head.

    Args:
        images: float32 [N, H, W, 3], pixel values 0–255, square.
        labels: int [N] class indices.

    Returns:
        The trained base alone, BatchNormalization statistics included.
    """
    keras.utils.set_random_seed(seed)
    backbone = get_backbone(base_model)
    base = build_base(backbone, images.shape[1], ResolvedWeights("none"))
    inputs = keras.Input(images.shape[1:])
    x = BackbonePreprocessing(backbone.preprocessing)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    outputs = keras.layers.Dense(int(labels.max()) + 1, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=epochs, batch_size=batch_size, verbose=0)
    return base


def save_base_weights(base: keras.Model, path: Path) -> Path:
    """Save in the Keras weights format (the name must end in ``.weights.h5``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base.save_weights(path)
    return path
