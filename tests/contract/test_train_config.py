from __future__ import annotations

import json
from http import HTTPStatus

import pytest

from service.contract.train_config import AugmentationConfig, TrainConfig
from service.errors import InvalidConfigError


def test_defaults_fill_every_field_but_the_name():
    config = TrainConfig.parse({"model_name": "m"})

    assert config.model_dump() == {
        "model_name": "m",
        "base_model": "mobilenet_v2",
        "weights": "imagenet",
        "image_size": None,
        "epochs": 10,
        "batch_size": 32,
        "learning_rate": 0.001,
        "early_stopping_patience": 3,
        "pooling": "auto",
        "dense_units": None,
        "dropout": 0.2,
        "augmentation": None,
        "feature_cache": True,
        "fine_tune_layers": 0,
        "fine_tune_at": None,
        "fine_tune_epochs": 5,
        "fine_tune_learning_rate": 1e-05,
        "validation_split": 0.2,
        "class_weight": "none",
        "label_smoothing": 0.0,
        "seed": 1337,
        "precision": "auto",
        "xla": "auto",
        "promote": "auto",
        "min_accuracy": None,
        "promote_tolerance": 0.0,
    }


def test_augmentation_defaults():
    config = TrainConfig.parse({"model_name": "m", "augmentation": {}})

    assert config.augmentation == AugmentationConfig(
        flip="horizontal", rotation=0.05, zoom=0.1, contrast=0.1
    )


def test_unknown_field_is_rejected_as_a_422_naming_it():
    with pytest.raises(InvalidConfigError) as caught:
        TrainConfig.parse({"model_name": "m", "epochz": 3})

    assert caught.value.status == HTTPStatus.UNPROCESSABLE_ENTITY == 422
    assert caught.value.code == "invalid_config"
    assert caught.value.message == "invalid training config: epochz: Extra inputs are not permitted"


def test_unknown_augmentation_field_is_rejected_with_its_path():
    with pytest.raises(InvalidConfigError) as caught:
        TrainConfig.parse({"model_name": "m", "augmentation": {"blur": 1}})

    assert caught.value.message == (
        "invalid training config: augmentation.blur: Extra inputs are not permitted"
    )


def test_missing_model_name_is_rejected():
    with pytest.raises(InvalidConfigError) as caught:
        TrainConfig.parse({})

    assert caught.value.message == "invalid training config: model_name: Field required"


@pytest.mark.parametrize("name", ["Model", "../x", "a" * 64, "-x", "_x", "a b", "a.b", ""])
def test_model_name_outside_the_pattern_is_rejected(name):
    with pytest.raises(InvalidConfigError) as caught:
        TrainConfig.parse({"model_name": name})

    assert caught.value.message == (
        "invalid training config: model_name: String should match pattern "
        "'^[a-z0-9][a-z0-9_-]{0,62}$'"
    )


@pytest.mark.parametrize("name", ["my-model_1", "m", "0", "a" * 63])
def test_model_name_inside_the_pattern_is_accepted(name):
    assert TrainConfig.parse({"model_name": name}).model_name == name


def test_fine_tune_layers_and_fine_tune_at_together_are_rejected():
    with pytest.raises(InvalidConfigError) as caught:
        TrainConfig.parse({"model_name": "m", "fine_tune_layers": 3, "fine_tune_at": "block5"})

    assert caught.value.message == (
        "invalid training config: config: Value error, "
        "set fine_tune_layers or fine_tune_at, not both"
    )


@pytest.mark.parametrize(
    ("options", "fine_tunes"),
    [
        ({}, False),
        ({"fine_tune_layers": 10}, True),
        ({"fine_tune_at": "block5_conv1"}, True),
        ({"fine_tune_at": 0}, True),
        ({"fine_tune_layers": 10, "fine_tune_epochs": 0}, False),
        ({"fine_tune_at": 100, "fine_tune_epochs": 0}, False),
    ],
)
def test_fine_tunes_needs_layers_to_unfreeze_and_epochs(options, fine_tunes):
    assert TrainConfig.parse({"model_name": "m", **options}).fine_tunes is fine_tunes


def test_config_file_is_read_and_overrides_win(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_name": "from-file", "epochs": 3, "batch_size": 16}))

    config = TrainConfig.from_file(path, model_name="from-cli", epochs=7)

    assert (config.model_name, config.epochs, config.batch_size) == ("from-cli", 7, 16)


def test_unknown_field_in_config_file_is_rejected(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochz": 3}))

    with pytest.raises(InvalidConfigError) as caught:
        TrainConfig.from_file(path, model_name="m")

    assert caught.value.message == "invalid training config: epochz: Extra inputs are not permitted"


def test_missing_config_file_is_rejected(tmp_path):
    path = tmp_path / "absent.json"

    with pytest.raises(InvalidConfigError) as caught:
        TrainConfig.from_file(path, model_name="m")

    assert caught.value.message.startswith(f"cannot read config file {path}: ")
    assert "No such file or directory" in caught.value.message


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00{}"])
def test_unparsable_config_file_is_rejected(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_bytes(content)

    with pytest.raises(InvalidConfigError) as caught:
        TrainConfig.from_file(path, model_name="m")

    assert caught.value.message.startswith(f"cannot read config file {path}: ")


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "null", "3"])
def test_config_file_must_hold_an_object(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_text(content)

    with pytest.raises(InvalidConfigError) as caught:
        TrainConfig.from_file(path, model_name="m")

    assert caught.value.message == f"config file {path} must hold a JSON object"
