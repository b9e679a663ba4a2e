"""The classifier: preprocessing → frozen base → pooling → new head, Keras transfer-learning style.

The model is assembled from two halves that share their layers:

- ``features``: 0–255 images → preprocessing → base (always called with
  ``training=False``) → pooling. Parameter-free after the base, so its output can be
  computed once and cached while the base is frozen.
- ``head``: pooled features → optional dense layers → dropout → softmax (kept in float32
  under mixed precision, so probabilities are exact).

``model`` chains augmentation (when enabled), ``features`` and ``head``; it is what is
trained end to end, fine-tuned, evaluated and exported.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from service.contract.train_config import AugmentationConfig, TrainConfig
from service.errors import InvalidConfigError
from service.training.backbones import Backbone, BackbonePreprocessing


@dataclass
class Classifier:
    model: keras.Model
    features: keras.Model
    head: keras.Model
    base: keras.Model


def build_classifier(
    backbone: Backbone, base: keras.Model, num_classes: int, image_size: int, config: TrainConfig
) -> Classifier:
    base.trainable = False
    inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = BackbonePreprocessing(backbone.preprocessing, name="preprocessing")(inputs)
    # Keep the base in inference mode, even after unfreezing: its BatchNormalization
    # statistics belong to the data it was pretrained on.
    x = base(x, training=False)
    pool = layers.GlobalAveragePooling2D if config.pooling == "avg" else layers.Flatten
    pooled = pool(name=f"{config.pooling}_pool")(x)
    features = keras.Model(inputs, pooled, name="features")

    head = _build_head(pooled.shape[-1], num_classes, config)
    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = images
    if config.augmentation is not None:
        x = build_augmentation(config.augmentation, config.seed)(x)
    outputs = head(features(x))
    model = keras.Model(images, outputs, name=f"{backbone.name}_classifier")
    return Classifier(model, features, head, base)


def _build_head(feature_dim: int, num_classes: int, config: TrainConfig) -> keras.Model:
    inputs = keras.Input(shape=(feature_dim,), name="features")
    x = inputs
    for i, units in enumerate(config.dense_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
    if config.dropout > 0:
        x = layers.Dropout(config.dropout, seed=config.seed, name="dropout")(x)
    x = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="head")


def build_augmentation(config: AugmentationConfig, seed: int) -> keras.Sequential:
    """Random transforms as layers: they run where the model runs (the GPU) and only in fit."""
    steps: list[layers.Layer] = []
    if config.flip != "none":
        steps.append(layers.RandomFlip(config.flip, seed=seed))
    if config.rotation:
        steps.append(layers.RandomRotation(config.rotation, seed=seed))
    if config.zoom:
        steps.append(layers.RandomZoom(config.zoom, seed=seed))
    if config.contrast:
        steps.append(layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed))
    return keras.Sequential(steps, name="augmentation")


def fine_tune_start(base: keras.Model, config: TrainConfig) -> int:
    """Index of the first base layer that phase 2 unfreezes."""
    count = len(base.layers)
    at = config.fine_tune_at
    if at is None:
        return max(0, count - config.fine_tune_layers)
    if isinstance(at, int):
        if not 0 <= at < count:
            raise InvalidConfigError(f"fine_tune_at {at} is outside the base's 0..{count - 1}")
        return at
    names = [layer.name for layer in base.layers]
    if at not in names:
        raise InvalidConfigError(f"fine_tune_at names no layer of {base.name}: {at!r}")
    return names.index(at)


def unfreeze_from(base: keras.Model, start: int) -> int:
    """Make base layers from ``start`` on trainable, BatchNormalization excepted.

    Returns how many layers with weights became trainable.
    """
    base.trainable = True
    unfrozen = 0
    for index, layer in enumerate(base.layers):
        trainable = index >= start and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += bool(trainable and layer.weights)
    return unfrozen
