"""A real transfer experiment on scikit-learn's handwritten digits.

A small base is pretrained on digits 0–4 drawn in both polarities (dark on light and
light on dark), the way a base trained on a large varied collection has seen both. A
customer then brings ten images per class of digits 5–9, all one polarity, while the
traffic the model will serve mixes both. Frozen transfer must beat the same model
trained from scratch on those fifty images — through ftserve with random weights, and
trained end to end — on every other 5–9 digit, half of them inverted.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from service.contract.train_config import TrainConfig
from service.training.backbones import (
    BackbonePreprocessing,
    ResolvedWeights,
    build_base,
    get_backbone,
)
from service.training.dataset import scan_dataset
from service.training.pretrain import pretrain_base, save_base_weights
from service.training.sample_data import make_digits_dataset
from service.training.trainer import train
from tests.training.conftest import load_images

SIZE = 32
SHOTS = 10


def _images_and_labels(root, settings) -> tuple[np.ndarray, np.ndarray]:
    index = scan_dataset(root, settings)
    return load_images(index.paths, SIZE), np.asarray(index.labels)


def _end_to_end_scratch(images: np.ndarray, labels: np.ndarray) -> keras.Model:
    """The same network, every layer trained from random weights (BatchNorm in training mode)."""
    keras.utils.set_random_seed(0)
    backbone = get_backbone("small_cnn")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = BackbonePreprocessing(backbone.preprocessing)(inputs)
    x = build_base(backbone, SIZE, ResolvedWeights("none"))(x)
    x = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=40, batch_size=16, verbose=0)
    return model


def _accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(model.predict(images, verbose=0).argmax(1) == labels))


@pytest.mark.slow
def test_frozen_transfer_beats_the_same_model_trained_from_scratch(tmp_path, settings):
    source, _ = make_digits_dataset(tmp_path / "digits04", (0, 1, 2, 3, 4))
    images, labels = _images_and_labels(source, settings)
    base = pretrain_base(
        "small_cnn",
        np.concatenate([images, 255.0 - images]),
        np.concatenate([labels, labels]),
        epochs=8,
        seed=0,
    )
    save_base_weights(base, settings.weights_dir / "digits04.weights.h5")

    few_root, few = make_digits_dataset(tmp_path / "few", (5, 6, 7, 8, 9), per_class=SHOTS)
    test_root, _ = make_digits_dataset(tmp_path / "test", (5, 6, 7, 8, 9), exclude=frozenset(few))
    test_images, test_labels = _images_and_labels(test_root, settings)
    inverted = np.random.default_rng(0).random(len(test_labels)) < 0.5
    test_images[inverted] = 255.0 - test_images[inverted]

    config = TrainConfig(
        model_name="digits",
        base_model="small_cnn",
        weights="digits04.weights.h5",
        image_size=SIZE,
        epochs=100,
        learning_rate=1e-2,
        early_stopping_patience=100,
        batch_size=8,
        seed=0,
    )
    transfer = train(few_root, config, tmp_path / "transfer", settings)
    random_base = train(
        few_root, config.model_copy(update={"weights": "none"}), tmp_path / "scratch", settings
    )
    end_to_end = _end_to_end_scratch(*_images_and_labels(few_root, settings))

    scores = {
        "transfer": _accuracy(transfer.classifier.model, test_images, test_labels),
        "ftserve from scratch": _accuracy(random_base.classifier.model, test_images, test_labels),
        "end-to-end from scratch": _accuracy(end_to_end, test_images, test_labels),
    }
    print(f"digits 5-9, {SHOTS} per class, {len(test_labels)} held-out images: {scores}")
    assert transfer.classes == tuple(f"digit_{d}" for d in range(5, 10))
    assert scores["transfer"] >= 0.6
    assert scores["transfer"] >= scores["ftserve from scratch"] + 0.1
    assert scores["transfer"] >= scores["end-to-end from scratch"] + 0.1
