"""The classifier: preprocessing → frozen base → pooling → new head, Keras transfer-learning style.

The model is assembled from two halves that share their layers:

- ``features``: 0–255 images → preprocessing → base (always called with
  ``training=False``) → pooling. Parameter-free after the base, so its output can be
  computed once and cached while the base is frozen.
- ``head``: pooled features → optional dense layers → dropout → softmax (kept in float32
  under mixed precision, so probabilities are exact).

``model`` chains augmentation (when enabled), ``features`` and ``head``; it is what is
trained end to end, fine-tuned, evaluated and exported. Which pooling and hidden layers the
head has is a ``HeadSpec``: fixed by the job's config, or chosen on validation (heads.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from service.contract.train_config import AugmentationConfig, TrainConfig
from service.errors import InvalidConfigError
from service.training.backbones import Backbone, BackbonePreprocessing


@dataclass(frozen=True)
class HeadSpec:
    """One head design: how the base's feature maps are pooled, then the hidden layers."""

    pooling: str  # "avg" or "flatten"
    dense_units: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """A short label, e.g. ``avg`` or ``flatten+256``."""
        return "+".join([self.pooling, *map(str, self.dense_units)])

    def to_json(self) -> dict[str, object]:
        return {"pooling": self.pooling, "dense_units": list(self.dense_units)}

    @classmethod
    def from_json(cls, data: dict) -> HeadSpec:
        return cls(str(data["pooling"]), tuple(int(u) for u in data["dense_units"]))


def default_head(config: TrainConfig) -> HeadSpec:
    """The head ``config`` names, its ``auto`` parts at the cheapest choice (no search)."""
    pooling = "avg" if config.pooling == "auto" else config.pooling
    return HeadSpec(pooling, config.dense_units or ())


@dataclass
class Classifier:
    model: keras.Model
    features: keras.Model
    head: keras.Model
    base: keras.Model
    head_spec: HeadSpec


def build_classifier(
    backbone: Backbone,
    base: keras.Model,
    num_classes: int,
    image_size: int,
    config: TrainConfig,
    head: HeadSpec | None = None,
) -> Classifier:
    """Assemble the classifier around ``base``, which is frozen here.

    Args:
        head: the head to build; ``default_head(config)`` when omitted.
    """
    spec = head or default_head(config)
    base.trainable = False
    inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = _base_maps(backbone, base, inputs)
    pooled = pooling_layer(spec.pooling)(x)
    features = keras.Model(inputs, pooled, name="features")

    head_model = build_head(pooled.shape[-1], num_classes, spec, config.dropout, config.seed)
    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = images
    if config.augmentation is not None:
        x = build_augmentation(config.augmentation, config.seed)(x)
    outputs = head_model(features(x))
    model = keras.Model(images, outputs, name=f"{backbone.name}_classifier")
    return Classifier(model, features, head_model, base, spec)


def pooling_layer(pooling: str, name: str | None = None) -> layers.Layer:
    """The layer that turns feature maps [N, H, W, C] into a head's input vectors."""
    pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.Flatten
    return pool(name=name or f"{pooling}_pool")


def _base_maps(backbone: Backbone, base: keras.Model, images: keras.KerasTensor):
    x = BackbonePreprocessing(backbone.preprocessing, name="preprocessing")(images)
    # Keep the base in inference mode, even after unfreezing: its BatchNormalization
    # statistics belong to the data it was pretrained on.
    return base(x, training=False)


def build_extractor(
    backbone: Backbone, base: keras.Model, image_size: int, keep_maps: bool
) -> keras.Model:
    """0–255 images → the base's feature maps, to cache for choosing a head.

    With ``keep_maps`` false the maps are averaged to 1×1 (kept 4-D): all an average-pooled
    head needs, at a fraction of the memory.
    """
    inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = _base_maps(backbone, base, inputs)
    if not keep_maps:
        x = layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(x)
    return keras.Model(inputs, x, name="extractor")


def build_head(
    feature_dim: int,
    num_classes: int,
    spec: HeadSpec,
    dropout: float,
    seed: int,
    name: str = "head",
) -> keras.Model:
    """Pooled features → ``spec``'s hidden layers → dropout → float32 softmax."""
    inputs = keras.Input(shape=(feature_dim,), name="features")
    x = inputs
    for i, units in enumerate(spec.dense_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    x = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


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
