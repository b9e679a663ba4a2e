"""The registry of pretrained backbones: Keras Applications plus one small CNN.

Each entry knows how to build the convolutional base without its classifier, which
preprocessing its weights expect, its natural image size and, for ImageNet weights, the
file name Keras caches them under. The base always takes float pixels in 0–255; the
matching preprocessing is a layer in front of it, so it travels with the exported model.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

from service.config import Settings
from service.contract.train_config import weights_file
from service.errors import InvalidConfigError, WeightsUnavailableError

# Channel means (BGR) of the ImageNet training set, as the Caffe-era models expect.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


@keras.saving.register_keras_serializable(package="ftserve")
class BackbonePreprocessing(keras.layers.Layer):
    """Maps 0–255 RGB pixels to what a backbone's weights were trained on.

    Modes: ``tf`` scales to [-1, 1]; ``caffe`` swaps to BGR and subtracts the ImageNet
    mean; ``unit`` scales to [0, 1]; ``none`` passes through (the base normalises itself).
    """

    MODES = ("tf", "caffe", "unit", "none")

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, images: Any) -> Any:
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "unit":
            return images / 255.0
        if self.mode == "caffe":
            bgr = ops.flip(images, axis=-1)
            return bgr - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=bgr.dtype)
        return images

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


BaseBuilder = Callable[[tuple[int, int, int], "str | None"], keras.Model]


@dataclass(frozen=True)
class Backbone:
    name: str
    build: BaseBuilder
    preprocessing: str
    default_size: int
    min_size: int = 32
    imagenet_file: Callable[[int], str] | None = None

    def imagenet_path(self, image_size: int) -> Path:
        if self.imagenet_file is None:
            raise WeightsUnavailableError(f"backbone {self.name!r} has no ImageNet weights")
        return keras_home() / "models" / self.imagenet_file(image_size)


def keras_home() -> Path:
    """Where Keras caches downloaded files (``$KERAS_HOME``, else ``~/.keras``)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def _application(constructor: Callable[..., keras.Model]) -> BaseBuilder:
    def build(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
        return constructor(include_top=False, weights=weights, input_shape=input_shape)

    return build


def _small_cnn(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    """A compact VGG-style base for small images (digits, icons) and quick experiments."""
    inputs = keras.Input(shape=input_shape, name="small_cnn_input")
    x = inputs
    for block, filters in enumerate((32, 64, 128), start=1):
        for conv in (1, 2):
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=False,
                kernel_initializer="he_normal",
                name=f"block{block}_conv{conv}",
            )(x)
            # A short momentum lets the moving statistics settle on small datasets.
            x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
    model = keras.Model(inputs, x, name="small_cnn")
    if weights is not None:
        model.load_weights(weights)
    return model


def _mobilenet_v2_file(size: int) -> str:
    rows = size if size in _MOBILENET_V2_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


apps = keras.applications
BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            "mobilenet_v2",
            _application(apps.MobileNetV2),
            "tf",
            224,
            imagenet_file=_mobilenet_v2_file,
        ),
        Backbone(
            "mobilenet_v3_small",
            _application(apps.MobileNetV3Small),
            "none",
            224,
            imagenet_file=lambda _: "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        ),
        Backbone(
            "mobilenet_v3_large",
            _application(apps.MobileNetV3Large),
            "none",
            224,
            imagenet_file=lambda _: "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        ),
        Backbone(
            "efficientnet_b0",
            _application(apps.EfficientNetB0),
            "none",
            224,
            imagenet_file=lambda _: "efficientnetb0_notop.h5",
        ),
        Backbone(
            "efficientnet_v2_b0",
            _application(apps.EfficientNetV2B0),
            "none",
            224,
            imagenet_file=lambda _: "efficientnetv2-b0_notop.h5",
        ),
        Backbone(
            "resnet50",
            _application(apps.ResNet50),
            "caffe",
            224,
            imagenet_file=lambda _: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Backbone(
            "vgg16",
            _application(apps.VGG16),
            "caffe",
            224,
            imagenet_file=lambda _: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        Backbone("small_cnn", _small_cnn, "unit", 32, min_size=8),
    )
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise InvalidConfigError(f"unknown base_model {name!r}; choose one of: {known}") from None


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a base's initial weights come from, decided before any training work."""

    source: str  # "imagenet", "none" or "file"
    path: Path | None = None
    sha256: str | None = None


def resolve_weights(
    backbone: Backbone, weights: str, image_size: int, settings: Settings
) -> ResolvedWeights:
    """Find the weights a job asked for, failing at once (no network) when they are absent."""
    if weights == "none":
        return ResolvedWeights("none")
    if weights == "imagenet":
        path = backbone.imagenet_path(image_size)
        if path.is_file():
            return ResolvedWeights("imagenet", path, _sha256(path))
        if settings.weights_download:
            return ResolvedWeights("imagenet")
        raise WeightsUnavailableError(
            f"ImageNet weights for {backbone.name} are not in the Keras cache: expected "
            f"{path}. Put {path.name} there (or point KERAS_HOME at a folder holding "
            f"models/{path.name}), or set FTSERVE_WEIGHTS_DOWNLOAD=true to let Keras fetch it."
        )
    return _weights_file(weights, settings)


def _weights_file(name: str, settings: Settings) -> ResolvedWeights:
    path = weights_file(name, settings.weights_dir)
    return ResolvedWeights("file", path, _sha256(path))


def build_base(backbone: Backbone, image_size: int, weights: ResolvedWeights) -> keras.Model:
    """Construct the convolutional base and load its initial weights."""
    if image_size < backbone.min_size:
        raise InvalidConfigError(
            f"image_size {image_size} is below {backbone.name}'s minimum of {backbone.min_size}"
        )
    shape = (image_size, image_size, 3)
    keras_weights = None
    if weights.source == "imagenet":
        keras_weights = str(weights.path) if weights.path else "imagenet"
    base = backbone.build(shape, keras_weights)
    if weights.source == "file" and weights.path is not None:
        _load_weights_file(base, weights.path, f"{backbone.name} at image_size {image_size}")
    return base


def _load_weights_file(base: keras.Model, path: Path, target: str) -> None:
    # Keras warns, layer by layer, about weights it skips; a base that silently keeps some
    # random layers is worse than no job, so any such warning is a mismatch.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base.load_weights(path)
        except (ValueError, OSError, KeyError) as exc:
            raise WeightsUnavailableError(
                f"weights file {path.name!r} does not fit {target}: {exc}"
            ) from exc
    skipped = [str(w.message).splitlines()[0] for w in caught]
    if skipped:
        raise WeightsUnavailableError(
            f"weights file {path.name!r} does not fit {target}: {skipped[0]}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
