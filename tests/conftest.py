"""Shared fixtures: small generated datasets and settings that never touch the network.

Nothing here imports TensorFlow: the API, contract, ingest and jobs tests also run in an
environment without it. The trained-model fixtures live in ``tests/support/trained.py``,
a plugin whose TensorFlow imports happen only when a test asks for a trained model.
"""

from __future__ import annotations

import os
from pathlib import Path

# Quiet TensorFlow's C++ start-up logging before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from service.config import Settings
from service.training.sample_data import make_shapes_dataset

pytest_plugins = ["tests.support.trained"]


@pytest.fixture(autouse=True)
def _empty_keras_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test may find (or fetch) ImageNet weights from the user's real Keras cache."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_root=tmp_path / "data",
        work_dir=tmp_path / "jobs",
        model_repo=tmp_path / "models",
        weights_dir=tmp_path / "weights",
        weights_download=False,
    )


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 16 images of 32x32 drawn shapes (PNG and JPEG)."""
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    return make_shapes_dataset(root, images_per_class=16, image_size=32, seed=3)
