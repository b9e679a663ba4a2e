from __future__ import annotations

import hashlib
import os
from pathlib import Path

import keras
import keras.src.utils.file_utils
import numpy as np
import pytest

from service.errors import InvalidConfigError, WeightsUnavailableError
from service.training.backbones import (
    BACKBONES,
    BackbonePreprocessing,
    ResolvedWeights,
    build_base,
    get_backbone,
    resolve_weights,
)

# Channels of each base's last feature map; a new backbone has to be added here.
FEATURE_CHANNELS = {
    "mobilenet_v2": 1280,
    "mobilenet_v3_small": 576,
    "mobilenet_v3_large": 960,
    "efficientnet_b0": 1280,
    "efficientnet_v2_b0": 1280,
    "resnet50": 2048,
    "vgg16": 512,
    "small_cnn": 128,
}

# The names Keras caches ImageNet weights under (include_top=False).
IMAGENET_FILES = {
    "mobilenet_v2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    "mobilenet_v3_small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    "mobilenet_v3_large": "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    "efficientnet_b0": "efficientnetb0_notop.h5",
    "efficientnet_v2_b0": "efficientnetv2-b0_notop.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything asks Keras to fetch a file."""

    def forbidden(*args: object, **kwargs: object) -> None:
        pytest.fail(f"keras get_file was called: {args}")

    monkeypatch.setattr(keras.utils, "get_file", forbidden)
    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", forbidden)


def models_dir() -> Path:
    return Path(os.environ["KERAS_HOME"]) / "models"


def test_registry_lists_exactly_the_known_backbones():
    assert set(BACKBONES) == set(FEATURE_CHANNELS)


@pytest.mark.parametrize("name", sorted(FEATURE_CHANNELS))
def test_every_backbone_builds_at_its_minimum_size_without_weights(name, no_downloads):
    backbone = BACKBONES[name]

    base = build_base(backbone, backbone.min_size, ResolvedWeights("none"))

    assert backbone.min_size == (8 if name == "small_cnn" else 32)
    assert tuple(base.input_shape) == (None, backbone.min_size, backbone.min_size, 3)
    assert len(base.output_shape) == 4
    assert base.output_shape[0] is None
    assert base.output_shape[-1] == FEATURE_CHANNELS[name]


@pytest.mark.parametrize(("name", "size"), [("small_cnn", 7), ("resnet50", 31)])
def test_image_size_below_the_minimum_is_rejected(name, size):
    backbone = get_backbone(name)

    with pytest.raises(InvalidConfigError) as caught:
        build_base(backbone, size, ResolvedWeights("none"))

    assert caught.value.message == (
        f"image_size {size} is below {name}'s minimum of {backbone.min_size}"
    )


def test_unknown_backbone_is_rejected_with_the_known_names():
    with pytest.raises(InvalidConfigError) as caught:
        get_backbone("nope")

    assert caught.value.message == (
        "unknown base_model 'nope'; choose one of: efficientnet_b0, efficientnet_v2_b0, "
        "mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small, resnet50, small_cnn, vgg16"
    )


def run_layer(mode: str, pixels: list[list[float]]) -> np.ndarray:
    images = np.asarray(pixels, dtype=np.float32).reshape(1, 1, len(pixels), 3)
    out = keras.ops.convert_to_numpy(BackbonePreprocessing(mode)(images))
    return out.reshape(len(pixels), 3)


def test_tf_preprocessing_maps_pixels_to_minus_one_to_one():
    out = run_layer("tf", [[0.0, 127.5, 255.0]])

    np.testing.assert_array_equal(out, [[-1.0, 0.0, 1.0]])


def test_unit_preprocessing_maps_pixels_to_zero_to_one():
    out = run_layer("unit", [[0.0, 51.0, 255.0]])

    np.testing.assert_array_equal(out, np.float32([[0.0, 0.2, 1.0]]))


def test_caffe_preprocessing_swaps_to_bgr_and_subtracts_the_imagenet_mean():
    out = run_layer("caffe", [[10.0, 20.0, 30.0], [255.0, 0.0, 0.0]])

    expected = [
        [30.0 - 103.939, 20.0 - 116.779, 10.0 - 123.68],
        [0.0 - 103.939, 0.0 - 116.779, 255.0 - 123.68],
    ]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


def test_none_preprocessing_passes_pixels_through():
    pixels = [[0.0, 12.5, 255.0], [3.0, 200.0, 99.0]]

    np.testing.assert_array_equal(run_layer("none", pixels), pixels)


def test_unknown_preprocessing_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown preprocessing mode 'torch'"):
        BackbonePreprocessing("torch")


@pytest.mark.parametrize("mode", BackbonePreprocessing.MODES)
def test_preprocessing_survives_get_config(mode):
    config = BackbonePreprocessing(mode, name="pre").get_config()

    copy = BackbonePreprocessing.from_config(config)

    assert config["mode"] == mode
    assert (copy.mode, copy.name) == (mode, "pre")


@pytest.mark.parametrize("mode", BackbonePreprocessing.MODES)
def test_preprocessing_survives_saving_a_model(tmp_path, mode):
    inputs = keras.Input((2, 2, 3))
    model = keras.Model(inputs, BackbonePreprocessing(mode, name="pre")(inputs))
    model.save(tmp_path / "pre.keras")

    loaded = keras.saving.load_model(tmp_path / "pre.keras")

    images = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3) * 21.0
    layer = loaded.get_layer("pre")
    assert isinstance(layer, BackbonePreprocessing)
    assert layer.mode == mode
    np.testing.assert_array_equal(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0)
    )


def test_weights_none_needs_nothing(settings, no_downloads):
    resolved = resolve_weights(get_backbone("resnet50"), "none", 224, settings)

    assert resolved == ResolvedWeights("none", None, None)


@pytest.mark.parametrize("name", sorted(IMAGENET_FILES))
def test_missing_imagenet_weights_fail_at_once_naming_the_expected_path(
    name, settings, no_downloads
):
    with pytest.raises(WeightsUnavailableError) as caught:
        resolve_weights(get_backbone(name), "imagenet", 224, settings)

    expected = models_dir() / IMAGENET_FILES[name]
    assert str(expected) in caught.value.message
    assert "FTSERVE_WEIGHTS_DOWNLOAD" in caught.value.message
    assert caught.value.code == "weights_unavailable"
    assert not expected.exists()


@pytest.mark.parametrize(
    ("size", "rows"), [(96, 96), (128, 128), (160, 160), (192, 192), (224, 224), (100, 224)]
)
def test_mobilenet_v2_imagenet_file_depends_on_image_size(size, rows, settings, no_downloads):
    with pytest.raises(WeightsUnavailableError) as caught:
        resolve_weights(get_backbone("mobilenet_v2"), "imagenet", size, settings)

    expected = (
        models_dir() / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    )
    assert str(expected) in caught.value.message


def test_cached_imagenet_weights_resolve_to_their_path_and_hash(settings, no_downloads):
    path = models_dir() / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not really weights")

    resolved = resolve_weights(get_backbone("mobilenet_v2"), "imagenet", 96, settings)

    assert resolved == ResolvedWeights(
        "imagenet", path, hashlib.sha256(b"not really weights").hexdigest()
    )


def test_small_cnn_has_no_imagenet_weights(settings, no_downloads):
    with pytest.raises(WeightsUnavailableError) as caught:
        resolve_weights(get_backbone("small_cnn"), "imagenet", 32, settings)

    assert caught.value.message == "backbone 'small_cnn' has no ImageNet weights"


def test_imagenet_download_opt_in_defers_to_keras_without_fetching(settings, no_downloads):
    allowed = settings.model_copy(update={"weights_download": True})

    resolved = resolve_weights(get_backbone("resnet50"), "imagenet", 224, allowed)

    assert resolved == ResolvedWeights("imagenet", None, None)
    assert not models_dir().exists()


@pytest.mark.parametrize("name", ["sub/base.weights.h5", "../base.weights.h5", "..", ".", ""])
def test_weights_file_name_must_not_be_a_path(name, settings):
    with pytest.raises(InvalidConfigError) as caught:
        resolve_weights(get_backbone("small_cnn"), name, 32, settings)

    assert caught.value.message == (
        f"weights must be 'imagenet', 'none' or a file name in the weights folder, "
        f"not a path: {name!r}"
    )


def test_missing_weights_file_names_the_expected_path(settings):
    with pytest.raises(WeightsUnavailableError) as caught:
        resolve_weights(get_backbone("small_cnn"), "base.weights.h5", 32, settings)

    expected = settings.weights_dir / "base.weights.h5"
    assert caught.value.message == (
        f"weights file 'base.weights.h5' not found: expected {expected}; it holds no file"
    )


def save_weights(model: keras.Model, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_weights(folder / name)
    return folder / name


def test_weights_file_saved_from_small_cnn_loads_into_the_base(settings):
    backbone = get_backbone("small_cnn")
    source = build_base(backbone, 16, ResolvedWeights("none"))
    rng = np.random.default_rng(0)
    source.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in source.weights])
    path = save_weights(source, settings.weights_dir, "base.weights.h5")

    resolved = resolve_weights(backbone, "base.weights.h5", 16, settings)
    base = build_base(backbone, 16, resolved)

    assert resolved == ResolvedWeights("file", path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(base.weights) == len(source.weights) == 30
    for loaded, saved in zip(base.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, saved)


def test_weights_file_from_another_architecture_does_not_fit(settings):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="block1_conv1")(inputs)
    other = keras.Model(inputs, keras.layers.Dense(2)(x))
    save_weights(other, settings.weights_dir, "other.weights.h5")
    backbone = get_backbone("small_cnn")

    resolved = resolve_weights(backbone, "other.weights.h5", 16, settings)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_base(backbone, 16, resolved)

    assert caught.value.message.startswith(
        "weights file 'other.weights.h5' does not fit small_cnn at image_size 16: "
    )


def test_the_contract_names_every_registered_backbone():
    from service.contract.train_config import BASE_MODELS
    from service.training.backbones import BACKBONES

    assert sorted(BASE_MODELS) == sorted(BACKBONES)


def test_the_contract_describes_each_backbone_as_the_registry_builds_it():
    from service.contract.train_config import BACKBONE_TABLE

    for described in BACKBONE_TABLE:
        built = BACKBONES[described.name]
        assert (
            described.default_image_size,
            described.min_image_size,
            described.preprocessing,
            described.imagenet_weights,
        ) == (
            built.default_size,
            built.min_size,
            built.preprocessing,
            built.imagenet_file is not None,
        ), described.name
        assert described.preprocessing in BackbonePreprocessing.MODES
