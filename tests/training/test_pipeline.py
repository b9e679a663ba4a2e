from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from service.training.pipeline import (
    PipelineOptions,
    array_dataset,
    batched,
    decoded_dataset,
    feature_store,
)
from service.training.preprocessing import decode_and_resize, decode_error
from tests.training.images import image_bytes, write_image


def _options(tmp_path, **overrides) -> PipelineOptions:
    values = dict(
        image_size=16,
        batch_size=4,
        num_classes=3,
        seed=1,
        cache_memory_bytes=1 << 30,
        cache_dir=tmp_path / "cache",
    )
    values.update(overrides)
    return PipelineOptions(**values)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_decode_and_resize_gives_float_pixels_of_the_requested_size(fmt):
    image = decode_and_resize(tf.constant(image_bytes(fmt, size=(40, 24))), 16)

    assert image.shape == (16, 16, 3)
    assert image.dtype == tf.float32
    assert float(tf.reduce_min(image)) >= 0.0 and float(tf.reduce_max(image)) <= 255.0


def test_decoding_a_solid_png_keeps_its_pixel_values():
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 77)).save(buffer, format="PNG")

    image = decode_and_resize(tf.constant(buffer.getvalue()), 8).numpy()

    np.testing.assert_allclose(image, np.broadcast_to([10, 200, 77], (8, 8, 3)), atol=1e-3)


def test_gif_decodes_to_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])

    image = decode_and_resize(tf.constant(buffer.getvalue()), 8).numpy()

    assert image[..., 0].mean() > 200 and image[..., 2].mean() < 50


def test_decode_error_reports_undecodable_bytes():
    assert decode_error(image_bytes("JPEG")) is None
    assert decode_error(b"\x89PNG\r\n\x1a\n" + b"\0" * 20) is not None


def image_dataset(paths, labels, weights, options, *, training, name):
    """Batches of decoded files, as the trainer builds them."""
    decoded = decoded_dataset(paths, labels, weights, options, name=name)
    return batched(decoded, options, training=training)


def _files(tmp_path, count):
    paths = [str(write_image(tmp_path / "img" / f"{i}.png", seed=i)) for i in range(count)]
    labels = np.arange(count) % 3
    return paths, labels


def test_image_dataset_batches_images_one_hot_labels_and_weights(tmp_path):
    paths, labels = _files(tmp_path, 10)
    weights = np.linspace(0.5, 1.5, 10).astype(np.float32)

    dataset = image_dataset(paths, labels, weights, _options(tmp_path), training=False, name="t")
    batches = list(dataset)

    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    images = np.concatenate([b[0] for b in batches])
    assert images.shape == (10, 16, 16, 3)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]).argmax(1), labels)
    np.testing.assert_allclose(np.concatenate([b[2] for b in batches]), weights)
    expected = decode_and_resize(tf.io.read_file(paths[3]), 16).numpy()
    np.testing.assert_array_equal(images[3], expected)


def test_training_dataset_reshuffles_every_epoch_but_keeps_its_contents(tmp_path):
    paths, labels = _files(tmp_path, 12)
    dataset = image_dataset(paths, labels, None, _options(tmp_path), training=True, name="t")

    epoch1 = np.concatenate([b[0].numpy().reshape(len(b[0]), -1)[:, 0] for b in dataset])
    epoch2 = np.concatenate([b[0].numpy().reshape(len(b[0]), -1)[:, 0] for b in dataset])

    assert not np.array_equal(epoch1, epoch2)
    np.testing.assert_array_equal(np.sort(epoch1), np.sort(epoch2))


def test_images_over_the_memory_budget_are_cached_on_disk(tmp_path):
    paths, labels = _files(tmp_path, 6)
    options = _options(tmp_path, cache_memory_bytes=0)

    dataset = image_dataset(paths, labels, None, options, training=False, name="train")
    first = np.concatenate([b[0] for b in dataset])
    second = np.concatenate([b[0] for b in dataset])

    assert any((tmp_path / "cache" / "train").iterdir())
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("budget", [1 << 30, 0], ids=["memory-cache", "file-cache"])
def test_the_pass_in_order_fills_the_cache_the_shuffled_epochs_read(tmp_path, budget):
    paths, labels = _files(tmp_path, 9)
    options = _options(tmp_path, cache_memory_bytes=budget)
    decoded = decoded_dataset(paths, labels, None, options, name="train")

    in_order = np.concatenate([b[0] for b in batched(decoded, options, training=False)])
    for path in paths:  # nothing left to read: every later pass must come from the cache
        Path(path).unlink()
    shuffled = np.concatenate([b[0] for b in batched(decoded, options, training=True)])

    assert shuffled.shape == in_order.shape
    key = in_order.reshape(len(in_order), -1)[:, 0]
    np.testing.assert_array_equal(np.sort(shuffled.reshape(len(shuffled), -1)[:, 0]), np.sort(key))


def test_features_over_the_budget_are_memory_mapped_and_batched(tmp_path):
    options = _options(tmp_path, cache_memory_bytes=10)
    store = feature_store(7, (5,), options)
    store[:] = np.arange(35, dtype=np.float32).reshape(7, 5)
    labels = np.array([0, 1, 2, 0, 1, 2, 0])

    assert isinstance(store, np.memmap)
    batches = list(array_dataset(store, labels, None, options, training=True))

    rows = np.concatenate([b[0] for b in batches])
    assert sorted(rows[:, 0].tolist()) == [0, 5, 10, 15, 20, 25, 30]
    np.testing.assert_array_equal(
        np.concatenate([b[1] for b in batches]).argmax(1), labels[(rows[:, 0] // 5).astype(int)]
    )


def test_in_memory_features_stay_in_memory(tmp_path):
    store = feature_store(3, (2,), _options(tmp_path))
    assert not isinstance(store, np.memmap)
    assert store.shape == (3, 2)


def test_batches_prefetched_to_a_device_by_a_strategy_train_a_keras_model(tmp_path):
    paths, labels = _files(tmp_path, 8)
    dataset = image_dataset(paths, labels, None, _options(tmp_path), training=True, name="dev")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((16, 16, 3)),
                keras.layers.Flatten(),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
        model.compile(optimizer="adam", loss="categorical_crossentropy")

    history = model.fit(dataset, epochs=2, verbose=0, shuffle=False)

    assert len(history.history["loss"]) == 2
